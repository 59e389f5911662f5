"""--agent-token-file: every ToolCalls caller must present the agent token
("authorization: Bearer <token>"); a missing or wrong one is
UNAUTHENTICATED for Call and ListTools alike, and the right one works,
from a raw gRPC client and from latchkeyctl --agent-token-file."""

import os
import stat

import grpc

import harness

Code = grpc.StatusCode


class AgentTokenTest(harness.StackTestCase):

    def setUp(self):
        self.lk = harness.Stack(self.id())
        self.addCleanup(self._close_stack)
        self.agent_token = "agent-" + os.urandom(16).hex()
        self.agent_token_file = os.path.join(self.lk.dir, "agent.token")
        fd = os.open(self.agent_token_file,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.agent_token + "\n")
        self.lk.extra_args = ["--agent-token-file", self.agent_token_file]
        self.lk.start()
        self.install_catalog()

    def call(self, token):
        md = [] if token is None else [("authorization", "Bearer " + token)]
        return self.lk.toolcalls.Call(
            harness.toolcalls_pb2.ToolCallRequest(
                budget_id="main", tool_id="echo-open", operation="get",
                arguments_json='{"item": "x"}'),
            metadata=md, timeout=10)

    def test_call_without_token_is_unauthenticated(self):
        err = self.assertCode(Code.UNAUTHENTICATED, self.call, None)
        self.assertIn("agent token", err.details())

    def test_call_with_wrong_token_is_unauthenticated(self):
        self.assertCode(Code.UNAUTHENTICATED, self.call, "agent-wrong")
        self.assertCode(Code.UNAUTHENTICATED, self.call,
                        self.agent_token + "x")

    def test_list_tools_needs_the_token_too(self):
        self.assertCode(Code.UNAUTHENTICATED, self.lk.list_tools, "main")

    def test_right_token_calls_the_tool(self):
        resp = self.call(self.agent_token)
        self.assertEqual(resp.result.http_status, 200)

    def test_latchkeyctl_sends_the_agent_token_file(self):
        out = self.lk.ctl("call", "--sidecar", self.lk.agent_addr,
                          "--agent-token-file", self.agent_token_file,
                          "--budget", "main", "--tool", "echo-open",
                          "--op", "get", "--args", '{"item": "y"}',
                          admin=False)
        self.assertEqual(out.returncode, 0, out.stderr)
        bad = self.lk.ctl("call", "--sidecar", self.lk.agent_addr,
                          "--budget", "main", "--tool", "echo-open",
                          "--op", "get", "--args", '{"item": "y"}',
                          admin=False)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("UNAUTHENTICATED", bad.stderr)

    def test_agent_socket_is_owner_and_group_only(self):
        mode = stat.S_IMODE(os.stat(self.lk.agent_sock).st_mode)
        self.assertEqual(mode & 0o007, 0, oct(mode))


if __name__ == "__main__":
    harness.main()
