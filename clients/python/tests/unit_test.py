"""The Python client's parts that need no sidecar: function names and
their reversal, argument parsing of untrusted model output, result
decoding, the gRPC-status-to-exception mapping, client settings, and a
real gRPC channel to an address nobody listens on (Unavailable).

    bazel test //clients/python:unit_test
"""

import asyncio
import hashlib
import os
import re
import tempfile
import unittest
from unittest import mock

import grpc

import latchkey
from latchkey import functions as fn
from latchkey import _errors

VALID_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def tool(tool_id, *ops, ready=True):
    return latchkey.Tool(
        id=tool_id, description="tool " + tool_id, credential_ready=ready,
        credential_type="" if ready else "some-type",
        operations=tuple(latchkey.Operation(
            name=op, description="does " + op, method="GET", path="/" + op,
            parameters={"type": "object",
                        "properties": {"x": {"type": "string"}},
                        "required": ["x"], "additionalProperties": False})
            for op in ops))


class FunctionNameTest(unittest.TestCase):
    def test_plain_ids_give_tool_double_underscore_operation(self):
        self.assertEqual(latchkey.function_name("weather", "forecast"),
                         "weather__forecast")
        self.assertEqual(latchkey.function_name("g-drive", "list_files"),
                         "g-drive__list_files")
        # Up to the 64-character limit of LLM APIs.
        self.assertEqual(latchkey.function_name("t" * 60, "op"),
                         "t" * 60 + "__op")

    def test_ids_that_would_not_split_back_get_a_hashed_name(self):
        for tool_id, op in (("api.v2", "get"), ("a__b", "c"), ("a_", "b"),
                            ("t" * 61, "op"), ("x" * 128, "y" * 128),
                            ("tool", "op.x")):
            name = latchkey.function_name(tool_id, op)
            self.assertRegex(name, VALID_NAME)
            digest = hashlib.sha256(
                (tool_id + "\0" + op).encode()).hexdigest()[:10]
            self.assertTrue(name.endswith("_" + digest), name)
            # A pure function of the ids: the same name every time.
            self.assertEqual(latchkey.function_name(tool_id, op), name)

    def test_odd_ids_get_the_same_name_in_every_client(self):
        # The vector clients/node's unit test checks too.
        self.assertEqual(latchkey.function_name("maps.v2", "route"),
                         "maps-v2__route_608ab52e28")

    def test_long_names_keep_both_ids_visible(self):
        name = latchkey.function_name("x" * 128, "y" * 128)
        self.assertEqual(len(name), 64)
        self.assertIn("x__y", name)

    def test_resolve_reverses_every_name(self):
        tools = [tool("weather", "forecast", "alerts"),
                 tool("api.v2", "get"), tool("a__b", "c"),
                 tool("x" * 128, "y" * 128)]
        functions = latchkey.ToolFunctions(tools)
        self.assertEqual(len(functions), 5)
        seen = set()
        for t in tools:
            for op in t.operations:
                name = latchkey.function_name(t.id, op.name)
                self.assertIn(name, functions)
                self.assertEqual(functions.resolve(name), (t.id, op.name))
                seen.add(name)
        self.assertEqual(seen, set(functions.names))

    def test_two_operations_sharing_a_name_are_refused(self):
        clash = latchkey.function_name("a.b", "get")   # "a-b__get_<hash>"
        op = clash.split("__", 1)[1]
        with self.assertRaises(ValueError) as ctx:
            latchkey.ToolFunctions([tool("a.b", "get"), tool("a-b", op)])
        self.assertIn(clash, str(ctx.exception))

    def test_definitions_are_openai_style_and_fresh(self):
        functions = latchkey.ToolFunctions([tool("weather", "forecast")])
        defs = functions.definitions
        self.assertEqual(defs, [{
            "type": "function",
            "function": {
                "name": "weather__forecast",
                "description": "does forecast (tool weather: tool weather)",
                "parameters": {"type": "object",
                               "properties": {"x": {"type": "string"}},
                               "required": ["x"],
                               "additionalProperties": False}}}])
        defs[0]["function"]["parameters"]["required"].append("y")
        self.assertEqual(
            functions.definitions[0]["function"]["parameters"]["required"],
            ["x"])
        self.assertEqual(functions.anthropic_definitions(), [{
            "name": "weather__forecast",
            "description": "does forecast (tool weather: tool weather)",
            "input_schema": functions.definitions[0]["function"][
                "parameters"]}])

    def test_unknown_function_is_not_found(self):
        functions = latchkey.ToolFunctions([tool("weather", "forecast")])
        with self.assertRaises(latchkey.NotFound) as ctx:
            functions.resolve("weather__delete_everything")
        self.assertEqual(ctx.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("weather__forecast", ctx.exception.message)
        with self.assertRaises(latchkey.NotFound):
            functions.resolve(None)

    def test_call_dispatches_to_the_client(self):
        calls = []

        class Recorder:
            def call(self, *args, **kwargs):
                calls.append((args, kwargs))
                return "answer"

        functions = latchkey.ToolFunctions([tool("weather", "forecast")])
        self.assertEqual(functions.call(Recorder(), "main",
                                        "weather__forecast", '{"x": "oslo"}',
                                        timeout=2.5), "answer")
        self.assertEqual(calls, [(("main", "weather", "forecast",
                                   {"x": "oslo"}),
                                  {"timeout": 2.5, "request_id": None})])


class ArgumentsTest(unittest.TestCase):
    parse = staticmethod(latchkey.ToolFunctions.parse_arguments)

    def test_json_text_bytes_mapping_and_nothing(self):
        self.assertEqual(self.parse('{"a": 1, "b": [true]}'),
                         {"a": 1, "b": [True]})
        self.assertEqual(self.parse(b'{"a": "\xc3\xa9"}'), {"a": "\u00e9"})
        self.assertEqual(self.parse({"a": 1}), {"a": 1})
        self.assertEqual(self.parse(None), {})
        self.assertEqual(self.parse("  "), {})

    def test_anything_but_one_json_object_is_invalid_argument(self):
        for bad, why in (("[1, 2]", "JSON object"), ("42", "JSON object"),
                         ('{"a": ', "not valid JSON"),
                         (b"\xff{}", "not UTF-8"), (3.5, "JSON object")):
            with self.assertRaises(latchkey.InvalidArgument) as ctx:
                self.parse(bad)
            self.assertEqual(ctx.exception.code,
                             grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(why, ctx.exception.message)

    def test_oversized_arguments_are_refused_before_parsing(self):
        big = '{"a": "' + "x" * fn.MAX_ARGUMENTS_BYTES + '"}'
        with mock.patch("json.loads") as loads:
            for value in (big, big.encode()):
                with self.assertRaises(latchkey.InvalidArgument) as ctx:
                    self.parse(value)
                self.assertIn("over %d bytes" % fn.MAX_ARGUMENTS_BYTES,
                              ctx.exception.message)
            loads.assert_not_called()


class CallResultTest(unittest.TestCase):
    def result(self, content_type, body, **kw):
        return latchkey.CallResult(status=kw.pop("status", 200),
                                   content_type=content_type, body=body, **kw)

    def test_json_content_types(self):
        for ct in ("application/json", "application/json; charset=utf-8",
                   "Application/Problem+JSON"):
            self.assertTrue(self.result(ct, b"{}").is_json, ct)
        for ct in ("text/plain", "", "application/jsonx"):
            self.assertFalse(self.result(ct, b"{}").is_json, ct)
        self.assertEqual(self.result("application/json",
                                     b'{"a": [1]}').json(), {"a": [1]})

    def test_json_of_a_non_json_body_is_value_error(self):
        with self.assertRaises(ValueError) as ctx:
            self.result("text/html", b"<p>hi</p>").json()
        self.assertIn("text/html", str(ctx.exception))
        with self.assertRaises(ValueError):
            self.result("application/json", b"not json").json()

    def test_header_lookup_ignores_case(self):
        r = self.result("text/plain", b"", headers={"X-Echo": "[REDACTED]"})
        self.assertEqual(r.header("x-echo"), "[REDACTED]")
        self.assertIsNone(r.header("x-other"))
        self.assertEqual(dict(self.result("text/plain", b"").headers), {})

    def test_as_dict_for_the_model(self):
        self.assertEqual(
            self.result("application/json", b'{"t": 1}',
                        redacted=True).as_dict(),
            {"status": 200, "content_type": "application/json",
             "redacted": True, "json": {"t": 1}})
        self.assertEqual(
            self.result("text/plain", b"caf\xc3\xa9 \xff",
                        status=404).as_dict(),
            {"status": 404, "content_type": "text/plain", "redacted": False,
             "text": "caf\u00e9 \ufffd"})
        self.assertFalse(self.result("text/plain", b"", status=404).ok)


class ErrorsTest(unittest.TestCase):
    def test_each_status_code_has_its_class(self):
        expected = {
            grpc.StatusCode.NOT_FOUND: latchkey.NotFound,
            grpc.StatusCode.INVALID_ARGUMENT: latchkey.InvalidArgument,
            grpc.StatusCode.PERMISSION_DENIED: latchkey.PermissionDenied,
            grpc.StatusCode.FAILED_PRECONDITION: latchkey.FailedPrecondition,
            grpc.StatusCode.UNAUTHENTICATED: latchkey.Unauthenticated,
            grpc.StatusCode.DEADLINE_EXCEEDED: latchkey.DeadlineExceeded,
            grpc.StatusCode.UNAVAILABLE: latchkey.Unavailable,
            grpc.StatusCode.RESOURCE_EXHAUSTED: latchkey.ResourceExhausted,
        }
        for code, cls in expected.items():
            err = _errors.error_for(code, "why")
            self.assertIs(type(err), cls)
            self.assertEqual((err.code, err.message), (code, "why"))
            self.assertEqual(str(err), code.name + ": why")

    def test_other_codes_are_the_base_class(self):
        err = _errors.error_for(grpc.StatusCode.INTERNAL, "")
        self.assertIs(type(err), latchkey.LatchkeyError)
        self.assertEqual(err.message, "(no message from the server)")
        self.assertEqual(_errors.error_for(None, "x").code,
                         grpc.StatusCode.UNKNOWN)

    def test_missing_credential_message_leads_to_setup(self):
        field = latchkey.CredentialField("api_key", True, "^k_", "The key")
        err = latchkey.MissingCredential("main", "weather", "weather-key",
                                         (field,), "https://setup/x",
                                         "latchkeyctl bind main ...")
        self.assertEqual(str(err),
                         "tool 'weather' needs a credential of type "
                         "'weather-key' (fields: api_key) bound in budget "
                         "'main'; set it up at https://setup/x")
        no_url = latchkey.MissingCredential("main", "weather", "weather-key",
                                            (field,), "", "run latchkeyctl")
        self.assertTrue(str(no_url).endswith("; run latchkeyctl"))
        self.assertEqual(err.as_dict()["required_fields"],
                         [{"name": "api_key", "secret": True,
                           "pattern": "^k_", "description": "The key"}])


class ClientSettingsTest(unittest.TestCase):
    def test_bad_settings_are_refused(self):
        with self.assertRaises(ValueError):
            latchkey.Client("")
        with self.assertRaises(ValueError):
            latchkey.Client("unix:/x", timeout=0)
        with self.assertRaises(ValueError):
            latchkey.Client("unix:/x", agent_token="tok\r\nx-evil: 1")

    def test_repr_never_shows_the_token(self):
        with latchkey.Client("unix:/x", agent_token="s3cr3t-token") as lk:
            self.assertNotIn("s3cr3t-token", repr(lk))
            self.assertIn("<set>", repr(lk))

    def test_arguments_given_twice_are_refused(self):
        with latchkey.Client("unix:/x") as lk:
            with self.assertRaises(TypeError):
                lk.call("main", "t", "op", {"a": 1}, a=2)
            with self.assertRaises(TypeError):
                lk.call("main", "t", "op", ["a"])

    def test_from_env_reads_address_and_token_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "agent.token")
            with open(path, "w") as f:
                f.write("tok-from-file\n")
            env = {"LATCHKEY_SIDECAR": "unix:" + d + "/agent.sock",
                   "LATCHKEY_AGENT_TOKEN_FILE": path}
            with mock.patch.dict(os.environ, env, clear=False):
                with latchkey.Client.from_env(timeout=3) as lk:
                    self.assertEqual(lk.address, env["LATCHKEY_SIDECAR"])
                    self.assertEqual(lk.timeout, 3)
                    self.assertEqual(
                        lk._metadata,
                        (("authorization", "Bearer tok-from-file"),))
            with open(path, "w") as f:
                f.write("x" * 5000)
            with mock.patch.dict(os.environ, env, clear=False):
                with self.assertRaises(ValueError):
                    latchkey.Client.from_env()
        with mock.patch.dict(os.environ, {"LATCHKEY_AGENT_TOKEN": "t"},
                             clear=True):
            with latchkey.Client.from_env() as lk:
                self.assertEqual(lk.address, latchkey.DEFAULT_ADDRESS)
                self.assertEqual(lk._metadata,
                                 (("authorization", "Bearer t"),))


class UnavailableTest(unittest.TestCase):
    """A real gRPC channel to a Unix socket nobody listens on."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.address = "unix:" + os.path.join(self.dir.name, "none.sock")

    def tearDown(self):
        self.dir.cleanup()

    def test_sync_client_raises_unavailable(self):
        with latchkey.Client(self.address, timeout=5) as lk:
            with self.assertRaises(latchkey.Unavailable) as ctx:
                lk.list_tools("main")
            self.assertEqual(ctx.exception.code, grpc.StatusCode.UNAVAILABLE)
            with self.assertRaises(latchkey.Unavailable):
                lk.call("main", "t", "op", x=1)

    def test_async_client_raises_unavailable(self):
        async def go():
            async with latchkey.AsyncClient(self.address, timeout=5) as lk:
                with self.assertRaises(latchkey.Unavailable):
                    await lk.call("main", "t", "op", x=1)
                with self.assertRaises(latchkey.Unavailable):
                    await lk.list_tools("main")
        asyncio.run(go())


if __name__ == "__main__":
    unittest.main(verbosity=2)
