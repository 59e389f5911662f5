/*
 * etcd_test.c - proves lib/etcd's contract against a real etcd (Debian's
 * etcd-server, /usr/bin/etcd): each group starts a single-node etcd on
 * free loopback ports with a private data dir (tests/unit/etcd_fixture),
 * and stops it at the end.
 *
 * Group "live": txn put then get; absent keys; prefix isolation (also
 * between "/p/" and "/p-x/"); a 1200-key range paged at one revision even
 * while keys change under it; txn compare success and the exact conflict
 * error naming the key that moved; the builder's op cap; delete and
 * delete_prefix; watch order and revisions, resume after stop/start, and
 * "from now"; progress notifications reaching batch_end; etcd's fragments
 * joined into one batch; compaction seen by
 * range, watch and compact itself with the compact revision; failover past
 * a refused endpoint and past one that accepts but never answers; bad
 * endpoint lists.
 *
 * Group "outage": etcd killed under a running watch (LK_UNAVAILABLE to the
 * error callback, to unary calls within the deadline), then restarted on
 * the same ports and data: the watch resumes with nothing lost or repeated.
 *
 * Every wait is bounded; time bounds are functional (seconds), not tight.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/clock.h"
#include "lib/etcd.h"
#include "lib/status.h"
#include "tests/unit/etcd_fixture.h"

/* How long any single wait may take before the test fails. */
#define WAIT_MS 30000

/* ---- etcd process ------------------------------------------------------ */

static etcd_fx g_etcd;

static int etcd_group_setup(void **state) {
  (void)state;
  return etcd_fx_start(&g_etcd);
}

static int etcd_group_teardown(void **state) {
  (void)state;
  etcd_fx_stop(&g_etcd);
  return 0;
}

/* ---- helpers ----------------------------------------------------------- */

static lk_etcd *open_client(const char *prefix) {
  lk_etcd *e = NULL;
  lk_err err;
  lk_status rc = lk_etcd_open(g_etcd.ep, prefix, &e, &err);
  if (rc != LK_OK)
    fail_msg("lk_etcd_open: %s", err.msg);
  return e;
}

/* Commits one put and returns its revision. */
static int64_t put(lk_etcd *e, const char *key, const char *val) {
  lk_etcd_txn *t = lk_etcd_txn_new();
  assert_non_null(t);
  lk_etcd_txn_put(t, key, (const unsigned char *)val, strlen(val));
  int64_t rev = 0;
  lk_err err;
  lk_status rc = lk_etcd_txn_commit(e, t, &rev, &err);
  lk_etcd_txn_destroy(t);
  if (rc != LK_OK)
    fail_msg("put %s: %s: %s", key, lk_status_name(rc), err.msg);
  assert_true(rev > 0);
  return rev;
}

static int64_t del(lk_etcd *e, const char *key, int prefix) {
  lk_etcd_txn *t = lk_etcd_txn_new();
  assert_non_null(t);
  if (prefix)
    lk_etcd_txn_delete_prefix(t, key);
  else
    lk_etcd_txn_delete(t, key);
  int64_t rev = 0;
  lk_err err;
  lk_status rc = lk_etcd_txn_commit(e, t, &rev, &err);
  lk_etcd_txn_destroy(t);
  if (rc != LK_OK)
    fail_msg("delete %s: %s", key, err.msg);
  return rev;
}

/* Asserts key holds want (NULL: absent). */
static void expect_kv(lk_etcd *e, const char *key, const char *want) {
  unsigned char *v = NULL;
  size_t n = 0;
  int64_t mod = 0;
  lk_err err;
  lk_status rc = lk_etcd_get(e, key, &v, &n, &mod, &err);
  if (want == NULL) {
    assert_int_equal(rc, LK_NOT_FOUND);
    assert_null(v);
    return;
  }
  if (rc != LK_OK)
    fail_msg("get %s: %s", key, err.msg);
  assert_int_equal(n, strlen(want));
  assert_memory_equal(v, want, n);
  assert_int_equal(v[n], '\0');
  assert_true(mod > 0);
  lk_etcd_value_free(v, n);
}

/* Collects range results. */
typedef struct {
  size_t n;
  char keys[1300][32];
  char vals[1300][32];
  int64_t mods[1300];
  /* Optional: run once, in the middle of the scan. */
  void (*mid)(void *);
  void *mid_arg;
  size_t mid_at;
} scan;

static int scan_fn(void *ctx, const char *key, const unsigned char *val,
                   size_t len, int64_t mod) {
  scan *s = ctx;
  if (s->n >= 1300)
    return 1;
  snprintf(s->keys[s->n], sizeof(s->keys[0]), "%s", key);
  snprintf(s->vals[s->n], sizeof(s->vals[0]), "%.*s", (int)len,
           (const char *)val);
  s->mods[s->n] = mod;
  s->n++;
  if (s->mid != NULL && s->n == s->mid_at)
    s->mid(s->mid_arg);
  return 0;
}

/* Collects watch callbacks. */
typedef struct {
  int del;
  char key[48];
  char val[48]; /* the first bytes */
  size_t len;
  int64_t rev;
} ev_rec;

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ev_rec ev[1024];
  size_t n_ev;
  int64_t batch[256];
  size_t n_batch;
  int n_fatal;
  lk_status fatal_code;
  int64_t fatal_compact;
  char fatal_msg[512];
  int n_unavailable;
} watcher;

static void watcher_init(watcher *w) {
  memset(w, 0, sizeof(*w));
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
}

static void watcher_destroy(watcher *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

static void on_event(void *ctx, int is_delete, const char *key,
                     const unsigned char *val, size_t len, int64_t rev) {
  watcher *w = ctx;
  pthread_mutex_lock(&w->mu);
  if (w->n_ev < 1024) {
    ev_rec *r = &w->ev[w->n_ev++];
    r->del = is_delete;
    snprintf(r->key, sizeof(r->key), "%s", key);
    snprintf(r->val, sizeof(r->val), "%.*s", (int)len,
             val != NULL ? (const char *)val : "");
    r->len = len;
    r->rev = rev;
  }
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void on_batch_end(void *ctx, int64_t rev) {
  watcher *w = ctx;
  pthread_mutex_lock(&w->mu);
  if (w->n_batch < 256)
    w->batch[w->n_batch++] = rev;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void on_error(void *ctx, lk_status code, int64_t compact,
                     const char *msg) {
  watcher *w = ctx;
  pthread_mutex_lock(&w->mu);
  if (code == LK_UNAVAILABLE) {
    w->n_unavailable++;
  } else {
    w->n_fatal++;
    w->fatal_code = code;
    w->fatal_compact = compact;
    snprintf(w->fatal_msg, sizeof(w->fatal_msg), "%s", msg);
  }
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
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

typedef enum {
  UNTIL_EVENTS,
  UNTIL_BATCHES,
  UNTIL_FATAL,
  UNTIL_UNAVAILABLE
} until_kind;

/* Waits (bounded) until the watcher has at least n of kind. */
static void wait_until(watcher *w, until_kind kind, size_t n) {
  struct timespec until = abs_in_ms(WAIT_MS);
  size_t have = 0;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    have = kind == UNTIL_EVENTS    ? w->n_ev
           : kind == UNTIL_BATCHES ? w->n_batch
           : kind == UNTIL_FATAL   ? (size_t)w->n_fatal
                                   : (size_t)w->n_unavailable;
    if (have >= n)
      break;
    if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&w->mu);
  if (have < n)
    fail_msg("watch: only %zu of %zu callbacks (kind %d) arrived", have, n,
             (int)kind);
}

static lk_etcd_watch *start_watch(lk_etcd *e, const char *prefix, int64_t rev,
                                  watcher *w) {
  lk_etcd_watch *wt = NULL;
  lk_err err;
  lk_status rc = lk_etcd_watch_start(e, prefix, rev, on_event, on_batch_end,
                                     on_error, w, &wt, &err);
  if (rc != LK_OK)
    fail_msg("lk_etcd_watch_start: %s", err.msg);
  return wt;
}

static void expect_event(const watcher *w, size_t i, int is_del,
                         const char *key, const char *val, int64_t rev) {
  const ev_rec *r = &w->ev[i];
  if (r->del != is_del || strcmp(r->key, key) != 0 ||
      strcmp(r->val, val) != 0 || r->rev != rev)
    fail_msg("event %zu: got (%s %s=%s @%lld), want (%s %s=%s @%lld)", i,
             r->del ? "del" : "put", r->key, r->val, (long long)r->rev,
             is_del ? "del" : "put", key, val, (long long)rev);
}

/* ---- tests: basics ------------------------------------------------------ */

static void txn_put_then_get_returns_value_and_revision(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-basic/");
  int64_t rev = put(e, "tool/weather", "v1");
  unsigned char *v = NULL;
  size_t n = 0;
  int64_t mod = 0;
  lk_err err;
  assert_int_equal(lk_etcd_get(e, "tool/weather", &v, &n, &mod, &err), LK_OK);
  assert_int_equal(n, 2);
  assert_memory_equal(v, "v1", 2);
  assert_int_equal(mod, rev);
  lk_etcd_value_free(v, n);

  /* Binary values with NUL bytes round-trip whole. */
  static const unsigned char bin[] = {0, 1, 2, 0xff, 0, 'x'};
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_put(t, "bin", bin, sizeof(bin));
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err), LK_OK);
  lk_etcd_txn_destroy(t);
  assert_int_equal(lk_etcd_get(e, "bin", &v, &n, NULL, &err), LK_OK);
  assert_int_equal(n, sizeof(bin));
  assert_memory_equal(v, bin, sizeof(bin));
  lk_etcd_value_free(v, n);
  lk_etcd_close(e);
}

static void get_of_absent_key_is_not_found(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-absent/");
  unsigned char *v = (unsigned char *)"sentinel";
  size_t n = 7;
  lk_err err;
  assert_int_equal(lk_etcd_get(e, "nope", &v, &n, NULL, &err), LK_NOT_FOUND);
  assert_null(v);
  assert_int_equal(n, 0);
  assert_non_null(strstr(err.msg, "nope"));
  lk_etcd_close(e);
}

static void keys_outside_the_prefix_are_invisible(void **state) {
  (void)state;
  lk_etcd *a = open_client("/iso/");
  lk_etcd *b = open_client("/iso-x/"); /* "/iso" is a prefix of it */
  lk_etcd *root = open_client("/");
  put(a, "k", "from-a");
  put(b, "k", "from-b");
  put(root, "iso", "bare"); /* the key "/iso": outside "/iso/" */
  expect_kv(a, "k", "from-a");
  expect_kv(b, "k", "from-b");
  expect_kv(root, "iso/k", "from-a");

  scan s;
  memset(&s, 0, sizeof(s));
  lk_err err;
  assert_int_equal(lk_etcd_range(a, "", 0, scan_fn, &s, NULL, &err), LK_OK);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.keys[0], "k");
  assert_string_equal(s.vals[0], "from-a");

  /* Deleting everything under b's prefix leaves a's keys alone. */
  del(b, "", 1);
  expect_kv(b, "k", NULL);
  expect_kv(a, "k", "from-a");
  expect_kv(root, "iso", "bare");
  lk_etcd_close(a);
  lk_etcd_close(b);
  lk_etcd_close(root);
}

/* ---- tests: range ------------------------------------------------------- */

typedef struct {
  lk_etcd *e;
} mid_ctx;

/* Runs in the middle of a scan: changes a key the scan has not reached,
 * adds one it would reach, and deletes one it would reach. */
static void change_during_scan(void *arg) {
  mid_ctx *m = arg;
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_put(t, "k1100", (const unsigned char *)"changed", 7);
  lk_etcd_txn_put(t, "k0900x", (const unsigned char *)"new", 3);
  lk_etcd_txn_delete(t, "k1150");
  lk_err err;
  if (lk_etcd_txn_commit(m->e, t, NULL, &err) != LK_OK)
    fail_msg("mid-scan txn: %s", err.msg);
  lk_etcd_txn_destroy(t);
}

static void range_pages_1200_keys_in_order_at_one_revision(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-range/");
  char key[32], val[32];
  int64_t last = 0;
  for (int base = 0; base < 1200; base += 100) {
    lk_etcd_txn *t = lk_etcd_txn_new();
    for (int i = base; i < base + 100; i++) {
      snprintf(key, sizeof(key), "k%04d", i);
      snprintf(val, sizeof(val), "v%d", i);
      lk_etcd_txn_put(t, key, (const unsigned char *)val, strlen(val));
    }
    lk_err err;
    assert_int_equal(lk_etcd_txn_commit(e, t, &last, &err), LK_OK);
    lk_etcd_txn_destroy(t);
  }
  put(e, "zzz-other", "x"); /* under the prefix, outside "k" */

  static scan s;
  memset(&s, 0, sizeof(s));
  mid_ctx m = {e};
  s.mid = change_during_scan;
  s.mid_arg = &m;
  s.mid_at = 700; /* on the second page; pages are 500 keys */
  int64_t hdr = 0;
  lk_err err;
  assert_int_equal(lk_etcd_range(e, "k", 0, scan_fn, &s, &hdr, &err), LK_OK);
  assert_int_equal(s.n, 1200);
  assert_true(hdr >= last);
  for (int i = 0; i < 1200; i++) {
    snprintf(key, sizeof(key), "k%04d", i);
    snprintf(val, sizeof(val), "v%d", i);
    assert_string_equal(s.keys[i], key);
    assert_string_equal(s.vals[i], val); /* k1100 still has its old value */
    assert_true(s.mods[i] <= hdr);
  }

  /* The same range now sees the change, and at the old revision does not. */
  static scan s2;
  memset(&s2, 0, sizeof(s2));
  int64_t hdr2 = 0;
  assert_int_equal(lk_etcd_range(e, "k", 0, scan_fn, &s2, &hdr2, &err), LK_OK);
  assert_int_equal(s2.n, 1200); /* +k0900x, -k1150 */
  assert_true(hdr2 > hdr);
  memset(&s2, 0, sizeof(s2));
  int64_t hdr3 = 0;
  assert_int_equal(lk_etcd_range(e, "k", hdr, scan_fn, &s2, &hdr3, &err),
                   LK_OK);
  assert_int_equal(hdr3, hdr);
  assert_int_equal(s2.n, 1200);
  assert_string_equal(s2.vals[1100], "v1100");

  /* A nonzero return stops the scan early. */
  memset(&s2, 0, sizeof(s2));
  s2.n = 1299;
  assert_int_equal(lk_etcd_range(e, "k", 0, scan_fn, &s2, NULL, &err), LK_OK);
  assert_int_equal(s2.n, 1300);
  lk_etcd_close(e);
}

/* ---- tests: transactions ------------------------------------------------ */

static void txn_commits_when_expectations_hold(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-cas/");
  lk_err err;
  int64_t r1 = 0, r2 = 0;

  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_expect_mod_revision(t, "cred/1", 0); /* must not exist */
  lk_etcd_txn_put(t, "cred/1", (const unsigned char *)"a", 1);
  assert_int_equal(lk_etcd_txn_commit(e, t, &r1, &err), LK_OK);
  lk_etcd_txn_destroy(t);

  t = lk_etcd_txn_new();
  lk_etcd_txn_expect_mod_revision(t, "cred/1", r1);
  lk_etcd_txn_put(t, "cred/1", (const unsigned char *)"b", 1);
  lk_etcd_txn_put(t, "cred/2", (const unsigned char *)"c", 1);
  assert_int_equal(lk_etcd_txn_commit(e, t, &r2, &err), LK_OK);
  lk_etcd_txn_destroy(t);
  assert_true(r2 > r1);
  expect_kv(e, "cred/1", "b");
  expect_kv(e, "cred/2", "c");
  lk_etcd_close(e);
}

static void txn_conflict_is_failed_precondition_naming_the_key(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-conflict/");
  lk_err err;
  int64_t ra = put(e, "a", "1");
  int64_t rb = put(e, "b", "1");
  put(e, "b", "2"); /* b moves on */

  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_expect_mod_revision(t, "a", ra);
  lk_etcd_txn_expect_mod_revision(t, "b", rb);
  lk_etcd_txn_put(t, "a", (const unsigned char *)"lost", 4);
  int64_t rev = 12345;
  assert_int_equal(lk_etcd_txn_commit(e, t, &rev, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg, "conflict: b changed concurrently; retry");
  assert_int_equal(rev, 12345);
  lk_etcd_txn_destroy(t);
  expect_kv(e, "a", "1");

  /* "Must not exist" fails on an existing key. */
  t = lk_etcd_txn_new();
  lk_etcd_txn_expect_mod_revision(t, "a", 0);
  lk_etcd_txn_put(t, "a", (const unsigned char *)"lost", 4);
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg, "conflict: a changed concurrently; retry");
  lk_etcd_txn_destroy(t);
  expect_kv(e, "a", "1");
  lk_etcd_close(e);
}

static void value_compare_on_the_fence_key_outside_the_prefix(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-fence/");
  lk_etcd *root = open_client("/");
  lk_err err;
  assert_string_equal(lk_etcd_fence_key(e), "/t-fence.keyring-fence");
  put(e, LK_ETCD_FENCE_KEY, "7");
  /* Stored outside the prefix, under its full name, seen by no range. */
  expect_kv(root, "t-fence.keyring-fence", "7");
  scan s;
  memset(&s, 0, sizeof(s));
  assert_int_equal(lk_etcd_range(e, "", 0, scan_fn, &s, NULL, &err), LK_OK);
  assert_int_equal(s.n, 0);

  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_expect_value(t, LK_ETCD_FENCE_KEY, (const unsigned char *)"6", 1);
  lk_etcd_txn_put(t, "cred/x", (const unsigned char *)"old", 3);
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(
      err.msg, "conflict: /t-fence.keyring-fence changed concurrently; retry");
  lk_etcd_txn_destroy(t);
  expect_kv(e, "cred/x", NULL);

  t = lk_etcd_txn_new();
  lk_etcd_txn_expect_value(t, LK_ETCD_FENCE_KEY, (const unsigned char *)"7", 1);
  lk_etcd_txn_put(t, "cred/x", (const unsigned char *)"new", 3);
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err), LK_OK);
  lk_etcd_txn_destroy(t);
  expect_kv(e, "cred/x", "new");

  /* A value compare on a missing key fails. */
  t = lk_etcd_txn_new();
  lk_etcd_txn_expect_value(t, "absent", (const unsigned char *)"", 0);
  lk_etcd_txn_put(t, "cred/x", (const unsigned char *)"lost", 4);
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg, "conflict: absent changed concurrently; retry");
  lk_etcd_txn_destroy(t);
  expect_kv(e, "cred/x", "new");
  lk_etcd_close(e);

  /* A prefix without a trailing slash or ending in '.' still leaves it. */
  e = open_client("/t-fence.");
  assert_string_equal(lk_etcd_fence_key(e), "/t-fence_keyring-fence");
  lk_etcd_close(e);
  e = open_client("/lk");
  assert_string_equal(lk_etcd_fence_key(e), "/l.keyring-fence");
  lk_etcd_close(e);
  lk_etcd_close(root);
}

static void outside_names_live_beside_the_prefix(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-out/");
  lk_etcd *root = open_client("/");
  lk_err err;
  char full[128];
  assert_int_equal(
      lk_etcd_full_key(e, LK_ETCD_OUTSIDE "oauth-claim/c1", full, sizeof(full)),
      strlen("/t-out.oauth-claim/c1"));
  assert_string_equal(full, "/t-out.oauth-claim/c1");
  assert_int_equal(lk_etcd_full_key(e, "cred/c1", full, sizeof(full)),
                   strlen("/t-out/cred/c1"));
  assert_string_equal(full, "/t-out/cred/c1");
  assert_int_equal(lk_etcd_full_key(e, "cred/c1", full, 5), 0);
  assert_string_equal(full, "");
  put(e, LK_ETCD_OUTSIDE "oauth-claim/c1", "mine");
  expect_kv(root, "t-out.oauth-claim/c1", "mine");
  expect_kv(e, LK_ETCD_OUTSIDE "oauth-claim/c1", "mine");
  /* Never seen by a range of the prefix; cannot be ranged or watched. */
  scan s;
  memset(&s, 0, sizeof(s));
  assert_int_equal(lk_etcd_range(e, "", 0, scan_fn, &s, NULL, &err), LK_OK);
  assert_int_equal(s.n, 0);
  assert_int_equal(lk_etcd_range(e, LK_ETCD_OUTSIDE "oauth-claim/", 0, scan_fn,
                                 &s, NULL, &err),
                   LK_INVALID_ARGUMENT);
  assert_string_equal(err.msg,
                      "etcd range prefix names keys outside the "
                      "prefix, which cannot be ranged or watched");
  /* A conflict on it names it in full. */
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_expect_mod_revision(t, LK_ETCD_OUTSIDE "oauth-claim/c1", 0);
  lk_etcd_txn_put(t, LK_ETCD_OUTSIDE "oauth-claim/c1",
                  (const unsigned char *)"theirs", 6);
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(
      err.msg, "conflict: /t-out.oauth-claim/c1 changed concurrently; retry");
  lk_etcd_txn_destroy(t);
  t = lk_etcd_txn_new();
  lk_etcd_txn_delete(t, LK_ETCD_OUTSIDE "oauth-claim/c1");
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err), LK_OK);
  lk_etcd_txn_destroy(t);
  expect_kv(root, "t-out.oauth-claim/c1", NULL);
  lk_etcd_close(e);
  lk_etcd_close(root);
}

static void txn_over_op_cap_is_refused_without_writing(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-cap/");
  lk_err err;
  char key[32];
  lk_etcd_txn *t = lk_etcd_txn_new();
  for (int i = 0; i <= LK_ETCD_MAX_TXN_OPS; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    lk_etcd_txn_put(t, key, (const unsigned char *)"v", 1);
  }
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err), LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "max-txn-ops"));
  lk_etcd_txn_destroy(t);
  expect_kv(e, "k0", NULL);

  t = lk_etcd_txn_new();
  lk_etcd_txn_put(t, NULL, (const unsigned char *)"v", 1);
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err), LK_INVALID_ARGUMENT);
  lk_etcd_txn_destroy(t);
  lk_etcd_txn_destroy(NULL);
  lk_etcd_close(e);
}

static void delete_and_delete_prefix_remove_exactly_their_keys(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-del/");
  put(e, "a/1", "x");
  put(e, "a/2", "x");
  put(e, "a", "x");
  put(e, "b/1", "x");
  del(e, "a/1", 0);
  expect_kv(e, "a/1", NULL);
  expect_kv(e, "a/2", "x");
  del(e, "a/1", 0); /* absent: not an error */
  del(e, "a/", 1);
  expect_kv(e, "a/2", NULL);
  expect_kv(e, "a", "x");
  expect_kv(e, "b/1", "x");
  lk_etcd_close(e);
}

/* ---- tests: watch ------------------------------------------------------- */

static void watch_sees_puts_and_deletes_in_order_and_resumes(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-watch/");
  lk_etcd *outside = open_client("/t-watch-x/");
  int64_t r0 = put(e, "before", "0");
  watcher w;
  watcher_init(&w);
  lk_etcd_watch *wt = start_watch(e, "", r0 + 1, &w);
  int64_t r1 = put(e, "x", "1");
  put(outside, "x", "not mine");
  int64_t r2 = put(e, "y", "2");
  int64_t r3 = del(e, "x", 0);
  wait_until(&w, UNTIL_EVENTS, 3);
  wait_until(&w, UNTIL_BATCHES, 3);
  lk_etcd_watch_stop(wt);
  lk_etcd_watch_stop(wt); /* idempotent */
  assert_int_equal(w.n_ev, 3);
  expect_event(&w, 0, 0, "x", "1", r1);
  expect_event(&w, 1, 0, "y", "2", r2);
  expect_event(&w, 2, 1, "x", "", r3);
  assert_int_equal(w.batch[w.n_batch - 1], r3);
  assert_int_equal(lk_etcd_watch_next_revision(wt), r3 + 1);
  assert_int_equal(w.n_fatal, 0);
  lk_etcd_watch_destroy(wt);

  /* A change while nobody watches is seen by a watch resumed from there. */
  int64_t r4 = put(e, "z", "4");
  watcher w2;
  watcher_init(&w2);
  wt = start_watch(e, "", r3 + 1, &w2);
  wait_until(&w2, UNTIL_EVENTS, 1);
  wait_until(&w2, UNTIL_BATCHES, 1);
  lk_etcd_watch_destroy(wt);
  assert_int_equal(w2.n_ev, 1);
  expect_event(&w2, 0, 0, "z", "4", r4);
  assert_int_equal(w2.batch[0], r4);
  lk_etcd_watch_destroy(NULL);
  watcher_destroy(&w);
  watcher_destroy(&w2);
  lk_etcd_close(outside);
  lk_etcd_close(e);
}

static void watch_from_zero_sees_only_later_changes(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-watch0/");
  put(e, "old", "0");
  watcher w;
  watcher_init(&w);
  lk_etcd_watch *wt = start_watch(e, "", 0, &w);
  int64_t r = put(e, "new", "1");
  wait_until(&w, UNTIL_EVENTS, 1);
  lk_etcd_watch_destroy(wt);
  assert_int_equal(w.n_ev, 1);
  expect_event(&w, 0, 0, "new", "1", r);
  watcher_destroy(&w);
  lk_etcd_close(e);
}

static void watch_progress_notifications_reach_batch_end(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-progress/");
  lk_etcd *other = open_client("/t-progress-other/");
  int64_t r = put(other, "k", "v"); /* moves the revision, not our prefix */
  watcher w;
  watcher_init(&w);
  lk_etcd_watch *wt = start_watch(e, "", 0, &w);
  /* etcd runs with a 1 s progress interval in this test. */
  wait_until(&w, UNTIL_BATCHES, 1);
  lk_etcd_watch_destroy(wt);
  assert_int_equal(w.n_ev, 0);
  assert_true(w.batch[0] >= r);
  watcher_destroy(&w);
  lk_etcd_close(other);
  lk_etcd_close(e);
}

static void watch_joins_etcd_fragments_into_one_batch(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-frag/");
  char key[32];
  static unsigned char big[4000];
  int64_t revs[5];
  for (int r = 0; r < 5; r++) {
    lk_etcd_txn *t = lk_etcd_txn_new();
    memset(big, 'a' + r, sizeof(big));
    for (int i = r * 120; i < (r + 1) * 120; i++) {
      snprintf(key, sizeof(key), "k%03d", i);
      lk_etcd_txn_put(t, key, big, sizeof(big));
    }
    lk_err err;
    assert_int_equal(lk_etcd_txn_commit(e, t, &revs[r], &err), LK_OK);
    lk_etcd_txn_destroy(t);
  }
  /* Replaying this history is one WatchResponse of ~2.4 MB, over etcd's
   * fragment size (max request bytes 1.5 MiB + 512 KiB), so etcd sends
   * it in fragments; the watch must deliver it as one batch. */
  static watcher w;
  watcher_init(&w);
  lk_etcd_watch *wt = start_watch(e, "", revs[0], &w);
  wait_until(&w, UNTIL_BATCHES, 1);
  lk_etcd_watch_destroy(wt);
  assert_int_equal(w.n_ev, 600);
  assert_int_equal(w.n_batch, 1);
  assert_int_equal(w.batch[0], revs[4]);
  for (int i = 0; i < 600; i++) {
    snprintf(key, sizeof(key), "k%03d", i);
    const ev_rec *r = &w.ev[i];
    assert_string_equal(r->key, key);
    assert_int_equal(r->del, 0);
    assert_int_equal(r->len, sizeof(big));
    assert_int_equal(r->val[0], 'a' + i / 120);
    assert_int_equal(r->rev, revs[i / 120]);
  }
  watcher_destroy(&w);
  lk_etcd_close(e);
}

/* ---- tests: compaction --------------------------------------------------- */

static void compacted_revision_is_failed_precondition_everywhere(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-compact/");
  lk_err err;
  int64_t r1 = put(e, "k", "1");
  put(e, "k", "2");
  int64_t r3 = put(e, "k", "3");
  assert_int_equal(lk_etcd_compact(e, r3, &err), LK_OK);

  scan s;
  memset(&s, 0, sizeof(s));
  int64_t hdr = -1;
  assert_int_equal(lk_etcd_range(e, "", r1, scan_fn, &s, &hdr, &err),
                   LK_FAILED_PRECONDITION);
  char want[64];
  snprintf(want, sizeof(want), "compact revision %lld", (long long)r3);
  if (strstr(err.msg, want) == NULL)
    fail_msg("range error \"%s\" does not name \"%s\"", err.msg, want);
  assert_int_equal(s.n, 0);
  assert_int_equal(hdr, -1);

  watcher w;
  watcher_init(&w);
  lk_etcd_watch *wt = start_watch(e, "", r1, &w);
  wait_until(&w, UNTIL_FATAL, 1);
  lk_etcd_watch_destroy(wt); /* the watch has stopped by itself */
  assert_int_equal(w.fatal_code, LK_FAILED_PRECONDITION);
  assert_int_equal(w.fatal_compact, r3);
  assert_int_equal(w.n_ev, 0);
  watcher_destroy(&w);

  /* At the compact revision itself history is still there. */
  memset(&s, 0, sizeof(s));
  assert_int_equal(lk_etcd_range(e, "", r3, scan_fn, &s, &hdr, &err), LK_OK);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.vals[0], "3");

  assert_int_equal(lk_etcd_compact(e, r1, &err), LK_FAILED_PRECONDITION);
  assert_int_equal(lk_etcd_compact(e, r3 + 1000000, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(lk_etcd_range(e, "", r3 + 1000000, scan_fn, &s, NULL, &err),
                   LK_INVALID_ARGUMENT);
  lk_etcd_close(e);
}

/* ---- tests: endpoints --------------------------------------------------- */

static void refused_first_endpoint_fails_over_to_the_next(void **state) {
  (void)state;
  int dead = etcd_fx_free_port();
  char eps[160];
  snprintf(eps, sizeof(eps), "127.0.0.1:%d, http://%s/", dead, g_etcd.ep);
  lk_etcd *e = NULL;
  lk_err err;
  assert_int_equal(lk_etcd_open(eps, "/t-failover/", &e, &err), LK_OK);
  int64_t t0 = lk_now_ms();
  int64_t r = put(e, "k", "v");
  expect_kv(e, "k", "v");
  assert_true(lk_now_ms() - t0 < LK_ETCD_DEADLINE_MS);

  watcher w;
  watcher_init(&w);
  lk_etcd_watch *wt = start_watch(e, "", r, &w);
  wait_until(&w, UNTIL_EVENTS, 1);
  lk_etcd_watch_destroy(wt);
  expect_event(&w, 0, 0, "k", "v", r);
  watcher_destroy(&w);
  lk_etcd_close(e);
}

static void silent_first_endpoint_gets_only_its_share_of_the_deadline(
    void **state) {
  (void)state;
  /* Accepts TCP connections (kernel backlog) but never speaks. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof(sin);
  assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  assert_int_equal(listen(fd, 16), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
  char eps[160];
  snprintf(eps, sizeof(eps), "127.0.0.1:%d,%s", ntohs(sin.sin_port), g_etcd.ep);
  lk_etcd *e = NULL;
  lk_err err;
  assert_int_equal(lk_etcd_open(eps, "/t-silent/", &e, &err), LK_OK);
  int64_t t0 = lk_now_ms();
  unsigned char *v = NULL;
  size_t n = 0;
  assert_int_equal(lk_etcd_get(e, "k", &v, &n, NULL, &err), LK_NOT_FOUND);
  int64_t took = lk_now_ms() - t0;
  assert_true(took < LK_ETCD_DEADLINE_MS);
  lk_etcd_close(e);

  /* Alone, the silent endpoint is LK_UNAVAILABLE within the deadline. */
  snprintf(eps, sizeof(eps), "127.0.0.1:%d", ntohs(sin.sin_port));
  assert_int_equal(lk_etcd_open(eps, "/t-silent/", &e, &err), LK_OK);
  t0 = lk_now_ms();
  assert_int_equal(lk_etcd_get(e, "k", &v, &n, NULL, &err), LK_UNAVAILABLE);
  took = lk_now_ms() - t0;
  assert_true(took < LK_ETCD_DEADLINE_MS + 1500);
  assert_non_null(strstr(err.msg, "unreachable"));
  lk_etcd_close(e);
  close(fd);
}

static void malformed_endpoints_and_prefix_are_invalid_argument(void **state) {
  (void)state;
  lk_etcd *e = (lk_etcd *)&e;
  lk_err err;
  assert_int_equal(lk_etcd_open("https://127.0.0.1:2379", "/p/", &e, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(e);
  assert_non_null(strstr(err.msg, "TLS"));
  assert_int_equal(lk_etcd_open("127.0.0.1", "/p/", &e, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_etcd_open("127.0.0.1:1,,127.0.0.1:2", "/p/", &e, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_etcd_open("", "/p/", &e, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(lk_etcd_open(g_etcd.ep, "", &e, &err), LK_INVALID_ARGUMENT);
  assert_null(e);
  lk_etcd_close(NULL);
}

/* ---- tests: outage ------------------------------------------------------ */

static void etcd_down_is_unavailable_and_watch_resumes_after_restart(
    void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-outage/");
  lk_err err;
  int64_t r1 = put(e, "a", "1");
  watcher w;
  watcher_init(&w);
  lk_etcd_watch *wt = start_watch(e, "", r1, &w);
  wait_until(&w, UNTIL_EVENTS, 1);

  etcd_fx_kill(&g_etcd, SIGKILL);
  wait_until(&w, UNTIL_UNAVAILABLE, 1);

  /* Every call fails with LK_UNAVAILABLE within the deadline. */
  int64_t t0 = lk_now_ms();
  unsigned char *v = NULL;
  size_t n = 0;
  assert_int_equal(lk_etcd_get(e, "a", &v, &n, NULL, &err), LK_UNAVAILABLE);
  char want[96];
  snprintf(want, sizeof(want), "etcd at %s unreachable", g_etcd.ep);
  if (strstr(err.msg, want) == NULL)
    fail_msg("\"%s\" does not say \"%s\"", err.msg, want);
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_put(t, "b", (const unsigned char *)"x", 1);
  assert_int_equal(lk_etcd_txn_commit(e, t, NULL, &err), LK_UNAVAILABLE);
  lk_etcd_txn_destroy(t);
  scan s;
  memset(&s, 0, sizeof(s));
  assert_int_equal(lk_etcd_range(e, "", 0, scan_fn, &s, NULL, &err),
                   LK_UNAVAILABLE);
  assert_true(lk_now_ms() - t0 < 3 * (LK_ETCD_DEADLINE_MS + 1000));
  assert_int_equal(lk_etcd_compact(e, r1, &err), LK_UNAVAILABLE);
  lk_etcd_watch *wt0 = (lk_etcd_watch *)&wt0;
  assert_int_equal(lk_etcd_watch_start(e, "", 0, on_event, on_batch_end,
                                       on_error, &w, &wt0, &err),
                   LK_UNAVAILABLE);
  assert_null(wt0);

  /* Same ports, same data: the watch reconnects and resumes after a. */
  if (etcd_fx_spawn(&g_etcd) != 0) {
    etcd_fx_print_log(&g_etcd);
    fail_msg("etcd did not restart on %s", g_etcd.ep);
  }
  int64_t r2 = put(e, "b", "2");
  wait_until(&w, UNTIL_EVENTS, 2);
  lk_etcd_watch_destroy(wt);
  assert_int_equal(w.n_ev, 2); /* a once, then b: nothing repeated */
  expect_event(&w, 0, 0, "a", "1", r1);
  expect_event(&w, 1, 0, "b", "2", r2);
  assert_int_equal(w.n_fatal, 0);
  watcher_destroy(&w);
  lk_etcd_close(e);
}

int main(void) {
  const struct CMUnitTest live[] = {
      cmocka_unit_test(txn_put_then_get_returns_value_and_revision),
      cmocka_unit_test(get_of_absent_key_is_not_found),
      cmocka_unit_test(keys_outside_the_prefix_are_invisible),
      cmocka_unit_test(range_pages_1200_keys_in_order_at_one_revision),
      cmocka_unit_test(txn_commits_when_expectations_hold),
      cmocka_unit_test(txn_conflict_is_failed_precondition_naming_the_key),
      cmocka_unit_test(value_compare_on_the_fence_key_outside_the_prefix),
      cmocka_unit_test(outside_names_live_beside_the_prefix),
      cmocka_unit_test(txn_over_op_cap_is_refused_without_writing),
      cmocka_unit_test(delete_and_delete_prefix_remove_exactly_their_keys),
      cmocka_unit_test(watch_sees_puts_and_deletes_in_order_and_resumes),
      cmocka_unit_test(watch_from_zero_sees_only_later_changes),
      cmocka_unit_test(watch_progress_notifications_reach_batch_end),
      cmocka_unit_test(watch_joins_etcd_fragments_into_one_batch),
      cmocka_unit_test(compacted_revision_is_failed_precondition_everywhere),
      cmocka_unit_test(refused_first_endpoint_fails_over_to_the_next),
      cmocka_unit_test(
          silent_first_endpoint_gets_only_its_share_of_the_deadline),
      cmocka_unit_test(malformed_endpoints_and_prefix_are_invalid_argument),
  };
  const struct CMUnitTest outage[] = {
      cmocka_unit_test(
          etcd_down_is_unavailable_and_watch_resumes_after_restart),
  };
  int failed = cmocka_run_group_tests_name("live", live, etcd_group_setup,
                                           etcd_group_teardown);
  failed += cmocka_run_group_tests_name("outage", outage, etcd_group_setup,
                                        etcd_group_teardown);
  return failed;
}
