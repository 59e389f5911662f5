"""A local OAuth 2.0 identity provider and an OAuth-protected vendor for the
e2e suite, on one loopback port, run inside the test process.

Why it exists: the refresh tests must see what really reached the provider
(how many token requests, with which refresh token) and what the vendor
really received (which access token), without trusting Latchkey's own
account. Nothing here leaves 127.0.0.1.

Endpoints:
  POST /token     RFC 6749 token endpoint: grant_type=refresh_token or
                  client_credentials; client authentication by HTTP Basic
                  or client_id/client_secret in the form body.
  *    /api/...   the vendor: 200 {"ok": true, "generation": n, "path": p}
                  when "Authorization: Bearer <t>" names a live access
                  token (issued here, not revoked, not expired), else 401
                  {"error": "invalid_token"}.

Test controls (plain Python, thread-safe):
  srv = OAuthServer(expires_in=3600, rotate=True); srv.start(); srv.url
  srv.seed(expires_in=..)  -> dict of credential fields (access_token,
                              refresh_token, expires_at, token_url,
                              client_id, client_secret, grant_type)
  srv.mode = "ok" | "fail" (503) | "invalid_grant" (400) | "slow"
  srv.delay = seconds the "slow" mode sleeps before answering
  srv.expires_in = lifetime of tokens issued from now on
  srv.rotate = True: every refresh issues a new refresh token and retires
               the old one; presenting a retired one is counted in
               stats()["refresh_token_reuse"] and refused (invalid_grant)
  srv.vendor_always_401 = True: the vendor refuses every token
  srv.revoke_current()     the vendor refuses the current access token
  srv.stats()              counters and the list of token requests
  srv.issued_tokens()      every access and refresh token issued so far
  srv.stop()
"""

import base64
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT_ID = "latchkey-test-client"
CLIENT_SECRET = "cs-" + "s3cr3t" * 4


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep the test output readable
        pass

    def _answer(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_POST(self):
        if self.path.split("?")[0] == "/token":
            self._token()
        else:
            self._vendor()

    def do_GET(self):
        self._vendor()

    def do_PUT(self):
        self._vendor()

    def _client_ok(self, form):
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                raw = base64.b64decode(auth[6:].strip()).decode()
            except ValueError:
                return False
            cid, _, csec = raw.partition(":")
            cid = urllib.parse.unquote_plus(cid)
            csec = urllib.parse.unquote_plus(csec)
        else:
            cid = form.get("client_id", "")
            csec = form.get("client_secret", "")
        return cid == CLIENT_ID and csec == CLIENT_SECRET

    def _token(self):
        srv = self.server.owner
        raw = self._body()
        form = {k: v[0] for k, v in
                urllib.parse.parse_qs(raw.decode(errors="replace")).items()}
        answer = srv._token_request(form, self._client_ok(form),
                                    self.headers.get("Content-Type") or "")
        status, obj = answer
        self._answer(status, obj)

    def _vendor(self):
        srv = self.server.owner
        self._body()
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else ""
        status, obj = srv._vendor_request(token, self.path)
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        self._answer(status, obj, headers)


class OAuthServer:
    """The provider and vendor; see the module docstring."""

    def __init__(self, expires_in=3600, rotate=True):
        self.expires_in = expires_in
        self.rotate = rotate
        self.mode = "ok"
        self.delay = 0.0
        self.vendor_always_401 = False
        self._lock = threading.Lock()
        self._generation = 0
        self._access = {}        # token -> (generation, expires_at, revoked)
        self._refresh = {}       # token -> "live" | "retired"
        self._token_requests = []
        self._vendor_requests = []
        self._reuse = 0
        self._httpd = None
        self._thread = None

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self):
        return self._httpd.server_address[1]

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def token_url(self):
        return self.url + "/token"

    # -- state -------------------------------------------------------------

    def _issue_access(self, expires_in):
        """Issues a new access token; caller holds the lock."""
        self._generation += 1
        token = "at-%d-%s" % (self._generation, secrets.token_hex(12))
        self._access[token] = [self._generation, time.time() + expires_in,
                               False]
        return token

    def _issue_refresh(self):
        token = "rt-%d-%s" % (self._generation, secrets.token_hex(12))
        self._refresh[token] = "live"
        return token

    def seed(self, expires_in=None, grant_type="authorization_code"):
        """Issues a first token pair, as an owner's consent would, and
        returns the oauth2 credential fields to create it with."""
        lifetime = self.expires_in if expires_in is None else expires_in
        with self._lock:
            access = self._issue_access(lifetime)
            fields = {
                "access_token": access,
                "expires_at": str(int(self._access[access][1])),
                "token_url": self.token_url,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "grant_type": grant_type,
            }
            if grant_type == "authorization_code":
                fields["refresh_token"] = self._issue_refresh()
        return fields

    def current_access_token(self):
        with self._lock:
            live = [t for t, v in self._access.items() if not v[2]]
            return max(live, key=lambda t: self._access[t][0]) if live else None

    def revoke_current(self):
        """Makes the vendor refuse the newest access token although it has
        not expired (a provider-side revocation)."""
        with self._lock:
            newest = max(self._access, key=lambda t: self._access[t][0])
            self._access[newest][2] = True

    def generation(self):
        with self._lock:
            return self._generation

    def issued_tokens(self):
        """Every access and refresh token issued so far (for tests that
        search files and logs for them)."""
        with self._lock:
            return list(self._access) + list(self._refresh)

    def stats(self):
        with self._lock:
            return {
                "token_requests": len(self._token_requests),
                "refresh_token_reuse": self._reuse,
                "vendor_requests": len(self._vendor_requests),
                "generation": self._generation,
                "requests": [dict(r) for r in self._token_requests],
                "vendor": [dict(r) for r in self._vendor_requests],
            }

    # -- handlers (called on server threads) -------------------------------

    def _token_request(self, form, client_ok, content_type):
        with self._lock:
            entry = {"at": time.time(), "grant_type": form.get("grant_type"),
                     "refresh_token": form.get("refresh_token"),
                     "mode": self.mode, "client_ok": client_ok,
                     "form_encoded": content_type.startswith(
                         "application/x-www-form-urlencoded")}
            self._token_requests.append(entry)
            mode, delay = self.mode, self.delay
        if mode == "slow":
            time.sleep(delay)
        if mode == "fail":
            return 503, {"error": "temporarily_unavailable"}
        if not client_ok:
            return 401, {"error": "invalid_client"}
        with self._lock:
            if mode == "invalid_grant":
                return 400, {"error": "invalid_grant",
                             "error_description": "the grant was revoked"}
            grant = form.get("grant_type")
            if grant == "refresh_token":
                presented = form.get("refresh_token", "")
                state = self._refresh.get(presented)
                if state == "retired":
                    self._reuse += 1
                    return 400, {"error": "invalid_grant",
                                 "error_description": "refresh token reused"}
                if state != "live":
                    return 400, {"error": "invalid_grant",
                                 "error_description": "unknown refresh token"}
                access = self._issue_access(self.expires_in)
                answer = {"access_token": access, "token_type": "Bearer",
                          "expires_in": self.expires_in}
                if self.rotate:
                    self._refresh[presented] = "retired"
                    answer["refresh_token"] = self._issue_refresh()
                return 200, answer
            if grant == "client_credentials":
                access = self._issue_access(self.expires_in)
                return 200, {"access_token": access, "token_type": "bearer",
                             "expires_in": self.expires_in}
            return 400, {"error": "unsupported_grant_type"}

    def _vendor_request(self, token, path):
        with self._lock:
            info = self._access.get(token)
            self._vendor_requests.append(
                {"at": time.time(), "path": path,
                 "generation": info[0] if info else None})
            live = (info is not None and not info[2] and info[1] > time.time()
                    and not self.vendor_always_401)
            if not live:
                return 401, {"error": "invalid_token"}
            return 200, {"ok": True, "generation": info[0],
                         "path": path.split("?")[0]}


def oauth_tool(tool_id, server, type_id="oauth-test"):
    """A tool definition (JSON-ready dict) for the vendor side of server,
    with an inline oauth2 credential type using the default injection."""
    return {
        "id": tool_id,
        "description": "OAuth-protected test vendor",
        "base_url": server.url,
        "credential_type": {"id": type_id, "kind": "oauth2",
                            "description": "test identity provider"},
        "operations": [
            {"name": "whoami", "method": "GET", "path": "/api/whoami",
             "description": "which token arrived", "params": []},
        ],
    }
