/*
 * sync_server.c - Sync/Stream subscribers, scoped diffs and per-node
 * re-sealing (protocol in sync_server.h).
 *
 * State: the server holds the current view (one read of the catalog,
 * shared by reference count) and its revision, the last view loaded from
 * the history source for a resume (and its revision), and a table of
 * subscribers
 * keyed by stream. Each subscriber remembers what it was sent as a sorted
 * map key -> BLAKE2b of the stored record, so a change costs one merge of
 * that map against the subscriber's new scope; only records whose hash
 * moved are re-encoded, re-sealed and sent.
 *
 * Locks, always taken in this order: change_mu (one lk_sync_server_changed
 * at a time) -> a subscriber's mu (its send state: sent map, node key,
 * stream use; held across a whole snapshot or batch so batches never
 * interleave) -> the server's mu (subscriber table, view, revision,
 * published per-subscriber revisions and ACK state, latency statistics).
 * The server's mu is never held while calling out (scope, catalog, seal,
 * sends, user callbacks).
 *
 * The audit key (lib/audit.h) is sealed to the subscriber's node key once,
 * when its hello arrives, and rides on the first batch sent on the stream,
 * whatever that batch is (a snapshot's first part, a resume's heartbeat,
 * a diff); the copy of the key is wiped right after sealing.
 *
 * Invariants: nothing is sent on a stream after lk_rpc_stream_finish
 * (finished flag under the subscriber's mu); plaintext exists only in an
 * lk_secret between lk_keyring_unseal and lk_seal_for_node; encoded
 * batches are wiped before they are freed; a subscriber is freed only
 * when the table and every in-flight operation have let go of it.
 */
#include "controlplane/sync_server.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/scope.h"
#include "latchkey/v1/sync.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/audit.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "lib/oauth.h"
#include "lib/seal.h"
#include "lib/secret.h"

#define SUB_BUCKETS 1024
/* Changes awaiting their last ACK; older ones are dropped unsampled. */
#define MAX_PENDING 1024
/* Room for a SyncBatch's own fields (revision, flags) in size estimates. */
#define BATCH_OVERHEAD 64

/* What a subscriber was last sent for one key. */
typedef struct {
  char *key;
  unsigned char hash[LK_SCOPE_HASH_BYTES];
} sent_entry;

typedef struct sub {
  struct sub *hnext; /* table chain (server mu) */
  lk_rpc_stream *stream;
  uint64_t peer;
  int refs; /* server mu */

  /* Server mu (hello also under the subscriber's mu). */
  int hello;
  char agent[LK_CATALOG_ID_MAX + 1];
  int64_t published_rev; /* last revision sent, 0 = none (synced when > 0) */
  int64_t applied;
  int64_t last_ack_ms; /* -1 = never */

  /* The subscriber's mu. */
  pthread_mutex_t mu;
  unsigned char pk[LK_SEAL_PUBLIC_KEY_BYTES];
  int64_t have_rev; /* from the hello */
  int finished;     /* lk_rpc_stream_finish called */
  int need_snapshot;
  int64_t snapshot_rev; /* revision of the last snapshot sent */
  int64_t sent_rev;
  sent_entry *sent;
  size_t n_sent;
  /* The audit key sealed to pk, until the first batch carries it. */
  int audit_pending;
  unsigned char audit_eph[LK_SEAL_PUBLIC_KEY_BYTES];
  unsigned char audit_nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *audit_ct;
  size_t audit_ct_len;
} sub;

/* The node key an agent's last stream presented (server mu). A
 * direct-mapped cache: an agent whose slot another took is forgotten,
 * which costs only the log line and the forced snapshot below. */
#define KNOWN_KEYS 4096
typedef struct {
  char agent[LK_CATALOG_ID_MAX + 1]; /* "" = empty slot */
  unsigned char pk[LK_SEAL_PUBLIC_KEY_BYTES];
} known_key;

/* A view shared by reference count (server mu). */
typedef struct {
  lk_scope_view *v;
  int refs;
} view_ref;

typedef struct {
  int64_t rev;
  int64_t t0_us;
} pending;

struct lk_sync_server {
  lk_catalog *cat;
  lk_keyring *kr; /* shared; reloaded in place (lib/keyring.h) */
  const lk_token *token;

  pthread_mutex_t change_mu;

  pthread_mutex_t mu;
  sub *table[SUB_BUCKETS];
  size_t n_subs;
  uint64_t next_peer;
  view_ref *view;
  int64_t revision;
  lk_sync_history_fn hist_load;
  lk_sync_history_free_fn hist_free;
  void *hist_ctx;
  view_ref *hist;   /* the last view loaded from history, or NULL */
  int64_t hist_rev; /* its revision */
  pending pend[MAX_PENDING];
  size_t pend_head, n_pend;
  known_key known[KNOWN_KEYS];
  lk_sync_ack_latency lat;
  /* Metrics (lk_sync_server_use_metrics; NULL without). The _fn families
   * are detached first thing in lk_sync_server_destroy. */
  lk_metric *m_acked; /* write-to-all-ACKed histogram */
  lk_metric *m_nacks; /* NACKs received */
  lk_metric *m_fn[4]; /* revision, replicas, ack lag, ack age */

  pthread_mutex_t timer_mu;
  pthread_cond_t timer_cv;
  int timer_stop;
  int timer_started;
  pthread_t timer;
};

static const int64_t k_bounds_ms[LK_SYNC_LATENCY_BUCKETS] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, INT64_MAX};

int64_t lk_sync_latency_bound_ms(size_t i) {
  return i < LK_SYNC_LATENCY_BUCKETS ? k_bounds_ms[i] : INT64_MAX;
}

/* ---- subscribers and views ------------------------------------------- */

static size_t bucket_of(const lk_rpc_stream *st) {
  uintptr_t p = (uintptr_t)st;
  return (size_t)((p >> 4) ^ (p >> 14)) % SUB_BUCKETS;
}

/* Returns the subscriber of st with a reference taken, or NULL. */
static sub *sub_get(lk_sync_server *s, const lk_rpc_stream *st) {
  pthread_mutex_lock(&s->mu);
  sub *u = s->table[bucket_of(st)];
  while (u != NULL && u->stream != st) {
    u = u->hnext;
  }
  if (u != NULL) {
    u->refs++;
  }
  pthread_mutex_unlock(&s->mu);
  return u;
}

static void sent_free(sent_entry *e, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(e[i].key);
  }
  free(e);
}

static void sub_free(sub *u) {
  sent_free(u->sent, u->n_sent);
  free(u->audit_ct); /* sealed: not secret */
  pthread_mutex_destroy(&u->mu);
  free(u);
}

static void sub_put(lk_sync_server *s, sub *u) {
  pthread_mutex_lock(&s->mu);
  int last = --u->refs == 0;
  pthread_mutex_unlock(&s->mu);
  if (last) {
    sub_free(u);
  }
}

/* Returns every subscriber with a reference taken (*n of them), or NULL
 * (with *n 0) when there are none or memory runs out (logged). */
static sub **sub_collect(lk_sync_server *s, size_t *n) {
  *n = 0;
  pthread_mutex_lock(&s->mu);
  sub **all = s->n_subs > 0 ? malloc(s->n_subs * sizeof(*all)) : NULL;
  if (all != NULL) {
    for (size_t b = 0; b < SUB_BUCKETS; b++) {
      for (sub *u = s->table[b]; u != NULL; u = u->hnext) {
        u->refs++;
        all[(*n)++] = u;
      }
    }
  } else if (s->n_subs > 0) {
    lk_log(LK_LOG_ERROR, "sync_oom", "out of memory listing %zu subscribers",
           s->n_subs);
  }
  pthread_mutex_unlock(&s->mu);
  return all;
}

static void sub_release_all(lk_sync_server *s, sub **all, size_t n) {
  for (size_t i = 0; i < n; i++) {
    sub_put(s, all[i]);
  }
  free(all);
}

/* Returns the current view (referenced, may be NULL) and revision. */
static view_ref *view_get(lk_sync_server *s, int64_t *rev) {
  pthread_mutex_lock(&s->mu);
  view_ref *v = s->view;
  if (v != NULL) {
    v->refs++;
  }
  *rev = s->revision;
  pthread_mutex_unlock(&s->mu);
  return v;
}

static void view_put(lk_sync_server *s, view_ref *v) {
  if (v == NULL) {
    return;
  }
  pthread_mutex_lock(&s->mu);
  int last = --v->refs == 0;
  pthread_mutex_unlock(&s->mu);
  if (last) {
    lk_scope_view_destroy(v->v);
    free(v);
  }
}

/* ---- change-to-ACK latency (server mu held) -------------------------- */

static void latency_record(lk_sync_server *s, int64_t us) {
  size_t b = 0;
  while (b + 1 < LK_SYNC_LATENCY_BUCKETS && us > k_bounds_ms[b] * 1000) {
    b++;
  }
  s->lat.buckets[b]++;
  s->lat.count++;
  s->lat.last_us = us;
  lk_metric_observe(s->m_acked, NULL, (double)us / 1e6);
}

/* Completes every pending change that all synced subscribers have ACKed;
 * with no synced subscriber left, pending changes are dropped unsampled. */
static void latency_check_locked(lk_sync_server *s) {
  if (s->n_pend == 0) {
    return;
  }
  int any = 0;
  int64_t min_applied = INT64_MAX;
  for (size_t b = 0; b < SUB_BUCKETS; b++) {
    for (sub *u = s->table[b]; u != NULL; u = u->hnext) {
      if (u->hello && u->published_rev > 0) {
        any = 1;
        if (u->applied < min_applied) {
          min_applied = u->applied;
        }
      }
    }
  }
  int64_t now = lk_now_us();
  while (s->n_pend > 0) {
    pending *p = &s->pend[s->pend_head];
    if (any && p->rev > min_applied) {
      break;
    }
    if (any) {
      latency_record(s, now - p->t0_us);
    }
    s->pend_head = (s->pend_head + 1) % MAX_PENDING;
    s->n_pend--;
  }
}

/* ---- batches --------------------------------------------------------- */

static size_t varint_len(size_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

/* Encoded size of a length-delimited field of len bytes (one-byte tag). */
static size_t field_len(size_t len) {
  return 1 + varint_len(len) + len;
}

/* One SyncBatch being built. Values of re-sealed credentials are owned. */
typedef struct {
  Latchkey__V1__SyncRecord *recs;
  unsigned char **owned; /* per record: malloc'd value to wipe, or NULL */
  size_t n, cap;
  char **dels;
  size_t n_dels, cap_dels;
  size_t bytes; /* encoded size estimate, BATCH_OVERHEAD included */
} batch;

static void batch_init(batch *b) {
  memset(b, 0, sizeof(*b));
  b->bytes = BATCH_OVERHEAD;
}

/* Empties b (wiping owned values) for reuse. */
static void batch_clear(batch *b) {
  for (size_t i = 0; i < b->n; i++) {
    if (b->owned[i] != NULL) {
      lk_wipe_free(b->owned[i], b->recs[i].value.len);
    }
  }
  b->n = 0;
  b->n_dels = 0;
  b->bytes = BATCH_OVERHEAD;
}

static void batch_free(batch *b) {
  batch_clear(b);
  free(b->recs);
  free(b->owned);
  free(b->dels);
}

/* Grows an array at *arr (elements of elem bytes) to hold one more; the
 * message cap bounds every batch, so no element cap is needed here. */
static int grow(void *arr, size_t n, size_t *cap, size_t elem) {
  if (n < *cap) {
    return 0;
  }
  unsigned char *a;
  memcpy(&a, arr, sizeof(a));
  size_t nc = *cap ? *cap * 2 : 64;
  unsigned char *p = realloc(a, nc * elem);
  if (p == NULL) {
    return -1;
  }
  memcpy(arr, &p, sizeof(p));
  *cap = nc;
  return 0;
}

/* Size a put of (key, len) adds to a batch. */
static size_t put_size(const char *key, size_t len) {
  return field_len(field_len(strlen(key)) + field_len(len));
}

/* Adds a put; takes owned (wiped and freed with the batch) even on error. */
static lk_status batch_put(batch *b, const char *key, const unsigned char *val,
                           size_t len, unsigned char *owned, lk_err *err) {
  size_t cap = b->cap;
  if (grow(&b->recs, b->n, &cap, sizeof(*b->recs)) != 0 ||
      grow(&b->owned, b->n, &b->cap, sizeof(*b->owned)) != 0) {
    if (owned != NULL) {
      lk_wipe_free(owned, len);
    }
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory building a sync batch");
  }
  Latchkey__V1__SyncRecord *r = &b->recs[b->n];
  latchkey__v1__sync_record__init(r);
  r->key = (char *)key;
  r->value.data = (unsigned char *)val;
  r->value.len = len;
  b->owned[b->n] = owned;
  b->n++;
  b->bytes += put_size(key, len);
  return LK_OK;
}

static lk_status batch_delete(batch *b, const char *key, lk_err *err) {
  if (grow(&b->dels, b->n_dels, &b->cap_dels, sizeof(*b->dels)) != 0) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory building a sync batch");
  }
  b->dels[b->n_dels++] = (char *)key;
  b->bytes += field_len(strlen(key));
  return LK_OK;
}

/* Encodes b with the given header (and the audit key, on the stream's
 * first batch) and queues it on u's stream. */
static lk_status batch_send(sub *u, batch *b, int64_t rev, int begin, int end,
                            int heartbeat, lk_err *err) {
  Latchkey__V1__SyncBatch m = LATCHKEY__V1__SYNC_BATCH__INIT;
  Latchkey__V1__SealedValue audit = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__SyncRecord **puts = NULL;
  unsigned char *buf = NULL;
  size_t len = 0;
  lk_status st = LK_OK;

  if (b != NULL && b->n > 0) {
    puts = malloc(b->n * sizeof(*puts));
    if (puts == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory sending a sync batch");
      goto done;
    }
    for (size_t i = 0; i < b->n; i++) {
      puts[i] = &b->recs[i];
    }
    m.puts = puts;
    m.n_puts = b->n;
  }
  if (b != NULL) {
    m.deletes = b->dels;
    m.n_deletes = b->n_dels;
  }
  m.revision = rev;
  m.snapshot_begin = begin;
  m.snapshot_end = end;
  m.heartbeat = heartbeat;
  if (u->audit_pending) {
    audit.ephemeral_public_key.data = u->audit_eph;
    audit.ephemeral_public_key.len = sizeof(u->audit_eph);
    audit.nonce.data = u->audit_nonce;
    audit.nonce.len = sizeof(u->audit_nonce);
    audit.ciphertext.data = u->audit_ct;
    audit.ciphertext.len = u->audit_ct_len;
    m.audit_key = &audit;
  }
  len = latchkey__v1__sync_batch__get_packed_size(&m);
  buf = malloc(len > 0 ? len : 1);
  if (buf == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of memory sending a sync batch");
    goto done;
  }
  len = latchkey__v1__sync_batch__pack(&m, buf);
  st = lk_rpc_stream_send(u->stream, buf, len, err);
  if (st == LK_OK && u->audit_pending) {
    u->audit_pending = 0;
    free(u->audit_ct);
    u->audit_ct = NULL;
  }
done:
  if (buf != NULL) {
    lk_wipe_free(buf, len);
  }
  free(puts);
  return st;
}

/* ---- per-node re-sealing --------------------------------------------- */

/* One secret field sealed to the node. */
typedef struct {
  Latchkey__V1__SealedValue sv;
  Latchkey__V1__SealedValue *orig;
  unsigned char eph[LK_SEAL_PUBLIC_KEY_BYTES];
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
  size_t ct_len;
} node_seal;

/* Returns 1 when field f of credential c never goes to a replica: an
 * OAuth credential's refresh token and client secret are only ever sent
 * to the token endpoint, by the control plane (controlplane/oauth_refresh),
 * so a compromised pod holding its replica cannot mint tokens or break
 * the refresh chain by rotating the refresh token. */
static int withheld_from_replicas(const Latchkey__V1__Credential *c,
                                  const Latchkey__V1__FieldValue *f) {
  return lk_oauth_credential_is_oauth2(c) && f->name != NULL &&
         (strcmp(f->name, LK_OAUTH_REFRESH_TOKEN) == 0 ||
          strcmp(f->name, LK_OAUTH_CLIENT_SECRET) == 0);
}

/* Re-encodes the stored credential r with every secret field re-sealed
 * from the key ring to node key pk, leaving out the fields
 * withheld_from_replicas names; *out is malloc'd (wipe it). */
static lk_status reseal(lk_keyring *kr, const unsigned char *pk,
                        const lk_scope_record *r, unsigned char **out,
                        size_t *out_len, lk_err *err) {
  lk_status st = LK_OK;
  node_seal *ns = NULL;
  size_t n = 0;
  unsigned char *buf = NULL;
  Latchkey__V1__FieldValue **all = NULL; /* c->fields while packing */
  Latchkey__V1__Credential *c =
      latchkey__v1__credential__unpack(NULL, r->len, r->value);

  if (c == NULL) {
    return lk_fail(err, LK_INTERNAL, "stored record %s does not decode",
                   r->key);
  }
  n = c->n_fields;
  ns = calloc(n > 0 ? n : 1, sizeof(*ns));
  if (ns == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory re-sealing %s",
                 r->key);
    goto done;
  }
  /* Every field's stored value, before any may be replaced: the cleanup
   * puts them all back, whichever field failed. */
  for (size_t i = 0; i < n; i++) {
    ns[i].orig = c->fields[i]->sealed;
  }
  for (size_t i = 0; i < n; i++) {
    Latchkey__V1__FieldValue *f = c->fields[i];
    if (!f->secret || withheld_from_replicas(c, f)) {
      continue;
    }
    if (f->value != NULL && f->value[0] != '\0') {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential %s field %s is secret but stored unsealed; "
                   "re-enter the credential",
                   c->id, f->name);
      goto done;
    }
    if (f->sealed == NULL || f->sealed->ciphertext.len == 0) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential %s field %s has no sealed value; re-enter "
                   "the credential",
                   c->id, f->name);
      goto done;
    }
    lk_secret *pt = NULL;
    if (!lk_keyring_has_key(kr, f->sealed->key_id)) {
      /* Sealed under a key another control plane added to the shared key
       * ring file since this one last read it. */
      lk_err rerr;
      if (lk_keyring_refresh(kr, NULL, &rerr) != LK_OK) {
        lk_log(LK_LOG_WARN, "keys.reload_failed", "%s", rerr.msg);
      }
    }
    st = lk_keyring_unseal(kr, f->sealed->key_id, c->id, f->name,
                           f->sealed->nonce.data, f->sealed->nonce.len,
                           f->sealed->ciphertext.data,
                           f->sealed->ciphertext.len, &pt, err);
    if (st != LK_OK) {
      goto done;
    }
    st = lk_seal_for_node(pk, c->id, f->name, lk_secret_data(pt),
                          lk_secret_len(pt), ns[i].eph, ns[i].nonce, &ns[i].ct,
                          &ns[i].ct_len, err);
    lk_secret_free(pt); /* last use of the plaintext */
    if (st != LK_OK) {
      goto done;
    }
    latchkey__v1__sealed_value__init(&ns[i].sv);
    ns[i].sv.nonce.data = ns[i].nonce;
    ns[i].sv.nonce.len = sizeof(ns[i].nonce);
    ns[i].sv.ciphertext.data = ns[i].ct;
    ns[i].sv.ciphertext.len = ns[i].ct_len;
    ns[i].sv.ephemeral_public_key.data = ns[i].eph;
    ns[i].sv.ephemeral_public_key.len = sizeof(ns[i].eph);
    f->sealed = &ns[i].sv;
  }
  /* Pack only the fields a replica may hold; the cleanup puts the full
   * array back so free_unpacked frees every field. */
  Latchkey__V1__FieldValue **kept = calloc(n > 0 ? n : 1, sizeof(*kept));
  if (kept == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory re-sealing %s",
                 r->key);
    goto done;
  }
  size_t n_kept = 0;
  for (size_t i = 0; i < n; i++) {
    if (!withheld_from_replicas(c, c->fields[i])) {
      kept[n_kept++] = c->fields[i];
    }
  }
  all = c->fields;
  c->fields = kept;
  c->n_fields = n_kept;
  size_t len = latchkey__v1__credential__get_packed_size(c);
  buf = malloc(len > 0 ? len : 1);
  if (buf == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory re-sealing %s",
                 r->key);
    goto done;
  }
  *out_len = latchkey__v1__credential__pack(c, buf);
  *out = buf;
done:
  if (all != NULL) {
    free(c->fields);
    c->fields = all;
    c->n_fields = n;
  }
  for (size_t i = 0; ns != NULL && i < n; i++) {
    c->fields[i]->sealed = ns[i].orig;
    free(ns[i].ct);
  }
  free(ns);
  latchkey__v1__credential__free_unpacked(c, NULL);
  return st;
}

/* The value to ship for r to u: the stored encoding, or for a credential
 * a re-sealed copy in *owned. Errors of reseal (the caller decides what
 * a record that cannot be shipped means). */
static lk_status ship_value(lk_sync_server *s, sub *u, const lk_scope_record *r,
                            const unsigned char **val, size_t *len,
                            unsigned char **owned, lk_err *err) {
  *owned = NULL;
  if (strncmp(r->key, "cred/", 5) != 0) {
    *val = r->value;
    *len = r->len;
    return LK_OK;
  }
  lk_status st = reseal(s->kr, u->pk, r, owned, len, err);
  if (st != LK_OK) {
    return st;
  }
  *val = *owned;
  return LK_OK;
}

/* ---- snapshots and differences (subscriber mu held) ----------------- */

static void publish(lk_sync_server *s, sub *u, int64_t rev) {
  pthread_mutex_lock(&s->mu);
  u->published_rev = rev;
  pthread_mutex_unlock(&s->mu);
}

/* Appends (key, hash) to map at *n (sized by the caller). */
static lk_status sent_add(sent_entry *map, size_t *n, const char *key,
                          const unsigned char *hash, lk_err *err) {
  map[*n].key = strdup(key);
  if (map[*n].key == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory tracking what a replica holds");
  }
  memcpy(map[*n].hash, hash, LK_SCOPE_HASH_BYTES);
  (*n)++;
  return LK_OK;
}

/* Builds a sent map (*out, *n_out) holding every record of scope sc. */
static lk_status sent_from_scope(const lk_scope *sc, sent_entry **out,
                                 size_t *n_out, lk_err *err) {
  size_t n = lk_scope_count(sc), n_new = 0;
  sent_entry *fresh = calloc(n > 0 ? n : 1, sizeof(*fresh));
  *out = NULL;
  *n_out = 0;
  if (fresh == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory tracking what a replica holds");
  }
  for (size_t i = 0; i < n; i++) {
    lk_scope_record r;
    lk_scope_at(sc, i, &r);
    if (sent_add(fresh, &n_new, r.key, r.hash, err) != LK_OK) {
      sent_free(fresh, n_new);
      return LK_RESOURCE_EXHAUSTED;
    }
  }
  *out = fresh;
  *n_out = n_new;
  return LK_OK;
}

/* Sends u the whole scope sc at rev, in messages of at most
 * LK_SYNC_MAX_MESSAGE_BYTES, and makes it u's sent map. */
static lk_status send_snapshot(lk_sync_server *s, sub *u, const lk_scope *sc,
                               int64_t rev, lk_err *err) {
  lk_status st = LK_OK;
  batch b;
  size_t n = lk_scope_count(sc), n_new = 0, messages = 0;
  sent_entry *fresh = calloc(n > 0 ? n : 1, sizeof(*fresh));
  int first = 1;

  batch_init(&b);
  if (fresh == NULL) {
    st =
        lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory sending a snapshot");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    lk_scope_record r;
    const unsigned char *val = NULL;
    unsigned char *owned = NULL;
    size_t len = 0;
    lk_scope_at(sc, i, &r);
    lk_err serr;
    if (ship_value(s, u, &r, &val, &len, &owned, &serr) != LK_OK) {
      /* Left out, the record would be deleted from the replica by this
       * snapshot (a mirror lagging a key retirement, say): withhold the
       * whole snapshot instead; the replica keeps what it has and
       * reconnects. */
      lk_log(LK_LOG_ERROR, "sync_reseal_failed",
             "agent %s peer %llu: %s cannot be re-sealed for the replica: %s",
             u->agent, (unsigned long long)u->peer, r.key, serr.msg);
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "the snapshot is withheld: %s cannot be re-sealed for this "
                   "replica (%s); the replica keeps what it has and retries",
                   r.key, serr.msg);
      goto done;
    }
    if (put_size(r.key, len) + BATCH_OVERHEAD > LK_SYNC_MAX_MESSAGE_BYTES) {
      lk_log(LK_LOG_ERROR, "sync_record_too_large",
             "agent %s: %s (%zu bytes) does not fit one %u-byte message and "
             "is left out",
             u->agent, r.key, len, LK_SYNC_MAX_MESSAGE_BYTES);
      if (owned != NULL) {
        lk_wipe_free(owned, len);
      }
      continue;
    }
    if (b.n > 0 && b.bytes + put_size(r.key, len) > LK_SYNC_MAX_MESSAGE_BYTES) {
      st = batch_send(u, &b, rev, first, 0, 0, err);
      if (st != LK_OK) {
        if (owned != NULL) {
          lk_wipe_free(owned, len);
        }
        goto done;
      }
      messages++;
      first = 0;
      batch_clear(&b);
    }
    st = batch_put(&b, r.key, val, len, owned, err);
    if (st != LK_OK) {
      goto done;
    }
    st = sent_add(fresh, &n_new, r.key, r.hash, err);
    if (st != LK_OK) {
      goto done;
    }
  }
  st = batch_send(u, &b, rev, first, 1, 0, err);
  if (st != LK_OK) {
    goto done;
  }
  messages++;
  sent_free(u->sent, u->n_sent);
  u->sent = fresh;
  u->n_sent = n_new;
  fresh = NULL;
  u->sent_rev = rev;
  u->snapshot_rev = rev;
  u->need_snapshot = 0;
  publish(s, u, rev);
  lk_log(LK_LOG_INFO, "sync_snapshot",
         "agent %s peer %llu: snapshot at revision %lld, %zu records in %zu "
         "messages",
         u->agent, (unsigned long long)u->peer, (long long)rev, n_new,
         messages);
done:
  if (fresh != NULL) {
    sent_free(fresh, n_new);
  }
  batch_free(&b);
  return st;
}

/* Sends u one batch at rev with what changed in scope sc since its sent
 * map, or a snapshot when that batch would not fit one message. u's map
 * changes only once the batch is queued. */
static lk_status send_diff(lk_sync_server *s, sub *u, const lk_scope *sc,
                           int64_t rev, lk_err *err) {
  lk_status st = LK_OK;
  batch b;
  size_t n = lk_scope_count(sc), n_new = 0, i = 0, j = 0;
  sent_entry *fresh = calloc(n > 0 ? n : 1, sizeof(*fresh));

  batch_init(&b);
  if (fresh == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory sending a batch");
    goto done;
  }
  while (i < n || j < u->n_sent) {
    lk_scope_record r;
    int c;
    if (i < n) {
      lk_scope_at(sc, i, &r);
    }
    if (i >= n) {
      c = 1;
    } else if (j >= u->n_sent) {
      c = -1;
    } else {
      c = strcmp(r.key, u->sent[j].key);
    }
    if (c > 0) { /* left the scope */
      st = batch_delete(&b, u->sent[j].key, err);
      if (st != LK_OK) {
        goto done;
      }
      j++;
      continue;
    }
    const sent_entry *old = c == 0 ? &u->sent[j] : NULL;
    i++;
    if (old != NULL) {
      j++;
    }
    if (old != NULL && memcmp(old->hash, r.hash, LK_SCOPE_HASH_BYTES) == 0) {
      st = sent_add(fresh, &n_new, old->key, old->hash, err); /* unchanged */
      if (st != LK_OK) {
        goto done;
      }
      continue;
    }
    const unsigned char *val = NULL;
    unsigned char *owned = NULL;
    size_t len = 0;
    lk_err serr;
    int ok = ship_value(s, u, &r, &val, &len, &owned, &serr) == LK_OK;
    if (!ok) {
      lk_log(LK_LOG_ERROR, "sync_reseal_failed",
             "agent %s peer %llu: %s is left out of this batch: %s", u->agent,
             (unsigned long long)u->peer, r.key, serr.msg);
    }
    if (ok &&
        put_size(r.key, len) + BATCH_OVERHEAD > LK_SYNC_MAX_MESSAGE_BYTES) {
      lk_log(LK_LOG_ERROR, "sync_record_too_large",
             "agent %s: %s (%zu bytes) does not fit one %u-byte message and "
             "is left out",
             u->agent, r.key, len, LK_SYNC_MAX_MESSAGE_BYTES);
      if (owned != NULL) {
        lk_wipe_free(owned, len);
      }
      ok = 0;
    }
    if (!ok) {
      /* Not sent: the replica keeps what it had, and the next change
       * retries because the map keeps the old hash (or no entry). */
      if (old != NULL) {
        st = sent_add(fresh, &n_new, old->key, old->hash, err);
      }
    } else {
      st = batch_put(&b, r.key, val, len, owned, err);
      if (st == LK_OK) {
        st = sent_add(fresh, &n_new, r.key, r.hash, err);
      }
    }
    if (st != LK_OK) {
      goto done;
    }
    if (b.bytes > LK_SYNC_MAX_MESSAGE_BYTES) {
      lk_log(LK_LOG_INFO, "sync_diff_too_large",
             "agent %s peer %llu: the change to revision %lld exceeds one "
             "message; sending a snapshot",
             u->agent, (unsigned long long)u->peer, (long long)rev);
      batch_clear(&b);
      st = send_snapshot(s, u, sc, rev, err);
      goto done;
    }
  }
  st = batch_send(u, &b, rev, 0, 0, 0, err);
  if (st != LK_OK) {
    goto done;
  }
  sent_free(u->sent, u->n_sent);
  u->sent = fresh;
  u->n_sent = n_new;
  fresh = NULL;
  u->sent_rev = rev;
  publish(s, u, rev);
done:
  if (fresh != NULL) {
    sent_free(fresh, n_new);
  }
  batch_free(&b);
  return st;
}

/* Makes u's sent map the scope sc at rev without sending records (the
 * replica already holds it) and tells it so with a heartbeat. */
static lk_status resume(lk_sync_server *s, sub *u, const lk_scope *sc,
                        int64_t rev, lk_err *err) {
  sent_entry *fresh = NULL;
  size_t n = 0;
  lk_status st = sent_from_scope(sc, &fresh, &n, err);
  if (st != LK_OK) {
    return st;
  }
  st = batch_send(u, NULL, rev, 0, 0, 1, err);
  if (st != LK_OK) {
    sent_free(fresh, n);
    return st;
  }
  sent_free(u->sent, u->n_sent);
  u->sent = fresh;
  u->n_sent = n;
  u->sent_rev = rev;
  u->need_snapshot = 0;
  publish(s, u, rev);
  lk_log(LK_LOG_INFO, "sync_resume",
         "agent %s peer %llu: resumed at revision %lld without a snapshot",
         u->agent, (unsigned long long)u->peer, (long long)rev);
  return LK_OK;
}

/* Returns the view of the catalog at rev (referenced), from the cache or
 * the history source, or NULL (logged) when there is none to be had. */
static view_ref *history_get(lk_sync_server *s, const sub *u, int64_t rev) {
  lk_err err;
  lk_catalog *cat = NULL;
  void *handle = NULL;
  lk_scope_view *sv = NULL;
  view_ref *v = NULL;

  pthread_mutex_lock(&s->mu);
  lk_sync_history_fn load = s->hist_load;
  lk_sync_history_free_fn release = s->hist_free;
  void *ctx = s->hist_ctx;
  if (s->hist != NULL && s->hist_rev == rev) {
    v = s->hist;
    v->refs++;
  }
  pthread_mutex_unlock(&s->mu);
  if (v != NULL || load == NULL) {
    return v;
  }
  lk_status st = load(ctx, rev, &cat, &handle, &err);
  if (st == LK_OK) {
    st = lk_scope_view_load(cat, &sv, &err);
    if (release != NULL) {
      release(ctx, handle);
    }
  }
  if (st == LK_OK) {
    v = calloc(1, sizeof(*v));
    if (v == NULL) {
      lk_scope_view_destroy(sv);
      st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  if (st != LK_OK) {
    lk_log(LK_LOG_INFO, "sync_history_unavailable",
           "agent %s peer %llu: no catalog at its revision %lld (%s); "
           "sending a snapshot",
           u->agent, (unsigned long long)u->peer, (long long)rev, err.msg);
    return NULL;
  }
  v->v = sv;
  v->refs = 2; /* the cache's and the caller's */
  pthread_mutex_lock(&s->mu);
  view_ref *old = s->hist;
  s->hist = v;
  s->hist_rev = rev;
  pthread_mutex_unlock(&s->mu);
  view_put(s, old);
  return v;
}

/* Makes u's sent map the agent's scope in the catalog at u's have_rev,
 * which the replica says it holds. Returns 0 (logged, u unchanged) when
 * that catalog or scope cannot be had: the caller sends a snapshot. */
static int seed_from_history(lk_sync_server *s, sub *u) {
  lk_err err;
  lk_scope *old = NULL;
  sent_entry *fresh = NULL;
  size_t n = 0;
  view_ref *h = history_get(s, u, u->have_rev);
  if (h == NULL) {
    return 0;
  }
  lk_status st = lk_scope_compute_in(h->v, u->agent, &old, &err);
  if (st == LK_OK) {
    st = sent_from_scope(old, &fresh, &n, &err);
  }
  lk_scope_destroy(old);
  view_put(s, h);
  if (st != LK_OK) {
    lk_log(LK_LOG_WARN, "sync_history_unavailable",
           "agent %s peer %llu: no scope at its revision %lld (%s); sending "
           "a snapshot",
           u->agent, (unsigned long long)u->peer, (long long)u->have_rev,
           err.msg);
    return 0;
  }
  sent_free(u->sent, u->n_sent);
  u->sent = fresh;
  u->n_sent = n;
  return 1;
}

/* Ends u's stream with err (subscriber mu held). */
static void sub_finish(sub *u, const lk_err *err) {
  if (!u->finished) {
    u->finished = 1;
    lk_rpc_stream_finish(u->stream, err);
  }
}

/* Brings u to view v at rev: first snapshot or resume, then differences.
 * Subscriber mu held. A failure ends the stream (the replica reconnects),
 * except when the stream has already ended. */
static void sub_sync(lk_sync_server *s, sub *u, view_ref *v, int64_t rev) {
  lk_err err;
  lk_scope *sc = NULL;
  lk_status st;
  int synced = u->sent_rev > 0;

  if (u->finished || !u->hello || v == NULL || rev <= 0) {
    return;
  }
  if (!synced && u->have_rev > rev) {
    return; /* the replica is ahead of this server: wait */
  }
  if (synced && !u->need_snapshot && u->sent_rev >= rev) {
    return;
  }
  st = lk_scope_compute_in(v->v, u->agent, &sc, &err);
  if (st == LK_OK) {
    if (!synced && u->have_rev == rev) {
      st = resume(s, u, sc, rev, &err);
    } else if (!synced && u->have_rev > 0 && seed_from_history(s, u)) {
      st = send_diff(s, u, sc, rev, &err);
      if (st == LK_OK) {
        u->need_snapshot = 0;
        lk_log(LK_LOG_INFO, "sync_resume",
               "agent %s peer %llu: resumed from revision %lld to %lld with "
               "one batch",
               u->agent, (unsigned long long)u->peer, (long long)u->have_rev,
               (long long)rev);
      }
    } else if (!synced || u->need_snapshot) {
      st = send_snapshot(s, u, sc, rev, &err);
    } else {
      st = send_diff(s, u, sc, rev, &err);
    }
  }
  lk_scope_destroy(sc);
  if (st == LK_OK || st == LK_UNAVAILABLE) {
    return; /* LK_UNAVAILABLE: the stream ended; on_end cleans up */
  }
  lk_log(LK_LOG_WARN, "sync_stream_failed",
         "agent %s peer %llu: ending the stream at revision %lld: %s", u->agent,
         (unsigned long long)u->peer, (long long)rev, err.msg);
  sub_finish(u, &err);
}

/* ---- stream callbacks ------------------------------------------------ */

static void on_open(void *ctx, lk_rpc_stream *st) {
  lk_sync_server *s = ctx;
  lk_err err;
  size_t len = 0;
  const char *auth = lk_rpc_stream_metadata(st, "authorization", &len);

  if (auth == NULL || !lk_token_check_bearer(s->token, auth, len)) {
    lk_fail(&err, LK_UNAUTHENTICATED,
            "missing or wrong node token: send metadata \"authorization: "
            "Bearer <token>\" with the token in the control plane's "
            "--node-token-file");
    lk_log(LK_LOG_WARN, "sync_unauthenticated",
           "refused a Sync stream: %s node token",
           auth == NULL ? "no" : "wrong");
    lk_rpc_stream_finish(st, &err);
    return;
  }
  sub *u = calloc(1, sizeof(*u));
  if (u == NULL) {
    lk_fail(&err, LK_RESOURCE_EXHAUSTED,
            "the control plane is out of memory; retry");
    lk_rpc_stream_finish(st, &err);
    return;
  }
  pthread_mutex_init(&u->mu, NULL);
  u->stream = st;
  u->refs = 1; /* the table's */
  u->last_ack_ms = -1;
  pthread_mutex_lock(&s->mu);
  if (s->n_subs >= LK_SYNC_MAX_SUBSCRIBERS) {
    pthread_mutex_unlock(&s->mu);
    sub_free(u);
    lk_fail(&err, LK_RESOURCE_EXHAUSTED,
            "this control plane serves %d replicas already; connect to "
            "another replica of it",
            LK_SYNC_MAX_SUBSCRIBERS);
    lk_rpc_stream_finish(st, &err);
    return;
  }
  u->peer = ++s->next_peer;
  size_t b = bucket_of(st);
  u->hnext = s->table[b];
  s->table[b] = u;
  s->n_subs++;
  pthread_mutex_unlock(&s->mu);
}

/* Records pk as the key agent's stream presents (server mu held) and
 * returns 1, with the previous key in prev, when the agent's previous
 * stream to this server presented another one. */
static int known_key_swap(lk_sync_server *s, const char *agent,
                          const unsigned char *pk, unsigned char *prev) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (const char *c = agent; *c != '\0'; c++) {
    h = (h ^ (unsigned char)*c) * 1099511628211ull;
  }
  known_key *k = &s->known[h % KNOWN_KEYS];
  int changed = strcmp(k->agent, agent) == 0 &&
                !lk_ct_equal(k->pk, sizeof(k->pk), pk, sizeof(k->pk));
  if (changed) {
    memcpy(prev, k->pk, sizeof(k->pk));
  }
  snprintf(k->agent, sizeof(k->agent), "%s", agent);
  memcpy(k->pk, pk, sizeof(k->pk));
  return changed;
}

/* Checks and records the first SyncRequest (subscriber mu held); on
 * LK_OK u is identified and ready to sync. */
static lk_status take_hello(lk_sync_server *s, sub *u,
                            const Latchkey__V1__SyncRequest *req, lk_err *err) {
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  lk_secret *audit_key = NULL;
  lk_status st;

  if (!lk_catalog_valid_id(req->agent_id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the first SyncRequest must carry this sidecar's "
                   "agent_id: 1-128 characters from A-Z a-z 0-9 . _ -, "
                   "starting with a letter or digit");
  }
  if (req->node_public_key.len != LK_SEAL_PUBLIC_KEY_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the first SyncRequest must carry the node's 32-byte "
                   "X25519 node_public_key (from its --node-key file), "
                   "not %zu bytes",
                   req->node_public_key.len);
  }
  if (req->have_revision < 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "have_revision must be 0 (nothing) or a revision this "
                   "replica applied, not %lld",
                   (long long)req->have_revision);
  }
  /* Seal the audit key for the first batch; this also refuses a key
   * nothing can be sealed to (small order) now, not later. */
  if ((st = lk_keyring_audit_key(s->kr, &audit_key, err)) != LK_OK) {
    return st;
  }
  st = lk_seal_for_node(req->node_public_key.data, LK_AUDIT_SEAL_ID,
                        LK_AUDIT_SEAL_FIELD, lk_secret_data(audit_key),
                        lk_secret_len(audit_key), u->audit_eph, u->audit_nonce,
                        &ct, &ct_len, err);
  lk_secret_free(audit_key); /* last use of this copy */
  if (st != LK_OK) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "node_public_key is not a usable X25519 public key; send "
                   "the public key of the sidecar's --node-key file");
  }
  free(u->audit_ct);
  u->audit_ct = ct;
  u->audit_ct_len = ct_len;
  u->audit_pending = 1;
  memcpy(u->pk, req->node_public_key.data, LK_SEAL_PUBLIC_KEY_BYTES);
  u->have_rev = req->have_revision;
  u->need_snapshot = 1;
  pthread_mutex_lock(&s->mu);
  u->applied = req->have_revision; /* what the replica says it applied */
  snprintf(u->agent, sizeof(u->agent), "%s", req->agent_id);
  unsigned char prev[LK_SEAL_PUBLIC_KEY_BYTES];
  int key_changed = known_key_swap(s, u->agent, u->pk, prev);
  if (key_changed) {
    /* Whatever the replica holds was sealed to the old key: resuming
     * would leave it there. */
    u->have_rev = 0;
    u->applied = 0;
  }
  u->hello = 1;
  int64_t cur = s->revision;
  pthread_mutex_unlock(&s->mu);
  if (key_changed) {
    char old_fp[LK_SEAL_FINGERPRINT_CHARS + 1];
    char new_fp[LK_SEAL_FINGERPRINT_CHARS + 1];
    lk_seal_fingerprint(prev, old_fp);
    lk_seal_fingerprint(u->pk, new_fp);
    lk_log(LK_LOG_INFO, "sync.node_key_changed",
           "agent %s peer %llu: node key changed since its last stream: "
           "old=%s new=%s (have revision %lld); sending a snapshot sealed to "
           "the new key",
           u->agent, (unsigned long long)u->peer, old_fp, new_fp,
           (long long)req->have_revision);
  }
  lk_log(
      LK_LOG_INFO, "sync_hello",
      "agent %s peer %llu: have revision %lld, control plane at %lld%s",
      u->agent, (unsigned long long)u->peer, (long long)u->have_rev,
      (long long)cur,
      u->have_rev > cur ? " (waiting for this control plane to catch up)" : "");
  return LK_OK;
}

/* Records an ACK or NACK of u (subscriber mu held). */
static void take_ack(lk_sync_server *s, sub *u,
                     const Latchkey__V1__SyncAck *a) {
  pthread_mutex_lock(&s->mu);
  int64_t published = u->published_rev;
  if (a->revision <= 0 || a->revision > published) {
    pthread_mutex_unlock(&s->mu);
    lk_log(LK_LOG_WARN, "sync_bad_ack",
           "agent %s peer %llu acknowledged revision %lld, which it was not "
           "sent (last sent %lld); ignored",
           u->agent, (unsigned long long)u->peer, (long long)a->revision,
           (long long)published);
    return;
  }
  if (!a->nack) {
    if (a->revision > u->applied) {
      u->applied = a->revision;
    }
    u->last_ack_ms = lk_now_ms();
    latency_check_locked(s);
  }
  pthread_mutex_unlock(&s->mu);
  if (!a->nack) {
    return;
  }
  lk_metric_inc(s->m_nacks, NULL, 1);
  int was_snapshot = a->revision == u->snapshot_rev;
  lk_log(LK_LOG_WARN, "sync_nack",
         "agent %s peer %llu refused revision %lld: %.300s; %s", u->agent,
         (unsigned long long)u->peer, (long long)a->revision,
         a->error != NULL ? a->error : "",
         was_snapshot ? "a snapshot follows at the next change"
                      : "sending a snapshot");
  u->need_snapshot = 1;
  if (!was_snapshot) {
    int64_t rev = 0;
    view_ref *v = view_get(s, &rev);
    sub_sync(s, u, v, rev);
    view_put(s, v);
  }
}

static void on_message(void *ctx, lk_rpc_stream *st, const unsigned char *msg,
                       size_t len) {
  lk_sync_server *s = ctx;
  lk_err err;
  sub *u = sub_get(s, st);
  if (u == NULL) {
    return; /* refused in on_open */
  }
  pthread_mutex_lock(&u->mu);
  if (u->finished) {
    goto done;
  }
  Latchkey__V1__SyncRequest *req =
      latchkey__v1__sync_request__unpack(NULL, len, msg);
  if (req == NULL) {
    lk_fail(&err, LK_INVALID_ARGUMENT,
            "a SyncRequest does not decode; send latchkey.v1.SyncRequest");
    sub_finish(u, &err);
    goto done;
  }
  if (!u->hello) {
    if (take_hello(s, u, req, &err) != LK_OK) {
      lk_log(LK_LOG_WARN, "sync_bad_hello", "peer %llu: %s",
             (unsigned long long)u->peer, err.msg);
      sub_finish(u, &err);
    } else {
      int64_t rev = 0;
      view_ref *v = view_get(s, &rev);
      sub_sync(s, u, v, rev);
      view_put(s, v);
    }
  } else if (req->ack != NULL) {
    take_ack(s, u, req->ack);
  }
  latchkey__v1__sync_request__free_unpacked(req, NULL);
done:
  pthread_mutex_unlock(&u->mu);
  sub_put(s, u);
}

static void on_end(void *ctx, lk_rpc_stream *st, int cancelled) {
  lk_sync_server *s = ctx;
  sub *u = sub_get(s, st);
  if (u == NULL) {
    return; /* refused in on_open, which finished it */
  }
  pthread_mutex_lock(&u->mu);
  sub_finish(u, NULL);
  pthread_mutex_unlock(&u->mu);
  pthread_mutex_lock(&s->mu);
  sub **p = &s->table[bucket_of(st)];
  while (*p != NULL && *p != u) {
    p = &(*p)->hnext;
  }
  if (*p == u) {
    *p = u->hnext;
    s->n_subs--;
    u->refs--; /* the table's */
  }
  latency_check_locked(s);
  pthread_mutex_unlock(&s->mu);
  lk_log(LK_LOG_INFO, "sync_end", "agent %s peer %llu: stream %s",
         u->hello ? u->agent : "-", (unsigned long long)u->peer,
         cancelled ? "cancelled or broken" : "closed");
  sub_put(s, u);
}

static const lk_rpc_stream_handler k_handler = {on_open, on_message, on_end};

const lk_rpc_stream_handler *lk_sync_server_handler(void) {
  return &k_handler;
}

/* ---- changes, heartbeats, status ------------------------------------- */

void lk_sync_server_changed(lk_sync_server *s, int64_t revision) {
  lk_err err;
  lk_scope_view *fresh = NULL;
  int64_t t0 = lk_now_us();

  pthread_mutex_lock(&s->change_mu);
  pthread_mutex_lock(&s->mu);
  int64_t cur = s->revision;
  pthread_mutex_unlock(&s->mu);
  if (revision <= cur) {
    lk_log(LK_LOG_WARN, "sync_stale_change",
           "revision %lld is not above the current %lld; ignored",
           (long long)revision, (long long)cur);
    goto done;
  }
  view_ref *v = calloc(1, sizeof(*v));
  if (v == NULL || lk_scope_view_load(s->cat, &fresh, &err) != LK_OK) {
    lk_log(LK_LOG_ERROR, "sync_catalog_read_failed",
           "cannot read the catalog at revision %lld; replicas stay at %lld "
           "until the next change: %s",
           (long long)revision, (long long)cur,
           v == NULL ? "out of memory" : err.msg);
    free(v);
    goto done;
  }
  v->v = fresh;
  v->refs = 2; /* the server's and this call's */
  pthread_mutex_lock(&s->mu);
  view_ref *old = s->view;
  s->view = v;
  s->revision = revision;
  if (s->n_pend == MAX_PENDING) { /* drop the oldest, unsampled */
    s->pend_head = (s->pend_head + 1) % MAX_PENDING;
    s->n_pend--;
  }
  s->pend[(s->pend_head + s->n_pend) % MAX_PENDING] = (pending){revision, t0};
  s->n_pend++;
  pthread_mutex_unlock(&s->mu);
  view_put(s, old);

  size_t n = 0;
  sub **all = sub_collect(s, &n);
  for (size_t i = 0; i < n; i++) {
    pthread_mutex_lock(&all[i]->mu);
    sub_sync(s, all[i], v, revision);
    pthread_mutex_unlock(&all[i]->mu);
  }
  sub_release_all(s, all, n);
  view_put(s, v);
  pthread_mutex_lock(&s->mu);
  latency_check_locked(s);
  pthread_mutex_unlock(&s->mu);
done:
  pthread_mutex_unlock(&s->change_mu);
}

void lk_sync_server_set_history(lk_sync_server *s, lk_sync_history_fn load,
                                lk_sync_history_free_fn release, void *ctx) {
  pthread_mutex_lock(&s->mu);
  s->hist_load = load;
  s->hist_free = load != NULL ? release : NULL;
  s->hist_ctx = load != NULL ? ctx : NULL;
  pthread_mutex_unlock(&s->mu);
}

void lk_sync_server_heartbeat(lk_sync_server *s) {
  size_t n = 0;
  sub **all = sub_collect(s, &n);
  for (size_t i = 0; i < n; i++) {
    sub *u = all[i];
    lk_err err;
    pthread_mutex_lock(&u->mu);
    if (!u->finished && u->sent_rev > 0) {
      lk_status st = batch_send(u, NULL, u->sent_rev, 0, 0, 1, &err);
      if (st != LK_OK && st != LK_UNAVAILABLE) {
        lk_log(LK_LOG_WARN, "sync_stream_failed",
               "agent %s peer %llu: ending the stream: %s", u->agent,
               (unsigned long long)u->peer, err.msg);
        sub_finish(u, &err);
      }
    }
    pthread_mutex_unlock(&u->mu);
  }
  sub_release_all(s, all, n);
}

int64_t lk_sync_server_revision(lk_sync_server *s) {
  pthread_mutex_lock(&s->mu);
  int64_t rev = s->revision;
  pthread_mutex_unlock(&s->mu);
  return rev;
}

/* A replica's status, copied out of the locks. */
typedef struct {
  char agent[LK_CATALOG_ID_MAX + 1];
  lk_sync_replica r;
} replica_copy;

static int cmp_peer(const void *a, const void *b) {
  uint64_t x = ((const replica_copy *)a)->r.peer_id;
  uint64_t y = ((const replica_copy *)b)->r.peer_id;
  return x < y ? -1 : x > y;
}

lk_status lk_sync_server_replicas(lk_sync_server *s, lk_sync_replica_fn fn,
                                  void *ctx, lk_err *err) {
  size_t n = 0;
  int64_t now = lk_now_ms();
  pthread_mutex_lock(&s->mu);
  replica_copy *all = calloc(s->n_subs > 0 ? s->n_subs : 1, sizeof(*all));
  if (all == NULL) {
    pthread_mutex_unlock(&s->mu);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory listing replicas; retry");
  }
  for (size_t b = 0; b < SUB_BUCKETS; b++) {
    for (sub *u = s->table[b]; u != NULL; u = u->hnext) {
      if (!u->hello) {
        continue;
      }
      replica_copy *c = &all[n++];
      memcpy(c->agent, u->agent, sizeof(c->agent));
      c->r.peer_id = u->peer;
      c->r.applied_revision = u->applied;
      c->r.lag_revisions =
          s->revision > u->applied ? s->revision - u->applied : 0;
      c->r.ms_since_ack = u->last_ack_ms < 0 ? -1 : now - u->last_ack_ms;
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (n > 1) {
    qsort(all, n, sizeof(*all), cmp_peer);
  }
  for (size_t i = 0; i < n; i++) {
    all[i].r.agent_id = all[i].agent;
    fn(ctx, &all[i].r);
  }
  free(all);
  return LK_OK;
}

void lk_sync_server_ack_latency(lk_sync_server *s, lk_sync_ack_latency *out) {
  pthread_mutex_lock(&s->mu);
  *out = s->lat;
  pthread_mutex_unlock(&s->mu);
}

/* ---- metrics ---------------------------------------------------------- */

/* Scrape time: the revision replicas are being brought to. */
static void collect_revision(void *ctx, lk_metrics_emitter *e) {
  lk_metrics_emit(e, NULL, (double)lk_sync_server_revision(ctx));
}

/* Scrape time: streams that said hello. */
static void collect_replicas(void *ctx, lk_metrics_emitter *e) {
  lk_sync_server *s = ctx;
  size_t n = 0;
  pthread_mutex_lock(&s->mu);
  for (size_t b = 0; b < SUB_BUCKETS; b++) {
    for (sub *u = s->table[b]; u != NULL; u = u->hnext)
      n += u->hello ? 1 : 0;
  }
  pthread_mutex_unlock(&s->mu);
  lk_metrics_emit(e, NULL, (double)n);
}

/* Scrape time, per connected replica {agent, peer}: revisions behind
 * (which = 0) or seconds since its last ACK (which = 1; -1 = none yet).
 * The emitter caps the number of series. */
static void collect_per_replica(lk_sync_server *s, lk_metrics_emitter *e,
                                int which) {
  int64_t now = lk_now_ms();
  pthread_mutex_lock(&s->mu);
  for (size_t b = 0; b < SUB_BUCKETS; b++) {
    for (sub *u = s->table[b]; u != NULL; u = u->hnext) {
      if (!u->hello)
        continue;
      char peer[24];
      snprintf(peer, sizeof(peer), "%llu", (unsigned long long)u->peer);
      const char *v[] = {u->agent, peer};
      double x;
      if (which == 0)
        x = (double)(s->revision > u->applied ? s->revision - u->applied : 0);
      else
        x = u->last_ack_ms < 0 ? -1 : (double)(now - u->last_ack_ms) / 1000.0;
      lk_metrics_emit(e, v, x);
    }
  }
  pthread_mutex_unlock(&s->mu);
}

static void collect_ack_lag(void *ctx, lk_metrics_emitter *e) {
  collect_per_replica(ctx, e, 0);
}

static void collect_ack_age(void *ctx, lk_metrics_emitter *e) {
  collect_per_replica(ctx, e, 1);
}

lk_status lk_sync_server_use_metrics(lk_sync_server *s, lk_metrics *m,
                                     lk_err *err) {
  static const char *const replica_l[] = {"agent", "peer"};
  static const double acked_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                        0.05,  0.1,    0.25,  0.5,  1,
                                        2.5,   5,      10,    30,   60};
  lk_status st = lk_metrics_histogram(
      m, "latchkey_cp_write_to_all_acked_seconds",
      "Time from a catalog change to every connected replica having ACKed "
      "it.",
      NULL, 0, acked_bounds, sizeof(acked_bounds) / sizeof(acked_bounds[0]),
      &s->m_acked, err);
  if (st == LK_OK)
    st = lk_metrics_counter(m, "latchkey_cp_sync_nacks_total",
                            "Sync batches replicas refused with a NACK.", NULL,
                            0, &s->m_nacks, err);
  if (st == LK_OK)
    st = lk_metrics_gauge_fn(
        m, "latchkey_cp_revision",
        "The catalog (etcd) revision replicas are brought to.", NULL, 0,
        collect_revision, s, &s->m_fn[0], err);
  if (st == LK_OK)
    st = lk_metrics_gauge_fn(m, "latchkey_cp_replicas",
                             "Replica streams connected (past their hello).",
                             NULL, 0, collect_replicas, s, &s->m_fn[1], err);
  if (st == LK_OK)
    st = lk_metrics_gauge_fn(
        m, "latchkey_cp_replica_ack_lag_revisions",
        "Per connected replica: revisions between the control plane's and "
        "the one the replica last ACKed (series capped per family).",
        replica_l, 2, collect_ack_lag, s, &s->m_fn[2], err);
  if (st == LK_OK)
    st = lk_metrics_gauge_fn(
        m, "latchkey_cp_replica_ack_age_seconds",
        "Per connected replica: seconds since its last ACK (-1: none yet).",
        replica_l, 2, collect_ack_age, s, &s->m_fn[3], err);
  return st;
}

/* ---- lifecycle ------------------------------------------------------- */

static void *timer_main(void *arg) {
  lk_sync_server *s = arg;
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  pthread_mutex_lock(&s->timer_mu);
  while (!s->timer_stop) {
    until.tv_sec += LK_SYNC_HEARTBEAT_MS / 1000;
    until.tv_nsec += (long)(LK_SYNC_HEARTBEAT_MS % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    while (!s->timer_stop &&
           pthread_cond_timedwait(&s->timer_cv, &s->timer_mu, &until) == 0) {
    }
    if (s->timer_stop) {
      break;
    }
    pthread_mutex_unlock(&s->timer_mu);
    lk_sync_server_heartbeat(s);
    pthread_mutex_lock(&s->timer_mu);
  }
  pthread_mutex_unlock(&s->timer_mu);
  return NULL;
}

lk_status lk_sync_server_new(lk_catalog *cat, lk_keyring *kr,
                             const lk_token *node_token, lk_sync_server **out,
                             lk_err *err) {
  pthread_condattr_t ca;
  lk_sync_server *s = NULL;

  *out = NULL;
  if (cat == NULL || kr == NULL || node_token == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "the Sync server needs a catalog, a key ring and a node "
                   "token");
  }
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium cannot initialize");
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory starting the Sync server");
  }
  s->cat = cat;
  s->kr = kr;
  s->token = node_token;
  s->lat.last_us = -1;
  pthread_mutex_init(&s->change_mu, NULL);
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->timer_mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->timer_cv, &ca);
  pthread_condattr_destroy(&ca);
  if (pthread_create(&s->timer, NULL, timer_main, s) != 0) {
    lk_sync_server_destroy(s);
    return lk_fail(err, LK_INTERNAL, "cannot start the Sync heartbeat thread");
  }
  s->timer_started = 1;
  *out = s;
  return LK_OK;
}

void lk_sync_server_destroy(lk_sync_server *s) {
  if (s == NULL) {
    return;
  }
  for (size_t i = 0; i < sizeof(s->m_fn) / sizeof(s->m_fn[0]); i++)
    lk_metric_detach(s->m_fn[i]);
  if (s->timer_started) {
    pthread_mutex_lock(&s->timer_mu);
    s->timer_stop = 1;
    pthread_cond_broadcast(&s->timer_cv);
    pthread_mutex_unlock(&s->timer_mu);
    pthread_join(s->timer, NULL);
  }
  for (size_t b = 0; b < SUB_BUCKETS; b++) {
    while (s->table[b] != NULL) { /* only if streams outlived the server */
      sub *u = s->table[b];
      s->table[b] = u->hnext;
      sub_free(u);
    }
  }
  if (s->view != NULL) {
    lk_scope_view_destroy(s->view->v);
    free(s->view);
  }
  if (s->hist != NULL) {
    lk_scope_view_destroy(s->hist->v);
    free(s->hist);
  }
  pthread_cond_destroy(&s->timer_cv);
  pthread_mutex_destroy(&s->timer_mu);
  pthread_mutex_destroy(&s->mu);
  pthread_mutex_destroy(&s->change_mu);
  free(s);
}
