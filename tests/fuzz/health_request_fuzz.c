/*
 * health_request_fuzz.c - fuzzes lk_health_parse_request, the decoding of
 * grpc.health.v1.HealthCheckRequest: the one message any client may send
 * to every listener of both daemons without a token (Check and Watch).
 *
 * Invariants: an accepted request yields a NUL-terminated name of at most
 * LK_HEALTH_MAX_SERVICE_NAME bytes that re-encodes to a request parsing
 * back to the same name; a refused one says LK_INVALID_ARGUMENT with a
 * reason and leaves nothing allocated (ASan).
 */
#include <string.h>

#include "lib/health.h"
#include "grpc/health/v1/health.pb-c.h"
#include "tests/fuzz/fuzz_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char name[LK_HEALTH_MAX_SERVICE_NAME + 1];
  lk_err err;
  lk_err_clear(&err);
  if (lk_health_parse_request(data, size, name, &err) != LK_OK) {
    if (err.code != LK_INVALID_ARGUMENT || err.msg[0] == '\0')
      __builtin_trap();
    return 0;
  }
  size_t n = strnlen(name, sizeof(name));
  if (n > LK_HEALTH_MAX_SERVICE_NAME)
    __builtin_trap();
  Grpc__Health__V1__HealthCheckRequest req =
      GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = name;
  unsigned char buf[LK_HEALTH_MAX_SERVICE_NAME + 16];
  size_t len = grpc__health__v1__health_check_request__pack(&req, buf);
  char again[LK_HEALTH_MAX_SERVICE_NAME + 1];
  if (lk_health_parse_request(buf, len, again, &err) != LK_OK ||
      strcmp(name, again) != 0)
    __builtin_trap();
  return 0;
}
