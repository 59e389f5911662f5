/*
 * schema_test.c - proves lib/schema's contract: a valid tool (with its
 * credential type) passes; each broken rule of a tool, an operation or a
 * credential type is refused with LK_INVALID_ARGUMENT and a message naming
 * what to fix (exact where an owner reads it as is); the canonical form;
 * the template scanner's pieces in both syntaxes; the shared facts
 * (methods, parameter types, header tokens, ids) the call path reads; and
 * oauth2 types: the kind, the standard fields' secret flags, their
 * canonical completion (fields in table order, the default bearer rule)
 * and the field limit counting the fields it adds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/oauth.h"
#include "lib/schema.h"
#include "tests/unit/tool_fixture.h"

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

/* Asserts st is LK_INVALID_ARGUMENT (also in err) and the message mentions
 * want (when not NULL); what names the case in a failure. */
static void assert_refused(lk_status st, const lk_err *err, const char *want,
                           const char *what) {
  if (st != LK_INVALID_ARGUMENT || err->code != LK_INVALID_ARGUMENT) {
    fail_msg("%s: want INVALID_ARGUMENT, got %s: %s", what, lk_status_name(st),
             err->msg);
  }
  if (want != NULL && strstr(err->msg, want) == NULL) {
    fail_msg("%s: message \"%s\" does not mention \"%s\"", what, err->msg,
             want);
  }
}

/* ---- tools (fixture: tool_fixture.h) ---- */

static void valid_tool_with_its_type_passes(void **state) {
  tool_fx t;
  lk_err err;
  (void)state;
  tool_fx_init(&t, "weather");
  lk_err_clear(&err);
  assert_int_equal(lk_schema_check_tool(&t.tool, &t.type, &err), LK_OK);
  assert_int_equal(lk_schema_check_tool(&t.tool, NULL, &err), LK_OK);
  assert_int_equal(lk_schema_check_type(&t.type, &err), LK_OK);
}

static void other_base_url_forms_pass(void **state) {
  static const char *const ok[] = {
      "http://127.0.0.1:8080", "https://[::1]:8443",
      "https://api.example:65535/", "http://localhost"};
  tool_fx t;
  lk_err err;
  size_t i;
  (void)state;
  for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    tool_fx_init(&t, "weather");
    t.tool.base_url = (char *)ok[i];
    lk_err_clear(&err);
    if (lk_schema_check_tool(&t.tool, NULL, &err) != LK_OK) {
      fail_msg("%s: %s", ok[i], err.msg);
    }
  }
}

/* Each case breaks one rule of the valid tool (checked with its type). */
static void tool_rejects_each_invalid_field(void **state) {
  tool_fx t;
  lk_err err;
  Latchkey__V1__Param dup;
  Latchkey__V1__Param *dup_params[3];
  (void)state;

#define BAD(stmt, want)                                                      \
  do {                                                                       \
    tool_fx_init(&t, "weather");                                             \
    stmt;                                                                    \
    lk_err_clear(&err);                                                      \
    assert_refused(lk_schema_check_tool(&t.tool, &t.type, &err), &err, want, \
                   #stmt);                                                   \
  } while (0)

  BAD(t.tool.id = (char *)"", "tool.id");
  BAD(t.tool.id = (char *)"we/ather", "tool.id");
  BAD(t.tool.description = (char *)"", "description");
  BAD(t.tool.base_url = (char *)"", "base_url");
  BAD(t.tool.base_url = (char *)"ftp://api.example", "https://");
  BAD(t.tool.base_url = (char *)"api.example", "https://");
  BAD(t.tool.base_url = (char *)"https://api.example/v1", "path");
  BAD(t.tool.base_url = (char *)"https://api.example//", "path");
  BAD(t.tool.base_url = (char *)"https://user:pw@api.example", "user info");
  BAD(t.tool.base_url = (char *)"https://api.example?x=1", "query");
  BAD(t.tool.base_url = (char *)"https://api.example#frag", "fragment");
  BAD(t.tool.base_url = (char *)"https://", "host");
  BAD(t.tool.base_url = (char *)"https://:443", "host");
  BAD(t.tool.base_url = (char *)"https://api.example:0", "port");
  BAD(t.tool.base_url = (char *)"https://api.example:70000", "port");
  BAD(t.tool.base_url = (char *)"https://api.example:8a", "port");
  BAD(t.tool.base_url = (char *)"https://api.example:", "port");
  BAD(t.tool.base_url = (char *)"https://api example", "host");
  BAD(t.tool.base_url = (char *)"https://[zz]", "IPv6");
  BAD(t.tool.timeout_ms = LK_SCHEMA_MAX_TIMEOUT_MS + 1, "timeout_ms");
  BAD(t.tool.credential_type = (char *)"a/b", "tool.credential_type");
  BAD(t.tool.n_operations = 0, "no operations");
  BAD(t.op.name = (char *)"", "operation 1");
  BAD(t.op.name = (char *)"fore cast", "operation 1");
  BAD(t.op2.name = (char *)"forecast", "declared twice");
  BAD(t.op.method = (char *)"FETCH", "method");
  BAD(t.op.method = (char *)"get", "method");
  BAD(t.op.path = (char *)"v1/forecast/{city}", "start with '/'");
  BAD(t.op.path = (char *)"", "start with '/'");
  BAD(t.op.path = (char *)"/v1/forecast/{city}?x=1", "'?' or '#'");
  BAD(t.op.path = (char *)"/v1/forecast/{city}#top", "'?' or '#'");
  BAD(t.op.path = (char *)"/v1/{city}/{zone}", "{zone}");
  BAD(t.op.path = (char *)"/v1/forecast", "has no {city}");
  BAD(t.op.path = (char *)"/v1/{city}/{city}", "more than once");
  BAD(t.op.path = (char *)"/v1/{city", "unclosed");
  BAD(t.op.path = (char *)"/v1/city}", "'}'");
  BAD(t.op.path = (char *)"/v1/{days}/{city}", "{days}");
  BAD(t.op.path = (char *)"/v1/fore cast/{city}", "spaces");
  BAD(t.city.required = 0, "must be required");
  BAD(t.days.name = (char *)"city", "declared twice");
  BAD(t.days.name = (char *)"", "param 2");
  BAD(t.days.in = (char *)"header", "path, query or body");
  BAD(t.days.type = (char *)"date", "string, integer");
  BAD(t.op.n_params = 3, "in=body");
  BAD((t.op.method = (char *)"DELETE", t.op.n_params = 3), "in=body");
  /* the type registered with the tool must be the one it names */
  BAD(t.tool.credential_type = (char *)"other-key", "must be 'weather-key'");
  BAD(t.tool.credential_type = (char *)"", "must be 'weather-key'");
  /* and is checked like any credential type */
  BAD(t.type.n_fields = 0, "no fields");
  BAD(t.rule.value = (char *)"{nope}", "names no declared field");
#undef BAD

  /* duplicate params via a copy */
  tool_fx_init(&t, "weather");
  dup = t.days;
  dup_params[0] = &t.city;
  dup_params[1] = &t.days;
  dup_params[2] = &dup;
  t.op.params = dup_params;
  t.op.n_params = 3;
  lk_err_clear(&err);
  assert_refused(lk_schema_check_tool(&t.tool, NULL, &err), &err,
                 "'days' is declared twice", "duplicate param");
}

static void tool_messages_never_echo_base_url(void **state) {
  tool_fx t;
  lk_err err;
  (void)state;
  tool_fx_init(&t, "weather");
  t.tool.base_url = (char *)"https://user:hunter2@api.example";
  lk_err_clear(&err);
  assert_refused(lk_schema_check_tool(&t.tool, NULL, &err), &err, "user info",
                 "user info");
  assert_null(strstr(err.msg, "hunter2"));
}

static void normalize_drops_one_slash_and_defaults_max_len(void **state) {
  tool_fx t;
  (void)state;
  tool_fx_init(&t, "weather");
  lk_schema_normalize_tool(&t.tool);
  assert_string_equal(t.tool.base_url, "https://api.weather.example");
  lk_schema_normalize_tool(&t.tool);
  assert_string_equal(t.tool.base_url, "https://api.weather.example");
  assert_int_equal(t.field.max_len, 0);
  lk_schema_normalize_type(&t.type);
  assert_int_equal(t.field.max_len, LK_SCHEMA_DEFAULT_MAX_LEN);
  t.field.max_len = 40;
  lk_schema_normalize_type(&t.type);
  assert_int_equal(t.field.max_len, 40);
}

/* ---- operations alone ---- */

typedef struct {
  Latchkey__V1__Operation op;
  Latchkey__V1__Param params[2];
  Latchkey__V1__Param *ptrs[2];
} op_fx;

typedef struct {
  const char *name, *in, *type;
  int required;
} param_spec;

static void make_op(op_fx *o, const char *method, const char *path,
                    param_spec p0, param_spec p1) {
  const param_spec specs[2] = {p0, p1};
  size_t i;
  latchkey__v1__operation__init(&o->op);
  o->op.name = (char *)"op";
  o->op.method = (char *)method;
  o->op.path = (char *)path;
  for (i = 0; i < 2; i++) {
    latchkey__v1__param__init(&o->params[i]);
    o->params[i].name = (char *)specs[i].name;
    o->params[i].in = (char *)specs[i].in;
    o->params[i].type = (char *)specs[i].type;
    o->params[i].required = specs[i].required;
    o->ptrs[i] = &o->params[i];
  }
  o->op.n_params = 2;
  o->op.params = o->ptrs;
}

static void operation_accepts_a_good_operation(void **state) {
  op_fx o;
  lk_err err;
  (void)state;
  make_op(&o, "GET", "/v1/forecast/{city}",
          (param_spec){"city", "path", "string", 1},
          (param_spec){"days", "query", "integer", 0});
  lk_err_clear(&err);
  assert_int_equal(lk_schema_check_operation(&o.op, &err), LK_OK);
}

static void operation_rejects_each_defect(void **state) {
  static const struct {
    const char *method, *path;
    param_spec p0, p1;
    const char *msg;
  } cases[] = {
      {"get",
       "/a",
       {"x", "query", "string", 0},
       {"y", "query", "string", 0},
       "operation 'op': method must be GET, POST, PUT, PATCH or DELETE"},
      {"HEAD",
       "/a",
       {"x", "query", "string", 0},
       {"y", "query", "string", 0},
       "method must be GET, POST, PUT, PATCH or DELETE"},
      {"GET",
       "a/{x}",
       {"x", "path", "string", 1},
       {"y", "query", "string", 0},
       "operation 'op': path must start with '/'"},
      {"GET",
       "/a b",
       {"x", "query", "string", 0},
       {"y", "query", "string", 0},
       "path must not contain spaces or control characters"},
      {"GET",
       "/a#f",
       {"x", "query", "string", 0},
       {"y", "query", "string", 0},
       "path must not contain '?' or '#'"},
      {"GET",
       "/caf\xc3\xa9",
       {"x", "query", "string", 0},
       {"y", "query", "string", 0},
       "path must not contain non-ASCII characters"},
      {"GET",
       "/{z}",
       {"x", "path", "string", 1},
       {"y", "query", "string", 0},
       "path placeholder {z} has no param with in=path"},
      {"GET",
       "/{x",
       {"x", "path", "string", 1},
       {"y", "query", "string", 0},
       "unclosed or empty placeholder"},
      {"GET",
       "/{}/{x}",
       {"x", "path", "string", 1},
       {"y", "query", "string", 0},
       "unclosed or empty placeholder"},
      {"GET",
       "/x}",
       {"x", "query", "string", 1},
       {"y", "query", "string", 0},
       "path has a '}' without '{'"},
      {"GET",
       "/{y}",
       {"x", "path", "string", 1},
       {"y", "query", "string", 0},
       "path placeholder {y} has no param with in=path"},
      {"GET",
       "/a",
       {"x", "path", "string", 1},
       {"y", "query", "string", 0},
       "param 'x' has in=path but the path has no {x}"},
      {"GET",
       "/{x}",
       {"x", "path", "string", 0},
       {"y", "query", "string", 0},
       "path param 'x' must be required"},
      {"GET",
       "/a",
       {"x", "header", "string", 0},
       {"y", "query", "string", 0},
       "param 'x' in must be path, query or body"},
      {"GET",
       "/a",
       {"x", "query", "date", 0},
       {"y", "query", "string", 0},
       "param 'x' type must be string, integer, number, boolean, object or "
       "array"},
      {"GET",
       "/a",
       {"x", "query", "string", 0},
       {"x", "body", "string", 0},
       "param 'x' is declared twice"},
      {"GET",
       "/a",
       {"x", "query", "string", 0},
       {"y", "body", "string", 0},
       "param 'y' is in=body but GET requests have no body"},
      {"GET",
       "/a",
       {"x y", "query", "string", 0},
       {"y", "query", "string", 0},
       "param 1 has no valid name; use 1-64 characters"},
      {"GET",
       "/a",
       {"", "query", "string", 0},
       {"y", "query", "string", 0},
       "param 1 has no valid name"},
      {"GET",
       "/a",
       {".x", "query", "string", 0},
       {"y", "query", "string", 0},
       "param 1 has no valid name"},
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    op_fx o;
    lk_err err;
    char what[32];
    make_op(&o, cases[i].method, cases[i].path, cases[i].p0, cases[i].p1);
    lk_err_clear(&err);
    snprintf(what, sizeof(what), "case %zu", i);
    assert_refused(lk_schema_check_operation(&o.op, &err), &err, cases[i].msg,
                   what);
  }
}

static void param_names_are_capped_at_64_characters(void **state) {
  char name[LK_SCHEMA_MAX_PARAM_NAME + 2];
  op_fx o;
  lk_err err;
  (void)state;
  memset(name, 'p', sizeof(name) - 1);
  name[LK_SCHEMA_MAX_PARAM_NAME] = '\0';
  make_op(&o, "GET", "/a", (param_spec){name, "query", "string", 0},
          (param_spec){"_y.z-1", "query", "string", 0});
  lk_err_clear(&err);
  assert_int_equal(lk_schema_check_operation(&o.op, &err), LK_OK);
  name[LK_SCHEMA_MAX_PARAM_NAME] = 'p';
  name[LK_SCHEMA_MAX_PARAM_NAME + 1] = '\0';
  assert_refused(lk_schema_check_operation(&o.op, &err), &err,
                 "param 1 has no valid name; use 1-64 characters", "65");
}

/* ---- credential types ---- */

static void type_rejects_each_invalid_field(void **state) {
  tool_fx t;
  lk_err err;
  Latchkey__V1__CredentialField second;
  Latchkey__V1__CredentialField *two[2];
  (void)state;

#define BADT(stmt, want)                                                    \
  do {                                                                      \
    tool_fx_init(&t, "weather");                                            \
    stmt;                                                                   \
    lk_err_clear(&err);                                                     \
    assert_refused(lk_schema_check_type(&t.type, &err), &err, want, #stmt); \
  } while (0)

  BADT(t.type.id = (char *)"", "credential_type.id");
  BADT(t.type.id = (char *)"x/y", "credential_type.id");
  BADT(t.type.n_fields = 0, "no fields");
  BADT(t.field.name = (char *)"", "field 1");
  BADT(t.field.name = (char *)"api key", "field 1");
  BADT(t.field.pattern = (char *)"^[a-z", "does not compile");
  BADT(t.field.pattern = (char *)"(", "does not compile");
  BADT(t.field.max_len = LK_SCHEMA_MAX_MAX_LEN + 1, "max_len");
  BADT(t.rule.value = (char *)"Bearer {token}", "names no declared field");
  BADT(t.rule.in = (char *)"cookie", "\"in\" must be");
#undef BADT

  tool_fx_init(&t, "weather");
  second = t.field;
  two[0] = &t.field;
  two[1] = &second;
  t.type.fields = two;
  t.type.n_fields = 2;
  lk_err_clear(&err);
  assert_refused(lk_schema_check_type(&t.type, &err), &err, "declared twice",
                 "duplicate field");

  tool_fx_init(&t, "weather");
  t.field.max_len = LK_SCHEMA_MAX_MAX_LEN;
  assert_int_equal(lk_schema_check_type(&t.type, &err), LK_OK);
}

/* A type "test-type" with fields names[] and rules[], as inject rules are
 * written. */
typedef struct {
  const char *in, *name, *value, *username, *password;
} rule_spec;

typedef struct {
  Latchkey__V1__CredentialType type;
  Latchkey__V1__CredentialField fdefs[4];
  Latchkey__V1__CredentialField *fptrs[4];
  Latchkey__V1__InjectRule rules[4];
  Latchkey__V1__InjectRule *rptrs[4];
} type_fx;

static void set_type(type_fx *f, const char *const *names, size_t nf,
                     const rule_spec *rules, size_t nr) {
  size_t i;
  latchkey__v1__credential_type__init(&f->type);
  f->type.id = (char *)"test-type";
  for (i = 0; i < nf; i++) {
    latchkey__v1__credential_field__init(&f->fdefs[i]);
    f->fdefs[i].name = (char *)names[i];
    f->fdefs[i].secret = 1;
    f->fptrs[i] = &f->fdefs[i];
  }
  f->type.n_fields = nf;
  f->type.fields = f->fptrs;
  for (i = 0; i < nr; i++) {
    latchkey__v1__inject_rule__init(&f->rules[i]);
    f->rules[i].in = (char *)rules[i].in;
    if (rules[i].name != NULL) {
      f->rules[i].name = (char *)rules[i].name;
    }
    if (rules[i].value != NULL) {
      f->rules[i].value = (char *)rules[i].value;
    }
    if (rules[i].username != NULL) {
      f->rules[i].username = (char *)rules[i].username;
    }
    if (rules[i].password != NULL) {
      f->rules[i].password = (char *)rules[i].password;
    }
    f->rptrs[i] = &f->rules[i];
  }
  f->type.n_inject = nr;
  f->type.inject = f->rptrs;
}

static lk_err check_expect(const rule_spec *rules, size_t nr,
                           const char *const *names, size_t nf,
                           lk_status code) {
  type_fx f;
  lk_err err;
  lk_status st;
  set_type(&f, names, nf, rules, nr);
  lk_err_clear(&err);
  st = lk_schema_check_type(&f.type, &err);
  if (st != code) {
    fail_msg("got %s (%s), want %s", lk_status_name(st), err.msg,
             lk_status_name(code));
  }
  return err;
}

static const char *const two_fields[] = {"api_key", "user"};

static void type_accepts_every_rule_kind(void **state) {
  static const rule_spec rules[] = {
      {"header", "Authorization", "Bearer {api_key}", NULL, NULL},
      {"header", "X-Static", "v1", NULL, NULL},
      {"query", "key", "{api_key}", NULL, NULL},
      {"body", "api_key", "{{{api_key}}}", NULL, NULL},
  };
  static const rule_spec basic[] = {
      {"basic", NULL, NULL, "{user}", "{api_key}"}};
  static const rule_spec basic_no_password[] = {
      {"basic", NULL, NULL, "{api_key}", NULL}};
  (void)state;
  check_expect(rules, 4, two_fields, 2, LK_OK);
  check_expect(basic, 1, two_fields, 2, LK_OK);
  /* a key sent as the username with an empty password (Stripe's way) */
  check_expect(basic_no_password, 1, two_fields, 2, LK_OK);
}

static void type_rejects_unknown_placeholder(void **state) {
  static const rule_spec rules[] = {
      {"header", "X-Api-Key", "{apikey}", NULL, NULL}};
  static const rule_spec basic[] = {{"basic", NULL, NULL, "{user}", "{pass}"}};
  static const rule_spec empty[] = {{"query", "k", "{}", NULL, NULL}};
  lk_err err;
  (void)state;
  err = check_expect(rules, 1, two_fields, 2, LK_INVALID_ARGUMENT);
  assert_msg_eq(&err,
                "credential type 'test-type' inject[0].value: placeholder "
                "'{apikey}' names no declared field");
  err = check_expect(basic, 1, two_fields, 2, LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "inject[0].password: placeholder '{pass}'");
  err = check_expect(empty, 1, two_fields, 2, LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "placeholder '{}' names no declared field");
}

static void type_rejects_unbalanced_braces(void **state) {
  static const rule_spec open[] = {{"query", "k", "{api_key", NULL, NULL}};
  static const rule_spec nested[] = {{"query", "k", "{a{api_key}", NULL, NULL}};
  static const rule_spec close[] = {{"body", "k", "x}", NULL, NULL}};
  lk_err err;
  (void)state;
  err = check_expect(open, 1, two_fields, 2, LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "unmatched '{'");
  err = check_expect(nested, 1, two_fields, 2, LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "unmatched '{'");
  err = check_expect(close, 1, two_fields, 2, LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "unmatched '}'");
}

static void type_rejects_bad_rule_shapes(void **state) {
  static const struct {
    rule_spec r[2];
    size_t n;
    const char *msg;
  } cases[] = {
      {{{"cookie", "c", "{api_key}", NULL, NULL}},
       1,
       "\"in\" must be header, query, basic or body"},
      {{{"header", "X Api", "{api_key}", NULL, NULL}},
       1,
       "header name is not an HTTP token"},
      {{{"header", "X-Api:", "{api_key}", NULL, NULL}},
       1,
       "header name is not an HTTP token"},
      {{{"header", "X-A\r\nB", "{api_key}", NULL, NULL}},
       1,
       "header name is not an HTTP token"},
      {{{"header", NULL, "{api_key}", NULL, NULL}},
       1,
       "a header rule needs a \"name\""},
      {{{"query", NULL, "{api_key}", NULL, NULL}},
       1,
       "a query rule needs a \"name\""},
      {{{"header", "Host", "{api_key}", NULL, NULL}},
       1,
       "header 'Host' is set by the sidecar"},
      {{{"header", "content-length", "{api_key}", NULL, NULL}},
       1,
       "header 'Content-Length' is set by the sidecar"},
      {{{"header", "X-K", "a\r\nB: {api_key}", NULL, NULL}},
       1,
       "inject[0].value contains CR or LF"},
      {{{"header", "X-K", NULL, NULL, NULL}}, 1, "\"value\" template is empty"},
      {{{"header", "X-Api-Key", "{api_key}", NULL, NULL},
        {"header", "x-api-key", "{user}", NULL, NULL}},
       2,
       "inject[1]: header 'x-api-key' is injected twice"},
      {{{"query", "k", "{api_key}", NULL, NULL},
        {"query", "k", "{user}", NULL, NULL}},
       2,
       "inject[1]: query 'k' is injected twice"},
      {{{"basic", NULL, NULL, "{user}", "{api_key}"},
        {"basic", NULL, NULL, "{user}", "{api_key}"}},
       2,
       "has 2 basic rules; at most one"},
      {{{"basic", NULL, NULL, "{user}", "{api_key}"},
        {"header", "authorization", "x {api_key}", NULL, NULL}},
       2,
       "both a basic rule and an Authorization header rule"},
      {{{"basic", NULL, NULL, NULL, "{api_key}"}},
       1,
       "a basic rule needs a \"username\" template"},
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    lk_err err = check_expect(cases[i].r, cases[i].n, two_fields, 2,
                              LK_INVALID_ARGUMENT);
    assert_msg_has(&err, cases[i].msg);
  }
}

static void type_rejects_bad_fields(void **state) {
  static const rule_spec rules[] = {{"query", "k", "{a}", NULL, NULL}};
  static const char *const dup[] = {"a", "a"};
  static const char *const braces[] = {"a", "b{c"};
  static const char *const empty[] = {""};
  lk_err err;
  (void)state;
  err = check_expect(rules, 1, dup, 2, LK_INVALID_ARGUMENT);
  assert_msg_eq(&err,
                "credential type 'test-type': field 'a' is declared twice; "
                "give fields unique names");
  err = check_expect(rules, 1, braces, 2, LK_INVALID_ARGUMENT);
  assert_msg_has(&err,
                 "credential type 'test-type': field 2 has no valid name");
  err = check_expect(rules, 1, empty, 1, LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "field 1 has no valid name");
}

/* ---- the template scanner ---- */

/* Scans tmpl and writes its pieces as "T:text N:name O C" into out. */
static void pieces(const char *tmpl, int escapes, char *out, size_t size) {
  const char *cur = tmpl;
  lk_schema_tpl_piece pc;
  lk_schema_tpl_kind k;
  size_t used = 0;
  out[0] = '\0';
  while ((k = lk_schema_tpl_next(&cur, escapes, &pc)) != LK_SCHEMA_TPL_END) {
    static const char tag[] = {'E', 'T', 'N', 'O', 'C'};
    int w = snprintf(out + used, size - used, "%s%c:%.*s", used ? " " : "",
                     tag[k], (int)pc.len, pc.s);
    assert_true(w > 0 && (size_t)w < size - used);
    used += (size_t)w;
    if (k == LK_SCHEMA_TPL_OPEN || k == LK_SCHEMA_TPL_CLOSE) {
      /* errors do not advance */
      assert_ptr_equal(cur, pc.s);
      break;
    }
  }
}

static void scanner_cuts_credential_templates(void **state) {
  char out[256];
  (void)state;
  pieces("Bearer {token}", 1, out, sizeof(out));
  assert_string_equal(out, "T:Bearer  N:token");
  pieces("{{lit}} {token} }}{{", 1, out, sizeof(out));
  assert_string_equal(out, "T:{ T:lit T:} T:  N:token T:  T:} T:{");
  pieces("{}", 1, out, sizeof(out));
  assert_string_equal(out, "N:");
  pieces("a{b{c}", 1, out, sizeof(out));
  assert_string_equal(out, "T:a O:{");
  pieces("a}b", 1, out, sizeof(out));
  assert_string_equal(out, "T:a C:}");
  pieces("", 1, out, sizeof(out));
  assert_string_equal(out, "");
}

static void scanner_has_no_escapes_in_paths(void **state) {
  char out[256];
  (void)state;
  pieces("/v1/{city}/x", 0, out, sizeof(out));
  assert_string_equal(out, "T:/v1/ N:city T:/x");
  pieces("/{{x}}", 0, out, sizeof(out));
  assert_string_equal(out, "T:/ O:{");
  pieces("/x}}", 0, out, sizeof(out));
  assert_string_equal(out, "T:/x C:}");
}

/* ---- oauth2 types ---- */

/* An oauth2 type "google" declaring access_token (with its own pattern,
 * description and max_len) and an extra plain field "tenant", no rules. */
typedef struct {
  Latchkey__V1__CredentialType type;
  Latchkey__V1__CredentialField access;
  Latchkey__V1__CredentialField tenant;
  Latchkey__V1__CredentialField *fields[2];
  Latchkey__V1__InjectRule rule;
  Latchkey__V1__InjectRule *rules[1];
} oauth_fx;

static void oauth_fx_init(oauth_fx *f) {
  latchkey__v1__credential_type__init(&f->type);
  latchkey__v1__credential_field__init(&f->access);
  latchkey__v1__credential_field__init(&f->tenant);
  latchkey__v1__inject_rule__init(&f->rule);
  f->type.id = (char *)"google";
  f->type.kind = (char *)LK_OAUTH_KIND;
  f->access.name = (char *)"access_token";
  f->access.secret = 1;
  f->access.pattern = (char *)"^ya29\\.[!-~]+$";
  f->access.description = (char *)"Google access token";
  f->access.max_len = 2048;
  f->tenant.name = (char *)"tenant";
  f->tenant.description = (char *)"Workspace domain";
  f->fields[0] = &f->tenant; /* declared before the standard one */
  f->fields[1] = &f->access;
  f->type.fields = f->fields;
  f->type.n_fields = 2;
  f->rule.in = (char *)"header";
  f->rule.name = (char *)"X-Goog-Token";
  f->rule.value = (char *)"{access_token}";
  f->rules[0] = &f->rule;
  f->type.inject = f->rules;
  f->type.n_inject = 0;
}

static Latchkey__V1__CredentialType *canonical_ok(
    const Latchkey__V1__CredentialType *t) {
  Latchkey__V1__CredentialType *out = NULL;
  lk_err err;
  lk_err_clear(&err);
  if (lk_schema_check_type(t, &err) != LK_OK) {
    fail_msg("check: %s", err.msg);
  }
  if (lk_schema_canonical_type(t, NULL, &out, &err) != LK_OK) {
    fail_msg("canonical: %s", err.msg);
  }
  assert_non_null(out);
  return out;
}

static void oauth2_canonical_form_has_every_standard_field_then_extras(
    void **state) {
  oauth_fx f;
  size_t n = 0;
  const lk_oauth_field *std = lk_oauth_fields(&n);
  Latchkey__V1__CredentialType *c;
  size_t i;
  (void)state;
  oauth_fx_init(&f);
  c = canonical_ok(&f.type);
  assert_string_equal(c->kind, "oauth2");
  assert_int_equal(n, 8);
  assert_int_equal(c->n_fields, n + 1);
  for (i = 0; i < n; i++) {
    const Latchkey__V1__CredentialField *cf = c->fields[i];
    assert_string_equal(cf->name, std[i].name);
    assert_int_equal(cf->secret, std[i].secret);
    if (i == 0) {
      /* declared: the owner's pattern, description and max_len kept */
      assert_string_equal(cf->pattern, "^ya29\\.[!-~]+$");
      assert_string_equal(cf->description, "Google access token");
      assert_int_equal(cf->max_len, 2048);
    } else {
      assert_string_equal(cf->pattern, "");
      assert_string_equal(cf->description, std[i].description);
      assert_int_equal(cf->max_len, LK_SCHEMA_DEFAULT_MAX_LEN);
    }
  }
  /* the order of the table, whatever the owner's order */
  assert_string_equal(c->fields[1]->name, "refresh_token");
  assert_true(c->fields[1]->secret);
  assert_string_equal(c->fields[2]->name, "expires_at");
  assert_false(c->fields[2]->secret);
  assert_string_equal(c->fields[5]->name, "client_secret");
  assert_true(c->fields[5]->secret);
  assert_string_equal(c->fields[7]->name, "scope");
  /* the owner's extra field last, as declared */
  assert_string_equal(c->fields[8]->name, "tenant");
  assert_false(c->fields[8]->secret);
  assert_string_equal(c->fields[8]->description, "Workspace domain");
  assert_int_equal(c->fields[8]->max_len, LK_SCHEMA_DEFAULT_MAX_LEN);
  /* no rules declared: the bearer rule */
  assert_int_equal(c->n_inject, 1);
  assert_string_equal(c->inject[0]->in, "header");
  assert_string_equal(c->inject[0]->name, "Authorization");
  assert_string_equal(c->inject[0]->value, "Bearer {access_token}");
  protobuf_c_message_free_unpacked(&c->base, NULL);
}

static void oauth2_declared_rules_are_kept_and_may_name_added_fields(
    void **state) {
  oauth_fx f;
  Latchkey__V1__CredentialType *c;
  (void)state;
  oauth_fx_init(&f);
  f.type.n_inject = 1;
  c = canonical_ok(&f.type);
  assert_int_equal(c->n_inject, 1);
  assert_string_equal(c->inject[0]->name, "X-Goog-Token");
  assert_string_equal(c->inject[0]->value, "{access_token}");
  protobuf_c_message_free_unpacked(&c->base, NULL);

  /* a type that declares no field at all: every standard one added, and
   * its rule may name one it did not declare */
  oauth_fx_init(&f);
  f.type.n_fields = 0;
  f.type.n_inject = 1;
  f.rule.value = (char *)"{access_token} for {client_id}";
  c = canonical_ok(&f.type);
  assert_int_equal(c->n_fields, 8);
  assert_string_equal(c->fields[0]->name, "access_token");
  assert_string_equal(c->fields[0]->description,
                      lk_oauth_fields(&(size_t){0})[0].description);
  protobuf_c_message_free_unpacked(&c->base, NULL);
}

static void static_canonical_form_only_normalizes(void **state) {
  tool_fx t;
  Latchkey__V1__CredentialType *c;
  (void)state;
  tool_fx_init(&t, "weather");
  c = canonical_ok(&t.type);
  assert_string_equal(c->kind, "");
  assert_int_equal(c->n_fields, 1);
  assert_string_equal(c->fields[0]->name, "api_key");
  assert_int_equal(c->fields[0]->max_len, LK_SCHEMA_DEFAULT_MAX_LEN);
  assert_int_equal(c->n_inject, 1);
  assert_string_equal(c->inject[0]->name, "X-Api-Key");
  protobuf_c_message_free_unpacked(&c->base, NULL);
  /* and the input was only read */
  assert_int_equal(t.field.max_len, 0);
}

static void oauth2_standard_field_with_wrong_secret_flag_is_refused(
    void **state) {
  oauth_fx f;
  lk_err err;
  (void)state;
  oauth_fx_init(&f);
  f.access.secret = 0;
  lk_err_clear(&err);
  assert_refused(lk_schema_check_type(&f.type, &err), &err, NULL, "plain");
  assert_msg_eq(&err,
                "credential type 'google': oauth2 field 'access_token' must "
                "have \"secret\": true; fix it or leave the field out (it is "
                "added)");

  oauth_fx_init(&f);
  f.tenant.name = (char *)"token_url";
  f.tenant.secret = 1;
  lk_err_clear(&err);
  assert_refused(lk_schema_check_type(&f.type, &err), &err, NULL, "secret");
  assert_msg_eq(&err,
                "credential type 'google': oauth2 field 'token_url' must "
                "have \"secret\": false; fix it or leave the field out (it is "
                "added)");
}

static void unknown_kind_is_refused_naming_the_allowed_kinds(void **state) {
  oauth_fx f;
  lk_err err;
  (void)state;
  oauth_fx_init(&f);
  f.type.kind = (char *)"OAuth2";
  lk_err_clear(&err);
  assert_refused(lk_schema_check_type(&f.type, &err), &err, NULL, "kind");
  assert_msg_eq(&err,
                "credential type 'google': kind must be \"\" (fields the "
                "owner provides) or \"oauth2\"");
  assert_null(strstr(err.msg, "OAuth2"));
  /* "" is the static kind, which still needs a field */
  f.type.kind = (char *)"";
  f.type.n_fields = 0;
  assert_refused(lk_schema_check_type(&f.type, &err), &err, "no fields",
                 "static kind");
}

static void oauth2_rules_never_inject_endpoint_only_secrets(void **state) {
  static const char *const names[] = {"refresh_token", "client_secret"};
  oauth_fx f;
  lk_err err;
  char value[64];
  size_t i;
  (void)state;
  for (i = 0; i < 2; i++) {
    oauth_fx_init(&f);
    f.type.n_inject = 1;
    snprintf(value, sizeof(value), "{%s}", names[i]);
    f.rule.value = value;
    lk_err_clear(&err);
    assert_refused(lk_schema_check_type(&f.type, &err), &err, NULL, names[i]);
    char want[256];
    snprintf(want, sizeof(want),
             "credential type 'google' inject[0].value: oauth2 field "
             "'{%s}' goes only to the token endpoint; inject {access_token}",
             names[i]);
    assert_msg_eq(&err, want);
  }
  /* a static type may name a field of that name: it is just a field */
  {
    static const char *const fields[] = {"refresh_token"};
    static const rule_spec rule = {"header", "X-R", "{refresh_token}", NULL,
                                   NULL};
    (void)check_expect(&rule, 1, fields, 1, LK_OK);
  }
}

static void oauth2_field_limit_counts_the_added_fields(void **state) {
  oauth_fx f;
  Latchkey__V1__CredentialField extra[LK_SCHEMA_MAX_FIELDS];
  Latchkey__V1__CredentialField *ptrs[LK_SCHEMA_MAX_FIELDS];
  char names[LK_SCHEMA_MAX_FIELDS][16];
  lk_err err;
  size_t i;
  (void)state;
  oauth_fx_init(&f);
  for (i = 0; i < LK_SCHEMA_MAX_FIELDS; i++) {
    latchkey__v1__credential_field__init(&extra[i]);
    snprintf(names[i], sizeof(names[i]), "x%zu", i);
    extra[i].name = names[i];
    ptrs[i] = &extra[i];
  }
  f.type.fields = ptrs;
  /* 56 extra + 8 standard = 64: the limit */
  f.type.n_fields = LK_SCHEMA_MAX_FIELDS - 8;
  {
    Latchkey__V1__CredentialType *c = canonical_ok(&f.type);
    assert_int_equal(c->n_fields, LK_SCHEMA_MAX_FIELDS);
    protobuf_c_message_free_unpacked(&c->base, NULL);
  }
  f.type.n_fields = LK_SCHEMA_MAX_FIELDS - 7;
  lk_err_clear(&err);
  assert_refused(lk_schema_check_type(&f.type, &err), &err, NULL, "65");
  assert_msg_eq(&err,
                "credential type 'google' has more than 64 fields (the "
                "oauth2 standard fields included)");
}

/* ---- shared facts ---- */

static void shared_facts(void **state) {
  lk_err err;
  (void)state;
  assert_true(lk_schema_method_known("PATCH"));
  assert_false(lk_schema_method_known("patch"));
  assert_false(lk_schema_method_known("OPTIONS"));
  assert_false(lk_schema_method_known(NULL));
  assert_false(lk_schema_method_sends_body("GET"));
  assert_false(lk_schema_method_sends_body("DELETE"));
  assert_true(lk_schema_method_sends_body("POST"));
  assert_true(lk_schema_param_type_known("array"));
  assert_false(lk_schema_param_type_known("date"));
  assert_true(lk_schema_http_token("X-Api_Key.1!#$%&'*+^`|~"));
  assert_false(lk_schema_http_token(""));
  assert_false(lk_schema_http_token("X:Y"));
  assert_false(lk_schema_http_token("X\x7f"));
  lk_err_clear(&err);
  assert_int_equal(lk_schema_check_id("team-a.1_x", "budget.id", &err), LK_OK);
  assert_int_equal(lk_schema_check_id("", "budget.id", &err),
                   LK_INVALID_ARGUMENT);
  assert_msg_eq(&err, "budget.id is required; set it");
  assert_int_equal(lk_schema_check_id("-a", "budget.id", &err),
                   LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "budget.id is not a valid id");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(valid_tool_with_its_type_passes),
      cmocka_unit_test(other_base_url_forms_pass),
      cmocka_unit_test(tool_rejects_each_invalid_field),
      cmocka_unit_test(tool_messages_never_echo_base_url),
      cmocka_unit_test(normalize_drops_one_slash_and_defaults_max_len),
      cmocka_unit_test(operation_accepts_a_good_operation),
      cmocka_unit_test(operation_rejects_each_defect),
      cmocka_unit_test(param_names_are_capped_at_64_characters),
      cmocka_unit_test(type_rejects_each_invalid_field),
      cmocka_unit_test(type_accepts_every_rule_kind),
      cmocka_unit_test(type_rejects_unknown_placeholder),
      cmocka_unit_test(type_rejects_unbalanced_braces),
      cmocka_unit_test(type_rejects_bad_rule_shapes),
      cmocka_unit_test(type_rejects_bad_fields),
      cmocka_unit_test(scanner_cuts_credential_templates),
      cmocka_unit_test(scanner_has_no_escapes_in_paths),
      cmocka_unit_test(shared_facts),
      cmocka_unit_test(
          oauth2_canonical_form_has_every_standard_field_then_extras),
      cmocka_unit_test(
          oauth2_declared_rules_are_kept_and_may_name_added_fields),
      cmocka_unit_test(static_canonical_form_only_normalizes),
      cmocka_unit_test(oauth2_standard_field_with_wrong_secret_flag_is_refused),
      cmocka_unit_test(unknown_kind_is_refused_naming_the_allowed_kinds),
      cmocka_unit_test(oauth2_rules_never_inject_endpoint_only_secrets),
      cmocka_unit_test(oauth2_field_limit_counts_the_added_fields),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
