/*
 * catalog_cache.h - decoded, shared, read-only catalog records for the
 * tool-call path, valid for one store write generation.
 *
 * Why: every ToolCalls/Call reads the same five or six records (budget,
 * tool, binding, credential, credential type). The store already answers
 * those reads from its byte cache; what remained per call was decoding
 * each record with protobuf-c and freeing it again. This cache keeps the
 * decoded records, so a call takes a reference instead of a decode.
 *
 * Contract:
 * - A record is cached under its store key, tagged with the store's write
 *   generation (lk_store_generation) taken before the store read that
 *   produced it, and served only while that generation is still current.
 *   Every store write (put, delete, batch: the catalog's commits, the
 *   replica applier's and the control plane mirror's batches) bumps the
 *   generation before it returns, so a lookup that starts after a write
 *   returned never sees a record read before it: exactly what an uncached
 *   read would return. Misses (absent keys) are never cached.
 * - Records handed out are shared and immutable: the caller holds one
 *   reference and gives it back with lk_catalog_cache_release, never with
 *   protobuf_c_message_free_unpacked. A held record stays valid after the
 *   cache replaces or drops its entry; the last release frees it.
 * - Bounded: at most max_entries records and max_bytes decoded bytes
 *   (every allocation of every record, headers included) are held by the
 *   cache itself; a record larger than an eighth of max_bytes is decoded
 *   for its caller but not kept. Records that callers still hold after
 *   the cache dropped them are the callers' (one per call in flight).
 * - Every allocation of a record comes from lib/wipealloc, so freeing a
 *   record wipes it: a Credential's sealed fields are ciphertext, as in
 *   the store's own byte cache, and no freed heap block keeps a copy.
 * - Safe to use from many threads at once.
 */
#ifndef LK_CATALOG_CACHE_H
#define LK_CATALOG_CACHE_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "lib/status.h"
#include "lib/store.h"

/* Defaults used by the catalog. */
#define LK_CATALOG_CACHE_ENTRIES 256u
#define LK_CATALOG_CACHE_BYTES (1024u * 1024u)

/* Longest key the cache keeps (longer keys are decoded, not kept). */
#define LK_CATALOG_CACHE_KEY_MAX 320u

typedef struct lk_catalog_cache lk_catalog_cache;

/* Creates an empty cache holding at most max_entries records (rounded
 * down to a multiple of 4, at least 4) of at most max_bytes in total.
 * LK_RESOURCE_EXHAUSTED when out of memory. */
lk_status lk_catalog_cache_new(size_t max_entries, size_t max_bytes,
                               lk_catalog_cache **out,
                               lk_err *err) LK_MUST_CHECK;

/* Drops the cache's references and frees it; records callers still hold
 * stay valid until released. NULL is a no-op. */
void lk_catalog_cache_destroy(lk_catalog_cache *cc);

/* Sets *out to a held reference to the record stored under key in s,
 * decoded as desc: from the cache when it holds one read under the
 * current generation, else read from s (one lk_store_get) and kept.
 * LK_NOT_FOUND (store's message) when key is absent; LK_INTERNAL (naming
 * the key and noun) when the bytes do not decode; the store's errors;
 * LK_RESOURCE_EXHAUSTED when out of memory. *out is set only on LK_OK. */
lk_status lk_catalog_cache_get(lk_catalog_cache *cc, lk_store *s,
                               const char *key,
                               const ProtobufCMessageDescriptor *desc,
                               const char *noun, const ProtobufCMessage **out,
                               lk_err *err) LK_MUST_CHECK;

/* Gives back a reference from lk_catalog_cache_get; the last one frees
 * (and wipes) the record. NULL is a no-op. */
void lk_catalog_cache_release(const ProtobufCMessage *m);

/* Reports how many records and decoded bytes the cache itself holds. */
void lk_catalog_cache_usage(lk_catalog_cache *cc, size_t *entries,
                            size_t *bytes);

#endif
