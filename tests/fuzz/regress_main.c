/*
 * regress_main.c - replays a fuzz target's seed corpus as a regression test.
 *
 * Why: every tests/fuzz target is linked twice, once with libFuzzer (to
 * search for new inputs) and once with this main, so that the checked-in
 * corpus, including every input that once crashed, runs on each
 * `bazel test //...` under gcc and under --config=asan, without clang.
 *
 * Usage: regress_main PATH... where each PATH is a corpus directory (its
 * regular files, recursively, in name order) or a single input file. Each
 * input is copied into a heap buffer of exactly its size, as libFuzzer
 * does, so ASan sees reads past its end. The run fails when an input
 * cannot be read or when no input ran at all (an empty or mistyped corpus
 * must not pass silently); a target that breaks an invariant traps.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz_target.h"

/* Seed files are small; anything larger is a mistake in the corpus. */
#define REGRESS_MAX_INPUT ((size_t)16 * 1024 * 1024)
#define REGRESS_MAX_DEPTH 8

typedef struct {
  size_t ran;
  size_t failed;
} tally;

/* Reads the whole file at path and runs the target on it. */
static void run_file(const char *path, tally *t) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf = NULL;
  size_t len = 0;
  struct stat sb;

  if (f == NULL || fstat(fileno(f), &sb) != 0) {
    fprintf(stderr, "regress: cannot open %s: %s\n", path, strerror(errno));
    t->failed++;
    goto done;
  }
  if ((size_t)sb.st_size > REGRESS_MAX_INPUT) {
    fprintf(stderr, "regress: %s is over %zu bytes\n", path, REGRESS_MAX_INPUT);
    t->failed++;
    goto done;
  }
  len = (size_t)sb.st_size;
  /* Exactly len bytes (malloc(0) may return NULL: use one spare byte then,
   * and still hand the target a length of 0). */
  buf = malloc(len > 0 ? len : 1);
  if (buf == NULL || (len > 0 && fread(buf, 1, len, f) != len)) {
    fprintf(stderr, "regress: cannot read %s\n", path);
    t->failed++;
    goto done;
  }
  fprintf(stderr, "regress: %s (%zu bytes)\n", path, len);
  (void)LLVMFuzzerTestOneInput(buf, len);
  t->ran++;

done:
  free(buf);
  if (f != NULL) {
    fclose(f);
  }
}

/* Keeps every directory entry except "." and "..". */
static int not_dots(const struct dirent *d) {
  return strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0;
}

/* Runs path: a file directly, a directory's entries in name order. */
static void run_path(const char *path, int depth, tally *t) {
  struct stat sb;
  struct dirent **names = NULL;
  int n;

  if (stat(path, &sb) != 0) {
    fprintf(stderr, "regress: cannot stat %s: %s\n", path, strerror(errno));
    t->failed++;
    return;
  }
  if (!S_ISDIR(sb.st_mode)) {
    run_file(path, t);
    return;
  }
  if (depth >= REGRESS_MAX_DEPTH) {
    fprintf(stderr, "regress: %s is nested too deep\n", path);
    t->failed++;
    return;
  }
  n = scandir(path, &names, not_dots, alphasort);
  if (n < 0) {
    fprintf(stderr, "regress: cannot list %s: %s\n", path, strerror(errno));
    t->failed++;
    return;
  }
  for (int i = 0; i < n; i++) {
    size_t need = strlen(path) + strlen(names[i]->d_name) + 2;
    char *child = malloc(need);
    if (child == NULL) {
      t->failed++;
    } else {
      snprintf(child, need, "%s/%s", path, names[i]->d_name);
      run_path(child, depth + 1, t);
      free(child);
    }
    free(names[i]);
  }
  free(names);
}

int main(int argc, char **argv) {
  tally t = {0, 0};

  if (argc < 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i++) {
    run_path(argv[i], 0, &t);
  }
  printf("regress: ran %zu inputs, %zu unreadable\n", t.ran, t.failed);
  if (t.ran == 0) {
    fprintf(stderr, "regress: no input ran; is the corpus path right?\n");
    return 1;
  }
  return t.failed == 0 ? 0 : 1;
}
