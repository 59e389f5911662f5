/*
 * rpc_server.h - a multi-threaded unary gRPC server over grpc core's C API.
 *
 * Why: both daemons serve unary protobuf RPCs on several listeners (agent
 * socket, admin socket) and some handlers finish long after they return
 * (a tool call waits on the vendor). This module owns every grpc core
 * object so handlers see only bytes in and bytes (or an lk_err) out.
 *
 * Design: N worker threads, each with its own completion queue registered
 * with every listener's grpc_server. Each worker keeps one outstanding
 * request per (listener, method), so any worker can accept any call and a
 * slow handler never stalls the others. A handler may finish its call
 * later from any thread (lk_rpc_call_finish/fail); the call's completion
 * comes back to the worker that accepted it, which frees it.
 *
 * Streaming methods (lk_rpc_server_listen_stream) get the same threads:
 * their receive and send batches complete on the accepting worker, and a
 * queue serialises sends from any thread.
 *
 * Open connections per listener (for latchkey_open_connections) come from
 * grpc core's channelz registry, read on demand.
 *
 * Invariants: each call is finished exactly once; request bytes are wiped
 * before free (Admin requests carry secrets); shutdown is idempotent and
 * drains every completion queue to GRPC_QUEUE_SHUTDOWN.
 */
#ifndef LK_RPC_SERVER_H
#define LK_RPC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "lib/metrics.h"
#include "lib/status.h"

typedef struct lk_rpc_server lk_rpc_server;
typedef struct lk_rpc_call lk_rpc_call;

/* Called on a worker thread for every accepted call. The handler must
 * eventually call lk_rpc_call_finish or lk_rpc_call_fail exactly once,
 * from any thread. */
typedef void (*lk_rpc_handler)(void *ctx, lk_rpc_call *call);

/* Creates a server with n_workers threads (not yet started). */
lk_status lk_rpc_server_new(int n_workers, lk_rpc_server **out,
                            lk_err *err) LK_MUST_CHECK;

/* Makes every listener added afterwards speak TLS with the PEM
 * certificate chain and private key in these files (read once; the key
 * passes through guarded memory). Before the first listener. */
lk_status lk_rpc_server_use_tls(lk_rpc_server *s, const char *cert_path,
                                const char *key_path,
                                lk_err *err) LK_MUST_CHECK;

/* Adds a listener on addr ("unix:/path" or "host:port") serving the given
 * full method paths ("/pkg.Service/Method") with handler. A stale Unix
 * socket file at the path is removed first. Before lk_rpc_server_start. */
lk_status lk_rpc_server_listen(lk_rpc_server *s, const char *addr,
                               const char *const *methods, size_t n_methods,
                               lk_rpc_handler handler, void *ctx,
                               lk_err *err) LK_MUST_CHECK;

/* Starts every listener and the worker threads. */
lk_status lk_rpc_server_start(lk_rpc_server *s, lk_err *err) LK_MUST_CHECK;

/* Stops accepting calls, lets in-flight calls finish for up to grace_ms,
 * cancels the rest, and joins the workers. Idempotent. */
void lk_rpc_server_shutdown(lk_rpc_server *s, int grace_ms);

/* Shuts down (if needed) and frees the server; NULL is ignored. */
void lk_rpc_server_destroy(lk_rpc_server *s);

/* Returns the number of listeners (0 for NULL). */
size_t lk_rpc_server_n_listeners(const lk_rpc_server *s);

/* Returns listener i's address as given to lk_rpc_server_listen, or NULL. */
const char *lk_rpc_server_listener_addr(const lk_rpc_server *s, size_t i);

/* Counts listener i's open client connections (its grpc server's channelz
 * sockets) into *out; LK_UNAVAILABLE when channelz is off, LK_NOT_FOUND
 * once the server is destroyed. Any thread, any time after listen. */
lk_status lk_rpc_server_open_connections(const lk_rpc_server *s, size_t i,
                                         int64_t *out,
                                         lk_err *err) LK_MUST_CHECK;

/* From a scrape-time collect fn of a gauge labelled {listener}: emits each
 * listener's open connections labelled with its address, skipping
 * listeners whose count is unknown. NULL s emits nothing. */
void lk_rpc_server_emit_open_connections(const lk_rpc_server *s,
                                         lk_metrics_emitter *e);

/* A server-streaming or bidirectional call (Sync/Stream). */
typedef struct lk_rpc_stream lk_rpc_stream;

/* Callbacks of one streaming method. All run on the worker that accepted
 * the stream, one at a time for a given stream. */
typedef struct {
  /* The client opened the stream; metadata is readable. May be NULL. */
  void (*on_open)(void *ctx, lk_rpc_stream *s);
  /* One client message; the bytes are valid only during the call. */
  void (*on_message)(void *ctx, lk_rpc_stream *s, const unsigned char *msg,
                     size_t len);
  /* The client half-closed, cancelled or went away; called exactly once,
   * after the last on_message. The handler must still call
   * lk_rpc_stream_finish if it has not. */
  void (*on_end)(void *ctx, lk_rpc_stream *s, int cancelled);
} lk_rpc_stream_handler;

/* Adds a streaming method to the listener on addr (creating it like
 * lk_rpc_server_listen); h must outlive the server. */
lk_status lk_rpc_server_listen_stream(lk_rpc_server *s, const char *addr,
                                      const char *method,
                                      const lk_rpc_stream_handler *h, void *ctx,
                                      lk_err *err) LK_MUST_CHECK;

/* Like lk_rpc_server_listen_stream for a server-streaming method (one
 * request, then replies until the server finishes): the client's
 * half-close after its request does not end the stream; on_end comes when
 * the call closes (the client cancelled or went away, the server is
 * shutting down, or after lk_rpc_stream_finish). */
lk_status lk_rpc_server_listen_server_stream(lk_rpc_server *s, const char *addr,
                                             const char *method,
                                             const lk_rpc_stream_handler *h,
                                             void *ctx,
                                             lk_err *err) LK_MUST_CHECK;

/* Queues one message to the client (any thread). Messages go out in
 * order; LK_UNAVAILABLE once the stream has ended or is finishing,
 * LK_RESOURCE_EXHAUSTED when more than 64 MiB wait for a slow client. */
lk_status lk_rpc_stream_send(lk_rpc_stream *s, const unsigned char *msg,
                             size_t len, lk_err *err) LK_MUST_CHECK;

/* Ends the stream with err's status (NULL = OK) after the queued
 * messages, and gives up the handler's reference: s must not be used
 * afterwards. Call exactly once; later calls are ignored. */
void lk_rpc_stream_finish(lk_rpc_stream *s, const lk_err *err);

/* Returns the first value of request metadata key, or NULL. */
const char *lk_rpc_stream_metadata(const lk_rpc_stream *s, const char *key,
                                   size_t *len);

/* Returns the full method path of the call ("/latchkey.v1.ToolCalls/Call"). */
const char *lk_rpc_call_method(const lk_rpc_call *c);

/* Returns the request message bytes (valid until the call is finished). */
const unsigned char *lk_rpc_call_request(const lk_rpc_call *c, size_t *len);

/* Returns the first value of request metadata key (lowercase) or NULL;
 * *len receives its length. Valid until the call is finished. */
const char *lk_rpc_call_metadata(const lk_rpc_call *c, const char *key,
                                 size_t *len);

/* Returns the call's deadline in CLOCK_MONOTONIC milliseconds, or
 * INT64_MAX when the client set none. */
int64_t lk_rpc_call_deadline_ms(const lk_rpc_call *c);

/* Returns nonzero once the client has cancelled or the deadline passed.
 * A cancel is watched for from the first call made once the call is
 * 10 ms old (a batch grpc core answers on the worker) and shows from a
 * later call on: poll it. Any thread, until the call is finished. */
int lk_rpc_call_cancelled(lk_rpc_call *c);

/* Sends resp as the reply with status OK and releases the call. */
void lk_rpc_call_finish(lk_rpc_call *c, const unsigned char *resp, size_t len);

/* Sends err's status and message and releases the call. */
void lk_rpc_call_fail(lk_rpc_call *c, const lk_err *err);

#endif
