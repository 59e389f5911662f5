/*
 * inject.c - vendor request building and credential injection (inject.h).
 *
 * Every output is written through an "emitter": a small staging chunk in
 * front of an lk_secret_buf with the output's hard cap. Encoding (percent-
 * encoding for path and query, JSON string escaping for the body) happens
 * byte by byte on the way into the chunk, so a secret is never copied into
 * ordinary memory to be encoded; the chunk is wiped on every flush. The only
 * malloc'd text is jansson's rendering of an agent argument (which holds no
 * credential), and it is wiped before free all the same.
 *
 * The JSON body is assembled here rather than by jansson so the injected
 * values never enter jansson's heap strings: agent params are rendered by
 * jansson one value at a time, injected fields are escaped straight into
 * guarded memory.
 *
 * Agent values in a path follow the rule in inject.h: encoded byte by
 * byte into one segment, refused when empty or when a dot segment shows
 * up in them as they are or after any of up to 16 percent-decodings.
 * Query names and values pass '.' too (RFC 3986 unreserved). JSON null
 * arguments count as absent.
 */
#include "sidecar/inject.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/schema.h"

typedef enum { ENC_RAW, ENC_PATH, ENC_QUERY, ENC_JSON } enc_mode;

/* Staging chunk in front of a capped guarded buffer. */
typedef struct {
  lk_secret_buf *buf;
  const char *what; /* names the output in cap messages */
  const char *hint; /* what to do when the cap is hit */
  size_t cap;
  size_t n;
  unsigned char chunk[256];
} emitter;

static const char hex_upper[] = "0123456789ABCDEF";

#define ARGS_HINT "send shorter arguments"
#define CRED_HINT "shorten the credential's values"

static lk_status em_open(emitter *e, size_t cap, const char *what,
                         const char *hint, lk_err *err) {
  e->what = what;
  e->hint = hint;
  e->cap = cap;
  e->n = 0;
  e->buf = lk_secret_buf_new(cap);
  if (e->buf == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of guarded memory building the %s", what);
  }
  return LK_OK;
}

/* Moves the chunk into the buffer and wipes it. */
static lk_status em_flush(emitter *e, lk_err *err) {
  if (e->n == 0) {
    return LK_OK;
  }
  lk_status st = lk_secret_buf_append(e->buf, e->chunk, e->n, err);
  lk_wipe(e->chunk, e->n);
  e->n = 0;
  if (st != LK_OK) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "the vendor %s would exceed %zu bytes; %s", e->what, e->cap,
                   e->hint);
  }
  return LK_OK;
}

static lk_status em_byte(emitter *e, unsigned char c, lk_err *err) {
  if (e->n == sizeof(e->chunk)) {
    lk_status st = em_flush(e, err);
    if (st != LK_OK) {
      return st;
    }
  }
  e->chunk[e->n++] = c;
  return LK_OK;
}

static lk_status em_escape(emitter *e, unsigned char c, lk_err *err) {
  lk_status st = em_byte(e, '%', err);
  if (st == LK_OK) {
    st = em_byte(e, (unsigned char)hex_upper[c >> 4], err);
  }
  if (st == LK_OK) {
    st = em_byte(e, (unsigned char)hex_upper[c & 15], err);
  }
  return st;
}

static lk_status em_json_byte(emitter *e, unsigned char c, lk_err *err) {
  const char *esc = NULL;
  char ubuf[8];
  switch (c) {
    case '"':
      esc = "\\\"";
      break;
    case '\\':
      esc = "\\\\";
      break;
    case '\b':
      esc = "\\b";
      break;
    case '\f':
      esc = "\\f";
      break;
    case '\n':
      esc = "\\n";
      break;
    case '\r':
      esc = "\\r";
      break;
    case '\t':
      esc = "\\t";
      break;
    default:
      if (c >= 0x20) {
        return em_byte(e, c, err);
      }
      snprintf(ubuf, sizeof(ubuf), "\\u%04x", (unsigned)c);
      esc = ubuf;
      break;
  }
  lk_status st = LK_OK;
  for (const char *p = esc; *p != '\0' && st == LK_OK; p++) {
    st = em_byte(e, (unsigned char)*p, err);
  }
  lk_wipe(ubuf, sizeof(ubuf));
  return st;
}

static int unreserved(unsigned char c, int dot) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '~' ||
         (dot && c == '.');
}

/* Appends the n bytes at p encoded for mode. */
static lk_status em_put(emitter *e, enc_mode mode, const void *p, size_t n,
                        lk_err *err) {
  const unsigned char *s = p;
  lk_status st = LK_OK;
  if (mode == ENC_RAW && n > sizeof(e->chunk)) {
    st = em_flush(e, err);
    if (st == LK_OK && lk_secret_buf_append(e->buf, s, n, err) != LK_OK) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "the vendor %s would exceed %zu bytes; %s", e->what, e->cap,
                   e->hint);
    }
    return st;
  }
  for (size_t i = 0; i < n && st == LK_OK; i++) {
    switch (mode) {
      case ENC_RAW:
        st = em_byte(e, s[i], err);
        break;
      case ENC_PATH:
      case ENC_QUERY:
        st = unreserved(s[i], mode == ENC_QUERY) ? em_byte(e, s[i], err)
                                                 : em_escape(e, s[i], err);
        break;
      case ENC_JSON:
        st = em_json_byte(e, s[i], err);
        break;
    }
  }
  return st;
}

static lk_status em_str(emitter *e, enc_mode mode, const char *s, lk_err *err) {
  return em_put(e, mode, s, strlen(s), err);
}

/* Turns the emitter's content into *out; the emitter is spent either way. */
static lk_status em_finish(emitter *e, lk_secret **out, lk_err *err) {
  lk_status st = em_flush(e, err);
  if (st != LK_OK) {
    return st;
  }
  *out = lk_secret_buf_finish(e->buf);
  e->buf = NULL;
  if (*out == NULL) {
    return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of guarded memory building the %s", e->what);
  }
  return LK_OK;
}

/* Wipes whatever the emitter still holds; safe after em_finish. */
static void em_discard(emitter *e) {
  lk_secret_buf_free(e->buf);
  e->buf = NULL;
  lk_wipe(e->chunk, sizeof(e->chunk));
  e->n = 0;
}

static const lk_field *find_field(const lk_field *fields, size_t n_fields,
                                  const char *name, size_t len) {
  for (size_t i = 0; i < n_fields; i++) {
    if (fields[i].name != NULL && fields[i].value != NULL &&
        strlen(fields[i].name) == len &&
        memcmp(fields[i].name, name, len) == 0) {
      return &fields[i];
    }
  }
  return NULL;
}

/* Appends template tmpl with every {field} replaced by its value, the whole
 * encoded for mode; rule is the rule's index for messages. The template is
 * read with lk_schema_tpl_next, the scanner registration checked it with. */
static lk_status render(emitter *e, enc_mode mode, const char *tmpl,
                        const Latchkey__V1__CredentialType *type, size_t rule,
                        const lk_field *fields, size_t n_fields, lk_err *err) {
  const char *cur = tmpl;
  lk_schema_tpl_piece pc;
  const lk_field *f;
  lk_status st = LK_OK;
  while (st == LK_OK) {
    switch (lk_schema_tpl_next(&cur, 1, &pc)) {
      case LK_SCHEMA_TPL_END:
        return LK_OK;
      case LK_SCHEMA_TPL_TEXT:
        st = em_put(e, mode, pc.s, pc.len, err);
        break;
      case LK_SCHEMA_TPL_OPEN:
        return lk_fail(err, LK_FAILED_PRECONDITION,
                       "credential type '%s' inject[%zu] has an unmatched "
                       "'{'; the owner must fix and re-register the type",
                       type->id, rule);
      case LK_SCHEMA_TPL_CLOSE:
        return lk_fail(err, LK_FAILED_PRECONDITION,
                       "credential type '%s' inject[%zu] has an unmatched '}'; "
                       "the owner must fix and re-register the type",
                       type->id, rule);
      case LK_SCHEMA_TPL_NAME:
        f = find_field(fields, n_fields, pc.s, pc.len);
        if (f == NULL) {
          return lk_fail(err, LK_FAILED_PRECONDITION,
                         "the credential has no value for field '%.*s' used "
                         "by credential type '%s' inject[%zu]; update the "
                         "credential",
                         (int)(pc.len > 64 ? 64 : pc.len), pc.s, type->id,
                         rule);
        }
        st = em_put(e, mode, lk_secret_data(f->value), lk_secret_len(f->value),
                    err);
        break;
    }
  }
  return st;
}

/* Formats a real as the shortest %g text that reads back as the same
 * double. */
static void format_real(double d, char *buf, size_t size) {
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, size, "%.*g", prec, d);
    if (strtod(buf, NULL) == d) {
      return;
    }
  }
}

/* An argument's text form: strings raw, numbers and booleans as JSON
 * scalars, objects and arrays as compact JSON (in owned, which the caller
 * releases with arg_text_free). */
typedef struct {
  const char *s;
  size_t n;
  char *owned;
  char num[64];
} arg_text;

static lk_status arg_text_of(const json_t *v, arg_text *t, lk_err *err) {
  t->owned = NULL;
  t->s = t->num;
  switch (json_typeof(v)) {
    case JSON_STRING:
      t->s = json_string_value(v);
      t->n = json_string_length(v);
      return LK_OK;
    case JSON_INTEGER:
      snprintf(t->num, sizeof(t->num), "%" JSON_INTEGER_FORMAT,
               json_integer_value(v));
      break;
    case JSON_REAL:
      format_real(json_real_value(v), t->num, sizeof(t->num));
      break;
    case JSON_TRUE:
      snprintf(t->num, sizeof(t->num), "true");
      break;
    case JSON_FALSE:
      snprintf(t->num, sizeof(t->num), "false");
      break;
    case JSON_NULL:
      snprintf(t->num, sizeof(t->num), "null");
      break;
    case JSON_OBJECT:
    case JSON_ARRAY:
      t->owned = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
      if (t->owned == NULL) {
        return lk_fail(err, LK_RESOURCE_EXHAUSTED,
                       "out of memory rendering an argument");
      }
      t->s = t->owned;
      t->n = strlen(t->owned);
      return LK_OK;
  }
  t->n = strlen(t->num);
  return LK_OK;
}

/* Wipes and frees text of n bytes that json_dumps made: with jansson's own
 * free, which latchkeyd replaces with a wiping one (lib/oauth_token). */
static void json_text_free(char *text, size_t n) {
  json_free_t jfree = free;
  json_get_alloc_funcs(NULL, &jfree);
  lk_wipe(text, n);
  jfree(text);
}

static void arg_text_free(arg_text *t) {
  if (t->owned != NULL) {
    json_text_free(t->owned, t->n);
    t->owned = NULL;
  }
}

/* Appends an argument's text form encoded for mode. */
static lk_status put_arg(emitter *e, enc_mode mode, const json_t *v,
                         lk_err *err) {
  arg_text t;
  lk_status st = arg_text_of(v, &t, err);
  if (st == LK_OK) {
    st = em_put(e, mode, t.s, t.n, err);
  }
  arg_text_free(&t);
  return st;
}

/* Returns the argument for p, or NULL when absent or JSON null. */
static const json_t *arg_of(const json_t *args, const char *name) {
  if (args == NULL) {
    return NULL;
  }
  const json_t *v = json_object_get(args, name);
  return (v == NULL || json_is_null(v)) ? NULL : v;
}

static int rule_is(const Latchkey__V1__InjectRule *r, const char *in) {
  return strcmp(r->in, in) == 0;
}

/* Refuses an agent argument that names an injected query or body field. */
static lk_status check_overrides(const Latchkey__V1__Operation *op,
                                 const Latchkey__V1__CredentialType *type,
                                 const json_t *args, lk_err *err) {
  if (type == NULL) {
    return LK_OK;
  }
  for (size_t i = 0; i < op->n_params; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    if (arg_of(args, p->name) == NULL) {
      continue;
    }
    for (size_t j = 0; j < type->n_inject; j++) {
      const Latchkey__V1__InjectRule *r = type->inject[j];
      if ((rule_is(r, "query") || rule_is(r, "body")) &&
          strcmp(r->in, p->in) == 0 && strcmp(r->name, p->name) == 0) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "parameter '%s' is supplied by the credential and "
                       "cannot be set by the caller; leave it out",
                       p->name);
      }
    }
  }
  return LK_OK;
}

static int printable_url_char(unsigned char c) {
  return c > 0x20 && c < 0x7f && c != '#';
}

/* Appends base_url (without trailing '/'), checking it is an http(s) URL
 * without query or fragment. */
static lk_status put_base_url(emitter *e, const Latchkey__V1__Tool *tool,
                              lk_err *err) {
  const char *b = tool->base_url;
  size_t n = strlen(b);
  if (strncasecmp(b, "https://", 8) != 0 && strncasecmp(b, "http://", 7) != 0) {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "tool '%s' base_url must start with https:// or http://; "
                   "the owner must fix and re-register the tool",
                   tool->id);
  }
  for (size_t i = 0; i < n; i++) {
    if (!printable_url_char((unsigned char)b[i]) || b[i] == '?') {
      return lk_fail(err, LK_FAILED_PRECONDITION,
                     "tool '%s' base_url has a space, control, '?' or '#' "
                     "character; the owner must fix and re-register the tool",
                     tool->id);
    }
  }
  while (n > 0 && b[n - 1] == '/') {
    n--;
  }
  return em_put(e, ENC_RAW, b, n, err);
}

static const Latchkey__V1__Param *path_param(const Latchkey__V1__Operation *op,
                                             const char *name, size_t len) {
  for (size_t i = 0; i < op->n_params; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    if (strlen(p->name) == len && memcmp(p->name, name, len) == 0 &&
        strcmp(p->in, "path") == 0) {
      return p;
    }
  }
  return NULL;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

/* Percent-decodes the n bytes at p in place (a '%' not followed by two hex
 * digits stays as it is); returns the new length. */
static size_t percent_decode(unsigned char *p, size_t n) {
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    int hi = i + 2 < n ? hexval(p[i + 1]) : -1;
    int lo = i + 2 < n ? hexval(p[i + 2]) : -1;
    if (p[i] == '%' && hi >= 0 && lo >= 0) {
      p[out++] = (unsigned char)(hi * 16 + lo);
      i += 2;
    } else {
      p[out++] = p[i];
    }
  }
  return out;
}

/* Returns 1 when a piece of the n bytes at p (split at '/' and at
 * backslash, each cut at its first ';' or NUL) is exactly "." or "..". */
static int has_dot_piece(const unsigned char *p, size_t n) {
  size_t start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i < n && p[i] != '/' && p[i] != '\\') {
      continue;
    }
    size_t len = 0;
    while (start + len < i && p[start + len] != ';' && p[start + len] != 0) {
      len++;
    }
    if ((len == 1 && p[start] == '.') ||
        (len == 2 && p[start] == '.' && p[start + 1] == '.')) {
      return 1;
    }
    start = i + 1;
  }
  return 0;
}

/* Why a path value is refused: DOT_OK (it is not), DOT_SEGMENT, DOT_DEEP. */
enum { DOT_OK, DOT_SEGMENT, DOT_DEEP };

/* Checks the value as it is and after each of up to
 * LK_INJECT_PATH_DECODE_ROUNDS percent-decodings, so a vendor (or a proxy
 * in front of it) that decodes %2F, or decodes twice, still sees no dot
 * segment. */
static int dot_check(const char *s, size_t n, lk_err *err, lk_status *st) {
  unsigned char *buf = malloc(n > 0 ? n : 1);
  int verdict = DOT_DEEP;
  if (buf == NULL) {
    *st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                  "out of memory checking a path parameter");
    return DOT_OK;
  }
  memcpy(buf, s, n);
  size_t len = n;
  for (int round = 0; round <= LK_INJECT_PATH_DECODE_ROUNDS; round++) {
    if (has_dot_piece(buf, len)) {
      verdict = DOT_SEGMENT;
      break;
    }
    size_t next = percent_decode(buf, len);
    if (next == len) {
      verdict = DOT_OK;
      break;
    }
    len = next;
  }
  lk_wipe_free(buf, n);
  return verdict;
}

/* Appends one path parameter value as a single percent-encoded segment,
 * after the checks inject.h lists. */
static lk_status put_path_value(emitter *e, const Latchkey__V1__Param *p,
                                const json_t *v, lk_err *err) {
  arg_text t;
  lk_status st = LK_OK;
  if (v == NULL) {
    return lk_fail(err, LK_INVALID_ARGUMENT,
                   "missing required path parameter '%s'", p->name);
  }
  st = arg_text_of(v, &t, err);
  if (st != LK_OK) {
    return st;
  }
  if (t.n == 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "path parameter '%s' must not be empty", p->name);
    goto done;
  }
  switch (dot_check(t.s, t.n, err, &st)) {
    case DOT_SEGMENT:
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "path parameter '%s' must not be \".\" or \"..\" or "
                   "hold such a segment between '/' or '\\', even "
                   "percent-encoded; send a name, not a path",
                   p->name);
      goto done;
    case DOT_DEEP:
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "path parameter '%s' is percent-encoded more than %d "
                   "levels deep; send it decoded",
                   p->name, LK_INJECT_PATH_DECODE_ROUNDS);
      goto done;
    default:
      break;
  }
  if (st == LK_OK) {
    st = em_put(e, ENC_PATH, t.s, t.n, err);
  }

done:
  arg_text_free(&t);
  return st;
}

/* Appends op's path with every {param} expanded. */
static lk_status put_path(emitter *e, const Latchkey__V1__Tool *tool,
                          const Latchkey__V1__Operation *op, const json_t *args,
                          lk_err *err) {
  const char *cur = op->path;
  lk_schema_tpl_piece pc;
  const Latchkey__V1__Param *param;
  lk_status st = LK_OK;
  if (cur[0] != '/') {
    return lk_fail(err, LK_FAILED_PRECONDITION,
                   "tool '%s' operation '%s' path must start with '/'; the "
                   "owner must fix and re-register the tool",
                   tool->id, op->name);
  }
  while (st == LK_OK) {
    switch (lk_schema_tpl_next(&cur, 0, &pc)) {
      case LK_SCHEMA_TPL_END:
        return LK_OK;
      case LK_SCHEMA_TPL_NAME:
      case LK_SCHEMA_TPL_OPEN:
        param =
            pc.kind == LK_SCHEMA_TPL_NAME ? path_param(op, pc.s, pc.len) : NULL;
        if (param == NULL) {
          return lk_fail(err, LK_FAILED_PRECONDITION,
                         "tool '%s' operation '%s' path has a placeholder "
                         "that names no path parameter; the owner must fix "
                         "and re-register the tool",
                         tool->id, op->name);
        }
        st = put_path_value(e, param, arg_of(args, param->name), err);
        break;
      case LK_SCHEMA_TPL_CLOSE:
      case LK_SCHEMA_TPL_TEXT:
        for (size_t i = 0; i < pc.len; i++) {
          if (pc.s[i] == '}' || !printable_url_char((unsigned char)pc.s[i])) {
            return lk_fail(err, LK_FAILED_PRECONDITION,
                           "tool '%s' operation '%s' path has a stray '}', "
                           "space, control or '#' character; the owner must "
                           "fix and re-register the tool",
                           tool->id, op->name);
          }
        }
        st = em_put(e, ENC_RAW, pc.s, pc.len, err);
        break;
    }
  }
  return st;
}

/* Builds r->url: base_url, path, agent query params, injected query. */
static lk_status build_url(lk_http_request *r, const Latchkey__V1__Tool *tool,
                           const Latchkey__V1__Operation *op,
                           const Latchkey__V1__CredentialType *type,
                           const lk_field *fields, size_t n_fields,
                           const json_t *args, lk_err *err) {
  emitter e;
  int has_query = strchr(op->path, '?') != NULL;
  lk_status st = em_open(&e, LK_INJECT_URL_MAX, "URL", ARGS_HINT, err);
  if (st != LK_OK) {
    goto done;
  }
  st = put_base_url(&e, tool, err);
  if (st == LK_OK) {
    st = put_path(&e, tool, op, args, err);
  }
  for (size_t i = 0; i < op->n_params && st == LK_OK; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    const json_t *v = arg_of(args, p->name);
    if (v == NULL || strcmp(p->in, "query") != 0) {
      continue;
    }
    st = em_str(&e, ENC_RAW, has_query ? "&" : "?", err);
    has_query = 1;
    if (st == LK_OK) {
      st = em_str(&e, ENC_QUERY, p->name, err);
    }
    if (st == LK_OK) {
      st = em_str(&e, ENC_RAW, "=", err);
    }
    if (st == LK_OK) {
      st = put_arg(&e, ENC_QUERY, v, err);
    }
  }
  for (size_t i = 0; type != NULL && i < type->n_inject && st == LK_OK; i++) {
    const Latchkey__V1__InjectRule *rule = type->inject[i];
    if (!rule_is(rule, "query")) {
      continue;
    }
    st = em_str(&e, ENC_RAW, has_query ? "&" : "?", err);
    has_query = 1;
    r->url_has_credential = 1;
    if (st == LK_OK) {
      st = em_str(&e, ENC_QUERY, rule->name, err);
    }
    if (st == LK_OK) {
      st = em_str(&e, ENC_RAW, "=", err);
    }
    if (st == LK_OK) {
      st = render(&e, ENC_QUERY, rule->value, type, i, fields, n_fields, err);
    }
  }
  if (st == LK_OK) {
    st = em_finish(&e, &r->url, err);
  }

done:
  em_discard(&e);
  return st;
}

static int has_crlfnul(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0') {
      return 1;
    }
  }
  return 0;
}

/* Appends "name: rendered value" for header rule i to r->headers. */
static lk_status build_header(lk_http_request *r,
                              const Latchkey__V1__CredentialType *type,
                              size_t i, const lk_field *fields, size_t n_fields,
                              lk_err *err) {
  const Latchkey__V1__InjectRule *rule = type->inject[i];
  lk_secret *line = NULL;
  emitter e;
  lk_status st = em_open(&e, LK_INJECT_HEADER_MAX, "header", CRED_HINT, err);
  if (st != LK_OK) {
    goto done;
  }
  if (!lk_schema_http_token(rule->name)) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential type '%s' inject[%zu] header name is not a valid "
                 "HTTP token; the owner must fix and re-register the type",
                 type->id, i);
    goto done;
  }
  st = em_str(&e, ENC_RAW, rule->name, err);
  if (st == LK_OK) {
    st = em_str(&e, ENC_RAW, ": ", err);
  }
  if (st == LK_OK) {
    st = render(&e, ENC_RAW, rule->value, type, i, fields, n_fields, err);
  }
  if (st == LK_OK) {
    st = em_finish(&e, &line, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  if (has_crlfnul(lk_secret_data(line), lk_secret_len(line))) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "the value for header '%s' (credential type '%s' inject[%zu]) "
                 "contains CR, LF or NUL; update the credential's values",
                 rule->name, type->id, i);
    goto done;
  }
  r->headers[r->n_headers++] = line;
  line = NULL;

done:
  lk_secret_free(line);
  em_discard(&e);
  return st;
}

/* Builds r->userpwd "user:pass" from basic rule i. */
static lk_status build_userpwd(lk_http_request *r,
                               const Latchkey__V1__CredentialType *type,
                               size_t i, const lk_field *fields,
                               size_t n_fields, lk_err *err) {
  const Latchkey__V1__InjectRule *rule = type->inject[i];
  emitter e;
  lk_secret *up = NULL;
  lk_status st =
      em_open(&e, LK_INJECT_USERPWD_MAX, "basic credentials", CRED_HINT, err);
  if (st != LK_OK) {
    goto done;
  }
  if (r->userpwd != NULL) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "credential type '%s' has more than one basic rule; the "
                 "owner must fix and re-register the type",
                 type->id);
    goto done;
  }
  st = render(&e, ENC_RAW, rule->username, type, i, fields, n_fields, err);
  if (st == LK_OK) {
    st = em_flush(&e, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  size_t user_len = lk_secret_buf_len(e.buf);
  st = em_str(&e, ENC_RAW, ":", err);
  if (st == LK_OK) {
    st = render(&e, ENC_RAW, rule->password, type, i, fields, n_fields, err);
  }
  if (st == LK_OK) {
    st = em_finish(&e, &up, err);
  }
  if (st != LK_OK) {
    goto done;
  }
  if (memchr(lk_secret_data(up), ':', user_len) != NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "the basic-auth username (credential type '%s' inject[%zu]) "
                 "contains ':'; update the credential's values",
                 type->id, i);
    goto done;
  }
  if (memchr(lk_secret_data(up), '\0', lk_secret_len(up)) != NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "the basic-auth credentials (credential type '%s' "
                 "inject[%zu]) contain NUL; update the credential's values",
                 type->id, i);
    goto done;
  }
  r->userpwd = up;
  up = NULL;

done:
  lk_secret_free(up);
  em_discard(&e);
  return st;
}

static lk_status put_body_key(emitter *e, int *first, const char *name,
                              lk_err *err) {
  lk_status st = em_str(e, ENC_RAW, *first ? "\"" : ",\"", err);
  *first = 0;
  if (st == LK_OK) {
    st = em_str(e, ENC_JSON, name, err);
  }
  if (st == LK_OK) {
    st = em_str(e, ENC_RAW, "\":", err);
  }
  return st;
}

/* Builds r->body: agent body params, then injected body fields. */
static lk_status build_body(lk_http_request *r,
                            const Latchkey__V1__Operation *op,
                            const Latchkey__V1__CredentialType *type,
                            const lk_field *fields, size_t n_fields,
                            const json_t *args, lk_err *err) {
  emitter e;
  int first = 1;
  lk_status st = em_open(&e, LK_INJECT_BODY_MAX, "body", ARGS_HINT, err);
  if (st == LK_OK) {
    st = em_str(&e, ENC_RAW, "{", err);
  }
  for (size_t i = 0; i < op->n_params && st == LK_OK; i++) {
    const Latchkey__V1__Param *p = op->params[i];
    const json_t *v = arg_of(args, p->name);
    if (v == NULL || strcmp(p->in, "body") != 0) {
      continue;
    }
    st = put_body_key(&e, &first, p->name, err);
    if (st != LK_OK) {
      break;
    }
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text == NULL) {
      st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                   "out of memory rendering parameter '%s'", p->name);
      break;
    }
    size_t n = strlen(text);
    st = em_put(&e, ENC_RAW, text, n, err);
    json_text_free(text, n);
  }
  for (size_t i = 0; type != NULL && i < type->n_inject && st == LK_OK; i++) {
    const Latchkey__V1__InjectRule *rule = type->inject[i];
    if (!rule_is(rule, "body")) {
      continue;
    }
    st = put_body_key(&e, &first, rule->name, err);
    if (st == LK_OK) {
      st = em_str(&e, ENC_RAW, "\"", err);
    }
    if (st == LK_OK) {
      st = render(&e, ENC_JSON, rule->value, type, i, fields, n_fields, err);
    }
    if (st == LK_OK) {
      st = em_str(&e, ENC_RAW, "\"", err);
    }
  }
  if (st == LK_OK) {
    st = em_str(&e, ENC_RAW, "}", err);
  }
  if (st == LK_OK) {
    st = em_finish(&e, &r->body, err);
  }
  em_discard(&e);
  return st;
}

/* Returns 1 when op or type puts anything into a JSON body. GET and
 * DELETE carry no body: a type shared by a tool's operations applies its
 * body rules only to the operations that send one (POST, PUT, PATCH). */
static int wants_body(const Latchkey__V1__Operation *op,
                      const Latchkey__V1__CredentialType *type) {
  if (!lk_schema_method_sends_body(op->method)) {
    return 0;
  }
  for (size_t i = 0; i < op->n_params; i++) {
    if (strcmp(op->params[i]->in, "body") == 0) {
      return 1;
    }
  }
  for (size_t i = 0; type != NULL && i < type->n_inject; i++) {
    if (rule_is(type->inject[i], "body")) {
      return 1;
    }
  }
  return 0;
}

lk_status lk_inject_build(const Latchkey__V1__Tool *tool,
                          const Latchkey__V1__Operation *op,
                          const Latchkey__V1__CredentialType *type,
                          const lk_field *fields, size_t n_fields,
                          const json_t *args, lk_http_request **out,
                          lk_err *err) {
  lk_status st = LK_OK;
  lk_http_request *r = NULL;
  int custom_content_type = 0;

  *out = NULL;
  if (!lk_schema_method_known(op->method)) {
    st = lk_fail(err, LK_FAILED_PRECONDITION,
                 "tool '%s' operation '%s' has an unsupported method; the "
                 "owner must fix and re-register the tool",
                 tool->id, op->name);
    goto done;
  }
  if (args != NULL && !json_is_object(args)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "arguments must be a JSON object of parameters by name");
    goto done;
  }
  st = check_overrides(op, type, args, err);
  if (st != LK_OK) {
    goto done;
  }
  r = calloc(1, sizeof(*r));
  size_t n_rules = type != NULL ? type->n_inject : 0;
  if (r == NULL ||
      (r->headers = calloc(n_rules + 1, sizeof(lk_secret *))) == NULL) {
    st = lk_fail(err, LK_RESOURCE_EXHAUSTED, "out of memory building request");
    goto done;
  }
  snprintf(r->method, sizeof(r->method), "%s", op->method);
  st = build_url(r, tool, op, type, fields, n_fields, args, err);
  for (size_t i = 0; i < n_rules && st == LK_OK; i++) {
    const Latchkey__V1__InjectRule *rule = type->inject[i];
    if (rule_is(rule, "header")) {
      custom_content_type |= strcasecmp(rule->name, "Content-Type") == 0;
      st = build_header(r, type, i, fields, n_fields, err);
    } else if (rule_is(rule, "basic")) {
      st = build_userpwd(r, type, i, fields, n_fields, err);
    } else if (!rule_is(rule, "query") && !rule_is(rule, "body")) {
      st = lk_fail(err, LK_FAILED_PRECONDITION,
                   "credential type '%s' inject[%zu] has an unknown \"in\"; "
                   "the owner must fix and re-register the type",
                   type->id, i);
    }
  }
  if (st == LK_OK && wants_body(op, type)) {
    st = build_body(r, op, type, fields, n_fields, args, err);
    if (st == LK_OK && !custom_content_type) {
      static const char ct[] = "Content-Type: application/json";
      r->headers[r->n_headers] = lk_secret_from(ct, sizeof(ct) - 1);
      if (r->headers[r->n_headers] == NULL) {
        st = lk_fail(err, LK_RESOURCE_EXHAUSTED,
                     "out of guarded memory building request");
      } else {
        r->n_headers++;
      }
    }
  }
  if (st == LK_OK) {
    *out = r;
    r = NULL;
  }

done:
  lk_http_request_destroy(r);
  return st;
}

void lk_http_request_destroy(lk_http_request *r) {
  if (r == NULL) {
    return;
  }
  lk_secret_free(r->url);
  for (size_t i = 0; i < r->n_headers; i++) {
    lk_secret_free(r->headers[i]);
  }
  free(r->headers);
  lk_secret_free(r->body);
  lk_secret_free(r->userpwd);
  lk_wipe(r, sizeof(*r));
  free(r);
}
