/*
 * wipealloc_test.c - proves lib/wipealloc: every block reaches free()
 * already wiped, realloc wipes the block it leaves, calloc refuses an
 * overflowing size, protobuf-c messages unpacked with the allocator are
 * wiped block by block when freed, and lib/admin unpacks Admin requests
 * with it, so the bytes of a credential value after an embedded NUL
 * (which wiping up to strlen would miss) never reach free() intact.
 *
 * How it looks: this binary is linked with -Wl,--wrap=malloc,--wrap=free,
 * so every malloc and free call made by code linked into it (the test,
 * lib/wipealloc, lib/secret's lk_wipe_free, lib/admin) goes through the
 * wrappers below, which, while watching, record each block's size at
 * malloc and look at its bytes when it is freed. A control test shows the
 * wrappers do see an unwiped block. Shared libraries (protobuf-c's own
 * default allocator, RocksDB) are not wrapped: which is why a block of
 * the request's value showing up here at all proves admin used this
 * allocator.
 */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
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

#include "latchkey/v1/admin.pb-c.h"
#include "lib/admin.h"
#include "lib/catalog.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/store.h"
#include "lib/wipealloc.h"

/* ---- watching malloc and free ----------------------------------------- */

void *__real_malloc(size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void __wrap_free(void *p);

#define WATCH_MAX 8192

static struct {
  int on;
  const char *needle; /* bytes that must never be freed intact */
  size_t n_blocks;
  struct {
    void *p;
    size_t size;
    int freed;
    int zero; /* all bytes zero when freed */
  } blocks[WATCH_MAX];
  size_t frees;       /* frees of watched blocks */
  size_t nonzero;     /* ...whose bytes were not all zero */
  size_t needle_hits; /* ...that still held the needle */
} g;

void *__wrap_malloc(size_t n) {
  void *p = __real_malloc(n);
  if (g.on && p != NULL && g.n_blocks < WATCH_MAX) {
    g.blocks[g.n_blocks].p = p;
    g.blocks[g.n_blocks].size = n;
    g.blocks[g.n_blocks].freed = 0;
    g.blocks[g.n_blocks].zero = 0;
    g.n_blocks++;
  }
  return p;
}

void __wrap_free(void *p) {
  if (g.on && p != NULL) {
    for (size_t i = g.n_blocks; i-- > 0;) {
      if (g.blocks[i].p != p || g.blocks[i].freed) {
        continue;
      }
      const unsigned char *b = p;
      size_t n = g.blocks[i].size;
      int zero = 1;
      for (size_t k = 0; k < n; k++) {
        zero &= b[k] == 0;
      }
      size_t nl = g.needle != NULL ? strlen(g.needle) : 0;
      if (nl > 0 && n >= nl && memmem(b, n, g.needle, nl) != NULL) {
        g.needle_hits++;
      }
      g.blocks[i].freed = 1;
      g.blocks[i].zero = zero;
      g.frees++;
      g.nonzero += !zero;
      break;
    }
  }
  __real_free(p);
}

static void watch(const char *needle) {
  memset(&g, 0, sizeof(g));
  g.needle = needle;
  g.on = 1;
}

static void unwatch(void) {
  g.on = 0;
}

/* The header lk_wipealloc puts before each block. */
static size_t header_size(void) {
  watch(NULL);
  void *p = lk_wipealloc_malloc(1);
  unwatch();
  assert_non_null(p);
  assert_int_equal(g.n_blocks, 1);
  size_t h = g.blocks[0].size - 1;
  lk_wipealloc_free(p);
  return h;
}

/* ---- the allocator ---------------------------------------------------- */

static void blocks_reach_free_wiped(void **state) {
  (void)state;
  size_t h = header_size();
  assert_true(h >= sizeof(size_t));
  assert_int_equal(h % _Alignof(max_align_t), 0);
  watch("SECRET-BYTES");
  char *p = lk_wipealloc_malloc(100);
  assert_non_null(p);
  assert_int_equal((uintptr_t)p % _Alignof(max_align_t), 0);
  memset(p, 0xA5, 100);
  memcpy(p + 40, "SECRET-BYTES", 12);
  lk_wipealloc_free(p);
  lk_wipealloc_free(NULL);
  unwatch();
  assert_int_equal(g.n_blocks, 1);
  assert_int_equal(g.blocks[0].size, h + 100);
  assert_int_equal(g.frees, 1);
  assert_int_equal(g.nonzero, 0);
  assert_int_equal(g.needle_hits, 0);
}

/* Keeps the compiler from eliding the control's malloc/free pair. */
static char *volatile g_escape;

/* The control: the watch sees a block freed without wiping. */
static void watch_sees_an_unwiped_block(void **state) {
  (void)state;
  watch("SECRET-BYTES");
  g_escape = malloc(64);
  char *p = g_escape;
  assert_non_null(p);
  memset(p, 0, 64);
  memcpy(p + 8, "SECRET-BYTES", 12);
  free(g_escape);
  unwatch();
  assert_int_equal(g.frees, 1);
  assert_int_equal(g.nonzero, 1);
  assert_int_equal(g.needle_hits, 1);
}

static void realloc_moves_and_wipes_the_old_block(void **state) {
  (void)state;
  watch("SECRET-BYTES");
  char *p = lk_wipealloc_realloc(NULL, 20);
  assert_non_null(p);
  memcpy(p, "SECRET-BYTES-0123456", 20);
  char *q = lk_wipealloc_realloc(p, 5000);
  assert_non_null(q);
  assert_ptr_not_equal(p, q);
  assert_memory_equal(q, "SECRET-BYTES-0123456", 20);
  assert_int_equal(g.frees, 1); /* the old block, wiped */
  assert_int_equal(g.nonzero, 0);
  char *r = lk_wipealloc_realloc(q, 5);
  assert_non_null(r);
  assert_memory_equal(r, "SECRE", 5);
  lk_wipealloc_free(r);
  unwatch();
  assert_int_equal(g.frees, 3);
  assert_int_equal(g.nonzero, 0);
  assert_int_equal(g.needle_hits, 0);
}

static void calloc_strdup_and_limits(void **state) {
  (void)state;
  assert_null(lk_wipealloc_calloc(SIZE_MAX / 2, 3));
  assert_null(lk_wipealloc_malloc(SIZE_MAX - 4));
  unsigned char *z = lk_wipealloc_calloc(7, 9);
  assert_non_null(z);
  for (size_t i = 0; i < 63; i++) {
    assert_int_equal(z[i], 0);
  }
  lk_wipealloc_free(z);
  watch("dup-me");
  char *d = lk_wipealloc_strdup("dup-me");
  assert_string_equal(d, "dup-me");
  lk_wipealloc_free(d);
  unwatch();
  assert_int_equal(g.frees, 1);
  assert_int_equal(g.nonzero, 0);
  assert_int_equal(g.needle_hits, 0);
}

/* ---- protobuf-c ------------------------------------------------------- */

#define TAIL "TAIL-after-the-NUL-canary-4f2a9c"

/* Packs a CreateCredentialRequest whose "token" value is "abc", a NUL,
 * then TAIL (protobuf-c would hand the value out as the C string "abc").
 * The caller frees *out. */
static size_t pack_request_with_nul(unsigned char **out) {
  Latchkey__V1__CreateCredentialRequest r =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__INIT;
  Latchkey__V1__CreateCredentialRequest__FieldsEntry e =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__CreateCredentialRequest__FieldsEntry *ep = &e;
  e.key = "token";
  e.value = "abcX" TAIL;
  r.type = "no-such-type";
  r.label = "wipe";
  r.n_fields = 1;
  r.fields = &ep;
  size_t len = latchkey__v1__create_credential_request__get_packed_size(&r);
  unsigned char *buf = malloc(len);
  assert_non_null(buf);
  latchkey__v1__create_credential_request__pack(&r, buf);
  unsigned char *x = memmem(buf, len, "abcX", 4);
  assert_non_null(x);
  x[3] = '\0';
  *out = buf;
  return len;
}

static void unpacked_message_is_wiped_block_by_block(void **state) {
  (void)state;
  unsigned char *buf = NULL;
  size_t len = pack_request_with_nul(&buf);
  watch(TAIL);
  Latchkey__V1__CreateCredentialRequest *r =
      latchkey__v1__create_credential_request__unpack(lk_wipealloc_protobuf(),
                                                      len, buf);
  assert_non_null(r);
  assert_int_equal(r->n_fields, 1);
  assert_string_equal(r->fields[0]->value, "abc");
  size_t allocated = g.n_blocks;
  latchkey__v1__create_credential_request__free_unpacked(
      r, lk_wipealloc_protobuf());
  unwatch();
  assert_true(allocated >= 5); /* message, entries array, entry, strings */
  assert_int_equal(g.frees, allocated);
  assert_int_equal(g.nonzero, 0);
  assert_int_equal(g.needle_hits, 0);
  lk_wipe_free(buf, len);
}

/* ---- lib/admin -------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void admin_wipes_every_block_of_a_credential_request(void **state) {
  (void)state;
  const char *tmp = getenv("TEST_TMPDIR");
  char dir[512], db[600], keyfile[600];
  snprintf(dir, sizeof(dir), "%s/wipealloc-XXXXXX", tmp != NULL ? tmp : "/tmp");
  assert_non_null(mkdtemp(dir));
  snprintf(db, sizeof(db), "%s/db", dir);
  snprintf(keyfile, sizeof(keyfile), "%s/node.key", dir);
  lk_store *store = NULL;
  lk_catalog *cat = NULL;
  lk_seal_key *key = NULL;
  lk_admin *admin = NULL;
  lk_err err;
  lk_err_clear(&err);
  if (lk_store_open(db, &store, &err) != LK_OK ||
      lk_catalog_open(store, &cat, &err) != LK_OK ||
      lk_seal_key_load_or_create(keyfile, &key, &err) != LK_OK ||
      lk_admin_new(cat, key, &admin, &err) != LK_OK) {
    fail_msg("setup: %s", err.msg);
  }
  size_t h = header_size();
  static const char *const methods[] = {"/latchkey.v1.Admin/CreateCredential",
                                        "/latchkey.v1.Admin/UpdateCredential"};
  for (size_t m = 0; m < 2; m++) {
    unsigned char *buf = NULL;
    size_t len = pack_request_with_nul(&buf);
    unsigned char *resp = NULL;
    size_t resp_len = 0;
    watch(TAIL);
    lk_status st =
        lk_admin_handle(admin, methods[m], buf, len, &resp, &resp_len, &err);
    unwatch();
    /* The type (create) or credential (update) does not exist: refused
     * after the request was unpacked, which is all this test needs. */
    assert_int_not_equal(st, LK_OK);
    assert_null(resp);
    /* The value block: "abc", NUL, TAIL and protobuf-c's NUL. */
    size_t value_block = h + 4 + strlen(TAIL) + 1;
    size_t seen = 0;
    for (size_t i = 0; i < g.n_blocks; i++) {
      if (g.blocks[i].size == value_block) {
        assert_true(g.blocks[i].freed);
        assert_true(g.blocks[i].zero);
        seen++;
      }
    }
    if (seen != 1) {
      fail_msg(
          "%s: %zu blocks of the value's size went through the wiping "
          "allocator, want 1",
          methods[m], seen);
    }
    assert_int_equal(g.needle_hits, 0);
    lk_wipe_free(buf, len);
  }
  lk_admin_destroy(admin);
  lk_seal_key_destroy(key);
  lk_catalog_destroy(cat);
  lk_store_close(store);
  nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(blocks_reach_free_wiped),
      cmocka_unit_test(watch_sees_an_unwiped_block),
      cmocka_unit_test(realloc_moves_and_wipes_the_old_block),
      cmocka_unit_test(calloc_strdup_and_limits),
      cmocka_unit_test(unpacked_message_is_wiped_block_by_block),
      cmocka_unit_test(admin_wipes_every_block_of_a_credential_request),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
