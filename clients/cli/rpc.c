/*
 * rpc.c - a unary call as one grpc core batch on a pluck completion queue.
 *
 * Why one batch: SEND_INITIAL_METADATA, SEND_MESSAGE, SEND_CLOSE_FROM_CLIENT,
 * RECV_INITIAL_METADATA, RECV_MESSAGE and RECV_STATUS_ON_CLIENT together are
 * the whole unary exchange, so the caller plucks exactly one event and every
 * op's storage (metadata arrays, byte buffers, the status slice) lives on
 * this function's stack until that event arrives, then is freed at the one
 * cleanup label. The call carries its own deadline, so the pluck itself
 * waits without one and cannot strand the call.
 *
 * Secrets: the request bytes and the "Bearer <token>" value are built in
 * lk_secret memory (lib/secret.h: sodium_malloc, wiped on free) and handed
 * to grpc as slices whose destroy callback is lk_secret_free, so they are
 * wiped whenever grpc drops its last reference; grpc's own transport
 * copies are outside the CLI's reach and die with the process.
 *
 * A call that fails UNAVAILABLE because of TLS (a certificate that does
 * not verify, a name it does not list, a server that does not speak TLS)
 * gets its reason in plain words from lib/tls.c instead of grpc's
 * transport string; the channel keeps its address and CA bundle for that.
 *
 * grpc_init/grpc_shutdown are paired with lk_rpc_open/lk_rpc_close (grpc
 * counts them), so a process that opens one channel initializes the
 * library exactly once.
 */
#include "clients/cli/rpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "lib/secret.h"
#include "lib/tls.h"

struct lk_rpc_channel {
  grpc_channel *channel;
  grpc_completion_queue *cq;
  char *address;
  char *ca_pem;  /* the --tls-ca bundle; NULL for a plaintext channel */
  char *ca_path; /* its file name, for messages */
};

/* gRPC's code names, indexed by code, for codes with no lk_status twin. */
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

lk_status lk_rpc_status_from_grpc(int grpc_code) {
  switch (grpc_code) {
    case GRPC_STATUS_OK:
      return LK_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE:
      return LK_INVALID_ARGUMENT;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
      return LK_DEADLINE_EXCEEDED;
    case GRPC_STATUS_NOT_FOUND:
      return LK_NOT_FOUND;
    case GRPC_STATUS_ALREADY_EXISTS:
      return LK_ALREADY_EXISTS;
    case GRPC_STATUS_PERMISSION_DENIED:
      return LK_PERMISSION_DENIED;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
      return LK_RESOURCE_EXHAUSTED;
    case GRPC_STATUS_FAILED_PRECONDITION:
    case GRPC_STATUS_ABORTED:
      return LK_FAILED_PRECONDITION;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_CANCELLED:
      return LK_UNAVAILABLE;
    case GRPC_STATUS_UNAUTHENTICATED:
      return LK_UNAUTHENTICATED;
    default:
      return LK_INTERNAL;
  }
}

/* Drops grpc core's own log lines: the CLI reports the call's status and
 * details itself, once, in its "latchkeyctl: CODE: details" form. */
static void quiet_grpc_log(gpr_log_func_args *args) {
  (void)args;
}

/* The longest unix socket path the kernel accepts (sun_path less its NUL). */
#define UNIX_PATH_MAX_LEN 107

/* Refuses a unix: address the kernel could never connect to, which grpc
 * would otherwise report as an opaque channel-creation failure. */
static lk_status check_address(const char *address, lk_err *err) {
  const char *path = NULL;

  if (address == NULL || address[0] == '\0') {
    return lk_fail(err, LK_INVALID_ARGUMENT, "empty server address");
  }
  if (strncmp(address, "unix:", 5) == 0) {
    path = address + 5;
  }
  if (path != NULL && strlen(path) > UNIX_PATH_MAX_LEN) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "unix socket path %.60s... is longer than %d bytes", path,
                   UNIX_PATH_MAX_LEN);
  }
  if (path != NULL && path[0] == '\0') {
    return lk_fail(err, LK_INVALID_ARGUMENT, "empty unix socket path");
  }
  return LK_OK;
}

/* Reads the whole PEM file at path into a NUL-terminated malloc'd string. */
static lk_status read_pem(const char *path, char **out, lk_err *err) {
  lk_status st = LK_OK;
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t n = 0;

  *out = NULL;
  if (f == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot open --tls-ca %s: %s", path,
                 strerror(errno));
    goto done;
  }
  buf = malloc(LK_RPC_MAX_CA_BYTES + 1);
  if (buf == NULL) {
    st = lk_fail(err, LK_INTERNAL, "out of memory reading --tls-ca");
    goto done;
  }
  n = fread(buf, 1, LK_RPC_MAX_CA_BYTES + 1, f);
  if (ferror(f)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot read --tls-ca %s", path);
    goto done;
  }
  if (n > LK_RPC_MAX_CA_BYTES) {
    st =
        lk_fail(err, LK_INVALID_ARGUMENT, "--tls-ca %s is larger than %d bytes",
                path, LK_RPC_MAX_CA_BYTES);
    goto done;
  }
  if (n == 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "--tls-ca %s is empty", path);
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
  return st;
}

lk_status lk_rpc_open(const char *address, const char *tls_ca_path,
                      lk_rpc_channel **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_rpc_channel *ch = NULL;
  grpc_channel_credentials *creds = NULL;
  char *pem = NULL;
  int grpc_started = 0;
  grpc_arg arg;
  grpc_channel_args args;

  *out = NULL;
  st = check_address(address, err);
  if (st != LK_OK) {
    goto done;
  }
  if (lk_secret_init() != LK_OK) {
    st = lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
    goto done;
  }
  if (tls_ca_path != NULL) {
    st = read_pem(tls_ca_path, &pem, err);
    if (st != LK_OK) {
      goto done;
    }
  }
  ch = calloc(1, sizeof(*ch));
  if (ch == NULL) {
    st = lk_fail(err, LK_INTERNAL, "out of memory opening a channel");
    goto done;
  }
  ch->address = strdup(address);
  ch->ca_path = tls_ca_path != NULL ? strdup(tls_ca_path) : NULL;
  if (ch->address == NULL || (tls_ca_path != NULL && ch->ca_path == NULL)) {
    st = lk_fail(err, LK_INTERNAL, "out of memory opening a channel");
    goto done;
  }
  if (getenv("GRPC_VERBOSITY") == NULL) {
    gpr_set_log_function(quiet_grpc_log);
  }
  grpc_init();
  grpc_started = 1;
  if (pem != NULL) {
    creds = grpc_ssl_credentials_create(pem, NULL, NULL, NULL);
  } else {
    creds = grpc_insecure_credentials_create();
  }
  if (creds == NULL) {
    st = lk_fail(err, LK_INTERNAL, "grpc could not create channel credentials");
    goto done;
  }
  memset(&arg, 0, sizeof(arg));
  arg.type = GRPC_ARG_INTEGER;
  arg.key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  arg.value.integer = LK_RPC_MAX_RESPONSE_BYTES;
  args.num_args = 1;
  args.args = &arg;
  ch->channel = grpc_channel_create(address, creds, &args);
  ch->cq = grpc_completion_queue_create_for_pluck(NULL);
  if (ch->channel == NULL || ch->cq == NULL) {
    st = lk_fail(err, LK_INTERNAL, "grpc could not create a channel to %s",
                 address);
    goto done;
  }
  ch->ca_pem = pem;
  pem = NULL;
  *out = ch;
  ch = NULL;
  grpc_started = 0;
done:
  if (creds != NULL) {
    grpc_channel_credentials_release(creds);
  }
  if (ch != NULL) {
    if (ch->channel != NULL) {
      grpc_channel_destroy(ch->channel);
    }
    if (ch->cq != NULL) {
      grpc_completion_queue_shutdown(ch->cq);
      grpc_completion_queue_destroy(ch->cq);
    }
    free(ch->address);
    free(ch->ca_path);
    free(ch);
  }
  if (grpc_started) {
    grpc_shutdown();
  }
  free(pem);
  return st;
}

static void free_secret(void *s) {
  lk_secret_free(s);
}

/* Hands s to grpc as a slice of its bytes; grpc's last unref wipes it. */
static grpc_slice secret_slice(lk_secret *s) {
  return grpc_slice_new_with_user_data(lk_secret_mut(s), lk_secret_len(s),
                                       free_secret, s);
}

/* Builds "Bearer <token>" as a wiping slice, refusing bytes a header value
 * cannot carry. */
static lk_status bearer_slice(const char *token, grpc_slice *out, lk_err *err) {
  static const char prefix[] = "Bearer ";
  size_t tlen = strnlen(token, LK_RPC_MAX_TOKEN_BYTES + 1);
  lk_secret_buf *b = NULL;
  lk_secret *s = NULL;
  size_t i;

  if (tlen == 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "the bearer token is empty");
  }
  if (tlen > LK_RPC_MAX_TOKEN_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the bearer token is longer than %d bytes",
                   LK_RPC_MAX_TOKEN_BYTES);
  }
  for (i = 0; i < tlen; i++) {
    unsigned char c = (unsigned char)token[i];
    if (c < 0x21 || c > 0x7e) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "the bearer token holds a space or control character; "
                     "a token is one line of printable ASCII");
    }
  }
  b = lk_secret_buf_new(sizeof(prefix) - 1 + tlen);
  if (b == NULL || lk_secret_buf_append_str(b, prefix, err) != LK_OK ||
      lk_secret_buf_append(b, token, tlen, err) != LK_OK) {
    lk_secret_buf_free(b);
    return lk_fail(err, LK_INTERNAL, "out of memory for the bearer token");
  }
  s = lk_secret_buf_finish(b);
  if (s == NULL) {
    return lk_fail(err, LK_INTERNAL, "out of memory for the bearer token");
  }
  *out = secret_slice(s);
  return LK_OK;
}

/* Packs req into a wiping slice wrapped in a byte buffer. */
static lk_status pack_request(const ProtobufCMessage *req,
                              grpc_byte_buffer **out, lk_err *err) {
  size_t n = protobuf_c_message_get_packed_size(req);
  lk_secret *s = lk_secret_new(n);
  grpc_slice slice;

  if (s == NULL) {
    return lk_fail(err, LK_INTERNAL, "out of memory packing the request");
  }
  if (protobuf_c_message_pack(req, lk_secret_mut(s)) != n) {
    lk_secret_free(s);
    return lk_fail(err, LK_INTERNAL, "protobuf-c packed a short request");
  }
  slice = secret_slice(s);
  *out = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return LK_OK;
}

/* Unpacks the received byte buffer as a resp_desc message. */
static lk_status unpack_response(grpc_byte_buffer *bb,
                                 const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **resp, lk_err *err) {
  grpc_byte_buffer_reader reader;
  grpc_slice all;

  if (!grpc_byte_buffer_reader_init(&reader, bb)) {
    return lk_fail(err, LK_INTERNAL, "cannot read the response message");
  }
  all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  *resp = protobuf_c_message_unpack(resp_desc, NULL, GRPC_SLICE_LENGTH(all),
                                    GRPC_SLICE_START_PTR(all));
  grpc_slice_unref(all);
  if (*resp == NULL) {
    return lk_fail(err, LK_INTERNAL,
                   "the server's answer is not a valid %s message; is the "
                   "address a Latchkey endpoint of the right kind?",
                   resp_desc->name);
  }
  return LK_OK;
}

/* Turns a non-OK gRPC status and its details into err. */
static lk_status fail_from_status(grpc_status_code code, grpc_slice details,
                                  const char *method, lk_err *err) {
  lk_status st = lk_rpc_status_from_grpc((int)code);
  size_t dlen = GRPC_SLICE_LENGTH(details);
  const char *d = (const char *)GRPC_SLICE_START_PTR(details);
  const char *grpc_name =
      (unsigned)code < sizeof(grpc_code_names) / sizeof(grpc_code_names[0])
          ? grpc_code_names[code]
          : "UNKNOWN";
  int twin = strcmp(grpc_name, lk_status_name(st) + 3) == 0;

  if (dlen > sizeof(err->msg) - 64) {
    dlen = sizeof(err->msg) - 64;
  }
  if (dlen == 0) {
    d = lk_status_default_msg(st);
    dlen = strlen(d);
  }
  if (twin) {
    return lk_fail(err, st, "%.*s", (int)dlen, d);
  }
  return lk_fail(err, st, "(gRPC %s from %s) %.*s", grpc_name, method,
                 (int)dlen, d);
}

/* Replaces err's message with lib/tls.c's reason when the UNAVAILABLE
 * details show a TLS failure (or a plaintext connection a TLS server
 * closed). */
static void explain_tls_failure(const lk_rpc_channel *ch, grpc_slice details,
                                lk_err *err) {
  char why[sizeof(err->msg)];
  if (lk_tls_explain_failure(ch->address, ch->ca_pem, ch->ca_path,
                             (const char *)GRPC_SLICE_START_PTR(details),
                             GRPC_SLICE_LENGTH(details), why, sizeof(why))) {
    (void)lk_fail(err, LK_UNAVAILABLE, "%s", why);
  }
}

lk_status lk_rpc_unary(lk_rpc_channel *ch, const char *method,
                       const char *bearer_token, int64_t deadline_ms,
                       const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc,
                       ProtobufCMessage **resp, lk_err *err) {
  lk_status st = LK_OK;
  grpc_call *call = NULL;
  grpc_byte_buffer *send_bb = NULL;
  grpc_byte_buffer *recv_bb = NULL;
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
  int tag = 0;

  *resp = NULL;
  grpc_metadata_array_init(&initial_md);
  grpc_metadata_array_init(&trailing_md);
  memset(&md, 0, sizeof(md));
  if (deadline_ms <= 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "the deadline must be positive");
    goto done;
  }
  if (bearer_token != NULL) {
    st = bearer_slice(bearer_token, &md.value, err);
    if (st != LK_OK) {
      goto done;
    }
    md.key = grpc_slice_from_static_string("authorization");
    have_md = 1;
  }
  st = pack_request(req, &send_bb, err);
  if (st != LK_OK) {
    goto done;
  }
  deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                          gpr_time_from_millis(deadline_ms, GPR_TIMESPAN));
  call = grpc_channel_create_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                  ch->cq, grpc_slice_from_static_string(method),
                                  NULL, deadline, NULL);
  if (call == NULL) {
    st =
        lk_fail(err, LK_INTERNAL, "grpc could not create a call to %s", method);
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
    st = lk_fail(err, LK_INTERNAL, "grpc refused the batch for %s", method);
    goto done;
  }
  ev = grpc_completion_queue_pluck(ch->cq, &tag,
                                   gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  if (ev.type != GRPC_OP_COMPLETE) {
    st = lk_fail(err, LK_INTERNAL, "grpc ended the call to %s without a result",
                 method);
    goto done;
  }
  if (status != GRPC_STATUS_OK) {
    st = fail_from_status(status, details, method, err);
    if (status == GRPC_STATUS_UNAVAILABLE) {
      explain_tls_failure(ch, details, err);
    }
    goto done;
  }
  if (!ev.success || recv_bb == NULL) {
    st = lk_fail(err, LK_INTERNAL, "the server answered %s with no message",
                 method);
    goto done;
  }
  st = unpack_response(recv_bb, resp_desc, resp, err);
done:
  if (call != NULL) {
    grpc_call_unref(call);
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
  return st;
}

void lk_rpc_close(lk_rpc_channel *ch) {
  if (ch == NULL) {
    return;
  }
  grpc_channel_destroy(ch->channel);
  /* Every batch was plucked before lk_rpc_unary returned, so the queue is
   * empty and shutdown completes at once. */
  grpc_completion_queue_shutdown(ch->cq);
  grpc_completion_queue_destroy(ch->cq);
  free(ch->address);
  free(ch->ca_pem);
  free(ch->ca_path);
  free(ch);
  grpc_shutdown();
}
