/*
 * etcd_catalog.c - mirror of etcd in an in-memory RocksDB.
 *
 * Threads: the etcd watch thread applies changes (events accumulate in a
 * pending batch, written at each batch end) and calls on_change; a
 * supervisor thread rebuilds the mirror when the watch reports that etcd
 * compacted past it; Admin handlers commit from gRPC workers and wait on
 * a condition variable for the mirror to reach their Txn's revision.
 *
 * Conditional commits (lk_catalog_commit_if): each record the writer read
 * becomes a value compare in the Txn (absent: mod revision 0). When etcd
 * refuses, the committer reads the records from etcd itself to tell why:
 * the batch may already be there (lib/etcd resent the Txn after an
 * ambiguous failure and its first attempt landed); else a record changed,
 * and the committer waits until the mirror shows what etcd now holds
 * before it reports the change, so the writer's next read is fresh; else
 * the key-ring fence moved.
 */
#include "controlplane/etcd_catalog.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/keyfence.h"
#include "lib/log.h"
#include "lib/secret.h"
#include "lib/store.h"

#define COMMIT_VISIBLE_TIMEOUT_S 10
#define MAX_KEY 4096
#define CRED_PREFIX "cred/"

struct lk_etcd_catalog {
  lk_etcd *etcd;
  lk_store *mirror;
  lk_catalog *cat;
  lk_etcd_catalog_change_fn on_change;
  void *ctx;
  lk_keyring *fence_kr; /* set before serving: commits compare the fence */
  lk_etcd_watch *watch;
  lk_store_batch *pending; /* watch thread only */
  size_t pending_ops;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int64_t revision;       /* applied (guarded by mu) */
  int64_t event_revision; /* of the last applied change (guarded by mu) */
  int need_reload;        /* guarded by mu */
  int stopping;           /* guarded by mu */
  pthread_t supervisor;
  int supervisor_started;
};

/* ---- loading --------------------------------------------------------- */

typedef struct {
  lk_store_batch *b;
  size_t n;
} load_ctx;

static int on_range_kv(void *ctx, const char *key, const unsigned char *val,
                       size_t len, int64_t mod_revision) {
  load_ctx *lc = ctx;
  (void)mod_revision;
  lk_store_batch_put(lc->b, key, val, len);
  lc->n++;
  return 0;
}

static int collect_old(void *ctx, const char *key, size_t key_len,
                       const unsigned char *val, size_t val_len) {
  lk_store_batch *b = ctx;
  (void)key_len;
  (void)val;
  (void)val_len;
  if (strncmp(key, "meta/", 5) != 0)
    lk_store_batch_delete(b, key);
  return 0;
}

/* Replaces the mirror's records with etcd's current ones, in one batch. */
static lk_status reload(lk_etcd_catalog *c, lk_err *err) {
  lk_store_batch *b = lk_store_batch_new();
  if (b == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  lk_status st = lk_store_scan(c->mirror, "", collect_old, b, err);
  load_ctx lc = {b, 0};
  int64_t rev = 0;
  if (st == LK_OK)
    st = lk_etcd_range(c->etcd, "", 0, on_range_kv, &lc, &rev, err);
  if (st == LK_OK)
    st = lk_store_write(c->mirror, b, err);
  lk_store_batch_destroy(b);
  if (st != LK_OK)
    return st;
  pthread_mutex_lock(&c->mu);
  c->revision = rev;
  c->event_revision = rev;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  lk_log(LK_LOG_INFO, "catalog_loaded",
         "loaded %zu records from etcd at revision %lld", lc.n, (long long)rev);
  return LK_OK;
}

/* A catalog refusing every commit: a past revision is read-only. */
static lk_status refuse_commit(void *ctx, lk_store_batch *b,
                               lk_catalog_seen *const *seen, size_t n_seen,
                               int *changed, lk_err *err) {
  (void)ctx;
  (void)b;
  (void)seen;
  (void)n_seen;
  (void)changed;
  return lk_fail(err, LK_FAILED_PRECONDITION,
                 "a catalog at a past etcd revision is read-only");
}

lk_status lk_etcd_catalog_at(lk_etcd_catalog *c, int64_t revision,
                             lk_catalog **out, lk_store **store_out,
                             lk_err *err) {
  static atomic_ulong seq;
  char name[64];
  lk_store *st_mem = NULL;
  lk_catalog *cat = NULL;
  lk_store_batch *b = NULL;
  lk_status st = LK_OK;

  *out = NULL;
  *store_out = NULL;
  if (revision <= 0)
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "a past catalog needs a revision > 0, not %lld",
                   (long long)revision);
  snprintf(name, sizeof(name), "/lk-history-%lu",
           (unsigned long)atomic_fetch_add(&seq, 1));
  b = lk_store_batch_new();
  if (b == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  load_ctx lc = {b, 0};
  st = lk_etcd_range(c->etcd, "", revision, on_range_kv, &lc, NULL, err);
  if (st == LK_OK)
    st = lk_store_open_memory(name, &st_mem, err);
  if (st == LK_OK)
    st = lk_store_write(st_mem, b, err);
  if (st == LK_OK)
    st = lk_catalog_open(st_mem, &cat, err);
  if (st == LK_OK)
    lk_catalog_set_committer(cat, refuse_commit, NULL);
  lk_store_batch_destroy(b);
  if (st != LK_OK) {
    lk_store_close(st_mem);
    return st;
  }
  *out = cat;
  *store_out = st_mem;
  return LK_OK;
}

/* ---- following ------------------------------------------------------- */

static void on_event(void *ctx, int is_delete, const char *key,
                     const unsigned char *val, size_t len,
                     int64_t mod_revision) {
  lk_etcd_catalog *c = ctx;
  (void)mod_revision;
  if (c->pending == NULL) {
    c->pending = lk_store_batch_new();
    if (c->pending == NULL)
      return;
  }
  if (is_delete)
    lk_store_batch_delete(c->pending, key);
  else
    lk_store_batch_put(c->pending, key, val, len);
  c->pending_ops++;
}

static void on_batch_end(void *ctx, int64_t revision) {
  lk_etcd_catalog *c = ctx;
  int changed = c->pending_ops > 0;
  if (c->pending != NULL) {
    lk_err err;
    if (lk_store_write(c->mirror, c->pending, &err) != LK_OK) {
      /* The mirror is now behind etcd: rebuild it rather than serve it. */
      lk_log(LK_LOG_ERROR, "catalog_apply_failed", "revision %lld: %s",
             (long long)revision, err.msg);
      pthread_mutex_lock(&c->mu);
      c->need_reload = 1;
      pthread_cond_broadcast(&c->cv);
      pthread_mutex_unlock(&c->mu);
      changed = 0;
    }
    lk_store_batch_destroy(c->pending);
    c->pending = NULL;
    c->pending_ops = 0;
  }
  pthread_mutex_lock(&c->mu);
  if (revision > c->revision)
    c->revision = revision;
  /* etcd < 3.4.25 may report progress at a revision before delivering its
   * events: only applied events make a commit visible. */
  if (changed && revision > c->event_revision)
    c->event_revision = revision;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  if (changed && c->on_change != NULL)
    c->on_change(c->ctx, revision);
}

static void on_watch_error(void *ctx, lk_status code, int64_t compact_revision,
                           const char *msg) {
  lk_etcd_catalog *c = ctx;
  if (code == LK_UNAVAILABLE)
    return; /* lib/etcd logs its reconnects and resumes by itself */
  lk_log(LK_LOG_WARN, "etcd_watch_stopped",
         "%s (compact revision %lld): reloading the catalog", msg,
         (long long)compact_revision);
  pthread_mutex_lock(&c->mu);
  c->need_reload = 1;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static lk_status start_watch(lk_etcd_catalog *c, lk_err *err) {
  int64_t from = lk_etcd_catalog_revision(c) + 1;
  return lk_etcd_watch_start(c->etcd, "", from, on_event, on_batch_end,
                             on_watch_error, c, &c->watch, err);
}

/* Rebuilds the mirror whenever the watch cannot continue. */
static void *supervisor_main(void *arg) {
  lk_etcd_catalog *c = arg;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    while (!c->need_reload && !c->stopping)
      pthread_cond_wait(&c->cv, &c->mu);
    if (c->stopping)
      break;
    c->need_reload = 0;
    pthread_mutex_unlock(&c->mu);
    lk_etcd_watch_destroy(c->watch);
    c->watch = NULL;
    lk_store_batch_destroy(c->pending);
    c->pending = NULL;
    c->pending_ops = 0;
    lk_err err;
    lk_status st = reload(c, &err);
    if (st == LK_OK)
      st = start_watch(c, &err);
    if (st != LK_OK) {
      lk_log(LK_LOG_ERROR, "catalog_reload_failed", "%s: retrying in 1 s",
             err.msg);
      struct timespec ts = {1, 0};
      nanosleep(&ts, NULL);
      pthread_mutex_lock(&c->mu);
      c->need_reload = 1;
      continue;
    }
    if (c->on_change != NULL)
      c->on_change(c->ctx, lk_etcd_catalog_revision(c));
    pthread_mutex_lock(&c->mu);
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

/* ---- committing ------------------------------------------------------ */

typedef struct {
  lk_etcd_txn *txn;
  int bad;
  int puts;           /* the batch puts at least one key */
  lk_keyring *kr;     /* the fence's ring, or NULL */
  int fenced;         /* fence_id is set */
  uint32_t fence_id;  /* the key the batch's sealed values are under */
  lk_status fence_st; /* a record that cannot be fenced */
  lk_err fence_err;
} txn_ctx;

/* Notes the key a credential record put by the batch is sealed under:
 * every record in one Txn must agree, as the fence has one value. */
static void txn_note_key(txn_ctx *tc, const char *key, const unsigned char *val,
                         size_t len) {
  uint32_t id = 0;
  int sealed = 0;
  if (tc->kr == NULL || tc->fence_st != LK_OK ||
      strncmp(key, CRED_PREFIX, sizeof(CRED_PREFIX) - 1) != 0) {
    return;
  }
  tc->fence_st = lk_keyfence_record_key(val, len, &id, &sealed, &tc->fence_err);
  if (tc->fence_st != LK_OK || !sealed) {
    return;
  }
  if (tc->fenced && id != tc->fence_id) {
    tc->fence_st = lk_fail(&tc->fence_err, LK_FAILED_PRECONDITION,
                           "one commit holds values sealed under key ring "
                           "keys %u and %u",
                           (unsigned)tc->fence_id, (unsigned)id);
    return;
  }
  tc->fenced = 1;
  tc->fence_id = id;
}

static int copy_key(const char *key, size_t len, char out[MAX_KEY]) {
  if (len >= MAX_KEY)
    return -1;
  memcpy(out, key, len);
  out[len] = '\0';
  return 0;
}

static void txn_put(void *ctx, const char *key, size_t key_len,
                    const unsigned char *val, size_t val_len) {
  txn_ctx *tc = ctx;
  char k[MAX_KEY];
  if (copy_key(key, key_len, k) != 0) {
    tc->bad = 1;
    return;
  }
  tc->puts = 1;
  txn_note_key(tc, k, val, val_len);
  lk_etcd_txn_put(tc->txn, k, val, val_len);
}

static void txn_delete(void *ctx, const char *key, size_t key_len) {
  txn_ctx *tc = ctx;
  char k[MAX_KEY];
  if (copy_key(key, key_len, k) != 0) {
    tc->bad = 1;
    return;
  }
  lk_etcd_txn_delete(tc->txn, k);
}

typedef struct {
  lk_store *mirror;
  int present; /* a deleted key is still in the mirror */
} shown_ctx;

static void shown_put(void *ctx, const char *key, size_t key_len,
                      const unsigned char *val, size_t val_len) {
  (void)ctx;
  (void)key;
  (void)key_len;
  (void)val;
  (void)val_len;
}

static void shown_delete(void *ctx, const char *key, size_t key_len) {
  shown_ctx *sc = ctx;
  char k[MAX_KEY];
  unsigned char *v = NULL;
  size_t n = 0;
  lk_err err;
  if (copy_key(key, key_len, k) != 0 ||
      lk_store_get(sc->mirror, k, &v, &n, &err) != LK_NOT_FOUND)
    sc->present = 1;
  lk_store_value_free(v, n);
}

/* Waits (at most COMMIT_VISIBLE_TIMEOUT_S) until the mirror has applied
 * revision rev or, with rev 0, no longer holds key (NULL: nothing to wait
 * for). Returns 1 once it has, 0 when the time ran out or the catalog is
 * stopping. */
static int wait_shown(lk_etcd_catalog *c, int64_t rev, const char *key) {
  struct timespec until;
  int shown = 0;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += COMMIT_VISIBLE_TIMEOUT_S;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    if (rev > 0) {
      shown = c->event_revision >= rev;
    } else if (key == NULL) {
      shown = 1;
    } else {
      unsigned char *v = NULL;
      size_t n = 0;
      lk_err err;
      shown = lk_store_get(c->mirror, key, &v, &n, &err) == LK_NOT_FOUND;
      lk_store_value_free(v, n);
    }
    if (shown || c->stopping ||
        pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT) {
      break;
    }
  }
  pthread_mutex_unlock(&c->mu);
  return shown;
}

/* Whether every operation of a refused batch is in etcd as it wrote it. */
typedef struct {
  lk_etcd_catalog *c;
  int landed;
  int64_t rev;  /* the highest mod revision of a key it put */
  lk_status st; /* etcd could not be read */
  lk_err err;
} landed_ctx;

static void landed_put(void *ctx, const char *key, size_t key_len,
                       const unsigned char *val, size_t val_len) {
  landed_ctx *lc = ctx;
  char k[MAX_KEY];
  unsigned char *cur = NULL;
  size_t n = 0;
  int64_t rev = 0;
  if (!lc->landed || lc->st != LK_OK || copy_key(key, key_len, k) != 0) {
    lc->landed = 0;
    return;
  }
  lk_status st = lk_etcd_get(lc->c->etcd, k, &cur, &n, &rev, &lc->err);
  /* The bytes hold fresh nonces or a new version: only this batch wrote
   * them. */
  if (st == LK_OK && lk_ct_equal(cur, n, val, val_len)) {
    lc->rev = rev > lc->rev ? rev : lc->rev;
  } else if (st == LK_OK || st == LK_NOT_FOUND) {
    lc->landed = 0;
  } else {
    lc->st = st;
  }
  lk_etcd_value_free(cur, n);
}

static void landed_delete(void *ctx, const char *key, size_t key_len) {
  landed_ctx *lc = ctx;
  char k[MAX_KEY];
  unsigned char *cur = NULL;
  size_t n = 0;
  if (!lc->landed || lc->st != LK_OK || copy_key(key, key_len, k) != 0) {
    lc->landed = 0;
    return;
  }
  lk_status st = lk_etcd_get(lc->c->etcd, k, &cur, &n, NULL, &lc->err);
  if (st == LK_OK) {
    lc->landed = 0;
  } else if (st != LK_NOT_FOUND) {
    lc->st = st;
  }
  lk_etcd_value_free(cur, n);
}

/* Waits until the mirror no longer holds each key a landed batch deleted. */
typedef struct {
  lk_etcd_catalog *c;
  int shown;
} gone_ctx;

static void gone_delete(void *ctx, const char *key, size_t key_len) {
  gone_ctx *gc = ctx;
  char k[MAX_KEY];
  if (gc->shown && copy_key(key, key_len, k) == 0) {
    gc->shown = wait_shown(gc->c, 0, k);
  }
}

/* Finds the first seen record etcd no longer holds as it was read:
 * *which is its index (n when every one is as read) and *rev its mod
 * revision now (0: absent). */
static lk_status find_changed(lk_etcd_catalog *c, lk_catalog_seen *const *seen,
                              size_t n, size_t *which, int64_t *rev,
                              lk_err *err) {
  for (*which = 0; *which < n; (*which)++) {
    size_t want_len = 0;
    const unsigned char *want = lk_catalog_seen_value(seen[*which], &want_len);
    unsigned char *cur = NULL;
    size_t len = 0;
    *rev = 0;
    lk_status st = lk_etcd_get(c->etcd, lk_catalog_seen_key(seen[*which]), &cur,
                               &len, rev, err);
    int same = st == LK_NOT_FOUND
                   ? want == NULL
                   : want != NULL && lk_ct_equal(cur, len, want, want_len);
    lk_etcd_value_free(cur, len);
    if (st != LK_OK && st != LK_NOT_FOUND) {
      return st;
    }
    if (!same) {
      lk_err_clear(err);
      return LK_OK;
    }
  }
  lk_err_clear(err);
  return LK_OK;
}

/* Tells why etcd refused a batch with seen records (see the file comment).
 * LK_OK with *rev set when it had landed; LK_UNAVAILABLE with *changed
 * set, once the mirror shows the change, when a record changed; the
 * fence's answer when it moved. */
static lk_status explain_refusal(lk_etcd_catalog *c, lk_store_batch *b,
                                 lk_catalog_seen *const *seen, size_t n,
                                 const txn_ctx *tc, int64_t *rev, int *changed,
                                 lk_err *err) {
  landed_ctx lc;
  size_t which = n;
  int64_t cur_rev = 0;
  memset(&lc, 0, sizeof(lc));
  lc.c = c;
  lc.landed = 1;
  lk_store_batch_iterate(b, landed_put, landed_delete, &lc);
  if (lc.st != LK_OK) {
    return lk_fail(err, lc.st, "%s", lc.err.msg);
  }
  if (lc.landed) {
    gone_ctx gc = {c, 1};
    lk_store_batch_iterate(b, shown_put, gone_delete, &gc);
    *rev = lc.rev;
    if (!gc.shown) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "the change was committed to etcd but this control "
                     "plane has not seen it yet: list again shortly");
    }
    return LK_OK;
  }
  lk_status st = find_changed(c, seen, n, &which, &cur_rev, err);
  if (st != LK_OK) {
    return st;
  }
  if (which == n && tc->fenced) {
    return lk_keyfence_refused(c->etcd, c->fence_kr, tc->fence_id, err);
  }
  if (which == n) {
    /* A compared value changed and changed back: read and build again. */
    *changed = 1;
    return lk_fail(err, LK_UNAVAILABLE, LK_CATALOG_CHANGED_FMT,
                   lk_catalog_seen_key(seen[0]));
  }
  /* The caller reads the record again: the mirror must show it first. */
  const char *key = lk_catalog_seen_key(seen[which]);
  if (!wait_shown(c, cur_rev, key)) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "%s changed while this write was being applied and this "
                   "control plane has not seen the change yet; retry shortly",
                   key);
  }
  *changed = 1;
  return lk_fail(err, LK_UNAVAILABLE, LK_CATALOG_CHANGED_FMT, key);
}

/* lk_catalog_commit_fn: the batch as one etcd Txn comparing every seen
 * record, visible on return. */
static lk_status commit_to_etcd(void *ctx, lk_store_batch *b,
                                lk_catalog_seen *const *seen, size_t n_seen,
                                int *changed, lk_err *err) {
  lk_etcd_catalog *c = ctx;
  lk_status st = lk_store_batch_status(b, err);
  if (st != LK_OK)
    return st;
  txn_ctx tc;
  memset(&tc, 0, sizeof(tc));
  tc.txn = lk_etcd_txn_new();
  tc.kr = c->fence_kr;
  if (tc.txn == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  lk_store_batch_iterate(b, txn_put, txn_delete, &tc);
  for (size_t i = 0; i < n_seen; i++) {
    size_t len = 0;
    const unsigned char *val = lk_catalog_seen_value(seen[i], &len);
    if (val != NULL) {
      lk_etcd_txn_expect_value(tc.txn, lk_catalog_seen_key(seen[i]), val, len);
    } else {
      lk_etcd_txn_expect_mod_revision(tc.txn, lk_catalog_seen_key(seen[i]), 0);
    }
  }
  int64_t rev = 0;
  if (tc.bad) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "a key in the batch is too long");
  } else if (tc.fence_st != LK_OK) {
    st = lk_fail(err, tc.fence_st, "%s", tc.fence_err.msg);
  } else {
    if (tc.fenced)
      lk_keyfence_expect(tc.txn, tc.fence_id);
    st = lk_etcd_txn_commit(c->etcd, tc.txn, &rev, err);
    if (st == LK_FAILED_PRECONDITION && n_seen > 0)
      st = explain_refusal(c, b, seen, n_seen, &tc, &rev, changed, err);
    else if (st == LK_FAILED_PRECONDITION && tc.fenced)
      /* The batch has no compare but the fence's. */
      st = lk_keyfence_refused(c->etcd, c->fence_kr, tc.fence_id, err);
  }
  lk_etcd_txn_destroy(tc.txn);
  if (st != LK_OK)
    return st;
  /* A Txn that changes nothing (only deletes of absent keys, or no ops)
   * gets etcd's current revision, which may belong to a key outside the
   * prefix: no event of ours ever reaches it. Such a batch is already
   * visible once none of its deleted keys is in the mirror. */
  if (!tc.puts) {
    shown_ctx sc = {c->mirror, 0};
    lk_store_batch_iterate(b, shown_put, shown_delete, &sc);
    if (!sc.present)
      return LK_OK;
  }
  if (!wait_shown(c, rev, NULL)) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "the change was committed to etcd at revision %lld but "
                   "this control plane has not seen it yet: list again "
                   "shortly",
                   (long long)rev);
  }
  return LK_OK;
}

/* ---- lifecycle ------------------------------------------------------- */

lk_status lk_etcd_catalog_open(lk_etcd *etcd,
                               lk_etcd_catalog_change_fn on_change, void *ctx,
                               lk_etcd_catalog **out, lk_err *err) {
  *out = NULL;
  lk_etcd_catalog *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  c->etcd = etcd;
  c->on_change = on_change;
  c->ctx = ctx;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  lk_status st = lk_store_open_memory("/latchkey-etcd-mirror", &c->mirror, err);
  if (st == LK_OK)
    st = lk_catalog_open(c->mirror, &c->cat, err);
  if (st == LK_OK) {
    lk_catalog_set_committer(c->cat, commit_to_etcd, c);
    st = reload(c, err);
  }
  if (st == LK_OK)
    st = start_watch(c, err);
  if (st == LK_OK) {
    if (pthread_create(&c->supervisor, NULL, supervisor_main, c) != 0) {
      st = lk_fail(err, LK_INTERNAL, "cannot start the catalog supervisor");
    } else {
      c->supervisor_started = 1;
    }
  }
  if (st != LK_OK) {
    lk_etcd_catalog_destroy(c);
    return st;
  }
  *out = c;
  return LK_OK;
}

lk_status lk_etcd_catalog_use_fence(lk_etcd_catalog *c, lk_keyring *kr,
                                    lk_err *err) {
  lk_status st = lk_keyfence_sync(c->etcd, kr, NULL, err);
  if (st == LK_OK)
    c->fence_kr = kr;
  return st;
}

lk_catalog *lk_etcd_catalog_catalog(const lk_etcd_catalog *c) {
  return c->cat;
}

int64_t lk_etcd_catalog_revision(lk_etcd_catalog *c) {
  pthread_mutex_lock(&c->mu);
  int64_t r = c->revision;
  pthread_mutex_unlock(&c->mu);
  return r;
}

void lk_etcd_catalog_destroy(lk_etcd_catalog *c) {
  if (c == NULL)
    return;
  pthread_mutex_lock(&c->mu);
  c->stopping = 1;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  if (c->supervisor_started)
    pthread_join(c->supervisor, NULL);
  lk_etcd_watch_destroy(c->watch);
  lk_store_batch_destroy(c->pending);
  lk_catalog_destroy(c->cat);
  lk_store_close(c->mirror);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  free(c);
}
