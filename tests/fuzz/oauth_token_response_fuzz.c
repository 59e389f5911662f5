/*
 * oauth_token_response_fuzz.c - fuzzes lk_oauth_token_parse_response, the
 * parser of what an identity provider's token endpoint answers (the
 * provider's token_url is set by a credential's owner, so the answer is
 * untrusted input on the control plane).
 *
 * Input: "NNN\n" then the body (NNN the HTTP status, three digits); an
 * input not starting that way is a body answered with 200.
 *
 * Invariants:
 *  - LK_OK only for a 2xx status, with an access token of 1 to
 *    LK_OAUTH_TOKEN_MAX_TOKEN_BYTES printable ASCII bytes, a refresh
 *    token absent or alike, expires_in -1 or 0..LK_OAUTH_TOKEN_MAX_EXPIRES_IN,
 *    scope absent or printable of at most LK_OAUTH_TOKEN_MAX_SCOPE_BYTES;
 *  - a failure is UNAVAILABLE, RESOURCE_EXHAUSTED, or FAILED_PRECONDITION
 *    (only for 400, 401 or 2xx), with a non-empty printable message and
 *    nothing left in the result;
 *  - a message never quotes the input jansson failed on (canary
 *    "LKCANARY" in a body that is not JSON), nor, for a 2xx answer
 *    without an error member, its access_token or refresh_token value
 *    (at least 8 bytes, read with an independent jansson parse).
 */
#include <jansson.h>
#include <string.h>

#include "lib/oauth_token.h"
#include "tests/fuzz/fuzz_target.h"

static void check_token(const lk_secret *t) {
  size_t n = lk_secret_len(t);
  const unsigned char *p = lk_secret_data(t);
  if (n == 0 || n > LK_OAUTH_TOKEN_MAX_TOKEN_BYTES)
    __builtin_trap();
  for (size_t i = 0; i < n; i++) {
    if (p[i] < 0x20 || p[i] >= 0x7f)
      __builtin_trap();
  }
}

/* Traps when msg contains the string member name of root (>= 8 bytes). */
static void check_not_quoted(const char *msg, const json_t *root,
                             const char *name) {
  const json_t *v = json_object_get(root, name);
  if (!json_is_string(v) || json_string_length(v) < 8)
    return;
  if (memmem(msg, strlen(msg), json_string_value(v), json_string_length(v)) !=
      NULL)
    __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  long status = 200;
  const uint8_t *body = data;
  size_t len = size;
  if (size >= 4 && data[3] == '\n' && data[0] >= '0' && data[0] <= '9' &&
      data[1] >= '0' && data[1] <= '9' && data[2] >= '0' && data[2] <= '9') {
    status = (data[0] - '0') * 100 + (data[1] - '0') * 10 + (data[2] - '0');
    body = data + 4;
    len = size - 4;
  }
  lk_oauth_token_result r;
  lk_err err;
  lk_err_clear(&err);
  lk_status st = lk_oauth_token_parse_response(body, len, status, &r, &err);
  int ok2xx = status >= 200 && status < 300;
  if (st == LK_OK) {
    if (!ok2xx || r.access_token == NULL)
      __builtin_trap();
    check_token(r.access_token);
    if (r.refresh_token != NULL)
      check_token(r.refresh_token);
    if (r.expires_in < -1 || r.expires_in > LK_OAUTH_TOKEN_MAX_EXPIRES_IN)
      __builtin_trap();
    if (r.scope != NULL) {
      size_t n = strlen(r.scope);
      if (n > LK_OAUTH_TOKEN_MAX_SCOPE_BYTES)
        __builtin_trap();
      for (size_t i = 0; i < n; i++) {
        if ((unsigned char)r.scope[i] < 0x20 ||
            (unsigned char)r.scope[i] >= 0x7f)
          __builtin_trap();
      }
    }
    lk_oauth_token_result_clear(&r);
    return 0;
  }
  if (st != LK_UNAVAILABLE && st != LK_RESOURCE_EXHAUSTED &&
      st != LK_FAILED_PRECONDITION)
    __builtin_trap();
  if (st == LK_FAILED_PRECONDITION && status != 400 && status != 401 && !ok2xx)
    __builtin_trap();
  if (err.code != st || err.msg[0] == '\0')
    __builtin_trap();
  for (size_t i = 0; err.msg[i] != '\0'; i++) {
    if ((unsigned char)err.msg[i] < 0x20 || (unsigned char)err.msg[i] >= 0x7f)
      __builtin_trap();
  }
  if (r.access_token != NULL || r.refresh_token != NULL || r.scope != NULL)
    __builtin_trap();
  if (strstr(err.msg, "is not JSON") != NULL &&
      strstr(err.msg, "LKCANARY") != NULL)
    __builtin_trap();
  if (ok2xx && len <= LK_OAUTH_TOKEN_MAX_RESPONSE_BYTES) {
    json_t *root = json_loadb((const char *)body, len, 0, NULL);
    if (json_is_object(root) && json_object_get(root, "error") == NULL) {
      check_not_quoted(err.msg, root, "access_token");
      check_not_quoted(err.msg, root, "refresh_token");
    }
    json_decref(root);
  }
  return 0;
}
