"""--metrics-listen end to end: latchkeyd and latchkey-cp serve Prometheus
text format 0.0.4 at /metrics over real HTTP, scraped with urllib and read
with prometheus_client's own parser (Debian python3-prometheus-client).

Standalone: calls that end ok, with a missing credential, with an invalid
argument, for an unregistered tool and at a dead vendor move exactly the
counters and histogram counts they should, by exactly one; response bytes
equal the body the agent got; nothing secret is on the page; other paths
are 404; a bad address is a usage error naming the flag (exit 2); and the
flag is also read from LATCHKEY_METRICS_LISTEN; latchkey_open_connections
counts a client channel of our own on the agent socket while it is open.

Cluster: a replica's latchkey_replica_revision equals its control plane's
latchkey_cp_revision, and the control plane's replica gauges and
write-to-all-ACKed histogram reflect the replica and a write; the control
plane's latchkey_open_connections counts the replica's connection.
"""

import os
import subprocess
import unittest
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import cluster
import harness


def scrape(port, timeout=10.0):
    """The page at 127.0.0.1:port/metrics: (content type, text)."""
    if not harness.wait_tcp(port, timeout):
        raise AssertionError("nothing listens on metrics port %d" % port)
    with urllib.request.urlopen(
            "http://127.0.0.1:%d/metrics" % port, timeout=timeout) as r:
        return r.headers.get("Content-Type"), r.read().decode("utf-8")


def samples(text):
    """{(sample name, frozenset of label items): value} via the real
    parser; a duplicate series fails."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            if key in out:
                raise AssertionError("duplicate series %r" % (key,))
            out[key] = s.value
    return out


def value(page, name, **labels):
    return page.get((name, frozenset(labels.items())), 0.0)


class MetricsTest(harness.StackTestCase):

    def setUp(self):
        self.metrics_port = harness.free_port()
        self.stack_options = {"extra_args": [
            "--metrics-listen", "127.0.0.1:%d" % self.metrics_port]}
        super().setUp()

    def page(self):
        ctype, text = scrape(self.metrics_port)
        self.assertEqual(ctype, "text/plain; version=0.0.4; charset=utf-8")
        return text, samples(text)

    def test_calls_move_exactly_the_right_counters(self):
        lk = self.lk
        secret = harness.make_secret("metr")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer")
        dead_port = harness.free_port()
        lk.register_tool(harness.echo_tool(
            "dead-vendor", "http://127.0.0.1:%d" % dead_port, None))
        _, before = self.page()

        ok = lk.call("main", "echo-bearer", "get", {"item": "x"})
        self.assertEqual(ok.WhichOneof("outcome"), "result")
        missing = lk.call("main", "echo-apikey", "get", {"item": "x"})
        self.assertEqual(missing.WhichOneof("outcome"), "missing_credential")
        self.assertCode(harness.StatusCode.INVALID_ARGUMENT, lk.call,
                        "main", "echo-bearer", "get", {"item": 1})
        self.assertCode(harness.StatusCode.NOT_FOUND, lk.call,
                        "main", "no-such-tool", "get", {})
        dead_code = cluster.code_of(
            lambda: lk.call("main", "dead-vendor", "get", {"item": "x"}))
        self.assertNotEqual(dead_code, harness.StatusCode.OK)
        text, after = self.page()

        def moved(name, **labels):
            return value(after, name, **labels) - value(before, name,
                                                        **labels)

        calls = "latchkey_tool_calls_total"
        self.assertEqual(moved(calls, tool="echo-bearer", outcome="ok",
                               code="0"), 1)
        self.assertEqual(moved(calls, tool="echo-apikey",
                               outcome="missing_credential", code="0"), 1)
        self.assertEqual(moved(calls, tool="echo-bearer",
                               outcome="INVALID_ARGUMENT", code="3"), 1)
        self.assertEqual(moved(calls, tool="-", outcome="NOT_FOUND",
                               code="5"), 1)
        self.assertEqual(moved(calls, tool="dead-vendor",
                               outcome=dead_code.name,
                               code=str(dead_code.value[0])), 1)
        total = sum(v for (n, _), v in after.items() if n == calls)
        total -= sum(v for (n, _), v in before.items() if n == calls)
        self.assertEqual(total, 5)

        # Histogram counts match the calls, per tool; +Inf bucket = count.
        dur = "latchkey_call_duration_seconds"
        self.assertEqual(moved(dur + "_count", tool="echo-bearer"), 2)
        self.assertEqual(moved(dur + "_count", tool="echo-apikey"), 1)
        self.assertEqual(moved(dur + "_count", tool="-"), 1)
        self.assertEqual(moved(dur + "_count", tool="dead-vendor"), 1)
        self.assertEqual(value(after, dur + "_bucket", tool="echo-bearer",
                               le="+Inf"),
                         value(after, dur + "_count", tool="echo-bearer"))
        self.assertGreater(moved(dur + "_sum", tool="echo-bearer"), 0)
        # Two calls reached a vendor: the ok one and the dead one.
        internal = "latchkey_sidecar_internal_seconds"
        self.assertEqual(moved(internal + "_count"), 2)
        self.assertLess(moved(internal + "_sum"),
                        moved(dur + "_sum", tool="echo-bearer")
                        + moved(dur + "_sum", tool="dead-vendor"))
        self.assertEqual(moved("latchkey_response_bytes_total",
                               tool="echo-bearer"), len(ok.result.body))
        self.assertEqual(moved("latchkey_vendor_errors_total",
                               tool="dead-vendor",
                               kind=dead_code.name.lower()), 1)
        self.assertEqual(value(after, "latchkey_calls_in_flight"), 0)
        self.assertEqual(value(after, "latchkey_metrics_dropped_total"), 0)

        # Nothing secret: not the credential, the admin token, or a form.
        for form in harness.secret_forms(secret).values():
            self.assertNotIn(form, text)
        self.assertNotIn(lk.token, text)

    def test_open_connections_counts_a_connected_channel(self):
        lk = self.lk
        gauge = "latchkey_open_connections"
        # The admin listener is counted too (the harness's channel is on it).
        _, page = self.page()
        self.assertIn((gauge, frozenset({("listener", lk.admin_addr)})), page)
        # A channel of our own, connected by a real call; the harness's
        # channels may add to it, so at least one.
        ch = harness.grpc.insecure_channel(lk.agent_addr)
        try:
            stub = harness.toolcalls_pb2_grpc.ToolCallsStub(ch)
            stub.ListTools(harness.toolcalls_pb2.ListToolsRequest(
                budget_id="main"), timeout=15)
            _, page = self.page()
            self.assertGreaterEqual(value(page, gauge,
                                          listener=lk.agent_addr), 1)
        finally:
            ch.close()

    def test_only_metrics_path_is_served(self):
        self.page()
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(
                "http://127.0.0.1:%d/" % self.metrics_port, timeout=10)
        self.assertEqual(cm.exception.code, 404)
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(urllib.request.Request(
                "http://127.0.0.1:%d/metrics" % self.metrics_port,
                data=b"x", method="POST"), timeout=10)
        self.assertEqual(cm.exception.code, 405)

    def test_flag_is_read_from_the_environment(self):
        self.lk.stop_daemon()
        port = harness.free_port()
        self.lk.extra_args = []
        env = dict(self.lk.daemon_env(),
                   LATCHKEY_METRICS_LISTEN="127.0.0.1:%d" % port)
        self.lk.start_daemon(env=env)
        _, text = scrape(port)
        self.assertIn("# TYPE latchkey_tool_calls_total counter", text)

    def test_bad_address_is_a_usage_error_naming_the_flag(self):
        for bad in ("9464", "unix:/tmp/m.sock", "localhost:http"):
            r = subprocess.run(
                [harness.latchkeyd_path(), "--agent-id", "a",
                 "--metrics-listen", bad],
                capture_output=True, text=True, timeout=30,
                env=harness.daemon_env())
            self.assertEqual(r.returncode, 2, r.stderr)
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, r.stderr)
            self.assertIn("--metrics-listen '%s'" % bad, lines[0])


class MetricsClusterTest(harness.E2EAssertions, unittest.TestCase):

    def setUp(self):
        self.c = cluster.Cluster(self.id(), control_planes=1)
        self.addCleanup(self._close)
        self.cp_port = harness.free_port()
        self.cp = self.c.cps[0]
        self.cp.extra_args = ["--metrics-listen",
                              "127.0.0.1:%d" % self.cp_port]
        self.c.start()

    def _close(self):
        problem = self.c.close()
        if problem:
            raise AssertionError(problem)

    def test_replica_revision_matches_the_control_planes(self):
        cp = self.cp
        cp.register_type(harness.BEARER_TYPE)
        cp.register_tool(harness.echo_tool("echo-m", self.c.nginx.base_url,
                                           "bearer-token"))
        cp.create_budget("budget-m", ["agent-m"])
        sc_port = harness.free_port()
        self.c.sidecar("sc1", "agent-m", cp, extra_args=[
            "--metrics-listen", "127.0.0.1:%d" % sc_port])
        self.c.wait_settled(cp, ["agent-m"])

        def both_at_revision():
            cpm = samples(scrape(self.cp_port)[1])
            scm = samples(scrape(sc_port)[1])
            rev = value(cpm, "latchkey_cp_revision")
            if rev > 0 and value(scm, "latchkey_replica_revision") == rev:
                return cpm, scm
            return None

        cpm, scm = cluster.wait_until(both_at_revision,
                                      what="replica revision == cp's")
        self.assertEqual(value(cpm, "latchkey_cp_replicas"), 1)
        lag = [(dict(k[1]), v) for k, v in cpm.items()
               if k[0] == "latchkey_cp_replica_ack_lag_revisions"]
        self.assertEqual(len(lag), 1)
        self.assertEqual(lag[0][0]["agent"], "agent-m")
        self.assertEqual(lag[0][1], 0)
        self.assertGreater(value(scm, "latchkey_replica_applied_batches_total"),
                           0)
        self.assertLess(value(scm, "latchkey_replica_staleness_seconds"), 30)
        # The replica's Sync stream is a connection on the cp's listener.
        self.assertGreaterEqual(value(cpm, "latchkey_open_connections",
                                      listener=cp.addr), 1)

        # One more write: ACKed by every replica, so the histogram counts it.
        acked = "latchkey_cp_write_to_all_acked_seconds_count"
        n0 = value(cpm, acked)
        cp.create_budget("budget-m2", ["agent-m"])
        cluster.wait_until(
            lambda: value(samples(scrape(self.cp_port)[1]), acked) > n0,
            what="the write counted in %s" % acked)
        cpm = samples(scrape(self.cp_port)[1])
        self.assertEqual(value(cpm, "latchkey_cp_admin_requests_total",
                               method="CreateBudget", code="0"), 2)
        self.assertEqual(value(cpm, "latchkey_cp_replica_ack_lag_revisions",
                               agent="agent-m", peer=lag[0][0]["peer"]), 0)


if __name__ == "__main__":
    unittest.main()
