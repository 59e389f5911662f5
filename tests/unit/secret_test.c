/*
 * secret_test.c - proves lib/secret's contract: guarded secrets are zeroed
 * and NUL-terminated, builders never pass their cap, comparisons are exact
 * on content and length, and core dumps really get disabled.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/secret.h"

static void init_is_idempotent(void **state) {
  (void)state;
  assert_int_equal(lk_secret_init(), LK_OK);
  assert_int_equal(lk_secret_init(), LK_OK);
}

static void *init_thread(void *arg) {
  *(lk_status *)arg = lk_secret_init();
  return NULL;
}

static void init_from_many_threads_succeeds(void **state) {
  (void)state;
  pthread_t t[8];
  lk_status st[8];
  for (int i = 0; i < 8; i++) {
    st[i] = LK_INTERNAL;
    assert_int_equal(pthread_create(&t[i], NULL, init_thread, &st[i]), 0);
  }
  for (int i = 0; i < 8; i++) {
    assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(st[i], LK_OK);
  }
}

static void new_is_zeroed_and_nul_terminated(void **state) {
  (void)state;
  lk_secret *s = lk_secret_new(33);
  assert_non_null(s);
  assert_int_equal(lk_secret_len(s), 33);
  for (size_t i = 0; i <= 33; i++) {
    assert_int_equal(lk_secret_data(s)[i], 0);
  }
  memset(lk_secret_mut(s), 'x', 33);
  assert_int_equal(strlen(lk_secret_str(s)), 33);
  lk_secret_free(s);
}

static void new_of_zero_length_is_empty_string(void **state) {
  (void)state;
  lk_secret *s = lk_secret_new(0);
  assert_non_null(s);
  assert_int_equal(lk_secret_len(s), 0);
  assert_string_equal(lk_secret_str(s), "");
  lk_secret_free(s);
}

static void from_copies_bytes(void **state) {
  (void)state;
  const char tok[] = "sk-test-123";
  lk_secret *s = lk_secret_from(tok, strlen(tok));
  assert_non_null(s);
  assert_int_equal(lk_secret_len(s), strlen(tok));
  assert_string_equal(lk_secret_str(s), tok);
  assert_ptr_not_equal(lk_secret_data(s), (const unsigned char *)tok);
  assert_ptr_equal((const void *)lk_secret_data(s),
                   (const void *)lk_secret_str(s));
  lk_secret_free(s);
}

static void absurd_lengths_are_refused(void **state) {
  (void)state;
  assert_null(lk_secret_new(SIZE_MAX));
  assert_null(lk_secret_buf_new(SIZE_MAX));
}

static void free_and_wipe_accept_null(void **state) {
  (void)state;
  lk_secret_free(NULL);
  lk_secret_buf_free(NULL);
  lk_wipe_free(NULL, 10);
  lk_wipe(NULL, 0);
  assert_null(lk_secret_buf_finish(NULL));
}

static void wipe_zeroes_bytes(void **state) {
  (void)state;
  unsigned char b[16];
  memset(b, 0xab, sizeof(b));
  lk_wipe(b, sizeof(b));
  for (size_t i = 0; i < sizeof(b); i++) {
    assert_int_equal(b[i], 0);
  }
  char *heap = malloc(32);
  assert_non_null(heap);
  memset(heap, 'p', 32);
  lk_wipe_free(heap, 32); /* leak/ASan checkers prove it is freed */
}

static void ct_equal_compares_content_and_length(void **state) {
  (void)state;
  assert_int_equal(lk_ct_equal("abcd", 4, "abcd", 4), 1);
  assert_int_equal(lk_ct_equal("abcd", 4, "abce", 4), 0);
  assert_int_equal(lk_ct_equal("abcd", 4, "abc", 3), 0);
  assert_int_equal(lk_ct_equal("abc", 3, "abcd", 4), 0);
  assert_int_equal(lk_ct_equal("", 0, "", 0), 1);
  assert_int_equal(lk_ct_equal(NULL, 0, NULL, 0), 1);
}

static void buf_builds_bearer_string(void **state) {
  (void)state;
  lk_err err;
  lk_secret_buf *b = lk_secret_buf_new(64);
  assert_non_null(b);
  assert_int_equal(lk_secret_buf_append_str(b, "Bearer ", &err), LK_OK);
  assert_int_equal(lk_secret_buf_append(b, "tok123", 6, &err), LK_OK);
  assert_int_equal(lk_secret_buf_len(b), 13);
  lk_secret *s = lk_secret_buf_finish(b);
  assert_non_null(s);
  assert_int_equal(lk_secret_len(s), 13);
  assert_string_equal(lk_secret_str(s), "Bearer tok123");
  lk_secret_free(s);
}

static void buf_fills_exactly_to_cap(void **state) {
  (void)state;
  lk_err err;
  lk_secret_buf *b = lk_secret_buf_new(5);
  assert_non_null(b);
  assert_int_equal(lk_secret_buf_append(b, "12345", 5, &err), LK_OK);
  assert_int_equal(lk_secret_buf_append(b, "", 0, &err), LK_OK);
  lk_secret *s = lk_secret_buf_finish(b);
  assert_string_equal(lk_secret_str(s), "12345");
  lk_secret_free(s);
}

static void buf_past_cap_is_resource_exhausted_and_unchanged(void **state) {
  (void)state;
  lk_err err;
  lk_secret_buf *b = lk_secret_buf_new(8);
  assert_non_null(b);
  assert_int_equal(lk_secret_buf_append(b, "abcdef", 6, &err), LK_OK);
  assert_int_equal(lk_secret_buf_append(b, "ghi", 3, &err),
                   LK_RESOURCE_EXHAUSTED);
  assert_int_equal(err.code, LK_RESOURCE_EXHAUSTED);
  assert_null(strstr(err.msg, "ghi"));
  assert_int_equal(lk_secret_buf_len(b), 6);
  assert_int_equal(lk_secret_buf_append(b, "gh", 2, &err), LK_OK);
  lk_secret *s = lk_secret_buf_finish(b);
  assert_string_equal(lk_secret_str(s), "abcdefgh");
  lk_secret_free(s);
}

static void buf_with_zero_cap_refuses_any_byte(void **state) {
  (void)state;
  lk_err err;
  lk_secret_buf *b = lk_secret_buf_new(0);
  assert_non_null(b);
  assert_int_equal(lk_secret_buf_append(b, "x", 1, &err),
                   LK_RESOURCE_EXHAUSTED);
  lk_secret *s = lk_secret_buf_finish(b);
  assert_non_null(s);
  assert_int_equal(lk_secret_len(s), 0);
  lk_secret_free(s);
}

static void buf_grows_across_many_appends(void **state) {
  (void)state;
  lk_err err;
  enum { N = 5000 };
  lk_secret_buf *b = lk_secret_buf_new(N);
  assert_non_null(b);
  for (size_t i = 0; i < N; i++) {
    char c = (char)('a' + i % 26);
    assert_int_equal(lk_secret_buf_append(b, &c, 1, &err), LK_OK);
  }
  assert_int_equal(lk_secret_buf_append(b, "z", 1, &err),
                   LK_RESOURCE_EXHAUSTED);
  lk_secret *s = lk_secret_buf_finish(b);
  assert_int_equal(lk_secret_len(s), N);
  assert_int_equal(strlen(lk_secret_str(s)), N);
  for (size_t i = 0; i < N; i++) {
    assert_int_equal(lk_secret_data(s)[i], 'a' + i % 26);
  }
  lk_secret_free(s);
}

static void buf_free_discards_content(void **state) {
  (void)state;
  lk_err err;
  lk_secret_buf *b = lk_secret_buf_new(100);
  assert_non_null(b);
  assert_int_equal(lk_secret_buf_append_str(b, "password", &err), LK_OK);
  lk_secret_buf_free(b);
}

static void buf_append_null_is_invalid_argument(void **state) {
  (void)state;
  lk_err err;
  lk_secret_buf *b = lk_secret_buf_new(100);
  assert_non_null(b);
  assert_int_equal(lk_secret_buf_append(b, NULL, 3, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(lk_secret_buf_append_str(b, NULL, &err),
                   LK_INVALID_ARGUMENT);
  lk_secret_buf_free(b);
}

/* Small secrets come from recycled page slots; each one's NUL must still be
 * the last byte before a guard page, fresh or recycled. */
static void small_secret_ends_at_a_page_boundary(void **state) {
  (void)state;
  static const size_t lens[] = {0, 1, 63, 64, 4000, 4079};
  for (int round = 0; round < 2; round++) {
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
      lk_secret *s = lk_secret_new(lens[i]);
      assert_non_null(s);
      uintptr_t end = (uintptr_t)(lk_secret_data(s) + lens[i] + 1);
      assert_int_equal(end % 4096, 0);
      lk_secret_free(s);
    }
  }
}

/* Writing one byte past a recycled small secret hits the guard page. */
static void write_past_a_recycled_secret_faults(void **state) {
  (void)state;
  lk_secret *s = lk_secret_new(40);
  assert_non_null(s);
  lk_secret_free(s);
  s = lk_secret_new(40);
  assert_non_null(s);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    volatile unsigned char *p = lk_secret_mut(s);
    p[41] = 1;
    _exit(0);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  lk_secret_free(s);
}

/* A freed slot is wiped before anyone gets it again: many secrets filled,
 * freed, then asked for again (more than the pool keeps) are all zero. */
static void recycled_regions_come_back_zeroed(void **state) {
  (void)state;
  enum { N = 300, LEN = 100 };
  static lk_secret *ss[N];
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < N; i++) {
      ss[i] = lk_secret_new(LEN);
      assert_non_null(ss[i]);
      for (int j = 0; j < LEN; j++) {
        assert_int_equal(lk_secret_data(ss[i])[j], 0);
      }
      memset(lk_secret_mut(ss[i]), 0xAA, LEN);
    }
    for (int i = 0; i < N; i++) {
      lk_secret_free(ss[i]);
    }
  }
}

static void disable_core_dumps_sets_limit_and_dumpable(void **state) {
  (void)state;
  lk_err err;
  assert_int_equal(lk_secret_disable_core_dumps(&err), LK_OK);
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_CORE, &rl), 0);
  assert_int_equal(rl.rlim_cur, 0);
  assert_int_equal(rl.rlim_max, 0);
  assert_int_equal(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(init_is_idempotent),
      cmocka_unit_test(init_from_many_threads_succeeds),
      cmocka_unit_test(new_is_zeroed_and_nul_terminated),
      cmocka_unit_test(new_of_zero_length_is_empty_string),
      cmocka_unit_test(from_copies_bytes),
      cmocka_unit_test(absurd_lengths_are_refused),
      cmocka_unit_test(free_and_wipe_accept_null),
      cmocka_unit_test(wipe_zeroes_bytes),
      cmocka_unit_test(ct_equal_compares_content_and_length),
      cmocka_unit_test(buf_builds_bearer_string),
      cmocka_unit_test(buf_fills_exactly_to_cap),
      cmocka_unit_test(buf_past_cap_is_resource_exhausted_and_unchanged),
      cmocka_unit_test(buf_with_zero_cap_refuses_any_byte),
      cmocka_unit_test(buf_grows_across_many_appends),
      cmocka_unit_test(buf_free_discards_content),
      cmocka_unit_test(buf_append_null_is_invalid_argument),
      cmocka_unit_test(small_secret_ends_at_a_page_boundary),
      cmocka_unit_test(write_past_a_recycled_secret_faults),
      cmocka_unit_test(recycled_regions_come_back_zeroed),
      cmocka_unit_test(disable_core_dumps_sets_limit_and_dumpable),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
