/*
 * status.c - message and code tables for lk_status, generated from the one
 * X-macro list in status.h so they can never drift apart.
 */
#include "lib/status.h"

#include <stdarg.h>
#include <stdio.h>

static const int grpc_codes[] = {
#define LK_X(name, code, msg) code,
    LK_STATUS_MAP(LK_X)
#undef LK_X
};

static const char *const names[] = {
#define LK_X(name, code, msg) #name,
    LK_STATUS_MAP(LK_X)
#undef LK_X
};

static const char *const default_msgs[] = {
#define LK_X(name, code, msg) msg,
    LK_STATUS_MAP(LK_X)
#undef LK_X
};

int lk_status_grpc_code(lk_status s) {
  return (unsigned)s < LK_STATUS_COUNT ? grpc_codes[s] : 13;
}

const char *lk_status_name(lk_status s) {
  return (unsigned)s < LK_STATUS_COUNT ? names[s] : "LK_UNKNOWN";
}

const char *lk_status_default_msg(lk_status s) {
  return (unsigned)s < LK_STATUS_COUNT ? default_msgs[s] : "unknown status";
}

lk_status lk_fail(lk_err *err, lk_status code, const char *fmt, ...) {
  if (err != NULL) {
    va_list ap;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
  }
  return code;
}

void lk_err_clear(lk_err *err) {
  if (err != NULL) {
    err->code = LK_OK;
    err->msg[0] = '\0';
  }
}
