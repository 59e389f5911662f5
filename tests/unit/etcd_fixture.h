/*
 * etcd_fixture.h - a real single-node etcd (Debian's etcd-server,
 * /usr/bin/etcd) for tests: free loopback ports, a private data dir under
 * TEST_TMPDIR, bounded start and stop.
 *
 * Why: lib/etcd and the control plane's etcd catalog are only worth testing
 * against the real server; one helper starts it so every such test waits
 * the same bounded way and leaves no process or directory behind.
 *
 * etcd runs with a 1 s progress-notify interval so watch tests need not
 * wait for etcd's 10-minute default. Its output goes to <dir>/etcd.log;
 * tests keep their other files (key rings: etcd_fx_world) there too;
 * setting LK_ETCD_TEST_KEEP keeps the directory after etcd_fx_stop.
 */
#ifndef LK_TESTS_ETCD_FIXTURE_H
#define LK_TESTS_ETCD_FIXTURE_H

#include <stddef.h>
#include <sys/types.h>

/* How long etcd may take to answer after it is spawned. */
#define ETCD_FX_START_MS 30000

typedef struct {
  char dir[512]; /* temp root: data/ and etcd.log inside */
  int client_port;
  int peer_port;
  pid_t pid;   /* 0 when not running */
  char ep[64]; /* "127.0.0.1:<client_port>" */
  int worlds;  /* etcd_fx_world names handed out */
} etcd_fx;

/* Returns a loopback TCP port that was free a moment ago, or -1. */
int etcd_fx_free_port(void);

/* Makes f's temp dir, picks free ports and starts etcd (a few attempts, in
 * case a port is taken meanwhile); 0 once it answers, else -1 with its
 * log printed to stderr. */
int etcd_fx_start(etcd_fx *f);

/* Spawns etcd again on f's ports and data dir (after etcd_fx_kill); 0 once
 * it answers, else -1. */
int etcd_fx_spawn(etcd_fx *f);

/* Sends sig to etcd and waits for it to exit (SIGKILL after 15 s). */
void etcd_fx_kill(etcd_fx *f, int sig);

/* Prints the tail of f's etcd.log to stderr. */
void etcd_fx_print_log(const etcd_fx *f);

/* Names the next test world of f, so each test has its own: its etcd
 * prefix "/<label>-<n>/" in prefix and its key ring file
 * "<f->dir>/ring-<n>" in ring (removed with f's temp dir). */
void etcd_fx_world(etcd_fx *f, const char *label, char *prefix,
                   size_t prefix_cap, char *ring, size_t ring_cap);

/* Stops etcd (SIGTERM) and removes f's temp dir unless LK_ETCD_TEST_KEEP
 * is set. */
void etcd_fx_stop(etcd_fx *f);

#endif
