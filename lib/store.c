/*
 * store.c - RocksDB behind lk_status (see store.h).
 *
 * Why it is shaped this way:
 *  - RocksDB reports errors through a malloc'd errptr string; store_fail is
 *    the one place that turns such a string into an lk_err and frees it.
 *  - Memory stays small for a sidecar with a 30 MB RSS target
 *    (docs/PERFORMANCE.md, "Memory"): one 1 MiB LRU block cache that also
 *    holds index and filter blocks, 1 MiB write buffers (two at most), a
 *    bounded number of open files. 100,000 bindings are about 5 MB of
 *    SST; a block the cache drops is read again from the kernel's page
 *    cache (a pread, not RSS), and the call path's few records are served
 *    by the read cache below, so a larger cache would buy resident memory,
 *    not calls. A memtable is allocated in blocks of write_buffer_size / 8
 *    (128 KiB here), which glibc serves from their own mappings (latchkeyd
 *    fixes M_MMAP_THRESHOLD) and unmaps when a flushed memtable is freed.
 *  - Compression is off: values are mostly sealed ciphertext, which does
 *    not compress, and uncompressed files let the canary test prove that a
 *    deleted plaintext really left the disk.
 *  - Every write is synced; a batch is one atomic WriteBatch.
 *  - Values leave RocksDB in a malloc'd copy that rocksdb_get makes; the
 *    caller gets that copy and lk_store_value_free wipes it before
 *    rocksdb_free. A batch's buffered values are wiped before it is freed.
 *    (RocksDB's own internal temporaries are out of reach of this wrapper;
 *    secret fields are sealed before they get here, so they hold
 *    ciphertext.)
 *  - lk_store_get answers repeated reads of small records from a small
 *    read-through cache (the call path reads the same few catalog records
 *    on every call). Every write bumps a generation after RocksDB has
 *    applied it, and an entry serves only while the generation it was
 *    read under is still current, so a read that starts after a write
 *    returned always sees that write, as without the cache. An entry is
 *    read under the generation taken before its RocksDB read and kept only
 *    if no write finished meanwhile. Cached values are the same bytes
 *    RocksDB's block cache holds (secret fields sealed), in malloc'd
 *    copies wiped when replaced and at close.
 */
#include "lib/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <rocksdb/c.h>

#include "lib/secret.h"

#define STORE_BLOCK_CACHE_BYTES (1u * 1024u * 1024u)
#define STORE_WRITE_BUFFER_BYTES (1u * 1024u * 1024u)
#define STORE_MAX_OPEN_FILES 256
#define STORE_LOG_FILE_BYTES (1u * 1024u * 1024u)
#define STORE_BLOOM_BITS_PER_KEY 10.0
/* RocksDB's BottommostLevelCompaction::kForce. */
#define STORE_BOTTOMMOST_FORCE 2
/* The read cache: slots, and the largest key and value it holds. */
#define STORE_READ_CACHE_SLOTS 64u
#define STORE_READ_CACHE_KEY_BYTES 128u
#define STORE_READ_CACHE_VALUE_BYTES 4096u

typedef struct {
  uint64_t gen; /* the write generation the value was read under */
  size_t klen;
  char key[STORE_READ_CACHE_KEY_BYTES];
  unsigned char *val; /* malloc'd, NULL when the slot is empty */
  size_t vlen;
} store_cached;

struct lk_store {
  rocksdb_t *db;
  rocksdb_env_t *env; /* in-memory env for lk_store_open_memory, else NULL */
  rocksdb_options_t *opts;
  rocksdb_block_based_table_options_t *table;
  rocksdb_cache_t *cache;
  rocksdb_writeoptions_t *sync_write;
  rocksdb_readoptions_t *read;
  _Atomic uint64_t gen; /* bumped after every write */
  pthread_mutex_t cache_mu;
  int cache_mu_ready;
  store_cached cached[STORE_READ_CACHE_SLOTS];
};

struct lk_store_batch {
  rocksdb_writebatch_t *wb;
  size_t bytes;     /* key and value bytes added so far */
  lk_status poison; /* LK_OK, or why lk_store_write must refuse */
  const char *poison_why;
};

/* Turns a RocksDB error string into err (and frees it). Corruption means
 * the files need an operator; anything else (I/O, lock held by another
 * process, busy) is LK_UNAVAILABLE. */
static lk_status store_fail(lk_err *err, char *rerr, const char *what,
                            const char *name) {
  lk_status code = strncmp(rerr, "Corruption", 10) == 0 ? LK_FAILED_PRECONDITION
                                                        : LK_UNAVAILABLE;
  lk_status st = lk_fail(err, code, "store %s %s: %s", what, name, rerr);
  rocksdb_free(rerr);
  return st;
}

/* Checks a key: non-NULL and within LK_STORE_MAX_KEY_BYTES. */
static lk_status store_check_key(const char *key, size_t *klen, lk_err *err) {
  if (key == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store: NULL key");
  }
  *klen = strnlen(key, LK_STORE_MAX_KEY_BYTES + 1);
  if (*klen > LK_STORE_MAX_KEY_BYTES) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store key longer than %u bytes",
                   LK_STORE_MAX_KEY_BYTES);
  }
  return LK_OK;
}

/* Creates dir with mode 0700 unless it already is a directory. */
static lk_status store_make_dir(const char *dir, lk_err *err) {
  struct stat sb;
  if (mkdir(dir, 0700) == 0) {
    return LK_OK;
  }
  if (errno != EEXIST) {
    return lk_fail(err, LK_FAILED_PRECONDITION, "cannot create data dir %s: %s",
                   dir, strerror(errno));
  }
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "data dir %s exists and is not a directory", dir);
  }
  return LK_OK;
}

/* Opens dir on disk, or (memory set) a RocksDB kept wholly in memory. */
static lk_status store_open(const char *dir, int memory, lk_store **out,
                            lk_err *err) {
  lk_status st = LK_OK;
  char *rerr = NULL;
  lk_store *s = NULL;
  if (dir == NULL || out == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store open: NULL argument");
  }
  *out = NULL;
  if (!memory && (st = store_make_dir(dir, err)) != LK_OK) {
    goto done;
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory opening store %s",
                 dir);
    goto done;
  }
  if (pthread_mutex_init(&s->cache_mu, NULL) != 0) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "cannot create a mutex for %s",
                 dir);
    goto done;
  }
  s->cache_mu_ready = 1;
  s->cache = rocksdb_cache_create_lru(STORE_BLOCK_CACHE_BYTES);
  s->table = rocksdb_block_based_options_create();
  rocksdb_block_based_options_set_block_cache(s->table, s->cache);
  rocksdb_block_based_options_set_cache_index_and_filter_blocks(s->table, 1);
  /* The table options take ownership of the filter policy. */
  rocksdb_block_based_options_set_filter_policy(
      s->table, rocksdb_filterpolicy_create_bloom(STORE_BLOOM_BITS_PER_KEY));

  s->opts = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(s->opts, 1);
  rocksdb_options_set_block_based_table_factory(s->opts, s->table);
  rocksdb_options_set_write_buffer_size(s->opts, STORE_WRITE_BUFFER_BYTES);
  rocksdb_options_set_max_write_buffer_number(s->opts, 2);
  rocksdb_options_set_max_open_files(s->opts, STORE_MAX_OPEN_FILES);
  rocksdb_options_set_compression(s->opts, rocksdb_no_compression);
  rocksdb_options_set_keep_log_file_num(s->opts, 2);
  rocksdb_options_set_max_log_file_size(s->opts, STORE_LOG_FILE_BYTES);

  s->sync_write = rocksdb_writeoptions_create();
  if (memory) {
    /* Nothing to make durable: the copy is rebuilt from its source. */
    s->env = rocksdb_create_mem_env();
    rocksdb_options_set_env(s->opts, s->env);
    rocksdb_writeoptions_disable_WAL(s->sync_write, 1);
  } else {
    rocksdb_writeoptions_set_sync(s->sync_write, 1);
  }
  s->read = rocksdb_readoptions_create();

  s->db = rocksdb_open(s->opts, dir, &rerr);
  if (rerr != NULL) {
    st = store_fail(err, rerr, "cannot open", dir);
    goto done;
  }
  *out = s;
  s = NULL;
done:
  lk_store_close(s);
  return st;
}

lk_status lk_store_open(const char *dir, lk_store **out, lk_err *err) {
  return store_open(dir, 0, out, err);
}

lk_status lk_store_open_memory(const char *name, lk_store **out, lk_err *err) {
  return store_open(name, 1, out, err);
}

typedef struct {
  lk_store_batch_put_fn put;
  lk_store_batch_delete_fn del;
  void *ctx;
} iterate_ctx;

static void iterate_put(void *state, const char *k, size_t klen, const char *v,
                        size_t vlen) {
  iterate_ctx *ic = state;
  ic->put(ic->ctx, k, klen, (const unsigned char *)v, vlen);
}

static void iterate_delete(void *state, const char *k, size_t klen) {
  iterate_ctx *ic = state;
  ic->del(ic->ctx, k, klen);
}

void lk_store_batch_iterate(const lk_store_batch *b, lk_store_batch_put_fn put,
                            lk_store_batch_delete_fn del, void *ctx) {
  iterate_ctx ic = {put, del, ctx};
  rocksdb_writebatch_iterate(b->wb, &ic, iterate_put, iterate_delete);
}

lk_status lk_store_batch_status(const lk_store_batch *b, lk_err *err) {
  if (b->poison != LK_OK) {
    return lk_fail(err, b->poison, "the batch is refused: %s", b->poison_why);
  }
  return LK_OK;
}

void lk_store_close(lk_store *s) {
  if (s == NULL) {
    return;
  }
  if (s->db != NULL) {
    rocksdb_close(s->db);
  }
  if (s->read != NULL) {
    rocksdb_readoptions_destroy(s->read);
  }
  if (s->sync_write != NULL) {
    rocksdb_writeoptions_destroy(s->sync_write);
  }
  if (s->opts != NULL) {
    rocksdb_options_destroy(s->opts);
  }
  if (s->table != NULL) {
    rocksdb_block_based_options_destroy(s->table);
  }
  if (s->cache != NULL) {
    rocksdb_cache_destroy(s->cache);
  }
  if (s->env != NULL) {
    rocksdb_env_destroy(s->env);
  }
  for (size_t i = 0; i < STORE_READ_CACHE_SLOTS; i++) {
    lk_store_value_free(s->cached[i].val, s->cached[i].vlen);
  }
  if (s->cache_mu_ready) {
    pthread_mutex_destroy(&s->cache_mu);
  }
  free(s);
}

/* FNV-1a of the key, folded to a slot. */
static store_cached *store_slot(lk_store *s, const char *key, size_t klen) {
  uint64_t h = 14695981039346656037u;
  for (size_t i = 0; i < klen; i++) {
    h = (h ^ (unsigned char)key[i]) * 1099511628211u;
  }
  return &s->cached[h % STORE_READ_CACHE_SLOTS];
}

/* A malloc'd copy of key's cached value read under generation gen, or
 * NULL (not cached, stale, or out of memory). */
static char *store_cache_lookup(lk_store *s, const char *key, size_t klen,
                                uint64_t gen, size_t *vlen) {
  char *v = NULL;
  if (klen > STORE_READ_CACHE_KEY_BYTES) {
    return NULL;
  }
  store_cached *c = store_slot(s, key, klen);
  pthread_mutex_lock(&s->cache_mu);
  if (c->val != NULL && c->gen == gen && c->klen == klen &&
      memcmp(c->key, key, klen) == 0) {
    v = malloc(c->vlen ? c->vlen : 1);
    if (v != NULL) {
      memcpy(v, c->val, c->vlen);
      *vlen = c->vlen;
    }
  }
  pthread_mutex_unlock(&s->cache_mu);
  return v;
}

/* Keeps a copy of key's value v, read under generation gen, unless a
 * write has finished since gen was taken. */
static void store_cache_keep(lk_store *s, const char *key, size_t klen,
                             uint64_t gen, const char *v, size_t vlen) {
  if (klen > STORE_READ_CACHE_KEY_BYTES ||
      vlen > STORE_READ_CACHE_VALUE_BYTES) {
    return;
  }
  unsigned char *copy = malloc(vlen ? vlen : 1);
  if (copy == NULL) {
    return;
  }
  memcpy(copy, v, vlen);
  store_cached *c = store_slot(s, key, klen);
  pthread_mutex_lock(&s->cache_mu);
  if (atomic_load(&s->gen) == gen) {
    unsigned char *old = c->val;
    size_t old_len = c->vlen;
    c->gen = gen;
    c->klen = klen;
    memcpy(c->key, key, klen);
    c->val = copy;
    c->vlen = vlen;
    copy = NULL;
    pthread_mutex_unlock(&s->cache_mu);
    lk_store_value_free(old, old_len);
  } else {
    pthread_mutex_unlock(&s->cache_mu);
  }
  lk_store_value_free(copy, vlen);
}

lk_status lk_store_get(lk_store *s, const char *key, unsigned char **val,
                       size_t *len, lk_err *err) {
  lk_status st = LK_OK;
  char *rerr = NULL;
  size_t klen = 0;
  size_t vlen = 0;
  char *v = NULL;
  if (s == NULL || val == NULL || len == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store get: NULL argument");
  }
  *val = NULL;
  *len = 0;
  if ((st = store_check_key(key, &klen, err)) != LK_OK) {
    goto done;
  }
  uint64_t gen = atomic_load(&s->gen);
  v = store_cache_lookup(s, key, klen, gen, &vlen);
  if (v == NULL) {
    v = rocksdb_get(s->db, s->read, key, klen, &vlen, &rerr);
    if (rerr != NULL) {
      st = store_fail(err, rerr, "cannot read", key);
      goto done;
    }
    if (v == NULL) {
      st = lk_fail(err, LK_NOT_FOUND, "no record %s in the store", key);
      goto done;
    }
    store_cache_keep(s, key, klen, gen, v, vlen);
  }
  *val = (unsigned char *)v;
  *len = vlen;
done:
  return st;
}

uint64_t lk_store_generation(lk_store *s) {
  return atomic_load(&s->gen);
}

void lk_store_value_free(unsigned char *val, size_t len) {
  if (val == NULL) {
    return;
  }
  lk_wipe(val, len);
  rocksdb_free(val);
}

lk_status lk_store_put(lk_store *s, const char *key, const unsigned char *val,
                       size_t len, lk_err *err) {
  lk_status st = LK_OK;
  char *rerr = NULL;
  size_t klen = 0;
  if (s == NULL || (val == NULL && len > 0)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store put: NULL argument");
  }
  if ((st = store_check_key(key, &klen, err)) != LK_OK) {
    goto done;
  }
  if (len > LK_STORE_MAX_VALUE_BYTES) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "store value for %s is %zu bytes, at most %u are allowed", key,
                 len, LK_STORE_MAX_VALUE_BYTES);
    goto done;
  }
  rocksdb_put(s->db, s->sync_write, key, klen, (const char *)val, len, &rerr);
  atomic_fetch_add(&s->gen, 1);
  if (rerr != NULL) {
    st = store_fail(err, rerr, "cannot write", key);
    goto done;
  }
done:
  return st;
}

lk_status lk_store_delete(lk_store *s, const char *key, lk_err *err) {
  lk_status st = LK_OK;
  char *rerr = NULL;
  size_t klen = 0;
  if (s == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store delete: NULL store");
  }
  if ((st = store_check_key(key, &klen, err)) != LK_OK) {
    goto done;
  }
  rocksdb_delete(s->db, s->sync_write, key, klen, &rerr);
  atomic_fetch_add(&s->gen, 1);
  if (rerr != NULL) {
    st = store_fail(err, rerr, "cannot delete", key);
    goto done;
  }
done:
  return st;
}

lk_store_batch *lk_store_batch_new(void) {
  lk_store_batch *b = calloc(1, sizeof(*b));
  if (b == NULL) {
    return NULL;
  }
  b->wb = rocksdb_writebatch_create();
  b->poison = LK_OK;
  return b;
}

/* Accounts for an operation of klen + vlen bytes; poisons the batch when the
 * key is bad or a cap is passed. Returns 1 when the operation may be added. */
static int store_batch_admit(lk_store_batch *b, const char *key, size_t *klen,
                             size_t vlen, int has_val) {
  lk_err ignored;
  if (b->poison != LK_OK) {
    return 0;
  }
  if (store_check_key(key, klen, &ignored) != LK_OK) {
    b->poison = LK_INVALID_ARGUMENT;
    b->poison_why = "a key in the batch is NULL or too long";
    return 0;
  }
  if (has_val && vlen > LK_STORE_MAX_VALUE_BYTES) {
    b->poison = LK_RESOURCE_EXHAUSTED;
    b->poison_why = "a value in the batch exceeds the per-value limit";
    return 0;
  }
  if (*klen + vlen > LK_STORE_MAX_BATCH_BYTES - b->bytes) {
    b->poison = LK_RESOURCE_EXHAUSTED;
    b->poison_why = "the batch exceeds its size limit; split it";
    return 0;
  }
  b->bytes += *klen + vlen;
  return 1;
}

void lk_store_batch_put(lk_store_batch *b, const char *key,
                        const unsigned char *val, size_t len) {
  size_t klen = 0;
  if (b == NULL) {
    return;
  }
  if (val == NULL && len > 0) {
    b->poison = LK_INVALID_ARGUMENT;
    b->poison_why = "a value in the batch is NULL";
    return;
  }
  if (store_batch_admit(b, key, &klen, len, 1)) {
    rocksdb_writebatch_put(b->wb, key, klen,
                           val != NULL ? (const char *)val : "", len);
  }
}

void lk_store_batch_delete(lk_store_batch *b, const char *key) {
  size_t klen = 0;
  if (b != NULL && store_batch_admit(b, key, &klen, 0, 0)) {
    rocksdb_writebatch_delete(b->wb, key, klen);
  }
}

lk_status lk_store_write(lk_store *s, lk_store_batch *b, lk_err *err) {
  char *rerr = NULL;
  if (s == NULL || b == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store write: NULL argument");
  }
  if (b->poison != LK_OK) {
    return lk_fail(err, b->poison, "store batch refused, nothing written: %s",
                   b->poison_why);
  }
  rocksdb_write(s->db, s->sync_write, b->wb, &rerr);
  atomic_fetch_add(&s->gen, 1);
  if (rerr != NULL) {
    return store_fail(err, rerr, "cannot write", "batch");
  }
  return LK_OK;
}

void lk_store_batch_destroy(lk_store_batch *b) {
  if (b == NULL) {
    return;
  }
  size_t n = 0;
  const char *rep = rocksdb_writebatch_data(b->wb, &n);
  /* The batch's representation buffer is owned by the batch and unused
   * after this point, so wiping it in place is safe. */
  lk_wipe((void *)rep, n);
  rocksdb_writebatch_destroy(b->wb);
  free(b);
}

/* Sets ub to the smallest key greater than every key starting with prefix
 * (prefix with trailing 0xff bytes dropped and its last byte incremented);
 * returns its length, 0 when no such bound exists. */
static size_t store_prefix_bound(const char *prefix, size_t plen, char *ub) {
  memcpy(ub, prefix, plen);
  while (plen > 0 && (unsigned char)ub[plen - 1] == 0xff) {
    plen--;
  }
  if (plen > 0) {
    ub[plen - 1] = (char)((unsigned char)ub[plen - 1] + 1);
  }
  return plen;
}

lk_status lk_store_scan(lk_store *s, const char *prefix, lk_store_scan_fn fn,
                        void *ctx, lk_err *err) {
  lk_status st = LK_OK;
  char *rerr = NULL;
  size_t plen = 0;
  size_t ub_len = 0;
  char ub[LK_STORE_MAX_KEY_BYTES];
  char keybuf[LK_STORE_MAX_KEY_BYTES + 1];
  rocksdb_readoptions_t *ro = NULL;
  rocksdb_iterator_t *it = NULL;
  if (s == NULL || fn == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store scan: NULL argument");
  }
  if ((st = store_check_key(prefix, &plen, err)) != LK_OK) {
    goto done;
  }
  ro = rocksdb_readoptions_create();
  ub_len = store_prefix_bound(prefix, plen, ub);
  if (ub_len > 0) {
    rocksdb_readoptions_set_iterate_upper_bound(ro, ub, ub_len);
  }
  it = rocksdb_create_iterator(s->db, ro);
  for (rocksdb_iter_seek(it, prefix, plen); rocksdb_iter_valid(it);
       rocksdb_iter_next(it)) {
    size_t klen = 0;
    size_t vlen = 0;
    const char *k = rocksdb_iter_key(it, &klen);
    if (klen < plen || memcmp(k, prefix, plen) != 0) {
      break;
    }
    if (klen > LK_STORE_MAX_KEY_BYTES) {
      st = lk_fail(err, LK_INTERNAL, "store holds a key longer than %u bytes",
                   LK_STORE_MAX_KEY_BYTES);
      goto done;
    }
    memcpy(keybuf, k, klen);
    keybuf[klen] = '\0';
    const char *v = rocksdb_iter_value(it, &vlen);
    if (fn(ctx, keybuf, klen, (const unsigned char *)v, vlen) != 0) {
      goto done;
    }
  }
  rocksdb_iter_get_error(it, &rerr);
  if (rerr != NULL) {
    st = store_fail(err, rerr, "cannot scan", prefix);
    goto done;
  }
done:
  if (it != NULL) {
    rocksdb_iter_destroy(it);
  }
  if (ro != NULL) {
    rocksdb_readoptions_destroy(ro);
  }
  return st;
}

lk_status lk_store_flush_compact(lk_store *s, lk_err *err) {
  lk_status st = LK_OK;
  char *rerr = NULL;
  if (s == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "store flush: NULL store");
  }
  rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
  rocksdb_compactoptions_t *co = rocksdb_compactoptions_create();
  rocksdb_flushoptions_set_wait(fo, 1);
  rocksdb_flush(s->db, fo, &rerr);
  if (rerr != NULL) {
    st = store_fail(err, rerr, "cannot flush", "memtables");
    goto done;
  }
  /* kForce rewrites the last level too, so tombstones meet the values they
   * delete and both are dropped. */
  rocksdb_compactoptions_set_exclusive_manual_compaction(co, 1);
  rocksdb_compactoptions_set_bottommost_level_compaction(
      co, STORE_BOTTOMMOST_FORCE);
  rocksdb_compact_range_opt(s->db, co, NULL, 0, NULL, 0);
  /* Obsolete WAL and table files may still be waiting for a background
   * purge; re-enabling deletions runs a full purge synchronously. */
  rocksdb_disable_file_deletions(s->db, &rerr);
  if (rerr != NULL) {
    st = store_fail(err, rerr, "cannot purge", "obsolete files");
    goto done;
  }
  rocksdb_enable_file_deletions(s->db, 1, &rerr);
  if (rerr != NULL) {
    st = store_fail(err, rerr, "cannot purge", "obsolete files");
    goto done;
  }
done:
  rocksdb_compactoptions_destroy(co);
  rocksdb_flushoptions_destroy(fo);
  return st;
}
