"""The whole cluster end to end: a real etcd, two real latchkey-cp control
planes sharing one key ring, and real latchkeyd replicas (--control-plane),
with a real nginx vendor echoing what it receives (tests/e2e/cluster.py).

Each test starts its own cluster. The catalog (one bearer-token type, two
nginx echo tools) goes in through the first control plane; budget-a lists
agent-a, budget-b lists agent-b. Every wait is a bounded poll for the state
the test then asserts; no sleep stands in for an assertion.
"""

import itertools
import json
import subprocess
import time
import unittest

import grpc

import cluster
import harness
from cluster import code_of, files_containing, wait_until
from latchkey.v1 import admin_pb2
from latchkey.v1 import types_pb2

StatusCode = grpc.StatusCode

AGENT_A = "agent-a"
AGENT_B = "agent-b"
BUDGET_A = "budget-a"
BUDGET_B = "budget-b"
TOOL = "echo-bearer"
TOOL_2 = "echo-bearer-2"
TYPE = "bearer-token"
STALENESS_S = 2.0


class ClusterTestCase(harness.E2EAssertions, unittest.TestCase):
    """A fresh cluster per test, with the catalog installed and nothing
    bound."""

    def setUp(self):
        self.c = cluster.Cluster(self.id())
        self.addCleanup(self._close)
        self.c.start()
        self.cp1, self.cp2 = self.c.cps
        self._ids = itertools.count(1)
        cp = self.cp1
        cp.register_type(harness.BEARER_TYPE)
        for tool in (TOOL, TOOL_2):
            cp.register_tool(harness.echo_tool(tool, self.c.nginx.base_url,
                                               TYPE))
        cp.create_budget(BUDGET_A, [AGENT_A])
        cp.create_budget(BUDGET_B, [AGENT_B])

    def _close(self):
        problem = self.c.close()
        if problem:
            raise AssertionError(problem)

    # -- helpers -----------------------------------------------------------

    def bind_canary(self, cp=None, tool=TOOL, tag="a"):
        """A new credential with a canary secret, bound in budget-a to tool
        through cp; returns (credential id, secret)."""
        cp = cp or self.cp1
        secret = harness.make_secret(tag)
        cred = cp.create_credential(TYPE, {"token": secret}, label=tag)
        cp.bind(BUDGET_A, cred.id, tool=tool)
        return cred.id, secret

    def arrival(self, item):
        """What nginx received for /echo/<item>, or None."""
        uri = "/echo/" + item
        for entry in self.c.nginx.arrivals(uri, expect=1, timeout=3.0):
            if entry["uri"] == uri:
                return entry
        return None

    def call_once(self, sidecar, tool=TOOL, budget=BUDGET_A):
        """One call of tool's echo op with a fresh path item; returns
        (response, item)."""
        item = "i%d" % next(self._ids)
        return sidecar.call(budget, tool, "get", {"item": item}), item

    def assertInjected(self, resp, item, secret):
        """The call reached nginx with this secret injected, and the agent
        got nginx's echo with every form of it scrubbed."""
        self.assertEqual(resp.WhichOneof("outcome"), "result", str(resp))
        self.assertEqual(resp.result.http_status, 200)
        got = self.arrival(item)
        self.assertIsNotNone(got, "nginx never received /echo/" + item)
        self.assertEqual(got["authorization"], "Bearer " + secret)
        self.assertTrue(resp.result.redacted)
        self.assertIn(b"Bearer [REDACTED]", resp.result.body)
        self.assertNoSecret(harness.whole_response(resp), secret)

    def wait_injected(self, sidecar, secret, tool=TOOL, budget=BUDGET_A):
        """Polls sidecar (bounded) until a call injects this secret; asserts
        the answer is scrubbed."""
        def attempt():
            resp, item = self.call_once(sidecar, tool, budget)
            if resp.WhichOneof("outcome") != "result":
                return None
            got = self.arrival(item)
            if got is None or got["authorization"] != "Bearer " + secret:
                return None
            return resp, item
        resp, item = wait_until(attempt, what="%s injecting the secret"
                                % sidecar.name)
        self.assertInjected(resp, item, secret)
        return resp

    def wait_code(self, sidecar, code, tool=TOOL, budget=BUDGET_A):
        """Polls sidecar (bounded) until a call fails with exactly code."""
        return wait_until(
            lambda: code_of(lambda: self.call_once(sidecar, tool, budget))
            == code, what="%s answering %s" % (sidecar.name, code))

    def assertNothingOnDisk(self, root, needle, what):
        self.assertEqual(files_containing(root, needle), [],
                         "%s found on disk under %s" % (what, root))

    def assertCanaryNowhere(self, secret):
        """No form of the secret in any file of the cluster (etcd's data,
        every replica's data, key ring, node keys, every log) but nginx's,
        which received it on purpose."""
        for kind, form in harness.secret_forms(secret).items():
            hits = [p for p in files_containing(self.c.dir, form)
                    if not p.startswith(self.c.nginx.prefix)]
            self.assertEqual(hits, [], "%s form of the canary on disk"
                             % kind)

    # -- (a) scoping -------------------------------------------------------

    def test_bind_reaches_its_agents_sidecar_and_no_other(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        b = self.c.sidecar("sb", AGENT_B, self.cp2)
        cred_id, secret = self.bind_canary()
        self.wait_injected(a, secret)
        # b has applied everything up to now: what it lacks, it never got.
        self.c.wait_settled(self.cp2, [AGENT_B])
        self.assertCode(StatusCode.NOT_FOUND, self.call_once, b)
        # b has the tool (every tool reaches an agent with a budget) but no
        # credential for it in its own budget.
        resp, _ = self.call_once(b, budget=BUDGET_B)
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")
        b.stop()
        self.assertNothingOnDisk(b.data_dir, cred_id, "agent-a's credential id")
        self.assertNothingOnDisk(b.data_dir, BUDGET_A, "agent-a's budget")
        for kind, form in harness.secret_forms(secret).items():
            self.assertNothingOnDisk(b.data_dir, form, kind + " canary")
        # The search does see replicated records: a holds the credential.
        a.stop()
        self.assertNotEqual(files_containing(a.data_dir, cred_id), [])
        self.assertCanaryNowhere(secret)

    # -- (b) changes reach the replica -------------------------------------

    def test_unbind_through_another_control_plane_reaches_the_replica(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        cred_id, secret = self.bind_canary()
        self.wait_injected(a, secret)
        self.cp2.unbind(BUDGET_A, tool=TOOL)
        resp = wait_until(
            lambda: (lambda r: r if r.WhichOneof("outcome")
                     == "missing_credential" else None)(self.call_once(a)[0]),
            what="missing_credential on agent-a's sidecar")
        mc = resp.missing_credential
        self.assertEqual((mc.budget_id, mc.tool_id, mc.credential_type),
                         (BUDGET_A, TOOL, TYPE))
        self.assertEqual([f.name for f in mc.required_fields], ["token"])
        self.assertNoSecret(harness.whole_response(resp), secret)
        # Bound nowhere, the credential left agent-a's scope: its record
        # is gone from the replica's disk once it has flushed.
        self.c.wait_settled(self.cp1, [AGENT_A])
        a.stop()
        self.assertNothingOnDisk(a.data_dir, cred_id, "the unbound credential")

    def test_pausing_the_budget_reaches_the_replica(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        _, secret = self.bind_canary()
        self.wait_injected(a, secret)
        self.cp2.set_paused(BUDGET_A, True)
        self.wait_code(a, StatusCode.FAILED_PRECONDITION)
        self.cp2.set_paused(BUDGET_A, False)
        self.wait_injected(a, secret)

    def test_removing_the_agent_from_the_budget_reaches_the_replica(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        cred_id, secret = self.bind_canary()
        self.wait_injected(a, secret)
        # Admin has no "edit agents": the budget is deleted (with its
        # bindings) and created again without agent-a.
        self.cp2.admin("DeleteBudget", admin_pb2.DeleteRequest(id=BUDGET_A))
        self.cp2.create_budget(BUDGET_A, ["agent-c"])
        self.cp2.bind(BUDGET_A, cred_id, tool=TOOL)
        self.wait_code(a, StatusCode.NOT_FOUND)
        self.c.wait_settled(self.cp1, [AGENT_A])
        self.assertCode(StatusCode.NOT_FOUND, self.call_once, a)
        # The replica deleted the records: none is left on disk once it
        # has flushed (latchkeyd compacts on SIGTERM).
        a.stop()
        self.assertNothingOnDisk(a.data_dir, cred_id, "the revoked credential")

    def test_credential_update_reaches_the_replica(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        cred_id, old = self.bind_canary()
        self.wait_injected(a, old)
        new = harness.make_secret("new")
        self.cp2.admin("UpdateCredential", admin_pb2.UpdateCredentialRequest(
            id=cred_id, fields={"token": new}))
        self.wait_injected(a, new)
        a.stop()
        self.assertCanaryNowhere(old)
        self.assertCanaryNowhere(new)

    # -- (c) the key ring's ciphertext stays on the control plane ----------

    def test_keyring_ciphertext_never_reaches_the_replica(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        cred_id, secret = self.bind_canary()
        self.wait_injected(a, secret)
        stored, _ = self.c.etcd.get(cluster.ETCD_PREFIX + "cred/" + cred_id)
        self.assertIsNotNone(stored, "the credential is not in etcd")
        cred = types_pb2.Credential.FromString(stored)
        sealed = [f.sealed for f in cred.fields if f.HasField("sealed")]
        self.assertEqual(len(sealed), 1, str(cred))
        self.assertGreaterEqual(len(sealed[0].ciphertext), 16)
        self.assertEqual(sealed[0].ephemeral_public_key, b"")
        a.stop()
        self.assertNotEqual(files_containing(a.data_dir, cred_id), [],
                            "the replica holds no record of the credential")
        self.assertNothingOnDisk(a.data_dir, sealed[0].ciphertext,
                                 "the key-ring ciphertext")
        self.assertNothingOnDisk(a.data_dir, sealed[0].nonce,
                                 "the key-ring nonce")
        self.assertNothingOnDisk(a.data_dir, stored, "etcd's stored record")
        self.assertCanaryNowhere(secret)

    # -- (d), (e) losing the control plane ---------------------------------

    def test_sidecar_survives_its_control_plane_and_resumes_on_another(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        _, secret = self.bind_canary()
        self.wait_injected(a, secret)
        self.c.wait_settled(self.cp1, [AGENT_A])
        self.cp1.kill()
        for _ in range(3):
            self.assertInjected(*self.call_once(a), secret)
        # Its --control-plane is one address: restart it on CP2's, same
        # data dir. It serves at once, from its replica.
        a.stop()
        a.start(self.cp2)
        self.assertInjected(*self.call_once(a), secret)
        wait_until(lambda: a.events("sync_connected"),
                   what="agent-a's sidecar connecting to cp2")
        self.c.wait_settled(self.cp2, [AGENT_A])
        # Resumed: no snapshot, no NACK, nothing logged as an error.
        log = a.new_log()
        self.assertEqual(a.events("sync_snapshot_applied"), [], log)
        self.assertNotIn('"event":"sync_nack"', log)
        self.assertNotIn('"level":"error"', log)
        _, secret2 = self.bind_canary(self.cp2, tool=TOOL_2, tag="b")
        self.wait_injected(a, secret2, tool=TOOL_2)

    def test_replica_resumes_when_its_control_plane_restarts(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        _, secret = self.bind_canary()
        self.wait_injected(a, secret)
        self.c.wait_settled(self.cp1, [AGENT_A])
        snapshots = len(a.events("sync_snapshot_applied"))
        # SIGTERM: the control plane exits cleanly, streams or not.
        self.assertEqual(self.cp1.stop(), 0)
        self.assertInjected(*self.call_once(a), secret)
        self.cp1.start(same_port=True)
        self.c.wait_settled(self.cp1, [AGENT_A])
        self.assertEqual(len(a.events("sync_snapshot_applied")), snapshots,
                         "the replica took a snapshot instead of resuming")
        _, secret2 = self.bind_canary(tool=TOOL_2, tag="b")
        self.wait_injected(a, secret2, tool=TOOL_2)

    def test_sidecar_restarted_while_the_control_plane_is_down_serves(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        _, secret = self.bind_canary()
        self.wait_injected(a, secret)
        self.c.wait_settled(self.cp1, [AGENT_A])
        self.cp1.kill()
        self.cp2.kill()
        a.stop()
        a.start()
        self.assertInjected(*self.call_once(a), secret)
        self.assertEqual(a.events("sync_connected"), [])

    # -- (f) --max-staleness -----------------------------------------------

    def test_max_staleness_fails_closed_and_recovers(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1,
                           extra_args=["--max-staleness", "2s"])
        _, secret = self.bind_canary()
        self.wait_injected(a, secret)
        self.c.wait_settled(self.cp1, [AGENT_A])
        lost = time.monotonic()
        self.cp1.kill()
        self.cp2.kill()
        self.wait_code(a, StatusCode.FAILED_PRECONDITION)
        elapsed = time.monotonic() - lost
        # Contact is at most one heartbeat (1 s) older than the kill.
        self.assertGreaterEqual(elapsed, STALENESS_S - 1.2)
        self.assertLess(elapsed, STALENESS_S + 3.0)
        err = self.assertCode(StatusCode.FAILED_PRECONDITION, self.call_once,
                              a)
        self.assertIn("--max-staleness", err.details())
        self.cp1.start(same_port=True)
        self.wait_injected(a, secret)

    # -- (g) etcd compaction -----------------------------------------------

    def test_sidecar_behind_a_compaction_gets_a_snapshot(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        cred_id, secret = self.bind_canary()
        self.wait_injected(a, secret)
        self.c.wait_settled(self.cp1, [AGENT_A])
        _, old_rev = self.c.etcd.get(cluster.ETCD_PREFIX + "cred/" + cred_id)
        a.stop()
        latest = secret
        for i in range(30):
            latest = harness.make_secret("u%d" % i)
            self.cp2.admin("UpdateCredential",
                           admin_pb2.UpdateCredentialRequest(
                               id=cred_id, fields={"token": latest}))
        _, secret2 = self.bind_canary(self.cp2, tool=TOOL_2, tag="b")
        rev = self.c.etcd.revision()
        self.assertGreater(rev, old_rev + 30)
        self.c.etcd.compact(rev)
        gone = self.c.etcd.ctl("get", cluster.ETCD_PREFIX + "cred/" + cred_id,
                               "--rev", str(old_rev), check=False)
        self.assertEqual(gone, b"", "etcd was not compacted")
        a.start()
        snaps = wait_until(lambda: a.events("sync_snapshot_applied"),
                           what="a snapshot on agent-a's sidecar")
        self.assertIn("revision=%d " % rev, snaps[0].get("msg", str(snaps)))
        self.wait_injected(a, latest)
        self.wait_injected(a, secret2, tool=TOOL_2)
        self.c.wait_settled(self.cp1, [AGENT_A])
        # It ends identical to a replica built from nothing.
        fresh = self.c.sidecar("sa-fresh", AGENT_A, self.cp2)
        self.c.wait_settled(self.cp2, [AGENT_A])
        self.assertEqual(a.list_tools(BUDGET_A), fresh.list_tools(BUDGET_A))

    # -- (h) latchkeyctl status --------------------------------------------

    def test_status_lists_each_replica_at_the_current_revision(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        b = self.c.sidecar("sb", AGENT_B, self.cp1)
        _, secret = self.bind_canary(self.cp2)
        self.wait_injected(a, secret)
        st = self.c.wait_settled(self.cp1, [AGENT_A, AGENT_B])
        self.assertEqual(st["revision"], self.c.etcd.revision())
        self.assertEqual(sorted(r["agent_id"] for r in st["replicas"]),
                         [AGENT_A, AGENT_B])
        for r in st["replicas"]:
            self.assertEqual(r["applied_revision"], st["revision"])
            self.assertEqual(r["lag_revisions"], 0)
            self.assertGreaterEqual(r["ms_since_ack"], 0)
        self.assertEqual(len({r["peer_id"] for r in st["replicas"]}), 2)
        # The write-to-all-ACKed time is measured (the bind, at least).
        self.assertGreaterEqual(st["writes_measured"], 1)
        self.assertGreaterEqual(st["last_write_to_all_acked_us"], 0)
        self.assertEqual(self.cp2.status()["replicas"], [])
        b.stop()
        wait_until(lambda: [r["agent_id"] for r in
                            self.cp1.status()["replicas"]] == [AGENT_A],
                   what="cp1 dropping the stopped replica")

    # -- (i), (j) refusals -------------------------------------------------

    def test_wrong_node_token_gets_no_data(self):
        wrong = self.c.dir + "/wrong.token"
        cluster.write_secret_file(wrong, "node-" + "0" * 32)
        cred_id, secret = self.bind_canary()
        a = self.c.sidecar("sa", AGENT_A, self.cp1, token_file=wrong)
        wait_until(lambda: a.events("sync_unauthenticated"),
                   what="sync_unauthenticated in the sidecar's log")
        failed = a.events("sync_connect_failed")
        self.assertTrue(failed and "UNAUTHENTICATED" in failed[0]["msg"],
                        failed)
        self.assertCode(StatusCode.NOT_FOUND, self.call_once, a)
        self.assertEqual(a.events("sync_connected"), [])
        self.assertEqual(self.cp1.status()["replicas"], [])
        a.stop()
        self.assertNothingOnDisk(a.data_dir, cred_id, "the credential id")
        self.assertCanaryNowhere(secret)

    def test_admin_is_refused_on_a_replica(self):
        s = cluster.Sidecar(self.c, "sa", AGENT_A, self.cp1)
        out = subprocess.run(
            [harness.latchkeyd_path()] + s.args()
            + ["--admin-listen", "127.0.0.1:%d" % harness.free_port(),
               "--admin-token-file", self.c.admin_token_file],
            env=harness.daemon_env(), capture_output=True, text=True,
            timeout=30)
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("--admin-listen is refused in replica mode",
                      out.stderr)

    # -- (e) audit -------------------------------------------------------

    def test_replica_audit_hash_equals_the_control_planes(self):
        a = self.c.sidecar("sa", AGENT_A, self.cp1)
        cred_id, secret = self.bind_canary()
        self.wait_injected(a, secret)
        want = self.cp1.admin("AuditHash", admin_pb2.AuditHashRequest(
            value=secret.encode())).hash
        self.assertRegex(want, "^[0-9a-f]{64}$")
        # Every control plane of the fleet answers the same (one key ring).
        self.assertEqual(self.cp2.admin("AuditHash", admin_pb2.AuditHashRequest(
            value=secret.encode())).hash, want)
        out = subprocess.run(
            [harness.latchkeyctl_path(), "--server", self.cp2.addr,
             "--token-file", self.c.admin_token_file, "audit-hash"],
            input='{"token": "%s"}' % secret, capture_output=True, text=True,
            timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "token %s\n" % want)

        # The control plane's audit line for the create carries it...
        creates = [e for e in self.events(self.cp1, "audit.admin")
                   if e.get("action") == "credential.create"]
        self.assertEqual(len(creates), 1, creates)
        self.assertEqual(creates[0]["credential_id"], cred_id)
        self.assertEqual(creates[0]["secret_hashes"], {"token": want})
        # ...and so does the replica's line for every call that used it.
        calls = [e for e in a.events("audit.tool_call")
                 if e.get("outcome") == "ok"]
        self.assertGreater(len(calls), 0)
        for call in calls:
            self.assertEqual(call["credential_id"], cred_id)
            self.assertEqual(call["secret_hashes"], {"token": want})

        # A restarted replica hashes with the stored key before it reaches
        # a control plane.
        a.stop()
        for cp in self.c.cps:
            cp.stop()
        a.start()
        resp, item = self.call_once(a)
        self.assertInjected(resp, item, secret)
        calls = a.events("audit.tool_call")
        self.assertEqual(len(calls), 1, calls)
        self.assertEqual(calls[0]["secret_hashes"], {"token": want})
        for log in [a.log()] + [cp.log() for cp in self.c.cps]:
            self.assertNoSecret(log, secret, "a log")

    def events(self, cp, name):
        """The JSON log lines of control plane cp whose event is name."""
        found = []
        for line in cp.log().splitlines():
            if '"event":"%s"' % name in line:
                found.append(json.loads(line))
        return found


if __name__ == "__main__":
    harness.main()
