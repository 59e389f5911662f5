"""latchkeyctl and a standalone latchkeyd with an OAuth 2.0 credential type
(kind "oauth2"): a tool registered from JSON with its oauth2 type inline
gets every standard field and the default bearer rule, and its kind shows
in `type list`, `type show` and `tool show`; `credential create` with the
fields on stdin stores the connection, and `credential show` / `list`
(text and --json) tell the access token's expiry and the last refresh
result; an owner's new refresh token starts the next generation; invalid
fields are refused with the reason; a tool call injects
`Authorization: Bearer <access_token>` into a real nginx vendor and the
agent sees it redacted. No secret appears in any latchkeyctl output."""

import json
import os
import re
import time

import harness

AGENT = harness.AGENT
# A name that never resolves (RFC 2606 .invalid): a standalone latchkeyd
# refreshes its due oauth2 credentials itself, and no test may reach a real
# identity provider.
TOKEN_URL = "https://oauth2.googleapis.invalid/token"
CLIENT_ID = "1234.apps.googleusercontent.com"
SCOPE = "https://www.googleapis.com/auth/drive.readonly"
STANDARD_FIELDS = ["access_token", "refresh_token", "expires_at", "token_url",
                   "client_id", "client_secret", "grant_type", "scope"]
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def drive_tool(base_url):
    """The tool as an owner writes it: an oauth2 type inline that declares
    only the scope (for its description and pattern) and no inject rule."""
    return {
        "id": "gdrive",
        "description": "Google Drive, played by nginx's echo",
        "base_url": base_url,
        "credential_type": {
            "id": "google",
            "kind": "oauth2",
            "description": "A Google account connected with OAuth 2.0",
            "fields": [{"name": "scope", "secret": False,
                        "pattern": "^[!-~ ]{1,512}$",
                        "description": "Drive scopes granted"}],
        },
        "operations": harness.echo_ops(),
    }


class OAuthAdminTest(harness.StackTestCase):
    with_catalog = False

    def setUp(self):
        super().setUp()
        self.access = "ya29." + os.urandom(20).hex()
        self.refresh = "1//" + os.urandom(20).hex()
        self.client_secret = "GOCSPX-" + os.urandom(12).hex()
        self.secrets = [self.access, self.refresh, self.client_secret]
        self.tool_file = os.path.join(self.lk.dir, "gdrive.json")
        with open(self.tool_file, "w") as f:
            json.dump(drive_tool(self.lk.nginx.base_url), f, indent=2)

    def run_ctl(self, *args, stdin=None):
        out = self.lk.ctl(*args, stdin=stdin)
        for s in self.secrets:
            self.assertNoSecret(out.stdout + out.stderr, s,
                                "latchkeyctl %s output" % " ".join(args))
        return out

    def ok(self, *args, stdin=None):
        out = self.run_ctl(*args, stdin=stdin)
        self.assertEqual(out.returncode, 0,
                         "latchkeyctl %s failed (%d):\n%s%s"
                         % (" ".join(args), out.returncode, out.stdout,
                            out.stderr))
        return out.stdout

    def refused(self, stdin, want):
        out = self.run_ctl("credential", "create", "--type", "google",
                           "--label", "bad", stdin=json.dumps(stdin))
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("latchkeyctl: INVALID_ARGUMENT: " + want, out.stderr)

    def connection(self, expires_at):
        """The stdin of `credential create --type google --label me`."""
        return {
            "access_token": self.access,
            "refresh_token": self.refresh,
            "expires_at": str(expires_at),
            "token_url": TOKEN_URL,
            "client_id": CLIENT_ID,
            "client_secret": self.client_secret,
            "scope": SCOPE,
        }

    def create(self, stdin, label="me"):
        out = self.ok("credential", "create", "--type", "google", "--label",
                      label, stdin=json.dumps(stdin))
        cred_id = harness.ctl_output_id(out)
        self.assertTrue(cred_id.startswith("cred_"), out)
        return cred_id

    def show_json(self, cred_id):
        return json.loads(self.ok("--json", "credential", "show", cred_id))

    def test_oauth2_type_gets_standard_fields_and_shows_its_kind(self):
        self.assertIn("registered tool gdrive with credential type google",
                      self.ok("tool", "register", self.tool_file))
        doc = json.loads(self.ok("--json", "type", "show", "google"))
        self.assertEqual(doc["kind"], "oauth2")
        self.assertEqual([f["name"] for f in doc["fields"]], STANDARD_FIELDS)
        secret = {f["name"]: f["secret"] for f in doc["fields"]}
        self.assertEqual([n for n in STANDARD_FIELDS if secret[n]],
                         ["access_token", "refresh_token", "client_secret"])
        scope = doc["fields"][7]
        self.assertEqual(scope["description"], "Drive scopes granted")
        self.assertEqual(scope["pattern"], "^[!-~ ]{1,512}$")
        self.assertEqual(doc["inject"], [{
            "in": "header", "name": "Authorization",
            "value": "Bearer {access_token}", "username": "",
            "password": ""}])
        listing = self.ok("type", "list")
        row = [l for l in listing.splitlines() if l.startswith("google ")]
        self.assertEqual(len(row), 1, listing)
        self.assertRegex(row[0], r"^google\s+oauth2\s+access_token\(secret\),"
                                 r"refresh_token\(secret\),expires_at,")
        self.assertIn("header:Authorization", row[0])
        shown = self.ok("type", "show", "google")
        self.assertIn(
            "  kind:        oauth2 (the control plane refreshes access_token)",
            shown)
        self.assertIn("    - header  Authorization = Bearer {access_token}",
                      shown)
        self.assertIn("  credential_type: google (kind oauth2)\n",
                      self.ok("tool", "show", "gdrive"))
        # a standard field with the wrong secret flag is refused by name
        bad = {"id": "google2", "kind": "oauth2",
               "fields": [{"name": "access_token", "secret": False}]}
        bad_file = os.path.join(self.lk.dir, "bad.json")
        with open(bad_file, "w") as f:
            json.dump(bad, f)
        out = self.run_ctl("type", "register", bad_file)
        self.assertEqual(out.returncode, 1)
        self.assertIn(
            "latchkeyctl: INVALID_ARGUMENT: credential type 'google2': oauth2 "
            "field 'access_token' must have \"secret\": true", out.stderr)

    def test_credential_show_and_list_tell_expiry_and_refresh_state(self):
        self.ok("tool", "register", self.tool_file)
        expires = int(time.time()) + 600
        cred_id = self.create(self.connection(expires))

        shown = self.ok("credential", "show", cred_id)
        self.assertIn("  type:       google\n", shown)
        self.assertIn("  label:      me\n", shown)
        self.assertIn("    - access_token (secret) = \u2022\u2022\u2022\u2022"
                      + self.access[-4:] + "\n", shown)
        self.assertIn("    - grant_type = authorization_code\n", shown)
        self.assertIn("    - expires_at = %d\n" % expires, shown)
        self.assertIn("    - token_url = " + TOKEN_URL + "\n", shown)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        self.assertRegex(shown, r"\n  oauth:\n    access token expires: "
                         + re.escape(when) + r" \(in (9m\d+s|10m)\)\n")
        self.assertIn("    last refresh:         none yet\n", shown)
        self.assertIn("    generation:           1\n", shown)
        self.assertNotIn("re-authorisation needed", shown)

        doc = self.show_json(cred_id)
        oauth = doc["oauth"]
        self.assertEqual(oauth["generation"], 1)
        self.assertEqual(oauth["failures"], 0)
        self.assertFalse(oauth["reauthorize"])
        self.assertEqual(oauth["access_token_expires_at"], when)
        self.assertTrue(580 <= oauth["access_token_expires_in_s"] <= 600,
                        oauth)
        self.assertFalse(oauth["access_token_expired"])
        self.assertEqual(oauth["last_refresh"], "none yet")
        self.assertNotIn("hint", oauth)
        for f in doc["fields"]:
            if f["secret"]:
                self.assertEqual(f["value"], "")
                self.assertNotIn("sealed", f)

        listing = self.ok("credential", "list")
        self.assertIn("OAUTH", listing.splitlines()[0])
        self.assertRegex(listing, cred_id + r"\s+google\s+me\s+expires in "
                         r"(9m\d+s|10m)\s")
        listed = json.loads(self.ok("--json", "credential", "list"))
        self.assertEqual(listed["credentials"][0]["oauth"]["generation"], 1)
        self.assertEqual(
            listed["credentials"][0]["oauth"]["access_token_expires_at"], when)

        # a label change keeps the refresh record; a new refresh token (the
        # owner re-authorised) starts the next generation
        self.ok("credential", "update", cred_id, "--label", "me, renamed",
                stdin="")
        self.assertEqual(self.show_json(cred_id)["oauth"]["generation"], 1)
        self.refresh = "1//" + os.urandom(20).hex()
        self.secrets.append(self.refresh)
        self.assertIn("updated credential %s (version 3)" % cred_id,
                      self.ok("credential", "update", cred_id,
                              stdin=json.dumps(
                                  {"refresh_token": self.refresh})))
        shown = self.ok("credential", "show", cred_id)
        self.assertIn("    last refresh:         re-authorised by the owner\n",
                      shown)
        self.assertIn("    generation:           2\n", shown)
        self.assertIn("  label:      me, renamed\n", shown)

    def test_expired_and_unknown_expiry_read_as_such(self):
        self.ok("tool", "register", self.tool_file)
        expired = self.create(self.connection(int(time.time()) - 130),
                              label="old")
        self.assertRegex(self.ok("credential", "show", expired),
                         r"access token expires: " + ISO
                         + r" \(expired 2m(\d+s)? ago\)\n")
        oauth = self.show_json(expired)["oauth"]
        self.assertTrue(oauth["access_token_expired"])
        self.assertLess(oauth["access_token_expires_in_s"], -120)
        # client_credentials without a token yet: expires_at "0"
        robot = self.create({"grant_type": "client_credentials",
                             "token_url": TOKEN_URL, "client_id": "robot",
                             "client_secret": self.client_secret},
                            label="robot")
        shown = self.ok("credential", "show", robot)
        self.assertIn("    - expires_at = 0\n", shown)
        self.assertIn("    access token expires: unknown (refreshed at once)\n",
                      shown)
        self.assertNotIn("refresh_token", shown)
        oauth = self.show_json(robot)["oauth"]
        self.assertIsNone(oauth["access_token_expires_at"])
        self.assertTrue(oauth["access_token_expired"])

    def test_invalid_connection_fields_are_refused_with_the_reason(self):
        self.ok("tool", "register", self.tool_file)
        good = self.connection(int(time.time()) + 600)
        self.refused({"access_token": self.access},
                     "missing fields of oauth2 credential type 'google' "
                     "(grant_type authorization_code): refresh_token, "
                     "token_url, client_id; provide them")
        self.refused(dict(good, token_url="ftp://idp.example/token"),
                     "field 'token_url' must start with https:// (or "
                     "http://)")
        self.refused(dict(good, grant_type="password"),
                     "field 'grant_type' must be authorization_code or "
                     "client_credentials")
        self.refused(dict(good, expires_at="tomorrow"),
                     "field expires_at: expected unix seconds, digits only")
        listing = json.loads(self.ok("--json", "credential", "list"))
        self.assertEqual(listing["credentials"], [])

    def test_call_injects_the_access_token_as_bearer(self):
        self.ok("tool", "register", self.tool_file)
        cred_id = self.create(self.connection(int(time.time()) + 600))
        self.ok("budget", "create", "main", "--agent", AGENT)
        self.ok("bind", "main", "--tool", "gdrive", "--credential", cred_id)
        resp = self.lk.call("main", "gdrive", "get", {"item": "files"})
        arrived = self.lk.nginx.arrivals("/echo/")
        self.assertEqual(arrived[-1]["authorization"], "Bearer " + self.access)
        body = json.loads(resp.result.body)
        self.assertEqual(body["authorization"], "Bearer [REDACTED]")
        self.assertTrue(resp.result.redacted)
        for s in self.secrets:
            self.assertNoSecret(harness.whole_response(resp), s)
        # and through latchkeyctl call, as an agent would
        out = self.lk.ctl("call", "--sidecar", self.lk.agent_addr,
                          "--budget", "main", "--tool", "gdrive", "--op",
                          "get", "--args", '{"item":"files"}', admin=False)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Bearer [REDACTED]", out.stdout)
        for s in self.secrets:
            self.assertNoSecret(out.stdout + out.stderr, s, "latchkeyctl call")
        self.assertEqual(
            self.lk.nginx.arrivals("/echo/", expect=2)[-1]["authorization"],
            "Bearer " + self.access)


if __name__ == "__main__":
    harness.main()
