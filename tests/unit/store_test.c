/*
 * store_test.c - proves lib/store's contract on real RocksDB files: get,
 * put, delete and exact LK_NOT_FOUND; prefix scans in bytewise order with
 * early stop; batches that apply all or nothing; data surviving reopen;
 * a held lock reported as LK_UNAVAILABLE; the value cap; and that after
 * lk_store_flush_compact no file under the data dir holds the plaintext of
 * an overwritten and deleted canary value.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
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

#include "lib/store.h"

static char tmp_root[1024];
static int dir_counter;

static const char *fresh_dir(char *buf, size_t n) {
  int w = snprintf(buf, n, "%s/db-%d", tmp_root, dir_counter++);
  assert_true(w > 0 && (size_t)w < n);
  return buf;
}

static lk_store *open_ok(const char *dir) {
  lk_err err;
  lk_store *s = NULL;
  lk_status st = lk_store_open(dir, &s, &err);
  if (st != LK_OK) {
    fail_msg("open %s: %s: %s", dir, lk_status_name(st), err.msg);
  }
  assert_non_null(s);
  return s;
}

static void put_str(lk_store *s, const char *key, const char *val) {
  lk_err err;
  lk_status st =
      lk_store_put(s, key, (const unsigned char *)val, strlen(val), &err);
  if (st != LK_OK) {
    fail_msg("put %s: %s: %s", key, lk_status_name(st), err.msg);
  }
}

/* Asserts key holds exactly the string want. */
static void assert_get(lk_store *s, const char *key, const char *want) {
  lk_err err;
  unsigned char *val = NULL;
  size_t len = 0;
  lk_status st = lk_store_get(s, key, &val, &len, &err);
  if (st != LK_OK) {
    fail_msg("get %s: %s: %s", key, lk_status_name(st), err.msg);
  }
  assert_int_equal(len, strlen(want));
  assert_memory_equal(val, want, len);
  lk_store_value_free(val, len);
}

static void assert_absent(lk_store *s, const char *key) {
  lk_err err;
  unsigned char *val = (unsigned char *)&err;
  size_t len = 99;
  assert_int_equal(lk_store_get(s, key, &val, &len, &err), LK_NOT_FOUND);
  assert_int_equal(err.code, LK_NOT_FOUND);
  assert_null(val);
  assert_int_equal(len, 0);
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
  snprintf(tmp_root, sizeof(tmp_root), "%s/store_test.XXXXXX",
           base ? base : "/tmp");
  return mkdtemp(tmp_root) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  (void)state;
  return nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- basic records ----------------------------------------------------- */

static void open_creates_dir_0700(void **state) {
  (void)state;
  char dir[4096];
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  struct stat sb;
  assert_int_equal(stat(dir, &sb), 0);
  assert_true(S_ISDIR(sb.st_mode));
  assert_int_equal(sb.st_mode & 0777, 0700);
  lk_store_close(s);
  lk_store_close(NULL);
}

static void put_then_get_returns_value(void **state) {
  (void)state;
  char dir[4096];
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  put_str(s, "tool/weather", "{\"id\":\"weather\"}");
  assert_get(s, "tool/weather", "{\"id\":\"weather\"}");
  put_str(s, "tool/weather", "v2");
  assert_get(s, "tool/weather", "v2");
  lk_store_close(s);
}

static void binary_and_empty_values_round_trip(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  const unsigned char bin[] = {0, 1, 0xff, 0, 7};
  assert_int_equal(lk_store_put(s, "bin", bin, sizeof(bin), &err), LK_OK);
  assert_int_equal(lk_store_put(s, "empty", NULL, 0, &err), LK_OK);
  unsigned char *val = NULL;
  size_t len = 0;
  assert_int_equal(lk_store_get(s, "bin", &val, &len, &err), LK_OK);
  assert_int_equal(len, sizeof(bin));
  assert_memory_equal(val, bin, sizeof(bin));
  lk_store_value_free(val, len);
  assert_int_equal(lk_store_get(s, "empty", &val, &len, &err), LK_OK);
  assert_int_equal(len, 0);
  lk_store_value_free(val, len);
  lk_store_value_free(NULL, 0);
  lk_store_close(s);
}

static void missing_key_is_not_found(void **state) {
  (void)state;
  char dir[4096];
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  assert_absent(s, "nope");
  lk_store_close(s);
}

static void delete_removes_key_and_absent_delete_is_ok(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  put_str(s, "budget/b1", "x");
  assert_int_equal(lk_store_delete(s, "budget/b1", &err), LK_OK);
  assert_absent(s, "budget/b1");
  assert_int_equal(lk_store_delete(s, "budget/never", &err), LK_OK);
  lk_store_close(s);
}

static void value_over_cap_is_resource_exhausted(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  unsigned char *big = calloc(1, LK_STORE_MAX_VALUE_BYTES + 1);
  assert_non_null(big);
  assert_int_equal(
      lk_store_put(s, "big", big, LK_STORE_MAX_VALUE_BYTES + 1, &err),
      LK_RESOURCE_EXHAUSTED);
  assert_int_equal(err.code, LK_RESOURCE_EXHAUSTED);
  assert_absent(s, "big");
  assert_int_equal(lk_store_put(s, "big", big, LK_STORE_MAX_VALUE_BYTES, &err),
                   LK_OK);
  unsigned char *val = NULL;
  size_t len = 0;
  assert_int_equal(lk_store_get(s, "big", &val, &len, &err), LK_OK);
  assert_int_equal(len, LK_STORE_MAX_VALUE_BYTES);
  lk_store_value_free(val, len);
  free(big);
  lk_store_close(s);
}

static void bad_keys_are_invalid_argument(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  char *long_key = malloc(LK_STORE_MAX_KEY_BYTES + 2);
  assert_non_null(long_key);
  memset(long_key, 'k', LK_STORE_MAX_KEY_BYTES + 1);
  long_key[LK_STORE_MAX_KEY_BYTES + 1] = '\0';
  assert_int_equal(
      lk_store_put(s, long_key, (const unsigned char *)"v", 1, &err),
      LK_INVALID_ARGUMENT);
  assert_int_equal(lk_store_put(s, NULL, (const unsigned char *)"v", 1, &err),
                   LK_INVALID_ARGUMENT);
  long_key[LK_STORE_MAX_KEY_BYTES] = '\0'; /* exactly at the limit */
  assert_int_equal(
      lk_store_put(s, long_key, (const unsigned char *)"v", 1, &err), LK_OK);
  assert_get(s, long_key, "v");
  free(long_key);
  lk_store_close(s);
}

static void reopen_keeps_data(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  fresh_dir(dir, sizeof(dir));
  lk_store *s = open_ok(dir);
  put_str(s, "cred/c1", "sealed-bytes");
  put_str(s, "cred/c2", "gone");
  assert_int_equal(lk_store_delete(s, "cred/c2", &err), LK_OK);
  lk_store_close(s);
  s = open_ok(dir);
  assert_get(s, "cred/c1", "sealed-bytes");
  assert_absent(s, "cred/c2");
  lk_store_close(s);
}

static void second_open_of_locked_dir_is_unavailable(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  lk_store *t = (lk_store *)&err;
  assert_int_equal(lk_store_open(dir, &t, &err), LK_UNAVAILABLE);
  assert_null(t);
  assert_non_null(strstr(err.msg, dir));
  assert_non_null(strstr(err.msg, "lock"));
  lk_store_close(s);
  lk_store_close(open_ok(dir)); /* released on close */
}

static void open_where_a_file_is_is_failed_precondition(void **state) {
  (void)state;
  char path[4096];
  lk_err err;
  lk_store *s = NULL;
  fresh_dir(path, sizeof(path));
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fclose(f);
  assert_int_equal(lk_store_open(path, &s, &err), LK_FAILED_PRECONDITION);
  assert_null(s);
}

/* ---- scans -------------------------------------------------------------- */

typedef struct {
  char keys[16][64];
  char vals[16][64];
  int n;
  int stop_after;
} collected;

static int collect(void *ctx, const char *key, size_t key_len,
                   const unsigned char *val, size_t val_len) {
  collected *c = ctx;
  assert_true(c->n < 16);
  assert_int_equal(strlen(key), key_len);
  assert_true(key_len < 64 && val_len < 64);
  memcpy(c->keys[c->n], key, key_len + 1);
  memcpy(c->vals[c->n], val, val_len);
  c->vals[c->n][val_len] = '\0';
  c->n++;
  return c->stop_after > 0 && c->n >= c->stop_after;
}

static void scan_visits_prefix_in_order(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  static const char *const keys[] = {"b/2", "a/1", "b/10", "c/1", "b",
                                     "b/1", "b0",  "b/",   "ab"};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
    put_str(s, keys[i], keys[i]);
  }
  collected c = {.n = 0};
  assert_int_equal(lk_store_scan(s, "b/", collect, &c, &err), LK_OK);
  static const char *const want[] = {"b/", "b/1", "b/10", "b/2"};
  assert_int_equal(c.n, 4);
  for (int i = 0; i < 4; i++) {
    assert_string_equal(c.keys[i], want[i]);
    assert_string_equal(c.vals[i], want[i]);
  }

  collected all = {.n = 0};
  assert_int_equal(lk_store_scan(s, "", collect, &all, &err), LK_OK);
  assert_int_equal(all.n, 9);
  for (int i = 1; i < all.n; i++) {
    assert_true(strcmp(all.keys[i - 1], all.keys[i]) < 0);
  }

  collected none = {.n = 0};
  assert_int_equal(lk_store_scan(s, "zz", collect, &none, &err), LK_OK);
  assert_int_equal(none.n, 0);
  lk_store_close(s);
}

static void scan_stops_when_callback_says_so(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  put_str(s, "k/1", "1");
  put_str(s, "k/2", "2");
  put_str(s, "k/3", "3");
  collected c = {.n = 0, .stop_after = 2};
  assert_int_equal(lk_store_scan(s, "k/", collect, &c, &err), LK_OK);
  assert_int_equal(c.n, 2);
  assert_string_equal(c.keys[1], "k/2");
  lk_store_close(s);
}

static void scan_prefix_ending_in_0xff_is_bounded_correctly(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  put_str(s, "a\xff", "1");
  put_str(s, "a\xff\x01", "2");
  put_str(s, "a\xff\xff", "3");
  put_str(s, "b", "4");
  put_str(s, "a\xfe", "5");
  collected c = {.n = 0};
  assert_int_equal(lk_store_scan(s, "a\xff", collect, &c, &err), LK_OK);
  assert_int_equal(c.n, 3);
  assert_string_equal(c.vals[0], "1");
  assert_string_equal(c.vals[1], "2");
  assert_string_equal(c.vals[2], "3");
  collected d = {.n = 0};
  assert_int_equal(lk_store_scan(s, "\xff", collect, &d, &err), LK_OK);
  assert_int_equal(d.n, 0);
  lk_store_close(s);
}

/* ---- batches ------------------------------------------------------------ */

static void batch_applies_all_at_once(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  put_str(s, "old", "x");
  lk_store_batch *b = lk_store_batch_new();
  assert_non_null(b);
  lk_store_batch_put(b, "n/1", (const unsigned char *)"one", 3);
  lk_store_batch_put(b, "n/2", (const unsigned char *)"two", 3);
  lk_store_batch_delete(b, "old");
  lk_store_batch_put(b, "rev", (const unsigned char *)"17", 2);
  /* Nothing is visible before the write. */
  assert_absent(s, "n/1");
  assert_get(s, "old", "x");
  assert_int_equal(lk_store_write(s, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  assert_get(s, "n/1", "one");
  assert_get(s, "n/2", "two");
  assert_get(s, "rev", "17");
  assert_absent(s, "old");
  lk_store_batch_destroy(NULL);
  lk_store_close(s);
}

static void poisoned_batch_writes_nothing(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  put_str(s, "keep", "x");
  unsigned char *big = calloc(1, LK_STORE_MAX_VALUE_BYTES + 1);
  assert_non_null(big);
  lk_store_batch *b = lk_store_batch_new();
  lk_store_batch_put(b, "p/1", (const unsigned char *)"one", 3);
  lk_store_batch_delete(b, "keep");
  lk_store_batch_put(b, "p/big", big, LK_STORE_MAX_VALUE_BYTES + 1);
  lk_store_batch_put(b, "p/2", (const unsigned char *)"two", 3);
  assert_int_equal(lk_store_write(s, b, &err), LK_RESOURCE_EXHAUSTED);
  lk_store_batch_destroy(b);
  assert_absent(s, "p/1");
  assert_absent(s, "p/2");
  assert_absent(s, "p/big");
  assert_get(s, "keep", "x");

  b = lk_store_batch_new();
  lk_store_batch_put(b, "q/1", (const unsigned char *)"one", 3);
  lk_store_batch_delete(b, NULL);
  assert_int_equal(lk_store_write(s, b, &err), LK_INVALID_ARGUMENT);
  lk_store_batch_destroy(b);
  assert_absent(s, "q/1");
  free(big);
  lk_store_close(s);
}

/* Reads served twice (so from the read cache) still see every kind of
 * write at once: put, delete, batch put, batch delete. */
static void cached_reads_see_every_write(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  put_str(s, "bind/main/t/echo", "cred-1");
  put_str(s, "cred/a", "sealed-a");
  for (int i = 0; i < 3; i++) {
    assert_get(s, "bind/main/t/echo", "cred-1");
    assert_get(s, "cred/a", "sealed-a");
  }
  put_str(s, "bind/main/t/echo", "cred-2");
  assert_get(s, "bind/main/t/echo", "cred-2");
  assert_get(s, "bind/main/t/echo", "cred-2");
  assert_int_equal(lk_store_delete(s, "bind/main/t/echo", &err), LK_OK);
  assert_absent(s, "bind/main/t/echo");
  lk_store_batch *b = lk_store_batch_new();
  assert_non_null(b);
  lk_store_batch_put(b, "cred/a", (const unsigned char *)"sealed-a2", 9);
  lk_store_batch_put(b, "bind/main/t/echo", (const unsigned char *)"cred-3", 6);
  assert_int_equal(lk_store_write(s, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  assert_get(s, "cred/a", "sealed-a2");
  assert_get(s, "bind/main/t/echo", "cred-3");
  assert_get(s, "bind/main/t/echo", "cred-3");
  b = lk_store_batch_new();
  assert_non_null(b);
  lk_store_batch_delete(b, "cred/a");
  assert_int_equal(lk_store_write(s, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  assert_absent(s, "cred/a");
  lk_store_close(s);
}

typedef struct {
  lk_store *s;
  atomic_int done;
  atomic_int stale; /* a read older than the last finished write */
} race_ctx;

static void *race_reader(void *arg) {
  race_ctx *rc = arg;
  char last[32] = "0";
  while (!atomic_load(&rc->done)) {
    lk_err err;
    unsigned char *val = NULL;
    size_t len = 0;
    if (lk_store_get(rc->s, "rev", &val, &len, &err) != LK_OK || len >= 32) {
      atomic_store(&rc->stale, 1);
      break;
    }
    char now[32];
    memcpy(now, val, len);
    now[len] = '\0';
    lk_store_value_free(val, len);
    /* Values only grow: a read never goes back to an older one. */
    if (strtol(now, NULL, 10) < strtol(last, NULL, 10)) {
      atomic_store(&rc->stale, 1);
    }
    memcpy(last, now, sizeof(last));
  }
  return NULL;
}

/* With readers hammering one key, the value read right after each write
 * returns is that write's, and no reader ever sees a value go back. */
static void cached_reads_race_writes_without_going_stale(void **state) {
  (void)state;
  char dir[4096];
  race_ctx rc = {.s = open_ok(fresh_dir(dir, sizeof(dir)))};
  put_str(rc.s, "rev", "0");
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    assert_int_equal(pthread_create(&th[i], NULL, race_reader, &rc), 0);
  }
  for (int v = 1; v <= 200; v++) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%d", v);
    put_str(rc.s, "rev", buf);
    assert_get(rc.s, "rev", buf);
  }
  atomic_store(&rc.done, 1);
  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
  }
  assert_int_equal(atomic_load(&rc.stale), 0);
  assert_get(rc.s, "rev", "200");
  lk_store_close(rc.s);
}

static void batch_survives_reopen(void **state) {
  (void)state;
  char dir[4096];
  lk_err err;
  fresh_dir(dir, sizeof(dir));
  lk_store *s = open_ok(dir);
  lk_store_batch *b = lk_store_batch_new();
  for (int i = 0; i < 100; i++) {
    char key[32];
    snprintf(key, sizeof(key), "bind/%03d", i);
    lk_store_batch_put(b, key, (const unsigned char *)key, strlen(key));
  }
  assert_int_equal(lk_store_write(s, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  lk_store_close(s);
  s = open_ok(dir);
  assert_get(s, "bind/000", "bind/000");
  assert_get(s, "bind/099", "bind/099");
  lk_store_close(s);
}

/* ---- the canary --------------------------------------------------------- */

typedef struct {
  const unsigned char *needle;
  size_t needle_len;
  int files;
  int hits;
  char first_hit[4096];
} canary_search;

static canary_search *search_ctx;

static int search_file(const char *path, const struct stat *sb, int flag,
                       struct FTW *ftw) {
  (void)ftw;
  if (flag != FTW_F || !S_ISREG(sb->st_mode)) {
    return 0;
  }
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  size_t cap = (size_t)sb->st_size + 1;
  unsigned char *buf = malloc(cap);
  assert_non_null(buf);
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  search_ctx->files++;
  if (memmem(buf, n, search_ctx->needle, search_ctx->needle_len) != NULL) {
    if (search_ctx->hits++ == 0) {
      snprintf(search_ctx->first_hit, sizeof(search_ctx->first_hit), "%s",
               path);
    }
  }
  free(buf);
  return 0;
}

/* Returns how many files under dir contain the canary. */
static int files_holding(const char *dir, const char *canary,
                         canary_search *cs) {
  memset(cs, 0, sizeof(*cs));
  cs->needle = (const unsigned char *)canary;
  cs->needle_len = strlen(canary);
  search_ctx = cs;
  assert_int_equal(nftw(dir, search_file, 16, FTW_PHYS), 0);
  return cs->hits;
}

static void flush_compact_leaves_no_overwritten_or_deleted_canary(
    void **state) {
  (void)state;
  char dir[4096];
  char canary[64];
  char other[64];
  unsigned char rnd[16];
  lk_err err;
  canary_search cs;
  randombytes_buf(rnd, sizeof(rnd));
  sodium_bin2hex(canary + 7, sizeof(canary) - 7, rnd, sizeof(rnd));
  memcpy(canary, "CANARY-", 7);
  randombytes_buf(rnd, sizeof(rnd));
  sodium_bin2hex(other + 7, sizeof(other) - 7, rnd, sizeof(rnd));
  memcpy(other, "REPLACE", 7);

  lk_store *s = open_ok(fresh_dir(dir, sizeof(dir)));
  for (int i = 0; i < 50; i++) { /* neighbours that must survive */
    char key[32];
    snprintf(key, sizeof(key), "cred/n%02d", i);
    put_str(s, key, "neighbour");
  }
  put_str(s, "cred/canary", canary);
  put_str(s, "cred/overwritten", canary);
  /* The detector works: the synced write put the canary in the WAL. */
  assert_true(files_holding(dir, canary, &cs) > 0);

  /* Move it into a table file, then overwrite one copy and delete both. */
  assert_int_equal(lk_store_flush_compact(s, &err), LK_OK);
  assert_true(files_holding(dir, canary, &cs) > 0);
  put_str(s, "cred/overwritten", other);
  assert_int_equal(lk_store_flush_compact(s, &err), LK_OK);
  assert_int_equal(lk_store_delete(s, "cred/canary", &err), LK_OK);
  assert_int_equal(lk_store_flush_compact(s, &err), LK_OK);

  if (files_holding(dir, canary, &cs) != 0) {
    fail_msg("canary still in %d of %d files, e.g. %s", cs.hits, cs.files,
             cs.first_hit);
  }
  assert_true(cs.files > 0);
  assert_absent(s, "cred/canary");
  assert_get(s, "cred/overwritten", other);
  assert_get(s, "cred/n00", "neighbour");
  assert_get(s, "cred/n49", "neighbour");
  lk_store_close(s);

  /* And after a clean close and reopen. */
  s = open_ok(dir);
  assert_absent(s, "cred/canary");
  assert_get(s, "cred/overwritten", other);
  lk_store_close(s);
  assert_int_equal(files_holding(dir, canary, &cs), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(open_creates_dir_0700),
      cmocka_unit_test(put_then_get_returns_value),
      cmocka_unit_test(binary_and_empty_values_round_trip),
      cmocka_unit_test(missing_key_is_not_found),
      cmocka_unit_test(delete_removes_key_and_absent_delete_is_ok),
      cmocka_unit_test(value_over_cap_is_resource_exhausted),
      cmocka_unit_test(bad_keys_are_invalid_argument),
      cmocka_unit_test(reopen_keeps_data),
      cmocka_unit_test(second_open_of_locked_dir_is_unavailable),
      cmocka_unit_test(open_where_a_file_is_is_failed_precondition),
      cmocka_unit_test(scan_visits_prefix_in_order),
      cmocka_unit_test(scan_stops_when_callback_says_so),
      cmocka_unit_test(scan_prefix_ending_in_0xff_is_bounded_correctly),
      cmocka_unit_test(batch_applies_all_at_once),
      cmocka_unit_test(poisoned_batch_writes_nothing),
      cmocka_unit_test(batch_survives_reopen),
      cmocka_unit_test(cached_reads_see_every_write),
      cmocka_unit_test(cached_reads_race_writes_without_going_stale),
      cmocka_unit_test(flush_compact_leaves_no_overwritten_or_deleted_canary),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
