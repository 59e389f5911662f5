"""ToolCalls/Call end to end: what the agent sends reaches the vendor as the
tool's operation says, and what the vendor answers reaches the agent."""

import json
import urllib.parse

import harness


class CallTest(harness.StackTestCase):

    def test_call_returns_vendor_status_content_type_and_body(self):
        resp = self.lk.call("main", "echo-open", "get", {"item": "hello"})
        self.assertEqual(resp.WhichOneof("outcome"), "result")
        self.assertEqual(resp.result.http_status, 200)
        self.assertTrue(resp.result.content_type.startswith("application/json"))
        body = json.loads(resp.result.body)
        self.assertEqual(body["method"], "GET")
        self.assertEqual(body["uri"], "/echo/hello")
        self.assertFalse(resp.result.redacted)

    def test_tool_without_credential_type_needs_no_binding(self):
        resp = self.lk.call("main", "rec-open", "get", {"item": "x"})
        self.assertEqual(resp.result.http_status, 200)
        got = self.lk.vendor.requests("/get/")
        self.assertEqual(len(got), 1)
        self.assertNotIn("authorization", got[0]["headers"])
        self.assertNotIn("x-api-key", got[0]["headers"])

    def test_path_params_are_percent_encoded_and_cannot_change_the_path(self):
        resp = self.lk.call("main", "rec-open", "get",
                            {"item": "a/b c?d#e@x;y"})
        self.assertEqual(resp.result.http_status, 200)
        got = self.lk.vendor.requests()
        self.assertEqual(len(got), 1)
        raw_path = got[0]["raw_path"].split("?")[0]
        self.assertTrue(raw_path.startswith("/get/"), raw_path)
        segment = raw_path[len("/get/"):]
        self.assertNotIn("/", segment)
        self.assertNotIn("?", segment)
        self.assertEqual(urllib.parse.unquote(segment), "a/b c?d#e@x;y")

    def test_query_params_reach_vendor_encoded(self):
        resp = self.lk.call("main", "rec-open", "get",
                            {"item": "q", "q": "x y&z=1"})
        self.assertEqual(resp.result.http_status, 200)
        got = self.lk.vendor.requests("/get/")[0]
        self.assertEqual(got["query"]["q"], ["x y&z=1"])
        self.assertEqual(set(got["query"]), {"q"})

    def test_integer_query_param_is_sent_as_a_number(self):
        resp = self.lk.call("main", "echo-open", "get", {"item": "i", "n": 42})
        body = json.loads(resp.result.body)
        self.assertEqual(urllib.parse.parse_qs(body["query"])["n"], ["42"])

    def test_body_params_reach_vendor_as_a_json_object_with_their_types(self):
        resp = self.lk.call("main", "echo-open", "post",
                            {"note": "caf\u00e9 \"quoted\"", "count": 3,
                             "flag": True})
        self.assertEqual(resp.result.http_status, 200)
        self.assertEqual(json.loads(resp.result.body),
                         {"note": "caf\u00e9 \"quoted\"", "count": 3,
                          "flag": True})
        arrived = self.lk.nginx.arrivals("/body/")
        self.assertEqual(len(arrived), 1)
        self.assertEqual(arrived[0]["method"], "POST")

    def test_vendor_error_status_is_passed_through_as_a_result(self):
        resp = self.lk.call("main", "rec-open", "status", {"code": 404})
        self.assertEqual(resp.WhichOneof("outcome"), "result")
        self.assertEqual(resp.result.http_status, 404)
        self.assertEqual(json.loads(resp.result.body), {"status": 404})
        resp = self.lk.call("main", "rec-open", "status", {"code": 503})
        self.assertEqual(resp.result.http_status, 503)

    def test_vendor_response_headers_reach_the_agent(self):
        resp = self.lk.call("main", "echo-open", "get", {"item": "h"})
        self.assertTrue(harness.header(resp.result, "server")
                        .startswith("nginx"))

    def test_request_id_is_accepted(self):
        resp = self.lk.call("main", "echo-open", "get", {"item": "r"},
                            request_id="req-0001")
        self.assertEqual(resp.result.http_status, 200)

    def test_many_sequential_calls_reuse_the_daemon_without_error(self):
        for i in range(50):
            resp = self.lk.call("main", "echo-open", "get",
                                {"item": "seq%d" % i})
            self.assertEqual(json.loads(resp.result.body)["uri"],
                             "/echo/seq%d" % i)


if __name__ == "__main__":
    harness.main()
