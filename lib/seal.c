/*
 * seal.c - the node key file and XChaCha20-Poly1305 sealing (see seal.h).
 *
 * Why this shape: the node key is the one secret that protects every
 * sealed field on disk, so its file must never be half-written, never be
 * replaced under a running node, and never be accepted when other users
 * could read it. lib/keyfile writes it through a 0600 temp file that is
 * fsynced and link()ed into place: link fails when the name exists, so two
 * processes starting at once end up sharing the first key instead of one
 * silently replacing the other's.
 *
 * Every buffer that holds key bytes or the file's text is an lk_secret or
 * lk_secret_buf (guarded, wiped on free); the base64 text of the secret
 * key is decoded straight from the guarded file image into guarded memory.
 *
 * Sealing to a node's public key needs no key file at all on the sealing
 * side: the ephemeral secret key, the X25519 shared point and the derived
 * key live in one guarded scratch region, and each is wiped as soon as the
 * next step no longer needs it.
 */
#include "lib/seal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/keyfile.h"

#define KEY_FILE_HEADER "latchkey-node-key v1"
#define KEY_FILE_MAX_BYTES 1024
#define KEY_BYTES 32
#define KDF_CONTEXT "lkseal01"
#define NODE_KDF_CONTEXT "lknode01"
#define AUDIT_KDF_CONTEXT "lkauditn"
#define AUDIT_SUBKEY_ID 1
#define AUDIT_KEY_BYTES 32
#define NODE_AD_LABEL "node"
/* cred_id NUL field NUL "node" NUL node_pk */
#define NODE_AD_MAX_BYTES \
  (2 * (LK_SEAL_MAX_NAME_BYTES + 1) + sizeof(NODE_AD_LABEL) + KEY_BYTES)

_Static_assert(KEY_BYTES == crypto_box_SECRETKEYBYTES,
               "X25519 secret key size");
_Static_assert(KEY_BYTES == crypto_box_PUBLICKEYBYTES,
               "X25519 public key size");
_Static_assert(KEY_BYTES == crypto_kdf_KEYBYTES, "kdf master key size");
_Static_assert(KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
               "aead key size");
_Static_assert(LK_SEAL_NONCE_BYTES ==
                   crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
               "nonce size");
_Static_assert(LK_SEAL_TAG_BYTES == crypto_aead_xchacha20poly1305_ietf_ABYTES,
               "tag size");
_Static_assert(sizeof(KDF_CONTEXT) - 1 == crypto_kdf_CONTEXTBYTES,
               "kdf context size");
_Static_assert(sizeof(AUDIT_KDF_CONTEXT) - 1 == crypto_kdf_CONTEXTBYTES,
               "audit kdf context size");
_Static_assert(KEY_BYTES == crypto_scalarmult_BYTES, "X25519 point size");
_Static_assert(KEY_BYTES == LK_SEAL_PUBLIC_KEY_BYTES, "public key size");

struct lk_seal_key {
  uint32_t key_id;
  unsigned char pk[KEY_BYTES]; /* public: not secret */
  lk_secret *sk;               /* X25519 secret key, kept for re-sealing */
  lk_secret *sym;              /* derived XChaCha20-Poly1305 key */
};

/* Builds a key from its parts, taking ownership of sk (freed on failure). */
static lk_status key_build(uint32_t key_id, const unsigned char pk[KEY_BYTES],
                           lk_secret *sk, lk_seal_key **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_seal_key *k = calloc(1, sizeof(*k));
  if (k == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of memory loading the node key");
    goto done;
  }
  k->key_id = key_id;
  memcpy(k->pk, pk, KEY_BYTES);
  k->sk = sk;
  sk = NULL;
  k->sym = lk_secret_new(KEY_BYTES);
  if (k->sym == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory for the node key");
    goto done;
  }
  if (crypto_kdf_derive_from_key(lk_secret_mut(k->sym), KEY_BYTES, key_id,
                                 KDF_CONTEXT, lk_secret_data(k->sk)) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot derive the sealing key");
    goto done;
  }
  *out = k;
  k = NULL;
done:
  lk_secret_free(sk);
  lk_seal_key_destroy(k);
  return st;
}

void lk_seal_key_destroy(lk_seal_key *k) {
  if (k == NULL) {
    return;
  }
  lk_secret_free(k->sym);
  lk_secret_free(k->sk);
  free(k);
}

uint32_t lk_seal_key_id(const lk_seal_key *k) {
  return k->key_id;
}

lk_status lk_seal_key_public(const lk_seal_key *k, unsigned char pk[32],
                             lk_err *err) {
  if (k == NULL || pk == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "node public key: NULL argument");
  }
  memcpy(pk, k->pk, KEY_BYTES);
  return LK_OK;
}

lk_status lk_seal_key_audit_key(const lk_seal_key *k, lk_secret **out,
                                lk_err *err) {
  lk_status st = LK_OK;
  lk_secret *key = NULL;
  if (k == NULL || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "node audit key: NULL argument");
  }
  *out = NULL;
  key = lk_secret_new(AUDIT_KEY_BYTES);
  if (key == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory for the audit key");
    goto done;
  }
  if (crypto_kdf_derive_from_key(lk_secret_mut(key), AUDIT_KEY_BYTES,
                                 AUDIT_SUBKEY_ID, AUDIT_KDF_CONTEXT,
                                 lk_secret_data(k->sk)) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot derive the audit key");
    goto done;
  }
  *out = key;
  key = NULL;
done:
  lk_secret_free(key);
  return st;
}

/* ---- key file: parsing ------------------------------------------------ */

/* One line of the file image: [*pos, newline) must start with prefix;
 * returns the rest in val/val_len and advances *pos past the newline.
 * Only the last line may lack its newline. Returns 0 or -1. */
static int key_take_line(const char **pos, const char *end, const char *prefix,
                         const char **val, size_t *val_len) {
  const char *line = *pos;
  const char *nl = memchr(line, '\n', (size_t)(end - line));
  const char *line_end = nl != NULL ? nl : end;
  size_t plen = strlen(prefix);
  if ((size_t)(line_end - line) < plen || memcmp(line, prefix, plen) != 0) {
    return -1;
  }
  *val = line + plen;
  *val_len = (size_t)(line_end - *val);
  *pos = nl != NULL ? nl + 1 : end;
  return 0;
}

/* Parses 1..4294967295 written in plain decimal; returns 0 or -1. */
static int key_parse_id(const char *s, size_t n, uint32_t *out) {
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

/* Decodes standard base64 of exactly KEY_BYTES bytes; returns 0 or -1. */
static int key_decode(const char *b64, size_t n, unsigned char bin[KEY_BYTES]) {
  size_t bin_len = 0;
  const char *b64_end = NULL;
  if (sodium_base642bin(bin, KEY_BYTES, b64, n, NULL, &bin_len, &b64_end,
                        sodium_base64_VARIANT_ORIGINAL) != 0) {
    return -1;
  }
  return bin_len == KEY_BYTES && b64_end == b64 + n ? 0 : -1;
}

/* Parses the file image text[0..n) into a key; LK_INVALID_ARGUMENT naming
 * path and the first problem found. */
static lk_status key_parse(const char *path, const char *text, size_t n,
                           lk_seal_key **out, lk_err *err) {
  lk_status st = LK_OK;
  const char *problem = NULL;
  const char *pos = text;
  const char *end = text + n;
  const char *val = NULL;
  size_t val_len = 0;
  uint32_t key_id = 0;
  unsigned char pk[KEY_BYTES];
  unsigned char pk_check[KEY_BYTES];
  lk_secret *sk = lk_secret_new(KEY_BYTES);
  if (sk == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory for the node key");
    goto done;
  }
  if (key_take_line(&pos, end, KEY_FILE_HEADER, &val, &val_len) != 0 ||
      val_len != 0) {
    problem = "first line is not \"" KEY_FILE_HEADER "\"";
  } else if (key_take_line(&pos, end, "key_id ", &val, &val_len) != 0 ||
             key_parse_id(val, val_len, &key_id) != 0) {
    problem = "second line is not \"key_id N\" with N in 1..4294967295";
  } else if (key_take_line(&pos, end, "public ", &val, &val_len) != 0 ||
             key_decode(val, val_len, pk) != 0) {
    problem = "third line is not \"public <base64 of 32 bytes>\"";
  } else if (key_take_line(&pos, end, "secret ", &val, &val_len) != 0 ||
             key_decode(val, val_len, lk_secret_mut(sk)) != 0) {
    problem = "fourth line is not \"secret <base64 of 32 bytes>\"";
  } else if (pos != end) {
    problem = "unexpected text after the secret line";
  } else if (crypto_scalarmult_base(pk_check, lk_secret_data(sk)) != 0 ||
             sodium_memcmp(pk_check, pk, KEY_BYTES) != 0) {
    problem = "public key does not match the secret key";
  }
  if (problem != NULL) {
    st = lk_fail(
        err, LK_INVALID_ARGUMENT,
        "node key file %s is malformed: %s; restore it from backup, or move it "
        "away to create a new key and re-enter every credential",
        path, problem);
    goto done;
  }
  st = key_build(key_id, pk, sk, out, err);
  sk = NULL;
done:
  lk_secret_free(sk);
  return st;
}

/* ---- key file: creation ----------------------------------------------- */

/* Renders the key file text into guarded memory. */
static lk_status key_render(uint32_t key_id, const unsigned char pk[KEY_BYTES],
                            const lk_secret *sk, lk_secret **text,
                            lk_err *err) {
  lk_status st = LK_OK;
  char head[128];
  char pk_b64[sodium_base64_ENCODED_LEN(KEY_BYTES,
                                        sodium_base64_VARIANT_ORIGINAL)];
  lk_secret *sk_b64 = lk_secret_new(sizeof(pk_b64) - 1);
  lk_secret_buf *b = lk_secret_buf_new(KEY_FILE_MAX_BYTES);
  if (sk_b64 == NULL || b == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory creating the node key");
    goto done;
  }
  sodium_bin2base64(pk_b64, sizeof(pk_b64), pk, KEY_BYTES,
                    sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64((char *)lk_secret_mut(sk_b64), sizeof(pk_b64),
                    lk_secret_data(sk), KEY_BYTES,
                    sodium_base64_VARIANT_ORIGINAL);
  snprintf(head, sizeof(head),
           KEY_FILE_HEADER "\nkey_id %u\npublic %s\nsecret ", (unsigned)key_id,
           pk_b64);
  if ((st = lk_secret_buf_append_str(b, head, err)) != LK_OK ||
      (st = lk_secret_buf_append_str(b, lk_secret_str(sk_b64), err)) != LK_OK ||
      (st = lk_secret_buf_append_str(b, "\n", err)) != LK_OK) {
    goto done;
  }
  *text = lk_secret_buf_finish(b);
  b = NULL;
  if (*text == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory creating the node key");
  }
done:
  lk_secret_buf_free(b);
  lk_secret_free(sk_b64);
  return st;
}

/* Creates a new key pair and its file at path. *raced is set (and *out left
 * NULL) when another process created the file first. */
static lk_status key_create(const char *path, lk_seal_key **out, int *raced,
                            lk_err *err) {
  lk_status st = LK_OK;
  unsigned char pk[KEY_BYTES];
  uint32_t key_id = randombytes_uniform(UINT32_MAX) + 1; /* 1..UINT32_MAX */
  lk_secret *text = NULL;
  lk_secret *sk = lk_secret_new(KEY_BYTES);
  if (sk == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory creating the node key");
    goto done;
  }
  if (crypto_box_keypair(pk, lk_secret_mut(sk)) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot generate the node key pair");
    goto done;
  }
  if ((st = key_render(key_id, pk, sk, &text, err)) != LK_OK ||
      (st = lk_keyfile_write(path, "node key", text, 0, raced, err)) != LK_OK ||
      *raced) {
    goto done;
  }
  st = key_build(key_id, pk, sk, out, err);
  sk = NULL;
done:
  lk_secret_free(text);
  lk_secret_free(sk);
  return st;
}

/* Reads and parses the key file at path; LK_NOT_FOUND when it is absent. */
static lk_status key_load(const char *path, lk_seal_key **out, lk_err *err) {
  lk_secret *image = NULL;
  lk_status st =
      lk_keyfile_read(path, "node key", KEY_FILE_MAX_BYTES, &image, err);
  if (st == LK_OK) {
    st = key_parse(path, lk_secret_str(image), lk_secret_len(image), out, err);
  }
  lk_secret_free(image);
  return st;
}

lk_status lk_seal_key_load(const char *path, lk_seal_key **out, lk_err *err) {
  if (path == NULL || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "node key: NULL argument");
  }
  *out = NULL;
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  return key_load(path, out, err);
}

void lk_seal_fingerprint(const unsigned char pk[32],
                         char out[LK_SEAL_FINGERPRINT_CHARS + 1]) {
  unsigned char digest[LK_SEAL_FINGERPRINT_CHARS / 2];
  crypto_generichash(digest, sizeof(digest), pk, KEY_BYTES, NULL, 0);
  sodium_bin2hex(out, LK_SEAL_FINGERPRINT_CHARS + 1, digest, sizeof(digest));
}

lk_status lk_seal_key_load_or_create(const char *path, lk_seal_key **out,
                                     lk_err *err) {
  if (path == NULL || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "node key: NULL argument");
  }
  *out = NULL;
  if (lk_secret_init() != LK_OK) {
    return lk_fail(err, LK_INTERNAL, "libsodium failed to initialize");
  }
  /* Two rounds: a create that loses a race loads the winner's file. */
  for (int round = 0; round < 2; round++) {
    lk_status st = key_load(path, out, err);
    if (st != LK_NOT_FOUND) {
      return st;
    }
    int raced = 0;
    st = key_create(path, out, &raced, err);
    if (st != LK_OK || !raced) {
      return st;
    }
  }
  return lk_fail(
      err, LK_FAILED_PRECONDITION,
      "node key %s exists but cannot be opened (a dangling symlink?)", path);
}

/* ---- sealing ---------------------------------------------------------- */

/* Checks that cred_id and field fit into associated data. */
static lk_status seal_check_names(const char *cred_id, const char *field,
                                  size_t *cl, size_t *fl, lk_err *err) {
  *cl = strlen(cred_id);
  *fl = strlen(field);
  if (*cl > LK_SEAL_MAX_NAME_BYTES || *fl > LK_SEAL_MAX_NAME_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential id and field name must be at most %u bytes",
                   LK_SEAL_MAX_NAME_BYTES);
  }
  return LK_OK;
}

lk_status lk_seal_ad(const char *cred_id, const char *field, uint32_t key_id,
                     unsigned char ad[LK_SEAL_AD_MAX_BYTES], size_t *ad_len,
                     lk_err *err) {
  size_t cl = 0;
  size_t fl = 0;
  if (cred_id == NULL || field == NULL || ad == NULL || ad_len == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "seal: NULL argument");
  }
  lk_status st = seal_check_names(cred_id, field, &cl, &fl, err);
  if (st != LK_OK) {
    return st;
  }
  unsigned char *p = ad;
  memcpy(p, cred_id, cl + 1);
  p += cl + 1;
  memcpy(p, field, fl + 1);
  p += fl + 1;
  p[0] = (unsigned char)(key_id >> 24);
  p[1] = (unsigned char)(key_id >> 16);
  p[2] = (unsigned char)(key_id >> 8);
  p[3] = (unsigned char)key_id;
  *ad_len = (size_t)(p + 4 - ad);
  return LK_OK;
}

lk_status lk_seal(const lk_seal_key *k, const char *cred_id, const char *field,
                  const unsigned char *pt, size_t pt_len,
                  unsigned char nonce[LK_SEAL_NONCE_BYTES], unsigned char **ct,
                  size_t *ct_len, lk_err *err) {
  static const unsigned char empty[1];
  lk_status st = LK_OK;
  unsigned char ad[LK_SEAL_AD_MAX_BYTES];
  size_t ad_len = 0;
  unsigned long long out_len = 0;
  unsigned char *buf = NULL;
  if (k == NULL || cred_id == NULL || field == NULL ||
      (pt == NULL && pt_len > 0) || nonce == NULL || ct == NULL ||
      ct_len == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "seal: NULL argument");
  }
  *ct = NULL;
  *ct_len = 0;
  if (pt_len > LK_SEAL_MAX_PT_BYTES) {
    st = lk_fail(
        err, LK_INVALID_ARGUMENT,
        "credential %s field %s: value is %zu bytes, at most %u are allowed",
        cred_id, field, pt_len, LK_SEAL_MAX_PT_BYTES);
    goto done;
  }
  if ((st = lk_seal_ad(cred_id, field, k->key_id, ad, &ad_len, err)) != LK_OK) {
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
          nonce, lk_secret_data(k->sym)) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot seal credential %s field %s",
                 cred_id, field);
    goto done;
  }
  *ct = buf;
  *ct_len = (size_t)out_len;
  buf = NULL;
done:
  free(buf); /* ciphertext only: not secret */
  return st;
}

/* The one answer for a sealed value that does not belong to this record
 * and key: it names the record, never the value. */
static lk_status unseal_mismatch(const lk_seal_key *k, const char *cred_id,
                                 const char *field, lk_err *err) {
  return lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential %s field %s cannot be unsealed with this node key "
                 "(key id %u): "
                 "re-enter the credential",
                 cred_id, field, (unsigned)k->key_id);
}

lk_status lk_unseal(const lk_seal_key *k, uint32_t key_id, const char *cred_id,
                    const char *field, const unsigned char *nonce,
                    size_t nonce_len, const unsigned char *ct, size_t ct_len,
                    lk_secret **out, lk_err *err) {
  lk_status st = LK_OK;
  unsigned char ad[LK_SEAL_AD_MAX_BYTES];
  size_t ad_len = 0;
  lk_secret *pt = NULL;
  if (k == NULL || cred_id == NULL || field == NULL ||
      (nonce == NULL && nonce_len > 0) || (ct == NULL && ct_len > 0) ||
      out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "unseal: NULL argument");
  }
  *out = NULL;
  if (ct_len > LK_SEAL_MAX_CT_BYTES) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "credential %s field %s: sealed value is %zu bytes, at most "
                 "%u are allowed",
                 cred_id, field, ct_len, LK_SEAL_MAX_CT_BYTES);
    goto done;
  }
  if ((st = lk_seal_ad(cred_id, field, k->key_id, ad, &ad_len, err)) != LK_OK) {
    goto done;
  }
  if (key_id != k->key_id || nonce_len != LK_SEAL_NONCE_BYTES ||
      ct_len < LK_SEAL_TAG_BYTES) {
    st = unseal_mismatch(k, cred_id, field, err);
    goto done;
  }
  pt = lk_secret_new(ct_len - LK_SEAL_TAG_BYTES);
  if (pt == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory unsealing credential %s", cred_id);
    goto done;
  }
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(lk_secret_mut(pt), NULL, NULL,
                                                 ct, ct_len, ad, ad_len, nonce,
                                                 lk_secret_data(k->sym)) != 0) {
    st = unseal_mismatch(k, cred_id, field, err);
    goto done;
  }
  *out = pt;
  pt = NULL;
done:
  lk_secret_free(pt);
  return st;
}

/* ---- sealing to a node's public key ----------------------------------- */

/* Builds the associated data cred_id NUL field NUL "node" NUL node_pk. */
static lk_status node_ad(const char *cred_id, const char *field,
                         const unsigned char node_pk[KEY_BYTES],
                         unsigned char ad[NODE_AD_MAX_BYTES], size_t *ad_len,
                         lk_err *err) {
  size_t cl = 0;
  size_t fl = 0;
  lk_status st = seal_check_names(cred_id, field, &cl, &fl, err);
  if (st != LK_OK) {
    return st;
  }
  unsigned char *p = ad;
  memcpy(p, cred_id, cl + 1);
  p += cl + 1;
  memcpy(p, field, fl + 1);
  p += fl + 1;
  memcpy(p, NODE_AD_LABEL, sizeof(NODE_AD_LABEL)); /* with its NUL */
  p += sizeof(NODE_AD_LABEL);
  memcpy(p, node_pk, KEY_BYTES);
  *ad_len = (size_t)(p + KEY_BYTES - ad);
  return LK_OK;
}

/* Derives one value's key into sym as BLAKE2b-256("lknode01" || X25519(sk,
 * peer_pk) || eph_pk || node_pk), using q (guarded scratch) for the shared
 * point and wiping it and the hash state before returning. Returns -1 when
 * X25519 yields the all-zero point (peer_pk has small order). */
static int node_derive(const unsigned char *sk, const unsigned char *peer_pk,
                       const unsigned char *eph_pk,
                       const unsigned char *node_pk, unsigned char *q,
                       unsigned char *sym) {
  crypto_generichash_state h;
  int rc = -1;
  if (crypto_scalarmult(q, sk, peer_pk) == 0 &&
      crypto_generichash_init(&h, NULL, 0, KEY_BYTES) == 0 &&
      crypto_generichash_update(&h, (const unsigned char *)NODE_KDF_CONTEXT,
                                sizeof(NODE_KDF_CONTEXT) - 1) == 0 &&
      crypto_generichash_update(&h, q, KEY_BYTES) == 0 &&
      crypto_generichash_update(&h, eph_pk, KEY_BYTES) == 0 &&
      crypto_generichash_update(&h, node_pk, KEY_BYTES) == 0 &&
      crypto_generichash_final(&h, sym, KEY_BYTES) == 0) {
    rc = 0;
  }
  sodium_memzero(&h, sizeof(h));
  sodium_memzero(q, KEY_BYTES);
  return rc;
}

lk_status lk_seal_for_node(const unsigned char node_pk[32], const char *cred_id,
                           const char *field, const unsigned char *pt,
                           size_t pt_len, unsigned char eph_pk[32],
                           unsigned char nonce[LK_SEAL_NONCE_BYTES],
                           unsigned char **ct, size_t *ct_len, lk_err *err) {
  static const unsigned char empty[1];
  lk_status st = LK_OK;
  unsigned char ad[NODE_AD_MAX_BYTES];
  size_t ad_len = 0;
  unsigned long long out_len = 0;
  unsigned char *buf = NULL;
  lk_secret *scratch = NULL; /* ephemeral secret key | shared point | key */
  if (node_pk == NULL || cred_id == NULL || field == NULL ||
      (pt == NULL && pt_len > 0) || eph_pk == NULL || nonce == NULL ||
      ct == NULL || ct_len == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "seal for node: NULL argument");
  }
  *ct = NULL;
  *ct_len = 0;
  if (pt_len > LK_SEAL_MAX_PT_BYTES) {
    st = lk_fail(
        err, LK_INVALID_ARGUMENT,
        "credential %s field %s: value is %zu bytes, at most %u are allowed",
        cred_id, field, pt_len, LK_SEAL_MAX_PT_BYTES);
    goto done;
  }
  if ((st = node_ad(cred_id, field, node_pk, ad, &ad_len, err)) != LK_OK) {
    goto done;
  }
  scratch = lk_secret_new(3 * KEY_BYTES);
  buf = malloc(pt_len + LK_SEAL_TAG_BYTES);
  if (scratch == NULL || buf == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of memory sealing credential %s for a node", cred_id);
    goto done;
  }
  unsigned char *eph_sk = lk_secret_mut(scratch);
  unsigned char *q = eph_sk + KEY_BYTES;
  unsigned char *sym = q + KEY_BYTES;
  if (crypto_box_keypair(eph_pk, eph_sk) != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot generate an ephemeral key pair");
    goto done;
  }
  int derived = node_derive(eph_sk, node_pk, eph_pk, node_pk, q, sym);
  sodium_memzero(eph_sk, KEY_BYTES); /* last use */
  if (derived != 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "credential %s field %s: the node public key is not a usable "
                 "X25519 public key",
                 cred_id, field);
    goto done;
  }
  randombytes_buf(nonce, LK_SEAL_NONCE_BYTES);
  int rc = crypto_aead_xchacha20poly1305_ietf_encrypt(
      buf, &out_len, pt != NULL ? pt : empty, pt_len, ad, ad_len, NULL, nonce,
      sym);
  sodium_memzero(sym, KEY_BYTES); /* last use */
  if (rc != 0) {
    st = lk_fail(err, LK_INTERNAL, "cannot seal credential %s field %s",
                 cred_id, field);
    goto done;
  }
  *ct = buf;
  *ct_len = (size_t)out_len;
  buf = NULL;
done:
  lk_secret_free(scratch);
  free(buf); /* ciphertext only: not secret */
  return st;
}

/* The one answer for a value that was not sealed to this node key for this
 * record, or was altered: it names the record, never the value. */
static lk_status node_mismatch(const char *cred_id, const char *field,
                               lk_err *err) {
  return lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential %s field %s cannot be unsealed with this node "
                 "key: it was sealed for another node key or altered; resync "
                 "this replica from the control plane",
                 cred_id, field);
}

lk_status lk_unseal_from_node(const lk_seal_key *node_key, const char *cred_id,
                              const char *field, const unsigned char *eph_pk,
                              size_t eph_pk_len, const unsigned char *nonce,
                              size_t nonce_len, const unsigned char *ct,
                              size_t ct_len, lk_secret **out, lk_err *err) {
  lk_status st = LK_OK;
  unsigned char ad[NODE_AD_MAX_BYTES];
  size_t ad_len = 0;
  lk_secret *scratch = NULL; /* shared point | key */
  lk_secret *pt = NULL;
  if (node_key == NULL || cred_id == NULL || field == NULL ||
      (eph_pk == NULL && eph_pk_len > 0) || (nonce == NULL && nonce_len > 0) ||
      (ct == NULL && ct_len > 0) || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "unseal from node: NULL argument");
  }
  *out = NULL;
  if (ct_len > LK_SEAL_MAX_CT_BYTES) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "credential %s field %s: sealed value is %zu bytes, at most "
                 "%u are allowed",
                 cred_id, field, ct_len, LK_SEAL_MAX_CT_BYTES);
    goto done;
  }
  if ((st = node_ad(cred_id, field, node_key->pk, ad, &ad_len, err)) != LK_OK) {
    goto done;
  }
  if (eph_pk_len != KEY_BYTES || nonce_len != LK_SEAL_NONCE_BYTES ||
      ct_len < LK_SEAL_TAG_BYTES) {
    st = node_mismatch(cred_id, field, err);
    goto done;
  }
  scratch = lk_secret_new(2 * KEY_BYTES);
  pt = lk_secret_new(ct_len - LK_SEAL_TAG_BYTES);
  if (scratch == NULL || pt == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of guarded memory unsealing credential %s", cred_id);
    goto done;
  }
  unsigned char *q = lk_secret_mut(scratch);
  unsigned char *sym = q + KEY_BYTES;
  if (node_derive(lk_secret_data(node_key->sk), eph_pk, eph_pk, node_key->pk, q,
                  sym) != 0) {
    st = node_mismatch(cred_id, field, err);
    goto done;
  }
  int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
      lk_secret_mut(pt), NULL, NULL, ct, ct_len, ad, ad_len, nonce, sym);
  sodium_memzero(sym, KEY_BYTES); /* last use */
  if (rc != 0) {
    st = node_mismatch(cred_id, field, err);
    goto done;
  }
  *out = pt;
  pt = NULL;
done:
  lk_secret_free(scratch);
  lk_secret_free(pt);
  return st;
}
