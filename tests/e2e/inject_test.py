"""Every inject rule puts the secret where the credential type says, the
vendor really receives it, and the agent gets the echo back scrubbed;
binding resolution picks the right credential; the agent cannot set or
override an injected field."""

import base64
import json
import urllib.parse

import grpc

import harness


class InjectTest(harness.StackTestCase):

    def test_header_rule_sends_bearer_token_and_agent_sees_it_redacted(self):
        secret = harness.make_secret("hdr")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer")
        resp = self.lk.call("main", "echo-bearer", "get", {"item": "a"})
        arrived = self.lk.nginx.arrivals("/echo/")
        self.assertEqual(arrived[-1]["authorization"], "Bearer " + secret)
        body = json.loads(resp.result.body)
        self.assertEqual(body["authorization"], "Bearer [REDACTED]")
        self.assertTrue(resp.result.redacted)
        self.assertNoSecret(harness.whole_response(resp), secret)

    def test_custom_header_rule_sends_api_key(self):
        secret = harness.make_secret("xak")
        self.credential("api-key", {"api_key": secret},
                        bind_tool="echo-apikey")
        resp = self.lk.call("main", "echo-apikey", "get", {"item": "a"})
        self.assertEqual(self.lk.nginx.arrivals("/echo/")[-1]["x_api_key"],
                         secret)
        body = json.loads(resp.result.body)
        self.assertEqual(body["x_api_key"], "[REDACTED]")
        self.assertEqual(body["authorization"], "")
        self.assertTrue(resp.result.redacted)
        self.assertNoSecret(harness.whole_response(resp), secret)

    def test_query_rule_sends_key_and_agent_sees_it_redacted(self):
        secret = harness.make_secret("qry")
        self.credential("query-key", {"api_key": secret},
                        bind_tool="echo-query")
        resp = self.lk.call("main", "echo-query", "get",
                            {"item": "a", "q": "hello"})
        args = urllib.parse.parse_qs(
            self.lk.nginx.arrivals("/echo/")[-1]["args"])
        self.assertEqual(args["key"], [secret])
        self.assertEqual(args["q"], ["hello"])
        body = json.loads(resp.result.body)
        self.assertIn("[REDACTED]", body["query"])
        self.assertIn("q=hello", body["query"])
        self.assertTrue(resp.result.redacted)
        self.assertNoSecret(harness.whole_response(resp), secret)

    def test_basic_rule_sends_user_and_password_and_agent_sees_it_redacted(self):
        password = harness.make_secret("bas")
        self.credential("basic-login", {"user": "robot", "password": password},
                        bind_tool="echo-basic")
        resp = self.lk.call("main", "echo-basic", "get", {"item": "a"})
        auth = self.lk.nginx.arrivals("/echo/")[-1]["authorization"]
        self.assertTrue(auth.startswith("Basic "), auth)
        self.assertEqual(base64.b64decode(auth[6:]).decode(),
                         "robot:" + password)
        body = json.loads(resp.result.body)
        self.assertEqual(body["authorization"], "Basic [REDACTED]")
        self.assertTrue(resp.result.redacted)
        self.assertNoSecret(harness.whole_response(resp), password)
        self.assertNotIn(auth[6:].encode(), harness.whole_response(resp))

    def test_body_rule_adds_field_to_json_body_and_agent_sees_it_redacted(self):
        secret = harness.make_secret("bdy")
        self.credential("body-key", {"api_key": secret},
                        bind_tool="echo-body")
        resp = self.lk.call("main", "echo-body", "post", {"note": "hi"})
        sent = json.loads(self.lk.nginx.arrivals("/body/")[-1]["body"])
        self.assertEqual(sent, {"note": "hi", "api_key": secret})
        self.assertEqual(json.loads(resp.result.body),
                         {"note": "hi", "api_key": "[REDACTED]"})
        self.assertTrue(resp.result.redacted)
        self.assertNoSecret(harness.whole_response(resp), secret)

    def test_body_rule_creates_body_when_agent_sends_no_body_params(self):
        secret = harness.make_secret("bd0")
        self.credential("body-key", {"api_key": secret},
                        bind_tool="echo-body")
        resp = self.lk.call("main", "echo-body", "post", {})
        sent = json.loads(self.lk.nginx.arrivals("/body/")[-1]["body"])
        self.assertEqual(sent, {"api_key": secret})
        self.assertEqual(json.loads(resp.result.body),
                         {"api_key": "[REDACTED]"})

    def test_several_rules_apply_at_once(self):
        token = harness.make_secret("mt")
        key = harness.make_secret("mk")
        self.credential("multi-key", {"token": token, "api_key": key},
                        bind_tool="echo-multi")
        resp = self.lk.call("main", "echo-multi", "post", {"note": "n"})
        arrived = self.lk.nginx.arrivals("/body/")[-1]
        self.assertEqual(arrived["authorization"], "Bearer " + token)
        self.assertEqual(urllib.parse.parse_qs(arrived["args"])["key"], [key])
        self.assertEqual(json.loads(arrived["body"]),
                         {"note": "n", "api_key": key})
        self.assertEqual(json.loads(resp.result.body),
                         {"note": "n", "api_key": "[REDACTED]"})
        resp = self.lk.call("main", "echo-multi", "get", {"item": "g"})
        got = self.lk.nginx.arrivals("/echo/g")[-1]
        self.assertEqual(got["authorization"], "Bearer " + token)
        self.assertEqual(urllib.parse.parse_qs(got["args"])["key"], [key])
        body = json.loads(resp.result.body)
        self.assertEqual(body["authorization"], "Bearer [REDACTED]")
        self.assertIn("key=[REDACTED]", body["query"])
        whole = harness.whole_response(resp)
        self.assertNoSecret(whole, token)
        self.assertNoSecret(whole, key)

    def test_operation_keeps_its_method_when_the_type_has_a_body_rule(self):
        # A GET stays a GET: a body rule must not turn it into a POST.
        key = harness.make_secret("gm")
        self.credential("multi-key", {"token": "t" * 20, "api_key": key},
                        bind_tool="echo-multi")
        self.lk.call("main", "echo-multi", "get", {"item": "m"})
        self.lk.call("main", "echo-multi", "post", {"note": "m"})
        self.assertEqual(self.lk.nginx.arrivals("/echo/m")[-1]["method"],
                         "GET")
        self.assertEqual(self.lk.nginx.arrivals("/body/")[-1]["method"],
                         "POST")

    def test_budget_wide_binding_serves_every_tool_of_the_type(self):
        secret = harness.make_secret("bw")
        self.lk.register_tool(harness.echo_tool(
            "echo-bearer-2", self.lk.nginx.base_url, "bearer-token"))
        self.credential("bearer-token", {"token": secret},
                        bind_type="bearer-token")
        for tool in ("echo-bearer", "echo-bearer-2"):
            resp = self.lk.call("main", tool, "get", {"item": tool})
            self.assertEqual(resp.WhichOneof("outcome"), "result")
            arrived = self.lk.nginx.arrivals("/echo/" + tool)
            self.assertEqual(arrived[-1]["authorization"], "Bearer " + secret)

    def test_tool_specific_binding_overrides_budget_wide_binding(self):
        wide = harness.make_secret("wide")
        specific = harness.make_secret("spec")
        self.lk.register_tool(harness.echo_tool(
            "echo-bearer-2", self.lk.nginx.base_url, "bearer-token"))
        self.credential("bearer-token", {"token": wide},
                        bind_type="bearer-token", label="wide")
        self.credential("bearer-token", {"token": specific},
                        bind_tool="echo-bearer", label="specific")

        self.lk.call("main", "echo-bearer", "get", {"item": "one"})
        self.lk.call("main", "echo-bearer-2", "get", {"item": "two"})
        self.assertEqual(
            self.lk.nginx.arrivals("/echo/one")[-1]["authorization"],
            "Bearer " + specific)
        self.assertEqual(
            self.lk.nginx.arrivals("/echo/two")[-1]["authorization"],
            "Bearer " + wide)

        # Without the tool-specific binding the budget-wide one applies.
        self.lk.unbind("main", tool="echo-bearer")
        self.lk.call("main", "echo-bearer", "get", {"item": "three"})
        self.assertEqual(
            self.lk.nginx.arrivals("/echo/three")[-1]["authorization"],
            "Bearer " + wide)

    def test_binding_of_another_budget_is_not_used(self):
        secret = harness.make_secret("oth")
        self.lk.create_budget("second")
        self.credential("bearer-token", {"token": secret},
                        bind_tool="echo-bearer", budget="second")
        resp = self.lk.call("main", "echo-bearer", "get", {"item": "a"})
        self.assertEqual(resp.WhichOneof("outcome"), "missing_credential")
        self.assertEqual(self.lk.nginx.arrivals("/echo/", expect=0,
                                                timeout=0.3), [])
        self.assertNoSecret(harness.whole_response(resp), secret)

    def test_agent_cannot_add_a_query_param_named_like_the_injected_one(self):
        secret = harness.make_secret("ovq")
        self.credential("query-key", {"api_key": secret},
                        bind_tool="echo-query")
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, self.lk.call,
                        "main", "echo-query", "get",
                        {"item": "a", "key": "agent-value"})
        self.assertEqual(self.lk.nginx.arrivals("/echo/", expect=0,
                                                timeout=0.3), [])

    def test_agent_cannot_add_a_body_field_named_like_the_injected_one(self):
        secret = harness.make_secret("ovb")
        self.credential("body-key", {"api_key": secret},
                        bind_tool="echo-body")
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, self.lk.call,
                        "main", "echo-body", "post",
                        {"note": "n", "api_key": "agent-value"})
        self.assertEqual(self.lk.nginx.arrivals("/body/", expect=0,
                                                timeout=0.3), [])

    def _declared_collision(self, ctype, where, op, args, received):
        """A tool that declares a param with the injected field's name: the
        sidecar must refuse the tool or the call, or send only the secret."""
        secret = harness.make_secret("col")
        tool = {
            "id": "collide-" + where, "base_url": self.lk.vendor.base_url,
            "credential_type": ctype, "description": "collides",
            "operations": [{"name": op, "method": "POST" if where == "body"
                            else "GET", "path": "/collide/" + where,
                            "params": [{"name": args[0], "in": where,
                                        "type": "string"}]}]}
        try:
            self.lk.register_tool(tool)
        except grpc.RpcError as err:
            self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT,
                             err.details())
            return
        self.credential(ctype, {"api_key": secret},
                        bind_tool="collide-" + where)
        try:
            self.lk.call("main", "collide-" + where, op,
                         {args[0]: args[1]})
        except grpc.RpcError as err:
            self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT,
                             err.details())
            self.assertEqual(self.lk.vendor.requests("/collide/"), [])
            return
        got = self.lk.vendor.requests("/collide/")
        self.assertEqual(len(got), 1)
        self.assertEqual(received(got[0]), [secret])

    def test_declared_query_param_cannot_override_injected_query_field(self):
        self._declared_collision(
            "query-key", "query", "get", ("key", "agent-value"),
            lambda r: r["query"].get("key"))

    def test_declared_body_param_cannot_override_injected_body_field(self):
        def body_values(r):
            # Duplicate JSON keys would smuggle a value past a naive check:
            # collect every "api_key" the vendor's parser saw.
            values = []

            def hook(pairs):
                values.extend(v for k, v in pairs if k == "api_key")
                return dict(pairs)
            json.loads(r["body"], object_pairs_hook=hook)
            return values
        self._declared_collision(
            "body-key", "body", "post", ("api_key", "agent-value"),
            body_values)


if __name__ == "__main__":
    harness.main()
