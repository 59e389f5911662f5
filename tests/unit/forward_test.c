/*
 * forward_test.c - proves sidecar/forward's contract against a real HTTP
 * server: nginx (with its echo module) started by the group setup on a
 * free loopback port, in a private temp prefix. Requests arrive with their
 * method, headers, basic credentials and body; callbacks get the status,
 * the body and the raw header lines; redirects come back as they are;
 * HEAD answers without waiting for a body; the body cap, the deadline,
 * an unreachable vendor, a non-HTTP scheme and caller cancellation each
 * end in their exact status; slow transfers overlap; sequential requests
 * share one keep-alive connection; destroy fails everything in flight;
 * submits from several threads, to an idle or a busy forwarder, are never
 * left asleep; a reused easy handle keeps nothing of its last request.
 * Destinations: a loopback vendor is refused with LK_FAILED_PRECONDITION
 * (not LK_UNAVAILABLE) unless the request allows private addresses, also
 * when it comes by name ("localhost") or over a new keep-alive slot, and
 * never reaches the server; literal private hosts are recognised. Host
 * names (pinned with the test-only CURLOPT_RESOLVE hook) that resolve to
 * loopback, private, link-local or metadata addresses are refused the
 * same way, an allowed name is connected to exactly the address it
 * resolved to, and a reused keep-alive connection is checked again for
 * each request under that request's own policy.
 *
 * Every wait is bounded, and time bounds are functional (whole seconds
 * against what a serial or hung forwarder would take), never tight.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <pwd.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/clock.h"
#include "lib/secret.h"
#include "lib/status.h"
#include "sidecar/forward.h"

extern char **environ;

/* How long any single wait may take before the test fails. */
#define WAIT_MS 60000

#define CAP 1000 /* max_response_bytes of the capped forwarder */

/* ---- nginx ----------------------------------------------------------- */

static struct {
  char dir[512];
  int port;
  pid_t pid;
} g_nginx;

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof(sin);
  int port = -1;
  if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
      getsockname(fd, (struct sockaddr *)&sin, &sl) == 0) {
    port = ntohs(sin.sin_port);
  }
  close(fd);
  return port;
}

static int tcp_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin.sin_port = htons((uint16_t)port);
  int ok = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
  close(fd);
  return ok;
}

static int write_file(const char *path, const char *text) {
  FILE *fp = fopen(path, "w");
  if (fp == NULL)
    return -1;
  int ok = fputs(text, fp) >= 0;
  return (fclose(fp) == 0 && ok) ? 0 : -1;
}

/* The vendor. Each location serves one behaviour the tests need. */
static const char k_conf[] =
    "%s\n"
    "daemon off;\n"
    "master_process on;\n"
    "worker_processes 1;\n"
    "pid %s/nginx.pid;\n"
    "error_log %s/error.log warn;\n"
    "load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;\n"
    "events { worker_connections 1024; }\n"
    "http {\n"
    "  access_log %s/access.log;\n"
    "  client_body_temp_path %s/body;\n"
    "  proxy_temp_path %s/proxy;\n"
    "  fastcgi_temp_path %s/fastcgi;\n"
    "  uwsgi_temp_path %s/uwsgi;\n"
    "  scgi_temp_path %s/scgi;\n"
    "  client_body_buffer_size 1m;\n"
    "  client_max_body_size 1m;\n"
    "  keepalive_requests 100000;\n"
    "  keepalive_timeout 120s;\n"
    "  default_type text/plain;\n"
    "  server {\n"
    "    listen 127.0.0.1:%d;\n"
    "    listen 127.0.0.2:%d;\n"
    "    location = /headers {\n"
    "      add_header X-Reply yes always;\n"
    "      return 200 'method=$request_method test=$http_x_test "
    "auth=$http_authorization ua=$http_user_agent "
    "expect=[$http_expect] query=$query_string';\n"
    "    }\n"
    "    location = /body {\n"
    "      echo_read_request_body;\n"
    "      echo -n '$request_method:';\n"
    "      echo_request_body;\n"
    "    }\n"
    "    location = /redirect { return 302 /target; }\n"
    "    location = /target { return 200 'target reached'; }\n"
    "    location = /head { return 200 'twelve bytes'; }\n"
    "    location = /empty { return 204; }\n"
    "    location = /exact { echo_duplicate %d 'a'; }\n"
    "    location = /over { echo_duplicate %d 'a'; }\n"
    "    location = /bigfile { alias %s/big.txt; }\n"
    "    location = /slow { echo_sleep 1; echo 'slept'; }\n"
    "    location = /hang { echo_sleep 100; echo 'late'; }\n"
    "    location = /conn { return 200 '$connection $connection_requests'; }\n"
    "    location = /addr { return 200 '$server_addr $http_host'; }\n"
    "  }\n"
    "}\n";

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void nginx_stop(void) {
  if (g_nginx.pid <= 0)
    return;
  kill(g_nginx.pid, SIGTERM);
  int64_t start = lk_now_ms();
  for (;;) {
    pid_t r = waitpid(g_nginx.pid, NULL, WNOHANG);
    if (r == g_nginx.pid || (r < 0 && errno != EINTR))
      break;
    if (lk_now_ms() - start > 15000) {
      kill(g_nginx.pid, SIGKILL);
      waitpid(g_nginx.pid, NULL, 0);
      break;
    }
    usleep(20 * 1000);
  }
  g_nginx.pid = 0;
}

/* Starts nginx on a fresh port; 0 once it accepts connections. */
static int nginx_try_start(void) {
  char path[700];
  char conf[8192];
  char user[128] = "";
  if (geteuid() == 0) {
    /* As root nginx would drop its worker to "nobody", which could not
     * write the temp dirs: keep it as the current user. */
    struct passwd *pw = getpwuid(getuid());
    snprintf(user, sizeof(user), "user %s;", pw != NULL ? pw->pw_name : "root");
  }
  g_nginx.port = free_port();
  if (g_nginx.port < 0)
    return -1;
  const char *d = g_nginx.dir;
  int n = snprintf(conf, sizeof(conf), k_conf, user, d, d, d, d, d, d, d, d,
                   g_nginx.port, g_nginx.port, CAP, CAP + 1, d);
  if (n < 0 || (size_t)n >= sizeof(conf))
    return -1;
  snprintf(path, sizeof(path), "%s/nginx.conf", d);
  if (write_file(path, conf) != 0)
    return -1;

  const char *bin =
      access("/usr/sbin/nginx", X_OK) == 0 ? "/usr/sbin/nginx" : "nginx";
  char prefix[600];
  char errlog[600];
  snprintf(prefix, sizeof(prefix), "%s/", d);
  snprintf(errlog, sizeof(errlog), "%s/error.log", d);
  char *argv[] = {(char *)bin, "-p", prefix, "-c", path, "-e", errlog, NULL};
  char outlog[600];
  snprintf(outlog, sizeof(outlog), "%s/stdout.log", d);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, outlog,
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  int rc = posix_spawnp(&g_nginx.pid, bin, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    g_nginx.pid = 0;
    return -1;
  }
  int64_t start = lk_now_ms();
  while (lk_now_ms() - start < 15000) {
    if (tcp_open(g_nginx.port))
      return 0;
    if (waitpid(g_nginx.pid, NULL, WNOHANG) == g_nginx.pid) {
      g_nginx.pid = 0;
      return -1; /* exited: most likely the port was taken meanwhile */
    }
    usleep(20 * 1000);
  }
  nginx_stop();
  return -1;
}

static int group_setup(void **state) {
  (void)state;
  const char *tmp = getenv("TEST_TMPDIR");
  snprintf(g_nginx.dir, sizeof(g_nginx.dir), "%s/fwd-XXXXXX",
           tmp != NULL ? tmp : "/tmp");
  if (mkdtemp(g_nginx.dir) == NULL) {
    fprintf(stderr, "mkdtemp %s: %s\n", g_nginx.dir, strerror(errno));
    return -1;
  }
  /* A static file larger than CAP: served with a Content-Length. */
  char path[600];
  char big[4 * CAP + 1];
  memset(big, 'b', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  snprintf(path, sizeof(path), "%s/big.txt", g_nginx.dir);
  if (write_file(path, big) != 0)
    return -1;
  for (int attempt = 0; attempt < 5; attempt++) {
    if (nginx_try_start() == 0)
      return 0;
  }
  fprintf(stderr, "nginx did not start; see %s/error.log\n", g_nginx.dir);
  return -1;
}

static int group_teardown(void **state) {
  (void)state;
  nginx_stop();
  nftw(g_nginx.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* ---- requests and outcomes ------------------------------------------- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

/* What one callback saw (guarded by g_mu), copied out of guarded memory. */
typedef struct {
  int calls;
  lk_status status;
  lk_err err;
  long http_status;
  char *body;
  size_t body_len;
  char *headers;
  int64_t sent_us;     /* the result's */
  int64_t answered_us; /* the result's */
  int64_t done_us;     /* when the callback ran */
  /* For the cancellation callback. */
  atomic_int polls;
  int64_t cancel_at_ms; /* 0: never cancel */
} outcome;

static char *copy_secret(const lk_secret *s, size_t *len) {
  size_t n = s != NULL ? lk_secret_len(s) : 0;
  char *p = malloc(n + 1);
  if (p == NULL)
    return NULL;
  if (n > 0)
    memcpy(p, lk_secret_data(s), n);
  p[n] = '\0';
  if (len != NULL)
    *len = n;
  return p;
}

static void on_done(void *ctx, const lk_forward_result *res) {
  outcome *o = ctx;
  pthread_mutex_lock(&g_mu);
  o->calls++;
  o->status = res->status;
  o->err = res->err;
  o->http_status = res->http_status;
  o->sent_us = res->sent_us;
  o->answered_us = res->answered_us;
  o->done_us = lk_now_us();
  if (res->status == LK_OK) {
    free(o->body);
    free(o->headers);
    o->body = copy_secret(res->body, &o->body_len);
    o->headers = copy_secret(res->headers, NULL);
  }
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

static int on_cancelled(void *ctx) {
  outcome *o = ctx;
  atomic_fetch_add(&o->polls, 1);
  return o->cancel_at_ms != 0 && lk_now_ms() >= o->cancel_at_ms;
}

static void outcome_clear(outcome *o) {
  free(o->body);
  free(o->headers);
  memset(o, 0, sizeof(*o));
}

/* Waits (bounded) until each of the n outcomes has had its callback. */
static void wait_done(outcome *o, size_t n) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += WAIT_MS / 1000;
  pthread_mutex_lock(&g_mu);
  size_t done = 0;
  for (;;) {
    done = 0;
    for (size_t i = 0; i < n; i++)
      done += o[i].calls > 0;
    if (done == n)
      break;
    if (pthread_cond_timedwait(&g_cv, &g_mu, &until) == ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&g_mu);
  if (done != n)
    fail_msg("only %zu of %zu transfers completed in %d ms", done, n, WAIT_MS);
}

typedef struct {
  lk_http_request r;
  lk_secret *hdrs[4];
} request;

/* Fills q; headers is a NULL-terminated list of "Name: value" lines. */
static void request_init(request *q, const char *method, const char *url,
                         const char *body, const char *const *headers,
                         const char *userpwd) {
  memset(q, 0, sizeof(*q));
  snprintf(q->r.method, sizeof(q->r.method), "%s", method);
  q->r.url = lk_secret_from(url, strlen(url));
  assert_non_null(q->r.url);
  for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
    assert_true(i < 4);
    q->hdrs[i] = lk_secret_from(headers[i], strlen(headers[i]));
    assert_non_null(q->hdrs[i]);
    q->r.n_headers++;
  }
  q->r.headers = q->hdrs;
  if (body != NULL) {
    q->r.body = lk_secret_from(body, strlen(body));
    assert_non_null(q->r.body);
  }
  if (userpwd != NULL) {
    q->r.userpwd = lk_secret_from(userpwd, strlen(userpwd));
    assert_non_null(q->r.userpwd);
  }
}

static void request_clear(request *q) {
  lk_secret_free(q->r.url);
  for (size_t i = 0; i < q->r.n_headers; i++)
    lk_secret_free(q->hdrs[i]);
  lk_secret_free(q->r.body);
  lk_secret_free(q->r.userpwd);
  memset(q, 0, sizeof(*q));
}

static void url_for(char *out, size_t n, const char *path) {
  snprintf(out, n, "http://127.0.0.1:%d%s", g_nginx.port, path);
}

/* Test fixture: a forwarder with a 1 MiB body cap. */
typedef struct {
  lk_forwarder *f;
} fx;

static int setup(void **state) {
  fx *x = calloc(1, sizeof(*x));
  lk_forward_opts opts = {.max_response_bytes = 1024 * 1024,
                          .max_connections = 16};
  lk_err err;
  if (x == NULL || lk_forwarder_new(&opts, &x->f, &err) != LK_OK) {
    free(x);
    return -1;
  }
  *state = x;
  return 0;
}

static int teardown(void **state) {
  fx *x = *state;
  lk_forwarder_destroy(x->f);
  free(x);
  return 0;
}

/* Sends one request and waits for its outcome. */
static void run_one(lk_forwarder *f, const char *method, const char *path,
                    const char *body, const char *const *headers,
                    const char *userpwd, int64_t timeout_ms, outcome *o) {
  char url[256];
  request q;
  url_for(url, sizeof(url), path);
  request_init(&q, method, url, body, headers, userpwd);
  lk_forwarder_submit(f, &q.r, 1, lk_now_ms() + timeout_ms, on_cancelled,
                      on_done, o);
  wait_done(o, 1);
  request_clear(&q);
}

/* ---- tests ----------------------------------------------------------- */

static void test_get_with_headers(void **state) {
  fx *x = *state;
  outcome o = {0};
  const char *hdrs[] = {"X-Test: hello-forward", NULL};
  int64_t before = lk_now_us();
  run_one(x->f, "GET", "/headers?q=1&r=two", NULL, hdrs, NULL, 20000, &o);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.http_status, 200);
  assert_string_equal(o.body,
                      "method=GET test=hello-forward auth= ua=latchkey/1 "
                      "expect=[] query=q=1&r=two");
  /* Raw header lines of the response, without the status line. */
  assert_non_null(o.headers);
  assert_null(strstr(o.headers, "HTTP/"));
  assert_non_null(strstr(o.headers, "X-Reply: yes\r\n"));
  assert_non_null(strstr(o.headers, "Content-Length: "));
  /* The request was written after the submission, the answer read after
   * that, and both before the callback ran. */
  assert_true(o.sent_us >= before);
  assert_true(o.answered_us >= o.sent_us);
  assert_true(o.answered_us <= o.done_us);
  outcome_clear(&o);
}

/* Several threads submit, some in bursts while the forwarder is busy,
 * some after pauses long enough for it to fall asleep in curl_multi_poll
 * (whose idle wait is 10 s): a submit whose wake-up were lost would wait
 * out that sleep and miss its 4 s deadline. */
enum { SUBMITTERS = 6, PER_SUBMITTER = 40 };

typedef struct {
  lk_forwarder *f;
  unsigned seed;
  request q[PER_SUBMITTER];
  outcome o[PER_SUBMITTER];
  int64_t submitted_ms[PER_SUBMITTER];
} submitter;

static void *submitter_main(void *arg) {
  submitter *s = arg;
  char url[256];
  url_for(url, sizeof(url), "/headers");
  for (int i = 0; i < PER_SUBMITTER; i++) {
    request_init(&s->q[i], "GET", url, NULL, NULL, NULL);
    s->submitted_ms[i] = lk_now_ms();
    lk_forwarder_submit(s->f, &s->q[i].r, 1, s->submitted_ms[i] + 4000, NULL,
                        on_done, &s->o[i]);
    /* Every fourth request ends a burst: pause 0-40 ms so the forwarder
     * goes idle between some submits and is busy during others. */
    if (i % 4 == 3)
      usleep((useconds_t)(rand_r(&s->seed) % 40) * 1000);
  }
  return NULL;
}

static void test_concurrent_submits_are_never_left_asleep(void **state) {
  fx *x = *state;
  submitter *s = calloc(SUBMITTERS, sizeof(*s));
  assert_non_null(s);
  pthread_t th[SUBMITTERS];
  for (int round = 0; round < 3; round++) {
    for (int k = 0; k < SUBMITTERS; k++) {
      memset(&s[k], 0, sizeof(s[k]));
      s[k].f = x->f;
      s[k].seed = (unsigned)(round * SUBMITTERS + k + 1);
      assert_int_equal(pthread_create(&th[k], NULL, submitter_main, &s[k]), 0);
    }
    for (int k = 0; k < SUBMITTERS; k++)
      assert_int_equal(pthread_join(th[k], NULL), 0);
    for (int k = 0; k < SUBMITTERS; k++) {
      wait_done(s[k].o, PER_SUBMITTER);
      for (int i = 0; i < PER_SUBMITTER; i++) {
        outcome *o = &s[k].o[i];
        assert_int_equal(o->calls, 1);
        if (o->status != LK_OK)
          fail_msg("round %d submitter %d request %d: %s", round, k, i,
                   o->err.msg);
        assert_int_equal(o->http_status, 200);
        assert_true(o->done_us / 1000 - s[k].submitted_ms[i] < 4000);
        outcome_clear(o);
        request_clear(&s[k].q[i]);
      }
    }
    /* The forwarder is idle now: one more submit must wake it. */
    outcome o = {0};
    int64_t start = lk_now_ms();
    usleep(100 * 1000);
    run_one(x->f, "GET", "/headers", NULL, NULL, NULL, 4000, &o);
    assert_int_equal(o.status, LK_OK);
    assert_true(o.done_us / 1000 - start < 4000);
    outcome_clear(&o);
  }
  free(s);
}

static void test_basic_credentials_are_sent(void **state) {
  fx *x = *state;
  outcome o = {0};
  run_one(x->f, "GET", "/headers", NULL, NULL, "user:pass", 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_non_null(strstr(o.body, "auth=Basic dXNlcjpwYXNz "));
  outcome_clear(&o);
}

static void test_post_body_arrives(void **state) {
  fx *x = *state;
  outcome o = {0};
  const char *hdrs[] = {"Content-Type: application/json", NULL};
  run_one(x->f, "POST", "/body", "{\"a\":1,\"b\":\"two\"}", hdrs, NULL, 20000,
          &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.http_status, 200);
  assert_string_equal(o.body, "POST:{\"a\":1,\"b\":\"two\"}");
  outcome_clear(&o);

  run_one(x->f, "PUT", "/body", "{\"c\":3}", hdrs, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body, "PUT:{\"c\":3}");
  outcome_clear(&o);

  /* A method that may carry a body, sent without one. */
  run_one(x->f, "PATCH", "/body", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body, "PATCH:");
  outcome_clear(&o);

  run_one(x->f, "DELETE", "/body", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body, "DELETE:");
  outcome_clear(&o);
}

static size_t access_lines(void);

/* The 302 itself comes back; /target never gets a request. */
static void test_redirect_is_not_followed(void **state) {
  fx *x = *state;
  outcome o = {0};
  size_t before = access_lines();
  run_one(x->f, "GET", "/redirect", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.http_status, 302);
  assert_non_null(strstr(o.headers, "Location: "));
  assert_non_null(strstr(o.headers, "/target\r\n"));
  assert_null(strstr(o.body, "target reached"));
  outcome_clear(&o);
  assert_int_equal(access_lines(), before + 1);
}

/* HEAD must not wait for the body its Content-Length announces. */
static void test_head_answers_without_body(void **state) {
  fx *x = *state;
  outcome o = {0};
  run_one(x->f, "HEAD", "/head", NULL, NULL, NULL, 5000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.http_status, 200);
  assert_int_equal(o.body_len, 0);
  assert_non_null(strstr(o.headers, "Content-Length: 12\r\n"));
  outcome_clear(&o);
}

static void test_empty_response_body(void **state) {
  fx *x = *state;
  outcome o = {0};
  run_one(x->f, "GET", "/empty", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.http_status, 204);
  assert_int_equal(o.body_len, 0);
  outcome_clear(&o);
}

static void test_body_cap(void **state) {
  (void)state;
  lk_forwarder *f = NULL;
  lk_forward_opts opts = {.max_response_bytes = CAP};
  lk_err err;
  assert_int_equal(lk_forwarder_new(&opts, &f, &err), LK_OK);
  outcome o = {0};

  /* Exactly at the cap is fine. */
  run_one(f, "GET", "/exact", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.body_len, CAP);
  outcome_clear(&o);

  /* One byte over, streamed without a length. */
  run_one(f, "GET", "/over", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_RESOURCE_EXHAUSTED);
  assert_int_equal(o.err.code, LK_RESOURCE_EXHAUSTED);
  assert_non_null(strstr(o.err.msg, "max-response-bytes"));
  assert_null(o.body);
  outcome_clear(&o);

  /* Over, announced by Content-Length. */
  run_one(f, "GET", "/bigfile", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_RESOURCE_EXHAUSTED);
  assert_non_null(strstr(o.err.msg, "max-response-bytes"));
  outcome_clear(&o);
  lk_forwarder_destroy(f);
}

static void test_deadline_exceeded(void **state) {
  fx *x = *state;
  outcome o = {0};
  int64_t start = lk_now_ms();
  run_one(x->f, "GET", "/hang", NULL, NULL, NULL, 500, &o);
  assert_int_equal(o.status, LK_DEADLINE_EXCEEDED);
  assert_int_equal(o.err.code, LK_DEADLINE_EXCEEDED);
  assert_non_null(strstr(o.err.msg, "before the call's deadline"));
  /* Far less than the 100 s the vendor would take. */
  assert_true(lk_now_ms() - start < 30000);
  outcome_clear(&o);

  /* A deadline already past when submitted. */
  run_one(x->f, "GET", "/slow", NULL, NULL, NULL, -1000, &o);
  assert_int_equal(o.status, LK_DEADLINE_EXCEEDED);
  outcome_clear(&o);
}

static void test_nothing_listening_is_unavailable(void **state) {
  fx *x = *state;
  /* A bound but non-listening socket: connections are refused, and no
   * other process can take the port while we hold it. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  socklen_t sl = sizeof(sin);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", ntohs(sin.sin_port));
  request q;
  request_init(&q, "GET", url, NULL, NULL, NULL);
  outcome o = {0};
  lk_forwarder_submit(x->f, &q.r, 1, lk_now_ms() + 20000, NULL, on_done, &o);
  wait_done(&o, 1);
  close(fd);
  request_clear(&q);
  assert_int_equal(o.status, LK_UNAVAILABLE);
  assert_int_equal(o.err.code, LK_UNAVAILABLE);
  assert_non_null(strstr(o.err.msg, "could not be reached"));
  outcome_clear(&o);
}

static void test_only_http_is_spoken(void **state) {
  fx *x = *state;
  request q;
  request_init(&q, "GET", "file:///etc/hostname", NULL, NULL, NULL);
  outcome o = {0};
  lk_forwarder_submit(x->f, &q.r, 1, lk_now_ms() + 20000, NULL, on_done, &o);
  wait_done(&o, 1);
  request_clear(&q);
  assert_int_equal(o.status, LK_UNAVAILABLE);
  assert_null(o.body);
  outcome_clear(&o);
}

static void test_cancellation_ends_transfer(void **state) {
  fx *x = *state;
  outcome o = {0};
  int64_t start = lk_now_ms();
  o.cancel_at_ms = start + 300;
  run_one(x->f, "GET", "/hang", NULL, NULL, NULL, 40000, &o);
  assert_int_equal(o.status, LK_DEADLINE_EXCEEDED);
  assert_non_null(strstr(o.err.msg, "cancelled"));
  assert_true(atomic_load(&o.polls) > 0);
  /* Well before the 40 s deadline or the vendor's 100 s. */
  assert_true(lk_now_ms() - start < 30000);
  outcome_clear(&o);
}

static void test_slow_transfers_overlap(void **state) {
  fx *x = *state;
  enum { N = 20 };
  request q[N];
  outcome *o = calloc(N, sizeof(outcome));
  assert_non_null(o);
  char url[256];
  url_for(url, sizeof(url), "/slow");
  int64_t start = lk_now_ms();
  for (int i = 0; i < N; i++) {
    request_init(&q[i], "GET", url, NULL, NULL, NULL);
    lk_forwarder_submit(x->f, &q[i].r, 1, start + 50000, NULL, on_done, &o[i]);
  }
  wait_done(o, N);
  int64_t took = lk_now_ms() - start;
  for (int i = 0; i < N; i++) {
    assert_int_equal(o[i].calls, 1);
    assert_int_equal(o[i].status, LK_OK);
    assert_string_equal(o[i].body, "slept\n");
    outcome_clear(&o[i]);
    request_clear(&q[i]);
  }
  free(o);
  /* Serially this takes 20 s; overlapped, about one. */
  assert_true(took < 10000);
}

static void test_keepalive_reuses_connection(void **state) {
  fx *x = *state;
  long first_conn = -1;
  long last_reqs = 0;
  for (int i = 0; i < 5; i++) {
    outcome o = {0};
    run_one(x->f, "GET", "/conn", NULL, NULL, NULL, 20000, &o);
    assert_int_equal(o.status, LK_OK);
    long conn = -1;
    long reqs = -1;
    assert_int_equal(sscanf(o.body, "%ld %ld", &conn, &reqs), 2);
    if (i == 0)
      first_conn = conn;
    assert_int_equal(conn, first_conn);
    assert_true(reqs > last_reqs);
    last_reqs = reqs;
    outcome_clear(&o);
  }
  assert_true(last_reqs >= 5);
}

static void test_destroy_fails_in_flight(void **state) {
  (void)state;
  lk_forwarder *f = NULL;
  lk_forward_opts opts = {.max_response_bytes = 1024};
  lk_err err;
  assert_int_equal(lk_forwarder_new(&opts, &f, &err), LK_OK);
  enum { RUNNING = 3, QUEUED = 2 };
  request q[RUNNING + QUEUED];
  outcome o[RUNNING + QUEUED];
  memset(o, 0, sizeof(o));
  char url[256];
  url_for(url, sizeof(url), "/hang");
  for (int i = 0; i < RUNNING; i++) {
    request_init(&q[i], "GET", url, NULL, NULL, NULL);
    lk_forwarder_submit(f, &q[i].r, 1, lk_now_ms() + 50000, on_cancelled,
                        on_done, &o[i]);
  }
  /* The loop polls cancellation only for transfers it is running. */
  int64_t start = lk_now_ms();
  for (int i = 0; i < RUNNING; i++) {
    while (atomic_load(&o[i].polls) == 0 && lk_now_ms() - start < WAIT_MS)
      usleep(5 * 1000);
    assert_true(atomic_load(&o[i].polls) > 0);
  }
  for (int i = RUNNING; i < RUNNING + QUEUED; i++) {
    request_init(&q[i], "GET", url, NULL, NULL, NULL);
    lk_forwarder_submit(f, &q[i].r, 1, lk_now_ms() + 50000, NULL, on_done,
                        &o[i]);
  }
  lk_forwarder_destroy(f);
  /* Every callback ran, exactly once, before destroy returned. */
  for (int i = 0; i < RUNNING + QUEUED; i++) {
    assert_int_equal(o[i].calls, 1);
    assert_int_equal(o[i].status, LK_UNAVAILABLE);
    assert_int_equal(o[i].err.code, LK_UNAVAILABLE);
    outcome_clear(&o[i]);
    request_clear(&q[i]);
  }
  lk_forwarder_destroy(NULL);
}

/* Sends GET path with the given allow_private and waits. */
static void run_dest(lk_forwarder *f, const char *url, int allow_private,
                     outcome *o) {
  request q;
  request_init(&q, "GET", url, NULL, NULL, NULL);
  lk_forwarder_submit(f, &q.r, allow_private, lk_now_ms() + 20000, NULL,
                      on_done, o);
  wait_done(o, 1);
  request_clear(&q);
}

/* Lines in nginx's access log so far. */
static size_t count_access_lines(void) {
  char path[600];
  snprintf(path, sizeof(path), "%s/access.log", g_nginx.dir);
  FILE *fp = fopen(path, "r");
  if (fp == NULL)
    return 0;
  size_t n = 0;
  int c;
  while ((c = fgetc(fp)) != EOF)
    n += c == '\n';
  fclose(fp);
  return n;
}

/* Lines in nginx's access log once it has settled: nginx writes a line
 * after it has answered, so the last request of a test may land after
 * the next test has started counting. Settled = unchanged for 50 ms. */
static size_t access_lines(void) {
  size_t n = count_access_lines();
  for (int i = 0; i < 40; i++) {
    usleep(50 * 1000);
    size_t again = count_access_lines();
    if (again == n)
      break;
    n = again;
  }
  return n;
}

static void test_loopback_refused_unless_allowed(void **state) {
  fx *x = *state;
  char url[256];
  url_for(url, sizeof(url), "/headers");
  size_t before = access_lines();
  outcome o = {0};
  run_dest(x->f, url, 0, &o);
  assert_int_equal(o.status, LK_FAILED_PRECONDITION);
  assert_int_equal(o.err.code, LK_FAILED_PRECONDITION);
  assert_non_null(strstr(o.err.msg, "private address (127.0.0.1)"));
  assert_non_null(strstr(o.err.msg, "--allow-insecure-vendors"));
  assert_null(o.body);
  outcome_clear(&o);

  /* By name: the check is on the resolved address, not the host string. */
  snprintf(url, sizeof(url), "http://localhost:%d/headers", g_nginx.port);
  run_dest(x->f, url, 0, &o);
  assert_int_equal(o.status, LK_FAILED_PRECONDITION);
  assert_non_null(strstr(o.err.msg, "private address"));
  outcome_clear(&o);

  /* Allowed, the same vendor answers; a refused request afterwards is
   * still refused even though an allowed connection now exists. */
  url_for(url, sizeof(url), "/headers");
  run_dest(x->f, url, 1, &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.http_status, 200);
  outcome_clear(&o);
  snprintf(url, sizeof(url), "http://127.0.0.2:%d/headers", g_nginx.port);
  run_dest(x->f, url, 0, &o);
  assert_int_equal(o.status, LK_FAILED_PRECONDITION);
  outcome_clear(&o);

  /* Only the allowed request reached nginx (its log line is written when
   * the response is sent, so it is there by now). */
  assert_int_equal(access_lines(), before + 1);
}

static void test_never_allowed_addresses(void **state) {
  fx *x = *state;
  const char *urls[] = {"http://0.0.0.0:9/x", "http://[::]:9/x",
                        "http://[::ffff:0.0.0.0]:9/x"};
  for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
    outcome o = {0};
    run_dest(x->f, urls[i], 1, &o);
    assert_int_equal(o.status, LK_FAILED_PRECONDITION);
    assert_non_null(strstr(o.err.msg, "never allowed"));
    outcome_clear(&o);
  }
}

/* A forwarder whose DNS answer for every name is pinned by entry. */
static lk_forwarder *resolving_forwarder(const char *entry) {
  lk_forward_opts opts = {.max_response_bytes = 1024 * 1024,
                          .max_connections = 16,
                          .test_only_resolve = entry};
  lk_forwarder *f = NULL;
  lk_err err;
  lk_err_clear(&err);
  if (lk_forwarder_new(&opts, &f, &err) != LK_OK)
    fail_msg("lk_forwarder_new: %s", err.msg);
  return f;
}

static void test_name_resolving_to_loopback_is_refused(void **state) {
  (void)state;
  char entry[128];
  char url[256];
  snprintf(entry, sizeof(entry), "vendor.test:%d:127.0.0.1", g_nginx.port);
  snprintf(url, sizeof(url), "http://vendor.test:%d/headers", g_nginx.port);
  lk_forwarder *f = resolving_forwarder(entry);
  size_t before = access_lines();
  outcome o = {0};
  run_dest(f, url, 0, &o);
  assert_int_equal(o.status, LK_FAILED_PRECONDITION);
  assert_string_equal(o.err.msg,
                      "the vendor's host resolves to a private address "
                      "(127.0.0.1); only loopback vendors may, with "
                      "--allow-insecure-vendors");
  assert_null(o.body);
  outcome_clear(&o);
  lk_forwarder_destroy(f);
  assert_int_equal(access_lines(), before);
}

static void test_name_resolving_to_private_ranges_is_refused(void **state) {
  (void)state;
  static const struct {
    const char *addr, *shown;
  } cases[] = {
      {"10.1.2.3", "10.1.2.3"},
      {"172.16.5.4", "172.16.5.4"},
      {"192.168.1.1", "192.168.1.1"},
      {"100.64.0.1", "100.64.0.1"},
      {"127.9.9.9", "127.9.9.9"},
      {"[fd00::1]", "fd00::1"},
      {"[::1]", "::1"},
      {"[::ffff:10.0.0.1]", "::ffff:10.0.0.1"},
      {"[fd00:ec2::254]", "fd00:ec2::254"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char entry[128];
    char want[128];
    snprintf(entry, sizeof(entry), "inside.test:443:%s", cases[i].addr);
    snprintf(want, sizeof(want), "private address (%s)", cases[i].shown);
    lk_forwarder *f = resolving_forwarder(entry);
    outcome o = {0};
    run_dest(f, "https://inside.test/x", 0, &o);
    assert_int_equal(o.status, LK_FAILED_PRECONDITION);
    if (strstr(o.err.msg, want) == NULL)
      fail_msg("%s: message '%s' lacks '%s'", cases[i].addr, o.err.msg, want);
    outcome_clear(&o);
    lk_forwarder_destroy(f);
  }
}

static void test_name_resolving_to_metadata_or_link_local_is_never_allowed(
    void **state) {
  (void)state;
  static const struct {
    const char *addr, *shown;
  } cases[] = {
      {"169.254.169.254", "169.254.169.254"},
      {"169.254.0.1", "169.254.0.1"},
      {"[fe80::1]", "fe80::1"},
      {"[::ffff:169.254.169.254]", "::ffff:169.254.169.254"},
      {"0.0.0.0", "0.0.0.0"},
      {"224.0.0.1", "224.0.0.1"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char entry[128];
    char want[128];
    snprintf(entry, sizeof(entry), "metadata.test:80:%s", cases[i].addr);
    snprintf(want, sizeof(want), "(%s), which is never allowed",
             cases[i].shown);
    lk_forwarder *f = resolving_forwarder(entry);
    outcome o = {0};
    /* Even a request that may reach private addresses. */
    run_dest(f, "http://metadata.test/latest/meta-data/", 1, &o);
    assert_int_equal(o.status, LK_FAILED_PRECONDITION);
    if (strstr(o.err.msg, want) == NULL)
      fail_msg("%s: message '%s' lacks '%s'", cases[i].addr, o.err.msg, want);
    outcome_clear(&o);
    lk_forwarder_destroy(f);
  }
}

/* The name resolves to a metadata address (refused) and then to a
 * loopback port where nothing listens (allowed, and the connect fails):
 * the failure is the unreachable vendor, not a refusal. */
static void test_refused_address_then_failed_allowed_one_is_unavailable(
    void **state) {
  (void)state;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  socklen_t sl = sizeof(sin);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
  int port = ntohs(sin.sin_port);
  char entry[128];
  char url[256];
  snprintf(entry, sizeof(entry), "two.test:%d:169.254.169.254,127.0.0.1", port);
  snprintf(url, sizeof(url), "http://two.test:%d/x", port);
  lk_forwarder *f = resolving_forwarder(entry);
  outcome o = {0};
  run_dest(f, url, 1, &o);
  close(fd);
  assert_int_equal(o.status, LK_UNAVAILABLE);
  if (strstr(o.err.msg, "could not be reached") == NULL)
    fail_msg("message '%s' is not the unreachable vendor's", o.err.msg);
  outcome_clear(&o);
  lk_forwarder_destroy(f);
}

/* The name is not in any resolver but the pinned answer, and nginx also
 * listens on 127.0.0.2: the request arrives on exactly the address the
 * name was resolved (and checked) to, with the name as Host. */
static void test_allowed_name_connects_to_the_address_it_resolved_to(
    void **state) {
  (void)state;
  char entry[128];
  char url[256];
  char want[128];
  snprintf(entry, sizeof(entry), "pinned.test:%d:127.0.0.2", g_nginx.port);
  snprintf(url, sizeof(url), "http://pinned.test:%d/addr", g_nginx.port);
  snprintf(want, sizeof(want), "127.0.0.2 pinned.test:%d", g_nginx.port);
  lk_forwarder *f = resolving_forwarder(entry);
  for (int i = 0; i < 2; i++) {
    outcome o = {0};
    run_dest(f, url, 1, &o);
    assert_int_equal(o.status, LK_OK);
    assert_int_equal(o.http_status, 200);
    assert_string_equal(o.body, want);
    outcome_clear(&o);
  }
  lk_forwarder_destroy(f);
}

/* A keep-alive connection opened for a request that allowed loopback is
 * not used for one that does not: each request is checked on the peer of
 * the socket it would be written to, not only when a socket opens. */
static void test_reused_connection_is_checked_for_each_request(void **state) {
  fx *x = *state;
  char url[256];
  url_for(url, sizeof(url), "/conn");
  size_t before = access_lines();
  outcome o = {0};
  run_dest(x->f, url, 1, &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.http_status, 200);
  outcome_clear(&o);
  run_dest(x->f, url, 0, &o);
  assert_int_equal(o.status, LK_FAILED_PRECONDITION);
  assert_string_equal(o.err.msg,
                      "the vendor's host resolves to a private address "
                      "(127.0.0.1); only loopback vendors may, with "
                      "--allow-insecure-vendors");
  outcome_clear(&o);
  /* The connection is still good for a request that may use it. */
  run_dest(x->f, url, 1, &o);
  assert_int_equal(o.status, LK_OK);
  outcome_clear(&o);
  assert_int_equal(access_lines(), before + 2);
}

/* Finished transfers' easy handles are reset and reused (the pool is
 * last-in first-out, and these requests run one at a time, so each one
 * after the first runs on the handle of the one before). Nothing of a
 * request carries over to the next: not its headers, credentials, method,
 * body or HEAD mode, and not its permission to reach private addresses,
 * neither on a new connection (127.0.0.2) nor on the keep-alive one. */
/* Waits (bounded) until f keeps want handles for reuse. */
static void wait_pooled(lk_forwarder *f, size_t want) {
  int64_t end = lk_now_ms() + 2000;
  while (lk_forwarder_pooled(f) != want) {
    if (lk_now_ms() > end)
      fail_msg("the forwarder keeps %zu handles, not %zu",
               lk_forwarder_pooled(f), want);
    usleep(1000);
  }
}

/* curl keeps the parsed URL and basic authentication's user name and
 * password in a handle's own state past curl_easy_reset: a handle that
 * carried a credential there is freed (wiped), never kept for reuse. The
 * handle goes back right after the callback, on the forwarder thread, so
 * 200 ms is far longer than it takes. */
static void test_handles_with_a_credential_in_url_or_basic_auth_are_freed(
    void **state) {
  fx *x = *state;
  outcome o = {0};
  assert_int_equal(lk_forwarder_pooled(x->f), 0);
  run_one(x->f, "GET", "/headers", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.http_status, 200);
  outcome_clear(&o);
  wait_pooled(x->f, 1);

  run_one(x->f, "GET", "/headers", NULL, NULL, "user:pass", 20000, &o);
  assert_int_equal(o.http_status, 200);
  outcome_clear(&o);
  usleep(200 * 1000);
  assert_int_equal(lk_forwarder_pooled(x->f), 0);

  run_one(x->f, "GET", "/headers", NULL, NULL, NULL, 20000, &o);
  outcome_clear(&o);
  wait_pooled(x->f, 1);

  char url[256];
  request q;
  url_for(url, sizeof(url), "/headers?api_key=query-secret");
  request_init(&q, "GET", url, NULL, NULL, NULL);
  q.r.url_has_credential = 1;
  lk_forwarder_submit(x->f, &q.r, 1, lk_now_ms() + 20000, on_cancelled, on_done,
                      &o);
  wait_done(&o, 1);
  request_clear(&q);
  assert_int_equal(o.http_status, 200);
  outcome_clear(&o);
  usleep(200 * 1000);
  assert_int_equal(lk_forwarder_pooled(x->f), 0);
}

static void test_reused_handle_keeps_nothing_of_the_last_request(void **state) {
  fx *x = *state;
  char url[256];
  size_t before = access_lines();
  outcome o = {0};

  /* 1: allowed, with a header and basic credentials. */
  const char *hdrs[] = {"X-Test: from-request-one", NULL};
  run_one(x->f, "GET", "/headers", NULL, hdrs, "user:pass", 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body,
                      "method=GET test=from-request-one "
                      "auth=Basic dXNlcjpwYXNz ua=latchkey/1 "
                      "expect=[] query=");
  outcome_clear(&o);

  /* 2 and 3: not allowed, on a new connection and on the kept one. */
  snprintf(url, sizeof(url), "http://127.0.0.2:%d/headers", g_nginx.port);
  run_dest(x->f, url, 0, &o);
  assert_int_equal(o.status, LK_FAILED_PRECONDITION);
  assert_string_equal(o.err.msg,
                      "the vendor's host resolves to a private address "
                      "(127.0.0.2); only loopback vendors may, with "
                      "--allow-insecure-vendors");
  outcome_clear(&o);
  url_for(url, sizeof(url), "/headers");
  run_dest(x->f, url, 0, &o);
  assert_int_equal(o.status, LK_FAILED_PRECONDITION);
  assert_non_null(strstr(o.err.msg, "private address (127.0.0.1)"));
  outcome_clear(&o);

  /* 4: allowed again, bare: no header or credential of request 1. */
  run_one(x->f, "GET", "/headers", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body,
                      "method=GET test= auth= ua=latchkey/1 "
                      "expect=[] query=");
  outcome_clear(&o);

  /* 5 and 6: a POST body does not ride along on the next GET. */
  run_one(x->f, "POST", "/body", "secret-body", NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body, "POST:secret-body");
  outcome_clear(&o);
  run_one(x->f, "GET", "/body", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body, "GET:");
  outcome_clear(&o);

  /* 7 and 8: HEAD's no-body mode does not stick. */
  run_one(x->f, "HEAD", "/head", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_int_equal(o.body_len, 0);
  outcome_clear(&o);
  run_one(x->f, "GET", "/head", NULL, NULL, NULL, 20000, &o);
  assert_int_equal(o.status, LK_OK);
  assert_string_equal(o.body, "twelve bytes");
  outcome_clear(&o);

  /* The refused requests never reached nginx. */
  assert_int_equal(access_lines(), before + 6);
}

static void test_literal_private_hosts(void **state) {
  (void)state;
  const char *yes[] = {
      "http://127.0.0.1:8080/x", "https://localhost",
      "https://LOCALHOST:1/",    "http://[::1]:80/",
      "https://10.1.2.3/v1",     "https://172.31.0.1",
      "https://192.168.0.1?x",   "https://100.64.0.1#f",
      "https://[fd12::1]/",      "https://[::ffff:127.0.0.1]/"};
  const char *no[] = {
      "https://api.example.com", "https://8.8.8.8/",
      "https://172.32.0.1/",     "https://169.254.169.254/",
      "https://[fe80::1]/",      "https://[ff02::1]/",
      "https://0.0.0.0/",        "https://localhost.example.com/",
      "https://user@127.0.0.1/", "https://127.1/",
      "https://[2001:db8::1]/",  "no-scheme"};
  for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
    if (!lk_forward_url_host_is_private(yes[i]))
      fail_msg("%s should count as a literal private host", yes[i]);
  }
  for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
    if (lk_forward_url_host_is_private(no[i]))
      fail_msg("%s should not count as a literal private host", no[i]);
  }
}

int main(void) {
  lk_err err;
  if (lk_forward_global_init(&err) != LK_OK) {
    fprintf(stderr, "lk_forward_global_init: %s\n", err.msg);
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_get_with_headers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_basic_credentials_are_sent, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_concurrent_submits_are_never_left_asleep, setup, teardown),
      cmocka_unit_test_setup_teardown(test_post_body_arrives, setup, teardown),
      cmocka_unit_test_setup_teardown(test_redirect_is_not_followed, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_head_answers_without_body, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_empty_response_body, setup,
                                      teardown),
      cmocka_unit_test(test_body_cap),
      cmocka_unit_test_setup_teardown(test_deadline_exceeded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nothing_listening_is_unavailable,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_only_http_is_spoken, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_cancellation_ends_transfer, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_slow_transfers_overlap, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_keepalive_reuses_connection, setup,
                                      teardown),
      cmocka_unit_test(test_destroy_fails_in_flight),
      cmocka_unit_test_setup_teardown(test_loopback_refused_unless_allowed,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_never_allowed_addresses, setup,
                                      teardown),
      cmocka_unit_test(test_literal_private_hosts),
      cmocka_unit_test(test_name_resolving_to_loopback_is_refused),
      cmocka_unit_test(test_name_resolving_to_private_ranges_is_refused),
      cmocka_unit_test(
          test_refused_address_then_failed_allowed_one_is_unavailable),
      cmocka_unit_test(
          test_name_resolving_to_metadata_or_link_local_is_never_allowed),
      cmocka_unit_test(
          test_allowed_name_connects_to_the_address_it_resolved_to),
      cmocka_unit_test_setup_teardown(
          test_reused_connection_is_checked_for_each_request, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_reused_handle_keeps_nothing_of_the_last_request, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_handles_with_a_credential_in_url_or_basic_auth_are_freed, setup,
          teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
