/*
 * token_server.c - the loopback token endpoint of token_server.h.
 *
 * libmicrohttpd with a thread per connection, so a delayed answer holds
 * only its own connection; all state is under one mutex. Request bodies
 * are accumulated per connection (at most 16 KiB; more is answered 413).
 */
#include "tests/unit/token_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#define MAX_BODY (16 * 1024)
#define MAX_TOKENS 1024

typedef struct {
  char token[TS_MAX_VALUE];
  int live;
} refresh_entry;

struct token_server {
  struct MHD_Daemon *d;
  int port;
  char url[64];
  pthread_mutex_t mu;
  ts_mode mode;
  int delay_ms;
  long long expires_in;
  int rotate;
  char client_id[TS_MAX_VALUE];
  char client_secret[TS_MAX_VALUE];
  int public_client;
  unsigned canned_status;
  char *canned;
  size_t canned_len;
  int issued;
  char current_access[TS_MAX_VALUE];
  refresh_entry refresh[MAX_TOKENS];
  size_t n_refresh;
  ts_stats stats;
  ts_request *log; /* TS_MAX_REQUESTS */
};

typedef struct {
  char buf[MAX_BODY + 1];
  size_t len;
  int too_large;
} conn_body;

/* Copies C string src into dst (cap bytes), truncating. */
static void copy_str(char *dst, size_t cap, const char *src) {
  size_t n = strnlen(src, cap - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Form-urldecodes n bytes at s into out (cap bytes, truncating). */
static void urldecode(const char *s, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 1 < cap; i++) {
    if (s[i] == '+') {
      out[o++] = ' ';
    } else if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
               hexval(s[i + 2]) >= 0) {
      out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else {
      out[o++] = s[i];
    }
  }
  out[o] = '\0';
}

/* Finds form field name in body and decodes it into out ("" if absent). */
static void form_get(const char *body, const char *name, char *out,
                     size_t cap) {
  size_t nl = strlen(name);
  const char *p = body;
  out[0] = '\0';
  while (*p != '\0') {
    const char *amp = strchr(p, '&');
    size_t seg = amp != NULL ? (size_t)(amp - p) : strlen(p);
    if (seg > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
      urldecode(p + nl + 1, seg - nl - 1, out, cap);
      return;
    }
    if (amp == NULL)
      break;
    p = amp + 1;
  }
}

/* Decodes the Basic header into id and secret (urldecoded); 0 if none. */
static int basic_creds(const char *auth, char *id, char *secret, size_t cap) {
  unsigned char raw[1024];
  size_t raw_len = 0;
  if (strncasecmp(auth, "Basic ", 6) != 0)
    return 0;
  if (sodium_base642bin(raw, sizeof(raw) - 1, auth + 6, strlen(auth + 6), NULL,
                        &raw_len, NULL, sodium_base64_VARIANT_ORIGINAL) != 0)
    return -1;
  raw[raw_len] = '\0';
  char *colon = strchr((char *)raw, ':');
  if (colon == NULL)
    return -1;
  urldecode((char *)raw, (size_t)(colon - (char *)raw), id, cap);
  urldecode(colon + 1, strlen(colon + 1), secret, cap);
  return 1;
}

static void random_hex(char *out, size_t nbytes) {
  unsigned char b[32];
  randombytes_buf(b, nbytes);
  for (size_t i = 0; i < nbytes; i++)
    sprintf(out + 2 * i, "%02x", b[i]);
}

/* Issues an access token (mu held). */
static void issue_access(token_server *ts, char *out, size_t cap) {
  char hex[25];
  ts->issued++;
  ts->stats.issued = ts->issued;
  random_hex(hex, 12);
  snprintf(out, cap, "at-%d-%s", ts->issued, hex);
  copy_str(ts->current_access, sizeof(ts->current_access), out);
}

/* Issues a live refresh token (mu held). */
static void issue_refresh(token_server *ts, char *out, size_t cap) {
  char hex[25];
  random_hex(hex, 12);
  snprintf(out, cap, "rt-%d-%s", ts->issued, hex);
  if (ts->n_refresh < MAX_TOKENS) {
    copy_str(ts->refresh[ts->n_refresh].token, TS_MAX_VALUE, out);
    ts->refresh[ts->n_refresh].live = 1;
    ts->n_refresh++;
  }
}

static refresh_entry *find_refresh(token_server *ts, const char *t) {
  for (size_t i = 0; i < ts->n_refresh; i++) {
    if (strcmp(ts->refresh[i].token, t) == 0)
      return &ts->refresh[i];
  }
  return NULL;
}

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status,
                              const char *body, size_t len) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (r == NULL)
    return MHD_NO;
  MHD_add_response_header(r, "Content-Type", "application/json");
  MHD_add_response_header(r, "Cache-Control", "no-store");
  enum MHD_Result ret = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ret;
}

/* Decides the answer to one complete request (mu held); writes the body
 * into out and returns the status. */
static unsigned decide(token_server *ts, ts_request *rq, char *out,
                       size_t cap) {
  char id[TS_MAX_VALUE];
  char secret[TS_MAX_VALUE];
  int basic = basic_creds(rq->authorization, id, secret, sizeof(id));
  if (strcmp(rq->path, "/token") != 0) {
    snprintf(out, cap, "{\"error\":\"not_found\"}");
    return 404;
  }
  if (ts->mode == TS_FAIL) {
    snprintf(out, cap, "{\"error\":\"temporarily_unavailable\"}");
    return 503;
  }
  if (basic == 0) {
    copy_str(id, sizeof(id), rq->body_client_id);
    copy_str(secret, sizeof(secret), rq->body_client_secret);
  }
  int client_ok = basic >= 0 && strcmp(id, ts->client_id) == 0 &&
                  (ts->public_client ? secret[0] == '\0'
                                     : strcmp(secret, ts->client_secret) == 0);
  if (!client_ok) {
    snprintf(out, cap, "{\"error\":\"invalid_client\"}");
    return 401;
  }
  if (ts->mode == TS_INVALID_GRANT) {
    snprintf(out, cap,
             "{\"error\":\"invalid_grant\",\"error_description\":\"the grant "
             "was revoked\"}");
    return 400;
  }
  char access[TS_MAX_VALUE];
  char refresh[TS_MAX_VALUE];
  char expires[64] = "";
  if (ts->expires_in >= 0)
    snprintf(expires, sizeof(expires), ",\"expires_in\":%lld", ts->expires_in);
  if (strcmp(rq->grant_type, "refresh_token") == 0) {
    refresh_entry *e = find_refresh(ts, rq->refresh_token);
    if (e != NULL && !e->live) {
      ts->stats.reuse++;
      snprintf(out, cap,
               "{\"error\":\"invalid_grant\",\"error_description\":\"refresh "
               "token reused\"}");
      return 400;
    }
    if (e == NULL) {
      snprintf(out, cap,
               "{\"error\":\"invalid_grant\",\"error_description\":\"unknown "
               "refresh token\"}");
      return 400;
    }
    issue_access(ts, access, sizeof(access));
    if (ts->rotate) {
      e->live = 0;
      issue_refresh(ts, refresh, sizeof(refresh));
      snprintf(out, cap,
               "{\"access_token\":\"%s\",\"token_type\":\"Bearer\",\"refresh_"
               "token\":\"%s\"%s}",
               access, refresh, expires);
    } else {
      snprintf(out, cap,
               "{\"access_token\":\"%s\",\"token_type\":\"Bearer\"%s}", access,
               expires);
    }
    return 200;
  }
  if (strcmp(rq->grant_type, "client_credentials") == 0) {
    issue_access(ts, access, sizeof(access));
    snprintf(out, cap,
             "{\"access_token\":\"%s\",\"token_type\":\"bearer\"%s%s%s%s}",
             access, expires, rq->scope[0] ? ",\"scope\":\"" : "", rq->scope,
             rq->scope[0] ? "\"" : "");
    return 200;
  }
  snprintf(out, cap, "{\"error\":\"unsupported_grant_type\"}");
  return 400;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn,
                              const char *url, const char *method,
                              const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls) {
  token_server *ts = cls;
  (void)version;
  conn_body *cb = *con_cls;
  if (cb == NULL) {
    cb = calloc(1, sizeof(*cb));
    if (cb == NULL)
      return MHD_NO;
    *con_cls = cb;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    if (cb->len + *upload_data_size > MAX_BODY) {
      cb->too_large = 1;
    } else {
      memcpy(cb->buf + cb->len, upload_data, *upload_data_size);
      cb->len += *upload_data_size;
    }
    *upload_data_size = 0;
    return MHD_YES;
  }
  cb->buf[cb->len] = '\0';
  ts_request rq;
  memset(&rq, 0, sizeof(rq));
  copy_str(rq.path, sizeof(rq.path), url);
  const char *h =
      MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
  copy_str(rq.authorization, sizeof(rq.authorization), h ? h : "");
  h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
  copy_str(rq.content_type, sizeof(rq.content_type), h ? h : "");
  h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Accept");
  copy_str(rq.accept, sizeof(rq.accept), h ? h : "");
  copy_str(rq.raw_body, sizeof(rq.raw_body), cb->buf);
  form_get(cb->buf, "grant_type", rq.grant_type, sizeof(rq.grant_type));
  form_get(cb->buf, "refresh_token", rq.refresh_token,
           sizeof(rq.refresh_token));
  form_get(cb->buf, "scope", rq.scope, sizeof(rq.scope));
  form_get(cb->buf, "client_id", rq.body_client_id, sizeof(rq.body_client_id));
  form_get(cb->buf, "client_secret", rq.body_client_secret,
           sizeof(rq.body_client_secret));

  pthread_mutex_lock(&ts->mu);
  int delay = ts->delay_ms;
  int slot = ts->stats.requests++;
  pthread_mutex_unlock(&ts->mu);
  if (delay > 0)
    sleep_ms(delay);
  unsigned status;
  size_t out_len = 0;
  char *out = NULL;
  pthread_mutex_lock(&ts->mu);
  int canned = ts->mode == TS_CANNED && strcmp(rq.path, "/token") == 0;
  out = malloc(canned ? ts->canned_len + 1 : MAX_BODY + 1);
  if (out == NULL) {
    pthread_mutex_unlock(&ts->mu);
    return MHD_NO;
  }
  if (canned) {
    memcpy(out, ts->canned, ts->canned_len);
    out_len = ts->canned_len;
    status = ts->canned_status;
  } else if (cb->too_large || strcmp(method, "POST") != 0) {
    snprintf(out, MAX_BODY, "{\"error\":\"invalid_request\"}");
    status = cb->too_large ? 413 : 405;
    out_len = strlen(out);
  } else {
    status = decide(ts, &rq, out, MAX_BODY);
    out_len = strlen(out);
  }
  rq.status = status;
  if (slot < TS_MAX_REQUESTS)
    ts->log[slot] = rq;
  pthread_mutex_unlock(&ts->mu);
  enum MHD_Result ret = answer(conn, status, out, out_len);
  free(out);
  return ret;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)conn;
  (void)toe;
  free(*con_cls);
  *con_cls = NULL;
}

token_server *ts_start(void) {
  token_server *ts = calloc(1, sizeof(*ts));
  if (ts == NULL || sodium_init() < 0)
    goto fail;
  ts->log = calloc(TS_MAX_REQUESTS, sizeof(*ts->log));
  if (ts->log == NULL)
    goto fail;
  pthread_mutex_init(&ts->mu, NULL);
  ts->expires_in = 3600;
  ts->rotate = 1;
  copy_str(ts->client_id, sizeof(ts->client_id), TS_CLIENT_ID);
  snprintf(ts->client_secret, sizeof(ts->client_secret), "%s",
           TS_CLIENT_SECRET);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  ts->d = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL,
      NULL, handle, ts, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
      MHD_OPTION_NOTIFY_COMPLETED, completed, ts, MHD_OPTION_CONNECTION_TIMEOUT,
      (unsigned int)30, MHD_OPTION_END);
  if (ts->d == NULL)
    goto fail;
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(ts->d, MHD_DAEMON_INFO_BIND_PORT);
  if (info == NULL)
    goto fail;
  ts->port = (int)info->port;
  snprintf(ts->url, sizeof(ts->url), "http://127.0.0.1:%d/token", ts->port);
  return ts;
fail:
  ts_stop(ts);
  return NULL;
}

void ts_stop(token_server *ts) {
  if (ts == NULL)
    return;
  if (ts->d != NULL)
    MHD_stop_daemon(ts->d);
  free(ts->canned);
  free(ts->log);
  free(ts);
}

const char *ts_url(const token_server *ts) {
  return ts->url;
}

int ts_port(const token_server *ts) {
  return ts->port;
}

void ts_set_mode(token_server *ts, ts_mode mode) {
  pthread_mutex_lock(&ts->mu);
  ts->mode = mode;
  pthread_mutex_unlock(&ts->mu);
}

void ts_set_delay_ms(token_server *ts, int ms) {
  pthread_mutex_lock(&ts->mu);
  ts->delay_ms = ms;
  pthread_mutex_unlock(&ts->mu);
}

void ts_set_expires_in(token_server *ts, long long seconds) {
  pthread_mutex_lock(&ts->mu);
  ts->expires_in = seconds;
  pthread_mutex_unlock(&ts->mu);
}

void ts_set_rotate(token_server *ts, int on) {
  pthread_mutex_lock(&ts->mu);
  ts->rotate = on;
  pthread_mutex_unlock(&ts->mu);
}

void ts_set_client(token_server *ts, const char *id, const char *secret) {
  pthread_mutex_lock(&ts->mu);
  copy_str(ts->client_id, sizeof(ts->client_id), id);
  snprintf(ts->client_secret, sizeof(ts->client_secret), "%s",
           secret ? secret : "");
  ts->public_client = secret == NULL;
  pthread_mutex_unlock(&ts->mu);
}

void ts_set_canned(token_server *ts, unsigned status, const char *body,
                   size_t len) {
  char *copy = malloc(len + 1);
  if (copy == NULL)
    return;
  memcpy(copy, body, len);
  copy[len] = '\0';
  pthread_mutex_lock(&ts->mu);
  free(ts->canned);
  ts->canned = copy;
  ts->canned_len = len;
  ts->canned_status = status;
  ts->mode = TS_CANNED;
  pthread_mutex_unlock(&ts->mu);
}

void ts_seed(token_server *ts, char *access, char *refresh, size_t cap) {
  pthread_mutex_lock(&ts->mu);
  issue_access(ts, access, cap);
  issue_refresh(ts, refresh, cap);
  pthread_mutex_unlock(&ts->mu);
}

ts_stats ts_get_stats(token_server *ts) {
  pthread_mutex_lock(&ts->mu);
  ts_stats s = ts->stats;
  pthread_mutex_unlock(&ts->mu);
  return s;
}

int ts_request_at(token_server *ts, int i, ts_request *out) {
  int ok = 0;
  pthread_mutex_lock(&ts->mu);
  if (i >= 0 && i < ts->stats.requests && i < TS_MAX_REQUESTS) {
    *out = ts->log[i];
    ok = 1;
  }
  pthread_mutex_unlock(&ts->mu);
  return ok;
}

void ts_current_access(token_server *ts, char *out, size_t cap) {
  pthread_mutex_lock(&ts->mu);
  snprintf(out, cap, "%s", ts->current_access);
  pthread_mutex_unlock(&ts->mu);
}
