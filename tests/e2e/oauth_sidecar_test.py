"""The sidecar's side of OAuth 2.0 credentials (issue 8), on real parts: a
real latchkeyd (replica mode, and standalone), the loopback identity
provider and bearer-checking vendor of oauth_server.py, and the fake
control plane of fake_cp.py, which serves Sync/Stream and Sync/Refresh
over real gRPC and seals the tokens it pushes to the sidecar's node key
with the real lib/seal code.

What is proven, from the vendor's and the control plane's own counters:
- an expired access token never reaches the vendor: the call is answered
  missing_credential whose hint says the connection must be re-authorised,
  names the credential, the expiry and why it was not refreshed, and
  carries the setup_url;
- a vendor 401 makes exactly one Refresh request (with the node token, the
  agent, the credential and the generation used) and one retry that
  carries the new token;
- a vendor that refuses every token sees exactly two requests, and the
  401 comes back: no loop;
- eight calls refused together make one Refresh request;
- Refresh answering FAILED_PRECONDITION turns the call into
  missing_credential with the re-authorise hint;
- a failed Refresh, or a refreshed token that never arrives, returns the
  first 401 (in time for the call's deadline);
- a standalone sidecar (credential created through its Admin) is its own
  control plane: a 401 makes one token request of its own refresher and
  one retry with the new token, and an expired token is never sent while
  the provider is down (oauth_standalone_test.py covers the rest).
"""

import json
import os
import threading
import time
import unittest
import urllib.request

from google.protobuf import json_format

import grpc

import harness
from fake_cp import FakeControlPlane, record, write_node_token
from latchkey.v1 import sync_pb2
from latchkey.v1 import types_pb2
from oauth_server import OAuthServer, oauth_tool

CRED = "cred-idp"
TYPE = "idp-oauth"
TOOL = "idp-api"
SETUP = "https://console.example/connect/{type}?budget={budget}&tool={tool}"
SETUP_URL = "https://console.example/connect/%s?budget=main&tool=%s" % (
    TYPE, TOOL)
TOOL_TIMEOUT_MS = 4000

# The oauth2 credential type as lib/oauth.h lists its fields, injecting
# the access token as a bearer token.
OAUTH_TYPE = {
    "id": TYPE,
    "kind": "oauth2",
    "description": "the test identity provider",
    "fields": [
        {"name": "access_token", "secret": True},
        {"name": "refresh_token", "secret": True},
        {"name": "expires_at", "secret": False},
        {"name": "token_url", "secret": False},
        {"name": "client_id", "secret": False},
        {"name": "client_secret", "secret": True},
        {"name": "grant_type", "secret": False},
        {"name": "scope", "secret": False},
    ],
    "inject": [{"in": "header", "name": "Authorization",
                "value": "Bearer {access_token}"}],
}


def events(stack, name):
    """latchkeyd's JSON log lines whose event is name, parsed."""
    return [json.loads(line) for line in stack.log_lines()
            if '"event":"%s"' % name in line]


def metric(port, line_prefix):
    """The value of the first sample line starting with line_prefix on
    latchkeyd's /metrics page, or None."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split(" ")[-1])
    return None


class OAuthStack(harness.Stack):
    """nginx + a latchkeyd following the fake control plane (replica
    mode)."""

    def __init__(self, name, cp_port):
        super().__init__(name, setup_url_template=SETUP)
        self.cp_addr = "127.0.0.1:%d" % cp_port
        self.node_token_file = os.path.join(self.dir, "node.token")
        write_node_token(self.node_token_file)
        self.metrics_port = harness.free_port()

    def daemon_args(self):
        args = ["--listen", self.agent_addr,
                "--agent-id", self.agent_id,
                "--data-dir", self.data_dir,
                "--node-key", self.node_key,
                "--allow-insecure-vendors",
                "--setup-url-template", SETUP,
                "--metrics-listen", "127.0.0.1:%d" % self.metrics_port,
                "--control-plane", self.cp_addr,
                "--control-plane-token-file", self.node_token_file,
                "--log-level", "debug"]
        return args

    def _ready(self, timeout):
        return harness.wait_unix(self.agent_sock, timeout)


class OAuthSidecarTest(harness.E2EAssertions, unittest.TestCase):

    def setUp(self):
        self.idp = OAuthServer(expires_in=3600, rotate=True).start()
        self.addCleanup(self.idp.stop)
        self.cp = FakeControlPlane(harness.free_port()).start()
        self.addCleanup(self.cp.stop)
        self.lk = OAuthStack(self.id(), self.cp.port)
        self.addCleanup(self._close_stack)
        self.lk.start()
        self.new_fields_given = []

    def _close_stack(self):
        problem = self.lk.close()
        if problem:
            raise AssertionError(problem)

    # -- helpers -----------------------------------------------------------

    def _new_fields(self):
        """What a refresh at the provider yields: a new live access token
        (and refresh token, expiry), issued by the provider itself."""
        fresh = self.idp.seed()
        self.new_fields_given.append(fresh)
        return {k: fresh[k] for k in ("access_token", "refresh_token",
                                      "expires_at")}

    def install(self, expires_in=3600, **oauth_state):
        """Sends the catalog (type, tool, budget, binding and the oauth2
        credential) as a snapshot; returns the credential's fields."""
        fields = self.idp.seed(expires_in=expires_in)
        hello = self.cp.wait_hello(1)
        node_pk = hello.node_public_key
        cred = self.cp.serve_oauth(node_pk, CRED, TYPE, fields,
                                   self._new_fields, **oauth_state)
        tool = {"id": TOOL, "description": "OAuth-protected vendor",
                "base_url": self.idp.url, "credential_type": TYPE,
                "timeout_ms": TOOL_TIMEOUT_MS,
                "operations": [{"name": "whoami", "method": "GET",
                                "path": "/api/whoami",
                                "description": "which token arrived"}]}
        recs = [
            record("type/" + TYPE, harness.credential_type(OAUTH_TYPE)),
            record("tool/" + TOOL,
                   json_format.ParseDict(tool, types_pb2.Tool())),
            record("budget/main",
                   types_pb2.Budget(id="main", agents=[harness.AGENT])),
            record("cred/" + CRED, cred),
            record("bind/main/tool/" + TOOL,
                   types_pb2.Binding(budget_id="main", tool_id=TOOL,
                                     credential_id=CRED)),
        ]
        self.cp.send(sync_pb2.SyncBatch(revision=10, puts=recs,
                                        snapshot_begin=True,
                                        snapshot_end=True))
        ack = self.cp.wait_ack(10)
        self.assertFalse(ack.nack, ack.error)
        return fields

    def whoami(self, timeout=15):
        return self.lk.call("main", TOOL, "whoami", {}, timeout=timeout)

    def assertResult(self, resp, status, generation=None):
        self.assertEqual(resp.WhichOneof("outcome"), "result", resp)
        self.assertEqual(resp.result.http_status, status, resp.result.body)
        if generation is not None:
            self.assertEqual(json.loads(resp.result.body)["generation"],
                             generation)

    def assertReauthoriseHint(self, resp, fields):
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential",
                         resp)
        missing = resp.missing_credential
        self.assertIn("re-authorise", missing.hint)
        self.assertIn("'%s'" % CRED, missing.hint)
        self.assertIn("latchkeyctl credential update %s" % CRED, missing.hint)
        self.assertIn(SETUP_URL, missing.hint)
        self.assertEqual(missing.setup_url, SETUP_URL)
        self.assertEqual(missing.tool_id, TOOL)
        self.assertEqual(missing.credential_type, TYPE)
        self.assertEqual([f.name for f in missing.required_fields],
                         [f["name"] for f in OAUTH_TYPE["fields"]])
        for name in ("access_token", "refresh_token", "client_secret"):
            self.assertNoSecret(resp.SerializeToString(), fields[name],
                                "missing_credential")
        return missing

    def vendor_generations(self):
        """The provider generation of the token of each vendor request."""
        return [v["generation"] for v in self.idp.stats()["vendor"]]

    # -- expired tokens ----------------------------------------------------

    def test_expired_token_is_never_sent_and_the_hint_says_reauthorise(self):
        fields = self.install(expires_in=-120, failures=3,
                              last_refresh_result="token endpoint answered "
                                                  "503")
        expiry = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                               time.gmtime(int(fields["expires_at"])))
        missing = self.assertReauthoriseHint(self.whoami(), fields)
        self.assertIn("expired at " + expiry, missing.hint)
        self.assertIn('"token endpoint answered 503" (3 failed attempts',
                      missing.hint)
        self.assertEqual(self.idp.stats()["vendor_requests"], 0,
                         "an expired token reached the vendor")
        self.assertEqual(self.cp.refresh_requests(), [])
        (line,) = events(self.lk, "audit.tool_call")
        self.assertEqual(line["outcome"], "missing_credential")
        self.assertEqual(line["credential_id"], CRED)
        self.assertNotIn("oauth_retry", line)
        self.assertEqual(metric(self.lk.metrics_port,
                                "latchkey_oauth_expired_total"), 1)
        # ListTools tells the agent the same before it calls.
        (info,) = [t for t in self.lk.list_tools("main").tools
                   if t.tool_id == TOOL]
        self.assertFalse(info.credential_ready)

    def test_live_token_is_credential_ready(self):
        self.install()
        (info,) = [t for t in self.lk.list_tools("main").tools
                   if t.tool_id == TOOL]
        self.assertTrue(info.credential_ready)

    def test_expired_token_refused_by_the_provider_says_so(self):
        fields = self.install(expires_in=-5, reauthorize=True,
                              last_refresh_result="invalid_grant")
        missing = self.assertReauthoriseHint(self.whoami(), fields)
        self.assertIn("the identity provider refused the refresh token",
                      missing.hint)
        self.assertEqual(self.idp.stats()["vendor_requests"], 0)

    # -- a vendor 401 --------------------------------------------------------

    def test_vendor_401_makes_one_refresh_and_one_retry_with_the_new_token(
            self):
        self.install()
        self.assertResult(self.whoami(), 200, generation=1)
        self.idp.revoke_current()
        self.assertResult(self.whoami(), 200, generation=2)
        self.assertEqual(self.vendor_generations(), [1, 1, 2],
                         "one refused request, then the retry with token 2")
        (req,) = self.cp.refresh_requests()
        self.assertEqual((req.agent_id, req.credential_id, req.generation),
                         (harness.AGENT, CRED, 1))
        audit = events(self.lk, "audit.tool_call")
        self.assertEqual(len(audit), 2)
        self.assertNotIn("oauth_retry", audit[0])
        self.assertIs(audit[1]["oauth_retry"], True)
        self.assertEqual(audit[1]["vendor_status"], 200)
        port = self.lk.metrics_port
        self.assertEqual(metric(port, 'latchkey_oauth_refresh_requests_total'
                                      '{result="ok"}'), 1)
        self.assertEqual(metric(port, "latchkey_oauth_retries_total"), 1)
        # The new token stays: the next call sends it at once.
        self.assertResult(self.whoami(), 200, generation=2)
        self.assertEqual(len(self.cp.refresh_requests()), 1)

    def test_vendor_refusing_every_token_sees_two_requests_and_401_returns(
            self):
        self.install()
        self.idp.vendor_always_401 = True
        resp = self.whoami()
        self.assertResult(resp, 401)
        self.assertEqual(json.loads(resp.result.body),
                         {"error": "invalid_token"})
        self.assertEqual(self.vendor_generations(), [1, 2],
                         "exactly two vendor requests, the second with the "
                         "refreshed token")
        self.assertEqual(len(self.cp.refresh_requests()), 1)
        time.sleep(1.0)  # nothing more happens afterwards: no loop
        self.assertEqual(self.idp.stats()["vendor_requests"], 2)
        self.assertEqual(len(self.cp.refresh_requests()), 1)
        (line,) = events(self.lk, "audit.tool_call")
        self.assertIs(line["oauth_retry"], True)
        self.assertEqual(line["vendor_status"], 401)

    def test_eight_calls_refused_together_make_one_refresh(self):
        self.install()
        self.idp.revoke_current()
        self.cp.refresh_delay = 1.0  # every refusal arrives while it asks
        results = [None] * 8
        barrier = threading.Barrier(8)

        def one(i):
            barrier.wait()
            try:
                results[i] = self.whoami()
            except grpc.RpcError as e:
                results[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for resp in results:
            self.assertNotIsInstance(resp, grpc.RpcError, resp)
            self.assertResult(resp, 200, generation=2)
        self.assertEqual(len(self.cp.refresh_requests()), 1)
        gens = self.vendor_generations()
        self.assertEqual((gens.count(1), gens.count(2)), (8, 8), gens)

    def test_refresh_refused_by_the_provider_answers_reauthorise(self):
        fields = self.install()
        self.idp.revoke_current()
        self.cp.refresh_status = grpc.StatusCode.FAILED_PRECONDITION
        self.cp.refresh_details = "the identity provider refused the grant"
        missing = self.assertReauthoriseHint(self.whoami(), fields)
        self.assertIn("the vendor refused its access token", missing.hint)
        self.assertIn("the identity provider refused the refresh token",
                      missing.hint)
        self.assertEqual(len(self.cp.refresh_requests()), 1)
        self.assertEqual(self.idp.stats()["vendor_requests"], 1,
                         "no retry without a new token")
        self.assertEqual(metric(self.lk.metrics_port,
                                'latchkey_oauth_refresh_requests_total'
                                '{result="reauthorize"}'), 1)

    def test_failed_refresh_returns_the_first_401(self):
        self.install()
        self.idp.revoke_current()
        self.cp.refresh_status = grpc.StatusCode.UNAVAILABLE
        self.cp.refresh_details = "identity provider unreachable"
        self.assertResult(self.whoami(), 401)
        self.assertEqual(len(self.cp.refresh_requests()), 1)
        self.assertEqual(self.idp.stats()["vendor_requests"], 1)
        (skipped,) = events(self.lk, "oauth_retry_skipped")
        self.assertEqual(skipped["level"], "info")
        self.assertIn("identity provider unreachable", skipped["msg"])
        self.assertEqual(metric(self.lk.metrics_port,
                                'latchkey_oauth_refresh_requests_total'
                                '{result="failed"}'), 1)

    def test_token_that_never_arrives_returns_the_first_401_in_time(self):
        self.install()
        self.idp.revoke_current()
        self.cp.refresh_push = False  # answers OK, pushes nothing
        t0 = time.monotonic()
        resp = self.whoami(timeout=3)
        took = time.monotonic() - t0
        self.assertResult(resp, 401)
        self.assertLess(took, 3.0)
        self.assertGreater(took, 2.0, "it waited for the token until close "
                                      "to the call's deadline")
        self.assertEqual(len(self.cp.refresh_requests()), 1)
        self.assertEqual(self.idp.stats()["vendor_requests"], 1)
        self.assertTrue(events(self.lk, "oauth_refresh_not_applied"))



class StandaloneOAuthTest(harness.StackTestCase):
    """A standalone latchkeyd (no control plane) whose oauth2 credential
    was created through its own Admin listener: it refreshes the
    credential itself (sidecar/local_refresh)."""

    with_catalog = False
    stack_options = {"extra_args": ["--allow-insecure-token-urls",
                                    "--oauth-retry-max", "1"]}

    def setUp(self):
        super().setUp()
        self.idp = OAuthServer(expires_in=3600, rotate=True).start()
        self.addCleanup(self.idp.stop)
        self.lk.register_tool(oauth_tool(TOOL, self.idp, TYPE))
        self.lk.create_budget("main")

    def connect(self, expires_in):
        fields = self.idp.seed(expires_in=expires_in)
        cred = self.lk.create_credential(TYPE, fields, label="oauth")
        self.assertEqual(cred.oauth.generation, 1)
        self.lk.bind("main", cred.id, tool=TOOL)
        return cred.id, fields

    def whoami(self):
        return self.lk.call("main", TOOL, "whoami", {})

    def test_standalone_401_makes_one_local_refresh_and_one_retry(self):
        _, fields = self.connect(expires_in=3600)
        resp = self.whoami()
        self.assertEqual(resp.result.http_status, 200)
        self.idp.revoke_current()
        resp = self.whoami()
        self.assertEqual(resp.WhichOneof("outcome"), "result")
        self.assertEqual(resp.result.http_status, 200)
        self.assertEqual(json.loads(resp.result.body)["generation"], 2)
        stats = self.idp.stats()
        self.assertEqual([v["generation"] for v in stats["vendor"]], [1, 1, 2],
                         "one refused request, then the retry with token 2")
        (req,) = stats["requests"]
        self.assertEqual(req["refresh_token"], fields["refresh_token"])
        (asked,) = events(self.lk, "oauth_refresh_requested")
        self.assertIn("generation 1 (now 2)", asked["msg"])
        self.assertEqual(len(events(self.lk, "oauth_retry")), 1)
        self.assertIs(events(self.lk, "audit.tool_call")[-1]["oauth_retry"],
                      True)

    def test_standalone_never_sends_an_expired_token(self):
        self.idp.mode = "fail"  # the provider is down: no new token comes
        cred_id, fields = self.connect(expires_in=-30)
        wait = time.monotonic() + 10
        while (self.idp.stats()["token_requests"] == 0
               and time.monotonic() < wait):
            time.sleep(0.05)
        resp = self.whoami()
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")
        missing = resp.missing_credential
        self.assertIn("re-authorise", missing.hint)
        self.assertIn("'%s'" % cred_id, missing.hint)
        self.assertIn("latchkeyctl credential update %s" % cred_id,
                      missing.hint)
        setup_url = harness.SETUP_URL_TEMPLATE.format(
            tool=TOOL, budget="main", type=TYPE)
        self.assertEqual(missing.setup_url, setup_url)
        self.assertIn(setup_url, missing.hint)
        for name in ("access_token", "refresh_token", "client_secret"):
            self.assertNoSecret(resp.SerializeToString(), fields[name],
                                "missing_credential")
        self.assertEqual(self.idp.stats()["vendor_requests"], 0)
        self.assertGreaterEqual(self.idp.stats()["token_requests"], 1,
                                "the standalone sidecar tried to refresh")


if __name__ == "__main__":
    unittest.main()
