/*
 * admin_test.c - proves lib/admin's contract through lk_admin_handle with
 * serialized requests, over a real RocksDB catalog and a real node key:
 * lib/schema's rules are applied to tools and types (each rule is proved
 * in schema_test.c) and what passed is stored canonical; credentials come
 * back masked and never in plaintext (checked on the response bytes); what
 * the store holds is sealed, and unseals with the key to the plaintext; mask
 * rules; reference guards on delete; binding type checks; deletes that
 * cascade to bindings; and the dispatcher's own failures. Audit: AuditHash
 * answers the auditor's keyed hash (and needs an auditor), and each change
 * writes exactly one audit.admin line (stderr captured to a file) with its
 * action, validated ids, outcome and, for credential writes, the hash of
 * each new secret value, never the value. Key-ring methods: refused
 * without a keys hook (a standalone sidecar), packed from the hook's
 * status on a control plane, and RotateKey (not GetKeyStatus) audited as
 * keys.rotate. OAuth 2.0: oauth2 types are stored canonical and keep their
 * kind while they have credentials; an oauth2 create is held to the
 * field rules (exact messages, no value echoed), stores expires_at
 * canonical and OAuthState at generation 1; an owner's new token starts
 * the next generation with a clean record, other updates keep it; Get and
 * List answer the record with every secret masked.
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
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>

#include "latchkey/v1/admin.pb-c.h"
#include "lib/admin.h"
#include "lib/audit.h"
#include "lib/catalog.h"
#include "lib/oauth.h"
#include "lib/schema.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/store.h"
#include "tests/unit/tool_fixture.h"

#define BULLETS "\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2"
#define API_KEY "AbCdEfGh0123456789-canary-WXYZ"
#define API_KEY2 "ZyXwVuTs9876543210-second-QRST"

typedef struct {
  char dir[1024];
  lk_store *store;
  lk_catalog *cat;
  lk_seal_key *key;
  lk_admin *admin;
  unsigned char *resp;
  size_t resp_len;
  lk_err err;
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
  char db[1100];
  char keyfile[1100];
  lk_err err;
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/admin-%d-%d", tmp != NULL ? tmp : "/tmp",
           (int)getpid(), dir_counter++);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  snprintf(db, sizeof(db), "%s/db", f->dir);
  snprintf(keyfile, sizeof(keyfile), "%s/node.key", f->dir);
  if (lk_store_open(db, &f->store, &err) != LK_OK ||
      lk_catalog_open(f->store, &f->cat, &err) != LK_OK ||
      lk_seal_key_load_or_create(keyfile, &f->key, &err) != LK_OK ||
      lk_admin_new(f->cat, f->key, &f->admin, &err) != LK_OK) {
    fail_msg("setup: %s", err.msg);
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  free(f->resp);
  lk_admin_destroy(f->admin);
  lk_seal_key_destroy(f->key);
  lk_catalog_destroy(f->cat);
  lk_store_close(f->store);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* Calls method (short name) with m serialized; keeps the response bytes in
 * f->resp and the reason in f->err. */
static lk_status call(fx *f, const char *method, const ProtobufCMessage *m) {
  char path[128];
  size_t len = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(len + 1);
  lk_status st;
  assert_non_null(buf);
  protobuf_c_message_pack(m, buf);
  snprintf(path, sizeof(path), "/latchkey.v1.Admin/%s", method);
  free(f->resp);
  f->resp = NULL;
  lk_err_clear(&f->err);
  st = lk_admin_handle(f->admin, path, buf, len, &f->resp, &f->resp_len,
                       &f->err);
  lk_wipe_free(buf, len);
  if (st != LK_OK) {
    assert_int_equal(f->err.code, st);
    assert_null(f->resp);
  }
  return st;
}

static void ok(fx *f, const char *method, const ProtobufCMessage *m) {
  lk_status st = call(f, method, m);
  if (st != LK_OK) {
    fail_msg("%s: %s: %s", method, lk_status_name(st), f->err.msg);
  }
}

/* Asserts the exact status and that the message mentions want (if any). */
static void expect(fx *f, const char *method, const ProtobufCMessage *m,
                   lk_status code, const char *want) {
  lk_status st = call(f, method, m);
  if (st != code) {
    fail_msg("%s: want %s, got %s: %s", method, lk_status_name(code),
             lk_status_name(st), f->err.msg);
  }
  if (want != NULL && strstr(f->err.msg, want) == NULL) {
    fail_msg("%s: message \"%s\" does not mention \"%s\"", method, f->err.msg,
             want);
  }
}

static void register_weather(fx *f, const char *id) {
  tool_fx t;
  tool_fx_init(&t, id);
  ok(f, "RegisterTool", &t.req.base);
}

/* A type "login" with a plain "user" and a secret "password" (no pattern,
 * password max_len 40). */
static void register_login_type(fx *f) {
  Latchkey__V1__CredentialField user = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField pass = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *fields[2] = {&user, &pass};
  Latchkey__V1__InjectRule rule = LATCHKEY__V1__INJECT_RULE__INIT;
  Latchkey__V1__InjectRule *rules[1] = {&rule};
  Latchkey__V1__CredentialType type = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  user.name = (char *)"user";
  pass.name = (char *)"password";
  pass.secret = 1;
  pass.max_len = 40;
  rule.in = (char *)"basic";
  rule.username = (char *)"{user}";
  rule.password = (char *)"{password}";
  type.id = (char *)"login";
  type.n_fields = 2;
  type.fields = fields;
  type.n_inject = 1;
  type.inject = rules;
  ok(f, "RegisterCredentialType", &type.base);
}

/* Creates a credential of type with fields k1=v1[, k2=v2]; id may be "". */
static lk_status create_cred(fx *f, const char *type, const char *id,
                             const char *k1, const char *v1, const char *k2,
                             const char *v2) {
  Latchkey__V1__CreateCredentialRequest__FieldsEntry e1 =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__CreateCredentialRequest__FieldsEntry e2 =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__CreateCredentialRequest__FieldsEntry *es[2] = {&e1, &e2};
  Latchkey__V1__CreateCredentialRequest r =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__INIT;
  r.type = (char *)type;
  r.id = (char *)id;
  r.label = (char *)"test label";
  e1.key = (char *)k1;
  e1.value = (char *)v1;
  e2.key = (char *)k2;
  e2.value = (char *)v2;
  r.fields = es;
  r.n_fields = k1 == NULL ? 0 : k2 == NULL ? 1 : 2;
  return call(f, "CreateCredential", &r.base);
}

static void create_cred_ok(fx *f, const char *type, const char *id,
                           const char *k1, const char *v1, const char *k2,
                           const char *v2) {
  lk_status st = create_cred(f, type, id, k1, v1, k2, v2);
  if (st != LK_OK) {
    fail_msg("CreateCredential: %s: %s", lk_status_name(st), f->err.msg);
  }
}

static void create_budget(fx *f, const char *id) {
  char *agents[1] = {(char *)"agent-1"};
  Latchkey__V1__Budget b = LATCHKEY__V1__BUDGET__INIT;
  b.id = (char *)id;
  b.n_agents = 1;
  b.agents = agents;
  ok(f, "CreateBudget", &b.base);
}

static lk_status do_bind(fx *f, const char *budget, const char *tool,
                         const char *type, const char *cred) {
  Latchkey__V1__Binding b = LATCHKEY__V1__BINDING__INIT;
  b.budget_id = (char *)budget;
  b.tool_id = (char *)tool;
  b.credential_type = (char *)type;
  b.credential_id = (char *)cred;
  return call(f, "Bind", &b.base);
}

static void assert_no_bytes(const fx *f, const char *plain) {
  assert_null(memmem(f->resp, f->resp_len, plain, strlen(plain)));
}

static int has_binding_tool(fx *f, const char *budget, const char *tool) {
  Latchkey__V1__Binding *b = NULL;
  lk_err err;
  lk_status st = lk_catalog_get_binding_tool(f->cat, budget, tool, &b, &err);
  lk_catalog_free_binding(b);
  return st == LK_OK;
}

static int has_binding_type(fx *f, const char *budget, const char *type) {
  Latchkey__V1__Binding *b = NULL;
  lk_err err;
  lk_status st = lk_catalog_get_binding_type(f->cat, budget, type, &b, &err);
  lk_catalog_free_binding(b);
  return st == LK_OK;
}

/* ---- tools ---- */

static void register_tool_stores_normalized_tool_and_inline_type(void **s) {
  fx *f = *s;
  tool_fx t;
  Latchkey__V1__Tool *got;
  Latchkey__V1__CredentialType *type = NULL;
  lk_err err;
  tool_fx_init(&t, "weather");
  ok(f, "RegisterTool", &t.req.base);
  got = latchkey__v1__tool__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(got);
  assert_string_equal(got->base_url, "https://api.weather.example");
  assert_int_equal(got->n_operations, 2);
  latchkey__v1__tool__free_unpacked(got, NULL);
  assert_int_equal(lk_catalog_get_type(f->cat, "weather-key", &type, &err),
                   LK_OK);
  assert_int_equal(type->fields[0]->max_len, LK_SCHEMA_DEFAULT_MAX_LEN);
  lk_catalog_free_type(type);
  /* upsert: the same again is fine, and the tool can then use the type by
   * reference alone */
  t.req.credential_type = NULL;
  t.tool.description = (char *)"Forecasts, v2";
  ok(f, "RegisterTool", &t.req.base);
  {
    Latchkey__V1__GetRequest g = LATCHKEY__V1__GET_REQUEST__INIT;
    g.id = (char *)"weather";
    ok(f, "GetTool", &g.base);
    got = latchkey__v1__tool__unpack(NULL, f->resp_len, f->resp);
    assert_string_equal(got->description, "Forecasts, v2");
    latchkey__v1__tool__free_unpacked(got, NULL);
  }
}

static void register_tool_without_credential_type(void **s) {
  fx *f = *s;
  tool_fx t;
  tool_fx_init(&t, "free-tool");
  t.tool.credential_type = (char *)"";
  t.req.credential_type = NULL;
  t.tool.base_url = (char *)"http://127.0.0.1:8080";
  ok(f, "RegisterTool", &t.req.base);
  t.tool.base_url = (char *)"https://[::1]:8443";
  ok(f, "RegisterTool", &t.req.base);
}

/* lib/schema decides what a valid tool is (schema_test.c proves each rule);
 * here: RegisterTool applies it to the tool and its inline type, answers
 * its status and message, resolves a type by reference, and stores
 * nothing it refused. */
static void register_tool_refuses_invalid_definitions(void **s) {
  fx *f = *s;
  tool_fx t;
  Latchkey__V1__RegisterToolRequest empty =
      LATCHKEY__V1__REGISTER_TOOL_REQUEST__INIT;

  expect(f, "RegisterTool", &empty.base, LK_INVALID_ARGUMENT, "tool");

#define BAD(stmt, want)                                                \
  do {                                                                 \
    tool_fx_init(&t, "weather");                                       \
    stmt;                                                              \
    expect(f, "RegisterTool", &t.req.base, LK_INVALID_ARGUMENT, want); \
  } while (0)

  BAD(t.tool.id = (char *)"we/ather", "tool.id");
  BAD(t.tool.base_url = (char *)"https://user:pw@api.example", "user info");
  BAD(t.op.method = (char *)"FETCH", "method");
  BAD(t.days.type = (char *)"date", "string, integer");
  /* the inline type is the one the tool names, and is checked too */
  BAD(t.tool.credential_type = (char *)"other-key", "must be 'weather-key'");
  BAD(t.type.n_fields = 0, "no fields");
  BAD(t.rule.value = (char *)"{nope}", "names no declared field");
#undef BAD

  /* a referenced type that does not exist */
  tool_fx_init(&t, "weather");
  t.req.credential_type = NULL;
  t.tool.credential_type = (char *)"missing-key";
  expect(f, "RegisterTool", &t.req.base, LK_NOT_FOUND, "missing-key");

  /* none of that stored anything */
  {
    Latchkey__V1__Tool *got = NULL;
    Latchkey__V1__CredentialType *type = NULL;
    lk_err err;
    assert_int_equal(lk_catalog_get_tool(f->cat, "weather", &got, &err),
                     LK_NOT_FOUND);
    assert_int_equal(lk_catalog_get_type(f->cat, "weather-key", &type, &err),
                     LK_NOT_FOUND);
  }
}

static void register_tool_refuses_type_change_while_bound(void **s) {
  fx *f = *s;
  tool_fx t;
  register_weather(f, "weather");
  create_budget(f, "team-a");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  assert_int_equal(do_bind(f, "team-a", "weather", "", "wk1"), LK_OK);
  register_login_type(f);
  tool_fx_init(&t, "weather");
  t.req.credential_type = NULL;
  t.tool.credential_type = (char *)"login";
  expect(f, "RegisterTool", &t.req.base, LK_FAILED_PRECONDITION, "unbind");
}

static void get_and_delete_missing_tool_are_not_found(void **s) {
  fx *f = *s;
  Latchkey__V1__GetRequest g = LATCHKEY__V1__GET_REQUEST__INIT;
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;
  g.id = (char *)"ghost";
  d.id = (char *)"ghost";
  expect(f, "GetTool", &g.base, LK_NOT_FOUND, "ghost");
  expect(f, "DeleteTool", &d.base, LK_NOT_FOUND, "ghost");
  expect(f, "GetCredentialType", &g.base, LK_NOT_FOUND, "ghost");
  expect(f, "DeleteCredentialType", &d.base, LK_NOT_FOUND, "ghost");
  expect(f, "GetCredential", &g.base, LK_NOT_FOUND, "ghost");
  expect(f, "DeleteCredential", &d.base, LK_NOT_FOUND, "ghost");
  expect(f, "GetBudget", &g.base, LK_NOT_FOUND, "ghost");
  expect(f, "DeleteBudget", &d.base, LK_NOT_FOUND, "ghost");
  g.id = (char *)"";
  expect(f, "GetTool", &g.base, LK_INVALID_ARGUMENT, "required");
  g.id = (char *)"a/b";
  expect(f, "GetTool", &g.base, LK_INVALID_ARGUMENT, "not a valid id");
}

static void list_tools_returns_all_in_id_order(void **s) {
  fx *f = *s;
  Latchkey__V1__ListRequest l = LATCHKEY__V1__LIST_REQUEST__INIT;
  Latchkey__V1__ToolList *list;
  register_weather(f, "w2");
  register_weather(f, "w1");
  ok(f, "ListTools", &l.base);
  list = latchkey__v1__tool_list__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(list);
  assert_int_equal(list->n_tools, 2);
  assert_string_equal(list->tools[0]->id, "w1");
  assert_string_equal(list->tools[1]->id, "w2");
  latchkey__v1__tool_list__free_unpacked(list, NULL);
  ok(f, "ListCredentialTypes", &l.base);
  {
    Latchkey__V1__CredentialTypeList *tl =
        latchkey__v1__credential_type_list__unpack(NULL, f->resp_len, f->resp);
    assert_int_equal(tl->n_types, 1);
    latchkey__v1__credential_type_list__free_unpacked(tl, NULL);
  }
}

/* ---- credential types ---- */

/* RegisterCredentialType applies lib/schema (schema_test.c proves each
 * rule) and stores the type in canonical form. */
static void register_type_refuses_invalid_and_stores_canonical(void **s) {
  fx *f = *s;
  tool_fx t;
  Latchkey__V1__CredentialType *got;
  lk_err err;

  tool_fx_init(&t, "weather");
  t.field.pattern = (char *)"(";
  expect(f, "RegisterCredentialType", &t.type.base, LK_INVALID_ARGUMENT,
         "does not compile");
  tool_fx_init(&t, "weather");
  t.rule.in = (char *)"cookie";
  expect(f, "RegisterCredentialType", &t.type.base, LK_INVALID_ARGUMENT,
         "\"in\" must be header, query, basic or body");
  got = NULL;
  assert_int_equal(lk_catalog_get_type(f->cat, "weather-key", &got, &err),
                   LK_NOT_FOUND);

  tool_fx_init(&t, "weather");
  t.field.max_len = LK_SCHEMA_MAX_MAX_LEN;
  ok(f, "RegisterCredentialType", &t.type.base);
  got = latchkey__v1__credential_type__unpack(NULL, f->resp_len, f->resp);
  assert_int_equal(got->fields[0]->max_len, LK_SCHEMA_MAX_MAX_LEN);
  latchkey__v1__credential_type__free_unpacked(got, NULL);

  tool_fx_init(&t, "weather");
  ok(f, "RegisterCredentialType", &t.type.base);
  got = latchkey__v1__credential_type__unpack(NULL, f->resp_len, f->resp);
  assert_int_equal(got->fields[0]->max_len, LK_SCHEMA_DEFAULT_MAX_LEN);
  latchkey__v1__credential_type__free_unpacked(got, NULL);
}

/* ---- credentials ---- */

static void created_credential_is_masked_sealed_and_unseals(void **s) {
  fx *f = *s;
  Latchkey__V1__Credential *c;
  Latchkey__V1__Credential *stored = NULL;
  lk_secret *plain = NULL;
  unsigned char *raw = NULL;
  size_t raw_len = 0;
  char key[256];
  char id[64];
  lk_err err;
  size_t i;

  register_weather(f, "weather");
  create_cred_ok(f, "weather-key", "", "api_key", API_KEY, NULL, NULL);
  assert_no_bytes(f, API_KEY);
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(c);
  /* generated id: cred_ + 16 lowercase hex */
  assert_int_equal(strlen(c->id), 21);
  assert_memory_equal(c->id, "cred_", 5);
  for (i = 5; i < 21; i++) {
    assert_non_null(strchr("0123456789abcdef", c->id[i]));
  }
  snprintf(id, sizeof(id), "%s", c->id);
  assert_string_equal(c->type, "weather-key");
  assert_string_equal(c->label, "test label");
  assert_int_equal(c->version, 1);
  assert_true(c->created_at > 1600000000000LL);
  assert_int_equal(c->created_at, c->updated_at);
  assert_int_equal(c->n_fields, 1);
  assert_true(c->fields[0]->secret);
  assert_string_equal(c->fields[0]->value, "");
  assert_null(c->fields[0]->sealed);
  assert_string_equal(c->fields[0]->mask, BULLETS "WXYZ");
  latchkey__v1__credential__free_unpacked(c, NULL);

  /* the store holds ciphertext only */
  snprintf(key, sizeof(key), "cred/%s", id);
  assert_int_equal(lk_store_get(f->store, key, &raw, &raw_len, &err), LK_OK);
  assert_null(memmem(raw, raw_len, API_KEY, strlen(API_KEY)));
  lk_store_value_free(raw, raw_len);

  /* and it unseals to the plaintext with the key */
  assert_int_equal(lk_catalog_get_credential(f->cat, id, &stored, &err), LK_OK);
  assert_non_null(stored->fields[0]->sealed);
  assert_int_equal(stored->fields[0]->sealed->key_id, lk_seal_key_id(f->key));
  assert_int_equal(
      lk_unseal(f->key, stored->fields[0]->sealed->key_id, id, "api_key",
                stored->fields[0]->sealed->nonce.data,
                stored->fields[0]->sealed->nonce.len,
                stored->fields[0]->sealed->ciphertext.data,
                stored->fields[0]->sealed->ciphertext.len, &plain, &err),
      LK_OK);
  assert_int_equal(lk_secret_len(plain), strlen(API_KEY));
  assert_memory_equal(lk_secret_data(plain), API_KEY, strlen(API_KEY));
  lk_secret_free(plain);
  /* sealed for this credential only */
  assert_int_equal(
      lk_unseal(f->key, stored->fields[0]->sealed->key_id, "cred_other",
                "api_key", stored->fields[0]->sealed->nonce.data,
                stored->fields[0]->sealed->nonce.len,
                stored->fields[0]->sealed->ciphertext.data,
                stored->fields[0]->sealed->ciphertext.len, &plain, &err),
      LK_FAILED_PRECONDITION);
  lk_catalog_free_credential(stored);
}

static void get_and_list_credentials_never_show_plaintext(void **s) {
  fx *f = *s;
  Latchkey__V1__GetRequest g = LATCHKEY__V1__GET_REQUEST__INIT;
  Latchkey__V1__ListRequest l = LATCHKEY__V1__LIST_REQUEST__INIT;
  Latchkey__V1__CredentialList *list;
  register_weather(f, "weather");
  register_login_type(f);
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  create_cred_ok(f, "login", "lg1", "user", "alice", "password",
                 "hunter2-hunter2");
  assert_no_bytes(f, "hunter2-hunter2");
  g.id = (char *)"wk1";
  ok(f, "GetCredential", &g.base);
  assert_no_bytes(f, API_KEY);
  g.id = (char *)"lg1";
  ok(f, "GetCredential", &g.base);
  assert_no_bytes(f, "hunter2-hunter2");
  ok(f, "ListCredentials", &l.base);
  assert_no_bytes(f, API_KEY);
  assert_no_bytes(f, "hunter2-hunter2");
  list = latchkey__v1__credential_list__unpack(NULL, f->resp_len, f->resp);
  assert_int_equal(list->n_credentials, 2);
  assert_string_equal(list->credentials[0]->id, "lg1");
  /* the non-secret field is shown, the secret one masked */
  assert_string_equal(list->credentials[0]->fields[0]->name, "user");
  assert_string_equal(list->credentials[0]->fields[0]->value, "alice");
  assert_false(list->credentials[0]->fields[0]->secret);
  assert_string_equal(list->credentials[0]->fields[1]->value, "");
  assert_null(list->credentials[0]->fields[1]->sealed);
  assert_string_equal(list->credentials[0]->fields[1]->mask, BULLETS "ter2");
  latchkey__v1__credential_list__free_unpacked(list, NULL);
}

static void mask_shows_last_four_only_from_twelve_chars(void **s) {
  fx *f = *s;
  Latchkey__V1__Credential *c;
  register_login_type(f);

  create_cred_ok(f, "login", "", "user", "u", "password", "abcdefghijk");
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_string_equal(c->fields[1]->mask, BULLETS);
  latchkey__v1__credential__free_unpacked(c, NULL);

  create_cred_ok(f, "login", "", "user", "u", "password", "abcdefghijkl");
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_string_equal(c->fields[1]->mask, BULLETS "ijkl");
  latchkey__v1__credential__free_unpacked(c, NULL);

  /* characters, not bytes: 11 two-byte characters are still too short */
  create_cred_ok(f, "login", "", "user", "u", "password",
                 "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                 "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_string_equal(c->fields[1]->mask, BULLETS);
  latchkey__v1__credential__free_unpacked(c, NULL);

  create_cred_ok(f, "login", "", "user", "u", "password",
                 "abcdefghij\xc3\xa9\xc3\xa8");
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_string_equal(c->fields[1]->mask, BULLETS "ij\xc3\xa9\xc3\xa8");
  latchkey__v1__credential__free_unpacked(c, NULL);
}

static void create_credential_rejects_each_invalid_input(void **s) {
  fx *f = *s;
  char long_pw[42];
  register_weather(f, "weather");
  register_login_type(f);

  assert_int_equal(create_cred(f, "", "", "api_key", API_KEY, NULL, NULL),
                   LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "type"));
  assert_int_equal(
      create_cred(f, "nope-type", "", "api_key", API_KEY, NULL, NULL),
      LK_NOT_FOUND);
  assert_non_null(strstr(f->err.msg, "nope-type"));
  /* unknown field: named */
  assert_int_equal(
      create_cred(f, "weather-key", "", "api_key", API_KEY, "region", "eu"),
      LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "'region'"));
  /* missing fields: listed */
  assert_int_equal(create_cred(f, "login", "", NULL, NULL, NULL, NULL),
                   LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "user, password"));
  assert_int_equal(create_cred(f, "login", "", "user", "bob", NULL, NULL),
                   LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "missing field of"));
  assert_non_null(strstr(f->err.msg, "password"));
  /* duplicate field */
  assert_int_equal(create_cred(f, "weather-key", "", "api_key", API_KEY,
                               "api_key", API_KEY2),
                   LK_INVALID_ARGUMENT);
  assert_null(strstr(f->err.msg, API_KEY));
  /* pattern: names field and pattern, never the value */
  assert_int_equal(
      create_cred(f, "weather-key", "", "api_key", "short!secret", NULL, NULL),
      LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "api_key"));
  assert_non_null(strstr(f->err.msg, "^[A-Za-z0-9_-]{16,128}$"));
  assert_null(strstr(f->err.msg, "short!secret"));
  /* max_len */
  memset(long_pw, 'p', 41);
  long_pw[41] = '\0';
  assert_int_equal(
      create_cred(f, "login", "", "user", "bob", "password", long_pw),
      LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "max_len"));
  assert_null(strstr(f->err.msg, long_pw));
  /* empty value and invalid UTF-8 */
  assert_int_equal(create_cred(f, "login", "", "user", "", "password", "pw"),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(
      create_cred(f, "login", "", "user", "bob", "password", "a\xff\xfe"),
      LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "UTF-8"));
  /* explicit ids: validated and unique */
  assert_int_equal(
      create_cred(f, "weather-key", "bad/id", "api_key", API_KEY, NULL, NULL),
      LK_INVALID_ARGUMENT);
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  assert_int_equal(
      create_cred(f, "weather-key", "wk1", "api_key", API_KEY2, NULL, NULL),
      LK_ALREADY_EXISTS);
  assert_non_null(strstr(f->err.msg, "wk1"));
  assert_null(strstr(f->err.msg, API_KEY2));
}

static void update_credential_reseals_and_bumps_version(void **s) {
  fx *f = *s;
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry e =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry *es[1] = {&e};
  Latchkey__V1__UpdateCredentialRequest u =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__INIT;
  Latchkey__V1__Credential *c;
  Latchkey__V1__Credential *stored = NULL;
  lk_secret *plain = NULL;
  lk_err err;

  register_login_type(f);
  create_cred_ok(f, "login", "lg1", "user", "alice", "password",
                 "first-password-1");
  u.id = (char *)"lg1";
  u.label = (char *)"renamed";
  u.n_fields = 1;
  u.fields = es;
  e.key = (char *)"password";
  e.value = (char *)"second-password-2";
  ok(f, "UpdateCredential", &u.base);
  assert_no_bytes(f, "second-password-2");
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_int_equal(c->version, 2);
  assert_string_equal(c->label, "renamed");
  assert_true(c->updated_at >= c->created_at);
  assert_int_equal(c->n_fields, 2);
  assert_string_equal(c->fields[0]->value, "alice");
  assert_string_equal(c->fields[1]->mask, BULLETS "rd-2");
  latchkey__v1__credential__free_unpacked(c, NULL);

  assert_int_equal(lk_catalog_get_credential(f->cat, "lg1", &stored, &err),
                   LK_OK);
  assert_int_equal(
      lk_unseal(f->key, stored->fields[1]->sealed->key_id, "lg1", "password",
                stored->fields[1]->sealed->nonce.data,
                stored->fields[1]->sealed->nonce.len,
                stored->fields[1]->sealed->ciphertext.data,
                stored->fields[1]->sealed->ciphertext.len, &plain, &err),
      LK_OK);
  assert_string_equal(lk_secret_str(plain), "second-password-2");
  lk_secret_free(plain);
  lk_catalog_free_credential(stored);

  /* empty label keeps the old one; no fields just bumps the version */
  u.label = (char *)"";
  u.n_fields = 0;
  ok(f, "UpdateCredential", &u.base);
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_string_equal(c->label, "renamed");
  assert_int_equal(c->version, 3);
  latchkey__v1__credential__free_unpacked(c, NULL);

  /* updating the plain field keeps the sealed secret intact */
  u.n_fields = 1;
  e.key = (char *)"user";
  e.value = (char *)"bob";
  ok(f, "UpdateCredential", &u.base);
  assert_int_equal(lk_catalog_get_credential(f->cat, "lg1", &stored, &err),
                   LK_OK);
  assert_string_equal(stored->fields[0]->value, "bob");
  assert_int_equal(
      lk_unseal(f->key, stored->fields[1]->sealed->key_id, "lg1", "password",
                stored->fields[1]->sealed->nonce.data,
                stored->fields[1]->sealed->nonce.len,
                stored->fields[1]->sealed->ciphertext.data,
                stored->fields[1]->sealed->ciphertext.len, &plain, &err),
      LK_OK);
  assert_string_equal(lk_secret_str(plain), "second-password-2");
  lk_secret_free(plain);
  lk_catalog_free_credential(stored);

  /* negatives */
  e.key = (char *)"token";
  expect(f, "UpdateCredential", &u.base, LK_INVALID_ARGUMENT, "'token'");
  e.key = (char *)"password";
  e.value = (char *)"this-one-is-far-too-long-for-the-forty-byte-limit";
  expect(f, "UpdateCredential", &u.base, LK_INVALID_ARGUMENT, "max_len");
  assert_null(strstr(f->err.msg, "far-too-long"));
  u.id = (char *)"ghost";
  e.value = (char *)"fine";
  expect(f, "UpdateCredential", &u.base, LK_NOT_FOUND, "ghost");
  u.id = (char *)"";
  expect(f, "UpdateCredential", &u.base, LK_INVALID_ARGUMENT, "id");
}

/* ---- budgets ---- */

static void budgets_validate_and_pause(void **s) {
  fx *f = *s;
  char *agents[2] = {(char *)"agent-1", (char *)"agent-1"};
  Latchkey__V1__Budget b = LATCHKEY__V1__BUDGET__INIT;
  Latchkey__V1__SetBudgetPausedRequest p =
      LATCHKEY__V1__SET_BUDGET_PAUSED_REQUEST__INIT;
  Latchkey__V1__Budget *got;

  b.id = (char *)"team-a";
  expect(f, "CreateBudget", &b.base, LK_INVALID_ARGUMENT, "no agents");
  b.agents = agents;
  b.n_agents = 2;
  expect(f, "CreateBudget", &b.base, LK_INVALID_ARGUMENT, "listed twice");
  agents[1] = (char *)"bad agent";
  expect(f, "CreateBudget", &b.base, LK_INVALID_ARGUMENT, "agent 2");
  agents[1] = (char *)"agent-2";
  b.id = (char *)"team/a";
  expect(f, "CreateBudget", &b.base, LK_INVALID_ARGUMENT, "budget.id");
  b.id = (char *)"team-a";
  ok(f, "CreateBudget", &b.base);
  expect(f, "CreateBudget", &b.base, LK_ALREADY_EXISTS, "team-a");

  p.id = (char *)"team-a";
  p.paused = 1;
  ok(f, "SetBudgetPaused", &p.base);
  got = latchkey__v1__budget__unpack(NULL, f->resp_len, f->resp);
  assert_true(got->paused);
  assert_int_equal(got->n_agents, 2);
  latchkey__v1__budget__free_unpacked(got, NULL);
  p.id = (char *)"ghost";
  expect(f, "SetBudgetPaused", &p.base, LK_NOT_FOUND, "ghost");
}

/* ---- bindings ---- */

static void bind_checks_references_and_types(void **s) {
  fx *f = *s;
  tool_fx t;
  register_weather(f, "weather");
  register_login_type(f);
  tool_fx_init(&t, "free");
  t.tool.credential_type = (char *)"";
  t.req.credential_type = NULL;
  ok(f, "RegisterTool", &t.req.base);
  create_budget(f, "team-a");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  create_cred_ok(f, "login", "lg1", "user", "u", "password", "pw");

  assert_int_equal(do_bind(f, "team-a", "weather", "weather-key", "wk1"),
                   LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "exactly one"));
  assert_int_equal(do_bind(f, "team-a", "", "", "wk1"), LK_INVALID_ARGUMENT);
  assert_int_equal(do_bind(f, "team-a", "weather", "", ""),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(do_bind(f, "ghost", "weather", "", "wk1"), LK_NOT_FOUND);
  assert_non_null(strstr(f->err.msg, "ghost"));
  assert_int_equal(do_bind(f, "team-a", "weather", "", "ghost-cred"),
                   LK_NOT_FOUND);
  assert_non_null(strstr(f->err.msg, "ghost-cred"));
  assert_int_equal(do_bind(f, "team-a", "ghost-tool", "", "wk1"), LK_NOT_FOUND);
  assert_non_null(strstr(f->err.msg, "ghost-tool"));
  assert_int_equal(do_bind(f, "team-a", "", "ghost-type", "wk1"), LK_NOT_FOUND);
  assert_non_null(strstr(f->err.msg, "ghost-type"));
  assert_int_equal(do_bind(f, "team-a", "free", "", "wk1"),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(f->err.msg, "needs no credential"));
  /* type mismatch, tool-specific and budget-wide */
  assert_int_equal(do_bind(f, "team-a", "weather", "", "lg1"),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(f->err.msg, "'login'"));
  assert_non_null(strstr(f->err.msg, "'weather-key'"));
  assert_int_equal(do_bind(f, "team-a", "", "weather-key", "lg1"),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(f->err.msg, "'login'"));
  assert_false(has_binding_tool(f, "team-a", "weather"));

  assert_int_equal(do_bind(f, "team-a", "weather", "", "wk1"), LK_OK);
  assert_true(has_binding_tool(f, "team-a", "weather"));
  assert_int_equal(do_bind(f, "team-a", "", "login", "lg1"), LK_OK);
  assert_true(has_binding_type(f, "team-a", "login"));
}

static void rebind_overwrites_and_unbind_removes(void **s) {
  fx *f = *s;
  Latchkey__V1__Binding u = LATCHKEY__V1__BINDING__INIT;
  Latchkey__V1__Binding *got = NULL;
  lk_err err;
  register_weather(f, "weather");
  create_budget(f, "team-a");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  create_cred_ok(f, "weather-key", "wk2", "api_key", API_KEY2, NULL, NULL);
  assert_int_equal(do_bind(f, "team-a", "weather", "", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "team-a", "weather", "", "wk2"), LK_OK);
  assert_int_equal(
      lk_catalog_get_binding_tool(f->cat, "team-a", "weather", &got, &err),
      LK_OK);
  assert_string_equal(got->credential_id, "wk2");
  lk_catalog_free_binding(got);

  u.budget_id = (char *)"team-a";
  u.tool_id = (char *)"weather";
  ok(f, "Unbind", &u.base);
  assert_false(has_binding_tool(f, "team-a", "weather"));
  expect(f, "Unbind", &u.base, LK_NOT_FOUND, "weather");
  u.tool_id = (char *)"";
  u.credential_type = (char *)"weather-key";
  expect(f, "Unbind", &u.base, LK_NOT_FOUND, "weather-key");
  u.tool_id = (char *)"weather";
  expect(f, "Unbind", &u.base, LK_INVALID_ARGUMENT, "exactly one");
}

static void list_bindings_all_or_one_budget(void **s) {
  fx *f = *s;
  Latchkey__V1__ListBindingsRequest l =
      LATCHKEY__V1__LIST_BINDINGS_REQUEST__INIT;
  Latchkey__V1__BindingList *list;
  register_weather(f, "weather");
  create_budget(f, "a");
  create_budget(f, "ab");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  assert_int_equal(do_bind(f, "a", "weather", "", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "a", "", "weather-key", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "ab", "weather", "", "wk1"), LK_OK);
  ok(f, "ListBindings", &l.base);
  list = latchkey__v1__binding_list__unpack(NULL, f->resp_len, f->resp);
  assert_int_equal(list->n_bindings, 3);
  latchkey__v1__binding_list__free_unpacked(list, NULL);
  l.budget_id = (char *)"a";
  ok(f, "ListBindings", &l.base);
  list = latchkey__v1__binding_list__unpack(NULL, f->resp_len, f->resp);
  assert_int_equal(list->n_bindings, 2);
  assert_string_equal(list->bindings[0]->budget_id, "a");
  assert_string_equal(list->bindings[1]->budget_id, "a");
  latchkey__v1__binding_list__free_unpacked(list, NULL);
  l.budget_id = (char *)"ghost";
  expect(f, "ListBindings", &l.base, LK_NOT_FOUND, "ghost");
}

/* ---- delete guards and cascades ---- */

static void delete_type_refused_while_used(void **s) {
  fx *f = *s;
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;
  register_weather(f, "weather");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  d.id = (char *)"weather-key";
  expect(f, "DeleteCredentialType", &d.base, LK_FAILED_PRECONDITION,
         "tool 'weather'");
  d.id = (char *)"weather";
  ok(f, "DeleteTool", &d.base);
  d.id = (char *)"weather-key";
  expect(f, "DeleteCredentialType", &d.base, LK_FAILED_PRECONDITION,
         "credential 'wk1'");
  d.id = (char *)"wk1";
  ok(f, "DeleteCredential", &d.base);
  d.id = (char *)"weather-key";
  ok(f, "DeleteCredentialType", &d.base);
  expect(f, "DeleteCredentialType", &d.base, LK_NOT_FOUND, "weather-key");
}

static void delete_credential_refused_while_bound(void **s) {
  fx *f = *s;
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;
  Latchkey__V1__Binding u = LATCHKEY__V1__BINDING__INIT;
  register_weather(f, "weather");
  create_budget(f, "team-a");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  assert_int_equal(do_bind(f, "team-a", "weather", "", "wk1"), LK_OK);
  d.id = (char *)"wk1";
  expect(f, "DeleteCredential", &d.base, LK_FAILED_PRECONDITION, "team-a");
  assert_non_null(strstr(f->err.msg, "tool 'weather'"));
  assert_non_null(strstr(f->err.msg, "unbind"));
  u.budget_id = (char *)"team-a";
  u.tool_id = (char *)"weather";
  ok(f, "Unbind", &u.base);
  assert_int_equal(do_bind(f, "team-a", "", "weather-key", "wk1"), LK_OK);
  expect(f, "DeleteCredential", &d.base, LK_FAILED_PRECONDITION,
         "credential type 'weather-key'");
  u.tool_id = (char *)"";
  u.credential_type = (char *)"weather-key";
  ok(f, "Unbind", &u.base);
  ok(f, "DeleteCredential", &d.base);
}

static void delete_tool_removes_its_bindings_only(void **s) {
  fx *f = *s;
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;
  Latchkey__V1__Tool *t = NULL;
  lk_err err;
  register_weather(f, "weather");
  register_weather(f, "weather2");
  create_budget(f, "team-a");
  create_budget(f, "team-b");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  assert_int_equal(do_bind(f, "team-a", "weather", "", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "team-b", "weather", "", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "team-a", "weather2", "", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "team-a", "", "weather-key", "wk1"), LK_OK);
  d.id = (char *)"weather";
  ok(f, "DeleteTool", &d.base);
  assert_int_equal(lk_catalog_get_tool(f->cat, "weather", &t, &err),
                   LK_NOT_FOUND);
  assert_false(has_binding_tool(f, "team-a", "weather"));
  assert_false(has_binding_tool(f, "team-b", "weather"));
  assert_true(has_binding_tool(f, "team-a", "weather2"));
  assert_true(has_binding_type(f, "team-a", "weather-key"));
}

static void delete_budget_removes_its_bindings_only(void **s) {
  fx *f = *s;
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;
  register_weather(f, "weather");
  create_budget(f, "a");
  create_budget(f, "ab");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  assert_int_equal(do_bind(f, "a", "weather", "", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "a", "", "weather-key", "wk1"), LK_OK);
  assert_int_equal(do_bind(f, "ab", "weather", "", "wk1"), LK_OK);
  d.id = (char *)"a";
  ok(f, "DeleteBudget", &d.base);
  assert_false(has_binding_tool(f, "a", "weather"));
  assert_false(has_binding_type(f, "a", "weather-key"));
  assert_true(has_binding_tool(f, "ab", "weather"));
  expect(f, "GetBudget", &d.base, LK_NOT_FOUND, "'a'");
}

/* ---- dispatch ---- */

static void garbage_request_is_invalid_argument(void **s) {
  fx *f = *s;
  const unsigned char junk[3] = {0x0a, 0x05, 'a'};
  unsigned char *resp = NULL;
  size_t len = 0;
  lk_err err;
  assert_int_equal(lk_admin_handle(f->admin, "/latchkey.v1.Admin/RegisterTool",
                                   junk, sizeof(junk), &resp, &len, &err),
                   LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "latchkey.v1.RegisterToolRequest"));
  assert_null(resp);
  assert_int_equal(
      lk_admin_handle(f->admin, "/latchkey.v1.Admin/CreateCredential", junk,
                      sizeof(junk), &resp, &len, &err),
      LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "latchkey.v1.CreateCredentialRequest"));
}

static void unknown_method_is_not_found(void **s) {
  fx *f = *s;
  unsigned char *resp = NULL;
  size_t len = 0;
  lk_err err;
  assert_int_equal(lk_admin_handle(f->admin, "/latchkey.v1.Admin/Frobnicate",
                                   NULL, 0, &resp, &len, &err),
                   LK_NOT_FOUND);
  assert_non_null(strstr(err.msg, "unknown Admin method"));
  assert_non_null(strstr(err.msg, "Frobnicate"));
  assert_int_equal(lk_admin_handle(f->admin, "/latchkey.v1.ToolCalls/Call",
                                   NULL, 0, &resp, &len, &err),
                   LK_NOT_FOUND);
}

static void oversized_request_is_resource_exhausted(void **s) {
  fx *f = *s;
  size_t n = LK_ADMIN_MAX_REQUEST + 1;
  unsigned char *big = calloc(1, n);
  unsigned char *resp = NULL;
  size_t len = 0;
  lk_err err;
  assert_non_null(big);
  assert_int_equal(lk_admin_handle(f->admin, "/latchkey.v1.Admin/RegisterTool",
                                   big, n, &resp, &len, &err),
                   LK_RESOURCE_EXHAUSTED);
  free(big);
}

static void every_listed_method_is_served(void **s) {
  fx *f = *s;
  size_t n = 0;
  size_t i;
  const char *const *m = lk_admin_methods(&n);
  assert_int_equal(n, 24);
  for (i = 0; i < n; i++) {
    unsigned char *resp = NULL;
    size_t len = 0;
    lk_err err;
    lk_status st;
    lk_err_clear(&err);
    st = lk_admin_handle(f->admin, m[i], NULL, 0, &resp, &len, &err);
    if (st != LK_OK) {
      assert_null(strstr(err.msg, "unknown Admin method"));
    }
    free(resp);
  }
  /* the empty List requests answer with empty lists */
  {
    Latchkey__V1__ListRequest l = LATCHKEY__V1__LIST_REQUEST__INIT;
    ok(f, "ListBudgets", &l.base);
    assert_int_equal(f->resp_len, 0);
  }
}

/* ---- audit ---- */

static const unsigned char audit_key_bytes[LK_AUDIT_KEY_BYTES] = {
    'l', 'k', '-', 'a', 'u', 'd', 'i', 't', '-', 't', 'e',
    's', 't', '-', 'k', 'e', 'y', 1,   2,   3,   4,   5,
    6,   7,   8,   9,   10,  11,  12,  13,  14,  15};

/* lk_admin_hash_fn over an lk_audit_key. */
static lk_status hash_with(void *ctx, const unsigned char *value, size_t len,
                           char out_hex[LK_AUDIT_HEX_BYTES], lk_err *err) {
  return lk_audit_key_hash(ctx, value, len, out_hex, err);
}

/* The documented hash: BLAKE2b-256 keyed with the audit key, in hex. */
static void documented_hash(const char *value, char out[LK_AUDIT_HEX_BYTES]) {
  unsigned char h[32];
  assert_int_equal(crypto_generichash(
                       h, sizeof(h), (const unsigned char *)value,
                       strlen(value), audit_key_bytes, sizeof(audit_key_bytes)),
                   0);
  sodium_bin2hex(out, LK_AUDIT_HEX_BYTES, h, sizeof(h));
}

/* Gives f's service an auditor over audit_key_bytes; returns the holder. */
static lk_audit_key *use_test_auditor(fx *f) {
  lk_audit_key *k = NULL;
  lk_err err;
  assert_int_equal(lk_audit_key_new(&k, &err), LK_OK);
  assert_int_equal(
      lk_audit_key_set(k, audit_key_bytes, sizeof(audit_key_bytes), &err),
      LK_OK);
  lk_admin_auditor a = {hash_with, k};
  lk_admin_set_auditor(f->admin, a);
  return k;
}

static lk_status audit_hash(fx *f, const char *value, size_t len) {
  Latchkey__V1__AuditHashRequest r = LATCHKEY__V1__AUDIT_HASH_REQUEST__INIT;
  r.value.data = (uint8_t *)value;
  r.value.len = len;
  return call(f, "AuditHash", &r.base);
}

static void audit_hash_answers_the_auditors_hash_and_needs_an_auditor(
    void **s) {
  fx *f = *s;
  char want[LK_AUDIT_HEX_BYTES];
  assert_int_equal(audit_hash(f, API_KEY, strlen(API_KEY)),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(f->err.msg, "no audit key"));

  lk_audit_key *k = use_test_auditor(f);
  assert_int_equal(audit_hash(f, API_KEY, strlen(API_KEY)), LK_OK);
  Latchkey__V1__AuditHashResponse *r =
      latchkey__v1__audit_hash_response__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(r);
  documented_hash(API_KEY, want);
  assert_string_equal(r->hash, want);
  latchkey__v1__audit_hash_response__free_unpacked(r, NULL);
  assert_no_bytes(f, API_KEY);

  expect(f, "AuditHash",
         &(Latchkey__V1__AuditHashRequest)
              LATCHKEY__V1__AUDIT_HASH_REQUEST__INIT.base,
         LK_INVALID_ARGUMENT, "empty");
  char *big = malloc(LK_SEAL_MAX_PT_BYTES + 1);
  assert_non_null(big);
  memset(big, 'k', LK_SEAL_MAX_PT_BYTES + 1);
  assert_int_equal(audit_hash(f, big, LK_SEAL_MAX_PT_BYTES + 1),
                   LK_INVALID_ARGUMENT);
  assert_non_null(strstr(f->err.msg, "no secret value is longer"));
  assert_int_equal(audit_hash(f, big, LK_SEAL_MAX_PT_BYTES), LK_OK);
  free(big);
  lk_audit_key_destroy(k);
}

/* Sends stderr to a fresh file; returns the saved stderr fd. */
static int capture_stderr(const fx *f, char *path, size_t n) {
  snprintf(path, n, "%s/stderr.log", f->dir);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(saved >= 0 && fd >= 0);
  assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
  close(fd);
  return saved;
}

/* Restores stderr and returns what was written (malloc'd). */
static char *release_stderr(int saved, const char *path) {
  fflush(stderr);
  assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
  close(saved);
  FILE *fp = fopen(path, "r");
  assert_non_null(fp);
  char *text = calloc(1, 1 << 20);
  assert_non_null(text);
  size_t got = fread(text, 1, (1 << 20) - 1, fp);
  text[got] = '\0';
  fclose(fp);
  return text;
}

/* Parses the audit.admin lines of text into a JSON array. */
static json_t *audit_admin_lines(const char *text) {
  json_t *out = json_array();
  const char *p = text;
  while (*p != '\0') {
    const char *nl = strchr(p, '\n');
    size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
    json_error_t je;
    json_t *j = json_loadb(p, n, 0, &je);
    if (j == NULL) {
      fail_msg("a log line is not JSON: %.*s", (int)n, p);
    }
    if (strcmp(json_string_value(json_object_get(j, "event")), "audit.admin") ==
        0) {
      json_array_append(out, j);
    }
    json_decref(j);
    p += n + (nl != NULL);
  }
  return out;
}

static const char *member(json_t *line, const char *key) {
  const char *v = json_string_value(json_object_get(line, key));
  return v != NULL ? v : "";
}

static void changes_write_one_audit_line_each_with_hashes_never_values(
    void **s) {
  fx *f = *s;
  char path[1200];
  char want1[LK_AUDIT_HEX_BYTES];
  char want2[LK_AUDIT_HEX_BYTES];
  lk_audit_key *k = use_test_auditor(f);
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry e =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry *es[1] = {&e};
  Latchkey__V1__UpdateCredentialRequest u =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__INIT;
  Latchkey__V1__GetRequest g = LATCHKEY__V1__GET_REQUEST__INIT;
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;

  int saved = capture_stderr(f, path, sizeof(path));
  register_weather(f, "weather"); /* 1 */
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL,
                 NULL); /* 2 */
  u.id = (char *)"wk1";
  u.n_fields = 1;
  u.fields = es;
  e.key = (char *)"api_key";
  e.value = (char *)API_KEY2;
  ok(f, "UpdateCredential", &u.base); /* 3 */
  g.id = (char *)"wk1";
  ok(f, "GetCredential", &g.base); /* a read: no line */
  create_budget(f, "b1");          /* 4 */
  assert_int_equal(do_bind(f, "b1", "weather", "", "wk1"), LK_OK); /* 5 */
  /* 6: refused, and the value that failed its pattern is not echoed */
  assert_int_equal(
      create_cred(f, "weather-key", "wk2", "api_key", "short", NULL, NULL),
      LK_INVALID_ARGUMENT);
  d.id = (char *)"wk1";
  assert_int_equal(call(f, "DeleteCredential", &d.base),
                   LK_FAILED_PRECONDITION); /* 7: still bound */
  assert_int_equal(audit_hash(f, API_KEY, strlen(API_KEY)), LK_OK); /* 8 */
  char *text = release_stderr(saved, path);

  assert_null(strstr(text, API_KEY));
  assert_null(strstr(text, API_KEY2));
  assert_null(strstr(text, "\"short\""));
  json_t *lines = audit_admin_lines(text);
  assert_int_equal(json_array_size(lines), 8);
  json_t *l;
  l = json_array_get(lines, 0);
  assert_string_equal(member(l, "action"), "tool.register");
  assert_string_equal(member(l, "tool_id"), "weather");
  assert_string_equal(member(l, "credential_type"), "weather-key");
  assert_string_equal(member(l, "outcome"), "ok");
  l = json_array_get(lines, 1);
  assert_string_equal(member(l, "action"), "credential.create");
  assert_string_equal(member(l, "credential_id"), "wk1");
  assert_string_equal(member(l, "credential_type"), "weather-key");
  assert_string_equal(member(l, "outcome"), "ok");
  documented_hash(API_KEY, want1);
  assert_int_equal(json_object_size(json_object_get(l, "secret_hashes")), 1);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(l, "secret_hashes"), "api_key")),
                      want1);
  l = json_array_get(lines, 2);
  assert_string_equal(member(l, "action"), "credential.update");
  assert_string_equal(member(l, "credential_id"), "wk1");
  documented_hash(API_KEY2, want2);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(l, "secret_hashes"), "api_key")),
                      want2);
  l = json_array_get(lines, 3);
  assert_string_equal(member(l, "action"), "budget.create");
  assert_string_equal(member(l, "budget_id"), "b1");
  assert_string_equal(
      json_string_value(json_array_get(json_object_get(l, "agents"), 0)),
      "agent-1");
  l = json_array_get(lines, 4);
  assert_string_equal(member(l, "action"), "bind");
  assert_string_equal(member(l, "budget_id"), "b1");
  assert_string_equal(member(l, "tool_id"), "weather");
  assert_string_equal(member(l, "credential_id"), "wk1");
  l = json_array_get(lines, 5);
  assert_string_equal(member(l, "action"), "credential.create");
  assert_string_equal(member(l, "outcome"), "INVALID_ARGUMENT");
  assert_null(json_object_get(l, "secret_hashes"));
  l = json_array_get(lines, 6);
  assert_string_equal(member(l, "action"), "credential.delete");
  assert_string_equal(member(l, "credential_id"), "wk1");
  assert_string_equal(member(l, "outcome"), "FAILED_PRECONDITION");
  l = json_array_get(lines, 7);
  assert_string_equal(member(l, "action"), "audit.hash");
  assert_string_equal(member(l, "outcome"), "ok");
  assert_null(json_object_get(l, "secret_hashes")); /* asking leaves none */
  json_decref(lines);
  free(text);
  lk_audit_key_destroy(k);
}

static void invalid_ids_are_never_echoed_in_audit_lines(void **s) {
  fx *f = *s;
  char path[1200];
  Latchkey__V1__DeleteRequest d = LATCHKEY__V1__DELETE_REQUEST__INIT;
  d.id = (char *)"sk-live leaked/in the id field";
  int saved = capture_stderr(f, path, sizeof(path));
  assert_int_equal(call(f, "DeleteTool", &d.base), LK_INVALID_ARGUMENT);
  assert_int_equal(lk_admin_handle(f->admin, "/latchkey.v1.Admin/Bind",
                                   (const unsigned char *)"\xff\xff", 2,
                                   &f->resp, &f->resp_len, &f->err),
                   LK_INVALID_ARGUMENT);
  char *text = release_stderr(saved, path);
  assert_null(strstr(text, "sk-live"));
  json_t *lines = audit_admin_lines(text);
  assert_int_equal(json_array_size(lines), 2);
  json_t *l = json_array_get(lines, 0);
  assert_string_equal(member(l, "action"), "tool.delete");
  assert_null(json_object_get(l, "tool_id"));
  assert_string_equal(member(l, "outcome"), "INVALID_ARGUMENT");
  l = json_array_get(lines, 1);
  assert_string_equal(member(l, "action"), "bind");
  assert_string_equal(member(l, "outcome"), "INVALID_ARGUMENT");
  json_decref(lines);
  free(text);
}

/* ---- key ring methods --------------------------------------------------- */

static void key_methods_without_a_key_ring_are_failed_precondition(void **s) {
  fx *f = *s;
  Latchkey__V1__RotateKeyRequest rot = LATCHKEY__V1__ROTATE_KEY_REQUEST__INIT;
  Latchkey__V1__Empty empty = LATCHKEY__V1__EMPTY__INIT;
  static const char want[] =
      "key rotation is a control-plane operation: this standalone sidecar "
      "seals with its node key and has no key ring; run latchkeyctl keys "
      "against latchkey-cp";
  assert_int_equal(call(f, "RotateKey", &rot.base), LK_FAILED_PRECONDITION);
  assert_string_equal(f->err.msg, want);
  assert_int_equal(call(f, "GetKeyStatus", &empty.base),
                   LK_FAILED_PRECONDITION);
  assert_string_equal(f->err.msg, want);
}

/* A keys hook that records how it was called and answers a fixed status. */
typedef struct {
  int calls;
  int last_rotate;
  lk_status fail_with;
} keys_probe;

static lk_status probe_keys(void *ctx, int rotate, lk_admin_key_status *out,
                            lk_err *err) {
  keys_probe *p = ctx;
  p->calls++;
  p->last_rotate = rotate;
  if (p->fail_with != LK_OK) {
    return lk_fail(err, p->fail_with, "key ring %s unreadable", "/x/ring");
  }
  out->active_key_id = rotate ? 3 : 2;
  out->n_keys = 3;
  out->keys[0].id = 1;
  out->keys[0].state = "retiring";
  out->keys[0].sealed_fields = 5;
  out->keys[1].id = 2;
  out->keys[1].state = rotate ? "retiring" : "active";
  out->keys[1].sealed_fields = 7;
  out->keys[2].id = 9;
  out->keys[2].state = "missing";
  out->keys[2].sealed_fields = 1;
  out->total_fields = 13;
  out->resealing = rotate;
  snprintf(out->last_error, sizeof(out->last_error), "%s",
           rotate ? "" : "credential c1 field k is sealed under key 9");
  return LK_OK;
}

static void key_methods_answer_the_hooks_status_as_key_status(void **s) {
  fx *f = *s;
  keys_probe probe = {0, -1, LK_OK};
  lk_admin_keys hook = {probe_keys, &probe};
  lk_admin_set_keys(f->admin, hook);
  Latchkey__V1__Empty empty = LATCHKEY__V1__EMPTY__INIT;
  ok(f, "GetKeyStatus", &empty.base);
  assert_int_equal(probe.calls, 1);
  assert_int_equal(probe.last_rotate, 0);
  Latchkey__V1__KeyStatus *ks =
      latchkey__v1__key_status__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(ks);
  assert_int_equal(ks->active_key_id, 2);
  assert_int_equal(ks->n_keys, 3);
  assert_int_equal(ks->keys[0]->id, 1);
  assert_string_equal(ks->keys[0]->state, "retiring");
  assert_int_equal(ks->keys[0]->sealed_fields, 5);
  assert_string_equal(ks->keys[1]->state, "active");
  assert_int_equal(ks->keys[2]->id, 9);
  assert_string_equal(ks->keys[2]->state, "missing");
  assert_int_equal(ks->total_fields, 13);
  assert_false(ks->resealing);
  assert_string_equal(ks->last_error,
                      "credential c1 field k is sealed under key 9");
  latchkey__v1__key_status__free_unpacked(ks, NULL);

  Latchkey__V1__RotateKeyRequest rot = LATCHKEY__V1__ROTATE_KEY_REQUEST__INIT;
  ok(f, "RotateKey", &rot.base);
  assert_int_equal(probe.calls, 2);
  assert_int_equal(probe.last_rotate, 1);
  ks = latchkey__v1__key_status__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(ks);
  assert_int_equal(ks->active_key_id, 3);
  assert_true(ks->resealing);
  assert_string_equal(ks->last_error, "");
  latchkey__v1__key_status__free_unpacked(ks, NULL);

  probe.fail_with = LK_FAILED_PRECONDITION;
  assert_int_equal(call(f, "RotateKey", &rot.base), LK_FAILED_PRECONDITION);
  assert_string_equal(f->err.msg, "key ring /x/ring unreadable");
}

static void key_rotation_writes_an_audit_line_and_status_reads_none(void **s) {
  fx *f = *s;
  char path[1200];
  keys_probe probe = {0, -1, LK_OK};
  lk_admin_keys hook = {probe_keys, &probe};
  Latchkey__V1__RotateKeyRequest rot = LATCHKEY__V1__ROTATE_KEY_REQUEST__INIT;
  Latchkey__V1__Empty empty = LATCHKEY__V1__EMPTY__INIT;
  int saved = capture_stderr(f, path, sizeof(path));
  assert_int_equal(call(f, "RotateKey", &rot.base),
                   LK_FAILED_PRECONDITION); /* 1: no key ring here */
  lk_admin_set_keys(f->admin, hook);
  ok(f, "RotateKey", &rot.base);      /* 2 */
  ok(f, "GetKeyStatus", &empty.base); /* a read: no line */
  probe.fail_with = LK_FAILED_PRECONDITION;
  assert_int_equal(call(f, "RotateKey", &rot.base),
                   LK_FAILED_PRECONDITION); /* 3 */
  char *text = release_stderr(saved, path);
  json_t *lines = audit_admin_lines(text);
  assert_int_equal(json_array_size(lines), 3);
  json_t *l = json_array_get(lines, 0);
  assert_string_equal(member(l, "action"), "keys.rotate");
  assert_string_equal(member(l, "outcome"), "FAILED_PRECONDITION");
  l = json_array_get(lines, 1);
  assert_string_equal(member(l, "action"), "keys.rotate");
  assert_string_equal(member(l, "outcome"), "ok");
  l = json_array_get(lines, 2);
  assert_string_equal(member(l, "action"), "keys.rotate");
  assert_string_equal(member(l, "outcome"), "FAILED_PRECONDITION");
  assert_int_equal(probe.calls, 3);
  json_decref(lines);
  free(text);
}

/* ---- oauth2 credentials ---- */

#define ACCESS "ya29.access-canary-0123456789abcdef"
#define REFRESH "1//refresh-canary-ABCDEFGHIJKLMNOP"
#define CLIENT_SECRET "GOCSPX-client-secret-canary-XYZW"

/* Registers the oauth2 type "google", declaring no field and no rule. */
static void register_google(fx *f) {
  Latchkey__V1__CredentialType type = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  type.id = (char *)"google";
  type.kind = (char *)"oauth2";
  ok(f, "RegisterCredentialType", &type.base);
}

/* Creates a credential of type from n key/value pairs kv. */
static lk_status create_kv(fx *f, const char *type, const char *id,
                           const char *const *kv, size_t n) {
  Latchkey__V1__CreateCredentialRequest__FieldsEntry e[12];
  Latchkey__V1__CreateCredentialRequest__FieldsEntry *es[12];
  Latchkey__V1__CreateCredentialRequest r =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__INIT;
  size_t i;
  assert_true(n <= 12);
  for (i = 0; i < n; i++) {
    latchkey__v1__create_credential_request__fields_entry__init(&e[i]);
    e[i].key = (char *)kv[2 * i];
    e[i].value = (char *)kv[2 * i + 1];
    es[i] = &e[i];
  }
  r.type = (char *)type;
  r.id = (char *)id;
  r.label = (char *)"me";
  r.fields = es;
  r.n_fields = n;
  return call(f, "CreateCredential", &r.base);
}

/* Updates credential id with n key/value pairs kv and label (may be ""). */
static lk_status update_kv(fx *f, const char *id, const char *label,
                           const char *const *kv, size_t n) {
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry e[12];
  Latchkey__V1__UpdateCredentialRequest__FieldsEntry *es[12];
  Latchkey__V1__UpdateCredentialRequest u =
      LATCHKEY__V1__UPDATE_CREDENTIAL_REQUEST__INIT;
  size_t i;
  assert_true(n <= 12);
  for (i = 0; i < n; i++) {
    latchkey__v1__update_credential_request__fields_entry__init(&e[i]);
    e[i].key = (char *)kv[2 * i];
    e[i].value = (char *)kv[2 * i + 1];
    es[i] = &e[i];
  }
  u.id = (char *)id;
  u.label = (char *)label;
  u.fields = es;
  u.n_fields = n;
  return call(f, "UpdateCredential", &u.base);
}

/* The value of plain field name of c ("<absent>" when it has none) and
 * whether c has a field of that name at all. */
static const char *plain_of(const Latchkey__V1__Credential *c,
                            const char *name) {
  size_t i;
  for (i = 0; i < c->n_fields; i++) {
    if (strcmp(c->fields[i]->name, name) == 0) {
      return c->fields[i]->secret ? "<secret>" : c->fields[i]->value;
    }
  }
  return "<absent>";
}

static void assert_no_oauth_secret(const fx *f) {
  assert_no_bytes(f, ACCESS);
  assert_no_bytes(f, REFRESH);
  assert_no_bytes(f, CLIENT_SECRET);
}

static const char *const google_full[] = {
    "access_token",  ACCESS,
    "refresh_token", REFRESH,
    "expires_at",    "0001900000000",
    "token_url",     "https://oauth2.googleapis.com/token",
    "client_id",     "1234.apps.googleusercontent.com",
    "client_secret", CLIENT_SECRET,
    "scope",         "https://www.googleapis.com/auth/drive.readonly",
};

static void register_oauth2_type_stores_the_canonical_form(void **s) {
  fx *f = *s;
  Latchkey__V1__CredentialType *got;
  tool_fx t;
  lk_err err;
  register_google(f);
  got = latchkey__v1__credential_type__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(got);
  assert_string_equal(got->kind, "oauth2");
  assert_int_equal(got->n_fields, 8);
  assert_string_equal(got->fields[0]->name, "access_token");
  assert_int_equal(got->n_inject, 1);
  assert_string_equal(got->inject[0]->value, "Bearer {access_token}");
  latchkey__v1__credential_type__free_unpacked(got, NULL);
  got = NULL;
  assert_int_equal(lk_catalog_get_type(f->cat, "google", &got, &err), LK_OK);
  assert_int_equal(got->n_fields, 8);
  assert_string_equal(got->fields[7]->name, "scope");
  assert_int_equal(got->fields[7]->max_len, LK_SCHEMA_DEFAULT_MAX_LEN);
  lk_catalog_free_type(got);

  /* inline with a tool too */
  tool_fx_init(&t, "drive");
  t.type.kind = (char *)"oauth2";
  t.type.n_fields = 0;
  t.type.n_inject = 0;
  ok(f, "RegisterTool", &t.req.base);
  got = NULL;
  assert_int_equal(lk_catalog_get_type(f->cat, "weather-key", &got, &err),
                   LK_OK);
  assert_string_equal(got->kind, "oauth2");
  assert_int_equal(got->n_fields, 8);
  assert_string_equal(got->inject[0]->name, "Authorization");
  lk_catalog_free_type(got);

  /* a wrong secret flag stores nothing */
  {
    Latchkey__V1__CredentialField fl = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
    Latchkey__V1__CredentialField *fls[1] = {&fl};
    Latchkey__V1__CredentialType bad = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
    fl.name = (char *)"refresh_token";
    bad.id = (char *)"gh";
    bad.kind = (char *)"oauth2";
    bad.fields = fls;
    bad.n_fields = 1;
    expect(f, "RegisterCredentialType", &bad.base, LK_INVALID_ARGUMENT, NULL);
    assert_string_equal(f->err.msg,
                        "credential type 'gh': oauth2 field 'refresh_token' "
                        "must have \"secret\": true; fix it or leave the "
                        "field out (it is added)");
    assert_int_equal(lk_catalog_get_type(f->cat, "gh", &got, &err),
                     LK_NOT_FOUND);
  }
}

static void type_kind_cannot_change_while_it_has_credentials(void **s) {
  fx *f = *s;
  tool_fx t;
  register_weather(f, "weather");
  /* no credential yet: the kind may change, and back */
  tool_fx_init(&t, "weather");
  t.type.kind = (char *)"oauth2";
  t.type.n_fields = 0;
  t.type.n_inject = 0;
  ok(f, "RegisterCredentialType", &t.type.base);
  tool_fx_init(&t, "weather");
  ok(f, "RegisterCredentialType", &t.type.base);
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  t.type.kind = (char *)"oauth2";
  t.type.n_fields = 0;
  t.type.n_inject = 0;
  expect(f, "RegisterCredentialType", &t.type.base, LK_FAILED_PRECONDITION,
         NULL);
  assert_string_equal(f->err.msg,
                      "credential type 'weather-key' has credential 'wk1', "
                      "so its kind cannot change; delete its credentials "
                      "first (`latchkeyctl credential delete wk1`) or "
                      "register the type under another id");
  tool_fx_init(&t, "weather");
  t.type.kind = (char *)"oauth2";
  t.type.n_fields = 0;
  t.type.n_inject = 0;
  expect(f, "RegisterTool", &t.req.base, LK_FAILED_PRECONDITION,
         "kind cannot change");
  /* the same kind re-registers as before */
  tool_fx_init(&t, "weather");
  ok(f, "RegisterTool", &t.req.base);
}

static void oauth2_create_stores_state_generation_one_and_canonical_expiry(
    void **s) {
  fx *f = *s;
  Latchkey__V1__Credential *c;
  Latchkey__V1__Credential *stored = NULL;
  lk_err err;
  register_google(f);
  assert_int_equal(create_kv(f, "google", "g1", google_full, 7), LK_OK);
  assert_no_oauth_secret(f);
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(c);
  assert_non_null(c->oauth);
  assert_int_equal(c->oauth->generation, 1);
  assert_int_equal(c->oauth->last_refresh_at, 0);
  assert_string_equal(c->oauth->last_refresh_result, "");
  assert_int_equal(c->oauth->failures, 0);
  assert_int_equal(c->oauth->next_attempt_at, 0);
  assert_false(c->oauth->reauthorize);
  assert_int_equal(c->oauth->last_success_at, 0);
  /* the type's order; grant_type defaulted; expiry canonical */
  assert_int_equal(c->n_fields, 8);
  assert_string_equal(c->fields[0]->name, "access_token");
  assert_true(c->fields[0]->secret);
  assert_string_equal(c->fields[0]->mask, BULLETS "cdef");
  assert_string_equal(plain_of(c, "expires_at"), "1900000000");
  assert_string_equal(plain_of(c, "grant_type"), "authorization_code");
  assert_string_equal(plain_of(c, "client_id"),
                      "1234.apps.googleusercontent.com");
  latchkey__v1__credential__free_unpacked(c, NULL);
  /* stored so, secrets sealed */
  assert_int_equal(lk_catalog_get_credential(f->cat, "g1", &stored, &err),
                   LK_OK);
  assert_non_null(stored->oauth);
  assert_int_equal(stored->oauth->generation, 1);
  assert_non_null(stored->fields[0]->sealed);
  assert_int_equal(lk_oauth_expires_at_ms(stored), 1900000000000LL);
  lk_catalog_free_credential(stored);

  /* the smallest client_credentials credential: no token, no expiry */
  {
    static const char *const cc[] = {"grant_type", "client_credentials",
                                     "token_url",  "http://127.0.0.1:9/token",
                                     "client_id",  "robot"};
    assert_int_equal(create_kv(f, "google", "g2", cc, 3), LK_OK);
    c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
    assert_int_equal(c->n_fields, 4);
    assert_string_equal(plain_of(c, "expires_at"), "0");
    assert_string_equal(plain_of(c, "grant_type"), "client_credentials");
    assert_string_equal(plain_of(c, "access_token"), "<absent>");
    assert_string_equal(plain_of(c, "refresh_token"), "<absent>");
    assert_int_equal(c->oauth->generation, 1);
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  /* an expiry without a token means nothing: refresh at once */
  {
    static const char *const noat[] = {
        "refresh_token", REFRESH, "token_url",  "https://idp.example/token",
        "client_id",     "c",     "expires_at", "1900000000"};
    assert_int_equal(create_kv(f, "google", "g3", noat, 4), LK_OK);
    c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
    assert_string_equal(plain_of(c, "expires_at"), "0");
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  /* a token without an expiry: unknown, refresh at once */
  {
    static const char *const noexp[] = {
        "access_token", ACCESS,      "refresh_token",
        REFRESH,        "token_url", "https://idp.example/token",
        "client_id",    "c"};
    assert_int_equal(create_kv(f, "google", "g4", noexp, 4), LK_OK);
    assert_no_oauth_secret(f);
    c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
    assert_string_equal(plain_of(c, "expires_at"), "0");
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  /* other kinds never get OAuthState */
  register_weather(f, "weather");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  c = latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_null(c->oauth);
  latchkey__v1__credential__free_unpacked(c, NULL);
}

/* Asserts create with kv fails INVALID_ARGUMENT with exactly want, and
 * echoes none of the secrets. */
static void create_refused(fx *f, const char *const *kv, size_t n,
                           const char *want) {
  lk_status st = create_kv(f, "google", "", kv, n);
  if (st != LK_INVALID_ARGUMENT || strcmp(f->err.msg, want) != 0) {
    fail_msg("got %s: %s\nwant INVALID_ARGUMENT: %s", lk_status_name(st),
             f->err.msg, want);
  }
  assert_null(strstr(f->err.msg, ACCESS));
  assert_null(strstr(f->err.msg, REFRESH));
  assert_null(strstr(f->err.msg, CLIENT_SECRET));
}

static void oauth2_create_refuses_each_invalid_field(void **s) {
  fx *f = *s;
  char long_url[2100];
  register_google(f);
  {
    static const char *const kv[] = {"access_token", ACCESS};
    create_refused(f, kv, 1,
                   "missing fields of oauth2 credential type 'google' "
                   "(grant_type authorization_code): refresh_token, "
                   "token_url, client_id; provide them");
  }
  {
    static const char *const kv[] = {"grant_type", "client_credentials",
                                     "token_url", "https://idp.example/token"};
    create_refused(f, kv, 2,
                   "missing field of oauth2 credential type 'google' "
                   "(grant_type client_credentials): client_id; provide it");
  }
  {
    static const char *const kv[] = {
        "grant_type", "implicit",  "refresh_token",
        REFRESH,      "token_url", "https://idp.example/token",
        "client_id",  "c"};
    create_refused(f, kv, 4,
                   "field 'grant_type' must be authorization_code or "
                   "client_credentials");
    assert_null(strstr(f->err.msg, "implicit"));
  }
  {
    static const char *const kv[] = {"refresh_token", REFRESH,
                                     "token_url",     "ftp://idp.example/token",
                                     "client_id",     "c"};
    create_refused(f, kv, 3,
                   "field 'token_url' must start with https:// (or "
                   "http://); give the provider's token endpoint");
    assert_null(strstr(f->err.msg, "idp.example"));
  }
  {
    static const char *const kv[] = {"refresh_token",  REFRESH,     "token_url",
                                     "https:///token", "client_id", "c"};
    create_refused(f, kv, 3,
                   "field 'token_url' has no host; give the provider's token "
                   "endpoint");
  }
  {
    static const char *const kv[] = {
        "refresh_token", REFRESH, "token_url", "https://idp.example/t ok",
        "client_id",     "c"};
    create_refused(f, kv, 3,
                   "field 'token_url' must be printable ASCII without "
                   "spaces; percent-encode the rest");
  }
  {
    const char *kv[] = {"refresh_token", REFRESH,     "token_url",
                        long_url,        "client_id", "c"};
    memcpy(long_url, "https://idp.example/", 20);
    memset(long_url + 20, 'a', sizeof(long_url) - 21);
    long_url[2049] = '\0';
    create_refused(f, kv, 3,
                   "field 'token_url' is longer than 2048 bytes; check the "
                   "value");
    long_url[2048] = '\0'; /* exactly 2048: fine */
    assert_int_equal(create_kv(f, "google", "", kv, 3), LK_OK);
  }
  {
    static const char *const kv[] = {
        "access_token", ACCESS,      "refresh_token",
        REFRESH,        "token_url", "https://idp.example/token",
        "client_id",    "c",         "expires_at",
        "soon"};
    create_refused(f, kv, 5,
                   "field expires_at: expected unix seconds, digits only");
  }
  {
    static const char *const kv[] = {
        "access_token",  ACCESS,      "refresh_token",
        REFRESH,         "token_url", "https://idp.example/token",
        "client_id",     "c",         "expires_at",
        "99999999999999"};
    create_refused(f, kv, 5,
                   "field expires_at: expected unix seconds (at most 13 "
                   "digits)");
  }
  /* the usual rules hold too: unknown fields, empty values */
  {
    static const char *const kv[] = {
        "refresh_token", REFRESH, "token_url", "https://idp.example/token",
        "client_id",     "c",     "password",  "x"};
    create_refused(f, kv, 4,
                   "'password' is not a field of credential type 'google'; "
                   "see its fields with `latchkeyctl type list`");
  }
  {
    static const char *const kv[] = {
        "refresh_token", REFRESH, "token_url", "https://idp.example/token",
        "client_id",     ""};
    create_refused(f, kv, 3, "field 'client_id' is empty; provide a value");
  }
}

/* Plays the control plane's refresher: gives g1 a failing record. */
static void set_failing_state(fx *f, const char *id) {
  Latchkey__V1__Credential *c = NULL;
  lk_store_batch *b = lk_store_batch_new();
  char *result;
  lk_err err;
  assert_non_null(b);
  assert_int_equal(lk_catalog_get_credential(f->cat, id, &c, &err), LK_OK);
  result = c->oauth->last_refresh_result;
  c->oauth->generation = 5;
  c->oauth->last_refresh_at = 1800000000000LL;
  c->oauth->failures = 3;
  c->oauth->next_attempt_at = 1800000060000LL;
  c->oauth->reauthorize = 1;
  c->oauth->last_success_at = 1700000000000LL;
  c->oauth->last_refresh_result = (char *)"invalid_grant";
  if (lk_catalog_put_credential(f->cat, b, c, &err) != LK_OK ||
      lk_catalog_commit(f->cat, b, &err) != LK_OK) {
    fail_msg("put: %s", err.msg);
  }
  /* free_unpacked frees the string it unpacked, not the static one */
  c->oauth->last_refresh_result = result;
  lk_catalog_free_credential(c);
  lk_store_batch_destroy(b);
}

static Latchkey__V1__Credential *resp_credential(fx *f) {
  Latchkey__V1__Credential *c =
      latchkey__v1__credential__unpack(NULL, f->resp_len, f->resp);
  assert_non_null(c);
  return c;
}

static void oauth2_owner_update_of_a_token_resets_the_refresh_record(void **s) {
  fx *f = *s;
  Latchkey__V1__Credential *c;
  Latchkey__V1__GetRequest g = LATCHKEY__V1__GET_REQUEST__INIT;
  Latchkey__V1__ListRequest l = LATCHKEY__V1__LIST_REQUEST__INIT;
  register_google(f);
  assert_int_equal(create_kv(f, "google", "g1", google_full, 7), LK_OK);
  set_failing_state(f, "g1");

  /* label only: the record is kept as the refresher left it */
  assert_int_equal(update_kv(f, "g1", "renamed", NULL, 0), LK_OK);
  c = resp_credential(f);
  assert_int_equal(c->version, 2);
  assert_int_equal(c->oauth->generation, 5);
  assert_int_equal(c->oauth->failures, 3);
  assert_true(c->oauth->reauthorize);
  assert_string_equal(c->oauth->last_refresh_result, "invalid_grant");
  assert_int_equal(c->oauth->next_attempt_at, 1800000060000LL);
  assert_string_equal(plain_of(c, "expires_at"), "1900000000");
  latchkey__v1__credential__free_unpacked(c, NULL);
  /* a plain field too */
  {
    static const char *const kv[] = {"scope", "openid"};
    assert_int_equal(update_kv(f, "g1", "", kv, 1), LK_OK);
    c = resp_credential(f);
    assert_int_equal(c->oauth->generation, 5);
    assert_int_equal(c->oauth->failures, 3);
    latchkey__v1__credential__free_unpacked(c, NULL);
  }

  /* a new refresh token: the owner re-authorised */
  {
    static const char *const kv[] = {"refresh_token", REFRESH "-2"};
    assert_int_equal(update_kv(f, "g1", "", kv, 1), LK_OK);
    assert_no_bytes(f, REFRESH "-2");
    c = resp_credential(f);
    assert_int_equal(c->oauth->generation, 6);
    assert_int_equal(c->oauth->failures, 0);
    assert_int_equal(c->oauth->next_attempt_at, 0);
    assert_int_equal(c->oauth->last_refresh_at, 0);
    assert_false(c->oauth->reauthorize);
    assert_string_equal(c->oauth->last_refresh_result,
                        "re-authorised by the owner");
    assert_int_equal(c->oauth->last_success_at, 1700000000000LL);
    /* the access token's expiry is the old token's, untouched */
    assert_string_equal(plain_of(c, "expires_at"), "1900000000");
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  /* a new access token without its expiry: refresh at once */
  set_failing_state(f, "g1");
  {
    static const char *const kv[] = {"access_token", ACCESS "-2"};
    assert_int_equal(update_kv(f, "g1", "", kv, 1), LK_OK);
    c = resp_credential(f);
    assert_int_equal(c->oauth->generation, 6);
    assert_int_equal(c->oauth->failures, 0);
    assert_string_equal(plain_of(c, "expires_at"), "0");
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  /* with it: stored canonical */
  {
    static const char *const kv[] = {"access_token", ACCESS "-3", "expires_at",
                                     "02000000000"};
    assert_int_equal(update_kv(f, "g1", "", kv, 2), LK_OK);
    c = resp_credential(f);
    assert_int_equal(c->oauth->generation, 7);
    assert_string_equal(plain_of(c, "expires_at"), "2000000000");
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  /* Get and List answer the record as stored, secrets masked */
  g.id = (char *)"g1";
  ok(f, "GetCredential", &g.base);
  assert_no_oauth_secret(f);
  c = resp_credential(f);
  assert_int_equal(c->oauth->generation, 7);
  assert_string_equal(c->oauth->last_refresh_result,
                      "re-authorised by the owner");
  assert_string_equal(c->fields[0]->value, "");
  assert_null(c->fields[0]->sealed);
  assert_string_equal(c->fields[0]->mask, BULLETS "ef-3");
  latchkey__v1__credential__free_unpacked(c, NULL);
  ok(f, "ListCredentials", &l.base);
  assert_no_oauth_secret(f);
  {
    Latchkey__V1__CredentialList *list =
        latchkey__v1__credential_list__unpack(NULL, f->resp_len, f->resp);
    assert_int_equal(list->n_credentials, 1);
    assert_int_equal(list->credentials[0]->oauth->generation, 7);
    latchkey__v1__credential_list__free_unpacked(list, NULL);
  }
}

static void oauth2_update_applies_the_same_field_rules(void **s) {
  fx *f = *s;
  Latchkey__V1__Credential *stored = NULL;
  lk_err err;
  static const char *const cc[] = {"grant_type",    "client_credentials",
                                   "token_url",     "https://idp.example/token",
                                   "client_id",     "robot",
                                   "client_secret", CLIENT_SECRET};
  register_google(f);
  assert_int_equal(create_kv(f, "google", "g2", cc, 4), LK_OK);
  {
    static const char *const kv[] = {"grant_type", "authorization_code"};
    assert_int_equal(update_kv(f, "g2", "", kv, 1), LK_INVALID_ARGUMENT);
    assert_string_equal(f->err.msg,
                        "missing field of oauth2 credential type 'google' "
                        "(grant_type authorization_code): refresh_token; "
                        "provide it");
  }
  {
    static const char *const kv[] = {"grant_type", "authorization_code",
                                     "refresh_token", REFRESH};
    assert_int_equal(update_kv(f, "g2", "", kv, 2), LK_OK);
  }
  {
    static const char *const kv[] = {"grant_type", "password"};
    assert_int_equal(update_kv(f, "g2", "", kv, 1), LK_INVALID_ARGUMENT);
    assert_string_equal(f->err.msg,
                        "field 'grant_type' must be authorization_code or "
                        "client_credentials");
  }
  {
    static const char *const kv[] = {"token_url", "idp.example/token"};
    assert_int_equal(update_kv(f, "g2", "", kv, 1), LK_INVALID_ARGUMENT);
    assert_string_equal(f->err.msg,
                        "field 'token_url' must start with https:// (or "
                        "http://); give the provider's token endpoint");
  }
  {
    static const char *const kv[] = {"expires_at", "-1"};
    assert_int_equal(update_kv(f, "g2", "", kv, 1), LK_INVALID_ARGUMENT);
    assert_string_equal(f->err.msg,
                        "field expires_at: expected unix seconds, digits "
                        "only");
  }
  /* an expiry means nothing without an access token: still "0" */
  {
    static const char *const kv[] = {"expires_at", "1900000000"};
    Latchkey__V1__Credential *c;
    assert_int_equal(update_kv(f, "g2", "", kv, 1), LK_OK);
    c = resp_credential(f);
    assert_string_equal(plain_of(c, "expires_at"), "0");
    assert_int_equal(c->oauth->generation, 2);
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
  /* none of the refused updates changed it */
  assert_int_equal(lk_catalog_get_credential(f->cat, "g2", &stored, &err),
                   LK_OK);
  assert_int_equal(stored->version, 3);
  assert_string_equal(lk_oauth_plain_field(stored, "grant_type"),
                      "authorization_code");
  assert_string_equal(lk_oauth_plain_field(stored, "token_url"),
                      "https://idp.example/token");
  lk_catalog_free_credential(stored);
  /* a static credential's update never gains OAuthState */
  register_weather(f, "weather");
  create_cred_ok(f, "weather-key", "wk1", "api_key", API_KEY, NULL, NULL);
  assert_int_equal(update_kv(f, "wk1", "renamed", NULL, 0), LK_OK);
  {
    Latchkey__V1__Credential *c = resp_credential(f);
    assert_null(c->oauth);
    latchkey__v1__credential__free_unpacked(c, NULL);
  }
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(register_tool_stores_normalized_tool_and_inline_type),
      T(register_tool_without_credential_type),
      T(register_tool_refuses_invalid_definitions),
      T(register_tool_refuses_type_change_while_bound),
      T(get_and_delete_missing_tool_are_not_found),
      T(list_tools_returns_all_in_id_order),
      T(register_type_refuses_invalid_and_stores_canonical),
      T(created_credential_is_masked_sealed_and_unseals),
      T(get_and_list_credentials_never_show_plaintext),
      T(mask_shows_last_four_only_from_twelve_chars),
      T(create_credential_rejects_each_invalid_input),
      T(update_credential_reseals_and_bumps_version),
      T(budgets_validate_and_pause),
      T(bind_checks_references_and_types),
      T(rebind_overwrites_and_unbind_removes),
      T(list_bindings_all_or_one_budget),
      T(delete_type_refused_while_used),
      T(delete_credential_refused_while_bound),
      T(delete_tool_removes_its_bindings_only),
      T(delete_budget_removes_its_bindings_only),
      T(garbage_request_is_invalid_argument),
      T(unknown_method_is_not_found),
      T(oversized_request_is_resource_exhausted),
      T(every_listed_method_is_served),
      T(audit_hash_answers_the_auditors_hash_and_needs_an_auditor),
      T(changes_write_one_audit_line_each_with_hashes_never_values),
      T(invalid_ids_are_never_echoed_in_audit_lines),
      T(key_methods_without_a_key_ring_are_failed_precondition),
      T(key_methods_answer_the_hooks_status_as_key_status),
      T(key_rotation_writes_an_audit_line_and_status_reads_none),
      T(register_oauth2_type_stores_the_canonical_form),
      T(type_kind_cannot_change_while_it_has_credentials),
      T(oauth2_create_stores_state_generation_one_and_canonical_expiry),
      T(oauth2_create_refuses_each_invalid_field),
      T(oauth2_owner_update_of_a_token_resets_the_refresh_record),
      T(oauth2_update_applies_the_same_field_rules),
  };
#undef T
  return cmocka_run_group_tests(tests, NULL, NULL);
}
