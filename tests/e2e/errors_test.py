"""Every failure of ToolCalls answers with its exact gRPC status code
(DESIGN.md §4), says what to do, and leaves the daemon serving."""

import ipaddress
import socket
import time

import grpc

import harness

Code = grpc.StatusCode


class ErrorsTest(harness.StackTestCase):

    def assertStillServing(self):
        resp = self.lk.call("main", "echo-open", "get", {"item": "alive"})
        self.assertEqual(resp.result.http_status, 200)

    # -- NOT_FOUND -------------------------------------------------------

    def test_unknown_tool_is_not_found(self):
        err = self.assertCode(Code.NOT_FOUND, self.lk.call, "main",
                              "no-such-tool", "get", {"item": "x"})
        self.assertIn("no-such-tool", err.details())

    def test_unknown_operation_is_not_found(self):
        err = self.assertCode(Code.NOT_FOUND, self.lk.call, "main",
                              "echo-open", "no-such-op", {})
        self.assertIn("no-such-op", err.details())

    def test_unknown_budget_is_not_found(self):
        self.assertCode(Code.NOT_FOUND, self.lk.call, "no-such-budget",
                        "echo-open", "get", {"item": "x"})
        self.assertCode(Code.NOT_FOUND, self.lk.list_tools, "no-such-budget")

    # -- INVALID_ARGUMENT ----------------------------------------------

    def test_malformed_json_arguments_are_invalid(self):
        for bad in ('{', '{"item": "x"', 'item=x', '{"item": "x"}}'):
            with self.subTest(args=bad):
                err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.call,
                                      "main", "echo-open", "get", bad)
                self.assertTrue(err.details())

    def test_arguments_that_are_not_an_object_are_invalid(self):
        for bad in ('[]', '"item"', '42', 'null'):
            with self.subTest(args=bad):
                self.assertCode(Code.INVALID_ARGUMENT, self.lk.call, "main",
                                "echo-open", "get", bad)

    def test_wrongly_typed_arguments_are_invalid(self):
        cases = [
            ("get", {"item": "x", "n": "five"}, "n"),
            ("get", {"item": "x", "n": 1.5}, "n"),
            ("get", {"item": 7}, "item"),
            ("post", {"count": "3"}, "count"),
            ("post", {"flag": "true"}, "flag"),
            ("post", {"note": {"nested": 1}}, "note"),
        ]
        for op, args, param in cases:
            with self.subTest(op=op, args=args):
                err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.call,
                                      "main", "echo-open", op, args)
                self.assertIn(param, err.details())
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])

    def test_missing_required_argument_is_invalid(self):
        err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.call, "main",
                              "echo-open", "get", {"q": "x"})
        self.assertIn("item", err.details())

    def test_unknown_argument_is_invalid(self):
        err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.call, "main",
                              "echo-open", "get", {"item": "x", "zzz": 1})
        self.assertIn("zzz", err.details())

    def test_empty_budget_id_is_invalid(self):
        self.assertCode(Code.INVALID_ARGUMENT, self.lk.call, "",
                        "echo-open", "get", {"item": "x"})

    # -- FAILED_PRECONDITION / PERMISSION_DENIED -----------------------

    def test_paused_budget_fails_precondition_until_resumed(self):
        self.lk.set_paused("main", True)
        err = self.assertCode(Code.FAILED_PRECONDITION, self.lk.call, "main",
                              "echo-open", "get", {"item": "x"})
        self.assertIn("paus", err.details().lower())
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])
        self.lk.set_paused("main", False)
        self.assertStillServing()

    def test_budget_created_paused_fails_precondition(self):
        self.lk.create_budget("frozen", paused=True)
        self.assertCode(Code.FAILED_PRECONDITION, self.lk.call, "frozen",
                        "echo-open", "get", {"item": "x"})

    def test_budget_of_another_agent_is_permission_denied(self):
        secret = harness.make_secret("pd")
        self.lk.create_budget("theirs", agents=[harness.OTHER_AGENT])
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer", budget="theirs")
        err = self.assertCode(Code.PERMISSION_DENIED, self.lk.call, "theirs",
                              "echo-bearer", "get", {"item": "x"})
        self.assertNotIn(secret, err.details())
        self.assertCode(Code.PERMISSION_DENIED, self.lk.list_tools, "theirs")
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])

    # -- vendor failures -------------------------------------------------

    def test_vendor_with_nothing_listening_is_unavailable(self):
        port = harness.free_port()
        self.lk.register_tool(harness.echo_tool(
            "down", "http://127.0.0.1:%d" % port, None))
        err = self.assertCode(Code.UNAVAILABLE, self.lk.call, "main", "down",
                              "get", {"item": "x"})
        self.assertTrue(err.details())
        self.assertStillServing()

    def test_loopback_literal_vendor_is_allowed_with_allow_insecure(self):
        # https to "localhost" passes the destination check when the
        # operator allowed insecure vendors; the closed port then makes
        # it an ordinary UNAVAILABLE.
        port = harness.free_port()
        self.lk.register_tool(harness.echo_tool(
            "local-tls", "https://localhost:%d" % port, None))
        err = self.assertCode(Code.UNAVAILABLE, self.lk.call, "main",
                              "local-tls", "get", {"item": "x"})
        self.assertNotIn("private", err.details())

    def test_http_to_a_name_that_only_looks_loopback_fails_precondition(self):
        # "127.example.invalid" starts like a loopback address but is a
        # name: plain http to it is refused before any lookup, even with
        # --allow-insecure-vendors.
        self.lk.register_tool(harness.echo_tool(
            "fake-loop", "http://127.example.invalid:%d" % self.lk.nginx.port,
            None))
        err = self.assertCode(Code.FAILED_PRECONDITION, self.lk.call, "main",
                              "fake-loop", "get", {"item": "x"})
        self.assertIn("fake-loop", err.details())
        self.assertIn("non-loopback", err.details())
        self.assertStillServing()

    def test_name_resolving_to_private_address_fails_precondition(self):
        # A host name (not a literal) whose answer is private, as a DNS
        # rebinding attack would give, is refused even with
        # --allow-insecure-vendors: the check is on the connected address.
        name = socket.gethostname()
        try:
            addrs = {ai[4][0] for ai in socket.getaddrinfo(
                name, 443, type=socket.SOCK_STREAM)}
        except socket.gaierror:
            self.skipTest("host name %r does not resolve" % name)
        if name.lower() == "localhost" or not all(
                ipaddress.ip_address(a.split("%")[0]).is_private
                for a in addrs):
            self.skipTest("host name %r is not a private-only name" % name)
        self.lk.register_tool(harness.echo_tool(
            "rebound", "https://%s:%d" % (name, self.lk.nginx.port), None))
        err = self.assertCode(Code.FAILED_PRECONDITION, self.lk.call, "main",
                              "rebound", "get", {"item": "x?secret=1"})
        self.assertIn("rebound", err.details())
        self.assertIn("private address", err.details())
        self.assertNotIn("secret", err.details())
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])
        self.assertStillServing()

    def test_vendor_slower_than_client_deadline_is_deadline_exceeded(self):
        start = time.monotonic()
        self.assertCode(Code.DEADLINE_EXCEEDED, self.lk.call, "main",
                        "rec-open", "sleep", {"ms": 3000}, timeout=0.5)
        self.assertLess(time.monotonic() - start, 2.5)
        self.assertStillServing()

    def test_vendor_slower_than_tool_timeout_is_deadline_exceeded(self):
        # The client allows 20 s, the tool only 500 ms: the sidecar itself
        # must give up and say so.
        tool = harness.vendor_tool("rec-short", self.lk.vendor.base_url, None)
        tool["timeout_ms"] = 500
        self.lk.register_tool(tool)
        start = time.monotonic()
        self.assertCode(Code.DEADLINE_EXCEEDED, self.lk.call, "main",
                        "rec-short", "sleep", {"ms": 3000}, timeout=20)
        self.assertLess(time.monotonic() - start, 2.5)
        self.assertStillServing()

    def test_response_over_the_cap_is_resource_exhausted(self):
        err = self.assertCode(Code.RESOURCE_EXHAUSTED, self.lk.call, "main",
                              "rec-open", "big",
                              {"bytes": 2 * harness.MAX_RESPONSE_BYTES})
        self.assertTrue(err.details())
        self.assertStillServing()

    def test_response_under_the_cap_is_delivered_whole(self):
        size = harness.MAX_RESPONSE_BYTES // 2
        resp = self.lk.call("main", "rec-open", "big", {"bytes": size})
        self.assertEqual(resp.result.http_status, 200)
        self.assertEqual(len(resp.result.body), size)
        self.assertEqual(resp.result.body, b"x" * size)


class InsecureVendorTest(harness.StackTestCase):
    """Without --allow-insecure-vendors, http:// vendors and loopback
    destinations are refused."""

    stack_options = {"allow_insecure_vendors": False}
    with_catalog = False

    def test_http_vendor_without_allow_insecure_fails_precondition(self):
        self.lk.create_budget("main")
        try:
            self.lk.register_tool(harness.echo_tool(
                "plain", self.lk.nginx.base_url, None))
        except grpc.RpcError as err:
            # Refusing the tool up front is as good as refusing the call.
            self.assertEqual(err.code(), Code.FAILED_PRECONDITION,
                             err.details())
            return
        err = self.assertCode(Code.FAILED_PRECONDITION, self.lk.call, "main",
                              "plain", "get", {"item": "x"})
        self.assertIn("insecure", err.details().lower())
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])

    def test_https_loopback_vendor_without_allow_insecure_fails_precondition(
            self):
        # https does not make a loopback vendor acceptable: the connect is
        # refused before anything is sent, and the answer says why rather
        # than reading as an unreachable vendor (UNAVAILABLE).
        self.lk.create_budget("main")
        for tool_id, host in (("tls-name", "localhost"),
                              ("tls-literal", "127.0.0.1")):
            with self.subTest(host=host):
                self.lk.register_tool(harness.echo_tool(
                    tool_id, "https://%s:%d" % (host, self.lk.nginx.port),
                    None))
                err = self.assertCode(Code.FAILED_PRECONDITION, self.lk.call,
                                      "main", tool_id, "get", {"item": "x"})
                self.assertIn(tool_id, err.details())
                self.assertIn("private address", err.details())
                self.assertIn("--allow-insecure-vendors", err.details())
        self.assertEqual(self.lk.nginx.arrivals("/", expect=0, timeout=0.3),
                         [])


if __name__ == "__main__":
    harness.main()
