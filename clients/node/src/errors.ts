// The client's error model, the same in meaning as the Python and C
// clients': every failure is a LatchkeyError carrying the gRPC status name
// (`code`) and the sidecar's message, which says what to do. Each status
// the sidecar uses (DESIGN.md §4) has its own class so that agents can
// branch with `instanceof`; any other status (INTERNAL, CANCELLED, ...)
// stays a plain LatchkeyError. A missing credential is not a gRPC error
// (the sidecar answers OK with a MissingCredential); the client turns it
// into a MissingCredentialError so the happy path returns only results.
// No message or field here ever holds a secret: the sidecar never sends
// one, and the client adds none.

import { status as GrpcStatus } from "@grpc/grpc-js";

/** The gRPC status names this client reports, plus MISSING_CREDENTIAL. */
export type ErrorCode =
  | "OK"
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED"
  | "MISSING_CREDENTIAL";

/** Base class of every error this client raises. */
export class LatchkeyError extends Error {
  /** The gRPC status name, e.g. "NOT_FOUND", or "MISSING_CREDENTIAL". */
  readonly code: ErrorCode;
  /** The numeric gRPC status (0 for MISSING_CREDENTIAL, which is an OK answer). */
  readonly grpcCode: number;

  constructor(code: ErrorCode, message: string, grpcCode?: number) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.grpcCode = grpcCode ?? grpcCodeOf(code);
  }
}

/** Unknown tool, operation or budget. */
export class NotFoundError extends LatchkeyError {
  constructor(message: string) {
    super("NOT_FOUND", message);
  }
}

/** Arguments that do not match the operation's parameters, or a bad id. */
export class InvalidArgumentError extends LatchkeyError {
  constructor(message: string) {
    super("INVALID_ARGUMENT", message);
  }
}

/** The budget is not this agent's. */
export class PermissionDeniedError extends LatchkeyError {
  constructor(message: string) {
    super("PERMISSION_DENIED", message);
  }
}

/** The budget is paused, or the sidecar's replica is too stale to serve. */
export class FailedPreconditionError extends LatchkeyError {
  constructor(message: string) {
    super("FAILED_PRECONDITION", message);
  }
}

/** The agent token is missing or wrong. */
export class UnauthenticatedError extends LatchkeyError {
  constructor(message: string) {
    super("UNAUTHENTICATED", message);
  }
}

/** The call's deadline (timeoutMs) passed before the vendor answered. */
export class DeadlineExceededError extends LatchkeyError {
  constructor(message: string) {
    super("DEADLINE_EXCEEDED", message);
  }
}

/** The sidecar or the tool's vendor could not be reached. */
export class UnavailableError extends LatchkeyError {
  constructor(message: string) {
    super("UNAVAILABLE", message);
  }
}

/** A request or response over its size limit, or a rate or spend limit hit. */
export class ResourceExhaustedError extends LatchkeyError {
  constructor(message: string) {
    super("RESOURCE_EXHAUSTED", message);
  }
}

/** One field the missing credential needs; never carries a value. */
export interface RequiredField {
  name: string;
  /** True for fields that are write-only once saved (keys, passwords). */
  secret: boolean;
  /** POSIX extended regex the value must match; "" when unconstrained. */
  pattern: string;
  description: string;
}

/** What MissingCredentialError carries, as the sidecar sent it. */
export interface MissingCredentialInfo {
  budget: string;
  tool: string;
  credentialType: string;
  requiredFields: RequiredField[];
  /** Where a person can provide the credential; "" when the sidecar has no
   *  --setup-url-template. */
  setupUrl: string;
  /** The exact latchkeyctl command that binds a credential. */
  hint: string;
}

/**
 * No credential is bound for this tool in this budget. Show `setupUrl` (or
 * `hint`) to the person who owns the budget; do not show it to the model as
 * something it can fix.
 */
export class MissingCredentialError extends LatchkeyError implements MissingCredentialInfo {
  readonly budget: string;
  readonly tool: string;
  readonly credentialType: string;
  readonly requiredFields: RequiredField[];
  readonly setupUrl: string;
  readonly hint: string;

  constructor(info: MissingCredentialInfo) {
    const names = info.requiredFields.map((f) => f.name).join(", ") || "none";
    let message =
      `tool '${info.tool}' needs a credential of type '${info.credentialType}' ` +
      `(fields: ${names}) bound in budget '${info.budget}'`;
    if (info.setupUrl) message += `; set it up at ${info.setupUrl}`;
    else if (info.hint) message += `; ${info.hint}`;
    super("MISSING_CREDENTIAL", message, 0);
    this.budget = info.budget;
    this.tool = info.tool;
    this.credentialType = info.credentialType;
    this.requiredFields = info.requiredFields.map((f) => ({ ...f }));
    this.setupUrl = info.setupUrl;
    this.hint = info.hint;
  }

  /**
   * The answer as plain JSON-ready data (the same shape the Python client's
   * as_dict gives), e.g. to hand back to the model as the tool's result; it
   * holds no secret.
   */
  toJSON(): Record<string, unknown> {
    return {
      error: "missing_credential",
      budget: this.budget,
      tool: this.tool,
      credential_type: this.credentialType,
      required_fields: this.requiredFields.map((f) => ({ ...f })),
      setup_url: this.setupUrl,
      hint: this.hint,
    };
  }
}

const CODE_NAMES: Record<number, ErrorCode> = {};
for (const [name, value] of Object.entries(GrpcStatus)) {
  if (typeof value === "number") CODE_NAMES[value] = name as ErrorCode;
}

function grpcCodeOf(code: ErrorCode): number {
  if (code === "MISSING_CREDENTIAL") return 0;
  const value = (GrpcStatus as unknown as Record<string, number>)[code];
  return typeof value === "number" ? value : GrpcStatus.UNKNOWN;
}

/** The shape of a failed grpc-js call that errorFromStatus reads. */
export interface StatusLike {
  code?: number;
  details?: string;
  message?: string;
}

/** Turns a failed gRPC call's status into the matching typed error. */
export function errorFromStatus(status: StatusLike): LatchkeyError {
  const grpcCode = typeof status.code === "number" ? status.code : GrpcStatus.UNKNOWN;
  const message = status.details || status.message || "the sidecar gave no reason";
  switch (grpcCode) {
    case GrpcStatus.NOT_FOUND:
      return new NotFoundError(message);
    case GrpcStatus.INVALID_ARGUMENT:
      return new InvalidArgumentError(message);
    case GrpcStatus.PERMISSION_DENIED:
      return new PermissionDeniedError(message);
    case GrpcStatus.FAILED_PRECONDITION:
      return new FailedPreconditionError(message);
    case GrpcStatus.UNAUTHENTICATED:
      return new UnauthenticatedError(message);
    case GrpcStatus.DEADLINE_EXCEEDED:
      return new DeadlineExceededError(message);
    case GrpcStatus.UNAVAILABLE:
      return new UnavailableError(message);
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError(message);
    default:
      return new LatchkeyError(CODE_NAMES[grpcCode] ?? "UNKNOWN", message, grpcCode);
  }
}
