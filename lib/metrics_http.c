/*
 * metrics_http.c - libmicrohttpd on one thread, answering GET /metrics.
 *
 * The daemon runs its own polling thread, takes at most 16 connections at
 * once (a scraper needs one), drops idle ones after 10 s, and reads no
 * request body: anything but GET or HEAD is 405, any path but /metrics is
 * 404. Each scrape renders the registry into a fresh buffer that
 * libmicrohttpd frees once sent.
 */
#include "lib/metrics_http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct lk_metrics_http {
  struct MHD_Daemon *d;
  lk_metrics *m;
  int port;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int code,
                             const char *text) {
  struct MHD_Response *r = MHD_create_response_from_buffer(
      strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
  if (r == NULL)
    return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                          "text/plain; charset=utf-8");
  if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
    MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  enum MHD_Result ret = MHD_queue_response(conn, code, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn,
                              const char *url, const char *method,
                              const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls) {
  (void)version;
  (void)upload_data;
  lk_metrics_http *h = cls;
  /* Answer at the first callback, which sees only the headers; a body a
   * client sends is discarded unread. */
  (void)con_cls;
  *upload_data_size = 0;
  if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
      strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
    return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                 "only GET /metrics is served here\n");
  if (strcmp(url, "/metrics") != 0)
    return reply(conn, MHD_HTTP_NOT_FOUND,
                 "not found: metrics are at /metrics\n");
  char *page = NULL;
  size_t len = 0;
  lk_err err;
  lk_err_clear(&err);
  if (lk_metrics_render(h->m, &page, &len, &err) != LK_OK)
    return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                 "metrics could not be rendered\n");
  struct MHD_Response *r =
      MHD_create_response_from_buffer(len, page, MHD_RESPMEM_MUST_FREE);
  if (r == NULL) {
    free(page);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
  enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ret;
}

/* Splits "host:port" / "[v6]:port" into host and port (in buffers). */
static int split_addr(const char *addr, char *host, size_t host_cap, char *port,
                      size_t port_cap) {
  const char *colon;
  const char *h = addr;
  size_t hl;
  if (addr[0] == '[') {
    const char *close = strchr(addr, ']');
    if (close == NULL || close[1] != ':')
      return 0;
    h = addr + 1;
    hl = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(addr, ':');
    if (colon == NULL || memchr(addr, ':', (size_t)(colon - addr)) != NULL)
      return 0;
    hl = (size_t)(colon - addr);
  }
  size_t pl = strlen(colon + 1);
  if (hl == 0 || hl >= host_cap || pl == 0 || pl >= port_cap)
    return 0;
  for (size_t i = 0; i < pl; i++) {
    if (colon[1 + i] < '0' || colon[1 + i] > '9')
      return 0;
  }
  memcpy(host, h, hl);
  host[hl] = '\0';
  memcpy(port, colon + 1, pl + 1);
  return atoi(port) <= 65535;
}

/* Splits addr into host and port, or fails naming flag. */
static lk_status parse_addr(const char *addr, const char *flag, char *host,
                            size_t host_cap, char *port, size_t port_cap,
                            lk_err *err) {
  if (addr == NULL || strncmp(addr, "unix:", 5) == 0 ||
      !split_addr(addr, host, host_cap, port, port_cap)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "%s '%.200s' is not a host:port address (for example "
                   "127.0.0.1:9464 or [::1]:9464)",
                   flag, addr ? addr : "");
  }
  return LK_OK;
}

lk_status lk_metrics_http_check_address(const char *addr, const char *flag,
                                        lk_err *err) {
  char host[256], port[8];
  return parse_addr(addr, flag, host, sizeof(host), port, sizeof(port), err);
}

lk_status lk_metrics_http_start(lk_metrics *m, const char *addr,
                                const char *flag, lk_metrics_http **out,
                                lk_err *err) {
  *out = NULL;
  char host[256], port[8];
  struct addrinfo hints, *ai = NULL;
  lk_metrics_http *h = NULL;
  lk_status st =
      parse_addr(addr, flag, host, sizeof(host), port, sizeof(port), err);
  if (st != LK_OK)
    return st;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int gai = getaddrinfo(host, port, &hints, &ai);
  if (gai != 0 || ai == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "%s '%.200s': cannot resolve: %s",
                 flag, addr, gai_strerror(gai));
    goto cleanup;
  }
  h = calloc(1, sizeof(*h));
  if (h == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  h->m = m;
  unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
  if (ai->ai_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  h->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR,
                          ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
                          (unsigned int)16, MHD_OPTION_CONNECTION_TIMEOUT,
                          (unsigned int)10, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                          (size_t)(64 * 1024), MHD_OPTION_END);
  if (h->d == NULL) {
    st = lk_fail(err, LK_UNAVAILABLE,
                 "%s %.200s: cannot listen (address in use or not local?)",
                 flag, addr);
    goto cleanup;
  }
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  h->port = info != NULL ? (int)info->port : atoi(port);
  *out = h;
  h = NULL;
cleanup:
  if (ai != NULL)
    freeaddrinfo(ai);
  free(h);
  return st;
}

int lk_metrics_http_port(const lk_metrics_http *h) {
  return h->port;
}

void lk_metrics_http_stop(lk_metrics_http *h) {
  if (h == NULL)
    return;
  if (h->d != NULL)
    MHD_stop_daemon(h->d);
  free(h);
}
