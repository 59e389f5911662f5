/*
 * oauth_retry_test.c - proves sidecar/oauth_retry's contract on a real
 * RocksDB catalog: refused calls of one credential share one refresh
 * request (also when they arrive from many threads at once, and when one
 * arrives while the flight waits), each call gets exactly one answer
 * (NEW_TOKEN once the catalog holds a newer generation, REAUTHORIZE when
 * the grant was refused, GIVE_UP with the reason otherwise or at its
 * deadline), a newer generation already stored answers at once with no
 * request, stop answers waiting calls and refuses new ones, refresh
 * results are counted by result, and the re-authorise hint says what it
 * must (and only that).
 *
 * The control plane side is a fake refresh function: it counts requests,
 * can hold its answer until the test releases it, and on OK can write the
 * credential at the next generation to the catalog and announce an
 * applied batch, as the replica does when the control plane's push lands.
 */
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/catalog.h"
#include "lib/clock.h"
#include "lib/metrics.h"
#include "lib/store.h"
#include "sidecar/oauth_retry.h"

#define CRED "cred-oauth"
#define WAIT_MS 10000

/* The control plane and replica, faked. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  lk_catalog *cat;
  uint64_t applied;
  int requests;
  uint64_t asked_generation;
  lk_status answer;
  int push; /* on OK: store generation + 1 and announce it */
  int hold; /* answer only once released */
  int released;
} fake_cp;

/* The answers calls got. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n;
  int new_token;
  int reauthorize;
  int give_up;
  char why[600];
} answers;

typedef struct {
  char dir[1024];
  lk_store *store;
  lk_catalog *cat;
  fake_cp cp;
  answers got;
  lk_metrics *metrics;
  lk_oauth_retry *r;
} fx;

static int dir_counter;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* Writes credential id at generation (with OAuthState when oauth). */
static void put_cred(lk_catalog *cat, const char *id, uint64_t generation,
                     int oauth) {
  Latchkey__V1__Credential c = LATCHKEY__V1__CREDENTIAL__INIT;
  Latchkey__V1__OAuthState o = LATCHKEY__V1__OAUTH_STATE__INIT;
  c.id = (char *)id;
  c.type = "idp";
  c.label = "test";
  o.generation = generation;
  if (oauth)
    c.oauth = &o;
  lk_store_batch *b = lk_store_batch_new();
  lk_err err;
  assert_non_null(b);
  assert_int_equal(lk_catalog_put_credential(cat, b, &c, &err), LK_OK);
  if (lk_catalog_commit(cat, b, &err) != LK_OK)
    fail_msg("commit: %s", err.msg);
  lk_store_batch_destroy(b);
}

static void announce_applied(fake_cp *cp) {
  pthread_mutex_lock(&cp->mu);
  cp->applied++;
  pthread_cond_broadcast(&cp->cv);
  pthread_mutex_unlock(&cp->mu);
}

static lk_status fake_refresh(void *ctx, const char *credential_id,
                              uint64_t generation, int64_t deadline_ms,
                              uint64_t *now_generation, lk_err *err) {
  fake_cp *cp = ctx;
  (void)deadline_ms;
  pthread_mutex_lock(&cp->mu);
  cp->requests++;
  cp->asked_generation = generation;
  pthread_cond_broadcast(&cp->cv);
  while (cp->hold && !cp->released)
    pthread_cond_wait(&cp->cv, &cp->mu);
  lk_status answer = cp->answer;
  int push = cp->push;
  pthread_mutex_unlock(&cp->mu);
  if (answer != LK_OK) {
    return lk_fail(err, answer, "control plane test answered %s",
                   lk_status_name(answer));
  }
  if (push) {
    put_cred(cp->cat, credential_id, generation + 1, 1);
    announce_applied(cp);
  }
  *now_generation = generation + 1;
  return LK_OK;
}

static uint64_t fake_applied(void *ctx) {
  fake_cp *cp = ctx;
  pthread_mutex_lock(&cp->mu);
  uint64_t n = cp->applied;
  pthread_mutex_unlock(&cp->mu);
  return n;
}

static uint64_t fake_wait_applied(void *ctx, uint64_t seen,
                                  int64_t deadline_ms) {
  fake_cp *cp = ctx;
  struct timespec until;
  int64_t ms = deadline_ms - lk_now_ms();
  clock_gettime(CLOCK_MONOTONIC, &until);
  if (ms > 0) {
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000;
    }
  }
  pthread_mutex_lock(&cp->mu);
  while (cp->applied == seen && ms > 0) {
    if (pthread_cond_timedwait(&cp->cv, &cp->mu, &until) != 0)
      break;
  }
  uint64_t n = cp->applied;
  pthread_mutex_unlock(&cp->mu);
  return n;
}

static void on_done(void *ctx, lk_oauth_retry_outcome outcome,
                    const char *why) {
  answers *a = ctx;
  pthread_mutex_lock(&a->mu);
  a->n++;
  if (outcome == LK_OAUTH_RETRY_NEW_TOKEN)
    a->new_token++;
  else if (outcome == LK_OAUTH_RETRY_REAUTHORIZE)
    a->reauthorize++;
  else
    a->give_up++;
  snprintf(a->why, sizeof(a->why), "%s", why);
  pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
}

/* Waits until n answers came (fails the test after WAIT_MS). */
static void wait_answers(answers *a, int n) {
  int64_t end = lk_now_ms() + WAIT_MS;
  pthread_mutex_lock(&a->mu);
  while (a->n < n && lk_now_ms() < end) {
    pthread_mutex_unlock(&a->mu);
    usleep(2000);
    pthread_mutex_lock(&a->mu);
  }
  int got = a->n;
  pthread_mutex_unlock(&a->mu);
  if (got < n)
    fail_msg("%d answers of %d within %d ms", got, n, WAIT_MS);
}

/* Waits until the fake saw n refresh requests. */
static void wait_requests(fake_cp *cp, int n) {
  int64_t end = lk_now_ms() + WAIT_MS;
  pthread_mutex_lock(&cp->mu);
  while (cp->requests < n && lk_now_ms() < end) {
    pthread_mutex_unlock(&cp->mu);
    usleep(2000);
    pthread_mutex_lock(&cp->mu);
  }
  int got = cp->requests;
  pthread_mutex_unlock(&cp->mu);
  if (got < n)
    fail_msg("%d refresh requests of %d within %d ms", got, n, WAIT_MS);
}

static void release(fake_cp *cp) {
  pthread_mutex_lock(&cp->mu);
  cp->released = 1;
  pthread_cond_broadcast(&cp->cv);
  pthread_mutex_unlock(&cp->mu);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof(*f));
  const char *tmp = getenv("TEST_TMPDIR");
  lk_err err;
  assert_non_null(f);
  snprintf(f->dir, sizeof(f->dir), "%s/oauth-retry-%d-%d",
           tmp != NULL ? tmp : "/tmp", (int)getpid(), dir_counter++);
  if (lk_store_open(f->dir, &f->store, &err) != LK_OK)
    fail_msg("store open: %s", err.msg);
  if (lk_catalog_open(f->store, &f->cat, &err) != LK_OK)
    fail_msg("catalog open: %s", err.msg);
  pthread_mutex_init(&f->cp.mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&f->cp.cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&f->got.mu, NULL);
  pthread_cond_init(&f->got.cv, NULL);
  f->cp.cat = f->cat;
  f->cp.answer = LK_OK;
  f->cp.push = 1;
  assert_int_equal(lk_metrics_new(64, &f->metrics, &err), LK_OK);
  lk_oauth_retry_config cfg = {fake_refresh, fake_applied, fake_wait_applied,
                               &f->cp,       f->cat,       f->metrics};
  if (lk_oauth_retry_new(&cfg, &f->r, &err) != LK_OK)
    fail_msg("oauth retry: %s", err.msg);
  put_cred(f->cat, CRED, 1, 1);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  release(&f->cp);
  lk_oauth_retry_destroy(f->r);
  lk_metrics_destroy(f->metrics);
  lk_catalog_destroy(f->cat);
  lk_store_close(f->store);
  nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  pthread_cond_destroy(&f->cp.cv);
  pthread_mutex_destroy(&f->cp.mu);
  pthread_cond_destroy(&f->got.cv);
  pthread_mutex_destroy(&f->got.mu);
  free(f);
  return 0;
}

static void submit_ok(fx *f, const char *id, uint64_t generation,
                      int64_t deadline_ms) {
  lk_err err;
  if (lk_oauth_retry_submit(f->r, id, generation, deadline_ms, on_done, &f->got,
                            &err) != LK_OK)
    fail_msg("submit: %s", err.msg);
}

static void *submit_thread(void *arg) {
  fx *f = arg;
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  return NULL;
}

static void eight_concurrent_refusals_share_one_refresh(void **state) {
  fx *f = *state;
  pthread_t th[8];
  f->cp.hold = 1;
  for (int i = 0; i < 8; i++)
    assert_int_equal(pthread_create(&th[i], NULL, submit_thread, f), 0);
  for (int i = 0; i < 8; i++)
    pthread_join(th[i], NULL);
  wait_requests(&f->cp, 1);
  release(&f->cp);
  wait_answers(&f->got, 8);
  assert_int_equal(f->got.new_token, 8);
  assert_int_equal(f->cp.requests, 1);
  assert_int_equal(f->cp.asked_generation, 1);
}

static void newer_generation_stored_answers_at_once_without_request(
    void **state) {
  fx *f = *state;
  put_cred(f->cat, CRED, 3, 1);
  submit_ok(f, CRED, 2, lk_now_ms() + WAIT_MS);
  /* Answered before submit returned. */
  assert_int_equal(f->got.n, 1);
  assert_int_equal(f->got.new_token, 1);
  assert_string_equal(f->got.why, "the replica already holds a newer token");
  assert_int_equal(f->cp.requests, 0);
}

static void refused_grant_tells_every_waiter_to_reauthorize(void **state) {
  fx *f = *state;
  f->cp.hold = 1;
  f->cp.answer = LK_FAILED_PRECONDITION;
  for (int i = 0; i < 3; i++)
    submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  wait_requests(&f->cp, 1);
  release(&f->cp);
  wait_answers(&f->got, 3);
  assert_int_equal(f->got.reauthorize, 3);
  assert_int_equal(f->cp.requests, 1);
  assert_non_null(strstr(f->got.why, "LK_FAILED_PRECONDITION"));
}

static void unavailable_control_plane_gives_up_with_its_reason(void **state) {
  fx *f = *state;
  f->cp.answer = LK_UNAVAILABLE;
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  wait_answers(&f->got, 1);
  assert_int_equal(f->got.give_up, 1);
  assert_string_equal(f->got.why,
                      "the refresh request failed: control plane "
                      "test answered LK_UNAVAILABLE");
}

static void no_new_generation_gives_up_at_the_deadline(void **state) {
  fx *f = *state;
  f->cp.push = 0;
  int64_t t0 = lk_now_ms();
  submit_ok(f, CRED, 1, t0 + 300);
  wait_answers(&f->got, 1);
  int64_t took = lk_now_ms() - t0;
  assert_int_equal(f->got.give_up, 1);
  assert_string_equal(f->got.why,
                      "no refreshed token reached the replica before the "
                      "call's deadline");
  assert_true(took >= 300);
  assert_true(took < 300 + 2 * LK_OAUTH_RETRY_SLICE_MS + 1000);
}

static void *push_later(void *arg) {
  fx *f = arg;
  usleep(200 * 1000);
  put_cred(f->cat, CRED, 2, 1);
  announce_applied(&f->cp);
  return NULL;
}

static void token_applied_after_the_answer_wakes_the_waiter(void **state) {
  fx *f = *state;
  pthread_t th;
  f->cp.push = 0;
  int64_t t0 = lk_now_ms();
  submit_ok(f, CRED, 1, t0 + WAIT_MS);
  wait_requests(&f->cp, 1);
  assert_int_equal(pthread_create(&th, NULL, push_later, f), 0);
  wait_answers(&f->got, 1);
  pthread_join(th, NULL);
  assert_int_equal(f->got.new_token, 1);
  assert_true(lk_now_ms() - t0 < 2000);
}

static void refusal_while_the_flight_waits_joins_it(void **state) {
  fx *f = *state;
  pthread_t th;
  f->cp.push = 0;
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  wait_requests(&f->cp, 1);
  usleep(50 * 1000); /* the flight has its answer and waits */
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  assert_int_equal(pthread_create(&th, NULL, push_later, f), 0);
  wait_answers(&f->got, 2);
  pthread_join(th, NULL);
  assert_int_equal(f->got.new_token, 2);
  assert_int_equal(f->cp.requests, 1);
}

/* A call whose deadline is well before the flight's does not join a
 * Refresh still in progress (it would wait past its own deadline): it is
 * told at once, and the one request stays the only one. */
static void a_call_with_an_earlier_deadline_does_not_join_a_slow_refresh(
    void **state) {
  fx *f = *state;
  lk_err err;
  f->cp.hold = 1;
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  wait_requests(&f->cp, 1);
  assert_int_equal(lk_oauth_retry_submit(f->r, CRED, 1, lk_now_ms() + 1000,
                                         on_done, &f->got, &err),
                   LK_DEADLINE_EXCEEDED);
  assert_non_null(strstr(err.msg, "in flight with a later deadline"));
  /* One with the same deadline or later still joins. */
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  release(&f->cp);
  wait_answers(&f->got, 2);
  assert_int_equal(f->got.new_token, 2);
  assert_int_equal(f->cp.requests, 1);
}

static void refusal_of_the_new_token_asks_again(void **state) {
  fx *f = *state;
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  wait_answers(&f->got, 1);
  assert_int_equal(f->got.new_token, 1);
  /* The vendor refuses generation 2 as well: a new request, for it. */
  submit_ok(f, CRED, 2, lk_now_ms() + WAIT_MS);
  wait_answers(&f->got, 2);
  assert_int_equal(f->got.new_token, 2);
  assert_int_equal(f->cp.requests, 2);
  assert_int_equal(f->cp.asked_generation, 2);
}

static void other_credentials_get_their_own_request(void **state) {
  fx *f = *state;
  put_cred(f->cat, "cred-other", 1, 1);
  f->cp.hold = 1;
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  submit_ok(f, "cred-other", 1, lk_now_ms() + WAIT_MS);
  wait_requests(&f->cp, 2);
  release(&f->cp);
  wait_answers(&f->got, 2);
  assert_int_equal(f->got.new_token, 2);
  assert_int_equal(f->cp.requests, 2);
}

static void removed_credential_lets_the_call_read_again(void **state) {
  fx *f = *state;
  lk_err err;
  f->cp.push = 0;
  submit_ok(f, CRED, 1, lk_now_ms() + WAIT_MS);
  wait_requests(&f->cp, 1);
  lk_store_batch *b = lk_store_batch_new();
  assert_int_equal(lk_catalog_delete_credential(f->cat, b, CRED, &err), LK_OK);
  assert_int_equal(lk_catalog_commit(f->cat, b, &err), LK_OK);
  lk_store_batch_destroy(b);
  announce_applied(&f->cp);
  wait_answers(&f->got, 1);
  assert_int_equal(f->got.new_token, 1);
}

static void stop_answers_waiting_calls_and_refuses_new_ones(void **state) {
  fx *f = *state;
  lk_err err;
  f->cp.push = 0;
  submit_ok(f, CRED, 1, lk_now_ms() + 60000);
  wait_requests(&f->cp, 1);
  int64_t t0 = lk_now_ms();
  lk_oauth_retry_stop(f->r);
  assert_true(lk_now_ms() - t0 < 2000);
  assert_int_equal(f->got.n, 1);
  assert_int_equal(f->got.give_up, 1);
  assert_string_equal(f->got.why, "the sidecar is stopping");
  assert_int_equal(lk_oauth_retry_submit(f->r, CRED, 1, lk_now_ms() + 1000,
                                         on_done, &f->got, &err),
                   LK_UNAVAILABLE);
  assert_int_equal(f->got.n, 1);
  lk_oauth_retry_stop(f->r); /* idempotent */
}

static void invalid_credential_id_is_refused(void **state) {
  fx *f = *state;
  lk_err err;
  assert_int_equal(lk_oauth_retry_submit(f->r, "../etc", 1, lk_now_ms() + 1000,
                                         on_done, &f->got, &err),
                   LK_INVALID_ARGUMENT);
  assert_int_equal(f->got.n, 0);
  assert_int_equal(f->cp.requests, 0);
}

static void refresh_results_are_counted(void **state) {
  fx *f = *state;
  lk_err err;
  static const lk_status answers_in_turn[] = {
      LK_OK, LK_FAILED_PRECONDITION, LK_DEADLINE_EXCEEDED, LK_UNAVAILABLE,
      LK_PERMISSION_DENIED};
  for (int i = 0; i < 5; i++) {
    f->cp.answer = answers_in_turn[i];
    /* Each round refuses the token stored now: a new request each time. */
    Latchkey__V1__Credential *c = NULL;
    assert_int_equal(lk_catalog_get_credential(f->cat, CRED, &c, &err), LK_OK);
    uint64_t gen = c->oauth->generation;
    lk_catalog_free_credential(c);
    submit_ok(f, CRED, gen, lk_now_ms() + WAIT_MS);
    wait_answers(&f->got, i + 1);
  }
  char *page = NULL;
  size_t len = 0;
  assert_int_equal(lk_metrics_render(f->metrics, &page, &len, &err), LK_OK);
  assert_non_null(
      strstr(page, "latchkey_oauth_refresh_requests_total{result=\"ok\"} 1\n"));
  assert_non_null(
      strstr(page,
             "latchkey_oauth_refresh_requests_total{result=\"reauthorize\"} "
             "1\n"));
  assert_non_null(strstr(
      page, "latchkey_oauth_refresh_requests_total{result=\"timeout\"} 1\n"));
  assert_non_null(strstr(
      page, "latchkey_oauth_refresh_requests_total{result=\"failed\"} 2\n"));
  free(page);
}

/* ---- the hint ------------------------------------------------------------ */

typedef struct {
  Latchkey__V1__Credential c;
  Latchkey__V1__OAuthState o;
  Latchkey__V1__FieldValue f[3];
  Latchkey__V1__FieldValue *fp[3];
  Latchkey__V1__SealedValue sealed;
} hint_cred;

/* An oauth2 credential "cred-g" expiring at expires_at (plain), with a
 * sealed access token whose ciphertext bytes are "SECRETBYTES". */
static void make_hint_cred(hint_cred *h, const char *expires_at,
                           const char *grant) {
  memset(h, 0, sizeof(*h));
  latchkey__v1__credential__init(&h->c);
  latchkey__v1__oauth_state__init(&h->o);
  latchkey__v1__sealed_value__init(&h->sealed);
  for (int i = 0; i < 3; i++) {
    latchkey__v1__field_value__init(&h->f[i]);
    h->fp[i] = &h->f[i];
  }
  h->sealed.ciphertext.data = (uint8_t *)"SECRETBYTES";
  h->sealed.ciphertext.len = 11;
  h->f[0].name = "access_token";
  h->f[0].secret = 1;
  h->f[0].sealed = &h->sealed;
  h->f[1].name = "expires_at";
  h->f[1].value = (char *)expires_at;
  h->f[2].name = "grant_type";
  h->f[2].value = (char *)grant;
  h->c.id = "cred-g";
  h->c.type = "google";
  h->c.fields = h->fp;
  h->c.n_fields = 3;
  h->c.oauth = &h->o;
  h->o.generation = 4;
}

/* 2026-11-26 03:17:08 UTC */
#define EXPIRY_S "1795663028"
#define EXPIRY_MS 1795663028000LL

static void hint_for_refused_refresh_token(void **state) {
  (void)state;
  hint_cred h;
  char hint[2048];
  make_hint_cred(&h, EXPIRY_S, "authorization_code");
  h.o.reauthorize = 1;
  h.o.last_refresh_result = "invalid_grant: the grant was revoked";
  lk_oauth_reauthorize_hint(&h.c, EXPIRY_MS + 60000, 0, 0,
                            "https://console.example/connect/google", hint,
                            sizeof(hint));
  assert_string_equal(
      hint,
      "The OAuth connection of credential 'cred-g' (type 'google') must be "
      "re-authorised: its access token expired at 2026-11-26 03:17:08 UTC, "
      "and it was not refreshed: the identity provider refused the refresh "
      "token. Re-authorise the connection at "
      "https://console.example/connect/google, or store new tokens from the "
      "identity provider (values on stdin, never in argv): echo "
      "'{\"access_token\":\"...\",\"refresh_token\":\"...\",\"expires_at\":"
      "\"UNIX_SECONDS\"}' | latchkeyctl credential update cred-g");
  assert_null(strstr(hint, "SECRETBYTES"));
}

static void hint_quotes_last_refresh_result_printably_and_capped(void **state) {
  (void)state;
  hint_cred h;
  char hint[2048];
  char result[400];
  make_hint_cred(&h, EXPIRY_S, "authorization_code");
  memset(result, 'x', sizeof(result) - 1);
  result[sizeof(result) - 1] = '\0';
  memcpy(result, "503 from\ntoken\x01url ", 19);
  h.o.last_refresh_result = result;
  h.o.failures = 7;
  lk_oauth_reauthorize_hint(&h.c, EXPIRY_MS + 1, 0, 0, NULL, hint,
                            sizeof(hint));
  assert_non_null(
      strstr(hint, "the last refresh attempt said \"503 from?token?url "));
  assert_non_null(strstr(hint, "\" (7 failed attempts in a row)"));
  /* Exactly LK_OAUTH_HINT_RESULT_MAX bytes of it are quoted. */
  const char *q = strstr(hint, "said \"") + 6;
  assert_int_equal(strchr(q, '"') - q, LK_OAUTH_HINT_RESULT_MAX);
  assert_non_null(strstr(hint, ". Re-authorise the connection, or store"));
}

static void hint_for_vendor_refusal_before_expiry(void **state) {
  (void)state;
  hint_cred h;
  char hint[2048];
  make_hint_cred(&h, EXPIRY_S, "authorization_code");
  lk_oauth_reauthorize_hint(&h.c, EXPIRY_MS - 3600000, 1, 1, "", hint,
                            sizeof(hint));
  assert_non_null(strstr(hint,
                         "re-authorised: the vendor refused its access token "
                         "(valid until 2026-11-26 03:17:08 UTC), and it was "
                         "not refreshed: the identity provider refused the "
                         "refresh token."));
  assert_null(strstr(hint, " at http"));
}

static void hint_for_client_credentials_names_no_refresh_token(void **state) {
  (void)state;
  hint_cred h;
  char hint[2048];
  make_hint_cred(&h, "", "client_credentials");
  lk_oauth_reauthorize_hint(&h.c, EXPIRY_MS, 0, 1, NULL, hint, sizeof(hint));
  assert_non_null(strstr(hint, "its access token has no known expiry"));
  assert_non_null(strstr(hint, "refused the client credentials"));
  assert_null(strstr(hint, "refresh_token"));
  assert_non_null(
      strstr(hint,
             "'{\"access_token\":\"...\",\"expires_at\":\"UNIX_SECONDS\"}' | "
             "latchkeyctl credential update cred-g"));
}

static void hint_without_any_attempt_says_so(void **state) {
  (void)state;
  hint_cred h;
  char hint[2048];
  make_hint_cred(&h, EXPIRY_S, "authorization_code");
  lk_oauth_reauthorize_hint(&h.c, EXPIRY_MS + 1, 0, 0, NULL, hint,
                            sizeof(hint));
  assert_non_null(strstr(hint,
                         "it has not been refreshed yet (no attempt "
                         "recorded)"));
}

static void hint_is_cut_short_safely(void **state) {
  (void)state;
  hint_cred h;
  char hint[40];
  make_hint_cred(&h, EXPIRY_S, "authorization_code");
  memset(hint, 'Z', sizeof(hint));
  lk_oauth_reauthorize_hint(&h.c, EXPIRY_MS + 1, 0, 0, "https://x.example",
                            hint, sizeof(hint));
  assert_int_equal(strlen(hint), sizeof(hint) - 1);
  assert_memory_equal(hint, "The OAuth connection of credential 'cre", 39);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          eight_concurrent_refusals_share_one_refresh, setup, teardown),
      cmocka_unit_test_setup_teardown(
          newer_generation_stored_answers_at_once_without_request, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          refused_grant_tells_every_waiter_to_reauthorize, setup, teardown),
      cmocka_unit_test_setup_teardown(
          unavailable_control_plane_gives_up_with_its_reason, setup, teardown),
      cmocka_unit_test_setup_teardown(
          no_new_generation_gives_up_at_the_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(
          token_applied_after_the_answer_wakes_the_waiter, setup, teardown),
      cmocka_unit_test_setup_teardown(
          a_call_with_an_earlier_deadline_does_not_join_a_slow_refresh, setup,
          teardown),
      cmocka_unit_test_setup_teardown(refusal_while_the_flight_waits_joins_it,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(refusal_of_the_new_token_asks_again,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(other_credentials_get_their_own_request,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          removed_credential_lets_the_call_read_again, setup, teardown),
      cmocka_unit_test_setup_teardown(
          stop_answers_waiting_calls_and_refuses_new_ones, setup, teardown),
      cmocka_unit_test_setup_teardown(invalid_credential_id_is_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(refresh_results_are_counted, setup,
                                      teardown),
      cmocka_unit_test(hint_for_refused_refresh_token),
      cmocka_unit_test(hint_quotes_last_refresh_result_printably_and_capped),
      cmocka_unit_test(hint_for_vendor_refusal_before_expiry),
      cmocka_unit_test(hint_for_client_credentials_names_no_refresh_token),
      cmocka_unit_test(hint_without_any_attempt_says_so),
      cmocka_unit_test(hint_is_cut_short_safely),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
