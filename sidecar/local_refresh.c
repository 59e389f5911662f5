/*
 * local_refresh.c - the standalone sidecar's refresher thread, its
 * on-demand requests and its commits (see local_refresh.h).
 *
 * Shared state (under mu): the stop and change flags, the credentials
 * asked for on demand and not yet attempted, the one being attempted,
 * the waiting requests (each on its caller's stack, linked here while it
 * waits) and the count of stored records. The thread alone owns the list
 * of due credentials a scan found and the holds: credentials whose
 * outcome could not be stored are left alone for HOLD_AFTER_ERROR_MS,
 * so a store that refuses writes is not met with a token request per
 * scan. On-demand requests ignore holds.
 *
 * A waiting request is answered by the attempt on its credential (its
 * outcome, for every waiter of that credential) or, failing that, by
 * what the catalog shows: a generation past the one asked (OK), a failure
 * recorded after it asked, a refused grant, the credential gone; or by
 * its deadline or stop. It looks again whenever a record is stored and at
 * least every WAIT_SLICE_MS. An attempt that neither answers its waiters
 * nor moves the generation past theirs (it found nothing due, or the
 * owner's write won) queues one more on-demand attempt for them.
 *
 * Secrets: the refresh token and client secret exist in plaintext only in
 * lk_secrets from unsealing to the end of the token request; the new
 * tokens only in the lk_oauth_token_result until sealed and hashed.
 */
#include "sidecar/local_refresh.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/oauth_holds.h"
#include "lib/oauth.h"
#include "lib/oauth_policy.h"
#include "lib/oauth_token.h"
#include "lib/secret.h"

#define ID_BYTES (LK_CATALOG_ID_MAX + 1)
#define AGENT_BYTES 256
/* How long a credential whose outcome could not be stored is left alone. */
#define HOLD_AFTER_ERROR_MS 2000
/* Holds kept at most (the one ending first is dropped when full). */
#define MAX_HOLDS 64
/* A waiting request looks at the catalog at least this often. */
#define WAIT_SLICE_MS 100
/* Commits of a failure's state, at most, while the credential keeps
 * changing under Admin writes; a provider's answer is tried for
 * STORE_PERSIST_MS. */
#define MAX_STORE_TRIES 8
#define STORE_PERSIST_MS 10000

typedef struct waiter {
  struct waiter *next;
  const char *cred_id;
  uint64_t generation; /* asked: answered once the catalog shows more */
  int answered;        /* an attempt answered it: st, gen, err */
  lk_status st;
  uint64_t gen;
  lk_err err;
} waiter;

typedef struct {
  char id[ID_BYTES];
  uint64_t asked; /* on demand: the generation refused */
} work_item;

struct lk_local_refresh {
  lk_catalog *cat;
  const lk_seal_key *key;
  lk_audit_key *audit;
  char agent_id[AGENT_BYTES];
  int64_t margin_ms;
  int64_t retry_max_ms;
  int allow_insecure;
  int64_t token_timeout_ms;
  lk_metric *m_refreshes;

  pthread_t thread;
  int started;
  atomic_int halt; /* stopping, readable without mu (token requests) */

  pthread_mutex_t mu;
  pthread_cond_t cv;      /* the thread's; CLOCK_MONOTONIC */
  pthread_cond_t done_cv; /* waiters and wait_stored; CLOCK_MONOTONIC */
  int stopping;
  int changed;
  work_item asked[LK_LOCAL_REFRESH_MAX_ASKED];
  size_t n_asked;
  char in_flight[ID_BYTES];
  waiter *waiters;
  uint64_t stored;

  /* The thread's own. */
  char (*due)[ID_BYTES]; /* LK_LOCAL_REFRESH_MAX_BATCH */
  size_t n_due;
  lk_oauth_holds *holds;
};

/* ---- small helpers ------------------------------------------------------ */

static int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

/* A CLOCK_MONOTONIC timespec at deadline_ms (monotonic ms). */
static struct timespec mono_at(int64_t deadline_ms) {
  struct timespec ts;
  if (deadline_ms < 0) {
    deadline_ms = 0;
  }
  ts.tv_sec = deadline_ms / 1000;
  ts.tv_nsec = (deadline_ms % 1000) * 1000000L;
  return ts;
}

/* lk_oauth_token_request's cancelled: the refresher is stopping. */
static int halted(void *ctx) {
  lk_local_refresh *r = ctx;
  return atomic_load(&r->halt);
}

/* lk_oauth_policy_seal_fn over the node key, as the standalone Admin
 * seals (lib/admin: lk_admin_new). */
static lk_status node_seal(void *ctx, const char *cred_id, const char *field,
                           const unsigned char *pt, size_t len,
                           uint32_t *key_id,
                           unsigned char nonce[LK_SEAL_NONCE_BYTES],
                           unsigned char **ct, size_t *ct_len, lk_err *err) {
  const lk_seal_key *key = ctx;
  *key_id = lk_seal_key_id(key);
  return lk_seal(key, cred_id, field, pt, len, nonce, ct, ct_len, err);
}

/* lk_oauth_policy_hash_fn over the sidecar's audit key. */
static lk_status audit_hash(void *ctx, const void *value, size_t len,
                            char out_hex[LK_AUDIT_HEX_BYTES], lk_err *err) {
  if (ctx == NULL) {
    return lk_fail(err, LK_FAILED_PRECONDITION, "no audit key");
  }
  return lk_audit_key_hash(ctx, value, len, out_hex, err);
}

/* lk_oauth_policy_unseal_fn over the node key (ctx). */
static lk_status node_unseal(void *ctx, const char *cred_id,
                             const Latchkey__V1__FieldValue *f, lk_secret **out,
                             lk_err *err) {
  return lk_unseal(ctx, f->sealed->key_id, cred_id, f->name,
                   f->sealed->nonce.data, f->sealed->nonce.len,
                   f->sealed->ciphertext.data, f->sealed->ciphertext.len, out,
                   err);
}

/* ---- one attempt --------------------------------------------------------- */

/* What an attempt tells its waiters. */
typedef struct {
  int answer; /* answer the credential's waiters with st, gen and err */
  lk_status st;
  uint64_t gen;
  lk_err err;
  int stored; /* a record was stored */
  int hold;   /* leave the credential alone for a while */
} outcome;

/* Stores the record outcome out makes of credential c0, which the attempt
 * read as seen0: one batch committed only over those bytes
 * (lk_catalog_commit_if). When the credential changed meanwhile it is
 * read again: deleted, or re-authorised by its owner (another
 * generation), the outcome is dropped (*dropped says why, *gen_now is the
 * generation stored now); anything else (a label, another field) is kept
 * and the record rebuilt on it. LK_OK with *stored 1 once it landed. */
static lk_status store(lk_local_refresh *r, const Latchkey__V1__Credential *c0,
                       lk_catalog_seen *seen0,
                       const lk_oauth_policy_outcome *out, int *stored,
                       const char **dropped, uint64_t *gen_now, lk_err *err) {
  const Latchkey__V1__Credential *c = c0;
  lk_catalog_seen *seen = seen0;
  Latchkey__V1__Credential *fresh = NULL;
  lk_catalog_seen *fresh_seen = NULL;
  lk_oauth_policy_sealer sealer = {node_seal, NULL, (void *)r->key};
  lk_status st = LK_OK;
  int64_t until = lk_now_ms() + STORE_PERSIST_MS;
  *stored = 0;
  *dropped = NULL;
  for (int tries = 0;; tries++) {
    lk_oauth_policy_record *rec = NULL;
    lk_store_batch *b = NULL;
    int changed = 0;
    /* A failure's state is not worth many tries; a provider's answer is
     * (with a rotating provider the old refresh token is spent). */
    if ((tries == MAX_STORE_TRIES && out->res == NULL) ||
        lk_now_ms() >= until) {
      st = lk_fail(err, LK_UNAVAILABLE,
                   "credential %s kept changing while its refresh was being "
                   "stored",
                   c0->id);
      break;
    }
    st = lk_oauth_policy_record_new(c, out, &sealer, &rec, err);
    if (st == LK_OK) {
      b = lk_store_batch_new();
      st = b == NULL
               ? lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory")
               : lk_catalog_put_credential(
                     r->cat, b, lk_oauth_policy_record_credential(rec), err);
    }
    if (st == LK_OK) {
      st = lk_catalog_commit_if(r->cat, b, &seen, 1, &changed, err);
    }
    lk_store_batch_destroy(b);
    lk_oauth_policy_record_destroy(rec);
    if (st == LK_OK) {
      *stored = 1;
      break;
    }
    if (!changed) {
      break;
    }
    /* Changed since it was read: by whom? */
    Latchkey__V1__Credential *now_c = NULL;
    lk_catalog_seen *now_seen = NULL;
    st = lk_catalog_get_credential_seen(r->cat, c0->id, &now_c, &now_seen, err);
    if (st == LK_NOT_FOUND) {
      *dropped = "the credential was deleted";
      st = LK_OK;
    } else if (st == LK_OK &&
               (now_c->oauth == NULL ||
                now_c->oauth->generation != c0->oauth->generation)) {
      *dropped = "the owner re-authorised the credential meanwhile";
      *gen_now = now_c->oauth != NULL ? now_c->oauth->generation : 0;
    }
    if (st != LK_OK || *dropped != NULL) {
      lk_catalog_free_credential(now_c);
      lk_catalog_seen_free(now_seen);
      break;
    }
    lk_catalog_free_credential(fresh);
    lk_catalog_seen_free(fresh_seen);
    fresh = now_c;
    fresh_seen = now_seen;
    c = fresh;
    seen = fresh_seen;
  }
  lk_catalog_free_credential(fresh);
  lk_catalog_seen_free(fresh_seen);
  return st;
}

/* Asks the provider for credential c (read as seen) and stores the
 * outcome. */
static void refresh(lk_local_refresh *r, const Latchkey__V1__Credential *c,
                    lk_catalog_seen *seen, outcome *o) {
  lk_oauth_policy_attempt a;
  lk_err cerr;
  const char *dropped = NULL;
  uint64_t gen_now = c->oauth->generation;
  lk_err_clear(&cerr);
  lk_oauth_policy_requester rq = {
      node_unseal,       (void *)r->key,      halted,         r,
      r->allow_insecure, r->token_timeout_ms, r->retry_max_ms};
  lk_oauth_policy_attempt_run(c, &rq, &a);
  if (a.cut_short) {
    /* Stopping cut the request short: record nothing. A provider that
     * processed it may have rotated the refresh token, as after a crash
     * (local_refresh.h). A successful answer is still stored below. */
    lk_log(LK_LOG_WARN, "oauth.refresh.abandoned",
           "credential %s: latchkeyd stopped during its refresh (%s)", c->id,
           a.err.msg);
    o->answer = 1;
    o->st = lk_fail(&o->err, LK_UNAVAILABLE, "the sidecar is stopping");
    return;
  }
  lk_status xst = a.out.status;
  int stored = 0;
  lk_status cst = store(r, c, seen, &a.out, &stored, &dropped, &gen_now, &cerr);
  if (stored) {
    o->stored = 1;
    gen_now = a.state.generation;
  }
  lk_oauth_policy_reporter rp = {"sidecar", r->agent_id, r->m_refreshes,
                                 audit_hash, r->audit};
  lk_oauth_policy_attempt_report(c, &a, &rp, gen_now, o->stored, dropped);
  if (cst != LK_OK) {
    lk_log(LK_LOG_ERROR, "oauth.refresh.commit_failed",
           "credential %s: the %s of its refresh could not be stored (%s)%s",
           c->id, xst == LK_OK ? "new token" : "failure", cerr.msg,
           xst == LK_OK ? "; the provider's answer is lost (a rotated refresh "
                          "token with it: the owner may have to re-authorise)"
                        : "");
    o->answer = 1;
    o->hold = 1;
    o->st = lk_fail(&o->err, LK_UNAVAILABLE,
                    "refreshing credential %s: the result could not be stored "
                    "(%s)",
                    c->id, cerr.msg);
    return;
  }
  if (dropped != NULL) {
    return; /* waiters read the owner's record */
  }
  o->answer = 1;
  o->gen = gen_now;
  o->st = lk_oauth_policy_attempt_error(c, &a, "latchkeyd", &o->err);
}

/* One attempt on credential id: read, check, refresh, store. forced: on
 * demand for a token refused at generation asked. */
static void attempt(lk_local_refresh *r, const char *id, uint64_t asked,
                    int forced, outcome *o) {
  Latchkey__V1__Credential *c = NULL;
  lk_catalog_seen *seen = NULL;
  lk_err err;
  memset(o, 0, sizeof(*o));
  int64_t now = lk_wall_ms();
  lk_status st = lk_catalog_get_credential_seen(r->cat, id, &c, &seen, &err);
  if (st != LK_OK) {
    o->answer = 1;
    o->st = st == LK_NOT_FOUND ? LK_NOT_FOUND : LK_UNAVAILABLE;
    lk_fail(&o->err, o->st, "credential %s cannot be read: %s", id, err.msg);
    goto done;
  }
  int go = 0;
  st = lk_oauth_policy_should_attempt(c, forced, asked, now, r->margin_ms, &go,
                                      &o->err);
  if (st != LK_OK) {
    o->answer = 1;
    o->st = st;
    goto done;
  }
  if (!go) {
    /* Refreshed meanwhile (waiters read it), or not due any more (an Admin
     * write moved it). */
    goto done;
  }
  refresh(r, c, seen, o);
done:
  lk_catalog_free_credential(c);
  lk_catalog_seen_free(seen);
}

/* ---- the thread -----------------------------------------------------------
 */

/* What a scan found. */
typedef struct {
  lk_local_refresh *r;
  int64_t now_wall;
  int64_t next_due; /* wall ms of the earliest credential not yet due */
} scan_ctx;

/* lk_catalog_credential_fn: notes whether c is due. */
static int scan_cred(void *ctx, Latchkey__V1__Credential *c) {
  scan_ctx *s = ctx;
  lk_local_refresh *r = s->r;
  if (c->oauth != NULL) {
    int64_t due = lk_oauth_policy_due_at(c, r->margin_ms);
    int64_t held = lk_oauth_holds_until(r->holds, c->id);
    if (held > due) {
      due = held;
    }
    if (due <= s->now_wall && r->n_due < LK_LOCAL_REFRESH_MAX_BATCH) {
      snprintf(r->due[r->n_due++], ID_BYTES, "%s", c->id);
    } else if (due <= s->now_wall) {
      s->next_due = s->now_wall; /* more than a batch: scan again soon */
    } else if (due < s->next_due) {
      s->next_due = due;
    }
  }
  lk_catalog_free_credential(c);
  return 0;
}

/* Scans the catalog into the due list; returns the delay (ms) until the
 * next scan. */
static int64_t scan(lk_local_refresh *r) {
  lk_err err;
  scan_ctx s = {r, lk_wall_ms(), INT64_MAX};
  lk_oauth_holds_prune(r->holds, s.now_wall);
  r->n_due = 0;
  if (lk_catalog_list_credentials(r->cat, scan_cred, &s, &err) != LK_OK) {
    lk_log(LK_LOG_WARN, "oauth.refresh.scan_failed", "%s", err.msg);
    return HOLD_AFTER_ERROR_MS;
  }
  if (s.next_due == INT64_MAX) {
    return LK_LOCAL_REFRESH_RESCAN_MS;
  }
  int64_t delay = s.next_due - s.now_wall;
  if (delay < LK_LOCAL_REFRESH_MIN_SCAN_GAP_MS) {
    delay = LK_LOCAL_REFRESH_MIN_SCAN_GAP_MS;
  }
  return min64(delay, LK_LOCAL_REFRESH_RESCAN_MS);
}

/* Answers the waiters of id with o's outcome; mu held. */
static void answer_waiters(lk_local_refresh *r, const char *id,
                           const outcome *o) {
  for (waiter *w = r->waiters; w != NULL; w = w->next) {
    if (w->answered || strcmp(w->cred_id, id) != 0) {
      continue;
    }
    if (o->st == LK_OK && o->gen <= w->generation) {
      continue; /* not past what it asked: it reads the catalog */
    }
    w->answered = 1;
    w->st = o->st;
    w->gen = o->gen;
    w->err = o->err;
  }
}

/* Returns the OAuthState generation credential id holds in the catalog, 0
 * when it has none or is gone (its waiters then read that themselves). */
static uint64_t stored_generation(lk_local_refresh *r, const char *id) {
  Latchkey__V1__Credential *c = NULL;
  lk_err err;
  uint64_t g = 0;
  if (lk_catalog_get_credential(r->cat, id, &c, &err) == LK_OK &&
      c->oauth != NULL) {
    g = c->oauth->generation;
  }
  lk_catalog_free_credential(c);
  return g;
}

/* Asks again for id on behalf of its unanswered waiters not yet past
 * what they asked (the catalog holds now_gen); mu held. */
static void requeue_waiters(lk_local_refresh *r, const char *id,
                            uint64_t now_gen) {
  for (waiter *w = r->waiters; w != NULL; w = w->next) {
    if (w->answered || strcmp(w->cred_id, id) != 0 || now_gen == 0 ||
        now_gen > w->generation) {
      continue;
    }
    size_t i = 0;
    while (i < r->n_asked && strcmp(r->asked[i].id, id) != 0) {
      i++;
    }
    if (i < r->n_asked) {
      if (w->generation > r->asked[i].asked) {
        r->asked[i].asked = w->generation;
      }
    } else if (r->n_asked < LK_LOCAL_REFRESH_MAX_ASKED) {
      work_item *a = &r->asked[r->n_asked++];
      snprintf(a->id, sizeof(a->id), "%s", id);
      a->asked = w->generation;
    }
  }
}

static void *thread_main(void *arg) {
  lk_local_refresh *r = arg;
  int64_t next_scan = 0; /* monotonic ms: at once */
  int64_t last_scan = 0;
  for (;;) {
    work_item item;
    int forced = 0;
    int do_scan = 0;
    pthread_mutex_lock(&r->mu);
    while (!r->stopping && r->n_asked == 0 && r->n_due == 0) {
      int64_t now = lk_now_ms();
      int64_t wake = next_scan;
      if (r->changed) {
        wake = min64(wake, last_scan + LK_LOCAL_REFRESH_MIN_SCAN_GAP_MS);
      }
      if (now >= wake) {
        break;
      }
      struct timespec until = mono_at(wake);
      pthread_cond_timedwait(&r->cv, &r->mu, &until);
    }
    if (r->stopping) {
      pthread_mutex_unlock(&r->mu);
      break;
    }
    if (r->n_asked > 0) {
      /* On demand first: an agent's call is waiting for it. */
      item = r->asked[0];
      memmove(&r->asked[0], &r->asked[1],
              (r->n_asked - 1) * sizeof(r->asked[0]));
      r->n_asked--;
      forced = 1;
    } else if (r->n_due > 0) {
      snprintf(item.id, sizeof(item.id), "%s", r->due[--r->n_due]);
      item.asked = 0;
    } else {
      do_scan = 1;
      r->changed = 0;
    }
    if (!do_scan) {
      snprintf(r->in_flight, sizeof(r->in_flight), "%s", item.id);
    }
    pthread_mutex_unlock(&r->mu);
    if (do_scan) {
      last_scan = lk_now_ms();
      next_scan = last_scan + scan(r);
      continue;
    }
    outcome o;
    attempt(r, item.id, item.asked, forced, &o);
    if (o.hold) {
      lk_oauth_holds_set(r->holds, item.id, lk_wall_ms() + HOLD_AFTER_ERROR_MS);
    }
    /* Requests that joined this attempt and that it neither answered nor
     * served (it found nothing to do, or the owner's write won without a
     * new generation) are asked for again. */
    uint64_t now_gen = o.answer ? 0 : stored_generation(r, item.id);
    pthread_mutex_lock(&r->mu);
    r->in_flight[0] = '\0';
    r->changed = 1; /* its due time moved: scan again */
    if (o.stored) {
      r->stored++;
    }
    if (o.answer) {
      answer_waiters(r, item.id, &o);
      /* Requests that joined it about the very generation it made (seen
       * refused before it had finished) need one more attempt. */
      requeue_waiters(r, item.id, o.st == LK_OK ? o.gen : 0);
    } else {
      requeue_waiters(r, item.id, now_gen);
    }
    pthread_cond_broadcast(&r->done_cv);
    pthread_mutex_unlock(&r->mu);
  }
  return NULL;
}

/* ---- API ----------------------------------------------------------------- */

lk_status lk_local_refresh_start(const lk_local_refresh_config *cfg,
                                 lk_local_refresh **out, lk_err *err) {
  static const char *const result_l[1] = {"result"};
  lk_status st = LK_OK;
  pthread_condattr_t ca;
  *out = NULL;
  if (cfg == NULL || cfg->cat == NULL || cfg->key == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the OAuth refresher needs the catalog and the node key");
  }
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  lk_local_refresh *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  r->cat = cfg->cat;
  r->key = cfg->key;
  r->audit = cfg->audit;
  snprintf(r->agent_id, sizeof(r->agent_id), "%s",
           cfg->agent_id != NULL ? cfg->agent_id : "");
  r->margin_ms = cfg->margin_ms;
  r->retry_max_ms = cfg->retry_max_ms;
  r->token_timeout_ms = cfg->token_timeout_ms;
  lk_oauth_policy_defaults(&r->margin_ms, &r->retry_max_ms,
                           &r->token_timeout_ms);
  r->allow_insecure = cfg->allow_insecure;
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cv, &ca);
  pthread_cond_init(&r->done_cv, &ca);
  pthread_condattr_destroy(&ca);
  r->due = calloc(LK_LOCAL_REFRESH_MAX_BATCH, ID_BYTES);
  if (r->due == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  if ((st = lk_oauth_holds_new(MAX_HOLDS, &r->holds, err)) != LK_OK) {
    goto done;
  }
  st = lk_metrics_counter(
      cfg->metrics, "latchkey_oauth_refreshes_total",
      "OAuth token refreshes this sidecar asked an identity provider for "
      "(standalone: it refreshes its own credentials), by result (ok, "
      "failed: retried with backoff, reauthorize: the provider refused the "
      "grant, discarded: the owner re-authorised or deleted the credential "
      "meanwhile).",
      result_l, 1, &r->m_refreshes, err);
  if (st != LK_OK) {
    goto done;
  }
  if (pthread_create(&r->thread, NULL, thread_main, r) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot start the OAuth refresher thread");
    goto done;
  }
  r->started = 1;
  lk_log(LK_LOG_INFO, "oauth.refresh.started",
         "refreshing this sidecar's oauth2 credentials: margin %lld ms, "
         "retry backoff up to %lld ms%s",
         (long long)r->margin_ms, (long long)r->retry_max_ms,
         r->allow_insecure ? ", http:// token URLs allowed" : "");
  *out = r;
  r = NULL;
done:
  lk_local_refresh_destroy(r);
  return st;
}

void lk_local_refresh_stop(lk_local_refresh *r) {
  if (r == NULL) {
    return;
  }
  atomic_store(&r->halt, 1);
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_cond_broadcast(&r->done_cv);
  pthread_mutex_unlock(&r->mu);
  if (r->started) {
    pthread_join(r->thread, NULL);
    r->started = 0;
  }
  /* Waiters see stopping and leave; wait until the last has. */
  pthread_mutex_lock(&r->mu);
  while (r->waiters != NULL) {
    pthread_cond_broadcast(&r->done_cv);
    struct timespec until = mono_at(lk_now_ms() + WAIT_SLICE_MS);
    pthread_cond_timedwait(&r->done_cv, &r->mu, &until);
  }
  pthread_mutex_unlock(&r->mu);
}

void lk_local_refresh_destroy(lk_local_refresh *r) {
  if (r == NULL) {
    return;
  }
  lk_local_refresh_stop(r);
  pthread_cond_destroy(&r->cv);
  pthread_cond_destroy(&r->done_cv);
  pthread_mutex_destroy(&r->mu);
  lk_oauth_holds_destroy(r->holds);
  free(r->due);
  free(r);
}

void lk_local_refresh_changed(lk_local_refresh *r) {
  if (r == NULL) {
    return;
  }
  pthread_mutex_lock(&r->mu);
  r->changed = 1;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* Answers w from what the catalog shows now, if it shows enough: 1 with
 * *st (and *gen or err) set, else 0. */
static int read_answer(lk_local_refresh *r, const waiter *w, int64_t asked_wall,
                       lk_status *st, uint64_t *gen, lk_err *err) {
  Latchkey__V1__Credential *c = NULL;
  int done = 1;
  lk_status gst = lk_catalog_get_credential(r->cat, w->cred_id, &c, err);
  if (gst != LK_OK) {
    *st = gst == LK_NOT_FOUND ? LK_NOT_FOUND : LK_UNAVAILABLE;
    lk_fail(err, *st, "credential %s cannot be read: %s", w->cred_id, err->msg);
  } else if (c->oauth == NULL) {
    *st =
        lk_fail(err, LK_FAILED_PRECONDITION,
                "credential %s is no longer an oauth2 credential", w->cred_id);
  } else if (c->oauth->generation > w->generation) {
    *st = LK_OK;
    *gen = c->oauth->generation;
  } else if (c->oauth->reauthorize) {
    *st = lk_fail(err, LK_FAILED_PRECONDITION,
                  "credential %s must be re-authorised by its owner (the last "
                  "refresh said: %s)",
                  w->cred_id, c->oauth->last_refresh_result);
  } else if (c->oauth->failures > 0 &&
             c->oauth->last_refresh_at >= asked_wall) {
    *st = lk_fail(err, LK_UNAVAILABLE,
                  "refreshing credential %s failed (%s); latchkeyd retries "
                  "with backoff",
                  w->cred_id, c->oauth->last_refresh_result);
  } else {
    done = 0;
  }
  lk_catalog_free_credential(c);
  return done;
}

lk_status lk_local_refresh_request(lk_local_refresh *r, const char *cred_id,
                                   uint64_t generation, int64_t deadline_ms,
                                   uint64_t *now_generation, lk_err *err) {
  Latchkey__V1__Credential *c = NULL;
  waiter w;
  int already = 0;
  uint64_t gen = 0;
  lk_status st;
  memset(&w, 0, sizeof(w));
  if (!lk_catalog_valid_id(cred_id)) {
    return lk_fail(
        err, LK_INVALID_ARGUMENT,
        "credential_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$");
  }
  int64_t asked_wall = lk_wall_ms();
  st = lk_catalog_get_credential(r->cat, cred_id, &c, err);
  if (st == LK_OK) {
    st =
        lk_oauth_policy_check_request(c, generation, asked_wall, &already, err);
  }
  if (st == LK_OK) {
    gen = c->oauth->generation;
  }
  lk_catalog_free_credential(c);
  if (st != LK_OK || already) {
    if (st == LK_OK && now_generation != NULL) {
      *now_generation = gen;
    }
    return st;
  }
  int64_t now = lk_now_ms();
  if (deadline_ms == INT64_MAX ||
      deadline_ms - now > LK_LOCAL_REFRESH_MAX_WAIT_MS) {
    deadline_ms = now + LK_LOCAL_REFRESH_MAX_WAIT_MS;
  }
  w.cred_id = cred_id;
  w.generation = generation;
  pthread_mutex_lock(&r->mu);
  if (r->stopping) {
    pthread_mutex_unlock(&r->mu);
    return lk_fail(err, LK_UNAVAILABLE, "the sidecar is stopping");
  }
  /* Once per credential: an attempt in flight or already asked for serves
   * every request of it. */
  size_t i = 0;
  while (i < r->n_asked && strcmp(r->asked[i].id, cred_id) != 0) {
    i++;
  }
  if (i < r->n_asked) {
    if (generation > r->asked[i].asked) {
      r->asked[i].asked = generation;
    }
  } else if (strcmp(r->in_flight, cred_id) != 0) {
    if (r->n_asked == LK_LOCAL_REFRESH_MAX_ASKED) {
      pthread_mutex_unlock(&r->mu);
      return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                     "%d credentials are waiting for a refresh already; "
                     "retry shortly",
                     LK_LOCAL_REFRESH_MAX_ASKED);
    }
    work_item *a = &r->asked[r->n_asked++];
    snprintf(a->id, sizeof(a->id), "%s", cred_id);
    a->asked = generation;
    pthread_cond_signal(&r->cv);
  }
  w.next = r->waiters;
  r->waiters = &w;
  for (;;) {
    if (w.answered) {
      st = w.st;
      gen = w.gen;
      if (st != LK_OK) {
        *err = w.err;
      }
      break;
    }
    if (r->stopping) {
      st = lk_fail(err, LK_UNAVAILABLE, "the sidecar is stopping");
      break;
    }
    uint64_t seen = r->stored;
    pthread_mutex_unlock(&r->mu);
    int done = read_answer(r, &w, asked_wall, &st, &gen, err);
    pthread_mutex_lock(&r->mu);
    if (done) {
      break;
    }
    now = lk_now_ms();
    if (now >= deadline_ms) {
      st = lk_fail(err, LK_DEADLINE_EXCEEDED,
                   "no new access token for credential %s before the "
                   "deadline; retry the call",
                   cred_id);
      break;
    }
    if (r->stored == seen && !w.answered && !r->stopping) {
      struct timespec until = mono_at(min64(deadline_ms, now + WAIT_SLICE_MS));
      pthread_cond_timedwait(&r->done_cv, &r->mu, &until);
    }
  }
  for (waiter **pp = &r->waiters; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == &w) {
      *pp = w.next;
      break;
    }
  }
  pthread_cond_broadcast(&r->done_cv); /* a stop may wait for the last one */
  pthread_mutex_unlock(&r->mu);
  if (st == LK_OK && now_generation != NULL) {
    *now_generation = gen;
  }
  return st;
}

uint64_t lk_local_refresh_stored_count(lk_local_refresh *r) {
  pthread_mutex_lock(&r->mu);
  uint64_t n = r->stored;
  pthread_mutex_unlock(&r->mu);
  return n;
}

uint64_t lk_local_refresh_wait_stored(lk_local_refresh *r, uint64_t seen,
                                      int64_t deadline_ms) {
  pthread_mutex_lock(&r->mu);
  while (r->stored == seen && !r->stopping && lk_now_ms() < deadline_ms) {
    struct timespec until = mono_at(deadline_ms);
    pthread_cond_timedwait(&r->done_cv, &r->mu, &until);
  }
  uint64_t n = r->stored;
  pthread_mutex_unlock(&r->mu);
  return n;
}
