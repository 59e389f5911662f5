/*
 * health.c - grpc.health.v1.Health over lk_rpc_server.
 *
 * One status for the whole daemon, guarded by mu together with the
 * watcher table. A watcher is a Watch stream that has sent its request;
 * it leaves the table (under mu) before its stream is finished, so a
 * status change never sends on a finished stream. Sends happen under mu:
 * lk_rpc_stream_send only queues and never calls back into this module.
 * A Watch for an unknown service gets SERVICE_UNKNOWN and stays open, as
 * the specification asks, but never hears about changes.
 */
#include "lib/health.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "lib/log.h"

/* Longest service name accepted in a request; ours are far shorter. */

typedef struct {
  lk_rpc_stream *stream;
  int known; /* the service exists: send it every change */
} watcher;

struct lk_health {
  pthread_mutex_t mu;
  int serving;
  size_t n_services;
  char **services;
  size_t n_watchers;
  watcher watchers[LK_HEALTH_MAX_WATCHERS];
};

static int knows(const lk_health *h, const char *service) {
  for (size_t i = 0; i < h->n_services; i++) {
    if (strcmp(h->services[i], service) == 0)
      return 1;
  }
  return 0;
}

/* Packs one HealthCheckResponse into out (2 bytes are enough). */
static size_t pack_status(int status, unsigned char out[8]) {
  Grpc__Health__V1__HealthCheckResponse r =
      GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
  return grpc__health__v1__health_check_response__pack(&r, out);
}

static int wire_status(int serving) {
  return serving
             ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
             : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

lk_status lk_health_parse_request(const unsigned char *msg, size_t len,
                                  char out[LK_HEALTH_MAX_SERVICE_NAME + 1],
                                  lk_err *err) {
  Grpc__Health__V1__HealthCheckRequest *req =
      grpc__health__v1__health_check_request__unpack(NULL, len, msg);
  if (req == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "not a grpc.health.v1.HealthCheckRequest");
  }
  lk_status st = LK_OK;
  size_t n = req->service != NULL ? strlen(req->service) : 0;
  if (n > LK_HEALTH_MAX_SERVICE_NAME) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "service name longer than %d bytes",
                 LK_HEALTH_MAX_SERVICE_NAME);
  } else {
    memcpy(out, req->service != NULL ? req->service : "", n);
    out[n] = '\0';
  }
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
  return st;
}

/* Check: the current status, or NOT_FOUND for an unknown service. */
static void check_handle(void *ctx, lk_rpc_call *call) {
  lk_health *h = ctx;
  lk_err err;
  lk_err_clear(&err);
  char service[LK_HEALTH_MAX_SERVICE_NAME + 1];
  size_t len = 0;
  const unsigned char *req = lk_rpc_call_request(call, &len);
  if (lk_health_parse_request(req, len, service, &err) != LK_OK) {
    lk_rpc_call_fail(call, &err);
    return;
  }
  if (!knows(h, service)) {
    lk_fail(&err, LK_NOT_FOUND, "unknown service \"%s\"", service);
    lk_rpc_call_fail(call, &err);
    return;
  }
  pthread_mutex_lock(&h->mu);
  int status = wire_status(h->serving);
  pthread_mutex_unlock(&h->mu);
  unsigned char out[8];
  size_t n = pack_status(status, out);
  lk_rpc_call_finish(call, out, n);
}

static void watch_message(void *ctx, lk_rpc_stream *s, const unsigned char *msg,
                          size_t len) {
  lk_health *h = ctx;
  lk_err err;
  lk_err_clear(&err);
  char service[LK_HEALTH_MAX_SERVICE_NAME + 1];
  if (lk_health_parse_request(msg, len, service, &err) != LK_OK) {
    lk_rpc_stream_finish(s, &err);
    return;
  }
  pthread_mutex_lock(&h->mu);
  for (size_t i = 0; i < h->n_watchers; i++) {
    if (h->watchers[i].stream == s) {
      /* A second request on a server-streaming call: ignore it. */
      pthread_mutex_unlock(&h->mu);
      return;
    }
  }
  if (h->n_watchers == LK_HEALTH_MAX_WATCHERS) {
    pthread_mutex_unlock(&h->mu);
    lk_fail(&err, LK_RESOURCE_EXHAUSTED, "more than %d health watchers at once",
            LK_HEALTH_MAX_WATCHERS);
    lk_rpc_stream_finish(s, &err);
    return;
  }
  int known = knows(h, service);
  int status =
      known
          ? wire_status(h->serving)
          : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  unsigned char out[8];
  size_t n = pack_status(status, out);
  if (lk_rpc_stream_send(s, out, n, &err) != LK_OK) {
    pthread_mutex_unlock(&h->mu);
    lk_rpc_stream_finish(s, &err);
    return;
  }
  h->watchers[h->n_watchers++] = (watcher){s, known};
  pthread_mutex_unlock(&h->mu);
}

static void watch_end(void *ctx, lk_rpc_stream *s, int cancelled) {
  (void)cancelled;
  lk_health *h = ctx;
  pthread_mutex_lock(&h->mu);
  for (size_t i = 0; i < h->n_watchers; i++) {
    if (h->watchers[i].stream == s) {
      h->watchers[i] = h->watchers[--h->n_watchers];
      break;
    }
  }
  pthread_mutex_unlock(&h->mu);
  lk_rpc_stream_finish(s, NULL); /* ignored when already finished */
}

static const lk_rpc_stream_handler watch_handler = {
    .on_open = NULL,
    .on_message = watch_message,
    .on_end = watch_end,
};

lk_status lk_health_new(const char *const *services, size_t n_services,
                        lk_health **out, lk_err *err) {
  *out = NULL;
  lk_health *h = calloc(1, sizeof(*h));
  if (h == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  pthread_mutex_init(&h->mu, NULL);
  lk_status st = LK_OK;
  h->services = calloc(n_services + 1, sizeof(*h->services));
  if (h->services == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  h->services[h->n_services++] = strdup("");
  for (size_t i = 0; i < n_services; i++)
    h->services[h->n_services++] = strdup(services[i]);
  for (size_t i = 0; i < h->n_services; i++) {
    if (h->services[i] == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
      goto cleanup;
    }
  }
  *out = h;
  h = NULL;
cleanup:
  lk_health_destroy(h);
  return st;
}

void lk_health_destroy(lk_health *h) {
  if (h == NULL)
    return;
  for (size_t i = 0; i < h->n_services; i++)
    free(h->services[i]);
  free(h->services);
  pthread_mutex_destroy(&h->mu);
  free(h);
}

lk_status lk_health_listen(lk_health *h, lk_rpc_server *srv, const char *addr,
                           lk_err *err) {
  const char *const check[] = {LK_HEALTH_CHECK_METHOD};
  lk_status st =
      lk_rpc_server_listen(srv, addr, check, 1, check_handle, h, err);
  if (st == LK_OK) {
    st = lk_rpc_server_listen_server_stream(srv, addr, LK_HEALTH_WATCH_METHOD,
                                            &watch_handler, h, err);
  }
  return st;
}

void lk_health_set_serving(lk_health *h, int serving) {
  serving = serving != 0;
  pthread_mutex_lock(&h->mu);
  if (h->serving == serving) {
    pthread_mutex_unlock(&h->mu);
    return;
  }
  h->serving = serving;
  unsigned char out[8];
  size_t n = pack_status(wire_status(serving), out);
  for (size_t i = 0; i < h->n_watchers; i++) {
    lk_err err;
    if (h->watchers[i].known &&
        lk_rpc_stream_send(h->watchers[i].stream, out, n, &err) != LK_OK) {
      lk_log(LK_LOG_DEBUG, "health_watch_send_failed", "%s", err.msg);
    }
  }
  pthread_mutex_unlock(&h->mu);
  lk_log(LK_LOG_INFO, "health", "status=%s",
         serving ? "SERVING" : "NOT_SERVING");
}

int lk_health_serving(lk_health *h) {
  pthread_mutex_lock(&h->mu);
  int serving = h->serving;
  pthread_mutex_unlock(&h->mu);
  return serving;
}

void lk_health_end_watches(lk_health *h) {
  pthread_mutex_lock(&h->mu);
  for (size_t i = 0; i < h->n_watchers; i++) {
    /* watch_end still comes for each; its finish is then ignored. */
    lk_rpc_stream_finish(h->watchers[i].stream, NULL);
  }
  h->n_watchers = 0;
  pthread_mutex_unlock(&h->mu);
}
