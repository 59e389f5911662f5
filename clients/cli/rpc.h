/*
 * rpc.h - one blocking unary call over grpc core's C client API.
 *
 * Why: latchkeyctl makes exactly one RPC per run, against either the Admin
 * endpoint or a sidecar's ToolCalls endpoint. Going through grpc core's C
 * surface keeps the CLI in C with no generated stubs: a call is "pack a
 * protobuf-c message, run one batch, unpack the answer". This module owns
 * every grpc object it creates and frees it before returning.
 *
 * Invariants: the packed request and the "authorization" value live in
 * lk_secret (sodium_malloc) memory, so whatever secret they carry (credential
 * fields, a bearer token) is wiped when grpc drops its last reference; a non-OK
 * gRPC status always becomes a non-LK_OK lk_status with the server's
 * details in err->msg; responses larger than LK_RPC_MAX_RESPONSE_BYTES are
 * refused by the channel.
 */
#ifndef LK_CLI_RPC_H
#define LK_CLI_RPC_H

#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "lib/status.h"

/* The largest response message the channel accepts (a tool call's body is
 * capped by the sidecar's --max-response-bytes; this leaves headroom). */
#define LK_RPC_MAX_RESPONSE_BYTES (64 * 1024 * 1024)

/* The largest CA bundle lk_rpc_open reads. */
#define LK_RPC_MAX_CA_BYTES (1024 * 1024)

/* The longest bearer token lk_rpc_unary sends. */
#define LK_RPC_MAX_TOKEN_BYTES 4096

typedef struct lk_rpc_channel lk_rpc_channel;

/* Opens a channel to address (gRPC syntax: "unix:/path" or "host:port"),
 * over TLS verified against the PEM bundle at tls_ca_path when it is
 * non-NULL, else in plaintext; stores it in *out. Nothing is dialled until
 * the first call. */
LK_MUST_CHECK lk_status lk_rpc_open(const char *address,
                                    const char *tls_ca_path,
                                    lk_rpc_channel **out, lk_err *err);

/* Calls method ("/latchkey.v1.Admin/ListTools") with req, sending
 * "authorization: Bearer <bearer_token>" when bearer_token is non-NULL and
 * waiting at most deadline_ms; on LK_OK *resp holds the unpacked answer of
 * type resp_desc (free it with protobuf_c_message_free_unpacked), otherwise
 * err carries the gRPC status mapped to lk_status and the server's details. */
LK_MUST_CHECK lk_status
lk_rpc_unary(lk_rpc_channel *ch, const char *method, const char *bearer_token,
             int64_t deadline_ms, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *resp_desc,
             ProtobufCMessage **resp, lk_err *err);

/* Maps a numeric gRPC status code to the lk_status that names it (codes
 * Latchkey does not use map to the nearest one, UNIMPLEMENTED and UNKNOWN
 * to LK_INTERNAL). */
lk_status lk_rpc_status_from_grpc(int grpc_code);

/* Closes ch and releases everything it holds; accepts NULL. */
void lk_rpc_close(lk_rpc_channel *ch);

#endif
