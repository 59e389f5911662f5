/*
 * metrics_test.c - proves lib/metrics's contract: the exact text format
 * 0.0.4 page for a small registry (HELP/TYPE lines, cumulative _bucket
 * lines with le, _sum and _count), label values and HELP text escaped,
 * the hard cap on label combinations (drops counted, memory bounded),
 * increments from many threads all counted, scrape-time gauge families
 * and their detach, and registration errors with their exact codes. It
 * also proves lib/metrics_http serves the page on a real socket, 404s
 * other paths and names the flag for a bad address.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/metrics.h"
#include "lib/metrics_http.h"

static char *render(lk_metrics *m) {
  char *page = NULL;
  size_t len = 0;
  lk_err err;
  assert_int_equal(lk_metrics_render(m, &page, &len, &err), LK_OK);
  assert_int_equal(strlen(page), len);
  return page;
}

static void renders_exact_text_format(void **state) {
  (void)state;
  lk_metrics *m = NULL;
  lk_metric *calls = NULL, *lat = NULL, *up = NULL;
  lk_err err;
  assert_int_equal(lk_metrics_new(8, &m, &err), LK_OK);
  const char *lbl[] = {"tool", "outcome"};
  assert_int_equal(lk_metrics_counter(m, "t_calls_total", "Calls made.", lbl, 2,
                                      &calls, &err),
                   LK_OK);
  const double bounds[] = {0.1, 1};
  assert_int_equal(lk_metrics_histogram(m, "t_seconds", "Latency.", NULL, 0,
                                        bounds, 2, &lat, &err),
                   LK_OK);
  assert_int_equal(lk_metrics_gauge(m, "t_up", "Up.", NULL, 0, &up, &err),
                   LK_OK);
  const char *v[] = {"weather", "ok"};
  lk_metric_inc(calls, v, 1);
  lk_metric_inc(calls, v, 2);
  lk_metric_observe(lat, NULL, 0.05);
  lk_metric_observe(lat, NULL, 0.5);
  lk_metric_observe(lat, NULL, 0.5);
  lk_metric_observe(lat, NULL, 7);
  lk_metric_set(up, NULL, 1.5);
  char *page = render(m);
  assert_string_equal(page,
                      "# HELP t_calls_total Calls made.\n"
                      "# TYPE t_calls_total counter\n"
                      "t_calls_total{tool=\"weather\",outcome=\"ok\"} 3\n"
                      "# HELP t_seconds Latency.\n"
                      "# TYPE t_seconds histogram\n"
                      "t_seconds_bucket{le=\"0.1\"} 1\n"
                      "t_seconds_bucket{le=\"1\"} 3\n"
                      "t_seconds_bucket{le=\"+Inf\"} 4\n"
                      "t_seconds_sum 8.05\n"
                      "t_seconds_count 4\n"
                      "# HELP t_up Up.\n"
                      "# TYPE t_up gauge\n"
                      "t_up 1.5\n"
                      "# HELP latchkey_metrics_dropped_total Metric updates "
                      "dropped: a family was at its cap of label "
                      "combinations, or a label value was too long.\n"
                      "# TYPE latchkey_metrics_dropped_total counter\n"
                      "latchkey_metrics_dropped_total 0\n");
  free(page);
  lk_metrics_destroy(m);
}

static void escapes_label_values_and_help(void **state) {
  (void)state;
  lk_metrics *m = NULL;
  lk_metric *g = NULL;
  lk_err err;
  assert_int_equal(lk_metrics_new(4, &m, &err), LK_OK);
  const char *lbl[] = {"id"};
  assert_int_equal(
      lk_metrics_gauge(m, "t_g", "a \\ b\nc \"q\"", lbl, 1, &g, &err), LK_OK);
  const char *v[] = {"a\"b\\c\nd"};
  lk_metric_set(g, v, 2);
  char *page = render(m);
  assert_non_null(strstr(page, "# HELP t_g a \\\\ b\\nc \"q\"\n"));
  assert_non_null(strstr(page, "t_g{id=\"a\\\"b\\\\c\\nd\"} 2\n"));
  free(page);
  lk_metrics_destroy(m);
}

static void caps_label_combinations(void **state) {
  (void)state;
  lk_metrics *m = NULL;
  lk_metric *c = NULL;
  lk_err err;
  assert_int_equal(lk_metrics_new(3, &m, &err), LK_OK);
  const char *lbl[] = {"agent"};
  assert_int_equal(lk_metrics_counter(m, "t_total", "T.", lbl, 1, &c, &err),
                   LK_OK);
  char name[32];
  for (int i = 0; i < 100; i++) {
    snprintf(name, sizeof(name), "agent-%d", i);
    const char *v[] = {name};
    lk_metric_inc(c, v, 1);
  }
  /* An existing combination still counts once the family is full. */
  const char *first[] = {"agent-0"};
  lk_metric_inc(c, first, 1);
  char *page = render(m);
  int series = 0;
  for (const char *p = page; (p = strstr(p, "t_total{")) != NULL; p++)
    series++;
  assert_int_equal(series, 3);
  assert_non_null(strstr(page, "t_total{agent=\"agent-0\"} 2\n"));
  assert_non_null(strstr(page, "latchkey_metrics_dropped_total 97\n"));
  free(page);
  lk_metrics_destroy(m);
}

static void rejects_bad_registrations(void **state) {
  (void)state;
  lk_metrics *m = NULL;
  lk_metric *c = NULL;
  lk_err err;
  assert_int_equal(lk_metrics_new(0, &m, &err), LK_INVALID_ARGUMENT);
  assert_null(m);
  assert_int_equal(lk_metrics_new(4, &m, &err), LK_OK);
  assert_int_equal(lk_metrics_counter(m, "bad-name", "x", NULL, 0, &c, &err),
                   LK_INVALID_ARGUMENT);
  const char *le[] = {"le"};
  const double b[] = {1};
  assert_int_equal(lk_metrics_histogram(m, "t_h", "x", le, 1, b, 1, &c, &err),
                   LK_INVALID_ARGUMENT);
  const double unordered[] = {2, 1};
  assert_int_equal(
      lk_metrics_histogram(m, "t_h", "x", NULL, 0, unordered, 2, &c, &err),
      LK_INVALID_ARGUMENT);
  assert_int_equal(lk_metrics_counter(m, "t_c", "x", NULL, 0, &c, &err), LK_OK);
  assert_int_equal(lk_metrics_counter(m, "t_c", "x", NULL, 0, &c, &err),
                   LK_ALREADY_EXISTS);
  assert_string_equal(err.msg, "metrics: t_c is already registered");
  /* No registry: registration succeeds with no metric, updates no-op. */
  assert_int_equal(lk_metrics_counter(NULL, "t_c", "x", NULL, 0, &c, &err),
                   LK_OK);
  assert_null(c);
  lk_metric_inc(c, NULL, 1);
  lk_metrics_destroy(m);
}

#define THREADS 8
#define PER_THREAD 20000

typedef struct {
  lk_metric *c;
  lk_metric *h;
  int id;
} worker_arg;

static void *worker(void *p) {
  worker_arg *a = p;
  const char *v[] = {(a->id % 2) ? "odd" : "even"};
  for (int i = 0; i < PER_THREAD; i++) {
    lk_metric_inc(a->c, v, 1);
    lk_metric_observe(a->h, v, 0.001);
  }
  return NULL;
}

static void counts_every_concurrent_increment(void **state) {
  (void)state;
  lk_metrics *m = NULL;
  lk_metric *c = NULL, *h = NULL;
  lk_err err;
  assert_int_equal(lk_metrics_new(16, &m, &err), LK_OK);
  const char *lbl[] = {"parity"};
  assert_int_equal(lk_metrics_counter(m, "t_total", "T.", lbl, 1, &c, &err),
                   LK_OK);
  const double b[] = {0.01};
  assert_int_equal(
      lk_metrics_histogram(m, "t_seconds", "S.", lbl, 1, b, 1, &h, &err),
      LK_OK);
  pthread_t th[THREADS];
  worker_arg args[THREADS];
  for (int i = 0; i < THREADS; i++) {
    args[i] = (worker_arg){c, h, i};
    assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
  }
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);
  char *page = render(m);
  char want[128];
  snprintf(want, sizeof(want), "t_total{parity=\"even\"} %d\n",
           THREADS / 2 * PER_THREAD);
  assert_non_null(strstr(page, want));
  snprintf(want, sizeof(want), "t_total{parity=\"odd\"} %d\n",
           THREADS / 2 * PER_THREAD);
  assert_non_null(strstr(page, want));
  snprintf(want, sizeof(want), "t_seconds_count{parity=\"odd\"} %d\n",
           THREADS / 2 * PER_THREAD);
  assert_non_null(strstr(page, want));
  snprintf(want, sizeof(want),
           "t_seconds_bucket{parity=\"even\",le=\"0.01\"} %d\n",
           THREADS / 2 * PER_THREAD);
  assert_non_null(strstr(page, want));
  assert_non_null(strstr(page, "latchkey_metrics_dropped_total 0\n"));
  free(page);
  lk_metrics_destroy(m);
}

static void collect_two(void *ctx, lk_metrics_emitter *e) {
  int *calls = ctx;
  (*calls)++;
  const char *a[] = {"a"};
  const char *b[] = {"b"};
  lk_metrics_emit(e, a, 1);
  lk_metrics_emit(e, b, 0.25);
}

static void scrape_time_gauges_emit_until_detached(void **state) {
  (void)state;
  lk_metrics *m = NULL;
  lk_metric *g = NULL;
  lk_err err;
  int calls = 0;
  assert_int_equal(lk_metrics_new(4, &m, &err), LK_OK);
  const char *lbl[] = {"agent"};
  assert_int_equal(lk_metrics_gauge_fn(m, "t_lag", "Lag.", lbl, 1, collect_two,
                                       &calls, &g, &err),
                   LK_OK);
  char *page = render(m);
  assert_int_equal(calls, 1);
  assert_non_null(strstr(page,
                         "t_lag{agent=\"a\"} 1\nt_lag{agent=\"b\"} "
                         "0.25\n"));
  free(page);
  lk_metric_detach(g);
  page = render(m);
  assert_int_equal(calls, 1);
  assert_null(strstr(page, "t_lag{"));
  assert_non_null(strstr(page, "# TYPE t_lag gauge\n"));
  free(page);
  lk_metrics_destroy(m);
}

/* Sends one request to 127.0.0.1:port and returns the whole answer. */
static char *http_get(int port, const char *request) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(write(fd, request, strlen(request)),
                   (ssize_t)strlen(request));
  size_t cap = 65536, len = 0;
  char *buf = calloc(1, cap);
  ssize_t n;
  while ((n = read(fd, buf + len, cap - 1 - len)) > 0)
    len += (size_t)n;
  close(fd);
  return buf;
}

static void serves_metrics_over_http(void **state) {
  (void)state;
  lk_metrics *m = NULL;
  lk_metric *c = NULL;
  lk_metrics_http *h = NULL;
  lk_err err;
  assert_int_equal(lk_metrics_new(4, &m, &err), LK_OK);
  assert_int_equal(lk_metrics_counter(m, "t_total", "T.", NULL, 0, &c, &err),
                   LK_OK);
  lk_metric_inc(c, NULL, 5);
  assert_int_equal(
      lk_metrics_http_start(m, "127.0.0.1:0", "--metrics-listen", &h, &err),
      LK_OK);
  int port = lk_metrics_http_port(h);
  assert_true(port > 0);
  char *r = http_get(port, "GET /metrics HTTP/1.0\r\n\r\n");
  assert_non_null(strstr(r, " 200 OK\r\n"));
  assert_non_null(
      strstr(r, "Content-Type: text/plain; version=0.0.4; charset=utf-8"));
  assert_non_null(strstr(r, "\r\n\r\n# HELP t_total T.\n"));
  assert_non_null(strstr(r, "\nt_total 5\n"));
  free(r);
  r = http_get(port, "GET /other HTTP/1.0\r\n\r\n");
  assert_non_null(strstr(r, " 404 "));
  free(r);
  r = http_get(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
  assert_non_null(strstr(r, " 405 "));
  free(r);
  lk_metrics_http_stop(h);
  lk_metrics_destroy(m);
}

static void names_the_flag_for_a_bad_address(void **state) {
  (void)state;
  lk_metrics_http *h = NULL;
  lk_err err;
  const char *bad[] = {
      "9464", "unix:/tmp/x", "host:", ":9464", "h:99999", "a:b:1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(
        lk_metrics_http_start(NULL, bad[i], "--metrics-listen", &h, &err),
        LK_INVALID_ARGUMENT);
    assert_null(h);
    assert_non_null(strstr(err.msg, "--metrics-listen"));
    assert_int_equal(
        lk_metrics_http_check_address(bad[i], "--metrics-listen", &err),
        LK_INVALID_ARGUMENT);
  }
  assert_int_equal(
      lk_metrics_http_check_address("[::1]:9464", "--metrics-listen", &err),
      LK_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(renders_exact_text_format),
      cmocka_unit_test(escapes_label_values_and_help),
      cmocka_unit_test(caps_label_combinations),
      cmocka_unit_test(rejects_bad_registrations),
      cmocka_unit_test(counts_every_concurrent_increment),
      cmocka_unit_test(scrape_time_gauges_emit_until_detached),
      cmocka_unit_test(serves_metrics_over_http),
      cmocka_unit_test(names_the_flag_for_a_bad_address),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
