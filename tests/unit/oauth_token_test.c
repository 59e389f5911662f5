/*
 * oauth_token_test.c - proves lib/oauth_token's contract.
 *
 * The parser (lk_oauth_token_parse_response): which answers are accepted
 * and what comes out of them, and for every refusal the exact status and
 * message: the re-authorise class (400/401 and 2xx with invalid_grant,
 * invalid_client, unauthorized_client, unsupported_grant_type), the
 * retryable class (5xx, 429, other codes, redirects, bodies that do not
 * parse or break a rule), the size cap, and that no message quotes a
 * token or the input jansson failed on.
 *
 * The exchange (lk_oauth_token_exchange) against a real token endpoint on
 * loopback (tests/unit/token_server, libmicrohttpd): what really arrives
 * (form body, Basic credentials form-urlencoded first, public clients'
 * client_id in the body, scope with client_credentials, Content-Type and
 * Accept), rotation handed back, and the failures a real transfer has:
 * refusals, a slow endpoint past the deadline, an answer over the cap, a
 * redirect not followed, a closed port, http refused without the flag, a
 * metadata address refused before connecting, and a provider echoing the
 * refresh token back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "lib/clock.h"
#include "lib/oauth.h"
#include "lib/oauth_token.h"
#include "lib/secret.h"
#include "tests/unit/token_server.h"

/* ---- parser ------------------------------------------------------------- */

static lk_status parse_text(const char *body, long status,
                            lk_oauth_token_result *out, lk_err *err) {
  lk_err_clear(err);
  return lk_oauth_token_parse_response((const unsigned char *)body,
                                       strlen(body), status, out, err);
}

/* Parses body with status, expects failure st with exactly msg, and that
 * nothing is left in the result. */
static void expect_refused(const char *body, long status, lk_status st,
                           const char *msg) {
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(parse_text(body, status, &r, &err), st);
  assert_int_equal(err.code, st);
  assert_string_equal(err.msg, msg);
  assert_null(r.access_token);
  assert_null(r.refresh_token);
  assert_null(r.scope);
  lk_oauth_token_result_clear(&r);
}

static void accepts_a_full_answer(void **state) {
  (void)state;
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(
      parse_text("{\"access_token\":\"at-1.x~y/z+=\",\"token_type\":\"Bearer\","
                 "\"expires_in\":3600,\"refresh_token\":\"rt-2\",\"scope\":"
                 "\"read write\",\"id_token\":{\"ignored\":true}}",
                 200, &r, &err),
      LK_OK);
  assert_string_equal(lk_secret_str(r.access_token), "at-1.x~y/z+=");
  assert_string_equal(lk_secret_str(r.refresh_token), "rt-2");
  assert_int_equal(r.expires_in, 3600);
  assert_string_equal(r.scope, "read write");
  lk_oauth_token_result_clear(&r);
  assert_null(r.access_token);
  assert_int_equal(r.expires_in, -1);
}

static void accepts_a_minimal_answer_without_rotation(void **state) {
  (void)state;
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(parse_text("{\"access_token\":\"a b\"}", 201, &r, &err),
                   LK_OK);
  assert_string_equal(lk_secret_str(r.access_token), "a b");
  assert_null(r.refresh_token);
  assert_null(r.scope);
  assert_int_equal(r.expires_in, -1);
  lk_oauth_token_result_clear(&r);
  /* token_type in any case; expires_in 0 is a lifetime too. */
  assert_int_equal(parse_text("{\"access_token\":\"t\",\"token_type\":"
                              "\"bEaReR\",\"expires_in\":0}",
                              200, &r, &err),
                   LK_OK);
  assert_int_equal(r.expires_in, 0);
  lk_oauth_token_result_clear(&r);
  lk_oauth_token_result_clear(NULL);
}

static void refuses_answers_breaking_a_rule(void **state) {
  (void)state;
  const long ok = 200;
  expect_refused("{\"token_type\":\"bearer\"}", ok, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200) has no access_token");
  expect_refused("{\"access_token\":42}", ok, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): access_token is not "
                 "a string");
  expect_refused("{\"access_token\":\"\"}", ok, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): access_token is "
                 "empty");
  expect_refused("{\"access_token\":\"a\\r\\nX-Evil: 1\"}", ok, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): access_token holds "
                 "characters other than printable ASCII");
  expect_refused("{\"access_token\":\"caf\\u00e9\"}", ok, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): access_token holds "
                 "characters other than printable ASCII");
  expect_refused("{\"access_token\":\"t\",\"token_type\":\"mac\"}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): token_type \"mac\" "
                 "is not bearer, the only kind Latchkey injects");
  expect_refused("{\"access_token\":\"t\",\"token_type\":\"bearer2\"}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): token_type "
                 "\"bearer2\" is not bearer, the only kind Latchkey injects");
  expect_refused("{\"access_token\":\"t\",\"token_type\":null}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): token_type is not a "
                 "string");
  const char *bad_expiry[] = {
      "{\"access_token\":\"t\",\"expires_in\":-1}",
      "{\"access_token\":\"t\",\"expires_in\":\"3600\"}",
      "{\"access_token\":\"t\",\"expires_in\":3600.0}",
      "{\"access_token\":\"t\",\"expires_in\":true}",
  };
  for (size_t i = 0; i < sizeof(bad_expiry) / sizeof(bad_expiry[0]); i++) {
    expect_refused(bad_expiry[i], ok, LK_UNAVAILABLE,
                   "the token endpoint's answer (HTTP 200): expires_in is not "
                   "a non-negative integer");
  }
  expect_refused("{\"access_token\":\"t\",\"expires_in\":2147483648}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): expires_in is larger "
                 "than 2147483647 seconds");
  expect_refused("{\"access_token\":\"t\",\"refresh_token\":\"\"}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): refresh_token is "
                 "empty");
  expect_refused("{\"access_token\":\"t\",\"refresh_token\":[\"r\"]}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): refresh_token is not "
                 "a string");
  expect_refused("{\"access_token\":\"t\",\"scope\":[\"a\"]}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): scope is not a "
                 "string of at most 1024 bytes");
  expect_refused("{\"access_token\":\"t\",\"scope\":\"a\\tb\"}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): scope holds "
                 "characters other than printable ASCII");
  expect_refused("[{\"access_token\":\"t\"}]", ok, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200) is not a JSON "
                 "object");
  expect_refused("", ok, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200) is empty");
  expect_refused("{\"access_token\":\"a\",\"access_token\":\"b\"}", ok,
                 LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200) is not JSON (line 1, "
                 "column 34)");
}

static void tokens_over_the_length_cap_are_refused(void **state) {
  (void)state;
  size_t n = LK_OAUTH_TOKEN_MAX_TOKEN_BYTES;
  char *body = malloc(n + 64);
  assert_non_null(body);
  memcpy(body, "{\"access_token\":\"", 17);
  memset(body + 17, 'a', n);
  memcpy(body + 17 + n, "\"}", 3);
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(parse_text(body, 200, &r, &err), LK_OK);
  assert_int_equal(lk_secret_len(r.access_token), n);
  lk_oauth_token_result_clear(&r);
  memset(body + 17, 'a', n + 1);
  memcpy(body + 17 + n + 1, "\"}", 3);
  expect_refused(body, 200, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP 200): access_token is "
                 "longer than 16384 bytes");
  free(body);
}

static void an_answer_over_64_kib_is_resource_exhausted(void **state) {
  (void)state;
  size_t n = LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES + 1;
  unsigned char *body = malloc(n);
  assert_non_null(body);
  memset(body, ' ', n);
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(lk_oauth_token_parse_response(body, n, 200, &r, &err),
                   LK_RESOURCE_EXHAUSTED);
  assert_string_equal(err.msg,
                      "the token endpoint's answer (HTTP 200) is "
                      "larger than 65536 bytes");
  /* Exactly at the cap it is parsed (and is not JSON). */
  assert_int_equal(lk_oauth_token_parse_response(body, n - 1, 200, &r, &err),
                   LK_UNAVAILABLE);
  free(body);
}

static void syntax_errors_never_quote_the_input(void **state) {
  (void)state;
  lk_oauth_token_result r;
  lk_err err;
  const char *inputs[] = {
      "{\"access_token\":\"CANARY-at-0123456789",
      "{\"access_token\": CANARY-at-0123456789}",
      "CANARY-at-0123456789",
      "{\"access_token\":\"CANARY-at-0123456789\"} trailing",
      "{\"access_token\":\"CANARY\\u0000at\"}",
  };
  for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
    assert_int_equal(parse_text(inputs[i], 200, &r, &err), LK_UNAVAILABLE);
    assert_non_null(strstr(err.msg,
                           "the token endpoint's answer (HTTP 200) "
                           "is not JSON (line 1, column "));
    assert_null(strstr(err.msg, "CANARY"));
    assert_null(r.access_token);
  }
}

static void a_message_quoting_a_received_token_is_withheld(void **state) {
  (void)state;
  expect_refused(
      "{\"access_token\":\"tok-CANARY\",\"token_type\":"
      "\"tok-CANARY\"}",
      200, LK_UNAVAILABLE,
      "the token endpoint's answer (HTTP 200) is unusable (details "
      "withheld: they quoted a token)");
}

static void refusals_the_owner_must_act_on(void **state) {
  (void)state;
  expect_refused(
      "{\"error\":\"invalid_grant\",\"error_description\":\"the "
      "grant was revoked\"}",
      400, LK_FAILED_PRECONDITION,
      "the identity provider refused the grant (HTTP 400, error "
      "invalid_grant: the grant was revoked): the owner must "
      "re-authorise this credential");
  expect_refused("{\"error\":\"invalid_client\"}", 401, LK_FAILED_PRECONDITION,
                 "the identity provider refused the grant (HTTP 401, error "
                 "invalid_client): the owner must re-authorise this "
                 "credential");
  expect_refused("{\"error\":\"unauthorized_client\"}", 400,
                 LK_FAILED_PRECONDITION,
                 "the identity provider refused the grant (HTTP 400, error "
                 "unauthorized_client): the owner must re-authorise this "
                 "credential");
  expect_refused("{\"error\":\"unsupported_grant_type\"}", 400,
                 LK_FAILED_PRECONDITION,
                 "the identity provider refused the grant (HTTP 400, error "
                 "unsupported_grant_type): the owner must re-authorise this "
                 "credential");
  /* Some providers refuse with 200 and an error member. */
  expect_refused("{\"error\":\"invalid_grant\"}", 200, LK_FAILED_PRECONDITION,
                 "the identity provider refused the grant (HTTP 200, error "
                 "invalid_grant): the owner must re-authorise this "
                 "credential");
}

static void refusals_that_are_retried(void **state) {
  (void)state;
  expect_refused("{\"error\":\"temporarily_unavailable\"}", 503, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 503, error "
                 "temporarily_unavailable");
  expect_refused("", 429, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 429");
  expect_refused("<html>Bad Gateway</html>", 502, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 502");
  /* The re-authorise codes count only with 400/401 (or 2xx). */
  expect_refused("{\"error\":\"invalid_grant\"}", 500, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 500, error invalid_grant");
  expect_refused("{\"error\":\"invalid_grant\"}", 403, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 403, error invalid_grant");
  expect_refused("{\"error\":\"invalid_scope\"}", 400, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 400, error invalid_scope");
  expect_refused("{\"error\":7}", 400, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 400");
  expect_refused("", 302, LK_UNAVAILABLE,
                 "the token endpoint answered HTTP 302 (redirects are not "
                 "followed)");
}

static void provider_words_are_printable_and_truncated(void **state) {
  (void)state;
  char body[1024];
  char desc[200];
  memset(desc, 'd', sizeof(desc) - 1);
  desc[sizeof(desc) - 1] = '\0';
  snprintf(body, sizeof(body),
           "{\"error\":\"invalid_grant\\u0007\\n\",\"error_description\":"
           "\"%s\"}",
           desc);
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(parse_text(body, 400, &r, &err), LK_UNAVAILABLE);
  /* The code with control characters is not a re-authorise code. */
  char expect[512];
  char cut[121];
  memset(cut, 'd', 120);
  cut[120] = '\0';
  snprintf(expect, sizeof(expect),
           "the token endpoint answered HTTP 400, error invalid_grant??: "
           "%s...",
           cut);
  assert_string_equal(err.msg, expect);
  char code[100];
  memset(code, 'c', sizeof(code) - 1);
  code[sizeof(code) - 1] = '\0';
  snprintf(body, sizeof(body), "{\"error\":\"%s\"}", code);
  assert_int_equal(parse_text(body, 400, &r, &err), LK_UNAVAILABLE);
  char code64[65];
  memset(code64, 'c', 64);
  code64[64] = '\0';
  snprintf(expect, sizeof(expect),
           "the token endpoint answered HTTP 400, error %s...", code64);
  assert_string_equal(err.msg, expect);
}

/* ---- exchange ----------------------------------------------------------- */

typedef struct {
  token_server *ts;
  char access[TS_MAX_VALUE];
  char refresh[TS_MAX_VALUE];
  lk_secret *rt;
  lk_secret *cs;
  lk_oauth_token_request req;
} xfx;

static int x_setup(void **state) {
  xfx *f = calloc(1, sizeof(*f));
  if (f == NULL || (f->ts = ts_start()) == NULL) {
    free(f);
    return -1;
  }
  ts_seed(f->ts, f->access, f->refresh, sizeof(f->access));
  f->rt = lk_secret_from(f->refresh, strlen(f->refresh));
  f->cs = lk_secret_from(TS_CLIENT_SECRET, strlen(TS_CLIENT_SECRET));
  f->req.token_url = ts_url(f->ts);
  f->req.grant_type = LK_OAUTH_GRANT_AUTHORIZATION_CODE;
  f->req.refresh_token = f->rt;
  f->req.client_id = TS_CLIENT_ID;
  f->req.client_secret = f->cs;
  f->req.allow_insecure = 1;
  f->req.deadline_ms = lk_now_ms() + 10000;
  *state = f;
  return 0;
}

static int x_teardown(void **state) {
  xfx *f = *state;
  ts_stop(f->ts);
  lk_secret_free(f->rt);
  lk_secret_free(f->cs);
  free(f);
  return 0;
}

static ts_request last_request(xfx *f) {
  ts_request rq;
  ts_stats s = ts_get_stats(f->ts);
  assert_true(s.requests > 0);
  assert_true(ts_request_at(f->ts, s.requests - 1, &rq));
  return rq;
}

static void refresh_sends_the_form_and_basic_credentials(void **state) {
  xfx *f = *state;
  lk_oauth_token_result r;
  lk_err err;
  long http = 0;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, &http, &err), LK_OK);
  assert_int_equal(http, 200);
  char now[TS_MAX_VALUE];
  ts_current_access(f->ts, now, sizeof(now));
  assert_string_equal(lk_secret_str(r.access_token), now);
  assert_string_not_equal(now, f->access);
  assert_non_null(r.refresh_token); /* rotated */
  assert_string_not_equal(lk_secret_str(r.refresh_token), f->refresh);
  assert_int_equal(r.expires_in, 3600);
  ts_request rq = last_request(f);
  assert_int_equal(rq.status, 200);
  assert_string_equal(rq.grant_type, "refresh_token");
  assert_string_equal(rq.refresh_token, f->refresh);
  assert_string_equal(rq.content_type, "application/x-www-form-urlencoded");
  assert_string_equal(rq.accept, "application/json");
  /* RFC 6749 §2.3.1: both parts form-urlencoded, then Basic. */
  assert_string_equal(rq.body_client_id, "");
  assert_string_equal(rq.body_client_secret, "");
  char raw[256];
  snprintf(raw, sizeof(raw), "%s",
           "latchkey-test%20client%3A1:cs-s3cr3t%2F%2B%26%3D%25");
  char b64[512];
  sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)raw, strlen(raw),
                    sodium_base64_VARIANT_ORIGINAL);
  char want[600];
  snprintf(want, sizeof(want), "Basic %s", b64);
  assert_string_equal(rq.authorization, want);
  char body[512];
  snprintf(body, sizeof(body), "grant_type=refresh_token&refresh_token=%s",
           f->refresh);
  assert_string_equal(rq.raw_body, body);
  lk_oauth_token_result_clear(&r);
  /* The old refresh token is retired now: sending it again is reuse. */
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, &http, &err),
                   LK_FAILED_PRECONDITION);
  assert_int_equal(ts_get_stats(f->ts).reuse, 1);
  lk_oauth_token_result_clear(&r);
}

static void a_public_client_sends_client_id_in_the_body(void **state) {
  xfx *f = *state;
  lk_oauth_token_result r;
  lk_err err;
  ts_set_client(f->ts, "public app", NULL);
  f->req.client_id = "public app";
  f->req.client_secret = NULL;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err), LK_OK);
  ts_request rq = last_request(f);
  assert_string_equal(rq.authorization, "");
  assert_string_equal(rq.body_client_id, "public app");
  char body[512];
  snprintf(body, sizeof(body),
           "grant_type=refresh_token&refresh_token=%s&client_id=public%%20app",
           f->refresh);
  assert_string_equal(rq.raw_body, body);
  lk_oauth_token_result_clear(&r);
}

static void client_credentials_sends_scope(void **state) {
  xfx *f = *state;
  lk_oauth_token_result r;
  lk_err err;
  f->req.grant_type = LK_OAUTH_GRANT_CLIENT_CREDENTIALS;
  f->req.refresh_token = NULL;
  f->req.scope = "read:all write";
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err), LK_OK);
  ts_request rq = last_request(f);
  assert_string_equal(rq.raw_body,
                      "grant_type=client_credentials&scope=read%3Aall%20write");
  assert_string_equal(rq.scope, "read:all write");
  assert_null(r.refresh_token);
  assert_string_equal(r.scope, "read:all write");
  lk_oauth_token_result_clear(&r);
}

static void refusals_come_back_classified(void **state) {
  xfx *f = *state;
  lk_oauth_token_result r;
  lk_err err;
  long http = 0;
  ts_set_mode(f->ts, TS_INVALID_GRANT);
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, &http, &err),
                   LK_FAILED_PRECONDITION);
  assert_int_equal(http, 400);
  assert_string_equal(err.msg,
                      "the identity provider refused the grant (HTTP 400, "
                      "error invalid_grant: the grant was revoked): the owner "
                      "must re-authorise this credential");
  ts_set_mode(f->ts, TS_FAIL);
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, &http, &err),
                   LK_UNAVAILABLE);
  assert_int_equal(http, 503);
  assert_string_equal(err.msg,
                      "the token endpoint answered HTTP 503, error "
                      "temporarily_unavailable");
  /* A wrong client secret: invalid_client. */
  ts_set_mode(f->ts, TS_OK);
  lk_secret *wrong = lk_secret_from("nope", 4);
  f->req.client_secret = wrong;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, &http, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "the identity provider refused the grant (HTTP 401, "
                      "error invalid_client): the owner must re-authorise "
                      "this credential");
  lk_secret_free(wrong);
  assert_null(r.access_token);
}

static void an_echoed_refresh_token_is_withheld(void **state) {
  xfx *f = *state;
  char body[512];
  snprintf(body, sizeof(body),
           "{\"error\":\"invalid_grant\",\"error_description\":\"token %s is "
           "revoked\"}",
           f->refresh);
  ts_set_canned(f->ts, 400, body, strlen(body));
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "the identity provider refused the grant (HTTP 400, its "
                      "error text withheld: it quoted a credential): the "
                      "owner must re-authorise this credential");
  assert_null(strstr(err.msg, f->refresh));
}

/* A long token echoed in part (the provider's text is cut short, or it
 * quotes a fragment) is withheld too: any 12 bytes of it are a leak. */
static void a_fragment_of_the_refresh_token_is_withheld(void **state) {
  xfx *f = *state;
  char body[512];
  assert_true(strlen(f->refresh) >= 20);
  snprintf(body, sizeof(body),
           "{\"error\":\"invalid_request\",\"error_description\":\"malformed "
           "token near '%.14s'\"}",
           f->refresh + 4);
  ts_set_canned(f->ts, 400, body, strlen(body));
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_UNAVAILABLE);
  assert_non_null(strstr(err.msg, "withheld: it quoted a credential"));
  char frag[16];
  snprintf(frag, sizeof(frag), "%.12s", f->refresh + 4);
  assert_null(strstr(err.msg, frag));
}

static void an_answer_over_the_cap_stops_the_transfer(void **state) {
  xfx *f = *state;
  size_t n = LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES + 4096;
  char *big = malloc(n);
  assert_non_null(big);
  memset(big, ' ', n);
  big[0] = '{';
  big[n - 1] = '}';
  ts_set_canned(f->ts, 200, big, n);
  free(big);
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_RESOURCE_EXHAUSTED);
  assert_string_equal(err.msg,
                      "the token endpoint's answer is larger than 65536 bytes");
}

static void a_redirect_is_not_followed(void **state) {
  xfx *f = *state;
  ts_set_canned(f->ts, 302, "", 0);
  lk_oauth_token_result r;
  lk_err err;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_UNAVAILABLE);
  assert_string_equal(err.msg,
                      "the token endpoint answered HTTP 302 "
                      "(redirects are not followed)");
  assert_int_equal(ts_get_stats(f->ts).requests, 1);
}

static void a_slow_endpoint_ends_at_the_deadline(void **state) {
  xfx *f = *state;
  ts_set_delay_ms(f->ts, 3000);
  f->req.deadline_ms = lk_now_ms() + 400;
  lk_oauth_token_result r;
  lk_err err;
  int64_t t0 = lk_now_ms();
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_UNAVAILABLE);
  int64_t took = lk_now_ms() - t0;
  assert_true(took < 2500);
  assert_non_null(strstr(err.msg, "the token endpoint did not answer within "));
  /* No time left: nothing is sent. */
  f->req.deadline_ms = lk_now_ms() - 1;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_UNAVAILABLE);
  assert_string_equal(err.msg, "no time was left to ask the token endpoint");
}

static void unreachable_and_refused_destinations(void **state) {
  xfx *f = *state;
  lk_oauth_token_result r;
  lk_err err;
  /* http without the flag: refused before anything is sent. */
  f->req.allow_insecure = 0;
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "token_url must be an https:// URL (http:// only when "
                      "the control plane runs with "
                      "--allow-insecure-token-urls, for loopback tests)");
  assert_int_equal(ts_get_stats(f->ts).requests, 0);
  f->req.allow_insecure = 1;
  /* With the flag, http still only to a loopback host: the refresh token
   * and client secret would cross the network in clear. */
  static const char *const off_host[] = {
      "http://idp.example/token", "http://10.0.0.7:8080/token",
      "http://127.0.0.1.evil.example/token", "http://127.0.0.1@evil.example/",
      "http://127.0.0.1:80x/token"};
  for (size_t i = 0; i < sizeof(off_host) / sizeof(off_host[0]); i++) {
    f->req.token_url = off_host[i];
    assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                     LK_FAILED_PRECONDITION);
    assert_string_equal(err.msg,
                        "token_url: http:// is allowed only to a loopback "
                        "host (127.0.0.1, localhost, [::1]); use https://");
  }
  assert_int_equal(ts_get_stats(f->ts).requests, 0);
  /* The cloud metadata address: refused at connect time. */
  f->req.token_url = "https://169.254.169.254/token";
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "token_url resolves to 169.254.169.254, a link-local, "
                      "metadata, multicast or unspecified address, which a "
                      "token request never goes to");
  f->req.token_url = "https://[::ffff:169.254.169.254]:443/token";
  assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  /* Other clouds' metadata services, and the metadata address via NAT64. */
  /* (AWS's fd00:ec2::254 is on the list too, but a host without IPv6
   * routes fails it before any socket is opened, so it is not asserted.) */
  static const char *const metadata[] = {"https://100.100.100.200/token",
                                         "https://[64:ff9b::a9fe:a9fe]/token"};
  for (size_t i = 0; i < sizeof(metadata) / sizeof(metadata[0]); i++) {
    f->req.token_url = metadata[i];
    lk_status st = lk_oauth_token_exchange(&f->req, &r, NULL, &err);
    if (st != LK_FAILED_PRECONDITION) {
      fail_msg("%s: %s (%s)", metadata[i], err.msg, lk_status_name(st));
    }
    assert_non_null(strstr(err.msg,
                           "a link-local, metadata, multicast or "
                           "unspecified address"));
  }
  /* A closed port. */
  char url[64];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/token", ts_port(f->ts));
  ts_stop(f->ts);
  f->ts = ts_start();
  assert_non_null(f->ts);
  f->req.token_url = url;
  if (ts_port(f->ts) != atoi(strrchr(url, ':') + 1)) {
    assert_int_equal(lk_oauth_token_exchange(&f->req, &r, NULL, &err),
                     LK_UNAVAILABLE);
    assert_non_null(
        strstr(err.msg, "the token endpoint could not be reached ("));
  }
}

static void malformed_requests_are_refused_unsent(void **state) {
  xfx *f = *state;
  lk_oauth_token_result r;
  lk_err err;
  lk_oauth_token_request q = f->req;
  q.refresh_token = NULL;
  assert_int_equal(lk_oauth_token_exchange(&q, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "the credential has no refresh_token: the owner "
                      "must re-authorise this credential");
  q = f->req;
  q.client_id = "";
  assert_int_equal(lk_oauth_token_exchange(&q, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "the credential's client_id is missing, or not "
                      "printable ASCII of at most 1024 bytes");
  q = f->req;
  q.grant_type = "password";
  assert_int_equal(lk_oauth_token_exchange(&q, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "the credential's grant_type must be "
                      "authorization_code or client_credentials");
  q = f->req;
  q.token_url = "";
  assert_int_equal(lk_oauth_token_exchange(&q, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "the credential has no token_url: the owner must set it");
  q.token_url = "https://idp.example/to ken";
  assert_int_equal(lk_oauth_token_exchange(&q, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(
      err.msg, "token_url holds a space, control or non-ASCII character");
  q.token_url = "https:///token";
  assert_int_equal(lk_oauth_token_exchange(&q, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg, "token_url names no host");
  q.token_url = "ftp://idp.example/token";
  assert_int_equal(lk_oauth_token_exchange(&q, &r, NULL, &err),
                   LK_FAILED_PRECONDITION);
  assert_int_equal(ts_get_stats(f->ts).requests, 0);
}

static int group_setup(void **state) {
  (void)state;
  lk_err err;
  if (lk_secret_init() != LK_OK || lk_oauth_token_global_init(&err) != LK_OK)
    return -1;
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(accepts_a_full_answer),
      cmocka_unit_test(accepts_a_minimal_answer_without_rotation),
      cmocka_unit_test(refuses_answers_breaking_a_rule),
      cmocka_unit_test(tokens_over_the_length_cap_are_refused),
      cmocka_unit_test(an_answer_over_64_kib_is_resource_exhausted),
      cmocka_unit_test(syntax_errors_never_quote_the_input),
      cmocka_unit_test(a_message_quoting_a_received_token_is_withheld),
      cmocka_unit_test(refusals_the_owner_must_act_on),
      cmocka_unit_test(refusals_that_are_retried),
      cmocka_unit_test(provider_words_are_printable_and_truncated),
      cmocka_unit_test_setup_teardown(
          refresh_sends_the_form_and_basic_credentials, x_setup, x_teardown),
      cmocka_unit_test_setup_teardown(
          a_public_client_sends_client_id_in_the_body, x_setup, x_teardown),
      cmocka_unit_test_setup_teardown(client_credentials_sends_scope, x_setup,
                                      x_teardown),
      cmocka_unit_test_setup_teardown(refusals_come_back_classified, x_setup,
                                      x_teardown),
      cmocka_unit_test_setup_teardown(
          a_fragment_of_the_refresh_token_is_withheld, x_setup, x_teardown),
      cmocka_unit_test_setup_teardown(an_echoed_refresh_token_is_withheld,
                                      x_setup, x_teardown),
      cmocka_unit_test_setup_teardown(an_answer_over_the_cap_stops_the_transfer,
                                      x_setup, x_teardown),
      cmocka_unit_test_setup_teardown(a_redirect_is_not_followed, x_setup,
                                      x_teardown),
      cmocka_unit_test_setup_teardown(a_slow_endpoint_ends_at_the_deadline,
                                      x_setup, x_teardown),
      cmocka_unit_test_setup_teardown(unreachable_and_refused_destinations,
                                      x_setup, x_teardown),
      cmocka_unit_test_setup_teardown(malformed_requests_are_refused_unsent,
                                      x_setup, x_teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
