/*
 * oauth_retry.h - what a sidecar does when a vendor refuses the access
 * token of an oauth2 credential that has not expired (HTTP 401): ask for
 * an immediate refresh (a replica asks its control plane, Sync/Refresh; a
 * standalone sidecar its own refresher, sidecar/local_refresh), once per
 * credential however many calls were refused, wait for the new token to
 * reach the local catalog, and tell each refused call whether to retry.
 * Also the
 * text of the re-authorise hint, which every "this connection needs its
 * owner" answer carries.
 *
 * Why: the control plane refreshes tokens before they expire, but a
 * provider may revoke one early. Every call refused at that moment would
 * otherwise ask for its own refresh, and with rotating refresh tokens
 * concurrent refreshes are how a grant gets burnt. So refused calls of one
 * credential share one "flight": one Refresh request, one wait.
 *
 * A flight belongs to one credential and one generation (the
 * OAuthState.generation of the token the vendor refused). It runs on a
 * thread of its own:
 *
 *   1. refresh(credential, generation, deadline): Sync/Refresh or the
 *      local refresher's lk_local_refresh_request, deadline
 *      = the first refused call's deadline.
 *   2. OK: each waiting call is told NEW_TOKEN as soon as the catalog
 *      holds the credential at a generation above the one that call used
 *      (checked after every batch the replica applies, wait_applied, and
 *      every LK_OAUTH_RETRY_SLICE_MS as a fallback), or GIVE_UP when its
 *      own deadline passes first.
 *      FAILED_PRECONDITION (the provider refused the grant): REAUTHORIZE.
 *      Anything else: GIVE_UP, with the reason.
 *
 * A call refused while a flight of its credential is asking joins it; one
 * refused while the flight waits joins it when the flight asked for a
 * generation at least as new as the call's (its answer then helps that
 * call too); otherwise a new flight starts. A call whose credential the
 * catalog already holds at a newer generation is told NEW_TOKEN at once,
 * without any request. So there is at most one Refresh request in flight
 * per credential, and each refused call gets exactly one answer.
 *
 * Invariants: no token passes through this module (ids and generations
 * only); every submitted call's done runs exactly once, also at stop;
 * flights are capped (LK_OAUTH_RETRY_MAX_FLIGHTS).
 */
#ifndef LK_OAUTH_RETRY_H
#define LK_OAUTH_RETRY_H

#include <stddef.h>
#include <stdint.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/metrics.h"
#include "lib/status.h"

/* At most this many credentials are being refreshed at once. */
#define LK_OAUTH_RETRY_MAX_FLIGHTS 64
/* A waiting flight looks at the catalog at least this often. */
#define LK_OAUTH_RETRY_SLICE_MS 100
/* last_refresh_result is quoted in hints up to this many bytes. */
#define LK_OAUTH_HINT_RESULT_MAX 200

typedef struct lk_oauth_retry lk_oauth_retry;

/* What a refused call is told. */
typedef enum {
  LK_OAUTH_RETRY_NEW_TOKEN,   /* the catalog holds a newer token: retry */
  LK_OAUTH_RETRY_REAUTHORIZE, /* the provider refused the grant */
  LK_OAUTH_RETRY_GIVE_UP      /* no new token: answer the refusal */
} lk_oauth_retry_outcome;

/* Called once per submitted call; why (valid during the call only) says
 * what happened, for logs and hints; it never holds a value. */
typedef void (*lk_oauth_retry_done)(void *ctx, lk_oauth_retry_outcome outcome,
                                    const char *why);

typedef struct {
  /* Asks the control plane to refresh credential_id past generation,
   * blocking until deadline_ms (CLOCK_MONOTONIC); LK_OK sets
   * *now_generation; LK_FAILED_PRECONDITION means the provider refused
   * the grant (sidecar/replica: lk_replica_refresh; standalone,
   * sidecar/local_refresh: lk_local_refresh_request). */
  lk_status (*refresh)(void *ctx, const char *credential_id,
                       uint64_t generation, int64_t deadline_ms,
                       uint64_t *now_generation, lk_err *err);
  /* A count that grows after each batch the replica applies (standalone:
   * each record the local refresher stores). */
  uint64_t (*applied_count)(void *ctx);
  /* Waits until the count differs from seen or deadline_ms passes;
   * returns the count then. */
  uint64_t (*wait_applied)(void *ctx, uint64_t seen, int64_t deadline_ms);
  void *ctx;
  /* Where the replica's credentials are read (borrowed). */
  lk_catalog *cat;
  /* Registry for latchkey_oauth_refresh_requests_total (borrowed; NULL =
   * no metrics). */
  lk_metrics *metrics;
} lk_oauth_retry_config;

/* Creates the refresher of refused calls; cfg->cat and cfg->metrics must
 * outlive it. */
lk_status lk_oauth_retry_new(const lk_oauth_retry_config *cfg,
                             lk_oauth_retry **out, lk_err *err) LK_MUST_CHECK;

/* Takes one call whose vendor refused the token of credential_id at
 * generation: done(ctx, ...) runs exactly once, on a flight's thread, or
 * before this returns (on the caller's thread) when the catalog already
 * holds a newer generation. deadline_ms (CLOCK_MONOTONIC) bounds the
 * refresh request and the wait. Not taken (done never runs):
 * LK_UNAVAILABLE after lk_oauth_retry_stop, LK_RESOURCE_EXHAUSTED when
 * LK_OAUTH_RETRY_MAX_FLIGHTS flights are running or no thread can start,
 * LK_INVALID_ARGUMENT for an id that is not a catalog id. */
lk_status lk_oauth_retry_submit(lk_oauth_retry *r, const char *credential_id,
                                uint64_t generation, int64_t deadline_ms,
                                lk_oauth_retry_done done, void *ctx,
                                lk_err *err) LK_MUST_CHECK;

/* Refuses new calls and waits for every flight to end: waiting calls are
 * told GIVE_UP; a refresh request in progress ends by its deadline or when
 * the refresh function is stopped (lk_replica_stop). Idempotent. */
void lk_oauth_retry_stop(lk_oauth_retry *r);

/* Stops (when needed) and frees; NULL is ignored. */
void lk_oauth_retry_destroy(lk_oauth_retry *r);

/* Writes into out (cap bytes, always NUL-terminated) the hint of a
 * missing_credential answer for oauth2 credential cred whose token must
 * not or cannot be used at now_ms (wall clock, unix ms): it says the
 * connection must be re-authorised, names the credential, when the token
 * expired (UTC), why it was not refreshed (refused_grant or
 * OAuthState.reauthorize: the identity provider refused the refresh token;
 * else OAuthState.last_refresh_result, printable ASCII only, at most
 * LK_OAUTH_HINT_RESULT_MAX bytes), the setup_url when not NULL or empty,
 * and the latchkeyctl command that stores new tokens. vendor_refused says
 * the vendor refused a token that had not expired. Never a value. */
void lk_oauth_reauthorize_hint(const Latchkey__V1__Credential *cred,
                               int64_t now_ms, int vendor_refused,
                               int refused_grant, const char *setup_url,
                               char *out, size_t cap);

#endif
