/*
 * admin_request_fuzz.c - fuzzes lib/admin through lk_admin_handle: every
 * latchkey.v1.Admin method with arbitrary request bytes, over a real
 * RocksDB catalog and a real node key.
 *
 * The first input byte picks the method (index into lk_admin_methods(),
 * modulo their number); the rest is the serialized request. The store and
 * node key are created once, in a fresh mkdtemp directory under
 * $TEST_TMPDIR, $TMPDIR or /tmp, and hold a small realistic catalog (a
 * tool with an inline header-injected type, a basic-auth type, a
 * credential of each, a budget with a tool-specific and a budget-wide
 * binding) so that Get/Update/Delete/Bind inputs reach past the lookups;
 * the directory is removed at exit. State carries over between inputs, as
 * it does in a server: a crash found by libFuzzer may need the inputs
 * before it (run the corpus in order) to reproduce.
 *
 * The service hashes with an audit key derived from the node key, as the
 * standalone sidecar's does. With LK_FUZZ_VERBOSE set, each input's method
 * and status is printed, and so are the audit.admin lines (otherwise the
 * log level is "error", so fuzzing is not slowed by them).
 *
 * Invariants (a break traps):
 * - No request ends in LK_INTERNAL (reserved for real bugs), and every
 *   failure carries a message.
 * - Every LK_OK response decodes as the method's declared response type.
 * - Credentials come back masked: a secret field has no value and no
 *   sealed data, and its mask is the four bullets plus at most four
 *   characters.
 * - After CreateCredential or UpdateCredential succeeds, the stored record
 *   holds each secret field sealed (no plaintext value), and unsealing it
 *   with the node key gives back exactly the value the request sent.
 * - AuditHash answers 64 lowercase hex digits, the audit hash of exactly
 *   the value sent.
 */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latchkey/v1/admin.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/admin.h"
#include "lib/audit.h"
#include "lib/catalog.h"
#include "lib/log.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/store.h"
#include "tests/fuzz/fuzz_target.h"

#define BULLETS "\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2"
#define PATH(m) "/latchkey.v1.Admin/" m

typedef struct {
  char dir[1024];
  lk_store *store;
  lk_catalog *cat;
  lk_seal_key *key;
  lk_audit_key *audit;
  lk_admin *admin;
} fixture;

static fixture fx;

/* LK_FUZZ_VERBOSE set: print each method's status (for triage). */
static int verbose = -1;

/* The response type admin.proto declares for each method. */
typedef struct {
  const char *path;
  const ProtobufCMessageDescriptor *resp;
} response_type;

static const response_type response_types[] = {
    {PATH("RegisterTool"), &latchkey__v1__tool__descriptor},
    {PATH("GetTool"), &latchkey__v1__tool__descriptor},
    {PATH("ListTools"), &latchkey__v1__tool_list__descriptor},
    {PATH("DeleteTool"), &latchkey__v1__empty__descriptor},
    {PATH("RegisterCredentialType"),
     &latchkey__v1__credential_type__descriptor},
    {PATH("GetCredentialType"), &latchkey__v1__credential_type__descriptor},
    {PATH("ListCredentialTypes"),
     &latchkey__v1__credential_type_list__descriptor},
    {PATH("DeleteCredentialType"), &latchkey__v1__empty__descriptor},
    {PATH("CreateCredential"), &latchkey__v1__credential__descriptor},
    {PATH("GetCredential"), &latchkey__v1__credential__descriptor},
    {PATH("ListCredentials"), &latchkey__v1__credential_list__descriptor},
    {PATH("UpdateCredential"), &latchkey__v1__credential__descriptor},
    {PATH("DeleteCredential"), &latchkey__v1__empty__descriptor},
    {PATH("CreateBudget"), &latchkey__v1__budget__descriptor},
    {PATH("GetBudget"), &latchkey__v1__budget__descriptor},
    {PATH("ListBudgets"), &latchkey__v1__budget_list__descriptor},
    {PATH("SetBudgetPaused"), &latchkey__v1__budget__descriptor},
    {PATH("DeleteBudget"), &latchkey__v1__empty__descriptor},
    {PATH("Bind"), &latchkey__v1__binding__descriptor},
    {PATH("Unbind"), &latchkey__v1__empty__descriptor},
    {PATH("ListBindings"), &latchkey__v1__binding_list__descriptor},
    {PATH("RotateKey"), &latchkey__v1__key_status__descriptor},
    {PATH("GetKeyStatus"), &latchkey__v1__key_status__descriptor},
    {PATH("AuditHash"), &latchkey__v1__audit_hash_response__descriptor},
};

static void check(int ok) {
  if (!ok) {
    __builtin_trap();
  }
}

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void release_fixture(void) {
  lk_admin_destroy(fx.admin);
  lk_audit_key_destroy(fx.audit);
  lk_catalog_destroy(fx.cat);
  lk_store_close(fx.store);
  lk_seal_key_destroy(fx.key);
  if (fx.dir[0] != '\0') {
    nftw(fx.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
  memset(&fx, 0, sizeof(fx));
}

/* Sends one seeding request built from m; it must succeed. */
static void seed(const char *method, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(n > 0 ? n : 1);
  unsigned char *resp = NULL;
  size_t resp_len = 0;
  lk_err err;
  check(buf != NULL);
  protobuf_c_message_pack(m, buf);
  if (lk_admin_handle(fx.admin, method, buf, n, &resp, &resp_len, &err) !=
      LK_OK) {
    fprintf(stderr, "admin_request_fuzz: seeding %s failed: %s\n", method,
            err.msg);
    abort();
  }
  free(resp);
  free(buf);
}

static void seed_catalog(void) {
  Latchkey__V1__Param city = LATCHKEY__V1__PARAM__INIT;
  Latchkey__V1__Param days = LATCHKEY__V1__PARAM__INIT;
  Latchkey__V1__Param *params[2] = {&city, &days};
  Latchkey__V1__Operation op = LATCHKEY__V1__OPERATION__INIT;
  Latchkey__V1__Operation *ops[1] = {&op};
  Latchkey__V1__Tool tool = LATCHKEY__V1__TOOL__INIT;
  Latchkey__V1__CredentialField api_key = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *key_fields[1] = {&api_key};
  Latchkey__V1__InjectRule header = LATCHKEY__V1__INJECT_RULE__INIT;
  Latchkey__V1__InjectRule *key_rules[1] = {&header};
  Latchkey__V1__CredentialType key_type = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  Latchkey__V1__RegisterToolRequest reg =
      LATCHKEY__V1__REGISTER_TOOL_REQUEST__INIT;

  city.name = (char *)"city";
  city.in = (char *)"path";
  city.type = (char *)"string";
  city.required = 1;
  days.name = (char *)"days";
  days.in = (char *)"query";
  days.type = (char *)"integer";
  op.name = (char *)"forecast";
  op.method = (char *)"GET";
  op.path = (char *)"/v1/forecast/{city}";
  op.n_params = 2;
  op.params = params;
  tool.id = (char *)"weather";
  tool.description = (char *)"Forecasts by city";
  tool.base_url = (char *)"https://api.weather.example";
  tool.credential_type = (char *)"weather-key";
  tool.n_operations = 1;
  tool.operations = ops;
  api_key.name = (char *)"api_key";
  api_key.secret = 1;
  api_key.pattern = (char *)"^[A-Za-z0-9_-]{16,128}$";
  header.in = (char *)"header";
  header.name = (char *)"X-Api-Key";
  header.value = (char *)"{api_key}";
  key_type.id = (char *)"weather-key";
  key_type.n_fields = 1;
  key_type.fields = key_fields;
  key_type.n_inject = 1;
  key_type.inject = key_rules;
  reg.tool = &tool;
  reg.credential_type = &key_type;
  seed(PATH("RegisterTool"), &reg.base);

  Latchkey__V1__CredentialField user = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField pass = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *login_fields[2] = {&user, &pass};
  Latchkey__V1__InjectRule basic = LATCHKEY__V1__INJECT_RULE__INIT;
  Latchkey__V1__InjectRule *login_rules[1] = {&basic};
  Latchkey__V1__CredentialType login = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  user.name = (char *)"user";
  pass.name = (char *)"password";
  pass.secret = 1;
  basic.in = (char *)"basic";
  basic.username = (char *)"{user}";
  basic.password = (char *)"{password}";
  login.id = (char *)"basic-login";
  login.n_fields = 2;
  login.fields = login_fields;
  login.n_inject = 1;
  login.inject = login_rules;
  seed(PATH("RegisterCredentialType"), &login.base);

  Latchkey__V1__CreateCredentialRequest__FieldsEntry kv =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__CreateCredentialRequest__FieldsEntry *kvs[1] = {&kv};
  Latchkey__V1__CreateCredentialRequest cc =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__INIT;
  kv.key = (char *)"api_key";
  kv.value = (char *)"AbCdEfGh0123456789-canary";
  cc.type = (char *)"weather-key";
  cc.label = (char *)"weather prod";
  cc.id = (char *)"cred-weather";
  cc.n_fields = 1;
  cc.fields = kvs;
  seed(PATH("CreateCredential"), &cc.base);

  Latchkey__V1__CreateCredentialRequest__FieldsEntry ukv =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__CreateCredentialRequest__FieldsEntry pkv =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__FIELDS_ENTRY__INIT;
  Latchkey__V1__CreateCredentialRequest__FieldsEntry *lkvs[2] = {&ukv, &pkv};
  Latchkey__V1__CreateCredentialRequest lc =
      LATCHKEY__V1__CREATE_CREDENTIAL_REQUEST__INIT;
  ukv.key = (char *)"user";
  ukv.value = (char *)"svc-bot";
  pkv.key = (char *)"password";
  pkv.value = (char *)"correct horse battery staple";
  lc.type = (char *)"basic-login";
  lc.label = (char *)"login";
  lc.id = (char *)"cred-login";
  lc.n_fields = 2;
  lc.fields = lkvs;
  seed(PATH("CreateCredential"), &lc.base);

  char *agents[1] = {(char *)"agent-1"};
  Latchkey__V1__Budget budget = LATCHKEY__V1__BUDGET__INIT;
  budget.id = (char *)"b1";
  budget.n_agents = 1;
  budget.agents = agents;
  seed(PATH("CreateBudget"), &budget.base);

  Latchkey__V1__Binding by_tool = LATCHKEY__V1__BINDING__INIT;
  by_tool.budget_id = (char *)"b1";
  by_tool.tool_id = (char *)"weather";
  by_tool.credential_id = (char *)"cred-weather";
  seed(PATH("Bind"), &by_tool.base);
  Latchkey__V1__Binding by_type = LATCHKEY__V1__BINDING__INIT;
  by_type.budget_id = (char *)"b1";
  by_type.credential_type = (char *)"basic-login";
  by_type.credential_id = (char *)"cred-login";
  seed(PATH("Bind"), &by_type.base);
}

/* lk_admin_hash_fn over fx.audit. */
static lk_status hash_with(void *ctx, const unsigned char *value, size_t len,
                           char out_hex[LK_AUDIT_HEX_BYTES], lk_err *err) {
  return lk_audit_key_hash(ctx, value, len, out_hex, err);
}

/* Opens the temp store, catalog, node key and Admin service once. */
static void init_fixture(void) {
  static int ready;
  const char *tmp = getenv("TEST_TMPDIR");
  char path[1100];
  lk_err err;

  if (ready) {
    return;
  }
  ready = 1;
  if (tmp == NULL || tmp[0] == '\0') {
    tmp = getenv("TMPDIR");
  }
  if (tmp == NULL || tmp[0] == '\0') {
    tmp = "/tmp";
  }
  snprintf(fx.dir, sizeof(fx.dir), "%s/lk-admin-fuzz.XXXXXX", tmp);
  if (mkdtemp(fx.dir) == NULL) {
    perror("admin_request_fuzz: mkdtemp");
    abort();
  }
  snprintf(path, sizeof(path), "%s/db", fx.dir);
  if (lk_store_open(path, &fx.store, &err) != LK_OK ||
      lk_catalog_open(fx.store, &fx.cat, &err) != LK_OK) {
    fprintf(stderr, "admin_request_fuzz: store: %s\n", err.msg);
    abort();
  }
  snprintf(path, sizeof(path), "%s/node.key", fx.dir);
  lk_secret *audit_key = NULL;
  if (lk_seal_key_load_or_create(path, &fx.key, &err) != LK_OK ||
      lk_admin_new(fx.cat, fx.key, &fx.admin, &err) != LK_OK ||
      lk_seal_key_audit_key(fx.key, &audit_key, &err) != LK_OK ||
      lk_audit_key_new(&fx.audit, &err) != LK_OK ||
      lk_audit_key_set(fx.audit, lk_secret_data(audit_key),
                       lk_secret_len(audit_key), &err) != LK_OK) {
    fprintf(stderr, "admin_request_fuzz: admin: %s\n", err.msg);
    abort();
  }
  lk_secret_free(audit_key);
  lk_admin_auditor auditor = {hash_with, fx.audit};
  lk_admin_set_auditor(fx.admin, auditor);
  if (getenv("LK_FUZZ_VERBOSE") == NULL) {
    check(lk_log_set_level_name("error") == 0);
  }
  seed_catalog();
  /* Registered after RocksDB is open, so it runs before the exit-time
   * destructors of the statics RocksDB creates while opening. */
  atexit(release_fixture);
}

static const ProtobufCMessageDescriptor *response_of(const char *path) {
  for (size_t i = 0; i < sizeof(response_types) / sizeof(response_types[0]);
       i++) {
    if (strcmp(response_types[i].path, path) == 0) {
      return response_types[i].resp;
    }
  }
  return NULL;
}

/* A credential as the Admin API shows it: every secret field masked. */
static void check_masked(const Latchkey__V1__Credential *c) {
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret) {
      continue;
    }
    size_t mask_len = strlen(f->mask);
    check(f->value[0] == '\0' && f->sealed == NULL);
    check(mask_len >= sizeof(BULLETS) - 1 &&
          memcmp(f->mask, BULLETS, sizeof(BULLETS) - 1) == 0);
    check(mask_len <= sizeof(BULLETS) - 1 + 16);
  }
}

/* The request value for field name, from a Create or Update request. */
static const char *request_value(const ProtobufCMessage *req,
                                 const char *name) {
  if (req->descriptor == &latchkey__v1__create_credential_request__descriptor) {
    const Latchkey__V1__CreateCredentialRequest *r =
        (const Latchkey__V1__CreateCredentialRequest *)req;
    for (size_t i = 0; i < r->n_fields; i++) {
      if (strcmp(r->fields[i]->key, name) == 0) {
        return r->fields[i]->value;
      }
    }
    return NULL;
  }
  const Latchkey__V1__UpdateCredentialRequest *r =
      (const Latchkey__V1__UpdateCredentialRequest *)req;
  for (size_t i = 0; i < r->n_fields; i++) {
    if (strcmp(r->fields[i]->key, name) == 0) {
      return r->fields[i]->value;
    }
  }
  return NULL;
}

/* After a credential write: the stored record is sealed and unseals to
 * what the request sent. */
static void check_stored(const char *id, const ProtobufCMessageDescriptor *d,
                         const uint8_t *req, size_t req_len) {
  Latchkey__V1__Credential *stored = NULL;
  lk_err err;
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, req_len, req);
  check(m != NULL);
  check(lk_catalog_get_credential(fx.cat, id, &stored, &err) == LK_OK);
  for (size_t i = 0; i < stored->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = stored->fields[i];
    if (!f->secret) {
      check(f->sealed == NULL);
      continue;
    }
    check(f->value[0] == '\0' && f->sealed != NULL);
    const char *sent = request_value(m, f->name);
    if (sent == NULL) {
      continue; /* an Update that kept this field */
    }
    lk_secret *plain = NULL;
    check(lk_unseal(fx.key, f->sealed->key_id, stored->id, f->name,
                    f->sealed->nonce.data, f->sealed->nonce.len,
                    f->sealed->ciphertext.data, f->sealed->ciphertext.len,
                    &plain, &err) == LK_OK);
    check(lk_secret_len(plain) == strlen(sent) &&
          memcmp(lk_secret_data(plain), sent, strlen(sent)) == 0);
    lk_secret_free(plain);
  }
  lk_catalog_free_credential(stored);
  protobuf_c_message_free_unpacked(m, NULL);
}

/* Checks an LK_OK response of method path. */
static void check_response(const char *path, const unsigned char *resp,
                           size_t resp_len, const uint8_t *req,
                           size_t req_len) {
  const ProtobufCMessageDescriptor *d = response_of(path);
  if (d == NULL) {
    return; /* a method newer than this table: decoded by its own tests */
  }
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, resp_len, resp);
  check(m != NULL);
  if (d == &latchkey__v1__audit_hash_response__descriptor) {
    const char *hash = ((const Latchkey__V1__AuditHashResponse *)m)->hash;
    Latchkey__V1__AuditHashRequest *r =
        latchkey__v1__audit_hash_request__unpack(NULL, req_len, req);
    char want[LK_AUDIT_HEX_BYTES];
    lk_err err;
    check(r != NULL);
    check(strlen(hash) == LK_AUDIT_HEX_BYTES - 1 &&
          strspn(hash, "0123456789abcdef") == LK_AUDIT_HEX_BYTES - 1);
    check(lk_audit_key_hash(fx.audit, r->value.data, r->value.len, want,
                            &err) == LK_OK);
    check(strcmp(hash, want) == 0);
    latchkey__v1__audit_hash_request__free_unpacked(r, NULL);
  } else if (d == &latchkey__v1__credential__descriptor) {
    const Latchkey__V1__Credential *c = (const Latchkey__V1__Credential *)m;
    check_masked(c);
    if (strcmp(path, PATH("CreateCredential")) == 0) {
      check_stored(c->id, &latchkey__v1__create_credential_request__descriptor,
                   req, req_len);
    } else if (strcmp(path, PATH("UpdateCredential")) == 0) {
      check_stored(c->id, &latchkey__v1__update_credential_request__descriptor,
                   req, req_len);
    }
  } else if (d == &latchkey__v1__credential_list__descriptor) {
    const Latchkey__V1__CredentialList *l =
        (const Latchkey__V1__CredentialList *)m;
    for (size_t i = 0; i < l->n_credentials; i++) {
      check_masked(l->credentials[i]);
    }
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t n_methods = 0;
  const char *const *methods = lk_admin_methods(&n_methods);
  unsigned char *resp = NULL;
  size_t resp_len = 0;
  lk_err err;

  if (size == 0 || n_methods == 0) {
    return 0;
  }
  init_fixture();
  if (verbose < 0) {
    verbose = getenv("LK_FUZZ_VERBOSE") != NULL;
  }
  const char *path = methods[data[0] % n_methods];
  lk_err_clear(&err);
  lk_status st = lk_admin_handle(fx.admin, path, data + 1, size - 1, &resp,
                                 &resp_len, &err);
  if (verbose) {
    fprintf(stderr, "admin_request_fuzz: %s -> %s %s\n", path,
            lk_status_name(st), err.msg);
  }
  if (st == LK_OK) {
    check(resp != NULL);
    check_response(path, resp, resp_len, data + 1, size - 1);
  } else {
    check(resp == NULL && resp_len == 0);
    check(st != LK_INTERNAL && err.code == st && err.msg[0] != '\0');
  }
  free(resp);
  return 0;
}
