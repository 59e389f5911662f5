/*
 * catalog.c - the one place that turns ids into store keys and records into
 * protobuf bytes (layout documented in catalog.h).
 *
 * Keys are built in fixed stack buffers sized for the longest valid ids, so
 * a lookup allocates only what the store and protobuf-c allocate. Ids are
 * validated before any key is built; an invalid id never reaches the
 * store. Credential encodings hold sealed ciphertexts and masks only, but
 * are still wiped before free so no heap page keeps a copy longer than
 * needed.
 *
 * Conditional commits: a seen record carries a copy of the bytes its read
 * decoded (never a second read, which could see a later write). The
 * default committer compares them with the store under commit_mu, which
 * every commit through the catalog takes, so a compare and its write are
 * one step for every writer that goes through the catalog.
 */
#include "lib/catalog.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/catalog_cache.h"
#include "lib/secret.h"

/* "bind/" + id + "/tool/" + id + NUL, with room to spare. */
#define KEY_MAX LK_CATALOG_KEY_MAX

#define SCHEMA_KEY "meta/schema"

struct lk_catalog {
  lk_store *store;
  lk_catalog_commit_fn commit; /* NULL: write to store */
  void *commit_ctx;
  pthread_mutex_t commit_mu; /* the default committer's compare and write */
  lk_catalog_cache *peeked;  /* shared decoded records for lk_catalog_peek_* */
};

struct lk_catalog_seen {
  char key[KEY_MAX];
  int present;
  unsigned char *val; /* present: a copy of the bytes read */
  size_t len;
};

/* What a record kind is called in messages, its key prefix and decoder. */
typedef struct {
  const char *noun;   /* "tool", for messages */
  const char *prefix; /* "tool/" */
  const ProtobufCMessageDescriptor *desc;
  int wipe;         /* encodings hold credential material */
  const char *hint; /* what to do when it is missing */
} kind;

static const kind kind_tool = {"tool", "tool/", &latchkey__v1__tool__descriptor,
                               0, "list tools with `latchkeyctl tool list`"};
static const kind kind_type = {"credential type", "type/",
                               &latchkey__v1__credential_type__descriptor, 0,
                               "list types with `latchkeyctl type list`"};
static const kind kind_cred = {
    "credential", "cred/", &latchkey__v1__credential__descriptor, 1,
    "list credentials with `latchkeyctl credential list`"};
static const kind kind_budget = {"budget", "budget/",
                                 &latchkey__v1__budget__descriptor, 0,
                                 "list budgets with `latchkeyctl budget list`"};
static const kind kind_bind = {"binding", "bind/",
                               &latchkey__v1__binding__descriptor, 0, NULL};

int lk_catalog_valid_id(const char *id) {
  size_t i;
  if (id == NULL || id[0] == '\0') {
    return 0;
  }
  for (i = 0; id[i] != '\0'; i++) {
    unsigned char ch = (unsigned char)id[i];
    int alnum = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                (ch >= '0' && ch <= '9');
    if (i >= LK_CATALOG_ID_MAX) {
      return 0;
    }
    if (!alnum && (i == 0 || (ch != '.' && ch != '_' && ch != '-'))) {
      return 0;
    }
  }
  return 1;
}

static lk_status bad_id(lk_err *err, const char *noun) {
  return lk_fail(err, LK_INVALID_ARGUMENT,
                 "%s id is not valid: use 1-128 characters from A-Z a-z 0-9 "
                 ". _ -, starting with a letter or digit",
                 noun);
}

/* Writes prefix + id into key; the id must already be valid. */
static void key_of(char key[KEY_MAX], const kind *k, const char *id) {
  snprintf(key, KEY_MAX, "%s%s", k->prefix, id);
}

static lk_status binding_key(char key[KEY_MAX], const char *budget,
                             const char *what, const char *id, lk_err *err) {
  if (!lk_catalog_valid_id(budget)) {
    return bad_id(err, "budget");
  }
  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, what[1] == 'o' ? "tool" : "credential type");
  }
  snprintf(key, KEY_MAX, "bind/%s/%s/%s", budget, what, id);
  return LK_OK;
}

lk_status lk_catalog_open(lk_store *store, lk_catalog **out, lk_err *err) {
  lk_status st;
  unsigned char *val = NULL;
  size_t len = 0;
  lk_catalog *c = NULL;

  *out = NULL;
  if (store == NULL) {
    return lk_fail(err, LK_INTERNAL, "lk_catalog_open: store is NULL");
  }
  st = lk_store_get(store, SCHEMA_KEY, &val, &len, err);
  if (st == LK_NOT_FOUND) {
    st = lk_store_put(store, SCHEMA_KEY,
                      (const unsigned char *)LK_CATALOG_SCHEMA,
                      strlen(LK_CATALOG_SCHEMA), err);
  } else if (st == LK_OK && (len != strlen(LK_CATALOG_SCHEMA) ||
                             memcmp(val, LK_CATALOG_SCHEMA, len) != 0)) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "the data dir holds catalog layout \"%.*s\", this build "
                 "reads layout \"" LK_CATALOG_SCHEMA
                 "\"; use a matching latchkey version or a fresh data dir",
                 len > 16 ? 16 : (int)len, (const char *)val);
  }
  if (st != LK_OK) {
    goto done;
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory opening catalog");
    goto done;
  }
  if (pthread_mutex_init(&c->commit_mu, NULL) != 0) {
    free(c);
    c = NULL;
    st = lk_fail(err, LK_INTERNAL, "could not create the catalog's mutex");
    goto done;
  }
  st = lk_catalog_cache_new(LK_CATALOG_CACHE_ENTRIES, LK_CATALOG_CACHE_BYTES,
                            &c->peeked, err);
  if (st != LK_OK) {
    pthread_mutex_destroy(&c->commit_mu);
    free(c);
    c = NULL;
    goto done;
  }
  c->store = store;
  *out = c;
done:
  if (val != NULL) {
    lk_store_value_free(val, len);
  }
  return st;
}

void lk_catalog_destroy(lk_catalog *c) {
  if (c == NULL) {
    return;
  }
  lk_catalog_cache_destroy(c->peeked);
  pthread_mutex_destroy(&c->commit_mu);
  free(c);
}

lk_store *lk_catalog_store(const lk_catalog *c) {
  return c->store;
}

/* Fetches and decodes the record at key: one store get. missing is the
 * whole LK_NOT_FOUND message. */
static lk_status get_key(lk_catalog *c, const kind *k, const char *key,
                         const char *missing, ProtobufCMessage **out,
                         lk_err *err) {
  unsigned char *val = NULL;
  size_t len = 0;
  ProtobufCMessage *m;
  lk_status st = lk_store_get(c->store, key, &val, &len, err);

  if (st == LK_NOT_FOUND) {
    return lk_fail(err, LK_NOT_FOUND, "%s", missing);
  }
  if (st != LK_OK) {
    return st;
  }
  m = protobuf_c_message_unpack(k->desc, NULL, len, val);
  lk_store_value_free(val, len); /* wipes */
  if (m == NULL) {
    return lk_fail(err, LK_INTERNAL,
                   "stored record %s does not decode; restore the data dir "
                   "from a backup or re-create the %s",
                   key, k->noun);
  }
  *out = m;
  return LK_OK;
}

static lk_status get_by_id(lk_catalog *c, const kind *k, const char *id,
                           ProtobufCMessage **out, lk_err *err) {
  char key[KEY_MAX];
  char missing[LK_CATALOG_ID_MAX + 128];

  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, k->noun);
  }
  key_of(key, k, id);
  snprintf(missing, sizeof(missing), "%s '%s' not found; %s", k->noun, id,
           k->hint);
  return get_key(c, k, key, missing, out, err);
}

lk_status lk_catalog_get_tool(lk_catalog *c, const char *id,
                              Latchkey__V1__Tool **out, lk_err *err) {
  ProtobufCMessage *m = NULL;
  lk_status st = get_by_id(c, &kind_tool, id, &m, err);
  if (st == LK_OK) {
    *out = (Latchkey__V1__Tool *)m;
  }
  return st;
}

lk_status lk_catalog_get_type(lk_catalog *c, const char *id,
                              Latchkey__V1__CredentialType **out, lk_err *err) {
  ProtobufCMessage *m = NULL;
  lk_status st = get_by_id(c, &kind_type, id, &m, err);
  if (st == LK_OK) {
    *out = (Latchkey__V1__CredentialType *)m;
  }
  return st;
}

lk_status lk_catalog_get_credential(lk_catalog *c, const char *id,
                                    Latchkey__V1__Credential **out,
                                    lk_err *err) {
  ProtobufCMessage *m = NULL;
  lk_status st = get_by_id(c, &kind_cred, id, &m, err);
  if (st == LK_OK) {
    *out = (Latchkey__V1__Credential *)m;
  }
  return st;
}

lk_status lk_catalog_get_credential_seen(lk_catalog *c, const char *id,
                                         Latchkey__V1__Credential **out,
                                         lk_catalog_seen **seen, lk_err *err) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_catalog_seen *s = NULL;
  lk_status st;

  *seen = NULL;
  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, kind_cred.noun);
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory; retry");
  }
  key_of(s->key, &kind_cred, id);
  st = lk_store_get(c->store, s->key, &val, &len, err);
  if (st == LK_NOT_FOUND) {
    *seen = s;
    return lk_fail(err, LK_NOT_FOUND, "%s '%s' not found; %s", kind_cred.noun,
                   id, kind_cred.hint);
  }
  if (st == LK_OK) {
    s->val = malloc(len > 0 ? len : 1);
    if (s->val == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory; retry");
    }
  }
  if (st == LK_OK) {
    memcpy(s->val, val, len);
    s->len = len;
    s->present = 1;
    *out = latchkey__v1__credential__unpack(NULL, len, val);
    if (*out == NULL) {
      st = lk_fail(err, LK_INTERNAL,
                   "stored record %s does not decode; restore the data dir "
                   "from a backup or re-create the %s",
                   s->key, kind_cred.noun);
    }
  }
  lk_store_value_free(val, len); /* wipes */
  if (st != LK_OK) {
    lk_catalog_seen_free(s);
    return st;
  }
  *seen = s;
  return LK_OK;
}

const char *lk_catalog_seen_key(const lk_catalog_seen *s) {
  return s->key;
}

const unsigned char *lk_catalog_seen_value(const lk_catalog_seen *s,
                                           size_t *len) {
  *len = s->present ? s->len : 0;
  return s->present ? s->val : NULL;
}

void lk_catalog_seen_free(lk_catalog_seen *s) {
  if (s == NULL) {
    return;
  }
  if (s->val != NULL) {
    lk_wipe_free(s->val, s->len);
  }
  free(s);
}

lk_status lk_catalog_get_budget(lk_catalog *c, const char *id,
                                Latchkey__V1__Budget **out, lk_err *err) {
  ProtobufCMessage *m = NULL;
  lk_status st = get_by_id(c, &kind_budget, id, &m, err);
  if (st == LK_OK) {
    *out = (Latchkey__V1__Budget *)m;
  }
  return st;
}

static lk_status get_binding(lk_catalog *c, const char *budget,
                             const char *what, const char *id,
                             Latchkey__V1__Binding **out, lk_err *err) {
  char key[KEY_MAX];
  char missing[3 * LK_CATALOG_ID_MAX + 160];
  ProtobufCMessage *m = NULL;
  lk_status st = binding_key(key, budget, what, id, err);

  if (st != LK_OK) {
    return st;
  }
  snprintf(missing, sizeof(missing),
           "no credential is bound to %s '%s' in budget '%s'; bind one with "
           "`latchkeyctl bind %s --%s %s --credential CRED`",
           what[1] == 'o' ? "tool" : "credential type", id, budget, budget,
           what, id);
  st = get_key(c, &kind_bind, key, missing, &m, err);
  if (st == LK_OK) {
    *out = (Latchkey__V1__Binding *)m;
  }
  return st;
}

lk_status lk_catalog_get_binding_tool(lk_catalog *c, const char *budget,
                                      const char *tool,
                                      Latchkey__V1__Binding **out,
                                      lk_err *err) {
  return get_binding(c, budget, "tool", tool, out, err);
}

lk_status lk_catalog_get_binding_type(lk_catalog *c, const char *budget,
                                      const char *type,
                                      Latchkey__V1__Binding **out,
                                      lk_err *err) {
  return get_binding(c, budget, "type", type, out, err);
}

/* ---- shared records for the call path (lk_catalog_peek_*) ------------ */

/* Appends s to key at *n (the caller bounds the total by KEY_MAX). */
static void key_append(char *key, size_t *n, const char *s) {
  size_t len = strlen(s);
  memcpy(key + *n, s, len);
  *n += len;
  key[*n] = '\0';
}

/* Takes a shared reference to key's record, decoded as k. */
static lk_status peek_key(lk_catalog *c, const kind *k, const char *key,
                          const void **out, lk_err *err) {
  const ProtobufCMessage *m = NULL;
  lk_status st =
      lk_catalog_cache_get(c->peeked, c->store, key, k->desc, k->noun, &m, err);
  if (st == LK_OK) {
    *out = m;
  }
  return st;
}

/* Like get_by_id, answering a shared record. */
static lk_status peek_by_id(lk_catalog *c, const kind *k, const char *id,
                            const void **out, lk_err *err) {
  char key[KEY_MAX];
  size_t n = 0;

  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, k->noun);
  }
  key_append(key, &n, k->prefix);
  key_append(key, &n, id);
  lk_status st = peek_key(c, k, key, out, err);
  if (st == LK_NOT_FOUND) {
    return lk_fail(err, LK_NOT_FOUND, "%s '%s' not found; %s", k->noun, id,
                   k->hint);
  }
  return st;
}

/* Like get_binding, answering a shared record. */
static lk_status peek_binding(lk_catalog *c, const char *budget,
                              const char *what, const char *id,
                              const Latchkey__V1__Binding **out, lk_err *err) {
  char key[KEY_MAX];
  size_t n = 0;
  const void *m = NULL;

  if (!lk_catalog_valid_id(budget)) {
    return bad_id(err, "budget");
  }
  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, what[1] == 'o' ? "tool" : "credential type");
  }
  key_append(key, &n, "bind/");
  key_append(key, &n, budget);
  key_append(key, &n, what[1] == 'o' ? "/tool/" : "/type/");
  key_append(key, &n, id);
  lk_status st = peek_key(c, &kind_bind, key, &m, err);
  if (st == LK_NOT_FOUND) {
    return lk_fail(err, LK_NOT_FOUND,
                   "no credential is bound to %s '%s' in budget '%s'; bind "
                   "one with `latchkeyctl bind %s --%s %s --credential CRED`",
                   what[1] == 'o' ? "tool" : "credential type", id, budget,
                   budget, what, id);
  }
  if (st == LK_OK) {
    *out = m;
  }
  return st;
}

lk_status lk_catalog_peek_tool(lk_catalog *c, const char *id,
                               const Latchkey__V1__Tool **out, lk_err *err) {
  const void *m = NULL;
  lk_status st = peek_by_id(c, &kind_tool, id, &m, err);
  if (st == LK_OK) {
    *out = m;
  }
  return st;
}

lk_status lk_catalog_peek_type(lk_catalog *c, const char *id,
                               const Latchkey__V1__CredentialType **out,
                               lk_err *err) {
  const void *m = NULL;
  lk_status st = peek_by_id(c, &kind_type, id, &m, err);
  if (st == LK_OK) {
    *out = m;
  }
  return st;
}

lk_status lk_catalog_peek_credential(lk_catalog *c, const char *id,
                                     const Latchkey__V1__Credential **out,
                                     lk_err *err) {
  const void *m = NULL;
  lk_status st = peek_by_id(c, &kind_cred, id, &m, err);
  if (st == LK_OK) {
    *out = m;
  }
  return st;
}

lk_status lk_catalog_peek_budget(lk_catalog *c, const char *id,
                                 const Latchkey__V1__Budget **out,
                                 lk_err *err) {
  const void *m = NULL;
  lk_status st = peek_by_id(c, &kind_budget, id, &m, err);
  if (st == LK_OK) {
    *out = m;
  }
  return st;
}

lk_status lk_catalog_peek_binding_tool(lk_catalog *c, const char *budget,
                                       const char *tool,
                                       const Latchkey__V1__Binding **out,
                                       lk_err *err) {
  return peek_binding(c, budget, "tool", tool, out, err);
}

lk_status lk_catalog_peek_binding_type(lk_catalog *c, const char *budget,
                                       const char *type,
                                       const Latchkey__V1__Binding **out,
                                       lk_err *err) {
  return peek_binding(c, budget, "type", type, out, err);
}

void lk_catalog_release_tool(const Latchkey__V1__Tool *tool) {
  lk_catalog_cache_release(tool != NULL ? &tool->base : NULL);
}

void lk_catalog_release_type(const Latchkey__V1__CredentialType *type) {
  lk_catalog_cache_release(type != NULL ? &type->base : NULL);
}

void lk_catalog_release_credential(const Latchkey__V1__Credential *cred) {
  lk_catalog_cache_release(cred != NULL ? &cred->base : NULL);
}

void lk_catalog_release_budget(const Latchkey__V1__Budget *budget) {
  lk_catalog_cache_release(budget != NULL ? &budget->base : NULL);
}

void lk_catalog_release_binding(const Latchkey__V1__Binding *bind) {
  lk_catalog_cache_release(bind != NULL ? &bind->base : NULL);
}

void lk_catalog_peek_usage(lk_catalog *c, size_t *entries, size_t *bytes) {
  lk_catalog_cache_usage(c->peeked, entries, bytes);
}

/* One listing in progress: the typed callback and what went wrong. */
typedef struct {
  const kind *k;
  union {
    lk_catalog_tool_fn tool;
    lk_catalog_type_fn type;
    lk_catalog_credential_fn cred;
    lk_catalog_budget_fn budget;
    lk_catalog_binding_fn bind;
  } fn;
  void *ctx;
  lk_status st;
  lk_err *err;
} scan_state;

static int scan_one(void *ctx, const char *key, size_t klen,
                    const unsigned char *val, size_t vlen) {
  scan_state *s = ctx;
  ProtobufCMessage *m = protobuf_c_message_unpack(s->k->desc, NULL, vlen, val);

  if (m == NULL) {
    s->st = lk_fail(s->err, LK_INTERNAL,
                    "stored record %.*s does not decode; restore the data "
                    "dir from a backup or re-create the %s",
                    klen > KEY_MAX ? KEY_MAX : (int)klen, key, s->k->noun);
    return 1;
  }
  if (s->k == &kind_tool) {
    return s->fn.tool(s->ctx, (Latchkey__V1__Tool *)m);
  }
  if (s->k == &kind_type) {
    return s->fn.type(s->ctx, (Latchkey__V1__CredentialType *)m);
  }
  if (s->k == &kind_cred) {
    return s->fn.cred(s->ctx, (Latchkey__V1__Credential *)m);
  }
  if (s->k == &kind_budget) {
    return s->fn.budget(s->ctx, (Latchkey__V1__Budget *)m);
  }
  return s->fn.bind(s->ctx, (Latchkey__V1__Binding *)m);
}

static lk_status scan(lk_catalog *c, scan_state *s, const char *prefix) {
  lk_status st = lk_store_scan(c->store, prefix, scan_one, s, s->err);
  if (st != LK_OK) {
    return st;
  }
  return s->st;
}

lk_status lk_catalog_list_tools(lk_catalog *c, lk_catalog_tool_fn fn, void *ctx,
                                lk_err *err) {
  scan_state s = {&kind_tool, {.tool = fn}, ctx, LK_OK, err};
  return scan(c, &s, kind_tool.prefix);
}

lk_status lk_catalog_list_types(lk_catalog *c, lk_catalog_type_fn fn, void *ctx,
                                lk_err *err) {
  scan_state s = {&kind_type, {.type = fn}, ctx, LK_OK, err};
  return scan(c, &s, kind_type.prefix);
}

lk_status lk_catalog_list_credentials(lk_catalog *c,
                                      lk_catalog_credential_fn fn, void *ctx,
                                      lk_err *err) {
  scan_state s = {&kind_cred, {.cred = fn}, ctx, LK_OK, err};
  return scan(c, &s, kind_cred.prefix);
}

lk_status lk_catalog_list_budgets(lk_catalog *c, lk_catalog_budget_fn fn,
                                  void *ctx, lk_err *err) {
  scan_state s = {&kind_budget, {.budget = fn}, ctx, LK_OK, err};
  return scan(c, &s, kind_budget.prefix);
}

lk_status lk_catalog_list_bindings(lk_catalog *c, const char *budget,
                                   lk_catalog_binding_fn fn, void *ctx,
                                   lk_err *err) {
  scan_state s = {&kind_bind, {.bind = fn}, ctx, LK_OK, err};
  char prefix[KEY_MAX];

  if (budget == NULL || budget[0] == '\0') {
    return scan(c, &s, kind_bind.prefix);
  }
  if (!lk_catalog_valid_id(budget)) {
    return bad_id(err, "budget");
  }
  snprintf(prefix, sizeof(prefix), "bind/%s/", budget);
  return scan(c, &s, prefix);
}

/* Encodes m and adds a put of key to b; wipes the encoding when asked. */
static lk_status put_msg(lk_store_batch *b, const char *key,
                         const ProtobufCMessage *m, int wipe, lk_err *err) {
  size_t len = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(len > 0 ? len : 1);

  if (buf == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory encoding %s; retry", key);
  }
  protobuf_c_message_pack(m, buf);
  lk_store_batch_put(b, key, buf, len);
  if (wipe) {
    lk_wipe_free(buf, len);
  } else {
    free(buf);
  }
  return LK_OK;
}

static lk_status put_by_id(lk_store_batch *b, const kind *k, const char *id,
                           const ProtobufCMessage *m, lk_err *err) {
  char key[KEY_MAX];
  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, k->noun);
  }
  key_of(key, k, id);
  return put_msg(b, key, m, k->wipe, err);
}

lk_status lk_catalog_put_tool(lk_catalog *c, lk_store_batch *b,
                              const Latchkey__V1__Tool *tool, lk_err *err) {
  (void)c;
  return put_by_id(b, &kind_tool, tool->id, &tool->base, err);
}

lk_status lk_catalog_put_type(lk_catalog *c, lk_store_batch *b,
                              const Latchkey__V1__CredentialType *type,
                              lk_err *err) {
  (void)c;
  return put_by_id(b, &kind_type, type->id, &type->base, err);
}

lk_status lk_catalog_put_credential(lk_catalog *c, lk_store_batch *b,
                                    const Latchkey__V1__Credential *cred,
                                    lk_err *err) {
  (void)c;
  return put_by_id(b, &kind_cred, cred->id, &cred->base, err);
}

lk_status lk_catalog_put_budget(lk_catalog *c, lk_store_batch *b,
                                const Latchkey__V1__Budget *budget,
                                lk_err *err) {
  (void)c;
  return put_by_id(b, &kind_budget, budget->id, &budget->base, err);
}

/* Builds the key of a binding from its budget and its one target. */
static lk_status binding_key_of(char key[KEY_MAX],
                                const Latchkey__V1__Binding *bind,
                                lk_err *err) {
  int has_tool = bind->tool_id != NULL && bind->tool_id[0] != '\0';
  int has_type =
      bind->credential_type != NULL && bind->credential_type[0] != '\0';

  if (has_tool == has_type) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "a binding names exactly one of tool_id (tool-specific) "
                   "and credential_type (budget-wide); set one of them");
  }
  return has_tool
             ? binding_key(key, bind->budget_id, "tool", bind->tool_id, err)
             : binding_key(key, bind->budget_id, "type", bind->credential_type,
                           err);
}

lk_status lk_catalog_put_binding(lk_catalog *c, lk_store_batch *b,
                                 const Latchkey__V1__Binding *bind,
                                 lk_err *err) {
  char key[KEY_MAX];
  lk_status st = binding_key_of(key, bind, err);

  (void)c;
  if (st != LK_OK) {
    return st;
  }
  if (!lk_catalog_valid_id(bind->credential_id)) {
    return bad_id(err, "credential");
  }
  return put_msg(b, key, &bind->base, 0, err);
}

static lk_status delete_by_id(lk_store_batch *b, const kind *k, const char *id,
                              lk_err *err) {
  char key[KEY_MAX];
  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, k->noun);
  }
  key_of(key, k, id);
  lk_store_batch_delete(b, key);
  return LK_OK;
}

lk_status lk_catalog_delete_tool(lk_catalog *c, lk_store_batch *b,
                                 const char *id, lk_err *err) {
  (void)c;
  return delete_by_id(b, &kind_tool, id, err);
}

lk_status lk_catalog_delete_type(lk_catalog *c, lk_store_batch *b,
                                 const char *id, lk_err *err) {
  (void)c;
  return delete_by_id(b, &kind_type, id, err);
}

lk_status lk_catalog_delete_credential(lk_catalog *c, lk_store_batch *b,
                                       const char *id, lk_err *err) {
  (void)c;
  return delete_by_id(b, &kind_cred, id, err);
}

lk_status lk_catalog_delete_budget(lk_catalog *c, lk_store_batch *b,
                                   const char *id, lk_err *err) {
  (void)c;
  return delete_by_id(b, &kind_budget, id, err);
}

lk_status lk_catalog_delete_binding(lk_catalog *c, lk_store_batch *b,
                                    const Latchkey__V1__Binding *bind,
                                    lk_err *err) {
  char key[KEY_MAX];
  lk_status st = binding_key_of(key, bind, err);

  (void)c;
  if (st != LK_OK) {
    return st;
  }
  lk_store_batch_delete(b, key);
  return LK_OK;
}

lk_status lk_catalog_key_of(const ProtobufCMessage *m, char key[KEY_MAX],
                            lk_err *err) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const kind *k = NULL;
  const char *id = NULL;

  if (d == &latchkey__v1__binding__descriptor) {
    return binding_key_of(key, (const Latchkey__V1__Binding *)m, err);
  }
  if (d == &latchkey__v1__tool__descriptor) {
    k = &kind_tool;
    id = ((const Latchkey__V1__Tool *)m)->id;
  } else if (d == &latchkey__v1__credential_type__descriptor) {
    k = &kind_type;
    id = ((const Latchkey__V1__CredentialType *)m)->id;
  } else if (d == &latchkey__v1__credential__descriptor) {
    k = &kind_cred;
    id = ((const Latchkey__V1__Credential *)m)->id;
  } else if (d == &latchkey__v1__budget__descriptor) {
    k = &kind_budget;
    id = ((const Latchkey__V1__Budget *)m)->id;
  } else {
    return lk_fail(err, LK_INVALID_ARGUMENT, "%s is not a catalog record",
                   d->name);
  }
  if (!lk_catalog_valid_id(id)) {
    return bad_id(err, k->noun);
  }
  key_of(key, k, id);
  return LK_OK;
}

/* Sets *same to 1 when the store still holds what s found under its key. */
static lk_status still_there(lk_catalog *c, const lk_catalog_seen *s, int *same,
                             lk_err *err) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_status st = lk_store_get(c->store, s->key, &val, &len, err);

  *same = 0;
  if (st == LK_NOT_FOUND) {
    lk_err_clear(err);
    *same = !s->present;
    return LK_OK;
  }
  if (st == LK_OK) {
    *same = s->present && lk_ct_equal(val, len, s->val, s->len);
  }
  lk_store_value_free(val, len);
  return st;
}

/* The default committer: compare and write under commit_mu. A record found
 * changed is already what the next read returns. */
static lk_status commit_local(lk_catalog *c, lk_store_batch *b,
                              lk_catalog_seen *const *seen, size_t n,
                              int *changed, lk_err *err) {
  lk_status st = LK_OK;
  size_t i;

  pthread_mutex_lock(&c->commit_mu);
  for (i = 0; i < n && st == LK_OK; i++) {
    int same = 0;
    st = still_there(c, seen[i], &same, err);
    if (st == LK_OK && !same) {
      *changed = 1;
      st = lk_fail(err, LK_UNAVAILABLE, LK_CATALOG_CHANGED_FMT, seen[i]->key);
    }
  }
  if (st == LK_OK) {
    st = lk_store_write(c->store, b, err);
  }
  pthread_mutex_unlock(&c->commit_mu);
  return st;
}

lk_status lk_catalog_commit_if(lk_catalog *c, lk_store_batch *b,
                               lk_catalog_seen *const *seen, size_t n,
                               int *changed, lk_err *err) {
  *changed = 0;
  if (c->commit != NULL) {
    return c->commit(c->commit_ctx, b, seen, n, changed, err);
  }
  return commit_local(c, b, seen, n, changed, err);
}

lk_status lk_catalog_commit(lk_catalog *c, lk_store_batch *b, lk_err *err) {
  int changed = 0;
  return lk_catalog_commit_if(c, b, NULL, 0, &changed, err);
}

void lk_catalog_set_committer(lk_catalog *c, lk_catalog_commit_fn fn,
                              void *ctx) {
  c->commit = fn;
  c->commit_ctx = ctx;
}

void lk_catalog_free_tool(Latchkey__V1__Tool *tool) {
  if (tool != NULL) {
    protobuf_c_message_free_unpacked(&tool->base, NULL);
  }
}

void lk_catalog_free_type(Latchkey__V1__CredentialType *type) {
  if (type != NULL) {
    protobuf_c_message_free_unpacked(&type->base, NULL);
  }
}

void lk_catalog_free_credential(Latchkey__V1__Credential *cred) {
  if (cred != NULL) {
    protobuf_c_message_free_unpacked(&cred->base, NULL);
  }
}

void lk_catalog_free_budget(Latchkey__V1__Budget *budget) {
  if (budget != NULL) {
    protobuf_c_message_free_unpacked(&budget->base, NULL);
  }
}

void lk_catalog_free_binding(Latchkey__V1__Binding *bind) {
  if (bind != NULL) {
    protobuf_c_message_free_unpacked(&bind->base, NULL);
  }
}
