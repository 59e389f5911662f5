/*
 * keyring.c - the control plane's versioned key ring (see keyring.h).
 *
 * Why this shape: the ring is read once at start and then only used, so a
 * loaded lk_keyring is a fixed array of ids and states beside one guarded
 * region holding every key (one sodium_malloc region, not one per key:
 * each region costs guard pages and locked memory). The file rules that
 * protect it (owner-only, size cap, never half-written) live in
 * lib/keyfile, shared with the node key.
 *
 * Rotation is a read-modify-write of the file: lk_keyring_add_key takes
 * the file's exclusive lock (lk_keyfile_lock: "<file>.lock"), re-reads and
 * re-validates the file under it, and replaces it with rename(), so two
 * rotations cannot lose each other's key and a reader sees the old ring or the
 * new one. Creation instead link()s the new file into place, so two control
 * planes starting at once share the first ring rather than one replacing the
 * other's.
 *
 * Every byte of key material or file text is in an lk_secret or
 * lk_secret_buf (guarded, wiped on free); base64 key text is decoded from
 * the guarded file image straight into the guarded key region.
 *
 * The audit key (the "audit" line) is a key of its own, not derived from a
 * sealing key, so audit hashes survive rotation. A ring file older than
 * the audit line is upgraded the way a rotation writes: under the
 * file's lock, re-read, and replaced with rename().
 *
 * Reloading in place: a ring loaded by lk_keyring_load_or_create carries a
 * ring_handle (its path, the identity of the file it last read, a
 * read-write lock and a reload mutex) that survives reloads. A reload
 * parses the file into a fresh ring exactly as a first load does, then,
 * under the write lock, swaps the whole struct with it (handle excepted)
 * and destroys the fresh one, which now holds the old keys: so whatever a
 * loaded ring holds, a reload replaces all of it at once. Every reader
 * (seal, unseal, audit hash, key listings) holds the read lock while it
 * touches keys, ids or the audit key. Removing a key is the same
 * directory-locked read-modify-write of the file as adding one; both carry
 * the audit line over unchanged. A reload that finds a file without an
 * audit line (an old backup put back) writes the ring's own audit key into
 * it, so hashes made before the reload still match those made after.
 */
#include "lib/keyring.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "lib/audit.h"
#include "lib/keyfile.h"
#include "lib/log.h"

#define RING_HEADER "latchkey-keyring v1"
#define RING_WHAT "key ring"
#define KEY_BYTES 32
#define AUDIT_WORD "audit"
#define STATE_ACTIVE "active"
#define STATE_RETIRING "retiring"
/* "key 4294967295 retiring " + base64 of 32 bytes + "\n" */
#define RING_LINE_MAX_BYTES 70
/* "audit " + base64 of 32 bytes + "\n" */
#define AUDIT_LINE_BYTES 51

_Static_assert(KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
               "aead key size");
_Static_assert(KEY_BYTES == LK_AUDIT_KEY_BYTES, "audit key size");
_Static_assert(LK_KEYRING_AUDIT_HEX_BYTES == LK_AUDIT_HEX_BYTES,
               "audit hex size");
_Static_assert(LK_SEAL_NONCE_BYTES ==
                   crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
               "nonce size");
_Static_assert(LK_SEAL_TAG_BYTES == crypto_aead_xchacha20poly1305_ietf_ABYTES,
               "tag size");
_Static_assert(sizeof(RING_HEADER) + AUDIT_LINE_BYTES +
                       LK_KEYRING_MAX_KEYS * RING_LINE_MAX_BYTES <
                   LK_KEYRING_MAX_FILE_BYTES,
               "a full ring fits in a key ring file");

/* What a file looked like when a ring read it: a rename() over it, or
 * any rewrite, changes at least one of these. */
typedef struct {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
  struct timespec ctime;
  int known; /* 0: never stat()ed, so any file differs */
} ring_file_id;

/* The part of a loaded ring that a reload keeps. */
typedef struct {
  pthread_rwlock_t lock;     /* read: using keys; write: swapping them */
  pthread_mutex_t reload_mu; /* one reload at a time; guards file */
  char *path;
  ring_file_id file; /* of the file the keys came from */
} ring_handle;

struct lk_keyring {
  size_t n;                          /* keys in use, 1..LK_KEYRING_MAX_KEYS */
  size_t active;                     /* index of the one active key */
  uint32_t ids[LK_KEYRING_MAX_KEYS]; /* not secret */
  lk_secret *keys;  /* LK_KEYRING_MAX_KEYS * KEY_BYTES; key i at i * 32 */
  lk_secret *audit; /* KEY_BYTES: the audit key */
  int has_audit;    /* the file had (or now has) an audit line */
  ring_handle *h;   /* loaded rings only; NULL on a parse-only ring */
};

/* Read-locks a loaded ring's keys (a parse-only ring has no lock). */
static void ring_rdlock(const lk_keyring *kr) {
  if (kr->h != NULL) {
    pthread_rwlock_rdlock(&kr->h->lock);
  }
}

/* Releases ring_rdlock. */
static void ring_unlock(const lk_keyring *kr) {
  if (kr->h != NULL) {
    pthread_rwlock_unlock(&kr->h->lock);
  }
}

/* Returns an empty ring with room for LK_KEYRING_MAX_KEYS keys. */
static lk_status ring_new(lk_keyring **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_keyring *kr = calloc(1, sizeof(*kr));
  if (kr == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory for the key ring");
    goto done;
  }
  kr->keys = lk_secret_new((size_t)LK_KEYRING_MAX_KEYS * KEY_BYTES);
  kr->audit = lk_secret_new(KEY_BYTES);
  if (kr->keys == NULL || kr->audit == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory for the key ring");
    goto done;
  }
  *out = kr;
  kr = NULL;
done:
  lk_keyring_destroy(kr);
  return st;
}

void lk_keyring_destroy(lk_keyring *kr) {
  if (kr == NULL) {
    return;
  }
  lk_secret_free(kr->audit);
  lk_secret_free(kr->keys);
  if (kr->h != NULL) {
    pthread_rwlock_destroy(&kr->h->lock);
    pthread_mutex_destroy(&kr->h->reload_mu);
    free(kr->h->path);
    free(kr->h);
  }
  free(kr);
}

/* Returns the bytes of key i for writing. */
static unsigned char *ring_key_mut(lk_keyring *kr, size_t i) {
  return lk_secret_mut(kr->keys) + i * KEY_BYTES;
}

/* Returns the bytes of key i. */
static const unsigned char *ring_key(const lk_keyring *kr, size_t i) {
  return lk_secret_data(kr->keys) + i * KEY_BYTES;
}

/* Returns the index of key id, or -1 when the ring does not hold it. */
static long ring_find(const lk_keyring *kr, uint32_t id) {
  for (size_t i = 0; i < kr->n; i++) {
    if (kr->ids[i] == id) {
      return (long)i;
    }
  }
  return -1;
}

/* Gives kr a fresh random audit key. */
static void ring_new_audit(lk_keyring *kr) {
  randombytes_buf(lk_secret_mut(kr->audit), KEY_BYTES);
  kr->has_audit = 1;
}

uint32_t lk_keyring_active_id(const lk_keyring *kr) {
  ring_rdlock(kr);
  uint32_t id = kr->ids[kr->active];
  ring_unlock(kr);
  return id;
}

/* ---- key ring file: parsing ------------------------------------------- */

/* Parses 1..4294967295 written in plain decimal; returns 0 or -1. */
static int ring_parse_id(const char *s, size_t n, uint32_t *out) {
  uint64_t v = 0;
  if (n == 0 || n > 10 || s[0] == '0') {
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') {
      return -1;
    }
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > UINT32_MAX) {
    return -1;
  }
  *out = (uint32_t)v;
  return 0;
}

/* Splits off the text up to the next space in [*pos, end) into tok/tok_len
 * and advances *pos past the space; returns 0 or -1 when there is none. */
static int ring_take_word(const char **pos, const char *end, const char **tok,
                          size_t *tok_len) {
  const char *sp = memchr(*pos, ' ', (size_t)(end - *pos));
  if (sp == NULL) {
    return -1;
  }
  *tok = *pos;
  *tok_len = (size_t)(sp - *pos);
  *pos = sp + 1;
  return 0;
}

/* Parses one key line [line, end) (newline excluded) into key slot
 * kr->n; returns the problem, or NULL when the line is good. */
static const char *ring_parse_line(lk_keyring *kr, const char *line,
                                   const char *end, int *is_active) {
  const char *pos = line;
  const char *word = NULL;
  size_t word_len = 0;
  uint32_t id = 0;
  size_t bin_len = 0;
  const char *b64_end = NULL;
  if (ring_take_word(&pos, end, &word, &word_len) != 0 || word_len != 3 ||
      memcmp(word, "key", 3) != 0) {
    return "not \"key <id> <state> <base64 of 32 bytes>\"";
  }
  if (ring_take_word(&pos, end, &word, &word_len) != 0 ||
      ring_parse_id(word, word_len, &id) != 0) {
    return "key id is not a number in 1..4294967295";
  }
  if (ring_find(kr, id) >= 0) {
    return "key id appears twice";
  }
  if (ring_take_word(&pos, end, &word, &word_len) != 0) {
    return "not \"key <id> <state> <base64 of 32 bytes>\"";
  }
  if (word_len == sizeof(STATE_ACTIVE) - 1 &&
      memcmp(word, STATE_ACTIVE, word_len) == 0) {
    *is_active = 1;
  } else if (word_len == sizeof(STATE_RETIRING) - 1 &&
             memcmp(word, STATE_RETIRING, word_len) == 0) {
    *is_active = 0;
  } else {
    return "state is not \"" STATE_ACTIVE "\" or \"" STATE_RETIRING "\"";
  }
  if (sodium_base642bin(ring_key_mut(kr, kr->n), KEY_BYTES, pos,
                        (size_t)(end - pos), NULL, &bin_len, &b64_end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      bin_len != KEY_BYTES || b64_end != end) {
    sodium_memzero(ring_key_mut(kr, kr->n), KEY_BYTES);
    return "key is not standard base64 of 32 bytes";
  }
  kr->ids[kr->n] = id;
  return NULL;
}

/* Parses the audit line [line, end) (newline excluded) into kr; returns
 * the problem, or NULL when the line is good. */
static const char *ring_parse_audit(lk_keyring *kr, const char *line,
                                    const char *end) {
  size_t bin_len = 0;
  const char *b64_end = NULL;
  const char *pos = line + sizeof(AUDIT_WORD); /* past "audit " */
  if ((size_t)(end - line) < sizeof(AUDIT_WORD) ||
      sodium_base642bin(lk_secret_mut(kr->audit), KEY_BYTES, pos,
                        (size_t)(end - pos), NULL, &bin_len, &b64_end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      bin_len != KEY_BYTES || b64_end != end) {
    sodium_memzero(lk_secret_mut(kr->audit), KEY_BYTES);
    return "audit key is not standard base64 of 32 bytes (\"" AUDIT_WORD
           " <base64 of 32 bytes>\")";
  }
  kr->has_audit = 1;
  return NULL;
}

/* Returns 1 when [line, end) is an audit line ("audit" then a space, or
 * "audit" alone, which is a malformed one). */
static int ring_is_audit_line(const char *line, const char *end) {
  size_t n = (size_t)(end - line);
  size_t w = sizeof(AUDIT_WORD) - 1;
  return n >= w && memcmp(line, AUDIT_WORD, w) == 0 &&
         (n == w || line[w] == ' ');
}

/* Parses the file image text[0..n) into kr (empty); LK_INVALID_ARGUMENT
 * naming path, the line and the first problem found. */
static lk_status ring_parse(const char *path, const char *text, size_t n,
                            lk_keyring *kr, lk_err *err) {
  const char *pos = text;
  const char *end = text + n;
  const char *problem = NULL;
  size_t line_no = 1;
  size_t actives = 0;
  const char *nl = memchr(pos, '\n', n);
  const char *line_end = nl != NULL ? nl : end;
  if ((size_t)(line_end - pos) != sizeof(RING_HEADER) - 1 ||
      memcmp(pos, RING_HEADER, sizeof(RING_HEADER) - 1) != 0) {
    problem = "first line is not \"" RING_HEADER "\"";
    goto done;
  }
  pos = nl != NULL ? nl + 1 : end;
  while (pos < end) {
    int is_active = 0;
    line_no++;
    if (kr->n == LK_KEYRING_MAX_KEYS) {
      problem = "more keys than the most a key ring holds";
      goto done;
    }
    nl = memchr(pos, '\n', (size_t)(end - pos));
    line_end = nl != NULL ? nl : end;
    if (ring_is_audit_line(pos, line_end)) {
      problem = line_no != 2 || kr->has_audit
                    ? "the audit line must come once, right after the header"
                    : ring_parse_audit(kr, pos, line_end);
      if (problem != NULL) {
        goto done;
      }
      pos = nl != NULL ? nl + 1 : end;
      continue;
    }
    problem = ring_parse_line(kr, pos, line_end, &is_active);
    if (problem != NULL) {
      goto done;
    }
    if (is_active) {
      kr->active = kr->n;
      actives++;
    }
    kr->n++;
    pos = nl != NULL ? nl + 1 : end;
  }
  line_no = 0; /* the problems below are about the whole file */
  if (kr->n == 0) {
    problem = "it holds no keys";
  } else if (actives != 1) {
    problem = "exactly one key must be active";
  }
done:
  if (problem == NULL) {
    return LK_OK;
  }
  if (line_no > 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "key ring file %s is malformed: line %zu: %s; restore it "
                   "from backup",
                   path, line_no, problem);
  }
  return lk_fail(err, LK_INVALID_ARGUMENT,
                 "key ring file %s is malformed: %s; restore it from backup",
                 path, problem);
}

/* Reads and parses the key ring file at path into a new ring (has_audit
 * tells whether it had an audit line). LK_NOT_FOUND when the file does not
 * exist. */
static lk_status ring_read(const char *path, lk_keyring **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_secret *image = NULL;
  lk_keyring *kr = NULL;
  if ((st = lk_keyfile_read(path, RING_WHAT, LK_KEYRING_MAX_FILE_BYTES, &image,
                            err)) != LK_OK ||
      (st = ring_new(&kr, err)) != LK_OK ||
      (st = ring_parse(path, lk_secret_str(image), lk_secret_len(image), kr,
                       err)) != LK_OK) {
    goto done;
  }
  *out = kr;
  kr = NULL;
done:
  lk_keyring_destroy(kr);
  lk_secret_free(image);
  return st;
}

/* ---- key ring file: writing ------------------------------------------- */

/* Renders the ring as key ring file text, keys in ascending id order, into
 * guarded memory. */
static lk_status ring_render(const lk_keyring *kr, lk_secret **text,
                             lk_err *err) {
  lk_status st = LK_OK;
  size_t b64_size =
      sodium_base64_ENCODED_LEN(KEY_BYTES, sodium_base64_VARIANT_ORIGINAL);
  lk_secret *b64 = lk_secret_new(b64_size);
  lk_secret_buf *b = lk_secret_buf_new(LK_KEYRING_MAX_FILE_BYTES);
  uint32_t last = 0;
  if (b64 == NULL || b == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory writing the key ring");
    goto done;
  }
  if ((st = lk_secret_buf_append_str(b, RING_HEADER "\n", err)) != LK_OK) {
    goto done;
  }
  if (kr->has_audit) {
    sodium_bin2base64((char *)lk_secret_mut(b64), b64_size,
                      lk_secret_data(kr->audit), KEY_BYTES,
                      sodium_base64_VARIANT_ORIGINAL);
    if ((st = lk_secret_buf_append_str(b, AUDIT_WORD " ", err)) != LK_OK ||
        (st = lk_secret_buf_append_str(b, lk_secret_str(b64), err)) != LK_OK ||
        (st = lk_secret_buf_append_str(b, "\n", err)) != LK_OK) {
      goto done;
    }
  }
  for (size_t written = 0; written < kr->n; written++) {
    size_t next = kr->n;
    char head[64];
    for (size_t i = 0; i < kr->n; i++) { /* smallest id above last */
      if (kr->ids[i] > last && (next == kr->n || kr->ids[i] < kr->ids[next])) {
        next = i;
      }
    }
    last = kr->ids[next];
    snprintf(head, sizeof(head), "key %u %s ", (unsigned)last,
             next == kr->active ? STATE_ACTIVE : STATE_RETIRING);
    sodium_bin2base64((char *)lk_secret_mut(b64), b64_size, ring_key(kr, next),
                      KEY_BYTES, sodium_base64_VARIANT_ORIGINAL);
    if ((st = lk_secret_buf_append_str(b, head, err)) != LK_OK ||
        (st = lk_secret_buf_append_str(b, lk_secret_str(b64), err)) != LK_OK ||
        (st = lk_secret_buf_append_str(b, "\n", err)) != LK_OK) {
      goto done;
    }
  }
  *text = lk_secret_buf_finish(b);
  b = NULL;
  if (*text == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory writing the key ring");
  }
done:
  lk_secret_buf_free(b);
  lk_secret_free(b64);
  return st;
}

/* Adds a fresh random key with id to kr and makes it the active one. */
static void ring_append_active(lk_keyring *kr, uint32_t id) {
  crypto_aead_xchacha20poly1305_ietf_keygen(ring_key_mut(kr, kr->n));
  kr->ids[kr->n] = id;
  kr->active = kr->n;
  kr->n++;
}

/* Creates a ring with an audit key and one active key (id 1) and its file
 * at path. *raced is set (and *out left NULL) when another process created
 * the file first. */
static lk_status ring_create(const char *path, lk_keyring **out, int *raced,
                             lk_err *err) {
  lk_status st = LK_OK;
  lk_keyring *kr = NULL;
  lk_secret *text = NULL;
  if ((st = ring_new(&kr, err)) != LK_OK) {
    goto done;
  }
  ring_new_audit(kr);
  ring_append_active(kr, 1);
  if ((st = ring_render(kr, &text, err)) != LK_OK ||
      (st = lk_keyfile_write(path, RING_WHAT, text, 0, raced, err)) != LK_OK ||
      *raced) {
    goto done;
  }
  *out = kr;
  kr = NULL;
done:
  lk_secret_free(text);
  lk_keyring_destroy(kr);
  return st;
}

/* Adds an audit line to the key ring file at path when it has none, under
 * the file's lock (re-read there, so a concurrent upgrade or rotation
 * is kept), replacing the file atomically. The line holds keep (KEY_BYTES)
 * when it is not NULL, else a fresh random key. */
static lk_status ring_upgrade(const char *path, const unsigned char *keep,
                              lk_err *err) {
  lk_status st = LK_OK;
  int lock_fd = -1;
  lk_keyring *kr = NULL;
  lk_secret *text = NULL;
  int raced = 0;
  if ((st = lk_keyfile_lock(path, RING_WHAT, &lock_fd, err)) != LK_OK ||
      (st = ring_read(path, &kr, err)) != LK_OK || kr->has_audit) {
    goto done;
  }
  if (keep != NULL) {
    memcpy(lk_secret_mut(kr->audit), keep, KEY_BYTES);
    kr->has_audit = 1;
  } else {
    ring_new_audit(kr);
  }
  if ((st = ring_render(kr, &text, err)) != LK_OK) {
    goto done;
  }
  st = lk_keyfile_write(path, RING_WHAT, text, 1, &raced, err);
  if (st == LK_FAILED_PRECONDITION) {
    char why[sizeof(err->msg)];
    snprintf(why, sizeof(why), "%s", err->msg);
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "key ring %s has no audit line and cannot be given one (%s): "
                 "let latchkey-cp write its directory for one start, or add "
                 "the line \"" AUDIT_WORD
                 " <standard base64 of 32 random bytes>\" right after the "
                 "header yourself",
                 path, why);
  }
  if (st == LK_OK) {
    lk_log(LK_LOG_INFO, "keyring_audit_key_added",
           keep != NULL ? "key ring %s had no audit line: wrote back the "
                          "audit key already loaded"
                        : "key ring %s had no audit line: added a new audit "
                          "key",
           path);
  }
done:
  lk_secret_free(text);
  lk_keyring_destroy(kr);
  lk_keyfile_unlock(lock_fd);
  return st;
}

/* lk_keyring_load_or_create without the handle: a parse-only ring. */
static lk_status ring_load_or_create(const char *path, lk_keyring **out,
                                     lk_err *err) {
  if (path == NULL || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key ring: NULL argument");
  }
  *out = NULL;
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  /* Three rounds: a create that loses a race loads the winner's file; a
   * file without an audit line is upgraded and read again. */
  for (int round = 0; round < 3; round++) {
    lk_keyring *kr = NULL;
    lk_status st = ring_read(path, &kr, err);
    if (st == LK_OK && !kr->has_audit) {
      lk_keyring_destroy(kr);
      st = ring_upgrade(path, NULL, err);
      if (st != LK_OK) {
        return st;
      }
      continue;
    }
    if (st == LK_OK) {
      *out = kr;
      return LK_OK;
    }
    if (st != LK_NOT_FOUND) {
      return st;
    }
    int raced = 0;
    st = ring_create(path, out, &raced, err);
    if (st != LK_OK || !raced) {
      return st;
    }
  }
  return lk_fail(
      err, LK_FAILED_PRECONDITION,
      "key ring %s exists but cannot be opened (a dangling symlink?)", path);
}

lk_status lk_keyring_add_key(const char *path, uint32_t *new_id, lk_err *err) {
  lk_status st = LK_OK;
  int lock_fd = -1;
  lk_keyring *kr = NULL;
  lk_secret *text = NULL;
  int raced = 0;
  uint32_t top = 0;
  if (path == NULL || new_id == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key ring: NULL argument");
  }
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  if ((st = lk_keyfile_lock(path, RING_WHAT, &lock_fd, err)) != LK_OK ||
      (st = ring_read(path, &kr, err)) != LK_OK) {
    goto done;
  }
  for (size_t i = 0; i < kr->n; i++) {
    top = kr->ids[i] > top ? kr->ids[i] : top;
  }
  if (kr->n == LK_KEYRING_MAX_KEYS || top == UINT32_MAX) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "key ring %s cannot take another key (it holds %zu keys, "
                 "highest id %u): re-seal everything under the active key and "
                 "remove the retiring keys first",
                 path, kr->n, (unsigned)top);
    goto done;
  }
  if (!kr->has_audit) {
    ring_new_audit(kr);
  }
  ring_append_active(kr, top + 1);
  if ((st = ring_render(kr, &text, err)) != LK_OK ||
      (st = lk_keyfile_write(path, RING_WHAT, text, 1, &raced, err)) != LK_OK) {
    goto done;
  }
  *new_id = top + 1;
done:
  lk_secret_free(text);
  lk_keyring_destroy(kr);
  lk_keyfile_unlock(lock_fd);
  /* A copy of the ring a killed writer left beside it holds keys. */
  if (lk_keyfile_remove_stale_temps(path) > 0) {
    lk_log(LK_LOG_INFO, "keyring_stale_temp_removed",
           "removed temp files of key ring %s left by a killed process", path);
  }
  return st;
}

/* ---- loaded rings: reload in place, listings, removal ------------------ */

/* Records what the file at path looks like now; returns -1 (errno set,
 * id->known 0) when it cannot be stat()ed. */
static int ring_stat(const char *path, ring_file_id *id) {
  struct stat sb;
  memset(id, 0, sizeof(*id));
  if (stat(path, &sb) != 0) {
    return -1;
  }
  id->dev = sb.st_dev;
  id->ino = sb.st_ino;
  id->size = sb.st_size;
  id->mtime = sb.st_mtim;
  id->ctime = sb.st_ctim;
  id->known = 1;
  return 0;
}

/* Returns 1 when a and b describe the same, unchanged file. */
static int ring_same_file(const ring_file_id *a, const ring_file_id *b) {
  return a->known && b->known && a->dev == b->dev && a->ino == b->ino &&
         a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
         a->mtime.tv_nsec == b->mtime.tv_nsec &&
         a->ctime.tv_sec == b->ctime.tv_sec &&
         a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* Gives kr the handle of a ring loaded from path, whose file looked like
 * file just before it was read. */
static lk_status ring_attach(lk_keyring *kr, const char *path,
                             const ring_file_id *file, lk_err *err) {
  ring_handle *h = calloc(1, sizeof(*h));
  if (h == NULL || (h->path = strdup(path)) == NULL) {
    free(h);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory for the key ring");
  }
  /* Writer-preferring (glibc): a steady stream of seals and unseals must
   * not keep a reload (a rotation arriving) waiting forever. */
  pthread_rwlockattr_t attr;
  int rc = pthread_rwlockattr_init(&attr);
  if (rc == 0) {
    pthread_rwlockattr_setkind_np(&attr,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(&h->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
  }
  if (rc != 0) {
    free(h->path);
    free(h);
    return lk_fail(err, LK_INTERNAL, "cannot create the key ring lock");
  }
  if (pthread_mutex_init(&h->reload_mu, NULL) != 0) {
    pthread_rwlock_destroy(&h->lock);
    free(h->path);
    free(h);
    return lk_fail(err, LK_INTERNAL, "cannot create the key ring lock");
  }
  h->file = *file;
  kr->h = h;
  return LK_OK;
}

lk_status lk_keyring_load_or_create(const char *path, lk_keyring **out,
                                    lk_err *err) {
  ring_file_id file;
  lk_status st = LK_OK;
  if (path == NULL || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key ring: NULL argument");
  }
  /* Before the read: a file replaced meanwhile then looks changed, and
   * the next refresh reads it again. */
  (void)ring_stat(path, &file);
  if ((st = ring_load_or_create(path, out, err)) != LK_OK) {
    return st;
  }
  if (!file.known) { /* it did not exist: this call created it */
    (void)ring_stat(path, &file);
  }
  if ((st = ring_attach(*out, path, &file, err)) != LK_OK) {
    lk_keyring_destroy(*out);
    *out = NULL;
  }
  return st;
}

/* Reads kr's file into a fresh ring and swaps it in under the write lock;
 * the caller holds kr->h->reload_mu. */
static lk_status ring_reload_locked(lk_keyring *kr, lk_err *err) {
  ring_handle *h = kr->h;
  ring_file_id file;
  lk_keyring *fresh = NULL;
  lk_status st = LK_OK;
  (void)ring_stat(h->path, &file); /* before the read, as at load */
  if ((st = ring_read(h->path, &fresh, err)) != LK_OK) {
    goto done;
  }
  if (!fresh->has_audit) {
    /* An old file put back: give it this ring's audit key (only reloads,
     * which hold reload_mu, change kr->audit), then read it again. */
    lk_keyring_destroy(fresh);
    fresh = NULL;
    if ((st = ring_upgrade(h->path, lk_secret_data(kr->audit), err)) != LK_OK) {
      goto done;
    }
    (void)ring_stat(h->path, &file);
    if ((st = ring_read(h->path, &fresh, err)) != LK_OK) {
      goto done;
    }
    if (!fresh->has_audit) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "key ring %s lost its audit line again while it was being "
                   "reloaded: check what else writes it",
                   h->path);
      goto done;
    }
  }
  fresh->h = h;
  pthread_rwlock_wrlock(&h->lock);
  lk_keyring old = *kr;
  *kr = *fresh;
  *fresh = old;
  pthread_rwlock_unlock(&h->lock);
  fresh->h = NULL; /* fresh now holds the old keys: wiped below */
  h->file = file;
done:
  lk_keyring_destroy(fresh);
  return st;
}

lk_status lk_keyring_reload(lk_keyring *kr, lk_err *err) {
  if (kr == NULL || kr->h == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "key ring reload: not a loaded key ring");
  }
  pthread_mutex_lock(&kr->h->reload_mu);
  lk_status st = ring_reload_locked(kr, err);
  pthread_mutex_unlock(&kr->h->reload_mu);
  return st;
}

lk_status lk_keyring_refresh(lk_keyring *kr, int *reloaded, lk_err *err) {
  lk_status st = LK_OK;
  ring_file_id now;
  if (reloaded != NULL) {
    *reloaded = 0;
  }
  if (kr == NULL || kr->h == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "key ring refresh: not a loaded key ring");
  }
  pthread_mutex_lock(&kr->h->reload_mu);
  if (ring_stat(kr->h->path, &now) != 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION, "cannot stat key ring %s: %s",
                 kr->h->path, strerror(errno));
    goto done;
  }
  if (ring_same_file(&now, &kr->h->file)) {
    goto done;
  }
  if ((st = ring_reload_locked(kr, err)) == LK_OK && reloaded != NULL) {
    *reloaded = 1;
  }
done:
  pthread_mutex_unlock(&kr->h->reload_mu);
  return st;
}

const char *lk_keyring_path(const lk_keyring *kr) {
  return kr->h != NULL ? kr->h->path : NULL;
}

int lk_keyring_has_key(const lk_keyring *kr, uint32_t id) {
  ring_rdlock(kr);
  int has = ring_find(kr, id) >= 0;
  ring_unlock(kr);
  return has;
}

size_t lk_keyring_key_ids(const lk_keyring *kr,
                          uint32_t ids[LK_KEYRING_MAX_KEYS],
                          uint32_t *active_id) {
  ring_rdlock(kr);
  size_t n = kr->n;
  memcpy(ids, kr->ids, n * sizeof(ids[0]));
  if (active_id != NULL) {
    *active_id = kr->ids[kr->active];
  }
  ring_unlock(kr);
  for (size_t i = 1; i < n; i++) { /* insertion sort: n <= 256 */
    uint32_t v = ids[i];
    size_t j = i;
    while (j > 0 && ids[j - 1] > v) {
      ids[j] = ids[j - 1];
      j--;
    }
    ids[j] = v;
  }
  return n;
}

/* Removes key i (not the active one) from a parse-only ring: the last key
 * takes its slot, and the last slot is wiped. */
static void ring_drop(lk_keyring *kr, size_t i) {
  size_t last = kr->n - 1;
  if (i != last) {
    memcpy(ring_key_mut(kr, i), ring_key(kr, last), KEY_BYTES);
    kr->ids[i] = kr->ids[last];
    if (kr->active == last) {
      kr->active = i;
    }
  }
  sodium_memzero(ring_key_mut(kr, last), KEY_BYTES);
  kr->ids[last] = 0;
  kr->n = last;
}

lk_status lk_keyring_remove_key(const char *path, uint32_t id, lk_err *err) {
  lk_status st = LK_OK;
  int lock_fd = -1;
  lk_keyring *kr = NULL;
  lk_secret *text = NULL;
  int raced = 0;
  long idx = -1;
  if (path == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key ring: NULL argument");
  }
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  if ((st = lk_keyfile_lock(path, RING_WHAT, &lock_fd, err)) != LK_OK ||
      (st = ring_read(path, &kr, err)) != LK_OK) {
    goto done;
  }
  idx = ring_find(kr, id);
  if (idx < 0) {
    st = lk_fail(err, LK_NOT_FOUND, "key ring %s holds no key %u", path,
                 (unsigned)id);
    goto done;
  }
  if ((size_t)idx == kr->active) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "key %u is the active key of key ring %s: rotate to a new "
                 "key and re-seal before removing it",
                 (unsigned)id, path);
    goto done;
  }
  ring_drop(kr, (size_t)idx);
  if ((st = ring_render(kr, &text, err)) != LK_OK ||
      (st = lk_keyfile_write(path, RING_WHAT, text, 1, &raced, err)) != LK_OK) {
    goto done;
  }
done:
  lk_secret_free(text);
  lk_keyring_destroy(kr);
  lk_keyfile_unlock(lock_fd);
  /* A copy of the ring a killed writer left beside it holds keys. */
  if (lk_keyfile_remove_stale_temps(path) > 0) {
    lk_log(LK_LOG_INFO, "keyring_stale_temp_removed",
           "removed temp files of key ring %s left by a killed process", path);
  }
  return st;
}

/* ---- sealing ---------------------------------------------------------- */

lk_status lk_keyring_seal(const lk_keyring *kr, const char *cred_id,
                          const char *field, const unsigned char *pt,
                          size_t pt_len, uint32_t *key_id,
                          unsigned char nonce[LK_SEAL_NONCE_BYTES],
                          unsigned char **ct, size_t *ct_len, lk_err *err) {
  static const unsigned char empty[1];
  lk_status st = LK_OK;
  unsigned char ad[LK_SEAL_AD_MAX_BYTES];
  size_t ad_len = 0;
  unsigned long long out_len = 0;
  unsigned char *buf = NULL;
  if (kr == NULL || cred_id == NULL || field == NULL ||
      (pt == NULL && pt_len > 0) || key_id == NULL || nonce == NULL ||
      ct == NULL || ct_len == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key ring seal: NULL argument");
  }
  *ct = NULL;
  *ct_len = 0;
  ring_rdlock(kr);
  uint32_t id = kr->ids[kr->active];
  if (pt_len > LK_SEAL_MAX_PT_BYTES) {
    st = lk_fail(
        err, LK_INVALID_ARGUMENT,
        "credential %s field %s: value is %zu bytes, at most %u are allowed",
        cred_id, field, pt_len, LK_SEAL_MAX_PT_BYTES);
    goto done;
  }
  if ((st = lk_seal_ad(cred_id, field, id, ad, &ad_len, err)) != LK_OK) {
    goto done;
  }
  buf = malloc(pt_len + LK_SEAL_TAG_BYTES);
  if (buf == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of memory sealing credential %s", cred_id);
    goto done;
  }
  randombytes_buf(nonce, LK_SEAL_NONCE_BYTES);
  if (crypto_aead_xchacha20poly1305_ietf_encrypt(
          buf, &out_len, pt != NULL ? pt : empty, pt_len, ad, ad_len, NULL,
          nonce, ring_key(kr, kr->active)) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot seal credential %s field %s",
                 cred_id, field);
    goto done;
  }
  *key_id = id;
  *ct = buf;
  *ct_len = (size_t)out_len;
  buf = NULL;
done:
  ring_unlock(kr);
  free(buf); /* ciphertext only: not secret */
  return st;
}

/* The one answer for a sealed value that does not belong to this record
 * and key, or was altered: it names the record, never the value. */
static lk_status ring_mismatch(uint32_t key_id, const char *cred_id,
                               const char *field, lk_err *err) {
  return lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential %s field %s cannot be unsealed with key ring key "
                 "%u: re-enter the credential",
                 cred_id, field, (unsigned)key_id);
}

lk_status lk_keyring_unseal(const lk_keyring *kr, uint32_t key_id,
                            const char *cred_id, const char *field,
                            const unsigned char *nonce, size_t nonce_len,
                            const unsigned char *ct, size_t ct_len,
                            lk_secret **out, lk_err *err) {
  lk_status st = LK_OK;
  unsigned char ad[LK_SEAL_AD_MAX_BYTES];
  size_t ad_len = 0;
  lk_secret *pt = NULL;
  if (kr == NULL || cred_id == NULL || field == NULL ||
      (nonce == NULL && nonce_len > 0) || (ct == NULL && ct_len > 0) ||
      out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "key ring unseal: NULL argument");
  }
  *out = NULL;
  ring_rdlock(kr);
  if (ct_len > LK_SEAL_MAX_CT_BYTES) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "credential %s field %s: sealed value is %zu bytes, at most "
                 "%u are allowed",
                 cred_id, field, ct_len, LK_SEAL_MAX_CT_BYTES);
    goto done;
  }
  if ((st = lk_seal_ad(cred_id, field, key_id, ad, &ad_len, err)) != LK_OK) {
    goto done;
  }
  long idx = ring_find(kr, key_id);
  if (idx < 0) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential %s field %s is sealed under key ring key %u, "
                 "which this key ring does not hold: use the key ring that "
                 "has it, or re-enter the credential",
                 cred_id, field, (unsigned)key_id);
    goto done;
  }
  if (nonce_len != LK_SEAL_NONCE_BYTES || ct_len < LK_SEAL_TAG_BYTES) {
    st = ring_mismatch(key_id, cred_id, field, err);
    goto done;
  }
  pt = lk_secret_new(ct_len - LK_SEAL_TAG_BYTES);
  if (pt == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory unsealing credential %s", cred_id);
    goto done;
  }
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(
          lk_secret_mut(pt), NULL, NULL, ct, ct_len, ad, ad_len, nonce,
          ring_key(kr, (size_t)idx)) != 0) {
    st = ring_mismatch(key_id, cred_id, field, err);
    goto done;
  }
  *out = pt;
  pt = NULL;
done:
  ring_unlock(kr);
  lk_secret_free(pt);
  return st;
}

void lk_keyring_audit_hash(const lk_keyring *kr, const void *value, size_t len,
                           char out_hex[LK_KEYRING_AUDIT_HEX_BYTES]) {
  ring_rdlock(kr);
  lk_audit_hash(lk_secret_data(kr->audit), value, len, out_hex);
  ring_unlock(kr);
}

lk_status lk_keyring_audit_key(const lk_keyring *kr, lk_secret **out,
                               lk_err *err) {
  ring_rdlock(kr);
  *out = lk_secret_from(lk_secret_data(kr->audit), KEY_BYTES);
  ring_unlock(kr);
  if (*out == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of guarded memory copying the audit key");
  }
  return LK_OK;
}
