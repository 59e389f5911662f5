"""The canary after a full fleet's life: one unique secret, entered through
latchkeyctl's stdin over TLS, used by a replica sidecar through every
event that moves or re-seals secrets (a key-ring rotation with its
background re-seal, a node-key rotation, a control-plane restart and a
sidecar restart), appears nowhere it must not:

- in no file under the cluster's dir: the sidecar's replica, etcd's data
  dir (its WAL and snapshots), the key ring, every log;
- in no log line and no audit line of latchkey-cp, latchkeyd or etcd,
  while the audit lines do carry the keyed hash `latchkeyctl audit-hash`
  prints for it, so the hash (never the value) is what an operator greps;
- in no Call answer or error, though the vendor echoed it every time;
- in no /proc/<pid>/cmdline or environ of the daemons, whose core-dump
  limit is 0.

The only place the secret may be is the vendor (nginx's own files), which
is where it is meant to go. Each check looks for the raw, base64,
base64url, percent-encoded and JSON-escaped forms (harness.secret_forms).
"""

import json
import os
import signal
import subprocess
import unittest

import grpc

import cluster
import harness
from cluster import wait_until
from pki import Pki

TYPE = "bearer-token"
TOOL = "echo-bearer"
AGENT = "agent-canary"
BUDGET = "b-canary"


class CanaryClusterTest(harness.E2EAssertions, unittest.TestCase):

    def setUp(self):
        c = cluster.Cluster("canary_cluster_test", control_planes=0)
        self.c = c
        self.addCleanup(self._close)
        self.pki = Pki(c.dir)
        self.cp = cluster.ControlPlane(c, "cp1",
                                       tls=self.pki.server + (self.pki.ca,))
        c.cps = [self.cp]
        c.start()
        self.answers = []

    def _close(self):
        problem = self.c.close()
        if problem:
            raise AssertionError(problem)

    def ctl(self, *args, stdin=None):
        """latchkeyctl over TLS against the control plane; must exit 0."""
        argv = [harness.latchkeyctl_path(), "--server", self.cp.addr,
                "--token-file", self.c.admin_token_file,
                "--tls-ca", self.pki.ca] + list(args)
        out = subprocess.run(argv, input=stdin, capture_output=True,
                             text=True, timeout=120, cwd=self.c.dir,
                             env=harness.daemon_env())
        self.assertEqual(out.returncode, 0, "latchkeyctl %s: %s"
                         % (" ".join(args), out.stderr))
        self.answers.append(out.stdout + out.stderr)
        return out

    def call_injects(self, side, secret, tag):
        """One call through side: the vendor got the canary, the agent an
        answer with it redacted."""
        answer = side.call(BUDGET, TOOL, "get", {"item": tag})
        self.answers.append(harness.whole_response(answer))
        self.assertTrue(answer.result.redacted, "the echo was not redacted")
        arrived = self.c.nginx.arrivals("/echo/" + tag)
        self.assertEqual([a["authorization"] for a in arrived],
                         ["Bearer " + secret])

    def settled_call(self, side, secret, tag):
        """Waits until side serves the tool, then checks one call."""
        wait_until(lambda: side.call(BUDGET, TOOL, "get", {"item": "w"}),
                   what="%s serving %s" % (side.name, TOOL))
        self.call_injects(side, secret, tag)

    def proc_checks(self, pid, secret, what):
        """The running daemon's argv and environment hold no canary and no
        token, and it may not dump core."""
        for name in ("cmdline", "environ"):
            with open("/proc/%d/%s" % (pid, name), "rb") as f:
                data = f.read()
            self.assertNoSecret(data, secret, "%s /proc %s" % (what, name))
            for token in (self.c.admin_token, self.c.node_token):
                self.assertNotIn(token.encode(), data, what + " " + name)
        with open("/proc/%d/limits" % pid) as f:
            core = [l.split() for l in f if l.startswith("Max core file")]
        self.assertEqual(core[0][4:6], ["0", "0"], what + " core limit")

    def test_canary_survives_rotation_and_restarts_without_leaking(self):
        c = self.c
        secret = harness.make_secret("canary-fleet")
        self.cp.register_type(harness.BEARER_TYPE)
        self.cp.register_tool(harness.echo_tool(TOOL, c.nginx.base_url, TYPE))
        out = self.ctl("credential", "create", "--type", TYPE, "--label",
                       "canary", stdin=json.dumps({"token": secret}))
        cred = harness.ctl_output_id(out.stdout)
        self.ctl("budget", "create", BUDGET, "--agent", AGENT)
        self.ctl("bind", BUDGET, "--tool", TOOL, "--credential", cred)
        side = c.sidecar("s1", AGENT, self.cp,
                         extra_args=["--tls-ca", self.pki.ca])
        self.settled_call(side, secret, "first")

        # Key-ring rotation: re-sealed in the background, old key retired.
        rotated = self.ctl("keys", "rotate")
        self.assertIn("re-sealing", rotated.stderr)
        keys = json.loads(self.ctl("--json", "keys", "status").stdout)
        self.assertEqual([k.get("state") for k in keys.get("keys", [])],
                         ["active"], keys)
        self.settled_call(side, secret, "after-keyring-rotation")

        # Node-key rotation at run time: SIGHUP, calls keep working.
        os.kill(side.daemon.pid, signal.SIGHUP)
        wait_until(lambda: side.events("node_key.rotated"),
                   what="the node key rotation")
        self.call_injects(side, secret, "after-node-key-rotation")

        # Control-plane restart, then sidecar restart.
        self.assertEqual(self.cp.stop(), 0)
        self.cp.start(same_port=True)
        c.wait_settled(self.cp, [AGENT])
        self.call_injects(side, secret, "after-cp-restart")
        self.assertEqual(side.stop(), 0)
        side.start()
        self.call_injects(side, secret, "after-sidecar-restart")

        # A failure on this tool says nothing about the credential.
        with self.assertRaises(grpc.RpcError) as ctx:
            side.call(BUDGET, TOOL, "get", {"item": 7})
        self.assertNoSecret(ctx.exception.details(), secret, "error")

        # The audit trail carries the keyed hash, the same after rotation.
        hashed = self.ctl("audit-hash", stdin=json.dumps({"token": secret}))
        fields = hashed.stdout.split()
        self.assertEqual(fields[0], "token")
        digest = fields[1]
        self.assertRegex(digest, "^[0-9a-f]{64}$")
        calls = [e for e in side.events("audit.tool_call", since_start=False)
                 if e.get("outcome") == "ok"]
        self.assertGreaterEqual(len(calls), 6)
        for event in calls:
            self.assertEqual(event.get("credential_id"), cred, event)
            self.assertEqual(event.get("secret_hashes"), {"token": digest},
                             event)
        admin = [json.loads(l) for l in self.cp.log().splitlines()
                 if '"event":"audit.admin"' in l]
        creates = [e for e in admin
                   if e.get("action") == "credential.create"]
        self.assertEqual([e.get("secret_hashes") for e in creates],
                         [{"token": digest}])

        for pid, what in ((self.cp.daemon.pid, "latchkey-cp"),
                          (side.daemon.pid, "latchkeyd"),
                          (c.etcd.proc.pid, "etcd")):
            if what == "etcd":
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    self.assertNoSecret(f.read(), secret, "etcd cmdline")
            else:
                self.proc_checks(pid, secret, what)

        for text in self.answers:
            self.assertNoSecret(text, secret, "answer or CLI output")

        # Clean shutdown flushes everything; then read every byte on disk
        # except the vendor's own files.
        self.assertEqual(side.stop(), 0)
        self.assertEqual(self.cp.stop(), 0)
        c.etcd.stop()
        vendor_dir = os.path.realpath(c.nginx.prefix)
        scanned = 0
        for dirpath, _dirs, files in os.walk(c.dir):
            if os.path.realpath(dirpath).startswith(vendor_dir):
                continue
            for name in files:
                path = os.path.join(dirpath, name)
                if not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                scanned += len(data)
                self.assertNoSecret(data, secret, "file " + path)
        self.assertGreater(scanned, 0)
        for place in (side.data_dir, c.etcd.data_dir):
            self.assertTrue(os.listdir(place), place + " is empty")


if __name__ == "__main__":
    harness.main()
