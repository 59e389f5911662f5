/*
 * log.c - JSON-lines logger. Each line is formatted into a stack buffer and
 * written with one write(2), so concurrent lines never interleave.
 */
#include "lib/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static lk_log_level min_level = LK_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int lk_log_set_level_name(const char *name) {
  for (int i = 0; i < 4; i++) {
    if (strcmp(name, level_names[i]) == 0) {
      min_level = (lk_log_level)i;
      return 0;
    }
  }
  return -1;
}

/* Appends s to out as JSON string content; returns the new length. */
static size_t json_escape(char *out, size_t pos, size_t cap, const char *s) {
  for (; *s != '\0' && pos + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[pos++] = '\\';
      out[pos++] = (char)c;
    } else if (c < 0x20) {
      pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
    } else {
      out[pos++] = (char)c;
    }
  }
  return pos;
}

void lk_log(lk_log_level level, const char *event, const char *fmt, ...) {
  if (level < min_level)
    return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);

  char line[2600];
  size_t pos = (size_t)snprintf(
      line, sizeof(line),
      "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\","
      "\"event\":\"",
      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
      tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
  pos = json_escape(line, pos, sizeof(line) - 16, event);
  pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "\",\"msg\":\"");
  pos = json_escape(line, pos, sizeof(line) - 4, msg);
  line[pos++] = '"';
  line[pos++] = '}';
  line[pos++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, pos);
  (void)w;
}
