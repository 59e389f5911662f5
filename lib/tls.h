/*
 * tls.h - checks of TLS files and plain-words reasons for failed TLS
 * connections, shared by latchkey-cp (--tls-cert/--tls-key), latchkeyd
 * and latchkeyctl (--tls-ca).
 *
 * grpc core does the TLS itself; this module only makes its failures
 * legible. It never decides trust: a verdict here is a diagnosis of a
 * connection grpc already refused (see tls.c).
 */
#ifndef LK_TLS_H
#define LK_TLS_H

#include <stddef.h>

#include "lib/status.h"

/* Largest certificate, key or CA file read (bytes). */
#define LK_TLS_MAX_FILE_BYTES (1024 * 1024)

/* Bound of the probing handshake of lk_tls_explain_failure (connect plus
 * handshake). */
#define LK_TLS_PROBE_TIMEOUT_MS 2000

/* Validity dates of a certificate, as "2026-11-28 00:41:44 UTC". */
typedef struct {
  int expired;       /* notAfter is in the past */
  int not_yet_valid; /* notBefore is in the future */
  char not_before[32];
  char not_after[32];
} lk_tls_validity;

/* Checks that cert_path holds a PEM certificate (chain) and key_path an
 * unencrypted PEM private key matching its first certificate; err names
 * --tls-cert or --tls-key and says what is wrong. Fills *validity from the
 * first certificate (an expired one is not an error here). */
lk_status lk_tls_check_server_files(const char *cert_path, const char *key_path,
                                    lk_tls_validity *validity,
                                    lk_err *err) LK_MUST_CHECK;

/* When details (the status details of a failed gRPC call or stream to
 * address) show a failed TLS handshake, or a plaintext connection that the
 * server closed, writes one sentence into out (cap bytes, NUL-terminated)
 * saying what failed and what to do, and returns 1; returns 0 and leaves
 * out empty otherwise. ca_pem and ca_path are the --tls-ca bundle and its
 * file name, both NULL for a plaintext channel. For a certificate that did
 * not verify it opens one probing TLS handshake to address with the same
 * bundle (at most LK_TLS_PROBE_TIMEOUT_MS; nothing is sent on it but the
 * handshake) to name the reason: expired, unknown issuer, and so on. */
int lk_tls_explain_failure(const char *address, const char *ca_pem,
                           const char *ca_path, const char *details,
                           size_t details_len, char *out, size_t cap);

#endif
