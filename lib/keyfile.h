/*
 * keyfile.h - owner-only key files on disk: read with their mode checked,
 * written atomically (DESIGN.md §6).
 *
 * Why: the node key (lib/seal) and the control plane's key ring
 * (lib/keyring) are the secrets that protect every sealed value, so their
 * files share one set of rules, kept here once: a key file is a regular
 * file no one but its owner may access; it is read whole into guarded
 * memory with a hard size cap; it is never half-written, because new
 * content goes to a fresh 0600 temp file beside it that is fsynced before
 * it takes the file's name, and the directory is fsynced after, so the
 * name survives a crash.
 *
 * Every function takes `what`, the file's name for people ("node key",
 * "key ring"), and puts it with the path in each error message.
 */
#ifndef LK_KEYFILE_H
#define LK_KEYFILE_H

#include <stddef.h>

#include "lib/secret.h"
#include "lib/status.h"

/* Reads the whole file at path into guarded memory (*image holds exactly
 * its bytes). LK_NOT_FOUND when path does not exist (or is a dangling
 * symlink); LK_FAILED_PRECONDITION when it is accessible by group or others
 * ("run chmod 600 <path>") or cannot be opened or read; LK_INVALID_ARGUMENT
 * naming the path when it is not a regular file or is larger than
 * max_bytes. */
lk_status lk_keyfile_read(const char *path, const char *what, size_t max_bytes,
                          lk_secret **image, lk_err *err) LK_MUST_CHECK;

/* Writes text to a fresh 0600 temp file beside path
 * ("<path>.tmp-<host>-<pid>-<8 hex>"), fsyncs it and gives it
 * the name path, then fsyncs the directory. With replace 0 the name is
 * taken with link(), which never replaces an existing file: when path
 * exists nothing is changed and *raced is set to 1. With replace 1 the temp
 * file is rename()d over path, so readers see the old file or the new one,
 * never a mix, and then read back: a file that does not hold text (a
 * writer ignoring the lock file) is LK_FAILED_PRECONDITION.
 * LK_FAILED_PRECONDITION when any step fails; no temp file is left
 * behind. */
lk_status lk_keyfile_write(const char *path, const char *what,
                           const lk_secret *text, int replace, int *raced,
                           lk_err *err) LK_MUST_CHECK;

/* Gives the key file at from the name to, replacing what was there in one
 * rename() (readers see the old file or the new one, never neither), then
 * fsyncs the directory so the change survives a crash. Both paths must be
 * in the same directory. LK_NOT_FOUND when from does not exist;
 * LK_FAILED_PRECONDITION when a step fails. */
lk_status lk_keyfile_promote(const char *from, const char *to, const char *what,
                             lk_err *err) LK_MUST_CHECK;

/* Removes the temp files lk_keyfile_write left beside path when the
 * process writing them died (SIGKILL between creating and unlinking one):
 * names "<path>.tmp-<host>-<pid>-<hex>" (or, older, "<path>.tmp-<pid>-
 * <hex>") made on this host whose pid is no live process. A live
 * writer's temp file, one of this process, and one made on another host
 * (sharing the directory over NFS) are kept. Returns how many were
 * removed; failures are ignored (the next call tries again). */
int lk_keyfile_remove_stale_temps(const char *path);

/* lk_keyfile_remove_stale_temps, except that temps named with this
 * process's own pid are stale too: a restarted container's process is
 * often PID 1 again, like the one that was killed. Call it only at start,
 * before this process writes path. */
int lk_keyfile_remove_stale_temps_at_start(const char *path);

/* Appended to a key file's path to name its lock file. */
#define LK_KEYFILE_LOCK_SUFFIX ".lock"

/* Takes an exclusive lock for the key file at path, blocking until it is
 * free, so read-modify-write cycles of it run one at a time across
 * threads, processes and (on NFS) hosts: an open-file-description fcntl
 * write lock (F_OFD_SETLKW) on "<path>.lock", created 0600 and opened
 * read-write. *lock_fd receives the lock for lk_keyfile_unlock.
 * LK_FAILED_PRECONDITION when the lock file cannot be opened or locked. */
lk_status lk_keyfile_lock(const char *path, const char *what, int *lock_fd,
                          lk_err *err) LK_MUST_CHECK;

/* Releases a lock taken by lk_keyfile_lock; a negative fd is a no-op. */
void lk_keyfile_unlock(int lock_fd);

#endif
