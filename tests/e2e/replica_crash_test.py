"""Crash safety of replica mode: kill -9 of latchkeyd in the middle of
applying a large snapshot or large incremental batches, many times over
the same data dir, never leaves half a revision on disk.

A fake control plane (fake_cp.py) serves a catalog of 20,000 bindings, 1,000
tools with 2 KB descriptions, 20 budgets and a credential type: a snapshot
of several MiB in several messages, and incremental batches of ~300 KB that
rewrite a thousand bindings, a hundred tools and a budget and delete forty
bindings each. Every revision's content is a pure function of its number,
so the test knows each one's per-prefix record count and checksum.

Each round publishes new revisions, starts latchkeyd --control-plane on
the same data dir, and SIGKILLs it at a varied moment: right after its
hello, after the control plane handed grpc the k-th message of the stream
(mid-snapshot in snapshot rounds), right after its n-th ACK, or after a
random delay. Then tests/e2e/replica_inspect reads the data dir offline,
and the round checks that the stored revision is 0 or one the control
plane sent completely, that the records are exactly that revision's, that
it is at least every revision ever ACKed, and that the next hello resumes
from it. At the end latchkeyd runs once more to the newest revision and
stops cleanly. Set LATCHKEY_CRASH_SEED to replay a run's kill moments.
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import unittest

import harness
from fake_cp import (FakeControlPlane, WAIT_S, completes_revision, record,
                     write_node_token)
from latchkey.v1 import sync_pb2
from latchkey.v1 import types_pb2

# Sanitizer builds run several times slower: stretch every wait.
SLOW = 4.0 if os.environ.get("ASAN_OPTIONS") else 1.0
ROUNDS = 15
BUDGETS = 20
TOOLS = 1000  # bindings: BUDGETS * TOOLS = 20,000
DESCRIPTION_BYTES = 2000
BASE_REVISION = 100
BATCHES_PER_ROUND = 6
# A snapshot round sends a snapshot this many revisions below the newest,
# then the batches up to the newest.
SNAPSHOT_TAIL = 3
MESSAGE_BYTES = 1 << 20
BINDINGS_PER_BATCH = 1000
TOOLS_PER_BATCH = 100
DELETES_PER_BATCH = 40
PREFIXES = ("tool/", "type/", "cred/", "budget/", "bind/")
KILL_MOMENTS = ("hello", "sent", "ack", "delay")


def description(tool, revision):
    unit = "tool %d at revision %d; " % (tool, revision)
    return (unit * (DESCRIPTION_BYTES // len(unit) + 1))[:DESCRIPTION_BYTES]


def tool_record(tool, revision):
    tid = "tool-%04d" % tool
    return record("tool/" + tid, types_pb2.Tool(
        id=tid, description=description(tool, revision),
        base_url="https://vendor-%d.example" % (tool % 7),
        credential_type="bearer-token"))


def binding_record(index, revision):
    budget, tool = divmod(index, TOOLS)
    bid, tid = "budget-%02d" % budget, "tool-%04d" % tool
    return record("bind/%s/tool/%s" % (bid, tid), types_pb2.Binding(
        budget_id=bid, tool_id=tid,
        credential_id="cred-%04d-r%d" % (tool, revision)))


def binding_key(index):
    budget, tool = divmod(index, TOOLS)
    return "bind/budget-%02d/tool/tool-%04d" % (budget, tool)


def budget_record(budget, revision):
    bid = "budget-%02d" % budget
    return record("budget/" + bid, types_pb2.Budget(
        id=bid, agents=[harness.AGENT, "agent-r%d" % revision]))


def digest(state):
    """What replica_inspect prints for a store holding state (key -> value
    bytes): per prefix, the record count and the checksum of its records
    in key order."""
    out = {}
    for prefix in PREFIXES:
        h = hashlib.sha256()
        keys = sorted(k for k in state if k.startswith(prefix))
        for k in keys:
            kb, v = k.encode(), state[k]
            h.update(len(kb).to_bytes(4, "big") + kb
                     + len(v).to_bytes(4, "big") + v)
        out[prefix] = {"count": len(keys), "invalid": 0,
                       "sha256": h.hexdigest()}
    return out


class History:
    """The control plane's catalog over time: revision BASE_REVISION is the
    initial catalog, each later one an incremental batch on top of it."""

    def __init__(self):
        recs = [record("type/bearer-token",
                       harness.credential_type(harness.BEARER_TYPE))]
        recs += [tool_record(t, BASE_REVISION) for t in range(TOOLS)]
        recs += [budget_record(b, BASE_REVISION) for b in range(BUDGETS)]
        recs += [binding_record(i, BASE_REVISION)
                 for i in range(BUDGETS * TOOLS)]
        self.state = {r.key: r.value for r in recs}
        self.latest = BASE_REVISION
        self.batches = {}  # revision -> its incremental SyncBatch
        self.digests = {0: digest({}), BASE_REVISION: digest(self.state)}
        self.snapshot = self.snapshot_messages()

    def publish(self, count, snapshot_at=None):
        """Adds count revisions; keeps the snapshot of revision snapshot_at
        (one of them) as the one to serve."""
        for _ in range(count):
            r = self.latest + 1
            n = BUDGETS * TOOLS
            puts = [binding_record((r * 1009 + i * (n // BINDINGS_PER_BATCH))
                                   % n, r)
                    for i in range(BINDINGS_PER_BATCH)]
            puts += [tool_record((r * 13 + i * (TOOLS // TOOLS_PER_BATCH))
                                 % TOOLS, r)
                     for i in range(TOOLS_PER_BATCH)]
            puts.append(budget_record(r % BUDGETS, r))
            deletes = [binding_key((r * 7919 + i * (n // DELETES_PER_BATCH))
                                   % n)
                       for i in range(DELETES_PER_BATCH)]
            # As the applier does: puts, then deletes.
            for p in puts:
                self.state[p.key] = p.value
            for k in deletes:
                self.state.pop(k, None)
            self.batches[r] = sync_pb2.SyncBatch(revision=r, puts=puts,
                                                 deletes=deletes)
            self.latest = r
            self.digests[r] = digest(self.state)
            if r == snapshot_at:
                self.snapshot = self.snapshot_messages()

    def snapshot_messages(self):
        """The current state as one snapshot in messages of about
        MESSAGE_BYTES."""
        msgs, part, size = [], [], 0
        for k in sorted(self.state):
            part.append(sync_pb2.SyncRecord(key=k, value=self.state[k]))
            size += len(k) + len(self.state[k])
            if size >= MESSAGE_BYTES:
                msgs.append(part)
                part, size = [], 0
        if part:
            msgs.append(part)
        return [sync_pb2.SyncBatch(revision=self.latest, puts=p,
                                   snapshot_begin=(i == 0),
                                   snapshot_end=(i == len(msgs) - 1))
                for i, p in enumerate(msgs)]

    def plan(self, have_revision, snapshot):
        """What to stream to a sidecar at have_revision: the kept snapshot
        (when asked for, or when the sidecar has nothing) and then the
        batches after the snapshot's or the sidecar's revision."""
        if snapshot or (have_revision not in self.batches
                        and have_revision != BASE_REVISION):
            start = self.snapshot[-1].revision
            return self.snapshot + [self.batches[r] for r in
                                    range(start + 1, self.latest + 1)]
        return [self.batches[r] for r in
                range(have_revision + 1, self.latest + 1)]


class CrashControlPlane(FakeControlPlane):
    """Streams History.plan for the sidecar's have_revision as fast as
    grpc takes it."""

    def __init__(self, port, history):
        super().__init__(port)
        self.history = history
        self.send_snapshot = False

    def serve_hello(self, hello, out):
        for batch in self.history.plan(hello.have_revision,
                                       self.send_snapshot):
            out.put(batch)


class ReplicaCrashTest(unittest.TestCase):

    def setUp(self):
        seed = os.environ.get("LATCHKEY_CRASH_SEED") or str(
            random.SystemRandom().randrange(1 << 32))
        sys.stderr.write("LATCHKEY_CRASH_SEED=%s\n" % seed)
        self.rng = random.Random(int(seed))
        self.dirs = harness.TestDirs(self.id())
        self.addCleanup(self.dirs.remove)
        self.data_dir = os.path.join(self.dirs.dir, "data")
        self.stderr_path = os.path.join(self.dirs.dir, "latchkeyd.stderr")
        token_file = os.path.join(self.dirs.dir, "node.token")
        write_node_token(token_file)
        self.history = History()
        self.cp = CrashControlPlane(harness.free_port(), self.history).start()
        self.addCleanup(self.cp.stop)
        self.args = [
            "--listen", "unix:" + os.path.join(self.dirs.sock_dir,
                                              "agent.sock"),
            "--agent-id", harness.AGENT,
            "--data-dir", self.data_dir,
            "--node-key", os.path.join(self.dirs.dir, "node.key"),
            "--control-plane", "127.0.0.1:%d" % self.cp.port,
            "--control-plane-token-file", token_file,
            "--log-level", "debug"]
        self.proc = None
        self.addCleanup(self._kill_leftover)

    def _kill_leftover(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- helpers -----------------------------------------------------------

    def start_daemon(self):
        """Starts latchkeyd and returns the number its hello will have."""
        hello_no = len(self.cp.hellos) + 1
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [harness.latchkeyd_path()] + self.args,
                env=harness.daemon_env(), stdin=subprocess.DEVNULL,
                stdout=err, stderr=err)
        return hello_no

    def log_tail(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")[-4000:]

    def wait_for(self, what, pred, timeout):
        with self.cp.cond:
            if self.cp.cond.wait_for(
                    lambda: pred() or self.proc.poll() is not None, timeout):
                if pred():
                    return
            self.fail("latchkeyd %s before %s (within %.0fs); stderr:\n%s"
                      % ("exited with %s" % self.proc.poll()
                         if self.proc.poll() is not None else "still running",
                         what, timeout, self.log_tail()))

    def stream_sent(self, hello_no):
        return [b for n, b in self.cp.sent if n == hello_no]

    def inspect(self):
        out = subprocess.run(
            [harness.runfile("tests/e2e/replica_inspect"), self.data_dir],
            capture_output=True, text=True, timeout=60 * SLOW,
            env=harness.daemon_env())
        self.assertEqual(out.returncode, 0,
                         "replica_inspect failed: " + out.stderr)
        return json.loads(out.stdout)

    def max_acked(self):
        with self.cp.cond:
            nacks = [a for a in self.cp.acks if a.nack]
            self.assertEqual(nacks, [], "the sidecar refused a batch")
            return max([a.revision for a in self.cp.acks], default=0)

    def assertWholeRevision(self, seen, what):
        rev = seen["revision"]
        with self.cp.cond:
            completed = {b.revision for _, b in self.cp.sent
                         if completes_revision(b)}
        self.assertTrue(rev == 0 or rev in completed,
                        "%s: stored revision %d was never sent whole "
                        "(sent: %s)" % (what, rev, sorted(completed)))
        self.assertEqual(seen["foreign"], 0, what)
        self.assertEqual(seen["prefixes"], self.history.digests[rev],
                         "%s: the records on disk are not revision %d's"
                         % (what, rev))

    # -- the test ----------------------------------------------------------

    def test_kill_9_mid_apply_leaves_a_whole_acked_revision(self):
        started = time.monotonic()
        stored = 0
        interrupted = 0
        for i in range(ROUNDS):
            snapshot_round = i % 3 == 0
            newest = self.history.latest + BATCHES_PER_ROUND
            self.history.publish(
                BATCHES_PER_ROUND,
                snapshot_at=newest - SNAPSHOT_TAIL if snapshot_round
                else None)
            self.cp.send_snapshot = snapshot_round
            moment = KILL_MOMENTS[i % len(KILL_MOMENTS)]
            hello_no = self.start_daemon()
            self.wait_for("its hello",
                          lambda: len(self.cp.hellos) >= hello_no,
                          WAIT_S * SLOW)
            hello = self.cp.hellos[hello_no - 1]
            self.assertEqual(hello.have_revision, stored,
                             "round %d: the hello does not resume from the "
                             "revision on disk" % i)
            plan = self.history.plan(hello.have_revision, snapshot_round)
            acks_before = len(self.cp.acks)
            if moment == "sent":
                k = self.rng.randint(1, len(plan))
                self.wait_for("message %d was sent" % k,
                              lambda: len(self.stream_sent(hello_no)) >= k,
                              WAIT_S * SLOW)
                detail = "message %d of %d sent" % (k, len(plan))
            elif moment == "ack":
                n = self.rng.randint(1, 3)
                self.wait_for("ACK %d" % n,
                              lambda: len(self.cp.acks) >= acks_before + n,
                              30 * SLOW)
                detail = "ACK %d" % n
            elif moment == "delay":
                delay = self.rng.uniform(0, 1.5) * SLOW
                time.sleep(delay)
                detail = "%.0f ms after the hello" % (delay * 1000)
            else:
                detail = "at the hello"
            self.assertIsNone(self.proc.poll(),
                              "latchkeyd died by itself in round %d; "
                              "stderr:\n%s" % (i, self.log_tail()))
            self.proc.kill()
            self.proc.wait()
            self.cp.wait_streams_closed(WAIT_S * SLOW)
            acked = self.max_acked()
            sent_whole = [b.revision for b in self.stream_sent(hello_no)
                          if completes_revision(b)]
            seen = self.inspect()
            what = "round %d (%s, killed %s)" % (
                i, "snapshot" if snapshot_round else "batches", detail)
            self.assertWholeRevision(seen, what)
            rev = seen["revision"]
            self.assertGreaterEqual(rev, acked,
                                    "%s: a revision it ACKed is lost" % what)
            self.assertGreaterEqual(rev, stored,
                                    "%s: the replica went back" % what)
            if sent_whole and rev < max(sent_whole):
                interrupted += 1
            sys.stderr.write("%s: stored %d, ACKed %d, newest sent %s\n"
                             % (what, rev, acked, max(sent_whole,
                                                      default="none")))
            stored = rev
        self.assertGreater(interrupted, 0,
                           "no kill landed before the stream was applied: "
                           "the test proves nothing")

        # Once more, undisturbed: it converges on the newest revision.
        self.cp.send_snapshot = False
        hello_no = self.start_daemon()
        self.wait_for("its hello", lambda: len(self.cp.hellos) >= hello_no,
                      WAIT_S * SLOW)
        self.assertEqual(self.cp.hellos[hello_no - 1].have_revision, stored)
        latest = self.history.latest
        self.wait_for("the ACK of revision %d" % latest,
                      lambda: any(a.revision == latest
                                  for a in self.cp.acks), 60 * SLOW)
        self.proc.terminate()
        code = self.proc.wait(30 * SLOW)
        self.assertEqual(code, 0, "latchkeyd exited with %s after SIGTERM; "
                         "stderr:\n%s" % (code, self.log_tail()))
        self.max_acked()
        seen = self.inspect()
        self.assertEqual(seen["revision"], latest)
        self.assertWholeRevision(seen, "after converging")
        sys.stderr.write("%d rounds, %d killed mid-stream, %.1fs\n"
                         % (ROUNDS, interrupted,
                            time.monotonic() - started))


if __name__ == "__main__":
    harness.main()
