/*
 * schema.h - what a tool and a credential type must be to be registered,
 * and the template grammar that both the rules and the request builder
 * read.
 *
 * Why: the Admin service (lib/admin, in the standalone sidecar and in the
 * control plane), the request builder (sidecar/inject) and the argument
 * gate (sidecar/args) all depend on the same facts about a definition:
 * which methods, parameter locations and types exist, what a path or a
 * credential template may contain, which header names may be injected.
 * They live here once, so what registration accepts is exactly what the
 * call path can serve, and the two cannot drift apart.
 *
 * Templates: a path template ("/v1/forecast/{city}") and a credential
 * template ("Bearer {token}") are text with {name} placeholders. In a
 * credential template "{{" and "}}" stand for one literal brace; a path
 * template has no escapes. lk_schema_tpl_next cuts either into pieces;
 * validation and rendering walk the same pieces.
 *
 * Invariants: checks only read; the canonical form (base_url without its
 * trailing '/', max_len 0 replaced by the default) is applied by
 * lk_schema_normalize_* once a definition has passed. Error messages name
 * ids, fields and positions, never a base_url (it may hold user info).
 *
 * Kinds: a credential type's kind is "" (fields the owner provides) or
 * "oauth2" (lib/oauth.h). An oauth2 type always has every standard field
 * of lk_oauth_fields: the owner may declare one to give it a pattern,
 * description or max_len, but not another secret flag; the ones left out
 * are added by lk_schema_canonical_type, in the table's order, before the
 * owner's extra fields, and a type without inject rules gets
 * `Authorization: Bearer {access_token}`. Its templates may name the
 * standard fields whether declared or not, but never refresh_token or
 * client_secret, which go to the token endpoint only.
 *
 * Limits: a tool has at most LK_SCHEMA_MAX_OPERATIONS operations of at
 * most LK_SCHEMA_MAX_PARAMS params; a credential type at most
 * LK_SCHEMA_MAX_FIELDS fields; a field's max_len defaults to
 * LK_SCHEMA_DEFAULT_MAX_LEN and may be at most LK_SCHEMA_MAX_MAX_LEN;
 * timeout_ms at most LK_SCHEMA_MAX_TIMEOUT_MS.
 */
#ifndef LK_SCHEMA_H
#define LK_SCHEMA_H

#include <stddef.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/status.h"

#define LK_SCHEMA_MAX_OPERATIONS 256
#define LK_SCHEMA_MAX_PARAMS 128
#define LK_SCHEMA_MAX_FIELDS 64
#define LK_SCHEMA_DEFAULT_MAX_LEN 4096
#define LK_SCHEMA_MAX_MAX_LEN 65536
#define LK_SCHEMA_MAX_TIMEOUT_MS 300000
#define LK_SCHEMA_MAX_PARAM_NAME 64
#define LK_SCHEMA_MAX_DESCRIPTION 4096
#define LK_SCHEMA_MAX_PATTERN 1024
#define LK_SCHEMA_MAX_PATH 2048

/* What lk_schema_tpl_next found. */
typedef enum {
  LK_SCHEMA_TPL_END,   /* the template is used up */
  LK_SCHEMA_TPL_TEXT,  /* literal bytes */
  LK_SCHEMA_TPL_NAME,  /* a {name} placeholder (the name may be empty) */
  LK_SCHEMA_TPL_OPEN,  /* a '{' not closed before the next '{' or the end */
  LK_SCHEMA_TPL_CLOSE, /* a '}' that closes nothing */
} lk_schema_tpl_kind;

/* One piece of a template: for TEXT the literal bytes, for NAME the name
 * between the braces, for OPEN and CLOSE the stray brace. */
typedef struct {
  lk_schema_tpl_kind kind;
  const char *s;
  size_t len;
} lk_schema_tpl_piece;

/* Reads the piece of a template at *cursor into *out, advances *cursor
 * past it and returns its kind; with escapes set, "{{" and "}}" are TEXT
 * pieces of one brace (credential templates), otherwise (path templates)
 * they are errors. OPEN and CLOSE leave *cursor where it was. */
lk_schema_tpl_kind lk_schema_tpl_next(const char **cursor, int escapes,
                                      lk_schema_tpl_piece *out);

/* Returns 1 when s is a non-empty RFC 7230 token (a valid header name). */
int lk_schema_http_token(const char *s);

/* Returns 1 when method is one an operation may use (GET, POST, PUT,
 * PATCH, DELETE; upper case). */
int lk_schema_method_known(const char *method);

/* Returns 1 when requests of method carry a body (not GET or DELETE). */
int lk_schema_method_sends_body(const char *method);

/* Returns 1 when type is a parameter type (string, integer, number,
 * boolean, object, array). */
int lk_schema_param_type_known(const char *type);

/* Checks a required id: LK_INVALID_ARGUMENT naming it as what when id is
 * empty or not a valid catalog id, LK_OK otherwise. */
lk_status lk_schema_check_id(const char *id, const char *what,
                             lk_err *err) LK_MUST_CHECK;

/* Checks one operation's method, description, params (name, uniqueness,
 * in, type, body params only on methods with a body, path params
 * required) and path template (starts with '/', at most
 * LK_SCHEMA_MAX_PATH bytes, printable ASCII without '?' or '#', every
 * placeholder one path param used once, every path param used).
 * LK_INVALID_ARGUMENT with the reason otherwise. */
lk_status lk_schema_check_operation(const Latchkey__V1__Operation *op,
                                    lk_err *err) LK_MUST_CHECK;

/* Checks a credential type: id, description, kind ("" or "oauth2"),
 * fields (names, uniqueness, max_len, patterns that compile as POSIX
 * extended regexes; for oauth2 the standard fields' secret flags) and
 * inject rules (in, names, header tokens other than the headers the
 * sidecar sets, nothing injected twice, at most one basic rule and not
 * with an Authorization header rule, templates whose placeholders are
 * declared fields, no CR or LF in header templates). LK_INVALID_ARGUMENT
 * with the reason otherwise. */
lk_status lk_schema_check_type(const Latchkey__V1__CredentialType *type,
                               lk_err *err) LK_MUST_CHECK;

/* Checks a tool: id, description, base_url (https:// or http://, a host,
 * an optional port, nothing else), timeout, credential_type id and its
 * operations (unique valid names, each lk_schema_check_operation). When
 * type is the credential type registered along with the tool (not NULL),
 * also checks it (lk_schema_check_type) and that tool->credential_type
 * names it. LK_INVALID_ARGUMENT with the reason otherwise. */
lk_status lk_schema_check_tool(const Latchkey__V1__Tool *tool,
                               const Latchkey__V1__CredentialType *type,
                               lk_err *err) LK_MUST_CHECK;

/* Puts a tool that passed lk_schema_check_tool in canonical form: one
 * trailing '/' of base_url is dropped. */
void lk_schema_normalize_tool(Latchkey__V1__Tool *tool);

/* Puts a type that passed lk_schema_check_type in canonical form: a field
 * max_len of 0 becomes LK_SCHEMA_DEFAULT_MAX_LEN. */
void lk_schema_normalize_type(Latchkey__V1__CredentialType *type);

/* Builds in *out the canonical form of a type that passed
 * lk_schema_check_type, as a new message from alloc (NULL: malloc) that
 * the caller frees with protobuf_c_message_free_unpacked(*out, alloc):
 * normalized (lk_schema_normalize_type), and for kind "oauth2" with the
 * standard fields and the default inject rule added (see Kinds above).
 * LK_RESOURCE_EXHAUSTED when out of memory. */
lk_status lk_schema_canonical_type(const Latchkey__V1__CredentialType *type,
                                   ProtobufCAllocator *alloc,
                                   Latchkey__V1__CredentialType **out,
                                   lk_err *err) LK_MUST_CHECK;

#endif
