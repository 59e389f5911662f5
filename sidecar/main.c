/*
 * main.c - latchkeyd: wires flags, store, keys, services and signals.
 *
 * Startup order makes failure cheap and safe: core dumps off and libsodium
 * up before any secret can exist; store and node key before any listener,
 * so a call never sees a half-open sidecar; "ready" is logged only when
 * every listener accepts. Signals are blocked in every thread and taken by
 * sigwait here, so SIGTERM drains in-flight calls instead of killing them.
 *
 * Two modes. Standalone (no --control-plane): the sidecar is its own
 * control plane and may serve Admin on --admin-listen; it refreshes its
 * own oauth2 credentials (sidecar/local_refresh, told about Admin
 * credential writes), and a vendor's 401 to an oauth2 token asks that
 * refresher for an immediate refresh (sidecar/oauth_retry). Replica
 * (--control-plane): the catalog comes from the control plane over
 * Sync/Stream (sidecar/replica); Admin is refused, ToolCalls serve from
 * the replica on disk at once, before the first contact, and with
 * --max-staleness refuse calls once contact is too old; a vendor's 401
 * to an oauth2 token asks the control plane for a refresh over the
 * replica's channel (sidecar/oauth_retry). Shutdown drains calls, then
 * stops the replica thread (or the local refresher) and the refresh
 * flights, then closes the store.
 *
 * Audit key (lib/audit.h): standalone, it is derived from the node key
 * (lk_seal_key_audit_key), so hashes stay the same across restarts for as
 * long as the node key file does; a replica takes the control plane's,
 * from its store at start (opened with the node keys, at any step of a
 * rotation) and from the first batch of every stream.
 *
 * Node key rotation (replica mode; sidecar/node_keys): --rotate-node-key
 * starts one at start, SIGHUP at run time; the store is opened first so
 * the keys know which one the replica is sealed to. In standalone mode
 * SIGHUP stops the sidecar like SIGTERM, as it always has.
 */
#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/admin.h"
#include "lib/audit.h"
#include "lib/catalog.h"
#include "lib/checkconf.h"
#include "lib/clock.h"
#include "lib/drain.h"
#include "lib/flags.h"
#include "lib/health.h"
#include "lib/heap.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/metrics_http.h"
#include "lib/oauth_policy.h"
#include "lib/oauth_token.h"
#include "lib/rpc_server.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/store.h"
#include "lib/token.h"
#include "sidecar/forward.h"
#include "sidecar/local_refresh.h"
#include "sidecar/node_keys.h"
#include "sidecar/oauth_retry.h"
#include "sidecar/replica.h"
#include "sidecar/toolcalls.h"

#define DEFAULT_MAX_RESPONSE_BYTES (1024 * 1024)
#define MAX_RESPONSE_LIMIT (3 * 1024 * 1024)

typedef struct {
  const char *listen;
  const char *agent_id;
  const char *data_dir;
  const char *node_key;
  const char *admin_listen;
  const char *admin_token_file;
  const char *agent_token_file;
  const char *control_plane;
  const char *control_plane_token_file;
  const char *tls_ca;
  int rotate_node_key;
  int64_t max_staleness_ms;
  int allow_insecure_vendors;
  const char *setup_url_template;
  int64_t max_response_bytes;
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

/* Trim once free heap has grown by this much since the last trim
 * (lib/heap.h; docs/PERFORMANCE.md, "Memory"). A trim after a bulk load
 * costs about 0.3 ms; only Admin bursts and quiet polls check. */
#define HEAP_TRIM_SLACK_BYTES (256 * 1024)
/* The main loop trims only after a poll interval (100 ms) in which the
 * process used less CPU than this: under load the heap's free part swings
 * by more than the slack from one poll to the next, and trimming then
 * would only hand pages back to be faulted in again. */
#define HEAP_TRIM_QUIET_CPU_NS (10 * 1000 * 1000)

typedef struct {
  lk_admin *admin;
  lk_token *token;
  lk_heap_trimmer *trimmer;
  atomic_int in_flight;      /* Admin calls inside admin_handle */
  lk_local_refresh *refresh; /* told about credential writes */
} admin_ctx;

/* Returns 1 when Admin method path writes credentials. */
static int writes_credentials(const char *method) {
  static const char *const paths[] = {
      "/latchkey.v1.Admin/CreateCredential",
      "/latchkey.v1.Admin/UpdateCredential",
      "/latchkey.v1.Admin/DeleteCredential",
  };
  for (size_t i = 0; method != NULL && i < sizeof(paths) / sizeof(paths[0]);
       i++) {
    if (strcmp(method, paths[i]) == 0)
      return 1;
  }
  return 0;
}

/* Admin: every call needs the bearer token, checked in constant time. */
static void admin_handle(void *ctx, lk_rpc_call *call) {
  admin_ctx *a = ctx;
  lk_err err;
  lk_err_clear(&err);
  size_t md_len = 0;
  const char *md = lk_rpc_call_metadata(call, "authorization", &md_len);
  if (!lk_token_check_bearer(a->token, md, md_len)) {
    lk_fail(&err, LK_UNAUTHENTICATED,
            "missing or wrong admin token: send metadata "
            "'authorization: Bearer <token>' with the token from "
            "--admin-token-file (latchkeyctl --token-file)");
    lk_log(LK_LOG_WARN, "admin_unauthenticated", "%s refused",
           lk_rpc_call_method(call));
    lk_rpc_call_fail(call, &err);
    return;
  }
  size_t req_len = 0;
  const unsigned char *req = lk_rpc_call_request(call, &req_len);
  unsigned char *resp = NULL;
  size_t resp_len = 0;
  /* lk_admin_handle writes the audit.admin line of every change. */
  atomic_fetch_add(&a->in_flight, 1);
  lk_status st = lk_admin_handle(a->admin, lk_rpc_call_method(call), req,
                                 req_len, &resp, &resp_len, &err);
  /* The last Admin call of a burst (a bulk load: hundreds of binds in
   * flight) gives the burst's free heap back before it replies, so the
   * caller that waits for its replies finds the sidecar at its settled
   * size. Each Admin write already waits for an fsync; the check is a
   * /proc read and a mallinfo2 walk. */
  if (atomic_fetch_sub(&a->in_flight, 1) == 1)
    lk_heap_trim_if_slack(a->trimmer);
  if (st != LK_OK) {
    lk_rpc_call_fail(call, &err);
    return;
  }
  if (writes_credentials(lk_rpc_call_method(call)))
    lk_local_refresh_changed(a->refresh);
  lk_rpc_call_finish(call, resp, resp_len);
  free(resp);
}

/* lk_admin_hash_fn over the sidecar's audit key. */
static lk_status hash_with_audit_key(void *ctx, const unsigned char *value,
                                     size_t len,
                                     char out_hex[LK_AUDIT_HEX_BYTES],
                                     lk_err *err) {
  return lk_audit_key_hash(ctx, value, len, out_hex, err);
}

/* Sets audit to the standalone sidecar's key, derived from the node key. */
static lk_status derive_audit_key(const lk_seal_key *key, lk_audit_key *audit,
                                  lk_err *err) {
  lk_secret *k = NULL;
  lk_status st = lk_seal_key_audit_key(key, &k, err);
  if (st == LK_OK)
    st = lk_audit_key_set(audit, lk_secret_data(k), lk_secret_len(k), err);
  lk_secret_free(k);
  return st;
}

/* grpc's own log lines become JSON lines like every other (DESIGN §7). */
static void grpc_log_to_json(gpr_log_func_args *args) {
  lk_log_level level = LK_LOG_DEBUG;
  if (args->severity == GPR_LOG_SEVERITY_ERROR)
    level = LK_LOG_ERROR;
  else if (args->severity == GPR_LOG_SEVERITY_INFO)
    level = LK_LOG_INFO;
  lk_log(level, "grpc", "%s:%d %s", args->file, args->line, args->message);
}

/* lk_toolcalls_config.stale for replica mode. */
static int replica_stale(void *ctx, lk_err *err) {
  return lk_replica_too_stale(ctx, err);
}

/* lk_oauth_retry_config's view of the replica (replica mode). */
static lk_status replica_refresh(void *ctx, const char *credential_id,
                                 uint64_t generation, int64_t deadline_ms,
                                 uint64_t *now_generation, lk_err *err) {
  return lk_replica_refresh(ctx, credential_id, generation, deadline_ms,
                            now_generation, err);
}

static uint64_t replica_applied_count(void *ctx) {
  return lk_replica_applied_count(ctx);
}

static uint64_t replica_wait_applied(void *ctx, uint64_t seen,
                                     int64_t deadline_ms) {
  return lk_replica_wait_applied(ctx, seen, deadline_ms);
}

/* lk_oauth_retry_config's view of the local refresher (standalone mode):
 * it returns once the catalog holds the new token. */
static lk_status local_refresh(void *ctx, const char *credential_id,
                               uint64_t generation, int64_t deadline_ms,
                               uint64_t *now_generation, lk_err *err) {
  return lk_local_refresh_request(ctx, credential_id, generation, deadline_ms,
                                  now_generation, err);
}

static uint64_t local_stored_count(void *ctx) {
  return lk_local_refresh_stored_count(ctx);
}

static uint64_t local_wait_stored(void *ctx, uint64_t seen,
                                  int64_t deadline_ms) {
  return lk_local_refresh_wait_stored(ctx, seen, deadline_ms);
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

typedef struct {
  lk_replica *replica;
  lk_health *health;
  lk_heap_trimmer *trimmer;
  int64_t cpu_ns; /* process CPU time at the previous poll */
} readiness;

/* This process's CPU time (all threads) in nanoseconds, 0 if unknown. */
static int64_t process_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
    return 0;
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* lk_drain_wait's poll, every 100 ms: once a burst is over (a replica
 * snapshot, a burst of calls), give its free heap back; a replica is
 * ready once it has a catalog, from disk or from its first snapshot
 * (revision > 0). */
static void poll_ready(void *ctx) {
  readiness *r = ctx;
  int64_t cpu = process_cpu_ns();
  if (cpu - r->cpu_ns < HEAP_TRIM_QUIET_CPU_NS)
    lk_heap_trim_if_slack(r->trimmer);
  r->cpu_ns = cpu;
  if (r->replica == NULL)
    return;
  if (!lk_health_serving(r->health) && lk_replica_revision(r->replica) > 0) {
    lk_log(LK_LOG_INFO, "replica_loaded", "replica at revision %lld: serving",
           (long long)lk_replica_revision(r->replica));
    lk_health_set_serving(r->health, 1);
  }
}

static int run(const options *o) {
  lk_err err;
  lk_err_clear(&err);
  int rc = 1;
  lk_store *store = NULL;
  lk_catalog *cat = NULL;
  lk_node_keys *keys = NULL;
  lk_audit_key *audit = NULL;
  lk_forwarder *fwd = NULL;
  lk_toolcalls *tc = NULL;
  lk_replica *replica = NULL;
  lk_local_refresh *local = NULL;
  lk_oauth_retry *oauth_retry = NULL;
  lk_rpc_server *srv = NULL;
  admin_ctx admin = {NULL, NULL, NULL, 0, NULL};
  lk_heap_trimmer *trimmer = NULL;
  lk_token *agent_token = NULL;
  lk_metrics *metrics = NULL;
  lk_metrics_http *metrics_http = NULL;
  lk_health *health = NULL;
  lk_rpc_server *health_srv = NULL;
  conn_servers conns = {{NULL, NULL}};
  lk_metric *m_conns = NULL;
  int draining = 0;
  sigset_t sigs;

  /* malloc's policy first: no thread may exist yet (lib/heap.h). */
  if (!lk_heap_configure())
    lk_log(LK_LOG_DEBUG, "heap_policy_unsupported",
           "this malloc ignores mallopt (a sanitizer build): default policy");
  if (lk_heap_trimmer_new(HEAP_TRIM_SLACK_BYTES, &trimmer, &err) != LK_OK ||
      lk_secret_disable_core_dumps(&err) != LK_OK ||
      lk_secret_init() != LK_OK || lk_forward_global_init(&err) != LK_OK) {
    lk_log(LK_LOG_ERROR, "startup_failed", "%s", err.msg);
    lk_heap_trimmer_destroy(trimmer);
    return 1;
  }
  admin.trimmer = trimmer;
  /* Block signals before any thread starts so only sigwait sees them. */
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  gpr_set_log_function(grpc_log_to_json);
  grpc_init();

  /* Label combinations per family are capped: tools times outcomes. */
  if (is_set(o->metrics_listen) &&
      lk_metrics_new(1024, &metrics, &err) != LK_OK)
    goto fail;
  /* Health first, NOT_SERVING: probes get an answer while loading. */
  {
    const char *services[2] = {"latchkey.v1.ToolCalls", "latchkey.v1.Admin"};
    int admin_too = !is_set(o->control_plane) && is_set(o->admin_listen);
    if (lk_health_new(services, admin_too ? 2 : 1, &health, &err) != LK_OK)
      goto fail;
  }
  if (is_set(o->health_listen)) {
    if (lk_rpc_server_new(1, &health_srv, &err) != LK_OK ||
        lk_health_listen(health, health_srv, o->health_listen, &err) != LK_OK ||
        lk_rpc_server_start(health_srv, &err) != LK_OK)
      goto fail;
  }

  if (lk_store_open(o->data_dir, &store, &err) != LK_OK)
    goto fail;
  if (lk_catalog_open(store, &cat, &err) != LK_OK)
    goto fail;
  {
    unsigned char sealed_pk[LK_SEAL_PUBLIC_KEY_BYTES];
    lk_node_keys_config kcfg = {
        .path = o->node_key,
        .replica = is_set(o->control_plane),
        .rotate = o->rotate_node_key,
        .sealed_pk = is_set(o->control_plane) &&
                             lk_replica_stored_node_key(store, sealed_pk)
                         ? sealed_pk
                         : NULL,
    };
    if (lk_node_keys_open(&kcfg, &keys, &err) != LK_OK)
      goto fail;
  }
  if (lk_audit_key_new(&audit, &err) != LK_OK)
    goto fail;
  if (!is_set(o->control_plane) &&
      derive_audit_key(lk_node_keys_standalone_key(keys), audit, &err) != LK_OK)
    goto fail;
  lk_forward_opts fo = {.max_response_bytes = (size_t)o->max_response_bytes,
                        .max_connections = 64,
                        .test_only_resolve = NULL};
  if (lk_forwarder_new(&fo, &fwd, &err) != LK_OK)
    goto fail;
  if (is_set(o->control_plane)) {
    lk_replica_config rcfg = {
        .control_plane = o->control_plane,
        .token_file = o->control_plane_token_file,
        .tls_ca = o->tls_ca,
        .agent_id = o->agent_id,
        .keys = keys,
        .max_staleness_ms = o->max_staleness_ms,
        .audit = audit,
        .metrics = metrics,
    };
    if (lk_replica_start(&rcfg, store, &replica, &err) != LK_OK)
      goto fail;
  } else {
    /* Standalone: this sidecar refreshes its own oauth2 credentials. */
    lk_local_refresh_config lcfg = {
        .cat = cat,
        .key = lk_node_keys_standalone_key(keys),
        .audit = audit,
        .metrics = metrics,
        .agent_id = o->agent_id,
        .margin_ms = o->oauth_margin_s * 1000,
        .retry_max_ms = o->oauth_retry_max_s * 1000,
        .allow_insecure = o->allow_insecure_token_urls,
    };
    if (lk_local_refresh_start(&lcfg, &local, &err) != LK_OK)
      goto fail;
    admin.refresh = local;
  }
  lk_toolcalls_config tcfg = {
      .agent_id = o->agent_id,
      .setup_url_template = o->setup_url_template,
      .allow_insecure_vendors = o->allow_insecure_vendors,
      .max_response_bytes = (size_t)o->max_response_bytes,
      .audit = audit,
      .metrics = metrics,
  };
  {
    /* A vendor's 401 to an oauth2 token: one refresh, one retry, asked of
     * the control plane (replica) or of the local refresher. */
    lk_oauth_retry_config ocfg = {
        .refresh = replica != NULL ? replica_refresh : local_refresh,
        .applied_count =
            replica != NULL ? replica_applied_count : local_stored_count,
        .wait_applied =
            replica != NULL ? replica_wait_applied : local_wait_stored,
        .ctx = replica != NULL ? (void *)replica : (void *)local,
        .cat = cat,
        .metrics = metrics,
    };
    if (replica != NULL) {
      tcfg.stale = replica_stale;
      tcfg.stale_ctx = replica;
    }
    if (lk_oauth_retry_new(&ocfg, &oauth_retry, &err) != LK_OK)
      goto fail;
    tcfg.oauth_retry = oauth_retry;
  }
  if (o->agent_token_file != NULL && o->agent_token_file[0] != '\0') {
    if (lk_token_load(o->agent_token_file, &agent_token, &err) != LK_OK)
      goto fail;
    tcfg.agent_token = agent_token;
  }
  if (lk_toolcalls_new(&tcfg, cat, keys, fwd, &tc, &err) != LK_OK)
    goto fail;
  if (lk_rpc_server_new((int)o->workers, &srv, &err) != LK_OK)
    goto fail;

  size_t n = 0;
  const char *const *m = lk_toolcalls_methods(&n);
  if (lk_rpc_server_listen(srv, o->listen, m, n, lk_toolcalls_handle, tc,
                           &err) != LK_OK ||
      lk_health_listen(health, srv, o->listen, &err) != LK_OK) {
    goto fail;
  }
  if (replica == NULL && is_set(o->admin_listen)) {
    if (lk_token_load(o->admin_token_file, &admin.token, &err) != LK_OK) {
      goto fail;
    }
    if (lk_admin_new(cat, lk_node_keys_standalone_key(keys), &admin.admin,
                     &err) != LK_OK)
      goto fail;
    lk_admin_auditor auditor = {hash_with_audit_key, audit};
    lk_admin_set_auditor(admin.admin, auditor);
    m = lk_admin_methods(&n);
    if (lk_rpc_server_listen(srv, o->admin_listen, m, n, admin_handle, &admin,
                             &err) != LK_OK ||
        lk_health_listen(health, srv, o->admin_listen, &err) != LK_OK) {
      goto fail;
    }
  }
  if (lk_rpc_server_start(srv, &err) != LK_OK)
    goto fail;
  conns.servers[0] = srv;
  conns.servers[1] = health_srv;
  if (metrics != NULL &&
      (register_connections(metrics, &conns, &m_conns, &err) != LK_OK ||
       lk_metrics_http_start(metrics, o->metrics_listen, "--metrics-listen",
                             &metrics_http, &err) != LK_OK))
    goto fail;
  /* Standalone: serving now. A replica: once its catalog is loaded (from
   * disk already, or after its first snapshot: poll_ready). */
  readiness ready = {replica, health, trimmer, process_cpu_ns()};
  if (replica == NULL)
    lk_health_set_serving(health, 1);
  else
    poll_ready(&ready);
  if (replica != NULL) {
    lk_log(LK_LOG_INFO, "ready",
           "latchkeyd serving ToolCalls on %s for agent %s (replica of %s at "
           "revision %lld)",
           o->listen, o->agent_id, o->control_plane,
           (long long)lk_replica_revision(replica));
  } else {
    lk_log(LK_LOG_INFO, "ready",
           "latchkeyd serving ToolCalls on %s%s%s for agent %s (standalone)",
           o->listen, admin.admin ? ", Admin on " : "",
           admin.admin ? o->admin_listen : "", o->agent_id);
  }

  int sig = 0;
  for (;;) {
    sig = lk_drain_wait(&sigs, 100, poll_ready, &ready);
    if (sig != SIGHUP || replica == NULL)
      break;
    /* Replica mode: SIGHUP starts a node key rotation; calls go on. */
    if (lk_node_keys_rotate(keys, &err) != LK_OK) {
      lk_log(LK_LOG_ERROR, "node_key.rotate_failed",
             "SIGHUP: cannot start a node key rotation: %s", err.msg);
    }
  }
  lk_log(LK_LOG_INFO, "stopping",
         "signal %d (%s): health NOT_SERVING, no new calls, draining in-flight "
         "calls for up to %lld ms (a second signal exits at once)",
         sig, strsignal(sig), (long long)o->drain_timeout_ms);
  lk_health_set_serving(health, 0);
  if (lk_drain_arm_second_signal(&sigs, "latchkeyd", &err) != LK_OK)
    lk_log(LK_LOG_WARN, "second_signal_unarmed", "%s", err.msg);
  draining = 1;
  rc = 0;
  goto cleanup;

fail:
  lk_log(LK_LOG_ERROR, "startup_failed", "%s: %s", lk_status_name(err.code),
         err.msg);
cleanup:
  /* No scrape may read a module that is going away. */
  lk_metrics_http_stop(metrics_http);
  lk_metric_detach(m_conns);
  /* Drain calls first: in-flight tool calls still need the forwarder. */
  {
    int64_t t0 = lk_now_ms();
    lk_rpc_server_shutdown(srv, draining ? (int)o->drain_timeout_ms : 0);
    if (draining) {
      lk_log(LK_LOG_INFO, "drained", "in-flight calls done after %lld ms",
             (long long)(lk_now_ms() - t0));
    }
  }
  /* Probes on --health-listen saw NOT_SERVING throughout the drain; their
   * Watches end cleanly after it rather than with a dropped socket. */
  if (health != NULL)
    lk_health_end_watches(health);
  lk_rpc_server_shutdown(health_srv, 1000);
  lk_rpc_server_destroy(health_srv);
  /* No batch may land while the store flushes and closes, and no refresh
   * either (waiting refresh requests are answered UNAVAILABLE). */
  lk_replica_stop(replica);
  lk_local_refresh_stop(local);
  /* Calls waiting for a refreshed token are answered (the replica is
   * stopped: no new one comes) before the forwarder they would retry on
   * goes. */
  lk_oauth_retry_stop(oauth_retry);
  lk_forwarder_destroy(fwd);
  lk_rpc_server_destroy(srv);
  lk_toolcalls_destroy(tc);
  lk_oauth_retry_destroy(oauth_retry);
  lk_replica_destroy(replica);
  lk_local_refresh_destroy(local);
  lk_admin_destroy(admin.admin);
  lk_token_destroy(admin.token);
  lk_heap_trimmer_destroy(trimmer);
  lk_token_destroy(agent_token);
  lk_audit_key_destroy(audit);
  lk_node_keys_destroy(keys);
  lk_catalog_destroy(cat);
  lk_health_destroy(health);
  if (store != NULL) {
    lk_err ferr;
    /* Leave no stale value in the memtable or old files at rest. */
    if (lk_store_flush_compact(store, &ferr) != LK_OK) {
      lk_log(LK_LOG_WARN, "store_compact_failed", "%s", ferr.msg);
    }
  }
  lk_store_close(store);
  lk_metrics_destroy(metrics);
  grpc_shutdown();
  if (rc == 0)
    lk_log(LK_LOG_INFO, "stopped", "latchkeyd stopped cleanly");
  return rc;
}

/* The read-only checks of --check-config, also run before every start so
 * a bad file or address stops the daemon with one line naming the flag. */
static lk_status check_files(const options *o, lk_err *err) {
  lk_status st = lk_checkconf_address("listen", o->listen, 0, err);
  if (st == LK_OK && is_set(o->admin_listen))
    st = lk_checkconf_address("admin-listen", o->admin_listen, 0, err);
  if (st == LK_OK && is_set(o->health_listen))
    st = lk_checkconf_address("health-listen", o->health_listen, 0, err);
  if (st == LK_OK && is_set(o->control_plane))
    st = lk_checkconf_target("control-plane", o->control_plane, err);
  if (st == LK_OK)
    st = lk_checkconf_dir("data-dir", o->data_dir, err);
  if (st == LK_OK)
    st = lk_checkconf_key_file("node-key", o->node_key, err);
  if (st == LK_OK && is_set(o->admin_listen))
    st = lk_checkconf_secret_file("admin-token-file", o->admin_token_file, err);
  if (st == LK_OK && is_set(o->agent_token_file))
    st = lk_checkconf_secret_file("agent-token-file", o->agent_token_file, err);
  if (st == LK_OK && is_set(o->control_plane))
    st = lk_checkconf_secret_file("control-plane-token-file",
                                  o->control_plane_token_file, err);
  if (st == LK_OK && is_set(o->tls_ca))
    st = lk_checkconf_readable_file("tls-ca", o->tls_ca, err);
  return st;
}

/* One gRPC worker per online CPU, at most 4: on a small machine more
 * workers than cores only add context switches to every call. */
static int64_t default_workers(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1)
    return 1;
  return n < 4 ? n : 4;
}

int main(int argc, char **argv) {
  /* Before any thread and any curl or jansson use: their copies of OAuth
   * tokens are wiped when freed (lib/oauth_token). */
  lk_err init_err;
  if (lk_oauth_token_global_init(&init_err) != LK_OK) {
    fprintf(stderr, "latchkeyd: %s\n", init_err.msg);
    return 1;
  }
  options o = {
      .listen = "unix:/run/latchkey/agent.sock",
      .data_dir = "/var/lib/latchkey",
      .node_key = "/etc/latchkey/node.key",
      .max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES,
      .workers = default_workers(),
      .log_level = "info",
      .drain_timeout_ms = 30000,
      .oauth_margin_s = LK_OAUTH_POLICY_DEFAULT_MARGIN_MS / 1000,
      .oauth_retry_max_s = LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS / 1000,
  };
  const lk_flag flags[] = {
      {"listen", LK_FLAG_STRING, &o.listen,
       "ToolCalls address: unix:/path or host:port"},
      {"agent-id", LK_FLAG_STRING, &o.agent_id,
       "the agent this sidecar serves (required)"},
      {"data-dir", LK_FLAG_STRING, &o.data_dir, "RocksDB directory"},
      {"node-key", LK_FLAG_STRING, &o.node_key,
       "node key file, created 0600 on first start"},
      {"admin-listen", LK_FLAG_STRING, &o.admin_listen,
       "Admin address (standalone mode)"},
      {"agent-token-file", LK_FLAG_STRING, &o.agent_token_file,
       "file holding a token every ToolCalls caller must present"},
      {"admin-token-file", LK_FLAG_STRING, &o.admin_token_file,
       "file holding the Admin bearer token"},
      {"control-plane", LK_FLAG_STRING, &o.control_plane,
       "control plane address: follow it as a replica (no Admin here)"},
      {"control-plane-token-file", LK_FLAG_STRING, &o.control_plane_token_file,
       "file holding the node token the control plane expects (replica)"},
      {"tls-ca", LK_FLAG_STRING, &o.tls_ca,
       "root certificates (PEM) to verify the control plane; TLS when set"},
      {"rotate-node-key", LK_FLAG_BOOL, &o.rotate_node_key,
       "start a node key rotation: create <node-key>.next and have the "
       "control plane re-seal to it (replica; SIGHUP does it at run time)"},
      {"max-staleness", LK_FLAG_DURATION_MS, &o.max_staleness_ms,
       "refuse calls after this long without contact (replica; 0 = off)"},
      {"allow-insecure-vendors", LK_FLAG_BOOL, &o.allow_insecure_vendors,
       "allow http:// vendors on loopback"},
      {"setup-url-template", LK_FLAG_STRING, &o.setup_url_template,
       "setup link for missing credentials ({tool} {budget} {type})"},
      {"max-response-bytes", LK_FLAG_INT, &o.max_response_bytes,
       "largest vendor response body passed back, in bytes"},
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
       "(at most half its lifetime; standalone)"},
      {"oauth-retry-max", LK_FLAG_INT, &o.oauth_retry_max_s,
       "longest pause in seconds between failed OAuth refresh attempts "
       "(doubling from 1 s; they go on past expiry; standalone)"},
      {"allow-insecure-token-urls", LK_FLAG_BOOL, &o.allow_insecure_token_urls,
       "let oauth2 credentials use http:// token URLs (loopback tests only; "
       "standalone)"},
  };
  int n_flags = (int)(sizeof(flags) / sizeof(flags[0]));
  int rc = lk_flags_main("latchkeyd",
                         "Latchkey sidecar: calls tools for an agent with "
                         "credentials it never sees.",
                         flags, n_flags, argc, argv);
  if (rc >= 0)
    return rc;
  const char *usage_error = NULL;
  lk_err addr_err;
  lk_err_clear(&addr_err);
  if (o.agent_id == NULL || o.agent_id[0] == '\0') {
    usage_error = "--agent-id is required";
  } else if (is_set(o.control_plane) && is_set(o.admin_listen)) {
    usage_error =
        "--admin-listen is refused in replica mode (--control-plane): "
        "Admin is the control plane's job; send Admin calls to it "
        "(latchkeyctl --server CONTROL_PLANE)";
  } else if (is_set(o.control_plane) && !is_set(o.control_plane_token_file)) {
    usage_error =
        "--control-plane needs --control-plane-token-file (the node token "
        "the control plane's --node-token-file holds)";
  } else if (!is_set(o.control_plane) &&
             (is_set(o.control_plane_token_file) || is_set(o.tls_ca) ||
              o.max_staleness_ms != 0)) {
    usage_error =
        "--control-plane-token-file, --tls-ca and --max-staleness apply to "
        "replica mode only: add --control-plane ADDR";
  } else if (!is_set(o.control_plane) && o.rotate_node_key) {
    usage_error =
        "--rotate-node-key applies to replica mode only (--control-plane "
        "ADDR): a standalone sidecar's credentials are sealed under its node "
        "key and no control plane would re-seal them";
  } else if (o.admin_listen != NULL && o.admin_listen[0] != '\0' &&
             (o.admin_token_file == NULL || o.admin_token_file[0] == '\0')) {
    usage_error = "--admin-listen needs --admin-token-file";
  } else if (o.max_response_bytes < 1 ||
             o.max_response_bytes > MAX_RESPONSE_LIMIT) {
    usage_error =
        "--max-response-bytes must be between 1 and 3145728 (gRPC "
        "clients refuse messages over 4 MiB by default)";
  } else if (o.workers < 1 || o.workers > 64) {
    usage_error = "--workers must be between 1 and 64";
  } else if (o.oauth_margin_s < 1 || o.oauth_margin_s > 7 * 86400) {
    usage_error =
        "--oauth-refresh-margin must be between 1 and 604800 "
        "seconds";
  } else if (o.oauth_retry_max_s < 1 || o.oauth_retry_max_s > 86400) {
    usage_error = "--oauth-retry-max must be between 1 and 86400 seconds";
  } else if (is_set(o.control_plane) &&
             (o.allow_insecure_token_urls ||
              o.oauth_margin_s != LK_OAUTH_POLICY_DEFAULT_MARGIN_MS / 1000 ||
              o.oauth_retry_max_s !=
                  LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS / 1000)) {
    usage_error =
        "--oauth-refresh-margin, --oauth-retry-max and "
        "--allow-insecure-token-urls apply to standalone mode only: a "
        "replica's credentials are refreshed by its control plane (set them "
        "on latchkey-cp)";
  } else if (lk_log_set_level_name(o.log_level) != 0) {
    usage_error = "--log-level must be debug, info, warn or error";
  } else if (is_set(o.metrics_listen) &&
             lk_metrics_http_check_address(o.metrics_listen, "--metrics-listen",
                                           &addr_err) != LK_OK) {
    usage_error = addr_err.msg;
  }
  if (usage_error != NULL) {
    fprintf(stderr, "latchkeyd: %s (see --help)\n", usage_error);
    return 2;
  }
  lk_err err;
  lk_err_clear(&err);
  if (check_files(&o, &err) != LK_OK) {
    fprintf(stderr, "latchkeyd: %s\n", err.msg);
    return 2;
  }
  if (o.check_config) {
    printf("config ok\n");
    return 0;
  }
  return run(&o);
}
