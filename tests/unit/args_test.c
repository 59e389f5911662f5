/*
 * args_test.c - proves sidecar/args: what arguments_json is accepted, the
 * exact status and message for each way it can be wrong (never echoing a
 * value), and that the published JSON Schema matches the params.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sidecar/args.h"

/* An operation built on the stack from a table of params. */
typedef struct {
  Latchkey__V1__Operation op;
  Latchkey__V1__Param params[8];
  Latchkey__V1__Param *ptrs[8];
} test_op;

typedef struct {
  const char *name, *in, *type;
  int required;
  const char *description;
} param_spec;

static void make_op(test_op *t, const char *name, const char *method,
                    const char *path, const param_spec *specs, size_t n) {
  Latchkey__V1__Operation op = LATCHKEY__V1__OPERATION__INIT;
  t->op = op;
  t->op.name = (char *)name;
  t->op.method = (char *)method;
  t->op.path = (char *)path;
  for (size_t i = 0; i < n; i++) {
    Latchkey__V1__Param p = LATCHKEY__V1__PARAM__INIT;
    p.name = (char *)specs[i].name;
    p.in = (char *)specs[i].in;
    p.type = (char *)specs[i].type;
    p.required = specs[i].required;
    if (specs[i].description != NULL) {
      p.description = (char *)specs[i].description;
    }
    t->params[i] = p;
    t->ptrs[i] = &t->params[i];
  }
  t->op.n_params = n;
  t->op.params = t->ptrs;
}

static void weather(test_op *t) {
  static const param_spec specs[] = {
      {"city", "path", "string", 1, "City name"},
      {"days", "query", "integer", 0, "How many days"},
  };
  make_op(t, "forecast", "GET", "/v1/forecast/{city}", specs, 2);
}

/* One param of each of the six types, none required. */
static void all_types(test_op *t) {
  static const param_spec specs[] = {
      {"s", "query", "string", 0, NULL}, {"i", "query", "integer", 0, NULL},
      {"n", "query", "number", 0, NULL}, {"b", "query", "boolean", 0, NULL},
      {"o", "body", "object", 0, NULL},  {"a", "body", "array", 0, NULL},
  };
  make_op(t, "typed", "POST", "/typed", specs, 6);
}

/* Parses text against op, expecting code; returns err for message checks. */
static lk_err parse_expect(const Latchkey__V1__Operation *op, const char *text,
                           lk_status code) {
  lk_err err;
  json_t *out = (json_t *)1;
  lk_err_clear(&err);
  lk_status st = lk_args_parse(op, text, strlen(text), &out, &err);
  if (st != code) {
    fail_msg("parse(%s): got %s (%s), want %s", text, lk_status_name(st),
             err.msg, lk_status_name(code));
  }
  if (code == LK_OK) {
    assert_non_null(out);
    json_decref(out);
  } else {
    assert_null(out);
    assert_int_equal(err.code, code);
  }
  return err;
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

static void valid_arguments_parse_into_an_object(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  const char *text = "{\"city\": \"Paris\", \"days\": 3}";
  json_t *out = NULL;
  lk_err err;
  assert_int_equal(lk_args_parse(&t.op, text, strlen(text), &out, &err), LK_OK);
  assert_true(json_is_object(out));
  assert_int_equal(json_object_size(out), 2);
  assert_string_equal(json_string_value(json_object_get(out, "city")), "Paris");
  assert_int_equal(json_integer_value(json_object_get(out, "days")), 3);
  json_decref(out);
}

static void empty_string_means_empty_object(void **state) {
  (void)state;
  test_op t;
  static const param_spec specs[] = {{"q", "query", "string", 0, NULL}};
  make_op(&t, "search", "GET", "/s", specs, 1);
  json_t *out = NULL;
  lk_err err;
  assert_int_equal(lk_args_parse(&t.op, "", 0, &out, &err), LK_OK);
  assert_true(json_is_object(out));
  assert_int_equal(json_object_size(out), 0);
  json_decref(out);
  assert_int_equal(lk_args_parse(&t.op, " \n\t", 3, &out, &err), LK_OK);
  assert_int_equal(json_object_size(out), 0);
  json_decref(out);
}

static void empty_string_still_needs_required_params(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  lk_err err = parse_expect(&t.op, "", LK_INVALID_ARGUMENT);
  assert_msg_eq(&err,
                "missing required parameter 'city' (a string) for operation "
                "'forecast'");
}

static void unknown_parameter_is_named_with_the_known_ones(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  lk_err err = parse_expect(&t.op, "{\"city\":\"Paris\",\"foo\":1}",
                            LK_INVALID_ARGUMENT);
  assert_msg_eq(&err,
                "unknown parameter 'foo' for operation 'forecast'; known: "
                "city, days");
}

static void unknown_parameter_name_is_sanitized_and_truncated(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  char text[400];
  char longkey[201];
  memset(longkey, 'k', 200);
  longkey[200] = '\0';
  snprintf(text, sizeof(text), "{\"a\\nb'c\": 1, \"%s\": 2}", longkey);
  lk_err err = parse_expect(&t.op, text, LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "unknown parameter 'a?b?c'");
  snprintf(text, sizeof(text), "{\"%s\": 2}", longkey);
  err = parse_expect(&t.op, text, LK_INVALID_ARGUMENT);
  assert_msg_lacks(&err, longkey);
  assert_msg_has(&err, "...'");
}

static void operation_without_params_says_send_empty_object(void **state) {
  (void)state;
  test_op t;
  make_op(&t, "ping", "GET", "/ping", NULL, 0);
  lk_err err = parse_expect(&t.op, "{\"x\":1}", LK_INVALID_ARGUMENT);
  assert_msg_eq(&err,
                "unknown parameter 'x': operation 'ping' takes no "
                "parameters; send {}");
  parse_expect(&t.op, "{}", LK_OK);
}

static void missing_required_parameter_is_named(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  lk_err err = parse_expect(&t.op, "{\"days\": 2}", LK_INVALID_ARGUMENT);
  assert_msg_eq(&err,
                "missing required parameter 'city' (a string) for operation "
                "'forecast'");
}

static void optional_parameter_may_be_left_out(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  parse_expect(&t.op, "{\"city\": \"Oslo\"}", LK_OK);
}

static void every_type_accepts_its_json_kind(void **state) {
  (void)state;
  test_op t;
  all_types(&t);
  parse_expect(&t.op,
               "{\"s\":\"x\",\"i\":-7,\"n\":1.5,\"b\":false,\"o\":{\"k\":[1]},"
               "\"a\":[1,\"two\",null]}",
               LK_OK);
  /* An integer is a number too. */
  parse_expect(&t.op, "{\"n\": 2}", LK_OK);
}

static void every_type_rejects_other_json_kinds(void **state) {
  (void)state;
  static const struct {
    const char *text;
    const char *msg;
  } cases[] = {
      {"{\"s\": 1}", "parameter 's' must be a string, got integer"},
      {"{\"s\": null}", "parameter 's' must be a string, got null"},
      {"{\"i\": \"3\"}", "parameter 'i' must be an integer, got string"},
      {"{\"i\": 1.5}", "parameter 'i' must be an integer, got number"},
      {"{\"i\": 1.0}", "parameter 'i' must be an integer, got number"},
      {"{\"n\": \"1.5\"}", "parameter 'n' must be a number, got string"},
      {"{\"n\": true}", "parameter 'n' must be a number, got boolean"},
      {"{\"b\": \"true\"}", "parameter 'b' must be a boolean, got string"},
      {"{\"b\": 1}", "parameter 'b' must be a boolean, got integer"},
      {"{\"o\": [1]}", "parameter 'o' must be an object, got array"},
      {"{\"o\": \"{}\"}", "parameter 'o' must be an object, got string"},
      {"{\"a\": {}}", "parameter 'a' must be an array, got object"},
      {"{\"a\": \"[]\"}", "parameter 'a' must be an array, got string"},
  };
  test_op t;
  all_types(&t);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    lk_err err = parse_expect(&t.op, cases[i].text, LK_INVALID_ARGUMENT);
    assert_msg_eq(&err, cases[i].msg);
  }
}

static void type_errors_never_echo_the_value(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  lk_err err =
      parse_expect(&t.op, "{\"city\":\"Oslo\",\"days\":\"sk_live_TOPSECRET\"}",
                   LK_INVALID_ARGUMENT);
  assert_msg_eq(&err, "parameter 'days' must be an integer, got string");
  assert_msg_lacks(&err, "TOPSECRET");
}

static void bad_json_reports_position_without_the_input(void **state) {
  (void)state;
  test_op t;
  weather(&t);
  lk_err err =
      parse_expect(&t.op, "{\"city\": sk_live_TOPSECRET}", LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "arguments_json is not valid JSON at line 1 column ");
  assert_msg_has(&err, "send one JSON object of parameters by name");
  assert_msg_lacks(&err, "TOPSECRET");
  assert_msg_lacks(&err, "sk_live");

  err = parse_expect(&t.op, "{\"city\": \"Paris\"", LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "arguments_json is not valid JSON at line 1 column");

  err = parse_expect(&t.op, "{\"city\":\"a\",\n\"city\":\"b\"}",
                     LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "at line 2 column");
  assert_msg_has(&err, "duplicate object key");

  err = parse_expect(&t.op, "{\"city\":\"a\\u0000b\"}", LK_INVALID_ARGUMENT);
  assert_msg_has(&err, "\\u0000 is not allowed in strings");
}

static void non_object_json_is_rejected_with_its_kind(void **state) {
  (void)state;
  static const struct {
    const char *text, *kind;
  } cases[] = {{"[1,2]", "array"}, {"\"city\"", "string"}, {"42", "integer"},
               {"null", "null"},   {"true", "boolean"},    {"2.5", "number"}};
  test_op t;
  weather(&t);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char want[200];
    snprintf(want, sizeof(want),
             "arguments_json must be a JSON object of parameters by name "
             "(like {\"name\": value}), got %s",
             cases[i].kind);
    lk_err err = parse_expect(&t.op, cases[i].text, LK_INVALID_ARGUMENT);
    assert_msg_eq(&err, want);
  }
}

/* Builds {"s":"aaa..."} of exactly len bytes. */
static char *big_args(size_t len) {
  char *text = malloc(len + 1);
  assert_non_null(text);
  memcpy(text, "{\"s\":\"", 6);
  memset(text + 6, 'a', len - 8);
  memcpy(text + len - 2, "\"}", 2);
  text[len] = '\0';
  return text;
}

static void input_is_capped_at_one_mebibyte(void **state) {
  (void)state;
  test_op t;
  all_types(&t);
  char *text = big_args(LK_ARGS_MAX_BYTES);
  json_t *out = NULL;
  lk_err err;
  assert_int_equal(lk_args_parse(&t.op, text, LK_ARGS_MAX_BYTES, &out, &err),
                   LK_OK);
  json_decref(out);
  free(text);

  text = big_args(LK_ARGS_MAX_BYTES + 1);
  out = (json_t *)1;
  assert_int_equal(
      lk_args_parse(&t.op, text, LK_ARGS_MAX_BYTES + 1, &out, &err),
      LK_RESOURCE_EXHAUSTED);
  assert_null(out);
  assert_msg_eq(&err,
                "arguments_json is 1048577 bytes; at most 1048576 are "
                "accepted");
  free(text);
}

static void schema_lists_every_param_and_forbids_others(void **state) {
  (void)state;
  test_op t;
  static const param_spec specs[] = {
      {"city", "path", "string", 1, "City name"},
      {"days", "query", "integer", 0, "How many days"},
      {"tags", "query", "array", 1, NULL},
      {"opts", "body", "object", 0, NULL},
      {"lat", "query", "number", 0, NULL},
      {"metric", "query", "boolean", 0, ""},
  };
  make_op(&t, "forecast", "GET", "/v1/forecast/{city}", specs, 6);
  char *text = NULL;
  lk_err err;
  assert_int_equal(lk_args_schema(&t.op, &text, &err), LK_OK);
  assert_non_null(text);
  json_error_t jerr;
  json_t *schema = json_loads(text, 0, &jerr);
  assert_non_null(schema);
  free(text);

  assert_string_equal(json_string_value(json_object_get(schema, "type")),
                      "object");
  assert_true(json_is_false(json_object_get(schema, "additionalProperties")));
  json_t *props = json_object_get(schema, "properties");
  assert_int_equal(json_object_size(props), 6);
  for (size_t i = 0; i < 6; i++) {
    json_t *p = json_object_get(props, specs[i].name);
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "type")),
                        specs[i].type);
    json_t *d = json_object_get(p, "description");
    if (specs[i].description != NULL && specs[i].description[0] != '\0') {
      assert_string_equal(json_string_value(d), specs[i].description);
    } else {
      assert_null(d);
    }
  }
  assert_true(
      json_is_object(json_object_get(json_object_get(props, "tags"), "items")));
  json_t *req = json_object_get(schema, "required");
  assert_int_equal(json_array_size(req), 2);
  assert_string_equal(json_string_value(json_array_get(req, 0)), "city");
  assert_string_equal(json_string_value(json_array_get(req, 1)), "tags");
  json_decref(schema);
}

static void schema_of_operation_without_params_is_empty_object(void **state) {
  (void)state;
  test_op t;
  make_op(&t, "ping", "GET", "/ping", NULL, 0);
  char *text = NULL;
  lk_err err;
  assert_int_equal(lk_args_schema(&t.op, &text, &err), LK_OK);
  assert_string_equal(text,
                      "{\"type\":\"object\",\"properties\":{},\"required\":[],"
                      "\"additionalProperties\":false}");
  free(text);
}

static void schema_refuses_unknown_param_type(void **state) {
  (void)state;
  test_op t;
  static const param_spec specs[] = {{"x", "query", "date", 0, NULL}};
  make_op(&t, "op", "GET", "/x", specs, 1);
  char *text = (char *)1;
  lk_err err;
  assert_int_equal(lk_args_schema(&t.op, &text, &err), LK_FAILED_PRECONDITION);
  assert_null(text);
  assert_msg_has(&err, "parameter 'x' with unsupported type 'date'");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(valid_arguments_parse_into_an_object),
      cmocka_unit_test(empty_string_means_empty_object),
      cmocka_unit_test(empty_string_still_needs_required_params),
      cmocka_unit_test(unknown_parameter_is_named_with_the_known_ones),
      cmocka_unit_test(unknown_parameter_name_is_sanitized_and_truncated),
      cmocka_unit_test(operation_without_params_says_send_empty_object),
      cmocka_unit_test(missing_required_parameter_is_named),
      cmocka_unit_test(optional_parameter_may_be_left_out),
      cmocka_unit_test(every_type_accepts_its_json_kind),
      cmocka_unit_test(every_type_rejects_other_json_kinds),
      cmocka_unit_test(type_errors_never_echo_the_value),
      cmocka_unit_test(bad_json_reports_position_without_the_input),
      cmocka_unit_test(non_object_json_is_rejected_with_its_kind),
      cmocka_unit_test(input_is_capped_at_one_mebibyte),
      cmocka_unit_test(schema_lists_every_param_and_forbids_others),
      cmocka_unit_test(schema_of_operation_without_params_is_empty_object),
      cmocka_unit_test(schema_refuses_unknown_param_type),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
