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
 * - Lookups (lk_catalog_get_*) cost exactly one store get: they are on the
 *   hot path of every tool call.
 * - Buffers that held a Credential encoding are wiped before they are freed.
 * - Writes never go straight to the store: lk_catalog_put_* and
 *   lk_catalog_delete_* add to an lk_store_batch, and lk_catalog_commit
 *   writes the batch atomically, so an Admin operation touching several
 *   records (a tool and its bindings) lands all at once or not at all.
 * - The catalog does not own the store: destroy the catalog, then close the
 *   store. The catalog is safe to use from several threads when the store
 *   is (RocksDB is).
 *
 * Messages returned by getters and handed to list callbacks are unpacked
 * protobuf-c messages owned by the caller: free them with the matching
 * lk_catalog_free_* (or protobuf_c_message_free_unpacked).
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

/* The catalog-store interface: how a committed batch reaches the source of
 * truth. Two implementations exist. The default (no committer) writes b to
 * the catalog's own RocksDB store: the standalone sidecar. The control
 * plane's (controlplane/etcd_catalog) commits b as one etcd Txn and
 * returns once the in-memory mirror the catalog reads from has applied
 * that revision, so reads after a write see it. Set before first use. */
typedef lk_status (*lk_catalog_commit_fn)(void *ctx, lk_store_batch *b,
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
