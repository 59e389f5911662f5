"""Replica mode (latchkeyd --control-plane): the sidecar follows a control
plane over latchkey.v1.Sync/Stream.

The control plane here is a test double (fake_cp.py): a real
grpcio Sync server that speaks the contract of protos/latchkey/v1/sync.proto
and seals secrets to the sidecar's node key with the real lib/seal code
(tests/e2e/seal_for_node). It proves the sidecar's side: hello with agent
and node key, snapshots and incremental batches applied and ACKed, a bad
batch NACKed with nothing applied, serving from the replica on disk while
no control plane is up, resuming from the applied revision, fail-closed
--max-staleness, TLS with --tls-ca, Admin refused, and no plaintext secret
on disk. The real control plane has its own e2e tests.
"""

import base64
import json
import os
import subprocess
import tempfile
import time
import unittest

import grpc
from google.protobuf import json_format

import harness
from fake_cp import FakeControlPlane, record, write_node_token
from latchkey.v1 import sync_pb2
from latchkey.v1 import types_pb2

CRED_ID = "cred-replica"


class ReplicaStack(harness.Stack):
    """nginx + a latchkeyd in replica mode (no admin listener)."""

    def __init__(self, name, cp_port, extra_args=()):
        super().__init__(name, extra_args=extra_args)
        self.cp_addr = "127.0.0.1:%d" % cp_port
        self.node_token_file = os.path.join(self.dir, "node.token")
        write_node_token(self.node_token_file)

    def daemon_args(self):
        return ["--listen", self.agent_addr,
                "--agent-id", self.agent_id,
                "--data-dir", self.data_dir,
                "--node-key", self.node_key,
                "--control-plane", self.cp_addr,
                "--control-plane-token-file", self.node_token_file,
                "--allow-insecure-vendors",
                "--log-level", "debug"] + self.extra_args

    def _ready(self, timeout):
        return harness.wait_unix(self.agent_sock, timeout)

    def node_public_key(self):
        with open(self.node_key) as f:
            for line in f:
                if line.startswith("public "):
                    return base64.b64decode(line.split()[1])
        raise AssertionError("no public line in the node key file")


def self_signed(directory, name):
    """A key and self-signed certificate for 127.0.0.1; returns (key PEM,
    certificate PEM, certificate path)."""
    key = os.path.join(directory, name + ".key")
    cert = os.path.join(directory, name + ".pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
         "/CN=" + name, "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60)
    with open(key, "rb") as f:
        key_pem = f.read()
    with open(cert, "rb") as f:
        cert_pem = f.read()
    return key_pem, cert_pem, cert


def seal_for_node(node_pk, cred_id, field, value):
    """A SealedValue sealed to node_pk the way the control plane seals."""
    out = subprocess.run(
        [harness.runfile("tests/e2e/seal_for_node")],
        input=json.dumps({"node_pk_b64": base64.b64encode(node_pk).decode(),
                          "cred_id": cred_id, "field": field,
                          "value": value}),
        capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError("seal_for_node failed: " + out.stderr)
    doc = json.loads(out.stdout)
    return types_pb2.SealedValue(
        ephemeral_public_key=base64.b64decode(doc["ephemeral_public_key"]),
        nonce=base64.b64decode(doc["nonce"]),
        ciphertext=base64.b64decode(doc["ciphertext"]))


class ReplicaTestCase(unittest.TestCase):
    """Each test: nginx, a fake control plane, and a replica latchkeyd."""

    heartbeat_s = None
    extra_args = ()

    def setUp(self):
        self.cp_port = harness.free_port()
        self.cp = FakeControlPlane(self.cp_port, self.heartbeat_s).start()
        self.addCleanup(lambda: self.cp.stop())
        self.lk = ReplicaStack(self.id(), self.cp_port,
                               extra_args=list(self.extra_args))
        self.addCleanup(self._close_stack)
        self.lk.start()
        self.secret = harness.make_secret("rep")

    def _close_stack(self):
        problem = self.lk.close()
        if problem:
            raise AssertionError(problem)

    def catalog_records(self, node_pk):
        tool = harness.echo_tool("echo-bearer", self.lk.nginx.base_url,
                                 "bearer-token")
        cred = types_pb2.Credential(
            id=CRED_ID, type="bearer-token", label="replicated", version=1,
            fields=[types_pb2.FieldValue(
                name="token", secret=True,
                sealed=seal_for_node(node_pk, CRED_ID, "token",
                                     self.secret))])
        return [
            record("type/bearer-token",
                   harness.credential_type(harness.BEARER_TYPE)),
            record("tool/echo-bearer",
                   json_format.ParseDict(tool, types_pb2.Tool())),
            record("budget/main",
                   types_pb2.Budget(id="main", agents=[harness.AGENT])),
            record("cred/" + CRED_ID, cred),
            record("bind/main/tool/echo-bearer",
                   types_pb2.Binding(budget_id="main", tool_id="echo-bearer",
                                     credential_id=CRED_ID)),
        ]

    def sync_snapshot(self, revision=10):
        """Sends the catalog as a snapshot in two messages; returns the ACK."""
        hello = self.cp.wait_hello(1)
        recs = self.catalog_records(hello.node_public_key)
        self.cp.send(sync_pb2.SyncBatch(revision=revision, puts=recs[:2],
                                        snapshot_begin=True))
        self.cp.send(sync_pb2.SyncBatch(revision=revision, puts=recs[2:],
                                        snapshot_end=True))
        return self.cp.wait_ack(revision)

    def call(self):
        return self.lk.call("main", "echo-bearer", "get", {"item": "r"})

    def assertCallInjectsSecret(self, item="r"):
        resp = self.lk.call("main", "echo-bearer", "get", {"item": item})
        self.assertEqual(resp.WhichOneof("outcome"), "result")
        self.assertEqual(json.loads(resp.result.body)["authorization"],
                         "Bearer [REDACTED]")
        self.assertTrue(resp.result.redacted)
        arrived = self.lk.nginx.arrivals("/echo/" + item)
        self.assertEqual(arrived[-1]["authorization"],
                         "Bearer " + self.secret)
        for kind, form in harness.secret_forms(self.secret).items():
            self.assertNotIn(form.encode(), harness.whole_response(resp),
                             kind + " form of the secret reached the agent")

    def assertCode(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args, **kwargs)
        self.assertEqual(ctx.exception.code(), code,
                         "expected %s, got %s: %s"
                         % (code, ctx.exception.code(),
                            ctx.exception.details()))
        return ctx.exception


class ReplicaSyncTest(ReplicaTestCase):

    def test_hello_carries_agent_node_public_key_and_revision_zero(self):
        hello = self.cp.wait_hello(1)
        self.assertEqual(hello.agent_id, harness.AGENT)
        self.assertEqual(hello.node_public_key, self.lk.node_public_key())
        self.assertEqual(len(hello.node_public_key), 32)
        self.assertEqual(hello.have_revision, 0)

    def test_snapshot_is_acked_and_calls_inject_the_node_sealed_secret(self):
        ack = self.sync_snapshot(10)
        self.assertFalse(ack.nack, ack.error)
        self.assertCallInjectsSecret()
        tools = self.lk.list_tools("main").tools
        self.assertEqual([(t.tool_id, t.credential_ready) for t in tools],
                         [("echo-bearer", True)])

    def test_snapshot_parts_are_not_acked_until_its_end(self):
        hello = self.cp.wait_hello(1)
        recs = self.catalog_records(hello.node_public_key)
        self.cp.send(sync_pb2.SyncBatch(revision=7, puts=recs[:2],
                                        snapshot_begin=True))
        time.sleep(0.5)
        self.assertEqual(self.cp.answered(7), [])
        self.assertCode(harness.StatusCode.NOT_FOUND, self.call)
        self.cp.send(sync_pb2.SyncBatch(revision=7, puts=recs[2:],
                                        snapshot_end=True))
        self.assertFalse(self.cp.wait_ack(7).nack)
        self.assertEqual(len(self.cp.answered(7)), 1)
        self.assertCallInjectsSecret()

    def test_incremental_unbind_then_call_gets_missing_credential(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        self.assertCallInjectsSecret()
        self.cp.send(sync_pb2.SyncBatch(
            revision=11, deletes=["bind/main/tool/echo-bearer"]))
        ack = self.cp.wait_ack(11)
        self.assertFalse(ack.nack, ack.error)
        resp = self.call()
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")
        self.assertEqual(resp.missing_credential.credential_type,
                         "bearer-token")

    def test_a_batch_already_applied_is_acked_again_and_changes_nothing(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        self.cp.send(sync_pb2.SyncBatch(
            revision=9, deletes=["bind/main/tool/echo-bearer"]))
        self.assertFalse(self.cp.wait_ack(9).nack)
        self.assertCallInjectsSecret()

    def test_bad_key_is_nacked_and_nothing_of_the_batch_is_applied(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        self.cp.send(sync_pb2.SyncBatch(
            revision=12, deletes=["bind/main/tool/echo-bearer"],
            puts=[sync_pb2.SyncRecord(key="meta/revision",
                                      value=b"\xff" * 8)]))
        ack = self.cp.wait_ack(12)
        self.assertTrue(ack.nack)
        self.assertIn("'meta/revision' is not a catalog key", ack.error)
        # The delete in the same batch was not applied either.
        self.assertCallInjectsSecret("after-nack")
        # Until a snapshot comes, later batches are skipped unanswered, so a
        # refused change is never jumped over...
        self.cp.send(sync_pb2.SyncBatch(
            revision=13, deletes=["bind/main/tool/echo-bearer"]))
        time.sleep(0.5)
        self.assertEqual(self.cp.answered(13), [])
        self.assertCallInjectsSecret("skipped")
        # ...and the snapshot that answers the NACK is applied.
        recs = self.catalog_records(self.cp.wait_hello(1).node_public_key)
        self.cp.send(sync_pb2.SyncBatch(revision=14, puts=recs[:4],
                                        snapshot_begin=True,
                                        snapshot_end=True))
        self.assertFalse(self.cp.wait_ack(14).nack)
        self.assertEqual(self.call().WhichOneof("outcome"),
                         "missing_credential")

    def test_records_that_do_not_decode_or_are_not_node_sealed_are_nacked(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        key_ring_sealed = types_pb2.Credential(
            id="cred-kr", type="bearer-token",
            fields=[types_pb2.FieldValue(
                name="token", secret=True,
                sealed=types_pb2.SealedValue(key_id=7, nonce=b"n" * 24,
                                             ciphertext=b"c" * 40))])
        cases = [
            (20, sync_pb2.SyncRecord(key="tool/x", value=b"\xff\xff\xff"),
             "is not a valid latchkey.v1.Tool"),
            (22, record("tool/other", types_pb2.Tool(
                id="echo-bearer", base_url="http://127.0.0.1:1")),
             "holds the record of key 'tool/echo-bearer'"),
            (24, record("cred/cred-kr", key_ring_sealed),
             "is not sealed to a node key"),
        ]
        recs = self.catalog_records(self.cp.wait_hello(1).node_public_key)
        for rev, bad, reason in cases:
            self.cp.send(sync_pb2.SyncBatch(
                revision=rev, puts=[bad],
                deletes=["bind/main/tool/echo-bearer"]))
            ack = self.cp.wait_ack(rev)
            self.assertTrue(ack.nack, rev)
            self.assertIn(reason, ack.error)
            self.assertCallInjectsSecret("nack-%d" % rev)
            # Back in step: a snapshot at the next revision.
            self.cp.send(sync_pb2.SyncBatch(revision=rev + 1, puts=recs,
                                            snapshot_begin=True,
                                            snapshot_end=True))
            self.assertFalse(self.cp.wait_ack(rev + 1).nack)

    def test_snapshot_removes_records_it_does_not_hold(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        recs = self.catalog_records(self.cp.wait_hello(1).node_public_key)
        # The budget is gone from the agent's scope: so are its records.
        kept = [r for r in recs if not r.key.startswith(("budget/", "bind/",
                                                         "cred/"))]
        self.cp.send(sync_pb2.SyncBatch(revision=30, puts=kept,
                                        snapshot_begin=True,
                                        snapshot_end=True))
        self.assertFalse(self.cp.wait_ack(30).nack)
        self.assertCode(harness.StatusCode.NOT_FOUND, self.call)

    def test_restart_serves_from_disk_before_the_control_plane_is_back(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        self.cp.stop()
        self.lk.restart_daemon()
        # No control plane anywhere: the replica on disk answers at once.
        self.assertCallInjectsSecret("offline")
        self.cp = FakeControlPlane(self.cp_port).start()
        self.cp.revision = 10
        hello = self.cp.wait_hello(1, timeout=20)
        self.assertEqual(hello.have_revision, 10)
        self.assertEqual(hello.node_public_key, self.lk.node_public_key())
        self.cp.send(sync_pb2.SyncBatch(
            revision=11, deletes=["bind/main/tool/echo-bearer"]))
        self.assertFalse(self.cp.wait_ack(11).nack)
        self.assertEqual(self.call().WhichOneof("outcome"),
                         "missing_credential")

    def test_stream_failure_reconnects_and_resumes_from_applied_revision(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        self.cp.stop()
        self.cp = FakeControlPlane(self.cp_port).start()
        hello = self.cp.wait_hello(1, timeout=20)
        self.assertEqual(hello.have_revision, 10)
        log = self.lk.daemon.new_log()
        self.assertIn('"event":"sync_disconnected"', log)
        self.assertGreaterEqual(log.count('"event":"sync_connected"'), 1)

    def test_canary_secret_is_in_no_file_under_the_data_dir(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        self.assertCallInjectsSecret()
        self.lk.stop_daemon()
        forms = harness.secret_forms(self.secret)
        checked = 0
        for root, _, files in os.walk(self.lk.data_dir):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read()
                checked += 1
                for kind, form in forms.items():
                    self.assertNotIn(form.encode(), data,
                                     "%s form of the secret in %s"
                                     % (kind, name))
        self.assertGreater(checked, 0)
        for line in self.lk.log_lines():
            for kind, form in forms.items():
                self.assertNotIn(form, line, kind + " form in the log")


class ReplicaStalenessTest(ReplicaTestCase):

    heartbeat_s = 0.2
    extra_args = ("--max-staleness", "1s")

    def test_max_staleness_fails_closed_and_recovers_with_contact(self):
        self.assertFalse(self.sync_snapshot(10).nack)
        self.assertCallInjectsSecret("fresh")
        self.cp.stop()
        time.sleep(1.5)
        err = self.assertCode(harness.StatusCode.FAILED_PRECONDITION,
                              self.call)
        self.assertIn("no contact with the control plane for", err.details())
        self.assertIn("(limit --max-staleness 1000 ms)", err.details())
        self.assertCode(harness.StatusCode.FAILED_PRECONDITION,
                        self.lk.list_tools, "main")
        self.cp = FakeControlPlane(self.cp_port, self.heartbeat_s).start()
        self.cp.revision = 10
        deadline = time.monotonic() + 20
        while True:
            try:
                self.call()
                break
            except grpc.RpcError as e:
                if (e.code() != harness.StatusCode.FAILED_PRECONDITION
                        or time.monotonic() > deadline):
                    raise
                time.sleep(0.1)
        self.assertCallInjectsSecret("recovered")


class ReplicaTlsTest(unittest.TestCase):
    """--tls-ca: the node token goes only to a control plane whose
    certificate that CA vouches for."""

    def start(self, server_cert, ca_path):
        port = harness.free_port()
        cp = FakeControlPlane(port, tls=server_cert[:2]).start()
        self.addCleanup(cp.stop)
        lk = ReplicaStack(self.id(), port, extra_args=["--tls-ca", ca_path])
        self.addCleanup(self._close, lk)
        lk.start()
        return cp, lk

    def _close(self, lk):
        problem = lk.close()
        if problem:
            raise AssertionError(problem)

    def test_tls_control_plane_with_its_ca_gets_the_stream(self):
        work = self.work_dir()
        cert = self_signed(work, "cp")
        cp, lk = self.start(cert, cert[2])
        hello = cp.wait_hello(1)
        self.assertEqual(hello.agent_id, harness.AGENT)
        self.assertEqual(hello.node_public_key, lk.node_public_key())

    def test_tls_control_plane_with_another_ca_is_never_sent_the_token(self):
        work = self.work_dir()
        cert = self_signed(work, "cp")
        other = self_signed(work, "other")
        cp, lk = self.start(cert, other[2])
        time.sleep(2.0)
        self.assertEqual(cp.hellos, [])
        self.assertIn('"event":"sync_connect_failed"', lk.daemon.new_log())

    def work_dir(self):
        return tempfile.mkdtemp(prefix="tls-",
                                dir=os.environ.get("TEST_TMPDIR"))


class ReplicaFlagsTest(unittest.TestCase):

    def run_latchkeyd(self, *args):
        return subprocess.run([harness.latchkeyd_path()] + list(args),
                              capture_output=True, text=True, timeout=30)

    def test_admin_listen_is_refused_in_replica_mode(self):
        out = self.run_latchkeyd(
            "--agent-id", harness.AGENT, "--control-plane", "127.0.0.1:1",
            "--control-plane-token-file", "/nonexistent",
            "--admin-listen", "127.0.0.1:1", "--admin-token-file", "/x")
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("--admin-listen is refused in replica mode",
                      out.stderr)
        self.assertIn("Admin is the control plane's job", out.stderr)

    def test_control_plane_needs_a_token_file(self):
        out = self.run_latchkeyd("--agent-id", harness.AGENT,
                                 "--control-plane", "127.0.0.1:1")
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("--control-plane needs --control-plane-token-file",
                      out.stderr)

    def test_replica_flags_without_control_plane_are_refused(self):
        out = self.run_latchkeyd("--agent-id", harness.AGENT,
                                 "--max-staleness", "30s")
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("replica mode only", out.stderr)

    def test_bad_duration_is_a_usage_error(self):
        out = self.run_latchkeyd("--agent-id", harness.AGENT,
                                 "--max-staleness", "soon")
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("--max-staleness takes a duration", out.stderr)


if __name__ == "__main__":
    harness.main()
