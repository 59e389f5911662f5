/*
 * drain.h - the daemons' signal handling: wait for a stop signal while
 * polling readiness, then let a second signal end the drain at once.
 *
 * Why: SIGTERM must drain in-flight calls (DESIGN.md §7), which can take
 * up to --drain-timeout; an operator who sends a second SIGTERM or SIGINT
 * (or presses Ctrl-C twice) means "now", so that one exits at once.
 *
 * The signals in the set must be blocked in every thread (block them
 * before the first thread starts) so only these functions take them.
 */
#ifndef LK_DRAIN_H
#define LK_DRAIN_H

#include <signal.h>

#include "lib/status.h"

/* Waits for one signal of sigs and returns it; every poll_ms meanwhile
 * calls poll(ctx) (when not NULL), so the caller can notice readiness. */
int lk_drain_wait(const sigset_t *sigs, int poll_ms, void (*poll)(void *ctx),
                  void *ctx);

/* Starts a detached thread that takes the next signal of sigs, logs
 * "stopping_now" naming it and prog, and exits the process at once with
 * status 128 + the signal number (143 for SIGTERM, 130 for SIGINT). */
lk_status lk_drain_arm_second_signal(const sigset_t *sigs, const char *prog,
                                     lk_err *err) LK_MUST_CHECK;

#endif
