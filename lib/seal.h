/*
 * seal.h - sealing secret field values under the node key (DESIGN.md §6).
 *
 * Why: a stolen disk or backup must not yield a credential, and a sealed
 * value must not be movable to another record. Each secret field value is
 * sealed with XChaCha20-Poly1305 (random 24-byte nonce) under a symmetric
 * key derived from the node's X25519 secret key, with associated data
 *
 *     cred_id, NUL, field name, NUL, key_id as 4 bytes big-endian
 *
 * so a ciphertext opens only for the credential, field and key it was made
 * for. The key pair is X25519 so a control plane can later re-seal to the
 * node's public key.
 *
 * Node key file (--node-key), created 0600 on first start, is text:
 *
 *     latchkey-node-key v1
 *     key_id <decimal, 1..4294967295>
 *     public <standard base64 of the 32-byte X25519 public key>
 *     secret <standard base64 of the 32-byte X25519 secret key>
 *
 * exactly these four lines in this order, each ending in "\n" (the last
 * newline optional), at most 1 KiB. key_id is random at creation. The
 * public key must match the secret key. The sealing key is
 * crypto_kdf_derive_from_key(32 bytes, subkey id = key_id, ctx "lkseal01",
 * X25519 secret key).
 *
 * Invariants: key bytes live only in sodium_malloc memory; plaintext comes
 * out of lk_unseal only as an lk_secret; no error message carries a value.
 * An lk_seal_key is immutable after loading and safe to share across
 * threads.
 */
#ifndef LK_SEAL_H
#define LK_SEAL_H

#include <stddef.h>
#include <stdint.h>

#include "lib/secret.h"
#include "lib/status.h"

#define LK_SEAL_NONCE_BYTES 24
#define LK_SEAL_TAG_BYTES 16
#define LK_SEAL_PUBLIC_KEY_BYTES 32
/* Largest ciphertext accepted (so plaintext is at most this minus the tag). */
#define LK_SEAL_MAX_CT_BYTES (64u * 1024u)
#define LK_SEAL_MAX_PT_BYTES (LK_SEAL_MAX_CT_BYTES - LK_SEAL_TAG_BYTES)
/* Longest cred_id and field name bound into the associated data. */
#define LK_SEAL_MAX_NAME_BYTES 1024u

/* Opaque; key bytes in sodium_malloc memory. */
typedef struct lk_seal_key lk_seal_key;

/* Loads the node key at path, or creates it (temp file 0600, fsync, then
 * linked into place without replacing a file another process made first)
 * when it does not exist. LK_FAILED_PRECONDITION when the file is
 * group/other accessible (chmod 600) or cannot be read or written;
 * LK_INVALID_ARGUMENT naming the path when it is malformed. */
lk_status lk_seal_key_load_or_create(const char *path, lk_seal_key **out,
                                     lk_err *err) LK_MUST_CHECK;

/* Wipes and frees the key; NULL is a no-op. */
void lk_seal_key_destroy(lk_seal_key *k);

/* Returns the key id bound into every ciphertext sealed under k. */
uint32_t lk_seal_key_id(const lk_seal_key *k);

/* Copies the node's X25519 public key into pk. */
lk_status lk_seal_key_public(const lk_seal_key *k, unsigned char pk[32],
                             lk_err *err) LK_MUST_CHECK;

/* Seals pt_len bytes at pt for (cred_id, field) under k with a fresh random
 * nonce written to nonce; *ct is malloc'd (free()) and *ct_len is
 * pt_len + LK_SEAL_TAG_BYTES. LK_INVALID_ARGUMENT when pt_len exceeds
 * LK_SEAL_MAX_PT_BYTES or a name exceeds LK_SEAL_MAX_NAME_BYTES. */
lk_status lk_seal(const lk_seal_key *k, const char *cred_id, const char *field,
                  const unsigned char *pt, size_t pt_len,
                  unsigned char nonce[LK_SEAL_NONCE_BYTES], unsigned char **ct,
                  size_t *ct_len, lk_err *err) LK_MUST_CHECK;

/* Opens a ciphertext sealed for (cred_id, field) under key key_id straight
 * into guarded memory (*out, free with lk_secret_free). LK_FAILED_PRECONDITION
 * ("... re-enter the credential") when key_id is not k's, or the nonce,
 * ciphertext, names or key do not match; LK_INVALID_ARGUMENT when ct_len
 * exceeds LK_SEAL_MAX_CT_BYTES. */
lk_status lk_unseal(const lk_seal_key *k, uint32_t key_id, const char *cred_id,
                    const char *field, const unsigned char *nonce,
                    size_t nonce_len, const unsigned char *ct, size_t ct_len,
                    lk_secret **out, lk_err *err) LK_MUST_CHECK;

#endif
