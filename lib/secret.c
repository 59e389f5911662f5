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
 *
 * Recycled page slots: the call path makes and frees several small secrets
 * per call (an unsealed field, injected values, scrub forms, the vendor's
 * response), and each fresh sodium_malloc/sodium_free is about eight
 * syscalls (mmap, mprotect, mlock, munlock, munmap) whose TLB shootdowns
 * stall every thread: half of latchkeyd's CPU under load
 * (docs/PERFORMANCE.md). So a region of at most PAGE_SLOT bytes is carved
 * from a one-page sodium_malloc slot, placed at the slot's end so the
 * secret's last byte still abuts the guard page, and a freed slot is wiped
 * whole and kept (still guarded and locked) for reuse, up to POOL_MAX
 * slots; beyond that it goes back to sodium_free. What changes: a wiped
 * slot stays mapped after use, and sodium's canary (checked at
 * sodium_free) sits at the slot's start, not right before a short secret.
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

/* Usable bytes of a one-page sodium_malloc region (4 KiB less the 16-byte
 * canary sodium keeps in front of the data). */
#define PAGE_SLOT (4096 - 16)
/* Wiped slots kept for reuse at most (each one page locked, three mapped). */
#define POOL_MAX 256

/* A builder's first region, before doubling towards its cap. sodium_malloc
 * maps whole pages (the data rounded up to pages between guard pages), so
 * a first region that fills one 4 KiB page with its 16-byte canary and
 * the NUL costs no more memory than a 64-byte one, and spares the small
 * builders of the call path (vendor response heads, injected values) the
 * map/mprotect/mlock/munmap of every doubling (docs/PERFORMANCE.md). */
#define SECRET_BUF_INITIAL (PAGE_SLOT - 1)

struct lk_secret {
  size_t len;
  unsigned char *bytes; /* guarded, len + 1 bytes, bytes[len] == 0 */
  unsigned char *base;  /* the region bytes lies in (region_put) */
  size_t region;        /* its size: PAGE_SLOT for a slot */
};

struct lk_secret_buf {
  size_t cap;           /* hard limit on len */
  size_t len;           /* bytes appended */
  size_t alloc;         /* usable size of bytes, always > len */
  unsigned char *bytes; /* guarded, bytes[len] == 0 */
  unsigned char *base;  /* the region bytes lies in (region_put) */
  size_t region;        /* its size: PAGE_SLOT for a slot */
};

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *pool[POOL_MAX]; /* wiped page slots */
static size_t pool_n;

/* Returns n zeroed guarded bytes whose end abuts a guard page, from a
 * recycled or fresh page slot when n <= PAGE_SLOT, else from a fresh
 * sodium_malloc region; *base and *region receive what region_put needs.
 * NULL when guarded memory runs out. */
static unsigned char *region_get(size_t n, unsigned char **base,
                                 size_t *region) {
  unsigned char *r = NULL;
  size_t size = n <= PAGE_SLOT ? PAGE_SLOT : n;
  if (size == PAGE_SLOT) {
    pthread_mutex_lock(&pool_mu);
    if (pool_n > 0) {
      r = pool[--pool_n];
    }
    pthread_mutex_unlock(&pool_mu);
  }
  if (r == NULL) {
    r = sodium_malloc(size);
    if (r == NULL) {
      return NULL;
    }
    sodium_memzero(r, size); /* recycled slots were wiped when put back */
  }
  *base = r;
  *region = size;
  return r + (size - n);
}

/* Wipes a region from region_get and keeps it as a slot or frees it. */
static void region_put(unsigned char *base, size_t region) {
  if (base == NULL) {
    return;
  }
  if (region == PAGE_SLOT) {
    sodium_memzero(base, PAGE_SLOT);
    pthread_mutex_lock(&pool_mu);
    if (pool_n < POOL_MAX) {
      pool[pool_n++] = base;
      base = NULL;
    }
    pthread_mutex_unlock(&pool_mu);
  }
  if (base != NULL) {
    sodium_free(base); /* wipes the whole region */
  }
}

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

/* Wraps already guarded, NUL-terminated bytes of len (in region base of
 * size region); puts the region back when the header cannot be
 * allocated. */
static lk_secret *secret_wrap(unsigned char *bytes, size_t len,
                              unsigned char *base, size_t region) {
  lk_secret *s = malloc(sizeof(*s));
  if (s == NULL) {
    region_put(base, region);
    return NULL;
  }
  s->len = len;
  s->bytes = bytes;
  s->base = base;
  s->region = region;
  return s;
}

lk_secret *lk_secret_new(size_t len) {
  if (lk_secret_init() != LK_OK || len >= SIZE_MAX / 2) {
    return NULL;
  }
  unsigned char *base = NULL;
  size_t region = 0;
  unsigned char *bytes = region_get(len + 1, &base, &region);
  if (bytes == NULL) {
    return NULL;
  }
  return secret_wrap(bytes, len, base, region);
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
  region_put(s->base, s->region); /* wipes the whole region */
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
  b->bytes = region_get(b->alloc, &b->base, &b->region);
  if (b->bytes == NULL) {
    free(b);
    return NULL;
  }
  return b;
}

/* Moves the content into a guarded region of at least need bytes (doubling,
 * never past cap + 1); the old region is wiped by region_put. */
static int secret_buf_grow(lk_secret_buf *b, size_t need) {
  size_t alloc = b->alloc;
  while (alloc < need) {
    alloc = alloc > (b->cap + 1) / 2 ? b->cap + 1 : alloc * 2;
  }
  unsigned char *base = NULL;
  size_t region = 0;
  unsigned char *bytes = region_get(alloc, &base, &region);
  if (bytes == NULL) {
    return -1;
  }
  memcpy(bytes, b->bytes, b->len);
  region_put(b->base, b->region);
  b->bytes = bytes;
  b->base = base;
  b->region = region;
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
  /* takes the region */
  lk_secret *s = secret_wrap(b->bytes, b->len, b->base, b->region);
  free(b);
  return s;
}

void lk_secret_buf_free(lk_secret_buf *b) {
  if (b == NULL) {
    return;
  }
  region_put(b->base, b->region);
  free(b);
}
