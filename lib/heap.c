/*
 * heap.c - glibc malloc policy and the burst trimmer (see heap.h).
 *
 * Why it is shaped this way:
 *  - The fixed mmap threshold is glibc's own starting value (128 KiB).
 *    Left dynamic, glibc raises it to the size of the largest mapped block
 *    ever freed, after which RocksDB's 128 KiB memtable blocks and other
 *    large buffers land inside the arenas and, once freed, stay resident:
 *    with it, 100,000 bindings loaded left 29 MB resident instead of 32,
 *    and the load peaked at 33 MB instead of 37.
 *  - The trimmer measures instead of guessing: resident anonymous memory
 *    (/proc/self/statm, resident less file-backed) less what malloc has in
 *    use inside its arenas (mallinfo2's uordblks). Stacks, libsodium's
 *    guarded pages, relocated library data and the resident pages of
 *    mapped blocks are in that difference too, but they move slowly, so
 *    the trimmer compares the difference with the lowest value seen since
 *    its last trim and trims only when it has grown by the slack.
 *  - Mapped blocks are left out of "in use" on purpose. mallinfo2 counts
 *    their whole mapped size (hblkhd), resident or not, and a block freed
 *    is unmapped at once, so it is never free-but-resident. Counting them
 *    made the difference negative, hence 0, whenever untouched mappings
 *    outweighed the free heap (lk_metrics' zeroed tables alone are 4.6 MB,
 *    mostly never touched): after a bulk load the trimmer then saw 0.3 MB
 *    of slack where malloc_trim still returned 1.1 to 1.6 MB. Left out,
 *    a mapped block that fills up (a RocksDB memtable) can cost one
 *    trim that returns little, at most once per slack of growth. A check
 *    is one small /proc read and one mallinfo2 walk; malloc_trim runs only
 *    after a burst, so a steady load does not keep returning and
 *    refaulting pages.
 *  - trylock: a thread that finds another one trimming just goes on.
 */
#include "lib/heap.h"

#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HEAP_MMAP_THRESHOLD (128 * 1024)

struct lk_heap_trimmer {
  pthread_mutex_t mu;
  size_t slack;    /* trim once the free heap has grown by more than this */
  size_t baseline; /* lowest lk_heap_resident_slack since the last trim */
};

int lk_heap_configure(void) {
  return mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1;
}

/* Resident anonymous bytes of this process, or 0 if statm is unreadable. */
static size_t resident_anon_bytes(void) {
  char buf[128];
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return 0;
  }
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) {
    return 0;
  }
  buf[n] = '\0';
  size_t size = 0, resident = 0, shared = 0;
  if (sscanf(buf, "%zu %zu %zu", &size, &resident, &shared) != 3 ||
      shared > resident) {
    return 0;
  }
  long page = sysconf(_SC_PAGESIZE);
  return (resident - shared) * (size_t)(page > 0 ? page : 4096);
}

size_t lk_heap_resident_slack(void) {
  size_t anon = resident_anon_bytes();
  struct mallinfo2 mi = mallinfo2();
  /* Arena bytes only: see the top of this file for mapped blocks. */
  size_t in_use = mi.uordblks;
  return anon > in_use ? anon - in_use : 0;
}

lk_status lk_heap_trimmer_new(size_t slack_bytes, lk_heap_trimmer **out,
                              lk_err *err) {
  *out = NULL;
  lk_heap_trimmer *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  int rc = pthread_mutex_init(&t->mu, NULL);
  if (rc != 0) {
    free(t);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "cannot create the heap trimmer's mutex: %s", strerror(rc));
  }
  t->slack = slack_bytes;
  t->baseline = lk_heap_resident_slack();
  *out = t;
  return LK_OK;
}

void lk_heap_trimmer_destroy(lk_heap_trimmer *t) {
  if (t == NULL) {
    return;
  }
  pthread_mutex_destroy(&t->mu);
  free(t);
}

int lk_heap_trim_if_slack(lk_heap_trimmer *t) {
  if (pthread_mutex_trylock(&t->mu) != 0) {
    return 0;
  }
  int trimmed = 0;
  size_t now = lk_heap_resident_slack();
  if (now < t->baseline) {
    t->baseline = now;
  } else if (now - t->baseline > t->slack) {
    malloc_trim(0);
    t->baseline = lk_heap_resident_slack();
    trimmed = 1;
  }
  pthread_mutex_unlock(&t->mu);
  return trimmed;
}
