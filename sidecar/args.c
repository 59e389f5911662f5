/*
 * args.c - arguments_json validation and JSON-Schema export (see args.h).
 *
 * The checks run in a fixed order (syntax, shape, unknown names, missing
 * required, types) so an agent fixing one error at a time converges, and
 * each message tells it what to send instead. Parser messages from jansson
 * are cut before their " near '<token>'" tail, because that token is a
 * piece of the agent's input and may be a pasted secret. Unknown parameter
 * names are echoed (that is what the agent needs to fix), but only after
 * being truncated and reduced to printable ASCII.
 */
#include "sidecar/args.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/schema.h"

/* Longest piece of an agent-supplied key quoted back in a message. */
#define ARGS_KEY_ECHO_MAX 64

/* The type name a message uses for what the agent sent. */
static const char *json_kind(const json_t *v) {
  switch (json_typeof(v)) {
    case JSON_OBJECT:
      return "object";
    case JSON_ARRAY:
      return "array";
    case JSON_STRING:
      return "string";
    case JSON_INTEGER:
      return "integer";
    case JSON_REAL:
      return "number";
    case JSON_TRUE:
    case JSON_FALSE:
      return "boolean";
    case JSON_NULL:
      return "null";
  }
  return "unknown";
}

/* Returns 1 when v has the declared parameter type. */
static int type_matches(const char *type, const json_t *v) {
  if (strcmp(type, "string") == 0) {
    return json_is_string(v);
  }
  if (strcmp(type, "integer") == 0) {
    return json_is_integer(v);
  }
  if (strcmp(type, "number") == 0) {
    return json_is_number(v);
  }
  if (strcmp(type, "boolean") == 0) {
    return json_is_boolean(v);
  }
  if (strcmp(type, "object") == 0) {
    return json_is_object(v);
  }
  if (strcmp(type, "array") == 0) {
    return json_is_array(v);
  }
  return 0;
}

static const char *article(const char *type) {
  return (type[0] == 'i' || type[0] == 'o' || type[0] == 'a') ? "an" : "a";
}

static const Latchkey__V1__Param *find_param(const Latchkey__V1__Operation *op,
                                             const char *name) {
  for (size_t i = 0; i < op->n_params; i++) {
    if (strcmp(op->params[i]->name, name) == 0) {
      return op->params[i];
    }
  }
  return NULL;
}

/* Copies an agent-supplied key into dst as printable ASCII, truncated. */
static void sanitize_key(char *dst, size_t dst_size, const char *key) {
  size_t n = 0;
  size_t i = 0;
  for (; key[i] != '\0' && n + 4 < dst_size && i < ARGS_KEY_ECHO_MAX; i++) {
    unsigned char c = (unsigned char)key[i];
    dst[n++] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
  }
  if (key[i] != '\0') {
    memcpy(dst + n, "...", 3);
    n += 3;
  }
  dst[n] = '\0';
}

/* Writes "a, b, c" (op's param names) into dst, truncated with "...". */
static void list_params(char *dst, size_t dst_size,
                        const Latchkey__V1__Operation *op) {
  size_t n = 0;
  dst[0] = '\0';
  for (size_t i = 0; i < op->n_params; i++) {
    int w = snprintf(dst + n, dst_size - n, "%s%s", i > 0 ? ", " : "",
                     op->params[i]->name);
    if (w < 0 || (size_t)w >= dst_size - n) {
      if (dst_size > 4) {
        memcpy(dst + dst_size - 4, "...", 4);
      }
      return;
    }
    n += (size_t)w;
  }
}

/* Copies jansson's parse message without its " near '<input>'" tail. */
static void parse_reason(char *dst, size_t dst_size, const char *text) {
  if (strstr(text, "JSON_ALLOW_NUL") != NULL) {
    snprintf(dst, dst_size, "\\u0000 is not allowed in strings");
    return;
  }
  const char *near = strstr(text, " near ");
  size_t n = near != NULL ? (size_t)(near - text) : strlen(text);
  if (n >= dst_size) {
    n = dst_size - 1;
  }
  memcpy(dst, text, n);
  dst[n] = '\0';
}

static int all_space(const char *p, size_t len) {
  for (size_t i = 0; i < len; i++) {
    if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r') {
      return 0;
    }
  }
  return 1;
}

lk_status lk_args_parse(const Latchkey__V1__Operation *op, const char *json,
                        size_t len, json_t **out, lk_err *err) {
  lk_status st = LK_OK;
  json_t *root = NULL;
  json_error_t jerr;
  char buf[256];
  char known[256];

  *out = NULL;
  if (len > LK_ARGS_MAX_BYTES) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "arguments_json is %zu bytes; at most %zu are accepted", len,
                 LK_ARGS_MAX_BYTES);
    goto done;
  }
  if (json == NULL || all_space(json, len)) {
    root = json_object();
  } else {
    root =
        json_loadb(json, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
      parse_reason(buf, sizeof(buf), jerr.text);
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "arguments_json is not valid JSON at line %d column %d: "
                   "%s; send one JSON object of parameters by name",
                   jerr.line, jerr.column, buf);
      goto done;
    }
  }
  if (root == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory parsing arguments");
    goto done;
  }
  if (!json_is_object(root)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "arguments_json must be a JSON object of parameters by name "
                 "(like {\"name\": value}), got %s",
                 json_kind(root));
    goto done;
  }

  const char *key;
  json_t *value;
  json_object_foreach(root, key, value) {
    if (find_param(op, key) == NULL) {
      sanitize_key(buf, sizeof(buf), key);
      if (op->n_params == 0) {
        st = lk_fail(err, LK_INVALID_ARGUMENT,
                     "unknown parameter '%s': operation '%s' takes no "
                     "parameters; send {}",
                     buf, op->name);
      } else {
        list_params(known, sizeof(known), op);
        st = lk_fail(err, LK_INVALID_ARGUMENT,
                     "unknown parameter '%s' for operation '%s'; known: %s",
                     buf, op->name, known);
      }
      goto done;
    }
  }
  for (size_t i = 0; i < op->n_params; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    if (p->required && json_object_get(root, p->name) == NULL) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "missing required parameter '%s' (%s %s) for operation "
                   "'%s'",
                   p->name, article(p->type), p->type, op->name);
      goto done;
    }
  }
  for (size_t i = 0; i < op->n_params; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    json_t *v = json_object_get(root, p->name);
    if (v == NULL) {
      continue;
    }
    if (!lk_schema_param_type_known(p->type)) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "operation '%s' declares parameter '%s' with unsupported "
                   "type '%.32s'; the tool owner must fix and re-register it",
                   op->name, p->name, p->type);
      goto done;
    }
    if (!type_matches(p->type, v)) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "parameter '%s' must be %s %s, got %s", p->name,
                   article(p->type), p->type, json_kind(v));
      goto done;
    }
  }
  *out = root;
  root = NULL;

done:
  json_decref(root);
  return st;
}

lk_status lk_args_schema(const Latchkey__V1__Operation *op, char **out_json,
                         lk_err *err) {
  lk_status st = LK_OK;
  json_t *root = json_object();
  json_t *props = json_object();
  json_t *required = json_array();

  *out_json = NULL;
  if (root == NULL || props == NULL || required == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory building schema");
    goto done;
  }
  for (size_t i = 0; i < op->n_params; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    if (!lk_schema_param_type_known(p->type)) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "operation '%s' declares parameter '%s' with unsupported "
                   "type '%.32s'; the tool owner must fix and re-register it",
                   op->name, p->name, p->type);
      goto done;
    }
    json_t *prop = json_object();
    int bad = prop == NULL;
    bad = bad || json_object_set_new(prop, "type", json_string(p->type)) != 0;
    if (!bad && p->description[0] != '\0') {
      bad = json_object_set_new(prop, "description",
                                json_string(p->description)) != 0;
    }
    if (!bad && strcmp(p->type, "array") == 0) {
      bad = json_object_set_new(prop, "items", json_object()) != 0;
    }
    if (bad) {
      json_decref(prop);
    }
    if (bad || json_object_set_new(props, p->name, prop) != 0) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "operation '%s' parameter %zu has a name or description "
                   "that is not valid UTF-8; fix and re-register the tool",
                   op->name, i);
      goto done;
    }
    if (p->required && json_array_append_new(required, json_string(p->name))) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory building schema");
      goto done;
    }
  }
  if (json_object_set_new(root, "type", json_string("object")) != 0 ||
      json_object_set(root, "properties", props) != 0 ||
      json_object_set(root, "required", required) != 0 ||
      json_object_set_new(root, "additionalProperties", json_false()) != 0) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory building schema");
    goto done;
  }
  /* json_dumps allocates with jansson's functions, which latchkeyd
   * replaces (lib/oauth_token); the caller frees with free(). */
  char *text = json_dumps(root, JSON_COMPACT);
  *out_json = text != NULL ? strdup(text) : NULL;
  if (text != NULL) {
    json_free_t jfree = free;
    json_get_alloc_funcs(NULL, &jfree);
    jfree(text);
  }
  if (*out_json == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory building schema");
  }

done:
  json_decref(required);
  json_decref(props);
  json_decref(root);
  return st;
}
