/*
 * status_test.c - proves lib/status's contract: every lk_status maps to the
 * gRPC code DESIGN.md §4 fixes for it and to its own name, values outside
 * the enum read as INTERNAL/"LK_UNKNOWN", and lk_fail formats into the
 * caller's lk_err without ever writing past it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "lib/status.h"

static void every_status_maps_to_its_grpc_code(void **state) {
  (void)state;
  assert_int_equal(lk_status_grpc_code(LK_OK), 0);
  assert_int_equal(lk_status_grpc_code(LK_INVALID_ARGUMENT), 3);
  assert_int_equal(lk_status_grpc_code(LK_DEADLINE_EXCEEDED), 4);
  assert_int_equal(lk_status_grpc_code(LK_NOT_FOUND), 5);
  assert_int_equal(lk_status_grpc_code(LK_ALREADY_EXISTS), 6);
  assert_int_equal(lk_status_grpc_code(LK_PERMISSION_DENIED), 7);
  assert_int_equal(lk_status_grpc_code(LK_RESOURCE_EXHAUSTED), 8);
  assert_int_equal(lk_status_grpc_code(LK_FAILED_PRECONDITION), 9);
  assert_int_equal(lk_status_grpc_code(LK_INTERNAL), 13);
  assert_int_equal(lk_status_grpc_code(LK_UNAVAILABLE), 14);
  assert_int_equal(lk_status_grpc_code(LK_UNAUTHENTICATED), 16);
}

static void enum_has_exactly_eleven_statuses(void **state) {
  (void)state;
  assert_int_equal(LK_STATUS_COUNT, 11);
  assert_int_equal(LK_OK, 0);
}

static void every_status_has_its_symbolic_name(void **state) {
  (void)state;
  assert_string_equal(lk_status_name(LK_OK), "LK_OK");
  assert_string_equal(lk_status_name(LK_INVALID_ARGUMENT),
                      "LK_INVALID_ARGUMENT");
  assert_string_equal(lk_status_name(LK_DEADLINE_EXCEEDED),
                      "LK_DEADLINE_EXCEEDED");
  assert_string_equal(lk_status_name(LK_NOT_FOUND), "LK_NOT_FOUND");
  assert_string_equal(lk_status_name(LK_ALREADY_EXISTS), "LK_ALREADY_EXISTS");
  assert_string_equal(lk_status_name(LK_PERMISSION_DENIED),
                      "LK_PERMISSION_DENIED");
  assert_string_equal(lk_status_name(LK_RESOURCE_EXHAUSTED),
                      "LK_RESOURCE_EXHAUSTED");
  assert_string_equal(lk_status_name(LK_FAILED_PRECONDITION),
                      "LK_FAILED_PRECONDITION");
  assert_string_equal(lk_status_name(LK_INTERNAL), "LK_INTERNAL");
  assert_string_equal(lk_status_name(LK_UNAVAILABLE), "LK_UNAVAILABLE");
  assert_string_equal(lk_status_name(LK_UNAUTHENTICATED), "LK_UNAUTHENTICATED");
}

static void every_status_has_a_distinct_nonempty_default_message(void **state) {
  (void)state;
  assert_string_equal(lk_status_default_msg(LK_OK), "ok");
  assert_string_equal(lk_status_default_msg(LK_NOT_FOUND), "not found");
  assert_string_equal(lk_status_default_msg(LK_INTERNAL), "internal error");
  for (int a = 0; a < LK_STATUS_COUNT; a++) {
    const char *ma = lk_status_default_msg((lk_status)a);
    assert_non_null(ma);
    assert_true(ma[0] != '\0');
    for (int b = a + 1; b < LK_STATUS_COUNT; b++) {
      assert_string_not_equal(ma, lk_status_default_msg((lk_status)b));
    }
  }
}

static void out_of_range_status_reads_as_internal_unknown(void **state) {
  (void)state;
  const lk_status bad[] = {LK_STATUS_COUNT, (lk_status)(LK_STATUS_COUNT + 7),
                           (lk_status)-1};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(lk_status_grpc_code(bad[i]), 13);
    assert_string_equal(lk_status_name(bad[i]), "LK_UNKNOWN");
    assert_string_equal(lk_status_default_msg(bad[i]), "unknown status");
  }
}

static void fail_returns_its_code(void **state) {
  (void)state;
  lk_err err;
  lk_err_clear(&err);
  for (int s = 0; s < LK_STATUS_COUNT; s++) {
    assert_int_equal(lk_fail(&err, (lk_status)s, "x"), s);
    assert_int_equal(err.code, s);
  }
}

static void fail_formats_the_message(void **state) {
  (void)state;
  lk_err err;
  lk_err_clear(&err);
  lk_status st =
      lk_fail(&err, LK_NOT_FOUND, "tool %s has no binding %d", "github", 42);
  assert_int_equal(st, LK_NOT_FOUND);
  assert_int_equal(err.code, LK_NOT_FOUND);
  assert_string_equal(err.msg, "tool github has no binding 42");
}

static void fail_overwrites_an_earlier_error(void **state) {
  (void)state;
  lk_err err;
  lk_err_clear(&err);
  assert_int_equal(lk_fail(&err, LK_INTERNAL, "a long first message"),
                   LK_INTERNAL);
  assert_int_equal(lk_fail(&err, LK_UNAVAILABLE, "second"), LK_UNAVAILABLE);
  assert_int_equal(err.code, LK_UNAVAILABLE);
  assert_string_equal(err.msg, "second");
}

/* The lk_err sits between two guard arrays; a message three times the
 * buffer must end NUL-terminated at sizeof(msg)-1 and touch neither guard. */
static void fail_truncates_long_messages_inside_the_buffer(void **state) {
  (void)state;
  struct {
    unsigned char before[64];
    lk_err err;
    unsigned char after[64];
  } g;
  memset(&g, 0xA5, sizeof(g));
  char big[3 * sizeof(g.err.msg)];
  memset(big, 'm', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';

  assert_int_equal(lk_fail(&g.err, LK_INVALID_ARGUMENT, "%s!", big),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(g.err.code, LK_INVALID_ARGUMENT);
  assert_int_equal(strlen(g.err.msg), sizeof(g.err.msg) - 1);
  for (size_t i = 0; i < sizeof(g.err.msg) - 1; i++) {
    assert_int_equal(g.err.msg[i], 'm');
  }
  for (size_t i = 0; i < sizeof(g.before); i++) {
    assert_int_equal(g.before[i], 0xA5);
    assert_int_equal(g.after[i], 0xA5);
  }
}

static void fail_accepts_null_err(void **state) {
  (void)state;
  assert_int_equal(lk_fail(NULL, LK_PERMISSION_DENIED, "no %s", "err"),
                   LK_PERMISSION_DENIED);
  assert_int_equal(lk_fail(NULL, LK_OK, "fine"), LK_OK);
}

static void err_clear_resets_code_and_message(void **state) {
  (void)state;
  lk_err err;
  assert_int_equal(lk_fail(&err, LK_UNAUTHENTICATED, "bad token"),
                   LK_UNAUTHENTICATED);
  lk_err_clear(&err);
  assert_int_equal(err.code, LK_OK);
  assert_string_equal(err.msg, "");
}

static void err_clear_accepts_null(void **state) {
  (void)state;
  lk_err_clear(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_status_maps_to_its_grpc_code),
      cmocka_unit_test(enum_has_exactly_eleven_statuses),
      cmocka_unit_test(every_status_has_its_symbolic_name),
      cmocka_unit_test(every_status_has_a_distinct_nonempty_default_message),
      cmocka_unit_test(out_of_range_status_reads_as_internal_unknown),
      cmocka_unit_test(fail_returns_its_code),
      cmocka_unit_test(fail_formats_the_message),
      cmocka_unit_test(fail_overwrites_an_earlier_error),
      cmocka_unit_test(fail_truncates_long_messages_inside_the_buffer),
      cmocka_unit_test(fail_accepts_null_err),
      cmocka_unit_test(err_clear_resets_code_and_message),
      cmocka_unit_test(err_clear_accepts_null),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
