/*
 * local_refresh_test.c - proves sidecar/local_refresh's contract, a
 * standalone sidecar refreshing its own oauth2 credentials, on the parts
 * latchkeyd runs it on: a real RocksDB store and catalog, a node key file,
 * the standalone Admin service (credentials are created through
 * lk_admin_handle exactly as latchkeyctl would), and a real token endpoint
 * on loopback (tests/unit/token_server), whose own counters say what it
 * was asked.
 *
 * What it shows:
 *  - a credential near expiry is refreshed once: the new access token and
 *    the rotated refresh token are sealed under the node key in the store,
 *    with expires_at, version and OAuthState, and the stored count moves;
 *  - the commit lands only on the bytes read: an owner's re-authorisation
 *    made while the provider answers wins, a label change made then is
 *    kept under the new tokens (and the rotated refresh token is the one
 *    used next);
 *  - on demand: an invalid id, an unknown credential, a generation already
 *    past, a refused grant (then nothing more is asked), a provider that
 *    fails (then the backoff answers at once), a deadline (and the slow
 *    answer still lands);
 *  - concurrent on-demand requests share one token request;
 *  - stop answers a waiting request and refuses new ones.
 */
#include <ftw.h>
#include <pthread.h>
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

#include "latchkey/v1/admin.pb-c.h"
#include "lib/admin.h"
#include "lib/catalog.h"
#include "lib/clock.h"
#include "lib/metrics.h"
#include "lib/oauth.h"
#include "lib/oauth_token.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/store.h"
#include "sidecar/local_refresh.h"
#include "tests/unit/token_server.h"

#define CRED "idp1"
#define WAIT_MS 15000

typedef struct {
  char dir[1100];
  lk_store *store;
  lk_catalog *cat;
  lk_seal_key *key;
  lk_admin *admin;
  lk_metrics *metrics;
  lk_local_refresh *r;
  token_server *ts;
  char access[TS_MAX_VALUE];
  char refresh[TS_MAX_VALUE];
} fx;

static int dir_counter;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int group_setup(void **state) {
  (void)state;
  lk_err err;
  return lk_secret_init() == LK_OK && lk_oauth_token_global_init(&err) == LK_OK
             ? 0
             : -1;
}

/* Calls Admin method (short name) with m serialized. */
static lk_status admin_call(fx *f, const char *method,
                            const ProtobufCMessage *m, lk_err *err) {
  char path[128];
  unsigned char *resp = NULL;
  size_t resp_len = 0;
  size_t len = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(len + 1);
  assert_non_null(buf);
  protobuf_c_message_pack(m, buf);
  snprintf(path, sizeof(path), "/latchkey.v1.Admin/%s", method);
  lk_status st =
      lk_admin_handle(f->admin, path, buf, len, &resp, &resp_len, err);
  lk_wipe_free(buf, len);
  free(resp);
  return st;
}

/* Starts the refresher with margin_ms and retry_max_ms. */
static void start(fx *f, int64_t margin_ms, int64_t retry_max_ms) {
  lk_err err;
  lk_local_refresh_config cfg = {
      .cat = f->cat,
      .key = f->key,
      .metrics = f->metrics,
      .agent_id = "agent-1",
      .margin_ms = margin_ms,
      .retry_max_ms = retry_max_ms,
      .allow_insecure = 1,
      .token_timeout_ms = 5000,
  };
  if (lk_local_refresh_start(&cfg, &f->r, &err) != LK_OK) {
    fail_msg("start: %s", err.msg);
  }
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  char db[1200];
  char keyfile[1200];
  lk_err err;
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/local_refresh-%d-%d",
           tmp != NULL ? tmp : "/tmp", (int)getpid(), dir_counter++);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  snprintf(db, sizeof(db), "%s/db", f->dir);
  snprintf(keyfile, sizeof(keyfile), "%s/node.key", f->dir);
  if (lk_store_open(db, &f->store, &err) != LK_OK ||
      lk_catalog_open(f->store, &f->cat, &err) != LK_OK ||
      lk_seal_key_load_or_create(keyfile, &f->key, &err) != LK_OK ||
      lk_admin_new(f->cat, f->key, &f->admin, &err) != LK_OK ||
      lk_metrics_new(64, &f->metrics, &err) != LK_OK) {
    fail_msg("setup: %s", err.msg);
  }
  f->ts = ts_start();
  assert_non_null(f->ts);
  ts_set_client(f->ts, TS_CLIENT_ID, TS_CLIENT_SECRET);
  ts_seed(f->ts, f->access, f->refresh, sizeof(f->access));
  Latchkey__V1__CredentialType type = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  type.id = (char *)"idp";
  type.kind = (char *)"oauth2";
  if (admin_call(f, "RegisterCredentialType", &type.base, &err) != LK_OK) {
    fail_msg("register type: %s", err.msg);
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  lk_local_refresh_destroy(f->r);
  lk_admin_destroy(f->admin);
  lk_metrics_destroy(f->metrics);
  lk_seal_key_destroy(f->key);
  lk_catalog_destroy(f->cat);
  lk_store_close(f->store);
  ts_stop(f->ts);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* Creates oauth2 credential CRED with the seeded tokens, expiring in
 * expires_in_s seconds. */
static void create(fx *f, int64_t expires_in_s) {
  char exp[24];
  lk_err err;
  snprintf(exp, sizeof(exp), "%lld",
           (long long)(lk_wall_ms() / 1000 + expires_in_s));
  const char *kv[] = {
      LK_OAUTH_ACCESS_TOKEN,  f->access,
      LK_OAUTH_REFRESH_TOKEN, f->refresh,
      LK_OAUTH_EXPIRES_AT,    exp,
      LK_OAUTH_TOKEN_URL,     ts_url(f->ts),
      LK_OAUTH_CLIENT_ID,     TS_CLIENT_ID,
      LK_OAUTH_CLIENT_SECRET, TS_CLIENT_SECRET,
  };
  Latchkey__V1__CreateCredentialRequest__FieldsEntry e[6];
  Latchkey__V1__CreateCredentialRequest__FieldsEntry *es[6];
  Latchkey__V1__CreateCredentialRequest r =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__INIT;
  for (size_t i = 0; i < 6; i++) {
    latchkey__v1__create_credential_request__fields_entry__init(&e[i]);
    e[i].key = (char *)kv[2 * i];
    e[i].value = (char *)kv[2 * i + 1];
    es[i] = &e[i];
  }
  r.type = (char *)"idp";
  r.id = (char *)CRED;
  r.label = (char *)"me";
  r.fields = es;
  r.n_fields = 6;
  if (admin_call(f, "CreateCredential", &r.base, &err) != LK_OK) {
    fail_msg("create: %s", err.msg);
  }
}

static Latchkey__V1__Credential *read_cred(fx *f) {
  Latchkey__V1__Credential *c = NULL;
  lk_err err;
  assert_int_equal(lk_catalog_get_credential(f->cat, CRED, &c, &err), LK_OK);
  return c;
}

static uint64_t generation(fx *f) {
  Latchkey__V1__Credential *c = read_cred(f);
  uint64_t g = c->oauth->generation;
  lk_catalog_free_credential(c);
  return g;
}

/* Opens sealed field name of c with the node key into out. */
static void unseal(fx *f, const Latchkey__V1__Credential *c, const char *name,
                   char *out, size_t cap) {
  lk_err err;
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *v = c->fields[i];
    if (strcmp(v->name, name) != 0) {
      continue;
    }
    assert_true(v->secret);
    assert_int_equal(v->sealed->key_id, lk_seal_key_id(f->key));
    lk_secret *pt = NULL;
    assert_int_equal(
        lk_unseal(f->key, v->sealed->key_id, c->id, name, v->sealed->nonce.data,
                  v->sealed->nonce.len, v->sealed->ciphertext.data,
                  v->sealed->ciphertext.len, &pt, &err),
        LK_OK);
    assert_true(lk_secret_len(pt) < cap);
    memcpy(out, lk_secret_data(pt), lk_secret_len(pt));
    out[lk_secret_len(pt)] = '\0';
    lk_secret_free(pt);
    return;
  }
  fail_msg("no field %s", name);
}

static void wait_generation(fx *f, uint64_t want) {
  int64_t end = lk_now_ms() + WAIT_MS;
  while (generation(f) < want) {
    if (lk_now_ms() > end) {
      fail_msg("generation %llu never came", (unsigned long long)want);
    }
    usleep(20 * 1000);
  }
}

/* ---- tests -------------------------------------------------------------- */

static void refreshes_once_before_expiry_under_the_node_key(void **state) {
  fx *f = *state;
  char got[TS_MAX_VALUE];
  char now_access[TS_MAX_VALUE];
  start(f, 2000, 1000);
  uint64_t seen = lk_local_refresh_stored_count(f->r);
  create(f, 3); /* due 2 s before expiry: in about a second */
  lk_local_refresh_changed(f->r);
  assert_int_not_equal(
      lk_local_refresh_wait_stored(f->r, seen, lk_now_ms() + WAIT_MS), seen);
  int64_t refreshed_at = lk_wall_ms();
  wait_generation(f, 2);
  Latchkey__V1__Credential *c = read_cred(f);
  assert_int_equal(c->version, 2);
  assert_string_equal(c->oauth->last_refresh_result, "ok");
  assert_int_equal(c->oauth->failures, 0);
  assert_true(c->oauth->last_success_at <= refreshed_at);
  int64_t exp = lk_oauth_expires_at_ms(c);
  assert_true(exp > refreshed_at + 3500 * 1000LL);
  ts_current_access(f->ts, now_access, sizeof(now_access));
  unseal(f, c, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, now_access);
  unseal(f, c, LK_OAUTH_REFRESH_TOKEN, got, sizeof(got));
  assert_string_not_equal(got, f->refresh); /* rotated */
  unseal(f, c, LK_OAUTH_CLIENT_SECRET, got, sizeof(got));
  assert_string_equal(got, TS_CLIENT_SECRET);
  lk_catalog_free_credential(c);
  ts_request rq;
  assert_true(ts_request_at(f->ts, 0, &rq));
  assert_string_equal(rq.grant_type, "refresh_token");
  assert_string_equal(rq.refresh_token, f->refresh);
  /* Nothing more while the new token lives an hour. */
  usleep(1500 * 1000);
  ts_stats s = ts_get_stats(f->ts);
  assert_int_equal(s.requests, 1);
  assert_int_equal(s.reuse, 0);
  assert_int_equal(generation(f), 2);
}

/* Starts a token request that takes 1.5 s and returns once it is there. */
static void slow_refresh_in_flight(fx *f) {
  ts_set_delay_ms(f->ts, 1500);
  start(f, 2000, 1000);
  create(f, 1); /* inside the margin: due at once */
  lk_local_refresh_changed(f->r);
  int64_t end = lk_now_ms() + WAIT_MS;
  while (ts_get_stats(f->ts).requests == 0) {
    if (lk_now_ms() > end) {
      fail_msg("no token request");
    }
    usleep(10 * 1000);
  }
}

static void a_label_update_during_a_refresh_is_kept_under_the_new_tokens(
    void **state) {
  fx *f = *state;
  lk_err err;
  char got[TS_MAX_VALUE];
  char now_access[TS_MAX_VALUE];
  slow_refresh_in_flight(f);
  Latchkey__V1__UpdateCredentialRequest u =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__INIT;
  u.id = (char *)CRED;
  u.label = (char *)"renamed";
  assert_int_equal(admin_call(f, "UpdateCredential", &u.base, &err), LK_OK);
  wait_generation(f, 2);
  Latchkey__V1__Credential *c = read_cred(f);
  /* Both changes: the owner's label and the provider's tokens. */
  assert_string_equal(c->label, "renamed");
  assert_int_equal(c->version, 3);
  assert_string_equal(c->oauth->last_refresh_result, "ok");
  ts_current_access(f->ts, now_access, sizeof(now_access));
  unseal(f, c, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, now_access);
  lk_catalog_free_credential(c);
  /* The rotated refresh token is the one the next refresh presents. */
  ts_set_delay_ms(f->ts, 0);
  uint64_t gen = 0;
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 2, INT64_MAX, &gen, &err), LK_OK);
  assert_int_equal(gen, 3);
  ts_stats s = ts_get_stats(f->ts);
  assert_int_equal(s.requests, 2);
  assert_int_equal(s.reuse, 0);
}

static void a_reauthorisation_during_a_refresh_wins(void **state) {
  fx *f = *state;
  lk_err err;
  char got[TS_MAX_VALUE];
  char owner_access[TS_MAX_VALUE];
  char owner_refresh[TS_MAX_VALUE];
  slow_refresh_in_flight(f);
  /* The owner stores tokens of a new consent meanwhile. */
  ts_seed(f->ts, owner_access, owner_refresh, sizeof(owner_access));
  char exp[24];
  snprintf(exp, sizeof(exp), "%lld", (long long)(lk_wall_ms() / 1000 + 3600));
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry e[3];
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry *es[3] = {&e[0], &e[1],
                                                               &e[2]};
  for (int i = 0; i < 3; i++) {
    latchkey__v1__update_credential_request__fields_entry__init(&e[i]);
  }
  e[0].key = (char *)LK_OAUTH_ACCESS_TOKEN;
  e[0].value = owner_access;
  e[1].key = (char *)LK_OAUTH_REFRESH_TOKEN;
  e[1].value = owner_refresh;
  e[2].key = (char *)LK_OAUTH_EXPIRES_AT;
  e[2].value = exp;
  Latchkey__V1__UpdateCredentialRequest u =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__INIT;
  u.id = (char *)CRED;
  u.fields = es;
  u.n_fields = 3;
  assert_int_equal(admin_call(f, "UpdateCredential", &u.base, &err), LK_OK);
  assert_int_equal(generation(f), 2); /* the owner's */
  /* The provider's late answer is dropped: the owner's tokens stay. */
  usleep(2000 * 1000);
  Latchkey__V1__Credential *c = read_cred(f);
  assert_int_equal(c->oauth->generation, 2);
  assert_string_equal(c->oauth->last_refresh_result,
                      "re-authorised by the owner");
  unseal(f, c, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, owner_access);
  unseal(f, c, LK_OAUTH_REFRESH_TOKEN, got, sizeof(got));
  assert_string_equal(got, owner_refresh);
  lk_catalog_free_credential(c);
  assert_int_equal(ts_get_stats(f->ts).requests, 1);
}

static void a_delete_during_a_refresh_stays_deleted(void **state) {
  fx *f = *state;
  lk_err err;
  slow_refresh_in_flight(f);
  uint64_t seen = lk_local_refresh_stored_count(f->r);
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;
  d.id = (char *)CRED;
  assert_int_equal(admin_call(f, "DeleteCredential", &d.base, &err), LK_OK);
  usleep(2000 * 1000); /* the provider has answered */
  Latchkey__V1__Credential *gone = NULL;
  assert_int_equal(lk_catalog_get_credential(f->cat, CRED, &gone, &err),
                   LK_NOT_FOUND);
  assert_int_equal(lk_local_refresh_stored_count(f->r), seen);
  assert_int_equal(ts_get_stats(f->ts).requests, 1);
}

static void on_demand_answers_with_exact_codes(void **state) {
  fx *f = *state;
  lk_err err;
  uint64_t gen = 0;
  start(f, 2000, 60000);
  create(f, 3600);
  assert_int_equal(
      lk_local_refresh_request(f->r, "bad/id", 1, INT64_MAX, &gen, &err),
      LK_INVALID_ARGUMENT);
  assert_int_equal(
      lk_local_refresh_request(f->r, "nope", 1, INT64_MAX, &gen, &err),
      LK_NOT_FOUND);
  /* Generation 0 was refused; the store holds 1: nothing to ask. */
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 0, INT64_MAX, &gen, &err), LK_OK);
  assert_int_equal(gen, 1);
  assert_int_equal(ts_get_stats(f->ts).requests, 0);
  /* Generation 1 refused: one token request, a new generation. */
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 1, INT64_MAX, &gen, &err), LK_OK);
  assert_int_equal(gen, 2);
  assert_int_equal(generation(f), 2);
  assert_int_equal(ts_get_stats(f->ts).requests, 1);
  /* The provider refuses the grant: FAILED_PRECONDITION, stored. */
  ts_set_mode(f->ts, TS_INVALID_GRANT);
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 2, INT64_MAX, &gen, &err),
      LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, "must be re-authorised by its owner"));
  Latchkey__V1__Credential *c = read_cred(f);
  assert_true(c->oauth->reauthorize);
  assert_int_equal(c->oauth->generation, 2);
  lk_catalog_free_credential(c);
  /* Asked again: answered at once, nothing sent. */
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 2, INT64_MAX, &gen, &err),
      LK_FAILED_PRECONDITION);
  assert_int_equal(ts_get_stats(f->ts).requests, 2);
}

static void on_demand_during_backoff_fails_fast(void **state) {
  fx *f = *state;
  lk_err err;
  uint64_t gen = 0;
  start(f, 2000, 60000);
  create(f, 3600);
  ts_set_mode(f->ts, TS_FAIL);
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 1, INT64_MAX, &gen, &err),
      LK_UNAVAILABLE);
  assert_non_null(strstr(err.msg, "latchkeyd retries with backoff"));
  assert_int_equal(ts_get_stats(f->ts).requests, 1);
  Latchkey__V1__Credential *c = read_cred(f);
  assert_int_equal(c->oauth->failures, 1);
  assert_false(c->oauth->reauthorize);
  assert_true(c->oauth->next_attempt_at > lk_wall_ms());
  lk_catalog_free_credential(c);
  /* In backoff: answered at once, nothing sent. */
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 1, INT64_MAX, &gen, &err),
      LK_UNAVAILABLE);
  assert_non_null(strstr(err.msg, "keeps failing"));
  assert_int_equal(ts_get_stats(f->ts).requests, 1);
}

static void on_demand_ends_at_its_deadline(void **state) {
  fx *f = *state;
  lk_err err;
  uint64_t gen = 0;
  start(f, 2000, 1000);
  create(f, 3600);
  ts_set_delay_ms(f->ts, 1500);
  int64_t t0 = lk_now_ms();
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 1, t0 + 400, &gen, &err),
      LK_DEADLINE_EXCEEDED);
  int64_t took = lk_now_ms() - t0;
  assert_true(took >= 390 && took < 1400);
  assert_non_null(strstr(err.msg, "before the deadline"));
  /* The slow answer lands after all. */
  wait_generation(f, 2);
  assert_int_equal(ts_get_stats(f->ts).requests, 1);
}

typedef struct {
  fx *f;
  uint64_t asked; /* 0: 1 */
  lk_status st;
  uint64_t gen;
  lk_err err;
} asker;

static void *ask(void *arg) {
  asker *a = arg;
  a->st = lk_local_refresh_request(a->f->r, CRED, a->asked ? a->asked : 1,
                                   lk_now_ms() + WAIT_MS, &a->gen, &a->err);
  return NULL;
}

static void on_demand_askers_share_one_request(void **state) {
  fx *f = *state;
  pthread_t th[6];
  asker a[6];
  start(f, 2000, 1000);
  create(f, 3600);
  ts_set_delay_ms(f->ts, 500);
  for (int i = 0; i < 6; i++) {
    memset(&a[i], 0, sizeof(a[i]));
    a[i].f = f;
    assert_int_equal(pthread_create(&th[i], NULL, ask, &a[i]), 0);
  }
  for (int i = 0; i < 6; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(a[i].st, LK_OK);
    assert_int_equal(a[i].gen, 2);
  }
  ts_stats s = ts_get_stats(f->ts);
  assert_int_equal(s.requests, 1);
  assert_int_equal(s.reuse, 0);
}

/* A request about the generation the attempt in flight is about to make
 * (seen refused before the attempt had finished) gets an attempt of its
 * own afterwards instead of waiting out its deadline. */
static void request_about_the_generation_in_flight_gets_its_own_attempt(
    void **state) {
  fx *f = *state;
  start(f, 2000, 1000);
  create(f, 3600);
  ts_set_delay_ms(f->ts, 600);
  asker first, second;
  memset(&first, 0, sizeof(first));
  memset(&second, 0, sizeof(second));
  first.f = second.f = f;
  first.asked = 1;
  second.asked = 2;
  pthread_t t1, t2;
  assert_int_equal(pthread_create(&t1, NULL, ask, &first), 0);
  int64_t end = lk_now_ms() + WAIT_MS;
  while (ts_get_stats(f->ts).requests == 0) {
    if (lk_now_ms() > end) {
      fail_msg("no token request");
    }
    usleep(10 * 1000);
  }
  assert_int_equal(pthread_create(&t2, NULL, ask, &second), 0);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  if (first.st != LK_OK)
    fail_msg("first asker: %s", first.err.msg);
  if (second.st != LK_OK)
    fail_msg("second asker: %s", second.err.msg);
  assert_int_equal(first.gen, 2);
  assert_int_equal(second.gen, 3);
  assert_int_equal(ts_get_stats(f->ts).requests, 2);
}

static void stop_answers_a_waiting_request(void **state) {
  fx *f = *state;
  pthread_t th;
  asker a;
  memset(&a, 0, sizeof(a));
  a.f = f;
  lk_err err;
  uint64_t gen = 0;
  start(f, 2000, 1000);
  create(f, 3600);
  ts_set_delay_ms(f->ts, 3000);
  assert_int_equal(pthread_create(&th, NULL, ask, &a), 0);
  int64_t end = lk_now_ms() + WAIT_MS;
  while (ts_get_stats(f->ts).requests == 0 && lk_now_ms() < end) {
    usleep(10 * 1000);
  }
  int64_t t0 = lk_now_ms();
  lk_local_refresh_stop(f->r);
  pthread_join(th, NULL);
  assert_int_equal(a.st, LK_UNAVAILABLE);
  assert_true(lk_now_ms() - t0 < 2500); /* the token request was cut short */
  assert_int_equal(generation(f), 1);   /* nothing stored */
  assert_int_equal(
      lk_local_refresh_request(f->r, CRED, 1, INT64_MAX, &gen, &err),
      LK_UNAVAILABLE);
  lk_local_refresh_stop(f->r); /* idempotent */
}

static void start_needs_its_parts(void **state) {
  fx *f = *state;
  lk_err err;
  lk_local_refresh *r = NULL;
  lk_local_refresh_config cfg = {.key = f->key}; /* no catalog */
  assert_int_equal(lk_local_refresh_start(&cfg, &r, &err), LK_INVALID_ARGUMENT);
  assert_null(r);
  lk_local_refresh_destroy(NULL);
  lk_local_refresh_changed(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          refreshes_once_before_expiry_under_the_node_key, setup, teardown),
      cmocka_unit_test_setup_teardown(
          a_label_update_during_a_refresh_is_kept_under_the_new_tokens, setup,
          teardown),
      cmocka_unit_test_setup_teardown(a_reauthorisation_during_a_refresh_wins,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(a_delete_during_a_refresh_stays_deleted,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(on_demand_answers_with_exact_codes, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(on_demand_during_backoff_fails_fast,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(on_demand_ends_at_its_deadline, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(on_demand_askers_share_one_request, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          request_about_the_generation_in_flight_gets_its_own_attempt, setup,
          teardown),
      cmocka_unit_test_setup_teardown(stop_answers_a_waiting_request, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(start_needs_its_parts, setup, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
