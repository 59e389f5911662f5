/*
 * toolcalls.h - the latchkey.v1.ToolCalls service: the call path of
 * DESIGN.md §4 from an accepted gRPC call to the scrubbed vendor answer.
 *
 * Why: this is the one place that decides whether an agent may call a tool
 * and with which credential. Each step is a separate module (args, inject,
 * forward, scrub); this module orders them, maps every failure to its gRPC
 * status with a message that says what to do, and keeps plaintext secrets
 * alive only from unseal until the request is built and the scrubber made.
 *
 * Audit: every Call writes exactly one `audit.tool_call` line (lib/log.h
 * lk_log_fields) with budget, tool, operation, credential_id,
 * vendor_status, latency_ms, bytes, redacted and outcome ("ok",
 * "missing_credential", or the status name of the failure), and, when the
 * request went to the vendor with a credential, `secret_hashes`: the audit
 * hash (lib/audit.h) of each secret value injected, by field name. Without
 * an audit key yet (a replica that has never reached its control plane)
 * the line says "secret_hashes_unavailable" instead. Never a value.
 * A call retried after an oauth2 refresh says "oauth_retry": true.
 *
 * OAuth 2.0 (lib/oauth.h): an oauth2 credential whose access token has
 * expired (or whose expiry is unknown) is never sent: the call is answered
 * missing_credential with a re-authorise hint (lk_oauth_reauthorize_hint).
 * With oauth_retry set (both modes), a vendor's 401 to a token that had
 * not expired asks for a refresh (sidecar/oauth_retry: the control plane
 * in replica mode, the local refresher standalone) and the call is sent
 * once more with the refreshed token, whatever that
 * answers; when no new token comes by the deadline the first 401 is
 * returned, and when the provider refused the grant the call is answered
 * missing_credential with the re-authorise hint. Never a loop.
 */
#ifndef LK_TOOLCALLS_H
#define LK_TOOLCALLS_H

#include <stddef.h>

#include "lib/audit.h"
#include "lib/catalog.h"
#include "lib/metrics.h"
#include "lib/rpc_server.h"
#include "lib/seal.h"
#include "lib/status.h"
#include "lib/token.h"
#include "sidecar/forward.h"
#include "sidecar/node_keys.h"
#include "sidecar/oauth_retry.h"

typedef struct {
  const char *agent_id;           /* this sidecar's agent */
  const char *setup_url_template; /* {tool} {budget} {type}; NULL = none */
  int allow_insecure_vendors;     /* http:// to loopback vendors */
  size_t max_response_bytes;
  /* Replica mode: returns 1 (err set, FAILED_PRECONDITION) when the replica
   * is too stale to serve; every call is then refused. NULL = never. */
  int (*stale)(void *ctx, lk_err *err);
  void *stale_ctx;
  /* When set, every call must carry "authorization: Bearer <token>" with
   * this token (--agent-token-file); else UNAUTHENTICATED. */
  const lk_token *agent_token;
  /* Hashes the secret values of each call for its audit line (borrowed;
   * it must outlive the service). NULL = audit lines carry no hashes. */
  lk_audit_key *audit;
  /* Registry for the call metrics (borrowed; it must outlive the
   * service). NULL = no metrics. */
  lk_metrics *metrics;
  /* Refreshes the token of an oauth2 credential a vendor refused with 401
   * (borrowed; stop it before the forwarder is destroyed). NULL = a 401 is
   * returned as it is. */
  lk_oauth_retry *oauth_retry;
} lk_toolcalls_config;

typedef struct lk_toolcalls lk_toolcalls;

/* Creates the service over the catalog, node keys (which may rotate
 * under it) and forwarder (all borrowed; they must outlive it). cfg
 * strings are borrowed too. */
lk_status lk_toolcalls_new(const lk_toolcalls_config *cfg, lk_catalog *cat,
                           lk_node_keys *keys, lk_forwarder *fwd,
                           lk_toolcalls **out, lk_err *err) LK_MUST_CHECK;

/* Frees the service; NULL is ignored. In-flight calls must be done. */
void lk_toolcalls_destroy(lk_toolcalls *t);

/* Returns the method paths the service serves. */
const char *const *lk_toolcalls_methods(size_t *n);

/* lk_rpc_handler for ToolCalls: ctx is the lk_toolcalls. */
void lk_toolcalls_handle(void *ctx, lk_rpc_call *call);

#endif
