/*
 * rpc_server.c - grpc core server plumbing behind lk_rpc_server.
 *
 * Every completion-queue tag points at a struct whose first member is a
 * tag_kind, so a worker can tell request notifications from call batches.
 * A unary call's RECV_CLOSE_ON_SERVER op (which tells us about client
 * cancellation) rides in its final send batch, so a call costs grpc core
 * two batches and two completions (request, reply) instead of three: a
 * separate close batch from the start cost about a sixth of the server's
 * CPU per call (docs/PERFORMANCE.md). Only a handler that asks
 * lk_rpc_call_cancelled needs to learn of a cancel before it replies; the
 * first such question once the call is CANCEL_WATCH_AFTER_MS old starts
 * the close batch on its own. A call holds one
 * reference per batch in flight (the reply's, plus the early close
 * batch's if one was started); whichever completes last frees it on the
 * worker that accepted it.
 * Methods a listener does not serve get UNIMPLEMENTED at once from one
 * generic request per listener (grpc core would otherwise hold such calls
 * until their deadline).
 *
 * Shutdown order matters (grpc src/ruby/ext/grpc/rb_server.c does the
 * same): shutdown_and_notify every grpc_server on a private pluck queue,
 * cancel_all_calls if the grace period passes, wait until every accepted
 * call has been released (handlers finishing from other threads still
 * need the worker queues), destroy the servers, then shut the worker
 * queues down and let the workers drain them to GRPC_QUEUE_SHUTDOWN.
 *
 * Open connections come from grpc core's channelz registry (on by default,
 * GRPC_ARG_ENABLE_CHANNELZ): grpc core has no connection callback, but
 * channelz lists each server's live transports as its "server sockets".
 * grpc_server has no public accessor for its channelz id, so get_listener
 * creates servers under a process-wide lock and takes the newest server
 * id right after: channelz ids only grow and only this module creates
 * grpc servers in our daemons. The JSON channelz returns is parsed with a
 * size cap and paged through (100 entries a page).
 */
#include "lib/rpc_server.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/secret.h"

#define MAX_LISTENERS 8
#define MAX_REQUEST_BYTES (4 * 1024 * 1024)
/* lk_rpc_call_cancelled starts watching for a cancel only once a call is
 * this old: latchkeyd's forwarder asks about every call in flight, and
 * most are answered sooner, so most calls never pay for the watch. */
#define CANCEL_WATCH_AFTER_MS 10
/* Largest channelz JSON answer we parse (a page is at most 100 refs). */
#define CHANNELZ_MAX_JSON (1024 * 1024)
#define CHANNELZ_PAGE 100
/* At most this many pages per listing: 1,000,000 sockets or servers. */
#define CHANNELZ_MAX_PAGES 10000

typedef enum {
  TAG_REQUEST,
  TAG_UNKNOWN,
  TAG_CLOSE,
  TAG_SEND,
  TAG_SHUTDOWN,
  TAG_STREAM_CLOSE,
  TAG_STREAM_RECV,
  TAG_STREAM_SEND,
} tag_kind;

typedef struct {
  tag_kind kind;
  void *owner;
} tag;

/* One registered method: unary (handler) or streaming (stream). */
typedef struct {
  char *path;
  void *registered;
  lk_rpc_handler handler;
  const lk_rpc_stream_handler *stream;
  int server_streaming; /* half-close does not end the stream */
  void *ctx;
} method_entry;

#define MAX_METHODS 64

struct listener;

/* The listener's one outstanding request for methods it does not serve:
 * grpc core holds such calls until someone asks for them, so without it a
 * client calling, say, ToolCalls on a health-only listener would wait for
 * its deadline instead of getting UNIMPLEMENTED. */
typedef struct unknown_slot {
  tag t; /* first: the notification tag */
  struct listener *l;
  grpc_completion_queue *cq;
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
} unknown_slot;

typedef struct listener {
  grpc_server *server;
  char *addr;
  intptr_t channelz_id; /* 0: channelz is off or the id was not found */
  size_t n_methods;
  method_entry methods[MAX_METHODS];
  unknown_slot unknown;
} listener;

typedef struct worker worker;

typedef struct request_slot {
  tag t; /* first: the notification tag */
  worker *w;
  listener *l;
  size_t method;
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_byte_buffer *payload;
} request_slot;

struct worker {
  lk_rpc_server *srv;
  grpc_completion_queue *cq;
  pthread_t thread;
  int started;
  size_t n_slots;
  request_slot *slots;
};

struct lk_rpc_call {
  tag close_tag;
  tag send_tag;
  lk_rpc_server *srv;
  listener *l;
  size_t method;
  grpc_call *call;
  grpc_metadata_array md;
  int64_t deadline_ms;
  int64_t accepted_ms; /* lk_now_ms() when accepted */
  unsigned char *req;
  size_t req_len;
  int close_cancelled; /* written by grpc when the close batch completes */
  atomic_int closed;
  atomic_int close_started; /* a RECV_CLOSE_ON_SERVER op was started */
  atomic_int refs;
  atomic_int finished;
  grpc_op ops[4];
  grpc_byte_buffer *resp;
  grpc_slice details;
  int has_details;
};

struct lk_rpc_server {
  int n_workers;
  worker *workers;
  size_t n_listeners;
  listener listeners[MAX_LISTENERS];
  grpc_completion_queue *shutdown_cq;
  atomic_int shutting_down;
  int started;
  int stopped;
  pthread_mutex_t mu;
  pthread_cond_t calls_cv;
  long live_calls;
  struct lk_rpc_stream *streams; /* live streaming calls (mu) */
  grpc_server_credentials *tls;  /* NULL: plaintext listeners */
};

static void request_next(request_slot *slot) {
  const method_entry *m = &slot->l->methods[slot->method];
  grpc_metadata_array_init(&slot->md);
  slot->call = NULL;
  slot->payload = NULL;
  grpc_call_error e = grpc_server_request_registered_call(
      slot->l->server, m->registered, &slot->call, &slot->deadline, &slot->md,
      m->stream != NULL ? NULL : &slot->payload, slot->w->cq, slot->w->cq,
      &slot->t);
  if (e != GRPC_CALL_OK) {
    lk_log(LK_LOG_ERROR, "rpc_request_failed", "cannot request calls on %s: %s",
           slot->l->addr, grpc_call_error_to_string(e));
    grpc_metadata_array_destroy(&slot->md);
  }
}

static void request_unknown(unknown_slot *u) {
  u->call = NULL;
  grpc_call_details_init(&u->details);
  grpc_metadata_array_init(&u->md);
  grpc_call_error e = grpc_server_request_call(
      u->l->server, &u->call, &u->details, &u->md, u->cq, u->cq, &u->t);
  if (e != GRPC_CALL_OK) {
    lk_log(LK_LOG_ERROR, "rpc_request_failed",
           "cannot request unknown calls on %s: %s", u->l->addr,
           grpc_call_error_to_string(e));
    grpc_call_details_destroy(&u->details);
    grpc_metadata_array_destroy(&u->md);
  }
}

/* Answers a call to a method this listener does not serve, and asks for
 * the next one unless the server is shutting down. */
static void answer_unknown(unknown_slot *u, int success, int shutting_down) {
  grpc_call *call = success ? u->call : NULL;
  if (call != NULL) {
    grpc_call_cancel_with_status(call, GRPC_STATUS_UNIMPLEMENTED,
                                 "this listener does not serve that method",
                                 NULL);
    grpc_call_unref(call);
  }
  grpc_call_details_destroy(&u->details);
  grpc_metadata_array_destroy(&u->md);
  if (call != NULL && !shutting_down)
    request_unknown(u);
}

static void call_release(lk_rpc_call *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1)
    return;
  lk_rpc_server *srv = c->srv;
  if (c->call != NULL)
    grpc_call_unref(c->call);
  grpc_metadata_array_destroy(&c->md);
  lk_wipe_free(c->req, c->req_len);
  if (c->resp != NULL)
    grpc_byte_buffer_destroy(c->resp);
  if (c->has_details)
    grpc_slice_unref(c->details);
  free(c);
  pthread_mutex_lock(&srv->mu);
  if (--srv->live_calls == 0)
    pthread_cond_broadcast(&srv->calls_cv);
  pthread_mutex_unlock(&srv->mu);
}

/* Copies the payload into one flat buffer (wiped on release). */
static int flatten_payload(lk_rpc_call *c, grpc_byte_buffer *bb) {
  if (bb == NULL)
    return 0;
  size_t len = grpc_byte_buffer_length(bb);
  if (len > MAX_REQUEST_BYTES)
    return -1;
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, bb))
    return -1;
  c->req = malloc(len ? len : 1);
  if (c->req == NULL) {
    grpc_byte_buffer_reader_destroy(&reader);
    return -1;
  }
  grpc_slice s;
  size_t pos = 0;
  while (grpc_byte_buffer_reader_next(&reader, &s)) {
    size_t n = GRPC_SLICE_LENGTH(s);
    if (pos + n <= len)
      memcpy(c->req + pos, GRPC_SLICE_START_PTR(s), n);
    /* Admin requests carry secrets: wipe grpc's copy as we take ours. */
    if (n > 0)
      lk_wipe(GRPC_SLICE_START_PTR(s), n);
    pos += n;
    grpc_slice_unref(s);
  }
  grpc_byte_buffer_reader_destroy(&reader);
  c->req_len = pos < len ? pos : len;
  return 0;
}

static void accept_call(request_slot *slot) {
  lk_rpc_server *srv = slot->w->srv;
  lk_rpc_call *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    grpc_call_cancel_with_status(slot->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                 "server out of memory", NULL);
    grpc_call_unref(slot->call);
    grpc_metadata_array_destroy(&slot->md);
    if (slot->payload)
      grpc_byte_buffer_destroy(slot->payload);
    return;
  }
  c->close_tag = (tag){TAG_CLOSE, c};
  c->send_tag = (tag){TAG_SEND, c};
  c->srv = srv;
  c->l = slot->l;
  c->method = slot->method;
  c->call = slot->call;
  c->md = slot->md;         /* moved */
  atomic_init(&c->refs, 1); /* the reply batch's */
  atomic_init(&c->closed, 0);
  atomic_init(&c->close_started, 0);
  atomic_init(&c->finished, 0);
  c->accepted_ms = lk_now_ms();
  gpr_timespec dl = gpr_convert_clock_type(slot->deadline, GPR_CLOCK_MONOTONIC);
  if (gpr_time_cmp(dl, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == 0) {
    c->deadline_ms = INT64_MAX;
  } else {
    /* gpr's monotonic clock has its own epoch: convert via "remaining". */
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    gpr_timespec left = gpr_time_sub(dl, now);
    c->deadline_ms =
        lk_now_ms() + (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
  }
  int bad_payload = flatten_payload(c, slot->payload);
  if (slot->payload)
    grpc_byte_buffer_destroy(slot->payload);

  pthread_mutex_lock(&srv->mu);
  srv->live_calls++;
  pthread_mutex_unlock(&srv->mu);

  if (bad_payload) {
    lk_err err;
    lk_fail(&err, LK_RESOURCE_EXHAUSTED,
            "request message is over %d bytes or unreadable: send a smaller "
            "request",
            MAX_REQUEST_BYTES);
    lk_rpc_call_fail(c, &err);
    return;
  }
  const method_entry *m = &c->l->methods[c->method];
  m->handler(m->ctx, c);
}

static void stream_on_recv(lk_rpc_stream *st, int success);

/* ---- streaming calls ------------------------------------------------ */

/* Outgoing messages wait here while one SEND_MESSAGE is in flight. */
typedef struct out_msg {
  struct out_msg *next;
  grpc_byte_buffer *bb;
  size_t len;
} out_msg;

#define MAX_STREAM_QUEUE_BYTES (64 * 1024 * 1024)

struct lk_rpc_stream {
  tag close_tag;
  tag recv_tag;
  tag send_tag;
  lk_rpc_server *srv;
  const method_entry *m;
  grpc_call *call;
  grpc_metadata_array md;
  grpc_byte_buffer *recv_bb;
  int close_cancelled;
  pthread_mutex_t mu; /* guards everything below */
  int refs;           /* close + recv + send in flight + owner */
  out_msg *head;
  out_msg *tail;
  size_t queued_bytes;
  int send_inflight;
  int sent_initial_md;
  int finish_requested;
  int finish_started;
  int ended; /* on_end delivered */
  grpc_status_code finish_code;
  grpc_slice details;
  int has_details;
  grpc_op ops[3];
  grpc_byte_buffer *inflight_bb;
  struct lk_rpc_stream *prev, *next; /* the server's live streams (srv->mu) */
};

static void stream_unref_locked_out(lk_rpc_stream *st, int n) {
  pthread_mutex_lock(&st->mu);
  st->refs -= n;
  int last = st->refs == 0;
  pthread_mutex_unlock(&st->mu);
  if (!last)
    return;
  lk_rpc_server *srv = st->srv;
  while (st->head != NULL) {
    out_msg *o = st->head;
    st->head = o->next;
    grpc_byte_buffer_destroy(o->bb);
    free(o);
  }
  if (st->inflight_bb != NULL)
    grpc_byte_buffer_destroy(st->inflight_bb);
  if (st->recv_bb != NULL)
    grpc_byte_buffer_destroy(st->recv_bb);
  if (st->has_details)
    grpc_slice_unref(st->details);
  grpc_metadata_array_destroy(&st->md);
  pthread_mutex_lock(&srv->mu);
  if (st->prev != NULL)
    st->prev->next = st->next;
  else
    srv->streams = st->next;
  if (st->next != NULL)
    st->next->prev = st->prev;
  if (--srv->live_calls == 0)
    pthread_cond_broadcast(&srv->calls_cv);
  pthread_mutex_unlock(&srv->mu);
  grpc_call_unref(st->call);
  pthread_mutex_destroy(&st->mu);
  free(st);
}

/* Starts the next send batch if none is in flight. Called with mu held;
 * returns 1 when a batch was started (the caller then holds a ref). */
static int stream_pump_locked(lk_rpc_stream *st) {
  if (st->send_inflight || st->finish_started)
    return 0;
  size_t n = 0;
  memset(st->ops, 0, sizeof(st->ops));
  if (!st->sent_initial_md) {
    st->ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    st->ops[n].data.send_initial_metadata.count = 0;
    n++;
  }
  if (st->head != NULL) {
    out_msg *o = st->head;
    st->head = o->next;
    if (st->head == NULL)
      st->tail = NULL;
    st->queued_bytes -= o->len;
    st->inflight_bb = o->bb;
    free(o);
    st->ops[n].op = GRPC_OP_SEND_MESSAGE;
    st->ops[n].data.send_message.send_message = st->inflight_bb;
    n++;
  } else if (st->finish_requested) {
    st->ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    st->ops[n].data.send_status_from_server.status = st->finish_code;
    st->ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    if (st->has_details) {
      st->ops[n].data.send_status_from_server.status_details = &st->details;
    }
    n++;
    st->finish_started = 1;
  } else {
    return 0;
  }
  st->sent_initial_md = 1;
  st->send_inflight = 1;
  st->refs++;
  if (grpc_call_start_batch(st->call, st->ops, n, &st->send_tag, NULL) !=
      GRPC_CALL_OK) {
    st->send_inflight = 0;
    st->refs--;
    st->finish_started = 1; /* the call is unusable: stop sending */
    return 0;
  }
  return 1;
}

static void stream_post_recv(lk_rpc_stream *st) {
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &st->recv_bb;
  pthread_mutex_lock(&st->mu);
  st->refs++;
  pthread_mutex_unlock(&st->mu);
  if (grpc_call_start_batch(st->call, &op, 1, &st->recv_tag, NULL) !=
      GRPC_CALL_OK) {
    stream_on_recv(st, 0);
  }
}

static void stream_deliver_end(lk_rpc_stream *st, int cancelled) {
  pthread_mutex_lock(&st->mu);
  int first = !st->ended;
  st->ended = 1;
  pthread_mutex_unlock(&st->mu);
  if (first && st->m->stream->on_end != NULL)
    st->m->stream->on_end(st->m->ctx, st, cancelled);
}

static void stream_on_recv(lk_rpc_stream *st, int success) {
  if (success && st->recv_bb == NULL && st->m->server_streaming) {
    /* Half-close after the request: the call lives on, stream_on_close
     * delivers the end. */
    stream_unref_locked_out(st, 1);
    return;
  }
  if (!success || st->recv_bb == NULL) {
    /* Half-close, cancel or broken connection: no more messages. */
    stream_deliver_end(st, !success);
    stream_unref_locked_out(st, 1);
    return;
  }
  size_t len = grpc_byte_buffer_length(st->recv_bb);
  unsigned char *buf = NULL;
  if (len <= MAX_REQUEST_BYTES)
    buf = malloc(len ? len : 1);
  if (buf != NULL) {
    grpc_byte_buffer_reader reader;
    size_t pos = 0;
    if (grpc_byte_buffer_reader_init(&reader, st->recv_bb)) {
      grpc_slice sl;
      while (grpc_byte_buffer_reader_next(&reader, &sl)) {
        size_t n = GRPC_SLICE_LENGTH(sl);
        if (pos + n <= len)
          memcpy(buf + pos, GRPC_SLICE_START_PTR(sl), n);
        pos += n;
        grpc_slice_unref(sl);
      }
      grpc_byte_buffer_reader_destroy(&reader);
    }
    st->m->stream->on_message(st->m->ctx, st, buf, pos < len ? pos : len);
    lk_wipe_free(buf, len);
  }
  grpc_byte_buffer_destroy(st->recv_bb);
  st->recv_bb = NULL;
  if (buf == NULL) {
    lk_err err;
    lk_fail(&err, LK_RESOURCE_EXHAUSTED, "stream message over %d bytes",
            MAX_REQUEST_BYTES);
    lk_rpc_stream_finish(st, &err);
    stream_deliver_end(st, 1);
    stream_unref_locked_out(st, 1);
    return;
  }
  stream_post_recv(st); /* takes its own ref */
  stream_unref_locked_out(st, 1);
}

static void stream_on_sent(lk_rpc_stream *st, int success) {
  pthread_mutex_lock(&st->mu);
  st->send_inflight = 0;
  if (st->inflight_bb != NULL) {
    grpc_byte_buffer_destroy(st->inflight_bb);
    st->inflight_bb = NULL;
  }
  if (!success)
    st->finish_started = 1; /* peer gone: drop what is queued */
  else
    stream_pump_locked(st);
  pthread_mutex_unlock(&st->mu);
  stream_unref_locked_out(st, 1);
}

static void stream_on_close(lk_rpc_stream *st) {
  stream_deliver_end(st, st->close_cancelled);
  stream_unref_locked_out(st, 1);
}

static void accept_stream(request_slot *slot) {
  lk_rpc_server *srv = slot->w->srv;
  lk_rpc_stream *st = calloc(1, sizeof(*st));
  if (st == NULL) {
    grpc_call_cancel_with_status(slot->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                 "server out of memory", NULL);
    grpc_call_unref(slot->call);
    grpc_metadata_array_destroy(&slot->md);
    return;
  }
  st->close_tag = (tag){TAG_STREAM_CLOSE, st};
  st->recv_tag = (tag){TAG_STREAM_RECV, st};
  st->send_tag = (tag){TAG_STREAM_SEND, st};
  st->srv = srv;
  st->m = &slot->l->methods[slot->method];
  st->call = slot->call;
  st->md = slot->md; /* moved */
  pthread_mutex_init(&st->mu, NULL);
  st->refs = 2; /* close batch + owner (released by finish) */
  pthread_mutex_lock(&srv->mu);
  srv->live_calls++;
  st->next = srv->streams;
  if (srv->streams != NULL)
    srv->streams->prev = st;
  srv->streams = st;
  pthread_mutex_unlock(&srv->mu);

  grpc_op close_op;
  memset(&close_op, 0, sizeof(close_op));
  close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  close_op.data.recv_close_on_server.cancelled = &st->close_cancelled;
  if (grpc_call_start_batch(st->call, &close_op, 1, &st->close_tag, NULL) !=
      GRPC_CALL_OK) {
    pthread_mutex_lock(&st->mu);
    st->refs--;
    pthread_mutex_unlock(&st->mu);
  }
  if (st->m->stream->on_open != NULL)
    st->m->stream->on_open(st->m->ctx, st);
  stream_post_recv(st);
}

const char *lk_rpc_stream_metadata(const lk_rpc_stream *st, const char *key,
                                   size_t *len) {
  for (size_t i = 0; i < st->md.count; i++) {
    if (grpc_slice_str_cmp(st->md.metadata[i].key, key) == 0) {
      *len = GRPC_SLICE_LENGTH(st->md.metadata[i].value);
      return (const char *)GRPC_SLICE_START_PTR(st->md.metadata[i].value);
    }
  }
  *len = 0;
  return NULL;
}

lk_status lk_rpc_stream_send(lk_rpc_stream *st, const unsigned char *msg,
                             size_t len, lk_err *err) {
  out_msg *o = calloc(1, sizeof(*o));
  if (o == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  grpc_slice sl = grpc_slice_from_copied_buffer((const char *)msg, len);
  o->bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  o->len = len;
  pthread_mutex_lock(&st->mu);
  if (st->finish_requested || st->finish_started || st->ended) {
    pthread_mutex_unlock(&st->mu);
    grpc_byte_buffer_destroy(o->bb);
    free(o);
    return lk_fail(err, LK_UNAVAILABLE, "the stream has ended");
  }
  if (st->queued_bytes + len > MAX_STREAM_QUEUE_BYTES) {
    pthread_mutex_unlock(&st->mu);
    grpc_byte_buffer_destroy(o->bb);
    free(o);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "the peer reads too slowly: %d bytes are queued",
                   MAX_STREAM_QUEUE_BYTES);
  }
  if (st->tail != NULL)
    st->tail->next = o;
  else
    st->head = o;
  st->tail = o;
  st->queued_bytes += len;
  stream_pump_locked(st);
  pthread_mutex_unlock(&st->mu);
  return LK_OK;
}

void lk_rpc_stream_finish(lk_rpc_stream *st, const lk_err *err) {
  pthread_mutex_lock(&st->mu);
  if (st->finish_requested) {
    pthread_mutex_unlock(&st->mu);
    return;
  }
  st->finish_requested = 1;
  lk_status code = err == NULL ? LK_OK : err->code;
  st->finish_code = (grpc_status_code)lk_status_grpc_code(code);
  if (err != NULL && code != LK_OK) {
    st->details = grpc_slice_from_copied_string(
        err->msg[0] ? err->msg : lk_status_default_msg(code));
    st->has_details = 1;
  }
  stream_pump_locked(st);
  pthread_mutex_unlock(&st->mu);
  stream_unref_locked_out(st, 1); /* the owner's reference */
}

static void *worker_main(void *arg) {
  worker *w = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(
        w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
      break;
    if (ev.type != GRPC_OP_COMPLETE)
      continue;
    tag *t = ev.tag;
    switch (t->kind) {
      case TAG_REQUEST: {
        request_slot *slot = (request_slot *)t;
        if (!ev.success || slot->call == NULL) {
          grpc_metadata_array_destroy(&slot->md);
          if (slot->payload)
            grpc_byte_buffer_destroy(slot->payload);
          slot->payload = NULL;
          break; /* server shutting down: do not re-request */
        }
        request_slot taken = *slot;
        if (!atomic_load(&w->srv->shutting_down))
          request_next(slot);
        if (taken.l->methods[taken.method].stream != NULL) {
          accept_stream(&taken);
        } else {
          accept_call(&taken);
        }
        break;
      }
      case TAG_UNKNOWN:
        answer_unknown((unknown_slot *)t, ev.success,
                       atomic_load(&w->srv->shutting_down));
        break;
      case TAG_STREAM_CLOSE:
        stream_on_close(t->owner);
        break;
      case TAG_STREAM_RECV:
        stream_on_recv(t->owner, ev.success);
        break;
      case TAG_STREAM_SEND:
        stream_on_sent(t->owner, ev.success);
        break;
      case TAG_CLOSE: {
        lk_rpc_call *c = t->owner;
        atomic_store(&c->closed, 1);
        call_release(c);
        break;
      }
      case TAG_SEND: {
        lk_rpc_call *c = t->owner;
        call_release(c);
        break;
      }
      case TAG_SHUTDOWN:
        break;
    }
  }
  return NULL;
}

lk_status lk_rpc_server_new(int n_workers, lk_rpc_server **out, lk_err *err) {
  *out = NULL;
  if (n_workers < 1 || n_workers > 256) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "worker count %d is out of range 1..256", n_workers);
  }
  lk_rpc_server *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  s->workers = calloc((size_t)n_workers, sizeof(worker));
  if (s->workers == NULL) {
    free(s);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  s->n_workers = n_workers;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->calls_cv, NULL);
  atomic_init(&s->shutting_down, 0);
  s->shutdown_cq = grpc_completion_queue_create_for_pluck(NULL);
  for (int i = 0; i < n_workers; i++) {
    s->workers[i].srv = s;
    s->workers[i].cq = grpc_completion_queue_create_for_next(NULL);
  }
  *out = s;
  return LK_OK;
}

/* Prepares a Unix socket path: creates its directory (0750) when missing,
 * refuses a socket another process is still serving, and removes a stale
 * one left by a crash so a restart can bind again. */
static lk_status prepare_unix_socket(const char *addr, lk_err *err) {
  if (strncmp(addr, "unix:", 5) != 0)
    return LK_OK;
  const char *path = addr + 5;
  struct sockaddr_un sun;
  if (strlen(path) >= sizeof(sun.sun_path)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "unix socket path %s is longer than %zu bytes: use a "
                   "shorter path",
                   path, sizeof(sun.sun_path) - 1);
  }
  char dir[sizeof(sun.sun_path)];
  snprintf(dir, sizeof(dir), "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash != NULL && slash != dir) {
    *slash = '\0';
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "cannot create socket directory %s: %s", dir,
                     strerror(errno));
    }
  }
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode))
    return LK_OK;
  memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, path, strlen(path));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    int live = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
    close(fd);
    if (live) {
      return lk_fail(err, LK_UNAVAILABLE,
                     "cannot listen on %s: another process is serving it; "
                     "stop it or choose another path",
                     addr);
    }
  }
  unlink(path);
  return LK_OK;
}

/* Serialises grpc_server_create with reading the newest channelz id. */
static pthread_mutex_t create_mu = PTHREAD_MUTEX_INITIALIZER;

/* Parses (and gpr_frees) one channelz answer; NULL (an unknown id) is
 * LK_NOT_FOUND, past the size cap LK_RESOURCE_EXHAUSTED. */
static lk_status channelz_parse(char *raw, json_t **out, lk_err *err) {
  *out = NULL;
  if (raw == NULL) /* what channelz answers for an unknown id */
    return lk_fail(err, LK_NOT_FOUND, "channelz has no such entry");
  size_t len = strnlen(raw, CHANNELZ_MAX_JSON + 1);
  lk_status st = LK_OK;
  if (len > CHANNELZ_MAX_JSON) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "channelz answer exceeds %d bytes",
                 CHANNELZ_MAX_JSON);
    goto cleanup;
  }
  json_error_t jerr;
  *out = json_loadb(raw, len, 0, &jerr);
  if (*out == NULL || !json_is_object(*out)) {
    json_decref(*out);
    *out = NULL;
    st = lk_fail(err, LK_INTERNAL, "channelz answer is not a JSON object");
  }
cleanup:
  gpr_free(raw);
  return st;
}

/* Reads a proto3-JSON int64 (a string or a number) from obj[key]; 0 if
 * absent or malformed. */
static intptr_t channelz_id_of(const json_t *obj, const char *key) {
  const json_t *v = json_object_get(obj, key);
  if (json_is_integer(v))
    return (intptr_t)json_integer_value(v);
  if (!json_is_string(v))
    return 0;
  const char *str = json_string_value(v);
  char *end = NULL;
  errno = 0;
  long long id = strtoll(str, &end, 10);
  if (errno != 0 || end == str || *end != '\0' || id <= 0)
    return 0;
  return (intptr_t)id;
}

/* Returns the largest server id channelz lists, or 0 (channelz off or
 * an unreadable answer, which only loses the open-connections gauge). */
static intptr_t newest_channelz_server(void) {
  intptr_t newest = 0;
  intptr_t start = 0;
  for (int page = 0; page < CHANNELZ_MAX_PAGES; page++) {
    json_t *doc = NULL;
    lk_err err;
    if (channelz_parse(grpc_channelz_get_servers(start), &doc, &err) != LK_OK) {
      lk_log(LK_LOG_WARN, "channelz_failed", "%s", err.msg);
      return 0;
    }
    json_t *servers = json_object_get(doc, "server");
    size_t i;
    json_t *srv;
    json_array_foreach(servers, i, srv) {
      intptr_t id = channelz_id_of(json_object_get(srv, "ref"), "serverId");
      if (id > newest)
        newest = id;
    }
    int end = json_is_true(json_object_get(doc, "end")) ||
              json_array_size(servers) == 0;
    json_decref(doc);
    if (end)
      return newest;
    start = newest + 1;
  }
  return newest;
}

/* Counts channelz's sockets of server id (its open connections). */
static lk_status count_server_sockets(intptr_t id, int64_t *out, lk_err *err) {
  *out = 0;
  intptr_t start = 0;
  for (int page = 0; page < CHANNELZ_MAX_PAGES; page++) {
    json_t *doc = NULL;
    lk_status st = channelz_parse(
        grpc_channelz_get_server_sockets(id, start, CHANNELZ_PAGE), &doc, err);
    if (st != LK_OK)
      return st;
    json_t *refs = json_object_get(doc, "socketRef");
    json_t *end = json_object_get(doc, "end");
    if (refs == NULL && end == NULL) {
      /* "{}" or an error object: the server is gone from channelz. */
      json_decref(doc);
      return lk_fail(err, LK_NOT_FOUND, "channelz has no server %lld",
                     (long long)id);
    }
    size_t i;
    json_t *ref;
    intptr_t last = start;
    json_array_foreach(refs, i, ref) {
      intptr_t sid = channelz_id_of(ref, "socketId");
      if (sid >= last)
        last = sid;
      (*out)++;
    }
    int done = json_is_true(end) || json_array_size(refs) == 0;
    json_decref(doc);
    if (done)
      return LK_OK;
    start = last + 1;
  }
  return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "more than %d pages of channelz sockets", CHANNELZ_MAX_PAGES);
}

/* Returns the listener for addr, creating and binding it on first use. */
static lk_status get_listener(lk_rpc_server *s, const char *addr,
                              listener **out, lk_err *err) {
  *out = NULL;
  if (s->started) {
    return lk_fail(err, LK_INTERNAL, "listener added after start");
  }
  for (size_t i = 0; i < s->n_listeners; i++) {
    if (strcmp(s->listeners[i].addr, addr) == 0) {
      *out = &s->listeners[i];
      return LK_OK;
    }
  }
  if (s->n_listeners == MAX_LISTENERS) {
    return lk_fail(err, LK_INTERNAL, "too many listeners");
  }
  listener *l = &s->listeners[s->n_listeners];
  memset(l, 0, sizeof(*l));
  grpc_arg args[2];
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = MAX_REQUEST_BYTES;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
  args[1].value.integer = 0;
  grpc_channel_args cargs = {2, args};
  pthread_mutex_lock(&create_mu);
  l->server = grpc_server_create(&cargs, NULL);
  if (l->server != NULL)
    l->channelz_id = newest_channelz_server();
  pthread_mutex_unlock(&create_mu);
  l->addr = strdup(addr);
  if (l->server == NULL || l->addr == NULL) {
    if (l->server != NULL)
      grpc_server_destroy(l->server);
    free(l->addr);
    memset(l, 0, sizeof(*l));
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  s->n_listeners++; /* from here on destroy() owns it */
  for (int i = 0; i < s->n_workers; i++) {
    grpc_server_register_completion_queue(l->server, s->workers[i].cq, NULL);
  }
  grpc_server_register_completion_queue(l->server, s->shutdown_cq, NULL);
  lk_status st = prepare_unix_socket(addr, err);
  if (st != LK_OK)
    return st;
  grpc_server_credentials *creds =
      s->tls != NULL ? s->tls : grpc_insecure_server_credentials_create();
  int port = grpc_server_add_http2_port(l->server, addr, creds);
  if (creds != s->tls)
    grpc_server_credentials_release(creds);
  if (port == 0) {
    return lk_fail(err, LK_UNAVAILABLE,
                   "cannot listen on %s: the address is invalid or in use",
                   addr);
  }
  /* Owner and group only: the agent's pod shares the group, nobody else
   * may call tools through this sidecar. */
  if (strncmp(addr, "unix:", 5) == 0 && chmod(addr + 5, 0660) != 0) {
    return lk_fail(err, LK_UNAVAILABLE, "cannot set mode 0660 on %s: %s",
                   addr + 5, strerror(errno));
  }
  *out = l;
  return LK_OK;
}

static lk_status add_method(listener *l, const char *path,
                            lk_rpc_handler handler,
                            const lk_rpc_stream_handler *stream, void *ctx,
                            lk_err *err) {
  for (size_t i = 0; i < l->n_methods; i++) {
    if (strcmp(l->methods[i].path, path) == 0) {
      return lk_fail(err, LK_INTERNAL, "method %s registered twice on %s", path,
                     l->addr);
    }
  }
  if (l->n_methods == MAX_METHODS) {
    return lk_fail(err, LK_INTERNAL, "too many methods on %s", l->addr);
  }
  method_entry *m = &l->methods[l->n_methods];
  m->path = strdup(path);
  if (m->path == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  l->n_methods++;
  m->handler = handler;
  m->stream = stream;
  m->ctx = ctx;
  m->registered = grpc_server_register_method(
      l->server, path, NULL,
      stream != NULL ? GRPC_SRM_PAYLOAD_NONE
                     : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
      0);
  if (m->registered == NULL) {
    return lk_fail(err, LK_INTERNAL, "cannot register method %s", path);
  }
  return LK_OK;
}

/* Reads a whole PEM file (at most 1 MiB) into guarded memory. */
static lk_status read_pem(const char *path, lk_secret **out, lk_err *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    return lk_fail(err, LK_FAILED_PRECONDITION, "cannot read %s: %s", path,
                   strerror(errno));
  }
  lk_secret_buf *b = lk_secret_buf_new(1024 * 1024);
  lk_status st =
      b == NULL ? lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory") : LK_OK;
  unsigned char chunk[4096];
  size_t n;
  while (st == LK_OK && (n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
    st = lk_secret_buf_append(b, chunk, n, err);
  }
  lk_wipe(chunk, sizeof(chunk));
  fclose(f);
  if (st != LK_OK) {
    lk_secret_buf_free(b);
    return st;
  }
  *out = lk_secret_buf_finish(b);
  if (*out == NULL || lk_secret_len(*out) == 0) {
    lk_secret_free(*out);
    *out = NULL;
    return lk_fail(err, LK_INVALID_ARGUMENT, "%s is empty", path);
  }
  return LK_OK;
}

lk_status lk_rpc_server_use_tls(lk_rpc_server *s, const char *cert_path,
                                const char *key_path, lk_err *err) {
  if (s->n_listeners > 0 || s->tls != NULL) {
    return lk_fail(err, LK_INTERNAL, "TLS must be set before any listener");
  }
  lk_secret *cert = NULL, *key = NULL;
  lk_status st = read_pem(cert_path, &cert, err);
  if (st == LK_OK)
    st = read_pem(key_path, &key, err);
  if (st == LK_OK) {
    grpc_ssl_pem_key_cert_pair pair = {lk_secret_str(key), lk_secret_str(cert)};
    s->tls = grpc_ssl_server_credentials_create(NULL, &pair, 1, 0, NULL);
    if (s->tls == NULL) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "cannot use %s and %s as a TLS certificate and key",
                   cert_path, key_path);
    }
  }
  lk_secret_free(cert);
  lk_secret_free(key);
  return st;
}

lk_status lk_rpc_server_listen(lk_rpc_server *s, const char *addr,
                               const char *const *methods, size_t n_methods,
                               lk_rpc_handler handler, void *ctx, lk_err *err) {
  listener *l = NULL;
  lk_status st = get_listener(s, addr, &l, err);
  for (size_t i = 0; st == LK_OK && i < n_methods; i++) {
    st = add_method(l, methods[i], handler, NULL, ctx, err);
  }
  return st;
}

lk_status lk_rpc_server_listen_stream(lk_rpc_server *s, const char *addr,
                                      const char *method,
                                      const lk_rpc_stream_handler *h, void *ctx,
                                      lk_err *err) {
  listener *l = NULL;
  lk_status st = get_listener(s, addr, &l, err);
  if (st == LK_OK)
    st = add_method(l, method, NULL, h, ctx, err);
  return st;
}

lk_status lk_rpc_server_listen_server_stream(lk_rpc_server *s, const char *addr,
                                             const char *method,
                                             const lk_rpc_stream_handler *h,
                                             void *ctx, lk_err *err) {
  listener *l = NULL;
  lk_status st = get_listener(s, addr, &l, err);
  if (st == LK_OK)
    st = add_method(l, method, NULL, h, ctx, err);
  if (st == LK_OK)
    l->methods[l->n_methods - 1].server_streaming = 1;
  return st;
}

lk_status lk_rpc_server_start(lk_rpc_server *s, lk_err *err) {
  if (s->started)
    return LK_OK;
  size_t per_worker = 0;
  for (size_t i = 0; i < s->n_listeners; i++) {
    grpc_server_start(s->listeners[i].server);
    per_worker += s->listeners[i].n_methods;
  }
  s->started = 1;
  for (int i = 0; i < s->n_workers; i++) {
    worker *w = &s->workers[i];
    w->slots = calloc(per_worker ? per_worker : 1, sizeof(request_slot));
    if (w->slots == NULL) {
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    }
    w->n_slots = per_worker;
    size_t k = 0;
    for (size_t li = 0; li < s->n_listeners; li++) {
      for (size_t m = 0; m < s->listeners[li].n_methods; m++, k++) {
        request_slot *slot = &w->slots[k];
        slot->t = (tag){TAG_REQUEST, slot};
        slot->w = w;
        slot->l = &s->listeners[li];
        slot->method = m;
        request_next(slot);
      }
    }
  }
  for (size_t li = 0; li < s->n_listeners; li++) {
    unknown_slot *u = &s->listeners[li].unknown;
    u->t = (tag){TAG_UNKNOWN, u};
    u->l = &s->listeners[li];
    u->cq = s->workers[0].cq;
    request_unknown(u);
  }
  for (int i = 0; i < s->n_workers; i++) {
    if (pthread_create(&s->workers[i].thread, NULL, worker_main,
                       &s->workers[i]) != 0) {
      return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                     "cannot start worker thread: %s", strerror(errno));
    }
    s->workers[i].started = 1;
  }
  return LK_OK;
}

void lk_rpc_server_shutdown(lk_rpc_server *s, int grace_ms) {
  if (s == NULL || s->stopped)
    return;
  s->stopped = 1;
  atomic_store(&s->shutting_down, 1);
  if (s->started) {
    tag t = {TAG_SHUTDOWN, NULL};
    for (size_t i = 0; i < s->n_listeners; i++) {
      grpc_server_shutdown_and_notify(s->listeners[i].server, s->shutdown_cq,
                                      &t);
    }
    /* Streams never end by themselves: the grace period is for unary
     * calls. End them now so their handlers can finish; a stream whose
     * handler already finished it is left to deliver its queued messages
     * and status within the grace period. */
    pthread_mutex_lock(&s->mu);
    for (lk_rpc_stream *st = s->streams; st != NULL; st = st->next) {
      pthread_mutex_lock(&st->mu);
      int finishing = st->finish_requested || st->finish_started;
      pthread_mutex_unlock(&st->mu);
      if (finishing)
        continue;
      grpc_call_cancel_with_status(st->call, GRPC_STATUS_UNAVAILABLE,
                                   "the server is shutting down: reconnect "
                                   "to another replica",
                                   NULL);
    }
    pthread_mutex_unlock(&s->mu);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_millis(grace_ms, GPR_TIMESPAN));
    size_t done = 0;
    while (done < s->n_listeners) {
      grpc_event ev =
          grpc_completion_queue_pluck(s->shutdown_cq, &t, deadline, NULL);
      if (ev.type == GRPC_OP_COMPLETE) {
        done++;
        continue;
      }
      /* Grace period over: cancel what is left and wait for it. */
      for (size_t i = 0; i < s->n_listeners; i++) {
        grpc_server_cancel_all_calls(s->listeners[i].server);
      }
      deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
    }
    /* Handlers that finish from other threads still need the queues. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&s->mu);
    while (s->live_calls > 0) {
      if (pthread_cond_timedwait(&s->calls_cv, &s->mu, &until) == ETIMEDOUT) {
        lk_log(LK_LOG_WARN, "rpc_shutdown_leak",
               "%ld calls still unfinished at shutdown", s->live_calls);
        break;
      }
    }
    pthread_mutex_unlock(&s->mu);
  }
  for (size_t i = 0; i < s->n_listeners; i++) {
    if (s->listeners[i].server != NULL) {
      if (!s->started) {
        /* Destroy needs a completed shutdown even if never started. */
        tag t = {TAG_SHUTDOWN, NULL};
        grpc_server_shutdown_and_notify(s->listeners[i].server, s->shutdown_cq,
                                        &t);
        grpc_completion_queue_pluck(s->shutdown_cq, &t,
                                    gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
      }
      grpc_server_destroy(s->listeners[i].server);
      s->listeners[i].server = NULL;
    }
  }
  for (int i = 0; i < s->n_workers; i++) {
    grpc_completion_queue_shutdown(s->workers[i].cq);
  }
  for (int i = 0; i < s->n_workers; i++) {
    if (s->workers[i].started) {
      pthread_join(s->workers[i].thread, NULL);
    } else {
      /* Never started: drain here. */
      for (;;) {
        grpc_event ev = grpc_completion_queue_next(
            s->workers[i].cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
          break;
      }
    }
  }
  grpc_completion_queue_shutdown(s->shutdown_cq);
  for (;;) {
    grpc_event ev = grpc_completion_queue_pluck(
        s->shutdown_cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
      break;
  }
}

void lk_rpc_server_destroy(lk_rpc_server *s) {
  if (s == NULL)
    return;
  lk_rpc_server_shutdown(s, 0);
  for (size_t i = 0; i < s->n_listeners; i++) {
    listener *l = &s->listeners[i];
    for (size_t m = 0; m < l->n_methods; m++)
      free(l->methods[m].path);
    free(l->addr);
  }
  for (int i = 0; i < s->n_workers; i++) {
    grpc_completion_queue_destroy(s->workers[i].cq);
    free(s->workers[i].slots);
  }
  grpc_completion_queue_destroy(s->shutdown_cq);
  if (s->tls != NULL)
    grpc_server_credentials_release(s->tls);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->calls_cv);
  free(s->workers);
  free(s);
}

const char *lk_rpc_call_method(const lk_rpc_call *c) {
  return c->l->methods[c->method].path;
}

const unsigned char *lk_rpc_call_request(const lk_rpc_call *c, size_t *len) {
  *len = c->req_len;
  return c->req != NULL ? c->req : (const unsigned char *)"";
}

const char *lk_rpc_call_metadata(const lk_rpc_call *c, const char *key,
                                 size_t *len) {
  for (size_t i = 0; i < c->md.count; i++) {
    if (grpc_slice_str_cmp(c->md.metadata[i].key, key) == 0) {
      *len = GRPC_SLICE_LENGTH(c->md.metadata[i].value);
      return (const char *)GRPC_SLICE_START_PTR(c->md.metadata[i].value);
    }
  }
  *len = 0;
  return NULL;
}

int64_t lk_rpc_call_deadline_ms(const lk_rpc_call *c) {
  return c->deadline_ms;
}

int lk_rpc_call_cancelled(lk_rpc_call *c) {
  if (atomic_load(&c->closed))
    return 1;
  int64_t now = lk_now_ms();
  if (!atomic_load(&c->close_started) &&
      now - c->accepted_ms >= CANCEL_WATCH_AFTER_MS) {
    /* The ref first: send_final may race us to close_started. */
    atomic_fetch_add(&c->refs, 1);
    if (atomic_exchange(&c->close_started, 1) != 0) {
      call_release(c);
    } else {
      grpc_op close_op;
      memset(&close_op, 0, sizeof(close_op));
      close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
      close_op.data.recv_close_on_server.cancelled = &c->close_cancelled;
      if (grpc_call_start_batch(c->call, &close_op, 1, &c->close_tag, NULL) !=
          GRPC_CALL_OK)
        call_release(c);
    }
  }
  return c->deadline_ms != INT64_MAX && now >= c->deadline_ms;
}

static void send_final(lk_rpc_call *c, grpc_status_code code, const char *msg,
                       const unsigned char *resp, size_t len) {
  if (atomic_exchange(&c->finished, 1)) {
    lk_log(LK_LOG_ERROR, "rpc_double_finish", "call %s finished twice",
           lk_rpc_call_method(c));
    return;
  }
  size_t n = 0;
  memset(c->ops, 0, sizeof(c->ops));
  c->ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
  c->ops[n].data.send_initial_metadata.count = 0;
  n++;
  if (code == GRPC_STATUS_OK) {
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)resp, len);
    c->resp = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    c->ops[n].op = GRPC_OP_SEND_MESSAGE;
    c->ops[n].data.send_message.send_message = c->resp;
    n++;
  }
  c->ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  c->ops[n].data.send_status_from_server.status = code;
  c->ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  if (msg != NULL && msg[0] != '\0') {
    c->details = grpc_slice_from_copied_string(msg);
    c->has_details = 1;
    c->ops[n].data.send_status_from_server.status_details = &c->details;
  }
  n++;
  if (atomic_exchange(&c->close_started, 1) == 0) {
    c->ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    c->ops[n].data.recv_close_on_server.cancelled = &c->close_cancelled;
    n++;
  }
  grpc_call_error e =
      grpc_call_start_batch(c->call, c->ops, n, &c->send_tag, NULL);
  if (e != GRPC_CALL_OK) {
    lk_log(LK_LOG_WARN, "rpc_send_failed", "%s: %s", lk_rpc_call_method(c),
           grpc_call_error_to_string(e));
    call_release(c);
  }
}

void lk_rpc_call_finish(lk_rpc_call *c, const unsigned char *resp, size_t len) {
  send_final(c, GRPC_STATUS_OK, NULL, resp, len);
}

void lk_rpc_call_fail(lk_rpc_call *c, const lk_err *err) {
  lk_status code = err->code == LK_OK ? LK_INTERNAL : err->code;
  const char *msg = err->msg[0] ? err->msg : lk_status_default_msg(code);
  send_final(c, (grpc_status_code)lk_status_grpc_code(code), msg, NULL, 0);
}

size_t lk_rpc_server_n_listeners(const lk_rpc_server *s) {
  return s == NULL ? 0 : s->n_listeners;
}

const char *lk_rpc_server_listener_addr(const lk_rpc_server *s, size_t i) {
  return s == NULL || i >= s->n_listeners ? NULL : s->listeners[i].addr;
}

lk_status lk_rpc_server_open_connections(const lk_rpc_server *s, size_t i,
                                         int64_t *out, lk_err *err) {
  *out = 0;
  if (s == NULL || i >= s->n_listeners)
    return lk_fail(err, LK_INVALID_ARGUMENT, "no listener %zu", i);
  if (s->listeners[i].channelz_id == 0)
    return lk_fail(err, LK_UNAVAILABLE,
                   "channelz does not know the server of %s",
                   s->listeners[i].addr);
  return count_server_sockets(s->listeners[i].channelz_id, out, err);
}

void lk_rpc_server_emit_open_connections(const lk_rpc_server *s,
                                         lk_metrics_emitter *e) {
  for (size_t i = 0; i < lk_rpc_server_n_listeners(s); i++) {
    int64_t n = 0;
    lk_err err;
    if (lk_rpc_server_open_connections(s, i, &n, &err) != LK_OK) {
      lk_log(LK_LOG_DEBUG, "open_connections_unknown", "%s", err.msg);
      continue;
    }
    const char *labels[1] = {s->listeners[i].addr};
    lk_metrics_emit(e, labels, (double)n);
  }
}
