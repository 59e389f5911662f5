"""The interop stack: one real latchkeyd for a client's test suite.

    /usr/bin/python3 tests/interop/stack.py --transport unix|tcp -- CMD ARG...

starts, on loopback, a real nginx echo vendor (tests/e2e/harness.Nginx) and
a standalone latchkeyd whose ToolCalls listener is a Unix socket or a TCP
port (--transport) and which requires an agent token
(--agent-token-file); seeds its catalog through Admin; then runs CMD with
the environment below, and exits with CMD's status after stopping
everything (a latchkeyd that does not exit 0 on SIGTERM fails the run).

Clients in any language read the fixture from the environment:

    LATCHKEY_INTEROP_ADDRESS      gRPC address: unix:/path or 127.0.0.1:PORT
    LATCHKEY_INTEROP_TRANSPORT    "unix" or "tcp"
    LATCHKEY_INTEROP_AGENT_TOKEN  the bearer token the sidecar requires
    LATCHKEY_INTEROP_SECRET       the bound credential's secret (a canary:
                                  the vendor echoes it; a client must only
                                  ever see it as [REDACTED])
    LATCHKEY_INTEROP_FIXTURE      path of a JSON file with all of this and
                                  the names below

and the catalog (also in the fixture file):

    budget "main"   (this agent's): tool "echo" bound to the secret
                    (bearer-token type, "Authorization: Bearer <secret>"),
                    tool "unbound" (its type has no credential bound:
                    calls answer missing_credential), tool "slow" (op
                    "wait": the vendor answers after 1 s, so a client
                    deadline of 300 ms is DEADLINE_EXCEEDED)
    budget "theirs" (another agent's): every call is PERMISSION_DENIED

Operations: echo "get" (GET /echo/{item}, query q: string, n: integer;
item required) answers JSON with the request headers echoed; echo "post"
(POST, body params note: string, count: integer). An argument of the wrong
type (n: "x") is INVALID_ARGUMENT.
"""

import argparse
import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))

import harness  # noqa: E402

BUDGET = "main"
OTHER_BUDGET = "theirs"
ECHO_TOOL = "echo"
UNBOUND_TOOL = "unbound"
SLOW_TOOL = "slow"
UNBOUND_TYPE = "interop-key"


class InteropStack(harness.Stack):
    """harness.Stack with the agent listener on the chosen transport and an
    agent token."""

    def __init__(self, transport):
        super().__init__("interop-" + transport)
        self.transport = transport
        self.agent_token = "agent-" + os.urandom(16).hex()
        self.agent_token_file = os.path.join(self.dir, "agent.token")
        if transport == "tcp":
            self.agent_port = harness.free_port()
            self.agent_addr = "127.0.0.1:%d" % self.agent_port

    def daemon_args(self):
        args = super().daemon_args()
        args[args.index("--listen") + 1] = self.agent_addr
        return args + ["--agent-token-file", self.agent_token_file]

    def _ready(self, timeout):
        if self.transport == "tcp":
            return (harness.wait_tcp(self.agent_port, timeout)
                    and harness.wait_tcp(self.admin_port, timeout))
        return super()._ready(timeout)

    def start(self, daemon=True):
        fd = os.open(self.agent_token_file,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.agent_token + "\n")
        return super().start(daemon)


def seed(stack):
    """The catalog described above; returns the fixture dict."""
    secret = harness.make_secret("interop")
    for t in harness.ALL_TYPES:
        stack.register_type(t)
    stack.register_type({
        "id": UNBOUND_TYPE,
        "description": "An API key the owner has not provided yet",
        "fields": [{"name": "api_key", "secret": True,
                    "description": "The vendor's API key"}],
        "inject": [{"in": "header", "name": "X-Api-Key",
                    "value": "{api_key}"}],
    })
    base = stack.nginx.base_url
    stack.register_tool(harness.echo_tool(ECHO_TOOL, base, "bearer-token"))
    stack.register_tool(harness.echo_tool(UNBOUND_TOOL, base, UNBOUND_TYPE))
    stack.register_tool({
        "id": SLOW_TOOL, "description": "A vendor that takes a second",
        "base_url": base, "credential_type": "",
        "operations": [{"name": "wait", "method": "GET", "path": "/slow/x",
                        "description": "Answer after one second",
                        "params": []}]})
    stack.create_budget(BUDGET)
    stack.create_budget(OTHER_BUDGET, agents=["someone-else"])
    cred = stack.create_credential("bearer-token", {"token": secret},
                                   label="interop")
    stack.bind(BUDGET, cred.id, tool=ECHO_TOOL)
    return {
        "address": stack.agent_addr,
        "transport": stack.transport,
        "agent_token": stack.agent_token,
        "secret": secret,
        "credential_id": cred.id,
        "budget": BUDGET,
        "other_budget": OTHER_BUDGET,
        "echo_tool": ECHO_TOOL,
        "unbound_tool": UNBOUND_TOOL,
        "unbound_type": UNBOUND_TYPE,
        "slow_tool": SLOW_TOOL,
        "setup_url_template": harness.SETUP_URL_TEMPLATE,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=("unix", "tcp"),
                        required=True)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    cmd = opts.cmd[1:] if opts.cmd[:1] == ["--"] else opts.cmd
    if not cmd:
        parser.error("a command to run is required after --")
    stack = InteropStack(opts.transport)
    status = 1
    try:
        stack.start()
        fixture = seed(stack)
        path = os.path.join(stack.dir, "fixture.json")
        with open(path, "w") as f:
            json.dump(fixture, f, indent=2)
        env = dict(os.environ)
        env.update({
            "LATCHKEY_INTEROP_ADDRESS": fixture["address"],
            "LATCHKEY_INTEROP_TRANSPORT": fixture["transport"],
            "LATCHKEY_INTEROP_AGENT_TOKEN": fixture["agent_token"],
            "LATCHKEY_INTEROP_SECRET": fixture["secret"],
            "LATCHKEY_INTEROP_FIXTURE": path,
        })
        proc = subprocess.Popen(cmd, env=env)
        try:
            status = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            status = proc.wait()
    finally:
        problem = stack.close()
        if problem:
            print("interop stack: " + problem, file=sys.stderr)
            status = status or 1
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
