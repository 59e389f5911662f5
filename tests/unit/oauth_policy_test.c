/*
 * oauth_policy_test.c - proves lib/oauth_policy, the refresh policy both
 * OAuth refreshers apply, on its own: the due rule, the backoff, which
 * on-demand requests are refused and how, the OAuthState an outcome
 * leads to, the record an outcome becomes (sealed with a real node key
 * and opened again, so the ciphertext really holds the new token and
 * nothing else changed), the result labels and the audit line (read back
 * from stderr as JSON: hashes, never a value).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "lib/audit.h"
#include "lib/oauth.h"
#include "lib/oauth_policy.h"
#include "lib/oauth_token.h"
#include "lib/seal.h"
#include "lib/secret.h"

#define NEW_AT "at-2-new-access-token-value"
#define NEW_RT "rt-2-new-refresh-token-value"
#define OLD_RT "rt-1-old-refresh-token-value"
#define CS "client-secret-value-xyz"
#define NOW 1700000000000LL

static lk_seal_key *g_key;
static char g_dir[512];

static int group_setup(void **state) {
  (void)state;
  lk_err err;
  char path[600];
  const char *base = getenv("TEST_TMPDIR");
  snprintf(g_dir, sizeof(g_dir), "%s/oauth_policy_test.XXXXXX",
           base ? base : "/tmp");
  if (mkdtemp(g_dir) == NULL || lk_secret_init() != LK_OK) {
    return -1;
  }
  snprintf(path, sizeof(path), "%s/node.key", g_dir);
  return lk_seal_key_load_or_create(path, &g_key, &err) == LK_OK ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  char path[600];
  lk_seal_key_destroy(g_key);
  snprintf(path, sizeof(path), "%s/node.key", g_dir);
  unlink(path);
  rmdir(g_dir);
  return 0;
}

/* ---- a credential as the Admin service stores one ----------------------- */

typedef struct {
  Latchkey__V1__Credential c;
  Latchkey__V1__OAuthState o;
  Latchkey__V1__FieldValue f[8];
  Latchkey__V1__FieldValue *fp[8];
  Latchkey__V1__SealedValue sv[8];
  unsigned char nonce[8][LK_SEAL_NONCE_BYTES];
  unsigned char *ct[8];
} cred_fx;

static void plain(cred_fx *x, const char *name, const char *value) {
  size_t i = x->c.n_fields++;
  latchkey__v1__field_value__init(&x->f[i]);
  x->f[i].name = (char *)name;
  x->f[i].value = (char *)value;
  x->fp[i] = &x->f[i];
}

static void secret(cred_fx *x, const char *name, const char *value) {
  lk_err err;
  size_t i = x->c.n_fields++;
  size_t ct_len = 0;
  latchkey__v1__field_value__init(&x->f[i]);
  latchkey__v1__sealed_value__init(&x->sv[i]);
  assert_int_equal(
      lk_seal(g_key, x->c.id, name, (const unsigned char *)value, strlen(value),
              x->nonce[i], &x->ct[i], &ct_len, &err),
      LK_OK);
  x->sv[i].key_id = lk_seal_key_id(g_key);
  x->sv[i].nonce.data = x->nonce[i];
  x->sv[i].nonce.len = LK_SEAL_NONCE_BYTES;
  x->sv[i].ciphertext.data = x->ct[i];
  x->sv[i].ciphertext.len = ct_len;
  x->f[i].name = (char *)name;
  x->f[i].secret = 1;
  x->f[i].sealed = &x->sv[i];
  x->fp[i] = &x->f[i];
}

/* An oauth2 credential at generation 3, version 7, with or without an
 * access token field. */
static void cred_init(cred_fx *x, int with_access_token) {
  memset(x, 0, sizeof(*x));
  latchkey__v1__credential__init(&x->c);
  latchkey__v1__oauth_state__init(&x->o);
  x->c.id = (char *)"cred-1";
  x->c.type = (char *)"idp";
  x->c.label = (char *)"label";
  x->c.version = 7;
  x->c.created_at = 1000;
  x->c.updated_at = 2000;
  x->c.fields = x->fp;
  x->o.generation = 3;
  x->o.last_success_at = NOW - 3600000;
  x->o.last_refresh_result = (char *)"ok";
  x->c.oauth = &x->o;
  if (with_access_token) {
    secret(x, LK_OAUTH_ACCESS_TOKEN, "at-1-old-access-token-value");
  }
  secret(x, LK_OAUTH_REFRESH_TOKEN, OLD_RT);
  plain(x, LK_OAUTH_EXPIRES_AT, "1700000100");
  plain(x, LK_OAUTH_TOKEN_URL, "https://idp.example/token");
  plain(x, LK_OAUTH_CLIENT_ID, "client-1");
  secret(x, LK_OAUTH_CLIENT_SECRET, CS);
  plain(x, LK_OAUTH_GRANT_TYPE, LK_OAUTH_GRANT_AUTHORIZATION_CODE);
}

static void cred_free(cred_fx *x) {
  for (size_t i = 0; i < 8; i++) {
    free(x->ct[i]);
  }
}

static const Latchkey__V1__FieldValue *field(const Latchkey__V1__Credential *c,
                                             const char *name) {
  const Latchkey__V1__FieldValue *found = NULL;
  for (size_t i = 0; i < c->n_fields; i++) {
    if (strcmp(c->fields[i]->name, name) == 0) {
      assert_null(found); /* each name once */
      found = c->fields[i];
    }
  }
  return found;
}

/* Opens sealed field name of c and compares it with want. */
static void assert_sealed(const Latchkey__V1__Credential *c, const char *name,
                          const char *want) {
  lk_err err;
  lk_secret *pt = NULL;
  const Latchkey__V1__FieldValue *f = field(c, name);
  assert_non_null(f);
  assert_true(f->secret);
  assert_true(f->value == NULL || f->value[0] == '\0');
  assert_non_null(f->sealed);
  assert_int_equal(f->sealed->key_id, lk_seal_key_id(g_key));
  assert_int_equal(
      lk_unseal(g_key, f->sealed->key_id, c->id, name, f->sealed->nonce.data,
                f->sealed->nonce.len, f->sealed->ciphertext.data,
                f->sealed->ciphertext.len, &pt, &err),
      LK_OK);
  assert_int_equal(lk_secret_len(pt), strlen(want));
  assert_memory_equal(lk_secret_data(pt), want, strlen(want));
  lk_secret_free(pt);
}

/* lk_oauth_policy_seal_fn over the node key; counts its calls. */
static int g_seals;
static lk_status node_seal(void *ctx, const char *cred_id, const char *name,
                           const unsigned char *pt, size_t len,
                           uint32_t *key_id,
                           unsigned char nonce[LK_SEAL_NONCE_BYTES],
                           unsigned char **ct, size_t *ct_len, lk_err *err) {
  (void)ctx;
  g_seals++;
  *key_id = lk_seal_key_id(g_key);
  return lk_seal(g_key, cred_id, name, pt, len, nonce, ct, ct_len, err);
}

static lk_status failing_seal(void *ctx, const char *cred_id, const char *name,
                              const unsigned char *pt, size_t len,
                              uint32_t *key_id,
                              unsigned char nonce[LK_SEAL_NONCE_BYTES],
                              unsigned char **ct, size_t *ct_len, lk_err *err) {
  (void)ctx;
  (void)cred_id;
  (void)pt;
  (void)len;
  (void)key_id;
  (void)nonce;
  (void)ct;
  (void)ct_len;
  return lk_fail(err, LK_UNAVAILABLE, "sealing %s refused", name);
}

/* lk_oauth_policy_keep_fn: re-seals client_secret only; counts calls. */
static int g_keeps;
static lk_status reseal_client_secret(void *ctx, const char *cred_id,
                                      const Latchkey__V1__FieldValue *f,
                                      int *changed, uint32_t *key_id,
                                      unsigned char nonce[LK_SEAL_NONCE_BYTES],
                                      unsigned char **ct, size_t *ct_len,
                                      lk_err *err) {
  g_keeps++;
  *changed = 0;
  if (strcmp(f->name, LK_OAUTH_CLIENT_SECRET) != 0) {
    return LK_OK;
  }
  *changed = 1;
  return node_seal(ctx, cred_id, f->name, (const unsigned char *)CS, strlen(CS),
                   key_id, nonce, ct, ct_len, err);
}

/* A successful answer: new access token, rotated refresh token when
 * rotate, expires_in as given (-1: none). */
static void answer(lk_oauth_token_result *res, int rotate, int64_t expires_in) {
  memset(res, 0, sizeof(*res));
  res->access_token = lk_secret_from(NEW_AT, strlen(NEW_AT));
  res->refresh_token = rotate ? lk_secret_from(NEW_RT, strlen(NEW_RT)) : NULL;
  res->expires_in = expires_in;
}

/* ---- the due rule, the backoff ----------------------------------------- */

static void due_rule(void **state) {
  (void)state;
  Latchkey__V1__FieldValue exp = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue *fields[1] = {&exp};
  Latchkey__V1__OAuthState o = LATCHKEY__V1__OAUTH_STATE__INIT;
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  const int64_t m = 300000;
  exp.name = (char *)LK_OAUTH_EXPIRES_AT;
  exp.value = (char *)"1000000";
  c.n_fields = 1;
  c.fields = fields;
  assert_int_equal(lk_oauth_policy_due_at(NULL, m), INT64_MAX);
  assert_int_equal(lk_oauth_policy_due_at(&c, m), INT64_MAX); /* no oauth */
  c.oauth = &o;
  /* Lifetime unknown: the margin. */
  assert_int_equal(lk_oauth_policy_due_at(&c, m), 1000000000LL - m);
  /* Lifetime 200 s: half of it is less than the margin. */
  o.last_success_at = 1000000000LL - 200000;
  assert_int_equal(lk_oauth_policy_due_at(&c, m), 1000000000LL - 100000);
  /* Lifetime 2000 s: the margin. */
  o.last_success_at = 1000000000LL - 2000000;
  assert_int_equal(lk_oauth_policy_due_at(&c, m), 1000000000LL - m);
  /* Backoff: not before next_attempt_at. */
  o.next_attempt_at = 1000000000LL + 5;
  assert_int_equal(lk_oauth_policy_due_at(&c, m), 1000000000LL + 5);
  o.next_attempt_at = 0;
  /* expires_in 0: at least LK_OAUTH_POLICY_MIN_INTERVAL_MS apart. */
  o.last_success_at = 1000000000LL;
  assert_int_equal(lk_oauth_policy_due_at(&c, m),
                   1000000000LL + LK_OAUTH_POLICY_MIN_INTERVAL_MS);
  /* Unknown expiry: at once. */
  o.last_success_at = 0;
  exp.value = (char *)"";
  assert_int_equal(lk_oauth_policy_due_at(&c, m), 0);
  exp.value = (char *)"0";
  assert_int_equal(lk_oauth_policy_due_at(&c, m), 0);
  exp.value = (char *)"soon";
  assert_int_equal(lk_oauth_policy_due_at(&c, m), 0);
  /* Re-authorisation pending: never by itself. */
  o.reauthorize = 1;
  assert_int_equal(lk_oauth_policy_due_at(&c, m), INT64_MAX);
}

static void backoff_doubles_up_to_the_cap(void **state) {
  (void)state;
  assert_int_equal(lk_oauth_policy_backoff_ms(1, 300000), 1000);
  assert_int_equal(lk_oauth_policy_backoff_ms(2, 300000), 2000);
  assert_int_equal(lk_oauth_policy_backoff_ms(3, 300000), 4000);
  assert_int_equal(lk_oauth_policy_backoff_ms(9, 300000), 256000);
  assert_int_equal(lk_oauth_policy_backoff_ms(10, 300000), 300000);
  assert_int_equal(lk_oauth_policy_backoff_ms(4000000000u, 300000), 300000);
  assert_int_equal(lk_oauth_policy_backoff_ms(2, 1500), 1500);
  assert_int_equal(lk_oauth_policy_backoff_ms(1, 500), 500);
}

/* ---- on-demand requests ------------------------------------------------- */

static void on_demand_requests_are_checked(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  int already = 7;
  cred_init(&x, 1);
  /* Refused generation 3, still at 3: attempt now. */
  assert_int_equal(lk_oauth_policy_check_request(&x.c, 3, NOW, &already, &err),
                   LK_OK);
  assert_int_equal(already, 0);
  /* Refused generation 2, already at 3: nothing to do. */
  assert_int_equal(lk_oauth_policy_check_request(&x.c, 2, NOW, &already, &err),
                   LK_OK);
  assert_int_equal(already, 1);
  /* Backing off: UNAVAILABLE, saying when. */
  x.o.failures = 2;
  x.o.next_attempt_at = NOW + 4500;
  x.o.last_refresh_result = (char *)"token endpoint answered 503";
  assert_int_equal(lk_oauth_policy_check_request(&x.c, 3, NOW, &already, &err),
                   LK_UNAVAILABLE);
  assert_string_equal(err.msg,
                      "refreshing credential cred-1 keeps failing (token "
                      "endpoint answered 503); the next attempt is in 5 s");
  /* The backoff is over: attempt. */
  assert_int_equal(
      lk_oauth_policy_check_request(&x.c, 3, NOW + 4500, &already, &err),
      LK_OK);
  assert_int_equal(already, 0);
  /* The owner must act. */
  x.o.reauthorize = 1;
  x.o.last_refresh_result = (char *)"invalid_grant";
  assert_int_equal(lk_oauth_policy_check_request(&x.c, 3, NOW, &already, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "credential cred-1 must be re-authorised by its owner "
                      "(the last refresh said: invalid_grant)");
  /* Not oauth2. */
  x.c.oauth = NULL;
  assert_int_equal(lk_oauth_policy_check_request(&x.c, 3, NOW, &already, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "credential cred-1 is not an oauth2 credential: nothing "
                      "to refresh");
  cred_free(&x);
}

static void should_attempt_follows_the_request_or_the_schedule(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  int go = 7;
  cred_init(&x, 1);
  int64_t due = lk_oauth_policy_due_at(&x.c, 60000);
  /* By schedule: only once due. */
  assert_int_equal(
      lk_oauth_policy_should_attempt(&x.c, 0, 0, due - 1, 60000, &go, &err),
      LK_OK);
  assert_int_equal(go, 0);
  assert_int_equal(
      lk_oauth_policy_should_attempt(&x.c, 0, 0, due, 60000, &go, &err), LK_OK);
  assert_int_equal(go, 1);
  /* On demand: whenever the generation refused is still stored. */
  assert_int_equal(
      lk_oauth_policy_should_attempt(&x.c, 1, 3, due - 1, 60000, &go, &err),
      LK_OK);
  assert_int_equal(go, 1);
  assert_int_equal(
      lk_oauth_policy_should_attempt(&x.c, 1, 2, due, 60000, &go, &err), LK_OK);
  assert_int_equal(go, 0);
  x.o.reauthorize = 1;
  x.o.last_refresh_result = (char *)"invalid_grant";
  assert_int_equal(
      lk_oauth_policy_should_attempt(&x.c, 1, 3, due, 60000, &go, &err),
      LK_FAILED_PRECONDITION);
  assert_int_equal(go, 0);
  /* Not oauth2: refused either way, with the refreshers' message. */
  x.c.oauth = NULL;
  assert_int_equal(
      lk_oauth_policy_should_attempt(&x.c, 0, 0, due, 60000, &go, &err),
      LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg, "credential cred-1 is not an oauth2 credential");
  cred_free(&x);
}

static void defaults_fill_only_unset_settings(void **state) {
  (void)state;
  int64_t margin = 0;
  int64_t retry = -5;
  int64_t timeout = 2500;
  lk_oauth_policy_defaults(&margin, &retry, &timeout);
  assert_int_equal(margin, LK_OAUTH_POLICY_DEFAULT_MARGIN_MS);
  assert_int_equal(retry, LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS);
  assert_int_equal(timeout, 2500);
  margin = 10;
  retry = 20;
  timeout = 0;
  lk_oauth_policy_defaults(&margin, &retry, &timeout);
  assert_int_equal(margin, 10);
  assert_int_equal(retry, 20);
  assert_int_equal(timeout, LK_OAUTH_POLICY_TOKEN_TIMEOUT_MS);
}

static void attempt_errors_say_who_retries(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  lk_oauth_policy_attempt a;
  cred_init(&x, 1);
  memset(&a, 0, sizeof(a));
  lk_err_clear(&err);
  a.out.status = LK_OK;
  assert_int_equal(lk_oauth_policy_attempt_error(&x.c, &a, "latchkeyd", &err),
                   LK_OK);
  assert_string_equal(err.msg, "");
  a.out.status = LK_UNAVAILABLE;
  snprintf(a.err.msg, sizeof(a.err.msg), "token endpoint answered 503");
  assert_int_equal(
      lk_oauth_policy_attempt_error(&x.c, &a, "the control plane", &err),
      LK_UNAVAILABLE);
  assert_string_equal(err.msg,
                      "refreshing credential cred-1 failed (token endpoint "
                      "answered 503); the control plane retries with backoff");
  a.out.status = LK_FAILED_PRECONDITION;
  snprintf(a.err.msg, sizeof(a.err.msg), "invalid_grant");
  assert_int_equal(lk_oauth_policy_attempt_error(&x.c, &a, "latchkeyd", &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "credential cred-1 must be re-authorised by its owner "
                      "(the refresh said: invalid_grant)");
  cred_free(&x);
}

static void token_request_comes_from_the_plain_fields(void **state) {
  (void)state;
  cred_fx x;
  lk_oauth_token_request req;
  lk_secret *rt = lk_secret_from(OLD_RT, strlen(OLD_RT));
  cred_init(&x, 1);
  plain(&x, LK_OAUTH_SCOPE, "read write");
  lk_oauth_policy_token_request(&x.c, rt, NULL, 1, 12345, &req);
  assert_string_equal(req.token_url, "https://idp.example/token");
  assert_string_equal(req.grant_type, LK_OAUTH_GRANT_AUTHORIZATION_CODE);
  assert_string_equal(req.client_id, "client-1");
  assert_string_equal(req.scope, "read write");
  assert_ptr_equal(req.refresh_token, rt);
  assert_null(req.client_secret);
  assert_int_equal(req.allow_insecure, 1);
  assert_int_equal(req.deadline_ms, 12345);
  assert_null(req.cancelled);
  lk_secret_free(rt);
  cred_free(&x);
}

/* ---- the next OAuthState ------------------------------------------------ */

static void success_starts_the_next_generation(void **state) {
  (void)state;
  cred_fx x;
  lk_oauth_token_result res;
  Latchkey__V1__OAuthState s;
  char reason[LK_OAUTH_POLICY_MAX_RESULT_BYTES + 1];
  cred_init(&x, 1);
  x.o.failures = 4;
  x.o.next_attempt_at = NOW - 5;
  answer(&res, 1, 60);
  lk_oauth_policy_outcome o = {LK_OK, &res, NULL, NOW, 300000};
  lk_oauth_policy_next_state(&x.o, &o, &s, reason);
  assert_int_equal(s.generation, 4);
  assert_int_equal(s.last_refresh_at, NOW);
  assert_string_equal(s.last_refresh_result, "ok");
  assert_int_equal(s.failures, 0);
  assert_int_equal(s.next_attempt_at, 0);
  assert_false(s.reauthorize);
  assert_int_equal(s.last_success_at, NOW);
  assert_int_equal(lk_oauth_policy_expires_at_s(&o), NOW / 1000 + 60);
  /* No expires_in in the answer: the default lifetime. */
  res.expires_in = -1;
  assert_int_equal(lk_oauth_policy_expires_at_s(&o),
                   NOW / 1000 + LK_OAUTH_POLICY_DEFAULT_LIFETIME_S);
  lk_oauth_token_result_clear(&res);
  cred_free(&x);
}

static void failure_backs_off_or_waits_for_the_owner(void **state) {
  (void)state;
  cred_fx x;
  Latchkey__V1__OAuthState s;
  char reason[LK_OAUTH_POLICY_MAX_RESULT_BYTES + 1];
  char long_reason[1000];
  cred_init(&x, 1);
  x.o.failures = 2;
  lk_oauth_policy_outcome o = {LK_UNAVAILABLE, NULL, "token endpoint 503", NOW,
                               300000};
  lk_oauth_policy_next_state(&x.o, &o, &s, reason);
  assert_int_equal(s.generation, 3);
  assert_int_equal(s.failures, 3);
  assert_string_equal(s.last_refresh_result, "token endpoint 503");
  assert_int_equal(s.last_refresh_at, NOW);
  assert_int_equal(s.last_success_at, x.o.last_success_at);
  assert_false(s.reauthorize);
  assert_int_equal(s.next_attempt_at, NOW + 4000);
  /* The cap. */
  o.retry_max_ms = 3000;
  lk_oauth_policy_next_state(&x.o, &o, &s, reason);
  assert_int_equal(s.next_attempt_at, NOW + 3000);
  /* A refused grant: no next attempt, the owner must act. */
  o.status = LK_FAILED_PRECONDITION;
  o.reason = "invalid_grant";
  lk_oauth_policy_next_state(&x.o, &o, &s, reason);
  assert_true(s.reauthorize);
  assert_int_equal(s.next_attempt_at, 0);
  assert_int_equal(s.failures, 3);
  /* The reason is cut. */
  memset(long_reason, 'r', sizeof(long_reason) - 1);
  long_reason[sizeof(long_reason) - 1] = '\0';
  o.reason = long_reason;
  lk_oauth_policy_next_state(&x.o, &o, &s, reason);
  assert_int_equal(strlen(s.last_refresh_result),
                   LK_OAUTH_POLICY_MAX_RESULT_BYTES);
  /* Failures saturate; a credential without a record starts one. */
  x.o.failures = UINT32_MAX;
  lk_oauth_policy_next_state(&x.o, &o, &s, reason);
  assert_int_equal(s.failures, UINT32_MAX);
  lk_oauth_policy_next_state(NULL, &o, &s, reason);
  assert_int_equal(s.failures, 1);
  cred_free(&x);
}

/* ---- the record ---------------------------------------------------------- */

static void success_record_seals_the_new_tokens(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  lk_oauth_token_result res;
  lk_oauth_policy_record *rec = NULL;
  lk_oauth_policy_sealer sealer = {node_seal, NULL, NULL};
  cred_init(&x, 1);
  answer(&res, 1, 120);
  lk_oauth_policy_outcome o = {LK_OK, &res, NULL, NOW, 300000};
  g_seals = 0;
  assert_int_equal(lk_oauth_policy_record_new(&x.c, &o, &sealer, &rec, &err),
                   LK_OK);
  const Latchkey__V1__Credential *c = lk_oauth_policy_record_credential(rec);
  assert_int_equal(g_seals, 2);
  assert_int_equal(c->n_fields, x.c.n_fields);
  assert_sealed(c, LK_OAUTH_ACCESS_TOKEN, NEW_AT);
  assert_sealed(c, LK_OAUTH_REFRESH_TOKEN, NEW_RT);
  assert_sealed(c, LK_OAUTH_CLIENT_SECRET, CS);
  /* Kept values are the very ones read. */
  assert_ptr_equal(field(c, LK_OAUTH_CLIENT_SECRET), &x.f[5]);
  assert_ptr_equal(field(c, LK_OAUTH_TOKEN_URL), &x.f[3]);
  char want[32];
  snprintf(want, sizeof(want), "%lld", NOW / 1000 + 120);
  assert_string_equal(field(c, LK_OAUTH_EXPIRES_AT)->value, want);
  assert_false(field(c, LK_OAUTH_EXPIRES_AT)->secret);
  assert_int_equal(c->version, 8);
  assert_int_equal(c->updated_at, NOW);
  assert_int_equal(c->created_at, 1000);
  assert_string_equal(c->id, "cred-1");
  assert_string_equal(c->label, "label");
  assert_int_equal(c->oauth->generation, 4);
  assert_int_equal(c->oauth->last_success_at, NOW);
  /* The input is untouched. */
  assert_int_equal(x.c.version, 7);
  assert_int_equal(x.o.generation, 3);
  assert_string_equal(x.f[2].value, "1700000100");
  lk_oauth_policy_record_destroy(rec);
  lk_oauth_token_result_clear(&res);
  cred_free(&x);
}

static void success_without_rotation_keeps_the_refresh_token(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  lk_oauth_token_result res;
  lk_oauth_policy_record *rec = NULL;
  lk_oauth_policy_sealer sealer = {node_seal, NULL, NULL};
  /* No access_token field yet (created without one): it is added. */
  cred_init(&x, 0);
  answer(&res, 0, -1);
  lk_oauth_policy_outcome o = {LK_OK, &res, NULL, NOW, 300000};
  g_seals = 0;
  assert_int_equal(lk_oauth_policy_record_new(&x.c, &o, &sealer, &rec, &err),
                   LK_OK);
  const Latchkey__V1__Credential *c = lk_oauth_policy_record_credential(rec);
  assert_int_equal(g_seals, 1);
  assert_int_equal(c->n_fields, x.c.n_fields + 1);
  assert_sealed(c, LK_OAUTH_ACCESS_TOKEN, NEW_AT);
  assert_ptr_equal(field(c, LK_OAUTH_REFRESH_TOKEN), &x.f[0]);
  assert_sealed(c, LK_OAUTH_REFRESH_TOKEN, OLD_RT);
  char want[32];
  snprintf(want, sizeof(want), "%lld",
           NOW / 1000 + LK_OAUTH_POLICY_DEFAULT_LIFETIME_S);
  assert_string_equal(field(c, LK_OAUTH_EXPIRES_AT)->value, want);
  lk_oauth_policy_record_destroy(rec);
  lk_oauth_token_result_clear(&res);
  cred_free(&x);
}

static void failure_record_changes_only_the_state(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  lk_oauth_policy_record *rec = NULL;
  lk_oauth_policy_sealer sealer = {node_seal, NULL, NULL};
  cred_init(&x, 1);
  lk_oauth_policy_outcome o = {LK_UNAVAILABLE, NULL, "503", NOW, 300000};
  g_seals = 0;
  assert_int_equal(lk_oauth_policy_record_new(&x.c, &o, &sealer, &rec, &err),
                   LK_OK);
  const Latchkey__V1__Credential *c = lk_oauth_policy_record_credential(rec);
  assert_int_equal(g_seals, 0);
  assert_int_equal(c->n_fields, x.c.n_fields);
  for (size_t i = 0; i < c->n_fields; i++) {
    assert_ptr_equal(c->fields[i], x.fp[i]);
  }
  assert_int_equal(c->version, 7);
  assert_int_equal(c->updated_at, 2000);
  assert_int_equal(c->oauth->generation, 3);
  assert_int_equal(c->oauth->failures, 1);
  assert_string_equal(c->oauth->last_refresh_result, "503");
  assert_int_equal(c->oauth->next_attempt_at, NOW + 1000);
  /* The record encodes and decodes as a Credential. */
  size_t len = latchkey__v1__credential__get_packed_size(c);
  unsigned char *buf = malloc(len);
  assert_non_null(buf);
  latchkey__v1__credential__pack(c, buf);
  Latchkey__V1__Credential *back =
      latchkey__v1__credential__unpack(NULL, len, buf);
  assert_non_null(back);
  assert_int_equal(back->oauth->failures, 1);
  latchkey__v1__credential__free_unpacked(back, NULL);
  free(buf);
  lk_oauth_policy_record_destroy(rec);
  cred_free(&x);
}

static void keep_hook_reseals_kept_values(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  lk_oauth_token_result res;
  lk_oauth_policy_record *rec = NULL;
  lk_oauth_policy_sealer sealer = {node_seal, reseal_client_secret, NULL};
  cred_init(&x, 1);
  answer(&res, 0, 60);
  lk_oauth_policy_outcome o = {LK_OK, &res, NULL, NOW, 300000};
  g_keeps = 0;
  assert_int_equal(lk_oauth_policy_record_new(&x.c, &o, &sealer, &rec, &err),
                   LK_OK);
  const Latchkey__V1__Credential *c = lk_oauth_policy_record_credential(rec);
  /* Asked about the sealed values it keeps: refresh token, client secret. */
  assert_int_equal(g_keeps, 2);
  assert_ptr_equal(field(c, LK_OAUTH_REFRESH_TOKEN), &x.f[1]);
  assert_ptr_not_equal(field(c, LK_OAUTH_CLIENT_SECRET), &x.f[5]);
  assert_sealed(c, LK_OAUTH_CLIENT_SECRET, CS);
  assert_sealed(c, LK_OAUTH_ACCESS_TOKEN, NEW_AT);
  lk_oauth_policy_record_destroy(rec);
  lk_oauth_token_result_clear(&res);
  cred_free(&x);
}

static void a_sealing_failure_is_returned(void **state) {
  (void)state;
  cred_fx x;
  lk_err err;
  lk_oauth_token_result res;
  lk_oauth_policy_record *rec = NULL;
  lk_oauth_policy_sealer sealer = {failing_seal, NULL, NULL};
  cred_init(&x, 1);
  answer(&res, 1, 60);
  lk_oauth_policy_outcome o = {LK_OK, &res, NULL, NOW, 300000};
  assert_int_equal(lk_oauth_policy_record_new(&x.c, &o, &sealer, &rec, &err),
                   LK_UNAVAILABLE);
  assert_string_equal(err.msg, "sealing access_token refused");
  assert_null(rec);
  lk_oauth_policy_record_destroy(NULL);
  lk_oauth_token_result_clear(&res);
  cred_free(&x);
}

/* ---- labels and the audit line ------------------------------------------ */

static void result_labels(void **state) {
  (void)state;
  assert_string_equal(lk_oauth_policy_result_label(LK_OK, 0), "ok");
  assert_string_equal(lk_oauth_policy_result_label(LK_UNAVAILABLE, 0),
                      "failed");
  assert_string_equal(lk_oauth_policy_result_label(LK_FAILED_PRECONDITION, 0),
                      "reauthorize");
  assert_string_equal(lk_oauth_policy_result_label(LK_OK, 1), "discarded");
}

static lk_status fixed_hash(void *ctx, const void *value, size_t len,
                            char out_hex[LK_AUDIT_HEX_BYTES], lk_err *err) {
  (void)err;
  unsigned char key[LK_AUDIT_KEY_BYTES];
  memset(key, *(const int *)ctx, sizeof(key));
  lk_audit_hash(key, value, len, out_hex);
  return LK_OK;
}

static lk_status no_hash(void *ctx, const void *value, size_t len,
                         char out_hex[LK_AUDIT_HEX_BYTES], lk_err *err) {
  (void)ctx;
  (void)value;
  (void)len;
  (void)out_hex;
  return lk_fail(err, LK_FAILED_PRECONDITION, "no audit key yet");
}

/* Runs fn with stderr captured; returns the one JSON line it wrote. */
static json_t *captured_line(lk_oauth_policy_audit_line *line,
                             lk_oauth_policy_hash_fn hash, void *ctx,
                             char **raw) {
  char path[700];
  snprintf(path, sizeof(path), "%s/audit_XXXXXX", g_dir);
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  assert_true(dup2(fd, STDERR_FILENO) >= 0);
  lk_oauth_policy_audit(line, hash, ctx);
  fflush(stderr);
  assert_true(dup2(saved, STDERR_FILENO) >= 0);
  close(saved);
  off_t end = lseek(fd, 0, SEEK_END);
  assert_true(end > 0);
  *raw = calloc(1, (size_t)end + 1);
  assert_int_equal(pread(fd, *raw, (size_t)end, 0), end);
  close(fd);
  assert_non_null(strchr(*raw, '\n'));
  assert_ptr_equal(strchr(*raw, '\n'), *raw + end - 1); /* one line */
  json_error_t jerr;
  json_t *obj = json_loads(*raw, 0, &jerr);
  assert_non_null(obj);
  return obj;
}

static void audit_line_hashes_never_values(void **state) {
  (void)state;
  lk_oauth_token_result res;
  int key_byte = 7;
  char *raw = NULL;
  char want_at[LK_AUDIT_HEX_BYTES];
  char want_rt[LK_AUDIT_HEX_BYTES];
  lk_err err;
  answer(&res, 1, 60);
  lk_oauth_policy_audit_line line = {
      .cred_id = "cred-1",
      .label = "ok",
      .by_key = "sidecar",
      .by_value = "agent-1",
      .http_status = 200,
      .generation = 4,
      .stored = &res,
      .expires_at_s = 1700000060,
  };
  json_t *o = captured_line(&line, fixed_hash, &key_byte, &raw);
  assert_string_equal(json_string_value(json_object_get(o, "event")),
                      "audit.oauth.refresh");
  assert_string_equal(json_string_value(json_object_get(o, "credential_id")),
                      "cred-1");
  assert_string_equal(json_string_value(json_object_get(o, "result")), "ok");
  assert_string_equal(json_string_value(json_object_get(o, "sidecar")),
                      "agent-1");
  assert_int_equal(json_integer_value(json_object_get(o, "http_status")), 200);
  assert_int_equal(json_integer_value(json_object_get(o, "generation")), 4);
  assert_true(json_is_true(json_object_get(o, "rotated")));
  assert_int_equal(json_integer_value(json_object_get(o, "expires_at")),
                   1700000060);
  assert_null(json_object_get(o, "failures"));
  assert_int_equal(fixed_hash(&key_byte, NEW_AT, strlen(NEW_AT), want_at, &err),
                   LK_OK);
  assert_int_equal(fixed_hash(&key_byte, NEW_RT, strlen(NEW_RT), want_rt, &err),
                   LK_OK);
  json_t *h = json_object_get(o, "secret_hashes");
  assert_string_equal(json_string_value(json_object_get(h, "access_token")),
                      want_at);
  assert_string_equal(json_string_value(json_object_get(h, "refresh_token")),
                      want_rt);
  assert_null(strstr(raw, NEW_AT));
  assert_null(strstr(raw, NEW_RT));
  json_decref(o);
  free(raw);

  /* Without an audit key: no hashes, said so; still no value. */
  o = captured_line(&line, no_hash, NULL, &raw);
  assert_null(json_object_get(o, "secret_hashes"));
  assert_true(json_is_true(json_object_get(o, "secret_hashes_unavailable")));
  assert_null(strstr(raw, NEW_AT));
  json_decref(o);
  free(raw);
  lk_oauth_token_result_clear(&res);

  /* A failure: its failures, next attempt and reason. */
  Latchkey__V1__OAuthState s = LATCHKEY__V1__OAUTH_STATE__INIT;
  s.failures = 2;
  s.next_attempt_at = NOW + 2000;
  lk_oauth_policy_audit_line fail = {
      .cred_id = "cred-1",
      .label = "failed",
      .by_key = "control_plane",
      .by_value = "cp-1",
      .http_status = 503,
      .generation = 3,
      .failed = &s,
      .reason = "token endpoint answered 503",
  };
  o = captured_line(&fail, fixed_hash, &key_byte, &raw);
  assert_string_equal(json_string_value(json_object_get(o, "control_plane")),
                      "cp-1");
  assert_int_equal(json_integer_value(json_object_get(o, "failures")), 2);
  assert_int_equal(json_integer_value(json_object_get(o, "next_attempt_at")),
                   NOW + 2000);
  assert_string_equal(json_string_value(json_object_get(o, "reason")),
                      "token endpoint answered 503");
  assert_null(json_object_get(o, "secret_hashes"));
  assert_null(json_object_get(o, "rotated"));
  json_decref(o);
  free(raw);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(due_rule),
      cmocka_unit_test(backoff_doubles_up_to_the_cap),
      cmocka_unit_test(on_demand_requests_are_checked),
      cmocka_unit_test(should_attempt_follows_the_request_or_the_schedule),
      cmocka_unit_test(defaults_fill_only_unset_settings),
      cmocka_unit_test(attempt_errors_say_who_retries),
      cmocka_unit_test(token_request_comes_from_the_plain_fields),
      cmocka_unit_test(success_starts_the_next_generation),
      cmocka_unit_test(failure_backs_off_or_waits_for_the_owner),
      cmocka_unit_test(success_record_seals_the_new_tokens),
      cmocka_unit_test(success_without_rotation_keeps_the_refresh_token),
      cmocka_unit_test(failure_record_changes_only_the_state),
      cmocka_unit_test(keep_hook_reseals_kept_values),
      cmocka_unit_test(a_sealing_failure_is_returned),
      cmocka_unit_test(result_labels),
      cmocka_unit_test(audit_line_hashes_never_values),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
