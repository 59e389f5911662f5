/*
 * secret.h - guarded memory for plaintext secrets.
 *
 * Why: a credential's plaintext must never sit in ordinary heap memory
 * where a stray free, a core dump or a reused allocation could leak it.
 * Every plaintext byte lives in libsodium's sodium_malloc memory (guard
 * pages, mlock'd, canary-checked), is NUL-terminated so it can be handed to
 * C string APIs, and is wiped by the only function that frees it.
 *
 * Invariants: an lk_secret's bytes are always followed by a NUL at
 * data[len]; lk_secret_free and lk_secret_buf_free wipe before freeing;
 * an lk_secret_buf never grows past the cap fixed when it was created, and
 * growing it moves the bytes between guarded regions only.
 */
#ifndef LK_SECRET_H
#define LK_SECRET_H

#include <stddef.h>

#include "lib/status.h"

/* Opaque; the bytes live in sodium_malloc memory, NUL-terminated after len. */
typedef struct lk_secret lk_secret;

/* Growable guarded buffer with a hard cap fixed at creation. */
typedef struct lk_secret_buf lk_secret_buf;

/* Initializes libsodium once for the process (thread-safe, idempotent);
 * daemons call it at startup, and every allocating function here calls it
 * too. Returns LK_INTERNAL when libsodium cannot initialize. */
lk_status lk_secret_init(void) LK_MUST_CHECK;

/* Returns a zeroed secret of len bytes (len+1 usable, the last one NUL), or
 * NULL when out of memory or libsodium cannot initialize. */
lk_secret *lk_secret_new(size_t len);

/* Returns a secret holding a copy of the len bytes at p (p may be NULL when
 * len is 0), or NULL when out of memory. */
lk_secret *lk_secret_from(const void *p, size_t len);

/* Returns the secret's bytes (len of them, then a NUL). */
const unsigned char *lk_secret_data(const lk_secret *s);

/* Returns the secret's bytes for writing; data[len] must stay NUL. */
unsigned char *lk_secret_mut(lk_secret *s);

/* Returns the secret's bytes as a NUL-terminated C string (a secret holding
 * a NUL byte reads shorter through this view than lk_secret_len says). */
const char *lk_secret_str(const lk_secret *s);

/* Returns the number of secret bytes, excluding the trailing NUL. */
size_t lk_secret_len(const lk_secret *s);

/* Wipes and frees s; NULL is a no-op. */
void lk_secret_free(lk_secret *s);

/* Overwrites n bytes at p with zeros in a way the compiler cannot elide. */
void lk_wipe(void *p, size_t n);

/* Wipes n bytes at p then free()s p: for malloc'd buffers that held secret
 * bytes; NULL is a no-op. */
void lk_wipe_free(void *p, size_t n);

/* Returns 1 when the alen bytes at a equal the blen bytes at b, else 0. The
 * comparison of equal-length inputs takes time independent of their
 * contents; differing lengths return 0 at once (lengths are not secret). */
int lk_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* Disables core dumps for this process (RLIMIT_CORE 0 and not dumpable), so
 * a crash cannot write plaintext to disk. LK_INTERNAL when the kernel
 * refuses either step. */
lk_status lk_secret_disable_core_dumps(lk_err *err) LK_MUST_CHECK;

/* Returns an empty builder that will hold at most cap bytes, or NULL when
 * out of memory or cap is absurd (>= SIZE_MAX / 2). */
lk_secret_buf *lk_secret_buf_new(size_t cap);

/* Appends n bytes at p; LK_RESOURCE_EXHAUSTED (content unchanged) when the
 * result would exceed the cap or guarded memory runs out. */
lk_status lk_secret_buf_append(lk_secret_buf *b, const void *p, size_t n,
                               lk_err *err) LK_MUST_CHECK;

/* Appends the NUL-terminated string s; same failures as lk_secret_buf_append.
 */
lk_status lk_secret_buf_append_str(lk_secret_buf *b, const char *s,
                                   lk_err *err) LK_MUST_CHECK;

/* Returns the number of bytes appended so far. */
size_t lk_secret_buf_len(const lk_secret_buf *b);

/* Turns the builder into an lk_secret with its content and frees the
 * builder; returns NULL (builder still wiped and freed) when out of memory
 * or b is NULL. */
lk_secret *lk_secret_buf_finish(lk_secret_buf *b);

/* Wipes and frees the builder; NULL is a no-op. */
void lk_secret_buf_free(lk_secret_buf *b);

#endif
