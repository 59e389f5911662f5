/*
 * log.h - one JSON object per line on stderr, one line per event.
 *
 * Why: operators feed stderr to a log pipeline; a line per event with a
 * fixed shape ({"ts","level","event","msg"}, plus named members for audit
 * lines) greps and parses. Callers pass ids, counts and keyed hashes
 * only; nothing that formats a secret may call lk_log or lk_log_fields.
 */
#ifndef LK_LOG_H
#define LK_LOG_H

#include <jansson.h>

/* Most bytes of rendered fields an lk_log_fields line carries. */
#define LK_LOG_MAX_FIELDS_BYTES (64u * 1024u)

typedef enum {
  LK_LOG_DEBUG,
  LK_LOG_INFO,
  LK_LOG_WARN,
  LK_LOG_ERROR
} lk_log_level;

/* Sets the minimum level written; parses "debug|info|warn|error".
 * Returns 0 on success, -1 for an unknown name. */
int lk_log_set_level_name(const char *name);

/* Returns nonzero when a line at level would be written, so a caller can
 * skip building members nobody will read. */
int lk_log_enabled(lk_log_level level);

/* Writes one line {"ts":..., "level":..., "event":event, "msg":...} when
 * level is at or above the configured minimum. Thread-safe. Over-long text
 * is cut short; bytes that are not UTF-8 (such as a character the cut split)
 * are written as U+FFFD, so the line is always valid JSON. */
void lk_log(lk_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes one line like lk_log with the members of the JSON object fields
 * (borrowed; NULL or not an object adds none) after msg, for lines that
 * tools read by member (audit lines): {"ts","level","event","msg",...}.
 * Members named ts, level, event or msg are left out; strings are written
 * as ASCII with JSON escapes. When the members would take more than
 * LK_LOG_MAX_FIELDS_BYTES (or memory runs out) the line carries
 * "fields_dropped":true instead. Thread-safe. */
void lk_log_fields(lk_log_level level, const char *event, const json_t *fields,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
