"""A vendor whose certificate does not verify never receives the secret.

latchkeyd verifies an https vendor against the system's trust store and
the tool's host name (CURLOPT_SSL_VERIFYPEER/VERIFYHOST). Here the vendor
is an impostor on loopback: a TLS server in this process holding a real
certificate and key from the test's own PKI (pki.py, not trusted by the
system), recording every byte it decrypts. For a certificate from an
untrusted CA, an expired one and one for another name, the call fails
UNAVAILABLE naming the certificate problem, and the impostor decrypts no
application byte: the injected header never left the sidecar. A client
that trusts the test CA gets its request recorded by the same impostor,
so the recorder would have seen one.
"""

import os
import socket
import ssl
import threading

import grpc

import harness
from pki import Pki

Code = grpc.StatusCode


class Impostor:
    """A one-certificate TLS server on loopback that records what it
    decrypts from every connection."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.data = b""
        self.handshakes = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(5)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                with self.lock:
                    self.handshakes += 1
                got = tls.recv(65536)
                with self.lock:
                    self.data += got
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain"
                            b"\r\nContent-Length: 2\r\nConnection: close"
                            b"\r\n\r\nok")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def received(self):
        with self.lock:
            return self.data

    def stop(self):
        self.sock.close()


class VendorTlsTest(harness.StackTestCase):

    def setUp(self):
        super().setUp()
        self.pki = Pki(self.lk.dir)
        self.secret = harness.make_secret("vendor-tls")
        self.n = 0

    def call_impostor(self, cert_key):
        """A tool on a new impostor holding cert_key, bound in "main" to a
        canary credential; returns (impostor, tool id)."""
        imp = Impostor(*cert_key)
        self.addCleanup(imp.stop)
        self.n += 1
        tool = "tls-vendor-%d" % self.n
        self.lk.register_tool(harness.echo_tool(
            tool, "https://localhost:%d" % imp.port, "bearer-token"))
        self.credential("bearer-token", {"token": self.secret},
                        bind_tool=tool)
        return imp, tool

    def assertRefusedAndSilent(self, cert_key, words):
        imp, tool = self.call_impostor(cert_key)
        err = self.assertCode(Code.UNAVAILABLE, self.lk.call, "main", tool,
                              "get", {"item": "x"})
        self.assertIn(words, err.details().lower())
        self.assertNoSecret(err.details(), self.secret, "error")
        self.assertEqual(imp.received(), b"",
                         "the impostor decrypted application bytes")
        for line in self.lk.log_lines():
            self.assertNoSecret(line, self.secret, "log")

    def test_vendor_certificate_from_an_unknown_ca_gets_no_request(self):
        self.assertRefusedAndSilent(self.pki.wrong_server, "certificate")

    def test_expired_vendor_certificate_gets_no_request(self):
        self.assertRefusedAndSilent(self.pki.expired, "certificate")

    def test_vendor_certificate_for_another_name_gets_no_request(self):
        self.assertRefusedAndSilent(self.pki.other_name, "certificate")


    def test_the_recorder_sees_what_a_verifying_client_sends(self):
        # The control: a client that trusts the test CA completes the
        # handshake with the same kind of impostor and its request is
        # recorded, so an empty record above means nothing was sent.
        imp = Impostor(*self.pki.server)
        self.addCleanup(imp.stop)
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        with socket.create_connection(("127.0.0.1", imp.port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nAuthorization: Bearer "
                            + self.secret.encode() + b"\r\n\r\n")
                tls.recv(1024)
        self.assertIn(self.secret.encode(), imp.received())


if __name__ == "__main__":
    harness.main()
