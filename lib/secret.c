/*
 * secret.c - guarded memory for plaintext secrets (see secret.h).
 *
 * The lk_secret header (length and pointer, neither secret) is ordinary
 * heap memory; only the bytes are in sodium_malloc memory. sodium_malloc
 * aligns the end of a region against a guard page, so the region holds
 * bytes only, never a struct. sodium_free wipes the whole region before
 * releasing it, which is what makes "free means wipe" hold here.
 *
 * A builder keeps its content NUL-terminated at all times, so finishing it
 * hands its guarded region to the new lk_secret without another copy.
 */
#include "lib/secret.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <sodium.h>

/* A builder's first region, before doubling towards its cap. sodium_malloc
 * maps whole pages (the data rounded up to pages between guard pages), so
 * a first region that fills one 4 KiB page with its 16-byte canary and
 * the NUL costs no more memory than a 64-byte one, and spares the small
 * builders of the call path (vendor response heads, injected values) the
 * map/mprotect/mlock/munmap of every doubling (docs/PERFORMANCE.md). */
#define SECRET_BUF_INITIAL (4096 - 16 - 1)

struct lk_secret {
  size_t len;
  unsigned char *bytes; /* sodium_malloc'd, len + 1 bytes, bytes[len] == 0 */
};

struct lk_secret_buf {
  size_t cap;           /* hard limit on len */
  size_t len;           /* bytes appended */
  size_t alloc;         /* usable size of bytes, always > len */
  unsigned char *bytes; /* sodium_malloc'd, bytes[len] == 0 */
};

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_ready; /* written once inside pthread_once */

static void secret_init_once(void) {
  sodium_ready = sodium_init() >= 0;
}

lk_status lk_secret_init(void) {
  if (pthread_once(&sodium_once, secret_init_once) != 0 || !sodium_ready) {
    return LK_INTERNAL;
  }
  return LK_OK;
}

/* Wraps an already guarded, NUL-terminated region of len bytes; frees the
 * region when the header cannot be allocated. */
static lk_secret *secret_wrap(unsigned char *bytes, size_t len) {
  lk_secret *s = malloc(sizeof(*s));
  if (s == NULL) {
    sodium_free(bytes);
    return NULL;
  }
  s->len = len;
  s->bytes = bytes;
  return s;
}

lk_secret *lk_secret_new(size_t len) {
  if (lk_secret_init() != LK_OK || len >= SIZE_MAX / 2) {
    return NULL;
  }
  unsigned char *bytes = sodium_malloc(len + 1);
  if (bytes == NULL) {
    return NULL;
  }
  sodium_memzero(bytes, len + 1);
  return secret_wrap(bytes, len);
}

lk_secret *lk_secret_from(const void *p, size_t len) {
  lk_secret *s = lk_secret_new(len);
  if (s != NULL && len > 0) {
    memcpy(s->bytes, p, len);
  }
  return s;
}

const unsigned char *lk_secret_data(const lk_secret *s) {
  return s->bytes;
}

unsigned char *lk_secret_mut(lk_secret *s) {
  return s->bytes;
}

const char *lk_secret_str(const lk_secret *s) {
  return (const char *)s->bytes;
}

size_t lk_secret_len(const lk_secret *s) {
  return s->len;
}

void lk_secret_free(lk_secret *s) {
  if (s == NULL) {
    return;
  }
  sodium_free(s->bytes); /* wipes the whole region */
  free(s);
}

void lk_wipe(void *p, size_t n) {
  if (p != NULL && n > 0) {
    sodium_memzero(p, n);
  }
}

void lk_wipe_free(void *p, size_t n) {
  if (p == NULL) {
    return;
  }
  sodium_memzero(p, n);
  free(p);
}

int lk_ct_equal(const void *a, size_t alen, const void *b, size_t blen) {
  if (alen != blen) {
    return 0;
  }
  if (alen == 0) {
    return 1;
  }
  return sodium_memcmp(a, b, alen) == 0;
}

lk_status lk_secret_disable_core_dumps(lk_err *err) {
  struct rlimit none = {0, 0};
  if (setrlimit(RLIMIT_CORE, &none) != 0) {
    return lk_fail(err, LK_INTERNAL,
                   "cannot disable core dumps (setrlimit RLIMIT_CORE): %s",
                   strerror(errno));
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    return lk_fail(err, LK_INTERNAL,
                   "cannot disable core dumps (prctl PR_SET_DUMPABLE): %s",
                   strerror(errno));
  }
  return LK_OK;
}

lk_secret_buf *lk_secret_buf_new(size_t cap) {
  if (lk_secret_init() != LK_OK || cap >= SIZE_MAX / 2) {
    return NULL;
  }
  lk_secret_buf *b = malloc(sizeof(*b));
  if (b == NULL) {
    return NULL;
  }
  b->cap = cap;
  b->len = 0;
  b->alloc = (cap < SECRET_BUF_INITIAL ? cap : SECRET_BUF_INITIAL) + 1;
  b->bytes = sodium_malloc(b->alloc);
  if (b->bytes == NULL) {
    free(b);
    return NULL;
  }
  sodium_memzero(b->bytes, b->alloc);
  return b;
}

/* Moves the content into a guarded region of at least need bytes (doubling,
 * never past cap + 1); the old region is wiped by sodium_free. */
static int secret_buf_grow(lk_secret_buf *b, size_t need) {
  size_t alloc = b->alloc;
  while (alloc < need) {
    alloc = alloc > (b->cap + 1) / 2 ? b->cap + 1 : alloc * 2;
  }
  unsigned char *bytes = sodium_malloc(alloc);
  if (bytes == NULL) {
    return -1;
  }
  sodium_memzero(bytes, alloc);
  memcpy(bytes, b->bytes, b->len);
  sodium_free(b->bytes);
  b->bytes = bytes;
  b->alloc = alloc;
  return 0;
}

lk_status lk_secret_buf_append(lk_secret_buf *b, const void *p, size_t n,
                               lk_err *err) {
  if (b == NULL || (p == NULL && n > 0)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "secret buffer append: NULL argument");
  }
  if (n > b->cap - b->len) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "secret value too long: at most %zu bytes fit here", b->cap);
  }
  if (b->len + n + 1 > b->alloc && secret_buf_grow(b, b->len + n + 1) != 0) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of guarded memory for a %zu-byte secret", b->len + n);
  }
  if (n > 0) {
    memcpy(b->bytes + b->len, p, n);
  }
  b->len += n;
  b->bytes[b->len] = 0;
  return LK_OK;
}

lk_status lk_secret_buf_append_str(lk_secret_buf *b, const char *s,
                                   lk_err *err) {
  if (s == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "secret buffer append: NULL string");
  }
  return lk_secret_buf_append(b, s, strlen(s), err);
}

size_t lk_secret_buf_len(const lk_secret_buf *b) {
  return b->len;
}

lk_secret *lk_secret_buf_finish(lk_secret_buf *b) {
  if (b == NULL) {
    return NULL;
  }
  lk_secret *s = secret_wrap(b->bytes, b->len); /* takes the region */
  free(b);
  return s;
}

void lk_secret_buf_free(lk_secret_buf *b) {
  if (b == NULL) {
    return;
  }
  sodium_free(b->bytes);
  free(b);
}
