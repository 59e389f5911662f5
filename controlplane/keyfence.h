/*
 * keyfence.h - the key-ring fence: an etcd key that names the key ring's
 * active key, compared in every Txn that writes a sealed credential.
 *
 * Why: control planes share one key ring file but see it at different
 * times (a stale stat() on NFS, a process paused between sealing and
 * committing, etcd applying a Txn after the client gave up on it). A
 * value sealed under a key that the re-sealer already retired would be
 * unreadable forever. Timing cannot rule that out; etcd can. The fence
 * key (lk_etcd_fence_key: outside the catalog prefix, so it is never
 * mirrored, synced or replicated) holds the active key id in decimal.
 * Every Txn that puts a credential record with sealed values compares
 * "fence == the key id those values are sealed under", so once the fence
 * names a new key no write sealed under an older key can land, whatever
 * the writer believed. Rotation moves the fence only after the key ring
 * file holds the new key; retirement happens only after the fence names
 * the new key and a pass that started after that found nothing under the
 * old keys, which then is everything there will ever be.
 *
 * Invariants: the fence only moves forward (compare-and-set on its
 * value), and only to a key the key ring file holds as active (key ids
 * only grow: a new key is the highest id plus one). A fence missing (a
 * fresh etcd) is created with the active id under a "must not exist"
 * compare. A commit refused by the fence reloads the ring from its file
 * (not the stat() shortcut) and moves a lagging fence up to the file's
 * active key, so the next attempt, sealed afresh, succeeds.
 */
#ifndef LK_KEYFENCE_H
#define LK_KEYFENCE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/etcd.h"
#include "lib/keyring.h"
#include "lib/status.h"

/* The error message of a write refused by the fence. */
#define LK_KEYFENCE_RETRY_MSG                                               \
  "the key ring changed while this write was being sealed (key rotation); " \
  "retry"

/* Reads the fence into *id. LK_NOT_FOUND when it does not exist;
 * LK_FAILED_PRECONDITION when it does not hold a key id; etcd's errors. */
lk_status lk_keyfence_read(lk_etcd *e, uint32_t *id, lk_err *err) LK_MUST_CHECK;

/* Moves the fence to id when it names a lower id or does not exist
 * (compare-and-set, retried while others move it); never moves it back.
 * Sets *now (may be NULL) to the id the fence names afterwards. */
lk_status lk_keyfence_advance(lk_etcd *e, uint32_t id, uint32_t *now,
                              lk_err *err) LK_MUST_CHECK;

/* Brings the fence and kr together at start or after a refused commit:
 * reloads kr from its file, then advances the fence to kr's active key
 * (creating it when absent). When the fence names a key newer than the
 * file's active one (the file was restored from an old backup), logs it
 * and returns LK_FAILED_PRECONDITION: writes fail until the file has the
 * key. *fence_id (may be NULL) receives the fence's id. */
lk_status lk_keyfence_sync(lk_etcd *e, lk_keyring *kr, uint32_t *fence_id,
                           lk_err *err) LK_MUST_CHECK;

/* Adds "the fence names key id" to t. */
void lk_keyfence_expect(lk_etcd_txn *t, uint32_t id);

/* Decodes the credential record val[0..len) and finds the one key id
 * every sealed secret value in it is under: *sealed 1 and *key_id set,
 * or *sealed 0 when it has none. LK_INVALID_ARGUMENT when the record does
 * not decode; LK_FAILED_PRECONDITION when its values are under more than
 * one key id (such a record must not be committed: the fence vouches for
 * one key). */
lk_status lk_keyfence_record_key(const unsigned char *val, size_t len,
                                 uint32_t *key_id, int *sealed,
                                 lk_err *err) LK_MUST_CHECK;

/* After a Txn that compared the fence with used failed: when the fence
 * does not name used now, syncs kr with its file and the fence
 * (lk_keyfence_sync) so a fresh seal uses the fence's key; a fence that
 * names used now was only behind the file at commit time. Returns
 * LK_UNAVAILABLE with LK_KEYFENCE_RETRY_MSG. */
lk_status lk_keyfence_refused(lk_etcd *e, lk_keyring *kr, uint32_t used,
                              lk_err *err) LK_MUST_CHECK;

#endif
