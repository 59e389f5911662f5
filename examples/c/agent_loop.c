/*
 * agent_loop.c - an agent loop in C over Latchkey, with a scripted model
 * standing in for the LLM (examples/llm_script.json; no network, no API
 * key; its format is in examples/README.md).
 *
 * The loop is what a real agent does: list the budget's tools and hand
 * them to the model as function definitions (printed here as the JSON an
 * OpenAI-style API takes), run every function call the model makes
 * through Latchkey, give the model the scrubbed result, and when a
 * credential is missing, show the user the setup link (only the user can
 * provide a credential) and tell the model. Swap the scripted model for a
 * real LLM client and nothing else changes.
 *
 *     LATCHKEY_SIDECAR=unix:/run/latchkey/agent.sock \
 *     LATCHKEY_AGENT_TOKEN_FILE=/run/latchkey/agent.token \
 *         agent_loop --budget main [--script examples/llm_script.json]
 *
 * Function names are "<tool>__<operation>" when that is a valid name for
 * the common LLM APIs (^[A-Za-z0-9_-]{1,64}$) and splits back at its first
 * "__", as clients/python's latchkey.function_name makes them. Other ids
 * (a '.' in them, or too long) get the same shape with odd characters
 * replaced and the first 10 hex digits of SHA-256(tool NUL operation)
 * appended, exactly as the Python and Node clients make them.
 *
 * The script and the model's arguments are untrusted input: the script is
 * read with a size cap and every member is checked before use.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "clients/c/latchkey_client.h"

#define DEFAULT_SIDECAR "unix:/run/latchkey/agent.sock"
#define DEFAULT_SCRIPT "examples/llm_script.json"
#define MAX_SCRIPT_BYTES (1024 * 1024)
#define MAX_TURNS 8
/* Characters of a result body printed for the human. */
#define MAX_SHOWN 400
#define MAX_NAME 64
/* Hex digits of hash in a name made from odd ids come from this many
 * bytes of SHA-256. */
#define NAME_HASH_BYTES 5

/* One function offered to the model: a tool's operation. */
typedef struct {
  char name[MAX_NAME + 1];
  const lk_client_tool *tool;
  const lk_client_operation *op;
} function;

typedef struct {
  function *items;
  size_t n;
} functions;

static int name_char(char c, int underscore_ok) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || (underscore_ok && c == '_');
}

/* Copies at most max characters of s into out, odd ones replaced by '-';
 * returns how many were copied. */
static size_t sanitized(const char *s, size_t max, char *out) {
  size_t i;
  for (i = 0; s[i] != '\0' && i < max; i++) {
    out[i] = name_char(s[i], 0) ? s[i] : '-';
  }
  out[i] = '\0';
  return i;
}

/* Writes the function name of tool's operation op into out. */
static void function_name(const char *tool, const char *op,
                          char out[MAX_NAME + 1]) {
  size_t tlen = strlen(tool);
  size_t olen = strlen(op);
  int plain = tlen + 2 + olen <= MAX_NAME && strstr(tool, "__") == NULL &&
              (tlen == 0 || tool[tlen - 1] != '_');
  unsigned char digest[crypto_hash_sha256_BYTES];
  char hex[2 * NAME_HASH_BYTES + 1];
  char tool_part[MAX_NAME + 1];
  char op_part[MAX_NAME + 1];
  crypto_hash_sha256_state h;
  size_t room = MAX_NAME - 2 - 1 - 2 * NAME_HASH_BYTES;
  size_t tool_room;
  size_t used;
  size_t i;

  for (i = 0; plain && i < tlen; i++) {
    plain = name_char(tool[i], 1);
  }
  for (i = 0; plain && i < olen; i++) {
    plain = name_char(op[i], 1);
  }
  if (plain) {
    memcpy(out, tool, tlen);
    memcpy(out + tlen, "__", 2);
    memcpy(out + tlen + 2, op, olen + 1);
    return;
  }
  crypto_hash_sha256_init(&h);
  crypto_hash_sha256_update(&h, (const unsigned char *)tool, tlen + 1);
  crypto_hash_sha256_update(&h, (const unsigned char *)op, olen);
  crypto_hash_sha256_final(&h, digest);
  sodium_bin2hex(hex, sizeof(hex), digest, NAME_HASH_BYTES);
  tool_room = room / 2 > room - (olen < room ? olen : room)
                  ? room / 2
                  : room - (olen < room ? olen : room);
  used = sanitized(tool, tool_room, tool_part);
  olen = sanitized(op, room - used, op_part);
  memcpy(out, tool_part, used);
  memcpy(out + used, "__", 2);
  memcpy(out + used + 2, op_part, olen);
  out[used + 2 + olen] = '_';
  memcpy(out + used + 3 + olen, hex, sizeof(hex));
}

/* Builds one function per operation of every tool. */
static int make_functions(const lk_client_tools *tools, functions *out) {
  size_t n = 0;
  size_t i;
  size_t k;

  for (i = 0; i < tools->n_tools; i++) {
    n += tools->tools[i].n_operations;
  }
  out->items = calloc(n + 1, sizeof(*out->items));
  out->n = 0;
  if (out->items == NULL) {
    return -1;
  }
  for (i = 0; i < tools->n_tools; i++) {
    for (k = 0; k < tools->tools[i].n_operations; k++) {
      function *f = &out->items[out->n++];
      f->tool = &tools->tools[i];
      f->op = &tools->tools[i].operations[k];
      function_name(f->tool->id, f->op->name, f->name);
    }
  }
  return 0;
}

static const function *find_function(const functions *fs, const char *name) {
  size_t i;
  for (i = 0; i < fs->n; i++) {
    if (strcmp(fs->items[i].name, name) == 0) {
      return &fs->items[i];
    }
  }
  return NULL;
}

/* The OpenAI-style "tools" array: {"type": "function", "function": {name,
 * description, parameters}} per operation, parameters being the sidecar's
 * JSON Schema. */
static json_t *definitions(const functions *fs) {
  json_t *defs = json_array();
  size_t i;

  for (i = 0; defs != NULL && i < fs->n; i++) {
    const function *f = &fs->items[i];
    json_t *schema = json_loads(f->op->parameters_schema, 0, NULL);
    char desc[1024];
    snprintf(desc, sizeof(desc), "%s (tool %s%s%s)",
             f->op->description[0] ? f->op->description : f->op->path,
             f->tool->id, f->tool->description[0] ? ": " : "",
             f->tool->description);
    if (schema == NULL) {
      schema = json_pack("{s:s, s:{}}", "type", "object", "properties");
    }
    json_array_append_new(
        defs,
        json_pack("{s:s, s:{s:s, s:s, s:o}}", "type", "function", "function",
                  "name", f->name, "description", desc, "parameters", schema));
  }
  return defs;
}

/* Reads the agent token file named by LATCHKEY_AGENT_TOKEN_FILE (if set)
 * into guarded memory, trailing newline stripped; *out stays NULL when the
 * variable is unset. */
static int read_token(char **out) {
  const char *path = getenv("LATCHKEY_AGENT_TOKEN_FILE");
  FILE *f;
  char *buf;
  size_t n;

  *out = NULL;
  if (path == NULL || path[0] == '\0') {
    return 0;
  }
  f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
    return -1;
  }
  buf = sodium_malloc(LK_CLIENT_MAX_TOKEN_BYTES + 3);
  if (buf == NULL) {
    fclose(f);
    return -1;
  }
  n = fread(buf, 1, LK_CLIENT_MAX_TOKEN_BYTES + 2, f);
  fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
    n--;
  }
  buf[n] = '\0';
  *out = buf;
  return 0;
}

static void free_token(char *token) {
  if (token != NULL) {
    sodium_free(token); /* wipes */
  }
}

/* Loads the scripted model, refusing a file over MAX_SCRIPT_BYTES or one
 * whose "turns" is not an array. */
static json_t *load_script(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t n;
  json_t *script = NULL;
  json_error_t jerr;

  if (f == NULL) {
    fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
    return NULL;
  }
  buf = malloc(MAX_SCRIPT_BYTES + 1);
  if (buf != NULL) {
    n = fread(buf, 1, MAX_SCRIPT_BYTES + 1, f);
    if (n > MAX_SCRIPT_BYTES) {
      fprintf(stderr, "%s is over %d bytes\n", path, MAX_SCRIPT_BYTES);
    } else {
      script = json_loadb(buf, n, JSON_REJECT_DUPLICATES, &jerr);
      if (script == NULL) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
      } else if (!json_is_array(json_object_get(script, "turns"))) {
        fprintf(stderr, "%s has no \"turns\" array\n", path);
        json_decref(script);
        script = NULL;
      }
    }
  }
  free(buf);
  fclose(f);
  return script;
}

/* Prints text, cut at MAX_SHOWN characters, on one indented line. */
static void print_shortened(const unsigned char *text, size_t len) {
  size_t shown = len > MAX_SHOWN ? MAX_SHOWN : len;
  printf("     %.*s%s\n", (int)shown, (const char *)text,
         len > shown ? "..." : "");
}

/* What the model gets back for a vendor answer: status, content type,
 * redacted, and the body (parsed when it is JSON). */
static json_t *result_for_model(const lk_client_result *r) {
  json_t *out =
      json_pack("{s:i, s:s, s:b}", "status", r->http_status, "content_type",
                r->content_type, "redacted", r->redacted);
  json_t *body = json_loadb((const char *)r->body, r->body_len, 0, NULL);
  if (body != NULL) {
    json_object_set_new(out, "json", body);
  } else {
    json_object_set_new(out, "text",
                        json_stringn((const char *)r->body, r->body_len));
  }
  return out;
}

/* Shows the user what to set up, and returns what the model gets. */
static json_t *missing_for_model(const lk_client_missing_credential *m) {
  json_t *fields = json_array();
  size_t i;

  printf(
      "  -> Latchkey: tool '%s' needs a credential (%s) before it can "
      "run.\n",
      m->tool, m->credential_type);
  for (i = 0; i < m->n_required_fields; i++) {
    const lk_client_field *f = &m->required_fields[i];
    printf("     field %s%s: %s\n", f->name, f->secret ? " (secret)" : "",
           f->description);
    json_array_append_new(
        fields, json_pack("{s:s, s:b, s:s}", "name", f->name, "secret",
                          f->secret, "description", f->description));
  }
  if (m->setup_url[0] != '\0') {
    printf("     Set it up here: %s\n", m->setup_url);
  } else {
    printf("     Set it up with: %s\n", m->hint);
  }
  return json_pack("{s:s, s:s, s:s, s:o, s:s}", "error", "missing_credential",
                   "tool", m->tool, "credential_type", m->credential_type,
                   "required_fields", fields, "setup_url", m->setup_url);
}

/* Runs one function call of the model through Latchkey; prints what the
 * human should see and returns what the model gets back. */
static json_t *run_tool_call(lk_client *lk, const functions *fs,
                             const char *budget, const char *name,
                             const char *arguments) {
  const function *f = find_function(fs, name);
  lk_client_result *r = NULL;
  lk_client_error err;
  lk_client_code code;
  json_t *out;

  printf("assistant calls %s(%s)\n", name, arguments);
  if (f == NULL) {
    printf("  -> there is no function named %s\n", name);
    return json_pack("{s:s, s:s}", "error", "NOT_FOUND", "message",
                     "no such function");
  }
  code =
      lk_client_call(lk, budget, f->tool->id, f->op->name, arguments, &r, &err);
  if (code == LK_CLIENT_OK) {
    printf("  -> HTTP %d %s, redacted=%s\n", r->http_status, r->content_type,
           r->redacted ? "true" : "false");
    print_shortened(r->body, r->body_len);
    out = result_for_model(r);
  } else if (code == LK_CLIENT_MISSING_CREDENTIAL) {
    /* Only the user can fix this: show them where. */
    out = missing_for_model(r->missing_credential);
  } else {
    /* Bad arguments, a deadline...: the model may try again. */
    printf("  -> %s: %s\n", lk_client_code_name(code), err.message);
    out = json_pack("{s:s, s:s}", "error", lk_client_code_name(code), "message",
                    err.message);
  }
  lk_client_result_free(r);
  return out;
}

/* Plays the script's turns: each is the model's next reply. Returns 0
 * when a turn without tool calls ends the conversation. */
static int converse(lk_client *lk, const functions *fs, const char *budget,
                    json_t *script) {
  json_t *turns = json_object_get(script, "turns");
  json_t *messages = json_array();
  const char *user = json_string_value(json_object_get(script, "user"));
  size_t t;
  int rc = 1;

  printf("user: %s\n", user != NULL ? user : "");
  json_array_append_new(messages, json_pack("{s:s, s:s}", "role", "user",
                                            "content", user ? user : ""));
  for (t = 0; t < json_array_size(turns) && t < MAX_TURNS; t++) {
    json_t *turn = json_array_get(turns, t);
    json_t *calls = json_object_get(turn, "tool_calls");
    const char *content = json_string_value(json_object_get(turn, "content"));
    size_t i;

    if (content != NULL && content[0] != '\0') {
      printf("assistant: %s\n", content);
    }
    json_array_append_new(
        messages, json_pack("{s:s, s:s}", "role", "assistant", "content",
                            content ? content : ""));
    if (json_array_size(calls) == 0) {
      rc = 0;
      break;
    }
    for (i = 0; i < json_array_size(calls); i++) {
      json_t *call = json_array_get(calls, i);
      const char *name = json_string_value(json_object_get(call, "name"));
      const char *id = json_string_value(json_object_get(call, "id"));
      json_t *args = json_object_get(call, "arguments");
      /* Real LLM APIs hand arguments over as a JSON string: so does this. */
      char *arguments = json_is_object(args) ? json_dumps(args, 0) : NULL;
      json_t *output;
      char *text;

      if (name == NULL || arguments == NULL) {
        fprintf(stderr,
                "turn %zu: a tool call needs a \"name\" and an "
                "\"arguments\" object\n",
                t);
        free(arguments);
        goto done;
      }
      if (find_function(fs, name) == NULL) {
        printf("(script calls %s, which Latchkey did not offer)\n", name);
      }
      output = run_tool_call(lk, fs, budget, name, arguments);
      text = json_dumps(output, JSON_COMPACT);
      json_array_append_new(
          messages, json_pack("{s:s, s:s, s:s}", "role", "tool", "tool_call_id",
                              id ? id : "", "content", text ? text : "{}"));
      free(text);
      json_decref(output);
      free(arguments);
    }
  }
  if (rc != 0) {
    fprintf(stderr, "the script ended without a final answer\n");
  }
done:
  json_decref(messages);
  return rc;
}

int main(int argc, char **argv) {
  const char *budget = getenv("LATCHKEY_BUDGET");
  const char *script_path = DEFAULT_SCRIPT;
  const char *address = getenv("LATCHKEY_SIDECAR");
  lk_client_opts opts;
  lk_client_error err;
  lk_client *lk = NULL;
  lk_client_tools *tools = NULL;
  functions fs = {NULL, 0};
  json_t *script = NULL;
  json_t *defs = NULL;
  char *token = NULL;
  int rc = 1;
  int i;
  size_t k;

  for (i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--budget") == 0) {
      budget = argv[i + 1];
    } else if (strcmp(argv[i], "--script") == 0) {
      script_path = argv[i + 1];
    } else {
      break;
    }
  }
  if (i != argc) {
    fprintf(stderr, "usage: agent_loop [--budget BUDGET] [--script FILE]\n");
    return 2;
  }
  if (budget == NULL || budget[0] == '\0') {
    budget = "main";
  }
  if (address == NULL || address[0] == '\0') {
    address = DEFAULT_SIDECAR;
  }
  if (sodium_init() < 0 || read_token(&token) != 0) {
    return 1;
  }
  script = load_script(script_path);
  if (script == NULL) {
    goto done;
  }
  memset(&opts, 0, sizeof(opts));
  opts.agent_token = token;
  opts.timeout_ms = 10000;
  if (lk_client_open(address, &opts, &lk, &err) != LK_CLIENT_OK) {
    fprintf(stderr, "cannot open a Latchkey client: %s: %s\n",
            lk_client_code_name(err.code), err.message);
    goto done;
  }
  free_token(token); /* the client holds its own guarded copy */
  token = NULL;
  if (lk_client_list_tools(lk, budget, &tools, &err) != LK_CLIENT_OK) {
    fprintf(stderr, "cannot list the tools of budget %s: %s: %s\n", budget,
            lk_client_code_name(err.code), err.message);
    goto done;
  }
  if (make_functions(tools, &fs) != 0 || (defs = definitions(&fs)) == NULL) {
    fprintf(stderr, "out of memory\n");
    goto done;
  }
  printf("functions offered to the model:");
  for (k = 0; k < fs.n; k++) {
    printf("%s %s", k ? "," : "", fs.items[k].name);
  }
  printf("\nfunction definitions: ");
  json_dumpf(defs, stdout, JSON_COMPACT);
  printf("\n");
  rc = converse(lk, &fs, budget, script);
done:
  json_decref(defs);
  free(fs.items);
  lk_client_tools_free(tools);
  lk_client_close(lk);
  json_decref(script);
  free_token(token);
  return rc;
}
