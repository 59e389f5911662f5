/*
 * inject_fuzz.c - fuzzes sidecar/inject: credential type checks (lib/schema,
 * whose template scanner the builder shares) and vendor request building,
 * where untrusted arguments meet credential plaintext.
 *
 * The input is split on the byte 0x1F into pieces:
 *
 *   0 method   1 base_url   2 path template   3 arguments_json
 *   4 token    5 api_key    6 user            7 password   (field values)
 *   8.. inject rules, five pieces each: in, name, value, username, password
 *
 * Field values keep every byte (NUL, CR, LF included); the other pieces are
 * C strings and end at their first NUL, as protobuf strings would. Missing
 * field pieces leave the field without a value. The operation declares
 * fixed params (path owner and id, query q/limit/flag/ratio/key, body
 * title/api_key/tags/meta), so arguments that name injected fields
 * ("key" in the query, "api_key" in the body) are reachable.
 *
 * Checked on every input: lk_schema_check_type and lk_inject_build return
 * only the statuses they document, and no failure message quotes a field
 * value (a canary, LKSECRET, in a value must not show up unless another
 * piece carries it too). On LK_OK: the URL starts with base_url, then '/',
 * is printable ASCII without spaces or '#', and has exactly the path
 * template's '/' separators before its query (a path value never adds a
 * segment); no header line holds CR, LF or NUL; userpwd holds no NUL and a
 * ':'; a body is a JSON object whenever every template and value is UTF-8;
 * and no argument named like an injected query or body field got through.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/schema.h"
#include "lib/secret.h"
#include "sidecar/args.h"
#include "sidecar/inject.h"
#include "tests/fuzz/fuzz_target.h"

#define SEP 0x1f
#define CANARY "LKSECRET"
#define MAX_PIECES (8 + 5 * 16)
#define N_FIELDS 4

typedef struct {
  const char *p; /* NUL-terminated copy in the arena */
  size_t len;    /* bytes up to the separator, NULs included */
} piece;

static const char *const field_names[N_FIELDS] = {"token", "api_key", "user",
                                                  "password"};
static const int field_secret[N_FIELDS] = {1, 1, 0, 1};

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

static int contains(const void *hay, size_t n, const char *needle) {
  return memmem(hay, n, needle, strlen(needle)) != NULL;
}

static int utf8_ok(const char *s, size_t n) {
  json_t *j = json_stringn(s, n);
  json_decref(j);
  return j != NULL;
}

/* Counts '/' in s up to (not including) the first '?' or the end. */
static size_t slashes_before_query(const char *s, size_t n) {
  size_t count = 0;
  for (size_t i = 0; i < n && s[i] != '?'; i++) {
    count += s[i] == '/';
  }
  return count;
}

/* Checks what lk_inject_build promises about a request it returned. */
static void check_request(const lk_http_request *r,
                          const Latchkey__V1__Tool *tool,
                          const Latchkey__V1__Operation *op,
                          const Latchkey__V1__CredentialType *type,
                          const json_t *args, int all_utf8) {
  const char *url = lk_secret_str(r->url);
  size_t url_len = lk_secret_len(r->url);
  size_t base_len = strlen(tool->base_url);

  check(strcmp(r->method, op->method) == 0);
  while (base_len > 0 && tool->base_url[base_len - 1] == '/') {
    base_len--;
  }
  check(url_len > base_len && memcmp(url, tool->base_url, base_len) == 0);
  check(url[base_len] == '/');
  for (size_t i = 0; i < url_len; i++) {
    unsigned char c = (unsigned char)url[i];
    check(c > 0x20 && c < 0x7f && c != '#');
  }
  check(slashes_before_query(url + base_len, url_len - base_len) ==
        slashes_before_query(op->path, strlen(op->path)));

  check(r->n_headers <= type->n_inject + 1);
  for (size_t i = 0; i < r->n_headers; i++) {
    const unsigned char *h = lk_secret_data(r->headers[i]);
    size_t n = lk_secret_len(r->headers[i]);
    check(memchr(h, '\r', n) == NULL && memchr(h, '\n', n) == NULL &&
          memchr(h, '\0', n) == NULL);
    check(memmem(h, n, ": ", 2) != NULL);
  }
  if (r->userpwd != NULL) {
    const unsigned char *u = lk_secret_data(r->userpwd);
    size_t n = lk_secret_len(r->userpwd);
    check(memchr(u, '\0', n) == NULL && memchr(u, ':', n) != NULL);
  }
  if (r->body != NULL) {
    const char *b = lk_secret_str(r->body);
    size_t n = lk_secret_len(r->body);
    check(n >= 2 && b[0] == '{' && b[n - 1] == '}');
    if (all_utf8) {
      json_t *j = json_loadb(b, n, JSON_ALLOW_NUL, NULL);
      check(j != NULL && json_is_object(j));
      json_decref(j);
    }
  }
  for (size_t i = 0; i < type->n_inject; i++) {
    const Latchkey__V1__InjectRule *rule = type->inject[i];
    if (strcmp(rule->in, "query") != 0 && strcmp(rule->in, "body") != 0) {
      continue;
    }
    for (size_t k = 0; k < op->n_params; k++) {
      const Latchkey__V1__Param *p = op->params[k];
      const json_t *v = args != NULL ? json_object_get(args, p->name) : NULL;
      check(v == NULL || json_is_null(v) || strcmp(p->in, rule->in) != 0 ||
            strcmp(p->name, rule->name) != 0);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  piece pieces[MAX_PIECES];
  size_t n_pieces = 0;
  char *arena = malloc(size + 1);
  Latchkey__V1__Param params[11];
  Latchkey__V1__Param *param_ptrs[11];
  Latchkey__V1__Operation op;
  Latchkey__V1__Operation *op_ptr = &op;
  Latchkey__V1__Tool tool;
  Latchkey__V1__CredentialField cfields[N_FIELDS];
  Latchkey__V1__CredentialField *cfield_ptrs[N_FIELDS];
  Latchkey__V1__InjectRule rules[16];
  Latchkey__V1__InjectRule *rule_ptrs[16];
  Latchkey__V1__CredentialType type;
  lk_field fields[N_FIELDS];
  json_t *args = NULL;
  lk_http_request *req = NULL;
  lk_err err;
  int all_utf8 = 1;

  memset(fields, 0, sizeof(fields));
  if (arena == NULL) {
    return 0;
  }
  memcpy(arena, data, size);
  arena[size] = '\0';
  for (size_t start = 0; n_pieces < MAX_PIECES;) {
    const char *end = memchr(arena + start, SEP, size - start);
    size_t stop = end != NULL ? (size_t)(end - arena) : size;
    arena[stop] = '\0';
    pieces[n_pieces].p = arena + start;
    pieces[n_pieces].len = stop - start;
    n_pieces++;
    if (end == NULL) {
      break;
    }
    start = stop + 1;
  }
#define PIECE(i) ((i) < n_pieces ? pieces[i].p : "")

  set_param(&params[0], "owner", "path", "string", 1);
  set_param(&params[1], "id", "path", "integer", 1);
  set_param(&params[2], "q", "query", "string", 0);
  set_param(&params[3], "limit", "query", "integer", 0);
  set_param(&params[4], "flag", "query", "boolean", 0);
  set_param(&params[5], "ratio", "query", "number", 0);
  set_param(&params[6], "key", "query", "string", 0);
  set_param(&params[7], "title", "body", "string", 0);
  set_param(&params[8], "api_key", "body", "string", 0);
  set_param(&params[9], "tags", "body", "array", 0);
  set_param(&params[10], "meta", "body", "object", 0);
  for (size_t i = 0; i < 11; i++) {
    param_ptrs[i] = &params[i];
  }
  latchkey__v1__operation__init(&op);
  op.name = (char *)"fuzzed";
  op.method = (char *)PIECE(0);
  op.path = (char *)PIECE(2);
  op.n_params = 11;
  op.params = param_ptrs;

  latchkey__v1__tool__init(&tool);
  tool.id = (char *)"fuzz-tool";
  tool.base_url = (char *)PIECE(1);
  tool.credential_type = (char *)"fuzz-type";
  tool.n_operations = 1;
  tool.operations = &op_ptr;

  latchkey__v1__credential_type__init(&type);
  type.id = (char *)"fuzz-type";
  for (size_t i = 0; i < N_FIELDS; i++) {
    latchkey__v1__credential_field__init(&cfields[i]);
    cfields[i].name = (char *)field_names[i];
    cfields[i].secret = field_secret[i];
    cfield_ptrs[i] = &cfields[i];
  }
  type.n_fields = N_FIELDS;
  type.fields = cfield_ptrs;
  type.inject = rule_ptrs;
  for (size_t first = 8; first < n_pieces && type.n_inject < 16; first += 5) {
    Latchkey__V1__InjectRule *r = &rules[type.n_inject];
    latchkey__v1__inject_rule__init(r);
    r->in = (char *)PIECE(first);
    r->name = (char *)PIECE(first + 1);
    r->value = (char *)PIECE(first + 2);
    r->username = (char *)PIECE(first + 3);
    r->password = (char *)PIECE(first + 4);
    all_utf8 &= utf8_ok(r->name, strlen(r->name)) &&
                utf8_ok(r->value, strlen(r->value));
    rule_ptrs[type.n_inject++] = r;
  }

  size_t n_fields = 0;
  for (size_t i = 0; i < N_FIELDS && 4 + i < n_pieces; i++) {
    fields[n_fields].name = field_names[i];
    fields[n_fields].secret = field_secret[i];
    fields[n_fields].value = lk_secret_from(pieces[4 + i].p, pieces[4 + i].len);
    check(fields[n_fields].value != NULL);
    all_utf8 &= utf8_ok(pieces[4 + i].p, pieces[4 + i].len);
    n_fields++;
  }

  /* Does any piece other than the field values carry the canary? */
  int canary_elsewhere = 0;
  for (size_t i = 0; i < n_pieces; i++) {
    if (i < 4 || i >= 8) {
      canary_elsewhere |= contains(pieces[i].p, pieces[i].len, CANARY);
    }
  }

  lk_err_clear(&err);
  lk_status st = lk_schema_check_type(&type, &err);
  check(st == LK_OK || st == LK_INVALID_ARGUMENT);
  check(canary_elsewhere || strstr(err.msg, CANARY) == NULL);

  if (n_pieces > 3) {
    lk_err parse_err;
    if (lk_args_parse(&op, pieces[3].p, strlen(pieces[3].p), &args,
                      &parse_err) != LK_OK) {
      args = NULL;
    }
  }

  lk_err_clear(&err);
  st = lk_inject_build(&tool, &op, &type, fields, n_fields, args, &req, &err);
  if (st == LK_OK) {
    check(req != NULL);
    check_request(req, &tool, &op, &type, args, all_utf8);
  } else {
    check(req == NULL);
    check(st == LK_INVALID_ARGUMENT || st == LK_FAILED_PRECONDITION ||
          st == LK_RESOURCE_EXHAUSTED);
    check(canary_elsewhere || strstr(err.msg, CANARY) == NULL);
  }
#undef PIECE

  lk_http_request_destroy(req);
  json_decref(args);
  for (size_t i = 0; i < n_fields; i++) {
    lk_secret_free((lk_secret *)fields[i].value);
  }
  free(arena);
  return 0;
}
