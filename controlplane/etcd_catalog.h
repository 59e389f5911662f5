/*
 * etcd_catalog.h - the catalog over etcd: the control plane's catalog
 * store.
 *
 * Why: the control plane keeps no state of its own, so several replicas
 * can run side by side; etcd is the source of truth. Reads must still be
 * fast (every Admin listing and every replica's scope reads the whole
 * catalog), so this module keeps an in-memory mirror (a RocksDB with no
 * files) that an etcd Range fills at start and an etcd Watch keeps
 * current, and hands out an lk_catalog that reads the mirror and commits
 * through an etcd Txn (lk_catalog_set_committer). A commit returns only
 * once the mirror has applied the Txn's revision, so a write is visible to
 * the next read on this control plane.
 *
 * Invariants: the mirror only ever holds a consistent etcd revision
 * (each WatchResponse is applied as one WriteBatch); when etcd compacts
 * past the watch, the mirror is rebuilt from a fresh Range; on_change is
 * called on one thread, in revision order, after the mirror applied it.
 */
#ifndef LK_ETCD_CATALOG_H
#define LK_ETCD_CATALOG_H

#include <stdint.h>

#include "lib/catalog.h"
#include "lib/etcd.h"
#include "lib/keyring.h"
#include "lib/status.h"
#include "lib/store.h"

typedef struct lk_etcd_catalog lk_etcd_catalog;

/* Called after the mirror applied changes up to revision. */
typedef void (*lk_etcd_catalog_change_fn)(void *ctx, int64_t revision);

/* Loads the catalog from etcd (borrowed; it must outlive the catalog) and
 * starts following it. on_change may be NULL. LK_UNAVAILABLE when etcd
 * cannot be read. */
lk_status lk_etcd_catalog_open(lk_etcd *etcd,
                               lk_etcd_catalog_change_fn on_change, void *ctx,
                               lk_etcd_catalog **out,
                               lk_err *err) LK_MUST_CHECK;

/* Makes every later commit that puts a credential record with sealed
 * values compare the key-ring fence (controlplane/keyfence) with the key
 * those values are under; first syncs the fence with the file of kr
 * (borrowed; it must outlive the catalog) by lk_keyfence_sync, creating
 * it when absent. A commit the fence refuses reloads kr and fails
 * LK_UNAVAILABLE with LK_KEYFENCE_RETRY_MSG (the caller retries, sealing
 * afresh); a record with values under more than one key, or a batch
 * mixing keys, fails LK_FAILED_PRECONDITION unsent. The
 * control plane calls it once, before it serves. Errors of
 * lk_keyfence_sync. */
lk_status lk_etcd_catalog_use_fence(lk_etcd_catalog *c, lk_keyring *kr,
                                    lk_err *err) LK_MUST_CHECK;

/* Returns the catalog reading the mirror and committing to etcd. */
lk_catalog *lk_etcd_catalog_catalog(const lk_etcd_catalog *c);

/* Returns the etcd revision the mirror has applied. */
int64_t lk_etcd_catalog_revision(lk_etcd_catalog *c);

/* Loads the catalog as it was at etcd revision `revision` (> 0) into a
 * fresh in-memory store (*store_out) and a read-only catalog over it
 * (*out), for resuming a replica from that revision. The caller destroys
 * *out, then closes *store_out. LK_FAILED_PRECONDITION when etcd has
 * compacted that revision away; LK_INVALID_ARGUMENT when it is not yet
 * written (or not > 0); LK_UNAVAILABLE when etcd cannot be read. */
lk_status lk_etcd_catalog_at(lk_etcd_catalog *c, int64_t revision,
                             lk_catalog **out, lk_store **store_out,
                             lk_err *err) LK_MUST_CHECK;

/* Stops following etcd and frees everything; NULL is ignored. */
void lk_etcd_catalog_destroy(lk_etcd_catalog *c);

#endif
