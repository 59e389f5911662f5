// The bridge between ListTools and an LLM's function calling. The sidecar
// describes each operation's params as a JSON-Schema object (a string in
// the proto); this module parses it once, under a size cap, into typed
// Tool values, renders them as OpenAI-style (or Anthropic-style) function
// definitions, and routes a model's function call back to Client.call
// through a name table built from the same listing, so a name is never
// split or guessed and a model can only reach operations the budget
// listed. Names follow the Python client's rule: "<tool>__<operation>"
// when that is a valid function name (^[A-Za-z0-9_-]{1,64}$) that splits
// back unambiguously, else the odd characters replaced and a short hash of
// the exact ids appended, so a name is a pure function of the ids. The
// model's arguments are untrusted: size-capped before parsing, and one
// JSON object or refused.

import { createHash } from "crypto";
import { InvalidArgumentError, LatchkeyError, NotFoundError } from "./errors";
import type { ToolResult } from "./result";

/** A JSON-Schema object, as the sidecar generates it for an operation. */
export interface JsonSchema {
  type?: string;
  properties?: Record<string, JsonSchema & { description?: string }>;
  required?: string[];
  [keyword: string]: unknown;
}

/** One operation of a tool, ready to offer to a model. */
export interface Operation {
  name: string;
  description: string;
  /** The HTTP method the sidecar uses (informational: the agent cannot change it). */
  method: string;
  /** The vendor path template (informational). */
  path: string;
  /** The operation's params as a parsed JSON-Schema object. */
  parameters: JsonSchema;
}

/** One tool the budget may use. */
export interface Tool {
  id: string;
  description: string;
  /** The credential type the tool needs; "" when it needs none. */
  credentialType: string;
  /** True when a credential is bound, so calls will not answer MissingCredentialError. */
  credentialReady: boolean;
  operations: Operation[];
}

/** An OpenAI-style function definition (also what most other LLM APIs take). */
export interface FunctionDefinition {
  type: "function";
  function: {
    name: string;
    description: string;
    parameters: JsonSchema;
  };
}

/** An Anthropic-style tool definition. */
export interface AnthropicToolDefinition {
  name: string;
  description: string;
  input_schema: JsonSchema;
}

/** The longest parameters_json_schema the client parses (bytes of UTF-8). */
export const MAX_SCHEMA_BYTES = 256 * 1024;
/** The largest arguments JSON the client sends or parses (the sidecar refuses more). */
export const MAX_ARGUMENTS_BYTES = 1024 * 1024;
/** The longest function name the common LLM APIs accept. */
export const MAX_FUNCTION_NAME_LENGTH = 64;

/** ListTools' ToolInfo as proto-loader decodes it (keepCase). */
export interface ToolInfoMessage {
  tool_id: string;
  description: string;
  operations: {
    name: string;
    description: string;
    method: string;
    path: string;
    parameters_json_schema: string;
  }[];
  credential_ready: boolean;
  credential_type: string;
}

/** Parses one operation's schema; an empty one means "no params". */
function parseSchema(tool: string, op: string, text: string): JsonSchema {
  if (!text) return { type: "object", properties: {} };
  if (Buffer.byteLength(text, "utf8") > MAX_SCHEMA_BYTES) {
    throw new LatchkeyError(
      "RESOURCE_EXHAUSTED",
      `the parameter schema of ${tool}/${op} is over ${MAX_SCHEMA_BYTES} bytes: ` +
        "give the operation fewer or shorter params",
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new LatchkeyError(
      "INTERNAL",
      `the sidecar sent a parameter schema for ${tool}/${op} that is not JSON ` +
        `(${(e as Error).message}): report this as a latchkeyd bug`,
    );
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new LatchkeyError(
      "INTERNAL",
      `the sidecar sent a parameter schema for ${tool}/${op} that is not a JSON object: ` +
        "report this as a latchkeyd bug",
    );
  }
  return parsed as JsonSchema;
}

/** Turns ListTools' ToolInfo messages into Tool values. */
export function toolsFromMessages(messages: ToolInfoMessage[]): Tool[] {
  return messages.map((m) => ({
    id: m.tool_id,
    description: m.description,
    credentialType: m.credential_type,
    credentialReady: m.credential_ready,
    operations: (m.operations ?? []).map((o) => ({
      name: o.name,
      description: o.description,
      method: o.method,
      path: o.path,
      parameters: parseSchema(m.tool_id, o.name, o.parameters_json_schema),
    })),
  }));
}

const SEPARATOR = "__";
const VALID_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const HASH_HEX = 10;

/**
 * The function name for one operation: "<tool>__<operation>" when that is
 * a valid LLM function name and the tool id holds no "__" and does not end
 * in "_"; otherwise both ids with every character but [A-Za-z0-9-] made
 * "-", shortened to fit 64 characters, and "_" plus a hash of the exact ids.
 */
export function functionName(tool: string, operation: string): string {
  const plain = tool + SEPARATOR + operation;
  if (VALID_NAME.test(plain) && !tool.includes(SEPARATOR) && !tool.endsWith("_")) return plain;
  const digest = createHash("sha256")
    .update(`${tool}\0${operation}`, "utf8")
    .digest("hex")
    .slice(0, HASH_HEX);
  const odd = /[^A-Za-z0-9-]/g;
  let toolPart = tool.replace(odd, "-");
  let opPart = operation.replace(odd, "-");
  const room = MAX_FUNCTION_NAME_LENGTH - SEPARATOR.length - 1 - HASH_HEX;
  toolPart = toolPart.slice(0, Math.max(Math.floor(room / 2), room - opPart.length));
  opPart = opPart.slice(0, room - toolPart.length);
  return `${toolPart}${SEPARATOR}${opPart}_${digest}`;
}

function describe(tool: Tool, op: Operation): string {
  const text = op.description || `${op.method} ${op.path}`;
  return tool.description ? `${text} (tool ${tool.id}: ${tool.description})` : `${text} (tool ${tool.id})`;
}

/**
 * Parses a model's function-call arguments: an object as is, or the JSON
 * text most LLM APIs return (at most MAX_ARGUMENTS_BYTES; "" is {}).
 * Throws InvalidArgumentError for anything that is not one JSON object.
 */
export function parseArguments(args: Record<string, unknown> | string | undefined | null): Record<string, unknown> {
  let parsed: unknown = args ?? {};
  if (typeof parsed === "string") {
    if (Buffer.byteLength(parsed, "utf8") > MAX_ARGUMENTS_BYTES) {
      throw new InvalidArgumentError(`function arguments are over ${MAX_ARGUMENTS_BYTES} bytes`);
    }
    if (parsed.trim() === "") return {};
    try {
      parsed = JSON.parse(parsed);
    } catch (e) {
      throw new InvalidArgumentError(`function arguments are not valid JSON: ${(e as Error).message}`);
    }
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    const kind = parsed === null ? "null" : Array.isArray(parsed) ? "an array" : typeof parsed;
    throw new InvalidArgumentError(`function arguments must be a JSON object, not ${kind}`);
  }
  return parsed as Record<string, unknown>;
}

/** Options for toFunctionDefinitions. */
export interface FunctionDefinitionOptions {
  /** Leave out tools whose credential is not bound yet (default: keep them,
   *  so that calling one shows the person the setup link). */
  onlyReady?: boolean;
}

function offered(tools: Tool[], options: FunctionDefinitionOptions): [string, Tool, Operation][] {
  const out: [string, Tool, Operation][] = [];
  for (const tool of tools) {
    if (options.onlyReady && !tool.credentialReady) continue;
    for (const op of tool.operations) out.push([functionName(tool.id, op.name), tool, op]);
  }
  return out;
}

function copySchema(schema: JsonSchema): JsonSchema {
  return JSON.parse(JSON.stringify(schema)) as JsonSchema;
}

/** One OpenAI-style function definition per operation of every tool (fresh objects). */
export function toFunctionDefinitions(
  tools: Tool[],
  options: FunctionDefinitionOptions = {},
): FunctionDefinition[] {
  return offered(tools, options).map(([name, tool, op]) => ({
    type: "function",
    function: { name, description: describe(tool, op), parameters: copySchema(op.parameters) },
  }));
}

/** The same functions as Anthropic-style tool definitions. */
export function toAnthropicDefinitions(
  tools: Tool[],
  options: FunctionDefinitionOptions = {},
): AnthropicToolDefinition[] {
  return offered(tools, options).map(([name, tool, op]) => ({
    name,
    description: describe(tool, op),
    input_schema: copySchema(op.parameters),
  }));
}

/** What ToolDispatcher needs of a client (Client satisfies it). */
export interface Caller {
  call(
    budget: string,
    tool: string,
    operation: string,
    args?: Record<string, unknown>,
    options?: { timeoutMs?: number; requestId?: string },
  ): Promise<ToolResult>;
}

/**
 * Routes a model's function calls back to Latchkey: built from one listing,
 * it offers `definitions` to the model and executes calls by name.
 */
export class ToolDispatcher {
  readonly budget: string;
  /** OpenAI-style definitions of every offered function. */
  readonly definitions: FunctionDefinition[];
  /** The same functions as Anthropic-style tool definitions. */
  readonly anthropicDefinitions: AnthropicToolDefinition[];
  private readonly client: Caller;
  private readonly routes = new Map<string, { tool: string; operation: string }>();

  /** Throws InvalidArgumentError when two operations would share one function name. */
  constructor(client: Caller, budget: string, tools: Tool[], options: FunctionDefinitionOptions = {}) {
    this.client = client;
    this.budget = budget;
    for (const [name, tool, op] of offered(tools, options)) {
      const prior = this.routes.get(name);
      if (prior) {
        throw new InvalidArgumentError(
          `function name "${name}" is shared by ${prior.tool}/${prior.operation} and ${tool.id}/${op.name}`,
        );
      }
      this.routes.set(name, { tool: tool.id, operation: op.name });
    }
    this.definitions = toFunctionDefinitions(tools, options);
    this.anthropicDefinitions = toAnthropicDefinitions(tools, options);
  }

  /** Every offered function name, in listing order. */
  get names(): string[] {
    return [...this.routes.keys()];
  }

  /** True when `name` is one of the offered functions. */
  has(name: string): boolean {
    return this.routes.has(name);
  }

  /** The tool id and operation behind a function name; NotFoundError when it was not offered. */
  resolve(name: string): { tool: string; operation: string } {
    const route = this.routes.get(name);
    if (!route) {
      throw new NotFoundError(
        `there is no function named "${name}"; call one of: ${this.names.join(", ") || "(none)"}`,
      );
    }
    return { ...route };
  }

  /**
   * Executes one function call. `args` is the model's arguments, as an
   * object or as the JSON string most APIs return. Rejects with
   * NotFoundError for a name that was not offered, InvalidArgumentError for
   * arguments that are not one JSON object, and otherwise as Client.call does.
   */
  async call(
    name: string,
    args: Record<string, unknown> | string | undefined | null,
    options?: { timeoutMs?: number; requestId?: string },
  ): Promise<ToolResult> {
    const route = this.resolve(name);
    return this.client.call(this.budget, route.tool, route.operation, parseArguments(args), options);
  }
}
