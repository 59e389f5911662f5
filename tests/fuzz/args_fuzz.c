/*
 * args_fuzz.c - fuzzes sidecar/args: arguments_json validation and the
 * JSON-Schema export, the gate an LLM's text passes before it reaches the
 * request builder.
 *
 * Each input is used twice:
 *
 * 1. As arguments_json for a fixed, realistic operation (path, query and
 *    body params of all six types, some required). On LK_OK the result
 *    must hold only declared params, each of its declared JSON type, and
 *    every required one; on failure the status is one the contract names
 *    and the message never quotes input except an unknown top-level key
 *    (checked with a canary: LKCANARY in a value or in malformed JSON must
 *    not come back in the message).
 *
 * 2. As the text form of an operation, one item per line:
 *
 *        METHOD PATH
 *        NAME IN TYPE REQUIRED(0|1) DESCRIPTION...
 *        --
 *        ARGUMENTS_JSON
 *
 *    which goes through lk_schema_check_operation and lk_args_schema (the
 *    schema must be a well-formed JSON-Schema object, and exist whenever
 *    the operation passed the check and its descriptions are UTF-8), and,
 *    when the operation passed, the text after "--" goes through
 *    lk_args_parse with the same result checks as above.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/schema.h"
#include "sidecar/args.h"
#include "tests/fuzz/fuzz_target.h"

#define CANARY "LKCANARY"
#define MAX_DERIVED_PARAMS 64

static void set_param(Latchkey__V1__Param *p, const char *name, const char *in,
                      const char *type, int required, const char *desc) {
  latchkey__v1__param__init(p);
  p->name = (char *)name;
  p->in = (char *)in;
  p->type = (char *)type;
  p->required = required;
  p->description = (char *)desc;
}

/* The fixed operation: an issue tracker's "create issue" call. */
static Latchkey__V1__Param fixed_params[9];
static Latchkey__V1__Param *fixed_param_ptrs[9];
static Latchkey__V1__Operation fixed_op;

static const Latchkey__V1__Operation *fixed_operation(void) {
  static int ready;
  if (ready) {
    return &fixed_op;
  }
  set_param(&fixed_params[0], "owner", "path", "string", 1,
            "Account that owns the repository");
  set_param(&fixed_params[1], "repo", "path", "string", 1, "Repository name");
  set_param(&fixed_params[2], "dry_run", "query", "boolean", 0,
            "Validate without creating");
  set_param(&fixed_params[3], "limit", "query", "integer", 0, "Page size");
  set_param(&fixed_params[4], "weight", "query", "number", 0, "Ranking weight");
  set_param(&fixed_params[5], "title", "body", "string", 1, "Issue title");
  set_param(&fixed_params[6], "labels", "body", "array", 0, "Label names");
  set_param(&fixed_params[7], "fields", "body", "object", 0,
            "Custom fields by name");
  set_param(&fixed_params[8], "body.text", "body", "string", 0,
            "Markdown text");
  latchkey__v1__operation__init(&fixed_op);
  fixed_op.name = (char *)"create_issue";
  fixed_op.description = (char *)"Open an issue";
  fixed_op.method = (char *)"POST";
  fixed_op.path = (char *)"/v1/repos/{owner}/{repo}/issues";
  for (size_t i = 0; i < 9; i++) {
    fixed_param_ptrs[i] = &fixed_params[i];
  }
  fixed_op.n_params = 9;
  fixed_op.params = fixed_param_ptrs;
  ready = 1;
  return &fixed_op;
}

static void check(int ok) {
  if (!ok) {
    __builtin_trap();
  }
}

/* The declared-type rule, written independently of args.c. */
static int has_type(const char *type, const json_t *v) {
  if (strcmp(type, "string") == 0) {
    return json_is_string(v);
  }
  if (strcmp(type, "integer") == 0) {
    return json_is_integer(v);
  }
  if (strcmp(type, "number") == 0) {
    return json_is_integer(v) || json_is_real(v);
  }
  if (strcmp(type, "boolean") == 0) {
    return json_is_true(v) || json_is_false(v);
  }
  if (strcmp(type, "object") == 0) {
    return json_is_object(v);
  }
  if (strcmp(type, "array") == 0) {
    return json_is_array(v);
  }
  return 0;
}

/* Checks what lk_args_parse promises on LK_OK. */
static void check_parsed(const Latchkey__V1__Operation *op, const json_t *out) {
  const char *key;
  json_t *value;
  check(json_is_object(out));
  json_object_foreach((json_t *)out, key, value) {
    const Latchkey__V1__Param *p = NULL;
    for (size_t i = 0; i < op->n_params && p == NULL; i++) {
      if (strcmp(op->params[i]->name, key) == 0) {
        p = op->params[i];
      }
    }
    check(p != NULL);
    check(has_type(p->type, value));
  }
  for (size_t i = 0; i < op->n_params; i++) {
    if (op->params[i]->required) {
      check(json_object_get(out, op->params[i]->name) != NULL);
    }
  }
}

/* A failure message may quote the input only as an unknown top-level key. */
static void check_message(const char *json, size_t len, const lk_err *err) {
  if (strstr(err->msg, CANARY) == NULL) {
    return;
  }
  json_error_t jerr;
  json_t *root =
      json_loadb(json, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
  int from_key = 0;
  const char *key;
  json_t *value;
  check(root != NULL);
  if (json_is_object(root)) {
    json_object_foreach(root, key, value) {
      from_key |= strstr(key, CANARY) != NULL;
    }
  }
  json_decref(root);
  check(from_key);
}

/* Runs lk_args_parse and checks its contract; quoted says whether the
 * message check applies (not for derived operations, whose own names come
 * from the input). */
static void parse_and_check(const Latchkey__V1__Operation *op, const char *json,
                            size_t len, int quoted) {
  json_t *out = NULL;
  lk_err err;
  lk_err_clear(&err);
  lk_status st = lk_args_parse(op, json, len, &out, &err);
  if (st == LK_OK) {
    check_parsed(op, out);
  } else {
    check(out == NULL);
    check(st == LK_INVALID_ARGUMENT || st == LK_RESOURCE_EXHAUSTED ||
          st == LK_FAILED_PRECONDITION);
    check(err.code == st && err.msg[0] != '\0');
    if (quoted) {
      check_message(json, len, &err);
    }
  }
  json_decref(out);
}

/* Splits s at the first c: returns the rest (NULL when c is absent). */
static char *cut(char *s, char c) {
  char *p = strchr(s, c);
  if (p == NULL) {
    return NULL;
  }
  *p = '\0';
  return p + 1;
}

/* Returns 1 when the string is valid UTF-8 (jansson's own judgement). */
static int utf8_ok(const char *s) {
  json_t *j = json_string(s);
  json_decref(j);
  return j != NULL;
}

/* Checks the schema text lk_args_schema returned for op. */
static void check_schema(const Latchkey__V1__Operation *op, const char *text) {
  json_t *root = json_loads(text, 0, NULL);
  check(root != NULL && json_is_object(root));
  json_t *type = json_object_get(root, "type");
  json_t *props = json_object_get(root, "properties");
  json_t *req = json_object_get(root, "required");
  check(type != NULL && json_is_string(type) &&
        strcmp(json_string_value(type), "object") == 0);
  check(props != NULL && json_is_object(props));
  check(req != NULL && json_is_array(req));
  check(json_is_false(json_object_get(root, "additionalProperties")));
  check(json_object_size(props) <= op->n_params);
  for (size_t i = 0; i < op->n_params; i++) {
    json_t *prop = json_object_get(props, op->params[i]->name);
    check(prop != NULL);
    json_t *t = json_object_get(prop, "type");
    check(t != NULL && json_is_string(t));
  }
  json_decref(root);
}

/* Part 2: the input as an operation definition (see the file comment). */
static void fuzz_derived_operation(const uint8_t *data, size_t size) {
  Latchkey__V1__Param params[MAX_DERIVED_PARAMS];
  Latchkey__V1__Param *ptrs[MAX_DERIVED_PARAMS];
  Latchkey__V1__Operation op;
  char *text = malloc(size + 1);
  char *args = NULL;
  char *schema = NULL;
  lk_err err;

  if (text == NULL) {
    return;
  }
  memcpy(text, data, size);
  text[size] = '\0';
  latchkey__v1__operation__init(&op);
  op.name = (char *)"derived";
  op.params = ptrs;

  char *line = text;
  char *next = cut(line, '\n');
  char *path = cut(line, ' ');
  op.method = line;
  op.path = path != NULL ? path : (char *)"";
  for (line = next; line != NULL; line = next) {
    next = cut(line, '\n');
    if (strcmp(line, "--") == 0) {
      args = next;
      break;
    }
    if (op.n_params == MAX_DERIVED_PARAMS) {
      continue;
    }
    char *in = cut(line, ' ');
    char *type = in != NULL ? cut(in, ' ') : NULL;
    char *req = type != NULL ? cut(type, ' ') : NULL;
    char *desc = req != NULL ? cut(req, ' ') : NULL;
    Latchkey__V1__Param *p = &params[op.n_params];
    set_param(p, line, in != NULL ? in : "", type != NULL ? type : "",
              req != NULL && req[0] == '1', desc != NULL ? desc : "");
    ptrs[op.n_params++] = p;
  }

  lk_err_clear(&err);
  lk_status checked = lk_schema_check_operation(&op, &err);
  check(checked == LK_OK || checked == LK_INVALID_ARGUMENT);

  lk_err_clear(&err);
  lk_status st = lk_args_schema(&op, &schema, &err);
  if (st == LK_OK) {
    check(schema != NULL);
    check_schema(&op, schema);
  } else {
    check(schema == NULL);
    check(st == LK_FAILED_PRECONDITION || st == LK_RESOURCE_EXHAUSTED);
  }
  if (checked == LK_OK) {
    int descriptions_ok = 1;
    size_t required = 0;
    for (size_t i = 0; i < op.n_params; i++) {
      descriptions_ok &= utf8_ok(op.params[i]->description);
      required += op.params[i]->required != 0;
    }
    if (descriptions_ok) {
      check(st == LK_OK);
      json_t *root = json_loads(schema, 0, NULL);
      check(json_object_size(json_object_get(root, "properties")) ==
            op.n_params);
      check(json_array_size(json_object_get(root, "required")) == required);
      json_decref(root);
    }
    if (args != NULL) {
      parse_and_check(&op, args, strlen(args), 0);
    }
  }
  free(schema);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  parse_and_check(fixed_operation(), (const char *)data, size, 1);
  fuzz_derived_operation(data, size);
  return 0;
}
