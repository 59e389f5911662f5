/*
 * oauth_policy.c - the shared refresh policy of oauth2 credentials (see
 * oauth_policy.h).
 *
 * Everything here is a pure function of its arguments except the audit
 * line (which logs), the sealer the caller passes in, and one attempt
 * (which asks the provider through lib/oauth_token and counts it). A record is
 * a shallow copy of the credential read: it owns only its field array, the
 * slots of the values it writes anew (ciphertext, never plaintext) and its
 * OAuthState; every other value is borrowed from the credential.
 */
#include "lib/oauth_policy.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/oauth.h"

void lk_oauth_policy_defaults(int64_t *margin_ms, int64_t *retry_max_ms,
                              int64_t *token_timeout_ms) {
  if (*margin_ms <= 0) {
    *margin_ms = LK_OAUTH_POLICY_DEFAULT_MARGIN_MS;
  }
  if (*retry_max_ms <= 0) {
    *retry_max_ms = LK_OAUTH_POLICY_DEFAULT_RETRY_MAX_MS;
  }
  if (*token_timeout_ms <= 0) {
    *token_timeout_ms = LK_OAUTH_POLICY_TOKEN_TIMEOUT_MS;
  }
}

int64_t lk_oauth_policy_backoff_ms(uint32_t failures, int64_t retry_max_ms) {
  int64_t b = LK_OAUTH_POLICY_FIRST_BACKOFF_MS;
  for (uint32_t i = 1; i < failures && b < retry_max_ms; i++) {
    b *= 2;
  }
  return b < retry_max_ms ? b : retry_max_ms;
}

int64_t lk_oauth_policy_due_at(const Latchkey__V1__Credential *c,
                               int64_t margin_ms) {
  if (c == NULL || c->oauth == NULL || c->oauth->reauthorize) {
    return INT64_MAX;
  }
  const Latchkey__V1__OAuthState *o = c->oauth;
  int64_t exp = lk_oauth_expires_at_ms(c);
  int64_t due = 0;
  if (exp > 0) {
    int64_t lead = margin_ms;
    if (o->last_success_at > 0 && exp > o->last_success_at &&
        (exp - o->last_success_at) / 2 < lead) {
      lead = (exp - o->last_success_at) / 2;
    }
    due = exp - lead;
    if (o->last_success_at > 0 &&
        due < o->last_success_at + LK_OAUTH_POLICY_MIN_INTERVAL_MS) {
      due = o->last_success_at + LK_OAUTH_POLICY_MIN_INTERVAL_MS;
    }
  }
  if (o->next_attempt_at > due) {
    due = o->next_attempt_at;
  }
  return due;
}

lk_status lk_oauth_policy_check_request(const Latchkey__V1__Credential *c,
                                        uint64_t generation,
                                        int64_t now_wall_ms, int *already,
                                        lk_err *err) {
  *already = 0;
  if (c->oauth == NULL) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential %s is not an oauth2 credential: nothing to "
                   "refresh",
                   c->id);
  }
  if (c->oauth->generation > generation) {
    *already = 1;
    return LK_OK;
  }
  if (c->oauth->reauthorize) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential %s must be re-authorised by its owner (the "
                   "last refresh said: %s)",
                   c->id, c->oauth->last_refresh_result);
  }
  if (c->oauth->failures > 0 && c->oauth->next_attempt_at > now_wall_ms) {
    return lk_fail(
        err, LK_UNAVAILABLE,
        "refreshing credential %s keeps failing (%s); the next attempt is in "
        "%lld s",
        c->id, c->oauth->last_refresh_result,
        (long long)((c->oauth->next_attempt_at - now_wall_ms + 999) / 1000));
  }
  return LK_OK;
}

void lk_oauth_policy_token_request(const Latchkey__V1__Credential *c,
                                   const lk_secret *refresh_token,
                                   const lk_secret *client_secret,
                                   int allow_insecure, int64_t deadline_ms,
                                   lk_oauth_token_request *req) {
  memset(req, 0, sizeof(*req));
  req->token_url = lk_oauth_plain_field(c, LK_OAUTH_TOKEN_URL);
  req->grant_type = lk_oauth_plain_field(c, LK_OAUTH_GRANT_TYPE);
  req->refresh_token = refresh_token;
  req->client_id = lk_oauth_plain_field(c, LK_OAUTH_CLIENT_ID);
  req->client_secret = client_secret;
  req->scope = lk_oauth_plain_field(c, LK_OAUTH_SCOPE);
  req->allow_insecure = allow_insecure;
  req->deadline_ms = deadline_ms;
}

/* A successful outcome carries an answer. */
static int succeeded(const lk_oauth_policy_outcome *o) {
  return o->status == LK_OK && o->res != NULL && o->res->access_token != NULL;
}

void lk_oauth_policy_next_state(
    const Latchkey__V1__OAuthState *old, const lk_oauth_policy_outcome *o,
    Latchkey__V1__OAuthState *state,
    char reason[LK_OAUTH_POLICY_MAX_RESULT_BYTES + 1]) {
  latchkey__v1__oauth_state__init(state);
  if (old != NULL) {
    *state = *old; /* shallow: old outlives state */
  }
  state->last_refresh_at = o->sent_at_ms;
  if (succeeded(o)) {
    state->generation = (old != NULL ? old->generation : 0) + 1;
    state->last_refresh_result = (char *)"ok";
    state->failures = 0;
    state->next_attempt_at = 0;
    state->reauthorize = 0;
    state->last_success_at = o->sent_at_ms;
    return;
  }
  const char *why = o->reason != NULL ? o->reason : "";
  size_t n = strnlen(why, LK_OAUTH_POLICY_MAX_RESULT_BYTES);
  memcpy(reason, why, n);
  reason[n] = '\0';
  state->last_refresh_result = reason;
  uint32_t f = old != NULL ? old->failures : 0;
  state->failures = f < UINT32_MAX ? f + 1 : UINT32_MAX;
  state->reauthorize = o->status == LK_FAILED_PRECONDITION;
  state->next_attempt_at =
      state->reauthorize
          ? 0
          : o->sent_at_ms +
                lk_oauth_policy_backoff_ms(state->failures, o->retry_max_ms);
}

int64_t lk_oauth_policy_expires_at_s(const lk_oauth_policy_outcome *o) {
  int64_t in = o->res != NULL && o->res->expires_in >= 0
                   ? o->res->expires_in
                   : LK_OAUTH_POLICY_DEFAULT_LIFETIME_S;
  return o->sent_at_ms / 1000 + in;
}

/* ---- the record --------------------------------------------------------- */

/* One field value the record writes anew. */
typedef struct {
  Latchkey__V1__FieldValue fv;
  Latchkey__V1__SealedValue sv;
  unsigned char nonce[LK_SEAL_NONCE_BYTES];
  unsigned char *ct; /* ciphertext only */
  char plain[24];
} slot;

struct lk_oauth_policy_record {
  slot *slots;
  size_t n_slots;
  size_t cap; /* of slots and fields */
  Latchkey__V1__FieldValue **fields;
  Latchkey__V1__OAuthState oauth;
  Latchkey__V1__Credential cred;
  char reason[LK_OAUTH_POLICY_MAX_RESULT_BYTES + 1];
};

/* Points slot s's sealed value at its own nonce and ciphertext. */
static void slot_sealed(slot *s, const char *name, uint32_t key_id,
                        size_t ct_len) {
  s->sv.key_id = key_id;
  s->sv.nonce.data = s->nonce;
  s->sv.nonce.len = sizeof(s->nonce);
  s->sv.ciphertext.data = s->ct;
  s->sv.ciphertext.len = ct_len;
  s->fv.name = (char *)name;
  s->fv.secret = 1;
  s->fv.sealed = &s->sv;
}

/* Returns a fresh slot of r (cap is sized for every field plus three). */
static slot *new_slot(lk_oauth_policy_record *r) {
  slot *s = &r->slots[r->n_slots++];
  latchkey__v1__field_value__init(&s->fv);
  latchkey__v1__sealed_value__init(&s->sv);
  return s;
}

/* Seals the secret at v as field name and adds it to r's fields. */
static lk_status add_sealed(lk_oauth_policy_record *r,
                            const lk_oauth_policy_sealer *sealer,
                            const char *name, const lk_secret *v, lk_err *err) {
  slot *s = new_slot(r);
  uint32_t key_id = 0;
  size_t ct_len = 0;
  lk_status st =
      sealer->seal(sealer->ctx, r->cred.id, name, lk_secret_data(v),
                   lk_secret_len(v), &key_id, s->nonce, &s->ct, &ct_len, err);
  if (st != LK_OK) {
    return st;
  }
  slot_sealed(s, name, key_id, ct_len);
  r->fields[r->cred.n_fields++] = &s->fv;
  return LK_OK;
}

/* Adds expires_at = secs as a plain field to r's fields. */
static void add_expires(lk_oauth_policy_record *r, int64_t secs) {
  slot *s = new_slot(r);
  snprintf(s->plain, sizeof(s->plain), "%lld", (long long)secs);
  s->fv.name = (char *)LK_OAUTH_EXPIRES_AT;
  s->fv.value = s->plain;
  r->fields[r->cred.n_fields++] = &s->fv;
}

/* Adds kept field f to r's fields, re-sealed when sealer's keep says so. */
static lk_status add_kept(lk_oauth_policy_record *r,
                          const lk_oauth_policy_sealer *sealer,
                          Latchkey__V1__FieldValue *f, lk_err *err) {
  int sealed = f->secret && f->sealed != NULL && f->sealed->ciphertext.len > 0;
  if (!sealed || sealer->keep == NULL) {
    r->fields[r->cred.n_fields++] = f;
    return LK_OK;
  }
  slot *s = new_slot(r);
  int changed = 0;
  uint32_t key_id = 0;
  size_t ct_len = 0;
  lk_status st = sealer->keep(sealer->ctx, r->cred.id, f, &changed, &key_id,
                              s->nonce, &s->ct, &ct_len, err);
  if (st != LK_OK) {
    return st;
  }
  if (!changed) {
    free(s->ct); /* NULL by keep's contract */
    s->ct = NULL;
    r->n_slots--; /* unused: the next value takes it */
    r->fields[r->cred.n_fields++] = f;
    return LK_OK;
  }
  slot_sealed(s, f->name, key_id, ct_len);
  r->fields[r->cred.n_fields++] = &s->fv;
  return LK_OK;
}

lk_status lk_oauth_policy_record_new(const Latchkey__V1__Credential *c,
                                     const lk_oauth_policy_outcome *o,
                                     const lk_oauth_policy_sealer *sealer,
                                     lk_oauth_policy_record **out,
                                     lk_err *err) {
  lk_status st = LK_OK;
  int ok = succeeded(o);
  int have_at = 0;
  int have_rt = 0;
  int have_exp = 0;
  int64_t expires_s = ok ? lk_oauth_policy_expires_at_s(o) : 0;
  *out = NULL;
  lk_oauth_policy_record *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
  }
  r->cap = c->n_fields + 3;
  r->slots = calloc(r->cap, sizeof(*r->slots));
  r->fields = calloc(r->cap, sizeof(*r->fields));
  if (r->slots == NULL || r->fields == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  r->cred = *c;
  r->cred.fields = r->fields;
  r->cred.n_fields = 0;
  lk_oauth_policy_next_state(c->oauth, o, &r->oauth, r->reason);
  r->cred.oauth = &r->oauth;
  for (size_t i = 0; i < c->n_fields && st == LK_OK; i++) {
    Latchkey__V1__FieldValue *f = c->fields[i];
    const char *name = f->name != NULL ? f->name : "";
    if (ok && strcmp(name, LK_OAUTH_ACCESS_TOKEN) == 0) {
      have_at = 1;
      st = add_sealed(r, sealer, LK_OAUTH_ACCESS_TOKEN, o->res->access_token,
                      err);
    } else if (ok && o->res->refresh_token != NULL &&
               strcmp(name, LK_OAUTH_REFRESH_TOKEN) == 0) {
      have_rt = 1;
      st = add_sealed(r, sealer, LK_OAUTH_REFRESH_TOKEN, o->res->refresh_token,
                      err);
    } else if (ok && !f->secret && strcmp(name, LK_OAUTH_EXPIRES_AT) == 0) {
      have_exp = 1;
      add_expires(r, expires_s);
    } else {
      st = add_kept(r, sealer, f, err);
    }
  }
  if (st == LK_OK && ok && !have_at) {
    st =
        add_sealed(r, sealer, LK_OAUTH_ACCESS_TOKEN, o->res->access_token, err);
  }
  if (st == LK_OK && ok && o->res->refresh_token != NULL && !have_rt) {
    st = add_sealed(r, sealer, LK_OAUTH_REFRESH_TOKEN, o->res->refresh_token,
                    err);
  }
  if (st == LK_OK && ok && !have_exp) {
    add_expires(r, expires_s);
  }
  if (st == LK_OK && ok) {
    r->cred.version = c->version + 1;
    r->cred.updated_at = o->sent_at_ms;
  }
  if (st == LK_OK) {
    *out = r;
    r = NULL;
  }
done:
  lk_oauth_policy_record_destroy(r);
  return st;
}

const Latchkey__V1__Credential *lk_oauth_policy_record_credential(
    const lk_oauth_policy_record *r) {
  return &r->cred;
}

void lk_oauth_policy_record_destroy(lk_oauth_policy_record *r) {
  if (r == NULL) {
    return;
  }
  for (size_t i = 0; r->slots != NULL && i < r->cap; i++) {
    free(r->slots[i].ct);
  }
  free(r->slots);
  free(r->fields);
  free(r);
}

/* ---- labels and the audit line ------------------------------------------ */

const char *lk_oauth_policy_result_label(lk_status status, int discarded) {
  if (discarded) {
    return "discarded";
  }
  if (status == LK_OK) {
    return "ok";
  }
  return status == LK_FAILED_PRECONDITION ? "reauthorize" : "failed";
}

/* Adds the audit hash of secret v under name to h; 0 when it failed. */
static int put_hash(json_t *h, const char *name, const lk_secret *v,
                    lk_oauth_policy_hash_fn hash, void *ctx) {
  char hex[LK_AUDIT_HEX_BYTES];
  lk_err err;
  if (hash == NULL ||
      hash(ctx, lk_secret_data(v), lk_secret_len(v), hex, &err) != LK_OK) {
    return 0;
  }
  json_object_set_new(h, name, json_string(hex));
  return 1;
}

void lk_oauth_policy_audit(const lk_oauth_policy_audit_line *line,
                           lk_oauth_policy_hash_fn hash, void *ctx) {
  json_t *o = json_object();
  if (o == NULL) {
    lk_log(LK_LOG_INFO, "audit.oauth.refresh", "credential %s: %s",
           line->cred_id, line->label);
    return;
  }
  json_object_set_new(o, "credential_id", json_string(line->cred_id));
  json_object_set_new(o, "result", json_string(line->label));
  if (line->by_key != NULL && line->by_value != NULL) {
    json_object_set_new(o, line->by_key, json_string(line->by_value));
  }
  json_object_set_new(o, "http_status", json_integer(line->http_status));
  json_object_set_new(o, "generation",
                      json_integer((json_int_t)line->generation));
  if (line->stored != NULL) {
    const lk_oauth_token_result *res = line->stored;
    json_t *h = json_object();
    int hashed =
        put_hash(h, LK_OAUTH_ACCESS_TOKEN, res->access_token, hash, ctx) &&
        (res->refresh_token == NULL ||
         put_hash(h, LK_OAUTH_REFRESH_TOKEN, res->refresh_token, hash, ctx));
    if (hashed) {
      json_object_set_new(o, "secret_hashes", h);
    } else {
      json_decref(h);
      json_object_set_new(o, "secret_hashes_unavailable", json_true());
    }
    json_object_set_new(o, "rotated", json_boolean(res->refresh_token != NULL));
    json_object_set_new(o, LK_OAUTH_EXPIRES_AT,
                        json_integer((json_int_t)line->expires_at_s));
  }
  if (line->failed != NULL) {
    json_object_set_new(o, "failures", json_integer(line->failed->failures));
    json_object_set_new(
        o, "next_attempt_at",
        json_integer((json_int_t)line->failed->next_attempt_at));
  }
  if (line->reason != NULL && line->reason[0] != '\0') {
    json_object_set_new(o, "reason", json_string(line->reason));
  }
  lk_log_fields(LK_LOG_INFO, "audit.oauth.refresh", o, "credential %s: %s",
                line->cred_id, line->label);
  json_decref(o);
}

/* ---- one attempt -------------------------------------------------------- */

lk_status lk_oauth_policy_should_attempt(const Latchkey__V1__Credential *c,
                                         int forced, uint64_t asked,
                                         int64_t now_wall_ms, int64_t margin_ms,
                                         int *go, lk_err *err) {
  *go = 0;
  if (c->oauth == NULL) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential %s is not an oauth2 credential", c->id);
  }
  if (forced) {
    int already = 0;
    lk_status st =
        lk_oauth_policy_check_request(c, asked, now_wall_ms, &already, err);
    if (st != LK_OK) {
      return st;
    }
    *go = !already;
    return LK_OK;
  }
  *go = lk_oauth_policy_due_at(c, margin_ms) <= now_wall_ms;
  return LK_OK;
}

/* Unseals secret field name of c through rq into *out (NULL when c has no
 * such value). */
static lk_status unseal_field(const lk_oauth_policy_requester *rq,
                              const Latchkey__V1__Credential *c,
                              const char *name, lk_secret **out, lk_err *err) {
  *out = NULL;
  for (size_t i = 0; i < c->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = c->fields[i];
    if (f->name == NULL || strcmp(f->name, name) != 0 || !f->secret ||
        f->sealed == NULL || f->sealed->ciphertext.len == 0) {
      continue;
    }
    if (rq->unseal(rq->unseal_ctx, c->id, f, out, err) != LK_OK) {
      char why[sizeof(err->msg)];
      snprintf(why, sizeof(why), "%s", err->msg); /* err is rewritten */
      return lk_fail(err, LK_UNAVAILABLE, "cannot unseal %s: %s", name, why);
    }
    return LK_OK;
  }
  return LK_OK;
}

void lk_oauth_policy_attempt_run(const Latchkey__V1__Credential *c,
                                 const lk_oauth_policy_requester *rq,
                                 lk_oauth_policy_attempt *a) {
  lk_secret *rt = NULL;
  lk_secret *cs = NULL;
  memset(a, 0, sizeof(*a));
  lk_err_clear(&a->err);
  int64_t sent_wall = lk_wall_ms();
  lk_status st = unseal_field(rq, c, LK_OAUTH_REFRESH_TOKEN, &rt, &a->err);
  if (st == LK_OK) {
    st = unseal_field(rq, c, LK_OAUTH_CLIENT_SECRET, &cs, &a->err);
  }
  if (st == LK_OK) {
    lk_oauth_token_request req;
    lk_oauth_policy_token_request(c, rt, cs, rq->allow_insecure,
                                  lk_now_ms() + rq->timeout_ms, &req);
    req.cancelled = rq->cancelled;
    req.cancel_ctx = rq->cancel_ctx;
    st = lk_oauth_token_exchange(&req, &a->res, &a->http_status, &a->err);
  }
  lk_secret_free(rt); /* last use of the old refresh token */
  lk_secret_free(cs);
  if (st != LK_OK && rq->cancelled != NULL && rq->cancelled(rq->cancel_ctx)) {
    a->cut_short = 1;
    lk_oauth_token_result_clear(&a->res);
    return;
  }
  if (st != LK_OK && st != LK_FAILED_PRECONDITION) {
    st = LK_UNAVAILABLE; /* every other failure is retried */
  }
  a->out.status = st;
  a->out.res = st == LK_OK ? &a->res : NULL;
  a->out.reason = a->err.msg;
  a->out.sent_at_ms = sent_wall;
  a->out.retry_max_ms = rq->retry_max_ms;
  lk_oauth_policy_next_state(c->oauth, &a->out, &a->state, a->why);
}

void lk_oauth_policy_attempt_report(const Latchkey__V1__Credential *c,
                                    lk_oauth_policy_attempt *a,
                                    const lk_oauth_policy_reporter *rp,
                                    uint64_t generation, int stored,
                                    const char *dropped) {
  lk_status st = a->out.status;
  const char *label = lk_oauth_policy_result_label(st, dropped != NULL);
  const char *labels[1] = {label};
  lk_metric_inc(rp->refreshes, labels, 1);
  lk_oauth_policy_audit_line line = {
      .cred_id = c->id,
      .label = label,
      .by_key = rp->by_key,
      .by_value = rp->by_value,
      .http_status = a->http_status,
      .generation = generation,
      .stored = st == LK_OK && stored ? &a->res : NULL,
      .expires_at_s = st == LK_OK ? lk_oauth_policy_expires_at_s(&a->out) : 0,
      .failed = st != LK_OK ? &a->state : NULL,
      .reason = dropped != NULL ? dropped
                : st != LK_OK   ? a->err.msg
                                : NULL,
  };
  lk_oauth_policy_audit(&line, rp->hash, rp->hash_ctx);
  lk_oauth_token_result_clear(&a->res); /* sealed in the store now, or lost */
}

lk_status lk_oauth_policy_attempt_error(const Latchkey__V1__Credential *c,
                                        const lk_oauth_policy_attempt *a,
                                        const char *who, lk_err *err) {
  lk_status st = a->out.status;
  if (st == LK_FAILED_PRECONDITION) {
    return lk_fail(err, st,
                   "credential %s must be re-authorised by its owner (the "
                   "refresh said: %s)",
                   c->id, a->err.msg);
  }
  if (st != LK_OK) {
    return lk_fail(err, st,
                   "refreshing credential %s failed (%s); %s retries with "
                   "backoff",
                   c->id, a->err.msg, who);
  }
  return LK_OK;
}
