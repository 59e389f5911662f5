/*
 * heap.h - glibc malloc policy for a daemon with an RSS budget: large
 * blocks in mappings of their own, and free heap given back to the kernel
 * after a burst.
 *
 * Why (docs/PERFORMANCE.md, "Memory"): latchkeyd has a 30 MB RSS target.
 * glibc keeps memory freed inside an arena resident for that arena's later
 * allocations, and gives each thread that finds the arenas busy an arena
 * of its own (up to 8 per CPU); a burst of calls (256 Admin binds in
 * flight, a replica snapshot) left megabytes of free heap resident long
 * after the burst, most of it in arenas no thread used again.
 *
 * lk_heap_configure fixes the mmap threshold; lk_heap_trimmer watches how
 * much resident anonymous memory exceeds what malloc has in use and, once
 * that excess has grown by its slack since the last trim, calls
 * malloc_trim(0), which returns the free pages inside every arena (not
 * only the top of the main heap). Nothing here frees or moves memory in
 * use; a trimmed page is zero-filled on its next use. The number of arenas
 * is left to glibc: capping it at two kept no less memory once the trimmer
 * ran, and cost the call path about 7 % more CPU in arena-lock waits.
 */
#ifndef LK_HEAP_H
#define LK_HEAP_H

#include <stddef.h>

#include "lib/status.h"

/* Sets glibc's malloc policy for this process, a fixed 128 KiB mmap
 * threshold (which also fixes the trim threshold at 128 KiB), before any
 * thread starts; returns 1 if malloc took it, 0 if this process's malloc
 * has no such knob (AddressSanitizer's). */
int lk_heap_configure(void);

typedef struct lk_heap_trimmer lk_heap_trimmer;

/* Creates a trimmer that trims once the free-but-resident heap has grown
 * by more than slack_bytes since its last trim (or since creation). */
lk_status lk_heap_trimmer_new(size_t slack_bytes, lk_heap_trimmer **out,
                              lk_err *err) LK_MUST_CHECK;

/* Frees a trimmer; NULL is fine. */
void lk_heap_trimmer_destroy(lk_heap_trimmer *t);

/* Trims the heap if its free-but-resident part has grown by more than the
 * slack since the last trim, and returns 1 if it trimmed, 0 if not (also
 * when another thread is trimming right now); safe from any thread. */
int lk_heap_trim_if_slack(lk_heap_trimmer *t);

/* The process's resident anonymous memory less what malloc has in use
 * inside its arenas, in bytes: free heap still resident, plus stacks, the
 * resident pages of mapped blocks and other anonymous mappings (exposed
 * for the trimmer's tests). */
size_t lk_heap_resident_slack(void);

#endif
