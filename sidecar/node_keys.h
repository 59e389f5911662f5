/*
 * node_keys.h - the sidecar's node key, and rotating it while calls go on
 * (DESIGN.md §6).
 *
 * Why: every secret of a replica is sealed to the node's X25519 key, so a
 * new key must not leave the replica unreadable until the control plane
 * has re-sealed it. During a rotation the sidecar holds two keys:
 *
 * - current: the key file --node-key (PATH);
 * - next: PATH.next, created like the key file itself (0600 temp file,
 *   fsync, link) by --rotate-node-key or lk_node_keys_rotate (SIGHUP),
 *   unless it exists already.
 *
 * While PATH.next exists, the control plane is shown the next key
 * (lk_node_keys_presented), so it re-seals the agent's scope to it in one
 * snapshot, and calls are served from the replica with the key its records
 * are sealed to: the one meta/node_public_key names at start, then the one
 * each commit records (lk_node_keys_replica_sealed). When the replica has
 * committed a batch sealed to the next key, PATH.next is renamed over PATH
 * (one rename, directory fsynced), the old key is wiped from memory, and
 * "node_key.rotated" is logged with both public key fingerprints.
 *
 * Crash safety: each step is one atomic file or store write, and
 * lk_node_keys_open reads the state back from them:
 *
 *   no PATH.next                         no rotation (unless cfg->rotate)
 *   PATH.next, replica not on next key   in progress: present next, serve
 *                                        with the key the replica is on
 *   PATH.next, replica on the next key   the snapshot landed before the
 *                                        rename: finish now
 *
 * so a sidecar killed at any moment serves from its replica at once when
 * it starts again, and finishes the rotation with or without the flag.
 * A replica sealed to neither key gets the applier's usual answer: it asks
 * for a snapshot (revision 0).
 *
 * Which key opens a value: the one the replica is recorded as sealed to
 * first; only when that fails and a second key is held, the other one. A
 * commit reaches the store a moment before this module hears of it, and a
 * call reading in between must not fail. Both keys are this node's own and
 * a value opens only under the key it was sealed to, so the second try
 * opens nothing more. Outside a rotation there is one key and one try.
 * A call that read its record before a rotation finished and tries to
 * open it after (the old key gone) sees lk_node_keys_generation move and
 * reads the record again (sidecar/toolcalls).
 * The replica's stored audit key opens the same way at start; an audit
 * key arriving on a stream opens only with the key that stream presented
 * (lk_node_keys_unseal_from_key), so what the replica stores is sealed to
 * the key its snapshot records (sidecar/replica).
 *
 * Standalone mode never rotates (its values are sealed under the key file
 * itself, with a key id, and no control plane would re-seal them): PATH.next
 * is ignored there, with a warning.
 *
 * Threads: calls unseal on worker threads under a read lock; the replica
 * thread (finishing) and the signal thread (starting) change the keys under
 * the write lock, one rotation step at a time. Key bytes live only in
 * lk_seal_key objects (guarded memory) and are wiped when dropped.
 */
#ifndef LK_NODE_KEYS_H
#define LK_NODE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/status.h"

/* Appended to --node-key to name the key a rotation moves to. */
#define LK_NODE_KEYS_NEXT_SUFFIX ".next"

typedef struct lk_node_keys lk_node_keys;

typedef struct {
  const char *path; /* --node-key */
  int replica;      /* replica mode; 0 = standalone, which never rotates */
  int rotate;       /* --rotate-node-key: start a rotation (replica only) */
  /* The node public key (32 bytes) the replica's records are sealed to,
   * from meta/node_public_key; NULL when none is recorded. */
  const unsigned char *sealed_pk;
} lk_node_keys_config;

/* Loads (or creates) the key file, and in replica mode PATH.next when it
 * exists, creating it when cfg->rotate; finishes a rotation whose snapshot
 * is already in the replica (cfg->sealed_pk is the next key). A failure to
 * rename then is logged, not returned: the sidecar serves and retries at
 * its next start. LK_INVALID_ARGUMENT for rotate in standalone mode or a
 * malformed key file; LK_FAILED_PRECONDITION when a key file cannot be
 * read or written (lib/seal). */
lk_status lk_node_keys_open(const lk_node_keys_config *cfg, lk_node_keys **out,
                            lk_err *err) LK_MUST_CHECK;

/* Wipes and frees every key held; NULL is a no-op. */
void lk_node_keys_destroy(lk_node_keys *k);

/* Copies the public key to show the control plane into pk: the next key
 * during a rotation, else the current one. Thread-safe. */
void lk_node_keys_presented(lk_node_keys *k, unsigned char pk[32]);

/* Returns 1 while a rotation is in progress (two keys held). Thread-safe. */
int lk_node_keys_rotating(lk_node_keys *k);

/* Starts a rotation at run time (SIGHUP): creates PATH.next unless it
 * exists and presents it from now on. LK_OK, changing nothing, when a
 * rotation is already in progress. LK_FAILED_PRECONDITION in standalone
 * mode or when the file cannot be written; LK_INVALID_ARGUMENT when an
 * existing PATH.next is malformed. Thread-safe. */
lk_status lk_node_keys_rotate(lk_node_keys *k, lk_err *err) LK_MUST_CHECK;

/* Tells the keys that the replica has committed a batch that records pk as
 * the key every stored secret is sealed to: when pk is the next key, the
 * rotation finishes (rename, wipe, "node_key.rotated"). Any other pk
 * changes nothing. Call it after the commit is durable. Thread-safe. */
void lk_node_keys_replica_sealed(lk_node_keys *k, const unsigned char pk[32]);

/* Returns a number that changes whenever a rotation finishes (the old key
 * is dropped). A call that read a record before such a change and cannot
 * open it reads the record again. Thread-safe. */
uint64_t lk_node_keys_generation(lk_node_keys *k);

/* Opens a value sealed to this node (lk_unseal_from_node) with the key the
 * replica is sealed to, or during a rotation the other key when that one
 * fails; statuses and *out as lk_unseal_from_node. Thread-safe. */
lk_status lk_node_keys_unseal_from_node(
    lk_node_keys *k, const char *cred_id, const char *field,
    const unsigned char *eph_pk, size_t eph_pk_len, const unsigned char *nonce,
    size_t nonce_len, const unsigned char *ct, size_t ct_len, lk_secret **out,
    lk_err *err) LK_MUST_CHECK;

/* Opens a value sealed to the held key whose public key is pk (32 bytes):
 * what a stream that presented pk must have been sent, and no other key is
 * tried. LK_FAILED_PRECONDITION when no key held has that public key;
 * otherwise statuses and *out as lk_unseal_from_node. Thread-safe. */
lk_status lk_node_keys_unseal_from_key(
    lk_node_keys *k, const unsigned char pk[32], const char *cred_id,
    const char *field, const unsigned char *eph_pk, size_t eph_pk_len,
    const unsigned char *nonce, size_t nonce_len, const unsigned char *ct,
    size_t ct_len, lk_secret **out, lk_err *err) LK_MUST_CHECK;

/* Opens a value sealed under the current key file with a key id (lk_unseal,
 * standalone mode); statuses and *out as lk_unseal. Thread-safe. */
lk_status lk_node_keys_unseal(lk_node_keys *k, uint32_t key_id,
                              const char *cred_id, const char *field,
                              const unsigned char *nonce, size_t nonce_len,
                              const unsigned char *ct, size_t ct_len,
                              lk_secret **out, lk_err *err) LK_MUST_CHECK;

/* Returns the key file's key for sealing in standalone mode (lib/admin),
 * where it never changes until lk_node_keys_destroy; NULL in replica mode,
 * where a rotation may replace it. */
const lk_seal_key *lk_node_keys_standalone_key(const lk_node_keys *k);

#endif
