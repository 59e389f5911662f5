/*
 * latchkey_client.h - the C client of a Latchkey sidecar
 * (latchkey.v1.ToolCalls).
 *
 * Why: an agent written in C lists the tools its budget may use (with the
 * JSON Schema of each operation's parameters, ready to hand to an LLM as a
 * function definition) and calls them through the sidecar, which injects
 * the credential and scrubs any echo of it. The agent never holds a
 * secret; what it holds at most is the agent token that proves to the
 * sidecar which agent is calling.
 *
 * This header is the whole public contract. It is self-contained: it
 * needs only the C standard library's <stddef.h>, so a program built with
 * any build system can include it and link the library with grpc core,
 * protobuf-c and libsodium. clients/c/README.md has a quick start and
 * examples/c/agent_loop.c a whole agent loop.
 *
 * Errors: every fallible function returns an lk_client_code (LK_CLIENT_OK
 * is 0) and, when err is non-NULL, fills err with the same code and a
 * message a person can act on. The codes mean the same as the Python and
 * TypeScript clients' error classes (NotFound, InvalidArgument, ...,
 * MissingCredential); a gRPC status maps to the code of the same name,
 * and the codes a sidecar never sends (CANCELLED, UNKNOWN, ...), which
 * those clients raise as their base error, to LK_CLIENT_INTERNAL with
 * lk_client_error.grpc_status saying which it was.
 *
 * Missing credential: when the budget has no credential bound for the
 * tool, lk_client_call returns LK_CLIENT_MISSING_CREDENTIAL, and *out
 * still holds a result whose missing_credential member names the fields
 * to provide, the setup link and the exact latchkeyctl commands. It is an
 * error (the tool was not called) that carries what the user needs.
 *
 * Memory: every object this library returns is freed by its own
 * lk_client_*_free function, which accepts NULL; strings inside a result
 * live exactly as long as the result. Every response is capped in size
 * (lk_client_opts.max_response_bytes) before it is parsed.
 *
 * Threads: one lk_client may serve calls from several threads at once (each
 * call has its own completion queue); open and close it once.
 */
#ifndef LATCHKEY_CLIENT_H
#define LATCHKEY_CLIENT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LK_CLIENT_MUST_CHECK __attribute__((warn_unused_result))
#else
#define LK_CLIENT_MUST_CHECK
#endif

/* The deadline of a call when lk_client_opts.timeout_ms is 0. */
#define LK_CLIENT_DEFAULT_TIMEOUT_MS 30000L
/* The longest deadline lk_client_opts.timeout_ms may set (one hour). */
#define LK_CLIENT_MAX_TIMEOUT_MS 3600000L
/* The response cap when lk_client_opts.max_response_bytes is 0: a sidecar
 * caps vendor bodies at 3 MiB, this leaves room for headers. */
#define LK_CLIENT_DEFAULT_MAX_RESPONSE_BYTES ((size_t)8 * 1024 * 1024)
/* The largest response cap a caller may set (gRPC counts in an int). */
#define LK_CLIENT_MAX_RESPONSE_LIMIT ((size_t)1024 * 1024 * 1024)
/* The longest agent token, budget, tool or operation name accepted. */
#define LK_CLIENT_MAX_TOKEN_BYTES 4096
#define LK_CLIENT_MAX_ID_BYTES 128
/* The largest arguments_json a call sends (the sidecar's request cap). */
#define LK_CLIENT_MAX_ARGUMENTS_BYTES ((size_t)4 * 1024 * 1024)

/* What went wrong; the same meanings as the other clients' error classes. */
typedef enum lk_client_code {
  LK_CLIENT_OK = 0,
  /* Unknown budget, tool or operation. */
  LK_CLIENT_NOT_FOUND,
  /* Bad arguments (a parameter missing, unknown or of the wrong type) or a
   * malformed id; also a bad argument to this library's functions. */
  LK_CLIENT_INVALID_ARGUMENT,
  /* The budget is not this agent's. */
  LK_CLIENT_PERMISSION_DENIED,
  /* The budget is paused, or the sidecar's replica is too stale. */
  LK_CLIENT_FAILED_PRECONDITION,
  /* No agent token, or the wrong one. */
  LK_CLIENT_UNAUTHENTICATED,
  /* The call's deadline passed before the answer came. */
  LK_CLIENT_DEADLINE_EXCEEDED,
  /* The sidecar or the vendor could not be reached. */
  LK_CLIENT_UNAVAILABLE,
  /* A request or response over its size limit, or a rate limit hit. */
  LK_CLIENT_RESOURCE_EXHAUSTED,
  /* A bug, in the sidecar or here; out of memory; a gRPC status with no
   * code of its own here (grpc_status says which). */
  LK_CLIENT_INTERNAL,
  /* No credential is bound for the tool: see lk_client_result. */
  LK_CLIENT_MISSING_CREDENTIAL
} lk_client_code;

/* A failed call's reason. message never holds a secret (the sidecar's
 * messages name ids and fields only, and this library never quotes the
 * agent token or arguments). */
typedef struct lk_client_error {
  lk_client_code code;
  /* The gRPC status code behind code (1..16; 0 for a missing credential,
   * which the sidecar answers with status OK), or -1 when the failure
   * arose in this library (an argument check, out of memory). */
  int grpc_status;
  char message[512];
} lk_client_error;

/* How to reach and authenticate to a sidecar. Zero-initialize it and set
 * what you need; a NULL opts means all defaults. */
typedef struct lk_client_opts {
  /* Sent as "authorization: Bearer <agent_token>" on every call when
   * non-NULL (the sidecar's --agent-token-file). Copied into guarded
   * memory at open, wiped at close; one line of printable ASCII. */
  const char *agent_token;
  /* Each call's deadline in milliseconds; 0 means
   * LK_CLIENT_DEFAULT_TIMEOUT_MS; at most LK_CLIENT_MAX_TIMEOUT_MS. */
  long timeout_ms;
  /* Path of a PEM CA bundle: use TLS and trust it. NULL: plaintext, for
   * a Unix socket or loopback. */
  const char *tls_ca;
  /* The largest response accepted, in bytes; 0 means
   * LK_CLIENT_DEFAULT_MAX_RESPONSE_BYTES. A larger answer fails with
   * LK_CLIENT_RESOURCE_EXHAUSTED before it is parsed. */
  size_t max_response_bytes;
} lk_client_opts;

/* A connection to one sidecar (opaque). */
typedef struct lk_client lk_client;

/* One operation of a tool. */
typedef struct lk_client_operation {
  const char *name;
  const char *description;
  const char *method; /* "GET", "POST", ... */
  const char *path;   /* the path template, "/v1/forecast/{city}" */
  /* The JSON Schema object of the parameters, as JSON text: hand it to
   * an LLM as a function definition's "parameters". */
  const char *parameters_schema;
} lk_client_operation;

/* One tool the budget may use. */
typedef struct lk_client_tool {
  const char *id;
  const char *description;
  const char *credential_type; /* "" when the tool needs no credential */
  int credential_ready;        /* non-zero: a credential is bound */
  const lk_client_operation *operations;
  size_t n_operations;
} lk_client_tool;

/* What lk_client_list_tools returns. */
typedef struct lk_client_tools {
  const lk_client_tool *tools;
  size_t n_tools;
} lk_client_tools;

/* One response header of the vendor (scrubbed like the body). */
typedef struct lk_client_header {
  const char *name;
  const char *value;
} lk_client_header;

/* One field of the missing credential; never a value. */
typedef struct lk_client_field {
  const char *name;
  const char *description;
  const char *pattern;  /* a regex the value must match, or "" */
  int secret;           /* non-zero: a secret field (write-only) */
  unsigned int max_len; /* the longest value accepted; 0: 4096 */
} lk_client_field;

/* Why a call did not reach the vendor: the credential to set up. */
typedef struct lk_client_missing_credential {
  const char *budget;
  const char *tool;
  const char *credential_type;
  const lk_client_field *required_fields;
  size_t n_required_fields;
  const char *setup_url; /* where the owner provides it, or "" */
  const char *hint;      /* the exact latchkeyctl commands */
} lk_client_missing_credential;

/* What lk_client_call returns. With LK_CLIENT_OK: the vendor's answer,
 * missing_credential NULL. With LK_CLIENT_MISSING_CREDENTIAL:
 * missing_credential set, http_status 0 and no body. */
typedef struct lk_client_result {
  int http_status; /* the vendor's HTTP status */
  const char *content_type;
  /* The vendor's body, scrubbed: body_len bytes, not NUL-terminated. */
  const unsigned char *body;
  size_t body_len;
  const lk_client_header *headers;
  size_t n_headers;
  int redacted; /* non-zero: an echo of the secret was scrubbed */
  const lk_client_missing_credential *missing_credential;
  /* The request id sent with the call (16 hex digits), for audit lines. */
  char request_id[17];
} lk_client_result;

/* Opens a client for the sidecar at address (gRPC syntax: "unix:/path" or
 * "host:port") with opts (NULL: defaults) and stores it in *out; nothing is
 * dialled until the first call, so an unreachable sidecar shows up there
 * as LK_CLIENT_UNAVAILABLE. */
LK_CLIENT_MUST_CHECK lk_client_code lk_client_open(const char *address,
                                                   const lk_client_opts *opts,
                                                   lk_client **out,
                                                   lk_client_error *err);

/* Lists the tools and operations budget may use into *out (free it with
 * lk_client_tools_free). */
LK_CLIENT_MUST_CHECK lk_client_code lk_client_list_tools(lk_client *c,
                                                         const char *budget,
                                                         lk_client_tools **out,
                                                         lk_client_error *err);

/* Calls operation of tool for budget with arguments_json (one flat JSON
 * object of the operation's parameters by name; NULL means "{}"), and
 * stores the answer in *out (free it with lk_client_result_free): the
 * vendor's answer with LK_CLIENT_OK, the credential to set up with
 * LK_CLIENT_MISSING_CREDENTIAL, NULL with any other code. */
LK_CLIENT_MUST_CHECK lk_client_code lk_client_call(
    lk_client *c, const char *budget, const char *tool, const char *operation,
    const char *arguments_json, lk_client_result **out, lk_client_error *err);

/* Frees a listing; accepts NULL. */
void lk_client_tools_free(lk_client_tools *tools);

/* Frees a call's result; accepts NULL. */
void lk_client_result_free(lk_client_result *result);

/* Closes c, wiping its copy of the agent token; accepts NULL. No call on c
 * may be in progress. */
void lk_client_close(lk_client *c);

/* Returns the name of code without the prefix ("NOT_FOUND"), or
 * "UNKNOWN" for a value outside the enum. */
const char *lk_client_code_name(lk_client_code code);

#ifdef __cplusplus
}
#endif

#endif
