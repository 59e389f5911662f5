/*
 * replica_inspect.c - e2e helper: reads a replica's data dir offline and
 * prints what it holds, so a Python test that kills latchkeyd can check
 * the store is exactly one revision's content (replica_crash_test).
 *
 * usage: replica_inspect DATA_DIR [NODE_KEY_FILE]
 * stdout: one JSON object:
 *   {"revision": N,            (meta/revision; 0 when absent)
 *    "prefixes": {"tool/": {"count": N, "invalid": N, "sha256": "<hex>"},
 *                 ... type/, cred/, budget/, bind/},
 *    "foreign": N,             (keys under no catalog prefix and not meta/)
 *    "node_key": "<fp>",       (lk_seal_fingerprint of meta/node_public_key;
 *                               "" when absent)
 *    "sealed": {"opens": N, "fails": N}}   (only with NODE_KEY_FILE)
 *
 * With NODE_KEY_FILE (a node key file, never created here) every secret
 * field of every cred/ record is opened with lk_unseal_from_node under
 * that key (node_key_rotation_test: all of them are sealed to the new
 * key); the plaintext goes to guarded memory, freed (wiped) at once, and
 * is never printed.
 *
 * sha256 covers the prefix's records in key order, each as a 4-byte
 * big-endian key length, the key, a 4-byte big-endian value length and
 * the value; "invalid" counts records whose value does not decode as the
 * prefix's message or whose ids give another key (lk_catalog_key_of).
 *
 * The store is opened (which replays RocksDB's WAL, as latchkeyd would on
 * its next start) and never written: no catalog is opened, since that
 * would record meta/schema. Values are never printed. Exit 0 on success,
 * 1 with a message on stderr otherwise.
 */
#include <protobuf-c/protobuf-c.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/status.h"
#include "lib/store.h"

#define REVISION_KEY "meta/revision"
#define NODE_KEY_KEY "meta/node_public_key"

typedef struct {
  const char *prefix;
  const ProtobufCMessageDescriptor *desc;
  crypto_hash_sha256_state hash;
  size_t count;
  size_t invalid;
} prefix_sum;

static void put_be32(unsigned char out[4], size_t v) {
  out[0] = (unsigned char)(v >> 24);
  out[1] = (unsigned char)(v >> 16);
  out[2] = (unsigned char)(v >> 8);
  out[3] = (unsigned char)v;
}

/* Returns 1 when val decodes as the prefix's message and its ids give key. */
static int record_valid(const prefix_sum *ps, const char *key,
                        const unsigned char *val, size_t val_len) {
  ProtobufCMessage *m = protobuf_c_message_unpack(ps->desc, NULL, val_len, val);
  if (m == NULL)
    return 0;
  char want[LK_CATALOG_KEY_MAX];
  lk_err why;
  lk_err_clear(&why);
  int ok = lk_catalog_key_of(m, want, &why) == LK_OK && strcmp(want, key) == 0;
  protobuf_c_message_free_unpacked(m, NULL);
  return ok;
}

static int sum_one(void *ctx, const char *key, size_t key_len,
                   const unsigned char *val, size_t val_len) {
  prefix_sum *ps = ctx;
  unsigned char len[4];
  put_be32(len, key_len);
  crypto_hash_sha256_update(&ps->hash, len, sizeof(len));
  crypto_hash_sha256_update(&ps->hash, (const unsigned char *)key, key_len);
  put_be32(len, val_len);
  crypto_hash_sha256_update(&ps->hash, len, sizeof(len));
  crypto_hash_sha256_update(&ps->hash, val, val_len);
  ps->count++;
  if (!record_valid(ps, key, val, val_len))
    ps->invalid++;
  return 0;
}

typedef struct {
  const prefix_sum *sums;
  size_t n;
  size_t foreign;
} foreign_ctx;

static int count_foreign(void *ctx, const char *key, size_t key_len,
                         const unsigned char *val, size_t val_len) {
  (void)key_len;
  (void)val;
  (void)val_len;
  foreign_ctx *fc = ctx;
  if (strncmp(key, "meta/", 5) == 0)
    return 0;
  for (size_t i = 0; i < fc->n; i++) {
    if (strncmp(key, fc->sums[i].prefix, strlen(fc->sums[i].prefix)) == 0)
      return 0;
  }
  fc->foreign++;
  return 0;
}

typedef struct {
  const lk_seal_key *key;
  size_t opens;
  size_t fails;
} seal_count;

/* Counts the secret fields of one cred/ record that open under the key. */
static int count_sealed(void *ctx, const char *key, size_t key_len,
                        const unsigned char *val, size_t val_len) {
  (void)key;
  (void)key_len;
  seal_count *sc = ctx;
  Latchkey__V1__Credential *c =
      latchkey__v1__credential__unpack(NULL, val_len, val);
  if (c == NULL)
    return 0;
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret)
      continue;
    const Latchkey__V1__SealedValue *sv = f->sealed;
    lk_secret *pt = NULL;
    lk_err err;
    if (sv != NULL &&
        lk_unseal_from_node(
            sc->key, c->id, f->name, sv->ephemeral_public_key.data,
            sv->ephemeral_public_key.len, sv->nonce.data, sv->nonce.len,
            sv->ciphertext.data, sv->ciphertext.len, &pt, &err) == LK_OK) {
      sc->opens++;
    } else {
      sc->fails++;
    }
    lk_secret_free(pt);
  }
  latchkey__v1__credential__free_unpacked(c, NULL);
  return 0;
}

/* Writes the fingerprint of meta/node_public_key into fp ("" when none). */
static void read_node_key(lk_store *store,
                          char fp[LK_SEAL_FINGERPRINT_CHARS + 1]) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  fp[0] = '\0';
  if (lk_store_get(store, NODE_KEY_KEY, &val, &len, &err) != LK_OK)
    return;
  if (len == LK_SEAL_PUBLIC_KEY_BYTES)
    lk_seal_fingerprint(val, fp);
  lk_store_value_free(val, len);
}

/* Reads meta/revision: 0 when absent, -1 (with a message) when malformed. */
static int64_t read_revision(lk_store *store, lk_err *err) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_status st = lk_store_get(store, REVISION_KEY, &val, &len, err);
  if (st == LK_NOT_FOUND)
    return 0;
  if (st != LK_OK)
    return -1;
  int64_t rev = -1;
  if (len != 8 || (val[0] & 0x80) != 0) {
    lk_fail(err, LK_FAILED_PRECONDITION, "%s is %zu bytes, not a revision",
            REVISION_KEY, len);
  } else {
    rev = 0;
    for (size_t i = 0; i < len; i++)
      rev = (int64_t)(((uint64_t)rev << 8) | val[i]);
  }
  lk_store_value_free(val, len);
  return rev;
}

int main(int argc, char **argv) {
  int rc = 1;
  lk_store *store = NULL;
  lk_err err;
  lk_err_clear(&err);
  prefix_sum sums[] = {
      {.prefix = "tool/", .desc = &latchkey__v1__tool__descriptor},
      {.prefix = "type/", .desc = &latchkey__v1__credential_type__descriptor},
      {.prefix = "cred/", .desc = &latchkey__v1__credential__descriptor},
      {.prefix = "budget/", .desc = &latchkey__v1__budget__descriptor},
      {.prefix = "bind/", .desc = &latchkey__v1__binding__descriptor},
  };
  size_t n_sums = sizeof(sums) / sizeof(sums[0]);
  foreign_ctx fc = {sums, n_sums, 0};
  lk_seal_key *node_key = NULL;
  seal_count sc = {NULL, 0, 0};
  char node_fp[LK_SEAL_FINGERPRINT_CHARS + 1];

  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: replica_inspect DATA_DIR [NODE_KEY_FILE]\n");
    goto done;
  }
  if (lk_secret_init() != LK_OK) {
    fprintf(stderr, "replica_inspect: cannot initialize libsodium\n");
    goto done;
  }
  if (argc == 3 && lk_seal_key_load(argv[2], &node_key, &err) != LK_OK) {
    fprintf(stderr, "replica_inspect: %s\n", err.msg);
    goto done;
  }
  sc.key = node_key;
  if (lk_store_open(argv[1], &store, &err) != LK_OK) {
    fprintf(stderr, "replica_inspect: %s\n", err.msg);
    goto done;
  }
  int64_t rev = read_revision(store, &err);
  if (rev < 0) {
    fprintf(stderr, "replica_inspect: %s\n", err.msg);
    goto done;
  }
  for (size_t i = 0; i < n_sums; i++) {
    crypto_hash_sha256_init(&sums[i].hash);
    if (lk_store_scan(store, sums[i].prefix, sum_one, &sums[i], &err) !=
        LK_OK) {
      fprintf(stderr, "replica_inspect: scanning %s: %s\n", sums[i].prefix,
              err.msg);
      goto done;
    }
  }
  if (lk_store_scan(store, "", count_foreign, &fc, &err) != LK_OK) {
    fprintf(stderr, "replica_inspect: %s\n", err.msg);
    goto done;
  }
  printf("{\"revision\": %lld, \"prefixes\": {", (long long)rev);
  for (size_t i = 0; i < n_sums; i++) {
    unsigned char digest[crypto_hash_sha256_BYTES];
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    crypto_hash_sha256_final(&sums[i].hash, digest);
    sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
    printf("%s\"%s\": {\"count\": %zu, \"invalid\": %zu, \"sha256\": \"%s\"}",
           i == 0 ? "" : ", ", sums[i].prefix, sums[i].count, sums[i].invalid,
           hex);
  }
  if (node_key != NULL &&
      lk_store_scan(store, "cred/", count_sealed, &sc, &err) != LK_OK) {
    fprintf(stderr, "replica_inspect: %s\n", err.msg);
    goto done;
  }
  read_node_key(store, node_fp);
  printf("}, \"foreign\": %zu, \"node_key\": \"%s\"", fc.foreign, node_fp);
  if (node_key != NULL) {
    printf(", \"sealed\": {\"opens\": %zu, \"fails\": %zu}", sc.opens,
           sc.fails);
  }
  printf("}\n");
  rc = fflush(stdout) == 0 ? 0 : 1;
done:
  lk_seal_key_destroy(node_key);
  lk_store_close(store);
  return rc;
}
