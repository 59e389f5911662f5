/*
 * schema.c - registration-time rules for tools and credential types, and
 * the template scanner (see schema.h).
 *
 * Order: every check runs in a fixed order (ids, descriptions, counts,
 * then each element in declaration order, then cross-element rules), and
 * the first failure is the answer, so an owner fixing one error at a time
 * converges and tests can assert the exact message.
 *
 * Strings come from protobuf-c, so they are never NULL once unpacked, but
 * hand-built messages may leave one NULL: every read goes through
 * nonempty() or streq(), which treat NULL as "".
 */
#include "lib/schema.h"

#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/catalog.h"
#include "lib/oauth.h"

#define MAX_HOST 253
/* Longest piece of an unknown placeholder quoted back in a message. */
#define ECHO_MAX 64

static const char *const methods_known[] = {"GET",   "POST",   "PUT",
                                            "PATCH", "DELETE", NULL};
static const char *const param_ins[] = {"path", "query", "body", NULL};
static const char *const param_types[] = {
    "string", "integer", "number", "boolean", "object", "array", NULL};
/* Headers the sidecar (curl) sets itself; a rule must not fight it. */
static const char *const reserved_headers[] = {
    "Host", "Content-Length", "Transfer-Encoding", "Connection", NULL};

static int nonempty(const char *s) {
  return s != NULL && s[0] != '\0';
}

static const char *str(const char *s) {
  return s != NULL ? s : "";
}

static int streq(const char *a, const char *b) {
  return strcmp(str(a), str(b)) == 0;
}

static int one_of(const char *s, const char *const *set) {
  size_t i;
  for (i = 0; set[i] != NULL; i++) {
    if (streq(s, set[i])) {
      return 1;
    }
  }
  return 0;
}

static int too_long(const char *s, size_t max) {
  return s != NULL && strlen(s) > max;
}

/* ---- shared facts ---- */

lk_schema_tpl_kind lk_schema_tpl_next(const char **cursor, int escapes,
                                      lk_schema_tpl_piece *out) {
  const char *p = *cursor;
  const char *end;

  out->s = p;
  out->len = 1;
  if (*p == '\0') {
    out->len = 0;
    out->kind = LK_SCHEMA_TPL_END;
  } else if (escapes && (p[0] == '{' || p[0] == '}') && p[1] == p[0]) {
    out->kind = LK_SCHEMA_TPL_TEXT;
    *cursor = p + 2;
  } else if (*p == '}') {
    out->kind = LK_SCHEMA_TPL_CLOSE;
  } else if (*p == '{') {
    end = strpbrk(p + 1, "{}");
    if (end == NULL || *end != '}') {
      out->kind = LK_SCHEMA_TPL_OPEN;
    } else {
      out->kind = LK_SCHEMA_TPL_NAME;
      out->s = p + 1;
      out->len = (size_t)(end - p - 1);
      *cursor = end + 1;
    }
  } else {
    out->kind = LK_SCHEMA_TPL_TEXT;
    out->len = strcspn(p, "{}");
    *cursor = p + out->len;
  }
  return out->kind;
}

static int tchar(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c));
}

int lk_schema_http_token(const char *s) {
  if (!nonempty(s)) {
    return 0;
  }
  for (; *s != '\0'; s++) {
    if (!tchar((unsigned char)*s)) {
      return 0;
    }
  }
  return 1;
}

int lk_schema_method_known(const char *method) {
  return one_of(method, methods_known);
}

int lk_schema_method_sends_body(const char *method) {
  return !streq(method, "GET") && !streq(method, "DELETE");
}

int lk_schema_param_type_known(const char *type) {
  return one_of(type, param_types);
}

lk_status lk_schema_check_id(const char *id, const char *what, lk_err *err) {
  if (!nonempty(id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "%s is required; set it", what);
  }
  if (!lk_catalog_valid_id(id)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "%s is not a valid id: use 1-128 characters from A-Z a-z "
                   "0-9 . _ -, starting with a letter or digit",
                   what);
  }
  return LK_OK;
}

/* ---- operations ---- */

/* Param names go into paths, query strings and JSON: 1 to
 * LK_SCHEMA_MAX_PARAM_NAME characters from A-Z a-z 0-9 . _ -, starting
 * with a letter, digit or '_'. */
static int valid_param_name(const char *s) {
  size_t i;
  if (!nonempty(s) || s[0] == '.' || s[0] == '-') {
    return 0;
  }
  for (i = 0; s[i] != '\0'; i++) {
    char ch = s[i];
    if (i >= LK_SCHEMA_MAX_PARAM_NAME ||
        !((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-')) {
      return 0;
    }
  }
  return 1;
}

/* Returns the param named name (length n) in op, or NULL. */
static const Latchkey__V1__Param *find_param(const Latchkey__V1__Operation *op,
                                             const char *name, size_t n) {
  size_t i;
  for (i = 0; i < op->n_params; i++) {
    const char *p = str(op->params[i]->name);
    if (strlen(p) == n && memcmp(p, name, n) == 0) {
      return op->params[i];
    }
  }
  return NULL;
}

/* Counts the occurrences of "{name}" in path. */
static size_t count_placeholder(const char *path, const char *name) {
  size_t n = 0;
  size_t len = strlen(name);
  const char *p = path;
  while ((p = strchr(p, '{')) != NULL) {
    if (strncmp(p + 1, name, len) == 0 && p[1 + len] == '}') {
      n++;
    }
    p++;
  }
  return n;
}

/* Checks the literal bytes of a path template. */
static lk_status check_path_text(const Latchkey__V1__Operation *op,
                                 const lk_schema_tpl_piece *pc, lk_err *err) {
  size_t i;
  for (i = 0; i < pc->len; i++) {
    unsigned char ch = (unsigned char)pc->s[i];
    if (ch == '?' || ch == '#') {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': path must not contain '?' or '#'; "
                     "declare query params with in=query",
                     op->name);
    }
    if (ch <= 0x20 || ch == 0x7f) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': path must not contain spaces or "
                     "control characters; percent-encode them",
                     op->name);
    }
    if (ch > 0x7f) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': path must not contain non-ASCII "
                     "characters; percent-encode them",
                     op->name);
    }
  }
  return LK_OK;
}

/* Checks the path template and that its placeholders are exactly the
 * operation's path params, each used once. Params are checked first, so
 * their names are valid and brace-free. */
static lk_status check_path(const Latchkey__V1__Operation *op, lk_err *err) {
  const char *cur = op->path;
  lk_schema_tpl_piece pc;
  lk_schema_tpl_kind k;
  lk_status st;
  size_t i;

  if (!nonempty(op->path) || op->path[0] != '/') {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': path must start with '/'", op->name);
  }
  if (strlen(op->path) > LK_SCHEMA_MAX_PATH) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': path is longer than %d bytes", op->name,
                   LK_SCHEMA_MAX_PATH);
  }
  while ((k = lk_schema_tpl_next(&cur, 0, &pc)) != LK_SCHEMA_TPL_END) {
    const Latchkey__V1__Param *p;
    if (k == LK_SCHEMA_TPL_TEXT) {
      st = check_path_text(op, &pc, err);
      if (st != LK_OK) {
        return st;
      }
      continue;
    }
    if (k == LK_SCHEMA_TPL_CLOSE) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': path has a '}' without '{'; write "
                     "placeholders as {name}",
                     op->name);
    }
    if (k == LK_SCHEMA_TPL_OPEN || pc.len == 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': path has an unclosed or empty "
                     "placeholder; write placeholders as {name}",
                     op->name);
    }
    p = find_param(op, pc.s, pc.len);
    if (p == NULL || !streq(p->in, "path")) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': path placeholder {%.*s} has no param "
                     "with in=path; declare one",
                     op->name, (int)(pc.len > 128 ? 128 : pc.len), pc.s);
    }
    if (count_placeholder(op->path, p->name) > 1) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': path placeholder {%s} appears more "
                     "than once; use it once",
                     op->name, p->name);
    }
  }
  for (i = 0; i < op->n_params; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    if (streq(p->in, "path") && count_placeholder(op->path, p->name) == 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': param '%s' has in=path but the path "
                     "has no {%s}; add it to the path or change in",
                     op->name, p->name, p->name);
    }
  }
  return LK_OK;
}

static lk_status check_param(const Latchkey__V1__Operation *op, size_t i,
                             lk_err *err) {
  const Latchkey__V1__Param *p = op->params[i];
  size_t j;

  if (!valid_param_name(p->name)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': param %zu has no valid name; use 1-%d "
                   "characters from A-Z a-z 0-9 . _ -",
                   op->name, i + 1, LK_SCHEMA_MAX_PARAM_NAME);
  }
  for (j = 0; j < i; j++) {
    if (streq(op->params[j]->name, p->name)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "operation '%s': param '%s' is declared twice; keep "
                     "one",
                     op->name, p->name);
    }
  }
  if (!one_of(p->in, param_ins)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': param '%s' in must be path, query or "
                   "body",
                   op->name, p->name);
  }
  if (!lk_schema_param_type_known(p->type)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': param '%s' type must be string, "
                   "integer, number, boolean, object or array",
                   op->name, p->name);
  }
  if (streq(p->in, "body") && !lk_schema_method_sends_body(op->method)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': param '%s' is in=body but %s requests "
                   "have no body; use in=query or another method",
                   op->name, p->name, op->method);
  }
  if (streq(p->in, "path") && !p->required) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': path param '%s' must be required; set "
                   "required: true",
                   op->name, p->name);
  }
  if (too_long(p->description, LK_SCHEMA_MAX_DESCRIPTION)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': param '%s' description is longer than "
                   "%d bytes",
                   op->name, p->name, LK_SCHEMA_MAX_DESCRIPTION);
  }
  return LK_OK;
}

lk_status lk_schema_check_operation(const Latchkey__V1__Operation *op,
                                    lk_err *err) {
  lk_status st;
  size_t i;

  if (!lk_schema_method_known(op->method)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': method must be GET, POST, PUT, PATCH or "
                   "DELETE",
                   op->name);
  }
  if (too_long(op->description, LK_SCHEMA_MAX_DESCRIPTION)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s': description is longer than %d bytes",
                   op->name, LK_SCHEMA_MAX_DESCRIPTION);
  }
  if (op->n_params > LK_SCHEMA_MAX_PARAMS) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "operation '%s' has more than %d params", op->name,
                   LK_SCHEMA_MAX_PARAMS);
  }
  for (i = 0; i < op->n_params; i++) {
    st = check_param(op, i, err);
    if (st != LK_OK) {
      return st;
    }
  }
  return check_path(op, err);
}

/* ---- credential types ---- */

static lk_status check_field(const Latchkey__V1__CredentialType *t, size_t i,
                             lk_err *err) {
  const Latchkey__V1__CredentialField *f = t->fields[i];
  regex_t re;
  int rc;
  size_t j;

  if (!lk_catalog_valid_id(f->name)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s': field %zu has no valid name; use "
                   "1-128 characters from A-Z a-z 0-9 . _ -, starting with "
                   "a letter or digit",
                   t->id, i + 1);
  }
  for (j = 0; j < i; j++) {
    if (streq(t->fields[j]->name, f->name)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "credential type '%s': field '%s' is declared twice; "
                     "give fields unique names",
                     t->id, f->name);
    }
  }
  if (f->max_len > LK_SCHEMA_MAX_MAX_LEN) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s': field '%s' max_len is over %d; "
                   "lower it",
                   t->id, f->name, LK_SCHEMA_MAX_MAX_LEN);
  }
  if (too_long(f->description, LK_SCHEMA_MAX_DESCRIPTION)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s': field '%s' description is longer "
                   "than %d bytes",
                   t->id, f->name, LK_SCHEMA_MAX_DESCRIPTION);
  }
  if (!nonempty(f->pattern)) {
    return LK_OK;
  }
  if (strlen(f->pattern) > LK_SCHEMA_MAX_PATTERN) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s': field '%s' pattern is longer "
                   "than %d bytes",
                   t->id, f->name, LK_SCHEMA_MAX_PATTERN);
  }
  rc = regcomp(&re, f->pattern, REG_EXTENDED | REG_NOSUB);
  if (rc != 0) {
    char why[128];
    regerror(rc, &re, why, sizeof(why));
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s': field '%s' pattern does not "
                   "compile (%s); write a POSIX extended regex",
                   t->id, f->name, why);
  }
  regfree(&re);
  return LK_OK;
}

/* Returns the standard oauth2 field named name (len bytes), or NULL. */
static const lk_oauth_field *oauth_std(const char *name, size_t len) {
  size_t n = 0;
  const lk_oauth_field *std = lk_oauth_fields(&n);
  size_t i;
  for (i = 0; i < n; i++) {
    if (strlen(std[i].name) == len && memcmp(std[i].name, name, len) == 0) {
      return &std[i];
    }
  }
  return NULL;
}

/* Returns the field of t named name (len bytes), or NULL. */
static const Latchkey__V1__CredentialField *declared(
    const Latchkey__V1__CredentialType *t, const char *name, size_t len) {
  size_t i;
  for (i = 0; i < t->n_fields; i++) {
    const char *f = str(t->fields[i]->name);
    if (strlen(f) == len && memcmp(f, name, len) == 0) {
      return t->fields[i];
    }
  }
  return NULL;
}

/* A field a template may name: a declared one, or for an oauth2 type a
 * standard one (the canonical form adds it). */
static int has_field(const Latchkey__V1__CredentialType *t, const char *name,
                     size_t len) {
  return declared(t, name, len) != NULL ||
         (lk_oauth_type_is_oauth2(t) && oauth_std(name, len) != NULL);
}

/* The oauth2 fields that go to the token endpoint only: never injected
 * into a vendor request. */
static int oauth_endpoint_only(const char *name, size_t len) {
  return (len == strlen(LK_OAUTH_REFRESH_TOKEN) &&
          memcmp(name, LK_OAUTH_REFRESH_TOKEN, len) == 0) ||
         (len == strlen(LK_OAUTH_CLIENT_SECRET) &&
          memcmp(name, LK_OAUTH_CLIENT_SECRET, len) == 0);
}

/* Checks one template: balanced braces, declared placeholders, and (for
 * headers) no CR or LF. */
static lk_status check_template(const Latchkey__V1__CredentialType *t,
                                size_t rule, const char *member,
                                const char *tmpl, int header, lk_err *err) {
  const char *cur = str(tmpl);
  lk_schema_tpl_piece pc;

  for (;;) {
    switch (lk_schema_tpl_next(&cur, 1, &pc)) {
      case LK_SCHEMA_TPL_END:
        return LK_OK;
      case LK_SCHEMA_TPL_TEXT:
        if (header && (memchr(pc.s, '\r', pc.len) != NULL ||
                       memchr(pc.s, '\n', pc.len) != NULL)) {
          return lk_fail(err, LK_INVALID_ARGUMENT,
                         "credential type '%s' inject[%zu].%s contains CR or "
                         "LF",
                         t->id, rule, member);
        }
        break;
      case LK_SCHEMA_TPL_CLOSE:
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "credential type '%s' inject[%zu].%s has an unmatched "
                       "'}'; write '}}' for a literal brace",
                       t->id, rule, member);
      case LK_SCHEMA_TPL_OPEN:
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "credential type '%s' inject[%zu].%s has an unmatched "
                       "'{'; write '{{' for a literal brace",
                       t->id, rule, member);
      case LK_SCHEMA_TPL_NAME:
        if (!has_field(t, pc.s, pc.len)) {
          return lk_fail(err, LK_INVALID_ARGUMENT,
                         "credential type '%s' inject[%zu].%s: placeholder "
                         "'{%.*s}' names no declared field",
                         t->id, rule, member,
                         (int)(pc.len > ECHO_MAX ? ECHO_MAX : pc.len), pc.s);
        }
        if (lk_oauth_type_is_oauth2(t) && oauth_endpoint_only(pc.s, pc.len)) {
          return lk_fail(err, LK_INVALID_ARGUMENT,
                         "credential type '%s' inject[%zu].%s: oauth2 field "
                         "'{%.*s}' goes only to the token endpoint; inject "
                         "{%s}",
                         t->id, rule, member, (int)pc.len, pc.s,
                         LK_OAUTH_ACCESS_TOKEN);
        }
        break;
    }
  }
}

static int rule_is(const Latchkey__V1__InjectRule *r, const char *in) {
  return streq(r->in, in);
}

/* Returns 1 when an earlier rule of the same kind injects the same name
 * (header names compare without case). */
static int name_repeated(const Latchkey__V1__CredentialType *t, size_t i) {
  const Latchkey__V1__InjectRule *r = t->inject[i];
  int header = rule_is(r, "header");
  size_t j;
  for (j = 0; j < i; j++) {
    const Latchkey__V1__InjectRule *o = t->inject[j];
    if (streq(o->in, r->in) &&
        (header ? strcasecmp(str(o->name), str(r->name))
                : strcmp(str(o->name), str(r->name))) == 0) {
      return 1;
    }
  }
  return 0;
}

static lk_status check_rule(const Latchkey__V1__CredentialType *t, size_t i,
                            lk_err *err) {
  const Latchkey__V1__InjectRule *r = t->inject[i];
  lk_status st;
  int header;
  size_t k;

  if (rule_is(r, "basic")) {
    if (!nonempty(r->username)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "credential type '%s' inject[%zu]: a basic rule needs a "
                     "\"username\" template",
                     t->id, i);
    }
    st = check_template(t, i, "username", r->username, 0, err);
    if (st == LK_OK) {
      st = check_template(t, i, "password", r->password, 0, err);
    }
    return st;
  }
  header = rule_is(r, "header");
  if (!header && !rule_is(r, "query") && !rule_is(r, "body")) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' inject[%zu]: \"in\" must be header, "
                   "query, basic or body",
                   t->id, i);
  }
  if (!nonempty(r->name)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' inject[%zu]: a %s rule needs a "
                   "\"name\"",
                   t->id, i, r->in);
  }
  if (header && !lk_schema_http_token(r->name)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' inject[%zu]: header name is not an "
                   "HTTP token (letters, digits and !#$%%&'*+-.^_`|~ only)",
                   t->id, i);
  }
  for (k = 0; header && reserved_headers[k] != NULL; k++) {
    if (strcasecmp(r->name, reserved_headers[k]) == 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "credential type '%s' inject[%zu]: header '%s' is set "
                     "by the sidecar and cannot be injected",
                     t->id, i, reserved_headers[k]);
    }
  }
  if (name_repeated(t, i)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' inject[%zu]: %s '%s' is injected "
                   "twice",
                   t->id, i, r->in, r->name);
  }
  if (!nonempty(r->value)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' inject[%zu]: \"value\" template is "
                   "empty",
                   t->id, i);
  }
  return check_template(t, i, "value", r->value, header, err);
}

/* Checks the rules one by one, then the rules that span several. */
static lk_status check_rules(const Latchkey__V1__CredentialType *t,
                             lk_err *err) {
  size_t n_basic = 0;
  int auth_header = 0;
  lk_status st;
  size_t i;

  for (i = 0; i < t->n_inject; i++) {
    const Latchkey__V1__InjectRule *r = t->inject[i];
    st = check_rule(t, i, err);
    if (st != LK_OK) {
      return st;
    }
    n_basic += rule_is(r, "basic");
    auth_header |=
        rule_is(r, "header") && strcasecmp(str(r->name), "Authorization") == 0;
  }
  if (n_basic > 1) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' has %zu basic rules; at most one",
                   t->id, n_basic);
  }
  if (n_basic > 0 && auth_header) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' has both a basic rule and an "
                   "Authorization header rule; keep one",
                   t->id);
  }
  return LK_OK;
}

/* Counts the standard oauth2 fields t does not declare (the canonical
 * form adds them). */
static size_t oauth_missing(const Latchkey__V1__CredentialType *t) {
  size_t n = 0;
  const lk_oauth_field *std = lk_oauth_fields(&n);
  size_t missing = 0;
  size_t i;
  for (i = 0; i < n; i++) {
    missing += declared(t, std[i].name, strlen(std[i].name)) == NULL;
  }
  return missing;
}

/* Checks that each standard oauth2 field t declares has the table's
 * secret flag: a token declared plain would be shown and logged. */
static lk_status check_oauth_fields(const Latchkey__V1__CredentialType *t,
                                    lk_err *err) {
  size_t n = 0;
  const lk_oauth_field *std = lk_oauth_fields(&n);
  size_t i;
  for (i = 0; i < n; i++) {
    const Latchkey__V1__CredentialField *f =
        declared(t, std[i].name, strlen(std[i].name));
    if (f != NULL && (f->secret != 0) != (std[i].secret != 0)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "credential type '%s': oauth2 field '%s' must have "
                     "\"secret\": %s; fix it or leave the field out (it is "
                     "added)",
                     t->id, std[i].name, std[i].secret ? "true" : "false");
    }
  }
  return LK_OK;
}

lk_status lk_schema_check_type(const Latchkey__V1__CredentialType *t,
                               lk_err *err) {
  lk_status st = lk_schema_check_id(t->id, "credential_type.id", err);
  int oauth2 = lk_oauth_type_is_oauth2(t);
  size_t total;
  size_t i;

  if (st != LK_OK) {
    return st;
  }
  if (too_long(t->description, LK_SCHEMA_MAX_DESCRIPTION)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' description is longer than %d bytes",
                   t->id, LK_SCHEMA_MAX_DESCRIPTION);
  }
  if (nonempty(t->kind) && !oauth2) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s': kind must be \"\" (fields the "
                   "owner provides) or \"%s\"",
                   t->id, LK_OAUTH_KIND);
  }
  if (t->n_fields == 0 && !oauth2) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' has no fields; declare at least one",
                   t->id);
  }
  total = t->n_fields;
  if (oauth2 && total <= LK_SCHEMA_MAX_FIELDS) {
    total += oauth_missing(t);
  }
  if (total > LK_SCHEMA_MAX_FIELDS) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "credential type '%s' has more than %d fields%s", t->id,
                   LK_SCHEMA_MAX_FIELDS,
                   oauth2 ? " (the oauth2 standard fields included)" : "");
  }
  for (i = 0; i < t->n_fields; i++) {
    st = check_field(t, i, err);
    if (st != LK_OK) {
      return st;
    }
  }
  if (oauth2) {
    st = check_oauth_fields(t, err);
    if (st != LK_OK) {
      return st;
    }
  }
  return check_rules(t, err);
}

void lk_schema_normalize_type(Latchkey__V1__CredentialType *t) {
  size_t i;
  for (i = 0; i < t->n_fields; i++) {
    if (t->fields[i]->max_len == 0) {
      t->fields[i]->max_len = LK_SCHEMA_DEFAULT_MAX_LEN;
    }
  }
}

lk_status lk_schema_canonical_type(const Latchkey__V1__CredentialType *t,
                                   ProtobufCAllocator *alloc,
                                   Latchkey__V1__CredentialType **out,
                                   lk_err *err) {
  /* A view that borrows t's fields and adds the missing standard ones;
   * packing it and unpacking the bytes gives one message that alloc owns
   * whole, so the caller frees it with one call. */
  Latchkey__V1__CredentialType view = *t;
  Latchkey__V1__CredentialField added[LK_SCHEMA_MAX_FIELDS];
  Latchkey__V1__CredentialField *fields[LK_SCHEMA_MAX_FIELDS];
  Latchkey__V1__InjectRule bearer = LATCHKEY__V1__INJECT_RULE__INIT;
  Latchkey__V1__InjectRule *bearer_rules[1] = {&bearer};
  unsigned char *buf = NULL;
  size_t len;
  size_t k = 0;
  size_t i;
  lk_status st = LK_OK;

  *out = NULL;
  if (lk_oauth_type_is_oauth2(t)) {
    size_t n = 0;
    const lk_oauth_field *std = lk_oauth_fields(&n);
    if (t->n_fields + oauth_missing(t) > LK_SCHEMA_MAX_FIELDS) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "credential type '%s' has more than %d fields (the "
                     "oauth2 standard fields included)",
                     t->id, LK_SCHEMA_MAX_FIELDS);
    }
    for (i = 0; i < n; i++) {
      const Latchkey__V1__CredentialField *f =
          declared(t, std[i].name, strlen(std[i].name));
      if (f == NULL) {
        latchkey__v1__credential_field__init(&added[k]);
        added[k].name = (char *)std[i].name;
        added[k].secret = std[i].secret;
        added[k].description = (char *)std[i].description;
        f = &added[k];
      }
      fields[k++] = (Latchkey__V1__CredentialField *)f;
    }
    for (i = 0; i < t->n_fields; i++) {
      const char *name = str(t->fields[i]->name);
      if (oauth_std(name, strlen(name)) == NULL) {
        fields[k++] = t->fields[i];
      }
    }
    view.fields = fields;
    view.n_fields = k;
    if (t->n_inject == 0) {
      bearer.in = (char *)"header";
      bearer.name = (char *)"Authorization";
      bearer.value = (char *)"Bearer {" LK_OAUTH_ACCESS_TOKEN "}";
      view.inject = bearer_rules;
      view.n_inject = 1;
    }
  }
  len = protobuf_c_message_get_packed_size(&view.base);
  buf = malloc(len > 0 ? len : 1);
  if (buf == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory building the canonical credential type");
  }
  protobuf_c_message_pack(&view.base, buf);
  *out = latchkey__v1__credential_type__unpack(alloc, len, buf);
  if (*out == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                 "out of memory building the canonical credential type");
  } else {
    lk_schema_normalize_type(*out);
  }
  free(buf);
  return st;
}

/* ---- tools ---- */

static lk_status bad_port(lk_err *err) {
  return lk_fail(err, LK_INVALID_ARGUMENT,
                 "tool.base_url port must be a number 1-65535 after ':'");
}

/* Checks the host of a base_url (rest, len bytes after the scheme, one
 * trailing '/' already left out) and sets *host_end past it. */
static lk_status check_host(const char *rest, size_t len, size_t *host_end,
                            lk_err *err) {
  size_t i;

  if (rest[0] == '[') {
    for (i = 1; i < len && rest[i] != ']'; i++) {
      char ch = rest[i];
      if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
            (ch >= 'A' && ch <= 'F') || ch == ':' || ch == '.')) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "tool.base_url has an invalid IPv6 host; write it "
                       "as [address]");
      }
    }
    if (i >= len || i == 1) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "tool.base_url has an invalid IPv6 host; write it as "
                     "[address]");
    }
    i++;
  } else {
    for (i = 0; i < len && rest[i] != ':'; i++) {
      char ch = rest[i];
      if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
            (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '.')) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "tool.base_url host may contain only letters, "
                       "digits, '-' and '.'");
      }
    }
    if (i == 0) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "tool.base_url has no host; use scheme://host[:port]");
    }
  }
  if (i > MAX_HOST + 2) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool.base_url host is longer than %d characters", MAX_HOST);
  }
  *host_end = i;
  return LK_OK;
}

/* Checks base_url is scheme://host[:port] with at most one trailing '/'.
 * Never echoes the URL: user info may hold a password. */
static lk_status check_base_url(const char *url, lk_err *err) {
  const char *rest;
  unsigned long port = 0;
  size_t host_end = 0;
  size_t len;
  size_t i;
  lk_status st;

  if (!nonempty(url)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool.base_url is required: set it to "
                   "https://host[:port] of the vendor's API");
  }
  if (strncmp(url, "https://", 8) == 0) {
    rest = url + 8;
  } else if (strncmp(url, "http://", 7) == 0) {
    rest = url + 7;
  } else {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool.base_url must start with https:// or http://");
  }
  len = strlen(rest);
  if (len > 0 && rest[len - 1] == '/') {
    len--;
  }
  if (memchr(rest, '@', len) != NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool.base_url must not contain user info "
                   "(user:password@); put secrets in a credential type");
  }
  for (i = 0; i < len; i++) {
    if (rest[i] == '?' || rest[i] == '#') {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "tool.base_url must not contain a query or fragment; "
                     "use operation params instead");
    }
    if (rest[i] == '/') {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "tool.base_url must not contain a path; give only "
                     "scheme://host[:port] and put the path in each "
                     "operation's path");
    }
  }
  if (len == 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool.base_url has no host; use scheme://host[:port]");
  }
  st = check_host(rest, len, &host_end, err);
  if (st != LK_OK || host_end == len) {
    return st;
  }
  if (rest[host_end] != ':' || len - host_end - 1 == 0 ||
      len - host_end - 1 > 5) {
    return bad_port(err);
  }
  for (i = host_end + 1; i < len; i++) {
    if (rest[i] < '0' || rest[i] > '9') {
      return bad_port(err);
    }
    port = port * 10 + (unsigned long)(rest[i] - '0');
  }
  if (port == 0 || port > 65535) {
    return bad_port(err);
  }
  return LK_OK;
}

/* Checks the operations' names and each operation. */
static lk_status check_operations(const Latchkey__V1__Tool *t, lk_err *err) {
  lk_status st;
  size_t i;
  size_t j;

  if (t->n_operations == 0) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool '%s' has no operations; declare at least one", t->id);
  }
  if (t->n_operations > LK_SCHEMA_MAX_OPERATIONS) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool '%s' has more than %d operations; split it", t->id,
                   LK_SCHEMA_MAX_OPERATIONS);
  }
  for (i = 0; i < t->n_operations; i++) {
    const Latchkey__V1__Operation *op = t->operations[i];
    if (!lk_catalog_valid_id(op->name)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "tool '%s': operation %zu has no valid name; use 1-128 "
                     "characters from A-Z a-z 0-9 . _ -, starting with a "
                     "letter or digit",
                     t->id, i + 1);
    }
    for (j = 0; j < i; j++) {
      if (streq(t->operations[j]->name, op->name)) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "tool '%s': operation '%s' is declared twice; give "
                       "operations unique names",
                       t->id, op->name);
      }
    }
    st = lk_schema_check_operation(op, err);
    if (st != LK_OK) {
      return st;
    }
  }
  return LK_OK;
}

lk_status lk_schema_check_tool(const Latchkey__V1__Tool *t,
                               const Latchkey__V1__CredentialType *type,
                               lk_err *err) {
  lk_status st = lk_schema_check_id(t->id, "tool.id", err);

  if (st != LK_OK) {
    return st;
  }
  if (!nonempty(t->description)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool '%s' needs a description: agents choose tools by it",
                   t->id);
  }
  if (too_long(t->description, LK_SCHEMA_MAX_DESCRIPTION)) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool '%s' description is longer than %d bytes", t->id,
                   LK_SCHEMA_MAX_DESCRIPTION);
  }
  st = check_base_url(t->base_url, err);
  if (st != LK_OK) {
    return st;
  }
  if (t->timeout_ms > LK_SCHEMA_MAX_TIMEOUT_MS) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "tool '%s' timeout_ms is over %d; lower it (0 means the "
                   "30 s default)",
                   t->id, LK_SCHEMA_MAX_TIMEOUT_MS);
  }
  if (nonempty(t->credential_type)) {
    st = lk_schema_check_id(t->credential_type, "tool.credential_type", err);
  }
  if (st == LK_OK) {
    st = check_operations(t, err);
  }
  if (st != LK_OK || type == NULL) {
    return st;
  }
  st = lk_schema_check_type(type, err);
  if (st == LK_OK && !streq(t->credential_type, type->id)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "tool '%s' comes with credential type '%s' inline, so "
                 "tool.credential_type must be '%s'; set it",
                 t->id, type->id, type->id);
  }
  return st;
}

void lk_schema_normalize_tool(Latchkey__V1__Tool *t) {
  size_t len = t->base_url != NULL ? strlen(t->base_url) : 0;
  if (len > 0 && t->base_url[len - 1] == '/') {
    t->base_url[len - 1] = '\0';
  }
}
