"""SIGTERM drains (DESIGN.md §7): calls in flight finish, new calls are
refused, the sidecar exits 0; a second signal exits at once."""

import json
import signal
import time

import grpc

import harness
import health_pb as hp

CALLS = 50


class DrainTest(harness.StackTestCase):

    def setUp(self):
        self.health_addr = "127.0.0.1:%d" % harness.free_port()
        self.stack_options = {"extra_args": (
            "--health-listen", self.health_addr, "--drain-timeout", "30s")}
        super().setUp()
        self.credential("bearer-token", {"token": harness.make_secret("dr")},
                        bind_tool="echo-bearer")

    def _slow_calls(self, n):
        return [self.lk.toolcalls.Call.future(
            harness.toolcalls_pb2.ToolCallRequest(
                budget_id="main", tool_id="echo-bearer", operation="slow",
                arguments_json="{}", request_id="d%d" % i), timeout=60)
            for i in range(n)]

    def test_sigterm_finishes_50_in_flight_calls_and_refuses_new_ones(self):
        futures = self._slow_calls(CALLS)
        time.sleep(0.4)  # all sent; nginx holds each for one second
        proc = self.lk.daemon.proc
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        # A new call on a new connection during the drain is refused.
        ch = grpc.insecure_channel(self.lk.agent_addr)
        try:
            stub = harness.toolcalls_pb2_grpc.ToolCallsStub(ch)
            with self.assertRaises(grpc.RpcError) as cm:
                stub.Call(harness.toolcalls_pb2.ToolCallRequest(
                    budget_id="main", tool_id="echo-bearer", operation="get",
                    arguments_json='{"item": "late"}'), timeout=5)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            ch.close()
        self.assertEqual(hp.check(self.health_addr), hp.NOT_SERVING)
        # Every call in flight finished with its answer: none lost.
        for f in futures:
            resp = f.result()
            self.assertEqual(resp.result.http_status, 200)
            self.assertEqual(json.loads(resp.result.body), {"slept_ms": 1000})
        self.assertEqual(proc.wait(30), 0)
        self.assertLess(time.monotonic() - t0, 20.0)
        self.assertEqual(len(self.lk.nginx.arrivals("/slow/", expect=CALLS)),
                         CALLS)
        log = self.lk.daemon.new_log()
        self.assertIn('"event":"drained"', log)
        self.assertIn('"event":"stopped"', log)

    def test_second_signal_exits_at_once(self):
        futures = self._slow_calls(5)
        time.sleep(0.3)
        proc = self.lk.daemon.proc
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(10), 128 + signal.SIGINT)
        # At once: well before the one-second vendor calls could finish.
        self.assertLess(time.monotonic() - t0, 0.8)
        log = self.lk.daemon.new_log()
        self.assertIn('"event":"stopping_now"', log)
        self.assertIn("second signal %d" % signal.SIGINT, log)
        for f in futures:
            with self.assertRaises(grpc.RpcError):
                f.result()


if __name__ == "__main__":
    harness.main()
