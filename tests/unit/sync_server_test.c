/*
 * sync_server_test.c - proves controlplane/sync_server over real gRPC: a
 * lib/rpc_server on a /tmp Unix socket serves the Sync handler over a
 * RocksDB-backed catalog whose credentials are sealed under a test key
 * ring, and grpc core's C client plays the sidecar. It shows: a missing or
 * wrong node token is UNAUTHENTICATED; a bad hello is INVALID_ARGUMENT; the
 * snapshot holds exactly the agent's scope (its budget, binding and
 * credential, and every tool and credential type, including a tool it has
 * no credential for); a credential's secret arrives sealed to the node key
 * (it opens with lk_unseal_from_node, and neither the plaintext nor the
 * key-ring ciphertext is in the bytes); a catalog change brings one batch
 * with the right puts and deletes at the new revision (unbinding deletes
 * the binding and the credential, the tool stays), and a change outside
 * the scope an empty one; an ACK shows in the status listing (applied
 * revision, lag 0) and in the change-to-ACK statistics; heartbeats arrive;
 * a replica at the current revision resumes without a snapshot and one
 * ahead waits; a replica behind resumes, through the history source (a
 * copy of the catalog at its revision), with one ordinary batch of exactly
 * what changed since, and gets a snapshot when that history is compacted
 * away; a NACK brings a snapshot; a new node key gets a full snapshot
 * re-sealed to it (have_revision 0, or a key other than the agent's last
 * stream's, which never resumes); a large snapshot, or a change too
 * large for one message, comes as a snapshot split into messages of at
 * most 4 MiB. The first batch of every stream (a snapshot's first part, a
 * resume's heartbeat) carries the key ring's audit key sealed to the node
 * key, and no later batch does. Every wait is bounded.
 */
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "controlplane/scope.h"
#include "controlplane/sync_server.h"
#include "latchkey/v1/sync.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/audit.h"
#include "lib/catalog.h"
#include "lib/keyring.h"
#include "lib/rpc_server.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/store.h"
#include "lib/token.h"

#define WAIT_S 20
#define TOKEN "node-token-for-sync-tests-0123456789"
#define CANARY "CANARY-w1-api-key-9f8e7d6c5b4a"
#define OTHER_CANARY "CANARY-w2-api-key-0a1b2c3d4e5f"

typedef struct {
  char dir[1024];
  char sock_dir[64];
  char addr[96];
  lk_store *store;
  lk_catalog *cat;
  lk_keyring *kr;
  lk_seal_key *node;
  unsigned char node_pk[32];
  lk_token *token;
  lk_sync_server *sync;
  lk_rpc_server *srv;
  grpc_channel *ch;
  /* History source: a copy of the catalog taken at hist_rev. */
  lk_store *hist_store;
  lk_catalog *hist_cat;
  int64_t hist_rev;
  int hist_compacted; /* loads fail as if etcd compacted past them */
  _Atomic int hist_loads;
  _Atomic int hist_frees;
} fx;

/* One client stream (the sidecar's side). */
typedef struct {
  grpc_completion_queue *cq;
  grpc_call *call;
  int got_md;
} client;

static int counter;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* ---- catalog fixture ------------------------------------------------- */

static void commit_ok(fx *f, lk_store_batch *b) {
  lk_err err;
  if (lk_catalog_commit(f->cat, b, &err) != LK_OK) {
    fail_msg("commit: %s", err.msg);
  }
  lk_store_batch_destroy(b);
}

static void put_tool(fx *f, const char *id, const char *type) {
  Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  t.id = (char *)id;
  t.base_url = "https://api.example";
  t.credential_type = (char *)type;
  assert_int_equal(lk_catalog_put_tool(f->cat, b, &t, &err), LK_OK);
  commit_ok(f, b);
}

static void put_type(fx *f, const char *id) {
  Latchkey__V1__CredentialField api = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField region = LATCHKEY__V1__CREDENTIAL_FIELD__INIT;
  Latchkey__V1__CredentialField *fields[] = {&api, &region};
  Latchkey__V1__CredentialType t = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  api.name = "api_key";
  api.secret = 1;
  region.name = "region";
  t.id = (char *)id;
  t.fields = fields;
  t.n_fields = 2;
  assert_int_equal(lk_catalog_put_type(f->cat, b, &t, &err), LK_OK);
  commit_ok(f, b);
}

/* A credential of type wkey: api_key sealed under the key ring, region
 * plain. */
static void put_cred(fx *f, const char *id, const char *secret,
                     const char *region_value) {
  Latchkey__V1__SealedValue sv = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__FieldValue api = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue region = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue *fields[] = {&api, &region};
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  uint32_t key_id = 0;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;

  assert_int_equal(
      lk_keyring_seal(f->kr, id, "api_key", (const unsigned char *)secret,
                      strlen(secret), &key_id, nonce, &ct, &ct_len, &err),
      LK_OK);
  sv.key_id = key_id;
  sv.nonce.data = nonce;
  sv.nonce.len = sizeof(nonce);
  sv.ciphertext.data = ct;
  sv.ciphertext.len = ct_len;
  api.name = "api_key";
  api.secret = 1;
  api.mask = "****";
  api.sealed = &sv;
  region.name = "region";
  region.value = (char *)region_value;
  c.id = (char *)id;
  c.type = "wkey";
  c.label = "test";
  c.fields = fields;
  c.n_fields = 2;
  assert_int_equal(lk_catalog_put_credential(f->cat, b, &c, &err), LK_OK);
  commit_ok(f, b);
  free(ct);
}

/* Replaces credential id with an OAuth one of type wkey: access_token,
 * refresh_token and client_secret sealed under the key ring, token_url
 * plain, and refresh state (Credential.oauth) set. */
static void put_oauth_cred(fx *f, const char *id) {
  static const char *const names[] = {"access_token", "refresh_token",
                                      "client_secret"};
  static const char *const values[] = {"at-live-Qm3vX9", "rt-never-Pz8kW2",
                                       "cs-never-Lc4nB7"};
  Latchkey__V1__SealedValue sv[3];
  Latchkey__V1__FieldValue fv[4];
  Latchkey__V1__FieldValue *fields[4];
  unsigned char nonce[3][LK_SEAL_NONCE_BYTES];
  unsigned char *ct[3] = {NULL, NULL, NULL};
  Latchkey__V1__OAuthState state = LATCHKEY__V1__OAUTH_STATE__INIT;
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  for (size_t i = 0; i < 3; i++) {
    size_t ct_len = 0;
    uint32_t key_id = 0;
    latchkey__v1__sealed_value__init(&sv[i]);
    latchkey__v1__field_value__init(&fv[i]);
    assert_int_equal(
        lk_keyring_seal(f->kr, id, names[i], (const unsigned char *)values[i],
                        strlen(values[i]), &key_id, nonce[i], &ct[i], &ct_len,
                        &err),
        LK_OK);
    sv[i].key_id = key_id;
    sv[i].nonce.data = nonce[i];
    sv[i].nonce.len = sizeof(nonce[i]);
    sv[i].ciphertext.data = ct[i];
    sv[i].ciphertext.len = ct_len;
    fv[i].name = (char *)names[i];
    fv[i].secret = 1;
    fv[i].mask = "****";
    fv[i].sealed = &sv[i];
    fields[i] = &fv[i];
  }
  latchkey__v1__field_value__init(&fv[3]);
  fv[3].name = "token_url";
  fv[3].value = "https://idp.example/token";
  fields[3] = &fv[3];
  state.generation = 3;
  c.id = (char *)id;
  c.type = "wkey";
  c.label = "oauth";
  c.fields = fields;
  c.n_fields = 4;
  c.oauth = &state;
  assert_int_equal(lk_catalog_put_credential(f->cat, b, &c, &err), LK_OK);
  commit_ok(f, b);
  for (size_t i = 0; i < 3; i++) {
    free(ct[i]);
  }
}

/* Replaces credential id with one whose first secret field claims key
 * ring key 77 (which no ring here holds) and whose second is a good value:
 * re-sealing it for a node fails at the first field. */
static void put_cred_first_field_unopenable(fx *f, const char *id) {
  static const char good[] = "good-second-secret-Ty7";
  Latchkey__V1__SealedValue bad_sv = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__SealedValue good_sv = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__FieldValue api = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue other = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue *fields[] = {&api, &other};
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  unsigned char junk[40] = {7};
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  uint32_t key_id = 0;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  assert_int_equal(
      lk_keyring_seal(f->kr, id, "other", (const unsigned char *)good,
                      strlen(good), &key_id, nonce, &ct, &ct_len, &err),
      LK_OK);
  bad_sv.key_id = 77;
  bad_sv.nonce.data = junk;
  bad_sv.nonce.len = LK_SEAL_NONCE_BYTES;
  bad_sv.ciphertext.data = junk;
  bad_sv.ciphertext.len = sizeof(junk);
  good_sv.key_id = key_id;
  good_sv.nonce.data = nonce;
  good_sv.nonce.len = sizeof(nonce);
  good_sv.ciphertext.data = ct;
  good_sv.ciphertext.len = ct_len;
  api.name = "api_key";
  api.secret = 1;
  api.sealed = &bad_sv;
  other.name = "other";
  other.secret = 1;
  other.sealed = &good_sv;
  c.id = (char *)id;
  c.type = "wkey";
  c.label = "test";
  c.fields = fields;
  c.n_fields = 2;
  assert_int_equal(lk_catalog_put_credential(f->cat, b, &c, &err), LK_OK);
  commit_ok(f, b);
  free(ct);
}

static void put_budget(fx *f, const char *id, const char *agent) {
  Latchkey__V1__Budget bu = LATCHKEY__V1__BUDGET__INIT;
  char *agents[] = {(char *)agent};
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bu.id = (char *)id;
  bu.agents = agents;
  bu.n_agents = 1;
  assert_int_equal(lk_catalog_put_budget(f->cat, b, &bu, &err), LK_OK);
  commit_ok(f, b);
}

static void bind_tool(fx *f, const char *budget, const char *tool,
                      const char *cred, int del) {
  Latchkey__V1__Binding bi = LATCHKEY__V1__BINDING__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bi.budget_id = (char *)budget;
  bi.tool_id = (char *)tool;
  bi.credential_id = (char *)cred;
  if (del) {
    assert_int_equal(lk_catalog_delete_binding(f->cat, b, &bi, &err), LK_OK);
  } else {
    assert_int_equal(lk_catalog_put_binding(f->cat, b, &bi, &err), LK_OK);
  }
  commit_ok(f, b);
}

/* agent-a: budget b1 binds weather -> w1; clock needs no credential.
 * agent-b: budget b2 binds search (type wkey) -> w2. */
static void seed(fx *f) {
  put_type(f, "wkey");
  put_tool(f, "weather", "wkey");
  put_tool(f, "search", "wkey");
  put_tool(f, "clock", "");
  put_cred(f, "w1", CANARY, "eu");
  put_cred(f, "w2", OTHER_CANARY, "us");
  put_budget(f, "b1", "agent-a");
  put_budget(f, "b2", "agent-b");
  bind_tool(f, "b1", "weather", "w1", 0);
  bind_tool(f, "b2", "search", "w2", 0);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  char path[1200];
  lk_err err;
  assert_non_null(f);
  grpc_init();
  int n = counter++;
  snprintf(f->dir, sizeof(f->dir), "%s/sync-%d-%d", tmp ? tmp : "/tmp",
           (int)getpid(), n);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  snprintf(f->sock_dir, sizeof(f->sock_dir), "/tmp/lksync-%d-%d", (int)getpid(),
           n);
  snprintf(f->addr, sizeof(f->addr), "unix:%s/s", f->sock_dir);

  snprintf(path, sizeof(path), "%s/db", f->dir);
  assert_int_equal(lk_store_open(path, &f->store, &err), LK_OK);
  assert_int_equal(lk_catalog_open(f->store, &f->cat, &err), LK_OK);
  snprintf(path, sizeof(path), "%s/keyring", f->dir);
  assert_int_equal(lk_keyring_load_or_create(path, &f->kr, &err), LK_OK);
  snprintf(path, sizeof(path), "%s/node.key", f->dir);
  assert_int_equal(lk_seal_key_load_or_create(path, &f->node, &err), LK_OK);
  assert_int_equal(lk_seal_key_public(f->node, f->node_pk, &err), LK_OK);
  snprintf(path, sizeof(path), "%s/token", f->dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, TOKEN "\n", strlen(TOKEN) + 1),
                   (ssize_t)strlen(TOKEN) + 1);
  close(fd);
  assert_int_equal(lk_token_load(path, &f->token, &err), LK_OK);
  seed(f);

  assert_int_equal(lk_sync_server_new(f->cat, f->kr, f->token, &f->sync, &err),
                   LK_OK);
  assert_int_equal(lk_rpc_server_new(2, &f->srv, &err), LK_OK);
  assert_int_equal(
      lk_rpc_server_listen_stream(f->srv, f->addr, LK_SYNC_METHOD,
                                  lk_sync_server_handler(), f->sync, &err),
      LK_OK);
  assert_int_equal(lk_rpc_server_start(f->srv, &err), LK_OK);
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  f->ch = grpc_channel_create(f->addr, creds, NULL);
  grpc_channel_credentials_release(creds);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  char path[128];
  grpc_channel_destroy(f->ch);
  lk_rpc_server_destroy(f->srv);
  lk_sync_server_destroy(f->sync);
  lk_token_destroy(f->token);
  lk_seal_key_destroy(f->node);
  lk_keyring_destroy(f->kr);
  lk_catalog_destroy(f->cat);
  lk_store_close(f->store);
  lk_catalog_destroy(f->hist_cat);
  lk_store_close(f->hist_store);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  snprintf(path, sizeof(path), "%s/s", f->sock_dir);
  unlink(path);
  rmdir(f->sock_dir);
  free(f);
  grpc_shutdown();
  return 0;
}

/* ---- the client ------------------------------------------------------ */

static gpr_timespec deadline(void) {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_seconds(WAIT_S, GPR_TIMESPAN));
}

/* Runs one batch on c and waits for it; returns its success. */
static int run(client *c, grpc_op *ops, size_t n) {
  static int tag;
  assert_int_equal(grpc_call_start_batch(c->call, ops, n, &tag, NULL),
                   GRPC_CALL_OK);
  grpc_event ev = grpc_completion_queue_pluck(c->cq, &tag, deadline(), NULL);
  assert_int_equal(ev.type, GRPC_OP_COMPLETE);
  return ev.success;
}

/* Opens a Sync stream sending "authorization: <auth>" when auth is set. */
static void client_open(fx *f, client *c, const char *auth) {
  grpc_metadata md;
  grpc_op op;
  memset(c, 0, sizeof(*c));
  c->cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_slice method = grpc_slice_from_static_string(LK_SYNC_METHOD);
  c->call = grpc_channel_create_call(f->ch, NULL, GRPC_PROPAGATE_DEFAULTS,
                                     c->cq, method, NULL, deadline(), NULL);
  assert_non_null(c->call);
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_INITIAL_METADATA;
  if (auth != NULL) {
    memset(&md, 0, sizeof(md));
    md.key = grpc_slice_from_static_string("authorization");
    md.value = grpc_slice_from_copied_string(auth);
    op.data.send_initial_metadata.count = 1;
    op.data.send_initial_metadata.metadata = &md;
  }
  run(c, &op, 1);
  if (auth != NULL) {
    grpc_slice_unref(md.value);
  }
}

static void client_send(client *c, const Latchkey__V1__SyncRequest *req) {
  size_t len = latchkey__v1__sync_request__get_packed_size(req);
  unsigned char *buf = malloc(len + 1);
  assert_non_null(buf);
  latchkey__v1__sync_request__pack(req, buf);
  grpc_slice s = grpc_slice_from_copied_buffer((const char *)buf, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  free(buf);
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  run(c, &op, 1);
  grpc_byte_buffer_destroy(bb);
}

static void send_hello(fx *f, client *c, const char *agent, int64_t have) {
  Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
  req.agent_id = (char *)agent;
  req.node_public_key.data = f->node_pk;
  req.node_public_key.len = sizeof(f->node_pk);
  req.have_revision = have;
  client_send(c, &req);
}

static void send_ack(client *c, int64_t rev, int nack, const char *why) {
  Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
  Latchkey__V1__SyncAck ack = LATCHKEY__V1__SYNC_ACK__INIT;
  ack.revision = rev;
  ack.nack = nack;
  ack.error = (char *)(why != NULL ? why : "");
  req.ack = &ack;
  client_send(c, &req);
}

/* A received batch with its raw bytes. */
typedef struct {
  Latchkey__V1__SyncBatch *b;
  unsigned char *raw;
  size_t len;
} msg;

static void msg_free(msg *m) {
  if (m->b != NULL) {
    latchkey__v1__sync_batch__free_unpacked(m->b, NULL);
  }
  free(m->raw);
  memset(m, 0, sizeof(*m));
}

/* Receives the next message; returns 0 when the stream has ended. */
static int client_recv(client *c, msg *m) {
  grpc_metadata_array md;
  grpc_byte_buffer *bb = NULL;
  grpc_op ops[2];
  size_t n = 0;
  memset(m, 0, sizeof(*m));
  grpc_metadata_array_init(&md);
  memset(ops, 0, sizeof(ops));
  if (!c->got_md) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n].data.recv_initial_metadata.recv_initial_metadata = &md;
    n++;
    c->got_md = 1;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n].data.recv_message.recv_message = &bb;
  n++;
  run(c, ops, n);
  grpc_metadata_array_destroy(&md);
  if (bb == NULL) {
    return 0;
  }
  grpc_byte_buffer_reader r;
  assert_true(grpc_byte_buffer_reader_init(&r, bb));
  grpc_slice all = grpc_byte_buffer_reader_readall(&r);
  m->len = GRPC_SLICE_LENGTH(all);
  m->raw = malloc(m->len + 1);
  assert_non_null(m->raw);
  memcpy(m->raw, GRPC_SLICE_START_PTR(all), m->len);
  grpc_slice_unref(all);
  grpc_byte_buffer_reader_destroy(&r);
  grpc_byte_buffer_destroy(bb);
  m->b = latchkey__v1__sync_batch__unpack(NULL, m->len, m->raw);
  assert_non_null(m->b);
  return 1;
}

/* Receives the next batch that is not a heartbeat. */
static void recv_change(client *c, msg *m) {
  for (;;) {
    assert_true(client_recv(c, m));
    if (!m->b->heartbeat) {
      return;
    }
    msg_free(m);
  }
}

/* Half-closes (when still possible) and returns the final status. */
static grpc_status_code client_close(client *c, char *details, size_t cap) {
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice d = grpc_empty_slice();
  grpc_metadata_array trailing;
  grpc_op ops[2];
  grpc_metadata_array_init(&trailing);
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[1].data.recv_status_on_client.status = &code;
  ops[1].data.recv_status_on_client.status_details = &d;
  ops[1].data.recv_status_on_client.trailing_metadata = &trailing;
  run(c, ops, 2);
  snprintf(details, cap, "%.*s", (int)GRPC_SLICE_LENGTH(d),
           (const char *)GRPC_SLICE_START_PTR(d));
  grpc_slice_unref(d);
  grpc_metadata_array_destroy(&trailing);
  return code;
}

static void client_free(client *c) {
  grpc_call_unref(c->call);
  grpc_completion_queue_shutdown(c->cq);
  for (;;) {
    grpc_event ev = grpc_completion_queue_pluck(
        c->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) {
      break;
    }
  }
  grpc_completion_queue_destroy(c->cq);
}

/* Closes c expecting OK, then frees it. */
static void client_done(client *c) {
  char details[256];
  assert_int_equal(client_close(c, details, sizeof(details)), GRPC_STATUS_OK);
  client_free(c);
}

/* Opens, says hello and receives the whole snapshot; returns its keys'
 * count and fills got (caller frees each message). */
static size_t recv_snapshot(client *c, msg *got, size_t cap) {
  size_t n = 0;
  for (;;) {
    assert_true(n < cap);
    recv_change(c, &got[n]);
    assert_int_equal(got[n].b->snapshot_begin, n == 0);
    if (got[n++].b->snapshot_end) {
      return n;
    }
  }
}

static const Latchkey__V1__SyncRecord *find_put(const msg *m, size_t n,
                                                const char *key) {
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < m[i].b->n_puts; j++) {
      if (strcmp(m[i].b->puts[j]->key, key) == 0) {
        return m[i].b->puts[j];
      }
    }
  }
  return NULL;
}

/* agent-a's whole scope: its budget, binding and credential, and every
 * tool and credential type (search too, which it has no credential for). */
static const char *const k_scope_a[] = {
    "bind/b1/tool/weather", "budget/b1",    "cred/w1",   "tool/clock",
    "tool/search",          "tool/weather", "type/wkey", NULL,
};

static const char *const k_none[] = {NULL};

static size_t n_keys(const char *const *want) {
  size_t n = 0;
  while (want[n] != NULL) {
    n++;
  }
  return n;
}

/* Asserts that keys[0..n) are exactly want (NULL-terminated, any order),
 * each once. */
static void expect_keys(const char *what, char *const *keys, size_t n,
                        const char *const *want) {
  for (size_t w = 0; want[w] != NULL; w++) {
    size_t seen = 0;
    for (size_t i = 0; i < n; i++) {
      seen += strcmp(keys[i], want[w]) == 0;
    }
    if (seen != 1) {
      fail_msg("%s holds %s %zu times, not once", what, want[w], seen);
    }
  }
  for (size_t i = 0; i < n; i++) {
    int wanted = 0;
    for (size_t w = 0; want[w] != NULL; w++) {
      wanted |= strcmp(keys[i], want[w]) == 0;
    }
    if (!wanted) {
      fail_msg("%s holds %s, which it must not", what, keys[i]);
    }
  }
  assert_int_equal(n, n_keys(want));
}

/* Asserts that the snapshot got[0..n) puts exactly want and deletes
 * nothing. */
static void expect_snapshot(const msg *got, size_t n, const char *const *want) {
  char *keys[64] = {NULL};
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(got[i].b->n_deletes, 0);
    for (size_t j = 0; j < got[i].b->n_puts; j++) {
      assert_true(k < sizeof(keys) / sizeof(keys[0]));
      keys[k++] = got[i].b->puts[j]->key;
    }
  }
  expect_keys("snapshot", keys, k, want);
}

/* Asserts that the change batch m puts exactly puts and deletes exactly
 * deletes. */
static void expect_change(const msg *m, const char *const *puts,
                          const char *const *deletes) {
  char *keys[64] = {NULL};
  assert_true(m->b->n_puts <= sizeof(keys) / sizeof(keys[0]));
  for (size_t j = 0; j < m->b->n_puts; j++) {
    keys[j] = m->b->puts[j]->key;
  }
  expect_keys("change puts", keys, m->b->n_puts, puts);
  expect_keys("change deletes", m->b->deletes, m->b->n_deletes, deletes);
}

/* Asserts the status listing holds one replica of agent with applied
 * revision want_applied (polling: ACKs are processed asynchronously). */
typedef struct {
  int n;
  lk_sync_replica r;
  char agent[130];
} replicas;

static void collect_replica(void *ctx, const lk_sync_replica *r) {
  replicas *out = ctx;
  out->n++;
  out->r = *r;
  snprintf(out->agent, sizeof(out->agent), "%s", r->agent_id);
  out->r.agent_id = out->agent;
}

static replicas wait_applied(fx *f, int64_t want_applied) {
  replicas got;
  lk_err err;
  for (int i = 0; i < WAIT_S * 100; i++) {
    memset(&got, 0, sizeof(got));
    assert_int_equal(
        lk_sync_server_replicas(f->sync, collect_replica, &got, &err), LK_OK);
    if (got.n == 1 && got.r.applied_revision == want_applied) {
      return got;
    }
    usleep(10 * 1000);
  }
  fail_msg("replica never reached applied revision %lld",
           (long long)want_applied);
  return got;
}

/* ---- tests ----------------------------------------------------------- */

static void expect_refused(fx *f, const char *auth, grpc_status_code want,
                           const char *agent, size_t pk_len) {
  client c;
  msg m;
  char details[256];
  client_open(f, &c, auth);
  if (agent != NULL) {
    Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
    req.agent_id = (char *)agent;
    req.node_public_key.data = f->node_pk;
    req.node_public_key.len = pk_len;
    client_send(&c, &req);
  }
  assert_false(client_recv(&c, &m));
  assert_int_equal(client_close(&c, details, sizeof(details)), want);
  assert_null(strstr(details, TOKEN));
  client_free(&c);
}

static void test_missing_node_token_is_unauthenticated(void **state) {
  fx *f = *state;
  lk_sync_server_changed(f->sync, 1);
  expect_refused(f, NULL, GRPC_STATUS_UNAUTHENTICATED, NULL, 0);
}

static void test_wrong_node_token_is_unauthenticated(void **state) {
  fx *f = *state;
  lk_sync_server_changed(f->sync, 1);
  expect_refused(f, "Bearer node-token-for-sync-tests-0123456780",
                 GRPC_STATUS_UNAUTHENTICATED, NULL, 0);
  expect_refused(f, TOKEN, GRPC_STATUS_UNAUTHENTICATED, NULL, 0);
}

static void test_hello_with_bad_agent_id_is_invalid_argument(void **state) {
  fx *f = *state;
  lk_sync_server_changed(f->sync, 1);
  expect_refused(f, "Bearer " TOKEN, GRPC_STATUS_INVALID_ARGUMENT, "a/b", 32);
  expect_refused(f, "Bearer " TOKEN, GRPC_STATUS_INVALID_ARGUMENT, "", 32);
}

static void test_hello_with_bad_node_key_is_invalid_argument(void **state) {
  fx *f = *state;
  lk_sync_server_changed(f->sync, 1);
  expect_refused(f, "Bearer " TOKEN, GRPC_STATUS_INVALID_ARGUMENT, "agent-a",
                 31);
  expect_refused(f, "Bearer " TOKEN, GRPC_STATUS_INVALID_ARGUMENT, "agent-a",
                 0);
}

static void test_snapshot_holds_exactly_the_agents_scope(void **state) {
  fx *f = *state;
  client c;
  msg got[8];
  lk_scope *want = NULL;
  lk_err err;
  lk_sync_server_changed(f->sync, 7);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  assert_int_equal(lk_scope_compute(f->cat, "agent-a", &want, &err), LK_OK);
  size_t puts = 0;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(got[i].b->revision, 7);
    assert_int_equal(got[i].b->n_deletes, 0);
    for (size_t j = 0; j < got[i].b->n_puts; j++) {
      if (!lk_scope_contains(want, got[i].b->puts[j]->key)) {
        fail_msg("snapshot holds %s", got[i].b->puts[j]->key);
      }
      puts++;
    }
  }
  assert_int_equal(puts, lk_scope_count(want));
  /* Nothing of agent-b's budget b2 (budget, binding, credential w2), but
   * every tool, search included. */
  expect_snapshot(got, n, k_scope_a);
  assert_null(find_put(got, n, "cred/w2"));
  for (size_t i = 0; i < n; i++) {
    assert_null(
        memmem(got[i].raw, got[i].len, OTHER_CANARY, strlen(OTHER_CANARY)));
    msg_free(&got[i]);
  }
  lk_scope_destroy(want);
  client_done(&c);
}

static void test_snapshot_secret_is_sealed_to_the_node_key(void **state) {
  fx *f = *state;
  client c;
  msg got[8];
  lk_err err;
  Latchkey__V1__Credential *stored = NULL;
  lk_sync_server_changed(f->sync, 1);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);

  const Latchkey__V1__SyncRecord *r = find_put(got, n, "cred/w1");
  assert_non_null(r);
  Latchkey__V1__Credential *cred =
      latchkey__v1__credential__unpack(NULL, r->value.len, r->value.data);
  assert_non_null(cred);
  assert_int_equal(cred->n_fields, 2);
  Latchkey__V1__FieldValue *api = cred->fields[0];
  assert_string_equal(api->name, "api_key");
  assert_non_null(api->sealed);
  assert_int_equal(api->sealed->key_id, 0);
  assert_int_equal(api->sealed->ephemeral_public_key.len, 32);
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_unseal_from_node(
          f->node, "w1", "api_key", api->sealed->ephemeral_public_key.data,
          api->sealed->ephemeral_public_key.len, api->sealed->nonce.data,
          api->sealed->nonce.len, api->sealed->ciphertext.data,
          api->sealed->ciphertext.len, &pt, &err),
      LK_OK);
  assert_int_equal(lk_secret_len(pt), strlen(CANARY));
  assert_memory_equal(lk_secret_data(pt), CANARY, strlen(CANARY));
  lk_secret_free(pt);
  /* Bound to the record: it does not open as another field. */
  assert_int_equal(
      lk_unseal_from_node(
          f->node, "w1", "region", api->sealed->ephemeral_public_key.data,
          api->sealed->ephemeral_public_key.len, api->sealed->nonce.data,
          api->sealed->nonce.len, api->sealed->ciphertext.data,
          api->sealed->ciphertext.len, &pt, &err),
      LK_FAILED_PRECONDITION);
  assert_string_equal(cred->fields[1]->value, "eu");

  /* Neither the plaintext nor the key-ring ciphertext travelled. */
  assert_int_equal(lk_catalog_get_credential(f->cat, "w1", &stored, &err),
                   LK_OK);
  const ProtobufCBinaryData *ring_ct = &stored->fields[0]->sealed->ciphertext;
  for (size_t i = 0; i < n; i++) {
    assert_null(memmem(got[i].raw, got[i].len, CANARY, strlen(CANARY)));
    assert_null(memmem(got[i].raw, got[i].len, ring_ct->data, ring_ct->len));
    msg_free(&got[i]);
  }
  lk_catalog_free_credential(stored);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  client_done(&c);
}

/* A replica gets an OAuth credential's access token (sealed to its node
 * key) and its refresh state, never the refresh token or client secret:
 * only the control plane talks to the token endpoint. */
static void test_oauth_refresh_token_and_client_secret_stay_home(void **state) {
  fx *f = *state;
  client c;
  msg got[8];
  lk_err err;
  put_oauth_cred(f, "w1");
  lk_sync_server_changed(f->sync, 2);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  const Latchkey__V1__SyncRecord *r = find_put(got, n, "cred/w1");
  assert_non_null(r);
  Latchkey__V1__Credential *cred =
      latchkey__v1__credential__unpack(NULL, r->value.len, r->value.data);
  assert_non_null(cred);
  assert_int_equal(cred->n_fields, 2);
  assert_string_equal(cred->fields[0]->name, "access_token");
  assert_string_equal(cred->fields[1]->name, "token_url");
  assert_non_null(cred->oauth);
  assert_int_equal(cred->oauth->generation, 3);
  const Latchkey__V1__SealedValue *at = cred->fields[0]->sealed;
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_unseal_from_node(
          f->node, "w1", "access_token", at->ephemeral_public_key.data,
          at->ephemeral_public_key.len, at->nonce.data, at->nonce.len,
          at->ciphertext.data, at->ciphertext.len, &pt, &err),
      LK_OK);
  assert_memory_equal(lk_secret_data(pt), "at-live-Qm3vX9", 14);
  lk_secret_free(pt);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  client_done(&c);
}

static void test_credential_that_does_not_open_withholds_the_snapshot(
    void **state) {
  fx *f = *state;
  client c;
  msg m;
  char details[512];
  /* Re-sealing w1 fails at its first field (run under ASan: the second
   * field's stored value is freed with the record). Leaving w1 out would
   * make the snapshot delete it from the replica. */
  put_cred_first_field_unopenable(f, "w1");
  lk_sync_server_changed(f->sync, 2);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  /* What came before the failure, if anything, never ends a snapshot. */
  while (client_recv(&c, &m)) {
    assert_false(m.b->snapshot_end);
    msg_free(&m);
  }
  assert_int_equal(client_close(&c, details, sizeof(details)),
                   GRPC_STATUS_FAILED_PRECONDITION);
  assert_non_null(strstr(details,
                         "the snapshot is withheld: cred/w1 cannot "
                         "be re-sealed for this replica"));
  client_free(&c);
}

static void test_change_brings_one_batch_of_puts_and_deletes(void **state) {
  static const char *const news[] = {"tool/news", NULL};
  static const char *const unbound[] = {"bind/b1/tool/weather", "cred/w1",
                                        NULL};
  static const char *const rotated[] = {"cred/w1", NULL};
  fx *f = *state;
  client c;
  msg got[8], m;
  lk_sync_server_changed(f->sync, 1);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  send_ack(&c, 1, 0, NULL);

  /* Unbind weather: its binding and credential leave the scope, while the
   * tool and its type stay (the replica must answer missing_credential for
   * it). A new tool needing no credential enters. */
  bind_tool(f, "b1", "weather", "w1", 1);
  put_tool(f, "news", "");
  lk_sync_server_changed(f->sync, 5);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 5);
  assert_false(m.b->snapshot_begin);
  assert_false(m.b->snapshot_end);
  expect_change(&m, news, unbound);
  msg_free(&m);

  /* Binding it again brings back the binding and the credential only. */
  bind_tool(f, "b1", "weather", "w1", 0);
  lk_sync_server_changed(f->sync, 6);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 6);
  expect_change(&m, unbound, k_none);
  msg_free(&m);

  /* An updated credential in scope is re-sent; nothing else is. */
  put_cred(f, "w1", CANARY "-rotated", "eu");
  lk_sync_server_changed(f->sync, 7);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 7);
  expect_change(&m, rotated, k_none);
  msg_free(&m);
  client_done(&c);
}

static void test_change_outside_scope_brings_an_empty_batch(void **state) {
  fx *f = *state;
  client c;
  msg got[8], m;
  lk_sync_server_changed(f->sync, 1);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  put_cred(f, "w2", OTHER_CANARY "-rotated", "us");
  bind_tool(f, "b2", "weather", "w2", 0);
  lk_sync_server_changed(f->sync, 2);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 2);
  assert_int_equal(m.b->n_puts, 0);
  assert_int_equal(m.b->n_deletes, 0);
  msg_free(&m);
  client_done(&c);
}

static void test_ack_shows_in_status_and_latency(void **state) {
  fx *f = *state;
  client c;
  msg got[8], m;
  lk_sync_ack_latency lat;
  lk_sync_server_changed(f->sync, 3);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  replicas r = wait_applied(f, 0);
  assert_string_equal(r.agent, "agent-a");
  assert_int_equal(r.r.peer_id, 1);
  assert_int_equal(r.r.lag_revisions, 3);
  assert_int_equal(r.r.ms_since_ack, -1);

  send_ack(&c, 3, 0, NULL);
  r = wait_applied(f, 3);
  assert_int_equal(r.r.lag_revisions, 0);
  assert_true(r.r.ms_since_ack >= 0 && r.r.ms_since_ack < WAIT_S * 1000);

  lk_sync_server_changed(f->sync, 4);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 4);
  msg_free(&m);
  r = wait_applied(f, 3);
  assert_int_equal(r.r.lag_revisions, 1);
  send_ack(&c, 4, 0, NULL);
  wait_applied(f, 4);
  lk_sync_server_ack_latency(f->sync, &lat);
  assert_int_equal(lat.count, 1);
  assert_true(lat.last_us >= 0);
  uint64_t in_buckets = 0;
  for (size_t i = 0; i < LK_SYNC_LATENCY_BUCKETS; i++) {
    in_buckets += lat.buckets[i];
  }
  assert_int_equal(in_buckets, 1);
  client_done(&c);
}

static void test_heartbeats_arrive(void **state) {
  fx *f = *state;
  client c;
  msg got[8], m;
  lk_sync_server_changed(f->sync, 2);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  for (int i = 0; i < 2; i++) {
    assert_true(client_recv(&c, &m));
    assert_true(m.b->heartbeat);
    assert_int_equal(m.b->revision, 2);
    assert_int_equal(m.b->n_puts, 0);
    assert_int_equal(m.b->n_deletes, 0);
    msg_free(&m);
  }
  client_done(&c);
}

/* Asserts m carries the key ring's audit key sealed to f's node key (and
 * not in the clear); returns the ciphertext's first byte. */
static unsigned char expect_audit_key(fx *f, const msg *m) {
  lk_err err;
  lk_secret *want = NULL;
  lk_secret *got = NULL;
  const Latchkey__V1__SealedValue *s = m->b->audit_key;
  assert_non_null(s);
  assert_int_equal(s->ephemeral_public_key.len, 32);
  assert_int_equal(s->ciphertext.len, 32 + 16);
  assert_int_equal(lk_keyring_audit_key(f->kr, &want, &err), LK_OK);
  assert_int_equal(lk_unseal_from_node(
                       f->node, LK_AUDIT_SEAL_ID, LK_AUDIT_SEAL_FIELD,
                       s->ephemeral_public_key.data,
                       s->ephemeral_public_key.len, s->nonce.data, s->nonce.len,
                       s->ciphertext.data, s->ciphertext.len, &got, &err),
                   LK_OK);
  assert_int_equal(lk_secret_len(got), 32);
  assert_memory_equal(lk_secret_data(got), lk_secret_data(want), 32);
  assert_null(memmem(m->raw, m->len, lk_secret_data(want), 32));
  lk_secret_free(got);
  lk_secret_free(want);
  return s->ciphertext.data[0];
}

static void test_first_batch_of_every_stream_carries_the_audit_key(
    void **state) {
  fx *f = *state;
  client c;
  msg got[8], m;
  lk_sync_server_changed(f->sync, 2);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  expect_audit_key(f, &got[0]);
  for (size_t i = 0; i < n; i++) {
    assert_true(i == 0 || got[i].b->audit_key == NULL);
    msg_free(&got[i]);
  }
  assert_true(client_recv(&c, &m)); /* a heartbeat: no key again */
  assert_true(m.b->heartbeat);
  assert_null(m.b->audit_key);
  msg_free(&m);
  send_ack(&c, 2, 0, "");
  client_done(&c);

  /* A resumed stream's first batch is a heartbeat: it carries the key. */
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 2);
  assert_true(client_recv(&c, &m));
  assert_true(m.b->heartbeat);
  expect_audit_key(f, &m);
  msg_free(&m);
  put_tool(f, "news", "");
  lk_sync_server_changed(f->sync, 3);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 3);
  assert_null(m.b->audit_key);
  msg_free(&m);
  client_done(&c);
}

static void test_replica_at_current_revision_resumes_without_snapshot(
    void **state) {
  fx *f = *state;
  client c;
  msg m;
  lk_sync_server_changed(f->sync, 9);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 9);
  assert_true(client_recv(&c, &m));
  assert_true(m.b->heartbeat);
  assert_false(m.b->snapshot_begin);
  assert_int_equal(m.b->revision, 9);
  msg_free(&m);
  /* The server knows what the replica holds: a change sends only it. */
  put_tool(f, "news", "");
  lk_sync_server_changed(f->sync, 10);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 10);
  assert_false(m.b->snapshot_begin);
  assert_int_equal(m.b->n_puts, 1);
  assert_string_equal(m.b->puts[0]->key, "tool/news");
  msg_free(&m);
  client_done(&c);
}

static int copy_record(void *ctx, const char *key, size_t key_len,
                       const unsigned char *val, size_t val_len) {
  (void)key_len;
  lk_store_batch_put(ctx, key, val, val_len);
  return 0;
}

/* Keeps a copy of the catalog as it is now, as the history at rev. */
static void keep_history(fx *f, int64_t rev) {
  char name[64];
  lk_err err;
  lk_store_batch *b = lk_store_batch_new();
  assert_non_null(b);
  assert_int_equal(lk_store_scan(f->store, "", copy_record, b, &err), LK_OK);
  snprintf(name, sizeof(name), "/sync-test-history-%d-%d", (int)getpid(),
           counter);
  assert_int_equal(lk_store_open_memory(name, &f->hist_store, &err), LK_OK);
  assert_int_equal(lk_store_write(f->hist_store, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  assert_int_equal(lk_catalog_open(f->hist_store, &f->hist_cat, &err), LK_OK);
  f->hist_rev = rev;
}

/* lk_sync_history_fn over the copy kept by keep_history. */
static lk_status load_history(void *ctx, int64_t revision, lk_catalog **cat,
                              void **handle, lk_err *err) {
  fx *f = ctx;
  f->hist_loads++;
  if (f->hist_compacted) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "revision %lld compacted (compact revision %lld)",
                   (long long)revision, (long long)revision + 1);
  }
  if (f->hist_cat == NULL || revision != f->hist_rev) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "no copy at revision %lld",
                   (long long)revision);
  }
  *cat = f->hist_cat;
  *handle = f;
  return LK_OK;
}

static void free_history(void *ctx, void *handle) {
  fx *f = ctx;
  assert_ptr_equal(handle, f);
  f->hist_frees++;
}

static void test_replica_behind_resumes_with_one_batch(void **state) {
  static const char *const news[] = {"tool/news", NULL};
  static const char *const unbound[] = {"bind/b1/tool/weather", "cred/w1",
                                        NULL};
  fx *f = *state;
  client c, c2;
  msg m;
  lk_sync_server_set_history(f->sync, load_history, free_history, f);
  lk_sync_server_changed(f->sync, 3);
  keep_history(f, 3);

  /* Between 3 and 7: weather unbound (binding and credential leave), a
   * tool needing no credential arrives, another agent's credential
   * rotates (not in the scope). */
  bind_tool(f, "b1", "weather", "w1", 1);
  put_tool(f, "news", "");
  put_cred(f, "w2", OTHER_CANARY "-rotated", "us");
  lk_sync_server_changed(f->sync, 7);

  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 3);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 7);
  assert_false(m.b->snapshot_begin);
  assert_false(m.b->snapshot_end);
  expect_change(&m, news, unbound);
  msg_free(&m);
  assert_int_equal(f->hist_loads, 1);
  assert_int_equal(f->hist_frees, 1);
  send_ack(&c, 7, 0, NULL);
  wait_applied(f, 7);

  /* The seeded map is what the replica holds: the next change is a plain
   * difference against it. */
  bind_tool(f, "b1", "weather", "w1", 0);
  lk_sync_server_changed(f->sync, 8);
  recv_change(&c, &m);
  assert_int_equal(m.b->revision, 8);
  assert_false(m.b->snapshot_begin);
  expect_change(&m, unbound, k_none);
  msg_free(&m);
  client_done(&c);

  /* Another replica resuming from the same revision reuses the loaded
   * history: only the new tool differs from 3 to 8. */
  client_open(f, &c2, "Bearer " TOKEN);
  send_hello(f, &c2, "agent-a", 3);
  recv_change(&c2, &m);
  assert_int_equal(m.b->revision, 8);
  assert_false(m.b->snapshot_begin);
  expect_change(&m, news, k_none);
  msg_free(&m);
  assert_int_equal(f->hist_loads, 1);
  client_done(&c2);
}

static void test_compacted_history_gives_a_snapshot(void **state) {
  static const char *const scope[] = {
      "budget/b1",    "tool/clock", "tool/news", "tool/search",
      "tool/weather", "type/wkey",  NULL,
  };
  fx *f = *state;
  client c;
  msg got[8];
  lk_sync_server_set_history(f->sync, load_history, free_history, f);
  lk_sync_server_changed(f->sync, 3);
  keep_history(f, 3);
  f->hist_compacted = 1;
  bind_tool(f, "b1", "weather", "w1", 1);
  put_tool(f, "news", "");
  lk_sync_server_changed(f->sync, 5);

  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 3);
  size_t n = recv_snapshot(&c, got, 8);
  assert_int_equal(got[0].b->revision, 5);
  expect_snapshot(got, n, scope);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  assert_int_equal(f->hist_loads, 1);
  assert_int_equal(f->hist_frees, 0);
  client_done(&c);
}

static void test_replica_ahead_waits_for_its_revision(void **state) {
  fx *f = *state;
  client c;
  msg m;
  lk_sync_server_changed(f->sync, 1);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 3);
  /* The hello is in (applied = have_revision) before the server moves. */
  wait_applied(f, 3);
  lk_sync_server_changed(f->sync, 2);
  lk_sync_server_changed(f->sync, 3);
  assert_true(client_recv(&c, &m));
  assert_true(m.b->heartbeat);
  assert_false(m.b->snapshot_begin);
  assert_int_equal(m.b->revision, 3);
  msg_free(&m);
  client_done(&c);
}

static void test_stale_replica_gets_a_snapshot(void **state) {
  fx *f = *state;
  client c;
  msg got[8];
  lk_sync_server_changed(f->sync, 4);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 2);
  size_t n = recv_snapshot(&c, got, 8);
  assert_int_equal(got[0].b->revision, 4);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  client_done(&c);
}

static void test_nack_brings_a_snapshot(void **state) {
  fx *f = *state;
  client c;
  msg got[8], m;
  lk_sync_server_changed(f->sync, 1);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  put_tool(f, "news", "");
  lk_sync_server_changed(f->sync, 2);
  recv_change(&c, &m);
  assert_int_equal(m.b->n_puts, 1);
  msg_free(&m);
  send_ack(&c, 2, 1, "disk full");
  n = recv_snapshot(&c, got, 8);
  assert_int_equal(got[0].b->revision, 2);
  assert_non_null(find_put(got, n, "tool/news"));
  assert_non_null(find_put(got, n, "cred/w1"));
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  client_done(&c);
}

/* Says hello presenting node key pk instead of the fixture's. */
static void send_hello_with_key(client *c, const char *agent,
                                const unsigned char pk[32], int64_t have) {
  Latchkey__V1__SyncRequest req = LATCHKEY__V1__SYNC_REQUEST__INIT;
  req.agent_id = (char *)agent;
  req.node_public_key.data = (unsigned char *)pk;
  req.node_public_key.len = 32;
  req.have_revision = have;
  client_send(c, &req);
}

/* Returns the status of opening cred/w1's api_key in got under key. */
static lk_status open_w1_with(const msg *got, size_t n,
                              const lk_seal_key *key) {
  const Latchkey__V1__SyncRecord *r = find_put(got, n, "cred/w1");
  assert_non_null(r);
  Latchkey__V1__Credential *cred =
      latchkey__v1__credential__unpack(NULL, r->value.len, r->value.data);
  assert_non_null(cred);
  const Latchkey__V1__SealedValue *sv = cred->fields[0]->sealed;
  assert_non_null(sv);
  lk_secret *pt = NULL;
  lk_err err;
  lk_status st = lk_unseal_from_node(
      key, "w1", "api_key", sv->ephemeral_public_key.data,
      sv->ephemeral_public_key.len, sv->nonce.data, sv->nonce.len,
      sv->ciphertext.data, sv->ciphertext.len, &pt, &err);
  if (st == LK_OK) {
    assert_int_equal(lk_secret_len(pt), strlen(CANARY));
    assert_memory_equal(lk_secret_data(pt), CANARY, strlen(CANARY));
  }
  lk_secret_free(pt);
  latchkey__v1__credential__free_unpacked(cred, NULL);
  return st;
}

static void test_new_node_key_gets_a_snapshot_sealed_to_it(void **state) {
  fx *f = *state;
  client c;
  msg got[8];
  char path[1200];
  lk_err err;
  lk_seal_key *next = NULL;
  unsigned char next_pk[32];
  snprintf(path, sizeof(path), "%s/next.key", f->dir);
  assert_int_equal(lk_seal_key_load_or_create(path, &next, &err), LK_OK);
  assert_int_equal(lk_seal_key_public(next, next_pk, &err), LK_OK);
  lk_sync_server_changed(f->sync, 3);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 8);
  assert_int_equal(open_w1_with(got, n, f->node), LK_OK);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  send_ack(&c, 3, 0, NULL);
  client_done(&c);

  /* A rotated sidecar presents its new key with have_revision 0: a full
   * snapshot, every secret re-sealed to the new key only. */
  client_open(f, &c, "Bearer " TOKEN);
  send_hello_with_key(&c, "agent-a", next_pk, 0);
  n = recv_snapshot(&c, got, 8);
  assert_int_equal(got[0].b->revision, 3);
  expect_snapshot(got, n, k_scope_a);
  assert_int_equal(open_w1_with(got, n, next), LK_OK);
  assert_int_equal(open_w1_with(got, n, f->node), LK_FAILED_PRECONDITION);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  client_done(&c);

  /* A key other than the agent's last stream's never resumes, even when
   * the hello claims the current revision: what it holds is sealed to
   * another key. */
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 3);
  n = recv_snapshot(&c, got, 8);
  assert_int_equal(open_w1_with(got, n, f->node), LK_OK);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  client_done(&c);
  lk_seal_key_destroy(next);
}

/* Adds n tools needing no credential, each with a description of size
 * bytes (so they are in every scope with a budget). */
static void put_big_tools(fx *f, const char *prefix, int n, size_t size) {
  char *desc = malloc(size + 1);
  assert_non_null(desc);
  memset(desc, 'd', size);
  desc[size] = '\0';
  for (int i = 0; i < n; i++) {
    Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
    char id[64];
    lk_store_batch *b = lk_store_batch_new();
    lk_err err;
    snprintf(id, sizeof(id), "%s%02d", prefix, i);
    t.id = id;
    t.base_url = "https://api.example";
    t.description = desc;
    assert_int_equal(lk_catalog_put_tool(f->cat, b, &t, &err), LK_OK);
    commit_ok(f, b);
  }
  free(desc);
}

/* Checks a snapshot of n messages: every message within the limit, begin
 * on the first only, end on the last only; returns the records in it. */
static size_t check_split(const msg *got, size_t n) {
  size_t puts = 0;
  assert_true(n >= 2);
  for (size_t i = 0; i < n; i++) {
    assert_true(got[i].len <= LK_SYNC_MAX_MESSAGE_BYTES);
    assert_int_equal(got[i].b->snapshot_begin, i == 0);
    assert_int_equal(got[i].b->snapshot_end, i == n - 1);
    puts += got[i].b->n_puts;
  }
  return puts;
}

static void test_large_snapshot_is_split_into_4mib_messages(void **state) {
  fx *f = *state;
  client c;
  msg got[16];
  put_big_tools(f, "big", 24, 300 * 1024);
  lk_sync_server_changed(f->sync, 1);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 16);
  assert_int_equal(check_split(got, n), n_keys(k_scope_a) + 24);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  client_done(&c);
}

static void test_change_over_one_message_comes_as_snapshot(void **state) {
  fx *f = *state;
  client c;
  msg got[16];
  lk_sync_server_changed(f->sync, 1);
  client_open(f, &c, "Bearer " TOKEN);
  send_hello(f, &c, "agent-a", 0);
  size_t n = recv_snapshot(&c, got, 16);
  assert_int_equal(n, 1);
  msg_free(&got[0]);
  put_big_tools(f, "big", 24, 300 * 1024);
  lk_sync_server_changed(f->sync, 2);
  n = recv_snapshot(&c, got, 16);
  assert_int_equal(got[0].b->revision, 2);
  assert_int_equal(check_split(got, n), n_keys(k_scope_a) + 24);
  for (size_t i = 0; i < n; i++) {
    msg_free(&got[i]);
  }
  client_done(&c);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_missing_node_token_is_unauthenticated),
      T(test_wrong_node_token_is_unauthenticated),
      T(test_hello_with_bad_agent_id_is_invalid_argument),
      T(test_hello_with_bad_node_key_is_invalid_argument),
      T(test_snapshot_holds_exactly_the_agents_scope),
      T(test_snapshot_secret_is_sealed_to_the_node_key),
      T(test_oauth_refresh_token_and_client_secret_stay_home),
      T(test_credential_that_does_not_open_withholds_the_snapshot),
      T(test_change_brings_one_batch_of_puts_and_deletes),
      T(test_change_outside_scope_brings_an_empty_batch),
      T(test_ack_shows_in_status_and_latency),
      T(test_heartbeats_arrive),
      T(test_first_batch_of_every_stream_carries_the_audit_key),
      T(test_replica_at_current_revision_resumes_without_snapshot),
      T(test_replica_ahead_waits_for_its_revision),
      T(test_stale_replica_gets_a_snapshot),
      T(test_replica_behind_resumes_with_one_batch),
      T(test_compacted_history_gives_a_snapshot),
      T(test_nack_brings_a_snapshot),
      T(test_new_node_key_gets_a_snapshot_sealed_to_it),
      T(test_large_snapshot_is_split_into_4mib_messages),
      T(test_change_over_one_message_comes_as_snapshot),
  };
#undef T
  return cmocka_run_group_tests(tests, NULL, NULL);
}
