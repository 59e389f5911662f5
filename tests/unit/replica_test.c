/*
 * replica_test.c - proves sidecar/replica's applier contract on a real
 * RocksDB store, without gRPC: incremental batches land with their
 * revision (8 bytes big-endian under meta/revision), resent revisions are
 * ACKed and change nothing, every malformed batch (bad or NUL-bearing key,
 * undecodable or misplaced record, plaintext or key-ring-sealed secret,
 * heartbeat with changes, snapshot with deletes or without a beginning,
 * missing revision, oversized message) is NACKed with the exact status and
 * applies nothing, after a NACK batches are skipped until a snapshot
 * begins, a snapshot in parts is applied at its end as a replacement that
 * keeps non-catalog keys, and a changed node key resets the revision to 0
 * (at open or between streams, lk_replica_applier_set_node_key) and
 * refuses incremental batches (FAILED_PRECONDITION) until a snapshot
 * sealed to the new key has replaced the replica.
 * Audit keys (with real node key files, sidecar/node_keys): one sealed to
 * this node is stored sealed under meta/audit_key in the WriteBatch of its
 * batch (alone for a heartbeat, at the end for a snapshot) and handed to
 * the holder, and is loaded again at start; one sealed to another node,
 * malformed, or sent to an applier without node keys is NACKed with
 * nothing applied. Across a node key rotation: the new stream's audit key
 * must be sealed to the presented next key (one sealed to the old key is
 * NACKed), lands in the snapshot's WriteBatch with the new
 * meta/node_public_key (a heartbeat's waits for it), a snapshot without
 * one drops the stale stored key, and a replica restarted before the
 * snapshot, after it, and after the old key is gone opens its stored
 * audit key before any stream.
 */
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

#include <sodium.h>

#include "latchkey/v1/sync.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/audit.h"
#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/store.h"
#include "sidecar/node_keys.h"
#include "sidecar/replica.h"

#define MAX_RECORDS 16

typedef struct {
  char dir[1024];
  lk_store *store;
  lk_replica_applier *a;
} fx;

static int dir_counter;
static const unsigned char node_pk[32] = {1, 2, 3, 4, 5, 6, 7, 8};

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  lk_err err;
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/replica-%d-%d",
           tmp != NULL ? tmp : "/tmp", (int)getpid(), dir_counter++);
  if (lk_store_open(f->dir, &f->store, &err) != LK_OK)
    fail_msg("store open: %s", err.msg);
  if (lk_replica_applier_new(f->store, node_pk, &f->a, &err) != LK_OK)
    fail_msg("applier: %s", err.msg);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  lk_replica_applier_destroy(f->a);
  lk_store_close(f->store);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* ---- building batches ------------------------------------------------- */

/* A batch under construction: records own their packed values. */
typedef struct {
  Latchkey__V1__SyncBatch b;
  Latchkey__V1__SyncRecord recs[MAX_RECORDS];
  Latchkey__V1__SyncRecord *rec_ptrs[MAX_RECORDS];
  char *deletes[MAX_RECORDS];
} batch;

static void batch_init(batch *x, int64_t revision) {
  memset(x, 0, sizeof(*x));
  latchkey__v1__sync_batch__init(&x->b);
  x->b.revision = revision;
  x->b.puts = x->rec_ptrs;
  x->b.deletes = x->deletes;
}

static void put_raw(batch *x, const char *key, const void *val, size_t len) {
  assert_true(x->b.n_puts < MAX_RECORDS);
  Latchkey__V1__SyncRecord *r = &x->recs[x->b.n_puts];
  latchkey__v1__sync_record__init(r);
  r->key = (char *)key;
  r->value.data = malloc(len ? len : 1);
  assert_non_null(r->value.data);
  memcpy(r->value.data, val, len);
  r->value.len = len;
  x->rec_ptrs[x->b.n_puts++] = r;
}

static void put_msg(batch *x, const char *key, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(n ? n : 1);
  assert_non_null(buf);
  protobuf_c_message_pack(m, buf);
  put_raw(x, key, buf, n);
  free(buf);
}

static void del(batch *x, const char *key) {
  assert_true(x->b.n_deletes < MAX_RECORDS);
  x->deletes[x->b.n_deletes++] = (char *)key;
}

static void put_tool(batch *x, const char *id) {
  Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
  char key[64];
  t.id = (char *)id;
  t.base_url = "https://api.example";
  snprintf(key, sizeof(key), "tool/%s", id);
  /* The key must outlive the batch: keep it in a static ring. */
  static char keys[MAX_RECORDS][64];
  static int next;
  char *k = keys[next++ % MAX_RECORDS];
  memcpy(k, key, sizeof(key));
  put_msg(x, k, &t.base);
}

static void put_budget(batch *x) {
  Latchkey__V1__Budget b = LATCHKEY__V1__BUDGET__INIT;
  char *agents[] = {"agent-1"};
  b.id = "main";
  b.agents = agents;
  b.n_agents = 1;
  put_msg(x, "budget/main", &b.base);
}

static void put_binding(batch *x) {
  Latchkey__V1__Binding b = LATCHKEY__V1__BINDING__INIT;
  b.budget_id = "main";
  b.tool_id = "weather";
  b.credential_id = "c1";
  put_msg(x, "bind/main/tool/weather", &b.base);
}

/* A credential whose one secret field is sealed as sealed_kind says:
 * 0 = to a node key (well-formed), 1 = under a key ring (no ephemeral
 * key), 2 = node-sealed but also carrying the plaintext. */
static void put_credential(batch *x, int sealed_kind) {
  static unsigned char eph[32], nonce[24], ct[40];
  Latchkey__V1__SealedValue s = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__FieldValue fv = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__FieldValue *fields[] = {&fv};
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  s.nonce.data = nonce;
  s.nonce.len = sizeof(nonce);
  s.ciphertext.data = ct;
  s.ciphertext.len = sizeof(ct);
  if (sealed_kind != 1) {
    s.ephemeral_public_key.data = eph;
    s.ephemeral_public_key.len = sizeof(eph);
  } else {
    s.key_id = 7;
  }
  fv.name = "token";
  fv.secret = 1;
  fv.sealed = &s;
  if (sealed_kind == 2)
    fv.value = "plaintext-token";
  c.id = "c1";
  c.type = "bearer";
  c.fields = fields;
  c.n_fields = 1;
  put_msg(x, "cred/c1", &c.base);
}

static void batch_free(batch *x) {
  for (size_t i = 0; i < x->b.n_puts; i++)
    free(x->recs[i].value.data);
}

/* Packs and handles x; returns the status, reply and revision. */
static lk_status handle(fx *f, batch *x, lk_replica_reply *reply, int64_t *rev,
                        lk_err *err) {
  size_t n = latchkey__v1__sync_batch__get_packed_size(&x->b);
  unsigned char *buf = malloc(n ? n : 1);
  assert_non_null(buf);
  latchkey__v1__sync_batch__pack(&x->b, buf);
  lk_err_clear(err);
  lk_status st = lk_replica_applier_handle(f->a, buf, n, reply, rev, err);
  free(buf);
  batch_free(x);
  return st;
}

static void expect_ack(fx *f, batch *x, int64_t want_rev) {
  lk_replica_reply reply;
  int64_t rev = -1;
  lk_err err;
  lk_status st = handle(f, x, &reply, &rev, &err);
  if (st != LK_OK)
    fail_msg("expected ACK, got %s: %s", lk_status_name(st), err.msg);
  assert_int_equal(reply, LK_REPLICA_REPLY_ACK);
  assert_int_equal(rev, want_rev);
}

static void expect_nack(fx *f, batch *x, lk_status want, const char *needle) {
  lk_replica_reply reply;
  int64_t rev = -1;
  lk_err err;
  int64_t before = lk_replica_applier_revision(f->a);
  lk_status st = handle(f, x, &reply, &rev, &err);
  assert_int_equal(reply, LK_REPLICA_REPLY_NACK);
  if (st != want) {
    fail_msg("expected %s, got %s: %s", lk_status_name(want),
             lk_status_name(st), err.msg);
  }
  assert_int_equal(err.code, want);
  if (strstr(err.msg, needle) == NULL)
    fail_msg("message '%s' lacks '%s'", err.msg, needle);
  assert_int_equal(lk_replica_applier_revision(f->a), before);
  /* A NACK waits for a snapshot: start over as a new stream would. */
  lk_replica_applier_reset(f->a);
}

static void expect_reply(fx *f, batch *x, lk_replica_reply want) {
  lk_replica_reply reply;
  int64_t rev = -1;
  lk_err err;
  lk_status st = handle(f, x, &reply, &rev, &err);
  if (st != LK_OK)
    fail_msg("expected OK, got %s: %s", lk_status_name(st), err.msg);
  assert_int_equal(reply, want);
}

static int has_key(fx *f, const char *key) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  lk_status st = lk_store_get(f->store, key, &val, &len, &err);
  lk_store_value_free(val, len);
  assert_true(st == LK_OK || st == LK_NOT_FOUND);
  return st == LK_OK;
}

static void put_store(fx *f, const char *key, const void *val, size_t len) {
  lk_err err;
  if (lk_store_put(f->store, key, val, len, &err) != LK_OK)
    fail_msg("store put: %s", err.msg);
}

/* Applies tool/weather, budget, binding and credential at revision rev. */
static void seed(fx *f, int64_t rev) {
  batch x;
  batch_init(&x, rev);
  put_tool(&x, "weather");
  put_budget(&x);
  put_binding(&x);
  put_credential(&x, 0);
  expect_ack(f, &x, rev);
}

/* ---- tests -------------------------------------------------------------- */

static void empty_store_starts_at_revision_zero(void **state) {
  fx *f = *state;
  assert_int_equal(lk_replica_applier_revision(f->a), 0);
}

static void incremental_batch_lands_with_its_revision(void **state) {
  fx *f = *state;
  seed(f, 5);
  assert_int_equal(lk_replica_applier_revision(f->a), 5);
  assert_true(has_key(f, "tool/weather"));
  assert_true(has_key(f, "cred/c1"));
  assert_true(has_key(f, "bind/main/tool/weather"));
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  assert_int_equal(
      lk_store_get(f->store, LK_REPLICA_REVISION_KEY, &val, &len, &err), LK_OK);
  const unsigned char want[8] = {0, 0, 0, 0, 0, 0, 0, 5};
  assert_int_equal(len, 8);
  assert_memory_equal(val, want, 8);
  lk_store_value_free(val, len);
  assert_int_equal(
      lk_store_get(f->store, LK_REPLICA_NODE_KEY_KEY, &val, &len, &err), LK_OK);
  assert_int_equal(len, 32);
  assert_memory_equal(val, node_pk, 32);
  lk_store_value_free(val, len);
}

static void revision_survives_reopening(void **state) {
  fx *f = *state;
  seed(f, 0x0102030405LL);
  lk_replica_applier_destroy(f->a);
  lk_err err;
  assert_int_equal(lk_replica_applier_new(f->store, node_pk, &f->a, &err),
                   LK_OK);
  assert_true(lk_replica_applier_revision(f->a) == 0x0102030405LL);
}

static void resent_revision_is_acked_and_changes_nothing(void **state) {
  fx *f = *state;
  seed(f, 5);
  batch x;
  batch_init(&x, 5);
  del(&x, "tool/weather");
  expect_ack(f, &x, 5);
  batch_init(&x, 3);
  del(&x, "tool/weather");
  expect_ack(f, &x, 3);
  assert_true(has_key(f, "tool/weather"));
  assert_int_equal(lk_replica_applier_revision(f->a), 5);
}

static void deletes_apply_after_puts(void **state) {
  fx *f = *state;
  seed(f, 5);
  batch x;
  batch_init(&x, 6);
  put_tool(&x, "other");
  del(&x, "tool/other");
  del(&x, "bind/main/tool/weather");
  expect_ack(f, &x, 6);
  assert_false(has_key(f, "tool/other"));
  assert_false(has_key(f, "bind/main/tool/weather"));
  assert_true(has_key(f, "tool/weather"));
}

static void non_catalog_key_is_nacked_and_nothing_applies(void **state) {
  fx *f = *state;
  seed(f, 5);
  static const char *const bad[] = {"meta/revision", "tool/", "audit/x", "",
                                    "tools/x"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    batch x;
    batch_init(&x, 6);
    put_tool(&x, "fresh");
    del(&x, "tool/weather");
    put_raw(&x, bad[i], "\x01", 1);
    expect_nack(f, &x, LK_INVALID_ARGUMENT, "is not a catalog key");
    assert_false(has_key(f, "tool/fresh"));
    assert_true(has_key(f, "tool/weather"));
  }
  batch x;
  batch_init(&x, 6);
  del(&x, "meta/schema");
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "'meta/schema' is not a catalog key");
}

static void key_with_nul_is_nacked(void **state) {
  fx *f = *state;
  seed(f, 5);
  /* Hand-encoded: revision 6, deletes ["tool/weather\0x"]. */
  const unsigned char delete_msg[] = {0x08, 0x06, 0x1a, 0x0e, 't',  'o',
                                      'o',  'l',  '/',  'w',  'e',  'a',
                                      't',  'h',  'e',  'r',  0x00, 'x'};
  /* revision 6, puts [{key "tool/weather\0", value ""}]. */
  const unsigned char put_msg_bytes[] = {
      0x08, 0x06, 0x12, 0x0f, 0x0a, 0x0d, 't', 'o', 'o', 'l',
      '/',  'w',  'e',  'a',  't',  'h',  'e', 'r', 0x00};
  const struct {
    const unsigned char *p;
    size_t n;
  } msgs[] = {{delete_msg, sizeof(delete_msg)},
              {put_msg_bytes, sizeof(put_msg_bytes)}};
  for (size_t i = 0; i < 2; i++) {
    lk_replica_reply reply;
    int64_t rev = 0;
    lk_err err;
    assert_int_equal(lk_replica_applier_handle(f->a, msgs[i].p, msgs[i].n,
                                               &reply, &rev, &err),
                     LK_INVALID_ARGUMENT);
    assert_int_equal(reply, LK_REPLICA_REPLY_NACK);
    assert_int_equal(rev, 6);
    assert_non_null(strstr(err.msg, "NUL"));
    lk_replica_applier_reset(f->a);
  }
  assert_true(has_key(f, "tool/weather"));
}

static void garbage_message_is_nacked(void **state) {
  fx *f = *state;
  const unsigned char junk[] = {0x12, 0x7f, 0x01};
  lk_replica_reply reply;
  int64_t rev = 0;
  lk_err err;
  assert_int_equal(
      lk_replica_applier_handle(f->a, junk, sizeof(junk), &reply, &rev, &err),
      LK_INVALID_ARGUMENT);
  assert_int_equal(reply, LK_REPLICA_REPLY_NACK);
  assert_non_null(strstr(err.msg, "not a valid latchkey.v1.SyncBatch"));
}

static void oversized_message_is_nacked(void **state) {
  fx *f = *state;
  size_t n = LK_REPLICA_MAX_MESSAGE_BYTES + 1;
  unsigned char *big = calloc(1, n);
  assert_non_null(big);
  big[0] = 0x08; /* revision 9, then zeros */
  big[1] = 0x09;
  lk_replica_reply reply;
  int64_t rev = 0;
  lk_err err;
  assert_int_equal(lk_replica_applier_handle(f->a, big, n, &reply, &rev, &err),
                   LK_RESOURCE_EXHAUSTED);
  free(big);
  assert_int_equal(reply, LK_REPLICA_REPLY_NACK);
  assert_int_equal(rev, 9);
  assert_non_null(strstr(err.msg, "over the 67108864-byte limit"));
}

static void record_that_does_not_decode_is_nacked(void **state) {
  fx *f = *state;
  batch x;
  batch_init(&x, 6);
  put_raw(&x, "budget/main", "\xff\xff\xff", 3);
  expect_nack(f, &x, LK_INVALID_ARGUMENT,
              "'budget/main' is not a valid latchkey.v1.Budget");
  assert_false(has_key(f, "budget/main"));
}

static void record_under_another_records_key_is_nacked(void **state) {
  fx *f = *state;
  batch x;
  batch_init(&x, 6);
  Latchkey__V1__Budget b = LATCHKEY__V1__BUDGET__INIT;
  b.id = "other";
  put_msg(&x, "budget/main", &b.base);
  expect_nack(f, &x, LK_INVALID_ARGUMENT,
              "holds the record of key 'budget/other'");
  batch_init(&x, 6);
  Latchkey__V1__Binding bind = LATCHKEY__V1__BINDING__INIT;
  bind.budget_id = "main";
  bind.credential_type = "bearer";
  bind.credential_id = "c1";
  put_msg(&x, "bind/main/tool/bearer", &bind.base);
  expect_nack(f, &x, LK_INVALID_ARGUMENT,
              "holds the record of key 'bind/main/type/bearer'");
  batch_init(&x, 6);
  b.id = "bad id";
  put_msg(&x, "budget/bad id", &b.base);
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "is invalid");
}

static void secret_not_sealed_to_a_node_is_nacked(void **state) {
  fx *f = *state;
  batch x;
  batch_init(&x, 6);
  put_credential(&x, 1);
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "is not sealed to a node key");
  batch_init(&x, 6);
  put_credential(&x, 2);
  expect_nack(f, &x, LK_INVALID_ARGUMENT,
              "carries a plain value for secret field 'token'");
  assert_false(has_key(f, "cred/c1"));
}

static void batch_without_revision_is_nacked(void **state) {
  fx *f = *state;
  batch x;
  batch_init(&x, 0);
  put_tool(&x, "weather");
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "batch has revision 0");
  assert_false(has_key(f, "tool/weather"));
}

static void heartbeat_changes_nothing_and_gets_no_answer(void **state) {
  fx *f = *state;
  seed(f, 5);
  batch x;
  batch_init(&x, 9);
  x.b.heartbeat = 1;
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  assert_int_equal(lk_replica_applier_revision(f->a), 5);
  batch_init(&x, 9);
  x.b.heartbeat = 1;
  del(&x, "tool/weather");
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "heartbeat 9 carries changes");
  assert_true(has_key(f, "tool/weather"));
}

static void after_a_nack_batches_are_skipped_until_a_snapshot(void **state) {
  fx *f = *state;
  seed(f, 5);
  batch x;
  batch_init(&x, 6);
  put_raw(&x, "nope/x", "", 0);
  lk_replica_reply reply;
  int64_t rev;
  lk_err err;
  assert_int_equal(handle(f, &x, &reply, &rev, &err), LK_INVALID_ARGUMENT);
  /* A later change must not jump over the refused one. */
  batch_init(&x, 7);
  del(&x, "tool/weather");
  expect_reply(f, &x, LK_REPLICA_REPLY_SKIP);
  batch_init(&x, 7);
  x.b.heartbeat = 1;
  expect_reply(f, &x, LK_REPLICA_REPLY_SKIP);
  assert_true(has_key(f, "tool/weather"));
  assert_int_equal(lk_replica_applier_revision(f->a), 5);
  batch_init(&x, 8);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_tool(&x, "weather");
  expect_ack(f, &x, 8);
  assert_false(has_key(f, "cred/c1"));
  batch_init(&x, 9);
  del(&x, "tool/weather");
  expect_ack(f, &x, 9);
}

static void snapshot_in_parts_replaces_the_catalog_at_its_end(void **state) {
  fx *f = *state;
  seed(f, 5);
  put_store(f, "meta/schema", "1", 1);
  put_store(f, "type/stale", "\x0a\x05stale", 7);
  batch x;
  batch_init(&x, 20);
  x.b.snapshot_begin = 1;
  put_tool(&x, "weather");
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  batch_init(&x, 20);
  put_tool(&x, "news");
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  /* Nothing lands before the end. */
  assert_false(has_key(f, "tool/news"));
  assert_int_equal(lk_replica_applier_revision(f->a), 5);
  batch_init(&x, 20);
  x.b.snapshot_end = 1;
  put_budget(&x);
  expect_ack(f, &x, 20);
  assert_int_equal(lk_replica_applier_revision(f->a), 20);
  assert_true(has_key(f, "tool/weather"));
  assert_true(has_key(f, "tool/news"));
  assert_true(has_key(f, "budget/main"));
  assert_false(has_key(f, "cred/c1"));
  assert_false(has_key(f, "bind/main/tool/weather"));
  assert_false(has_key(f, "type/stale"));
  assert_true(has_key(f, "meta/schema"));
}

static void snapshot_at_an_applied_revision_is_acked_unapplied(void **state) {
  fx *f = *state;
  seed(f, 5);
  batch x;
  batch_init(&x, 5);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_budget(&x);
  expect_ack(f, &x, 5);
  assert_true(has_key(f, "tool/weather"));
}

static void new_snapshot_begin_drops_the_one_in_progress(void **state) {
  fx *f = *state;
  batch x;
  batch_init(&x, 20);
  x.b.snapshot_begin = 1;
  put_tool(&x, "first");
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  batch_init(&x, 21);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_tool(&x, "second");
  expect_ack(f, &x, 21);
  assert_false(has_key(f, "tool/first"));
  assert_true(has_key(f, "tool/second"));
}

static void snapshot_with_deletes_or_no_beginning_is_nacked(void **state) {
  fx *f = *state;
  seed(f, 5);
  batch x;
  batch_init(&x, 20);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_tool(&x, "news");
  del(&x, "tool/weather");
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "carries deletes");
  batch_init(&x, 21);
  x.b.snapshot_end = 1;
  put_tool(&x, "news");
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "never began");
  batch_init(&x, 0);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "snapshot ends with revision 0");
  assert_false(has_key(f, "tool/news"));
  assert_true(has_key(f, "tool/weather"));
}

static void bad_part_drops_the_whole_snapshot(void **state) {
  fx *f = *state;
  seed(f, 5);
  batch x;
  batch_init(&x, 20);
  x.b.snapshot_begin = 1;
  put_tool(&x, "news");
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  batch_init(&x, 20);
  put_raw(&x, "tool/bad", "\xff", 1);
  lk_replica_reply reply;
  int64_t rev;
  lk_err err;
  assert_int_equal(handle(f, &x, &reply, &rev, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(reply, LK_REPLICA_REPLY_NACK);
  /* The rest of that snapshot is skipped, never applied as a batch. */
  batch_init(&x, 20);
  x.b.snapshot_end = 1;
  put_budget(&x);
  expect_reply(f, &x, LK_REPLICA_REPLY_SKIP);
  assert_false(has_key(f, "tool/news"));
  assert_true(has_key(f, "cred/c1"));
  assert_int_equal(lk_replica_applier_revision(f->a), 5);
}

static void changed_node_key_restarts_from_revision_zero(void **state) {
  fx *f = *state;
  seed(f, 5);
  lk_replica_applier_destroy(f->a);
  unsigned char other[32] = {9};
  lk_err err;
  assert_int_equal(lk_replica_applier_new(f->store, other, &f->a, &err), LK_OK);
  assert_int_equal(lk_replica_applier_revision(f->a), 0);
  /* Any snapshot now replaces the replica sealed to the old key. */
  batch x;
  batch_init(&x, 3);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_budget(&x);
  expect_ack(f, &x, 3);
  assert_false(has_key(f, "cred/c1"));
  lk_replica_applier_destroy(f->a);
  assert_int_equal(lk_replica_applier_new(f->store, other, &f->a, &err), LK_OK);
  assert_int_equal(lk_replica_applier_revision(f->a), 3);
}

static void incremental_batch_over_another_node_key_is_nacked(void **state) {
  fx *f = *state;
  seed(f, 5);
  lk_replica_applier_destroy(f->a);
  unsigned char other[32] = {9};
  lk_err err;
  assert_int_equal(lk_replica_applier_new(f->store, other, &f->a, &err), LK_OK);
  assert_false(lk_replica_applier_sealed_to_node_key(f->a));
  /* A batch sealed to the new key must not land among records sealed to
   * the old one, nor record the new key over them. */
  batch x;
  batch_init(&x, 6);
  put_tool(&x, "news");
  expect_nack(f, &x, LK_FAILED_PRECONDITION,
              "sealed to another node key: a snapshot sealed to the key");
  assert_false(has_key(f, "tool/news"));
  unsigned char stored[32];
  assert_true(lk_replica_stored_node_key(f->store, stored));
  assert_memory_equal(stored, node_pk, 32);
  /* The snapshot replaces everything and records the new key. */
  batch_init(&x, 7);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_budget(&x);
  put_credential(&x, 0);
  expect_ack(f, &x, 7);
  assert_true(lk_replica_applier_sealed_to_node_key(f->a));
  assert_true(lk_replica_stored_node_key(f->store, stored));
  assert_memory_equal(stored, other, 32);
  /* Incremental batches apply again. */
  batch_init(&x, 8);
  put_tool(&x, "news");
  expect_ack(f, &x, 8);
  assert_true(has_key(f, "tool/news"));
}

static void set_node_key_between_streams_asks_for_a_snapshot(void **state) {
  fx *f = *state;
  seed(f, 5);
  assert_true(lk_replica_applier_sealed_to_node_key(f->a));
  unsigned char next[32] = {7, 7};
  lk_err err;
  assert_int_equal(lk_replica_applier_set_node_key(f->a, next, &err), LK_OK);
  assert_int_equal(lk_replica_applier_revision(f->a), 0);
  assert_false(lk_replica_applier_sealed_to_node_key(f->a));
  /* Back to the key the store is sealed to: resume from its revision. */
  assert_int_equal(lk_replica_applier_set_node_key(f->a, node_pk, &err), LK_OK);
  assert_int_equal(lk_replica_applier_revision(f->a), 5);
  assert_true(lk_replica_applier_sealed_to_node_key(f->a));
  /* A snapshot under the next key moves the store to it. */
  assert_int_equal(lk_replica_applier_set_node_key(f->a, next, &err), LK_OK);
  batch x;
  batch_init(&x, 4);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_budget(&x);
  expect_ack(f, &x, 4);
  assert_true(lk_replica_applier_sealed_to_node_key(f->a));
  assert_false(has_key(f, "cred/c1"));
  unsigned char stored[32];
  assert_true(lk_replica_stored_node_key(f->store, stored));
  assert_memory_equal(stored, next, 32);
}

static void empty_store_records_no_node_key(void **state) {
  fx *f = *state;
  unsigned char stored[32] = {0};
  assert_false(lk_replica_stored_node_key(f->store, stored));
  assert_false(lk_replica_applier_sealed_to_node_key(f->a));
  /* A record that is no 32-byte key counts as none. */
  put_store(f, LK_REPLICA_NODE_KEY_KEY, "short", 5);
  assert_false(lk_replica_stored_node_key(f->store, stored));
}

static void malformed_stored_revision_is_refused(void **state) {
  fx *f = *state;
  lk_replica_applier_destroy(f->a);
  f->a = NULL;
  put_store(f, LK_REPLICA_REVISION_KEY, "\x01\x02", 2);
  lk_err err;
  assert_int_equal(lk_replica_applier_new(f->store, node_pk, &f->a, &err),
                   LK_FAILED_PRECONDITION);
  assert_null(f->a);
  assert_non_null(strstr(err.msg, "meta/revision is not an 8-byte revision"));
}

/* ---- audit keys --------------------------------------------------------- */

static const unsigned char audit_bytes[32] = {
    'r', 'e', 'p', 'l', 'i', 'c', 'a', '-', 'a', 'u', 'd',
    'i', 't', '-', 'k', 'e', 'y', 9,   8,   7,   6,   5,
    4,   3,   2,   1,   0,   1,   2,   3,   4,   5};

/* Real node keys under f's dir (name picks the file), opened as latchkeyd
 * opens them (with the key the store records as sealed to), and an audit
 * key holder. */
typedef struct {
  char path[1200];
  lk_node_keys *keys;
  unsigned char pk[32]; /* the key presented */
  lk_audit_key *audit;
} node;

/* Opens n's keys at f->dir/name.key; rotate as --rotate-node-key. */
static void node_open_rotating(fx *f, node *n, const char *name, int rotate) {
  lk_err err;
  unsigned char sealed_pk[32];
  snprintf(n->path, sizeof(n->path), "%s/%s.key", f->dir, name);
  lk_node_keys_config cfg = {
      .path = n->path,
      .replica = 1,
      .rotate = rotate,
      .sealed_pk =
          lk_replica_stored_node_key(f->store, sealed_pk) ? sealed_pk : NULL,
  };
  if (lk_node_keys_open(&cfg, &n->keys, &err) != LK_OK ||
      lk_audit_key_new(&n->audit, &err) != LK_OK) {
    fail_msg("node key: %s", err.msg);
  }
  lk_node_keys_presented(n->keys, n->pk);
}

static void node_open(fx *f, node *n, const char *name) {
  node_open_rotating(f, n, name, 0);
}

static void node_close(node *n) {
  lk_audit_key_destroy(n->audit);
  lk_node_keys_destroy(n->keys);
}

/* Replaces f's applier with one presenting n's key that accepts audit
 * keys (as lk_replica_start sets it up). */
static void use_node(fx *f, node *n) {
  lk_err err;
  lk_replica_applier_destroy(f->a);
  f->a = NULL;
  if (lk_replica_applier_new(f->store, n->pk, &f->a, &err) != LK_OK ||
      lk_replica_applier_use_audit(f->a, n->keys, n->audit, &err) != LK_OK) {
    fail_msg("applier: %s", err.msg);
  }
}

/* The audit key as a control plane sends it: sealed to pk. */
typedef struct {
  Latchkey__V1__SealedValue sv;
  unsigned char eph[32];
  unsigned char nonce[24];
  unsigned char *ct;
} sealed_audit;

static void seal_audit(sealed_audit *s, const unsigned char pk[32],
                       const char *cred_id) {
  size_t ct_len = 0;
  lk_err err;
  latchkey__v1__sealed_value__init(&s->sv);
  assert_int_equal(lk_seal_for_node(pk, cred_id, LK_AUDIT_SEAL_FIELD,
                                    audit_bytes, sizeof(audit_bytes), s->eph,
                                    s->nonce, &s->ct, &ct_len, &err),
                   LK_OK);
  s->sv.ephemeral_public_key.data = s->eph;
  s->sv.ephemeral_public_key.len = sizeof(s->eph);
  s->sv.nonce.data = s->nonce;
  s->sv.nonce.len = sizeof(s->nonce);
  s->sv.ciphertext.data = s->ct;
  s->sv.ciphertext.len = ct_len;
}

/* Asserts that n's holder hashes with audit_bytes. */
static void assert_holder_has_the_key(node *n) {
  char got[LK_AUDIT_HEX_BYTES];
  char want[LK_AUDIT_HEX_BYTES];
  lk_err err;
  assert_int_equal(lk_audit_key_hash(n->audit, "sk-x", 4, got, &err), LK_OK);
  lk_audit_hash(audit_bytes, "sk-x", 4, want);
  assert_string_equal(got, want);
}

static void audit_key_is_stored_with_its_batch_and_handed_over(void **state) {
  fx *f = *state;
  node n;
  sealed_audit s;
  batch x;
  node_open(f, &n, "n1");
  use_node(f, &n);
  assert_false(lk_audit_key_ready(n.audit));
  seal_audit(&s, n.pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 5);
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_ack(f, &x, 5);
  assert_true(has_key(f, "tool/weather"));
  assert_true(has_key(f, LK_REPLICA_AUDIT_KEY_KEY));
  assert_holder_has_the_key(&n);

  /* What is stored is the sealed value, never the key itself. */
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  assert_int_equal(
      lk_store_get(f->store, LK_REPLICA_AUDIT_KEY_KEY, &val, &len, &err),
      LK_OK);
  assert_null(memmem(val, len, audit_bytes, sizeof(audit_bytes)));
  Latchkey__V1__SealedValue *got =
      latchkey__v1__sealed_value__unpack(NULL, len, val);
  assert_non_null(got);
  assert_memory_equal(got->ciphertext.data, s.ct, s.sv.ciphertext.len);
  latchkey__v1__sealed_value__free_unpacked(got, NULL);
  lk_store_value_free(val, len);

  /* A restarted replica loads it before any stream. */
  node_close(&n);
  node_open(f, &n, "n1");
  use_node(f, &n);
  assert_holder_has_the_key(&n);
  free(s.ct);
  node_close(&n);
}

static void audit_key_on_a_heartbeat_or_resent_batch_is_stored_alone(
    void **state) {
  fx *f = *state;
  node n;
  sealed_audit s;
  batch x;
  node_open(f, &n, "n2");
  use_node(f, &n);
  seal_audit(&s, n.pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 3);
  x.b.heartbeat = 1;
  x.b.audit_key = &s.sv;
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  assert_true(has_key(f, LK_REPLICA_AUDIT_KEY_KEY));
  assert_false(has_key(f, LK_REPLICA_REVISION_KEY));
  assert_int_equal(lk_replica_applier_revision(f->a), 0);
  assert_holder_has_the_key(&n);
  free(s.ct);
  node_close(&n);
}

static void audit_key_with_a_snapshot_is_stored_at_its_end(void **state) {
  fx *f = *state;
  node n;
  sealed_audit s;
  batch x;
  node_open(f, &n, "n3");
  use_node(f, &n);
  seal_audit(&s, n.pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 9);
  x.b.snapshot_begin = 1;
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  assert_false(has_key(f, LK_REPLICA_AUDIT_KEY_KEY));
  assert_false(lk_audit_key_ready(n.audit));
  batch_init(&x, 9);
  x.b.snapshot_end = 1;
  put_budget(&x);
  expect_ack(f, &x, 9);
  assert_true(has_key(f, LK_REPLICA_AUDIT_KEY_KEY));
  assert_true(has_key(f, "budget/main"));
  assert_holder_has_the_key(&n);
  free(s.ct);
  node_close(&n);
}

static void bad_audit_keys_are_nacked_and_nothing_applies(void **state) {
  fx *f = *state;
  node n;
  node other;
  sealed_audit s;
  batch x;
  node_open(f, &n, "n4");
  node_open(f, &other, "other");
  use_node(f, &n);

  /* Sealed to another node. */
  seal_audit(&s, other.pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 4);
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_nack(f, &x, LK_FAILED_PRECONDITION, "does not open");
  free(s.ct);
  /* Sealed to this node, but as a credential's value. */
  seal_audit(&s, n.pk, "cred_1");
  batch_init(&x, 4);
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_nack(f, &x, LK_FAILED_PRECONDITION, "does not open");
  /* Cut short. */
  s.sv.ciphertext.len -= 1;
  batch_init(&x, 4);
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_nack(f, &x, LK_INVALID_ARGUMENT, "not a 32-byte key sealed");
  free(s.ct);
  assert_false(has_key(f, "tool/weather"));
  assert_false(has_key(f, LK_REPLICA_AUDIT_KEY_KEY));
  assert_false(lk_audit_key_ready(n.audit));

  /* An applier given no node keys cannot open one. */
  lk_err err;
  lk_replica_applier_destroy(f->a);
  f->a = NULL;
  assert_int_equal(lk_replica_applier_new(f->store, n.pk, &f->a, &err), LK_OK);
  seal_audit(&s, n.pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 4);
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_nack(f, &x, LK_FAILED_PRECONDITION, "no node key");
  assert_false(has_key(f, "tool/weather"));
  free(s.ct);
  node_close(&other);
  node_close(&n);
}

static void stored_audit_key_of_another_node_key_is_ignored(void **state) {
  fx *f = *state;
  node n;
  node other;
  sealed_audit s;
  batch x;
  node_open(f, &n, "n5");
  node_open(f, &other, "n5-new");
  use_node(f, &n);
  seal_audit(&s, n.pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 2);
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_ack(f, &x, 2);
  /* The node key file was replaced: the stored key no longer opens. */
  use_node(f, &other);
  assert_false(lk_audit_key_ready(other.audit));
  free(s.ct);
  node_close(&other);
  node_close(&n);
}

/* ---- audit keys across a node key rotation ----------------------------- */

/* Returns 1 when meta/audit_key opens, with the held key whose public key
 * is pk and no other, to audit_bytes; 0 when it does not open; fails the
 * test when there is none. */
static int stored_audit_opens_with(fx *f, node *n, const unsigned char pk[32]) {
  unsigned char *val = NULL;
  size_t len = 0;
  lk_err err;
  lk_secret *pt = NULL;
  assert_int_equal(
      lk_store_get(f->store, LK_REPLICA_AUDIT_KEY_KEY, &val, &len, &err),
      LK_OK);
  Latchkey__V1__SealedValue *sv =
      latchkey__v1__sealed_value__unpack(NULL, len, val);
  assert_non_null(sv);
  lk_status st = lk_node_keys_unseal_from_key(
      n->keys, pk, LK_AUDIT_SEAL_ID, LK_AUDIT_SEAL_FIELD,
      sv->ephemeral_public_key.data, sv->ephemeral_public_key.len,
      sv->nonce.data, sv->nonce.len, sv->ciphertext.data, sv->ciphertext.len,
      &pt, &err);
  if (st == LK_OK) {
    assert_int_equal(lk_secret_len(pt), sizeof(audit_bytes));
    assert_memory_equal(lk_secret_data(pt), audit_bytes, sizeof(audit_bytes));
  }
  lk_secret_free(pt);
  latchkey__v1__sealed_value__free_unpacked(sv, NULL);
  lk_store_value_free(val, len);
  return st == LK_OK;
}

static void assert_stored_node_key(fx *f, const unsigned char pk[32]) {
  unsigned char stored[32];
  assert_true(lk_replica_stored_node_key(f->store, stored));
  assert_memory_equal(stored, pk, 32);
}

/* Brings n's replica to revision 4 with the audit key sealed to its key,
 * then starts a rotation (SIGHUP) and has the applier present the next
 * key as the next stream does; returns both public keys. */
static void rotate_after_revision_4(fx *f, node *n, unsigned char old_pk[32],
                                    unsigned char next_pk[32]) {
  sealed_audit s;
  batch x;
  lk_err err;
  use_node(f, n);
  memcpy(old_pk, n->pk, 32);
  seal_audit(&s, old_pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 4);
  put_tool(&x, "weather");
  x.b.audit_key = &s.sv;
  expect_ack(f, &x, 4);
  free(s.ct);
  assert_true(stored_audit_opens_with(f, n, old_pk));
  assert_int_equal(lk_node_keys_rotate(n->keys, &err), LK_OK);
  lk_node_keys_presented(n->keys, next_pk);
  assert_memory_not_equal(next_pk, old_pk, 32);
  lk_replica_applier_reset(f->a);
  assert_int_equal(lk_replica_applier_set_node_key(f->a, next_pk, &err), LK_OK);
  memcpy(n->pk, next_pk, 32);
  assert_int_equal(lk_replica_applier_revision(f->a), 0);
}

static void rotation_audit_key_lands_sealed_to_the_next_key_with_the_snapshot(
    void **state) {
  fx *f = *state;
  node n;
  sealed_audit to_old, to_next;
  batch x;
  unsigned char old_pk[32], next_pk[32];
  node_open(f, &n, "rot1");
  rotate_after_revision_4(f, &n, old_pk, next_pk);
  seal_audit(&to_old, old_pk, LK_AUDIT_SEAL_ID);
  seal_audit(&to_next, next_pk, LK_AUDIT_SEAL_ID);

  /* The new stream must bring it sealed to the key it presented: one
   * sealed to the old key (which this sidecar still holds) is refused. */
  batch_init(&x, 6);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_tool(&x, "weather");
  x.b.audit_key = &to_old.sv;
  expect_nack(f, &x, LK_FAILED_PRECONDITION,
              "does not open with the node key this replica presents");
  assert_stored_node_key(f, old_pk);
  assert_true(stored_audit_opens_with(f, &n, old_pk));

  /* Sealed to the next key on the snapshot's first part: nothing is
   * written until the snapshot's end, and then the audit key, the
   * records and meta/node_public_key move together. */
  batch_init(&x, 6);
  x.b.snapshot_begin = 1;
  put_tool(&x, "weather");
  x.b.audit_key = &to_next.sv;
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  assert_stored_node_key(f, old_pk);
  assert_true(stored_audit_opens_with(f, &n, old_pk));
  assert_false(stored_audit_opens_with(f, &n, next_pk));
  batch_init(&x, 6);
  x.b.snapshot_end = 1;
  put_budget(&x);
  expect_ack(f, &x, 6);
  assert_stored_node_key(f, next_pk);
  assert_true(has_key(f, "budget/main"));
  assert_true(stored_audit_opens_with(f, &n, next_pk));
  assert_false(stored_audit_opens_with(f, &n, old_pk));
  assert_true(lk_replica_applier_sealed_to_node_key(f->a));
  assert_holder_has_the_key(&n);

  /* The rotation finishes (old key wiped): the stored key still opens. */
  lk_node_keys_replica_sealed(n.keys, next_pk);
  assert_false(lk_node_keys_rotating(n.keys));
  assert_true(stored_audit_opens_with(f, &n, next_pk));
  free(to_old.ct);
  free(to_next.ct);
  node_close(&n);
}

static void rotation_heartbeats_audit_key_waits_for_the_snapshot(void **state) {
  fx *f = *state;
  node n;
  sealed_audit to_next;
  batch x;
  unsigned char old_pk[32], next_pk[32];
  node_open(f, &n, "rot2");
  rotate_after_revision_4(f, &n, old_pk, next_pk);
  seal_audit(&to_next, next_pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 4);
  x.b.heartbeat = 1;
  x.b.audit_key = &to_next.sv;
  expect_reply(f, &x, LK_REPLICA_REPLY_NONE);
  /* Not stored alone over a store still sealed to the old key. */
  assert_stored_node_key(f, old_pk);
  assert_true(stored_audit_opens_with(f, &n, old_pk));
  batch_init(&x, 6);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_tool(&x, "weather");
  expect_ack(f, &x, 6);
  assert_stored_node_key(f, next_pk);
  assert_true(stored_audit_opens_with(f, &n, next_pk));
  assert_holder_has_the_key(&n);
  free(to_next.ct);
  node_close(&n);
}

static void rotation_snapshot_without_audit_key_drops_the_stale_one(
    void **state) {
  fx *f = *state;
  node n;
  batch x;
  unsigned char old_pk[32], next_pk[32];
  node_open(f, &n, "rot3");
  rotate_after_revision_4(f, &n, old_pk, next_pk);
  batch_init(&x, 6);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_tool(&x, "weather");
  expect_ack(f, &x, 6);
  assert_stored_node_key(f, next_pk);
  /* Sealed to a key about to be wiped: gone with the snapshot. The key
   * already in memory keeps hashing until the next stream brings it. */
  assert_false(has_key(f, LK_REPLICA_AUDIT_KEY_KEY));
  assert_holder_has_the_key(&n);
  node_close(&n);
}

static void restart_at_any_step_of_a_rotation_opens_the_stored_audit_key(
    void **state) {
  fx *f = *state;
  node n;
  sealed_audit to_next;
  batch x;
  unsigned char old_pk[32], next_pk[32], file_pk[32];
  char next_path[1300];
  struct stat sb;
  node_open(f, &n, "rot4");
  snprintf(next_path, sizeof(next_path), "%s%s", n.path,
           LK_NODE_KEYS_NEXT_SUFFIX);
  rotate_after_revision_4(f, &n, old_pk, next_pk);

  /* Killed before the snapshot: meta/node_public_key names the old key,
   * the key file still holds it, the next key is presented. */
  node_close(&n);
  node_open(f, &n, "rot4");
  assert_true(lk_node_keys_rotating(n.keys));
  assert_memory_equal(n.pk, next_pk, 32);
  use_node(f, &n);
  assert_int_equal(lk_replica_applier_revision(f->a), 0);
  assert_holder_has_the_key(&n);

  /* The snapshot sealed to the next key lands, and the sidecar is killed
   * before it renames the key file. */
  seal_audit(&to_next, next_pk, LK_AUDIT_SEAL_ID);
  batch_init(&x, 6);
  x.b.snapshot_begin = 1;
  x.b.snapshot_end = 1;
  put_tool(&x, "weather");
  x.b.audit_key = &to_next.sv;
  expect_ack(f, &x, 6);
  assert_int_equal(stat(next_path, &sb), 0);
  node_close(&n);
  node_open(f, &n, "rot4"); /* finishes the rotation at open */
  assert_false(lk_node_keys_rotating(n.keys));
  assert_int_equal(stat(next_path, &sb), -1);
  assert_memory_equal(n.pk, next_pk, 32);
  use_node(f, &n);
  assert_int_equal(lk_replica_applier_revision(f->a), 6);
  assert_holder_has_the_key(&n);

  /* Restarted again, the old key long gone from disk and memory. */
  node_close(&n);
  node_open(f, &n, "rot4");
  lk_node_keys_presented(n.keys, file_pk);
  assert_memory_equal(file_pk, next_pk, 32);
  use_node(f, &n);
  assert_int_equal(lk_replica_applier_revision(f->a), 6);
  assert_holder_has_the_key(&n);
  free(to_next.ct);
  node_close(&n);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(empty_store_starts_at_revision_zero),
      T(incremental_batch_lands_with_its_revision),
      T(revision_survives_reopening),
      T(resent_revision_is_acked_and_changes_nothing),
      T(deletes_apply_after_puts),
      T(non_catalog_key_is_nacked_and_nothing_applies),
      T(key_with_nul_is_nacked),
      T(garbage_message_is_nacked),
      T(oversized_message_is_nacked),
      T(record_that_does_not_decode_is_nacked),
      T(record_under_another_records_key_is_nacked),
      T(secret_not_sealed_to_a_node_is_nacked),
      T(batch_without_revision_is_nacked),
      T(heartbeat_changes_nothing_and_gets_no_answer),
      T(after_a_nack_batches_are_skipped_until_a_snapshot),
      T(snapshot_in_parts_replaces_the_catalog_at_its_end),
      T(snapshot_at_an_applied_revision_is_acked_unapplied),
      T(new_snapshot_begin_drops_the_one_in_progress),
      T(snapshot_with_deletes_or_no_beginning_is_nacked),
      T(bad_part_drops_the_whole_snapshot),
      T(changed_node_key_restarts_from_revision_zero),
      T(incremental_batch_over_another_node_key_is_nacked),
      T(set_node_key_between_streams_asks_for_a_snapshot),
      T(empty_store_records_no_node_key),
      T(malformed_stored_revision_is_refused),
      T(audit_key_is_stored_with_its_batch_and_handed_over),
      T(audit_key_on_a_heartbeat_or_resent_batch_is_stored_alone),
      T(audit_key_with_a_snapshot_is_stored_at_its_end),
      T(bad_audit_keys_are_nacked_and_nothing_applies),
      T(stored_audit_key_of_another_node_key_is_ignored),
      T(rotation_audit_key_lands_sealed_to_the_next_key_with_the_snapshot),
      T(rotation_heartbeats_audit_key_waits_for_the_snapshot),
      T(rotation_snapshot_without_audit_key_drops_the_stale_one),
      T(restart_at_any_step_of_a_rotation_opens_the_stored_audit_key),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
