/*
 * replica.c - the applier (SyncBatch -> one WriteBatch) and the stream
 * thread that feeds it from latchkey.v1.Sync/Stream.
 *
 * The stream thread owns every grpc object it makes: one completion queue
 * for its life, and per connection attempt a fresh channel (so each
 * attempt resolves the address again and reaches whichever control-plane
 * replica answers) and one call. On a call it keeps at most one receive
 * and one send in flight, and it does not ask for the next message until
 * the answer to the last one is handed to grpc, so answers go out in batch
 * order and memory stays bounded by one message. The thread polls its
 * queue every POLL_MS to notice lk_replica_stop and the resync deadline
 * after a NACK; a call ends only after every batch it started has
 * completed, and then the call and channel are released.
 *
 * With --tls-ca, grpc verifies the control plane's certificate before
 * the call's metadata (the node token) is written; when it refuses, the
 * first failure of a streak is explained once as sync_tls_failed
 * (lib/tls.c: expired, unknown issuer, wrong name, not TLS).
 *
 * Buffers that held batch bytes (grpc's received slices, the copy handed
 * to the applier, protobuf-c's unpacked messages) are wiped before they
 * are freed: credentials carry sealed values. An audit key is opened into
 * guarded memory as soon as its batch arrives (so a bad one is NACKed
 * before anything is written) and stays there, beside its sealed encoding,
 * until the WriteBatch that stores it has been written.
 */
#include "sidecar/replica.h"

#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latchkey/v1/sync.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/tls.h"

#define STREAM_METHOD "/latchkey.v1.Sync/Stream"
#define REFRESH_METHOD "/latchkey.v1.Sync/Refresh"
#define POLL_MS 100
/* After the client half-closes, how long the control plane has to end the
 * stream before it is cancelled. */
#define CLOSE_GRACE_MS 2000
#define MAX_TOKEN_FILE_BYTES 4096
#define MIN_TOKEN_BYTES 16
#define MAX_CA_FILE_BYTES (1024 * 1024)
#define UNIX_PATH_MAX_LEN 107
/* grpc refuses larger messages outright; up to it the applier NACKs. */
#define GRPC_RECEIVE_LIMIT (2 * LK_REPLICA_MAX_MESSAGE_BYTES)
/* Accounted per snapshot record on top of its key and value bytes. */
#define SNAPSHOT_RECORD_OVERHEAD 32
#define KEEPALIVE_TIME_MS 20000
#define KEEPALIVE_TIMEOUT_MS 10000
#define CONNECT_TIMEOUT_MS 5000
#define STREAM_WINDOW_BYTES (1024 * 1024)

/* ---- wiping allocator for protobuf-c -------------------------------------
 */

/* Each block is prefixed with its size so free can wipe it. */
#define ALLOC_HEADER 16
_Static_assert(ALLOC_HEADER >= sizeof(size_t), "header holds a size_t");

static void *wiping_alloc(void *data, size_t size) {
  (void)data;
  if (size > SIZE_MAX - ALLOC_HEADER)
    return NULL;
  unsigned char *p = malloc(size + ALLOC_HEADER);
  if (p == NULL)
    return NULL;
  memcpy(p, &size, sizeof(size));
  return p + ALLOC_HEADER;
}

static void wiping_free(void *data, void *ptr) {
  (void)data;
  if (ptr == NULL)
    return;
  unsigned char *p = (unsigned char *)ptr - ALLOC_HEADER;
  size_t size;
  memcpy(&size, p, sizeof(size));
  lk_wipe_free(p, size + ALLOC_HEADER);
}

static ProtobufCAllocator wiping = {wiping_alloc, wiping_free, NULL};

/* ---- wire-level checks ------------------------------------------------- */

static int read_varint(const unsigned char **p, const unsigned char *end,
                       uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end)
      return -1;
    unsigned char b = *(*p)++;
    r |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *v = r;
      return 0;
    }
  }
  return -1;
}

/* Reads one field: its number, and for length-delimited fields its bytes.
 * Returns 0, or -1 when the encoding is cut short or uses groups. */
static int next_field(const unsigned char **p, const unsigned char *end,
                      uint64_t *field, int *wire_type, uint64_t *varint,
                      const unsigned char **data, size_t *data_len) {
  uint64_t tag = 0;
  if (read_varint(p, end, &tag) != 0)
    return -1;
  *field = tag >> 3;
  *wire_type = (int)(tag & 7);
  *data = NULL;
  *data_len = 0;
  *varint = 0;
  switch (*wire_type) {
    case 0:
      return read_varint(p, end, varint);
    case 1:
      if (end - *p < 8)
        return -1;
      *p += 8;
      return 0;
    case 5:
      if (end - *p < 4)
        return -1;
      *p += 4;
      return 0;
    case 2: {
      uint64_t n = 0;
      if (read_varint(p, end, &n) != 0 || n > (uint64_t)(end - *p))
        return -1;
      *data = *p;
      *data_len = (size_t)n;
      *p += n;
      return 0;
    }
    default:
      return -1;
  }
}

/* Walks a SyncBatch encoding. Returns 0 when it is well-formed at the wire
 * level and no key (SyncRecord.key, deletes) holds a NUL, which a C string
 * would silently cut short; 1 when one does; -1 when malformed. Sets
 * *revision to the last revision field seen (0 when none). */
static int scan_batch_wire(const unsigned char *msg, size_t len,
                           int64_t *revision) {
  const unsigned char *p = msg, *end = msg + len;
  *revision = 0;
  while (p < end) {
    uint64_t field = 0, v = 0;
    int wt = 0;
    const unsigned char *data = NULL;
    size_t n = 0;
    if (next_field(&p, end, &field, &wt, &v, &data, &n) != 0)
      return -1;
    if (field == 1 && wt == 0)
      *revision = (int64_t)v;
    if (field == 3 && wt == 2 && memchr(data, 0, n) != NULL)
      return 1;
    if (field == 2 && wt == 2) {
      const unsigned char *q = data, *qend = data + n;
      while (q < qend) {
        uint64_t f2 = 0, v2 = 0;
        int wt2 = 0;
        const unsigned char *d2 = NULL;
        size_t n2 = 0;
        if (next_field(&q, qend, &f2, &wt2, &v2, &d2, &n2) != 0)
          return -1;
        if (f2 == 1 && wt2 == 2 && memchr(d2, 0, n2) != NULL)
          return 1;
      }
    }
  }
  return 0;
}

/* ---- keys and records ------------------------------------------------------
 */

typedef struct {
  const char *prefix;
  const ProtobufCMessageDescriptor *desc;
} record_kind;

enum { KIND_TOOL, KIND_TYPE, KIND_CRED, KIND_BUDGET, KIND_BIND, N_KINDS };

static const record_kind kinds[N_KINDS] = {
    {"tool/", &latchkey__v1__tool__descriptor},
    {"type/", &latchkey__v1__credential_type__descriptor},
    {"cred/", &latchkey__v1__credential__descriptor},
    {"budget/", &latchkey__v1__budget__descriptor},
    {"bind/", &latchkey__v1__binding__descriptor},
};

/* Sets *kind from key's prefix; LK_INVALID_ARGUMENT for any other key. */
static lk_status check_key(const char *key, int *kind, lk_err *err) {
  size_t n = strlen(key);
  if (n >= LK_CATALOG_KEY_MAX) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "key '%.64s...' is longer than any catalog key (%d bytes)",
                   key, LK_CATALOG_KEY_MAX - 1);
  }
  for (int k = 0; k < N_KINDS; k++) {
    size_t pl = strlen(kinds[k].prefix);
    if (n > pl && strncmp(key, kinds[k].prefix, pl) == 0) {
      *kind = k;
      return LK_OK;
    }
  }
  return lk_fail(err, LK_INVALID_ARGUMENT,
                 "key '%.200s' is not a catalog key: replicated keys start "
                 "with tool/, type/, cred/, budget/ or bind/ and name a record",
                 key);
}

/* A replicated credential must carry every secret as a value sealed to a
 * node key, and no plaintext for a secret field. */
static lk_status check_node_sealed(const Latchkey__V1__Credential *c,
                                   const char *key, lk_err *err) {
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret)
      continue;
    const Latchkey__V1__SealedValue *s = f->sealed;
    if (f->value != NULL && f->value[0] != '\0') {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "record '%.200s' carries a plain value for secret field "
                     "'%.64s': secrets must arrive sealed to this node's key",
                     key, f->name);
    }
    if (s == NULL || s->ephemeral_public_key.len != LK_SEAL_PUBLIC_KEY_BYTES ||
        s->nonce.len != LK_SEAL_NONCE_BYTES ||
        s->ciphertext.len < LK_SEAL_TAG_BYTES ||
        s->ciphertext.len > LK_SEAL_MAX_CT_BYTES) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "record '%.200s' field '%.64s' is not sealed to a node "
                     "key (SealedValue needs a 32-byte ephemeral_public_key, "
                     "a 24-byte nonce and a ciphertext)",
                     key, f->name);
    }
  }
  return LK_OK;
}

/* Checks that value decodes as the record key's prefix names and that the
 * record's ids give exactly key. */
static lk_status check_record(const char *key, int kind,
                              const ProtobufCBinaryData *value, lk_err *err) {
  if (value->len > LK_STORE_MAX_VALUE_BYTES) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "record '%.200s' is %zu bytes, over the %u-byte limit of a "
                   "stored value",
                   key, value->len, LK_STORE_MAX_VALUE_BYTES);
  }
  ProtobufCMessage *m = protobuf_c_message_unpack(kinds[kind].desc, &wiping,
                                                  value->len, value->data);
  if (m == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "record '%.200s' is not a valid %s", key,
                   kinds[kind].desc->name);
  }
  lk_status st = LK_OK;
  char want[LK_CATALOG_KEY_MAX];
  lk_err why;
  lk_err_clear(&why);
  if (lk_catalog_key_of(m, want, &why) != LK_OK) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "record '%.200s' is invalid: %s",
                 key, why.msg);
  } else if (strcmp(want, key) != 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "record '%.200s' holds the record of key '%s'", key, want);
  } else if (kind == KIND_CRED) {
    st = check_node_sealed((const Latchkey__V1__Credential *)m, key, err);
  }
  protobuf_c_message_free_unpacked(m, &wiping);
  return st;
}

/* ---- the applier --------------------------------------------------------- */

struct lk_replica_applier {
  lk_store *store;
  _Atomic int64_t revision;
  int awaiting_snapshot; /* a NACK was answered: skip until a snapshot */
  int track_node_key;
  unsigned char node_pk[LK_SEAL_PUBLIC_KEY_BYTES];
  /* The store records node_pk as the key its secrets are sealed to. */
  _Atomic int sealed_to_node_key;
  /* The store records another key: only a snapshot may be applied. */
  int key_mismatch;
  lk_node_keys *keys;  /* opens audit keys; NULL = refuse them */
  lk_audit_key *audit; /* gets each stored audit key, or NULL */
  /* An accepted audit key not yet stored: plaintext and the SealedValue
   * encoding to store, written by the next commit. */
  lk_secret *audit_pt;
  unsigned char *audit_enc;
  size_t audit_enc_len;
  /* A snapshot in progress: its puts so far, and a copy of their keys. */
  int in_snapshot;
  lk_store_batch *snap;
  char **snap_keys;
  size_t n_snap_keys;
  size_t cap_snap_keys;
  size_t snap_bytes;
};

static void encode_revision(int64_t rev, unsigned char out[8]) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (unsigned char)((uint64_t)rev & 0xff);
    rev = (int64_t)((uint64_t)rev >> 8);
  }
}

/* Forgets an audit key not yet stored. */
static void drop_audit(lk_replica_applier *a) {
  lk_secret_free(a->audit_pt);
  a->audit_pt = NULL;
  free(a->audit_enc); /* sealed: not secret */
  a->audit_enc = NULL;
  a->audit_enc_len = 0;
}

/* Opens a sealed audit key into guarded memory: with the node key whose
 * public key is pk, or with pk NULL the way calls open credentials (the
 * key the replica is sealed to, then during a rotation the other one). */
static lk_status open_audit_key(lk_node_keys *keys, const unsigned char *pk,
                                const Latchkey__V1__SealedValue *s,
                                lk_secret **out, lk_err *err) {
  lk_status st =
      pk != NULL ? lk_node_keys_unseal_from_key(
                       keys, pk, LK_AUDIT_SEAL_ID, LK_AUDIT_SEAL_FIELD,
                       s->ephemeral_public_key.data,
                       s->ephemeral_public_key.len, s->nonce.data, s->nonce.len,
                       s->ciphertext.data, s->ciphertext.len, out, err)
                 : lk_node_keys_unseal_from_node(
                       keys, LK_AUDIT_SEAL_ID, LK_AUDIT_SEAL_FIELD,
                       s->ephemeral_public_key.data,
                       s->ephemeral_public_key.len, s->nonce.data, s->nonce.len,
                       s->ciphertext.data, s->ciphertext.len, out, err);
  if (st == LK_OK && lk_secret_len(*out) != LK_AUDIT_KEY_BYTES) {
    lk_secret_free(*out);
    *out = NULL;
    st = lk_fail(err, LK_INVALID_ARGUMENT, "the audit key is not %d bytes",
                 LK_AUDIT_KEY_BYTES);
  }
  return st;
}

/* Checks and opens batch rev's audit key with the node key this stream
 * presents (never another one the sidecar holds: what is stored must
 * open with the key meta/node_public_key will name) and makes it the one
 * to store next (replacing one not yet stored). */
static lk_status take_audit_key(lk_replica_applier *a, int64_t rev,
                                const Latchkey__V1__SealedValue *s,
                                lk_err *err) {
  lk_status st = LK_OK;
  lk_secret *pt = NULL;
  unsigned char *enc = NULL;
  lk_err why;
  lk_err_clear(&why);
  if (s->ephemeral_public_key.len != LK_SEAL_PUBLIC_KEY_BYTES ||
      s->nonce.len != LK_SEAL_NONCE_BYTES ||
      s->ciphertext.len != LK_AUDIT_KEY_BYTES + LK_SEAL_TAG_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "batch %lld: audit_key is not a 32-byte key sealed to a "
                   "node key (SealedValue needs a 32-byte "
                   "ephemeral_public_key, a 24-byte nonce and a 48-byte "
                   "ciphertext)",
                   (long long)rev);
  }
  if (a->keys == NULL) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "batch %lld carries an audit key, and this replica has no "
                   "node key to open it with",
                   (long long)rev);
  }
  unsigned char pk[LK_SEAL_PUBLIC_KEY_BYTES];
  if (a->track_node_key)
    memcpy(pk, a->node_pk, sizeof(pk));
  else
    lk_node_keys_presented(a->keys, pk);
  if ((st = open_audit_key(a->keys, pk, s, &pt, &why)) != LK_OK) {
    return lk_fail(err, st,
                   "batch %lld: audit_key does not open with the node key "
                   "this replica presents (%s)",
                   (long long)rev, why.msg);
  }
  Latchkey__V1__SealedValue keep = LATCHKEY__V1__SEALED_VALUE__INIT;
  keep.ephemeral_public_key = s->ephemeral_public_key;
  keep.nonce = s->nonce;
  keep.ciphertext = s->ciphertext;
  size_t len = latchkey__v1__sealed_value__get_packed_size(&keep);
  enc = malloc(len);
  if (enc == NULL) {
    lk_secret_free(pt);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  latchkey__v1__sealed_value__pack(&keep, enc);
  drop_audit(a);
  a->audit_pt = pt;
  a->audit_enc = enc;
  a->audit_enc_len = len;
  return LK_OK;
}

static void drop_snapshot(lk_replica_applier *a) {
  lk_store_batch_destroy(a->snap);
  a->snap = NULL;
  for (size_t i = 0; i < a->n_snap_keys; i++)
    free(a->snap_keys[i]);
  free(a->snap_keys);
  a->snap_keys = NULL;
  a->n_snap_keys = 0;
  a->cap_snap_keys = 0;
  a->snap_bytes = 0;
  a->in_snapshot = 0;
}

int lk_replica_stored_node_key(lk_store *store, unsigned char pk[32]) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err ignored;
  if (lk_store_get(store, LK_REPLICA_NODE_KEY_KEY, &val, &len, &ignored) !=
      LK_OK) {
    return 0;
  }
  int found = len == LK_SEAL_PUBLIC_KEY_BYTES;
  if (found)
    memcpy(pk, val, LK_SEAL_PUBLIC_KEY_BYTES);
  lk_store_value_free(val, len);
  return found;
}

/* Returns 1 when the store records a node key other than node_pk (or a
 * record that is no key at all). */
static int node_key_changed(lk_store *store, const unsigned char *node_pk) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err ignored;
  if (lk_store_get(store, LK_REPLICA_NODE_KEY_KEY, &val, &len, &ignored) !=
      LK_OK) {
    return 0;
  }
  int changed = !lk_ct_equal(val, len, node_pk, LK_SEAL_PUBLIC_KEY_BYTES);
  lk_store_value_free(val, len);
  return changed;
}

/* Reads the applied revision and what the store says about a->node_pk into
 * a; the revision reads 0 when the secrets are sealed to another key. */
static lk_status load_state(lk_replica_applier *a, lk_err *err) {
  unsigned char *val = NULL;
  size_t len = 0;
  int64_t rev = 0;
  lk_status st =
      lk_store_get(a->store, LK_REPLICA_REVISION_KEY, &val, &len, err);
  if (st == LK_NOT_FOUND) {
    st = LK_OK;
  } else if (st == LK_OK) {
    if (len != 8 || (val[0] & 0x80) != 0) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "the store's %s is not an 8-byte revision: the data dir "
                   "is not a Latchkey replica (start with an empty --data-dir)",
                   LK_REPLICA_REVISION_KEY);
    } else {
      for (int i = 0; i < 8; i++)
        rev = (int64_t)(((uint64_t)rev << 8) | val[i]);
    }
  }
  lk_store_value_free(val, len);
  if (st != LK_OK)
    return st;
  a->key_mismatch = 0;
  atomic_store(&a->sealed_to_node_key, 0);
  if (a->track_node_key) {
    unsigned char stored[LK_SEAL_PUBLIC_KEY_BYTES];
    a->key_mismatch = node_key_changed(a->store, a->node_pk);
    atomic_store(&a->sealed_to_node_key,
                 lk_replica_stored_node_key(a->store, stored) &&
                     lk_ct_equal(stored, sizeof(stored), a->node_pk,
                                 sizeof(a->node_pk)));
  }
  if (a->key_mismatch && rev > 0) {
    lk_log(LK_LOG_WARN, "sync_node_key_changed",
           "the replica at revision %lld is sealed to another node key: "
           "asking the control plane for a full snapshot",
           (long long)rev);
    rev = 0;
  }
  atomic_store(&a->revision, rev);
  return LK_OK;
}

lk_status lk_replica_applier_new(lk_store *store, const unsigned char *node_pk,
                                 lk_replica_applier **out, lk_err *err) {
  *out = NULL;
  lk_replica_applier *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  a->store = store;
  if (node_pk != NULL) {
    a->track_node_key = 1;
    memcpy(a->node_pk, node_pk, sizeof(a->node_pk));
  }
  lk_status st = load_state(a, err);
  if (st != LK_OK) {
    free(a);
    return st;
  }
  *out = a;
  return LK_OK;
}

lk_status lk_replica_applier_set_node_key(lk_replica_applier *a,
                                          const unsigned char node_pk[32],
                                          lk_err *err) {
  drop_snapshot(a);
  a->awaiting_snapshot = 0;
  a->track_node_key = 1;
  memcpy(a->node_pk, node_pk, sizeof(a->node_pk));
  return load_state(a, err);
}

int lk_replica_applier_sealed_to_node_key(const lk_replica_applier *a) {
  return atomic_load(&((lk_replica_applier *)a)->sealed_to_node_key);
}

void lk_replica_applier_destroy(lk_replica_applier *a) {
  if (a == NULL)
    return;
  drop_snapshot(a);
  drop_audit(a);
  free(a);
}

lk_status lk_replica_applier_use_audit(lk_replica_applier *a,
                                       lk_node_keys *keys, lk_audit_key *audit,
                                       lk_err *err) {
  unsigned char *val = NULL;
  size_t len = 0;
  a->keys = keys;
  a->audit = audit;
  if (keys == NULL || audit == NULL)
    return LK_OK;
  lk_status st =
      lk_store_get(a->store, LK_REPLICA_AUDIT_KEY_KEY, &val, &len, err);
  if (st == LK_NOT_FOUND) {
    lk_err_clear(err);
    return LK_OK;
  }
  if (st != LK_OK)
    return st;
  lk_err why;
  lk_err_clear(&why);
  lk_secret *pt = NULL;
  Latchkey__V1__SealedValue *s =
      latchkey__v1__sealed_value__unpack(NULL, len, val);
  if (s == NULL) {
    lk_fail(&why, LK_INVALID_ARGUMENT, "it is not a SealedValue");
  } else if (open_audit_key(keys, NULL, s, &pt, &why) == LK_OK) {
    st = lk_audit_key_set(audit, lk_secret_data(pt), lk_secret_len(pt), err);
  }
  if (why.msg[0] != '\0') {
    lk_log(LK_LOG_WARN, "sync_audit_key_unusable",
           "the stored audit key cannot be used (%s): audit lines carry no "
           "secret hashes until the control plane sends it again",
           why.msg);
  }
  lk_secret_free(pt);
  if (s != NULL)
    latchkey__v1__sealed_value__free_unpacked(s, NULL);
  lk_store_value_free(val, len);
  return st;
}

int64_t lk_replica_applier_revision(const lk_replica_applier *a) {
  return atomic_load(&((lk_replica_applier *)a)->revision);
}

void lk_replica_applier_reset(lk_replica_applier *a) {
  drop_snapshot(a);
  drop_audit(a);
  a->awaiting_snapshot = 0;
}

/* Hands a just-stored audit key to the holder and forgets it. */
static void audit_stored(lk_replica_applier *a) {
  if (a->audit != NULL) {
    lk_err err;
    if (lk_audit_key_set(a->audit, lk_secret_data(a->audit_pt),
                         lk_secret_len(a->audit_pt), &err) != LK_OK) {
      lk_log(LK_LOG_ERROR, "sync_audit_key_unusable", "%s", err.msg);
    }
  }
  drop_audit(a);
}

/* Writes b plus the revision (and node key, and an audit key waiting to be
 * stored), then records the revision. */
static lk_status commit(lk_replica_applier *a, lk_store_batch *b, int64_t rev,
                        lk_err *err) {
  unsigned char enc[8];
  encode_revision(rev, enc);
  lk_store_batch_put(b, LK_REPLICA_REVISION_KEY, enc, sizeof(enc));
  if (a->track_node_key) {
    lk_store_batch_put(b, LK_REPLICA_NODE_KEY_KEY, a->node_pk,
                       sizeof(a->node_pk));
  }
  if (a->audit_enc != NULL) {
    lk_store_batch_put(b, LK_REPLICA_AUDIT_KEY_KEY, a->audit_enc,
                       a->audit_enc_len);
  } else if (a->key_mismatch) {
    /* A snapshot moves the store to node_pk without a new audit key: the
     * stored one is sealed to the old key, which a rotation wipes. */
    lk_store_batch_delete(b, LK_REPLICA_AUDIT_KEY_KEY);
    lk_log(LK_LOG_WARN, "sync_audit_key_dropped",
           "the snapshot at revision %lld moves the replica to another node "
           "key and brought no audit key: the stored one (sealed to the old "
           "key) is removed; the control plane sends it again on the next "
           "stream",
           (long long)rev);
  }
  lk_status st = lk_store_write(a->store, b, err);
  if (st == LK_OK) {
    atomic_store(&a->revision, rev);
    /* Every secret now stored came sealed to node_pk (a snapshot replaced
     * the rest, or there was no mismatch to begin with). */
    a->key_mismatch = 0;
    atomic_store(&a->sealed_to_node_key, a->track_node_key);
    if (a->audit_enc != NULL)
      audit_stored(a);
  }
  return st;
}

/* Stores an audit key that came with a batch writing nothing else. */
static lk_status commit_audit_only(lk_replica_applier *a, lk_err *err) {
  lk_store_batch *b = lk_store_batch_new();
  if (b == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  lk_store_batch_put(b, LK_REPLICA_AUDIT_KEY_KEY, a->audit_enc,
                     a->audit_enc_len);
  lk_status st = lk_store_write(a->store, b, err);
  lk_store_batch_destroy(b);
  if (st == LK_OK)
    audit_stored(a);
  return st;
}

static lk_status apply_incremental(lk_replica_applier *a,
                                   const Latchkey__V1__SyncBatch *b,
                                   lk_err *err) {
  int kind = 0;
  lk_status st = LK_OK;
  for (size_t i = 0; i < b->n_puts; i++) {
    const Latchkey__V1__SyncRecord *r = b->puts[i];
    if ((st = check_key(r->key, &kind, err)) != LK_OK ||
        (st = check_record(r->key, kind, &r->value, err)) != LK_OK) {
      return st;
    }
  }
  for (size_t i = 0; i < b->n_deletes; i++) {
    if ((st = check_key(b->deletes[i], &kind, err)) != LK_OK)
      return st;
  }
  lk_store_batch *wb = lk_store_batch_new();
  if (wb == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  /* Puts first, then deletes: a key in both ends up deleted. */
  for (size_t i = 0; i < b->n_puts; i++) {
    lk_store_batch_put(wb, b->puts[i]->key, b->puts[i]->value.data,
                       b->puts[i]->value.len);
  }
  for (size_t i = 0; i < b->n_deletes; i++)
    lk_store_batch_delete(wb, b->deletes[i]);
  st = commit(a, wb, b->revision, err);
  lk_store_batch_destroy(wb);
  if (st == LK_OK) {
    lk_log(LK_LOG_DEBUG, "sync_applied", "revision=%lld puts=%zu deletes=%zu",
           (long long)b->revision, b->n_puts, b->n_deletes);
  }
  return st;
}

static int compare_keys(const void *x, const void *y) {
  return strcmp(*(char *const *)x, *(char *const *)y);
}

typedef struct {
  lk_replica_applier *a;
  size_t removed;
} sweep_ctx;

/* Deletes a stored catalog key the snapshot does not hold. */
static int sweep_one(void *ctx, const char *key, size_t key_len,
                     const unsigned char *val, size_t val_len) {
  (void)key_len;
  (void)val;
  (void)val_len;
  sweep_ctx *sc = ctx;
  /* An empty snapshot has no key array: everything goes (bsearch and
   * qsort must not see a NULL array). */
  if (sc->a->n_snap_keys == 0 ||
      bsearch(&key, sc->a->snap_keys, sc->a->n_snap_keys, sizeof(char *),
              compare_keys) == NULL) {
    lk_store_batch_delete(sc->a->snap, key);
    sc->removed++;
  }
  return 0;
}

static lk_status finish_snapshot(lk_replica_applier *a, int64_t rev,
                                 lk_err *err) {
  if (a->n_snap_keys > 0)
    qsort(a->snap_keys, a->n_snap_keys, sizeof(char *), compare_keys);
  sweep_ctx sc = {a, 0};
  for (int k = 0; k < N_KINDS; k++) {
    lk_status st =
        lk_store_scan(a->store, kinds[k].prefix, sweep_one, &sc, err);
    if (st != LK_OK)
      return st;
  }
  lk_status st = commit(a, a->snap, rev, err);
  if (st == LK_OK) {
    lk_log(LK_LOG_INFO, "sync_snapshot_applied",
           "revision=%lld records=%zu removed=%zu", (long long)rev,
           a->n_snap_keys, sc.removed);
  }
  return st;
}

static lk_status snapshot_part(lk_replica_applier *a,
                               const Latchkey__V1__SyncBatch *b,
                               lk_replica_reply *reply, lk_err *err) {
  if (b->snapshot_begin) {
    drop_snapshot(a);
    a->snap = lk_store_batch_new();
    if (a->snap == NULL)
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    a->in_snapshot = 1;
  } else if (!a->in_snapshot) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "batch %lld ends a snapshot that never began "
                   "(snapshot_end without snapshot_begin)",
                   (long long)b->revision);
  }
  if (b->n_deletes > 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "snapshot batch %lld carries deletes: a snapshot replaces "
                   "the replica and carries puts only",
                   (long long)b->revision);
  }
  for (size_t i = 0; i < b->n_puts; i++) {
    const Latchkey__V1__SyncRecord *r = b->puts[i];
    int kind = 0;
    lk_status st = check_key(r->key, &kind, err);
    if (st == LK_OK)
      st = check_record(r->key, kind, &r->value, err);
    if (st != LK_OK)
      return st;
    size_t klen = strlen(r->key);
    size_t cost = 2 * klen + r->value.len + SNAPSHOT_RECORD_OVERHEAD;
    if (cost > LK_REPLICA_MAX_SNAPSHOT_BYTES - a->snap_bytes) {
      return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                     "snapshot is larger than %u bytes: the replica cannot "
                     "hold it in memory to apply it at once",
                     LK_REPLICA_MAX_SNAPSHOT_BYTES);
    }
    if (a->n_snap_keys == a->cap_snap_keys) {
      size_t cap = a->cap_snap_keys ? 2 * a->cap_snap_keys : 256;
      char **grown = realloc(a->snap_keys, cap * sizeof(*grown));
      if (grown == NULL)
        return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
      a->snap_keys = grown;
      a->cap_snap_keys = cap;
    }
    char *copy = strdup(r->key);
    if (copy == NULL)
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    a->snap_keys[a->n_snap_keys++] = copy;
    a->snap_bytes += cost;
    lk_store_batch_put(a->snap, r->key, r->value.data, r->value.len);
  }
  if (!b->snapshot_end) {
    *reply = LK_REPLICA_REPLY_NONE;
    return LK_OK;
  }
  lk_status st = LK_OK;
  if (b->revision <= 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "snapshot ends with revision %lld: a snapshot needs the etcd "
                 "revision it was read at",
                 (long long)b->revision);
  } else if (b->revision > lk_replica_applier_revision(a)) {
    st = finish_snapshot(a, b->revision, err);
  }
  drop_snapshot(a);
  *reply = LK_REPLICA_REPLY_ACK;
  return st;
}

static lk_status handle_batch(lk_replica_applier *a,
                              const Latchkey__V1__SyncBatch *b,
                              lk_replica_reply *reply, lk_err *err) {
  if (b->heartbeat) {
    if (b->n_puts || b->n_deletes || b->snapshot_begin || b->snapshot_end) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "heartbeat %lld carries changes: a heartbeat is a batch "
                     "with nothing but heartbeat set",
                     (long long)b->revision);
    }
    *reply = LK_REPLICA_REPLY_NONE;
    return LK_OK;
  }
  if (b->snapshot_begin || b->snapshot_end || a->in_snapshot)
    return snapshot_part(a, b, reply, err);
  if (b->revision <= 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "batch has revision %lld: every batch needs the etcd "
                   "revision it brings the replica to",
                   (long long)b->revision);
  }
  if (a->key_mismatch) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "batch %lld is not a snapshot, but the replica's secrets "
                   "are sealed to another node key: a snapshot sealed to the "
                   "key this sidecar presents must come first",
                   (long long)b->revision);
  }
  *reply = LK_REPLICA_REPLY_ACK;
  if (b->revision <= lk_replica_applier_revision(a))
    return LK_OK; /* already applied: ACK again, change nothing */
  return apply_incremental(a, b, err);
}

lk_status lk_replica_applier_handle(lk_replica_applier *a,
                                    const unsigned char *msg, size_t len,
                                    lk_replica_reply *reply, int64_t *revision,
                                    lk_err *err) {
  lk_status st = LK_OK;
  Latchkey__V1__SyncBatch *b = NULL;
  int64_t wire_rev = 0;
  *reply = LK_REPLICA_REPLY_NACK;
  *revision = 0;
  int wire = scan_batch_wire(msg, len, &wire_rev);
  *revision = wire_rev;
  if (len > LK_REPLICA_MAX_MESSAGE_BYTES) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "batch %lld is %zu bytes, over the %u-byte limit of one "
                 "Sync message: split it into several batches",
                 (long long)wire_rev, len, LK_REPLICA_MAX_MESSAGE_BYTES);
    goto done;
  }
  if (wire == 1) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "batch %lld has a key with a NUL byte", (long long)wire_rev);
    goto done;
  }
  if (wire == 0) {
    b = latchkey__v1__sync_batch__unpack(&wiping, len, msg);
  }
  if (b == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "message is not a valid latchkey.v1.SyncBatch");
    goto done;
  }
  *revision = b->revision;
  if (a->awaiting_snapshot && !b->snapshot_begin) {
    *reply = LK_REPLICA_REPLY_SKIP;
    goto done;
  }
  a->awaiting_snapshot = 0;
  if (b->audit_key != NULL &&
      (st = take_audit_key(a, b->revision, b->audit_key, err)) != LK_OK) {
    goto done;
  }
  st = handle_batch(a, b, reply, err);
  /* A batch that wrote nothing (a heartbeat, one already applied) stores
   * its audit key alone; a snapshot part keeps it for the snapshot, and so
   * does a heartbeat while the store is sealed to another node key: the
   * audit key must land with the snapshot that moves meta/node_public_key
   * to the key it is sealed to. */
  if (st == LK_OK && a->audit_enc != NULL && !a->in_snapshot &&
      !a->key_mismatch)
    st = commit_audit_only(a, err);
done:
  if (b != NULL)
    latchkey__v1__sync_batch__free_unpacked(b, &wiping);
  if (st != LK_OK) {
    *reply = LK_REPLICA_REPLY_NACK;
    a->awaiting_snapshot = 1;
    drop_snapshot(a);
    drop_audit(a);
  }
  return st;
}

/* ---- the replica ------------------------------------------------------- */

struct lk_replica {
  char *address;
  char *agent_id;
  char *pem;         /* root certificates, NULL = plaintext */
  char *tls_ca;      /* --tls-ca file name (messages), NULL = plaintext */
  lk_secret *bearer; /* "Bearer <token>" */
  lk_node_keys *keys;
  /* Stream thread: the key presented and the applier's (the same). */
  unsigned char node_pk[LK_SEAL_PUBLIC_KEY_BYTES];
  int64_t max_staleness_ms;
  lk_replica_applier *applier;
  grpc_channel_credentials *creds;
  grpc_completion_queue *cq;
  _Atomic int64_t contact_ms;
  _Atomic int stopping;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int thread_running;
  int grpc_started;
  int failed_attempts; /* stream thread only: attempts since a connection */
  int tls_reported;    /* stream thread only: sync_tls_failed logged since
                          the last connection */
  /* Metrics (NULL without a registry); the _fn ones are detached first
   * thing in lk_replica_destroy. */
  lk_metric *m_revision;
  lk_metric *m_staleness;
  lk_metric *m_applied;
  lk_metric *m_nacks;
  /* Under mu: the channel of the stream now open (NULL between attempts),
   * which Sync/Refresh calls share, and the count of batches ACKed as
   * applied, which applied_cv announces. */
  grpc_channel *live_channel;
  uint64_t applied_seq;
  pthread_cond_t applied_cv;
};

/* One connection attempt: a channel and its call. */
typedef struct {
  lk_replica *r;
  grpc_channel *channel;
  grpc_call *call;
  grpc_metadata md;
  grpc_metadata_array initial_md;
  grpc_metadata_array trailing_md;
  grpc_status_code status;
  grpc_slice details;
  grpc_byte_buffer *send_bb;
  grpc_byte_buffer *recv_bb;
  int outstanding; /* batches started and not yet completed */
  int status_done; /* RECV_STATUS_ON_CLIENT completed */
  int recv_inflight;
  int recv_done; /* the server sent its last message */
  int send_inflight;
  int have_pending; /* an answer waits for the send in flight */
  Latchkey__V1__SyncAck pending;
  char pending_error[sizeof(((lk_err *)0)->msg)];
  int cancelled;
  int closing; /* no snapshot after a NACK: half-close and wind down */
  int close_sent;
  int64_t close_deadline_ms;
  int connected;   /* a batch was accepted on this stream */
  int64_t nack_ms; /* when a NACK left the replica awaiting a snapshot */
  size_t accepted;
} stream;

enum { TAG_SEND = 1, TAG_RECV, TAG_STATUS, TAG_CLOSE };

static void *tag_of(int t) {
  return (void *)(intptr_t)t;
}

static const char *grpc_code_name(grpc_status_code c) {
  static const char *const names[] = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  if ((unsigned)c < sizeof(names) / sizeof(names[0]))
    return names[c];
  return "UNKNOWN";
}

static void cancel(stream *s) {
  if (!s->cancelled) {
    s->cancelled = 1;
    grpc_call_cancel(s->call, NULL);
  }
}

/* Returns 1 when the batch started; else the call is cancelled. */
static int start_batch(stream *s, const grpc_op *ops, size_t n, int tag) {
  if (grpc_call_start_batch(s->call, ops, n, tag_of(tag), NULL) !=
      GRPC_CALL_OK) {
    lk_log(LK_LOG_ERROR, "sync_internal", "grpc refused a batch (tag %d)", tag);
    cancel(s);
    return 0;
  }
  s->outstanding++;
  return 1;
}

/* Packs a SyncRequest into a byte buffer (grpc aborts when out of memory). */
static grpc_byte_buffer *pack_request(const Latchkey__V1__SyncRequest *req) {
  size_t n = latchkey__v1__sync_request__get_packed_size(req);
  grpc_slice slice = grpc_slice_malloc(n);
  latchkey__v1__sync_request__pack(req, GRPC_SLICE_START_PTR(slice));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return bb;
}

static void start_send(stream *s, const Latchkey__V1__SyncRequest *req,
                       int with_metadata) {
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  s->send_bb = pack_request(req);
  if (with_metadata) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 1;
    ops[n].data.send_initial_metadata.metadata = &s->md;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = s->send_bb;
  n++;
  s->send_inflight = start_batch(s, ops, n, TAG_SEND);
  if (!s->send_inflight) {
    grpc_byte_buffer_destroy(s->send_bb);
    s->send_bb = NULL;
  }
}

static void send_answer(stream *s, int64_t revision, int nack,
                        const char *error) {
  Latchkey__V1__SyncAck ack = LATCHKEY__V1__SYNC_ACK__INIT;
  ack.revision = revision;
  ack.nack = nack;
  ack.error = (char *)(error ? error : "");
  if (s->send_inflight) {
    s->pending = ack;
    snprintf(s->pending_error, sizeof(s->pending_error), "%s", ack.error);
    s->pending.error = s->pending_error;
    s->have_pending = 1;
    return;
  }
  Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
  req.ack = &ack;
  start_send(s, &req, 0);
}

static void start_recv(stream *s) {
  if (s->recv_inflight || s->recv_done || s->cancelled)
    return;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &s->recv_bb;
  s->recv_inflight = start_batch(s, &op, 1, TAG_RECV);
}

static void start_close(stream *s) {
  if (s->close_sent || s->cancelled)
    return;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  s->close_sent = 1;
  start_batch(s, &op, 1, TAG_CLOSE);
}

/* Copies the received message into one malloc'd buffer, wiping grpc's
 * slices as it goes. Returns NULL (bytes still wiped) when out of memory. */
static unsigned char *take_message(grpc_byte_buffer *bb, size_t *len) {
  size_t total = grpc_byte_buffer_length(bb);
  unsigned char *buf = malloc(total ? total : 1);
  grpc_byte_buffer_reader reader;
  size_t off = 0;
  *len = 0;
  if (!grpc_byte_buffer_reader_init(&reader, bb)) {
    free(buf);
    return NULL;
  }
  grpc_slice slice;
  while (grpc_byte_buffer_reader_next(&reader, &slice)) {
    size_t n = GRPC_SLICE_LENGTH(slice);
    if (buf != NULL && off + n <= total) {
      memcpy(buf + off, GRPC_SLICE_START_PTR(slice), n);
      off += n;
    }
    lk_wipe(GRPC_SLICE_START_PTR(slice), n);
    grpc_slice_unref(slice);
  }
  grpc_byte_buffer_reader_destroy(&reader);
  *len = off;
  return buf;
}

static void on_message(stream *s, grpc_byte_buffer *bb) {
  lk_replica *r = s->r;
  size_t len = 0;
  unsigned char *msg = take_message(bb, &len);
  if (s->closing || atomic_load(&r->stopping)) {
    lk_wipe_free(msg, len);
    start_recv(s);
    return;
  }
  lk_err err;
  lk_err_clear(&err);
  lk_replica_reply reply = LK_REPLICA_REPLY_NACK;
  int64_t rev = 0;
  lk_status st;
  if (msg == NULL) {
    st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory for a batch");
    reply = LK_REPLICA_REPLY_NACK;
  } else {
    st = lk_replica_applier_handle(r->applier, msg, len, &reply, &rev, &err);
  }
  lk_wipe_free(msg, len);
  if (reply == LK_REPLICA_REPLY_SKIP) {
    lk_log(LK_LOG_DEBUG, "sync_skipped",
           "batch %lld skipped: waiting for the snapshot that follows a NACK",
           (long long)rev);
    start_recv(s);
    return;
  }
  if (st == LK_OK) {
    s->nack_ms = 0;
    atomic_store(&r->contact_ms, lk_now_ms());
    s->accepted++;
    if (!s->connected) {
      s->connected = 1;
      lk_log(LK_LOG_INFO, "sync_connected",
             "streaming from control plane %s as agent %s (revision %lld, "
             "after %d failed attempts)",
             r->address, r->agent_id,
             (long long)lk_replica_applier_revision(r->applier),
             r->failed_attempts);
    }
  }
  if (reply == LK_REPLICA_REPLY_NONE) {
    start_recv(s);
    return;
  }
  if (st == LK_OK && reply == LK_REPLICA_REPLY_ACK &&
      lk_replica_applier_sealed_to_node_key(r->applier)) {
    /* Durable: a rotation to this key may finish. */
    lk_node_keys_replica_sealed(r->keys, r->node_pk);
  }
  if (reply == LK_REPLICA_REPLY_NACK) {
    lk_metric_inc(r->m_nacks, NULL, 1);
    lk_log(LK_LOG_WARN, "sync_nack",
           "refused batch %lld (%s): %s; replica stays at revision %lld "
           "until a snapshot comes",
           (long long)rev, lk_status_name(st), err.msg,
           (long long)lk_replica_applier_revision(r->applier));
    s->nack_ms = lk_now_ms();
    send_answer(s, rev, 1, err.msg);
    return;
  }
  lk_metric_inc(r->m_applied, NULL, 1);
  pthread_mutex_lock(&r->mu);
  r->applied_seq++;
  pthread_cond_broadcast(&r->applied_cv);
  pthread_mutex_unlock(&r->mu);
  send_answer(s, rev, 0, NULL);
  /* The next receive starts once the ACK is handed over (on_send_done). */
}

static void on_send_done(stream *s, int success) {
  s->send_inflight = 0;
  grpc_byte_buffer_destroy(s->send_bb);
  s->send_bb = NULL;
  if (!success) {
    /* The call is over; its status says why. */
    cancel(s);
    return;
  }
  if (s->have_pending) {
    s->have_pending = 0;
    Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
    req.ack = &s->pending;
    start_send(s, &req, 0);
    return;
  }
  if (s->closing)
    start_close(s);
  start_recv(s);
}

/* No snapshot followed a NACK in time: end this stream so the next one
 * resumes from the applied revision. */
static void begin_resync(stream *s) {
  if (s->closing)
    return;
  lk_log(LK_LOG_WARN, "sync_resync",
         "no snapshot within %d ms of a NACK: reconnecting to control plane "
         "%s",
         LK_REPLICA_RESYNC_MS, s->r->address);
  s->closing = 1;
  s->close_deadline_ms = lk_now_ms() + CLOSE_GRACE_MS;
  if (!s->send_inflight)
    start_close(s);
}

/* Creates the channel and call and starts the first batches. */
static int open_stream(stream *s) {
  lk_replica *r = s->r;
  grpc_arg args[11];
  memset(args, 0, sizeof(args));
  static const struct {
    const char *key;
    int value;
  } ints[] = {
      {GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, (int)GRPC_RECEIVE_LIMIT},
      {GRPC_ARG_KEEPALIVE_TIME_MS, KEEPALIVE_TIME_MS},
      {GRPC_ARG_KEEPALIVE_TIMEOUT_MS, KEEPALIVE_TIMEOUT_MS},
      {GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0},
      {GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1},
      {GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, CONNECT_TIMEOUT_MS},
      {GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, LK_REPLICA_BACKOFF_INITIAL_MS},
      {GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, LK_REPLICA_BACKOFF_MAX_MS},
      {GRPC_ARG_ENABLE_RETRIES, 0},
      /* A fixed receive window instead of BDP-grown ones: what grpc holds
       * for a control plane that outpaces the applier stays bounded. */
      {GRPC_ARG_HTTP2_BDP_PROBE, 0},
      {GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, STREAM_WINDOW_BYTES},
  };
  size_t n_args = sizeof(ints) / sizeof(ints[0]);
  for (size_t i = 0; i < n_args; i++) {
    args[i].type = GRPC_ARG_INTEGER;
    args[i].key = (char *)ints[i].key;
    args[i].value.integer = ints[i].value;
  }
  grpc_channel_args chargs = {n_args, args};
  s->channel = grpc_channel_create(r->address, r->creds, &chargs);
  if (s->channel == NULL)
    return -1;
  pthread_mutex_lock(&r->mu);
  r->live_channel = s->channel;
  pthread_mutex_unlock(&r->mu);
  grpc_slice method = grpc_slice_from_static_string(STREAM_METHOD);
  s->call = grpc_channel_create_call(s->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                     r->cq, method, NULL,
                                     gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  if (s->call == NULL)
    return -1;
  s->md.key = grpc_slice_from_static_string("authorization");
  s->md.value = grpc_slice_from_static_buffer(lk_secret_data(r->bearer),
                                              lk_secret_len(r->bearer));

  Latchkey__V1__SyncRequest hello = LATCHKEY__V1__SYNC_REQUEST__INIT;
  hello.agent_id = r->agent_id;
  hello.node_public_key.data = r->node_pk;
  hello.node_public_key.len = sizeof(r->node_pk);
  hello.have_revision = lk_replica_applier_revision(r->applier);
  start_send(s, &hello, 1);

  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[0].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
  ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[1].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
  ops[1].data.recv_status_on_client.status = &s->status;
  ops[1].data.recv_status_on_client.status_details = &s->details;
  start_batch(s, ops, 2, TAG_STATUS);
  start_recv(s);
  return 0;
}

/* Returns 1 when the node keys now present another key than the one this
 * stream was opened with (a rotation started at run time). */
static int node_key_moved(lk_replica *r) {
  unsigned char pk[LK_SEAL_PUBLIC_KEY_BYTES];
  lk_node_keys_presented(r->keys, pk);
  return !lk_ct_equal(pk, sizeof(pk), r->node_pk, sizeof(r->node_pk));
}

/* Before a connection attempt: takes the key to present from the node
 * keys, and when it moved, shows it to the applier, which then asks for a
 * snapshot unless the replica is sealed to it already. */
static void take_node_key(lk_replica *r) {
  unsigned char pk[LK_SEAL_PUBLIC_KEY_BYTES];
  lk_node_keys_presented(r->keys, pk);
  if (lk_ct_equal(pk, sizeof(pk), r->node_pk, sizeof(r->node_pk)))
    return;
  char fp[LK_SEAL_FINGERPRINT_CHARS + 1];
  lk_seal_fingerprint(pk, fp);
  memcpy(r->node_pk, pk, sizeof(pk));
  lk_err err;
  lk_err_clear(&err);
  if (lk_replica_applier_set_node_key(r->applier, pk, &err) != LK_OK) {
    lk_log(LK_LOG_ERROR, "sync_internal",
           "cannot re-read the replica for node key %s: %s", fp, err.msg);
  }
  lk_log(LK_LOG_INFO, "sync_node_key_presented",
         "presenting node key %s to control plane %s from revision %lld", fp,
         r->address, (long long)lk_replica_applier_revision(r->applier));
}

/* Runs one connection attempt until its call is over. Returns 1 when the
 * stream accepted a batch and did not end waiting for a snapshot after a
 * NACK (the next attempt may come quickly), else 0. */
static int run_stream(lk_replica *r) {
  stream s;
  memset(&s, 0, sizeof(s));
  s.r = r;
  s.status = GRPC_STATUS_UNKNOWN;
  s.details = grpc_empty_slice();
  grpc_metadata_array_init(&s.initial_md);
  grpc_metadata_array_init(&s.trailing_md);
  lk_replica_applier_reset(r->applier);
  take_node_key(r);
  lk_log(LK_LOG_DEBUG, "sync_connecting",
         "connecting to control plane %s as agent %s from revision %lld",
         r->address, r->agent_id,
         (long long)lk_replica_applier_revision(r->applier));

  if (open_stream(&s) != 0) {
    lk_log(LK_LOG_ERROR, "sync_disconnected",
           "grpc could not create a channel or call to %s", r->address);
    goto cleanup;
  }
  while (!(s.status_done && s.outstanding == 0)) {
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_millis(POLL_MS, GPR_TIMESPAN));
    if (atomic_load(&r->stopping))
      cancel(&s);
    if (s.nack_ms != 0 && lk_now_ms() - s.nack_ms >= LK_REPLICA_RESYNC_MS)
      begin_resync(&s);
    if (s.closing && lk_now_ms() >= s.close_deadline_ms)
      cancel(&s);
    if (!s.cancelled && node_key_moved(r)) {
      lk_log(LK_LOG_INFO, "sync_rekey",
             "the node key to present changed: reconnecting to control "
             "plane %s with it",
             r->address);
      cancel(&s);
    }
    grpc_event ev = grpc_completion_queue_next(r->cq, deadline, NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT)
      continue;
    if (ev.type != GRPC_OP_COMPLETE) {
      lk_log(LK_LOG_ERROR, "sync_internal",
             "completion queue shut down under a live stream");
      break;
    }
    s.outstanding--;
    switch ((int)(intptr_t)ev.tag) {
      case TAG_SEND:
        on_send_done(&s, ev.success);
        break;
      case TAG_RECV:
        s.recv_inflight = 0;
        if (!ev.success || s.recv_bb == NULL) {
          s.recv_done = 1;
        } else {
          grpc_byte_buffer *bb = s.recv_bb;
          s.recv_bb = NULL;
          on_message(&s, bb);
          grpc_byte_buffer_destroy(bb);
        }
        break;
      case TAG_STATUS:
        s.status_done = 1;
        /* Whatever is still in flight ends with the call. */
        cancel(&s);
        break;
      default: /* TAG_CLOSE */
        break;
    }
  }
  {
    int stopping = atomic_load(&r->stopping);
    size_t dn = GRPC_SLICE_LENGTH(s.details);
    int dlen = (int)(dn > 300 ? 300 : dn);
    const char *dptr = (const char *)GRPC_SLICE_START_PTR(s.details);
    long long rev = (long long)lk_replica_applier_revision(r->applier);
    if (s.connected) {
      r->failed_attempts = 0;
      r->tls_reported = 0;
      lk_log(stopping ? LK_LOG_INFO : LK_LOG_WARN, "sync_disconnected",
             "stream to control plane %s ended: %s%s%.*s (%zu batches "
             "accepted; replica at revision %lld)",
             r->address, grpc_code_name(s.status), dn ? ": " : "", dlen, dptr,
             s.accepted, rev);
    } else {
      /* One line when the control plane goes away, not one per retry. */
      r->failed_attempts++;
      lk_log(r->failed_attempts == 1 && !stopping ? LK_LOG_WARN : LK_LOG_DEBUG,
             "sync_connect_failed",
             "cannot stream from control plane %s: %s%s%.*s (attempt %d; "
             "serving the replica at revision %lld; retrying every %d ms at "
             "most)",
             r->address, grpc_code_name(s.status), dn ? ": " : "", dlen, dptr,
             r->failed_attempts, rev, LK_REPLICA_BACKOFF_MAX_MS);
      if (s.status == GRPC_STATUS_UNAUTHENTICATED && r->failed_attempts == 1) {
        lk_log(LK_LOG_ERROR, "sync_unauthenticated",
               "control plane %s refused the node token: check "
               "--control-plane-token-file against its --node-token-file",
               r->address);
      }
      /* Once per streak of failures: the reason may cost a probing
       * handshake (lib/tls.c). */
      char why[sizeof(((lk_err *)0)->msg)];
      if (!stopping && !r->tls_reported &&
          s.status == GRPC_STATUS_UNAVAILABLE &&
          lk_tls_explain_failure(r->address, r->pem, r->tls_ca, dptr, dn, why,
                                 sizeof(why))) {
        r->tls_reported = 1;
        lk_log(LK_LOG_ERROR, "sync_tls_failed", "%s", why);
      }
    }
  }
cleanup:
  if (s.call != NULL)
    grpc_call_unref(s.call);
  if (s.channel != NULL) {
    /* A Refresh call made on it holds its own reference. */
    pthread_mutex_lock(&r->mu);
    r->live_channel = NULL;
    pthread_mutex_unlock(&r->mu);
    grpc_channel_destroy(s.channel);
  }
  if (s.send_bb != NULL)
    grpc_byte_buffer_destroy(s.send_bb);
  if (s.recv_bb != NULL)
    grpc_byte_buffer_destroy(s.recv_bb);
  grpc_metadata_array_destroy(&s.initial_md);
  grpc_metadata_array_destroy(&s.trailing_md);
  grpc_slice_unref(s.details);
  return s.connected && s.nack_ms == 0;
}

/* Sleeps ms unless lk_replica_stop comes first. */
static void backoff_sleep(lk_replica *r, int64_t ms) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += ms / 1000;
  until.tv_nsec += (ms % 1000) * 1000000;
  if (until.tv_nsec >= 1000000000) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&r->mu);
  while (!atomic_load(&r->stopping)) {
    if (pthread_cond_timedwait(&r->cv, &r->mu, &until) == ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&r->mu);
}

static void *stream_thread(void *arg) {
  lk_replica *r = arg;
  int64_t backoff = LK_REPLICA_BACKOFF_INITIAL_MS;
  while (!atomic_load(&r->stopping)) {
    if (run_stream(r))
      backoff = LK_REPLICA_BACKOFF_INITIAL_MS;
    if (atomic_load(&r->stopping))
      break;
    /* Full jitter over the upper half: [backoff/2, backoff]. */
    int64_t delay =
        backoff / 2 + (int64_t)randombytes_uniform((uint32_t)(backoff / 2 + 1));
    lk_log(LK_LOG_DEBUG, "sync_backoff", "reconnecting in %lld ms",
           (long long)delay);
    backoff_sleep(r, delay);
    backoff = backoff * 2 > LK_REPLICA_BACKOFF_MAX_MS
                  ? LK_REPLICA_BACKOFF_MAX_MS
                  : backoff * 2;
  }
  return NULL;
}

/* ---- configuration files ------------------------------------------------ */

/* Reads at most cap bytes of path into guarded memory. */
static lk_status read_capped(const char *path, const char *what, size_t cap,
                             lk_secret **out, lk_err *err) {
  *out = NULL;
  lk_status st = LK_OK;
  lk_secret_buf *b = lk_secret_buf_new(cap);
  FILE *f = fopen(path, "rb");
  if (b == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  if (f == NULL) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot read %s %s: %s", what,
                 path, strerror(errno));
    goto done;
  }
  unsigned char chunk[512];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
    lk_err ignored;
    if (lk_secret_buf_append(b, chunk, n, &ignored) != LK_OK) {
      st = lk_fail(err, LK_INVALID_ARGUMENT, "%s %s is larger than %zu bytes",
                   what, path, cap);
      goto done;
    }
  }
  if (ferror(f)) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot read %s %s", what, path);
    goto done;
  }
  *out = lk_secret_buf_finish(b);
  b = NULL;
  if (*out == NULL)
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
done:
  lk_wipe(chunk, sizeof(chunk));
  lk_secret_buf_free(b);
  if (f != NULL)
    fclose(f);
  return st;
}

/* Builds "Bearer <token>" from the token file (trailing whitespace cut). */
static lk_status load_bearer(const char *path, lk_secret **out, lk_err *err) {
  static const char prefix[] = "Bearer ";
  lk_secret *file = NULL;
  *out = NULL;
  lk_status st = read_capped(path, "--control-plane-token-file",
                             MAX_TOKEN_FILE_BYTES, &file, err);
  if (st != LK_OK)
    return st;
  const unsigned char *p = lk_secret_data(file);
  size_t n = lk_secret_len(file);
  while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ' ||
                   p[n - 1] == '\t')) {
    n--;
  }
  for (size_t i = 0; i < n && st == LK_OK; i++) {
    if (p[i] < 0x21 || p[i] > 0x7e) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "--control-plane-token-file %s holds a space or control "
                   "character: a token is one line of printable ASCII",
                   path);
    }
  }
  if (st == LK_OK && n < MIN_TOKEN_BYTES) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "--control-plane-token-file %s holds a token shorter than %d "
                 "characters",
                 path, MIN_TOKEN_BYTES);
  }
  if (st == LK_OK) {
    *out = lk_secret_new(sizeof(prefix) - 1 + n);
    if (*out == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    } else {
      memcpy(lk_secret_mut(*out), prefix, sizeof(prefix) - 1);
      memcpy(lk_secret_mut(*out) + sizeof(prefix) - 1, p, n);
    }
  }
  lk_secret_free(file);
  return st;
}

static lk_status load_pem(const char *path, char **out, lk_err *err) {
  lk_secret *file = NULL;
  *out = NULL;
  lk_status st = read_capped(path, "--tls-ca", MAX_CA_FILE_BYTES, &file, err);
  if (st != LK_OK)
    return st;
  if (strstr(lk_secret_str(file), "-----BEGIN CERTIFICATE-----") == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "--tls-ca %s holds no PEM certificate (-----BEGIN "
                 "CERTIFICATE-----)",
                 path);
  } else if ((*out = strdup(lk_secret_str(file))) == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  lk_secret_free(file);
  return st;
}

static lk_status check_address(const char *address, lk_err *err) {
  if (address == NULL || address[0] == '\0') {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--control-plane needs an address (host:port or "
                   "unix:/path)");
  }
  if (strncmp(address, "unix:", 5) == 0) {
    size_t n = strlen(address + 5);
    if (n == 0 || n > UNIX_PATH_MAX_LEN) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "--control-plane unix socket path must be 1 to %d bytes",
                     UNIX_PATH_MAX_LEN);
    }
  }
  return LK_OK;
}

static int is_local_address(const char *a) {
  return strncmp(a, "unix:", 5) == 0 || strncmp(a, "127.", 4) == 0 ||
         strncmp(a, "localhost:", 10) == 0 || strncmp(a, "[::1]:", 6) == 0 ||
         strncmp(a, "ipv4:127.", 9) == 0;
}

/* ---- replica API ----------------------------------------------------------
 */

/* Scrape time: the revision applied and durable in the store. */
static void collect_revision(void *ctx, lk_metrics_emitter *e) {
  lk_replica *r = ctx;
  lk_metrics_emit(e, NULL, (double)lk_replica_applier_revision(r->applier));
}

/* Scrape time: seconds since the last batch or heartbeat was accepted. */
static void collect_staleness(void *ctx, lk_metrics_emitter *e) {
  lk_replica *r = ctx;
  int64_t age = lk_now_ms() - atomic_load(&r->contact_ms);
  lk_metrics_emit(e, NULL, (double)(age > 0 ? age : 0) / 1000.0);
}

/* Registers the replica's metrics in m (none when m is NULL). */
static lk_status register_metrics(lk_replica *r, lk_metrics *m, lk_err *err) {
  lk_status st = lk_metrics_gauge_fn(
      m, "latchkey_replica_revision",
      "The control plane (etcd) revision this replica has applied.", NULL, 0,
      collect_revision, r, &r->m_revision, err);
  if (st == LK_OK)
    st = lk_metrics_gauge_fn(
        m, "latchkey_replica_staleness_seconds",
        "Seconds since the replica last accepted a batch or heartbeat from "
        "the control plane (--max-staleness refuses calls past its limit).",
        NULL, 0, collect_staleness, r, &r->m_staleness, err);
  if (st == LK_OK)
    st = lk_metrics_counter(m, "latchkey_replica_applied_batches_total",
                            "Sync batches applied (or found applied) and "
                            "ACKed.",
                            NULL, 0, &r->m_applied, err);
  if (st == LK_OK)
    st = lk_metrics_counter(m, "latchkey_replica_nacks_total",
                            "Sync batches refused with a NACK.", NULL, 0,
                            &r->m_nacks, err);
  return st;
}

lk_status lk_replica_start(const lk_replica_config *cfg, lk_store *store,
                           lk_replica **out, lk_err *err) {
  lk_status st = LK_OK;
  *out = NULL;
  if ((st = check_address(cfg->control_plane, err)) != LK_OK)
    return st;
  if (cfg->agent_id == NULL || !lk_catalog_valid_id(cfg->agent_id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--agent-id must be a valid id to follow a control plane");
  }
  if (cfg->token_file == NULL || cfg->token_file[0] == '\0') {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--control-plane needs --control-plane-token-file");
  }
  if (cfg->keys == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "replica: no node keys");
  }
  if (cfg->max_staleness_ms < 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--max-staleness must not be negative");
  }
  lk_replica *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cv, &ca);
  pthread_cond_init(&r->applied_cv, &ca);
  pthread_condattr_destroy(&ca);
  r->keys = cfg->keys;
  lk_node_keys_presented(r->keys, r->node_pk);
  r->max_staleness_ms = cfg->max_staleness_ms;
  atomic_store(&r->contact_ms, lk_now_ms());
  r->address = strdup(cfg->control_plane);
  r->agent_id = strdup(cfg->agent_id);
  if (r->address == NULL || r->agent_id == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto fail;
  }
  if ((st = load_bearer(cfg->token_file, &r->bearer, err)) != LK_OK)
    goto fail;
  if (cfg->tls_ca != NULL && cfg->tls_ca[0] != '\0' &&
      (st = load_pem(cfg->tls_ca, &r->pem, err)) != LK_OK) {
    goto fail;
  }
  if (r->pem != NULL && (r->tls_ca = strdup(cfg->tls_ca)) == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto fail;
  }
  if ((st = lk_replica_applier_new(store, r->node_pk, &r->applier, err)) !=
          LK_OK ||
      (st = lk_replica_applier_use_audit(r->applier, cfg->keys, cfg->audit,
                                         err)) != LK_OK)
    goto fail;
  if ((st = register_metrics(r, cfg->metrics, err)) != LK_OK)
    goto fail;
  grpc_init();
  r->grpc_started = 1;
  r->creds = r->pem ? grpc_ssl_credentials_create(r->pem, NULL, NULL, NULL)
                    : grpc_insecure_credentials_create();
  r->cq = grpc_completion_queue_create_for_next(NULL);
  if (r->creds == NULL || r->cq == NULL) {
    st = lk_fail(err, LK_INTERNAL, "grpc could not set up the Sync client");
    goto fail;
  }
  if (r->pem == NULL && !is_local_address(r->address)) {
    lk_log(LK_LOG_WARN, "sync_plaintext",
           "the node token goes to control plane %s without TLS: give "
           "--tls-ca to verify and encrypt the connection",
           r->address);
  }
  if (pthread_create(&r->thread, NULL, stream_thread, r) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot start the Sync thread");
    goto fail;
  }
  r->thread_running = 1;
  char limit[64] = "off";
  if (r->max_staleness_ms > 0) {
    snprintf(limit, sizeof(limit), "%lld ms", (long long)r->max_staleness_ms);
  }
  lk_log(LK_LOG_INFO, "sync_started",
         "replica of control plane %s at revision %lld (max staleness %s)",
         r->address, (long long)lk_replica_applier_revision(r->applier), limit);
  *out = r;
  return LK_OK;
fail:
  lk_replica_destroy(r);
  return st;
}

void lk_replica_stop(lk_replica *r) {
  if (r == NULL)
    return;
  pthread_mutex_lock(&r->mu);
  atomic_store(&r->stopping, 1);
  pthread_cond_broadcast(&r->cv);
  pthread_cond_broadcast(&r->applied_cv);
  pthread_mutex_unlock(&r->mu);
  if (r->thread_running) {
    pthread_join(r->thread, NULL);
    r->thread_running = 0;
  }
}

void lk_replica_destroy(lk_replica *r) {
  if (r == NULL)
    return;
  lk_metric_detach(r->m_revision);
  lk_metric_detach(r->m_staleness);
  lk_replica_stop(r);
  if (r->cq != NULL) {
    grpc_completion_queue_shutdown(r->cq);
    while (grpc_completion_queue_next(r->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
                                      NULL)
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(r->cq);
  }
  if (r->creds != NULL)
    grpc_channel_credentials_release(r->creds);
  if (r->grpc_started)
    grpc_shutdown();
  lk_replica_applier_destroy(r->applier);
  lk_secret_free(r->bearer);
  free(r->pem);
  free(r->tls_ca);
  free(r->address);
  free(r->agent_id);
  pthread_cond_destroy(&r->cv);
  pthread_cond_destroy(&r->applied_cv);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

int64_t lk_replica_revision(const lk_replica *r) {
  return lk_replica_applier_revision(r->applier);
}

int lk_replica_too_stale(const lk_replica *r, lk_err *err) {
  if (r->max_staleness_ms <= 0)
    return 0;
  int64_t age = lk_now_ms() - atomic_load(&((lk_replica *)r)->contact_ms);
  if (age <= r->max_staleness_ms)
    return 0;
  lk_fail(err, LK_FAILED_PRECONDITION,
          "no contact with the control plane for %lld ms (limit "
          "--max-staleness %lld ms): calls are refused until it is back",
          (long long)age, (long long)r->max_staleness_ms);
  return 1;
}

/* ---- Sync/Refresh and applied batches ------------------------------------
 */

/* Maps a grpc status of the control plane to the status a caller acts on:
 * the codes Refresh documents keep their meaning, anything else is the
 * control plane being unavailable. */
static lk_status status_of_grpc(grpc_status_code c) {
  switch (c) {
    case GRPC_STATUS_OK:
      return LK_OK;
    case GRPC_STATUS_FAILED_PRECONDITION:
      return LK_FAILED_PRECONDITION;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
      return LK_DEADLINE_EXCEEDED;
    case GRPC_STATUS_PERMISSION_DENIED:
      return LK_PERMISSION_DENIED;
    case GRPC_STATUS_UNAUTHENTICATED:
      return LK_UNAUTHENTICATED;
    case GRPC_STATUS_NOT_FOUND:
      return LK_NOT_FOUND;
    case GRPC_STATUS_INVALID_ARGUMENT:
      return LK_INVALID_ARGUMENT;
    default:
      return LK_UNAVAILABLE;
  }
}

/* Copies at most cap - 1 printable ASCII bytes of a status detail into out
 * (anything else becomes '?'): a message from the network goes into logs
 * and hints only in this form. */
static void printable(const grpc_slice *details, char *out, size_t cap) {
  size_t n = GRPC_SLICE_LENGTH(*details);
  const unsigned char *p = GRPC_SLICE_START_PTR(*details);
  if (n > cap - 1)
    n = cap - 1;
  for (size_t i = 0; i < n; i++)
    out[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
  out[n] = '\0';
}

lk_status lk_replica_refresh(lk_replica *r, const char *credential_id,
                             uint64_t generation, int64_t deadline_ms,
                             uint64_t *now_generation, lk_err *err) {
  lk_status st = LK_OK;
  grpc_call *call = NULL;
  grpc_completion_queue *cq = NULL;
  grpc_byte_buffer *send_bb = NULL, *recv_bb = NULL;
  grpc_metadata_array initial_md, trailing_md;
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  unsigned char *msg = NULL;
  size_t msg_len = 0;
  grpc_metadata_array_init(&initial_md);
  grpc_metadata_array_init(&trailing_md);
  *now_generation = 0;

  int64_t left = deadline_ms - lk_now_ms();
  if (left <= 0) {
    st = lk_fail(err, LK_DEADLINE_EXCEEDED,
                 "no time left in the call to ask for a refresh");
    goto done;
  }
  cq = grpc_completion_queue_create_for_next(NULL);
  if (cq == NULL) {
    st = lk_fail(err, LK_INTERNAL, "grpc could not make a completion queue");
    goto done;
  }
  gpr_timespec deadline = gpr_time_add(
      gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(left, GPR_TIMESPAN));
  grpc_slice method = grpc_slice_from_static_string(REFRESH_METHOD);
  pthread_mutex_lock(&r->mu);
  if (r->live_channel != NULL && !atomic_load(&r->stopping)) {
    call =
        grpc_channel_create_call(r->live_channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                 cq, method, NULL, deadline, NULL);
  }
  pthread_mutex_unlock(&r->mu);
  if (call == NULL) {
    /* The new token could not arrive without a stream either. */
    st = lk_fail(err, LK_UNAVAILABLE,
                 "not connected to control plane %s (no Sync stream open)",
                 r->address);
    goto done;
  }

  Latchkey__V1__RefreshRequest req = LATCHKEY__V1__REFRESH_REQUEST__INIT;
  req.agent_id = r->agent_id;
  req.credential_id = (char *)credential_id;
  req.generation = generation;
  size_t n = latchkey__v1__refresh_request__get_packed_size(&req);
  grpc_slice slice = grpc_slice_malloc(n);
  latchkey__v1__refresh_request__pack(&req, GRPC_SLICE_START_PTR(slice));
  send_bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);

  grpc_metadata md;
  memset(&md, 0, sizeof(md));
  md.key = grpc_slice_from_static_string("authorization");
  md.value = grpc_slice_from_static_buffer(lk_secret_data(r->bearer),
                                           lk_secret_len(r->bearer));
  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = 1;
  ops[0].data.send_initial_metadata.metadata = &md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv_bb;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  if (grpc_call_start_batch(call, ops, 6, tag_of(TAG_SEND), NULL) !=
      GRPC_CALL_OK) {
    st = lk_fail(err, LK_INTERNAL, "grpc refused the Refresh call");
    goto done;
  }
  /* The call's deadline ends it; lk_replica_stop cancels it sooner. */
  int cancelled = 0;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(
        cq,
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_millis(POLL_MS, GPR_TIMESPAN)),
        NULL);
    if (ev.type == GRPC_OP_COMPLETE)
      break;
    if (!cancelled && atomic_load(&r->stopping)) {
      cancelled = 1;
      grpc_call_cancel(call, NULL);
    }
  }
  if (status != GRPC_STATUS_OK) {
    char why[256];
    printable(&details, why, sizeof(why));
    st =
        lk_fail(err, status_of_grpc(status), "control plane %s answered %s%s%s",
                r->address, grpc_code_name(status), why[0] ? ": " : "", why);
    goto done;
  }
  if (recv_bb == NULL || grpc_byte_buffer_length(recv_bb) >
                             LK_REPLICA_MAX_REFRESH_RESPONSE_BYTES) {
    st = lk_fail(err, LK_UNAVAILABLE,
                 "control plane %s answered Refresh with no message or one "
                 "over %u bytes",
                 r->address, LK_REPLICA_MAX_REFRESH_RESPONSE_BYTES);
    goto done;
  }
  msg = take_message(recv_bb, &msg_len);
  Latchkey__V1__RefreshResponse *resp =
      msg != NULL ? latchkey__v1__refresh_response__unpack(NULL, msg_len, msg)
                  : NULL;
  if (resp == NULL) {
    st = lk_fail(err, LK_UNAVAILABLE,
                 "control plane %s answered Refresh with something that is "
                 "not a latchkey.v1.RefreshResponse",
                 r->address);
    goto done;
  }
  *now_generation = resp->generation;
  latchkey__v1__refresh_response__free_unpacked(resp, NULL);
done:
  free(msg);
  if (send_bb != NULL)
    grpc_byte_buffer_destroy(send_bb);
  if (recv_bb != NULL)
    grpc_byte_buffer_destroy(recv_bb);
  if (call != NULL)
    grpc_call_unref(call);
  if (cq != NULL) {
    grpc_completion_queue_shutdown(cq);
    while (
        grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
            .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
  }
  grpc_metadata_array_destroy(&initial_md);
  grpc_metadata_array_destroy(&trailing_md);
  grpc_slice_unref(details);
  return st;
}

uint64_t lk_replica_applied_count(lk_replica *r) {
  pthread_mutex_lock(&r->mu);
  uint64_t seq = r->applied_seq;
  pthread_mutex_unlock(&r->mu);
  return seq;
}

uint64_t lk_replica_wait_applied(lk_replica *r, uint64_t seen,
                                 int64_t deadline_ms) {
  int64_t ms = deadline_ms - lk_now_ms();
  if (ms < 0)
    ms = 0;
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += ms / 1000;
  until.tv_nsec += (ms % 1000) * 1000000;
  if (until.tv_nsec >= 1000000000) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&r->mu);
  while (r->applied_seq == seen && !atomic_load(&r->stopping)) {
    if (pthread_cond_timedwait(&r->applied_cv, &r->mu, &until) == ETIMEDOUT)
      break;
  }
  uint64_t seq = r->applied_seq;
  pthread_mutex_unlock(&r->mu);
  return seq;
}
