/*
 * inject_test.c - proves sidecar/inject: the exact vendor request built for
 * each kind of inject rule alone and together, that agent values stay
 * inside their path segment and cannot override an injected field, that
 * CR/LF/NUL never reach a header, the size caps, and that the types used
 * here pass registration (lk_schema_check_type; its refusals are proved in
 * schema_test.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/schema.h"
#include "sidecar/inject.h"

#define BASE "https://api.example"

typedef struct {
  const char *name, *in, *type;
  int required;
} param_spec;

typedef struct {
  const char *in, *name, *value, *username, *password;
} rule_spec;

typedef struct {
  Latchkey__V1__Tool tool;
  Latchkey__V1__Operation op;
  Latchkey__V1__Operation *ops[1];
  Latchkey__V1__Param params[8];
  Latchkey__V1__Param *pptrs[8];
  Latchkey__V1__CredentialType type;
  Latchkey__V1__CredentialField fdefs[4];
  Latchkey__V1__CredentialField *fptrs[4];
  Latchkey__V1__InjectRule rules[6];
  Latchkey__V1__InjectRule *rptrs[6];
  lk_field fields[4];
  size_t n_fields;
} fixture;

static void set_op(fixture *f, const char *method, const char *path,
                   const param_spec *specs, size_t n) {
  Latchkey__V1__Tool tool = LATCHKEY__V1__TOOL__INIT;
  Latchkey__V1__Operation op = LATCHKEY__V1__OPERATION__INIT;
  f->tool = tool;
  f->tool.id = "weather";
  f->tool.base_url = BASE;
  f->op = op;
  f->op.name = "op";
  f->op.method = (char *)method;
  f->op.path = (char *)path;
  for (size_t i = 0; i < n; i++) {
    Latchkey__V1__Param p = LATCHKEY__V1__PARAM__INIT;
    p.name = (char *)specs[i].name;
    p.in = (char *)specs[i].in;
    p.type = (char *)specs[i].type;
    p.required = specs[i].required;
    f->params[i] = p;
    f->pptrs[i] = &f->params[i];
  }
  f->op.n_params = n;
  f->op.params = f->pptrs;
  f->ops[0] = &f->op;
  f->tool.n_operations = 1;
  f->tool.operations = f->ops;
}

/* Declares fields names[i] (secret) with values[i] (NULL: declared only). */
static void set_type(fixture *f, const char *const *names,
                     const char *const *values, size_t nf,
                     const rule_spec *rules, size_t nr) {
  Latchkey__V1__CredentialType type = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  f->type = type;
  f->type.id = "test-type";
  f->n_fields = 0;
  for (size_t i = 0; i < nf; i++) {
    Latchkey__V1__CredentialField fd = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
    fd.name = (char *)names[i];
    fd.secret = 1;
    f->fdefs[i] = fd;
    f->fptrs[i] = &f->fdefs[i];
    if (values != NULL && values[i] != NULL) {
      f->fields[f->n_fields].name = names[i];
      f->fields[f->n_fields].value =
          lk_secret_from(values[i], strlen(values[i]));
      f->fields[f->n_fields].secret = 1;
      f->n_fields++;
    }
  }
  f->type.n_fields = nf;
  f->type.fields = f->fptrs;
  for (size_t i = 0; i < nr; i++) {
    Latchkey__V1__InjectRule r = LATCHKEY__V1__INJECT_RULE__INIT;
    r.in = (char *)rules[i].in;
    if (rules[i].name != NULL)
      r.name = (char *)rules[i].name;
    if (rules[i].value != NULL)
      r.value = (char *)rules[i].value;
    if (rules[i].username != NULL)
      r.username = (char *)rules[i].username;
    if (rules[i].password != NULL)
      r.password = (char *)rules[i].password;
    f->rules[i] = r;
    f->rptrs[i] = &f->rules[i];
  }
  f->type.n_inject = nr;
  f->type.inject = f->rptrs;
}

static void free_fields(fixture *f) {
  for (size_t i = 0; i < f->n_fields; i++) {
    lk_secret_free((lk_secret *)f->fields[i].value);
  }
  f->n_fields = 0;
}

static json_t *args_of(const char *text) {
  json_error_t jerr;
  json_t *a = json_loads(text, 0, &jerr);
  if (a == NULL) {
    fail_msg("bad test JSON %s: %s", text, jerr.text);
  }
  return a;
}

/* Builds with f's op and type (or none), expecting code. */
static lk_http_request *build(fixture *f, int with_type, const char *args_text,
                              lk_status code, lk_err *err) {
  json_t *args = args_text != NULL ? args_of(args_text) : NULL;
  lk_http_request *r = (lk_http_request *)1;
  lk_err_clear(err);
  lk_status st = lk_inject_build(&f->tool, &f->op, with_type ? &f->type : NULL,
                                 f->fields, f->n_fields, args, &r, err);
  json_decref(args);
  if (st != code) {
    fail_msg("got %s (%s), want %s", lk_status_name(st), err->msg,
             lk_status_name(code));
  }
  if (code != LK_OK) {
    assert_null(r);
    assert_int_equal(err->code, code);
    return NULL;
  }
  assert_non_null(r);
  return r;
}

static void assert_msg_eq(const lk_err *err, const char *want) {
  if (strcmp(err->msg, want) != 0) {
    fail_msg("message\n  got:  %s\n  want: %s", err->msg, want);
  }
}

static void assert_msg_has(const lk_err *err, const char *part) {
  if (strstr(err->msg, part) == NULL) {
    fail_msg("message '%s' lacks '%s'", err->msg, part);
  }
}

static void assert_msg_lacks(const lk_err *err, const char *part) {
  if (strstr(err->msg, part) != NULL) {
    fail_msg("message '%s' must not contain '%s'", err->msg, part);
  }
}

static void header_rule_sets_rendered_header(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"token"};
  static const char *const values[] = {"tok_ABC123"};
  static const rule_spec rules[] = {
      {"header", "Authorization", "Bearer {token}", NULL, NULL}};
  set_op(&f, "GET", "/v1/me", NULL, 0);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  lk_http_request *r = build(&f, 1, "{}", LK_OK, &err);
  assert_string_equal(r->method, "GET");
  assert_string_equal(lk_secret_str(r->url), BASE "/v1/me");
  assert_int_equal(r->n_headers, 1);
  assert_string_equal(lk_secret_str(r->headers[0]),
                      "Authorization: Bearer tok_ABC123");
  assert_null(r->body);
  assert_null(r->userpwd);
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void query_rule_appends_encoded_parameter(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"api_key"};
  static const char *const values[] = {"ab c&d=e+f/"};
  static const rule_spec rules[] = {{"query", "key", "{api_key}", NULL, NULL}};
  static const param_spec params[] = {{"city", "path", "string", 1},
                                      {"days", "query", "integer", 0}};
  set_op(&f, "GET", "/v1/forecast/{city}", params, 2);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  lk_http_request *r =
      build(&f, 1, "{\"city\":\"Paris\",\"days\":3}", LK_OK, &err);
  assert_string_equal(lk_secret_str(r->url), BASE
                      "/v1/forecast/Paris?days=3&key=ab%20c%26d%3De%2Bf%2F");
  assert_true(r->url_has_credential); /* so forward.c never pools it */
  assert_int_equal(r->n_headers, 0);
  assert_null(r->body);
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void basic_rule_sets_userpwd(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"user", "password"};
  static const char *const values[] = {"alice", "pa:ss word"};
  static const rule_spec rules[] = {
      {"basic", NULL, NULL, "{user}", "{password}"}};
  set_op(&f, "GET", "/v1/me", NULL, 0);
  set_type(&f, names, values, 2, rules, 1);
  lk_err err;
  lk_http_request *r = build(&f, 1, "{}", LK_OK, &err);
  assert_non_null(r->userpwd);
  assert_string_equal(lk_secret_str(r->userpwd), "alice:pa:ss word");
  assert_int_equal(r->n_headers, 0);
  assert_string_equal(lk_secret_str(r->url), BASE "/v1/me");
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void body_rules_skip_operations_without_a_body(void **state) {
  (void)state;
  static const char *const names[] = {"token", "api_key"};
  static const char *const values[] = {"tok_ABC123", "key_0123456789"};
  static const rule_spec rules[] = {
      {"header", "Authorization", "Bearer {token}", NULL, NULL},
      {"body", "api_key", "{api_key}", NULL, NULL}};
  static const char *const methods[] = {"GET", "DELETE"};
  for (size_t i = 0; i < 2; i++) {
    fixture f;
    set_op(&f, methods[i], "/v1/me", NULL, 0);
    set_type(&f, names, values, 2, rules, 2);
    lk_err err;
    lk_http_request *r = build(&f, 1, "{}", LK_OK, &err);
    assert_string_equal(r->method, methods[i]);
    assert_null(r->body);
    assert_int_equal(r->n_headers, 1);
    assert_string_equal(lk_secret_str(r->headers[0]),
                        "Authorization: Bearer tok_ABC123");
    lk_http_request_destroy(r);
    free_fields(&f);
  }
}

static void body_rule_adds_top_level_field_after_agent_params(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"api_key"};
  static const char *const values[] = {"s\"e\\c/r\n\x01t"};
  static const rule_spec rules[] = {
      {"body", "api_key", "{api_key}", NULL, NULL}};
  static const param_spec params[] = {{"name", "body", "string", 1},
                                      {"count", "body", "integer", 0},
                                      {"tags", "body", "array", 0}};
  set_op(&f, "POST", "/v1/items", params, 3);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  lk_http_request *r =
      build(&f, 1, "{\"tags\":[\"a\",1],\"name\":\"x\\\"y\",\"count\":2}",
            LK_OK, &err);
  assert_string_equal(lk_secret_str(r->body),
                      "{\"name\":\"x\\\"y\",\"count\":2,\"tags\":[\"a\",1],"
                      "\"api_key\":\"s\\\"e\\\\c/r\\n\\u0001t\"}");
  json_error_t jerr;
  json_t *body = json_loads(lk_secret_str(r->body), 0, &jerr);
  assert_non_null(body);
  assert_string_equal(json_string_value(json_object_get(body, "api_key")),
                      values[0]);
  json_decref(body);
  assert_int_equal(r->n_headers, 1);
  assert_string_equal(lk_secret_str(r->headers[0]),
                      "Content-Type: application/json");
  assert_string_equal(r->method, "POST");
  assert_string_equal(lk_secret_str(r->url), BASE "/v1/items");
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void all_four_rule_kinds_apply_at_once(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"token", "user", "password", "tenant"};
  static const char *const values[] = {"tok_1234", "bob", "hunter22",
                                       "acme corp"};
  static const rule_spec rules[] = {
      {"header", "X-Api-Key", "{token}", NULL, NULL},
      {"query", "tenant", "{tenant}", NULL, NULL},
      {"basic", NULL, NULL, "{user}", "{password}"},
      {"body", "auth", "{token}:{tenant}", NULL, NULL},
      {"header", "X-Tenant", "t={tenant}", NULL, NULL},
  };
  static const param_spec params[] = {{"id", "path", "integer", 1},
                                      {"q", "query", "string", 0},
                                      {"note", "body", "string", 0}};
  set_op(&f, "PUT", "/v2/items/{id}", params, 3);
  set_type(&f, names, values, 4, rules, 5);
  lk_err err;
  assert_int_equal(lk_schema_check_type(&f.type, &err), LK_OK);
  lk_http_request *r =
      build(&f, 1, "{\"id\":42,\"q\":\"x\",\"note\":\"hi\"}", LK_OK, &err);
  assert_string_equal(r->method, "PUT");
  assert_string_equal(lk_secret_str(r->url),
                      BASE "/v2/items/42?q=x&tenant=acme%20corp");
  assert_int_equal(r->n_headers, 3);
  assert_string_equal(lk_secret_str(r->headers[0]), "X-Api-Key: tok_1234");
  assert_string_equal(lk_secret_str(r->headers[1]), "X-Tenant: t=acme corp");
  assert_string_equal(lk_secret_str(r->headers[2]),
                      "Content-Type: application/json");
  assert_string_equal(lk_secret_str(r->userpwd), "bob:hunter22");
  assert_string_equal(lk_secret_str(r->body),
                      "{\"note\":\"hi\",\"auth\":\"tok_1234:acme corp\"}");
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void doubled_braces_render_as_literal_braces(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"token"};
  static const char *const values[] = {"tok"};
  static const rule_spec rules[] = {
      {"header", "X-T", "{{lit}} {token} }}{{", NULL, NULL}};
  set_op(&f, "GET", "/", NULL, 0);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  assert_int_equal(lk_schema_check_type(&f.type, &err), LK_OK);
  lk_http_request *r = build(&f, 1, NULL, LK_OK, &err);
  assert_string_equal(lk_secret_str(r->headers[0]), "X-T: {lit} tok }{");
  assert_string_equal(lk_secret_str(r->url), BASE "/");
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void path_values_stay_inside_their_segment(void **state) {
  (void)state;
  /* Every hostile value an agent may send that is not refused: each
   * arrives as exactly one segment, every byte but A-Z a-z 0-9 - _ ~
   * percent-encoded, '%' included. */
  static const struct {
    const char *json_value, *segment;
  } cases[] = {
      {"\"a/b\"", "a%2Fb"},
      {"\"/\"", "%2F"},
      {"\"%2F\"", "%252F"},
      {"\"%252F\"", "%25252F"},
      {"\"%2f..x\"", "%252f%2E%2Ex"},
      {"\"x?y#z@w\"", "x%3Fy%23z%40w"},
      {"\"?\"", "%3F"},
      {"\"?x=1\"", "%3Fx%3D1"},
      {"\"#\"", "%23"},
      {"\"#frag\"", "%23frag"},
      {"\"@evil.example\"", "%40evil%2Eexample"},
      {"\"user@evil.example:80\"", "user%40evil%2Eexample%3A80"},
      {"\"\\\\\"", "%5C"},
      {"\"a b\\\\c\"", "a%20b%5Cc"},
      {"\";\"", "%3B"},
      {"\"a;b=c\"", "a%3Bb%3Dc"},
      {"\"S\\u00e3o\"", "S%C3%A3o"},
      {"\"\\u65e5\\u672c\"", "%E6%97%A5%E6%9C%AC"},
      {"\"\\ud83d\\ude00\"", "%F0%9F%98%80"},
      {"\"A-z_0~9\"", "A-z_0~9"},
      {"\"...\"", "%2E%2E%2E"},
      {"\".x\"", "%2Ex"},
      {"\"..x/y\"", "%2E%2Ex%2Fy"},
      {"\"a\\r\\nb\"", "a%0D%0Ab"},
      {"\"\\r\\nHost: evil\"", "%0D%0AHost%3A%20evil"},
      {"\"\\t\\u0001\\u007f\"", "%09%01%7F"},
      {"\"%\"", "%25"},
      {"\"%zz\"", "%25zz"},
      {"17", "17"},
      {"true", "true"},
      {"[\"a\",1]", "%5B%22a%22%2C1%5D"},
  };
  static const param_spec params[] = {{"name", "path", "string", 1}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    fixture f;
    set_op(&f, "GET", "/v1/files/{name}/meta", params, 1);
    f.n_fields = 0;
    char args[128];
    char want[256];
    snprintf(args, sizeof(args), "{\"name\":%s}", cases[i].json_value);
    snprintf(want, sizeof(want), BASE "/v1/files/%s/meta", cases[i].segment);
    lk_err err;
    lk_http_request *r = build(&f, 0, args, LK_OK, &err);
    if (strcmp(lk_secret_str(r->url), want) != 0) {
      fail_msg("value %s\n  got:  %s\n  want: %s", cases[i].json_value,
               lk_secret_str(r->url), want);
    }
    lk_http_request_destroy(r);
  }
}

/* NUL cannot come through arguments_json (args.c refuses \u0000), but the
 * builder on its own still keeps it inside the segment. */
static void nul_in_a_path_value_stays_encoded(void **state) {
  (void)state;
  static const param_spec params[] = {{"name", "path", "string", 1}};
  fixture f;
  set_op(&f, "GET", "/v1/files/{name}", params, 1);
  json_t *args = json_object();
  json_object_set_new(args, "name", json_stringn("a\0/b", 4));
  lk_http_request *r = NULL;
  lk_err err;
  lk_err_clear(&err);
  assert_int_equal(
      lk_inject_build(&f.tool, &f.op, NULL, NULL, 0, args, &r, &err), LK_OK);
  assert_string_equal(lk_secret_str(r->url), BASE "/v1/files/a%00%2Fb");
  lk_http_request_destroy(r);
  json_decref(args);
}

#define DOT_MSG(p)                                                         \
  "path parameter '" p                                                     \
  "' must not be \".\" or \"..\" or hold such a "                          \
  "segment between '/' or '\\', even percent-encoded; send a name, not a " \
  "path"

static void dot_segments_and_empty_path_values_are_rejected(void **state) {
  (void)state;
  /* As sent, and after one or more percent-decodings (a vendor that
   * decodes %2F, or decodes twice, would otherwise route on them). */
  static const char *const dots[] = {
      ".",
      "..",
      "../admin",
      "../",
      "..\\\\admin",
      "a/..",
      "a/../b",
      "./x",
      "x/.",
      "../etc/passwd",
      "%2e%2e",
      "%2E%2e",
      "%2E%2e/x",
      "%2e",
      ".%2e",
      "%2e.",
      "a%2F..",
      "a%2f%2e%2e",
      "..%2Fadmin",
      "%252e%252e",
      "%25252e",
      "..;x",
      "..;",
      "%2e%2e;jsessionid=1",
      "x/..;/admin",
      "%2e%2e%5cx",
      "%%32%65%%32%65",
      "..%00",
  };
  static const param_spec params[] = {{"name", "path", "string", 1}};
  for (size_t i = 0; i < sizeof(dots) / sizeof(dots[0]); i++) {
    fixture f;
    set_op(&f, "GET", "/v1/files/{name}", params, 1);
    f.n_fields = 0;
    char args[128];
    snprintf(args, sizeof(args), "{\"name\":\"%s\"}", dots[i]);
    lk_err err;
    build(&f, 0, args, LK_INVALID_ARGUMENT, &err);
    assert_msg_eq(&err, DOT_MSG("name"));
  }
  /* A dot segment inside the JSON text of an array counts as well. */
  {
    fixture f;
    set_op(&f, "GET", "/v1/files/{name}", params, 1);
    f.n_fields = 0;
    lk_err err;
    build(&f, 0, "{\"name\":[\"x/../y\"]}", LK_INVALID_ARGUMENT, &err);
    assert_msg_eq(&err, DOT_MSG("name"));
  }
  fixture f;
  set_op(&f, "GET", "/v1/files/{name}", params, 1);
  f.n_fields = 0;
  lk_err err;
  build(&f, 0, "{\"name\":\"\"}", LK_INVALID_ARGUMENT, &err);
  assert_msg_eq(&err, "path parameter 'name' must not be empty");
  build(&f, 0, "{}", LK_INVALID_ARGUMENT, &err);
  assert_msg_eq(&err, "missing required path parameter 'name'");
}

static void path_value_nested_past_the_decode_limit_is_rejected(void **state) {
  (void)state;
  static const param_spec params[] = {{"name", "path", "string", 1}};
  fixture f;
  set_op(&f, "GET", "/v1/files/{name}", params, 1);
  f.n_fields = 0;
  /* "%2541" is "A" after two decodings; each extra "25" adds one. */
  char args[256];
  char value[128];
  size_t n = 0;
  value[n++] = '%';
  for (int i = 0; i < LK_INJECT_PATH_DECODE_ROUNDS; i++) {
    value[n++] = '2';
    value[n++] = '5';
  }
  memcpy(value + n, "41", 3);
  snprintf(args, sizeof(args), "{\"name\":\"%s\"}", value);
  lk_err err;
  build(&f, 0, args, LK_INVALID_ARGUMENT, &err);
  assert_msg_eq(&err,
                "path parameter 'name' is percent-encoded more than 16 "
                "levels deep; send it decoded");
  /* One level less is decoded to its end ("A") and sent encoded. */
  memmove(value + 1, value + 3, strlen(value + 3) + 1);
  snprintf(args, sizeof(args), "{\"name\":\"%s\"}", value);
  lk_http_request *r = build(&f, 0, args, LK_OK, &err);
  assert_non_null(strstr(lk_secret_str(r->url), "/v1/files/%2525"));
  lk_http_request_destroy(r);
}

/* Query values cannot start another parameter or end the query; header
 * values cannot come from arguments at all (only path, query and body
 * params exist), so a value shaped like a header stays in the query. */
static void query_values_cannot_inject_parameters_or_headers(void **state) {
  (void)state;
  static const param_spec params[] = {{"q", "query", "string", 0}};
  fixture f;
  set_op(&f, "GET", "/s", params, 1);
  f.n_fields = 0;
  lk_err err;
  lk_http_request *r = build(
      &f, 0,
      "{\"q\":\"x&key=evil#frag?y=1;z\\r\\nX-Api-Key: evil\\\\ %2e%2e/\"}",
      LK_OK, &err);
  assert_string_equal(lk_secret_str(r->url), BASE
                      "/s?q=x%26key%3Devil%23frag%3Fy%3D1%3Bz%0D%0AX-Api-"
                      "Key%3A%20evil%5C%20%252e%252e%2F");
  assert_false(r->url_has_credential); /* the agent's own query only */
  assert_int_equal(r->n_headers, 0);
  lk_http_request_destroy(r);
}

static void query_values_are_encoded_by_json_type(void **state) {
  (void)state;
  static const param_spec params[] = {
      {"q", "query", "string", 0},  {"n", "query", "integer", 0},
      {"x", "query", "number", 0},  {"y", "query", "number", 0},
      {"b", "query", "boolean", 0}, {"f", "query", "boolean", 0},
      {"arr", "query", "array", 0}, {"obj", "query", "object", 0},
  };
  fixture f;
  set_op(&f, "GET", "/s", params, 8);
  f.n_fields = 0;
  lk_err err;
  lk_http_request *r = build(
      &f, 0,
      "{\"obj\":{\"k\":\"v\"},\"q\":\"a b&c=d+e/\\u00e9\",\"n\":-5,\"x\":0.1,"
      "\"y\":2.5e10,\"b\":true,\"f\":false,\"arr\":[1,\"a b\"]}",
      LK_OK, &err);
  assert_string_equal(
      lk_secret_str(r->url), BASE
      "/s?q=a%20b%26c%3Dd%2Be%2F%C3%A9&n=-5&x=0.1&y=25000000000&b=true"
      "&f=false&arr=%5B1%2C%22a%20b%22%5D&obj=%7B%22k%22%3A%22v%22%7D");
  lk_http_request_destroy(r);
}

static void query_joins_a_path_that_already_has_a_query(void **state) {
  (void)state;
  static const param_spec params[] = {{"q", "query", "string", 0}};
  fixture f;
  set_op(&f, "GET", "/s?format=json", params, 1);
  f.tool.base_url = BASE "/";
  f.n_fields = 0;
  lk_err err;
  lk_http_request *r = build(&f, 0, "{\"q\":\"z\"}", LK_OK, &err);
  assert_string_equal(lk_secret_str(r->url), BASE "/s?format=json&q=z");
  lk_http_request_destroy(r);
}

static void null_arguments_count_as_absent(void **state) {
  (void)state;
  static const param_spec params[] = {{"q", "query", "string", 0},
                                      {"b", "body", "string", 0}};
  fixture f;
  set_op(&f, "POST", "/s", params, 2);
  f.n_fields = 0;
  lk_err err;
  lk_http_request *r = build(&f, 0, "{\"q\":null,\"b\":null}", LK_OK, &err);
  assert_string_equal(lk_secret_str(r->url), BASE "/s");
  assert_string_equal(lk_secret_str(r->body), "{}");
  lk_http_request_destroy(r);
  r = build(&f, 0, NULL, LK_OK, &err);
  assert_string_equal(lk_secret_str(r->url), BASE "/s");
  lk_http_request_destroy(r);
}

static void agent_cannot_set_an_injected_query_field(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"api_key"};
  static const char *const values[] = {"sk_secret_value"};
  static const rule_spec rules[] = {{"query", "key", "{api_key}", NULL, NULL}};
  static const param_spec params[] = {{"key", "query", "string", 0},
                                      {"q", "query", "string", 0}};
  set_op(&f, "GET", "/s", params, 2);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  build(&f, 1, "{\"q\":\"a\",\"key\":\"attacker\"}", LK_INVALID_ARGUMENT, &err);
  assert_msg_eq(&err,
                "parameter 'key' is supplied by the credential and cannot be "
                "set by the caller; leave it out");
  /* Without it the call goes through with the injected value only. */
  lk_http_request *r = build(&f, 1, "{\"q\":\"a\"}", LK_OK, &err);
  assert_string_equal(lk_secret_str(r->url), BASE "/s?q=a&key=sk_secret_value");
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void agent_cannot_set_an_injected_body_field(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"api_key"};
  static const char *const values[] = {"sk_secret_value"};
  static const rule_spec rules[] = {
      {"body", "api_key", "{api_key}", NULL, NULL}};
  static const param_spec params[] = {{"api_key", "body", "string", 0},
                                      {"text", "body", "string", 0}};
  set_op(&f, "POST", "/send", params, 2);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  build(&f, 1, "{\"api_key\":\"attacker\",\"text\":\"hi\"}",
        LK_INVALID_ARGUMENT, &err);
  assert_msg_eq(&err,
                "parameter 'api_key' is supplied by the credential and cannot "
                "be set by the caller; leave it out");
  free_fields(&f);
}

static void same_name_in_another_place_is_not_an_override(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"api_key"};
  static const char *const values[] = {"sk_secret_value"};
  static const rule_spec rules[] = {{"query", "key", "{api_key}", NULL, NULL}};
  static const param_spec params[] = {{"key", "body", "string", 0}};
  set_op(&f, "POST", "/s", params, 1);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  lk_http_request *r = build(&f, 1, "{\"key\":\"k\"}", LK_OK, &err);
  assert_string_equal(lk_secret_str(r->url), BASE "/s?key=sk_secret_value");
  assert_string_equal(lk_secret_str(r->body), "{\"key\":\"k\"}");
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void crlf_or_nul_in_a_rendered_header_is_rejected(void **state) {
  (void)state;
  static const char *const bad[] = {"abc\r\nX-Evil: 1", "abc\nX-Evil: 1",
                                    "abc\rX-Evil"};
  static const rule_spec rules[] = {
      {"header", "X-Api-Key", "{token}", NULL, NULL}};
  static const char *const names[] = {"token"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    fixture f;
    const char *values[] = {bad[i]};
    set_op(&f, "GET", "/", NULL, 0);
    set_type(&f, names, values, 1, rules, 1);
    lk_err err;
    build(&f, 1, "{}", LK_INVALID_ARGUMENT, &err);
    assert_msg_eq(&err,
                  "the value for header 'X-Api-Key' (credential type "
                  "'test-type' inject[0]) contains CR, LF or NUL; update the "
                  "credential's values");
    assert_msg_lacks(&err, "abc");
    assert_msg_lacks(&err, "Evil");
    free_fields(&f);
  }
  /* A NUL inside the value. */
  fixture f;
  static const char *const plain[] = {"x"};
  set_op(&f, "GET", "/", NULL, 0);
  set_type(&f, names, plain, 1, rules, 1);
  lk_secret_free((lk_secret *)f.fields[0].value);
  f.fields[0].value = lk_secret_from("ab\0cd", 5);
  lk_err err;
  build(&f, 1, "{}", LK_INVALID_ARGUMENT, &err);
  assert_msg_has(&err, "contains CR, LF or NUL");
  free_fields(&f);
}

static void colon_in_basic_username_is_rejected(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"user", "password"};
  static const char *const values[] = {"ali:ce", "pw"};
  static const rule_spec rules[] = {
      {"basic", NULL, NULL, "{user}", "{password}"}};
  set_op(&f, "GET", "/", NULL, 0);
  set_type(&f, names, values, 2, rules, 1);
  lk_err err;
  build(&f, 1, "{}", LK_INVALID_ARGUMENT, &err);
  assert_msg_eq(&err,
                "the basic-auth username (credential type 'test-type' "
                "inject[0]) contains ':'; update the credential's values");
  free_fields(&f);
}

static void field_without_a_value_is_a_failed_precondition(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"token"};
  static const rule_spec rules[] = {
      {"header", "Authorization", "Bearer {token}", NULL, NULL}};
  set_op(&f, "GET", "/", NULL, 0);
  set_type(&f, names, NULL, 1, rules, 1);
  lk_err err;
  build(&f, 1, "{}", LK_FAILED_PRECONDITION, &err);
  assert_msg_eq(&err,
                "the credential has no value for field 'token' used by "
                "credential type 'test-type' inject[0]; update the credential");
}

/* Returns {"v":"aaa..."} with n a's. */
static char *long_arg(size_t n) {
  char *s = malloc(n + 16);
  assert_non_null(s);
  memcpy(s, "{\"v\":\"", 6);
  memset(s + 6, 'a', n);
  memcpy(s + 6 + n, "\"}", 3);
  return s;
}

static void url_is_capped_at_8_kib(void **state) {
  (void)state;
  static const param_spec params[] = {{"v", "query", "string", 0}};
  fixture f;
  set_op(&f, "GET", "/q", params, 1);
  f.n_fields = 0;
  size_t fixed = strlen(BASE "/q?v=");
  char *ok = long_arg(LK_INJECT_URL_MAX - fixed);
  char *over = long_arg(LK_INJECT_URL_MAX - fixed + 1);
  lk_err err;
  lk_http_request *r = build(&f, 0, ok, LK_OK, &err);
  assert_int_equal(lk_secret_len(r->url), LK_INJECT_URL_MAX);
  lk_http_request_destroy(r);
  build(&f, 0, over, LK_RESOURCE_EXHAUSTED, &err);
  assert_msg_eq(&err,
                "the vendor URL would exceed 8192 bytes; send shorter "
                "arguments");
  free(ok);
  free(over);
}

static void header_is_capped_at_8_kib(void **state) {
  (void)state;
  static const char *const names[] = {"token"};
  static const rule_spec rules[] = {{"header", "X-K", "{token}", NULL, NULL}};
  size_t n = LK_INJECT_HEADER_MAX - strlen("X-K: ");
  char *v = malloc(n + 2);
  assert_non_null(v);
  memset(v, 'k', n);
  v[n] = '\0';
  const char *values[] = {v};
  fixture f;
  set_op(&f, "GET", "/", NULL, 0);
  set_type(&f, names, values, 1, rules, 1);
  lk_err err;
  lk_http_request *r = build(&f, 1, "{}", LK_OK, &err);
  assert_int_equal(lk_secret_len(r->headers[0]), LK_INJECT_HEADER_MAX);
  lk_http_request_destroy(r);
  free_fields(&f);

  v[n] = 'k';
  v[n + 1] = '\0';
  set_type(&f, names, values, 1, rules, 1);
  build(&f, 1, "{}", LK_RESOURCE_EXHAUSTED, &err);
  assert_msg_eq(&err,
                "the vendor header would exceed 8192 bytes; shorten the "
                "credential's values");
  free_fields(&f);
  free(v);
}

static void body_is_capped_at_1_mib(void **state) {
  (void)state;
  static const param_spec params[] = {{"v", "body", "string", 0}};
  fixture f;
  set_op(&f, "POST", "/b", params, 1);
  f.n_fields = 0;
  size_t fixed = strlen("{\"v\":\"\"}");
  char *ok = long_arg(LK_INJECT_BODY_MAX - fixed);
  char *over = long_arg(LK_INJECT_BODY_MAX - fixed + 1);
  lk_err err;
  lk_http_request *r = build(&f, 0, ok, LK_OK, &err);
  assert_int_equal(lk_secret_len(r->body), LK_INJECT_BODY_MAX);
  lk_http_request_destroy(r);
  build(&f, 0, over, LK_RESOURCE_EXHAUSTED, &err);
  assert_msg_eq(&err,
                "the vendor body would exceed 1048576 bytes; send shorter "
                "arguments");
  free(ok);
  free(over);
}

static void tool_without_credential_gets_no_injection(void **state) {
  (void)state;
  fixture f;
  set_op(&f, "DELETE", "/v1/x", NULL, 0);
  f.n_fields = 0;
  lk_err err;
  lk_http_request *r = build(&f, 0, "{}", LK_OK, &err);
  assert_string_equal(r->method, "DELETE");
  assert_string_equal(lk_secret_str(r->url), BASE "/v1/x");
  assert_int_equal(r->n_headers, 0);
  assert_null(r->body);
  assert_null(r->userpwd);
  lk_http_request_destroy(r);
}

static void injected_content_type_replaces_the_default(void **state) {
  (void)state;
  fixture f;
  static const char *const names[] = {"token"};
  static const char *const values[] = {"tok_1"};
  static const rule_spec rules[] = {
      {"header", "content-type", "application/vnd.api+json", NULL, NULL},
      {"body", "token", "{token}", NULL, NULL}};
  set_op(&f, "POST", "/", NULL, 0);
  set_type(&f, names, values, 1, rules, 2);
  lk_err err;
  lk_http_request *r = build(&f, 1, "{}", LK_OK, &err);
  assert_int_equal(r->n_headers, 1);
  assert_string_equal(lk_secret_str(r->headers[0]),
                      "content-type: application/vnd.api+json");
  assert_string_equal(lk_secret_str(r->body), "{\"token\":\"tok_1\"}");
  lk_http_request_destroy(r);
  free_fields(&f);
}

static void broken_tool_definitions_are_failed_preconditions(void **state) {
  (void)state;
  lk_err err;
  fixture f;
  set_op(&f, "FETCH", "/", NULL, 0);
  f.n_fields = 0;
  build(&f, 0, "{}", LK_FAILED_PRECONDITION, &err);
  assert_msg_has(&err, "unsupported method");

  set_op(&f, "GET", "/", NULL, 0);
  f.tool.base_url = "ftp://files.example";
  build(&f, 0, "{}", LK_FAILED_PRECONDITION, &err);
  assert_msg_has(&err, "base_url must start with https:// or http://");

  set_op(&f, "GET", "/", NULL, 0);
  f.tool.base_url = BASE "?x=1";
  build(&f, 0, "{}", LK_FAILED_PRECONDITION, &err);
  assert_msg_has(&err, "base_url has a space, control, '?' or '#'");

  /* A path not starting with '/' could extend the host name. */
  static const param_spec params[] = {{"h", "path", "string", 1}};
  set_op(&f, "GET", "{h}/x", params, 1);
  build(&f, 0, "{\"h\":\".evil.example\"}", LK_FAILED_PRECONDITION, &err);
  assert_msg_has(&err, "path must start with '/'");

  set_op(&f, "GET", "/{nope}", params, 1);
  build(&f, 0, "{\"h\":\"x\"}", LK_FAILED_PRECONDITION, &err);
  assert_msg_has(&err, "placeholder that names no path parameter");
}

static void destroy_accepts_null(void **state) {
  (void)state;
  lk_http_request_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(header_rule_sets_rendered_header),
      cmocka_unit_test(query_rule_appends_encoded_parameter),
      cmocka_unit_test(basic_rule_sets_userpwd),
      cmocka_unit_test(body_rule_adds_top_level_field_after_agent_params),
      cmocka_unit_test(body_rules_skip_operations_without_a_body),
      cmocka_unit_test(all_four_rule_kinds_apply_at_once),
      cmocka_unit_test(doubled_braces_render_as_literal_braces),
      cmocka_unit_test(path_values_stay_inside_their_segment),
      cmocka_unit_test(nul_in_a_path_value_stays_encoded),
      cmocka_unit_test(dot_segments_and_empty_path_values_are_rejected),
      cmocka_unit_test(path_value_nested_past_the_decode_limit_is_rejected),
      cmocka_unit_test(query_values_cannot_inject_parameters_or_headers),
      cmocka_unit_test(query_values_are_encoded_by_json_type),
      cmocka_unit_test(query_joins_a_path_that_already_has_a_query),
      cmocka_unit_test(null_arguments_count_as_absent),
      cmocka_unit_test(agent_cannot_set_an_injected_query_field),
      cmocka_unit_test(agent_cannot_set_an_injected_body_field),
      cmocka_unit_test(same_name_in_another_place_is_not_an_override),
      cmocka_unit_test(crlf_or_nul_in_a_rendered_header_is_rejected),
      cmocka_unit_test(colon_in_basic_username_is_rejected),
      cmocka_unit_test(field_without_a_value_is_a_failed_precondition),
      cmocka_unit_test(url_is_capped_at_8_kib),
      cmocka_unit_test(header_is_capped_at_8_kib),
      cmocka_unit_test(body_is_capped_at_1_mib),
      cmocka_unit_test(tool_without_credential_gets_no_injection),
      cmocka_unit_test(injected_content_type_replaces_the_default),
      cmocka_unit_test(broken_tool_definitions_are_failed_preconditions),
      cmocka_unit_test(destroy_accepts_null),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
