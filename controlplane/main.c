/*
 * main.c - latchkey-cp: the stateless control plane.
 *
 * It serves latchkey.v1.Admin (admin token), latchkey.v1.Sync (node
 * token) and latchkey.v1.Replication (admin token) on --listen, over a
 * catalog whose source of truth is etcd (controlplane/etcd_catalog): Admin
 * writes are sealed under the key ring and committed as etcd Txns; every
 * change etcd reports, whichever control plane made it, is fanned out to
 * this control plane's subscribed sidecars. Nothing is kept on local disk
 * but the key ring, so replicas of latchkey-cp can run side by side. The
 * key ring's audit key hashes secret values for lib/admin's audit.admin
 * lines and AuditHash (a rotation leaves it as it is), and sync_server
 * sends it to every replica.
 *
 * Key rotation (Admin RotateKey, controlplane/reseal): every replica shares
 * one key ring file; each refreshes its in-memory ring from the file
 * before it seals, and runs a re-sealer that finishes any rotation it
 * finds in the file, so a rotation survives the crash of the replica that
 * started it. The key-ring fence (controlplane/keyfence), an etcd key
 * beside --etcd-prefix, makes etcd refuse any credential sealed under a
 * key older than the one it names.
 *
 * OAuth 2.0 (controlplane/oauth_refresh): every replica runs a refresher
 * that renews oauth2 credentials' access tokens before they expire; an
 * etcd claim beside --etcd-prefix makes each renewal happen once across
 * all replicas. Sync/Refresh (node token, the agent's scope) asks for one
 * at once, when a vendor refused a token.
 *
 * Startup order: core dumps off and libsodium up, then the --tls-cert and
 * --tls-key pair (a bad one exits 2 with one line naming the flag, before
 * anything else is touched; lib/tls.c), then the key ring and tokens, then
 * etcd (the catalog must load before any listener), then the
 * listeners; "ready" is logged last. SIGTERM drains in-flight calls.
 */
#include <grpc/grpc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/etcd_catalog.h"
#include "controlplane/oauth_refresh.h"
#include "controlplane/reseal.h"
#include "controlplane/scope.h"
#include "controlplane/sync_server.h"
#include "latchkey/v1/sync.pb-c.h"
#include "lib/admin.h"
#include "lib/checkconf.h"
#include "lib/clock.h"
#include "lib/drain.h"
#include "lib/etcd.h"
#include "lib/flags.h"
#include "lib/keyfile.h"
#include "lib/health.h"
#include "lib/keyring.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/metrics_http.h"
#include "lib/oauth_token.h"
#include "lib/rpc_server.h"
#include "lib/secret.h"
#include "lib/tls.h"
#include "lib/token.h"

#define STATUS_METHOD "/latchkey.v1.Replication/Status"
#define REFRESH_METHOD "/latchkey.v1.Sync/Refresh"
/* A RefreshRequest holds two ids and a number: far less than this. */
#define REFRESH_MAX_REQUEST_BYTES 1024

typedef struct {
  const char *listen;
  const char *etcd;
  const char *etcd_prefix;
  const char *keyring;
  const char *admin_token_file;
  const char *node_token_file;
  const char *tls_cert;
  const char *tls_key;
  int64_t workers;
  const char *log_level;
  const char *metrics_listen;
  const char *health_listen;
  int64_t drain_timeout_ms;
  int check_config;
  int64_t oauth_margin_s;
  int64_t oauth_retry_max_s;
  int allow_insecure_token_urls;
} options;

typedef struct {
  lk_admin *admin;
  lk_token *admin_token;
  lk_token *node_token;
  lk_sync_server *_Atomic sync;
  lk_oauth_refresh *_Atomic oauth;
  lk_etcd_catalog *ecat;
  lk_metric *m_admin; /* Admin calls by method and gRPC code; NULL = off */
} cp;

/* lk_admin_hash_fn over the key ring's audit key. */
static lk_status hash_with_keyring(void *ctx, const unsigned char *value,
                                   size_t len, char out_hex[LK_AUDIT_HEX_BYTES],
                                   lk_err *err) {
  (void)err;
  lk_keyring_audit_hash(ctx, value, len, out_hex);
  return LK_OK;
}

static void on_catalog_change(void *ctx, int64_t revision) {
  cp *c = ctx;
  lk_sync_server *s = atomic_load(&c->sync);
  if (s != NULL)
    lk_sync_server_changed(s, revision);
  lk_oauth_refresh_changed(atomic_load(&c->oauth));
}

/* A past catalog lent to the Sync server for a resume. */
typedef struct {
  lk_catalog *cat;
  lk_store *store;
} past_catalog;

/* lk_sync_history_fn: the catalog at revision, read from etcd's history. */
static lk_status load_past_catalog(void *ctx, int64_t revision,
                                   lk_catalog **cat_out, void **handle_out,
                                   lk_err *err) {
  cp *c = ctx;
  past_catalog *p = calloc(1, sizeof(*p));
  *cat_out = NULL;
  *handle_out = NULL;
  if (p == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  lk_status st = lk_etcd_catalog_at(c->ecat, revision, &p->cat, &p->store, err);
  if (st != LK_OK) {
    free(p);
    return st;
  }
  *cat_out = p->cat;
  *handle_out = p;
  return LK_OK;
}

/* lk_sync_history_free_fn for load_past_catalog. */
static void free_past_catalog(void *ctx, void *handle) {
  past_catalog *p = handle;
  (void)ctx;
  if (p == NULL)
    return;
  lk_catalog_destroy(p->cat);
  lk_store_close(p->store);
  free(p);
}

static int check_admin(cp *c, lk_rpc_call *call) {
  size_t len = 0;
  const char *md = lk_rpc_call_metadata(call, "authorization", &len);
  if (lk_token_check_bearer(c->admin_token, md, len))
    return 1;
  lk_err err;
  lk_fail(&err, LK_UNAUTHENTICATED,
          "missing or wrong admin token: send metadata 'authorization: "
          "Bearer <token>' with the token from --admin-token-file "
          "(latchkeyctl --token-file)");
  lk_log(LK_LOG_WARN, "admin_unauthenticated", "%s refused",
         lk_rpc_call_method(call));
  lk_rpc_call_fail(call, &err);
  return 0;
}

/* Counts one Admin call: the method's last path part (the routes are
 * the fixed Admin methods, so the label set is bounded) and its code. */
static void count_admin(cp *c, lk_rpc_call *call, lk_status st) {
  static const char *const codes[] = {"0",  "1",  "2",  "3",  "4",  "5",
                                      "6",  "7",  "8",  "9",  "10", "11",
                                      "12", "13", "14", "15", "16"};
  const char *m = lk_rpc_call_method(call);
  const char *slash = strrchr(m, '/');
  const char *v[] = {slash ? slash + 1 : m, codes[lk_status_grpc_code(st)]};
  lk_metric_inc(c->m_admin, v, 1);
}

static void admin_handle(void *ctx, lk_rpc_call *call) {
  cp *c = ctx;
  if (!check_admin(c, call)) {
    count_admin(c, call, LK_UNAUTHENTICATED);
    return;
  }
  lk_err err;
  lk_err_clear(&err);
  size_t req_len = 0;
  const unsigned char *req = lk_rpc_call_request(call, &req_len);
  unsigned char *resp = NULL;
  size_t resp_len = 0;
  /* lk_admin_handle writes the audit.admin line of every change. */
  lk_status st = lk_admin_handle(c->admin, lk_rpc_call_method(call), req,
                                 req_len, &resp, &resp_len, &err);
  count_admin(c, call, st);
  if (st != LK_OK) {
    lk_rpc_call_fail(call, &err);
    return;
  }
  lk_rpc_call_finish(call, resp, resp_len);
  free(resp);
}

/* lk_oauth_refresh_cancelled_fn over the waiting Sync/Refresh call. */
static int refresh_cancelled(void *ctx) {
  return lk_rpc_call_cancelled(ctx);
}

/* lk_oauth_refresh_done_fn: answers the Sync/Refresh call (any thread). */
static void refresh_done(void *ctx, lk_status st, uint64_t generation,
                         const lk_err *err) {
  lk_rpc_call *call = ctx;
  if (st != LK_OK) {
    lk_rpc_call_fail(call, err);
    return;
  }
  Latchkey__V1__RefreshResponse resp = LATCHKEY__V1__REFRESH_RESPONSE__INIT;
  unsigned char buf[16];
  resp.generation = generation;
  size_t len = latchkey__v1__refresh_response__pack(&resp, buf);
  lk_rpc_call_finish(call, buf, len);
}

/* Sync/Refresh: a sidecar's vendor refused an oauth2 access token. The
 * node token as for Sync/Stream, then the credential must be in the
 * asking agent's scope; the answer comes when the refresher has one. */
static void refresh_handle(void *ctx, lk_rpc_call *call) {
  cp *c = ctx;
  lk_err err;
  size_t len = 0;
  int uses = 0;
  Latchkey__V1__RefreshRequest *req = NULL;
  lk_err_clear(&err);
  const char *md = lk_rpc_call_metadata(call, "authorization", &len);
  if (!lk_token_check_bearer(c->node_token, md, len)) {
    lk_fail(&err, LK_UNAUTHENTICATED,
            "missing or wrong node token: send metadata \"authorization: "
            "Bearer <token>\" with the token in the control plane's "
            "--node-token-file");
    lk_log(LK_LOG_WARN, "sync_unauthenticated", "%s refused",
           lk_rpc_call_method(call));
    lk_rpc_call_fail(call, &err);
    return;
  }
  const unsigned char *raw = lk_rpc_call_request(call, &len);
  if (len > REFRESH_MAX_REQUEST_BYTES) {
    lk_fail(&err, LK_RESOURCE_EXHAUSTED, "a RefreshRequest is at most %d bytes",
            REFRESH_MAX_REQUEST_BYTES);
    lk_rpc_call_fail(call, &err);
    return;
  }
  req = latchkey__v1__refresh_request__unpack(NULL, len, raw);
  if (req == NULL) {
    lk_fail(&err, LK_INVALID_ARGUMENT, "the RefreshRequest does not decode");
    lk_rpc_call_fail(call, &err);
    return;
  }
  lk_status st = lk_scope_agent_uses_credential(
      lk_etcd_catalog_catalog(c->ecat), req->agent_id, req->credential_id,
      &uses, &err);
  if (st == LK_OK && !uses) {
    st = lk_fail(&err, LK_PERMISSION_DENIED,
                 "credential %s is not bound in any budget of agent %s",
                 req->credential_id, req->agent_id);
    lk_log(LK_LOG_WARN, "oauth.refresh.denied", "%s", err.msg);
  }
  lk_oauth_refresh *r = atomic_load(&c->oauth);
  if (st == LK_OK && r == NULL) {
    st = lk_fail(&err, LK_UNAVAILABLE,
                 "the control plane is starting or stopping; retry");
  }
  if (st != LK_OK) {
    lk_rpc_call_fail(call, &err);
  } else {
    lk_log(LK_LOG_INFO, "oauth.refresh.requested",
           "agent %s asks for a refresh of credential %s (generation %llu "
           "refused by its vendor)",
           req->agent_id, req->credential_id,
           (unsigned long long)req->generation);
    lk_oauth_refresh_request_async(r, req->credential_id, req->generation,
                                   lk_rpc_call_deadline_ms(call),
                                   refresh_cancelled, refresh_done, call);
  }
  latchkey__v1__refresh_request__free_unpacked(req, NULL);
}

typedef struct {
  Latchkey__V1__ReplicaStatus *items;
  Latchkey__V1__ReplicaStatus **ptrs;
  size_t n, cap;
  int oom;
} status_acc;

static void add_replica(void *ctx, const lk_sync_replica *r) {
  status_acc *a = ctx;
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 16;
    Latchkey__V1__ReplicaStatus *items =
        realloc(a->items, cap * sizeof(*items));
    if (items == NULL) {
      a->oom = 1;
      return;
    }
    a->items = items;
    a->cap = cap;
  }
  Latchkey__V1__ReplicaStatus *s = &a->items[a->n++];
  latchkey__v1__replica_status__init(s);
  s->agent_id = strdup(r->agent_id);
  if (s->agent_id == NULL)
    a->oom = 1;
  s->peer_id = r->peer_id;
  s->applied_revision = r->applied_revision;
  s->lag_revisions = r->lag_revisions;
  s->ms_since_ack = r->ms_since_ack;
}

static void status_handle(void *ctx, lk_rpc_call *call) {
  cp *c = ctx;
  if (!check_admin(c, call))
    return;
  lk_err err;
  lk_err_clear(&err);
  status_acc acc = {NULL, NULL, 0, 0, 0};
  lk_sync_server *s = atomic_load(&c->sync);
  lk_status st = lk_sync_server_replicas(s, add_replica, &acc, &err);
  if (st == LK_OK && acc.oom)
    st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory");
  if (st == LK_OK) {
    acc.ptrs = calloc(acc.n ? acc.n : 1, sizeof(*acc.ptrs));
    if (acc.ptrs == NULL)
      st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  if (st == LK_OK) {
    for (size_t i = 0; i < acc.n; i++)
      acc.ptrs[i] = &acc.items[i];
    lk_sync_ack_latency lat;
    lk_sync_server_ack_latency(s, &lat);
    Latchkey__V1__ReplicationStatus out =
        LATCHKEY__V1__REPLICATION_STATUS__INIT;
    out.revision = lk_sync_server_revision(s);
    out.n_replicas = acc.n;
    out.replicas = acc.ptrs;
    out.last_write_to_all_acked_us = lat.last_us;
    out.writes_measured = lat.count;
    size_t len = latchkey__v1__replication_status__get_packed_size(&out);
    unsigned char *buf = malloc(len ? len : 1);
    if (buf == NULL) {
      st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory");
    } else {
      latchkey__v1__replication_status__pack(&out, buf);
      lk_rpc_call_finish(call, buf, len);
      free(buf);
    }
  }
  if (st != LK_OK)
    lk_rpc_call_fail(call, &err);
  for (size_t i = 0; i < acc.n; i++)
    free(acc.items[i].agent_id);
  free(acc.items);
  free(acc.ptrs);
}

/* This daemon's gRPC servers whose client connections the scrape-time
 * gauge latchkey_open_connections counts (NULL entries are skipped). */
typedef struct {
  lk_rpc_server *servers[2];
} conn_servers;

static void collect_connections(void *ctx, lk_metrics_emitter *e) {
  const conn_servers *cs = ctx;
  for (size_t i = 0; i < 2; i++)
    lk_rpc_server_emit_open_connections(cs->servers[i], e);
}

static lk_status register_connections(lk_metrics *m, conn_servers *cs,
                                      lk_metric **out, lk_err *err) {
  static const char *const labels[1] = {"listener"};
  return lk_metrics_gauge_fn(
      m, "latchkey_open_connections",
      "client connections open on each gRPC listener (grpc channelz)", labels,
      1, collect_connections, cs, out, err);
}

static int is_set(const char *s) {
  return s != NULL && s[0] != '\0';
}

static int run(const options *o) {
  lk_err err;
  lk_err_clear(&err);
  int rc = 1;
  cp c;
  memset(&c, 0, sizeof(c));
  lk_keyring *kr = NULL;
  lk_token *node_token = NULL;
  lk_etcd *etcd = NULL;
  lk_sync_server *sync = NULL;
  lk_metrics *metrics = NULL;
  lk_metrics_http *metrics_http = NULL;
  lk_reseal *reseal = NULL;
  lk_oauth_refresh *oauth = NULL;
  lk_rpc_server *srv = NULL;
  lk_health *health = NULL;
  lk_rpc_server *health_srv = NULL;
  conn_servers conns = {{NULL, NULL}};
  lk_metric *m_conns = NULL;
  int draining = 0;
  sigset_t sigs;

  if (lk_secret_disable_core_dumps(&err) != LK_OK ||
      lk_secret_init() != LK_OK) {
    lk_log(LK_LOG_ERROR, "startup_failed", "%s", err.msg);
    return 1;
  }
  if (o->tls_cert != NULL && o->tls_cert[0] != '\0') {
    lk_tls_validity v;
    if (lk_tls_check_server_files(o->tls_cert, o->tls_key, &v, &err) != LK_OK) {
      fprintf(stderr, "latchkey-cp: %s\n", err.msg);
      return 2;
    }
    if (v.expired) {
      lk_log(LK_LOG_WARN, "tls_cert_expired",
             "--tls-cert %s expired on %s: every client will refuse it "
             "until it is renewed",
             o->tls_cert, v.not_after);
    } else if (v.not_yet_valid) {
      lk_log(LK_LOG_WARN, "tls_cert_not_yet_valid",
             "--tls-cert %s is not valid before %s: clients will refuse it "
             "until then (check this host's clock)",
             o->tls_cert, v.not_before);
    }
  }
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  grpc_init();

  /* Before anything writes the ring: temps a killed predecessor left hold
   * key copies, even when it had our pid (PID 1 in a container). */
  if (lk_keyfile_remove_stale_temps_at_start(o->keyring) > 0)
    lk_log(LK_LOG_INFO, "keyring_stale_temp_removed",
           "removed temp files of key ring %s left by a killed process",
           o->keyring);
  if (is_set(o->metrics_listen)) {
    static const char *const admin_l[] = {"method", "code"};
    if (lk_metrics_new(1024, &metrics, &err) != LK_OK ||
        lk_metrics_counter(metrics, "latchkey_cp_admin_requests_total",
                           "Admin calls by method (CreateCredential, "
                           "DeleteTool, ...) and gRPC code.",
                           admin_l, 2, &c.m_admin, &err) != LK_OK)
      goto fail;
  }
  /* Health first, NOT_SERVING: probes get an answer while etcd loads. */
  {
    const char *services[] = {"latchkey.v1.Admin", "latchkey.v1.Sync"};
    if (lk_health_new(services, 2, &health, &err) != LK_OK)
      goto fail;
  }
  if (o->health_listen != NULL && o->health_listen[0] != '\0') {
    if (lk_rpc_server_new(1, &health_srv, &err) != LK_OK ||
        lk_health_listen(health, health_srv, o->health_listen, &err) != LK_OK ||
        lk_rpc_server_start(health_srv, &err) != LK_OK)
      goto fail;
  }
  if (lk_keyring_load_or_create(o->keyring, &kr, &err) != LK_OK)
    goto fail;
  if (lk_token_load(o->admin_token_file, &c.admin_token, &err) != LK_OK)
    goto fail;
  if (lk_token_load(o->node_token_file, &node_token, &err) != LK_OK)
    goto fail;
  c.node_token = node_token;
  if (lk_etcd_open(o->etcd, o->etcd_prefix, &etcd, &err) != LK_OK)
    goto fail;
  if (lk_etcd_catalog_open(etcd, on_catalog_change, &c, &c.ecat, &err) !=
      LK_OK) {
    goto fail;
  }
  /* Creates the key-ring fence when absent; every credential commit then
   * compares it (controlplane/keyfence). */
  if (lk_etcd_catalog_use_fence(c.ecat, kr, &err) != LK_OK)
    goto fail;
  lk_catalog *cat = lk_etcd_catalog_catalog(c.ecat);
  lk_admin_sealer sealer = lk_reseal_admin_sealer(kr);
  if (lk_admin_new_with_sealer(cat, sealer, &c.admin, &err) != LK_OK)
    goto fail;
  lk_admin_auditor auditor = {hash_with_keyring, kr};
  lk_admin_set_auditor(c.admin, auditor);
  lk_reseal_config rc_cfg = {etcd, cat, kr, 0, 0};
  if (lk_reseal_start(&rc_cfg, &reseal, &err) != LK_OK)
    goto fail;
  lk_admin_keys keys = {lk_reseal_admin_keys, reseal};
  lk_admin_set_keys(c.admin, keys);
  lk_oauth_refresh_config oauth_cfg = {
      .etcd = etcd,
      .cat = cat,
      .kr = kr,
      .metrics = metrics,
      .margin_ms = o->oauth_margin_s * 1000,
      .retry_max_ms = o->oauth_retry_max_s * 1000,
      .allow_insecure = o->allow_insecure_token_urls,
  };
  if (lk_oauth_refresh_start(&oauth_cfg, &oauth, &err) != LK_OK)
    goto fail;
  atomic_store(&c.oauth, oauth);
  if (lk_sync_server_new(cat, kr, node_token, &sync, &err) != LK_OK)
    goto fail;
  if (lk_sync_server_use_metrics(sync, metrics, &err) != LK_OK)
    goto fail;
  lk_sync_server_set_history(sync, load_past_catalog, free_past_catalog, &c);
  atomic_store(&c.sync, sync);
  lk_sync_server_changed(sync, lk_etcd_catalog_revision(c.ecat));

  if (lk_rpc_server_new((int)o->workers, &srv, &err) != LK_OK)
    goto fail;
  if (o->tls_cert != NULL && o->tls_cert[0] != '\0' &&
      lk_rpc_server_use_tls(srv, o->tls_cert, o->tls_key, &err) != LK_OK) {
    goto fail;
  }
  size_t n = 0;
  const char *const *m = lk_admin_methods(&n);
  const char *status_methods[] = {STATUS_METHOD};
  const char *refresh_methods[] = {REFRESH_METHOD};
  if (lk_rpc_server_listen(srv, o->listen, m, n, admin_handle, &c, &err) !=
          LK_OK ||
      lk_rpc_server_listen(srv, o->listen, status_methods, 1, status_handle, &c,
                           &err) != LK_OK ||
      lk_rpc_server_listen(srv, o->listen, refresh_methods, 1, refresh_handle,
                           &c, &err) != LK_OK ||
      lk_rpc_server_listen_stream(srv, o->listen, LK_SYNC_METHOD,
                                  lk_sync_server_handler(), sync,
                                  &err) != LK_OK ||
      lk_health_listen(health, srv, o->listen, &err) != LK_OK ||
      lk_rpc_server_start(srv, &err) != LK_OK) {
    goto fail;
  }
  conns.servers[0] = srv;
  conns.servers[1] = health_srv;
  if (metrics != NULL &&
      (register_connections(metrics, &conns, &m_conns, &err) != LK_OK ||
       lk_metrics_http_start(metrics, o->metrics_listen, "--metrics-listen",
                             &metrics_http, &err) != LK_OK))
    goto fail;
  lk_log(LK_LOG_INFO, "ready",
         "latchkey-cp serving Admin, Sync and Replication on %s%s, etcd %s "
         "prefix %s at revision %lld",
         o->listen, (o->tls_cert && o->tls_cert[0]) ? " (TLS)" : "", o->etcd,
         o->etcd_prefix, (long long)lk_etcd_catalog_revision(c.ecat));

  lk_health_set_serving(health, 1);
  int sig = lk_drain_wait(&sigs, 1000, NULL, NULL);
  lk_log(LK_LOG_INFO, "stopping",
         "signal %d (%s): health NOT_SERVING, no new calls, draining in-flight "
         "calls for up to %lld ms (a second signal exits at once)",
         sig, strsignal(sig), (long long)o->drain_timeout_ms);
  lk_health_set_serving(health, 0);
  if (lk_drain_arm_second_signal(&sigs, "latchkey-cp", &err) != LK_OK)
    lk_log(LK_LOG_WARN, "second_signal_unarmed", "%s", err.msg);
  draining = 1;
  rc = 0;
  goto cleanup;

fail:
  lk_log(LK_LOG_ERROR, "startup_failed", "%s: %s", lk_status_name(err.code),
         err.msg);
cleanup : {
  /* No scrape may read the Sync server once it is going away. */
  lk_metrics_http_stop(metrics_http);
  lk_metric_detach(m_conns);
  int64_t t0 = lk_now_ms();
  lk_rpc_server_shutdown(srv, draining ? (int)o->drain_timeout_ms : 0);
  if (draining) {
    lk_log(LK_LOG_INFO, "drained", "in-flight calls done after %lld ms",
           (long long)(lk_now_ms() - t0));
  }
}
  lk_rpc_server_destroy(srv);
  /* Probes on --health-listen saw NOT_SERVING throughout the drain; their
   * Watches end cleanly after it rather than with a dropped socket. */
  if (health != NULL)
    lk_health_end_watches(health);
  lk_rpc_server_shutdown(health_srv, 1000);
  lk_rpc_server_destroy(health_srv);
  lk_health_destroy(health);
  /* After the listeners: waiting Sync/Refresh calls were answered (or
   * noticed their cancellation) while the rpc server drained. Stopped
   * before the catalog goes, freed after its watch can no longer report a
   * change to it. */
  atomic_store(&c.oauth, NULL);
  lk_oauth_refresh_stop(oauth);
  lk_reseal_destroy(reseal);
  atomic_store(&c.sync, NULL);
  lk_etcd_catalog_destroy(c.ecat);
  lk_oauth_refresh_destroy(oauth);
  lk_sync_server_destroy(sync);
  lk_admin_destroy(c.admin);
  lk_etcd_close(etcd);
  lk_token_destroy(node_token);
  lk_token_destroy(c.admin_token);
  lk_keyring_destroy(kr);
  lk_metrics_destroy(metrics);
  grpc_shutdown();
  if (rc == 0)
    lk_log(LK_LOG_INFO, "stopped", "latchkey-cp stopped cleanly");
  return rc;
}

/* The read-only checks of --check-config, also run before every start so
 * a bad file or address stops the daemon with one line naming the flag. */
static lk_status check_files(const options *o, lk_err *err) {
  lk_status st = lk_checkconf_address("listen", o->listen, 0, err);
  if (st == LK_OK && o->health_listen != NULL && o->health_listen[0] != '\0')
    st = lk_checkconf_address("health-listen", o->health_listen, 0, err);
  if (st == LK_OK && (o->etcd == NULL || o->etcd[0] == '\0'))
    st = lk_fail(err, LK_INVALID_ARGUMENT, "--etcd is empty");
  if (st == LK_OK)
    st = lk_checkconf_key_file("keyring", o->keyring, err);
  if (st == LK_OK)
    st = lk_checkconf_secret_file("admin-token-file", o->admin_token_file, err);
  if (st == LK_OK)
    st = lk_checkconf_secret_file("node-token-file", o->node_token_file, err);
  /* --tls-cert and --tls-key: lk_tls_check_server_files, which says more
   * (expiry, a key that does not match). */
  return st;
}

int main(int argc, char **argv) {
  /* Before any thread and any curl or jansson use: their copies of OAuth
   * tokens are wiped when freed (lib/oauth_token). */
  lk_err init_err;
  if (lk_oauth_token_global_init(&init_err) != LK_OK) {
    fprintf(stderr, "latchkey-cp: %s\n", init_err.msg);
    return 1;
  }
  options o = {
      .listen = "127.0.0.1:7700",
      .etcd = "127.0.0.1:2379",
      .etcd_prefix = "/latchkey/",
      .keyring = "/etc/latchkey/keyring",
      .workers = 4,
      .log_level = "info",
      .drain_timeout_ms = 30000,
      .oauth_margin_s = LK_OAUTH_POLICY_DEFAULT_MARGIN_MS / 1000,
      .oauth_retry_max_s = LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS / 1000,
  };
  const lk_flag flags[] = {
      {"listen", LK_FLAG_STRING, &o.listen,
       "Admin, Sync and Replication address: host:port or unix:/path"},
      {"etcd", LK_FLAG_STRING, &o.etcd,
       "etcd endpoints, comma-separated host:port"},
      {"etcd-prefix", LK_FLAG_STRING, &o.etcd_prefix,
       "key prefix of the catalog in etcd (the key-ring fence is the key "
       "beside it: last byte replaced by '.', then keyring-fence)"},
      {"keyring", LK_FLAG_STRING, &o.keyring,
       "key ring file, created 0600 on first start"},
      {"admin-token-file", LK_FLAG_STRING, &o.admin_token_file,
       "file holding the Admin bearer token (required)"},
      {"node-token-file", LK_FLAG_STRING, &o.node_token_file,
       "file holding the token sidecars present (required)"},
      {"tls-cert", LK_FLAG_STRING, &o.tls_cert,
       "PEM certificate chain: serve TLS"},
      {"tls-key", LK_FLAG_STRING, &o.tls_key, "PEM private key for --tls-cert"},
      {"workers", LK_FLAG_INT, &o.workers, "gRPC worker threads"},
      {"log-level", LK_FLAG_STRING, &o.log_level, "debug|info|warn|error"},
      {"metrics-listen", LK_FLAG_STRING, &o.metrics_listen,
       "serve Prometheus metrics at http://HOST:PORT/metrics (no token: "
       "ids and counts only)"},
      {"health-listen", LK_FLAG_STRING, &o.health_listen,
       "address serving only grpc.health.v1.Health, no token (for probes)"},
      {"drain-timeout", LK_FLAG_DURATION_MS, &o.drain_timeout_ms,
       "on SIGTERM/SIGINT, how long in-flight calls may take to finish"},
      {"check-config", LK_FLAG_BOOL, &o.check_config,
       "check flags, files and addresses, print \"config ok\" and exit"},
      {"oauth-refresh-margin", LK_FLAG_INT, &o.oauth_margin_s,
       "refresh an oauth2 access token this many seconds before it expires "
       "(at most half its lifetime)"},
      {"oauth-retry-max", LK_FLAG_INT, &o.oauth_retry_max_s,
       "longest pause in seconds between failed OAuth refresh attempts "
       "(doubling from 1 s; they go on past expiry)"},
      {"allow-insecure-token-urls", LK_FLAG_BOOL, &o.allow_insecure_token_urls,
       "let oauth2 credentials use http:// token URLs (loopback tests only)"},
  };
  int n_flags = (int)(sizeof(flags) / sizeof(flags[0]));
  int rc = lk_flags_main("latchkey-cp",
                         "Latchkey control plane: Admin over etcd and scoped "
                         "replication to sidecars.",
                         flags, n_flags, argc, argv);
  if (rc >= 0)
    return rc;
  const char *usage_error = NULL;
  lk_err addr_err;
  lk_err_clear(&addr_err);
  if (o.admin_token_file == NULL || o.admin_token_file[0] == '\0') {
    usage_error = "--admin-token-file is required";
  } else if (o.node_token_file == NULL || o.node_token_file[0] == '\0') {
    usage_error = "--node-token-file is required";
  } else if ((o.tls_cert != NULL && o.tls_cert[0] != '\0') !=
             (o.tls_key != NULL && o.tls_key[0] != '\0')) {
    usage_error = "--tls-cert and --tls-key go together";
  } else if (o.workers < 1 || o.workers > 64) {
    usage_error = "--workers must be between 1 and 64";
  } else if (o.oauth_margin_s < 1 || o.oauth_margin_s > 7 * 86400) {
    usage_error =
        "--oauth-refresh-margin must be between 1 and 604800 "
        "seconds";
  } else if (o.oauth_retry_max_s < 1 || o.oauth_retry_max_s > 86400) {
    usage_error = "--oauth-retry-max must be between 1 and 86400 seconds";
  } else if (lk_log_set_level_name(o.log_level) != 0) {
    usage_error = "--log-level must be debug, info, warn or error";
  } else if (is_set(o.metrics_listen) &&
             lk_metrics_http_check_address(o.metrics_listen, "--metrics-listen",
                                           &addr_err) != LK_OK) {
    usage_error = addr_err.msg;
  }
  if (usage_error != NULL) {
    fprintf(stderr, "latchkey-cp: %s (see --help)\n", usage_error);
    return 2;
  }
  lk_err err;
  lk_err_clear(&err);
  if (check_files(&o, &err) != LK_OK) {
    fprintf(stderr, "latchkey-cp: %s\n", err.msg);
    return 2;
  }
  if (o.check_config) {
    lk_tls_validity v;
    if (o.tls_cert != NULL && o.tls_cert[0] != '\0' &&
        lk_tls_check_server_files(o.tls_cert, o.tls_key, &v, &err) != LK_OK) {
      fprintf(stderr, "latchkey-cp: %s\n", err.msg);
      return 2;
    }
    printf("config ok\n");
    return 0;
  }
  return run(&o);
}
