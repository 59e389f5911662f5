/*
 * oauth_token.h - one exchange with an OAuth 2.0 token endpoint (RFC 6749):
 * a refresh (§6, grant_type=refresh_token) or a client-credentials grant
 * (§4.4), and the parsing of the endpoint's answer.
 *
 * Why: the control plane refreshes oauth2 credentials
 * (controlplane/oauth_refresh); this module is the one place that speaks
 * to identity providers, so what is sent, what is accepted back and how a
 * failure is classified are decided once and can be fuzzed.
 *
 * The request: an application/x-www-form-urlencoded POST with
 * "Accept: application/json". A confidential client (client_secret set)
 * authenticates with HTTP Basic over its form-urlencoded client_id and
 * client_secret (§2.3.1) and nothing of it goes in the body; a public
 * client sends client_id in the body. scope is sent with
 * client_credentials only. TLS peer and host verification on, no
 * redirects, no proxy, https only unless the caller allows http (loopback
 * tests), never to a link-local, metadata, multicast or unspecified
 * address; the whole exchange ends by the caller's deadline; the answer is
 * read into guarded memory and capped at LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES.
 *
 * Failures, by what the caller should do:
 *   LK_FAILED_PRECONDITION  the owner must act ("reauthorize"): the
 *       provider refused the grant or the client (HTTP 400/401, or a 2xx
 *       answer, with error invalid_grant, invalid_client,
 *       unauthorized_client or unsupported_grant_type), or the credential
 *       cannot be refreshed as it stands (no refresh token, no client id,
 *       a token_url that is not https, an address never allowed);
 *   LK_UNAVAILABLE          retry later: 5xx, 429, any other refusal, an
 *       unreachable endpoint, a timeout, an answer that does not parse;
 *   LK_RESOURCE_EXHAUSTED   the answer is over the cap (also retryable).
 * Messages name the provider's "error" code and a truncated,
 * printable-only error_description, never a token: a message that would
 * quote a token sent or received has its description withheld.
 *
 * Secrets: the refresh token and client secret come in as lk_secrets; the
 * request body and Basic credentials are built in lk_secret memory; curl's
 * and jansson's own copies live in lib/wipealloc memory
 * (lk_oauth_token_global_init), so every free wipes them; the tokens
 * received are handed out as lk_secrets.
 */
#ifndef LK_OAUTH_TOKEN_H
#define LK_OAUTH_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "lib/secret.h"
#include "lib/status.h"

/* Largest token endpoint answer read (over it: LK_RESOURCE_EXHAUSTED). */
#define LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES (64u * 1024u)
/* Longest access or refresh token accepted. */
#define LK_OAUTH_TOKEN_MAX_TOKEN_BYTES 16384u
/* Longest scope accepted back (and sent). */
#define LK_OAUTH_TOKEN_MAX_SCOPE_BYTES 1024u
/* Longest token_url accepted. */
#define LK_OAUTH_TOKEN_MAX_URL_BYTES 2048u
/* Largest expires_in accepted (2^31 - 1 seconds, some 68 years). */
#define LK_OAUTH_TOKEN_MAX_EXPIRES_IN 2147483647LL
/* At most this many bytes of the provider's error code and
 * error_description are quoted in a message. */
#define LK_OAUTH_TOKEN_MAX_ERROR_CODE 64u
#define LK_OAUTH_TOKEN_MAX_ERROR_DESCRIPTION 120u

/* What to ask the token endpoint for. Borrowed for the call. */
typedef struct {
  const char *token_url;
  /* LK_OAUTH_GRANT_AUTHORIZATION_CODE (lib/oauth.h: refresh with
   * refresh_token) or LK_OAUTH_GRANT_CLIENT_CREDENTIALS */
  const char *grant_type;
  const lk_secret *refresh_token; /* authorization_code only */
  const char *client_id;
  const lk_secret *client_secret; /* NULL or empty: a public client */
  const char *scope;              /* NULL or "": none (client_credentials) */
  int allow_insecure;             /* 1: http:// token URLs too */
  int64_t deadline_ms;            /* CLOCK_MONOTONIC ms (lib/clock.h) */
  /* Polled during the transfer (may be NULL): nonzero ends it with
   * LK_UNAVAILABLE (the caller is stopping). */
  int (*cancelled)(void *ctx);
  void *cancel_ctx;
} lk_oauth_token_request;

/* A successful answer. */
typedef struct {
  lk_secret *access_token;  /* never NULL on success */
  lk_secret *refresh_token; /* NULL: the provider did not rotate it */
  int64_t expires_in;       /* seconds; -1 when the answer had none */
  char *scope;              /* malloc'd; NULL when the answer had none */
} lk_oauth_token_result;

/* Installs lib/wipealloc as libcurl's and jansson's allocators, so their
 * copies of tokens are wiped when freed. Call once, at process start,
 * before any thread and before any other use of curl or jansson; every
 * lk_oauth_token_exchange needs it. LK_INTERNAL when curl cannot
 * initialise. */
lk_status lk_oauth_token_global_init(lk_err *err) LK_MUST_CHECK;

/* Performs one exchange (see above) and fills *out (zeroed first; free it
 * with lk_oauth_token_result_clear, also after a failure). *http_status
 * (may be NULL) receives the HTTP status, 0 when there was none.
 * LK_INTERNAL when lk_oauth_token_global_init was not called. */
lk_status lk_oauth_token_exchange(const lk_oauth_token_request *req,
                                  lk_oauth_token_result *out, long *http_status,
                                  lk_err *err) LK_MUST_CHECK;

/* Parses the token endpoint's answer: len bytes at body (not
 * NUL-terminated) that arrived with HTTP status. 2xx with a JSON object
 * holding access_token (a non-empty string of printable ASCII, at most
 * LK_OAUTH_TOKEN_MAX_TOKEN_BYTES), token_type "bearer" (any case) when
 * present, expires_in a non-negative integer when present, refresh_token
 * like access_token when present, scope a printable string when present:
 * LK_OK with *out filled. Anything else fails as classified above, with
 * *out left empty. The body is copied only into jansson (wiping) memory. */
lk_status lk_oauth_token_parse_response(const unsigned char *body, size_t len,
                                        long status, lk_oauth_token_result *out,
                                        lk_err *err) LK_MUST_CHECK;

/* Wipes and frees what r holds and zeroes it; NULL is a no-op. */
void lk_oauth_token_result_clear(lk_oauth_token_result *r);

#endif
