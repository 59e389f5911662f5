/*
 * seal_bench.c - sealing and unsealing throughput of a 64-byte secret with
 * lib/seal (the operations behind every CreateCredential and every
 * injected call), for the call-path benchmark (DESIGN.md §9).
 *
 * Usage: seal_bench KEYFILE [SECONDS]. Creates (or loads) a node key at
 * KEYFILE, then for SECONDS each (default 1) seals a fresh 64-byte secret
 * under it (lk_seal) and opens one ciphertext into guarded memory
 * (lk_unseal + lk_secret_free, which wipes it) as fast as one thread can.
 * Every unseal is checked against the plaintext. Prints one JSON object.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/seal.h"
#include "lib/secret.h"
#include "lib/status.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  lk_seal_key *k = NULL;
  lk_secret *pt = NULL, *opened = NULL;
  unsigned char nonce[LK_SEAL_NONCE_BYTES], *ct = NULL;
  size_t ct_len = 0;
  lk_err err;
  int rc = 1;
  double secs = argc > 2 ? atof(argv[2]) : 1.0;
  unsigned long long n_seal = 0, n_unseal = 0;
  double t0, t_seal = 0, t_unseal = 0;
  memset(&err, 0, sizeof(err));
  if (argc < 2 || argc > 3 || secs <= 0) {
    fprintf(stderr, "usage: seal_bench KEYFILE [SECONDS]\n");
    return 2;
  }
  if (lk_secret_init() != LK_OK) {
    fprintf(stderr, "seal_bench: libsodium init failed\n");
    return 1;
  }
  if (lk_seal_key_load_or_create(argv[1], &k, &err) != LK_OK)
    goto done;
  pt = lk_secret_new(64);
  if (pt == NULL)
    goto done;
  for (int i = 0; i < 64; i++)
    lk_secret_mut(pt)[i] = (unsigned char)('a' + i % 26);
  t0 = now_s();
  do {
    unsigned char *c = NULL;
    size_t cl = 0;
    if (lk_seal(k, "cred-bench", "token", lk_secret_data(pt), 64, nonce, &c,
                &cl, &err) != LK_OK)
      goto done;
    free(ct);
    ct = c;
    ct_len = cl;
    n_seal++;
  } while ((t_seal = now_s() - t0) < secs);
  t0 = now_s();
  do {
    if (lk_unseal(k, lk_seal_key_id(k), "cred-bench", "token", nonce,
                  sizeof(nonce), ct, ct_len, &opened, &err) != LK_OK)
      goto done;
    if (!lk_ct_equal(lk_secret_data(opened), lk_secret_len(opened),
                     lk_secret_data(pt), 64)) {
      snprintf(err.msg, sizeof(err.msg), "unsealed bytes differ");
      goto done;
    }
    lk_secret_free(opened);
    opened = NULL;
    n_unseal++;
  } while ((t_unseal = now_s() - t0) < secs);
  printf(
      "{\"secret_bytes\":64,\"seal_per_s\":%.0f,\"unseal_per_s\":%.0f,"
      "\"seal_us\":%.2f,\"unseal_us\":%.2f}\n",
      (double)n_seal / t_seal, (double)n_unseal / t_unseal,
      t_seal * 1e6 / (double)n_seal, t_unseal * 1e6 / (double)n_unseal);
  rc = 0;
done:
  if (rc != 0)
    fprintf(stderr, "seal_bench: %s\n", err.msg);
  free(ct);
  lk_secret_free(opened);
  lk_secret_free(pt);
  lk_seal_key_destroy(k);
  return rc;
}
