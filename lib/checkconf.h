/*
 * checkconf.h - start-up checks of flag values that name files and
 * addresses, shared by both daemons and their --check-config.
 *
 * Why: a bad flag must stop a daemon before it starts anything, with one
 * line naming the flag (exit status 2), never a half-started process or a
 * crash (DESIGN.md §10); `--check-config` runs the same checks and stops.
 *
 * Every check is read-only: nothing is created, no key is read into
 * memory beyond what stat and access tell. Each error message starts with
 * the flag ("--listen ..."), so callers print it as it is.
 */
#ifndef LK_CHECKCONF_H
#define LK_CHECKCONF_H

#include "lib/status.h"

/* Checks addr is "unix:/absolute/path" (whose directory exists) or
 * "host:port" / "[v6]:port" with a port from 1 to 65535 (0 when
 * allow_port0). LK_INVALID_ARGUMENT naming flag otherwise. */
lk_status lk_checkconf_address(const char *flag, const char *addr,
                               int allow_port0, lk_err *err) LK_MUST_CHECK;

/* Checks a client target (--control-plane): a gRPC resolver URI
 * ("dns:///host:port", "ipv4:...", "ipv6:...") is passed as it is, to be
 * resolved by grpc; anything else must pass lk_checkconf_address. */
lk_status lk_checkconf_target(const char *flag, const char *target,
                              lk_err *err) LK_MUST_CHECK;

/* Checks path is a readable regular file that group and others cannot
 * write (token files); logs a warning when they can read it. */
lk_status lk_checkconf_secret_file(const char *flag, const char *path,
                                   lk_err *err) LK_MUST_CHECK;

/* Checks path is a readable regular file (certificates). */
lk_status lk_checkconf_readable_file(const char *flag, const char *path,
                                     lk_err *err) LK_MUST_CHECK;

/* Checks a key file the daemon creates on first start: an existing one
 * must be a readable regular file group and others cannot access at all
 * (mode 0600), an absent one needs a writable directory. */
lk_status lk_checkconf_key_file(const char *flag, const char *path,
                                lk_err *err) LK_MUST_CHECK;

/* Checks dir is a writable directory, or can be created (its nearest
 * existing ancestor is a writable directory). */
lk_status lk_checkconf_dir(const char *flag, const char *dir,
                           lk_err *err) LK_MUST_CHECK;

#endif
