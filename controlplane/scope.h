/*
 * scope.h - which catalog records one agent's replica may hold (DESIGN.md
 * §5-6).
 *
 * Why: a compromised pod must be able to expose only its own agent's
 * credentials, so the control plane replicates to each sidecar only the
 * records its agent can use. This module owns that rule; the Sync fan-out
 * (sync_server.c) only diffs and ships what it returns.
 *
 * The scope of agent A is, over one read of the catalog:
 *   - budget/<b> for every budget b whose agents list A (paused or not:
 *     pausing is enforced by the sidecar, which needs the record for it);
 *   - every binding bind/<b>/... of those budgets;
 *   - cred/<c> for every credential c those bindings name;
 *   - tool/<t> for the tool of every tool-specific binding, for every tool
 *     whose credential_type is the type of a budget-wide binding, and,
 *     when A has at least one budget, for every tool with no
 *     credential_type (it carries no secret and any budget may call it);
 *   - type/<y> for the credential type of each of those tools and
 *     credentials, and of each budget-wide binding.
 * Nothing else: a credential bound only in another agent's budget, and the
 * tools reachable only through it, never appear. Only records that exist
 * are in a scope (a binding naming a deleted credential brings no key).
 * A tool with a credential type that none of A's budgets binds is not in
 * A's scope, so a replica cannot answer missing_credential for it.
 *
 * A view (lk_scope_view) is one read of the whole catalog: every record's
 * key, protobuf encoding and BLAKE2b-256 hash, plus the relations scopes
 * are computed from. The control plane reads one view per catalog change
 * and computes every subscriber's scope from it, instead of reading the
 * catalog once per subscriber. The view reads through lk_catalog's public
 * listings, so it works over any store behind the catalog; the listings
 * are separate reads, so a view taken while the catalog is being written
 * may mix two states (the next change's view corrects it).
 *
 * Invariants: a view is immutable after loading and safe to share between
 * threads; record encodings (credentials hold key-ring ciphertexts) are
 * wiped before they are freed; a view holds at most LK_SCOPE_MAX_RECORDS
 * records and LK_SCOPE_MAX_VIEW_BYTES encoded bytes. A scope's keys are in
 * strcmp order without duplicates.
 */
#ifndef LK_SCOPE_H
#define LK_SCOPE_H

#include <stddef.h>

#include "lib/catalog.h"
#include "lib/status.h"

/* Size of a record hash (BLAKE2b-256 of its encoding). */
#define LK_SCOPE_HASH_BYTES 32
/* Most records a view holds. */
#define LK_SCOPE_MAX_RECORDS (4u * 1024u * 1024u)
/* Most encoded record bytes a view holds. */
#define LK_SCOPE_MAX_VIEW_BYTES (1024u * 1024u * 1024u)

typedef struct lk_scope_view lk_scope_view;
typedef struct lk_scope lk_scope;

/* One record of a view or scope; pointers valid while the view lives. */
typedef struct {
  const char *key;            /* "tool/weather" */
  const unsigned char *value; /* protobuf encoding */
  size_t len;
  const unsigned char *hash; /* LK_SCOPE_HASH_BYTES of BLAKE2b-256(value) */
} lk_scope_record;

/* Reads every tool, credential type, credential, budget and binding of cat
 * into a new view. LK_RESOURCE_EXHAUSTED past LK_SCOPE_MAX_RECORDS or
 * LK_SCOPE_MAX_VIEW_BYTES or out of memory; the catalog's errors as they
 * are (LK_INTERNAL for a record that does not decode). */
lk_status lk_scope_view_load(lk_catalog *cat, lk_scope_view **out,
                             lk_err *err) LK_MUST_CHECK;

/* Wipes and frees the view; NULL is a no-op. Scopes computed from it must
 * be destroyed first. */
void lk_scope_view_destroy(lk_scope_view *v);

/* Returns the number of records in the view. */
size_t lk_scope_view_count(const lk_scope_view *v);

/* Finds key in the view: returns 1 and fills *out, or 0 when absent. */
int lk_scope_view_find(const lk_scope_view *v, const char *key,
                       lk_scope_record *out);

/* Computes agent_id's scope over v into *out (which borrows v: destroy it
 * before v). LK_INVALID_ARGUMENT when agent_id is not a valid id;
 * LK_RESOURCE_EXHAUSTED when out of memory. */
lk_status lk_scope_compute_in(const lk_scope_view *v, const char *agent_id,
                              lk_scope **out, lk_err *err) LK_MUST_CHECK;

/* Computes agent_id's scope over a fresh read of cat (the scope owns that
 * view). Errors as lk_scope_view_load and lk_scope_compute_in. */
lk_status lk_scope_compute(lk_catalog *cat, const char *agent_id,
                           lk_scope **out, lk_err *err) LK_MUST_CHECK;

/* Returns the number of keys in the scope. */
size_t lk_scope_count(const lk_scope *s);

/* Fills *out with the i-th record of the scope (i < lk_scope_count), in
 * key order. */
void lk_scope_at(const lk_scope *s, size_t i, lk_scope_record *out);

/* Returns the i-th key of the scope (i < lk_scope_count), in key order. */
const char *lk_scope_key(const lk_scope *s, size_t i);

/* Returns 1 when key is in the scope, else 0. */
int lk_scope_contains(const lk_scope *s, const char *key);

/* Frees the scope (and the view it owns, if any); NULL is a no-op. */
void lk_scope_destroy(lk_scope *s);

/* Sets *uses to 1 when credential cred_id is in agent_id's scope (a
 * binding of one of the agent's budgets names it), else 0, from one
 * listing of the budgets and of those budgets' bindings: the check of an
 * agent asking about one credential (Sync/Refresh), without reading the
 * whole catalog. LK_INVALID_ARGUMENT for an invalid id; the catalog's
 * errors. */
lk_status lk_scope_agent_uses_credential(lk_catalog *cat, const char *agent_id,
                                         const char *cred_id, int *uses,
                                         lk_err *err) LK_MUST_CHECK;

#endif
