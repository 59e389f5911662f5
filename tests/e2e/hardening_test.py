"""Core dumps and memory of the running daemons, checked from outside.

latchkeyd and latchkey-cp are started the way a careless operator would
start them: core files allowed (RLIMIT_CORE raised to unlimited before
exec) and, when the test runs as root, as the unprivileged user nobody,
so that what the kernel does for a non-dumpable process shows. Then,
while each serves real traffic holding a canary secret:

- /proc/<pid>/limits shows "Max core file size" 0 (soft) and 0 (hard):
  lk_secret_disable_core_dumps lowered both;
- the process is not dumpable (prctl PR_SET_DUMPABLE 0): the kernel makes
  its /proc/<pid>/environ and /proc/<pid>/mem owned by root, and another
  process of the daemon's own user cannot open them;
- /proc/<pid>/cmdline and /proc/<pid>/environ hold no token and no form
  of the canary.

A control process (sleep) started in exactly the same way shows the
opposite on each point, so none of these checks can pass by accident of
the environment.
"""

import os
import pwd
import resource
import shutil
import subprocess
import tempfile
import time
import unittest

import grpc

import cluster
import harness
from latchkey.v1 import admin_pb2_grpc
from latchkey.v1 import toolcalls_pb2_grpc

SLEEP = shutil.which("sleep") or "/bin/sleep"


def run_as():
    """(uid, gid) the processes under test run as: nobody when the test
    is root (root could read any process's memory anyway), else the
    test's own user."""
    if os.geteuid() == 0:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    return os.getuid(), os.getgid()


def careless_start():
    """A preexec_fn: core files allowed, then the user from run_as()."""
    uid, gid = run_as()

    def pre():
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if os.geteuid() == 0:
            hard = resource.RLIM_INFINITY
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
    return pre


def core_limits(pid):
    """(soft, hard) of "Max core file size" in /proc/<pid>/limits."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max core file size"):
                soft, hard = line[len("Max core file size"):].split()[:2]
                return soft, hard
    raise AssertionError("no core line in /proc/%d/limits" % pid)


def opens_as_daemon_user(path):
    """Whether a process of the daemon's user can open path for reading."""
    uid, gid = run_as()
    if os.geteuid() != 0:
        try:
            with open(path, "rb") as f:
                f.read(1)
            return True
        except PermissionError:
            return False

    def pre():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    out = subprocess.run(
        ["/usr/bin/python3", "-c",
         "import sys\nwith open(sys.argv[1], 'rb') as f: f.read(1)", path],
        preexec_fn=pre, capture_output=True, text=True, timeout=30)
    if out.returncode != 0 and "PermissionError" not in out.stderr:
        raise AssertionError("probe of %s failed oddly: %s"
                             % (path, out.stderr))
    return out.returncode == 0


class PrivateDir:
    """A dir under /tmp owned by the daemons' user (Bazel's temp dirs sit
    under /root, which nobody cannot enter), holding copies of what the
    daemons read: their binaries, the LSan suppressions, token files."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="lk-hard-", dir="/tmp")
        os.chmod(self.dir, 0o700)
        self.chown(self.dir)

    def chown(self, path):
        if os.geteuid() == 0:
            uid, gid = run_as()
            os.chown(path, uid, gid)

    def path(self, name):
        return os.path.join(self.dir, name)

    def copy_binary(self, src, name):
        dst = self.path(name)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o755)
        return dst

    def secret_file(self, name, text):
        path = self.path(name)
        cluster.write_secret_file(path, text)
        self.chown(path)
        return path

    def env(self):
        """harness.daemon_env() with LSan's suppressions copied in here."""
        env = harness.daemon_env()
        lsan = env.get("LSAN_OPTIONS", "")
        if "suppressions=" in lsan:
            supp = self.path("lsan.supp")
            shutil.copyfile(harness.runfile("bazel/lsan.supp"), supp)
            os.chmod(supp, 0o644)
            env["LSAN_OPTIONS"] = ":".join(
                "suppressions=" + supp if p.startswith("suppressions=")
                else p for p in lsan.split(":"))
        return env

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Client(harness.AdminClient, harness.AgentClient):
    """Admin (and optionally ToolCalls) stubs over fresh channels."""

    def __init__(self, admin_addr, token, agent_addr=None):
        self.token = token
        self.channels = [grpc.insecure_channel(admin_addr)]
        self.admin_stub = admin_pb2_grpc.AdminStub(self.channels[0])
        if agent_addr is not None:
            self.channels.append(grpc.insecure_channel(agent_addr))
            self.toolcalls = toolcalls_pb2_grpc.ToolCallsStub(
                self.channels[1])

    def close(self):
        for ch in self.channels:
            ch.close()


class HardeningTest(harness.E2EAssertions, unittest.TestCase):

    def setUp(self):
        self.dirs = harness.TestDirs(self.id())
        self.addCleanup(self.dirs.remove)
        self.private = PrivateDir()
        self.addCleanup(self.private.remove)
        self.uid = run_as()[0]

    def start(self, daemon):
        self.addCleanup(daemon.stop)
        return daemon.start()

    def assertCoreDumpsOff(self, pid, name):
        self.assertEqual(core_limits(pid), ("0", "0"),
                         "%s may still write core files" % name)

    def assertNotDumpable(self, pid, name):
        for entry in ("environ", "mem"):
            path = "/proc/%d/%s" % (pid, entry)
            self.assertEqual(os.stat(path).st_uid, 0,
                             "%s is dumpable: %s belongs to its user"
                             % (name, path))
            self.assertFalse(opens_as_daemon_user(path),
                             "a process of %s's user can read %s"
                             % (name, path))
        self.assertEqual(os.stat("/proc/%d" % pid).st_uid, self.uid)

    def assertProcLeaksNothing(self, pid, secrets):
        for entry in ("cmdline", "environ"):
            with open("/proc/%d/%s" % (pid, entry), "rb") as f:
                data = f.read()
            self.assertTrue(data, entry)
            for secret in secrets:
                self.assertNoSecret(data, secret, "/proc/<pid>/" + entry)

    def test_control_process_started_the_same_way_may_dump_core(self):
        # Without the daemons' own calls, the same start leaves core files
        # allowed and the process dumpable: the checks below are real.
        proc = subprocess.Popen([SLEEP, "60"], preexec_fn=careless_start(),
                                stdin=subprocess.DEVNULL)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        time.sleep(0.2)
        soft, hard = core_limits(proc.pid)
        self.assertNotEqual(hard, "0")
        self.assertNotEqual(soft, "0")
        environ = "/proc/%d/environ" % proc.pid
        self.assertEqual(os.stat(environ).st_uid, self.uid)
        self.assertTrue(opens_as_daemon_user(environ))

    def test_latchkeyd_disables_core_dumps_and_is_not_dumpable(self):
        p = self.private
        nginx = harness.Nginx(os.path.join(self.dirs.dir, "nginx")).start()
        self.addCleanup(nginx.stop)
        admin_token = "admin-" + os.urandom(16).hex()
        admin_port = harness.free_port()
        admin_addr = "127.0.0.1:%d" % admin_port
        sock = p.path("agent.sock")
        args = ["--listen", "unix:" + sock,
                "--agent-id", harness.AGENT,
                "--data-dir", p.path("data"),
                "--node-key", p.path("node.key"),
                "--admin-listen", admin_addr,
                "--admin-token-file", p.secret_file("admin.token",
                                                    admin_token),
                "--allow-insecure-vendors",
                "--log-level", "debug"]
        daemon = self.start(harness.Daemon(
            args, p.env(), os.path.join(self.dirs.dir, "latchkeyd.stderr"),
            lambda t: (harness.wait_unix(sock, t)
                       and harness.wait_tcp(admin_port, t)),
            binary=p.copy_binary(harness.latchkeyd_path(), "latchkeyd"),
            preexec_fn=careless_start()))
        client = Client(admin_addr, admin_token, "unix:" + sock)
        self.addCleanup(client.close)

        canary = harness.make_secret("hard")
        client.register_type(harness.BEARER_TYPE)
        client.register_tool(harness.echo_tool("echo-bearer", nginx.base_url,
                                               "bearer-token"))
        client.create_budget("main")
        cred = client.create_credential("bearer-token", {"token": canary})
        client.bind("main", cred.id, tool="echo-bearer")
        resp = client.call("main", "echo-bearer", "get", {"item": "x"})
        self.assertEqual(resp.result.http_status, 200)
        self.assertTrue(resp.result.redacted)
        self.assertEqual(nginx.arrivals("/echo/")[-1]["authorization"],
                         "Bearer " + canary)

        pid = daemon.pid
        self.assertEqual(os.stat("/proc/%d" % pid).st_uid, self.uid)
        self.assertCoreDumpsOff(pid, "latchkeyd")
        self.assertNotDumpable(pid, "latchkeyd")
        self.assertProcLeaksNothing(pid, [canary, admin_token])
        self.assertEqual(daemon.stop(), 0)

    def test_latchkey_cp_disables_core_dumps_and_is_not_dumpable(self):
        p = self.private
        etcd = cluster.Etcd(self.dirs.dir).start()
        self.addCleanup(etcd.stop)
        admin_token = "admin-" + os.urandom(16).hex()
        node_token = "node-" + os.urandom(16).hex()
        port = harness.free_port()
        addr = "127.0.0.1:%d" % port
        args = ["--listen", addr,
                "--etcd", etcd.endpoint,
                "--etcd-prefix", cluster.ETCD_PREFIX,
                "--keyring", p.path("keyring"),
                "--admin-token-file", p.secret_file("admin.token",
                                                    admin_token),
                "--node-token-file", p.secret_file("node.token", node_token),
                "--log-level", "debug"]
        daemon = self.start(harness.Daemon(
            args, p.env(), os.path.join(self.dirs.dir, "cp.stderr"),
            lambda t: harness.wait_tcp(port, t),
            binary=p.copy_binary(cluster.latchkey_cp_path(), "latchkey-cp"),
            preexec_fn=careless_start()))
        client = Client(addr, admin_token)
        self.addCleanup(client.close)

        canary = harness.make_secret("hardcp")
        client.register_type(harness.BEARER_TYPE)
        cred = client.create_credential("bearer-token", {"token": canary})
        shown = client.admin("GetCredential",
                             harness.admin_pb2.GetRequest(id=cred.id))
        self.assertNoSecret(shown.SerializeToString(), canary)

        pid = daemon.pid
        self.assertEqual(os.stat("/proc/%d" % pid).st_uid, self.uid)
        self.assertCoreDumpsOff(pid, "latchkey-cp")
        self.assertNotDumpable(pid, "latchkey-cp")
        self.assertProcLeaksNothing(pid, [canary, admin_token, node_token])
        self.assertEqual(daemon.stop(), 0)


if __name__ == "__main__":
    harness.main()
