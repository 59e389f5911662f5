/*
 * token.c - loads a token file and keeps only its BLAKE2b digest.
 */
#include "lib/token.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/secret.h"

#define MAX_TOKEN_FILE 4096
#define MIN_TOKEN_LEN 16

struct lk_token {
  unsigned char digest[crypto_generichash_BYTES];
};

static void digest_bearer(const unsigned char *tok, size_t len,
                          unsigned char out[crypto_generichash_BYTES]) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, NULL, 0, crypto_generichash_BYTES);
  crypto_generichash_update(&st, (const unsigned char *)"Bearer ", 7);
  crypto_generichash_update(&st, tok, len);
  crypto_generichash_final(&st, out, crypto_generichash_BYTES);
  sodium_memzero(&st, sizeof(st));
}

lk_status lk_token_load(const char *path, lk_token **out, lk_err *err) {
  *out = NULL;
  lk_status st = LK_OK;
  lk_secret *buf = lk_secret_new(MAX_TOKEN_FILE);
  int fd = -1;
  if (buf == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot read token file %s: %s",
                 path, strerror(errno));
    goto cleanup;
  }
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, lk_secret_mut(buf) + n, MAX_TOKEN_FILE - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot read token file %s: %s",
                   path, strerror(errno));
      goto cleanup;
    }
    if (r == 0)
      break;
    n += (size_t)r;
    if (n == MAX_TOKEN_FILE) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "token file %s is larger than %d bytes", path,
                   MAX_TOKEN_FILE - 1);
      goto cleanup;
    }
  }
  const unsigned char *p = lk_secret_data(buf);
  while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ' ||
                   p[n - 1] == '\t')) {
    n--;
  }
  if (n < MIN_TOKEN_LEN) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "token file %s holds a token shorter than %d characters: "
                 "generate one with `head -c 32 /dev/urandom | base64`",
                 path, MIN_TOKEN_LEN);
    goto cleanup;
  }
  lk_token *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  digest_bearer(p, n, t->digest);
  *out = t;
cleanup:
  if (fd >= 0)
    close(fd);
  lk_secret_free(buf);
  return st;
}

void lk_token_destroy(lk_token *t) {
  if (t == NULL)
    return;
  sodium_memzero(t, sizeof(*t));
  free(t);
}

int lk_token_check_bearer(const lk_token *t, const char *value, size_t len) {
  if (t == NULL || value == NULL)
    return 0;
  unsigned char d[crypto_generichash_BYTES];
  if (len < 7 || memcmp(value, "Bearer ", 7) != 0)
    return 0;
  digest_bearer((const unsigned char *)value + 7, len - 7, d);
  return sodium_memcmp(d, t->digest, sizeof(d)) == 0;
}
