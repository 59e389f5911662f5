/*
 * keyfence.c - the key-ring fence (see keyfence.h).
 *
 * The fence value is the key id in plain decimal, so an operator can read
 * it with etcdctl. Every change is a compare-and-set on the value read
 * (or "must not exist" when there was none), retried a bounded number of
 * times when another control plane moved it meanwhile.
 */
#include "controlplane/keyfence.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/log.h"

/* "4294967295" */
#define ID_TEXT_BYTES 11
/* Compare-and-set attempts before advancing gives up. */
#define MAX_CAS_TRIES 16

/* Writes id in decimal to out; returns its length. */
static size_t id_text(uint32_t id, char out[ID_TEXT_BYTES]) {
  return (size_t)snprintf(out, ID_TEXT_BYTES, "%u", (unsigned)id);
}

/* Parses a fence value: 1..4294967295 in plain decimal. */
static int parse_id(const unsigned char *v, size_t n, uint32_t *out) {
  uint64_t x = 0;
  if (n == 0 || n > 10 || v[0] == '0') {
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') {
      return -1;
    }
    x = x * 10 + (uint64_t)(v[i] - '0');
  }
  if (x > UINT32_MAX) {
    return -1;
  }
  *out = (uint32_t)x;
  return 0;
}

lk_status lk_keyfence_read(lk_etcd *e, uint32_t *id, lk_err *err) {
  unsigned char *v = NULL;
  size_t n = 0;
  lk_status st = lk_etcd_get(e, LK_ETCD_FENCE_KEY, &v, &n, NULL, err);
  if (st == LK_NOT_FOUND) {
    st = lk_fail(err, LK_NOT_FOUND, "the key-ring fence %s does not exist",
                 lk_etcd_fence_key(e));
  } else if (st == LK_OK && parse_id(v, n, id) != 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "the key-ring fence %s does not hold a key id",
                 lk_etcd_fence_key(e));
  }
  lk_etcd_value_free(v, n);
  return st;
}

void lk_keyfence_expect(lk_etcd_txn *t, uint32_t id) {
  char text[ID_TEXT_BYTES];
  size_t n = id_text(id, text);
  lk_etcd_txn_expect_value(t, LK_ETCD_FENCE_KEY, (const unsigned char *)text,
                           n);
}

lk_status lk_keyfence_advance(lk_etcd *e, uint32_t id, uint32_t *now,
                              lk_err *err) {
  lk_status st = LK_OK;
  for (int attempt = 0; attempt < MAX_CAS_TRIES; attempt++) {
    uint32_t cur = 0;
    char text[ID_TEXT_BYTES];
    st = lk_keyfence_read(e, &cur, err);
    if (st != LK_OK && st != LK_NOT_FOUND) {
      return st;
    }
    int absent = st == LK_NOT_FOUND;
    if (!absent && cur >= id) {
      if (now != NULL) {
        *now = cur;
      }
      return LK_OK;
    }
    lk_etcd_txn *t = lk_etcd_txn_new();
    if (t == NULL) {
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (absent) {
      lk_etcd_txn_expect_mod_revision(t, LK_ETCD_FENCE_KEY, 0);
    } else {
      lk_keyfence_expect(t, cur);
    }
    size_t n = id_text(id, text);
    lk_etcd_txn_put(t, LK_ETCD_FENCE_KEY, (const unsigned char *)text, n);
    st = lk_etcd_txn_commit(e, t, NULL, err);
    lk_etcd_txn_destroy(t);
    if (st == LK_OK) {
      lk_log(LK_LOG_INFO, "keys.fence", "the key-ring fence %s names key %u",
             lk_etcd_fence_key(e), (unsigned)id);
      if (now != NULL) {
        *now = id;
      }
      return LK_OK;
    }
    if (st != LK_FAILED_PRECONDITION) {
      return st;
    }
  }
  return lk_fail(err, LK_UNAVAILABLE,
                 "the key-ring fence %s kept changing while it was moved to "
                 "key %u; retry",
                 lk_etcd_fence_key(e), (unsigned)id);
}

lk_status lk_keyfence_sync(lk_etcd *e, lk_keyring *kr, uint32_t *fence_id,
                           lk_err *err) {
  uint32_t now = 0;
  lk_status st = lk_keyring_reload(kr, err);
  if (st != LK_OK) {
    return st;
  }
  uint32_t active = lk_keyring_active_id(kr);
  if ((st = lk_keyfence_advance(e, active, &now, err)) != LK_OK) {
    return st;
  }
  if (fence_id != NULL) {
    *fence_id = now;
  }
  if (now != active) {
    lk_log(LK_LOG_ERROR, "keys.fence_ahead",
           "the key-ring fence %s names key %u but the key ring file %s has "
           "key %u active: the file is older than etcd (restored from "
           "backup?); writes of secret values fail until it holds key %u",
           lk_etcd_fence_key(e), (unsigned)now, lk_keyring_path(kr),
           (unsigned)active, (unsigned)now);
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "the key-ring fence names key %u but the key ring file "
                   "%s has key %u active: restore the newer key ring file",
                   (unsigned)now, lk_keyring_path(kr), (unsigned)active);
  }
  return LK_OK;
}

lk_status lk_keyfence_record_key(const unsigned char *val, size_t len,
                                 uint32_t *key_id, int *sealed, lk_err *err) {
  lk_status st = LK_OK;
  *sealed = 0;
  Latchkey__V1__Credential *c =
      latchkey__v1__credential__unpack(NULL, len, val);
  if (c == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "a credential record to commit does not decode");
  }
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret || f->sealed == NULL || f->sealed->ciphertext.len == 0) {
      continue;
    }
    if (*sealed && f->sealed->key_id != *key_id) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential %s holds values sealed under key ring keys %u "
                   "and %u: a record is committed under one key only",
                   c->id, (unsigned)*key_id, (unsigned)f->sealed->key_id);
      break;
    }
    *key_id = f->sealed->key_id;
    *sealed = 1;
  }
  latchkey__v1__credential__free_unpacked(c, NULL);
  return st;
}

lk_status lk_keyfence_refused(lk_etcd *e, lk_keyring *kr, uint32_t used,
                              lk_err *err) {
  lk_err rerr;
  uint32_t cur = 0;
  lk_err_clear(&rerr);
  /* A fence that names used now was behind at commit time (the file had
   * the key first): the retry will pass, no reload is needed. */
  if (lk_keyfence_read(e, &cur, &rerr) != LK_OK || cur != used) {
    lk_log(LK_LOG_WARN, "keys.fence_refused",
           "a write sealed under key %u was refused by the key-ring fence "
           "%s; reloading the key ring %s",
           (unsigned)used, lk_etcd_fence_key(e), lk_keyring_path(kr));
    if (lk_keyfence_sync(e, kr, NULL, &rerr) != LK_OK) {
      lk_log(LK_LOG_WARN, "keys.fence_sync_failed", "%s", rerr.msg);
    }
  }
  return lk_fail(err, LK_UNAVAILABLE, LK_KEYFENCE_RETRY_MSG);
}
