/*
 * etcd.h - an etcd v3 client over grpc core's C client API.
 *
 * Why: the control plane is stateless; its source of truth is etcd
 * (DESIGN.md §5). This module is the only place that speaks etcd's gRPC
 * API (protos/etcd/etcd.proto), so callers see lk_status, keys relative to
 * one prefix, and revisions.
 *
 * Contract:
 *  - Every key passed in or handed out is relative to the prefix given to
 *    lk_etcd_open; the client prepends and strips it, so nothing outside
 *    the prefix is ever visible or writable, with one exception: a
 *    relative name starting with LK_ETCD_OUTSIDE names a key beside the
 *    prefix (see lk_etcd_fence_key for where), so no Range or Watch of the
 *    prefix ever sees it. Get, put, delete and compare such names like any
 *    key; they cannot be ranged or watched. LK_ETCD_FENCE_KEY is one.
 *    Keys are C strings (no NUL).
 *  - Every unary call has a deadline (LK_ETCD_DEADLINE_MS). gRPC
 *    UNAVAILABLE or an attempt's share of the deadline running out moves
 *    on to the next endpoint at once, round after round with short pauses;
 *    when the deadline passes without an answer the result is
 *    LK_UNAVAILABLE ("etcd at <endpoint> unreachable: ..."). Any other
 *    error from etcd is final.
 *  - A revision compacted away is LK_FAILED_PRECONDITION with the compact
 *    revision in the message (range) or the callback (watch); the caller
 *    takes a new snapshot.
 *  - Values may hold sealed secrets: every request and response buffer
 *    this module owns is wiped before it is freed, and values handed out
 *    are freed with lk_etcd_value_free, which wipes.
 *  - An lk_etcd is safe to use from many threads at once; an lk_etcd_txn
 *    belongs to one thread. Stop and destroy every watch before
 *    lk_etcd_close.
 */
#ifndef LK_ETCD_H
#define LK_ETCD_H

#include <stddef.h>
#include <stdint.h>

#include "lib/status.h"

/* Deadline of every unary call (all endpoint attempts share it). */
#define LK_ETCD_DEADLINE_MS 5000
/* Largest gRPC message accepted from etcd. */
#define LK_ETCD_MAX_RECV_BYTES (64 * 1024 * 1024)
/* lk_etcd_range asks for this many keys per page. */
#define LK_ETCD_RANGE_PAGE 500
/* etcd's default --max-txn-ops: a txn holds at most this many compares,
 * and at most this many operations. */
#define LK_ETCD_MAX_TXN_OPS 128
/* A txn holds at most this many key and value bytes in total (etcd's
 * default --max-request-bytes is 1.5 MiB and rejects larger requests). */
#define LK_ETCD_MAX_TXN_BYTES (8u * 1024u * 1024u)
/* At most this many comma-separated endpoints. */
#define LK_ETCD_MAX_ENDPOINTS 16

/* A relative name LK_ETCD_OUTSIDE "name" stands for the etcd key made of
 * the prefix with its last byte replaced by '.' ('_' when it is a '.')
 * followed by name: "/latchkey/" and "oauth-claim/c1" give
 * "/latchkey.oauth-claim/c1". Such a key differs from every key under the
 * prefix at the prefix's last byte, so it is never inside the prefix and
 * is never mirrored or replicated: for coordination between control
 * planes (the key-ring fence, OAuth refresh claims). */
#define LK_ETCD_OUTSIDE "\x01"

/* The relative name of the fence key (see lk_etcd_fence_key). */
#define LK_ETCD_FENCE_KEY LK_ETCD_OUTSIDE "keyring-fence"

typedef struct lk_etcd lk_etcd;
typedef struct lk_etcd_txn lk_etcd_txn;
typedef struct lk_etcd_watch lk_etcd_watch;

/* Opens a client for endpoints ("host:port[,host:port...]", an http://
 * scheme is accepted and ignored) with all keys under prefix (for example
 * "/latchkey/"; must be non-empty). Creates one gRPC channel per endpoint
 * and connects lazily, so an unreachable etcd shows at the first call.
 * LK_INVALID_ARGUMENT for a malformed endpoint list, an https:// endpoint
 * or an empty prefix. */
lk_status lk_etcd_open(const char *endpoints, const char *prefix, lk_etcd **out,
                       lk_err *err) LK_MUST_CHECK;

/* Closes every channel; NULL is a no-op. Every watch must be destroyed
 * first. */
void lk_etcd_close(lk_etcd *e);

/* Reads key's latest value into *val (malloc'd, NUL-terminated after len;
 * free with lk_etcd_value_free) and *len, and its mod revision into
 * *mod_revision (may be NULL). LK_NOT_FOUND (with *val NULL) when absent. */
lk_status lk_etcd_get(lk_etcd *e, const char *key, unsigned char **val,
                      size_t *len, int64_t *mod_revision,
                      lk_err *err) LK_MUST_CHECK;

/* Returns the client's fence key, the full etcd key LK_ETCD_FENCE_KEY
 * names: the prefix with its last byte replaced by '.' ('_' when it is a
 * '.') followed by "keyring-fence", so "/latchkey/" gives
 * "/latchkey.keyring-fence". It differs from every key under the prefix
 * at the prefix's last byte, so it is never inside the prefix. */
const char *lk_etcd_fence_key(const lk_etcd *e);

/* Writes the full etcd key that relative name rel stands for (the prefix
 * and rel, or for an LK_ETCD_OUTSIDE name the key beside the prefix) into
 * out as a C string, for messages and tools. Returns its length, or 0
 * when it does not fit in cap bytes (out is then ""). */
size_t lk_etcd_full_key(const lk_etcd *e, const char *rel, char *out,
                        size_t cap);

/* Wipes the len bytes of a value from lk_etcd_get, then frees it; NULL ok. */
void lk_etcd_value_free(unsigned char *val, size_t len);

/* Called per key in key order; key and val are valid only during the call
 * (val is not NUL-terminated). Return nonzero to stop the scan. */
typedef int (*lk_etcd_kv_fn)(void *ctx, const char *key,
                             const unsigned char *val, size_t len,
                             int64_t mod_revision);

/* Calls fn for every key starting with prefix ("" for all), as one
 * consistent snapshot: at at_revision, or at the latest revision when 0,
 * paged LK_ETCD_RANGE_PAGE keys at a time with every page pinned to the
 * first page's revision, which is stored in *header_revision (may be
 * NULL). A nonzero return from fn stops the scan and still returns LK_OK.
 * LK_FAILED_PRECONDITION ("... compacted (compact revision N) ...") when
 * at_revision has been compacted; LK_INVALID_ARGUMENT when it is in the
 * future. */
lk_status lk_etcd_range(lk_etcd *e, const char *prefix, int64_t at_revision,
                        lk_etcd_kv_fn fn, void *ctx, int64_t *header_revision,
                        lk_err *err) LK_MUST_CHECK;

/* Returns an empty transaction, or NULL when out of memory. */
lk_etcd_txn *lk_etcd_txn_new(void);

/* Adds the condition "key's mod revision is mod_revision" (0: key must not
 * exist). Too many compares or bytes poison the txn, like every builder
 * call: lk_etcd_txn_commit then fails and sends nothing. */
void lk_etcd_txn_expect_mod_revision(lk_etcd_txn *t, const char *key,
                                     int64_t mod_revision);

/* Adds the condition "key exists and its value is the len bytes at val"
 * (copied; wiped when the txn is destroyed). A missing key fails it. */
void lk_etcd_txn_expect_value(lk_etcd_txn *t, const char *key,
                              const unsigned char *val, size_t len);

/* Adds key = val (len bytes, copied; wiped when the txn is destroyed). */
void lk_etcd_txn_put(lk_etcd_txn *t, const char *key, const unsigned char *val,
                     size_t len);

/* Adds a delete of key (absent is not an error). */
void lk_etcd_txn_delete(lk_etcd_txn *t, const char *key);

/* Adds a delete of every key starting with prefix ("" deletes everything
 * under the client's prefix). etcd refuses a txn that also puts a key
 * inside the deleted range (LK_INVALID_ARGUMENT). */
void lk_etcd_txn_delete_prefix(lk_etcd_txn *t, const char *prefix);

/* Applies the txn atomically when every expectation holds, storing the
 * resulting etcd revision in *revision (may be NULL). LK_FAILED_PRECONDITION
 * "conflict: <key> changed concurrently; retry" (nothing written) when an
 * expectation fails; the builder's poisoning error (LK_INVALID_ARGUMENT,
 * LK_RESOURCE_EXHAUSTED); LK_UNAVAILABLE as for every call. A txn retried on
 * another endpoint after an ambiguous failure can report a conflict with
 * its own first write: callers re-read and retry. The txn stays owned by
 * the caller. */
lk_status lk_etcd_txn_commit(lk_etcd *e, lk_etcd_txn *t, int64_t *revision,
                             lk_err *err) LK_MUST_CHECK;

/* Wipes the txn's buffered values and frees it; NULL is a no-op. */
void lk_etcd_txn_destroy(lk_etcd_txn *t);

/* One change, called on the watch thread in revision order. is_delete: the
 * key was deleted (val is NULL, len 0, and mod_revision is the revision of
 * the deletion). key and val are valid only during the call. */
typedef void (*lk_etcd_event_fn)(void *ctx, int is_delete, const char *key,
                                 const unsigned char *val, size_t len,
                                 int64_t mod_revision);

/* Called after the events of each etcd WatchResponse (revision: the last
 * event's revision) and on progress notifications (revision: etcd's
 * header revision). Every change at or below revision has been delivered,
 * so a consumer may record it as applied. */
typedef void (*lk_etcd_batch_end_fn)(void *ctx, int64_t revision);

/* Reports trouble, on the watch thread:
 *  - LK_UNAVAILABLE: the stream broke; the watch reconnects by itself
 *    (backoff 100 ms .. 2 s, next endpoint) and resumes after the last
 *    batch_end. Nothing is lost or repeated: events are only ever
 *    delivered in whole batches (etcd's fragments are joined first).
 *  - LK_FAILED_PRECONDITION: etcd compacted past the revision the watch
 *    needed (compact_revision > 0); the watch has stopped and the caller
 *    takes a new snapshot from lk_etcd_range.
 *  - anything else: etcd refused the watch; the watch has stopped. */
typedef void (*lk_etcd_watch_error_fn)(void *ctx, lk_status code,
                                       int64_t compact_revision,
                                       const char *msg);

/* Starts watching every key starting with prefix from start_revision
 * (inclusive; 0 means "after the current revision", resolved with one
 * Range before returning), running the bidirectional Watch stream on its
 * own thread with progress notifications on. Callbacks run on that thread,
 * one at a time, and must not call lk_etcd_watch_stop or _destroy.
 * LK_UNAVAILABLE only when start_revision is 0 and etcd cannot be asked
 * for the current revision; LK_INTERNAL when the thread cannot start. */
lk_status lk_etcd_watch_start(lk_etcd *e, const char *prefix,
                              int64_t start_revision, lk_etcd_event_fn on_event,
                              lk_etcd_batch_end_fn on_batch_end,
                              lk_etcd_watch_error_fn on_error, void *ctx,
                              lk_etcd_watch **out, lk_err *err) LK_MUST_CHECK;

/* Stops the watch: cancels its stream, drains its completion queue and
 * joins its thread; no callback runs after it returns. Idempotent, and
 * fine after the watch stopped by itself. */
void lk_etcd_watch_stop(lk_etcd_watch *w);

/* Returns the revision the watch would resume from after a reconnect:
 * one past the last revision reported to batch_end (or start_revision).
 * Thread-safe. */
int64_t lk_etcd_watch_next_revision(const lk_etcd_watch *w);

/* Stops the watch (see lk_etcd_watch_stop) and frees it; NULL is a no-op. */
void lk_etcd_watch_destroy(lk_etcd_watch *w);

/* Compacts etcd's history up to revision and waits until it is physically
 * applied. LK_FAILED_PRECONDITION when revision was already compacted;
 * LK_INVALID_ARGUMENT when it is in the future. */
lk_status lk_etcd_compact(lk_etcd *e, int64_t revision,
                          lk_err *err) LK_MUST_CHECK;

#endif
