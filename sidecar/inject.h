/*
 * inject.h - building the vendor HTTP request and putting the credential in.
 *
 * Why: this is the one place where an agent's (untrusted) arguments meet a
 * credential's plaintext, so it owns the two promises the sidecar makes
 * about them: the agent decides neither the destination (base_url is the
 * owner's; every path value stays inside its own path segment) nor any
 * injected field (an argument naming an injected query or body field is
 * refused, not merged); and every byte that may hold a secret (URL,
 * headers, body, user:pass, and every intermediate) lives in lk_secret
 * memory and is wiped when the request is destroyed.
 *
 * Path parameters (the agent's values inside the owner's path template):
 *   - every byte outside RFC 3986's unreserved set minus '.', that is
 *     everything but A-Z a-z 0-9 - _ ~, becomes %XX (uppercase hex): '/',
 *     backslash, '.', '%' itself (so "%2F" arrives as "%252F"), '?', '#', '@',
 *     ';', ':', space, control bytes and each byte of multi-byte UTF-8.
 *     The vendor therefore receives the value as exactly one segment, in
 *     the place the template gives it, after base_url's host;
 *   - refused with LK_INVALID_ARGUMENT naming the parameter: an empty
 *     value; a value in which "." or ".." appears as a piece between '/'
 *     or backslash separators (each piece cut at ';' or NUL), either as
 *     sent or after any of up to LK_INJECT_PATH_DECODE_ROUNDS successive
 *     percent-decodings ("..", "../admin", "%2e%2e", "%2E%2e/x",
 *     "a%2F..", "..;x", "%252e%252e"), so that a vendor or proxy that
 *     decodes %2F, or decodes twice, before routing still sees no dot
 *     segment; a value still changing after that many decodings;
 *   - NUL never gets here: arguments_json with \u0000 is refused when it is
 *     parsed (sidecar/args.c).
 * Query parameters: names and values are percent-encoded the same way
 * ('.' passes), so '&', '=', '#' and '+' cannot start another parameter.
 * Headers: no agent value goes into a header (params are path, query or
 * body only); injected header values with CR, LF or NUL are refused. Body:
 * agent values are JSON-encoded by jansson and cannot add a key.
 *
 * Templates: an inject rule's value, username and password are templates
 * where "{field}" stands for the credential field's value and "{{" / "}}"
 * are literal braces. Registration checks them with lk_schema_check_type
 * (lib/schema.h), and both read them with the same scanner,
 * lk_schema_tpl_next, so what was accepted is what gets rendered.
 */
#ifndef LK_INJECT_H
#define LK_INJECT_H

#include <stddef.h>

#include <jansson.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/secret.h"
#include "lib/status.h"

/* Caps on what lk_inject_build produces (LK_RESOURCE_EXHAUSTED beyond). */
#define LK_INJECT_URL_MAX ((size_t)8 * 1024)
#define LK_INJECT_HEADER_MAX ((size_t)8 * 1024)
#define LK_INJECT_USERPWD_MAX ((size_t)6 * 1024)
#define LK_INJECT_BODY_MAX ((size_t)1024 * 1024)

/* Percent-decodings a path value is checked through for dot segments. */
#define LK_INJECT_PATH_DECODE_ROUNDS 16

/* One credential field, already unsealed (secret) or plain. */
typedef struct {
  const char *name;
  const lk_secret *value;
  int secret;
} lk_field;

/* A vendor request ready for libcurl; every member is owned by it. */
typedef struct lk_http_request {
  char method[8]; /* "GET", "POST", ... NUL-terminated */
  lk_secret *url; /* base_url + expanded path + query string */
  size_t n_headers;
  lk_secret **headers;    /* "Name: value" lines, ready for curl_slist */
  lk_secret *body;        /* JSON body, or NULL */
  lk_secret *userpwd;     /* "user:pass" for a basic rule, else NULL */
  int url_has_credential; /* a query rule put a credential value in url */
} lk_http_request;

/* Builds op's request to tool->base_url from args (as returned by
 * lk_args_parse; NULL means {}) and applies every inject rule of type
 * (NULL when the tool needs no credential) with the n_fields values in
 * fields. Sets *out to a request the caller destroys with
 * lk_http_request_destroy. LK_INVALID_ARGUMENT for unusable arguments
 * (empty, "." or ".." path values; an argument naming an injected query or
 * body field) and for credential values that would put CR, LF or NUL into
 * a header or a ':' into a basic username; LK_FAILED_PRECONDITION for a
 * broken tool definition or a credential lacking a field a rule uses;
 * LK_RESOURCE_EXHAUSTED past LK_INJECT_*_MAX. Messages never contain
 * values. */
lk_status lk_inject_build(const Latchkey__V1__Tool *tool,
                          const Latchkey__V1__Operation *op,
                          const Latchkey__V1__CredentialType *type,
                          const lk_field *fields, size_t n_fields,
                          const json_t *args, lk_http_request **out,
                          lk_err *err) LK_MUST_CHECK;

/* Wipes and frees r and everything it owns; NULL is a no-op. */
void lk_http_request_destroy(lk_http_request *r);

#endif
