/*
 * node_keys_test.c - proves sidecar/node_keys on real key files: without
 * PATH.next nothing rotates; --rotate-node-key (and lk_node_keys_rotate,
 * SIGHUP) creates PATH.next 0600 once and presents it; during a rotation a
 * value sealed to either key opens; the replica reporting a commit sealed
 * to the next key renames PATH.next over PATH and drops the old key, while
 * a commit on the old key changes nothing; a sidecar killed mid-rotation
 * continues it at the next open with or without the flag, and finishes at
 * open when the snapshot had already landed; a failed rename keeps both
 * keys serving; temp files of killed key writers (a second name of a
 * retired key) are removed, a live writer's kept; standalone mode ignores
 * PATH.next and refuses to rotate; lk_node_keys_unseal_from_key opens
 * with the named key only, and refuses a key not held; a
 * malformed PATH.next is refused; and calls racing the commit and the
 * finish always open their value.
 */
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "lib/seal.h"
#include "lib/secret.h"
#include "sidecar/node_keys.h"

#define SECRET "tok-0123456789abcdef"

typedef struct {
  char dir[1024];
  char path[1100];
  char next_path[1100];
  lk_node_keys *k;
} fx;

/* A value sealed to one node key, as the control plane sends it. */
typedef struct {
  unsigned char eph[32];
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct;
  size_t ct_len;
} sealed;

static int dir_counter;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/node-keys-%d-%d",
           tmp != NULL ? tmp : "/tmp", (int)getpid(), dir_counter++);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  snprintf(f->path, sizeof(f->path), "%s/node.key", f->dir);
  snprintf(f->next_path, sizeof(f->next_path), "%s/node.key.next", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  lk_node_keys_destroy(f->k);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* ---- helpers ------------------------------------------------------------ */

/* Opens f->k (replacing one already open, as a restart would). */
static lk_status open_keys(fx *f, int replica, int rotate,
                           const unsigned char *sealed_pk, lk_err *err) {
  lk_node_keys_destroy(f->k);
  f->k = NULL;
  lk_node_keys_config cfg = {f->path, replica, rotate, sealed_pk};
  return lk_node_keys_open(&cfg, &f->k, err);
}

static void open_ok(fx *f, int replica, int rotate,
                    const unsigned char *sealed_pk) {
  lk_err err;
  if (open_keys(f, replica, rotate, sealed_pk, &err) != LK_OK)
    fail_msg("open: %s", err.msg);
}

/* Reads the public key of the key file at path; 0 when it is absent. */
static int file_pk(const char *path, unsigned char pk[32]) {
  lk_seal_key *key = NULL;
  lk_err err;
  lk_status st = lk_seal_key_load(path, &key, &err);
  if (st == LK_NOT_FOUND)
    return 0;
  if (st != LK_OK)
    fail_msg("load %s: %s", path, err.msg);
  assert_int_equal(lk_seal_key_public(key, pk, &err), LK_OK);
  lk_seal_key_destroy(key);
  return 1;
}

static void presented(fx *f, unsigned char pk[32]) {
  lk_node_keys_presented(f->k, pk);
}

static void seal_to(const unsigned char pk[32], sealed *v) {
  lk_err err;
  if (lk_seal_for_node(pk, "c1", "token", (const unsigned char *)SECRET,
                       strlen(SECRET), v->eph, v->nonce, &v->ct, &v->ct_len,
                       &err) != LK_OK)
    fail_msg("seal: %s", err.msg);
}

static void sealed_free(sealed *v) {
  free(v->ct);
  v->ct = NULL;
}

/* Unseals v through the node keys; on LK_OK checks the plaintext. */
static lk_status open_value(lk_node_keys *k, const sealed *v, lk_err *err) {
  lk_secret *pt = NULL;
  lk_status st = lk_node_keys_unseal_from_node(
      k, "c1", "token", v->eph, sizeof(v->eph), v->nonce, sizeof(v->nonce),
      v->ct, v->ct_len, &pt, err);
  if (st == LK_OK) {
    if (lk_secret_len(pt) != strlen(SECRET) ||
        memcmp(lk_secret_data(pt), SECRET, strlen(SECRET)) != 0) {
      st = LK_INTERNAL;
    }
  }
  lk_secret_free(pt);
  return st;
}

static void expect_opens(fx *f, const unsigned char pk[32]) {
  sealed v;
  lk_err err;
  seal_to(pk, &v);
  lk_status st = open_value(f->k, &v, &err);
  sealed_free(&v);
  if (st != LK_OK)
    fail_msg("value did not open: %s", err.msg);
}

static void expect_fails(fx *f, const unsigned char pk[32]) {
  sealed v;
  lk_err err;
  seal_to(pk, &v);
  assert_int_equal(open_value(f->k, &v, &err), LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, "cannot be unsealed with this node key"));
  sealed_free(&v);
}

static int exists(const char *path) {
  struct stat sb;
  return lstat(path, &sb) == 0;
}

/* Starts a rotation through a first open with the flag; returns the old
 * and next public keys. */
static void start_rotation(fx *f, unsigned char old_pk[32],
                           unsigned char next_pk[32]) {
  open_ok(f, 1, 1, NULL);
  assert_true(file_pk(f->path, old_pk));
  assert_true(file_pk(f->next_path, next_pk));
}

/* ---- tests -------------------------------------------------------------- */

static void no_next_file_presents_the_key_file(void **state) {
  fx *f = *state;
  unsigned char file[32], shown[32];
  open_ok(f, 1, 0, NULL);
  assert_true(file_pk(f->path, file));
  presented(f, shown);
  assert_memory_equal(shown, file, 32);
  assert_false(lk_node_keys_rotating(f->k));
  assert_false(exists(f->next_path));
  assert_null(lk_node_keys_standalone_key(f->k));
  expect_opens(f, file);
}

static void rotate_creates_next_0600_and_presents_it(void **state) {
  fx *f = *state;
  unsigned char before[32], old_pk[32], next_pk[32], shown[32];
  open_ok(f, 1, 0, NULL);
  assert_true(file_pk(f->path, before));
  start_rotation(f, old_pk, next_pk);
  assert_memory_equal(old_pk, before, 32); /* the key file is untouched */
  assert_memory_not_equal(next_pk, old_pk, 32);
  struct stat sb;
  assert_int_equal(stat(f->next_path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  presented(f, shown);
  assert_memory_equal(shown, next_pk, 32);
  assert_true(lk_node_keys_rotating(f->k));
}

static void value_sealed_to_either_key_opens_during_rotation(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], stranger[32], sk[32];
  start_rotation(f, old_pk, next_pk);
  open_ok(f, 1, 0, old_pk); /* the replica is on the old key */
  expect_opens(f, old_pk);
  expect_opens(f, next_pk); /* committed, not yet reported */
  crypto_box_keypair(stranger, sk);
  expect_fails(f, stranger);
}

static void replica_sealed_to_next_finishes_the_rotation(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], file[32], shown[32];
  start_rotation(f, old_pk, next_pk);
  uint64_t generation = lk_node_keys_generation(f->k);
  lk_node_keys_replica_sealed(f->k, next_pk);
  assert_false(lk_node_keys_rotating(f->k));
  assert_int_equal(lk_node_keys_generation(f->k), generation + 1);
  assert_false(exists(f->next_path));
  assert_true(file_pk(f->path, file));
  assert_memory_equal(file, next_pk, 32);
  struct stat sb;
  assert_int_equal(stat(f->path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  presented(f, shown);
  assert_memory_equal(shown, next_pk, 32);
  expect_opens(f, next_pk);
  /* The old key is gone from memory: nothing sealed to it opens. */
  expect_fails(f, old_pk);
}

static void killed_writers_temp_files_are_removed(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32];
  char dead[1200], live[1200], other[1200];
  start_rotation(f, old_pk, next_pk);
  /* A temp file whose writer is dead (pid 2^22 + 1 is above the largest
   * pid Linux allows), one of this live process, and a file that only
   * looks like one. */
  snprintf(dead, sizeof(dead), "%s.tmp-4194305-0badc0de", f->path);
  snprintf(live, sizeof(live), "%s.tmp-%d-0badc0de", f->next_path,
           (int)getpid());
  snprintf(other, sizeof(other), "%s.tmp-4194305-notahex!", f->path);
  const char *made[] = {dead, live, other};
  for (int i = 0; i < 3; i++) {
    FILE *fp = fopen(made[i], "w");
    assert_non_null(fp);
    fclose(fp);
  }
  lk_node_keys_replica_sealed(f->k, next_pk);
  assert_false(lk_node_keys_rotating(f->k));
  assert_false(exists(dead));
  assert_true(exists(live));
  assert_true(exists(other));
}

static void replica_sealed_to_the_old_key_changes_nothing(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], file[32];
  start_rotation(f, old_pk, next_pk);
  uint64_t generation = lk_node_keys_generation(f->k);
  lk_node_keys_replica_sealed(f->k, old_pk);
  assert_true(lk_node_keys_rotating(f->k));
  assert_int_equal(lk_node_keys_generation(f->k), generation);
  assert_true(exists(f->next_path));
  assert_true(file_pk(f->path, file));
  assert_memory_equal(file, old_pk, 32);
  expect_opens(f, old_pk);
}

static void restart_without_the_flag_continues_the_rotation(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], shown[32];
  start_rotation(f, old_pk, next_pk);
  /* Killed before any snapshot: the replica is still on the old key. */
  open_ok(f, 1, 0, old_pk);
  assert_true(lk_node_keys_rotating(f->k));
  presented(f, shown);
  assert_memory_equal(shown, next_pk, 32); /* the same next key, not a new */
  expect_opens(f, old_pk);
  lk_node_keys_replica_sealed(f->k, next_pk);
  assert_false(lk_node_keys_rotating(f->k));
  assert_false(exists(f->next_path));
}

static void restart_after_the_snapshot_finishes_at_open(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], file[32], shown[32];
  start_rotation(f, old_pk, next_pk);
  /* Killed after the snapshot's commit, before the rename. */
  open_ok(f, 1, 1, next_pk);
  assert_false(lk_node_keys_rotating(f->k));
  assert_false(exists(f->next_path));
  assert_true(file_pk(f->path, file));
  assert_memory_equal(file, next_pk, 32);
  presented(f, shown);
  assert_memory_equal(shown, next_pk, 32);
  expect_opens(f, next_pk);
  expect_fails(f, old_pk);
}

static void rotate_flag_keeps_an_existing_next(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], again[32];
  start_rotation(f, old_pk, next_pk);
  open_ok(f, 1, 1, old_pk);
  assert_true(file_pk(f->next_path, again));
  assert_memory_equal(again, next_pk, 32);
}

static void runtime_rotation_starts_once(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], shown[32], again[32];
  lk_err err;
  open_ok(f, 1, 0, NULL);
  assert_true(file_pk(f->path, old_pk));
  assert_int_equal(lk_node_keys_rotate(f->k, &err), LK_OK);
  assert_true(lk_node_keys_rotating(f->k));
  assert_true(file_pk(f->next_path, next_pk));
  presented(f, shown);
  assert_memory_equal(shown, next_pk, 32);
  assert_int_equal(lk_node_keys_rotate(f->k, &err), LK_OK);
  assert_true(file_pk(f->next_path, again));
  assert_memory_equal(again, next_pk, 32);
  expect_opens(f, old_pk);
  lk_node_keys_replica_sealed(f->k, next_pk);
  assert_false(lk_node_keys_rotating(f->k));
  assert_true(file_pk(f->path, shown));
  assert_memory_equal(shown, next_pk, 32);
}

static void failed_rename_keeps_serving_with_both_keys(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], file[32];
  start_rotation(f, old_pk, next_pk);
  assert_int_equal(unlink(f->next_path), 0); /* the rename will fail */
  lk_node_keys_replica_sealed(f->k, next_pk);
  assert_true(lk_node_keys_rotating(f->k));
  assert_true(file_pk(f->path, file));
  assert_memory_equal(file, old_pk, 32);
  expect_opens(f, next_pk);
  expect_opens(f, old_pk);
}

/* Unseals v with the key whose public key is pk only; on LK_OK checks the
 * plaintext. */
static lk_status open_value_from_key(lk_node_keys *k,
                                     const unsigned char pk[32],
                                     const sealed *v, lk_err *err) {
  lk_secret *pt = NULL;
  lk_status st = lk_node_keys_unseal_from_key(
      k, pk, "c1", "token", v->eph, sizeof(v->eph), v->nonce, sizeof(v->nonce),
      v->ct, v->ct_len, &pt, err);
  if (st == LK_OK) {
    if (lk_secret_len(pt) != strlen(SECRET) ||
        memcmp(lk_secret_data(pt), SECRET, strlen(SECRET)) != 0) {
      st = LK_INTERNAL;
    }
  }
  lk_secret_free(pt);
  return st;
}

static void unseal_from_key_tries_only_the_named_key(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], stranger[32], sk[32];
  sealed to_old, to_next;
  lk_err err;
  start_rotation(f, old_pk, next_pk);
  open_ok(f, 1, 0, old_pk); /* the replica is on the old key */
  seal_to(old_pk, &to_old);
  seal_to(next_pk, &to_next);
  assert_int_equal(open_value_from_key(f->k, next_pk, &to_next, &err), LK_OK);
  assert_int_equal(open_value_from_key(f->k, old_pk, &to_old, &err), LK_OK);
  /* Where the fallback of lk_node_keys_unseal_from_node would open it,
   * naming the other key does not. */
  assert_int_equal(open_value_from_key(f->k, next_pk, &to_old, &err),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, "cannot be unsealed with this node key"));
  assert_int_equal(open_value_from_key(f->k, old_pk, &to_next, &err),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, "cannot be unsealed with this node key"));
  /* A key this sidecar does not hold. */
  crypto_box_keypair(stranger, sk);
  assert_int_equal(open_value_from_key(f->k, stranger, &to_next, &err),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, "holds no node key"));
  /* After the rotation the old key is no longer held. */
  lk_node_keys_replica_sealed(f->k, next_pk);
  assert_int_equal(open_value_from_key(f->k, next_pk, &to_next, &err), LK_OK);
  assert_int_equal(open_value_from_key(f->k, old_pk, &to_old, &err),
                   LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, "holds no node key"));
  sealed_free(&to_old);
  sealed_free(&to_next);
}

static void standalone_ignores_next_and_refuses_to_rotate(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32], shown[32];
  lk_err err;
  start_rotation(f, old_pk, next_pk);
  open_ok(f, 0, 0, NULL);
  assert_false(lk_node_keys_rotating(f->k));
  presented(f, shown);
  assert_memory_equal(shown, old_pk, 32);
  assert_non_null(lk_node_keys_standalone_key(f->k));
  assert_int_equal(lk_node_keys_rotate(f->k, &err), LK_FAILED_PRECONDITION);
  assert_non_null(strstr(err.msg, "replica mode only"));
  lk_node_keys_replica_sealed(f->k, next_pk);
  assert_true(exists(f->next_path));
  assert_int_equal(open_keys(f, 0, 1, NULL, &err), LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "--rotate-node-key applies to replica"));
  assert_null(f->k);
}

static void malformed_next_is_refused(void **state) {
  fx *f = *state;
  lk_err err;
  open_ok(f, 1, 0, NULL);
  FILE *fp = fopen(f->next_path, "w");
  assert_non_null(fp);
  fputs("not a key\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->next_path, 0600), 0);
  assert_int_equal(open_keys(f, 1, 0, NULL, &err), LK_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "node.key.next is malformed"));
  assert_null(f->k);
}

/* ---- calls racing the commit and the finish ------------------------------ */

typedef struct {
  lk_node_keys *k;
  /* The replica's record as a call reads it: old-sealed until the commit,
   * new-sealed after. */
  _Atomic(const sealed *) record;
  _Atomic int stop;
  _Atomic long opened;
  _Atomic long failed;
} race;

static void *caller(void *arg) {
  race *r = arg;
  while (!atomic_load(&r->stop)) {
    lk_err err;
    if (open_value(r->k, atomic_load(&r->record), &err) == LK_OK) {
      atomic_fetch_add(&r->opened, 1);
    } else {
      atomic_fetch_add(&r->failed, 1);
    }
  }
  return NULL;
}

/* Waits until the callers have made `more` further attempts. */
static void wait_attempts(race *r, long more) {
  long until = atomic_load(&r->opened) + atomic_load(&r->failed) + more;
  while (atomic_load(&r->opened) + atomic_load(&r->failed) < until) {
    usleep(1000);
  }
}

static void calls_racing_the_finish_always_open(void **state) {
  fx *f = *state;
  unsigned char old_pk[32], next_pk[32];
  sealed old_v, new_v;
  pthread_t threads[4];
  start_rotation(f, old_pk, next_pk);
  open_ok(f, 1, 0, old_pk);
  seal_to(old_pk, &old_v);
  seal_to(next_pk, &new_v);
  race r = {.k = f->k};
  atomic_store(&r.record, &old_v);
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&threads[i], NULL, caller, &r), 0);
  wait_attempts(&r, 200);
  /* The commit lands, then the keys hear of it: calls in between read a
   * record sealed to the next key while the old one is still first. */
  atomic_store(&r.record, &new_v);
  wait_attempts(&r, 200);
  lk_node_keys_replica_sealed(f->k, next_pk);
  wait_attempts(&r, 200);
  atomic_store(&r.stop, 1);
  for (int i = 0; i < 4; i++)
    pthread_join(threads[i], NULL);
  assert_int_equal(atomic_load(&r.failed), 0);
  assert_false(lk_node_keys_rotating(f->k));
  sealed_free(&old_v);
  sealed_free(&new_v);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  if (lk_secret_init() != LK_OK)
    return 1;
  const struct CMUnitTest tests[] = {
      T(no_next_file_presents_the_key_file),
      T(rotate_creates_next_0600_and_presents_it),
      T(value_sealed_to_either_key_opens_during_rotation),
      T(replica_sealed_to_next_finishes_the_rotation),
      T(killed_writers_temp_files_are_removed),
      T(replica_sealed_to_the_old_key_changes_nothing),
      T(restart_without_the_flag_continues_the_rotation),
      T(restart_after_the_snapshot_finishes_at_open),
      T(rotate_flag_keeps_an_existing_next),
      T(runtime_rotation_starts_once),
      T(failed_rename_keeps_serving_with_both_keys),
      T(unseal_from_key_tries_only_the_named_key),
      T(standalone_ignores_next_and_refuses_to_rotate),
      T(malformed_next_is_refused),
      T(calls_racing_the_finish_always_open),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
