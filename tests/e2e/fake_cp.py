"""A fake control plane for replica-mode e2e tests: a real grpcio server of
latchkey.v1.Sync/Stream (protos/latchkey/v1/sync.proto) that the test
drives, shared by replica_test and replica_crash_test.

It records every hello, every ACK or NACK and every batch it sent, and
sends whatever batches are queued on the newest stream. What it answers a
hello with is serve_hello's job: by default a heartbeat when the sidecar
already has its revision; a subclass can queue a whole plan instead.

It also serves Sync/Refresh for oauth2 credentials the test registered
with serve_oauth: it records every request, answers with the status the
test set (refresh_status, after refresh_delay seconds), and on OK, when
the credential is not already past the generation asked about, bumps its
generation, takes new token fields from the test's new_fields() and
pushes the credential, sealed to the node key with seal_for_node (the
real lib/seal construction), on the open stream before answering, as the
real control plane does through etcd.
"""

import base64
import json
import os
import queue
import subprocess
import threading
import time
from concurrent import futures

import grpc

import harness
from latchkey.v1 import sync_pb2
from latchkey.v1 import sync_pb2_grpc
from latchkey.v1 import types_pb2

NODE_TOKEN = "node-" + os.urandom(16).hex()
WAIT_S = 15.0


def write_node_token(path):
    """Writes NODE_TOKEN to a new 0600 file, as --control-plane-token-file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(NODE_TOKEN + "\n")


def record(key, message):
    return sync_pb2.SyncRecord(key=key, value=message.SerializeToString())


def seal_for_node(node_pk, cred_id, field, value):
    """A SealedValue sealed to node_pk the way the control plane seals
    (tests/e2e/seal_for_node)."""
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


# The secret fields of an oauth2 credential (lib/oauth.h).
OAUTH_SECRET_FIELDS = ("access_token", "refresh_token", "client_secret")


def oauth_credential(node_pk, cred_id, type_id, fields, **oauth_state):
    """An oauth2 Credential record as a replica receives it: the secret
    fields sealed to node_pk, the others plain, and OAuthState from
    oauth_state (generation, last_refresh_result, reauthorize, ...)."""
    values = []
    for name in sorted(fields):
        if name in OAUTH_SECRET_FIELDS:
            values.append(types_pb2.FieldValue(
                name=name, secret=True,
                sealed=seal_for_node(node_pk, cred_id, name, fields[name])))
        else:
            values.append(types_pb2.FieldValue(name=name,
                                               value=fields[name]))
    return types_pb2.Credential(
        id=cred_id, type=type_id, label="oauth", version=1, fields=values,
        oauth=types_pb2.OAuthState(**oauth_state))


def completes_revision(batch):
    """True when a sidecar that applies batch is then at batch.revision: an
    incremental batch or the end of a snapshot, not a heartbeat or an
    earlier snapshot part."""
    if batch.heartbeat:
        return False
    if batch.snapshot_begin or batch.snapshot_end:
        return batch.snapshot_end
    return True


class FakeControlPlane(sync_pb2_grpc.SyncServicer):
    """A Sync server the test drives: it records every hello and ACK, and
    sends whatever batches the test queues on the newest stream. On a hello
    whose have_revision equals its own revision it answers with a
    heartbeat, as a control plane that has nothing new would."""

    def __init__(self, port, heartbeat_s=None, tls=None):
        self.port = port
        self.tls = tls  # (key PEM, certificate PEM) to serve TLS
        self.heartbeat_s = heartbeat_s
        self.revision = 0
        self.hellos = []
        self.acks = []
        # (stream number, batch) for every batch handed to grpc, in order;
        # stream n is the one whose hello is hellos[n - 1].
        self.sent = []
        self.open_streams = 0  # streams whose ACK reader still runs
        self.cond = threading.Condition()
        self.out = None
        self.server = None
        # Sync/Refresh: every request (RefreshRequest, node token seen),
        # the answer to give, and the oauth2 credentials it can refresh.
        self.refreshes = []
        self.refresh_status = grpc.StatusCode.OK
        self.refresh_details = "refused by the test"
        self.refresh_delay = 0.0
        self.refresh_push = True
        self.oauth = {}
        self._refresh_lock = threading.Lock()

    # -- the servicer ------------------------------------------------------

    def Stream(self, request_iterator, context):
        md = dict(context.invocation_metadata())
        if md.get("authorization") != "Bearer " + NODE_TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad node token")
        try:
            hello = next(request_iterator)
        except StopIteration:
            return
        out = queue.Queue()
        with self.cond:
            self.hellos.append(hello)
            stream_no = len(self.hellos)
            self.out = out
            self.open_streams += 1
            self.cond.notify_all()
        threading.Thread(target=self._read_acks, args=(request_iterator,),
                         daemon=True).start()
        self.serve_hello(hello, out)
        next_beat = time.monotonic()
        while context.is_active():
            if self.heartbeat_s and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat_s
                yield sync_pb2.SyncBatch(revision=self.revision,
                                         heartbeat=True)
            try:
                batch = out.get(timeout=0.05)
            except queue.Empty:
                continue
            if batch is None:
                return
            with self.cond:
                self.sent.append((stream_no, batch))
                self.cond.notify_all()
            yield batch

    def serve_hello(self, hello, out):
        """Queues on out what a new stream starts with (runs on the
        stream's thread, right after the hello is recorded)."""
        if self.revision and hello.have_revision == self.revision:
            out.put(sync_pb2.SyncBatch(revision=self.revision, heartbeat=True))

    def Refresh(self, request, context):
        md = dict(context.invocation_metadata())
        if md.get("authorization") != "Bearer " + NODE_TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad node token")
        with self.cond:
            self.refreshes.append(request)
            status, details = self.refresh_status, self.refresh_details
            delay, push = self.refresh_delay, self.refresh_push
            self.cond.notify_all()
        if delay:
            time.sleep(delay)
        if status != grpc.StatusCode.OK:
            context.abort(status, details)
        with self._refresh_lock:
            entry = self.oauth.get(request.credential_id)
            if entry is None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              "credential outside the agent's scope")
            if push and entry["generation"] <= request.generation:
                entry["generation"] += 1
                entry["fields"].update(entry["new_fields"]())
                cred = oauth_credential(
                    entry["node_pk"], request.credential_id,
                    entry["type_id"], entry["fields"],
                    generation=entry["generation"],
                    last_refresh_result="ok")
                self.send(sync_pb2.SyncBatch(
                    revision=self.revision + 1,
                    puts=[record("cred/" + request.credential_id, cred)]))
            return sync_pb2.RefreshResponse(generation=entry["generation"])

    def _read_acks(self, request_iterator):
        try:
            for req in request_iterator:
                with self.cond:
                    self.acks.append(req.ack)
                    self.cond.notify_all()
        except grpc.RpcError:
            pass
        finally:
            with self.cond:
                self.open_streams -= 1
                self.cond.notify_all()

    # -- test controls -----------------------------------------------------

    def start(self):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        sync_pb2_grpc.add_SyncServicer_to_server(self, self.server)
        addr = "127.0.0.1:%d" % self.port
        if self.tls:
            creds = grpc.ssl_server_credentials([self.tls])
            bound = self.server.add_secure_port(addr, creds)
        else:
            bound = self.server.add_insecure_port(addr)
        if bound != self.port:
            raise RuntimeError("fake control plane could not bind its port")
        self.server.start()
        return self

    def stop(self):
        with self.cond:
            if self.out is not None:
                self.out.put(None)
            self.out = None
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None

    def wait_hello(self, count, timeout=WAIT_S):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.hellos) >= count,
                                      timeout):
                raise AssertionError("no hello #%d within %ss" % (count,
                                                                  timeout))
            return self.hellos[count - 1]

    def send(self, batch):
        with self.cond:
            if not self.cond.wait_for(lambda: self.out is not None, WAIT_S):
                raise AssertionError("no stream to send on")
            if not batch.heartbeat and batch.revision > self.revision:
                self.revision = batch.revision
            self.out.put(batch)

    def serve_oauth(self, node_pk, cred_id, type_id, fields, new_fields,
                    **oauth_state):
        """Makes cred_id refreshable through Refresh and returns its
        record (generation oauth_state["generation"], default 1) for the
        test to send; new_fields() gives the fields a refresh changes."""
        oauth_state.setdefault("generation", 1)
        with self._refresh_lock:
            self.oauth[cred_id] = {
                "node_pk": node_pk, "type_id": type_id,
                "fields": dict(fields), "new_fields": new_fields,
                "generation": oauth_state["generation"]}
        return oauth_credential(node_pk, cred_id, type_id, fields,
                                **oauth_state)

    def refresh_requests(self):
        with self.cond:
            return list(self.refreshes)

    def wait_ack(self, revision, timeout=WAIT_S):
        """The first ACK or NACK of revision."""
        def found():
            return [a for a in self.acks if a.revision == revision]
        with self.cond:
            if not self.cond.wait_for(found, timeout):
                raise AssertionError("no answer to revision %d within %ss; "
                                     "answers so far: %s"
                                     % (revision, timeout, self.acks))
            return found()[0]

    def answered(self, revision):
        with self.cond:
            return [a for a in self.acks if a.revision == revision]

    def wait_streams_closed(self, timeout=WAIT_S):
        """Waits until every stream's ACK reader has ended (its sidecar is
        gone), so no ACK of a dead sidecar can still arrive."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.open_streams == 0,
                                      timeout):
                raise AssertionError("%d Sync streams still open after %ss"
                                     % (self.open_streams, timeout))
