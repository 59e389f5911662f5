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
 * an exclusive lock on the file's directory, re-reads and re-validates the
 * file under it, and replaces it with rename(), so two rotations cannot
 * lose each other's key and a reader sees the old ring or the new one.
 * Creation instead link()s the new file into place, so two control planes
 * starting at once share the first ring rather than one replacing the
 * other's.
 *
 * Every byte of key material or file text is in an lk_secret or
 * lk_secret_buf (guarded, wiped on free); base64 key text is decoded from
 * the guarded file image straight into the guarded key region.
 *
 * The audit key (the "audit" line) is a key of its own, not derived from a
 * sealing key, so audit hashes survive rotation. A ring file older than
 * the audit line is upgraded the way a rotation writes: under the
 * directory lock, re-read, and replaced with rename().
 */
#include "lib/keyring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

struct lk_keyring {
  size_t n;                          /* keys in use, 1..LK_KEYRING_MAX_KEYS */
  size_t active;                     /* index of the one active key */
  uint32_t ids[LK_KEYRING_MAX_KEYS]; /* not secret */
  lk_secret *keys;  /* LK_KEYRING_MAX_KEYS * KEY_BYTES; key i at i * 32 */
  lk_secret *audit; /* KEY_BYTES: the audit key */
  int has_audit;    /* the file had (or now has) an audit line */
};

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
  return kr->ids[kr->active];
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
 * the directory lock (re-read there, so a concurrent upgrade or rotation
 * is kept), replacing the file atomically. */
static lk_status ring_upgrade(const char *path, lk_err *err) {
  lk_status st = LK_OK;
  int lock_fd = -1;
  lk_keyring *kr = NULL;
  lk_secret *text = NULL;
  int raced = 0;
  if ((st = lk_keyfile_lock_dir(path, RING_WHAT, &lock_fd, err)) != LK_OK ||
      (st = ring_read(path, &kr, err)) != LK_OK || kr->has_audit) {
    goto done;
  }
  ring_new_audit(kr);
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
           "key ring %s had no audit line: added a new audit key", path);
  }
done:
  lk_secret_free(text);
  lk_keyring_destroy(kr);
  lk_keyfile_unlock(lock_fd);
  return st;
}

lk_status lk_keyring_load_or_create(const char *path, lk_keyring **out,
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
      st = ring_upgrade(path, err);
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
  if ((st = lk_keyfile_lock_dir(path, RING_WHAT, &lock_fd, err)) != LK_OK ||
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
  lk_secret_free(pt);
  return st;
}

void lk_keyring_audit_hash(const lk_keyring *kr, const void *value, size_t len,
                           char out_hex[LK_KEYRING_AUDIT_HEX_BYTES]) {
  lk_audit_hash(lk_secret_data(kr->audit), value, len, out_hex);
}

lk_status lk_keyring_audit_key(const lk_keyring *kr, lk_secret **out,
                               lk_err *err) {
  *out = lk_secret_from(lk_secret_data(kr->audit), KEY_BYTES);
  if (*out == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of guarded memory copying the audit key");
  }
  return LK_OK;
}
