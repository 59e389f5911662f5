/*
 * seal.h - sealing secret field values under the node key, and to a node
 * key from the control plane (DESIGN.md §6).
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
 * Sealing to a node (lk_seal_for_node, lk_unseal_from_node). The control
 * plane never holds a node's secret key, so on the way to a sidecar it
 * seals each secret value to that node's X25519 public key (node_pk), and
 * the replica stores only that. Per value:
 *
 *     eph_sk, eph_pk = a fresh X25519 key pair (crypto_box_keypair)
 *     q     = X25519(eph_sk, node_pk)        (crypto_scalarmult; refused
 *                                             when it is all zeros)
 *     key   = BLAKE2b-256, unkeyed, of
 *             "lknode01" || q || eph_pk || node_pk
 *     ad    = cred_id, NUL, field name, NUL, "node", NUL, node_pk
 *     ct    = XChaCha20-Poly1305(key, random 24-byte nonce, ad, value)
 *
 * and (eph_pk, nonce, ct) is what travels and is stored (SealedValue's
 * ephemeral_public_key, nonce, ciphertext; key_id is not used). The node
 * computes q = X25519(node_sk, eph_pk) and the same key. Because eph_pk
 * and node_pk are hashed into the key and node_pk is in the associated
 * data, a value sealed for one node, credential or field opens nowhere
 * else; because every value has its own ephemeral key, two seals of one
 * value share nothing. The ephemeral secret key, q and the derived key
 * live in sodium_malloc memory and are wiped right after their last use.
 *
 * Audit key of a standalone sidecar (lk_seal_key_audit_key): a sidecar
 * without a control plane has no key ring to take the audit key from
 * (lib/audit.h), so it derives one from its node key:
 * crypto_kdf_derive_from_key(32 bytes, subkey id 1, ctx "lkauditn", X25519
 * secret key). Its audit hashes are stable for as long as the node key
 * file is, and differ from any other node's or control plane's.
 *
 * Invariants: key bytes live only in sodium_malloc memory; plaintext comes
 * out of lk_unseal and lk_unseal_from_node only as an lk_secret; no error
 * message carries a value. An lk_seal_key is immutable after loading and
 * safe to share across threads.
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
/* Longest associated data lk_seal_ad writes. */
#define LK_SEAL_AD_MAX_BYTES (2 * (LK_SEAL_MAX_NAME_BYTES + 1) + 4)

/* Opaque; key bytes in sodium_malloc memory. */
typedef struct lk_seal_key lk_seal_key;

/* Loads the node key at path, or creates it (temp file 0600, fsync, then
 * linked into place without replacing a file another process made first)
 * when it does not exist. LK_FAILED_PRECONDITION when the file is
 * group/other accessible (chmod 600) or cannot be read or written;
 * LK_INVALID_ARGUMENT naming the path when it is malformed. */
lk_status lk_seal_key_load_or_create(const char *path, lk_seal_key **out,
                                     lk_err *err) LK_MUST_CHECK;

/* Loads the node key at path without ever creating one. LK_NOT_FOUND when
 * path does not exist; otherwise as lk_seal_key_load_or_create. */
lk_status lk_seal_key_load(const char *path, lk_seal_key **out,
                           lk_err *err) LK_MUST_CHECK;

/* Wipes and frees the key; NULL is a no-op. */
void lk_seal_key_destroy(lk_seal_key *k);

/* Returns the key id bound into every ciphertext sealed under k. */
uint32_t lk_seal_key_id(const lk_seal_key *k);

/* Copies the node's X25519 public key into pk. */
lk_status lk_seal_key_public(const lk_seal_key *k, unsigned char pk[32],
                             lk_err *err) LK_MUST_CHECK;

/* Derives the standalone sidecar's 32-byte audit key from k (see above)
 * into new guarded memory (*out, free with lk_secret_free).
 * LK_RESOURCE_EXHAUSTED when guarded memory runs out. */
lk_status lk_seal_key_audit_key(const lk_seal_key *k, lk_secret **out,
                                lk_err *err) LK_MUST_CHECK;

/* Characters of a public key fingerprint, without the NUL. */
#define LK_SEAL_FINGERPRINT_CHARS 32

/* Writes the fingerprint of an X25519 public key, lowercase hex of its
 * 16-byte unkeyed BLAKE2b digest, NUL-terminated, into out: what logs name
 * a node key by (a public key, never a secret one). */
void lk_seal_fingerprint(const unsigned char pk[32],
                         char out[LK_SEAL_FINGERPRINT_CHARS + 1]);

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

/* Writes the associated data every key-id-bound seal uses (lk_seal here,
 * lk_keyring_seal in lib/keyring), cred_id NUL field NUL key_id as 4 bytes
 * big-endian, into ad and its length into *ad_len. LK_INVALID_ARGUMENT
 * when a name exceeds LK_SEAL_MAX_NAME_BYTES. */
lk_status lk_seal_ad(const char *cred_id, const char *field, uint32_t key_id,
                     unsigned char ad[LK_SEAL_AD_MAX_BYTES], size_t *ad_len,
                     lk_err *err) LK_MUST_CHECK;

/* Seals pt_len bytes at pt for (cred_id, field) to the node whose X25519
 * public key is node_pk, as described above: writes the fresh ephemeral
 * public key to eph_pk and the random nonce to nonce; *ct is malloc'd
 * (free()) and *ct_len is pt_len + LK_SEAL_TAG_BYTES. Outputs are set only
 * on LK_OK. LK_INVALID_ARGUMENT when pt_len exceeds LK_SEAL_MAX_PT_BYTES, a
 * name exceeds LK_SEAL_MAX_NAME_BYTES, or node_pk is not a usable X25519
 * public key (small order). */
lk_status lk_seal_for_node(const unsigned char node_pk[32], const char *cred_id,
                           const char *field, const unsigned char *pt,
                           size_t pt_len, unsigned char eph_pk[32],
                           unsigned char nonce[LK_SEAL_NONCE_BYTES],
                           unsigned char **ct, size_t *ct_len,
                           lk_err *err) LK_MUST_CHECK;

/* Opens a value lk_seal_for_node sealed for (cred_id, field) to this node's
 * public key, using the node's own key file (node_key), straight into
 * guarded memory (*out, free with lk_secret_free). LK_FAILED_PRECONDITION
 * ("credential <id> field <f> cannot be unsealed with this node key: ...")
 * when the value was sealed for another node key, credential or field, or
 * the ephemeral key, nonce or ciphertext is altered or has the wrong
 * length; LK_INVALID_ARGUMENT when ct_len exceeds LK_SEAL_MAX_CT_BYTES or
 * a name exceeds LK_SEAL_MAX_NAME_BYTES. */
lk_status lk_unseal_from_node(const lk_seal_key *node_key, const char *cred_id,
                              const char *field, const unsigned char *eph_pk,
                              size_t eph_pk_len, const unsigned char *nonce,
                              size_t nonce_len, const unsigned char *ct,
                              size_t ct_len, lk_secret **out,
                              lk_err *err) LK_MUST_CHECK;

#endif
