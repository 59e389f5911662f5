/*
 * tls_test.c - proves lib/tls's contract where it needs no live TLS peer:
 * how each gRPC failure string is explained (or left alone), for every
 * target form, with bounded input and output; and that unusable
 * --tls-cert/--tls-key files are refused with a message naming the flag.
 * Real certificates, expired ones and the probe against live servers are
 * proved end to end by tests/e2e/tls_test.py.
 *
 * Files live in a fresh directory under $TEST_TMPDIR that the group
 * teardown removes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/tls.h"

static char tmp_root[512];
static char path_a[600];
static char path_b[600];

static int make_root(void **state) {
  (void)state;
  const char *base = getenv("TEST_TMPDIR");
  snprintf(tmp_root, sizeof(tmp_root), "%s/tls_test_XXXXXX",
           base ? base : "/tmp");
  if (mkdtemp(tmp_root) == NULL)
    return -1;
  snprintf(path_a, sizeof(path_a), "%s/a.pem", tmp_root);
  snprintf(path_b, sizeof(path_b), "%s/b.pem", tmp_root);
  return 0;
}

static int remove_root(void **state) {
  (void)state;
  unlink(path_a);
  unlink(path_b);
  return rmdir(tmp_root) == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *text, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* Explains details (a C string) for address with or without a bundle. */
static int explain(const char *address, int tls, const char *details, char *out,
                   size_t cap) {
  return lk_tls_explain_failure(address, tls ? "bundle" : NULL,
                                tls ? "ca.pem" : NULL, details, strlen(details),
                                out, cap);
}

static void name_mismatch_names_the_host_of_each_target_form(void **state) {
  (void)state;
  static const char *const targets[][2] = {
      {"cp.example:7700", "cp.example"},
      {"dns:///cp.example:7700", "cp.example"},
      {"[::1]:7700", "::1"},
      {"ipv4:127.0.0.1:7700,127.0.0.2:7700", "127.0.0.1"},
  };
  char out[512], want[512];
  for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
    assert_int_equal(explain(targets[i][0], 1,
                             "failed to connect to all addresses; last error: "
                             "UNKNOWN: x: Peer name y is not in peer "
                             "certificate",
                             out, sizeof(out)),
                     1);
    snprintf(want, sizeof(want),
             "TLS handshake with %s failed: its certificate is not for %s "
             "(no such subjectAltName); connect by a name or address the "
             "certificate lists; no token was sent",
             targets[i][0], targets[i][1]);
    assert_string_equal(out, want);
  }
}

static void server_without_tls_is_named(void **state) {
  (void)state;
  char out[512];
  assert_int_equal(explain("cp:7700", 1,
                           "Ssl handshake failed: SSL_ERROR_SSL: "
                           "error:0A00010B:SSL routines::wrong version number",
                           out, sizeof(out)),
                   1);
  assert_string_equal(out,
                      "TLS handshake with cp:7700 failed: the server does not "
                      "speak TLS (a latchkey-cp without --tls-cert?); no "
                      "token was sent");
}

static void
unverified_certificate_of_an_unreachable_server_gets_the_generic_reason(
    void **state) {
  (void)state;
  char out[512];
  /* Port 1 on loopback refuses at once: the probe gets no verdict. */
  assert_int_equal(explain("127.0.0.1:1", 1,
                           "Ssl handshake failed: SSL_ERROR_SSL: "
                           "error:0A000086:SSL routines::certificate verify "
                           "failed",
                           out, sizeof(out)),
                   1);
  assert_string_equal(out,
                      "TLS handshake with 127.0.0.1:1 failed: its certificate "
                      "does not verify against --tls-ca ca.pem: it is issued "
                      "by a CA that bundle does not hold, expired or not yet "
                      "valid; no token was sent");
}

static void other_handshake_failures_quote_grpc(void **state) {
  (void)state;
  char out[512];
  assert_int_equal(
      explain("cp:7700", 1, "Ssl handshake failed: SSL_ERROR_SYSCALL", out,
              sizeof(out)),
      1);
  assert_string_equal(out,
                      "TLS handshake with cp:7700 failed (Ssl handshake "
                      "failed: SSL_ERROR_SYSCALL); no token was sent");
}

static void plaintext_channel_closed_by_the_server_suggests_tls_ca(
    void **state) {
  (void)state;
  char out[512];
  assert_int_equal(explain("cp:7700", 0,
                           "failed to connect to all addresses; last error: "
                           "UNAVAILABLE: ipv4:10.0.0.1:7700: Socket closed",
                           out, sizeof(out)),
                   1);
  assert_string_equal(out,
                      "cp:7700 closed the plaintext connection: if it serves "
                      "TLS (latchkey-cp --tls-cert), give --tls-ca with the "
                      "CA bundle that issued its certificate");
}

static void plaintext_unix_socket_gets_no_tls_hint(void **state) {
  (void)state;
  char out[64] = "unchanged";
  assert_int_equal(
      explain("unix:/run/lk/agent.sock", 0, "Socket closed", out, sizeof(out)),
      0);
  assert_string_equal(out, "");
}

static void failures_that_are_not_tls_are_left_alone(void **state) {
  (void)state;
  static const char *const details[] = {
      "failed to connect to all addresses; last error: UNKNOWN: "
      "ipv4:127.0.0.1:7700: Failed to connect to remote host: Connection "
      "refused",
      "Deadline Exceeded",
      "",
  };
  char out[128];
  for (size_t i = 0; i < sizeof(details) / sizeof(details[0]); i++) {
    assert_int_equal(explain("cp:7700", 1, details[i], out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(explain("cp:7700", 0, details[i], out, sizeof(out)), 0);
    assert_string_equal(out, "");
  }
}

static void long_details_and_small_output_stay_bounded(void **state) {
  (void)state;
  char details[4096];
  char out[24];
  memset(details, 'x', sizeof(details));
  memcpy(details, "wrong version number", 20);
  /* Not NUL-terminated: only details_len bytes may be read. */
  assert_int_equal(
      lk_tls_explain_failure("cp:7700", "bundle", "ca.pem", details,
                             sizeof(details), out, sizeof(out)),
      1);
  assert_int_equal(strlen(out), sizeof(out) - 1);
  assert_memory_equal(out, "TLS handshake with cp:7", sizeof(out) - 1);
  /* A marker past what is read is not seen. */
  memcpy(details + 1000, "wrong version number", 20);
  memset(details, 'x', 20);
  assert_int_equal(
      lk_tls_explain_failure("cp:7700", "bundle", "ca.pem", details,
                             sizeof(details), out, sizeof(out)),
      0);
}

/* Linked with -Wl,--wrap=fopen: every fopen() in the binary, lib/tls.c
 * included, comes here first, so a test can see which files went through
 * stdio (whose buffer is freed unwiped). */
FILE *__real_fopen(const char *path, const char *mode);
FILE *__wrap_fopen(const char *path, const char *mode);
static char fopened[4][600];
static int n_fopened;

FILE *__wrap_fopen(const char *path, const char *mode) {
  if (n_fopened < 4) {
    snprintf(fopened[n_fopened++], sizeof(fopened[0]), "%s", path);
  }
  return __real_fopen(path, mode);
}

static void private_key_is_not_read_through_stdio(void **state) {
  (void)state;
  lk_tls_validity v;
  lk_err err;
  write_file(path_a, "not a certificate\n", 18);
  write_file(path_b, "-----BEGIN PRIVATE KEY-----\nAAAA\n", 33);
  n_fopened = 0;
  assert_int_equal(lk_tls_check_server_files(path_a, path_b, &v, &err),
                   LK_INVALID_ARGUMENT);
  for (int i = 0; i < n_fopened; i++) {
    if (strcmp(fopened[i], path_b) == 0) {
      fail_msg("the --tls-key file was read through fopen()");
    }
  }
}

static void missing_files_name_their_flag(void **state) {
  (void)state;
  lk_tls_validity v;
  lk_err err;
  char want[700];
  write_file(path_a, "x", 1);
  assert_int_equal(
      lk_tls_check_server_files("/nonexistent/c.pem", path_a, &v, &err),
      LK_INVALID_ARGUMENT);
  assert_string_equal(err.msg,
                      "cannot read --tls-cert /nonexistent/c.pem: No such "
                      "file or directory");
  assert_int_equal(
      lk_tls_check_server_files(path_a, "/nonexistent/k.pem", &v, &err),
      LK_INVALID_ARGUMENT);
  assert_string_equal(err.msg,
                      "cannot read --tls-key /nonexistent/k.pem: No such "
                      "file or directory");
  assert_int_equal(lk_tls_check_server_files(tmp_root, path_a, &v, &err),
                   LK_INVALID_ARGUMENT);
  snprintf(want, sizeof(want), "cannot read --tls-cert %s: Is a directory",
           tmp_root);
  assert_string_equal(err.msg, want);
}

static void empty_oversized_and_non_pem_files_are_refused(void **state) {
  (void)state;
  lk_tls_validity v;
  lk_err err;
  char want[700];
  size_t big = LK_TLS_MAX_FILE_BYTES + 1;
  char *blob = malloc(big);
  assert_non_null(blob);
  memset(blob, 'A', big);

  write_file(path_a, "", 0);
  write_file(path_b, "k", 1);
  assert_int_equal(lk_tls_check_server_files(path_a, path_b, &v, &err),
                   LK_INVALID_ARGUMENT);
  snprintf(want, sizeof(want), "--tls-cert %s is empty", path_a);
  assert_string_equal(err.msg, want);

  write_file(path_a, blob, big);
  assert_int_equal(lk_tls_check_server_files(path_a, path_b, &v, &err),
                   LK_INVALID_ARGUMENT);
  snprintf(want, sizeof(want), "--tls-cert %s is larger than %d bytes", path_a,
           LK_TLS_MAX_FILE_BYTES);
  assert_string_equal(err.msg, want);
  free(blob);

  write_file(path_a, "not a certificate\n", 18);
  assert_int_equal(lk_tls_check_server_files(path_a, path_b, &v, &err),
                   LK_INVALID_ARGUMENT);
  snprintf(want, sizeof(want),
           "--tls-cert %s holds no PEM certificate (-----BEGIN "
           "CERTIFICATE-----)",
           path_a);
  assert_string_equal(err.msg, want);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(name_mismatch_names_the_host_of_each_target_form),
      cmocka_unit_test(server_without_tls_is_named),
      cmocka_unit_test(
          unverified_certificate_of_an_unreachable_server_gets_the_generic_reason),
      cmocka_unit_test(other_handshake_failures_quote_grpc),
      cmocka_unit_test(plaintext_channel_closed_by_the_server_suggests_tls_ca),
      cmocka_unit_test(plaintext_unix_socket_gets_no_tls_hint),
      cmocka_unit_test(failures_that_are_not_tls_are_left_alone),
      cmocka_unit_test(long_details_and_small_output_stay_bounded),
      cmocka_unit_test(private_key_is_not_read_through_stdio),
      cmocka_unit_test(missing_files_name_their_flag),
      cmocka_unit_test(empty_oversized_and_non_pem_files_are_refused),
  };
  return cmocka_run_group_tests(tests, make_root, remove_root);
}
