/*
 * etcd_fixture.c - starts and stops a real etcd for tests.
 *
 * Readiness is a Range through lib/etcd itself (a get of an absent key
 * answering LK_NOT_FOUND), so "started" means "lib/etcd can talk to it".
 * Every wait is bounded; a process that exits while starting (most likely
 * a port taken between etcd_fx_free_port and its bind) is retried on new
 * ports by etcd_fx_start.
 */
#include "tests/unit/etcd_fixture.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/etcd.h"
#include "lib/status.h"

extern char **environ;

int etcd_fx_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof(sin);
  int port = -1;
  if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
      getsockname(fd, (struct sockaddr *)&sin, &sl) == 0)
    port = ntohs(sin.sin_port);
  close(fd);
  return port;
}

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

void etcd_fx_kill(etcd_fx *f, int sig) {
  if (f->pid <= 0)
    return;
  kill(f->pid, sig);
  int64_t start = lk_now_ms();
  for (;;) {
    pid_t r = waitpid(f->pid, NULL, WNOHANG);
    if (r == f->pid || (r < 0 && errno != EINTR))
      break;
    if (lk_now_ms() - start > 15000) {
      kill(f->pid, SIGKILL);
      waitpid(f->pid, NULL, 0);
      break;
    }
    usleep(20 * 1000);
  }
  f->pid = 0;
}

void etcd_fx_print_log(const etcd_fx *f) {
  char path[600];
  snprintf(path, sizeof(path), "%s/etcd.log", f->dir);
  FILE *fp = fopen(path, "r");
  if (fp == NULL)
    return;
  char line[1024];
  fprintf(stderr, "---- %s (tail) ----\n", path);
  long size = 0;
  if (fseek(fp, 0, SEEK_END) == 0 && (size = ftell(fp)) > 8192)
    fseek(fp, size - 8192, SEEK_SET);
  else
    fseek(fp, 0, SEEK_SET);
  while (fgets(line, sizeof(line), fp) != NULL)
    fputs(line, stderr);
  fclose(fp);
}

int etcd_fx_spawn(etcd_fx *f) {
  char data[600], log[600], client[96], peer[96], cluster[128];
  snprintf(data, sizeof(data), "%s/data", f->dir);
  snprintf(log, sizeof(log), "%s/etcd.log", f->dir);
  snprintf(client, sizeof(client), "http://127.0.0.1:%d", f->client_port);
  snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", f->peer_port);
  snprintf(cluster, sizeof(cluster), "t=%s", peer);
  snprintf(f->ep, sizeof(f->ep), "127.0.0.1:%d", f->client_port);
  const char *bin =
      access("/usr/bin/etcd", X_OK) == 0 ? "/usr/bin/etcd" : "etcd";
  char *argv[] = {
      (char *)bin, "--name", "t", "--data-dir", data, "--listen-client-urls",
      client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
      /* So progress tests need not wait 10 minutes. */
      "--experimental-watch-progress-notify-interval", "1s", NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  int rc = posix_spawnp(&f->pid, bin, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    f->pid = 0;
    return -1;
  }
  lk_etcd *e = NULL;
  lk_err err;
  if (lk_etcd_open(f->ep, "/ready/", &e, &err) != LK_OK) {
    etcd_fx_kill(f, SIGKILL);
    return -1;
  }
  int64_t start = lk_now_ms();
  int ok = 0;
  while (lk_now_ms() - start < ETCD_FX_START_MS) {
    unsigned char *v = NULL;
    size_t n = 0;
    if (lk_etcd_get(e, "probe", &v, &n, NULL, &err) == LK_NOT_FOUND) {
      ok = 1;
      break;
    }
    lk_etcd_value_free(v, n);
    if (waitpid(f->pid, NULL, WNOHANG) == f->pid) {
      f->pid = 0; /* exited: most likely a port was taken meanwhile */
      break;
    }
    usleep(50 * 1000);
  }
  lk_etcd_close(e);
  if (!ok) {
    etcd_fx_kill(f, SIGKILL);
    return -1;
  }
  return 0;
}

int etcd_fx_start(etcd_fx *f) {
  const char *tmp = getenv("TEST_TMPDIR");
  memset(f, 0, sizeof(*f));
  snprintf(f->dir, sizeof(f->dir), "%s/etcd-XXXXXX",
           tmp != NULL ? tmp : "/tmp");
  if (mkdtemp(f->dir) == NULL) {
    fprintf(stderr, "mkdtemp %s: %s\n", f->dir, strerror(errno));
    return -1;
  }
  for (int attempt = 0; attempt < 5; attempt++) {
    f->client_port = etcd_fx_free_port();
    f->peer_port = etcd_fx_free_port();
    if (f->client_port > 0 && f->peer_port > 0 &&
        f->client_port != f->peer_port && etcd_fx_spawn(f) == 0)
      return 0;
    char data[600];
    snprintf(data, sizeof(data), "%s/data", f->dir);
    nftw(data, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
  fprintf(stderr, "etcd did not start\n");
  etcd_fx_print_log(f);
  return -1;
}

void etcd_fx_world(etcd_fx *f, const char *label, char *prefix,
                   size_t prefix_cap, char *ring, size_t ring_cap) {
  int n = f->worlds++;
  snprintf(prefix, prefix_cap, "/%s-%d/", label, n);
  snprintf(ring, ring_cap, "%s/ring-%d", f->dir, n);
}

void etcd_fx_stop(etcd_fx *f) {
  etcd_fx_kill(f, SIGTERM);
  if (f->dir[0] != '\0' && getenv("LK_ETCD_TEST_KEEP") == NULL)
    nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}
