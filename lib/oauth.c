/*
 * oauth.c - the standard fields of oauth2 credentials and their expiry
 * (see oauth.h).
 *
 * Everything here reads plain fields only: nothing in this file ever sees
 * a token.
 */
#include "lib/oauth.h"

#include <string.h>

/* Largest accepted expires_at: 2^40 s, far past any real token. */
#define LK_OAUTH_MAX_EXPIRES_S ((int64_t)1 << 40)

static const lk_oauth_field oauth_fields[] = {
    {LK_OAUTH_ACCESS_TOKEN, 1,
     "OAuth 2.0 access token (the control plane replaces it on refresh)"},
    {LK_OAUTH_REFRESH_TOKEN, 1,
     "OAuth 2.0 refresh token (grant_type authorization_code)"},
    {LK_OAUTH_EXPIRES_AT, 0,
     "access token expiry, unix seconds; empty or 0 refreshes at once"},
    {LK_OAUTH_TOKEN_URL, 0, "the identity provider's token endpoint"},
    {LK_OAUTH_CLIENT_ID, 0, "OAuth 2.0 client id"},
    {LK_OAUTH_CLIENT_SECRET, 1, "OAuth 2.0 client secret (optional)"},
    {LK_OAUTH_GRANT_TYPE, 0, "authorization_code or client_credentials"},
    {LK_OAUTH_SCOPE, 0, "scopes to request (optional)"},
};

const lk_oauth_field *lk_oauth_fields(size_t *n) {
  *n = sizeof(oauth_fields) / sizeof(oauth_fields[0]);
  return oauth_fields;
}

int lk_oauth_type_is_oauth2(const Latchkey__V1__CredentialType *type) {
  return type != NULL && type->kind != NULL &&
         strcmp(type->kind, LK_OAUTH_KIND) == 0;
}

int lk_oauth_credential_is_oauth2(const Latchkey__V1__Credential *cred) {
  return cred != NULL && cred->oauth != NULL;
}

const char *lk_oauth_plain_field(const Latchkey__V1__Credential *cred,
                                 const char *name) {
  if (cred == NULL)
    return NULL;
  for (size_t i = 0; i < cred->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = cred->fields[i];
    if (f == NULL || f->name == NULL || strcmp(f->name, name) != 0)
      continue;
    if (f->secret)
      return NULL;
    return f->value != NULL ? f->value : "";
  }
  return NULL;
}

lk_status lk_oauth_parse_expires_at(const char *s, int64_t *unix_ms,
                                    lk_err *err) {
  int64_t secs = 0;
  size_t len = s != NULL ? strlen(s) : 0;
  if (len > 13)
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "field %s: expected unix seconds (at most 13 digits)",
                   LK_OAUTH_EXPIRES_AT);
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "field %s: expected unix seconds, digits only",
                     LK_OAUTH_EXPIRES_AT);
    secs = secs * 10 + (s[i] - '0');
  }
  if (secs > LK_OAUTH_MAX_EXPIRES_S)
    return lk_fail(err, LK_INVALID_ARGUMENT, "field %s: too far in the future",
                   LK_OAUTH_EXPIRES_AT);
  *unix_ms = secs * 1000;
  return LK_OK;
}

int64_t lk_oauth_expires_at_ms(const Latchkey__V1__Credential *cred) {
  lk_err err;
  int64_t ms = 0;
  const char *v = lk_oauth_plain_field(cred, LK_OAUTH_EXPIRES_AT);
  if (v == NULL)
    return 0;
  if (lk_oauth_parse_expires_at(v, &ms, &err) != LK_OK)
    return 0;
  return ms;
}

int lk_oauth_expired(const Latchkey__V1__Credential *cred, int64_t now_ms) {
  int64_t at = lk_oauth_expires_at_ms(cred);
  return at == 0 || at <= now_ms;
}
