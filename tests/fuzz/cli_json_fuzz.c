/*
 * cli_json_fuzz.c - fuzzes clients/cli/convert: the JSON documents an
 * owner hands latchkeyctl (tools, credential types, budgets, bindings).
 *
 * The input is one JSON document. It is parsed with lk_convert_parse (as
 * plain text and as a secret document), and a document that parses is
 * converted with lk_convert_tool_request_from_json,
 * lk_convert_credential_type_from_json and lk_convert_from_json for Tool,
 * CredentialType, Credential, Budget and Binding.
 *
 * Invariants (a break traps):
 * - Every call returns LK_OK with an output, or fails with no output and a
 *   non-empty reason.
 * - Plain and secret parsing agree on whether the document is JSON.
 * - A message built from the document renders back to JSON
 *   (lk_convert_to_json), and that rendering converts again into a message
 *   that renders to the same JSON (the converter reads what it writes).
 * - Everything is freed with lk_convert_message_free (no leak under ASan).
 */
#include <string.h>

#include <jansson.h>

#include "clients/cli/convert.h"
#include "lib/status.h"
#include "tests/fuzz/fuzz_target.h"

static void check(int ok) {
  if (!ok) {
    __builtin_trap();
  }
}

/* Checks the outcome of one call: output exactly on success, else a reason. */
static void check_result(lk_status st, const void *out, const lk_err *err) {
  if (st == LK_OK) {
    check(out != NULL);
  } else {
    check(out == NULL && err->msg[0] != '\0');
  }
}

/* Renders msg to JSON, converts that back with desc, and checks that the
 * second rendering equals the first. */
static void check_round_trip(const ProtobufCMessage *msg,
                             const ProtobufCMessageDescriptor *desc) {
  json_t *first = NULL;
  json_t *second = NULL;
  ProtobufCMessage *again = NULL;
  lk_err err;

  lk_err_clear(&err);
  check(lk_convert_to_json(msg, &first, &err) == LK_OK && first != NULL);
  check(lk_convert_from_json(first, desc, &again, &err) == LK_OK);
  check(lk_convert_to_json(again, &second, &err) == LK_OK && second != NULL);
  check(json_equal(first, second));
  json_decref(second);
  json_decref(first);
  lk_convert_message_free(again);
}

/* Converts json as a message of type desc and checks the result. */
static void convert_as(const json_t *json,
                       const ProtobufCMessageDescriptor *desc) {
  ProtobufCMessage *m = NULL;
  lk_err err;

  lk_err_clear(&err);
  lk_status st = lk_convert_from_json(json, desc, &m, &err);
  check_result(st, m, &err);
  if (st == LK_OK) {
    check(m->descriptor == desc);
    check_round_trip(m, desc);
  }
  lk_convert_message_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_t *json = NULL;
  json_t *secret_json = NULL;
  lk_err err;

  lk_err_clear(&err);
  lk_status st = lk_convert_parse((const char *)data, size, 0, &json, &err);
  check_result(st, json, &err);
  lk_err_clear(&err);
  lk_status secret_st =
      lk_convert_parse((const char *)data, size, 1, &secret_json, &err);
  check_result(secret_st, secret_json, &err);
  check((st == LK_OK) == (secret_st == LK_OK));
  if (st == LK_OK) {
    check(json_equal(json, secret_json));
  }
  json_decref(secret_json);
  if (st != LK_OK) {
    return 0;
  }

  Latchkey__V1__RegisterToolRequest *req = NULL;
  lk_err_clear(&err);
  st = lk_convert_tool_request_from_json(json, &req, &err);
  check_result(st, req, &err);
  if (st == LK_OK) {
    check(req->tool != NULL);
    check_round_trip(&req->base,
                     &latchkey__v1__register_tool_request__descriptor);
  }
  lk_convert_message_free((ProtobufCMessage *)req);

  Latchkey__V1__CredentialType *type = NULL;
  lk_err_clear(&err);
  st = lk_convert_credential_type_from_json(json, &type, &err);
  check_result(st, type, &err);
  if (st == LK_OK) {
    check_round_trip(&type->base, &latchkey__v1__credential_type__descriptor);
  }
  lk_convert_message_free((ProtobufCMessage *)type);

  convert_as(json, &latchkey__v1__tool__descriptor);
  convert_as(json, &latchkey__v1__credential_type__descriptor);
  convert_as(json, &latchkey__v1__credential__descriptor);
  convert_as(json, &latchkey__v1__budget__descriptor);
  convert_as(json, &latchkey__v1__binding__descriptor);
  json_decref(json);
  return 0;
}
