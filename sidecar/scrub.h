/*
 * scrub.h - removing echoes of a credential from a vendor's response.
 *
 * Why: vendors echo what they were sent (error pages quoting the request,
 * debug endpoints, "invalid key abcd..." messages), often re-encoded. The
 * agent must never see a secret, so every response body and header value
 * passes through a scrubber built from the credential that was injected.
 *
 * A scrubber holds "needles": for each secret field value of at least
 * LK_SCRUB_MIN_SECRET bytes its raw bytes, standard base64 (padded and
 * unpadded), base64url (padded and unpadded), percent-encoding (upper-
 * and lower-case hex, and with '+' for space) and JSON-escaped forms (with
 * and without "\/"); and for basic auth "user:pass" raw and in base64.
 * Needles and their index live in guarded (lk_secret) memory and are wiped
 * by lk_scrubber_destroy. Non-secret fields are not needles.
 */
#ifndef LK_SCRUB_H
#define LK_SCRUB_H

#include <stddef.h>

#include "lib/secret.h"
#include "lib/status.h"
#include "sidecar/inject.h"

/* Secret values shorter than this are not scrubbed (too many false hits). */
#define LK_SCRUB_MIN_SECRET 4

/* Longest secret value a scrubber accepts, in bytes. */
#define LK_SCRUB_MAX_SECRET ((size_t)64 * 1024)

/* What every needle occurrence is replaced with. */
#define LK_SCRUB_MARK "[REDACTED]"

typedef struct lk_scrubber lk_scrubber;

/* Sets *out to a scrubber for the secret fields among the n_fields in
 * fields and for basic_userpwd ("user:pass", NULL if none); the values are
 * copied, so the caller may free them. LK_RESOURCE_EXHAUSTED when a value
 * exceeds LK_SCRUB_MAX_SECRET or guarded memory runs out. */
lk_status lk_scrubber_new(const lk_field *fields, size_t n_fields,
                          const lk_secret *basic_userpwd, lk_scrubber **out,
                          lk_err *err) LK_MUST_CHECK;

/* Copies the in_len bytes at in to *out (malloc'd, free()) with every
 * needle occurrence replaced by LK_SCRUB_MARK, trying the longest needle
 * first at each position; occurrences that overlap are merged into one
 * mark. Sets *out_len and *replaced (marks written). s may be NULL (no
 * needles). LK_RESOURCE_EXHAUSTED (nothing returned) when the output would
 * exceed cap bytes. */
lk_status lk_scrub(const lk_scrubber *s, const unsigned char *in, size_t in_len,
                   size_t cap, unsigned char **out, size_t *out_len,
                   size_t *replaced, lk_err *err) LK_MUST_CHECK;

/* Returns the number of distinct needles s holds (0 for NULL). */
size_t lk_scrubber_needles(const lk_scrubber *s);

/* Wipes and frees s; NULL is a no-op. */
void lk_scrubber_destroy(lk_scrubber *s);

#endif
