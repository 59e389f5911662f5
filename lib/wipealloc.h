/*
 * wipealloc.h - heap allocators whose free wipes, for libraries that copy
 * secret bytes into memory of their own.
 *
 * Why: protobuf-c (unpacking an Admin request that carries plaintext
 * credential fields) and libcurl (its copies of URLs, headers and
 * user:pass) allocate through hooks, but their frees are given a pointer
 * and no size, so plain free() would release the bytes as they are. These
 * functions keep each block's size in a header in front of it, so the only
 * way to free one wipes the whole block first.
 *
 * Invariants: every block handed out is aligned like malloc's and
 * preceded by its header; lk_wipealloc_free wipes header and block before
 * free(); lk_wipealloc_realloc moves to a new block and wipes the old one
 * (never realloc() in place, which could leave a copy behind); a block from
 * here must be freed here, and only here. Memory is ordinary heap, not
 * guarded: use lk_secret for plaintext the project itself holds.
 */
#ifndef LK_WIPEALLOC_H
#define LK_WIPEALLOC_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* Returns a block of n bytes, or NULL when out of memory. */
void *lk_wipealloc_malloc(size_t n);

/* Returns a zeroed block of nmemb * size bytes, or NULL when out of memory
 * or the product overflows. */
void *lk_wipealloc_calloc(size_t nmemb, size_t size);

/* Returns a block of n bytes holding the first min(old, n) bytes of p (p
 * may be NULL) and wipes and frees p; NULL (p untouched) when out of
 * memory. */
void *lk_wipealloc_realloc(void *p, size_t n);

/* Returns a copy of s in a block from here, or NULL when out of memory. */
char *lk_wipealloc_strdup(const char *s);

/* Wipes and frees a block from here; NULL is a no-op. */
void lk_wipealloc_free(void *p);

/* Returns the protobuf-c allocator over these functions, to pass to
 * unpack and to the matching free_unpacked of any message that may hold
 * secret bytes. */
ProtobufCAllocator *lk_wipealloc_protobuf(void);

#endif
