/*
 * tool_fixture.h - the weather tool of DESIGN.md §3 with its credential type
 * inline, built on the stack: the valid definition that schema_test breaks
 * one rule of at a time and admin_test registers.
 *
 * Everything points into the fixture (base_url into its own buffer, so
 * normalizing in place is allowed); nothing is allocated.
 */
#ifndef LK_TESTS_TOOL_FIXTURE_H
#define LK_TESTS_TOOL_FIXTURE_H

#include "latchkey/v1/admin.pb-c.h"
#include "latchkey/v1/types.pb-c.h"

typedef struct {
  Latchkey__V1__Param city; /* path, required */
  Latchkey__V1__Param days; /* query */
  Latchkey__V1__Param note; /* body, used by op2 only */
  Latchkey__V1__Param *params[3];
  Latchkey__V1__Operation op; /* GET /v1/forecast/{city} (city, days) */
  Latchkey__V1__Operation *ops[2];
  Latchkey__V1__Operation op2; /* POST /v1/report (note) */
  Latchkey__V1__Tool tool;
  Latchkey__V1__CredentialField field; /* api_key, secret, with a pattern */
  Latchkey__V1__CredentialField *fields[2];
  Latchkey__V1__InjectRule rule; /* header X-Api-Key: {api_key} */
  Latchkey__V1__InjectRule *rules[1];
  Latchkey__V1__CredentialType type;     /* weather-key */
  Latchkey__V1__RegisterToolRequest req; /* tool with type inline */
  char base_url[64];
} tool_fx;

/* Fills t with a valid weather tool named id that needs type weather-key,
 * sent inline (t->req), base_url "https://api.weather.example/". */
void tool_fx_init(tool_fx *t, const char *id);

#endif
