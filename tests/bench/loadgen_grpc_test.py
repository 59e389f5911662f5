"""loadgen's gRPC clients against a real grpcio server (Debian's grpcio,
grpc core underneath): that the HTTP/2 (libnghttp2) mode counts a call only
when it is a whole, successful gRPC reply, names why when it is not, keeps
its caps on reply size and header bytes, and runs over a Unix socket and
TCP with one or several connections; and that the grpc-core mode agrees on
the good and the failing call.

Run by loadgen_grpc_test.sh with /usr/bin/python3; loadgen is the one in
the test's runfiles (so --config=asan runs it under AddressSanitizer).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import unittest
from concurrent import futures

import grpc

LOADGEN = os.path.join(os.environ.get("LOADGEN_DIR", "."),
                       "tests/bench/loadgen")
EXPECT = bytes.fromhex("08c801")  # ToolResult.http_status = 200


def ok(req, ctx):
    return b"ab" + EXPECT + b"cd"


def echo(req, ctx):
    return req


def big(req, ctx):
    return EXPECT * 30000  # 90,000 bytes: over loadgen's 64 KiB cap


def denied(req, ctx):
    ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no key for you")


def trailers(req, ctx):
    ctx.set_trailing_metadata((("x-big", "y" * 20000),))
    return EXPECT


def empty(req, ctx):
    return b""


def deadline(req, ctx):
    # The expected bytes only for a call that carries a deadline of
    # about 10 s, as both clients send (grpc-timeout 10S; grpc core rounds
    # its encoded timeout up, so up to 10.1 s arrives).
    left = ctx.time_remaining()
    return EXPECT if left is not None and 5 < left <= 10.5 else b""


METHODS = {"ok": ok, "echo": echo, "big": big, "denied": denied,
           "trailers": trailers, "empty": empty, "deadline": deadline}


class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        fn = METHODS.get(details.method.rsplit("/", 1)[-1])
        return fn and grpc.unary_unary_rpc_method_handler(fn)


class LoadgenGrpcTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lgt-", dir="/tmp")
        cls.uds = "unix:" + os.path.join(cls.tmp, "s.sock")
        cls.server = grpc.server(futures.ThreadPoolExecutor(4),
                                 handlers=[Handler()])
        cls.server.add_insecure_port(cls.uds)
        port = cls.server.add_insecure_port("127.0.0.1:0")
        cls.tcp = "127.0.0.1:%d" % port
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(None)

    def run_loadgen(self, target, method, *extra, mode="grpc"):
        out = subprocess.run(
            [LOADGEN, mode, target, "/bench.Test/" + method, "-c", "4",
             "-d", "0.3", "-w", "0.05"] + list(extra),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
            check=False)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        return json.loads(out.stdout)

    def assert_all_ok(self, res):
        self.assertEqual(res["errors"], 0, res["first_error"])
        self.assertGreater(res["ok"], 0)
        self.assertEqual(res["first_error"], "")

    def assert_all_fail(self, res, first_error):
        self.assertEqual(res["ok"], 0)
        self.assertGreater(res["errors"], 0)
        self.assertEqual(res["first_error"], first_error)

    def test_reply_with_expected_bytes_counts_over_unix_socket(self):
        self.assert_all_ok(self.run_loadgen(self.uds, "ok", "--expect-hex",
                                            EXPECT.hex()))

    def test_reply_with_expected_bytes_counts_over_tcp_two_connections(self):
        res = self.run_loadgen(self.tcp, "ok", "--expect-hex", EXPECT.hex(),
                               "--grpc-conns", "2")
        self.assert_all_ok(res)
        self.assertEqual(res["connections"], 2)

    def test_request_body_reaches_the_server(self):
        # echo answers the request: the expected bytes come back only if
        # loadgen framed and sent --body-hex intact.
        body = "0a0362656e6368" + EXPECT.hex() + "ff" * 100
        self.assert_all_ok(self.run_loadgen(
            self.uds, "echo", "--body-hex", body, "--expect-hex", body))

    def test_calls_carry_the_ten_second_deadline_in_both_modes(self):
        for mode in ("grpc", "grpc-core"):
            self.assert_all_ok(self.run_loadgen(
                self.uds, "deadline", "--expect-hex", EXPECT.hex(),
                mode=mode))

    def test_reply_without_expected_bytes_is_an_error(self):
        self.assert_all_fail(
            self.run_loadgen(self.uds, "empty", "--expect-hex", EXPECT.hex()),
            "reply without the expected bytes")

    def test_error_status_reports_grpc_status_and_message(self):
        self.assert_all_fail(self.run_loadgen(self.uds, "denied"),
                             "gRPC status 7: no key for you")

    def test_unknown_method_reports_unimplemented(self):
        res = self.run_loadgen(self.uds, "nope")
        self.assertEqual(res["ok"], 0)
        self.assertTrue(res["first_error"].startswith("gRPC status 12"),
                        res["first_error"])

    def test_reply_over_cap_is_an_error(self):
        self.assert_all_fail(self.run_loadgen(self.uds, "big"),
                             "reply message over 65536 bytes")

    def test_header_bytes_over_cap_are_an_error(self):
        self.assert_all_fail(self.run_loadgen(self.uds, "trailers"),
                             "response headers over 16384 bytes")

    def test_unreachable_target_fails_with_reason(self):
        sock = os.path.join(self.tmp, "absent.sock")
        out = subprocess.run(
            [LOADGEN, "grpc", "unix:" + sock, "/bench.Test/ok", "-d", "0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
            check=False)
        self.assertEqual(out.returncode, 1)
        self.assertEqual(json.loads(out.stdout)["first_error"],
                         "cannot connect to unix:%s: No such file or "
                         "directory" % sock)

    def test_grpc_core_mode_agrees(self):
        self.assert_all_ok(self.run_loadgen(
            self.uds, "ok", "--expect-hex", EXPECT.hex(), "--grpc-conns", "2",
            mode="grpc-core"))
        self.assert_all_fail(
            self.run_loadgen(self.uds, "denied", mode="grpc-core"),
            "gRPC status 7: no key for you")


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
