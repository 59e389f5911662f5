// The client's pure parts, without a sidecar: the status-to-error mapping,
// the missing-credential error, ListTools parsing and its size cap,
// function definitions and the dispatcher's routing, and ToolResult's
// decoding. The interop suite proves the same contract over the wire.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";

import {
  Client,
  DEFAULT_ADDRESS,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  LatchkeyError,
  MAX_SCHEMA_BYTES,
  MissingCredentialError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  Tool,
  ToolDispatcher,
  ToolResult,
  UnauthenticatedError,
  UnavailableError,
  MAX_ARGUMENTS_BYTES,
  errorFromStatus,
  functionName,
  parseArguments,
  toAnthropicDefinitions,
  toFunctionDefinitions,
} from "../src/index";
import { toolsFromMessages } from "../src/tools";

describe("errorFromStatus", () => {
  const cases: [number, new (m: string) => LatchkeyError, string][] = [
    [status.NOT_FOUND, NotFoundError, "NOT_FOUND"],
    [status.INVALID_ARGUMENT, InvalidArgumentError, "INVALID_ARGUMENT"],
    [status.PERMISSION_DENIED, PermissionDeniedError, "PERMISSION_DENIED"],
    [status.FAILED_PRECONDITION, FailedPreconditionError, "FAILED_PRECONDITION"],
    [status.UNAUTHENTICATED, UnauthenticatedError, "UNAUTHENTICATED"],
    [status.DEADLINE_EXCEEDED, DeadlineExceededError, "DEADLINE_EXCEEDED"],
    [status.UNAVAILABLE, UnavailableError, "UNAVAILABLE"],
    [status.RESOURCE_EXHAUSTED, ResourceExhaustedError, "RESOURCE_EXHAUSTED"],
  ];
  for (const [code, cls, name] of cases) {
    test(`maps ${name} to ${cls.name} with the sidecar's message`, () => {
      const err = errorFromStatus({ code, details: `reason for ${name}` });
      assert.ok(err instanceof cls);
      assert.ok(err instanceof LatchkeyError);
      assert.equal(err.code, name);
      assert.equal(err.grpcCode, code);
      assert.equal(err.message, `reason for ${name}`);
      assert.equal(err.name, cls.name);
    });
  }

  test("keeps any other status a plain LatchkeyError with its name", () => {
    const err = errorFromStatus({ code: status.INTERNAL, details: "bug" });
    assert.equal(err.constructor, LatchkeyError);
    assert.equal(err.code, "INTERNAL");
    assert.equal(err.grpcCode, status.INTERNAL);
  });

  test("falls back to UNKNOWN and a stated reason when the status is empty", () => {
    const err = errorFromStatus({});
    assert.equal(err.code, "UNKNOWN");
    assert.equal(err.message, "the sidecar gave no reason");
  });
});

describe("MissingCredentialError", () => {
  const info = {
    budget: "main",
    tool: "weather",
    credentialType: "weather-key",
    requiredFields: [{ name: "api_key", secret: true, pattern: "^[A-Za-z0-9]{16,}$", description: "key" }],
    setupUrl: "https://setup.example/weather?budget=main",
    hint: "latchkeyctl credential create weather-key ...",
  };

  test("carries every field and names the setup link in its message", () => {
    const err = new MissingCredentialError(info);
    assert.ok(err instanceof LatchkeyError);
    assert.equal(err.code, "MISSING_CREDENTIAL");
    assert.equal(err.grpcCode, 0);
    assert.equal(err.name, "MissingCredentialError");
    assert.equal(err.budget, "main");
    assert.equal(err.tool, "weather");
    assert.equal(err.credentialType, "weather-key");
    assert.deepEqual(err.requiredFields, info.requiredFields);
    assert.equal(err.setupUrl, info.setupUrl);
    assert.equal(err.hint, info.hint);
    assert.ok(
      err.message.startsWith("tool 'weather' needs a credential of type 'weather-key' (fields: api_key) bound in budget 'main'"),
    );
    assert.ok(err.message.endsWith(`set it up at ${info.setupUrl}`));
  });

  test("names the latchkeyctl hint when there is no setup link", () => {
    const err = new MissingCredentialError({ ...info, setupUrl: "" });
    assert.ok(err.message.endsWith(info.hint));
  });

  test("serialises to the Python client's as_dict shape, for the model", () => {
    assert.deepEqual(JSON.parse(JSON.stringify(new MissingCredentialError(info))), {
      error: "missing_credential",
      budget: "main",
      tool: "weather",
      credential_type: "weather-key",
      required_fields: info.requiredFields,
      setup_url: info.setupUrl,
      hint: info.hint,
    });
  });
});

const listing = [
  {
    tool_id: "echo",
    description: "Echo vendor",
    credential_ready: true,
    credential_type: "bearer-token",
    operations: [
      {
        name: "get",
        description: "Echo what arrived",
        method: "GET",
        path: "/echo/{item}",
        parameters_json_schema:
          '{"type":"object","properties":{"item":{"type":"string"}},"required":["item"]}',
      },
      { name: "quiet", description: "", method: "GET", path: "/quiet/x", parameters_json_schema: "" },
    ],
  },
  {
    tool_id: "maps.v2",
    description: "",
    credential_ready: false,
    credential_type: "maps-key",
    operations: [
      {
        name: "route",
        description: "Route between two places",
        method: "GET",
        path: "/route",
        parameters_json_schema: '{"type":"object","properties":{}}',
      },
    ],
  },
];

describe("ListTools parsing and function definitions", () => {
  test("parses each operation's schema, and an empty one as no params", () => {
    const tools = toolsFromMessages(listing);
    assert.equal(tools.length, 2);
    assert.equal(tools[0]!.credentialReady, true);
    assert.deepEqual(tools[0]!.operations[0]!.parameters.required, ["item"]);
    assert.deepEqual(tools[0]!.operations[1]!.parameters, { type: "object", properties: {} });
    assert.equal(tools[1]!.credentialType, "maps-key");
  });

  test("refuses a schema over MAX_SCHEMA_BYTES with RESOURCE_EXHAUSTED", () => {
    const huge = JSON.stringify({ type: "object", description: "x".repeat(MAX_SCHEMA_BYTES) });
    const msg = [{ ...listing[0]!, operations: [{ ...listing[0]!.operations[0]!, parameters_json_schema: huge }] }];
    assert.throws(() => toolsFromMessages(msg), (e: unknown) => {
      assert.ok(e instanceof LatchkeyError);
      assert.equal(e.code, "RESOURCE_EXHAUSTED");
      assert.match(e.message, /echo\/get/);
      return true;
    });
  });

  test("refuses a schema that is not a JSON object with INTERNAL", () => {
    for (const bad of ["{", "[1]", "null"]) {
      const msg = [{ ...listing[0]!, operations: [{ ...listing[0]!.operations[0]!, parameters_json_schema: bad }] }];
      assert.throws(() => toolsFromMessages(msg), (e: unknown) => {
        assert.ok(e instanceof LatchkeyError);
        assert.equal(e.code, "INTERNAL");
        return true;
      });
    }
  });

  test("names functions <tool>__<operation> when that is a valid, unambiguous name", () => {
    assert.equal(functionName("echo", "get"), "echo__get");
    assert.equal(functionName("my-tool_1", "do_it"), "my-tool_1__do_it");
  });

  test("makes odd ids valid names with a hash of the exact ids", () => {
    const valid = /^[A-Za-z0-9_-]{1,64}$/;
    const dotted = functionName("maps.v2", "route");
    // The same vector as clients/python's unit test: every client names
    // odd ids alike (SHA-256 of "<tool>\0<operation>", 10 hex digits).
    assert.equal(dotted, "maps-v2__route_608ab52e28");
    assert.equal(functionName("maps.v2", "route"), dotted, "a pure function of the ids");
    assert.notEqual(functionName("maps-v2", "route"), dotted);
    assert.match(functionName("a__b", "c"), /^a--b__c_[0-9a-f]{10}$/);
    assert.match(functionName("tool_", "x"), /^tool-__x_[0-9a-f]{10}$/);
    const long = functionName("t".repeat(128), "o".repeat(100));
    assert.match(long, valid);
    assert.equal(long.length, 64);
    assert.notEqual(long, functionName("t".repeat(127), "o".repeat(100)));
  });

  test("renders one OpenAI-style definition per operation, optionally only ready tools", () => {
    const tools = toolsFromMessages(listing);
    const defs = toFunctionDefinitions(tools);
    const mapsName = functionName("maps.v2", "route");
    assert.deepEqual(
      defs.map((d) => d.function.name),
      ["echo__get", "echo__quiet", mapsName],
    );
    assert.deepEqual(defs[0], {
      type: "function",
      function: {
        name: "echo__get",
        description: "Echo what arrived (tool echo: Echo vendor)",
        parameters: tools[0]!.operations[0]!.parameters,
      },
    });
    assert.equal(defs[1]!.function.description, "GET /quiet/x (tool echo: Echo vendor)");
    assert.equal(defs[2]!.function.description, "Route between two places (tool maps.v2)");
    defs[0]!.function.parameters.required!.push("mutated");
    assert.deepEqual(tools[0]!.operations[0]!.parameters.required, ["item"], "definitions are copies");
    assert.deepEqual(
      toFunctionDefinitions(tools, { onlyReady: true }).map((d) => d.function.name),
      ["echo__get", "echo__quiet"],
    );
    assert.deepEqual(toAnthropicDefinitions(tools)[2], {
      name: mapsName,
      description: "Route between two places (tool maps.v2)",
      input_schema: { type: "object", properties: {} },
    });
  });
});

describe("parseArguments", () => {
  test("takes an object, a JSON object text, or nothing", () => {
    assert.deepEqual(parseArguments({ a: 1 }), { a: 1 });
    assert.deepEqual(parseArguments('{"a":[1]}'), { a: [1] });
    assert.deepEqual(parseArguments("  "), {});
    assert.deepEqual(parseArguments(undefined), {});
  });

  test("refuses what is not one JSON object, and text over MAX_ARGUMENTS_BYTES", () => {
    for (const bad of ["{not json", "[1,2]", "null", "3", '"s"']) {
      assert.throws(() => parseArguments(bad), InvalidArgumentError, bad);
    }
    const big = JSON.stringify({ a: "x".repeat(MAX_ARGUMENTS_BYTES) });
    assert.throws(() => parseArguments(big), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.match(e.message, /over 1048576 bytes/);
      return true;
    });
  });
});

describe("ToolDispatcher", () => {
  const tools: Tool[] = toolsFromMessages(listing);
  const result = new ToolResult({
    status: 200,
    contentType: "application/json",
    body: Buffer.from("{}"),
    headers: {},
    redacted: false,
  });

  function recorder() {
    const calls: unknown[][] = [];
    return {
      calls,
      async call(...args: unknown[]) {
        calls.push(args);
        return result;
      },
    };
  }

  test("routes a function name back to its tool and operation, with string or object args", async () => {
    const rec = recorder();
    const d = new ToolDispatcher(rec, "main", tools);
    assert.equal(await d.call(functionName("maps.v2", "route"), '{"from":"a"}'), result);
    assert.equal(await d.call("echo__get", { item: "x" }, { timeoutMs: 5 }), result);
    assert.equal(await d.call("echo__quiet", ""), result);
    assert.deepEqual(rec.calls, [
      ["main", "maps.v2", "route", { from: "a" }, undefined],
      ["main", "echo", "get", { item: "x" }, { timeoutMs: 5 }],
      ["main", "echo", "quiet", {}, undefined],
    ]);
  });

  test("rejects names it did not offer and arguments that are not one JSON object", async () => {
    const rec = recorder();
    const d = new ToolDispatcher(rec, "main", tools, { onlyReady: true });
    assert.deepEqual(d.names, ["echo__get", "echo__quiet"]);
    assert.equal(d.has(functionName("maps.v2", "route")), false);
    await assert.rejects(d.call(functionName("maps.v2", "route"), {}), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      assert.match(e.message, /call one of: echo__get, echo__quiet/);
      return true;
    });
    await assert.rejects(d.call("echo__get", "{not json"), InvalidArgumentError);
    await assert.rejects(d.call("echo__get", "[1,2]"), InvalidArgumentError);
    assert.equal(rec.calls.length, 0);
  });

  test("refuses two operations that become the same function name", () => {
    const clash = toolsFromMessages([listing[1]!, listing[1]!]);
    assert.throws(() => new ToolDispatcher(recorder(), "main", clash), InvalidArgumentError);
  });
});

describe("ToolResult", () => {
  function make(contentType: string, body: string): ToolResult {
    return new ToolResult({ status: 404, contentType, body: Buffer.from(body), headers: {}, redacted: true });
  }

  test("parses JSON bodies, including +json types and parameters", () => {
    assert.deepEqual(make("application/json", '{"a":1}').json(), { a: 1 });
    assert.deepEqual(make("application/problem+json; charset=utf-8", "[1]").json(), [1]);
    assert.equal(make("application/json", "{}").ok, false);
  });

  test("refuses json() on a body that is not JSON, but text() decodes it", () => {
    const r = make("text/html", "<p>hi</p>");
    assert.equal(r.isJson, false);
    assert.throws(() => r.json(), TypeError);
    assert.equal(r.text(), "<p>hi</p>");
    assert.throws(() => make("application/json", "{").json(), SyntaxError);
  });

  test("toModelContent gives the model the status and the parsed body", () => {
    assert.deepEqual(JSON.parse(make("application/json", '{"a":1}').toModelContent()), {
      status: 404,
      body: { a: 1 },
    });
    assert.deepEqual(JSON.parse(make("text/plain", "plain").toModelContent()), {
      status: 404,
      body: "plain",
    });
  });
});

describe("Client options", () => {
  test("refuses an empty address, a bad timeout and a token with a line break", () => {
    assert.throws(() => new Client(""), TypeError);
    assert.throws(() => new Client("unix:/tmp/x.sock", { timeoutMs: 0 }), TypeError);
    assert.throws(() => new Client("unix:/tmp/x.sock", { timeoutMs: Number.NaN }), TypeError);
    assert.throws(() => new Client("unix:/tmp/x.sock", { agentToken: "a\nb" }), TypeError);
  });

  test("never shows the agent token when inspected or serialised", async () => {
    const { inspect } = await import("node:util");
    const c = new Client("unix:/tmp/latchkey-unit-absent.sock", { agentToken: "tok-secret-value" });
    try {
      assert.ok(!inspect(c, { depth: 5 }).includes("tok-secret-value"));
      assert.ok(!JSON.stringify(c).includes("tok-secret-value"));
    } finally {
      c.close();
    }
  });

  test("fromEnv reads LATCHKEY_SIDECAR and the token file, as latchkeyctl does", async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dir = mkdtempSync(join(tmpdir(), "latchkey-unit-"));
    try {
      const file = join(dir, "token");
      writeFileSync(file, "tok-from-file\n");
      const a = Client.fromEnv({}, { LATCHKEY_SIDECAR: "127.0.0.1:7600", LATCHKEY_AGENT_TOKEN_FILE: file });
      assert.equal(a.address, "127.0.0.1:7600");
      a.close();
      const b = Client.fromEnv({ timeoutMs: 5 }, {});
      assert.equal(b.address, DEFAULT_ADDRESS);
      assert.equal(b.timeoutMs, 5);
      b.close();
      writeFileSync(file, "x".repeat(4097));
      assert.throws(() => Client.fromEnv({}, { LATCHKEY_AGENT_TOKEN_FILE: file }), /over 4096 bytes/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("rejects arguments over MAX_ARGUMENTS_BYTES before dialing", async () => {
    const c = new Client("unix:/tmp/latchkey-unit-absent.sock");
    try {
      await assert.rejects(c.call("main", "echo", "get", { a: "x".repeat(MAX_ARGUMENTS_BYTES) }), InvalidArgumentError);
    } finally {
      c.close();
    }
  });

  test("rejects arguments that are not one object before dialing", async () => {
    const c = new Client("unix:/tmp/latchkey-unit-absent.sock");
    try {
      await assert.rejects(
        c.call("main", "echo", "get", [] as unknown as Record<string, unknown>),
        InvalidArgumentError,
      );
    } finally {
      c.close();
    }
  });
});
