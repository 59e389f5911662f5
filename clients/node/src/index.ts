// @latchkey/client: the TypeScript client for agent runtimes (DESIGN.md §1,
// §4). List the tools a budget may use as LLM function definitions, call
// them through the sidecar (which injects the credential and scrubs its
// echo), and get a MissingCredentialError with a setup link when a
// credential is not bound yet.

export { Client, DEFAULT_ADDRESS, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT_MS } from "./client";
export type { CallOptions, ClientOptions } from "./client";
export {
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  LatchkeyError,
  MissingCredentialError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  errorFromStatus,
} from "./errors";
export type { ErrorCode, MissingCredentialInfo, RequiredField } from "./errors";
export { ToolResult } from "./result";
export {
  MAX_ARGUMENTS_BYTES,
  MAX_FUNCTION_NAME_LENGTH,
  MAX_SCHEMA_BYTES,
  ToolDispatcher,
  functionName,
  parseArguments,
  toAnthropicDefinitions,
  toFunctionDefinitions,
} from "./tools";
export type {
  AnthropicToolDefinition,
  Caller,
  FunctionDefinition,
  FunctionDefinitionOptions,
  JsonSchema,
  Operation,
  Tool,
} from "./tools";
