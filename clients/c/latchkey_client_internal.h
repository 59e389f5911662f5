/*
 * latchkey_client_internal.h - what this repository (not agents) may use of
 * the C client beyond its public header.
 *
 * Why: latchkeyctl's --json output is the sidecar's response message
 * rendered by clients/cli/convert.c, so the CLI needs the unpacked
 * protobuf-c message behind a result; and the unit tests prove the
 * response parsing and the status mapping without a server. Programs
 * outside this repository include only latchkey_client.h.
 */
#ifndef LATCHKEY_CLIENT_INTERNAL_H
#define LATCHKEY_CLIENT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "clients/c/latchkey_client.h"

/* Returns the Latchkey__V1__ToolCallResponse r was made from; it lives as
 * long as r. */
const ProtobufCMessage *lk_client_result_message(const lk_client_result *r);

/* Returns the Latchkey__V1__ListToolsResponse t was made from; it lives as
 * long as t. */
const ProtobufCMessage *lk_client_tools_message(const lk_client_tools *t);

/* Maps a gRPC status code to the client code of the same name; codes with
 * no such twin (CANCELLED, UNKNOWN, ...) map to LK_CLIENT_INTERNAL. */
lk_client_code lk_client_code_from_grpc(int grpc_status);

/* Parses len bytes of a packed ToolCallResponse (refused when len exceeds
 * cap) into *out, as lk_client_call does with the sidecar's answer, with
 * request_id (16 hex digits) recorded in it. */
LK_CLIENT_MUST_CHECK lk_client_code lk_client_result_parse(
    const uint8_t *data, size_t len, size_t cap, const char *request_id,
    lk_client_result **out, lk_client_error *err);

/* Parses len bytes of a packed ListToolsResponse (refused when len exceeds
 * cap) into *out, as lk_client_list_tools does. */
LK_CLIENT_MUST_CHECK lk_client_code lk_client_tools_parse(const uint8_t *data,
                                                          size_t len,
                                                          size_t cap,
                                                          lk_client_tools **out,
                                                          lk_client_error *err);

#endif
