"""The cluster harness: etcd, control planes and replica sidecars, all real.

A Cluster lives in one temp dir (harness.TestDirs) and starts, on loopback:
a real nginx echo vendor (harness.Nginx); a real single-node etcd (Debian's
etcd-server, v3 API) with its own data dir; N latchkey-cp processes that
share one key ring file, one admin token and one node token; and, on
demand, latchkeyd replicas (--control-plane), each with its own data dir,
node key and Unix socket. Processes are harness.Daemon objects, so they are
ready only after their JSON "ready" log line and a connect check, and their
stderr is kept (appended across restarts) for log assertions.

Tests drive control planes with harness.AdminClient (Admin over gRPC with
the admin token) and `latchkeyctl --server CP --json status`, and sidecars
with harness.AgentClient (ToolCalls over the Unix socket).

Teardown always stops everything, failure or not: sidecars first (so no
stream holds a control plane's shutdown), then control planes, etcd and
nginx, each by SIGTERM and SIGKILL after a bound. A latchkeyd or latchkey-cp
that does not exit 0 on SIGTERM fails the test, as in harness.Stack.
"""

import base64
import json
import os
import signal
import subprocess
import time
import urllib.request

import grpc

import harness
from latchkey.v1 import admin_pb2_grpc
from latchkey.v1 import toolcalls_pb2_grpc

ETCD = os.environ.get("ETCD") or "/usr/bin/etcd"
ETCDCTL = os.environ.get("ETCDCTL") or "/usr/bin/etcdctl"
ETCD_PREFIX = "/latchkey/"
ETCD_READY_S = 30.0
# Bounds of the teardown: SIGTERM, then SIGKILL after this long.
STOP_BOUND_S = 15.0
# Bound of every "until the cluster shows X" wait.
SETTLE_S = 20.0


def latchkey_cp_path():
    return (os.environ.get("LATCHKEY_CP")
            or harness.runfile("controlplane/latchkey-cp"))


def write_secret_file(path, text):
    """A 0600 file holding text and a newline (tokens)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def wait_until(fn, timeout=SETTLE_S, what="the condition", interval=0.05):
    """Polls fn() until it returns something true, for at most timeout
    seconds; returns that value, or raises AssertionError naming what was
    awaited and the last value (or exception) seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except (grpc.RpcError, OSError, ValueError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError("%s did not happen within %.0f s; last: %r"
                                 % (what, timeout, last))
        time.sleep(interval)


def files_containing(root, needle):
    """Paths of the files under root whose bytes contain needle."""
    if isinstance(needle, str):
        needle = needle.encode()
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def code_of(fn):
    """The gRPC status code fn() fails with, or OK."""
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


class Etcd:
    """A real single-node etcd on two free loopback ports."""

    def __init__(self, directory):
        self.dir = directory
        self.data_dir = os.path.join(directory, "etcd-data")
        self.log_path = os.path.join(directory, "etcd.log")
        self.client_port = None
        self.peer_port = None
        self.proc = None

    @property
    def endpoint(self):
        return "127.0.0.1:%d" % self.client_port

    @property
    def url(self):
        return "http://" + self.endpoint

    def start(self):
        last = ""
        for _ in range(5):
            self.client_port = harness.free_port()
            self.peer_port = harness.free_port()
            peer = "http://127.0.0.1:%d" % self.peer_port
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    [ETCD, "--name", "n", "--data-dir", self.data_dir,
                     "--listen-client-urls", self.url,
                     "--advertise-client-urls", self.url,
                     "--listen-peer-urls", peer,
                     "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", "n=" + peer],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            finally:
                log.close()
            if self._wait_healthy(ETCD_READY_S):
                return self
            last = self.log_tail()
            self.stop()
            if "address already in use" not in last:
                break
        raise RuntimeError("etcd did not start:\n" + last)

    def _wait_healthy(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/health",
                                            timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return True
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def ctl(self, *args, check=True):
        """Runs etcdctl (v3 API) against this etcd; returns its stdout."""
        env = dict(os.environ, ETCDCTL_API="3")
        out = subprocess.run([ETCDCTL, "--endpoints", self.url] + list(args),
                             env=env, capture_output=True, timeout=30)
        if check and out.returncode != 0:
            raise AssertionError("etcdctl %s failed: %s"
                                 % (" ".join(args), out.stderr.decode()))
        return out.stdout

    def get(self, key):
        """The stored bytes of key (None when absent) and etcd's revision."""
        doc = json.loads(self.ctl("get", key, "-w", "json"))
        kvs = doc.get("kvs") or []
        value = base64.b64decode(kvs[0]["value"]) if kvs else None
        return value, int(doc["header"]["revision"])

    def revision(self):
        return self.get(ETCD_PREFIX + "meta/none")[1]

    def compact(self, revision):
        self.ctl("compact", str(revision), "--physical")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class ControlPlane(harness.AdminClient):
    """One latchkey-cp; Admin helpers come from harness.AdminClient.

    tls=(cert, key, ca): it serves TLS with --tls-cert cert --tls-key key,
    and this harness's clients (the Python Admin stub, ctl()) trust ca."""

    def __init__(self, cluster, name, tls=None):
        self.cluster = cluster
        self.name = name
        self.tls = tls
        self.token = cluster.admin_token
        self.stderr_path = os.path.join(cluster.dir, name + ".stderr")
        self.port = harness.free_port()
        self.extra_args = []
        self.daemon = None
        self._channel = None
        self.admin_stub = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def args(self):
        c = self.cluster
        return ["--listen", self.addr,
                "--etcd", c.etcd.endpoint,
                "--etcd-prefix", ETCD_PREFIX,
                "--keyring", c.keyring,
                "--admin-token-file", c.admin_token_file,
                "--node-token-file", c.node_token_file,
                "--log-level", "debug"] + (
                    ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]]
                    if self.tls else []) + self.extra_args

    def start(self, same_port=False):
        """Starts it; a lost race for its port is retried on a new port
        unless same_port (a restart its sidecars must find again)."""
        for attempt in range(3):
            self.daemon = harness.Daemon(
                self.args(), harness.daemon_env(), self.stderr_path,
                lambda t: harness.wait_tcp(self.port, t),
                binary=latchkey_cp_path())
            try:
                self.daemon.start()
                break
            except RuntimeError as e:
                if (same_port or attempt == 2
                        or "cannot listen on " + self.addr not in str(e)):
                    raise
                self.port = harness.free_port()
        if self.tls:
            with open(self.tls[2], "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            self._channel = grpc.secure_channel(self.addr, creds)
        else:
            self._channel = grpc.insecure_channel(self.addr)
        self.admin_stub = admin_pb2_grpc.AdminStub(self._channel)
        return self

    def _close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def running(self):
        return self.daemon is not None and self.daemon.running()

    def kill(self):
        """SIGKILL: the control plane dies as in a crash."""
        self._close_channel()
        return self.daemon.kill() if self.daemon else None

    def stop(self, check=True):
        self._close_channel()
        if self.daemon is None:
            return None
        return self.daemon.stop(check=check, timeout=STOP_BOUND_S)

    def ctl(self, *args, token_file=None, timeout=30, stdin=None):
        """Runs latchkeyctl --server <this control plane> (stdin: text for
        its standard input)."""
        argv = [harness.latchkeyctl_path(), "--server", self.addr,
                "--token-file", token_file or self.cluster.admin_token_file]
        if self.tls:
            argv += ["--tls-ca", self.tls[2]]
        return subprocess.run(argv + list(args), capture_output=True,
                              text=True, timeout=timeout, input=stdin,
                              cwd=self.cluster.dir)

    def status(self):
        """`latchkeyctl --json status` parsed: {"revision": int,
        "replicas": [{"agent_id", "peer_id", "applied_revision",
        "lag_revisions", "ms_since_ack"} as ints and str],
        "last_write_to_all_acked_us": int, "writes_measured": int}."""
        out = self.ctl("--json", "status")
        if out.returncode != 0:
            raise AssertionError("latchkeyctl status failed (%d): %s"
                                 % (out.returncode, out.stderr))
        doc = json.loads(out.stdout)
        replicas = []
        for r in doc.get("replicas", []):
            replicas.append({
                "agent_id": r.get("agent_id", ""),
                "peer_id": int(r.get("peer_id", 0)),
                "applied_revision": int(r.get("applied_revision", 0)),
                "lag_revisions": int(r.get("lag_revisions", 0)),
                "ms_since_ack": int(r.get("ms_since_ack", 0)),
            })
        return {"revision": int(doc.get("revision", 0)),
                "replicas": replicas,
                "last_write_to_all_acked_us":
                    int(doc.get("last_write_to_all_acked_us", -1)),
                "writes_measured": int(doc.get("writes_measured", 0))}

    def log(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


class Sidecar(harness.AgentClient):
    """One latchkeyd in replica mode; ToolCalls helpers come from
    harness.AgentClient."""

    def __init__(self, cluster, name, agent_id, control_plane,
                 token_file=None, extra_args=()):
        self.cluster = cluster
        self.name = name
        self.agent_id = agent_id
        self.control_plane = control_plane
        self.token_file = token_file or cluster.node_token_file
        self.extra_args = list(extra_args)
        self.data_dir = os.path.join(cluster.dir, name + "-data")
        self.node_key = os.path.join(cluster.dir, name + ".node.key")
        self.sock = os.path.join(cluster.sock_dir, name + ".sock")
        self.stderr_path = os.path.join(cluster.dir, name + ".stderr")
        self.daemon = None
        self._channel = None
        self.toolcalls = None

    @property
    def addr(self):
        return "unix:" + self.sock

    def args(self):
        return ["--listen", self.addr,
                "--agent-id", self.agent_id,
                "--data-dir", self.data_dir,
                "--node-key", self.node_key,
                "--control-plane", self.control_plane.addr,
                "--control-plane-token-file", self.token_file,
                "--allow-insecure-vendors",
                "--log-level", "debug"] + self.extra_args

    def start(self, control_plane=None):
        """Starts it (following control_plane when given); ready once it
        logged "ready" and its socket accepts."""
        if control_plane is not None:
            self.control_plane = control_plane
        self.daemon = harness.Daemon(
            self.args(), harness.daemon_env(), self.stderr_path,
            lambda t: harness.wait_unix(self.sock, t))
        self.daemon.start()
        self._channel = grpc.insecure_channel(self.addr)
        self.toolcalls = toolcalls_pb2_grpc.ToolCallsStub(self._channel)
        return self

    def _close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def running(self):
        return self.daemon is not None and self.daemon.running()

    def kill(self):
        self._close_channel()
        return self.daemon.kill() if self.daemon else None

    def stop(self, check=True):
        self._close_channel()
        if self.daemon is None:
            return None
        return self.daemon.stop(check=check, timeout=STOP_BOUND_S)

    def new_log(self):
        """What it wrote on stderr since its last start."""
        return self.daemon.new_log()

    def log(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def events(self, name, since_start=True):
        """Its JSON log lines whose event is name."""
        text = self.new_log() if since_start else self.log()
        found = []
        for line in text.splitlines():
            if '"event":"%s"' % name in line:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    found.append({"raw": line})
        return found


class Cluster:
    """nginx + etcd + control planes + replica sidecars in one temp dir."""

    def __init__(self, name, control_planes=2):
        self.dirs = harness.TestDirs(name)
        self.dir = self.dirs.dir
        self.sock_dir = self.dirs.sock_dir
        self.keyring = os.path.join(self.dir, "keyring")
        self.admin_token = "admin-" + os.urandom(16).hex()
        self.admin_token_file = os.path.join(self.dir, "admin.token")
        self.node_token = "node-" + os.urandom(16).hex()
        self.node_token_file = os.path.join(self.dir, "node.token")
        self.nginx = harness.Nginx(os.path.join(self.dir, "nginx"))
        self.etcd = Etcd(self.dir)
        self.cps = [ControlPlane(self, "cp%d" % (i + 1))
                    for i in range(control_planes)]
        self.sidecars = []

    def start(self):
        write_secret_file(self.admin_token_file, self.admin_token)
        write_secret_file(self.node_token_file, self.node_token)
        self.nginx.start()
        self.etcd.start()
        # The first control plane creates the shared key ring; the others
        # load it.
        for cp in self.cps:
            cp.start()
        return self

    def sidecar(self, name, agent_id, control_plane, start=True, **kwargs):
        """A replica sidecar for agent_id following control_plane."""
        s = Sidecar(self, name, agent_id, control_plane, **kwargs)
        self.sidecars.append(s)
        if start:
            s.start()
        return s

    def settled(self, cp, agents):
        """True when cp lists a replica for each of agents, every one at
        cp's revision with lag 0; returns cp's status then."""
        st = cp.status()
        seen = {}
        for r in st["replicas"]:
            seen.setdefault(r["agent_id"], []).append(r)
        for agent in agents:
            rows = seen.get(agent, [])
            if not rows or any(r["applied_revision"] != st["revision"]
                               or r["lag_revisions"] != 0 for r in rows):
                return None
        return st

    def wait_settled(self, cp, agents, timeout=SETTLE_S):
        return wait_until(lambda: self.settled(cp, agents), timeout,
                          "replicas %s at %s's revision" % (agents, cp.name))

    def close(self):
        """Stops everything; returns the exit problems found, if any."""
        problems = []
        try:
            for s in self.sidecars:
                if s.running():
                    code = s.stop(check=False)
                    if code != 0:
                        problems.append("%s (latchkeyd) exited %s on SIGTERM:"
                                        "\n%s" % (s.name, code,
                                                  s.new_log()[-3000:]))
            for cp in self.cps:
                if cp.running():
                    code = cp.stop(check=False)
                    if code != 0:
                        problems.append("%s (latchkey-cp) exited %s on "
                                        "SIGTERM:\n%s"
                                        % (cp.name, code,
                                           cp.daemon.new_log()[-3000:]))
        finally:
            for s in self.sidecars:
                if s.running():
                    s.kill()
            for cp in self.cps:
                if cp.running():
                    cp.kill()
            self.etcd.stop()
            self.nginx.stop()
            self.dirs.remove()
        return "\n".join(problems) or None
