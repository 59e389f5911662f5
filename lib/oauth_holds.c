/*
 * oauth_holds.c - a refresher's holds (see oauth_holds.h): an unordered
 * array searched linearly; a removal moves the last entry into the gap.
 */
#include "lib/oauth_holds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char id[LK_OAUTH_HOLDS_ID_MAX + 1];
  int64_t until_wall_ms;
} hold;

struct lk_oauth_holds {
  hold *holds;
  size_t n;
  size_t cap;
};

lk_status lk_oauth_holds_new(size_t cap, lk_oauth_holds **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_oauth_holds *h = calloc(1, sizeof(*h));
  *out = NULL;
  if (h == NULL ||
      (h->holds = calloc(cap > 0 ? cap : 1, sizeof(*h->holds))) == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  h->cap = cap > 0 ? cap : 1;
  *out = h;
  h = NULL;
done:
  lk_oauth_holds_destroy(h);
  return st;
}

void lk_oauth_holds_destroy(lk_oauth_holds *h) {
  if (h == NULL) {
    return;
  }
  free(h->holds);
  free(h);
}

/* Returns the hold of id, or NULL. */
static hold *find(const lk_oauth_holds *h, const char *id) {
  for (size_t i = 0; i < h->n; i++) {
    if (strncmp(h->holds[i].id, id, LK_OAUTH_HOLDS_ID_MAX) == 0) {
      return &h->holds[i];
    }
  }
  return NULL;
}

void lk_oauth_holds_set(lk_oauth_holds *h, const char *id,
                        int64_t until_wall_ms) {
  hold *e = find(h, id);
  if (e != NULL) {
    if (until_wall_ms > e->until_wall_ms) {
      e->until_wall_ms = until_wall_ms;
    }
    return;
  }
  if (h->n == h->cap) { /* drop the one ending first */
    size_t k = 0;
    for (size_t i = 1; i < h->n; i++) {
      if (h->holds[i].until_wall_ms < h->holds[k].until_wall_ms) {
        k = i;
      }
    }
    h->holds[k] = h->holds[--h->n];
  }
  e = &h->holds[h->n++];
  snprintf(e->id, sizeof(e->id), "%s", id);
  e->until_wall_ms = until_wall_ms;
}

int64_t lk_oauth_holds_until(const lk_oauth_holds *h, const char *id) {
  const hold *e = find(h, id);
  return e != NULL ? e->until_wall_ms : 0;
}

void lk_oauth_holds_prune(lk_oauth_holds *h, int64_t now_wall_ms) {
  for (size_t i = 0; i < h->n;) {
    if (h->holds[i].until_wall_ms <= now_wall_ms) {
      h->holds[i] = h->holds[--h->n];
    } else {
      i++;
    }
  }
}
