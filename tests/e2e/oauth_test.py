"""OAuth 2.0 credentials end to end (issue 8): a real etcd, two real
latchkey-cp control planes and real latchkeyd replicas, against the local
identity provider and OAuth-protected vendor of tests/e2e/oauth_server.py.

What is proven here is what the provider and the vendor really saw (their
own counters), not what Latchkey reports about itself:
- ten sidecars sharing one credential through an expiry cause exactly one
  token request, and every sidecar then injects the new token;
- a rotated refresh token is never presented twice;
- with the provider down past expiry the sidecars answer missing_credential
  with a re-authorise hint and setup_url, and send nothing to the vendor;
  once the provider is back, calls succeed again without anyone acting;
- a vendor 401 causes one refresh and one retry, never a loop;
- owners updating the label through both control planes while both
  refresh every ~1.5 s lose no rotation: every provider answer lands, no
  refresh token is presented twice, and calls keep succeeding with a
  recent token.

Every wait is a bounded poll for the state the test then asserts.
"""

import json
import threading
import time
import unittest

import grpc

import cluster
import harness
from cluster import wait_until
from latchkey.v1 import admin_pb2, types_pb2
from oauth_server import OAuthServer, oauth_tool

TOOL = "idp-api"
TYPE = "idp-oauth"
BUDGET = "team"
MARGIN_S = 4
SETUP_TEMPLATE = "https://console.example/connect/{type}?budget={budget}"


class OAuthClusterTest(harness.E2EAssertions, unittest.TestCase):

    def setUp(self):
        self.idp = OAuthServer(expires_in=3600, rotate=True).start()
        self.addCleanup(self.idp.stop)
        self.c = cluster.Cluster(self.id(), control_planes=2)
        for cp in self.c.cps:
            cp.extra_args = ["--oauth-refresh-margin", str(MARGIN_S),
                             "--oauth-retry-max", "1",
                             "--allow-insecure-token-urls"]
        self.addCleanup(self._close)
        self.c.start()
        self.cp1, self.cp2 = self.c.cps
        self.cp1.register_tool(oauth_tool(TOOL, self.idp, TYPE))

    def _close(self):
        problem = self.c.close()
        if problem:
            raise AssertionError(problem)

    # -- helpers -----------------------------------------------------------

    def _credential(self, agents, expires_in):
        fields = self.idp.seed(expires_in=expires_in)
        cred = self.cp1.create_credential(TYPE, fields, label="oauth")
        self.cp1.create_budget(BUDGET, agents)
        self.cp1.bind(BUDGET, cred.id, tool=TOOL)
        return cred.id, fields

    def _sidecars(self, agents):
        cps = self.c.cps
        sidecars = [self.c.sidecar(
            "sc%d" % i, agent, cps[i % len(cps)],
            extra_args=["--setup-url-template", SETUP_TEMPLATE])
            for i, agent in enumerate(agents)]
        for cp in cps:
            self.c.wait_settled(cp, [s.agent_id for s in sidecars
                                     if s.control_plane is cp])
        return sidecars

    def _whoami(self, sidecar):
        """One call; returns ("result", status, body dict) or
        ("missing_credential", MissingCredential)."""
        resp = sidecar.call(BUDGET, TOOL, "whoami")
        kind = resp.WhichOneof("outcome")
        if kind == "missing_credential":
            return kind, resp.missing_credential
        body = json.loads(resp.result.body or b"{}")
        return kind, resp.result.http_status, body

    def _generation_seen(self, sidecar):
        """The token generation the vendor saw on a call through sidecar,
        or None when the call did not succeed."""
        out = self._whoami(sidecar)
        if out[0] == "result" and out[1] == 200:
            return out[2]["generation"]
        return None

    # -- tests -------------------------------------------------------------

    def test_ten_sidecars_share_one_refresh_through_an_expiry(self):
        agents = ["agent-%d" % i for i in range(10)]
        # Long enough for ten sidecars to start and call with token 1
        # before the control planes refresh it.
        lifetime = MARGIN_S + 25
        _, fields = self._credential(agents, expires_in=lifetime)
        expires_at = int(fields["expires_at"])
        sidecars = self._sidecars(agents)
        for s in sidecars:
            self.assertEqual(self._generation_seen(s), 1, s.name)
        wait_until(lambda: self.idp.stats()["token_requests"] >= 1,
                   timeout=lifetime + 10, what="the refresh before expiry")
        for s in sidecars:
            wait_until(lambda s=s: self._generation_seen(s) == 2,
                       what="%s injecting the refreshed token" % s.name)
        # Past the old token's expiry, with both control planes running:
        # still exactly one request reached the provider.
        wait_until(lambda: time.time() > expires_at + 1,
                   timeout=lifetime + 10, what="the old token's expiry")
        for s in sidecars:
            self.assertEqual(self._generation_seen(s), 2, s.name)
        stats = self.idp.stats()
        self.assertEqual(stats["token_requests"], 1, stats["requests"])
        self.assertEqual(stats["requests"][0]["grant_type"], "refresh_token")
        self.assertTrue(self.cp1.running() and self.cp2.running())
        gens = {r["generation"] for r in stats["vendor"]}
        self.assertEqual(gens, {1, 2}, "the vendor saw only tokens 1 and 2")

    def test_rotated_refresh_tokens_are_never_reused(self):
        # Tokens live 3 s, so the control planes refresh every ~1.5 s.
        self.idp.expires_in = 3
        self._credential(["agent-r"], expires_in=3)
        (sidecar,) = self._sidecars(["agent-r"])
        wait_until(lambda: self.idp.stats()["token_requests"] >= 5,
                   timeout=30, what="five refresh cycles")
        stats = self.idp.stats()
        self.assertEqual(stats["refresh_token_reuse"], 0, stats["requests"])
        presented = [r["refresh_token"] for r in stats["requests"]]
        self.assertEqual(len(presented), len(set(presented)), presented)
        self.assertTrue(all(r["client_ok"] and r["form_encoded"]
                            for r in stats["requests"]))
        # Each token presented is the one the previous answer rotated in.
        for earlier, later in zip(presented, presented[1:]):
            self.assertLess(int(earlier.split("-")[1]),
                            int(later.split("-")[1]))
        wait_until(lambda: (self._generation_seen(sidecar) or 0) >= 5,
                   what="the sidecar injecting a rotated token")

    def test_provider_down_past_expiry_then_back_recovers(self):
        self.idp.mode = "fail"
        cred_id, fields = self._credential(["agent-d"], expires_in=MARGIN_S + 2)
        expires_at = int(fields["expires_at"])
        (sidecar,) = self._sidecars(["agent-d"])
        self.assertEqual(self._generation_seen(sidecar), 1)
        wait_until(lambda: time.time() > expires_at + 0.5,
                   timeout=MARGIN_S + 20, what="the token's expiry")
        vendor_before = self.idp.stats()["vendor_requests"]
        out = wait_until(
            lambda: (lambda o: o if o[0] == "missing_credential" else None)(
                self._whoami(sidecar)),
            what="missing_credential after expiry")
        missing = out[1]
        self.assertIn("re-authoris", missing.hint)
        self.assertIn(cred_id, missing.hint)
        self.assertEqual(missing.setup_url,
                         "https://console.example/connect/%s?budget=%s"
                         % (TYPE, BUDGET))
        self.assertEqual(missing.tool_id, TOOL)
        self.assertEqual(self.idp.stats()["vendor_requests"], vendor_before,
                         "an expired token reached the vendor")
        self.assertNoSecret(missing.SerializeToString(),
                            fields["refresh_token"], "missing_credential")
        failed = self.idp.stats()["token_requests"]
        self.assertGreaterEqual(failed, 2, "the control plane kept retrying")
        shown = self.cp1.ctl("--json", "credential", "show", cred_id)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        oauth = json.loads(shown.stdout)["oauth"]
        self.assertGreaterEqual(int(oauth["failures"]), 1, oauth)
        # The provider comes back: no one acts, and calls succeed again.
        self.idp.mode = "ok"
        wait_until(lambda: self._generation_seen(sidecar) == 2,
                   what="calls succeeding after the provider came back")
        self.assertEqual(self.idp.stats()["refresh_token_reuse"], 0)

    def test_vendor_401_triggers_one_refresh_and_one_retry(self):
        self._credential(["agent-v"], expires_in=3600)
        (sidecar,) = self._sidecars(["agent-v"])
        self.assertEqual(self._generation_seen(sidecar), 1)
        self.idp.revoke_current()
        before = self.idp.stats()
        self.assertEqual(self._generation_seen(sidecar), 2)
        after = self.idp.stats()
        self.assertEqual(after["token_requests"] - before["token_requests"], 1)
        self.assertEqual(after["vendor_requests"] - before["vendor_requests"],
                         2, "one refused call and one retry")
        # A vendor that refuses every token: one refresh, one retry, and
        # the 401 comes back; no loop.
        self.idp.vendor_always_401 = True
        before = self.idp.stats()
        out = self._whoami(sidecar)
        after = self.idp.stats()
        self.assertEqual(out[0], "result")
        self.assertEqual(out[1], 401)
        self.assertEqual(after["token_requests"] - before["token_requests"], 1)
        self.assertEqual(after["vendor_requests"] - before["vendor_requests"],
                         2)
        self.assertEqual(after["refresh_token_reuse"], 0)

    def _stored(self, cred_id):
        """The credential record etcd itself holds."""
        value, _ = self.c.etcd.get(cluster.ETCD_PREFIX + "cred/" + cred_id)
        cred = types_pb2.Credential()
        cred.ParseFromString(value)
        return cred

    def test_owner_updates_during_refreshes_lose_no_rotation(self):
        # Tokens live 3 s, so the control planes refresh every ~1.5 s,
        # while owners rename the credential through both of them.
        self.idp.expires_in = 3
        cred_id, _ = self._credential(["agent-u"], expires_in=3)
        (sidecar,) = self._sidecars(["agent-u"])
        stop = threading.Event()
        done = {"cp1": 0, "cp2": 0}
        told_to_retry = {"cp1": 0, "cp2": 0}
        failures = []
        last = {}

        def rename(cp, tag):
            # An owner's client: one rename after another, retrying what
            # the control plane answers UNAVAILABLE "...; retry" (a write
            # that kept meeting newer versions of the credential).
            n = 0
            while not stop.is_set():
                n += 1
                label = "%s-%d" % (tag, n)
                for _ in range(5):
                    try:
                        cp.admin("UpdateCredential",
                                 admin_pb2.UpdateCredentialRequest(
                                     id=cred_id, label=label))
                        done[tag] += 1
                        last[tag] = label
                        break
                    except grpc.RpcError as e:
                        if (e.code() != grpc.StatusCode.UNAVAILABLE
                                or not e.details().endswith("; retry")):
                            failures.append((tag, e.code(), e.details()))
                            break
                        told_to_retry[tag] += 1
                else:
                    failures.append((tag, "still refused after 5 tries"))
                time.sleep(0.005)

        threads = [threading.Thread(target=rename, args=(cp, tag))
                   for cp, tag in ((self.cp1, "cp1"), (self.cp2, "cp2"))]
        requests_before = self.idp.stats()["token_requests"]
        for t in threads:
            t.start()
        try:
            # At least 10 s and five refreshes (bounded: a lost connection
            # stops the refreshes, which the assertions below then show).
            started = time.time()
            while time.time() - started < 40 and (
                    time.time() - started < 10
                    or self.idp.stats()["token_requests"]
                    - requests_before < 5):
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(failures, [], "every update landed")
        # Conflicts are rare: each write is rebuilt on a fresh read until
        # it lands.
        self.assertLessEqual(sum(told_to_retry.values()),
                             sum(done.values()) // 20, told_to_retry)
        self.assertGreaterEqual(done["cp1"], 100, done)
        self.assertGreaterEqual(done["cp2"], 100, done)
        stats = self.idp.stats()
        self.assertEqual(stats["refresh_token_reuse"], 0, stats["requests"])
        presented = [r["refresh_token"] for r in stats["requests"]]
        self.assertEqual(len(presented), len(set(presented)), presented)
        self.assertTrue(all(r["client_ok"] for r in stats["requests"]))
        stored = self._stored(cred_id)
        self.assertFalse(stored.oauth.reauthorize,
                         stored.oauth.last_refresh_result)
        self.assertGreaterEqual(stats["token_requests"] - requests_before, 5,
                                "refreshes ran during the updates")
        # Every provider answer landed: the stored generation is one past
        # the number of token requests (a request in flight catches up).
        wait_until(lambda: self._stored(cred_id).oauth.generation
                   == self.idp.stats()["token_requests"] + 1,
                   what="one stored generation per token request")
        stored = self._stored(cred_id)
        self.assertFalse(stored.oauth.reauthorize)
        self.assertEqual(stored.oauth.last_refresh_result, "ok")
        self.assertIn(stored.label, last.values())
        # The sidecar still calls with a recent token.
        newest = self.idp.stats()["generation"]
        seen = self._generation_seen(sidecar)
        self.assertIsNotNone(seen, "the call succeeded")
        self.assertGreaterEqual(seen, newest - 1)


if __name__ == "__main__":
    unittest.main()
