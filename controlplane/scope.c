/*
 * scope.c - catalog views and per-agent scopes (rule in scope.h).
 *
 * A view keeps every record as (key, encoding, hash) in one array sorted by
 * key, and beside it small relation tables that point into that array by
 * index: tools and credentials with their type, types, budgets and
 * bindings (decoded, they are small), an agent -> budget index and a
 * type -> tools index. A scope is then a sorted, duplicate-free array of
 * record indices: the records array is sorted by key, so index order is
 * key order, and no key string is copied per scope.
 *
 * Computing a scope costs a few binary searches per budget and binding of
 * the agent plus a sort of the result; it never rereads the catalog.
 */
#include "controlplane/scope.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "lib/secret.h"

/* One record of the catalog. */
typedef struct {
  char *key;
  unsigned char *val;
  size_t len;
  unsigned char hash[LK_SCOPE_HASH_BYTES];
} rec;

/* A tool, credential or credential type: its id, its credential type (""
 * for a tool needing none, NULL for a type) and its record. */
typedef struct {
  char *id;
  char *type;
  char *key; /* the record's key (owned by recs), resolved to rec */
  size_t rec;
} node;

typedef struct {
  Latchkey__V1__Budget *m;
  char *key;
  size_t rec;
} budget_ref;

typedef struct {
  Latchkey__V1__Binding *m;
  char *key;
  size_t rec;
} bind_ref;

/* agent -> budget, or credential type -> tool (by index). */
typedef struct {
  const char *name;
  size_t idx;
} link;

struct lk_scope_view {
  rec *recs;
  size_t n_recs, cap_recs;
  size_t bytes;
  node *tools;
  size_t n_tools, cap_tools;
  node *creds;
  size_t n_creds, cap_creds;
  node *types;
  size_t n_types, cap_types;
  budget_ref *budgets;
  size_t n_budgets, cap_budgets;
  bind_ref *binds;
  size_t n_binds, cap_binds;
  link *agents; /* sorted by agent id */
  size_t n_agents, cap_agents;
  link *by_type; /* tools with a credential type, sorted by it */
  size_t n_by_type, cap_by_type;
  size_t *untyped; /* tools needing no credential */
  size_t n_untyped, cap_untyped;
};

struct lk_scope {
  const lk_scope_view *v;
  lk_scope_view *owned;
  size_t *idx;
  size_t n;
};

/* Returns a pointer to a new zeroed slot at the end of the array whose
 * pointer is at arr (any element type; read and written with memcpy),
 * growing it up to LK_SCOPE_MAX_RECORDS elements, or NULL. */
static void *push(void *arr, size_t *n, size_t *cap, size_t elem) {
  unsigned char *a;
  memcpy(&a, arr, sizeof(a));
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    if (nc > LK_SCOPE_MAX_RECORDS) {
      nc = LK_SCOPE_MAX_RECORDS;
    }
    if (*n >= nc) {
      return NULL;
    }
    unsigned char *p = realloc(a, nc * elem);
    if (p == NULL) {
      return NULL;
    }
    a = p;
    memcpy(arr, &a, sizeof(a));
    *cap = nc;
  }
  unsigned char *slot = a + *n * elem;
  memset(slot, 0, elem);
  (*n)++;
  return slot;
}

/* qsort that accepts an empty (NULL) array. */
static void sort(void *base, size_t n, size_t elem,
                 int (*cmp)(const void *, const void *)) {
  if (n > 1) {
    qsort(base, n, elem, cmp);
  }
}

static lk_status full(lk_err *err, const char *what) {
  return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "the catalog is too large to replicate (%s; at most %u "
                 "records and %u encoded bytes)",
                 what, LK_SCOPE_MAX_RECORDS, LK_SCOPE_MAX_VIEW_BYTES);
}

/* Listing state: the view being filled and the first error. */
typedef struct {
  lk_scope_view *v;
  lk_status st;
  lk_err *err;
} loader;

/* Encodes m, hashes it and appends it as a record; *key_out borrows the
 * record's key. */
static lk_status add_rec(loader *l, const ProtobufCMessage *m, char **key_out) {
  lk_scope_view *v = l->v;
  char key[LK_CATALOG_KEY_MAX];
  lk_status st = lk_catalog_key_of(m, key, l->err);
  if (st != LK_OK) {
    return st;
  }
  size_t len = protobuf_c_message_get_packed_size(m);
  if (len > LK_SCOPE_MAX_VIEW_BYTES - v->bytes) {
    return full(l->err, key);
  }
  rec *r = push(&v->recs, &v->n_recs, &v->cap_recs, sizeof(*r));
  if (r == NULL) {
    return full(l->err, "too many records or out of memory");
  }
  r->key = strdup(key);
  r->val = malloc(len > 0 ? len : 1);
  if (r->key == NULL || r->val == NULL) {
    return lk_fail(l->err, LK_RESOURCE_EXHAUSTED,
                   "out of memory reading the catalog");
  }
  r->len = protobuf_c_message_pack(m, r->val);
  crypto_generichash(r->hash, sizeof(r->hash), r->val, r->len, NULL, 0);
  v->bytes += len;
  *key_out = r->key;
  return LK_OK;
}

/* Appends a node (id, type) for record key; type NULL stays NULL. */
static lk_status add_node(loader *l, node **arr, size_t *n, size_t *cap,
                          const char *id, const char *type, char *key) {
  node *nd = push(arr, n, cap, sizeof(*nd));
  if (nd == NULL) {
    return full(l->err, "too many records or out of memory");
  }
  nd->key = key;
  nd->id = strdup(id);
  nd->type = type != NULL ? strdup(type) : NULL;
  if (nd->id == NULL || (type != NULL && nd->type == NULL)) {
    return lk_fail(l->err, LK_RESOURCE_EXHAUSTED,
                   "out of memory reading the catalog");
  }
  return LK_OK;
}

static int on_tool(void *ctx, Latchkey__V1__Tool *t) {
  loader *l = ctx;
  char *key = NULL;
  l->st = add_rec(l, &t->base, &key);
  if (l->st == LK_OK) {
    l->st = add_node(l, &l->v->tools, &l->v->n_tools, &l->v->cap_tools, t->id,
                     t->credential_type != NULL ? t->credential_type : "", key);
  }
  lk_catalog_free_tool(t);
  return l->st != LK_OK;
}

static int on_type(void *ctx, Latchkey__V1__CredentialType *t) {
  loader *l = ctx;
  char *key = NULL;
  l->st = add_rec(l, &t->base, &key);
  if (l->st == LK_OK) {
    l->st = add_node(l, &l->v->types, &l->v->n_types, &l->v->cap_types, t->id,
                     NULL, key);
  }
  lk_catalog_free_type(t);
  return l->st != LK_OK;
}

static int on_cred(void *ctx, Latchkey__V1__Credential *c) {
  loader *l = ctx;
  char *key = NULL;
  l->st = add_rec(l, &c->base, &key);
  if (l->st == LK_OK) {
    l->st = add_node(l, &l->v->creds, &l->v->n_creds, &l->v->cap_creds, c->id,
                     c->type != NULL ? c->type : "", key);
  }
  lk_catalog_free_credential(c);
  return l->st != LK_OK;
}

static int on_budget(void *ctx, Latchkey__V1__Budget *b) {
  loader *l = ctx;
  char *key = NULL;
  l->st = add_rec(l, &b->base, &key);
  if (l->st == LK_OK) {
    budget_ref *r =
        push(&l->v->budgets, &l->v->n_budgets, &l->v->cap_budgets, sizeof(*r));
    if (r == NULL) {
      l->st = full(l->err, "too many budgets or out of memory");
    } else {
      r->m = b;
      r->key = key;
      return 0;
    }
  }
  lk_catalog_free_budget(b);
  return 1;
}

static int on_bind(void *ctx, Latchkey__V1__Binding *b) {
  loader *l = ctx;
  char *key = NULL;
  l->st = add_rec(l, &b->base, &key);
  if (l->st == LK_OK) {
    bind_ref *r =
        push(&l->v->binds, &l->v->n_binds, &l->v->cap_binds, sizeof(*r));
    if (r == NULL) {
      l->st = full(l->err, "too many bindings or out of memory");
    } else {
      r->m = b;
      r->key = key;
      return 0;
    }
  }
  lk_catalog_free_binding(b);
  return 1;
}

static int cmp_rec(const void *a, const void *b) {
  return strcmp(((const rec *)a)->key, ((const rec *)b)->key);
}

static int cmp_node(const void *a, const void *b) {
  return strcmp(((const node *)a)->id, ((const node *)b)->id);
}

static int cmp_budget(const void *a, const void *b) {
  return strcmp(((const budget_ref *)a)->m->id, ((const budget_ref *)b)->m->id);
}

/* Bindings by budget, then by key (tool-specific before budget-wide). */
static int cmp_bind(const void *a, const void *b) {
  const bind_ref *x = a, *y = b;
  int c = strcmp(x->m->budget_id, y->m->budget_id);
  return c != 0 ? c : strcmp(x->key, y->key);
}

static int cmp_link(const void *a, const void *b) {
  const link *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  if (c != 0) {
    return c;
  }
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Returns the index of the record with key (which exists) in v->recs. */
static size_t rec_index(const lk_scope_view *v, const char *key) {
  size_t lo = 0, hi = v->n_recs;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(v->recs[mid].key, key);
    if (c == 0) {
      return mid;
    }
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return SIZE_MAX;
}

/* Sorts everything and builds the indexes once all listings are in. */
static lk_status index_view(lk_scope_view *v, lk_err *err) {
  sort(v->recs, v->n_recs, sizeof(*v->recs), cmp_rec);
  sort(v->tools, v->n_tools, sizeof(*v->tools), cmp_node);
  sort(v->creds, v->n_creds, sizeof(*v->creds), cmp_node);
  sort(v->types, v->n_types, sizeof(*v->types), cmp_node);
  sort(v->budgets, v->n_budgets, sizeof(*v->budgets), cmp_budget);
  sort(v->binds, v->n_binds, sizeof(*v->binds), cmp_bind);
  for (size_t i = 0; i < v->n_tools; i++) {
    v->tools[i].rec = rec_index(v, v->tools[i].key);
    if (v->tools[i].type[0] == '\0') {
      size_t *u = push(&v->untyped, &v->n_untyped, &v->cap_untyped, sizeof(*u));
      if (u == NULL) {
        return full(err, "out of memory indexing tools");
      }
      *u = i;
    } else {
      link *k = push(&v->by_type, &v->n_by_type, &v->cap_by_type, sizeof(*k));
      if (k == NULL) {
        return full(err, "out of memory indexing tools");
      }
      k->name = v->tools[i].type;
      k->idx = i;
    }
  }
  for (size_t i = 0; i < v->n_creds; i++) {
    v->creds[i].rec = rec_index(v, v->creds[i].key);
  }
  for (size_t i = 0; i < v->n_types; i++) {
    v->types[i].rec = rec_index(v, v->types[i].key);
  }
  for (size_t i = 0; i < v->n_binds; i++) {
    v->binds[i].rec = rec_index(v, v->binds[i].key);
  }
  for (size_t i = 0; i < v->n_budgets; i++) {
    budget_ref *b = &v->budgets[i];
    b->rec = rec_index(v, b->key);
    for (size_t j = 0; j < b->m->n_agents; j++) {
      link *k = push(&v->agents, &v->n_agents, &v->cap_agents, sizeof(*k));
      if (k == NULL) {
        return full(err, "too many budget agents or out of memory");
      }
      k->name = b->m->agents[j];
      k->idx = i;
    }
  }
  sort(v->by_type, v->n_by_type, sizeof(*v->by_type), cmp_link);
  sort(v->agents, v->n_agents, sizeof(*v->agents), cmp_link);
  return LK_OK;
}

lk_status lk_scope_view_load(lk_catalog *cat, lk_scope_view **out,
                             lk_err *err) {
  lk_status st;
  loader l = {NULL, LK_OK, err};

  *out = NULL;
  if (sodium_init() < 0) {
    return lk_fail(err, LK_INTERNAL, "libsodium cannot initialize");
  }
  l.v = calloc(1, sizeof(*l.v));
  if (l.v == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory reading the catalog");
  }
  st = lk_catalog_list_tools(cat, on_tool, &l, err);
  if (st == LK_OK) {
    st = l.st;
  }
  if (st == LK_OK) {
    st = lk_catalog_list_types(cat, on_type, &l, err);
  }
  if (st == LK_OK) {
    st = l.st;
  }
  if (st == LK_OK) {
    st = lk_catalog_list_credentials(cat, on_cred, &l, err);
  }
  if (st == LK_OK) {
    st = l.st;
  }
  if (st == LK_OK) {
    st = lk_catalog_list_budgets(cat, on_budget, &l, err);
  }
  if (st == LK_OK) {
    st = l.st;
  }
  if (st == LK_OK) {
    st = lk_catalog_list_bindings(cat, NULL, on_bind, &l, err);
  }
  if (st == LK_OK) {
    st = l.st;
  }
  if (st == LK_OK) {
    st = index_view(l.v, err);
  }
  if (st != LK_OK) {
    lk_scope_view_destroy(l.v);
    return st;
  }
  *out = l.v;
  return LK_OK;
}

static void free_nodes(node *a, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(a[i].id);
    free(a[i].type);
  }
  free(a);
}

void lk_scope_view_destroy(lk_scope_view *v) {
  if (v == NULL) {
    return;
  }
  for (size_t i = 0; i < v->n_recs; i++) {
    free(v->recs[i].key);
    if (v->recs[i].val != NULL) {
      lk_wipe_free(v->recs[i].val, v->recs[i].len);
    }
  }
  free(v->recs);
  free_nodes(v->tools, v->n_tools);
  free_nodes(v->creds, v->n_creds);
  free_nodes(v->types, v->n_types);
  for (size_t i = 0; i < v->n_budgets; i++) {
    lk_catalog_free_budget(v->budgets[i].m);
  }
  free(v->budgets);
  for (size_t i = 0; i < v->n_binds; i++) {
    lk_catalog_free_binding(v->binds[i].m);
  }
  free(v->binds);
  free(v->agents);
  free(v->by_type);
  free(v->untyped);
  free(v);
}

size_t lk_scope_view_count(const lk_scope_view *v) {
  return v->n_recs;
}

static void fill(const lk_scope_view *v, size_t i, lk_scope_record *out) {
  out->key = v->recs[i].key;
  out->value = v->recs[i].val;
  out->len = v->recs[i].len;
  out->hash = v->recs[i].hash;
}

int lk_scope_view_find(const lk_scope_view *v, const char *key,
                       lk_scope_record *out) {
  size_t i = rec_index(v, key);
  if (i == SIZE_MAX) {
    return 0;
  }
  fill(v, i, out);
  return 1;
}

/* Returns the node with id in a (sorted by id), or NULL. */
static const node *find_node(const node *a, size_t n, const char *id) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(a[mid].id, id);
    if (c == 0) {
      return &a[mid];
    }
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return NULL;
}

/* Returns the first index in links (sorted by name) whose name is not
 * less than name. */
static size_t lower_link(const link *a, size_t n, const char *name) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (strcmp(a[mid].name, name) < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/* Returns the first binding of budget (bindings sorted by budget). */
static size_t lower_bind(const lk_scope_view *v, const char *budget) {
  size_t lo = 0, hi = v->n_binds;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (strcmp(v->binds[mid].m->budget_id, budget) < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/* A scope being built: record indices, unsorted, possibly repeated. */
typedef struct {
  size_t *idx;
  size_t n, cap;
  int oom;
} acc;

static void add(acc *a, size_t r) {
  if (r == SIZE_MAX) {
    return;
  }
  size_t *p = push(&a->idx, &a->n, &a->cap, sizeof(*p));
  if (p == NULL) {
    a->oom = 1;
    return;
  }
  *p = r;
}

/* Adds the record of node id in a, and of its credential type when
 * with_type; returns the node or NULL when it does not exist. */
static const node *add_node_rec(const lk_scope_view *v, acc *a, const node *arr,
                                size_t n, const char *id, int with_type) {
  const node *nd = find_node(arr, n, id);
  if (nd == NULL) {
    return NULL;
  }
  add(a, nd->rec);
  if (with_type && nd->type != NULL && nd->type[0] != '\0') {
    const node *t = find_node(v->types, v->n_types, nd->type);
    if (t != NULL) {
      add(a, t->rec);
    }
  }
  return nd;
}

static int cmp_size(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

lk_status lk_scope_compute_in(const lk_scope_view *v, const char *agent_id,
                              lk_scope **out, lk_err *err) {
  lk_status st = LK_OK;
  acc a = {NULL, 0, 0, 0};
  const char **wide = NULL; /* credential types of budget-wide bindings */
  size_t n_wide = 0, cap_wide = 0;
  size_t n_budgets = 0;
  lk_scope *s = NULL;

  *out = NULL;
  if (!lk_catalog_valid_id(agent_id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "agent id is not valid: use 1-128 characters from A-Z "
                   "a-z 0-9 . _ -, starting with a letter or digit");
  }
  for (size_t i = lower_link(v->agents, v->n_agents, agent_id);
       i < v->n_agents && strcmp(v->agents[i].name, agent_id) == 0; i++) {
    const budget_ref *b = &v->budgets[v->agents[i].idx];
    n_budgets++;
    add(&a, b->rec);
    for (size_t j = lower_bind(v, b->m->id);
         j < v->n_binds && strcmp(v->binds[j].m->budget_id, b->m->id) == 0;
         j++) {
      const Latchkey__V1__Binding *m = v->binds[j].m;
      add(&a, v->binds[j].rec);
      add_node_rec(v, &a, v->creds, v->n_creds, m->credential_id, 1);
      if (m->tool_id != NULL && m->tool_id[0] != '\0') {
        add_node_rec(v, &a, v->tools, v->n_tools, m->tool_id, 1);
      } else if (m->credential_type != NULL && m->credential_type[0] != '\0') {
        add_node_rec(v, &a, v->types, v->n_types, m->credential_type, 0);
        const char **w = push(&wide, &n_wide, &cap_wide, sizeof(*w));
        if (w == NULL) {
          a.oom = 1;
        } else {
          *w = m->credential_type;
        }
      }
    }
  }
  sort(wide, n_wide, sizeof(*wide), cmp_str);
  for (size_t i = 0; i < n_wide; i++) {
    if (i > 0 && strcmp(wide[i], wide[i - 1]) == 0) {
      continue;
    }
    for (size_t j = lower_link(v->by_type, v->n_by_type, wide[i]);
         j < v->n_by_type && strcmp(v->by_type[j].name, wide[i]) == 0; j++) {
      add(&a, v->tools[v->by_type[j].idx].rec);
    }
  }
  /* Tools and credential types carry no secret, and an agent needs every
   * tool its budgets could call to be told what credential is missing. */
  if (n_budgets > 0) {
    for (size_t i = 0; i < v->n_tools; i++) {
      add(&a, v->tools[i].rec);
    }
    for (size_t i = 0; i < v->n_types; i++) {
      add(&a, v->types[i].rec);
    }
  }
  s = calloc(1, sizeof(*s));
  if (a.oom || s == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of memory computing the scope of agent %s", agent_id);
    goto done;
  }
  sort(a.idx, a.n, sizeof(*a.idx), cmp_size);
  size_t n = 0;
  for (size_t i = 0; i < a.n; i++) {
    if (n == 0 || a.idx[n - 1] != a.idx[i]) {
      a.idx[n++] = a.idx[i];
    }
  }
  s->v = v;
  s->idx = a.idx;
  s->n = n;
  a.idx = NULL;
  *out = s;
  s = NULL;
done:
  free(wide);
  free(a.idx);
  free(s);
  return st;
}

lk_status lk_scope_compute(lk_catalog *cat, const char *agent_id,
                           lk_scope **out, lk_err *err) {
  lk_scope_view *v = NULL;
  lk_status st;

  *out = NULL;
  if (!lk_catalog_valid_id(agent_id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "agent id is not valid: use 1-128 characters from A-Z "
                   "a-z 0-9 . _ -, starting with a letter or digit");
  }
  st = lk_scope_view_load(cat, &v, err);
  if (st == LK_OK) {
    st = lk_scope_compute_in(v, agent_id, out, err);
  }
  if (st != LK_OK) {
    lk_scope_view_destroy(v);
    return st;
  }
  (*out)->owned = v;
  return LK_OK;
}

size_t lk_scope_count(const lk_scope *s) {
  return s->n;
}

void lk_scope_at(const lk_scope *s, size_t i, lk_scope_record *out) {
  fill(s->v, s->idx[i], out);
}

const char *lk_scope_key(const lk_scope *s, size_t i) {
  return s->v->recs[s->idx[i]].key;
}

int lk_scope_contains(const lk_scope *s, const char *key) {
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(s->v->recs[s->idx[mid]].key, key);
    if (c == 0) {
      return 1;
    }
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return 0;
}

void lk_scope_destroy(lk_scope *s) {
  if (s == NULL) {
    return;
  }
  free(s->idx);
  lk_scope_view_destroy(s->owned);
  free(s);
}

/* ---- one credential ----------------------------------------------------- */

/* The budgets of one agent, collected from a listing. */
typedef struct {
  const char *agent;
  char **ids;
  size_t n, cap;
  int oom;
} agent_budgets;

static int on_agent_budget(void *ctx, Latchkey__V1__Budget *b) {
  agent_budgets *ab = ctx;
  for (size_t i = 0; i < b->n_agents && !ab->oom; i++) {
    if (strcmp(b->agents[i], ab->agent) != 0) {
      continue;
    }
    char *id = strdup(b->id);
    char **slot =
        id != NULL ? push(&ab->ids, &ab->n, &ab->cap, sizeof(char *)) : NULL;
    if (slot == NULL) {
      free(id);
      ab->oom = 1;
    } else {
      *slot = id;
    }
    break;
  }
  lk_catalog_free_budget(b);
  return ab->oom;
}

/* Stops a binding listing at the first binding naming cred. */
typedef struct {
  const char *cred;
  int found;
} cred_binding;

static int on_cred_binding(void *ctx, Latchkey__V1__Binding *b) {
  cred_binding *cb = ctx;
  cb->found =
      b->credential_id != NULL && strcmp(b->credential_id, cb->cred) == 0;
  lk_catalog_free_binding(b);
  return cb->found;
}

lk_status lk_scope_agent_uses_credential(lk_catalog *cat, const char *agent_id,
                                         const char *cred_id, int *uses,
                                         lk_err *err) {
  agent_budgets ab = {agent_id, NULL, 0, 0, 0};
  cred_binding cb = {cred_id, 0};
  lk_status st = LK_OK;
  *uses = 0;
  if (!lk_catalog_valid_id(agent_id) || !lk_catalog_valid_id(cred_id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "agent_id and credential_id must match "
                   "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$");
  }
  st = lk_catalog_list_budgets(cat, on_agent_budget, &ab, err);
  if (st == LK_OK && ab.oom) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t i = 0; st == LK_OK && i < ab.n && !cb.found; i++) {
    st = lk_catalog_list_bindings(cat, ab.ids[i], on_cred_binding, &cb, err);
  }
  for (size_t i = 0; i < ab.n; i++) {
    free(ab.ids[i]);
  }
  free(ab.ids);
  if (st == LK_OK) {
    *uses = cb.found;
  }
  return st;
}
