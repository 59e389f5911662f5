/*
 * cred_race_test.c - proves that credential writes on the control plane
 * never lose one another: lib/admin over the control plane's etcd catalog
 * (controlplane/etcd_catalog, with the key-ring fence and the control
 * plane's sealer) against a real single-node etcd
 * (tests/unit/etcd_fixture), other control planes on the same prefix, and
 * the OAuth refresher (controlplane/oauth_refresh) asking a real token
 * endpoint on loopback (tests/unit/token_server).
 *
 * Races are made deterministic through the Admin sealer: UpdateCredential
 * re-seals the secret values it keeps after it has read the credential
 * from its mirror and before it commits, and the test's sealer (the
 * control plane's own, lk_reseal_admin_sealer, wrapped) runs the racing
 * write right there, the first time it is called.
 *
 * What it shows, reading back from etcd itself:
 *  - a label update racing a refresher's commit keeps the refreshed tokens
 *    and OAuthState: the update is built once more on a fresh read;
 *  - an update racing a delete on another control plane answers NOT_FOUND
 *    and does not bring the credential back;
 *  - two control planes updating one credential, in a forced race and
 *    free-running, lose nothing: every field either one set lands, and
 *    every update got a version of its own;
 *  - the refresher, whose provider answers while the owner changes the
 *    label, commits the new tokens on top of that change, and the rotated
 *    refresh token is the one stored (the next refresh is no reuse); a
 *    credential deleted while the provider answers stays deleted.
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
#include "controlplane/oauth_refresh.h"
#include "controlplane/reseal.h"
#include "latchkey/v1/admin.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/admin.h"
#include "lib/catalog.h"
#include "lib/clock.h"
#include "lib/etcd.h"
#include "lib/keyring.h"
#include "lib/oauth.h"
#include "lib/oauth_token.h"
#include "lib/secret.h"
#include "lib/status.h"
#include "tests/unit/etcd_fixture.h"
#include "tests/unit/token_server.h"

#define WAIT_MS 20000
#define CRED "cr1"
#define TYPE_ID "idp"
#define RACE_UPDATES 30

static etcd_fx g_etcd;

/* The control plane's sealer with a racing write run at the first
 * re-seal, once. */
typedef struct {
  lk_admin_sealer inner;
  void (*_Atomic race)(void *ctx);
  void *race_ctx;
  atomic_int reseals;
} hooked_sealer;

/* One control plane's parts. */
typedef struct {
  lk_etcd *etcd;
  lk_etcd_catalog *ecat;
  lk_keyring *kr;
  hooked_sealer hs;
  lk_admin *admin;
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
  etcd_fx_world(&g_etcd, "race", w->prefix, sizeof(w->prefix), w->ring,
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

static lk_status hooked_seal(void *ctx, const char *cred_id, const char *field,
                             const unsigned char *pt, size_t len,
                             uint32_t *key_id,
                             unsigned char nonce[LK_SEAL_NONCE_BYTES],
                             unsigned char **ct, size_t *ct_len, lk_err *err) {
  hooked_sealer *h = ctx;
  return h->inner.seal(h->inner.ctx, cred_id, field, pt, len, key_id, nonce, ct,
                       ct_len, err);
}

static lk_status hooked_reseal(void *ctx, const char *cred_id,
                               const char *field,
                               const Latchkey__V1__SealedValue *stored,
                               int *changed, uint32_t *key_id,
                               unsigned char nonce[LK_SEAL_NONCE_BYTES],
                               unsigned char **ct, size_t *ct_len,
                               lk_err *err) {
  hooked_sealer *h = ctx;
  atomic_fetch_add(&h->reseals, 1);
  void (*race)(void *) = atomic_exchange(&h->race, NULL);
  if (race != NULL) {
    race(h->race_ctx);
  }
  return h->inner.reseal(h->inner.ctx, cred_id, field, stored, changed, key_id,
                         nonce, ct, ct_len, err);
}

static void on_change(void *ctx, int64_t revision) {
  cp_fx *c = ctx;
  (void)revision;
  lk_oauth_refresh_changed(atomic_load(&c->oauth));
}

/* Opens a control plane as latchkey-cp does: etcd, the catalog with the
 * fence, the key ring, Admin with the ring's sealer (hooked). */
static void cp_open(cp_fx *c, const world *w) {
  lk_err err;
  memset(c, 0, sizeof(*c));
  if (lk_etcd_open(g_etcd.ep, w->prefix, &c->etcd, &err) != LK_OK ||
      lk_etcd_catalog_open(c->etcd, on_change, c, &c->ecat, &err) != LK_OK ||
      lk_keyring_load_or_create(w->ring, &c->kr, &err) != LK_OK ||
      lk_etcd_catalog_use_fence(c->ecat, c->kr, &err) != LK_OK) {
    fail_msg("open control plane: %s", err.msg);
  }
  c->hs.inner = lk_reseal_admin_sealer(c->kr);
  lk_admin_sealer sealer = {hooked_seal, &c->hs, hooked_reseal};
  if (lk_admin_new_with_sealer(lk_etcd_catalog_catalog(c->ecat), sealer,
                               &c->admin, &err) != LK_OK) {
    fail_msg("admin: %s", err.msg);
  }
}

/* Starts c's refresher (margin 2 s, short claims). */
static void cp_start(cp_fx *c, const char *id) {
  lk_err err;
  lk_oauth_refresh *r = NULL;
  lk_oauth_refresh_config cfg = {
      .etcd = c->etcd,
      .cat = lk_etcd_catalog_catalog(c->ecat),
      .kr = c->kr,
      .margin_ms = 2000,
      .allow_insecure = 1,
      .token_timeout_ms = 5000,
      .claim_ttl_ms = 10000,
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
  lk_admin_destroy(c->admin);
  lk_etcd_catalog_destroy(c->ecat);
  lk_oauth_refresh_destroy(r);
  lk_etcd_close(c->etcd);
  lk_keyring_destroy(c->kr);
  memset(c, 0, sizeof(*c));
}

/* ---- Admin -------------------------------------------------------------- */

/* Calls Admin method (short name) with m; returns the status, and the
 * answer's version in *version when it is a Credential (may be NULL). */
static lk_status admin(cp_fx *c, const char *method, const ProtobufCMessage *m,
                       uint64_t *version, lk_err *err) {
  char path[128];
  size_t len = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(len + 1);
  unsigned char *resp = NULL;
  size_t resp_len = 0;
  assert_non_null(buf);
  protobuf_c_message_pack(m, buf);
  snprintf(path, sizeof(path), "/latchkey.v1.Admin/%s", method);
  lk_status st =
      lk_admin_handle(c->admin, path, buf, len, &resp, &resp_len, err);
  lk_wipe_free(buf, len);
  if (st == LK_OK && version != NULL) {
    Latchkey__V1__Credential *cred =
        latchkey__v1__credential__unpack(NULL, resp_len, resp);
    assert_non_null(cred);
    *version = cred->version;
    latchkey__v1__credential__free_unpacked(cred, NULL);
  }
  free(resp);
  return st;
}

static void admin_ok(cp_fx *c, const char *method, const ProtobufCMessage *m) {
  lk_err err;
  lk_status st = admin(c, method, m, NULL, &err);
  if (st != LK_OK) {
    fail_msg("%s: %s: %s", method, lk_status_name(st), err.msg);
  }
}

/* Registers the oauth2 type TYPE_ID (its fields are the standard ones). */
static void register_type(cp_fx *c) {
  Latchkey__V1__CredentialType type = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  type.id = (char *)TYPE_ID;
  type.kind = (char *)LK_OAUTH_KIND;
  admin_ok(c, "RegisterCredentialType", &type.base);
}

/* Creates oauth2 credential CRED at w's token endpoint with w's seeded
 * tokens, expiring in expires_in_s seconds. */
static void create_cred(cp_fx *c, const world *w, int64_t expires_in_s) {
  char expires[24];
  snprintf(expires, sizeof(expires), "%lld",
           (long long)(lk_wall_ms() / 1000 + expires_in_s));
  const char *kv[] = {
      LK_OAUTH_ACCESS_TOKEN,  w->access,
      LK_OAUTH_REFRESH_TOKEN, w->refresh,
      LK_OAUTH_EXPIRES_AT,    expires,
      LK_OAUTH_TOKEN_URL,     ts_url(w->ts),
      LK_OAUTH_CLIENT_ID,     TS_CLIENT_ID,
      LK_OAUTH_CLIENT_SECRET, TS_CLIENT_SECRET,
  };
  Latchkey__V1__CreateCredentialRequest__FieldsEntry e[6];
  Latchkey__V1__CreateCredentialRequest__FieldsEntry *es[6];
  for (size_t i = 0; i < 6; i++) {
    latchkey__v1__create_credential_request__fields_entry__init(&e[i]);
    e[i].key = (char *)kv[2 * i];
    e[i].value = (char *)kv[2 * i + 1];
    es[i] = &e[i];
  }
  Latchkey__V1__CreateCredentialRequest r =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__INIT;
  r.type = (char *)TYPE_ID;
  r.id = (char *)CRED;
  r.label = (char *)"created";
  r.fields = es;
  r.n_fields = 6;
  admin_ok(c, "CreateCredential", &r.base);
}

/* Updates CRED: label (NULL: kept) and the plain fields in kv (n pairs). */
static lk_status update(cp_fx *c, const char *label, const char *const *kv,
                        size_t n, uint64_t *version, lk_err *err) {
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry e[4];
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry *es[4];
  assert_true(n <= 4);
  for (size_t i = 0; i < n; i++) {
    latchkey__v1__update_credential_request__fields_entry__init(&e[i]);
    e[i].key = (char *)kv[2 * i];
    e[i].value = (char *)kv[2 * i + 1];
    es[i] = &e[i];
  }
  Latchkey__V1__UpdateCredentialRequest r =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__INIT;
  r.id = (char *)CRED;
  r.label = (char *)(label != NULL ? label : "");
  r.fields = es;
  r.n_fields = n;
  return admin(c, "UpdateCredential", &r.base, version, err);
}

static lk_status delete_cred(cp_fx *c, lk_err *err) {
  Latchkey__V1__DeleteRequest r = LATCHKEY__V1__DELETE_REQUEST__INIT;
  r.id = (char *)CRED;
  return admin(c, "DeleteCredential", &r.base, NULL, err);
}

/* Status of GetCredential CRED on c (what its mirror holds). */
static lk_status get_status(cp_fx *c) {
  Latchkey__V1__GetRequest r = LATCHKEY__V1__GET_REQUEST__INIT;
  lk_err err;
  r.id = (char *)CRED;
  return admin(c, "GetCredential", &r.base, NULL, &err);
}

/* Waits (bounded) until c's mirror holds CRED. */
static void wait_mirrored(cp_fx *c) {
  int64_t start = lk_now_ms();
  while (get_status(c) != LK_OK) {
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("credential %s did not reach the other control plane", CRED);
    }
    usleep(10 * 1000);
  }
}

/* ---- etcd itself -------------------------------------------------------- */

/* Reads CRED from etcd (NULL when absent), its mod revision in *mod. */
static Latchkey__V1__Credential *etcd_cred(cp_fx *c, int64_t *mod) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  lk_status st = lk_etcd_get(c->etcd, "cred/" CRED, &val, &len, mod, &err);
  if (st == LK_NOT_FOUND) {
    return NULL;
  }
  if (st != LK_OK) {
    fail_msg("etcd get: %s", err.msg);
  }
  Latchkey__V1__Credential *cred =
      latchkey__v1__credential__unpack(NULL, len, val);
  lk_etcd_value_free(val, len);
  assert_non_null(cred);
  return cred;
}

static const Latchkey__V1__FieldValue *field_of(
    const Latchkey__V1__Credential *cred, const char *name) {
  for (size_t i = 0; i < cred->n_fields; i++) {
    if (strcmp(cred->fields[i]->name, name) == 0) {
      return cred->fields[i];
    }
  }
  fail_msg("credential %s has no field %s", cred->id, name);
  return NULL;
}

/* Unseals secret field name of cred into out. */
static void unseal(cp_fx *c, const Latchkey__V1__Credential *cred,
                   const char *name, char *out, size_t cap) {
  const Latchkey__V1__FieldValue *f = field_of(cred, name);
  lk_secret *pt = NULL;
  lk_err err;
  assert_true(f->secret);
  assert_non_null(f->sealed);
  if (lk_keyring_unseal(c->kr, f->sealed->key_id, cred->id, name,
                        f->sealed->nonce.data, f->sealed->nonce.len,
                        f->sealed->ciphertext.data, f->sealed->ciphertext.len,
                        &pt, &err) != LK_OK) {
    fail_msg("unseal %s: %s", name, err.msg);
  }
  snprintf(out, cap, "%s", lk_secret_str(pt));
  lk_secret_free(pt);
}

/* ---- racing writes ------------------------------------------------------ */

/* Storage for one sealed value of a record built here. */
typedef struct {
  Latchkey__V1__FieldValue fv;
  Latchkey__V1__SealedValue sv;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
} sealed_field;

static void seal_field(cp_fx *c, sealed_field *s, const char *name,
                       const char *value) {
  lk_err err;
  size_t ct_len = 0;
  latchkey__v1__field_value__init(&s->fv);
  latchkey__v1__sealed_value__init(&s->sv);
  if (lk_keyring_seal(c->kr, CRED, name, (const unsigned char *)value,
                      strlen(value), &s->sv.key_id, s->nonce, &s->ct, &ct_len,
                      &err) != LK_OK) {
    fail_msg("seal: %s", err.msg);
  }
  s->fv.name = (char *)name;
  s->fv.secret = 1;
  s->fv.sealed = &s->sv;
  s->sv.nonce.data = s->nonce;
  s->sv.nonce.len = sizeof(s->nonce);
  s->sv.ciphertext.data = s->ct;
  s->sv.ciphertext.len = ct_len;
}

/* What a refresher commits, written straight to etcd under the
 * credential's mod revision: new access and rotated refresh tokens,
 * OAuthState generation + 1, version + 1. */
typedef struct {
  cp_fx *c;
  const char *access;
  const char *refresh;
} refresh_race;

static void commit_refresh(void *ctx) {
  refresh_race *rr = ctx;
  int64_t mod = 0;
  Latchkey__V1__Credential *cur = etcd_cred(rr->c, &mod);
  assert_non_null(cur);
  assert_non_null(cur->oauth);
  sealed_field at;
  sealed_field rt;
  seal_field(rr->c, &at, LK_OAUTH_ACCESS_TOKEN, rr->access);
  seal_field(rr->c, &rt, LK_OAUTH_REFRESH_TOKEN, rr->refresh);
  Latchkey__V1__FieldValue **fields = calloc(cur->n_fields, sizeof(*fields));
  assert_non_null(fields);
  for (size_t i = 0; i < cur->n_fields; i++) {
    const char *name = cur->fields[i]->name;
    fields[i] = strcmp(name, LK_OAUTH_ACCESS_TOKEN) == 0    ? &at.fv
                : strcmp(name, LK_OAUTH_REFRESH_TOKEN) == 0 ? &rt.fv
                                                            : cur->fields[i];
  }
  Latchkey__V1__OAuthState st = *cur->oauth;
  st.generation++;
  st.last_refresh_at = lk_wall_ms();
  st.last_success_at = st.last_refresh_at;
  st.last_refresh_result = (char *)"ok";
  Latchkey__V1__Credential next = *cur;
  next.fields = fields;
  next.oauth = &st;
  next.version = cur->version + 1;
  next.updated_at = st.last_refresh_at;
  size_t len = latchkey__v1__credential__get_packed_size(&next);
  unsigned char *buf = malloc(len);
  assert_non_null(buf);
  latchkey__v1__credential__pack(&next, buf);
  lk_etcd_txn *t = lk_etcd_txn_new();
  lk_err err;
  assert_non_null(t);
  lk_etcd_txn_expect_mod_revision(t, "cred/" CRED, mod);
  lk_etcd_txn_put(t, "cred/" CRED, buf, len);
  lk_status s = lk_etcd_txn_commit(rr->c->etcd, t, NULL, &err);
  lk_etcd_txn_destroy(t);
  lk_wipe_free(buf, len);
  free(fields);
  free(at.ct);
  free(rt.ct);
  latchkey__v1__credential__free_unpacked(cur, NULL);
  if (s != LK_OK) {
    fail_msg("refresher-style commit: %s", err.msg);
  }
}

static void a_label_update_racing_a_refresh_keeps_the_refreshed_tokens(
    void **state) {
  (void)state;
  world *w = world_new();
  cp_fx a;
  char got[TS_MAX_VALUE];
  uint64_t version = 0;
  lk_err err;
  cp_open(&a, w);
  register_type(&a);
  create_cred(&a, w, 3600);
  /* The refresh lands after the update read the credential from the
   * mirror and before it commits. */
  refresh_race rr = {&a, "at-refreshed-8Yq2", "rt-rotated-3Kd7"};
  a.hs.race_ctx = &rr;
  atomic_store(&a.hs.race, commit_refresh);
  lk_status st = update(&a, "renamed", NULL, 0, &version, &err);
  if (st != LK_OK) {
    fail_msg("update: %s: %s", lk_status_name(st), err.msg);
  }
  assert_null(atomic_load(&a.hs.race));
  Latchkey__V1__Credential *cred = etcd_cred(&a, NULL);
  assert_non_null(cred);
  assert_string_equal(cred->label, "renamed");
  assert_int_equal(cred->version, 3);
  assert_int_equal(cred->oauth->generation, 2);
  assert_string_equal(cred->oauth->last_refresh_result, "ok");
  assert_false(cred->oauth->reauthorize);
  unseal(&a, cred, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, "at-refreshed-8Yq2");
  unseal(&a, cred, LK_OAUTH_REFRESH_TOKEN, got, sizeof(got));
  assert_string_equal(got, "rt-rotated-3Kd7");
  unseal(&a, cred, LK_OAUTH_CLIENT_SECRET, got, sizeof(got));
  assert_string_equal(got, TS_CLIENT_SECRET);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  /* create 1, refresh 2, update 3: built twice, and each run re-sealed
   * the three secret values it keeps. */
  assert_int_equal(version, 3);
  assert_int_equal(atomic_load(&a.hs.reseals), 6);
  cp_close(&a);
  world_free(w);
}

/* Another control plane's Admin request, run as a race. */
typedef struct {
  cp_fx *other;
  int del; /* delete; else set client_id to value */
  const char *value;
} admin_race;

static void run_admin_race(void *ctx) {
  admin_race *ar = ctx;
  lk_err err;
  lk_status st;
  if (ar->del) {
    st = delete_cred(ar->other, &err);
  } else {
    const char *kv[] = {LK_OAUTH_CLIENT_ID, ar->value};
    st = update(ar->other, NULL, kv, 1, NULL, &err);
  }
  if (st != LK_OK) {
    fail_msg("racing Admin write: %s: %s", lk_status_name(st), err.msg);
  }
}

static void an_update_racing_a_delete_elsewhere_does_not_bring_it_back(
    void **state) {
  (void)state;
  world *w = world_new();
  cp_fx a;
  cp_fx b;
  lk_err err;
  cp_open(&a, w);
  cp_open(&b, w);
  register_type(&a);
  create_cred(&a, w, 3600);
  wait_mirrored(&b);
  admin_race ar = {&b, 1, NULL};
  a.hs.race_ctx = &ar;
  atomic_store(&a.hs.race, run_admin_race);
  assert_int_equal(update(&a, "renamed", NULL, 0, NULL, &err), LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "credential '" CRED "' not found"));
  assert_null(atomic_load(&a.hs.race));
  assert_null(etcd_cred(&a, NULL));
  assert_int_equal(get_status(&a), LK_NOT_FOUND);
  assert_int_equal(get_status(&b), LK_NOT_FOUND);
  cp_close(&b);
  cp_close(&a);
  world_free(w);
}

/* Free-running updates of CRED through one control plane. */
typedef struct {
  cp_fx *c;
  int label; /* 1: label and scope; 0: client_id */
  uint64_t versions[RACE_UPDATES];
  int failures;
  char first_failure[600];
} racer;

static void *race_updates(void *arg) {
  racer *r = arg;
  for (int i = 0; i < RACE_UPDATES; i++) {
    char v[32];
    lk_err err;
    lk_status st;
    if (r->label) {
      snprintf(v, sizeof(v), "a-%d", i);
      const char *kv[] = {LK_OAUTH_SCOPE, v};
      st = update(r->c, v, kv, 1, &r->versions[i], &err);
    } else {
      snprintf(v, sizeof(v), "b-%d", i);
      const char *kv[] = {LK_OAUTH_CLIENT_ID, v};
      st = update(r->c, NULL, kv, 1, &r->versions[i], &err);
    }
    if (st != LK_OK && r->failures++ == 0) {
      snprintf(r->first_failure, sizeof(r->first_failure), "%s: %s",
               lk_status_name(st), err.msg);
    }
  }
  return NULL;
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x;
  uint64_t b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static void two_control_planes_updating_one_credential_lose_nothing(
    void **state) {
  (void)state;
  world *w = world_new();
  cp_fx a;
  cp_fx b;
  uint64_t version = 0;
  lk_err err;
  cp_open(&a, w);
  cp_open(&b, w);
  register_type(&a);
  create_cred(&a, w, 3600);
  wait_mirrored(&b);
  /* Forced: b sets client_id between a's read and a's commit. */
  admin_race ar = {&b, 0, "client-from-b"};
  a.hs.race_ctx = &ar;
  atomic_store(&a.hs.race, run_admin_race);
  assert_int_equal(update(&a, "label-from-a", NULL, 0, &version, &err), LK_OK);
  assert_int_equal(version, 3);
  Latchkey__V1__Credential *cred = etcd_cred(&a, NULL);
  assert_string_equal(cred->label, "label-from-a");
  assert_string_equal(field_of(cred, LK_OAUTH_CLIENT_ID)->value,
                      "client-from-b");
  latchkey__v1__credential__free_unpacked(cred, NULL);

  /* Free-running: a sets label and scope, b sets client_id, at once. */
  racer ra;
  racer rb;
  memset(&ra, 0, sizeof(ra));
  memset(&rb, 0, sizeof(rb));
  ra.c = &a;
  ra.label = 1;
  rb.c = &b;
  pthread_t ta;
  pthread_t tb;
  assert_int_equal(pthread_create(&ta, NULL, race_updates, &ra), 0);
  assert_int_equal(pthread_create(&tb, NULL, race_updates, &rb), 0);
  assert_int_equal(pthread_join(ta, NULL), 0);
  assert_int_equal(pthread_join(tb, NULL), 0);
  if (ra.failures != 0 || rb.failures != 0) {
    fail_msg("%d and %d updates failed, first: %s / %s", ra.failures,
             rb.failures, ra.first_failure, rb.first_failure);
  }
  /* Each update was built on the one before it: versions 4 .. 3 + 2N,
   * every one answered once. */
  uint64_t all[2 * RACE_UPDATES];
  memcpy(all, ra.versions, sizeof(ra.versions));
  memcpy(all + RACE_UPDATES, rb.versions, sizeof(rb.versions));
  qsort(all, 2 * RACE_UPDATES, sizeof(all[0]), cmp_u64);
  for (size_t i = 0; i < 2 * RACE_UPDATES; i++) {
    assert_int_equal(all[i], 4 + i);
  }
  cred = etcd_cred(&a, NULL);
  assert_int_equal(cred->version, 3 + 2 * RACE_UPDATES);
  assert_string_equal(cred->label, "a-29");
  assert_string_equal(field_of(cred, LK_OAUTH_SCOPE)->value, "a-29");
  assert_string_equal(field_of(cred, LK_OAUTH_CLIENT_ID)->value, "b-29");
  assert_int_equal(cred->oauth->generation, 1);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  cp_close(&b);
  cp_close(&a);
  world_free(w);
}

/* ---- the refresher's side ----------------------------------------------- */

static void wait_requests(world *w, int n) {
  int64_t start = lk_now_ms();
  while (ts_get_stats(w->ts).requests < n) {
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("the token endpoint did not get %d requests", n);
    }
    usleep(10 * 1000);
  }
}

static int claim_exists(cp_fx *c) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  lk_status st = lk_etcd_get(c->etcd, LK_OAUTH_REFRESH_CLAIM_PREFIX CRED, &val,
                             &len, NULL, &err);
  lk_etcd_value_free(val, len);
  return st == LK_OK;
}

static void wait_claim_released(cp_fx *c) {
  int64_t start = lk_now_ms();
  while (claim_exists(c)) {
    if (lk_now_ms() - start > WAIT_MS) {
      fail_msg("the claim was not released");
    }
    usleep(20 * 1000);
  }
}

static void a_label_update_during_a_token_request_keeps_the_new_tokens(
    void **state) {
  (void)state;
  world *w = world_new();
  cp_fx a;
  char got[TS_MAX_VALUE];
  char now_access[TS_MAX_VALUE];
  ts_request first;
  ts_request second;
  uint64_t gen = 0;
  lk_err err;
  ts_set_delay_ms(w->ts, 1000);
  cp_open(&a, w);
  register_type(&a);
  create_cred(&a, w, 1); /* due at once under a 2 s margin */
  cp_start(&a, "cp-race");
  wait_requests(w, 1);
  /* The provider is answering: the owner renames the credential. */
  assert_true(claim_exists(&a));
  assert_int_equal(update(&a, "renamed meanwhile", NULL, 0, NULL, &err), LK_OK);
  wait_claim_released(&a);
  Latchkey__V1__Credential *cred = etcd_cred(&a, NULL);
  assert_string_equal(cred->label, "renamed meanwhile");
  assert_int_equal(cred->oauth->generation, 2);
  assert_string_equal(cred->oauth->last_refresh_result, "ok");
  assert_int_equal(cred->version, 3);
  ts_current_access(w->ts, now_access, sizeof(now_access));
  unseal(&a, cred, LK_OAUTH_ACCESS_TOKEN, got, sizeof(got));
  assert_string_equal(got, now_access);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  /* The stored refresh token is the rotated one: the next refresh
   * presents it, and the provider sees no reuse. */
  ts_set_delay_ms(w->ts, 0);
  lk_status st = lk_oauth_refresh_request(atomic_load(&a.oauth), CRED, 2,
                                          lk_now_ms() + WAIT_MS, &gen, &err);
  if (st != LK_OK) {
    fail_msg("refresh on demand: %s: %s", lk_status_name(st), err.msg);
  }
  assert_int_equal(gen, 3);
  ts_stats stats = ts_get_stats(w->ts);
  assert_int_equal(stats.requests, 2);
  assert_int_equal(stats.reuse, 0);
  assert_true(ts_request_at(w->ts, 0, &first));
  assert_true(ts_request_at(w->ts, 1, &second));
  assert_string_equal(first.refresh_token, w->refresh);
  assert_string_not_equal(second.refresh_token, first.refresh_token);
  assert_int_equal(second.status, 200);
  cp_close(&a);
  world_free(w);
}

static void a_credential_deleted_during_a_token_request_stays_deleted(
    void **state) {
  (void)state;
  world *w = world_new();
  cp_fx a;
  lk_err err;
  ts_set_delay_ms(w->ts, 1000);
  cp_open(&a, w);
  register_type(&a);
  create_cred(&a, w, 1);
  cp_start(&a, "cp-race");
  wait_requests(w, 1);
  assert_int_equal(delete_cred(&a, &err), LK_OK);
  wait_claim_released(&a);
  usleep(300 * 1000);
  assert_null(etcd_cred(&a, NULL));
  assert_int_equal(get_status(&a), LK_NOT_FOUND);
  assert_int_equal(ts_get_stats(w->ts).requests, 1);
  cp_close(&a);
  world_free(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(
          a_label_update_racing_a_refresh_keeps_the_refreshed_tokens),
      cmocka_unit_test(
          an_update_racing_a_delete_elsewhere_does_not_bring_it_back),
      cmocka_unit_test(two_control_planes_updating_one_credential_lose_nothing),
      cmocka_unit_test(
          a_label_update_during_a_token_request_keeps_the_new_tokens),
      cmocka_unit_test(
          a_credential_deleted_during_a_token_request_stays_deleted),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
