"""The Python client (clients/python, package `latchkey`) against a real
latchkeyd started by stack.py, over the transport stack.py chose.

Every behaviour is proved for both clients: Client (grpc) and AsyncClient
(grpc.aio) run the same checks through one small adapter. The canary
secret (LATCHKEY_INTEROP_SECRET) must never appear in anything a client
returns or raises: only as [REDACTED] in the vendor's echo.

    run by //tests/interop:python_unix_test and :python_tcp_test
"""

import asyncio
import json
import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                "clients", "python"))

import grpc  # noqa: E402

import latchkey  # noqa: E402

ADDRESS = os.environ["LATCHKEY_INTEROP_ADDRESS"]
TOKEN = os.environ["LATCHKEY_INTEROP_AGENT_TOKEN"]
SECRET = os.environ["LATCHKEY_INTEROP_SECRET"]
with open(os.environ["LATCHKEY_INTEROP_FIXTURE"]) as _f:
    FIXTURE = json.load(_f)
BUDGET = FIXTURE["budget"]
OTHER_BUDGET = FIXTURE["other_budget"]
ECHO = FIXTURE["echo_tool"]
UNBOUND = FIXTURE["unbound_tool"]
UNBOUND_TYPE = FIXTURE["unbound_type"]
SLOW = FIXTURE["slow_tool"]
SETUP_URL = FIXTURE["setup_url_template"].format(
    tool=UNBOUND, budget=BUDGET, type=UNBOUND_TYPE)
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

_UNSET = object()


class ClientContract:
    """The checks; subclasses say how to make a client and run a call."""

    def client(self, token=_UNSET, timeout=10.0):
        raise NotImplementedError

    def done(self, value):
        """The value of a client method's return (awaited for async)."""
        raise NotImplementedError

    def assertNoSecret(self, value):
        self.assertNotIn(SECRET, repr(value))
        self.assertNotIn(SECRET, str(value))

    def raises(self, cls, fn, *args, **kwargs):
        """The exception of class cls that fn(*args, **kwargs) raises."""
        with self.assertRaises(cls) as ctx:
            self.done(fn(*args, **kwargs))
        self.assertNoSecret(ctx.exception)
        return ctx.exception

    def test_list_tools_gives_function_definitions(self):
        tools = {t.id: t for t in self.done(self.lk.list_tools(BUDGET))}
        self.assertEqual(set(tools), {ECHO, UNBOUND, SLOW})
        self.assertTrue(tools[ECHO].credential_ready)
        self.assertFalse(tools[UNBOUND].credential_ready)
        self.assertEqual(tools[UNBOUND].credential_type, UNBOUND_TYPE)
        get = tools[ECHO].operation("get")
        self.assertEqual((get.method, get.path), ("GET", "/echo/{item}"))
        self.assertEqual(get.parameters["type"], "object")
        self.assertEqual(get.parameters["required"], ["item"])
        self.assertEqual(
            {k: v["type"] for k, v in get.parameters["properties"].items()},
            {"item": "string", "q": "string", "n": "integer"})
        self.assertIs(get.parameters["additionalProperties"], False)

        functions = latchkey.ToolFunctions(tools.values())
        defs = functions.definitions
        self.assertEqual(len(defs), sum(len(t.operations)
                                        for t in tools.values()))
        by_name = {d["function"]["name"]: d for d in defs}
        self.assertIn("echo__get", by_name)
        self.assertIn("unbound__get", by_name)
        self.assertIn("slow__wait", by_name)
        for name, d in by_name.items():
            self.assertEqual(d["type"], "function")
            self.assertRegex(name, FUNCTION_NAME)
            self.assertTrue(d["function"]["description"])
            # JSON-ready as an LLM API needs it, and reversible.
            self.assertEqual(json.loads(json.dumps(d)), d)
            tool_id, op = functions.resolve(name)
            self.assertEqual(latchkey.function_name(tool_id, op), name)
        self.assertEqual(by_name["echo__get"]["function"]["parameters"],
                         dict(get.parameters))
        self.assertIn("Echo what arrived",
                      by_name["echo__get"]["function"]["description"])

    def test_call_injects_credential_and_redacts_echo(self):
        result = self.done(self.lk.call(BUDGET, ECHO, "get", item="hello",
                                       q="rain", n=3))
        self.assertIsInstance(result, latchkey.CallResult)
        self.assertEqual(result.status, 200)
        self.assertTrue(result.ok)
        self.assertTrue(result.is_json)
        self.assertTrue(result.content_type.startswith("application/json"))
        echo = result.json()
        # The vendor received the secret (it echoed a bearer token) and the
        # agent sees only its scrubbed form.
        self.assertEqual(echo["authorization"], "Bearer [REDACTED]")
        self.assertEqual(result.header("X-Echo-Authorization"),
                         "Bearer [REDACTED]")
        self.assertTrue(result.redacted)
        self.assertEqual(echo["uri"], "/echo/hello?q=rain&n=3")
        self.assertNotIn(SECRET.encode(), result.body)
        self.assertNoSecret(result)
        self.assertNoSecret(result.headers)

    def test_call_takes_arguments_as_a_mapping(self):
        result = self.done(self.lk.call(BUDGET, ECHO, "post",
                                       {"note": "hi there", "count": 2},
                                       flag=True))
        self.assertEqual(result.status, 200)
        self.assertEqual(result.json(),
                         {"note": "hi there", "count": 2, "flag": True})
        self.assertFalse(result.redacted)

    def test_function_call_runs_through_latchkey(self):
        functions = latchkey.ToolFunctions(
            self.done(self.lk.list_tools(BUDGET)))
        result = self.done(functions.call(self.lk, BUDGET, "echo__get",
                                         '{"item": "from-model"}'))
        self.assertEqual(result.json()["authorization"], "Bearer [REDACTED]")
        self.assertEqual(result.json()["uri"], "/echo/from-model")
        self.assertEqual(result.as_dict()["json"]["uri"], "/echo/from-model")
        self.assertTrue(result.as_dict()["redacted"])
        err = self.raises(latchkey.NotFound, functions.call, self.lk, BUDGET,
                          "echo__nope", "{}")
        self.assertIn("echo__get", err.message)
        err = self.raises(latchkey.InvalidArgument, functions.call, self.lk,
                          BUDGET, "echo__get", '["item"]')
        self.assertIn("JSON object", err.message)

    def test_missing_credential_names_fields_and_setup_url(self):
        err = self.raises(latchkey.MissingCredential, self.lk.call, BUDGET,
                          UNBOUND, "get", item="x")
        self.assertIsInstance(err, latchkey.LatchkeyError)
        self.assertEqual(err.code, grpc.StatusCode.OK)
        self.assertEqual((err.budget, err.tool, err.credential_type),
                         (BUDGET, UNBOUND, UNBOUND_TYPE))
        self.assertEqual(err.required_fields, (latchkey.CredentialField(
            name="api_key", secret=True, pattern="",
            description="The vendor's API key"),))
        self.assertEqual(err.setup_url, SETUP_URL)
        self.assertIn("latchkeyctl credential create --type " + UNBOUND_TYPE,
                      err.hint)
        self.assertIn(SETUP_URL, str(err))
        as_dict = err.as_dict()
        self.assertEqual(as_dict["error"], "missing_credential")
        self.assertEqual(as_dict["setup_url"], SETUP_URL)
        self.assertEqual(as_dict["required_fields"][0]["name"], "api_key")

    def test_invalid_argument_names_the_parameter(self):
        err = self.raises(latchkey.InvalidArgument, self.lk.call, BUDGET,
                          ECHO, "get", item="x", n="not a number")
        self.assertEqual(err.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("'n'", err.message)
        err = self.raises(latchkey.InvalidArgument, self.lk.call, BUDGET,
                          ECHO, "get", q="no item")
        self.assertIn("item", err.message)
        err = self.raises(latchkey.InvalidArgument, self.lk.call, BUDGET,
                          ECHO, "get", item="x", colour="red")
        self.assertIn("colour", err.message)

    def test_deadline_exceeded_on_a_slow_vendor(self):
        err = self.raises(latchkey.DeadlineExceeded, self.lk.call, BUDGET,
                          SLOW, "wait", timeout=0.3)
        self.assertEqual(err.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        # The client's own default deadline applies when a call names none.
        lk = self.client(timeout=0.3)
        self.raises(latchkey.DeadlineExceeded, lk.call, BUDGET, SLOW, "wait")
        # And a deadline long enough lets the same call succeed.
        result = self.done(self.lk.call(BUDGET, SLOW, "wait", timeout=5))
        self.assertEqual(result.json(), {"slept_ms": 1000})

    def test_permission_denied_for_another_agents_budget(self):
        err = self.raises(latchkey.PermissionDenied, self.lk.call,
                          OTHER_BUDGET, ECHO, "get", item="x")
        self.assertEqual(err.code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn(OTHER_BUDGET, err.message)
        self.raises(latchkey.PermissionDenied, self.lk.list_tools,
                    OTHER_BUDGET)

    def test_not_found_for_unknown_tool_and_operation(self):
        err = self.raises(latchkey.NotFound, self.lk.call, BUDGET,
                          "no-such-tool", "get")
        self.assertEqual(err.code, grpc.StatusCode.NOT_FOUND)
        self.raises(latchkey.NotFound, self.lk.call, BUDGET, ECHO,
                    "no-such-op")

    def test_unauthenticated_without_the_agent_token(self):
        for token in (None, "wrong-" + TOKEN):
            lk = self.client(token=token)
            err = self.raises(latchkey.Unauthenticated, lk.list_tools, BUDGET)
            self.assertEqual(err.code, grpc.StatusCode.UNAUTHENTICATED)
            self.assertNotIn(TOKEN, str(err))
            self.raises(latchkey.Unauthenticated, lk.call, BUDGET, ECHO,
                        "get", item="x")

    def test_every_error_is_a_latchkey_error(self):
        for cls in (latchkey.NotFound, latchkey.InvalidArgument,
                    latchkey.PermissionDenied, latchkey.FailedPrecondition,
                    latchkey.Unauthenticated, latchkey.DeadlineExceeded,
                    latchkey.Unavailable, latchkey.ResourceExhausted,
                    latchkey.MissingCredential):
            self.assertTrue(issubclass(cls, latchkey.LatchkeyError))


class SyncClientTest(ClientContract, unittest.TestCase):
    def setUp(self):
        self._clients = []
        self.lk = self.client()

    def tearDown(self):
        for c in self._clients:
            c.close()

    def client(self, token=_UNSET, timeout=10.0):
        c = latchkey.Client(ADDRESS,
                            agent_token=TOKEN if token is _UNSET else token,
                            timeout=timeout)
        self._clients.append(c)
        return c

    def done(self, value):
        return value

    def test_context_manager_closes_the_channel(self):
        with latchkey.Client(ADDRESS, agent_token=TOKEN) as lk:
            self.assertTrue(lk.list_tools(BUDGET))
        with self.assertRaises(ValueError):
            lk.list_tools(BUDGET)


class AsyncClientTest(ClientContract, unittest.TestCase):
    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self._clients = []
        self.lk = self.client()

    def tearDown(self):
        for c in self._clients:
            self.loop.run_until_complete(c.close())
        self.loop.close()

    def client(self, token=_UNSET, timeout=10.0):
        async def make():
            return latchkey.AsyncClient(
                ADDRESS, agent_token=TOKEN if token is _UNSET else token,
                timeout=timeout)
        c = self.loop.run_until_complete(make())
        self._clients.append(c)
        return c

    def done(self, value):
        self.assertTrue(asyncio.iscoroutine(value),
                        "AsyncClient methods return coroutines")
        return self.loop.run_until_complete(value)

    def test_async_calls_can_be_gathered(self):
        async def both():
            return await asyncio.gather(
                self.lk.call(BUDGET, SLOW, "wait", timeout=5),
                self.lk.call(BUDGET, SLOW, "wait", timeout=5))
        results = self.done(both())
        self.assertEqual([r.status for r in results], [200, 200])

    def test_async_context_manager(self):
        async def use():
            async with latchkey.AsyncClient(ADDRESS, agent_token=TOKEN) as lk:
                return await lk.list_tools(BUDGET)
        self.assertTrue(self.done(use()))


if __name__ == "__main__":
    unittest.main(verbosity=2)
