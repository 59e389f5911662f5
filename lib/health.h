/*
 * health.h - the standard grpc.health.v1.Health service (Check, Watch).
 *
 * Why: Kubernetes' native gRPC probes and load balancers ask
 * grpc.health.v1.Health whether a daemon should get traffic (DESIGN.md
 * §7). A daemon is ready or not as a whole (store open, replica loaded,
 * not draining), so every service it names shares one status.
 *
 * Design: one lk_health per daemon, registered on any number of
 * listeners of any number of lk_rpc_servers; health needs no token (the
 * probes send no metadata) and says nothing but SERVING or NOT_SERVING.
 * Watch streams get the current status at once and every change after;
 * at most LK_HEALTH_MAX_WATCHERS watch at a time.
 *
 * Invariants: the status starts NOT_SERVING; the lk_health outlives every
 * server it is registered on (destroy it after their shutdown).
 */
#ifndef LK_HEALTH_H
#define LK_HEALTH_H

#include <stddef.h>

#include "lib/rpc_server.h"
#include "lib/status.h"

#define LK_HEALTH_MAX_WATCHERS 256

#define LK_HEALTH_CHECK_METHOD "/grpc.health.v1.Health/Check"
#define LK_HEALTH_WATCH_METHOD "/grpc.health.v1.Health/Watch"

typedef struct lk_health lk_health;

/* Creates a health service knowing "" (the whole server) and the given
 * full service names ("latchkey.v1.ToolCalls"), all NOT_SERVING. */
lk_status lk_health_new(const char *const *services, size_t n_services,
                        lk_health **out, lk_err *err) LK_MUST_CHECK;

/* Frees the service; every server it was registered on must be shut down
 * first. NULL is ignored. */
void lk_health_destroy(lk_health *h);

/* Registers Check and Watch on srv's listener at addr (creating it like
 * lk_rpc_server_listen). Before lk_rpc_server_start. */
lk_status lk_health_listen(lk_health *h, lk_rpc_server *srv, const char *addr,
                           lk_err *err) LK_MUST_CHECK;

/* Sets every known service SERVING (nonzero) or NOT_SERVING and tells
 * every watcher when the status changes. Any thread. */
void lk_health_set_serving(lk_health *h, int serving);

/* Longest service name a HealthCheckRequest may carry. */
#define LK_HEALTH_MAX_SERVICE_NAME 256

/* Parses a HealthCheckRequest (untrusted: any client, no token) of len
 * bytes at msg into out as a NUL-terminated service name.
 * LK_INVALID_ARGUMENT when it is not one, or its name is longer than
 * LK_HEALTH_MAX_SERVICE_NAME bytes. */
lk_status lk_health_parse_request(const unsigned char *msg, size_t len,
                                  char out[LK_HEALTH_MAX_SERVICE_NAME + 1],
                                  lk_err *err) LK_MUST_CHECK;

/* Returns nonzero while the status is SERVING. Any thread. */
int lk_health_serving(lk_health *h);

/* Ends every open Watch with status OK after the statuses already queued
 * on it (so a watcher sees the last NOT_SERVING before its stream closes,
 * instead of a dropped connection); for a daemon about to shut its
 * servers down. Watches opened later are unaffected. Any thread. */
void lk_health_end_watches(lk_health *h);

#endif
