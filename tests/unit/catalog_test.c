/*
 * catalog_test.c - proves lib/catalog's contract on a real RocksDB store:
 * the id rule, the documented key layout (checked by reading raw keys),
 * typed round trips of every record kind through batches, exact
 * LK_NOT_FOUND / LK_INVALID_ARGUMENT / LK_INTERNAL codes, listings in id
 * order with ownership handed to the callback and early stop, budget
 * prefixes that cannot bleed into each other, and the schema marker.
 * Conditional commits on the default (RocksDB) committer: a write lands
 * only over the bytes its read found, and a create only where its read
 * found nothing.
 */
#include <ftw.h>
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

#include "lib/catalog.h"
#include "lib/store.h"

typedef struct {
  char dir[1024];
  lk_store *store;
  lk_catalog *cat;
} fx;

static int dir_counter;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  lk_err err;
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/catalog-%d-%d",
           tmp != NULL ? tmp : "/tmp", (int)getpid(), dir_counter++);
  if (lk_store_open(f->dir, &f->store, &err) != LK_OK) {
    fail_msg("store open: %s", err.msg);
  }
  if (lk_catalog_open(f->store, &f->cat, &err) != LK_OK) {
    fail_msg("catalog open: %s", err.msg);
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  lk_catalog_destroy(f->cat);
  lk_store_close(f->store);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* Commits b and destroys it, failing the test on error. */
static void commit_ok(fx *f, lk_store_batch *b) {
  lk_err err;
  if (lk_catalog_commit(f->cat, b, &err) != LK_OK) {
    fail_msg("commit: %s", err.msg);
  }
  lk_store_batch_destroy(b);
}

static void put_tool(fx *f, const char *id, const char *type) {
  Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  t.id = (char *)id;
  t.description = (char *)"a tool";
  t.base_url = (char *)"https://api.example";
  t.credential_type = (char *)type;
  assert_int_equal(lk_catalog_put_tool(f->cat, b, &t, &err), LK_OK);
  commit_ok(f, b);
}

static void put_binding(fx *f, const char *budget, const char *tool,
                        const char *type, const char *cred) {
  Latchkey__V1__Binding bd = LATCHKEY__V1__BINDING__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bd.budget_id = (char *)budget;
  bd.tool_id = (char *)tool;
  bd.credential_type = (char *)type;
  bd.credential_id = (char *)cred;
  if (lk_catalog_put_binding(f->cat, b, &bd, &err) != LK_OK) {
    fail_msg("put binding: %s", err.msg);
  }
  commit_ok(f, b);
}

/* Asserts the raw store key exists (the documented layout). */
static void assert_raw_key(fx *f, const char *key) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  if (lk_store_get(f->store, key, &val, &len, &err) != LK_OK) {
    fail_msg("raw key %s: %s", key, err.msg);
  }
  lk_store_value_free(val, len);
}

static void valid_id_accepts_and_rejects(void **state) {
  char long_id[LK_CATALOG_ID_MAX + 2];
  (void)state;
  assert_true(lk_catalog_valid_id("weather"));
  assert_true(lk_catalog_valid_id("a"));
  assert_true(lk_catalog_valid_id("0ab.c_d-e"));
  assert_false(lk_catalog_valid_id(NULL));
  assert_false(lk_catalog_valid_id(""));
  assert_false(lk_catalog_valid_id("a/b"));
  assert_false(lk_catalog_valid_id(".a"));
  assert_false(lk_catalog_valid_id("-a"));
  assert_false(lk_catalog_valid_id("_a"));
  assert_false(lk_catalog_valid_id("a b"));
  assert_false(lk_catalog_valid_id("a\xc3\xa9"));
  memset(long_id, 'x', LK_CATALOG_ID_MAX);
  long_id[LK_CATALOG_ID_MAX] = '\0';
  assert_true(lk_catalog_valid_id(long_id));
  long_id[LK_CATALOG_ID_MAX] = 'x';
  long_id[LK_CATALOG_ID_MAX + 1] = '\0';
  assert_false(lk_catalog_valid_id(long_id));
}

static void open_writes_schema_marker(void **state) {
  fx *f = *state;
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  assert_int_equal(lk_store_get(f->store, "meta/schema", &val, &len, &err),
                   LK_OK);
  assert_int_equal(len, 1);
  assert_memory_equal(val, "1", 1);
  lk_store_value_free(val, len);
}

static void open_refuses_other_schema(void **state) {
  fx *f = *state;
  lk_catalog *other = NULL;
  lk_err err;
  assert_int_equal(lk_store_put(f->store, "meta/schema",
                                (const unsigned char *)"2", 1, &err),
                   LK_OK);
  assert_int_equal(lk_catalog_open(f->store, &other, &err),
                   LK_FAILED_PRECONDITION);
  assert_null(other);
  assert_non_null(strstr(err.msg, "layout"));
}

static void tool_round_trip_under_documented_key(void **state) {
  fx *f = *state;
  Latchkey__V1__Tool *t = NULL;
  lk_err err;
  put_tool(f, "weather", "weather-key");
  assert_raw_key(f, "tool/weather");
  assert_int_equal(lk_catalog_get_tool(f->cat, "weather", &t, &err), LK_OK);
  assert_string_equal(t->id, "weather");
  assert_string_equal(t->credential_type, "weather-key");
  assert_string_equal(t->base_url, "https://api.example");
  lk_catalog_free_tool(t);
}

static void missing_records_are_not_found_naming_the_id(void **state) {
  fx *f = *state;
  Latchkey__V1__Tool *t = NULL;
  Latchkey__V1__CredentialType *ty = NULL;
  Latchkey__V1__Credential *c = NULL;
  Latchkey__V1__Budget *bg = NULL;
  Latchkey__V1__Binding *bd = NULL;
  lk_err err;
  assert_int_equal(lk_catalog_get_tool(f->cat, "nope1", &t, &err),
                   LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "nope1"));
  assert_int_equal(lk_catalog_get_type(f->cat, "nope2", &ty, &err),
                   LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "nope2"));
  assert_int_equal(lk_catalog_get_credential(f->cat, "nope3", &c, &err),
                   LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "nope3"));
  assert_int_equal(lk_catalog_get_budget(f->cat, "nope4", &bg, &err),
                   LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "nope4"));
  assert_int_equal(
      lk_catalog_get_binding_tool(f->cat, "bud", "nope5", &bd, &err),
      LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "nope5"));
  assert_non_null(strstr(err.msg, "bud"));
  assert_int_equal(
      lk_catalog_get_binding_type(f->cat, "bud", "nope6", &bd, &err),
      LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "nope6"));
  assert_null(t);
  assert_null(ty);
  assert_null(c);
  assert_null(bg);
  assert_null(bd);
}

static void invalid_ids_never_reach_the_store(void **state) {
  fx *f = *state;
  Latchkey__V1__Tool *t = NULL;
  Latchkey__V1__Binding *bd = NULL;
  Latchkey__V1__Tool tool = LATCHKEY__V1__TOOL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  assert_int_equal(lk_catalog_get_tool(f->cat, "a/b", &t, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_catalog_get_tool(f->cat, "", &t, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_catalog_get_binding_tool(f->cat, "b/x", "t", &bd, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_catalog_get_binding_type(f->cat, "b", "../t", &bd, &err),
                   LK_INVALID_ARGUMENT);
  tool.id = (char *)"x/y";
  assert_int_equal(lk_catalog_put_tool(f->cat, b, &tool, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_catalog_delete_budget(f->cat, b, "a b", &err),
                   LK_INVALID_ARGUMENT);
  lk_store_batch_destroy(b);
}

static void every_kind_round_trips(void **state) {
  fx *f = *state;
  Latchkey__V1__CredentialField field = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *fields[1] = {&field};
  Latchkey__V1__CredentialType type = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  Latchkey__V1__SealedValue sv = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__FieldValue fv = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue *fvs[1] = {&fv};
  Latchkey__V1__Credential cred = LATCHKEY__V1__CREDENTIAL__INIT;
  char *agents[2] = {(char *)"agent-1", (char *)"agent-2"};
  Latchkey__V1__Budget budget = LATCHKEY__V1__BUDGET__INIT;
  Latchkey__V1__CredentialType *ty = NULL;
  Latchkey__V1__Credential *c = NULL;
  Latchkey__V1__Budget *bg = NULL;
  unsigned char ct[4] = {1, 2, 3, 4};
  unsigned char nonce[24] = {9};
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;

  field.name = (char *)"api_key";
  field.secret = 1;
  type.id = (char *)"weather-key";
  type.n_fields = 1;
  type.fields = fields;
  sv.key_id = 7;
  sv.nonce.data = nonce;
  sv.nonce.len = sizeof(nonce);
  sv.ciphertext.data = ct;
  sv.ciphertext.len = sizeof(ct);
  fv.name = (char *)"api_key";
  fv.secret = 1;
  fv.mask = (char *)"\xe2\x80\xa2";
  fv.sealed = &sv;
  cred.id = (char *)"cred_1";
  cred.type = (char *)"weather-key";
  cred.n_fields = 1;
  cred.fields = fvs;
  cred.version = 3;
  budget.id = (char *)"team-a";
  budget.n_agents = 2;
  budget.agents = agents;
  budget.paused = 1;
  assert_int_equal(lk_catalog_put_type(f->cat, b, &type, &err), LK_OK);
  assert_int_equal(lk_catalog_put_credential(f->cat, b, &cred, &err), LK_OK);
  assert_int_equal(lk_catalog_put_budget(f->cat, b, &budget, &err), LK_OK);
  commit_ok(f, b);
  assert_raw_key(f, "type/weather-key");
  assert_raw_key(f, "cred/cred_1");
  assert_raw_key(f, "budget/team-a");

  assert_int_equal(lk_catalog_get_type(f->cat, "weather-key", &ty, &err),
                   LK_OK);
  assert_int_equal(ty->n_fields, 1);
  assert_string_equal(ty->fields[0]->name, "api_key");
  lk_catalog_free_type(ty);
  assert_int_equal(lk_catalog_get_credential(f->cat, "cred_1", &c, &err),
                   LK_OK);
  assert_int_equal(c->version, 3);
  assert_int_equal(c->fields[0]->sealed->key_id, 7);
  assert_int_equal(c->fields[0]->sealed->ciphertext.len, 4);
  assert_memory_equal(c->fields[0]->sealed->ciphertext.data, ct, 4);
  lk_catalog_free_credential(c);
  assert_int_equal(lk_catalog_get_budget(f->cat, "team-a", &bg, &err), LK_OK);
  assert_int_equal(bg->n_agents, 2);
  assert_string_equal(bg->agents[1], "agent-2");
  assert_true(bg->paused);
  lk_catalog_free_budget(bg);

  b = lk_store_batch_new();
  assert_int_equal(lk_catalog_delete_type(f->cat, b, "weather-key", &err),
                   LK_OK);
  assert_int_equal(lk_catalog_delete_credential(f->cat, b, "cred_1", &err),
                   LK_OK);
  assert_int_equal(lk_catalog_delete_budget(f->cat, b, "team-a", &err), LK_OK);
  commit_ok(f, b);
  assert_int_equal(lk_catalog_get_type(f->cat, "weather-key", &ty, &err),
                   LK_NOT_FOUND);
  assert_int_equal(lk_catalog_get_credential(f->cat, "cred_1", &c, &err),
                   LK_NOT_FOUND);
  assert_int_equal(lk_catalog_get_budget(f->cat, "team-a", &bg, &err),
                   LK_NOT_FOUND);
}

static void bindings_use_both_documented_keys(void **state) {
  fx *f = *state;
  Latchkey__V1__Binding *bd = NULL;
  Latchkey__V1__Binding del = LATCHKEY__V1__BINDING__INIT;
  lk_store_batch *b;
  lk_err err;
  put_binding(f, "team-a", "weather", "", "cred_1");
  put_binding(f, "team-a", "", "weather-key", "cred_2");
  assert_raw_key(f, "bind/team-a/tool/weather");
  assert_raw_key(f, "bind/team-a/type/weather-key");
  assert_int_equal(
      lk_catalog_get_binding_tool(f->cat, "team-a", "weather", &bd, &err),
      LK_OK);
  assert_string_equal(bd->credential_id, "cred_1");
  lk_catalog_free_binding(bd);
  assert_int_equal(
      lk_catalog_get_binding_type(f->cat, "team-a", "weather-key", &bd, &err),
      LK_OK);
  assert_string_equal(bd->credential_id, "cred_2");
  lk_catalog_free_binding(bd);
  /* tool and type namespaces are separate */
  assert_int_equal(
      lk_catalog_get_binding_type(f->cat, "team-a", "weather", &bd, &err),
      LK_NOT_FOUND);

  b = lk_store_batch_new();
  del.budget_id = (char *)"team-a";
  del.tool_id = (char *)"weather";
  assert_int_equal(lk_catalog_delete_binding(f->cat, b, &del, &err), LK_OK);
  commit_ok(f, b);
  assert_int_equal(
      lk_catalog_get_binding_tool(f->cat, "team-a", "weather", &bd, &err),
      LK_NOT_FOUND);
  assert_int_equal(
      lk_catalog_get_binding_type(f->cat, "team-a", "weather-key", &bd, &err),
      LK_OK);
  lk_catalog_free_binding(bd);
}

static void binding_needs_exactly_one_target(void **state) {
  fx *f = *state;
  Latchkey__V1__Binding bd = LATCHKEY__V1__BINDING__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bd.budget_id = (char *)"team-a";
  bd.credential_id = (char *)"cred_1";
  assert_int_equal(lk_catalog_put_binding(f->cat, b, &bd, &err),
                   LK_INVALID_ARGUMENT);
  bd.tool_id = (char *)"weather";
  bd.credential_type = (char *)"weather-key";
  assert_int_equal(lk_catalog_put_binding(f->cat, b, &bd, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_catalog_delete_binding(f->cat, b, &bd, &err),
                   LK_INVALID_ARGUMENT);
  bd.credential_type = (char *)"";
  bd.credential_id = (char *)"bad/id";
  assert_int_equal(lk_catalog_put_binding(f->cat, b, &bd, &err),
                   LK_INVALID_ARGUMENT);
  lk_store_batch_destroy(b);
}

typedef struct {
  char ids[8][64];
  int n;
  int stop_after;
} seen;

static int see_tool(void *ctx, Latchkey__V1__Tool *t) {
  seen *s = ctx;
  snprintf(s->ids[s->n++], sizeof(s->ids[0]), "%s", t->id);
  lk_catalog_free_tool(t);
  return s->stop_after > 0 && s->n >= s->stop_after;
}

static int see_binding(void *ctx, Latchkey__V1__Binding *bd) {
  seen *s = ctx;
  snprintf(s->ids[s->n++], sizeof(s->ids[0]), "%s:%s%s", bd->budget_id,
           bd->tool_id, bd->credential_type);
  lk_catalog_free_binding(bd);
  return 0;
}

static void list_is_in_id_order_and_stops_early(void **state) {
  fx *f = *state;
  seen s;
  lk_err err;
  put_tool(f, "gamma", "");
  put_tool(f, "alpha", "");
  put_tool(f, "beta", "");
  memset(&s, 0, sizeof(s));
  assert_int_equal(lk_catalog_list_tools(f->cat, see_tool, &s, &err), LK_OK);
  assert_int_equal(s.n, 3);
  assert_string_equal(s.ids[0], "alpha");
  assert_string_equal(s.ids[1], "beta");
  assert_string_equal(s.ids[2], "gamma");
  memset(&s, 0, sizeof(s));
  s.stop_after = 2;
  assert_int_equal(lk_catalog_list_tools(f->cat, see_tool, &s, &err), LK_OK);
  assert_int_equal(s.n, 2);
}

static void budget_listing_does_not_bleed_into_longer_ids(void **state) {
  fx *f = *state;
  seen s;
  lk_err err;
  put_binding(f, "a", "t1", "", "c1");
  put_binding(f, "ab", "t1", "", "c2");
  put_binding(f, "a", "", "k1", "c3");
  memset(&s, 0, sizeof(s));
  assert_int_equal(lk_catalog_list_bindings(f->cat, "a", see_binding, &s, &err),
                   LK_OK);
  assert_int_equal(s.n, 2);
  assert_string_equal(s.ids[0], "a:t1");
  assert_string_equal(s.ids[1], "a:k1");
  memset(&s, 0, sizeof(s));
  assert_int_equal(
      lk_catalog_list_bindings(f->cat, NULL, see_binding, &s, &err), LK_OK);
  assert_int_equal(s.n, 3);
  memset(&s, 0, sizeof(s));
  assert_int_equal(
      lk_catalog_list_bindings(f->cat, "a/b", see_binding, &s, &err),
      LK_INVALID_ARGUMENT);
}

static void corrupt_record_is_internal_naming_the_key(void **state) {
  fx *f = *state;
  Latchkey__V1__Tool *t = NULL;
  const unsigned char junk[3] = {0x0a, 0x09, 'x'};
  seen s;
  lk_err err;
  assert_int_equal(
      lk_store_put(f->store, "tool/broken", junk, sizeof(junk), &err), LK_OK);
  assert_int_equal(lk_catalog_get_tool(f->cat, "broken", &t, &err),
                   LK_INTERNAL);
  assert_non_null(strstr(err.msg, "tool/broken"));
  memset(&s, 0, sizeof(s));
  assert_int_equal(lk_catalog_list_tools(f->cat, see_tool, &s, &err),
                   LK_INTERNAL);
  assert_non_null(strstr(err.msg, "tool/broken"));
}

static void catalog_survives_reopen(void **state) {
  fx *f = *state;
  Latchkey__V1__Tool *t = NULL;
  lk_err err;
  put_tool(f, "weather", "");
  lk_catalog_destroy(f->cat);
  lk_store_close(f->store);
  f->cat = NULL;
  assert_int_equal(lk_store_open(f->dir, &f->store, &err), LK_OK);
  assert_int_equal(lk_catalog_open(f->store, &f->cat, &err), LK_OK);
  assert_int_equal(lk_catalog_get_tool(f->cat, "weather", &t, &err), LK_OK);
  lk_catalog_free_tool(t);
  lk_catalog_destroy(NULL);
}

/* Puts credential id with label; through lk_catalog_commit_if with read_seen
 * when read_seen is non-NULL. */
static lk_status put_cred(fx *f, const char *id, const char *label,
                          lk_catalog_seen *read_seen, int *changed,
                          lk_err *err) {
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  assert_non_null(b);
  c.id = (char *)id;
  c.type = (char *)"t";
  c.label = (char *)label;
  lk_status st = lk_catalog_put_credential(f->cat, b, &c, err);
  if (st == LK_OK && read_seen != NULL) {
    st = lk_catalog_commit_if(f->cat, b, &read_seen, 1, changed, err);
  } else if (st == LK_OK) {
    st = lk_catalog_commit(f->cat, b, err);
  }
  lk_store_batch_destroy(b);
  return st;
}

/* Reads credential id: its label into out ("-" when absent), and what the
 * read saw. */
static lk_catalog_seen *read_cred(fx *f, const char *id, char out[32]) {
  Latchkey__V1__Credential *c = NULL;
  lk_catalog_seen *read_seen = NULL;
  lk_err err;
  lk_status st =
      lk_catalog_get_credential_seen(f->cat, id, &c, &read_seen, &err);
  assert_true(st == LK_OK || st == LK_NOT_FOUND);
  assert_non_null(read_seen);
  snprintf(out, 32, "%s", st == LK_OK ? c->label : "-");
  lk_catalog_free_credential(c);
  return read_seen;
}

static void commit_if_writes_only_over_what_was_read(void **state) {
  fx *f = *state;
  char label[32];
  char want[256];
  int changed = 0;
  lk_err err;
  lk_catalog_seen *read_seen = read_cred(f, "c1", label);
  assert_string_equal(label, "-");
  assert_string_equal(lk_catalog_seen_key(read_seen), "cred/c1");
  /* Another writer creates it after the read: the create is refused. */
  assert_int_equal(put_cred(f, "c1", "theirs", NULL, NULL, &err), LK_OK);
  assert_int_equal(put_cred(f, "c1", "mine", read_seen, &changed, &err),
                   LK_UNAVAILABLE);
  assert_int_equal(changed, 1);
  snprintf(want, sizeof(want), LK_CATALOG_CHANGED_FMT, "cred/c1");
  assert_string_equal(err.msg, want);
  lk_catalog_seen_free(read_seen);
  read_seen = read_cred(f, "c1", label);
  assert_string_equal(label, "theirs");
  size_t len = 0;
  assert_non_null(lk_catalog_seen_value(read_seen, &len));
  assert_true(len > 0);
  /* Changed after the read: refused, nothing written. */
  assert_int_equal(put_cred(f, "c1", "refreshed", NULL, NULL, &err), LK_OK);
  assert_int_equal(put_cred(f, "c1", "owner", read_seen, &changed, &err),
                   LK_UNAVAILABLE);
  assert_int_equal(changed, 1);
  lk_catalog_seen_free(read_seen);
  read_seen = read_cred(f, "c1", label);
  assert_string_equal(label, "refreshed");
  /* Unchanged since the read: lands. */
  assert_int_equal(put_cred(f, "c1", "owner", read_seen, &changed, &err),
                   LK_OK);
  assert_int_equal(changed, 0);
  lk_catalog_seen_free(read_seen);
  read_seen = read_cred(f, "c1", label);
  assert_string_equal(label, "owner");
  lk_catalog_seen_free(read_seen);
  lk_catalog_seen_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(valid_id_accepts_and_rejects),
      cmocka_unit_test_setup_teardown(open_writes_schema_marker, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(open_refuses_other_schema, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(tool_round_trip_under_documented_key,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          missing_records_are_not_found_naming_the_id, setup, teardown),
      cmocka_unit_test_setup_teardown(invalid_ids_never_reach_the_store, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(every_kind_round_trips, setup, teardown),
      cmocka_unit_test_setup_teardown(bindings_use_both_documented_keys, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(binding_needs_exactly_one_target, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(list_is_in_id_order_and_stops_early,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          budget_listing_does_not_bleed_into_longer_ids, setup, teardown),
      cmocka_unit_test_setup_teardown(corrupt_record_is_internal_naming_the_key,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(catalog_survives_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(commit_if_writes_only_over_what_was_read,
                                      setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
