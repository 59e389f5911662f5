/*
 * checkconf.c - read-only checks of addresses, files and directories.
 *
 * Paths are copied into fixed PATH_MAX buffers (longer ones are refused)
 * so walking up to an existing ancestor needs no allocation.
 */
#include "lib/checkconf.h"

#include "lib/log.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_set(const char *s) {
  return s != NULL && s[0] != '\0';
}

/* Copies path's directory part into out ("." when it has none). */
static int dir_of(const char *path, char out[PATH_MAX]) {
  size_t n = strlen(path);
  if (n >= PATH_MAX)
    return -1;
  memcpy(out, path, n + 1);
  char *slash = strrchr(out, '/');
  if (slash == NULL)
    strcpy(out, ".");
  else if (slash == out)
    out[1] = '\0';
  else
    *slash = '\0';
  return 0;
}

static lk_status check_port(const char *flag, const char *addr,
                            const char *port, int allow_port0, lk_err *err) {
  char *end = NULL;
  errno = 0;
  long v = strtol(port, &end, 10);
  if (port[0] == '\0' || *end != '\0' || errno != 0 || v < 0 || v > 65535 ||
      (v == 0 && !allow_port0)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--%s '%s': the port must be a number from 1 to 65535 "
                   "(addresses are unix:/path or host:port)",
                   flag, addr);
  }
  return LK_OK;
}

lk_status lk_checkconf_address(const char *flag, const char *addr,
                               int allow_port0, lk_err *err) {
  if (!is_set(addr)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s is empty", flag);
  }
  if (strncmp(addr, "unix:", 5) == 0) {
    const char *path = addr + 5;
    char dir[PATH_MAX];
    if (path[0] != '/' || dir_of(path, dir) != 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "--%s '%s': a Unix socket address is unix:/absolute/path",
                     flag, addr);
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "--%s '%s': directory %s does not exist", flag, addr, dir);
    }
    return LK_OK;
  }
  const char *colon = NULL;
  if (addr[0] == '[') {
    const char *close = strchr(addr, ']');
    if (close == NULL || close == addr + 1 || close[1] != ':') {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "--%s '%s': an IPv6 address is [addr]:port", flag, addr);
    }
    colon = close + 1;
  } else {
    colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || strchr(addr, ':') != colon) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "--%s '%s': expected unix:/path or host:port", flag, addr);
    }
  }
  for (const char *p = addr; p < colon; p++) {
    if (*p == ' ' || *p == '/' || *p == '\t') {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "--%s '%s': the host may not contain '%c'", flag, addr,
                     *p);
    }
  }
  return check_port(flag, addr, colon + 1, allow_port0, err);
}

/* What a file may allow group and others. */
typedef enum { ANY_MODE, TOKEN_MODE, KEY_MODE } mode_rule;

lk_status lk_checkconf_target(const char *flag, const char *target,
                              lk_err *err) {
  static const char *const schemes[] = {"dns:", "ipv4:", "ipv6:"};
  for (size_t i = 0; target != NULL && i < 3; i++) {
    size_t n = strlen(schemes[i]);
    if (strncmp(target, schemes[i], n) == 0 && target[n] != '\0')
      return LK_OK;
  }
  return lk_checkconf_address(flag, target, 0, err);
}

static lk_status check_file(const char *flag, const char *path, mode_rule rule,
                            lk_err *err) {
  struct stat sb;
  if (!is_set(path))
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s is empty", flag);
  if (stat(path, &sb) != 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s %s: %s", flag, path,
                   strerror(errno));
  }
  if (!S_ISREG(sb.st_mode)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s %s is not a regular file",
                   flag, path);
  }
  if (access(path, R_OK) != 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s %s is not readable: %s",
                   flag, path, strerror(errno));
  }
  unsigned mode = (unsigned)(sb.st_mode & 0777);
  if ((rule == KEY_MODE && (mode & 077) != 0) ||
      (rule == TOKEN_MODE && (mode & 022) != 0)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--%s %s is %s by group or others (mode %03o): run "
                   "chmod 600 %s",
                   flag, path, rule == KEY_MODE ? "accessible" : "writable",
                   mode, path);
  }
  if (rule == TOKEN_MODE && (mode & 044) != 0) {
    /* Kubernetes mounts Secrets 0644 unless told otherwise: warn only. */
    lk_log(LK_LOG_WARN, "token_file_readable",
           "--%s %s is readable by group or others (mode %03o); 0600 (or a "
           "Secret volume with defaultMode 0400) keeps it to this user",
           flag, path, mode);
  }
  return LK_OK;
}

lk_status lk_checkconf_secret_file(const char *flag, const char *path,
                                   lk_err *err) {
  return check_file(flag, path, TOKEN_MODE, err);
}

lk_status lk_checkconf_readable_file(const char *flag, const char *path,
                                     lk_err *err) {
  return check_file(flag, path, ANY_MODE, err);
}

lk_status lk_checkconf_key_file(const char *flag, const char *path,
                                lk_err *err) {
  if (!is_set(path))
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s is empty", flag);
  if (access(path, F_OK) == 0)
    return check_file(flag, path, KEY_MODE, err);
  char dir[PATH_MAX];
  if (dir_of(path, dir) != 0)
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s: path too long", flag);
  if (access(dir, W_OK | X_OK) != 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--%s %s does not exist and cannot be created in %s: %s",
                   flag, path, dir, strerror(errno));
  }
  return LK_OK;
}

lk_status lk_checkconf_dir(const char *flag, const char *dir, lk_err *err) {
  if (!is_set(dir))
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s is empty", flag);
  char cur[PATH_MAX];
  size_t n = strlen(dir);
  if (n >= PATH_MAX)
    return lk_fail(err, LK_INVALID_ARGUMENT, "--%s: path too long", flag);
  memcpy(cur, dir, n + 1);
  for (;;) {
    struct stat sb;
    if (stat(cur, &sb) == 0) {
      if (!S_ISDIR(sb.st_mode)) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "--%s %s: %s is not a "
                       "directory",
                       flag, dir, cur);
      }
      if (access(cur, W_OK | X_OK) != 0) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "--%s %s: %s is not writable: %s", flag, dir, cur,
                       strerror(errno));
      }
      return LK_OK;
    }
    if (errno != ENOENT && errno != ENOTDIR) {
      return lk_fail(err, LK_INVALID_ARGUMENT, "--%s %s: %s: %s", flag, dir,
                     cur, strerror(errno));
    }
    char up[PATH_MAX];
    if (dir_of(cur, up) != 0 || strcmp(up, cur) == 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT, "--%s %s cannot be created",
                     flag, dir);
    }
    memcpy(cur, up, strlen(up) + 1);
  }
}
