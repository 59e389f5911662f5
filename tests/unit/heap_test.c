/*
 * heap_test.c - lib/heap: the malloc policy holds, and the trimmer gives a
 * burst's free heap back to the kernel once and only when it has grown by
 * more than the slack.
 *
 * A "burst" here is 8 MiB in 2 KiB blocks, written so every page is
 * resident, then freed while one small block allocated after them stays
 * live, so glibc cannot shrink the heap from its top by itself: the case
 * malloc_trim exists for. The sizes are far above what the test binary's
 * own allocations move, so the assertions leave room for them.
 *
 * Under AddressSanitizer malloc is ASan's, which neither mallinfo2 nor
 * malloc_trim see; the tests that measure glibc's heap skip there.
 */
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/heap.h"

#define BURST_BLOCKS 4096
#define BURST_BLOCK_BYTES 2048
#define BURST_BYTES ((size_t)BURST_BLOCKS * BURST_BLOCK_BYTES)
#define MIB ((size_t)1024 * 1024)

#if defined(__SANITIZE_ADDRESS__)
#define GLIBC_MALLOC 0
#else
#define GLIBC_MALLOC 1
#endif

/* Allocates and frees a burst; returns the small live block that pins it
 * below the heap's top (the caller frees it). */
static void *burst(void) {
  void **blocks = calloc(BURST_BLOCKS, sizeof(*blocks));
  assert_non_null(blocks);
  for (size_t i = 0; i < BURST_BLOCKS; i++) {
    blocks[i] = malloc(BURST_BLOCK_BYTES);
    assert_non_null(blocks[i]);
    memset(blocks[i], (int)(i & 0xff) | 1, BURST_BLOCK_BYTES);
  }
  void *pin = malloc(64);
  assert_non_null(pin);
  memset(pin, 1, 64);
  for (size_t i = 0; i < BURST_BLOCKS; i++) {
    free(blocks[i]);
  }
  free(blocks);
  return pin;
}

/* Each test starts from a trimmed heap, whatever the one before it left. */
static int trimmed_heap(void **state) {
  (void)state;
  malloc_trim(0);
  return 0;
}

static void configure_sets_the_policy(void **state) {
  (void)state;
  assert_int_equal(lk_heap_configure(), GLIBC_MALLOC);
  if (!GLIBC_MALLOC) {
    return;
  }
  /* Dynamic, glibc would raise the mmap threshold to 1 MiB when the first
   * block is freed and serve the second from the heap; fixed at 128 KiB,
   * the second is a mapping of its own too. */
  void *big = malloc(MIB);
  assert_non_null(big);
  free(big);
  size_t before = mallinfo2().hblks;
  void *mid = malloc(256 * 1024);
  assert_non_null(mid);
  assert_int_equal(mallinfo2().hblks, before + 1);
  free(mid);
  assert_int_equal(mallinfo2().hblks, before);
}

static void a_burst_is_given_back_once(void **state) {
  (void)state;
  if (!GLIBC_MALLOC) {
    skip();
  }
  lk_err err;
  lk_heap_trimmer *t = NULL;
  assert_int_equal(lk_heap_trimmer_new(MIB, &t, &err), LK_OK);
  size_t idle = lk_heap_resident_slack();
  void *pin = burst();
  size_t after_burst = lk_heap_resident_slack();
  assert_true(after_burst >= idle + BURST_BYTES / 2);

  assert_int_equal(lk_heap_trim_if_slack(t), 1);
  size_t after_trim = lk_heap_resident_slack();
  assert_true(after_trim + BURST_BYTES / 2 <= after_burst);
  /* Nothing new is free: the next check does not trim again. */
  assert_int_equal(lk_heap_trim_if_slack(t), 0);

  free(pin);
  lk_heap_trimmer_destroy(t);
}

static void a_burst_within_the_slack_is_kept(void **state) {
  (void)state;
  if (!GLIBC_MALLOC) {
    skip();
  }
  lk_err err;
  lk_heap_trimmer *t = NULL;
  assert_int_equal(lk_heap_trimmer_new(4 * BURST_BYTES, &t, &err), LK_OK);
  void *pin = burst();
  size_t after_burst = lk_heap_resident_slack();
  assert_int_equal(lk_heap_trim_if_slack(t), 0);
  /* Not trimmed: the burst's pages are still resident. */
  assert_true(lk_heap_resident_slack() + BURST_BYTES / 2 > after_burst);
  free(pin);
  lk_heap_trimmer_destroy(t);
}

static void a_second_burst_is_given_back_too(void **state) {
  (void)state;
  if (!GLIBC_MALLOC) {
    skip();
  }
  lk_err err;
  lk_heap_trimmer *t = NULL;
  assert_int_equal(lk_heap_trimmer_new(MIB, &t, &err), LK_OK);
  void *pin1 = burst();
  assert_int_equal(lk_heap_trim_if_slack(t), 1);
  /* The second burst reuses the trimmed free memory (faulting it back in)
   * and frees it again: the trimmer sees it grow again and trims. */
  void *pin2 = burst();
  size_t after_burst = lk_heap_resident_slack();
  assert_int_equal(lk_heap_trim_if_slack(t), 1);
  assert_true(lk_heap_resident_slack() + BURST_BYTES / 2 <= after_burst);
  free(pin2);
  free(pin1);
  lk_heap_trimmer_destroy(t);
}

/* A large mapped block that is never written (lk_metrics' zeroed tables)
 * is in malloc's mapped total but not resident; it must not hide a burst
 * from the trimmer. Counted as in use, it made the slack 0 here. */
static void a_burst_beside_untouched_mappings_is_given_back(void **state) {
  (void)state;
  if (!GLIBC_MALLOC) {
    skip();
  }
  size_t mapped_before = mallinfo2().hblkhd;
  unsigned char *untouched = malloc(4 * BURST_BYTES);
  assert_non_null(untouched);
  /* It is a mapping of its own, counted whole, never written. */
  assert_true(mallinfo2().hblkhd >= mapped_before + 4 * BURST_BYTES);
  lk_err err;
  lk_heap_trimmer *t = NULL;
  assert_int_equal(lk_heap_trimmer_new(MIB, &t, &err), LK_OK);
  size_t idle = lk_heap_resident_slack();
  void *pin = burst();
  size_t after_burst = lk_heap_resident_slack();
  assert_true(after_burst >= idle + BURST_BYTES / 2);
  assert_int_equal(lk_heap_trim_if_slack(t), 1);
  assert_true(lk_heap_resident_slack() + BURST_BYTES / 2 <= after_burst);
  free(pin);
  free(untouched);
  lk_heap_trimmer_destroy(t);
}

static void destroy_accepts_null(void **state) {
  (void)state;
  lk_heap_trimmer_destroy(NULL);
  lk_err err;
  lk_heap_trimmer *t = NULL;
  assert_int_equal(lk_heap_trimmer_new(MIB, &t, &err), LK_OK);
  assert_non_null(t);
  lk_heap_trimmer_destroy(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(configure_sets_the_policy),
      cmocka_unit_test_setup(a_burst_is_given_back_once, trimmed_heap),
      cmocka_unit_test_setup(a_burst_within_the_slack_is_kept, trimmed_heap),
      cmocka_unit_test_setup(a_burst_beside_untouched_mappings_is_given_back,
                             trimmed_heap),
      cmocka_unit_test_setup(a_second_burst_is_given_back_too, trimmed_heap),
      cmocka_unit_test(destroy_accepts_null),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
