"""State survives a restart: tools, credential types, credentials,
budgets and bindings written before SIGTERM are served after it, and the
sealed secrets still open with the same node key."""

import json
import os
import stat

import harness
from latchkey.v1 import admin_pb2


class RestartTest(harness.StackTestCase):

    def test_node_key_is_created_0600_on_first_start_and_kept(self):
        st = os.stat(self.lk.node_key)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        with open(self.lk.node_key, "rb") as f:
            before = f.read()
        self.assertTrue(before)
        self.lk.restart_daemon()
        with open(self.lk.node_key, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_sigterm_exits_zero(self):
        self.assertEqual(self.lk.stop_daemon(), 0)

    def test_catalog_and_bindings_survive_restart_and_calls_still_work(self):
        secret = harness.make_secret("rs")
        wide = harness.make_secret("rw")
        cred = self.credential("bearer-token", {"token": secret},
                               bind_tool="echo-bearer", label="kept")
        wide_cred = self.credential("query-key", {"api_key": wide},
                                    bind_type="query-key")
        self.lk.create_budget("paused-one", paused=True)
        self.lk.call("main", "echo-bearer", "get", {"item": "before"})

        self.lk.restart_daemon()

        tools = {t.id for t in self.lk.admin(
            "ListTools", admin_pb2.ListRequest()).tools}
        self.assertTrue({"echo-bearer", "echo-query", "rec-open"} <= tools)
        types = {t.id for t in self.lk.admin(
            "ListCredentialTypes", admin_pb2.ListRequest()).types}
        self.assertTrue({t["id"] for t in harness.ALL_TYPES} <= types)
        creds = {c.id: c for c in self.lk.admin(
            "ListCredentials", admin_pb2.ListRequest()).credentials}
        self.assertEqual(creds[cred.id].label, "kept")
        self.assertIn(wide_cred.id, creds)
        budgets = {b.id: b for b in self.lk.admin(
            "ListBudgets", admin_pb2.ListRequest()).budgets}
        self.assertEqual(list(budgets["main"].agents), [harness.AGENT])
        self.assertTrue(budgets["paused-one"].paused)
        bindings = self.lk.admin("ListBindings",
                                 admin_pb2.ListBindingsRequest(
                                     budget_id="main")).bindings
        self.assertEqual(len(bindings), 2)

        resp = self.lk.call("main", "echo-bearer", "get", {"item": "after"})
        self.assertEqual(json.loads(resp.result.body)["authorization"],
                         "Bearer [REDACTED]")
        self.assertEqual(
            self.lk.nginx.arrivals("/echo/after")[-1]["authorization"],
            "Bearer " + secret)
        self.lk.call("main", "echo-query", "get", {"item": "q-after"})
        self.assertIn("key=",
                      self.lk.nginx.arrivals("/echo/q-after")[-1]["args"])
        self.assertCode(harness.StatusCode.FAILED_PRECONDITION, self.lk.call,
                        "paused-one", "echo-open", "get", {"item": "x"})

    def test_deletes_survive_restart(self):
        cred = self.credential("bearer-token", {"token": "t" * 20},
                               bind_tool="echo-bearer")
        self.lk.unbind("main", tool="echo-bearer")
        self.lk.admin("DeleteCredential", admin_pb2.DeleteRequest(id=cred.id))
        self.lk.admin("DeleteTool", admin_pb2.DeleteRequest(id="echo-open"))
        self.lk.restart_daemon()
        creds = [c.id for c in self.lk.admin(
            "ListCredentials", admin_pb2.ListRequest()).credentials]
        self.assertNotIn(cred.id, creds)
        self.assertCode(harness.StatusCode.NOT_FOUND, self.lk.call, "main",
                        "echo-open", "get", {"item": "x"})
        resp = self.lk.call("main", "echo-bearer", "get", {"item": "x"})
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")

    def test_restart_twice_keeps_serving(self):
        self.credential("api-key", {"api_key": "k" * 20},
                        bind_tool="echo-apikey")
        for i in range(2):
            self.lk.restart_daemon()
            resp = self.lk.call("main", "echo-apikey", "get",
                                {"item": "r%d" % i})
            self.assertEqual(json.loads(resp.result.body)["x_api_key"],
                             "[REDACTED]")


if __name__ == "__main__":
    harness.main()
