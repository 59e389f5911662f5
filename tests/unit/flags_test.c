/*
 * flags_test.c - proves lib/flags's contract: "--name value" and
 * "--name=value" both set a flag, bools need no value, malformed input is
 * LK_INVALID_ARGUMENT naming the flag (or the environment variable), and a
 * flag absent from argv falls back to LATCHKEY_<NAME> with dashes turned
 * into underscores; the command line wins over the environment. Duration
 * flags take ms/s/m/h units (or plain milliseconds) and store milliseconds.
 *
 * Every test starts with the table's variables unset and the targets at
 * their defaults, so no test depends on the order they run in.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/flags.h"

#define DEFAULT_BODY_BYTES 1048576
#define DEFAULT_STALENESS_MS 77

static const char *data_dir;
static const char *listen_addr;
static int verbose;
static int64_t max_body_bytes;
static int64_t staleness_ms;

static const lk_flag table[] = {
    {"data-dir", LK_FLAG_STRING, &data_dir, "where the store lives"},
    {"listen", LK_FLAG_STRING, &listen_addr, "address to listen on"},
    {"verbose", LK_FLAG_BOOL, &verbose, "log at debug level"},
    {"max-body-bytes", LK_FLAG_INT, &max_body_bytes, "largest request body"},
    {"max-staleness", LK_FLAG_DURATION_MS, &staleness_ms, "staleness limit"},
};
#define N_TABLE ((int)(sizeof(table) / sizeof(table[0])))

static const char *const env_vars[] = {
    "LATCHKEY_DATA_DIR",       "LATCHKEY_LISTEN",        "LATCHKEY_VERBOSE",
    "LATCHKEY_MAX_BODY_BYTES", "LATCHKEY_MAX_STALENESS",
};

static int reset(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++) {
    unsetenv(env_vars[i]);
  }
  data_dir = "default-dir";
  listen_addr = NULL;
  verbose = 0;
  max_body_bytes = DEFAULT_BODY_BYTES;
  staleness_ms = DEFAULT_STALENESS_MS;
  return 0;
}

/* Parses the NULL-terminated argv (argv[0] included) against the table. */
static lk_status parse(char **argv, int *help, lk_err *err) {
  int argc = 0;
  while (argv[argc] != NULL)
    argc++;
  lk_err_clear(err);
  return lk_flags_parse(table, N_TABLE, argc, argv, help, err);
}

static void assert_msg_contains(const lk_err *err, const char *needle) {
  if (strstr(err->msg, needle) == NULL) {
    fail_msg("error message '%s' does not contain '%s'", err->msg, needle);
  }
}

static void no_arguments_keeps_defaults(void **state) {
  (void)state;
  char *argv[] = {"prog", NULL};
  int help = 7;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(help, 0);
  assert_string_equal(data_dir, "default-dir");
  assert_null(listen_addr);
  assert_int_equal(verbose, 0);
  assert_int_equal(max_body_bytes, DEFAULT_BODY_BYTES);
}

static void string_flag_takes_the_next_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--data-dir", "/var/lib/latchkey", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_string_equal(data_dir, "/var/lib/latchkey");
  assert_int_equal(help, 0);
}

static void string_flag_takes_the_value_after_equals(void **state) {
  (void)state;
  char *argv[] = {"prog", "--listen=127.0.0.1:7000", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_string_equal(listen_addr, "127.0.0.1:7000");
}

static void value_after_equals_may_itself_contain_equals(void **state) {
  (void)state;
  char *argv[] = {"prog", "--data-dir=a=b", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_string_equal(data_dir, "a=b");
}

static void several_flags_in_both_forms_all_apply(void **state) {
  (void)state;
  char *argv[] = {"prog",
                  "--data-dir",
                  "/d",
                  "--verbose",
                  "--listen",
                  "unix:/run/lk.sock",
                  "--max-body-bytes=42",
                  NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_string_equal(data_dir, "/d");
  assert_string_equal(listen_addr, "unix:/run/lk.sock");
  assert_int_equal(verbose, 1);
  assert_int_equal(max_body_bytes, 42);
}

static void int_flag_parses_decimal_in_both_forms(void **state) {
  (void)state;
  int help;
  lk_err err;
  char *spaced[] = {"prog", "--max-body-bytes", "65536", NULL};
  assert_int_equal(parse(spaced, &help, &err), LK_OK);
  assert_int_equal(max_body_bytes, 65536);
  char *joined[] = {"prog", "--max-body-bytes=0", NULL};
  assert_int_equal(parse(joined, &help, &err), LK_OK);
  assert_int_equal(max_body_bytes, 0);
}

static void int_flag_accepts_int64_max(void **state) {
  (void)state;
  char *argv[] = {"prog", "--max-body-bytes=9223372036854775807", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_true(max_body_bytes == INT64_MAX);
}

static void bool_flag_alone_is_true(void **state) {
  (void)state;
  char *argv[] = {"prog", "--verbose", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(verbose, 1);
}

static void bool_flag_alone_does_not_consume_the_next_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--verbose", "--data-dir", "/d", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(verbose, 1);
  assert_string_equal(data_dir, "/d");
}

static void bool_flag_equals_true_values_set_it(void **state) {
  (void)state;
  char *const values[] = {"--verbose=true", "--verbose=1", "--verbose=yes"};
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    char *argv[] = {"prog", values[i], NULL};
    int help;
    lk_err err;
    verbose = 0;
    assert_int_equal(parse(argv, &help, &err), LK_OK);
    assert_int_equal(verbose, 1);
  }
}

static void bool_flag_equals_false_values_clear_it(void **state) {
  (void)state;
  char *const values[] = {"--verbose=false", "--verbose=0", "--verbose=no",
                          "--verbose="};
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    char *argv[] = {"prog", values[i], NULL};
    int help;
    lk_err err;
    verbose = 1;
    assert_int_equal(parse(argv, &help, &err), LK_OK);
    assert_int_equal(verbose, 0);
  }
}

static void bool_flag_with_other_value_is_invalid_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--verbose=maybe", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(err.code, LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--verbose");
  assert_msg_contains(&err, "'maybe'");
}

static void int_flag_negative_is_invalid_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--max-body-bytes", "-1", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(err.code, LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--max-body-bytes");
  assert_msg_contains(&err, "'-1'");
  assert_int_equal(max_body_bytes, DEFAULT_BODY_BYTES);
}

static void int_flag_with_trailing_junk_is_invalid_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--max-body-bytes=12k", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--max-body-bytes");
  assert_msg_contains(&err, "'12k'");
  assert_int_equal(max_body_bytes, DEFAULT_BODY_BYTES);
}

static void int_flag_without_digits_is_invalid_argument(void **state) {
  (void)state;
  char *const values[] = {"--max-body-bytes=lots",
                          "--max-body-bytes=", "--max-body-bytes=0x10"};
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    char *argv[] = {"prog", values[i], NULL};
    int help;
    lk_err err;
    assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
    assert_msg_contains(&err, "--max-body-bytes");
  }
  assert_int_equal(max_body_bytes, DEFAULT_BODY_BYTES);
}

static void int_flag_overflow_is_invalid_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--max-body-bytes=9223372036854775808", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--max-body-bytes");
  assert_msg_contains(&err, "'9223372036854775808'");
  assert_int_equal(max_body_bytes, DEFAULT_BODY_BYTES);
}

static void unknown_flag_is_invalid_argument_naming_it(void **state) {
  (void)state;
  char *argv[] = {"prog", "--colour=red", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(err.code, LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--colour");
  assert_null(strstr(err.msg, "red"));
}

static void prefix_of_a_flag_name_is_unknown(void **state) {
  (void)state;
  char *argv[] = {"prog", "--data", "/d", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--data");
  assert_string_equal(data_dir, "default-dir");
}

static void flag_name_with_extra_suffix_is_unknown(void **state) {
  (void)state;
  char *argv[] = {"prog", "--verbosex", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--verbosex");
  assert_int_equal(verbose, 0);
}

static void missing_value_is_invalid_argument_naming_the_flag(void **state) {
  (void)state;
  char *argv[] = {"prog", "--data-dir", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(err.code, LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--data-dir");
  assert_string_equal(data_dir, "default-dir");
}

static void next_flag_is_not_taken_as_a_value(void **state) {
  (void)state;
  char *argv[] = {"prog", "--data-dir", "--verbose", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--data-dir needs a value");
  assert_string_equal(data_dir, "default-dir");
}

static void value_starting_with_dashes_needs_equals(void **state) {
  (void)state;
  char *argv[] = {"prog", "--data-dir=--odd", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_string_equal(data_dir, "--odd");
}

static void missing_int_value_is_invalid_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--verbose", "--max-body-bytes", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "--max-body-bytes");
}

static void positional_argument_is_invalid_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--verbose", "serve", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(err.code, LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "'serve'");
}

static void single_dash_flag_is_invalid_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "-v", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "'-v'");
}

static void help_sets_help_requested_and_returns_ok(void **state) {
  (void)state;
  char *argv[] = {"prog", "--data-dir", "/d", "--help", NULL};
  int help = 0;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(help, 1);
}

static void short_help_sets_help_requested(void **state) {
  (void)state;
  char *argv[] = {"prog", "-h", NULL};
  int help = 0;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(help, 1);
}

static void help_stops_before_later_bad_arguments(void **state) {
  (void)state;
  char *argv[] = {"prog", "--help", "--no-such-flag", NULL};
  int help = 0;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(help, 1);
}

static void environment_sets_an_absent_string_flag(void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_DATA_DIR", "/from/env", 1), 0);
  char *argv[] = {"prog", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_string_equal(data_dir, "/from/env");
}

static void environment_name_uppercases_and_turns_dashes_to_underscores(
    void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_MAX_BODY_BYTES", "4096", 1), 0);
  assert_int_equal(setenv("LATCHKEY_VERBOSE", "true", 1), 0);
  /* The lowercase spelling is not consulted. */
  assert_int_equal(setenv("latchkey_data_dir", "/lower", 1), 0);
  char *argv[] = {"prog", NULL};
  int help;
  lk_err err;
  lk_status st = parse(argv, &help, &err);
  unsetenv("latchkey_data_dir");
  assert_int_equal(st, LK_OK);
  assert_int_equal(max_body_bytes, 4096);
  assert_int_equal(verbose, 1);
  assert_string_equal(data_dir, "default-dir");
}

static void environment_empty_bool_is_false(void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_VERBOSE", "", 1), 0);
  verbose = 1;
  char *argv[] = {"prog", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(verbose, 0);
}

static void command_line_wins_over_environment(void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_DATA_DIR", "/from/env", 1), 0);
  assert_int_equal(setenv("LATCHKEY_MAX_BODY_BYTES", "1", 1), 0);
  assert_int_equal(setenv("LATCHKEY_VERBOSE", "true", 1), 0);
  char *argv[] = {"prog", "--data-dir=/from/argv", "--max-body-bytes",
                  "2",    "--verbose=false",       NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_string_equal(data_dir, "/from/argv");
  assert_int_equal(max_body_bytes, 2);
  assert_int_equal(verbose, 0);
}

static void command_line_wins_even_over_a_bad_environment_value(void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_MAX_BODY_BYTES", "junk", 1), 0);
  char *argv[] = {"prog", "--max-body-bytes=5", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(max_body_bytes, 5);
}

static void bad_environment_int_names_the_variable(void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_MAX_BODY_BYTES", "-7", 1), 0);
  char *argv[] = {"prog", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_int_equal(err.code, LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "LATCHKEY_MAX_BODY_BYTES");
  assert_msg_contains(&err, "'-7'");
  assert_int_equal(max_body_bytes, DEFAULT_BODY_BYTES);
}

static void bad_environment_bool_names_the_variable(void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_VERBOSE", "sometimes", 1), 0);
  char *argv[] = {"prog", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "LATCHKEY_VERBOSE");
  assert_msg_contains(&err, "'sometimes'");
}

static void duration_flag_takes_each_unit(void **state) {
  (void)state;
  static const struct {
    char *arg;
    int64_t ms;
  } cases[] = {
      {"--max-staleness=500ms", 500}, {"--max-staleness=30s", 30000},
      {"--max-staleness=5m", 300000}, {"--max-staleness=2h", 7200000},
      {"--max-staleness=1500", 1500}, {"--max-staleness=0", 0},
      {"--max-staleness=0s", 0},      {"--max-staleness=007s", 7000},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *argv[] = {"prog", cases[i].arg, NULL};
    int help;
    lk_err err;
    staleness_ms = DEFAULT_STALENESS_MS;
    assert_int_equal(parse(argv, &help, &err), LK_OK);
    assert_true(staleness_ms == cases[i].ms);
  }
}

static void duration_flag_takes_the_next_argument(void **state) {
  (void)state;
  char *argv[] = {"prog", "--max-staleness", "1s", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(staleness_ms, 1000);
}

static void duration_flag_malformed_is_invalid_argument(void **state) {
  (void)state;
  char *const values[] = {
      "--max-staleness=",     "--max-staleness=s",     "--max-staleness=-1s",
      "--max-staleness=+5s",  "--max-staleness= 5s",   "--max-staleness=5 s",
      "--max-staleness=5sec", "--max-staleness=1.5s",  "--max-staleness=5d",
      "--max-staleness=5S",   "--max-staleness=10ms5", "--max-staleness=0x10",
  };
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    char *argv[] = {"prog", values[i], NULL};
    int help;
    lk_err err;
    assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
    assert_int_equal(err.code, LK_INVALID_ARGUMENT);
    assert_msg_contains(&err, "--max-staleness takes a duration");
    assert_int_equal(staleness_ms, DEFAULT_STALENESS_MS);
  }
}

static void duration_flag_overflow_is_invalid_argument(void **state) {
  (void)state;
  char *const values[] = {
      "--max-staleness=9223372036854775807s",
      "--max-staleness=9223372036854775808",
      "--max-staleness=2562047788016h",
  };
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    char *argv[] = {"prog", values[i], NULL};
    int help;
    lk_err err;
    assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
    assert_msg_contains(&err, "--max-staleness");
  }
  char *largest[] = {"prog", "--max-staleness=2562047788015h", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(largest, &help, &err), LK_OK);
  assert_true(staleness_ms == INT64_C(2562047788015) * 3600000);
}

static void duration_flag_reads_the_environment(void **state) {
  (void)state;
  assert_int_equal(setenv("LATCHKEY_MAX_STALENESS", "45s", 1), 0);
  char *argv[] = {"prog", NULL};
  int help;
  lk_err err;
  assert_int_equal(parse(argv, &help, &err), LK_OK);
  assert_int_equal(staleness_ms, 45000);
  assert_int_equal(setenv("LATCHKEY_MAX_STALENESS", "soon", 1), 0);
  assert_int_equal(parse(argv, &help, &err), LK_INVALID_ARGUMENT);
  assert_msg_contains(&err, "LATCHKEY_MAX_STALENESS");
  assert_msg_contains(&err, "'soon'");
}

/* lk_flags_usage writes to stderr, so fd 2 points at a temp file while it
 * runs and the test reads back what it printed. */
static void usage_lists_every_flag_and_its_variable(void **state) {
  (void)state;
  char path[512];
  const char *dir = getenv("TEST_TMPDIR");
  snprintf(path, sizeof(path), "%s/flags_usage_XXXXXX", dir ? dir : "/tmp");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  assert_true(saved >= 0);
  assert_true(dup2(fd, STDERR_FILENO) >= 0);
  lk_flags_usage("latchkeyd", "the Latchkey sidecar", table, N_TABLE);
  fflush(stderr);
  assert_true(dup2(saved, STDERR_FILENO) >= 0);
  close(saved);

  char out[4096];
  off_t len = lseek(fd, 0, SEEK_CUR);
  assert_true(len > 0 && (size_t)len < sizeof(out));
  assert_int_equal(pread(fd, out, (size_t)len, 0), len);
  out[len] = '\0';
  close(fd);

  assert_non_null(strstr(out, "usage: latchkeyd"));
  assert_non_null(strstr(out, "the Latchkey sidecar"));
  assert_non_null(strstr(out, "--data-dir VALUE"));
  assert_non_null(strstr(out, "[LATCHKEY_DATA_DIR]"));
  assert_non_null(strstr(out, "--listen VALUE"));
  assert_non_null(strstr(out, "[LATCHKEY_LISTEN]"));
  assert_non_null(strstr(out, "[LATCHKEY_VERBOSE]"));
  assert_null(strstr(out, "--verbose VALUE"));
  assert_non_null(strstr(out, "--max-body-bytes VALUE"));
  assert_non_null(strstr(out, "[LATCHKEY_MAX_BODY_BYTES]"));
  assert_non_null(strstr(out, "largest request body"));
  assert_non_null(strstr(out, "--max-staleness DURATION"));
  assert_non_null(strstr(out, "[LATCHKEY_MAX_STALENESS]"));
}

/* lk_flags_main: 2 after a bad flag, 0 after --help, -1 to go on. */
static void main_prologue_returns_exit_code_or_goes_on(void **state) {
  (void)state;
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  int devnull = open("/dev/null", O_WRONLY);
  assert_true(saved >= 0 && devnull >= 0);
  assert_true(dup2(devnull, STDERR_FILENO) >= 0);
  char *bad[] = {"prog", "--nope", NULL};
  char *help[] = {"prog", "--help", NULL};
  char *good[] = {"prog", "--data-dir", "/d", NULL};
  int rc_bad = lk_flags_main("prog", "s", table, N_TABLE, 2, bad);
  int rc_help = lk_flags_main("prog", "s", table, N_TABLE, 2, help);
  int rc_good = lk_flags_main("prog", "s", table, N_TABLE, 3, good);
  fflush(stderr);
  assert_true(dup2(saved, STDERR_FILENO) >= 0);
  close(saved);
  close(devnull);
  assert_int_equal(rc_bad, 2);
  assert_int_equal(rc_help, 0);
  assert_int_equal(rc_good, -1);
  assert_string_equal(data_dir, "/d");
}

#define T(name) cmocka_unit_test_setup_teardown(name, reset, reset)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(no_arguments_keeps_defaults),
      T(main_prologue_returns_exit_code_or_goes_on),
      T(string_flag_takes_the_next_argument),
      T(string_flag_takes_the_value_after_equals),
      T(value_after_equals_may_itself_contain_equals),
      T(several_flags_in_both_forms_all_apply),
      T(int_flag_parses_decimal_in_both_forms),
      T(int_flag_accepts_int64_max),
      T(bool_flag_alone_is_true),
      T(bool_flag_alone_does_not_consume_the_next_argument),
      T(bool_flag_equals_true_values_set_it),
      T(bool_flag_equals_false_values_clear_it),
      T(bool_flag_with_other_value_is_invalid_argument),
      T(int_flag_negative_is_invalid_argument),
      T(int_flag_with_trailing_junk_is_invalid_argument),
      T(int_flag_without_digits_is_invalid_argument),
      T(duration_flag_takes_each_unit),
      T(duration_flag_takes_the_next_argument),
      T(duration_flag_malformed_is_invalid_argument),
      T(duration_flag_overflow_is_invalid_argument),
      T(duration_flag_reads_the_environment),
      T(int_flag_overflow_is_invalid_argument),
      T(unknown_flag_is_invalid_argument_naming_it),
      T(prefix_of_a_flag_name_is_unknown),
      T(flag_name_with_extra_suffix_is_unknown),
      T(missing_value_is_invalid_argument_naming_the_flag),
      T(next_flag_is_not_taken_as_a_value),
      T(value_starting_with_dashes_needs_equals),
      T(missing_int_value_is_invalid_argument),
      T(positional_argument_is_invalid_argument),
      T(single_dash_flag_is_invalid_argument),
      T(help_sets_help_requested_and_returns_ok),
      T(short_help_sets_help_requested),
      T(help_stops_before_later_bad_arguments),
      T(environment_sets_an_absent_string_flag),
      T(environment_name_uppercases_and_turns_dashes_to_underscores),
      T(environment_empty_bool_is_false),
      T(command_line_wins_over_environment),
      T(command_line_wins_even_over_a_bad_environment_value),
      T(bad_environment_int_names_the_variable),
      T(bad_environment_bool_names_the_variable),
      T(usage_lists_every_flag_and_its_variable),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
