/*
 * oauth_refresh.h - the control plane's OAuth 2.0 refresher: every oauth2
 * credential's access token is refreshed before it expires, exactly once
 * per expiry across all control planes, and the new tokens reach sidecars
 * through the ordinary Sync path (DESIGN.md §5, issue 8).
 *
 * Why here: a sidecar that refreshed on its own would race every other
 * sidecar on a rotating refresh token (the provider accepts it once), and
 * would keep injecting a stale token while the provider is down. The
 * control plane holds the sealed tokens in etcd already; refreshing there
 * means one request per expiry, one commit, and a token every replica
 * receives as an ordinary credential change. (A standalone sidecar is its
 * own control plane and the only holder of its credentials: it refreshes
 * them itself, sidecar/local_refresh.)
 *
 * When a credential is due, what a provider's answer or failure becomes
 * (new tokens, OAuthState, backoff, reauthorize) and the audit line are
 * the shared policy of lib/oauth_policy.h, which a standalone sidecar's
 * refresher (sidecar/local_refresh) applies too; this module adds what
 * is particular to a fleet: etcd claims, fenced commits, the key ring.
 *
 * How one refresh goes, on a worker thread of this module:
 *  1. read the credential from etcd (not the mirror) with its mod
 *     revision and check it is still due;
 *  2. claim it: the key LK_OAUTH_REFRESH_CLAIM_PREFIX<id> (beside the
 *     catalog prefix, lib/etcd's LK_ETCD_OUTSIDE, so it is never mirrored
 *     or replicated) holding "<claim deadline, unix ms> <this control
 *     plane's id>", created in a Txn that also compares the credential's
 *     mod revision. A live claim of another control plane means it is
 *     already being refreshed: wait for that. A claim past its deadline
 *     (its holder crashed) is taken over by a Txn comparing the claim's
 *     own mod revision;
 *  3. unseal the refresh token and client secret (lk_secret memory) and
 *     ask the token endpoint (lib/oauth_token) with a deadline
 *     (token_timeout_ms) well inside the claim's;
 *  4. commit in ONE Txn, guarded by the credential's mod revision, the
 *     claim's mod revision and the key-ring fence, the record
 *     lk_oauth_policy_record_new builds (on success the new tokens sealed
 *     under the active key, expires_at, the next generation; on failure
 *     only the OAuthState, with the backoff or reauthorize), every other
 *     sealed value moved to the active key too. The claim is deleted in the
 *     same Txn. When the Txn fails: a credential whose OAuthState
 *     generation is unchanged (an owner's update that set no token, such
 *     as a label; the re-sealer's) is read again and the commit rebuilt
 *     on it, keeping that change; a credential the owner re-authorised
 *     (generation changed) or deleted wins, and the provider's answer is
 *     dropped; a claim taken over means this answer is dropped too. One
 *     `audit.oauth.refresh` log line per provider request.
 *
 * Exactly once: a refresh token is sent only under a claim this process
 * created, the claim names the credential's mod revision it was taken
 * at, and a commit lands only while that claim is still the one in etcd,
 * so no two control planes ever send the same refresh token (given wall
 * clocks within claim_ttl_ms - token_timeout_ms of each other). A crash
 * between the provider's answer and the commit loses that answer; with a
 * rotating provider the old refresh token is then spent and the next
 * attempt is refused (invalid_grant: re-authorise). docs/SECURITY.md.
 *
 * While the provider fails (not a refused grant), attempts continue with
 * the backoff, past expiry too, so the credential recovers by itself when
 * the provider is back. A refused grant sets reauthorize and nothing is
 * attempted until the owner updates the credential (which resets
 * OAuthState, lib/admin).
 *
 * On demand (the Sync/Refresh RPC, a vendor answered 401):
 * lk_oauth_refresh_request_async answers at once when the credential's
 * generation is already past the one asked about, or when it cannot be
 * refreshed now (re-authorisation pending: FAILED_PRECONDITION; in
 * backoff: UNAVAILABLE); otherwise it makes the credential due now (once
 * per credential in flight in this process: concurrent askers share one
 * attempt) and answers when the mirror shows a generation past the one
 * asked (OK), when the attempt fails (FAILED_PRECONDITION for a refused
 * grant, UNAVAILABLE otherwise), or at the deadline (DEADLINE_EXCEEDED).
 *
 * Threads: a scheduler thread scans the mirror on changes and timers,
 * queues due credentials and answers waiters; LK_OAUTH_REFRESH_WORKERS
 * worker threads run attempts. Everything shared is under one mutex; the
 * mirror, etcd and the key ring are thread-safe. Callbacks run on those
 * threads (or the caller's), never under the mutex.
 */
#ifndef LK_OAUTH_REFRESH_H
#define LK_OAUTH_REFRESH_H

#include <stdint.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/etcd.h"
#include "lib/keyring.h"
#include "lib/metrics.h"
#include "lib/oauth_policy.h"
#include "lib/status.h"

/* Defaults, the backoff and the token request's timeout are
 * lib/oauth_policy.h's LK_OAUTH_POLICY_*. */
/* A claim's lifetime: the token request, two etcd calls and a margin. */
#define LK_OAUTH_REFRESH_CLAIM_TTL_MS \
  (LK_OAUTH_POLICY_TOKEN_TIMEOUT_MS + 2 * LK_ETCD_DEADLINE_MS + 5000)
/* The mirror is scanned at least this often. */
#define LK_OAUTH_REFRESH_RESCAN_MS 10000
/* Credentials queued for attempts at most; more wait for the next scan. */
#define LK_OAUTH_REFRESH_MAX_QUEUE 1024
/* Attempts in flight at once (each on its own thread). */
#define LK_OAUTH_REFRESH_WORKERS 2
/* On-demand requests waiting at once at most. */
#define LK_OAUTH_REFRESH_MAX_WAITERS 4096
/* Longest an on-demand request waits when its caller set no deadline. */
#define LK_OAUTH_REFRESH_MAX_WAIT_MS 60000
/* The relative etcd name of a credential's claim is this + its id. */
#define LK_OAUTH_REFRESH_CLAIM_PREFIX LK_ETCD_OUTSIDE "oauth-claim/"

typedef struct lk_oauth_refresh lk_oauth_refresh;

typedef struct {
  lk_etcd *etcd;        /* the source of truth: Get and Txn */
  lk_catalog *cat;      /* the mirror: what is scanned for due credentials */
  lk_keyring *kr;       /* unseals and seals the tokens */
  lk_metrics *metrics;  /* NULL: no metrics */
  int64_t margin_ms;    /* 0: LK_OAUTH_POLICY_DEFAULT_MARGIN_MS */
  int64_t retry_max_ms; /* 0: LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS */
  int allow_insecure;   /* 1: http:// token URLs (loopback tests) */
  int64_t token_timeout_ms; /* 0: LK_OAUTH_POLICY_TOKEN_TIMEOUT_MS */
  int64_t claim_ttl_ms;     /* 0: LK_OAUTH_REFRESH_CLAIM_TTL_MS; must
                               exceed token_timeout_ms */
  const char *cp_id; /* this control plane in claims; NULL: host-pid-random */
} lk_oauth_refresh_config;

/* Called once per on-demand request with its outcome: LK_OK and the
 * credential's generation now, or the failure in err. */
typedef void (*lk_oauth_refresh_done_fn)(void *ctx, lk_status st,
                                         uint64_t generation,
                                         const lk_err *err);
/* Polled while a request waits: nonzero ends it (the caller went away). */
typedef int (*lk_oauth_refresh_cancelled_fn)(void *ctx);

/* Starts the refresher over cfg's parts (borrowed: they must outlive it)
 * and registers its metrics (latchkey_oauth_refreshes_total{result},
 * latchkey_oauth_refresh_requests_total) in cfg->metrics.
 * lk_oauth_token_global_init must have run. LK_INVALID_ARGUMENT when a
 * part is missing or the claim TTL does not exceed the token timeout;
 * LK_INTERNAL when a thread cannot start; the metrics' errors. */
lk_status lk_oauth_refresh_start(const lk_oauth_refresh_config *cfg,
                                 lk_oauth_refresh **out,
                                 lk_err *err) LK_MUST_CHECK;

/* Stops the threads (a token request in flight is cut short; a finished
 * answer is still committed) and answers every waiting request, and any
 * made later, UNAVAILABLE; idempotent, NULL is a no-op. Call before etcd,
 * the catalog or the key ring go away. lk_oauth_refresh_changed stays
 * safe to call until lk_oauth_refresh_destroy, so the catalog's watch
 * may still report changes while it is being destroyed. */
void lk_oauth_refresh_stop(lk_oauth_refresh *r);

/* Stops r (lk_oauth_refresh_stop) and frees it; NULL is a no-op. */
void lk_oauth_refresh_destroy(lk_oauth_refresh *r);

/* Tells the refresher the mirror changed (the etcd catalog's on_change):
 * it rescans and answers waiters. Cheap; any thread. NULL is a no-op. */
void lk_oauth_refresh_changed(lk_oauth_refresh *r);

/* Asks for credential cred_id to be refreshed because its token at
 * generation was refused (see "On demand" above); done is called exactly
 * once, possibly before this returns. deadline_ms is CLOCK_MONOTONIC ms
 * (INT64_MAX: LK_OAUTH_REFRESH_MAX_WAIT_MS from now); cancelled may be
 * NULL. Besides the outcomes above: LK_INVALID_ARGUMENT for an invalid
 * id, LK_NOT_FOUND for an unknown credential, LK_FAILED_PRECONDITION for
 * one that is not oauth2, LK_RESOURCE_EXHAUSTED past
 * LK_OAUTH_REFRESH_MAX_WAITERS. */
void lk_oauth_refresh_request_async(lk_oauth_refresh *r, const char *cred_id,
                                    uint64_t generation, int64_t deadline_ms,
                                    lk_oauth_refresh_cancelled_fn cancelled,
                                    lk_oauth_refresh_done_fn done, void *ctx);

/* lk_oauth_refresh_request_async, waiting for the outcome: returns its
 * status, with the generation in *now_generation (may be NULL). */
lk_status lk_oauth_refresh_request(lk_oauth_refresh *r, const char *cred_id,
                                   uint64_t generation, int64_t deadline_ms,
                                   uint64_t *now_generation,
                                   lk_err *err) LK_MUST_CHECK;

/* Returns this control plane's id as written in its claims. */
const char *lk_oauth_refresh_id(const lk_oauth_refresh *r);

#endif
