/*
 * oauth_text_test.c - proves clients/cli/oauth_text's wording of every
 * refresh state the control plane can leave on an oauth2 credential: the
 * expiry as RFC 3339 with "in 4m12s" / "expired 2m ago" (or unknown), the
 * last refresh ("ok at", "failed N times in a row: why; next attempt",
 * the owner's re-authorisation, none yet), the listing summary, and the
 * --json members, including the re-authorise hint; and that spans and
 * long reasons are cut to the caller's buffer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "clients/cli/oauth_text.h"

/* 2026-11-26T03:20:00Z */
#define NOW_MS 1795663200000LL

/* A credential whose plain expires_at is expires (NULL: no such field). */
typedef struct {
  Latchkey__V1__Credential cred;
  Latchkey__V1__FieldValue expires;
  Latchkey__V1__FieldValue *fields[1];
  Latchkey__V1__OAuthState st;
  char value[32];
} cred_fx;

static void cred_fx_init(cred_fx *f, const char *expires) {
  latchkey__v1__credential__init(&f->cred);
  latchkey__v1__field_value__init(&f->expires);
  latchkey__v1__oauth_state__init(&f->st);
  f->st.generation = 1;
  f->cred.oauth = &f->st;
  if (expires != NULL) {
    snprintf(f->value, sizeof(f->value), "%s", expires);
    f->expires.name = (char *)"expires_at";
    f->expires.value = f->value;
    f->fields[0] = &f->expires;
    f->cred.fields = f->fields;
    f->cred.n_fields = 1;
  }
}

static void span_uses_two_units_at_most(void **state) {
  char out[32];
  (void)state;
  lk_oauth_text_span(252000, out, sizeof(out));
  assert_string_equal(out, "4m12s");
  lk_oauth_text_span(-120000, out, sizeof(out));
  assert_string_equal(out, "2m");
  lk_oauth_text_span(3605000, out, sizeof(out));
  assert_string_equal(out, "1h");
  lk_oauth_text_span(3900000, out, sizeof(out));
  assert_string_equal(out, "1h5m");
  lk_oauth_text_span((3 * 86400 + 7200 + 59) * 1000LL, out, sizeof(out));
  assert_string_equal(out, "3d2h");
  lk_oauth_text_span(45999, out, sizeof(out));
  assert_string_equal(out, "45s");
  lk_oauth_text_span(0, out, sizeof(out));
  assert_string_equal(out, "0s");
  lk_oauth_text_span(252000, out, 3); /* cut, still terminated */
  assert_true(strlen(out) < 3);
}

static void expiry_reads_in_or_expired_or_unknown(void **state) {
  cred_fx f;
  char out[LK_OAUTH_TEXT_BYTES];
  (void)state;
  cred_fx_init(&f, "1795663452"); /* NOW + 4m12s */
  lk_oauth_text_expiry(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "2026-11-26T03:24:12Z (in 4m12s)");
  cred_fx_init(&f, "1795663080"); /* NOW - 2m */
  lk_oauth_text_expiry(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "2026-11-26T03:18:00Z (expired 2m ago)");
  cred_fx_init(&f, "0");
  lk_oauth_text_expiry(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "unknown (refreshed at once)");
  cred_fx_init(&f, NULL);
  lk_oauth_text_expiry(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "unknown (refreshed at once)");
}

static void refresh_reads_each_state(void **state) {
  Latchkey__V1__OAuthState st = LATCHKEY__V1__OAUTH_STATE__INIT;
  char out[LK_OAUTH_TEXT_BYTES];
  char reason[2000];
  (void)state;
  lk_oauth_text_refresh(&st, out, sizeof(out));
  assert_string_equal(out, "none yet");

  st.last_refresh_result = (char *)"ok";
  st.last_refresh_at = NOW_MS;
  st.last_success_at = NOW_MS;
  lk_oauth_text_refresh(&st, out, sizeof(out));
  assert_string_equal(out, "ok at 2026-11-26T03:20:00Z");

  st.failures = 3;
  st.last_refresh_result =
      (char *)"token endpoint answered HTTP 503 (temporarily_unavailable)";
  st.next_attempt_at = NOW_MS + 60000;
  lk_oauth_text_refresh(&st, out, sizeof(out));
  assert_string_equal(out,
                      "failed 3 times in a row: token endpoint answered HTTP "
                      "503 (temporarily_unavailable); next attempt "
                      "2026-11-26T03:21:00Z");
  st.failures = 1;
  st.next_attempt_at = 0;
  st.last_refresh_result = (char *)"";
  lk_oauth_text_refresh(&st, out, sizeof(out));
  assert_string_equal(out, "failed 1 time in a row: no reason given");

  st.failures = 0;
  st.last_refresh_at = 0;
  st.last_refresh_result = (char *)"re-authorised by the owner";
  lk_oauth_text_refresh(&st, out, sizeof(out));
  assert_string_equal(out, "re-authorised by the owner");

  /* a long reason is cut at the buffer */
  memset(reason, 'r', sizeof(reason) - 1);
  reason[sizeof(reason) - 1] = '\0';
  st.failures = 2;
  st.last_refresh_result = reason;
  lk_oauth_text_refresh(&st, out, sizeof(out));
  assert_int_equal(strlen(out), sizeof(out) - 1);
}

static void summary_is_one_cell(void **state) {
  cred_fx f;
  char out[LK_OAUTH_TEXT_BYTES];
  Latchkey__V1__Credential plain = LATCHKEY__V1__CREDENTIAL__INIT;
  (void)state;
  cred_fx_init(&f, "1795663452");
  f.st.last_refresh_result = (char *)"ok";
  lk_oauth_text_summary(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "expires in 4m12s, refresh ok");
  f.st.failures = 4;
  f.st.last_refresh_result = (char *)"timeout";
  lk_oauth_text_summary(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "expires in 4m12s, refresh failed 4 times");
  f.st.reauthorize = 1;
  cred_fx_init(&f, "1795663080");
  f.st.reauthorize = 1;
  lk_oauth_text_summary(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "expired 2m ago, re-authorisation needed");
  cred_fx_init(&f, "0");
  lk_oauth_text_summary(&f.cred, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "expiry unknown");
  lk_oauth_text_summary(&plain, NOW_MS, out, sizeof(out));
  assert_string_equal(out, "");
}

static void json_adds_readable_members(void **state) {
  cred_fx f;
  json_t *obj = json_object();
  json_t *o = json_object();
  (void)state;
  json_object_set_new(obj, "oauth", o);
  cred_fx_init(&f, "1795663080");
  f.st.failures = 2;
  f.st.reauthorize = 1;
  f.st.last_refresh_result = (char *)"invalid_grant";
  assert_int_equal(lk_oauth_text_json(obj, &f.cred, NOW_MS), 0);
  assert_string_equal(
      json_string_value(json_object_get(o, "access_token_expires_at")),
      "2026-11-26T03:18:00Z");
  assert_int_equal(
      json_integer_value(json_object_get(o, "access_token_expires_in_s")),
      -120);
  assert_true(json_is_true(json_object_get(o, "access_token_expired")));
  assert_string_equal(json_string_value(json_object_get(o, "last_refresh")),
                      "failed 2 times in a row: invalid_grant");
  assert_string_equal(json_string_value(json_object_get(o, "hint")),
                      LK_OAUTH_TEXT_REAUTHORIZE);

  cred_fx_init(&f, NULL);
  assert_int_equal(lk_oauth_text_json(obj, &f.cred, NOW_MS), 0);
  assert_true(json_is_null(json_object_get(o, "access_token_expires_at")));
  assert_true(json_is_null(json_object_get(o, "access_token_expires_in_s")));
  assert_true(json_is_true(json_object_get(o, "access_token_expired")));
  json_decref(obj);

  /* no refresh state, or no "oauth" object: nothing added */
  obj = json_object();
  f.cred.oauth = NULL;
  assert_int_equal(lk_oauth_text_json(obj, &f.cred, NOW_MS), 0);
  assert_int_equal(json_object_size(obj), 0);
  json_decref(obj);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(span_uses_two_units_at_most),
      cmocka_unit_test(expiry_reads_in_or_expired_or_unknown),
      cmocka_unit_test(refresh_reads_each_state),
      cmocka_unit_test(summary_is_one_cell),
      cmocka_unit_test(json_adds_readable_members),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
