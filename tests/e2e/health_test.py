"""grpc.health.v1.Health on latchkeyd and latchkey-cp (DESIGN.md §7): on
every listener without a token, and alone on --health-listen for
Kubernetes' probes; SERVING only once ready (a replica once its catalog is
loaded), NOT_SERVING while draining; Watch streams every change."""

import os
import signal
import subprocess
import threading
import time
import unittest
import urllib.request

import grpc

import cluster as cluster_mod
import harness
import health_pb as hp

SERVICES = ("", "latchkey.v1.ToolCalls", "latchkey.v1.Admin")


class StandaloneHealthTest(harness.StackTestCase):

    def setUp(self):
        self.health_port = harness.free_port()
        self.health_addr = "127.0.0.1:%d" % self.health_port
        self.metrics_port = harness.free_port()
        self.stack_options = {"extra_args": (
            "--health-listen", self.health_addr, "--drain-timeout", "30s",
            "--metrics-listen", "127.0.0.1:%d" % self.metrics_port)}
        super().setUp()

    def test_every_listener_answers_serving_without_a_token(self):
        for addr in (self.lk.agent_addr, self.lk.admin_addr,
                     self.health_addr):
            for service in SERVICES:
                self.assertEqual(hp.check(addr, service), hp.SERVING,
                                 (addr, service))

    def test_unknown_service_is_not_found_and_watch_says_service_unknown(self):
        with self.assertRaises(grpc.RpcError) as cm:
            hp.check(self.health_addr, "latchkey.v1.Sync")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        ch, statuses = hp.watch(self.health_addr, "no.such.Service")
        try:
            self.assertEqual(next(statuses), hp.SERVICE_UNKNOWN)
        finally:
            ch.close()

    def test_health_listener_serves_only_health(self):
        ch = grpc.insecure_channel(self.health_addr)
        try:
            stub = harness.toolcalls_pb2_grpc.ToolCallsStub(ch)
            with self.assertRaises(grpc.RpcError) as cm:
                stub.ListTools(harness.toolcalls_pb2.ListToolsRequest(
                    budget_id="main"), timeout=5)
            self.assertEqual(cm.exception.code(),
                             grpc.StatusCode.UNIMPLEMENTED)
        finally:
            ch.close()

    def calls_in_flight(self):
        """latchkey_calls_in_flight from the sidecar's metrics page."""
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("latchkey_calls_in_flight "):
                    return float(line.split()[1])
        return 0.0

    def test_not_serving_during_drain_and_watch_sees_it(self):
        self.credential("bearer-token", {"token": harness.make_secret("hd")},
                        bind_tool="echo-bearer")
        ch, statuses = hp.watch(self.health_addr)
        self.addCleanup(ch.close)
        self.assertEqual(next(statuses), hp.SERVING)
        slow = [self.lk.toolcalls.Call.future(
            harness.toolcalls_pb2.ToolCallRequest(
                budget_id="main", tool_id="echo-bearer", operation="slow",
                arguments_json="{}"), timeout=30) for _ in range(5)]
        # SIGTERM only once all five are in the sidecar (not merely sent).
        deadline = time.monotonic() + 20
        while self.calls_in_flight() < 5:
            self.assertLess(time.monotonic(), deadline,
                            "the slow calls never reached the sidecar")
            time.sleep(0.02)
        proc = self.lk.daemon.proc
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(next(statuses), hp.NOT_SERVING)
        # The probe listener still answers while the calls drain.
        self.assertIsNone(proc.poll())
        self.assertEqual(hp.check(self.health_addr), hp.NOT_SERVING)
        for f in slow:
            self.assertEqual(f.result().result.http_status, 200)
        self.assertEqual(proc.wait(30), 0)


class ControlPlaneAndReplicaHealthTest(unittest.TestCase):

    def setUp(self):
        self.c = cluster_mod.Cluster(self.id(), control_planes=1)
        self.addCleanup(self._close)

    def _close(self):
        problems = self.c.close()
        if problems:
            raise AssertionError(problems)

    def test_replica_not_serving_until_its_first_snapshot(self):
        c = self.c
        cluster_mod.write_secret_file(c.admin_token_file, c.admin_token)
        cluster_mod.write_secret_file(c.node_token_file, c.node_token)
        c.nginx.start()
        c.etcd.start()
        cp = c.cps[0]
        health_addr = "127.0.0.1:%d" % harness.free_port()
        sc = c.sidecar("r1", "agent-r1", cp,
                       extra_args=["--health-listen", health_addr])
        # No control plane yet: the replica has nothing to serve from.
        ch, statuses = hp.watch(health_addr)
        self.addCleanup(ch.close)
        self.assertEqual(next(statuses), hp.NOT_SERVING)
        time.sleep(1.0)
        for addr in (sc.addr, health_addr):
            self.assertEqual(hp.check(addr), hp.NOT_SERVING)
            self.assertEqual(hp.check(addr, "latchkey.v1.ToolCalls"),
                             hp.NOT_SERVING)
        cp.start()
        # Watch sees the change as soon as the first snapshot is applied.
        self.assertEqual(next(statuses), hp.SERVING)
        self.assertEqual(hp.check(sc.addr), hp.SERVING)
        self.assertTrue(sc.events("replica_loaded"))
        with self.assertRaises(grpc.RpcError) as cm:
            hp.check(sc.addr, "latchkey.v1.Admin")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        # Restarted without its control plane, the replica on disk is
        # enough: SERVING at once.
        sc.stop()
        cp.stop()
        sc.start()
        self.assertEqual(hp.check(sc.addr), hp.SERVING)

    def test_control_plane_health_on_listen_and_health_listen(self):
        c = self.c
        cp = c.cps[0]
        health_addr = "127.0.0.1:%d" % harness.free_port()
        orig_args = cp.args
        cp.args = lambda: orig_args() + ["--health-listen", health_addr]
        c.start()
        for addr in (cp.addr, health_addr):
            for service in ("", "latchkey.v1.Admin", "latchkey.v1.Sync"):
                self.assertEqual(hp.check(addr, service), hp.SERVING,
                                 (addr, service))
        with self.assertRaises(grpc.RpcError) as cm:
            hp.check(cp.addr, "latchkey.v1.ToolCalls")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        ch, statuses = hp.watch(health_addr)
        self.addCleanup(ch.close)
        self.assertEqual(next(statuses), hp.SERVING)
        self.assertEqual(cp.stop(), 0)
        self.assertEqual(next(statuses), hp.NOT_SERVING)


if __name__ == "__main__":
    harness.main()
