"""Concurrent calls are served concurrently: one slow vendor call does not
hold up the others, and answers never cross between calls."""

import json
import time

import harness

CALLS = 64


class ConcurrencyTest(harness.StackTestCase):

    def test_64_concurrent_one_second_calls_finish_well_under_64_seconds(self):
        secret = harness.make_secret("cc")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer")
        start = time.monotonic()
        futures = [self.lk.toolcalls.Call.future(
            harness.toolcalls_pb2.ToolCallRequest(
                budget_id="main", tool_id="echo-bearer", operation="slow",
                arguments_json="{}", request_id="c%d" % i), timeout=60)
            for i in range(CALLS)]
        results = [f.result() for f in futures]
        elapsed = time.monotonic() - start
        for resp in results:
            self.assertEqual(resp.result.http_status, 200)
            self.assertEqual(json.loads(resp.result.body), {"slept_ms": 1000})
        arrived = self.lk.nginx.arrivals("/slow/", expect=CALLS)
        self.assertEqual(len(arrived), CALLS)
        for entry in arrived:
            self.assertEqual(entry["authorization"], "Bearer " + secret)
        # Serially this takes 64 s; concurrently about 1 s.
        self.assertLess(elapsed, 10.0, "64 calls took %.1f s" % elapsed)

    def test_concurrent_calls_each_get_their_own_answer(self):
        secret = harness.make_secret("own")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer")
        futures = {}
        for i in range(CALLS):
            tool = "echo-bearer" if i % 2 else "echo-open"
            futures[i] = (tool, self.lk.toolcalls.Call.future(
                harness.toolcalls_pb2.ToolCallRequest(
                    budget_id="main", tool_id=tool, operation="get",
                    arguments_json=json.dumps({"item": "n%d" % i,
                                               "q": "v%d" % i})),
                timeout=60))
        for i, (tool, fut) in futures.items():
            resp = fut.result()
            body = json.loads(resp.result.body)
            self.assertEqual(body["uri"], "/echo/n%d?q=v%d" % (i, i))
            if tool == "echo-bearer":
                self.assertEqual(body["authorization"], "Bearer [REDACTED]")
                self.assertTrue(resp.result.redacted)
            else:
                self.assertEqual(body["authorization"], "")
                self.assertFalse(resp.result.redacted)
            self.assertNoSecret(harness.whole_response(resp), secret)


if __name__ == "__main__":
    harness.main()
