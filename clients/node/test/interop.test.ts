// The Node client against a real latchkeyd (tests/interop/stack.py starts
// it, with a real nginx vendor, over a Unix socket or TCP, and passes the
// fixture in LATCHKEY_INTEROP_*). Each test proves one behaviour of the
// client's contract end to end: what the agent gets back, and that the
// bound secret never reaches it.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import {
  Client,
  DeadlineExceededError,
  InvalidArgumentError,
  LatchkeyError,
  MissingCredentialError,
  NotFoundError,
  PermissionDeniedError,
  ToolResult,
  UnauthenticatedError,
  UnavailableError,
  toFunctionDefinitions,
} from "../src/index";

interface Fixture {
  address: string;
  transport: "unix" | "tcp";
  agent_token: string;
  secret: string;
  budget: string;
  other_budget: string;
  echo_tool: string;
  unbound_tool: string;
  unbound_type: string;
  slow_tool: string;
  setup_url_template: string;
}

function loadFixture(): Fixture {
  const path = process.env.LATCHKEY_INTEROP_FIXTURE;
  if (!path) {
    throw new Error(
      "LATCHKEY_INTEROP_FIXTURE is not set: run this suite under tests/interop/stack.py " +
        "(bazel test //tests/interop:node_unix_test)",
    );
  }
  const fx = JSON.parse(readFileSync(path, "utf8")) as Fixture;
  assert.equal(fx.address, process.env.LATCHKEY_INTEROP_ADDRESS);
  assert.equal(fx.secret, process.env.LATCHKEY_INTEROP_SECRET);
  assert.ok(fx.secret.length >= 16, "the canary secret is long enough to be unmistakable");
  return fx;
}

const fx = loadFixture();

/** Fails when the canary secret shows anywhere in what the agent got. */
function assertNoSecret(what: string, ...values: unknown[]): void {
  for (const v of values) {
    const text = Buffer.isBuffer(v) ? v.toString("latin1") : typeof v === "string" ? v : JSON.stringify(v);
    assert.ok(!text.includes(fx.secret), `${what} contains the bound secret`);
  }
}

async function rejection(p: Promise<unknown>): Promise<LatchkeyError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof LatchkeyError, `rejected with a LatchkeyError, not ${String(e)}`);
    assertNoSecret("the error", e.message, e);
    return e;
  }
  assert.fail("the promise resolved; it should have rejected");
}

describe(`node client over ${fx.transport} (${fx.address})`, () => {
  let client: Client;

  before(() => {
    client = new Client(fx.address, { agentToken: fx.agent_token, timeoutMs: 10_000 });
  });
  after(() => client.close());

  test("listTools returns the budget's tools with parsed JSON-Schema params", async () => {
    const tools = await client.listTools(fx.budget);
    const byId = new Map(tools.map((t) => [t.id, t]));
    assert.deepEqual(
      [...byId.keys()].sort(),
      [fx.echo_tool, fx.slow_tool, fx.unbound_tool].sort(),
    );
    const echo = byId.get(fx.echo_tool)!;
    assert.equal(echo.credentialReady, true);
    assert.equal(echo.credentialType, "bearer-token");
    assert.equal(byId.get(fx.unbound_tool)!.credentialReady, false);
    assert.equal(byId.get(fx.unbound_tool)!.credentialType, fx.unbound_type);
    const get = echo.operations.find((o) => o.name === "get")!;
    assert.equal(get.method, "GET");
    assert.equal(get.path, "/echo/{item}");
    assert.equal(get.parameters.type, "object");
    assert.deepEqual(get.parameters.required, ["item"]);
    assert.equal(get.parameters.properties!.item!.type, "string");
    assert.equal(get.parameters.properties!.n!.type, "integer");
    assert.equal(get.parameters.properties!.q!.type, "string");

    const defs = toFunctionDefinitions(tools);
    const def = defs.find((d) => d.function.name === `${fx.echo_tool}__get`)!;
    assert.equal(def.type, "function");
    assert.deepEqual(def.function.parameters, get.parameters);
    assert.ok(def.function.description.length > 0);
    assert.ok(defs.some((d) => d.function.name === `${fx.slow_tool}__wait`));
    assertNoSecret("the tool listing", tools);
  });

  test("call injects the credential and the vendor's echo of it comes back [REDACTED]", async () => {
    const result = await client.call(fx.budget, fx.echo_tool, "get", { item: "hello", q: "news", n: 3 });
    assert.ok(result instanceof ToolResult);
    assert.equal(result.status, 200);
    assert.equal(result.ok, true);
    assert.match(result.contentType, /^application\/json/);
    assert.equal(result.redacted, true);
    const echoed = result.json<{ authorization: string; uri: string; method: string }>();
    // The vendor saw "Bearer <secret>" (the sidecar injected it) and echoed it.
    assert.equal(echoed.authorization, "Bearer [REDACTED]");
    assert.equal(echoed.method, "GET");
    assert.match(echoed.uri, /^\/echo\/hello\?/);
    assert.match(echoed.uri, /q=news/);
    assert.match(echoed.uri, /n=3/);
    assert.equal(result.headers["x-echo-authorization"], "Bearer [REDACTED]");
    assert.ok(result.text().includes("[REDACTED]"));
    assertNoSecret("the result", result.body, result.text(), result.headers);
  });

  test("a POST's body params reach the vendor as JSON", async () => {
    const result = await client.call(fx.budget, fx.echo_tool, "post", { note: "hi", count: 2 });
    assert.equal(result.status, 200);
    assert.deepEqual(result.json(), { note: "hi", count: 2 });
    assert.equal(result.redacted, false);
  });

  test("the dispatcher executes a model's function call by name", async () => {
    const dispatcher = await client.dispatcher(fx.budget);
    assert.ok(dispatcher.has(`${fx.echo_tool}__get`));
    const result = await dispatcher.call(`${fx.echo_tool}__get`, '{"item":"from-model"}');
    assert.match(result.json<{ uri: string }>().uri, /^\/echo\/from-model/);
    assert.equal(result.redacted, true);
    const err = await rejection(dispatcher.call("nope__get", {}));
    assert.ok(err instanceof NotFoundError);
  });

  test("a tool with no bound credential rejects with MissingCredentialError and a setup link", async () => {
    const err = await rejection(client.call(fx.budget, fx.unbound_tool, "get", { item: "x" }));
    assert.ok(err instanceof MissingCredentialError);
    assert.equal(err.code, "MISSING_CREDENTIAL");
    assert.equal(err.budget, fx.budget);
    assert.equal(err.tool, fx.unbound_tool);
    assert.equal(err.credentialType, fx.unbound_type);
    assert.deepEqual(err.requiredFields, [
      { name: "api_key", secret: true, pattern: "", description: "The vendor's API key" },
    ]);
    const expectedUrl = fx.setup_url_template
      .replace("{tool}", fx.unbound_tool)
      .replace("{budget}", fx.budget)
      .replace("{type}", fx.unbound_type);
    assert.equal(err.setupUrl, expectedUrl);
    assert.match(err.hint, /latchkeyctl/);
    assert.ok(err.message.includes(expectedUrl));
    assert.equal((err.toJSON() as { setup_url: string }).setup_url, expectedUrl);
  });

  test("arguments of the wrong type reject with InvalidArgumentError naming the param", async () => {
    const err = await rejection(client.call(fx.budget, fx.echo_tool, "get", { item: "a", n: "x" }));
    assert.ok(err instanceof InvalidArgumentError);
    assert.equal(err.code, "INVALID_ARGUMENT");
    assert.equal(err.grpcCode, 3);
    assert.match(err.message, /\bn\b/);
    const missing = await rejection(client.call(fx.budget, fx.echo_tool, "get", { q: "no item" }));
    assert.ok(missing instanceof InvalidArgumentError);
    assert.match(missing.message, /item/);
  });

  test("an unknown tool rejects with NotFoundError", async () => {
    const err = await rejection(client.call(fx.budget, "no-such-tool", "get", {}));
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.code, "NOT_FOUND");
  });

  test("a 300 ms deadline on a one-second vendor rejects with DeadlineExceededError", async () => {
    const quick = new Client(fx.address, { agentToken: fx.agent_token, timeoutMs: 300 });
    try {
      const started = Date.now();
      const err = await rejection(quick.call(fx.budget, fx.slow_tool, "wait", {}));
      const elapsed = Date.now() - started;
      assert.ok(err instanceof DeadlineExceededError);
      assert.equal(err.code, "DEADLINE_EXCEEDED");
      assert.ok(elapsed < 900, `gave up after ${elapsed} ms, not near 300 ms`);
    } finally {
      quick.close();
    }
    // A per-call timeout overrides the client's, and is long enough here.
    const slow = await client.call(fx.budget, fx.slow_tool, "wait", {}, { timeoutMs: 5_000 });
    assert.deepEqual(slow.json(), { slept_ms: 1000 });
  });

  test("another agent's budget rejects with PermissionDeniedError", async () => {
    const err = await rejection(client.call(fx.other_budget, fx.echo_tool, "get", { item: "x" }));
    assert.ok(err instanceof PermissionDeniedError);
    assert.equal(err.code, "PERMISSION_DENIED");
    const listErr = await rejection(client.listTools(fx.other_budget));
    assert.ok(listErr instanceof PermissionDeniedError);
  });

  test("without the agent token, or with a wrong one, calls reject with UnauthenticatedError", async () => {
    const anonymous = new Client(fx.address, { timeoutMs: 10_000 });
    const wrong = new Client(fx.address, { agentToken: "agent-not-the-token", timeoutMs: 10_000 });
    try {
      const e1 = await rejection(anonymous.listTools(fx.budget));
      assert.ok(e1 instanceof UnauthenticatedError);
      assert.equal(e1.code, "UNAUTHENTICATED");
      assert.match(e1.message, /authorization: Bearer/);
      const e2 = await rejection(anonymous.call(fx.budget, fx.echo_tool, "get", { item: "x" }));
      assert.ok(e2 instanceof UnauthenticatedError);
      const e3 = await rejection(wrong.call(fx.budget, fx.echo_tool, "get", { item: "x" }));
      assert.ok(e3 instanceof UnauthenticatedError);
    } finally {
      anonymous.close();
      wrong.close();
    }
  });

  test("fromEnv finds the sidecar and the token file the way latchkeyctl does", async () => {
    const dir = mkdtempSync(join(tmpdir(), "latchkey-node-"));
    const tokenFile = join(dir, "agent.token");
    writeFileSync(tokenFile, `${fx.agent_token}\n`, { mode: 0o600 });
    const fromEnv = Client.fromEnv(
      { timeoutMs: 10_000 },
      { LATCHKEY_SIDECAR: fx.address, LATCHKEY_AGENT_TOKEN_FILE: tokenFile },
    );
    try {
      const tools = await fromEnv.listTools(fx.budget);
      assert.ok(tools.some((t) => t.id === fx.echo_tool));
    } finally {
      fromEnv.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a sidecar that is not there rejects with UnavailableError", async () => {
    const address = fx.transport === "unix" ? `${fx.address}.absent` : "127.0.0.1:1";
    const nowhere = new Client(address, { agentToken: fx.agent_token, timeoutMs: 5_000 });
    try {
      const err = await rejection(nowhere.listTools(fx.budget));
      assert.ok(err instanceof UnavailableError);
      assert.equal(err.code, "UNAVAILABLE");
    } finally {
      nowhere.close();
    }
  });

  test("a closed client rejects without dialing", async () => {
    const closing = new Client(fx.address, { agentToken: fx.agent_token });
    closing.close();
    closing.close();
    const err = await rejection(closing.listTools(fx.budget));
    assert.equal(err.code, "CANCELLED");
  });
});
