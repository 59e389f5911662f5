/*
 * reseal.c - the re-sealer thread (see reseal.h for the protocol).
 *
 * Threads: one re-sealer thread runs passes; Admin workers call
 * lk_reseal_rotate and lk_reseal_status. They share only what mu guards
 * (stop and kick flags, "resealing", the last error); the key ring has its
 * own lock and etcd and the mirror are thread-safe. The thread sleeps on a
 * monotonic condition variable between passes, so a rotation or shutdown
 * wakes it at once.
 *
 * Secrets: a value's plaintext exists only in the lk_secret between
 * lk_keyring_unseal and lk_keyring_seal; the re-encoded record (ciphertext
 * only) is wiped before it is freed, as every credential encoding is.
 * Logs name credential ids, field names, key ids and counts, never values.
 */
#include "controlplane/reseal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/keyfence.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "lib/secret.h"

#define CRED_PREFIX "cred/"
#define MIN_BACKOFF_MS 500

struct lk_reseal {
  lk_etcd *etcd;
  lk_catalog *cat;
  lk_keyring *kr;
  int64_t grace_ms;
  int64_t poll_ms;
  pthread_t thread;
  int started;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* CLOCK_MONOTONIC */
  int stopping;      /* mu */
  int kicked;        /* mu: run a pass now */
  int resealing;     /* mu: the ring has retiring keys and we work on them */
  char last_error[LK_ADMIN_KEY_ERROR_BYTES]; /* mu */
  /* re-sealer thread only */
  uint32_t seen_active;    /* active key id at the last pass */
  int64_t active_since_ms; /* when this process first saw it active */
  int64_t last_move_ms;    /* end of the last pass that re-sealed values */
  int64_t backoff_ms;
};

/* ---- shared state ------------------------------------------------------- */

static int is_stopping(lk_reseal *r) {
  pthread_mutex_lock(&r->mu);
  int s = r->stopping;
  pthread_mutex_unlock(&r->mu);
  return s;
}

static void set_error(lk_reseal *r, const char *msg) {
  pthread_mutex_lock(&r->mu);
  snprintf(r->last_error, sizeof(r->last_error), "%s", msg);
  pthread_mutex_unlock(&r->mu);
}

static void set_resealing(lk_reseal *r, int on) {
  pthread_mutex_lock(&r->mu);
  r->resealing = on;
  pthread_mutex_unlock(&r->mu);
}

/* Returns the next pause after a failed pass: 500 ms, doubling, capped. */
static int64_t backoff(lk_reseal *r) {
  r->backoff_ms = r->backoff_ms == 0 ? MIN_BACKOFF_MS : r->backoff_ms * 2;
  if (r->backoff_ms > LK_RESEAL_MAX_BACKOFF_MS) {
    r->backoff_ms = LK_RESEAL_MAX_BACKOFF_MS;
  }
  return r->backoff_ms;
}

/* ---- one credential ----------------------------------------------------- */

/* A value re-sealed under the active key, standing in for the stored one
 * while the record is re-encoded. */
typedef struct {
  Latchkey__V1__SealedValue sv;
  Latchkey__V1__SealedValue *orig;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
  size_t ct_len;
} fresh_seal;

/* Reads the credential at key from etcd and, when a secret value in it is
 * sealed under a key other than the active one, re-seals those values and
 * commits the record if its mod revision is still the one read. Adds the
 * values moved to *moved; sets *conflict when the record changed
 * meanwhile (nothing written). A record deleted meanwhile is LK_OK. */
static lk_status reseal_attempt(lk_reseal *r, const char *key, uint64_t *moved,
                                int *conflict, lk_err *err) {
  lk_status st = LK_OK;
  unsigned char *val = NULL;
  size_t len = 0;
  int64_t mod_revision = 0;
  Latchkey__V1__Credential *c = NULL;
  fresh_seal *fs = NULL;
  size_t n = 0;
  uint64_t changed = 0;
  unsigned char *buf = NULL;
  size_t buf_len = 0;
  lk_etcd_txn *txn = NULL;
  uint32_t fence_id = 0; /* the key this attempt sealed under */

  *conflict = 0;
  /* Another control plane may have rotated again: seal under the newest. */
  if ((st = lk_keyring_refresh(r->kr, NULL, err)) != LK_OK) {
    goto done;
  }
  uint32_t active = lk_keyring_active_id(r->kr);
  st = lk_etcd_get(r->etcd, key, &val, &len, &mod_revision, err);
  if (st == LK_NOT_FOUND) {
    st = LK_OK;
    goto done;
  }
  if (st != LK_OK) {
    goto done;
  }
  c = latchkey__v1__credential__unpack(NULL, len, val);
  if (c == NULL) {
    st = lk_fail(err, LK_INTERNAL, "stored record %s does not decode", key);
    goto done;
  }
  n = c->n_fields;
  fs = calloc(n > 0 ? n : 1, sizeof(*fs));
  if (fs == NULL) {
    st =
        lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory re-sealing %s", key);
    goto done;
  }
  /* Every field's stored value, before any may be replaced: the cleanup
   * puts them all back, whichever field failed. */
  for (size_t i = 0; i < n; i++) {
    fs[i].orig = c->fields[i]->sealed;
  }
  for (size_t i = 0; i < n; i++) {
    Latchkey__V1__FieldValue *f = c->fields[i];
    lk_secret *pt = NULL;
    uint32_t key_id = 0;
    if (!f->secret || f->sealed == NULL || f->sealed->ciphertext.len == 0 ||
        f->sealed->key_id == active) {
      continue;
    }
    if (!lk_keyring_has_key(r->kr, f->sealed->key_id)) {
      /* Nothing can open it here: leave it (GetKeyStatus counts it as
       * "missing") and move the rest, so the old keys can still retire. */
      lk_log(LK_LOG_WARN, "keys.reseal.missing_key",
             "credential %s field %s is sealed under key %u, which the key "
             "ring does not hold: left as it is; re-enter it",
             c->id, f->name, (unsigned)f->sealed->key_id);
      continue;
    }
    st = lk_keyring_unseal(r->kr, f->sealed->key_id, c->id, f->name,
                           f->sealed->nonce.data, f->sealed->nonce.len,
                           f->sealed->ciphertext.data,
                           f->sealed->ciphertext.len, &pt, err);
    if (st != LK_OK) {
      goto done;
    }
    st = lk_keyring_seal(r->kr, c->id, f->name, lk_secret_data(pt),
                         lk_secret_len(pt), &key_id, fs[i].nonce, &fs[i].ct,
                         &fs[i].ct_len, err);
    lk_secret_free(pt); /* last use of the plaintext */
    if (st != LK_OK) {
      goto done;
    }
    if (changed > 0 && key_id != fence_id) {
      /* The ring reloaded between two fields: read and seal again. */
      *conflict = 1;
      goto done;
    }
    fence_id = key_id;
    latchkey__v1__sealed_value__init(&fs[i].sv);
    fs[i].sv.key_id = key_id;
    fs[i].sv.nonce.data = fs[i].nonce;
    fs[i].sv.nonce.len = sizeof(fs[i].nonce);
    fs[i].sv.ciphertext.data = fs[i].ct;
    fs[i].sv.ciphertext.len = fs[i].ct_len;
    f->sealed = &fs[i].sv;
    changed++;
  }
  if (changed == 0) {
    goto done; /* another re-sealer or an Admin update got there first */
  }
  buf_len = latchkey__v1__credential__get_packed_size(c);
  buf = malloc(buf_len > 0 ? buf_len : 1);
  txn = lk_etcd_txn_new();
  if (buf == NULL || txn == NULL) {
    st =
        lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory re-sealing %s", key);
    goto done;
  }
  latchkey__v1__credential__pack(c, buf);
  /* The fence vouches for the key this attempt sealed under; values it
   * left as they are stay as etcd holds them (the mod revision compare). */
  lk_etcd_txn_expect_mod_revision(txn, key, mod_revision);
  lk_keyfence_expect(txn, fence_id);
  lk_etcd_txn_put(txn, key, buf, buf_len);
  st = lk_etcd_txn_commit(r->etcd, txn, NULL, err);
  if (st == LK_FAILED_PRECONDITION) { /* the only one a commit reports */
    /* The record changed, or the fence refused the key: after a reload
     * when the fence moved past it, read and seal again. */
    lk_err ferr;
    lk_status fst = lk_keyfence_refused(r->etcd, r->kr, fence_id, &ferr);
    (void)fst; /* always "retry", which the conflict does */
    st = LK_OK;
    *conflict = 1;
    goto done;
  }
  if (st == LK_OK) {
    *moved += changed;
  }
done:
  for (size_t i = 0; fs != NULL && i < n; i++) {
    c->fields[i]->sealed = fs[i].orig;
    free(fs[i].ct); /* ciphertext only */
  }
  free(fs);
  if (c != NULL) {
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  if (buf != NULL) {
    lk_wipe_free(buf, buf_len);
  }
  lk_etcd_txn_destroy(txn);
  lk_etcd_value_free(val, len);
  return st;
}

/* reseal_attempt until it does not conflict, at most LK_RESEAL_MAX_TRIES
 * times. */
static lk_status reseal_one(lk_reseal *r, const char *key, uint64_t *moved,
                            lk_err *err) {
  for (int attempt = 0; attempt < LK_RESEAL_MAX_TRIES; attempt++) {
    int conflict = 0;
    if (is_stopping(r)) {
      return LK_OK;
    }
    lk_status st = reseal_attempt(r, key, moved, &conflict, err);
    if (!conflict) {
      return st;
    }
    lk_log(LK_LOG_DEBUG, "keys.reseal.conflict",
           "%s changed while it was re-sealed: reading it again", key);
  }
  return lk_fail(err, LK_UNAVAILABLE,
                 "%s changed %d times while it was re-sealed; the next pass "
                 "retries it",
                 key, LK_RESEAL_MAX_TRIES);
}

/* ---- one pass ----------------------------------------------------------- */

typedef struct {
  lk_reseal *r;
  uint32_t active;
  char **keys; /* credentials with a value under a retiring key */
  size_t n, cap;
  uint64_t retiring; /* values under a retiring key of the ring */
  uint64_t unknown;  /* values under a key the ring does not hold */
  char unknown_example[256];
  uint64_t undecodable;
  int oom;
} scan_ctx;

/* lk_etcd_kv_fn: notes what one stored credential needs. */
static int scan_cred(void *ctx, const char *key, const unsigned char *val,
                     size_t len, int64_t mod_revision) {
  scan_ctx *sc = ctx;
  int needs = 0;
  (void)mod_revision;
  if (is_stopping(sc->r)) {
    return 1;
  }
  Latchkey__V1__Credential *c =
      latchkey__v1__credential__unpack(NULL, len, val);
  if (c == NULL) {
    sc->undecodable++;
    return 0;
  }
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret || f->sealed == NULL || f->sealed->ciphertext.len == 0 ||
        f->sealed->key_id == sc->active) {
      continue;
    }
    if (lk_keyring_has_key(sc->r->kr, f->sealed->key_id)) {
      sc->retiring++;
      needs = 1;
    } else {
      if (sc->unknown == 0) {
        snprintf(sc->unknown_example, sizeof(sc->unknown_example),
                 "credential %.128s field %.64s, key %u", c->id, f->name,
                 (unsigned)f->sealed->key_id);
      }
      sc->unknown++;
    }
  }
  latchkey__v1__credential__free_unpacked(c, NULL);
  if (!needs || sc->n == LK_RESEAL_MAX_PASS_CREDS) {
    return 0; /* past the cap: the next pass takes the rest */
  }
  if (sc->n == sc->cap) {
    size_t cap = sc->cap ? sc->cap * 2 : 256;
    char **keys = realloc(sc->keys, cap * sizeof(*keys));
    if (keys == NULL) {
      sc->oom = 1;
      return 1;
    }
    sc->keys = keys;
    sc->cap = cap;
  }
  sc->keys[sc->n] = strdup(key);
  if (sc->keys[sc->n] == NULL) {
    sc->oom = 1;
    return 1;
  }
  sc->n++;
  return 0;
}

typedef struct {
  uint64_t retiring; /* found under a retiring key at the start */
  uint64_t unknown;  /* found under a key the ring does not hold */
  char unknown_example[256];
  uint64_t moved;  /* re-sealed under the active key */
  uint64_t failed; /* credentials that could not be re-sealed */
  char first_failure[LK_ADMIN_KEY_ERROR_BYTES];
} pass_result;

/* Scans every credential in etcd and re-seals those with a value under a
 * retiring key. LK_OK even when single credentials failed (res->failed);
 * an error when etcd could not be scanned. */
static lk_status run_pass(lk_reseal *r, uint32_t active, pass_result *res,
                          lk_err *err) {
  scan_ctx sc;
  memset(&sc, 0, sizeof(sc));
  sc.r = r;
  sc.active = active;
  lk_status st =
      lk_etcd_range(r->etcd, CRED_PREFIX, 0, scan_cred, &sc, NULL, err);
  if (st == LK_OK && sc.oom) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of memory listing credentials to re-seal");
  }
  if (st != LK_OK) {
    goto done;
  }
  res->retiring = sc.retiring;
  res->unknown = sc.unknown;
  memcpy(res->unknown_example, sc.unknown_example, sizeof(sc.unknown_example));
  if (sc.undecodable > 0) {
    lk_log(LK_LOG_ERROR, "keys.reseal.undecodable",
           "%llu stored credentials do not decode; they are left as they are",
           (unsigned long long)sc.undecodable);
  }
  if (sc.n == 0) {
    goto done;
  }
  lk_log(LK_LOG_INFO, "keys.reseal.start",
         "re-sealing %llu secret values in %zu credentials under key %u",
         (unsigned long long)sc.retiring, sc.n, (unsigned)active);
  int64_t last_log = lk_now_ms();
  for (size_t i = 0; i < sc.n && !is_stopping(r); i++) {
    lk_err e1;
    lk_err_clear(&e1);
    if (reseal_one(r, sc.keys[i], &res->moved, &e1) != LK_OK) {
      if (res->failed++ == 0) {
        snprintf(res->first_failure, sizeof(res->first_failure), "%s", e1.msg);
      }
      lk_log(LK_LOG_WARN, "keys.reseal.failed", "%s: %s", sc.keys[i], e1.msg);
    }
    int64_t now = lk_now_ms();
    if (now - last_log >= LK_RESEAL_PROGRESS_MS) {
      last_log = now;
      lk_log(LK_LOG_INFO, "keys.reseal.progress",
             "%llu/%llu secret values re-sealed under key %u",
             (unsigned long long)res->moved, (unsigned long long)sc.retiring,
             (unsigned)lk_keyring_active_id(r->kr));
    }
  }
  lk_log(LK_LOG_INFO, "keys.reseal.progress",
         "%llu/%llu secret values re-sealed under key %u (pass done, %llu "
         "credentials failed)",
         (unsigned long long)res->moved, (unsigned long long)sc.retiring,
         (unsigned)lk_keyring_active_id(r->kr),
         (unsigned long long)res->failed);
done:
  for (size_t i = 0; i < sc.n; i++) {
    free(sc.keys[i]);
  }
  free(sc.keys);
  return st;
}

/* Removes every key but active from the key ring file and reloads. */
static lk_status retire(lk_reseal *r, const uint32_t *ids, size_t n,
                        uint32_t active, lk_err *err) {
  char list[LK_ADMIN_KEY_ERROR_BYTES];
  size_t used = 0;
  list[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    if (ids[i] == active) {
      continue;
    }
    lk_status st = lk_keyring_remove_key(lk_keyring_path(r->kr), ids[i], err);
    if (st == LK_NOT_FOUND) {
      continue; /* another control plane retired it first */
    }
    if (st != LK_OK) {
      return st;
    }
    int w = snprintf(list + used, sizeof(list) - used, "%s%u",
                     used > 0 ? ", " : "", (unsigned)ids[i]);
    if (w > 0 && (size_t)w < sizeof(list) - used) {
      used += (size_t)w;
    }
  }
  lk_status st = lk_keyring_refresh(r->kr, NULL, err);
  if (st != LK_OK) {
    return st;
  }
  if (used > 0) {
    lk_log(LK_LOG_INFO, "keys.retired",
           "removed retiring key %s from the key ring: every secret value is "
           "sealed under key %u",
           list, (unsigned)active);
  }
  return LK_OK;
}

/* Runs one pass when the ring has retiring keys; returns how long to
 * sleep before the next one (0: at once). */
static int64_t run_once(lk_reseal *r) {
  lk_err err;
  uint32_t ids[LK_KEYRING_MAX_KEYS];
  uint32_t active = 0;
  pass_result res;
  lk_err_clear(&err);
  memset(&res, 0, sizeof(res));
  if (lk_keyring_refresh(r->kr, NULL, &err) != LK_OK) {
    lk_log(LK_LOG_WARN, "keys.reload_failed", "%s", err.msg);
    set_error(r, err.msg);
    return backoff(r);
  }
  size_t n = lk_keyring_key_ids(r->kr, ids, &active);
  int64_t started = lk_now_ms();
  if (active != r->seen_active) {
    r->seen_active = active;
    r->active_since_ms = started;
  }
  if (n <= 1) {
    set_resealing(r, 0);
    r->backoff_ms = 0;
    return r->poll_ms;
  }
  set_resealing(r, 1);
  /* The pass below decides retirement only if it starts after the fence
   * names the active key: from then on etcd refuses every write sealed
   * under an older key, so what the pass finds is all there will be. */
  uint32_t fence = 0;
  if (lk_keyfence_advance(r->etcd, active, &fence, &err) != LK_OK) {
    lk_log(LK_LOG_WARN, "keys.fence_failed", "%s", err.msg);
    set_error(r, err.msg);
    return backoff(r);
  }
  if (fence != active) { /* the fence is ahead: our ring is stale */
    if (lk_keyfence_sync(r->etcd, r->kr, NULL, &err) != LK_OK) {
      lk_log(LK_LOG_WARN, "keys.fence_failed", "%s", err.msg);
      set_error(r, err.msg);
      return backoff(r);
    }
    return 0;
  }
  if (run_pass(r, active, &res, &err) != LK_OK) {
    lk_log(LK_LOG_WARN, "keys.reseal.failed", "pass failed: %s", err.msg);
    set_error(r, err.msg);
    return backoff(r);
  }
  if (is_stopping(r)) {
    return 0;
  }
  if (res.failed > 0) {
    set_error(r, res.first_failure);
    return backoff(r);
  }
  r->backoff_ms = 0;
  if (res.retiring > 0 || res.moved > 0) {
    r->last_move_ms = lk_now_ms();
    return 0; /* again at once: the next pass must find nothing */
  }
  if (res.unknown > 0) {
    char msg[LK_ADMIN_KEY_ERROR_BYTES];
    snprintf(msg, sizeof(msg),
             "%llu secret values are sealed under keys this key ring does not "
             "hold (first: %s): re-enter those credentials",
             (unsigned long long)res.unknown, res.unknown_example);
    set_error(r, msg);
  } else {
    set_error(r, "");
  }
  /* Quiet for the grace period: since the key became active (writes
   * sealed under the old key by a control plane that had not reloaded yet)
   * and since our last re-seal (an update built from a mirror that had not
   * seen it yet), so whatever those writes put back is found first. */
  int64_t quiet_since = r->active_since_ms > r->last_move_ms
                            ? r->active_since_ms
                            : r->last_move_ms;
  if (started - quiet_since < r->grace_ms) {
    return quiet_since + r->grace_ms - started;
  }
  if (retire(r, ids, n, active, &err) != LK_OK) {
    lk_log(LK_LOG_WARN, "keys.retire_failed", "%s", err.msg);
    set_error(r, err.msg);
    return backoff(r);
  }
  set_resealing(r, 0);
  return r->poll_ms;
}

static void *reseal_main(void *arg) {
  lk_reseal *r = arg;
  int64_t wait_ms = 0; /* a rotation cut short resumes at once */
  for (;;) {
    pthread_mutex_lock(&r->mu);
    if (wait_ms > 0) {
      struct timespec until;
      clock_gettime(CLOCK_MONOTONIC, &until);
      until.tv_sec += wait_ms / 1000;
      until.tv_nsec += (wait_ms % 1000) * 1000000L;
      if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
      }
      while (!r->kicked && !r->stopping &&
             pthread_cond_timedwait(&r->cv, &r->mu, &until) == 0) {
      }
    }
    int stop = r->stopping;
    r->kicked = 0;
    pthread_mutex_unlock(&r->mu);
    if (stop) {
      break;
    }
    wait_ms = run_once(r);
  }
  return NULL;
}

/* ---- the Admin sealer --------------------------------------------------- */

/* lk_admin_seal_fn over the key ring, refreshed first: another control
 * plane may have rotated the shared file, and a write must not be sealed
 * under a key that is already retiring. */
static lk_status seal_with_keyring(void *ctx, const char *cred_id,
                                   const char *field, const unsigned char *pt,
                                   size_t len, uint32_t *key_id,
                                   unsigned char nonce[LK_SEAL_NONCE_BYTES],
                                   unsigned char **ct, size_t *ct_len,
                                   lk_err *err) {
  lk_status st = lk_keyring_refresh(ctx, NULL, err);
  if (st != LK_OK) {
    return st;
  }
  return lk_keyring_seal(ctx, cred_id, field, pt, len, key_id, nonce, ct,
                         ct_len, err);
}

/* lk_admin_reseal_fn over the key ring: a value an update keeps moves to
 * the active key (plaintext only in the lk_secret in between). */
static lk_status reseal_with_keyring(void *ctx, const char *cred_id,
                                     const char *field,
                                     const Latchkey__V1__SealedValue *stored,
                                     int *changed, uint32_t *key_id,
                                     unsigned char nonce[LK_SEAL_NONCE_BYTES],
                                     unsigned char **ct, size_t *ct_len,
                                     lk_err *err) {
  lk_keyring *kr = ctx;
  lk_secret *pt = NULL;
  *changed = 0;
  lk_status st = lk_keyring_refresh(kr, NULL, err);
  if (st != LK_OK || stored->key_id == lk_keyring_active_id(kr)) {
    return st;
  }
  st = lk_keyring_unseal(kr, stored->key_id, cred_id, field, stored->nonce.data,
                         stored->nonce.len, stored->ciphertext.data,
                         stored->ciphertext.len, &pt, err);
  if (st != LK_OK) {
    return st;
  }
  st = lk_keyring_seal(kr, cred_id, field, lk_secret_data(pt),
                       lk_secret_len(pt), key_id, nonce, ct, ct_len, err);
  lk_secret_free(pt);
  if (st == LK_OK) {
    *changed = 1;
  }
  return st;
}

lk_admin_sealer lk_reseal_admin_sealer(lk_keyring *kr) {
  lk_admin_sealer s = {seal_with_keyring, kr, reseal_with_keyring};
  return s;
}

/* ---- API ---------------------------------------------------------------- */

lk_status lk_reseal_start(const lk_reseal_config *cfg, lk_reseal **out,
                          lk_err *err) {
  lk_status st = LK_OK;
  pthread_condattr_t ca;
  lk_reseal *r = NULL;
  *out = NULL;
  if (cfg == NULL || cfg->etcd == NULL || cfg->cat == NULL || cfg->kr == NULL ||
      lk_keyring_path(cfg->kr) == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the re-sealer needs etcd, the catalog and a loaded key "
                   "ring");
  }
  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory starting the re-sealer");
  }
  r->etcd = cfg->etcd;
  r->cat = cfg->cat;
  r->kr = cfg->kr;
  r->grace_ms = cfg->grace_ms > 0 ? cfg->grace_ms : LK_RESEAL_GRACE_MS;
  r->poll_ms = cfg->poll_ms > 0 ? cfg->poll_ms : LK_RESEAL_POLL_MS;
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (pthread_create(&r->thread, NULL, reseal_main, r) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot start the re-sealer thread");
    goto done;
  }
  r->started = 1;
  *out = r;
  r = NULL;
done:
  lk_reseal_destroy(r);
  return st;
}

void lk_reseal_destroy(lk_reseal *r) {
  if (r == NULL) {
    return;
  }
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  if (r->started) {
    pthread_join(r->thread, NULL);
  }
  pthread_cond_destroy(&r->cv);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

lk_status lk_reseal_rotate(lk_reseal *r, uint32_t *new_id, lk_err *err) {
  uint32_t id = 0;
  lk_status st = lk_keyring_add_key(lk_keyring_path(r->kr), &id, err);
  if (st != LK_OK) {
    return st;
  }
  /* Reload rather than refresh: the new key must be in use on return. */
  if ((st = lk_keyring_reload(r->kr, err)) != LK_OK) {
    return st;
  }
  /* The file holds the new key, so the fence may name it: from now on no
   * write sealed under an older key lands in etcd. */
  uint32_t fence = 0;
  if ((st = lk_keyfence_advance(r->etcd, id, &fence, err)) != LK_OK) {
    return st; /* the re-sealer moves the fence before it retires */
  }
  pthread_mutex_lock(&r->mu);
  r->kicked = 1;
  r->resealing = 1;
  r->last_error[0] = '\0';
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  lk_log(LK_LOG_INFO, "keys.rotated",
         "key %u is now active; re-sealing every secret value under it",
         (unsigned)id);
  if (new_id != NULL) {
    *new_id = id;
  }
  return LK_OK;
}

/* Secret values per key id in the mirror. */
typedef struct {
  uint32_t ids[LK_ADMIN_MAX_KEYS];
  uint64_t counts[LK_ADMIN_MAX_KEYS];
  size_t n;
  uint64_t total;
} key_counts;

/* lk_catalog_credential_fn: counts one credential's sealed values. */
static int count_cred(void *ctx, Latchkey__V1__Credential *c) {
  key_counts *kc = ctx;
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret || f->sealed == NULL || f->sealed->ciphertext.len == 0) {
      continue;
    }
    kc->total++;
    size_t k = 0;
    while (k < kc->n && kc->ids[k] != f->sealed->key_id) {
      k++;
    }
    if (k == kc->n) {
      if (kc->n == LK_ADMIN_MAX_KEYS) {
        continue; /* counted in the total only */
      }
      kc->ids[kc->n] = f->sealed->key_id;
      kc->counts[kc->n] = 0;
      kc->n++;
    }
    kc->counts[k]++;
  }
  lk_catalog_free_credential(c);
  return 0;
}

/* Adds key id to out (when there is room) with state and count. */
static void add_key_info(lk_admin_key_status *out, uint32_t id,
                         const char *state, uint64_t count) {
  if (out->n_keys == LK_ADMIN_MAX_KEYS) {
    return;
  }
  out->keys[out->n_keys].id = id;
  out->keys[out->n_keys].state = state;
  out->keys[out->n_keys].sealed_fields = count;
  out->n_keys++;
}

lk_status lk_reseal_status(lk_reseal *r, lk_admin_key_status *out,
                           lk_err *err) {
  lk_status st = LK_OK;
  lk_err rerr;
  uint32_t ids[LK_KEYRING_MAX_KEYS];
  uint32_t active = 0;
  key_counts *kc = NULL;
  lk_err_clear(&rerr);
  memset(out, 0, sizeof(*out));
  /* A failed refresh still answers, from the keys loaded before. */
  lk_status refreshed = lk_keyring_refresh(r->kr, NULL, &rerr);
  kc = calloc(1, sizeof(*kc));
  if (kc == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory counting sealed values");
  }
  if ((st = lk_catalog_list_credentials(r->cat, count_cred, kc, err)) !=
      LK_OK) {
    goto done;
  }
  size_t n = lk_keyring_key_ids(r->kr, ids, &active);
  out->active_key_id = active;
  out->total_fields = kc->total;
  for (size_t i = 0; i < n; i++) {
    uint64_t count = 0;
    for (size_t k = 0; k < kc->n; k++) {
      if (kc->ids[k] == ids[i]) {
        count = kc->counts[k];
      }
    }
    add_key_info(out, ids[i], ids[i] == active ? "active" : "retiring", count);
  }
  for (size_t k = 0; k < kc->n; k++) {
    int in_ring = 0;
    for (size_t i = 0; i < n; i++) {
      in_ring |= ids[i] == kc->ids[k];
    }
    if (!in_ring) {
      add_key_info(out, kc->ids[k], "missing", kc->counts[k]);
    }
  }
  for (size_t i = 1; i < out->n_keys; i++) { /* ascending id */
    lk_admin_key_info v = out->keys[i];
    size_t j = i;
    while (j > 0 && out->keys[j - 1].id > v.id) {
      out->keys[j] = out->keys[j - 1];
      j--;
    }
    out->keys[j] = v;
  }
  pthread_mutex_lock(&r->mu);
  out->resealing = r->resealing;
  snprintf(out->last_error, sizeof(out->last_error), "%s", r->last_error);
  pthread_mutex_unlock(&r->mu);
  if (refreshed != LK_OK && out->last_error[0] == '\0') {
    snprintf(out->last_error, sizeof(out->last_error), "%s", rerr.msg);
  }
done:
  free(kc);
  return st;
}

lk_status lk_reseal_admin_keys(void *ctx, int rotate, lk_admin_key_status *out,
                               lk_err *err) {
  lk_reseal *r = ctx;
  if (rotate) {
    lk_status st = lk_reseal_rotate(r, NULL, err);
    if (st != LK_OK) {
      return st;
    }
  }
  return lk_reseal_status(r, out, err);
}
