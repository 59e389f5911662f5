/*
 * keyring_test.c - proves lib/keyring's contract: the key ring file is
 * created 0600 with one active key and reloads as the same keys; unsafe or
 * malformed files are refused with exact codes; values sealed under the
 * ring round-trip and every mismatch (ciphertext, nonce, credential id,
 * field, key id) is refused with LK_FAILED_PRECONDITION naming the key id;
 * adding a key makes it the active one while older ciphertexts still open,
 * also when several rotations race; a loaded ring takes the file's keys in
 * place (reload, refresh on change only, a bad file keeps the old keys),
 * also while other threads seal and unseal through it; removing a
 * retiring key drops exactly that key and its bytes from the file, and the
 * active key cannot be removed. The audit line: created with the ring,
 * added (once, atomically, also under racing loads) to a ring file written
 * before it existed, kept across rotations, removals and reloads (also of
 * an old file put back) so audit hashes stay the same, and refused with a
 * clear error when malformed. Tests reproduce the documented file format,
 * associated data and audit hash with libsodium directly, so other
 * implementations can interoperate.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "lib/keyfile.h"
#include "lib/keyring.h"

static char tmp_root[1024];
static int path_counter;

static const char canary[] = "sk-live-KEYRING-CANARY-0123456789";

/* Returns a fresh path (not yet existing) under the test's temp dir. */
static const char *fresh_path(char *buf, size_t n, const char *name) {
  int w = snprintf(buf, n, "%s/%s-%d", tmp_root, name, path_counter++);
  assert_true(w > 0 && (size_t)w < n);
  return buf;
}

/* Returns a fresh empty directory and the path "<dir>/ring" in it. */
static void fresh_dir(char *dir, size_t dn, char *path, size_t pn) {
  fresh_path(dir, dn, "dir");
  assert_int_equal(mkdir(dir, 0700), 0);
  int w = snprintf(path, pn, "%s/ring", dir);
  assert_true(w > 0 && (size_t)w < pn);
}

static void write_text(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  assert_true(fd >= 0);
  size_t n = strlen(text);
  assert_int_equal(write(fd, text, n), (ssize_t)n);
  assert_int_equal(fchmod(fd, mode), 0);
  close(fd);
}

/* Reads the whole file at path into a malloc'd NUL-terminated string. */
static char *read_text(const char *path) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char *buf = calloc(1, 64 * 1024);
  assert_non_null(buf);
  size_t n = fread(buf, 1, 64 * 1024 - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* Appends "key <id> <state> <base64 of key>\n" to text (cap bytes). */
static void add_line(char *text, size_t cap, uint32_t id, const char *state,
                     const unsigned char key[32]) {
  char b64[64];
  size_t used = strlen(text);
  sodium_bin2base64(b64, sizeof(b64), key, 32, sodium_base64_VARIANT_ORIGINAL);
  int w = snprintf(text + used, cap - used, "key %u %s %s\n", (unsigned)id,
                   state, b64);
  assert_true(w > 0 && (size_t)w < cap - used);
  sodium_memzero(b64, sizeof(b64));
}

/* Appends "audit <base64 of key>\n" to text (cap bytes). */
static void add_audit_line(char *text, size_t cap,
                           const unsigned char key[32]) {
  char b64[64];
  size_t used = strlen(text);
  sodium_bin2base64(b64, sizeof(b64), key, 32, sodium_base64_VARIANT_ORIGINAL);
  int w = snprintf(text + used, cap - used, "audit %s\n", b64);
  assert_true(w > 0 && (size_t)w < cap - used);
  sodium_memzero(b64, sizeof(b64));
}

/* The documented audit hash of value under audit key key, in hex. */
static void documented_hash(const unsigned char key[32], const char *value,
                            char out[65]) {
  unsigned char h[32];
  assert_int_equal(
      crypto_generichash(h, sizeof(h), (const unsigned char *)value,
                         strlen(value), key, 32),
      0);
  sodium_bin2hex(out, 65, h, sizeof(h));
}

/* Counts the entries of dir other than ".", ".." and the lock file. */
static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
    size_t l = strlen(e->d_name);
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
        (l < 5 || strcmp(e->d_name + l - 5, ".lock") != 0)) {
      n++;
    }
  }
  closedir(d);
  return n;
}

static lk_keyring *load_ok(const char *path) {
  lk_err err;
  lk_keyring *kr = NULL;
  lk_status st = lk_keyring_load_or_create(path, &kr, &err);
  if (st != LK_OK) {
    fail_msg("load %s: %s: %s", path, lk_status_name(st), err.msg);
  }
  assert_non_null(kr);
  return kr;
}

static uint32_t add_ok(const char *path) {
  lk_err err;
  uint32_t id = 0;
  lk_status st = lk_keyring_add_key(path, &id, &err);
  if (st != LK_OK) {
    fail_msg("add key %s: %s: %s", path, lk_status_name(st), err.msg);
  }
  return id;
}

/* A value sealed under a ring. */
typedef struct {
  uint32_t key_id;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
  size_t ct_len;
} sealed;

static void seal_ok(const lk_keyring *kr, const char *cred, const char *field,
                    const char *pt, sealed *out) {
  lk_err err;
  assert_int_equal(
      lk_keyring_seal(kr, cred, field, (const unsigned char *)pt, strlen(pt),
                      &out->key_id, out->nonce, &out->ct, &out->ct_len, &err),
      LK_OK);
  assert_int_equal(out->key_id, lk_keyring_active_id(kr));
  assert_int_equal(out->ct_len, strlen(pt) + LK_SEAL_TAG_BYTES);
}

static void unseal_ok(const lk_keyring *kr, const sealed *s, const char *cred,
                      const char *field, const char *want) {
  lk_err err;
  lk_secret *pt = NULL;
  lk_status st =
      lk_keyring_unseal(kr, s->key_id, cred, field, s->nonce, sizeof(s->nonce),
                        s->ct, s->ct_len, &pt, &err);
  if (st != LK_OK) {
    fail_msg("unseal: %s: %s", lk_status_name(st), err.msg);
  }
  assert_int_equal(lk_secret_len(pt), strlen(want));
  assert_string_equal(lk_secret_str(pt), want);
  lk_secret_free(pt);
}

/* Asserts that unsealing is refused as a record/key mismatch for key_id. */
static void assert_mismatch(const lk_keyring *kr, uint32_t key_id,
                            const char *cred, const char *field,
                            const unsigned char *nonce, size_t nonce_len,
                            const unsigned char *ct, size_t ct_len) {
  lk_err err;
  lk_secret *out = (lk_secret *)&err; /* must be reset to NULL */
  assert_int_equal(lk_keyring_unseal(kr, key_id, cred, field, nonce, nonce_len,
                                     ct, ct_len, &out, &err),
                   LK_FAILED_PRECONDITION);
  assert_null(out);
  char want[256];
  snprintf(want, sizeof(want),
           "credential %s field %s cannot be unsealed with key ring key %u: "
           "re-enter the credential",
           cred, field, (unsigned)key_id);
  assert_string_equal(err.msg, want);
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
  snprintf(tmp_root, sizeof(tmp_root), "%s/keyring_test.XXXXXX",
           base ? base : "/tmp");
  return mkdtemp(tmp_root) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  (void)state;
  return nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the file ----------------------------------------------------------- */

static void first_load_creates_0600_file_with_one_active_key(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr), 1);

  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_true(S_ISREG(sb.st_mode));
  assert_int_equal(sb.st_mode & 0777, 0600);
  char *text = read_text(path);
  static const char head[] = "latchkey-keyring v1\naudit ";
  static const char key1[] = "\nkey 1 active ";
  assert_memory_equal(text, head, sizeof(head) - 1);
  assert_memory_equal(text + sizeof(head) - 1 + 44, key1, sizeof(key1) - 1);
  assert_int_equal(strlen(text),
                   sizeof(head) - 1 + 44 + sizeof(key1) - 1 + 44 + 1);
  assert_int_equal(text[strlen(text) - 1], '\n');
  sodium_memzero(text, strlen(text));
  free(text);
  assert_int_equal(count_entries(dir), 1); /* no temp file left */
  lk_keyring_destroy(kr);
}

static void reload_has_the_same_keys(void **state) {
  (void)state;
  char path[4096];
  char hex1[LK_KEYRING_AUDIT_HEX_BYTES];
  char hex2[LK_KEYRING_AUDIT_HEX_BYTES];
  fresh_path(path, sizeof(path), "reload.ring");
  lk_keyring *kr1 = load_ok(path);
  sealed s;
  seal_ok(kr1, "cred-1", "api_key", canary, &s);
  lk_keyring_audit_hash(kr1, canary, strlen(canary), hex1);
  lk_keyring_destroy(kr1);

  lk_keyring *kr2 = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr2), s.key_id);
  unseal_ok(kr2, &s, "cred-1", "api_key", canary);
  lk_keyring_audit_hash(kr2, canary, strlen(canary), hex2);
  assert_string_equal(hex1, hex2);
  free(s.ct);
  lk_keyring_destroy(kr2);
}

static void group_or_other_accessible_file_is_refused(void **state) {
  (void)state;
  static const mode_t bad[] = {0640, 0604, 0620, 0660, 0644};
  char path[4096];
  fresh_path(path, sizeof(path), "perm.ring");
  lk_keyring_destroy(load_ok(path));
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    lk_err err;
    lk_keyring *kr = (lk_keyring *)&err;
    uint32_t id = 0;
    assert_int_equal(chmod(path, bad[i]), 0);
    assert_int_equal(lk_keyring_load_or_create(path, &kr, &err),
                     LK_FAILED_PRECONDITION);
    assert_null(kr);
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(lk_keyring_add_key(path, &id, &err),
                     LK_FAILED_PRECONDITION);
    assert_non_null(strstr(err.msg, "chmod 600"));
  }
  assert_int_equal(chmod(path, 0400), 0); /* owner-only read is fine */
  lk_keyring_destroy(load_ok(path));
  assert_int_equal(chmod(path, 0600), 0);
}

static void malformed_files_are_refused_naming_the_path(void **state) {
  (void)state;
  enum { N = 24, CAP = 600 };
  unsigned char k1[32];
  unsigned char k2[32];
  char b64[64];
  char short64[64];
  randombytes_buf(k1, sizeof(k1));
  randombytes_buf(k2, sizeof(k2));
  sodium_bin2base64(b64, sizeof(b64), k1, 32, sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(short64, sizeof(short64), k1, 16,
                    sodium_base64_VARIANT_ORIGINAL);
  static char cases[N][CAP];
  int n = 0;
  const char *h = "latchkey-keyring v1\n";
  snprintf(cases[n++], CAP, "%s", "");
  snprintf(cases[n++], CAP, "%s", "not a key ring\n");
  snprintf(cases[n++], CAP, "%s", h); /* no keys */
  snprintf(cases[n++], CAP, "latchkey-keyring v2\nkey 1 active %s\n", b64);
  snprintf(cases[n++], CAP, "latchkey-keyring v1 \nkey 1 active %s\n", b64);
  snprintf(cases[n++], CAP, "%skey 1 retiring %s\n", h, b64); /* no active */
  snprintf(cases[n++], CAP, "%skey 1 active %s\nkey 2 active %s\n", h, b64,
           b64);
  snprintf(cases[n++], CAP, "%skey 1 active %s\nkey 1 retiring %s\n", h, b64,
           b64);
  snprintf(cases[n++], CAP, "%skey 0 active %s\n", h, b64);
  snprintf(cases[n++], CAP, "%skey 01 active %s\n", h, b64);
  snprintf(cases[n++], CAP, "%skey 4294967296 active %s\n", h, b64);
  snprintf(cases[n++], CAP, "%skey 1a active %s\n", h, b64);
  snprintf(cases[n++], CAP, "%skey 1 enabled %s\n", h, b64);
  snprintf(cases[n++], CAP, "%skey 1 active %s!\n", h, b64);
  snprintf(cases[n++], CAP, "%skey 1 active %s\n", h, short64);
  snprintf(cases[n++], CAP, "%skey 1 active %s \n", h, b64);
  snprintf(cases[n++], CAP, "%skey 1 active %s\r\n", h, b64);
  snprintf(cases[n++], CAP, "%skey  1 active %s\n", h, b64);
  snprintf(cases[n++], CAP, "%skey 1 active\n", h);
  snprintf(cases[n++], CAP, "%skey 1 active %s\n\n", h, b64); /* blank line */
  snprintf(cases[n++], CAP, "%sKEY 1 active %s\n", h, b64);
  assert_true(n <= N);
  /* Two more: a file over the size cap, and one key more than allowed. */
  size_t big_cap = 64 * 1024;
  char *too_big = calloc(1, big_cap);
  char *too_many = calloc(1, big_cap);
  assert_non_null(too_big);
  assert_non_null(too_many);
  memset(too_big, 'a', LK_KEYRING_MAX_FILE_BYTES + 1);
  snprintf(too_many, big_cap, "%s", h);
  for (uint32_t id = 1; id <= LK_KEYRING_MAX_KEYS + 1; id++) {
    add_line(too_many, big_cap, id, id == 1 ? "active" : "retiring", k2);
  }
  for (int i = 0; i < n + 2; i++) {
    char path[4096];
    lk_err err;
    lk_keyring *kr = (lk_keyring *)&err;
    uint32_t id = 0;
    fresh_path(path, sizeof(path), "bad.ring");
    write_text(path, i < n ? cases[i] : i == n ? too_big : too_many, 0600);
    lk_status st = lk_keyring_load_or_create(path, &kr, &err);
    if (st != LK_INVALID_ARGUMENT) {
      fail_msg("case %d: got %s (%s)", i, lk_status_name(st), err.msg);
    }
    assert_null(kr);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "malformed"));
    assert_null(strstr(err.msg, b64));
    /* Rotation refuses it too, and leaves it as it was. */
    assert_int_equal(lk_keyring_add_key(path, &id, &err), LK_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, path));
    char *after = read_text(path);
    if (i < n) {
      assert_string_equal(after, cases[i]);
    }
    free(after);
  }
  free(too_big);
  free(too_many);
  sodium_memzero(k1, sizeof(k1));
  sodium_memzero(b64, sizeof(b64));
  sodium_memzero(cases, sizeof(cases));
}

static void hand_written_file_loads_in_any_order(void **state) {
  (void)state;
  char path[4096];
  char text[1024] = "latchkey-keyring v1\n";
  unsigned char k7[32];
  unsigned char k3[32];
  randombytes_buf(k7, sizeof(k7));
  randombytes_buf(k3, sizeof(k3));
  add_line(text, sizeof(text), 7, "retiring", k7);
  add_line(text, sizeof(text), 4294967295u, "active", k3);
  text[strlen(text) - 1] = '\0'; /* last newline is optional */
  write_text(fresh_path(path, sizeof(path), "hand.ring"), text, 0600);
  lk_keyring *kr = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr), 4294967295u);
  lk_keyring_destroy(kr);
  sodium_memzero(text, sizeof(text));
  sodium_memzero(k7, sizeof(k7));
  sodium_memzero(k3, sizeof(k3));
}

static void missing_directory_is_failed_precondition(void **state) {
  (void)state;
  char path[4200];
  lk_err err;
  lk_keyring *kr = NULL;
  snprintf(path, sizeof(path), "%s/no-such-dir/ring", tmp_root);
  assert_int_equal(lk_keyring_load_or_create(path, &kr, &err),
                   LK_FAILED_PRECONDITION);
  assert_null(kr);
}

typedef struct {
  const char *path;
  lk_status st;
  char hex[LK_KEYRING_AUDIT_HEX_BYTES];
  uint32_t id;
} race_arg;

static void *load_thread(void *p) {
  race_arg *a = p;
  lk_err err;
  lk_keyring *kr = NULL;
  a->st = lk_keyring_load_or_create(a->path, &kr, &err);
  if (kr != NULL) {
    lk_keyring_audit_hash(kr, "x", 1, a->hex);
  }
  lk_keyring_destroy(kr);
  return NULL;
}

static void concurrent_first_starts_share_one_ring(void **state) {
  (void)state;
  for (int round = 0; round < 10; round++) {
    char path[4096];
    pthread_t t[4];
    race_arg a[4];
    fresh_path(path, sizeof(path), "race.ring");
    for (int i = 0; i < 4; i++) {
      memset(&a[i], 0, sizeof(a[i]));
      a[i].path = path;
      a[i].st = LK_INTERNAL;
      assert_int_equal(pthread_create(&t[i], NULL, load_thread, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
      assert_int_equal(pthread_join(t[i], NULL), 0);
      assert_int_equal(a[i].st, LK_OK);
      assert_string_equal(a[i].hex, a[0].hex);
    }
  }
}

/* ---- sealing ------------------------------------------------------------ */

static lk_keyring *shared_ring(void) {
  static char path[4096];
  if (path[0] == '\0') {
    fresh_path(path, sizeof(path), "shared.ring");
  }
  return load_ok(path);
}

static void seal_round_trips_into_guarded_memory(void **state) {
  (void)state;
  lk_keyring *kr = shared_ring();
  sealed s;
  seal_ok(kr, "cred-1", "api_key", canary, &s);
  assert_null(memmem(s.ct, s.ct_len, canary, strlen(canary)));
  unseal_ok(kr, &s, "cred-1", "api_key", canary);
  free(s.ct);

  lk_err err;
  assert_int_equal(lk_keyring_seal(kr, "cred-1", "note", NULL, 0, &s.key_id,
                                   s.nonce, &s.ct, &s.ct_len, &err),
                   LK_OK);
  assert_int_equal(s.ct_len, LK_SEAL_TAG_BYTES);
  unseal_ok(kr, &s, "cred-1", "note", "");
  free(s.ct);
  lk_keyring_destroy(kr);
}

static void each_seal_uses_a_fresh_nonce(void **state) {
  (void)state;
  lk_keyring *kr = shared_ring();
  sealed a;
  sealed b;
  seal_ok(kr, "cred-1", "api_key", canary, &a);
  seal_ok(kr, "cred-1", "api_key", canary, &b);
  assert_memory_not_equal(a.nonce, b.nonce, sizeof(a.nonce));
  assert_memory_not_equal(a.ct, b.ct, a.ct_len);
  free(a.ct);
  free(b.ct);
  lk_keyring_destroy(kr);
}

static void swapped_record_or_tampering_is_failed_precondition(void **state) {
  (void)state;
  lk_keyring *kr = shared_ring();
  sealed s;
  seal_ok(kr, "cred-1", "api_key", canary, &s);
  uint32_t id = s.key_id;
  assert_mismatch(kr, id, "cred-2", "api_key", s.nonce, sizeof(s.nonce), s.ct,
                  s.ct_len);
  assert_mismatch(kr, id, "cred-1a", "pi_key", s.nonce, sizeof(s.nonce), s.ct,
                  s.ct_len);
  assert_mismatch(kr, id, "cred-1", "password", s.nonce, sizeof(s.nonce), s.ct,
                  s.ct_len);
  s.nonce[3] ^= 0x10;
  assert_mismatch(kr, id, "cred-1", "api_key", s.nonce, sizeof(s.nonce), s.ct,
                  s.ct_len);
  s.nonce[3] ^= 0x10;
  assert_mismatch(kr, id, "cred-1", "api_key", s.nonce, sizeof(s.nonce) - 1,
                  s.ct, s.ct_len);
  size_t where[] = {0, s.ct_len / 2, s.ct_len - 1};
  for (size_t i = 0; i < 3; i++) {
    s.ct[where[i]] ^= 0x01;
    assert_mismatch(kr, id, "cred-1", "api_key", s.nonce, sizeof(s.nonce), s.ct,
                    s.ct_len);
    s.ct[where[i]] ^= 0x01;
  }
  assert_mismatch(kr, id, "cred-1", "api_key", s.nonce, sizeof(s.nonce), s.ct,
                  s.ct_len - 1);
  assert_mismatch(kr, id, "cred-1", "api_key", s.nonce, sizeof(s.nonce), s.ct,
                  LK_SEAL_TAG_BYTES - 1);
  unseal_ok(kr, &s, "cred-1", "api_key", canary); /* all restored */
  free(s.ct);
  lk_keyring_destroy(kr);
}

static void unknown_key_id_is_failed_precondition_naming_it(void **state) {
  (void)state;
  lk_err err;
  lk_keyring *kr = shared_ring();
  sealed s;
  seal_ok(kr, "cred-1", "api_key", canary, &s);
  lk_secret *out = (lk_secret *)&err;
  assert_int_equal(
      lk_keyring_unseal(kr, 77, "cred-1", "api_key", s.nonce, sizeof(s.nonce),
                        s.ct, s.ct_len, &out, &err),
      LK_FAILED_PRECONDITION);
  assert_null(out);
  assert_string_equal(err.msg,
                      "credential cred-1 field api_key is sealed under key "
                      "ring key 77, which this key ring does not hold: use "
                      "the key ring that has it, or re-enter the credential");
  free(s.ct);
  lk_keyring_destroy(kr);
}

static void size_limits_are_invalid_argument(void **state) {
  (void)state;
  lk_err err;
  lk_keyring *kr = shared_ring();
  uint32_t id = 0;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  unsigned char *big = calloc(1, LK_SEAL_MAX_CT_BYTES + 1);
  assert_non_null(big);
  assert_int_equal(lk_keyring_seal(kr, "c", "f", big, LK_SEAL_MAX_PT_BYTES + 1,
                                   &id, nonce, &ct, &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(ct);
  assert_int_equal(lk_keyring_seal(kr, "c", "f", big, LK_SEAL_MAX_PT_BYTES, &id,
                                   nonce, &ct, &ct_len, &err),
                   LK_OK);
  assert_int_equal(ct_len, LK_SEAL_MAX_CT_BYTES);
  lk_secret *pt = NULL;
  assert_int_equal(lk_keyring_unseal(kr, id, "c", "f", nonce, sizeof(nonce), ct,
                                     ct_len, &pt, &err),
                   LK_OK);
  assert_int_equal(lk_secret_len(pt), LK_SEAL_MAX_PT_BYTES);
  lk_secret_free(pt);
  free(ct);
  ct = NULL;
  assert_int_equal(lk_keyring_unseal(kr, id, "c", "f", nonce, sizeof(nonce),
                                     big, LK_SEAL_MAX_CT_BYTES + 1, &pt, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(pt);
  char long_name[LK_SEAL_MAX_NAME_BYTES + 2];
  memset(long_name, 'x', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';
  assert_int_equal(lk_keyring_seal(kr, long_name, "f", big, 1, &id, nonce, &ct,
                                   &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_keyring_seal(kr, "c", long_name, big, 1, &id, nonce, &ct,
                                   &ct_len, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(ct);
  free(big);
  lk_keyring_destroy(kr);
}

static void canary_is_in_no_file(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  sealed s;
  seal_ok(kr, "cred-1", "api_key", canary, &s);
  unseal_ok(kr, &s, "cred-1", "api_key", canary);
  assert_true(add_ok(path) == 2);
  lk_keyring_destroy(kr);
  kr = load_ok(path);
  unseal_ok(kr, &s, "cred-1", "api_key", canary);
  char *text = read_text(path);
  assert_null(strstr(text, canary));
  assert_null(strstr(text, "sk-live"));
  sodium_memzero(text, strlen(text));
  free(text);
  assert_int_equal(count_entries(dir), 1);
  free(s.ct);
  lk_keyring_destroy(kr);
}

/* ---- rotation ----------------------------------------------------------- */

static void add_key_makes_a_new_active_key_and_old_ones_still_unseal(
    void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr1 = load_ok(path);
  sealed s1;
  seal_ok(kr1, "cred-1", "api_key", canary, &s1);
  assert_int_equal(s1.key_id, 1);

  assert_int_equal(add_ok(path), 2);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  assert_int_equal(count_entries(dir), 1);
  char *text = read_text(path);
  assert_memory_equal(text, "latchkey-keyring v1\naudit ", 26);
  assert_memory_equal(text + 26 + 44, "\nkey 1 retiring ", 16);
  assert_non_null(strstr(text, "\nkey 2 active "));
  sodium_memzero(text, strlen(text));
  free(text);

  /* A ring loaded before the rotation is unchanged. */
  assert_int_equal(lk_keyring_active_id(kr1), 1);
  unseal_ok(kr1, &s1, "cred-1", "api_key", canary);

  lk_keyring *kr2 = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr2), 2);
  unseal_ok(kr2, &s1, "cred-1", "api_key", canary);
  sealed s2;
  seal_ok(kr2, "cred-1", "api_key", canary, &s2);
  assert_int_equal(s2.key_id, 2);
  unseal_ok(kr2, &s2, "cred-1", "api_key", canary);
  /* Each ciphertext is bound to its key id. */
  assert_mismatch(kr2, 1, "cred-1", "api_key", s2.nonce, sizeof(s2.nonce),
                  s2.ct, s2.ct_len);
  assert_mismatch(kr2, 2, "cred-1", "api_key", s1.nonce, sizeof(s1.nonce),
                  s1.ct, s1.ct_len);

  assert_int_equal(add_ok(path), 3);
  lk_keyring *kr3 = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr3), 3);
  unseal_ok(kr3, &s1, "cred-1", "api_key", canary);
  unseal_ok(kr3, &s2, "cred-1", "api_key", canary);
  free(s1.ct);
  free(s2.ct);
  lk_keyring_destroy(kr1);
  lk_keyring_destroy(kr2);
  lk_keyring_destroy(kr3);
}

static void add_key_to_a_missing_ring_is_not_found(void **state) {
  (void)state;
  char path[4096];
  lk_err err;
  uint32_t id = 0;
  fresh_path(path, sizeof(path), "missing.ring");
  assert_int_equal(lk_keyring_add_key(path, &id, &err), LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, path));
  assert_int_equal(access(path, F_OK), -1);
}

static void add_key_to_a_full_ring_is_failed_precondition(void **state) {
  (void)state;
  unsigned char key[32];
  randombytes_buf(key, sizeof(key));
  for (int which = 0; which < 2; which++) {
    char path[4096];
    lk_err err;
    uint32_t id = 0;
    size_t cap = 64 * 1024;
    char *text = calloc(1, cap);
    assert_non_null(text);
    snprintf(text, cap, "latchkey-keyring v1\n");
    add_audit_line(text, cap, key);
    if (which == 0) { /* as many keys as allowed */
      for (uint32_t i = 1; i <= LK_KEYRING_MAX_KEYS; i++) {
        add_line(text, cap, i, i == 1 ? "active" : "retiring", key);
      }
    } else { /* no id left above the highest */
      add_line(text, cap, 4294967295u, "active", key);
    }
    write_text(fresh_path(path, sizeof(path), "full.ring"), text, 0600);
    lk_keyring_destroy(load_ok(path));
    assert_int_equal(lk_keyring_add_key(path, &id, &err),
                     LK_FAILED_PRECONDITION);
    assert_non_null(strstr(err.msg, path));
    char *after = read_text(path);
    assert_string_equal(after, text);
    free(after);
    sodium_memzero(text, cap);
    free(text);
  }
  sodium_memzero(key, sizeof(key));
}

static void *add_thread(void *p) {
  race_arg *a = p;
  lk_err err;
  a->st = lk_keyring_add_key(a->path, &a->id, &err);
  return NULL;
}

/* Adds ADDS_PER_PROCESS keys to path, writing each new id to fd. */
#define ADDS_PER_PROCESS 12
static void add_keys_and_report(const char *path, int fd) {
  for (int i = 0; i < ADDS_PER_PROCESS; i++) {
    lk_err err;
    uint32_t id = 0;
    if (lk_keyring_add_key(path, &id, &err) != LK_OK) {
      id = 0;
    }
    if (write(fd, &id, sizeof(id)) != (ssize_t)sizeof(id)) {
      _exit(3);
    }
  }
}

static void two_processes_adding_keys_get_distinct_consecutive_ids(
    void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  int fds[2];
  pid_t kids[2];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring_destroy(load_ok(path));
  assert_int_equal(pipe(fds), 0);
  for (int k = 0; k < 2; k++) {
    kids[k] = fork();
    assert_true(kids[k] >= 0);
    if (kids[k] == 0) {
      close(fds[0]);
      add_keys_and_report(path, fds[1]);
      _exit(0);
    }
  }
  close(fds[1]);
  uint64_t seen = 0;
  uint32_t id = 0;
  int got = 0;
  while (read(fds[0], &id, sizeof(id)) == (ssize_t)sizeof(id)) {
    assert_true(id >= 2 && id < 2 + 2 * ADDS_PER_PROCESS);
    assert_false(seen & (1ull << id)); /* no id handed out twice */
    seen |= 1ull << id;
    got++;
  }
  close(fds[0]);
  for (int k = 0; k < 2; k++) {
    int ws = 0;
    assert_int_equal(waitpid(kids[k], &ws, 0), kids[k]);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  }
  assert_int_equal(got, 2 * ADDS_PER_PROCESS);
  lk_keyring *kr = load_ok(path);
  uint32_t ids[LK_KEYRING_MAX_KEYS];
  uint32_t active = 0;
  size_t n = lk_keyring_key_ids(kr, ids, &active);
  assert_int_equal(n, 1 + 2 * ADDS_PER_PROCESS); /* every key is in it */
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(ids[i], i + 1);
  }
  assert_int_equal(active, 1 + 2 * ADDS_PER_PROCESS);
  lk_keyring_destroy(kr);
}

static void add_key_waits_for_the_fcntl_lock_on_the_lock_file(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  char lock_path[4300];
  pthread_t t;
  race_arg a;
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring_destroy(load_ok(path));
  snprintf(lock_path, sizeof(lock_path), "%s.lock", path);
  /* Another host holding the lock looks, over NFS, like this. */
  int fd = open(lock_path, O_RDWR | O_CREAT, 0600);
  assert_true(fd >= 0);
  struct flock fl;
  memset(&fl, 0, sizeof(fl));
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  assert_int_equal(fcntl(fd, F_OFD_SETLK, &fl), 0);
  memset(&a, 0, sizeof(a));
  a.path = path;
  a.st = LK_INTERNAL;
  assert_int_equal(pthread_create(&t, NULL, add_thread, &a), 0);
  usleep(300 * 1000);
  lk_keyring *kr = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr), 1); /* still waiting */
  lk_keyring_destroy(kr);
  close(fd); /* releases the lock */
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_int_equal(a.st, LK_OK);
  assert_int_equal(a.id, 2);
  struct stat sb;
  assert_int_equal(stat(lock_path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
}

/* This host's name as lk_keyfile_write puts it in temp names. */
static void temp_host(char out[65]) {
  char raw[256] = {0};
  size_t n = 0;
  assert_int_equal(gethostname(raw, sizeof(raw) - 1), 0);
  for (; raw[n] != '\0' && n < 64; n++) {
    char ch = raw[n];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             (ch >= '0' && ch <= '9') || ch == '.';
    out[n] = ok ? ch : '_';
  }
  if (n == 0) {
    out[n++] = '_';
  }
  out[n] = '\0';
}

static void touch(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  assert_true(fd >= 0);
  close(fd);
}

static int exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

static void add_and_remove_key_remove_temps_left_by_killed_writers(
    void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  char host[65];
  char dead_old[4400], dead_here[4400], dead_there[4400], live[4400];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring_destroy(load_ok(path));
  temp_host(host);
  /* pid 2^22 + 1 is above the largest pid Linux allows: its writer died.
   * Old-style and host-named ones go; another host's and a live
   * process's (our parent) stay. */
  snprintf(dead_old, sizeof(dead_old), "%s.tmp-4194305-0badc0de", path);
  snprintf(dead_here, sizeof(dead_here), "%s.tmp-%s-4194305-0badc0df", path,
           host);
  snprintf(dead_there, sizeof(dead_there),
           "%s.tmp-some-other.host-4194305-0badc0d0", path);
  snprintf(live, sizeof(live), "%s.tmp-%s-%d-0badc0d1", path, host,
           (int)getppid());
  const char *made[] = {dead_old, dead_here, dead_there, live};
  for (int i = 0; i < 4; i++) {
    touch(made[i]);
  }
  assert_int_equal(add_ok(path), 2);
  assert_false(exists(dead_old));
  assert_false(exists(dead_here));
  assert_true(exists(dead_there));
  assert_true(exists(live));
  touch(dead_here);
  lk_err err;
  assert_int_equal(lk_keyring_remove_key(path, 1, &err), LK_OK);
  assert_false(exists(dead_here));
  assert_true(exists(live));
}

static void temps_named_with_our_own_pid_are_stale_only_at_start(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  char host[65];
  char own[4400];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring_destroy(load_ok(path));
  temp_host(host);
  /* A restarted container's process is PID 1 again: the temp its killed
   * predecessor left carries the pid it has now. */
  snprintf(own, sizeof(own), "%s.tmp-%s-%d-0badc0de", path, host,
           (int)getpid());
  touch(own);
  assert_int_equal(lk_keyfile_remove_stale_temps(path), 0);
  assert_true(exists(own)); /* could be a write of ours in flight */
  assert_int_equal(lk_keyfile_remove_stale_temps_at_start(path), 1);
  assert_false(exists(own));
}

static void concurrent_add_keys_lose_no_key(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  pthread_t t[4];
  race_arg a[4];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  sealed s;
  seal_ok(kr, "cred-1", "api_key", canary, &s);
  lk_keyring_destroy(kr);
  for (int i = 0; i < 4; i++) {
    memset(&a[i], 0, sizeof(a[i]));
    a[i].path = path;
    a[i].st = LK_INTERNAL;
    assert_int_equal(pthread_create(&t[i], NULL, add_thread, &a[i]), 0);
  }
  unsigned seen = 0;
  for (int i = 0; i < 4; i++) {
    assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(a[i].st, LK_OK);
    assert_true(a[i].id >= 2 && a[i].id <= 5);
    seen |= 1u << a[i].id;
  }
  assert_int_equal(seen, 0x3cu); /* ids 2, 3, 4 and 5, each once */
  kr = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr), 5);
  unseal_ok(kr, &s, "cred-1", "api_key", canary);
  char *text = read_text(path);
  int lines = 0;
  for (char *p = text; *p != '\0'; p++) {
    lines += *p == '\n';
  }
  assert_int_equal(lines, 7); /* header, audit, five keys */
  sodium_memzero(text, strlen(text));
  free(text);
  assert_int_equal(count_entries(dir), 1);
  free(s.ct);
  lk_keyring_destroy(kr);
}

/* ---- reloading in place and removing keys ------------------------------ */

static void remove_ok(const char *path, uint32_t id) {
  lk_err err;
  lk_status st = lk_keyring_remove_key(path, id, &err);
  if (st != LK_OK) {
    fail_msg("remove key %u %s: %s: %s", (unsigned)id, path, lk_status_name(st),
             err.msg);
  }
}

static void refresh_ok(lk_keyring *kr, int want_reloaded) {
  lk_err err;
  int reloaded = -1;
  lk_status st = lk_keyring_refresh(kr, &reloaded, &err);
  if (st != LK_OK) {
    fail_msg("refresh: %s: %s", lk_status_name(st), err.msg);
  }
  assert_int_equal(reloaded, want_reloaded);
}

/* Asserts that kr holds exactly the keys ids[0..n) and active. */
static void assert_keys(const lk_keyring *kr, const uint32_t *want, size_t n,
                        uint32_t active) {
  uint32_t ids[LK_KEYRING_MAX_KEYS];
  uint32_t got_active = 0;
  assert_int_equal(lk_keyring_key_ids(kr, ids, &got_active), n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(ids[i], want[i]);
    assert_true(lk_keyring_has_key(kr, want[i]));
  }
  assert_int_equal(got_active, active);
  assert_int_equal(lk_keyring_active_id(kr), active);
}

/* Returns the base64 text of key id in the ring file at path (malloc'd),
 * or NULL when the file has no such key. */
static char *key_text(const char *path, uint32_t id) {
  char *text = read_text(path);
  char head[32];
  snprintf(head, sizeof(head), "\nkey %u ", (unsigned)id);
  char *line = strstr(text, head);
  char *out = NULL;
  if (line != NULL) {
    char *b64 = strchr(line + strlen(head), ' ');
    assert_non_null(b64);
    b64++;
    size_t len = strcspn(b64, "\n");
    out = calloc(1, len + 1);
    assert_non_null(out);
    memcpy(out, b64, len);
  }
  sodium_memzero(text, strlen(text));
  free(text);
  return out;
}

static void reload_in_place_takes_the_files_keys_behind_the_same_pointer(
    void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  lk_err err;
  sealed s1;
  seal_ok(kr, "cred-1", "api_key", canary, &s1);
  assert_int_equal(add_ok(path), 2);
  /* Not yet reloaded: the old view, whole. */
  assert_keys(kr, (const uint32_t[]){1}, 1, 1);
  assert_int_equal(lk_keyring_reload(kr, &err), LK_OK);
  assert_string_equal(lk_keyring_path(kr), path);
  assert_keys(kr, (const uint32_t[]){1, 2}, 2, 2);
  sealed s2;
  seal_ok(kr, "cred-1", "api_key", canary, &s2);
  assert_int_equal(s2.key_id, 2);
  unseal_ok(kr, &s1, "cred-1", "api_key", canary);
  unseal_ok(kr, &s2, "cred-1", "api_key", canary);
  free(s1.ct);
  free(s2.ct);
  lk_keyring_destroy(kr);
}

static void refresh_reloads_only_when_the_file_changed(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  refresh_ok(kr, 0);
  refresh_ok(kr, 0);
  /* Another process (here: another ring) rotates the shared file. */
  assert_int_equal(add_ok(path), 2);
  refresh_ok(kr, 1);
  assert_keys(kr, (const uint32_t[]){1, 2}, 2, 2);
  refresh_ok(kr, 0);
  remove_ok(path, 1);
  refresh_ok(kr, 1);
  assert_keys(kr, (const uint32_t[]){2}, 1, 2);
  refresh_ok(kr, 0);
  lk_keyring_destroy(kr);
}

static void reload_of_a_bad_file_keeps_the_old_keys(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  lk_err err;
  sealed s1;
  seal_ok(kr, "cred-1", "api_key", canary, &s1);
  char *good = read_text(path);
  write_text(path, "latchkey-keyring v1\nkey 1 active nope\n", 0600);
  assert_int_equal(lk_keyring_refresh(kr, NULL, &err), LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, path));
  assert_int_equal(lk_keyring_reload(kr, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(chmod(path, 0644), 0);
  assert_int_equal(lk_keyring_reload(kr, &err), LK_FAILED_PRECONDITION);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(lk_keyring_reload(kr, &err), LK_NOT_FOUND);
  assert_int_equal(lk_keyring_refresh(kr, NULL, &err), LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, path));
  assert_keys(kr, (const uint32_t[]){1}, 1, 1);
  unseal_ok(kr, &s1, "cred-1", "api_key", canary);
  /* The good file back: the ring follows it again. */
  write_text(path, good, 0600);
  refresh_ok(kr, 1);
  unseal_ok(kr, &s1, "cred-1", "api_key", canary);
  sodium_memzero(good, strlen(good));
  free(good);
  free(s1.ct);
  lk_keyring_destroy(kr);
}

static void remove_key_drops_exactly_that_key_from_the_file(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  sealed s1;
  seal_ok(kr, "cred-1", "api_key", canary, &s1);
  assert_int_equal(add_ok(path), 2);
  assert_int_equal(add_ok(path), 3);
  char *k1 = key_text(path, 1);
  char *k3 = key_text(path, 3);
  assert_non_null(k1);
  remove_ok(path, 2);
  char *text = read_text(path);
  assert_non_null(strstr(text, "\nkey 1 retiring "));
  assert_null(strstr(text, "\nkey 2 "));
  assert_non_null(strstr(text, "\nkey 3 active "));
  remove_ok(path, 1);
  sodium_memzero(text, strlen(text));
  free(text);
  text = read_text(path);
  assert_null(strstr(text, k1)); /* the key's bytes are gone from the file */
  assert_non_null(strstr(text, k3));
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  assert_int_equal(count_entries(dir), 1); /* no temp file left */
  /* A ring still holding key 1 opens s1 until it reloads. */
  unseal_ok(kr, &s1, "cred-1", "api_key", canary);
  refresh_ok(kr, 1);
  assert_keys(kr, (const uint32_t[]){3}, 1, 3);
  lk_err err;
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_keyring_unseal(kr, 1, "cred-1", "api_key", s1.nonce, sizeof(s1.nonce),
                        s1.ct, s1.ct_len, &pt, &err),
      LK_FAILED_PRECONDITION);
  assert_null(pt);
  assert_non_null(strstr(err.msg, "key ring key 1, which this key ring"));
  sodium_memzero(text, strlen(text));
  free(text);
  sodium_memzero(k1, strlen(k1));
  sodium_memzero(k3, strlen(k3));
  free(k1);
  free(k3);
  free(s1.ct);
  lk_keyring_destroy(kr);
}

static void removing_the_active_or_an_unknown_key_is_refused(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring_destroy(load_ok(path));
  assert_int_equal(add_ok(path), 2);
  char *before = read_text(path);
  lk_err err;
  assert_int_equal(lk_keyring_remove_key(path, 2, &err),
                   LK_FAILED_PRECONDITION);
  char want[4400];
  snprintf(want, sizeof(want),
           "key 2 is the active key of key ring %s: rotate to a new key and "
           "re-seal before removing it",
           path);
  assert_string_equal(err.msg, want);
  assert_int_equal(lk_keyring_remove_key(path, 7, &err), LK_NOT_FOUND);
  snprintf(want, sizeof(want), "key ring %s holds no key 7", path);
  assert_string_equal(err.msg, want);
  char *after = read_text(path);
  assert_string_equal(after, before);
  char missing[4096];
  fresh_path(missing, sizeof(missing), "missing.ring");
  assert_int_equal(lk_keyring_remove_key(missing, 1, &err), LK_NOT_FOUND);
  sodium_memzero(before, strlen(before));
  sodium_memzero(after, strlen(after));
  free(before);
  free(after);
}

/* Shared by the sealing threads of the concurrent reload test. */
typedef struct {
  lk_keyring *kr;
  const sealed *first;  /* sealed under key 1, which is never removed */
  const char *want_hex; /* the canary's audit hash before any rotation */
  atomic_int *stop;
  int failures;
  int rounds;
} churn_arg;

static void *churn_thread(void *p) {
  churn_arg *a = p;
  char cred[32];
  snprintf(cred, sizeof(cred), "cred-%p", p);
  while (!atomic_load(a->stop)) {
    lk_err err;
    sealed s;
    lk_secret *pt = NULL;
    if (lk_keyring_seal(a->kr, cred, "api_key", (const unsigned char *)canary,
                        strlen(canary), &s.key_id, s.nonce, &s.ct, &s.ct_len,
                        &err) != LK_OK) {
      a->failures++;
      continue;
    }
    /* No key is removed while the threads run: whatever key sealed it
     * must still open it, across any number of reloads. */
    if (lk_keyring_unseal(a->kr, s.key_id, cred, "api_key", s.nonce,
                          sizeof(s.nonce), s.ct, s.ct_len, &pt,
                          &err) != LK_OK ||
        lk_secret_len(pt) != strlen(canary) ||
        memcmp(lk_secret_data(pt), canary, strlen(canary)) != 0) {
      a->failures++;
    }
    lk_secret_free(pt);
    pt = NULL;
    free(s.ct);
    if (lk_keyring_unseal(a->kr, a->first->key_id, "cred-1", "api_key",
                          a->first->nonce, sizeof(a->first->nonce),
                          a->first->ct, a->first->ct_len, &pt, &err) != LK_OK) {
      a->failures++;
    }
    lk_secret_free(pt);
    char hex[LK_KEYRING_AUDIT_HEX_BYTES];
    lk_keyring_audit_hash(a->kr, canary, strlen(canary), hex);
    if (strcmp(hex, a->want_hex) != 0) {
      a->failures++;
    }
    a->rounds++;
  }
  return NULL;
}

static void seal_and_unseal_keep_working_during_reloads(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  enum { THREADS = 4, ROTATIONS = 40 };
  pthread_t t[THREADS];
  churn_arg a[THREADS];
  atomic_int stop = 0;
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  sealed first;
  char want_hex[LK_KEYRING_AUDIT_HEX_BYTES];
  seal_ok(kr, "cred-1", "api_key", canary, &first);
  lk_keyring_audit_hash(kr, canary, strlen(canary), want_hex);
  for (int i = 0; i < THREADS; i++) {
    memset(&a[i], 0, sizeof(a[i]));
    a[i].kr = kr;
    a[i].first = &first;
    a[i].want_hex = want_hex;
    a[i].stop = &stop;
    assert_int_equal(pthread_create(&t[i], NULL, churn_thread, &a[i]), 0);
  }
  /* Rotate and reload while the threads work. */
  uint32_t last = 1;
  for (int r = 0; r < ROTATIONS; r++) {
    lk_err err;
    last = add_ok(path);
    assert_int_equal(lk_keyring_refresh(kr, NULL, &err), LK_OK);
    assert_int_equal(lk_keyring_active_id(kr), last);
    usleep(2000);
  }
  atomic_store(&stop, 1);
  int rounds = 0;
  for (int i = 0; i < THREADS; i++) {
    assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(a[i].failures, 0);
    rounds += a[i].rounds;
  }
  assert_true(rounds > 0);
  /* Then retire every key but the active one, reloading as we go. */
  for (uint32_t id = 2; id < last; id++) {
    remove_ok(path, id);
    refresh_ok(kr, 1);
  }
  assert_keys(kr, (const uint32_t[]){1, last}, 2, last);
  unseal_ok(kr, &first, "cred-1", "api_key", canary);
  free(first.ct);
  lk_keyring_destroy(kr);
}

/* ---- documented formats ------------------------------------------------ */

/* Seals with libsodium under a hand-written ring's keys, following
 * keyring.h's associated data, and checks both directions. */
typedef struct {
  lk_keyring *kr;
  atomic_int *stop;
} busy_arg;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Seals large values back to back until told to stop, or for 5 s at most
 * (so a starved reload fails the test instead of hanging it). */
static void *busy_sealer(void *p) {
  busy_arg *a = p;
  size_t len = LK_SEAL_MAX_PT_BYTES;
  unsigned char *pt = calloc(1, len);
  int64_t until = now_ms() + 5000;
  assert_non_null(pt);
  while (!atomic_load(a->stop) && now_ms() < until) {
    uint32_t id = 0;
    unsigned char nonce[LK_SEAL_NONCE_BYTES];
    unsigned char *ct = NULL;
    size_t ct_len = 0;
    lk_err err;
    if (lk_keyring_seal(a->kr, "cred-1", "api_key", pt, len, &id, nonce, &ct,
                        &ct_len, &err) == LK_OK) {
      free(ct);
    }
  }
  free(pt);
  return NULL;
}

static void reload_is_not_starved_by_a_stream_of_seals(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  enum { READERS = 8 };
  pthread_t t[READERS];
  busy_arg a;
  atomic_int stop = 0;
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  a.kr = kr;
  a.stop = &stop;
  for (int i = 0; i < READERS; i++) {
    assert_int_equal(pthread_create(&t[i], NULL, busy_sealer, &a), 0);
  }
  usleep(100 * 1000); /* the readers overlap all the time now */
  assert_int_equal(add_ok(path), 2);
  lk_err err;
  int64_t t0 = now_ms();
  assert_int_equal(lk_keyring_reload(kr, &err), LK_OK);
  int64_t took = now_ms() - t0;
  atomic_store(&stop, 1);
  for (int i = 0; i < READERS; i++) {
    assert_int_equal(pthread_join(t[i], NULL), 0);
  }
  assert_int_equal(lk_keyring_active_id(kr), 2);
  /* With readers preferred it waits until they all stop (never, here). */
  if (took > 2000) {
    fail_msg("reload waited %lld ms behind the readers", (long long)took);
  }
  lk_keyring_destroy(kr);
}

static void documented_format_interoperates(void **state) {
  (void)state;
  char path[4096];
  char text[1024] = "latchkey-keyring v1\n";
  unsigned char k5[32];
  unsigned char k9[32];
  unsigned char nonce[24];
  const char ad[] = "cred-9\0token\0\x00\x00\x00\x05";
  unsigned char ct[sizeof(canary) - 1 + 16];
  unsigned long long ct_len = 0;
  unsigned char pt[sizeof(canary)];
  unsigned long long pt_len = 0;
  lk_err err;
  randombytes_buf(k5, sizeof(k5));
  randombytes_buf(k9, sizeof(k9));
  add_line(text, sizeof(text), 5, "retiring", k5);
  add_line(text, sizeof(text), 9, "active", k9);
  write_text(fresh_path(path, sizeof(path), "interop.ring"), text, 0600);
  lk_keyring *kr = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr), 9);

  randombytes_buf(nonce, sizeof(nonce));
  assert_int_equal(
      crypto_aead_xchacha20poly1305_ietf_encrypt(
          ct, &ct_len, (const unsigned char *)canary, sizeof(canary) - 1,
          (const unsigned char *)ad, sizeof(ad) - 1, NULL, nonce, k5),
      0);
  lk_secret *out = NULL;
  assert_int_equal(
      lk_keyring_unseal(kr, 5, "cred-9", "token", nonce, sizeof(nonce), ct,
                        (size_t)ct_len, &out, &err),
      LK_OK);
  assert_string_equal(lk_secret_str(out), canary);
  lk_secret_free(out);

  sealed s;
  seal_ok(kr, "cred-9", "token", canary, &s);
  const char ad9[] = "cred-9\0token\0\x00\x00\x00\x09";
  assert_int_equal(
      crypto_aead_xchacha20poly1305_ietf_decrypt(
          pt, &pt_len, NULL, s.ct, s.ct_len, (const unsigned char *)ad9,
          sizeof(ad9) - 1, s.nonce, k9),
      0);
  assert_int_equal(pt_len, sizeof(canary) - 1);
  assert_memory_equal(pt, canary, sizeof(canary) - 1);
  free(s.ct);
  lk_keyring_destroy(kr);
  sodium_memzero(text, sizeof(text));
  sodium_memzero(k5, sizeof(k5));
  sodium_memzero(k9, sizeof(k9));
  sodium_memzero(pt, sizeof(pt));
}

static void audit_hash_is_the_documented_keyed_blake2b(void **state) {
  (void)state;
  char path[4096];
  char text[1024] = "latchkey-keyring v1\n";
  unsigned char audit[32];
  unsigned char k1[32];
  unsigned char k2[32];
  char want[65];
  char got[LK_KEYRING_AUDIT_HEX_BYTES];
  char other[LK_KEYRING_AUDIT_HEX_BYTES];
  randombytes_buf(audit, sizeof(audit));
  randombytes_buf(k1, sizeof(k1));
  randombytes_buf(k2, sizeof(k2));
  add_audit_line(text, sizeof(text), audit);
  add_line(text, sizeof(text), 1, "retiring", k1);
  add_line(text, sizeof(text), 2, "active", k2);
  write_text(fresh_path(path, sizeof(path), "audit.ring"), text, 0600);
  lk_keyring *kr = load_ok(path);

  documented_hash(audit, canary, want);
  lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, got);
  assert_int_equal(strlen(got), 64);
  assert_string_equal(got, want);
  assert_null(strstr(got, canary));
  /* The file was not rewritten: it already had its audit line. */
  char *after = read_text(path);
  assert_string_equal(after, text);
  free(after);

  lk_keyring_audit_hash(kr, "sk-live-other", 13, other);
  assert_string_not_equal(other, got);
  lk_keyring_audit_hash(kr, NULL, 0, other); /* empty value is fine */
  assert_int_equal(strlen(other), 64);

  /* The copy handed to the sync server is the audit key itself. */
  lk_err err;
  lk_secret *copy = NULL;
  assert_int_equal(lk_keyring_audit_key(kr, &copy, &err), LK_OK);
  assert_int_equal(lk_secret_len(copy), 32);
  assert_memory_equal(lk_secret_data(copy), audit, 32);
  lk_secret_free(copy);
  lk_keyring_destroy(kr);
  sodium_memzero(text, sizeof(text));
  sodium_memzero(audit, sizeof(audit));
  sodium_memzero(k1, sizeof(k1));
  sodium_memzero(k2, sizeof(k2));
}

static void audit_hash_is_stable_across_add_key(void **state) {
  (void)state;
  char path[4096];
  char before[LK_KEYRING_AUDIT_HEX_BYTES];
  char after[LK_KEYRING_AUDIT_HEX_BYTES];
  fresh_path(path, sizeof(path), "stable.ring");
  lk_keyring *kr1 = load_ok(path);
  lk_keyring_audit_hash(kr1, canary, sizeof(canary) - 1, before);
  lk_keyring_destroy(kr1);
  for (uint32_t want = 2; want <= 4; want++) {
    assert_int_equal(add_ok(path), want);
    lk_keyring *kr = load_ok(path);
    assert_int_equal(lk_keyring_active_id(kr), want);
    lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, after);
    assert_string_equal(after, before);
    lk_keyring_destroy(kr);
  }
  char *text = read_text(path);
  int audits = 0;
  for (char *p = strstr(text, "\naudit "); p != NULL;
       p = strstr(p + 1, "\naudit ")) {
    audits++;
  }
  assert_int_equal(audits, 1);
  sodium_memzero(text, strlen(text));
  free(text);
}

/* Returns the audit line of the ring file at path (malloc'd, newline
 * excluded); fails when there is not exactly one, right after the header. */
static char *audit_line_of(const char *path) {
  char *text = read_text(path);
  static const char head[] = "latchkey-keyring v1\naudit ";
  assert_memory_equal(text, head, sizeof(head) - 1);
  assert_null(strstr(text + sizeof(head) - 1, "\naudit "));
  size_t len = strcspn(text + strlen("latchkey-keyring v1\n"), "\n");
  char *out = calloc(1, len + 1);
  assert_non_null(out);
  memcpy(out, text + strlen("latchkey-keyring v1\n"), len);
  sodium_memzero(text, strlen(text));
  free(text);
  return out;
}

static void audit_key_survives_reload_removal_and_an_old_file_put_back(
    void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  char before[LK_KEYRING_AUDIT_HEX_BYTES];
  char now[LK_KEYRING_AUDIT_HEX_BYTES];
  lk_err err;
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  lk_keyring *kr = load_ok(path);
  lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, before);
  char *line = audit_line_of(path);

  /* A whole rotation: new key, reload, retire the old key, reload. */
  assert_int_equal(add_ok(path), 2);
  refresh_ok(kr, 1);
  lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, now);
  assert_string_equal(now, before);
  remove_ok(path, 1);
  char *after = audit_line_of(path);
  assert_string_equal(after, line);
  free(after);
  refresh_ok(kr, 1);
  assert_keys(kr, (const uint32_t[]){2}, 1, 2);
  lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, now);
  assert_string_equal(now, before);

  /* An old backup without the audit line put back: the reload writes the
   * ring's own audit key into it, so the hashes do not move. */
  char old[1024] = "latchkey-keyring v1\n";
  unsigned char k5[32];
  randombytes_buf(k5, sizeof(k5));
  add_line(old, sizeof(old), 5, "active", k5);
  write_text(path, old, 0600);
  refresh_ok(kr, 1);
  assert_keys(kr, (const uint32_t[]){5}, 1, 5);
  lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, now);
  assert_string_equal(now, before);
  after = audit_line_of(path);
  assert_string_equal(after, line);
  free(after);
  assert_int_equal(count_entries(dir), 1); /* no temp file left */
  /* What it wrote is a file like any other: a fresh load agrees. */
  lk_keyring *again = load_ok(path);
  lk_keyring_audit_hash(again, canary, sizeof(canary) - 1, now);
  assert_string_equal(now, before);
  lk_keyring_destroy(again);
  refresh_ok(kr, 0);

  /* And the copy handed to Sync is the same key. */
  lk_secret *key = NULL;
  assert_int_equal(lk_keyring_audit_key(kr, &key, &err), LK_OK);
  assert_int_equal(lk_secret_len(key), 32);
  char want[65];
  documented_hash(lk_secret_data(key), canary, want);
  assert_string_equal(want, before);
  lk_secret_free(key);
  sodium_memzero(k5, sizeof(k5));
  sodium_memzero(line, strlen(line));
  free(line);
  lk_keyring_destroy(kr);
}

static void old_ring_without_audit_line_is_upgraded_in_place(void **state) {
  (void)state;
  char dir[4096];
  char path[4200];
  char old[1024] = "latchkey-keyring v1\n";
  unsigned char k3[32];
  unsigned char k4[32];
  char hex1[LK_KEYRING_AUDIT_HEX_BYTES];
  char hex2[LK_KEYRING_AUDIT_HEX_BYTES];
  randombytes_buf(k3, sizeof(k3));
  randombytes_buf(k4, sizeof(k4));
  add_line(old, sizeof(old), 3, "retiring", k3);
  add_line(old, sizeof(old), 4, "active", k4);
  fresh_dir(dir, sizeof(dir), path, sizeof(path));
  write_text(path, old, 0600);

  lk_keyring *kr = load_ok(path);
  assert_int_equal(lk_keyring_active_id(kr), 4);
  lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, hex1);
  lk_keyring_destroy(kr);

  /* Header, then the new audit line, then the same key lines. */
  char *text = read_text(path);
  assert_memory_equal(text, "latchkey-keyring v1\naudit ", 26);
  assert_int_equal(text[26 + 44], '\n');
  assert_string_equal(text + 26 + 44 + 1,
                      old + strlen("latchkey-keyring v1\n"));
  unsigned char audit[32];
  size_t bin_len = 0;
  assert_int_equal(
      sodium_base642bin(audit, sizeof(audit), text + 26, 44, NULL, &bin_len,
                        NULL, sodium_base64_VARIANT_ORIGINAL),
      0);
  assert_int_equal(bin_len, 32);
  char want[65];
  documented_hash(audit, canary, want);
  assert_string_equal(hex1, want);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  assert_int_equal(count_entries(dir), 1); /* no temp file left */

  /* Later loads keep that audit key and leave the file alone. */
  kr = load_ok(path);
  lk_keyring_audit_hash(kr, canary, sizeof(canary) - 1, hex2);
  assert_string_equal(hex2, hex1);
  lk_keyring_destroy(kr);
  char *again = read_text(path);
  assert_string_equal(again, text);
  free(again);
  sodium_memzero(text, strlen(text));
  free(text);

  /* A rotation of an old file adds the audit line too. */
  char path2[4096];
  write_text(fresh_path(path2, sizeof(path2), "old-rotate.ring"), old, 0600);
  assert_int_equal(add_ok(path2), 5);
  text = read_text(path2);
  assert_memory_equal(text, "latchkey-keyring v1\naudit ", 26);
  assert_non_null(strstr(text, "\nkey 4 retiring "));
  assert_non_null(strstr(text, "\nkey 5 active "));
  sodium_memzero(text, strlen(text));
  free(text);
  sodium_memzero(old, sizeof(old));
  sodium_memzero(audit, sizeof(audit));
  sodium_memzero(k3, sizeof(k3));
  sodium_memzero(k4, sizeof(k4));
}

static void concurrent_loads_of_an_old_ring_share_one_audit_key(void **state) {
  (void)state;
  unsigned char k1[32];
  randombytes_buf(k1, sizeof(k1));
  for (int round = 0; round < 10; round++) {
    char path[4096];
    char old[512] = "latchkey-keyring v1\n";
    pthread_t t[4];
    race_arg a[4];
    add_line(old, sizeof(old), 1, "active", k1);
    write_text(fresh_path(path, sizeof(path), "old-race.ring"), old, 0600);
    for (int i = 0; i < 4; i++) {
      memset(&a[i], 0, sizeof(a[i]));
      a[i].path = path;
      a[i].st = LK_INTERNAL;
      assert_int_equal(pthread_create(&t[i], NULL, load_thread, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
      assert_int_equal(pthread_join(t[i], NULL), 0);
      assert_int_equal(a[i].st, LK_OK);
      assert_string_equal(a[i].hex, a[0].hex);
    }
    sodium_memzero(old, sizeof(old));
  }
  sodium_memzero(k1, sizeof(k1));
}

static void malformed_audit_line_is_refused_naming_it(void **state) {
  (void)state;
  enum { N = 10, CAP = 600 };
  unsigned char k1[32];
  unsigned char au[32];
  char b64[64];
  char au64[64];
  char short64[64];
  randombytes_buf(k1, sizeof(k1));
  randombytes_buf(au, sizeof(au));
  sodium_bin2base64(b64, sizeof(b64), k1, 32, sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(au64, sizeof(au64), au, 32, sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(short64, sizeof(short64), au, 31,
                    sodium_base64_VARIANT_ORIGINAL);
  static char cases[N][CAP];
  int n = 0;
  const char *h = "latchkey-keyring v1\n";
  snprintf(cases[n++], CAP, "%saudit\nkey 1 active %s\n", h, b64);
  snprintf(cases[n++], CAP, "%saudit \nkey 1 active %s\n", h, b64);
  snprintf(cases[n++], CAP, "%saudit %s\nkey 1 active %s\n", h, short64, b64);
  snprintf(cases[n++], CAP, "%saudit %s!\nkey 1 active %s\n", h, au64, b64);
  snprintf(cases[n++], CAP, "%saudit  %s\nkey 1 active %s\n", h, au64, b64);
  snprintf(cases[n++], CAP, "%saudit %s \nkey 1 active %s\n", h, au64, b64);
  snprintf(cases[n++], CAP, "%skey 1 active %s\naudit %s\n", h, b64, au64);
  snprintf(cases[n++], CAP, "%saudit %s\naudit %s\nkey 1 active %s\n", h, au64,
           au64, b64);
  snprintf(cases[n++], CAP, "%saudit %s\n", h, au64); /* no keys */
  assert_true(n <= N);
  for (int i = 0; i < n; i++) {
    char path[4096];
    lk_err err;
    lk_keyring *kr = (lk_keyring *)&err;
    uint32_t id = 0;
    fresh_path(path, sizeof(path), "bad-audit.ring");
    write_text(path, cases[i], 0600);
    lk_status st = lk_keyring_load_or_create(path, &kr, &err);
    if (st != LK_INVALID_ARGUMENT) {
      fail_msg("case %d: got %s (%s)", i, lk_status_name(st), err.msg);
    }
    assert_null(kr);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "malformed"));
    if (i < n - 1 && strstr(err.msg, "audit") == NULL) {
      fail_msg("case %d: the message does not name the audit line: %s", i,
               err.msg);
    }
    assert_null(strstr(err.msg, au64));
    assert_null(strstr(err.msg, b64));
    assert_int_equal(lk_keyring_add_key(path, &id, &err), LK_INVALID_ARGUMENT);
    char *after = read_text(path);
    assert_string_equal(after, cases[i]);
    free(after);
  }
  sodium_memzero(k1, sizeof(k1));
  sodium_memzero(au, sizeof(au));
  sodium_memzero(b64, sizeof(b64));
  sodium_memzero(au64, sizeof(au64));
  sodium_memzero(cases, sizeof(cases));
}

static void destroy_accepts_null(void **state) {
  (void)state;
  lk_keyring_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(first_load_creates_0600_file_with_one_active_key),
      cmocka_unit_test(reload_has_the_same_keys),
      cmocka_unit_test(group_or_other_accessible_file_is_refused),
      cmocka_unit_test(malformed_files_are_refused_naming_the_path),
      cmocka_unit_test(hand_written_file_loads_in_any_order),
      cmocka_unit_test(missing_directory_is_failed_precondition),
      cmocka_unit_test(concurrent_first_starts_share_one_ring),
      cmocka_unit_test(seal_round_trips_into_guarded_memory),
      cmocka_unit_test(each_seal_uses_a_fresh_nonce),
      cmocka_unit_test(swapped_record_or_tampering_is_failed_precondition),
      cmocka_unit_test(unknown_key_id_is_failed_precondition_naming_it),
      cmocka_unit_test(size_limits_are_invalid_argument),
      cmocka_unit_test(canary_is_in_no_file),
      cmocka_unit_test(
          add_key_makes_a_new_active_key_and_old_ones_still_unseal),
      cmocka_unit_test(add_key_to_a_missing_ring_is_not_found),
      cmocka_unit_test(add_key_to_a_full_ring_is_failed_precondition),
      cmocka_unit_test(concurrent_add_keys_lose_no_key),
      cmocka_unit_test(two_processes_adding_keys_get_distinct_consecutive_ids),
      cmocka_unit_test(add_key_waits_for_the_fcntl_lock_on_the_lock_file),
      cmocka_unit_test(add_and_remove_key_remove_temps_left_by_killed_writers),
      cmocka_unit_test(temps_named_with_our_own_pid_are_stale_only_at_start),
      cmocka_unit_test(
          reload_in_place_takes_the_files_keys_behind_the_same_pointer),
      cmocka_unit_test(refresh_reloads_only_when_the_file_changed),
      cmocka_unit_test(reload_of_a_bad_file_keeps_the_old_keys),
      cmocka_unit_test(remove_key_drops_exactly_that_key_from_the_file),
      cmocka_unit_test(removing_the_active_or_an_unknown_key_is_refused),
      cmocka_unit_test(seal_and_unseal_keep_working_during_reloads),
      cmocka_unit_test(reload_is_not_starved_by_a_stream_of_seals),
      cmocka_unit_test(documented_format_interoperates),
      cmocka_unit_test(audit_hash_is_the_documented_keyed_blake2b),
      cmocka_unit_test(audit_hash_is_stable_across_add_key),
      cmocka_unit_test(
          audit_key_survives_reload_removal_and_an_old_file_put_back),
      cmocka_unit_test(old_ring_without_audit_line_is_upgraded_in_place),
      cmocka_unit_test(concurrent_loads_of_an_old_ring_share_one_audit_key),
      cmocka_unit_test(malformed_audit_line_is_refused_naming_it),
      cmocka_unit_test(destroy_accepts_null),
  };
  if (sodium_init() < 0) {
    return 1;
  }
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
