"""Scrubbing: whatever encoding a vendor echoes the secret in (raw, base64,
base64url, percent-encoded, JSON-escaped, base64 of user:pass), in the body
or in a header, the agent gets "[REDACTED]" instead and redacted=true; an
answer that echoes nothing is passed through untouched."""

import json

import harness


class ScrubTest(harness.StackTestCase):

    def _bind_api_key(self, secret):
        self.credential("api-key", {"api_key": secret},
                        bind_tool="rec-apikey")

    def _assert_scrubbed(self, tool, kind, secret, source="x-api-key"):
        resp = self.lk.call("main", tool, "enc", {"kind": kind,
                                                  "from": source})
        got = self.lk.vendor.requests("/enc/")[-1]
        if source == "x-api-key":
            self.assertEqual(got["headers"]["x-api-key"], secret)
        form = harness.vendor_mod.encodings(secret)[kind]
        body = resp.result.body
        self.assertEqual(resp.result.http_status, 200)
        self.assertTrue(resp.result.redacted)
        self.assertNotIn(form.encode(), body)
        echoed = json.loads(body)
        self.assertEqual(echoed["kind"], kind)
        self.assertIn("[REDACTED]", echoed["echo"])
        self.assertIn("[REDACTED]", harness.header(resp.result, "x-echo"))
        self.assertNoSecret(harness.whole_response(resp), secret)
        return resp

    def test_raw_echo_is_redacted_in_body_and_header(self):
        secret = harness.make_secret("raw")
        self._bind_api_key(secret)
        resp = self._assert_scrubbed("rec-apikey", "raw", secret)
        self.assertEqual(json.loads(resp.result.body)["echo"], "[REDACTED]")
        self.assertEqual(harness.header(resp.result, "x-echo"), "[REDACTED]")

    def test_base64_echo_is_redacted(self):
        secret = harness.make_secret("b64")
        self._bind_api_key(secret)
        self._assert_scrubbed("rec-apikey", "b64", secret)

    def test_base64url_echo_is_redacted(self):
        secret = harness.make_secret("b6u")
        self._bind_api_key(secret)
        self._assert_scrubbed("rec-apikey", "b64url", secret)

    def test_percent_encoded_echo_is_redacted(self):
        secret = harness.make_secret("pct")
        self._bind_api_key(secret)
        self._assert_scrubbed("rec-apikey", "pct", secret)

    def test_json_escaped_echo_is_redacted(self):
        secret = harness.make_json_secret("jsn")
        self._bind_api_key(secret)
        resp = self._assert_scrubbed("rec-apikey", "json", secret)
        self.assertEqual(json.loads(resp.result.body)["echo"], "[REDACTED]")

    def test_basic_password_echo_is_redacted_in_every_encoding(self):
        password = harness.make_secret("bpw")
        self.credential("basic-login", {"user": "robot",
                                        "password": password},
                        bind_tool="rec-basic")
        for kind in ("raw", "b64", "b64url", "pct"):
            with self.subTest(kind=kind):
                self._assert_scrubbed("rec-basic", kind, password,
                                      source="basic-password")

    def test_basic_user_colon_password_base64_is_redacted(self):
        password = harness.make_secret("bup")
        self.credential("basic-login", {"user": "robot",
                                        "password": password},
                        bind_tool="echo-basic")
        resp = self.lk.call("main", "echo-basic", "get", {"item": "b"})
        auth = self.lk.nginx.arrivals("/echo/")[-1]["authorization"]
        self.assertTrue(auth.startswith("Basic "))
        whole = harness.whole_response(resp)
        self.assertNotIn(auth[len("Basic "):].encode(), whole)
        self.assertEqual(json.loads(resp.result.body)["authorization"],
                         "Basic [REDACTED]")
        self.assertEqual(harness.header(resp.result, "x-echo-authorization"),
                         "Basic [REDACTED]")
        self.assertTrue(resp.result.redacted)

    def test_secret_echoed_in_a_response_header_is_redacted(self):
        secret = harness.make_secret("rh")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer")
        resp = self.lk.call("main", "echo-bearer", "get", {"item": "h"})
        self.assertEqual(harness.header(resp.result, "x-echo-authorization"),
                         "Bearer [REDACTED]")
        self.assertTrue(resp.result.redacted)
        for name, value in resp.result.headers.items():
            self.assertNoSecret(name + ": " + value, secret, "header")

    def test_answer_that_echoes_no_secret_is_untouched_and_not_redacted(self):
        secret = harness.make_secret("qt")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer")
        resp = self.lk.call("main", "echo-bearer", "quiet")
        self.assertEqual(resp.result.http_status, 200)
        self.assertEqual(json.loads(resp.result.body), {"ok": True})
        self.assertFalse(resp.result.redacted)

    def test_text_around_the_secret_is_kept(self):
        secret = harness.make_secret("ctx")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer")
        resp = self.lk.call("main", "echo-bearer", "get",
                            {"item": "ctx", "q": "keepme"})
        body = json.loads(resp.result.body)
        self.assertEqual(body["uri"], "/echo/ctx?q=keepme")
        self.assertEqual(body["query"], "q=keepme")
        self.assertEqual(body["authorization"], "Bearer [REDACTED]")


if __name__ == "__main__":
    harness.main()
