/*
 * log.h - one JSON object per line on stderr, one line per event.
 *
 * Why: operators feed stderr to a log pipeline; a line per event with a
 * fixed shape ({"ts","level","event","msg"}) greps and parses. Callers pass
 * ids and counts only; nothing that formats a secret may call lk_log.
 */
#ifndef LK_LOG_H
#define LK_LOG_H

typedef enum {
  LK_LOG_DEBUG,
  LK_LOG_INFO,
  LK_LOG_WARN,
  LK_LOG_ERROR
} lk_log_level;

/* Sets the minimum level written; parses "debug|info|warn|error".
 * Returns 0 on success, -1 for an unknown name. */
int lk_log_set_level_name(const char *name);

/* Writes one line {"ts":..., "level":..., "event":event, "msg":...} when
 * level is at or above the configured minimum. Thread-safe. Over-long text
 * is cut short; bytes that are not UTF-8 (such as a character the cut split)
 * are written as U+FFFD, so the line is always valid JSON. */
void lk_log(lk_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
