/*
 * node_keys.c - the node key and its rotation (see node_keys.h).
 *
 * Two locks. rot_mu orders the rotation's steps (start, finish) so two of
 * them never interleave their file operations; it is never taken on the
 * call path. rw guards the key pointers and sealed_to_next: calls hold it
 * for reading only while they unseal one value, and a step holds it for
 * writing only to swap pointers, never across file I/O. Only a holder of
 * rot_mu writes the pointers, so it may read them without rw.
 *
 * The rwlock prefers writers: a steady stream of calls must not keep the
 * replica thread from dropping the old key.
 *
 * Key files are written through temp files (lib/keyfile) that a SIGKILL
 * can leave behind, each a second name of a key; those of dead writers are
 * removed at open and when a rotation finishes, so no name of a retired
 * key outlives it.
 */
#include "sidecar/node_keys.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lib/keyfile.h"
#include "lib/log.h"

struct lk_node_keys {
  char *path;
  char *next_path;
  int replica;
  pthread_mutex_t rot_mu;
  pthread_rwlock_t rw;
  lk_seal_key *cur;
  lk_seal_key *next;  /* NULL = no rotation in progress */
  int sealed_to_next; /* the replica's secrets are sealed to next */
  int finish_failed;  /* rot_mu: the rename failed; retried at next start */
  _Atomic uint64_t generation; /* finished rotations */
};

/* Writes the fingerprint of key's public key into fp. */
static void fingerprint_of(const lk_seal_key *key,
                           char fp[LK_SEAL_FINGERPRINT_CHARS + 1]) {
  unsigned char pk[LK_SEAL_PUBLIC_KEY_BYTES];
  lk_err ignored;
  if (lk_seal_key_public(key, pk, &ignored) != LK_OK) {
    memset(pk, 0, sizeof(pk));
  }
  lk_seal_fingerprint(pk, fp);
}

/* Returns 1 when pk (32 bytes) is key's public key. */
static int is_key(const lk_seal_key *key, const unsigned char *pk) {
  unsigned char own[LK_SEAL_PUBLIC_KEY_BYTES];
  lk_err ignored;
  if (key == NULL || pk == NULL ||
      lk_seal_key_public(key, own, &ignored) != LK_OK) {
    return 0;
  }
  return lk_ct_equal(own, sizeof(own), pk, LK_SEAL_PUBLIC_KEY_BYTES);
}

/* Removes key temp files a killed writer left beside PATH or PATH.next:
 * one may be a second name of a key this rotation retires. At open
 * (at_start), temps named with our own pid are stale too: a restarted
 * container is often PID 1 again. */
static void remove_stale_temps(const lk_node_keys *k, int at_start) {
  int n = at_start ? lk_keyfile_remove_stale_temps_at_start(k->path) +
                         lk_keyfile_remove_stale_temps_at_start(k->next_path)
                   : lk_keyfile_remove_stale_temps(k->path) +
                         lk_keyfile_remove_stale_temps(k->next_path);
  if (n > 0) {
    lk_log(LK_LOG_INFO, "node_key.stale_temp_removed",
           "removed %d temp file(s) of node key %s left by a killed process", n,
           k->path);
  }
}

/* Finishes the rotation (rot_mu held, k->next set, the replica durably
 * sealed to next): rename PATH.next over PATH, then drop the old key. */
static void finish_locked(lk_node_keys *k) {
  char old_fp[LK_SEAL_FINGERPRINT_CHARS + 1];
  char new_fp[LK_SEAL_FINGERPRINT_CHARS + 1];
  lk_err err;
  lk_err_clear(&err);
  fingerprint_of(k->cur, old_fp);
  fingerprint_of(k->next, new_fp);
  pthread_rwlock_wrlock(&k->rw);
  k->sealed_to_next = 1;
  pthread_rwlock_unlock(&k->rw);
  if (k->finish_failed) {
    return;
  }
  if (lk_keyfile_promote(k->next_path, k->path, "node key", &err) != LK_OK) {
    k->finish_failed = 1;
    lk_log(LK_LOG_ERROR, "node_key.rotate_failed",
           "the replica is sealed to the new node key %s but %s: the sidecar "
           "keeps both keys, serves with the new one, and retries at its "
           "next start",
           new_fp, err.msg);
    return;
  }
  pthread_rwlock_wrlock(&k->rw);
  lk_seal_key *old = k->cur;
  k->cur = k->next;
  k->next = NULL;
  k->sealed_to_next = 0;
  atomic_fetch_add(&k->generation, 1);
  pthread_rwlock_unlock(&k->rw);
  lk_seal_key_destroy(old); /* wipes */
  remove_stale_temps(k, 0);
  lk_log(LK_LOG_INFO, "node_key.rotated",
         "node key %s rotated: old=%s new=%s; the old key is wiped from "
         "memory and its file replaced",
         k->path, old_fp, new_fp);
}

/* Logs that a rotation is under way (rot_mu held, k->next set). */
static void log_rotating(const lk_node_keys *k, const char *how) {
  char cur_fp[LK_SEAL_FINGERPRINT_CHARS + 1];
  char next_fp[LK_SEAL_FINGERPRINT_CHARS + 1];
  fingerprint_of(k->cur, cur_fp);
  fingerprint_of(k->next, next_fp);
  lk_log(LK_LOG_INFO, "node_key.rotating",
         "%s rotation of node key %s: old=%s new=%s; the control plane is "
         "shown the new key and calls use the key the replica is sealed to "
         "until a snapshot sealed to the new key is applied",
         how, k->path, cur_fp, next_fp);
}

lk_status lk_node_keys_open(const lk_node_keys_config *cfg, lk_node_keys **out,
                            lk_err *err) {
  lk_status st = LK_OK;
  struct stat sb;
  if (cfg == NULL || cfg->path == NULL || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "node keys: NULL argument");
  }
  *out = NULL;
  if (cfg->rotate && !cfg->replica) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--rotate-node-key applies to replica mode only "
                   "(--control-plane)");
  }
  lk_node_keys *k = calloc(1, sizeof(*k));
  if (k == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  pthread_mutex_init(&k->rot_mu, NULL);
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&k->rw, &ra);
  pthread_rwlockattr_destroy(&ra);
  k->replica = cfg->replica;
  size_t n = strlen(cfg->path);
  k->path = strdup(cfg->path);
  k->next_path = malloc(n + sizeof(LK_NODE_KEYS_NEXT_SUFFIX));
  if (k->path == NULL || k->next_path == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto fail;
  }
  memcpy(k->next_path, cfg->path, n);
  memcpy(k->next_path + n, LK_NODE_KEYS_NEXT_SUFFIX,
         sizeof(LK_NODE_KEYS_NEXT_SUFFIX));
  remove_stale_temps(k, 1);
  if ((st = lk_seal_key_load_or_create(k->path, &k->cur, err)) != LK_OK) {
    goto fail;
  }
  if (!k->replica) {
    if (lstat(k->next_path, &sb) == 0) {
      lk_log(LK_LOG_WARN, "node_key.next_ignored",
             "%s is ignored: node key rotation applies to replica mode only",
             k->next_path);
    }
    *out = k;
    return LK_OK;
  }
  const char *how = "continuing";
  st = lk_seal_key_load(k->next_path, &k->next, err);
  if (st == LK_NOT_FOUND) {
    if (!cfg->rotate) {
      *out = k;
      return LK_OK;
    }
    how = "starting";
    st = lk_seal_key_load_or_create(k->next_path, &k->next, err);
  }
  if (st != LK_OK) {
    goto fail;
  }
  pthread_mutex_lock(&k->rot_mu);
  if (is_key(k->next, cfg->sealed_pk)) {
    finish_locked(k);
  } else {
    log_rotating(k, how);
  }
  pthread_mutex_unlock(&k->rot_mu);
  *out = k;
  return LK_OK;
fail:
  lk_node_keys_destroy(k);
  return st;
}

void lk_node_keys_destroy(lk_node_keys *k) {
  if (k == NULL) {
    return;
  }
  lk_seal_key_destroy(k->cur);
  lk_seal_key_destroy(k->next);
  pthread_rwlock_destroy(&k->rw);
  pthread_mutex_destroy(&k->rot_mu);
  free(k->path);
  free(k->next_path);
  free(k);
}

void lk_node_keys_presented(lk_node_keys *k, unsigned char pk[32]) {
  lk_err ignored;
  pthread_rwlock_rdlock(&k->rw);
  const lk_seal_key *shown = k->next != NULL ? k->next : k->cur;
  if (lk_seal_key_public(shown, pk, &ignored) != LK_OK) {
    memset(pk, 0, LK_SEAL_PUBLIC_KEY_BYTES);
  }
  pthread_rwlock_unlock(&k->rw);
}

int lk_node_keys_rotating(lk_node_keys *k) {
  pthread_rwlock_rdlock(&k->rw);
  int rotating = k->next != NULL;
  pthread_rwlock_unlock(&k->rw);
  return rotating;
}

lk_status lk_node_keys_rotate(lk_node_keys *k, lk_err *err) {
  if (!k->replica) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "node key rotation applies to replica mode only "
                   "(--control-plane)");
  }
  lk_status st = LK_OK;
  pthread_mutex_lock(&k->rot_mu);
  if (k->next != NULL) {
    lk_log(LK_LOG_INFO, "node_key.rotating",
           "a rotation of node key %s is already in progress", k->path);
    goto done;
  }
  lk_seal_key *next = NULL;
  st = lk_seal_key_load_or_create(k->next_path, &next, err);
  if (st != LK_OK) {
    goto done;
  }
  pthread_rwlock_wrlock(&k->rw);
  k->next = next;
  k->sealed_to_next = 0;
  pthread_rwlock_unlock(&k->rw);
  log_rotating(k, "starting");
done:
  pthread_mutex_unlock(&k->rot_mu);
  return st;
}

void lk_node_keys_replica_sealed(lk_node_keys *k, const unsigned char pk[32]) {
  if (!k->replica) {
    return;
  }
  pthread_mutex_lock(&k->rot_mu);
  if (k->next != NULL && is_key(k->next, pk)) {
    finish_locked(k);
  }
  pthread_mutex_unlock(&k->rot_mu);
}

uint64_t lk_node_keys_generation(lk_node_keys *k) {
  return atomic_load(&k->generation);
}

lk_status lk_node_keys_unseal_from_node(
    lk_node_keys *k, const char *cred_id, const char *field,
    const unsigned char *eph_pk, size_t eph_pk_len, const unsigned char *nonce,
    size_t nonce_len, const unsigned char *ct, size_t ct_len, lk_secret **out,
    lk_err *err) {
  pthread_rwlock_rdlock(&k->rw);
  const lk_seal_key *first = k->sealed_to_next ? k->next : k->cur;
  const lk_seal_key *second =
      k->next == NULL ? NULL : (k->sealed_to_next ? k->cur : k->next);
  lk_status st = lk_unseal_from_node(first, cred_id, field, eph_pk, eph_pk_len,
                                     nonce, nonce_len, ct, ct_len, out, err);
  if (st == LK_FAILED_PRECONDITION && second != NULL) {
    lk_err second_err;
    if (lk_unseal_from_node(second, cred_id, field, eph_pk, eph_pk_len, nonce,
                            nonce_len, ct, ct_len, out, &second_err) == LK_OK) {
      st = LK_OK;
    }
  }
  pthread_rwlock_unlock(&k->rw);
  return st;
}

lk_status lk_node_keys_unseal_from_key(
    lk_node_keys *k, const unsigned char pk[32], const char *cred_id,
    const char *field, const unsigned char *eph_pk, size_t eph_pk_len,
    const unsigned char *nonce, size_t nonce_len, const unsigned char *ct,
    size_t ct_len, lk_secret **out, lk_err *err) {
  char fp[LK_SEAL_FINGERPRINT_CHARS + 1];
  lk_status st;
  pthread_rwlock_rdlock(&k->rw);
  const lk_seal_key *key =
      is_key(k->cur, pk) ? k->cur : (is_key(k->next, pk) ? k->next : NULL);
  if (key == NULL) {
    lk_seal_fingerprint(pk, fp);
    st =
        lk_fail(err, LK_FAILED_PRECONDITION,
                "this sidecar holds no node key %s (node key %s)", fp, k->path);
  } else {
    st = lk_unseal_from_node(key, cred_id, field, eph_pk, eph_pk_len, nonce,
                             nonce_len, ct, ct_len, out, err);
  }
  pthread_rwlock_unlock(&k->rw);
  return st;
}

lk_status lk_node_keys_unseal(lk_node_keys *k, uint32_t key_id,
                              const char *cred_id, const char *field,
                              const unsigned char *nonce, size_t nonce_len,
                              const unsigned char *ct, size_t ct_len,
                              lk_secret **out, lk_err *err) {
  pthread_rwlock_rdlock(&k->rw);
  lk_status st = lk_unseal(k->cur, key_id, cred_id, field, nonce, nonce_len, ct,
                           ct_len, out, err);
  pthread_rwlock_unlock(&k->rw);
  return st;
}

const lk_seal_key *lk_node_keys_standalone_key(const lk_node_keys *k) {
  return k->replica ? NULL : k->cur;
}
