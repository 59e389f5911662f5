"""A call with no credential bound answers (gRPC OK) with a structured
missing_credential: which fields to provide, their rules and where, and
never any value."""

import os

import harness

WEATHER = {
    "id": "weather",
    "description": "Forecasts by city",
    "credential_type": {
        "id": "weather-key",
        "fields": [
            {"name": "api_key", "secret": True,
             "pattern": "^[A-Za-z0-9_-]{16,128}$",
             "description": "API key from the vendor's dashboard"},
            {"name": "account", "secret": False, "pattern": "^[a-z]{3,20}$",
             "description": "Account name"}],
        "inject": [{"in": "header", "name": "X-Api-Key",
                    "value": "{api_key}"}],
    },
    "operations": [
        {"name": "forecast", "method": "GET", "path": "/v1/forecast/{city}",
         "description": "Forecast for the next days",
         "params": [
             {"name": "city", "in": "path", "type": "string",
              "required": True},
             {"name": "days", "in": "query", "type": "integer"}]}],
}


class MissingCredentialTest(harness.StackTestCase):

    def setUp(self):
        super().setUp()
        tool = dict(WEATHER, base_url=self.lk.nginx.base_url)
        self.lk.register_tool(tool)

    def test_unbound_tool_answers_missing_credential_with_field_rules(self):
        resp = self.lk.call("main", "weather", "forecast", {"city": "oslo"})
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")
        mc = resp.missing_credential
        self.assertEqual(mc.budget_id, "main")
        self.assertEqual(mc.tool_id, "weather")
        self.assertEqual(mc.credential_type, "weather-key")
        fields = {f.name: f for f in mc.required_fields}
        self.assertEqual(set(fields), {"api_key", "account"})
        self.assertTrue(fields["api_key"].secret)
        self.assertEqual(fields["api_key"].pattern, "^[A-Za-z0-9_-]{16,128}$")
        self.assertEqual(fields["api_key"].description,
                         "API key from the vendor's dashboard")
        self.assertFalse(fields["account"].secret)
        self.assertEqual(fields["account"].pattern, "^[a-z]{3,20}$")
        self.assertEqual(fields["account"].description, "Account name")
        # Nothing was sent to the vendor.
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])

    def test_missing_credential_renders_setup_url_from_template(self):
        resp = self.lk.call("main", "weather", "forecast", {"city": "oslo"})
        self.assertEqual(
            resp.missing_credential.setup_url,
            "https://setup.latchkey.example/weather?budget=main"
            "&type=weather-key")

    def test_missing_credential_hint_names_the_exact_commands(self):
        resp = self.lk.call("main", "weather", "forecast", {"city": "oslo"})
        hint = resp.missing_credential.hint
        self.assertIn("latchkeyctl credential create --type weather-key", hint)
        self.assertIn("latchkeyctl bind main --tool weather", hint)

    def test_missing_credential_carries_no_value_of_other_credentials(self):
        secret = "wk_" + os.urandom(12).hex()
        self.lk.create_budget("other")
        self.credential("weather-key", {"api_key": secret,
                                        "account": "zeta"},
                        bind_tool="weather", budget="other")
        resp = self.lk.call("main", "weather", "forecast", {"city": "oslo"})
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")
        whole = harness.whole_response(resp)
        self.assertNoSecret(whole, secret)
        self.assertNotIn(b"zeta", whole)

    def test_binding_a_credential_turns_missing_into_a_result(self):
        self.assertEqual(self.lk.call("main", "weather", "forecast",
                                      {"city": "oslo"}).WhichOneof("outcome"),
                         "missing_credential")
        secret = "wk_" + "a1" * 10
        self.credential("weather-key", {"api_key": secret, "account": "acme"},
                        bind_tool="weather")
        resp = self.lk.call("main", "weather", "forecast", {"city": "oslo"})
        self.assertEqual(resp.WhichOneof("outcome"), "result")
        self.assertEqual(self.lk.nginx.arrivals("/v1/forecast/oslo")[-1]
                         ["x_api_key"], secret)

    def test_unbinding_turns_a_result_back_into_missing(self):
        secret = "wk_" + "b2" * 10
        self.credential("weather-key", {"api_key": secret, "account": "acme"},
                        bind_tool="weather")
        self.assertEqual(self.lk.call("main", "weather", "forecast",
                                      {"city": "rome"}).WhichOneof("outcome"),
                         "result")
        self.lk.unbind("main", tool="weather")
        resp = self.lk.call("main", "weather", "forecast", {"city": "rome"})
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")


class MissingWithoutSetupUrlTest(harness.StackTestCase):
    stack_options = {"setup_url_template": None}

    def test_setup_url_is_empty_when_no_template_is_configured(self):
        self.lk.register_tool(dict(WEATHER, base_url=self.lk.nginx.base_url))
        resp = self.lk.call("main", "weather", "forecast", {"city": "oslo"})
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")
        self.assertEqual(resp.missing_credential.setup_url, "")
        self.assertIn("latchkeyctl bind main --tool weather",
                      resp.missing_credential.hint)


if __name__ == "__main__":
    harness.main()
