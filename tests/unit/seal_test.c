/*
 * seal_test.c - proves lib/seal's contract: the node key file is created
 * 0600 and reloads as the same key; unsafe or malformed files are refused
 * with exact codes; sealed values round-trip and every kind of mismatch
 * (ciphertext, nonce, credential id, field, key id, key) is refused with
 * LK_FAILED_PRECONDITION and a message that names the record, never the
 * value. Values sealed to a node's public key round-trip through the
 * node's key file, differ on every seal, and open for no other node,
 * credential or field, nor when the ephemeral key, nonce or ciphertext is
 * altered. Two tests reproduce the documented formats, KDFs and associated
 * data with libsodium directly, so other implementations can interoperate.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "lib/seal.h"

static char tmp_root[1024];
static int path_counter;

static const char value[] = "sk-live-CANARY-0123456789abcdef";

/* Returns a fresh path (not yet existing) under the test's temp dir. */
static const char *fresh_path(char *buf, size_t n, const char *name) {
  int w = snprintf(buf, n, "%s/%s-%d", tmp_root, name, path_counter++);
  assert_true(w > 0 && (size_t)w < n);
  return buf;
}

static void write_text(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  assert_true(fd >= 0);
  size_t n = strlen(text);
  assert_int_equal(write(fd, text, n), (ssize_t)n);
  assert_int_equal(fchmod(fd, mode), 0);
  close(fd);
}

/* Writes a valid key file for key_id and sk by hand, per seal.h's format. */
static void write_key_file(const char *path, uint32_t key_id,
                           const unsigned char sk[32], int final_newline) {
  unsigned char pk[32];
  char pk64[64];
  char sk64[64];
  char text[512];
  assert_int_equal(crypto_scalarmult_base(pk, sk), 0);
  sodium_bin2base64(pk64, sizeof(pk64), pk, 32, sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(sk64, sizeof(sk64), sk, 32, sodium_base64_VARIANT_ORIGINAL);
  snprintf(text, sizeof(text),
           "latchkey-node-key v1\nkey_id %u\npublic %s\nsecret %s%s",
           (unsigned)key_id, pk64, sk64, final_newline ? "\n" : "");
  write_text(path, text, 0600);
  sodium_memzero(sk64, sizeof(sk64));
  sodium_memzero(text, sizeof(text));
}

static lk_seal_key *load_ok(const char *path) {
  lk_err err;
  lk_seal_key *k = NULL;
  lk_status st = lk_seal_key_load_or_create(path, &k, &err);
  if (st != LK_OK) {
    fail_msg("load %s: %s: %s", path, lk_status_name(st), err.msg);
  }
  assert_non_null(k);
  return k;
}

/* A sealed value and where it came from. */
typedef struct {
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
  size_t ct_len;
} sealed;

static void seal_ok(const lk_seal_key *k, const char *cred, const char *field,
                    const char *pt, sealed *out) {
  lk_err err;
  assert_int_equal(
      lk_seal(k, cred, field, (const unsigned char *)pt, strlen(pt), out->nonce,
              &out->ct, &out->ct_len, &err),
      LK_OK);
  assert_int_equal(out->ct_len, strlen(pt) + LK_SEAL_TAG_BYTES);
}

/* Asserts that unsealing is refused as a record/key mismatch. */
static void assert_mismatch(const lk_seal_key *k, uint32_t key_id,
                            const char *cred, const char *field,
                            const unsigned char *nonce, size_t nonce_len,
                            const unsigned char *ct, size_t ct_len) {
  lk_err err;
  lk_secret *out = (lk_secret *)&err; /* must be reset to NULL */
  assert_int_equal(lk_unseal(k, key_id, cred, field, nonce, nonce_len, ct,
                             ct_len, &out, &err),
                   LK_FAILED_PRECONDITION);
  assert_null(out);
  assert_int_equal(err.code, LK_FAILED_PRECONDITION);
  char want[256];
  snprintf(want, sizeof(want),
           "credential %s field %s cannot be unsealed with this node key (key "
           "id %u): "
           "re-enter the credential",
           cred, field, (unsigned)lk_seal_key_id(k));
  assert_string_equal(err.msg, want);
  assert_null(strstr(err.msg, value));
}

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int group_setup(void **state) {
  (void)state;
  const char *base = getenv("TEST_TMPDIR");
  snprintf(tmp_root, sizeof(tmp_root), "%s/seal_test.XXXXXX",
           base ? base : "/tmp");
  return mkdtemp(tmp_root) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  (void)state;
  return nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- key file ---------------------------------------------------------- */

static void first_load_creates_file_0600_without_temp_files(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_path(dir, sizeof(dir), "createdir");
  assert_int_equal(mkdir(dir, 0700), 0);
  snprintf(path, sizeof(path), "%s/node.key", dir);
  lk_seal_key *k = load_ok(path);
  assert_true(lk_seal_key_id(k) >= 1);

  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_true(S_ISREG(sb.st_mode));
  assert_int_equal(sb.st_mode & 0777, 0600);

  char text[1100];
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  fclose(f);
  text[n] = '\0';
  char head[64];
  snprintf(head, sizeof(head), "latchkey-node-key v1\nkey_id %u\npublic ",
           (unsigned)lk_seal_key_id(k));
  assert_memory_equal(text, head, strlen(head));
  assert_non_null(strstr(text, "\nsecret "));
  sodium_memzero(text, sizeof(text));

  DIR *d = opendir(dir);
  assert_non_null(d);
  int entries = 0;
  for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      assert_string_equal(e->d_name, "node.key");
      entries++;
    }
  }
  closedir(d);
  assert_int_equal(entries, 1);
  lk_seal_key_destroy(k);
}

static void reload_is_same_key_and_unseals_earlier_values(void **state) {
  (void)state;
  char path[4096];
  fresh_path(path, sizeof(path), "reload.key");
  lk_err err;
  lk_seal_key *k1 = load_ok(path);
  sealed s;
  seal_ok(k1, "cred-1", "api_key", value, &s);
  uint32_t id1 = lk_seal_key_id(k1);
  unsigned char pk1[32];
  assert_int_equal(lk_seal_key_public(k1, pk1, &err), LK_OK);
  lk_seal_key_destroy(k1);

  lk_seal_key *k2 = load_ok(path);
  assert_int_equal(lk_seal_key_id(k2), id1);
  unsigned char pk2[32];
  assert_int_equal(lk_seal_key_public(k2, pk2, &err), LK_OK);
  assert_memory_equal(pk1, pk2, 32);
  lk_secret *pt = NULL;
  assert_int_equal(lk_unseal(k2, id1, "cred-1", "api_key", s.nonce,
                             sizeof(s.nonce), s.ct, s.ct_len, &pt, &err),
                   LK_OK);
  assert_string_equal(lk_secret_str(pt), value);
  lk_secret_free(pt);
  free(s.ct);
  lk_seal_key_destroy(k2);
}

static void group_or_other_accessible_file_is_refused(void **state) {
  (void)state;
  static const mode_t bad[] = {0640, 0604, 0620, 0660, 0644};
  char path[4096];
  fresh_path(path, sizeof(path), "perm.key");
  lk_seal_key_destroy(load_ok(path));
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    lk_err err;
    lk_seal_key *k = (lk_seal_key *)&err;
    assert_int_equal(chmod(path, bad[i]), 0);
    assert_int_equal(lk_seal_key_load_or_create(path, &k, &err),
                     LK_FAILED_PRECONDITION);
    assert_null(k);
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_non_null(strstr(err.msg, path));
  }
  assert_int_equal(chmod(path, 0400), 0); /* owner-only read is fine */
  lk_seal_key_destroy(load_ok(path));
  assert_int_equal(chmod(path, 0600), 0);
}

static void malformed_files_are_refused_naming_the_path(void **state) {
  (void)state;
  unsigned char sk[32];
  unsigned char pk[32];
  unsigned char other_pk[32];
  char sk64[64];
  char pk64[64];
  char other64[64];
  char short64[64];
  char big[2000];
  randombytes_buf(sk, sizeof(sk));
  assert_int_equal(crypto_scalarmult_base(pk, sk), 0);
  randombytes_buf(other_pk, sizeof(other_pk));
  sodium_bin2base64(sk64, sizeof(sk64), sk, 32, sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(pk64, sizeof(pk64), pk, 32, sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(other64, sizeof(other64), other_pk, 32,
                    sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(short64, sizeof(short64), sk, 16,
                    sodium_base64_VARIANT_ORIGINAL);
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';

  char cases[16][400];
  int n = 0;
  snprintf(cases[n++], 400, "%s", "");
  snprintf(cases[n++], 400, "%s", "not a key\n");
  snprintf(cases[n++], 400,
           "latchkey-node-key v2\nkey_id 7\npublic %s\nsecret %s\n", pk64,
           sk64);
  snprintf(cases[n++], 400, "latchkey-node-key v1\nkey_id 7\npublic %s\n",
           pk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 0\npublic %s\nsecret %s\n", pk64,
           sk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 4294967296\npublic %s\nsecret %s\n",
           pk64, sk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 12a\npublic %s\nsecret %s\n", pk64,
           sk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 7\npublic %s\nsecret %s!\n", pk64,
           sk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 7\npublic %s\nsecret %s\n", pk64,
           short64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 7\npublic %s\nsecret %s\n", other64,
           sk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 7\npublic %s\nsecret %s\nextra\n",
           pk64, sk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1\nkey_id 7\nsecret %s\npublic %s\n", sk64,
           pk64);
  snprintf(cases[n++], 400,
           "latchkey-node-key v1 \nkey_id 7\npublic %s\nsecret %s\n", pk64,
           sk64);
  for (int i = 0; i <= n; i++) {
    char path[4096];
    lk_err err;
    lk_seal_key *k = (lk_seal_key *)&err;
    fresh_path(path, sizeof(path), "bad.key");
    write_text(path, i < n ? cases[i] : big, 0600);
    lk_status st = lk_seal_key_load_or_create(path, &k, &err);
    if (st != LK_INVALID_ARGUMENT) {
      fail_msg("case %d: got %s (%s)", i, lk_status_name(st), err.msg);
    }
    assert_null(k);
    assert_non_null(strstr(err.msg, path));
    assert_null(strstr(err.msg, sk64));
  }
  sodium_memzero(sk, sizeof(sk));
  sodium_memzero(sk64, sizeof(sk64));
  sodium_memzero(cases, sizeof(cases));
}

static void hand_written_file_loads_with_its_public_key(void **state) {
  (void)state;
  char path[4096];
  unsigned char sk[32];
  unsigned char want_pk[32];
  unsigned char pk[32];
  lk_err err;
  randombytes_buf(sk, sizeof(sk));
  assert_int_equal(crypto_scalarmult_base(want_pk, sk), 0);
  fresh_path(path, sizeof(path), "hand.key");
  write_key_file(path, 4294967295u, sk, 0); /* last newline is optional */
  lk_seal_key *k = load_ok(path);
  assert_int_equal(lk_seal_key_id(k), 4294967295u);
  assert_int_equal(lk_seal_key_public(k, pk, &err), LK_OK);
  assert_memory_equal(pk, want_pk, 32);
  lk_seal_key_destroy(k);
  sodium_memzero(sk, sizeof(sk));
}

static void missing_directory_is_failed_precondition(void **state) {
  (void)state;
  char path[4200];
  lk_err err;
  lk_seal_key *k = NULL;
  snprintf(path, sizeof(path), "%s/no-such-dir/node.key", tmp_root);
  assert_int_equal(lk_seal_key_load_or_create(path, &k, &err),
                   LK_FAILED_PRECONDITION);
  assert_null(k);
}

typedef struct {
  const char *path;
  lk_status st;
  uint32_t id;
} race_arg;

static void *race_thread(void *p) {
  race_arg *a = p;
  lk_err err;
  lk_seal_key *k = NULL;
  a->st = lk_seal_key_load_or_create(a->path, &k, &err);
  a->id = k != NULL ? lk_seal_key_id(k) : 0;
  lk_seal_key_destroy(k);
  return NULL;
}

static void concurrent_first_starts_share_one_key(void **state) {
  (void)state;
  for (int round = 0; round < 20; round++) {
    char path[4096];
    pthread_t t[4];
    race_arg a[4];
    fresh_path(path, sizeof(path), "race.key");
    for (int i = 0; i < 4; i++) {
      a[i].path = path;
      a[i].st = LK_INTERNAL;
      assert_int_equal(pthread_create(&t[i], NULL, race_thread, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
      assert_int_equal(pthread_join(t[i], NULL), 0);
      assert_int_equal(a[i].st, LK_OK);
      assert_int_equal(a[i].id, a[0].id);
    }
  }
}

/* ---- sealing ----------------------------------------------------------- */

static lk_seal_key *shared_key(void) {
  static char path[4096];
  if (path[0] == '\0') {
    fresh_path(path, sizeof(path), "shared.key");
  }
  return load_ok(path);
}

static void seal_round_trips_into_guarded_memory(void **state) {
  (void)state;
  lk_err err;
  lk_seal_key *k = shared_key();
  sealed s;
  seal_ok(k, "cred-1", "api_key", value, &s);
  assert_null(memmem(s.ct, s.ct_len, value, strlen(value)));
  lk_secret *pt = NULL;
  assert_int_equal(lk_unseal(k, lk_seal_key_id(k), "cred-1", "api_key", s.nonce,
                             sizeof(s.nonce), s.ct, s.ct_len, &pt, &err),
                   LK_OK);
  assert_int_equal(lk_secret_len(pt), strlen(value));
  assert_string_equal(lk_secret_str(pt), value);
  lk_secret_free(pt);
  free(s.ct);
  lk_seal_key_destroy(k);
}

static void empty_value_round_trips(void **state) {
  (void)state;
  lk_err err;
  lk_seal_key *k = shared_key();
  sealed s;
  assert_int_equal(
      lk_seal(k, "cred-1", "note", NULL, 0, s.nonce, &s.ct, &s.ct_len, &err),
      LK_OK);
  assert_int_equal(s.ct_len, LK_SEAL_TAG_BYTES);
  lk_secret *pt = NULL;
  assert_int_equal(lk_unseal(k, lk_seal_key_id(k), "cred-1", "note", s.nonce,
                             sizeof(s.nonce), s.ct, s.ct_len, &pt, &err),
                   LK_OK);
  assert_int_equal(lk_secret_len(pt), 0);
  lk_secret_free(pt);
  free(s.ct);
  lk_seal_key_destroy(k);
}

static void each_seal_uses_a_fresh_nonce(void **state) {
  (void)state;
  lk_seal_key *k = shared_key();
  sealed a;
  sealed b;
  seal_ok(k, "cred-1", "api_key", value, &a);
  seal_ok(k, "cred-1", "api_key", value, &b);
  assert_memory_not_equal(a.nonce, b.nonce, LK_SEAL_NONCE_BYTES);
  assert_memory_not_equal(a.ct, b.ct, a.ct_len);
  free(a.ct);
  free(b.ct);
  lk_seal_key_destroy(k);
}

static void tampered_ciphertext_is_failed_precondition(void **state) {
  (void)state;
  lk_seal_key *k = shared_key();
  sealed s;
  seal_ok(k, "cred-1", "api_key", value, &s);
  size_t where[] = {0, s.ct_len / 2, s.ct_len - 1}; /* body and tag */
  for (size_t i = 0; i < 3; i++) {
    s.ct[where[i]] ^= 0x01;
    assert_mismatch(k, lk_seal_key_id(k), "cred-1", "api_key", s.nonce,
                    sizeof(s.nonce), s.ct, s.ct_len);
    s.ct[where[i]] ^= 0x01;
  }
  assert_mismatch(k, lk_seal_key_id(k), "cred-1", "api_key", s.nonce,
                  sizeof(s.nonce), s.ct, s.ct_len - 1); /* truncated */
  assert_mismatch(k, lk_seal_key_id(k), "cred-1", "api_key", s.nonce,
                  sizeof(s.nonce), s.ct,
                  LK_SEAL_TAG_BYTES - 1); /* shorter than a tag */
  free(s.ct);
  lk_seal_key_destroy(k);
}

static void tampered_nonce_is_failed_precondition(void **state) {
  (void)state;
  lk_seal_key *k = shared_key();
  sealed s;
  seal_ok(k, "cred-1", "api_key", value, &s);
  s.nonce[5] ^= 0x80;
  assert_mismatch(k, lk_seal_key_id(k), "cred-1", "api_key", s.nonce,
                  sizeof(s.nonce), s.ct, s.ct_len);
  s.nonce[5] ^= 0x80;
  assert_mismatch(k, lk_seal_key_id(k), "cred-1", "api_key", s.nonce,
                  sizeof(s.nonce) - 1, s.ct, s.ct_len); /* wrong nonce length */
  free(s.ct);
  lk_seal_key_destroy(k);
}

static void swapped_cred_id_is_failed_precondition(void **state) {
  (void)state;
  lk_seal_key *k = shared_key();
  sealed s;
  seal_ok(k, "cred-1", "api_key", value, &s);
  assert_mismatch(k, lk_seal_key_id(k), "cred-2", "api_key", s.nonce,
                  sizeof(s.nonce), s.ct, s.ct_len);
  /* The NUL separator keeps "cred-1"+"api_key" apart from "cred-1a"+"pi_key".
   */
  assert_mismatch(k, lk_seal_key_id(k), "cred-1a", "pi_key", s.nonce,
                  sizeof(s.nonce), s.ct, s.ct_len);
  free(s.ct);
  lk_seal_key_destroy(k);
}

static void swapped_field_is_failed_precondition(void **state) {
  (void)state;
  lk_seal_key *k = shared_key();
  sealed s;
  seal_ok(k, "cred-1", "password", value, &s);
  assert_mismatch(k, lk_seal_key_id(k), "cred-1", "username", s.nonce,
                  sizeof(s.nonce), s.ct, s.ct_len);
  free(s.ct);
  lk_seal_key_destroy(k);
}

static void wrong_key_id_is_failed_precondition(void **state) {
  (void)state;
  lk_seal_key *k = shared_key();
  sealed s;
  seal_ok(k, "cred-1", "api_key", value, &s);
  assert_mismatch(k, lk_seal_key_id(k) + 1, "cred-1", "api_key", s.nonce,
                  sizeof(s.nonce), s.ct, s.ct_len);
  free(s.ct);
  lk_seal_key_destroy(k);
}

static void different_key_file_is_failed_precondition(void **state) {
  (void)state;
  char path_a[4096];
  char path_b[4096];
  char path_c[4096];
  unsigned char sk_a[32];
  unsigned char sk_b[32];
  randombytes_buf(sk_a, sizeof(sk_a));
  randombytes_buf(sk_b, sizeof(sk_b));
  /* Same key id, different secret: only the AEAD check can tell them apart. */
  write_key_file(fresh_path(path_a, sizeof(path_a), "a.key"), 42, sk_a, 1);
  write_key_file(fresh_path(path_b, sizeof(path_b), "b.key"), 42, sk_b, 1);
  lk_seal_key *a = load_ok(path_a);
  lk_seal_key *b = load_ok(path_b);
  lk_seal_key *c = load_ok(fresh_path(path_c, sizeof(path_c), "c.key"));
  assert_int_equal(lk_seal_key_id(a), lk_seal_key_id(b));
  sealed s;
  seal_ok(a, "cred-1", "api_key", value, &s);
  assert_mismatch(b, 42, "cred-1", "api_key", s.nonce, sizeof(s.nonce), s.ct,
                  s.ct_len);
  assert_mismatch(c, 42, "cred-1", "api_key", s.nonce, sizeof(s.nonce), s.ct,
                  s.ct_len);
  free(s.ct);
  lk_seal_key_destroy(a);
  lk_seal_key_destroy(b);
  lk_seal_key_destroy(c);
  sodium_memzero(sk_a, sizeof(sk_a));
  sodium_memzero(sk_b, sizeof(sk_b));
}

static void size_limits_are_invalid_argument(void **state) {
  (void)state;
  lk_err err;
  lk_seal_key *k = shared_key();
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  unsigned char *big = calloc(1, LK_SEAL_MAX_CT_BYTES + 1);
  assert_non_null(big);

  assert_int_equal(lk_seal(k, "c", "f", big, LK_SEAL_MAX_PT_BYTES + 1, nonce,
                           &ct, &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(ct);
  assert_int_equal(lk_seal(k, "c", "f", big, LK_SEAL_MAX_PT_BYTES, nonce, &ct,
                           &ct_len, &err),
                   LK_OK);
  assert_int_equal(ct_len, LK_SEAL_MAX_CT_BYTES);
  lk_secret *pt = NULL;
  assert_int_equal(lk_unseal(k, lk_seal_key_id(k), "c", "f", nonce,
                             sizeof(nonce), ct, ct_len, &pt, &err),
                   LK_OK);
  assert_int_equal(lk_secret_len(pt), LK_SEAL_MAX_PT_BYTES);
  lk_secret_free(pt);
  free(ct);

  assert_int_equal(
      lk_unseal(k, lk_seal_key_id(k), "c", "f", nonce, sizeof(nonce), big,
                LK_SEAL_MAX_CT_BYTES + 1, &pt, &err),
      LK_INVALID_ARGUMENT);
  assert_null(pt);

  char long_name[LK_SEAL_MAX_NAME_BYTES + 2];
  memset(long_name, 'x', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';
  assert_int_equal(
      lk_seal(k, long_name, "f", big, 1, nonce, &ct, &ct_len, &err),
      LK_INVALID_ARGUMENT);
  assert_int_equal(
      lk_seal(k, "c", long_name, big, 1, nonce, &ct, &ct_len, &err),
      LK_INVALID_ARGUMENT);
  free(big);
  lk_seal_key_destroy(k);
}

/* Seals with libsodium directly, following seal.h's documented KDF and
 * associated data, and checks that lk_unseal opens it. */
static void documented_format_interoperates(void **state) {
  (void)state;
  char path[4096];
  unsigned char sk[32];
  unsigned char sym[32];
  unsigned char nonce[24];
  const uint32_t key_id = 0x01020304;
  const char ad[] = "cred-9\0token\0\x01\x02\x03\x04";
  unsigned char ct[sizeof(value) - 1 + 16];
  unsigned long long ct_len = 0;
  lk_err err;
  randombytes_buf(sk, sizeof(sk));
  randombytes_buf(nonce, sizeof(nonce));
  write_key_file(fresh_path(path, sizeof(path), "interop.key"), key_id, sk, 1);
  assert_int_equal(
      crypto_kdf_derive_from_key(sym, sizeof(sym), key_id, "lkseal01", sk), 0);
  assert_int_equal(
      crypto_aead_xchacha20poly1305_ietf_encrypt(
          ct, &ct_len, (const unsigned char *)value, sizeof(value) - 1,
          (const unsigned char *)ad, sizeof(ad) - 1, NULL, nonce, sym),
      0);
  lk_seal_key *k = load_ok(path);
  lk_secret *pt = NULL;
  assert_int_equal(lk_unseal(k, key_id, "cred-9", "token", nonce, sizeof(nonce),
                             ct, (size_t)ct_len, &pt, &err),
                   LK_OK);
  assert_string_equal(lk_secret_str(pt), value);
  lk_secret_free(pt);
  lk_seal_key_destroy(k);
  sodium_memzero(sk, sizeof(sk));
  sodium_memzero(sym, sizeof(sym));
}

/* ---- sealing to a node's public key ------------------------------------ */

/* A value sealed to a node key. */
typedef struct {
  unsigned char eph_pk[32];
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
  size_t ct_len;
} node_sealed;

static void node_seal_ok(const lk_seal_key *node, const char *cred,
                         const char *field, const char *pt, node_sealed *out) {
  lk_err err;
  unsigned char pk[32];
  assert_int_equal(lk_seal_key_public(node, pk, &err), LK_OK);
  lk_status st =
      lk_seal_for_node(pk, cred, field, (const unsigned char *)pt, strlen(pt),
                       out->eph_pk, out->nonce, &out->ct, &out->ct_len, &err);
  if (st != LK_OK) {
    fail_msg("seal for node: %s: %s", lk_status_name(st), err.msg);
  }
  assert_int_equal(out->ct_len, strlen(pt) + LK_SEAL_TAG_BYTES);
}

/* Asserts that opening with node is refused as a node/record mismatch. */
static void assert_node_mismatch(const lk_seal_key *node, const char *cred,
                                 const char *field, const unsigned char *eph_pk,
                                 size_t eph_pk_len, const unsigned char *nonce,
                                 size_t nonce_len, const unsigned char *ct,
                                 size_t ct_len) {
  lk_err err;
  lk_secret *out = (lk_secret *)&err; /* must be reset to NULL */
  assert_int_equal(
      lk_unseal_from_node(node, cred, field, eph_pk, eph_pk_len, nonce,
                          nonce_len, ct, ct_len, &out, &err),
      LK_FAILED_PRECONDITION);
  assert_null(out);
  assert_int_equal(err.code, LK_FAILED_PRECONDITION);
  char want[300];
  snprintf(want, sizeof(want),
           "credential %s field %s cannot be unsealed with this node key: it "
           "was sealed for another node key or altered; resync this replica "
           "from the control plane",
           cred, field);
  assert_string_equal(err.msg, want);
  assert_null(strstr(err.msg, value));
}

static void node_seal_round_trips_into_guarded_memory(void **state) {
  (void)state;
  lk_err err;
  lk_seal_key *node = shared_key();
  node_sealed s;
  node_seal_ok(node, "cred-1", "api_key", value, &s);
  assert_null(memmem(s.ct, s.ct_len, value, strlen(value)));
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_unseal_from_node(node, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                          s.nonce, sizeof(s.nonce), s.ct, s.ct_len, &pt, &err),
      LK_OK);
  assert_int_equal(lk_secret_len(pt), strlen(value));
  assert_string_equal(lk_secret_str(pt), value);
  lk_secret_free(pt);
  free(s.ct);
  lk_seal_key_destroy(node);
}

static void node_seal_of_empty_value_round_trips(void **state) {
  (void)state;
  lk_err err;
  lk_seal_key *node = shared_key();
  node_sealed s;
  unsigned char pk[32];
  assert_int_equal(lk_seal_key_public(node, pk, &err), LK_OK);
  assert_int_equal(lk_seal_for_node(pk, "cred-1", "note", NULL, 0, s.eph_pk,
                                    s.nonce, &s.ct, &s.ct_len, &err),
                   LK_OK);
  assert_int_equal(s.ct_len, LK_SEAL_TAG_BYTES);
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_unseal_from_node(node, "cred-1", "note", s.eph_pk, sizeof(s.eph_pk),
                          s.nonce, sizeof(s.nonce), s.ct, s.ct_len, &pt, &err),
      LK_OK);
  assert_int_equal(lk_secret_len(pt), 0);
  lk_secret_free(pt);
  free(s.ct);
  lk_seal_key_destroy(node);
}

static void node_seals_of_one_value_share_nothing(void **state) {
  (void)state;
  lk_seal_key *node = shared_key();
  node_sealed a;
  node_sealed b;
  node_seal_ok(node, "cred-1", "api_key", value, &a);
  node_seal_ok(node, "cred-1", "api_key", value, &b);
  assert_memory_not_equal(a.eph_pk, b.eph_pk, sizeof(a.eph_pk));
  assert_memory_not_equal(a.nonce, b.nonce, sizeof(a.nonce));
  assert_memory_not_equal(a.ct, b.ct, a.ct_len);
  free(a.ct);
  free(b.ct);
  lk_seal_key_destroy(node);
}

static void node_seal_for_another_node_is_failed_precondition(void **state) {
  (void)state;
  char path[4096];
  lk_err err;
  lk_seal_key *node = shared_key();
  lk_seal_key *other = load_ok(fresh_path(path, sizeof(path), "other.key"));
  node_sealed s;
  node_seal_ok(node, "cred-1", "api_key", value, &s);
  assert_node_mismatch(other, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, s.ct_len);
  /* Nor does it open as a value sealed under the node's local key. */
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_unseal(node, lk_seal_key_id(node), "cred-1", "api_key", s.nonce,
                sizeof(s.nonce), s.ct, s.ct_len, &pt, &err),
      LK_FAILED_PRECONDITION);
  assert_null(pt);
  free(s.ct);
  lk_seal_key_destroy(other);
  lk_seal_key_destroy(node);
}

static void node_seal_with_swapped_cred_id_is_failed_precondition(
    void **state) {
  (void)state;
  lk_seal_key *node = shared_key();
  node_sealed s;
  node_seal_ok(node, "cred-1", "api_key", value, &s);
  assert_node_mismatch(node, "cred-2", "api_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, s.ct_len);
  assert_node_mismatch(node, "cred-1a", "pi_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, s.ct_len);
  free(s.ct);
  lk_seal_key_destroy(node);
}

static void node_seal_with_swapped_field_is_failed_precondition(void **state) {
  (void)state;
  lk_seal_key *node = shared_key();
  node_sealed s;
  node_seal_ok(node, "cred-1", "password", value, &s);
  assert_node_mismatch(node, "cred-1", "username", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, s.ct_len);
  free(s.ct);
  lk_seal_key_destroy(node);
}

static void node_seal_with_tampered_eph_pk_is_failed_precondition(
    void **state) {
  (void)state;
  static const unsigned char zero_pk[32];
  lk_seal_key *node = shared_key();
  node_sealed s;
  node_seal_ok(node, "cred-1", "api_key", value, &s);
  s.eph_pk[7] ^= 0x01;
  assert_node_mismatch(node, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, s.ct_len);
  s.eph_pk[7] ^= 0x01;
  assert_node_mismatch(node, "cred-1", "api_key", s.eph_pk,
                       sizeof(s.eph_pk) - 1, s.nonce, sizeof(s.nonce), s.ct,
                       s.ct_len); /* wrong length */
  assert_node_mismatch(node, "cred-1", "api_key", NULL, 0, s.nonce,
                       sizeof(s.nonce), s.ct, s.ct_len); /* missing */
  assert_node_mismatch(node, "cred-1", "api_key", zero_pk, sizeof(zero_pk),
                       s.nonce, sizeof(s.nonce), s.ct,
                       s.ct_len); /* small-order point */
  free(s.ct);
  lk_seal_key_destroy(node);
}

static void node_seal_with_tampered_nonce_is_failed_precondition(void **state) {
  (void)state;
  lk_seal_key *node = shared_key();
  node_sealed s;
  node_seal_ok(node, "cred-1", "api_key", value, &s);
  s.nonce[0] ^= 0x80;
  assert_node_mismatch(node, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, s.ct_len);
  s.nonce[0] ^= 0x80;
  assert_node_mismatch(node, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce) - 1, s.ct, s.ct_len);
  free(s.ct);
  lk_seal_key_destroy(node);
}

static void node_seal_with_tampered_ciphertext_is_failed_precondition(
    void **state) {
  (void)state;
  lk_seal_key *node = shared_key();
  node_sealed s;
  node_seal_ok(node, "cred-1", "api_key", value, &s);
  size_t where[] = {0, s.ct_len / 2, s.ct_len - 1}; /* body and tag */
  for (size_t i = 0; i < 3; i++) {
    s.ct[where[i]] ^= 0x01;
    assert_node_mismatch(node, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                         s.nonce, sizeof(s.nonce), s.ct, s.ct_len);
    s.ct[where[i]] ^= 0x01;
  }
  assert_node_mismatch(node, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, s.ct_len - 1);
  assert_node_mismatch(node, "cred-1", "api_key", s.eph_pk, sizeof(s.eph_pk),
                       s.nonce, sizeof(s.nonce), s.ct, LK_SEAL_TAG_BYTES - 1);
  free(s.ct);
  lk_seal_key_destroy(node);
}

static void node_seal_refuses_a_small_order_public_key(void **state) {
  (void)state;
  static const unsigned char zero_pk[32];
  lk_err err;
  unsigned char eph_pk[32];
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct = (unsigned char *)&err; /* must be reset to NULL */
  size_t ct_len = 1;
  assert_int_equal(lk_seal_for_node(zero_pk, "cred-1", "api_key",
                                    (const unsigned char *)value, strlen(value),
                                    eph_pk, nonce, &ct, &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(ct);
  assert_int_equal(ct_len, 0);
  assert_string_equal(err.msg,
                      "credential cred-1 field api_key: the node public key "
                      "is not a usable X25519 public key");
}

static void node_seal_size_limits_are_invalid_argument(void **state) {
  (void)state;
  lk_err err;
  lk_seal_key *node = shared_key();
  unsigned char pk[32];
  unsigned char eph_pk[32];
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  unsigned char *big = calloc(1, LK_SEAL_MAX_CT_BYTES + 1);
  assert_non_null(big);
  assert_int_equal(lk_seal_key_public(node, pk, &err), LK_OK);

  assert_int_equal(lk_seal_for_node(pk, "c", "f", big, LK_SEAL_MAX_PT_BYTES + 1,
                                    eph_pk, nonce, &ct, &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(ct);
  assert_int_equal(lk_seal_for_node(pk, "c", "f", big, LK_SEAL_MAX_PT_BYTES,
                                    eph_pk, nonce, &ct, &ct_len, &err),
                   LK_OK);
  assert_int_equal(ct_len, LK_SEAL_MAX_CT_BYTES);
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_unseal_from_node(node, "c", "f", eph_pk, sizeof(eph_pk), nonce,
                          sizeof(nonce), ct, ct_len, &pt, &err),
      LK_OK);
  assert_int_equal(lk_secret_len(pt), LK_SEAL_MAX_PT_BYTES);
  lk_secret_free(pt);
  free(ct);
  ct = NULL;

  assert_int_equal(lk_unseal_from_node(node, "c", "f", eph_pk, sizeof(eph_pk),
                                       nonce, sizeof(nonce), big,
                                       LK_SEAL_MAX_CT_BYTES + 1, &pt, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(pt);

  char long_name[LK_SEAL_MAX_NAME_BYTES + 2];
  memset(long_name, 'x', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';
  assert_int_equal(lk_seal_for_node(pk, long_name, "f", big, 1, eph_pk, nonce,
                                    &ct, &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_seal_for_node(pk, "c", long_name, big, 1, eph_pk, nonce,
                                    &ct, &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(ct);
  assert_int_equal(
      lk_unseal_from_node(node, long_name, "f", eph_pk, sizeof(eph_pk), nonce,
                          sizeof(nonce), big, 17, &pt, &err),
      LK_INVALID_ARGUMENT);
  free(big);
  lk_seal_key_destroy(node);
}

/* Seals to a node with libsodium directly, following seal.h's documented
 * construction, and checks that lk_unseal_from_node opens it. */
static void node_documented_format_interoperates(void **state) {
  (void)state;
  lk_err err;
  lk_seal_key *node = shared_key();
  unsigned char node_pk[32];
  unsigned char eph_pk[32];
  unsigned char eph_sk[32];
  unsigned char q[32];
  unsigned char key[32];
  unsigned char nonce[24];
  unsigned char ad[64];
  unsigned char ct[sizeof(value) - 1 + 16];
  unsigned long long ct_len = 0;
  crypto_generichash_state h;
  assert_int_equal(lk_seal_key_public(node, node_pk, &err), LK_OK);
  assert_int_equal(crypto_box_keypair(eph_pk, eph_sk), 0);
  assert_int_equal(crypto_scalarmult(q, eph_sk, node_pk), 0);
  assert_int_equal(crypto_generichash_init(&h, NULL, 0, sizeof(key)), 0);
  assert_int_equal(
      crypto_generichash_update(&h, (const unsigned char *)"lknode01", 8), 0);
  assert_int_equal(crypto_generichash_update(&h, q, sizeof(q)), 0);
  assert_int_equal(crypto_generichash_update(&h, eph_pk, sizeof(eph_pk)), 0);
  assert_int_equal(crypto_generichash_update(&h, node_pk, sizeof(node_pk)), 0);
  assert_int_equal(crypto_generichash_final(&h, key, sizeof(key)), 0);
  memcpy(ad, "cred-9\0token\0node\0", 18);
  memcpy(ad + 18, node_pk, 32);
  randombytes_buf(nonce, sizeof(nonce));
  assert_int_equal(crypto_aead_xchacha20poly1305_ietf_encrypt(
                       ct, &ct_len, (const unsigned char *)value,
                       sizeof(value) - 1, ad, 18 + 32, NULL, nonce, key),
                   0);
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_unseal_from_node(node, "cred-9", "token", eph_pk, sizeof(eph_pk),
                          nonce, sizeof(nonce), ct, (size_t)ct_len, &pt, &err),
      LK_OK);
  assert_string_equal(lk_secret_str(pt), value);
  lk_secret_free(pt);
  lk_seal_key_destroy(node);
  sodium_memzero(eph_sk, sizeof(eph_sk));
  sodium_memzero(q, sizeof(q));
  sodium_memzero(key, sizeof(key));
}

static void seal_ad_has_the_documented_shape(void **state) {
  (void)state;
  lk_err err;
  unsigned char ad[LK_SEAL_AD_MAX_BYTES];
  size_t ad_len = 0;
  assert_int_equal(lk_seal_ad("cred-9", "token", 0x01020304, ad, &ad_len, &err),
                   LK_OK);
  assert_int_equal(ad_len, 17);
  assert_memory_equal(ad, "cred-9\0token\0\x01\x02\x03\x04", 17);
}

static void destroy_accepts_null(void **state) {
  (void)state;
  lk_seal_key_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(first_load_creates_file_0600_without_temp_files),
      cmocka_unit_test(reload_is_same_key_and_unseals_earlier_values),
      cmocka_unit_test(group_or_other_accessible_file_is_refused),
      cmocka_unit_test(malformed_files_are_refused_naming_the_path),
      cmocka_unit_test(hand_written_file_loads_with_its_public_key),
      cmocka_unit_test(missing_directory_is_failed_precondition),
      cmocka_unit_test(concurrent_first_starts_share_one_key),
      cmocka_unit_test(seal_round_trips_into_guarded_memory),
      cmocka_unit_test(empty_value_round_trips),
      cmocka_unit_test(each_seal_uses_a_fresh_nonce),
      cmocka_unit_test(tampered_ciphertext_is_failed_precondition),
      cmocka_unit_test(tampered_nonce_is_failed_precondition),
      cmocka_unit_test(swapped_cred_id_is_failed_precondition),
      cmocka_unit_test(swapped_field_is_failed_precondition),
      cmocka_unit_test(wrong_key_id_is_failed_precondition),
      cmocka_unit_test(different_key_file_is_failed_precondition),
      cmocka_unit_test(size_limits_are_invalid_argument),
      cmocka_unit_test(documented_format_interoperates),
      cmocka_unit_test(node_seal_round_trips_into_guarded_memory),
      cmocka_unit_test(node_seal_of_empty_value_round_trips),
      cmocka_unit_test(node_seals_of_one_value_share_nothing),
      cmocka_unit_test(node_seal_for_another_node_is_failed_precondition),
      cmocka_unit_test(node_seal_with_swapped_cred_id_is_failed_precondition),
      cmocka_unit_test(node_seal_with_swapped_field_is_failed_precondition),
      cmocka_unit_test(node_seal_with_tampered_eph_pk_is_failed_precondition),
      cmocka_unit_test(node_seal_with_tampered_nonce_is_failed_precondition),
      cmocka_unit_test(
          node_seal_with_tampered_ciphertext_is_failed_precondition),
      cmocka_unit_test(node_seal_refuses_a_small_order_public_key),
      cmocka_unit_test(node_seal_size_limits_are_invalid_argument),
      cmocka_unit_test(node_documented_format_interoperates),
      cmocka_unit_test(seal_ad_has_the_documented_shape),
      cmocka_unit_test(destroy_accepts_null),
  };
  if (sodium_init() < 0) {
    return 1;
  }
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
