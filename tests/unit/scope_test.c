/*
 * scope_test.c - proves controlplane/scope's rule over a real RocksDB-backed
 * catalog: two agents sharing one budget and each holding a private one
 * (the other's paused), tool-specific and budget-wide bindings. Each
 * agent's scope is exactly its budgets, their bindings, the credentials
 * they name, and every tool and credential type (no secrets; an unbound
 * tool must still answer missing_credential on the replica); a
 * paused budget stays in scope; a credential bound only in the other
 * agent's budget never appears; removing an agent from a budget drops that
 * budget's records from its scope; an agent with no budget gets nothing;
 * a view's records carry their encoding and its BLAKE2b hash.
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
#include <sodium.h>

#include "controlplane/scope.h"
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

/* Commits b and destroys it, failing the test on error. */
static void commit_ok(fx *f, lk_store_batch *b) {
  lk_err err;
  if (lk_catalog_commit(f->cat, b, &err) != LK_OK) {
    fail_msg("commit: %s", err.msg);
  }
  lk_store_batch_destroy(b);
}

static void put_type(fx *f, const char *id) {
  Latchkey__V1__CredentialType t = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  t.id = (char *)id;
  assert_int_equal(lk_catalog_put_type(f->cat, b, &t, &err), LK_OK);
  commit_ok(f, b);
}

static void put_tool(fx *f, const char *id, const char *type) {
  Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  t.id = (char *)id;
  t.base_url = "https://api.example";
  t.credential_type = (char *)type;
  assert_int_equal(lk_catalog_put_tool(f->cat, b, &t, &err), LK_OK);
  commit_ok(f, b);
}

static void put_cred(fx *f, const char *id, const char *type) {
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  c.id = (char *)id;
  c.type = (char *)type;
  c.label = "test";
  assert_int_equal(lk_catalog_put_credential(f->cat, b, &c, &err), LK_OK);
  commit_ok(f, b);
}

/* agents: NULL-terminated. */
static void put_budget(fx *f, const char *id, int paused,
                       const char *const *agents) {
  Latchkey__V1__Budget bu = LATCHKEY__V1__BUDGET__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  size_t n = 0;
  while (agents[n] != NULL) {
    n++;
  }
  bu.id = (char *)id;
  bu.paused = paused;
  bu.agents = (char **)agents;
  bu.n_agents = n;
  assert_int_equal(lk_catalog_put_budget(f->cat, b, &bu, &err), LK_OK);
  commit_ok(f, b);
}

static void put_bind(fx *f, const char *budget, const char *tool,
                     const char *type, const char *cred) {
  Latchkey__V1__Binding bi = LATCHKEY__V1__BINDING__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bi.budget_id = (char *)budget;
  bi.tool_id = (char *)(tool != NULL ? tool : "");
  bi.credential_type = (char *)(type != NULL ? type : "");
  bi.credential_id = (char *)cred;
  assert_int_equal(lk_catalog_put_binding(f->cat, b, &bi, &err), LK_OK);
  commit_ok(f, b);
}

static const char *const k_both[] = {"a1", "a2", NULL};
static const char *const k_a1[] = {"a1", NULL};
static const char *const k_a2[] = {"a2", NULL};

/* The shared fixture catalog (see the file comment). */
static void seed(fx *f) {
  put_type(f, "gkey");
  put_type(f, "wkey");
  put_type(f, "skey");
  put_type(f, "orphan-type");
  put_tool(f, "drive", "gkey");
  put_tool(f, "gmail", "gkey");
  put_tool(f, "weather", "wkey");
  put_tool(f, "slack", "skey");
  put_tool(f, "clock", "");
  put_tool(f, "other", "orphan-type");
  put_cred(f, "g1", "gkey");
  put_cred(f, "w1", "wkey");
  put_cred(f, "w2", "wkey");
  put_cred(f, "s1", "skey");
  put_budget(f, "shared", 0, k_both);
  put_budget(f, "a1-private", 0, k_a1);
  put_budget(f, "a2-private", 1, k_a2);
  put_bind(f, "shared", NULL, "gkey", "g1");
  put_bind(f, "a1-private", "weather", NULL, "w1");
  put_bind(f, "a2-private", "slack", NULL, "s1");
  put_bind(f, "a2-private", "weather", NULL, "w2");
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  lk_err err;
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/scope-%d-%d", tmp != NULL ? tmp : "/tmp",
           (int)getpid(), dir_counter++);
  if (lk_store_open(f->dir, &f->store, &err) != LK_OK) {
    fail_msg("store open: %s", err.msg);
  }
  if (lk_catalog_open(f->store, &f->cat, &err) != LK_OK) {
    fail_msg("catalog open: %s", err.msg);
  }
  seed(f);
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

/* Asserts that agent's scope is exactly want (NULL-terminated, any order)
 * and that its keys are strictly increasing. */
static void expect_scope(fx *f, const char *agent, const char *const *want) {
  lk_scope *s = NULL;
  lk_err err;
  size_t n = 0;
  if (lk_scope_compute(f->cat, agent, &s, &err) != LK_OK) {
    fail_msg("scope of %s: %s", agent, err.msg);
  }
  while (want[n] != NULL) {
    if (!lk_scope_contains(s, want[n])) {
      fail_msg("scope of %s lacks %s", agent, want[n]);
    }
    n++;
  }
  for (size_t i = 0; i < lk_scope_count(s); i++) {
    const char *k = lk_scope_key(s, i);
    int wanted = 0;
    for (size_t j = 0; j < n; j++) {
      wanted |= strcmp(want[j], k) == 0;
    }
    if (!wanted) {
      fail_msg("scope of %s holds %s, which it must not", agent, k);
    }
    if (i > 0) {
      assert_true(strcmp(lk_scope_key(s, i - 1), k) < 0);
    }
  }
  assert_int_equal(lk_scope_count(s), n);
  lk_scope_destroy(s);
}

/* Every agent with a budget gets every tool and credential type (they
 * carry no secret, and a tool whose credential is not bound must still
 * answer missing_credential on the replica). */
#define ALL_TOOLS_AND_TYPES                                             \
  "tool/clock", "tool/drive", "tool/gmail", "tool/other", "tool/slack", \
      "tool/weather", "type/gkey", "type/orphan-type", "type/skey",     \
      "type/wkey"

static const char *const k_scope_a1[] = {
    "bind/a1-private/tool/weather",
    "bind/shared/type/gkey",
    "budget/a1-private",
    "budget/shared",
    "cred/g1",
    "cred/w1",
    ALL_TOOLS_AND_TYPES,
    NULL,
};

static const char *const k_scope_a2[] = {
    "bind/a2-private/tool/slack",
    "bind/a2-private/tool/weather",
    "bind/shared/type/gkey",
    "budget/a2-private",
    "budget/shared",
    "cred/g1",
    "cred/s1",
    "cred/w2",
    ALL_TOOLS_AND_TYPES,
    NULL,
};

static void test_scope_is_exactly_the_agents_budgets_and_what_they_bind(
    void **state) {
  fx *f = *state;
  expect_scope(f, "a1", k_scope_a1);
}

static void test_paused_budget_stays_in_scope(void **state) {
  fx *f = *state;
  expect_scope(f, "a2", k_scope_a2);
}

static void test_credential_bound_only_for_another_agent_never_appears(
    void **state) {
  fx *f = *state;
  lk_scope *s = NULL;
  lk_err err;
  assert_int_equal(lk_scope_compute(f->cat, "a1", &s, &err), LK_OK);
  assert_false(lk_scope_contains(s, "cred/w2"));
  assert_false(lk_scope_contains(s, "cred/s1"));
  assert_false(lk_scope_contains(s, "budget/a2-private"));
  assert_false(lk_scope_contains(s, "bind/a2-private/tool/weather"));
  lk_scope_destroy(s);
}

static void test_removing_agent_from_budget_drops_its_records(void **state) {
  fx *f = *state;
  static const char *const want[] = {
      "bind/a1-private/tool/weather",
      "budget/a1-private",
      "cred/w1",
      ALL_TOOLS_AND_TYPES,
      NULL,
  };
  put_budget(f, "shared", 0, k_a2);
  expect_scope(f, "a1", want);
}

static void test_agent_without_budget_gets_nothing(void **state) {
  fx *f = *state;
  static const char *const none[] = {NULL};
  expect_scope(f, "a3", none);
}

static void test_unbinding_drops_credential_but_keeps_tool(void **state) {
  fx *f = *state;
  static const char *const want[] = {
      "bind/shared/type/gkey", "budget/a1-private",
      "budget/shared",         "cred/g1",
      ALL_TOOLS_AND_TYPES,     NULL,
  };
  Latchkey__V1__Binding bi = LATCHKEY__V1__BINDING__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bi.budget_id = "a1-private";
  bi.tool_id = "weather";
  assert_int_equal(lk_catalog_delete_binding(f->cat, b, &bi, &err), LK_OK);
  commit_ok(f, b);
  expect_scope(f, "a1", want);
}

static void test_binding_to_missing_credential_brings_no_credential_key(
    void **state) {
  fx *f = *state;
  lk_store_batch *b = lk_store_batch_new();
  lk_scope *s = NULL;
  lk_err err;
  assert_int_equal(lk_catalog_delete_credential(f->cat, b, "w1", &err), LK_OK);
  commit_ok(f, b);
  assert_int_equal(lk_scope_compute(f->cat, "a1", &s, &err), LK_OK);
  assert_true(lk_scope_contains(s, "bind/a1-private/tool/weather"));
  assert_false(lk_scope_contains(s, "cred/w1"));
  lk_scope_destroy(s);
}

static void test_invalid_agent_id_is_invalid_argument(void **state) {
  fx *f = *state;
  lk_scope *s = NULL;
  lk_err err;
  assert_int_equal(lk_scope_compute(f->cat, "a/1", &s, &err),
                   LK_INVALID_ARGUMENT);
  assert_null(s);
  assert_int_equal(lk_scope_compute(f->cat, "", &s, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(lk_scope_compute(f->cat, NULL, &s, &err),
                   LK_INVALID_ARGUMENT);
}

static void test_view_records_carry_encoding_and_hash(void **state) {
  fx *f = *state;
  lk_scope_view *v = NULL;
  lk_scope *s = NULL;
  lk_scope_record r;
  lk_err err;
  unsigned char h[LK_SCOPE_HASH_BYTES];

  assert_int_equal(lk_scope_view_load(f->cat, &v, &err), LK_OK);
  /* 4 types, 6 tools, 4 credentials, 3 budgets, 4 bindings. */
  assert_int_equal(lk_scope_view_count(v), 21);
  assert_true(lk_scope_view_find(v, "bind/shared/type/gkey", &r));
  Latchkey__V1__Binding *bi =
      latchkey__v1__binding__unpack(NULL, r.len, r.value);
  assert_non_null(bi);
  assert_string_equal(bi->credential_id, "g1");
  latchkey__v1__binding__free_unpacked(bi, NULL);
  assert_int_equal(crypto_generichash(h, sizeof(h), r.value, r.len, NULL, 0),
                   0);
  assert_memory_equal(h, r.hash, sizeof(h));
  assert_false(lk_scope_view_find(v, "bind/shared/type/nope", &r));

  assert_int_equal(lk_scope_compute_in(v, "a2", &s, &err), LK_OK);
  for (size_t i = 0; i < lk_scope_count(s); i++) {
    lk_scope_record a, b;
    lk_scope_at(s, i, &a);
    assert_string_equal(a.key, lk_scope_key(s, i));
    assert_true(lk_scope_view_find(v, a.key, &b));
    assert_ptr_equal(a.value, b.value);
  }
  lk_scope_destroy(s);
  lk_scope_view_destroy(v);
}

/* lk_scope_agent_uses_credential answers exactly what the full scope
 * says about cred/<id>, for every agent and credential of the fixture. */
static void test_agent_uses_credential_matches_the_scope(void **state) {
  fx *f = *state;
  const char *agents[] = {"a1", "a2", "a3"};
  const char *creds[] = {"g1", "w1", "w2", "s1", "nope"};
  lk_err err;
  for (size_t a = 0; a < 3; a++) {
    lk_scope *s = NULL;
    assert_int_equal(lk_scope_compute(f->cat, agents[a], &s, &err), LK_OK);
    for (size_t c = 0; c < 5; c++) {
      char key[64];
      int uses = -1;
      snprintf(key, sizeof(key), "cred/%s", creds[c]);
      assert_int_equal(lk_scope_agent_uses_credential(f->cat, agents[a],
                                                      creds[c], &uses, &err),
                       LK_OK);
      assert_int_equal(uses, lk_scope_contains(s, key));
    }
    lk_scope_destroy(s);
  }
  int uses = -1;
  assert_int_equal(
      lk_scope_agent_uses_credential(f->cat, "a1", "w1", &uses, &err), LK_OK);
  assert_int_equal(uses, 1);
  assert_int_equal(
      lk_scope_agent_uses_credential(f->cat, "a1", "w2", &uses, &err), LK_OK);
  assert_int_equal(uses, 0); /* bound only in a2's budget */
  assert_int_equal(
      lk_scope_agent_uses_credential(f->cat, "a1/..", "w1", &uses, &err),
      LK_INVALID_ARGUMENT);
  assert_string_equal(err.msg,
                      "agent_id and credential_id must match "
                      "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$");
  assert_int_equal(
      lk_scope_agent_uses_credential(f->cat, "a1", "", &uses, &err),
      LK_INVALID_ARGUMENT);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          test_agent_uses_credential_matches_the_scope, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_scope_is_exactly_the_agents_budgets_and_what_they_bind, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_paused_budget_stays_in_scope, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_credential_bound_only_for_another_agent_never_appears, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_removing_agent_from_budget_drops_its_records, setup, teardown),
      cmocka_unit_test_setup_teardown(test_agent_without_budget_gets_nothing,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_unbinding_drops_credential_but_keeps_tool, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_binding_to_missing_credential_brings_no_credential_key, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_invalid_agent_id_is_invalid_argument,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_view_records_carry_encoding_and_hash,
                                      setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
