"""ToolCalls/ListTools: each tool with its operations, a JSON-Schema object
of each operation's params ready for LLM function calling, and whether a
credential is bound for the budget."""

import json

import harness


class ListToolsTest(harness.StackTestCase):

    def _tools(self, budget="main"):
        return {t.tool_id: t for t in self.lk.list_tools(budget).tools}

    def test_lists_registered_tools_with_their_operations(self):
        tools = self._tools()
        self.assertTrue({"echo-bearer", "echo-open", "rec-open"} <= set(tools))
        info = tools["echo-bearer"]
        self.assertEqual(info.credential_type, "bearer-token")
        self.assertEqual(info.description, "nginx echo with bearer-token")
        ops = {op.name: op for op in info.operations}
        self.assertEqual(set(ops), {"get", "post", "quiet", "slow"})
        self.assertEqual(ops["get"].method, "GET")
        self.assertEqual(ops["get"].path, "/echo/{item}")
        self.assertEqual(ops["get"].description, "Echo what arrived")
        self.assertEqual(tools["echo-open"].credential_type, "")

    def test_parameters_schema_is_a_json_schema_object(self):
        ops = {op.name: op for op in self._tools()["echo-open"].operations}
        schema = json.loads(ops["get"].parameters_json_schema)
        self.assertEqual(schema["type"], "object")
        props = schema["properties"]
        self.assertEqual(set(props), {"item", "q", "n"})
        self.assertEqual(props["item"]["type"], "string")
        self.assertEqual(props["n"]["type"], "integer")
        self.assertEqual(props["n"]["description"], "A number")
        self.assertEqual(schema["required"], ["item"])
        post = json.loads(ops["post"].parameters_json_schema)
        self.assertEqual(post["properties"]["flag"]["type"], "boolean")
        self.assertNotIn("item", post["properties"])
        self.assertEqual(post.get("required", []), [])
        quiet = json.loads(ops["quiet"].parameters_json_schema)
        self.assertEqual(quiet["type"], "object")
        self.assertEqual(quiet.get("properties", {}), {})

    def test_schema_never_offers_an_injected_field(self):
        ops = {op.name: op for op in self._tools()["echo-query"].operations}
        for op in ops.values():
            props = json.loads(op.parameters_json_schema).get("properties", {})
            self.assertNotIn("key", props)

    def test_credential_ready_follows_bindings(self):
        self.assertFalse(self._tools()["echo-bearer"].credential_ready)
        cred = self.credential("bearer-token", {"token": "t" * 20},
                               bind_tool="echo-bearer")
        self.assertTrue(self._tools()["echo-bearer"].credential_ready)
        self.assertFalse(self._tools()["echo-apikey"].credential_ready)
        self.lk.unbind("main", tool="echo-bearer")
        self.assertFalse(self._tools()["echo-bearer"].credential_ready)
        self.lk.bind("main", cred.id, ctype="bearer-token")
        self.assertTrue(self._tools()["echo-bearer"].credential_ready)

    def test_credential_ready_is_per_budget(self):
        self.lk.create_budget("second")
        self.credential("api-key", {"api_key": "k" * 20},
                        bind_tool="echo-apikey", budget="second")
        self.assertTrue(self._tools("second")["echo-apikey"].credential_ready)
        self.assertFalse(self._tools("main")["echo-apikey"].credential_ready)


if __name__ == "__main__":
    harness.main()
