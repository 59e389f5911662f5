/*
 * toolcalls.c - ToolCalls/Call and ToolCalls/ListTools.
 *
 * Call runs in two halves. On the worker thread: decode, authorize the
 * budget, find tool and operation, validate arguments, resolve the
 * binding, unseal, build the vendor request and the scrubber, wipe the
 * unsealed fields, and hand the request to the forwarder. On the forwarder
 * thread, when the vendor answers: scrub body and headers, write the
 * audit line, reply, and wipe the request. Nothing between the two halves
 * holds a plaintext field value except the built request itself and the
 * scrubber's needles, both in guarded memory. Every answer (result,
 * missing credential or failure) leaves after its audit line is written,
 * so a call the agent saw is on record. The audit hashes of the
 * secret values are taken on the worker thread, right before the unsealed
 * values are wiped, and travel to the audit line with the call.
 *
 * An oauth2 call may have a third part: when the vendor answers 401, the
 * scrubbed answer is kept (packed, no secret in it) and the call is
 * handed to sidecar/oauth_retry; when a newer token is in the catalog
 * (the replica's, or the standalone sidecar's own), the refresh flight's thread
 * runs the first half again (resolve, unseal, build, wipe) and submits once
 * more, marked retried so a second 401 is answered as it is. The call belongs
 * to exactly one thread at a time: worker, forwarder, flight, forwarder.
 */
#include "sidecar/toolcalls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "latchkey/v1/toolcalls.pb-c.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "lib/oauth.h"
#include "lib/secret.h"
#include "sidecar/args.h"
#include "sidecar/inject.h"
#include "sidecar/scrub.h"

#define DEFAULT_TOOL_TIMEOUT_MS 30000
#define MAX_FIELDS 64
#define MAX_HEADERS 128
/* A refresh after a 401 ends this long before the call's deadline, so the
 * first answer still reaches the agent when no new token comes. */
#define OAUTH_ANSWER_MARGIN_MS 250

static const char *const methods[] = {
    "/latchkey.v1.ToolCalls/Call",
    "/latchkey.v1.ToolCalls/ListTools",
};

struct lk_toolcalls {
  lk_toolcalls_config cfg;
  lk_catalog *cat;
  lk_node_keys *keys;
  lk_forwarder *fwd;
  /* NULL when the sidecar runs without --metrics-listen. */
  lk_metric *m_calls;         /* {tool,outcome,code} */
  lk_metric *m_duration;      /* {tool} */
  lk_metric *m_internal;      /* sidecar-internal part of vendor calls */
  lk_metric *m_vendor;        /* {tool,kind} */
  lk_metric *m_bytes;         /* {tool} */
  lk_metric *m_in_flight;     /* Calls received and not yet answered */
  lk_metric *m_oauth_retries; /* vendor calls retried with a new token */
  lk_metric *m_oauth_expired; /* answered missing_credential: expired */
};

/* One Call waiting on its vendor. */
typedef struct {
  lk_toolcalls *t;
  lk_rpc_call *call;
  lk_http_request *req;
  lk_scrubber *scrub;
  char *budget;
  char *tool;
  char *op;
  char *cred_id;
  int64_t start_us;
  int64_t submitted_us;   /* when the request went to the forwarder, then
                             when it was written to the vendor */
  json_t *hashes;         /* field name -> audit hash, or NULL */
  const char *hash_error; /* static text when hashes is NULL, or NULL */
  /* oauth2 credential: what a retry after a 401 needs. */
  int may_refresh;                    /* not yet refused, not yet retried */
  int retried;                        /* the request in flight is the retry */
  uint64_t oauth_generation;          /* of the token sent first */
  const Latchkey__V1__Tool *tool_rec; /* shared: released, not freed */
  const Latchkey__V1__Operation *op_rec; /* in tool_rec */
  json_t *args;
  int64_t call_deadline_ms;
  /* The first answer (a 401), packed and scrubbed, while a refresh is
   * asked for; and the scrubber of the token it was made with. */
  unsigned char *first;
  size_t first_len;
  size_t first_body_len;
  int first_redacted;
  lk_scrubber *old_scrub;
  int64_t leg_start_us; /* when the request in flight began to be built */
  int64_t internal_us;  /* sidecar-internal time of earlier legs */
} pending;

/* What one audit.tool_call line says. */
typedef struct {
  const char *budget;
  const char *tool;
  const char *operation;
  const char *credential_id;
  const char *credential_type; /* missing_credential only */
  const char *outcome;         /* "ok", "missing_credential", a status */
  long vendor_status;          /* 0 = the vendor did not answer */
  int64_t start_us;
  size_t bytes;
  int redacted;
  json_t *hashes;         /* borrowed; NULL = none */
  const char *hash_error; /* when no hashes could be taken */
  int tool_known;         /* tool names a registered tool (metric label) */
  int oauth_retry;        /* retried after a refresh (oauth2) */
} call_audit;

const char *const *lk_toolcalls_methods(size_t *n) {
  *n = sizeof(methods) / sizeof(methods[0]);
  return methods;
}

/* Registers the call metrics in m (none when m is NULL). */
/* Buckets of latchkey_sidecar_internal_seconds: microseconds matter here
 * (DESIGN §9 caps the p50 at 50 µs), so finer than the call latencies'. */
static const double internal_buckets[] = {
    0.000005, 0.00001, 0.00002, 0.00003, 0.00004, 0.00005, 0.000075, 0.0001,
    0.00025,  0.0005,  0.001,   0.0025,  0.01,    0.1,     1};

static lk_status register_metrics(lk_toolcalls *t, lk_metrics *m, lk_err *err) {
  static const char *const calls_l[] = {"tool", "outcome", "code"};
  static const char *const tool_l[] = {"tool"};
  static const char *const vendor_l[] = {"tool", "kind"};
  lk_status st = lk_metrics_counter(
      m, "latchkey_tool_calls_total",
      "ToolCalls/Call answers by tool, outcome (ok, missing_credential or "
      "the error status) and gRPC code; tool is \"-\" when the call named "
      "no registered tool.",
      calls_l, 3, &t->m_calls, err);
  if (st == LK_OK)
    st = lk_metrics_histogram(
        m, "latchkey_call_duration_seconds",
        "Time from a Call's arrival to its answer, by tool.", tool_l, 1,
        lk_metrics_latency_buckets, lk_metrics_latency_buckets_n,
        &t->m_duration, err);
  if (st == LK_OK)
    st = lk_metrics_histogram(
        m, "latchkey_sidecar_internal_seconds",
        "Sidecar-internal time of Calls that reached the vendor: arrival to "
        "request written to the vendor, plus answer read to reply built.",
        NULL, 0, internal_buckets,
        sizeof(internal_buckets) / sizeof(internal_buckets[0]), &t->m_internal,
        err);
  if (st == LK_OK)
    st = lk_metrics_counter(
        m, "latchkey_vendor_errors_total",
        "Vendor calls that failed, by tool and kind: a transport status "
        "(unavailable, deadline_exceeded, resource_exhausted, ...) or "
        "http_4xx / http_5xx answers.",
        vendor_l, 2, &t->m_vendor, err);
  if (st == LK_OK)
    st = lk_metrics_counter(
        m, "latchkey_response_bytes_total",
        "Vendor response body bytes passed back to the agent, by tool.", tool_l,
        1, &t->m_bytes, err);
  if (st == LK_OK)
    st = lk_metrics_gauge(m, "latchkey_calls_in_flight",
                          "ToolCalls/Call calls received and not yet "
                          "answered.",
                          NULL, 0, &t->m_in_flight, err);
  if (st == LK_OK)
    st = lk_metrics_counter(
        m, "latchkey_oauth_retries_total",
        "Vendor calls sent a second time, with a refreshed oauth2 token, "
        "after the vendor refused the first one (401).",
        NULL, 0, &t->m_oauth_retries, err);
  if (st == LK_OK)
    st = lk_metrics_counter(
        m, "latchkey_oauth_expired_total",
        "Calls answered missing_credential because the oauth2 access token "
        "had expired (it is never sent).",
        NULL, 0, &t->m_oauth_expired, err);
  return st;
}

lk_status lk_toolcalls_new(const lk_toolcalls_config *cfg, lk_catalog *cat,
                           lk_node_keys *keys, lk_forwarder *fwd,
                           lk_toolcalls **out, lk_err *err) {
  *out = NULL;
  if (cfg->agent_id == NULL || !lk_catalog_valid_id(cfg->agent_id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "--agent-id must be set to a valid id (letters, digits, "
                   "'.', '_', '-'; at most 128)");
  }
  lk_toolcalls *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  t->cfg = *cfg;
  t->cat = cat;
  t->keys = keys;
  t->fwd = fwd;
  lk_status st = register_metrics(t, cfg->metrics, err);
  if (st != LK_OK) {
    free(t);
    return st;
  }
  *out = t;
  return LK_OK;
}

void lk_toolcalls_destroy(lk_toolcalls *t) {
  free(t);
}

/* ---- shared steps ---------------------------------------------------- */

static lk_status check_id(const char *what, const char *id, lk_err *err) {
  if (id == NULL || id[0] == '\0') {
    return lk_fail(err, LK_INVALID_ARGUMENT, "%s is required", what);
  }
  if (!lk_catalog_valid_id(id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "%s is not a valid id: use letters, digits, '.', '_' and "
                   "'-' (at most 128)",
                   what);
  }
  return LK_OK;
}

/* Step 1: the budget exists, lists this agent, and is not paused. */
static lk_status authorize(lk_toolcalls *t, const char *budget_id,
                           const Latchkey__V1__Budget **out, lk_err *err) {
  *out = NULL;
  lk_status st = check_id("budget_id", budget_id, err);
  if (st != LK_OK)
    return st;
  const Latchkey__V1__Budget *b = NULL;
  st = lk_catalog_peek_budget(t->cat, budget_id, &b, err);
  if (st == LK_NOT_FOUND) {
    return lk_fail(err, LK_NOT_FOUND,
                   "budget '%s' does not exist: ask the account owner to "
                   "create it (latchkeyctl budget create %s --agent %s)",
                   budget_id, budget_id, t->cfg.agent_id);
  }
  if (st != LK_OK)
    return st;
  int listed = 0;
  for (size_t i = 0; i < b->n_agents; i++) {
    if (strcmp(b->agents[i], t->cfg.agent_id) == 0)
      listed = 1;
  }
  if (!listed) {
    lk_catalog_release_budget(b);
    return lk_fail(err, LK_PERMISSION_DENIED,
                   "budget '%s' is not available to agent '%s': use a budget "
                   "of this agent, or ask the owner to add the agent to it",
                   budget_id, t->cfg.agent_id);
  }
  if (b->paused) {
    lk_catalog_release_budget(b);
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "budget '%s' is paused: ask the owner to resume it "
                   "(latchkeyctl budget resume %s)",
                   budget_id, budget_id);
  }
  *out = b;
  return LK_OK;
}

/* Finds the credential bound for tool in budget: the tool-specific binding
 * wins, else the budget-wide one for the tool's type. LK_NOT_FOUND when
 * neither exists (or the bound credential is gone or of another type). */
static lk_status resolve(lk_toolcalls *t, const char *budget,
                         const Latchkey__V1__Tool *tool,
                         const Latchkey__V1__Credential **out, lk_err *err) {
  *out = NULL;
  const Latchkey__V1__Binding *bind = NULL;
  lk_status st =
      lk_catalog_peek_binding_tool(t->cat, budget, tool->id, &bind, err);
  if (st == LK_NOT_FOUND) {
    st = lk_catalog_peek_binding_type(t->cat, budget, tool->credential_type,
                                      &bind, err);
  }
  if (st != LK_OK)
    return st;
  const Latchkey__V1__Credential *cred = NULL;
  st = lk_catalog_peek_credential(t->cat, bind->credential_id, &cred, err);
  lk_catalog_release_binding(bind);
  if (st != LK_OK)
    return st;
  if (strcmp(cred->type, tool->credential_type) != 0) {
    lk_catalog_release_credential(cred);
    return lk_fail(err, LK_NOT_FOUND, "bound credential has another type");
  }
  *out = cred;
  return LK_OK;
}

/* Returns 1 when url's host is literally loopback: "localhost", a
 * dotted-quad 127.0.0.0/8 address or [::1]. A name that merely starts
 * with "127." is not (it could resolve anywhere). */
static int is_loopback_host(const char *url) {
  const char *h = strstr(url, "://");
  if (h == NULL)
    return 0;
  h += 3;
  if (strncmp(h, "[::1]", 5) == 0)
    return h[5] == '\0' || h[5] == ':' || h[5] == '/';
  size_t n = strcspn(h, ":/");
  char host[64];
  if (n == 0 || n >= sizeof(host))
    return 0;
  memcpy(host, h, n);
  host[n] = '\0';
  if (strcasecmp(host, "localhost") == 0)
    return 1;
  struct in_addr a;
  if (inet_pton(AF_INET, host, &a) != 1)
    return 0;
  return (ntohl(a.s_addr) >> 24) == 127;
}

/* http:// only to loopback vendors and only when the operator allowed it. */
static lk_status check_destination(lk_toolcalls *t,
                                   const Latchkey__V1__Tool *tool,
                                   lk_err *err) {
  if (strncmp(tool->base_url, "https://", 8) == 0)
    return LK_OK;
  if (strncmp(tool->base_url, "http://", 7) == 0) {
    if (!is_loopback_host(tool->base_url)) {
      return lk_fail(err, LK_FAILED_PRECONDITION,
                     "tool '%s' uses plain http to a non-loopback host: "
                     "register it with an https base_url",
                     tool->id);
    }
    if (!t->cfg.allow_insecure_vendors) {
      return lk_fail(err, LK_FAILED_PRECONDITION,
                     "tool '%s' uses plain http: start latchkeyd with "
                     "--allow-insecure-vendors to allow loopback http vendors",
                     tool->id);
    }
    return LK_OK;
  }
  return lk_fail(err, LK_FAILED_PRECONDITION,
                 "tool '%s' has an unsupported base_url scheme: use https",
                 tool->id);
}

/* Unseals every field of cred into guarded memory. */
static lk_status unseal_fields(lk_toolcalls *t,
                               const Latchkey__V1__Credential *cred,
                               lk_field *fields, size_t *n_fields,
                               lk_err *err) {
  *n_fields = 0;
  if (cred->n_fields > MAX_FIELDS) {
    return lk_fail(err, LK_INTERNAL, "credential '%s' has too many fields",
                   cred->id);
  }
  for (size_t i = 0; i < cred->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = cred->fields[i];
    lk_secret *value = NULL;
    if (f->secret) {
      const Latchkey__V1__SealedValue *s = f->sealed;
      if (s == NULL) {
        return lk_fail(err, LK_FAILED_PRECONDITION,
                       "credential '%s' field '%s' has no sealed value: "
                       "update the credential",
                       cred->id, f->name);
      }
      /* Replicated values are sealed to this node's public key (the one
       * the replica is on, which a rotation changes). */
      lk_status st =
          s->ephemeral_public_key.len > 0
              ? lk_node_keys_unseal_from_node(
                    t->keys, cred->id, f->name, s->ephemeral_public_key.data,
                    s->ephemeral_public_key.len, s->nonce.data, s->nonce.len,
                    s->ciphertext.data, s->ciphertext.len, &value, err)
              : lk_node_keys_unseal(t->keys, s->key_id, cred->id, f->name,
                                    s->nonce.data, s->nonce.len,
                                    s->ciphertext.data, s->ciphertext.len,
                                    &value, err);
      if (st != LK_OK)
        return st;
    } else {
      value = lk_secret_from(f->value, strlen(f->value));
      if (value == NULL) {
        return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
      }
    }
    fields[*n_fields].name = f->name;
    fields[*n_fields].value = value;
    fields[*n_fields].secret = f->secret;
    (*n_fields)++;
  }
  return LK_OK;
}

static void wipe_fields(lk_field *fields, size_t n) {
  for (size_t i = 0; i < n; i++) {
    lk_secret_free((lk_secret *)fields[i].value);
    fields[i].value = NULL;
  }
}

/* Replaces {tool} {budget} {type} in the operator's template. */
static char *render_setup_url(const char *tmpl, const char *tool,
                              const char *budget, const char *type) {
  size_t cap =
      strlen(tmpl) + 16 * (strlen(tool) + strlen(budget) + strlen(type) + 1);
  char *out = malloc(cap + 1);
  if (out == NULL)
    return NULL;
  size_t n = 0;
  for (const char *p = tmpl; *p != '\0' && n < cap;) {
    const char *v = NULL;
    size_t skip = 0;
    if (strncmp(p, "{tool}", 6) == 0)
      v = tool, skip = 6;
    else if (strncmp(p, "{budget}", 8) == 0)
      v = budget, skip = 8;
    else if (strncmp(p, "{type}", 6) == 0)
      v = type, skip = 6;
    if (v != NULL) {
      size_t vl = strlen(v);
      if (n + vl > cap)
        break;
      memcpy(out + n, v, vl);
      n += vl;
      p += skip;
    } else {
      out[n++] = *p++;
    }
  }
  out[n] = '\0';
  return out;
}

/* Adds key: value to obj when value is a valid id (agent input that is
 * not one is never echoed). */
static void put_id(json_t *obj, const char *key, const char *value) {
  if (value != NULL && lk_catalog_valid_id(value)) {
    json_object_set_new(obj, key, json_string(value));
  }
}

/* Returns the outcome name of a failed status: "NOT_FOUND", ... */
static const char *outcome_of(lk_status st) {
  const char *name = lk_status_name(st);
  return strncmp(name, "LK_", 3) == 0 ? name + 3 : name;
}

/* Returns the gRPC code of an outcome name, as text ("0", "5", ...). */
static const char *code_of(const char *outcome) {
  static const char *const codes[] = {"0",  "1",  "2",  "3",  "4",  "5",
                                      "6",  "7",  "8",  "9",  "10", "11",
                                      "12", "13", "14", "15", "16"};
  for (int s = 1; s < LK_STATUS_COUNT; s++) {
    if (strcmp(outcome, outcome_of((lk_status)s)) == 0)
      return codes[lk_status_grpc_code((lk_status)s)];
  }
  return "0"; /* ok, missing_credential: the call itself succeeded */
}

/* Counts one answered Call in the metrics. */
static void count_call(const lk_toolcalls *t, const call_audit *c,
                       int64_t now_us) {
  const char *tool = c->tool_known && c->tool != NULL ? c->tool : "-";
  const char *calls_v[] = {tool, c->outcome, code_of(c->outcome)};
  lk_metric_inc(t->m_calls, calls_v, 1);
  const char *tool_v[] = {tool};
  lk_metric_observe(t->m_duration, tool_v,
                    (double)(now_us - c->start_us) / 1e6);
  if (c->bytes > 0)
    lk_metric_inc(t->m_bytes, tool_v, (double)c->bytes);
  lk_metric_add(t->m_in_flight, NULL, -1);
}

/* Writes the one audit.tool_call line of a call, and counts it. */
static void write_audit(const lk_toolcalls *t, const call_audit *c) {
  int64_t now_us = lk_now_us();
  count_call(t, c, now_us);
  if (!lk_log_enabled(LK_LOG_INFO))
    return; /* audit lines are off (--log-level warn or error) */
  double latency_ms = (double)(now_us - c->start_us) / 1000.0;
  json_t *obj = json_object();
  if (obj != NULL) {
    put_id(obj, "budget", c->budget);
    put_id(obj, "tool", c->tool);
    put_id(obj, "operation", c->operation);
    put_id(obj, "credential_id", c->credential_id);
    put_id(obj, "credential_type", c->credential_type);
    json_object_set_new(obj, "vendor_status", json_integer(c->vendor_status));
    json_object_set_new(obj, "latency_ms", json_real(latency_ms));
    json_object_set_new(obj, "bytes", json_integer((json_int_t)c->bytes));
    json_object_set_new(obj, "redacted", json_boolean(c->redacted));
    json_object_set_new(obj, "outcome", json_string(c->outcome));
    if (c->oauth_retry)
      json_object_set_new(obj, "oauth_retry", json_true());
    if (c->hashes != NULL) {
      json_object_set(obj, "secret_hashes", c->hashes);
    } else if (c->hash_error != NULL) {
      json_object_set_new(obj, "secret_hashes_unavailable",
                          json_string(c->hash_error));
    }
  }
  lk_log_fields(
      LK_LOG_INFO, "audit.tool_call", obj,
      "budget=%s tool=%s operation=%s outcome=%s",
      c->budget && lk_catalog_valid_id(c->budget) ? c->budget : "-",
      c->tool && lk_catalog_valid_id(c->tool) ? c->tool : "-",
      c->operation && lk_catalog_valid_id(c->operation) ? c->operation : "-",
      c->outcome);
  json_decref(obj);
}

/* Why a call is answered with a MissingCredential. */
typedef enum {
  MISSING_UNBOUND,      /* no credential bound */
  MISSING_EXPIRED,      /* an oauth2 access token that has expired */
  MISSING_REFUSED_GRANT /* a 401, then the provider refused the refresh */
} missing_kind;

/* Answers with a MissingCredential: fields, patterns and help, no value.
 * For an oauth2 credential (cred, with kind EXPIRED or REFUSED_GRANT) the
 * hint says the connection must be re-authorised. */
static void reply_missing(lk_toolcalls *t, lk_rpc_call *call,
                          const char *budget, const Latchkey__V1__Tool *tool,
                          const char *op, int64_t start_us, missing_kind kind,
                          const Latchkey__V1__Credential *cred, lk_err *err) {
  Latchkey__V1__CredentialType *type = NULL;
  const char *cred_id = kind != MISSING_UNBOUND && cred ? cred->id : NULL;
  if (lk_catalog_get_type(t->cat, tool->credential_type, &type, err) != LK_OK) {
    lk_fail(err, LK_FAILED_PRECONDITION,
            "tool '%s' declares credential type '%s', which is not "
            "registered: ask the owner to register it",
            tool->id, tool->credential_type);
    call_audit c = {budget,
                    tool->id,
                    op,
                    cred_id,
                    tool->credential_type,
                    outcome_of(err->code),
                    0,
                    start_us,
                    0,
                    0,
                    NULL,
                    NULL,
                    1,
                    0};
    write_audit(t, &c);
    lk_rpc_call_fail(call, err);
    return;
  }
  Latchkey__V1__MissingCredential mc = LATCHKEY__V1__MISSING_CREDENTIAL__INIT;
  mc.budget_id = (char *)budget;
  mc.tool_id = tool->id;
  mc.credential_type = type->id;
  Latchkey__V1__CredentialField **fields =
      calloc(type->n_fields ? type->n_fields : 1, sizeof(*fields));
  Latchkey__V1__CredentialField *copies =
      calloc(type->n_fields ? type->n_fields : 1, sizeof(*copies));
  char names[1024] = "";
  size_t nl = 0;
  for (size_t i = 0; fields && copies && i < type->n_fields; i++) {
    latchkey__v1__credential_field__init(&copies[i]);
    copies[i].name = type->fields[i]->name;
    copies[i].secret = type->fields[i]->secret;
    copies[i].pattern = type->fields[i]->pattern;
    copies[i].description = type->fields[i]->description;
    copies[i].max_len = type->fields[i]->max_len;
    fields[i] = &copies[i];
    if (nl + strlen(type->fields[i]->name) + 32 < sizeof(names)) {
      nl += (size_t)snprintf(names + nl, sizeof(names) - nl, "%s\"%s\":\"...\"",
                             i ? "," : "", type->fields[i]->name);
    }
  }
  mc.n_required_fields = (fields && copies) ? type->n_fields : 0;
  mc.required_fields = fields;
  char *setup_url = NULL;
  if (t->cfg.setup_url_template != NULL && t->cfg.setup_url_template[0]) {
    setup_url =
        render_setup_url(t->cfg.setup_url_template, tool->id, budget, type->id);
  }
  mc.setup_url = setup_url ? setup_url : "";
  char hint[2048];
  if (cred_id != NULL) {
    lk_oauth_reauthorize_hint(cred, lk_wall_ms(), kind == MISSING_REFUSED_GRANT,
                              kind == MISSING_REFUSED_GRANT, setup_url, hint,
                              sizeof(hint));
  } else {
    snprintf(hint, sizeof(hint),
             "No credential of type '%s' is bound for tool '%s' in budget "
             "'%s'. Create one (secret values on stdin, never in argv): "
             "echo '{%s}' | latchkeyctl credential create --type %s --label "
             "LABEL; then bind it: latchkeyctl bind %s --tool %s --credential "
             "CREDENTIAL_ID (or --type %s to share it with every tool of that "
             "type in the budget).",
             type->id, tool->id, budget, names, type->id, budget, tool->id,
             type->id);
  }
  mc.hint = hint;

  Latchkey__V1__ToolCallResponse resp = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  resp.outcome_case =
      LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_MISSING_CREDENTIAL;
  resp.missing_credential = &mc;
  size_t len = latchkey__v1__tool_call_response__get_packed_size(&resp);
  unsigned char *buf = malloc(len ? len : 1);
  /* The audit line is written before the answer leaves. */
  call_audit c = {
      budget,   tool->id,
      op,       cred_id,
      type->id, buf != NULL ? "missing_credential" : "RESOURCE_EXHAUSTED",
      0,        start_us,
      0,        0,
      NULL,     NULL,
      1,        0};
  write_audit(t, &c);
  if (buf == NULL) {
    lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    lk_rpc_call_fail(call, err);
  } else {
    latchkey__v1__tool_call_response__pack(&resp, buf);
    lk_rpc_call_finish(call, buf, len);
    free(buf);
  }
  free(setup_url);
  free(fields);
  free(copies);
  lk_catalog_free_type(type);
}

/* The access token of oauth2 credential cred has expired (or its expiry
 * is unknown): it is never sent. Counts and logs it, and answers. */
static void reply_expired(lk_toolcalls *t, lk_rpc_call *call,
                          const char *budget, const Latchkey__V1__Tool *tool,
                          const char *op, int64_t start_us,
                          const Latchkey__V1__Credential *cred, lk_err *err) {
  lk_metric_inc(t->m_oauth_expired, NULL, 1);
  lk_log(LK_LOG_INFO, "oauth_token_expired",
         "credential %s: the access token expired (expires_at %lld ms, "
         "generation %llu); answering missing_credential",
         cred->id, (long long)lk_oauth_expires_at_ms(cred),
         (unsigned long long)cred->oauth->generation);
  reply_missing(t, call, budget, tool, op, start_us, MISSING_EXPIRED, cred,
                err);
}

/* ---- the second half: vendor answered -------------------------------- */

static int pending_cancelled(void *ctx) {
  pending *p = ctx;
  return lk_rpc_call_cancelled(p->call);
}

static void pending_free(pending *p) {
  lk_http_request_destroy(p->req);
  lk_scrubber_destroy(p->scrub);
  lk_scrubber_destroy(p->old_scrub);
  free(p->budget);
  free(p->tool);
  free(p->op);
  free(p->cred_id);
  json_decref(p->hashes);
  json_decref(p->args);
  lk_catalog_release_tool(p->tool_rec);
  free(p->first);
  free(p);
}

static void audit(const pending *p, const char *outcome, long vendor_status,
                  size_t bytes, int redacted) {
  call_audit c = {p->budget, p->tool,       p->op,       p->cred_id, NULL,
                  outcome,   vendor_status, p->start_us, bytes,      redacted,
                  p->hashes, p->hash_error, 1,           p->retried};
  write_audit(p->t, &c);
}

/* Hashes every secret field value for the audit line, before the values
 * are wiped. Returns the object (field name -> hash), or NULL with *why
 * set when there is no audit key yet, and NULL alone without an audit key
 * holder. */
static json_t *hash_secrets(lk_toolcalls *t, const lk_field *fields, size_t n,
                            const char **why) {
  *why = NULL;
  if (t->cfg.audit == NULL) {
    return NULL;
  }
  if (!lk_log_enabled(LK_LOG_INFO)) {
    *why = "audit lines were off when the call started";
    return NULL;
  }
  json_t *obj = json_object();
  if (obj == NULL) {
    *why = "out of memory";
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    char hex[LK_AUDIT_HEX_BYTES];
    lk_err err;
    if (!fields[i].secret) {
      continue;
    }
    if (lk_audit_key_hash(t->cfg.audit, lk_secret_data(fields[i].value),
                          lk_secret_len(fields[i].value), hex, &err) != LK_OK) {
      json_decref(obj);
      *why = "no audit key yet (the control plane has not sent it)";
      return NULL;
    }
    json_object_set_new(obj, fields[i].name, json_string(hex));
  }
  return obj;
}

/* Connection-level headers and the length of a body we may have changed
 * by scrubbing describe the vendor hop, not the answer: drop them. */
static int is_hop_header(const char *name) {
  static const char *const hop[] = {
      "connection",
      "keep-alive",
      "transfer-encoding",
      "content-length",
      "te",
      "trailer",
      "upgrade",
      "proxy-authenticate",
      "proxy-connection",
  };
  for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
    if (strcmp(name, hop[i]) == 0)
      return 1;
  }
  return 0;
}

/* Splits the scrubbed header block into lowercase name -> value entries
 * (repeated names joined with ", "). Returns the number of entries. */
static size_t parse_headers(char *block,
                            Latchkey__V1__ToolResult__HeadersEntry *entries,
                            Latchkey__V1__ToolResult__HeadersEntry **ptrs,
                            char *owned, char **content_type) {
  size_t n = 0;
  *content_type = NULL;
  char *save = NULL;
  for (char *line = strtok_r(block, "\r\n", &save); line != NULL;
       line = strtok_r(NULL, "\r\n", &save)) {
    char *colon = strchr(line, ':');
    if (colon == NULL || colon == line)
      continue;
    *colon = '\0';
    char *value = colon + 1;
    while (*value == ' ' || *value == '\t')
      value++;
    for (char *c = line; *c; c++)
      *c = (char)tolower((unsigned char)*c);
    if (is_hop_header(line))
      continue;
    size_t k;
    for (k = 0; k < n; k++) {
      if (strcmp(entries[k].key, line) == 0)
        break;
    }
    if (k < n) {
      /* Repeated header: join, as HTTP allows. */
      size_t a = strlen(entries[k].value), b = strlen(value);
      char *joined = malloc(a + b + 3);
      if (joined == NULL)
        continue;
      memcpy(joined, entries[k].value, a);
      memcpy(joined + a, ", ", 2);
      memcpy(joined + a + 2, value, b + 1);
      if (owned[k])
        free(entries[k].value);
      entries[k].value = joined;
      owned[k] = 1;
      if (strcmp(entries[k].key, "content-type") == 0)
        *content_type = joined;
      continue;
    }
    if (n == MAX_HEADERS)
      continue;
    latchkey__v1__tool_result__headers_entry__init(&entries[n]);
    entries[n].key = line;
    entries[n].value = value;
    owned[n] = 0;
    ptrs[n] = &entries[n];
    if (strcmp(line, "content-type") == 0)
      *content_type = value;
    n++;
  }
  return n;
}

/* Counts a failed vendor call: a transport status or an HTTP error. */
static void count_vendor_error(const pending *p, lk_status st,
                               long http_status) {
  char kind[32];
  if (st != LK_OK) {
    const char *name = outcome_of(st);
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof(kind); i++)
      kind[i] = (char)tolower((unsigned char)name[i]);
    kind[i] = '\0';
  } else if (http_status >= 500) {
    snprintf(kind, sizeof(kind), "http_5xx");
  } else if (http_status >= 400) {
    snprintf(kind, sizeof(kind), "http_4xx");
  } else {
    return;
  }
  const char *v[] = {p->tool, kind};
  lk_metric_inc(p->t->m_vendor, v, 1);
}

/* Returns the sidecar-internal time of the leg whose answer came back at
 * back_us: its start to the request's writing (submission when the
 * forwarder could not say), plus the answer to now. */
static int64_t leg_internal_us(const pending *p, int64_t back_us) {
  return (p->submitted_us - p->leg_start_us) + (lk_now_us() - back_us);
}

/* Records the sidecar-internal time of a call that reached the vendor:
 * every leg's (one, or two with an oauth2 retry; never the wait for a
 * refreshed token), taken before the call's total is (audit), never
 * after. back_us = 0: no leg is open. */
static void observe_internal(const pending *p, int64_t back_us) {
  int64_t us = p->internal_us + (back_us ? leg_internal_us(p, back_us) : 0);
  lk_metric_observe(p->t->m_internal, NULL, (double)us / 1e6);
}

/* Scrubs the vendor's answer (with the scrubber of the token sent, then
 * with the one of the token sent before it, if any) and packs it as a
 * ToolCallResponse into *out (malloc'd). */
static lk_status pack_result(pending *p, const lk_forward_result *res,
                             unsigned char **out, size_t *out_len,
                             size_t *body_bytes, int *redacted, lk_err *err) {
  unsigned char *body = NULL, *head = NULL;
  size_t body_len = 0, head_len = 0, n_body = 0, n_head = 0;
  *out = NULL;
  *out_len = 0;
  *body_bytes = 0;
  *redacted = 0;
  lk_status st = lk_scrub(
      p->scrub, lk_secret_data(res->body), lk_secret_len(res->body),
      p->t->cfg.max_response_bytes * 2, &body, &body_len, &n_body, err);
  if (st == LK_OK) {
    st = lk_scrub(p->scrub, lk_secret_data(res->headers),
                  lk_secret_len(res->headers), 256 * 1024, &head, &head_len,
                  &n_head, err);
  }
  if (st == LK_OK && p->old_scrub != NULL) {
    unsigned char *again = NULL;
    size_t again_len = 0, n = 0;
    st =
        lk_scrub(p->old_scrub, body, body_len, p->t->cfg.max_response_bytes * 4,
                 &again, &again_len, &n, err);
    if (st == LK_OK) {
      free(body);
      body = again;
      body_len = again_len;
      n_body += n;
      st = lk_scrub(p->old_scrub, head, head_len, 512 * 1024, &again,
                    &again_len, &n, err);
    }
    if (st == LK_OK) {
      free(head);
      head = again;
      head_len = again_len;
      n_head += n;
    }
  }
  if (st != LK_OK) {
    free(body);
    free(head);
    return st;
  }
  char *head_str = malloc(head_len + 1);
  Latchkey__V1__ToolResult__HeadersEntry entries[MAX_HEADERS];
  Latchkey__V1__ToolResult__HeadersEntry *ptrs[MAX_HEADERS];
  char owned[MAX_HEADERS];
  size_t n_entries = 0;
  char *content_type = NULL;
  if (head_str != NULL) {
    memcpy(head_str, head, head_len);
    head_str[head_len] = '\0';
    n_entries = parse_headers(head_str, entries, ptrs, owned, &content_type);
  }
  Latchkey__V1__ToolResult result = LATCHKEY__V1__TOOL_RESULT__INIT;
  result.http_status = (int32_t)res->http_status;
  result.content_type = content_type ? content_type : "";
  result.body.data = body;
  result.body.len = body_len;
  result.n_headers = n_entries;
  result.headers = ptrs;
  result.redacted = (n_body + n_head) > 0;
  Latchkey__V1__ToolCallResponse resp = LATCHKEY__V1__TOOL_CALL_RESPONSE__INIT;
  resp.outcome_case = LATCHKEY__V1__TOOL_CALL_RESPONSE__OUTCOME_RESULT;
  resp.result = &result;
  size_t len = latchkey__v1__tool_call_response__get_packed_size(&resp);
  unsigned char *buf = malloc(len ? len : 1);
  if (buf == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    latchkey__v1__tool_call_response__pack(&resp, buf);
    *out = buf;
    *out_len = len;
    *body_bytes = body_len;
    *redacted = result.redacted;
  }
  for (size_t i = 0; i < n_entries; i++) {
    if (owned[i])
      free(entries[i].value);
  }
  free(head_str);
  free(body);
  free(head);
  return st;
}

/* Answers the call with the packed first answer (the 401) kept while a
 * refresh was asked for. */
static void answer_first(pending *p) {
  observe_internal(p, 0);
  audit(p, "ok", 401, p->first_body_len, p->first_redacted);
  lk_rpc_call_finish(p->call, p->first, p->first_len);
  pending_free(p);
}

static void on_vendor_done(void *ctx, const lk_forward_result *res);

/* Remaining time of a call for one more vendor request: the call's
 * deadline, capped by the tool's timeout from now. */
static int64_t leg_deadline_ms(const pending *p) {
  uint32_t timeout_ms = p->tool_rec->timeout_ms ? p->tool_rec->timeout_ms
                                                : DEFAULT_TOOL_TIMEOUT_MS;
  int64_t deadline = lk_now_ms() + timeout_ms;
  return p->call_deadline_ms < deadline ? p->call_deadline_ms : deadline;
}

/* Gives up on a retry (why says why) and answers the first 401. */
static void retry_abandoned(pending *p, const char *why) {
  lk_log(LK_LOG_INFO, "oauth_retry_skipped",
         "credential %s: the vendor of tool '%s' refused the access token "
         "of generation %llu; returning its 401: %s",
         p->cred_id ? p->cred_id : "-", p->tool,
         (unsigned long long)p->oauth_generation, why);
  answer_first(p);
}

/* The catalog holds a newer token: resolve and unseal again and send the
 * request once more. Whatever that answers is the call's answer. */
static void retry_call(pending *p) {
  lk_toolcalls *t = p->t;
  lk_err err;
  lk_err_clear(&err);
  const Latchkey__V1__Credential *cred = NULL;
  Latchkey__V1__CredentialType *type = NULL;
  lk_field fields[MAX_FIELDS];
  size_t n_fields = 0;
  lk_http_request *req = NULL;
  lk_scrubber *scrub = NULL;
  json_t *hashes = NULL;
  const char *hash_error = NULL;
  p->leg_start_us = lk_now_us();
  lk_status st = resolve(t, p->budget, p->tool_rec, &cred, &err);
  if (st == LK_NOT_FOUND) {
    /* Unbound (or removed) while the refresh was under way. */
    reply_missing(t, p->call, p->budget, p->tool_rec, p->op, p->start_us,
                  MISSING_UNBOUND, NULL, &err);
    pending_free(p);
    goto done;
  }
  if (st == LK_OK && lk_oauth_credential_is_oauth2(cred) &&
      lk_oauth_expired(cred, lk_wall_ms())) {
    reply_expired(t, p->call, p->budget, p->tool_rec, p->op, p->start_us, cred,
                  &err);
    pending_free(p);
    goto done;
  }
  if (st == LK_OK)
    st = lk_catalog_get_type(t->cat, p->tool_rec->credential_type, &type, &err);
  if (st == LK_OK)
    st = unseal_fields(t, cred, fields, &n_fields, &err);
  if (st == LK_OK)
    st = lk_inject_build(p->tool_rec, p->op_rec, type, fields, n_fields,
                         p->args, &req, &err);
  if (st == LK_OK)
    st = lk_scrubber_new(fields, n_fields, req->userpwd, &scrub, &err);
  if (st != LK_OK) {
    char why[sizeof(err.msg) + 32];
    snprintf(why, sizeof(why), "cannot build the retry: %s", err.msg);
    retry_abandoned(p, why);
    goto done;
  }
  hashes = hash_secrets(t, fields, n_fields, &hash_error);
  /* Last use of the unsealed values: the request and scrubber own copies. */
  wipe_fields(fields, n_fields);
  n_fields = 0;
  char *cred_id = strdup(cred->id);
  if (cred_id == NULL) {
    retry_abandoned(p, "out of memory");
    goto done;
  }
  free(p->cred_id);
  p->cred_id = cred_id;
  json_decref(p->hashes);
  p->hashes = hashes;
  p->hash_error = hash_error;
  hashes = NULL;
  p->req = req;
  p->scrub = scrub;
  req = NULL;
  scrub = NULL;
  p->retried = 1;
  lk_metric_inc(t->m_oauth_retries, NULL, 1);
  lk_log(LK_LOG_INFO, "oauth_retry",
         "credential %s: retrying the call to tool '%s' with the refreshed "
         "token (generation %llu refused)",
         p->cred_id, p->tool, (unsigned long long)p->oauth_generation);
  int allow_private = t->cfg.allow_insecure_vendors &&
                      lk_forward_url_host_is_private(p->tool_rec->base_url);
  p->submitted_us = lk_now_us();
  lk_forwarder_submit(t->fwd, p->req, allow_private, leg_deadline_ms(p),
                      pending_cancelled, on_vendor_done, p);
done:
  json_decref(hashes);
  wipe_fields(fields, n_fields);
  lk_http_request_destroy(req);
  lk_scrubber_destroy(scrub);
  lk_catalog_release_credential(cred);
  lk_catalog_free_type(type);
}

/* lk_oauth_retry_done: what came of the refresh a 401 asked for. */
static void on_refresh_outcome(void *ctx, lk_oauth_retry_outcome outcome,
                               const char *why) {
  pending *p = ctx;
  if (outcome == LK_OAUTH_RETRY_NEW_TOKEN) {
    retry_call(p);
    return;
  }
  if (outcome == LK_OAUTH_RETRY_GIVE_UP) {
    retry_abandoned(p, why);
    return;
  }
  /* The provider refused the grant: the owner must re-authorise. */
  lk_err err;
  lk_err_clear(&err);
  Latchkey__V1__Credential *cred = NULL;
  if (lk_catalog_get_credential(p->t->cat, p->cred_id, &cred, &err) != LK_OK ||
      !lk_oauth_credential_is_oauth2(cred)) {
    lk_catalog_free_credential(cred);
    retry_abandoned(p,
                    "the provider refused the grant, and the credential "
                    "is no longer an oauth2 one in the catalog");
    return;
  }
  lk_log(LK_LOG_INFO, "oauth_reauthorize",
         "credential %s: the vendor refused its token and the identity "
         "provider refused the refresh; answering missing_credential",
         p->cred_id);
  observe_internal(p, 0);
  reply_missing(p->t, p->call, p->budget, p->tool_rec, p->op, p->start_us,
                MISSING_REFUSED_GRANT, cred, &err);
  lk_catalog_free_credential(cred);
  pending_free(p);
}

static void on_vendor_done(void *ctx, const lk_forward_result *res) {
  int64_t back_us = lk_now_us();
  pending *p = ctx;
  if (res->sent_us >= p->submitted_us && res->answered_us >= res->sent_us &&
      res->answered_us <= back_us) {
    /* The forwarder's queue and curl's own work count as the sidecar's;
     * only the vendor's answer (and new connections' set-up) does not. */
    p->submitted_us = res->sent_us;
    back_us = res->answered_us;
  }
  lk_err err;
  lk_err_clear(&err);
  count_vendor_error(p, res->status, res->http_status);
  /* The transfer is over: the built request (holding the secret) goes. */
  lk_http_request_destroy(p->req);
  p->req = NULL;
  if (res->status != LK_OK) {
    lk_fail(&err, res->status, "calling tool '%s': %s", p->tool, res->err.msg);
    observe_internal(p, back_us);
    audit(p, outcome_of(res->status), 0, 0, 0);
    lk_rpc_call_fail(p->call, &err);
    pending_free(p);
    return;
  }
  unsigned char *buf = NULL;
  size_t len = 0, body_len = 0;
  int redacted = 0;
  lk_status st = pack_result(p, res, &buf, &len, &body_len, &redacted, &err);
  if (st == LK_OK && res->http_status == 401 && p->may_refresh) {
    /* A token the catalog holds as valid was refused: ask for a refresh
     * and retry once (sidecar/oauth_retry). The answer is kept, scrubbed,
     * in case no new token comes. */
    p->may_refresh = 0;
    p->first = buf;
    p->first_len = len;
    p->first_body_len = body_len;
    p->first_redacted = redacted;
    p->internal_us += leg_internal_us(p, back_us);
    p->old_scrub = p->scrub;
    p->scrub = NULL;
    int64_t deadline = leg_deadline_ms(p) - OAUTH_ANSWER_MARGIN_MS;
    if (deadline <= lk_now_ms()) {
      retry_abandoned(p, "no time left before the call's deadline");
      return;
    }
    /* Past this call p may be answered and freed already. */
    if (lk_oauth_retry_submit(p->t->cfg.oauth_retry, p->cred_id,
                              p->oauth_generation, deadline, on_refresh_outcome,
                              p, &err) != LK_OK) {
      retry_abandoned(p, err.msg);
    }
    return;
  }
  lk_scrubber_destroy(p->scrub);
  p->scrub = NULL;
  /* The internal time ends before the audit line takes the call's total,
   * so it is always part of it. The audit line is written before the
   * answer leaves: once the agent has an answer, its call is on record. */
  observe_internal(p, back_us);
  if (st != LK_OK) {
    audit(p, outcome_of(st), res->http_status, 0, 0);
    lk_rpc_call_fail(p->call, &err);
  } else {
    audit(p, "ok", res->http_status, body_len, redacted);
    lk_rpc_call_finish(p->call, buf, len);
  }
  free(buf);
  pending_free(p);
}

/* ---- Call ------------------------------------------------------------ */

static void handle_call(lk_toolcalls *t, lk_rpc_call *call) {
  lk_err err;
  lk_err_clear(&err);
  int64_t start_us = lk_now_us();
  lk_metric_add(t->m_in_flight, NULL, 1);
  size_t req_len = 0;
  const unsigned char *req_bytes = lk_rpc_call_request(call, &req_len);
  Latchkey__V1__ToolCallRequest *rq = NULL;
  /* Shared catalog records (lk_catalog_peek_*): released, not freed. */
  const Latchkey__V1__Budget *budget = NULL;
  const Latchkey__V1__Tool *tool = NULL;
  const Latchkey__V1__CredentialType *type = NULL;
  const Latchkey__V1__Credential *cred = NULL;
  json_t *args = NULL;
  lk_field fields[MAX_FIELDS];
  size_t n_fields = 0;
  lk_http_request *req = NULL;
  lk_scrubber *scrub = NULL;
  pending *p = NULL;
  const Latchkey__V1__Operation *op = NULL;
  json_t *hashes = NULL;
  const char *hash_error = NULL;
  lk_status st;

  rq = latchkey__v1__tool_call_request__unpack(NULL, req_len, req_bytes);
  if (rq == NULL) {
    st = lk_fail(&err, LK_INVALID_ARGUMENT,
                 "request is not a valid latchkey.v1.ToolCallRequest");
    goto fail;
  }
  if (t->cfg.stale != NULL && t->cfg.stale(t->cfg.stale_ctx, &err)) {
    st = err.code;
    goto fail;
  }
  st = authorize(t, rq->budget_id, &budget, &err);
  if (st != LK_OK)
    goto fail;
  st = check_id("tool_id", rq->tool_id, &err);
  if (st != LK_OK)
    goto fail;
  st = lk_catalog_peek_tool(t->cat, rq->tool_id, &tool, &err);
  if (st == LK_NOT_FOUND) {
    st = lk_fail(&err, LK_NOT_FOUND,
                 "tool '%s' is not registered: list the tools of budget '%s' "
                 "with ToolCalls/ListTools",
                 rq->tool_id, rq->budget_id);
  }
  if (st != LK_OK)
    goto fail;
  for (size_t i = 0; i < tool->n_operations; i++) {
    if (strcmp(tool->operations[i]->name, rq->operation) == 0) {
      op = tool->operations[i];
    }
  }
  if (op == NULL) {
    char known[512] = "";
    size_t kn = 0;
    for (size_t i = 0; i < tool->n_operations && kn + 80 < sizeof(known); i++) {
      kn += (size_t)snprintf(known + kn, sizeof(known) - kn, "%s%s",
                             i ? ", " : "", tool->operations[i]->name);
    }
    st = lk_fail(&err, LK_NOT_FOUND,
                 "tool '%s' has no operation '%.64s': use one of %s", tool->id,
                 rq->operation, known);
    goto fail;
  }
  st = lk_args_parse(op, rq->arguments_json, strlen(rq->arguments_json), &args,
                     &err);
  if (st != LK_OK)
    goto fail;
  st = check_destination(t, tool, &err);
  if (st != LK_OK)
    goto fail;

  if (tool->credential_type[0] != '\0') {
    /* Taken before the record is read, so a rotation finishing after
     * that read shows (see the retry below). */
    uint64_t key_generation = lk_node_keys_generation(t->keys);
    st = resolve(t, budget->id, tool, &cred, &err);
    if (st == LK_NOT_FOUND) {
      reply_missing(t, call, budget->id, tool, op->name, start_us,
                    MISSING_UNBOUND, NULL, &err);
      goto done;
    }
    if (st != LK_OK)
      goto fail;
    if (lk_oauth_credential_is_oauth2(cred) &&
        lk_oauth_expired(cred, lk_wall_ms())) {
      /* Never sent: the owner (or the control plane) must renew it. */
      reply_expired(t, call, budget->id, tool, op->name, start_us, cred, &err);
      goto done;
    }
    st = lk_catalog_peek_type(t->cat, tool->credential_type, &type, &err);
    if (st != LK_OK)
      goto fail;
    st = unseal_fields(t, cred, fields, &n_fields, &err);
    if (st == LK_FAILED_PRECONDITION &&
        lk_node_keys_generation(t->keys) != key_generation) {
      /* A node key rotation finished between reading the credential and
       * opening it: the record read may be sealed to the key just wiped,
       * and the store now holds it sealed to the new one. Once more. */
      wipe_fields(fields, n_fields);
      n_fields = 0;
      lk_catalog_release_credential(cred);
      cred = NULL;
      st = resolve(t, budget->id, tool, &cred, &err);
      if (st == LK_OK && lk_oauth_credential_is_oauth2(cred) &&
          lk_oauth_expired(cred, lk_wall_ms())) {
        reply_expired(t, call, budget->id, tool, op->name, start_us, cred,
                      &err);
        goto done;
      }
      if (st == LK_OK)
        st = unseal_fields(t, cred, fields, &n_fields, &err);
    }
    if (st != LK_OK)
      goto fail;
  }
  st = lk_inject_build(tool, op, type, fields, n_fields, args, &req, &err);
  if (st != LK_OK)
    goto fail;
  st = lk_scrubber_new(fields, n_fields, req->userpwd, &scrub, &err);
  if (st != LK_OK)
    goto fail;
  hashes = hash_secrets(t, fields, n_fields, &hash_error);
  /* Last use of the unsealed values: the request and scrubber own copies. */
  wipe_fields(fields, n_fields);
  n_fields = 0;

  p = calloc(1, sizeof(*p));
  if (p == NULL) {
    st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto fail;
  }
  p->t = t;
  p->call = call;
  p->req = req;
  p->scrub = scrub;
  p->budget = strdup(budget->id);
  p->tool = strdup(tool->id);
  p->op = strdup(op->name);
  p->cred_id = cred ? strdup(cred->id) : NULL;
  p->start_us = start_us;
  p->hashes = cred ? hashes : NULL;
  p->hash_error = cred ? hash_error : NULL;
  if (p->hashes == hashes)
    hashes = NULL;
  req = NULL;
  scrub = NULL;
  uint32_t timeout_ms =
      tool->timeout_ms ? tool->timeout_ms : DEFAULT_TOOL_TIMEOUT_MS;
  int64_t deadline = lk_now_ms() + timeout_ms;
  int64_t call_deadline = lk_rpc_call_deadline_ms(call);
  if (call_deadline < deadline)
    deadline = call_deadline;
  /* Private destinations only for a vendor named by such a literal
   * address (or "localhost"), and only when the operator allowed it. */
  int allow_private = t->cfg.allow_insecure_vendors &&
                      lk_forward_url_host_is_private(tool->base_url);
  if (t->cfg.oauth_retry != NULL && lk_oauth_credential_is_oauth2(cred)) {
    /* A 401 may be retried once with a refreshed token: keep what that
     * needs (no secret: the tool, arguments and deadline). */
    p->may_refresh = 1;
    p->oauth_generation = cred->oauth->generation;
    p->tool_rec = tool;
    p->op_rec = op;
    p->args = args;
    p->call_deadline_ms = call_deadline;
    tool = NULL;
    args = NULL;
  }
  /* Set before the submission: the answer may arrive at once. */
  p->leg_start_us = start_us;
  p->submitted_us = lk_now_us();
  lk_forwarder_submit(t->fwd, p->req, allow_private, deadline,
                      pending_cancelled, on_vendor_done, p);
  goto done;

fail : {
  call_audit c = {rq ? rq->budget_id : NULL,
                  rq ? rq->tool_id : NULL,
                  op ? op->name : NULL,
                  cred ? cred->id : NULL,
                  NULL,
                  outcome_of(st),
                  0,
                  start_us,
                  0,
                  0,
                  NULL,
                  NULL,
                  tool != NULL,
                  0};
  write_audit(t, &c);
}
  lk_rpc_call_fail(call, &err);
done:
  json_decref(hashes);
  wipe_fields(fields, n_fields);
  lk_http_request_destroy(req);
  lk_scrubber_destroy(scrub);
  json_decref(args);
  lk_catalog_release_credential(cred);
  lk_catalog_release_type(type);
  lk_catalog_release_tool(tool);
  lk_catalog_release_budget(budget);
  if (rq != NULL) {
    latchkey__v1__tool_call_request__free_unpacked(rq, NULL);
  }
}

/* ---- ListTools ------------------------------------------------------- */

typedef struct {
  lk_toolcalls *t;
  const char *budget;
  Latchkey__V1__ToolInfo **infos;
  size_t n;
  size_t cap;
  lk_status st;
  lk_err *err;
} list_ctx;

static int credential_ready(lk_toolcalls *t, const char *budget,
                            const Latchkey__V1__Tool *tool) {
  if (tool->credential_type[0] == '\0')
    return 1;
  const Latchkey__V1__Credential *cred = NULL;
  lk_err ignored;
  if (resolve(t, budget, tool, &cred, &ignored) != LK_OK)
    return 0;
  /* An OAuth connection whose token expired answers missing_credential
   * until it is refreshed or re-authorised: not ready either. */
  int ready = !(lk_oauth_credential_is_oauth2(cred) &&
                lk_oauth_expired(cred, lk_wall_ms()));
  lk_catalog_release_credential(cred);
  return ready;
}

static void free_info(Latchkey__V1__ToolInfo *info) {
  if (info == NULL)
    return;
  for (size_t i = 0; i < info->n_operations; i++) {
    Latchkey__V1__OperationInfo *o = info->operations[i];
    if (o == NULL)
      continue;
    free(o->name);
    free(o->description);
    free(o->method);
    free(o->path);
    free(o->parameters_json_schema);
    free(o);
  }
  free(info->operations);
  free(info->tool_id);
  free(info->description);
  free(info->credential_type);
  free(info);
}

static int add_tool(void *ctx, Latchkey__V1__Tool *tool) {
  list_ctx *lc = ctx;
  Latchkey__V1__ToolInfo *info = calloc(1, sizeof(*info));
  if (info == NULL || (lc->n == lc->cap && lc->cap >= 100000))
    goto oom;
  latchkey__v1__tool_info__init(info);
  info->tool_id = strdup(tool->id);
  info->description = strdup(tool->description);
  info->credential_type = strdup(tool->credential_type);
  info->credential_ready = credential_ready(lc->t, lc->budget, tool);
  info->operations = calloc(tool->n_operations ? tool->n_operations : 1,
                            sizeof(*info->operations));
  if (!info->tool_id || !info->description || !info->credential_type ||
      !info->operations) {
    goto oom;
  }
  for (size_t i = 0; i < tool->n_operations; i++) {
    const Latchkey__V1__Operation *op = tool->operations[i];
    Latchkey__V1__OperationInfo *o = calloc(1, sizeof(*o));
    if (o == NULL)
      goto oom;
    latchkey__v1__operation_info__init(o);
    info->operations[info->n_operations++] = o;
    o->name = strdup(op->name);
    o->description = strdup(op->description);
    o->method = strdup(op->method);
    o->path = strdup(op->path);
    if (lk_args_schema(op, &o->parameters_json_schema, lc->err) != LK_OK) {
      lc->st = lc->err->code;
      goto fail;
    }
    if (!o->name || !o->description || !o->method || !o->path)
      goto oom;
  }
  if (lc->n == lc->cap) {
    size_t cap = lc->cap ? lc->cap * 2 : 16;
    Latchkey__V1__ToolInfo **grown = realloc(lc->infos, cap * sizeof(*grown));
    if (grown == NULL)
      goto oom;
    lc->infos = grown;
    lc->cap = cap;
  }
  lc->infos[lc->n++] = info;
  lk_catalog_free_tool(tool);
  return 0;
oom:
  lc->st = lk_fail(lc->err, LK_RESOURCE_EXHAUSTED, "out of memory");
fail:
  free_info(info);
  lk_catalog_free_tool(tool);
  return 1;
}

static void handle_list_tools(lk_toolcalls *t, lk_rpc_call *call) {
  lk_err err;
  lk_err_clear(&err);
  size_t req_len = 0;
  const unsigned char *req_bytes = lk_rpc_call_request(call, &req_len);
  const Latchkey__V1__Budget *budget = NULL;
  list_ctx lc = {t, NULL, NULL, 0, 0, LK_OK, &err};
  Latchkey__V1__ListToolsRequest *rq =
      latchkey__v1__list_tools_request__unpack(NULL, req_len, req_bytes);
  lk_status st;
  if (rq == NULL) {
    st = lk_fail(&err, LK_INVALID_ARGUMENT,
                 "request is not a valid latchkey.v1.ListToolsRequest");
    goto out;
  }
  if (t->cfg.stale != NULL && t->cfg.stale(t->cfg.stale_ctx, &err)) {
    st = err.code;
    goto out;
  }
  st = authorize(t, rq->budget_id, &budget, &err);
  if (st != LK_OK)
    goto out;
  lc.budget = budget->id;
  st = lk_catalog_list_tools(t->cat, add_tool, &lc, &err);
  if (st == LK_OK)
    st = lc.st;
  if (st != LK_OK)
    goto out;
  Latchkey__V1__ListToolsResponse resp =
      LATCHKEY__V1__LIST_TOOLS_RESPONSE__INIT;
  resp.n_tools = lc.n;
  resp.tools = lc.infos;
  size_t len = latchkey__v1__list_tools_response__get_packed_size(&resp);
  unsigned char *buf = malloc(len ? len : 1);
  if (buf == NULL) {
    st = lk_fail(&err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  latchkey__v1__list_tools_response__pack(&resp, buf);
  lk_rpc_call_finish(call, buf, len);
  free(buf);
out:
  if (st != LK_OK)
    lk_rpc_call_fail(call, &err);
  for (size_t i = 0; i < lc.n; i++)
    free_info(lc.infos[i]);
  free(lc.infos);
  lk_catalog_release_budget(budget);
  if (rq != NULL)
    latchkey__v1__list_tools_request__free_unpacked(rq, NULL);
}

void lk_toolcalls_handle(void *ctx, lk_rpc_call *call) {
  lk_toolcalls *t = ctx;
  const char *m = lk_rpc_call_method(call);
  if (t->cfg.agent_token != NULL) {
    size_t len = 0;
    const char *md = lk_rpc_call_metadata(call, "authorization", &len);
    if (!lk_token_check_bearer(t->cfg.agent_token, md, len)) {
      lk_err err;
      lk_fail(&err, LK_UNAUTHENTICATED,
              "missing or wrong agent token: send metadata 'authorization: "
              "Bearer <token>' with the token from this sidecar's "
              "--agent-token-file");
      lk_log(LK_LOG_WARN, "agent_unauthenticated", "%s refused", m);
      lk_rpc_call_fail(call, &err);
      return;
    }
  }
  if (strcmp(m, methods[0]) == 0) {
    handle_call(t, call);
  } else {
    handle_list_tools(t, call);
  }
}
