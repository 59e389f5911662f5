/*
 * args.h - validating an agent's arguments_json against an operation.
 *
 * Why: arguments_json is written by an LLM, so it is untrusted text that
 * may be malformed, name parameters that do not exist, or carry a secret
 * the model pasted by mistake. This module is the single gate between that
 * text and the request builder (inject.h): it turns it into a jansson
 * object holding exactly the operation's declared params with their
 * declared JSON types, and it publishes the same contract as a JSON-Schema
 * object for LLM function calling, so what the model is told and what the
 * sidecar accepts cannot drift apart.
 *
 * What makes an operation's params well formed (names, locations, types)
 * is registration's business: lib/schema.h checks it, and this module
 * trusts it except for a type it does not know (LK_FAILED_PRECONDITION).
 *
 * Invariants: error messages name parameters and types, never argument
 * values; input is capped at LK_ARGS_MAX_BYTES before it is parsed.
 */
#ifndef LK_ARGS_H
#define LK_ARGS_H

#include <stddef.h>

#include <jansson.h>

#include "latchkey/v1/types.pb-c.h"
#include "lib/status.h"

/* Largest arguments_json accepted, in bytes. */
#define LK_ARGS_MAX_BYTES ((size_t)1024 * 1024)

/* Parses the len bytes at json (an empty or all-whitespace string means {})
 * into *out, a new JSON object the caller json_decref()s, holding only
 * op's declared params with their declared types and every required one;
 * LK_INVALID_ARGUMENT with an actionable reason otherwise, or
 * LK_RESOURCE_EXHAUSTED when len exceeds LK_ARGS_MAX_BYTES. */
lk_status lk_args_parse(const Latchkey__V1__Operation *op, const char *json,
                        size_t len, json_t **out, lk_err *err) LK_MUST_CHECK;

/* Sets *out_json to a malloc'd (free()) compact JSON-Schema object text
 * {"type":"object","properties":{...},"required":[...],
 * "additionalProperties":false} describing op's params. */
lk_status lk_args_schema(const Latchkey__V1__Operation *op, char **out_json,
                         lk_err *err) LK_MUST_CHECK;

#endif
