/*
 * convert.h - JSON documents <-> latchkey.v1 protobuf-c messages.
 *
 * Why: owners write tools, credential types and credential fields as JSON
 * (DESIGN.md §3) and read answers as JSON (`latchkeyctl --json`), while the
 * wire speaks protobuf. One descriptor-driven converter covers every message
 * (Tool, CredentialType, Credential, Budget, Binding, ToolCallResponse,
 * ListToolsResponse, the Admin requests) with one set of rules, so every
 * document gets the same strictness and the same error wording:
 *
 *  - keys are the proto field names (snake_case); an unknown key, a value of
 *    the wrong JSON type or an integer out of range is rejected with a
 *    message naming the key path ("operations[0].params[1].required must be
 *    a boolean"); null means "not given";
 *  - repeated fields are arrays, map<string,string> fields are objects,
 *    messages are objects, a oneof takes at most one member;
 *  - a bytes field NAME is written as "NAME" (a string) when it is valid
 *    UTF-8, else as "NAME_base64"; both spellings are read;
 *  - output carries every field, defaults included, except unset messages
 *    and unselected oneof members.
 *
 * Messages built here come from malloc and are released with
 * lk_convert_message_free, which wipes every string and bytes value first:
 * the same path frees credential requests that held secret field values.
 * Error messages name keys and positions, never values.
 */
#ifndef LK_CLI_CONVERT_H
#define LK_CLI_CONVERT_H

#include <stddef.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "latchkey/v1/admin.pb-c.h"
#include "latchkey/v1/toolcalls.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/status.h"

/* The largest JSON document lk_convert_load_file reads. */
#define LK_CONVERT_MAX_FILE_BYTES (1024 * 1024)

/* Parses len bytes of text as one JSON value (duplicate keys rejected) into
 * *out; when secret is non-zero a syntax error reports only the position,
 * never the text around it. */
LK_MUST_CHECK lk_status lk_convert_parse(const char *text, size_t len,
                                         int secret, json_t **out, lk_err *err);

/* Reads and parses the JSON file at path ("-" reads standard input), which
 * must hold at most LK_CONVERT_MAX_FILE_BYTES, into *out. */
LK_MUST_CHECK lk_status lk_convert_load_file(const char *path, json_t **out,
                                             lk_err *err);

/* Builds a message of type desc from the JSON object json into *out, by the
 * rules above. */
LK_MUST_CHECK lk_status
lk_convert_from_json(const json_t *json, const ProtobufCMessageDescriptor *desc,
                     ProtobufCMessage **out, lk_err *err);

/* Renders msg as a JSON object into *out (caller json_decref's it). */
LK_MUST_CHECK lk_status lk_convert_to_json(const ProtobufCMessage *msg,
                                           json_t **out, lk_err *err);

/* Builds a RegisterToolRequest from a tool as a user writes it: a Tool
 * whose "credential_type" is either a type id (string) or an inline
 * CredentialType object (then sent alongside, tool.credential_type = its
 * id). Only the shape is checked; the server judges the content. */
LK_MUST_CHECK lk_status lk_convert_tool_request_from_json(
    const json_t *json, Latchkey__V1__RegisterToolRequest **out, lk_err *err);

/* Builds a CredentialType from its JSON object (`type register`), by the
 * same rules as an inline type. */
LK_MUST_CHECK lk_status lk_convert_credential_type_from_json(
    const json_t *json, Latchkey__V1__CredentialType **out, lk_err *err);

/* Overwrites with zeros every string and bytes value in msg and its
 * submessages, leaving the structure valid for freeing. */
void lk_convert_message_wipe(ProtobufCMessage *msg);

/* Wipes (as lk_convert_message_wipe) and frees msg, whether it was built
 * here or unpacked by protobuf-c with the default allocator; accepts NULL. */
void lk_convert_message_free(ProtobufCMessage *msg);

#endif
