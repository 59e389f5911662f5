/*
 * tool_fixture.c - the weather tool fixture (tool_fixture.h).
 */
#include "tests/unit/tool_fixture.h"

#include <stdio.h>

void tool_fx_init(tool_fx *t, const char *id) {
  latchkey__v1__param__init(&t->city);
  t->city.name = (char *)"city";
  t->city.in = (char *)"path";
  t->city.type = (char *)"string";
  t->city.required = 1;
  latchkey__v1__param__init(&t->days);
  t->days.name = (char *)"days";
  t->days.in = (char *)"query";
  t->days.type = (char *)"integer";
  latchkey__v1__param__init(&t->note);
  t->note.name = (char *)"note";
  t->note.in = (char *)"body";
  t->note.type = (char *)"string";
  t->params[0] = &t->city;
  t->params[1] = &t->days;
  t->params[2] = &t->note;
  latchkey__v1__operation__init(&t->op);
  t->op.name = (char *)"forecast";
  t->op.method = (char *)"GET";
  t->op.path = (char *)"/v1/forecast/{city}";
  t->op.n_params = 2;
  t->op.params = t->params;
  latchkey__v1__operation__init(&t->op2);
  t->op2.name = (char *)"report";
  t->op2.method = (char *)"POST";
  t->op2.path = (char *)"/v1/report";
  t->op2.n_params = 1;
  t->op2.params = &t->params[2];
  t->ops[0] = &t->op;
  t->ops[1] = &t->op2;
  latchkey__v1__tool__init(&t->tool);
  t->tool.id = (char *)id;
  t->tool.description = (char *)"Forecasts by city";
  snprintf(t->base_url, sizeof(t->base_url), "%s",
           "https://api.weather.example/");
  t->tool.base_url = t->base_url;
  t->tool.credential_type = (char *)"weather-key";
  t->tool.n_operations = 2;
  t->tool.operations = t->ops;
  latchkey__v1__credential_field__init(&t->field);
  t->field.name = (char *)"api_key";
  t->field.secret = 1;
  t->field.pattern = (char *)"^[A-Za-z0-9_-]{16,128}$";
  t->fields[0] = &t->field;
  latchkey__v1__inject_rule__init(&t->rule);
  t->rule.in = (char *)"header";
  t->rule.name = (char *)"X-Api-Key";
  t->rule.value = (char *)"{api_key}";
  t->rules[0] = &t->rule;
  latchkey__v1__credential_type__init(&t->type);
  t->type.id = (char *)"weather-key";
  t->type.n_fields = 1;
  t->type.fields = t->fields;
  t->type.n_inject = 1;
  t->type.inject = t->rules;
  latchkey__v1__register_tool_request__init(&t->req);
  t->req.tool = &t->tool;
  t->req.credential_type = &t->type;
}
