/*
 * etcd.c - etcd v3 over grpc core's C client (see etcd.h).
 *
 * Why it is shaped this way:
 *  - Unary calls (Range, Txn, Compact) are one grpc batch of all six client
 *    ops on a private completion queue, waited for with a bound past the
 *    call's own deadline, then the queue is shut down and drained. The
 *    deadline is shared by every attempt: a call makes rounds over the
 *    endpoints from the current one, attempt k of a round getting the time
 *    left divided by the endpoints left in it (so a black-holed endpoint
 *    cannot eat the whole budget), with a short pause between rounds. Calls
 *    are fail-fast (no wait_for_ready), so a refused connection moves on at
 *    once; the endpoint that answered becomes current. Rounds ride out an
 *    etcd restart and grpc's reconnect backoff without surfacing them.
 *  - Writes are Txn only. A txn's compares are mod_revision equalities; its
 *    failure branch reads every compared key, so a failed txn can name the
 *    key that changed instead of guessing.
 *  - Range pages (limit LK_ETCD_RANGE_PAGE) are pinned to the revision of
 *    the first page, so the caller sees one snapshot. etcd's compaction
 *    error carries no revision; a short probe Watch from the same revision
 *    asks etcd for its compact revision so the message can name it.
 *  - A watch owns one thread and one completion queue per stream attempt:
 *    one batch sends the initial metadata and the create request (and
 *    receives the initial metadata), one batch waits for the final status,
 *    and RECV_MESSAGE batches are started one at a time. The thread polls
 *    its queue with a short timeout and stop also cancels the live call
 *    under the watch mutex, so stop never waits long. Between reconnects
 *    the thread polls the next channel (channels_poll) so its connection
 *    attempt progresses. A stream is closed by cancel, draining every
 *    pending batch, unref, then shutting the queue down and draining it to
 *    GRPC_QUEUE_SHUTDOWN.
 *  - Watch fragments (etcd splits big responses when asked to) are held
 *    until the last one arrives, so callbacks only ever see whole batches
 *    and a reconnect never has to take back a half-delivered one. The
 *    resume point is the last event's revision + 1, or a progress
 *    notification's header revision + 1 (etcd sends those only for synced
 *    watchers; etcd before 3.4.25 can send one just ahead of the events of
 *    the same revision, which are then still delivered).
 *  - Values may be sealed secrets. Every protobuf-c message this module
 *    unpacks uses an allocator that wipes on free; packed requests are
 *    handed to grpc in slices whose destructor wipes; received byte buffers
 *    are wiped before they are destroyed; the txn builder wipes its copies.
 *    (Bytes inside grpc's transport and the kernel are out of reach.)
 */
#include "lib/etcd.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd/etcd.pb-c.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "lib/secret.h"

#define M_RANGE "/etcdserverpb.KV/Range"
#define M_TXN "/etcdserverpb.KV/Txn"
#define M_COMPACT "/etcdserverpb.KV/Compact"
#define M_WATCH "/etcdserverpb.Watch/Watch"

/* Relative keys and prefixes longer than this are refused. */
#define MAX_KEY_BYTES 4096u
/* What follows the changed last byte of the prefix in the fence key. */
#define FENCE_NAME "keyring-fence"
#define MAX_ENDPOINT_BYTES 256u
/* How far past a call's deadline we wait for grpc to report it. */
#define CQ_GRACE_MS 5000
/* Pause between rounds over the endpoints within one call's deadline. */
#define UNARY_PAUSE_MIN_MS 50
#define UNARY_PAUSE_MAX_MS 500
/* How often a watch thread wakes to check for stop. */
#define WATCH_POLL_MS 500
/* ... and, between reconnects, to check for stop. */
#define WATCH_SLICE_MS 100
#define WATCH_BACKOFF_MIN_MS 100
#define WATCH_BACKOFF_MAX_MS 2000
/* A fragmented watch response may total at most this many bytes. */
#define WATCH_MAX_FRAGMENT_BYTES (256u * 1024u * 1024u)
#define WATCH_MAX_FRAGMENTS 65536u

struct lk_etcd {
  size_t n;
  char *endpoints[LK_ETCD_MAX_ENDPOINTS];
  grpc_channel *ch[LK_ETCD_MAX_ENDPOINTS];
  atomic_size_t current;
  char *prefix;
  size_t prefix_len;
  char *fence; /* the one key outside the prefix: see lk_etcd_fence_key */
  size_t fence_len;
  int64_t deadline_ms;
};

/* ---- wiping protobuf-c allocator --------------------------------------- */

typedef union {
  size_t size;
  max_align_t align;
} alloc_hdr;

static void *wipe_alloc(void *data, size_t size) {
  (void)data;
  if (size > SIZE_MAX - sizeof(alloc_hdr))
    return NULL;
  alloc_hdr *h = malloc(sizeof(alloc_hdr) + size);
  if (h == NULL)
    return NULL;
  h->size = size;
  return h + 1;
}

static void wipe_dealloc(void *data, void *p) {
  (void)data;
  if (p == NULL)
    return;
  alloc_hdr *h = (alloc_hdr *)p - 1;
  lk_wipe_free(h, sizeof(alloc_hdr) + h->size);
}

static ProtobufCAllocator k_wipe_allocator = {wipe_alloc, wipe_dealloc, NULL};

static void msg_free(void *m) {
  if (m != NULL)
    protobuf_c_message_free_unpacked(m, &k_wipe_allocator);
}

/* ---- small helpers ----------------------------------------------------- */

static gpr_timespec ms_from_now(int64_t ms) {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* Returns 1 when rel names a key beside the prefix (LK_ETCD_OUTSIDE). */
static int is_outside(const char *rel) {
  return rel[0] == LK_ETCD_OUTSIDE[0];
}

/* Returns prefix + rel (or, for an LK_ETCD_OUTSIDE name, the prefix with
 * its last byte changed + the rest of rel) as a malloc'd NUL-terminated
 * key, or NULL. */
static char *full_key(const lk_etcd *e, const char *rel, size_t *len) {
  int outside = is_outside(rel);
  const char *tail = outside ? rel + 1 : rel;
  size_t rl = strlen(tail);
  char *k = malloc(e->prefix_len + rl + 1);
  if (k == NULL)
    return NULL;
  memcpy(k, e->prefix, e->prefix_len);
  if (outside) /* the fence key's spelling of the prefix */
    k[e->prefix_len - 1] = e->fence[e->prefix_len - 1];
  memcpy(k + e->prefix_len, tail, rl + 1);
  *len = e->prefix_len + rl;
  return k;
}

/* Returns the smallest key greater than every key starting with key (etcd's
 * range_end for a prefix), malloc'd; "\0" (all keys >= key) when key is all
 * 0xff bytes. */
static char *range_end(const char *key, size_t len, size_t *out_len) {
  char *end = malloc(len + 1);
  if (end == NULL)
    return NULL;
  memcpy(end, key, len);
  for (size_t i = len; i > 0; i--) {
    unsigned char c = (unsigned char)end[i - 1];
    if (c < 0xff) {
      end[i - 1] = (char)(c + 1);
      end[i] = '\0';
      *out_len = i;
      return end;
    }
  }
  end[0] = '\0';
  *out_len = 1;
  return end;
}

static lk_status check_rel(const char *what, const char *rel, lk_err *err) {
  if (rel == NULL)
    return lk_fail(err, LK_INVALID_ARGUMENT, "etcd %s is NULL", what);
  if (strlen(rel) > MAX_KEY_BYTES)
    return lk_fail(err, LK_INVALID_ARGUMENT, "etcd %s is longer than %u bytes",
                   what, MAX_KEY_BYTES);
  return LK_OK;
}

/* check_rel for a range or watch prefix, which must be inside the prefix. */
static lk_status check_scan_prefix(const char *what, const char *rel,
                                   lk_err *err) {
  lk_status rc = check_rel(what, rel, err);
  if (rc == LK_OK && is_outside(rel))
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "etcd %s names keys outside the prefix, which cannot be "
                   "ranged or watched",
                   what);
  return rc;
}

/* A growable NUL-terminated key buffer with a hard cap. */
typedef struct {
  char *p;
  size_t cap;
} keybuf;

/* Copies the part of an etcd key after the client prefix into kb as a C
 * string; returns NULL when the key is outside the prefix or too long. */
static const char *key_strip(const lk_etcd *e, keybuf *kb,
                             ProtobufCBinaryData k) {
  if (k.len < e->prefix_len || memcmp(k.data, e->prefix, e->prefix_len) != 0)
    return NULL;
  size_t rl = k.len - e->prefix_len;
  if (rl > LK_ETCD_MAX_RECV_BYTES)
    return NULL;
  if (rl + 1 > kb->cap) {
    size_t cap = rl + 1 < 256 ? 256 : rl + 1;
    char *p = realloc(kb->p, cap);
    if (p == NULL)
      return NULL;
    kb->p = p;
    kb->cap = cap;
  }
  memcpy(kb->p, k.data + e->prefix_len, rl);
  kb->p[rl] = '\0';
  return kb->p;
}

/* Packs m into a malloc'd buffer (wipe it when done); NULL on OOM. */
static unsigned char *pack(const ProtobufCMessage *m, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(n > 0 ? n : 1);
  if (buf == NULL)
    return NULL;
  *len = protobuf_c_message_pack(m, buf);
  return buf;
}

static void wipe_slice_dtor(void *p, size_t len) {
  lk_wipe_free(p, len);
}

/* Returns a byte buffer holding a copy of len bytes at p, in a slice that
 * is wiped when grpc releases it; NULL on OOM. */
static grpc_byte_buffer *bb_from(const unsigned char *p, size_t len) {
  unsigned char *copy = malloc(len > 0 ? len : 1);
  if (copy == NULL)
    return NULL;
  if (len > 0)
    memcpy(copy, p, len);
  grpc_slice s = grpc_slice_new_with_len(copy, len, wipe_slice_dtor);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* Wipes a received byte buffer's bytes, then destroys it; NULL ok. */
static void bb_wipe_destroy(grpc_byte_buffer *bb) {
  if (bb == NULL)
    return;
  if (bb->type == GRPC_BB_RAW) {
    grpc_slice_buffer *sb = &bb->data.raw.slice_buffer;
    for (size_t i = 0; i < sb->count; i++) {
      size_t n = GRPC_SLICE_LENGTH(sb->slices[i]);
      if (n > 0)
        lk_wipe(GRPC_SLICE_START_PTR(sb->slices[i]), n);
    }
  }
  grpc_byte_buffer_destroy(bb);
}

/* Unpacks (with the wiping allocator) and consumes bb; NULL when it does
 * not parse. *nbytes gets the message size. */
static ProtobufCMessage *bb_unpack(const ProtobufCMessageDescriptor *d,
                                   grpc_byte_buffer *bb, size_t *nbytes) {
  grpc_byte_buffer_reader r;
  ProtobufCMessage *m = NULL;
  *nbytes = 0;
  if (!grpc_byte_buffer_reader_init(&r, bb))
    goto cleanup;
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  size_t n = GRPC_SLICE_LENGTH(s);
  *nbytes = n;
  m = protobuf_c_message_unpack(d, &k_wipe_allocator, n,
                                GRPC_SLICE_START_PTR(s));
  if (n > 0)
    lk_wipe(GRPC_SLICE_START_PTR(s), n);
  grpc_slice_unref(s);
cleanup:
  bb_wipe_destroy(bb);
  return m;
}

static void slice_to_str(grpc_slice s, char *out, size_t cap) {
  size_t n = GRPC_SLICE_LENGTH(s);
  if (n >= cap)
    n = cap - 1;
  memcpy(out, GRPC_SLICE_START_PTR(s), n);
  out[n] = '\0';
}

/* Drains cq to GRPC_QUEUE_SHUTDOWN and destroys it. */
static void cq_destroy(grpc_completion_queue *cq) {
  grpc_completion_queue_shutdown(cq);
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(
        cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
      break;
  }
  grpc_completion_queue_destroy(cq);
}

/* Waits up to ms while polling the n channels, returning early once one
 * of them changes state. A channel's reconnect only makes progress while
 * some thread polls it (otherwise grpc's backup poller does, every 5 s), so
 * every pause between attempts is spent here rather than asleep. */
static void channels_poll(grpc_channel *const *ch, size_t n, int64_t ms) {
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  gpr_timespec deadline = ms_from_now(ms);
  size_t pending = 0;
  for (size_t i = 0; i < n; i++) {
    grpc_connectivity_state st =
        grpc_channel_check_connectivity_state(ch[i], 1);
    grpc_channel_watch_connectivity_state(ch[i], st, deadline, cq, NULL);
    pending++;
  }
  /* Every watch completes by the deadline; all must before cq goes. */
  while (pending > 0) {
    grpc_event ev = grpc_completion_queue_next(
        cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type != GRPC_OP_COMPLETE)
      break;
    pending--;
  }
  cq_destroy(cq);
}

/* ---- unary calls -------------------------------------------------------- */

typedef struct {
  grpc_status_code code;
  char details[256];
  size_t endpoint; /* index of the endpoint that gave this status */
} rpc_status;

/* Runs one unary call on ch; fills st and, on OK, *resp. */
static void call_once(grpc_channel *ch, const char *method,
                      const unsigned char *req, size_t len, int64_t timeout_ms,
                      rpc_status *st, grpc_byte_buffer **resp) {
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  gpr_timespec deadline = ms_from_now(timeout_ms);
  grpc_call *call = grpc_channel_create_call(
      ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
      grpc_slice_from_static_string(method), NULL, deadline, NULL);
  grpc_metadata_array init_md;
  grpc_metadata_array trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_slice details = grpc_empty_slice();
  grpc_byte_buffer *send = bb_from(req, len);
  *resp = NULL;
  st->code = GRPC_STATUS_UNKNOWN;
  st->details[0] = '\0';
  if (send == NULL) {
    st->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    snprintf(st->details, sizeof(st->details), "out of memory");
    goto cleanup;
  }
  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = resp;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[5].data.recv_status_on_client.status = &st->code;
  ops[5].data.recv_status_on_client.status_details = &details;
  grpc_call_error ce = grpc_call_start_batch(call, ops, 6, call, NULL);
  if (ce != GRPC_CALL_OK) {
    st->code = GRPC_STATUS_INTERNAL;
    snprintf(st->details, sizeof(st->details), "grpc_call_start_batch: %s",
             grpc_call_error_to_string(ce));
    goto cleanup;
  }
  grpc_event ev = grpc_completion_queue_next(
      cq,
      gpr_time_add(deadline, gpr_time_from_millis(CQ_GRACE_MS, GPR_TIMESPAN)),
      NULL);
  if (ev.type == GRPC_QUEUE_TIMEOUT) {
    grpc_call_cancel(call, NULL);
    grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
  }
  slice_to_str(details, st->details, sizeof(st->details));
  if (st->code != GRPC_STATUS_OK) {
    bb_wipe_destroy(*resp);
    *resp = NULL;
  } else if (*resp == NULL) {
    st->code = GRPC_STATUS_INTERNAL;
    snprintf(st->details, sizeof(st->details), "no response message");
  }
cleanup:
  grpc_call_unref(call);
  cq_destroy(cq);
  if (send != NULL)
    grpc_byte_buffer_destroy(send);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
}

/* Maps a non-OK, non-retryable grpc status to an lk_status and message. */
static lk_status map_status(const lk_etcd *e, const char *method,
                            const rpc_status *st, lk_err *err) {
  lk_status code;
  switch (st->code) {
    case GRPC_STATUS_INVALID_ARGUMENT:
      code = LK_INVALID_ARGUMENT;
      break;
    case GRPC_STATUS_OUT_OF_RANGE:
      code = strstr(st->details, "compacted") != NULL ? LK_FAILED_PRECONDITION
                                                      : LK_INVALID_ARGUMENT;
      break;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
      code = LK_RESOURCE_EXHAUSTED;
      break;
    case GRPC_STATUS_PERMISSION_DENIED:
      code = LK_PERMISSION_DENIED;
      break;
    case GRPC_STATUS_UNAUTHENTICATED:
      code = LK_UNAUTHENTICATED;
      break;
    case GRPC_STATUS_FAILED_PRECONDITION:
      code = LK_FAILED_PRECONDITION;
      break;
    case GRPC_STATUS_NOT_FOUND:
      code = LK_NOT_FOUND;
      break;
    case GRPC_STATUS_ALREADY_EXISTS:
      code = LK_ALREADY_EXISTS;
      break;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_CANCELLED:
    case GRPC_STATUS_ABORTED:
      return lk_fail(err, LK_UNAVAILABLE, "etcd at %s unreachable: %s",
                     e->endpoints[st->endpoint], st->details);
    default:
      code = LK_INTERNAL;
      break;
  }
  return lk_fail(err, code, "etcd %s at %s failed (grpc code %d): %s", method,
                 e->endpoints[st->endpoint], (int)st->code, st->details);
}

/* Sends req to method within the client's deadline: rounds over every
 * endpoint from the current one, attempt k of a round getting the time left
 * divided by the endpoints left in it, with a short growing pause between
 * rounds (a restarting etcd, a channel in reconnect backoff). Only
 * UNAVAILABLE and DEADLINE_EXCEEDED move on. On LK_OK *resp is the
 * unpacked response (free with msg_free); any other result is mapped by
 * map_status, with the raw grpc status left in *st for callers that refine
 * it. */
static lk_status unary(lk_etcd *e, const char *method,
                       const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *rd,
                       ProtobufCMessage **resp, rpc_status *st, lk_err *err) {
  size_t len = 0;
  lk_status rc = LK_OK;
  *resp = NULL;
  unsigned char *buf = pack(req, &len);
  if (buf == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory packing an etcd request");
  int64_t deadline = lk_now_ms() + e->deadline_ms;
  int64_t pause = UNARY_PAUSE_MIN_MS;
  size_t first = atomic_load(&e->current) % e->n;
  size_t tried = 0;
  st->code = GRPC_STATUS_UNAVAILABLE;
  st->endpoint = first;
  snprintf(st->details, sizeof(st->details), "no endpoint tried");
  for (;;) {
    for (size_t k = 0; k < e->n; k++) {
      size_t idx = (first + k) % e->n;
      int64_t left = deadline - lk_now_ms();
      if (left <= 0)
        goto failed;
      int64_t slot = left / (int64_t)(e->n - k);
      if (slot < 1)
        slot = 1;
      grpc_byte_buffer *bb = NULL;
      tried++;
      call_once(e->ch[idx], method, buf, len, slot, st, &bb);
      st->endpoint = idx;
      if (st->code == GRPC_STATUS_OK) {
        size_t n = 0;
        *resp = bb_unpack(rd, bb, &n);
        if (*resp == NULL) {
          rc = lk_fail(err, LK_INTERNAL,
                       "etcd at %s sent a malformed %s response (%zu bytes)",
                       e->endpoints[idx], method, n);
          goto cleanup;
        }
        if (idx != first)
          lk_log(LK_LOG_WARN, "etcd_failover", "etcd: now using %s",
                 e->endpoints[idx]);
        atomic_store(&e->current, idx);
        goto cleanup;
      }
      if (st->code != GRPC_STATUS_UNAVAILABLE &&
          st->code != GRPC_STATUS_DEADLINE_EXCEEDED)
        goto failed;
      /* Let the next call on this channel reconnect at once instead of
       * waiting out grpc's reconnect backoff. */
      grpc_channel_reset_connect_backoff(e->ch[idx]);
    }
    if (deadline - lk_now_ms() <= pause)
      break;
    channels_poll(e->ch, e->n, pause);
    pause = pause * 2 > UNARY_PAUSE_MAX_MS ? UNARY_PAUSE_MAX_MS : pause * 2;
  }
failed:
  if (st->code == GRPC_STATUS_UNAVAILABLE ||
      st->code == GRPC_STATUS_DEADLINE_EXCEEDED) {
    char msg[512];
    snprintf(msg, sizeof(msg),
             "etcd at %s unreachable: %s (%zu attempts over %zu endpoints "
             "within %lld ms)",
             e->endpoints[st->endpoint], st->details, tried, e->n,
             (long long)e->deadline_ms);
    lk_log(LK_LOG_WARN, "etcd_unavailable", "%s", msg);
    rc = lk_fail(err, LK_UNAVAILABLE, "%s", msg);
    goto cleanup;
  }
  rc = map_status(e, method, st, err);
cleanup:
  lk_wipe_free(buf, len);
  return rc;
}

/* ---- open / close ------------------------------------------------------ */

/* Parses one endpoint token (trimmed, scheme stripped) into a malloc'd
 * grpc target. */
static lk_status parse_endpoint(const char *tok, size_t n, char **out,
                                lk_err *err) {
  while (n > 0 && (*tok == ' ' || *tok == '\t')) {
    tok++;
    n--;
  }
  while (n > 0 && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
    n--;
  if (n >= 8 && strncmp(tok, "https://", 8) == 0)
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "etcd endpoint %.*s: TLS to etcd is not supported; use "
                   "http:// or host:port",
                   (int)(n > MAX_ENDPOINT_BYTES ? MAX_ENDPOINT_BYTES : n), tok);
  if (n >= 7 && strncmp(tok, "http://", 7) == 0) {
    tok += 7;
    n -= 7;
  }
  while (n > 0 && tok[n - 1] == '/')
    n--;
  if (n == 0 || n > MAX_ENDPOINT_BYTES || memchr(tok, ':', n) == NULL)
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "etcd endpoint \"%.*s\" is not host:port",
                   (int)(n > MAX_ENDPOINT_BYTES ? MAX_ENDPOINT_BYTES : n), tok);
  *out = strndup(tok, n);
  if (*out == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  return LK_OK;
}

lk_status lk_etcd_open(const char *endpoints, const char *prefix, lk_etcd **out,
                       lk_err *err) {
  lk_status rc = LK_OK;
  *out = NULL;
  if (endpoints == NULL || prefix == NULL || prefix[0] == '\0')
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "etcd endpoints and a non-empty key prefix are required");
  if (strlen(prefix) > MAX_KEY_BYTES)
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "etcd key prefix is longer than %u bytes", MAX_KEY_BYTES);
  lk_etcd *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  grpc_init();
  e->deadline_ms = LK_ETCD_DEADLINE_MS;
  e->prefix = strdup(prefix);
  if (e->prefix == NULL) {
    rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  e->prefix_len = strlen(prefix);
  /* The prefix with its last byte changed, then the name: it differs from
   * every key under the prefix at the prefix's last byte. */
  e->fence_len = e->prefix_len - 1 + 1 + sizeof(FENCE_NAME) - 1;
  e->fence = malloc(e->fence_len + 1);
  if (e->fence == NULL) {
    rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  memcpy(e->fence, prefix, e->prefix_len - 1);
  e->fence[e->prefix_len - 1] = prefix[e->prefix_len - 1] == '.' ? '_' : '.';
  memcpy(e->fence + e->prefix_len, FENCE_NAME, sizeof(FENCE_NAME));
  const char *p = endpoints;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
    if (e->n == LK_ETCD_MAX_ENDPOINTS) {
      rc = lk_fail(err, LK_INVALID_ARGUMENT, "more than %d etcd endpoints",
                   LK_ETCD_MAX_ENDPOINTS);
      goto cleanup;
    }
    rc = parse_endpoint(p, n, &e->endpoints[e->n], err);
    if (rc != LK_OK)
      goto cleanup;
    e->n++;
    if (comma == NULL)
      break;
    p = comma + 1;
  }

  grpc_arg args[7];
  memset(args, 0, sizeof(args));
  const struct {
    const char *key;
    int value;
  } ints[7] = {
      {GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, LK_ETCD_MAX_RECV_BYTES},
      /* Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: grpc also uses it as the
       * connect timeout, and 100 ms cuts handshakes short. */
      {GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, WATCH_BACKOFF_MIN_MS},
      {GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, WATCH_BACKOFF_MAX_MS},
      /* Find a dead peer under an idle watch; etcd's keepalive policy
       * allows pings every 5 s. */
      {GRPC_ARG_KEEPALIVE_TIME_MS, 10000},
      {GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000},
      {GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0},
      /* This client's reconnect state is its own. */
      {GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1},
  };
  for (size_t i = 0; i < 7; i++) {
    args[i].type = GRPC_ARG_INTEGER;
    args[i].key = (char *)ints[i].key;
    args[i].value.integer = ints[i].value;
  }
  grpc_channel_args cargs = {7, args};
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  for (size_t i = 0; i < e->n; i++)
    e->ch[i] = grpc_channel_create(e->endpoints[i], creds, &cargs);
  grpc_channel_credentials_release(creds);
  *out = e;
  return LK_OK;
cleanup:
  lk_etcd_close(e);
  return rc;
}

void lk_etcd_close(lk_etcd *e) {
  if (e == NULL)
    return;
  for (size_t i = 0; i < LK_ETCD_MAX_ENDPOINTS; i++) {
    if (e->ch[i] != NULL)
      grpc_channel_destroy(e->ch[i]);
    free(e->endpoints[i]);
  }
  free(e->prefix);
  free(e->fence);
  free(e);
  grpc_shutdown();
}

/* ---- get / range / compact --------------------------------------------- */

lk_status lk_etcd_get(lk_etcd *e, const char *key, unsigned char **val,
                      size_t *len, int64_t *mod_revision, lk_err *err) {
  lk_status rc;
  size_t klen = 0;
  Etcdserverpb__RangeResponse *r = NULL;
  rpc_status st;
  *val = NULL;
  *len = 0;
  rc = check_rel("key", key, err);
  if (rc != LK_OK)
    return rc;
  char *full = full_key(e, key, &klen);
  if (full == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
  req.key.data = (uint8_t *)full;
  req.key.len = klen;
  rc = unary(e, M_RANGE, &req.base, &etcdserverpb__range_response__descriptor,
             (ProtobufCMessage **)&r, &st, err);
  if (rc != LK_OK)
    goto cleanup;
  if (r->n_kvs == 0) {
    rc = lk_fail(err, LK_NOT_FOUND, "etcd key %s not found", key);
    goto cleanup;
  }
  const Etcdserverpb__KeyValue *kv = r->kvs[0];
  unsigned char *copy = malloc(kv->value.len + 1);
  if (copy == NULL) {
    rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  if (kv->value.len > 0)
    memcpy(copy, kv->value.data, kv->value.len);
  copy[kv->value.len] = '\0';
  *val = copy;
  *len = kv->value.len;
  if (mod_revision != NULL)
    *mod_revision = kv->mod_revision;
cleanup:
  msg_free(r);
  free(full);
  return rc;
}

const char *lk_etcd_fence_key(const lk_etcd *e) {
  return e->fence;
}

size_t lk_etcd_full_key(const lk_etcd *e, const char *rel, char *out,
                        size_t cap) {
  size_t len = 0;
  char *k = full_key(e, rel, &len);
  if (k == NULL || len + 1 > cap) {
    if (cap > 0)
      out[0] = '\0';
    free(k);
    return 0;
  }
  memcpy(out, k, len + 1);
  free(k);
  return len;
}

void lk_etcd_value_free(unsigned char *val, size_t len) {
  if (val != NULL)
    lk_wipe_free(val, len + 1);
}

static int64_t probe_compact_revision(lk_etcd *e, const char *key,
                                      size_t key_len, const char *end,
                                      size_t end_len, int64_t revision);

lk_status lk_etcd_range(lk_etcd *e, const char *prefix, int64_t at_revision,
                        lk_etcd_kv_fn fn, void *ctx, int64_t *header_revision,
                        lk_err *err) {
  lk_status rc;
  size_t klen = 0;
  size_t elen = 0;
  char *cur = NULL;
  char *end = NULL;
  keybuf kb = {NULL, 0};
  Etcdserverpb__RangeResponse *r = NULL;
  rpc_status st;
  rc = check_scan_prefix("range prefix", prefix, err);
  if (rc != LK_OK)
    return rc;
  if (at_revision < 0)
    return lk_fail(err, LK_INVALID_ARGUMENT, "etcd revision %lld is negative",
                   (long long)at_revision);
  cur = full_key(e, prefix, &klen);
  if (cur == NULL) {
    rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  end = range_end(cur, klen, &elen);
  if (end == NULL) {
    rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  size_t cur_len = klen;
  int64_t rev = at_revision;
  for (;;) {
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)cur;
    req.key.len = cur_len;
    req.range_end.data = (uint8_t *)end;
    req.range_end.len = elen;
    req.limit = LK_ETCD_RANGE_PAGE;
    req.revision = rev;
    rc = unary(e, M_RANGE, &req.base, &etcdserverpb__range_response__descriptor,
               (ProtobufCMessage **)&r, &st, err);
    if (rc == LK_FAILED_PRECONDITION && st.code == GRPC_STATUS_OUT_OF_RANGE) {
      char *k = full_key(e, prefix, &klen);
      int64_t compact =
          k != NULL ? probe_compact_revision(e, k, klen, end, elen, rev) : 0;
      free(k);
      rc = lk_fail(err, LK_FAILED_PRECONDITION,
                   "etcd revision %lld has been compacted (compact revision "
                   "%lld); take a new snapshot at the latest revision",
                   (long long)rev, (long long)compact);
      goto cleanup;
    }
    if (rc != LK_OK)
      goto cleanup;
    if (rev == 0) {
      rev = r->header != NULL ? r->header->revision : 0;
      if (rev <= 0) {
        rc = lk_fail(err, LK_INTERNAL,
                     "etcd sent a Range response without a revision");
        goto cleanup;
      }
    }
    int stop = 0;
    for (size_t i = 0; i < r->n_kvs && !stop; i++) {
      const Etcdserverpb__KeyValue *kv = r->kvs[i];
      const char *rel = key_strip(e, &kb, kv->key);
      if (rel == NULL) {
        rc = lk_fail(err, LK_INTERNAL,
                     "etcd returned a key outside prefix %s (or too long)",
                     e->prefix);
        goto cleanup;
      }
      stop = fn(ctx, rel, kv->value.data, kv->value.len, kv->mod_revision) != 0;
    }
    int more = !stop && r->more && r->n_kvs > 0;
    if (more) {
      /* The next page starts just after the last key: key + "\0". */
      ProtobufCBinaryData last = r->kvs[r->n_kvs - 1]->key;
      char *next = malloc(last.len + 1);
      if (next == NULL) {
        rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
        goto cleanup;
      }
      memcpy(next, last.data, last.len);
      next[last.len] = '\0';
      free(cur);
      cur = next;
      cur_len = last.len + 1;
    }
    msg_free(r);
    r = NULL;
    if (!more)
      break;
  }
  if (header_revision != NULL)
    *header_revision = rev;
cleanup:
  msg_free(r);
  free(kb.p);
  free(cur);
  free(end);
  return rc;
}

lk_status lk_etcd_compact(lk_etcd *e, int64_t revision, lk_err *err) {
  rpc_status st;
  Etcdserverpb__CompactionResponse *r = NULL;
  Etcdserverpb__CompactionRequest req = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
  if (revision <= 0)
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "etcd compaction revision must be positive");
  req.revision = revision;
  req.physical = 1;
  lk_status rc = unary(e, M_COMPACT, &req.base,
                       &etcdserverpb__compaction_response__descriptor,
                       (ProtobufCMessage **)&r, &st, err);
  if (rc == LK_FAILED_PRECONDITION && st.code == GRPC_STATUS_OUT_OF_RANGE)
    rc = lk_fail(err, LK_FAILED_PRECONDITION,
                 "etcd revision %lld is already compacted: %s",
                 (long long)revision, st.details);
  else if (rc == LK_INVALID_ARGUMENT && st.code == GRPC_STATUS_OUT_OF_RANGE)
    rc = lk_fail(err, LK_INVALID_ARGUMENT,
                 "etcd revision %lld is in the future: %s", (long long)revision,
                 st.details);
  msg_free(r);
  return rc;
}

/* ---- transactions ------------------------------------------------------ */

typedef enum { OP_PUT, OP_DELETE, OP_DELETE_PREFIX } txn_kind;

typedef struct {
  txn_kind kind;
  char *key; /* relative */
  unsigned char *val;
  size_t len;
} txn_op;

typedef struct {
  char *key; /* relative */
  int64_t mod_revision;
  unsigned char *val; /* a value compare when non-NULL */
  size_t len;
} txn_cmp;

struct lk_etcd_txn {
  txn_op ops[LK_ETCD_MAX_TXN_OPS];
  size_t n_ops;
  txn_cmp cmps[LK_ETCD_MAX_TXN_OPS];
  size_t n_cmps;
  size_t bytes;
  lk_status poison;
  char poison_msg[200];
};

lk_etcd_txn *lk_etcd_txn_new(void) {
  return calloc(1, sizeof(lk_etcd_txn));
}

static void txn_poison(lk_etcd_txn *t, lk_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void txn_poison(lk_etcd_txn *t, lk_status code, const char *fmt, ...) {
  if (t->poison != LK_OK)
    return;
  va_list ap;
  t->poison = code;
  va_start(ap, fmt);
  vsnprintf(t->poison_msg, sizeof(t->poison_msg), fmt, ap);
  va_end(ap);
}

/* Copies key into the txn after the checks every builder call shares;
 * NULL (txn poisoned) when it does not fit. */
static char *txn_key(lk_etcd_txn *t, const char *key, size_t extra) {
  if (t->poison != LK_OK)
    return NULL;
  if (key == NULL || strlen(key) > MAX_KEY_BYTES) {
    txn_poison(t, LK_INVALID_ARGUMENT,
               "etcd txn key is NULL or longer than %u bytes", MAX_KEY_BYTES);
    return NULL;
  }
  size_t kl = strlen(key);
  if (extra > LK_ETCD_MAX_TXN_BYTES ||
      t->bytes + kl + extra > LK_ETCD_MAX_TXN_BYTES) {
    txn_poison(t, LK_RESOURCE_EXHAUSTED,
               "etcd txn holds more than %u bytes of keys and values",
               LK_ETCD_MAX_TXN_BYTES);
    return NULL;
  }
  char *k = strdup(key);
  if (k == NULL) {
    txn_poison(t, LK_RESOURCE_EXHAUSTED, "out of memory building an etcd txn");
    return NULL;
  }
  t->bytes += kl + extra;
  return k;
}

void lk_etcd_txn_expect_mod_revision(lk_etcd_txn *t, const char *key,
                                     int64_t mod_revision) {
  if (t == NULL)
    return;
  if (t->poison == LK_OK && t->n_cmps == LK_ETCD_MAX_TXN_OPS) {
    txn_poison(t, LK_INVALID_ARGUMENT,
               "etcd txn has more than %d compares (etcd --max-txn-ops)",
               LK_ETCD_MAX_TXN_OPS);
    return;
  }
  if (t->poison == LK_OK && mod_revision < 0) {
    txn_poison(t, LK_INVALID_ARGUMENT, "etcd txn expects a negative revision");
    return;
  }
  char *k = txn_key(t, key, 0);
  if (k == NULL)
    return;
  t->cmps[t->n_cmps].key = k;
  t->cmps[t->n_cmps].mod_revision = mod_revision;
  t->n_cmps++;
}

void lk_etcd_txn_expect_value(lk_etcd_txn *t, const char *key,
                              const unsigned char *val, size_t len) {
  if (t == NULL)
    return;
  if (t->poison == LK_OK && t->n_cmps == LK_ETCD_MAX_TXN_OPS) {
    txn_poison(t, LK_INVALID_ARGUMENT,
               "etcd txn has more than %d compares (etcd --max-txn-ops)",
               LK_ETCD_MAX_TXN_OPS);
    return;
  }
  if (t->poison == LK_OK && val == NULL && len > 0) {
    txn_poison(t, LK_INVALID_ARGUMENT, "etcd txn expects NULL with length %zu",
               len);
    return;
  }
  char *k = txn_key(t, key, len);
  if (k == NULL)
    return;
  unsigned char *copy = malloc(len > 0 ? len : 1);
  if (copy == NULL) {
    free(k);
    txn_poison(t, LK_RESOURCE_EXHAUSTED, "out of memory building an etcd txn");
    return;
  }
  if (len > 0)
    memcpy(copy, val, len);
  t->cmps[t->n_cmps].key = k;
  t->cmps[t->n_cmps].mod_revision = 0;
  t->cmps[t->n_cmps].val = copy;
  t->cmps[t->n_cmps].len = len;
  t->n_cmps++;
}

static void txn_add(lk_etcd_txn *t, txn_kind kind, const char *key,
                    const unsigned char *val, size_t len) {
  if (t == NULL)
    return;
  if (t->poison == LK_OK && t->n_ops == LK_ETCD_MAX_TXN_OPS) {
    txn_poison(t, LK_INVALID_ARGUMENT,
               "etcd txn has more than %d operations (etcd --max-txn-ops)",
               LK_ETCD_MAX_TXN_OPS);
    return;
  }
  if (t->poison == LK_OK && val == NULL && len > 0) {
    txn_poison(t, LK_INVALID_ARGUMENT, "etcd txn put of NULL with length %zu",
               len);
    return;
  }
  char *k = txn_key(t, key, len);
  if (k == NULL)
    return;
  unsigned char *copy = NULL;
  if (kind == OP_PUT) {
    copy = malloc(len > 0 ? len : 1);
    if (copy == NULL) {
      free(k);
      txn_poison(t, LK_RESOURCE_EXHAUSTED,
                 "out of memory building an etcd txn");
      return;
    }
    if (len > 0)
      memcpy(copy, val, len);
  }
  txn_op *op = &t->ops[t->n_ops++];
  op->kind = kind;
  op->key = k;
  op->val = copy;
  op->len = kind == OP_PUT ? len : 0;
}

void lk_etcd_txn_put(lk_etcd_txn *t, const char *key, const unsigned char *val,
                     size_t len) {
  txn_add(t, OP_PUT, key, val, len);
}

void lk_etcd_txn_delete(lk_etcd_txn *t, const char *key) {
  txn_add(t, OP_DELETE, key, NULL, 0);
}

void lk_etcd_txn_delete_prefix(lk_etcd_txn *t, const char *prefix) {
  txn_add(t, OP_DELETE_PREFIX, prefix, NULL, 0);
}

void lk_etcd_txn_destroy(lk_etcd_txn *t) {
  if (t == NULL)
    return;
  for (size_t i = 0; i < t->n_ops; i++) {
    free(t->ops[i].key);
    if (t->ops[i].val != NULL)
      lk_wipe_free(t->ops[i].val, t->ops[i].len > 0 ? t->ops[i].len : 1);
  }
  for (size_t i = 0; i < t->n_cmps; i++) {
    free(t->cmps[i].key);
    if (t->cmps[i].val != NULL)
      lk_wipe_free(t->cmps[i].val, t->cmps[i].len > 0 ? t->cmps[i].len : 1);
  }
  free(t);
}

/* The wire form of one txn: every message and key a commit needs, freed in
 * one place. */
typedef struct {
  Etcdserverpb__Compare cmp[LK_ETCD_MAX_TXN_OPS];
  Etcdserverpb__Compare *cmpp[LK_ETCD_MAX_TXN_OPS];
  Etcdserverpb__RequestOp ok[LK_ETCD_MAX_TXN_OPS];
  Etcdserverpb__RequestOp *okp[LK_ETCD_MAX_TXN_OPS];
  Etcdserverpb__PutRequest put[LK_ETCD_MAX_TXN_OPS];
  Etcdserverpb__DeleteRangeRequest del[LK_ETCD_MAX_TXN_OPS];
  /* Failure branch: read each compared key, to name the one that moved. */
  Etcdserverpb__RequestOp bad[LK_ETCD_MAX_TXN_OPS];
  Etcdserverpb__RequestOp *badp[LK_ETCD_MAX_TXN_OPS];
  Etcdserverpb__RangeRequest get[LK_ETCD_MAX_TXN_OPS];
  char *keys[3 * LK_ETCD_MAX_TXN_OPS];
  size_t n_keys;
} txn_wire;

static char *wire_key(txn_wire *w, char *k) {
  if (k != NULL)
    w->keys[w->n_keys++] = k;
  return k;
}

/* Returns 1 when compare c fails against the failure branch's read rr. */
static int cmp_failed(const txn_cmp *c, const Etcdserverpb__RangeResponse *rr) {
  if (c->val != NULL) {
    return rr->n_kvs == 0 || rr->kvs[0]->value.len != c->len ||
           (c->len > 0 && memcmp(rr->kvs[0]->value.data, c->val, c->len) != 0);
  }
  int64_t now = rr->n_kvs > 0 ? rr->kvs[0]->mod_revision : 0;
  return now != c->mod_revision;
}

/* Names the first compared key whose compare failed, from the failure
 * branch's reads, into out (keys outside the prefix by their full name). */
static void conflict_key(const lk_etcd *e, const lk_etcd_txn *t,
                         const Etcdserverpb__TxnResponse *r, char *out,
                         size_t cap) {
  const char *k = t->n_cmps > 0 ? t->cmps[0].key : "?";
  for (size_t i = 0; i < t->n_cmps && i < r->n_responses; i++) {
    const Etcdserverpb__ResponseOp *op = r->responses[i];
    if (op->response_case != ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE)
      continue;
    if (cmp_failed(&t->cmps[i], op->response_range)) {
      k = t->cmps[i].key;
      break;
    }
  }
  if (!is_outside(k) || lk_etcd_full_key(e, k, out, cap) == 0)
    snprintf(out, cap, "%s", k);
}

lk_status lk_etcd_txn_commit(lk_etcd *e, lk_etcd_txn *t, int64_t *revision,
                             lk_err *err) {
  lk_status rc = LK_OK;
  rpc_status st;
  Etcdserverpb__TxnResponse *r = NULL;
  if (t == NULL)
    return lk_fail(err, LK_INVALID_ARGUMENT, "etcd txn is NULL");
  if (t->poison != LK_OK)
    return lk_fail(err, t->poison, "%s", t->poison_msg);
  txn_wire *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
  for (size_t i = 0; i < t->n_cmps; i++) {
    size_t kl = 0;
    char *k = wire_key(w, full_key(e, t->cmps[i].key, &kl));
    if (k == NULL)
      goto oom;
    Etcdserverpb__Compare c = ETCDSERVERPB__COMPARE__INIT;
    c.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
    c.key.data = (uint8_t *)k;
    c.key.len = kl;
    if (t->cmps[i].val != NULL) {
      c.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE;
      c.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
      c.value.data = t->cmps[i].val;
      c.value.len = t->cmps[i].len;
    } else {
      c.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
      c.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
      c.mod_revision = t->cmps[i].mod_revision;
    }
    w->cmp[i] = c;
    w->cmpp[i] = &w->cmp[i];
    Etcdserverpb__RangeRequest g = ETCDSERVERPB__RANGE_REQUEST__INIT;
    g.key = c.key;
    g.keys_only = t->cmps[i].val == NULL;
    w->get[i] = g;
    Etcdserverpb__RequestOp b = ETCDSERVERPB__REQUEST_OP__INIT;
    b.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
    b.request_range = &w->get[i];
    w->bad[i] = b;
    w->badp[i] = &w->bad[i];
  }
  for (size_t i = 0; i < t->n_ops; i++) {
    const txn_op *op = &t->ops[i];
    size_t kl = 0;
    char *k = wire_key(w, full_key(e, op->key, &kl));
    if (k == NULL)
      goto oom;
    Etcdserverpb__RequestOp o = ETCDSERVERPB__REQUEST_OP__INIT;
    if (op->kind == OP_PUT) {
      Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
      p.key.data = (uint8_t *)k;
      p.key.len = kl;
      p.value.data = op->val;
      p.value.len = op->len;
      w->put[i] = p;
      o.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
      o.request_put = &w->put[i];
    } else {
      Etcdserverpb__DeleteRangeRequest d =
          ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
      d.key.data = (uint8_t *)k;
      d.key.len = kl;
      if (op->kind == OP_DELETE_PREFIX) {
        size_t el = 0;
        char *end = wire_key(w, range_end(k, kl, &el));
        if (end == NULL)
          goto oom;
        d.range_end.data = (uint8_t *)end;
        d.range_end.len = el;
      }
      w->del[i] = d;
      o.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
      o.request_delete_range = &w->del[i];
    }
    w->ok[i] = o;
    w->okp[i] = &w->ok[i];
  }
  req.n_compare = t->n_cmps;
  req.compare = w->cmpp;
  req.n_success = t->n_ops;
  req.success = w->okp;
  req.n_failure = t->n_cmps;
  req.failure = w->badp;
  rc = unary(e, M_TXN, &req.base, &etcdserverpb__txn_response__descriptor,
             (ProtobufCMessage **)&r, &st, err);
  if (rc != LK_OK)
    goto cleanup;
  if (!r->succeeded) {
    char key[256];
    conflict_key(e, t, r, key, sizeof(key));
    rc = lk_fail(err, LK_FAILED_PRECONDITION,
                 "conflict: %s changed concurrently; retry", key);
    goto cleanup;
  }
  if (revision != NULL)
    *revision = r->header != NULL ? r->header->revision : 0;
  goto cleanup;
oom:
  rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
cleanup:
  msg_free(r);
  for (size_t i = 0; i < w->n_keys; i++)
    free(w->keys[i]);
  free(w);
  return rc;
}

/* ---- watch streams ----------------------------------------------------- */

/* Tags of a watch stream's batches. */
enum { TAG_START = 1, TAG_STATUS = 2, TAG_RECV = 3 };

typedef enum { WS_MSG, WS_END, WS_TIMEOUT, WS_BAD } ws_result;

/* One Watch call and its completion queue. */
typedef struct {
  grpc_completion_queue *cq;
  grpc_call *call;
  grpc_metadata md[1];
  grpc_metadata_array init_md;
  grpc_metadata_array trail_md;
  grpc_status_code status;
  grpc_slice details;
  grpc_byte_buffer *send;
  grpc_byte_buffer *recv;
  int start_pending;
  int status_pending;
  int recv_pending;
  int ended; /* a RECV_MESSAGE came back empty: no more messages */
} wstream;

/* Opens a Watch call on ch and sends the create request req (len bytes).
 * Returns 0, or -1 (ws already closed-safe) when grpc refuses a batch. */
static int ws_open(wstream *ws, grpc_channel *ch, const unsigned char *req,
                   size_t len, gpr_timespec deadline) {
  memset(ws, 0, sizeof(*ws));
  ws->cq = grpc_completion_queue_create_for_next(NULL);
  ws->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, ws->cq,
                                      grpc_slice_from_static_string(M_WATCH),
                                      NULL, deadline, NULL);
  grpc_metadata_array_init(&ws->init_md);
  grpc_metadata_array_init(&ws->trail_md);
  ws->details = grpc_empty_slice();
  ws->status = GRPC_STATUS_UNKNOWN;
  ws->send = bb_from(req, len);
  if (ws->send == NULL)
    return -1;
  /* etcd cancels a watch stream that loses its leader only when asked;
   * then this client fails over instead of waiting on a partitioned
   * member. */
  ws->md[0].key = grpc_slice_from_static_string("hasleader");
  ws->md[0].value = grpc_slice_from_static_string("true");
  grpc_op ops[3];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = 1;
  ops[0].data.send_initial_metadata.metadata = ws->md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = ws->send;
  ops[2].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[2].data.recv_initial_metadata.recv_initial_metadata = &ws->init_md;
  if (grpc_call_start_batch(ws->call, ops, 3, (void *)(intptr_t)TAG_START,
                            NULL) != GRPC_CALL_OK)
    return -1;
  ws->start_pending = 1;
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &ws->trail_md;
  ops[0].data.recv_status_on_client.status = &ws->status;
  ops[0].data.recv_status_on_client.status_details = &ws->details;
  if (grpc_call_start_batch(ws->call, ops, 1, (void *)(intptr_t)TAG_STATUS,
                            NULL) != GRPC_CALL_OK)
    return -1;
  ws->status_pending = 1;
  return 0;
}

/* Handles one completion of ws's queue; returns its tag. */
static int ws_complete(wstream *ws, grpc_event ev) {
  int tag = (int)(intptr_t)ev.tag;
  if (tag == TAG_START) {
    ws->start_pending = 0;
    grpc_byte_buffer_destroy(ws->send);
    ws->send = NULL;
  } else if (tag == TAG_STATUS) {
    ws->status_pending = 0;
  } else if (tag == TAG_RECV) {
    ws->recv_pending = 0;
    if (ws->recv == NULL)
      ws->ended = 1;
  }
  return tag;
}

/* Waits up to timeout_ms for the next WatchResponse. WS_MSG with *out set
 * (free with msg_free); WS_END once the stream is over and its status is
 * in ws->status/details; WS_TIMEOUT; WS_BAD for an unparsable message. */
static ws_result ws_next(wstream *ws, int64_t timeout_ms,
                         Etcdserverpb__WatchResponse **out, size_t *nbytes) {
  *out = NULL;
  *nbytes = 0;
  if (!ws->recv_pending && !ws->ended) {
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &ws->recv;
    ws->recv = NULL;
    if (grpc_call_start_batch(ws->call, &op, 1, (void *)(intptr_t)TAG_RECV,
                              NULL) != GRPC_CALL_OK) {
      /* Cancel so the status batch completes and the stream ends. */
      grpc_call_cancel(ws->call, NULL);
      ws->ended = 1;
    } else
      ws->recv_pending = 1;
  }
  gpr_timespec until = ms_from_now(timeout_ms);
  for (;;) {
    if (ws->ended && !ws->status_pending)
      return WS_END;
    grpc_event ev = grpc_completion_queue_next(ws->cq, until, NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT)
      return WS_TIMEOUT;
    if (ev.type != GRPC_OP_COMPLETE)
      return WS_END;
    if (ws_complete(ws, ev) == TAG_RECV && ws->recv != NULL) {
      grpc_byte_buffer *bb = ws->recv;
      ws->recv = NULL;
      *out = (Etcdserverpb__WatchResponse *)bb_unpack(
          &etcdserverpb__watch_response__descriptor, bb, nbytes);
      return *out != NULL ? WS_MSG : WS_BAD;
    }
  }
}

/* Cancels the call, drains its pending batches, releases everything. */
static void ws_close(wstream *ws) {
  if (ws->call != NULL) {
    grpc_call_cancel(ws->call, NULL);
    while (ws->start_pending || ws->status_pending || ws->recv_pending) {
      grpc_event ev = grpc_completion_queue_next(
          ws->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
      if (ev.type != GRPC_OP_COMPLETE)
        break;
      ws_complete(ws, ev);
    }
    bb_wipe_destroy(ws->recv);
    ws->recv = NULL;
    grpc_call_unref(ws->call);
    ws->call = NULL;
  }
  if (ws->cq != NULL)
    cq_destroy(ws->cq);
  ws->cq = NULL;
  if (ws->send != NULL)
    grpc_byte_buffer_destroy(ws->send);
  ws->send = NULL;
  grpc_slice_unref(ws->details);
  grpc_metadata_array_destroy(&ws->init_md);
  grpc_metadata_array_destroy(&ws->trail_md);
}

/* Packs a WatchRequest creating a watch on [key, end) from revision. */
static unsigned char *pack_create(const char *key, size_t key_len,
                                  const char *end, size_t end_len,
                                  int64_t revision, int progress, size_t *len) {
  Etcdserverpb__WatchCreateRequest c = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
  c.key.data = (uint8_t *)key;
  c.key.len = key_len;
  c.range_end.data = (uint8_t *)end;
  c.range_end.len = end_len;
  c.start_revision = revision;
  c.progress_notify = progress;
  c.fragment = 1;
  Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
  wr.request_union_case =
      ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
  wr.create_request = &c;
  return pack(&wr.base, len);
}

/* Asks etcd (through a short-lived watch from revision) for its compact
 * revision; 0 when it cannot tell within the deadline. */
static int64_t probe_compact_revision(lk_etcd *e, const char *key,
                                      size_t key_len, const char *end,
                                      size_t end_len, int64_t revision) {
  size_t len = 0;
  int64_t compact = 0;
  unsigned char *req =
      pack_create(key, key_len, end, end_len, revision, 0, &len);
  if (req == NULL)
    return 0;
  int64_t deadline = lk_now_ms() + e->deadline_ms;
  wstream ws;
  size_t idx = atomic_load(&e->current) % e->n;
  if (ws_open(&ws, e->ch[idx], req, len, ms_from_now(e->deadline_ms)) == 0) {
    for (;;) {
      Etcdserverpb__WatchResponse *m = NULL;
      size_t n = 0;
      int64_t left = deadline - lk_now_ms();
      if (left <= 0 || ws_next(&ws, left, &m, &n) != WS_MSG)
        break;
      int done = m->compact_revision > 0 || m->canceled || m->n_events > 0;
      if (m->compact_revision > 0)
        compact = m->compact_revision;
      msg_free(m);
      if (done)
        break;
    }
  }
  ws_close(&ws);
  lk_wipe_free(req, len);
  return compact;
}

/* ---- watch thread ------------------------------------------------------ */

struct lk_etcd_watch {
  lk_etcd *e;
  char *key;
  size_t key_len;
  char *end;
  size_t end_len;
  lk_etcd_event_fn on_event;
  lk_etcd_batch_end_fn on_batch_end;
  lk_etcd_watch_error_fn on_error;
  void *ctx;
  _Atomic int64_t next_rev;
  pthread_t thread;
  int started;
  int join_claimed;
  pthread_mutex_t mu;
  int stopping;      /* guarded by mu */
  grpc_call *active; /* guarded by mu: the live call, for stop to cancel */
  /* Thread-only state. */
  keybuf kb;
  Etcdserverpb__WatchResponse **frags;
  size_t n_frags;
  size_t frag_cap;
  size_t frag_bytes;
};

typedef enum { W_BROKEN, W_STOP } w_outcome;

static int watch_stopping(lk_etcd_watch *w) {
  pthread_mutex_lock(&w->mu);
  int s = w->stopping;
  pthread_mutex_unlock(&w->mu);
  return s;
}

static void watch_report(lk_etcd_watch *w, lk_status code, int64_t compact,
                         const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void watch_report(lk_etcd_watch *w, lk_status code, int64_t compact,
                         const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  lk_log(code == LK_UNAVAILABLE ? LK_LOG_WARN : LK_LOG_ERROR, "etcd_watch",
         "%s", msg);
  if (w->on_error != NULL)
    w->on_error(w->ctx, code, compact, msg);
}

static void frags_clear(lk_etcd_watch *w) {
  for (size_t i = 0; i < w->n_frags; i++)
    msg_free(w->frags[i]);
  w->n_frags = 0;
  w->frag_bytes = 0;
}

/* Delivers the held fragments' events and their batch end. */
static void watch_deliver(lk_etcd_watch *w) {
  int64_t last = 0;
  for (size_t f = 0; f < w->n_frags; f++) {
    const Etcdserverpb__WatchResponse *m = w->frags[f];
    for (size_t i = 0; i < m->n_events; i++) {
      const Etcdserverpb__Event *ev = m->events[i];
      if (ev->kv == NULL)
        continue;
      const char *rel = key_strip(w->e, &w->kb, ev->kv->key);
      if (rel == NULL) {
        lk_log(LK_LOG_WARN, "etcd_watch",
               "skipped an event for a key outside prefix %s", w->e->prefix);
        continue;
      }
      int del = ev->type == ETCDSERVERPB__EVENT__EVENT_TYPE__DELETE;
      if (w->on_event != NULL)
        w->on_event(w->ctx, del, rel, del ? NULL : ev->kv->value.data,
                    del ? 0 : ev->kv->value.len, ev->kv->mod_revision);
      if (ev->kv->mod_revision > last)
        last = ev->kv->mod_revision;
    }
  }
  frags_clear(w);
  if (last > 0) {
    if (last + 1 > atomic_load(&w->next_rev))
      atomic_store(&w->next_rev, last + 1);
    if (w->on_batch_end != NULL)
      w->on_batch_end(w->ctx, last);
  }
}

/* Handles one WatchResponse (taking ownership). Returns 0 to keep going,
 * 1 when the watch has reported a fatal error and must stop. */
static int watch_handle(lk_etcd_watch *w, size_t idx,
                        Etcdserverpb__WatchResponse *m, size_t nbytes,
                        int *created) {
  if (m->compact_revision > 0) {
    int64_t c = m->compact_revision;
    msg_free(m);
    frags_clear(w);
    watch_report(w, LK_FAILED_PRECONDITION, c,
                 "etcd compacted its history past revision %lld (compact "
                 "revision %lld); take a new snapshot",
                 (long long)atomic_load(&w->next_rev), (long long)c);
    return 1;
  }
  if (m->canceled) {
    char reason[256];
    snprintf(reason, sizeof(reason), "%s",
             m->cancel_reason != NULL ? m->cancel_reason : "");
    msg_free(m);
    frags_clear(w);
    watch_report(w,
                 strstr(reason, "permission denied") != NULL
                     ? LK_PERMISSION_DENIED
                     : LK_INTERNAL,
                 0, "etcd at %s canceled the watch: %s", w->e->endpoints[idx],
                 reason[0] ? reason : "no reason given");
    return 1;
  }
  if (m->created) {
    *created = 1;
    atomic_store(&w->e->current, idx);
  }
  if (m->n_events > 0 || m->fragment) {
    if (w->n_frags == WATCH_MAX_FRAGMENTS ||
        w->frag_bytes + nbytes > WATCH_MAX_FRAGMENT_BYTES) {
      msg_free(m);
      frags_clear(w);
      watch_report(w, LK_RESOURCE_EXHAUSTED, 0,
                   "etcd watch response over %u bytes; watch stopped",
                   WATCH_MAX_FRAGMENT_BYTES);
      return 1;
    }
    if (w->n_frags == w->frag_cap) {
      size_t cap = w->frag_cap ? w->frag_cap * 2 : 8;
      Etcdserverpb__WatchResponse **p =
          realloc(w->frags, cap * sizeof(*w->frags));
      if (p == NULL) {
        msg_free(m);
        frags_clear(w);
        watch_report(w, LK_RESOURCE_EXHAUSTED, 0,
                     "out of memory holding a watch response; watch stopped");
        return 1;
      }
      w->frags = p;
      w->frag_cap = cap;
    }
    w->frags[w->n_frags++] = m;
    w->frag_bytes += nbytes;
    if (!m->fragment)
      watch_deliver(w);
    return 0;
  }
  if (!m->created && m->header != NULL) {
    /* A progress notification: nothing at or below this revision is still
     * to come. */
    int64_t rev = m->header->revision;
    if (rev > 0 && rev + 1 >= atomic_load(&w->next_rev)) {
      atomic_store(&w->next_rev, rev + 1);
      if (w->on_batch_end != NULL)
        w->on_batch_end(w->ctx, rev);
    }
  }
  msg_free(m);
  return 0;
}

/* Runs one Watch stream on endpoint idx until it breaks or the watch
 * stops; on W_BROKEN, why says what happened. */
static w_outcome watch_once(lk_etcd_watch *w, size_t idx, int *created,
                            char *why, size_t why_cap) {
  size_t len = 0;
  w_outcome out = W_BROKEN;
  wstream ws;
  unsigned char *req = pack_create(w->key, w->key_len, w->end, w->end_len,
                                   atomic_load(&w->next_rev), 1, &len);
  if (req == NULL) {
    snprintf(why, why_cap, "out of memory packing a watch request");
    return W_BROKEN;
  }
  int opened = ws_open(&ws, w->e->ch[idx], req, len,
                       gpr_inf_future(GPR_CLOCK_MONOTONIC));
  lk_wipe_free(req, len);
  pthread_mutex_lock(&w->mu);
  int stopping = w->stopping;
  if (!stopping)
    w->active = ws.call;
  pthread_mutex_unlock(&w->mu);
  if (stopping) {
    out = W_STOP;
    goto cleanup;
  }
  if (opened != 0) {
    snprintf(why, why_cap, "etcd at %s: could not start a watch call",
             w->e->endpoints[idx]);
    goto cleanup;
  }
  for (;;) {
    Etcdserverpb__WatchResponse *m = NULL;
    size_t n = 0;
    ws_result r = ws_next(&ws, WATCH_POLL_MS, &m, &n);
    if (r == WS_TIMEOUT) {
      if (watch_stopping(w)) {
        out = W_STOP;
        break;
      }
      continue;
    }
    if (r == WS_END) {
      if (watch_stopping(w)) {
        out = W_STOP;
        break;
      }
      char details[256];
      slice_to_str(ws.details, details, sizeof(details));
      snprintf(why, why_cap,
               "etcd at %s unreachable: watch stream ended (grpc code %d): %s",
               w->e->endpoints[idx], (int)ws.status, details);
      break;
    }
    if (r == WS_BAD) {
      snprintf(why, why_cap, "etcd at %s sent a malformed WatchResponse",
               w->e->endpoints[idx]);
      break;
    }
    if (watch_handle(w, idx, m, n, created) != 0) {
      out = W_STOP;
      break;
    }
  }
cleanup:
  pthread_mutex_lock(&w->mu);
  w->active = NULL;
  pthread_mutex_unlock(&w->mu);
  ws_close(&ws);
  frags_clear(w);
  return out;
}

/* Waits ms (polling ch, so its reconnect makes progress) unless the watch
 * stops first; returns 1 when stopping. */
static int watch_sleep(lk_etcd_watch *w, grpc_channel *ch, int64_t ms) {
  int64_t end = lk_now_ms() + ms;
  for (;;) {
    if (watch_stopping(w))
      return 1;
    int64_t left = end - lk_now_ms();
    if (left <= 0)
      return 0;
    channels_poll(&ch, 1, left < WATCH_SLICE_MS ? left : WATCH_SLICE_MS);
  }
}

static void *watch_main(void *arg) {
  lk_etcd_watch *w = arg;
  int64_t backoff = WATCH_BACKOFF_MIN_MS;
  size_t idx = atomic_load(&w->e->current) % w->e->n;
  for (;;) {
    char why[512] = "";
    int created = 0;
    if (watch_once(w, idx, &created, why, sizeof(why)) == W_STOP)
      break;
    if (created)
      backoff = WATCH_BACKOFF_MIN_MS;
    watch_report(w, LK_UNAVAILABLE, 0, "%s; reconnecting from revision %lld",
                 why, (long long)atomic_load(&w->next_rev));
    idx = (idx + 1) % w->e->n;
    grpc_channel_reset_connect_backoff(w->e->ch[idx]);
    if (watch_sleep(w, w->e->ch[idx], backoff))
      break;
    backoff =
        backoff * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS : backoff * 2;
  }
  return NULL;
}

lk_status lk_etcd_watch_start(lk_etcd *e, const char *prefix,
                              int64_t start_revision, lk_etcd_event_fn on_event,
                              lk_etcd_batch_end_fn on_batch_end,
                              lk_etcd_watch_error_fn on_error, void *ctx,
                              lk_etcd_watch **out, lk_err *err) {
  lk_status rc;
  *out = NULL;
  rc = check_scan_prefix("watch prefix", prefix, err);
  if (rc != LK_OK)
    return rc;
  if (start_revision < 0)
    return lk_fail(err, LK_INVALID_ARGUMENT, "etcd revision %lld is negative",
                   (long long)start_revision);
  lk_etcd_watch *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  pthread_mutex_init(&w->mu, NULL);
  w->e = e;
  w->on_event = on_event;
  w->on_batch_end = on_batch_end;
  w->on_error = on_error;
  w->ctx = ctx;
  w->key = full_key(e, prefix, &w->key_len);
  w->end = w->key != NULL ? range_end(w->key, w->key_len, &w->end_len) : NULL;
  if (w->end == NULL) {
    rc = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto cleanup;
  }
  if (start_revision == 0) {
    /* "From now": pin now to a revision so the watch misses nothing that
     * commits after this call returns, even across a reconnect. */
    rpc_status st;
    Etcdserverpb__RangeResponse *r = NULL;
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key.data = (uint8_t *)w->key;
    req.key.len = w->key_len;
    req.range_end.data = (uint8_t *)w->end;
    req.range_end.len = w->end_len;
    req.count_only = 1;
    rc = unary(e, M_RANGE, &req.base, &etcdserverpb__range_response__descriptor,
               (ProtobufCMessage **)&r, &st, err);
    if (rc != LK_OK)
      goto cleanup;
    start_revision = r->header != NULL ? r->header->revision + 1 : 1;
    msg_free(r);
  }
  atomic_store(&w->next_rev, start_revision);
  if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
    rc = lk_fail(err, LK_INTERNAL, "cannot start the etcd watch thread");
    goto cleanup;
  }
  w->started = 1;
  *out = w;
  return LK_OK;
cleanup:
  lk_etcd_watch_destroy(w);
  return rc;
}

void lk_etcd_watch_stop(lk_etcd_watch *w) {
  if (w == NULL)
    return;
  pthread_mutex_lock(&w->mu);
  w->stopping = 1;
  if (w->active != NULL)
    grpc_call_cancel(w->active, NULL);
  int join = w->started && !w->join_claimed;
  w->join_claimed = 1;
  pthread_mutex_unlock(&w->mu);
  if (join)
    pthread_join(w->thread, NULL);
}

int64_t lk_etcd_watch_next_revision(const lk_etcd_watch *w) {
  return w != NULL ? atomic_load(&w->next_rev) : 0;
}

void lk_etcd_watch_destroy(lk_etcd_watch *w) {
  if (w == NULL)
    return;
  lk_etcd_watch_stop(w);
  frags_clear(w);
  free(w->frags);
  free(w->kb.p);
  free(w->key);
  free(w->end);
  pthread_mutex_destroy(&w->mu);
  free(w);
}
