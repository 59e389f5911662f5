"""The control plane's side of OAuth 2.0 refresh, end to end: a real etcd
and real latchkey-cp processes (tests/e2e/cluster.py) against the loopback
identity provider of tests/e2e/oauth_server.py.

What is proven is what the provider itself counted and what etcd itself
holds, not what latchkey-cp says about itself:
- a credential expiring in 6 s with a 4 s margin is refreshed exactly once
  before it expires, and `latchkeyctl credential show` (Admin
  GetCredential) shows generation 2, "ok" and the new expiry;
- with two control planes on one etcd and tokens living 3 s, every expiry
  causes exactly one token request, over several rotations, and no
  refresh token is ever presented twice;
- a failing provider: failures counted in OAuthState and in
  latchkey_oauth_refreshes_total{result="failed"}, attempts backed off;
  once the provider is back the credential is refreshed with nobody
  acting;
- invalid_grant: reauthorize set, and no token request after it;
- Sync/Refresh: the node token is required, a credential outside the
  asking agent's scope is PERMISSION_DENIED, and a stale generation causes
  one refresh whose generation is answered.

The credential is created through Admin under an oauth2 type; until Admin
itself sets Credential.oauth on such credentials (the lib/admin side of
issue 8), the test adds OAuthState{generation: 1} to the stored record
through etcd's own API, as Admin will.
"""

import base64
import json
import os
import time
import unittest
import urllib.request

import grpc

import cluster
import harness
from cluster import wait_until
from latchkey.v1 import sync_pb2, sync_pb2_grpc, types_pb2
from oauth_server import OAuthServer

TYPE = "idp-oauth"
TOOL = "idp-api"
MARGIN_S = 4

OAUTH_FIELDS = [
    {"name": "access_token", "secret": True},
    {"name": "refresh_token", "secret": True},
    {"name": "expires_at"},
    {"name": "token_url"},
    {"name": "client_id"},
    {"name": "client_secret", "secret": True},
    {"name": "grant_type"},
]


def oauth_type():
    return {"id": TYPE, "kind": "oauth2", "description": "test provider",
            "fields": OAUTH_FIELDS,
            "inject": [{"in": "header", "name": "Authorization",
                        "value": "Bearer {access_token}"}]}


class OAuthRefreshTest(harness.E2EAssertions, unittest.TestCase):

    def start(self, control_planes=1, retry_max=1, metrics=False):
        self.idp = OAuthServer(expires_in=3600, rotate=True).start()
        self.addCleanup(self.idp.stop)
        self.c = cluster.Cluster(self.id(), control_planes=control_planes)
        self.metrics_ports = []
        for cp in self.c.cps:
            cp.extra_args = ["--oauth-refresh-margin", str(MARGIN_S),
                             "--oauth-retry-max", str(retry_max),
                             "--allow-insecure-token-urls"]
            if metrics:
                port = harness.free_port()
                self.metrics_ports.append(port)
                cp.extra_args += ["--metrics-listen", "127.0.0.1:%d" % port]
        self.addCleanup(self._close)
        self.c.start()
        self.cp1 = self.c.cps[0]
        self.cp1.register_type(oauth_type())
        self.cp1.register_tool({
            "id": TOOL, "description": "OAuth-protected test vendor",
            "base_url": self.idp.url, "credential_type": TYPE,
            "operations": [{"name": "whoami", "method": "GET",
                            "path": "/api/whoami", "description": "who"}]})

    def _close(self):
        problem = self.c.close()
        if problem:
            raise AssertionError(problem)

    # -- etcd --------------------------------------------------------------

    def stored(self, cred_id):
        """The credential record etcd holds."""
        value, _ = self.c.etcd.get(cluster.ETCD_PREFIX + "cred/" + cred_id)
        cred = types_pb2.Credential()
        cred.ParseFromString(value)
        return cred

    def etcd_put(self, key, value):
        """Puts raw bytes through etcd's own JSON gateway (binary-safe)."""
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(value).decode()})
        req = urllib.request.Request(self.c.etcd.url + "/v3/kv/put",
                                     data=body.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def create(self, expires_in, grant_type="authorization_code"):
        """An oauth2 credential from a fresh consent; returns its id and
        fields."""
        fields = self.idp.seed(expires_in=expires_in, grant_type=grant_type)
        cred = self.cp1.create_credential(TYPE, fields, label="oauth")
        stored = self.stored(cred.id)
        if not stored.HasField("oauth"):
            # What Admin does for oauth2 credentials once lib/admin knows
            # the kind: OAuthState starts at generation 1.
            stored.oauth.generation = 1
            self.etcd_put(cluster.ETCD_PREFIX + "cred/" + cred.id,
                          stored.SerializeToString())
        return cred.id, fields

    def claim_key(self, cred_id):
        # Beside the catalog prefix: "/latchkey/" -> "/latchkey.".
        return cluster.ETCD_PREFIX[:-1] + ".oauth-claim/" + cred_id

    def metric(self, port, name, labels):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                    timeout=5) as r:
            text = r.read().decode()
        want = name + ("{" + ",".join('%s="%s"' % kv for kv in labels) + "}"
                       if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    # -- tests -------------------------------------------------------------

    def test_refreshed_exactly_once_before_expiry(self):
        self.start()
        cred_id, fields = self.create(expires_in=6)
        old_expiry = int(fields["expires_at"])
        wait_until(lambda: self.idp.stats()["token_requests"] >= 1,
                   timeout=20, what="the refresh")
        wait_until(lambda: self.stored(cred_id).oauth.generation == 2,
                   what="generation 2 in etcd")
        self.assertLess(time.time(), old_expiry,
                        "refreshed before the token expired")
        shown = self.cp1.ctl("--json", "credential", "show", cred_id)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        doc = json.loads(shown.stdout)
        self.assertEqual(int(doc["oauth"]["generation"]), 2, doc)
        self.assertEqual(doc["oauth"]["last_refresh_result"], "ok")
        self.assertEqual(int(doc.get("version", 0)), 2)
        expiry = {f["name"]: f.get("value") for f in doc["fields"]}
        self.assertGreaterEqual(int(expiry["expires_at"]),
                                int(time.time()) + 3600 - 60)
        # The secret fields stay masked; the new token is nowhere in it.
        self.assertNotIn(self.idp.current_access_token(), shown.stdout)
        self.assertNotIn(fields["refresh_token"], shown.stdout)
        # Past the old expiry: still one request (the next is an hour off),
        # and the claim is gone.
        wait_until(lambda: time.time() > old_expiry + 1, timeout=20,
                   what="the old token's expiry")
        stats = self.idp.stats()
        self.assertEqual(stats["token_requests"], 1, stats["requests"])
        self.assertEqual(stats["requests"][0]["grant_type"], "refresh_token")
        self.assertEqual(stats["requests"][0]["refresh_token"],
                         fields["refresh_token"])
        self.assertTrue(stats["requests"][0]["client_ok"])
        self.assertTrue(stats["requests"][0]["form_encoded"])
        self.assertIsNone(self.c.etcd.get(self.claim_key(cred_id))[0])
        log = self.cp1.log()
        self.assertIn('"event":"audit.oauth.refresh"', log)
        self.assertNotIn(self.idp.current_access_token(), log)
        self.assertNotIn(fields["refresh_token"], log)

    def test_two_control_planes_one_request_per_expiry_no_reuse(self):
        self.start(control_planes=2)
        self.idp.expires_in = 3  # refreshed every 1.5 s from now on
        cred_id, _ = self.create(expires_in=3)
        wait_until(lambda: self.idp.stats()["token_requests"] >= 5,
                   timeout=40, what="five refresh cycles")
        # Stop both, so no request is in flight, then compare.
        for cp in self.c.cps:
            self.assertEqual(cp.stop(), 0)
        stats = self.idp.stats()
        gen = self.stored(cred_id).oauth.generation
        self.assertEqual(stats["token_requests"], gen - 1,
                         "one token request per generation")
        self.assertEqual(stats["refresh_token_reuse"], 0, stats["requests"])
        presented = [r["refresh_token"] for r in stats["requests"]]
        self.assertEqual(len(presented), len(set(presented)), presented)
        # Both control planes were live the whole time; each request's
        # audit line is on exactly one of them.
        audits = sum(cp.log().count('"result":"ok"') for cp in self.c.cps)
        self.assertEqual(audits, stats["token_requests"])

    def test_provider_failing_backs_off_then_recovers(self):
        self.start(retry_max=2, metrics=True)
        self.idp.mode = "fail"
        cred_id, _ = self.create(expires_in=0)
        wait_until(lambda: self.stored(cred_id).oauth.failures >= 3,
                   timeout=30, what="three failed attempts")
        stored = self.stored(cred_id)
        self.assertIn("503", stored.oauth.last_refresh_result)
        self.assertFalse(stored.oauth.reauthorize)
        self.assertEqual(stored.oauth.generation, 1)
        self.assertEqual(stored.oauth.next_attempt_at
                         - stored.oauth.last_refresh_at,
                         min(2000, 1000 * 2 ** (stored.oauth.failures - 1)))
        self.assertGreaterEqual(
            self.metric(self.metrics_ports[0],
                        "latchkey_oauth_refreshes_total",
                        [("result", "failed")]), 3)
        # Backed off: one request per failure, not a loop.
        self.assertLessEqual(self.idp.stats()["token_requests"],
                             stored.oauth.failures + 1)
        self.idp.mode = "ok"
        wait_until(lambda: self.stored(cred_id).oauth.generation == 2,
                   timeout=20, what="recovery once the provider is back")
        stored = self.stored(cred_id)
        self.assertEqual(stored.oauth.failures, 0)
        self.assertEqual(stored.oauth.last_refresh_result, "ok")
        self.assertEqual(self.idp.stats()["refresh_token_reuse"], 0)
        wait_until(lambda: self.metric(self.metrics_ports[0],
                                       "latchkey_oauth_refreshes_total",
                                       [("result", "ok")]) == 1,
                   what="the ok refresh counted")

    def test_invalid_grant_sets_reauthorize_and_stops(self):
        self.start(retry_max=1)
        self.idp.mode = "invalid_grant"
        cred_id, _ = self.create(expires_in=0)
        wait_until(lambda: self.stored(cred_id).oauth.reauthorize,
                   timeout=20, what="reauthorize")
        self.assertIn("invalid_grant",
                      self.stored(cred_id).oauth.last_refresh_result)
        self.idp.mode = "ok"
        time.sleep(3)  # three retry-max periods: nothing is asked again
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        self.assertEqual(self.stored(cred_id).oauth.generation, 1)

    def test_sync_refresh_rpc(self):
        self.start(metrics=True)
        cred_id, _ = self.create(expires_in=3600)
        self.cp1.create_budget("team", ["agent-x"])
        self.cp1.bind("team", cred_id, tool=TOOL)
        channel = grpc.insecure_channel(self.cp1.addr)
        self.addCleanup(channel.close)
        sync = sync_pb2_grpc.SyncStub(channel)
        node = (("authorization", "Bearer " + self.c.node_token),)

        def refresh(agent, generation, metadata=node):
            return sync.Refresh(sync_pb2.RefreshRequest(
                agent_id=agent, credential_id=cred_id, generation=generation),
                metadata=metadata, timeout=15)

        self.assertCode(grpc.StatusCode.UNAUTHENTICATED,
                        refresh, "agent-x", 1, metadata=(
                            ("authorization", "Bearer wrong"),))
        self.assertCode(grpc.StatusCode.PERMISSION_DENIED,
                        refresh, "agent-y", 1)
        self.assertEqual(self.idp.stats()["token_requests"], 0)
        # The vendor refused generation 1: one refresh, generation 2.
        self.assertEqual(refresh("agent-x", 1).generation, 2)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        self.assertEqual(self.stored(cred_id).oauth.generation, 2)
        # Asking about generation 1 again: answered at once.
        self.assertEqual(refresh("agent-x", 1).generation, 2)
        self.assertEqual(self.idp.stats()["token_requests"], 1)
        self.assertEqual(
            self.metric(self.metrics_ports[0],
                        "latchkey_oauth_refresh_requests_total", []), 2)
        # A refused grant: FAILED_PRECONDITION, and nothing asked after it.
        self.idp.mode = "invalid_grant"
        self.assertCode(grpc.StatusCode.FAILED_PRECONDITION,
                        refresh, "agent-x", 2)
        self.assertCode(grpc.StatusCode.FAILED_PRECONDITION,
                        refresh, "agent-x", 2)
        self.assertEqual(self.idp.stats()["token_requests"], 2)


if __name__ == "__main__":
    unittest.main()
