/*
 * latchkey_client_test.c - proves what clients/c decides without a server:
 * each argument lk_client_open, lk_client_list_tools and lk_client_call
 * refuse, with its exact code and message (never quoting a token); the
 * mapping of every gRPC status to an lk_client_code; and how a sidecar's
 * answer (packed here with protobuf-c) becomes a result: the vendor's
 * answer, the missing credential with its setup link, an answer with
 * neither, bytes that are no message, and an answer over the size cap.
 * The calls themselves are proved against a real latchkeyd in
 * tests/interop/c_client_test.c.
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

#include "clients/c/latchkey_client.h"
#include "clients/c/latchkey_client_internal.h"
#include "latchkey/v1/toolcalls.pb-c.h"
#include "latchkey/v1/types.pb-c.h"

#define ADDR "unix:/nonexistent/agent.sock"

/* Opens with opts and asserts it fails with code and exactly msg. */
static void expect_open_error(const char *address, const lk_client_opts *opts,
                              lk_client_code code, const char *msg) {
  lk_client *c = (lk_client *)&c; /* not NULL: proves *out is reset */
  lk_client_error err;
  assert_int_equal(lk_client_open(address, opts, &c, &err), code);
  assert_null(c);
  assert_int_equal(err.code, code);
  assert_int_equal(err.grpc_status, -1);
  assert_string_equal(err.message, msg);
}

static void open_refuses_bad_addresses(void **state) {
  char long_path[200];
  char want[256];
  (void)state;
  expect_open_error(NULL, NULL, LK_CLIENT_INVALID_ARGUMENT,
                    "empty server address");
  expect_open_error("", NULL, LK_CLIENT_INVALID_ARGUMENT,
                    "empty server address");
  expect_open_error("unix:", NULL, LK_CLIENT_INVALID_ARGUMENT,
                    "empty unix socket path");
  memset(long_path, 'a', sizeof(long_path));
  memcpy(long_path, "unix:/", 6);
  long_path[sizeof(long_path) - 1] = '\0';
  snprintf(want, sizeof(want),
           "unix socket path /%.59s... is longer than 107 bytes",
           long_path + 7);
  expect_open_error(long_path, NULL, LK_CLIENT_INVALID_ARGUMENT, want);
}

static void open_refuses_out_of_range_options(void **state) {
  lk_client_opts opts;
  lk_client_error err;
  (void)state;
  memset(&opts, 0, sizeof(opts));
  opts.timeout_ms = -1;
  expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT,
                    "timeout_ms must be from 1 to 3600000 (0 for the default, "
                    "30000)");
  opts.timeout_ms = LK_CLIENT_MAX_TIMEOUT_MS + 1;
  expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT,
                    "timeout_ms must be from 1 to 3600000 (0 for the default, "
                    "30000)");
  opts.timeout_ms = 0;
  opts.max_response_bytes = LK_CLIENT_MAX_RESPONSE_LIMIT + 1;
  expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT,
                    "max_response_bytes must be at most 1073741824 (0 for the "
                    "default, 8388608)");
  assert_int_equal(lk_client_open(ADDR, &opts, NULL, &err),
                   LK_CLIENT_INVALID_ARGUMENT);
  assert_string_equal(err.message,
                      "lk_client_open needs somewhere to store the client "
                      "(out)");
}

static void open_refuses_tokens_a_header_cannot_carry(void **state) {
  static const char *const unprintable[] = {"agent token", "agent\ttoken",
                                            "agent-token\n", "agent\x7f"};
  lk_client_opts opts;
  char *long_token = malloc(LK_CLIENT_MAX_TOKEN_BYTES + 2);
  size_t i;
  (void)state;

  assert_non_null(long_token);
  memset(&opts, 0, sizeof(opts));
  opts.agent_token = "";
  expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT,
                    "the agent token is empty");
  for (i = 0; i < sizeof(unprintable) / sizeof(unprintable[0]); i++) {
    opts.agent_token = unprintable[i];
    /* The message names the problem, never the token. */
    expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT,
                      "the agent token holds a space or control character; a "
                      "token is one line of printable ASCII");
  }
  memset(long_token, 'k', LK_CLIENT_MAX_TOKEN_BYTES + 1);
  long_token[LK_CLIENT_MAX_TOKEN_BYTES + 1] = '\0';
  opts.agent_token = long_token;
  expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT,
                    "the agent token is longer than 4096 bytes");
  free(long_token);
}

static void open_refuses_unreadable_or_empty_ca_files(void **state) {
  char path[] = "/tmp/lk-client-ca-XXXXXX";
  lk_client_opts opts;
  char msg[256];
  int fd = mkstemp(path);
  (void)state;

  assert_true(fd >= 0);
  close(fd);
  memset(&opts, 0, sizeof(opts));
  opts.tls_ca = path;
  snprintf(msg, sizeof(msg), "tls_ca %s is empty", path);
  expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT, msg);
  unlink(path);
  snprintf(msg, sizeof(msg), "cannot open tls_ca %s: No such file or directory",
           path);
  expect_open_error(ADDR, &opts, LK_CLIENT_INVALID_ARGUMENT, msg);
}

/* Opening dials nothing, so it succeeds with no server; close frees it. */
static void open_is_lazy_and_close_accepts_null(void **state) {
  lk_client_opts opts;
  lk_client *c = NULL;
  lk_client_error err;
  (void)state;

  memset(&opts, 0, sizeof(opts));
  opts.agent_token = "agent-0123456789";
  assert_int_equal(lk_client_open(ADDR, &opts, &c, &err), LK_CLIENT_OK);
  assert_non_null(c);
  assert_int_equal(err.code, LK_CLIENT_OK);
  assert_string_equal(err.message, "");
  lk_client_close(c);
  assert_int_equal(lk_client_open("127.0.0.1:1", NULL, &c, NULL), LK_CLIENT_OK);
  lk_client_close(c);
  lk_client_close(NULL);
  lk_client_tools_free(NULL);
  lk_client_result_free(NULL);
}

/* Calls with the given names and asserts code and exactly msg, with no
 * request sent (grpc_status -1) and *out reset. */
static void expect_call_error(lk_client *c, const char *budget,
                              const char *tool, const char *op,
                              const char *args, lk_client_code code,
                              const char *msg) {
  lk_client_result *r = (lk_client_result *)&r;
  lk_client_error err;
  assert_int_equal(lk_client_call(c, budget, tool, op, args, &r, &err), code);
  assert_null(r);
  assert_int_equal(err.code, code);
  assert_int_equal(err.grpc_status, -1);
  assert_string_equal(err.message, msg);
}

static void call_and_list_refuse_missing_or_oversized_arguments(void **state) {
  lk_client *c = NULL;
  lk_client_tools *t = NULL;
  lk_client_result *r = NULL;
  lk_client_error err;
  char long_id[LK_CLIENT_MAX_ID_BYTES + 2];
  char *big = malloc(LK_CLIENT_MAX_ARGUMENTS_BYTES + 2);
  (void)state;

  assert_non_null(big);
  assert_int_equal(lk_client_open(ADDR, NULL, &c, &err), LK_CLIENT_OK);
  expect_call_error(NULL, "b", "t", "o", "{}", LK_CLIENT_INVALID_ARGUMENT,
                    "the client is NULL");
  expect_call_error(c, NULL, "t", "o", "{}", LK_CLIENT_INVALID_ARGUMENT,
                    "budget is empty");
  expect_call_error(c, "b", "", "o", "{}", LK_CLIENT_INVALID_ARGUMENT,
                    "tool is empty");
  expect_call_error(c, "b", "t", NULL, "{}", LK_CLIENT_INVALID_ARGUMENT,
                    "operation is empty");
  memset(long_id, 'x', sizeof(long_id) - 1);
  long_id[sizeof(long_id) - 1] = '\0';
  expect_call_error(c, "b", long_id, "o", "{}", LK_CLIENT_INVALID_ARGUMENT,
                    "tool is longer than 128 bytes");
  big[0] = '{';
  memset(big + 1, ' ', LK_CLIENT_MAX_ARGUMENTS_BYTES - 1);
  big[LK_CLIENT_MAX_ARGUMENTS_BYTES] = '}';
  big[LK_CLIENT_MAX_ARGUMENTS_BYTES + 1] = '\0';
  expect_call_error(c, "b", "t", "o", big, LK_CLIENT_RESOURCE_EXHAUSTED,
                    "arguments_json is longer than 4194304 bytes, the "
                    "sidecar's request limit");
  assert_int_equal(lk_client_call(c, "b", "t", "o", "{}", NULL, &err),
                   LK_CLIENT_INVALID_ARGUMENT);
  assert_string_equal(err.message,
                      "lk_client_call needs somewhere to store "
                      "the result (out)");
  assert_int_equal(lk_client_list_tools(c, "", &t, &err),
                   LK_CLIENT_INVALID_ARGUMENT);
  assert_null(t);
  assert_string_equal(err.message, "budget is empty");
  assert_int_equal(lk_client_list_tools(NULL, "b", &t, &err),
                   LK_CLIENT_INVALID_ARGUMENT);
  assert_string_equal(err.message, "the client is NULL");
  /* err may be NULL: the code alone still says what happened. */
  assert_int_equal(lk_client_call(c, "", "t", "o", NULL, &r, NULL),
                   LK_CLIENT_INVALID_ARGUMENT);
  free(big);
  lk_client_close(c);
}

static void every_grpc_status_maps_to_the_code_of_its_name(void **state) {
  static const lk_client_code want[17] = {
      LK_CLIENT_OK,                  /* OK */
      LK_CLIENT_INTERNAL,            /* CANCELLED */
      LK_CLIENT_INTERNAL,            /* UNKNOWN */
      LK_CLIENT_INVALID_ARGUMENT,    /* INVALID_ARGUMENT */
      LK_CLIENT_DEADLINE_EXCEEDED,   /* DEADLINE_EXCEEDED */
      LK_CLIENT_NOT_FOUND,           /* NOT_FOUND */
      LK_CLIENT_INTERNAL,            /* ALREADY_EXISTS */
      LK_CLIENT_PERMISSION_DENIED,   /* PERMISSION_DENIED */
      LK_CLIENT_RESOURCE_EXHAUSTED,  /* RESOURCE_EXHAUSTED */
      LK_CLIENT_FAILED_PRECONDITION, /* FAILED_PRECONDITION */
      LK_CLIENT_INTERNAL,            /* ABORTED */
      LK_CLIENT_INTERNAL,            /* OUT_OF_RANGE */
      LK_CLIENT_INTERNAL,            /* UNIMPLEMENTED */
      LK_CLIENT_INTERNAL,            /* INTERNAL */
      LK_CLIENT_UNAVAILABLE,         /* UNAVAILABLE */
      LK_CLIENT_INTERNAL,            /* DATA_LOSS */
      LK_CLIENT_UNAUTHENTICATED,     /* UNAUTHENTICATED */
  };
  int i;
  (void)state;
  for (i = 0; i < 17; i++) {
    assert_int_equal(lk_client_code_from_grpc(i), want[i]);
  }
  assert_int_equal(lk_client_code_from_grpc(-1), LK_CLIENT_INTERNAL);
  assert_int_equal(lk_client_code_from_grpc(17), LK_CLIENT_INTERNAL);
}

static void code_names_match_the_other_clients(void **state) {
  (void)state;
  assert_string_equal(lk_client_code_name(LK_CLIENT_OK), "OK");
  assert_string_equal(lk_client_code_name(LK_CLIENT_NOT_FOUND), "NOT_FOUND");
  assert_string_equal(lk_client_code_name(LK_CLIENT_INVALID_ARGUMENT),
                      "INVALID_ARGUMENT");
  assert_string_equal(lk_client_code_name(LK_CLIENT_PERMISSION_DENIED),
                      "PERMISSION_DENIED");
  assert_string_equal(lk_client_code_name(LK_CLIENT_FAILED_PRECONDITION),
                      "FAILED_PRECONDITION");
  assert_string_equal(lk_client_code_name(LK_CLIENT_UNAUTHENTICATED),
                      "UNAUTHENTICATED");
  assert_string_equal(lk_client_code_name(LK_CLIENT_DEADLINE_EXCEEDED),
                      "DEADLINE_EXCEEDED");
  assert_string_equal(lk_client_code_name(LK_CLIENT_UNAVAILABLE),
                      "UNAVAILABLE");
  assert_string_equal(lk_client_code_name(LK_CLIENT_RESOURCE_EXHAUSTED),
                      "RESOURCE_EXHAUSTED");
  assert_string_equal(lk_client_code_name(LK_CLIENT_INTERNAL), "INTERNAL");
  assert_string_equal(lk_client_code_name(LK_CLIENT_MISSING_CREDENTIAL),
                      "MISSING_CREDENTIAL");
  assert_string_equal(lk_client_code_name((lk_client_code)99), "UNKNOWN");
}

/* Packs msg into a malloc'd buffer; *len gets its size. */
static uint8_t *pack(const ProtobufCMessage *msg, size_t *len) {
  uint8_t *buf;
  *len = protobuf_c_message_get_packed_size(msg);
  buf = malloc(*len + 1);
  assert_non_null(buf);
  assert_int_equal(protobuf_c_message_pack(msg, buf), *len);
  return buf;
}

static void vendor_answer_becomes_a_result(void **state) {
  Latchkey__V1__ToolCallResponse resp = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  Latchkey__V1__ToolResult res = LATCHKEY__V1__TOOL_RESULT__INIT;
  Latchkey__V1__ToolResult__HeadersEntry h1 =
      LATCHKEY__V1__TOOL_RESULT__HEADERS_ENTRY__INIT;
  Latchkey__V1__ToolResult__HeadersEntry h2 =
      LATCHKEY__V1__TOOL_RESULT__HEADERS_ENTRY__INIT;
  Latchkey__V1__ToolResult__HeadersEntry *hs[2] = {&h1, &h2};
  static const char body[] = "{\"auth\":\"Bearer [REDACTED]\"}";
  lk_client_result *r = NULL;
  lk_client_error err;
  const Latchkey__V1__ToolCallResponse *back;
  uint8_t *buf;
  size_t len;
  (void)state;

  h1.key = "content-type";
  h1.value = "application/json";
  h2.key = "x-echo-authorization";
  h2.value = "Bearer [REDACTED]";
  res.http_status = 201;
  res.content_type = "application/json";
  res.body.data = (uint8_t *)body;
  res.body.len = sizeof(body) - 1;
  res.headers = hs;
  res.n_headers = 2;
  res.redacted = 1;
  resp.outcome_case = LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_RESULT;
  resp.result = &res;
  buf = pack(&resp.base, &len);

  assert_int_equal(
      lk_client_result_parse(buf, len, len, "00112233aabbccdd", &r, &err),
      LK_CLIENT_OK);
  assert_non_null(r);
  assert_null(r->missing_credential);
  assert_int_equal(r->http_status, 201);
  assert_string_equal(r->content_type, "application/json");
  assert_int_equal(r->body_len, sizeof(body) - 1);
  assert_memory_equal(r->body, body, sizeof(body) - 1);
  assert_true(r->redacted);
  assert_int_equal(r->n_headers, 2);
  assert_string_equal(r->headers[0].name, "content-type");
  assert_string_equal(r->headers[1].name, "x-echo-authorization");
  assert_string_equal(r->headers[1].value, "Bearer [REDACTED]");
  assert_string_equal(r->request_id, "00112233aabbccdd");
  back = (const Latchkey__V1__ToolCallResponse *)lk_client_result_message(r);
  assert_ptr_equal(back->base.descriptor,
                   &latchkey__v1__tool_call_response__descriptor);
  assert_int_equal(back->result->http_status, 201);
  lk_client_result_free(r);

  /* One byte under its size, the same answer is refused unparsed. */
  r = NULL;
  assert_int_equal(lk_client_result_parse(buf, len, len - 1, "", &r, &err),
                   LK_CLIENT_RESOURCE_EXHAUSTED);
  assert_null(r);
  assert_non_null(strstr(err.message, "over the client's limit"));
  free(buf);
}

static void missing_credential_is_an_error_that_carries_the_setup(
    void **state) {
  Latchkey__V1__ToolCallResponse resp = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  Latchkey__V1__MissingCredential mc = LATCHKEY__V1__MISSING_CREDENTIAL__INIT;
  Latchkey__V1__CredentialField f = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *fs[1] = {&f};
  lk_client_result *r = NULL;
  lk_client_error err;
  uint8_t *buf;
  size_t len;
  (void)state;

  f.name = "api_key";
  f.secret = 1;
  f.pattern = "^[A-Za-z0-9]{16,}$";
  f.description = "The vendor's API key";
  f.max_len = 64;
  mc.budget_id = "main";
  mc.tool_id = "weather";
  mc.credential_type = "weather-key";
  mc.required_fields = fs;
  mc.n_required_fields = 1;
  mc.setup_url = "https://setup.example/weather?budget=main";
  mc.hint = "latchkeyctl credential create --type weather-key";
  resp.outcome_case =
      LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_MISSING_CREDENTIAL;
  resp.missing_credential = &mc;
  buf = pack(&resp.base, &len);

  assert_int_equal(lk_client_result_parse(buf, len, len, "", &r, &err),
                   LK_CLIENT_MISSING_CREDENTIAL);
  assert_int_equal(err.code, LK_CLIENT_MISSING_CREDENTIAL);
  assert_int_equal(err.grpc_status, 0);
  assert_string_equal(err.message,
                      "budget main has no credential bound for tool weather "
                      "(credential type weather-key); set it up at "
                      "https://setup.example/weather?budget=main");
  assert_non_null(r);
  assert_int_equal(r->http_status, 0);
  assert_int_equal(r->body_len, 0);
  assert_int_equal(r->n_headers, 0);
  assert_non_null(r->missing_credential);
  assert_string_equal(r->missing_credential->budget, "main");
  assert_string_equal(r->missing_credential->tool, "weather");
  assert_string_equal(r->missing_credential->credential_type, "weather-key");
  assert_int_equal(r->missing_credential->n_required_fields, 1);
  assert_string_equal(r->missing_credential->required_fields[0].name,
                      "api_key");
  assert_true(r->missing_credential->required_fields[0].secret);
  assert_string_equal(r->missing_credential->required_fields[0].pattern,
                      "^[A-Za-z0-9]{16,}$");
  assert_string_equal(r->missing_credential->required_fields[0].description,
                      "The vendor's API key");
  assert_int_equal(r->missing_credential->required_fields[0].max_len, 64);
  assert_string_equal(r->missing_credential->setup_url,
                      "https://setup.example/weather?budget=main");
  assert_string_equal(r->missing_credential->hint,
                      "latchkeyctl credential create --type weather-key");
  lk_client_result_free(r);
  free(buf);

  /* Without a setup URL the message ends at the type. */
  mc.setup_url = "";
  buf = pack(&resp.base, &len);
  assert_int_equal(lk_client_result_parse(buf, len, len, "", &r, &err),
                   LK_CLIENT_MISSING_CREDENTIAL);
  assert_string_equal(err.message,
                      "budget main has no credential bound for tool weather "
                      "(credential type weather-key)");
  lk_client_result_free(r);
  free(buf);
}

static void answers_that_are_not_a_result_are_internal(void **state) {
  Latchkey__V1__ToolCallResponse empty = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  static const uint8_t garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f};
  lk_client_result *r = (lk_client_result *)&r;
  lk_client_tools *t = (lk_client_tools *)&t;
  lk_client_error err;
  uint8_t *buf;
  size_t len;
  (void)state;

  buf = pack(&empty.base, &len);
  assert_int_equal(lk_client_result_parse(buf, len, 1024, "", &r, &err),
                   LK_CLIENT_INTERNAL);
  assert_null(r);
  assert_string_equal(err.message,
                      "the sidecar answered with neither a result nor a "
                      "missing credential");
  free(buf);
  assert_int_equal(
      lk_client_result_parse(garbage, sizeof(garbage), 1024, "", &r, &err),
      LK_CLIENT_INTERNAL);
  assert_null(r);
  assert_string_equal(err.message,
                      "the answer is not a valid "
                      "latchkey.v1.ToolCallResponse; is the address a "
                      "Latchkey sidecar's ToolCalls endpoint?");
  assert_int_equal(
      lk_client_tools_parse(garbage, sizeof(garbage), 1024, &t, &err),
      LK_CLIENT_INTERNAL);
  assert_null(t);
  assert_string_equal(err.message,
                      "the answer is not a valid "
                      "latchkey.v1.ListToolsResponse; is the address a "
                      "Latchkey sidecar's ToolCalls endpoint?");
}

static void tool_listing_keeps_each_tools_operations(void **state) {
  Latchkey__V1__ListToolsResponse resp =
      LATCHKEY__V1__LIST_TOOLS_RESPONSE__INIT;
  Latchkey__V1__ToolInfo a = LATCHKEY__V1__TOOL_INFO__INIT;
  Latchkey__V1__ToolInfo b = LATCHKEY__V1__TOOL_INFO__INIT;
  Latchkey__V1__ToolInfo *tools[2] = {&a, &b};
  Latchkey__V1__OperationInfo o1 = LATCHKEY__V1__OPERATION_INFO__INIT;
  Latchkey__V1__OperationInfo o2 = LATCHKEY__V1__OPERATION_INFO__INIT;
  Latchkey__V1__OperationInfo o3 = LATCHKEY__V1__OPERATION_INFO__INIT;
  Latchkey__V1__OperationInfo *a_ops[2] = {&o1, &o2};
  Latchkey__V1__OperationInfo *b_ops[1] = {&o3};
  lk_client_tools *t = NULL;
  lk_client_error err;
  uint8_t *buf;
  size_t len;
  (void)state;

  o1.name = "forecast";
  o1.method = "GET";
  o1.path = "/v1/forecast/{city}";
  o1.parameters_json_schema = "{\"type\":\"object\"}";
  o2.name = "alerts";
  o2.method = "GET";
  o2.path = "/v1/alerts";
  o3.name = "send";
  o3.method = "POST";
  o3.path = "/v1/send";
  o3.description = "Send a message";
  a.tool_id = "weather";
  a.description = "Forecasts";
  a.operations = a_ops;
  a.n_operations = 2;
  a.credential_ready = 1;
  a.credential_type = "weather-key";
  b.tool_id = "mail";
  b.operations = b_ops;
  b.n_operations = 1;
  resp.tools = tools;
  resp.n_tools = 2;
  buf = pack(&resp.base, &len);

  assert_int_equal(lk_client_tools_parse(buf, len, len, &t, &err),
                   LK_CLIENT_OK);
  assert_int_equal(t->n_tools, 2);
  assert_string_equal(t->tools[0].id, "weather");
  assert_string_equal(t->tools[0].description, "Forecasts");
  assert_string_equal(t->tools[0].credential_type, "weather-key");
  assert_true(t->tools[0].credential_ready);
  assert_int_equal(t->tools[0].n_operations, 2);
  assert_string_equal(t->tools[0].operations[0].name, "forecast");
  assert_string_equal(t->tools[0].operations[0].path, "/v1/forecast/{city}");
  assert_string_equal(t->tools[0].operations[0].parameters_schema,
                      "{\"type\":\"object\"}");
  assert_string_equal(t->tools[0].operations[1].name, "alerts");
  assert_string_equal(t->tools[1].id, "mail");
  assert_string_equal(t->tools[1].credential_type, "");
  assert_false(t->tools[1].credential_ready);
  assert_int_equal(t->tools[1].n_operations, 1);
  assert_string_equal(t->tools[1].operations[0].name, "send");
  assert_string_equal(t->tools[1].operations[0].method, "POST");
  assert_string_equal(t->tools[1].operations[0].description, "Send a message");
  assert_string_equal(t->tools[1].operations[0].parameters_schema, "");
  assert_ptr_equal(lk_client_tools_message(t)->descriptor,
                   &latchkey__v1__list_tools_response__descriptor);
  lk_client_tools_free(t);

  t = NULL;
  assert_int_equal(lk_client_tools_parse(buf, len, len - 1, &t, &err),
                   LK_CLIENT_RESOURCE_EXHAUSTED);
  assert_null(t);
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(open_refuses_bad_addresses),
      cmocka_unit_test(open_refuses_out_of_range_options),
      cmocka_unit_test(open_refuses_tokens_a_header_cannot_carry),
      cmocka_unit_test(open_refuses_unreadable_or_empty_ca_files),
      cmocka_unit_test(open_is_lazy_and_close_accepts_null),
      cmocka_unit_test(call_and_list_refuse_missing_or_oversized_arguments),
      cmocka_unit_test(every_grpc_status_maps_to_the_code_of_its_name),
      cmocka_unit_test(code_names_match_the_other_clients),
      cmocka_unit_test(vendor_answer_becomes_a_result),
      cmocka_unit_test(missing_credential_is_an_error_that_carries_the_setup),
      cmocka_unit_test(answers_that_are_not_a_result_are_internal),
      cmocka_unit_test(tool_listing_keeps_each_tools_operations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
