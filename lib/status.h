/*
 * status.h - the one status type every fallible Latchkey function returns.
 *
 * Why: a call path that crosses store, seal, inject and forward must end in
 * exactly one gRPC status with a message that tells the caller what to do.
 * Each lk_status maps 1:1 to a gRPC code (DESIGN.md §4), so no layer has to
 * translate; the human-readable reason travels in an lk_err the caller owns,
 * never in a global. Functions returning lk_status are warn_unused_result.
 *
 * Invariant: lk_err.msg never contains secret material. Code that formats a
 * message names ids and field names only.
 */
#ifndef LK_STATUS_H
#define LK_STATUS_H

#include <stddef.h>

#define LK_MUST_CHECK __attribute__((warn_unused_result))

/* X(name, grpc_code, default message) */
#define LK_STATUS_MAP(X)                              \
  X(LK_OK, 0, "ok")                                   \
  X(LK_INVALID_ARGUMENT, 3, "invalid argument")       \
  X(LK_DEADLINE_EXCEEDED, 4, "deadline exceeded")     \
  X(LK_NOT_FOUND, 5, "not found")                     \
  X(LK_ALREADY_EXISTS, 6, "already exists")           \
  X(LK_PERMISSION_DENIED, 7, "permission denied")     \
  X(LK_RESOURCE_EXHAUSTED, 8, "resource exhausted")   \
  X(LK_FAILED_PRECONDITION, 9, "failed precondition") \
  X(LK_INTERNAL, 13, "internal error")                \
  X(LK_UNAVAILABLE, 14, "unavailable")                \
  X(LK_UNAUTHENTICATED, 16, "unauthenticated")

typedef enum {
#define LK_X(name, code, msg) name,
  LK_STATUS_MAP(LK_X)
#undef LK_X
      LK_STATUS_COUNT
} lk_status;

/* A per-call error: the status plus the reason a person can act on. */
typedef struct {
  lk_status code;
  char msg[512];
} lk_err;

/* Returns the gRPC status code for s. */
int lk_status_grpc_code(lk_status s);

/* Returns the symbolic name of s ("LK_NOT_FOUND"). */
const char *lk_status_name(lk_status s);

/* Returns the default message of s. */
const char *lk_status_default_msg(lk_status s);

/* Sets err (when non-NULL) to code with a printf-style message; returns code
 * so callers can write `return lk_fail(err, LK_NOT_FOUND, "...")`. */
lk_status lk_fail(lk_err *err, lk_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Resets err to LK_OK with an empty message. */
void lk_err_clear(lk_err *err);

#endif
