/*
 * forward.h - sends built vendor requests with libcurl, without blocking.
 *
 * Why: a vendor may take seconds; a worker thread that waited on it would
 * stall every other agent call. One forwarder thread drives all transfers
 * through a curl multi handle, whose connection cache gives pooled
 * keep-alive connections per vendor, and reports each result through a
 * callback. The gRPC deadline of the call bounds the transfer.
 *
 * Invariants: redirects are never followed; only http and https are
 * spoken; no proxy is used; destinations are pinned to checked
 * addresses: every new connection is checked on the address curl is about
 * to connect to (the one its single lookup returned, so a DNS answer that
 * changes between lookups cannot slip past), and every request, on a new
 * or a reused keep-alive connection, is checked again on the remote
 * address of the connection it is about to be written to; private,
 * loopback, link-local,
 * unique-local, multicast, unspecified and metadata addresses are refused
 * with LK_FAILED_PRECONDITION unless the request allows private ones
 * (link-local, metadata, multicast and unspecified never are); responses over
 * max_response_bytes are cut off and reported as LK_RESOURCE_EXHAUSTED; the raw
 * body and headers (which may echo the secret) live only in guarded memory and
 * are wiped after the callback.
 */
#ifndef LK_FORWARD_H
#define LK_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "lib/secret.h"
#include "lib/status.h"
#include "sidecar/inject.h"

typedef struct lk_forwarder lk_forwarder;

typedef struct {
  size_t max_response_bytes; /* body cap */
  long max_connections;      /* size of the keep-alive connection cache */
  /* Tests only (latchkeyd never sets it): a fixed DNS answer,
   * "HOST:PORT:ADDR[,ADDR...]" as for CURLOPT_RESOLVE, so a test can make
   * a host name resolve to any address without touching the system's
   * resolver. NULL: names resolve as usual. */
  const char *test_only_resolve;
} lk_forward_opts;

/* What came back from the vendor. Valid only during the callback. */
typedef struct {
  lk_status status; /* LK_OK when an HTTP response arrived */
  lk_err err;       /* reason when status != LK_OK */
  long http_status;
  const lk_secret *body;    /* raw body, unscrubbed (guarded memory) */
  const lk_secret *headers; /* raw "Name: value\r\n" lines of the final
                               response, unscrubbed (guarded memory) */
  /* When an HTTP response arrived (status LK_OK), from curl's timings of
   * the transfer: monotonic µs when the request started to be written to
   * the connection (after any new connection's TCP and TLS set-up, which
   * is network time), and when the whole answer had been read. The time
   * between them is the vendor's and the network's (and any time the answer
   * waited for the busy forwarder to read it); the rest of a call is the
   * sidecar's own (DESIGN §9's sidecar-internal time). 0 otherwise. */
  int64_t sent_us;
  int64_t answered_us;
} lk_forward_result;

/* Called once per submitted request, on the forwarder thread. */
typedef void (*lk_forward_done)(void *ctx, const lk_forward_result *res);

/* Returns nonzero when the caller no longer wants the answer. */
typedef int (*lk_forward_cancelled)(void *ctx);

/* Installs libcurl's global state with allocators that wipe on free, so
 * the copies curl makes of URLs and headers never outlive their use.
 * Call once at process start, before any other thread exists. */
lk_status lk_forward_global_init(lk_err *err) LK_MUST_CHECK;

/* Starts the forwarder thread. */
lk_status lk_forwarder_new(const lk_forward_opts *opts, lk_forwarder **out,
                           lk_err *err) LK_MUST_CHECK;

/* Returns nonzero when url's host is literally "localhost", a loopback
 * address or a private one (10/8, 172.16/12, 192.168/16, 100.64/10,
 * fc00::/7): the only vendors that may be sent with allow_private. */
int lk_forward_url_host_is_private(const char *url);

/* Queues req (borrowed until done runs) to be sent before deadline_ms
 * (CLOCK_MONOTONIC ms), refusing loopback and private destinations unless
 * allow_private is nonzero. done is always called exactly once. */
void lk_forwarder_submit(lk_forwarder *f, const lk_http_request *req,
                         int allow_private, int64_t deadline_ms,
                         lk_forward_cancelled cancelled, lk_forward_done done,
                         void *ctx);

/* Returns how many reset easy handles the forwarder keeps for reuse (for
 * tests: a request with a credential in its URL or basic authentication
 * never leaves its handle in the pool). */
size_t lk_forwarder_pooled(lk_forwarder *f);

/* Stops the thread, failing every queued or running transfer with
 * LK_UNAVAILABLE through its callback, and frees f; NULL is ignored. */
void lk_forwarder_destroy(lk_forwarder *f);

#endif
