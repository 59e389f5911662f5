/*
 * rpc_stream_test.c - proves lib/rpc_server's streaming calls with real gRPC
 * over a real Unix socket, driven by grpc core's C client: client messages
 * reach on_message in order and replies come back in order; a handler can
 * push messages from another thread; the client's half-close and its
 * cancellation both reach on_end exactly once; and lk_rpc_stream_finish's
 * status and details reach the client. Every wait is bounded.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "lib/rpc_server.h"
#include "lib/status.h"

#define M_STREAM "/lk.test.T/Stream"
#define WAIT_S 30

/* What the handler saw (guarded by mu). */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int opened;
  int messages;
  int ends;
  int end_cancelled;
  int push_on_open;      /* messages to push from a thread on open */
  const char *fail_with; /* finish with INVALID_ARGUMENT on first message */
  lk_rpc_stream *stream;
  int finished;
} hstate;

static void finish_once(hstate *h, lk_rpc_stream *s, const lk_err *err) {
  pthread_mutex_lock(&h->mu);
  int first = !h->finished;
  h->finished = 1;
  pthread_mutex_unlock(&h->mu);
  if (first)
    lk_rpc_stream_finish(s, err);
}

static void *pusher(void *arg) {
  hstate *h = arg;
  for (int i = 0; i < h->push_on_open; i++) {
    char msg[32];
    int n = snprintf(msg, sizeof(msg), "push-%d", i);
    lk_err err;
    assert_int_equal(lk_rpc_stream_send(h->stream, (const unsigned char *)msg,
                                        (size_t)n, &err),
                     LK_OK);
  }
  return NULL;
}

static void on_open(void *ctx, lk_rpc_stream *s) {
  hstate *h = ctx;
  pthread_mutex_lock(&h->mu);
  h->opened++;
  h->stream = s;
  pthread_mutex_unlock(&h->mu);
  if (h->push_on_open > 0) {
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pusher, h), 0);
    pthread_join(t, NULL);
  }
}

static void on_message(void *ctx, lk_rpc_stream *s, const unsigned char *msg,
                       size_t len) {
  hstate *h = ctx;
  pthread_mutex_lock(&h->mu);
  h->messages++;
  pthread_mutex_unlock(&h->mu);
  lk_err err;
  if (h->fail_with != NULL) {
    lk_fail(&err, LK_INVALID_ARGUMENT, "%s", h->fail_with);
    finish_once(h, s, &err);
    return;
  }
  char echo[256];
  int n = snprintf(echo, sizeof(echo), "echo:%.*s", (int)len, msg);
  assert_int_equal(
      lk_rpc_stream_send(s, (const unsigned char *)echo, (size_t)n, &err),
      LK_OK);
}

static void on_end(void *ctx, lk_rpc_stream *s, int cancelled) {
  hstate *h = ctx;
  pthread_mutex_lock(&h->mu);
  h->ends++;
  h->end_cancelled = cancelled;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
  finish_once(h, s, NULL);
}

static const lk_rpc_stream_handler k_handler = {on_open, on_message, on_end};

typedef struct {
  hstate h;
  char dir[64];
  char addr[96];
  lk_rpc_server *srv;
  grpc_channel *ch;
  grpc_completion_queue *cq;
  grpc_call *call;
} fx;

static int fx_counter;

static int setup(void **state) {
  grpc_init();
  fx *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  pthread_mutex_init(&f->h.mu, NULL);
  pthread_cond_init(&f->h.cv, NULL);
  snprintf(f->dir, sizeof(f->dir), "/tmp/lkstr-%d-%d", (int)getpid(),
           fx_counter++);
  snprintf(f->addr, sizeof(f->addr), "unix:%s/s", f->dir);
  *state = f;
  return 0;
}

static void start(fx *f) {
  lk_err err;
  assert_int_equal(lk_rpc_server_new(2, &f->srv, &err), LK_OK);
  assert_int_equal(lk_rpc_server_listen_stream(f->srv, f->addr, M_STREAM,
                                               &k_handler, &f->h, &err),
                   LK_OK);
  assert_int_equal(lk_rpc_server_start(f->srv, &err), LK_OK);
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  f->ch = grpc_channel_create(f->addr, creds, NULL);
  grpc_channel_credentials_release(creds);
  f->cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_slice method = grpc_slice_from_static_string(M_STREAM);
  gpr_timespec deadline =
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                   gpr_time_from_seconds(WAIT_S, GPR_TIMESPAN));
  f->call = grpc_channel_create_call(f->ch, NULL, GRPC_PROPAGATE_DEFAULTS,
                                     f->cq, method, NULL, deadline, NULL);
  assert_non_null(f->call);
}

static int teardown(void **state) {
  fx *f = *state;
  if (f->call != NULL)
    grpc_call_unref(f->call);
  if (f->ch != NULL)
    grpc_channel_destroy(f->ch);
  lk_rpc_server_destroy(f->srv);
  if (f->cq != NULL) {
    grpc_completion_queue_shutdown(f->cq);
    for (;;) {
      grpc_event ev = grpc_completion_queue_pluck(
          f->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
      if (ev.type == GRPC_QUEUE_SHUTDOWN)
        break;
    }
    grpc_completion_queue_destroy(f->cq);
  }
  char path[128];
  snprintf(path, sizeof(path), "%s/s", f->dir);
  unlink(path);
  rmdir(f->dir);
  pthread_mutex_destroy(&f->h.mu);
  pthread_cond_destroy(&f->h.cv);
  free(f);
  grpc_shutdown();
  return 0;
}

/* Runs one client batch and waits for it. */
static int batch(fx *f, grpc_op *ops, size_t n) {
  static int tag_base;
  void *tag = &tag_base;
  assert_int_equal(grpc_call_start_batch(f->call, ops, n, tag, NULL),
                   GRPC_CALL_OK);
  grpc_event ev = grpc_completion_queue_pluck(
      f->cq, tag,
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                   gpr_time_from_seconds(WAIT_S, GPR_TIMESPAN)),
      NULL);
  assert_int_equal(ev.type, GRPC_OP_COMPLETE);
  return ev.success;
}

static void client_open(fx *f) {
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_INITIAL_METADATA;
  assert_true(batch(f, &op, 1));
}

static void client_send(fx *f, const char *msg) {
  grpc_slice s = grpc_slice_from_copied_string(msg);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  assert_true(batch(f, &op, 1));
  grpc_byte_buffer_destroy(bb);
}

/* Receives one message into out (NUL-terminated); returns 0 at the end. */
static int client_recv(fx *f, char *out, size_t cap, int first) {
  grpc_metadata_array md;
  grpc_metadata_array_init(&md);
  grpc_byte_buffer *bb = NULL;
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  size_t n = 0;
  if (first) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n].data.recv_initial_metadata.recv_initial_metadata = &md;
    n++;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n].data.recv_message.recv_message = &bb;
  n++;
  batch(f, ops, n);
  grpc_metadata_array_destroy(&md);
  if (bb == NULL)
    return 0;
  grpc_byte_buffer_reader r;
  assert_true(grpc_byte_buffer_reader_init(&r, bb));
  grpc_slice all = grpc_byte_buffer_reader_readall(&r);
  size_t len = GRPC_SLICE_LENGTH(all);
  assert_true(len < cap);
  memcpy(out, GRPC_SLICE_START_PTR(all), len);
  out[len] = '\0';
  grpc_slice_unref(all);
  grpc_byte_buffer_reader_destroy(&r);
  grpc_byte_buffer_destroy(bb);
  return 1;
}

/* Half-closes and returns the final status; details copied to out. */
static grpc_status_code client_close(fx *f, char *out, size_t cap) {
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_metadata_array trailing;
  grpc_metadata_array_init(&trailing);
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[1].data.recv_status_on_client.status = &code;
  ops[1].data.recv_status_on_client.status_details = &details;
  ops[1].data.recv_status_on_client.trailing_metadata = &trailing;
  batch(f, ops, 2);
  snprintf(out, cap, "%.*s", (int)GRPC_SLICE_LENGTH(details),
           (const char *)GRPC_SLICE_START_PTR(details));
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&trailing);
  return code;
}

static void wait_ends(hstate *h, int n) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += WAIT_S;
  pthread_mutex_lock(&h->mu);
  while (h->ends < n) {
    if (pthread_cond_timedwait(&h->cv, &h->mu, &until) != 0)
      break;
  }
  int ends = h->ends;
  pthread_mutex_unlock(&h->mu);
  assert_int_equal(ends, n);
}

static void test_messages_are_echoed_in_order_then_ok(void **state) {
  fx *f = *state;
  start(f);
  client_open(f);
  char got[256];
  for (int i = 0; i < 5; i++) {
    char msg[16];
    snprintf(msg, sizeof(msg), "m%d", i);
    client_send(f, msg);
    assert_true(client_recv(f, got, sizeof(got), i == 0));
    char want[32];
    snprintf(want, sizeof(want), "echo:m%d", i);
    assert_string_equal(got, want);
  }
  char details[128];
  assert_int_equal(client_close(f, details, sizeof(details)), GRPC_STATUS_OK);
  wait_ends(&f->h, 1);
  assert_int_equal(f->h.opened, 1);
  assert_int_equal(f->h.messages, 5);
}

static void test_server_pushes_from_another_thread(void **state) {
  fx *f = *state;
  f->h.push_on_open = 50;
  start(f);
  client_open(f);
  char got[256];
  for (int i = 0; i < 50; i++) {
    assert_true(client_recv(f, got, sizeof(got), i == 0));
    char want[32];
    snprintf(want, sizeof(want), "push-%d", i);
    assert_string_equal(got, want);
  }
  char details[128];
  assert_int_equal(client_close(f, details, sizeof(details)), GRPC_STATUS_OK);
  wait_ends(&f->h, 1);
}

static void test_client_cancel_reaches_on_end_once(void **state) {
  fx *f = *state;
  start(f);
  client_open(f);
  client_send(f, "x");
  char got[256];
  assert_true(client_recv(f, got, sizeof(got), 1));
  grpc_call_cancel(f->call, NULL);
  wait_ends(&f->h, 1);
  /* Give a late duplicate a chance to show up: there must be none. */
  usleep(200 * 1000);
  pthread_mutex_lock(&f->h.mu);
  assert_int_equal(f->h.ends, 1);
  pthread_mutex_unlock(&f->h.mu);
}

static void test_finish_with_error_reaches_client(void **state) {
  fx *f = *state;
  f->h.fail_with = "bad hello: send agent_id";
  start(f);
  client_open(f);
  client_send(f, "hello");
  char got[256];
  assert_false(client_recv(f, got, sizeof(got), 1));
  char details[128];
  assert_int_equal(client_close(f, details, sizeof(details)),
                   GRPC_STATUS_INVALID_ARGUMENT);
  assert_string_equal(details, "bad hello: send agent_id");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_messages_are_echoed_in_order_then_ok,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_server_pushes_from_another_thread,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_cancel_reaches_on_end_once,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_finish_with_error_reaches_client,
                                      setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
