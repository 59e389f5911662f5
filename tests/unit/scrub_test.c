/*
 * scrub_test.c - proves sidecar/scrub: each encoding of a secret that a
 * vendor may echo is replaced, basic "user:pass" in base64 too, several and
 * overlapping secrets, nothing changes when no secret is present, short
 * and non-secret values are left alone, and the output cap holds.
 * Expected encodings are written out literally (computed independently),
 * not produced by the code under test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sidecar/scrub.h"

#define MB ((size_t)1024 * 1024)

typedef struct {
  lk_field f[4];
  size_t n;
} field_set;

static void add_field(field_set *fs, const char *name, const char *value,
                      int secret) {
  fs->f[fs->n].name = name;
  fs->f[fs->n].value = lk_secret_from(value, strlen(value));
  fs->f[fs->n].secret = secret;
  assert_non_null(fs->f[fs->n].value);
  fs->n++;
}

static void free_fields(field_set *fs) {
  for (size_t i = 0; i < fs->n; i++) {
    lk_secret_free((lk_secret *)fs->f[i].value);
  }
  fs->n = 0;
}

static lk_scrubber *scrubber_of(field_set *fs, const char *userpwd) {
  lk_secret *up =
      userpwd != NULL ? lk_secret_from(userpwd, strlen(userpwd)) : NULL;
  lk_scrubber *s = NULL;
  lk_err err;
  assert_int_equal(lk_scrubber_new(fs->f, fs->n, up, &s, &err), LK_OK);
  assert_non_null(s);
  lk_secret_free(up);
  return s;
}

/* Scrubs text with a generous cap and checks output and count. */
static void expect_scrub(const lk_scrubber *s, const char *in, const char *want,
                         size_t want_replaced) {
  unsigned char *out = NULL;
  size_t out_len = 0;
  size_t replaced = 99;
  lk_err err;
  assert_int_equal(lk_scrub(s, (const unsigned char *)in, strlen(in), MB, &out,
                            &out_len, &replaced, &err),
                   LK_OK);
  assert_non_null(out);
  if (out_len != strlen(want) || memcmp(out, want, out_len) != 0) {
    fail_msg("scrub(%s)\n  got:  %.*s\n  want: %s", in, (int)out_len,
             (const char *)out, want);
  }
  assert_int_equal(replaced, want_replaced);
  free(out);
}

static void raw_secret_is_replaced(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "api_key", "sk_live_ABCDEFGH", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  expect_scrub(s, "error: key sk_live_ABCDEFGH is invalid",
               "error: key [REDACTED] is invalid", 1);
  expect_scrub(s, "sk_live_ABCDEFGH", "[REDACTED]", 1);
  expect_scrub(s, "sk_live_ABCDEFGH sk_live_ABCDEFGH;sk_live_ABCDEFGH",
               "[REDACTED] [REDACTED];[REDACTED]", 3);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void base64_forms_are_replaced(void **state) {
  (void)state;
  /* "k3y?>>~~sec": base64 has '+' and '=' padding, base64url has '-'. */
  static const char *const forms[] = {
      "azN5Pz4+fn5zZWM=", /* standard, padded */
      "azN5Pz4+fn5zZWM",  /* standard, unpadded */
      "azN5Pz4-fn5zZWM",  /* base64url, unpadded */
      "azN5Pz4-fn5zZWM=", /* base64url, padded */
  };
  field_set fs = {.n = 0};
  add_field(&fs, "api_key", "k3y?>>~~sec", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
    char in[128];
    snprintf(in, sizeof(in), "{\"echo\":\"%s\"}", forms[i]);
    expect_scrub(s, in, "{\"echo\":\"[REDACTED]\"}", 1);
  }
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void percent_encoded_forms_are_replaced(void **state) {
  (void)state;
  static const char *const forms[] = {
      "p%40ss%20w%2Frd%21Z", /* upper-case hex */
      "p%40ss%20w%2frd%21Z", /* lower-case hex */
      "p%40ss+w%2Frd%21Z",   /* form encoding: '+' for space */
  };
  field_set fs = {.n = 0};
  add_field(&fs, "password", "p@ss w/rd!Z", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
    char in[128];
    snprintf(in, sizeof(in), "GET /login?pw=%s&x=1", forms[i]);
    expect_scrub(s, in, "GET /login?pw=[REDACTED]&x=1", 1);
  }
  lk_scrubber_destroy(s);
  free_fields(&fs);

  add_field(&fs, "api_key", "k3y?>>~~sec", 1);
  s = scrubber_of(&fs, NULL);
  expect_scrub(s, "q=k3y%3F%3E%3E~~sec", "q=[REDACTED]", 1);
  expect_scrub(s, "q=k3y%3f%3e%3e~~sec", "q=[REDACTED]", 1);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void json_escaped_forms_are_replaced(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "token", "a/b\"c\\d9", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  expect_scrub(s, "{\"t\":\"a/b\\\"c\\\\d9\"}", "{\"t\":\"[REDACTED]\"}", 1);
  expect_scrub(s, "{\"t\":\"a\\/b\\\"c\\\\d9\"}", "{\"t\":\"[REDACTED]\"}", 1);
  expect_scrub(s, "raw a/b\"c\\d9.", "raw [REDACTED].", 1);
  lk_scrubber_destroy(s);
  free_fields(&fs);

  add_field(&fs, "token", "line1\nline2\x01", 1);
  s = scrubber_of(&fs, NULL);
  expect_scrub(s, "\"line1\\nline2\\u0001\"", "\"[REDACTED]\"", 1);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void basic_user_pass_base64_is_replaced(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "user", "user01", 0);
  add_field(&fs, "password", "pa55word", 1);
  lk_scrubber *s = scrubber_of(&fs, "user01:pa55word");
  expect_scrub(s, "Authorization: Basic dXNlcjAxOnBhNTV3b3Jk\r\n",
               "Authorization: Basic [REDACTED]\r\n", 1);
  expect_scrub(s, "auth=user01:pa55word", "auth=[REDACTED]", 1);
  /* The plain user name alone is not a secret. */
  expect_scrub(s, "hello user01", "hello user01", 0);
  lk_scrubber_destroy(s);

  /* Without the basic needle, the password's own needles miss it. */
  s = scrubber_of(&fs, NULL);
  expect_scrub(s, "Basic dXNlcjAxOnBhNTV3b3Jk", "Basic dXNlcjAxOnBhNTV3b3Jk",
               0);
  lk_scrubber_destroy(s);
  free_fields(&fs);
  /* The basic needle works without any secret field too. */
  s = scrubber_of(&fs, "user01:pa55word");
  expect_scrub(s, "Basic dXNlcjAxOnBhNTV3b3Jk", "Basic [REDACTED]", 1);
  lk_scrubber_destroy(s);
}

static void several_secrets_are_all_replaced(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "client_id", "cid-plain-visible", 0);
  add_field(&fs, "client_secret", "cs_9f8e7d6c", 1);
  add_field(&fs, "refresh", "rt_11223344", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  expect_scrub(s,
               "id=cid-plain-visible secret=cs_9f8e7d6c refresh=rt_11223344 "
               "again=cs_9f8e7d6c",
               "id=cid-plain-visible secret=[REDACTED] refresh=[REDACTED] "
               "again=[REDACTED]",
               3);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void overlapping_occurrences_merge_into_one_mark(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "a", "abcdefgh", 1);
  add_field(&fs, "b", "efghijkl", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  /* No tail of the second secret may survive next to the first's mark. */
  expect_scrub(s, "xxabcdefghijklyy", "xx[REDACTED]yy", 1);
  /* Touching, not overlapping: two marks. */
  expect_scrub(s, "abcdefghefghijkl", "[REDACTED][REDACTED]", 2);
  expect_scrub(s, "abcdefghabcdefgh", "[REDACTED][REDACTED]", 2);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void longest_needle_wins_at_a_position(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "short", "secret12", 1);
  add_field(&fs, "long", "secret1234", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  expect_scrub(s, "[secret1234]", "[[REDACTED]]", 1);
  expect_scrub(s, "[secret123]", "[[REDACTED]3]", 1);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void absent_secret_leaves_input_unchanged(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "api_key", "sk_live_ABCDEFGH", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  expect_scrub(s, "{\"forecast\":\"sunny\",\"key\":\"sk_live_ABCDEFG\"}",
               "{\"forecast\":\"sunny\",\"key\":\"sk_live_ABCDEFG\"}", 0);
  /* Binary input, NULs included, passes through byte for byte. */
  static const unsigned char bin[] = {0, 's', 0xff, 'k', 0, '_', 0x80, 0};
  unsigned char *out = NULL;
  size_t out_len = 0, replaced = 5;
  lk_err err;
  assert_int_equal(
      lk_scrub(s, bin, sizeof(bin), MB, &out, &out_len, &replaced, &err),
      LK_OK);
  assert_int_equal(out_len, sizeof(bin));
  assert_memory_equal(out, bin, sizeof(bin));
  assert_int_equal(replaced, 0);
  free(out);
  /* Empty input gives an empty, freeable output. */
  assert_int_equal(lk_scrub(s, NULL, 0, MB, &out, &out_len, &replaced, &err),
                   LK_OK);
  assert_non_null(out);
  assert_int_equal(out_len, 0);
  assert_int_equal(replaced, 0);
  free(out);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void short_and_plain_values_are_not_needles(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "pin", "abc", 1);
  add_field(&fs, "region", "eu-west-1", 0);
  lk_scrubber *s = scrubber_of(&fs, "a:b");
  assert_int_equal(lk_scrubber_needles(s), 0);
  expect_scrub(s, "abc eu-west-1 a:b YTpi", "abc eu-west-1 a:b YTpi", 0);
  lk_scrubber_destroy(s);
  free_fields(&fs);

  add_field(&fs, "pin", "abcd", 1);
  s = scrubber_of(&fs, NULL);
  expect_scrub(s, "x abcd y", "x [REDACTED] y", 1);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void identical_encodings_are_stored_once(void **state) {
  (void)state;
  /* raw; base64 padded, unpadded; base64url padded, unpadded; percent upper
   * and lower. Form encoding and both JSON forms equal one of those. */
  field_set fs = {.n = 0};
  add_field(&fs, "api_key", "k3y?>>~~sec", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  assert_int_equal(lk_scrubber_needles(s), 7);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void output_is_capped(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "k", "SECRETVALUE", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  const char *in = "key=SECRETVALUE";
  unsigned char *out = NULL;
  size_t out_len = 0, replaced = 0;
  lk_err err;
  assert_int_equal(lk_scrub(s, (const unsigned char *)in, strlen(in), 14, &out,
                            &out_len, &replaced, &err),
                   LK_OK);
  assert_int_equal(out_len, 14);
  assert_memory_equal(out, "key=[REDACTED]", 14);
  free(out);
  out = (unsigned char *)1;
  assert_int_equal(lk_scrub(s, (const unsigned char *)in, strlen(in), 13, &out,
                            &out_len, &replaced, &err),
                   LK_RESOURCE_EXHAUSTED);
  assert_null(out);
  assert_int_equal(out_len, 0);
  assert_int_equal(replaced, 0);
  assert_string_equal(err.msg,
                      "the scrubbed response would exceed 13 bytes; raise "
                      "--max-response-bytes or request less data");
  lk_scrubber_destroy(s);
  free_fields(&fs);

  /* A 4-byte secret grows to the 10-byte mark: the cap counts the output. */
  add_field(&fs, "k", "abcd", 1);
  s = scrubber_of(&fs, NULL);
  assert_int_equal(lk_scrub(s, (const unsigned char *)"abcd", 4, 9, &out,
                            &out_len, &replaced, &err),
                   LK_RESOURCE_EXHAUSTED);
  assert_null(out);
  /* Input alone over the cap, nothing to replace. */
  assert_int_equal(lk_scrub(s, (const unsigned char *)"0123456789", 10, 9, &out,
                            &out_len, &replaced, &err),
                   LK_RESOURCE_EXHAUSTED);
  assert_null(out);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

static void null_scrubber_copies_input(void **state) {
  (void)state;
  expect_scrub(NULL, "anything at all", "anything at all", 0);
  assert_int_equal(lk_scrubber_needles(NULL), 0);
  lk_scrubber_destroy(NULL);
}

static void overlong_secret_is_refused(void **state) {
  (void)state;
  char *big = malloc(LK_SCRUB_MAX_SECRET + 2);
  assert_non_null(big);
  memset(big, 'x', LK_SCRUB_MAX_SECRET + 1);
  big[LK_SCRUB_MAX_SECRET + 1] = '\0';
  field_set fs = {.n = 0};
  add_field(&fs, "blob", big, 1);
  lk_scrubber *s = (lk_scrubber *)1;
  lk_err err;
  assert_int_equal(lk_scrubber_new(fs.f, fs.n, NULL, &s, &err),
                   LK_RESOURCE_EXHAUSTED);
  assert_null(s);
  assert_string_equal(err.msg,
                      "secret field 'blob' is longer than 65536 bytes and "
                      "cannot be scrubbed; shorten the credential's value");
  free_fields(&fs);
  free(big);
}

static void large_response_is_scanned_to_the_end(void **state) {
  (void)state;
  field_set fs = {.n = 0};
  add_field(&fs, "k", "tok_ZZZZ9999", 1);
  lk_scrubber *s = scrubber_of(&fs, NULL);
  size_t n = 4 * MB;
  unsigned char *in = malloc(n);
  assert_non_null(in);
  for (size_t i = 0; i < n; i++) {
    in[i] = (unsigned char)("tok_ZZZZ999 abc"[i % 15]);
  }
  memcpy(in + n - 12, "tok_ZZZZ9999", 12);
  unsigned char *out = NULL;
  size_t out_len = 0, replaced = 0;
  lk_err err;
  assert_int_equal(lk_scrub(s, in, n, 2 * n, &out, &out_len, &replaced, &err),
                   LK_OK);
  assert_int_equal(replaced, 1);
  assert_int_equal(out_len, n - 12 + 10);
  assert_memory_equal(out + out_len - 10, "[REDACTED]", 10);
  free(out);
  free(in);
  lk_scrubber_destroy(s);
  free_fields(&fs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(raw_secret_is_replaced),
      cmocka_unit_test(base64_forms_are_replaced),
      cmocka_unit_test(percent_encoded_forms_are_replaced),
      cmocka_unit_test(json_escaped_forms_are_replaced),
      cmocka_unit_test(basic_user_pass_base64_is_replaced),
      cmocka_unit_test(several_secrets_are_all_replaced),
      cmocka_unit_test(overlapping_occurrences_merge_into_one_mark),
      cmocka_unit_test(longest_needle_wins_at_a_position),
      cmocka_unit_test(absent_secret_leaves_input_unchanged),
      cmocka_unit_test(short_and_plain_values_are_not_needles),
      cmocka_unit_test(identical_encodings_are_stored_once),
      cmocka_unit_test(output_is_capped),
      cmocka_unit_test(null_scrubber_copies_input),
      cmocka_unit_test(overlong_secret_is_refused),
      cmocka_unit_test(large_response_is_scanned_to_the_end),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
