/*
 * convert.c - the descriptor-driven JSON <-> protobuf-c converter.
 *
 * Why descriptor-driven: protobuf-c already describes every message (field
 * names, numbers, types, labels, offsets), so one walk over a descriptor
 * converts any latchkey.v1 message and new proto fields need no new code.
 * Tool-specific knowledge is confined to one place: the tool document's
 * polymorphic "credential_type". What a document means (required keys,
 * allowed methods, parameter locations and types, inject rule shapes) is
 * the server's to judge, with lib/schema; a document that converts is
 * sent, and the server's answer names what to fix.
 *
 * Invariants: a message under construction is always freeable by
 * protobuf_c_message_free_unpacked (repeated counts only cover filled
 * slots, strings are malloc'd or the descriptor default), so every error
 * path frees with one call; the key path in a message is bounded by
 * struct jpath's buffer; values never appear in messages.
 */
#include "clients/cli/convert.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "lib/secret.h"

/* A key path such as "operations[0].params[1]"; the root is "". */
typedef struct {
  char buf[200];
  size_t len;
} jpath;

static const char *path_str(const jpath *p) {
  return p->len > 0 ? p->buf : "document";
}

/* Appends ".key" (or "key" at the root); returns the length to restore. */
static size_t path_push_key(jpath *p, const char *key) {
  size_t old = p->len;
  int n = snprintf(p->buf + p->len, sizeof(p->buf) - p->len, "%s%s",
                   p->len > 0 ? "." : "", key);
  if (n > 0) {
    p->len += (size_t)n;
    if (p->len >= sizeof(p->buf)) {
      p->len = sizeof(p->buf) - 1;
    }
  }
  return old;
}

/* Appends "[i]"; returns the length to restore. */
static size_t path_push_index(jpath *p, size_t i) {
  size_t old = p->len;
  int n = snprintf(p->buf + p->len, sizeof(p->buf) - p->len, "[%zu]", i);
  if (n > 0) {
    p->len += (size_t)n;
    if (p->len >= sizeof(p->buf)) {
      p->len = sizeof(p->buf) - 1;
    }
  }
  return old;
}

static void path_pop(jpath *p, size_t old) {
  p->len = old;
  p->buf[old] = '\0';
}

static lk_status oom(lk_err *err) {
  return lk_fail(err, LK_INTERNAL, "out of memory converting JSON");
}

static void *member(void *msg, unsigned offset) {
  return (char *)msg + offset;
}

static const void *cmember(const void *msg, unsigned offset) {
  return (const char *)msg + offset;
}

/* True for the generated entry message of a map<,> field. */
static int is_map_entry(const ProtobufCFieldDescriptor *f) {
  const ProtobufCMessageDescriptor *d;
  size_t nlen;

  if (f->type != PROTOBUF_C_TYPE_MESSAGE ||
      f->label != PROTOBUF_C_LABEL_REPEATED) {
    return 0;
  }
  d = f->descriptor;
  nlen = strlen(d->name);
  return d->n_fields == 2 && nlen > 5 &&
         strcmp(d->name + nlen - 5, "Entry") == 0 &&
         strcmp(d->fields[0].name, "key") == 0 && d->fields[0].id == 1 &&
         strcmp(d->fields[1].name, "value") == 0 && d->fields[1].id == 2;
}

/* True when the field has a separate has_NAME presence flag. */
static int has_presence_flag(const ProtobufCFieldDescriptor *f) {
  return f->label == PROTOBUF_C_LABEL_OPTIONAL &&
         (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0 &&
         f->type != PROTOBUF_C_TYPE_STRING &&
         f->type != PROTOBUF_C_TYPE_MESSAGE;
}

static size_t elem_size(ProtobufCType t) {
  switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      return sizeof(uint32_t);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      return sizeof(uint64_t);
    case PROTOBUF_C_TYPE_FLOAT:
      return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
      return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
      return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:
      return sizeof(int);
    case PROTOBUF_C_TYPE_STRING:
      return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
      return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
      return sizeof(ProtobufCMessage *);
  }
  return sizeof(void *);
}

/* ---- parsing ---------------------------------------------------------- */

lk_status lk_convert_parse(const char *text, size_t len, int secret,
                           json_t **out, lk_err *err) {
  json_error_t jerr;
  json_t *j =
      json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
  lk_status st = LK_OK;

  *out = NULL;
  if (j == NULL) {
    if (secret) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "not valid JSON (line %d, column %d)", jerr.line,
                   jerr.column);
    } else {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "not valid JSON (line %d, column %d): %s", jerr.line,
                   jerr.column, jerr.text);
    }
  } else {
    *out = j;
  }
  /* jansson copies the text near an error into jerr. */
  lk_wipe(&jerr, sizeof(jerr));
  return st;
}

lk_status lk_convert_load_file(const char *path, json_t **out, lk_err *err) {
  lk_status st = LK_OK;
  int is_stdin = strcmp(path, "-") == 0;
  FILE *f = is_stdin ? stdin : fopen(path, "rb");
  char *buf = NULL;
  size_t n = 0;

  *out = NULL;
  if (f == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot open %s: %s", path,
                 strerror(errno));
    goto done;
  }
  buf = malloc(LK_CONVERT_MAX_FILE_BYTES + 1);
  if (buf == NULL) {
    st = oom(err);
    goto done;
  }
  n = fread(buf, 1, LK_CONVERT_MAX_FILE_BYTES + 1, f);
  if (ferror(f)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot read %s", path);
    goto done;
  }
  if (n > LK_CONVERT_MAX_FILE_BYTES) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "%s is larger than the %d-byte limit for a JSON document",
                 path, LK_CONVERT_MAX_FILE_BYTES);
    goto done;
  }
  st = lk_convert_parse(buf, n, 0, out, err);
  if (st != LK_OK) {
    /* Prefix the file name to the parser's message. */
    char msg[sizeof(err->msg)];
    snprintf(msg, sizeof(msg), "%s", err->msg);
    st = lk_fail(err, st, "%s: %s", path, msg);
  }
done:
  free(buf);
  if (f != NULL && !is_stdin) {
    fclose(f);
  }
  return st;
}

/* ---- JSON -> message -------------------------------------------------- */

static lk_status msg_from_json(const json_t *json,
                               const ProtobufCMessageDescriptor *d,
                               ProtobufCMessage **out, jpath *p, lk_err *err);

/* Lists d's keys after an unknown-key message, as far as it fits. */
static lk_status fail_unknown_key(const ProtobufCMessageDescriptor *d,
                                  const jpath *p, lk_err *err) {
  char known[256];
  size_t used = 0;
  unsigned i;

  known[0] = '\0';
  for (i = 0; i < d->n_fields && used < sizeof(known); i++) {
    int n = snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
                     d->fields[i].name);
    if (n < 0) {
      break;
    }
    used += (size_t)n;
  }
  return lk_fail(err, LK_INVALID_ARGUMENT,
                 "%s is not a known key (expected one of: %s)", path_str(p),
                 known);
}

/* Fills one scalar, string, bytes or message slot from v. */
static lk_status value_from_json(const ProtobufCFieldDescriptor *f,
                                 const json_t *v, int base64, void *slot,
                                 jpath *p, lk_err *err) {
  json_int_t i;

  switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL:
      if (!json_is_boolean(v)) {
        return lk_fail(err, LK_INVALID_ARGUMENT, "%s must be a boolean",
                       path_str(p));
      }
      *(protobuf_c_boolean *)slot = json_is_true(v) ? 1 : 0;
      return LK_OK;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
      i = json_is_integer(v) ? json_integer_value(v) : 0;
      if (!json_is_integer(v) || i < INT32_MIN || i > INT32_MAX) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s must be an integer between %d and %d", path_str(p),
                       INT32_MIN, INT32_MAX);
      }
      *(int32_t *)slot = (int32_t)i;
      return LK_OK;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      i = json_is_integer(v) ? json_integer_value(v) : -1;
      if (!json_is_integer(v) || i < 0 || i > (json_int_t)UINT32_MAX) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s must be an integer between 0 and %u", path_str(p),
                       UINT32_MAX);
      }
      *(uint32_t *)slot = (uint32_t)i;
      return LK_OK;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
      if (!json_is_integer(v)) {
        return lk_fail(err, LK_INVALID_ARGUMENT, "%s must be an integer",
                       path_str(p));
      }
      *(int64_t *)slot = (int64_t)json_integer_value(v);
      return LK_OK;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s must be a non-negative integer", path_str(p));
      }
      *(uint64_t *)slot = (uint64_t)json_integer_value(v);
      return LK_OK;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
      if (!json_is_number(v)) {
        return lk_fail(err, LK_INVALID_ARGUMENT, "%s must be a number",
                       path_str(p));
      }
      if (f->type == PROTOBUF_C_TYPE_FLOAT) {
        *(float *)slot = (float)json_number_value(v);
      } else {
        *(double *)slot = json_number_value(v);
      }
      return LK_OK;
    case PROTOBUF_C_TYPE_ENUM: {
      const ProtobufCEnumValue *ev =
          json_is_string(v) ? protobuf_c_enum_descriptor_get_value_by_name(
                                  f->descriptor, json_string_value(v))
                            : NULL;
      if (ev == NULL) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s must be the name of a %s value", path_str(p),
                       ((const ProtobufCEnumDescriptor *)f->descriptor)->name);
      }
      *(int *)slot = ev->value;
      return LK_OK;
    }
    case PROTOBUF_C_TYPE_STRING: {
      char *s;
      if (!json_is_string(v)) {
        return lk_fail(err, LK_INVALID_ARGUMENT, "%s must be a string",
                       path_str(p));
      }
      if (strlen(json_string_value(v)) != json_string_length(v)) {
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s must not contain a NUL character", path_str(p));
      }
      s = strdup(json_string_value(v));
      if (s == NULL) {
        return oom(err);
      }
      *(char **)slot = s;
      return LK_OK;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      ProtobufCBinaryData *bd = slot;
      const char *s = json_is_string(v) ? json_string_value(v) : NULL;
      size_t slen = json_is_string(v) ? json_string_length(v) : 0;
      size_t bin_len = 0;
      unsigned char *bin;

      if (s == NULL) {
        return lk_fail(err, LK_INVALID_ARGUMENT, "%s must be a %sstring",
                       path_str(p), base64 ? "base64 " : "");
      }
      bin = malloc(slen + 1);
      if (bin == NULL) {
        return oom(err);
      }
      if (!base64) {
        memcpy(bin, s, slen);
        bin_len = slen;
      } else if (sodium_base642bin(bin, slen + 1, s, slen, " \r\n", &bin_len,
                                   NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(bin);
        return lk_fail(err, LK_INVALID_ARGUMENT,
                       "%s must be a base64 string (standard alphabet, "
                       "padded)",
                       path_str(p));
      }
      bd->data = bin;
      bd->len = bin_len;
      return LK_OK;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
      return msg_from_json(v, f->descriptor, (ProtobufCMessage **)slot, p, err);
  }
  return lk_fail(err, LK_INTERNAL, "%s has an unsupported protobuf type",
                 path_str(p));
}

/* Fills a map<,> field (a repeated entry message) from a JSON object. */
static lk_status map_from_json(const ProtobufCFieldDescriptor *f,
                               const json_t *v, void *msg, jpath *p,
                               lk_err *err) {
  const ProtobufCMessageDescriptor *ed = f->descriptor;
  size_t *count = member(msg, f->quantifier_offset);
  ProtobufCMessage ***arr = member(msg, f->offset);
  const char *key;
  json_t *val;
  size_t n;

  if (!json_is_object(v)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "%s must be an object",
                   path_str(p));
  }
  n = json_object_size(v);
  if (n == 0) {
    return LK_OK;
  }
  *arr = calloc(n, sizeof(ProtobufCMessage *));
  if (*arr == NULL) {
    return oom(err);
  }
  json_object_foreach((json_t *)v, key, val) {
    ProtobufCMessage *e = calloc(1, ed->sizeof_message);
    size_t old;
    lk_status st;
    char *k;

    if (e == NULL) {
      return oom(err);
    }
    ed->message_init(e);
    (*arr)[(*count)++] = e;
    k = strdup(key);
    if (k == NULL) {
      return oom(err);
    }
    *(char **)member(e, ed->fields[0].offset) = k;
    if (json_is_null(val)) {
      continue;
    }
    old = path_push_key(p, key);
    st = value_from_json(&ed->fields[1], val, 0,
                         member(e, ed->fields[1].offset), p, err);
    if (st != LK_OK) {
      return st;
    }
    path_pop(p, old);
  }
  return LK_OK;
}

/* Fills a repeated field from a JSON array. */
static lk_status repeated_from_json(const ProtobufCFieldDescriptor *f,
                                    const json_t *v, void *msg, jpath *p,
                                    lk_err *err) {
  size_t *count = member(msg, f->quantifier_offset);
  void **arr = member(msg, f->offset);
  size_t es = elem_size(f->type);
  size_t n;
  size_t i;

  if (!json_is_array(v)) {
    return lk_fail(err, LK_INVALID_ARGUMENT, "%s must be an array",
                   path_str(p));
  }
  n = json_array_size(v);
  if (n == 0) {
    return LK_OK;
  }
  *arr = calloc(n, es);
  if (*arr == NULL) {
    return oom(err);
  }
  for (i = 0; i < n; i++) {
    size_t old = path_push_index(p, i);
    lk_status st = value_from_json(f, json_array_get(v, i), 0,
                                   (char *)*arr + i * es, p, err);
    if (st != LK_OK) {
      /* A failed slot holds nothing: the count covers filled slots only. */
      return st;
    }
    (*count)++;
    path_pop(p, old);
  }
  return LK_OK;
}

/* Looks up the field a JSON key names: NAME, or NAME_base64 for bytes. */
static const ProtobufCFieldDescriptor *field_for_key(
    const ProtobufCMessageDescriptor *d, const char *key, int *base64) {
  const ProtobufCFieldDescriptor *f =
      protobuf_c_message_descriptor_get_field_by_name(d, key);
  size_t klen = strlen(key);
  char name[128];

  *base64 = 0;
  if (f != NULL) {
    return f;
  }
  if (klen <= 7 || klen - 7 >= sizeof(name) ||
      strcmp(key + klen - 7, "_base64") != 0) {
    return NULL;
  }
  memcpy(name, key, klen - 7);
  name[klen - 7] = '\0';
  f = protobuf_c_message_descriptor_get_field_by_name(d, name);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_BYTES) {
    return NULL;
  }
  *base64 = 1;
  return f;
}

/* Name of the field of oneof group (quantifier offset) whose id is id. */
static const char *field_name_by_id(const ProtobufCMessageDescriptor *d,
                                    uint32_t id) {
  const ProtobufCFieldDescriptor *f =
      protobuf_c_message_descriptor_get_field(d, (unsigned)id);
  return f != NULL ? f->name : "another member";
}

/* Fills the field f of msg from v, the value of JSON key at path p. */
static lk_status field_from_json(const ProtobufCMessageDescriptor *d,
                                 const ProtobufCFieldDescriptor *f,
                                 const json_t *obj, const json_t *v, int base64,
                                 void *msg, jpath *p, lk_err *err) {
  lk_status st;

  if (f->type == PROTOBUF_C_TYPE_BYTES && base64) {
    const json_t *plain = json_object_get(obj, f->name);
    if (plain != NULL && !json_is_null(plain)) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "%s and its plain form %s cannot both be given",
                     path_str(p), f->name);
    }
  }
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
    uint32_t *which = member(msg, f->quantifier_offset);
    if (*which != 0 && *which != f->id) {
      return lk_fail(err, LK_INVALID_ARGUMENT,
                     "%s cannot be given together with %s (only one of them "
                     "may be set)",
                     path_str(p), field_name_by_id(d, *which));
    }
  }
  if (is_map_entry(f)) {
    return map_from_json(f, v, msg, p, err);
  }
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    return repeated_from_json(f, v, msg, p, err);
  }
  st = value_from_json(f, v, base64, member(msg, f->offset), p, err);
  if (st != LK_OK) {
    return st;
  }
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
    *(uint32_t *)member(msg, f->quantifier_offset) = f->id;
  } else if (has_presence_flag(f)) {
    *(protobuf_c_boolean *)member(msg, f->quantifier_offset) = 1;
  }
  return LK_OK;
}

static lk_status msg_from_json(const json_t *json,
                               const ProtobufCMessageDescriptor *d,
                               ProtobufCMessage **out, jpath *p, lk_err *err) {
  lk_status st = LK_OK;
  ProtobufCMessage *m = NULL;
  const char *key;
  json_t *v;

  if (!json_is_object(json)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "%s must be an object", path_str(p));
    goto done;
  }
  m = calloc(1, d->sizeof_message);
  if (m == NULL) {
    st = oom(err);
    goto done;
  }
  d->message_init(m);
  json_object_foreach((json_t *)json, key, v) {
    int base64 = 0;
    const ProtobufCFieldDescriptor *f = field_for_key(d, key, &base64);
    size_t old = path_push_key(p, key);

    if (f == NULL) {
      st = fail_unknown_key(d, p, err);
      goto done;
    }
    if (!json_is_null(v)) {
      st = field_from_json(d, f, json, v, base64, m, p, err);
      if (st != LK_OK) {
        goto done;
      }
    }
    path_pop(p, old);
  }
done:
  if (st != LK_OK) {
    lk_convert_message_free(m);
    m = NULL;
  }
  *out = m;
  return st;
}

lk_status lk_convert_from_json(const json_t *json,
                               const ProtobufCMessageDescriptor *desc,
                               ProtobufCMessage **out, lk_err *err) {
  jpath p;
  p.len = 0;
  p.buf[0] = '\0';
  return msg_from_json(json, desc, out, &p, err);
}

/* ---- message -> JSON -------------------------------------------------- */

static lk_status msg_to_json(const ProtobufCMessage *m, json_t **out,
                             lk_err *err);

/* Renders a bytes value: a string when valid UTF-8, else base64. */
static json_t *bytes_to_json(const ProtobufCBinaryData *bd, int *base64) {
  json_t *j;
  char *b64;
  size_t b64_len;

  *base64 = 0;
  if (bd->len == 0) {
    return json_string("");
  }
  j = json_stringn((const char *)bd->data, bd->len);
  if (j != NULL) {
    return j;
  }
  *base64 = 1;
  b64_len = sodium_base64_ENCODED_LEN(bd->len, sodium_base64_VARIANT_ORIGINAL);
  b64 = malloc(b64_len);
  if (b64 == NULL) {
    return NULL;
  }
  sodium_bin2base64(b64, b64_len, bd->data, bd->len,
                    sodium_base64_VARIANT_ORIGINAL);
  j = json_string(b64);
  free(b64);
  return j;
}

/* Renders one scalar, string or message slot; *base64 tells bytes apart. */
static lk_status value_to_json(const ProtobufCFieldDescriptor *f,
                               const void *slot, json_t **out, int *base64,
                               lk_err *err) {
  json_t *j = NULL;

  *base64 = 0;
  switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL:
      j = json_boolean(*(const protobuf_c_boolean *)slot);
      break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
      j = json_integer(*(const int32_t *)slot);
      break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      j = json_integer(*(const uint32_t *)slot);
      break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
      j = json_integer(*(const int64_t *)slot);
      break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
      uint64_t u = *(const uint64_t *)slot;
      if (u <= (uint64_t)LLONG_MAX) {
        j = json_integer((json_int_t)u);
      } else {
        char s[24];
        snprintf(s, sizeof(s), "%llu", (unsigned long long)u);
        j = json_string(s);
      }
      break;
    }
    case PROTOBUF_C_TYPE_FLOAT:
      j = json_real(*(const float *)slot);
      break;
    case PROTOBUF_C_TYPE_DOUBLE:
      j = json_real(*(const double *)slot);
      break;
    case PROTOBUF_C_TYPE_ENUM: {
      const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
          f->descriptor, *(const int *)slot);
      j = ev != NULL ? json_string(ev->name) : json_integer(*(const int *)slot);
      break;
    }
    case PROTOBUF_C_TYPE_STRING: {
      const char *s = *(char *const *)slot;
      j = json_string(s != NULL ? s : "");
      if (j == NULL && s != NULL) {
        /* Not UTF-8: a server bug, but still show something. */
        j = json_string("(invalid UTF-8)");
      }
      break;
    }
    case PROTOBUF_C_TYPE_BYTES:
      j = bytes_to_json(slot, base64);
      break;
    case PROTOBUF_C_TYPE_MESSAGE: {
      const ProtobufCMessage *sub = *(ProtobufCMessage *const *)slot;
      if (sub == NULL) {
        j = json_object();
        break;
      }
      return msg_to_json(sub, out, err);
    }
  }
  if (j == NULL) {
    return oom(err);
  }
  *out = j;
  return LK_OK;
}

/* Sets obj[name] (or obj[name_base64]) to j, taking j. */
static lk_status set_key(json_t *obj, const char *name, int base64, json_t *j,
                         lk_err *err) {
  char key[160];

  if (base64) {
    snprintf(key, sizeof(key), "%s_base64", name);
    name = key;
  }
  if (json_object_set_new(obj, name, j) != 0) {
    return oom(err);
  }
  return LK_OK;
}

/* Renders a map<,> field as an object. */
static lk_status map_to_json(const ProtobufCFieldDescriptor *f,
                             const ProtobufCMessage *m, json_t **out,
                             lk_err *err) {
  const ProtobufCMessageDescriptor *ed = f->descriptor;
  size_t n = *(const size_t *)cmember(m, f->quantifier_offset);
  ProtobufCMessage *const *arr =
      *(ProtobufCMessage *const *const *)cmember(m, f->offset);
  json_t *obj = json_object();
  size_t i;

  if (obj == NULL) {
    return oom(err);
  }
  for (i = 0; i < n; i++) {
    const char *k = *(char *const *)cmember(arr[i], ed->fields[0].offset);
    json_t *v = NULL;
    int base64;
    lk_status st =
        value_to_json(&ed->fields[1], cmember(arr[i], ed->fields[1].offset), &v,
                      &base64, err);
    if (st == LK_OK) {
      st = set_key(obj, k != NULL ? k : "", base64, v, err);
    }
    if (st != LK_OK) {
      json_decref(obj);
      return st;
    }
  }
  *out = obj;
  return LK_OK;
}

/* Renders a repeated field as an array. */
static lk_status repeated_to_json(const ProtobufCFieldDescriptor *f,
                                  const ProtobufCMessage *m, json_t **out,
                                  lk_err *err) {
  size_t n = *(const size_t *)cmember(m, f->quantifier_offset);
  const char *arr = *(const char *const *)cmember(m, f->offset);
  size_t es = elem_size(f->type);
  json_t *a = json_array();
  size_t i;

  if (a == NULL) {
    return oom(err);
  }
  for (i = 0; i < n; i++) {
    json_t *v = NULL;
    int base64;
    lk_status st = value_to_json(f, arr + i * es, &v, &base64, err);
    if (st == LK_OK && json_array_append_new(a, v) != 0) {
      st = oom(err);
    }
    if (st != LK_OK) {
      json_decref(a);
      return st;
    }
  }
  *out = a;
  return LK_OK;
}

static lk_status msg_to_json(const ProtobufCMessage *m, json_t **out,
                             lk_err *err) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  lk_status st = LK_OK;
  json_t *obj = json_object();
  unsigned i;

  *out = NULL;
  if (obj == NULL) {
    return oom(err);
  }
  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    json_t *v = NULL;
    int base64 = 0;

    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)cmember(m, f->quantifier_offset) != f->id) {
      continue;
    }
    if (is_map_entry(f)) {
      st = map_to_json(f, m, &v, err);
    } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      st = repeated_to_json(f, m, &v, err);
    } else if (f->type == PROTOBUF_C_TYPE_MESSAGE &&
               *(ProtobufCMessage *const *)cmember(m, f->offset) == NULL) {
      continue;
    } else if (has_presence_flag(f) &&
               !*(const protobuf_c_boolean *)cmember(m, f->quantifier_offset)) {
      continue;
    } else {
      st = value_to_json(f, cmember(m, f->offset), &v, &base64, err);
    }
    if (st == LK_OK) {
      st = set_key(obj, f->name, base64, v, err);
    }
    if (st != LK_OK) {
      goto done;
    }
  }
done:
  if (st != LK_OK) {
    json_decref(obj);
    obj = NULL;
  }
  *out = obj;
  return st;
}

lk_status lk_convert_to_json(const ProtobufCMessage *msg, json_t **out,
                             lk_err *err) {
  return msg_to_json(msg, out, err);
}

/* Converts a credential type at path p. */
static lk_status type_from_json(const json_t *json, jpath *p,
                                Latchkey__V1__CredentialType **out,
                                lk_err *err) {
  ProtobufCMessage *m = NULL;
  lk_status st = msg_from_json(json, &latchkey__v1__credential_type__descriptor,
                               &m, p, err);

  *out = (Latchkey__V1__CredentialType *)m;
  return st;
}

lk_status lk_convert_credential_type_from_json(
    const json_t *json, Latchkey__V1__CredentialType **out, lk_err *err) {
  jpath p;
  p.len = 0;
  p.buf[0] = '\0';
  return type_from_json(json, &p, out, err);
}

lk_status lk_convert_tool_request_from_json(
    const json_t *json, Latchkey__V1__RegisterToolRequest **out, lk_err *err) {
  lk_status st = LK_OK;
  Latchkey__V1__RegisterToolRequest *req = NULL;
  ProtobufCMessage *tool = NULL;
  json_t *rest = NULL;
  const json_t *ct;
  jpath p;

  *out = NULL;
  p.len = 0;
  p.buf[0] = '\0';
  if (!json_is_object(json)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "document must be an object");
    goto done;
  }
  req = calloc(1, sizeof(*req));
  if (req == NULL) {
    st = oom(err);
    goto done;
  }
  latchkey__v1__register_tool_request__init(req);
  /* "credential_type" is polymorphic; convert the rest generically. */
  rest = json_copy((json_t *)json);
  if (rest == NULL) {
    st = oom(err);
    goto done;
  }
  json_object_del(rest, "credential_type");
  st = msg_from_json(rest, &latchkey__v1__tool__descriptor, &tool, &p, err);
  if (st != LK_OK) {
    goto done;
  }
  req->tool = (Latchkey__V1__Tool *)tool;
  ct = json_object_get(json, "credential_type");
  if (json_is_string(ct)) {
    size_t old = path_push_key(&p, "credential_type");
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(
            &latchkey__v1__tool__descriptor, "credential_type");
    st = value_from_json(f, ct, 0, &req->tool->credential_type, &p, err);
    if (st != LK_OK) {
      goto done;
    }
    path_pop(&p, old);
  } else if (json_is_object(ct)) {
    size_t old = path_push_key(&p, "credential_type");
    st = type_from_json(ct, &p, &req->credential_type, err);
    if (st != LK_OK) {
      goto done;
    }
    path_pop(&p, old);
    req->tool->credential_type = strdup(req->credential_type->id);
    if (req->tool->credential_type == NULL) {
      st = oom(err);
      goto done;
    }
  } else if (ct != NULL && !json_is_null(ct)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "credential_type must be a string (the id of a registered "
                 "type) or an object (a credential type defined inline)");
    goto done;
  }
done:
  json_decref(rest);
  if (st != LK_OK) {
    lk_convert_message_free(req != NULL ? &req->base : NULL);
    req = NULL;
  }
  *out = req;
  return st;
}

/* ---- wipe and free ------------------------------------------------------ */

static void wipe_string(char *s) {
  size_t n = s != NULL ? strlen(s) : 0;
  if (n > 0) {
    lk_wipe(s, n);
  }
}

void lk_convert_message_wipe(ProtobufCMessage *msg) {
  const ProtobufCMessageDescriptor *d;
  unsigned i;

  if (msg == NULL) {
    return;
  }
  d = msg->descriptor;
  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    size_t k;

    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(uint32_t *)member(msg, f->quantifier_offset) != f->id) {
      continue;
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(size_t *)member(msg, f->quantifier_offset);
      void *arr = *(void **)member(msg, f->offset);
      if (arr == NULL) {
        continue;
      }
      for (k = 0; k < n; k++) {
        if (f->type == PROTOBUF_C_TYPE_STRING) {
          wipe_string(((char **)arr)[k]);
        } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
          ProtobufCBinaryData *bd = &((ProtobufCBinaryData *)arr)[k];
          if (bd->data != NULL && bd->len > 0) {
            lk_wipe(bd->data, bd->len);
          }
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
          lk_convert_message_wipe(((ProtobufCMessage **)arr)[k]);
        }
      }
    } else if (f->type == PROTOBUF_C_TYPE_STRING) {
      char *str = *(char **)member(msg, f->offset);
      /* The descriptor's default is static storage, never a secret. */
      if (str != (const char *)f->default_value) {
        wipe_string(str);
      }
    } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
      ProtobufCBinaryData *bd = member(msg, f->offset);
      if (bd->data != NULL && bd->len > 0) {
        lk_wipe(bd->data, bd->len);
      }
    } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      lk_convert_message_wipe(*(ProtobufCMessage **)member(msg, f->offset));
    }
  }
}

void lk_convert_message_free(ProtobufCMessage *msg) {
  if (msg == NULL) {
    return;
  }
  lk_convert_message_wipe(msg);
  protobuf_c_message_free_unpacked(msg, NULL);
}
