/*
 * oauth_holds.h - a refresher's holds: per-credential wall-clock times
 * before which it leaves a credential alone, shared by the two OAuth
 * refreshers (controlplane/oauth_refresh, sidecar/local_refresh).
 *
 * Why: after an attempt whose outcome could not be stored, a claim held
 * elsewhere, or store trouble, a refresher must not ask the provider again
 * at the next scan. Both keep the same small table; here it is once.
 *
 * A table holds at most cap entries; setting one more when full drops the
 * hold that ends first. A hold is never shortened (a later one set before
 * stays). Ids longer than LK_OAUTH_HOLDS_ID_MAX bytes are cut. Not thread
 * safe: the caller locks.
 */
#ifndef LK_OAUTH_HOLDS_H
#define LK_OAUTH_HOLDS_H

#include <stddef.h>
#include <stdint.h>

#include "lib/status.h"

/* Longest credential id kept (lib/catalog.h LK_CATALOG_ID_MAX). */
#define LK_OAUTH_HOLDS_ID_MAX 128

typedef struct lk_oauth_holds lk_oauth_holds;

/* Creates an empty table of at most cap (>= 1) holds in *out;
 * LK_RESOURCE_EXHAUSTED when memory runs out. */
lk_status lk_oauth_holds_new(size_t cap, lk_oauth_holds **out,
                             lk_err *err) LK_MUST_CHECK;

/* Frees the table; NULL is a no-op. */
void lk_oauth_holds_destroy(lk_oauth_holds *h);

/* Leaves id alone until until_wall_ms (unix ms; a later hold stays). */
void lk_oauth_holds_set(lk_oauth_holds *h, const char *id,
                        int64_t until_wall_ms);

/* Returns when id's hold ends (unix ms), or 0 when it has none. */
int64_t lk_oauth_holds_until(const lk_oauth_holds *h, const char *id);

/* Drops the holds that end at or before now_wall_ms. */
void lk_oauth_holds_prune(lk_oauth_holds *h, int64_t now_wall_ms);

#endif
