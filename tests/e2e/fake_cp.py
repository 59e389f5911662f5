"""A fake control plane for replica-mode e2e tests: a real grpcio server of
latchkey.v1.Sync/Stream (protos/latchkey/v1/sync.proto) that the test
drives, shared by replica_test and replica_crash_test.

It records every hello, every ACK or NACK and every batch it sent, and
sends whatever batches are queued on the newest stream. What it answers a
hello with is serve_hello's job: by default a heartbeat when the sidecar
already has its revision; a subclass can queue a whole plan instead.
"""

import os
import queue
import threading
import time
from concurrent import futures

import grpc

from latchkey.v1 import sync_pb2
from latchkey.v1 import sync_pb2_grpc

NODE_TOKEN = "node-" + os.urandom(16).hex()
WAIT_S = 15.0


def write_node_token(path):
    """Writes NODE_TOKEN to a new 0600 file, as --control-plane-token-file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(NODE_TOKEN + "\n")


def record(key, message):
    return sync_pb2.SyncRecord(key=key, value=message.SerializeToString())


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
