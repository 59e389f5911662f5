// examples/node/agent_loop.mjs runs its scripted conversation against a
// real latchkeyd (tests/interop/stack.py): the model is offered the
// budget's functions, its first call returns the vendor's echo with the
// credential shown only as [REDACTED], and its second call, to a tool with
// no credential bound, shows the user the setup link.
//
//   bazel test //examples/node:example_node_test

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const EXAMPLE = join(HERE, "agent_loop.mjs");
const SECRET = process.env.LATCHKEY_INTEROP_SECRET;
const FIXTURE = JSON.parse(readFileSync(process.env.LATCHKEY_INTEROP_FIXTURE, "utf8"));

function runExample(args, env) {
  const out = spawnSync(process.execPath, [EXAMPLE, ...args], {
    env,
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.equal(out.error, undefined);
  const all = out.stdout + out.stderr;
  assert.ok(!all.includes(SECRET), "the example printed the bound secret");
  assert.ok(!all.includes(FIXTURE.agent_token), "the example printed the agent token");
  return out;
}

function withTokenFile(fn) {
  const dir = mkdtempSync(join(process.env.TEST_TMPDIR || tmpdir(), "agent-loop-"));
  const tokenFile = join(dir, "agent.token");
  writeFileSync(tokenFile, `${FIXTURE.agent_token}\n`, { mode: 0o600 });
  const env = { ...process.env, LATCHKEY_SIDECAR: FIXTURE.address, LATCHKEY_AGENT_TOKEN_FILE: tokenFile };
  delete env.LATCHKEY_AGENT_TOKEN;
  delete env.LATCHKEY_BUDGET;
  try {
    return fn(env);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("the scripted conversation shows the redacted result and the setup link", () =>
  withTokenFile((env) => {
    const out = runExample(["--budget", FIXTURE.budget], env);
    assert.equal(out.status, 0, out.stdout + out.stderr);
    const lines = out.stdout.split("\n").filter((l) => l !== "");
    assert.ok(lines[0].startsWith("functions offered to the model: "));
    for (const name of ["echo__get", "echo__post", "unbound__get", "slow__wait"]) {
      assert.ok(lines[0].includes(name), `${name} is offered`);
    }
    assert.ok(!out.stdout.includes("not offer"));
    assert.ok(lines[1].startsWith("user: Ask the echo service"));

    // First call: the vendor's echo, secret scrubbed.
    let call = lines.indexOf('assistant calls echo__get({"item":"oslo","q":"rain"})');
    assert.notEqual(call, -1, out.stdout);
    assert.equal(lines[call + 1], "  -> HTTP 200 application/json, redacted=true");
    const echo = JSON.parse(lines[call + 2].trim());
    assert.equal(echo.authorization, "Bearer [REDACTED]");
    assert.equal(echo.uri, "/echo/oslo?q=rain");

    // Second call: no credential bound; the user gets the setup link.
    const setupUrl = FIXTURE.setup_url_template
      .replace("{tool}", FIXTURE.unbound_tool)
      .replace("{budget}", FIXTURE.budget)
      .replace("{type}", FIXTURE.unbound_type);
    call = lines.indexOf('assistant calls unbound__get({"item":"oslo"})');
    assert.notEqual(call, -1, out.stdout);
    assert.deepEqual(lines.slice(call + 1, call + 4), [
      `  -> Latchkey: tool 'unbound' needs a credential (${FIXTURE.unbound_type}) before it can run.`,
      "     field api_key (secret): The vendor's API key",
      `     Set it up here: ${setupUrl}`,
    ]);
    assert.ok(lines.at(-1).startsWith("assistant: The echo service answered."));
  }));

test("without the agent token it says why and fails", () =>
  withTokenFile((env) => {
    delete env.LATCHKEY_AGENT_TOKEN_FILE;
    const out = runExample(["--budget", FIXTURE.budget], env);
    assert.equal(out.status, 1, out.stdout + out.stderr);
    assert.ok(
      out.stderr.includes("cannot list the tools of budget main: UNAUTHENTICATED"),
      out.stderr,
    );
  }));
