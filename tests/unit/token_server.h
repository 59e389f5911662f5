/*
 * token_server.h - a real OAuth 2.0 token endpoint on loopback for C unit
 * tests (libmicrohttpd), the C counterpart of tests/e2e/oauth_server.py.
 *
 * Why: lib/oauth_token and controlplane/oauth_refresh are only worth
 * testing against a server that parses what they really send and counts
 * what really arrived: how many token requests, with which refresh token,
 * with which client authentication. Nothing here leaves 127.0.0.1.
 *
 * POST /token (any other path: 404) answers like a provider:
 *   - client authentication: HTTP Basic (both parts form-urldecoded) or
 *     client_id / client_secret in the body; wrong -> 401 invalid_client
 *     (a client with no secret configured needs only its client_id);
 *   - grant_type=refresh_token: the refresh token must be live; a retired
 *     one counts as reuse (ts_stats.reuse) and is refused invalid_grant;
 *     with rotation on, the answer carries a new refresh token and retires
 *     the presented one;
 *   - grant_type=client_credentials: a new access token;
 *   - modes: TS_OK, TS_FAIL (503 temporarily_unavailable), TS_INVALID_GRANT
 *     (400), TS_CANNED (the status and body set with ts_set_canned); a
 *     delay (ts_set_delay) sleeps before any answer.
 * Access tokens are "at-<n>-<hex>", refresh tokens "rt-<n>-<hex>" where n
 * counts issued access tokens; expires_in is ts_set_expires_in's (default
 * 3600; negative: the member is left out).
 *
 * Every request, whatever its answer, is recorded (ts_request) with its
 * form fields decoded, its Authorization and Content-Type headers.
 */
#ifndef LK_TESTS_TOKEN_SERVER_H
#define LK_TESTS_TOKEN_SERVER_H

#include <stddef.h>

#define TS_CLIENT_ID "latchkey-test client:1"
#define TS_CLIENT_SECRET "cs-s3cr3t/+&=%"
#define TS_MAX_REQUESTS 256
#define TS_MAX_VALUE 256

typedef enum { TS_OK, TS_FAIL, TS_INVALID_GRANT, TS_CANNED } ts_mode;

typedef struct token_server token_server;

/* One recorded request; strings are "" when absent. */
typedef struct {
  char path[64];
  char grant_type[64];
  char refresh_token[TS_MAX_VALUE];
  char scope[TS_MAX_VALUE];
  char body_client_id[TS_MAX_VALUE];
  char body_client_secret[TS_MAX_VALUE];
  char authorization[512]; /* the raw header */
  char content_type[128];
  char accept[128];
  char raw_body[1024];
  unsigned status; /* what was answered */
} ts_request;

typedef struct {
  int requests;
  int reuse;
  int issued; /* access tokens issued, seeds included */
} ts_stats;

/* Starts the server on 127.0.0.1 (a free port); NULL on failure. */
token_server *ts_start(void);

/* Stops it (waits for its threads) and frees it; NULL is a no-op. */
void ts_stop(token_server *ts);

/* "http://127.0.0.1:<port>/token" */
const char *ts_url(const token_server *ts);

/* The port it listens on. */
int ts_port(const token_server *ts);

void ts_set_mode(token_server *ts, ts_mode mode);
void ts_set_delay_ms(token_server *ts, int ms);
void ts_set_expires_in(token_server *ts, long long seconds);
void ts_set_rotate(token_server *ts, int on);
/* The client the server accepts; secret NULL: a public client. */
void ts_set_client(token_server *ts, const char *id, const char *secret);
/* TS_CANNED's answer (copied). */
void ts_set_canned(token_server *ts, unsigned status, const char *body,
                   size_t len);

/* Issues a first token pair, as an owner's consent would: the access
 * token into access (cap bytes), a live refresh token into refresh. */
void ts_seed(token_server *ts, char *access, char *refresh, size_t cap);

/* Copies the counters. */
ts_stats ts_get_stats(token_server *ts);

/* Copies request i (0-based, in arrival order); 0 when there is none. */
int ts_request_at(token_server *ts, int i, ts_request *out);

/* The newest access token issued, into out (cap bytes). */
void ts_current_access(token_server *ts, char *out, size_t cap);

#endif
