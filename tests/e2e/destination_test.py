"""Destinations end to end: whatever an agent puts into its arguments, the
request the real nginx vendor receives is on the tool's host and under the
operation's path, byte for byte as sidecar/inject.h's rule says (every
byte but A-Z a-z 0-9 - _ ~ percent-encoded into one segment; dot segments,
also percent-encoded, refused before anything is sent); query and body
values cannot add parameters or fields, and no argument reaches a header;
a vendor's redirect comes back to the agent as it is and is never
followed, neither within the vendor nor to another origin."""

import json
import time

import harness

Code = harness.StatusCode

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                       b"0123456789-_~")

# Hostile path values that are sent, encoded into one segment.
ENCODED = [
    "a/b", "/", "%2F", "%252F", "%2f..x", "@evil.example",
    "user:pw@evil.example:80", "#frag", "?x=1", "x?y#z", "\\", "a\\b", ";",
    "a;b=c", "\r\n", "x\r\nHost: evil.example", "\t", "S\u00e3o Paulo",
    "\u65e5\u672c", "\U0001F600", "...", "..x", ".x", " ", "%", "%zz",
    "http://evil.example/x", "//evil.example/x", "~user",
]

# Hostile path values that are refused: a dot segment as sent or after
# percent-decoding (a vendor that decodes %2F, or decodes twice, would
# otherwise route on it).
DOT_SEGMENTS = [
    ".", "..", "../admin", "a/../b", "./x", "..\\admin", "%2e%2e",
    "%2E%2e/x", "a%2F..", "..%2Fadmin", "%252e%252e", "..;x",
    "x/..;/admin", "%2e%2e%5cadmin",
]


def segment(value):
    """value encoded as inject.h says a path value is."""
    return "".join(chr(b) if b in UNRESERVED else "%%%02X" % b
                   for b in value.encode())


REDIRECT_TOOL = {
    "id": "redirector",
    "description": "a vendor that answers with redirects",
    "credential_type": "bearer-token",
    "operations": [
        {"name": "inside", "method": "GET", "path": "/redirect/x",
         "description": "302 to another path of the vendor", "params": []},
        {"name": "away", "method": "GET", "path": "/redirect-away/x",
         "description": "307 to another origin",
         "params": [{"name": "port", "in": "query", "type": "integer",
                     "required": True, "description": "Target port"}]},
    ],
}


class DestinationTest(harness.StackTestCase):

    def setUp(self):
        super().setUp()
        self.token = harness.make_secret("dest")
        self.credential("bearer-token", {"token": self.token},
                        bind_type="bearer-token")
        self.host = "127.0.0.1:%d" % self.lk.nginx.port

    def assertArrivedOnTheToolsHost(self, entry):
        self.assertEqual(entry["host"], self.host, entry)
        self.assertEqual(entry["authorization"], "Bearer " + self.token)

    def test_hostile_path_values_arrive_as_one_segment_under_the_tool_path(
            self):
        for value in ENCODED:
            resp = self.lk.call("main", "echo-bearer", "get", {"item": value})
            self.assertEqual(resp.result.http_status, 200, repr(value))
        arrived = self.lk.nginx.arrivals("", expect=len(ENCODED))
        self.assertEqual(len(arrived), len(ENCODED))
        for value, entry in zip(ENCODED, arrived):
            with self.subTest(value=value):
                want = "/echo/" + segment(value)
                self.assertEqual(entry["request"], "GET %s HTTP/1.1" % want)
                self.assertEqual(entry["uri"], want)
                self.assertArrivedOnTheToolsHost(entry)

    def test_dot_segment_and_empty_path_values_are_refused_before_sending(
            self):
        for value in DOT_SEGMENTS + [""]:
            with self.subTest(value=value):
                err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.call,
                                      "main", "echo-bearer", "get",
                                      {"item": value})
                self.assertIn("path parameter 'item'", err.details())
                if not value:
                    self.assertIn("must not be empty", err.details())
                    continue
                self.assertIn('"."', err.details())
                if len(value) > 2:
                    self.assertNotIn(value, err.details())
        self.assertEqual(self.lk.nginx.arrivals("", expect=0, timeout=0.5),
                         [])

    def test_nul_in_a_path_value_is_refused_before_sending(self):
        for value in ("a\x00b", "..\x00", "\x00"):
            with self.subTest(value=value):
                err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.call,
                                      "main", "echo-bearer", "get",
                                      {"item": value})
                self.assertIn("\\u0000", err.details())
        self.assertEqual(self.lk.nginx.arrivals("", expect=0, timeout=0.5),
                         [])

    def test_query_values_cannot_add_parameters_or_leave_the_query(self):
        value = "x&n=2&key=evil#frag?y=1;z/../..%2F\r\nX-Api-Key: evil"
        resp = self.lk.call("main", "echo-bearer", "get",
                            {"item": "it", "q": value, "n": 1})
        self.assertEqual(resp.result.http_status, 200)
        entry = self.lk.nginx.arrivals("/echo/")[-1]
        query = "q=%s&n=1" % "".join(
            chr(b) if b in UNRESERVED or b == ord(".") else "%%%02X" % b
            for b in value.encode())
        self.assertEqual(entry["request"], "GET /echo/it?%s HTTP/1.1" % query)
        self.assertEqual(entry["args"], query)
        self.assertEqual(entry["x_api_key"], "")
        self.assertArrivedOnTheToolsHost(entry)

    def test_no_argument_can_name_or_reach_a_header(self):
        # An argument named like a header is an unknown parameter; a value
        # shaped like a header line stays inside its (encoded) query value.
        for name in ("Authorization", "Host", "X-Api-Key"):
            with self.subTest(name=name):
                err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.call,
                                      "main", "echo-bearer", "get",
                                      {"item": "x", name: "evil"})
                self.assertIn("unknown parameter '%s'" % name, err.details())
        resp = self.lk.call("main", "echo-bearer", "get",
                            {"item": "x\r\nAuthorization: Bearer evil",
                             "q": "y\r\nAuthorization: Bearer evil"})
        self.assertEqual(resp.result.http_status, 200)
        arrived = self.lk.nginx.arrivals("/echo/")
        self.assertEqual(len(arrived), 1)
        self.assertArrivedOnTheToolsHost(arrived[0])

    def test_body_values_cannot_add_or_replace_a_field(self):
        key = harness.make_secret("body")
        self.credential("body-key", {"api_key": key}, bind_tool="echo-body")
        note = '","api_key":"evil","x":"'
        resp = self.lk.call("main", "echo-body", "post",
                            {"note": note, "count": 2})
        self.assertEqual(resp.result.http_status, 200)
        entry = self.lk.nginx.arrivals("/body/")[-1]
        self.assertEqual(entry["request"], "POST /body/echo HTTP/1.1")
        self.assertEqual(entry["host"], self.host)
        self.assertEqual(json.loads(entry["body"]),
                         {"note": note, "count": 2, "api_key": key})

    def test_redirect_is_handed_to_the_agent_and_not_followed(self):
        self.lk.register_tool(dict(REDIRECT_TOOL,
                                   base_url=self.lk.nginx.base_url))
        resp = self.lk.call("main", "redirector", "inside")
        self.assertEqual(resp.result.http_status, 302)
        self.assertEqual(harness.header(resp.result, "Location"),
                         "http://%s/landing/x" % self.host)
        arrived = self.lk.nginx.arrivals("/", expect=2, timeout=0.5)
        self.assertEqual([e["uri"] for e in arrived], ["/redirect/x"])
        self.assertArrivedOnTheToolsHost(arrived[0])

    def test_redirect_to_another_origin_is_not_followed(self):
        # An open redirect on the vendor, aimed by the agent at a server
        # of its own (the recording vendor): the 307 comes back, and that
        # server never hears from the sidecar, so never sees the token.
        self.lk.register_tool(dict(REDIRECT_TOOL,
                                   base_url=self.lk.nginx.base_url))
        port = self.lk.vendor.port
        resp = self.lk.call("main", "redirector", "away", {"port": port})
        self.assertEqual(resp.result.http_status, 307)
        self.assertEqual(harness.header(resp.result, "Location"),
                         "http://127.0.0.1:%d/stolen/x" % port)
        arrived = self.lk.nginx.arrivals("/")
        self.assertEqual([e["request"] for e in arrived],
                         ["GET /redirect-away/x?port=%d HTTP/1.1" % port])
        time.sleep(0.5)
        self.assertEqual(self.lk.vendor.requests(), [])


if __name__ == "__main__":
    harness.main()
