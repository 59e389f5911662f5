/*
 * keyfile.c - owner-only key files: checked reads, atomic writes (see
 * keyfile.h).
 *
 * Why this shape: a key file must never be accepted when other users could
 * read it, never be half-written and never appear under its name before
 * its bytes are durable. Reads go straight into guarded memory, one byte
 * past the cap so "exactly full" and "too big" differ. Writes use a
 * uniquely named temp file (O_EXCL, O_NOFOLLOW, 0600); link() gives it the
 * name without replacing a file another process made first, rename()
 * replaces it atomically when that is the point. The temp file is always
 * unlinked on the way out, so a failure leaves the directory as it was.
 *
 * Read-modify-write cycles lock "<path>.lock", a file of their own opened
 * read-write, with an open-file-description fcntl lock: NFS turns fcntl
 * locks into server-side byte-range locks (flock may stay host-local, and
 * NFS's emulation of it needs a writable descriptor), and OFD locks also
 * exclude threads of one process, which classic fcntl locks do not.
 */
#include "lib/keyfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

/* Longest host name part of a temp file name, NUL included. */
#define KEYFILE_HOST_BYTES 65

/* Writes this host's name into host for temp file names: letters, digits
 * and '.' kept, anything else '_' ("_" when it has none), so it never
 * holds the '-' that ends it or a '/'. */
static void keyfile_host(char host[KEYFILE_HOST_BYTES]) {
  char raw[256];
  size_t n = 0;
  if (gethostname(raw, sizeof(raw)) != 0) {
    raw[0] = '\0';
  }
  raw[sizeof(raw) - 1] = '\0';
  for (; raw[n] != '\0' && n < KEYFILE_HOST_BYTES - 1; n++) {
    char ch = raw[n];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             (ch >= '0' && ch <= '9') || ch == '.';
    host[n] = ok ? ch : '_';
  }
  if (n == 0) {
    host[n++] = '_';
  }
  host[n] = '\0';
}

/* Writes the directory holding path into dir (PATH_MAX bytes). */
static void keyfile_dir_of(const char *path, char dir[PATH_MAX]) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    snprintf(dir, PATH_MAX, ".");
  } else if (slash == path) {
    snprintf(dir, PATH_MAX, "/");
  } else {
    snprintf(dir, PATH_MAX, "%.*s", (int)(slash - path), path);
  }
}

/* fsyncs the directory holding path so a new name in it survives a crash. */
static int keyfile_sync_dir(const char *path) {
  char dir[PATH_MAX];
  keyfile_dir_of(path, dir);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return -1;
  }
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* Writes all n bytes at p to fd; returns 0 or -1 with errno set. */
static int keyfile_write_all(int fd, const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t put = write(fd, p, n);
    if (put < 0 && errno == EINTR) {
      continue;
    }
    if (put < 0) {
      return -1;
    }
    p += put;
    n -= (size_t)put;
  }
  return 0;
}

/* Checks the open file's type and mode and reads it into guarded memory. */
static lk_status keyfile_read_fd(int fd, const char *path, const char *what,
                                 size_t max_bytes, lk_secret **image,
                                 lk_err *err) {
  lk_status st = LK_OK;
  struct stat sb;
  size_t total = 0;
  lk_secret *buf = NULL;
  if (fstat(fd, &sb) != 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot stat %s %s: %s", what,
                 path, strerror(errno));
    goto done;
  }
  if (!S_ISREG(sb.st_mode)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "%s %s is not a regular file", what,
                 path);
    goto done;
  }
  if ((sb.st_mode & 077) != 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "%s %s is accessible by group or others (mode %03o): run "
                 "chmod 600 %s",
                 what, path, (unsigned)(sb.st_mode & 0777), path);
    goto done;
  }
  /* One byte more than the limit, to tell "exactly full" from "too big". */
  buf = lk_secret_new(max_bytes + 1);
  if (buf == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory reading %s %s", what, path);
    goto done;
  }
  while (total <= max_bytes) {
    ssize_t got = read(fd, lk_secret_mut(buf) + total, max_bytes + 1 - total);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got < 0) {
      st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot read %s %s: %s", what,
                   path, strerror(errno));
      goto done;
    }
    if (got == 0) {
      break;
    }
    total += (size_t)got;
  }
  if (total > max_bytes) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "%s file %s is malformed: larger than %zu bytes", what, path,
                 max_bytes);
    goto done;
  }
  *image = lk_secret_from(lk_secret_data(buf), total);
  if (*image == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory reading %s %s", what, path);
  }
done:
  lk_secret_free(buf);
  return st;
}

lk_status lk_keyfile_read(const char *path, const char *what, size_t max_bytes,
                          lk_secret **image, lk_err *err) {
  if (path == NULL || what == NULL || image == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key file read: NULL argument");
  }
  *image = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    return lk_fail(err, LK_NOT_FOUND, "%s %s does not exist", what, path);
  }
  if (fd < 0) {
    return lk_fail(err, LK_FAILED_PRECONDITION, "cannot open %s %s: %s", what,
                   path, strerror(errno));
  }
  lk_status st = keyfile_read_fd(fd, path, what, max_bytes, image, err);
  close(fd);
  return st;
}

/* Re-reads path after a replacement and checks it holds text: a writer
 * that does not honour the lock file (another host on a file system
 * without working locks) would otherwise go unnoticed. */
static lk_status keyfile_check_holds(const char *path, const char *what,
                                     const lk_secret *text, lk_err *err) {
  lk_secret *back = NULL;
  size_t want = lk_secret_len(text);
  lk_status st = lk_keyfile_read(path, what, want, &back, err);
  if (st == LK_INVALID_ARGUMENT ||
      (st == LK_OK && (lk_secret_len(back) != want ||
                       sodium_memcmp(lk_secret_data(back), lk_secret_data(text),
                                     want) != 0))) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "%s %s changed right after it was replaced: another writer "
                 "does not honour %s" LK_KEYFILE_LOCK_SUFFIX
                 " (a file system without working locks?)",
                 what, path, path);
  }
  lk_secret_free(back);
  return st;
}

lk_status lk_keyfile_write(const char *path, const char *what,
                           const lk_secret *text, int replace, int *raced,
                           lk_err *err) {
  lk_status st = LK_OK;
  char tmp[PATH_MAX];
  int fd = -1;
  int tmp_made = 0;
  int replaced = 0;
  if (path == NULL || what == NULL || text == NULL || raced == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key file write: NULL argument");
  }
  *raced = 0;
  char host[KEYFILE_HOST_BYTES];
  keyfile_host(host);
  int n = snprintf(tmp, sizeof(tmp), "%s.tmp-%s-%ld-%08x", path, host,
                   (long)getpid(), (unsigned)randombytes_random());
  if (n < 0 || (size_t)n >= sizeof(tmp)) {
    st =
        lk_fail(err, LK_INVALID_ARGUMENT, "%s path %s is too long", what, path);
    goto done;
  }
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot create %s %s: %s", what,
                 tmp, strerror(errno));
    goto done;
  }
  tmp_made = 1;
  if (keyfile_write_all(fd, lk_secret_data(text), lk_secret_len(text)) != 0 ||
      fsync(fd) != 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot write %s %s: %s", what,
                 tmp, strerror(errno));
    goto done;
  }
  int rc = close(fd);
  fd = -1;
  if (rc != 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot write %s %s: %s", what,
                 tmp, strerror(errno));
    goto done;
  }
  if (replace) {
    if (rename(tmp, path) != 0) {
      st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot replace %s %s: %s",
                   what, path, strerror(errno));
      goto done;
    }
    tmp_made = 0; /* the temp name is gone: it is path now */
    replaced = 1;
  } else if (link(tmp, path) != 0) {
    if (errno == EEXIST) {
      *raced = 1;
    } else {
      st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot create %s %s: %s", what,
                   path, strerror(errno));
    }
    goto done;
  }
  if (keyfile_sync_dir(path) != 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "cannot sync the directory of %s %s: %s", what, path,
                 strerror(errno));
    goto done;
  }
  if (replaced) {
    st = keyfile_check_holds(path, what, text, err);
  }
done:
  if (fd >= 0) {
    close(fd);
  }
  if (tmp_made) {
    unlink(tmp);
  }
  return st;
}

lk_status lk_keyfile_promote(const char *from, const char *to, const char *what,
                             lk_err *err) {
  if (from == NULL || to == NULL || what == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key file promote: NULL argument");
  }
  if (rename(from, to) != 0) {
    return lk_fail(err, errno == ENOENT ? LK_NOT_FOUND : LK_FAILED_PRECONDITION,
                   "cannot rename %s %s to %s: %s", what, from, to,
                   strerror(errno));
  }
  if (keyfile_sync_dir(to) != 0) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "cannot sync the directory of %s %s: %s", what, to,
                   strerror(errno));
  }
  return LK_OK;
}

/* Returns the pid of a temp file name "<base>.tmp-<host>-<pid>-<8 hex>"
 * (or, from before temp names carried the host, "<base>.tmp-<pid>-<8
 * hex>") of the file named base, or 0 when name is not one; *same_host is
 * 0 when host is not this host's keyfile_host. */
static long keyfile_temp_pid(const char *name, const char *base,
                             const char *host, int *same_host) {
  size_t bl = strlen(base);
  size_t nl = strlen(name);
  *same_host = 1;
  if (strncmp(name, base, bl) != 0 || strncmp(name + bl, ".tmp-", 5) != 0) {
    return 0;
  }
  const char *mid = name + bl + 5; /* [host-]pid-hex */
  if (nl < bl + 5 + 2 + 8 || name[nl - 9] != '-' ||
      strspn(name + nl - 8, "0123456789abcdef") != 8) {
    return 0;
  }
  const char *pid_end = name + nl - 9;
  const char *pid_start = pid_end;
  while (pid_start > mid && pid_start[-1] >= '0' && pid_start[-1] <= '9') {
    pid_start--;
  }
  if (pid_start == pid_end || pid_end - pid_start > 10) {
    return 0;
  }
  if (pid_start != mid) { /* a host part: "<host>-" */
    size_t hl = (size_t)(pid_start - mid) - 1;
    if (pid_start[-1] != '-' || hl == 0) {
      return 0;
    }
    *same_host = hl == strlen(host) && memcmp(mid, host, hl) == 0;
  }
  long pid = 0;
  for (const char *p = pid_start; p < pid_end; p++) {
    pid = pid * 10 + (*p - '0');
  }
  return pid > 0 && pid <= INT_MAX ? pid : 0;
}

/* Removes the stale temps beside path; see the two callers' contracts. */
static int keyfile_remove_temps(const char *path, int own_pid_stale) {
  char dir[PATH_MAX];
  char victim[PATH_MAX];
  char host[KEYFILE_HOST_BYTES];
  int removed = 0;
  if (path == NULL) {
    return 0;
  }
  keyfile_host(host);
  const char *slash = strrchr(path, '/');
  const char *base = slash != NULL ? slash + 1 : path;
  keyfile_dir_of(path, dir);
  DIR *d = opendir(dir);
  if (d == NULL) {
    return 0;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    int same_host = 0;
    long pid = keyfile_temp_pid(e->d_name, base, host, &same_host);
    if (pid == 0 || !same_host) {
      continue; /* another host's writer may be alive */
    }
    /* A container's process restarted as PID 1 again sees its own pid in
     * the temps of its killed predecessor. */
    int own = (pid_t)pid == getpid();
    if ((own && !own_pid_stale) ||
        (!own && (kill((pid_t)pid, 0) == 0 || errno != ESRCH))) {
      continue; /* its writer is alive, or may be (EPERM) */
    }
    int n = snprintf(victim, sizeof(victim), "%s/%s", dir, e->d_name);
    if (n > 0 && (size_t)n < sizeof(victim) && unlink(victim) == 0) {
      removed++;
    }
  }
  closedir(d);
  return removed;
}

int lk_keyfile_remove_stale_temps(const char *path) {
  return keyfile_remove_temps(path, 0);
}

int lk_keyfile_remove_stale_temps_at_start(const char *path) {
  return keyfile_remove_temps(path, 1);
}

lk_status lk_keyfile_lock(const char *path, const char *what, int *lock_fd,
                          lk_err *err) {
  char lock_path[PATH_MAX];
  if (path == NULL || what == NULL || lock_fd == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key file lock: NULL argument");
  }
  *lock_fd = -1;
  int n =
      snprintf(lock_path, sizeof(lock_path), "%s" LK_KEYFILE_LOCK_SUFFIX, path);
  if (n < 0 || (size_t)n >= sizeof(lock_path)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "%s path %s is too long", what,
                   path);
  }
  /* Writable: NFS emulates locks with byte-range locks, which need it. */
  int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "cannot open the lock file %s of %s %s: %s", lock_path, what,
                   path, strerror(errno));
  }
  struct flock fl;
  memset(&fl, 0, sizeof(fl));
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET; /* l_start 0, l_len 0: the whole file */
  int rc;
  do {
    rc = fcntl(fd, F_OFD_SETLKW, &fl);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    lk_status st =
        lk_fail(err, LK_FAILED_PRECONDITION, "cannot lock %s for %s %s: %s",
                lock_path, what, path, strerror(errno));
    close(fd);
    return st;
  }
  *lock_fd = fd;
  return LK_OK;
}

void lk_keyfile_unlock(int lock_fd) {
  if (lock_fd < 0) {
    return;
  }
  /* Closing the last descriptor of the open file description releases an
   * OFD lock. */
  close(lock_fd);
}
