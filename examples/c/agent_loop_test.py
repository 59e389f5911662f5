"""examples/c/agent_loop runs its scripted conversation against a real
latchkeyd (tests/interop/stack.py): the model is offered the budget's
functions with their JSON Schemas, its first call returns the vendor's
echo with the credential shown only as [REDACTED], and its second call, to
a tool with no credential bound, shows the user the setup link. Without
the agent token it says why and exits 1.

    bazel test //examples/c:example_c_test
"""

import json
import os
import subprocess
import tempfile
import unittest

ROOT = os.getcwd()   # the runfiles root (run_interop.sh cds there)
EXAMPLE = os.path.join(ROOT, "examples", "c", "agent_loop")
SCRIPT = os.path.join(ROOT, "examples", "llm_script.json")
SECRET = os.environ["LATCHKEY_INTEROP_SECRET"]
with open(os.environ["LATCHKEY_INTEROP_FIXTURE"]) as _f:
    FIXTURE = json.load(_f)


class AgentLoopExampleTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(
            dir=os.environ.get("TEST_TMPDIR"))
        self.token_file = os.path.join(self.tmp.name, "agent.token")
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(FIXTURE["agent_token"] + "\n")
        self.env = dict(os.environ,
                        LATCHKEY_SIDECAR=FIXTURE["address"],
                        LATCHKEY_AGENT_TOKEN_FILE=self.token_file)

    def tearDown(self):
        self.tmp.cleanup()

    def run_example(self, env):
        out = subprocess.run([EXAMPLE, "--budget", FIXTURE["budget"],
                              "--script", SCRIPT],
                             env=env, capture_output=True, text=True,
                             timeout=60)
        self.assertNotIn(SECRET, out.stdout + out.stderr)
        self.assertNotIn(FIXTURE["agent_token"], out.stdout + out.stderr)
        return out

    def test_scripted_conversation_shows_redacted_result_and_setup_link(self):
        out = self.run_example(self.env)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        lines = out.stdout.splitlines()
        self.assertTrue(
            lines[0].startswith("functions offered to the model: "))
        for name in ("echo__get", "echo__post", "unbound__get", "slow__wait"):
            self.assertIn(name, lines[0])
        self.assertNotIn("not offer", out.stdout)

        # The definitions are what an LLM API takes, schemas included.
        prefix = "function definitions: "
        self.assertTrue(lines[1].startswith(prefix))
        defs = {d["function"]["name"]: d
                for d in json.loads(lines[1][len(prefix):])}
        get = defs["echo__get"]
        self.assertEqual(get["type"], "function")
        self.assertEqual(get["function"]["parameters"]["type"], "object")
        self.assertEqual(get["function"]["parameters"]["required"], ["item"])
        self.assertEqual(
            get["function"]["parameters"]["properties"]["n"]["type"],
            "integer")
        self.assertIn("tool echo", get["function"]["description"])

        # First call: the vendor's echo, secret scrubbed.
        call = lines.index('assistant calls echo__get({"item": "oslo", '
                           '"q": "rain"})')
        self.assertEqual(lines[call + 1],
                         "  -> HTTP 200 application/json, redacted=true")
        echo = json.loads(lines[call + 2].strip())
        self.assertEqual(echo["authorization"], "Bearer [REDACTED]")
        self.assertEqual(echo["uri"], "/echo/oslo?q=rain")

        # Second call: no credential bound; the user gets the setup link.
        setup_url = FIXTURE["setup_url_template"].format(
            tool=FIXTURE["unbound_tool"], budget=FIXTURE["budget"],
            type=FIXTURE["unbound_type"])
        call = lines.index('assistant calls unbound__get({"item": "oslo"})')
        self.assertEqual(lines[call + 1:call + 4], [
            "  -> Latchkey: tool 'unbound' needs a credential (%s) before "
            "it can run." % FIXTURE["unbound_type"],
            "     field api_key (secret): The vendor's API key",
            "     Set it up here: " + setup_url])
        self.assertTrue(lines[-1].startswith(
            "assistant: The echo service answered."))

    def test_without_the_agent_token_it_says_why_and_fails(self):
        env = dict(self.env)
        del env["LATCHKEY_AGENT_TOKEN_FILE"]
        out = self.run_example(env)
        self.assertEqual(out.returncode, 1)
        self.assertIn("cannot list the tools of budget main: "
                      "UNAUTHENTICATED: missing or wrong agent token",
                      out.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
