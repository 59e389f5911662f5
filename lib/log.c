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

/* Returns the length (2-4) of the well-formed UTF-8 sequence at s (RFC 3629:
 * no overlongs, surrogates or code points past U+10FFFF), or 0. s is
 * NUL-terminated, and NUL is no continuation byte, so reads stop there. */
static size_t utf8_seq_len(const unsigned char *s) {
  unsigned char lo = 0x80, hi = 0xBF;
  size_t n;
  if (s[0] >= 0xC2 && s[0] <= 0xDF) {
    n = 2;
  } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
    n = 3;
    lo = s[0] == 0xE0 ? 0xA0 : 0x80;
    hi = s[0] == 0xED ? 0x9F : 0xBF;
  } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
    n = 4;
    lo = s[0] == 0xF0 ? 0x90 : 0x80;
    hi = s[0] == 0xF4 ? 0x8F : 0xBF;
  } else {
    return 0;
  }
  if (s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < n; i++) {
    if (s[i] < 0x80 || s[i] > 0xBF)
      return 0;
  }
  return n;
}

/* Appends s to out as JSON string content; returns the new length. Output
 * stops while 7 bytes are still free (room for any escape or UTF-8
 * sequence), so a cut never splits one, and each byte that starts no
 * well-formed sequence (such as a character vsnprintf cut short) becomes
 * U+FFFD: the line stays valid JSON whatever bytes the caller passed. */
static size_t json_escape(char *out, size_t pos, size_t cap, const char *s) {
  while (*s != '\0' && pos + 7 < cap) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[pos++] = '\\';
      out[pos++] = (char)c;
      s++;
    } else if (c < 0x20) {
      pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
      s++;
    } else if (c < 0x80) {
      out[pos++] = (char)c;
      s++;
    } else {
      size_t n = utf8_seq_len((const unsigned char *)s);
      if (n == 0) {
        memcpy(out + pos, "\\ufffd", 6);
        pos += 6;
        s++;
      } else {
        memcpy(out + pos, s, n);
        pos += n;
        s += n;
      }
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
