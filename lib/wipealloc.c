/*
 * wipealloc.c - allocators that wipe on free (see wipealloc.h).
 *
 * The header is a union with max_align_t, so the block after it keeps
 * malloc's alignment; it holds the block's usable size, which is all free
 * needs to wipe exactly what was handed out.
 */
#include "lib/wipealloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/secret.h"

typedef union {
  size_t size;
  max_align_t align;
} header;

void *lk_wipealloc_malloc(size_t n) {
  if (n > SIZE_MAX - sizeof(header)) {
    return NULL;
  }
  header *h = malloc(sizeof(header) + n);
  if (h == NULL) {
    return NULL;
  }
  h->size = n;
  return h + 1;
}

void *lk_wipealloc_calloc(size_t nmemb, size_t size) {
  if (size != 0 && nmemb > SIZE_MAX / size) {
    return NULL;
  }
  void *p = lk_wipealloc_malloc(nmemb * size);
  if (p != NULL) {
    memset(p, 0, nmemb * size);
  }
  return p;
}

void *lk_wipealloc_realloc(void *p, size_t n) {
  if (p == NULL) {
    return lk_wipealloc_malloc(n);
  }
  size_t old = ((header *)p - 1)->size;
  void *q = lk_wipealloc_malloc(n);
  if (q == NULL) {
    return NULL;
  }
  memcpy(q, p, old < n ? old : n);
  lk_wipealloc_free(p);
  return q;
}

char *lk_wipealloc_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *q = lk_wipealloc_malloc(n);
  if (q != NULL) {
    memcpy(q, s, n);
  }
  return q;
}

void lk_wipealloc_free(void *p) {
  if (p == NULL) {
    return;
  }
  header *h = (header *)p - 1;
  lk_wipe_free(h, sizeof(header) + h->size);
}

static void *pb_alloc(void *data, size_t size) {
  (void)data;
  return lk_wipealloc_malloc(size);
}

static void pb_free(void *data, void *p) {
  (void)data;
  lk_wipealloc_free(p);
}

static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

ProtobufCAllocator *lk_wipealloc_protobuf(void) {
  return &pb_allocator;
}
