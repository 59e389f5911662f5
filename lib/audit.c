/*
 * audit.c - the keyed audit hash and the replaceable audit key (see
 * audit.h).
 *
 * The holder is a read-write lock over one guarded region: every tool call
 * hashes under the read lock, and a replica replaces the key (rarely: on
 * the first batch of a Sync stream) under the write lock, copying into the
 * same region so no reader can see a freed one.
 */
#include "lib/audit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/secret.h"

_Static_assert(LK_AUDIT_KEY_BYTES == crypto_generichash_KEYBYTES,
               "audit key size");
_Static_assert(LK_AUDIT_HEX_BYTES == 2 * crypto_generichash_BYTES + 1,
               "audit hash size");

struct lk_audit_key {
  pthread_rwlock_t lock;
  int ready;      /* under lock */
  lk_secret *key; /* LK_AUDIT_KEY_BYTES, under lock */
};

void lk_audit_hash(const unsigned char key[LK_AUDIT_KEY_BYTES],
                   const void *value, size_t len,
                   char out_hex[LK_AUDIT_HEX_BYTES]) {
  static const unsigned char empty[1];
  unsigned char h[crypto_generichash_BYTES];
  crypto_generichash(h, sizeof(h),
                     value != NULL ? (const unsigned char *)value : empty, len,
                     key, LK_AUDIT_KEY_BYTES);
  sodium_bin2hex(out_hex, LK_AUDIT_HEX_BYTES, h, sizeof(h));
  sodium_memzero(h, sizeof(h));
}

lk_status lk_audit_key_new(lk_audit_key **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_audit_key *k = NULL;
  *out = NULL;
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  k = calloc(1, sizeof(*k));
  if (k == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory for the audit key");
    goto done;
  }
  if (pthread_rwlock_init(&k->lock, NULL) != 0) {
    free(k);
    k = NULL;
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "cannot create the audit key's lock");
    goto done;
  }
  k->key = lk_secret_new(LK_AUDIT_KEY_BYTES);
  if (k->key == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory for the audit key");
    goto done;
  }
  *out = k;
  k = NULL;
done:
  lk_audit_key_destroy(k);
  return st;
}

void lk_audit_key_destroy(lk_audit_key *k) {
  if (k == NULL) {
    return;
  }
  lk_secret_free(k->key);
  pthread_rwlock_destroy(&k->lock);
  free(k);
}

lk_status lk_audit_key_set(lk_audit_key *k, const unsigned char *key,
                           size_t len, lk_err *err) {
  if (k == NULL || key == NULL || len != LK_AUDIT_KEY_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "an audit key is %d bytes, not %zu", LK_AUDIT_KEY_BYTES,
                   key == NULL ? (size_t)0 : len);
  }
  pthread_rwlock_wrlock(&k->lock);
  memcpy(lk_secret_mut(k->key), key, LK_AUDIT_KEY_BYTES);
  k->ready = 1;
  pthread_rwlock_unlock(&k->lock);
  return LK_OK;
}

int lk_audit_key_ready(lk_audit_key *k) {
  pthread_rwlock_rdlock(&k->lock);
  int ready = k->ready;
  pthread_rwlock_unlock(&k->lock);
  return ready;
}

lk_status lk_audit_key_hash(lk_audit_key *k, const void *value, size_t len,
                            char out_hex[LK_AUDIT_HEX_BYTES], lk_err *err) {
  lk_status st = LK_OK;
  pthread_rwlock_rdlock(&k->lock);
  if (!k->ready) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "no audit key yet: a replica gets it with the first batch "
                 "from its control plane");
  } else {
    lk_audit_hash(lk_secret_data(k->key), value, len, out_hex);
  }
  pthread_rwlock_unlock(&k->lock);
  return st;
}
