/*
 * tls.c - checks of TLS files and plain-words reasons for failed TLS
 * connections.
 *
 * Why it exists: grpc core parses a server's certificate and key only when
 * the first listener is added, and then reports a bad pair as an address it
 * "cannot listen on"; and a client whose handshake failed gets a transport
 * string ("Ssl handshake failed: ... certificate verify failed") that says
 * neither which certificate, nor why, nor what to do. latchkey-cp checks
 * its --tls-cert/--tls-key here before it touches etcd, and latchkeyd and
 * latchkeyctl turn a failed connection into one sentence here.
 *
 * Invariants:
 * - Nothing here decides trust. grpc verifies (chain against the --tls-ca
 *   bundle, then the peer name) and refuses; lk_tls_explain_failure runs
 *   only after that refusal. Its probe is a second handshake to the same
 *   address with the same bundle, used only to read OpenSSL's verify
 *   error; it sends its ClientHello and nothing after, and is closed when
 *   the handshake ends, so no token or request byte ever travels on it.
 * - The private key file is read with open() and read() straight into
 *   guarded memory (lib/secret.h), never through a stdio buffer, and
 *   parsed from there; OpenSSL's transient copies while decoding it are
 *   outside our reach, as are grpc's own when it loads the same file.
 * - Every file read is capped at LK_TLS_MAX_FILE_BYTES, every probe at
 *   LK_TLS_PROBE_TIMEOUT_MS; names taken from a peer's certificate are
 *   printed RFC 2253-escaped (no control characters) and truncated.
 */
#include "lib/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "lib/clock.h"
#include "lib/secret.h"

/* ---- server files ------------------------------------------------------ */

/* Reads the whole file at path (given as flag) into guarded memory, with
 * open() and read() straight into it: no stdio buffer ever holds the
 * bytes (it would be freed unwiped). */
static lk_status read_file(const char *path, const char *flag, lk_secret **out,
                           lk_err *err) {
  lk_status st = LK_OK;
  lk_secret *buf = NULL;
  size_t total = 0;

  *out = NULL;
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "cannot read %s %s: %s", flag,
                   path, strerror(errno));
  }
  /* One byte past the cap, to tell "exactly full" from "too big". */
  buf = lk_secret_new((size_t)LK_TLS_MAX_FILE_BYTES + 1);
  if (buf == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory reading %s", flag);
    goto done;
  }
  while (total <= (size_t)LK_TLS_MAX_FILE_BYTES) {
    ssize_t got = read(fd, lk_secret_mut(buf) + total,
                       (size_t)LK_TLS_MAX_FILE_BYTES + 1 - total);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got < 0) {
      st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot read %s %s: %s", flag,
                   path, strerror(errno));
      goto done;
    }
    if (got == 0) {
      break;
    }
    total += (size_t)got;
  }
  if (total > (size_t)LK_TLS_MAX_FILE_BYTES) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "%s %s is larger than %d bytes",
                 flag, path, LK_TLS_MAX_FILE_BYTES);
    goto done;
  }
  if (total == 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "%s %s is empty", flag, path);
    goto done;
  }
  *out = lk_secret_from(lk_secret_data(buf), total);
  if (*out == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory reading %s", flag);
  }
done:
  lk_secret_free(buf); /* wipes */
  close(fd);
  return st;
}

/* Declines every passphrase request: grpc loads keys without one, so an
 * encrypted key must fail here too, not prompt on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)u;
  return 0;
}

/* Formats an ASN.1 time as "YYYY-MM-DD HH:MM:SS UTC". */
static void format_time(const ASN1_TIME *t, char *out, size_t cap) {
  struct tm tm;
  memset(&tm, 0, sizeof(tm));
  if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1 ||
      strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0) {
    snprintf(out, cap, "an unreadable date");
  }
}

static void fill_validity(X509 *cert, lk_tls_validity *v) {
  const ASN1_TIME *nb = X509_get0_notBefore(cert);
  const ASN1_TIME *na = X509_get0_notAfter(cert);
  memset(v, 0, sizeof(*v));
  format_time(nb, v->not_before, sizeof(v->not_before));
  format_time(na, v->not_after, sizeof(v->not_after));
  v->not_yet_valid = nb != NULL && X509_cmp_current_time(nb) > 0;
  v->expired = na != NULL && X509_cmp_current_time(na) < 0;
}

lk_status lk_tls_check_server_files(const char *cert_path, const char *key_path,
                                    lk_tls_validity *validity, lk_err *err) {
  lk_status st = LK_OK;
  lk_secret *cert_pem = NULL;
  lk_secret *key_pem = NULL;
  BIO *bio = NULL;
  X509 *cert = NULL;
  EVP_PKEY *key = NULL;

  memset(validity, 0, sizeof(*validity));
  st = read_file(cert_path, "--tls-cert", &cert_pem, err);
  if (st != LK_OK) {
    goto done;
  }
  st = read_file(key_path, "--tls-key", &key_pem, err);
  if (st != LK_OK) {
    goto done;
  }
  bio = BIO_new_mem_buf(lk_secret_data(cert_pem), (int)lk_secret_len(cert_pem));
  cert = bio != NULL ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
  BIO_free(bio);
  bio = NULL;
  if (cert == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "--tls-cert %s holds no PEM certificate (-----BEGIN "
                 "CERTIFICATE-----)",
                 cert_path);
    goto done;
  }
  bio = BIO_new_mem_buf(lk_secret_data(key_pem), (int)lk_secret_len(key_pem));
  key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL)
                    : NULL;
  if (key == NULL && strstr(lk_secret_str(key_pem), "ENCRYPTED") != NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "--tls-key %s is encrypted: grpc cannot ask for a "
                 "passphrase, give an unencrypted PEM key in a 0600 file",
                 key_path);
    goto done;
  }
  if (key == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "--tls-key %s holds no PEM private key (-----BEGIN PRIVATE "
                 "KEY-----)",
                 key_path);
    goto done;
  }
  if (X509_check_private_key(cert, key) != 1) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "--tls-key %s does not match the certificate in --tls-cert %s",
                 key_path, cert_path);
    goto done;
  }
  fill_validity(cert, validity);
done:
  ERR_clear_error();
  BIO_free(bio);
  EVP_PKEY_free(key);
  X509_free(cert);
  lk_secret_free(key_pem);
  lk_secret_free(cert_pem);
  return st;
}

/* ---- failure diagnosis ------------------------------------------------- */

/* Longest host name or port kept from a target. */
#define HOST_MAX 256
#define PORT_MAX 16
/* Longest certificate name quoted in a reason. */
#define NAME_MAX_CHARS 120

/* Splits a gRPC target ("host:port", "[v6]:port", optionally after a
 * "dns:///", "dns:", "ipv4:" or "ipv6:" scheme; the first of a list) into
 * host and port. Returns 0 for unix: targets and anything else. */
static int split_target(const char *address, char *host, char *port) {
  static const char *const schemes[] = {"dns:///", "dns:", "ipv4:", "ipv6:"};
  const char *a = address;
  const char *end;
  const char *colon;
  size_t hlen, plen;

  for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
    size_t n = strlen(schemes[i]);
    if (strncmp(a, schemes[i], n) == 0) {
      a += n;
      break;
    }
  }
  end = strchr(a, ',');
  if (end == NULL) {
    end = a + strlen(a);
  }
  if (a[0] == '[') {
    const char *close = memchr(a, ']', (size_t)(end - a));
    if (close == NULL || close + 1 >= end || close[1] != ':') {
      return 0;
    }
    hlen = (size_t)(close - a - 1);
    memcpy(host, a + 1, hlen < HOST_MAX ? hlen : 0);
    colon = close + 1;
  } else {
    colon = NULL;
    for (const char *p = a; p < end; p++) {
      if (*p == ':') {
        colon = p;
      }
    }
    if (colon == NULL || strchr(a, '/') != NULL) {
      return 0;
    }
    hlen = (size_t)(colon - a);
    memcpy(host, a, hlen < HOST_MAX ? hlen : 0);
  }
  plen = (size_t)(end - colon - 1);
  if (hlen == 0 || hlen >= HOST_MAX || plen == 0 || plen >= PORT_MAX) {
    return 0;
  }
  host[hlen] = '\0';
  memcpy(port, colon + 1, plen);
  port[plen] = '\0';
  return 1;
}

static int is_ip_literal(const char *host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, buf) == 1 ||
         inet_pton(AF_INET6, host, buf) == 1;
}

/* What the probe saw: the first verify error and the certificate it was
 * about. */
typedef struct {
  int error; /* X509_V_ERR_*; X509_V_OK when none was seen */
  char issuer[NAME_MAX_CHARS + 1];
  char not_before[32];
  char not_after[32];
} probe_result;

/* Prints name RFC 2253-escaped into out, truncated to NAME_MAX_CHARS. */
static void name_line(const X509_NAME *name, char *out, size_t cap) {
  BIO *b = BIO_new(BIO_s_mem());
  int n = 0;
  out[0] = '\0';
  if (b == NULL) {
    return;
  }
  if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0) {
    n = BIO_read(b, out, (int)cap - 1);
  }
  out[n > 0 ? n : 0] = '\0';
  BIO_free(b);
}

/* Records the first verify error and its certificate; keeps OpenSSL's
 * verdict (the handshake still fails on it). */
static int on_verify(int ok, X509_STORE_CTX *x) {
  SSL *ssl;
  probe_result *p;
  X509 *c;

  if (ok) {
    return ok;
  }
  ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
  p = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
  if (p == NULL || p->error != X509_V_OK) {
    return ok;
  }
  p->error = X509_STORE_CTX_get_error(x);
  c = X509_STORE_CTX_get_current_cert(x);
  if (c != NULL) {
    name_line(X509_get_issuer_name(c), p->issuer, sizeof(p->issuer));
    format_time(X509_get0_notBefore(c), p->not_before, sizeof(p->not_before));
    format_time(X509_get0_notAfter(c), p->not_after, sizeof(p->not_after));
  }
  return ok;
}

/* Opens a blocking TCP socket to host:port within deadline_ms (a
 * monotonic time), with send and receive timeouts up to it; -1 on
 * failure. */
static int connect_bounded(const char *host, const char *port,
                           int64_t deadline_ms) {
  struct addrinfo hints, *res = NULL;
  int fd = -1;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL) {
    return -1;
  }
  fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int64_t left = deadline_ms - lk_now_ms();
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (errno != EINPROGRESS || left <= 0 || poll(&pfd, 1, (int)left) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0 ||
        so_error != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd >= 0) {
    int64_t left = deadline_ms - lk_now_ms();
    struct timeval tv = {.tv_sec = left / 1000,
                         .tv_usec = (left % 1000) * 1000};
    if (left <= 0 || fcntl(fd, F_SETFL, 0) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
      close(fd);
      fd = -1;
    }
  }
  return fd;
}

/* Handshakes once with host:port, verifying the chain against ca_pem as
 * grpc does, and records OpenSSL's verify error in *p. Sends nothing
 * after the handshake. Returns 1 when it got as far as a verdict. */
static int probe(const char *host, const char *port, const char *ca_pem,
                 probe_result *p) {
  static const unsigned char alpn_h2[] = {2, 'h', '2'};
  SSL_CTX *ctx = NULL;
  SSL *ssl = NULL;
  BIO *bio = NULL;
  X509 *ca = NULL;
  int fd = -1;
  int added = 0;
  int got = 0;

  memset(p, 0, sizeof(*p));
  p->error = X509_V_OK;
  ctx = SSL_CTX_new(TLS_client_method());
  bio = BIO_new_mem_buf(ca_pem, -1);
  if (ctx == NULL || bio == NULL ||
      SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    goto done;
  }
  while ((ca = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL)) != NULL) {
    added += X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca) == 1;
    X509_free(ca);
  }
  if (added == 0) {
    goto done;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, on_verify);
  ssl = SSL_new(ctx);
  if (ssl == NULL || SSL_set_app_data(ssl, p) != 1 ||
      SSL_set_alpn_protos(ssl, alpn_h2, sizeof(alpn_h2)) != 0 ||
      (!is_ip_literal(host) && SSL_set_tlsext_host_name(ssl, host) != 1)) {
    goto done;
  }
  fd = connect_bounded(host, port, lk_now_ms() + LK_TLS_PROBE_TIMEOUT_MS);
  if (fd < 0 || SSL_set_fd(ssl, fd) != 1) {
    goto done;
  }
  if (SSL_connect(ssl) != 1 && p->error == X509_V_OK) {
    long v = SSL_get_verify_result(ssl);
    p->error = (int)v;
  }
  got = 1;
done:
  ERR_clear_error();
  SSL_free(ssl);
  if (fd >= 0) {
    close(fd);
  }
  BIO_free(bio);
  SSL_CTX_free(ctx);
  return got;
}

/* Names why the certificate at host:port did not verify, into out. */
static void verify_reason(const char *host, const char *port,
                          const char *ca_pem, char *out, size_t cap) {
  probe_result p;
  const char *why;

  if (!probe(host, port, ca_pem, &p) || p.error == X509_V_OK) {
    snprintf(out, cap,
             "it is issued by a CA that bundle does not hold, expired or "
             "not yet valid");
    return;
  }
  why = X509_verify_cert_error_string(p.error);
  switch (p.error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      snprintf(out, cap, "%s (not valid after %s)", why, p.not_after);
      break;
    case X509_V_ERR_CERT_NOT_YET_VALID:
      snprintf(out, cap, "%s (not valid before %s)", why, p.not_before);
      break;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      snprintf(out, cap,
               "%s (issued by \"%s\", a CA that bundle does not hold)", why,
               p.issuer);
      break;
    default:
      snprintf(out, cap, "%s", why);
      break;
  }
}

int lk_tls_explain_failure(const char *address, const char *ca_pem,
                           const char *ca_path, const char *details,
                           size_t details_len, char *out, size_t cap) {
  char d[512];
  char host[HOST_MAX];
  char port[PORT_MAX];
  char reason[320];
  int have_target;

  if (cap == 0) {
    return 0;
  }
  out[0] = '\0';
  if (address == NULL || details == NULL) {
    return 0;
  }
  if (details_len >= sizeof(d)) {
    details_len = sizeof(d) - 1;
  }
  memcpy(d, details, details_len);
  d[details_len] = '\0';
  have_target = split_target(address, host, port);
  if (ca_pem == NULL) {
    if (have_target && (strstr(d, "Socket closed") != NULL ||
                        strstr(d, "Connection reset") != NULL)) {
      snprintf(out, cap,
               "%s closed the plaintext connection: if it serves TLS "
               "(latchkey-cp --tls-cert), give --tls-ca with the CA bundle "
               "that issued its certificate",
               address);
      return 1;
    }
    return 0;
  }
  if (strstr(d, "is not in peer certificate") != NULL) {
    snprintf(out, cap,
             "TLS handshake with %s failed: its certificate is not for %s "
             "(no such subjectAltName); connect by a name or address the "
             "certificate lists; no token was sent",
             address, have_target ? host : address);
  } else if (strstr(d, "wrong version number") != NULL ||
             strstr(d, "packet length too long") != NULL) {
    snprintf(out, cap,
             "TLS handshake with %s failed: the server does not speak TLS "
             "(a latchkey-cp without --tls-cert?); no token was sent",
             address);
  } else if (strstr(d, "certificate verify failed") != NULL) {
    if (have_target) {
      verify_reason(host, port, ca_pem, reason, sizeof(reason));
    } else {
      snprintf(reason, sizeof(reason),
               "it is issued by a CA that bundle does not hold, expired or "
               "not yet valid");
    }
    snprintf(out, cap,
             "TLS handshake with %s failed: its certificate does not verify "
             "against --tls-ca %s: %s; no token was sent",
             address, ca_path != NULL ? ca_path : "(bundle)", reason);
  } else if (strstr(d, "andshake failed") != NULL) {
    snprintf(out, cap, "TLS handshake with %s failed (%s); no token was sent",
             address, d);
  } else {
    return 0;
  }
  return 1;
}
