/*
 * grpc_floor.c - the "grpc-floor" system of the call-path benchmark: a
 * lib/rpc_server (the server framework latchkeyd uses) with a no-op
 * handler, so loadgen can measure what the gRPC hop alone costs.
 *
 * Usage: grpc_floor ADDR [WORKERS]. Serves /latchkey.v1.ToolCalls/Call
 * on ADDR ("unix:/path" or "host:port"; repeatable as ADDR,ADDR) with
 * WORKERS threads (default 4, as latchkeyd) and answers every call with
 * an empty message, until SIGTERM or SIGINT.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc.h>

#include "lib/rpc_server.h"
#include "lib/status.h"

static void noop(void *ctx, lk_rpc_call *call) {
  (void)ctx;
  lk_rpc_call_finish(call, NULL, 0);
}

int main(int argc, char **argv) {
  static const char *const methods[] = {"/latchkey.v1.ToolCalls/Call"};
  lk_rpc_server *srv = NULL;
  lk_err err;
  sigset_t set;
  int sig = 0, rc = 1;
  char *addrs = NULL, *save = NULL;
  memset(&err, 0, sizeof(err));
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: grpc_floor ADDR[,ADDR] [WORKERS]\n");
    return 2;
  }
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  grpc_init();
  if (lk_rpc_server_new(argc == 3 ? atoi(argv[2]) : 4, &srv, &err) != LK_OK)
    goto done;
  addrs = strdup(argv[1]);
  if (addrs == NULL)
    goto done;
  for (char *a = strtok_r(addrs, ",", &save); a != NULL;
       a = strtok_r(NULL, ",", &save)) {
    if (lk_rpc_server_listen(srv, a, methods, 1, noop, NULL, &err) != LK_OK)
      goto done;
  }
  if (lk_rpc_server_start(srv, &err) != LK_OK)
    goto done;
  fprintf(stderr, "grpc_floor: serving\n");
  sigwait(&set, &sig);
  rc = 0;
done:
  if (rc != 0 && sig == 0)
    fprintf(stderr, "grpc_floor: %s\n", err.msg);
  lk_rpc_server_destroy(srv);
  free(addrs);
  grpc_shutdown();
  return rc;
}
