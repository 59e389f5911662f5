/*
 * oauth_refresh_test.c - proves controlplane/oauth_refresh's contract
 * against a real single-node etcd (tests/unit/etcd_fixture), a real token
 * endpoint on loopback (tests/unit/token_server) and the control plane's
 * own parts: the etcd catalog (mirror + Txn committer with the key-ring
 * fence) and a key ring file. Credentials are seeded straight into etcd
 * through the catalog, sealed under the ring, as the Admin service would
 * store an oauth2 credential.
 *
 * What it shows, reading back from etcd itself and from the token
 * endpoint's own counters:
 *  - a credential is refreshed once before it expires: the new access
 *    token and the rotated refresh token are sealed in etcd, expires_at,
 *    version and OAuthState follow, the claim is gone;
 *  - a client_credentials credential gets a new access token with its
 *    scope, and an hour's expiry when the answer has no expires_in;
 *  - two control planes on one etcd send exactly one token request per
 *    expiry over several rotations, and never reuse a refresh token;
 *  - a failing provider: failures counted, next_attempt_at backs off by
 *    the doubling rule, then the provider comes back and the credential
 *    recovers with nobody acting;
 *  - a refused grant sets reauthorize and nothing is asked again;
 *  - a live claim of another control plane is waited for, an expired one
 *    taken over;
 *  - an owner update made while the provider is answering wins, and the
 *    claim sits beside the catalog prefix meanwhile;
 *  - a key rotation during a refresh: the new token lands under the new
 *    key (the fence refused the old one);
 *  - on demand: concurrent askers share one token request; an answered
 *    generation returns at once; unknown, non-oauth2 and refused-grant
 *    credentials fail with their exact codes; a deadline ends the wait.
 *
 * Each test uses its own etcd prefix, key ring and token endpoint; every
 * wait is bounded.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "controlplane/etcd_catalog.h"
#include "controlplane/keyfence.h"
#include "controlplane/oauth_refresh.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/clock.h"
#include "lib/etcd.h"
#include "lib/keyring.h"
#include "lib/oauth.h"
#include "lib/oauth_policy.h"
#include "lib/oauth_token.h"
#include "lib/secret.h"
#include "lib/status.h"
#include "lib/store.h"
#include "tests/unit/etcd_fixture.h"
#include "tests/unit/token_server.h"

#define WAIT_MS 20000
#define CRED "idp1"

static etcd_fx g_etcd;

/* One control plane's parts. */
typedef struct {
  lk_etcd *etcd;
  lk_etcd_catalog *ecat;
  lk_keyring *kr;
  lk_oauth_refresh *_Atomic oauth;
} cp_fx;

/* One test's world: an etcd prefix, a key ring file, a token endpoint. */
typedef struct {
  char prefix[64];
  char ring[1200];
  token_server *ts;
  char access[TS_MAX_VALUE];
  char refresh[TS_MAX_VALUE];
} world;

static int group_setup(void **state) {
  (void)state;
  lk_err err;
  if (lk_secret_init() != LK_OK || lk_oauth_token_global_init(&err) != LK_OK) {
    return -1;
  }
  return etcd_fx_start(&g_etcd);
}

static int group_teardown(void **state) {
  (void)state;
  etcd_fx_stop(&g_etcd); /* key rings too */
  return 0;
}

static world *world_new(void) {
  world *w = calloc(1, sizeof(*w));
  assert_non_null(w);
  etcd_fx_world(&g_etcd, "oauth", w->prefix, sizeof(w->prefix), w->ring,
                sizeof(w->ring));
  w->ts = ts_start();
  assert_non_null(w->ts);
  ts_seed(w->ts, w->access, w->refresh, sizeof(w->access));
  return w;
}

static void world_free(world *w) {
  ts_stop(w->ts);
  free(w);
}

static void on_change(void *ctx, int64_t revision) {
  cp_fx *c = ctx;
  (void)revision;
  lk_oauth_refresh_changed(atomic_load(&c->oauth));
}

/* Opens a control plane's etcd parts (no refresher yet). */
static void cp_open(cp_fx *c, const world *w) {
  lk_err err;
  memset(c, 0, sizeof(*c));
  if (lk_etcd_open(g_etcd.ep, w->prefix, &c->etcd, &err) != LK_OK ||
      lk_etcd_catalog_open(c->etcd, on_change, c, &c->ecat, &err) != LK_OK ||
      lk_keyring_load_or_create(w->ring, &c->kr, &err) != LK_OK ||
      lk_etcd_catalog_use_fence(c->ecat, c->kr, &err) != LK_OK) {
    fail_msg("open control plane: %s", err.msg);
  }
}

/* Starts c's refresher with margin, retry max, claim TTL (ms; 0 default)
 * and id. */
static void cp_start(cp_fx *c, int64_t margin_ms, int64_t retry_max_ms,
                     int64_t claim_ttl_ms, const char *id) {
  lk_err err;
  lk_oauth_refresh *r = NULL;
  lk_oauth_refresh_config cfg = {
      .etcd = c->etcd,
      .cat = lk_etcd_catalog_catalog(c->ecat),
      .kr = c->kr,
      .margin_ms = margin_ms,
      .retry_max_ms = retry_max_ms,
      .allow_insecure = 1,
      .token_timeout_ms = claim_ttl_ms > 0 ? claim_ttl_ms / 2 : 0,
      .claim_ttl_ms = claim_ttl_ms,
      .cp_id = id,
  };
  if (lk_oauth_refresh_start(&cfg, &r, &err) != LK_OK) {
    fail_msg("refresher: %s", err.msg);
  }
  atomic_store(&c->oauth, r);
  lk_oauth_refresh_changed(r);
}

static void cp_close(cp_fx *c) {
  lk_oauth_refresh *r = atomic_exchange(&c->oauth, NULL);
  lk_oauth_refresh_stop(r);
  lk_etcd_catalog_destroy(c->ecat); /* no on_change can reach r after */
  lk_oauth_refresh_destroy(r);
  lk_etcd_close(c->etcd);
  lk_keyring_destroy(c->kr);
  memset(c, 0, sizeof(*c));
}

/* ---- credentials -------------------------------------------------------- */

typedef struct {
  Latchkey__V1__FieldValue fv;
  Latchkey__V1__SealedValue sv;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
} test_field;

static void secret_field(cp_fx *c, test_field *t, const char *id,
                         const char *name, const char *value) {
  lk_err err;
  size_t ct_len = 0;
  latchkey__v1__field_value__init(&t->fv);
  latchkey__v1__sealed_value__init(&t->sv);
  if (lk_keyring_seal(c->kr, id, name, (const unsigned char *)value,
                      strlen(value), &t->sv.key_id, t->nonce, &t->ct, &ct_len,
                      &err) != LK_OK) {
    fail_msg("seal: %s", err.msg);
  }
  t->fv.name = (char *)name;
  t->fv.secret = 1;
  t->fv.sealed = &t->sv;
  t->sv.nonce.data = t->nonce;
  t->sv.nonce.len = sizeof(t->nonce);
  t->sv.ciphertext.data = t->ct;
  t->sv.ciphertext.len = ct_len;
}

static void plain_field(test_field *t, const char *name, const char *value) {
  latchkey__v1__field_value__init(&t->fv);
  t->fv.name = (char *)name;
  t->fv.value = (char *)value;
}

/* Stores oauth2 credential id (token endpoint of w, access_token access,
 * refresh_token refresh (NULL: none, grant client_credentials with scope
 * "read:all"), expires_at text) with OAuthState oauth (NULL: generation
 * 1) and version, through the catalog (a fenced etcd Txn). */
static void put_oauth_cred(cp_fx *c, const world *w, const char *id,
                           const char *access, const char *refresh,
                           const char *expires_at,
                           const Latchkey__V1__OAuthState *oauth,
                           uint64_t version) {
  test_field f[8];
  Latchkey__V1__FieldValue *fields[8];
  Latchkey__V1__OAuthState st = LATCHKEY__V1__OAUTH_STATE__INIT;
  Latchkey__V1__Credential cred = LATCHKEY__V1__CREDENTIAL__INIT;
  lk_err err;
  size_t n = 0;
  memset(f, 0, sizeof(f));
  secret_field(c, &f[n++], id, LK_OAUTH_ACCESS_TOKEN, access);
  if (refresh != NULL) {
    secret_field(c, &f[n++], id, LK_OAUTH_REFRESH_TOKEN, refresh);
  }
  plain_field(&f[n++], LK_OAUTH_EXPIRES_AT, expires_at);
  plain_field(&f[n++], LK_OAUTH_TOKEN_URL, ts_url(w->ts));
  plain_field(&f[n++], LK_OAUTH_CLIENT_ID, TS_CLIENT_ID);
  secret_field(c, &f[n++], id, LK_OAUTH_CLIENT_SECRET, TS_CLIENT_SECRET);
  plain_field(&f[n++], LK_OAUTH_GRANT_TYPE,
              refresh != NULL ? LK_OAUTH_GRANT_AUTHORIZATION_CODE
                              : LK_OAUTH_GRANT_CLIENT_CREDENTIALS);
  if (refresh == NULL) {
    plain_field(&f[n++], LK_OAUTH_SCOPE, "read:all");
  }
  for (size_t i = 0; i < n; i++) {
    fields[i] = &f[i].fv;
  }
  st.generation = 1;
  cred.id = (char *)id;
  cred.type = (char *)"idp-oauth";
  cred.label = (char *)"test";
  cred.n_fields = n;
  cred.fields = fields;
  cred.created_at = lk_wall_ms();
  cred.updated_at = cred.created_at;
  cred.version = version;
  cred.oauth = oauth != NULL ? (Latchkey__V1__OAuthState *)oauth : &st;
  lk_catalog *cat = lk_etcd_catalog_catalog(c->ecat);
  lk_store_batch *b = lk_store_batch_new();
  assert_non_null(b);
  if (lk_catalog_put_credential(cat, b, &cred, &err) != LK_OK ||
      lk_catalog_commit(cat, b, &err) != LK_OK) {
    fail_msg("store credential: %s", err.msg);
  }
  lk_store_batch_destroy(b);
  for (size_t i = 0; i < n; i++) {
    free(f[i].ct);
  }
}

/* expires_at text for now + s seconds. */
static void expiry_in(int64_t s, char out[24]) {
  snprintf(out, 24, "%lld", (long long)(lk_wall_ms() / 1000 + s));
}

/* Reads credential id from etcd itself. */
static Latchkey__V1__Credential *read_cred(cp_fx *c, const char *id) {
  char key[160];
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  snprintf(key, sizeof(key), "cred/%s", id);
  if (lk_etcd_get(c->etcd, key, &val, &len, NULL, &err) != LK_OK) {
    fail_msg("read %s: %s", key, err.msg);
  }
  Latchkey__V1__Credential *cred =
      latchkey__v1__credential__unpack(NULL, len, val);
  lk_etcd_value_free(val, len);
  assert_non_null(cred);
  return cred;
}

/* Unseals secret field name of cred into out; returns its key id. */
static uint32_t unseal(cp_fx *c, const Latchkey__V1__Credential *cred,
                       const char *name, char *out, size_t cap) {
  lk_err err;
  for (size_t i = 0; i < cred->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = cred->fields[i];
    if (strcmp(f->name, name) != 0) {
      continue;
    }
    assert_true(f->secret);
    assert_non_null(f->sealed);
    lk_secret *pt = NULL;
    assert_int_equal(lk_keyring_refresh(c->kr, NULL, &err), LK_OK);
    if (lk_keyring_unseal(c->kr, f->sealed->key_id, cred->id, name,
                          f->sealed->nonce.data, f->sealed->nonce.len,
                          f->sealed->ciphertext.data, f->sealed->ciphertext.len,
                          &pt, &err) != LK_OK) {
      fail_msg("unseal %s: %s", name, err.msg);
    }
    snprintf(out, cap, "%s", lk_secret_str(pt));
    lk_secret_free(pt);
    return f->sealed->key_id;
  }
  fail_msg("credential %s has no field %s", cred->id, name);
  return 0;
}

static uint64_t generation_of(cp_fx *c, const char *id) {
  Latchkey__V1__Credential *cred = read_cred(c, id);
  uint64_t g = cred->oauth != NULL ? cred->oauth->generation : 0;
  latchkey__v1__credential__free_unpacked(cred, NULL);
  return g;
}

/* Waits (bounded) until etcd shows generation >= want for id. */
static void wait_generation(cp_fx *c, const char *id, uint64_t want) {
  int64_t start = lk_now_ms();
  while (generation_of(c, id) < want) {
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("credential %s did not reach generation %llu", id,
               (unsigned long long)want);
    }
    usleep(20 * 1000);
  }
}

static int claim_exists(cp_fx *c, const char *id, char *value, size_t cap) {
  char key[160];
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  snprintf(key, sizeof(key), "%s%s", LK_OAUTH_REFRESH_CLAIM_PREFIX, id);
  lk_status st = lk_etcd_get(c->etcd, key, &val, &len, NULL, &err);
  if (st == LK_OK && value != NULL) {
    snprintf(value, cap, "%s", (const char *)val);
  }
  lk_etcd_value_free(val, len);
  return st == LK_OK;
}

static void sleep_ms(int ms) {
  usleep((useconds_t)ms * 1000);
}

/* ---- tests -------------------------------------------------------------- */

static void refreshes_once_before_expiry(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  char exp[24];
  char got[TS_MAX_VALUE];
  char now_access[TS_MAX_VALUE];
  cp_open(&c, w);
  expiry_in(3, exp);
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, exp, NULL, 1);
  int64_t before = lk_wall_ms();
  cp_start(&c, 2000, 0, 0, "cp-a");
  wait_generation(&c, CRED, 2);
  ts_stats s = ts_get_stats(w->ts);
  assert_int_equal(s.requests, 1);
  assert_int_equal(s.reuse, 0);
  ts_request rq;
  assert_true(ts_request_at(w->ts, 0, &rq));
  assert_string_equal(rq.grant_type, "refresh_token");
  assert_string_equal(rq.refresh_token, w->refresh);
  Latchkey__V1__Credential *cred = read_cred(&c, CRED);
  ts_current_access(w->ts, now_access, sizeof(now_access));
  unseal(&c, cred, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, now_access);
  unseal(&c, cred, LK_OAUTH_REFRESH_TOKEN, got, sizeof(got));
  assert_string_not_equal(got, w->refresh); /* rotated */
  assert_int_equal(strncmp(got, "rt-", 3), 0);
  unseal(&c, cred, LK_OAUTH_CLIENT_SECRET, got, sizeof(got));
  assert_string_equal(got, TS_CLIENT_SECRET);
  int64_t at = lk_oauth_expires_at_ms(cred);
  assert_true(at >= (before / 1000 + 3600) * 1000);
  assert_true(at <= (lk_wall_ms() / 1000 + 3600) * 1000);
  assert_int_equal(cred->version, 2);
  assert_true(cred->updated_at >= before);
  assert_non_null(cred->oauth);
  assert_int_equal(cred->oauth->generation, 2);
  assert_string_equal(cred->oauth->last_refresh_result, "ok");
  assert_int_equal(cred->oauth->failures, 0);
  assert_int_equal(cred->oauth->next_attempt_at, 0);
  assert_false(cred->oauth->reauthorize);
  assert_true(cred->oauth->last_success_at >= before);
  assert_int_equal(cred->oauth->last_refresh_at, cred->oauth->last_success_at);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  assert_false(claim_exists(&c, CRED, NULL, 0));
  /* Not due again for an hour: nothing more is asked. */
  sleep_ms(1500);
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  /* The mirror shows it too (what Sync replicates). */
  Latchkey__V1__Credential *m = NULL;
  lk_err err;
  assert_int_equal(lk_catalog_get_credential(lk_etcd_catalog_catalog(c.ecat),
                                             CRED, &m, &err),
                   LK_OK);
  assert_int_equal(m->oauth->generation, 2);
  lk_catalog_free_credential(m);
  cp_close(&c);
  world_free(w);
}

static void client_credentials_get_a_new_token_with_their_scope(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  char got[TS_MAX_VALUE];
  char now_access[TS_MAX_VALUE];
  ts_set_expires_in(w->ts, -1); /* no expires_in: an hour is assumed */
  cp_open(&c, w);
  put_oauth_cred(&c, w, CRED, w->access, NULL, "0", NULL, 1);
  int64_t before = lk_wall_ms();
  cp_start(&c, 2000, 0, 0, "cp-a");
  wait_generation(&c, CRED, 2);
  ts_request rq;
  assert_true(ts_request_at(w->ts, 0, &rq));
  assert_string_equal(rq.raw_body,
                      "grant_type=client_credentials&scope=read%3Aall");
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  Latchkey__V1__Credential *cred = read_cred(&c, CRED);
  ts_current_access(w->ts, now_access, sizeof(now_access));
  unseal(&c, cred, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, now_access);
  for (size_t i = 0; i < cred->n_fields; i++) {
    assert_string_not_equal(cred->fields[i]->name, LK_OAUTH_REFRESH_TOKEN);
  }
  int64_t at = lk_oauth_expires_at_ms(cred);
  assert_true(at >=
              (before / 1000 + LK_OAUTH_POLICY_DEFAULT_LIFETIME_S) * 1000);
  assert_true(at <= (lk_wall_ms() / 1000 + LK_OAUTH_POLICY_DEFAULT_LIFETIME_S) *
                        1000);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  cp_close(&c);
  world_free(w);
}

static void two_control_planes_send_one_request_per_expiry(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx a, b;
  char exp[24];
  ts_set_expires_in(w->ts, 2); /* refreshed about every second */
  cp_open(&a, w);
  cp_open(&b, w);
  expiry_in(1, exp);
  put_oauth_cred(&a, w, CRED, w->access, w->refresh, exp, NULL, 1);
  cp_start(&a, 10000, 0, 0, "cp-a");
  cp_start(&b, 10000, 0, 0, "cp-b");
  wait_generation(&a, CRED, 6);
  ts_stats s = ts_get_stats(w->ts);
  uint64_t gen = generation_of(&a, CRED);
  /* One token request per generation (the newest may still be in
   * progress), none refused. */
  assert_true(s.requests == (int)(gen - 1) || s.requests == (int)gen);
  assert_int_equal(s.reuse, 0);
  for (int i = 0; i < s.requests; i++) {
    ts_request rq;
    assert_true(ts_request_at(w->ts, i, &rq));
    if (rq.status != 0) { /* answered (the newest may be in progress) */
      assert_int_equal(rq.status, 200);
    }
    for (int k = 0; k < i; k++) {
      ts_request earlier;
      assert_true(ts_request_at(w->ts, k, &earlier));
      assert_string_not_equal(earlier.refresh_token, rq.refresh_token);
    }
  }
  cp_close(&a);
  cp_close(&b);
  /* After both stopped: every request was answered with a new token, and
   * every answer was stored. */
  cp_open(&a, w);
  s = ts_get_stats(w->ts);
  assert_int_equal((uint64_t)s.requests, generation_of(&a, CRED) - 1);
  assert_int_equal(s.reuse, 0);
  cp_close(&a);
  world_free(w);
}

static void a_failing_provider_backs_off_then_recovers(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  ts_set_mode(w->ts, TS_FAIL);
  cp_open(&c, w);
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, "0", NULL, 1);
  cp_start(&c, 2000, 2000, 0, "cp-a");
  int64_t start = lk_now_ms();
  Latchkey__V1__Credential *cred = NULL;
  for (;;) {
    cred = read_cred(&c, CRED);
    if (cred->oauth->failures >= 3) {
      break;
    }
    latchkey__v1__credential__free_unpacked(cred, NULL);
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("three failures were not recorded");
    }
    sleep_ms(20);
  }
  assert_string_equal(cred->oauth->last_refresh_result,
                      "the token endpoint answered HTTP 503, error "
                      "temporarily_unavailable");
  assert_false(cred->oauth->reauthorize);
  assert_int_equal(cred->oauth->generation, 1);
  assert_int_equal(cred->oauth->last_success_at, 0);
  assert_int_equal(cred->oauth->next_attempt_at - cred->oauth->last_refresh_at,
                   lk_oauth_policy_backoff_ms(cred->oauth->failures, 2000));
  assert_int_equal(cred->version, 1); /* a failure is no new version */
  latchkey__v1__credential__free_unpacked(cred, NULL);
  /* One request per failure: the backoff holds. */
  ts_stats s = ts_get_stats(w->ts);
  assert_true(s.requests >= 3 && s.requests <= 4);
  /* The first pauses are 1 s then 2 s: three failures took >= 3 s. */
  assert_true(lk_now_ms() - start >= 2900);
  /* The provider is back: recovered with nobody acting. */
  ts_set_mode(w->ts, TS_OK);
  wait_generation(&c, CRED, 2);
  cred = read_cred(&c, CRED);
  assert_int_equal(cred->oauth->failures, 0);
  assert_string_equal(cred->oauth->last_refresh_result, "ok");
  assert_int_equal(cred->oauth->next_attempt_at, 0);
  assert_true(lk_oauth_expires_at_ms(cred) > lk_wall_ms());
  latchkey__v1__credential__free_unpacked(cred, NULL);
  assert_int_equal(ts_get_stats(w->ts).reuse, 0);
  cp_close(&c);
  world_free(w);
}

static void a_refused_grant_waits_for_the_owner(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  lk_err err;
  uint64_t gen = 0;
  ts_set_mode(w->ts, TS_INVALID_GRANT);
  cp_open(&c, w);
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, "", NULL, 1);
  cp_start(&c, 2000, 1000, 0, "cp-a");
  int64_t start = lk_now_ms();
  Latchkey__V1__Credential *cred = NULL;
  for (;;) {
    cred = read_cred(&c, CRED);
    if (cred->oauth->reauthorize) {
      break;
    }
    latchkey__v1__credential__free_unpacked(cred, NULL);
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("reauthorize was not set");
    }
    sleep_ms(20);
  }
  assert_string_equal(cred->oauth->last_refresh_result,
                      "the identity provider refused the grant (HTTP 400, "
                      "error invalid_grant: the grant was revoked): the owner "
                      "must re-authorise this credential");
  assert_int_equal(cred->oauth->failures, 1);
  assert_int_equal(cred->oauth->next_attempt_at, 0);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  /* Nothing more is asked, by itself or on demand. */
  ts_set_mode(w->ts, TS_OK);
  sleep_ms(2500);
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  assert_int_equal(lk_oauth_refresh_request(atomic_load(&c.oauth), CRED, 1,
                                            lk_now_ms() + 5000, &gen, &err),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "credential idp1 must be re-authorised by its owner "
                      "(the last refresh said: the identity provider refused "
                      "the grant (HTTP 400, error invalid_grant: the grant "
                      "was revoked): the owner must re-authorise this "
                      "credential)");
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  /* The owner re-authorises (new tokens, OAuthState reset): refreshed
   * again when due. */
  char access[TS_MAX_VALUE];
  char refresh[TS_MAX_VALUE];
  ts_seed(w->ts, access, refresh, sizeof(access));
  Latchkey__V1__OAuthState reset = LATCHKEY__V1__OAUTH_STATE__INIT;
  reset.generation = 2;
  put_oauth_cred(&c, w, CRED, access, refresh, "0", &reset, 2);
  wait_generation(&c, CRED, 3);
  assert_int_equal(ts_get_stats(w->ts).requests, 2);
  cp_close(&c);
  world_free(w);
}

static void claims_of_others_are_waited_for_or_taken_over(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  char key[160];
  char value[64];
  lk_err err;
  cp_open(&c, w);
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, "0", NULL, 1);
  /* A control plane that crashed holding the claim until 1.5 s from now. */
  snprintf(key, sizeof(key), "%s%s", LK_OAUTH_REFRESH_CLAIM_PREFIX, CRED);
  int n = snprintf(value, sizeof(value), "%lld cp-crashed",
                   (long long)(lk_wall_ms() + 1500));
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_etcd_txn_put(t, key, (const unsigned char *)value, (size_t)n);
  assert_int_equal(lk_etcd_txn_commit(c.etcd, t, NULL, &err), LK_OK);
  lk_etcd_txn_destroy(t);
  int64_t start = lk_now_ms();
  cp_start(&c, 2000, 0, 0, "cp-a");
  sleep_ms(800);
  assert_int_equal(ts_get_stats(w->ts).requests, 0); /* its claim is live */
  wait_generation(&c, CRED, 2);
  assert_true(lk_now_ms() - start >= 1400);
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  assert_false(claim_exists(&c, CRED, NULL, 0));
  cp_close(&c);
  world_free(w);
}

/* Waits (bounded) until the token endpoint has received n requests. */
static void wait_requests(world *w, int n) {
  int64_t start = lk_now_ms();
  while (ts_get_stats(w->ts).requests < n) {
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("the token endpoint did not get %d requests", n);
    }
    sleep_ms(10);
  }
}

static void an_owner_update_during_a_refresh_wins(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  char value[200];
  char got[TS_MAX_VALUE];
  lk_err err;
  ts_set_delay_ms(w->ts, 1500);
  cp_open(&c, w);
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, "0", NULL, 1);
  cp_start(&c, 2000, 0, 0, "cp-owner-test");
  wait_requests(w, 1);
  /* The provider is answering: the claim is ours, beside the prefix. */
  assert_true(claim_exists(&c, CRED, value, sizeof(value)));
  assert_non_null(strstr(value, " cp-owner-test"));
  char full[200];
  assert_true(lk_etcd_full_key(c.etcd, LK_OAUTH_REFRESH_CLAIM_PREFIX CRED, full,
                               sizeof(full)) > 0);
  char want[200];
  snprintf(want, sizeof(want), "%.*s.oauth-claim/%s",
           (int)strlen(w->prefix) - 1, w->prefix, CRED);
  assert_string_equal(full, want);
  /* The owner re-authorises meanwhile. */
  Latchkey__V1__OAuthState reset = LATCHKEY__V1__OAUTH_STATE__INIT;
  reset.generation = 7;
  put_oauth_cred(&c, w, CRED, "owner-access-token", "owner-refresh-token",
                 "4102444800", &reset, 5);
  /* The refresh's answer is dropped, and the claim released. */
  int64_t start = lk_now_ms();
  while (claim_exists(&c, CRED, NULL, 0)) {
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("the claim was not released");
    }
    sleep_ms(20);
  }
  Latchkey__V1__Credential *cred = read_cred(&c, CRED);
  unseal(&c, cred, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, "owner-access-token");
  unseal(&c, cred, LK_OAUTH_REFRESH_TOKEN, got, sizeof(got));
  assert_string_equal(got, "owner-refresh-token");
  assert_int_equal(cred->version, 5);
  assert_int_equal(cred->oauth->generation, 7);
  assert_int_equal(cred->oauth->last_refresh_at, 0);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  (void)err;
  cp_close(&c);
  world_free(w);
}

static void a_key_rotation_during_a_refresh_lands_under_the_new_key(
    void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  lk_err err;
  char got[TS_MAX_VALUE];
  char now_access[TS_MAX_VALUE];
  uint32_t new_id = 0;
  uint32_t fence = 0;
  ts_set_delay_ms(w->ts, 1000);
  cp_open(&c, w);
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, "0", NULL, 1);
  uint32_t old_id = lk_keyring_active_id(c.kr);
  cp_start(&c, 2000, 0, 0, "cp-a");
  wait_requests(w, 1);
  /* Another control plane rotates while the provider answers. */
  lk_keyring *other = NULL;
  assert_int_equal(lk_keyring_load_or_create(w->ring, &other, &err), LK_OK);
  assert_int_equal(lk_keyring_add_key(w->ring, &new_id, &err), LK_OK);
  assert_int_equal(lk_keyring_reload(other, &err), LK_OK);
  assert_int_equal(lk_keyfence_advance(c.etcd, new_id, &fence, &err), LK_OK);
  assert_int_equal(fence, new_id);
  assert_int_not_equal(new_id, old_id);
  wait_generation(&c, CRED, 2);
  Latchkey__V1__Credential *cred = read_cred(&c, CRED);
  ts_current_access(w->ts, now_access, sizeof(now_access));
  assert_int_equal(unseal(&c, cred, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got)),
                   new_id);
  assert_string_equal(got, now_access);
  /* Every value of the record is under the new key: the fence vouches for
   * one. */
  assert_int_equal(unseal(&c, cred, LK_OAUTH_REFRESH_TOKEN, got, sizeof(got)),
                   new_id);
  assert_int_equal(unseal(&c, cred, LK_OAUTH_CLIENT_SECRET, got, sizeof(got)),
                   new_id);
  assert_string_equal(got, TS_CLIENT_SECRET);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  lk_keyring_destroy(other);
  cp_close(&c);
  world_free(w);
}

/* A thread asking for a refresh on demand. */
typedef struct {
  lk_oauth_refresh *r;
  uint64_t asked;
  lk_status st;
  uint64_t gen;
  lk_err err;
} asker;

static void *ask(void *arg) {
  asker *a = arg;
  a->st = lk_oauth_refresh_request(a->r, CRED, a->asked, lk_now_ms() + 10000,
                                   &a->gen, &a->err);
  return NULL;
}

static void on_demand_askers_share_one_request(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  char exp[24];
  lk_err err;
  uint64_t gen = 0;
  ts_set_delay_ms(w->ts, 300);
  cp_open(&c, w);
  expiry_in(3600, exp); /* not due by itself */
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, exp, NULL, 1);
  cp_start(&c, 2000, 0, 0, "cp-a");
  sleep_ms(300);
  assert_int_equal(ts_get_stats(w->ts).requests, 0);
  lk_oauth_refresh *r = atomic_load(&c.oauth);
  asker askers[5];
  pthread_t th[5];
  for (int i = 0; i < 5; i++) {
    memset(&askers[i], 0, sizeof(askers[i]));
    askers[i].r = r;
    askers[i].asked = 1;
    assert_int_equal(pthread_create(&th[i], NULL, ask, &askers[i]), 0);
  }
  for (int i = 0; i < 5; i++) {
    pthread_join(th[i], NULL);
    if (askers[i].st != LK_OK) {
      fail_msg("asker %d: %s", i, askers[i].err.msg);
    }
    assert_int_equal(askers[i].gen, 2);
  }
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  /* Asking about generation 1 again: answered at once, nothing sent. */
  assert_int_equal(
      lk_oauth_refresh_request(r, CRED, 1, lk_now_ms() + 1000, &gen, &err),
      LK_OK);
  assert_int_equal(gen, 2);
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  /* A deadline shorter than the provider: DEADLINE_EXCEEDED, and the
   * attempt still finishes and is stored. */
  ts_set_delay_ms(w->ts, 1500);
  assert_int_equal(
      lk_oauth_refresh_request(r, CRED, 2, lk_now_ms() + 300, &gen, &err),
      LK_DEADLINE_EXCEEDED);
  assert_string_equal(err.msg,
                      "no new access token for credential idp1 "
                      "before the deadline; retry the call");
  wait_generation(&c, CRED, 3);
  assert_int_equal(ts_get_stats(w->ts).requests, 2);
  /* Unknown, invalid and non-oauth2 credentials. */
  assert_int_equal(
      lk_oauth_refresh_request(r, "nope", 1, lk_now_ms() + 1000, &gen, &err),
      LK_NOT_FOUND);
  assert_int_equal(
      lk_oauth_refresh_request(r, "../x", 1, lk_now_ms() + 1000, &gen, &err),
      LK_INVALID_ARGUMENT);
  Latchkey__V1__Credential plain = LATCHKEY__V1__CREDENTIAL__INIT;
  plain.id = (char *)"static1";
  plain.type = (char *)"api-key";
  plain.version = 1;
  lk_catalog *cat = lk_etcd_catalog_catalog(c.ecat);
  lk_store_batch *b = lk_store_batch_new();
  assert_int_equal(lk_catalog_put_credential(cat, b, &plain, &err), LK_OK);
  assert_int_equal(lk_catalog_commit(cat, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  assert_int_equal(
      lk_oauth_refresh_request(r, "static1", 0, lk_now_ms() + 1000, &gen, &err),
      LK_FAILED_PRECONDITION);
  assert_string_equal(err.msg,
                      "credential static1 is not an oauth2 "
                      "credential: nothing to refresh");
  cp_close(&c);
  world_free(w);
}

/* A request about the generation an attempt still in flight is about to
 * make (a replica saw it, and the vendor refused it, before the control
 * plane's worker had finished) gets an attempt of its own afterwards,
 * instead of waiting out its deadline with nothing asked. */
static void request_about_the_generation_in_flight_gets_its_own_attempt(
    void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  char exp[24];
  ts_set_delay_ms(w->ts, 600);
  cp_open(&c, w);
  expiry_in(3600, exp); /* not due by itself */
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, exp, NULL, 1);
  cp_start(&c, 2000, 0, 0, "cp-a");
  lk_oauth_refresh *r = atomic_load(&c.oauth);
  asker first = {.r = r, .asked = 1};
  asker second = {.r = r, .asked = 2};
  pthread_t t1, t2;
  assert_int_equal(pthread_create(&t1, NULL, ask, &first), 0);
  wait_requests(w, 1); /* the attempt making generation 2 is in flight */
  assert_int_equal(pthread_create(&t2, NULL, ask, &second), 0);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  if (first.st != LK_OK)
    fail_msg("first asker: %s", first.err.msg);
  if (second.st != LK_OK)
    fail_msg("second asker: %s", second.err.msg);
  assert_int_equal(first.gen, 2);
  assert_int_equal(second.gen, 3);
  assert_int_equal(ts_get_stats(w->ts).requests, 2);
  cp_close(&c);
  world_free(w);
}

static void on_demand_during_backoff_fails_fast(void **state) {
  (void)state;
  world *w = world_new();
  cp_fx c;
  lk_err err;
  uint64_t gen = 0;
  ts_set_mode(w->ts, TS_FAIL);
  cp_open(&c, w);
  put_oauth_cred(&c, w, CRED, w->access, w->refresh, "0", NULL, 1);
  cp_start(&c, 2000, 60000, 0, "cp-a");
  wait_requests(w, 1);
  int64_t start = lk_now_ms();
  Latchkey__V1__Credential *cred = NULL;
  do {
    latchkey__v1__credential__free_unpacked(cred, NULL);
    cred = read_cred(&c, CRED);
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("the failure was not recorded");
    }
  } while (cred->oauth->failures == 0);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  /* Wait until the mirror shows it too, then ask. */
  start = lk_now_ms();
  for (;;) {
    lk_status st = lk_oauth_refresh_request(atomic_load(&c.oauth), CRED, 1,
                                            lk_now_ms() + 5000, &gen, &err);
    if (st == LK_UNAVAILABLE && strstr(err.msg, "keeps failing") != NULL) {
      break;
    }
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("no fast UNAVAILABLE: %s", err.msg);
    }
    sleep_ms(20);
  }
  assert_non_null(strstr(err.msg,
                         "refreshing credential idp1 keeps failing (the token "
                         "endpoint answered HTTP 503, error "
                         "temporarily_unavailable); the next attempt is in "));
  cp_close(&c);
  world_free(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(refreshes_once_before_expiry),
      cmocka_unit_test(client_credentials_get_a_new_token_with_their_scope),
      cmocka_unit_test(two_control_planes_send_one_request_per_expiry),
      cmocka_unit_test(a_failing_provider_backs_off_then_recovers),
      cmocka_unit_test(a_refused_grant_waits_for_the_owner),
      cmocka_unit_test(claims_of_others_are_waited_for_or_taken_over),
      cmocka_unit_test(an_owner_update_during_a_refresh_wins),
      cmocka_unit_test(a_key_rotation_during_a_refresh_lands_under_the_new_key),
      cmocka_unit_test(on_demand_askers_share_one_request),
      cmocka_unit_test(
          request_about_the_generation_in_flight_gets_its_own_attempt),
      cmocka_unit_test(on_demand_during_backoff_fails_fast),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
