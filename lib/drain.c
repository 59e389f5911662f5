/*
 * drain.c - stop signals for both daemons.
 *
 * The second-signal thread owns a copy of the signal set and the program
 * name (static storage: there is one per process and it never returns
 * except through _exit, which skips the draining main thread's cleanup on
 * purpose).
 */
#include "lib/drain.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"

static sigset_t second_sigs;
static char second_prog[64];

int lk_drain_wait(const sigset_t *sigs, int poll_ms, void (*poll)(void *ctx),
                  void *ctx) {
  for (;;) {
    if (poll != NULL)
      poll(ctx);
    struct timespec ts = {poll_ms / 1000, (long)(poll_ms % 1000) * 1000000L};
    int sig = sigtimedwait(sigs, NULL, &ts);
    if (sig > 0)
      return sig;
  }
}

static void *second_signal_main(void *arg) {
  (void)arg;
  int sig = 0;
  if (sigwait(&second_sigs, &sig) != 0)
    return NULL;
  lk_log(LK_LOG_WARN, "stopping_now",
         "%s: second signal %d (%s) during the drain: exiting at once with "
         "status %d; calls still in flight are cut off",
         second_prog, sig, strsignal(sig), 128 + sig);
  _exit(128 + sig);
}

lk_status lk_drain_arm_second_signal(const sigset_t *sigs, const char *prog,
                                     lk_err *err) {
  second_sigs = *sigs;
  snprintf(second_prog, sizeof(second_prog), "%s", prog);
  pthread_t t;
  int e = pthread_create(&t, NULL, second_signal_main, NULL);
  if (e != 0) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "cannot start the second-signal thread: %s", strerror(e));
  }
  pthread_detach(t);
  return LK_OK;
}
