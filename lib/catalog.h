/*
 * catalog.h - typed records (tools, credential types, credentials, budgets,
 * bindings) over the key-value store.
 *
 * Why: every daemon reads and writes the same records; one module owns the
 * key layout and the protobuf encoding so that no caller builds a key by
 * hand and the layout can be documented (and changed) in one place.
 *
 * Key layout (values are protobuf-encoded latchkey.v1 messages):
 *
 *   tool/<id>                        -> Tool
 *   type/<id>                        -> CredentialType
 *   cred/<id>                        -> Credential (secret fields sealed)
 *   budget/<id>                      -> Budget
 *   bind/<budget>/tool/<tool_id>     -> Binding (tool-specific)
 *   bind/<budget>/type/<type_id>     -> Binding (budget-wide)
 *   meta/schema                      -> "1" (layout version, plain bytes)
 *
 * Every id is checked with lk_catalog_valid_id before it becomes part of a
 * key, so '/' can never appear inside an id and every prefix above is
 * unambiguous ("bind/a/" never matches budget "ab").
 *
 * Invariants:
 * - Lookups (lk_catalog_get_*) cost exactly one store get; the call
 *   path's peeks (lk_catalog_peek_*) cost at most one, none while the
 *   store has not been written since the record was last decoded.
 * - Buffers that held a Credential encoding are wiped before they are freed.
 * - Writes never go straight to the store: lk_catalog_put_* and
 *   lk_catalog_delete_* add to an lk_store_batch, and lk_catalog_commit
 *   writes the batch atomically, so an Admin operation touching several
 *   records (a tool and its bindings) lands all at once or not at all.
 * - A read-modify-write of a record that other writers also change (a
 *   credential: Admin on several control planes, the OAuth refresher, the
 *   re-sealer) reads it with lk_catalog_get_credential_seen and commits
 *   with lk_catalog_commit_if, which lands only while the record still
 *   holds the bytes that read found; otherwise the caller reads again and
 *   rebuilds its write.
 * - The catalog does not own the store: destroy the catalog, then close the
 *   store. The catalog is safe to use from several threads when the store
 *   is (RocksDB is).
 *
 * Messages returned by getters and handed to list callbacks are unpacked
 * protobuf-c messages owned by the caller: free them with the matching
 * lk_catalog_free_* (or protobuf_c_message_free_unpacked). Records from
 * lk_catalog_peek_* are shared and const: release them with the matching
 * lk_catalog_release_*.
 */
#ifndef LK_CATALOG_H
#define LK_CATALOG_H

#include <stddef.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/status.h"
#include "lib/store.h"

/* Longest id accepted by lk_catalog_valid_id. */
#define LK_CATALOG_ID_MAX 128

/* The key layout version stored under meta/schema. */
#define LK_CATALOG_SCHEMA "1"

typedef struct lk_catalog lk_catalog;

/* List callbacks: receive ownership of one decoded record (free it with the
 * matching lk_catalog_free_*); return nonzero to stop the listing early.
 * Records arrive in key order, which is id order. */
typedef int (*lk_catalog_tool_fn)(void *ctx, Latchkey__V1__Tool *tool);
typedef int (*lk_catalog_type_fn)(void *ctx, Latchkey__V1__CredentialType *t);
typedef int (*lk_catalog_credential_fn)(void *ctx,
                                        Latchkey__V1__Credential *cred);
typedef int (*lk_catalog_budget_fn)(void *ctx, Latchkey__V1__Budget *budget);
typedef int (*lk_catalog_binding_fn)(void *ctx, Latchkey__V1__Binding *bind);

/* Returns 1 when id matches ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, else 0
 * (NULL is not valid). */
int lk_catalog_valid_id(const char *id);

/* Opens the catalog over store: writes meta/schema on an empty store,
 * LK_FAILED_PRECONDITION when the store holds another layout version. */
lk_status lk_catalog_open(lk_store *store, lk_catalog **out,
                          lk_err *err) LK_MUST_CHECK;

/* Frees the catalog (not the store); NULL is a no-op. */
void lk_catalog_destroy(lk_catalog *c);

/* Returns the store the catalog reads and writes. */
lk_store *lk_catalog_store(const lk_catalog *c);

/* Getters: one store get each. LK_INVALID_ARGUMENT for an invalid id,
 * LK_NOT_FOUND (message naming the id) when absent, LK_INTERNAL when the
 * stored bytes do not decode. *out is set only on LK_OK. */
lk_status lk_catalog_get_tool(lk_catalog *c, const char *id,
                              Latchkey__V1__Tool **out,
                              lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_get_type(lk_catalog *c, const char *id,
                              Latchkey__V1__CredentialType **out,
                              lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_get_credential(lk_catalog *c, const char *id,
                                    Latchkey__V1__Credential **out,
                                    lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_get_budget(lk_catalog *c, const char *id,
                                Latchkey__V1__Budget **out,
                                lk_err *err) LK_MUST_CHECK;
/* The tool-specific binding of tool in budget. */
lk_status lk_catalog_get_binding_tool(lk_catalog *c, const char *budget,
                                      const char *tool,
                                      Latchkey__V1__Binding **out,
                                      lk_err *err) LK_MUST_CHECK;
/* The budget-wide binding of credential type type in budget. */
lk_status lk_catalog_get_binding_type(lk_catalog *c, const char *budget,
                                      const char *type,
                                      Latchkey__V1__Binding **out,
                                      lk_err *err) LK_MUST_CHECK;

/* Shared records for the tool-call path. Like the getters above (same
 * validation, same messages), but the record is shared and read-only:
 * the catalog keeps decoded records (lib/catalog_cache.h), each valid
 * only for the store write generation it was read under, so a peek that
 * starts after a write returned (through this catalog, another one over
 * the same store, or a raw lk_store batch such as the replica applier's)
 * sees that write, exactly like a getter. Ownership: *out is one
 * reference; give it back with the matching lk_catalog_release_* (never
 * lk_catalog_free_*, never modify it). A held record stays valid while
 * other threads write and replace it, and even after lk_catalog_destroy,
 * until released. Misses are not cached. Only the call path uses
 * these; Admin, the replica applier and the control plane keep the
 * getters and their private copies. */
lk_status lk_catalog_peek_tool(lk_catalog *c, const char *id,
                               const Latchkey__V1__Tool **out,
                               lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_peek_type(lk_catalog *c, const char *id,
                               const Latchkey__V1__CredentialType **out,
                               lk_err *err) LK_MUST_CHECK;
/* The sealed fields stay sealed (ciphertext); every block of a shared
 * credential is wiped when its last reference goes. */
lk_status lk_catalog_peek_credential(lk_catalog *c, const char *id,
                                     const Latchkey__V1__Credential **out,
                                     lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_peek_budget(lk_catalog *c, const char *id,
                                 const Latchkey__V1__Budget **out,
                                 lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_peek_binding_tool(lk_catalog *c, const char *budget,
                                       const char *tool,
                                       const Latchkey__V1__Binding **out,
                                       lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_peek_binding_type(lk_catalog *c, const char *budget,
                                       const char *type,
                                       const Latchkey__V1__Binding **out,
                                       lk_err *err) LK_MUST_CHECK;

/* Give back a reference from the matching lk_catalog_peek_*; NULL is a
 * no-op. */
void lk_catalog_release_tool(const Latchkey__V1__Tool *tool);
void lk_catalog_release_type(const Latchkey__V1__CredentialType *type);
void lk_catalog_release_credential(const Latchkey__V1__Credential *cred);
void lk_catalog_release_budget(const Latchkey__V1__Budget *budget);
void lk_catalog_release_binding(const Latchkey__V1__Binding *bind);

/* Reports how many shared records, and how many decoded bytes, the
 * catalog currently keeps for lk_catalog_peek_* (at most
 * LK_CATALOG_CACHE_ENTRIES and LK_CATALOG_CACHE_BYTES). */
void lk_catalog_peek_usage(lk_catalog *c, size_t *entries, size_t *bytes);

/* Listings: call fn for every record of the kind in id order, handing it
 * ownership. LK_INTERNAL (naming the key) when a record does not decode;
 * the listing stops there. */
lk_status lk_catalog_list_tools(lk_catalog *c, lk_catalog_tool_fn fn, void *ctx,
                                lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_list_types(lk_catalog *c, lk_catalog_type_fn fn, void *ctx,
                                lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_list_credentials(lk_catalog *c,
                                      lk_catalog_credential_fn fn, void *ctx,
                                      lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_list_budgets(lk_catalog *c, lk_catalog_budget_fn fn,
                                  void *ctx, lk_err *err) LK_MUST_CHECK;
/* Bindings of one budget (budget non-NULL and non-empty: its tool-specific
 * then its budget-wide bindings) or of all budgets (NULL or ""). */
lk_status lk_catalog_list_bindings(lk_catalog *c, const char *budget,
                                   lk_catalog_binding_fn fn, void *ctx,
                                   lk_err *err) LK_MUST_CHECK;

/* Batch writers: add one put or delete to b (nothing reaches the store
 * until lk_catalog_commit). Puts take the record's key from its id fields,
 * LK_INVALID_ARGUMENT when one is invalid; a Binding must set exactly one
 * of tool_id and credential_type. They do not check references: that is
 * the Admin layer's job. */
lk_status lk_catalog_put_tool(lk_catalog *c, lk_store_batch *b,
                              const Latchkey__V1__Tool *tool,
                              lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_put_type(lk_catalog *c, lk_store_batch *b,
                              const Latchkey__V1__CredentialType *type,
                              lk_err *err) LK_MUST_CHECK;
/* The encoding is wiped after it is copied into the batch. */
lk_status lk_catalog_put_credential(lk_catalog *c, lk_store_batch *b,
                                    const Latchkey__V1__Credential *cred,
                                    lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_put_budget(lk_catalog *c, lk_store_batch *b,
                                const Latchkey__V1__Budget *budget,
                                lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_put_binding(lk_catalog *c, lk_store_batch *b,
                                 const Latchkey__V1__Binding *bind,
                                 lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_delete_tool(lk_catalog *c, lk_store_batch *b,
                                 const char *id, lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_delete_type(lk_catalog *c, lk_store_batch *b,
                                 const char *id, lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_delete_credential(lk_catalog *c, lk_store_batch *b,
                                       const char *id,
                                       lk_err *err) LK_MUST_CHECK;
lk_status lk_catalog_delete_budget(lk_catalog *c, lk_store_batch *b,
                                   const char *id, lk_err *err) LK_MUST_CHECK;
/* Deletes the binding named by bind's budget_id and its one of tool_id /
 * credential_type (credential_id is ignored). */
lk_status lk_catalog_delete_binding(lk_catalog *c, lk_store_batch *b,
                                    const Latchkey__V1__Binding *bind,
                                    lk_err *err) LK_MUST_CHECK;

/* Longest key lk_catalog_key_of writes, NUL included. */
#define LK_CATALOG_KEY_MAX (2 * LK_CATALOG_ID_MAX + 32)

/* Writes the key record m is stored under into key: m is a Tool,
 * CredentialType, Credential, Budget or Binding (for replication, which
 * ships records by key). LK_INVALID_ARGUMENT when an id is invalid, a
 * Binding does not set exactly one of tool_id and credential_type, or m is
 * another message type. */
lk_status lk_catalog_key_of(const ProtobufCMessage *m,
                            char key[LK_CATALOG_KEY_MAX],
                            lk_err *err) LK_MUST_CHECK;

/* Writes b to the store atomically and durably (b stays the caller's). */
lk_status lk_catalog_commit(lk_catalog *c, lk_store_batch *b,
                            lk_err *err) LK_MUST_CHECK;

/* What a read found under one record's key: the record's stored bytes, or
 * that the key was absent. A commit given it (lk_catalog_commit_if) lands
 * only while the key still holds exactly those bytes: optimistic
 * concurrency with the bytes as the version token. Every write of a
 * credential changes its bytes (version and updated_at, the OAuth
 * generation or failure count, or fresh nonces), and equal bytes are an
 * equal record, so a commit never overwrites a change it was not built
 * from. The same token works for both stores below, which need no
 * revision bookkeeping for it. Free with lk_catalog_seen_free (wipes). */
typedef struct lk_catalog_seen lk_catalog_seen;

/* Like lk_catalog_get_credential, and also sets *seen: on LK_OK to the
 * bytes read, on LK_NOT_FOUND to the key's absence (so a create can
 * require it); NULL on every other result. */
lk_status lk_catalog_get_credential_seen(lk_catalog *c, const char *id,
                                         Latchkey__V1__Credential **out,
                                         lk_catalog_seen **seen,
                                         lk_err *err) LK_MUST_CHECK;

/* Returns the store key s was read under. */
const char *lk_catalog_seen_key(const lk_catalog_seen *s);

/* Returns the bytes s found, their length in *len; NULL (and *len 0) when
 * the key was absent. */
const unsigned char *lk_catalog_seen_value(const lk_catalog_seen *s,
                                           size_t *len);

/* Wipes and frees s; NULL is a no-op. */
void lk_catalog_seen_free(lk_catalog_seen *s);

/* Message of the retryable failure of lk_catalog_commit_if; the %s is the
 * record's key. */
#define LK_CATALOG_CHANGED_FMT                                          \
  "%s changed while this write was being applied (an OAuth refresh, a " \
  "key rotation or another Admin write); retry"

/* Writes b atomically when every record in seen[0..n) still holds what
 * its read found (n 0: lk_catalog_commit). Otherwise writes nothing, sets
 * *changed to 1 and returns LK_UNAVAILABLE (LK_CATALOG_CHANGED_FMT) once
 * reads through c show the record as it now is, so the caller can read
 * again and rebuild the write. *changed is 0 on every other result. */
lk_status lk_catalog_commit_if(lk_catalog *c, lk_store_batch *b,
                               lk_catalog_seen *const *seen, size_t n,
                               int *changed, lk_err *err) LK_MUST_CHECK;

/* The catalog-store interface: how a committed batch reaches the source of
 * truth, with lk_catalog_commit_if's contract. Two implementations exist.
 * The default (no committer) writes b to the catalog's own RocksDB store,
 * checking seen under a mutex that every commit through the catalog
 * takes: the standalone sidecar. The control plane's
 * (controlplane/etcd_catalog) commits b as one etcd Txn that compares
 * every seen record's value, and returns once the in-memory mirror the
 * catalog reads from has applied that revision, so reads after a write
 * see it. Set before first use. */
typedef lk_status (*lk_catalog_commit_fn)(void *ctx, lk_store_batch *b,
                                          lk_catalog_seen *const *seen,
                                          size_t n_seen, int *changed,
                                          lk_err *err);
void lk_catalog_set_committer(lk_catalog *c, lk_catalog_commit_fn fn,
                              void *ctx);

/* Free a record returned by a getter or handed to a list callback; NULL is
 * a no-op. */
void lk_catalog_free_tool(Latchkey__V1__Tool *tool);
void lk_catalog_free_type(Latchkey__V1__CredentialType *type);
void lk_catalog_free_credential(Latchkey__V1__Credential *cred);
void lk_catalog_free_budget(Latchkey__V1__Budget *budget);
void lk_catalog_free_binding(Latchkey__V1__Binding *bind);

#endif
