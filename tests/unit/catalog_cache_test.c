/*
 * catalog_cache_test.c - proves the call path's shared catalog records
 * (lk_catalog_peek_*, lib/catalog_cache) on a real RocksDB store: a peek
 * is served from the cache only while the store has not been written, and
 * sees every write the moment it returned, whichever path made it (the
 * catalog's commit and commit_if, raw store puts and deletes, a raw store
 * batch as the replica applier writes); misses and errors read exactly
 * like the getters'; a record one caller holds stays intact while other
 * threads replace and evict it; concurrent peeks never see a record older
 * than the last write that returned; the entry and byte caps hold.
 */
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/catalog.h"
#include "lib/catalog_cache.h"
#include "lib/store.h"

typedef struct {
  char dir[1024];
  lk_store *store;
  lk_catalog *cat;
} fx;

static int dir_counter;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  lk_err err;
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/catcache-%d-%d",
           tmp != NULL ? tmp : "/tmp", (int)getpid(), dir_counter++);
  if (lk_store_open(f->dir, &f->store, &err) != LK_OK) {
    fail_msg("store open: %s", err.msg);
  }
  if (lk_catalog_open(f->store, &f->cat, &err) != LK_OK) {
    fail_msg("catalog open: %s", err.msg);
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  lk_catalog_destroy(f->cat);
  lk_store_close(f->store);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

static void commit_ok(lk_catalog *cat, lk_store_batch *b) {
  lk_err err;
  if (lk_catalog_commit(cat, b, &err) != LK_OK) {
    fail_msg("commit: %s", err.msg);
  }
  lk_store_batch_destroy(b);
}

static void put_tool(lk_catalog *cat, const char *id, const char *url) {
  Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  t.id = (char *)id;
  t.description = (char *)"a tool";
  t.base_url = (char *)url;
  t.credential_type = (char *)"weather-key";
  assert_int_equal(lk_catalog_put_tool(cat, b, &t, &err), LK_OK);
  commit_ok(cat, b);
}

static void put_budget(lk_catalog *cat, const char *id, const char *agent,
                       int paused) {
  Latchkey__V1__Budget bg = LATCHKEY__V1__BUDGET__INIT;
  char *agents[1] = {(char *)agent};
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bg.id = (char *)id;
  bg.n_agents = 1;
  bg.agents = agents;
  bg.paused = paused;
  assert_int_equal(lk_catalog_put_budget(cat, b, &bg, &err), LK_OK);
  commit_ok(cat, b);
}

static void put_binding(lk_catalog *cat, const char *tool, const char *type,
                        const char *cred) {
  Latchkey__V1__Binding bd = LATCHKEY__V1__BINDING__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  bd.budget_id = (char *)"bud";
  bd.tool_id = (char *)tool;
  bd.credential_type = (char *)type;
  bd.credential_id = (char *)cred;
  assert_int_equal(lk_catalog_put_binding(cat, b, &bd, &err), LK_OK);
  commit_ok(cat, b);
}

/* A credential with one sealed field whose ciphertext is ct. */
static void put_credential(lk_catalog *cat, const char *id, const char *ct) {
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  Latchkey__V1__FieldValue fv = LATCHKEY__V1__FIELD_VALUE__INIT;
  Latchkey__V1__SealedValue sv = LATCHKEY__V1__SEALED_VALUE__INIT;
  Latchkey__V1__FieldValue *fields[1] = {&fv};
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  sv.ciphertext.data = (uint8_t *)ct;
  sv.ciphertext.len = strlen(ct);
  fv.name = (char *)"api_key";
  fv.secret = 1;
  fv.sealed = &sv;
  c.id = (char *)id;
  c.type = (char *)"weather-key";
  c.n_fields = 1;
  c.fields = fields;
  assert_int_equal(lk_catalog_put_credential(cat, b, &c, &err), LK_OK);
  commit_ok(cat, b);
}

static void put_type(lk_catalog *cat, const char *id, const char *name) {
  Latchkey__V1__CredentialType t = LATCHKEY__V1__CREDENTIAL_TYPE__INIT;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  t.id = (char *)id;
  t.description = (char *)name;
  assert_int_equal(lk_catalog_put_type(cat, b, &t, &err), LK_OK);
  commit_ok(cat, b);
}

/* Peeks tool id and asserts its base_url; returns the record released
 * (only its address, to compare). */
static const void *assert_tool_url(lk_catalog *cat, const char *id,
                                   const char *url) {
  const Latchkey__V1__Tool *t = NULL;
  lk_err err;
  if (lk_catalog_peek_tool(cat, id, &t, &err) != LK_OK) {
    fail_msg("peek tool %s: %s", id, err.msg);
  }
  assert_string_equal(t->base_url, url);
  lk_catalog_release_tool(t);
  return t;
}

/* Without writes the same decoded record is shared; any store write (even
 * of another key) makes the next peek decode again. */
static void peek_shares_a_record_until_the_store_is_written(void **state) {
  fx *f = *state;
  lk_err err;
  put_tool(f->cat, "weather", "https://a.example");
  const void *first = assert_tool_url(f->cat, "weather", "https://a.example");
  const Latchkey__V1__Tool *held = NULL;
  assert_int_equal(lk_catalog_peek_tool(f->cat, "weather", &held, &err), LK_OK);
  assert_ptr_equal(held, first);
  assert_int_equal(
      lk_store_put(f->store, "meta/other", (const unsigned char *)"x", 1, &err),
      LK_OK);
  const Latchkey__V1__Tool *again = NULL;
  assert_int_equal(lk_catalog_peek_tool(f->cat, "weather", &again, &err),
                   LK_OK);
  assert_ptr_not_equal(again, held);
  assert_string_equal(again->base_url, "https://a.example");
  lk_catalog_release_tool(again);
  lk_catalog_release_tool(held);
  size_t entries = 0;
  size_t bytes = 0;
  lk_catalog_peek_usage(f->cat, &entries, &bytes);
  assert_int_equal(entries, 1);
  assert_true(bytes > 0);
}

/* Every catalog write path: commit (put, delete) and commit_if, for each
 * kind the call path reads, is visible to the very next peek. */
static void peek_sees_every_catalog_write(void **state) {
  fx *f = *state;
  const Latchkey__V1__Budget *bg = NULL;
  const Latchkey__V1__Binding *bd = NULL;
  const Latchkey__V1__Credential *c = NULL;
  const Latchkey__V1__CredentialType *ty = NULL;
  lk_err err;

  put_tool(f->cat, "weather", "https://a.example");
  assert_tool_url(f->cat, "weather", "https://a.example");
  put_tool(f->cat, "weather", "https://b.example");
  assert_tool_url(f->cat, "weather", "https://b.example");
  lk_store_batch *b = lk_store_batch_new();
  assert_int_equal(lk_catalog_delete_tool(f->cat, b, "weather", &err), LK_OK);
  commit_ok(f->cat, b);
  const Latchkey__V1__Tool *t = NULL;
  assert_int_equal(lk_catalog_peek_tool(f->cat, "weather", &t, &err),
                   LK_NOT_FOUND);
  assert_null(t);

  /* pause, resume */
  put_budget(f->cat, "bud", "agent-1", 0);
  assert_int_equal(lk_catalog_peek_budget(f->cat, "bud", &bg, &err), LK_OK);
  assert_false(bg->paused);
  lk_catalog_release_budget(bg);
  put_budget(f->cat, "bud", "agent-1", 1);
  assert_int_equal(lk_catalog_peek_budget(f->cat, "bud", &bg, &err), LK_OK);
  assert_true(bg->paused);
  lk_catalog_release_budget(bg);

  /* bind, rebind, unbind (tool-specific and budget-wide) */
  put_binding(f->cat, "weather", NULL, "cred-a");
  put_binding(f->cat, NULL, "weather-key", "cred-t");
  assert_int_equal(
      lk_catalog_peek_binding_tool(f->cat, "bud", "weather", &bd, &err), LK_OK);
  assert_string_equal(bd->credential_id, "cred-a");
  lk_catalog_release_binding(bd);
  put_binding(f->cat, "weather", NULL, "cred-b");
  assert_int_equal(
      lk_catalog_peek_binding_tool(f->cat, "bud", "weather", &bd, &err), LK_OK);
  assert_string_equal(bd->credential_id, "cred-b");
  lk_catalog_release_binding(bd);
  Latchkey__V1__Binding unbind = LATCHKEY__V1__BINDING__INIT;
  unbind.budget_id = (char *)"bud";
  unbind.tool_id = (char *)"weather";
  b = lk_store_batch_new();
  assert_int_equal(lk_catalog_delete_binding(f->cat, b, &unbind, &err), LK_OK);
  commit_ok(f->cat, b);
  assert_int_equal(
      lk_catalog_peek_binding_tool(f->cat, "bud", "weather", &bd, &err),
      LK_NOT_FOUND);
  assert_int_equal(
      lk_catalog_peek_binding_type(f->cat, "bud", "weather-key", &bd, &err),
      LK_OK);
  assert_string_equal(bd->credential_id, "cred-t");
  lk_catalog_release_binding(bd);

  /* credential update through commit_if (the Admin / refresher path) */
  put_credential(f->cat, "cred-a", "sealed-v1");
  assert_int_equal(lk_catalog_peek_credential(f->cat, "cred-a", &c, &err),
                   LK_OK);
  assert_memory_equal(c->fields[0]->sealed->ciphertext.data, "sealed-v1", 9);
  lk_catalog_release_credential(c);
  Latchkey__V1__Credential *mine = NULL;
  lk_catalog_seen *seen = NULL;
  assert_int_equal(
      lk_catalog_get_credential_seen(f->cat, "cred-a", &mine, &seen, &err),
      LK_OK);
  mine->fields[0]->sealed->ciphertext.data[8] = '2';
  b = lk_store_batch_new();
  assert_int_equal(lk_catalog_put_credential(f->cat, b, mine, &err), LK_OK);
  int changed = 0;
  assert_int_equal(lk_catalog_commit_if(f->cat, b, &seen, 1, &changed, &err),
                   LK_OK);
  lk_store_batch_destroy(b);
  lk_catalog_seen_free(seen);
  lk_catalog_free_credential(mine);
  assert_int_equal(lk_catalog_peek_credential(f->cat, "cred-a", &c, &err),
                   LK_OK);
  assert_memory_equal(c->fields[0]->sealed->ciphertext.data, "sealed-v2", 9);
  lk_catalog_release_credential(c);

  /* type change */
  put_type(f->cat, "weather-key", "Weather v1");
  assert_int_equal(lk_catalog_peek_type(f->cat, "weather-key", &ty, &err),
                   LK_OK);
  assert_string_equal(ty->description, "Weather v1");
  lk_catalog_release_type(ty);
  put_type(f->cat, "weather-key", "Weather v2");
  assert_int_equal(lk_catalog_peek_type(f->cat, "weather-key", &ty, &err),
                   LK_OK);
  assert_string_equal(ty->description, "Weather v2");
  lk_catalog_release_type(ty);
}

/* Writes that bypass the catalog (raw puts and deletes, and a raw batch
 * as the replica applier and the control plane's mirror write) are
 * visible to the next peek too, through a second catalog over the store
 * as well. */
static void peek_sees_raw_store_and_batch_writes(void **state) {
  fx *f = *state;
  lk_catalog *other = NULL;
  lk_err err;
  assert_int_equal(lk_catalog_open(f->store, &other, &err), LK_OK);

  put_tool(other, "weather", "https://a.example");
  assert_tool_url(f->cat, "weather", "https://a.example");
  put_tool(other, "weather", "https://b.example");
  assert_tool_url(f->cat, "weather", "https://b.example");

  /* A batch built elsewhere, applied with lk_store_write. */
  Latchkey__V1__Tool t = LATCHKEY__V1__TOOL__INIT;
  t.id = (char *)"weather";
  t.description = (char *)"";
  t.base_url = (char *)"https://replica.example";
  t.credential_type = (char *)"";
  size_t len = latchkey__v1__tool__get_packed_size(&t);
  unsigned char *buf = malloc(len);
  assert_non_null(buf);
  latchkey__v1__tool__pack(&t, buf);
  lk_store_batch *b = lk_store_batch_new();
  lk_store_batch_put(b, "tool/weather", buf, len);
  assert_int_equal(lk_store_write(f->store, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  assert_tool_url(f->cat, "weather", "https://replica.example");

  /* A raw put, then a raw delete. */
  t.base_url = (char *)"https://raw.example";
  len = latchkey__v1__tool__get_packed_size(&t);
  unsigned char *buf2 = realloc(buf, len);
  assert_non_null(buf2);
  buf = buf2;
  latchkey__v1__tool__pack(&t, buf);
  assert_int_equal(lk_store_put(f->store, "tool/weather", buf, len, &err),
                   LK_OK);
  free(buf);
  assert_tool_url(f->cat, "weather", "https://raw.example");
  assert_int_equal(lk_store_delete(f->store, "tool/weather", &err), LK_OK);
  const Latchkey__V1__Tool *gone = NULL;
  assert_int_equal(lk_catalog_peek_tool(f->cat, "weather", &gone, &err),
                   LK_NOT_FOUND);
  lk_catalog_destroy(other);
}

/* Misses, invalid ids and undecodable records answer exactly what the
 * getters answer (code and message). */
static void peek_errors_match_the_getters(void **state) {
  fx *f = *state;
  lk_err a;
  lk_err b;
  const Latchkey__V1__Tool *pt = NULL;
  Latchkey__V1__Tool *gt = NULL;
  const Latchkey__V1__Binding *pb = NULL;
  Latchkey__V1__Binding *gb = NULL;
  const Latchkey__V1__Budget *pbg = NULL;
  Latchkey__V1__Budget *gbg = NULL;

  assert_int_equal(lk_catalog_peek_tool(f->cat, "nope", &pt, &a), LK_NOT_FOUND);
  assert_int_equal(lk_catalog_get_tool(f->cat, "nope", &gt, &b), LK_NOT_FOUND);
  assert_string_equal(a.msg, b.msg);
  assert_int_equal(lk_catalog_peek_budget(f->cat, "no/pe", &pbg, &a),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_catalog_get_budget(f->cat, "no/pe", &gbg, &b),
                   LK_INVALID_ARGUMENT);
  assert_string_equal(a.msg, b.msg);
  assert_int_equal(
      lk_catalog_peek_binding_tool(f->cat, "bud", "weather", &pb, &a),
      LK_NOT_FOUND);
  assert_int_equal(
      lk_catalog_get_binding_tool(f->cat, "bud", "weather", &gb, &b),
      LK_NOT_FOUND);
  assert_string_equal(a.msg, b.msg);
  assert_int_equal(
      lk_catalog_peek_binding_type(f->cat, "bud", "weather-key", &pb, &a),
      LK_NOT_FOUND);
  assert_int_equal(
      lk_catalog_get_binding_type(f->cat, "bud", "weather-key", &gb, &b),
      LK_NOT_FOUND);
  assert_string_equal(a.msg, b.msg);
  assert_int_equal(lk_catalog_peek_binding_type(f->cat, "bud", "", &pb, &a),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(lk_catalog_get_binding_type(f->cat, "bud", "", &gb, &b),
                   LK_INVALID_ARGUMENT);
  assert_string_equal(a.msg, b.msg);

  const unsigned char junk[3] = {0x0a, 0x09, 'x'};
  assert_int_equal(
      lk_store_put(f->store, "tool/broken", junk, sizeof(junk), &a), LK_OK);
  assert_int_equal(lk_catalog_peek_tool(f->cat, "broken", &pt, &a),
                   LK_INTERNAL);
  assert_int_equal(lk_catalog_get_tool(f->cat, "broken", &gt, &b), LK_INTERNAL);
  assert_string_equal(a.msg, b.msg);
  assert_null(pt);
  assert_null(gt);
  assert_null(pb);
  assert_null(gb);
  assert_null(pbg);
  assert_null(gbg);
}

typedef struct {
  lk_catalog *cat;
  atomic_int done;
} replacer;

/* Rewrites the tool and peeks it (replacing the cached entry), and fills
 * the cache with other tools so the entry is evicted too. */
static void *replace_tool(void *arg) {
  replacer *r = arg;
  for (int i = 0; i < 40; i++) {
    char url[64];
    char id[32];
    snprintf(url, sizeof(url), "https://v%d.example", i);
    put_tool(r->cat, "weather", url);
    assert_tool_url(r->cat, "weather", url);
    snprintf(id, sizeof(id), "filler-%d", i);
    put_tool(r->cat, id, url);
    assert_tool_url(r->cat, id, url);
  }
  atomic_store(&r->done, 1);
  return NULL;
}

/* A record one caller holds keeps its content while another thread
 * rewrites the record, replaces the cache entry and evicts it. */
static void held_record_survives_replacement(void **state) {
  fx *f = *state;
  const Latchkey__V1__Tool *held = NULL;
  lk_err err;
  put_tool(f->cat, "weather", "https://held.example");
  assert_int_equal(lk_catalog_peek_tool(f->cat, "weather", &held, &err), LK_OK);
  replacer r = {.cat = f->cat};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, replace_tool, &r), 0);
  pthread_join(th, NULL);
  assert_int_equal(atomic_load(&r.done), 1);
  assert_string_equal(held->id, "weather");
  assert_string_equal(held->base_url, "https://held.example");
  assert_string_equal(held->credential_type, "weather-key");
  assert_tool_url(f->cat, "weather", "https://v39.example");
  lk_catalog_release_tool(held);
}

/* A held record also outlives the catalog that handed it out. */
static void held_record_outlives_the_catalog(void **state) {
  fx *f = *state;
  const Latchkey__V1__Budget *held = NULL;
  lk_err err;
  put_budget(f->cat, "bud", "agent-1", 0);
  assert_int_equal(lk_catalog_peek_budget(f->cat, "bud", &held, &err), LK_OK);
  lk_catalog_destroy(f->cat);
  f->cat = NULL;
  assert_string_equal(held->agents[0], "agent-1");
  lk_catalog_release_budget(held);
}

typedef struct {
  lk_catalog *cat;
  atomic_int published; /* the last version whose write returned */
  atomic_int done;
  atomic_int stale;
  atomic_int peeks;
} race_ctx;

/* Peeks the budget: its agent is "v<N>", N never older than the version
 * whose write had returned before the peek began. */
static void *race_reader(void *arg) {
  race_ctx *rc = arg;
  while (!atomic_load(&rc->done)) {
    int floor = atomic_load(&rc->published);
    const Latchkey__V1__Budget *bg = NULL;
    lk_err err;
    if (lk_catalog_peek_budget(rc->cat, "bud", &bg, &err) != LK_OK) {
      atomic_fetch_add(&rc->stale, 1);
      continue;
    }
    int seen = atoi(bg->agents[0] + 1);
    /* Odd versions pause the budget: the flag travels with the version. */
    if (seen < floor || (int)bg->paused != (seen & 1)) {
      atomic_fetch_add(&rc->stale, 1);
    }
    lk_catalog_release_budget(bg);
    atomic_fetch_add(&rc->peeks, 1);
  }
  return NULL;
}

/* With readers peeking one record while a writer rewrites it, no peek
 * ever answers a version older than the last write that had returned. */
static void peeks_race_writes_without_going_stale(void **state) {
  fx *f = *state;
  race_ctx rc = {.cat = f->cat};
  put_budget(f->cat, "bud", "v0", 0);
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    assert_int_equal(pthread_create(&th[i], NULL, race_reader, &rc), 0);
  }
  for (int v = 1; v <= 300; v++) {
    char agent[16];
    snprintf(agent, sizeof(agent), "v%d", v);
    put_budget(f->cat, "bud", agent, v & 1);
    atomic_store(&rc.published, v);
    const Latchkey__V1__Budget *bg = NULL;
    lk_err err;
    assert_int_equal(lk_catalog_peek_budget(f->cat, "bud", &bg, &err), LK_OK);
    assert_string_equal(bg->agents[0], agent);
    lk_catalog_release_budget(bg);
  }
  atomic_store(&rc.done, 1);
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
  }
  assert_int_equal(atomic_load(&rc.stale), 0);
  assert_true(atomic_load(&rc.peeks) > 0);
}

/* The cache itself, with small caps: never more than its entries and
 * bytes, and a record too big to keep is still answered, just not kept. */
static void caps_hold(void **state) {
  fx *f = *state;
  lk_catalog_cache *cc = NULL;
  lk_err err;
  const size_t max_bytes = 8192;
  assert_int_equal(lk_catalog_cache_new(8, max_bytes, &cc, &err), LK_OK);
  for (int i = 0; i < 64; i++) {
    char id[32];
    char key[48];
    snprintf(id, sizeof(id), "tool-%02d", i);
    snprintf(key, sizeof(key), "tool/%s", id);
    put_tool(f->cat, id, "https://a.example");
    const ProtobufCMessage *m = NULL;
    assert_int_equal(
        lk_catalog_cache_get(cc, f->store, key, &latchkey__v1__tool__descriptor,
                             "tool", &m, &err),
        LK_OK);
    assert_string_equal(((const Latchkey__V1__Tool *)(const void *)m)->id, id);
    lk_catalog_cache_release(m);
    size_t entries = 0;
    size_t bytes = 0;
    lk_catalog_cache_usage(cc, &entries, &bytes);
    assert_true(entries >= 1 && entries <= 8);
    assert_true(bytes <= max_bytes);
  }
  /* A tool bigger than max_bytes / 8 decodes but is not kept. */
  char big[2048];
  memset(big, 'u', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  memcpy(big, "https://", 8);
  put_tool(f->cat, "big", big);
  const ProtobufCMessage *m = NULL;
  assert_int_equal(
      lk_catalog_cache_get(cc, f->store, "tool/big",
                           &latchkey__v1__tool__descriptor, "tool", &m, &err),
      LK_OK);
  assert_string_equal(((const Latchkey__V1__Tool *)(const void *)m)->base_url,
                      big);
  const ProtobufCMessage *again = NULL;
  assert_int_equal(lk_catalog_cache_get(cc, f->store, "tool/big",
                                        &latchkey__v1__tool__descriptor, "tool",
                                        &again, &err),
                   LK_OK);
  assert_ptr_not_equal(again, m); /* decoded again: it was not kept */
  size_t entries = 0;
  size_t bytes = 0;
  lk_catalog_cache_usage(cc, &entries, &bytes);
  assert_true(entries <= 8);
  assert_true(bytes <= max_bytes);
  lk_catalog_cache_release(again);
  lk_catalog_cache_release(m);
  lk_catalog_cache_destroy(cc);
  lk_catalog_cache_destroy(NULL);
  lk_catalog_cache_release(NULL);

  /* The catalog's own cache under many distinct records. */
  for (int i = 0; i < 400; i++) {
    char id[32];
    snprintf(id, sizeof(id), "t%03d", i);
    put_tool(f->cat, id, "https://a.example");
  }
  for (int i = 0; i < 400; i++) {
    char id[32];
    snprintf(id, sizeof(id), "t%03d", i);
    assert_tool_url(f->cat, id, "https://a.example");
  }
  lk_catalog_peek_usage(f->cat, &entries, &bytes);
  assert_true(entries > 0 && entries <= LK_CATALOG_CACHE_ENTRIES);
  assert_true(bytes <= LK_CATALOG_CACHE_BYTES);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          peek_shares_a_record_until_the_store_is_written, setup, teardown),
      cmocka_unit_test_setup_teardown(peek_sees_every_catalog_write, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(peek_sees_raw_store_and_batch_writes,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(peek_errors_match_the_getters, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(held_record_survives_replacement, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(held_record_outlives_the_catalog, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(peeks_race_writes_without_going_stale,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(caps_hold, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
