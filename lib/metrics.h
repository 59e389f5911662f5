/*
 * metrics.h - a small registry of counters, gauges and histograms rendered
 * in the Prometheus text exposition format 0.0.4.
 *
 * Why: DESIGN.md §7 asks both daemons for Prometheus metrics, and the
 * sidecar's hot path (issue 6: ≤ 50 µs internal overhead) must pay only a
 * few atomic operations per call. A family is registered once, at start;
 * updates after that take no lock: the series of a label combination is
 * found in an open-addressed table of fixed size and updated with atomics.
 *
 * Invariants: every family holds at most max_series label combinations
 * (set when the registry is created); an update for a new combination past
 * that cap is dropped and counted in latchkey_metrics_dropped_total, so an
 * attacker choosing label values cannot grow memory. Label values are
 * escaped when rendered; they are ids and outcome names, never secrets.
 * Every update function accepts a NULL metric and does nothing, and every
 * registration with a NULL registry succeeds with a NULL metric, so code
 * built without metrics needs no branches.
 */
#ifndef LK_METRICS_H
#define LK_METRICS_H

#include <stddef.h>

#include "lib/status.h"

#define LK_METRICS_MAX_LABELS 4
#define LK_METRICS_MAX_BUCKETS 20
#define LK_METRICS_MAX_FAMILIES 64
#define LK_METRICS_MAX_LABEL_VALUE 128
/* The largest rendered page; past it rendering fails. */
#define LK_METRICS_MAX_PAGE_BYTES (4u * 1024u * 1024u)

typedef struct lk_metrics lk_metrics;
typedef struct lk_metric lk_metric;
/* Where a scrape-time gauge family writes its samples. */
typedef struct lk_metrics_emitter lk_metrics_emitter;

/* Computes a gauge family's samples at scrape time (see lk_metrics_gauge_fn).
 * Called with the registry's render lock held: it must not register,
 * detach or render. */
typedef void (*lk_metrics_collect_fn)(void *ctx, lk_metrics_emitter *e);

/* Latency buckets in seconds, 50 µs .. 10 s, for call-shaped histograms. */
extern const double lk_metrics_latency_buckets[];
extern const size_t lk_metrics_latency_buckets_n;

/* Creates an empty registry whose families each hold at most max_series
 * label combinations (1..4096). */
lk_status lk_metrics_new(size_t max_series, lk_metrics **out,
                         lk_err *err) LK_MUST_CHECK;

/* Frees the registry and every family in it; NULL is ignored. No update or
 * render may run concurrently. */
void lk_metrics_destroy(lk_metrics *m);

/* Registers a counter family; with m NULL sets *out to NULL and succeeds.
 * Names and label names must be valid Prometheus names; a name already
 * registered is LK_ALREADY_EXISTS. */
lk_status lk_metrics_counter(lk_metrics *m, const char *name, const char *help,
                             const char *const *label_names, size_t n_labels,
                             lk_metric **out, lk_err *err) LK_MUST_CHECK;

/* Registers a gauge family updated with lk_metric_set / lk_metric_add. */
lk_status lk_metrics_gauge(lk_metrics *m, const char *name, const char *help,
                           const char *const *label_names, size_t n_labels,
                           lk_metric **out, lk_err *err) LK_MUST_CHECK;

/* Registers a histogram family with the given strictly increasing finite
 * upper bounds (at most LK_METRICS_MAX_BUCKETS; +Inf is implied). */
lk_status lk_metrics_histogram(lk_metrics *m, const char *name,
                               const char *help, const char *const *label_names,
                               size_t n_labels, const double *bounds,
                               size_t n_bounds, lk_metric **out,
                               lk_err *err) LK_MUST_CHECK;

/* Registers a gauge family whose samples fn emits at every scrape (values
 * that are functions of time, such as staleness, or of another module's
 * state). Call lk_metric_detach before ctx goes away. */
lk_status lk_metrics_gauge_fn(lk_metrics *m, const char *name, const char *help,
                              const char *const *label_names, size_t n_labels,
                              lk_metrics_collect_fn fn, void *ctx,
                              lk_metric **out, lk_err *err) LK_MUST_CHECK;

/* Stops calling a scrape-time family's fn; once it returns no scrape is in
 * fn. The family then renders no sample. NULL is ignored. */
void lk_metric_detach(lk_metric *metric);

/* Adds n to the counter series of the label values (n_labels of them). */
void lk_metric_inc(lk_metric *metric, const char *const *values, double n);

/* Sets the gauge series of the label values to v. */
void lk_metric_set(lk_metric *metric, const char *const *values, double v);

/* Adds d (which may be negative) to the gauge series of the label values. */
void lk_metric_add(lk_metric *metric, const char *const *values, double d);

/* Records one observation v in the histogram series of the label values. */
void lk_metric_observe(lk_metric *metric, const char *const *values, double v);

/* From inside a collect fn: emits one sample; past max_series samples a
 * family's further samples are dropped and counted. */
void lk_metrics_emit(lk_metrics_emitter *e, const char *const *values,
                     double v);

/* Renders every family as text format 0.0.4 into a malloc'd, NUL-terminated
 * *out of *len bytes (the caller frees it). */
lk_status lk_metrics_render(lk_metrics *m, char **out, size_t *len,
                            lk_err *err) LK_MUST_CHECK;

#endif
