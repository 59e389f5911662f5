/*
 * log_test.c - proves lib/log's contract: each lk_log call at or above the
 * configured level writes exactly one line to stderr, and that line is one
 * JSON object with string fields ts, level, event and msg, whatever bytes
 * the message holds and however long it is. lk_log_fields adds the
 * members of a JSON object after those four, never replacing them, and
 * drops them (saying so) rather than write an unbounded line.
 *
 * stderr (fd 2) points at an unlinked temp file while lk_log runs; the
 * test puts fd 2 back before asserting, so cmocka's own reports still
 * reach the terminal. Lines are parsed with jansson, which also rejects
 * invalid UTF-8, so "valid JSON" here includes "valid UTF-8".
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "lib/log.h"

/* Longest line lk_log writes (its stack buffer), newline included. */
#define MAX_LINE 2600

static int capture_fd = -1;
static int saved_stderr = -1;

static void capture_start(void) {
  char path[512];
  const char *dir = getenv("TEST_TMPDIR");
  snprintf(path, sizeof(path), "%s/log_test_XXXXXX", dir ? dir : "/tmp");
  capture_fd = mkstemp(path);
  assert_true(capture_fd >= 0);
  assert_int_equal(unlink(path), 0);
  fflush(stderr);
  saved_stderr = dup(STDERR_FILENO);
  assert_true(saved_stderr >= 0);
  assert_true(dup2(capture_fd, STDERR_FILENO) >= 0);
}

/* Restores fd 2 and returns everything written meanwhile (NUL-terminated,
 * caller frees); *len gets its length. */
static char *capture_stop(size_t *len) {
  assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
  close(saved_stderr);
  saved_stderr = -1;
  off_t end = lseek(capture_fd, 0, SEEK_END);
  assert_true(end >= 0);
  char *buf = malloc((size_t)end + 1);
  assert_non_null(buf);
  size_t got = 0;
  while (got < (size_t)end) {
    ssize_t r = pread(capture_fd, buf + got, (size_t)end - got, (off_t)got);
    assert_true(r > 0);
    got += (size_t)r;
  }
  buf[got] = '\0';
  close(capture_fd);
  capture_fd = -1;
  *len = got;
  return buf;
}

static size_t count_lines(const char *out, size_t len) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (out[i] == '\n')
      n++;
  }
  return n;
}

/* Parses one line (len bytes, '\n' excluded) and checks its shape: an
 * object with exactly ts, level, event and msg, all strings. */
static json_t *parse_line(const char *line, size_t len) {
  for (size_t i = 0; i < len; i++) {
    if ((unsigned char)line[i] < 0x20)
      fail_msg("raw control byte 0x%02x at %zu", (unsigned char)line[i], i);
  }
  json_error_t jerr;
  json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
  if (obj == NULL)
    fail_msg("line is not JSON (%s at %d): %.*s", jerr.text, jerr.position,
             (int)len, line);
  assert_true(json_is_object(obj));
  assert_int_equal(json_object_size(obj), 4);
  assert_true(json_is_string(json_object_get(obj, "ts")));
  assert_true(json_is_string(json_object_get(obj, "level")));
  assert_true(json_is_string(json_object_get(obj, "event")));
  assert_true(json_is_string(json_object_get(obj, "msg")));
  return obj;
}

/* Captures exactly one line from out, checks it and returns it parsed. */
static json_t *only_line(const char *out, size_t len) {
  assert_int_equal(count_lines(out, len), 1);
  assert_true(len > 0 && out[len - 1] == '\n');
  assert_true(len <= MAX_LINE);
  return parse_line(out, len - 1);
}

static const char *field(json_t *obj, const char *key) {
  return json_string_value(json_object_get(obj, key));
}

/* Logs one line at level with a "%s" message and returns it parsed. */
static json_t *log_one(lk_log_level level, const char *event, const char *msg) {
  size_t len;
  capture_start();
  lk_log(level, event, "%s", msg);
  char *out = capture_stop(&len);
  json_t *obj = only_line(out, len);
  free(out);
  return obj;
}

static int level_info(void **state) {
  (void)state;
  return lk_log_set_level_name("info");
}

/* Must run first: nothing has called lk_log_set_level_name yet. */
static void default_level_is_info(void **state) {
  (void)state;
  size_t len;
  capture_start();
  lk_log(LK_LOG_DEBUG, "hidden", "debug is below the default");
  lk_log(LK_LOG_INFO, "shown", "info is the default");
  char *out = capture_stop(&len);
  json_t *obj = only_line(out, len);
  assert_string_equal(field(obj, "event"), "shown");
  json_decref(obj);
  free(out);
}

static void line_is_one_object_with_ts_level_event_msg(void **state) {
  (void)state;
  size_t len;
  capture_start();
  lk_log(LK_LOG_INFO, "listen", "serving on %s port %d", "127.0.0.1", 7000);
  char *out = capture_stop(&len);
  json_t *obj = only_line(out, len);
  assert_string_equal(field(obj, "level"), "info");
  assert_string_equal(field(obj, "event"), "listen");
  assert_string_equal(field(obj, "msg"), "serving on 127.0.0.1 port 7000");
  json_decref(obj);
  free(out);
}

static void ts_is_current_utc_with_milliseconds(void **state) {
  (void)state;
  time_t before = time(NULL);
  json_t *obj = log_one(LK_LOG_INFO, "tick", "now");
  time_t after = time(NULL);
  const char *ts = field(obj, "ts");
  assert_int_equal(strlen(ts), 24);
  const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ";
  for (size_t i = 0; i < 24; i++) {
    if (shape[i] == 'd')
      assert_in_range(ts[i], '0', '9');
    else
      assert_int_equal(ts[i], shape[i]);
  }
  struct tm tm = {0};
  assert_non_null(strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm));
  time_t logged = timegm(&tm);
  assert_true(logged >= before && logged <= after);
  json_decref(obj);
}

static void every_level_writes_its_name(void **state) {
  (void)state;
  assert_int_equal(lk_log_set_level_name("debug"), 0);
  const lk_log_level levels[] = {LK_LOG_DEBUG, LK_LOG_INFO, LK_LOG_WARN,
                                 LK_LOG_ERROR};
  const char *const names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++) {
    json_t *obj = log_one(levels[i], "lvl", "x");
    assert_string_equal(field(obj, "level"), names[i]);
    json_decref(obj);
  }
}

static void each_call_writes_one_line_in_order(void **state) {
  (void)state;
  size_t len;
  capture_start();
  for (int i = 0; i < 5; i++)
    lk_log(LK_LOG_WARN, "seq", "line %d", i);
  char *out = capture_stop(&len);
  assert_int_equal(count_lines(out, len), 5);
  char *line = out;
  for (int i = 0; i < 5; i++) {
    char *nl = strchr(line, '\n');
    assert_non_null(nl);
    json_t *obj = parse_line(line, (size_t)(nl - line));
    char want[16];
    snprintf(want, sizeof(want), "line %d", i);
    assert_string_equal(field(obj, "msg"), want);
    json_decref(obj);
    line = nl + 1;
  }
  free(out);
}

static void quotes_and_backslashes_in_msg_are_escaped(void **state) {
  (void)state;
  const char *msg = "say \"hi\" to C:\\tmp\\ and \\\"both\\\"";
  size_t len;
  capture_start();
  lk_log(LK_LOG_INFO, "quote", "%s", msg);
  char *out = capture_stop(&len);
  assert_non_null(strstr(out, "say \\\"hi\\\" to C:\\\\tmp\\\\"));
  json_t *obj = only_line(out, len);
  assert_string_equal(field(obj, "msg"), msg);
  json_decref(obj);
  free(out);
}

static void control_characters_in_msg_are_escaped(void **state) {
  (void)state;
  const char msg[] =
      "a\nb\rc\td\x01"
      "e\x1f"
      "f\x7f";
  size_t len;
  capture_start();
  lk_log(LK_LOG_INFO, "ctl", "%s", msg);
  char *out = capture_stop(&len);
  assert_non_null(strstr(out, "a\\u000ab\\u000dc\\u0009d\\u0001e\\u001ff"));
  json_t *obj = only_line(out, len);
  assert_string_equal(field(obj, "msg"), msg);
  json_decref(obj);
  free(out);
}

static void newline_in_msg_cannot_forge_a_second_line(void **state) {
  (void)state;
  const char *msg =
      "ok\n{\"ts\":\"x\",\"level\":\"error\",\"event\":\"forged\"}";
  json_t *obj = log_one(LK_LOG_INFO, "forge", msg);
  assert_string_equal(field(obj, "event"), "forge");
  assert_string_equal(field(obj, "msg"), msg);
  json_decref(obj);
}

static void event_is_escaped_like_msg(void **state) {
  (void)state;
  const char *event = "odd\"event\\\n";
  json_t *obj = log_one(LK_LOG_INFO, event, "m");
  assert_string_equal(field(obj, "event"), event);
  json_decref(obj);
}

static void utf8_in_msg_is_kept(void **state) {
  (void)state;
  const char *msg = "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x94\x91";
  json_t *obj = log_one(LK_LOG_INFO, "utf8", msg);
  assert_string_equal(field(obj, "msg"), msg);
  json_decref(obj);
}

static void set_level_name_accepts_the_four_names(void **state) {
  (void)state;
  assert_int_equal(lk_log_set_level_name("debug"), 0);
  assert_int_equal(lk_log_set_level_name("info"), 0);
  assert_int_equal(lk_log_set_level_name("warn"), 0);
  assert_int_equal(lk_log_set_level_name("error"), 0);
}

static void enabled_answers_whether_a_level_is_written(void **state) {
  (void)state;
  assert_int_equal(lk_log_set_level_name("warn"), 0);
  assert_false(lk_log_enabled(LK_LOG_DEBUG));
  assert_false(lk_log_enabled(LK_LOG_INFO));
  assert_true(lk_log_enabled(LK_LOG_WARN));
  assert_true(lk_log_enabled(LK_LOG_ERROR));
  assert_int_equal(lk_log_set_level_name("debug"), 0);
  assert_true(lk_log_enabled(LK_LOG_DEBUG));
  assert_true(lk_log_enabled(LK_LOG_INFO));
}

static void unknown_level_name_is_refused_and_level_kept(void **state) {
  (void)state;
  assert_int_equal(lk_log_set_level_name("error"), 0);
  const char *const bad[] = {"",      "INFO",  "Warn",   "warning",
                             "trace", "fatal", "debug ", "err"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(lk_log_set_level_name(bad[i]), -1);
  }
  size_t len;
  capture_start();
  lk_log(LK_LOG_WARN, "hidden", "still below error");
  lk_log(LK_LOG_ERROR, "shown", "error passes");
  char *out = capture_stop(&len);
  json_t *obj = only_line(out, len);
  assert_string_equal(field(obj, "event"), "shown");
  json_decref(obj);
  free(out);
}

/* Sets the level to name, logs once per level and asserts which lines got
 * written, as the string of their initials ("DIWE" for all four). */
static void expect_levels_written(const char *name, const char *want) {
  assert_int_equal(lk_log_set_level_name(name), 0);
  size_t len;
  capture_start();
  lk_log(LK_LOG_DEBUG, "D", "debug");
  lk_log(LK_LOG_INFO, "I", "info");
  lk_log(LK_LOG_WARN, "W", "warn");
  lk_log(LK_LOG_ERROR, "E", "error");
  char *out = capture_stop(&len);
  char got[8] = {0};
  size_t n = 0;
  char *line = out;
  char *nl;
  while ((nl = strchr(line, '\n')) != NULL) {
    json_t *obj = parse_line(line, (size_t)(nl - line));
    assert_true(n < sizeof(got) - 1);
    got[n++] = field(obj, "event")[0];
    json_decref(obj);
    line = nl + 1;
  }
  assert_int_equal(line - out, len);
  assert_string_equal(got, want);
  free(out);
}

static void debug_level_writes_everything(void **state) {
  (void)state;
  expect_levels_written("debug", "DIWE");
}

static void info_level_drops_debug(void **state) {
  (void)state;
  expect_levels_written("info", "IWE");
}

static void warn_level_drops_debug_and_info(void **state) {
  (void)state;
  expect_levels_written("warn", "WE");
}

static void error_level_writes_only_errors(void **state) {
  (void)state;
  expect_levels_written("error", "E");
}

/* Asserts that the parsed msg is a non-empty, shorter-than-whole prefix of
 * the repeated unit, i.e. it was truncated and nothing else changed. */
static void assert_truncated_repeat(const char *msg, const char *unit,
                                    size_t full_len) {
  size_t ulen = strlen(unit);
  size_t mlen = strlen(msg);
  assert_true(mlen > 0);
  assert_true(mlen < full_len);
  for (size_t i = 0; i < mlen; i++) {
    if (msg[i] != unit[i % ulen])
      fail_msg("msg differs from the repeated unit at byte %zu", i);
  }
}

/* Builds a string of count copies of unit (caller frees). */
static char *repeat(const char *unit, size_t count) {
  size_t ulen = strlen(unit);
  char *s = malloc(ulen * count + 1);
  assert_non_null(s);
  for (size_t i = 0; i < count; i++)
    memcpy(s + i * ulen, unit, ulen);
  s[ulen * count] = '\0';
  return s;
}

static void long_msg_is_truncated_to_valid_json(void **state) {
  (void)state;
  char *msg = repeat("a", 100000);
  json_t *obj = log_one(LK_LOG_INFO, "long", msg);
  assert_string_equal(field(obj, "event"), "long");
  assert_truncated_repeat(field(obj, "msg"), "a", 100000);
  assert_true(strlen(field(obj, "msg")) >= 1000);
  json_decref(obj);
  free(msg);
}

static void long_msg_of_quotes_is_truncated_to_valid_json(void **state) {
  (void)state;
  char *msg = repeat("\"\\", 4000);
  json_t *obj = log_one(LK_LOG_INFO, "quotes", msg);
  assert_truncated_repeat(field(obj, "msg"), "\"\\", 8000);
  json_decref(obj);
  free(msg);
}

static void long_msg_of_control_chars_is_truncated_to_valid_json(void **state) {
  (void)state;
  /* Each byte becomes six ("\u0001"), so the line buffer, not the message
   * buffer, is what truncates here. */
  char *msg = repeat("\x01", 5000);
  json_t *obj = log_one(LK_LOG_INFO, "ctl", msg);
  assert_truncated_repeat(field(obj, "msg"), "\x01", 5000);
  json_decref(obj);
  free(msg);
}

static void long_event_is_truncated_to_valid_json(void **state) {
  (void)state;
  char *event = repeat("e", 5000);
  json_t *obj = log_one(LK_LOG_INFO, event, "m");
  assert_truncated_repeat(field(obj, "event"), "e", 5000);
  json_decref(obj);
  free(event);
}

/* A message of multi-byte characters is cut by the 1 KiB message buffer
 * wherever the byte count falls; the line must stay valid UTF-8. */
static void long_utf8_msg_is_truncated_to_valid_json(void **state) {
  (void)state;
  const char *const units[] = {"\xc3\xa9", "\xe2\x9c\x93", "\xf0\x9f\x94\x91"};
  for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
    for (size_t pad = 0; pad < 4; pad++) {
      char *body = repeat(units[u], 2000);
      char *msg = malloc(pad + strlen(body) + 1);
      assert_non_null(msg);
      memset(msg, 'p', pad);
      strcpy(msg + pad, body);
      json_t *obj = log_one(LK_LOG_INFO, "utf8", msg);
      const char *got = field(obj, "msg");
      assert_true(strlen(got) < strlen(msg));
      assert_memory_equal(got, msg, pad);
      /* Whole characters, then U+FFFD for each byte of one cut short. */
      const char *rest = got + pad;
      size_t ulen = strlen(units[u]);
      while (strncmp(rest, units[u], ulen) == 0)
        rest += ulen;
      assert_true(rest - got >= 1000);
      size_t replaced = 0;
      while (strncmp(rest, "\xef\xbf\xbd", 3) == 0) {
        rest += 3;
        replaced++;
      }
      assert_string_equal(rest, "");
      assert_true(replaced < ulen);
      json_decref(obj);
      free(msg);
      free(body);
    }
  }
}

/* Escapes fill most of the line buffer first, so the line (not the message)
 * buffer ends inside a run of multi-byte characters, at every offset. */
static void line_buffer_cut_keeps_utf8_valid(void **state) {
  (void)state;
  for (size_t ctl = 395; ctl < 405; ctl++) {
    for (size_t pad = 0; pad < 4; pad++) {
      char msg[1024];
      size_t n = 0;
      memset(msg, '\x02', ctl);
      n += ctl;
      memset(msg + n, 'p', pad);
      n += pad;
      while (n + 4 < sizeof(msg)) {
        memcpy(msg + n, "\xf0\x9f\x94\x91", 4);
        n += 4;
      }
      msg[n] = '\0';
      json_t *obj = log_one(LK_LOG_INFO, "cut", msg);
      const char *got = field(obj, "msg");
      size_t glen = strlen(got);
      assert_true(glen < n);
      assert_true(glen >= ctl + pad);
      assert_memory_equal(got, msg, glen);
      assert_int_equal((glen - ctl - pad) % 4, 0);
      json_decref(obj);
    }
  }
}

static void invalid_utf8_in_msg_still_yields_valid_json(void **state) {
  (void)state;
  /* A stray continuation byte, a lead byte without its continuation, an
   * overlong '/', a UTF-16 surrogate and bytes that never occur. */
  const char *msg =
      "a\x80"
      "b\xc3("
      "c\xc0\xaf"
      "d\xed\xa0\x80"
      "e\xff\xfe"
      "f";
  json_t *obj = log_one(LK_LOG_INFO, "bad-utf8", msg);
  /* Each byte that starts no valid sequence becomes one U+FFFD. */
#define R "\xef\xbf\xbd"
  assert_string_equal(field(obj, "msg"),
                      "a" R "b" R "(c" R R "d" R R R "e" R R "f");
#undef R
  json_decref(obj);
}

#define THREADS 4
#define LINES_PER_THREAD 100

static void *log_many(void *arg) {
  char big[1001];
  memset(big, 'a' + (int)(intptr_t)arg, sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  for (int i = 0; i < LINES_PER_THREAD; i++)
    lk_log(LK_LOG_INFO, "thread", "%s", big);
  return NULL;
}

static void concurrent_lines_never_interleave(void **state) {
  (void)state;
  pthread_t t[THREADS];
  size_t len;
  capture_start();
  int created = 0;
  for (intptr_t i = 0; i < THREADS; i++) {
    if (pthread_create(&t[i], NULL, log_many, (void *)i) == 0)
      created++;
  }
  for (int i = 0; i < created; i++)
    pthread_join(t[i], NULL);
  char *out = capture_stop(&len);
  assert_int_equal(created, THREADS);
  assert_int_equal(count_lines(out, len), THREADS * LINES_PER_THREAD);
  char *line = out;
  char *nl;
  while ((nl = strchr(line, '\n')) != NULL) {
    json_t *obj = parse_line(line, (size_t)(nl - line));
    const char *msg = field(obj, "msg");
    assert_int_equal(strlen(msg), 1000);
    assert_int_equal(strspn(msg, (char[]){msg[0], '\0'}), 1000);
    json_decref(obj);
    line = nl + 1;
  }
  free(out);
}

/* Logs one lk_log_fields line and returns it parsed (any shape). */
static json_t *log_fields_one(const json_t *fields, size_t *line_len) {
  size_t len;
  capture_start();
  lk_log_fields(LK_LOG_INFO, "audit.test", fields, "summary %d", 7);
  char *out = capture_stop(&len);
  assert_int_equal(count_lines(out, len), 1);
  for (size_t i = 0; i + 1 < len; i++) {
    if ((unsigned char)out[i] < 0x20)
      fail_msg("raw control byte 0x%02x at %zu", (unsigned char)out[i], i);
  }
  json_error_t jerr;
  json_t *obj = json_loadb(out, len - 1, JSON_REJECT_DUPLICATES, &jerr);
  if (obj == NULL)
    fail_msg("line is not JSON (%s): %s", jerr.text, out);
  *line_len = len;
  free(out);
  return obj;
}

static void fields_follow_the_four_members(void **state) {
  (void)state;
  size_t len;
  json_t *f = json_pack("{s:s, s:i, s:b, s:{s:s, s:s}}", "tool", "weather",
                        "bytes", 42, "redacted", 1, "secret_hashes", "api_key",
                        "ab12", "line\n\"x", "cd34");
  json_t *obj = log_fields_one(f, &len);
  assert_int_equal(json_object_size(obj), 8);
  assert_string_equal(field(obj, "level"), "info");
  assert_string_equal(field(obj, "event"), "audit.test");
  assert_string_equal(field(obj, "msg"), "summary 7");
  assert_true(json_is_string(json_object_get(obj, "ts")));
  assert_string_equal(field(obj, "tool"), "weather");
  assert_int_equal(json_integer_value(json_object_get(obj, "bytes")), 42);
  assert_true(json_is_true(json_object_get(obj, "redacted")));
  json_t *h = json_object_get(obj, "secret_hashes");
  assert_string_equal(json_string_value(json_object_get(h, "api_key")), "ab12");
  assert_string_equal(json_string_value(json_object_get(h, "line\n\"x")),
                      "cd34");
  json_decref(obj);
  json_decref(f);
}

static void fields_cannot_replace_the_four_members(void **state) {
  (void)state;
  size_t len;
  json_t *f =
      json_pack("{s:s, s:s, s:s, s:s, s:s}", "ts", "forged", "level", "error",
                "event", "forged", "msg", "forged", "kept", "yes");
  json_t *obj = log_fields_one(f, &len);
  assert_int_equal(json_object_size(obj), 5);
  assert_string_equal(field(obj, "level"), "info");
  assert_string_equal(field(obj, "event"), "audit.test");
  assert_string_equal(field(obj, "msg"), "summary 7");
  assert_string_not_equal(field(obj, "ts"), "forged");
  assert_string_equal(field(obj, "kept"), "yes");
  json_decref(obj);
  json_decref(f);
}

static void no_fields_or_empty_fields_add_nothing(void **state) {
  (void)state;
  size_t len;
  json_t *empty = json_object();
  json_t *not_object = json_string("x");
  const json_t *cases[] = {NULL, empty, not_object};
  for (size_t i = 0; i < 3; i++) {
    json_t *obj = log_fields_one(cases[i], &len);
    assert_int_equal(json_object_size(obj), 4);
    json_decref(obj);
  }
  json_decref(empty);
  json_decref(not_object);
}

static void fields_longer_than_the_cap_are_dropped_and_said_so(void **state) {
  (void)state;
  size_t len;
  size_t big = LK_LOG_MAX_FIELDS_BYTES;
  char *v = malloc(big + 1);
  assert_non_null(v);
  memset(v, 'h', big);
  v[big] = '\0';
  json_t *f = json_pack("{s:s}", "huge", v);
  json_t *obj = log_fields_one(f, &len);
  assert_true(len <= MAX_LINE + 32);
  assert_null(json_object_get(obj, "huge"));
  assert_true(json_is_true(json_object_get(obj, "fields_dropped")));
  json_decref(obj);
  json_decref(f);
  /* Just under the cap is written whole, on one line. */
  v[big - 32] = '\0';
  f = json_pack("{s:s}", "huge", v);
  obj = log_fields_one(f, &len);
  assert_int_equal(strlen(field(obj, "huge")), big - 32);
  json_decref(obj);
  json_decref(f);
  free(v);
}

static void fields_below_the_level_are_not_written(void **state) {
  (void)state;
  size_t len;
  json_t *f = json_pack("{s:s}", "k", "v");
  assert_int_equal(lk_log_set_level_name("warn"), 0);
  capture_start();
  lk_log_fields(LK_LOG_INFO, "audit.test", f, "hidden");
  char *out = capture_stop(&len);
  assert_int_equal(len, 0);
  free(out);
  json_decref(f);
}

#define T(name) cmocka_unit_test_setup(name, level_info)

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(default_level_is_info),
      T(line_is_one_object_with_ts_level_event_msg),
      T(ts_is_current_utc_with_milliseconds),
      T(every_level_writes_its_name),
      T(each_call_writes_one_line_in_order),
      T(quotes_and_backslashes_in_msg_are_escaped),
      T(control_characters_in_msg_are_escaped),
      T(newline_in_msg_cannot_forge_a_second_line),
      T(event_is_escaped_like_msg),
      T(utf8_in_msg_is_kept),
      T(set_level_name_accepts_the_four_names),
      T(enabled_answers_whether_a_level_is_written),
      T(unknown_level_name_is_refused_and_level_kept),
      T(debug_level_writes_everything),
      T(info_level_drops_debug),
      T(warn_level_drops_debug_and_info),
      T(error_level_writes_only_errors),
      T(long_msg_is_truncated_to_valid_json),
      T(long_msg_of_quotes_is_truncated_to_valid_json),
      T(long_msg_of_control_chars_is_truncated_to_valid_json),
      T(long_event_is_truncated_to_valid_json),
      T(long_utf8_msg_is_truncated_to_valid_json),
      T(line_buffer_cut_keeps_utf8_valid),
      T(invalid_utf8_in_msg_still_yields_valid_json),
      T(concurrent_lines_never_interleave),
      T(fields_follow_the_four_members),
      T(fields_cannot_replace_the_four_members),
      T(no_fields_or_empty_fields_add_nothing),
      T(fields_longer_than_the_cap_are_dropped_and_said_so),
      T(fields_below_the_level_are_not_written),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
