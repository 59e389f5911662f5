/*
 * seal_for_node.c - e2e helper: seals one value to a node's X25519 public
 * key exactly as the control plane does (lib/seal lk_seal_for_node), so a
 * Python test can play the control plane without its own copy of the
 * construction.
 *
 * stdin:  {"node_pk_b64": "<standard base64 of 32 bytes>",
 *          "cred_id": "...", "field": "...", "value": "..."}
 * stdout: {"ephemeral_public_key": "...", "nonce": "...",
 *          "ciphertext": "..."}  (standard base64: SealedValue's fields)
 *
 * Exit 0 on success, 1 with a message on stderr otherwise. The value is a
 * test secret: its buffers are still wiped before exit.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/seal.h"
#include "lib/secret.h"

#define MAX_INPUT_BYTES (256 * 1024)

/* Prints "name": base64 of n bytes at p, standard alphabet with padding. */
static void print_b64(const char *name, const unsigned char *p, size_t n,
                      int last) {
  size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
  char *out = malloc(cap);
  if (out == NULL) {
    fprintf(stderr, "seal_for_node: out of memory\n");
    exit(1);
  }
  sodium_bin2base64(out, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
  printf("\"%s\": \"%s\"%s", name, out, last ? "" : ", ");
  free(out);
}

int main(void) {
  int rc = 1;
  char *in = malloc(MAX_INPUT_BYTES + 1);
  size_t n = 0;
  json_t *doc = NULL;
  json_t *value = NULL;
  unsigned char *ct = NULL;
  size_t ct_len = 0;
  lk_err err;
  lk_err_clear(&err);

  if (in == NULL || lk_secret_init() != LK_OK) {
    fprintf(stderr, "seal_for_node: cannot initialize\n");
    goto done;
  }
  n = fread(in, 1, MAX_INPUT_BYTES + 1, stdin);
  if (n > MAX_INPUT_BYTES) {
    fprintf(stderr, "seal_for_node: input over %d bytes\n", MAX_INPUT_BYTES);
    goto done;
  }
  json_error_t jerr;
  doc = json_loadb(in, n, 0, &jerr);
  const char *pk_b64 = json_string_value(json_object_get(doc, "node_pk_b64"));
  const char *cred_id = json_string_value(json_object_get(doc, "cred_id"));
  const char *field = json_string_value(json_object_get(doc, "field"));
  value = json_object_get(doc, "value");
  if (pk_b64 == NULL || cred_id == NULL || field == NULL ||
      !json_is_string(value)) {
    fprintf(stderr,
            "seal_for_node: want a JSON object with string "
            "node_pk_b64, cred_id, field and value\n");
    goto done;
  }
  unsigned char pk[LK_SEAL_PUBLIC_KEY_BYTES];
  size_t pk_len = 0;
  if (sodium_base642bin(pk, sizeof(pk), pk_b64, strlen(pk_b64), NULL, &pk_len,
                        NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
      pk_len != sizeof(pk)) {
    fprintf(stderr, "seal_for_node: node_pk_b64 is not 32 bytes of base64\n");
    goto done;
  }
  unsigned char eph[LK_SEAL_PUBLIC_KEY_BYTES];
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  if (lk_seal_for_node(
          pk, cred_id, field, (const unsigned char *)json_string_value(value),
          json_string_length(value), eph, nonce, &ct, &ct_len, &err) != LK_OK) {
    fprintf(stderr, "seal_for_node: %s\n", err.msg);
    goto done;
  }
  printf("{");
  print_b64("ephemeral_public_key", eph, sizeof(eph), 0);
  print_b64("nonce", nonce, sizeof(nonce), 0);
  print_b64("ciphertext", ct, ct_len, 1);
  printf("}\n");
  rc = 0;
done:
  if (json_is_string(value))
    lk_wipe((char *)json_string_value(value), json_string_length(value));
  free(ct);
  json_decref(doc);
  if (in != NULL)
    lk_wipe_free(in, MAX_INPUT_BYTES + 1);
  return rc;
}
