/*
 * oauth_policy.h - the refresh policy of oauth2 credentials, shared by the
 * two refreshers: the control plane's (controlplane/oauth_refresh, over
 * etcd and the key ring) and a standalone sidecar's (sidecar/local_refresh,
 * over its own RocksDB and node key).
 *
 * Why: both must decide the same way when a token is due, how long to
 * back off, which on-demand requests to refuse, what record a provider's
 * answer (or failure) becomes, and what the audit line says. Written
 * twice, they would drift; here they are pure functions over the
 * credential record, and each refresher keeps only its own storage,
 * sealing and concurrency.
 *
 * When a credential is due (lk_oauth_policy_due_at): its OAuthState
 * says no re-authorisation is pending, now >= next_attempt_at (the
 * backoff), and now >= expires_at - min(margin, lifetime / 2), where
 * lifetime = expires_at - last_success_at when that is known; an unknown
 * expires_at ("" or "0") is due at once. Successful refreshes are at
 * least LK_OAUTH_POLICY_MIN_INTERVAL_MS apart, so a provider answering
 * expires_in 0 is not asked in a loop.
 *
 * What an attempt becomes (lk_oauth_policy_next_state,
 * lk_oauth_policy_record_new), from the credential as read before the
 * request and the request's outcome:
 *   success: the new access token sealed, the new refresh token when the
 *     provider rotated it (else the old one stays), expires_at = sent
 *     time + expires_in (LK_OAUTH_POLICY_DEFAULT_LIFETIME_S when the
 *     answer has none: RFC 6749 §5.1 makes it optional), OAuthState
 *     {generation + 1, last_refresh_at = sent, "ok", failures 0,
 *     next_attempt_at 0, reauthorize false, last_success_at = sent},
 *     version + 1, updated_at = sent;
 *   failure: only the OAuthState changes: last_refresh_at = sent,
 *     failures + 1, last_refresh_result = the reason (at most
 *     LK_OAUTH_POLICY_MAX_RESULT_BYTES), and either reauthorize (the
 *     provider refused the grant: LK_FAILED_PRECONDITION; nothing is
 *     attempted until the owner updates the credential) or
 *     next_attempt_at = sent + the backoff (any other failure: attempts
 *     go on, past expiry too, so the credential recovers by itself).
 *   The backoff after the n-th failure in a row is
 *   LK_OAUTH_POLICY_FIRST_BACKOFF_MS doubled n - 1 times, at most
 *   retry_max_ms.
 *
 * The audit line (lk_oauth_policy_audit): one `audit.oauth.refresh` per
 * provider request, with credential_id, result (ok, failed, reauthorize,
 * discarded), who refreshed, http_status, the generation stored after
 * it, the audit hashes of the new tokens (secret_hashes), rotated and
 * expires_at on a stored success, failures and next_attempt_at on a
 * failure, and the reason. Never a value.
 *
 * One attempt (lk_oauth_policy_should_attempt, lk_oauth_policy_attempt_run,
 * lk_oauth_policy_attempt_report, lk_oauth_policy_attempt_error): the
 * same steps in both refreshers, over their own unsealer, stop hook,
 * metric and audit key; each keeps its storage (the control plane's etcd
 * claim and Txn, the sidecar's lk_catalog_commit_if) and its log lines.
 *
 * Secrets: tokens pass through only as lk_secrets and straight into the
 * sealer; a record holds ciphertext only.
 */
#ifndef LK_OAUTH_POLICY_H
#define LK_OAUTH_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/audit.h"
#include "lib/metrics.h"
#include "lib/oauth_token.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/status.h"

/* --oauth-refresh-margin and --oauth-retry-max defaults. */
#define LK_OAUTH_POLICY_DEFAULT_MARGIN_MS (300 * 1000)
#define LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS (300 * 1000)
/* The first pause after a failed attempt; it doubles per failure. */
#define LK_OAUTH_POLICY_FIRST_BACKOFF_MS 1000
/* How long one token request may take. */
#define LK_OAUTH_POLICY_TOKEN_TIMEOUT_MS 15000
/* Lifetime assumed when the provider's answer has no expires_in. */
#define LK_OAUTH_POLICY_DEFAULT_LIFETIME_S 3600
/* Successful refreshes of one credential are at least this far apart. */
#define LK_OAUTH_POLICY_MIN_INTERVAL_MS 1000
/* last_refresh_result is cut to this many bytes. */
#define LK_OAUTH_POLICY_MAX_RESULT_BYTES 400

/* Sets each of *margin_ms, *retry_max_ms and *token_timeout_ms that is
 * not positive to its default: LK_OAUTH_POLICY_DEFAULT_MARGIN_MS,
 * LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS, LK_OAUTH_POLICY_TOKEN_TIMEOUT_MS. */
void lk_oauth_policy_defaults(int64_t *margin_ms, int64_t *retry_max_ms,
                              int64_t *token_timeout_ms);

/* Returns when credential c is due (unix ms) under the rule above with
 * margin_ms, or INT64_MAX when it never is by itself (not oauth2, or
 * re-authorisation pending). */
int64_t lk_oauth_policy_due_at(const Latchkey__V1__Credential *c,
                               int64_t margin_ms);

/* Returns the pause after the failures-th consecutive failure (>= 1):
 * LK_OAUTH_POLICY_FIRST_BACKOFF_MS doubled failures - 1 times, at most
 * retry_max_ms. */
int64_t lk_oauth_policy_backoff_ms(uint32_t failures, int64_t retry_max_ms);

/* Decides an on-demand request to refresh credential c because its token
 * at generation was refused, at now_wall_ms: LK_OK with *already 1 when c
 * is past that generation (nothing to do), with *already 0 when an
 * attempt should be made now; LK_FAILED_PRECONDITION when c is not oauth2
 * or waits for its owner to re-authorise; LK_UNAVAILABLE while c backs
 * off after failures (the message says when the next attempt is). */
lk_status lk_oauth_policy_check_request(const Latchkey__V1__Credential *c,
                                        uint64_t generation,
                                        int64_t now_wall_ms, int *already,
                                        lk_err *err) LK_MUST_CHECK;

/* Fills *req (zeroed first) to refresh credential c: its token_url,
 * grant_type, client_id and scope (borrowed from c), the unsealed refresh
 * token and client secret (borrowed; either may be NULL), allow_insecure
 * and deadline_ms; the caller may add cancelled. */
void lk_oauth_policy_token_request(const Latchkey__V1__Credential *c,
                                   const lk_secret *refresh_token,
                                   const lk_secret *client_secret,
                                   int allow_insecure, int64_t deadline_ms,
                                   lk_oauth_token_request *req);

/* What one token request came to. */
typedef struct {
  /* LK_OK; LK_FAILED_PRECONDITION: the provider refused the grant (the
   * owner must re-authorise); anything else: retry with backoff. */
  lk_status status;
  const lk_oauth_token_result *res; /* LK_OK: the answer (borrowed) */
  const char *reason;               /* otherwise: why; no value in it */
  int64_t sent_at_ms;               /* wall clock when it was sent */
  int64_t retry_max_ms;             /* the backoff's cap */
} lk_oauth_policy_outcome;

/* Fills *state with the OAuthState old (may be NULL) becomes after
 * outcome o (see above). Its strings are borrowed from old, from static
 * text, or from reason (where the failure's reason is copied, cut). */
void lk_oauth_policy_next_state(
    const Latchkey__V1__OAuthState *old, const lk_oauth_policy_outcome *o,
    Latchkey__V1__OAuthState *state,
    char reason[LK_OAUTH_POLICY_MAX_RESULT_BYTES + 1]);

/* Returns the expires_at (unix seconds) a successful outcome o stores. */
int64_t lk_oauth_policy_expires_at_s(const lk_oauth_policy_outcome *o);

/* Seals len bytes at pt as field name of credential cred_id: sets
 * *key_id, writes the nonce, *ct is malloc'd (free()) of *ct_len bytes. */
typedef lk_status (*lk_oauth_policy_seal_fn)(
    void *ctx, const char *cred_id, const char *field, const unsigned char *pt,
    size_t len, uint32_t *key_id, unsigned char nonce[LK_SEAL_NONCE_BYTES],
    unsigned char **ct, size_t *ct_len, lk_err *err);

/* Looks at sealed value f of credential cred_id that a record keeps: sets
 * *changed and writes a new sealed value (outputs as lk_oauth_policy_seal_fn)
 * when it must be re-sealed, else leaves *changed 0. */
typedef lk_status (*lk_oauth_policy_keep_fn)(
    void *ctx, const char *cred_id, const Latchkey__V1__FieldValue *f,
    int *changed, uint32_t *key_id, unsigned char nonce[LK_SEAL_NONCE_BYTES],
    unsigned char **ct, size_t *ct_len, lk_err *err);

/* How a refresher seals: the control plane under its key ring (keep
 * moves values off retiring keys), a standalone sidecar under its node key
 * (keep NULL: kept values stay as they are). */
typedef struct {
  lk_oauth_policy_seal_fn seal;
  lk_oauth_policy_keep_fn keep;
  void *ctx;
} lk_oauth_policy_sealer;

/* The record an attempt stores: a Credential built over the one read. */
typedef struct lk_oauth_policy_record lk_oauth_policy_record;

/* Builds the record credential c becomes after outcome o (see above),
 * sealing the new tokens through sealer. c must outlive the record (it
 * borrows c's strings and kept values). LK_RESOURCE_EXHAUSTED when memory
 * runs out; the sealer's errors. */
lk_status lk_oauth_policy_record_new(const Latchkey__V1__Credential *c,
                                     const lk_oauth_policy_outcome *o,
                                     const lk_oauth_policy_sealer *sealer,
                                     lk_oauth_policy_record **out,
                                     lk_err *err) LK_MUST_CHECK;

/* Returns the record's credential (owned by the record). */
const Latchkey__V1__Credential *lk_oauth_policy_record_credential(
    const lk_oauth_policy_record *r);

/* Frees the record and the ciphertexts it made; NULL is a no-op. */
void lk_oauth_policy_record_destroy(lk_oauth_policy_record *r);

/* Returns the result label of an attempt (metrics and audit): "discarded"
 * when its outcome was not stored because the owner changed or deleted
 * the credential meanwhile (discarded nonzero), else "ok", "reauthorize"
 * (LK_FAILED_PRECONDITION) or "failed". */
const char *lk_oauth_policy_result_label(lk_status status, int discarded);

/* Writes the audit hash of the len bytes at value to out_hex. */
typedef lk_status (*lk_oauth_policy_hash_fn)(void *ctx, const void *value,
                                             size_t len,
                                             char out_hex[LK_AUDIT_HEX_BYTES],
                                             lk_err *err);

/* One audit.oauth.refresh line (borrowed strings). */
typedef struct {
  const char *cred_id;
  const char *label;    /* lk_oauth_policy_result_label */
  const char *by_key;   /* "control_plane" or "sidecar" */
  const char *by_value; /* its id */
  long http_status;     /* 0: no HTTP answer */
  uint64_t generation;  /* stored after the attempt */
  /* A success that was stored: its tokens are hashed, rotated and
   * expires_at_s written. NULL otherwise. */
  const lk_oauth_token_result *stored;
  int64_t expires_at_s;
  /* A failure: its failures and next_attempt_at are written. */
  const Latchkey__V1__OAuthState *failed;
  const char *reason; /* NULL or "": none */
} lk_oauth_policy_audit_line;

/* Logs line as `audit.oauth.refresh` (lib/log.h lk_log_fields), hashing
 * the stored tokens with hash (ctx); a hash that fails is left out and
 * the line says secret_hashes_unavailable. */
void lk_oauth_policy_audit(const lk_oauth_policy_audit_line *line,
                           lk_oauth_policy_hash_fn hash, void *ctx);

/* Decides whether to attempt credential c at now_wall_ms: on demand
 * (forced) for a token refused at generation asked, under
 * lk_oauth_policy_check_request; by schedule when it is due under
 * margin_ms. LK_OK with *go 1 to attempt, *go 0 when there is nothing to
 * do (refreshed meanwhile, or not due); LK_FAILED_PRECONDITION when c is
 * not oauth2; otherwise lk_oauth_policy_check_request's refusals. */
lk_status lk_oauth_policy_should_attempt(const Latchkey__V1__Credential *c,
                                         int forced, uint64_t asked,
                                         int64_t now_wall_ms, int64_t margin_ms,
                                         int *go, lk_err *err) LK_MUST_CHECK;

/* Unseals sealed secret value f of credential cred_id into *out
 * (sodium_malloc'd, the caller frees it). */
typedef lk_status (*lk_oauth_policy_unseal_fn)(
    void *ctx, const char *cred_id, const Latchkey__V1__FieldValue *f,
    lk_secret **out, lk_err *err);

/* How a refresher makes a token request: its unsealer, its stop hook
 * (lk_oauth_token_request's cancelled) and its settings. */
typedef struct {
  lk_oauth_policy_unseal_fn unseal;
  void *unseal_ctx;
  int (*cancelled)(void *ctx);
  void *cancel_ctx;
  int allow_insecure;
  int64_t timeout_ms;   /* one token request, at most */
  int64_t retry_max_ms; /* the backoff's cap */
} lk_oauth_policy_requester;

/* One token request of a refresher and what it came to. */
typedef struct {
  /* The refresher stopped during a request that failed: record nothing
   * (err says what the request came to; out and state are not set). */
  int cut_short;
  long http_status;               /* 0: no HTTP answer */
  lk_err err;                     /* a failure's reason; no value in it */
  lk_oauth_token_result res;      /* the provider's answer (secrets) */
  lk_oauth_policy_outcome out;    /* borrows res and err.msg */
  Latchkey__V1__OAuthState state; /* the OAuthState after out */
  char why[LK_OAUTH_POLICY_MAX_RESULT_BYTES + 1]; /* state's reason */
} lk_oauth_policy_attempt;

/* Makes one token request for credential c through rq into *a (filled
 * anew; a must not move afterwards): unseals its refresh token and client
 * secret (a value that cannot be unsealed fails as LK_UNAVAILABLE "cannot
 * unseal <field>: <why>"), asks the provider, wipes both at last use, and
 * unless cut short builds a->out (every failure but LK_FAILED_PRECONDITION
 * becomes LK_UNAVAILABLE) and a->state. The caller wipes a's tokens with
 * lk_oauth_policy_attempt_report (a cut-short attempt holds none). */
void lk_oauth_policy_attempt_run(const Latchkey__V1__Credential *c,
                                 const lk_oauth_policy_requester *rq,
                                 lk_oauth_policy_attempt *a);

/* How a refresher reports its attempts: who it is in the audit line, the
 * counter of refreshes by result label, and its audit hash. */
typedef struct {
  const char *by_key;   /* "control_plane" or "sidecar" */
  const char *by_value; /* its id */
  lk_metric *refreshes; /* one label: the result */
  lk_oauth_policy_hash_fn hash;
  void *hash_ctx;
} lk_oauth_policy_reporter;

/* Counts attempt a on credential c (not cut short) in rp's refreshes and
 * logs its audit line: generation is the one stored after it, stored
 * nonzero when its outcome landed, dropped (or NULL) why the outcome was
 * discarded for the owner's change; then wipes a's tokens. */
void lk_oauth_policy_attempt_report(const Latchkey__V1__Credential *c,
                                    lk_oauth_policy_attempt *a,
                                    const lk_oauth_policy_reporter *rp,
                                    uint64_t generation, int stored,
                                    const char *dropped);

/* Returns the status attempt a (stored, not cut short) answers its
 * on-demand requests with, filling *err on a failure: the owner must
 * re-authorise (LK_FAILED_PRECONDITION), or who ("the control plane",
 * "latchkeyd") retries with backoff (LK_UNAVAILABLE). */
lk_status lk_oauth_policy_attempt_error(const Latchkey__V1__Credential *c,
                                        const lk_oauth_policy_attempt *a,
                                        const char *who, lk_err *err);

#endif
