/*
 * checkconf_test.c - proves lib/checkconf's contract on real files: each
 * address form is accepted or refused with the flag named, token files may
 * not be writable by others, key files must be owner-only or creatable,
 * and a data dir is accepted when it exists or can be created.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/checkconf.h"

static char dir[256];

static int setup(void **state) {
  (void)state;
  const char *tmp = getenv("TEST_TMPDIR");
  snprintf(dir, sizeof(dir), "%s/checkconfXXXXXX", tmp ? tmp : "/tmp");
  return mkdtemp(dir) == NULL ? -1 : 0;
}

static void path_in(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

static void write_file(const char *path, mode_t mode) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("x\n", f);
  fclose(f);
  assert_int_equal(chmod(path, mode), 0);
}

static void expect_refused(lk_status st, const lk_err *err, const char *flag) {
  assert_int_equal(st, LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err->msg, flag));
}

static void addresses(void **state) {
  (void)state;
  lk_err err;
  char sock[512];
  snprintf(sock, sizeof(sock), "unix:%s/a.sock", dir);
  assert_int_equal(lk_checkconf_address("listen", sock, 0, &err), LK_OK);
  assert_int_equal(lk_checkconf_address("listen", "127.0.0.1:7700", 0, &err),
                   LK_OK);
  assert_int_equal(lk_checkconf_address("listen", "[::1]:7700", 0, &err),
                   LK_OK);
  assert_int_equal(lk_checkconf_address("listen", "0.0.0.0:0", 1, &err), LK_OK);
  expect_refused(lk_checkconf_address("listen", "0.0.0.0:0", 0, &err), &err,
                 "--listen");
  expect_refused(lk_checkconf_address("listen", "host:99999", 0, &err), &err,
                 "--listen 'host:99999'");
  expect_refused(lk_checkconf_address("health-listen", "host", 0, &err), &err,
                 "--health-listen");
  expect_refused(lk_checkconf_address("listen", "a:b:1", 0, &err), &err,
                 "--listen");
  expect_refused(lk_checkconf_address("listen", "unix:rel.sock", 0, &err), &err,
                 "--listen");
  expect_refused(
      lk_checkconf_address("listen", "unix:/no/such/dir/a.sock", 0, &err), &err,
      "directory /no/such/dir does not exist");
  expect_refused(lk_checkconf_address("listen", "", 0, &err), &err,
                 "--listen is empty");
  assert_int_equal(
      lk_checkconf_target("control-plane", "dns:///cp.example:7700", &err),
      LK_OK);
  assert_int_equal(lk_checkconf_target("control-plane", "cp:7700", &err),
                   LK_OK);
  expect_refused(lk_checkconf_target("control-plane", "cp", &err), &err,
                 "--control-plane 'cp'");
}

static void token_files(void **state) {
  (void)state;
  lk_err err;
  char p[512];
  path_in(p, sizeof(p), "token");
  write_file(p, 0600);
  assert_int_equal(lk_checkconf_secret_file("admin-token-file", p, &err),
                   LK_OK);
  /* Readable by others (Kubernetes' default Secret mode): a warning only. */
  assert_int_equal(chmod(p, 0644), 0);
  assert_int_equal(lk_checkconf_secret_file("admin-token-file", p, &err),
                   LK_OK);
  assert_int_equal(chmod(p, 0620), 0);
  expect_refused(lk_checkconf_secret_file("admin-token-file", p, &err), &err,
                 "writable by group or others (mode 620)");
  path_in(p, sizeof(p), "missing");
  expect_refused(lk_checkconf_secret_file("node-token-file", p, &err), &err,
                 "No such file");
  expect_refused(lk_checkconf_secret_file("node-token-file", dir, &err), &err,
                 "not a regular file");
}

static void key_files(void **state) {
  (void)state;
  lk_err err;
  char p[512];
  path_in(p, sizeof(p), "node.key");
  /* Absent, in a writable directory: created on first start. */
  assert_int_equal(lk_checkconf_key_file("node-key", p, &err), LK_OK);
  write_file(p, 0600);
  assert_int_equal(lk_checkconf_key_file("node-key", p, &err), LK_OK);
  assert_int_equal(chmod(p, 0640), 0);
  expect_refused(lk_checkconf_key_file("node-key", p, &err), &err,
                 "accessible by group or others (mode 640)");
  expect_refused(lk_checkconf_key_file("keyring", "/no/such/dir/keyring", &err),
                 &err, "cannot be created in /no/such/dir");
}

static void data_dirs(void **state) {
  (void)state;
  lk_err err;
  char p[512];
  assert_int_equal(lk_checkconf_dir("data-dir", dir, &err), LK_OK);
  path_in(p, sizeof(p), "new/deeper/data");
  assert_int_equal(lk_checkconf_dir("data-dir", p, &err), LK_OK);
  struct stat sb;
  assert_int_not_equal(stat(p, &sb), 0); /* checked, not created */
  path_in(p, sizeof(p), "plain");
  write_file(p, 0600);
  char under[600];
  snprintf(under, sizeof(under), "%s/data", p);
  expect_refused(lk_checkconf_dir("data-dir", under, &err), &err,
                 "is not a directory");
  expect_refused(lk_checkconf_dir("data-dir", "", &err), &err,
                 "--data-dir is empty");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(addresses),
      cmocka_unit_test(token_files),
      cmocka_unit_test(key_files),
      cmocka_unit_test(data_dirs),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
