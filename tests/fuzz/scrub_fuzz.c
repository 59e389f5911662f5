/*
 * scrub_fuzz.c - fuzzes sidecar/scrub: the last line of defence between a
 * vendor's response and the agent.
 *
 * The input is a vendor response body scrubbed with a scrubber built once
 * from fixed, realistic credential values: a GitHub-style token, an AWS-
 * style key id, a password with characters every encoding treats
 * differently (space, '/', '+', '"', '\', non-ASCII), a non-secret user
 * name, a secret too short to scrub, and the basic "user:password" pair.
 * When the input holds the byte 0x1F, the bytes before it (4 to 4096 of
 * them) are one more secret value and a fresh scrubber is built for it and
 * the fixed ones, so building is fuzzed too; the bytes after it are the
 * response.
 *
 * Invariants (a break traps):
 * - The output never contains a raw secret value, the raw user:password,
 *   or the standard base64 of either, nor the upper-case percent-encoding
 *   of the password. (This holds for any value without '[' or ']' that is
 *   not itself inside "[REDACTED]": a mark can then never combine with its
 *   neighbours into a secret. The extra secret is checked only then.)
 * - No replacement means the output equals the input, byte for byte.
 * - With a cap the output cannot reach, lk_scrub succeeds; with a smaller
 *   cap it either returns the same bytes within the cap or fails with
 *   LK_RESOURCE_EXHAUSTED and returns nothing.
 * - A NULL scrubber copies the input unchanged.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/secret.h"
#include "sidecar/inject.h"
#include "sidecar/scrub.h"
#include "tests/fuzz/fuzz_target.h"

#define SEP 0x1f
#define MAX_EXTRA_SECRET 4096
#define N_FIXED 5
#define MAX_FORBIDDEN 16

static const char *const fixed_names[N_FIXED] = {"token", "access_key",
                                                 "password", "user", "pin"};
static const char *const fixed_values[N_FIXED] = {
    "ghp_9fXk2LmQ7rTz4VwB1nYc8HsJ0dPa6Ue3",
    "AKIAIOSFODNN7EXAMPLE",
    "p@ss w/rd+\"q\"\\\xc3\xa9-2024",
    "alice",
    "123",
};
static const int fixed_secret[N_FIXED] = {1, 1, 1, 0, 1};
#define BASIC_USERPWD "alice:p@ss w/rd+\"q\"\\\xc3\xa9-2024"

/* A byte string the output must never contain. */
typedef struct {
  unsigned char *p;
  size_t len;
} forbidden;

typedef struct {
  lk_field fields[N_FIXED + 1];
  lk_secret *userpwd;
  lk_scrubber *scrubber;
  forbidden forbid[MAX_FORBIDDEN];
  size_t n_forbid;
} fixture;

static fixture fx;

static void check(int ok) {
  if (!ok) {
    __builtin_trap();
  }
}

static void add_forbidden(fixture *f, const void *p, size_t len) {
  check(f->n_forbid < MAX_FORBIDDEN);
  f->forbid[f->n_forbid].p = malloc(len);
  check(f->forbid[f->n_forbid].p != NULL);
  memcpy(f->forbid[f->n_forbid].p, p, len);
  f->forbid[f->n_forbid].len = len;
  f->n_forbid++;
}

static void add_base64(fixture *f, const char *v) {
  size_t n = strlen(v);
  size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
  char *b64 = malloc(cap);
  check(b64 != NULL);
  sodium_bin2base64(b64, cap, (const unsigned char *)v, n,
                    sodium_base64_VARIANT_ORIGINAL);
  add_forbidden(f, b64, strlen(b64));
  free(b64);
}

static void add_percent(fixture *f, const char *v) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(v);
  char *out = malloc(3 * n + 1);
  size_t len = 0;
  check(out != NULL);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)v[i];
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
        (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
        c == '~') {
      out[len++] = (char)c;
    } else {
      out[len++] = '%';
      out[len++] = hex[c >> 4];
      out[len++] = hex[c & 15];
    }
  }
  add_forbidden(f, out, len);
  free(out);
}

static void release_fixture(void) {
  lk_scrubber_destroy(fx.scrubber);
  lk_secret_free(fx.userpwd);
  for (size_t i = 0; i < N_FIXED; i++) {
    lk_secret_free((lk_secret *)fx.fields[i].value);
  }
  for (size_t i = 0; i < fx.n_forbid; i++) {
    free(fx.forbid[i].p);
  }
  memset(&fx, 0, sizeof(fx));
}

/* Builds the fixed fields, their scrubber and the forbidden list once. */
static void init_fixture(void) {
  static int ready;
  lk_err err;
  if (ready) {
    return;
  }
  ready = 1;
  check(lk_secret_init() == LK_OK);
  for (size_t i = 0; i < N_FIXED; i++) {
    fx.fields[i].name = fixed_names[i];
    fx.fields[i].secret = fixed_secret[i];
    fx.fields[i].value =
        lk_secret_from(fixed_values[i], strlen(fixed_values[i]));
    check(fx.fields[i].value != NULL);
    if (fixed_secret[i] && strlen(fixed_values[i]) >= LK_SCRUB_MIN_SECRET) {
      add_forbidden(&fx, fixed_values[i], strlen(fixed_values[i]));
      add_base64(&fx, fixed_values[i]);
    }
  }
  fx.userpwd = lk_secret_from(BASIC_USERPWD, strlen(BASIC_USERPWD));
  check(fx.userpwd != NULL);
  add_forbidden(&fx, BASIC_USERPWD, strlen(BASIC_USERPWD));
  add_base64(&fx, BASIC_USERPWD);
  add_percent(&fx, fixed_values[2]);
  check(lk_scrubber_new(fx.fields, N_FIXED, fx.userpwd, &fx.scrubber, &err) ==
        LK_OK);
  check(lk_scrubber_needles(fx.scrubber) > 0);
  atexit(release_fixture);
}

/* Returns 1 when a mark can never combine with its neighbours into v. */
static int checkable(const unsigned char *v, size_t n) {
  static const char mark[] = LK_SCRUB_MARK;
  return n >= LK_SCRUB_MIN_SECRET && memchr(v, '[', n) == NULL &&
         memchr(v, ']', n) == NULL &&
         memmem(mark, sizeof(mark) - 1, v, n) == NULL;
}

static void check_clean(const unsigned char *out, size_t out_len,
                        const unsigned char *extra, size_t extra_len) {
  for (size_t i = 0; i < fx.n_forbid; i++) {
    check(memmem(out, out_len, fx.forbid[i].p, fx.forbid[i].len) == NULL);
  }
  if (extra != NULL && checkable(extra, extra_len)) {
    check(memmem(out, out_len, extra, extra_len) == NULL);
  }
}

/* Scrubs body with s under every cap rule and checks the results. */
static void scrub_and_check(const lk_scrubber *s, const unsigned char *body,
                            size_t len, const unsigned char *extra,
                            size_t extra_len, unsigned char cap_byte) {
  unsigned char *out = NULL;
  unsigned char *small = NULL;
  size_t out_len = 0;
  size_t small_len = 0;
  size_t replaced = 0;
  size_t small_replaced = 0;
  lk_err err;

  /* A mark (10 bytes) replaces at least LK_SCRUB_MIN_SECRET bytes. */
  size_t roomy = 3 * len + 16;
  check(lk_scrub(s, body, len, roomy, &out, &out_len, &replaced, &err) ==
        LK_OK);
  check(out != NULL && out_len <= roomy);
  check_clean(out, out_len, extra, extra_len);
  if (replaced == 0) {
    check(out_len == len && memcmp(out, body, len) == 0);
  } else {
    check(out_len >= replaced * (sizeof(LK_SCRUB_MARK) - 1));
  }

  size_t cap = len * cap_byte / 255;
  lk_status st =
      lk_scrub(s, body, len, cap, &small, &small_len, &small_replaced, &err);
  if (st == LK_OK) {
    check(small_len <= cap && small_len == out_len &&
          small_replaced == replaced);
    check(small_len == 0 || memcmp(small, out, small_len) == 0);
  } else {
    check(st == LK_RESOURCE_EXHAUSTED && small == NULL);
    check(out_len > cap);
  }
  free(small);
  free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned char cap_byte = size > 0 ? data[size - 1] : 0;
  unsigned char *copy = NULL;
  size_t copy_len = 0;
  size_t copy_replaced = 0;
  lk_err err;

  init_fixture();

  check(lk_scrub(NULL, data, size, size, &copy, &copy_len, &copy_replaced,
                 &err) == LK_OK);
  check(copy_len == size && copy_replaced == 0 &&
        (size == 0 || memcmp(copy, data, size) == 0));
  free(copy);

  const uint8_t *sep = memchr(data, SEP, size);
  size_t extra_len = sep != NULL ? (size_t)(sep - data) : 0;
  if (sep == NULL || extra_len < LK_SCRUB_MIN_SECRET ||
      extra_len > MAX_EXTRA_SECRET) {
    scrub_and_check(fx.scrubber, data, size, NULL, 0, cap_byte);
    return 0;
  }

  lk_field fields[N_FIXED + 1];
  lk_scrubber *s = NULL;
  memcpy(fields, fx.fields, sizeof(fx.fields[0]) * N_FIXED);
  fields[N_FIXED].name = "extra";
  fields[N_FIXED].secret = 1;
  fields[N_FIXED].value = lk_secret_from(data, extra_len);
  check(fields[N_FIXED].value != NULL);
  check(lk_scrubber_new(fields, N_FIXED + 1, fx.userpwd, &s, &err) == LK_OK);
  scrub_and_check(s, sep + 1, size - extra_len - 1, data, extra_len, cap_byte);
  lk_scrubber_destroy(s);
  lk_secret_free((lk_secret *)fields[N_FIXED].value);
  return 0;
}
