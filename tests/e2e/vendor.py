"""A second real vendor for the e2e suite: a small threaded HTTP server on a
loopback port, run inside the test process.

nginx (the main vendor) echoes raw values; this one does what nginx cannot:
echo the received secret in every encoding the sidecar must scrub, sleep for
a chosen time, answer with a body of a chosen size, and record every request
it received so a test can see what really arrived without trusting what the
sidecar passed back.
"""

import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def encodings(value):
    """Every form of `value` the sidecar's scrubber must recognise."""
    raw = value.encode()
    return {
        "raw": value,
        "b64": base64.b64encode(raw).decode(),
        "b64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "pct": urllib.parse.quote(value, safe=""),
        "json": json.dumps(value)[1:-1],
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep the test output readable
        pass

    def _answer(self, status, body, content_type="application/json",
                headers=None):
        if isinstance(body, str):
            body = body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sidecar gave up (deadline): nothing to tell it

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        entry = {
            "method": self.command,
            "path": url.path,
            "raw_path": self.path,
            "query": urllib.parse.parse_qs(url.query, keep_blank_values=True),
            "raw_query": url.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_list": [(k.lower(), v) for k, v in self.headers.items()],
            "body": body,
        }
        self.server.vendor.add(entry)
        return entry, url

    def _secret_from(self, entry):
        """The credential value the sidecar injected, by where it was put."""
        source = entry["query"].get("from", ["x-api-key"])[0]
        if source == "basic-password":
            auth = entry["headers"].get("authorization", "")
            decoded = base64.b64decode(auth.split(" ", 1)[1]).decode()
            return decoded.split(":", 1)[1]
        if source == "basic-user":
            auth = entry["headers"].get("authorization", "")
            decoded = base64.b64decode(auth.split(" ", 1)[1]).decode()
            return decoded.split(":", 1)[0]
        return entry["headers"].get(source, "")

    def _serve(self):
        entry, url = self._record()
        parts = url.path.strip("/").split("/")
        query = entry["query"]
        if parts[0] == "enc" and len(parts) == 2:
            # /enc/<kind>?from=<header>|basic-user|basic-password: the secret
            # in one encoding, in the body and in a response header.
            forms = encodings(self._secret_from(entry))
            kind = parts[1]
            if kind not in forms:
                self._answer(404, '{"error":"unknown encoding"}')
                return
            body = '{"kind":"%s","echo":"%s"}' % (kind, forms[kind])
            hdr = forms[kind] if kind != "json" else forms["raw"]
            self._answer(200, body, headers={"X-Echo": hdr})
        elif parts[0] == "sleep":
            ms = int(query.get("ms", ["1000"])[0])
            time.sleep(ms / 1000.0)
            self._answer(200, '{"slept_ms":%d}' % ms)
        elif parts[0] == "big":
            size = int(query.get("bytes", ["0"])[0])
            self._answer(200, b"x" * size, content_type="text/plain")
        elif parts[0] == "status":
            code = int(query.get("code", ["200"])[0])
            self._answer(code, '{"status":%d}' % code)
        else:
            self._answer(200, json.dumps({"path": url.path,
                                          "query": url.query}))

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_PATCH = _serve
    do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True


class Vendor:
    """A recording HTTP vendor on 127.0.0.1; start() then base_url."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = []
        self._server = None
        self._thread = None

    def start(self):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.vendor = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def add(self, entry):
        with self._lock:
            self._requests.append(entry)

    def requests(self, path_prefix=""):
        """Every request received so far whose path starts with the prefix."""
        with self._lock:
            return [r for r in self._requests
                    if r["path"].startswith(path_prefix)]

    def clear(self):
        with self._lock:
            self._requests.clear()

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
