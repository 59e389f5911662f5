/*
 * oauth_text.h - how latchkeyctl words the refresh state of an oauth2
 * credential (lib/oauth.h): the access token's expiry, the last refresh
 * result, a one-cell summary for listings, and the readable members added
 * to the "oauth" object of --json output.
 *
 * Why a module: the wording is what an owner reads to learn that a
 * connection broke ("failed 3 times in a row: ...", "re-authorisation
 * needed"), so it is tested on its own, with every state the control
 * plane's refresher can leave, not only the ones an e2e run can reach.
 *
 * Invariants: nothing here sees a secret (OAuthState holds none and only
 * the plain expires_at field is read); text goes into caller buffers
 * with their size and is cut, never overrun; times are UTC RFC 3339
 * ("2026-11-26T03:25:00Z") and spans use two units at most ("4m12s").
 * The refresh reason comes from the server: callers that print it to a
 * terminal still make it safe (latchkeyctl's cells).
 */
#ifndef LK_CLI_OAUTH_TEXT_H
#define LK_CLI_OAUTH_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "latchkey/v1/types.pb-c.h"

/* Room for any text below, NUL included (longer reasons are cut). */
#define LK_OAUTH_TEXT_BYTES 1024

/* What credential show prints, and --json carries as "hint", when the
 * provider refused the grant. */
#define LK_OAUTH_TEXT_REAUTHORIZE \
  "re-authorisation needed: the provider refused the refresh token"

/* Writes the length of ms (its sign ignored) in its two largest units, a
 * zero second left out: "4m12s", "2m", "1h5m", "3d2h", "0s". */
void lk_oauth_text_span(int64_t ms, char *out, size_t n);

/* Writes the access token's expiry of cred at now_ms:
 * "2026-11-26T03:25:00Z (in 4m12s)", "... (expired 2m ago)", or that it
 * is unknown. */
void lk_oauth_text_expiry(const Latchkey__V1__Credential *cred, int64_t now_ms,
                          char *out, size_t n);

/* Writes the last refresh result of state: "ok at T", "failed N times in
 * a row: REASON; next attempt T", another result as given ("re-authorised
 * by the owner"), or "none yet". */
void lk_oauth_text_refresh(const Latchkey__V1__OAuthState *state, char *out,
                           size_t n);

/* Writes a listing's one-cell summary of oauth2 credential cred at now_ms
 * ("expires in 4m12s, refresh ok"); "" for a credential without refresh
 * state. */
void lk_oauth_text_summary(const Latchkey__V1__Credential *cred, int64_t now_ms,
                           char *out, size_t n);

/* Adds to obj["oauth"] (a credential's --json rendering) the readable
 * members access_token_expires_at (RFC 3339 or null),
 * access_token_expires_in_s (negative once expired, or null),
 * access_token_expired, last_refresh and, when the owner must
 * re-authorise, hint. Returns 0, or -1 when out of memory; a credential
 * without refresh state is left as it is. */
int lk_oauth_text_json(json_t *obj, const Latchkey__V1__Credential *cred,
                       int64_t now_ms);

#endif
