/*
 * c_client_test.c - proves clients/c against a real latchkeyd, over the
 * transport tests/interop/stack.py chose (run_interop.sh runs it once over
 * a Unix socket and once over TCP): the tool listing with its JSON
 * Schemas, a call whose bound secret reaches the vendor and comes back
 * only as [REDACTED], the missing-credential outcome with its setup link,
 * and each failure the sidecar answers mapped to its lk_client_code:
 * invalid arguments, an unknown tool, a budget of another agent, a missing
 * or wrong agent token, a deadline shorter than the vendor, an answer over
 * the client's size cap, and an address with nothing behind it. One
 * client also serves more threads at once than a shared pluck queue could.
 *
 * The fixture comes from the environment (LATCHKEY_INTEROP_ADDRESS,
 * _AGENT_TOKEN, _SECRET, and the names in the _FIXTURE file).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "clients/c/latchkey_client.h"

/* More than GRPC_MAX_COMPLETION_QUEUE_PLUCKERS (6). */
#define N_THREADS 8
#define CALLS_PER_THREAD 4

typedef struct {
  const char *address;
  const char *token;
  const char *secret;
  const char *transport;
  char budget[129];
  char other_budget[129];
  char echo_tool[129];
  char unbound_tool[129];
  char unbound_type[129];
  char slow_tool[129];
  char setup_url[512]; /* the template expanded for the unbound tool */
} fixture;

static fixture fx;

static const char *need_env(const char *name) {
  const char *v = getenv(name);
  if (v == NULL || v[0] == '\0') {
    fprintf(stderr,
            "c_client_test: %s is not set; run me through "
            "tests/interop/stack.py\n",
            name);
    exit(2);
  }
  return v;
}

static void copy_member(json_t *doc, const char *key, char *out, size_t n) {
  const char *v = json_string_value(json_object_get(doc, key));
  if (v == NULL || strlen(v) >= n) {
    fprintf(stderr, "c_client_test: fixture has no usable \"%s\"\n", key);
    exit(2);
  }
  snprintf(out, n, "%s", v);
}

/* Expands {tool}, {budget} and {type} in tmpl the way the sidecar does. */
static void expand_setup_url(const char *tmpl, char *out, size_t n) {
  size_t used = 0;
  out[0] = '\0';
  while (*tmpl != '\0' && used + 1 < n) {
    const char *v = NULL;
    size_t skip = 0;
    if (strncmp(tmpl, "{tool}", 6) == 0) {
      v = fx.unbound_tool;
      skip = 6;
    } else if (strncmp(tmpl, "{budget}", 8) == 0) {
      v = fx.budget;
      skip = 8;
    } else if (strncmp(tmpl, "{type}", 6) == 0) {
      v = fx.unbound_type;
      skip = 6;
    }
    if (v != NULL) {
      used += (size_t)snprintf(out + used, n - used, "%s", v);
      tmpl += skip;
    } else {
      out[used++] = *tmpl++;
      out[used] = '\0';
    }
  }
}

static void load_fixture(void) {
  json_error_t jerr;
  json_t *doc;
  char tmpl[512];

  fx.address = need_env("LATCHKEY_INTEROP_ADDRESS");
  fx.token = need_env("LATCHKEY_INTEROP_AGENT_TOKEN");
  fx.secret = need_env("LATCHKEY_INTEROP_SECRET");
  fx.transport = need_env("LATCHKEY_INTEROP_TRANSPORT");
  doc = json_load_file(need_env("LATCHKEY_INTEROP_FIXTURE"), 0, &jerr);
  if (doc == NULL) {
    fprintf(stderr, "c_client_test: fixture: %s\n", jerr.text);
    exit(2);
  }
  copy_member(doc, "budget", fx.budget, sizeof(fx.budget));
  copy_member(doc, "other_budget", fx.other_budget, sizeof(fx.other_budget));
  copy_member(doc, "echo_tool", fx.echo_tool, sizeof(fx.echo_tool));
  copy_member(doc, "unbound_tool", fx.unbound_tool, sizeof(fx.unbound_tool));
  copy_member(doc, "unbound_type", fx.unbound_type, sizeof(fx.unbound_type));
  copy_member(doc, "slow_tool", fx.slow_tool, sizeof(fx.slow_tool));
  copy_member(doc, "setup_url_template", tmpl, sizeof(tmpl));
  expand_setup_url(tmpl, fx.setup_url, sizeof(fx.setup_url));
  json_decref(doc);
}

/* Opens a client with the fixture's token (or token, when not NULL; "" for
 * none) and the given timeout and cap (0: defaults). */
static lk_client *open_client(const char *token, long timeout_ms,
                              size_t max_response_bytes) {
  lk_client_opts opts;
  lk_client_error err;
  lk_client *c = NULL;

  memset(&opts, 0, sizeof(opts));
  opts.agent_token = token == NULL ? fx.token : (token[0] ? token : NULL);
  opts.timeout_ms = timeout_ms;
  opts.max_response_bytes = max_response_bytes;
  assert_int_equal(lk_client_open(fx.address, &opts, &c, &err), LK_CLIENT_OK);
  assert_non_null(c);
  return c;
}

static const lk_client_tool *find_tool(const lk_client_tools *t,
                                       const char *id) {
  size_t i;
  for (i = 0; i < t->n_tools; i++) {
    if (strcmp(t->tools[i].id, id) == 0) {
      return &t->tools[i];
    }
  }
  return NULL;
}

/* Asserts the len bytes at p do not contain needle. */
static void assert_absent(const void *p, size_t len, const char *needle) {
  assert_null(memmem(p, len, needle, strlen(needle)));
}

static void assert_present(const void *p, size_t len, const char *needle) {
  assert_non_null(memmem(p, len, needle, strlen(needle)));
}

static void list_tools_gives_operations_with_json_schemas(void **state) {
  lk_client *c = open_client(NULL, 0, 0);
  lk_client_tools *tools = NULL;
  lk_client_error err;
  const lk_client_tool *echo;
  const lk_client_tool *unbound;
  const lk_client_operation *get = NULL;
  json_t *schema;
  json_error_t jerr;
  size_t i;
  (void)state;

  assert_int_equal(lk_client_list_tools(c, fx.budget, &tools, &err),
                   LK_CLIENT_OK);
  assert_int_equal(err.code, LK_CLIENT_OK);
  echo = find_tool(tools, fx.echo_tool);
  unbound = find_tool(tools, fx.unbound_tool);
  assert_non_null(echo);
  assert_non_null(unbound);
  assert_non_null(find_tool(tools, fx.slow_tool));
  assert_true(echo->credential_ready);
  assert_string_equal(echo->credential_type, "bearer-token");
  assert_false(unbound->credential_ready);
  assert_string_equal(unbound->credential_type, fx.unbound_type);
  for (i = 0; i < echo->n_operations; i++) {
    if (strcmp(echo->operations[i].name, "get") == 0) {
      get = &echo->operations[i];
    }
  }
  assert_non_null(get);
  assert_string_equal(get->method, "GET");
  assert_string_equal(get->path, "/echo/{item}");
  schema = json_loads(get->parameters_schema, 0, &jerr);
  assert_non_null(schema);
  assert_string_equal(json_string_value(json_object_get(schema, "type")),
                      "object");
  assert_string_equal(
      json_string_value(json_object_get(
          json_object_get(json_object_get(schema, "properties"), "n"), "type")),
      "integer");
  assert_string_equal(
      json_string_value(json_array_get(json_object_get(schema, "required"), 0)),
      "item");
  json_decref(schema);
  lk_client_tools_free(tools);
  lk_client_close(c);
}

static void call_injects_the_secret_and_sees_only_redacted(void **state) {
  lk_client *c = open_client(NULL, 0, 0);
  lk_client_result *r = NULL;
  lk_client_error err;
  json_t *body;
  json_error_t jerr;
  int echoed_header = 0;
  size_t i;
  (void)state;

  assert_int_equal(lk_client_call(c, fx.budget, fx.echo_tool, "get",
                                  "{\"item\": \"hello\", \"n\": 3}", &r, &err),
                   LK_CLIENT_OK);
  assert_non_null(r);
  assert_null(r->missing_credential);
  assert_int_equal(r->http_status, 200);
  assert_non_null(strstr(r->content_type, "application/json"));
  assert_true(r->redacted);
  assert_int_equal(strlen(r->request_id), 16);
  /* The vendor saw the injected header and echoed it; the agent sees only
   * the scrubbed form. */
  assert_present(r->body, r->body_len, "Bearer [REDACTED]");
  assert_absent(r->body, r->body_len, fx.secret);
  body = json_loadb((const char *)r->body, r->body_len, 0, &jerr);
  assert_non_null(body);
  assert_string_equal(json_string_value(json_object_get(body, "uri")),
                      "/echo/hello?n=3");
  json_decref(body);
  for (i = 0; i < r->n_headers; i++) {
    assert_absent(r->headers[i].name, strlen(r->headers[i].name), fx.secret);
    assert_absent(r->headers[i].value, strlen(r->headers[i].value), fx.secret);
    if (strcasecmp(r->headers[i].name, "x-echo-authorization") == 0) {
      assert_string_equal(r->headers[i].value, "Bearer [REDACTED]");
      echoed_header = 1;
    }
  }
  assert_true(echoed_header);
  lk_client_result_free(r);
  lk_client_close(c);
}

static void unbound_tool_answers_missing_credential(void **state) {
  lk_client *c = open_client(NULL, 0, 0);
  lk_client_result *r = NULL;
  lk_client_error err;
  const lk_client_missing_credential *m;
  (void)state;

  assert_int_equal(lk_client_call(c, fx.budget, fx.unbound_tool, "get",
                                  "{\"item\": \"x\"}", &r, &err),
                   LK_CLIENT_MISSING_CREDENTIAL);
  assert_int_equal(err.code, LK_CLIENT_MISSING_CREDENTIAL);
  assert_int_equal(err.grpc_status, 0);
  assert_non_null(strstr(err.message, fx.setup_url));
  assert_non_null(r);
  assert_int_equal(r->http_status, 0);
  assert_int_equal(r->body_len, 0);
  m = r->missing_credential;
  assert_non_null(m);
  assert_string_equal(m->budget, fx.budget);
  assert_string_equal(m->tool, fx.unbound_tool);
  assert_string_equal(m->credential_type, fx.unbound_type);
  assert_int_equal(m->n_required_fields, 1);
  assert_string_equal(m->required_fields[0].name, "api_key");
  assert_true(m->required_fields[0].secret);
  assert_int_equal(m->required_fields[0].max_len, 4096);
  assert_string_equal(m->required_fields[0].description,
                      "The vendor's API key");
  assert_string_equal(m->setup_url, fx.setup_url);
  assert_non_null(strstr(m->hint, "latchkeyctl credential create --type"));
  lk_client_result_free(r);
  lk_client_close(c);
}

static void wrong_argument_type_is_invalid_argument(void **state) {
  lk_client *c = open_client(NULL, 0, 0);
  lk_client_result *r = NULL;
  lk_client_error err;
  (void)state;

  assert_int_equal(lk_client_call(c, fx.budget, fx.echo_tool, "get",
                                  "{\"item\": \"x\", \"n\": \"x\"}", &r, &err),
                   LK_CLIENT_INVALID_ARGUMENT);
  assert_null(r);
  assert_int_equal(err.grpc_status, 3);
  assert_non_null(strstr(err.message, "'n'"));
  /* A missing required parameter is the sidecar's call too. */
  assert_int_equal(
      lk_client_call(c, fx.budget, fx.echo_tool, "get", "{}", &r, &err),
      LK_CLIENT_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "item"));
  assert_int_equal(
      lk_client_call(c, fx.budget, fx.echo_tool, "get", "[1]", &r, &err),
      LK_CLIENT_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "must be a JSON object"));
  lk_client_close(c);
}

static void unknown_tool_is_not_found(void **state) {
  lk_client *c = open_client(NULL, 0, 0);
  lk_client_result *r = NULL;
  lk_client_error err;
  (void)state;

  assert_int_equal(lk_client_call(c, fx.budget, "no-such-tool", "get",
                                  "{\"item\": \"x\"}", &r, &err),
                   LK_CLIENT_NOT_FOUND);
  assert_null(r);
  assert_int_equal(err.grpc_status, 5);
  assert_non_null(strstr(err.message, "no-such-tool"));
  lk_client_close(c);
}

static void slow_vendor_past_the_deadline_is_deadline_exceeded(void **state) {
  lk_client *c = open_client(NULL, 300, 0);
  lk_client_result *r = NULL;
  lk_client_error err;
  struct timespec t0;
  struct timespec t1;
  long elapsed_ms;
  (void)state;

  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(
      lk_client_call(c, fx.budget, fx.slow_tool, "wait", NULL, &r, &err),
      LK_CLIENT_DEADLINE_EXCEEDED);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  elapsed_ms =
      (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  assert_null(r);
  assert_int_equal(err.grpc_status, 4);
  /* The client's deadline ended the call (the vendor would have answered
   * 200 after a second); the upper bound only catches a hang. */
  assert_in_range(elapsed_ms, 250, 2500);
  lk_client_close(c);
}

static void budget_of_another_agent_is_permission_denied(void **state) {
  lk_client *c = open_client(NULL, 0, 0);
  lk_client_result *r = NULL;
  lk_client_tools *t = NULL;
  lk_client_error err;
  (void)state;

  assert_int_equal(lk_client_call(c, fx.other_budget, fx.echo_tool, "get",
                                  "{\"item\": \"x\"}", &r, &err),
                   LK_CLIENT_PERMISSION_DENIED);
  assert_null(r);
  assert_int_equal(err.grpc_status, 7);
  assert_int_equal(lk_client_list_tools(c, fx.other_budget, &t, &err),
                   LK_CLIENT_PERMISSION_DENIED);
  assert_null(t);
  lk_client_close(c);
}

static void no_or_wrong_agent_token_is_unauthenticated(void **state) {
  lk_client *none = open_client("", 0, 0);
  lk_client *wrong = open_client("agent-not-the-token", 0, 0);
  lk_client_result *r = NULL;
  lk_client_tools *t = NULL;
  lk_client_error err;
  (void)state;

  assert_int_equal(lk_client_call(none, fx.budget, fx.echo_tool, "get",
                                  "{\"item\": \"x\"}", &r, &err),
                   LK_CLIENT_UNAUTHENTICATED);
  assert_null(r);
  assert_int_equal(err.grpc_status, 16);
  assert_non_null(strstr(err.message, "agent token"));
  assert_int_equal(lk_client_list_tools(none, fx.budget, &t, &err),
                   LK_CLIENT_UNAUTHENTICATED);
  assert_null(t);
  assert_int_equal(lk_client_call(wrong, fx.budget, fx.echo_tool, "get",
                                  "{\"item\": \"x\"}", &r, &err),
                   LK_CLIENT_UNAUTHENTICATED);
  assert_null(r);
  lk_client_close(none);
  lk_client_close(wrong);
}

static void answer_over_the_cap_is_resource_exhausted(void **state) {
  lk_client *c = open_client(NULL, 0, 64);
  lk_client_result *r = NULL;
  lk_client_error err;
  (void)state;

  assert_int_equal(lk_client_call(c, fx.budget, fx.echo_tool, "get",
                                  "{\"item\": \"big\"}", &r, &err),
                   LK_CLIENT_RESOURCE_EXHAUSTED);
  assert_null(r);
  lk_client_close(c);
}

static void nothing_listening_is_unavailable(void **state) {
  lk_client_opts opts;
  lk_client *c = NULL;
  lk_client_result *r = NULL;
  lk_client_error err;
  (void)state;

  memset(&opts, 0, sizeof(opts));
  opts.timeout_ms = 5000;
  assert_int_equal(lk_client_open("unix:/nonexistent/latchkey-interop.sock",
                                  &opts, &c, &err),
                   LK_CLIENT_OK);
  assert_int_equal(lk_client_call(c, fx.budget, fx.echo_tool, "get",
                                  "{\"item\": \"x\"}", &r, &err),
                   LK_CLIENT_UNAVAILABLE);
  assert_null(r);
  assert_int_equal(err.grpc_status, 14);
  lk_client_close(c);
}

typedef struct {
  lk_client *c;
  int ok; /* calls that answered 200, redacted, without the secret */
} worker;

static void *call_many(void *arg) {
  worker *w = arg;
  int i;
  for (i = 0; i < CALLS_PER_THREAD; i++) {
    lk_client_result *r = NULL;
    lk_client_error err;
    if (lk_client_call(w->c, fx.budget, fx.echo_tool, "get",
                       "{\"item\": \"many\"}", &r, &err) == LK_CLIENT_OK &&
        r->http_status == 200 && r->redacted &&
        memmem(r->body, r->body_len, fx.secret, strlen(fx.secret)) == NULL) {
      w->ok++;
    }
    lk_client_result_free(r);
  }
  return NULL;
}

static void one_client_serves_many_threads_at_once(void **state) {
  lk_client *c = open_client(NULL, 0, 0);
  pthread_t th[N_THREADS];
  worker w[N_THREADS];
  int i;
  (void)state;

  for (i = 0; i < N_THREADS; i++) {
    w[i].c = c;
    w[i].ok = 0;
    assert_int_equal(pthread_create(&th[i], NULL, call_many, &w[i]), 0);
  }
  for (i = 0; i < N_THREADS; i++) {
    assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(w[i].ok, CALLS_PER_THREAD);
  }
  lk_client_close(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(list_tools_gives_operations_with_json_schemas),
      cmocka_unit_test(call_injects_the_secret_and_sees_only_redacted),
      cmocka_unit_test(unbound_tool_answers_missing_credential),
      cmocka_unit_test(wrong_argument_type_is_invalid_argument),
      cmocka_unit_test(unknown_tool_is_not_found),
      cmocka_unit_test(slow_vendor_past_the_deadline_is_deadline_exceeded),
      cmocka_unit_test(budget_of_another_agent_is_permission_denied),
      cmocka_unit_test(no_or_wrong_agent_token_is_unauthenticated),
      cmocka_unit_test(answer_over_the_cap_is_resource_exhausted),
      cmocka_unit_test(nothing_listening_is_unavailable),
      cmocka_unit_test(one_client_serves_many_threads_at_once),
  };
  load_fixture();
  fprintf(stderr, "c_client_test: %s at %s\n", fx.transport, fx.address);
  return cmocka_run_group_tests_name(fx.transport, tests, NULL, NULL);
}
