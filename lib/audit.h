/*
 * audit.h - the keyed hash that audit lines carry instead of secret
 * values, and the audit key a sidecar hashes with (DESIGN.md §6-7).
 *
 * Why: an operator who learns that a key leaked must be able to ask "was
 * this value used, and where?" without any log holding the value. Audit
 * lines therefore carry, for each secret value, a keyed hash of it:
 *
 *     hash = BLAKE2b-256 keyed with the 32-byte audit key, of the value's
 *            bytes, written as 64 lowercase hex digits
 *
 * (crypto_generichash with a key). Keyed, so someone holding the logs but
 * not the key cannot test guesses against them; the operator asks a
 * server that holds the key (Admin/AuditHash, `latchkeyctl audit-hash`).
 *
 * Where the key comes from: a control plane keeps one audit key in its key
 * ring (lib/keyring.h), independent of the sealing keys so hashes stay
 * comparable across key rotations, and sends it to each replica sealed to
 * the replica's node key on the first batch of every Sync stream
 * (sidecar/replica.h). A standalone sidecar derives its own from its node
 * key (lk_seal_key_audit_key in lib/seal.h). This module holds the key a
 * sidecar uses (lk_audit_key), which a replica may set later than start.
 *
 * Invariants: key bytes live only in sodium_malloc memory and are wiped
 * when replaced or freed; only the hash ever leaves this module.
 */
#ifndef LK_AUDIT_H
#define LK_AUDIT_H

#include <stddef.h>

#include "lib/status.h"

/* What the audit key is sealed for when a control plane sends it to a
 * node (lk_seal_for_node's cred_id and field): no credential id contains
 * '/', so no credential's sealed value can pass for it. */
#define LK_AUDIT_SEAL_ID "meta/audit_key"
#define LK_AUDIT_SEAL_FIELD "audit_key"

/* Size of an audit key. */
#define LK_AUDIT_KEY_BYTES 32
/* Size of a hash as text: 64 hex digits and a NUL. */
#define LK_AUDIT_HEX_BYTES 65

/* Writes the audit hash of the len bytes at value under key (see above) to
 * out_hex; value may be NULL when len is 0. */
void lk_audit_hash(const unsigned char key[LK_AUDIT_KEY_BYTES],
                   const void *value, size_t len,
                   char out_hex[LK_AUDIT_HEX_BYTES]);

/* A replaceable audit key, safe to share across threads. */
typedef struct lk_audit_key lk_audit_key;

/* Creates a holder with no key yet. LK_RESOURCE_EXHAUSTED when memory or
 * guarded memory runs out. */
lk_status lk_audit_key_new(lk_audit_key **out, lk_err *err) LK_MUST_CHECK;

/* Wipes and frees the holder; NULL is a no-op. */
void lk_audit_key_destroy(lk_audit_key *k);

/* Makes the len bytes at key the audit key (copied; the previous key is
 * wiped). LK_INVALID_ARGUMENT when len is not LK_AUDIT_KEY_BYTES. */
lk_status lk_audit_key_set(lk_audit_key *k, const unsigned char *key,
                           size_t len, lk_err *err) LK_MUST_CHECK;

/* Returns 1 when a key has been set. */
int lk_audit_key_ready(lk_audit_key *k);

/* Writes the audit hash of the len bytes at value to out_hex.
 * LK_FAILED_PRECONDITION ("no audit key yet ...") before the first
 * lk_audit_key_set. */
lk_status lk_audit_key_hash(lk_audit_key *k, const void *value, size_t len,
                            char out_hex[LK_AUDIT_HEX_BYTES],
                            lk_err *err) LK_MUST_CHECK;

#endif
