/*
 * local_refresh.h - a standalone sidecar's OAuth 2.0 refresher: the
 * oauth2 credentials in its own catalog (lib/catalog over its RocksDB)
 * are refreshed before they expire, and on demand when a vendor refuses a
 * token, exactly as the control plane refreshes a fleet's
 * (controlplane/oauth_refresh), for laptops, CI and the demo.
 *
 * Why it may: a standalone sidecar is its own control plane (DESIGN.md
 * §5). Its credentials live in its own store and nowhere else, so it is
 * the only party that could send their refresh tokens: no second
 * refresher can race it on a rotating refresh token. Without this, a
 * standalone sidecar would answer missing_credential from the first
 * expiry on until the owner pasted new tokens.
 *
 * What is shared with the control plane is the policy of
 * lib/oauth_policy.h: when a credential is due (margin, half-life cap,
 * backoff, reauthorize), what an answer or a failure becomes (new tokens
 * sealed, rotated refresh token kept, expires_at, the next generation,
 * failures and next_attempt_at), which on-demand requests are refused,
 * the `audit.oauth.refresh` line (naming "sidecar": the agent id) and the
 * metric latchkey_oauth_refreshes_total{result}. What is particular here:
 *
 *  - One thread. It scans the catalog on a timer (when the earliest
 *    credential falls due, at least every LK_LOCAL_REFRESH_RESCAN_MS),
 *    after lk_local_refresh_changed (an Admin write), and at once for an
 *    on-demand request; attempts run one at a time on it, so no two
 *    requests for one credential are ever in flight.
 *  - Sealing: the refresh token and client secret are unsealed with the
 *    node key into lk_secret memory for the token request only; the new
 *    tokens are sealed with the node key (lk_seal) as the standalone
 *    Admin seals, so the record looks exactly like one Admin wrote.
 *  - Committing: the credential is read with lk_catalog_get_credential_seen
 *    and the record committed in one batch with lk_catalog_commit_if, which
 *    lands only while the store still holds the bytes read (compared under
 *    the catalog's commit mutex, which the Admin service's writes take
 *    too). When the credential changed meanwhile it is read again, with
 *    the control plane's rules: an owner who re-authorised it (another
 *    generation) or deleted it wins and the provider's answer is dropped
 *    ("discarded"); any other change (a label) is kept and the record is
 *    rebuilt on it, since the old refresh token is already spent. A crash
 *    between the provider's answer and the commit loses
 *    that answer (with a rotating provider the old refresh token is then
 *    spent: the next attempt is refused and the owner must re-authorise);
 *    a commit that landed is durable (RocksDB, synced), so a restart keeps
 *    the refreshed tokens.
 *
 * On demand (a vendor answered 401; sidecar/oauth_retry's refresh
 * function in standalone mode): lk_local_refresh_request answers at once
 * when the credential is already past the generation asked about, or
 * cannot be refreshed now (re-authorisation pending:
 * FAILED_PRECONDITION; in backoff: UNAVAILABLE); otherwise it asks the
 * thread for an immediate attempt (requests for one credential share
 * one) and waits until the catalog holds a newer generation (OK), the
 * attempt fails (FAILED_PRECONDITION for a refused grant, UNAVAILABLE
 * otherwise), the deadline passes (DEADLINE_EXCEEDED) or the refresher
 * stops (UNAVAILABLE).
 *
 * Invariants: no token in a log line, an audit line or an error message;
 * plaintext only in lk_secret memory, wiped at its last use; every
 * waiting request is answered, also at stop.
 */
#ifndef LK_LOCAL_REFRESH_H
#define LK_LOCAL_REFRESH_H

#include <stdint.h>

#include "lib/audit.h"
#include "lib/catalog.h"
#include "lib/metrics.h"
#include "lib/seal.h"
#include "lib/status.h"

/* The catalog is scanned at least this often. */
#define LK_LOCAL_REFRESH_RESCAN_MS 10000
/* Scans a change triggers are at least this far apart. */
#define LK_LOCAL_REFRESH_MIN_SCAN_GAP_MS 200
/* Due credentials attempted per scan at most; the rest wait for the next. */
#define LK_LOCAL_REFRESH_MAX_BATCH 256
/* Credentials asked for on demand and not yet attempted, at most. */
#define LK_LOCAL_REFRESH_MAX_ASKED 256
/* Longest an on-demand request waits when its caller set no deadline. */
#define LK_LOCAL_REFRESH_MAX_WAIT_MS 60000

typedef struct lk_local_refresh lk_local_refresh;

typedef struct {
  lk_catalog *cat;          /* the sidecar's catalog: scanned, read, written */
  const lk_seal_key *key;   /* the node key: unseals and seals the tokens */
  lk_audit_key *audit;      /* hashes new tokens in audit lines; NULL: none */
  lk_metrics *metrics;      /* NULL: no metrics */
  const char *agent_id;     /* names this sidecar in audit lines */
  int64_t margin_ms;        /* 0: LK_OAUTH_POLICY_DEFAULT_MARGIN_MS */
  int64_t retry_max_ms;     /* 0: LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS */
  int allow_insecure;       /* 1: http:// token URLs (loopback tests) */
  int64_t token_timeout_ms; /* 0: LK_OAUTH_POLICY_TOKEN_TIMEOUT_MS */
} lk_local_refresh_config;

/* Starts the refresher over cfg's parts (borrowed: they must outlive it;
 * agent_id is copied) and registers latchkey_oauth_refreshes_total{result}
 * in cfg->metrics. lk_oauth_token_global_init must have run.
 * LK_INVALID_ARGUMENT when a part is missing; LK_INTERNAL when the
 * thread cannot start; the metrics' errors. */
lk_status lk_local_refresh_start(const lk_local_refresh_config *cfg,
                                 lk_local_refresh **out,
                                 lk_err *err) LK_MUST_CHECK;

/* Stops the thread (a token request in flight is cut short; an answer
 * already received is still committed) and answers every waiting
 * request, and any made later, UNAVAILABLE. Idempotent; NULL is a no-op.
 * Call before the catalog or node key go away. */
void lk_local_refresh_stop(lk_local_refresh *r);

/* Stops r and frees it; NULL is a no-op. */
void lk_local_refresh_destroy(lk_local_refresh *r);

/* Tells the refresher the catalog's credentials changed (an Admin write):
 * it scans again soon. Cheap; any thread; NULL is a no-op. */
void lk_local_refresh_changed(lk_local_refresh *r);

/* Asks for credential cred_id to be refreshed because its token at
 * generation was refused, and waits (see "On demand" above) until
 * deadline_ms (CLOCK_MONOTONIC; INT64_MAX: LK_LOCAL_REFRESH_MAX_WAIT_MS
 * from now). LK_OK sets *now_generation (may be NULL) to the generation
 * the catalog holds. Besides the outcomes above: LK_INVALID_ARGUMENT for
 * an invalid id, LK_NOT_FOUND for an unknown credential,
 * LK_RESOURCE_EXHAUSTED past LK_LOCAL_REFRESH_MAX_ASKED credentials
 * asked for at once. */
lk_status lk_local_refresh_request(lk_local_refresh *r, const char *cred_id,
                                   uint64_t generation, int64_t deadline_ms,
                                   uint64_t *now_generation,
                                   lk_err *err) LK_MUST_CHECK;

/* Returns a count that grows with every record the refresher stores. */
uint64_t lk_local_refresh_stored_count(lk_local_refresh *r);

/* Waits until the stored count differs from seen, the refresher stops or
 * deadline_ms (CLOCK_MONOTONIC) passes; returns the count then. */
uint64_t lk_local_refresh_wait_stored(lk_local_refresh *r, uint64_t seen,
                                      int64_t deadline_ms);

#endif
