/*
 * admin.h - the latchkey.v1.Admin service logic: validation, sealing,
 * masking, reference checks, over a catalog.
 *
 * Why: the standalone sidecar and the control plane serve the same Admin
 * API; the rules (how a secret is sealed, what a masked credential shows,
 * what may be deleted; what a valid tool is comes from lib/schema) live
 * here once, and the servers only move bytes: lk_admin_handle takes a method
 * path and a serialized request and returns a serialized response or an
 * lk_status whose message tells the owner what to do.
 *
 * Invariants:
 * - No response and no error message ever carries a secret field value.
 *   Credentials come back masked: secret fields show only `mask`
 *   ("••••" plus the last 4 characters when the value has at least 12,
 *   "••••" alone otherwise), never `value` or `sealed`.
 * - Secret values are sealed with lk_seal (associated data binds the
 *   credential id, field name and key id) before they reach the catalog;
 *   the request strings that held them are wiped before they are freed.
 * - Writes are read-modify-write under one mutex, and every operation that
 *   touches several records (a tool and its inline type, a budget and its
 *   bindings) commits them in one atomic batch.
 *
 * OAuth 2.0 (credential types of kind "oauth2", lib/oauth.h): a create
 * needs token_url (http(s), at most 2048 bytes), client_id, and for
 * grant_type authorization_code (the default) refresh_token; access_token,
 * expires_at (stored as decimal seconds; "0", refresh at once, when there
 * is no access token or no expiry for it), client_secret and scope may be
 * left out. The credential gets Credential.oauth (OAuthState) at
 * generation 1. An update that sets access_token or refresh_token (the
 * owner re-authorised) starts the next generation with a clean record
 * (last_success_at kept); other updates keep the record. Other kinds never
 * carry OAuthState. A type's kind cannot change while it has credentials.
 *
 * Audit: every change (each method that writes, RotateKey included) and
 * every AuditHash call writes one `audit.admin` line (lib/log.h
 * lk_log_fields) naming the action ("credential.create", "tool.register",
 * "bind", "keys.rotate", ...), the ids it
 * touched (only ids that are valid ids: nothing else from a request is
 * echoed) and the outcome ("ok" or the status name); a credential create
 * or update also carries `secret_hashes`, the audit hash (lib/audit.h) of
 * each secret value it stored, keyed by field name. The hashes come from
 * the service's auditor (lk_admin_set_auditor); AuditHash answers the
 * same hash for any value, so an owner can check a leaked value against
 * audit lines without any log holding it.
 *
 * Limits: request at most LK_ADMIN_MAX_REQUEST bytes; a budget at most
 * LK_ADMIN_MAX_AGENTS agents; a listing at most LK_ADMIN_MAX_LIST records.
 * Tools and credential types are held to lib/schema.h (its LK_SCHEMA_*
 * limits) and stored in its canonical form.
 */
#ifndef LK_ADMIN_H
#define LK_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "lib/audit.h"
#include "lib/catalog.h"
#include "lib/seal.h"
#include "lib/status.h"

#define LK_ADMIN_MAX_REQUEST (4u * 1024u * 1024u)
#define LK_ADMIN_MAX_AGENTS 1024
#define LK_ADMIN_MAX_LIST 250000

typedef struct lk_admin lk_admin;

/* Seals one secret field value for storage into nonce and a malloc'd
 * *ct, setting *key_id to the key used; associated data binds cred_id,
 * field and key id. */
typedef lk_status (*lk_admin_seal_fn)(
    void *ctx, const char *cred_id, const char *field, const unsigned char *pt,
    size_t len, uint32_t *key_id, unsigned char nonce[LK_SEAL_NONCE_BYTES],
    unsigned char **ct, size_t *ct_len, lk_err *err);

/* Re-seals a stored secret value of (cred_id, field) that an update keeps:
 * when it is sealed under a key other than the current one, sets *changed
 * and seals its plaintext anew (outputs as for lk_admin_seal_fn); else
 * leaves *changed 0 and writes nothing. */
typedef lk_status (*lk_admin_reseal_fn)(
    void *ctx, const char *cred_id, const char *field,
    const Latchkey__V1__SealedValue *stored, int *changed, uint32_t *key_id,
    unsigned char nonce[LK_SEAL_NONCE_BYTES], unsigned char **ct,
    size_t *ct_len, lk_err *err);

/* Who seals: the standalone sidecar's node key, or the control plane's
 * key ring (controlplane/main.c). reseal may be NULL (a key that never
 * rotates); with it, UpdateCredential moves the fields it keeps to the
 * current key too, so an update built from a slightly stale read never
 * writes back a value under a key that rotation is retiring. */
typedef struct {
  lk_admin_seal_fn seal;
  void *ctx;
  lk_admin_reseal_fn reseal;
} lk_admin_sealer;

/* Writes the audit hash (lib/audit.h) of the len bytes at value to
 * out_hex. */
typedef lk_status (*lk_admin_hash_fn)(void *ctx, const unsigned char *value,
                                      size_t len,
                                      char out_hex[LK_AUDIT_HEX_BYTES],
                                      lk_err *err);

/* Who hashes secret values for audit lines and AuditHash: the control
 * plane's key ring (its audit key), or the standalone sidecar's audit key
 * derived from its node key (lk_seal_key_audit_key). */
typedef struct {
  lk_admin_hash_fn hash;
  void *ctx;
} lk_admin_auditor;

/* Most keys one KeyStatus lists (ring keys, then ids found only in the
 * catalog, "missing"); the totals count every value regardless. */
#define LK_ADMIN_MAX_KEYS 512
/* Room for KeyStatus.last_error, NUL included. */
#define LK_ADMIN_KEY_ERROR_BYTES 512

/* One key of the key ring (or a key id only the catalog names). */
typedef struct {
  uint32_t id;
  const char *state;      /* static: "active", "retiring" or "missing" */
  uint64_t sealed_fields; /* secret field values sealed under it */
} lk_admin_key_info;

/* The answer of RotateKey and GetKeyStatus (latchkey.v1.KeyStatus). */
typedef struct {
  uint32_t active_key_id;
  size_t n_keys; /* ascending id */
  lk_admin_key_info keys[LK_ADMIN_MAX_KEYS];
  uint64_t total_fields;
  int resealing;
  char last_error[LK_ADMIN_KEY_ERROR_BYTES]; /* "" when none */
} lk_admin_key_status;

/* Fills *out with the key ring's state; with rotate set it first adds a
 * new active key and starts re-sealing every secret value under it. */
typedef lk_status (*lk_admin_keys_fn)(void *ctx, int rotate,
                                      lk_admin_key_status *out, lk_err *err);

/* Who answers RotateKey and GetKeyStatus: the control plane's re-sealer
 * (controlplane/main.c). Unset, as on a standalone sidecar, both answer
 * LK_FAILED_PRECONDITION. */
typedef struct {
  lk_admin_keys_fn fn;
  void *ctx;
} lk_admin_keys;

/* Creates an Admin service over cat, sealing with the node key; both are
 * borrowed and must outlive the service. */
lk_status lk_admin_new(lk_catalog *cat, const lk_seal_key *key, lk_admin **out,
                       lk_err *err) LK_MUST_CHECK;

/* Creates an Admin service over cat that seals through sealer (its ctx is
 * borrowed and must outlive the service). */
lk_status lk_admin_new_with_sealer(lk_catalog *cat, lk_admin_sealer sealer,
                                   lk_admin **out, lk_err *err) LK_MUST_CHECK;

/* Serves RotateKey and GetKeyStatus through keys (its ctx is borrowed and
 * must outlive the service); call before the service handles calls. */
void lk_admin_set_keys(lk_admin *a, lk_admin_keys keys);

/* Frees the service; NULL is a no-op. */
void lk_admin_destroy(lk_admin *a);

/* Gives the service its audit hasher (ctx borrowed; it must outlive the
 * service); call before serving. Without one, AuditHash answers
 * FAILED_PRECONDITION and audit.admin lines carry no secret_hashes. */
void lk_admin_set_auditor(lk_admin *a, lk_admin_auditor auditor);

/* Handles one Admin RPC: method is the full gRPC path
 * ("/latchkey.v1.Admin/RegisterTool"), req the serialized request; on
 * LK_OK *resp is the malloc'd serialized response (free()) of *resp_len
 * bytes. LK_NOT_FOUND for an unknown method, LK_RESOURCE_EXHAUSTED for a
 * request over LK_ADMIN_MAX_REQUEST, LK_INVALID_ARGUMENT when req does not
 * decode; otherwise the method's own status. Thread-safe. req is only
 * read: for CreateCredential and UpdateCredential it holds plaintext
 * secrets, so the caller wipes it (lk_wipe) before freeing it. */
lk_status lk_admin_handle(lk_admin *a, const char *method,
                          const unsigned char *req, size_t req_len,
                          unsigned char **resp, size_t *resp_len,
                          lk_err *err) LK_MUST_CHECK;

/* Returns the static list of every method path lk_admin_handle serves and
 * sets *n to its length (the server registers them). */
const char *const *lk_admin_methods(size_t *n);

#endif
