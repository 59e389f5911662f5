/*
 * oauth.h - the vocabulary of oauth2 credentials: the standard fields of a
 * credential type of kind "oauth2", and how the access token's expiry is
 * read from a credential.
 *
 * Why: three parts of Latchkey look at the same fields. The Admin service
 * validates them (lib/schema, lib/admin), the control plane refreshes them
 * (controlplane/oauth_refresh), and the sidecar decides from them whether a
 * token may still be injected (sidecar/toolcalls). One table here keeps
 * their names, secrecy and meaning in one place.
 *
 * The fields of an oauth2 credential (every oauth2 type has all of them;
 * lk_oauth_fields lists them in this order):
 *
 *   access_token   secret  the bearer token injected into vendor requests
 *   refresh_token  secret  grant_type authorization_code only; the
 *                          provider may rotate it on every refresh
 *   expires_at     plain   the access token's expiry, unix seconds
 *                          (decimal); "" or "0" = unknown: refresh at once
 *   token_url      plain   the provider's token endpoint (https)
 *   client_id      plain
 *   client_secret  secret  optional (public clients have none)
 *   grant_type     plain   "authorization_code" (refresh with the refresh
 *                          token) or "client_credentials"
 *   scope          plain   optional, sent with client_credentials
 *
 * Invariant: an access token whose expires_at has passed is never
 * injected (lk_oauth_expired); the sidecar answers missing_credential with
 * a re-authorise hint instead.
 */
#ifndef LK_OAUTH_H
#define LK_OAUTH_H

#include <stddef.h>
#include <stdint.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/status.h"

#define LK_OAUTH_KIND "oauth2"

#define LK_OAUTH_ACCESS_TOKEN "access_token"
#define LK_OAUTH_REFRESH_TOKEN "refresh_token"
#define LK_OAUTH_EXPIRES_AT "expires_at"
#define LK_OAUTH_TOKEN_URL "token_url"
#define LK_OAUTH_CLIENT_ID "client_id"
#define LK_OAUTH_CLIENT_SECRET "client_secret"
#define LK_OAUTH_GRANT_TYPE "grant_type"
#define LK_OAUTH_SCOPE "scope"

#define LK_OAUTH_GRANT_AUTHORIZATION_CODE "authorization_code"
#define LK_OAUTH_GRANT_CLIENT_CREDENTIALS "client_credentials"

/* One standard field of an oauth2 credential type. */
typedef struct {
  const char *name;
  int secret;
  const char *description;
} lk_oauth_field;

/* Returns the static table of the standard fields and sets *n to its
 * length. */
const lk_oauth_field *lk_oauth_fields(size_t *n);

/* Returns 1 when type is of kind "oauth2", else 0 (NULL: 0). */
int lk_oauth_type_is_oauth2(const Latchkey__V1__CredentialType *type);

/* Returns 1 when cred carries OAuth refresh state (it was created under an
 * oauth2 type), else 0. */
int lk_oauth_credential_is_oauth2(const Latchkey__V1__Credential *cred);

/* Returns the plain value of field name of cred, or NULL when the field is
 * absent or secret. */
const char *lk_oauth_plain_field(const Latchkey__V1__Credential *cred,
                                 const char *name);

/* Parses an expires_at value: decimal unix seconds, 0 to 2^40; "" means
 * 0 (unknown). Sets *unix_ms. LK_INVALID_ARGUMENT naming the field
 * otherwise (the value is plain, but is not echoed either). */
lk_status lk_oauth_parse_expires_at(const char *s, int64_t *unix_ms,
                                    lk_err *err) LK_MUST_CHECK;

/* Returns the access token's expiry of cred in unix ms, 0 when unknown or
 * unparsable (treated as expired). */
int64_t lk_oauth_expires_at_ms(const Latchkey__V1__Credential *cred);

/* Returns 1 when the access token of oauth2 credential cred must not be
 * injected at now_ms: its expiry is unknown or has passed. */
int lk_oauth_expired(const Latchkey__V1__Credential *cred, int64_t now_ms);

#endif
