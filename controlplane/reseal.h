/*
 * reseal.h - key rotation on the control plane: a background re-sealer
 * that moves every secret field value in etcd to the key ring's active key
 * and retires the old keys once nothing uses them (DESIGN.md §6, "rotation
 * re-seals everything").
 *
 * Why: adding a key (lk_keyring_add_key) only changes what new writes are
 * sealed under; a leaked old key keeps opening every value sealed before.
 * Rotation is finished only when no value is sealed under a retiring key
 * and the retiring keys are gone from the key ring file. Tool calls never
 * wait for any of it: a re-sealed credential is an ordinary etcd write,
 * which every control plane's Watch turns into a Sync batch re-sealed to
 * each sidecar's node key, and a sidecar serves from its replica
 * throughout.
 *
 * How a pass works, on the re-sealer's own thread:
 *  1. refresh the shared key ring (another control plane may have rotated);
 *     when it has no retiring key there is nothing to do;
 *  2. read every credential from etcd (one consistent Range, not the
 *     mirror, which may lag) and note those with a secret value under a
 *     key other than the active one;
 *  3. for each: read it again with its mod revision, unseal each such value
 *     (a value under a key the ring does not hold is left as it is, logged
 *     as keys.reseal.missing_key and counted "missing" by GetKeyStatus, so
 *     it never blocks retirement)
 *     (plaintext only in an lk_secret), seal it under the active key, and
 *     commit it in a Txn that holds only if the mod revision is unchanged,
 *     so an Admin update made meanwhile is never overwritten, and the
 *     fence names the key it sealed under: on a conflict it reads again
 *     and retries (after a fence refusal, with the ring reloaded). A
 * `keys.reseal.progress` log line gives done/total at most once a second;
 *  4. a pass that finds nothing under a retiring key, started after the
 *     key-ring fence (controlplane/keyfence) names the active key, and at
 *     least the grace period after this process first saw the active key
 *     and after its last pass that re-sealed anything, removes the
 *     retiring keys from the file (lk_keyring_remove_key) and reloads.
 *     Every credential Txn compares the fence with the key it was sealed
 *     under, so once the fence names the active key no write under an
 *     older one can land: what the pass finds is all there will ever be.
 *     The grace period is extra margin only. Admin updates keep no
 *     value under an old key either: the control plane's sealer
 *     (lk_reseal_admin_sealer) re-seals the fields an update keeps.
 *
 * Every control plane runs a re-sealer; each one that sees retiring keys
 * in the shared file works on them, so a rotation started on a control
 * plane that then crashed is finished by any other, or by the same one
 * after a restart. Several working at once is safe (the mod-revision
 * compare), only wasteful.
 *
 * Limits: a pass handles at most LK_RESEAL_MAX_PASS_CREDS credentials (the
 * next pass takes the rest); a credential that keeps changing is retried
 * LK_RESEAL_MAX_TRIES times per pass.
 */
#ifndef LK_RESEAL_H
#define LK_RESEAL_H

#include <stdint.h>

#include "lib/admin.h"
#include "lib/catalog.h"
#include "lib/etcd.h"
#include "lib/keyring.h"
#include "lib/status.h"

/* Default grace period: the longest an etcd Txn may take, plus a margin. */
#define LK_RESEAL_GRACE_MS (LK_ETCD_DEADLINE_MS + 1000)
/* How often an idle re-sealer checks the key ring file for retiring keys. */
#define LK_RESEAL_POLL_MS 2000
/* At most one keys.reseal.progress line per this many ms. */
#define LK_RESEAL_PROGRESS_MS 1000
/* Credentials one pass re-seals at most. */
#define LK_RESEAL_MAX_PASS_CREDS 100000
/* Attempts per credential per pass when its Txn keeps conflicting. */
#define LK_RESEAL_MAX_TRIES 16
/* Longest pause after a failed pass (it doubles from 500 ms). */
#define LK_RESEAL_MAX_BACKOFF_MS 30000

typedef struct lk_reseal lk_reseal;

typedef struct {
  lk_etcd *etcd;    /* the source of truth: Range, Get and Txn */
  lk_catalog *cat;  /* the mirror: what lk_reseal_status counts */
  lk_keyring *kr;   /* shared with the sealer and the Sync server */
  int64_t grace_ms; /* 0: LK_RESEAL_GRACE_MS */
  int64_t poll_ms;  /* 0: LK_RESEAL_POLL_MS */
} lk_reseal_config;

/* Starts the re-sealer thread over cfg's parts (borrowed: they must
 * outlive it). When the ring already has retiring keys (a rotation cut
 * short), it starts re-sealing at once. LK_INVALID_ARGUMENT when a part is
 * missing; LK_INTERNAL when the thread cannot start. */
lk_status lk_reseal_start(const lk_reseal_config *cfg, lk_reseal **out,
                          lk_err *err) LK_MUST_CHECK;

/* Stops the thread (a credential in flight finishes or is abandoned
 * before its Txn; nothing is half-written) and frees it; NULL is a no-op.
 * Call before the etcd client, catalog or key ring go away. */
void lk_reseal_destroy(lk_reseal *r);

/* Adds a new active key to the key ring file, reloads the ring, moves the
 * key-ring fence to it and starts re-sealing under the new key; *new_id (may be
 * NULL) receives its id. Errors of lk_keyring_add_key and lk_keyring_reload. */
lk_status lk_reseal_rotate(lk_reseal *r, uint32_t *new_id,
                           lk_err *err) LK_MUST_CHECK;

/* Fills *out: the ring's keys (refreshed from the file first) with their
 * state, how many secret values the mirror holds under each (and under key
 * ids the ring does not hold, as "missing"), the total, whether a
 * rotation is in progress here, and the last error of a pass ("" once a
 * pass succeeds). LK_INTERNAL when the mirror cannot be read. */
lk_status lk_reseal_status(lk_reseal *r, lk_admin_key_status *out,
                           lk_err *err) LK_MUST_CHECK;

/* The Admin sealer of a control plane over kr (borrowed): seals under the
 * active key after refreshing kr from its file, and re-seals the values an
 * update keeps when they are under another key. */
lk_admin_sealer lk_reseal_admin_sealer(lk_keyring *kr);

/* lk_admin_keys_fn over an lk_reseal (ctx): RotateKey is lk_reseal_rotate
 * then lk_reseal_status; GetKeyStatus is lk_reseal_status. */
lk_status lk_reseal_admin_keys(void *ctx, int rotate, lk_admin_key_status *out,
                               lk_err *err);

#endif
