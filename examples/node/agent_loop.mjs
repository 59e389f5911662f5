#!/usr/bin/env node
// An agent loop over Latchkey in Node, with a scripted model standing in
// for the LLM (examples/llm_script.json; no network, no API key).
//
// The loop is what a real agent does: list the budget's tools and hand
// them to the model as function definitions, run every function call the
// model makes through Latchkey, give the model the scrubbed result, and
// when a credential is missing, show the user the setup link (only the
// user can provide a credential) and tell the model. Swap ScriptedModel
// for a real LLM client and nothing else changes.
//
//   LATCHKEY_SIDECAR=unix:/run/latchkey/agent.sock \
//   LATCHKEY_AGENT_TOKEN_FILE=/run/latchkey/agent.token \
//     node examples/node/agent_loop.mjs --budget main
//
// Needs @latchkey/client (clients/node) installed: see README.md here.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { Client, LatchkeyError, MissingCredentialError } from "@latchkey/client";

const HERE = dirname(fileURLToPath(import.meta.url));
const DEFAULT_SCRIPT = join(HERE, "..", "llm_script.json");
const MAX_SCRIPT_BYTES = 1024 * 1024;
const MAX_SHOWN = 400; // characters of a result printed for the human

/**
 * Plays the assistant turns of an llm_script.json in order. Like a real LLM
 * it is given the conversation and the function definitions; it only ever
 * names functions it was offered.
 */
class ScriptedModel {
  constructor(path) {
    const raw = readFileSync(path);
    if (raw.length > MAX_SCRIPT_BYTES) throw new Error(`${path} is over ${MAX_SCRIPT_BYTES} bytes`);
    const script = JSON.parse(raw.toString("utf8"));
    this.user = script.user ?? "";
    this.turns = [...script.turns];
  }

  /** The next assistant message, OpenAI-shaped: tool_calls' arguments are a JSON string. */
  respond(messages, functions) {
    const turn = this.turns.shift();
    if (!turn) return { role: "assistant", content: "", tool_calls: [] };
    const offered = new Set(functions.map((f) => f.function.name));
    const calls = (turn.tool_calls ?? []).map((call) => {
      if (!offered.has(call.name)) console.log(`(script calls ${call.name}, which Latchkey did not offer)`);
      return {
        id: call.id ?? "",
        type: "function",
        function: { name: call.name, arguments: JSON.stringify(call.arguments ?? {}) },
      };
    });
    return { role: "assistant", content: turn.content ?? "", tool_calls: calls };
  }
}

function shorten(text) {
  return text.length <= MAX_SHOWN ? text : `${text.slice(0, MAX_SHOWN)}...`;
}

/**
 * Runs one function call through Latchkey; prints what the human should
 * see; returns what the model gets back.
 */
async function runToolCall(dispatcher, call) {
  const { name, arguments: args } = call.function;
  console.log(`assistant calls ${name}(${args})`);
  try {
    const result = await dispatcher.call(name, args);
    console.log(`  -> HTTP ${result.status} ${result.contentType}, redacted=${result.redacted}`);
    console.log(`     ${shorten(result.text())}`);
    return result.toModelContent();
  } catch (err) {
    if (err instanceof MissingCredentialError) {
      // Only the user can fix this: show them where.
      console.log(`  -> Latchkey: tool '${err.tool}' needs a credential (${err.credentialType}) before it can run.`);
      for (const field of err.requiredFields) {
        console.log(`     field ${field.name}${field.secret ? " (secret)" : ""}: ${field.description}`);
      }
      console.log(err.setupUrl ? `     Set it up here: ${err.setupUrl}` : `     Set it up with: ${err.hint}`);
      return JSON.stringify(err);
    }
    if (err instanceof LatchkeyError) {
      // Bad arguments, unknown function, deadline...: the model may retry.
      console.log(`  -> ${err.code}: ${err.message}`);
      return JSON.stringify({ error: err.code, message: err.message });
    }
    throw err;
  }
}

async function main() {
  const { values: opts } = parseArgs({
    options: {
      budget: { type: "string", default: process.env.LATCHKEY_BUDGET || "main" },
      script: { type: "string", default: DEFAULT_SCRIPT },
      "max-turns": { type: "string", default: "8" },
    },
  });
  const model = new ScriptedModel(opts.script);
  const client = Client.fromEnv();
  try {
    let dispatcher;
    try {
      dispatcher = await client.dispatcher(opts.budget);
    } catch (err) {
      if (!(err instanceof LatchkeyError)) throw err;
      console.error(`cannot list the tools of budget ${opts.budget}: ${err.code}: ${err.message}`);
      return 1;
    }
    const definitions = dispatcher.definitions; // what a real LLM API takes as `tools`
    console.log(`functions offered to the model: ${dispatcher.names.join(", ")}`);
    console.log(`user: ${model.user}`);
    const messages = [{ role: "user", content: model.user }];
    for (let turn = 0; turn < Number(opts["max-turns"]); turn++) {
      const reply = model.respond(messages, definitions);
      messages.push(reply);
      if (reply.content) console.log(`assistant: ${reply.content}`);
      if (reply.tool_calls.length === 0) return 0;
      for (const call of reply.tool_calls) {
        const content = await runToolCall(dispatcher, call);
        messages.push({ role: "tool", tool_call_id: call.id, content });
      }
    }
    console.error(`stopped after ${opts["max-turns"]} turns`);
    return 1;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
