"""Node key rotation of a replica sidecar, end to end: a real etcd, a real
latchkey-cp, a real latchkeyd replica and a real nginx vendor
(tests/e2e/cluster.py), with a client thread making real tool calls the
whole time.

Each test binds a canary credential to agent-a's budget, lets the replica
serve it, and then rotates the node key: by restarting with
--rotate-node-key (also while the control plane is down, so the replica
serves with the old key until it is back), by SIGHUP, or by a restart
that is SIGKILLed right after <node-key>.next appears, followed by a
plain restart. Afterwards:
the key file holds another public key and <node-key>.next is gone;
"node_key.rotated" names both fingerprints and the control plane logged
"sync.node_key_changed"; calls inject the canary; every secret in the
replica opens with the new key (tests/e2e/replica_inspect, offline); and
the old secret key's bytes are in no file under the cluster's dir (data
dirs, key files, logs). No call fails except, during a restart, with
UNAVAILABLE or CANCELLED while the old process stops and the new one
starts. Every wait is bounded.

The audit key (lib/audit.h) follows the node key: every good call's
audit.tool_call line, before, during and after the rotation, carries the
secret_hashes `latchkeyctl audit-hash` gives for the canary, and so does
the first call of the sidecar restarted once more after the rotation with
the control plane down (its stored audit key, re-sealed to the new node
key with the snapshot, opens at start), with no sync_audit_key_unusable
or sync_audit_key_dropped line anywhere.
"""

import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import unittest

import grpc

import cluster
import harness
from cluster import files_containing, wait_until
from latchkey.v1 import toolcalls_pb2
from latchkey.v1 import toolcalls_pb2_grpc

AGENT_A = "agent-a"
BUDGET_A = "budget-a"
TOOL = "echo-bearer"
TYPE = "bearer-token"
# Sanitizer builds run several times slower: stretch every wait.
SLOW = 4.0 if os.environ.get("ASAN_OPTIONS") else 1.0
ROTATION_S = 30.0 * SLOW
CALL_TIMEOUT_S = 30.0 * SLOW
# Calls the client makes after the rotation before it is stopped.
CALLS_AFTER = 20


def read_key_file(path):
    """(public, secret) key bytes of a node key file (lib/seal.h format)."""
    lines = {}
    with open(path) as f:
        for line in f.read().splitlines()[1:]:
            name, _, value = line.partition(" ")
            if name in ("public", "secret"):
                lines[name] = base64.b64decode(value)
    return lines["public"], lines["secret"]


def fingerprint(pk):
    """lk_seal_fingerprint: hex of the 16-byte BLAKE2b digest."""
    return hashlib.blake2b(pk, digest_size=16).hexdigest()


class Caller(threading.Thread):
    """Calls TOOL's echo op through its own channel, back to back, until
    stopped. Each call waits for the channel to be ready (a sidecar
    restarting is waited for, not failed) and is recorded as (start, end,
    outcome): "ok" when nginx answered 200 and the agent got the echo with
    the injected bearer token scrubbed (so the canary was injected), else
    the gRPC code's name or "bad-answer"."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(
            "unix:" + sock,
            options=[("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 300)])
        self.stub = toolcalls_pb2_grpc.ToolCallsStub(self.channel)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.calls = []
        self.n = 0

    def run(self):
        while not self.stopping.is_set():
            self.n += 1
            start = time.monotonic()
            try:
                resp = self.stub.Call(toolcalls_pb2.ToolCallRequest(
                    budget_id=BUDGET_A, tool_id=TOOL, operation="get",
                    arguments_json=json.dumps({"item": "c%d" % self.n})),
                    timeout=CALL_TIMEOUT_S, wait_for_ready=True)
                ok = (resp.WhichOneof("outcome") == "result"
                      and resp.result.http_status == 200
                      and resp.result.redacted
                      and b"Bearer [REDACTED]" in resp.result.body)
                outcome = "ok" if ok else "bad-answer"
            except grpc.RpcError as e:
                outcome = e.code().name
            with self.lock:
                self.calls.append((start, time.monotonic(), outcome))

    def oks_after(self, t):
        with self.lock:
            return sum(1 for s, _, o in self.calls if s >= t and o == "ok")

    def wait_oks_after(self, t, n):
        wait_until(lambda: self.oks_after(t) >= n, 60 * SLOW,
                   "%d good calls" % n)

    def finish(self):
        self.stopping.set()
        self.join(CALL_TIMEOUT_S + 5)
        self.channel.close()
        with self.lock:
            return list(self.calls)


class NodeKeyRotationTest(harness.E2EAssertions, unittest.TestCase):

    def setUp(self):
        self.caller = None
        self.c = cluster.Cluster(self.id(), control_planes=1)
        self.addCleanup(self._close)
        self.c.start()
        self.cp = self.c.cps[0]
        self.cp.register_type(harness.BEARER_TYPE)
        self.cp.register_tool(harness.echo_tool(TOOL, self.c.nginx.base_url,
                                                TYPE))
        self.cp.create_budget(BUDGET_A, [AGENT_A])
        self.a = self.c.sidecar("sa", AGENT_A, self.cp)
        self.secret = harness.make_secret("rot")
        cred = self.cp.create_credential(TYPE, {"token": self.secret},
                                         label="rot")
        self.cp.bind(BUDGET_A, cred.id, tool=TOOL)
        self.items = 0
        self.wait_injected()
        self.c.wait_settled(self.cp, [AGENT_A])
        self.old_pk, old_sk = read_key_file(self.a.node_key)
        self.retired = [old_sk]  # secret keys rotated away
        out = self.cp.ctl("audit-hash",
                          stdin=json.dumps({"token": self.secret}))
        self.assertEqual(out.returncode, 0, out.stderr)
        field, digest = out.stdout.split()
        self.assertEqual(field, "token")
        self.hashes = {"token": digest}
        self.assertAuditHashesSince(0, "before the rotation")

    def _close(self):
        if self.caller is not None and self.caller.is_alive():
            self.caller.finish()
        problem = self.c.close()
        if problem:
            raise AssertionError(problem)

    # -- helpers -----------------------------------------------------------

    def call_once(self):
        self.items += 1
        item = "i%d" % self.items
        return self.a.call(BUDGET_A, TOOL, "get", {"item": item}), item

    def injected(self, resp, item):
        """True when nginx received the canary for this call and the agent
        got the scrubbed echo."""
        if (resp.WhichOneof("outcome") != "result"
                or resp.result.http_status != 200):
            return False
        uri = "/echo/" + item
        got = [e for e in self.c.nginx.arrivals(uri, expect=1, timeout=3.0)
               if e["uri"] == uri]
        if not got or got[0]["authorization"] != "Bearer " + self.secret:
            return False
        self.assertTrue(resp.result.redacted)
        self.assertNoSecret(harness.whole_response(resp), self.secret)
        return True

    def wait_injected(self):
        wait_until(lambda: self.injected(*self.call_once()),
                   what="the sidecar injecting the canary")

    def start_caller(self):
        self.caller = Caller(self.a.sock)
        self.caller.start()
        self.caller.wait_oks_after(0, 5)

    def assertCallsWorked(self, calls, down=None):
        """Every call succeeded, except UNAVAILABLE or CANCELLED ones
        (a call the stopping sidecar refused or cut off) that overlapped
        down, the (start, end) window of a restart."""
        bad = []
        for start, end, outcome in calls:
            if outcome == "ok":
                continue
            overlaps = (down is not None and start <= down[1]
                        and end >= down[0])
            if outcome not in ("UNAVAILABLE", "CANCELLED") or not overlaps:
                bad.append((round(start, 3), round(end, 3), outcome))
        self.assertEqual(bad, [], "calls failed during the rotation (%d "
                         "calls; down %s)" % (len(calls), down and tuple(
                             round(t, 3) for t in down)))
        self.assertGreaterEqual(sum(1 for c in calls if c[2] == "ok"),
                                CALLS_AFTER)

    def audit_calls(self):
        """Every audit.tool_call line the sidecar wrote, all runs."""
        return [e for e in self.a.events("audit.tool_call", since_start=False)
                if e.get("tool") == TOOL]

    def assertAuditHashesSince(self, n, what):
        """The audit.tool_call lines from the nth on include good calls,
        and every good call's line carries the hashes from before the
        rotation; no line says the audit key was unusable or dropped."""
        good = [e for e in self.audit_calls()[n:] if e.get("outcome") == "ok"]
        self.assertGreater(len(good), 0, "no good call audited " + what)
        for e in good:
            self.assertEqual(e.get("secret_hashes"), self.hashes,
                             "audit.tool_call %s: %s" % (what, e))
        for event in ("sync_audit_key_unusable", "sync_audit_key_dropped"):
            self.assertEqual(self.a.events(event, since_start=False), [],
                             what)

    def assertHashesAfterRestartWithoutControlPlane(self):
        """With the sidecar stopped after a rotation: the control plane
        goes away, the sidecar starts again, and its first call is
        audited with the same hashes, from the audit key it stored sealed
        to the new node key."""
        self.assertEqual(self.cp.stop(), 0)
        n = len(self.audit_calls())
        self.a.start()
        self.assertTrue(self.injected(*self.call_once()))
        lines = self.audit_calls()[n:]
        self.assertEqual(len(lines), 1, lines)
        self.assertAuditHashesSince(n, "after the rotation and a restart "
                                    "without the control plane")

    def wait_rotated(self):
        ev = wait_until(lambda: self.a.events("node_key.rotated"),
                        ROTATION_S, "node_key.rotated on the sidecar")
        return ev[0]["msg"]

    def inspect(self):
        """replica_inspect of the stopped sidecar's data dir, opening
        every secret with its current key file."""
        out = subprocess.run(
            [harness.runfile("tests/e2e/replica_inspect"), self.a.data_dir,
             self.a.node_key],
            capture_output=True, text=True, timeout=60 * SLOW,
            env=harness.daemon_env())
        self.assertEqual(out.returncode, 0,
                         "replica_inspect failed: " + out.stderr)
        return json.loads(out.stdout)

    def assertRotated(self, msg, want_pk=None, cp_saw_old_key=True):
        """The rotation finished to a new key; returns its public key. The
        control plane logs the change when its memory holds the old key
        (it keeps none across its own restarts)."""
        new_pk, _ = read_key_file(self.a.node_key)
        self.assertNotEqual(new_pk, self.old_pk)
        if want_pk is not None:
            self.assertEqual(new_pk, want_pk)
        self.assertFalse(os.path.exists(self.a.node_key + ".next"))
        self.assertEqual(os.stat(self.a.node_key).st_mode & 0o777, 0o600)
        self.assertIn("old=%s new=%s" % (fingerprint(self.old_pk),
                                         fingerprint(new_pk)), msg)
        changed = [line for line in self.cp.log().splitlines()
                   if '"event":"sync.node_key_changed"' in line]
        pair = "old=%s new=%s" % (fingerprint(self.old_pk),
                                  fingerprint(new_pk))
        self.assertEqual(any(pair in line for line in changed),
                         cp_saw_old_key, changed)
        return new_pk

    def assertReplicaSealedTo(self, new_pk):
        """With the sidecar stopped: every secret in the replica opens with
        the new key file, which the replica records; no file under the
        cluster's dir holds the old secret key in any form."""
        self.a.stop()
        seen = self.inspect()
        self.assertEqual(seen["node_key"], fingerprint(new_pk))
        self.assertGreaterEqual(seen["prefixes"]["cred/"]["count"], 1)
        self.assertEqual(seen["sealed"]["fails"], 0, seen)
        self.assertGreaterEqual(seen["sealed"]["opens"], 1, seen)
        for sk in self.retired:
            for form in (sk, base64.b64encode(sk), sk.hex().encode()):
                self.assertEqual(files_containing(self.c.dir, form), [],
                                 "an old node secret key is still on disk")

    # -- tests -------------------------------------------------------------

    def test_restart_with_rotate_node_key_keeps_calls_working(self):
        n = len(self.audit_calls())
        self.start_caller()
        down_from = time.monotonic()
        self.a.stop()
        self.a.extra_args.append("--rotate-node-key")
        self.a.start()
        down = (down_from, time.monotonic())
        # Served at once, from the replica still sealed to the old key.
        self.assertTrue(self.injected(*self.call_once()))
        msg = self.wait_rotated()
        rotated_at = time.monotonic()
        self.caller.wait_oks_after(rotated_at, CALLS_AFTER)
        self.assertCallsWorked(self.caller.finish(), down)
        new_pk = self.assertRotated(msg)
        self.wait_injected()
        self.assertAuditHashesSince(n, "across the rotation")
        self.assertReplicaSealedTo(new_pk)
        self.assertHashesAfterRestartWithoutControlPlane()

    def test_sighup_rotates_while_calls_run_without_one_failing(self):
        n = len(self.audit_calls())
        self.start_caller()
        os.kill(self.a.daemon.pid, signal.SIGHUP)
        msg = self.wait_rotated()
        self.caller.wait_oks_after(time.monotonic(), CALLS_AFTER)
        self.assertCallsWorked(self.caller.finish())
        new_pk = self.assertRotated(msg)
        self.assertTrue(self.a.running(), "SIGHUP stopped the replica")
        self.wait_injected()
        # A second SIGHUP rotates again, from the new key.
        self.old_pk = new_pk
        self.retired.append(read_key_file(self.a.node_key)[1])
        before = len(self.a.events("node_key.rotated"))
        os.kill(self.a.daemon.pid, signal.SIGHUP)
        wait_until(lambda: len(self.a.events("node_key.rotated")) > before,
                   ROTATION_S, "a second node_key.rotated")
        newest = self.assertRotated(self.a.events("node_key.rotated")[-1]
                                    ["msg"])
        self.wait_injected()
        self.assertAuditHashesSince(n, "across two rotations")
        self.assertReplicaSealedTo(newest)
        self.assertHashesAfterRestartWithoutControlPlane()

    def test_rotation_waits_for_the_control_plane_serving_the_old_key(self):
        # With the control plane away nobody can re-seal: the sidecar
        # presents nothing, keeps both keys and serves with the old one.
        self.assertEqual(self.cp.stop(), 0)
        self.a.stop()
        self.a.extra_args.append("--rotate-node-key")
        n = len(self.audit_calls())
        self.a.start()
        # Restarted mid-rotation, before any snapshot and with no control
        # plane: the stored audit key (sealed to the old key) opens.
        for _ in range(3):
            self.assertTrue(self.injected(*self.call_once()))
        self.assertAuditHashesSince(n, "mid-rotation, control plane down")
        self.start_caller()
        self.assertTrue(os.path.exists(self.a.node_key + ".next"))
        self.assertEqual(read_key_file(self.a.node_key)[0], self.old_pk)
        self.assertEqual(self.a.events("node_key.rotated"), [])
        self.cp.start(same_port=True)
        msg = self.wait_rotated()
        self.caller.wait_oks_after(time.monotonic(), CALLS_AFTER)
        self.assertCallsWorked(self.caller.finish())
        # The snapshot came because the hello said revision 0.
        new_pk = self.assertRotated(msg, cp_saw_old_key=False)
        self.wait_injected()
        self.assertAuditHashesSince(n, "across the rotation")
        self.assertReplicaSealedTo(new_pk)
        self.assertHashesAfterRestartWithoutControlPlane()

    def test_sigkill_right_after_next_appears_then_restart_finishes(self):
        self.a.stop()
        next_path = self.a.node_key + ".next"
        with open(self.a.stderr_path, "ab") as err:
            proc = subprocess.Popen(
                [harness.latchkeyd_path()] + self.a.args()
                + ["--rotate-node-key"],
                env=harness.daemon_env(), stdin=subprocess.DEVNULL,
                stdout=err, stderr=err)
        try:
            deadline = time.monotonic() + 60 * SLOW
            while (not os.path.exists(next_path)
                   and time.monotonic() < deadline
                   and proc.poll() is None):
                time.sleep(0.001)
            proc.kill()
        finally:
            proc.wait()
        self.assertTrue(os.path.exists(next_path),
                        "latchkeyd never created " + next_path)
        self.assertEqual(read_key_file(self.a.node_key)[0], self.old_pk)
        next_pk, _ = read_key_file(next_path)
        # Restarted without the flag: it serves at once from its replica,
        # and finishes the rotation it found, to that same next key.
        n = len(self.audit_calls())
        self.a.start()
        self.assertTrue(self.injected(*self.call_once()))
        self.start_caller()
        msg = self.wait_rotated()
        self.caller.wait_oks_after(time.monotonic(), CALLS_AFTER)
        self.assertCallsWorked(self.caller.finish())
        new_pk = self.assertRotated(msg, want_pk=next_pk)
        self.wait_injected()
        self.assertAuditHashesSince(n, "across the rotation")
        self.assertReplicaSealedTo(new_pk)
        self.assertHashesAfterRestartWithoutControlPlane()


if __name__ == "__main__":
    harness.main()
