/*
 * rpc_conns_test.c - proves lk_rpc_server_open_connections counts real
 * client connections through grpc core's channelz: a real lk_rpc_server
 * on a Unix socket and a loopback port, and real grpc core client
 * channels (each with its own subchannel pool, so each is one
 * connection). The count is 0 before any client, N after N channels made
 * a call, per listener, and falls back as channels close; a second server
 * in the same process is counted apart; the scrape-time gauge renders
 * the same numbers labelled by listener address.
 *
 * Connection teardown is asynchronous, so counts are polled with a bounded
 * wait (WAIT_MS); nothing asserts on timing.
 */
#include <stdint.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "lib/metrics.h"
#include "lib/rpc_server.h"
#include "lib/status.h"

#define M_ECHO "/lk.test.T/Echo"
#define WAIT_MS 30000
#define N_CLIENTS 3

static const char *const k_methods[] = {M_ECHO};

static void echo(void *ctx, lk_rpc_call *call) {
  (void)ctx;
  size_t len;
  const unsigned char *req = lk_rpc_call_request(call, &len);
  lk_rpc_call_finish(call, req, len);
}

typedef struct {
  char dir[64];
  char uaddr[96];
  char taddr[64];
  lk_rpc_server *srv;   /* unix (listener 0) and tcp (listener 1) */
  lk_rpc_server *other; /* a second server in the same process */
  char oaddr[96];
} fx;

static int fx_counter;

/* Returns a free loopback port (bind to 0, read it, close). */
static int free_port(void) {
  for (int tries = 0; tries < 50; tries++) {
    int port = 20000 + (int)((unsigned)rand() % 30000);
    char a[32];
    snprintf(a, sizeof(a), "127.0.0.1:%d", port);
    lk_rpc_server *probe = NULL;
    lk_err err;
    assert_int_equal(lk_rpc_server_new(1, &probe, &err), LK_OK);
    lk_status st =
        lk_rpc_server_listen(probe, a, k_methods, 1, echo, NULL, &err);
    lk_rpc_server_destroy(probe);
    if (st == LK_OK)
      return port;
  }
  fail_msg("no free loopback port");
  return 0;
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "/tmp/lkconns-%d-%d", (int)getpid(),
           fx_counter++);
  snprintf(f->uaddr, sizeof(f->uaddr), "unix:%s/s", f->dir);
  snprintf(f->oaddr, sizeof(f->oaddr), "unix:%s/o", f->dir);
  snprintf(f->taddr, sizeof(f->taddr), "127.0.0.1:%d", free_port());
  lk_err err;
  assert_int_equal(lk_rpc_server_new(2, &f->srv, &err), LK_OK);
  assert_int_equal(
      lk_rpc_server_listen(f->srv, f->uaddr, k_methods, 1, echo, NULL, &err),
      LK_OK);
  assert_int_equal(
      lk_rpc_server_listen(f->srv, f->taddr, k_methods, 1, echo, NULL, &err),
      LK_OK);
  assert_int_equal(lk_rpc_server_start(f->srv, &err), LK_OK);
  assert_int_equal(lk_rpc_server_new(1, &f->other, &err), LK_OK);
  assert_int_equal(
      lk_rpc_server_listen(f->other, f->oaddr, k_methods, 1, echo, NULL, &err),
      LK_OK);
  assert_int_equal(lk_rpc_server_start(f->other, &err), LK_OK);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  lk_rpc_server_destroy(f->srv);
  lk_rpc_server_destroy(f->other);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", f->dir);
  free(f);
  return 0;
}

/* A client channel with its own subchannel pool: one connection. */
static grpc_channel *connect_to(const char *addr) {
  grpc_arg arg;
  arg.type = GRPC_ARG_INTEGER;
  arg.key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  arg.value.integer = 1;
  grpc_channel_args args = {1, &arg};
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(addr, creds, &args);
  grpc_channel_credentials_release(creds);
  assert_non_null(ch);
  return ch;
}

/* One unary Echo call that must succeed (so the connection is up). */
static void call_echo(grpc_channel *ch) {
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec deadline = gpr_time_add(
      gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(WAIT_MS, GPR_TIMESPAN));
  grpc_call *call = grpc_channel_create_call(
      ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
      grpc_slice_from_static_string(M_ECHO), NULL, deadline, NULL);
  assert_non_null(call);
  grpc_slice s = grpc_slice_from_static_string("hi");
  grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&s, 1);
  grpc_byte_buffer *recv = NULL;
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  assert_int_equal(grpc_call_start_batch(call, ops, 6, call, NULL),
                   GRPC_CALL_OK);
  grpc_event ev = grpc_completion_queue_pluck(
      cq, call,
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                   gpr_time_from_millis(WAIT_MS, GPR_TIMESPAN)),
      NULL);
  assert_int_equal(ev.type, GRPC_OP_COMPLETE);
  assert_int_equal(status, GRPC_STATUS_OK);
  assert_non_null(recv);
  grpc_byte_buffer_destroy(recv);
  grpc_byte_buffer_destroy(send);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_pluck(cq, NULL,
                                     gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
             .type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
}

static int64_t count(lk_rpc_server *s, size_t i) {
  int64_t n = -1;
  lk_err err;
  lk_status st = lk_rpc_server_open_connections(s, i, &n, &err);
  if (st != LK_OK)
    fail_msg("open_connections(%zu): %s", i, err.msg);
  return n;
}

/* Polls (bounded) until listener i of s has exactly want connections. */
static void wait_count(lk_rpc_server *s, size_t i, int64_t want) {
  struct timespec pause = {0, 20 * 1000 * 1000};
  int64_t have = -1;
  for (int t = 0; t < WAIT_MS / 20; t++) {
    have = count(s, i);
    if (have == want)
      return;
    nanosleep(&pause, NULL);
  }
  fail_msg("listener %zu has %lld connections, want %lld", i, (long long)have,
           (long long)want);
}

static void test_counts_follow_client_channels(void **state) {
  fx *f = *state;
  assert_int_equal(lk_rpc_server_n_listeners(f->srv), 2);
  assert_string_equal(lk_rpc_server_listener_addr(f->srv, 0), f->uaddr);
  assert_string_equal(lk_rpc_server_listener_addr(f->srv, 1), f->taddr);
  assert_null(lk_rpc_server_listener_addr(f->srv, 2));
  assert_int_equal(count(f->srv, 0), 0);
  assert_int_equal(count(f->srv, 1), 0);
  assert_int_equal(count(f->other, 0), 0);

  grpc_channel *u[N_CLIENTS];
  for (int i = 0; i < N_CLIENTS; i++) {
    u[i] = connect_to(f->uaddr);
    call_echo(u[i]);
  }
  grpc_channel *t = connect_to(f->taddr);
  call_echo(t);
  wait_count(f->srv, 0, N_CLIENTS);
  wait_count(f->srv, 1, 1);
  /* The other server's connections are its own. */
  assert_int_equal(count(f->other, 0), 0);
  grpc_channel *o = connect_to(f->oaddr);
  call_echo(o);
  wait_count(f->other, 0, 1);
  assert_int_equal(count(f->srv, 0), N_CLIENTS);

  grpc_channel_destroy(u[0]);
  wait_count(f->srv, 0, N_CLIENTS - 1);
  for (int i = 1; i < N_CLIENTS; i++)
    grpc_channel_destroy(u[i]);
  grpc_channel_destroy(t);
  grpc_channel_destroy(o);
  wait_count(f->srv, 0, 0);
  wait_count(f->srv, 1, 0);
  wait_count(f->other, 0, 0);
}

static void collect(void *ctx, lk_metrics_emitter *e) {
  lk_rpc_server_emit_open_connections(ctx, e);
}

static void test_gauge_renders_per_listener(void **state) {
  fx *f = *state;
  lk_metrics *m = NULL;
  lk_metric *g = NULL;
  lk_err err;
  assert_int_equal(lk_metrics_new(16, &m, &err), LK_OK);
  const char *labels[1] = {"listener"};
  assert_int_equal(lk_metrics_gauge_fn(m, "latchkey_open_connections", "x",
                                       labels, 1, collect, f->srv, &g, &err),
                   LK_OK);
  grpc_channel *a = connect_to(f->taddr);
  grpc_channel *b = connect_to(f->taddr);
  call_echo(a);
  call_echo(b);
  wait_count(f->srv, 1, 2);
  char *page = NULL;
  size_t len = 0;
  assert_int_equal(lk_metrics_render(m, &page, &len, &err), LK_OK);
  char want[256];
  snprintf(want, sizeof(want), "latchkey_open_connections{listener=\"%s\"} 2\n",
           f->taddr);
  if (strstr(page, want) == NULL)
    fail_msg("no \"%s\" in:\n%s", want, page);
  snprintf(want, sizeof(want), "latchkey_open_connections{listener=\"%s\"} 0\n",
           f->uaddr);
  if (strstr(page, want) == NULL)
    fail_msg("no \"%s\" in:\n%s", want, page);
  free(page);
  grpc_channel_destroy(a);
  grpc_channel_destroy(b);
  lk_metric_detach(g);
  lk_metrics_destroy(m);
}

static void test_destroyed_server_is_not_found(void **state) {
  fx *f = *state;
  lk_err err;
  int64_t n = 7;
  assert_int_equal(lk_rpc_server_open_connections(f->srv, 5, &n, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_rpc_server_open_connections(NULL, 0, &n, &err),
                   LK_INVALID_ARGUMENT);
  lk_rpc_server_shutdown(f->other, 0);
  assert_int_equal(lk_rpc_server_open_connections(f->other, 0, &n, &err),
                   LK_NOT_FOUND);
  assert_int_equal(n, 0);
}

int main(void) {
  grpc_init();
  srand((unsigned)getpid());
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_counts_follow_client_channels, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_gauge_renders_per_listener, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_destroyed_server_is_not_found, setup,
                                      teardown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  grpc_shutdown();
  return rc;
}
