/*
 * metrics_http.h - serves a metrics registry at GET /metrics over HTTP.
 *
 * Why: Prometheus scrapes plain HTTP. The HTTP side is libmicrohttpd (a
 * well-kept Debian library), never a hand-written parser. The endpoint
 * asks for no token: the page holds only ids, outcome names and counts,
 * never a secret, a token or a credential value (docs/SECURITY.md), and
 * operators bind it to an address only the scraper reaches.
 */
#ifndef LK_METRICS_HTTP_H
#define LK_METRICS_HTTP_H

#include "lib/metrics.h"
#include "lib/status.h"

typedef struct lk_metrics_http lk_metrics_http;

/* Checks that addr has the "host:port" shape lk_metrics_http_start takes
 * (without resolving the host); otherwise LK_INVALID_ARGUMENT naming flag. */
lk_status lk_metrics_http_check_address(const char *addr, const char *flag,
                                        lk_err *err) LK_MUST_CHECK;

/* Starts serving m (borrowed; it must outlive the server) on addr, a
 * "host:port" (IPv4, [IPv6] or a name; port 0 picks a free one); a bad
 * address is LK_INVALID_ARGUMENT naming flag ("--metrics-listen"). */
lk_status lk_metrics_http_start(lk_metrics *m, const char *addr,
                                const char *flag, lk_metrics_http **out,
                                lk_err *err) LK_MUST_CHECK;

/* Returns the TCP port the server is bound to. */
int lk_metrics_http_port(const lk_metrics_http *h);

/* Stops the server and frees it; NULL is ignored. */
void lk_metrics_http_stop(lk_metrics_http *h);

#endif
