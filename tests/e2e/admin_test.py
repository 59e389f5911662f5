"""The standalone Admin service: token checks, write-only secrets with
masked listings, and catalog changes that take effect on the next call."""

import json

import grpc

import harness
from latchkey.v1 import admin_pb2
from latchkey.v1 import types_pb2

Code = grpc.StatusCode


class AdminAuthTest(harness.StackTestCase):
    with_catalog = False

    def _admin_calls(self):
        return [
            ("ListTools", admin_pb2.ListRequest()),
            ("ListCredentials", admin_pb2.ListRequest()),
            ("CreateBudget", types_pb2.Budget(id="b1",
                                              agents=[harness.AGENT])),
            ("CreateCredential", admin_pb2.CreateCredentialRequest(
                type="bearer-token", fields={"token": "t" * 20})),
        ]

    def test_wrong_admin_token_is_unauthenticated(self):
        for method, req in self._admin_calls():
            with self.subTest(method=method):
                err = self.assertCode(Code.UNAUTHENTICATED, self.lk.admin,
                                      method, req, token="wrong-token")
                self.assertNotIn(self.lk.token, err.details())

    def test_missing_admin_token_is_unauthenticated(self):
        for method, req in self._admin_calls():
            with self.subTest(method=method):
                self.assertCode(Code.UNAUTHENTICATED, self.lk.admin, method,
                                req, metadata=())

    def test_near_miss_admin_tokens_are_unauthenticated(self):
        token = self.lk.token
        for md in ((("authorization", "Bearer " + token[:-1]),),
                   (("authorization", "Bearer " + token + "x"),),
                   (("authorization", token),),
                   (("authorization", "Bearer "),),
                   (("authorization", "Basic " + token),)):
            with self.subTest(metadata=md):
                self.assertCode(Code.UNAUTHENTICATED, self.lk.admin,
                                "ListTools", admin_pb2.ListRequest(),
                                metadata=md)

    def test_rejected_writes_change_nothing(self):
        self.assertCode(Code.UNAUTHENTICATED, self.lk.admin, "CreateBudget",
                        types_pb2.Budget(id="sneaky",
                                         agents=[harness.AGENT]),
                        token="wrong")
        budgets = self.lk.admin("ListBudgets", admin_pb2.ListRequest())
        self.assertNotIn("sneaky", [b.id for b in budgets.budgets])

    def test_right_admin_token_is_accepted(self):
        self.lk.create_budget("ok")
        budgets = self.lk.admin("ListBudgets", admin_pb2.ListRequest())
        self.assertEqual([b.id for b in budgets.budgets], ["ok"])


class AdminCatalogTest(harness.StackTestCase):

    def test_registered_tool_reads_back_as_written(self):
        tool = self.lk.admin("GetTool", admin_pb2.GetRequest(id="echo-open"))
        self.assertEqual(tool.id, "echo-open")
        self.assertEqual(tool.base_url, self.lk.nginx.base_url)
        self.assertEqual(tool.credential_type, "")
        ops = {op.name: op for op in tool.operations}
        self.assertEqual(set(ops), {"get", "post", "quiet", "slow"})
        self.assertEqual(ops["get"].method, "GET")
        self.assertEqual(ops["get"].path, "/echo/{item}")
        params = {p.name: p for p in ops["get"].params}
        self.assertEqual(params["item"].type, "string")
        self.assertEqual(getattr(params["item"], "in"), "path")
        self.assertTrue(params["item"].required)
        self.assertEqual(params["n"].type, "integer")
        names = [t.id for t in self.lk.admin(
            "ListTools", admin_pb2.ListRequest()).tools]
        self.assertIn("echo-bearer", names)
        self.assertIn("rec-open", names)

    def test_inline_credential_type_is_registered_with_the_tool(self):
        tool = harness.echo_tool("inline", self.lk.nginx.base_url, {
            "id": "inline-type",
            "fields": [{"name": "pw", "secret": True,
                        "description": "pw"}],
            "inject": [{"in": "header", "name": "X-Api-Key",
                        "value": "{pw}"}]})
        self.lk.register_tool(tool)
        ctype = self.lk.admin("GetCredentialType",
                              admin_pb2.GetRequest(id="inline-type"))
        self.assertEqual([f.name for f in ctype.fields], ["pw"])
        self.assertEqual(ctype.inject[0].name, "X-Api-Key")

    def test_get_of_unknown_records_is_not_found(self):
        for method in ("GetTool", "GetCredential", "GetBudget",
                       "GetCredentialType"):
            with self.subTest(method=method):
                self.assertCode(Code.NOT_FOUND, self.lk.admin, method,
                                admin_pb2.GetRequest(id="nope"))

    def test_long_secret_is_listed_masked_with_at_most_last_four(self):
        secret = harness.make_secret("mask")
        self.assertGreaterEqual(len(secret), 12)
        cred = self.lk.create_credential("bearer-token", {"token": secret},
                                         label="long")
        for shown in (cred,
                      self.lk.admin("GetCredential",
                                    admin_pb2.GetRequest(id=cred.id)),
                      [c for c in self.lk.admin(
                          "ListCredentials",
                          admin_pb2.ListRequest()).credentials
                       if c.id == cred.id][0]):
            field = [f for f in shown.fields if f.name == "token"][0]
            self.assertTrue(field.secret)
            self.assertEqual(field.value, "")
            self.assertFalse(field.HasField("sealed"))
            self.assertTrue(field.mask)
            visible = field.mask.lstrip("\u2022*")
            self.assertLessEqual(len(visible), 4)
            self.assertTrue(secret.endswith(visible))
            self.assertNoSecret(shown.SerializeToString(), secret)
            self.assertEqual(shown.label, "long")
            self.assertEqual(shown.type, "bearer-token")

    def test_short_secret_mask_shows_no_character(self):
        secret = "Qz8#Wv2!"  # 8 characters: under 12, so nothing visible
        cred = self.lk.create_credential("bearer-token", {"token": secret})
        field = self.lk.admin("GetCredential",
                              admin_pb2.GetRequest(id=cred.id)).fields[0]
        for ch in set(secret):
            self.assertNotIn(ch, field.mask)
        self.assertEqual(field.value, "")

    def test_plain_field_is_returned_as_is(self):
        cred = self.lk.create_credential(
            "basic-login", {"user": "robot", "password": "p" * 16})
        fields = {f.name: f for f in self.lk.admin(
            "GetCredential", admin_pb2.GetRequest(id=cred.id)).fields}
        self.assertFalse(fields["user"].secret)
        self.assertEqual(fields["user"].value, "robot")
        self.assertEqual(fields["password"].value, "")

    def test_credential_failing_its_pattern_is_invalid_and_not_echoed(self):
        bad = "has space and\ttab"
        err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.create_credential,
                              "bearer-token", {"token": bad})
        self.assertNotIn(bad, err.details())
        self.assertIn("token", err.details())

    def test_credential_missing_a_field_is_invalid(self):
        err = self.assertCode(Code.INVALID_ARGUMENT, self.lk.create_credential,
                              "basic-login", {"user": "robot"})
        self.assertIn("password", err.details())

    def test_credential_with_a_field_the_type_lacks_is_invalid(self):
        self.assertCode(Code.INVALID_ARGUMENT, self.lk.create_credential,
                        "bearer-token", {"token": "t" * 20, "extra": "x"})

    def test_update_credential_changes_the_injected_secret(self):
        first = harness.make_secret("v1")
        second = harness.make_secret("v2")
        cred = self.credential("bearer-token", {"token": first},
                               bind_tool="echo-bearer")
        self.lk.call("main", "echo-bearer", "get", {"item": "one"})
        updated = self.lk.admin("UpdateCredential",
                                admin_pb2.UpdateCredentialRequest(
                                    id=cred.id, fields={"token": second}))
        self.assertGreater(updated.version, cred.version)
        self.assertNoSecret(updated.SerializeToString(), second)
        resp = self.lk.call("main", "echo-bearer", "get", {"item": "two"})
        self.assertEqual(
            self.lk.nginx.arrivals("/echo/one")[-1]["authorization"],
            "Bearer " + first)
        self.assertEqual(
            self.lk.nginx.arrivals("/echo/two")[-1]["authorization"],
            "Bearer " + second)
        self.assertEqual(json.loads(resp.result.body)["authorization"],
                         "Bearer [REDACTED]")

    def test_bindings_are_listed_per_budget(self):
        cred = self.credential("bearer-token", {"token": "t" * 20},
                               bind_tool="echo-bearer")
        self.lk.bind("main", cred.id, ctype="bearer-token")
        listed = self.lk.admin("ListBindings",
                               admin_pb2.ListBindingsRequest(budget_id="main"))
        got = sorted((b.tool_id, b.credential_type, b.credential_id)
                     for b in listed.bindings)
        self.assertEqual(got, sorted([("echo-bearer", "", cred.id),
                                      ("", "bearer-token", cred.id)]))

    def test_budget_pause_is_recorded(self):
        self.lk.set_paused("main", True)
        self.assertTrue(self.lk.admin(
            "GetBudget", admin_pb2.GetRequest(id="main")).paused)
        self.lk.set_paused("main", False)
        self.assertFalse(self.lk.admin(
            "GetBudget", admin_pb2.GetRequest(id="main")).paused)

    def test_deleted_tool_is_not_found_for_calls(self):
        self.lk.admin("DeleteTool", admin_pb2.DeleteRequest(id="echo-open"))
        self.assertCode(Code.NOT_FOUND, self.lk.call, "main", "echo-open",
                        "get", {"item": "x"})

    def test_deleted_budget_is_not_found_for_calls(self):
        self.lk.admin("DeleteBudget", admin_pb2.DeleteRequest(id="main"))
        self.assertCode(Code.NOT_FOUND, self.lk.call, "main", "echo-open",
                        "get", {"item": "x"})


if __name__ == "__main__":
    harness.main()
