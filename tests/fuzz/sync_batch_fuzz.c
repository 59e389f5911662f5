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
 * each input, so each input starts from an empty replica; the applier is
 * created with a fixed node public key, so the node key record is written
 * and checked too. LK_FUZZ_VERBOSE=1 prints each message's reply.
 *
 * Invariants (a break traps), checked after every handled message:
 * - The store's "meta/revision" (8 bytes big-endian, absent = 0) equals
 *   lk_replica_applier_revision.
 * - The status is LK_OK exactly when the reply is not NACK; a NACK carries
 *   a non-empty reason.
 * - Only an ACK changes the store: after a NACK, SKIP or NONE (heartbeat,
 *   snapshot part) a digest of every key and value is what it was before.
 * - Every key in the store starts with a catalog prefix (tool/, type/,
 *   cred/, budget/, bind/) or is one of the two meta keys.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/log.h"
#include "lib/status.h"
#include "lib/store.h"
#include "sidecar/replica.h"
#include "tests/fuzz/fuzz_target.h"

#define DIGEST_BYTES 32

static const unsigned char node_pk[32] = {
    0x4c, 0x4b, 0x46, 0x55, 0x5a, 0x5a, 0x2d, 0x6e, 0x6f, 0x64, 0x65,
    0x2d, 0x70, 0x6b, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
    0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12};

static const char *const allowed_prefixes[] = {"tool/", "type/", "cred/",
                                               "budget/", "bind/"};

static lk_store *store;

static void check(int ok) {
  if (!ok) {
    __builtin_trap();
  }
}

static void close_store(void) {
  lk_store_close(store);
  store = NULL;
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
      strcmp(key, LK_REPLICA_NODE_KEY_KEY) == 0) {
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
static void handle_and_check(lk_replica_applier *a, const uint8_t *msg,
                             size_t len) {
  unsigned char before[DIGEST_BYTES];
  unsigned char after[DIGEST_BYTES];
  lk_replica_reply reply = LK_REPLICA_REPLY_NONE;
  int64_t revision = 0;
  lk_err err;

  lk_err_clear(&err);
  digest_store(before);
  lk_status st =
      lk_replica_applier_handle(a, msg, len, &reply, &revision, &err);
  digest_store(after);
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
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lk_replica_applier *a = NULL;
  lk_err err;

  init_store();
  clear_store();
  check(lk_replica_applier_new(store, node_pk, &a, &err) == LK_OK);
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
    handle_and_check(a, data + off, len);
    off += len;
  }
  lk_replica_applier_destroy(a);
  return 0;
}
