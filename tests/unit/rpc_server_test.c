/*
 * rpc_server_test.c - proves lib/rpc_server's contract with real gRPC over
 * real sockets (a Unix socket under /tmp and a loopback TCP port), driven
 * by grpc core's C client: request bytes reach the handler and the reply
 * reaches the client; lk_err becomes the gRPC code and details; metadata,
 * deadlines and cancellation are visible to handlers; calls finished later
 * from other threads work and pending ones block no worker; shutdown lets
 * a call finish within the grace period and does not hang on one that was
 * cancelled; and the Unix socket rules (live socket refused, stale one
 * replaced, mode 0660, directory created).
 *
 * Every wait is bounded: a completion that never comes fails the test
 * instead of hanging it. Time bounds are functional (seconds), never tight.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "lib/clock.h"
#include "lib/rpc_server.h"
#include "lib/status.h"

#define M_ECHO "/lk.test.T/Echo"
#define M_FAIL "/lk.test.T/Fail"
#define M_META "/lk.test.T/Meta"
#define M_DEADLINE "/lk.test.T/Deadline"
#define M_DEFER "/lk.test.T/Defer"

/* How long any single wait may take before the test fails. */
#define WAIT_MS 30000

#define MAX_PENDING 32

static const char *const k_methods[] = {M_ECHO, M_FAIL, M_META, M_DEADLINE,
                                        M_DEFER};
#define N_METHODS (sizeof(k_methods) / sizeof(k_methods[0]))

/* What handlers share with the test thread (guarded by mu). */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  lk_rpc_call *pending[MAX_PENDING]; /* deferred calls not yet finished */
  size_t n_pending;
  long handled;
  int64_t seen_deadline_ms;
  int64_t seen_now_ms;
} hctx;

typedef struct {
  hctx h;
  char dir[64];   /* socket directory under /tmp */
  char uaddr[96]; /* "unix:<dir>/s" */
  char taddr[64]; /* "127.0.0.1:<port>" */
  lk_rpc_server *srv;
  grpc_channel *uch;
  grpc_channel *tch;
} fx;

static int fx_counter;

/* ---- handlers -------------------------------------------------------- */

static void handler(void *ctx, lk_rpc_call *call) {
  hctx *h = ctx;
  const char *m = lk_rpc_call_method(call);
  pthread_mutex_lock(&h->mu);
  h->handled++;
  pthread_mutex_unlock(&h->mu);
  if (strcmp(m, M_ECHO) == 0) {
    size_t len;
    const unsigned char *req = lk_rpc_call_request(call, &len);
    lk_rpc_call_finish(call, req, len);
  } else if (strcmp(m, M_FAIL) == 0) {
    lk_err err;
    lk_fail(&err, LK_NOT_FOUND, "x");
    lk_rpc_call_fail(call, &err);
  } else if (strcmp(m, M_META) == 0) {
    size_t len = 99;
    const char *v = lk_rpc_call_metadata(call, "x-test", &len);
    if (v == NULL) {
      /* Absent keys must say so with a zero length. */
      const char *none = len == 0 ? "<none>" : "<bad-len>";
      lk_rpc_call_finish(call, (const unsigned char *)none, strlen(none));
    } else {
      lk_rpc_call_finish(call, (const unsigned char *)v, len);
    }
  } else if (strcmp(m, M_DEADLINE) == 0) {
    pthread_mutex_lock(&h->mu);
    h->seen_deadline_ms = lk_rpc_call_deadline_ms(call);
    h->seen_now_ms = lk_now_ms();
    pthread_mutex_unlock(&h->mu);
    lk_rpc_call_finish(call, NULL, 0);
  } else if (strcmp(m, M_DEFER) == 0) {
    pthread_mutex_lock(&h->mu);
    if (h->n_pending < MAX_PENDING) {
      h->pending[h->n_pending++] = call;
      call = NULL;
    }
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    if (call != NULL) {
      lk_err err;
      lk_fail(&err, LK_RESOURCE_EXHAUSTED, "test holds too many calls");
      lk_rpc_call_fail(call, &err);
    }
  } else {
    lk_err err;
    lk_fail(&err, LK_INTERNAL, "unexpected method %s", m);
    lk_rpc_call_fail(call, &err);
  }
}

static void hctx_init(hctx *h) {
  memset(h, 0, sizeof(*h));
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
}

static void hctx_destroy(hctx *h) {
  pthread_mutex_destroy(&h->mu);
  pthread_cond_destroy(&h->cv);
}

static struct timespec abs_in_ms(int64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  return ts;
}

/* Waits (bounded) until at least n deferred calls are pending. */
static void wait_pending(hctx *h, size_t n) {
  struct timespec until = abs_in_ms(WAIT_MS);
  pthread_mutex_lock(&h->mu);
  while (h->n_pending < n) {
    if (pthread_cond_timedwait(&h->cv, &h->mu, &until) == ETIMEDOUT)
      break;
  }
  size_t have = h->n_pending;
  pthread_mutex_unlock(&h->mu);
  if (have < n)
    fail_msg("only %zu of %zu deferred calls arrived", have, n);
}

/* Removes and returns the oldest pending deferred call. */
static lk_rpc_call *take_pending(hctx *h) {
  lk_rpc_call *c = NULL;
  pthread_mutex_lock(&h->mu);
  if (h->n_pending > 0) {
    c = h->pending[0];
    memmove(&h->pending[0], &h->pending[1],
            (h->n_pending - 1) * sizeof(h->pending[0]));
    h->n_pending--;
  }
  pthread_mutex_unlock(&h->mu);
  if (c == NULL)
    fail_msg("no deferred call is pending");
  return c;
}

/* ---- a minimal grpc core client -------------------------------------- */

typedef struct {
  grpc_completion_queue *cq;
  grpc_call *call;
  grpc_metadata md;
  int has_md;
  grpc_metadata_array init_md;
  grpc_metadata_array trail_md;
  grpc_byte_buffer *send;
  grpc_byte_buffer *recv;
  grpc_status_code status;
  grpc_slice details;
  grpc_op ops[6];
  int done;
  /* Results, valid after ccall_wait. */
  int code;
  char msg[256];
  unsigned char *resp;
  size_t resp_len;
} ccall;

/* Starts a unary call; timeout_ms < 0 means no deadline. */
static ccall *ccall_start(grpc_channel *ch, const char *method, const void *req,
                          size_t len, const char *md_key, const char *md_val,
                          int64_t timeout_ms) {
  ccall *c = calloc(1, sizeof(*c));
  assert_non_null(c);
  c->cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec deadline =
      timeout_ms < 0
          ? gpr_inf_future(GPR_CLOCK_REALTIME)
          : gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                         gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  c->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                     grpc_slice_from_static_string(method),
                                     NULL, deadline, NULL);
  assert_non_null(c->call);
  grpc_metadata_array_init(&c->init_md);
  grpc_metadata_array_init(&c->trail_md);
  grpc_slice s = grpc_slice_from_copied_buffer(req, len);
  c->send = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  if (md_key != NULL) {
    c->md.key = grpc_slice_from_static_string(md_key);
    c->md.value = grpc_slice_from_static_string(md_val);
    c->has_md = 1;
  }
  grpc_op *op = c->ops;
  memset(c->ops, 0, sizeof(c->ops));
  op->op = GRPC_OP_SEND_INITIAL_METADATA;
  op->data.send_initial_metadata.count = c->has_md ? 1 : 0;
  op->data.send_initial_metadata.metadata = c->has_md ? &c->md : NULL;
  op++;
  op->op = GRPC_OP_SEND_MESSAGE;
  op->data.send_message.send_message = c->send;
  op++;
  op->op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  op++;
  op->op = GRPC_OP_RECV_INITIAL_METADATA;
  op->data.recv_initial_metadata.recv_initial_metadata = &c->init_md;
  op++;
  op->op = GRPC_OP_RECV_MESSAGE;
  op->data.recv_message.recv_message = &c->recv;
  op++;
  op->op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  op->data.recv_status_on_client.trailing_metadata = &c->trail_md;
  op->data.recv_status_on_client.status = &c->status;
  op->data.recv_status_on_client.status_details = &c->details;
  op++;
  grpc_call_error e =
      grpc_call_start_batch(c->call, c->ops, (size_t)(op - c->ops), c, NULL);
  assert_int_equal(e, GRPC_CALL_OK);
  return c;
}

/* Waits (bounded) for the call's status and fills in the results. */
static void ccall_wait(ccall *c) {
  grpc_event ev = grpc_completion_queue_pluck(
      c->cq, c,
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                   gpr_time_from_millis(WAIT_MS, GPR_TIMESPAN)),
      NULL);
  if (ev.type != GRPC_OP_COMPLETE)
    fail_msg("client call got no status within %d ms", WAIT_MS);
  c->done = 1;
  c->code = (int)c->status;
  size_t dlen = GRPC_SLICE_LENGTH(c->details);
  if (dlen >= sizeof(c->msg))
    dlen = sizeof(c->msg) - 1;
  memcpy(c->msg, GRPC_SLICE_START_PTR(c->details), dlen);
  c->msg[dlen] = '\0';
  if (c->recv != NULL) {
    grpc_byte_buffer_reader reader;
    assert_true(grpc_byte_buffer_reader_init(&reader, c->recv));
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    c->resp_len = GRPC_SLICE_LENGTH(all);
    c->resp = malloc(c->resp_len + 1);
    assert_non_null(c->resp);
    memcpy(c->resp, GRPC_SLICE_START_PTR(all), c->resp_len);
    c->resp[c->resp_len] = '\0';
    grpc_slice_unref(all);
  }
}

static void ccall_free(ccall *c) {
  if (c == NULL)
    return;
  if (!c->done) {
    grpc_call_cancel(c->call, NULL);
    grpc_completion_queue_pluck(c->cq, c, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                NULL);
  }
  grpc_call_unref(c->call);
  grpc_metadata_array_destroy(&c->init_md);
  grpc_metadata_array_destroy(&c->trail_md);
  grpc_byte_buffer_destroy(c->send);
  if (c->recv != NULL)
    grpc_byte_buffer_destroy(c->recv);
  grpc_slice_unref(c->details);
  grpc_completion_queue_shutdown(c->cq);
  for (;;) {
    grpc_event ev = grpc_completion_queue_pluck(
        c->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
      break;
  }
  grpc_completion_queue_destroy(c->cq);
  free(c->resp);
  free(c);
}

/* One blocking unary call; the caller frees the result with ccall_free. */
static ccall *unary(grpc_channel *ch, const char *method, const char *req,
                    const char *md_key, const char *md_val,
                    int64_t timeout_ms) {
  ccall *c =
      ccall_start(ch, method, req, strlen(req), md_key, md_val, timeout_ms);
  ccall_wait(c);
  return c;
}

static grpc_channel *channel_to(const char *target) {
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(target, creds, NULL);
  grpc_channel_credentials_release(creds);
  assert_non_null(ch);
  return ch;
}

/* ---- server plumbing ------------------------------------------------- */

/* Returns a loopback TCP port that was free a moment ago. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  socklen_t sl = sizeof(sin);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
  close(fd);
  return ntohs(sin.sin_port);
}

/* Creates f->srv listening on f->uaddr and a fresh loopback port, and
 * starts it; retries when another process took the port meanwhile. */
static void start_server(fx *f, int n_workers) {
  lk_err err;
  for (int attempt = 0; attempt < 5; attempt++) {
    snprintf(f->taddr, sizeof(f->taddr), "127.0.0.1:%d", free_port());
    if (lk_rpc_server_new(n_workers, &f->srv, &err) != LK_OK)
      fail_msg("server new: %s", err.msg);
    if (lk_rpc_server_listen(f->srv, f->uaddr, k_methods, N_METHODS, handler,
                             &f->h, &err) != LK_OK) {
      fail_msg("listen %s: %s", f->uaddr, err.msg);
    }
    lk_status st = lk_rpc_server_listen(f->srv, f->taddr, k_methods, N_METHODS,
                                        handler, &f->h, &err);
    if (st == LK_OK) {
      if (lk_rpc_server_start(f->srv, &err) != LK_OK)
        fail_msg("start: %s", err.msg);
      f->uch = channel_to(f->uaddr);
      f->tch = channel_to(f->taddr);
      return;
    }
    lk_rpc_server_destroy(f->srv);
    f->srv = NULL;
    unlink(f->uaddr + 5);
  }
  fail_msg("could not listen on a free loopback port");
}

/* Fails every deferred call a failed test left behind, so teardown's
 * shutdown does not wait for them. */
static void fail_leftovers(hctx *h) {
  for (;;) {
    lk_rpc_call *c = NULL;
    pthread_mutex_lock(&h->mu);
    if (h->n_pending > 0)
      c = h->pending[--h->n_pending];
    pthread_mutex_unlock(&h->mu);
    if (c == NULL)
      break;
    lk_err err;
    lk_fail(&err, LK_UNAVAILABLE, "test over");
    lk_rpc_call_fail(c, &err);
  }
}

static int setup(void **state) {
  grpc_init();
  fx *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  hctx_init(&f->h);
  snprintf(f->dir, sizeof(f->dir), "/tmp/lkrpc-%d-%d", (int)getpid(),
           fx_counter++);
  snprintf(f->uaddr, sizeof(f->uaddr), "unix:%s/s", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  fail_leftovers(&f->h);
  lk_rpc_server_destroy(f->srv);
  if (f->uch != NULL)
    grpc_channel_destroy(f->uch);
  if (f->tch != NULL)
    grpc_channel_destroy(f->tch);
  unlink(f->uaddr + 5);
  rmdir(f->dir);
  hctx_destroy(&f->h);
  free(f);
  grpc_shutdown();
  return 0;
}

/* ---- a thread that finishes a deferred call -------------------------- */

typedef struct {
  lk_rpc_call *call;
  int delay_ms;       /* finish after this long, or */
  int after_cancel;   /* finish once lk_rpc_call_cancelled says so */
  int saw_cancel;     /* result: cancellation was observed */
  int64_t waited_ms;  /* result: how long it waited */
  const char *answer; /* finish with this body; NULL: fail UNAVAILABLE */
  pthread_t thread;
} finisher;

static void *finisher_main(void *arg) {
  finisher *fin = arg;
  int64_t start = lk_now_ms();
  if (fin->after_cancel) {
    while (lk_now_ms() - start < WAIT_MS) {
      if (lk_rpc_call_cancelled(fin->call)) {
        fin->saw_cancel = 1;
        break;
      }
      usleep(10 * 1000);
    }
  } else {
    usleep((useconds_t)fin->delay_ms * 1000);
  }
  fin->waited_ms = lk_now_ms() - start;
  if (fin->answer != NULL) {
    lk_rpc_call_finish(fin->call, (const unsigned char *)fin->answer,
                       strlen(fin->answer));
  } else {
    lk_err err;
    lk_fail(&err, LK_UNAVAILABLE, "finished after cancel");
    lk_rpc_call_fail(fin->call, &err);
  }
  return NULL;
}

static void finisher_start(finisher *fin) {
  assert_int_equal(pthread_create(&fin->thread, NULL, finisher_main, fin), 0);
}

/* ---- tests ----------------------------------------------------------- */

static void test_echo_over_unix_socket(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = unary(f->uch, M_ECHO, "hello over unix", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_int_equal(c->resp_len, strlen("hello over unix"));
  assert_memory_equal(c->resp, "hello over unix", c->resp_len);
  ccall_free(c);
}

static void test_echo_over_tcp(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = unary(f->tch, M_ECHO, "hello over tcp", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_int_equal(c->resp_len, strlen("hello over tcp"));
  assert_memory_equal(c->resp, "hello over tcp", c->resp_len);
  ccall_free(c);
}

static void test_echo_binary_and_empty_requests(void **state) {
  fx *f = *state;
  start_server(f, 2);
  unsigned char bin[4096];
  for (size_t i = 0; i < sizeof(bin); i++)
    bin[i] = (unsigned char)(i * 7);
  ccall *c = ccall_start(f->tch, M_ECHO, bin, sizeof(bin), NULL, NULL, 10000);
  ccall_wait(c);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_int_equal(c->resp_len, sizeof(bin));
  assert_memory_equal(c->resp, bin, sizeof(bin));
  ccall_free(c);

  c = unary(f->uch, M_ECHO, "", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_int_equal(c->resp_len, 0);
  ccall_free(c);
}

static void test_fail_sends_code_and_details(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = unary(f->uch, M_FAIL, "q", NULL, NULL, 10000);
  assert_int_equal(c->code, 5); /* NOT_FOUND */
  assert_string_equal(c->msg, "x");
  assert_null(c->resp);
  ccall_free(c);
}

static void test_oversized_request_is_refused(void **state) {
  fx *f = *state;
  start_server(f, 2);
  size_t len = 4 * 1024 * 1024 + 1;
  char *big = calloc(1, len);
  assert_non_null(big);
  ccall *c = ccall_start(f->tch, M_ECHO, big, len, NULL, NULL, 20000);
  ccall_wait(c);
  free(big);
  assert_int_equal(c->code, GRPC_STATUS_RESOURCE_EXHAUSTED);
  ccall_free(c);
  /* The server still serves afterwards. */
  c = unary(f->tch, M_ECHO, "after", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  ccall_free(c);
}

static void test_metadata_lookup(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = unary(f->uch, M_META, "", "x-test", "hello-meta", 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_int_equal(c->resp_len, strlen("hello-meta"));
  assert_memory_equal(c->resp, "hello-meta", c->resp_len);
  ccall_free(c);

  c = unary(f->tch, M_META, "", "x-other", "v", 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_string_equal((const char *)c->resp, "<none>");
  ccall_free(c);
}

static void test_deferred_finish_from_another_thread(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = ccall_start(f->uch, M_DEFER, "d", 1, NULL, NULL, 20000);
  wait_pending(&f->h, 1);
  finisher fin = {
      .call = take_pending(&f->h), .delay_ms = 50, .answer = "later"};
  finisher_start(&fin);
  ccall_wait(c);
  pthread_join(fin.thread, NULL);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_string_equal((const char *)c->resp, "later");
  ccall_free(c);
}

static void test_pending_calls_do_not_block_workers(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *held[8];
  for (int i = 0; i < 8; i++) {
    held[i] = ccall_start(i % 2 ? f->tch : f->uch, M_DEFER, "h", 1, NULL, NULL,
                          WAIT_MS);
  }
  wait_pending(&f->h, 8);
  ccall *c = unary(f->tch, M_ECHO, "through", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_string_equal((const char *)c->resp, "through");
  ccall_free(c);
  c = unary(f->uch, M_ECHO, "through", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  ccall_free(c);

  for (int i = 0; i < 8; i++) {
    lk_rpc_call *call = take_pending(&f->h);
    lk_rpc_call_finish(call, (const unsigned char *)"ok", 2);
  }
  for (int i = 0; i < 8; i++) {
    ccall_wait(held[i]);
    assert_int_equal(held[i]->code, GRPC_STATUS_OK);
    assert_string_equal((const char *)held[i]->resp, "ok");
    ccall_free(held[i]);
  }
}

static void test_deadline_reflects_client_deadline(void **state) {
  fx *f = *state;
  start_server(f, 2);
  int64_t before = lk_now_ms();
  ccall *c = unary(f->uch, M_DEADLINE, "", NULL, NULL, 30000);
  int64_t after = lk_now_ms();
  assert_int_equal(c->code, GRPC_STATUS_OK);
  ccall_free(c);
  pthread_mutex_lock(&f->h.mu);
  int64_t dl = f->h.seen_deadline_ms;
  pthread_mutex_unlock(&f->h.mu);
  assert_true(dl != INT64_MAX);
  /* On our monotonic clock, about 30 s after the call started: allow
   * generous slack for a slow machine and the clock conversion. */
  assert_true(dl > before + 20000);
  assert_true(dl <= after + 31000);
}

static void test_deadline_is_max_without_client_deadline(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = unary(f->tch, M_DEADLINE, "", NULL, NULL, -1);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  ccall_free(c);
  pthread_mutex_lock(&f->h.mu);
  int64_t dl = f->h.seen_deadline_ms;
  pthread_mutex_unlock(&f->h.mu);
  assert_true(dl == INT64_MAX);
}

static void test_cancelled_after_client_deadline(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = ccall_start(f->uch, M_DEFER, "d", 1, NULL, NULL, 2000);
  wait_pending(&f->h, 1);
  lk_rpc_call *call = take_pending(&f->h);
  int64_t dl = lk_rpc_call_deadline_ms(call);
  assert_true(dl != INT64_MAX);
  if (lk_now_ms() + 500 < dl)
    assert_false(lk_rpc_call_cancelled(call));
  int64_t start = lk_now_ms();
  while (!lk_rpc_call_cancelled(call) && lk_now_ms() - start < WAIT_MS)
    usleep(10 * 1000);
  assert_true(lk_rpc_call_cancelled(call));
  ccall_wait(c);
  assert_int_equal(c->code, GRPC_STATUS_DEADLINE_EXCEEDED);
  lk_err err;
  lk_fail(&err, LK_DEADLINE_EXCEEDED, "too late");
  lk_rpc_call_fail(call, &err);
  ccall_free(c);
  /* The worker that held it still serves. */
  c = unary(f->uch, M_ECHO, "next", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  ccall_free(c);
}

static void test_cancelled_after_client_cancels(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = ccall_start(f->tch, M_DEFER, "d", 1, NULL, NULL, -1);
  wait_pending(&f->h, 1);
  lk_rpc_call *call = take_pending(&f->h);
  assert_true(lk_rpc_call_deadline_ms(call) == INT64_MAX);
  assert_false(lk_rpc_call_cancelled(call));
  grpc_call_cancel(c->call, NULL);
  ccall_wait(c);
  assert_int_equal(c->code, GRPC_STATUS_CANCELLED);
  int64_t start = lk_now_ms();
  while (!lk_rpc_call_cancelled(call) && lk_now_ms() - start < WAIT_MS)
    usleep(10 * 1000);
  assert_true(lk_rpc_call_cancelled(call));
  lk_rpc_call_finish(call, (const unsigned char *)"nobody", 6);
  ccall_free(c);
}

static void test_shutdown_lets_pending_call_finish_in_grace(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = ccall_start(f->uch, M_DEFER, "d", 1, NULL, NULL, WAIT_MS);
  wait_pending(&f->h, 1);
  finisher fin = {
      .call = take_pending(&f->h), .delay_ms = 300, .answer = "graceful"};
  finisher_start(&fin);
  lk_rpc_server_shutdown(f->srv, 20000);
  pthread_join(fin.thread, NULL);
  ccall_wait(c);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_string_equal((const char *)c->resp, "graceful");
  ccall_free(c);
  /* Idempotent; destroy (teardown) shuts down again. */
  lk_rpc_server_shutdown(f->srv, 0);
}

static void test_shutdown_cancels_unfinished_call(void **state) {
  fx *f = *state;
  start_server(f, 2);
  ccall *c = ccall_start(f->tch, M_DEFER, "d", 1, NULL, NULL, -1);
  wait_pending(&f->h, 1);
  /* The handler would never finish on its own; this thread finishes it
   * only once the server has cancelled it. */
  finisher fin = {.call = take_pending(&f->h), .after_cancel = 1};
  finisher_start(&fin);
  int64_t start = lk_now_ms();
  lk_rpc_server_shutdown(f->srv, 200);
  int64_t took = lk_now_ms() - start;
  pthread_join(fin.thread, NULL);
  assert_true(fin.saw_cancel);
  /* Grace (0.2 s) plus prompt release: far below the 10 s fallback. */
  assert_true(took < 9000);
  ccall_wait(c);
  assert_int_not_equal(c->code, GRPC_STATUS_OK);
  ccall_free(c);
}

static void test_live_socket_is_refused(void **state) {
  fx *f = *state;
  start_server(f, 1);
  lk_rpc_server *other = NULL;
  lk_err err;
  assert_int_equal(lk_rpc_server_new(1, &other, &err), LK_OK);
  assert_int_equal(lk_rpc_server_listen(other, f->uaddr, k_methods, N_METHODS,
                                        handler, &f->h, &err),
                   LK_UNAVAILABLE);
  assert_non_null(strstr(err.msg, "another process is serving it"));
  lk_rpc_server_destroy(other);
  /* The first server's socket survived the attempt. */
  ccall *c = unary(f->uch, M_ECHO, "still here", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_string_equal((const char *)c->resp, "still here");
  ccall_free(c);
}

static void test_stale_socket_is_replaced(void **state) {
  fx *f = *state;
  /* A socket file nobody serves, as a crashed daemon leaves it. */
  assert_int_equal(mkdir(f->dir, 0750), 0);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_un sun;
  memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", f->uaddr + 5);
  assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
  close(fd);
  struct stat st;
  assert_int_equal(lstat(f->uaddr + 5, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));

  start_server(f, 1);
  ccall *c = unary(f->uch, M_ECHO, "fresh", NULL, NULL, 10000);
  assert_int_equal(c->code, GRPC_STATUS_OK);
  assert_string_equal((const char *)c->resp, "fresh");
  ccall_free(c);
}

static void test_socket_mode_and_directory(void **state) {
  fx *f = *state;
  struct stat st;
  assert_int_not_equal(stat(f->dir, &st), 0); /* created by listen */
  start_server(f, 1);
  assert_int_equal(stat(f->dir, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  assert_int_equal(lstat(f->uaddr + 5, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
  assert_int_equal(st.st_mode & 07777, 0660);
}

static void test_argument_errors(void **state) {
  fx *f = *state;
  lk_rpc_server *s = (lk_rpc_server *)&s; /* must be reset to NULL */
  lk_err err;
  assert_int_equal(lk_rpc_server_new(0, &s, &err), LK_INVALID_ARGUMENT);
  assert_null(s);
  assert_int_equal(lk_rpc_server_new(257, &s, &err), LK_INVALID_ARGUMENT);

  assert_int_equal(lk_rpc_server_new(1, &s, &err), LK_OK);
  char addr[256];
  memset(addr, 'a', sizeof(addr) - 1);
  addr[sizeof(addr) - 1] = '\0';
  memcpy(addr, "unix:/tmp/", 10);
  assert_int_equal(
      lk_rpc_server_listen(s, addr, k_methods, N_METHODS, handler, &f->h, &err),
      LK_INVALID_ARGUMENT);
  lk_rpc_server_destroy(s);

  start_server(f, 1);
  assert_int_equal(lk_rpc_server_listen(f->srv, "127.0.0.1:0", k_methods,
                                        N_METHODS, handler, &f->h, &err),
                   LK_INTERNAL);
}

static void test_destroy_null_and_unstarted(void **state) {
  (void)state;
  lk_rpc_server_destroy(NULL);
  lk_rpc_server_shutdown(NULL, 0);
  lk_rpc_server *s = NULL;
  lk_err err;
  assert_int_equal(lk_rpc_server_new(3, &s, &err), LK_OK);
  lk_rpc_server_destroy(s); /* never listened, never started */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_echo_over_unix_socket, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_echo_over_tcp, setup, teardown),
      cmocka_unit_test_setup_teardown(test_echo_binary_and_empty_requests,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_fail_sends_code_and_details, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_oversized_request_is_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_metadata_lookup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deferred_finish_from_another_thread,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_pending_calls_do_not_block_workers,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_deadline_reflects_client_deadline,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_deadline_is_max_without_client_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancelled_after_client_deadline,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancelled_after_client_cancels,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_shutdown_lets_pending_call_finish_in_grace, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_cancels_unfinished_call,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_live_socket_is_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_stale_socket_is_replaced, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_socket_mode_and_directory, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_argument_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_destroy_null_and_unstarted, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
