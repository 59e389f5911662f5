/*
 * oauth_holds_test.c - proves lib/oauth_holds, the refreshers' table of
 * credentials left alone for a while: a hold is found until it is pruned,
 * is never shortened, and a full table drops the hold that ends first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "lib/oauth_holds.h"

static void holds_are_set_found_and_pruned(void **state) {
  (void)state;
  lk_oauth_holds *h = NULL;
  lk_err err;
  assert_int_equal(lk_oauth_holds_new(4, &h, &err), LK_OK);
  assert_int_equal(lk_oauth_holds_until(h, "cred-a"), 0);
  lk_oauth_holds_set(h, "cred-a", 1000);
  lk_oauth_holds_set(h, "cred-b", 2000);
  assert_int_equal(lk_oauth_holds_until(h, "cred-a"), 1000);
  assert_int_equal(lk_oauth_holds_until(h, "cred-b"), 2000);
  /* Never shortened; lengthened. */
  lk_oauth_holds_set(h, "cred-a", 500);
  assert_int_equal(lk_oauth_holds_until(h, "cred-a"), 1000);
  lk_oauth_holds_set(h, "cred-a", 1500);
  assert_int_equal(lk_oauth_holds_until(h, "cred-a"), 1500);
  /* Pruning drops what ended at or before now. */
  lk_oauth_holds_prune(h, 1500);
  assert_int_equal(lk_oauth_holds_until(h, "cred-a"), 0);
  assert_int_equal(lk_oauth_holds_until(h, "cred-b"), 2000);
  lk_oauth_holds_prune(h, 2000);
  assert_int_equal(lk_oauth_holds_until(h, "cred-b"), 0);
  lk_oauth_holds_destroy(h);
  lk_oauth_holds_destroy(NULL);
}

static void a_full_table_drops_the_hold_ending_first(void **state) {
  (void)state;
  lk_oauth_holds *h = NULL;
  lk_err err;
  assert_int_equal(lk_oauth_holds_new(3, &h, &err), LK_OK);
  lk_oauth_holds_set(h, "cred-a", 3000);
  lk_oauth_holds_set(h, "cred-b", 1000);
  lk_oauth_holds_set(h, "cred-c", 2000);
  lk_oauth_holds_set(h, "cred-d", 4000);
  assert_int_equal(lk_oauth_holds_until(h, "cred-b"), 0);
  assert_int_equal(lk_oauth_holds_until(h, "cred-a"), 3000);
  assert_int_equal(lk_oauth_holds_until(h, "cred-c"), 2000);
  assert_int_equal(lk_oauth_holds_until(h, "cred-d"), 4000);
  lk_oauth_holds_destroy(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(holds_are_set_found_and_pruned),
      cmocka_unit_test(a_full_table_drops_the_hold_ending_first),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
