/*
 * store.h - the node's durable key-value store (RocksDB), wrapped once.
 *
 * Why: every persistent record (tools, types, credentials with sealed
 * fields, budgets, bindings, the applied sync revision) lives in one
 * RocksDB per data dir. This module is the only place that speaks RocksDB's
 * C API and its errptr convention, so callers see lk_status only.
 *
 * Contract: keys are NUL-terminated strings of at most LK_STORE_MAX_KEY_BYTES
 * bytes, ordered bytewise; values are bytes, at most LK_STORE_MAX_VALUE_BYTES.
 * Every write is synced (WAL fsync) before it returns, so an acknowledged
 * write survives a crash. Values may hold sealed secrets, so every value
 * buffer handed out is wiped when freed. An lk_store is safe to use from
 * many threads at once; an lk_store_batch belongs to one thread.
 */
#ifndef LK_STORE_H
#define LK_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/status.h"

#define LK_STORE_MAX_KEY_BYTES 4096u
#define LK_STORE_MAX_VALUE_BYTES (4u * 1024u * 1024u)
/* A batch holds at most this many key and value bytes in total. */
#define LK_STORE_MAX_BATCH_BYTES (256u * 1024u * 1024u)

typedef struct lk_store lk_store;
typedef struct lk_store_batch lk_store_batch;

/* Opens (creating when missing, mode 0700) the store in dir. LK_UNAVAILABLE
 * with RocksDB's message when it cannot be opened (for example locked by
 * another process); LK_FAILED_PRECONDITION when its files are corrupt or
 * the directory cannot be created. */
lk_status lk_store_open(const char *dir, lk_store **out,
                        lk_err *err) LK_MUST_CHECK;

/* Closes the store, waiting for background work; NULL is a no-op. */
void lk_store_close(lk_store *s);

/* Reads key's value into *val (malloc'd; free with lk_store_value_free) and
 * *len. LK_NOT_FOUND (with *val NULL) when the key is absent. */
lk_status lk_store_get(lk_store *s, const char *key, unsigned char **val,
                       size_t *len, lk_err *err) LK_MUST_CHECK;

/* Returns the store's write generation: a counter that every put, delete
 * and batch write bumps after RocksDB applied it and before it returns
 * (failed writes too). A value read after taking generation g reflects
 * every write that had returned by then, so a copy of it tagged g stays
 * exact while lk_store_generation still returns g. */
uint64_t lk_store_generation(lk_store *s);

/* Wipes the len bytes of a value from lk_store_get, then frees it; NULL ok. */
void lk_store_value_free(unsigned char *val, size_t len);

/* Writes key = val (len bytes) and syncs it. LK_RESOURCE_EXHAUSTED when len
 * exceeds LK_STORE_MAX_VALUE_BYTES; LK_INVALID_ARGUMENT for a bad key. */
lk_status lk_store_put(lk_store *s, const char *key, const unsigned char *val,
                       size_t len, lk_err *err) LK_MUST_CHECK;

/* Deletes key (absent is not an error) and syncs it. */
lk_status lk_store_delete(lk_store *s, const char *key,
                          lk_err *err) LK_MUST_CHECK;

/* Returns an empty batch, or NULL when out of memory. */
lk_store_batch *lk_store_batch_new(void);

/* Adds key = val to the batch. An oversized key or value, or a batch past
 * LK_STORE_MAX_BATCH_BYTES, poisons the batch: lk_store_write then fails
 * and writes none of it. */
void lk_store_batch_put(lk_store_batch *b, const char *key,
                        const unsigned char *val, size_t len);

/* Adds a delete of key to the batch (poisons it like lk_store_batch_put). */
void lk_store_batch_delete(lk_store_batch *b, const char *key);

/* Applies the whole batch atomically and synced, or none of it: the
 * poisoning error (LK_RESOURCE_EXHAUSTED or LK_INVALID_ARGUMENT) or
 * LK_UNAVAILABLE. The batch stays owned by the caller. */
lk_status lk_store_write(lk_store *s, lk_store_batch *b,
                         lk_err *err) LK_MUST_CHECK;

/* Wipes the batch's buffered values and frees it; NULL is a no-op. */
void lk_store_batch_destroy(lk_store_batch *b);

/* Opens a store kept wholly in memory (no files, no WAL), for a copy that
 * is rebuilt from its source at start: the control plane's mirror of etcd.
 * name only labels it and must be an absolute path ("/mirror"). Close
 * with lk_store_close. */
lk_status lk_store_open_memory(const char *name, lk_store **out,
                               lk_err *err) LK_MUST_CHECK;

/* Visitors for lk_store_batch_iterate; keys are not NUL-terminated. */
typedef void (*lk_store_batch_put_fn)(void *ctx, const char *key,
                                      size_t key_len, const unsigned char *val,
                                      size_t val_len);
typedef void (*lk_store_batch_delete_fn)(void *ctx, const char *key,
                                         size_t key_len);

/* Calls put or del for every operation of b, in order, so a batch built
 * for the local store can be committed elsewhere (an etcd Txn). */
void lk_store_batch_iterate(const lk_store_batch *b, lk_store_batch_put_fn put,
                            lk_store_batch_delete_fn del, void *ctx);

/* LK_OK, or why lk_store_write would refuse b (an invalid or oversized
 * record was added). */
lk_status lk_store_batch_status(const lk_store_batch *b,
                                lk_err *err) LK_MUST_CHECK;

/* Called per key in order; key is NUL-terminated (key_len excludes the
 * NUL); key and val are valid only during the call. Return nonzero to stop. */
typedef int (*lk_store_scan_fn)(void *ctx, const char *key, size_t key_len,
                                const unsigned char *val, size_t val_len);

/* Calls fn for every key starting with prefix ("" = all), in bytewise
 * order, over a consistent snapshot; stopping early is LK_OK. */
lk_status lk_store_scan(lk_store *s, const char *prefix, lk_store_scan_fn fn,
                        void *ctx, lk_err *err) LK_MUST_CHECK;

/* Flushes memtables, compacts the whole key range down to the last level
 * and purges obsolete files, so deleted or overwritten values no longer
 * appear in any file under the store's directory. */
lk_status lk_store_flush_compact(lk_store *s, lk_err *err) LK_MUST_CHECK;

#endif
