/*
 * catalog_cache.c - decoded catalog records shared by reference (see
 * catalog_cache.h).
 *
 * Shape:
 *  - The table is set-associative: a key's FNV-1a hash picks a set of
 *    WAYS slots, so a lookup compares at most WAYS keys. A slot holds a
 *    record and the table's reference to it; one mutex guards the table
 *    (held for a few compares per lookup; the call path takes it about
 *    six times per call).
 *  - A record is one malloc'd block: a header, the top-level message
 *    struct, then the key. protobuf-c unpacks into blocks from
 *    lib/wipealloc through an allocator bound to the record; the unpacked
 *    top-level struct is then copied into the record and its own block
 *    freed, so the message pointer handed out leads back to its record
 *    (lk_catalog_cache_release needs nothing else). protobuf-c messages
 *    never point into themselves, so the copy is the same message; the
 *    allocator's free skips the embedded struct when free_unpacked
 *    reaches it.
 *  - Validity is the store's write generation (lk_store_generation),
 *    taken before the lookup and so before the store read of a miss: a
 *    record is tagged with it and served only while it is current. A
 *    stale record met by a lookup is dropped then; when the byte cap
 *    would be passed, stale records go first, then the least recently
 *    used.
 *  - Reference counts are atomic, so a release takes no lock; the last
 *    one wipes and frees every block of the record.
 */
#include "lib/catalog_cache.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/secret.h"
#include "lib/wipealloc.h"

#define WAYS 4u
/* What lib/wipealloc adds in front of every block (its header). */
#define BLOCK_OVERHEAD sizeof(max_align_t)

typedef struct rec {
  atomic_size_t refs;
  uint64_t gen;  /* the store generation the record was read under */
  uint64_t hash; /* of the key */
  uint64_t tick; /* last use, for eviction (under the table's mutex) */
  size_t bytes;  /* every block of the record, overhead included */
  size_t size;   /* of this block */
  const ProtobufCMessageDescriptor *desc;
  ProtobufCAllocator alloc; /* binds wipealloc to this record */
  size_t klen;
  char *key; /* in this block, after the message */
  alignas(max_align_t) unsigned char msg[];
} rec;

struct lk_catalog_cache {
  pthread_mutex_t mu;
  size_t sets;
  size_t max_bytes;
  size_t entries; /* records in slots */
  size_t bytes;   /* their bytes */
  uint64_t tick;
  rec **slots; /* sets * WAYS */
};

static void *rec_alloc(void *data, size_t size) {
  rec *r = data;
  void *p = lk_wipealloc_malloc(size);
  if (p != NULL) {
    r->bytes += size + BLOCK_OVERHEAD;
  }
  return p;
}

static void rec_free(void *data, void *p) {
  rec *r = data;
  if (p == (void *)r->msg) {
    return; /* the top-level struct lives in the record's own block */
  }
  lk_wipealloc_free(p);
}

/* Wipes and frees every block of r. */
static void rec_destroy(rec *r) {
  protobuf_c_message_free_unpacked((ProtobufCMessage *)(void *)r->msg,
                                   &r->alloc);
  lk_wipe_free(r, r->size);
}

static void rec_unref(rec *r) {
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) {
    rec_destroy(r);
  }
}

static uint64_t hash_key(const char *key, size_t klen) {
  uint64_t h = 14695981039346656037u;
  for (size_t i = 0; i < klen; i++) {
    h = (h ^ (unsigned char)key[i]) * 1099511628211u;
  }
  return h;
}

lk_status lk_catalog_cache_new(size_t max_entries, size_t max_bytes,
                               lk_catalog_cache **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_catalog_cache *cc = calloc(1, sizeof(*cc));
  *out = NULL;
  if (cc == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory for the cache");
    goto done;
  }
  cc->sets = max_entries / WAYS > 0 ? max_entries / WAYS : 1;
  cc->max_bytes = max_bytes;
  cc->slots = calloc(cc->sets * WAYS, sizeof(*cc->slots));
  if (cc->slots == NULL || pthread_mutex_init(&cc->mu, NULL) != 0) {
    free(cc->slots);
    free(cc);
    cc = NULL;
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory for the cache");
    goto done;
  }
  *out = cc;
done:
  return st;
}

void lk_catalog_cache_destroy(lk_catalog_cache *cc) {
  if (cc == NULL) {
    return;
  }
  for (size_t i = 0; i < cc->sets * WAYS; i++) {
    if (cc->slots[i] != NULL) {
      rec_unref(cc->slots[i]);
    }
  }
  pthread_mutex_destroy(&cc->mu);
  free(cc->slots);
  free(cc);
}

/* Empties slot (under mu), giving back the table's reference. */
static void drop_slot(lk_catalog_cache *cc, rec **slot) {
  rec *r = *slot;
  *slot = NULL;
  cc->entries--;
  cc->bytes -= r->bytes;
  rec_unref(r);
}

/* Drops one record (under mu): a stale one if any, else the least
 * recently used. Returns 0 when the table is empty. */
static int evict_one(lk_catalog_cache *cc, uint64_t gen) {
  rec **victim = NULL;
  for (size_t i = 0; i < cc->sets * WAYS; i++) {
    rec **s = &cc->slots[i];
    if (*s == NULL) {
      continue;
    }
    if ((*s)->gen != gen) {
      victim = s;
      break;
    }
    if (victim == NULL || (*s)->tick < (*victim)->tick) {
      victim = s;
    }
  }
  if (victim == NULL) {
    return 0;
  }
  drop_slot(cc, victim);
  return 1;
}

/* The slot of set that holds key (or NULL), under mu. */
static rec **find_slot(rec **set, const char *key, size_t klen, uint64_t hash,
                       const ProtobufCMessageDescriptor *desc) {
  for (size_t w = 0; w < WAYS; w++) {
    rec *r = set[w];
    if (r != NULL && r->hash == hash && r->klen == klen && r->desc == desc &&
        memcmp(r->key, key, klen) == 0) {
      return &set[w];
    }
  }
  return NULL;
}

/* Returns a held reference to key's record when one read under gen is
 * cached; drops a stale one. */
static rec *lookup(lk_catalog_cache *cc, const char *key, size_t klen,
                   uint64_t hash, const ProtobufCMessageDescriptor *desc,
                   uint64_t gen) {
  rec *hit = NULL;
  pthread_mutex_lock(&cc->mu);
  rec **slot =
      find_slot(&cc->slots[(hash % cc->sets) * WAYS], key, klen, hash, desc);
  if (slot != NULL && (*slot)->gen == gen) {
    hit = *slot;
    atomic_fetch_add_explicit(&hit->refs, 1, memory_order_relaxed);
    hit->tick = ++cc->tick;
  } else if (slot != NULL && (*slot)->gen < gen) {
    drop_slot(cc, slot); /* stale; a newer one (a slower reader's) stays */
  }
  pthread_mutex_unlock(&cc->mu);
  return hit;
}

/* Keeps r (read under r->gen) unless it is too big or a write has
 * finished since r->gen was taken. */
static void keep(lk_catalog_cache *cc, lk_store *s, rec *r) {
  if (r->klen > LK_CATALOG_CACHE_KEY_MAX || r->bytes > cc->max_bytes / 8) {
    return;
  }
  pthread_mutex_lock(&cc->mu);
  if (lk_store_generation(s) != r->gen) {
    goto done;
  }
  rec **set = &cc->slots[(r->hash % cc->sets) * WAYS];
  rec **slot = find_slot(set, r->key, r->klen, r->hash, r->desc);
  for (size_t w = 0; slot == NULL && w < WAYS; w++) {
    if (set[w] == NULL) {
      slot = &set[w];
    }
  }
  for (size_t w = 0; slot == NULL && w < WAYS; w++) {
    if (set[w]->gen != r->gen) {
      slot = &set[w];
    }
  }
  for (size_t w = 0; slot == NULL && w < WAYS; w++) {
    if (w == 0 || set[w]->tick < (*slot)->tick) {
      slot = &set[w];
    }
  }
  if (*slot != NULL) {
    drop_slot(cc, slot);
  }
  while (cc->bytes + r->bytes > cc->max_bytes && evict_one(cc, r->gen)) {
  }
  atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
  r->tick = ++cc->tick;
  *slot = r;
  cc->entries++;
  cc->bytes += r->bytes;
done:
  pthread_mutex_unlock(&cc->mu);
}

/* Decodes val as desc into a new record for key holding one reference,
 * or NULL (*bad set when the bytes do not decode, else out of memory). */
static rec *decode(const ProtobufCMessageDescriptor *desc, const char *key,
                   size_t klen, uint64_t hash, const unsigned char *val,
                   size_t len, int *bad) {
  size_t align = alignof(max_align_t);
  size_t msz = (desc->sizeof_message + align - 1) / align * align;
  size_t total = offsetof(rec, msg) + msz + klen + 1;
  rec *r = calloc(1, total);
  *bad = 0;
  if (r == NULL) {
    return NULL;
  }
  r->size = total;
  r->desc = desc;
  r->hash = hash;
  r->klen = klen;
  r->key = (char *)r->msg + msz;
  memcpy(r->key, key, klen);
  r->alloc.alloc = rec_alloc;
  r->alloc.free = rec_free;
  r->alloc.allocator_data = r;
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, &r->alloc, len, val);
  if (m == NULL) {
    *bad = 1;
    free(r);
    return NULL;
  }
  memcpy(r->msg, m, desc->sizeof_message);
  lk_wipealloc_free(m);
  r->bytes += total - (desc->sizeof_message + BLOCK_OVERHEAD);
  atomic_init(&r->refs, 1);
  return r;
}

lk_status lk_catalog_cache_get(lk_catalog_cache *cc, lk_store *s,
                               const char *key,
                               const ProtobufCMessageDescriptor *desc,
                               const char *noun, const ProtobufCMessage **out,
                               lk_err *err) {
  lk_status st = LK_OK;
  unsigned char *val = NULL;
  size_t len = 0;
  size_t klen = strnlen(key, LK_STORE_MAX_KEY_BYTES + 1);
  uint64_t hash = hash_key(key, klen);
  /* Taken before the lookup, so before a miss's store read. */
  uint64_t gen = lk_store_generation(s);
  rec *r = lookup(cc, key, klen, hash, desc, gen);
  int bad = 0;

  if (r != NULL) {
    goto done;
  }
  if ((st = lk_store_get(s, key, &val, &len, err)) != LK_OK) {
    goto done;
  }
  r = decode(desc, key, klen, hash, val, len, &bad);
  if (r == NULL) {
    st = bad ? lk_fail(err, LK_INTERNAL,
                       "stored record %s does not decode; restore the data "
                       "dir from a backup or re-create the %s",
                       key, noun)
             : lk_fail(err, LK_RESOURCE_EXHAUSTED,
                       "out of memory decoding %s; retry", key);
    goto done;
  }
  r->gen = gen;
  keep(cc, s, r);
done:
  lk_store_value_free(val, len); /* wipes */
  if (st == LK_OK) {
    *out = (const ProtobufCMessage *)(const void *)r->msg;
  }
  return st;
}

void lk_catalog_cache_release(const ProtobufCMessage *m) {
  if (m != NULL) {
    rec_unref((rec *)(void *)((const unsigned char *)m - offsetof(rec, msg)));
  }
}

void lk_catalog_cache_usage(lk_catalog_cache *cc, size_t *entries,
                            size_t *bytes) {
  pthread_mutex_lock(&cc->mu);
  *entries = cc->entries;
  *bytes = cc->bytes;
  pthread_mutex_unlock(&cc->mu);
}
