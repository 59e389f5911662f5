/*
 * scrub.c - replacing secret echoes in vendor responses (see scrub.h).
 *
 * Layout: one guarded region per scrubber holds a 256-entry first-byte
 * flag table, bucket starts per first byte (257 uint32), each needle's
 * offset and length (uint32), then the needle bytes. Needles are sorted by
 * first byte, then longest first, so a lookup at a position tries only the
 * needles that can start there, longest first. The region is a byte array
 * (sodium_malloc does not align it), hence the memcpy accessors.
 *
 * Scanning skips bytes whose flag is clear with one table load each; at a
 * flagged byte it memcmp's the bucket's needles. A match opens a "run";
 * matches that start inside the run extend it, so two overlapping
 * occurrences (of different needles) become one mark and no tail of a
 * secret survives next to a mark. Runs that merely touch stay separate.
 *
 * Building writes every encoding straight into the region, so no encoded
 * secret ever sits in ordinary memory; the region is sized up front from
 * the values' lengths (worst case per encoding).
 */
#include "sidecar/scrub.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

/* Needles one secret value and one basic "user:pass" can produce. */
#define NEEDLES_PER_SECRET 10
#define NEEDLES_PER_BASIC 4

struct lk_scrubber {
  lk_secret *mem;              /* guarded: everything below points into it */
  size_t n;                    /* distinct needles */
  const unsigned char *has;    /* [256] first-byte flags */
  const unsigned char *bucket; /* [257] uint32 first needle per byte */
  const unsigned char *offs;   /* [n] uint32 offset into bytes */
  const unsigned char *lens;   /* [n] uint32 length */
  const unsigned char *bytes;  /* needle bytes */
};

/* Mutable view of a scrubber's region while it is being filled. */
typedef struct {
  unsigned char *has;
  unsigned char *bucket;
  unsigned char *offs;
  unsigned char *lens;
  unsigned char *bytes;
  size_t n;
  size_t pos; /* next free byte in bytes */
} builder;

static uint32_t rd32(const unsigned char *p, size_t i) {
  uint32_t v;
  memcpy(&v, p + 4 * i, sizeof(v));
  return v;
}

static void wr32(unsigned char *p, size_t i, uint32_t v) {
  memcpy(p + 4 * i, &v, sizeof(v));
}

/* Keeps the len bytes just written at bytes[pos] as a needle unless an
 * identical one exists (then they are wiped and the space reused). */
static void keep(builder *b, size_t len) {
  unsigned char *fresh = b->bytes + b->pos;
  for (size_t k = 0; k < b->n; k++) {
    if (rd32(b->lens, k) == len &&
        memcmp(b->bytes + rd32(b->offs, k), fresh, len) == 0) {
      lk_wipe(fresh, len + 1);
      return;
    }
  }
  wr32(b->offs, b->n, (uint32_t)b->pos);
  wr32(b->lens, b->n, (uint32_t)len);
  b->n++;
  b->pos += len;
}

static void add_raw(builder *b, const unsigned char *v, size_t n) {
  memcpy(b->bytes + b->pos, v, n);
  keep(b, n);
}

static void add_b64(builder *b, const unsigned char *v, size_t n, int variant) {
  char *dst = (char *)b->bytes + b->pos;
  sodium_bin2base64(dst, sodium_base64_ENCODED_LEN(n, variant), v, n, variant);
  keep(b, strlen(dst));
}

static int pct_unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

static void add_pct(builder *b, const unsigned char *v, size_t n,
                    const char *hex, int plus_space) {
  unsigned char *d = b->bytes + b->pos;
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    if (pct_unreserved(v[i])) {
      d[len++] = v[i];
    } else if (plus_space && v[i] == ' ') {
      d[len++] = '+';
    } else {
      d[len++] = '%';
      d[len++] = (unsigned char)hex[v[i] >> 4];
      d[len++] = (unsigned char)hex[v[i] & 15];
    }
  }
  keep(b, len);
}

static void add_json(builder *b, const unsigned char *v, size_t n, int slash) {
  static const char hex[] = "0123456789abcdef";
  unsigned char *d = b->bytes + b->pos;
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = v[i];
    char short_esc = 0;
    switch (c) {
      case '"':
        short_esc = '"';
        break;
      case '\\':
        short_esc = '\\';
        break;
      case '\b':
        short_esc = 'b';
        break;
      case '\f':
        short_esc = 'f';
        break;
      case '\n':
        short_esc = 'n';
        break;
      case '\r':
        short_esc = 'r';
        break;
      case '\t':
        short_esc = 't';
        break;
      case '/':
        short_esc = slash ? '/' : 0;
        break;
      default:
        break;
    }
    if (short_esc != 0) {
      d[len++] = '\\';
      d[len++] = (unsigned char)short_esc;
    } else if (c < 0x20) {
      memcpy(d + len, "\\u00", 4);
      len += 4;
      d[len++] = (unsigned char)hex[c >> 4];
      d[len++] = (unsigned char)hex[c & 15];
    } else {
      d[len++] = c;
    }
  }
  keep(b, len);
}

/* Worst-case bytes the needles of one secret value take (each encoder may
 * also write one NUL past its needle). */
static size_t secret_bound(size_t n) {
  return n + 4 * sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL) +
         3 * (3 * n) + 2 * (6 * n) + NEEDLES_PER_SECRET;
}

static size_t basic_bound(size_t n) {
  return n + 3 * sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL) +
         NEEDLES_PER_BASIC;
}

static void add_secret(builder *b, const unsigned char *v, size_t n) {
  add_raw(b, v, n);
  add_b64(b, v, n, sodium_base64_VARIANT_ORIGINAL);
  add_b64(b, v, n, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
  add_b64(b, v, n, sodium_base64_VARIANT_URLSAFE);
  add_b64(b, v, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  add_pct(b, v, n, "0123456789ABCDEF", 0);
  add_pct(b, v, n, "0123456789abcdef", 0);
  add_pct(b, v, n, "0123456789ABCDEF", 1);
  add_json(b, v, n, 0);
  add_json(b, v, n, 1);
}

static void add_basic(builder *b, const unsigned char *v, size_t n) {
  add_raw(b, v, n);
  add_b64(b, v, n, sodium_base64_VARIANT_ORIGINAL);
  add_b64(b, v, n, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
  add_b64(b, v, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* Returns 1 when needle j must be tried before needle k. */
static int needle_before(const builder *b, size_t j, size_t k) {
  unsigned char fj = b->bytes[rd32(b->offs, j)];
  unsigned char fk = b->bytes[rd32(b->offs, k)];
  return fj < fk || (fj == fk && rd32(b->lens, j) > rd32(b->lens, k));
}

/* Sorts needles (insertion sort: there are few) and fills has/bucket. */
static void build_index(builder *b) {
  for (size_t i = 1; i < b->n; i++) {
    for (size_t j = i; j > 0 && needle_before(b, j, j - 1); j--) {
      uint32_t off = rd32(b->offs, j);
      uint32_t len = rd32(b->lens, j);
      wr32(b->offs, j, rd32(b->offs, j - 1));
      wr32(b->lens, j, rd32(b->lens, j - 1));
      wr32(b->offs, j - 1, off);
      wr32(b->lens, j - 1, len);
    }
  }
  size_t k = 0;
  for (size_t c = 0; c < 256; c++) {
    while (k < b->n && b->bytes[rd32(b->offs, k)] < c) {
      k++;
    }
    wr32(b->bucket, c, (uint32_t)k);
    size_t m = k;
    while (m < b->n && b->bytes[rd32(b->offs, m)] == c) {
      m++;
    }
    b->has[c] = m > k;
  }
  wr32(b->bucket, 256, (uint32_t)b->n);
}

static int is_scrubbed(const lk_field *f) {
  return f->secret && f->value != NULL &&
         lk_secret_len(f->value) >= LK_SCRUB_MIN_SECRET;
}

lk_status lk_scrubber_new(const lk_field *fields, size_t n_fields,
                          const lk_secret *basic_userpwd, lk_scrubber **out,
                          lk_err *err) {
  lk_status st = LK_OK;
  lk_scrubber *s = NULL;
  size_t max_n = 0;
  size_t bytes_size = 1;
  builder b;

  *out = NULL;
  for (size_t i = 0; i < n_fields; i++) {
    if (!is_scrubbed(&fields[i])) {
      continue;
    }
    size_t n = lk_secret_len(fields[i].value);
    if (n > LK_SCRUB_MAX_SECRET) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "secret field '%s' is longer than %zu bytes and cannot be "
                   "scrubbed; shorten the credential's value",
                   fields[i].name, LK_SCRUB_MAX_SECRET);
      goto done;
    }
    max_n += NEEDLES_PER_SECRET;
    bytes_size += secret_bound(n);
  }
  size_t basic_n = basic_userpwd != NULL ? lk_secret_len(basic_userpwd) : 0;
  if (basic_n > 2 * LK_SCRUB_MAX_SECRET) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "basic credentials are longer than %zu bytes and cannot be "
                 "scrubbed",
                 2 * LK_SCRUB_MAX_SECRET);
    goto done;
  }
  if (basic_n >= LK_SCRUB_MIN_SECRET) {
    max_n += NEEDLES_PER_BASIC;
    bytes_size += basic_bound(basic_n);
  }

  s = calloc(1, sizeof(*s));
  size_t index_size = 256 + 257 * 4 + 2 * 4 * max_n;
  if (s == NULL || (s->mem = lk_secret_new(index_size + bytes_size)) == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory building the response scrubber");
    goto done;
  }
  unsigned char *base = lk_secret_mut(s->mem);
  b.has = base;
  b.bucket = b.has + 256;
  b.offs = b.bucket + 257 * 4;
  b.lens = b.offs + 4 * max_n;
  b.bytes = b.lens + 4 * max_n;
  b.n = 0;
  b.pos = 0;
  for (size_t i = 0; i < n_fields; i++) {
    if (is_scrubbed(&fields[i])) {
      add_secret(&b, lk_secret_data(fields[i].value),
                 lk_secret_len(fields[i].value));
    }
  }
  if (basic_n >= LK_SCRUB_MIN_SECRET) {
    add_basic(&b, lk_secret_data(basic_userpwd), basic_n);
  }
  build_index(&b);
  s->n = b.n;
  s->has = b.has;
  s->bucket = b.bucket;
  s->offs = b.offs;
  s->lens = b.lens;
  s->bytes = b.bytes;
  *out = s;
  s = NULL;

done:
  lk_scrubber_destroy(s);
  return st;
}

size_t lk_scrubber_needles(const lk_scrubber *s) {
  return s != NULL ? s->n : 0;
}

void lk_scrubber_destroy(lk_scrubber *s) {
  if (s == NULL) {
    return;
  }
  lk_secret_free(s->mem);
  free(s);
}

/* Growable output with a hard cap; holds no secret (only unmatched input
 * and marks). */
typedef struct {
  unsigned char *p;
  size_t len;
  size_t alloc;
  size_t cap;
} outbuf;

static lk_status out_put(outbuf *o, const unsigned char *src, size_t n,
                         lk_err *err) {
  if (n == 0) {
    return LK_OK;
  }
  if (n > o->cap - o->len) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "the scrubbed response would exceed %zu bytes; raise "
                   "--max-response-bytes or request less data",
                   o->cap);
  }
  if (o->len + n > o->alloc) {
    size_t alloc = o->alloc;
    while (alloc < o->len + n) {
      alloc = alloc > o->cap / 2 ? o->cap : alloc * 2;
    }
    unsigned char *p = realloc(o->p, alloc);
    if (p == NULL) {
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory scrubbing");
    }
    o->p = p;
    o->alloc = alloc;
  }
  memcpy(o->p + o->len, src, n);
  o->len += n;
  return LK_OK;
}

/* Returns the length of the longest needle starting at in (avail bytes
 * left), or 0. */
static size_t match_at(const lk_scrubber *s, const unsigned char *in,
                       size_t avail) {
  uint32_t end = rd32(s->bucket, (size_t)in[0] + 1);
  for (uint32_t k = rd32(s->bucket, in[0]); k < end; k++) {
    size_t len = rd32(s->lens, k);
    if (len <= avail && memcmp(s->bytes + rd32(s->offs, k), in, len) == 0) {
      return len;
    }
  }
  return 0;
}

lk_status lk_scrub(const lk_scrubber *s, const unsigned char *in, size_t in_len,
                   size_t cap, unsigned char **out, size_t *out_len,
                   size_t *replaced, lk_err *err) {
  static const unsigned char mark[] = LK_SCRUB_MARK;
  lk_status st = LK_OK;
  outbuf o = {NULL, 0, 0, cap};
  size_t marks = 0;
  size_t copied = 0; /* input before this index is already emitted */
  size_t run_end = 0;
  int in_run = 0;
  int scan = s != NULL && s->n > 0;

  *out = NULL;
  *out_len = 0;
  *replaced = 0;
  o.alloc = (in_len < cap ? in_len : cap) + 16;
  o.p = malloc(o.alloc);
  if (o.p == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory scrubbing");
    goto done;
  }
  for (size_t i = 0; scan && i < in_len && st == LK_OK; i++) {
    if (in_run && i >= run_end) {
      st = out_put(&o, mark, sizeof(mark) - 1, err);
      marks++;
      in_run = 0;
      copied = run_end;
    }
    while (!in_run && i < in_len && !s->has[in[i]]) {
      i++;
    }
    size_t len = i < in_len ? match_at(s, in + i, in_len - i) : 0;
    if (len == 0 || st != LK_OK) {
      continue;
    }
    if (!in_run) {
      st = out_put(&o, in + copied, i - copied, err);
      in_run = 1;
      run_end = i + len;
    } else if (i + len > run_end) {
      run_end = i + len;
    }
  }
  if (st == LK_OK && in_run) {
    st = out_put(&o, mark, sizeof(mark) - 1, err);
    marks++;
    copied = run_end;
  }
  if (st == LK_OK && in_len > copied) {
    st = out_put(&o, in + copied, in_len - copied, err);
  }
  if (st == LK_OK) {
    *out = o.p;
    *out_len = o.len;
    *replaced = marks;
    o.p = NULL;
  }

done:
  free(o.p);
  return st;
}
