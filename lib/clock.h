/*
 * clock.h - the one monotonic clock deadlines are measured on.
 *
 * Why: gRPC deadlines, vendor timeouts and latency numbers must compare
 * against each other; all of them are CLOCK_MONOTONIC milliseconds.
 */
#ifndef LK_CLOCK_H
#define LK_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Returns the current CLOCK_MONOTONIC time in milliseconds. */
static inline int64_t lk_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Returns the current CLOCK_MONOTONIC time in microseconds. */
static inline int64_t lk_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Returns the current wall-clock time in Unix milliseconds. */
static inline int64_t lk_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
