/*
 * token.h - bearer tokens read from files and checked in constant time.
 *
 * Why: the admin listener (and later agent and node listeners) admit a
 * caller only when its "authorization: Bearer <token>" metadata matches a
 * token the operator put in a file. Comparing BLAKE2b digests with
 * sodium_memcmp keeps the check constant-time even for wrong lengths, and
 * only the digest stays in memory after loading.
 */
#ifndef LK_TOKEN_H
#define LK_TOKEN_H

#include <stddef.h>

#include "lib/status.h"

typedef struct lk_token lk_token;

/* Reads the token from path (trailing whitespace stripped). Empty or
 * unreadable files and tokens shorter than 16 bytes are refused with a
 * message naming the path. */
lk_status lk_token_load(const char *path, lk_token **out,
                        lk_err *err) LK_MUST_CHECK;

/* Frees the token; NULL is ignored. */
void lk_token_destroy(lk_token *t);

/* Returns 1 when value (the raw "authorization" metadata) is exactly
 * "Bearer <token>", else 0. Constant time in the token's content. */
int lk_token_check_bearer(const lk_token *t, const char *value, size_t len);

#endif
