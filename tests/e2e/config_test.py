"""latchkeyd's command line: every flag can come from LATCHKEY_<FLAG>, and
a missing required flag stops it at start with a message instead of running
half-configured."""

import json
import os
import re
import shutil
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


LATCHKEYD_FLAGS = (
    "listen", "agent-id", "data-dir", "node-key", "admin-listen",
    "admin-token-file", "agent-token-file", "control-plane",
    "control-plane-token-file", "tls-ca", "rotate-node-key",
    "max-staleness", "allow-insecure-vendors", "setup-url-template",
    "max-response-bytes", "workers", "log-level", "health-listen",
    "drain-timeout", "check-config", "oauth-refresh-margin",
    "oauth-retry-max", "allow-insecure-token-urls")
CP_FLAGS = (
    "listen", "etcd", "etcd-prefix", "keyring", "admin-token-file",
    "node-token-file", "tls-cert", "tls-key", "workers", "log-level",
    "health-listen", "drain-timeout", "check-config", "oauth-refresh-margin",
    "oauth-retry-max", "allow-insecure-token-urls")


def latchkey_cp_path():
    return os.environ.get("LATCHKEY_CP") or harness.runfile(
        "controlplane/latchkey-cp")


def help_flags(binary):
    """{flag: (env var, line)} from binary --help, which must exit 0."""
    proc = subprocess.run([binary, "--help"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    found = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"\s+--([a-z0-9-]+)\b.*\[(LATCHKEY_[A-Z0-9_]+)\]$", line)
        if m:
            found[m.group(1)] = (m.group(2), line)
    return found


class ConfigCheckTest(harness.StackTestCase):
    """Bad values stop latchkeyd with one line naming the flag (exit 2);
    --check-config runs the same checks without starting."""

    with_catalog = False

    def _run(self, args, env=None, binary=None):
        return subprocess.run([binary or harness.latchkeyd_path()] + args,
                              env=env or self.lk.daemon_env(),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30)

    def _replace(self, args, flag, value):
        args = list(args)
        i = args.index(flag)
        args[i + 1] = value
        return args

    def _refused(self, args, flag, env=None, binary=None):
        proc = self._run(args, env, binary)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn(flag, lines[0])
        self.assertNotIn("Traceback", proc.stderr)
        return lines[0]

    def test_bad_values_exit_2_with_one_line_naming_the_flag(self):
        self.lk.stop_daemon()
        shutil.rmtree(self.lk.data_dir, ignore_errors=True)
        base = self.lk.daemon_args()
        cases = [
            (self._replace(base, "--max-response-bytes", "abc"),
             "--max-response-bytes"),
            (self._replace(base, "--max-response-bytes", "0"),
             "--max-response-bytes"),
            (self._replace(base, "--admin-listen", "127.0.0.1:http"),
             "--admin-listen"),
            (self._replace(base, "--admin-listen", "127.0.0.1:70000"),
             "--admin-listen"),
            (self._replace(base, "--listen", "unix:relative.sock"),
             "--listen"),
            (self._replace(base, "--listen", "unix:/no/such/dir/a.sock"),
             "--listen"),
            (self._replace(base, "--admin-token-file",
                           os.path.join(self.lk.dir, "missing.token")),
             "--admin-token-file"),
            (base + ["--max-staleness", "-1"], "--max-staleness"),
            (base + ["--drain-timeout", "soon"], "--drain-timeout"),
            (base + ["--health-listen", "nohostport"], "--health-listen"),
            (base + ["--log-level", "loud"], "--log-level"),
            (base + ["--oauth-refresh-margin", "0"], "--oauth-refresh-margin"),
            (base + ["--oauth-retry-max", "5m"], "--oauth-retry-max"),
        ]
        for args, flag in cases:
            with self.subTest(flag=flag, args=args[-2:]):
                self._refused(args, flag)
        # The same through the environment names the variable's flag too.
        env = dict(self.lk.daemon_env(), LATCHKEY_MAX_RESPONSE_BYTES="abc")
        i = base.index("--max-response-bytes")
        line = self._refused(base[:i] + base[i + 2:], "--max-response-bytes",
                             env)
        self.assertIn("LATCHKEY_MAX_RESPONSE_BYTES", line)
        self.assertFalse(os.path.exists(self.lk.data_dir))

    def test_check_config_says_ok_and_starts_nothing(self):
        self.lk.stop_daemon()
        shutil.rmtree(self.lk.data_dir, ignore_errors=True)
        proc = self._run(self.lk.daemon_args() + ["--check-config"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "config ok\n")
        self.assertFalse(os.path.exists(self.lk.data_dir))
        self.assertFalse(os.path.exists(self.lk.agent_sock))
        env = dict(self.lk.daemon_env(), LATCHKEY_CHECK_CONFIG="true")
        self.assertEqual(self._run(self.lk.daemon_args(), env).stdout,
                         "config ok\n")

    def test_check_config_finds_bad_files(self):
        self.lk.stop_daemon()
        base = self.lk.daemon_args() + ["--check-config"]
        os.chmod(self.lk.token_file, 0o666)
        self._refused(base, "--admin-token-file")
        os.chmod(self.lk.token_file, 0o600)
        blocker = os.path.join(self.lk.dir, "a-file")
        with open(blocker, "w") as f:
            f.write("x")
        self._refused(self._replace(base, "--data-dir",
                                    os.path.join(blocker, "data")),
                      "--data-dir")
        with open(self.lk.node_key, "w") as f:
            f.write("x")
        os.chmod(self.lk.node_key, 0o644)
        self._refused(base, "--node-key")

    def test_check_config_knows_the_oauth_flags(self):
        self.lk.stop_daemon()
        base = self.lk.daemon_args() + ["--check-config"]
        proc = self._run(base + ["--oauth-refresh-margin", "60",
                                 "--oauth-retry-max", "30",
                                 "--allow-insecure-token-urls"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "config ok\n")
        self._refused(base + ["--oauth-refresh-margin", "604801"],
                      "--oauth-refresh-margin must be between 1 and 604800")
        self._refused(base + ["--oauth-retry-max", "0"],
                      "--oauth-retry-max must be between 1 and 86400")
        env = dict(self.lk.daemon_env(), LATCHKEY_OAUTH_REFRESH_MARGIN="abc")
        self.assertIn("LATCHKEY_OAUTH_REFRESH_MARGIN",
                      self._refused(base, "--oauth-refresh-margin", env))
        # A replica's credentials are refreshed by its control plane: the
        # flags are refused there, naming where they belong.
        replica = ["--listen", self.lk.agent_addr,
                   "--agent-id", self.lk.agent_id,
                   "--data-dir", self.lk.data_dir,
                   "--node-key", self.lk.node_key,
                   "--control-plane", "127.0.0.1:7700",
                   "--control-plane-token-file", self.lk.token_file,
                   "--check-config"]
        proc = self._run(replica)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for extra in (["--allow-insecure-token-urls"],
                      ["--oauth-refresh-margin", "60"],
                      ["--oauth-retry-max", "30"]):
            line = self._refused(replica + extra, extra[0])
            self.assertIn("apply to standalone mode only", line)
            self.assertIn("latchkey-cp", line)

    def test_latchkey_cp_check_config(self):
        self.lk.stop_daemon()
        token = os.path.join(self.lk.dir, "node.token")
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("node-" + os.urandom(8).hex() + "\n")
        args = ["--listen", "127.0.0.1:%d" % harness.free_port(),
                "--keyring", os.path.join(self.lk.dir, "keyring"),
                "--admin-token-file", self.lk.token_file,
                "--node-token-file", token, "--check-config"]
        cp = latchkey_cp_path()
        proc = self._run(args, binary=cp)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "config ok\n")
        self.assertFalse(os.path.exists(os.path.join(self.lk.dir, "keyring")))
        self._refused(self._replace(args, "--node-token-file",
                                    token + ".missing"),
                      "--node-token-file", binary=cp)
        self._refused(self._replace(args, "--listen", "localhost"),
                      "--listen", binary=cp)
        self._refused(args + ["--tls-cert", token + ".pem", "--tls-key",
                              token], "--tls-cert", binary=cp)
        self._refused(args + ["--drain-timeout", "-5s"], "--drain-timeout",
                      binary=cp)
        self._refused(args + ["--oauth-refresh-margin", "0"],
                      "--oauth-refresh-margin", binary=cp)
        self._refused(args + ["--oauth-retry-max", "5m"], "--oauth-retry-max",
                      binary=cp)

    def test_help_lists_every_flag_with_default_and_variable(self):
        for binary, expected in ((harness.latchkeyd_path(), LATCHKEYD_FLAGS),
                                 (latchkey_cp_path(), CP_FLAGS)):
            found = help_flags(binary)
            for flag in expected:
                self.assertIn(flag, found, binary)
            for flag, (env, _) in found.items():
                self.assertEqual(
                    env, "LATCHKEY_" + flag.upper().replace("-", "_"))
        d = help_flags(harness.latchkeyd_path())
        self.assertIn("(default 30s)", d["drain-timeout"][1])
        self.assertIn("(default 1048576)", d["max-response-bytes"][1])
        self.assertIn("(default info)", d["log-level"][1])
        self.assertIn("(default 300)", d["oauth-refresh-margin"][1])
        self.assertIn("(default 300)", d["oauth-retry-max"][1])
        self.assertIn("(default false)", d["allow-insecure-token-urls"][1])
        c = help_flags(latchkey_cp_path())
        self.assertIn("(default 300)", c["oauth-refresh-margin"][1])
        self.assertIn("(default 300)", c["oauth-retry-max"][1])
        self.assertIn("(default false)", c["allow-insecure-token-urls"][1])


if __name__ == "__main__":
    harness.main()
