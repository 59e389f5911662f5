/*
 * log.c - JSON-lines logger. Each line is formatted into one buffer (on the
 * stack; on the heap for a line with fields that do not fit there) and
 * written with one write(2), so concurrent lines never interleave.
 */
#include "lib/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The longest line lk_log writes: timestamp, level, event and msg. */
#define HEAD_BYTES 2600

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

/* Writes {"ts":...,"level":...,"event":...,"msg":"... into line (cap
 * bytes, at least HEAD_BYTES) and returns its length; the object is left
 * open after msg's closing quote. */
static size_t format_head(char *line, size_t cap, lk_log_level level,
                          const char *event, const char *fmt, va_list ap) {
  char msg[1024];
  vsnprintf(msg, sizeof(msg), fmt, ap);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);

  size_t pos = (size_t)snprintf(
      line, cap,
      "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\","
      "\"event\":\"",
      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
      tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
  pos = json_escape(line, pos, HEAD_BYTES - 16, event);
  pos += (size_t)snprintf(line + pos, cap - pos, "\",\"msg\":\"");
  pos = json_escape(line, pos, HEAD_BYTES - 4, msg);
  line[pos++] = '"';
  return pos;
}

int lk_log_enabled(lk_log_level level) {
  return level >= min_level;
}

void lk_log(lk_log_level level, const char *event, const char *fmt, ...) {
  if (level < min_level)
    return;
  char line[HEAD_BYTES];
  va_list ap;
  va_start(ap, fmt);
  size_t pos = format_head(line, sizeof(line), level, event, fmt, ap);
  va_end(ap);
  line[pos++] = '}';
  line[pos++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, pos);
  (void)w;
}

/* Returns 1 when key is one of the members every line has. */
static int reserved_key(const char *key) {
  return strcmp(key, "ts") == 0 || strcmp(key, "level") == 0 ||
         strcmp(key, "event") == 0 || strcmp(key, "msg") == 0;
}

void lk_log_fields(lk_log_level level, const char *event, const json_t *fields,
                   const char *fmt, ...) {
  if (level < min_level)
    return;
  /* Render the members without the reserved ones, compact and ASCII. */
  char *text = NULL;
  json_t *copy = json_is_object(fields) ? json_object() : NULL;
  if (copy != NULL) {
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)fields, key, value) {
      if (!reserved_key(key))
        json_object_set(copy, key, value);
    }
    text = json_dumps(copy, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(copy);
  }
  size_t text_len = text != NULL ? strlen(text) : 0;
  int drop = text_len > LK_LOG_MAX_FIELDS_BYTES;
  /* "{}" renders no member; otherwise the inner text goes after msg. */
  size_t inner = !drop && text_len > 2 ? text_len - 2 : 0;
  size_t cap = HEAD_BYTES + inner + 32;
  char stack_line[HEAD_BYTES + 32];
  char *line = cap <= sizeof(stack_line) ? stack_line : malloc(cap);
  if (line == NULL) {
    line = stack_line;
    cap = sizeof(stack_line);
    inner = 0;
    drop = 1;
  }
  va_list ap;
  va_start(ap, fmt);
  size_t pos = format_head(line, cap, level, event, fmt, ap);
  va_end(ap);
  if (inner > 0) {
    line[pos++] = ',';
    memcpy(line + pos, text + 1, inner);
    pos += inner;
  } else if (drop) {
    static const char dropped[] = ",\"fields_dropped\":true";
    memcpy(line + pos, dropped, sizeof(dropped) - 1);
    pos += sizeof(dropped) - 1;
  }
  line[pos++] = '}';
  line[pos++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, pos);
  (void)w;
  if (line != stack_line)
    free(line);
  /* json_dumps allocates with jansson's functions, which a daemon may
   * have replaced (lib/oauth_token installs wiping ones). */
  json_free_t jfree = free;
  json_get_alloc_funcs(NULL, &jfree);
  if (text != NULL)
    jfree(text);
}
