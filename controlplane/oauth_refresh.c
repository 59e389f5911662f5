/*
 * oauth_refresh.c - the refresher's threads, claims and commits (see
 * oauth_refresh.h for the protocol).
 *
 * Shared state (under mu): the stop, change and kick flags, the queue of
 * credentials to attempt, the ids each worker is attempting, the
 * credentials asked for on demand and not yet queued, the waiting
 * requests, and "holds": per-credential times before which the scheduler
 * does not queue a credential again (a live claim of another control
 * plane, an attempt just made whose commit the mirror has not shown yet,
 * etcd trouble). Requests asked on demand ignore holds.
 *
 * Secrets: the refresh token and client secret exist in plaintext only in
 * lk_secrets between unsealing and the end of the token request; the new
 * tokens only in the lk_oauth_token_result until sealed. Every credential
 * encoding built here is wiped before it is freed. Log and audit lines
 * carry ids, results and keyed hashes (lk_keyring_audit_hash), never a
 * value.
 */
#include "controlplane/oauth_refresh.h"

#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "controlplane/keyfence.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "lib/oauth_holds.h"
#include "lib/oauth.h"
#include "lib/oauth_token.h"
#include "lib/secret.h"

#define CRED_PREFIX "cred/"
#define ID_BYTES (LK_CATALOG_ID_MAX + 1)
/* Longest claim key: the prefix, "oauth-claim/" and an id. */
#define CLAIM_KEY_BYTES (sizeof(LK_OAUTH_REFRESH_CLAIM_PREFIX) + ID_BYTES)
#define CP_ID_BYTES 96
/* A claim's value: the deadline in decimal, a space, the holder's id. */
#define CLAIM_VALUE_BYTES (24 + CP_ID_BYTES)
/* How long a credential is left alone after an attempt (the mirror shows
 * the commit meanwhile), after a conflicting claim, and after etcd
 * trouble. */
#define HOLD_AFTER_ATTEMPT_MS 500
#define HOLD_AFTER_CONFLICT_MS 250
#define HOLD_AFTER_ETCD_MS 2000
/* Holds kept at most (older ones are dropped first when full). */
#define MAX_HOLDS 4096
/* The scheduler looks at waiters this often while there are any. */
#define WAITER_POLL_MS 100
/* Mirror scans are at least this far apart, and at least SCAN_DUTY times
 * as far as the last one took, so a large catalog that changes often
 * costs the scheduler at most a tenth of a core. */
#define MIN_SCAN_GAP_MS 200
#define SCAN_DUTY 10
/* Commit attempts of a failure's state when the credential keeps changing
 * under owners' updates, the re-sealer or the key ring. A provider's
 * answer is tried until the claim runs out instead: with a rotating
 * provider the old refresh token is already spent. */
#define MAX_COMMIT_TRIES 8

typedef struct waiter {
  struct waiter *next;
  char cred_id[ID_BYTES];
  uint64_t generation;   /* asked: answered once the mirror shows more */
  int64_t deadline_ms;   /* monotonic */
  int64_t asked_wall_ms; /* a failure recorded after this answers it */
  lk_oauth_refresh_cancelled_fn cancelled;
  lk_oauth_refresh_done_fn done;
  void *ctx;
  int finished;
  lk_status st;
  uint64_t result_gen;
  lk_err err;
} waiter;

typedef struct {
  char id[ID_BYTES];
  uint64_t asked; /* on demand: the generation asked about */
  int forced;     /* on demand: attempt even when not due */
} work_item;

struct lk_oauth_refresh {
  lk_etcd *etcd;
  lk_catalog *cat;
  lk_keyring *kr;
  int64_t margin_ms;
  int64_t retry_max_ms;
  int allow_insecure;
  int64_t token_timeout_ms;
  int64_t claim_ttl_ms;
  char cp_id[CP_ID_BYTES];
  lk_metric *m_refreshes;
  lk_metric *m_requests;

  pthread_t scheduler;
  int scheduler_started;
  pthread_t workers[LK_OAUTH_REFRESH_WORKERS];
  int n_workers;

  atomic_int halt; /* stopping, readable without mu (token requests) */
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* the scheduler's; CLOCK_MONOTONIC */
  pthread_cond_t work_cv; /* the workers' */
  int stopping;
  int changed;
  int kicked;
  work_item queue[LK_OAUTH_REFRESH_MAX_QUEUE];
  size_t n_queue;
  char in_flight[LK_OAUTH_REFRESH_WORKERS][ID_BYTES];
  work_item forced[LK_OAUTH_REFRESH_MAX_QUEUE];
  size_t n_forced;
  waiter *waiters;
  size_t n_waiters;
  lk_oauth_holds *holds;
};

/* ---- small helpers ------------------------------------------------------ */

const char *lk_oauth_refresh_id(const lk_oauth_refresh *r) {
  return r->cp_id;
}

/* Writes "cred/<id>" into out. */
static void make_cred_key(const char *id, char *out, size_t cap) {
  snprintf(out, cap, "%s%s", CRED_PREFIX, id);
}

/* Writes the claim's relative etcd name for credential id into out. */
static void make_claim_key(const char *id, char *out, size_t cap) {
  snprintf(out, cap, "%s%s", LK_OAUTH_REFRESH_CLAIM_PREFIX, id);
}

static int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

/* A CLOCK_MONOTONIC timespec ms from now. */
static struct timespec mono_in(int64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  if (ms < 0) {
    ms = 0;
  }
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

/* lk_oauth_token_request's cancelled: the refresher is stopping. */
static int halted(void *ctx) {
  lk_oauth_refresh *r = ctx;
  return atomic_load(&r->halt);
}

/* ---- shared state (mu held) --------------------------------------------- */

static int is_in_flight(const lk_oauth_refresh *r, const char *id) {
  for (int i = 0; i < LK_OAUTH_REFRESH_WORKERS; i++) {
    if (strcmp(r->in_flight[i], id) == 0) {
      return 1;
    }
  }
  return 0;
}

static int is_queued(const lk_oauth_refresh *r, const char *id) {
  for (size_t i = 0; i < r->n_queue; i++) {
    if (strcmp(r->queue[i].id, id) == 0) {
      return 1;
    }
  }
  return 0;
}

/* Queues id for an attempt; 0 when the queue is full. */
static int push_work(lk_oauth_refresh *r, const char *id, uint64_t asked,
                     int forced) {
  if (r->n_queue == LK_OAUTH_REFRESH_MAX_QUEUE) {
    return 0;
  }
  work_item *w = &r->queue[r->n_queue++];
  snprintf(w->id, sizeof(w->id), "%s", id);
  w->asked = asked;
  w->forced = forced;
  return 1;
}

static void finish(waiter *w, lk_status st, uint64_t gen, const lk_err *err) {
  w->finished = 1;
  w->st = st;
  w->result_gen = gen;
  if (err != NULL) {
    w->err = *err;
  } else {
    lk_err_clear(&w->err);
  }
}

/* Answers every unfinished waiter of id with st and err. */
static void answer_waiters(lk_oauth_refresh *r, const char *id, lk_status st,
                           const lk_err *err) {
  for (waiter *w = r->waiters; w != NULL; w = w->next) {
    if (!w->finished && strcmp(w->cred_id, id) == 0) {
      finish(w, st, 0, err);
    }
  }
}

/* Unlinks the finished waiters and returns them as a list. */
static waiter *take_finished(lk_oauth_refresh *r) {
  waiter *done = NULL;
  for (waiter **pp = &r->waiters; *pp != NULL;) {
    waiter *w = *pp;
    if (w->finished) {
      *pp = w->next;
      w->next = done;
      done = w;
      r->n_waiters--;
    } else {
      pp = &w->next;
    }
  }
  return done;
}

/* Calls each waiter's done callback (mu not held) and frees it. */
static void call_done(waiter *list) {
  while (list != NULL) {
    waiter *w = list;
    list = w->next;
    w->done(w->ctx, w->st, w->result_gen, &w->err);
    free(w);
  }
}

/* Answers w from what the mirror shows now, if it shows enough. */
static void check_waiter(lk_oauth_refresh *r, waiter *w, int64_t now_mono) {
  lk_err err;
  Latchkey__V1__Credential *c = NULL;
  if (w->cancelled != NULL && w->cancelled(w->ctx)) {
    lk_fail(&err, LK_DEADLINE_EXCEEDED,
            "the caller stopped waiting for the refresh of credential %s",
            w->cred_id);
    finish(w, LK_DEADLINE_EXCEEDED, 0, &err);
    return;
  }
  lk_status st = lk_catalog_get_credential(r->cat, w->cred_id, &c, &err);
  if (st == LK_NOT_FOUND) {
    lk_fail(&err, LK_NOT_FOUND, "credential %s no longer exists", w->cred_id);
    finish(w, LK_NOT_FOUND, 0, &err);
    return;
  }
  if (st == LK_OK && c->oauth == NULL) {
    lk_fail(&err, LK_FAILED_PRECONDITION,
            "credential %s is no longer an oauth2 credential", w->cred_id);
    finish(w, LK_FAILED_PRECONDITION, 0, &err);
  } else if (st == LK_OK && c->oauth->generation > w->generation) {
    finish(w, LK_OK, c->oauth->generation, NULL);
  } else if (st == LK_OK && c->oauth->reauthorize) {
    lk_fail(&err, LK_FAILED_PRECONDITION,
            "credential %s must be re-authorised by its owner (the last "
            "refresh said: %s)",
            w->cred_id, c->oauth->last_refresh_result);
    finish(w, LK_FAILED_PRECONDITION, 0, &err);
  } else if (st == LK_OK && c->oauth->failures > 0 &&
             c->oauth->last_refresh_at >= w->asked_wall_ms) {
    lk_fail(&err, LK_UNAVAILABLE,
            "refreshing credential %s failed (%s); the control plane retries "
            "with backoff",
            w->cred_id, c->oauth->last_refresh_result);
    finish(w, LK_UNAVAILABLE, 0, &err);
  } else if (now_mono >= w->deadline_ms) {
    lk_fail(&err, LK_DEADLINE_EXCEEDED,
            "no new access token for credential %s before the deadline; retry "
            "the call",
            w->cred_id);
    finish(w, LK_DEADLINE_EXCEEDED, 0, &err);
  }
  lk_catalog_free_credential(c);
}

/* ---- claims ------------------------------------------------------------- */

/* Reads the deadline out of a claim's value; 0 (expired) when malformed. */
static int64_t claim_deadline(const unsigned char *v, size_t len) {
  int64_t d = 0;
  size_t i = 0;
  for (; i < len && i < 19 && v[i] >= '0' && v[i] <= '9'; i++) {
    d = d * 10 + (v[i] - '0');
  }
  return i > 0 && i < len && v[i] == ' ' ? d : 0;
}

/* Claims credential id (at cred_mod_rev) for this control plane.
 * LK_OK with *claim_rev the claim's mod revision; LK_ALREADY_EXISTS with
 * *held_until when another control plane's live claim is there;
 * LK_FAILED_PRECONDITION when the credential or claim changed meanwhile;
 * etcd's errors. */
static lk_status take_claim(lk_oauth_refresh *r, const char *id,
                            int64_t cred_mod_rev, int64_t *claim_rev,
                            int64_t *held_until, lk_err *err) {
  char ckey[CLAIM_KEY_BYTES];
  char key[sizeof(CRED_PREFIX) + ID_BYTES];
  char value[CLAIM_VALUE_BYTES];
  unsigned char *old = NULL;
  size_t old_len = 0;
  int64_t old_rev = 0;
  int64_t now = lk_wall_ms();
  make_claim_key(id, ckey, sizeof(ckey));
  make_cred_key(id, key, sizeof(key));
  lk_status st = lk_etcd_get(r->etcd, ckey, &old, &old_len, &old_rev, err);
  if (st == LK_NOT_FOUND) {
    old_rev = 0;
  } else if (st != LK_OK) {
    return st;
  } else {
    int64_t d = claim_deadline(old, old_len);
    if (d > now) {
      *held_until = d;
      lk_etcd_value_free(old, old_len);
      return LK_ALREADY_EXISTS;
    }
    lk_log(LK_LOG_WARN, "oauth.refresh.claim_taken_over",
           "credential %s: the claim of a control plane that did not finish "
           "in time (\"%.*s\") is taken over by %s",
           id, (int)(old_len < 100 ? old_len : 100), (const char *)old,
           r->cp_id);
    lk_etcd_value_free(old, old_len);
  }
  int n = snprintf(value, sizeof(value), "%lld %s",
                   (long long)(now + r->claim_ttl_ms), r->cp_id);
  lk_etcd_txn *t = lk_etcd_txn_new();
  if (t == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  lk_etcd_txn_expect_mod_revision(t, key, cred_mod_rev);
  lk_etcd_txn_expect_mod_revision(t, ckey, old_rev);
  lk_etcd_txn_put(t, ckey, (const unsigned char *)value, (size_t)n);
  st = lk_etcd_txn_commit(r->etcd, t, claim_rev, err);
  lk_etcd_txn_destroy(t);
  return st;
}

/* Deletes our claim on id when it is still the one at claim_rev. */
static void drop_claim(lk_oauth_refresh *r, const char *id, int64_t claim_rev) {
  char ckey[CLAIM_KEY_BYTES];
  lk_err err;
  make_claim_key(id, ckey, sizeof(ckey));
  lk_etcd_txn *t = lk_etcd_txn_new();
  if (t == NULL) {
    return;
  }
  lk_etcd_txn_expect_mod_revision(t, ckey, claim_rev);
  lk_etcd_txn_delete(t, ckey);
  if (lk_etcd_txn_commit(r->etcd, t, NULL, &err) != LK_OK) {
    lk_log(LK_LOG_DEBUG, "oauth.refresh.claim_kept",
           "credential %s: claim not deleted (%s); it expires by itself", id,
           err.msg);
  }
  lk_etcd_txn_destroy(t);
}

/* ---- the new record ----------------------------------------------------- */

/* lk_oauth_policy_sealer's context over the key ring: every sealed value
 * of a record ends up under the ring's active key, and the record notes
 * that one key so the commit's fence compare can vouch for it. */
typedef struct {
  lk_keyring *kr;
  uint32_t active;
  uint32_t key_id; /* the one key every sealed value is under */
  int sealed;      /* the record has sealed values */
} ring_sealer;

/* Notes that a sealed value under key_id is in the record; 0 when another
 * one is under a different key (the ring moved meanwhile). */
static int note_key(ring_sealer *rs, uint32_t key_id) {
  if (rs->sealed && rs->key_id != key_id) {
    return 0;
  }
  rs->sealed = 1;
  rs->key_id = key_id;
  return 1;
}

/* lk_oauth_policy_seal_fn: seals under the ring's active key. */
static lk_status ring_seal(void *ctx, const char *cred_id, const char *field,
                           const unsigned char *pt, size_t len,
                           uint32_t *key_id,
                           unsigned char nonce[LK_SEAL_NONCE_BYTES],
                           unsigned char **ct, size_t *ct_len, lk_err *err) {
  ring_sealer *rs = ctx;
  lk_status st = lk_keyring_seal(rs->kr, cred_id, field, pt, len, key_id, nonce,
                                 ct, ct_len, err);
  if (st == LK_OK && !note_key(rs, *key_id)) {
    return lk_fail(err, LK_UNAVAILABLE, "%s", LK_KEYFENCE_RETRY_MSG);
  }
  return st;
}

/* lk_oauth_policy_keep_fn: a kept value under a key other than the active
 * one is re-sealed under it, so the record is under one key. */
static lk_status ring_keep(void *ctx, const char *cred_id,
                           const Latchkey__V1__FieldValue *f, int *changed,
                           uint32_t *key_id,
                           unsigned char nonce[LK_SEAL_NONCE_BYTES],
                           unsigned char **ct, size_t *ct_len, lk_err *err) {
  ring_sealer *rs = ctx;
  const char *name = f->name != NULL ? f->name : "";
  lk_secret *pt = NULL;
  *changed = 0;
  if (f->sealed->key_id == rs->active) {
    if (!note_key(rs, f->sealed->key_id)) {
      return lk_fail(err, LK_UNAVAILABLE, "%s", LK_KEYFENCE_RETRY_MSG);
    }
    return LK_OK;
  }
  lk_status st = lk_keyring_unseal(rs->kr, f->sealed->key_id, cred_id, name,
                                   f->sealed->nonce.data, f->sealed->nonce.len,
                                   f->sealed->ciphertext.data,
                                   f->sealed->ciphertext.len, &pt, err);
  if (st == LK_OK) {
    st = ring_seal(rs, cred_id, name, lk_secret_data(pt), lk_secret_len(pt),
                   key_id, nonce, ct, ct_len, err);
  }
  lk_secret_free(pt); /* last use of the plaintext */
  if (st == LK_OK) {
    *changed = 1;
  }
  return st;
}

/* Builds the record outcome o makes of decoded credential c
 * (lk_oauth_policy_record_new) under the ring's active key, noting that
 * key in *rs. LK_UNAVAILABLE (LK_KEYFENCE_RETRY_MSG) when the ring moved
 * while sealing: build again. */
static lk_status build_record(lk_oauth_refresh *r,
                              const Latchkey__V1__Credential *c,
                              const lk_oauth_policy_outcome *o, ring_sealer *rs,
                              lk_oauth_policy_record **rec, lk_err *err) {
  memset(rs, 0, sizeof(*rs));
  *rec = NULL;
  lk_status st = lk_keyring_refresh(r->kr, NULL, err);
  if (st != LK_OK) {
    return st;
  }
  rs->kr = r->kr;
  rs->active = lk_keyring_active_id(r->kr);
  lk_oauth_policy_sealer sealer = {ring_seal, ring_keep, rs};
  return lk_oauth_policy_record_new(c, o, &sealer, rec, err);
}

/* ---- commit ------------------------------------------------------------- */

/* What a commit did. */
typedef struct {
  int landed;          /* our record is in etcd */
  const char *dropped; /* why the result was dropped, or NULL */
  uint64_t generation; /* the credential's generation after the commit */
} commit_info;

/* Reads credential key from etcd and decodes it: LK_OK with *out (and
 * *mod_rev), LK_NOT_FOUND, or an error. */
static lk_status read_cred(lk_oauth_refresh *r, const char *key,
                           Latchkey__V1__Credential **out, int64_t *mod_rev,
                           lk_err *err) {
  unsigned char *val = NULL;
  size_t len = 0;
  *out = NULL;
  lk_status st = lk_etcd_get(r->etcd, key, &val, &len, mod_rev, err);
  if (st != LK_OK) {
    return st;
  }
  *out = latchkey__v1__credential__unpack(NULL, len, val);
  lk_etcd_value_free(val, len);
  if (*out == NULL) {
    return lk_fail(err, LK_INTERNAL, "stored record %s does not decode", key);
  }
  return LK_OK;
}

/* Commits outcome o of one attempt on credential c0 (as read at mod_rev,
 * claimed at claim_rev); state is the OAuthState it stores
 * (lk_oauth_policy_next_state). See the protocol in oauth_refresh.h. */
static lk_status commit(lk_oauth_refresh *r, const Latchkey__V1__Credential *c0,
                        int64_t mod_rev, int64_t claim_rev,
                        const lk_oauth_policy_outcome *o,
                        const Latchkey__V1__OAuthState *state,
                        int64_t claim_until, commit_info *ci, lk_err *err) {
  char key[sizeof(CRED_PREFIX) + ID_BYTES];
  char ckey[CLAIM_KEY_BYTES];
  const Latchkey__V1__Credential *c = c0;
  Latchkey__V1__Credential *fresh = NULL;
  lk_status st = LK_OK;
  memset(ci, 0, sizeof(*ci));
  make_cred_key(c0->id, key, sizeof(key));
  make_claim_key(c0->id, ckey, sizeof(ckey));
  for (int tries = 0;; tries++) {
    lk_oauth_policy_record *rec = NULL;
    ring_sealer rs;
    unsigned char *buf = NULL;
    size_t len = 0;
    if ((tries == MAX_COMMIT_TRIES && o->res == NULL) ||
        lk_wall_ms() >= claim_until || (tries > 1 && halted(r))) {
      if (st == LK_OK || st == LK_FAILED_PRECONDITION) {
        st = lk_fail(err, LK_UNAVAILABLE,
                     "credential %s kept changing while its refresh was being "
                     "stored",
                     c0->id);
      }
      break;
    }
    st = build_record(r, c, o, &rs, &rec, err);
    const Latchkey__V1__Credential *next =
        rec != NULL ? lk_oauth_policy_record_credential(rec) : NULL;
    if (st == LK_OK) {
      len = latchkey__v1__credential__get_packed_size(next);
      buf = malloc(len > 0 ? len : 1);
      if (buf == NULL) {
        st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
      }
    }
    lk_etcd_txn *t = st == LK_OK ? lk_etcd_txn_new() : NULL;
    if (st == LK_OK && t == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    }
    uint32_t fence_id = rs.key_id;
    int fenced = rs.sealed;
    if (st == LK_OK) {
      latchkey__v1__credential__pack(next, buf);
      lk_etcd_txn_expect_mod_revision(t, key, mod_rev);
      lk_etcd_txn_expect_mod_revision(t, ckey, claim_rev);
      if (fenced) {
        lk_keyfence_expect(t, fence_id);
      }
      lk_etcd_txn_put(t, key, buf, len);
      lk_etcd_txn_delete(t, ckey);
      st = lk_etcd_txn_commit(r->etcd, t, NULL, err);
    }
    lk_etcd_txn_destroy(t);
    if (buf != NULL) {
      lk_wipe_free(buf, len);
    }
    lk_oauth_policy_record_destroy(rec);
    if (st == LK_OK) {
      ci->landed = 1;
      ci->generation = state->generation;
      break;
    }
    if (st == LK_UNAVAILABLE) {
      /* etcd trouble, or the ring moved while sealing: again, within the
       * claim's time. */
      struct timespec pause = {0, 200 * 1000000L};
      nanosleep(&pause, NULL);
      continue;
    }
    if (st != LK_FAILED_PRECONDITION) {
      break;
    }
    /* Something compared changed: which? */
    lk_err rerr;
    unsigned char *cv = NULL;
    size_t cv_len = 0;
    int64_t crev = 0;
    int64_t new_rev = 0;
    Latchkey__V1__Credential *now_c = NULL;
    lk_status cst = lk_etcd_get(r->etcd, ckey, &cv, &cv_len, &crev, &rerr);
    lk_etcd_value_free(cv, cv_len);
    lk_status rst = read_cred(r, key, &now_c, &new_rev, &rerr);
    if (cst == LK_UNAVAILABLE || rst == LK_UNAVAILABLE) {
      latchkey__v1__credential__free_unpacked(now_c, NULL);
      st = lk_fail(err, LK_UNAVAILABLE, "%s", rerr.msg);
      continue;
    }
    if (cst != LK_OK || crev != claim_rev) {
      /* Our claim is gone: our own commit landed (a retry after an
       * ambiguous failure reports a conflict with it), or another control
       * plane took the claim over and ours no longer counts. */
      if (now_c != NULL && now_c->oauth != NULL &&
          now_c->oauth->last_refresh_at == state->last_refresh_at &&
          now_c->oauth->generation == state->generation &&
          now_c->oauth->failures == state->failures) {
        ci->landed = 1;
        ci->generation = state->generation;
        st = LK_OK;
      } else {
        ci->dropped = "another control plane took over the claim";
        st = LK_OK;
      }
      latchkey__v1__credential__free_unpacked(now_c, NULL);
      break;
    }
    if (rst == LK_NOT_FOUND) {
      ci->dropped = "the credential was deleted";
      st = LK_OK;
      drop_claim(r, c0->id, claim_rev);
      break;
    }
    if (rst != LK_OK || now_c->oauth == NULL || c->oauth == NULL ||
        now_c->oauth->generation != c->oauth->generation) {
      ci->dropped = "the owner re-authorised the credential meanwhile";
      ci->generation =
          now_c != NULL && now_c->oauth != NULL ? now_c->oauth->generation : 0;
      st = LK_OK;
      latchkey__v1__credential__free_unpacked(now_c, NULL);
      drop_claim(r, c0->id, claim_rev);
      break;
    }
    /* Same generation: the owner changed something else (a label, the
     * client id: the provider's answer is still the live grant, and with
     * a rotating provider dropping it would leave a spent refresh token),
     * the re-sealer moved its values, or the fence moved past the key we
     * sealed under. Build again on what etcd holds, keeping the change. */
    if (fenced) {
      lk_err ferr;
      lk_status fst = lk_keyfence_refused(r->etcd, r->kr, fence_id, &ferr);
      (void)fst; /* always "retry", which this loop does */
    }
    latchkey__v1__credential__free_unpacked(fresh, NULL);
    fresh = now_c;
    c = fresh;
    mod_rev = new_rev;
  }
  latchkey__v1__credential__free_unpacked(fresh, NULL);
  return st;
}

/* ---- one attempt -------------------------------------------------------- */

/* What an attempt tells the worker. */
typedef struct {
  int answer; /* answer the credential's waiters with st and err */
  lk_status st;
  lk_err err;
  int64_t hold_until; /* wall ms; 0: the usual hold after an attempt */
} outcome;

/* lk_oauth_policy_unseal_fn over the key ring (ctx), fetched again when
 * the value's key is not known yet. */
static lk_status ring_unseal(void *ctx, const char *cred_id,
                             const Latchkey__V1__FieldValue *f, lk_secret **out,
                             lk_err *err) {
  lk_keyring *kr = ctx;
  lk_status st = LK_OK;
  if (!lk_keyring_has_key(kr, f->sealed->key_id)) {
    st = lk_keyring_refresh(kr, NULL, err);
  }
  if (st == LK_OK) {
    st = lk_keyring_unseal(kr, f->sealed->key_id, cred_id, f->name,
                           f->sealed->nonce.data, f->sealed->nonce.len,
                           f->sealed->ciphertext.data,
                           f->sealed->ciphertext.len, out, err);
  }
  return st;
}

/* lk_oauth_policy_hash_fn over the key ring's audit key. */
static lk_status ring_hash(void *ctx, const void *value, size_t len,
                           char out_hex[LK_AUDIT_HEX_BYTES], lk_err *err) {
  (void)err;
  lk_keyring_audit_hash(ctx, value, len, out_hex);
  return LK_OK;
}

/* Asks the provider for credential c (claimed at claim_rev, read at
 * mod_rev) and commits the outcome. */
static void refresh_claimed(lk_oauth_refresh *r,
                            const Latchkey__V1__Credential *c, int64_t mod_rev,
                            int64_t claim_rev, int64_t claim_until,
                            outcome *o) {
  lk_oauth_policy_attempt a;
  lk_err cerr;
  commit_info ci;
  memset(&ci, 0, sizeof(ci));
  lk_err_clear(&cerr);
  lk_oauth_policy_requester rq = {
      ring_unseal,         r->kr,          halted, r, r->allow_insecure,
      r->token_timeout_ms, r->retry_max_ms};
  lk_oauth_policy_attempt_run(c, &rq, &a);
  if (a.cut_short) {
    /* Stopping cut the request short: record nothing, free the claim for
     * another control plane. A provider that processed the request may
     * have rotated the refresh token, as after a crash (oauth_refresh.h).
     * A successful answer is still committed below. */
    lk_log(LK_LOG_WARN, "oauth.refresh.abandoned",
           "credential %s: the control plane stopped during its refresh (%s)",
           c->id, a.err.msg);
    drop_claim(r, c->id, claim_rev);
    o->answer = 1;
    o->st = lk_fail(&o->err, LK_UNAVAILABLE,
                    "the control plane is shutting down; retry on another "
                    "one");
    return;
  }
  lk_status xst = a.out.status;
  lk_status cst = commit(r, c, mod_rev, claim_rev, &a.out, &a.state,
                         claim_until, &ci, &cerr);
  /* The generation etcd holds after this attempt. */
  uint64_t gen = ci.dropped != NULL && ci.generation > 0 ? ci.generation
                 : ci.landed                             ? a.state.generation
                             : a.state.generation - (xst == LK_OK ? 1 : 0);
  lk_oauth_policy_reporter rp = {"control_plane", r->cp_id, r->m_refreshes,
                                 ring_hash, r->kr};
  lk_oauth_policy_attempt_report(c, &a, &rp, gen, ci.landed, ci.dropped);
  if (cst != LK_OK) {
    lk_log(LK_LOG_ERROR, "oauth.refresh.commit_failed",
           "credential %s: the %s of its refresh could not be stored (%s); "
           "%s",
           c->id, xst == LK_OK ? "new token" : "failure", cerr.msg,
           xst == LK_OK ? "the provider's answer is lost (a rotated refresh "
                          "token with it: the owner may have to "
                          "re-authorise)"
                        : "the claim is released");
    drop_claim(r, c->id, claim_rev); /* a no-op when etcd is gone too */
    o->answer = 1;
    o->st = LK_UNAVAILABLE;
    lk_fail(&o->err, LK_UNAVAILABLE,
            "refreshing credential %s: the result could not be stored (%s)",
            c->id, cerr.msg);
    return;
  }
  if (xst != LK_OK && ci.dropped == NULL) {
    o->answer = 1;
    o->st = lk_oauth_policy_attempt_error(c, &a, "the control plane", &o->err);
  }
}

/* One attempt on item: read, check, claim, refresh, commit. */
static void attempt(lk_oauth_refresh *r, const work_item *item, outcome *o) {
  char key[sizeof(CRED_PREFIX) + ID_BYTES];
  Latchkey__V1__Credential *c = NULL;
  int64_t mod_rev = 0;
  int64_t claim_rev = 0;
  int64_t held_until = 0;
  lk_err err;
  memset(o, 0, sizeof(*o));
  make_cred_key(item->id, key, sizeof(key));
  int64_t now = lk_wall_ms();
  lk_status st = read_cred(r, key, &c, &mod_rev, &err);
  if (st == LK_NOT_FOUND) {
    o->answer = 1;
    o->st = lk_fail(&o->err, LK_NOT_FOUND, "credential %s no longer exists",
                    item->id);
    goto done;
  }
  if (st != LK_OK) {
    lk_log(LK_LOG_WARN, "oauth.refresh.read_failed", "credential %s: %s",
           item->id, err.msg);
    o->answer = 1;
    o->st = lk_fail(&o->err, LK_UNAVAILABLE,
                    "credential %s cannot be read from etcd: %s", item->id,
                    err.msg);
    o->hold_until = now + HOLD_AFTER_ETCD_MS;
    goto done;
  }
  int go = 0;
  st = lk_oauth_policy_should_attempt(c, item->forced, item->asked, now,
                                      r->margin_ms, &go, &o->err);
  if (st != LK_OK) {
    o->answer = 1;
    o->st = st;
    goto done;
  }
  if (!go) {
    /* Refreshed meanwhile, or not due (any more): the mirror shows it or
     * was behind. */
    goto done;
  }
  st = take_claim(r, item->id, mod_rev, &claim_rev, &held_until, &err);
  if (st == LK_ALREADY_EXISTS) {
    /* Another control plane is refreshing it: its commit answers. */
    o->hold_until = held_until + HOLD_AFTER_CONFLICT_MS;
    goto done;
  }
  if (st == LK_FAILED_PRECONDITION) {
    o->hold_until = now + HOLD_AFTER_CONFLICT_MS;
    goto done;
  }
  if (st != LK_OK) {
    lk_log(LK_LOG_WARN, "oauth.refresh.claim_failed", "credential %s: %s",
           item->id, err.msg);
    o->answer = 1;
    o->st = lk_fail(&o->err, LK_UNAVAILABLE,
                    "credential %s cannot be claimed for refresh: %s", item->id,
                    err.msg);
    o->hold_until = now + HOLD_AFTER_ETCD_MS;
    goto done;
  }
  refresh_claimed(r, c, mod_rev, claim_rev, now + r->claim_ttl_ms, o);
done:
  latchkey__v1__credential__free_unpacked(c, NULL);
}

/* ---- threads ------------------------------------------------------------ */

typedef struct {
  lk_oauth_refresh *r;
  int index;
} worker_arg;

static void *worker_main(void *arg) {
  worker_arg *wa = arg;
  lk_oauth_refresh *r = wa->r;
  int idx = wa->index;
  free(wa);
  for (;;) {
    work_item item;
    outcome o;
    pthread_mutex_lock(&r->mu);
    while (!r->stopping && r->n_queue == 0) {
      pthread_cond_wait(&r->work_cv, &r->mu);
    }
    if (r->stopping) {
      pthread_mutex_unlock(&r->mu);
      break;
    }
    item = r->queue[0];
    memmove(&r->queue[0], &r->queue[1], (r->n_queue - 1) * sizeof(r->queue[0]));
    r->n_queue--;
    snprintf(r->in_flight[idx], sizeof(r->in_flight[idx]), "%s", item.id);
    pthread_mutex_unlock(&r->mu);

    attempt(r, &item, &o);

    int64_t now = lk_wall_ms();
    pthread_mutex_lock(&r->mu);
    r->in_flight[idx][0] = '\0';
    lk_oauth_holds_set(r->holds, item.id,
                       o.hold_until > now + HOLD_AFTER_ATTEMPT_MS
                           ? o.hold_until
                           : now + HOLD_AFTER_ATTEMPT_MS);
    if (o.answer) {
      answer_waiters(r, item.id, o.st, &o.err);
    }
    r->changed = 1;
    pthread_cond_signal(&r->cv);
    waiter *done = take_finished(r);
    pthread_mutex_unlock(&r->mu);
    call_done(done);
  }
  return NULL;
}

/* What a scan of the mirror found. */
typedef struct {
  lk_oauth_refresh *r;
  int64_t now_wall;
  int64_t next_due; /* wall ms of the earliest credential not yet due */
  char (*ids)[ID_BYTES];
  size_t n;
} scan_ctx;

/* lk_catalog_credential_fn: notes whether c is due. */
static int scan_cred(void *ctx, Latchkey__V1__Credential *c) {
  scan_ctx *s = ctx;
  if (c->oauth != NULL) {
    int64_t due = lk_oauth_policy_due_at(c, s->r->margin_ms);
    if (due <= s->now_wall) {
      if (s->n < LK_OAUTH_REFRESH_MAX_QUEUE) {
        snprintf(s->ids[s->n++], ID_BYTES, "%s", c->id);
      } else {
        s->next_due = s->now_wall; /* more than a queue: scan again soon */
      }
    } else if (due < s->next_due) {
      s->next_due = due;
    }
  }
  lk_catalog_free_credential(c);
  return 0;
}

/* Scans the mirror and queues what is due; returns when to scan next (a
 * delay in ms). */
static int64_t scan(lk_oauth_refresh *r, char (*ids)[ID_BYTES]) {
  lk_err err;
  scan_ctx s = {r, lk_wall_ms(), INT64_MAX, ids, 0};
  if (lk_catalog_list_credentials(r->cat, scan_cred, &s, &err) != LK_OK) {
    lk_log(LK_LOG_WARN, "oauth.refresh.scan_failed", "%s", err.msg);
    return HOLD_AFTER_ETCD_MS;
  }
  int64_t next = s.next_due == INT64_MAX ? INT64_MAX : s.next_due;
  pthread_mutex_lock(&r->mu);
  lk_oauth_holds_prune(r->holds, s.now_wall);
  for (size_t i = 0; i < s.n; i++) {
    int64_t held = lk_oauth_holds_until(r->holds, ids[i]);
    if (held > 0) {
      next = min64(next, held);
      continue;
    }
    if (is_queued(r, ids[i]) || is_in_flight(r, ids[i])) {
      continue;
    }
    if (!push_work(r, ids[i], 0, 0)) {
      next = s.now_wall; /* the queue is full: scan again soon */
      break;
    }
  }
  if (r->n_queue > 0) {
    pthread_cond_broadcast(&r->work_cv);
  }
  pthread_mutex_unlock(&r->mu);
  if (next == INT64_MAX) {
    return LK_OAUTH_REFRESH_RESCAN_MS;
  }
  int64_t delay = next - s.now_wall;
  if (delay < MIN_SCAN_GAP_MS) {
    delay = MIN_SCAN_GAP_MS;
  }
  return min64(delay, LK_OAUTH_REFRESH_RESCAN_MS);
}

static void *scheduler_main(void *arg) {
  lk_oauth_refresh *r = arg;
  char(*ids)[ID_BYTES] = calloc(LK_OAUTH_REFRESH_MAX_QUEUE, ID_BYTES);
  int64_t next_scan = 0; /* monotonic ms; at once */
  int64_t last_scan = 0;
  int64_t gap = MIN_SCAN_GAP_MS; /* between scans a change triggers */
  for (;;) {
    pthread_mutex_lock(&r->mu);
    if (!r->stopping && !r->kicked) {
      int64_t now = lk_now_ms();
      int64_t wake = next_scan;
      if (r->changed) {
        wake = min64(wake, last_scan + gap);
      }
      if (r->waiters != NULL) {
        wake = min64(wake, now + WAITER_POLL_MS);
      }
      if (wake > now) {
        struct timespec until = mono_in(wake - now);
        pthread_cond_timedwait(&r->cv, &r->mu, &until);
      }
    }
    if (r->stopping) {
      lk_err err;
      lk_fail(&err, LK_UNAVAILABLE,
              "the control plane is shutting down; retry on another one");
      for (waiter *w = r->waiters; w != NULL; w = w->next) {
        finish(w, LK_UNAVAILABLE, 0, &err);
      }
      waiter *done = take_finished(r);
      pthread_mutex_unlock(&r->mu);
      call_done(done);
      break;
    }
    int64_t now = lk_now_ms();
    int do_scan = ids != NULL &&
                  (now >= next_scan || (r->changed && now - last_scan >= gap));
    if (do_scan) {
      r->changed = 0;
    }
    r->kicked = 0;
    pthread_mutex_unlock(&r->mu);
    if (do_scan) {
      last_scan = now;
      next_scan = now + scan(r, ids);
      int64_t took = lk_now_ms() - now;
      gap = took * SCAN_DUTY > MIN_SCAN_GAP_MS ? took * SCAN_DUTY
                                               : MIN_SCAN_GAP_MS;
      next_scan = next_scan > now + gap ? next_scan : now + gap;
    }
    pthread_mutex_lock(&r->mu);
    /* On-demand credentials: queued at once, whatever their holds. */
    size_t keep = 0;
    for (size_t i = 0; i < r->n_forced; i++) {
      work_item *f = &r->forced[i];
      if (is_in_flight(r, f->id)) {
        /* Kept for after it: the attempt in flight answers the waiters
         * that asked about an older generation than it makes, and this
         * item then finds them answered; one that asked about the
         * generation it makes needs another attempt. */
        r->forced[keep++] = *f;
        continue;
      }
      int done = 0;
      for (size_t k = 0; k < r->n_queue; k++) {
        if (strcmp(r->queue[k].id, f->id) == 0) {
          r->queue[k].forced = 1;
          if (f->asked > r->queue[k].asked) {
            r->queue[k].asked = f->asked;
          }
          done = 1;
        }
      }
      if (!done && !push_work(r, f->id, f->asked, 1)) {
        r->forced[keep++] = *f;
      }
    }
    r->n_forced = keep;
    if (r->n_queue > 0) {
      pthread_cond_broadcast(&r->work_cv);
    }
    int64_t mono = lk_now_ms();
    for (waiter *w = r->waiters; w != NULL; w = w->next) {
      if (!w->finished) {
        check_waiter(r, w, mono);
      }
    }
    waiter *done = take_finished(r);
    pthread_mutex_unlock(&r->mu);
    call_done(done);
  }
  free(ids);
  return NULL;
}

/* ---- API ---------------------------------------------------------------- */

/* Makes "cp-<host>-<pid>-<random>" with host reduced to [A-Za-z0-9.-]. */
static void make_cp_id(char *out, size_t cap) {
  char host[65];
  char clean[65];
  unsigned char rnd[4];
  size_t n = 0;
  if (gethostname(host, sizeof(host)) != 0) {
    host[0] = '\0';
  }
  host[sizeof(host) - 1] = '\0';
  for (size_t i = 0; host[i] != '\0' && n + 1 < sizeof(clean); i++) {
    char ch = host[i];
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || ch == '.' || ch == '-') {
      clean[n++] = ch;
    }
  }
  clean[n] = '\0';
  randombytes_buf(rnd, sizeof(rnd));
  snprintf(out, cap, "cp-%s-%ld-%02x%02x%02x%02x", n > 0 ? clean : "host",
           (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3]);
}

lk_status lk_oauth_refresh_start(const lk_oauth_refresh_config *cfg,
                                 lk_oauth_refresh **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_oauth_refresh *r = NULL;
  pthread_condattr_t ca;
  *out = NULL;
  if (cfg == NULL || cfg->etcd == NULL || cfg->cat == NULL || cfg->kr == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the OAuth refresher needs etcd, the catalog and the key "
                   "ring");
  }
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  r->etcd = cfg->etcd;
  r->cat = cfg->cat;
  r->kr = cfg->kr;
  r->margin_ms = cfg->margin_ms;
  r->retry_max_ms = cfg->retry_max_ms;
  r->token_timeout_ms = cfg->token_timeout_ms;
  lk_oauth_policy_defaults(&r->margin_ms, &r->retry_max_ms,
                           &r->token_timeout_ms);
  r->allow_insecure = cfg->allow_insecure;
  r->claim_ttl_ms =
      cfg->claim_ttl_ms > 0 ? cfg->claim_ttl_ms : LK_OAUTH_REFRESH_CLAIM_TTL_MS;
  if (r->claim_ttl_ms <= r->token_timeout_ms) {
    free(r);
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the OAuth claim lifetime (%lld ms) must exceed the token "
                   "request timeout (%lld ms)",
                   (long long)cfg->claim_ttl_ms,
                   (long long)cfg->token_timeout_ms);
  }
  if (cfg->cp_id != NULL && cfg->cp_id[0] != '\0') {
    snprintf(r->cp_id, sizeof(r->cp_id), "%s", cfg->cp_id);
  } else {
    make_cp_id(r->cp_id, sizeof(r->cp_id));
  }
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&r->work_cv, NULL);
  if ((st = lk_oauth_holds_new(MAX_HOLDS, &r->holds, err)) != LK_OK) {
    goto done;
  }
  static const char *const result_l[1] = {"result"};
  if ((st = lk_metrics_counter(
           cfg->metrics, "latchkey_oauth_refreshes_total",
           "OAuth token refreshes this control plane asked an identity "
           "provider for, by result (ok, failed: retried with backoff, "
           "reauthorize: the provider refused the grant, discarded: the "
           "owner re-authorised or deleted the credential meanwhile).",
           result_l, 1, &r->m_refreshes, err)) != LK_OK ||
      (st = lk_metrics_counter(
           cfg->metrics, "latchkey_oauth_refresh_requests_total",
           "On-demand refresh requests (Sync/Refresh: a vendor refused an "
           "access token).",
           NULL, 0, &r->m_requests, err)) != LK_OK) {
    goto done;
  }
  if (pthread_create(&r->scheduler, NULL, scheduler_main, r) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot start the OAuth refresher thread");
    goto done;
  }
  r->scheduler_started = 1;
  for (int i = 0; i < LK_OAUTH_REFRESH_WORKERS; i++) {
    worker_arg *wa = malloc(sizeof(*wa));
    if (wa == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
      goto done;
    }
    wa->r = r;
    wa->index = i;
    if (pthread_create(&r->workers[i], NULL, worker_main, wa) != 0) {
      free(wa);
      st = lk_fail(err, LK_INTERNAL, "cannot start an OAuth refresh worker");
      goto done;
    }
    r->n_workers++;
  }
  lk_log(LK_LOG_INFO, "oauth.refresh.started",
         "refreshing oauth2 credentials as %s: margin %lld ms, retry backoff "
         "up to %lld ms%s",
         r->cp_id, (long long)r->margin_ms, (long long)r->retry_max_ms,
         r->allow_insecure ? ", http:// token URLs allowed" : "");
  *out = r;
  r = NULL;
done:
  lk_oauth_refresh_destroy(r);
  return st;
}

void lk_oauth_refresh_stop(lk_oauth_refresh *r) {
  if (r == NULL) {
    return;
  }
  atomic_store(&r->halt, 1);
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_cond_broadcast(&r->work_cv);
  pthread_mutex_unlock(&r->mu);
  for (int i = 0; i < r->n_workers; i++) {
    pthread_join(r->workers[i], NULL);
  }
  r->n_workers = 0;
  if (r->scheduler_started) {
    pthread_join(r->scheduler, NULL);
    r->scheduler_started = 0;
  }
  /* A request made after the scheduler's last look. */
  lk_err err;
  lk_fail(&err, LK_UNAVAILABLE,
          "the control plane is shutting down; retry on another one");
  pthread_mutex_lock(&r->mu);
  for (waiter *w = r->waiters; w != NULL; w = w->next) {
    finish(w, LK_UNAVAILABLE, 0, &err);
  }
  waiter *done = take_finished(r);
  pthread_mutex_unlock(&r->mu);
  call_done(done);
}

void lk_oauth_refresh_destroy(lk_oauth_refresh *r) {
  if (r == NULL) {
    return;
  }
  lk_oauth_refresh_stop(r);
  pthread_cond_destroy(&r->cv);
  pthread_cond_destroy(&r->work_cv);
  pthread_mutex_destroy(&r->mu);
  lk_oauth_holds_destroy(r->holds);
  free(r);
}

void lk_oauth_refresh_changed(lk_oauth_refresh *r) {
  if (r == NULL) {
    return;
  }
  pthread_mutex_lock(&r->mu);
  r->changed = 1;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

void lk_oauth_refresh_request_async(lk_oauth_refresh *r, const char *cred_id,
                                    uint64_t generation, int64_t deadline_ms,
                                    lk_oauth_refresh_cancelled_fn cancelled,
                                    lk_oauth_refresh_done_fn done, void *ctx) {
  lk_err err;
  lk_status st = LK_OK;
  Latchkey__V1__Credential *c = NULL;
  waiter *w = NULL;
  uint64_t gen = 0;
  lk_metric_inc(r->m_requests, NULL, 1);
  if (!lk_catalog_valid_id(cred_id)) {
    st = lk_fail(&err, LK_INVALID_ARGUMENT,
                 "credential_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$");
    goto answer;
  }
  st = lk_catalog_get_credential(r->cat, cred_id, &c, &err);
  if (st != LK_OK) {
    goto answer;
  }
  int64_t now_wall = lk_wall_ms();
  int already = 0;
  st = lk_oauth_policy_check_request(c, generation, now_wall, &already, &err);
  if (st != LK_OK) {
    goto answer;
  }
  gen = c->oauth->generation;
  if (already) {
    goto answer; /* already refreshed */
  }
  w = calloc(1, sizeof(*w));
  if (w == NULL) {
    st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto answer;
  }
  snprintf(w->cred_id, sizeof(w->cred_id), "%s", cred_id);
  w->generation = generation;
  int64_t now = lk_now_ms();
  w->deadline_ms = deadline_ms == INT64_MAX ||
                           deadline_ms - now > LK_OAUTH_REFRESH_MAX_WAIT_MS
                       ? now + LK_OAUTH_REFRESH_MAX_WAIT_MS
                       : deadline_ms;
  w->asked_wall_ms = now_wall;
  w->cancelled = cancelled;
  w->done = done;
  w->ctx = ctx;
  pthread_mutex_lock(&r->mu);
  if (r->stopping) {
    st = lk_fail(&err, LK_UNAVAILABLE,
                 "the control plane is shutting down; retry on another one");
  } else if (r->n_waiters >= LK_OAUTH_REFRESH_MAX_WAITERS) {
    st = lk_fail(&err, LK_RESOURCE_EXHAUSTED,
                 "too many refresh requests are waiting on this control "
                 "plane; retry shortly");
  } else {
    w->next = r->waiters;
    r->waiters = w;
    r->n_waiters++;
    w = NULL;
    /* Once per credential: an attempt in flight, queued or already asked
     * for serves every waiter of it. */
    size_t i = 0;
    while (i < r->n_forced && strcmp(r->forced[i].id, cred_id) != 0) {
      i++;
    }
    if (i < r->n_forced) {
      if (generation > r->forced[i].asked) {
        r->forced[i].asked = generation;
      }
    } else if (r->n_forced < LK_OAUTH_REFRESH_MAX_QUEUE) {
      /* Even with an attempt for it in flight: that attempt may make the
       * very generation this waiter saw refused (see the scheduler). */
      work_item *f = &r->forced[r->n_forced++];
      snprintf(f->id, sizeof(f->id), "%s", cred_id);
      f->asked = generation;
      f->forced = 1;
    }
    r->kicked = 1;
    pthread_cond_signal(&r->cv);
  }
  pthread_mutex_unlock(&r->mu);
  if (w == NULL) {
    lk_catalog_free_credential(c);
    return; /* the scheduler or a worker answers */
  }
answer:
  free(w);
  lk_catalog_free_credential(c);
  done(ctx, st, st == LK_OK ? gen : 0, st == LK_OK ? NULL : &err);
}

/* A blocking request's rendezvous. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  lk_status st;
  uint64_t gen;
  lk_err err;
} sync_wait;

static void sync_done(void *ctx, lk_status st, uint64_t gen,
                      const lk_err *err) {
  sync_wait *sw = ctx;
  pthread_mutex_lock(&sw->mu);
  sw->st = st;
  sw->gen = gen;
  if (err != NULL) {
    sw->err = *err;
  }
  sw->done = 1;
  pthread_cond_signal(&sw->cv);
  pthread_mutex_unlock(&sw->mu);
}

lk_status lk_oauth_refresh_request(lk_oauth_refresh *r, const char *cred_id,
                                   uint64_t generation, int64_t deadline_ms,
                                   uint64_t *now_generation, lk_err *err) {
  sync_wait sw;
  memset(&sw, 0, sizeof(sw));
  pthread_mutex_init(&sw.mu, NULL);
  pthread_cond_init(&sw.cv, NULL);
  lk_oauth_refresh_request_async(r, cred_id, generation, deadline_ms, NULL,
                                 sync_done, &sw);
  pthread_mutex_lock(&sw.mu);
  while (!sw.done) {
    pthread_cond_wait(&sw.cv, &sw.mu);
  }
  pthread_mutex_unlock(&sw.mu);
  pthread_cond_destroy(&sw.cv);
  pthread_mutex_destroy(&sw.mu);
  if (now_generation != NULL) {
    *now_generation = sw.gen;
  }
  if (sw.st != LK_OK && err != NULL) {
    *err = sw.err;
  }
  return sw.st;
}
