/*
 * flags.c - the parser behind lk_flags_parse. Values point into argv or
 * the environment (never copied), so targets stay valid for the process.
 */
#include "lib/flags.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Builds LATCHKEY_DATA_DIR from data-dir. */
static void env_name(const char *flag, char *out, size_t cap) {
  size_t n = (size_t)snprintf(out, cap, "LATCHKEY_");
  for (; *flag != '\0' && n + 1 < cap; flag++) {
    out[n++] = *flag == '-' ? '_' : (char)toupper((unsigned char)*flag);
  }
  out[n] = '\0';
}

/* Parses a non-negative duration: decimal digits, then nothing (ms) or one
 * of the units ms, s, m, h. Returns 0 and the milliseconds, or -1. */
static int parse_duration_ms(const char *value, int64_t *out) {
  static const struct {
    const char *unit;
    int64_t ms;
  } units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  if (value == NULL || !isdigit((unsigned char)value[0]))
    return -1;
  char *end = NULL;
  errno = 0;
  long long v = strtoll(value, &end, 10);
  if (errno != 0 || v < 0)
    return -1;
  for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if (strcmp(end, units[i].unit) != 0)
      continue;
    if (v > INT64_MAX / units[i].ms)
      return -1;
    *out = (int64_t)v * units[i].ms;
    return 0;
  }
  return -1;
}

static lk_status set_value(const lk_flag *f, const char *value,
                           const char *source, lk_err *err) {
  switch (f->kind) {
    case LK_FLAG_STRING:
      *(const char **)f->target = value;
      return LK_OK;
    case LK_FLAG_BOOL:
      if (value == NULL || strcmp(value, "1") == 0 ||
          strcmp(value, "true") == 0 || strcmp(value, "yes") == 0) {
        *(int *)f->target = 1;
        return LK_OK;
      }
      if (strcmp(value, "0") == 0 || strcmp(value, "false") == 0 ||
          strcmp(value, "no") == 0 || value[0] == '\0') {
        *(int *)f->target = 0;
        return LK_OK;
      }
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "%s --%s takes true or false, got '%s'", source, f->name,
                     value);
    case LK_FLAG_INT: {
      char *end = NULL;
      errno = 0;
      long long v = strtoll(value, &end, 10);
      if (errno != 0 || end == value || *end != '\0' || v < 0) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s --%s takes a non-negative integer, got '%s'", source,
                       f->name, value);
      }
      *(int64_t *)f->target = v;
      return LK_OK;
    }
    case LK_FLAG_DURATION_MS: {
      int64_t ms = 0;
      if (parse_duration_ms(value, &ms) != 0) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s --%s takes a duration such as 500ms, 30s, 5m or "
                       "1h (a plain number is milliseconds), got '%s'",
                       source, f->name, value);
      }
      *(int64_t *)f->target = ms;
      return LK_OK;
    }
  }
  return lk_fail(err, LK_INTERNAL, "flag --%s has an unknown kind", f->name);
}

lk_status lk_flags_parse(const lk_flag *flags, int n_flags, int argc,
                         char **argv, int *help_requested, lk_err *err) {
  char seen[128] = {0};
  *help_requested = 0;
  if (n_flags > (int)sizeof(seen)) {
    return lk_fail(err, LK_INTERNAL, "too many flags");
  }
  /* --help first, before any target changes: the usage text prints the
   * targets' values as the defaults. */
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      *help_requested = 1;
      return LK_OK;
    }
  }
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strncmp(arg, "--", 2) != 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "unexpected argument '%s' (flags start with --)", arg);
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    int found = -1;
    for (int k = 0; k < n_flags; k++) {
      if (strlen(flags[k].name) == name_len &&
          strncmp(flags[k].name, name, name_len) == 0) {
        found = k;
        break;
      }
    }
    if (found < 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "unknown flag --%.*s (see --help)", (int)name_len, name);
    }
    const lk_flag *f = &flags[found];
    const char *value = eq ? eq + 1 : NULL;
    if (value == NULL && f->kind != LK_FLAG_BOOL) {
      /* "--data-dir --listen x" is a forgotten value, not a path. */
      if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "flag --%s needs a value (use --%s=VALUE for a value "
                       "that starts with --)",
                       f->name, f->name);
      }
      value = argv[++i];
    }
    lk_status st = set_value(f, value, "flag", err);
    if (st != LK_OK)
      return st;
    seen[found] = 1;
  }
  for (int k = 0; k < n_flags; k++) {
    if (seen[k])
      continue;
    char env[96];
    env_name(flags[k].name, env, sizeof(env));
    const char *value = getenv(env);
    if (value == NULL)
      continue;
    char source[128];
    snprintf(source, sizeof(source), "environment %s for", env);
    lk_status st = set_value(&flags[k], value, source, err);
    if (st != LK_OK)
      return st;
  }
  return LK_OK;
}

/* Writes " (default X)" for a flag whose target holds a value, else "". */
static void default_text(const lk_flag *f, char *out, size_t cap) {
  switch (f->kind) {
    case LK_FLAG_STRING: {
      const char *v = *(const char *const *)f->target;
      if (v != NULL && v[0] != '\0')
        snprintf(out, cap, " (default %s)", v);
      return;
    }
    case LK_FLAG_BOOL:
      snprintf(out, cap, " (default %s)",
               *(const int *)f->target ? "true" : "false");
      return;
    case LK_FLAG_INT:
      snprintf(out, cap, " (default %lld)",
               (long long)*(const int64_t *)f->target);
      return;
    case LK_FLAG_DURATION_MS: {
      int64_t ms = *(const int64_t *)f->target;
      if (ms % 1000 == 0)
        snprintf(out, cap, " (default %llds)", (long long)(ms / 1000));
      else
        snprintf(out, cap, " (default %lldms)", (long long)ms);
      return;
    }
  }
}

void lk_flags_usage(const char *prog, const char *summary, const lk_flag *flags,
                    int n_flags) {
  fprintf(stderr,
          "usage: %s [flags]\n%s\n\nflags (each also from the "
          "environment variable shown):\n",
          prog, summary);
  for (int k = 0; k < n_flags; k++) {
    char env[96];
    env_name(flags[k].name, env, sizeof(env));
    char left[64];
    snprintf(left, sizeof(left), "--%s%s", flags[k].name,
             flags[k].kind == LK_FLAG_BOOL          ? ""
             : flags[k].kind == LK_FLAG_DURATION_MS ? " DURATION"
                                                    : " VALUE");
    char def[160] = "";
    default_text(&flags[k], def, sizeof(def));
    fprintf(stderr, "  %-30s %s%s [%s]\n", left, flags[k].help, def, env);
  }
}

int lk_flags_main(const char *prog, const char *summary, const lk_flag *flags,
                  int n_flags, int argc, char **argv) {
  int help = 0;
  lk_err err;
  lk_err_clear(&err);
  if (lk_flags_parse(flags, n_flags, argc, argv, &help, &err) != LK_OK) {
    fprintf(stderr, "%s: %s\n", prog, err.msg);
    return 2;
  }
  if (help) {
    lk_flags_usage(prog, summary, flags, n_flags);
    return 0;
  }
  return -1;
}
