"""TLS end to end: latchkeyd and latchkeyctl against latchkey-cp.

The test makes its own throwaway PKI with Debian's openssl CLI in its temp
dir (nothing is committed): a CA, a server certificate it issued for
DNS:localhost and IP:127.0.0.1, one it issued for DNS:cp.example.com
only, one it issued that expired in 2020, and an unrelated "wrong" CA with
a server certificate of its own.

One cluster (cluster.py: nginx, a real etcd) runs four real control planes
over the same etcd: cp-tls (the good certificate), cp-expired,
cp-other-name and cp-plain (no TLS). Each case asserts what the operator
sees: latchkeyctl's exit status and exact stderr line, or a replica that
never applies a revision and its one sync_tls_failed line; no token or
secret in any log.

Impersonators (a TLS server in this process holding a real certificate
and its key, recording every byte it decrypts) show that a refused
handshake sends no token: with the wrong CA's certificate, an expired one
or one for another name they receive no application byte at all, while
one the CA vouches for receives the admin and node tokens, so the recorder
would have seen them.

latchkey-cp's own --tls-cert/--tls-key checks (exit 2, one line naming the
flag, before etcd or the key ring is touched) run without a cluster.
"""

import json
import os
import socket
import ssl
import subprocess
import threading
import unittest

import grpc

import cluster
import harness
from cluster import wait_until
from pki import Pki

StatusCode = grpc.StatusCode

TYPE = "bearer-token"
TOOL = "echo-bearer"
EXPIRED_NOT_AFTER = "2020-01-02 00:00:00 UTC"


def ctl_env():
    """The daemons' environment, where LeakSanitizer (--config=asan) does
    not list the suppressions it used on stderr: tests compare latchkeyctl's
    stderr exactly, and a name target (localhost:PORT) makes c-ares hold
    memory at exit (bazel/lsan.supp)."""
    env = harness.daemon_env()
    if env.get("LSAN_OPTIONS"):
        env["LSAN_OPTIONS"] += ":print_suppressions=0"
    return env


class Impersonator:
    """A TLS server on a loopback port that holds a real certificate and
    its key, so it can decrypt whatever a client sends after a handshake
    the client accepted. Each connection is recorded as {"handshake":
    "completed" or the error, "data": decrypted bytes}. After its handshake
    it sends an empty HTTP/2 SETTINGS frame, all a gRPC client waits for
    before it writes its call's headers (with the token); a connection
    idle for IDLE_S is closed."""

    SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    IDLE_S = 1.0

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.threads = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            t = threading.Thread(target=self._serve, args=(conn,),
                                 daemon=True)
            with self.lock:
                self.threads.append(t)
            t.start()

    def _serve(self, conn):
        record = {"handshake": None, "data": b"", "done": False}
        with self.lock:
            self.conns.append(record)
        conn.settimeout(self.IDLE_S)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            record["handshake"] = "refused: %s" % e
            conn.close()
            record["done"] = True
            return
        record["handshake"] = "completed"
        try:
            tls.sendall(self.SETTINGS)
            while len(record["data"]) < (1 << 20):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                record["data"] += chunk
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()
            record["done"] = True

    def finished(self, n):
        """The records, once at least n connections came and all ended."""
        with self.lock:
            conns = list(self.conns)
        if len(conns) >= n and all(c["done"] for c in conns):
            return conns
        return None

    def received(self):
        with self.lock:
            return b"".join(c["data"] for c in self.conns)

    def stop(self):
        self.stopping.set()
        self.sock.close()
        self.thread.join(5)
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(5)


class TlsClusterTest(harness.E2EAssertions, unittest.TestCase):
    """latchkeyctl and latchkeyd replicas against TLS control planes."""

    @classmethod
    def setUpClass(cls):
        c = cluster.Cluster("tls_test", control_planes=0)
        cls.c = c
        try:
            cls.pki = p = Pki(c.dir)
            cls.cp = cluster.ControlPlane(c, "cp-tls", tls=p.server + (p.ca,))
            cls.cp_expired = cluster.ControlPlane(c, "cp-expired",
                                                  tls=p.expired + (p.ca,))
            cls.cp_other = cluster.ControlPlane(c, "cp-other-name",
                                                tls=p.other_name + (p.ca,))
            cls.cp_plain = cluster.ControlPlane(c, "cp-plain")
            c.cps = [cls.cp, cls.cp_expired, cls.cp_other, cls.cp_plain]
            c.start()
            # The catalog goes in over TLS (Python grpcio trusting the CA).
            cls.cp.register_type(harness.BEARER_TYPE)
            cls.cp.register_tool(harness.echo_tool(TOOL, c.nginx.base_url,
                                                   TYPE))
            cls.secrets = []
        except BaseException:
            c.close()
            raise

    @classmethod
    def tearDownClass(cls):
        problem = cls.c.close()
        if problem:
            raise AssertionError(problem)

    # -- helpers -----------------------------------------------------------

    def ctl(self, server, *args, ca=None, stdin=None):
        """latchkeyctl --server server [--tls-ca ca] ARGS, run in the PKI
        dir so ca may be a bare file name there (as messages show it)."""
        argv = [harness.latchkeyctl_path(), "--server", server,
                "--token-file", self.c.admin_token_file]
        if ca is not None:
            argv += ["--tls-ca", ca]
        return subprocess.run(argv + list(args), input=stdin,
                              capture_output=True, text=True, timeout=60,
                              cwd=self.pki.dir, env=ctl_env())

    def ok(self, server, *args, ca="ca.pem", stdin=None):
        out = self.ctl(server, *args, ca=ca, stdin=stdin)
        self.assertEqual(out.returncode, 0,
                         "latchkeyctl %s failed (%d): %s"
                         % (" ".join(args), out.returncode, out.stderr))
        self.assertEqual(out.stderr, "")
        return out.stdout

    def assertRefused(self, server, ca, expected):
        """latchkeyctl tool list exits 1 with exactly this stderr line."""
        out = self.ctl(server, "tool", "list", ca=ca)
        self.assertEqual((out.returncode, out.stdout, out.stderr),
                         (1, "", "latchkeyctl: UNAVAILABLE: %s\n" % expected))

    def budget_with_canary(self, agent):
        """A budget for agent with a canary credential bound to TOOL, made
        over TLS; returns (budget id, secret)."""
        budget = "b-" + agent
        secret = harness.make_secret(agent[-4:])
        self.secrets.append(secret)
        self.cp.create_budget(budget, [agent])
        cred = self.cp.create_credential(TYPE, {"token": secret}, label=agent)
        self.cp.bind(budget, cred.id, tool=TOOL)
        return budget, secret

    def sidecar(self, name, agent, control_plane, extra_args):
        s = self.c.sidecar(name, agent, control_plane, extra_args=extra_args)
        self.addCleanup(s.stop)
        return s

    def logs(self):
        """Every log of the cluster: sidecars', control planes', etcd's."""
        text = ""
        for name in sorted(os.listdir(self.c.dir)):
            if name.endswith(".stderr") or name == "etcd.log":
                with open(os.path.join(self.c.dir, name),
                          errors="replace") as f:
                    text += f.read()
        return text

    def assertNoSecretInLogs(self):
        logs = self.logs()
        for token in (self.c.admin_token, self.c.node_token):
            self.assertNotIn(token, logs, "a token is in a log")
        for secret in self.secrets:
            self.assertNoSecret(logs, secret, "logs")
        for key in (self.pki.server[1], self.pki.expired[1],
                    self.pki.other_name[1]):
            for line in self.pki.key_body_lines(key):
                self.assertNotIn(line, logs, "private key bytes in a log")

    def assertNeverApplies(self, s, budget, expected):
        """s logs expected once as sync_tls_failed, keeps failing (a third
        attempt), never connects or applies anything, and answers calls
        for its budget NOT_FOUND."""
        wait_until(lambda: any("(attempt 3;" in e.get("msg", "")
                               for e in s.events("sync_connect_failed")),
                   what="%s's third failed attempt" % s.name)
        failed = s.events("sync_tls_failed")
        self.assertEqual([(e["level"], e["msg"]) for e in failed],
                         [("error", expected)])
        for event in ("sync_connected", "sync_snapshot_applied",
                      "sync_applied"):
            self.assertEqual(s.events(event), [], event)
        err = self.assertCode(StatusCode.NOT_FOUND, s.call, budget, TOOL,
                              "get", {"item": "x"})
        self.assertIn(budget, err.details())
        self.assertNoSecretInLogs()

    def assertNoReplicaOf(self, agent):
        """cp-tls lists no replica for agent."""
        self.assertNotIn(agent, [r["agent_id"]
                                 for r in self.cp.status()["replicas"]])

    # -- latchkeyctl -------------------------------------------------------

    def test_cli_with_the_ca_runs_admin_commands_over_tls(self):
        tool_file = os.path.join(self.c.dir, "cli-tool.json")
        with open(tool_file, "w") as f:
            json.dump(harness.echo_tool("cli-echo", self.c.nginx.base_url,
                                        TYPE), f)
        self.ok(self.cp.addr, "tool", "register", tool_file)
        self.assertIn("cli-echo", self.ok(self.cp.addr, "tool", "list"))
        secret = harness.make_secret("cli")
        self.secrets.append(secret)
        cred = harness.ctl_output_id(self.ok(
            self.cp.addr, "credential", "create", "--type", TYPE, "--label",
            "cli", stdin=json.dumps({"token": secret})))
        self.ok(self.cp.addr, "budget", "create", "b-cli", "--agent",
                "agent-cli")
        self.ok(self.cp.addr, "bind", "b-cli", "--tool", "cli-echo",
                "--credential", cred)
        listing = self.ok(self.cp.addr, "credential", "list")
        self.assertIn(cred, listing)
        self.assertNoSecret(listing, secret, "credential list")
        status = json.loads(self.ok(self.cp.addr, "--json", "status"))
        self.assertGreater(int(status["revision"]), 0)
        # By name too: the certificate lists DNS:localhost.
        self.assertIn("cli-echo",
                      self.ok("localhost:%d" % self.cp.port, "tool", "list"))
        self.assertNoSecretInLogs()

    def test_cli_with_a_wrong_ca_exits_1_naming_the_unknown_issuer(self):
        self.assertRefused(
            self.cp.addr, "wrong-ca.pem",
            "TLS handshake with %s failed: its certificate does not verify "
            "against --tls-ca wrong-ca.pem: unable to get local issuer "
            "certificate (issued by \"CN=Latchkey test CA\", a CA that bundle "
            "does not hold); no token was sent" % self.cp.addr)

    def test_cli_against_an_expired_certificate_exits_1_naming_the_date(self):
        self.assertRefused(
            self.cp_expired.addr, "ca.pem",
            "TLS handshake with %s failed: its certificate does not verify "
            "against --tls-ca ca.pem: certificate has expired (not valid "
            "after %s); no token was sent"
            % (self.cp_expired.addr, EXPIRED_NOT_AFTER))

    def test_cli_against_a_certificate_for_another_name_exits_1(self):
        for host in ("127.0.0.1", "localhost"):
            server = "%s:%d" % (host, self.cp_other.port)
            self.assertRefused(
                server, "ca.pem",
                "TLS handshake with %s failed: its certificate is not for %s "
                "(no such subjectAltName); connect by a name or address the "
                "certificate lists; no token was sent" % (server, host))

    def test_plaintext_cli_against_the_tls_control_plane_is_refused(self):
        self.assertRefused(
            self.cp.addr, None,
            "%s closed the plaintext connection: if it serves TLS "
            "(latchkey-cp --tls-cert), give --tls-ca with the CA bundle that "
            "issued its certificate" % self.cp.addr)

    def test_tls_cli_against_a_plaintext_control_plane_fails_clearly(self):
        self.assertRefused(
            self.cp_plain.addr, "ca.pem",
            "TLS handshake with %s failed: the server does not speak TLS (a "
            "latchkey-cp without --tls-cert?); no token was sent"
            % self.cp_plain.addr)

    def test_control_plane_with_an_expired_certificate_warns_at_start(self):
        warned = [json.loads(line) for line in self.cp_expired.log().splitlines()
                  if '"event":"tls_cert_expired"' in line]
        self.assertEqual(
            [(w["level"], w["msg"]) for w in warned],
            [("warn", "--tls-cert %s expired on %s: every client will refuse "
              "it until it is renewed"
              % (self.pki.expired[0], EXPIRED_NOT_AFTER))])
        self.assertNotIn('"event":"tls_cert_expired"', self.cp.log())

    # -- latchkeyd replicas ------------------------------------------------

    def test_sidecar_with_the_ca_replicates_and_injects_over_tls(self):
        agent = "agent-good"
        budget, secret = self.budget_with_canary(agent)
        s = self.sidecar("sd-good", agent, self.cp, ["--tls-ca", self.pki.ca])

        def injected():
            item = "good-%s" % os.urandom(3).hex()
            resp = s.call(budget, TOOL, "get", {"item": item})
            if resp.WhichOneof("outcome") != "result":
                return None
            got = self.c.nginx.arrivals("/echo/" + item, expect=1,
                                        timeout=3.0)
            return resp if got and got[0]["authorization"] == (
                "Bearer " + secret) else None
        resp = wait_until(injected, what="the TLS replica injecting")
        self.assertEqual(resp.result.http_status, 200)
        self.assertTrue(resp.result.redacted)
        self.assertNoSecret(harness.whole_response(resp), secret)
        self.c.wait_settled(self.cp, [agent])
        self.assertEqual(s.events("sync_tls_failed"), [])
        self.assertNoSecretInLogs()

    def test_sidecar_with_a_wrong_ca_never_applies_and_says_why(self):
        agent = "agent-wrong-ca"
        budget, _ = self.budget_with_canary(agent)
        s = self.sidecar("sd-wrong-ca", agent, self.cp,
                         ["--tls-ca", self.pki.wrong_ca])
        self.assertNeverApplies(
            s, budget,
            "TLS handshake with %s failed: its certificate does not verify "
            "against --tls-ca %s: unable to get local issuer certificate "
            "(issued by \"CN=Latchkey test CA\", a CA that bundle does not "
            "hold); no token was sent" % (self.cp.addr, self.pki.wrong_ca))
        self.assertNoReplicaOf(agent)

    def test_sidecar_against_an_expired_certificate_never_applies(self):
        agent = "agent-expired"
        budget, _ = self.budget_with_canary(agent)
        s = self.sidecar("sd-expired", agent, self.cp_expired,
                         ["--tls-ca", self.pki.ca])
        self.assertNeverApplies(
            s, budget,
            "TLS handshake with %s failed: its certificate does not verify "
            "against --tls-ca %s: certificate has expired (not valid after "
            "%s); no token was sent"
            % (self.cp_expired.addr, self.pki.ca, EXPIRED_NOT_AFTER))

    def test_sidecar_against_a_certificate_for_another_name_never_applies(
            self):
        agent = "agent-other-name"
        budget, _ = self.budget_with_canary(agent)
        s = self.sidecar("sd-other-name", agent, self.cp_other,
                         ["--tls-ca", self.pki.ca])
        self.assertNeverApplies(
            s, budget,
            "TLS handshake with %s failed: its certificate is not for "
            "127.0.0.1 (no such subjectAltName); connect by a name or "
            "address the certificate lists; no token was sent"
            % self.cp_other.addr)

    def test_plaintext_sidecar_against_the_tls_control_plane_never_applies(
            self):
        agent = "agent-plain-to-tls"
        budget, _ = self.budget_with_canary(agent)
        s = self.sidecar("sd-plain-to-tls", agent, self.cp, [])
        self.assertNeverApplies(
            s, budget,
            "%s closed the plaintext connection: if it serves TLS "
            "(latchkey-cp --tls-cert), give --tls-ca with the CA bundle that "
            "issued its certificate" % self.cp.addr)
        self.assertNoReplicaOf(agent)

    def test_tls_sidecar_against_a_plaintext_control_plane_never_applies(
            self):
        agent = "agent-tls-to-plain"
        budget, _ = self.budget_with_canary(agent)
        s = self.sidecar("sd-tls-to-plain", agent, self.cp_plain,
                         ["--tls-ca", self.pki.ca])
        self.assertNeverApplies(
            s, budget,
            "TLS handshake with %s failed: the server does not speak TLS (a "
            "latchkey-cp without --tls-cert?); no token was sent"
            % self.cp_plain.addr)

    # -- no token on a refused handshake -----------------------------------

    def impersonator(self, pair):
        imp = Impersonator(*pair)
        self.addCleanup(imp.stop)
        return imp

    def test_an_impersonator_the_ca_vouches_for_receives_both_tokens(self):
        """The control: the recorder sees tokens when a client does send
        them, so the empty records below mean nothing was sent."""
        imp = self.impersonator(self.pki.server)
        out = self.ctl(imp.addr, "tool", "list", ca="ca.pem")
        self.assertEqual(out.returncode, 1, out.stderr)
        s = self.sidecar("sd-imp-trusted", "agent-imp-trusted", imp,
                         ["--tls-ca", self.pki.ca])
        wait_until(lambda: self.c.node_token.encode() in imp.received(),
                   what="the node token reaching the trusted impersonator")
        data = imp.received()
        self.assertIn(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", data)
        self.assertIn(self.c.admin_token.encode(), data)
        self.assertEqual(s.events("sync_tls_failed"), [])

    def assertImpersonatorGetsNothing(self, pair, tag, cli_reason):
        imp = self.impersonator(pair)
        out = self.ctl(imp.addr, "tool", "list", ca="ca.pem")
        self.assertEqual(out.returncode, 1)
        self.assertTrue(out.stderr.startswith(
            "latchkeyctl: UNAVAILABLE: TLS handshake with %s failed: %s"
            % (imp.addr, cli_reason)), out.stderr)
        s = self.sidecar("sd-imp-" + tag, "agent-imp-" + tag, imp,
                         ["--tls-ca", self.pki.ca])
        wait_until(lambda: any("(attempt 3;" in e.get("msg", "")
                               for e in s.events("sync_connect_failed")),
                   what="three refused attempts of the sidecar")
        self.assertEqual(len(s.events("sync_tls_failed")), 1)
        s.stop()
        conns = wait_until(lambda: imp.finished(4),
                           what="the impersonator's connections ending")
        self.assertEqual([c["data"] for c in conns], [b""] * len(conns),
                         "application bytes reached the impersonator")
        for token in (self.c.admin_token, self.c.node_token):
            self.assertNotIn(token.encode(), imp.received())

    def test_no_token_reaches_an_impersonator_with_a_wrong_ca_certificate(
            self):
        self.assertImpersonatorGetsNothing(
            self.pki.wrong_server, "wrong-ca",
            "its certificate does not verify against --tls-ca ca.pem: unable "
            "to get local issuer certificate (issued by \"CN=Unrelated CA\"")

    def test_no_token_reaches_an_impersonator_with_an_expired_certificate(
            self):
        self.assertImpersonatorGetsNothing(
            self.pki.expired, "expired",
            "its certificate does not verify against --tls-ca ca.pem: "
            "certificate has expired")

    def test_no_token_reaches_an_impersonator_with_another_names_certificate(
            self):
        self.assertImpersonatorGetsNothing(
            self.pki.other_name, "other-name",
            "its certificate is not for 127.0.0.1")


class ControlPlaneTlsFilesTest(unittest.TestCase):
    """latchkey-cp refuses unusable --tls-cert/--tls-key at start: exit 2,
    exactly one line on stderr naming the flag, and nothing touched (no
    key ring created, etcd never contacted)."""

    @classmethod
    def setUpClass(cls):
        cls.dirs = harness.TestDirs("tls_test-files")
        try:
            cls.pki = Pki(cls.dirs.dir)
            cls.token = os.path.join(cls.dirs.dir, "token")
            cluster.write_secret_file(cls.token, "t-" + os.urandom(16).hex())
            cls.encrypted_key = cls.pki.path("encrypted.key")
            cls.pki.openssl("pkey", "-in", cls.pki.server[1], "-aes256",
                            "-passout", "pass:not-a-flag", "-out",
                            cls.encrypted_key)
            cls.empty = cls.pki.path("empty.pem")
            open(cls.empty, "w").close()
        except BaseException:
            cls.dirs.remove()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.dirs.remove()

    def start_cp(self, cert, key):
        keyring = os.path.join(self.dirs.dir, "keyring")
        argv = [cluster.latchkey_cp_path(), "--listen",
                "127.0.0.1:%d" % harness.free_port(),
                # Nothing listens there: the files are checked first.
                "--etcd", "127.0.0.1:1", "--keyring", keyring,
                "--admin-token-file", self.token,
                "--node-token-file", self.token,
                "--tls-cert", cert, "--tls-key", key]
        out = subprocess.run(argv, capture_output=True, text=True,
                             timeout=60, env=harness.daemon_env())
        self.assertFalse(os.path.exists(keyring), "the key ring was created")
        return out

    def assertRefused(self, cert, key, line):
        out = self.start_cp(cert, key)
        self.assertEqual((out.returncode, out.stdout, out.stderr),
                         (2, "", "latchkey-cp: %s\n" % line))

    def test_missing_certificate_file(self):
        cert = self.pki.path("nope.pem")
        self.assertRefused(cert, self.pki.server[1],
                           "cannot read --tls-cert %s: No such file or "
                           "directory" % cert)

    def test_missing_key_file(self):
        key = self.pki.path("nope.key")
        self.assertRefused(self.pki.server[0], key,
                           "cannot read --tls-key %s: No such file or "
                           "directory" % key)

    def test_key_of_another_certificate(self):
        cert, key = self.pki.server[0], self.pki.other_name[1]
        self.assertRefused(cert, key,
                           "--tls-key %s does not match the certificate in "
                           "--tls-cert %s" % (key, cert))

    def test_swapped_certificate_and_key(self):
        cert, key = self.pki.server
        self.assertRefused(key, cert,
                           "--tls-cert %s holds no PEM certificate "
                           "(-----BEGIN CERTIFICATE-----)" % key)

    def test_key_file_holding_a_certificate(self):
        cert = self.pki.server[0]
        self.assertRefused(cert, cert,
                           "--tls-key %s holds no PEM private key "
                           "(-----BEGIN PRIVATE KEY-----)" % cert)

    def test_encrypted_key(self):
        self.assertRefused(self.pki.server[0], self.encrypted_key,
                           "--tls-key %s is encrypted: grpc cannot ask for a "
                           "passphrase, give an unencrypted PEM key in a 0600 "
                           "file" % self.encrypted_key)

    def test_empty_certificate_file(self):
        self.assertRefused(self.empty, self.pki.server[1],
                           "--tls-cert %s is empty" % self.empty)

    def test_certificate_without_key_is_a_usage_error(self):
        argv = [cluster.latchkey_cp_path(), "--admin-token-file", self.token,
                "--node-token-file", self.token,
                "--tls-cert", self.pki.server[0]]
        out = subprocess.run(argv, capture_output=True, text=True,
                             timeout=60, env=harness.daemon_env())
        self.assertEqual((out.returncode, out.stderr),
                         (2, "latchkey-cp: --tls-cert and --tls-key go "
                             "together (see --help)\n"))


if __name__ == "__main__":
    harness.main()
