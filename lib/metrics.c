/*
 * metrics.c - lock-free metric updates, locked rendering.
 *
 * Each family owns a table of 2 * max_series slots, allocated at
 * registration and never resized. A slot goes EMPTY -> FILLING (one
 * thread won the compare-and-swap and copies the label values) -> READY;
 * readers that meet a FILLING slot wait for it, so two threads adding the
 * same new combination end up on one slot. A new combination is admitted
 * only while fewer than max_series slots are taken; a race may admit a
 * few more, never more than the table holds, so memory stays bounded.
 * Values are doubles kept as bit patterns in 64-bit atomics and added
 * with a compare-and-swap loop. Rendering takes the registry mutex (which
 * also guards registration and detaching) and reads each series with
 * relaxed loads: a scrape taken during updates may be a few observations
 * behind, and a histogram's _count is the sum of its buckets, so the page
 * is always self-consistent for a parser.
 */
#include "lib/metrics.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM, KIND_GAUGE_FN } kind;

enum { SLOT_EMPTY = 0, SLOT_FILLING = 1, SLOT_READY = 2 };

typedef struct {
  _Atomic int state;
  uint64_t hash;
  char *values[LK_METRICS_MAX_LABELS];
  _Atomic uint64_t value; /* counter or gauge value; histogram sum */
  _Atomic uint64_t buckets[LK_METRICS_MAX_BUCKETS + 1]; /* last = +Inf */
} series;

struct lk_metric {
  lk_metrics *reg;
  kind kind;
  char *name;
  char *help;
  char *labels[LK_METRICS_MAX_LABELS];
  size_t n_labels;
  double bounds[LK_METRICS_MAX_BUCKETS];
  size_t n_bounds;
  series *slots; /* NULL for KIND_GAUGE_FN */
  size_t n_slots;
  _Atomic size_t used;
  lk_metrics_collect_fn fn; /* guarded by reg->mu */
  void *fn_ctx;
};

struct lk_metrics {
  pthread_mutex_t mu;
  size_t max_series;
  lk_metric *families[LK_METRICS_MAX_FAMILIES];
  size_t n_families;
  _Atomic uint64_t dropped;
};

const double lk_metrics_latency_buckets[] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10};
const size_t lk_metrics_latency_buckets_n =
    sizeof(lk_metrics_latency_buckets) / sizeof(lk_metrics_latency_buckets[0]);

/* ---- values ------------------------------------------------------------ */

static double bits_to_double(uint64_t b) {
  double d;
  memcpy(&d, &b, sizeof(d));
  return d;
}

static uint64_t double_to_bits(double d) {
  uint64_t b;
  memcpy(&b, &d, sizeof(b));
  return b;
}

static void atomic_add_double(_Atomic uint64_t *p, double d) {
  uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      p, &old, double_to_bits(bits_to_double(old) + d), memory_order_relaxed,
      memory_order_relaxed)) {
  }
}

/* ---- registration ------------------------------------------------------ */

static int valid_name(const char *s, int allow_colon) {
  if (s == NULL || s[0] == '\0' || strlen(s) > 128)
    return 0;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok)
      return 0;
  }
  return 1;
}

lk_status lk_metrics_new(size_t max_series, lk_metrics **out, lk_err *err) {
  *out = NULL;
  if (max_series < 1 || max_series > 4096) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "metrics: max_series must be between 1 and 4096");
  }
  lk_metrics *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  pthread_mutex_init(&m->mu, NULL);
  m->max_series = max_series;
  *out = m;
  return LK_OK;
}

static void metric_free(lk_metric *f) {
  if (f == NULL)
    return;
  for (size_t i = 0; f->slots != NULL && i < f->n_slots; i++) {
    for (size_t j = 0; j < f->n_labels; j++)
      free(f->slots[i].values[j]);
  }
  free(f->slots);
  for (size_t j = 0; j < f->n_labels; j++)
    free(f->labels[j]);
  free(f->name);
  free(f->help);
  free(f);
}

void lk_metrics_destroy(lk_metrics *m) {
  if (m == NULL)
    return;
  for (size_t i = 0; i < m->n_families; i++)
    metric_free(m->families[i]);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

static lk_status add_family(lk_metrics *m, kind k, const char *name,
                            const char *help, const char *const *label_names,
                            size_t n_labels, const double *bounds,
                            size_t n_bounds, lk_metrics_collect_fn fn,
                            void *ctx, lk_metric **out, lk_err *err) {
  *out = NULL;
  if (m == NULL)
    return LK_OK;
  lk_status st = LK_OK;
  lk_metric *f = NULL;
  if (!valid_name(name, 1) || strncmp(name, "latchkey_metrics_", 17) == 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "metrics: '%.64s' is not a valid metric name",
                   name ? name : "(null)");
  }
  if (n_labels > LK_METRICS_MAX_LABELS || n_bounds > LK_METRICS_MAX_BUCKETS) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "metrics: %s has too many labels or buckets", name);
  }
  for (size_t i = 0; i < n_labels; i++) {
    if (!valid_name(label_names[i], 0) ||
        strncmp(label_names[i], "__", 2) == 0 ||
        (k == KIND_HISTOGRAM && strcmp(label_names[i], "le") == 0)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "metrics: %s: '%.64s' is not a valid label name", name,
                     label_names[i] ? label_names[i] : "(null)");
    }
  }
  for (size_t i = 0; i < n_bounds; i++) {
    if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "metrics: %s: bucket bounds must be finite and strictly "
                     "increasing",
                     name);
    }
  }
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->n_families; i++) {
    if (strcmp(m->families[i]->name, name) == 0) {
      st = lk_fail(err, LK_ALREADY_EXISTS, "metrics: %s is already registered",
                   name);
      goto cleanup;
    }
  }
  if (m->n_families == LK_METRICS_MAX_FAMILIES) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "metrics: more than %d families",
                 LK_METRICS_MAX_FAMILIES);
    goto cleanup;
  }
  f = calloc(1, sizeof(*f));
  if (f == NULL)
    goto oom;
  f->reg = m;
  f->kind = k;
  f->name = strdup(name);
  f->help = strdup(help ? help : "");
  if (f->name == NULL || f->help == NULL)
    goto oom;
  f->n_labels = n_labels;
  for (size_t i = 0; i < n_labels; i++) {
    f->labels[i] = strdup(label_names[i]);
    if (f->labels[i] == NULL)
      goto oom;
  }
  if (n_bounds > 0)
    memcpy(f->bounds, bounds, n_bounds * sizeof(double));
  f->n_bounds = n_bounds;
  f->fn = fn;
  f->fn_ctx = ctx;
  if (k != KIND_GAUGE_FN) {
    f->n_slots = 2 * m->max_series;
    f->slots = calloc(f->n_slots, sizeof(series));
    if (f->slots == NULL)
      goto oom;
  }
  m->families[m->n_families++] = f;
  *out = f;
  f = NULL;
  goto cleanup;
oom:
  st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
cleanup:
  metric_free(f);
  pthread_mutex_unlock(&m->mu);
  return st;
}

lk_status lk_metrics_counter(lk_metrics *m, const char *name, const char *help,
                             const char *const *label_names, size_t n_labels,
                             lk_metric **out, lk_err *err) {
  return add_family(m, KIND_COUNTER, name, help, label_names, n_labels, NULL, 0,
                    NULL, NULL, out, err);
}

lk_status lk_metrics_gauge(lk_metrics *m, const char *name, const char *help,
                           const char *const *label_names, size_t n_labels,
                           lk_metric **out, lk_err *err) {
  return add_family(m, KIND_GAUGE, name, help, label_names, n_labels, NULL, 0,
                    NULL, NULL, out, err);
}

lk_status lk_metrics_histogram(lk_metrics *m, const char *name,
                               const char *help, const char *const *label_names,
                               size_t n_labels, const double *bounds,
                               size_t n_bounds, lk_metric **out, lk_err *err) {
  return add_family(m, KIND_HISTOGRAM, name, help, label_names, n_labels,
                    bounds, n_bounds, NULL, NULL, out, err);
}

lk_status lk_metrics_gauge_fn(lk_metrics *m, const char *name, const char *help,
                              const char *const *label_names, size_t n_labels,
                              lk_metrics_collect_fn fn, void *ctx,
                              lk_metric **out, lk_err *err) {
  if (fn == NULL) {
    *out = NULL;
    return lk_fail(err, LK_INVALID_ARGUMENT, "metrics: %s needs a function",
                   name ? name : "(null)");
  }
  return add_family(m, KIND_GAUGE_FN, name, help, label_names, n_labels, NULL,
                    0, fn, ctx, out, err);
}

void lk_metric_detach(lk_metric *metric) {
  if (metric == NULL)
    return;
  pthread_mutex_lock(&metric->reg->mu);
  metric->fn = NULL;
  metric->fn_ctx = NULL;
  pthread_mutex_unlock(&metric->reg->mu);
}

/* ---- lookup -------------------------------------------------------------- */

/* FNV-1a over the label values, each ended by a byte no value holds. */
static uint64_t hash_values(const char *const *values, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++) {
      h ^= *p;
      h *= 1099511628211ull;
    }
    h ^= 0xff;
    h *= 1099511628211ull;
  }
  return h;
}

static int same_values(const series *s, const char *const *values, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (strcmp(s->values[i], values[i]) != 0)
      return 0;
  }
  return 1;
}

static int values_ok(const char *const *values, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (values == NULL || values[i] == NULL ||
        strnlen(values[i], LK_METRICS_MAX_LABEL_VALUE + 1) >
            LK_METRICS_MAX_LABEL_VALUE)
      return 0;
  }
  return 1;
}

/* Returns the series of the label values, creating it while the family is
 * under its cap; NULL (and one more drop counted) when it is full. */
static series *find_series(lk_metric *f, const char *const *values) {
  if (!values_ok(values, f->n_labels)) {
    atomic_fetch_add_explicit(&f->reg->dropped, 1, memory_order_relaxed);
    return NULL;
  }
  uint64_t h = hash_values(values, f->n_labels);
  size_t n = f->n_slots; /* linear probing, modulo n */
  for (size_t i = 0; i < n; i++) {
    series *s = &f->slots[(h + i) % n];
    int state = atomic_load_explicit(&s->state, memory_order_acquire);
    if (state == SLOT_EMPTY) {
      if (atomic_load_explicit(&f->used, memory_order_relaxed) >=
          f->reg->max_series)
        break;
      int expected = SLOT_EMPTY;
      if (atomic_compare_exchange_strong_explicit(
              &s->state, &expected, SLOT_FILLING, memory_order_acquire,
              memory_order_acquire)) {
        atomic_fetch_add_explicit(&f->used, 1, memory_order_relaxed);
        int ok = 1;
        for (size_t j = 0; j < f->n_labels; j++) {
          s->values[j] = strdup(values[j]);
          ok = ok && s->values[j] != NULL;
        }
        if (!ok) {
          /* Out of memory: the slot stays taken with no name and never
           * matches; it renders nothing. */
          for (size_t j = 0; j < f->n_labels; j++) {
            free(s->values[j]);
            s->values[j] = NULL;
          }
          s->hash = ~h;
          atomic_store_explicit(&s->state, SLOT_FILLING + 2,
                                memory_order_release);
          break;
        }
        s->hash = h;
        atomic_store_explicit(&s->state, SLOT_READY, memory_order_release);
        return s;
      }
      state = expected;
    }
    while (state == SLOT_FILLING) {
      sched_yield();
      state = atomic_load_explicit(&s->state, memory_order_acquire);
    }
    if (state == SLOT_READY && s->hash == h &&
        same_values(s, values, f->n_labels))
      return s;
  }
  atomic_fetch_add_explicit(&f->reg->dropped, 1, memory_order_relaxed);
  return NULL;
}

void lk_metric_inc(lk_metric *metric, const char *const *values, double n) {
  if (metric == NULL || metric->kind != KIND_COUNTER || !(n >= 0))
    return;
  series *s = find_series(metric, values);
  if (s != NULL)
    atomic_add_double(&s->value, n);
}

void lk_metric_set(lk_metric *metric, const char *const *values, double v) {
  if (metric == NULL || metric->kind != KIND_GAUGE)
    return;
  series *s = find_series(metric, values);
  if (s != NULL)
    atomic_store_explicit(&s->value, double_to_bits(v), memory_order_relaxed);
}

void lk_metric_add(lk_metric *metric, const char *const *values, double d) {
  if (metric == NULL || metric->kind != KIND_GAUGE)
    return;
  series *s = find_series(metric, values);
  if (s != NULL)
    atomic_add_double(&s->value, d);
}

void lk_metric_observe(lk_metric *metric, const char *const *values, double v) {
  if (metric == NULL || metric->kind != KIND_HISTOGRAM || isnan(v))
    return;
  series *s = find_series(metric, values);
  if (s == NULL)
    return;
  size_t b = 0;
  while (b < metric->n_bounds && v > metric->bounds[b])
    b++;
  atomic_fetch_add_explicit(&s->buckets[b], 1, memory_order_relaxed);
  atomic_add_double(&s->value, v);
}

/* ---- rendering ------------------------------------------------------------
 */

typedef struct {
  char *buf;
  size_t len;
  size_t cap;
  int failed; /* out of memory or past LK_METRICS_MAX_PAGE_BYTES */
} page;

static void put(page *p, const char *s, size_t n) {
  if (p->failed)
    return;
  if (p->len + n + 1 > p->cap) {
    size_t want = p->cap ? p->cap : 4096;
    while (want < p->len + n + 1)
      want *= 2;
    if (want > LK_METRICS_MAX_PAGE_BYTES) {
      if (p->len + n + 1 > LK_METRICS_MAX_PAGE_BYTES) {
        p->failed = 1;
        return;
      }
      want = LK_METRICS_MAX_PAGE_BYTES;
    }
    char *nb = realloc(p->buf, want);
    if (nb == NULL) {
      p->failed = 1;
      return;
    }
    p->buf = nb;
    p->cap = want;
  }
  memcpy(p->buf + p->len, s, n);
  p->len += n;
  p->buf[p->len] = '\0';
}

static void puts_(page *p, const char *s) {
  put(p, s, strlen(s));
}

/* Writes s escaped: label values escape '\\', '"' and newline; HELP text
 * escapes '\\' and newline (format 0.0.4). */
static void put_escaped(page *p, const char *s, int quote) {
  const char *run = s;
  for (; *s; s++) {
    const char *rep = NULL;
    if (*s == '\\')
      rep = "\\\\";
    else if (*s == '\n')
      rep = "\\n";
    else if (quote && *s == '"')
      rep = "\\\"";
    if (rep != NULL) {
      put(p, run, (size_t)(s - run));
      puts_(p, rep);
      run = s + 1;
    }
  }
  put(p, run, (size_t)(s - run));
}

/* Shortest decimal that reads back as the same double; +Inf, -Inf, NaN. */
static void put_number(page *p, double v) {
  char b[40];
  if (isnan(v)) {
    puts_(p, "NaN");
    return;
  }
  if (isinf(v)) {
    puts_(p, v > 0 ? "+Inf" : "-Inf");
    return;
  }
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(b, sizeof(b), "%.*g", prec, v);
    if (strtod(b, NULL) == v)
      break;
  }
  puts_(p, b);
}

static void put_u64(page *p, uint64_t v) {
  char b[24];
  snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
  puts_(p, b);
}

/* Writes name{labels[,le="x"]} with the family's label names. */
static void put_series_name(page *p, const lk_metric *f, const char *suffix,
                            const char *const *values, const double *le) {
  puts_(p, f->name);
  puts_(p, suffix);
  if (f->n_labels == 0 && le == NULL)
    return;
  puts_(p, "{");
  for (size_t i = 0; i < f->n_labels; i++) {
    if (i > 0)
      puts_(p, ",");
    puts_(p, f->labels[i]);
    puts_(p, "=\"");
    put_escaped(p, values[i], 1);
    puts_(p, "\"");
  }
  if (le != NULL) {
    if (f->n_labels > 0)
      puts_(p, ",");
    puts_(p, "le=\"");
    put_number(p, *le);
    puts_(p, "\"");
  }
  puts_(p, "}");
}

static void put_header(page *p, const char *name, const char *help,
                       const char *type) {
  puts_(p, "# HELP ");
  puts_(p, name);
  puts_(p, " ");
  put_escaped(p, help, 0);
  puts_(p, "\n# TYPE ");
  puts_(p, name);
  puts_(p, " ");
  puts_(p, type);
  puts_(p, "\n");
}

static void render_series(page *p, const lk_metric *f, const series *s) {
  const char *const *values = (const char *const *)s->values;
  double v = bits_to_double(
      atomic_load_explicit(&((series *)s)->value, memory_order_relaxed));
  if (f->kind != KIND_HISTOGRAM) {
    put_series_name(p, f, "", values, NULL);
    puts_(p, " ");
    put_number(p, v);
    puts_(p, "\n");
    return;
  }
  uint64_t cum = 0;
  for (size_t b = 0; b <= f->n_bounds; b++) {
    cum +=
        atomic_load_explicit(&((series *)s)->buckets[b], memory_order_relaxed);
    double le = b < f->n_bounds ? f->bounds[b] : INFINITY;
    put_series_name(p, f, "_bucket", values, &le);
    puts_(p, " ");
    put_u64(p, cum);
    puts_(p, "\n");
  }
  put_series_name(p, f, "_sum", values, NULL);
  puts_(p, " ");
  put_number(p, v);
  puts_(p, "\n");
  put_series_name(p, f, "_count", values, NULL);
  puts_(p, " ");
  put_u64(p, cum);
  puts_(p, "\n");
}

struct lk_metrics_emitter {
  page *p;
  const lk_metric *f;
  size_t n;
  size_t max;
  _Atomic uint64_t *dropped;
};

void lk_metrics_emit(lk_metrics_emitter *e, const char *const *values,
                     double v) {
  if (e->n >= e->max || !values_ok(values, e->f->n_labels)) {
    atomic_fetch_add_explicit(e->dropped, 1, memory_order_relaxed);
    return;
  }
  e->n++;
  put_series_name(e->p, e->f, "", values, NULL);
  puts_(e->p, " ");
  put_number(e->p, v);
  puts_(e->p, "\n");
}

static const char *type_name(kind k) {
  switch (k) {
    case KIND_COUNTER:
      return "counter";
    case KIND_HISTOGRAM:
      return "histogram";
    case KIND_GAUGE:
    case KIND_GAUGE_FN:
      break;
  }
  return "gauge";
}

lk_status lk_metrics_render(lk_metrics *m, char **out, size_t *len,
                            lk_err *err) {
  *out = NULL;
  *len = 0;
  page p = {NULL, 0, 0, 0};
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->n_families; i++) {
    lk_metric *f = m->families[i];
    put_header(&p, f->name, f->help, type_name(f->kind));
    if (f->kind == KIND_GAUGE_FN) {
      if (f->fn != NULL) {
        lk_metrics_emitter e = {&p, f, 0, m->max_series, &m->dropped};
        f->fn(f->fn_ctx, &e);
      }
      continue;
    }
    for (size_t j = 0; j < f->n_slots; j++) {
      if (atomic_load_explicit(&f->slots[j].state, memory_order_acquire) ==
          SLOT_READY)
        render_series(&p, f, &f->slots[j]);
    }
  }
  put_header(&p, "latchkey_metrics_dropped_total",
             "Metric updates dropped: a family was at its cap of label "
             "combinations, or a label value was too long.",
             "counter");
  puts_(&p, "latchkey_metrics_dropped_total ");
  put_u64(&p, atomic_load_explicit(&m->dropped, memory_order_relaxed));
  puts_(&p, "\n");
  pthread_mutex_unlock(&m->mu);
  if (p.failed || p.buf == NULL) {
    free(p.buf);
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "metrics page is over %u bytes or memory ran out",
                   LK_METRICS_MAX_PAGE_BYTES);
  }
  *out = p.buf;
  *len = p.len;
  return LK_OK;
}
