/*
 * oauth_token.c - one token-endpoint exchange with libcurl, and the parser
 * of its answer (see oauth_token.h).
 *
 * One easy handle per exchange, no connection reuse: refreshes are rare
 * (minutes apart per credential) and a fresh handle keeps no state of one
 * provider around for the next. The answer goes into an lk_secret_buf
 * whose cap is the response cap; jansson parses it from there (its copies
 * are wiped on free once lk_oauth_token_global_init ran), and the tokens
 * are copied straight into lk_secrets.
 *
 * Nothing the provider sends is quoted in a message except its error code
 * and error_description (printable ASCII only, truncated) and token_type;
 * jansson's error text, which quotes the input, is never used. A message
 * that would still contain a token sent or received is rebuilt without
 * the provider's words.
 */
#include "lib/oauth_token.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "lib/clock.h"
#include "lib/oauth.h"
#include "lib/wipealloc.h"

/* Longest client_id sent. */
#define MAX_CLIENT_ID_BYTES 1024u
/* The form body holds at most these values, each at worst tripled by
 * percent-encoding, plus the names. */
#define MAX_BODY_BYTES                                          \
  (3u * (LK_OAUTH_TOKEN_MAX_TOKEN_BYTES + MAX_CLIENT_ID_BYTES + \
         LK_OAUTH_TOKEN_MAX_SCOPE_BYTES) +                      \
   256u)
/* Basic credentials: both parts percent-encoded, and a colon. */
#define MAX_USERPWD_BYTES \
  (3u * (MAX_CLIENT_ID_BYTES + LK_OAUTH_TOKEN_MAX_TOKEN_BYTES) + 2u)

static atomic_int g_initialised;

lk_status lk_oauth_token_global_init(lk_err *err) {
  json_set_alloc_funcs(lk_wipealloc_malloc, lk_wipealloc_free);
  CURLcode rc = curl_global_init_mem(CURL_GLOBAL_DEFAULT, lk_wipealloc_malloc,
                                     lk_wipealloc_free, lk_wipealloc_realloc,
                                     lk_wipealloc_strdup, lk_wipealloc_calloc);
  if (rc != CURLE_OK) {
    return lk_fail(err, LK_INTERNAL, "libcurl initialisation failed: %s",
                   curl_easy_strerror(rc));
  }
  atomic_store(&g_initialised, 1);
  return LK_OK;
}

void lk_oauth_token_result_clear(lk_oauth_token_result *r) {
  if (r == NULL) {
    return;
  }
  lk_secret_free(r->access_token);
  lk_secret_free(r->refresh_token);
  free(r->scope);
  memset(r, 0, sizeof(*r));
  r->expires_in = -1;
}

/* ---- the parser ---------------------------------------------------------
 */

static int is_2xx(long status) {
  return status >= 200 && status < 300;
}

/* Copies s into out (cap bytes) keeping printable ASCII and turning every
 * other byte into '?', at most max bytes of s, then "..." when cut. */
static void printable(const char *s, size_t max, char *out, size_t cap) {
  size_t n = 0;
  size_t i = 0;
  for (; s[i] != '\0' && i < max && n + 4 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    out[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
  }
  if (s[i] != '\0' && n + 4 <= cap) {
    memcpy(out + n, "...", 3);
    n += 3;
  }
  out[n] = '\0';
}

/* The "error" codes that mean the owner must re-authorise. */
static int reauthorize_code(const char *code) {
  static const char *const codes[] = {"invalid_grant", "invalid_client",
                                      "unauthorized_client",
                                      "unsupported_grant_type"};
  for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    if (strcmp(code, codes[i]) == 0) {
      return 1;
    }
  }
  return 0;
}

/* Fails with the classification of a refusal: status, and root (the
 * answer as JSON, or NULL) for its "error" and "error_description";
 * quote 0 classifies alike but quotes neither. */
static lk_status refusal(long status, const json_t *root, int quote,
                         lk_err *err) {
  char code[LK_OAUTH_TOKEN_MAX_ERROR_CODE + 4];
  char desc[LK_OAUTH_TOKEN_MAX_ERROR_DESCRIPTION + 4];
  char detail[sizeof(code) + sizeof(desc) + 16];
  const json_t *e =
      json_is_object(root) ? json_object_get(root, "error") : NULL;
  const json_t *d =
      json_is_object(root) ? json_object_get(root, "error_description") : NULL;
  code[0] = '\0';
  desc[0] = '\0';
  detail[0] = '\0';
  if (json_is_string(e)) {
    printable(json_string_value(e), LK_OAUTH_TOKEN_MAX_ERROR_CODE, code,
              sizeof(code));
  }
  if (json_is_string(d)) {
    printable(json_string_value(d), LK_OAUTH_TOKEN_MAX_ERROR_DESCRIPTION, desc,
              sizeof(desc));
  }
  if (!quote) {
    snprintf(detail, sizeof(detail),
             ", its error text withheld: it quoted a credential");
  } else if (code[0] != '\0') {
    snprintf(detail, sizeof(detail), ", error %s%s%s", code,
             desc[0] != '\0' ? ": " : "", desc);
  }
  if (json_is_string(e) && reauthorize_code(json_string_value(e)) &&
      (status == 400 || status == 401 || is_2xx(status))) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "the identity provider refused the grant (HTTP %ld%s): "
                   "the owner must re-authorise this credential",
                   status, detail);
  }
  return lk_fail(
      err, LK_UNAVAILABLE, "the token endpoint answered HTTP %ld%s%s", status,
      detail,
      status >= 300 && status < 400 ? " (redirects are not followed)" : "");
}

/* Reads token member name of root into *out (NULL when absent and not
 * required). */
static lk_status token_member(const json_t *root, const char *name,
                              int required, long status, lk_secret **out,
                              lk_err *err) {
  const json_t *v = json_object_get(root, name);
  *out = NULL;
  if (v == NULL) {
    if (!required) {
      return LK_OK;
    }
    return lk_fail(err, LK_UNAVAILABLE,
                   "the token endpoint's answer (HTTP %ld) has no %s", status,
                   name);
  }
  if (!json_is_string(v)) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "the token endpoint's answer (HTTP %ld): %s is not a string",
                   status, name);
  }
  const char *s = json_string_value(v);
  size_t len = json_string_length(v);
  if (len == 0) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "the token endpoint's answer (HTTP %ld): %s is empty",
                   status, name);
  }
  if (len > LK_OAUTH_TOKEN_MAX_TOKEN_BYTES) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "the token endpoint's answer (HTTP %ld): %s is longer than "
                   "%u bytes",
                   status, name, LK_OAUTH_TOKEN_MAX_TOKEN_BYTES);
  }
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c >= 0x7f) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "the token endpoint's answer (HTTP %ld): %s holds "
                     "characters other than printable ASCII",
                     status, name);
    }
  }
  *out = lk_secret_from(s, len);
  if (*out == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of guarded memory for the new %s", name);
  }
  return LK_OK;
}

/* The members of a successful answer beside the tokens. */
static lk_status other_members(const json_t *root, long status,
                               lk_oauth_token_result *out, lk_err *err) {
  const json_t *tt = json_object_get(root, "token_type");
  if (tt != NULL) {
    if (!json_is_string(tt)) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "the token endpoint's answer (HTTP %ld): token_type is "
                     "not a string",
                     status);
    }
    if (strcasecmp(json_string_value(tt), "bearer") != 0 ||
        json_string_length(tt) != 6) {
      char shown[40];
      printable(json_string_value(tt), 32, shown, sizeof(shown));
      return lk_fail(err, LK_UNAVAILABLE,
                     "the token endpoint's answer (HTTP %ld): token_type "
                     "\"%s\" is not bearer, the only kind Latchkey injects",
                     status, shown);
    }
  }
  const json_t *ei = json_object_get(root, "expires_in");
  if (ei != NULL) {
    if (!json_is_integer(ei) || json_integer_value(ei) < 0) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "the token endpoint's answer (HTTP %ld): expires_in is "
                     "not a non-negative integer",
                     status);
    }
    if (json_integer_value(ei) > LK_OAUTH_TOKEN_MAX_EXPIRES_IN) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "the token endpoint's answer (HTTP %ld): expires_in is "
                     "larger than %lld seconds",
                     status, (long long)LK_OAUTH_TOKEN_MAX_EXPIRES_IN);
    }
    out->expires_in = (int64_t)json_integer_value(ei);
  }
  const json_t *sc = json_object_get(root, "scope");
  if (sc != NULL) {
    const char *s = json_is_string(sc) ? json_string_value(sc) : NULL;
    size_t len = s != NULL ? json_string_length(sc) : 0;
    if (s == NULL || len > LK_OAUTH_TOKEN_MAX_SCOPE_BYTES || strlen(s) != len) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "the token endpoint's answer (HTTP %ld): scope is not a "
                     "string of at most %u bytes",
                     status, LK_OAUTH_TOKEN_MAX_SCOPE_BYTES);
    }
    for (size_t i = 0; i < len; i++) {
      unsigned char c = (unsigned char)s[i];
      if (c < 0x20 || c >= 0x7f) {
        return lk_fail(err, LK_UNAVAILABLE,
                       "the token endpoint's answer (HTTP %ld): scope holds "
                       "characters other than printable ASCII",
                       status);
      }
    }
    out->scope = strdup(s);
    if (out->scope == NULL) {
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  return LK_OK;
}

/* Returns 1 when msg quotes any part of s at least LK_OAUTH_QUOTE_WINDOW
 * bytes long (all of s when s is shorter): the provider's error text is
 * cut to a few dozen bytes, so a long token echoed in it shows only in
 * part, and a part is a leak too. Values shorter than 8 bytes are not
 * looked for: they occur in ordinary words, and no real token or client
 * secret is that short. */
#define LK_OAUTH_QUOTE_WINDOW 12
static int quotes(const char *msg, const lk_secret *s) {
  size_t slen = s != NULL ? lk_secret_len(s) : 0;
  if (slen < 8) {
    return 0;
  }
  size_t w = slen < LK_OAUTH_QUOTE_WINDOW ? slen : LK_OAUTH_QUOTE_WINDOW;
  size_t mlen = strlen(msg);
  for (size_t i = 0; i + w <= mlen; i++) {
    if (memmem(lk_secret_data(s), slen, msg + i, w) != NULL) {
      return 1;
    }
  }
  return 0;
}

/* lk_oauth_token_parse_response, with quote 0 leaving the provider's
 * error_description out of a refusal's message. */
static lk_status parse(const unsigned char *body, size_t len, long status,
                       int quote, lk_oauth_token_result *out, lk_err *err) {
  lk_status st = LK_OK;
  json_t *root = NULL;
  json_error_t jerr;
  memset(out, 0, sizeof(*out));
  out->expires_in = -1;
  if (len > LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "the token endpoint's answer (HTTP %ld) is larger than %u "
                   "bytes",
                   status, LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES);
  }
  if (len > 0) {
    root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
  }
  if (!is_2xx(status)) {
    st = refusal(status, root, quote, err);
    goto done;
  }
  if (root == NULL) {
    if (len == 0) {
      st = lk_fail(err, LK_UNAVAILABLE,
                   "the token endpoint's answer (HTTP %ld) is empty", status);
    } else {
      st = lk_fail(err, LK_UNAVAILABLE,
                   "the token endpoint's answer (HTTP %ld) is not JSON (line "
                   "%d, column %d)",
                   status, jerr.line, jerr.column);
    }
    goto done;
  }
  if (!json_is_object(root)) {
    st = lk_fail(err, LK_UNAVAILABLE,
                 "the token endpoint's answer (HTTP %ld) is not a JSON object",
                 status);
    goto done;
  }
  if (json_object_get(root, "error") != NULL) {
    /* Some providers refuse with 200 and an error member. */
    st = refusal(status, root, quote, err);
    goto done;
  }
  if ((st = token_member(root, LK_OAUTH_ACCESS_TOKEN, 1, status,
                         &out->access_token, err)) != LK_OK ||
      (st = token_member(root, LK_OAUTH_REFRESH_TOKEN, 0, status,
                         &out->refresh_token, err)) != LK_OK ||
      (st = other_members(root, status, out, err)) != LK_OK) {
    goto done;
  }
done:
  if (st != LK_OK && err != NULL &&
      (quotes(err->msg, out->access_token) ||
       quotes(err->msg, out->refresh_token))) {
    st = lk_fail(err, st,
                 "the token endpoint's answer (HTTP %ld) is unusable (details "
                 "withheld: they quoted a token)",
                 status);
  }
  if (st != LK_OK) {
    lk_oauth_token_result_clear(out);
  }
  json_decref(root);
  return st;
}

lk_status lk_oauth_token_parse_response(const unsigned char *body, size_t len,
                                        long status, lk_oauth_token_result *out,
                                        lk_err *err) {
  return parse(body, len, status, 1, out, err);
}

/* ---- the request --------------------------------------------------------
 */

/* Returns 1 for the bytes RFC 3986 leaves unreserved. */
static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Appends the n bytes at p form-urlencoded (every byte but the unreserved
 * ones as %XX, which every form decoder reads). */
static lk_status append_encoded(lk_secret_buf *b, const void *p, size_t n,
                                lk_err *err) {
  static const char hex[] = "0123456789ABCDEF";
  const unsigned char *s = p;
  unsigned char chunk[96];
  size_t used = 0;
  lk_status st = LK_OK;
  for (size_t i = 0; i < n && st == LK_OK; i++) {
    if (unreserved(s[i])) {
      chunk[used++] = s[i];
    } else {
      chunk[used++] = '%';
      chunk[used++] = (unsigned char)hex[s[i] >> 4];
      chunk[used++] = (unsigned char)hex[s[i] & 15];
    }
    if (used + 3 > sizeof(chunk)) {
      st = lk_secret_buf_append(b, chunk, used, err);
      used = 0;
    }
  }
  if (st == LK_OK && used > 0) {
    st = lk_secret_buf_append(b, chunk, used, err);
  }
  lk_wipe(chunk, sizeof(chunk));
  return st;
}

/* Returns 1 when s is non-empty printable ASCII of at most max bytes. */
static int printable_value(const char *s, size_t max) {
  size_t n = s != NULL ? strlen(s) : 0;
  if (n == 0 || n > max) {
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f) {
      return 0;
    }
  }
  return 1;
}

/* Checks what the request names before anything is sent. */
/* Returns 1 when the authority at h (up to '/', '?', '#' or the end) is a
 * loopback host with an optional port: 127.x.y.z, localhost or [::1]. Plain
 * http carries the refresh token and client secret in clear, so even with
 * --allow-insecure-token-urls it may only stay on this host. */
static int loopback_authority(const char *h) {
  size_t n = strcspn(h, "/?#");
  size_t host_len;
  if (memchr(h, '@', n) != NULL) {
    return 0; /* userinfo: the host is what follows it */
  }
  if (n >= 5 && strncmp(h, "[::1]", 5) == 0) {
    host_len = 5;
  } else {
    const char *colon = memchr(h, ':', n);
    host_len = colon != NULL ? (size_t)(colon - h) : n;
    if (host_len == 9 && strncasecmp(h, "localhost", 9) == 0) {
      /* loopback by name: resolved, then checked again on connect */
    } else {
      int dots = 0;
      if (host_len < 7 || strncmp(h, "127.", 4) != 0) {
        return 0;
      }
      for (size_t i = 0; i < host_len; i++) {
        if (h[i] == '.') {
          dots++;
        } else if (h[i] < '0' || h[i] > '9') {
          return 0;
        }
      }
      if (dots != 3) {
        return 0;
      }
    }
  }
  if (host_len == n) {
    return 1;
  }
  if (h[host_len] != ':' || host_len + 1 == n) {
    return 0;
  }
  for (size_t i = host_len + 1; i < n; i++) {
    if (h[i] < '0' || h[i] > '9') {
      return 0;
    }
  }
  return 1;
}

static lk_status check_request(const lk_oauth_token_request *req, int *refresh,
                               lk_err *err) {
  const char *url = req->token_url != NULL ? req->token_url : "";
  size_t n = strlen(url);
  if (n == 0) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "the credential has no %s: the owner must set it",
                   LK_OAUTH_TOKEN_URL);
  }
  if (n > LK_OAUTH_TOKEN_MAX_URL_BYTES) {
    return lk_fail(err, LK_FAILED_PRECONDITION, "%s is longer than %u bytes",
                   LK_OAUTH_TOKEN_URL, LK_OAUTH_TOKEN_MAX_URL_BYTES);
  }
  for (size_t i = 0; i < n; i++) {
    if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f) {
      return lk_fail(err, LK_FAILED_PRECONDITION,
                     "%s holds a space, control or non-ASCII character",
                     LK_OAUTH_TOKEN_URL);
    }
  }
  size_t host_at = 0;
  if (strncasecmp(url, "https://", 8) == 0) {
    host_at = 8;
  } else if (req->allow_insecure && strncasecmp(url, "http://", 7) == 0) {
    host_at = 7;
  } else {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "%s must be an https:// URL (http:// only when the control "
                   "plane runs with --allow-insecure-token-urls, for loopback "
                   "tests)",
                   LK_OAUTH_TOKEN_URL);
  }
  if (url[host_at] == '\0' || url[host_at] == '/') {
    return lk_fail(err, LK_FAILED_PRECONDITION, "%s names no host",
                   LK_OAUTH_TOKEN_URL);
  }
  if (host_at == 7 && !loopback_authority(url + host_at)) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "%s: http:// is allowed only to a loopback host "
                   "(127.0.0.1, localhost, [::1]); use https://",
                   LK_OAUTH_TOKEN_URL);
  }
  if (!printable_value(req->client_id, MAX_CLIENT_ID_BYTES)) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "the credential's %s is missing, or not printable ASCII of "
                   "at most %u bytes",
                   LK_OAUTH_CLIENT_ID, MAX_CLIENT_ID_BYTES);
  }
  const char *grant = req->grant_type != NULL ? req->grant_type : "";
  if (strcmp(grant, LK_OAUTH_GRANT_AUTHORIZATION_CODE) == 0) {
    *refresh = 1;
    if (req->refresh_token == NULL || lk_secret_len(req->refresh_token) == 0) {
      return lk_fail(err, LK_FAILED_PRECONDITION,
                     "the credential has no %s: the owner must re-authorise "
                     "this credential",
                     LK_OAUTH_REFRESH_TOKEN);
    }
    if (lk_secret_len(req->refresh_token) > LK_OAUTH_TOKEN_MAX_TOKEN_BYTES) {
      return lk_fail(err, LK_FAILED_PRECONDITION,
                     "the credential's %s is longer than %u bytes",
                     LK_OAUTH_REFRESH_TOKEN, LK_OAUTH_TOKEN_MAX_TOKEN_BYTES);
    }
  } else if (strcmp(grant, LK_OAUTH_GRANT_CLIENT_CREDENTIALS) == 0) {
    *refresh = 0;
  } else {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "the credential's %s must be %s or %s", LK_OAUTH_GRANT_TYPE,
                   LK_OAUTH_GRANT_AUTHORIZATION_CODE,
                   LK_OAUTH_GRANT_CLIENT_CREDENTIALS);
  }
  if (req->scope != NULL && req->scope[0] != '\0' &&
      !printable_value(req->scope, LK_OAUTH_TOKEN_MAX_SCOPE_BYTES)) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "the credential's %s is not printable ASCII of at most %u "
                   "bytes",
                   LK_OAUTH_SCOPE, LK_OAUTH_TOKEN_MAX_SCOPE_BYTES);
  }
  if (req->client_secret != NULL &&
      lk_secret_len(req->client_secret) > LK_OAUTH_TOKEN_MAX_TOKEN_BYTES) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "the credential's %s is longer than %u bytes",
                   LK_OAUTH_CLIENT_SECRET, LK_OAUTH_TOKEN_MAX_TOKEN_BYTES);
  }
  return LK_OK;
}

static int has_secret(const lk_secret *s) {
  return s != NULL && lk_secret_len(s) > 0;
}

/* Builds the form body and, for a confidential client, the Basic
 * "id:secret" (both parts form-urlencoded first, RFC 6749 §2.3.1). */
static lk_status build(const lk_oauth_token_request *req, int refresh,
                       lk_secret **body, lk_secret **userpwd, lk_err *err) {
  lk_status st = LK_OK;
  lk_secret_buf *b = lk_secret_buf_new(MAX_BODY_BYTES);
  lk_secret_buf *u = NULL;
  *body = NULL;
  *userpwd = NULL;
  if (b == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of guarded memory");
  }
  if (refresh) {
    st = lk_secret_buf_append_str(
        b, "grant_type=refresh_token&refresh_token=", err);
    if (st == LK_OK) {
      st = append_encoded(b, lk_secret_data(req->refresh_token),
                          lk_secret_len(req->refresh_token), err);
    }
  } else {
    st = lk_secret_buf_append_str(b, "grant_type=client_credentials", err);
    if (st == LK_OK && req->scope != NULL && req->scope[0] != '\0') {
      st = lk_secret_buf_append_str(b, "&scope=", err);
      if (st == LK_OK) {
        st = append_encoded(b, req->scope, strlen(req->scope), err);
      }
    }
  }
  if (st == LK_OK && !has_secret(req->client_secret)) {
    st = lk_secret_buf_append_str(b, "&client_id=", err);
    if (st == LK_OK) {
      st = append_encoded(b, req->client_id, strlen(req->client_id), err);
    }
  }
  if (st == LK_OK && has_secret(req->client_secret)) {
    u = lk_secret_buf_new(MAX_USERPWD_BYTES);
    if (u == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of guarded memory");
    }
    if (st == LK_OK) {
      st = append_encoded(u, req->client_id, strlen(req->client_id), err);
    }
    if (st == LK_OK) {
      st = lk_secret_buf_append(u, ":", 1, err);
    }
    if (st == LK_OK) {
      st = append_encoded(u, lk_secret_data(req->client_secret),
                          lk_secret_len(req->client_secret), err);
    }
  }
  if (st == LK_OK) {
    *body = lk_secret_buf_finish(b);
    b = NULL;
    if (u != NULL) {
      *userpwd = lk_secret_buf_finish(u);
      u = NULL;
      if (*userpwd == NULL) {
        st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of guarded memory");
      }
    }
    if (*body == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of guarded memory");
    }
  }
  if (st != LK_OK) {
    lk_secret_free(*body);
    lk_secret_free(*userpwd);
    *body = NULL;
    *userpwd = NULL;
  }
  lk_secret_buf_free(b);
  lk_secret_buf_free(u);
  return st;
}

/* ---- the transfer -------------------------------------------------------
 */

typedef struct {
  lk_secret_buf *body;
  const lk_oauth_token_request *req;
  int cancelled;
  int too_large;
  int refused;
  char refused_addr[INET6_ADDRSTRLEN];
} transfer;

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  transfer *t = userp;
  size_t n = size * nmemb;
  if (lk_secret_buf_append(t->body, data, n, NULL) != LK_OK) {
    t->too_large = 1;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  return n;
}

/* curl's progress callback: ends the transfer when the caller cancels. */
static int on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow) {
  transfer *t = clientp;
  (void)dltotal;
  (void)dlnow;
  (void)ultotal;
  (void)ulnow;
  if (t->req->cancelled != NULL && t->req->cancelled(t->req->cancel_ctx)) {
    t->cancelled = 1;
    return 1;
  }
  return 0;
}

static int in4(uint32_t a, uint32_t net, int bits) {
  uint32_t mask = 0xffffffffu << (32 - bits);
  return (a & mask) == net;
}

/* 1 for IPv4 addresses a token request never goes to: 0/8 (this host),
 * 169.254/16 (link-local, with the cloud metadata service), 224/3
 * (multicast, reserved, broadcast) and 100.100.100.200 (Alibaba Cloud's
 * metadata service). a is in host byte order. */
static int never4(uint32_t a) {
  return in4(a, 0x00000000u, 8) || in4(a, 0xa9fe0000u, 16) ||
         in4(a, 0xe0000000u, 3) ||
         a == 0x646464c8u; /* 100.100.100.200: Alibaba Cloud metadata */
}

/* The IPv6 counterpart: ::, IPv4-mapped/compatible and NAT64 forms of
 * never4, AWS's IPv6 metadata address, fe80::/10 and fec0::/10, and
 * ff00::/8 multicast. */
static int never6(const unsigned char *b) {
  static const unsigned char zero[16];
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0,    0,
                                           0, 0, 0, 0, 0xff, 0xff};
  if (memcmp(b, zero, 15) == 0) {
    return b[15] != 1; /* :: is never; ::1 is loopback */
  }
  /* 64:ff9b::/96 (NAT64) reaches the IPv4 address in its last 32 bits. */
  static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0,
                                          0, 0,    0,    0,    0, 0};
  /* fd00:ec2::254: the AWS instance metadata service over IPv6. */
  static const unsigned char aws6[16] = {0xfd, 0, 0, 0xec, 0x02, 0, 0,    0,
                                         0,    0, 0, 0,    0,    0, 0x02, 0x54};
  if (memcmp(b, aws6, 16) == 0) {
    return 1;
  }
  if (memcmp(b, mapped, 12) == 0 || memcmp(b, zero, 12) == 0 ||
      memcmp(b, nat64, 12) == 0) {
    uint32_t a = ((uint32_t)b[12] << 24) | ((uint32_t)b[13] << 16) |
                 ((uint32_t)b[14] << 8) | (uint32_t)b[15];
    return never4(a);
  }
  return b[0] == 0xff || (b[0] == 0xfe && (b[1] & 0x80) == 0x80);
}

/* Runs before every connection, with the very address curl will connect
 * to after its own resolution. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *a) {
  transfer *t = clientp;
  const void *ip = NULL;
  int never = 1;
  if (purpose != CURLSOCKTYPE_IPCXN) {
    return CURL_SOCKET_BAD;
  }
  if (a->family == AF_INET &&
      a->addrlen >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->addr;
    never = never4(ntohl(s4->sin_addr.s_addr));
    ip = &s4->sin_addr;
  } else if (a->family == AF_INET6 &&
             a->addrlen >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->addr;
    never = never6(s6->sin6_addr.s6_addr);
    ip = &s6->sin6_addr;
  }
  if (never) {
    t->refused = 1;
    if (ip == NULL || inet_ntop(a->family, ip, t->refused_addr,
                                sizeof(t->refused_addr)) == NULL) {
      snprintf(t->refused_addr, sizeof(t->refused_addr), "family %d",
               a->family);
    }
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* Classifies a transfer that ended with curl error rc. */
static lk_status transfer_failed(const transfer *t, CURLcode rc,
                                 int64_t timeout_ms, lk_err *err) {
  if (t->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "the token endpoint's answer is larger than %u bytes",
                   LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES);
  }
  if (t->cancelled) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "the token request was cancelled: the control plane is "
                   "stopping");
  }
  if (t->refused) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "%s resolves to %s, a link-local, metadata, multicast or "
                   "unspecified address, which a token request never goes "
                   "to",
                   LK_OAUTH_TOKEN_URL, t->refused_addr);
  }
  if (rc == CURLE_OPERATION_TIMEDOUT) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "the token endpoint did not answer within %lld ms",
                   (long long)timeout_ms);
  }
  return lk_fail(err, LK_UNAVAILABLE,
                 "the token endpoint could not be reached (%s)",
                 curl_easy_strerror(rc));
}

lk_status lk_oauth_token_exchange(const lk_oauth_token_request *req,
                                  lk_oauth_token_result *out, long *http_status,
                                  lk_err *err) {
  lk_status st = LK_OK;
  lk_secret *body = NULL;
  lk_secret *userpwd = NULL;
  lk_secret *answer = NULL;
  struct curl_slist *headers = NULL;
  CURL *e = NULL;
  transfer t;
  int refresh = 0;
  long code = 0;

  memset(&t, 0, sizeof(t));
  t.req = req;
  memset(out, 0, sizeof(*out));
  out->expires_in = -1;
  if (http_status != NULL) {
    *http_status = 0;
  }
  if (!atomic_load(&g_initialised)) {
    return lk_fail(err, LK_INTERNAL,
                   "lk_oauth_token_global_init was not called: curl and "
                   "jansson would keep unwiped copies of tokens");
  }
  if ((st = check_request(req, &refresh, err)) != LK_OK ||
      (st = build(req, refresh, &body, &userpwd, err)) != LK_OK) {
    goto done;
  }
  int64_t left = req->deadline_ms - lk_now_ms();
  if (left < 1) {
    st = lk_fail(err, LK_UNAVAILABLE,
                 "no time was left to ask the token endpoint");
    goto done;
  }
  t.body = lk_secret_buf_new(LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES);
  e = curl_easy_init();
  if (t.body == NULL || e == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  static const char *const fixed[] = {
      "Content-Type: application/x-www-form-urlencoded",
      "Accept: application/json", "Expect:"};
  for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
    struct curl_slist *next = curl_slist_append(headers, fixed[i]);
    if (next == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
      goto done;
    }
    headers = next;
  }
  curl_easy_setopt(e, CURLOPT_URL, req->token_url);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, lk_secret_str(body));
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                   (curl_off_t)lk_secret_len(body));
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
  if (userpwd != NULL) {
    /* curl copies it (into wiping memory) and sends it base64'd. */
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_USERPWD, lk_secret_str(userpwd));
  }
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROXY, ""); /* not even from the environment */
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR,
                   req->allow_insecure ? "http,https" : "https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "");
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)left);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                   (curl_off_t)LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, &t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "latchkey/1");
  if (req->cancelled != NULL) {
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  }
  CURLcode rc = curl_easy_perform(e);
  /* The body and credentials are sent: wipe them now, not at exit. */
  lk_secret_free(body);
  body = NULL;
  lk_secret_free(userpwd);
  userpwd = NULL;
  if (rc != CURLE_OK) {
    st = transfer_failed(&t, rc, left, err);
    goto done;
  }
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  if (http_status != NULL) {
    *http_status = code;
  }
  answer = lk_secret_buf_finish(t.body);
  t.body = NULL;
  if (answer == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of guarded memory");
    goto done;
  }
  st = parse(lk_secret_data(answer), lk_secret_len(answer), code, 1, out, err);
  if (st != LK_OK && (quotes(err->msg, req->refresh_token) ||
                      quotes(err->msg, req->client_secret))) {
    /* The provider echoed what we sent: say the same without its words. */
    st =
        parse(lk_secret_data(answer), lk_secret_len(answer), code, 0, out, err);
  }
done:
  if (e != NULL) {
    curl_easy_cleanup(e);
  }
  curl_slist_free_all(headers);
  lk_secret_free(answer);
  lk_secret_buf_free(t.body);
  lk_secret_free(body);
  lk_secret_free(userpwd);
  return st;
}
