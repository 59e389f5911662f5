/*
 * etcd_catalog_test.c - proves controlplane/etcd_catalog's contract
 * against a real single-node etcd (tests/unit/etcd_fixture): the mirror
 * loads at open, a commit is readable on the committing catalog as soon as
 * it returns and lands in etcd under the prefix, a second catalog over the
 * same etcd follows the first one's puts and deletes (on_change reporting
 * increasing revisions), a catalog keeps working and converges when etcd
 * compacts past the revision it has applied, and a commit that changes
 * nothing in etcd returns at once. Conditional commits
 * (lk_catalog_commit_if): a write built on a mirror held behind a change
 * made in etcd by another writer is refused with nothing written, and
 * returns only once the mirror shows that change, so the writer's next
 * read is fresh; a record deleted or created behind the reader is never
 * overwritten; a refused batch whose bytes are already in etcd (lib/etcd
 * resent a Txn whose first attempt landed) counts as landed.
 *
 * Each test uses its own etcd prefix, so tests do not see each other's
 * keys. Every wait is bounded (WAIT_MS); bounds are functional, not tight.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "controlplane/etcd_catalog.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/clock.h"
#include "lib/etcd.h"
#include "lib/status.h"
#include "lib/store.h"
#include "tests/unit/etcd_fixture.h"

/* How long any single wait may take before the test fails. */
#define WAIT_MS 30000
/* Most on_change calls one recorder keeps. */
#define MAX_CHANGES 512

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

/* Records on_change revisions; optionally holds the caller (the watch
 * thread) while gate_closed is set, so a test can keep a catalog behind. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int64_t revs[MAX_CHANGES];
  size_t n;
  int gate_closed;
  int held; /* the watch thread is waiting at the gate */
} recorder;

static void recorder_init(recorder *r) {
  memset(r, 0, sizeof(*r));
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
}

static void recorder_destroy(recorder *r) {
  pthread_cond_destroy(&r->cv);
  pthread_mutex_destroy(&r->mu);
}

static void on_change(void *ctx, int64_t revision) {
  recorder *r = ctx;
  pthread_mutex_lock(&r->mu);
  if (r->n < MAX_CHANGES)
    r->revs[r->n++] = revision;
  r->held = r->gate_closed;
  pthread_cond_broadcast(&r->cv);
  while (r->gate_closed)
    pthread_cond_wait(&r->cv, &r->mu);
  r->held = 0;
  pthread_mutex_unlock(&r->mu);
}

static void recorder_set_gate(recorder *r, int closed) {
  pthread_mutex_lock(&r->mu);
  r->gate_closed = closed;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* Waits (bounded) until the watch thread is held at the gate. */
static void recorder_wait_held(recorder *r) {
  int64_t start = lk_now_ms();
  pthread_mutex_lock(&r->mu);
  while (!r->held && lk_now_ms() - start < WAIT_MS) {
    pthread_mutex_unlock(&r->mu);
    usleep(10 * 1000);
    pthread_mutex_lock(&r->mu);
  }
  int held = r->held;
  pthread_mutex_unlock(&r->mu);
  if (!held)
    fail_msg("on_change was not called within %d ms", WAIT_MS);
}

/* Waits (bounded) until on_change reported at least rev; returns the count
 * of calls so far. */
static size_t recorder_wait_rev(recorder *r, int64_t rev) {
  int64_t start = lk_now_ms();
  for (;;) {
    pthread_mutex_lock(&r->mu);
    size_t n = r->n;
    int64_t last = n > 0 ? r->revs[n - 1] : 0;
    pthread_mutex_unlock(&r->mu);
    if (last >= rev)
      return n;
    if (lk_now_ms() - start > WAIT_MS)
      fail_msg("on_change reached %lld, not %lld, within %d ms",
               (long long)last, (long long)rev, WAIT_MS);
    usleep(10 * 1000);
  }
}

static lk_etcd *open_client(const char *prefix) {
  lk_etcd *e = NULL;
  lk_err err;
  if (lk_etcd_open(g_etcd.ep, prefix, &e, &err) != LK_OK)
    fail_msg("lk_etcd_open: %s", err.msg);
  return e;
}

static lk_etcd_catalog *open_catalog(lk_etcd *e, recorder *r) {
  lk_etcd_catalog *c = NULL;
  lk_err err;
  lk_status st =
      lk_etcd_catalog_open(e, r != NULL ? on_change : NULL, r, &c, &err);
  if (st != LK_OK)
    fail_msg("lk_etcd_catalog_open: %s: %s", lk_status_name(st), err.msg);
  assert_non_null(c);
  assert_non_null(lk_etcd_catalog_catalog(c));
  return c;
}

/* Commits one budget through c's catalog. */
static void put_budget(lk_etcd_catalog *c, const char *id, int paused) {
  Latchkey__V1__Budget b = LATCHKEY__V1__BUDGET__INIT;
  b.id = (char *)id;
  b.paused = paused;
  lk_store_batch *batch = lk_store_batch_new();
  assert_non_null(batch);
  lk_err err;
  lk_catalog *cat = lk_etcd_catalog_catalog(c);
  lk_status st = lk_catalog_put_budget(cat, batch, &b, &err);
  if (st == LK_OK)
    st = lk_catalog_commit(cat, batch, &err);
  lk_store_batch_destroy(batch);
  if (st != LK_OK)
    fail_msg("put budget %s: %s: %s", id, lk_status_name(st), err.msg);
}

static void delete_budget(lk_etcd_catalog *c, const char *id) {
  lk_store_batch *batch = lk_store_batch_new();
  assert_non_null(batch);
  lk_err err;
  lk_catalog *cat = lk_etcd_catalog_catalog(c);
  lk_status st = lk_catalog_delete_budget(cat, batch, id, &err);
  if (st == LK_OK)
    st = lk_catalog_commit(cat, batch, &err);
  lk_store_batch_destroy(batch);
  if (st != LK_OK)
    fail_msg("delete budget %s: %s: %s", id, lk_status_name(st), err.msg);
}

/* The budget's paused flag as c's mirror has it, or -1 when absent. */
static int mirror_paused(lk_etcd_catalog *c, const char *id) {
  Latchkey__V1__Budget *b = NULL;
  lk_err err;
  lk_status st =
      lk_catalog_get_budget(lk_etcd_catalog_catalog(c), id, &b, &err);
  if (st == LK_NOT_FOUND)
    return -1;
  if (st != LK_OK)
    fail_msg("get budget %s: %s: %s", id, lk_status_name(st), err.msg);
  assert_string_equal(b->id, id);
  int paused = b->paused ? 1 : 0;
  lk_catalog_free_budget(b);
  return paused;
}

/* Polls c's mirror (bounded) until budget id is in state want (-1: absent). */
static void wait_paused(lk_etcd_catalog *c, const char *id, int want) {
  int64_t start = lk_now_ms();
  int got;
  while ((got = mirror_paused(c, id)) != want) {
    if (lk_now_ms() - start > WAIT_MS)
      fail_msg("budget %s is %d, not %d, after %d ms", id, got, want, WAIT_MS);
    usleep(10 * 1000);
  }
}

/* The budget's paused flag as etcd has it, or -1 when absent; its mod
 * revision in *mod. */
static int etcd_paused(lk_etcd *e, const char *id, int64_t *mod) {
  char key[LK_CATALOG_KEY_MAX];
  snprintf(key, sizeof(key), "budget/%s", id);
  unsigned char *v = NULL;
  size_t n = 0;
  lk_err err;
  lk_status st = lk_etcd_get(e, key, &v, &n, mod, &err);
  if (st == LK_NOT_FOUND)
    return -1;
  if (st != LK_OK)
    fail_msg("etcd get %s: %s: %s", key, lk_status_name(st), err.msg);
  Latchkey__V1__Budget *b = latchkey__v1__budget__unpack(NULL, n, v);
  lk_etcd_value_free(v, n);
  if (b == NULL)
    fail_msg("etcd %s does not decode as a Budget", key);
  assert_string_equal(b->id, id);
  int paused = b->paused ? 1 : 0;
  lk_catalog_free_budget(b);
  return paused;
}

static int count_record(void *ctx) {
  (*(size_t *)ctx)++;
  return 0;
}
static int count_tool(void *ctx, Latchkey__V1__Tool *t) {
  lk_catalog_free_tool(t);
  return count_record(ctx);
}
static int count_type(void *ctx, Latchkey__V1__CredentialType *t) {
  lk_catalog_free_type(t);
  return count_record(ctx);
}
static int count_cred(void *ctx, Latchkey__V1__Credential *c) {
  lk_catalog_free_credential(c);
  return count_record(ctx);
}
static int count_budget(void *ctx, Latchkey__V1__Budget *b) {
  lk_catalog_free_budget(b);
  return count_record(ctx);
}
static int count_binding(void *ctx, Latchkey__V1__Binding *b) {
  lk_catalog_free_binding(b);
  return count_record(ctx);
}

/* Number of budgets in c's mirror. */
static size_t mirror_budgets(lk_etcd_catalog *c) {
  size_t n = 0;
  lk_err err;
  assert_int_equal(lk_catalog_list_budgets(lk_etcd_catalog_catalog(c),
                                           count_budget, &n, &err),
                   LK_OK);
  return n;
}

static int count_kv(void *ctx, const char *key, const unsigned char *val,
                    size_t len, int64_t mod) {
  (void)key;
  (void)val;
  (void)len;
  (void)mod;
  (*(size_t *)ctx)++;
  return 0;
}

/* Number of keys under e's prefix; etcd's revision in *rev. */
static size_t etcd_keys(lk_etcd *e, int64_t *rev) {
  size_t n = 0;
  lk_err err;
  lk_status st = lk_etcd_range(e, "", 0, count_kv, &n, rev, &err);
  if (st != LK_OK)
    fail_msg("etcd range: %s: %s", lk_status_name(st), err.msg);
  return n;
}

/* Asserts on_change revisions never go down (strictly: always go up). */
static void expect_increasing(recorder *r, int strictly) {
  pthread_mutex_lock(&r->mu);
  for (size_t i = 1; i < r->n; i++) {
    if (r->revs[i] < r->revs[i - 1] ||
        (strictly && r->revs[i] == r->revs[i - 1]))
      fail_msg("on_change %zu reported %lld after %lld", i,
               (long long)r->revs[i], (long long)r->revs[i - 1]);
  }
  pthread_mutex_unlock(&r->mu);
}

/* ---- tests ------------------------------------------------------------- */

static void open_on_an_empty_prefix_has_a_revision_and_no_records(
    void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-empty/");
  lk_etcd_catalog *c = open_catalog(e, NULL);
  assert_true(lk_etcd_catalog_revision(c) > 0);
  lk_catalog *cat = lk_etcd_catalog_catalog(c);
  lk_err err;
  size_t n = 0;
  assert_int_equal(lk_catalog_list_tools(cat, count_tool, &n, &err), LK_OK);
  assert_int_equal(lk_catalog_list_types(cat, count_type, &n, &err), LK_OK);
  assert_int_equal(lk_catalog_list_credentials(cat, count_cred, &n, &err),
                   LK_OK);
  assert_int_equal(lk_catalog_list_budgets(cat, count_budget, &n, &err), LK_OK);
  assert_int_equal(lk_catalog_list_bindings(cat, NULL, count_binding, &n, &err),
                   LK_OK);
  assert_int_equal(n, 0);
  /* Opening wrote nothing to etcd (the schema marker stays local). */
  assert_int_equal(etcd_keys(e, NULL), 0);
  lk_etcd_catalog_destroy(c);
  lk_etcd_close(e);
}

static void commit_is_readable_at_once_and_lands_in_etcd(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-ryw/");
  lk_etcd_catalog *a = open_catalog(e, NULL);
  for (int i = 0; i < 5; i++) {
    char id[16];
    snprintf(id, sizeof(id), "b%d", i);
    put_budget(a, id, i % 2);
    /* No wait: visible to the very next read on the committing catalog. */
    assert_int_equal(mirror_paused(a, id), i % 2);
    int64_t mod = 0;
    assert_int_equal(etcd_paused(e, id, &mod), i % 2);
    assert_true(mod > 0);
    assert_true(lk_etcd_catalog_revision(a) >= mod);
  }
  put_budget(a, "b0", 1); /* an update, too */
  assert_int_equal(mirror_paused(a, "b0"), 1);
  assert_int_equal(mirror_budgets(a), 5);
  assert_int_equal(etcd_keys(e, NULL), 5);
  lk_etcd_catalog_destroy(a);
  lk_etcd_close(e);
}

static void second_catalog_follows_puts_with_increasing_revisions(
    void **state) {
  (void)state;
  lk_etcd *ea = open_client("/t-follow/");
  lk_etcd *eb = open_client("/t-follow/");
  lk_etcd_catalog *a = open_catalog(ea, NULL);
  put_budget(a, "before", 0);
  recorder rb;
  recorder_init(&rb);
  lk_etcd_catalog *b = open_catalog(eb, &rb);
  /* Loaded by B's initial Range. */
  assert_int_equal(mirror_paused(b, "before"), 0);

  int64_t last = 0;
  for (int i = 0; i < 10; i++) {
    char id[16];
    snprintf(id, sizeof(id), "f%d", i);
    put_budget(a, id, 1);
    assert_int_equal(etcd_paused(ea, id, &last), 1);
  }
  put_budget(a, "before", 1);
  assert_int_equal(etcd_paused(ea, "before", &last), 1);
  wait_paused(b, "before", 1);
  for (int i = 0; i < 10; i++) {
    char id[16];
    snprintf(id, sizeof(id), "f%d", i);
    assert_int_equal(mirror_paused(b, id), 1);
  }
  assert_true(recorder_wait_rev(&rb, last) >= 1);
  expect_increasing(&rb, 1);
  assert_true(lk_etcd_catalog_revision(b) >= last);
  assert_int_equal(mirror_budgets(b), 11);

  lk_etcd_catalog_destroy(b);
  lk_etcd_catalog_destroy(a);
  recorder_destroy(&rb);
  lk_etcd_close(eb);
  lk_etcd_close(ea);
}

static void delete_on_one_catalog_disappears_from_the_other(void **state) {
  (void)state;
  lk_etcd *ea = open_client("/t-delete/");
  lk_etcd *eb = open_client("/t-delete/");
  lk_etcd_catalog *a = open_catalog(ea, NULL);
  recorder rb;
  recorder_init(&rb);
  lk_etcd_catalog *b = open_catalog(eb, &rb);
  put_budget(a, "gone", 0);
  put_budget(a, "kept", 0);
  wait_paused(b, "gone", 0);
  wait_paused(b, "kept", 0);

  delete_budget(a, "gone");
  assert_int_equal(mirror_paused(a, "gone"), -1); /* read-your-writes */
  assert_int_equal(etcd_paused(ea, "gone", NULL), -1);
  wait_paused(b, "gone", -1);
  assert_int_equal(mirror_paused(b, "kept"), 0);
  assert_int_equal(mirror_budgets(b), 1);
  expect_increasing(&rb, 1);

  lk_etcd_catalog_destroy(b);
  lk_etcd_catalog_destroy(a);
  recorder_destroy(&rb);
  lk_etcd_close(eb);
  lk_etcd_close(ea);
}

static void compaction_past_a_follower_leaves_it_working_and_converging(
    void **state) {
  (void)state;
  lk_etcd *ea = open_client("/t-compact/");
  lk_etcd *eb = open_client("/t-compact/");
  lk_etcd_catalog *a = open_catalog(ea, NULL);
  recorder rb;
  recorder_init(&rb);
  lk_etcd_catalog *b = open_catalog(eb, &rb);
  put_budget(a, "c0", 0);
  wait_paused(b, "c0", 0);

  /* Hold B's watch thread in on_change after its next change, so B's
   * applied revision stays behind while A writes on and etcd compacts. */
  recorder_set_gate(&rb, 1);
  put_budget(a, "c1", 0);
  recorder_wait_held(&rb);
  int64_t b_rev = lk_etcd_catalog_revision(b);
  for (int i = 2; i < 8; i++) {
    char id[16];
    snprintf(id, sizeof(id), "c%d", i);
    put_budget(a, id, 0);
  }
  delete_budget(a, "c0");
  int64_t now = 0;
  etcd_keys(ea, &now);
  assert_true(now > b_rev);
  lk_err err;
  lk_status st = lk_etcd_compact(ea, now, &err);
  if (st != LK_OK)
    fail_msg("compact %lld: %s: %s", (long long)now, lk_status_name(st),
             err.msg);
  assert_int_equal(lk_etcd_catalog_revision(b), b_rev); /* still behind */
  recorder_set_gate(&rb, 0);

  /* B keeps working: it catches up, and follows writes after the
   * compaction. */
  put_budget(a, "after", 1);
  put_budget(a, "c1", 1);
  delete_budget(a, "c2");
  int64_t last = 0;
  assert_int_equal(etcd_paused(ea, "c1", &last), 1);
  wait_paused(b, "after", 1);
  wait_paused(b, "c1", 1);
  wait_paused(b, "c2", -1);

  /* B converges to etcd's state: the same records, the same values. */
  size_t keys = etcd_keys(ea, NULL);
  assert_int_equal(mirror_budgets(b), keys);
  const char *ids[] = {"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "after"};
  for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
    assert_int_equal(mirror_paused(b, ids[i]), etcd_paused(ea, ids[i], NULL));
  recorder_wait_rev(&rb, last);
  expect_increasing(&rb, 0);
  assert_true(lk_etcd_catalog_revision(b) >= last);

  /* A's commits still become visible on return after the compaction. */
  put_budget(a, "final", 0);
  assert_int_equal(mirror_paused(a, "final"), 0);

  lk_etcd_catalog_destroy(b);
  lk_etcd_catalog_destroy(a);
  recorder_destroy(&rb);
  lk_etcd_close(eb);
  lk_etcd_close(ea);
}

/* Commits b through c; returns how long the commit took. */
static int64_t timed_commit(lk_etcd_catalog *c, lk_store_batch *b) {
  lk_err err;
  int64_t t0 = lk_now_ms();
  lk_status st = lk_catalog_commit(lk_etcd_catalog_catalog(c), b, &err);
  int64_t took = lk_now_ms() - t0;
  if (st != LK_OK)
    fail_msg("commit: %s: %s (after %lld ms)", lk_status_name(st), err.msg,
             (long long)took);
  return took;
}

static void commit_that_changes_nothing_returns_at_once(void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-noop/");
  lk_etcd *other = open_client("/t-noop-other/");
  lk_etcd_catalog *a = open_catalog(e, NULL);
  lk_etcd_catalog *o = open_catalog(other, NULL);
  put_budget(a, "x", 0);
  /* etcd's latest revision now belongs to a key outside a's prefix. */
  put_budget(o, "y", 0);

  lk_store_batch *b = lk_store_batch_new();
  assert_non_null(b);
  lk_err err;
  assert_int_equal(
      lk_catalog_delete_budget(lk_etcd_catalog_catalog(a), b, "absent", &err),
      LK_OK);
  assert_true(timed_commit(a, b) < 3000);
  lk_store_batch_destroy(b);

  b = lk_store_batch_new();
  assert_non_null(b);
  assert_true(timed_commit(a, b) < 3000); /* an empty batch */
  lk_store_batch_destroy(b);

  /* A real delete still waits for its event and is then visible. */
  delete_budget(a, "x");
  assert_int_equal(mirror_paused(a, "x"), -1);
  assert_int_equal(etcd_paused(e, "x", NULL), -1);

  lk_etcd_catalog_destroy(o);
  lk_etcd_catalog_destroy(a);
  lk_etcd_close(other);
  lk_etcd_close(e);
}

/* ---- a past revision (lk_etcd_catalog_at) ------------------------------ */

/* The budget's paused flag in cat, or -1 when absent. */
static int past_paused(lk_catalog *cat, const char *id) {
  Latchkey__V1__Budget *b = NULL;
  lk_err err;
  lk_status st = lk_catalog_get_budget(cat, id, &b, &err);
  if (st == LK_NOT_FOUND)
    return -1;
  if (st != LK_OK)
    fail_msg("get budget %s: %s: %s", id, lk_status_name(st), err.msg);
  int paused = b->paused ? 1 : 0;
  lk_catalog_free_budget(b);
  return paused;
}

/* Opens the catalog at rev and checks budgets h1..h3 are as want. */
static void expect_past(lk_etcd_catalog *c, int64_t rev, const int want[3]) {
  lk_catalog *past = NULL;
  lk_store *store = NULL;
  lk_err err;
  lk_status st = lk_etcd_catalog_at(c, rev, &past, &store, &err);
  if (st != LK_OK)
    fail_msg("catalog at %lld: %s: %s", (long long)rev, lk_status_name(st),
             err.msg);
  assert_int_equal(past_paused(past, "h1"), want[0]);
  assert_int_equal(past_paused(past, "h2"), want[1]);
  assert_int_equal(past_paused(past, "h3"), want[2]);

  /* A past catalog is read-only. */
  Latchkey__V1__Budget b = LATCHKEY__V1__BUDGET__INIT;
  b.id = "h9";
  lk_store_batch *batch = lk_store_batch_new();
  assert_non_null(batch);
  assert_int_equal(lk_catalog_put_budget(past, batch, &b, &err), LK_OK);
  assert_int_equal(lk_catalog_commit(past, batch, &err),
                   LK_FAILED_PRECONDITION);
  lk_store_batch_destroy(batch);
  lk_catalog_destroy(past);
  lk_store_close(store);
}

static void catalog_at_a_past_revision_until_compacted(void **state) {
  static const int then[3] = {0, 0, -1};
  static const int now_want[3] = {1, -1, 0};
  (void)state;
  lk_etcd *e = open_client("/t-at/");
  lk_etcd_catalog *c = open_catalog(e, NULL);
  put_budget(c, "h1", 0);
  put_budget(c, "h2", 0);
  int64_t r1 = 0;
  etcd_keys(e, &r1);
  put_budget(c, "h1", 1);
  delete_budget(c, "h2");
  put_budget(c, "h3", 0);
  int64_t now = 0;
  etcd_keys(e, &now);
  assert_true(now > r1);

  expect_past(c, r1, then);
  expect_past(c, now, now_want);

  lk_catalog *past = NULL;
  lk_store *store = NULL;
  lk_err err;
  assert_int_equal(lk_etcd_catalog_at(c, now + 100000, &past, &store, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(past);
  assert_null(store);
  assert_int_equal(lk_etcd_catalog_at(c, 0, &past, &store, &err),
                   LK_INVALID_ARGUMENT);

  /* Once etcd compacts past r1, r1 is gone: the caller sends a snapshot. */
  lk_status st = lk_etcd_compact(e, now, &err);
  if (st != LK_OK)
    fail_msg("compact %lld: %s: %s", (long long)now, lk_status_name(st),
             err.msg);
  assert_int_equal(lk_etcd_catalog_at(c, r1, &past, &store, &err),
                   LK_FAILED_PRECONDITION);
  assert_null(past);
  assert_null(store);
  expect_past(c, now, now_want); /* the compact revision itself stays */

  lk_etcd_catalog_destroy(c);
  lk_etcd_close(e);
}

/* ---- conditional commits (lk_catalog_commit_if) ----------------------- */

/* The encoding of credential id with label (the caller frees *out). */
static size_t cred_bytes(const char *id, const char *label,
                         unsigned char **out) {
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  c.id = (char *)id;
  c.type = (char *)"t";
  c.label = (char *)label;
  c.version = 1;
  size_t len = latchkey__v1__credential__get_packed_size(&c);
  *out = malloc(len);
  assert_non_null(*out);
  latchkey__v1__credential__pack(&c, *out);
  return len;
}

/* Writes credential id with label straight into etcd, as another writer
 * (an OAuth refresher, another control plane) does. */
static void etcd_put_cred(lk_etcd *e, const char *id, const char *label) {
  char key[LK_CATALOG_KEY_MAX];
  unsigned char *v = NULL;
  size_t len = cred_bytes(id, label, &v);
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_err err;
  assert_non_null(t);
  snprintf(key, sizeof(key), "cred/%s", id);
  lk_etcd_txn_put(t, key, v, len);
  lk_status st = lk_etcd_txn_commit(e, t, NULL, &err);
  lk_etcd_txn_destroy(t);
  free(v);
  if (st != LK_OK)
    fail_msg("etcd put %s: %s", key, err.msg);
}

static void etcd_delete_cred(lk_etcd *e, const char *id) {
  char key[LK_CATALOG_KEY_MAX];
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_err err;
  assert_non_null(t);
  snprintf(key, sizeof(key), "cred/%s", id);
  lk_etcd_txn_delete(t, key);
  lk_status st = lk_etcd_txn_commit(e, t, NULL, &err);
  lk_etcd_txn_destroy(t);
  if (st != LK_OK)
    fail_msg("etcd delete %s: %s", key, err.msg);
}

/* Copies credential id's label as etcd holds it into out ("-" when
 * absent). */
static void etcd_label(lk_etcd *e, const char *id, char out[64]) {
  char key[LK_CATALOG_KEY_MAX];
  unsigned char *v = NULL;
  size_t n = 0;
  lk_err err;
  snprintf(key, sizeof(key), "cred/%s", id);
  lk_status st = lk_etcd_get(e, key, &v, &n, NULL, &err);
  snprintf(out, 64, "-");
  if (st == LK_OK) {
    Latchkey__V1__Credential *c = latchkey__v1__credential__unpack(NULL, n, v);
    assert_non_null(c);
    snprintf(out, 64, "%s", c->label);
    lk_catalog_free_credential(c);
  } else if (st != LK_NOT_FOUND) {
    fail_msg("etcd get %s: %s", key, err.msg);
  }
  lk_etcd_value_free(v, n);
}

/* Reads credential id through c's catalog: its label into out ("-" when
 * absent) and what the read saw. */
static lk_catalog_seen *read_cred(lk_etcd_catalog *c, const char *id,
                                  char out[64]) {
  Latchkey__V1__Credential *cred = NULL;
  lk_catalog_seen *seen = NULL;
  lk_err err;
  lk_status st = lk_catalog_get_credential_seen(lk_etcd_catalog_catalog(c), id,
                                                &cred, &seen, &err);
  if (st != LK_OK && st != LK_NOT_FOUND)
    fail_msg("get credential %s: %s: %s", id, lk_status_name(st), err.msg);
  assert_non_null(seen);
  snprintf(out, 64, "%s", st == LK_OK ? cred->label : "-");
  lk_catalog_free_credential(cred);
  return seen;
}

/* Puts credential id with label through c's catalog if seen still holds;
 * returns the status, *changed and the message in err. */
static lk_status put_cred_if(lk_etcd_catalog *c, const char *id,
                             const char *label, lk_catalog_seen *seen,
                             int *changed, lk_err *err) {
  Latchkey__V1__Credential cred = LATCHKEY__V1__CREDENTIAL__INIT;
  lk_catalog *cat = lk_etcd_catalog_catalog(c);
  lk_store_batch *b = lk_store_batch_new();
  assert_non_null(b);
  cred.id = (char *)id;
  cred.type = (char *)"t";
  cred.label = (char *)label;
  cred.version = 1;
  lk_status st = lk_catalog_put_credential(cat, b, &cred, err);
  if (st == LK_OK)
    st = lk_catalog_commit_if(cat, b, &seen, 1, changed, err);
  lk_store_batch_destroy(b);
  return st;
}

/* Opens the gate after delay_ms, on its own thread. */
typedef struct {
  recorder *r;
  int delay_ms;
} opener;

static void *open_gate_later(void *arg) {
  opener *o = arg;
  usleep((useconds_t)o->delay_ms * 1000);
  recorder_set_gate(o->r, 0);
  return NULL;
}

static void a_write_built_on_a_mirror_behind_etcd_is_refused_then_reads_fresh(
    void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-cas-stale/");
  recorder r;
  recorder_init(&r);
  lk_etcd_catalog *c = open_catalog(e, &r);
  char label[64];
  char want[256];
  int changed = 0;
  lk_err err;

  lk_catalog_seen *seen = read_cred(c, "c1", label);
  assert_int_equal(put_cred_if(c, "c1", "v1", seen, &changed, &err), LK_OK);
  assert_int_equal(changed, 0);
  lk_catalog_seen_free(seen);
  /* Hold the mirror: the next change it applies keeps its watch thread at
   * the gate, so what etcd gets after that stays out of the mirror. */
  unsigned char *v = NULL;
  size_t n = 0;
  int64_t mod = 0;
  assert_int_equal(lk_etcd_get(e, "cred/c1", &v, &n, &mod, &err), LK_OK);
  lk_etcd_value_free(v, n);
  recorder_wait_rev(&r, mod);
  recorder_set_gate(&r, 1);
  put_budget(c, "unrelated", 0);
  recorder_wait_held(&r);
  etcd_put_cred(e, "c1", "v2-refreshed");
  /* The owner's write is built on the mirror, which still shows v1. */
  seen = read_cred(c, "c1", label);
  assert_string_equal(label, "v1");
  opener o = {&r, 300};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, open_gate_later, &o), 0);
  int64_t t0 = lk_now_ms();
  assert_int_equal(put_cred_if(c, "c1", "v3-owner", seen, &changed, &err),
                   LK_UNAVAILABLE);
  int64_t took = lk_now_ms() - t0;
  assert_int_equal(pthread_join(t, NULL), 0);
  lk_catalog_seen_free(seen);
  assert_int_equal(changed, 1);
  snprintf(want, sizeof(want), LK_CATALOG_CHANGED_FMT, "cred/c1");
  assert_string_equal(err.msg, want);
  /* Nothing was written, and the refusal waited for the mirror: the next
   * read is fresh at once. */
  etcd_label(e, "c1", label);
  assert_string_equal(label, "v2-refreshed");
  assert_true(took >= 250);
  seen = read_cred(c, "c1", label);
  assert_string_equal(label, "v2-refreshed");
  /* Built again on the fresh read, it lands. */
  assert_int_equal(put_cred_if(c, "c1", "v3-owner", seen, &changed, &err),
                   LK_OK);
  assert_int_equal(changed, 0);
  lk_catalog_seen_free(seen);
  etcd_label(e, "c1", label);
  assert_string_equal(label, "v3-owner");
  seen = read_cred(c, "c1", label);
  assert_string_equal(label, "v3-owner");
  lk_catalog_seen_free(seen);

  lk_etcd_catalog_destroy(c);
  recorder_destroy(&r);
  lk_etcd_close(e);
}

static void a_record_deleted_or_created_behind_a_reader_is_never_overwritten(
    void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-cas-gone/");
  lk_etcd_catalog *c = open_catalog(e, NULL);
  char label[64];
  int changed = 0;
  lk_err err;
  lk_catalog_seen *seen = read_cred(c, "c1", label);
  assert_int_equal(put_cred_if(c, "c1", "v1", seen, &changed, &err), LK_OK);
  lk_catalog_seen_free(seen);

  /* Deleted after the read: the write would bring it back. */
  seen = read_cred(c, "c1", label);
  assert_string_equal(label, "v1");
  etcd_delete_cred(e, "c1");
  assert_int_equal(put_cred_if(c, "c1", "v2", seen, &changed, &err),
                   LK_UNAVAILABLE);
  assert_int_equal(changed, 1);
  lk_catalog_seen_free(seen);
  etcd_label(e, "c1", label);
  assert_string_equal(label, "-");
  seen = read_cred(c, "c1", label);
  assert_string_equal(label, "-");
  size_t len = 99;
  assert_null(lk_catalog_seen_value(seen, &len));
  assert_int_equal(len, 0);
  assert_string_equal(lk_catalog_seen_key(seen), "cred/c1");

  /* Absent when read, created by another writer since: a create must not
   * replace it. */
  etcd_put_cred(e, "c1", "theirs");
  assert_int_equal(put_cred_if(c, "c1", "mine", seen, &changed, &err),
                   LK_UNAVAILABLE);
  assert_int_equal(changed, 1);
  lk_catalog_seen_free(seen);
  etcd_label(e, "c1", label);
  assert_string_equal(label, "theirs");
  seen = read_cred(c, "c1", label);
  assert_string_equal(label, "theirs");
  lk_catalog_seen_free(seen);

  lk_etcd_catalog_destroy(c);
  lk_etcd_close(e);
}

static void a_refused_commit_whose_bytes_are_in_etcd_counts_as_landed(
    void **state) {
  (void)state;
  lk_etcd *e = open_client("/t-cas-landed/");
  lk_etcd_catalog *c = open_catalog(e, NULL);
  char label[64];
  int changed = 0;
  lk_err err;
  lk_catalog_seen *seen = read_cred(c, "c1", label);
  assert_int_equal(put_cred_if(c, "c1", "v1", seen, &changed, &err), LK_OK);
  lk_catalog_seen_free(seen);
  seen = read_cred(c, "c1", label);
  /* The exact bytes this write puts are already there, as after a Txn
   * that lib/etcd sent again once its first attempt had landed. */
  etcd_put_cred(e, "c1", "v2");
  assert_int_equal(put_cred_if(c, "c1", "v2", seen, &changed, &err), LK_OK);
  assert_int_equal(changed, 0);
  lk_catalog_seen_free(seen);
  seen = read_cred(c, "c1", label);
  assert_string_equal(label, "v2");
  lk_catalog_seen_free(seen);
  lk_catalog_seen_free(NULL);
  lk_etcd_catalog_destroy(c);
  lk_etcd_close(e);
}

static void destroy_of_null_is_a_no_op(void **state) {
  (void)state;
  lk_etcd_catalog_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest live[] = {
      cmocka_unit_test(open_on_an_empty_prefix_has_a_revision_and_no_records),
      cmocka_unit_test(commit_is_readable_at_once_and_lands_in_etcd),
      cmocka_unit_test(second_catalog_follows_puts_with_increasing_revisions),
      cmocka_unit_test(delete_on_one_catalog_disappears_from_the_other),
      cmocka_unit_test(
          compaction_past_a_follower_leaves_it_working_and_converging),
      cmocka_unit_test(commit_that_changes_nothing_returns_at_once),
      cmocka_unit_test(catalog_at_a_past_revision_until_compacted),
      cmocka_unit_test(
          a_write_built_on_a_mirror_behind_etcd_is_refused_then_reads_fresh),
      cmocka_unit_test(
          a_record_deleted_or_created_behind_a_reader_is_never_overwritten),
      cmocka_unit_test(
          a_refused_commit_whose_bytes_are_in_etcd_counts_as_landed),
      cmocka_unit_test(destroy_of_null_is_a_no_op),
  };
  return cmocka_run_group_tests_name("etcd_catalog", live, etcd_group_setup,
                                     etcd_group_teardown);
}
