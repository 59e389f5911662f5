/*
 * replication_bench.c - the replication benchmark of DESIGN.md §9, run by
 * `./dev bench`.
 *
 * Why: a catalog change must reach every replica fast, and a fresh replica
 * must take a large snapshot quickly. This program measures both with the
 * real code on each side, in one process:
 *
 * - Fan-out: the real sync server (controlplane/sync_server over a
 *   RocksDB catalog in a temp dir, a key ring, a node token) serves
 *   lib/rpc_server on a /tmp Unix socket. N subscribers (N = 1, 100, 1000)
 *   are grpc core C client streams driven from a few client threads, each
 *   thread one completion queue for many streams. Every subscriber feeds
 *   each SyncBatch to its own lk_replica_applier (sidecar/replica, the
 *   sidecar's sync code) over its own in-memory store and ACKs or NACKs
 *   what the applier says. One sample is one Admin-style write (a new
 *   tool, in every agent's scope: lk_catalog_put_tool + lk_catalog_commit,
 *   then lk_sync_server_changed): from before the write until the last of
 *   the N appliers has applied it (the client thread that applied it last
 *   takes the time), and the server's own change-to-all-ACKed time
 *   (lk_sync_server_ack_latency last_us, which also counts the ACK's trip
 *   back). p50 and p99 are nearest-rank over the samples.
 * - Snapshot: 100,000 bindings packed into SyncBatch messages of at most
 *   LK_SYNC_MAX_MESSAGE_BYTES (snapshot_begin .. snapshot_end), then the
 *   time lk_replica_applier_handle takes over all of them, on a RocksDB
 *   store on disk (synced write, as latchkeyd keeps it) and in memory.
 *
 * The load generator, the appliers and the server share the machine's
 * cores; the numbers are an upper bound on what a fleet of separate hosts
 * would see for the server side and include the clients' CPU time.
 *
 * Output: a table on stdout and a JSON file at argv[1], else
 * $LATCHKEY_BENCH_OUT, else replication_bench.json in the current
 * directory. Every wait is bounded (WAIT_US per sample); the whole run
 * takes well under three minutes on 2 cores.
 */
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "controlplane/sync_server.h"
#include "latchkey/v1/sync.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/catalog.h"
#include "lib/clock.h"
#include "lib/keyring.h"
#include "lib/log.h"
#include "lib/rpc_server.h"
#include "lib/seal.h"
#include "lib/status.h"
#include "lib/store.h"
#include "lib/token.h"
#include "sidecar/node_keys.h"
#include "sidecar/replica.h"

#define TOKEN "bench-node-token-0123456789abcdef0123"
#define AGENT "bench-agent"
#define WAIT_US (20 * 1000000LL)    /* bound on one sample's wait */
#define CONNECT_US (60 * 1000000LL) /* bound on connecting + first snapshot */
#define STREAMS_PER_CHANNEL 100     /* HTTP/2 streams per connection */
#define CLIENT_THREADS 2            /* the machine has 2 cores */
#define SNAPSHOT_BINDINGS 100000
#define SNAPSHOT_RUNS 3
#define WRITES 200 /* samples per N */

/* One completion-queue tag: which operation of which subscriber. */
typedef enum { OP_RECV, OP_SEND, OP_STATUS } op_kind;

typedef struct sub sub;
typedef struct {
  sub *s;
  op_kind kind;
} op_tag;

/* One subscriber: a Sync stream and the replica applier behind it. */
struct sub {
  grpc_call *call;
  op_tag t_recv, t_send, t_status;
  int got_md;
  grpc_metadata_array md;
  grpc_byte_buffer *recv_bb;
  grpc_byte_buffer *send_bb;
  int send_busy;
  int hello_sent;
  int64_t pending_rev; /* an answer waiting for the send slot; -1 none */
  int pending_nack;
  int outstanding; /* batches started and not yet completed */
  int64_t counted_rev;
  grpc_status_code status;
  grpc_slice details;
  grpc_metadata_array trailing;
  lk_store *store;
  lk_replica_applier *ap;
  unsigned char *node_pk;
};

typedef struct {
  grpc_completion_queue *cq;
  sub *subs;
  size_t n;
  pthread_t th;
  int started;
} worker;

/* What the client threads report to the measuring thread. */
static _Atomic int64_t g_target;  /* revision being measured */
static _Atomic int g_done;        /* subscribers that applied g_target */
static _Atomic int64_t g_done_us; /* when the last one did */
static _Atomic int g_total;       /* subscribers in this round */
static _Atomic int g_nacks;
static _Atomic int g_stop;
static _Atomic int g_opened; /* hellos sent */

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentile p (0..100) of n sorted values. */
static int64_t pct(const int64_t *v, size_t n, int p) {
  size_t rank;
  if (n == 0) {
    return -1;
  }
  rank = ((size_t)p * n + 99) / 100;
  if (rank == 0) {
    rank = 1;
  }
  return v[rank - 1];
}

/* ---- subscribers ------------------------------------------------------ */

static void sub_send_answer(sub *s) {
  Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
  Latchkey__V1__SyncAck ack = LATCHKEY__V1__SYNC_ACK__INIT;
  unsigned char buf[128];
  grpc_op op;
  ack.revision = s->pending_rev;
  ack.nack = s->pending_nack;
  ack.error = s->pending_nack ? "nack" : "";
  req.ack = &ack;
  size_t len = latchkey__v1__sync_request__pack(&req, buf);
  grpc_slice sl = grpc_slice_from_copied_buffer((const char *)buf, len);
  s->send_bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  s->pending_rev = -1;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = s->send_bb;
  if (grpc_call_start_batch(s->call, &op, 1, &s->t_send, NULL) ==
      GRPC_CALL_OK) {
    s->send_busy = 1;
    s->outstanding++;
  } else {
    grpc_byte_buffer_destroy(s->send_bb);
    s->send_bb = NULL;
  }
}

static void sub_start_recv(sub *s) {
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  if (!s->got_md) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n].data.recv_initial_metadata.recv_initial_metadata = &s->md;
    n++;
    s->got_md = 1;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n].data.recv_message.recv_message = &s->recv_bb;
  n++;
  if (grpc_call_start_batch(s->call, ops, n, &s->t_recv, NULL) ==
      GRPC_CALL_OK) {
    s->outstanding++;
  }
}

/* Applies one received batch and queues its answer. */
static void sub_on_message(sub *s) {
  grpc_byte_buffer_reader r;
  lk_replica_reply reply = LK_REPLICA_REPLY_NONE;
  int64_t rev = 0;
  lk_err err;
  if (!grpc_byte_buffer_reader_init(&r, s->recv_bb)) {
    return;
  }
  grpc_slice all = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  lk_status st =
      lk_replica_applier_handle(s->ap, GRPC_SLICE_START_PTR(all),
                                GRPC_SLICE_LENGTH(all), &reply, &rev, &err);
  grpc_slice_unref(all);
  if (reply == LK_REPLICA_REPLY_NACK) {
    atomic_fetch_add(&g_nacks, 1);
    fprintf(stderr, "replication_bench: NACK at %lld: %s\n", (long long)rev,
            st != LK_OK ? err.msg : "");
  }
  if (reply != LK_REPLICA_REPLY_ACK && reply != LK_REPLICA_REPLY_NACK) {
    return;
  }
  if (reply == LK_REPLICA_REPLY_ACK) {
    int64_t target = atomic_load(&g_target);
    if (target > 0 && rev >= target && s->counted_rev < target) {
      s->counted_rev = target;
      if (atomic_fetch_add(&g_done, 1) + 1 == atomic_load(&g_total)) {
        atomic_store(&g_done_us, lk_now_us());
      }
    }
  }
  s->pending_rev = rev;
  s->pending_nack = reply == LK_REPLICA_REPLY_NACK;
  if (!s->send_busy) {
    sub_send_answer(s);
  }
}

static void *worker_main(void *arg) {
  worker *w = arg;
  int64_t open = 0;
  for (size_t i = 0; i < w->n; i++) {
    open += w->subs[i].outstanding;
  }
  while (open > 0) {
    gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                   gpr_time_from_millis(200, GPR_TIMESPAN));
    grpc_event ev = grpc_completion_queue_next(w->cq, dl, NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) {
      break;
    }
    if (ev.type != GRPC_OP_COMPLETE) {
      continue;
    }
    op_tag *t = ev.tag;
    sub *s = t->s;
    s->outstanding--;
    open--;
    switch (t->kind) {
      case OP_RECV:
        if (s->recv_bb != NULL) {
          sub_on_message(s);
          grpc_byte_buffer_destroy(s->recv_bb);
          s->recv_bb = NULL;
          if (!atomic_load(&g_stop)) {
            sub_start_recv(s);
          }
        }
        break;
      case OP_SEND:
        grpc_byte_buffer_destroy(s->send_bb);
        s->send_bb = NULL;
        s->send_busy = 0;
        if (!s->hello_sent) {
          s->hello_sent = 1;
          atomic_fetch_add(&g_opened, 1);
        }
        if (s->pending_rev >= 0 && ev.success) {
          sub_send_answer(s);
        }
        break;
      case OP_STATUS:
        break;
    }
    open = 0;
    for (size_t i = 0; i < w->n; i++) {
      open += w->subs[i].outstanding;
    }
  }
  return NULL;
}

/* Opens s's stream on ch (auth, hello, status and first receive). */
static lk_status sub_open(sub *s, grpc_channel *ch, grpc_completion_queue *cq,
                          lk_err *err) {
  Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
  unsigned char buf[256];
  grpc_metadata md;
  grpc_op ops[2];
  gpr_timespec inf = gpr_inf_future(GPR_CLOCK_REALTIME);
  grpc_slice method = grpc_slice_from_static_string(LK_SYNC_METHOD);
  s->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                     method, NULL, inf, NULL);
  if (s->call == NULL) {
    return lk_fail(err, LK_INTERNAL, "cannot create a call");
  }
  req.agent_id = AGENT;
  req.node_public_key.data = s->node_pk;
  req.node_public_key.len = 32;
  size_t len = latchkey__v1__sync_request__pack(&req, buf);
  grpc_slice sl = grpc_slice_from_copied_buffer((const char *)buf, len);
  s->send_bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  memset(&md, 0, sizeof(md));
  md.key = grpc_slice_from_static_string("authorization");
  md.value = grpc_slice_from_static_string("Bearer " TOKEN);
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = 1;
  ops[0].data.send_initial_metadata.metadata = &md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = s->send_bb;
  if (grpc_call_start_batch(s->call, ops, 2, &s->t_send, NULL) !=
      GRPC_CALL_OK) {
    return lk_fail(err, LK_INTERNAL, "cannot start the hello");
  }
  s->send_busy = 1;
  s->outstanding++;
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.status = &s->status;
  ops[0].data.recv_status_on_client.status_details = &s->details;
  ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing;
  if (grpc_call_start_batch(s->call, ops, 1, &s->t_status, NULL) !=
      GRPC_CALL_OK) {
    return lk_fail(err, LK_INTERNAL, "cannot start the status receive");
  }
  s->outstanding++;
  sub_start_recv(s);
  return LK_OK;
}

/* ---- the server side -------------------------------------------------- */

typedef struct {
  char dir[512];
  char sock_dir[64];
  char addr[96];
  lk_store *store;
  lk_catalog *cat;
  lk_keyring *kr;
  lk_node_keys *node;
  unsigned char node_pk[32];
  lk_token *token;
  lk_sync_server *sync;
  lk_rpc_server *srv;
  int64_t rev;
} server;

static lk_status put_tool(server *sv, const char *id, lk_err *err) {
  Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_status st;
  t.id = (char *)id;
  t.base_url = "https://api.example";
  t.credential_type = "wkey";
  st = lk_catalog_put_tool(sv->cat, b, &t, err);
  if (st == LK_OK) {
    st = lk_catalog_commit(sv->cat, b, err);
  }
  lk_store_batch_destroy(b);
  return st;
}

/* The agent's catalog: a credential type, a tool, a sealed credential, a
 * budget and a binding. */
static lk_status seed(server *sv, lk_err *err) {
  Latchkey__V1__CredentialField api = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *tfields[] = {&api};
  Latchkey__V1__CredentialType ty = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  Latchkey__V1__SealedValue sv_ = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__FieldValue fv = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue *cfields[] = {&fv};
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  Latchkey__V1__Budget bu = LATCHKEY__V1__BUDGET__INIT;
  Latchkey__V1__Binding bi = LATCHKEY__V1__BINDING__INIT;
  char *agents[] = {AGENT};
  const char *secret = "bench-secret-api-key";
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  uint32_t key_id = 0;
  lk_store_batch *b = lk_store_batch_new();
  lk_status st;

  api.name = "api_key";
  api.secret = 1;
  ty.id = "wkey";
  ty.fields = tfields;
  ty.n_fields = 1;
  st = lk_catalog_put_type(sv->cat, b, &ty, err);
  if (st != LK_OK) {
    goto done;
  }
  st =
      lk_keyring_seal(sv->kr, "cred1", "api_key", (const unsigned char *)secret,
                      strlen(secret), &key_id, nonce, &ct, &ct_len, err);
  if (st != LK_OK) {
    goto done;
  }
  sv_.key_id = key_id;
  sv_.nonce.data = nonce;
  sv_.nonce.len = sizeof(nonce);
  sv_.ciphertext.data = ct;
  sv_.ciphertext.len = ct_len;
  fv.name = "api_key";
  fv.secret = 1;
  fv.mask = "****";
  fv.sealed = &sv_;
  c.id = "cred1";
  c.type = "wkey";
  c.label = "bench";
  c.fields = cfields;
  c.n_fields = 1;
  st = lk_catalog_put_credential(sv->cat, b, &c, err);
  if (st != LK_OK) {
    goto done;
  }
  bu.id = "budget1";
  bu.agents = agents;
  bu.n_agents = 1;
  st = lk_catalog_put_budget(sv->cat, b, &bu, err);
  if (st != LK_OK) {
    goto done;
  }
  st = lk_catalog_commit(sv->cat, b, err);
  if (st != LK_OK) {
    goto done;
  }
  st = put_tool(sv, "weather", err);
  if (st != LK_OK) {
    goto done;
  }
  lk_store_batch_destroy(b);
  b = lk_store_batch_new();
  bi.budget_id = "budget1";
  bi.tool_id = "weather";
  bi.credential_id = "cred1";
  st = lk_catalog_put_binding(sv->cat, b, &bi, err);
  if (st == LK_OK) {
    st = lk_catalog_commit(sv->cat, b, err);
  }
done:
  lk_store_batch_destroy(b);
  free(ct);
  return st;
}

static lk_status write_file(const char *path, const char *text, lk_err *err) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  size_t len = strlen(text);
  if (fd < 0) {
    return lk_fail(err, LK_INTERNAL, "cannot create %s", path);
  }
  ssize_t n = write(fd, text, len);
  close(fd);
  if (n != (ssize_t)len) {
    return lk_fail(err, LK_INTERNAL, "cannot write %s", path);
  }
  return LK_OK;
}

static lk_status server_start(server *sv, const char *tmp, int round,
                              lk_err *err) {
  char path[640];
  lk_status st;
  snprintf(sv->dir, sizeof(sv->dir), "%s/lkbench-data-%d-%d", tmp,
           (int)getpid(), round);
  if (mkdir(sv->dir, 0700) != 0) {
    return lk_fail(err, LK_INTERNAL, "cannot create %s", sv->dir);
  }
  snprintf(sv->sock_dir, sizeof(sv->sock_dir), "/tmp/lkbench-%d-%d",
           (int)getpid(), round);
  if (mkdir(sv->sock_dir, 0700) != 0) {
    return lk_fail(err, LK_INTERNAL, "cannot create %s", sv->sock_dir);
  }
  snprintf(sv->addr, sizeof(sv->addr), "unix:%s/s", sv->sock_dir);
  snprintf(path, sizeof(path), "%s/db", sv->dir);
  if ((st = lk_store_open(path, &sv->store, err)) != LK_OK ||
      (st = lk_catalog_open(sv->store, &sv->cat, err)) != LK_OK) {
    return st;
  }
  snprintf(path, sizeof(path), "%s/keyring", sv->dir);
  if ((st = lk_keyring_load_or_create(path, &sv->kr, err)) != LK_OK) {
    return st;
  }
  snprintf(path, sizeof(path), "%s/node.key", sv->dir);
  lk_node_keys_config kcfg = {.path = path, .replica = 1};
  if ((st = lk_node_keys_open(&kcfg, &sv->node, err)) != LK_OK) {
    return st;
  }
  lk_node_keys_presented(sv->node, sv->node_pk);
  snprintf(path, sizeof(path), "%s/token", sv->dir);
  if ((st = write_file(path, TOKEN "\n", err)) != LK_OK ||
      (st = lk_token_load(path, &sv->token, err)) != LK_OK ||
      (st = seed(sv, err)) != LK_OK) {
    return st;
  }
  if ((st = lk_sync_server_new(sv->cat, sv->kr, sv->token, &sv->sync, err)) !=
          LK_OK ||
      (st = lk_rpc_server_new(2, &sv->srv, err)) != LK_OK ||
      (st = lk_rpc_server_listen_stream(sv->srv, sv->addr, LK_SYNC_METHOD,
                                        lk_sync_server_handler(), sv->sync,
                                        err)) != LK_OK) {
    return st;
  }
  return lk_rpc_server_start(sv->srv, err);
}

static void server_stop(server *sv) {
  char path[128];
  lk_rpc_server_destroy(sv->srv);
  lk_sync_server_destroy(sv->sync);
  lk_token_destroy(sv->token);
  lk_node_keys_destroy(sv->node);
  lk_keyring_destroy(sv->kr);
  lk_catalog_destroy(sv->cat);
  lk_store_close(sv->store);
  if (sv->dir[0] != '\0') {
    nftw(sv->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
  if (sv->sock_dir[0] != '\0') {
    snprintf(path, sizeof(path), "%s/s", sv->sock_dir);
    unlink(path);
    rmdir(sv->sock_dir);
  }
}

/* Waits until all g_total subscribers applied g_target and the server
 * counted one more change-to-ACK sample than `before`. */
static lk_status wait_round(server *sv, uint64_t before, int64_t limit_us,
                            lk_sync_ack_latency *lat, lk_err *err) {
  int64_t end = lk_now_us() + limit_us;
  for (;;) {
    lk_sync_server_ack_latency(sv->sync, lat);
    if (atomic_load(&g_done) == atomic_load(&g_total) && lat->count > before) {
      return LK_OK;
    }
    if (lk_now_us() > end) {
      return lk_fail(err, LK_DEADLINE_EXCEEDED,
                     "revision %lld: %d of %d applied after %lld ms",
                     (long long)atomic_load(&g_target), atomic_load(&g_done),
                     atomic_load(&g_total), (long long)(limit_us / 1000));
    }
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
  }
}

/* One fan-out result. */
typedef struct {
  int n;
  int writes;
  int64_t connect_ms; /* connect + first snapshot to all N */
  int64_t own_p50, own_p99, own_max;
  int64_t srv_p50, srv_p99;
  int ok;
  char error[sizeof(((lk_err *)0)->msg)];
} fan_result;

static lk_status run_fanout(int n, int writes, const char *tmp, fan_result *res,
                            lk_err *err) {
  server sv;
  size_t n_ch = ((size_t)n + STREAMS_PER_CHANNEL - 1) / STREAMS_PER_CHANNEL;
  size_t n_w = n < CLIENT_THREADS ? (size_t)n : CLIENT_THREADS;
  grpc_channel **ch = calloc(n_ch, sizeof(*ch));
  worker *w = calloc(n_w, sizeof(*w));
  sub *subs = calloc((size_t)n, sizeof(*subs));
  int64_t *own = calloc((size_t)writes, sizeof(int64_t));
  int64_t *srv = calloc((size_t)writes, sizeof(int64_t));
  lk_sync_ack_latency lat;
  lk_status st = LK_OK;
  int done_writes = 0;

  memset(&sv, 0, sizeof(sv));
  memset(res, 0, sizeof(*res));
  res->n = n;
  if (ch == NULL || w == NULL || subs == NULL || own == NULL || srv == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  atomic_store(&g_stop, 0);
  atomic_store(&g_opened, 0);
  atomic_store(&g_target, 0);
  atomic_store(&g_done, 0);
  atomic_store(&g_total, n);
  st = server_start(&sv, tmp, n, err);
  if (st != LK_OK) {
    goto done;
  }
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  for (size_t i = 0; i < n_ch; i++) {
    ch[i] = grpc_channel_create(sv.addr, creds, NULL);
  }
  grpc_channel_credentials_release(creds);
  for (size_t i = 0; i < n_w; i++) {
    w[i].cq = grpc_completion_queue_create_for_next(NULL);
  }
  int64_t t_connect = lk_now_us();
  for (int i = 0; i < n; i++) {
    sub *s = &subs[i];
    char name[64];
    s->t_recv = (op_tag){s, OP_RECV};
    s->t_send = (op_tag){s, OP_SEND};
    s->t_status = (op_tag){s, OP_STATUS};
    s->pending_rev = -1;
    s->node_pk = sv.node_pk;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->md);
    grpc_metadata_array_init(&s->trailing);
    snprintf(name, sizeof(name), "/lkbench-%d-%d-%d", (int)getpid(), n, i);
    if ((st = lk_store_open_memory(name, &s->store, err)) != LK_OK ||
        (st = lk_replica_applier_new(s->store, sv.node_pk, &s->ap, err)) !=
            LK_OK ||
        /* The stream's first batch carries the audit key, sealed to
         * sv.node: open and store it as a sidecar does. */
        (st = lk_replica_applier_use_audit(s->ap, sv.node, NULL, err)) !=
            LK_OK) {
      goto done;
    }
  }
  /* Streams are assigned round-robin to workers; each worker's streams
   * are contiguous in subs so it can scan its own slice. */
  size_t per = ((size_t)n + n_w - 1) / n_w;
  for (size_t i = 0; i < n_w; i++) {
    w[i].subs = &subs[i * per];
    w[i].n = (i + 1) * per <= (size_t)n ? per : (size_t)n - i * per;
    for (size_t j = 0; j < w[i].n; j++) {
      size_t k = i * per + j;
      st = sub_open(&subs[k], ch[k / STREAMS_PER_CHANNEL], w[i].cq, err);
      if (st != LK_OK) {
        goto done;
      }
    }
  }
  for (size_t i = 0; i < n_w; i++) {
    if (pthread_create(&w[i].th, NULL, worker_main, &w[i]) != 0) {
      st = lk_fail(err, LK_INTERNAL, "cannot start a client thread");
      goto done;
    }
    w[i].started = 1;
  }
  /* Until every stream said hello, a change would miss some. */
  {
    int64_t end = lk_now_us() + CONNECT_US;
    while (atomic_load(&g_opened) < n && lk_now_us() < end) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
    int count = atomic_load(&g_opened);
    if (count < n) {
      st = lk_fail(err, LK_DEADLINE_EXCEEDED, "%d of %d streams opened", count,
                   n);
      goto done;
    }
  }
  /* The first change sends every subscriber its snapshot. */
  lk_sync_server_ack_latency(sv.sync, &lat);
  uint64_t before = lat.count;
  sv.rev = 1;
  atomic_store(&g_target, sv.rev);
  lk_sync_server_changed(sv.sync, sv.rev);
  st = wait_round(&sv, before, CONNECT_US, &lat, err);
  if (st != LK_OK) {
    goto done;
  }
  res->connect_ms = (lk_now_us() - t_connect) / 1000;

  for (int k = 0; k < writes; k++) {
    char id[64];
    snprintf(id, sizeof(id), "bench-tool-%d", k);
    lk_sync_server_ack_latency(sv.sync, &lat);
    before = lat.count;
    atomic_store(&g_done, 0);
    atomic_store(&g_done_us, 0);
    atomic_store(&g_target, sv.rev + 1);
    int64_t t0 = lk_now_us();
    st = put_tool(&sv, id, err);
    if (st != LK_OK) {
      goto done;
    }
    sv.rev++;
    lk_sync_server_changed(sv.sync, sv.rev);
    st = wait_round(&sv, before, WAIT_US, &lat, err);
    if (st != LK_OK) {
      goto done;
    }
    own[k] = atomic_load(&g_done_us) - t0;
    srv[k] = lat.last_us;
    done_writes++;
  }

done:
  res->writes = done_writes;
  if (done_writes > 0) {
    qsort(own, (size_t)done_writes, sizeof(int64_t), cmp_i64);
    qsort(srv, (size_t)done_writes, sizeof(int64_t), cmp_i64);
    res->own_p50 = pct(own, (size_t)done_writes, 50);
    res->own_p99 = pct(own, (size_t)done_writes, 99);
    res->own_max = own[done_writes - 1];
    res->srv_p50 = pct(srv, (size_t)done_writes, 50);
    res->srv_p99 = pct(srv, (size_t)done_writes, 99);
  }
  res->ok = st == LK_OK;
  if (st != LK_OK) {
    snprintf(res->error, sizeof(res->error), "%s", err->msg);
  }
  atomic_store(&g_stop, 1);
  if (subs != NULL) {
    for (int i = 0; i < n; i++) {
      if (subs[i].call != NULL) {
        grpc_call_cancel(subs[i].call, NULL);
      }
    }
  }
  if (w != NULL) {
    for (size_t i = 0; i < n_w; i++) {
      if (w[i].started) {
        pthread_join(w[i].th, NULL);
      }
    }
  }
  if (subs != NULL) {
    for (int i = 0; i < n; i++) {
      sub *s = &subs[i];
      if (s->call != NULL) {
        grpc_call_unref(s->call);
      }
      grpc_byte_buffer_destroy(s->recv_bb);
      grpc_byte_buffer_destroy(s->send_bb);
      grpc_slice_unref(s->details);
      grpc_metadata_array_destroy(&s->md);
      grpc_metadata_array_destroy(&s->trailing);
      lk_replica_applier_destroy(s->ap);
      lk_store_close(s->store);
    }
  }
  if (w != NULL) {
    for (size_t i = 0; i < n_w; i++) {
      if (w[i].cq == NULL) {
        continue;
      }
      grpc_completion_queue_shutdown(w[i].cq);
      for (;;) {
        grpc_event ev = grpc_completion_queue_next(
            w[i].cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) {
          break;
        }
      }
      grpc_completion_queue_destroy(w[i].cq);
    }
  }
  if (ch != NULL) {
    for (size_t i = 0; i < n_ch; i++) {
      if (ch[i] != NULL) {
        grpc_channel_destroy(ch[i]);
      }
    }
  }
  server_stop(&sv);
  free(ch);
  free(w);
  free(subs);
  free(own);
  free(srv);
  return st;
}

/* ---- snapshot apply --------------------------------------------------- */

typedef struct {
  unsigned char **msg;
  size_t *len;
  size_t n;
  size_t bytes;
} snapshot;

static void snapshot_free(snapshot *sn) {
  for (size_t i = 0; i < sn->n; i++) {
    free(sn->msg[i]);
  }
  free(sn->msg);
  free(sn->len);
  memset(sn, 0, sizeof(*sn));
}

/* Packs SNAPSHOT_BINDINGS bindings (1,000 budgets x 100 tools, each bound
 * to a credential) at revision 7 into messages of at most
 * LK_SYNC_MAX_MESSAGE_BYTES. */
static lk_status snapshot_build(snapshot *sn, lk_err *err) {
  size_t cap = 64, n_rec = 0, acc = 0;
  Latchkey__V1__SyncRecord *recs = calloc(SNAPSHOT_BINDINGS, sizeof(*recs));
  Latchkey__V1__SyncRecord **ptrs = calloc(SNAPSHOT_BINDINGS, sizeof(*ptrs));
  char(*keys)[LK_CATALOG_KEY_MAX] = calloc(SNAPSHOT_BINDINGS, sizeof(*keys));
  unsigned char(*vals)[128] = calloc(SNAPSHOT_BINDINGS, sizeof(*vals));
  lk_status st = LK_OK;
  size_t first = 0;

  memset(sn, 0, sizeof(*sn));
  sn->msg = calloc(cap, sizeof(*sn->msg));
  sn->len = calloc(cap, sizeof(*sn->len));
  if (recs == NULL || ptrs == NULL || keys == NULL || vals == NULL ||
      sn->msg == NULL || sn->len == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < SNAPSHOT_BINDINGS; i++) {
    Latchkey__V1__Binding bi = LATCHKEY__V1__BINDING__INIT;
    char budget[32], tool[32], cred[32];
    snprintf(budget, sizeof(budget), "budget-%04zu", i / 100);
    snprintf(tool, sizeof(tool), "tool-%03zu", i % 100);
    snprintf(cred, sizeof(cred), "cred-%05zu", i % 5000);
    bi.budget_id = budget;
    bi.tool_id = tool;
    bi.credential_id = cred;
    st = lk_catalog_key_of(&bi.base, keys[i], err);
    if (st != LK_OK) {
      goto done;
    }
    size_t vlen = latchkey__v1__binding__get_packed_size(&bi);
    if (vlen > sizeof(vals[i])) {
      st = lk_fail(err, LK_INTERNAL, "binding too large");
      goto done;
    }
    latchkey__v1__binding__pack(&bi, vals[i]);
    latchkey__v1__sync_record__init(&recs[i]);
    recs[i].key = keys[i];
    recs[i].value.data = vals[i];
    recs[i].value.len = vlen;
    ptrs[i] = &recs[i];
  }
  /* Cut messages by an estimate well under the cap, then check. */
  while (n_rec < SNAPSHOT_BINDINGS) {
    acc = 0;
    first = n_rec;
    while (n_rec < SNAPSHOT_BINDINGS &&
           acc + strlen(keys[n_rec]) + recs[n_rec].value.len + 16 <
               LK_SYNC_MAX_MESSAGE_BYTES - 1024) {
      acc += strlen(keys[n_rec]) + recs[n_rec].value.len + 16;
      n_rec++;
    }
    if (sn->n == cap) {
      st = lk_fail(err, LK_INTERNAL, "too many snapshot messages");
      goto done;
    }
    Latchkey__V1__SyncBatch b = LATCHKEY__V1__SYNC_BATCH__INIT;
    b.revision = 7;
    b.puts = &ptrs[first];
    b.n_puts = n_rec - first;
    b.snapshot_begin = first == 0;
    b.snapshot_end = n_rec == SNAPSHOT_BINDINGS;
    size_t len = latchkey__v1__sync_batch__get_packed_size(&b);
    if (len > LK_SYNC_MAX_MESSAGE_BYTES) {
      st = lk_fail(err, LK_INTERNAL, "snapshot message over the cap");
      goto done;
    }
    sn->msg[sn->n] = malloc(len);
    if (sn->msg[sn->n] == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
      goto done;
    }
    latchkey__v1__sync_batch__pack(&b, sn->msg[sn->n]);
    sn->len[sn->n] = len;
    sn->bytes += len;
    sn->n++;
  }
done:
  free(recs);
  free(ptrs);
  free(keys);
  free(vals);
  if (st != LK_OK) {
    snapshot_free(sn);
  }
  return st;
}

/* Applies sn to a fresh store (on disk under dir, or in memory when dir is
 * NULL) and returns the microseconds lk_replica_applier_handle took. */
static lk_status snapshot_apply(const snapshot *sn, const char *dir,
                                const char *name, int64_t *us, lk_err *err) {
  lk_store *store = NULL;
  lk_replica_applier *ap = NULL;
  lk_status st;
  lk_replica_reply reply = LK_REPLICA_REPLY_NONE;
  int64_t rev = 0;
  if (dir != NULL) {
    st = lk_store_open(dir, &store, err);
  } else {
    st = lk_store_open_memory(name, &store, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  st = lk_replica_applier_new(store, NULL, &ap, err);
  if (st != LK_OK) {
    goto done;
  }
  int64_t t0 = lk_now_us();
  for (size_t i = 0; i < sn->n; i++) {
    st = lk_replica_applier_handle(ap, sn->msg[i], sn->len[i], &reply, &rev,
                                   err);
    if (st != LK_OK) {
      goto done;
    }
  }
  *us = lk_now_us() - t0;
  if (reply != LK_REPLICA_REPLY_ACK || rev != 7 ||
      lk_replica_applier_revision(ap) != 7) {
    st = lk_fail(err, LK_INTERNAL, "snapshot not applied (reply %d, rev %lld)",
                 (int)reply, (long long)rev);
  }
done:
  lk_replica_applier_destroy(ap);
  lk_store_close(store);
  return st;
}

/* ---- main ------------------------------------------------------------- */

int main(int argc, char **argv) {
  static const int ns[] = {1, 100, 1000};
  enum { N_ROUNDS = sizeof(ns) / sizeof(ns[0]) };
  fan_result fan[N_ROUNDS];
  int64_t disk_us[SNAPSHOT_RUNS], mem_us[SNAPSHOT_RUNS];
  snapshot sn;
  lk_err err;
  const char *out_path = argc > 1 ? argv[1] : getenv("LATCHKEY_BENCH_OUT");
  const char *tmp = getenv("TMPDIR");
  char path[640];
  int rc = 0;

  if (out_path == NULL || out_path[0] == '\0') {
    out_path = "replication_bench.json";
  }
  if (tmp == NULL || tmp[0] == '\0') {
    tmp = "/tmp";
  }
  /* Per-batch info lines would swamp the table; warnings still show. */
  (void)lk_log_set_level_name("warn");
  grpc_init();

  /* Snapshot apply first: nothing else runs then. */
  if (snapshot_build(&sn, &err) != LK_OK) {
    fprintf(stderr, "replication_bench: %s\n", err.msg);
    return 1;
  }
  for (int r = 0; r < SNAPSHOT_RUNS; r++) {
    snprintf(path, sizeof(path), "%s/lkbench-snap-%d-%d", tmp, (int)getpid(),
             r);
    if (snapshot_apply(&sn, path, NULL, &disk_us[r], &err) != LK_OK) {
      fprintf(stderr, "replication_bench: snapshot (disk): %s\n", err.msg);
      rc = 1;
    }
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    snprintf(path, sizeof(path), "/lkbench-snap-%d-%d", (int)getpid(), r);
    if (snapshot_apply(&sn, NULL, path, &mem_us[r], &err) != LK_OK) {
      fprintf(stderr, "replication_bench: snapshot (memory): %s\n", err.msg);
      rc = 1;
    }
  }
  qsort(disk_us, SNAPSHOT_RUNS, sizeof(int64_t), cmp_i64);
  qsort(mem_us, SNAPSHOT_RUNS, sizeof(int64_t), cmp_i64);

  for (int i = 0; i < N_ROUNDS; i++) {
    int writes = WRITES;
    fprintf(stderr, "replication_bench: N = %d ...\n", ns[i]);
    if (run_fanout(ns[i], writes, tmp, &fan[i], &err) != LK_OK) {
      fprintf(stderr, "replication_bench: N = %d: %s\n", ns[i], err.msg);
      rc = 1;
    }
  }

  printf("\nReplication benchmark (DESIGN.md section 9)\n\n");
  printf("snapshot of %d bindings (%zu messages, %zu bytes), %d runs:\n",
         SNAPSHOT_BINDINGS, sn.n, sn.bytes, SNAPSHOT_RUNS);
  printf(
      "  on-disk store (synced): median %.1f ms, max %.1f ms "
      "(target <= 1000 ms, ratio %.3f)\n",
      disk_us[SNAPSHOT_RUNS / 2] / 1000.0, disk_us[SNAPSHOT_RUNS - 1] / 1000.0,
      disk_us[SNAPSHOT_RUNS / 2] / 1000000.0);
  printf("  in-memory store:        median %.1f ms, max %.1f ms\n\n",
         mem_us[SNAPSHOT_RUNS / 2] / 1000.0,
         mem_us[SNAPSHOT_RUNS - 1] / 1000.0);
  printf("%6s %7s %11s %12s %12s %12s %14s %14s\n", "N", "writes", "connect ms",
         "write->all", "write->all", "write->all", "changed->ACK",
         "changed->ACK");
  printf("%6s %7s %11s %12s %12s %12s %14s %14s\n", "", "", "+snapshot",
         "p50 ms", "p99 ms", "max ms", "p50 ms (srv)", "p99 ms (srv)");
  for (int i = 0; i < N_ROUNDS; i++) {
    fan_result *f = &fan[i];
    printf("%6d %7d %11lld %12.3f %12.3f %12.3f %14.3f %14.3f%s%s\n", f->n,
           f->writes, (long long)f->connect_ms, f->own_p50 / 1000.0,
           f->own_p99 / 1000.0, f->own_max / 1000.0, f->srv_p50 / 1000.0,
           f->srv_p99 / 1000.0, f->ok ? "" : "  FAILED: ", f->error);
  }
  printf("NACKs: %d\n", atomic_load(&g_nacks));

  FILE *fp = fopen(out_path, "w");
  if (fp == NULL) {
    fprintf(stderr, "replication_bench: cannot write %s\n", out_path);
    rc = 1;
  } else {
    fprintf(fp, "{\n  \"benchmark\": \"replication\",\n");
    fprintf(fp, "  \"timestamp_unix\": %lld,\n", (long long)time(NULL));
    fprintf(fp, "  \"nproc\": %ld,\n", sysconf(_SC_NPROCESSORS_ONLN));
    fprintf(fp,
            "  \"snapshot\": {\"bindings\": %d, \"messages\": %zu, "
            "\"bytes\": %zu, \"runs\": %d, \"disk_median_ms\": %.3f, "
            "\"disk_max_ms\": %.3f, \"memory_median_ms\": %.3f, "
            "\"memory_max_ms\": %.3f, \"target_ms\": 1000, "
            "\"ratio_to_target\": %.4f},\n",
            SNAPSHOT_BINDINGS, sn.n, sn.bytes, SNAPSHOT_RUNS,
            disk_us[SNAPSHOT_RUNS / 2] / 1000.0,
            disk_us[SNAPSHOT_RUNS - 1] / 1000.0,
            mem_us[SNAPSHOT_RUNS / 2] / 1000.0,
            mem_us[SNAPSHOT_RUNS - 1] / 1000.0,
            disk_us[SNAPSHOT_RUNS / 2] / 1000000.0);
    fprintf(fp, "  \"fanout\": [\n");
    for (int i = 0; i < N_ROUNDS; i++) {
      fan_result *f = &fan[i];
      fprintf(fp,
              "    {\"n\": %d, \"ok\": %s, \"writes\": %d, "
              "\"connect_and_snapshot_ms\": %lld, "
              "\"write_to_all_applied_p50_ms\": %.3f, "
              "\"write_to_all_applied_p99_ms\": %.3f, "
              "\"write_to_all_applied_max_ms\": %.3f, "
              "\"server_changed_to_all_acked_p50_ms\": %.3f, "
              "\"server_changed_to_all_acked_p99_ms\": %.3f}%s\n",
              f->n, f->ok ? "true" : "false", f->writes,
              (long long)f->connect_ms, f->own_p50 / 1000.0,
              f->own_p99 / 1000.0, f->own_max / 1000.0, f->srv_p50 / 1000.0,
              f->srv_p99 / 1000.0, i + 1 < N_ROUNDS ? "," : "");
    }
    fprintf(fp, "  ],\n  \"nacks\": %d\n}\n", atomic_load(&g_nacks));
    fclose(fp);
    printf("JSON written to %s\n", out_path);
  }
  snapshot_free(&sn);
  grpc_shutdown();
  return rc;
}
