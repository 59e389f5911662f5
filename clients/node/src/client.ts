// The agent's handle on its Latchkey sidecar: one gRPC channel to
// latchkey.v1.ToolCalls (a Unix socket "unix:/path" or "host:port"), with
// the agent token sent as "authorization: Bearer <token>" on every call
// and a deadline on every call. Promises resolve only with results;
// everything else (a missing credential included) rejects with a typed
// LatchkeyError, so an agent loop needs one try/catch. The token lives in
// a private field and is never part of an error or of util.inspect output.

import * as fs from "fs";
import * as grpc from "@grpc/grpc-js";
import {
  InvalidArgumentError,
  LatchkeyError,
  MissingCredentialError,
  RequiredField,
  errorFromStatus,
} from "./errors";
import { toolCallsClientConstructor } from "./proto";
import { ToolResult } from "./result";
import {
  FunctionDefinitionOptions,
  MAX_ARGUMENTS_BYTES,
  Tool,
  ToolDispatcher,
  ToolInfoMessage,
  toolsFromMessages,
} from "./tools";

/** Where latchkeyd listens by default (latchkeyctl's default too). */
export const DEFAULT_ADDRESS = "unix:/run/latchkey/agent.sock";
/** Largest agent token file fromEnv reads. */
const MAX_TOKEN_BYTES = 4096;
/** Default per-call deadline. */
export const DEFAULT_TIMEOUT_MS = 30_000;
/** Default cap on one response message (the sidecar caps bodies at 3 MiB). */
export const DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

export interface ClientOptions {
  /** The token latchkeyd was started with (--agent-token-file); omit when it requires none. */
  agentToken?: string;
  /** Deadline of each call in milliseconds (default 30 000); per-call options override it. */
  timeoutMs?: number;
  /** Channel credentials; default insecure, for the pod-local Unix socket or loopback. */
  credentials?: grpc.ChannelCredentials;
  /** Largest response accepted, in bytes (default 8 MiB). */
  maxResponseBytes?: number;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

export interface CallOptions {
  /** This call's deadline in milliseconds, instead of the client's. */
  timeoutMs?: number;
  /** An id to correlate this call in the sidecar's audit log. */
  requestId?: string;
}

interface ToolCallResponseMessage {
  outcome?: "result" | "missing_credential";
  result?: {
    http_status: number;
    content_type: string;
    body: Buffer;
    headers: Record<string, string>;
    redacted: boolean;
  } | null;
  missing_credential?: {
    budget_id: string;
    tool_id: string;
    credential_type: string;
    required_fields: RequiredField[];
    setup_url: string;
    hint: string;
  } | null;
}

type Callback<T> = (err: grpc.ServiceError | null, value?: T) => void;
type UnaryMethod<T> = (
  request: object,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: Callback<T>,
) => grpc.ClientUnaryCall;

function checkTimeout(ms: unknown, what: string): number {
  if (typeof ms !== "number" || !Number.isFinite(ms) || ms <= 0) {
    throw new TypeError(`${what} must be a positive number of milliseconds, not ${String(ms)}`);
  }
  return ms;
}

/** A client of one Latchkey sidecar's ToolCalls service. */
export class Client {
  /** The address this client dials. */
  readonly address: string;
  readonly timeoutMs: number;
  readonly #token: string | undefined;
  readonly #stub: grpc.Client;
  #closed = false;

  /**
   * Opens a channel to the sidecar at `address` ("unix:/path/agent.sock" or
   * "host:port"); connecting happens on the first call.
   */
  constructor(address: string, options: ClientOptions = {}) {
    if (typeof address !== "string" || address.trim() === "") {
      throw new TypeError('address must be "unix:/path/to/socket" or "host:port"');
    }
    if (options.agentToken !== undefined) {
      if (typeof options.agentToken !== "string" || /[\r\n\0]/.test(options.agentToken)) {
        throw new TypeError("agentToken must be a string without line breaks or NUL");
      }
    }
    this.address = address;
    this.timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, "timeoutMs");
    this.#token = options.agentToken?.trim() || undefined;
    const maxResponse = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    const Ctor = toolCallsClientConstructor();
    this.#stub = new Ctor(address, options.credentials ?? grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": maxResponse,
      ...options.channelOptions,
    });
  }

  /**
   * A client configured as latchkeyctl's agent commands are: the address
   * from LATCHKEY_SIDECAR (default unix:/run/latchkey/agent.sock), the agent
   * token from the file LATCHKEY_AGENT_TOKEN_FILE names (at most 4096 bytes,
   * trailing newline stripped), else from LATCHKEY_AGENT_TOKEN, else none.
   */
  static fromEnv(options: Omit<ClientOptions, "agentToken"> = {}, env: NodeJS.ProcessEnv = process.env): Client {
    const address = env.LATCHKEY_SIDECAR || DEFAULT_ADDRESS;
    let agentToken = env.LATCHKEY_AGENT_TOKEN || undefined;
    const tokenFile = env.LATCHKEY_AGENT_TOKEN_FILE;
    if (tokenFile) {
      const fd = fs.openSync(tokenFile, "r");
      try {
        const buf = Buffer.alloc(MAX_TOKEN_BYTES + 1);
        const n = fs.readSync(fd, buf, 0, buf.length, 0);
        if (n > MAX_TOKEN_BYTES) {
          throw new TypeError(`LATCHKEY_AGENT_TOKEN_FILE ${tokenFile} is over ${MAX_TOKEN_BYTES} bytes`);
        }
        agentToken = buf.subarray(0, n).toString("utf8").replace(/[\r\n]+$/, "");
      } finally {
        fs.closeSync(fd);
      }
    }
    return new Client(address, { ...options, agentToken });
  }

  /** Lists the tools and operations `budget` may use, with parsed JSON-Schema params. */
  async listTools(budget: string, options: CallOptions = {}): Promise<Tool[]> {
    const res = await this.#unary<{ tools: ToolInfoMessage[] }>(
      "ListTools",
      { budget_id: budget },
      options,
    );
    return toolsFromMessages(res.tools ?? []);
  }

  /**
   * Lists the budget's tools and returns a dispatcher that offers them to a
   * model as function definitions and executes the model's calls.
   */
  async dispatcher(
    budget: string,
    options: CallOptions & FunctionDefinitionOptions = {},
  ): Promise<ToolDispatcher> {
    const tools = await this.listTools(budget, options);
    return new ToolDispatcher(this, budget, tools, options);
  }

  /**
   * Calls `operation` of `tool` for `budget` with `args` (one flat object of
   * the operation's params). Resolves with the vendor's scrubbed answer;
   * rejects with MissingCredentialError when no credential is bound, and
   * with a typed LatchkeyError for every gRPC failure.
   */
  async call(
    budget: string,
    tool: string,
    operation: string,
    args: Record<string, unknown> = {},
    options: CallOptions = {},
  ): Promise<ToolResult> {
    if (args === null || typeof args !== "object" || Array.isArray(args)) {
      throw new InvalidArgumentError(
        `the arguments of ${tool}/${operation} must be one object of the operation's params`,
      );
    }
    const argumentsJson = JSON.stringify(args);
    if (Buffer.byteLength(argumentsJson, "utf8") > MAX_ARGUMENTS_BYTES) {
      throw new InvalidArgumentError(`arguments are over ${MAX_ARGUMENTS_BYTES} bytes of JSON`);
    }
    const res = await this.#unary<ToolCallResponseMessage>(
      "Call",
      {
        budget_id: budget,
        tool_id: tool,
        operation,
        arguments_json: argumentsJson,
        request_id: options.requestId ?? "",
      },
      options,
    );
    if (res.outcome === "result" && res.result) {
      const r = res.result;
      return new ToolResult({
        status: r.http_status,
        contentType: r.content_type,
        body: Buffer.isBuffer(r.body) ? r.body : Buffer.from(r.body ?? []),
        headers: { ...(r.headers ?? {}) },
        redacted: r.redacted,
      });
    }
    if (res.outcome === "missing_credential" && res.missing_credential) {
      const m = res.missing_credential;
      throw new MissingCredentialError({
        budget: m.budget_id,
        tool: m.tool_id,
        credentialType: m.credential_type,
        requiredFields: (m.required_fields ?? []).map((f) => ({
          name: f.name,
          secret: f.secret,
          pattern: f.pattern,
          description: f.description,
        })),
        setupUrl: m.setup_url,
        hint: m.hint,
      });
    }
    throw new LatchkeyError(
      "INTERNAL",
      `the sidecar answered ${tool}/${operation} with neither a result nor a missing credential: ` +
        "report this as a latchkeyd bug",
    );
  }

  /** Closes the channel; later calls reject with a CANCELLED LatchkeyError. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stub.close();
  }

  #unary<T>(method: "Call" | "ListTools", request: object, options: CallOptions): Promise<T> {
    if (this.#closed) {
      return Promise.reject(new LatchkeyError("CANCELLED", "the client is closed: create a new one"));
    }
    let timeoutMs: number;
    try {
      timeoutMs = checkTimeout(options.timeoutMs ?? this.timeoutMs, "timeoutMs");
    } catch (e) {
      return Promise.reject(e);
    }
    const metadata = new grpc.Metadata();
    if (this.#token !== undefined) metadata.set("authorization", `Bearer ${this.#token}`);
    const fn = (this.#stub as unknown as Record<string, UnaryMethod<T>>)[method].bind(this.#stub);
    return new Promise<T>((resolve, reject) => {
      fn(request, metadata, { deadline: Date.now() + timeoutMs }, (err, value) => {
        if (err) reject(errorFromStatus(err));
        else resolve(value as T);
      });
    });
  }
}
