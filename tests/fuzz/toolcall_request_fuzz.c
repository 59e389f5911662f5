/*
 * toolcall_request_fuzz.c - fuzzes the decoding of ToolCalls/Call requests
 * (latchkey.v1.ToolCallRequest, the bytes an agent sends) and the
 * catalog-free part of the call path behind it.
 *
 * Each input is unpacked with protobuf-c as sidecar/toolcalls.c does. A
 * decoded request without unknown fields must re-encode to bytes that
 * decode to a message that encodes to the same bytes. Then the request
 * walks the steps of DESIGN.md §4 that need no store: id checks, the
 * operation lookup in a fixed "weather" tool, lk_args_parse of
 * arguments_json, lk_inject_build with a fixed credential type that
 * injects into a header, the query, the body and basic auth, and
 * lk_scrubber_new for the result. A vendor that echoes the whole request
 * back (URL, header lines, "Authorization: Basic ..." and body) is then
 * simulated: after lk_scrub, the echo must hold no secret value in raw,
 * percent-encoded or JSON-escaped form, nor the user:password pair.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "latchkey/v1/toolcalls.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/schema.h"
#include "lib/secret.h"
#include "sidecar/args.h"
#include "sidecar/inject.h"
#include "sidecar/scrub.h"
#include "tests/fuzz/fuzz_target.h"

#define ECHO_CAP ((size_t)64 * 1024)
#define N_FIELDS 3
#define N_RULES 4
#define TOKEN_JSON "tok_7Hq2\\\\line\\nbreak\xc3\xa9"

static const char *const field_names[N_FIELDS] = {"api_key", "token", "user"};
static const char *const field_values[N_FIELDS] = {
    "Zk8/q+Lm 9&x=Y~v.w\"Q", "tok_7Hq2\\line\nbreak\xc3\xa9", "svc-bot"};
static const int field_secret[N_FIELDS] = {1, 1, 0};

typedef struct {
  Latchkey__V1__Param params[9];
  Latchkey__V1__Param *forecast_params[3];
  Latchkey__V1__Param *report_params[6];
  Latchkey__V1__Operation ops[2];
  Latchkey__V1__Operation *op_ptrs[2];
  Latchkey__V1__Tool tool;
  Latchkey__V1__CredentialField cfields[N_FIELDS];
  Latchkey__V1__CredentialField *cfield_ptrs[N_FIELDS];
  Latchkey__V1__InjectRule rules[N_RULES];
  Latchkey__V1__InjectRule *rule_ptrs[N_RULES];
  Latchkey__V1__CredentialType type;
  lk_field fields[N_FIELDS];
} fixture;

static fixture fx;

static void check(int ok) {
  if (!ok) {
    __builtin_trap();
  }
}

static void set_param(Latchkey__V1__Param *p, const char *name, const char *in,
                      const char *type, int required) {
  latchkey__v1__param__init(p);
  p->name = (char *)name;
  p->in = (char *)in;
  p->type = (char *)type;
  p->required = required;
}

static void set_rule(Latchkey__V1__InjectRule *r, const char *in,
                     const char *name, const char *value, const char *user,
                     const char *password) {
  latchkey__v1__inject_rule__init(r);
  r->in = (char *)in;
  r->name = (char *)name;
  r->value = (char *)value;
  r->username = (char *)user;
  r->password = (char *)password;
}

static void release_fixture(void) {
  for (size_t i = 0; i < N_FIELDS; i++) {
    lk_secret_free((lk_secret *)fx.fields[i].value);
  }
  memset(&fx, 0, sizeof(fx));
}

/* The "weather" tool, its credential type and the credential, once. */
static void init_fixture(void) {
  static int ready;
  if (ready) {
    return;
  }
  ready = 1;
  check(lk_secret_init() == LK_OK);
  set_param(&fx.params[0], "city", "path", "string", 1);
  set_param(&fx.params[1], "days", "query", "integer", 0);
  set_param(&fx.params[2], "key", "query", "string", 0);
  set_param(&fx.params[3], "id", "path", "integer", 1);
  set_param(&fx.params[4], "title", "body", "string", 1);
  set_param(&fx.params[5], "client_secret", "body", "string", 0);
  set_param(&fx.params[6], "tags", "body", "array", 0);
  set_param(&fx.params[7], "extra", "body", "object", 0);
  set_param(&fx.params[8], "draft", "query", "boolean", 0);
  for (size_t i = 0; i < 3; i++) {
    fx.forecast_params[i] = &fx.params[i];
  }
  for (size_t i = 0; i < 6; i++) {
    fx.report_params[i] = &fx.params[3 + i];
  }
  latchkey__v1__operation__init(&fx.ops[0]);
  fx.ops[0].name = (char *)"forecast";
  fx.ops[0].method = (char *)"GET";
  fx.ops[0].path = (char *)"/v1/forecast/{city}";
  fx.ops[0].n_params = 3;
  fx.ops[0].params = fx.forecast_params;
  latchkey__v1__operation__init(&fx.ops[1]);
  fx.ops[1].name = (char *)"report";
  fx.ops[1].method = (char *)"POST";
  fx.ops[1].path = (char *)"/v1/stations/{id}/reports";
  fx.ops[1].n_params = 6;
  fx.ops[1].params = fx.report_params;
  fx.op_ptrs[0] = &fx.ops[0];
  fx.op_ptrs[1] = &fx.ops[1];
  latchkey__v1__tool__init(&fx.tool);
  fx.tool.id = (char *)"weather";
  fx.tool.description = (char *)"Forecasts by city";
  fx.tool.base_url = (char *)"https://api.weather.example";
  fx.tool.credential_type = (char *)"weather-key";
  fx.tool.n_operations = 2;
  fx.tool.operations = fx.op_ptrs;

  latchkey__v1__credential_type__init(&fx.type);
  fx.type.id = (char *)"weather-key";
  for (size_t i = 0; i < N_FIELDS; i++) {
    latchkey__v1__credential_field__init(&fx.cfields[i]);
    fx.cfields[i].name = (char *)field_names[i];
    fx.cfields[i].secret = field_secret[i];
    fx.cfield_ptrs[i] = &fx.cfields[i];
    fx.fields[i].name = field_names[i];
    fx.fields[i].secret = field_secret[i];
    fx.fields[i].value =
        lk_secret_from(field_values[i], strlen(field_values[i]));
    check(fx.fields[i].value != NULL);
  }
  fx.type.n_fields = N_FIELDS;
  fx.type.fields = fx.cfield_ptrs;
  set_rule(&fx.rules[0], "header", "X-Api-Key", "{api_key}", "", "");
  set_rule(&fx.rules[1], "query", "key", "{api_key}", "", "");
  set_rule(&fx.rules[2], "body", "client_secret", "{token}", "", "");
  set_rule(&fx.rules[3], "basic", "", "", "{user}", "{token}");
  for (size_t i = 0; i < N_RULES; i++) {
    fx.rule_ptrs[i] = &fx.rules[i];
  }
  fx.type.n_inject = N_RULES;
  fx.type.inject = fx.rule_ptrs;
  lk_err err;
  check(lk_schema_check_tool(&fx.tool, &fx.type, &err) == LK_OK);
  atexit(release_fixture);
}

/* pack(unpack(pack(m))) == pack(m), for a message without unknown fields.
 * (protobuf-c keeps unknown fields and re-encodes them, but one numbered 0,
 * reachable through an overlong tag, re-encodes to bytes it then refuses;
 * the sidecar never re-encodes a request, and lib/admin drops unknown
 * fields before it stores anything: see corpus regress_unknown_field_0.) */
static void check_round_trip(const Latchkey__V1__ToolCallRequest *rq) {
  if (rq->base.n_unknown_fields > 0) {
    return;
  }
  size_t n = latchkey__v1__tool_call_request__get_packed_size(rq);
  uint8_t *a = malloc(n > 0 ? n : 1);
  check(a != NULL);
  check(latchkey__v1__tool_call_request__pack(rq, a) == n);
  Latchkey__V1__ToolCallRequest *again =
      latchkey__v1__tool_call_request__unpack(NULL, n, a);
  check(again != NULL);
  check(strcmp(again->budget_id, rq->budget_id) == 0 &&
        strcmp(again->tool_id, rq->tool_id) == 0 &&
        strcmp(again->operation, rq->operation) == 0 &&
        strcmp(again->arguments_json, rq->arguments_json) == 0 &&
        strcmp(again->request_id, rq->request_id) == 0);
  size_t m = latchkey__v1__tool_call_request__get_packed_size(again);
  uint8_t *b = malloc(m > 0 ? m : 1);
  check(b != NULL);
  check(latchkey__v1__tool_call_request__pack(again, b) == m);
  check(m == n && memcmp(a, b, n) == 0);
  free(b);
  free(a);
  latchkey__v1__tool_call_request__free_unpacked(again, NULL);
}

/* Appends n bytes to the echo buffer (silently truncating at ECHO_CAP). */
static void echo_put(unsigned char *buf, size_t *len, const void *p, size_t n) {
  if (n > ECHO_CAP - *len) {
    n = ECHO_CAP - *len;
  }
  memcpy(buf + *len, p, n);
  *len += n;
}

/* Returns 1 when the forbidden bytes v occur in the scrubbed output. */
static int leaks(const unsigned char *out, size_t out_len, const char *v,
                 size_t n) {
  return memmem(out, out_len, v, n) != NULL;
}

/* The query-string and JSON-string forms inject.c writes for a value. */
static size_t encode_query(const char *v, char *out) {
  static const char hex[] = "0123456789ABCDEF";
  size_t len = 0;
  for (; *v != '\0'; v++) {
    unsigned char c = (unsigned char)*v;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
        (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
        c == '~') {
      out[len++] = (char)c;
    } else {
      out[len++] = '%';
      out[len++] = hex[c >> 4];
      out[len++] = hex[c & 15];
    }
  }
  return len;
}

/* Simulates a vendor echoing req back and checks the scrubbed echo. */
static void check_echo(const lk_http_request *req, const lk_scrubber *s) {
  unsigned char *echo = malloc(ECHO_CAP);
  unsigned char *out = NULL;
  size_t len = 0;
  size_t out_len = 0;
  size_t replaced = 0;
  lk_err err;
  char enc[256];

  check(echo != NULL);
  echo_put(echo, &len, lk_secret_data(req->url), lk_secret_len(req->url));
  echo_put(echo, &len, "\r\n", 2);
  for (size_t i = 0; i < req->n_headers; i++) {
    echo_put(echo, &len, lk_secret_data(req->headers[i]),
             lk_secret_len(req->headers[i]));
    echo_put(echo, &len, "\r\n", 2);
  }
  if (req->userpwd != NULL) {
    size_t n = lk_secret_len(req->userpwd);
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(cap);
    check(b64 != NULL);
    sodium_bin2base64(b64, cap, lk_secret_data(req->userpwd), n,
                      sodium_base64_VARIANT_ORIGINAL);
    echo_put(echo, &len, "Authorization: Basic ", 21);
    echo_put(echo, &len, b64, strlen(b64));
    echo_put(echo, &len, "\r\n", 2);
    free(b64);
  }
  if (req->body != NULL) {
    echo_put(echo, &len, lk_secret_data(req->body), lk_secret_len(req->body));
  }
  check(lk_scrub(s, echo, len, 4 * ECHO_CAP, &out, &out_len, &replaced, &err) ==
        LK_OK);
  for (size_t i = 0; i < N_FIELDS; i++) {
    const char *v = field_values[i];
    if (!field_secret[i]) {
      continue;
    }
    check(!leaks(out, out_len, v, strlen(v)));
    check(!leaks(out, out_len, enc, encode_query(v, enc)));
  }
  if (req->userpwd != NULL) {
    check(!leaks(out, out_len, lk_secret_str(req->userpwd),
                 lk_secret_len(req->userpwd)));
  }
  /* The JSON form of the token in the body (backslash, newline escaped). */
  check(!leaks(out, out_len, TOKEN_JSON, sizeof(TOKEN_JSON) - 1));
  free(out);
  free(echo);
}

/* The call path of DESIGN.md §4 up to forwarding, without the catalog. */
static void walk_call_path(const Latchkey__V1__ToolCallRequest *rq) {
  const Latchkey__V1__Operation *op = NULL;
  json_t *args = NULL;
  lk_http_request *req = NULL;
  lk_scrubber *s = NULL;
  lk_err err;

  if (!lk_catalog_valid_id(rq->budget_id) ||
      !lk_catalog_valid_id(rq->tool_id) ||
      strcmp(rq->tool_id, fx.tool.id) != 0) {
    return;
  }
  for (size_t i = 0; i < fx.tool.n_operations; i++) {
    if (strcmp(fx.tool.operations[i]->name, rq->operation) == 0) {
      op = fx.tool.operations[i];
    }
  }
  if (op == NULL) {
    return;
  }
  lk_err_clear(&err);
  lk_status st = lk_args_parse(op, rq->arguments_json,
                               strlen(rq->arguments_json), &args, &err);
  if (st != LK_OK) {
    check(st == LK_INVALID_ARGUMENT || st == LK_RESOURCE_EXHAUSTED);
    goto done;
  }
  st = lk_inject_build(&fx.tool, op, &fx.type, fx.fields, N_FIELDS, args, &req,
                       &err);
  if (st != LK_OK) {
    check(st == LK_INVALID_ARGUMENT || st == LK_RESOURCE_EXHAUSTED);
    goto done;
  }
  check(strncmp(lk_secret_str(req->url), "https://api.weather.example/", 28) ==
        0);
  check(lk_scrubber_new(fx.fields, N_FIELDS, req->userpwd, &s, &err) == LK_OK);
  check_echo(req, s);

done:
  lk_scrubber_destroy(s);
  lk_http_request_destroy(req);
  json_decref(args);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  init_fixture();
  Latchkey__V1__ToolCallRequest *rq =
      latchkey__v1__tool_call_request__unpack(NULL, size, data);
  if (rq == NULL) {
    return 0;
  }
  check_round_trip(rq);
  walk_call_path(rq);
  latchkey__v1__tool_call_request__free_unpacked(rq, NULL);
  return 0;
}
