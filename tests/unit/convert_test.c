/*
 * convert_test.c - proves clients/cli/convert's contract: documents as
 * owners write them become the right messages, every message survives a
 * JSON round trip byte for byte, bytes take the UTF-8-or-base64 form, and
 * each bad shape is refused with the exact message naming its key path
 * (and, for secret input, never the text around the error), while what a
 * well-shaped document means is left to the server.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "clients/cli/convert.h"

/* The tool from DESIGN.md §3, as a user writes it. */
static const char k_weather[] =
    "{\"id\":\"weather\",\"description\":\"Forecasts by city\","
    "\"base_url\":\"https://api.weather.example\","
    "\"credential_type\":{\"id\":\"weather-key\",\"fields\":[{\"name\":"
    "\"api_key\",\"secret\":true,\"pattern\":\"^[A-Za-z0-9_-]{16,128}$\","
    "\"description\":\"API key from the vendor's dashboard\"}],"
    "\"inject\":[{\"in\":\"header\",\"name\":\"X-Api-Key\",\"value\":"
    "\"{api_key}\"}]},"
    "\"operations\":[{\"name\":\"forecast\",\"method\":\"GET\",\"path\":"
    "\"/v1/forecast/{city}\",\"description\":\"Forecast for the next days\","
    "\"params\":[{\"name\":\"city\",\"in\":\"path\",\"type\":\"string\","
    "\"required\":true},{\"name\":\"days\",\"in\":\"query\",\"type\":"
    "\"integer\"}]}]}";

static json_t *parse(const char *text) {
  json_t *j = NULL;
  lk_err err;
  lk_err_clear(&err);
  assert_int_equal(lk_convert_parse(text, strlen(text), 0, &j, &err), LK_OK);
  return j;
}

/* Converts text as a tool document and asserts the exact failure. */
static void expect_tool_error(const char *text, const char *msg) {
  json_t *j = parse(text);
  Latchkey__V1__RegisterToolRequest *req = NULL;
  lk_err err;
  lk_err_clear(&err);
  assert_int_equal(lk_convert_tool_request_from_json(j, &req, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(req);
  assert_string_equal(err.msg, msg);
  json_decref(j);
}

/* Converts text as a desc message and asserts the exact failure. */
static void expect_error(const char *text,
                         const ProtobufCMessageDescriptor *desc,
                         const char *msg) {
  json_t *j = parse(text);
  ProtobufCMessage *m = NULL;
  lk_err err;
  lk_err_clear(&err);
  assert_int_equal(lk_convert_from_json(j, desc, &m, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(m);
  assert_string_equal(err.msg, msg);
  json_decref(j);
}

/* Asserts that msg -> JSON -> message gives the same wire bytes, and
 * returns the JSON (caller decrefs). */
static json_t *assert_round_trip(const ProtobufCMessage *msg) {
  json_t *j = NULL;
  ProtobufCMessage *back = NULL;
  lk_err err;
  size_t n1;
  size_t n2;
  uint8_t *b1;
  uint8_t *b2;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_to_json(msg, &j, &err), LK_OK);
  assert_int_equal(lk_convert_from_json(j, msg->descriptor, &back, &err),
                   LK_OK);
  n1 = protobuf_c_message_get_packed_size(msg);
  n2 = protobuf_c_message_get_packed_size(back);
  assert_int_equal(n1, n2);
  b1 = malloc(n1 + 1);
  b2 = malloc(n2 + 1);
  assert_non_null(b1);
  assert_non_null(b2);
  protobuf_c_message_pack(msg, b1);
  protobuf_c_message_pack(back, b2);
  assert_memory_equal(b1, b2, n1);
  free(b1);
  free(b2);
  lk_convert_message_free(back);
  return j;
}

static void test_tool_with_inline_type_becomes_register_request(void **state) {
  json_t *j = parse(k_weather);
  Latchkey__V1__RegisterToolRequest *req = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_tool_request_from_json(j, &req, &err), LK_OK);
  assert_string_equal(req->tool->id, "weather");
  assert_string_equal(req->tool->base_url, "https://api.weather.example");
  assert_string_equal(req->tool->credential_type, "weather-key");
  assert_int_equal(req->tool->n_operations, 1);
  assert_string_equal(req->tool->operations[0]->path, "/v1/forecast/{city}");
  assert_int_equal(req->tool->operations[0]->n_params, 2);
  assert_true(req->tool->operations[0]->params[0]->required);
  assert_false(req->tool->operations[0]->params[1]->required);
  assert_string_equal(req->tool->operations[0]->params[1]->type, "integer");
  assert_non_null(req->credential_type);
  assert_string_equal(req->credential_type->id, "weather-key");
  assert_int_equal(req->credential_type->n_fields, 1);
  assert_true(req->credential_type->fields[0]->secret);
  assert_string_equal(req->credential_type->inject[0]->name, "X-Api-Key");
  lk_convert_message_free(&req->base);
  json_decref(j);
}

static void test_tool_with_type_id_sends_no_inline_type(void **state) {
  json_t *j = parse(
      "{\"id\":\"docs\",\"base_url\":\"https://docs.example\","
      "\"credential_type\":\"google\",\"timeout_ms\":5000,\"operations\":[]}");
  Latchkey__V1__RegisterToolRequest *req = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_tool_request_from_json(j, &req, &err), LK_OK);
  assert_string_equal(req->tool->credential_type, "google");
  assert_int_equal(req->tool->timeout_ms, 5000);
  assert_null(req->credential_type);
  lk_convert_message_free(&req->base);
  json_decref(j);
}

static void test_tool_without_credential_type_needs_none(void **state) {
  json_t *j = parse("{\"id\":\"free\",\"base_url\":\"https://free.example\"}");
  Latchkey__V1__RegisterToolRequest *req = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_tool_request_from_json(j, &req, &err), LK_OK);
  assert_string_equal(req->tool->credential_type, "");
  assert_null(req->credential_type);
  lk_convert_message_free(&req->base);
  json_decref(j);
}

static void test_tool_round_trips_with_snake_case_keys(void **state) {
  json_t *j = parse(k_weather);
  Latchkey__V1__RegisterToolRequest *req = NULL;
  json_t *out;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_tool_request_from_json(j, &req, &err), LK_OK);
  out = assert_round_trip(&req->tool->base);
  assert_string_equal(
      json_string_value(json_object_get(out, "credential_type")),
      "weather-key");
  assert_int_equal(json_integer_value(json_object_get(out, "timeout_ms")), 0);
  assert_true(json_is_true(json_object_get(
      json_array_get(
          json_object_get(json_array_get(json_object_get(out, "operations"), 0),
                          "params"),
          0),
      "required")));
  json_decref(out);
  out = assert_round_trip(&req->credential_type->base);
  assert_string_equal(
      json_string_value(json_object_get(
          json_array_get(json_object_get(out, "fields"), 0), "pattern")),
      "^[A-Za-z0-9_-]{16,128}$");
  json_decref(out);
  lk_convert_message_free(&req->base);
  json_decref(j);
}

static void test_credential_type_document_converts(void **state) {
  json_t *j = parse(
      "{\"id\":\"basic-login\",\"description\":\"user and password\","
      "\"fields\":[{\"name\":\"user\",\"secret\":false,\"max_len\":64},"
      "{\"name\":\"password\",\"secret\":true}],"
      "\"inject\":[{\"in\":\"basic\",\"username\":\"{user}\","
      "\"password\":\"{password}\"},{\"in\":\"body\",\"name\":\"u\","
      "\"value\":\"{user}\"}]}");
  Latchkey__V1__CredentialType *t = NULL;
  json_t *out;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_credential_type_from_json(j, &t, &err), LK_OK);
  assert_int_equal(t->fields[0]->max_len, 64);
  assert_string_equal(t->inject[0]->username, "{user}");
  out = assert_round_trip(&t->base);
  json_decref(out);
  lk_convert_message_free(&t->base);
  json_decref(j);
}

/* An oauth2 type's "kind" reaches the request (inline and on its own)
 * and comes back; a credential's OAuthState renders as "oauth". */
static void test_oauth2_kind_and_state_round_trip(void **state) {
  json_t *j = parse(
      "{\"id\":\"drive\",\"description\":\"Google Drive\","
      "\"base_url\":\"https://www.googleapis.com\","
      "\"credential_type\":{\"id\":\"google\",\"kind\":\"oauth2\","
      "\"fields\":[{\"name\":\"scope\",\"pattern\":\"^[ -~]+$\"}]},"
      "\"operations\":[]}");
  Latchkey__V1__RegisterToolRequest *req = NULL;
  Latchkey__V1__CredentialType *t = NULL;
  Latchkey__V1__OAuthState o = LATCHKEY__V1__OAUTH_STATE__INIT;
  Latchkey__V1__Credential cr = LATCHKEY__V1__CREDENTIAL__INIT;
  json_t *out;
  json_t *jo;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_tool_request_from_json(j, &req, &err), LK_OK);
  assert_string_equal(req->credential_type->kind, "oauth2");
  out = assert_round_trip(&req->credential_type->base);
  assert_string_equal(json_string_value(json_object_get(out, "kind")),
                      "oauth2");
  json_decref(out);
  lk_convert_message_free(&req->base);
  json_decref(j);

  j = parse("{\"id\":\"google\",\"kind\":\"oauth2\"}");
  assert_int_equal(lk_convert_credential_type_from_json(j, &t, &err), LK_OK);
  assert_string_equal(t->kind, "oauth2");
  assert_int_equal(t->n_fields, 0);
  lk_convert_message_free(&t->base);
  json_decref(j);

  o.generation = 3;
  o.last_refresh_at = 1764109451000LL;
  o.last_refresh_result = "ok";
  o.last_success_at = 1764109451000LL;
  cr.id = "g1";
  cr.type = "google";
  cr.oauth = &o;
  out = assert_round_trip(&cr.base);
  jo = json_object_get(out, "oauth");
  assert_true(json_is_object(jo));
  assert_int_equal(json_integer_value(json_object_get(jo, "generation")), 3);
  assert_string_equal(
      json_string_value(json_object_get(jo, "last_refresh_result")), "ok");
  assert_true(json_is_false(json_object_get(jo, "reauthorize")));
  json_decref(out);
}

static void test_credential_renders_masked_and_round_trips(void **state) {
  Latchkey__V1__FieldValue secret = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue plain = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue *fields[] = {&secret, &plain};
  Latchkey__V1__Credential cr = LATCHKEY__V1__CREDENTIAL__INIT;
  json_t *out;
  json_t *f0;
  (void)state;

  secret.name = "api_key";
  secret.secret = 1;
  secret.mask =
      "\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2"
      "abcd";
  plain.name = "region";
  plain.value = "eu";
  cr.id = "c1";
  cr.type = "weather-key";
  cr.label = "prod";
  cr.fields = fields;
  cr.n_fields = 2;
  cr.created_at = 1764109451000LL;
  cr.updated_at = 1764109452000LL;
  cr.version = 3;
  out = assert_round_trip(&cr.base);
  f0 = json_array_get(json_object_get(out, "fields"), 0);
  assert_string_equal(json_string_value(json_object_get(f0, "mask")),
                      secret.mask);
  assert_string_equal(json_string_value(json_object_get(f0, "value")), "");
  /* An unset submessage is left out rather than shown empty. */
  assert_null(json_object_get(f0, "sealed"));
  assert_int_equal(json_integer_value(json_object_get(out, "created_at")),
                   1764109451000LL);
  assert_int_equal(json_integer_value(json_object_get(out, "version")), 3);
  json_decref(out);
}

static void test_budget_and_binding_round_trip(void **state) {
  char *agents[] = {"agent-a", "agent-b"};
  Latchkey__V1__Budget b = LATCHKEY__V1__BUDGET__INIT;
  Latchkey__V1__Binding bd = LATCHKEY__V1__BINDING__INIT;
  json_t *out;
  (void)state;

  b.id = "demo";
  b.agents = agents;
  b.n_agents = 2;
  b.paused = 1;
  out = assert_round_trip(&b.base);
  assert_int_equal(json_array_size(json_object_get(out, "agents")), 2);
  assert_true(json_is_true(json_object_get(out, "paused")));
  json_decref(out);

  bd.budget_id = "demo";
  bd.credential_type = "weather-key";
  bd.credential_id = "c1";
  out = assert_round_trip(&bd.base);
  assert_string_equal(json_string_value(json_object_get(out, "tool_id")), "");
  json_decref(out);
}

static void test_utf8_body_renders_as_string(void **state) {
  Latchkey__V1__ToolResult res = LATCHKEY__V1__TOOL_RESULT__INIT;
  Latchkey__V1__ToolResult__HeadersEntry h =
      LATCHKEY__V1__TOOL_RESULT__HEADERS_ENTRY__INIT;
  Latchkey__V1__ToolResult__HeadersEntry *hs[] = {&h};
  Latchkey__V1__ToolCallResponse r = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  static const char body[] = "{\"temp\":\"21\xc2\xb0\"}";
  json_t *out;
  json_t *jr;
  (void)state;

  res.http_status = 200;
  res.content_type = "application/json";
  res.body.data = (uint8_t *)body;
  res.body.len = sizeof(body) - 1;
  h.key = "x-request-id";
  h.value = "r1";
  res.headers = hs;
  res.n_headers = 1;
  res.redacted = 1;
  r.outcome_case = LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_RESULT;
  r.result = &res;
  out = assert_round_trip(&r.base);
  jr = json_object_get(out, "result");
  assert_non_null(jr);
  assert_null(json_object_get(out, "missing_credential"));
  assert_string_equal(json_string_value(json_object_get(jr, "body")), body);
  assert_null(json_object_get(jr, "body_base64"));
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(jr, "headers"), "x-request-id")),
                      "r1");
  assert_true(json_is_true(json_object_get(jr, "redacted")));
  json_decref(out);
}

static void test_binary_body_renders_as_base64(void **state) {
  Latchkey__V1__ToolResult res = LATCHKEY__V1__TOOL_RESULT__INIT;
  Latchkey__V1__ToolCallResponse r = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  static const uint8_t body[] = {0x89, 'P', 'N', 'G', 0x00, 0xff};
  json_t *out;
  json_t *jr;
  (void)state;

  res.http_status = 200;
  res.body.data = (uint8_t *)body;
  res.body.len = sizeof(body);
  r.outcome_case = LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_RESULT;
  r.result = &res;
  out = assert_round_trip(&r.base);
  jr = json_object_get(out, "result");
  assert_null(json_object_get(jr, "body"));
  assert_string_equal(json_string_value(json_object_get(jr, "body_base64")),
                      "iVBORwD/");
  json_decref(out);
}

static void test_missing_credential_round_trips(void **state) {
  Latchkey__V1__CredentialField f = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *fs[] = {&f};
  Latchkey__V1__MissingCredential m = LATCHKEY__V1__MISSING_CREDENTIAL__INIT;
  Latchkey__V1__ToolCallResponse r = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  json_t *out;
  json_t *jm;
  (void)state;

  f.name = "api_key";
  f.secret = 1;
  f.pattern = "^[a-z]+$";
  f.description = "from the dashboard";
  m.budget_id = "demo";
  m.tool_id = "weather";
  m.credential_type = "weather-key";
  m.required_fields = fs;
  m.n_required_fields = 1;
  m.setup_url = "https://setup.example/weather";
  m.hint = "latchkeyctl credential create --type weather-key";
  r.outcome_case = LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_MISSING_CREDENTIAL;
  r.missing_credential = &m;
  out = assert_round_trip(&r.base);
  assert_null(json_object_get(out, "result"));
  jm = json_object_get(out, "missing_credential");
  assert_string_equal(json_string_value(json_object_get(jm, "hint")), m.hint);
  assert_int_equal(json_array_size(json_object_get(jm, "required_fields")), 1);
  json_decref(out);
}

static void test_list_tools_response_round_trips(void **state) {
  Latchkey__V1__OperationInfo op = LATCHKEY__V1__OPERATION_INFO__INIT;
  Latchkey__V1__OperationInfo *ops[] = {&op};
  Latchkey__V1__ToolInfo ti = LATCHKEY__V1__TOOL_INFO__INIT;
  Latchkey__V1__ToolInfo *tis[] = {&ti};
  Latchkey__V1__ListToolsResponse r = LATCHKEY__V1__LIST_TOOLS_RESPONSE__INIT;
  json_t *out;
  json_t *jt;
  (void)state;

  op.name = "forecast";
  op.method = "GET";
  op.path = "/v1/forecast/{city}";
  op.parameters_json_schema =
      "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}";
  ti.tool_id = "weather";
  ti.operations = ops;
  ti.n_operations = 1;
  ti.credential_ready = 1;
  ti.credential_type = "weather-key";
  r.tools = tis;
  r.n_tools = 1;
  out = assert_round_trip(&r.base);
  jt = json_array_get(json_object_get(out, "tools"), 0);
  assert_true(json_is_true(json_object_get(jt, "credential_ready")));
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(json_object_get(jt, "operations"), 0),
                          "parameters_json_schema")),
                      op.parameters_json_schema);
  json_decref(out);
}

static void test_map_field_reads_an_object(void **state) {
  json_t *j = parse(
      "{\"type\":\"t\",\"label\":\"l\",\"fields\":{\"api_key\":\"k1\","
      "\"region\":\"eu\"}}");
  ProtobufCMessage *m = NULL;
  Latchkey__V1__CreateCredentialRequest *req;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(
      lk_convert_from_json(
          j, &latchkey__v1__create_credential_request__descriptor, &m, &err),
      LK_OK);
  req = (Latchkey__V1__CreateCredentialRequest *)m;
  assert_int_equal(req->n_fields, 2);
  assert_string_equal(req->fields[0]->key, "api_key");
  assert_string_equal(req->fields[0]->value, "k1");
  assert_string_equal(req->fields[1]->key, "region");
  lk_convert_message_free(m);
  json_decref(j);
}

static void test_map_value_must_be_string(void **state) {
  (void)state;
  expect_error("{\"fields\":{\"api_key\":123}}",
               &latchkey__v1__create_credential_request__descriptor,
               "fields.api_key must be a string");
  expect_error("{\"fields\":[\"api_key\"]}",
               &latchkey__v1__create_credential_request__descriptor,
               "fields must be an object");
}

static void test_wrong_type_names_the_key_path(void **state) {
  (void)state;
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\",\"operations\":["
      "{\"name\":\"a\",\"method\":\"GET\",\"path\":\"/a\",\"params\":["
      "{\"name\":\"x\",\"in\":\"query\",\"type\":\"string\"},"
      "{\"name\":\"y\",\"in\":\"query\",\"type\":\"string\","
      "\"required\":\"yes\"}]}]}",
      "operations[0].params[1].required must be a boolean");
}

static void test_unknown_key_is_named_with_the_known_ones(void **state) {
  (void)state;
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\",\"operations\":["
      "{\"name\":\"a\",\"verb\":\"GET\",\"path\":\"/a\"}]}",
      "operations[0].verb is not a known key (expected one of: name, "
      "description, method, path, params)");
}

static void test_document_must_be_an_object(void **state) {
  (void)state;
  expect_tool_error("[1,2]", "document must be an object");
  expect_error("\"x\"", &latchkey__v1__budget__descriptor,
               "document must be an object");
}

static void test_repeated_field_must_be_an_array(void **state) {
  (void)state;
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\",\"operations\":{}}",
      "operations must be an array");
  expect_error("{\"agents\":[\"a\",7]}", &latchkey__v1__budget__descriptor,
               "agents[1] must be a string");
}

static void test_integers_are_range_checked(void **state) {
  (void)state;
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\",\"timeout_ms\":-1}",
      "timeout_ms must be an integer between 0 and 4294967295");
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\",\"timeout_ms\":1.5}",
      "timeout_ms must be an integer between 0 and 4294967295");
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\","
      "\"timeout_ms\":4294967296}",
      "timeout_ms must be an integer between 0 and 4294967295");
}

static void test_credential_type_must_be_string_or_object(void **state) {
  (void)state;
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\","
      "\"credential_type\":42}",
      "credential_type must be a string (the id of a registered type) or an "
      "object (a credential type defined inline)");
}

static void test_inline_type_errors_carry_its_path(void **state) {
  (void)state;
  expect_tool_error(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\","
      "\"credential_type\":{\"id\":\"k\",\"fields\":[{\"name\":\"a\","
      "\"secret\":1}]}}",
      "credential_type.fields[0].secret must be a boolean");
}

/* Converts text as a tool document, expecting success. */
static Latchkey__V1__RegisterToolRequest *tool_ok(const char *text) {
  json_t *j = parse(text);
  Latchkey__V1__RegisterToolRequest *req = NULL;
  lk_err err;
  lk_err_clear(&err);
  if (lk_convert_tool_request_from_json(j, &req, &err) != LK_OK) {
    fail_msg("%s: %s", text, err.msg);
  }
  json_decref(j);
  return req;
}

/* What a document means is the server's to judge (lib/schema): anything
 * of the right shape converts as written and is sent. */
static void test_content_is_left_to_the_server(void **state) {
  static const char *const docs[] = {
      "{\"base_url\":\"https://w.example\"}",
      "{\"id\":\"w\"}",
      "{\"id\":\"w\",\"base_url\":\"ftp://w.example\"}",
      "{\"id\":\"w\",\"base_url\":\"https://w.example\",\"operations\":["
      "{\"name\":\"a\",\"method\":\"GET\",\"path\":\"/a\"},"
      "{\"name\":\"a\",\"method\":\"GET\",\"path\":\"/b\"}]}",
      "{\"id\":\"w\",\"base_url\":\"https://w.example\","
      "\"credential_type\":{\"fields\":[]}}",
  };
  Latchkey__V1__RegisterToolRequest *req;
  json_t *j;
  Latchkey__V1__CredentialType *t = NULL;
  lk_err err;
  size_t i;
  (void)state;

  for (i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
    lk_convert_message_free(&tool_ok(docs[i])->base);
  }
  req = tool_ok(
      "{\"id\":\"w\",\"base_url\":\"https://w.example\",\"operations\":["
      "{\"name\":\"a\",\"method\":\"get\",\"path\":\"a\",\"params\":["
      "{\"name\":\"x\",\"in\":\"header\",\"type\":\"float\"}]}]}");
  assert_string_equal(req->tool->operations[0]->method, "get");
  assert_string_equal(req->tool->operations[0]->path, "a");
  assert_string_equal(req->tool->operations[0]->params[0]->in, "header");
  assert_string_equal(req->tool->operations[0]->params[0]->type, "float");
  lk_convert_message_free(&req->base);

  j = parse(
      "{\"id\":\"k\",\"inject\":[{\"in\":\"cookie\",\"name\":\"a\","
      "\"value\":\"b\"},{\"in\":\"basic\",\"username\":\"{u}\"}]}");
  lk_err_clear(&err);
  assert_int_equal(lk_convert_credential_type_from_json(j, &t, &err), LK_OK);
  assert_int_equal(t->n_inject, 2);
  assert_string_equal(t->inject[0]->in, "cookie");
  assert_string_equal(t->inject[1]->password, "");
  lk_convert_message_free(&t->base);
  json_decref(j);
}

static void test_oneof_takes_one_member(void **state) {
  (void)state;
  expect_error("{\"result\":{},\"missing_credential\":{}}",
               &latchkey__v1__tool_call_response__descriptor,
               "missing_credential cannot be given together with result "
               "(only one of them may be set)");
}

static void test_bytes_forms(void **state) {
  json_t *j = parse("{\"body_base64\":\"iVBORwD/\"}");
  ProtobufCMessage *m = NULL;
  Latchkey__V1__ToolResult *res;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(
      lk_convert_from_json(j, &latchkey__v1__tool_result__descriptor, &m, &err),
      LK_OK);
  res = (Latchkey__V1__ToolResult *)m;
  assert_int_equal(res->body.len, 6);
  assert_int_equal(res->body.data[0], 0x89);
  lk_convert_message_free(m);
  json_decref(j);
  expect_error("{\"body\":\"a\",\"body_base64\":\"YQ==\"}",
               &latchkey__v1__tool_result__descriptor,
               "body_base64 and its plain form body cannot both be given");
  expect_error("{\"body_base64\":\"not base64!\"}",
               &latchkey__v1__tool_result__descriptor,
               "body_base64 must be a base64 string (standard alphabet, "
               "padded)");
  expect_error("{\"headers_base64\":\"YQ==\"}",
               &latchkey__v1__tool_result__descriptor,
               "headers_base64 is not a known key (expected one of: "
               "http_status, content_type, body, headers, redacted)");
}

static void test_null_means_not_given(void **state) {
  json_t *j = parse("{\"id\":\"b\",\"agents\":null,\"paused\":null}");
  ProtobufCMessage *m = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(
      lk_convert_from_json(j, &latchkey__v1__budget__descriptor, &m, &err),
      LK_OK);
  assert_int_equal(((Latchkey__V1__Budget *)m)->n_agents, 0);
  lk_convert_message_free(m);
  json_decref(j);
}

static void test_nul_in_string_is_rejected(void **state) {
  /* jansson's parser refuses \u0000; documents built in code can hold one. */
  json_t *j = json_object();
  ProtobufCMessage *m = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(json_object_set_new(j, "id", json_stringn("a\0b", 3)), 0);
  assert_int_equal(
      lk_convert_from_json(j, &latchkey__v1__budget__descriptor, &m, &err),
      LK_INVALID_ARGUMENT);
  assert_null(m);
  assert_string_equal(err.msg, "id must not contain a NUL character");
  json_decref(j);
}

static void test_duplicate_keys_are_rejected(void **state) {
  json_t *j = NULL;
  lk_err err;
  static const char text[] = "{\"id\":\"a\",\"id\":\"b\"}";
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_parse(text, sizeof(text) - 1, 0, &j, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(j);
  assert_non_null(strstr(err.msg, "duplicate object key"));
}

static void test_secret_parse_error_hides_the_text(void **state) {
  json_t *j = NULL;
  lk_err err;
  static const char text[] = "{\"api_key\": sekrit-value}";
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_parse(text, sizeof(text) - 1, 1, &j, &err),
                   LK_INVALID_ARGUMENT);
  assert_string_equal(err.msg, "not valid JSON (line 1, column 18)");
  assert_null(strstr(err.msg, "sekrit"));
  /* The same text as a non-secret document shows jansson's reason. */
  assert_int_equal(lk_convert_parse(text, sizeof(text) - 1, 0, &j, &err),
                   LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "invalid token"));
}

/* Writes n bytes of fill (or text when non-NULL) to a new temp file. */
static char *temp_file(const char *text, size_t n) {
  const char *dir = getenv("TEST_TMPDIR");
  char *path = malloc(512);
  FILE *f;
  int fd;

  assert_non_null(path);
  snprintf(path, 512, "%s/convert_test.XXXXXX", dir ? dir : "/tmp");
  fd = mkstemp(path);
  assert_true(fd >= 0);
  f = fdopen(fd, "wb");
  assert_non_null(f);
  if (text != NULL) {
    fputs(text, f);
  } else {
    size_t i;
    fputc('"', f);
    for (i = 2; i < n; i++) {
      fputc('a', f);
    }
    fputc('"', f);
  }
  fclose(f);
  return path;
}

static void test_load_file_reads_a_document(void **state) {
  char *path = temp_file(k_weather, 0);
  json_t *j = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_load_file(path, &j, &err), LK_OK);
  assert_string_equal(json_string_value(json_object_get(j, "id")), "weather");
  json_decref(j);
  unlink(path);
  free(path);
}

static void test_load_file_caps_the_size(void **state) {
  char *ok = temp_file(NULL, LK_CONVERT_MAX_FILE_BYTES);
  char *big = temp_file(NULL, LK_CONVERT_MAX_FILE_BYTES + 1);
  char expect[700];
  json_t *j = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_load_file(ok, &j, &err), LK_OK);
  json_decref(j);
  j = NULL;
  assert_int_equal(lk_convert_load_file(big, &j, &err), LK_INVALID_ARGUMENT);
  assert_null(j);
  snprintf(expect, sizeof(expect),
           "%s is larger than the 1048576-byte limit for a JSON document", big);
  assert_string_equal(err.msg, expect);
  unlink(ok);
  unlink(big);
  free(ok);
  free(big);
}

static void test_load_file_reports_missing_and_bad_files(void **state) {
  char *bad = temp_file("{\"id\": }", 0);
  char expect[700];
  json_t *j = NULL;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(lk_convert_load_file("/nonexistent/tool.json", &j, &err),
                   LK_INVALID_ARGUMENT);
  assert_string_equal(
      err.msg, "cannot open /nonexistent/tool.json: No such file or directory");
  assert_int_equal(lk_convert_load_file(bad, &j, &err), LK_INVALID_ARGUMENT);
  snprintf(expect, sizeof(expect), "%s: not valid JSON (line 1, column ", bad);
  assert_memory_equal(err.msg, expect, strlen(expect));
  unlink(bad);
  free(bad);
}

static void test_wipe_zeroes_every_string(void **state) {
  json_t *j = parse(
      "{\"type\":\"t\",\"label\":\"l\",\"fields\":{\"api_key\":"
      "\"sekrit-value\"}}");
  ProtobufCMessage *m = NULL;
  Latchkey__V1__CreateCredentialRequest *req;
  char *value;
  size_t i;
  lk_err err;
  (void)state;

  lk_err_clear(&err);
  assert_int_equal(
      lk_convert_from_json(
          j, &latchkey__v1__create_credential_request__descriptor, &m, &err),
      LK_OK);
  req = (Latchkey__V1__CreateCredentialRequest *)m;
  value = req->fields[0]->value;
  assert_string_equal(value, "sekrit-value");
  lk_convert_message_wipe(m);
  for (i = 0; i < sizeof("sekrit-value") - 1; i++) {
    assert_int_equal(value[i], 0);
  }
  assert_int_equal(req->fields[0]->key[0], 0);
  assert_int_equal(req->type[0], 0);
  lk_convert_message_free(m);
  lk_convert_message_free(NULL);
  json_decref(j);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tool_with_inline_type_becomes_register_request),
      cmocka_unit_test(test_tool_with_type_id_sends_no_inline_type),
      cmocka_unit_test(test_tool_without_credential_type_needs_none),
      cmocka_unit_test(test_tool_round_trips_with_snake_case_keys),
      cmocka_unit_test(test_credential_type_document_converts),
      cmocka_unit_test(test_oauth2_kind_and_state_round_trip),
      cmocka_unit_test(test_credential_renders_masked_and_round_trips),
      cmocka_unit_test(test_budget_and_binding_round_trip),
      cmocka_unit_test(test_utf8_body_renders_as_string),
      cmocka_unit_test(test_binary_body_renders_as_base64),
      cmocka_unit_test(test_missing_credential_round_trips),
      cmocka_unit_test(test_list_tools_response_round_trips),
      cmocka_unit_test(test_map_field_reads_an_object),
      cmocka_unit_test(test_map_value_must_be_string),
      cmocka_unit_test(test_wrong_type_names_the_key_path),
      cmocka_unit_test(test_unknown_key_is_named_with_the_known_ones),
      cmocka_unit_test(test_document_must_be_an_object),
      cmocka_unit_test(test_repeated_field_must_be_an_array),
      cmocka_unit_test(test_integers_are_range_checked),
      cmocka_unit_test(test_credential_type_must_be_string_or_object),
      cmocka_unit_test(test_inline_type_errors_carry_its_path),
      cmocka_unit_test(test_content_is_left_to_the_server),
      cmocka_unit_test(test_oneof_takes_one_member),
      cmocka_unit_test(test_bytes_forms),
      cmocka_unit_test(test_null_means_not_given),
      cmocka_unit_test(test_nul_in_string_is_rejected),
      cmocka_unit_test(test_duplicate_keys_are_rejected),
      cmocka_unit_test(test_secret_parse_error_hides_the_text),
      cmocka_unit_test(test_load_file_reads_a_document),
      cmocka_unit_test(test_load_file_caps_the_size),
      cmocka_unit_test(test_load_file_reports_missing_and_bad_files),
      cmocka_unit_test(test_wipe_zeroes_every_string),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
