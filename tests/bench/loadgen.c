/*
 * loadgen.c - the call-path benchmark's load generator (DESIGN.md §9), run
 * by tests/bench/calls_bench.py.
 *
 * Why: the comparison "latchkey vs the vendor directly vs nginx" is only
 * honest when every system is driven the same way, and only measures the
 * servers when the client is about as cheap for each protocol (loadgen,
 * vendor and the server under test share the same cores, so a heavier
 * client takes CPU from the server). This one program drives HTTP/1.1 and
 * gRPC with one concurrency model on one epoll loop: N requests in flight
 * from one thread, each completion immediately replaced by the next
 * request, for a fixed duration after an excluded warm-up. Every latency
 * of the measured window is kept (exact samples, sorted at the end), so the
 * percentiles are exact nearest-rank values, not bucket estimates.
 *
 * - http: N keep-alive connections to host:port (one request in flight on
 *   each), driven by epoll; GET path with optional extra header lines (the
 *   key in hand for the "direct" floor). A response must be a 200 with a
 *   Content-Length body; anything else counts as an error.
 * - grpc: HTTP/2 without TLS (h2c, prior knowledge) framed by libnghttp2 on
 *   the same epoll loop: --grpc-conns K connections (default 1) to
 *   "unix:/path" or "host:port", the N calls multiplexed as streams over
 *   them (call i on connection i mod K), as grpc core's client multiplexes
 *   its calls over its one channel. Each call is HEADERS (POST, the method
 *   as :path, content-type application/grpc, te trailers, grpc-timeout
 *   10S: the same 10 s deadline grpc-core sets, so the server arms the
 *   same per-call deadline either way) and one DATA
 *   frame with the 5-byte gRPC prefix and the request, ending the stream.
 *   A call succeeds only with :status 200, grpc-status 0 and exactly one
 *   complete uncompressed message that contains the --expect-hex bytes
 *   when given; otherwise first_error says why (with grpc-status and
 *   grpc-message when the server sent them).
 * - grpc-core: the same calls through grpc core's C client (one channel
 *   per --grpc-conns, N calls on one completion queue, a 10 s deadline
 *   each), kept so a run can cross-check the two clients.
 *
 * CPU time of the process under test: --pid (repeatable) names processes
 * whose utime+stime (/proc/PID/stat) are read at the start and the end of
 * the measured window; --vendor-pid the same for the vendor, reported
 * separately; loadgen's own CPU is reported too. Output: one JSON object on
 * stdout.
 *
 * Invariants: every buffer has a hard cap (responses MAX_RESP bytes, gRPC
 * response header blocks MAX_H2_HEADERS bytes, pending HTTP/2 output
 * H2_OUT_CAP bytes, samples MAX_SAMPLES); the run ends after warm-up +
 * duration even when the server stops answering (sockets are non-blocking,
 * the loop waits at most 100 ms at a time, calls still in flight at the end
 * are abandoned, grpc core's carry a deadline).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <nghttp2/nghttp2.h>

#define MAX_CONC 1024
#define MAX_RESP (64 * 1024)
#define MAX_REQ 8192
#define MAX_SAMPLES (50u * 1000u * 1000u)
#define MAX_PIDS 16
#define MAX_HEADERS 8
#define MAX_CONNS 64
/* gRPC over HTTP/2: the bytes of one response's header blocks (names and
 * values, plus 32 per field as HPACK counts them), the grpc-message kept
 * for first_error, and the output waiting for the socket. */
#define MAX_H2_HEADERS (16 * 1024)
#define MAX_GRPC_MESSAGE 120
#define H2_OUT_CAP (256 * 1024)
#define H2_FRAME_ROOM (32 * 1024) /* > any one frame loadgen sends */

typedef struct {
  const char *mode;
  const char *target; /* http: host:port; grpc: gRPC target */
  const char *path;   /* http path or gRPC method */
  const char *headers[MAX_HEADERS];
  int n_headers;
  unsigned char *req; /* gRPC request bytes */
  size_t req_len;
  unsigned char *expect;
  size_t expect_len;
  int conc;
  int conns; /* grpc, grpc-core: connections (channels) */
  double warmup_s, duration_s;
  int pids[MAX_PIDS], n_pids;
  int vpids[MAX_PIDS], n_vpids;
} opts;

typedef struct {
  uint32_t *v; /* latencies in ns, capped at ~4.29 s */
  size_t n, cap;
  uint64_t ok, errors, dropped;
  char first_error[200];
} samples;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void note_error(samples *s, const char *what) {
  s->errors++;
  if (s->first_error[0] == '\0')
    snprintf(s->first_error, sizeof(s->first_error), "%s", what);
}

/* Records one finished request that started at t0 when it falls in the
 * measured window [m0, m1). */
static void record(samples *s, int64_t t0, int64_t t1, int64_t m0, int64_t m1,
                   int ok, const char *why) {
  if (t0 < m0 || t1 >= m1)
    return;
  if (!ok) {
    note_error(s, why);
    return;
  }
  s->ok++;
  if (s->n == s->cap) {
    size_t nc = s->cap ? s->cap * 2 : 1 << 16;
    if (nc > MAX_SAMPLES)
      nc = MAX_SAMPLES;
    if (nc == s->cap) {
      s->dropped++;
      return;
    }
    uint32_t *nv = realloc(s->v, nc * sizeof(*nv));
    if (nv == NULL) {
      s->dropped++;
      return;
    }
    s->v = nv;
    s->cap = nc;
  }
  int64_t d = t1 - t0;
  s->v[s->n++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* utime+stime of pid in clock ticks, or -1. */
static long long cpu_ticks(int pid) {
  char path[64], buf[2048];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (p == NULL)
    return -1;
  /* after ") ": state(3) ... utime(14) stime(15) */
  unsigned long long ut = 0, st = 0;
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
             &ut, &st) != 2)
    return -1;
  return (long long)(ut + st);
}

static long long sum_ticks(const int *pids, int n) {
  long long t = 0;
  for (int i = 0; i < n; i++) {
    long long v = cpu_ticks(pids[i]);
    if (v < 0)
      return -1;
    t += v;
  }
  return t;
}

/* The measured window [m0, m1): the CPU counters are read by the event
 * loop the first time it sees the clock pass each edge. */
typedef struct {
  int64_t m0, m1, t0, t1;
  long long c0, c1, v0, v1, l0, l1; /* l: the load generator itself */
  int seen0, seen1;
  const opts *o;
} cpu_window;

static void cpu_mark(cpu_window *w, int64_t t) {
  if (!w->seen0 && t >= w->m0) {
    w->seen0 = 1;
    w->t0 = t;
    w->c0 = sum_ticks(w->o->pids, w->o->n_pids);
    w->v0 = sum_ticks(w->o->vpids, w->o->n_vpids);
    w->l0 = cpu_ticks(getpid());
  }
  if (w->seen0 && !w->seen1 && t >= w->m1) {
    w->seen1 = 1;
    w->t1 = t;
    w->c1 = sum_ticks(w->o->pids, w->o->n_pids);
    w->v1 = sum_ticks(w->o->vpids, w->o->n_vpids);
    w->l1 = cpu_ticks(getpid());
  }
}

/* ---- HTTP/1.1 keep-alive over epoll ---------------------------------- */

typedef struct {
  int fd;
  int64_t t0;
  size_t sent;
  char buf[MAX_RESP];
  size_t got;
} hconn;

/* A connected, non-blocking stream socket to "unix:/path" or "host:port"
 * (TCP_NODELAY on TCP), or -1 with the reason in why. */
static int dial(const char *target, char *why, size_t wn) {
  int fd = -1;
  if (strncmp(target, "unix:", 5) == 0) {
    struct sockaddr_un sa;
    size_t n = strlen(target + 5);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (n == 0 || n >= sizeof(sa.sun_path)) {
      snprintf(why, wn, "bad socket path in %s", target);
      return -1;
    }
    memcpy(sa.sun_path, target + 5, n + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
      goto fail;
  } else {
    char host[256];
    const char *colon = strrchr(target, ':');
    if (colon == NULL || colon == target ||
        (size_t)(colon - target) >= sizeof(host)) {
      snprintf(why, wn, "target %s is not host:port", target);
      return -1;
    }
    const char *h = target;
    size_t hl = (size_t)(colon - target);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [v6]:port */
      h++;
      hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    int gerr = getaddrinfo(host, colon + 1, &hints, &ai);
    if (gerr != 0) {
      snprintf(why, wn, "cannot resolve %s: %s", target, gai_strerror(gerr));
      return -1;
    }
    for (struct addrinfo *p = ai; p != NULL && fd < 0; p = p->ai_next) {
      fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
      if (fd >= 0 && connect(fd, p->ai_addr, p->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
      }
    }
    freeaddrinfo(ai);
    if (fd < 0)
      goto fail;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
fail:
  snprintf(why, wn, "cannot connect to %s: %s", target, strerror(errno));
  if (fd >= 0)
    close(fd);
  return -1;
}

/* Length of a complete response in c->buf (0 = need more, -1 = bad). */
static long hcomplete(const hconn *c, int *status) {
  const char *end = memmem(c->buf, c->got, "\r\n\r\n", 4);
  if (end == NULL)
    return c->got >= MAX_RESP ? -1 : 0;
  size_t hlen = (size_t)(end - c->buf) + 4;
  if (c->got < 12 || memcmp(c->buf, "HTTP/1.1 ", 9) != 0)
    return -1;
  *status = atoi(c->buf + 9);
  long clen = -1;
  const char *p = c->buf;
  while (p < end) {
    const char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (nl == NULL)
      nl = end;
    if ((size_t)(nl - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
      clen = strtol(p + 15, NULL, 10);
    p = nl + 2;
  }
  if (clen < 0 || hlen + (size_t)clen > MAX_RESP)
    return -1;
  if (c->got < hlen + (size_t)clen)
    return 0;
  return (long)(hlen + (size_t)clen);
}

static int run_http(const opts *o, samples *s, cpu_window *w, int64_t end) {
  int64_t m0 = w->m0, m1 = w->m1;
  char req[MAX_REQ];
  int rl = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n",
                    o->path, o->target);
  for (int i = 0; i < o->n_headers && rl > 0 && (size_t)rl < sizeof(req); i++)
    rl += snprintf(req + rl, sizeof(req) - (size_t)rl, "%s\r\n", o->headers[i]);
  if (rl > 0 && (size_t)rl < sizeof(req))
    rl += snprintf(req + rl, sizeof(req) - (size_t)rl, "\r\n");
  if (rl <= 0 || (size_t)rl >= sizeof(req)) {
    fprintf(stderr, "loadgen: request too long\n");
    return -1;
  }
  int rc = -1;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  hconn *cs = calloc((size_t)o->conc, sizeof(*cs));
  for (int i = 0; cs != NULL && i < o->conc; i++)
    cs[i].fd = -1;
  if (ep < 0 || cs == NULL)
    goto done;
  for (int i = 0; i < o->conc; i++) {
    char why[200];
    cs[i].fd = dial(o->target, why, sizeof(why));
    if (cs[i].fd < 0) {
      fprintf(stderr, "loadgen: %s\n", why);
      note_error(s, why);
      goto done;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    cs[i].t0 = now_ns();
    if (write(cs[i].fd, req, (size_t)rl) != rl) {
      fprintf(stderr, "loadgen: short write\n");
      goto done;
    }
  }
  struct epoll_event evs[64];
  int64_t t;
  while ((t = now_ns()) < end) {
    cpu_mark(w, t);
    int n = epoll_wait(ep, evs, 64, 100);
    for (int k = 0; k < n; k++) {
      hconn *c = &cs[evs[k].data.u32];
      ssize_t r = read(c->fd, c->buf + c->got, MAX_RESP - c->got);
      if (r == 0 || (r < 0 && errno != EAGAIN)) {
        fprintf(stderr, "loadgen: the server closed a connection\n");
        note_error(s, "connection closed");
        goto done;
      }
      if (r < 0)
        continue;
      c->got += (size_t)r;
      int status = 0;
      long len = hcomplete(c, &status);
      if (len == 0)
        continue;
      int64_t t1 = now_ns();
      cpu_mark(w, t1);
      if (len < 0) {
        note_error(s, "malformed or oversized HTTP response");
        goto done;
      }
      char why[64];
      snprintf(why, sizeof(why), "HTTP status %d", status);
      record(s, c->t0, t1, m0, m1, status == 200, why);
      memmove(c->buf, c->buf + len, c->got - (size_t)len);
      c->got -= (size_t)len;
      c->t0 = now_ns();
      if (write(c->fd, req, (size_t)rl) != rl) {
        note_error(s, "short write");
        goto done;
      }
    }
  }
  rc = 0;
done:
  for (int i = 0; cs != NULL && i < o->conc; i++)
    if (cs[i].fd >= 0)
      close(cs[i].fd);
  free(cs);
  if (ep >= 0)
    close(ep);
  return rc;
}

/* ---- gRPC over HTTP/2 (libnghttp2) on the epoll loop ------------------- */

typedef struct h2run h2run;

typedef struct {
  h2run *run;
  int fd;
  nghttp2_session *ses;
  int pollout; /* EPOLLOUT is armed: output is waiting for the socket */
  size_t out_len, out_off;
  uint8_t out[H2_OUT_CAP];
} h2conn;

/* One call slot: a stream in flight, then the next call in its place. */
typedef struct {
  h2conn *conn;
  int64_t t0, t1;
  size_t sent;                  /* request bytes handed to nghttp2 */
  int http_status, grpc_status; /* -1: not received */
  uint32_t reset;               /* RST_STREAM code; 0 when closed cleanly */
  size_t hdr_bytes;
  int hdr_over, msg_over;
  char grpc_message[MAX_GRPC_MESSAGE + 1];
  size_t got;
  uint8_t msg[5 + MAX_RESP]; /* the length-prefixed response message(s) */
} h2call;

struct h2run {
  const opts *o;
  samples *s;
  cpu_window *w;
  int64_t end;
  int failed;     /* a submit or a connection failed: stop */
  uint8_t *frame; /* 5-byte gRPC prefix + request, sent by every call */
  size_t frame_len;
  nghttp2_nv nva[7];
  h2call **done; /* closed streams not yet recorded (at most conc) */
  int n_done;
};

static int h2on_header(nghttp2_session *ses, const nghttp2_frame *f,
                       const uint8_t *name, size_t nl, const uint8_t *value,
                       size_t vl, uint8_t flags, void *ud) {
  (void)flags;
  (void)ud;
  h2call *k = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
  if (k == NULL || f->hd.type != NGHTTP2_HEADERS)
    return 0;
  k->hdr_bytes += nl + vl + 32;
  if (k->hdr_bytes > MAX_H2_HEADERS) {
    k->hdr_over = 1; /* resets the stream */
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  if (nl == 7 && memcmp(name, ":status", 7) == 0 &&
      f->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    k->http_status = vl == 3 ? atoi((const char *)value) : 0;
  } else if (nl == 11 && memcmp(name, "grpc-status", 11) == 0) {
    int v = vl >= 1 && vl <= 4 ? 0 : -2; /* -2: present, not a number */
    for (size_t i = 0; i < vl && v >= 0; i++)
      v = value[i] >= '0' && value[i] <= '9' ? v * 10 + (value[i] - '0') : -2;
    k->grpc_status = v;
  } else if (nl == 12 && memcmp(name, "grpc-message", 12) == 0) {
    size_t n = vl < MAX_GRPC_MESSAGE ? vl : MAX_GRPC_MESSAGE;
    memcpy(k->grpc_message, value, n);
    k->grpc_message[n] = '\0';
  }
  return 0;
}

static int h2on_data(nghttp2_session *ses, uint8_t flags, int32_t id,
                     const uint8_t *data, size_t len, void *ud) {
  (void)flags;
  (void)ud;
  h2call *k = nghttp2_session_get_stream_user_data(ses, id);
  if (k == NULL || k->msg_over)
    return 0;
  if (len > sizeof(k->msg) - k->got) {
    k->msg_over = 1;
    return nghttp2_submit_rst_stream(ses, NGHTTP2_FLAG_NONE, id,
                                     NGHTTP2_CANCEL) == 0
               ? 0
               : NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  memcpy(k->msg + k->got, data, len);
  k->got += len;
  return 0;
}

static int h2on_close(nghttp2_session *ses, int32_t id, uint32_t code,
                      void *ud) {
  h2run *r = ((h2conn *)ud)->run;
  h2call *k = nghttp2_session_get_stream_user_data(ses, id);
  if (k == NULL)
    return 0;
  k->t1 = now_ns();
  k->reset = code;
  if (r->n_done < r->o->conc) /* each slot closes once per call */
    r->done[r->n_done++] = k;
  return 0;
}

/* Hands nghttp2 the request frame, all in one DATA frame when it fits. */
static ssize_t h2body(nghttp2_session *ses, int32_t id, uint8_t *buf,
                      size_t len, uint32_t *flags, nghttp2_data_source *src,
                      void *ud) {
  (void)ses;
  (void)id;
  h2call *k = src->ptr;
  const h2run *r = ((h2conn *)ud)->run;
  size_t n = r->frame_len - k->sent;
  if (n > len)
    n = len;
  memcpy(buf, r->frame + k->sent, n);
  k->sent += n;
  if (k->sent == r->frame_len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static void h2fail(h2run *r, const char *what, const char *detail) {
  char why[200];
  snprintf(why, sizeof(why), "%s%s%s", what, detail ? ": " : "",
           detail ? detail : "");
  fprintf(stderr, "loadgen: %s\n", why);
  note_error(r->s, why);
  r->failed = 1;
}

/* Starts the next call in slot k on its connection. */
static void h2submit(h2run *r, h2call *k) {
  k->sent = 0;
  k->http_status = -1;
  k->grpc_status = -1;
  k->reset = 0;
  k->hdr_bytes = 0;
  k->hdr_over = k->msg_over = 0;
  k->grpc_message[0] = '\0';
  k->got = 0;
  nghttp2_data_provider dp;
  dp.source.ptr = k;
  dp.read_callback = h2body;
  k->t0 = now_ns();
  int32_t id = nghttp2_submit_request(k->conn->ses, NULL, r->nva, 7, &dp, k);
  if (id < 0)
    h2fail(r, "cannot start an HTTP/2 stream", nghttp2_strerror(id));
}

/* Whether call k succeeded; when not, why says so. */
static int h2verdict(const h2run *r, const h2call *k, char *why, size_t n) {
  uint32_t mlen = 0;
  if (k->got >= 5)
    mlen = (uint32_t)k->msg[1] << 24 | (uint32_t)k->msg[2] << 16 |
           (uint32_t)k->msg[3] << 8 | k->msg[4];
  if (k->hdr_over) {
    snprintf(why, n, "response headers over %d bytes", MAX_H2_HEADERS);
  } else if (k->msg_over) {
    snprintf(why, n, "reply message over %d bytes", MAX_RESP);
  } else if (k->reset != NGHTTP2_NO_ERROR) {
    snprintf(why, n, "stream reset: %s (gRPC status %d%s%s)",
             nghttp2_http2_strerror(k->reset), k->grpc_status,
             k->grpc_message[0] ? ": " : "", k->grpc_message);
  } else if (k->http_status != 200) {
    snprintf(why, n, "HTTP status %d", k->http_status);
  } else if (k->grpc_status == -1) {
    snprintf(why, n, "response without grpc-status");
  } else if (k->grpc_status != 0) {
    snprintf(why, n, "gRPC status %d: %s", k->grpc_status, k->grpc_message);
  } else if (k->got == 0) {
    snprintf(why, n, "grpc-status 0 without a reply message");
  } else if (k->got < 5 || k->got - 5 < mlen) {
    snprintf(why, n, "truncated reply message");
  } else if (k->msg[0] != 0) {
    snprintf(why, n, "reply message with compressed flag %d", k->msg[0]);
  } else if (k->got - 5 > mlen) {
    snprintf(why, n, "more than one reply message");
  } else if (r->o->expect_len > 0 &&
             memmem(k->msg + 5, mlen, r->o->expect, r->o->expect_len) == NULL) {
    snprintf(why, n, "reply without the expected bytes");
  } else {
    return 1;
  }
  return 0;
}

/* Records every closed stream and starts its successor while time lasts. */
static void h2finish(h2run *r) {
  for (int i = 0; i < r->n_done; i++) {
    h2call *k = r->done[i];
    char why[200];
    int ok = h2verdict(r, k, why, sizeof(why));
    cpu_mark(r->w, k->t1);
    record(r->s, k->t0, k->t1, r->w->m0, r->w->m1, ok, why);
    if (k->t1 < r->end && !r->failed)
      h2submit(r, k);
  }
  r->n_done = 0;
}

/* Arms EPOLLOUT exactly while output is waiting for the socket. */
static void h2poll(int ep, h2conn *c, uint32_t idx) {
  int want = c->out_len > c->out_off;
  if (want == c->pollout)
    return;
  struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0),
                           .data.u32 = idx};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->pollout = want;
}

/* Serializes what nghttp2 has queued into c->out and writes it out until
 * nothing is left or the socket is full. */
static void h2flush(h2run *r, h2conn *c) {
  for (;;) {
    int more = 0;
    while (H2_OUT_CAP - c->out_len >= H2_FRAME_ROOM) {
      const uint8_t *d;
      ssize_t n = nghttp2_session_mem_send(c->ses, &d);
      if (n < 0) {
        h2fail(r, "HTTP/2 send", nghttp2_strerror((int)n));
        return;
      }
      if (n == 0)
        break;
      if ((size_t)n > H2_OUT_CAP - c->out_len) {
        h2fail(r, "HTTP/2 frame over the output buffer", NULL);
        return;
      }
      memcpy(c->out + c->out_len, d, (size_t)n);
      c->out_len += (size_t)n;
      more = H2_OUT_CAP - c->out_len < H2_FRAME_ROOM;
    }
    while (c->out_off < c->out_len) {
      ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                       MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0 && errno == EAGAIN)
        break;
      if (w < 0) {
        h2fail(r, "HTTP/2 write", strerror(errno));
        return;
      }
      c->out_off += (size_t)w;
    }
    if (c->out_off < c->out_len) { /* the socket is full: keep the rest */
      memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
      c->out_len -= c->out_off;
      c->out_off = 0;
      return;
    }
    c->out_len = c->out_off = 0;
    if (!more)
      return;
  }
}

/* Reads what the socket has, feeds it to nghttp2, records and replaces the
 * calls that closed, and flushes. */
static void h2read(h2run *r, h2conn *c) {
  static uint8_t buf[64 * 1024];
  ssize_t n = read(c->fd, buf, sizeof(buf));
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    h2fail(r, "the server closed an HTTP/2 connection",
           n < 0 ? strerror(errno) : NULL);
    return;
  }
  if (n < 0)
    return;
  ssize_t used = nghttp2_session_mem_recv(c->ses, buf, (size_t)n);
  if (used < 0) {
    h2fail(r, "HTTP/2 protocol error", nghttp2_strerror((int)used));
    return;
  }
}

static int run_h2(const opts *o, samples *s, cpu_window *w, int64_t end) {
  h2run r;
  memset(&r, 0, sizeof(r));
  r.o = o;
  r.s = s;
  r.w = w;
  r.end = end;
  char authority[300];
  snprintf(authority, sizeof(authority), "%s",
           strncmp(o->target, "unix:", 5) == 0 ? "localhost" : o->target);
  const char *hv[7][2] = {{":method", "POST"},
                          {":scheme", "http"},
                          {":path", o->path},
                          {":authority", authority},
                          {"content-type", "application/grpc"},
                          {"te", "trailers"},
                          {"grpc-timeout", "10S"}};
  for (int i = 0; i < 7; i++) {
    r.nva[i].name = (uint8_t *)hv[i][0];
    r.nva[i].namelen = strlen(hv[i][0]);
    r.nva[i].value = (uint8_t *)hv[i][1];
    r.nva[i].valuelen = strlen(hv[i][1]);
    r.nva[i].flags =
        NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  nghttp2_session_callbacks *cb = NULL;
  h2conn *cs = calloc((size_t)o->conns, sizeof(*cs));
  h2call *ks = calloc((size_t)o->conc, sizeof(*ks));
  r.done = calloc((size_t)o->conc, sizeof(*r.done));
  r.frame_len = 5 + o->req_len;
  r.frame = malloc(r.frame_len);
  for (int i = 0; cs != NULL && i < o->conns; i++)
    cs[i].fd = -1;
  if (ep < 0 || cs == NULL || ks == NULL || r.done == NULL || r.frame == NULL ||
      nghttp2_session_callbacks_new(&cb) != 0) {
    h2fail(&r, "out of memory", NULL);
    goto done;
  }
  r.frame[0] = 0; /* uncompressed */
  r.frame[1] = (uint8_t)(o->req_len >> 24);
  r.frame[2] = (uint8_t)(o->req_len >> 16);
  r.frame[3] = (uint8_t)(o->req_len >> 8);
  r.frame[4] = (uint8_t)o->req_len;
  if (o->req_len > 0)
    memcpy(r.frame + 5, o->req, o->req_len);
  nghttp2_session_callbacks_set_on_header_callback(cb, h2on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2on_close);
  nghttp2_settings_entry set[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_H2_HEADERS}};
  for (int i = 0; i < o->conns; i++) {
    h2conn *c = &cs[i];
    c->run = &r;
    char why[200];
    if ((c->fd = dial(o->target, why, sizeof(why))) < 0) {
      h2fail(&r, why, NULL);
      goto done;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0 ||
        nghttp2_session_client_new(&c->ses, cb, c) != 0 ||
        nghttp2_submit_settings(c->ses, NGHTTP2_FLAG_NONE, set, 2) != 0) {
      h2fail(&r, "cannot set up an HTTP/2 session", NULL);
      goto done;
    }
  }
  for (int i = 0; i < o->conc && !r.failed; i++) {
    ks[i].conn = &cs[i % o->conns];
    h2submit(&r, &ks[i]);
  }
  for (int i = 0; i < o->conns && !r.failed; i++)
    h2flush(&r, &cs[i]);
  struct epoll_event evs[64];
  int64_t t;
  while (!r.failed && (t = now_ns()) < end) {
    cpu_mark(w, t);
    int n = epoll_wait(ep, evs, 64, 100);
    for (int e = 0; e < n && !r.failed; e++) {
      h2conn *c = &cs[evs[e].data.u32];
      if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        h2read(&r, c);
      /* Closing a stream can queue frames (and resetting one closes it):
       * record, refill and flush until both settle. */
      while (!r.failed) {
        h2finish(&r);
        h2flush(&r, c);
        if (r.n_done == 0)
          break;
      }
      if (!r.failed)
        h2poll(ep, c, evs[e].data.u32);
      if (!r.failed && !nghttp2_session_want_read(c->ses) &&
          !nghttp2_session_want_write(c->ses))
        h2fail(&r, "the server ended an HTTP/2 connection (GOAWAY)", NULL);
    }
  }
done:
  for (int i = 0; cs != NULL && i < o->conns; i++) {
    nghttp2_session_del(cs[i].ses);
    if (cs[i].fd >= 0)
      close(cs[i].fd);
  }
  nghttp2_session_callbacks_del(cb);
  free(cs);
  free(ks);
  free(r.done);
  free(r.frame);
  if (ep >= 0)
    close(ep);
  return r.failed ? -1 : 0;
}

/* ---- gRPC over grpc core's C API (mode grpc-core) ---------------------- */

typedef struct {
  grpc_call *call;
  int64_t t0;
  grpc_metadata_array imd, tmd;
  grpc_byte_buffer *recv;
  grpc_status_code status;
  grpc_slice details;
  const char *error_string;
} gslot;

static int gstart(grpc_channel *ch, grpc_completion_queue *cq, const opts *o,
                  grpc_slice method, gslot *g) {
  memset(g, 0, sizeof(*g));
  grpc_metadata_array_init(&g->imd);
  grpc_metadata_array_init(&g->tmd);
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                 gpr_time_from_seconds(10, GPR_TIMESPAN));
  g->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                     method, NULL, dl, NULL);
  if (g->call == NULL)
    return -1;
  grpc_slice sl =
      grpc_slice_from_copied_buffer((const char *)o->req, o->req_len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &g->imd;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &g->recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &g->tmd;
  ops[5].data.recv_status_on_client.status = &g->status;
  ops[5].data.recv_status_on_client.status_details = &g->details;
  ops[5].data.recv_status_on_client.error_string = &g->error_string;
  g->t0 = now_ns();
  grpc_call_error e = grpc_call_start_batch(g->call, ops, 6, g, NULL);
  grpc_byte_buffer_destroy(bb); /* the batch holds its own reference */
  return e == GRPC_CALL_OK ? 0 : -1;
}

/* Whether the reply holds o->expect (always true without --expect). */
static int greply_ok(const opts *o, grpc_byte_buffer *bb) {
  if (o->expect_len == 0)
    return 1;
  if (bb == NULL)
    return 0;
  grpc_byte_buffer_reader rd;
  if (!grpc_byte_buffer_reader_init(&rd, bb))
    return 0;
  grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
  grpc_byte_buffer_reader_destroy(&rd);
  int ok = memmem(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), o->expect,
                  o->expect_len) != NULL;
  grpc_slice_unref(all);
  return ok;
}

static void gclean(gslot *g) {
  grpc_metadata_array_destroy(&g->imd);
  grpc_metadata_array_destroy(&g->tmd);
  if (g->recv)
    grpc_byte_buffer_destroy(g->recv);
  grpc_slice_unref(g->details);
  gpr_free((void *)g->error_string);
  grpc_call_unref(g->call);
  g->call = NULL;
}

static int run_grpc_core(const opts *o, samples *s, cpu_window *w,
                         int64_t end) {
  int64_t m0 = w->m0, m1 = w->m1;
  /* One connection per channel: a local subchannel pool keeps channels to
   * the same target from sharing one. */
  grpc_arg arg;
  arg.type = GRPC_ARG_INTEGER;
  arg.key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  arg.value.integer = 1;
  grpc_channel_args cargs = {1, &arg};
  grpc_channel *chs[MAX_CONNS];
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  for (int i = 0; i < o->conns; i++)
    chs[i] = grpc_channel_create(o->target, creds, &cargs);
  grpc_channel_credentials_release(creds);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  grpc_slice method = grpc_slice_from_static_string(o->path);
  gslot *gs = calloc((size_t)o->conc, sizeof(*gs));
  int rc = 0, inflight = 0;
  if (gs == NULL)
    return -1;
  for (int i = 0; i < o->conc; i++) {
    if (gstart(chs[i % o->conns], cq, o, method, &gs[i]) != 0) {
      fprintf(stderr, "loadgen: cannot start a gRPC call\n");
      rc = -1;
      break;
    }
    inflight++;
  }
  while (inflight > 0) {
    int64_t t = now_ns();
    cpu_mark(w, t);
    gpr_timespec wait = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                     gpr_time_from_millis(100, GPR_TIMESPAN));
    grpc_event ev = grpc_completion_queue_next(cq, wait, NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
      if (t > end + 11000000000LL)
        break; /* past every call's deadline */
      continue;
    }
    if (ev.type != GRPC_OP_COMPLETE)
      break;
    gslot *g = ev.tag;
    int64_t t1 = now_ns();
    cpu_mark(w, t1);
    inflight--;
    char why[200];
    if (g->status != GRPC_STATUS_OK) {
      char *d = grpc_slice_to_c_string(g->details);
      snprintf(why, sizeof(why), "gRPC status %d: %s", (int)g->status, d);
      gpr_free(d);
    } else {
      snprintf(why, sizeof(why), "reply without the expected bytes");
    }
    int ok = ev.success && g->status == GRPC_STATUS_OK && greply_ok(o, g->recv);
    record(s, g->t0, t1, m0, m1, ok, why);
    gclean(g);
    if (t1 < end && rc == 0) {
      if (gstart(chs[(g - gs) % o->conns], cq, o, method, g) != 0) {
        rc = -1;
        continue;
      }
      inflight++;
    }
  }
  free(gs);
  for (int i = 0; i < o->conns; i++)
    grpc_channel_destroy(chs[i]);
  grpc_completion_queue_shutdown(cq);
  while (
      grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
          .type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  return rc;
}

/* ---- main --------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_us(const samples *s, double p) {
  if (s->n == 0)
    return 0;
  size_t rank = (size_t)(p / 100.0 * (double)s->n + 0.999999);
  if (rank < 1)
    rank = 1;
  if (rank > s->n)
    rank = s->n;
  return s->v[rank - 1] / 1000.0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static unsigned char *unhex(const char *h, size_t *len) {
  size_t n = strlen(h);
  if (n % 2 || n / 2 > MAX_REQ)
    return NULL;
  unsigned char *out = malloc(n / 2 + 1);
  if (out == NULL)
    return NULL;
  for (size_t i = 0; i < n / 2; i++) {
    int a = hexval(h[2 * i]), b = hexval(h[2 * i + 1]);
    if (a < 0 || b < 0) {
      free(out);
      return NULL;
    }
    out[i] = (unsigned char)(a * 16 + b);
  }
  *len = n / 2;
  return out;
}

static void usage(void) {
  fprintf(stderr,
          "usage: loadgen http HOST:PORT PATH | grpc TARGET METHOD |\n"
          "  grpc-core TARGET METHOD (TARGET: unix:/path or host:port)\n"
          "  [-c N] [-d SECONDS] [-w WARMUP_SECONDS] [-H 'Name: value']\n"
          "  [--grpc-conns K] [--body-hex HEX] [--expect-hex HEX]\n"
          "  [--pid PID]... [--vendor-pid PID]...\n");
  exit(2);
}

int main(int argc, char **argv) {
  opts o;
  memset(&o, 0, sizeof(o));
  o.conc = 1;
  o.conns = 1;
  o.duration_s = 5;
  o.warmup_s = 1;
  if (argc < 4)
    usage();
  o.mode = argv[1];
  o.target = argv[2];
  o.path = argv[3];
  for (int i = 4; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL)
      usage();
    i++;
    if (strcmp(a, "-c") == 0) {
      o.conc = atoi(v);
    } else if (strcmp(a, "--grpc-conns") == 0) {
      o.conns = atoi(v);
    } else if (strcmp(a, "-d") == 0) {
      o.duration_s = atof(v);
    } else if (strcmp(a, "-w") == 0) {
      o.warmup_s = atof(v);
    } else if (strcmp(a, "-H") == 0 && o.n_headers < MAX_HEADERS) {
      o.headers[o.n_headers++] = v;
    } else if (strcmp(a, "--body-hex") == 0) {
      if ((o.req = unhex(v, &o.req_len)) == NULL)
        usage();
    } else if (strcmp(a, "--expect-hex") == 0) {
      if ((o.expect = unhex(v, &o.expect_len)) == NULL)
        usage();
    } else if (strcmp(a, "--pid") == 0 && o.n_pids < MAX_PIDS) {
      o.pids[o.n_pids++] = atoi(v);
    } else if (strcmp(a, "--vendor-pid") == 0 && o.n_vpids < MAX_PIDS) {
      o.vpids[o.n_vpids++] = atoi(v);
    } else {
      usage();
    }
  }
  if (o.conc < 1 || o.conc > MAX_CONC || o.duration_s <= 0 || o.warmup_s < 0 ||
      o.conns < 1 || o.conns > MAX_CONNS || o.conns > o.conc)
    usage();
  int h2_mode = strcmp(o.mode, "grpc") == 0;
  int core_mode = strcmp(o.mode, "grpc-core") == 0;
  int grpc_mode = h2_mode || core_mode;
  if (!grpc_mode && strcmp(o.mode, "http") != 0)
    usage();
  if (grpc_mode && o.req == NULL) {
    o.req = calloc(1, 1);
    o.req_len = 0;
  }
  if (core_mode)
    grpc_init();

  samples s;
  memset(&s, 0, sizeof(s));
  int64_t start = now_ns();
  int64_t m0 = start + (int64_t)(o.warmup_s * 1e9);
  int64_t m1 = m0 + (int64_t)(o.duration_s * 1e9);
  cpu_window cw = {.m0 = m0, .m1 = m1, .o = &o};
  int rc = h2_mode     ? run_h2(&o, &s, &cw, m1)
           : core_mode ? run_grpc_core(&o, &s, &cw, m1)
                       : run_http(&o, &s, &cw, m1);
  if (!cw.seen1) { /* the loop ended at m1 before reading the counters */
    int64_t t = now_ns();
    cpu_mark(&cw, t < m1 ? m1 : t);
  }
  long long c0 = cw.c0, c1 = cw.c1, v0 = cw.v0, v1 = cw.v1;
  int64_t w0 = cw.t0, w1 = cw.t1 ? cw.t1 : now_ns();

  if (s.n > 0) /* qsort wants a non-null base even for no samples */
    qsort(s.v, s.n, sizeof(*s.v), cmp_u32);
  double secs = (double)(w1 - w0) / 1e9;
  double tick_us = 1e6 / (double)sysconf(_SC_CLK_TCK);
  double calls = (double)(s.ok ? s.ok : 1);
  double sum = 0;
  for (size_t i = 0; i < s.n; i++)
    sum += s.v[i];
  printf(
      "{\"mode\":\"%s\",\"target\":\"%s\",\"concurrency\":%d,"
      "\"connections\":%d,"
      "\"duration_s\":%.3f,\"ok\":%llu,\"errors\":%llu,\"dropped\":%llu,"
      "\"throughput\":%.1f,\"mean_us\":%.1f,\"p50_us\":%.1f,"
      "\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
      "\"max_us\":%.1f,",
      o.mode, o.target, o.conc, grpc_mode ? o.conns : o.conc, secs,
      (unsigned long long)s.ok, (unsigned long long)s.errors,
      (unsigned long long)s.dropped, secs > 0 ? (double)s.ok / secs : 0,
      s.n ? sum / (double)s.n / 1000.0 : 0, pct_us(&s, 50), pct_us(&s, 90),
      pct_us(&s, 99), pct_us(&s, 99.9), s.n ? s.v[s.n - 1] / 1000.0 : 0);
  if (c0 >= 0 && c1 >= 0 && o.n_pids > 0)
    printf("\"cpu_us_per_call\":%.2f,", (double)(c1 - c0) * tick_us / calls);
  else
    printf("\"cpu_us_per_call\":null,");
  if (v0 >= 0 && v1 >= 0 && o.n_vpids > 0)
    printf("\"vendor_cpu_us_per_call\":%.2f,",
           (double)(v1 - v0) * tick_us / calls);
  else
    printf("\"vendor_cpu_us_per_call\":null,");
  if (cw.l0 >= 0 && cw.l1 >= 0)
    printf("\"loadgen_cpu_us_per_call\":%.2f,",
           (double)(cw.l1 - cw.l0) * tick_us / calls);
  else
    printf("\"loadgen_cpu_us_per_call\":null,");
  printf("\"first_error\":\"");
  for (const char *p = s.first_error; *p; p++)
    putchar(*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 ? '?' : *p);
  printf("\"}\n");
  free(s.v);
  free(o.req);
  free(o.expect);
  if (core_mode)
    grpc_shutdown();
  return rc == 0 ? 0 : 1;
}
