/*
 * forward.c - the forwarder thread: a curl multi loop fed by a queue.
 *
 * Submitters append to a mutex-protected queue and wake the loop with
 * curl_multi_wakeup, but only when the loop has marked itself (under the
 * same mutex, after finding the queue empty) as about to wait: a busy loop
 * takes the queue on its next turn, and the pipe write it would not need
 * costs the submitter a system call. The loop adds queued transfers,
 * drives curl, and completes finished ones. Cancellation is polled every loop
 * turn (at most 50 ms apart), so a client that gives up frees its connection
 * quickly. Everything curl allocates goes through wiping allocators
 * (lib/wipealloc, installed by lk_forward_global_init), because curl keeps
 * private copies of the URL, headers and received bytes, any of which may
 * hold a secret. Easy handles are reset and pooled between transfers (every
 * option is set again for each one); a pooled handle's buffers may still
 * hold the tail of its last response, so the pool is freed, and wiped,
 * after IDLE_WAIT_MS with nothing in flight.
 *
 * Destinations are checked in curl's open-socket callback, which runs for
 * every new connection with the very address about to be connected to:
 * checking the name or a separate lookup would let DNS rebinding answer
 * differently the second time. Curl resolves a name once per connection
 * attempt and connects to exactly the address it hands this callback, so
 * there is no second resolution to race. Before each request is written
 * (curl's pre-request callback, which also runs on a reused keep-alive
 * connection that no open-socket callback saw for this transfer), the
 * connection's remote address is checked again under this transfer's own
 * policy. A refusal marks the transfer so its failure reads
 * as a refused destination, not as an unreachable vendor.
 */
#include "sidecar/forward.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/wipealloc.h"

#define MAX_HEADER_BYTES (64 * 1024)

/* Idle easy handles kept for reuse: enough for the transfers a busy
 * sidecar has in flight at once, each a few tens of KiB. */
#define EASY_POOL_MAX 64

/* With nothing in flight there is nothing to poll for cancellation or a
 * deadline, and a submit or destroy wakes the thread: the long wait only
 * bounds the harm of a bug, and a lost wake-up shows in tests as seconds,
 * not as a hidden 50 ms. Pooled easy handles are freed after this long
 * with nothing in flight. */
#define IDLE_WAIT_MS 10000

lk_status lk_forward_global_init(lk_err *err) {
  CURLcode rc = curl_global_init_mem(CURL_GLOBAL_DEFAULT, lk_wipealloc_malloc,
                                     lk_wipealloc_free, lk_wipealloc_realloc,
                                     lk_wipealloc_strdup, lk_wipealloc_calloc);
  if (rc != CURLE_OK) {
    return lk_fail(err, LK_INTERNAL, "libcurl initialisation failed: %s",
                   curl_easy_strerror(rc));
  }
  return LK_OK;
}

/* ---- destinations --------------------------------------------------- */

typedef enum {
  ADDR_PUBLIC,  /* may be connected to */
  ADDR_PRIVATE, /* loopback or private: only with allow_private */
  ADDR_NEVER,   /* link-local, metadata, multicast, unspecified, reserved */
} addr_class;

static int in4(uint32_t a, uint32_t net, int bits) {
  uint32_t mask = bits == 0 ? 0 : 0xffffffffu << (32 - bits);
  return (a & mask) == net;
}

/* a is in host byte order. */
static addr_class classify4(uint32_t a) {
  if (in4(a, 0x7f000000u, 8) || in4(a, 0x0a000000u, 8) ||
      in4(a, 0xac100000u, 12) || in4(a, 0xc0a80000u, 16) ||
      in4(a, 0x64400000u, 10)) {
    return ADDR_PRIVATE;
  }
  /* 0/8 (connecting to 0.0.0.0 reaches this host), 169.254/16 (with the
   * metadata service at .169.254), 224/4 multicast, 240/4 and broadcast. */
  if (in4(a, 0x00000000u, 8) || in4(a, 0xa9fe0000u, 16) ||
      in4(a, 0xe0000000u, 3)) {
    return ADDR_NEVER;
  }
  return ADDR_PUBLIC;
}

static uint32_t load4(const unsigned char *b) {
  return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
         ((uint32_t)b[2] << 8) | (uint32_t)b[3];
}

static addr_class classify6(const unsigned char *b) {
  static const unsigned char zero[16];
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0,    0,
                                           0, 0, 0, 0, 0xff, 0xff};
  static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
  if (memcmp(b, zero, 15) == 0)
    return b[15] == 1 ? ADDR_PRIVATE : ADDR_NEVER; /* ::1, :: */
  /* IPv4-mapped, NAT64 and the deprecated IPv4-compatible forms reach the
   * embedded IPv4 address. */
  if (memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0 ||
      memcmp(b, zero, 12) == 0) {
    return classify4(load4(b + 12));
  }
  if ((b[0] & 0xfe) == 0xfc)
    return ADDR_PRIVATE; /* fc00::/7, includes fd00:ec2::254 (metadata) */
  if (b[0] == 0xff)
    return ADDR_NEVER; /* multicast */
  if (b[0] == 0xfe && (b[1] & 0x80) == 0x80)
    return ADDR_NEVER; /* fe80::/10 link-local, fec0::/10 site-local */
  return ADDR_PUBLIC;
}

static addr_class classify(const struct sockaddr *sa, socklen_t len) {
  if (sa->sa_family == AF_INET &&
      len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    return classify4(ntohl(s4->sin_addr.s_addr));
  }
  if (sa->sa_family == AF_INET6 &&
      len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    return classify6(s6->sin6_addr.s6_addr);
  }
  return ADDR_NEVER;
}

int lk_forward_url_host_is_private(const char *url) {
  const char *h = strstr(url, "://");
  if (h == NULL)
    return 0;
  h += 3;
  size_t n = strcspn(h, "/?#");
  if (memchr(h, '@', n) != NULL)
    return 0; /* userinfo: not a plain literal host */
  char host[64];
  const char *end;
  if (h[0] == '[') {
    end = memchr(h, ']', n);
    if (end == NULL)
      return 0;
    h++;
  } else {
    end = memchr(h, ':', n);
    if (end == NULL)
      end = h + n;
  }
  size_t hn = (size_t)(end - h);
  if (hn == 0 || hn >= sizeof(host))
    return 0;
  memcpy(host, h, hn);
  host[hn] = '\0';
  if (strcasecmp(host, "localhost") == 0)
    return 1;
  unsigned char b[16];
  if (inet_pton(AF_INET, host, b) == 1)
    return classify4(load4(b)) == ADDR_PRIVATE;
  if (inet_pton(AF_INET6, host, b) == 1)
    return classify6(b) == ADDR_PRIVATE;
  return 0;
}

/* ---- transfers ------------------------------------------------------ */

typedef struct transfer {
  struct transfer *next;
  struct lk_forwarder *f;
  const lk_http_request *req;
  int64_t deadline_ms;
  int64_t added_us; /* monotonic µs when the handle joined the multi */
  lk_forward_cancelled cancelled;
  lk_forward_done done;
  void *ctx;
  CURL *easy;
  struct curl_slist *headers;
  lk_secret_buf *body;
  lk_secret_buf *head;
  int body_too_large;
  int head_too_large;
  int allow_private;
  int poolable; /* no credential in the URL or basic auth: see easy_give_back */
  addr_class refused;  /* ADDR_PUBLIC, or why a connect was refused */
  int refused_at_send; /* refused by the pre-request check */
  char refused_addr[INET6_ADDRSTRLEN];
} transfer;

struct lk_forwarder {
  lk_forward_opts opts;
  struct curl_slist *resolve; /* opts.test_only_resolve, or NULL */
  CURLM *multi;
  pthread_t thread;
  pthread_mutex_t mu;
  transfer *queue;  /* submitted, not yet added (guarded by mu) */
  transfer *active; /* owned by the thread */
  int stopping;     /* guarded by mu */
  /* Set (under mu) by the thread only after it saw an empty queue and
   * before it waits in curl_multi_poll; cleared when a submitter wakes it
   * and when the thread looks at the queue again. A submitter writes to
   * curl's wakeup pipe only when it finds the mark set: a busy thread
   * takes the queue on its next turn anyway. */
  int waiting;
  /* Easy handles of finished transfers, reset and kept for the next ones
   * (owned by the thread): creating one per request cost more than the
   * transfer's own bookkeeping. Freed once nothing has been in flight for
   * IDLE_WAIT_MS, so what curl's buffers held of the last responses does
   * not linger in an idle process. */
  CURL *idle_easy[EASY_POOL_MAX];
  size_t n_idle_easy;
  int64_t last_done_ms; /* when a handle last went back to the pool */
  atomic_size_t pooled; /* n_idle_easy, for lk_forwarder_pooled */
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  transfer *t = userp;
  size_t n = size * nmemb;
  if (lk_secret_buf_append(t->body, data, n, NULL) != LK_OK) {
    t->body_too_large = 1;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp) {
  transfer *t = userp;
  size_t n = size * nmemb;
  if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    /* A new response (after 1xx): keep only the final one's headers. */
    lk_secret_buf_free(t->head);
    t->head = lk_secret_buf_new(MAX_HEADER_BYTES);
    if (t->head == NULL)
      return 0;
    return n;
  }
  if (lk_secret_buf_append(t->head, data, n, NULL) != LK_OK) {
    t->head_too_large = 1;
    return 0;
  }
  return n;
}

/* Returns 1 (and records why in t) when t may not talk to address sa. */
static int refuse_addr(transfer *t, const struct sockaddr *sa, socklen_t len) {
  addr_class c = classify(sa, len);
  if (c != ADDR_NEVER && (c != ADDR_PRIVATE || t->allow_private))
    return 0;
  t->refused = c;
  const void *ip = NULL;
  if (sa->sa_family == AF_INET)
    ip = &((const struct sockaddr_in *)sa)->sin_addr;
  else if (sa->sa_family == AF_INET6)
    ip = &((const struct sockaddr_in6 *)sa)->sin6_addr;
  if (ip == NULL || inet_ntop(sa->sa_family, ip, t->refused_addr,
                              sizeof(t->refused_addr)) == NULL) {
    snprintf(t->refused_addr, sizeof(t->refused_addr), "family %d",
             sa->sa_family);
  }
  return 1;
}

/* Runs before every new connection: the address is the one curl will
 * connect to, after its own resolution. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *a) {
  transfer *t = clientp;
  if (purpose != CURLSOCKTYPE_IPCXN)
    return CURL_SOCKET_BAD;
  if (refuse_addr(t, &a->addr, a->addrlen))
    return CURL_SOCKET_BAD;
  /* An earlier address of the name may have been refused: this one is
   * not, so a later failure is not reported as a refusal. */
  t->refused = ADDR_PUBLIC;
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* Runs before each request is sent, on a new or a reused connection:
 * checks the remote address of the connection the request is about to be
 * written to (curl's record of the address it connected that socket to)
 * under this transfer's policy. */
static int on_prereq(void *clientp, char *primary_ip, char *local_ip,
                     int primary_port, int local_port) {
  (void)local_ip;
  (void)primary_port;
  (void)local_port;
  transfer *t = clientp;
  struct sockaddr_in s4;
  struct sockaddr_in6 s6;
  char ip[INET6_ADDRSTRLEN];
  memset(&s4, 0, sizeof(s4));
  memset(&s6, 0, sizeof(s6));
  size_t n = primary_ip != NULL ? strcspn(primary_ip, "%") : 0;
  if (n > 0 && n < sizeof(ip)) {
    memcpy(ip, primary_ip, n);
    ip[n] = '\0';
    s4.sin_family = AF_INET;
    s6.sin6_family = AF_INET6;
    if (inet_pton(AF_INET, ip, &s4.sin_addr) == 1) {
      if (!refuse_addr(t, (const struct sockaddr *)&s4, sizeof(s4)))
        return CURL_PREREQFUNC_OK;
      t->refused_at_send = 1;
      return CURL_PREREQFUNC_ABORT;
    }
    if (inet_pton(AF_INET6, ip, &s6.sin6_addr) == 1) {
      if (!refuse_addr(t, (const struct sockaddr *)&s6, sizeof(s6)))
        return CURL_PREREQFUNC_OK;
      t->refused_at_send = 1;
      return CURL_PREREQFUNC_ABORT;
    }
  }
  t->refused = ADDR_NEVER;
  t->refused_at_send = 1;
  snprintf(t->refused_addr, sizeof(t->refused_addr), "unknown");
  return CURL_PREREQFUNC_ABORT;
}

/* Frees every pooled easy handle (curl's allocator wipes their buffers). */
static void easy_pool_drain(lk_forwarder *f) {
  while (f->n_idle_easy > 0)
    curl_easy_cleanup(f->idle_easy[--f->n_idle_easy]);
  atomic_store(&f->pooled, 0);
}

/* A handle for a new transfer: a pooled one (reset when it was pooled, so
 * it carries no option of its last transfer) or a fresh one. */
static CURL *easy_take(lk_forwarder *f) {
  if (f->n_idle_easy > 0) {
    CURL *e = f->idle_easy[--f->n_idle_easy];
    atomic_store(&f->pooled, f->n_idle_easy);
    return e;
  }
  return curl_easy_init();
}

/* Takes back e, no longer in the multi handle: reset to curl's defaults at
 * once, so no header list, credential, body or callback pointer of the
 * finished transfer survives, then pooled, or freed when the pool is full
 * or the request put a credential where curl keeps copies of it past a
 * reset (the URL it parsed and the user name and password of basic
 * authentication stay in the handle's own state until it is reused or
 * freed; header values and bodies do not). Freed means wiped
 * (lib/wipealloc). */
static void easy_give_back(lk_forwarder *f, CURL *e, int poolable) {
  f->last_done_ms = lk_now_ms();
  if (!poolable || f->n_idle_easy == EASY_POOL_MAX) {
    curl_easy_cleanup(e);
    atomic_store(&f->pooled, f->n_idle_easy);
    return;
  }
  curl_easy_reset(e);
  f->idle_easy[f->n_idle_easy++] = e;
  atomic_store(&f->pooled, f->n_idle_easy);
}

static void transfer_free(transfer *t) {
  if (t->easy != NULL)
    easy_give_back(t->f, t->easy, t->poolable);
  if (t->headers != NULL) {
    /* Header copies live in curl's (wiping) allocator; free wipes them.
     * The handle was reset first, so curl holds no pointer to them. */
    curl_slist_free_all(t->headers);
  }
  lk_secret_buf_free(t->body);
  lk_secret_buf_free(t->head);
  free(t);
}

/* Reports res to the submitter and frees t. */
static void complete(transfer *t, lk_forward_result *res) {
  t->done(t->ctx, res);
  transfer_free(t);
}

static void complete_error(transfer *t, lk_status code, const char *fmt,
                           const char *detail) {
  lk_forward_result res;
  memset(&res, 0, sizeof(res));
  res.status = code;
  lk_fail(&res.err, code, fmt, detail);
  complete(t, &res);
}

/* Fails t as a refused destination (t->refused says which kind). */
static void complete_refused(transfer *t) {
  if (t->refused == ADDR_NEVER) {
    complete_error(t, LK_FAILED_PRECONDITION,
                   "the vendor's host resolves to a link-local, metadata, "
                   "multicast or unspecified address (%s), which is never "
                   "allowed",
                   t->refused_addr);
    return;
  }
  complete_error(t, LK_FAILED_PRECONDITION,
                 "the vendor's host resolves to a private address (%s); "
                 "only loopback vendors may, with --allow-insecure-vendors",
                 t->refused_addr);
}

static lk_status setup_easy(lk_forwarder *f, transfer *t, lk_err *err) {
  const lk_http_request *r = t->req;
  t->body = lk_secret_buf_new(f->opts.max_response_bytes);
  t->head = lk_secret_buf_new(MAX_HEADER_BYTES);
  t->easy = easy_take(f);
  if (t->body == NULL || t->head == NULL || t->easy == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  CURL *e = t->easy;
  for (size_t i = 0; i < r->n_headers; i++) {
    struct curl_slist *next =
        curl_slist_append(t->headers, lk_secret_str(r->headers[i]));
    if (next == NULL)
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    t->headers = next;
  }
  /* The agent never sets these; keep curl from adding its own Expect. */
  struct curl_slist *next = curl_slist_append(t->headers, "Expect:");
  if (next == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  t->headers = next;

  int64_t left = t->deadline_ms - lk_now_ms();
  if (left < 1)
    left = 1;
  curl_easy_setopt(e, CURLOPT_URL, lk_secret_str(r->url));
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
  if (strcmp(r->method, "GET") == 0) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
  }
  if (strcmp(r->method, "HEAD") == 0) {
    /* A custom "HEAD" makes curl wait, until the deadline, for the body
     * that Content-Length announces: NOBODY sends HEAD and reads none. */
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (r->body != NULL) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, lk_secret_str(r->body));
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)lk_secret_len(r->body));
  } else if (strcmp(r->method, "GET") != 0 &&
             strcmp(r->method, "DELETE") != 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
  }
  if (r->userpwd != NULL) {
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_USERPWD, lk_secret_str(r->userpwd));
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROXY, ""); /* not even from the environment */
  /* No host goes through a proxy; this also spares curl reading no_proxy
   * and NO_PROXY from the environment for every request. */
  curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, t);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
  if (f->resolve != NULL)
    curl_easy_setopt(e, CURLOPT_RESOLVE, f->resolve);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "");
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)left);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                   (curl_off_t)f->opts.max_response_bytes);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "latchkey/1");
  return LK_OK;
}

/* Sets res's sent and answered times from curl's timings of t, which
 * count from when curl started the transfer (just after t->added_us). A
 * new connection's TCP and TLS set-up is network time, not the sidecar's:
 * it is taken out of the time before the request was written. */
static void transfer_times(transfer *t, lk_forward_result *res) {
  curl_off_t pre = 0, total = 0, conn = 0, tls = 0;
  long new_conns = 0;
  if (curl_easy_getinfo(t->easy, CURLINFO_PRETRANSFER_TIME_T, &pre) !=
          CURLE_OK ||
      curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total) != CURLE_OK)
    return;
  curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &new_conns);
  if (new_conns > 0) {
    curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &conn);
    curl_easy_getinfo(t->easy, CURLINFO_APPCONNECT_TIME_T, &tls);
  }
  curl_off_t setup = tls > conn ? tls : conn;
  if (setup > pre)
    setup = pre;
  if (total < pre)
    total = pre;
  res->sent_us = t->added_us + (int64_t)(pre - setup);
  res->answered_us = t->added_us + (int64_t)total;
}

static void finish_transfer(lk_forwarder *f, transfer *t, CURLcode rc) {
  curl_multi_remove_handle(f->multi, t->easy);
  lk_forward_result res;
  memset(&res, 0, sizeof(res));
  if (rc == CURLE_OK) {
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    lk_secret *body = lk_secret_buf_finish(t->body);
    lk_secret *head = lk_secret_buf_finish(t->head);
    t->body = NULL;
    t->head = NULL;
    if (body == NULL || head == NULL) {
      lk_secret_free(body);
      lk_secret_free(head);
      complete_error(t, LK_RESOURCE_EXHAUSTED, "%s", "out of memory");
      return;
    }
    res.status = LK_OK;
    res.http_status = code;
    transfer_times(t, &res);
    res.body = body;
    res.headers = head;
    complete(t, &res);
    lk_secret_free(body);
    lk_secret_free(head);
    return;
  }
  if (t->body_too_large || rc == CURLE_FILESIZE_EXCEEDED) {
    complete_error(t, LK_RESOURCE_EXHAUSTED,
                   "the vendor's response is larger than the sidecar's "
                   "--max-response-bytes limit%s: ask for less data "
                   "(paging, filters) or raise the limit",
                   "");
    return;
  }
  if (t->head_too_large) {
    complete_error(t, LK_RESOURCE_EXHAUSTED,
                   "the vendor's response headers exceed 64 KiB%s", "");
    return;
  }
  if (t->refused_at_send) {
    complete_refused(t);
    return;
  }
  if (rc == CURLE_OPERATION_TIMEDOUT ||
      (rc == CURLE_ABORTED_BY_CALLBACK && lk_now_ms() >= t->deadline_ms)) {
    complete_error(t, LK_DEADLINE_EXCEEDED,
                   "the vendor did not answer before the call's deadline%s: "
                   "retry with a longer deadline",
                   "");
    return;
  }
  if (rc == CURLE_ABORTED_BY_CALLBACK) {
    complete_error(t, LK_DEADLINE_EXCEEDED, "the caller cancelled the call%s",
                   "");
    return;
  }
  if (t->refused != ADDR_PUBLIC) {
    complete_refused(t);
    return;
  }
  complete_error(t, LK_UNAVAILABLE,
                 "the vendor could not be reached (%s): check that the "
                 "tool's base_url is right and the vendor is up, then retry",
                 curl_easy_strerror(rc));
}

static int64_t poll_wait_ms(const lk_forwarder *f) {
  if (f->active == NULL) {
    if (f->n_idle_easy == 0)
      return IDLE_WAIT_MS;
    int64_t until_drain = f->last_done_ms + IDLE_WAIT_MS - lk_now_ms();
    return until_drain < 1 ? 1 : until_drain;
  }
  int64_t wait = 50;
  int64_t now = lk_now_ms();
  for (const transfer *t = f->active; t != NULL; t = t->next) {
    if (t->deadline_ms - now < wait)
      wait = t->deadline_ms - now;
  }
  return wait < 1 ? 1 : wait;
}

static void *forwarder_main(void *arg) {
  lk_forwarder *f = arg;
  for (;;) {
    pthread_mutex_lock(&f->mu);
    transfer *incoming = f->queue;
    f->queue = NULL;
    int stopping = f->stopping;
    f->waiting = 0;
    pthread_mutex_unlock(&f->mu);

    while (incoming != NULL) {
      transfer *t = incoming;
      incoming = t->next;
      lk_err err;
      lk_err_clear(&err);
      if (stopping) {
        complete_error(t, LK_UNAVAILABLE, "%s",
                       "the sidecar is shutting down: retry on another one");
        continue;
      }
      if (setup_easy(f, t, &err) != LK_OK) {
        complete_error(t, err.code, "%s", err.msg);
        continue;
      }
      t->added_us = lk_now_us();
      CURLMcode mc = curl_multi_add_handle(f->multi, t->easy);
      if (mc != CURLM_OK) {
        complete_error(t, LK_INTERNAL, "curl_multi_add_handle: %s",
                       curl_multi_strerror(mc));
        continue;
      }
      t->next = f->active;
      f->active = t;
    }

    /* Drop transfers whose caller is gone. */
    for (transfer **pp = &f->active; *pp != NULL;) {
      transfer *t = *pp;
      if (stopping) {
        *pp = t->next;
        curl_multi_remove_handle(f->multi, t->easy);
        complete_error(t, LK_UNAVAILABLE, "%s",
                       "the sidecar is shutting down: retry on another one");
        continue;
      }
      if (t->cancelled != NULL && t->cancelled(t->ctx)) {
        *pp = t->next;
        finish_transfer(f, t, CURLE_ABORTED_BY_CALLBACK);
        continue;
      }
      pp = &t->next;
    }
    if (stopping)
      break;

    int running = 0;
    curl_multi_perform(f->multi, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(f->multi, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      transfer *done = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&done);
      CURLcode rc = msg->data.result;
      for (transfer **pp = &f->active; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == done) {
          *pp = done->next;
          break;
        }
      }
      if (done != NULL)
        finish_transfer(f, done, rc);
    }
    /* Wait only on an empty queue, and say so under mu first: a submit
     * after this point sees the mark and writes to the wakeup pipe, which
     * curl_multi_poll then returns for even if the write came first. */
    pthread_mutex_lock(&f->mu);
    int idle = f->queue == NULL && !f->stopping;
    f->waiting = idle;
    pthread_mutex_unlock(&f->mu);
    if (idle && f->active == NULL && f->n_idle_easy > 0 &&
        lk_now_ms() - f->last_done_ms >= IDLE_WAIT_MS) {
      easy_pool_drain(f);
    }
    if (idle)
      curl_multi_poll(f->multi, NULL, 0, (int)poll_wait_ms(f), NULL);
  }
  return NULL;
}

lk_status lk_forwarder_new(const lk_forward_opts *opts, lk_forwarder **out,
                           lk_err *err) {
  *out = NULL;
  lk_forwarder *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  atomic_init(&f->pooled, 0);
  f->opts = *opts;
  if (f->opts.max_connections <= 0)
    f->opts.max_connections = 64;
  pthread_mutex_init(&f->mu, NULL);
  f->multi = curl_multi_init();
  if (f->multi == NULL) {
    pthread_mutex_destroy(&f->mu);
    free(f);
    return lk_fail(err, LK_INTERNAL, "curl_multi_init failed");
  }
  curl_multi_setopt(f->multi, CURLMOPT_MAXCONNECTS, f->opts.max_connections);
  if (opts->test_only_resolve != NULL) {
    f->resolve = curl_slist_append(NULL, opts->test_only_resolve);
    if (f->resolve == NULL) {
      curl_multi_cleanup(f->multi);
      pthread_mutex_destroy(&f->mu);
      free(f);
      return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  f->opts.test_only_resolve = NULL; /* the caller's string; f->resolve owns */
  if (pthread_create(&f->thread, NULL, forwarder_main, f) != 0) {
    curl_slist_free_all(f->resolve);
    curl_multi_cleanup(f->multi);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "cannot start the forwarder thread");
  }
  *out = f;
  return LK_OK;
}

void lk_forwarder_submit(lk_forwarder *f, const lk_http_request *req,
                         int allow_private, int64_t deadline_ms,
                         lk_forward_cancelled cancelled, lk_forward_done done,
                         void *ctx) {
  transfer *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    lk_forward_result res;
    memset(&res, 0, sizeof(res));
    res.status = lk_fail(&res.err, LK_RESOURCE_EXHAUSTED, "out of memory");
    done(ctx, &res);
    return;
  }
  t->f = f;
  t->req = req;
  t->poolable = req->userpwd == NULL && !req->url_has_credential;
  t->allow_private = allow_private;
  t->deadline_ms = deadline_ms;
  t->cancelled = cancelled;
  t->done = done;
  t->ctx = ctx;
  pthread_mutex_lock(&f->mu);
  /* Appending at the head reverses order within one wake-up; harmless. */
  t->next = f->queue;
  f->queue = t;
  int wake = f->waiting;
  f->waiting = 0; /* one write is enough until the thread waits again */
  pthread_mutex_unlock(&f->mu);
  if (wake)
    curl_multi_wakeup(f->multi);
}

void lk_forwarder_destroy(lk_forwarder *f) {
  if (f == NULL)
    return;
  pthread_mutex_lock(&f->mu);
  f->stopping = 1;
  pthread_mutex_unlock(&f->mu);
  curl_multi_wakeup(f->multi);
  pthread_join(f->thread, NULL);
  /* Anything submitted after the thread's last look at the queue. */
  while (f->queue != NULL) {
    transfer *t = f->queue;
    f->queue = t->next;
    complete_error(t, LK_UNAVAILABLE, "%s",
                   "the sidecar is shutting down: retry on another one");
  }
  easy_pool_drain(f);
  curl_multi_cleanup(f->multi);
  curl_slist_free_all(f->resolve);
  pthread_mutex_destroy(&f->mu);
  free(f);
}

size_t lk_forwarder_pooled(lk_forwarder *f) {
  return atomic_load(&f->pooled);
}
