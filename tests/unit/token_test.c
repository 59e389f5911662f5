/*
 * token_test.c - proves lib/token's contract: a token file loads with its
 * trailing whitespace stripped, only the exact "Bearer <token>" (len bytes
 * of it) is admitted, and short, empty, missing or oversized files are
 * refused with the documented codes and a message naming the path.
 *
 * Token files live in a fresh directory under $TEST_TMPDIR that the group
 * teardown removes.
 */
#include <fcntl.h>
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

#include "lib/token.h"

#define TOKEN "s3cr3t-Token-0123456789abcdef"
#define BEARER "Bearer " TOKEN
#define MAX_FILE 4096

static char tmp_root[512];
static char not_null; /* load must overwrite a pointer to this with NULL */
static char file_path[600];

static int make_root(void **state) {
  (void)state;
  const char *base = getenv("TEST_TMPDIR");
  snprintf(tmp_root, sizeof(tmp_root), "%s/token_test_XXXXXX",
           base ? base : "/tmp");
  if (mkdtemp(tmp_root) == NULL)
    return -1;
  snprintf(file_path, sizeof(file_path), "%s/token", tmp_root);
  return 0;
}

static int remove_root(void **state) {
  (void)state;
  unlink(file_path);
  return rmdir(tmp_root);
}

static int remove_file(void **state) {
  (void)state;
  unlink(file_path);
  return 0;
}

/* Writes len bytes at content to file_path, replacing any earlier file. */
static void write_file(const void *content, size_t len) {
  int fd = open(file_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, content, len), (ssize_t)len);
  assert_int_equal(close(fd), 0);
}

static void write_str(const char *content) {
  write_file(content, strlen(content));
}

/* Loads file_path, asserting success. */
static lk_token *load_ok(void) {
  lk_token *t = NULL;
  lk_err err;
  lk_err_clear(&err);
  lk_status st = lk_token_load(file_path, &t, &err);
  if (st != LK_OK)
    fail_msg("lk_token_load: %s: %s", lk_status_name(st), err.msg);
  assert_non_null(t);
  return t;
}

/* Loads file_path, asserting it fails with code and names the path. */
static void load_fails(lk_status code) {
  lk_token *t = (lk_token *)&not_null;
  lk_err err;
  lk_err_clear(&err);
  assert_int_equal(lk_token_load(file_path, &t, &err), code);
  assert_int_equal(err.code, code);
  assert_null(t);
  if (strstr(err.msg, file_path) == NULL)
    fail_msg("message '%s' does not name %s", err.msg, file_path);
}

static int check(const lk_token *t, const char *value) {
  return lk_token_check_bearer(t, value, value ? strlen(value) : 0);
}

static void file_with_trailing_newline_loads(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, BEARER), 1);
  lk_token_destroy(t);
}

static void file_without_trailing_newline_loads(void **state) {
  (void)state;
  write_str(TOKEN);
  lk_token *t = load_ok();
  assert_int_equal(check(t, BEARER), 1);
  lk_token_destroy(t);
}

static void trailing_whitespace_of_every_kind_is_stripped(void **state) {
  (void)state;
  write_str(TOKEN " \t\r\n\n  \r\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, BEARER), 1);
  assert_int_equal(check(t, BEARER " "), 0);
  assert_int_equal(check(t, BEARER "\n"), 0);
  lk_token_destroy(t);
}

static void interior_whitespace_is_part_of_the_token(void **state) {
  (void)state;
  write_str("first-half-0123 second-half-4567\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, "Bearer first-half-0123 second-half-4567"), 1);
  assert_int_equal(check(t, "Bearer first-half-0123"), 0);
  lk_token_destroy(t);
}

static void exact_bearer_value_passes(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  assert_int_equal(lk_token_check_bearer(t, BEARER, strlen(BEARER)), 1);
  lk_token_destroy(t);
}

static void only_len_bytes_of_value_are_checked(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  /* Metadata values are not NUL-terminated: what follows len is ignored. */
  const char longer[] = BEARER "trailing-bytes";
  assert_int_equal(lk_token_check_bearer(t, longer, strlen(BEARER)), 1);
  assert_int_equal(lk_token_check_bearer(t, longer, strlen(BEARER) - 1), 0);
  lk_token_destroy(t);
}

static void wrong_token_of_same_length_is_rejected(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  char wrong[] = BEARER;
  wrong[strlen(wrong) - 1] ^= 1;
  assert_int_equal(check(t, wrong), 0);
  char first[] = BEARER;
  first[7] ^= 1;
  assert_int_equal(check(t, first), 0);
  lk_token_destroy(t);
}

static void lowercase_bearer_scheme_is_rejected(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, "bearer " TOKEN), 0);
  assert_int_equal(check(t, "BEARER " TOKEN), 0);
  lk_token_destroy(t);
}

static void token_without_bearer_prefix_is_rejected(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, TOKEN), 0);
  assert_int_equal(check(t, "Bearer" TOKEN), 0);
  assert_int_equal(check(t, "Bearer  " TOKEN), 0);
  assert_int_equal(check(t, "Basic " TOKEN), 0);
  lk_token_destroy(t);
}

static void extra_character_after_token_is_rejected(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, BEARER "x"), 0);
  lk_token_destroy(t);
}

static void prefix_of_token_is_rejected(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  char prefix[] = BEARER;
  for (size_t cut = 7; cut < strlen(BEARER); cut++) {
    prefix[cut] = '\0';
    assert_int_equal(check(t, prefix), 0);
    prefix[cut] = BEARER[cut];
  }
  lk_token_destroy(t);
}

static void empty_value_is_rejected(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, ""), 0);
  assert_int_equal(lk_token_check_bearer(t, BEARER, 0), 0);
  assert_int_equal(check(t, "Bearer "), 0);
  lk_token_destroy(t);
}

static void null_value_is_rejected(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *t = load_ok();
  assert_int_equal(lk_token_check_bearer(t, NULL, 0), 0);
  assert_int_equal(lk_token_check_bearer(t, NULL, strlen(BEARER)), 0);
  lk_token_destroy(t);
}

static void null_token_rejects_everything(void **state) {
  (void)state;
  assert_int_equal(check(NULL, BEARER), 0);
  assert_int_equal(check(NULL, "Bearer "), 0);
}

static void tokens_from_different_files_are_independent(void **state) {
  (void)state;
  write_str(TOKEN "\n");
  lk_token *a = load_ok();
  write_str("another-token-abcdefghijklmnop\n");
  lk_token *b = load_ok();
  assert_int_equal(check(a, BEARER), 1);
  assert_int_equal(check(a, "Bearer another-token-abcdefghijklmnop"), 0);
  assert_int_equal(check(b, "Bearer another-token-abcdefghijklmnop"), 1);
  assert_int_equal(check(b, BEARER), 0);
  lk_token_destroy(a);
  lk_token_destroy(b);
}

static void token_of_sixteen_characters_is_accepted(void **state) {
  (void)state;
  write_str("0123456789abcdef\n");
  lk_token *t = load_ok();
  assert_int_equal(check(t, "Bearer 0123456789abcdef"), 1);
  lk_token_destroy(t);
}

static void token_shorter_than_sixteen_is_invalid_argument(void **state) {
  (void)state;
  write_str("0123456789abcde");
  load_fails(LK_INVALID_ARGUMENT);
}

static void trailing_whitespace_does_not_count_toward_length(void **state) {
  (void)state;
  write_str("0123456789abcde   \n");
  load_fails(LK_INVALID_ARGUMENT);
}

static void empty_file_is_invalid_argument(void **state) {
  (void)state;
  write_str("");
  load_fails(LK_INVALID_ARGUMENT);
}

static void whitespace_only_file_is_invalid_argument(void **state) {
  (void)state;
  write_str(" \t\r\n                     \n");
  load_fails(LK_INVALID_ARGUMENT);
}

static void missing_file_is_failed_precondition(void **state) {
  (void)state;
  unlink(file_path);
  load_fails(LK_FAILED_PRECONDITION);
}

static void directory_is_failed_precondition(void **state) {
  (void)state;
  lk_token *t = (lk_token *)&not_null;
  lk_err err;
  lk_err_clear(&err);
  assert_int_equal(lk_token_load(tmp_root, &t, &err), LK_FAILED_PRECONDITION);
  assert_int_equal(err.code, LK_FAILED_PRECONDITION);
  assert_null(t);
  assert_non_null(strstr(err.msg, tmp_root));
}

static void largest_allowed_file_loads(void **state) {
  (void)state;
  /* 4095 bytes: the largest file the 4 KiB buffer accepts. */
  char *big = malloc(7 + MAX_FILE);
  assert_non_null(big);
  memcpy(big, "Bearer ", 7);
  memset(big + 7, 'k', MAX_FILE - 1);
  write_file(big + 7, MAX_FILE - 1);
  lk_token *t = load_ok();
  assert_int_equal(lk_token_check_bearer(t, big, 7 + MAX_FILE - 1), 1);
  assert_int_equal(lk_token_check_bearer(t, big, 7 + MAX_FILE - 2), 0);
  lk_token_destroy(t);
  free(big);
}

static void file_of_four_kib_is_invalid_argument(void **state) {
  (void)state;
  char big[MAX_FILE];
  memset(big, 'k', sizeof(big));
  write_file(big, sizeof(big));
  load_fails(LK_INVALID_ARGUMENT);
}

static void file_over_four_kib_is_invalid_argument(void **state) {
  (void)state;
  char big[3 * MAX_FILE];
  memset(big, 'k', sizeof(big));
  write_file(big, sizeof(big));
  load_fails(LK_INVALID_ARGUMENT);
}

static void destroy_accepts_null(void **state) {
  (void)state;
  lk_token_destroy(NULL);
}

#define T(name) cmocka_unit_test_teardown(name, remove_file)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(file_with_trailing_newline_loads),
      T(file_without_trailing_newline_loads),
      T(trailing_whitespace_of_every_kind_is_stripped),
      T(interior_whitespace_is_part_of_the_token),
      T(exact_bearer_value_passes),
      T(only_len_bytes_of_value_are_checked),
      T(wrong_token_of_same_length_is_rejected),
      T(lowercase_bearer_scheme_is_rejected),
      T(token_without_bearer_prefix_is_rejected),
      T(extra_character_after_token_is_rejected),
      T(prefix_of_token_is_rejected),
      T(empty_value_is_rejected),
      T(null_value_is_rejected),
      T(null_token_rejects_everything),
      T(tokens_from_different_files_are_independent),
      T(token_of_sixteen_characters_is_accepted),
      T(token_shorter_than_sixteen_is_invalid_argument),
      T(trailing_whitespace_does_not_count_toward_length),
      T(empty_file_is_invalid_argument),
      T(whitespace_only_file_is_invalid_argument),
      T(missing_file_is_failed_precondition),
      T(directory_is_failed_precondition),
      T(largest_allowed_file_loads),
      T(file_of_four_kib_is_invalid_argument),
      T(file_over_four_kib_is_invalid_argument),
      T(destroy_accepts_null),
  };
  return cmocka_run_group_tests(tests, make_root, remove_root);
}
