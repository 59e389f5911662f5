"""OAuth 2.0 credentials on a standalone latchkeyd (no control plane: the
sidecar is its own, DESIGN.md §5), end to end: a real latchkeyd with its
own RocksDB and Admin listener, against the loopback identity provider
and bearer-checking vendor of tests/e2e/oauth_server.py.

What is proven, from the provider's and the vendor's own counters (not
from what Latchkey says about itself):
- a token near expiry is refreshed once, before it expires, and calls then
  inject the new token;
- rotated refresh tokens are never presented twice over many cycles;
- with the provider down past expiry the sidecar answers
  missing_credential with the re-authorise hint and setup_url and sends
  nothing to the vendor; once the provider is back, calls succeed again
  without anyone acting;
- a vendor 401 causes exactly one token request and one retry (eight
  calls refused together too), never a loop; a provider that refuses the
  grant turns the call into missing_credential, asks nothing more, and an
  owner's update brings the connection back;
- an owner's re-authorisation made while the provider is answering wins;
  a label change made then is kept under the new tokens;
- a restart (SIGTERM, or kill -9) keeps the refreshed tokens: nothing is
  asked again and the rotated refresh token is the one used next;
- no token and no client secret appears in latchkeyd's stderr or in any
  file of its data dir, at any point.

Every wait is a bounded poll for the state the test then asserts.
"""

import json
import os
import threading
import time
import unittest
import urllib.request

import grpc

import harness
from latchkey.v1 import admin_pb2
from oauth_server import CLIENT_SECRET, OAuthServer, oauth_tool

TOOL = "idp-api"
TYPE = "idp-oauth"
BUDGET = "main"
MARGIN_S = 4
SETUP_URL = harness.SETUP_URL_TEMPLATE.format(tool=TOOL, budget=BUDGET,
                                              type=TYPE)


def wait_until(fn, timeout=30.0, what="the condition", interval=0.1):
    """Polls fn until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


class OAuthStandaloneTest(harness.E2EAssertions, unittest.TestCase):

    def setUp(self):
        self.idp = OAuthServer(expires_in=3600, rotate=True).start()
        self.addCleanup(self.idp.stop)
        self.metrics_port = harness.free_port()
        self.lk = harness.Stack(self.id(), extra_args=[
            "--oauth-refresh-margin", str(MARGIN_S),
            "--oauth-retry-max", "1",
            "--allow-insecure-token-urls",
            "--metrics-listen", "127.0.0.1:%d" % self.metrics_port])
        self.addCleanup(self._close)
        self.lk.start()
        self.lk.register_tool(oauth_tool(TOOL, self.idp, TYPE))
        self.lk.create_budget(BUDGET)

    def _close(self):
        problem = self.lk.close()
        if problem:
            raise AssertionError(problem)

    # -- helpers -----------------------------------------------------------

    def connect(self, expires_in):
        """Creates and binds an oauth2 credential with a first token pair
        from the provider; returns (credential id, fields)."""
        fields = self.idp.seed(expires_in=expires_in)
        cred = self.lk.create_credential(TYPE, fields, label="oauth")
        self.assertEqual(cred.oauth.generation, 1)
        self.lk.bind(BUDGET, cred.id, tool=TOOL)
        return cred.id, fields

    def whoami(self, timeout=15):
        """One call: ("result", status, body) or ("missing_credential",
        MissingCredential)."""
        resp = self.lk.call(BUDGET, TOOL, "whoami", {}, timeout=timeout)
        kind = resp.WhichOneof("outcome")
        if kind == "missing_credential":
            return kind, resp.missing_credential
        return kind, resp.result.http_status, json.loads(
            resp.result.body or b"{}")

    def generation_seen(self):
        """The provider generation of the token the vendor saw on one
        call, or None when the call did not succeed."""
        out = self.whoami()
        if out[0] == "result" and out[1] == 200:
            return out[2]["generation"]
        return None

    def stored(self, cred_id):
        return self.lk.admin("GetCredential", admin_pb2.GetRequest(id=cred_id))

    def events(self, name):
        return [json.loads(line) for line in self.lk.log_lines()
                if '"event":"%s"' % name in line]

    def metric(self, sample):
        with urllib.request.urlopen(
                "http://127.0.0.1:%d/metrics" % self.metrics_port,
                timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split(" ")[-1])
        return None

    def assertNoSecretAnywhere(self):
        """No token the provider ever issued, and not the client secret,
        in latchkeyd's stderr or in any file under its data dir."""
        secrets_ = self.idp.issued_tokens() + [CLIENT_SECRET]
        self.assertGreater(len(secrets_), 2)
        paths = [self.lk.stderr_path]
        for root, _, files in os.walk(self.lk.data_dir):
            paths += [os.path.join(root, f) for f in files]
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            for s in secrets_:
                self.assertNoSecret(data, s, os.path.basename(path))

    # -- tests -------------------------------------------------------------

    def test_token_near_expiry_is_refreshed_once_before_it_expires(self):
        cred_id, fields = self.connect(expires_in=MARGIN_S + 5)
        expires_at = int(fields["expires_at"])
        self.assertEqual(self.generation_seen(), 1)
        wait_until(lambda: self.idp.stats()["token_requests"] >= 1,
                   timeout=MARGIN_S + 15, what="the refresh before expiry")
        stats = self.idp.stats()
        (req,) = stats["requests"]
        self.assertLess(req["at"], expires_at, "refreshed only after expiry")
        self.assertEqual(req["grant_type"], "refresh_token")
        self.assertEqual(req["refresh_token"], fields["refresh_token"])
        self.assertTrue(req["client_ok"] and req["form_encoded"])
        wait_until(lambda: self.generation_seen() == 2,
                   what="calls injecting the refreshed token")
        # Past the old token's expiry: still exactly one request, and the
        # new token goes on being injected.
        wait_until(lambda: time.time() > expires_at + 1, timeout=MARGIN_S + 15,
                   what="the old token's expiry")
        self.assertEqual(self.generation_seen(), 2)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        self.assertEqual({v["generation"] for v in self.idp.stats()["vendor"]},
                         {1, 2})
        cred = self.stored(cred_id)
        self.assertEqual(cred.oauth.generation, 2)
        self.assertEqual(cred.oauth.last_refresh_result, "ok")
        self.assertEqual(cred.oauth.failures, 0)
        self.assertEqual(cred.version, 2)
        exp = [f.value for f in cred.fields if f.name == "expires_at"]
        self.assertGreater(int(exp[0]), time.time() + 3000)
        (line,) = self.events("audit.oauth.refresh")
        self.assertEqual((line["credential_id"], line["result"],
                          line["sidecar"], line["generation"],
                          line["rotated"]),
                         (cred_id, "ok", harness.AGENT, 2, True))
        self.assertEqual(sorted(line["secret_hashes"]),
                         ["access_token", "refresh_token"])
        self.assertEqual(self.metric('latchkey_oauth_refreshes_total'
                                     '{result="ok"}'), 1)
        self.assertNoSecretAnywhere()

    def test_rotated_refresh_tokens_are_never_reused(self):
        # Tokens live 3 s, so the sidecar refreshes every ~1.5 s.
        self.idp.expires_in = 3
        self.connect(expires_in=3)
        wait_until(lambda: self.idp.stats()["token_requests"] >= 5,
                   timeout=30, what="five refresh cycles")
        stats = self.idp.stats()
        self.assertEqual(stats["refresh_token_reuse"], 0, stats["requests"])
        presented = [r["refresh_token"] for r in stats["requests"]]
        self.assertEqual(len(presented), len(set(presented)), presented)
        # Each token presented is the one the previous answer rotated in.
        for earlier, later in zip(presented, presented[1:]):
            self.assertLess(int(earlier.split("-")[1]),
                            int(later.split("-")[1]))
        wait_until(lambda: (self.generation_seen() or 0) >= 5,
                   what="calls injecting a rotated token")
        self.assertEqual(self.idp.stats()["refresh_token_reuse"], 0)
        self.assertNoSecretAnywhere()
        # Stopped (the store flushed and compacted): still nothing in plain.
        self.lk.stop_daemon()
        self.assertNoSecretAnywhere()

    def test_provider_down_past_expiry_then_back_recovers(self):
        self.idp.mode = "fail"
        cred_id, fields = self.connect(expires_in=MARGIN_S + 2)
        expires_at = int(fields["expires_at"])
        self.assertEqual(self.generation_seen(), 1)
        wait_until(lambda: time.time() > expires_at + 0.5,
                   timeout=MARGIN_S + 20, what="the token's expiry")
        vendor_before = self.idp.stats()["vendor_requests"]
        out = self.whoami()
        self.assertEqual(out[0], "missing_credential", out)
        missing = out[1]
        self.assertIn("must be re-authorised", missing.hint)
        self.assertIn("'%s'" % cred_id, missing.hint)
        self.assertIn("temporarily_unavailable", missing.hint)
        self.assertIn(SETUP_URL, missing.hint)
        self.assertIn("latchkeyctl credential update %s" % cred_id,
                      missing.hint)
        self.assertEqual(missing.setup_url, SETUP_URL)
        self.assertEqual(missing.tool_id, TOOL)
        self.assertEqual(self.idp.stats()["vendor_requests"], vendor_before,
                         "an expired token reached the vendor")
        for name in ("access_token", "refresh_token", "client_secret"):
            self.assertNoSecret(missing.SerializeToString(), fields[name],
                                "missing_credential")
        self.assertGreaterEqual(self.idp.stats()["token_requests"], 2,
                                "the sidecar kept retrying")
        cred = self.stored(cred_id)
        self.assertGreaterEqual(cred.oauth.failures, 1)
        self.assertFalse(cred.oauth.reauthorize)
        self.assertGreater(self.metric('latchkey_oauth_refreshes_total'
                                       '{result="failed"}'), 0)
        # The provider comes back: no one acts, and calls succeed again.
        self.idp.mode = "ok"
        wait_until(lambda: self.generation_seen() == 2,
                   what="calls succeeding after the provider came back")
        self.assertEqual(self.idp.stats()["refresh_token_reuse"], 0)
        self.assertEqual(self.stored(cred_id).oauth.failures, 0)
        self.assertNoSecretAnywhere()

    def test_vendor_401_makes_one_refresh_and_one_retry(self):
        self.connect(expires_in=3600)
        self.assertEqual(self.generation_seen(), 1)
        self.idp.revoke_current()
        before = self.idp.stats()
        self.assertEqual(self.generation_seen(), 2)
        after = self.idp.stats()
        self.assertEqual(after["token_requests"] - before["token_requests"], 1)
        self.assertEqual(after["vendor_requests"] - before["vendor_requests"],
                         2, "one refused call and one retry")
        audit = self.events("audit.tool_call")
        self.assertNotIn("oauth_retry", audit[-2])
        self.assertIs(audit[-1]["oauth_retry"], True)
        self.assertEqual(self.metric('latchkey_oauth_refresh_requests_total'
                                     '{result="ok"}'), 1)
        self.assertEqual(self.metric("latchkey_oauth_retries_total"), 1)
        # The new token stays: the next call sends it at once.
        self.assertEqual(self.generation_seen(), 2)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        # A vendor that refuses every token: one refresh, one retry, and the
        # 401 comes back; no loop.
        self.idp.vendor_always_401 = True
        before = self.idp.stats()
        out = self.whoami()
        self.assertEqual(out[:2], ("result", 401))
        self.assertEqual(out[2], {"error": "invalid_token"})
        after = self.idp.stats()
        self.assertEqual(after["token_requests"] - before["token_requests"], 1)
        self.assertEqual(after["vendor_requests"] - before["vendor_requests"],
                         2)
        time.sleep(1.0)  # nothing more happens afterwards
        self.assertEqual(self.idp.stats()["vendor_requests"],
                         after["vendor_requests"])
        self.assertEqual(self.idp.stats()["token_requests"],
                         after["token_requests"])
        self.assertEqual(self.idp.stats()["refresh_token_reuse"], 0)

    def test_eight_calls_refused_together_make_one_refresh(self):
        self.connect(expires_in=3600)
        self.idp.revoke_current()
        self.idp.mode = "slow"  # every refusal arrives while it asks
        self.idp.delay = 1.0
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
        for out in results:
            self.assertEqual(out[:2], ("result", 200), out)
            self.assertEqual(out[2]["generation"], 2)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        gens = [v["generation"] for v in self.idp.stats()["vendor"]]
        self.assertEqual((gens.count(1), gens.count(2)), (8, 8), gens)

    def test_refused_grant_answers_reauthorise_until_the_owner_acts(self):
        cred_id, fields = self.connect(expires_in=3600)
        self.idp.revoke_current()
        self.idp.mode = "invalid_grant"
        out = self.whoami()
        self.assertEqual(out[0], "missing_credential", out)
        hint = out[1].hint
        self.assertIn("the vendor refused its access token", hint)
        self.assertIn("the identity provider refused the refresh token", hint)
        self.assertIn(SETUP_URL, hint)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        self.assertEqual(self.idp.stats()["vendor_requests"], 1,
                         "no retry without a new token")
        self.assertTrue(self.stored(cred_id).oauth.reauthorize)
        self.assertEqual(self.metric('latchkey_oauth_refreshes_total'
                                     '{result="reauthorize"}'), 1)
        # Asked again: the refused token once more, but nothing is asked of
        # the provider until the owner acts.
        out = self.whoami()
        self.assertEqual(out[0], "missing_credential", out)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        # The owner re-authorises: calls succeed again.
        self.idp.mode = "ok"
        fresh = self.idp.seed()
        self.lk.admin("UpdateCredential", admin_pb2.UpdateCredentialRequest(
            id=cred_id, fields={k: fresh[k] for k in (
                "access_token", "refresh_token", "expires_at")}))
        self.assertEqual(self.generation_seen(), 2)
        self.assertFalse(self.stored(cred_id).oauth.reauthorize)

    def test_owner_update_during_a_refresh_wins(self):
        self.idp.mode = "slow"
        self.idp.delay = 3.0
        # Due at once (it expires within the margin): the provider is asked
        # and takes 3 s to answer.
        cred_id, _ = self.connect(expires_in=MARGIN_S - 2)
        wait_until(lambda: self.idp.stats()["token_requests"] == 1,
                   what="the refresh request in flight")
        owner = self.idp.seed()  # generation 2: the owner re-authorised
        self.lk.admin("UpdateCredential", admin_pb2.UpdateCredentialRequest(
            id=cred_id, fields={k: owner[k] for k in (
                "access_token", "refresh_token", "expires_at")}))
        (line,) = wait_until(
            lambda: [e for e in self.events("audit.oauth.refresh")
                     if e["result"] == "discarded"],
            what="the provider's late answer discarded")
        self.assertIn("owner re-authorised", line["reason"])
        self.assertEqual(self.generation_seen(), 2,
                         "the owner's token, not the late refresh's")
        cred = self.stored(cred_id)
        self.assertEqual(cred.version, 2)
        self.assertEqual(cred.oauth.last_refresh_result,
                         "re-authorised by the owner")
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        self.assertEqual(self.metric('latchkey_oauth_refreshes_total'
                                     '{result="discarded"}'), 1)

    def test_label_update_during_a_refresh_keeps_the_new_tokens(self):
        self.idp.mode = "slow"
        self.idp.delay = 2.0
        cred_id, _ = self.connect(expires_in=MARGIN_S - 2)
        wait_until(lambda: self.idp.stats()["token_requests"] == 1,
                   what="the refresh request in flight")
        self.lk.admin("UpdateCredential", admin_pb2.UpdateCredentialRequest(
            id=cred_id, label="renamed while refreshing"))
        wait_until(lambda: self.stored(cred_id).oauth.generation == 2,
                   what="the refresh stored on top of the owner's update")
        cred = self.stored(cred_id)
        self.assertEqual(cred.label, "renamed while refreshing")
        self.assertEqual(cred.version, 3)
        self.assertEqual(cred.oauth.last_refresh_result, "ok")
        (line,) = self.events("audit.oauth.refresh")
        self.assertEqual(line["result"], "ok")
        self.idp.mode = "ok"
        self.assertEqual(self.generation_seen(), 2)
        # The rotated refresh token was kept: the next refresh presents it.
        self.idp.revoke_current()
        self.assertEqual(self.generation_seen(), 3)
        stats = self.idp.stats()
        self.assertEqual(stats["token_requests"], 2)
        self.assertEqual(stats["refresh_token_reuse"], 0, stats["requests"])

    def test_restart_keeps_the_refreshed_tokens(self):
        cred_id, fields = self.connect(expires_in=MARGIN_S + 2)
        wait_until(lambda: self.generation_seen() == 2, timeout=MARGIN_S + 15,
                   what="the refresh before expiry")
        (first,) = self.idp.stats()["requests"]
        # A clean stop and start: the refreshed token is served at once and
        # nothing is asked again (it lives an hour).
        self.lk.restart_daemon()
        self.assertEqual(self.generation_seen(), 2)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        # A crash right after a refresh: the committed record survives, and
        # the next refresh presents the refresh token rotated in before it.
        self.idp.revoke_current()
        self.assertEqual(self.generation_seen(), 3)
        self.lk.close_channels()
        self.lk.daemon.kill()
        self.lk.start_daemon()
        self.assertEqual(self.generation_seen(), 3)
        self.idp.revoke_current()
        self.assertEqual(self.generation_seen(), 4)
        stats = self.idp.stats()
        self.assertEqual(stats["token_requests"], 3)
        self.assertEqual(stats["refresh_token_reuse"], 0, stats["requests"])
        presented = [r["refresh_token"] for r in stats["requests"]]
        self.assertEqual(presented[0], fields["refresh_token"])
        self.assertEqual(presented[0], first["refresh_token"])
        self.assertEqual(len(set(presented)), 3)
        self.assertEqual(self.stored(cred_id).oauth.generation, 4)
        self.assertNoSecretAnywhere()


if __name__ == "__main__":
    unittest.main(verbosity=2)
