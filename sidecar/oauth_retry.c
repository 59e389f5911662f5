/*
 * oauth_retry.c - one Refresh request per refused credential, and the
 * re-authorise hint (see oauth_retry.h).
 *
 * Threads: each flight runs on a thread of its own, so a slow control
 * plane for one credential never holds up another, and the forwarder
 * thread that saw the 401 goes straight back to its transfers. Flights
 * live in one list under mu; a finished flight is joined and freed by the
 * next submit or by stop. done callbacks always run outside mu, so they
 * may do real work (the caller retries its vendor call from there).
 *
 * The wait after a successful refresh reads the applied count before it
 * reads the catalog, so a batch landing between the two still wakes it;
 * it never sleeps longer than LK_OAUTH_RETRY_SLICE_MS, so a call that
 * joined late with an earlier deadline, or a stop, is seen promptly.
 */
#include "sidecar/oauth_retry.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/oauth.h"

/* A call joins a flight still asking only when its deadline is at most
 * this much earlier than the flight's: the caller keeps this margin
 * between the deadline it passes and its own (toolcalls.c
 * OAUTH_ANSWER_MARGIN_MS), so the refusal still reaches it in time. */
#define LK_OAUTH_RETRY_JOIN_SLACK_MS 250

typedef struct waiter {
  struct waiter *next;
  uint64_t generation; /* of the token the vendor refused */
  int64_t deadline_ms;
  lk_oauth_retry_done done;
  void *ctx;
} waiter;

typedef struct flight {
  struct flight *next;
  lk_oauth_retry *r;
  char *cred_id;
  uint64_t generation; /* asked to refresh past */
  int64_t deadline_ms; /* of the Refresh request */
  int asking;          /* the Refresh request has not answered yet */
  int closed;          /* no call may join any more */
  int finished;        /* the thread is done: join it */
  waiter *waiters;
  pthread_t thread;
} flight;

struct lk_oauth_retry {
  lk_oauth_retry_config cfg;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* stop */
  flight *flights;
  size_t running; /* flights not finished */
  int stopping;
  lk_metric *m_requests; /* {result} */
};

lk_status lk_oauth_retry_new(const lk_oauth_retry_config *cfg,
                             lk_oauth_retry **out, lk_err *err) {
  static const char *const labels[] = {"result"};
  *out = NULL;
  if (cfg->refresh == NULL || cfg->applied_count == NULL ||
      cfg->wait_applied == NULL || cfg->cat == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "oauth retry: refresh, applied_count, wait_applied and "
                   "the catalog are required");
  }
  lk_oauth_retry *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  r->cfg = *cfg;
  lk_status st = lk_metrics_counter(
      cfg->metrics, "latchkey_oauth_refresh_requests_total",
      "Refresh requests this sidecar made after a vendor refused an oauth2 "
      "access token (Sync/Refresh to its control plane, or to its own "
      "refresher when standalone), by result: ok, reauthorize (the "
      "provider refused the grant), timeout (no answer by the call's "
      "deadline) or failed.",
      labels, 1, &r->m_requests, err);
  if (st != LK_OK) {
    free(r);
    return st;
  }
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cv, &ca);
  pthread_condattr_destroy(&ca);
  *out = r;
  return LK_OK;
}

/* Returns the OAuthState generation of credential id in the catalog; 0
 * when it carries none, UINT64_MAX when it is gone (the caller then reads
 * what is there now). */
static uint64_t stored_generation(lk_oauth_retry *r, const char *id) {
  Latchkey__V1__Credential *c = NULL;
  lk_err err;
  lk_status st = lk_catalog_get_credential(r->cfg.cat, id, &c, &err);
  if (st == LK_NOT_FOUND)
    return UINT64_MAX;
  if (st != LK_OK)
    return 0;
  uint64_t g = c->oauth != NULL ? c->oauth->generation : 0;
  lk_catalog_free_credential(c);
  return g;
}

static void count_request(lk_oauth_retry *r, lk_status st) {
  const char *result = st == LK_OK                    ? "ok"
                       : st == LK_FAILED_PRECONDITION ? "reauthorize"
                       : st == LK_DEADLINE_EXCEEDED   ? "timeout"
                                                      : "failed";
  const char *v[] = {result};
  lk_metric_inc(r->m_requests, v, 1);
}

/* Tells every waiter of list outcome and frees it. */
static void answer_all(waiter *list, lk_oauth_retry_outcome outcome,
                       const char *why) {
  while (list != NULL) {
    waiter *w = list;
    list = w->next;
    w->done(w->ctx, outcome, why);
    free(w);
  }
}

/* Sleeps until deadline_ms unless stop comes first. */
static void nap(lk_oauth_retry *r, int64_t deadline_ms) {
  int64_t ms = deadline_ms - lk_now_ms();
  if (ms <= 0)
    return;
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += ms / 1000;
  until.tv_nsec += (ms % 1000) * 1000000;
  if (until.tv_nsec >= 1000000000) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&r->mu);
  while (!r->stopping) {
    if (pthread_cond_timedwait(&r->cv, &r->mu, &until) == ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&r->mu);
}

/* After an OK: answers each waiter once the catalog holds a newer
 * generation than it used, or when its deadline passes. */
static void wait_for_token(lk_oauth_retry *r, flight *f) {
  uint64_t seen = r->cfg.applied_count(r->cfg.ctx);
  for (;;) {
    uint64_t gen = stored_generation(r, f->cred_id);
    int64_t now = lk_now_ms();
    int64_t next = now + LK_OAUTH_RETRY_SLICE_MS;
    waiter *fresh = NULL, *late = NULL;
    pthread_mutex_lock(&r->mu);
    int stopping = r->stopping;
    for (waiter **pp = &f->waiters; *pp != NULL;) {
      waiter *w = *pp;
      if (gen > w->generation || stopping || w->deadline_ms <= now) {
        *pp = w->next;
        if (gen > w->generation) {
          w->next = fresh;
          fresh = w;
        } else {
          w->next = late;
          late = w;
        }
        continue;
      }
      if (w->deadline_ms < next)
        next = w->deadline_ms;
      pp = &w->next;
    }
    if (f->waiters == NULL)
      f->closed = 1;
    int over = f->closed;
    pthread_mutex_unlock(&r->mu);
    answer_all(fresh, LK_OAUTH_RETRY_NEW_TOKEN,
               "the replica holds the refreshed token");
    if (late != NULL) {
      lk_log(LK_LOG_INFO, "oauth_refresh_not_applied",
             "credential %s: it was refreshed, but no newer generation than "
             "%llu reached the catalog before the call's deadline%s",
             f->cred_id, (unsigned long long)f->generation,
             stopping ? " (the sidecar is stopping)" : "");
    }
    answer_all(late, LK_OAUTH_RETRY_GIVE_UP,
               stopping ? "the sidecar is stopping"
                        : "no refreshed token reached the replica before the "
                          "call's deadline");
    if (over)
      return;
    uint64_t now_seen = r->cfg.wait_applied(r->cfg.ctx, seen, next);
    if (now_seen == seen)
      nap(r, next); /* the replica stopped: do not spin on it */
    seen = now_seen;
  }
}

static void *flight_main(void *arg) {
  flight *f = arg;
  lk_oauth_retry *r = f->r;
  lk_err err;
  lk_err_clear(&err);
  uint64_t now_generation = 0;
  lk_status st = r->cfg.refresh(r->cfg.ctx, f->cred_id, f->generation,
                                f->deadline_ms, &now_generation, &err);
  count_request(r, st);
  pthread_mutex_lock(&r->mu);
  f->asking = 0;
  if (st != LK_OK)
    f->closed = 1;
  waiter *refused = st != LK_OK ? f->waiters : NULL;
  if (st != LK_OK)
    f->waiters = NULL;
  pthread_mutex_unlock(&r->mu);
  if (st == LK_OK) {
    lk_log(LK_LOG_INFO, "oauth_refresh_requested",
           "credential %s: refreshed past generation %llu (now %llu) after "
           "a vendor refused its token",
           f->cred_id, (unsigned long long)f->generation,
           (unsigned long long)now_generation);
    wait_for_token(r, f);
  } else {
    char why[sizeof(err.msg) + 64];
    snprintf(why, sizeof(why), "the refresh request failed: %s", err.msg);
    lk_log(LK_LOG_INFO, "oauth_refresh_failed",
           "credential %s generation %llu: %s (%s)", f->cred_id,
           (unsigned long long)f->generation, why, lk_status_name(st));
    answer_all(refused,
               st == LK_FAILED_PRECONDITION ? LK_OAUTH_RETRY_REAUTHORIZE
                                            : LK_OAUTH_RETRY_GIVE_UP,
               why);
  }
  pthread_mutex_lock(&r->mu);
  f->finished = 1;
  r->running--;
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

static void free_flight(flight *f) {
  free(f->cred_id);
  free(f);
}

/* Joins and frees the finished flights; mu held. */
static void reap(lk_oauth_retry *r) {
  for (flight **pp = &r->flights; *pp != NULL;) {
    flight *f = *pp;
    if (!f->finished) {
      pp = &f->next;
      continue;
    }
    *pp = f->next;
    /* Its thread only returns after setting finished. */
    pthread_join(f->thread, NULL);
    free_flight(f);
  }
}

/* The flight a call refused at generation joins, or NULL; mu held. */
static flight *joinable(lk_oauth_retry *r, const char *id,
                        uint64_t generation) {
  for (flight *f = r->flights; f != NULL; f = f->next) {
    if (f->finished || f->closed || strcmp(f->cred_id, id) != 0)
      continue;
    if (f->asking || generation <= f->generation)
      return f;
  }
  return NULL;
}

lk_status lk_oauth_retry_submit(lk_oauth_retry *r, const char *credential_id,
                                uint64_t generation, int64_t deadline_ms,
                                lk_oauth_retry_done done, void *ctx,
                                lk_err *err) {
  if (!lk_catalog_valid_id(credential_id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "oauth retry: not a credential id");
  }
  pthread_mutex_lock(&r->mu);
  int stopping = r->stopping;
  pthread_mutex_unlock(&r->mu);
  if (stopping)
    return lk_fail(err, LK_UNAVAILABLE, "the sidecar is stopping");
  if (stored_generation(r, credential_id) > generation) {
    /* Refreshed already (by the control plane's schedule, or by the
     * flight of another refused call): no request needed. */
    done(ctx, LK_OAUTH_RETRY_NEW_TOKEN,
         "the replica already holds a newer token");
    return LK_OK;
  }
  waiter *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  w->generation = generation;
  w->deadline_ms = deadline_ms;
  w->done = done;
  w->ctx = ctx;
  lk_status st = LK_OK;
  flight *f = NULL;
  pthread_mutex_lock(&r->mu);
  reap(r);
  if (r->stopping) {
    st = lk_fail(err, LK_UNAVAILABLE, "the sidecar is stopping");
    goto out;
  }
  f = joinable(r, credential_id, generation);
  if (f != NULL && f->asking &&
      deadline_ms + LK_OAUTH_RETRY_JOIN_SLACK_MS < f->deadline_ms) {
    /* The flight's Refresh request may run to its own deadline, well past
     * this call's; one request per credential stays the rule, so this
     * call answers its refusal now instead of overrunning. */
    st = lk_fail(err, LK_DEADLINE_EXCEEDED,
                 "a refresh of credential %s is in flight with a later "
                 "deadline than this call's",
                 credential_id);
    f = NULL; /* the flight is not this call's to free */
    goto out;
  }
  if (f != NULL) {
    w->next = f->waiters;
    f->waiters = w;
    w = NULL;
    goto out;
  }
  if (r->running >= LK_OAUTH_RETRY_MAX_FLIGHTS) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "%d credentials are being refreshed already",
                 LK_OAUTH_RETRY_MAX_FLIGHTS);
    goto out;
  }
  f = calloc(1, sizeof(*f));
  if (f == NULL || (f->cred_id = strdup(credential_id)) == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  f->r = r;
  f->generation = generation;
  f->deadline_ms = deadline_ms;
  f->asking = 1;
  f->waiters = w;
  if (pthread_create(&f->thread, NULL, flight_main, f) != 0) {
    f->waiters = NULL;
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "cannot start a thread to refresh credential %s",
                 credential_id);
    goto out;
  }
  w = NULL;
  f->next = r->flights;
  r->flights = f;
  r->running++;
  f = NULL;
out:
  pthread_mutex_unlock(&r->mu);
  if (st != LK_OK && f != NULL)
    free_flight(f);
  free(w);
  return st;
}

void lk_oauth_retry_stop(lk_oauth_retry *r) {
  if (r == NULL)
    return;
  pthread_mutex_lock(&r->mu);
  r->stopping = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  for (;;) {
    pthread_mutex_lock(&r->mu);
    flight *f = r->flights;
    if (f != NULL)
      r->flights = f->next;
    pthread_mutex_unlock(&r->mu);
    if (f == NULL)
      break;
    pthread_join(f->thread, NULL);
    free_flight(f);
  }
}

void lk_oauth_retry_destroy(lk_oauth_retry *r) {
  if (r == NULL)
    return;
  lk_oauth_retry_stop(r);
  pthread_cond_destroy(&r->cv);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

/* ---- the hint ------------------------------------------------------------ */

/* Appends printf output to out at *n, never past cap - 1. */
static void put(char *out, size_t cap, size_t *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void put(char *out, size_t cap, size_t *n, const char *fmt, ...) {
  if (*n >= cap - 1)
    return;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(out + *n, cap - *n, fmt, ap);
  va_end(ap);
  if (w > 0)
    *n += (size_t)w < cap - *n ? (size_t)w : cap - 1 - *n;
}

/* Formats unix ms as "2026-11-26 03:17:08 UTC". */
static void utc(int64_t unix_ms, char *out, size_t cap) {
  time_t secs = (time_t)(unix_ms / 1000);
  struct tm tm;
  if (gmtime_r(&secs, &tm) == NULL ||
      strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0) {
    snprintf(out, cap, "unix %lld", (long long)(unix_ms / 1000));
  }
}

void lk_oauth_reauthorize_hint(const Latchkey__V1__Credential *cred,
                               int64_t now_ms, int vendor_refused,
                               int refused_grant, const char *setup_url,
                               char *out, size_t cap) {
  size_t n = 0;
  char when[64];
  const Latchkey__V1__OAuthState *o = cred->oauth;
  int64_t expires_ms = lk_oauth_expires_at_ms(cred);
  const char *grant = lk_oauth_plain_field(cred, LK_OAUTH_GRANT_TYPE);
  int client_credentials =
      grant != NULL && strcmp(grant, LK_OAUTH_GRANT_CLIENT_CREDENTIALS) == 0;
  if (cap == 0)
    return;
  out[0] = '\0';
  put(out, cap, &n,
      "The OAuth connection of credential '%s' (type '%s') must be "
      "re-authorised: ",
      cred->id, cred->type);
  if (expires_ms == 0) {
    put(out, cap, &n,
        "its access token has no known expiry (expires_at is empty or 0), "
        "so it is not used");
  } else {
    utc(expires_ms, when, sizeof(when));
    if (vendor_refused && expires_ms > now_ms)
      put(out, cap, &n, "the vendor refused its access token (valid until %s)",
          when);
    else
      put(out, cap, &n, "its access token expired at %s", when);
  }
  put(out, cap, &n, ", and it was not refreshed: ");
  if (refused_grant || (o != NULL && o->reauthorize)) {
    put(out, cap, &n, "the identity provider refused the %s",
        client_credentials ? "client credentials" : "refresh token");
  } else if (o != NULL && o->last_refresh_result != NULL &&
             o->last_refresh_result[0] != '\0') {
    char result[LK_OAUTH_HINT_RESULT_MAX + 1];
    size_t i = 0;
    for (; o->last_refresh_result[i] != '\0' && i < LK_OAUTH_HINT_RESULT_MAX;
         i++) {
      unsigned char c = (unsigned char)o->last_refresh_result[i];
      result[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    result[i] = '\0';
    put(out, cap, &n, "the last refresh attempt said \"%s\"", result);
    if (o->failures > 0)
      put(out, cap, &n, " (%u failed attempts in a row)", o->failures);
  } else {
    put(out, cap, &n, "it has not been refreshed yet (no attempt recorded)");
  }
  put(out, cap, &n, ". Re-authorise the connection");
  if (setup_url != NULL && setup_url[0] != '\0')
    put(out, cap, &n, " at %s", setup_url);
  put(out, cap, &n,
      ", or store new tokens from the identity provider (values on stdin, "
      "never in argv): echo '{\"access_token\":\"...\",%s"
      "\"expires_at\":\"UNIX_SECONDS\"}' | latchkeyctl credential update %s",
      client_credentials ? "" : "\"refresh_token\":\"...\",", cred->id);
}
