/*
 * latchkey_client.c - latchkey.v1.ToolCalls over grpc core's C client API.
 *
 * Why this shape: an agent makes unary calls only (ListTools, Call), so a
 * call is one grpc batch (send metadata, message and close; receive
 * metadata, message and status) plucked from a completion queue that the
 * call creates and destroys itself. A queue per call is what lets one
 * lk_client serve several threads at once: a shared pluck queue would cap
 * concurrent callers at GRPC_MAX_COMPLETION_QUEUE_PLUCKERS. Every op's
 * storage lives on the calling stack until its single event arrives and
 * is released at one cleanup label. The call carries its own deadline, so
 * the pluck waits without one and cannot strand the call.
 *
 * Results are views: the unpacked protobuf-c message is kept inside the
 * result, and the public structs point into it, so a vendor body is held
 * once (no copy of up to max_response_bytes). The public pointer is the
 * first member of a private struct, which is how the free functions and
 * the internal accessors find the message again.
 *
 * Size caps: the channel refuses any message over max_response_bytes
 * (GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH), and the parsers refuse it again
 * by length before protobuf-c sees a byte; outgoing ids, the token and
 * arguments_json are capped before they are packed.
 *
 * Secrets: the agent token is kept as "Bearer <token>" in lk_secret
 * (sodium_malloc) memory and wiped at close. Each call hands grpc its own
 * guarded copy as a slice whose destroy callback wipes it, and the packed
 * request is built the same way, so whatever grpc still references after
 * the call is wiped when grpc lets go; grpc's transport copies are beyond
 * any client's reach. Error messages quote the sidecar's details and ids,
 * never the token or the arguments.
 *
 * grpc_init/grpc_shutdown are paired with lk_client_open/lk_client_close
 * (grpc counts them). grpc core's own log lines are left to the host
 * program (GRPC_VERBOSITY, gpr_set_log_function): a library does not
 * silence them for the whole process.
 */
#include "clients/c/latchkey_client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <sodium.h>

#include "clients/c/latchkey_client_internal.h"
#include "latchkey/v1/toolcalls.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/secret.h"

#define METHOD_CALL "/latchkey.v1.ToolCalls/Call"
#define METHOD_LIST_TOOLS "/latchkey.v1.ToolCalls/ListTools"
/* The largest CA bundle lk_client_open reads. */
#define MAX_CA_BYTES (1024 * 1024)
/* The longest unix socket path the kernel accepts (sun_path less its NUL). */
#define UNIX_PATH_MAX_LEN 107
/* Bytes of random request id; printed as twice as many hex digits. */
#define REQUEST_ID_BYTES 8
/* How much of the sidecar's details an error message quotes. */
#define MAX_DETAILS_QUOTED (sizeof(((lk_client_error *)0)->message) - 64)

struct lk_client {
  grpc_channel *channel;
  lk_secret *bearer; /* "Bearer <agent token>", or NULL for no token */
  long timeout_ms;
  size_t max_response_bytes;
};

typedef struct {
  lk_client_result pub; /* first: the pointer callers hold */
  Latchkey__V1__ToolCallResponse *msg;
  lk_client_header *headers;
  lk_client_missing_credential missing;
  lk_client_field *fields;
} result_impl;

typedef struct {
  lk_client_tools pub; /* first: the pointer callers hold */
  Latchkey__V1__ListToolsResponse *msg;
  lk_client_tool *tools;
  lk_client_operation *operations; /* every tool's, one after another */
} tools_impl;

/* Indexed by lk_client_code. */
static const char *const code_names[] = {
    "OK",
    "NOT_FOUND",
    "INVALID_ARGUMENT",
    "PERMISSION_DENIED",
    "FAILED_PRECONDITION",
    "UNAUTHENTICATED",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "MISSING_CREDENTIAL",
};

/* Indexed by lk_client_code: what a status with no details says. */
static const char *const default_messages[] = {
    "ok",
    "not found",
    "invalid argument",
    "permission denied",
    "failed precondition",
    "unauthenticated",
    "deadline exceeded",
    "unavailable",
    "resource exhausted",
    "internal error",
    "missing credential",
};

#define N_CODES (sizeof(code_names) / sizeof(code_names[0]))
_Static_assert(N_CODES == LK_CLIENT_MISSING_CREDENTIAL + 1,
               "code_names must name every lk_client_code");
_Static_assert(sizeof(default_messages) / sizeof(default_messages[0]) ==
                   N_CODES,
               "default_messages must cover every lk_client_code");

/* gRPC's code names, indexed by code. */
static const char *const grpc_code_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

#define N_GRPC_CODES (sizeof(grpc_code_names) / sizeof(grpc_code_names[0]))

/* Fills err (when non-NULL) and returns code. */
static lk_client_code fail(lk_client_error *err, lk_client_code code,
                           int grpc_status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static lk_client_code fail(lk_client_error *err, lk_client_code code,
                           int grpc_status, const char *fmt, ...) {
  va_list ap;
  if (err == NULL) {
    return code;
  }
  err->code = code;
  err->grpc_status = grpc_status;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  return code;
}

static void clear_error(lk_client_error *err) {
  if (err != NULL) {
    err->code = LK_CLIENT_OK;
    err->grpc_status = 0;
    err->message[0] = '\0';
  }
}

const char *lk_client_code_name(lk_client_code code) {
  if ((unsigned)code >= N_CODES) {
    return "UNKNOWN";
  }
  return code_names[code];
}

lk_client_code lk_client_code_from_grpc(int grpc_status) {
  switch (grpc_status) {
    case GRPC_STATUS_OK:
      return LK_CLIENT_OK;
    case GRPC_STATUS_NOT_FOUND:
      return LK_CLIENT_NOT_FOUND;
    case GRPC_STATUS_INVALID_ARGUMENT:
      return LK_CLIENT_INVALID_ARGUMENT;
    case GRPC_STATUS_PERMISSION_DENIED:
      return LK_CLIENT_PERMISSION_DENIED;
    case GRPC_STATUS_FAILED_PRECONDITION:
      return LK_CLIENT_FAILED_PRECONDITION;
    case GRPC_STATUS_UNAUTHENTICATED:
      return LK_CLIENT_UNAUTHENTICATED;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
      return LK_CLIENT_DEADLINE_EXCEEDED;
    case GRPC_STATUS_UNAVAILABLE:
      return LK_CLIENT_UNAVAILABLE;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
      return LK_CLIENT_RESOURCE_EXHAUSTED;
    default:
      /* The codes the sidecar never sends (CANCELLED, UNKNOWN, ...): what
       * the other clients raise as their base error; grpc_status and the
       * message say which it was. */
      return LK_CLIENT_INTERNAL;
  }
}

/* Turns a non-OK gRPC status and its details into err; a code whose gRPC
 * name differs from the client code's says which it was. */
static lk_client_code fail_from_status(grpc_status_code status,
                                       grpc_slice details, const char *method,
                                       lk_client_error *err) {
  lk_client_code code = lk_client_code_from_grpc((int)status);
  const char *d = (const char *)GRPC_SLICE_START_PTR(details);
  size_t dlen = GRPC_SLICE_LENGTH(details);
  const char *grpc_name =
      (unsigned)status < N_GRPC_CODES ? grpc_code_names[status] : "UNKNOWN";

  if (dlen == 0) {
    d = default_messages[code];
    dlen = strlen(d);
  }
  if (dlen > MAX_DETAILS_QUOTED) {
    dlen = MAX_DETAILS_QUOTED;
  }
  if (strcmp(grpc_name, code_names[code]) == 0) {
    return fail(err, code, (int)status, "%.*s", (int)dlen, d);
  }
  return fail(err, code, (int)status, "(gRPC %s from %s) %.*s", grpc_name,
              method, (int)dlen, d);
}

/* ---- opening ------------------------------------------------------------ */

/* Refuses an address grpc could never dial, which it would otherwise
 * report as an opaque failure. */
static lk_client_code check_address(const char *address, lk_client_error *err) {
  const char *path = NULL;

  if (address == NULL || address[0] == '\0') {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1, "empty server address");
  }
  if (strncmp(address, "unix:", 5) == 0) {
    path = address + 5;
  }
  if (path != NULL && path[0] == '\0') {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1, "empty unix socket path");
  }
  if (path != NULL && strlen(path) > UNIX_PATH_MAX_LEN) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "unix socket path %.60s... is longer than %d bytes", path,
                UNIX_PATH_MAX_LEN);
  }
  return LK_CLIENT_OK;
}

/* Checks opts' numbers against their documented ranges. */
static lk_client_code check_opts(const lk_client_opts *opts,
                                 lk_client_error *err) {
  if (opts->timeout_ms < 0 || opts->timeout_ms > LK_CLIENT_MAX_TIMEOUT_MS) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "timeout_ms must be from 1 to %ld (0 for the default, %ld)",
                LK_CLIENT_MAX_TIMEOUT_MS, LK_CLIENT_DEFAULT_TIMEOUT_MS);
  }
  if (opts->max_response_bytes > LK_CLIENT_MAX_RESPONSE_LIMIT) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "max_response_bytes must be at most %zu (0 for the default, "
                "%zu)",
                LK_CLIENT_MAX_RESPONSE_LIMIT,
                LK_CLIENT_DEFAULT_MAX_RESPONSE_BYTES);
  }
  return LK_CLIENT_OK;
}

/* Builds "Bearer <token>" in guarded memory, refusing a token a header
 * value cannot carry; the messages never quote the token. */
static lk_client_code make_bearer(const char *token, lk_secret **out,
                                  lk_client_error *err) {
  static const char prefix[] = "Bearer ";
  size_t tlen = strnlen(token, LK_CLIENT_MAX_TOKEN_BYTES + 1);
  lk_secret *s = NULL;
  unsigned char *p;
  size_t i;

  *out = NULL;
  if (tlen == 0) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "the agent token is empty");
  }
  if (tlen > LK_CLIENT_MAX_TOKEN_BYTES) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "the agent token is longer than %d bytes",
                LK_CLIENT_MAX_TOKEN_BYTES);
  }
  for (i = 0; i < tlen; i++) {
    unsigned char ch = (unsigned char)token[i];
    if (ch < 0x21 || ch > 0x7e) {
      return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                  "the agent token holds a space or control character; a "
                  "token is one line of printable ASCII");
    }
  }
  s = lk_secret_new(sizeof(prefix) - 1 + tlen);
  if (s == NULL) {
    return fail(err, LK_CLIENT_INTERNAL, -1,
                "out of memory for the agent token");
  }
  p = lk_secret_mut(s);
  memcpy(p, prefix, sizeof(prefix) - 1);
  memcpy(p + sizeof(prefix) - 1, token, tlen);
  *out = s;
  return LK_CLIENT_OK;
}

/* Reads the whole PEM file at path into a NUL-terminated malloc'd string. */
static lk_client_code read_pem(const char *path, char **out,
                               lk_client_error *err) {
  lk_client_code code = LK_CLIENT_OK;
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t n = 0;

  *out = NULL;
  if (f == NULL) {
    code = fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "cannot open tls_ca %s: %s", path, strerror(errno));
    goto done;
  }
  buf = malloc(MAX_CA_BYTES + 1);
  if (buf == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "out of memory reading tls_ca");
    goto done;
  }
  n = fread(buf, 1, MAX_CA_BYTES + 1, f);
  if (ferror(f)) {
    code = fail(err, LK_CLIENT_INVALID_ARGUMENT, -1, "cannot read tls_ca %s",
                path);
    goto done;
  }
  if (n > MAX_CA_BYTES) {
    code = fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "tls_ca %s is larger than %d bytes", path, MAX_CA_BYTES);
    goto done;
  }
  if (n == 0) {
    code =
        fail(err, LK_CLIENT_INVALID_ARGUMENT, -1, "tls_ca %s is empty", path);
    goto done;
  }
  buf[n] = '\0';
  *out = buf;
  buf = NULL;
done:
  free(buf);
  if (f != NULL) {
    fclose(f);
  }
  return code;
}

lk_client_code lk_client_open(const char *address, const lk_client_opts *opts,
                              lk_client **out, lk_client_error *err) {
  static const lk_client_opts defaults = {NULL, 0, NULL, 0};
  lk_client_code code = LK_CLIENT_OK;
  lk_client *c = NULL;
  grpc_channel_credentials *creds = NULL;
  char *pem = NULL;
  int grpc_started = 0;
  grpc_arg arg;
  grpc_channel_args args;

  clear_error(err);
  if (out == NULL) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "lk_client_open needs somewhere to store the client (out)");
  }
  *out = NULL;
  if (opts == NULL) {
    opts = &defaults;
  }
  code = check_address(address, err);
  if (code != LK_CLIENT_OK) {
    goto done;
  }
  code = check_opts(opts, err);
  if (code != LK_CLIENT_OK) {
    goto done;
  }
  if (lk_secret_init() != LK_OK) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "libsodium failed to initialize");
    goto done;
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "out of memory opening a client");
    goto done;
  }
  c->timeout_ms =
      opts->timeout_ms != 0 ? opts->timeout_ms : LK_CLIENT_DEFAULT_TIMEOUT_MS;
  c->max_response_bytes = opts->max_response_bytes != 0
                              ? opts->max_response_bytes
                              : LK_CLIENT_DEFAULT_MAX_RESPONSE_BYTES;
  if (opts->agent_token != NULL) {
    code = make_bearer(opts->agent_token, &c->bearer, err);
    if (code != LK_CLIENT_OK) {
      goto done;
    }
  }
  if (opts->tls_ca != NULL) {
    code = read_pem(opts->tls_ca, &pem, err);
    if (code != LK_CLIENT_OK) {
      goto done;
    }
  }
  grpc_init();
  grpc_started = 1;
  if (pem != NULL) {
    creds = grpc_ssl_credentials_create(pem, NULL, NULL, NULL);
  } else {
    creds = grpc_insecure_credentials_create();
  }
  if (creds == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "grpc could not create channel credentials");
    goto done;
  }
  memset(&arg, 0, sizeof(arg));
  arg.type = GRPC_ARG_INTEGER;
  arg.key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  arg.value.integer = (int)c->max_response_bytes;
  args.num_args = 1;
  args.args = &arg;
  c->channel = grpc_channel_create(address, creds, &args);
  if (c->channel == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "grpc could not create a channel to %s", address);
    goto done;
  }
  *out = c;
  c = NULL;
  grpc_started = 0;
done:
  if (creds != NULL) {
    grpc_channel_credentials_release(creds);
  }
  if (c != NULL) {
    if (c->channel != NULL) {
      grpc_channel_destroy(c->channel);
    }
    lk_secret_free(c->bearer);
    free(c);
  }
  if (grpc_started) {
    grpc_shutdown();
  }
  free(pem);
  return code;
}

void lk_client_close(lk_client *c) {
  if (c == NULL) {
    return;
  }
  grpc_channel_destroy(c->channel);
  lk_secret_free(c->bearer);
  free(c);
  grpc_shutdown();
}

/* ---- one unary call ------------------------------------------------------ */

static void free_secret(void *s) {
  lk_secret_free(s);
}

/* Hands s to grpc as a slice of its bytes; grpc's last unref wipes it. */
static grpc_slice secret_slice(lk_secret *s) {
  return grpc_slice_new_with_user_data(lk_secret_mut(s), lk_secret_len(s),
                                       free_secret, s);
}

/* Packs req into a wiping slice wrapped in a byte buffer. */
static lk_client_code pack_request(const ProtobufCMessage *req,
                                   grpc_byte_buffer **out,
                                   lk_client_error *err) {
  size_t n = protobuf_c_message_get_packed_size(req);
  lk_secret *s = lk_secret_new(n);
  grpc_slice slice;

  if (s == NULL) {
    return fail(err, LK_CLIENT_INTERNAL, -1,
                "out of memory packing the request");
  }
  if (protobuf_c_message_pack(req, lk_secret_mut(s)) != n) {
    lk_secret_free(s);
    return fail(err, LK_CLIENT_INTERNAL, -1,
                "protobuf-c packed a short request");
  }
  slice = secret_slice(s);
  *out = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return LK_CLIENT_OK;
}

/* Calls method with req and stores the answer's bytes in *resp (the
 * caller unrefs it); fails with the server's status, or
 * LK_CLIENT_RESOURCE_EXHAUSTED for an answer over the client's cap. */
static lk_client_code unary(lk_client *c, const char *method,
                            const ProtobufCMessage *req, grpc_slice *resp,
                            lk_client_error *err) {
  lk_client_code code = LK_CLIENT_OK;
  grpc_completion_queue *cq = NULL;
  grpc_call *call = NULL;
  grpc_byte_buffer *send_bb = NULL;
  grpc_byte_buffer *recv_bb = NULL;
  grpc_byte_buffer_reader reader;
  grpc_metadata md;
  int have_md = 0;
  grpc_metadata_array initial_md;
  grpc_metadata_array trailing_md;
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  const char *error_string = NULL;
  grpc_op ops[6];
  grpc_event ev;
  gpr_timespec deadline;
  size_t len;
  int tag = 0;

  *resp = grpc_empty_slice();
  grpc_metadata_array_init(&initial_md);
  grpc_metadata_array_init(&trailing_md);
  memset(&md, 0, sizeof(md));
  if (c->bearer != NULL) {
    lk_secret *copy =
        lk_secret_from(lk_secret_data(c->bearer), lk_secret_len(c->bearer));
    if (copy == NULL) {
      code = fail(err, LK_CLIENT_INTERNAL, -1,
                  "out of memory for the agent token");
      goto done;
    }
    md.key = grpc_slice_from_static_string("authorization");
    md.value = secret_slice(copy);
    have_md = 1;
  }
  code = pack_request(req, &send_bb, err);
  if (code != LK_CLIENT_OK) {
    goto done;
  }
  cq = grpc_completion_queue_create_for_pluck(NULL);
  if (cq == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "grpc could not create a completion queue");
    goto done;
  }
  deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                          gpr_time_from_millis(c->timeout_ms, GPR_TIMESPAN));
  call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                  grpc_slice_from_static_string(method), NULL,
                                  deadline, NULL);
  if (call == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "grpc could not create a call to %s", method);
    goto done;
  }
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = have_md ? 1 : 0;
  ops[0].data.send_initial_metadata.metadata = have_md ? &md : NULL;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv_bb;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  ops[5].data.recv_status_on_client.error_string = &error_string;
  if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "grpc refused the batch for %s",
                method);
    goto done;
  }
  ev = grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME),
                                   NULL);
  if (ev.type != GRPC_OP_COMPLETE) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "grpc ended the call to %s without a result", method);
    goto done;
  }
  if (status != GRPC_STATUS_OK) {
    code = fail_from_status(status, details, method, err);
    goto done;
  }
  if (!ev.success || recv_bb == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "the server answered %s with no message", method);
    goto done;
  }
  len = grpc_byte_buffer_length(recv_bb);
  if (len > c->max_response_bytes) {
    code = fail(err, LK_CLIENT_RESOURCE_EXHAUSTED, -1,
                "the answer to %s is %zu bytes, over the client's limit of %zu "
                "(lk_client_opts.max_response_bytes)",
                method, len, c->max_response_bytes);
    goto done;
  }
  if (!grpc_byte_buffer_reader_init(&reader, recv_bb)) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "cannot read the answer to %s",
                method);
    goto done;
  }
  *resp = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
done:
  if (call != NULL) {
    grpc_call_unref(call);
  }
  if (cq != NULL) {
    /* The batch's one event was plucked (or never queued), so the queue is
     * empty and shuts down at once. */
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
  }
  if (have_md) {
    grpc_slice_unref(md.value);
  }
  if (send_bb != NULL) {
    grpc_byte_buffer_destroy(send_bb);
  }
  if (recv_bb != NULL) {
    grpc_byte_buffer_destroy(recv_bb);
  }
  grpc_metadata_array_destroy(&initial_md);
  grpc_metadata_array_destroy(&trailing_md);
  grpc_slice_unref(details);
  gpr_free((void *)error_string);
  return code;
}

/* ---- ListTools ------------------------------------------------------------
 */

/* Refuses a budget, tool or operation name that is missing or too long to
 * be an id (the sidecar judges the rest and names what is wrong). */
static lk_client_code check_name(const char *what, const char *v,
                                 lk_client_error *err) {
  if (v == NULL || v[0] == '\0') {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1, "%s is empty", what);
  }
  if (strnlen(v, LK_CLIENT_MAX_ID_BYTES + 1) > LK_CLIENT_MAX_ID_BYTES) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "%s is longer than %d bytes", what, LK_CLIENT_MAX_ID_BYTES);
  }
  return LK_CLIENT_OK;
}

void lk_client_tools_free(lk_client_tools *tools) {
  tools_impl *t = (tools_impl *)tools;
  if (t == NULL) {
    return;
  }
  latchkey__v1__list_tools_response__free_unpacked(t->msg, NULL);
  free(t->tools);
  free(t->operations);
  free(t);
}

const ProtobufCMessage *lk_client_tools_message(const lk_client_tools *t) {
  return t != NULL ? &((const tools_impl *)t)->msg->base : NULL;
}

lk_client_code lk_client_tools_parse(const uint8_t *data, size_t len,
                                     size_t cap, lk_client_tools **out,
                                     lk_client_error *err) {
  lk_client_code code = LK_CLIENT_OK;
  tools_impl *t = NULL;
  size_t n_ops = 0;
  size_t i;
  size_t k;
  size_t at = 0;

  *out = NULL;
  if (len > cap) {
    code = fail(err, LK_CLIENT_RESOURCE_EXHAUSTED, -1,
                "the tool list is %zu bytes, over the client's limit of %zu "
                "(lk_client_opts.max_response_bytes)",
                len, cap);
    goto done;
  }
  t = calloc(1, sizeof(*t));
  if (t == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "out of memory for the tool list");
    goto done;
  }
  t->msg = latchkey__v1__list_tools_response__unpack(NULL, len, data);
  if (t->msg == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "the answer is not a valid latchkey.v1.ListToolsResponse; is "
                "the address a Latchkey sidecar's ToolCalls endpoint?");
    goto done;
  }
  for (i = 0; i < t->msg->n_tools; i++) {
    n_ops += t->msg->tools[i]->n_operations;
  }
  t->tools = calloc(t->msg->n_tools + 1, sizeof(*t->tools));
  t->operations = calloc(n_ops + 1, sizeof(*t->operations));
  if (t->tools == NULL || t->operations == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "out of memory for the tool list");
    goto done;
  }
  for (i = 0; i < t->msg->n_tools; i++) {
    const Latchkey__V1__ToolInfo *ti = t->msg->tools[i];
    lk_client_tool *tool = &t->tools[i];
    tool->id = ti->tool_id;
    tool->description = ti->description;
    tool->credential_type = ti->credential_type;
    tool->credential_ready = ti->credential_ready ? 1 : 0;
    tool->operations = &t->operations[at];
    tool->n_operations = ti->n_operations;
    for (k = 0; k < ti->n_operations; k++, at++) {
      const Latchkey__V1__OperationInfo *oi = ti->operations[k];
      lk_client_operation *op = &t->operations[at];
      op->name = oi->name;
      op->description = oi->description;
      op->method = oi->method;
      op->path = oi->path;
      op->parameters_schema = oi->parameters_json_schema;
    }
  }
  t->pub.tools = t->tools;
  t->pub.n_tools = t->msg->n_tools;
  *out = &t->pub;
  t = NULL;
done:
  lk_client_tools_free(t != NULL ? &t->pub : NULL);
  return code;
}

lk_client_code lk_client_list_tools(lk_client *c, const char *budget,
                                    lk_client_tools **out,
                                    lk_client_error *err) {
  Latchkey__V1__ListToolsRequest req = LATCHKEY__V1__LIST_TOOLS_REQUEST__INIT;
  lk_client_code code;
  grpc_slice resp;

  clear_error(err);
  if (out == NULL) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "lk_client_list_tools needs somewhere to store the tools "
                "(out)");
  }
  *out = NULL;
  if (c == NULL) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1, "the client is NULL");
  }
  code = check_name("budget", budget, err);
  if (code != LK_CLIENT_OK) {
    return code;
  }
  req.budget_id = (char *)budget;
  code = unary(c, METHOD_LIST_TOOLS, &req.base, &resp, err);
  if (code == LK_CLIENT_OK) {
    code = lk_client_tools_parse(GRPC_SLICE_START_PTR(resp),
                                 GRPC_SLICE_LENGTH(resp), c->max_response_bytes,
                                 out, err);
  }
  grpc_slice_unref(resp);
  return code;
}

/* ---- Call -----------------------------------------------------------------
 */

/* Refuses arguments_json too large for the sidecar to accept; the sidecar
 * judges the rest (one JSON object of the operation's parameters) and
 * names what is wrong. */
static lk_client_code check_arguments(const char *json, lk_client_error *err) {
  if (strnlen(json, LK_CLIENT_MAX_ARGUMENTS_BYTES + 1) >
      LK_CLIENT_MAX_ARGUMENTS_BYTES) {
    return fail(err, LK_CLIENT_RESOURCE_EXHAUSTED, -1,
                "arguments_json is longer than %zu bytes, the sidecar's "
                "request limit",
                LK_CLIENT_MAX_ARGUMENTS_BYTES);
  }
  return LK_CLIENT_OK;
}

void lk_client_result_free(lk_client_result *result) {
  result_impl *r = (result_impl *)result;
  if (r == NULL) {
    return;
  }
  latchkey__v1__tool_call_response__free_unpacked(r->msg, NULL);
  free(r->headers);
  free(r->fields);
  free(r);
}

const ProtobufCMessage *lk_client_result_message(const lk_client_result *r) {
  return r != NULL ? &((const result_impl *)r)->msg->base : NULL;
}

/* Points r's public view at the vendor's answer. */
static lk_client_code view_result(result_impl *r,
                                  const Latchkey__V1__ToolResult *res,
                                  lk_client_error *err) {
  size_t i;

  r->pub.http_status = res->http_status;
  r->pub.content_type = res->content_type;
  r->pub.body = res->body.data;
  r->pub.body_len = res->body.len;
  r->pub.redacted = res->redacted ? 1 : 0;
  if (res->n_headers > 0) {
    r->headers = calloc(res->n_headers, sizeof(*r->headers));
    if (r->headers == NULL) {
      return fail(err, LK_CLIENT_INTERNAL, -1,
                  "out of memory for the vendor's headers");
    }
  }
  for (i = 0; i < res->n_headers; i++) {
    r->headers[i].name = res->headers[i]->key;
    r->headers[i].value = res->headers[i]->value;
  }
  r->pub.headers = r->headers;
  r->pub.n_headers = res->n_headers;
  return LK_CLIENT_OK;
}

/* Points r's public view at the missing credential and returns
 * LK_CLIENT_MISSING_CREDENTIAL with the setup link (or hint) in err. */
static lk_client_code view_missing(result_impl *r,
                                   const Latchkey__V1__MissingCredential *m,
                                   lk_client_error *err) {
  lk_client_missing_credential *mc = &r->missing;
  size_t i;

  if (m->n_required_fields > 0) {
    r->fields = calloc(m->n_required_fields, sizeof(*r->fields));
    if (r->fields == NULL) {
      return fail(err, LK_CLIENT_INTERNAL, -1,
                  "out of memory for the missing credential");
    }
  }
  for (i = 0; i < m->n_required_fields; i++) {
    const Latchkey__V1__CredentialField *f = m->required_fields[i];
    r->fields[i].name = f->name;
    r->fields[i].description = f->description;
    r->fields[i].pattern = f->pattern;
    r->fields[i].secret = f->secret ? 1 : 0;
    r->fields[i].max_len = f->max_len;
  }
  mc->budget = m->budget_id;
  mc->tool = m->tool_id;
  mc->credential_type = m->credential_type;
  mc->required_fields = r->fields;
  mc->n_required_fields = m->n_required_fields;
  mc->setup_url = m->setup_url;
  mc->hint = m->hint;
  r->pub.content_type = "";
  r->pub.missing_credential = mc;
  return fail(err, LK_CLIENT_MISSING_CREDENTIAL, GRPC_STATUS_OK,
              "budget %.128s has no credential bound for tool %.128s "
              "(credential type %.128s)%s%.200s",
              mc->budget, mc->tool, mc->credential_type,
              mc->setup_url[0] != '\0' ? "; set it up at " : "", mc->setup_url);
}

lk_client_code lk_client_result_parse(const uint8_t *data, size_t len,
                                      size_t cap, const char *request_id,
                                      lk_client_result **out,
                                      lk_client_error *err) {
  lk_client_code code = LK_CLIENT_OK;
  result_impl *r = NULL;
  const Latchkey__V1__ToolCallResponse *m;

  *out = NULL;
  if (len > cap) {
    code = fail(err, LK_CLIENT_RESOURCE_EXHAUSTED, -1,
                "the call's answer is %zu bytes, over the client's limit of "
                "%zu (lk_client_opts.max_response_bytes)",
                len, cap);
    goto done;
  }
  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1, "out of memory for the result");
    goto done;
  }
  r->msg = latchkey__v1__tool_call_response__unpack(NULL, len, data);
  if (r->msg == NULL) {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "the answer is not a valid latchkey.v1.ToolCallResponse; is "
                "the address a Latchkey sidecar's ToolCalls endpoint?");
    goto done;
  }
  snprintf(r->pub.request_id, sizeof(r->pub.request_id), "%s",
           request_id != NULL ? request_id : "");
  m = r->msg;
  if (m->outcome_case == LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_RESULT &&
      m->result != NULL) {
    code = view_result(r, m->result, err);
  } else if (m->outcome_case ==
                 LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_MISSING_CREDENTIAL &&
             m->missing_credential != NULL) {
    code = view_missing(r, m->missing_credential, err);
  } else {
    code = fail(err, LK_CLIENT_INTERNAL, -1,
                "the sidecar answered with neither a result nor a missing "
                "credential");
  }
  if (code == LK_CLIENT_OK || code == LK_CLIENT_MISSING_CREDENTIAL) {
    *out = &r->pub;
    r = NULL;
  }
done:
  lk_client_result_free(r != NULL ? &r->pub : NULL);
  return code;
}

lk_client_code lk_client_call(lk_client *c, const char *budget,
                              const char *tool, const char *operation,
                              const char *arguments_json,
                              lk_client_result **out, lk_client_error *err) {
  Latchkey__V1__ToolCallRequest req = LATCHKEY__V1__TOOL_CALL_REQUEST__INIT;
  unsigned char rid[REQUEST_ID_BYTES];
  char request_id[2 * REQUEST_ID_BYTES + 1];
  lk_client_code code;
  grpc_slice resp;

  clear_error(err);
  if (out == NULL) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1,
                "lk_client_call needs somewhere to store the result (out)");
  }
  *out = NULL;
  if (c == NULL) {
    return fail(err, LK_CLIENT_INVALID_ARGUMENT, -1, "the client is NULL");
  }
  if ((code = check_name("budget", budget, err)) != LK_CLIENT_OK ||
      (code = check_name("tool", tool, err)) != LK_CLIENT_OK ||
      (code = check_name("operation", operation, err)) != LK_CLIENT_OK) {
    return code;
  }
  if (arguments_json == NULL) {
    arguments_json = "{}";
  }
  code = check_arguments(arguments_json, err);
  if (code != LK_CLIENT_OK) {
    return code;
  }
  randombytes_buf(rid, sizeof(rid));
  sodium_bin2hex(request_id, sizeof(request_id), rid, sizeof(rid));
  req.budget_id = (char *)budget;
  req.tool_id = (char *)tool;
  req.operation = (char *)operation;
  req.arguments_json = (char *)arguments_json;
  req.request_id = request_id;
  code = unary(c, METHOD_CALL, &req.base, &resp, err);
  if (code == LK_CLIENT_OK) {
    code = lk_client_result_parse(GRPC_SLICE_START_PTR(resp),
                                  GRPC_SLICE_LENGTH(resp),
                                  c->max_response_bytes, request_id, out, err);
  }
  grpc_slice_unref(resp);
  return code;
}
