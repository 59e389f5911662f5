"""What each binary's --help says, and the flags issue 7 is still adding.

Why: the Kubernetes manifests (deploy/kubernetes) and the man pages
(docs/*.8.md, docs/latchkeyctl.1.md) name flags, and a flag the binary
does not know is a pod that exits 2 at start or a reader misled. Both
tests take the truth from the built binaries' --help, never from a list
kept here, so renaming or adding a flag fails them until the manifests
and pages follow.

The one allowance is PENDING: flags DESIGN.md §10 (the command-line
contract) names that issue 7 adds to the daemons on other branches. The
manifests and man pages already use them. A pending flag is accepted when
the binary does not list it yet only because it is in DESIGN_10, the §10
lists quoted below; once the binary lists it, it is checked like every
other flag, so merging issue 7 makes the tests strict without an edit.
Flags issue 7 adds that §10 does not name (--drain-timeout,
--check-config) get no allowance: they are documented when they exist.
"""

import os
import re
import subprocess

ROOT = os.path.join(os.environ.get("TEST_SRCDIR", ""),
                    os.environ.get("TEST_WORKSPACE", "latchkey"))

BINARIES = {
    "latchkeyd": "sidecar/latchkeyd",
    "latchkey-cp": "controlplane/latchkey-cp",
    "latchkeyctl": "clients/cli/latchkeyctl",
}

# DESIGN.md §10, quoted: the daemons' flags as the contract lists them.
DESIGN_10 = {
    "latchkeyd": (
        "`--listen` (ToolCalls; default a Unix socket), `--agent-id`, "
        "`--data-dir`, `--node-key`, `--admin-listen` and "
        "`--admin-token-file` (standalone mode only), `--control-plane`, "
        "`--control-plane-token-file`, `--tls-ca` (replica mode), "
        "`--agent-token-file`, `--allow-insecure-vendors`, "
        "`--setup-url-template`, `--max-response-bytes`, `--max-staleness`, "
        "`--metrics-listen`, `--health-listen`, `--log-level`."),
    "latchkey-cp": (
        "`--listen`, `--etcd` (comma-separated endpoints), `--etcd-prefix`, "
        "`--keyring`, `--admin-token-file`, `--node-token-file` (what "
        "sidecars present), `--tls-cert`, `--tls-key`, `--metrics-listen`, "
        "`--health-listen`, `--log-level`."),
}

# Being added by issue 7 (gRPC health listener, Prometheus metrics) on
# other branches; every entry must be named in DESIGN_10 for its binary.
PENDING = {
    "latchkeyd": {"health-listen", "metrics-listen"},
    "latchkey-cp": {"health-listen", "metrics-listen"},
    "latchkeyctl": set(),
}

FLAG_RE = re.compile(r"--([a-z][a-z0-9-]*)")
DAEMON_LINE_RE = re.compile(
    r"^  --([a-z][a-z0-9-]*)( VALUE| DURATION)?\s.*\[(LATCHKEY_[A-Z0-9_]+)\]$")


def binary_path(name):
    """The built binary in the test's runfiles."""
    return os.path.join(ROOT, BINARIES[name])


def help_text(name):
    """The binary's --help output (daemons print it on stderr)."""
    proc = subprocess.run([binary_path(name), "--help"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=30, check=False)
    if proc.returncode != 0:
        raise AssertionError("%s --help exited %d: %s" %
                             (name, proc.returncode, proc.stderr.decode()))
    return (proc.stdout + proc.stderr).decode()


def daemon_flags(name):
    """{flag: {"kind": "bool"|"value"|"duration", "env": LATCHKEY_...}}
    from a daemon's --help (lib/flags' usage lines)."""
    flags = {}
    for line in help_text(name).splitlines():
        m = DAEMON_LINE_RE.match(line)
        if m is None:
            continue
        kind = {None: "bool", " VALUE": "value",
                " DURATION": "duration"}[m.group(2)]
        flags[m.group(1)] = {"kind": kind, "env": m.group(3)}
    if not flags:
        raise AssertionError("%s --help lists no flags" % name)
    return flags


def cli_flags():
    """Every --flag latchkeyctl --help names, global or per command."""
    flags = set(FLAG_RE.findall(help_text("latchkeyctl")))
    flags.discard("help")
    if not flags:
        raise AssertionError("latchkeyctl --help names no flags")
    return flags


def design_10_flags(name):
    """The flags DESIGN.md §10 names for a daemon."""
    return set(FLAG_RE.findall(DESIGN_10[name]))


def pending_allowed(name, flag, listed):
    """True when flag is pending for name: not yet in --help (listed) and
    named by DESIGN.md §10."""
    return (flag in PENDING.get(name, set()) and flag not in listed and
            name in DESIGN_10 and flag in design_10_flags(name))


def env_name(flag):
    """LATCHKEY_<FLAG_IN_CAPS>, DESIGN.md §10's rule."""
    return "LATCHKEY_" + flag.upper().replace("-", "_")
