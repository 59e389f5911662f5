/*
 * flags.h - table-driven command-line flags with LATCHKEY_<FLAG> fallbacks.
 *
 * Why: DESIGN.md §10 makes every flag of both daemons also readable from
 * the environment (`--data-dir` <- LATCHKEY_DATA_DIR). One parser keeps the
 * rule uniform and the --help text next to the definitions. A flag given on
 * the command line wins over the environment, which wins over the default.
 */
#ifndef LK_FLAGS_H
#define LK_FLAGS_H

#include <stdint.h>

#include "lib/status.h"

/* LK_FLAG_DURATION_MS takes "500ms", "30s", "5m", "1h" or a plain number
 * of milliseconds, and stores milliseconds. */
typedef enum {
  LK_FLAG_STRING,
  LK_FLAG_BOOL,
  LK_FLAG_INT,
  LK_FLAG_DURATION_MS
} lk_flag_kind;

typedef struct {
  const char *name; /* without leading dashes: "data-dir" */
  lk_flag_kind kind;
  void *target; /* const char **, int *, or int64_t * (INT, DURATION_MS) */
  const char *help;
} lk_flag;

/* Parses argv and then the environment into the flags' targets. Unknown
 * flags, missing values and malformed numbers or durations are
 * LK_INVALID_ARGUMENT with
 * the flag named. "--help" sets *help_requested and returns LK_OK. */
lk_status lk_flags_parse(const lk_flag *flags, int n_flags, int argc,
                         char **argv, int *help_requested,
                         lk_err *err) LK_MUST_CHECK;

/* The daemons' command-line prologue: parses argv and the environment;
 * on a bad flag prints "PROG: reason" and returns 2, on --help prints the
 * usage and returns 0; returns -1 when the program should go on. */
int lk_flags_main(const char *prog, const char *summary, const lk_flag *flags,
                  int n_flags, int argc, char **argv);

/* Prints a usage text listing every flag, its default (the value its
 * target holds now) and its environment variable. */
void lk_flags_usage(const char *prog, const char *summary, const lk_flag *flags,
                    int n_flags);

#endif
