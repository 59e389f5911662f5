/*
 * admin.c - latchkey.v1.Admin: validates what owners register, seals what
 * they entrust, masks what they read back, and refuses deletes that would
 * leave a dangling reference.
 *
 * Validation: what a valid tool or credential type is lives in lib/schema
 * (the request builder reads the same rules); this file applies it,
 * normalizes what passed, and adds what needs the catalog: references
 * that must exist, and changes that bound records forbid.
 *
 * Shape: lk_admin_handle looks the method up in one table, decodes the
 * request with the table's descriptor, runs the handler (writers under the
 * service mutex, so each read-modify-write sees its own reads), wipes the
 * request's plaintext secret values (the table's scrub hook) and frees it.
 * Requests are unpacked with lib/wipealloc's allocator, so every block
 * protobuf-c made of them (a value's bytes past an embedded NUL, which
 * strlen-based wiping would miss, included) is wiped when it is freed.
 * Handlers build responses either from unpacked catalog records or from
 * "view" messages on the stack that borrow their strings; either way the
 * response is packed before anything it points to is freed.
 *
 * Secrets: a credential request's values are validated (pattern, length,
 * UTF-8) in place and each secret one is masked and sealed; the scrub hook
 * wipes all of them once the write has landed or failed (a write that
 * found its credential changed is built again from the same values: see
 * below), on every exit path. Error messages name fields, patterns and ids,
 * never a value; ids are echoed only after they have been validated, and
 * base_url (which may carry a password in user info) never is.
 *
 * Audit: writes run one at a time under the service mutex, so the write in
 * progress notes what its audit line needs (the credential id it chose,
 * the hash of each secret value, taken right before the value's last use)
 * in the service's one audit record, and lk_admin_handle writes the line
 * from it and the request's validated ids before it lets go of the mutex.
 * RotateKey changes the key ring through the keys hook, not the catalog,
 * so it runs outside the mutex and its line carries only the action and
 * the outcome.
 *
 * Concurrent writers: the mutex orders this service's writes only. A
 * credential is also written by other control planes' Admin, the OAuth
 * refresher and the re-sealer, and this service reads a mirror that may
 * lag them. So every credential write (create, update, delete) reads the
 * record with lk_catalog_get_credential_seen and commits with
 * lk_catalog_commit_if: it lands only if the record is still the one it
 * was built from. When it is not, the commit notes a->changed (the
 * catalog then already reads fresh) and lk_admin_handle runs the handler
 * again, at most WRITE_TRIES times, so an update keeps whatever landed
 * meanwhile (a refresh's rotated tokens and OAuthState) and a delete is
 * never undone by an update built before it.
 */
#include "lib/admin.h"

#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "latchkey/v1/admin.pb-c.h"
#include "lib/log.h"
#include "lib/oauth.h"
#include "lib/schema.h"
#include "lib/secret.h"
#include "lib/wipealloc.h"

#define MAX_LABEL 1024
/* "••••" is 12 bytes of UTF-8; 4 more characters take at most 16. */
#define MASK_MAX 32
#define BULLETS "\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2"
#define MASK_MIN_CHARS 12
#define CRED_ID_RANDOM_BYTES 8
#define CRED_ID_TRIES 8
/* Runs of a write whose credential keeps changing under it, and the cap
 * of the random pause between runs (ms, doubling from 4), so that two
 * control planes writing one credential at once do not keep colliding. */
#define WRITE_TRIES 8
#define WRITE_PAUSE_MAX_MS 128

/* What the write in progress noted for its audit line (under mu). */
typedef struct {
  char cred_id[LK_CATALOG_ID_MAX + 1]; /* a created credential's id */
  size_t n_hashes;
  struct {
    char field[LK_CATALOG_ID_MAX + 1];
    char hex[LK_AUDIT_HEX_BYTES];
  } hashes[LK_SCHEMA_MAX_FIELDS];
  int hash_failed; /* a secret value could not be hashed */
} audit_rec;

struct lk_admin {
  lk_catalog *cat;
  lk_admin_sealer sealer;
  lk_admin_auditor auditor;
  lk_admin_keys keys; /* fn NULL: not a control plane */
  pthread_mutex_t mu;
  audit_rec rec; /* under mu */
  int changed;   /* under mu: a record the write read changed; run again */
};

/* A handler gets the decoded request and packs its own response. */
typedef lk_status (*handler_fn)(lk_admin *a, ProtobufCMessage *req,
                                unsigned char **resp, size_t *resp_len,
                                lk_err *err);

/* ---- small helpers ---- */

static int nonempty(const char *s) {
  return s != NULL && s[0] != '\0';
}

static int streq(const char *a, const char *b) {
  return strcmp(a != NULL ? a : "", b != NULL ? b : "") == 0;
}

static lk_status pack(const ProtobufCMessage *m, unsigned char **resp,
                      size_t *resp_len, lk_err *err) {
  size_t len = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(len > 0 ? len : 1);

  if (buf == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory encoding the response; retry");
  }
  protobuf_c_message_pack(m, buf);
  *resp = buf;
  *resp_len = len;
  return LK_OK;
}

static lk_status pack_empty(unsigned char **resp, size_t *resp_len,
                            lk_err *err) {
  Latchkey__V1__Empty e = LATCHKEY__V1__EMPTY__INIT;
  return pack(&e.base, resp, resp_len, err);
}

static lk_status oom(lk_err *err) {
  return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory; retry");
}

/* Writes b atomically; b stays the caller's. */
static lk_status commit(lk_admin *a, lk_store_batch *b, lk_err *err) {
  return lk_catalog_commit(a->cat, b, err);
}

/* Writes b atomically if the record seen is still as read; else notes
 * a->changed (mu held) so that lk_admin_handle runs the write again. */
static lk_status commit_if(lk_admin *a, lk_store_batch *b,
                           lk_catalog_seen *seen, lk_err *err) {
  int changed = 0;
  lk_status st = lk_catalog_commit_if(a->cat, b, &seen, 1, &changed, err);
  a->changed = a->changed || changed;
  return st;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Returns 1 when the n bytes at s are valid UTF-8 (no overlongs, no
 * surrogates, nothing above U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t need;
    unsigned int cp;
    size_t j;
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) {
      need = 1;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (n - i <= need) {
      return 0;
    }
    for (j = 1; j <= need; j++) {
      if ((s[i + j] & 0xc0) != 0x80) {
        return 0;
      }
      cp = (cp << 6) | (s[i + j] & 0x3f);
    }
    if ((need == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (need == 3 && (cp < 0x10000 || cp > 0x10ffff))) {
      return 0;
    }
    i += need + 1;
  }
  return 1;
}

/* Writes the mask of a valid UTF-8 value: bullets, plus its last 4
 * characters when it has at least MASK_MIN_CHARS. */
static void mask_of(const char *v, size_t len, char out[MASK_MAX]) {
  size_t chars = 0;
  size_t i;
  size_t start = len;
  size_t seen = 0;

  for (i = 0; i < len; i++) {
    if (((unsigned char)v[i] & 0xc0) != 0x80) {
      chars++;
    }
  }
  memcpy(out, BULLETS, sizeof(BULLETS));
  if (chars < MASK_MIN_CHARS) {
    return;
  }
  while (start > 0 && seen < 4) {
    start--;
    if (((unsigned char)v[start] & 0xc0) != 0x80) {
      seen++;
    }
  }
  memcpy(out + sizeof(BULLETS) - 1, v + start, len - start);
  out[sizeof(BULLETS) - 1 + len - start] = '\0';
}

/* ---- collecting listings ---- */

/* Records gathered from a catalog listing, at most LK_ADMIN_MAX_LIST. */
typedef struct {
  void **items; /* each a pointer to an unpacked message */
  size_t n;
  size_t alloc;
  const char *noun;
  lk_status st;
  lk_err *err;
} collector;

static void collector_free(collector *col) {
  size_t i;
  for (i = 0; i < col->n; i++) {
    protobuf_c_message_free_unpacked((ProtobufCMessage *)col->items[i], NULL);
  }
  free(col->items);
  col->items = NULL;
  col->n = 0;
  col->alloc = 0;
}

/* Takes m; returns 0 when kept, 1 (m freed, listing stopped) otherwise. */
static int collect(collector *col, ProtobufCMessage *m) {
  if (col->n == col->alloc) {
    size_t next = col->alloc == 0 ? 16 : col->alloc * 2;
    void **grown;
    if (col->n >= LK_ADMIN_MAX_LIST) {
      col->st = lk_fail(col->err, LK_RESOURCE_EXHAUSTED,
                        "more than %d %ss; this listing is capped, narrow it "
                        "or delete unused records",
                        LK_ADMIN_MAX_LIST, col->noun);
      protobuf_c_message_free_unpacked(m, NULL);
      return 1;
    }
    if (next > LK_ADMIN_MAX_LIST) {
      next = LK_ADMIN_MAX_LIST;
    }
    grown = realloc(col->items, next * sizeof(*grown));
    if (grown == NULL) {
      col->st = oom(col->err);
      protobuf_c_message_free_unpacked(m, NULL);
      return 1;
    }
    col->items = grown;
    col->alloc = next;
  }
  col->items[col->n++] = m;
  return 0;
}

static int collect_tool(void *ctx, Latchkey__V1__Tool *t) {
  return collect(ctx, &t->base);
}

static int collect_type(void *ctx, Latchkey__V1__CredentialType *t) {
  return collect(ctx, &t->base);
}

static int collect_cred(void *ctx, Latchkey__V1__Credential *c) {
  return collect(ctx, &c->base);
}

static int collect_budget(void *ctx, Latchkey__V1__Budget *b) {
  return collect(ctx, &b->base);
}

static int collect_binding(void *ctx, Latchkey__V1__Binding *b) {
  return collect(ctx, &b->base);
}

/* Runs a listing into col; the listing's own failure or col's. */
static lk_status finish_collect(lk_status st, collector *col) {
  if (st != LK_OK) {
    return st;
  }
  return col->st;
}

static lk_status collect_bindings(lk_admin *a, const char *budget,
                                  collector *col, lk_err *err) {
  lk_status st;
  col->noun = "binding";
  col->err = err;
  st = lk_catalog_list_bindings(a->cat, budget, collect_binding, col, err);
  return finish_collect(st, col);
}

/* ---- credentials ---- */

static const Latchkey__V1__CredentialField *type_field(
    const Latchkey__V1__CredentialType *t, const char *name) {
  size_t i;
  for (i = 0; i < t->n_fields; i++) {
    if (streq(t->fields[i]->name, name)) {
      return t->fields[i];
    }
  }
  return NULL;
}

/* Checks one value against its field; the message never holds the value. */
static lk_status check_value(const Latchkey__V1__CredentialType *t,
                             const Latchkey__V1__CredentialField *f,
                             const char *v, lk_err *err) {
  size_t len = strlen(v);
  size_t max = f->max_len != 0 ? f->max_len : LK_SCHEMA_DEFAULT_MAX_LEN;

  if (len == 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "field '%s' is empty; provide a value", f->name);
  }
  if (len > max) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "field '%s' is longer than its max_len of %zu bytes; check "
                   "the value",
                   f->name, max);
  }
  if (f->secret && len > LK_SEAL_MAX_PT_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "secret field '%s' is longer than %u bytes; check the "
                   "value",
                   f->name, (unsigned)LK_SEAL_MAX_PT_BYTES);
  }
  if (!valid_utf8((const unsigned char *)v, len)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "field '%s' is not valid UTF-8; check the value", f->name);
  }
  if (nonempty(f->pattern)) {
    regex_t re;
    int rc = regcomp(&re, f->pattern, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
      return lk_fail(err, LK_FAILED_PRECONDITION,
                     "credential type '%s': field '%s' pattern does not "
                     "compile; re-register the type",
                     t->id, f->name);
    }
    rc = regexec(&re, v, 0, NULL, 0);
    regfree(&re);
    if (rc != 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "field '%s' does not match the pattern %s of credential "
                     "type '%s'; check the value",
                     f->name, f->pattern, t->id);
    }
  }
  return LK_OK;
}

/* One request field entry (create and update share the shape). */
typedef struct {
  const char *key;
  char *value;
} entry;

/* Returns the index of the entry named name among e[0..n), or n. */
static size_t entry_index(const entry *e, size_t n, const char *name) {
  size_t i;
  for (i = 0; i < n && !streq(e[i].key, name); i++) {
  }
  return i;
}

/* Returns 1 when an oauth2 credential of grant type grant may leave out
 * field name (lib/oauth.h): the access token (then refreshed at once), its
 * expiry, the client secret, the scope, the grant type (defaulted), and
 * the refresh token of a client_credentials grant. */
static int oauth_optional(const char *name, const char *grant) {
  return streq(name, LK_OAUTH_ACCESS_TOKEN) ||
         streq(name, LK_OAUTH_EXPIRES_AT) ||
         streq(name, LK_OAUTH_CLIENT_SECRET) || streq(name, LK_OAUTH_SCOPE) ||
         streq(name, LK_OAUTH_GRANT_TYPE) ||
         (streq(name, LK_OAUTH_REFRESH_TOKEN) &&
          streq(grant, LK_OAUTH_GRANT_CLIENT_CREDENTIALS));
}

/* Checks that no field of t a credential needs is absent from both the
 * entries and old (the credential an update changes; NULL on create):
 * every field, or with grant set (an oauth2 type) every field but those
 * oauth_optional allows. Lists the missing names. */
static lk_status check_missing(const Latchkey__V1__CredentialType *t,
                               const entry *e, size_t n,
                               const Latchkey__V1__Credential *old,
                               const char *grant, lk_err *err) {
  char missing[400];
  size_t used = 0;
  size_t count = 0;
  size_t i;
  size_t j;

  missing[0] = '\0';
  for (i = 0; i < t->n_fields; i++) {
    const char *name = t->fields[i]->name;
    int found = grant != NULL && oauth_optional(name, grant);
    for (j = 0; j < n && !found; j++) {
      found = streq(e[j].key, name);
    }
    for (j = 0; old != NULL && j < old->n_fields && !found; j++) {
      found = streq(old->fields[j]->name, name);
    }
    if (!found) {
      int w = snprintf(missing + used, sizeof(missing) - used, "%s%s",
                       count > 0 ? ", " : "", name);
      count++;
      if (w > 0 && (size_t)w < sizeof(missing) - used) {
        used += (size_t)w;
      }
    }
  }
  if (count > 0 && grant != NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "missing field%s of oauth2 credential type '%s' (grant_type "
                   "%s): %s; provide %s",
                   count > 1 ? "s" : "", t->id, grant, missing,
                   count > 1 ? "them" : "it");
  }
  if (count > 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "missing field%s of credential type '%s': %s; provide "
                   "every field",
                   count > 1 ? "s" : "", t->id, missing);
  }
  return LK_OK;
}

/* Checks that every entry names a field of t once and its value is valid;
 * with all set, also that none of t's fields is missing. */
static lk_status check_entries(const Latchkey__V1__CredentialType *t,
                               const entry *e, size_t n, int all, lk_err *err) {
  size_t i;
  size_t j;

  for (i = 0; i < n; i++) {
    const Latchkey__V1__CredentialField *f;
    if (!lk_catalog_valid_id(e[i].key)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "field %zu has no valid name; use the field names of "
                     "credential type '%s'",
                     i + 1, t->id);
    }
    f = type_field(t, e[i].key);
    if (f == NULL) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "'%s' is not a field of credential type '%s'; see its "
                     "fields with `latchkeyctl type list`",
                     e[i].key, t->id);
    }
    for (j = 0; j < i; j++) {
      if (streq(e[j].key, e[i].key)) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "field '%s' is given twice; give it once", e[i].key);
      }
    }
  }
  if (all) {
    lk_status st = check_missing(t, e, n, NULL, NULL, err);
    if (st != LK_OK) {
      return st;
    }
  }
  for (i = 0; i < n; i++) {
    lk_status st = check_value(t, type_field(t, e[i].key), e[i].value, err);
    if (st != LK_OK) {
      return st;
    }
  }
  return LK_OK;
}

/* ---- oauth2 credentials (lib/oauth.h) ---- */

#define MAX_TOKEN_URL 2048
/* A canonical expires_at (at most 13 digits) and the NUL, with room. */
#define EXPIRES_BYTES 24
/* Entries an oauth2 write may add to the request's: grant_type and
 * expires_at. */
#define OAUTH_EXTRA_ENTRIES 2

/* What an oauth2 create or update stores beyond the request's values. */
typedef struct {
  char expires_at[EXPIRES_BYTES]; /* canonical; "" when the write keeps it */
  Latchkey__V1__OAuthState state; /* borrows old's strings */
} oauth_plan;

/* Checks a token_url value: http(s), a host, printable ASCII, at most
 * MAX_TOKEN_URL bytes. Whether http is acceptable is the control plane's
 * call (its refresher), not the catalog's. Never echoes the URL. */
static lk_status check_token_url(const char *v, lk_err *err) {
  size_t len = strlen(v);
  size_t rest;
  size_t i;

  if (len > MAX_TOKEN_URL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "field '%s' is longer than %d bytes; check the value",
                   LK_OAUTH_TOKEN_URL, MAX_TOKEN_URL);
  }
  if (strncmp(v, "https://", 8) == 0) {
    rest = 8;
  } else if (strncmp(v, "http://", 7) == 0) {
    rest = 7;
  } else {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "field '%s' must start with https:// (or http://); give "
                   "the provider's token endpoint",
                   LK_OAUTH_TOKEN_URL);
  }
  if (v[rest] == '\0' || v[rest] == '/') {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "field '%s' has no host; give the provider's token "
                   "endpoint",
                   LK_OAUTH_TOKEN_URL);
  }
  for (i = rest; i < len; i++) {
    unsigned char ch = (unsigned char)v[i];
    if (ch <= 0x20 || ch >= 0x7f) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "field '%s' must be printable ASCII without spaces; "
                     "percent-encode the rest",
                     LK_OAUTH_TOKEN_URL);
    }
  }
  return LK_OK;
}

/* Returns 1 when cred (may be NULL) has a field named name. */
static int cred_has_field(const Latchkey__V1__Credential *cred,
                          const char *name) {
  size_t i;
  for (i = 0; cred != NULL && i < cred->n_fields; i++) {
    if (streq(cred->fields[i]->name, name)) {
      return 1;
    }
  }
  return 0;
}

/* Applies the oauth2 rules to the entries of a create (old NULL) or an
 * update of old, after check_entries: a known grant type, the fields that
 * grant needs (here or kept from old), a valid token_url and expires_at.
 * Then completes the entries (room for OAUTH_EXTRA_ENTRIES more at
 * e[*n]): a create without grant_type gets authorization_code; expires_at
 * is stored canonical (decimal seconds), and "0" (refresh at once) when
 * the credential has no access token or a write sets one without its
 * expiry. */
static lk_status oauth_prepare(const Latchkey__V1__CredentialType *t, entry *e,
                               size_t *n, const Latchkey__V1__Credential *old,
                               oauth_plan *plan, lk_err *err) {
  size_t gi = entry_index(e, *n, LK_OAUTH_GRANT_TYPE);
  size_t xi = entry_index(e, *n, LK_OAUTH_EXPIRES_AT);
  size_t ui = entry_index(e, *n, LK_OAUTH_TOKEN_URL);
  int token = entry_index(e, *n, LK_OAUTH_ACCESS_TOKEN) < *n;
  const char *grant = LK_OAUTH_GRANT_AUTHORIZATION_CODE;
  lk_status st;

  plan->expires_at[0] = '\0';
  if (gi < *n) {
    grant = e[gi].value;
  } else if (lk_oauth_plain_field(old, LK_OAUTH_GRANT_TYPE) != NULL) {
    grant = lk_oauth_plain_field(old, LK_OAUTH_GRANT_TYPE);
  }
  if (!streq(grant, LK_OAUTH_GRANT_AUTHORIZATION_CODE) &&
      !streq(grant, LK_OAUTH_GRANT_CLIENT_CREDENTIALS)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "field '%s' must be %s or %s",
                   LK_OAUTH_GRANT_TYPE, LK_OAUTH_GRANT_AUTHORIZATION_CODE,
                   LK_OAUTH_GRANT_CLIENT_CREDENTIALS);
  }
  st = check_missing(t, e, *n, old, grant, err);
  if (st == LK_OK && ui < *n) {
    st = check_token_url(e[ui].value, err);
  }
  if (st == LK_OK && xi < *n) {
    int64_t ms = 0;
    st = lk_oauth_parse_expires_at(e[xi].value, &ms, err);
    snprintf(plan->expires_at, sizeof(plan->expires_at), "%lld",
             (long long)(ms / 1000));
  }
  if (st != LK_OK) {
    return st;
  }
  if ((!token && !cred_has_field(old, LK_OAUTH_ACCESS_TOKEN)) ||
      (xi == *n && token)) {
    snprintf(plan->expires_at, sizeof(plan->expires_at), "0");
  }
  if (plan->expires_at[0] != '\0' && xi < *n) {
    e[xi].value = plan->expires_at;
  } else if (plan->expires_at[0] != '\0' &&
             type_field(t, LK_OAUTH_EXPIRES_AT) != NULL) {
    e[*n].key = LK_OAUTH_EXPIRES_AT;
    e[(*n)++].value = plan->expires_at;
  }
  if (old == NULL && gi == *n && type_field(t, LK_OAUTH_GRANT_TYPE) != NULL) {
    e[*n].key = LK_OAUTH_GRANT_TYPE;
    e[(*n)++].value = (char *)LK_OAUTH_GRANT_AUTHORIZATION_CODE;
  }
  return LK_OK;
}

/* Sets plan->state, the refresh record a write stores: generation 1 on a
 * create; on an update that sets the access or refresh token (the owner
 * re-authorised) the next generation with a clean record (only
 * last_success_at kept), so the refresher starts over; otherwise old's as
 * it is. Counts entries e[0..n) of the request only. */
static void oauth_state(const entry *e, size_t n,
                        const Latchkey__V1__Credential *old, oauth_plan *plan) {
  int reauthorised = entry_index(e, n, LK_OAUTH_ACCESS_TOKEN) < n ||
                     entry_index(e, n, LK_OAUTH_REFRESH_TOKEN) < n;
  latchkey__v1__oauth_state__init(&plan->state);
  if (old != NULL && old->oauth != NULL) {
    plan->state = *old->oauth;
  }
  if (old != NULL && reauthorised) {
    plan->state.generation++;
    plan->state.last_refresh_at = 0;
    plan->state.last_refresh_result = (char *)"re-authorised by the owner";
    plan->state.failures = 0;
    plan->state.next_attempt_at = 0;
    plan->state.reauthorize = 0;
  }
  if (plan->state.generation == 0) {
    plan->state.generation = 1;
  }
}

/* Storage for one freshly sealed (or plain) field value of a view. */
typedef struct {
  Latchkey__V1__FieldValue fv;
  Latchkey__V1__SealedValue sv;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
  char mask[MASK_MAX];
} slot;

/* Notes the audit hash of a secret value being stored under field, for
 * the audit line of the write in progress (mu held). */
static void audit_note_hash(lk_admin *a, const char *field, const char *v,
                            size_t len) {
  audit_rec *r = &a->rec;
  lk_err err;
  if (a->auditor.hash == NULL) {
    return;
  }
  if (r->n_hashes == LK_SCHEMA_MAX_FIELDS ||
      a->auditor.hash(a->auditor.ctx, (const unsigned char *)v, len,
                      r->hashes[r->n_hashes].hex, &err) != LK_OK) {
    r->hash_failed = 1;
    return;
  }
  snprintf(r->hashes[r->n_hashes].field, sizeof(r->hashes[0].field), "%s",
           field);
  r->n_hashes++;
}

/* Fills s for field f of credential cred_id from value v; secret values are
 * masked and sealed. v stays as it is: a write run again needs it, and the
 * request's scrub hook wipes it. */
static lk_status fill_slot(lk_admin *a, slot *s, const char *cred_id,
                           const Latchkey__V1__CredentialField *f, char *v,
                           lk_err *err) {
  latchkey__v1__field_value__init(&s->fv);
  latchkey__v1__sealed_value__init(&s->sv);
  s->fv.name = f->name;
  s->fv.secret = f->secret;
  if (!f->secret) {
    s->fv.value = v;
    return LK_OK;
  }
  {
    size_t len = strlen(v);
    size_t ct_len = 0;
    lk_status st;
    mask_of(v, len, s->mask);
    audit_note_hash(a, f->name, v, len);
    uint32_t key_id = 0;
    st = a->sealer.seal(a->sealer.ctx, cred_id, f->name,
                        (const unsigned char *)v, len, &key_id, s->nonce,
                        &s->ct, &ct_len, err);
    if (st != LK_OK) {
      return st;
    }
    s->sv.key_id = key_id;
    s->sv.nonce.data = s->nonce;
    s->sv.nonce.len = sizeof(s->nonce);
    s->sv.ciphertext.data = s->ct;
    s->sv.ciphertext.len = ct_len;
    s->fv.sealed = &s->sv;
    s->fv.mask = s->mask;
  }
  return LK_OK;
}

static void slots_free(slot *s, size_t n) {
  size_t i;
  if (s == NULL) {
    return;
  }
  for (i = 0; i < n; i++) {
    free(s[i].ct);
  }
  free(s);
}

/* Turns a credential (view or unpacked) into what the Admin API shows:
 * secret fields keep name and mask only. Sealed submessages of unpacked
 * records are freed, so only call with owned=1 on unpacked messages. */
static void mask_credential(Latchkey__V1__Credential *c, int owned) {
  size_t i;
  for (i = 0; i < c->n_fields; i++) {
    Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret) {
      continue;
    }
    if (f->sealed != NULL) {
      if (owned) {
        protobuf_c_message_free_unpacked(&f->sealed->base, NULL);
      }
      f->sealed = NULL;
    }
    if (nonempty(f->value)) {
      if (owned) {
        lk_wipe(f->value, strlen(f->value));
      } else {
        f->value = (char *)"";
      }
    }
  }
}

static void scrub_create(ProtobufCMessage *m) {
  Latchkey__V1__CreateCredentialRequest *r =
      (Latchkey__V1__CreateCredentialRequest *)m;
  size_t i;
  for (i = 0; i < r->n_fields; i++) {
    if (r->fields[i]->value != NULL) {
      lk_wipe(r->fields[i]->value, strlen(r->fields[i]->value));
    }
  }
}

static void scrub_update(ProtobufCMessage *m) {
  Latchkey__V1__UpdateCredentialRequest *r =
      (Latchkey__V1__UpdateCredentialRequest *)m;
  size_t i;
  for (i = 0; i < r->n_fields; i++) {
    if (r->fields[i]->value != NULL) {
      lk_wipe(r->fields[i]->value, strlen(r->fields[i]->value));
    }
  }
}

static lk_status check_label(const char *label, lk_err *err) {
  if (label != NULL && strlen(label) > MAX_LABEL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "label is longer than %d bytes; shorten it", MAX_LABEL);
  }
  if (label != NULL &&
      !valid_utf8((const unsigned char *)label, strlen(label))) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "label is not valid UTF-8");
  }
  return LK_OK;
}

/* Picks a fresh "cred_" + 16 hex id that no credential has; *seen records
 * its absence. */
static lk_status new_cred_id(lk_admin *a, char out[LK_CATALOG_ID_MAX + 1],
                             lk_catalog_seen **seen, lk_err *err) {
  int i;
  for (i = 0; i < CRED_ID_TRIES; i++) {
    unsigned char rnd[CRED_ID_RANDOM_BYTES];
    Latchkey__V1__Credential *old = NULL;
    lk_status st;
    randombytes_buf(rnd, sizeof(rnd));
    memcpy(out, "cred_", 5);
    sodium_bin2hex(out + 5, 2 * sizeof(rnd) + 1, rnd, sizeof(rnd));
    st = lk_catalog_get_credential_seen(a->cat, out, &old, seen, err);
    if (st == LK_OK) {
      lk_catalog_free_credential(old);
      lk_catalog_seen_free(*seen);
      *seen = NULL;
      continue;
    }
    if (st == LK_NOT_FOUND) {
      lk_err_clear(err);
      return LK_OK;
    }
    return st;
  }
  return lk_fail(err, LK_INTERNAL,
                 "could not pick an unused credential id; retry");
}

/* Packs a view credential as the Admin API shows it, after storing it if
 * its record is still as seen. */
static lk_status store_and_answer(lk_admin *a, Latchkey__V1__Credential *c,
                                  lk_catalog_seen *seen, unsigned char **resp,
                                  size_t *resp_len, lk_err *err) {
  lk_store_batch *b = lk_store_batch_new();
  lk_status st;

  if (b == NULL) {
    return oom(err);
  }
  st = lk_catalog_put_credential(a->cat, b, c, err);
  if (st == LK_OK) {
    st = commit_if(a, b, seen, err);
  }
  lk_store_batch_destroy(b);
  if (st != LK_OK) {
    return st;
  }
  mask_credential(c, 0);
  return pack(&c->base, resp, resp_len, err);
}

static lk_status h_create_credential(lk_admin *a, ProtobufCMessage *m,
                                     unsigned char **resp, size_t *resp_len,
                                     lk_err *err) {
  Latchkey__V1__CreateCredentialRequest *r =
      (Latchkey__V1__CreateCredentialRequest *)m;
  Latchkey__V1__CredentialType *type = NULL;
  Latchkey__V1__Credential cred = LATCHKEY__V1__CREDENTIAL__INIT;
  Latchkey__V1__FieldValue **fvs = NULL;
  entry *e = NULL;
  size_t ne = r->n_fields;
  slot *slots = NULL;
  size_t nslots = 0;
  oauth_plan plan;
  int oauth2 = 0;
  char id[LK_CATALOG_ID_MAX + 1];
  lk_catalog_seen *seen = NULL;
  size_t i;
  lk_status st;

  if (!nonempty(r->type)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "CreateCredentialRequest.type is required; name the "
                 "credential type");
    goto done;
  }
  st = lk_schema_check_id(r->type, "credential type", err);
  if (st == LK_OK) {
    st = lk_catalog_get_type(a->cat, r->type, &type, err);
  }
  if (st == LK_OK) {
    st = check_label(r->label, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  e = calloc(r->n_fields + OAUTH_EXTRA_ENTRIES, sizeof(*e));
  if (e == NULL) {
    st = oom(err);
    goto done;
  }
  for (i = 0; i < r->n_fields; i++) {
    e[i].key = r->fields[i]->key;
    e[i].value = r->fields[i]->value != NULL ? r->fields[i]->value : (char *)"";
  }
  oauth2 = lk_oauth_type_is_oauth2(type);
  st = check_entries(type, e, ne, !oauth2, err);
  if (st == LK_OK && oauth2) {
    st = oauth_prepare(type, e, &ne, NULL, &plan, err);
    oauth_state(e, r->n_fields, NULL, &plan);
  }
  if (st != LK_OK) {
    goto done;
  }
  if (nonempty(r->id)) {
    Latchkey__V1__Credential *old = NULL;
    st = lk_schema_check_id(r->id, "credential id", err);
    if (st != LK_OK) {
      goto done;
    }
    st = lk_catalog_get_credential_seen(a->cat, r->id, &old, &seen, err);
    if (st == LK_OK) {
      lk_catalog_free_credential(old);
      st = lk_fail(err, LK_ALREADY_EXISTS,
                   "credential '%s' already exists; choose another id or "
                   "change it with `latchkeyctl credential update %s`",
                   r->id, r->id);
      goto done;
    }
    if (st != LK_NOT_FOUND) {
      goto done;
    }
    lk_err_clear(err);
    snprintf(id, sizeof(id), "%s", r->id);
  } else {
    st = new_cred_id(a, id, &seen, err);
    if (st != LK_OK) {
      goto done;
    }
  }
  slots = calloc(type->n_fields, sizeof(*slots));
  fvs = calloc(type->n_fields, sizeof(*fvs));
  if (slots == NULL || fvs == NULL) {
    st = oom(err);
    goto done;
  }
  /* In the type's order; only an oauth2 type's optional fields may be
   * absent (check_missing), and they are left out. */
  for (i = 0; i < type->n_fields; i++) {
    const Latchkey__V1__CredentialField *f = type->fields[i];
    size_t j = entry_index(e, ne, f->name);
    if (j == ne) {
      continue;
    }
    st = fill_slot(a, &slots[nslots], id, f, e[j].value, err);
    nslots++;
    if (st != LK_OK) {
      goto done;
    }
    fvs[nslots - 1] = &slots[nslots - 1].fv;
  }
  cred.id = id;
  snprintf(a->rec.cred_id, sizeof(a->rec.cred_id), "%s", id);
  cred.type = type->id;
  cred.label = r->label != NULL ? r->label : (char *)"";
  cred.n_fields = nslots;
  cred.fields = fvs;
  cred.created_at = now_ms();
  cred.updated_at = cred.created_at;
  cred.version = 1;
  cred.oauth = oauth2 ? &plan.state : NULL;
  st = store_and_answer(a, &cred, seen, resp, resp_len, err);
done:
  slots_free(slots, nslots);
  free(fvs);
  free(e);
  lk_catalog_free_type(type);
  lk_catalog_seen_free(seen);
  return st;
}

static lk_status h_update_credential(lk_admin *a, ProtobufCMessage *m,
                                     unsigned char **resp, size_t *resp_len,
                                     lk_err *err) {
  Latchkey__V1__UpdateCredentialRequest *r =
      (Latchkey__V1__UpdateCredentialRequest *)m;
  Latchkey__V1__Credential *old = NULL;
  Latchkey__V1__CredentialType *type = NULL;
  Latchkey__V1__Credential cred = LATCHKEY__V1__CREDENTIAL__INIT;
  Latchkey__V1__FieldValue **fvs = NULL;
  Latchkey__V1__FieldValue *kept = NULL;
  entry *e = NULL;
  slot *slots = NULL;
  size_t nslots = 0;
  slot *kslots = NULL; /* kept values re-sealed under the current key */
  size_t ne = r->n_fields;
  oauth_plan plan;
  int oauth2 = 0;
  lk_catalog_seen *seen = NULL;
  size_t nfv;
  size_t i;
  lk_status st = lk_schema_check_id(r->id, "UpdateCredentialRequest.id", err);

  if (st == LK_OK) {
    st = lk_catalog_get_credential_seen(a->cat, r->id, &old, &seen, err);
  }
  if (st == LK_OK) {
    st = check_label(r->label, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  st = lk_catalog_get_type(a->cat, old->type, &type, err);
  if (st == LK_NOT_FOUND) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential '%s' has type '%s', which no longer exists; "
                 "register the type again first",
                 old->id, old->type);
  }
  if (st != LK_OK) {
    goto done;
  }
  e = calloc(r->n_fields + OAUTH_EXTRA_ENTRIES, sizeof(*e));
  if (e == NULL) {
    st = oom(err);
    goto done;
  }
  for (i = 0; i < r->n_fields; i++) {
    e[i].key = r->fields[i]->key;
    e[i].value = r->fields[i]->value != NULL ? r->fields[i]->value : (char *)"";
  }
  oauth2 = lk_oauth_type_is_oauth2(type);
  st = check_entries(type, e, ne, 0, err);
  if (st == LK_OK && oauth2) {
    st = oauth_prepare(type, e, &ne, old, &plan, err);
    oauth_state(e, r->n_fields, old, &plan);
  }
  if (st != LK_OK) {
    goto done;
  }
  slots = calloc(ne > 0 ? ne : 1, sizeof(*slots));
  fvs = calloc(old->n_fields + ne + 1, sizeof(*fvs));
  kept = calloc(old->n_fields + 1, sizeof(*kept));
  kslots = calloc(old->n_fields + 1, sizeof(*kslots));
  if (slots == NULL || fvs == NULL || kept == NULL || kslots == NULL) {
    st = oom(err);
    goto done;
  }
  /* Shallow copies: masking the view for the answer must not touch old. */
  for (nfv = 0; nfv < old->n_fields; nfv++) {
    kept[nfv] = *old->fields[nfv];
    fvs[nfv] = &kept[nfv];
  }
  for (i = 0; i < ne; i++) {
    size_t j;
    nslots = i + 1;
    st = fill_slot(a, &slots[i], old->id, type_field(type, e[i].key),
                   e[i].value, err);
    if (st != LK_OK) {
      goto done;
    }
    for (j = 0; j < old->n_fields && !streq(old->fields[j]->name, e[i].key);
         j++) {
    }
    if (j < old->n_fields) {
      fvs[j] = &slots[i].fv;
    } else {
      fvs[nfv++] = &slots[i].fv;
    }
  }
  for (i = 0; a->sealer.reseal != NULL && i < old->n_fields; i++) {
    int changed = 0;
    size_t ct_len = 0;
    if (fvs[i] != &kept[i] || !kept[i].secret || kept[i].sealed == NULL) {
      continue;
    }
    latchkey__v1__sealed_value__init(&kslots[i].sv);
    st = a->sealer.reseal(a->sealer.ctx, old->id, kept[i].name, kept[i].sealed,
                          &changed, &kslots[i].sv.key_id, kslots[i].nonce,
                          &kslots[i].ct, &ct_len, err);
    if (st != LK_OK) {
      goto done;
    }
    if (changed) {
      kslots[i].sv.nonce.data = kslots[i].nonce;
      kslots[i].sv.nonce.len = sizeof(kslots[i].nonce);
      kslots[i].sv.ciphertext.data = kslots[i].ct;
      kslots[i].sv.ciphertext.len = ct_len;
      kept[i].sealed = &kslots[i].sv;
    }
  }
  cred.id = old->id;
  cred.type = old->type;
  cred.label = nonempty(r->label) ? r->label : old->label;
  cred.n_fields = nfv;
  cred.fields = fvs;
  cred.created_at = old->created_at;
  cred.updated_at = now_ms();
  cred.version = old->version + 1;
  cred.oauth = oauth2 ? &plan.state : NULL;
  st = store_and_answer(a, &cred, seen, resp, resp_len, err);
done:
  slots_free(slots, nslots);
  slots_free(kslots, old != NULL ? old->n_fields : 0);
  free(kept);
  free(fvs);
  free(e);
  lk_catalog_free_type(type);
  lk_catalog_free_credential(old);
  lk_catalog_seen_free(seen);
  return st;
}

/* Finds the first binding that uses credential id; *found 1 with desc set. */
typedef struct {
  const char *cred_id;
  char budget[LK_CATALOG_ID_MAX + 1];
  char target[LK_CATALOG_ID_MAX + 1];
  int tool;
  int found;
} cred_use;

static int find_cred_use(void *ctx, Latchkey__V1__Binding *b) {
  cred_use *u = ctx;
  if (streq(b->credential_id, u->cred_id)) {
    u->found = 1;
    u->tool = nonempty(b->tool_id);
    snprintf(u->budget, sizeof(u->budget), "%s", b->budget_id);
    snprintf(u->target, sizeof(u->target), "%s",
             u->tool ? b->tool_id : b->credential_type);
  }
  lk_catalog_free_binding(b);
  return u->found;
}

static lk_status h_delete_credential(lk_admin *a, ProtobufCMessage *m,
                                     unsigned char **resp, size_t *resp_len,
                                     lk_err *err) {
  Latchkey__V1__DeleteRequest *r = (Latchkey__V1__DeleteRequest *)m;
  Latchkey__V1__Credential *c = NULL;
  lk_store_batch *b = NULL;
  lk_catalog_seen *seen = NULL;
  cred_use u;
  lk_status st = lk_schema_check_id(r->id, "DeleteRequest.id", err);

  if (st == LK_OK) {
    st = lk_catalog_get_credential_seen(a->cat, r->id, &c, &seen, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  memset(&u, 0, sizeof(u));
  u.cred_id = r->id;
  st = lk_catalog_list_bindings(a->cat, NULL, find_cred_use, &u, err);
  if (st != LK_OK) {
    goto done;
  }
  if (u.found) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential '%s' is bound in budget '%s' to %s '%s'; unbind "
                 "it first: `latchkeyctl unbind %s --%s %s`",
                 r->id, u.budget, u.tool ? "tool" : "credential type", u.target,
                 u.budget, u.tool ? "tool" : "type", u.target);
    goto done;
  }
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  st = lk_catalog_delete_credential(a->cat, b, r->id, err);
  if (st == LK_OK) {
    st = commit_if(a, b, seen, err);
  }
  if (st == LK_OK) {
    st = pack_empty(resp, resp_len, err);
  }
done:
  lk_store_batch_destroy(b);
  lk_catalog_free_credential(c);
  lk_catalog_seen_free(seen);
  return st;
}

/* ---- tools ---- */

static lk_status check_kind_change(lk_admin *a,
                                   const Latchkey__V1__CredentialType *t,
                                   lk_err *err);

static lk_status h_register_tool(lk_admin *a, ProtobufCMessage *m,
                                 unsigned char **resp, size_t *resp_len,
                                 lk_err *err) {
  Latchkey__V1__RegisterToolRequest *r = (Latchkey__V1__RegisterToolRequest *)m;
  Latchkey__V1__Tool *t = r->tool;
  Latchkey__V1__Tool *old = NULL;
  Latchkey__V1__CredentialType *type = NULL;
  Latchkey__V1__CredentialType *canon = NULL; /* the inline type, canonical */
  lk_store_batch *b = NULL;
  collector col = {NULL, 0, 0, "binding", LK_OK, err};
  lk_status st;
  size_t i;

  if (t == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "RegisterToolRequest.tool is missing; send the tool "
                 "definition");
    goto done;
  }
  st = lk_schema_check_tool(t, r->credential_type, err);
  if (st != LK_OK) {
    goto done;
  }
  lk_schema_normalize_tool(t);
  if (r->credential_type != NULL) {
    st = lk_schema_canonical_type(r->credential_type, NULL, &canon, err);
    if (st == LK_OK) {
      st = check_kind_change(a, canon, err);
    }
    if (st != LK_OK) {
      goto done;
    }
  } else if (nonempty(t->credential_type)) {
    st = lk_catalog_get_type(a->cat, t->credential_type, &type, err);
    if (st == LK_NOT_FOUND) {
      st = lk_fail(err, LK_NOT_FOUND,
                   "tool '%s' needs credential type '%s', which does not "
                   "exist; register it first (`latchkeyctl type register`) "
                   "or include it inline",
                   t->id, t->credential_type);
    }
    if (st != LK_OK) {
      goto done;
    }
  }
  st = lk_catalog_get_tool(a->cat, t->id, &old, err);
  if (st == LK_NOT_FOUND) {
    lk_err_clear(err);
    st = LK_OK;
  } else if (st == LK_OK && !streq(old->credential_type, t->credential_type)) {
    st = collect_bindings(a, NULL, &col, err);
    for (i = 0; st == LK_OK && i < col.n; i++) {
      Latchkey__V1__Binding *bd = col.items[i];
      if (streq(bd->tool_id, t->id)) {
        st = lk_fail(err, LK_FAILED_PRECONDITION,
                     "tool '%s' is bound to credential '%s' in budget '%s'; "
                     "unbind it (`latchkeyctl unbind %s --tool %s`) before "
                     "changing the tool's credential_type",
                     t->id, bd->credential_id, bd->budget_id, bd->budget_id,
                     t->id);
      }
    }
  }
  if (st != LK_OK) {
    goto done;
  }
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  if (canon != NULL) {
    st = lk_catalog_put_type(a->cat, b, canon, err);
  }
  if (st == LK_OK) {
    st = lk_catalog_put_tool(a->cat, b, t, err);
  }
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  if (st == LK_OK) {
    st = pack(&t->base, resp, resp_len, err);
  }
done:
  collector_free(&col);
  lk_store_batch_destroy(b);
  lk_catalog_free_tool(old);
  lk_catalog_free_type(type);
  if (canon != NULL) {
    protobuf_c_message_free_unpacked(&canon->base, NULL);
  }
  return st;
}

static lk_status h_delete_tool(lk_admin *a, ProtobufCMessage *m,
                               unsigned char **resp, size_t *resp_len,
                               lk_err *err) {
  Latchkey__V1__DeleteRequest *r = (Latchkey__V1__DeleteRequest *)m;
  Latchkey__V1__Tool *t = NULL;
  lk_store_batch *b = NULL;
  collector col = {NULL, 0, 0, "binding", LK_OK, err};
  size_t i;
  lk_status st = lk_schema_check_id(r->id, "DeleteRequest.id", err);

  if (st == LK_OK) {
    st = lk_catalog_get_tool(a->cat, r->id, &t, err);
  }
  if (st == LK_OK) {
    st = collect_bindings(a, NULL, &col, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  for (i = 0; st == LK_OK && i < col.n; i++) {
    Latchkey__V1__Binding *bd = col.items[i];
    if (streq(bd->tool_id, r->id)) {
      st = lk_catalog_delete_binding(a->cat, b, bd, err);
    }
  }
  if (st == LK_OK) {
    st = lk_catalog_delete_tool(a->cat, b, r->id, err);
  }
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  if (st == LK_OK) {
    st = pack_empty(resp, resp_len, err);
  }
done:
  lk_store_batch_destroy(b);
  collector_free(&col);
  lk_catalog_free_tool(t);
  return st;
}

/* ---- credential types ---- */

static lk_status h_register_type(lk_admin *a, ProtobufCMessage *m,
                                 unsigned char **resp, size_t *resp_len,
                                 lk_err *err) {
  Latchkey__V1__CredentialType *t = (Latchkey__V1__CredentialType *)m;
  Latchkey__V1__CredentialType *canon = NULL;
  lk_store_batch *b = NULL;
  lk_status st = lk_schema_check_type(t, err);

  if (st == LK_OK) {
    st = lk_schema_canonical_type(t, NULL, &canon, err);
  }
  if (st == LK_OK) {
    st = check_kind_change(a, canon, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  st = lk_catalog_put_type(a->cat, b, canon, err);
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  if (st == LK_OK) {
    st = pack(&canon->base, resp, resp_len, err);
  }
done:
  lk_store_batch_destroy(b);
  if (canon != NULL) {
    protobuf_c_message_free_unpacked(&canon->base, NULL);
  }
  return st;
}

/* Finds the first tool or credential of a type, for the delete guard. */
typedef struct {
  const char *type_id;
  char user[LK_CATALOG_ID_MAX + 1];
  int found;
} type_use;

static int find_tool_of_type(void *ctx, Latchkey__V1__Tool *t) {
  type_use *u = ctx;
  if (streq(t->credential_type, u->type_id)) {
    u->found = 1;
    snprintf(u->user, sizeof(u->user), "%s", t->id);
  }
  lk_catalog_free_tool(t);
  return u->found;
}

static int find_cred_of_type(void *ctx, Latchkey__V1__Credential *c) {
  type_use *u = ctx;
  if (streq(c->type, u->type_id)) {
    u->found = 1;
    snprintf(u->user, sizeof(u->user), "%s", c->id);
  }
  lk_catalog_free_credential(c);
  return u->found;
}

/* Refuses to re-register type t under another kind while credentials of
 * it exist: they were checked, and given refresh state or not, under the
 * kind they were created with. */
static lk_status check_kind_change(lk_admin *a,
                                   const Latchkey__V1__CredentialType *t,
                                   lk_err *err) {
  Latchkey__V1__CredentialType *old = NULL;
  type_use u;
  lk_status st = lk_catalog_get_type(a->cat, t->id, &old, err);

  if (st == LK_NOT_FOUND) {
    lk_err_clear(err);
    return LK_OK;
  }
  if (st != LK_OK || streq(old->kind, t->kind)) {
    lk_catalog_free_type(old);
    return st;
  }
  lk_catalog_free_type(old);
  memset(&u, 0, sizeof(u));
  u.type_id = t->id;
  st = lk_catalog_list_credentials(a->cat, find_cred_of_type, &u, err);
  if (st == LK_OK && u.found) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential type '%s' has credential '%s', so its kind "
                 "cannot change; delete its credentials first "
                 "(`latchkeyctl credential delete %s`) or register the type "
                 "under another id",
                 t->id, u.user, u.user);
  }
  return st;
}

static lk_status h_delete_type(lk_admin *a, ProtobufCMessage *m,
                               unsigned char **resp, size_t *resp_len,
                               lk_err *err) {
  Latchkey__V1__DeleteRequest *r = (Latchkey__V1__DeleteRequest *)m;
  Latchkey__V1__CredentialType *t = NULL;
  lk_store_batch *b = NULL;
  type_use u;
  lk_status st = lk_schema_check_id(r->id, "DeleteRequest.id", err);

  memset(&u, 0, sizeof(u));
  u.type_id = r->id;
  if (st == LK_OK) {
    st = lk_catalog_get_type(a->cat, r->id, &t, err);
  }
  if (st == LK_OK) {
    st = lk_catalog_list_tools(a->cat, find_tool_of_type, &u, err);
  }
  if (st == LK_OK && u.found) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential type '%s' is used by tool '%s'; delete that "
                 "tool or register it with another credential_type first",
                 r->id, u.user);
  }
  if (st == LK_OK) {
    st = lk_catalog_list_credentials(a->cat, find_cred_of_type, &u, err);
  }
  if (st == LK_OK && u.found) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential type '%s' is used by credential '%s'; delete "
                 "that credential first (`latchkeyctl credential delete %s`)",
                 r->id, u.user, u.user);
  }
  if (st != LK_OK) {
    goto done;
  }
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  st = lk_catalog_delete_type(a->cat, b, r->id, err);
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  if (st == LK_OK) {
    st = pack_empty(resp, resp_len, err);
  }
done:
  lk_store_batch_destroy(b);
  lk_catalog_free_type(t);
  return st;
}

/* ---- budgets ---- */

static lk_status put_budget_answer(lk_admin *a, Latchkey__V1__Budget *bg,
                                   unsigned char **resp, size_t *resp_len,
                                   lk_err *err) {
  lk_store_batch *b = lk_store_batch_new();
  lk_status st;

  if (b == NULL) {
    return oom(err);
  }
  st = lk_catalog_put_budget(a->cat, b, bg, err);
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  lk_store_batch_destroy(b);
  if (st == LK_OK) {
    st = pack(&bg->base, resp, resp_len, err);
  }
  return st;
}

static lk_status h_create_budget(lk_admin *a, ProtobufCMessage *m,
                                 unsigned char **resp, size_t *resp_len,
                                 lk_err *err) {
  Latchkey__V1__Budget *bg = (Latchkey__V1__Budget *)m;
  Latchkey__V1__Budget *old = NULL;
  size_t i;
  size_t j;
  lk_status st = lk_schema_check_id(bg->id, "budget.id", err);

  if (st != LK_OK) {
    return st;
  }
  if (bg->n_agents == 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "budget '%s' lists no agents; add at least one "
                   "(--agent AGENT)",
                   bg->id);
  }
  if (bg->n_agents > LK_ADMIN_MAX_AGENTS) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "budget '%s' lists more than %d agents", bg->id,
                   LK_ADMIN_MAX_AGENTS);
  }
  for (i = 0; i < bg->n_agents; i++) {
    if (!lk_catalog_valid_id(bg->agents[i])) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "budget '%s': agent %zu is not a valid id; use 1-128 "
                     "characters from A-Z a-z 0-9 . _ -, starting with a "
                     "letter or digit",
                     bg->id, i + 1);
    }
    for (j = 0; j < i; j++) {
      if (streq(bg->agents[j], bg->agents[i])) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "budget '%s': agent '%s' is listed twice; list it once",
                       bg->id, bg->agents[i]);
      }
    }
  }
  st = lk_catalog_get_budget(a->cat, bg->id, &old, err);
  if (st == LK_OK) {
    lk_catalog_free_budget(old);
    return lk_fail(err, LK_ALREADY_EXISTS,
                   "budget '%s' already exists; choose another id or delete "
                   "it first",
                   bg->id);
  }
  if (st != LK_NOT_FOUND) {
    return st;
  }
  lk_err_clear(err);
  return put_budget_answer(a, bg, resp, resp_len, err);
}

static lk_status h_set_budget_paused(lk_admin *a, ProtobufCMessage *m,
                                     unsigned char **resp, size_t *resp_len,
                                     lk_err *err) {
  Latchkey__V1__SetBudgetPausedRequest *r =
      (Latchkey__V1__SetBudgetPausedRequest *)m;
  Latchkey__V1__Budget *bg = NULL;
  lk_status st = lk_schema_check_id(r->id, "SetBudgetPausedRequest.id", err);

  if (st == LK_OK) {
    st = lk_catalog_get_budget(a->cat, r->id, &bg, err);
  }
  if (st == LK_OK) {
    bg->paused = r->paused;
    st = put_budget_answer(a, bg, resp, resp_len, err);
  }
  lk_catalog_free_budget(bg);
  return st;
}

static lk_status h_delete_budget(lk_admin *a, ProtobufCMessage *m,
                                 unsigned char **resp, size_t *resp_len,
                                 lk_err *err) {
  Latchkey__V1__DeleteRequest *r = (Latchkey__V1__DeleteRequest *)m;
  Latchkey__V1__Budget *bg = NULL;
  lk_store_batch *b = NULL;
  collector col = {NULL, 0, 0, "binding", LK_OK, err};
  size_t i;
  lk_status st = lk_schema_check_id(r->id, "DeleteRequest.id", err);

  if (st == LK_OK) {
    st = lk_catalog_get_budget(a->cat, r->id, &bg, err);
  }
  if (st == LK_OK) {
    st = collect_bindings(a, r->id, &col, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  for (i = 0; st == LK_OK && i < col.n; i++) {
    st = lk_catalog_delete_binding(a->cat, b, col.items[i], err);
  }
  if (st == LK_OK) {
    st = lk_catalog_delete_budget(a->cat, b, r->id, err);
  }
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  if (st == LK_OK) {
    st = pack_empty(resp, resp_len, err);
  }
done:
  lk_store_batch_destroy(b);
  collector_free(&col);
  lk_catalog_free_budget(bg);
  return st;
}

/* ---- records read alike: get one by id, list them all ---- */

/* A kind of record that GetX and ListX serve the same way. */
typedef struct {
  const char *noun; /* names the kind in the listing cap message */
  lk_status (*get)(lk_catalog *c, const char *id, ProtobufCMessage **out,
                   lk_err *err);
  lk_status (*list)(lk_catalog *c, collector *col, lk_err *err);
  /* the listing message; its one field is the repeated records */
  const ProtobufCMessageDescriptor *list_desc;
  int masked; /* credentials: secret fields answer as masks */
} record_kind;

static lk_status get_tool(lk_catalog *c, const char *id, ProtobufCMessage **out,
                          lk_err *err) {
  Latchkey__V1__Tool *t = NULL;
  lk_status st = lk_catalog_get_tool(c, id, &t, err);
  *out = t != NULL ? &t->base : NULL;
  return st;
}

static lk_status get_type(lk_catalog *c, const char *id, ProtobufCMessage **out,
                          lk_err *err) {
  Latchkey__V1__CredentialType *t = NULL;
  lk_status st = lk_catalog_get_type(c, id, &t, err);
  *out = t != NULL ? &t->base : NULL;
  return st;
}

static lk_status get_cred(lk_catalog *c, const char *id, ProtobufCMessage **out,
                          lk_err *err) {
  Latchkey__V1__Credential *cr = NULL;
  lk_status st = lk_catalog_get_credential(c, id, &cr, err);
  *out = cr != NULL ? &cr->base : NULL;
  return st;
}

static lk_status get_budget(lk_catalog *c, const char *id,
                            ProtobufCMessage **out, lk_err *err) {
  Latchkey__V1__Budget *bg = NULL;
  lk_status st = lk_catalog_get_budget(c, id, &bg, err);
  *out = bg != NULL ? &bg->base : NULL;
  return st;
}

static lk_status list_tools(lk_catalog *c, collector *col, lk_err *err) {
  return lk_catalog_list_tools(c, collect_tool, col, err);
}

static lk_status list_types(lk_catalog *c, collector *col, lk_err *err) {
  return lk_catalog_list_types(c, collect_type, col, err);
}

static lk_status list_creds(lk_catalog *c, collector *col, lk_err *err) {
  return lk_catalog_list_credentials(c, collect_cred, col, err);
}

static lk_status list_budgets(lk_catalog *c, collector *col, lk_err *err) {
  return lk_catalog_list_budgets(c, collect_budget, col, err);
}

static const record_kind kind_tool = {"tool", get_tool, list_tools,
                                      &latchkey__v1__tool_list__descriptor, 0};
static const record_kind kind_type = {
    "credential type", get_type, list_types,
    &latchkey__v1__credential_type_list__descriptor, 0};
static const record_kind kind_cred = {
    "credential", get_cred, list_creds,
    &latchkey__v1__credential_list__descriptor, 1};
static const record_kind kind_budget = {"budget", get_budget, list_budgets,
                                        &latchkey__v1__budget_list__descriptor,
                                        0};

/* Packs a listing message of type desc whose one repeated field borrows
 * the collected records (masked first when masked is set). */
static lk_status pack_listing(const ProtobufCMessageDescriptor *desc,
                              collector *col, int masked, unsigned char **resp,
                              size_t *resp_len, lk_err *err) {
  const ProtobufCFieldDescriptor *f = &desc->fields[0];
  ProtobufCMessage *list = calloc(1, desc->sizeof_message);
  lk_status st;
  size_t i;

  if (list == NULL) {
    return oom(err);
  }
  protobuf_c_message_init(desc, list);
  for (i = 0; masked && i < col->n; i++) {
    mask_credential(col->items[i], 1);
  }
  *(size_t *)((char *)list + f->quantifier_offset) = col->n;
  *(void ***)((char *)list + f->offset) = col->items;
  st = pack(list, resp, resp_len, err);
  free(list);
  return st;
}

/* GetX: the record with GetRequest.id, as the Admin API shows it. */
static lk_status h_get(lk_admin *a, const record_kind *k, ProtobufCMessage *m,
                       unsigned char **resp, size_t *resp_len, lk_err *err) {
  Latchkey__V1__GetRequest *r = (Latchkey__V1__GetRequest *)m;
  ProtobufCMessage *rec = NULL;
  lk_status st = lk_schema_check_id(r->id, "GetRequest.id", err);

  if (st == LK_OK) {
    st = k->get(a->cat, r->id, &rec, err);
  }
  if (st == LK_OK) {
    if (k->masked) {
      mask_credential((Latchkey__V1__Credential *)rec, 1);
    }
    st = pack(rec, resp, resp_len, err);
  }
  if (rec != NULL) {
    protobuf_c_message_free_unpacked(rec, NULL);
  }
  return st;
}

/* ListX: every record of the kind in id order, at most LK_ADMIN_MAX_LIST. */
static lk_status h_list(lk_admin *a, const record_kind *k, ProtobufCMessage *m,
                        unsigned char **resp, size_t *resp_len, lk_err *err) {
  collector col = {NULL, 0, 0, k->noun, LK_OK, err};
  lk_status st = finish_collect(k->list(a->cat, &col, err), &col);

  (void)m;
  if (st == LK_OK) {
    st = pack_listing(k->list_desc, &col, k->masked, resp, resp_len, err);
  }
  collector_free(&col);
  return st;
}

/* ---- bindings ---- */

/* Checks budget_id and that exactly one target is set; *tool says which. */
static lk_status check_binding_shape(const Latchkey__V1__Binding *bd, int *tool,
                                     lk_err *err) {
  int has_tool = nonempty(bd->tool_id);
  int has_type = nonempty(bd->credential_type);
  lk_status st = lk_schema_check_id(bd->budget_id, "binding.budget_id", err);

  if (st != LK_OK) {
    return st;
  }
  if (has_tool == has_type) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "a binding names exactly one of tool_id (tool-specific) "
                   "and credential_type (budget-wide); set one of them");
  }
  *tool = has_tool;
  return has_tool ? lk_schema_check_id(bd->tool_id, "binding.tool_id", err)
                  : lk_schema_check_id(bd->credential_type,
                                       "binding.credential_type", err);
}

static lk_status h_bind(lk_admin *a, ProtobufCMessage *m, unsigned char **resp,
                        size_t *resp_len, lk_err *err) {
  Latchkey__V1__Binding *bd = (Latchkey__V1__Binding *)m;
  Latchkey__V1__Binding out = LATCHKEY__V1__BINDING__INIT;
  Latchkey__V1__Budget *bg = NULL;
  Latchkey__V1__Credential *c = NULL;
  Latchkey__V1__Tool *t = NULL;
  Latchkey__V1__CredentialType *type = NULL;
  lk_store_batch *b = NULL;
  int tool = 0;
  lk_status st = check_binding_shape(bd, &tool, err);

  if (st == LK_OK) {
    st = lk_schema_check_id(bd->credential_id, "binding.credential_id", err);
  }
  if (st == LK_OK) {
    st = lk_catalog_get_budget(a->cat, bd->budget_id, &bg, err);
  }
  if (st == LK_OK) {
    st = lk_catalog_get_credential(a->cat, bd->credential_id, &c, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  if (tool) {
    st = lk_catalog_get_tool(a->cat, bd->tool_id, &t, err);
    if (st != LK_OK) {
      goto done;
    }
    if (!nonempty(t->credential_type)) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "tool '%s' needs no credential (it has no "
                   "credential_type), so there is nothing to bind; give it "
                   "a credential_type first if it needs one",
                   t->id);
      goto done;
    }
    if (!streq(c->type, t->credential_type)) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential '%s' has type '%s' but tool '%s' needs type "
                   "'%s'; bind a credential of type '%s'",
                   c->id, c->type, t->id, t->credential_type,
                   t->credential_type);
      goto done;
    }
  } else {
    st = lk_catalog_get_type(a->cat, bd->credential_type, &type, err);
    if (st != LK_OK) {
      goto done;
    }
    if (!streq(c->type, type->id)) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential '%s' has type '%s', not '%s'; bind a "
                   "credential of type '%s'",
                   c->id, c->type, type->id, type->id);
      goto done;
    }
  }
  out.budget_id = bd->budget_id;
  out.tool_id = tool ? bd->tool_id : (char *)"";
  out.credential_type = tool ? (char *)"" : bd->credential_type;
  out.credential_id = bd->credential_id;
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  st = lk_catalog_put_binding(a->cat, b, &out, err);
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  if (st == LK_OK) {
    st = pack(&out.base, resp, resp_len, err);
  }
done:
  lk_store_batch_destroy(b);
  lk_catalog_free_budget(bg);
  lk_catalog_free_credential(c);
  lk_catalog_free_tool(t);
  lk_catalog_free_type(type);
  return st;
}

static lk_status h_unbind(lk_admin *a, ProtobufCMessage *m,
                          unsigned char **resp, size_t *resp_len, lk_err *err) {
  Latchkey__V1__Binding *bd = (Latchkey__V1__Binding *)m;
  Latchkey__V1__Binding *old = NULL;
  lk_store_batch *b = NULL;
  int tool = 0;
  lk_status st = check_binding_shape(bd, &tool, err);

  if (st == LK_OK) {
    st = tool ? lk_catalog_get_binding_tool(a->cat, bd->budget_id, bd->tool_id,
                                            &old, err)
              : lk_catalog_get_binding_type(a->cat, bd->budget_id,
                                            bd->credential_type, &old, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  b = lk_store_batch_new();
  if (b == NULL) {
    st = oom(err);
    goto done;
  }
  st = lk_catalog_delete_binding(a->cat, b, old, err);
  if (st == LK_OK) {
    st = commit(a, b, err);
  }
  if (st == LK_OK) {
    st = pack_empty(resp, resp_len, err);
  }
done:
  lk_store_batch_destroy(b);
  lk_catalog_free_binding(old);
  return st;
}

static lk_status h_list_bindings(lk_admin *a, ProtobufCMessage *m,
                                 unsigned char **resp, size_t *resp_len,
                                 lk_err *err) {
  Latchkey__V1__ListBindingsRequest *r = (Latchkey__V1__ListBindingsRequest *)m;
  collector col = {NULL, 0, 0, "binding", LK_OK, err};
  lk_status st = LK_OK;

  if (nonempty(r->budget_id)) {
    Latchkey__V1__Budget *bg = NULL;
    st = lk_schema_check_id(r->budget_id, "ListBindingsRequest.budget_id", err);
    if (st == LK_OK) {
      st = lk_catalog_get_budget(a->cat, r->budget_id, &bg, err);
    }
    lk_catalog_free_budget(bg);
  }
  if (st == LK_OK) {
    st = collect_bindings(a, r->budget_id, &col, err);
  }
  if (st == LK_OK) {
    st = pack_listing(&latchkey__v1__binding_list__descriptor, &col, 0, resp,
                      resp_len, err);
  }
  collector_free(&col);
  return st;
}

/* ---- key ring (control plane only) ---- */

/* RotateKey (rotate 1) and GetKeyStatus (rotate 0): the keys hook fills a
 * plain status, packed here as latchkey.v1.KeyStatus. */
static lk_status key_status(lk_admin *a, int rotate, unsigned char **resp,
                            size_t *resp_len, lk_err *err) {
  lk_admin_key_status *ks = NULL;
  Latchkey__V1__KeyInfo *infos = NULL;
  Latchkey__V1__KeyInfo **ptrs = NULL;
  Latchkey__V1__KeyStatus out = LATCHKEY__V1__KEY_STATUS__INIT;
  lk_status st = LK_OK;

  if (a->keys.fn == NULL) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "key rotation is a control-plane operation: this "
                   "standalone sidecar seals with its node key and has no key "
                   "ring; run latchkeyctl keys against latchkey-cp");
  }
  ks = calloc(1, sizeof(*ks));
  if (ks == NULL) {
    return oom(err);
  }
  st = a->keys.fn(a->keys.ctx, rotate, ks, err);
  if (st != LK_OK) {
    goto done;
  }
  if (ks->n_keys > LK_ADMIN_MAX_KEYS) {
    ks->n_keys = LK_ADMIN_MAX_KEYS;
  }
  infos = calloc(ks->n_keys > 0 ? ks->n_keys : 1, sizeof(*infos));
  ptrs = calloc(ks->n_keys > 0 ? ks->n_keys : 1, sizeof(*ptrs));
  if (infos == NULL || ptrs == NULL) {
    st = oom(err);
    goto done;
  }
  for (size_t i = 0; i < ks->n_keys; i++) {
    latchkey__v1__key_info__init(&infos[i]);
    infos[i].id = ks->keys[i].id;
    infos[i].state =
        (char *)(ks->keys[i].state != NULL ? ks->keys[i].state : "");
    infos[i].sealed_fields = ks->keys[i].sealed_fields;
    ptrs[i] = &infos[i];
  }
  ks->last_error[sizeof(ks->last_error) - 1] = '\0';
  out.active_key_id = ks->active_key_id;
  out.n_keys = ks->n_keys;
  out.keys = ptrs;
  out.total_fields = ks->total_fields;
  out.resealing = ks->resealing != 0;
  out.last_error = ks->last_error;
  st = pack(&out.base, resp, resp_len, err);
done:
  free(ptrs);
  free(infos);
  free(ks);
  return st;
}

static lk_status h_rotate_key(lk_admin *a, ProtobufCMessage *m,
                              unsigned char **resp, size_t *resp_len,
                              lk_err *err) {
  (void)m;
  return key_status(a, 1, resp, resp_len, err);
}

static lk_status h_get_key_status(lk_admin *a, ProtobufCMessage *m,
                                  unsigned char **resp, size_t *resp_len,
                                  lk_err *err) {
  (void)m;
  return key_status(a, 0, resp, resp_len, err);
}

/* ---- audit ---- */

static void scrub_audit_hash(ProtobufCMessage *m) {
  Latchkey__V1__AuditHashRequest *r = (Latchkey__V1__AuditHashRequest *)m;
  if (r->value.data != NULL) {
    lk_wipe(r->value.data, r->value.len);
  }
}

static lk_status h_audit_hash(lk_admin *a, ProtobufCMessage *m,
                              unsigned char **resp, size_t *resp_len,
                              lk_err *err) {
  Latchkey__V1__AuditHashRequest *r = (Latchkey__V1__AuditHashRequest *)m;
  Latchkey__V1__AuditHashResponse out = LATCHKEY__V1__AUDIT_HASH_RESPONSE__INIT;
  char hex[LK_AUDIT_HEX_BYTES];
  lk_status st;

  if (a->auditor.hash == NULL) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "this Admin server has no audit key; ask the control "
                   "plane (latchkeyctl --server CONTROL_PLANE audit-hash)");
  }
  if (r->value.len == 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "AuditHashRequest.value is empty; send the secret value "
                   "to hash");
  }
  if (r->value.len > LK_SEAL_MAX_PT_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "AuditHashRequest.value is %zu bytes; no secret value is "
                   "longer than %u bytes",
                   r->value.len, (unsigned)LK_SEAL_MAX_PT_BYTES);
  }
  st = a->auditor.hash(a->auditor.ctx, r->value.data, r->value.len, hex, err);
  if (st != LK_OK) {
    return st;
  }
  out.hash = hex;
  return pack(&out.base, resp, resp_len, err);
}

/* How an audited method is named in audit lines, and what its request's
 * plain "id" names (DeleteRequest, GetRequest-like requests). */
typedef struct {
  const char *method; /* after "/latchkey.v1.Admin/" */
  const char *action;
  const char *id_key;
} audit_action;

static const audit_action audit_actions[] = {
    {"RegisterTool", "tool.register", NULL},
    {"DeleteTool", "tool.delete", "tool_id"},
    {"RegisterCredentialType", "type.register", NULL},
    {"DeleteCredentialType", "type.delete", "credential_type"},
    {"CreateCredential", "credential.create", NULL},
    {"UpdateCredential", "credential.update", "credential_id"},
    {"DeleteCredential", "credential.delete", "credential_id"},
    {"CreateBudget", "budget.create", NULL},
    {"SetBudgetPaused", "budget.pause", "budget_id"},
    {"DeleteBudget", "budget.delete", "budget_id"},
    {"Bind", "bind", NULL},
    {"Unbind", "unbind", NULL},
    {"RotateKey", "keys.rotate", NULL},
    {"AuditHash", "audit.hash", NULL},
};

/* Adds key: id to obj when id is a valid id (nothing else is echoed). */
static void audit_put_id(json_t *obj, const char *key, const char *id) {
  if (id != NULL && lk_catalog_valid_id(id)) {
    json_object_set_new(obj, key, json_string(id));
  }
}

/* Adds the request's validated ids to obj, by request type. */
static void audit_put_ids(json_t *obj, const audit_action *act,
                          const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (d == &latchkey__v1__register_tool_request__descriptor) {
    const Latchkey__V1__RegisterToolRequest *r =
        (const Latchkey__V1__RegisterToolRequest *)m;
    if (r->tool != NULL) {
      audit_put_id(obj, "tool_id", r->tool->id);
      audit_put_id(obj, "credential_type", r->tool->credential_type);
    }
  } else if (d == &latchkey__v1__credential_type__descriptor) {
    audit_put_id(obj, "credential_type",
                 ((const Latchkey__V1__CredentialType *)m)->id);
  } else if (d == &latchkey__v1__delete_request__descriptor &&
             act->id_key != NULL) {
    audit_put_id(obj, act->id_key,
                 ((const Latchkey__V1__DeleteRequest *)m)->id);
  } else if (d == &latchkey__v1__create_credential_request__descriptor) {
    const Latchkey__V1__CreateCredentialRequest *r =
        (const Latchkey__V1__CreateCredentialRequest *)m;
    audit_put_id(obj, "credential_type", r->type);
    audit_put_id(obj, "credential_id", r->id);
  } else if (d == &latchkey__v1__update_credential_request__descriptor) {
    audit_put_id(obj, "credential_id",
                 ((const Latchkey__V1__UpdateCredentialRequest *)m)->id);
  } else if (d == &latchkey__v1__budget__descriptor) {
    const Latchkey__V1__Budget *b = (const Latchkey__V1__Budget *)m;
    json_t *agents = json_array();
    audit_put_id(obj, "budget_id", b->id);
    for (size_t i = 0;
         agents != NULL && i < b->n_agents && i < LK_ADMIN_MAX_AGENTS; i++) {
      if (lk_catalog_valid_id(b->agents[i])) {
        json_array_append_new(agents, json_string(b->agents[i]));
      }
    }
    if (agents != NULL) {
      json_object_set_new(obj, "agents", agents);
    }
  } else if (d == &latchkey__v1__set_budget_paused_request__descriptor) {
    audit_put_id(obj, "budget_id",
                 ((const Latchkey__V1__SetBudgetPausedRequest *)m)->id);
  } else if (d == &latchkey__v1__binding__descriptor) {
    const Latchkey__V1__Binding *b = (const Latchkey__V1__Binding *)m;
    audit_put_id(obj, "budget_id", b->budget_id);
    audit_put_id(obj, "tool_id", b->tool_id);
    audit_put_id(obj, "credential_type", b->credential_type);
    audit_put_id(obj, "credential_id", b->credential_id);
  }
}

/* Writes the audit.admin line of one call of method path (m its decoded
 * request, NULL when it did not decode; rec what the write noted). */
static void audit_line(const char *path, const ProtobufCMessage *m,
                       const audit_rec *rec, lk_status st) {
  static const char prefix[] = "/latchkey.v1.Admin/";
  const char *name = path + sizeof(prefix) - 1;
  audit_action act = {name, name, NULL};
  const char *outcome = "ok";
  json_t *obj = json_object();

  for (size_t i = 0; i < sizeof(audit_actions) / sizeof(audit_actions[0]);
       i++) {
    if (strcmp(audit_actions[i].method, name) == 0) {
      act = audit_actions[i];
    }
  }
  if (m != NULL &&
      m->descriptor == &latchkey__v1__set_budget_paused_request__descriptor &&
      !((const Latchkey__V1__SetBudgetPausedRequest *)m)->paused) {
    act.action = "budget.resume";
  }
  if (st != LK_OK) {
    outcome = lk_status_name(st);
    outcome += strncmp(outcome, "LK_", 3) == 0 ? 3 : 0;
  }
  if (obj == NULL) {
    lk_log(LK_LOG_INFO, "audit.admin", "%s %s", act.action, outcome);
    return;
  }
  json_object_set_new(obj, "action", json_string(act.action));
  if (m != NULL) {
    audit_put_ids(obj, &act, m);
  }
  if (st == LK_OK && rec != NULL) {
    if (rec->cred_id[0] != '\0') {
      audit_put_id(obj, "credential_id", rec->cred_id);
    }
    if (rec->n_hashes > 0) {
      json_t *h = json_object();
      for (size_t i = 0; h != NULL && i < rec->n_hashes; i++) {
        json_object_set_new(h, rec->hashes[i].field,
                            json_string(rec->hashes[i].hex));
      }
      if (h != NULL) {
        json_object_set_new(obj, "secret_hashes", h);
      }
    }
    if (rec->hash_failed) {
      json_object_set_new(obj, "secret_hashes_incomplete", json_true());
    }
  }
  json_object_set_new(obj, "outcome", json_string(outcome));
  lk_log_fields(LK_LOG_INFO, "audit.admin", obj, "%s %s", act.action, outcome);
  json_decref(obj);
}

/* ---- dispatch ---- */

/* A handler of a record kind (h_get, h_list). */
typedef lk_status (*kind_fn)(lk_admin *a, const record_kind *k,
                             ProtobufCMessage *req, unsigned char **resp,
                             size_t *resp_len, lk_err *err);

typedef struct {
  const char *path;
  const ProtobufCMessageDescriptor *req_desc;
  int writes;                        /* runs under the mutex */
  void (*scrub)(ProtobufCMessage *); /* wipes plaintext before free */
  handler_fn fn;                     /* the method's own handler, or */
  kind_fn kfn;                       /* a shared one for kind */
  const record_kind *kind;
} method;

/* Frees (wiping) the unknown fields of m and of every message it holds.
 * Handlers store parts of the request as they are, and protobuf-c keeps
 * unknown fields and re-encodes them: one numbered 0 (an overlong tag)
 * decodes, but re-encodes to bytes protobuf-c refuses, so a stored record
 * could never be read again. Only fields admin.proto names are stored. */
static void drop_unknown_fields(ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  unsigned i;
  size_t k;

  for (i = 0; i < m->n_unknown_fields; i++) {
    lk_wipealloc_free(m->unknown_fields[i].data);
  }
  lk_wipealloc_free(m->unknown_fields);
  m->unknown_fields = NULL;
  m->n_unknown_fields = 0;
  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    char *member = (char *)m + f->offset;
    if (f->type != PROTOBUF_C_TYPE_MESSAGE ||
        ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0 &&
         *(uint32_t *)((char *)m + f->quantifier_offset) != f->id)) {
      continue;
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(size_t *)((char *)m + f->quantifier_offset);
      ProtobufCMessage **items = *(ProtobufCMessage ***)member;
      for (k = 0; k < n; k++) {
        drop_unknown_fields(items[k]);
      }
    } else if (*(ProtobufCMessage **)member != NULL) {
      drop_unknown_fields(*(ProtobufCMessage **)member);
    }
  }
}

#define PATH(m) "/latchkey.v1.Admin/" m

/* OWN: a method with its own handler; KIND: h_get or h_list for a kind. */
#define OWN(m, desc, writes, scrub, fn) \
  { PATH(m), desc, writes, scrub, fn, NULL, NULL }
#define KIND(m, desc, fn, kind) \
  { PATH(m), desc, 0, NULL, NULL, fn, &kind }

static const method methods[] = {
    OWN("RegisterTool", &latchkey__v1__register_tool_request__descriptor, 1,
        NULL, h_register_tool),
    KIND("GetTool", &latchkey__v1__get_request__descriptor, h_get, kind_tool),
    KIND("ListTools", &latchkey__v1__list_request__descriptor, h_list,
         kind_tool),
    OWN("DeleteTool", &latchkey__v1__delete_request__descriptor, 1, NULL,
        h_delete_tool),
    OWN("RegisterCredentialType", &latchkey__v1__credential_type__descriptor, 1,
        NULL, h_register_type),
    KIND("GetCredentialType", &latchkey__v1__get_request__descriptor, h_get,
         kind_type),
    KIND("ListCredentialTypes", &latchkey__v1__list_request__descriptor, h_list,
         kind_type),
    OWN("DeleteCredentialType", &latchkey__v1__delete_request__descriptor, 1,
        NULL, h_delete_type),
    OWN("CreateCredential",
        &latchkey__v1__create_credential_request__descriptor, 1, scrub_create,
        h_create_credential),
    KIND("GetCredential", &latchkey__v1__get_request__descriptor, h_get,
         kind_cred),
    KIND("ListCredentials", &latchkey__v1__list_request__descriptor, h_list,
         kind_cred),
    OWN("UpdateCredential",
        &latchkey__v1__update_credential_request__descriptor, 1, scrub_update,
        h_update_credential),
    OWN("DeleteCredential", &latchkey__v1__delete_request__descriptor, 1, NULL,
        h_delete_credential),
    OWN("CreateBudget", &latchkey__v1__budget__descriptor, 1, NULL,
        h_create_budget),
    KIND("GetBudget", &latchkey__v1__get_request__descriptor, h_get,
         kind_budget),
    KIND("ListBudgets", &latchkey__v1__list_request__descriptor, h_list,
         kind_budget),
    OWN("SetBudgetPaused", &latchkey__v1__set_budget_paused_request__descriptor,
        1, NULL, h_set_budget_paused),
    OWN("DeleteBudget", &latchkey__v1__delete_request__descriptor, 1, NULL,
        h_delete_budget),
    OWN("Bind", &latchkey__v1__binding__descriptor, 1, NULL, h_bind),
    OWN("Unbind", &latchkey__v1__binding__descriptor, 1, NULL, h_unbind),
    OWN("ListBindings", &latchkey__v1__list_bindings_request__descriptor, 0,
        NULL, h_list_bindings),
    OWN("RotateKey", &latchkey__v1__rotate_key_request__descriptor, 0, NULL,
        h_rotate_key),
    OWN("GetKeyStatus", &latchkey__v1__empty__descriptor, 0, NULL,
        h_get_key_status),
    OWN("AuditHash", &latchkey__v1__audit_hash_request__descriptor, 0,
        scrub_audit_hash, h_audit_hash),
};

#undef OWN
#undef KIND

#define N_METHODS (sizeof(methods) / sizeof(methods[0]))

static const char *const method_paths[N_METHODS] = {
    PATH("RegisterTool"),
    PATH("GetTool"),
    PATH("ListTools"),
    PATH("DeleteTool"),
    PATH("RegisterCredentialType"),
    PATH("GetCredentialType"),
    PATH("ListCredentialTypes"),
    PATH("DeleteCredentialType"),
    PATH("CreateCredential"),
    PATH("GetCredential"),
    PATH("ListCredentials"),
    PATH("UpdateCredential"),
    PATH("DeleteCredential"),
    PATH("CreateBudget"),
    PATH("GetBudget"),
    PATH("ListBudgets"),
    PATH("SetBudgetPaused"),
    PATH("DeleteBudget"),
    PATH("Bind"),
    PATH("Unbind"),
    PATH("ListBindings"),
    PATH("RotateKey"),
    PATH("GetKeyStatus"),
    PATH("AuditHash"),
};

const char *const *lk_admin_methods(size_t *n) {
  *n = N_METHODS;
  return method_paths;
}

/* lk_admin_seal_fn over a node key (the standalone sidecar). */
static lk_status seal_with_node_key(void *ctx, const char *cred_id,
                                    const char *field, const unsigned char *pt,
                                    size_t len, uint32_t *key_id,
                                    unsigned char nonce[LK_SEAL_NONCE_BYTES],
                                    unsigned char **ct, size_t *ct_len,
                                    lk_err *err) {
  const lk_seal_key *key = ctx;
  *key_id = lk_seal_key_id(key);
  return lk_seal(key, cred_id, field, pt, len, nonce, ct, ct_len, err);
}

lk_status lk_admin_new(lk_catalog *cat, const lk_seal_key *key, lk_admin **out,
                       lk_err *err) {
  lk_admin_sealer sealer = {seal_with_node_key, (void *)key, NULL};
  *out = NULL;
  if (key == NULL) {
    return lk_fail(err, LK_INTERNAL, "lk_admin_new needs a key");
  }
  return lk_admin_new_with_sealer(cat, sealer, out, err);
}

lk_status lk_admin_new_with_sealer(lk_catalog *cat, lk_admin_sealer sealer,
                                   lk_admin **out, lk_err *err) {
  lk_admin *a;
  lk_status st;

  *out = NULL;
  if (cat == NULL || sealer.seal == NULL) {
    return lk_fail(err, LK_INTERNAL,
                   "lk_admin_new needs a catalog and a sealer");
  }
  st = lk_secret_init();
  if (st != LK_OK) {
    return lk_fail(err, st, "libsodium did not initialize");
  }
  a = calloc(1, sizeof(*a));
  if (a == NULL) {
    return oom(err);
  }
  if (pthread_mutex_init(&a->mu, NULL) != 0) {
    free(a);
    return lk_fail(err, LK_INTERNAL, "could not create the Admin mutex");
  }
  a->cat = cat;
  a->sealer = sealer;
  *out = a;
  return LK_OK;
}

void lk_admin_set_keys(lk_admin *a, lk_admin_keys keys) {
  a->keys = keys;
}

void lk_admin_set_auditor(lk_admin *a, lk_admin_auditor auditor) {
  a->auditor = auditor;
}

void lk_admin_destroy(lk_admin *a) {
  if (a == NULL) {
    return;
  }
  pthread_mutex_destroy(&a->mu);
  free(a);
}

lk_status lk_admin_handle(lk_admin *a, const char *method_path,
                          const unsigned char *req, size_t req_len,
                          unsigned char **resp, size_t *resp_len, lk_err *err) {
  static const unsigned char no_bytes[1] = {0};
  const method *md = NULL;
  ProtobufCMessage *m = NULL;
  lk_status st;
  size_t i;
  int audited;

  *resp = NULL;
  *resp_len = 0;
  for (i = 0; method_path != NULL && i < N_METHODS; i++) {
    if (strcmp(methods[i].path, method_path) == 0) {
      md = &methods[i];
      break;
    }
  }
  if (md == NULL) {
    return lk_fail(err, LK_NOT_FOUND,
                   "unknown Admin method %.200s; see admin.proto for the "
                   "methods this server serves",
                   method_path != NULL ? method_path : "(none)");
  }
  /* Every change, every key rotation (which writes through the keys hook,
   * outside mu) and every hash asked for leaves one audit line. */
  audited = md->writes || md->fn == h_rotate_key || md->fn == h_audit_hash;
  if (req_len > LK_ADMIN_MAX_REQUEST) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "request of %zu bytes is over the %u byte limit; send a "
                 "smaller definition",
                 req_len, LK_ADMIN_MAX_REQUEST);
    if (audited) {
      audit_line(md->path, NULL, NULL, st);
    }
    return st;
  }
  m = protobuf_c_message_unpack(md->req_desc, lk_wipealloc_protobuf(), req_len,
                                req != NULL ? req : no_bytes);
  if (m == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "request is not a valid %s; send the message admin.proto "
                 "declares for %s",
                 md->req_desc->name, md->path);
    if (audited) {
      audit_line(md->path, NULL, NULL, st);
    }
    return st;
  }
  drop_unknown_fields(m);
  if (md->writes) {
    pthread_mutex_lock(&a->mu);
  }
  /* A write whose credential changed under it is built again on a fresh
   * read (see the file comment). */
  for (i = 1;; i++) {
    if (md->writes) {
      memset(&a->rec, 0, sizeof(a->rec));
      a->changed = 0;
    }
    st = md->fn != NULL ? md->fn(a, m, resp, resp_len, err)
                        : md->kfn(a, md->kind, m, resp, resp_len, err);
    if (st == LK_OK || !md->writes || !a->changed || i == WRITE_TRIES) {
      break;
    }
    free(*resp);
    *resp = NULL;
    *resp_len = 0;
    {
      uint32_t cap = 2u << (i < 6 ? i : 6);
      uint32_t ms = randombytes_uniform(
          cap < WRITE_PAUSE_MAX_MS ? cap : WRITE_PAUSE_MAX_MS);
      struct timespec pause = {0, (long)ms * 1000000L};
      nanosleep(&pause, NULL);
    }
  }
  if (audited) {
    audit_line(md->path, m, md->writes ? &a->rec : NULL, st);
  }
  if (md->writes) {
    pthread_mutex_unlock(&a->mu);
  }
  if (md->scrub != NULL) {
    md->scrub(m);
  }
  protobuf_c_message_free_unpacked(m, lk_wipealloc_protobuf());
  if (st != LK_OK) {
    free(*resp);
    *resp = NULL;
    *resp_len = 0;
  }
  return st;
}
