"""latchkeyd's command line: every flag can come from LATCHKEY_<FLAG>, and
a missing required flag stops it at start with a message instead of running
half-configured."""

import json
import os
import subprocess

import harness


class ConfigTest(harness.StackTestCase):
    with_catalog = False

    def _flags_as_env(self, args):
        """--flag value / --switch pairs turned into LATCHKEY_FLAG=value."""
        env = self.lk.daemon_env()
        i = 0
        while i < len(args):
            name = "LATCHKEY_" + args[i][2:].upper().replace("-", "_")
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                env[name] = args[i + 1]
                i += 2
            else:
                env[name] = "1"
                i += 1
        return env

    def test_every_flag_can_come_from_the_environment(self):
        args = self.lk.daemon_args()
        self.lk.stop_daemon()
        self.lk.start_daemon(args=[], env=self._flags_as_env(args))
        with open("/proc/%d/cmdline" % self.lk.daemon.pid, "rb") as f:
            cmdline = f.read()
        self.assertNotIn(b"--data-dir", cmdline)
        # The admin listener, token, data dir, insecure-vendor switch and
        # setup URL template all took effect.
        self.lk.create_budget("main")
        self.lk.register_tool(harness.echo_tool(
            "t", self.lk.nginx.base_url, dict(harness.APIKEY_TYPE)))
        resp = self.lk.call("main", "t", "get", {"item": "env"})
        self.assertEqual(resp.missing_credential.setup_url,
                         "https://setup.latchkey.example/t?budget=main"
                         "&type=api-key")
        self.lk.bind("main", self.lk.create_credential(
            "api-key", {"api_key": "k" * 16}).id, tool="t")
        resp = self.lk.call("main", "t", "get", {"item": "env"})
        self.assertEqual(json.loads(resp.result.body)["x_api_key"],
                         "[REDACTED]")
        self.assertTrue(os.listdir(self.lk.data_dir))

    def _start_fails(self, args, env=None):
        self.lk.stop_daemon()
        proc = subprocess.run([harness.latchkeyd_path()] + args,
                              env=env or self.lk.daemon_env(),
                              stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)
        self.assertNotEqual(proc.returncode, 0)
        self.assertTrue(proc.stderr.strip())
        return proc

    def test_missing_agent_id_refuses_to_start(self):
        args = self.lk.daemon_args()
        i = args.index("--agent-id")
        proc = self._start_fails(args[:i] + args[i + 2:])
        self.assertIn(b"agent-id", proc.stderr)

    def test_admin_listener_without_token_file_refuses_to_start(self):
        args = self.lk.daemon_args()
        i = args.index("--admin-token-file")
        proc = self._start_fails(args[:i] + args[i + 2:])
        self.assertIn(b"admin-token-file", proc.stderr)

    def test_unknown_flag_refuses_to_start(self):
        self._start_fails(self.lk.daemon_args() + ["--no-such-flag"])

    def test_rotate_node_key_in_standalone_mode_is_a_usage_error(self):
        for args, env in (
                (self.lk.daemon_args() + ["--rotate-node-key"], None),
                (self.lk.daemon_args(), dict(self.lk.daemon_env(),
                                             LATCHKEY_ROTATE_NODE_KEY="1"))):
            proc = self._start_fails(args, env)
            self.assertEqual(proc.returncode, 2)
            self.assertIn(b"--rotate-node-key applies to replica mode only",
                          proc.stderr)
            self.assertFalse(os.path.exists(self.lk.node_key + ".next"))

    def test_help_lists_rotate_node_key_and_its_variable(self):
        proc = subprocess.run([harness.latchkeyd_path(), "--help"],
                              capture_output=True, timeout=30)
        self.assertEqual(proc.returncode, 0)
        help_text = proc.stdout + proc.stderr
        self.assertIn(b"--rotate-node-key", help_text)
        self.assertIn(b"LATCHKEY_ROTATE_NODE_KEY", help_text)


if __name__ == "__main__":
    harness.main()
