"""The e2e harness: whole processes over real sockets.

Each test gets its own stack in a fresh temp dir under $TEST_TMPDIR: a real
nginx on a free loopback port as the main vendor (tests/e2e/nginx.conf.template),
a second recording vendor in this process (vendor.py), and a real latchkeyd
in standalone mode (ToolCalls on a Unix socket, Admin on a loopback TCP
port with a 0600 admin token file). Tests talk to it with Python grpcio
stubs generated at build time and with the real latchkeyctl binary.

Everything started is stopped on the way out, failure or not: latchkeyd by
SIGTERM, and a latchkeyd that does not exit 0 then (a crash, a sanitizer
report, a hang) fails the test. latchkeyd's stderr is kept in a file so the
log-canary test can read every line it wrote.
"""

import base64
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import grpc
from google.protobuf import json_format

from latchkey.v1 import admin_pb2
from latchkey.v1 import admin_pb2_grpc
from latchkey.v1 import toolcalls_pb2
from latchkey.v1 import toolcalls_pb2_grpc
from latchkey.v1 import types_pb2

import vendor as vendor_mod

AGENT = "agent-e2e"
OTHER_AGENT = "agent-other"
SETUP_URL_TEMPLATE = "https://setup.latchkey.example/{tool}?budget={budget}&type={type}"
MAX_RESPONSE_BYTES = 1 << 20
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
NGINX = os.environ.get("NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"

StatusCode = grpc.StatusCode


def runfile(path):
    """Absolute path of a file in this test's runfiles (or the source tree)."""
    srcdir = os.environ.get("TEST_SRCDIR")
    workspace = os.environ.get("TEST_WORKSPACE", "latchkey")
    if srcdir:
        candidate = os.path.join(srcdir, workspace, path)
        if os.path.exists(candidate):
            return candidate
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    for base in (root, os.path.join(root, "bazel-bin")):
        candidate = os.path.join(base, path)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError("runfile not found: " + path)


def latchkeyd_path():
    return os.environ.get("LATCHKEYD") or runfile("sidecar/latchkeyd")


def latchkeyctl_path():
    return os.environ.get("LATCHKEYCTL") or runfile("clients/cli/latchkeyctl")


def free_port():
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_unix(path, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(path)
                return True
        except OSError:
            time.sleep(0.05)
    return False


def secret_forms(value):
    """The forms of a secret that must never reach the agent or the disk."""
    forms = vendor_mod.encodings(value)
    raw = value.encode()
    forms["b64_nopad"] = base64.b64encode(raw).decode().rstrip("=")
    forms["b64url_pad"] = base64.urlsafe_b64encode(raw).decode()
    forms["hex"] = raw.hex()
    return forms


def tool_request(tool):
    """RegisterToolRequest from a tool as a user writes it (DESIGN §3):
    credential_type is either an inline type object or a type id."""
    tool = dict(tool)
    ctype = tool.get("credential_type")
    req = admin_pb2.RegisterToolRequest()
    if isinstance(ctype, dict):
        json_format.ParseDict(ctype, req.credential_type)
        tool["credential_type"] = ctype["id"]
    json_format.ParseDict(tool, req.tool)
    return req


def credential_type(type_dict):
    return json_format.ParseDict(type_dict, types_pb2.CredentialType())


class Nginx:
    """A real nginx in the foreground, as the current user, all paths in
    its prefix dir."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.port = None
        self.proc = None

    def start(self):
        os.makedirs(self.prefix, exist_ok=True)
        with open(runfile("tests/e2e/nginx.conf.template")) as f:
            conf = f.read()
        user = ""
        if os.geteuid() == 0:
            # As root, nginx would drop its worker to "nobody", which could
            # not write the temp dirs: keep it as the current user.
            user = "user %s;" % pwd.getpwuid(os.getuid()).pw_name
        last_error = None
        for _ in range(5):
            self.port = free_port()
            text = (conf.replace("@PREFIX@", self.prefix)
                    .replace("@PORT@", str(self.port))
                    .replace("@USER@", user))
            conf_path = os.path.join(self.prefix, "nginx.conf")
            with open(conf_path, "w") as f:
                f.write(text)
            self.stderr = open(os.path.join(self.prefix, "nginx-stderr.log"),
                               "ab")
            self.proc = subprocess.Popen(
                [NGINX, "-p", self.prefix + "/", "-c", conf_path,
                 "-e", os.path.join(self.prefix, "nginx-error.log")],
                stdin=subprocess.DEVNULL, stdout=self.stderr,
                stderr=self.stderr)
            if wait_tcp(self.port, 15, self.proc):
                return self
            last_error = self._log_tail()
            self.stop()
        raise RuntimeError("nginx did not start: " + str(last_error))

    def _log_tail(self):
        path = os.path.join(self.prefix, "nginx-error.log")
        try:
            with open(path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def arrivals(self, uri_prefix="", expect=1, timeout=3.0):
        """What nginx received, from its JSON access log (written right after
        each answer, hence the short wait for `expect` entries)."""
        path = os.path.join(self.prefix, "nginx-access.log")
        deadline = time.monotonic() + timeout
        while True:
            entries = []
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    for line in f:
                        line = line.strip()
                        if line:
                            entry = json.loads(line)
                            if entry["uri"].startswith(uri_prefix):
                                entries.append(entry)
            if len(entries) >= expect or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "stderr", None):
            self.stderr.close()
            self.stderr = None


class Daemon:
    """One latchkeyd process (or another daemon of ours that logs a JSON
    "ready" line: binary names it); its stderr goes to a file that persists
    across restarts (appended), so every line it ever wrote can be checked."""

    def __init__(self, args, env, stderr_path, ready_check, binary=None,
                 preexec_fn=None):
        self.args = args
        self.preexec_fn = preexec_fn  # runs in the child before exec
        self.env = env
        self.stderr_path = stderr_path
        self.ready_check = ready_check
        self.binary = binary or latchkeyd_path()
        self.name = os.path.basename(self.binary)
        self.proc = None
        self.exit_codes = []

    def start(self):
        self._err = open(self.stderr_path, "ab")
        self._start_offset = self._err.tell()
        self.proc = subprocess.Popen([self.binary] + self.args,
                                     env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._err, stderr=self._err,
                                     preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if '"event":"ready"' in self.new_log() and self.ready_check(1.0):
                ready = True
                break
            time.sleep(0.05)
        if not ready:
            code = self.proc.poll()
            self.stop(check=False)
            raise RuntimeError(
                "%s did not become ready (exit %s); args %s; stderr:\n%s"
                % (self.name, code, self.args, self.new_log()[-4000:]))
        return self

    def new_log(self):
        """What latchkeyd wrote on stderr since the last start."""
        with open(self.stderr_path, "rb") as f:
            f.seek(self._start_offset)
            return f.read().decode("utf-8", errors="replace")

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, check=True, timeout=STOP_TIMEOUT_S):
        """SIGTERM and wait (SIGKILL after timeout seconds); returns the exit
        code (None if never started)."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = "hung on SIGTERM (killed)"
        self.proc = None
        self._err.close()
        self.exit_codes.append(code)
        if check and code != 0:
            raise AssertionError(
                "%s exited with %s after SIGTERM; stderr tail:\n%s"
                % (self.name, code, self.new_log()[-4000:]))
        return code

    def kill(self):
        """SIGKILL and wait: the process dies as in a crash."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.proc = None
        self._err.close()
        self.exit_codes.append(code)
        return code


def daemon_env():
    """The environment for our daemons: this one, with LSAN_OPTIONS'
    suppressions pointing at the runfiles' copy of bazel/lsan.supp."""
    env = dict(os.environ)
    lsan = env.get("LSAN_OPTIONS", "")
    if "suppressions=" in lsan:
        try:
            supp = runfile("bazel/lsan.supp")
            env["LSAN_OPTIONS"] = ":".join(
                "suppressions=" + supp if p.startswith("suppressions=")
                else p for p in lsan.split(":"))
        except FileNotFoundError:
            pass
    return env


class TestDirs:
    """A fresh temp dir for one test, and a dir short enough for Unix
    sockets in it. Under Bazel the dir is in $TEST_TMPDIR, which Bazel
    cleans; run by hand, remove() deletes it unless LATCHKEY_E2E_KEEP=1."""

    def __init__(self, name):
        base = os.environ.get("TEST_TMPDIR")
        self._own_dir = (base is None
                         and os.environ.get("LATCHKEY_E2E_KEEP") != "1")
        base = base or tempfile.gettempdir()
        safe = "".join(c if c.isalnum() else "-" for c in name)[-60:]
        self.dir = tempfile.mkdtemp(prefix=safe + "-", dir=base)
        # Unix socket paths are limited to 107 bytes; Bazel's temp dirs are
        # long, so sockets may need a short private dir of their own.
        if len(self.dir) + len("/agent.sock") < 100:
            self.sock_dir = self.dir
            self._own_sock_dir = False
        else:
            self.sock_dir = tempfile.mkdtemp(prefix="lk-e2e-", dir="/tmp")
            self._own_sock_dir = True

    def remove(self):
        if self._own_sock_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class AdminClient:
    """Admin calls over gRPC with a bearer token; needs self.admin_stub and
    self.token."""

    def auth(self, token=None):
        return (("authorization", "Bearer " + (token or self.token)),)

    def admin(self, method, request, token=None, metadata=None, timeout=10):
        """Calls Admin/<method> with the admin token (or the given metadata)."""
        md = self.auth(token) if metadata is None else metadata
        return getattr(self.admin_stub, method)(request, metadata=md,
                                                timeout=timeout)

    def register_type(self, type_dict):
        return self.admin("RegisterCredentialType", credential_type(type_dict))

    def register_tool(self, tool):
        return self.admin("RegisterTool", tool_request(tool))

    def create_credential(self, ctype, fields, label="e2e", cred_id=""):
        return self.admin("CreateCredential", admin_pb2.CreateCredentialRequest(
            type=ctype, label=label, fields=fields, id=cred_id))

    def create_budget(self, budget_id, agents=None, paused=False):
        return self.admin("CreateBudget", types_pb2.Budget(
            id=budget_id, agents=agents if agents is not None else [AGENT],
            paused=paused))

    def set_paused(self, budget_id, paused):
        return self.admin("SetBudgetPaused", admin_pb2.SetBudgetPausedRequest(
            id=budget_id, paused=paused))

    def bind(self, budget_id, credential_id, tool=None, ctype=None):
        return self.admin("Bind", types_pb2.Binding(
            budget_id=budget_id, tool_id=tool or "",
            credential_type=ctype or "", credential_id=credential_id))

    def unbind(self, budget_id, tool=None, ctype=None):
        return self.admin("Unbind", types_pb2.Binding(
            budget_id=budget_id, tool_id=tool or "",
            credential_type=ctype or ""))


class AgentClient:
    """ToolCalls over gRPC; needs self.toolcalls."""

    def call(self, budget, tool, op, args=None, timeout=15, request_id=""):
        """ToolCalls/Call; args is a dict (sent as JSON) or a raw string."""
        if args is None:
            args_json = "{}"
        elif isinstance(args, str):
            args_json = args
        else:
            args_json = json.dumps(args)
        return self.toolcalls.Call(toolcalls_pb2.ToolCallRequest(
            budget_id=budget, tool_id=tool, operation=op,
            arguments_json=args_json, request_id=request_id),
            timeout=timeout)

    def list_tools(self, budget, timeout=10):
        return self.toolcalls.ListTools(
            toolcalls_pb2.ListToolsRequest(budget_id=budget), timeout=timeout)


class Stack(AdminClient, AgentClient):
    """nginx + recording vendor + standalone latchkeyd, in one temp dir."""

    def __init__(self, name, allow_insecure_vendors=True,
                 max_response_bytes=MAX_RESPONSE_BYTES,
                 setup_url_template=SETUP_URL_TEMPLATE, extra_args=(),
                 agent_id=AGENT):
        self.dirs = TestDirs(name)
        self.dir = self.dirs.dir
        self.sock_dir = self.dirs.sock_dir
        self.data_dir = os.path.join(self.dir, "data")
        self.node_key = os.path.join(self.dir, "node.key")
        self.token = "admin-" + os.urandom(16).hex()
        self.token_file = os.path.join(self.dir, "admin.token")
        self.agent_sock = os.path.join(self.sock_dir, "agent.sock")
        self.agent_addr = "unix:" + self.agent_sock
        self.admin_port = free_port()
        self.admin_addr = "127.0.0.1:%d" % self.admin_port
        self.stderr_path = os.path.join(self.dir, "latchkeyd.stderr")
        self.agent_id = agent_id
        self.allow_insecure_vendors = allow_insecure_vendors
        self.max_response_bytes = max_response_bytes
        self.setup_url_template = setup_url_template
        self.extra_args = list(extra_args)
        self.nginx = Nginx(os.path.join(self.dir, "nginx"))
        self.vendor = vendor_mod.Vendor()
        self.daemon = None
        self._channels = []

    # -- lifecycle ---------------------------------------------------------

    def daemon_args(self):
        args = ["--listen", self.agent_addr,
                "--agent-id", self.agent_id,
                "--data-dir", self.data_dir,
                "--node-key", self.node_key,
                "--admin-listen", self.admin_addr,
                "--admin-token-file", self.token_file,
                "--max-response-bytes", str(self.max_response_bytes),
                "--log-level", "debug"]
        if self.setup_url_template:
            args += ["--setup-url-template", self.setup_url_template]
        if self.allow_insecure_vendors:
            args.append("--allow-insecure-vendors")
        return args + self.extra_args

    def daemon_env(self):
        return daemon_env()

    def _ready(self, timeout):
        return (wait_unix(self.agent_sock, timeout)
                and wait_tcp(self.admin_port, timeout))

    def start(self, daemon=True):
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        self.nginx.start()
        self.vendor.start()
        if daemon:
            self.start_daemon()
        return self

    def start_daemon(self, args=None, env=None):
        self.close_channels()
        # free_port() only says a port was free a moment ago: another test
        # or the vendor may take it first. With our own args, pick a new
        # admin port and retry when the bind loses that race.
        for attempt in range(3):
            self.daemon = Daemon(
                args if args is not None else self.daemon_args(),
                env if env is not None else self.daemon_env(),
                self.stderr_path, self._ready)
            try:
                self.daemon.start()
                break
            except RuntimeError as e:
                if (args is not None or attempt == 2
                        or "cannot listen on " + self.admin_addr not in str(e)):
                    raise
                self.admin_port = free_port()
                self.admin_addr = "127.0.0.1:%d" % self.admin_port
        self.open_channels()
        return self.daemon

    def stop_daemon(self, check=True):
        self.close_channels()
        if self.daemon is None:
            return None
        return self.daemon.stop(check=check)

    def restart_daemon(self):
        self.stop_daemon()
        return self.start_daemon()

    def open_channels(self):
        self.agent_channel = grpc.insecure_channel(self.agent_addr)
        self.admin_channel = grpc.insecure_channel(self.admin_addr)
        self._channels = [self.agent_channel, self.admin_channel]
        self.toolcalls = toolcalls_pb2_grpc.ToolCallsStub(self.agent_channel)
        self.admin_stub = admin_pb2_grpc.AdminStub(self.admin_channel)

    def close_channels(self):
        for ch in self._channels:
            ch.close()
        self._channels = []

    def close(self):
        """Stops everything; returns the latchkeyd exit problem, if any."""
        problem = None
        try:
            if self.daemon is not None and self.daemon.running():
                code = self.stop_daemon(check=False)
                if code != 0:
                    problem = ("latchkeyd exited with %s after SIGTERM; "
                               "stderr tail:\n%s"
                               % (code, self.daemon.new_log()[-4000:]))
        finally:
            self.close_channels()
            self.vendor.stop()
            self.nginx.stop()
            self.dirs.remove()
        return problem

    # -- latchkeyctl -------------------------------------------------------

    def ctl(self, *args, stdin=None, admin=True, timeout=60):
        """Runs latchkeyctl (with --server/--token-file when admin)."""
        argv = [latchkeyctl_path()]
        if admin:
            argv += ["--server", self.admin_addr, "--token-file",
                     self.token_file]
        argv += list(args)
        return subprocess.run(argv, input=stdin, capture_output=True,
                              text=True, timeout=timeout, cwd=self.dir)

    def log_lines(self):
        """Every line latchkeyd ever wrote on stderr in this stack."""
        if not os.path.exists(self.stderr_path):
            return []
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace").splitlines()


# -- the shared catalog -------------------------------------------------------

BEARER_TYPE = {
    "id": "bearer-token",
    "description": "A bearer token",
    "fields": [{"name": "token", "secret": True, "pattern": "^[!-~]{8,200}$",
                "description": "Token from the vendor's dashboard"}],
    "inject": [{"in": "header", "name": "Authorization",
                "value": "Bearer {token}"}],
}

APIKEY_TYPE = {
    "id": "api-key",
    "description": "An API key sent as X-Api-Key",
    "fields": [{"name": "api_key", "secret": True,
                "pattern": "^[!-~]{8,200}$",
                "description": "API key from the vendor's dashboard"}],
    "inject": [{"in": "header", "name": "X-Api-Key", "value": "{api_key}"}],
}

QUERY_TYPE = {
    "id": "query-key",
    "fields": [{"name": "api_key", "secret": True,
                "pattern": "^[!-~]{8,200}$", "description": "Query key"}],
    "inject": [{"in": "query", "name": "key", "value": "{api_key}"}],
}

BASIC_TYPE = {
    "id": "basic-login",
    "fields": [
        {"name": "user", "secret": False, "pattern": "^[a-z0-9._-]{1,64}$",
         "description": "Account name"},
        {"name": "password", "secret": True, "pattern": "^[!-~]{8,200}$",
         "description": "Account password"}],
    "inject": [{"in": "basic", "username": "{user}",
                "password": "{password}"}],
}

BODY_TYPE = {
    "id": "body-key",
    "fields": [{"name": "api_key", "secret": True,
                "pattern": "^[!-~]{8,200}$", "description": "Body key"}],
    "inject": [{"in": "body", "name": "api_key", "value": "{api_key}"}],
}

MULTI_TYPE = {
    "id": "multi-key",
    "fields": [
        {"name": "token", "secret": True, "pattern": "^[!-~]{8,200}$",
         "description": "Bearer token"},
        {"name": "api_key", "secret": True, "pattern": "^[!-~]{8,200}$",
         "description": "Key for query and body"}],
    "inject": [
        {"in": "header", "name": "Authorization", "value": "Bearer {token}"},
        {"in": "query", "name": "key", "value": "{api_key}"},
        {"in": "body", "name": "api_key", "value": "{api_key}"}],
}

ALL_TYPES = [BEARER_TYPE, APIKEY_TYPE, QUERY_TYPE, BASIC_TYPE, BODY_TYPE,
             MULTI_TYPE]


def echo_ops():
    """The operations every nginx echo tool has."""
    return [
        {"name": "get", "method": "GET", "path": "/echo/{item}",
         "description": "Echo what arrived",
         "params": [
             {"name": "item", "in": "path", "type": "string",
              "required": True, "description": "Path segment"},
             {"name": "q", "in": "query", "type": "string",
              "description": "Free text"},
             {"name": "n", "in": "query", "type": "integer",
              "description": "A number"}]},
        {"name": "post", "method": "POST", "path": "/body/echo",
         "description": "Echo the JSON body",
         "params": [
             {"name": "note", "in": "body", "type": "string",
              "description": "Free text"},
             {"name": "count", "in": "body", "type": "integer",
              "description": "A count"},
             {"name": "flag", "in": "body", "type": "boolean",
              "description": "A flag"}]},
        {"name": "quiet", "method": "GET", "path": "/quiet/x",
         "description": "Echoes nothing", "params": []},
        {"name": "slow", "method": "GET", "path": "/slow/x",
         "description": "Answers after one second", "params": []},
    ]


def echo_tool(tool_id, base_url, ctype):
    tool = {"id": tool_id, "description": "nginx echo with " + str(ctype),
            "base_url": base_url, "operations": echo_ops()}
    if ctype:
        tool["credential_type"] = ctype
    return tool


def vendor_tool(tool_id, base_url, ctype):
    """A tool on the recording Python vendor."""
    tool = {
        "id": tool_id, "description": "recording vendor",
        "base_url": base_url,
        "operations": [
            {"name": "enc", "method": "GET", "path": "/enc/{kind}",
             "description": "Echo the secret in one encoding",
             "params": [
                 {"name": "kind", "in": "path", "type": "string",
                  "required": True},
                 {"name": "from", "in": "query", "type": "string"}]},
            {"name": "sleep", "method": "GET", "path": "/sleep/x",
             "description": "Answer after ms milliseconds",
             "params": [{"name": "ms", "in": "query", "type": "integer",
                         "required": True}]},
            {"name": "big", "method": "GET", "path": "/big/x",
             "description": "A body of the given size",
             "params": [{"name": "bytes", "in": "query", "type": "integer",
                         "required": True}]},
            {"name": "post", "method": "POST", "path": "/post/x",
             "description": "Record a JSON body",
             "params": [{"name": "note", "in": "body", "type": "string"}]},
            {"name": "status", "method": "GET", "path": "/status/x",
             "description": "Answer with the given HTTP status",
             "params": [{"name": "code", "in": "query", "type": "integer",
                         "required": True}]},
            {"name": "get", "method": "GET", "path": "/get/{item}",
             "description": "Record a GET",
             "params": [{"name": "item", "in": "path", "type": "string",
                         "required": True},
                        {"name": "q", "in": "query", "type": "string"}]},
        ],
    }
    if ctype:
        tool["credential_type"] = ctype
    return tool


def make_secret(tag):
    """A unique printable secret whose raw, base64, base64url, percent and
    JSON-escaped forms all differ: it starts with "?>?~~~", whose base64 is
    "Pz4/fn5+" (both "/" and "+", so base64url differs), and its length is a
    multiple of 3 so no base64 padding hides where the encoding ends."""
    s = "?>?~~~lk%s/%s=%s" % (tag, os.urandom(6).hex(), os.urandom(3).hex())
    while len(s) % 3:
        s += "x"
    return s


def make_json_secret(tag):
    """A secret with characters JSON must escape (a quote and a backslash)."""
    return 'lk%s"%s\\%s' % (tag, os.urandom(5).hex(), os.urandom(3).hex())


def header(result, name):
    """A response header from a ToolResult, whatever its case."""
    for key, value in result.headers.items():
        if key.lower() == name.lower():
            return value
    return None


def whole_response(resp):
    """Everything a Call answer carries, as bytes to search."""
    return resp.SerializeToString() + str(resp).encode()


class E2EAssertions:
    """Assertions every e2e test case shares (mixed into a TestCase)."""

    def assertCode(self, code, fn, *args, **kwargs):
        """Asserts fn(...) fails with exactly this gRPC status code; returns
        the error so callers can check its message."""
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args, **kwargs)
        self.assertEqual(ctx.exception.code(), code,
                         "expected %s, got %s: %s"
                         % (code, ctx.exception.code(),
                            ctx.exception.details()))
        return ctx.exception

    def assertNoSecret(self, data, secret, what="answer"):
        """Asserts no form of the secret appears in bytes or text."""
        if isinstance(data, str):
            data = data.encode()
        for kind, form in secret_forms(secret).items():
            self.assertNotIn(form.encode(), data,
                             "%s form of the secret leaked into the %s"
                             % (kind, what))


class StackTestCase(E2EAssertions, unittest.TestCase):
    """A test with its own running stack in self.lk, and the usual catalog:
    all credential types, an nginx echo tool per type, a budget "main" for
    this agent."""

    stack_options = {}
    with_catalog = True

    def setUp(self):
        self.lk = Stack(self.id(), **self.stack_options)
        self.addCleanup(self._close_stack)
        self.lk.start()
        if self.with_catalog:
            self.install_catalog()

    def _close_stack(self):
        problem = self.lk.close()
        if problem:
            raise AssertionError(problem)

    def install_catalog(self):
        lk = self.lk
        for t in ALL_TYPES:
            lk.register_type(t)
        for tool_id, ctype in (("echo-bearer", "bearer-token"),
                               ("echo-apikey", "api-key"),
                               ("echo-query", "query-key"),
                               ("echo-basic", "basic-login"),
                               ("echo-body", "body-key"),
                               ("echo-multi", "multi-key"),
                               ("echo-open", None)):
            lk.register_tool(echo_tool(tool_id, lk.nginx.base_url, ctype))
        lk.register_tool(vendor_tool("rec-apikey", lk.vendor.base_url,
                                     "api-key"))
        lk.register_tool(vendor_tool("rec-basic", lk.vendor.base_url,
                                     "basic-login"))
        lk.register_tool(vendor_tool("rec-open", lk.vendor.base_url, None))
        lk.create_budget("main")

    def credential(self, ctype, fields, bind_tool=None, bind_type=None,
                   budget="main", label="e2e"):
        """Creates a credential and binds it (to a tool or budget-wide)."""
        cred = self.lk.create_credential(ctype, fields, label=label)
        if bind_tool or bind_type:
            self.lk.bind(budget, cred.id, tool=bind_tool, ctype=bind_type)
        return cred


def main():
    unittest.main(verbosity=2)



def ctl_output_id(stdout):
    """The id latchkeyctl printed for a created record: the "id" of a JSON
    answer, or else the last word of its output."""
    text = stdout.strip()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and "id" in doc:
            return doc["id"]
    except ValueError:
        pass
    words = text.split()
    return words[-1] if words else ""
