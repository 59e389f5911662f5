"""Key rotation end to end: a real etcd, a real latchkey-cp, a real
latchkeyd replica and a real nginx vendor (tests/e2e/cluster.py), driven by
the real latchkeyctl.

`latchkeyctl keys rotate` runs while a thread makes tool calls through the
sidecar without pause: none may fail, and nginx must receive each call's
own credential. Afterwards the key ring file holds only the new key and
every credential in etcd (read with etcdctl, not through Latchkey) is
sealed under it. A control plane killed with SIGKILL mid-rotation finishes
the rotation by itself once restarted. Audit hashes do not move: the
control plane's AuditHash (`latchkeyctl audit-hash`), the replica's
audit.tool_call lines and the key ring's audit line are the same before
`keys rotate` and after it has retired the old key, also across a restart
of the control plane. A standalone sidecar refuses the key-ring methods.

Every wait is a bounded poll for the state the test then asserts.
"""

import base64
import hashlib
import json
import threading
import time
import unittest

import grpc

import cluster
import harness
from cluster import wait_until
from latchkey.v1 import admin_pb2
from latchkey.v1 import types_pb2

AGENT = "agent-a"
BUDGET = "budget-a"
TYPE = "bearer-token"
N_CREDS = 200
N_TOOLS = 4
# The control plane retires a key at least LK_RESEAL_GRACE_MS (6 s) after
# it became active; this bounds the whole rotation.
ROTATION_S = 90.0


class RotationTestCase(harness.E2EAssertions, unittest.TestCase):
    """One control plane, one replica sidecar of agent-a, N_CREDS bearer
    credentials of which N_TOOLS are bound, one per echo tool."""

    def setUp(self):
        self.c = cluster.Cluster(self.id(), control_planes=1)
        self.addCleanup(self._close)
        self.c.start()
        self.cp = self.c.cps[0]
        self.cp.register_type(harness.BEARER_TYPE)
        self.tools = ["echo-%d" % i for i in range(N_TOOLS)]
        for tool in self.tools:
            self.cp.register_tool(harness.echo_tool(
                tool, self.c.nginx.base_url, TYPE))
        self.cp.create_budget(BUDGET, [AGENT])
        self.secrets = {}
        for i in range(N_CREDS):
            secret = harness.make_secret("r%d" % i)
            cred = self.cp.create_credential(TYPE, {"token": secret},
                                             label="c%d" % i)
            self.secrets[cred.id] = secret
        ids = sorted(self.secrets)
        self.bound = {}
        for tool, cred_id in zip(self.tools, ids):
            self.cp.bind(BUDGET, cred_id, tool=tool)
            self.bound[tool] = self.secrets[cred_id]
        self.sidecar = self.c.sidecar("sa", AGENT, self.cp)
        self._items = iter(range(1, 10 ** 9))
        for tool in self.tools:
            self.wait_injected(tool)

    def _close(self):
        problem = self.c.close()
        if problem:
            raise AssertionError(problem)

    # -- helpers -----------------------------------------------------------

    def call(self, tool):
        """One echo call with a fresh path item; returns (response, item)."""
        item = "%s-i%d" % (tool, next(self._items))
        resp = self.sidecar.call(BUDGET, tool, "get", {"item": item},
                                 timeout=10)
        return resp, item

    def arrival(self, item, timeout=3.0):
        uri = "/echo/" + item
        for entry in self.c.nginx.arrivals(uri, expect=1, timeout=timeout):
            if entry["uri"] == uri:
                return entry
        return None

    def wait_injected(self, tool):
        """Polls until a call of tool reaches nginx with its credential."""
        def attempt():
            resp, item = self.call(tool)
            if resp.WhichOneof("outcome") != "result":
                return None
            got = self.arrival(item)
            return got is not None and got["authorization"] == (
                "Bearer " + self.bound[tool])
        wait_until(attempt, what="%s injecting its credential" % tool)

    def assertGoodAnswer(self, resp, tool):
        self.assertEqual(resp.WhichOneof("outcome"), "result", str(resp))
        self.assertEqual(resp.result.http_status, 200)
        self.assertTrue(resp.result.redacted)
        self.assertIn(b"Bearer [REDACTED]", resp.result.body)
        self.assertNoSecret(harness.whole_response(resp), self.bound[tool])

    def ring_keys(self):
        """[(id, state)] of the key ring file's key lines."""
        keys = []
        with open(self.c.keyring) as f:
            for line in f:
                if line.startswith("key "):
                    _, kid, state, _ = line.split(" ", 3)
                    keys.append((int(kid), state))
        return keys

    def etcd_key_ids(self):
        """{credential id: [key id of each sealed secret field]} as etcd
        holds them, read with etcdctl."""
        doc = json.loads(self.c.etcd.ctl(
            "get", "--prefix", cluster.ETCD_PREFIX + "cred/", "-w", "json"))
        out = {}
        for kv in doc.get("kvs") or []:
            cred = types_pb2.Credential.FromString(
                base64.b64decode(kv["value"]))
            out[cred.id] = [f.sealed.key_id for f in cred.fields
                            if f.secret]
        return out

    def audit_hash(self, secret):
        """`latchkeyctl audit-hash` of secret (as field "token", on stdin)
        from the control plane: the 64 hex digits it prints."""
        out = self.cp.ctl("audit-hash", stdin=json.dumps({"token": secret}))
        self.assertEqual(out.returncode, 0, out.stderr)
        field, hexdigits = out.stdout.split()
        self.assertEqual(field, "token")
        self.assertRegex(hexdigits, "^[0-9a-f]{64}$")
        return hexdigits

    def call_hashes(self, tool):
        """Makes one good call of tool and returns the secret_hashes of the
        one audit.tool_call line the replica wrote for it."""
        def lines():
            return [e for e in self.sidecar.events("audit.tool_call",
                                                   since_start=False)
                    if e.get("tool") == tool]
        n = len(lines())
        resp, _ = self.call(tool)
        self.assertGoodAnswer(resp, tool)
        got = lines()
        self.assertEqual(len(got), n + 1, got[n:])
        self.assertEqual(got[-1]["outcome"], "ok")
        return got[-1]["secret_hashes"]

    def audit_line(self):
        """A SHA-256 digest of the key ring file's one audit line (so a
        failed comparison prints no key)."""
        with open(self.c.keyring) as f:
            lines = [l for l in f if l.startswith("audit ")]
        self.assertEqual(len(lines), 1)
        return hashlib.sha256(lines[0].encode()).hexdigest()

    def key_status(self):
        out = self.cp.ctl("--json", "keys", "status")
        self.assertEqual(out.returncode, 0, out.stderr)
        return json.loads(out.stdout)

    def assertRotatedTo(self, key_id):
        """The ring file holds only key_id, active; every credential in
        etcd is sealed under it; GetKeyStatus agrees."""
        self.assertEqual(self.ring_keys(), [(key_id, "active")])
        held = self.etcd_key_ids()
        self.assertEqual(set(held), set(self.secrets))
        stale = {k: v for k, v in held.items() if v != [key_id]}
        self.assertEqual(stale, {}, "credentials not under key %d" % key_id)
        st = self.key_status()
        self.assertEqual(st["active_key_id"], key_id)
        self.assertEqual([(k["id"], k["state"], int(k["sealed_fields"]))
                          for k in st["keys"]],
                         [(key_id, "active", N_CREDS)])
        self.assertEqual(int(st["total_fields"]), N_CREDS)
        self.assertFalse(st["resealing"])

    # -- tests -------------------------------------------------------------

    def test_rotation_under_live_calls_moves_every_secret_and_retires_the_old_key(
            self):
        self.assertEqual(self.ring_keys(), [(1, "active")])
        self.assertEqual(set(sum(self.etcd_key_ids().values(), [])), {1})

        stop = threading.Event()
        calls = []     # (tool, item) of every good answer
        failures = []  # what went wrong, per failed call

        def traffic():
            n = 0
            while not stop.is_set():
                tool = self.tools[n % N_TOOLS]
                n += 1
                try:
                    resp, item = self.call(tool)
                    self.assertGoodAnswer(resp, tool)
                    calls.append((tool, item))
                except (grpc.RpcError, AssertionError) as e:
                    failures.append("%s: %r" % (tool, e))

        t = threading.Thread(target=traffic)
        t.start()
        try:
            wait_until(lambda: len(calls) >= 20, what="calls before rotating")
            before = len(calls)
            out = self.cp.ctl("keys", "rotate", timeout=ROTATION_S)
            during = len(calls) - before
            time.sleep(0.5)  # and calls after the old key is gone
        finally:
            stop.set()
            t.join(30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("key 2 is now active", out.stderr)
        self.assertRegex(out.stderr,
                         r"re-sealing: \d+/%d secret values moved to key 2"
                         % N_CREDS)
        self.assertIn("re-sealing: %d/%d secret values moved to key 2"
                      % (N_CREDS, N_CREDS), out.stderr)
        self.assertIn("rotation done", out.stdout)
        self.assertEqual(failures, [])
        self.assertGreater(during, 0, "no call ran during the rotation")

        log = self.cp.log()
        self.assertIn('"event":"keys.rotated"', log)
        self.assertIn('"event":"keys.reseal.progress"', log)
        self.assertIn("%d/%d secret values re-sealed under key 2"
                      % (N_CREDS, N_CREDS), log)
        self.assertIn('"event":"keys.retired"', log)
        self.assertRotatedTo(2)

        # Every call, before, during and after, carried its own secret.
        entries = {e["uri"]: e for e in self.c.nginx.arrivals(
            "/echo/", expect=len(calls), timeout=10)}
        for tool, item in calls:
            got = entries.get("/echo/" + item)
            self.assertIsNotNone(got, "nginx never received " + item)
            self.assertEqual(got["authorization"],
                             "Bearer " + self.bound[tool], item)
        for tool in self.tools:
            self.wait_injected(tool)
        # No plaintext of any secret in the key ring, etcd or the replica.
        self.sidecar.stop()
        for secret in list(self.bound.values()):
            for kind, form in harness.secret_forms(secret).items():
                hits = [p for p in cluster.files_containing(self.c.dir, form)
                        if not p.startswith(self.c.nginx.prefix)]
                self.assertEqual(hits, [], kind + " form of a secret on disk")

    def test_control_plane_killed_mid_rotation_finishes_after_restart(self):
        out = self.cp.ctl("keys", "rotate", "--no-wait")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("key 2 is active", out.stdout)
        # Kill it as soon as the re-sealer has started moving values; the
        # old key is retired only after a grace period, so this is always
        # mid-rotation.
        wait_until(lambda: any(v == [2] for v in
                               self.etcd_key_ids().values()),
                   what="a first credential re-sealed", interval=0.01)
        self.cp.kill()
        self.assertIn((1, "retiring"), self.ring_keys())
        self.assertIn((2, "active"), self.ring_keys())
        # Calls keep working from the replica while the control plane is
        # down.
        for tool in self.tools:
            self.assertGoodAnswer(self.call(tool)[0], tool)
        self.cp.start(same_port=True)
        wait_until(lambda: self.ring_keys() == [(2, "active")],
                   timeout=ROTATION_S, what="the restarted control plane "
                   "retiring key 1")
        self.assertIn('"event":"keys.retired"', self.cp.daemon.new_log())
        self.assertRotatedTo(2)
        for tool in self.tools:
            self.wait_injected(tool)


    def test_audit_hashes_are_the_same_before_and_after_a_rotation(self):
        tool = self.tools[0]
        secret = self.bound[tool]
        before = self.audit_hash(secret)
        self.assertEqual(self.call_hashes(tool), {"token": before})
        line = self.audit_line()

        out = self.cp.ctl("keys", "rotate", timeout=ROTATION_S)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("rotation done", out.stdout)
        # Done means retired: only the new key is left, everywhere.
        self.assertRotatedTo(2)

        self.assertEqual(self.audit_line(), line)
        self.assertEqual(self.audit_hash(secret), before)
        self.assertEqual(self.call_hashes(tool), {"token": before})
        rotations = [json.loads(l) for l in self.cp.log().splitlines()
                     if '"event":"audit.admin"' in l and
                     '"keys.rotate"' in l]
        self.assertEqual([(r["action"], r["outcome"]) for r in rotations],
                         [("keys.rotate", "ok")])
        # A control plane started on the rotated ring file answers the same.
        self.cp.stop()
        self.cp.start(same_port=True)
        self.assertEqual(self.audit_hash(secret), before)
        self.assertEqual(self.call_hashes(tool), {"token": before})
        for log in (self.cp.log(), self.sidecar.log()):
            self.assertNoSecret(log, secret, "a log")


class StandaloneTestCase(harness.StackTestCase):
    with_catalog = False

    def test_a_standalone_sidecar_refuses_key_rotation(self):
        for method, req in (("RotateKey", admin_pb2.RotateKeyRequest()),
                            ("GetKeyStatus", admin_pb2.Empty())):
            with self.assertRaises(grpc.RpcError) as cm:
                self.lk.admin(method, req)
            self.assertEqual(cm.exception.code(),
                             grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("key rotation is a control-plane operation",
                          cm.exception.details())
        out = self.lk.ctl("keys", "rotate")
        self.assertEqual(out.returncode, 1)
        self.assertIn("FAILED_PRECONDITION: key rotation is a control-plane "
                      "operation", out.stderr)


if __name__ == "__main__":
    harness.main()
