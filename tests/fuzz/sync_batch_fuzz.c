/*
 * sync_batch_fuzz.c - fuzzes the replica applier (sidecar/replica): every
 * byte a control plane sends a sidecar in replica mode ends up here.
 *
 * The input is a sequence of chunks, each a 2-byte big-endian length and
 * that many bytes (fewer when the input ends first). A chunk of length 0
 * resets the applier (lk_replica_applier_reset, as a new stream does);
 * every other chunk is one SyncBatch encoding handed to
 * lk_replica_applier_handle. All chunks of one input go to one applier
 * over one in-memory store, opened once per process and emptied before
 * each input, so each input starts from an empty replica. The applier is
 * created with a real node key, written once per process from a fixed
 * X25519 secret key (FUZZ_NODE_SK, which make_seeds.py seals audit keys
 * to), so the node key record is written and checked, and audit keys
 * (SyncBatch.audit_key) are opened and stored; each input gets a fresh
 * audit key holder. LK_FUZZ_VERBOSE=1 prints each message's reply.
 *
 * Invariants (a break traps), checked after every handled message:
 * - The store's "meta/revision" (8 bytes big-endian, absent = 0) equals
 *   lk_replica_applier_revision.
 * - The status is LK_OK exactly when the reply is not NACK; a NACK carries
 *   a non-empty reason.
 * - Only an ACK changes a record: after a NACK, SKIP or NONE (heartbeat,
 *   snapshot part) a digest of every key and value but "meta/audit_key" is
 *   what it was before, and after a NACK or SKIP so is "meta/audit_key".
 * - Every key in the store starts with a catalog prefix (tool/, type/,
 *   cred/, budget/, bind/) or is one of the three meta keys.
 * - The audit key holder has a key exactly when the store has
 *   "meta/audit_key", which then is a SealedValue that opens with the node
 *   key to the 32 bytes the holder hashes with.
 */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/audit.h"
#include "lib/log.h"
#include "lib/seal.h"
#include "lib/status.h"
#include "lib/store.h"
#include "sidecar/node_keys.h"
#include "sidecar/replica.h"
#include "tests/fuzz/fuzz_target.h"

#define DIGEST_BYTES 32

/* The node's X25519 secret key; make_seeds.py seals audit keys to its
 * public key. */
#define FUZZ_NODE_SK "LKFUZZ-node-secret-key-00000001!"

static const char *const allowed_prefixes[] = {"tool/", "type/", "cred/",
                                               "budget/", "bind/"};

static lk_store *store;
static lk_node_keys *node_keys;
static unsigned char node_pk[32];
static char key_dir[1024];

static void check(int ok) {
  if (!ok) {
    __builtin_trap();
  }
}

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void close_store(void) {
  lk_store_close(store);
  store = NULL;
  lk_node_keys_destroy(node_keys);
  node_keys = NULL;
  if (key_dir[0] != '\0') {
    nftw(key_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
  }
}

/* Writes the node key file for FUZZ_NODE_SK in a fresh temp dir and loads
 * it. */
static void open_node_key(void) {
  lk_err err;
  unsigned char sk[32];
  char pk64[64];
  char sk64[64];
  char text[256];
  char path[1100];
  const char *tmp = getenv("TEST_TMPDIR");
  if (tmp == NULL || tmp[0] == '\0') {
    tmp = getenv("TMPDIR");
  }
  snprintf(key_dir, sizeof(key_dir), "%s/lk-sync-fuzz.XXXXXX",
           tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
  check(mkdtemp(key_dir) != NULL);
  _Static_assert(sizeof(FUZZ_NODE_SK) - 1 == 32, "node secret key size");
  memcpy(sk, FUZZ_NODE_SK, sizeof(sk));
  check(crypto_scalarmult_base(node_pk, sk) == 0);
  sodium_bin2base64(pk64, sizeof(pk64), node_pk, 32,
                    sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(sk64, sizeof(sk64), sk, 32, sodium_base64_VARIANT_ORIGINAL);
  int n = snprintf(text, sizeof(text),
                   "latchkey-node-key v1\nkey_id 7\npublic %s\nsecret %s\n",
                   pk64, sk64);
  check(n > 0 && (size_t)n < sizeof(text));
  snprintf(path, sizeof(path), "%s/node.key", key_dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  check(fd >= 0);
  check(write(fd, text, (size_t)n) == n);
  close(fd);
  lk_node_keys_config cfg = {.path = path, .replica = 1};
  check(lk_node_keys_open(&cfg, &node_keys, &err) == LK_OK);
  unsigned char shown[32];
  lk_node_keys_presented(node_keys, shown);
  check(memcmp(shown, node_pk, sizeof(shown)) == 0);
}

/* Opens the process's in-memory store on first use. */
static void init_store(void) {
  lk_err err;
  if (store != NULL) {
    return;
  }
  check(sodium_init() >= 0);
  /* The applier logs every snapshot and NACK; fuzzing needs none of it. */
  if (getenv("LK_FUZZ_VERBOSE") == NULL) {
    check(lk_log_set_level_name("error") == 0);
  }
  check(lk_store_open_memory("/sync_batch_fuzz", &store, &err) == LK_OK);
  open_node_key();
  atexit(close_store);
}

/* Keys collected for emptying the store. */
typedef struct {
  lk_store_batch *batch;
} clear_ctx;

static int clear_one(void *ctx, const char *key, size_t key_len,
                     const unsigned char *val, size_t val_len) {
  (void)key_len;
  (void)val;
  (void)val_len;
  lk_store_batch_delete(((clear_ctx *)ctx)->batch, key);
  return 0;
}

/* Deletes every key of the store. */
static void clear_store(void) {
  lk_err err;
  clear_ctx c = {lk_store_batch_new()};
  check(c.batch != NULL);
  check(lk_store_scan(store, "", clear_one, &c, &err) == LK_OK);
  check(lk_store_write(store, c.batch, &err) == LK_OK);
  lk_store_batch_destroy(c.batch);
}

static int key_allowed(const char *key, size_t key_len) {
  if (strcmp(key, LK_REPLICA_REVISION_KEY) == 0 ||
      strcmp(key, LK_REPLICA_NODE_KEY_KEY) == 0 ||
      strcmp(key, LK_REPLICA_AUDIT_KEY_KEY) == 0) {
    return 1;
  }
  for (size_t i = 0; i < sizeof(allowed_prefixes) / sizeof(*allowed_prefixes);
       i++) {
    size_t n = strlen(allowed_prefixes[i]);
    if (key_len > n && memcmp(key, allowed_prefixes[i], n) == 0) {
      return 1;
    }
  }
  return 0;
}

static void hash_len(crypto_generichash_state *h, size_t n) {
  unsigned char b[8];
  for (int i = 0; i < 8; i++) {
    b[i] = (unsigned char)(n >> (8 * i));
  }
  crypto_generichash_update(h, b, sizeof(b));
}

static int digest_one(void *ctx, const char *key, size_t key_len,
                      const unsigned char *val, size_t val_len) {
  crypto_generichash_state *h = ctx;
  check(key_allowed(key, key_len));
  check(memchr(key, '\0', key_len) == NULL);
  if (strcmp(key, LK_REPLICA_AUDIT_KEY_KEY) == 0) {
    return 0; /* compared on its own: see audit_digest */
  }
  hash_len(h, key_len);
  crypto_generichash_update(h, (const unsigned char *)key, key_len);
  hash_len(h, val_len);
  crypto_generichash_update(h, val, val_len);
  return 0;
}

/* Hashes every key and value of the store into out, checking each key. */
static void digest_store(unsigned char out[DIGEST_BYTES]) {
  crypto_generichash_state h;
  lk_err err;
  check(crypto_generichash_init(&h, NULL, 0, DIGEST_BYTES) == 0);
  check(lk_store_scan(store, "", digest_one, &h, &err) == LK_OK);
  check(crypto_generichash_final(&h, out, DIGEST_BYTES) == 0);
}

/* Hashes the stored audit key (all zeros when absent) into out, checking
 * that it opens with the node key to what holder hashes with. */
static void audit_digest(lk_audit_key *holder,
                         unsigned char out[DIGEST_BYTES]) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  lk_status st =
      lk_store_get(store, LK_REPLICA_AUDIT_KEY_KEY, &val, &len, &err);
  if (st == LK_NOT_FOUND) {
    check(!lk_audit_key_ready(holder));
    memset(out, 0, DIGEST_BYTES);
    return;
  }
  check(st == LK_OK);
  check(crypto_generichash(out, DIGEST_BYTES, val, len, NULL, 0) == 0);
  Latchkey__V1__SealedValue *s =
      latchkey__v1__sealed_value__unpack(NULL, len, val);
  check(s != NULL);
  lk_secret *pt = NULL;
  check(lk_node_keys_unseal_from_key(
            node_keys, node_pk, LK_AUDIT_SEAL_ID, LK_AUDIT_SEAL_FIELD,
            s->ephemeral_public_key.data, s->ephemeral_public_key.len,
            s->nonce.data, s->nonce.len, s->ciphertext.data, s->ciphertext.len,
            &pt, &err) == LK_OK);
  check(lk_secret_len(pt) == LK_AUDIT_KEY_BYTES);
  char want[LK_AUDIT_HEX_BYTES];
  char got[LK_AUDIT_HEX_BYTES];
  lk_audit_hash(lk_secret_data(pt), "probe", 5, want);
  check(lk_audit_key_hash(holder, "probe", 5, got, &err) == LK_OK);
  check(strcmp(want, got) == 0);
  lk_secret_free(pt);
  latchkey__v1__sealed_value__free_unpacked(s, NULL);
  lk_store_value_free(val, len);
}

/* Returns the revision stored under meta/revision (0 when absent). */
static int64_t stored_revision(void) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  lk_status st = lk_store_get(store, LK_REPLICA_REVISION_KEY, &val, &len, &err);
  if (st == LK_NOT_FOUND) {
    return 0;
  }
  check(st == LK_OK && len == 8);
  uint64_t v = 0;
  for (size_t i = 0; i < 8; i++) {
    v = v << 8 | val[i];
  }
  lk_store_value_free(val, len);
  return (int64_t)v;
}

/* Hands one message to a and checks every invariant around it. */
static void handle_and_check(lk_replica_applier *a, lk_audit_key *holder,
                             const uint8_t *msg, size_t len) {
  unsigned char before[DIGEST_BYTES];
  unsigned char after[DIGEST_BYTES];
  unsigned char audit_before[DIGEST_BYTES];
  unsigned char audit_after[DIGEST_BYTES];
  lk_replica_reply reply = LK_REPLICA_REPLY_NONE;
  int64_t revision = 0;
  lk_err err;

  lk_err_clear(&err);
  digest_store(before);
  audit_digest(holder, audit_before);
  lk_status st =
      lk_replica_applier_handle(a, msg, len, &reply, &revision, &err);
  digest_store(after);
  audit_digest(holder, audit_after);
  if (getenv("LK_FUZZ_VERBOSE") != NULL) {
    static const char *const names[] = {"NONE", "ACK", "NACK", "SKIP"};
    fprintf(stderr, "sync_batch: %s revision %lld applied %lld: %s\n",
            names[reply & 3], (long long)revision,
            (long long)lk_replica_applier_revision(a),
            reply == LK_REPLICA_REPLY_NACK ? err.msg : "");
  }
  check(stored_revision() == lk_replica_applier_revision(a));
  if (reply == LK_REPLICA_REPLY_NACK) {
    check(st != LK_OK && err.msg[0] != '\0');
  } else {
    check(st == LK_OK);
  }
  if (reply != LK_REPLICA_REPLY_ACK) {
    check(memcmp(before, after, DIGEST_BYTES) == 0);
  }
  if (reply == LK_REPLICA_REPLY_NACK || reply == LK_REPLICA_REPLY_SKIP) {
    check(memcmp(audit_before, audit_after, DIGEST_BYTES) == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lk_replica_applier *a = NULL;
  lk_audit_key *holder = NULL;
  lk_err err;

  init_store();
  clear_store();
  check(lk_audit_key_new(&holder, &err) == LK_OK);
  check(lk_replica_applier_new(store, node_pk, &a, &err) == LK_OK);
  check(lk_replica_applier_use_audit(a, node_keys, holder, &err) == LK_OK);
  check(lk_replica_applier_revision(a) == 0);

  size_t off = 0;
  while (size - off >= 2) {
    size_t len = (size_t)data[off] << 8 | data[off + 1];
    off += 2;
    if (len > size - off) {
      len = size - off;
    }
    if (len == 0) {
      lk_replica_applier_reset(a);
      continue;
    }
    handle_and_check(a, holder, data + off, len);
    off += len;
  }
  lk_replica_applier_destroy(a);
  lk_audit_key_destroy(holder);
  return 0;
}
