/*
 * loadgen.c - the call-path benchmark's load generator (DESIGN.md §9), run
 * by tests/bench/calls_bench.py.
 *
 * Why: the comparison "latchkey vs the vendor directly vs nginx" is only
 * honest when every system is driven the same way. This one program drives
 * HTTP/1.1 and gRPC with one concurrency model: N requests in flight from
 * one thread, each completion immediately replaced by the next request,
 * for a fixed duration after an excluded warm-up. Every latency of the
 * measured window is kept (exact samples, sorted at the end), so the
 * percentiles are exact nearest-rank values, not bucket estimates.
 *
 * - http: N keep-alive connections to host:port (one request in flight on
 *   each), driven by epoll; GET path with optional extra header lines (the
 *   key in hand for the "direct" floor). A response must be a 200 with a
 *   Content-Length body; anything else counts as an error.
 * - grpc: one channel (target "unix:/path" or "host:port"), N unary calls
 *   in flight on one completion queue; each call sends the same serialized
 *   request. A call is an error unless its status is OK and, when --expect
 *   is given, the reply contains those bytes.
 *
 * CPU time of the process under test: --pid (repeatable) names processes
 * whose utime+stime (/proc/PID/stat) are read at the start and the end of
 * the measured window; --vendor-pid the same for the vendor, reported
 * separately. Output: one JSON object on stdout.
 *
 * Invariants: every buffer has a hard cap (responses MAX_RESP bytes,
 * samples MAX_SAMPLES); the run ends after warm-up + duration even when
 * the server stops answering (calls carry a deadline, sockets are
 * non-blocking and the loop waits at most 100 ms at a time).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#define MAX_CONC 1024
#define MAX_RESP (64 * 1024)
#define MAX_REQ 8192
#define MAX_SAMPLES (50u * 1000u * 1000u)
#define MAX_PIDS 16
#define MAX_HEADERS 8

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

static int hconnect(const char *target) {
  char host[256];
  const char *colon = strrchr(target, ':');
  if (colon == NULL || (size_t)(colon - target) >= sizeof(host))
    return -1;
  memcpy(host, target, (size_t)(colon - target));
  host[colon - target] = '\0';
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    return -1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
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
  int ep = epoll_create1(EPOLL_CLOEXEC);
  hconn *cs = calloc((size_t)o->conc, sizeof(*cs));
  if (ep < 0 || cs == NULL)
    return -1;
  for (int i = 0; i < o->conc; i++) {
    cs[i].fd = hconnect(o->target);
    if (cs[i].fd < 0) {
      fprintf(stderr, "loadgen: cannot connect to %s\n", o->target);
      return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    cs[i].t0 = now_ns();
    if (write(cs[i].fd, req, (size_t)rl) != rl) {
      fprintf(stderr, "loadgen: short write\n");
      return -1;
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
        return -1;
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
        return -1;
      }
      char why[64];
      snprintf(why, sizeof(why), "HTTP status %d", status);
      record(s, c->t0, t1, m0, m1, status == 200, why);
      memmove(c->buf, c->buf + len, c->got - (size_t)len);
      c->got -= (size_t)len;
      c->t0 = now_ns();
      if (write(c->fd, req, (size_t)rl) != rl) {
        note_error(s, "short write");
        return -1;
      }
    }
  }
  for (int i = 0; i < o->conc; i++)
    close(cs[i].fd);
  free(cs);
  close(ep);
  return 0;
}

/* ---- gRPC over grpc core's C API ------------------------------------- */

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

static int run_grpc(const opts *o, samples *s, cpu_window *w, int64_t end) {
  int64_t m0 = w->m0, m1 = w->m1;
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(o->target, creds, NULL);
  grpc_channel_credentials_release(creds);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  grpc_slice method = grpc_slice_from_static_string(o->path);
  gslot *gs = calloc((size_t)o->conc, sizeof(*gs));
  int rc = 0, inflight = 0;
  if (gs == NULL)
    return -1;
  for (int i = 0; i < o->conc; i++) {
    if (gstart(ch, cq, o, method, &gs[i]) != 0) {
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
      if (gstart(ch, cq, o, method, g) != 0) {
        rc = -1;
        continue;
      }
      inflight++;
    }
  }
  free(gs);
  grpc_channel_destroy(ch);
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
          "usage: loadgen http HOST:PORT PATH | grpc TARGET METHOD\n"
          "  [-c N] [-d SECONDS] [-w WARMUP_SECONDS] [-H 'Name: value']\n"
          "  [--body-hex HEX] [--expect-hex HEX] [--pid PID]... "
          "[--vendor-pid PID]...\n");
  exit(2);
}

int main(int argc, char **argv) {
  opts o;
  memset(&o, 0, sizeof(o));
  o.conc = 1;
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
  if (o.conc < 1 || o.conc > MAX_CONC || o.duration_s <= 0 || o.warmup_s < 0)
    usage();
  int grpc_mode = strcmp(o.mode, "grpc") == 0;
  if (!grpc_mode && strcmp(o.mode, "http") != 0)
    usage();
  if (grpc_mode && o.req == NULL) {
    o.req = calloc(1, 1);
    o.req_len = 0;
  }
  if (grpc_mode)
    grpc_init();

  samples s;
  memset(&s, 0, sizeof(s));
  int64_t start = now_ns();
  int64_t m0 = start + (int64_t)(o.warmup_s * 1e9);
  int64_t m1 = m0 + (int64_t)(o.duration_s * 1e9);
  cpu_window cw = {.m0 = m0, .m1 = m1, .o = &o};
  int rc = grpc_mode ? run_grpc(&o, &s, &cw, m1) : run_http(&o, &s, &cw, m1);
  if (!cw.seen1) { /* the loop ended at m1 before reading the counters */
    int64_t t = now_ns();
    cpu_mark(&cw, t < m1 ? m1 : t);
  }
  long long c0 = cw.c0, c1 = cw.c1, v0 = cw.v0, v1 = cw.v1;
  int64_t w0 = cw.t0, w1 = cw.t1 ? cw.t1 : now_ns();

  qsort(s.v, s.n, sizeof(*s.v), cmp_u32);
  double secs = (double)(w1 - w0) / 1e9;
  double tick_us = 1e6 / (double)sysconf(_SC_CLK_TCK);
  double calls = (double)(s.ok ? s.ok : 1);
  double sum = 0;
  for (size_t i = 0; i < s.n; i++)
    sum += s.v[i];
  printf(
      "{\"mode\":\"%s\",\"target\":\"%s\",\"concurrency\":%d,"
      "\"duration_s\":%.3f,\"ok\":%llu,\"errors\":%llu,\"dropped\":%llu,"
      "\"throughput\":%.1f,\"mean_us\":%.1f,\"p50_us\":%.1f,"
      "\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
      "\"max_us\":%.1f,",
      o.mode, o.target, o.conc, secs, (unsigned long long)s.ok,
      (unsigned long long)s.errors, (unsigned long long)s.dropped,
      (double)s.ok / secs, s.n ? sum / (double)s.n / 1000.0 : 0, pct_us(&s, 50),
      pct_us(&s, 90), pct_us(&s, 99), pct_us(&s, 99.9),
      s.n ? s.v[s.n - 1] / 1000.0 : 0);
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
  if (grpc_mode)
    grpc_shutdown();
  return rc == 0 ? 0 : 1;
}
