"""latchkeyctl against a real standalone latchkeyd: the README walkthrough
(register a tool from a JSON file, create a credential with its secret on
stdin, list it masked, create a budget, bind, call, list tools), and the
exit-status contract (0 ok, 1 failed call, 2 usage)."""

import json
import os

import harness

AGENT = harness.AGENT


def weather_tool(base_url):
    return {
        "id": "weather",
        "description": "Forecasts by city",
        "base_url": base_url,
        "credential_type": {
            "id": "weather-key",
            "fields": [
                {"name": "api_key", "secret": True,
                 "pattern": "^[A-Za-z0-9_-]{16,128}$",
                 "description": "API key from the vendor's dashboard"}],
            "inject": [{"in": "header", "name": "X-Api-Key",
                        "value": "{api_key}"}],
        },
        "operations": [
            {"name": "forecast", "method": "GET",
             "path": "/v1/forecast/{city}",
             "description": "Forecast for the next days",
             "params": [
                 {"name": "city", "in": "path", "type": "string",
                  "required": True},
                 {"name": "days", "in": "query", "type": "integer"}]}],
    }


class CliTest(harness.StackTestCase):
    with_catalog = False

    def setUp(self):
        super().setUp()
        self.secret = "wk_" + os.urandom(16).hex()
        self.tool_file = os.path.join(self.lk.dir, "weather.json")
        with open(self.tool_file, "w") as f:
            json.dump(weather_tool(self.lk.nginx.base_url), f, indent=2)

    def ok(self, *args, stdin=None, admin=True):
        out = self.lk.ctl(*args, stdin=stdin, admin=admin)
        self.assertEqual(out.returncode, 0,
                         "latchkeyctl %s failed (%d):\n%s%s"
                         % (" ".join(args), out.returncode, out.stdout,
                            out.stderr))
        self.assertNoSecret(out.stdout + out.stderr, self.secret,
                            "latchkeyctl output")
        return out.stdout

    def walkthrough(self):
        """The README's steps up to a bound credential; returns its id."""
        self.ok("tool", "register", self.tool_file)
        out = self.ok("credential", "create", "--type", "weather-key",
                      "--label", "demo key",
                      stdin=json.dumps({"api_key": self.secret}))
        cred_id = harness.ctl_output_id(out)
        self.assertTrue(cred_id)
        self.ok("budget", "create", "demo", "--agent", AGENT)
        self.ok("bind", "demo", "--tool", "weather", "--credential", cred_id)
        return cred_id

    def sidecar(self, *args):
        return self.lk.ctl(*args[:1], "--sidecar", self.lk.agent_addr,
                           *args[1:], admin=False)

    def test_readme_walkthrough_ends_in_a_redacted_vendor_answer(self):
        cred_id = self.walkthrough()
        self.assertIn("weather", self.ok("tool", "list"))
        listing = self.ok("credential", "list")
        self.assertIn(cred_id, listing)
        self.assertIn("demo key", listing)
        self.assertIn("demo", self.ok("budget", "list"))

        out = self.sidecar("call", "--budget", "demo", "--tool", "weather",
                           "--op", "forecast",
                           "--args", '{"city": "paris", "days": 3}')
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("[REDACTED]", out.stdout)
        self.assertIn("/v1/forecast/paris", out.stdout)
        self.assertNoSecret(out.stdout + out.stderr, self.secret)
        arrived = self.lk.nginx.arrivals("/v1/forecast/paris")
        self.assertEqual(arrived[-1]["x_api_key"], self.secret)
        self.assertEqual(arrived[-1]["args"], "days=3")

        out = self.sidecar("tools", "--budget", "demo")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("weather", out.stdout)
        self.assertIn("forecast", out.stdout)

    def test_credential_list_and_show_are_masked(self):
        cred_id = self.walkthrough()
        for args in (("credential", "list"), ("credential", "show", cred_id),
                     ("--json", "credential", "list"),
                     ("--json", "credential", "show", cred_id)):
            with self.subTest(args=args):
                out = self.ok(*args)
                self.assertIn(cred_id, out)
                self.assertNotIn(self.secret[:-4], out)
        doc = json.loads(self.ok("--json", "credential", "show", cred_id))
        self.assertIn(self.secret[-4:], json.dumps(doc, ensure_ascii=False))

    def test_secret_never_travels_in_argv(self):
        # The only way in is stdin: a secret given as an argument is a
        # usage error, so it cannot end up in shell history or ps.
        out = self.lk.ctl("tool", "register", self.tool_file)
        self.assertEqual(out.returncode, 0, out.stderr)
        out = self.lk.ctl("credential", "create", "--type", "weather-key",
                          "--label", "x", "--api_key", self.secret)
        self.assertEqual(out.returncode, 2, out.stdout + out.stderr)

    def test_call_of_unbound_tool_shows_missing_credential_hint(self):
        self.ok("tool", "register", self.tool_file)
        self.ok("budget", "create", "demo", "--agent", AGENT)
        out = self.sidecar("call", "--budget", "demo", "--tool", "weather",
                           "--op", "forecast", "--args", '{"city": "rome"}')
        text = out.stdout + out.stderr
        self.assertIn("latchkeyctl credential create --type weather-key", text)
        self.assertIn("latchkeyctl bind demo --tool weather", text)
        self.assertIn("api_key", text)
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])

    def test_budget_pause_and_resume(self):
        self.walkthrough()
        self.ok("budget", "pause", "demo")
        out = self.sidecar("call", "--budget", "demo", "--tool", "weather",
                           "--op", "forecast", "--args", '{"city": "oslo"}')
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertTrue(out.stderr.strip())
        self.ok("budget", "resume", "demo")
        out = self.sidecar("call", "--budget", "demo", "--tool", "weather",
                           "--op", "forecast", "--args", '{"city": "oslo"}')
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_credential_update_reads_new_secret_from_stdin(self):
        cred_id = self.walkthrough()
        new_secret = "wk_" + os.urandom(16).hex()
        out = self.lk.ctl("credential", "update", cred_id,
                          stdin=json.dumps({"api_key": new_secret}))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn(new_secret, out.stdout + out.stderr)
        out = self.sidecar("call", "--budget", "demo", "--tool", "weather",
                           "--op", "forecast", "--args", '{"city": "lima"}')
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(
            self.lk.nginx.arrivals("/v1/forecast/lima")[-1]["x_api_key"],
            new_secret)

    def test_unbind_then_delete(self):
        cred_id = self.walkthrough()
        self.ok("unbind", "demo", "--tool", "weather")
        self.ok("credential", "delete", cred_id)
        self.assertNotIn(cred_id, self.ok("credential", "list"))
        self.ok("budget", "delete", "demo")
        self.ok("tool", "delete", "weather")
        self.assertNotIn("weather", self.ok("tool", "list"))

    def test_usage_errors_exit_2(self):
        for args in ((), ("no-such-command",), ("bind", "demo"),
                     ("credential", "create")):
            with self.subTest(args=args):
                out = self.lk.ctl(*args)
                self.assertEqual(out.returncode, 2,
                                 out.stdout + out.stderr)
                self.assertTrue(out.stderr.strip())

    def test_server_judges_what_a_definition_means(self):
        # latchkeyctl checks only a document's shape; the server (lib/schema)
        # judges its content, and its answer is what the owner reads.
        def register(name, tool):
            path = os.path.join(self.lk.dir, name)
            with open(path, "w") as f:
                json.dump(tool, f)
            return self.lk.ctl("tool", "register", path)

        tool = weather_tool(self.lk.nginx.base_url)
        tool["operations"][0]["method"] = "get"
        out = register("lower-method.json", tool)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("latchkeyctl: INVALID_ARGUMENT: operation 'forecast': "
                      "method must be GET, POST, PUT, PATCH or DELETE",
                      out.stderr)

        tool = weather_tool(self.lk.nginx.base_url)
        tool["credential_type"]["inject"][0]["in"] = "cookie"
        out = register("cookie-rule.json", tool)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("INVALID_ARGUMENT: credential type 'weather-key' "
                      "inject[0]: \"in\" must be header, query, basic or "
                      "body", out.stderr)
        self.assertNotIn("weather", self.ok("tool", "list"))
        self.assertNotIn("weather-key", self.ok("type", "list"))

    def test_failed_calls_exit_1_with_a_message(self):
        out = self.lk.ctl("tool", "show", "no-such-tool")
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertTrue(out.stderr.strip())
        bad_token = os.path.join(self.lk.dir, "bad.token")
        with open(bad_token, "w") as f:
            f.write("not-the-token\n")
        os.chmod(bad_token, 0o600)
        out = self.lk.ctl("--server", self.lk.admin_addr, "--token-file",
                          bad_token, "tool", "list", admin=False)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertTrue(out.stderr.strip())
        out = self.sidecar("call", "--budget", "nope", "--tool", "weather",
                           "--op", "forecast", "--args", "{}")
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)


if __name__ == "__main__":
    harness.main()
