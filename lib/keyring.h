/*
 * keyring.h - the control plane's versioned key ring (`--keyring FILE`,
 * DESIGN.md §6).
 *
 * Why: the control plane seals every secret field it commits to etcd, and
 * its keys must be rotatable without making older ciphertexts unreadable.
 * So it holds several XChaCha20-Poly1305 keys, each with a key id: the one
 * active key seals, every key in the ring unseals, and a sealed value
 * carries the id of its key. Rotation adds a new active key and leaves the
 * old ones "retiring" until everything is re-sealed. The key-ring
 * ciphertext never leaves the control plane: on the way to a sidecar each
 * value is re-sealed to that node's key (lk_seal_for_node in lib/seal.h).
 *
 * Sealing is lk_seal's construction with the key taken from the ring:
 * XChaCha20-Poly1305 under the 32 key bytes as they are in the file, a
 * random 24-byte nonce, and associated data (lk_seal_ad)
 *
 *     cred_id, NUL, field name, NUL, key_id as 4 bytes big-endian
 *
 * so a ciphertext opens only for the credential, field and key it was made
 * for.
 *
 * Key ring file, created 0600 with an audit key and one active key (id 1)
 * when missing, is text:
 *
 *     latchkey-keyring v1
 *     audit <standard base64 of the 32-byte audit key>
 *     key <id> <state> <standard base64 of the 32-byte key>
 *     ...
 *
 * the header line, the audit line, then 1..LK_KEYRING_MAX_KEYS key lines;
 * id is plain decimal in 1..4294967295 (no leading zero), distinct across
 * lines; state is "active" or "retiring", and exactly one key is active.
 * Fields are separated by one space, every line ends in "\n" (the last
 * newline optional), and the file is at most LK_KEYRING_MAX_FILE_BYTES.
 * Latchkey writes keys in ascending id order; a new key's id is the
 * highest id in the ring plus one. A file without the audit line (written
 * before audit keys existed) is still read: loading it, or adding a key to
 * it, first adds a fresh audit line, under the same lock and atomic
 * replacement as lk_keyring_add_key. The audit line anywhere but right
 * after the header, twice, or not holding 32 bytes makes the file
 * malformed.
 *
 * Audit hash: lk_keyring_audit_hash is lib/audit's lk_audit_hash keyed with
 * the audit key: BLAKE2b-256 (crypto_generichash) keyed with those 32
 * bytes, as 64 lowercase hex digits, so logs can correlate values without
 * holding them. The audit key is not a sealing key and never rotates with
 * them, so a hash stays comparable across lk_keyring_add_key,
 * lk_keyring_remove_key and reloads (a whole rotation); the control plane
 * sends it to each replica sealed to the replica's node key.
 *
 * Invariants: key bytes live only in sodium_malloc memory; plaintext comes
 * out of lk_keyring_unseal only as an lk_secret; no error message carries
 * a value or key. An lk_keyring is safe to share across threads.
 * lk_keyring_add_key and lk_keyring_remove_key change the file, not rings
 * already loaded from it; a loaded ring takes the file's new keys in place
 * with lk_keyring_reload or lk_keyring_refresh, under an internal
 * read-write lock, so a pointer shared by the Admin sealer, the Sync
 * server and the re-sealer stays valid and every seal or unseal sees
 * either the old key set or the new one, never a mix. Keys dropped by a
 * reload are wiped.
 *
 * Several control planes share one key ring file: each refreshes its ring
 * (one stat(): device, inode, size, mtime and ctime) before it seals and
 * reloads on a key id it does not hold, so a rotation made by one of them
 * reaches the others at their next write.
 */
#ifndef LK_KEYRING_H
#define LK_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/status.h"

/* Most keys a ring holds; lk_keyring_add_key refuses to go past it. */
#define LK_KEYRING_MAX_KEYS 256
/* Largest key ring file accepted (the largest ring needs under 18 KiB). */
#define LK_KEYRING_MAX_FILE_BYTES (32u * 1024u)
/* Size of lk_keyring_audit_hash's output: 64 hex digits and a NUL
 * (LK_AUDIT_HEX_BYTES). */
#define LK_KEYRING_AUDIT_HEX_BYTES 65

/* Opaque; key bytes in sodium_malloc memory. */
typedef struct lk_keyring lk_keyring;

/* Loads the key ring at path, or creates it with an audit key and one
 * active key (temp file 0600, fsync, then linked into place without
 * replacing a file another process made first) when it does not exist; a
 * file without an audit line gets one first (see above).
 * LK_FAILED_PRECONDITION when the file is group/other accessible ("chmod
 * 600") or cannot be read or written (also when it needs an audit line and
 * its directory is read-only: the message says how to add one);
 * LK_INVALID_ARGUMENT naming the path when it is malformed. */
lk_status lk_keyring_load_or_create(const char *path, lk_keyring **out,
                                    lk_err *err) LK_MUST_CHECK;

/* Wipes and frees the ring; NULL is a no-op. */
void lk_keyring_destroy(lk_keyring *kr);

/* Returns the id of the active key, the one lk_keyring_seal uses. */
uint32_t lk_keyring_active_id(const lk_keyring *kr);

/* Seals pt_len bytes at pt for (cred_id, field) under the active key: sets
 * *key_id to its id, writes a fresh random nonce to nonce; *ct is malloc'd
 * (free()) and *ct_len is pt_len + LK_SEAL_TAG_BYTES. LK_INVALID_ARGUMENT
 * when pt_len exceeds LK_SEAL_MAX_PT_BYTES or a name exceeds
 * LK_SEAL_MAX_NAME_BYTES. */
lk_status lk_keyring_seal(const lk_keyring *kr, const char *cred_id,
                          const char *field, const unsigned char *pt,
                          size_t pt_len, uint32_t *key_id,
                          unsigned char nonce[LK_SEAL_NONCE_BYTES],
                          unsigned char **ct, size_t *ct_len,
                          lk_err *err) LK_MUST_CHECK;

/* Opens a ciphertext sealed for (cred_id, field) under ring key key_id
 * (active or retiring) straight into guarded memory (*out, free with
 * lk_secret_free). LK_FAILED_PRECONDITION naming the key id when the ring
 * has no key key_id, or when the nonce, ciphertext or names do not match;
 * LK_INVALID_ARGUMENT when ct_len exceeds LK_SEAL_MAX_CT_BYTES or a name
 * exceeds LK_SEAL_MAX_NAME_BYTES. */
lk_status lk_keyring_unseal(const lk_keyring *kr, uint32_t key_id,
                            const char *cred_id, const char *field,
                            const unsigned char *nonce, size_t nonce_len,
                            const unsigned char *ct, size_t ct_len,
                            lk_secret **out, lk_err *err) LK_MUST_CHECK;

/* Adds a new active key to the key ring file at path and marks the
 * previously active key retiring (adding an audit line when the file has
 * none; the audit key is kept), in one atomic replacement of the file
 * (temp file 0600, fsync, rename, read back); concurrent calls on one
 * file run one at a time, across processes and hosts, under an fcntl lock
 * on "<path>.lock" (lk_keyfile_lock), which they create 0600. Sets *new_id to
 * the new key's id. LK_NOT_FOUND when the file does not exist;
 * LK_FAILED_PRECONDITION when it is group/other accessible, cannot be read or
 * written, already holds LK_KEYRING_MAX_KEYS keys or its highest id is
 * 4294967295; LK_INVALID_ARGUMENT naming the path when it is malformed. */
lk_status lk_keyring_add_key(const char *path, uint32_t *new_id,
                             lk_err *err) LK_MUST_CHECK;

/* Re-reads the file the ring was loaded from and, when it is valid,
 * replaces the ring's keys with the file's in place (the old key bytes are
 * wiped); on any failure the ring keeps its keys. A file without an audit
 * line is first given the ring's own audit key (as at load, under the
 * file's lock), so audit hashes do not change. Errors as for
 * lk_keyring_load_or_create, except that a missing file is LK_NOT_FOUND. */
lk_status lk_keyring_reload(lk_keyring *kr, lk_err *err) LK_MUST_CHECK;

/* Reloads the ring (lk_keyring_reload) when its file is not the one last
 * loaded (device, inode, size, mtime or ctime differ); otherwise costs one
 * stat(). *reloaded (may be NULL) is set to 1 when it reloaded. Errors as
 * for lk_keyring_reload; LK_FAILED_PRECONDITION when the file cannot be
 * stat()ed. */
lk_status lk_keyring_refresh(lk_keyring *kr, int *reloaded,
                             lk_err *err) LK_MUST_CHECK;

/* Returns the path the ring was loaded from (fixed for its life). */
const char *lk_keyring_path(const lk_keyring *kr);

/* Returns 1 when the ring holds a key with this id (active or retiring). */
int lk_keyring_has_key(const lk_keyring *kr, uint32_t id);

/* Copies the ids of the ring's keys, in ascending order, into ids and
 * returns how many there are (1..LK_KEYRING_MAX_KEYS); *active_id (may be
 * NULL) receives the active key's id, from the same consistent view. */
size_t lk_keyring_key_ids(const lk_keyring *kr,
                          uint32_t ids[LK_KEYRING_MAX_KEYS],
                          uint32_t *active_id);

/* Removes retiring key id from the key ring file at path, in one atomic
 * replacement of the file under the same lock ("<path>.lock") as
 * lk_keyring_add_key (the audit line is kept as it is); the key bytes are
 * gone from the file once it returns, and rings already loaded drop them
 * at their next reload.
 * LK_NOT_FOUND when the file does not exist or holds no key id;
 * LK_FAILED_PRECONDITION when id is the active key (rotate first), or the
 * file is group/other accessible or cannot be read or written;
 * LK_INVALID_ARGUMENT naming the path when it is malformed. */
lk_status lk_keyring_remove_key(const char *path, uint32_t id,
                                lk_err *err) LK_MUST_CHECK;

/* Writes the keyed BLAKE2b-256 audit hash of the len bytes at value (see
 * above) to out_hex as 64 lowercase hex digits and a NUL; value may be
 * NULL when len is 0. */
void lk_keyring_audit_hash(const lk_keyring *kr, const void *value, size_t len,
                           char out_hex[LK_KEYRING_AUDIT_HEX_BYTES]);

/* Copies the ring's 32-byte audit key into new guarded memory (*out, free
 * with lk_secret_free), for sealing it to a replica's node key.
 * LK_RESOURCE_EXHAUSTED when guarded memory runs out. */
lk_status lk_keyring_audit_key(const lk_keyring *kr, lk_secret **out,
                               lk_err *err) LK_MUST_CHECK;

#endif
