"""Latchkey's error model: one exception class per gRPC status the sidecar
uses, and MissingCredential for the answer "no credential is bound yet".

The sidecar answers a call it could not make with a gRPC status (DESIGN.md
§4); this module turns each into a typed exception so an agent can write
``except latchkey.PermissionDenied`` instead of comparing status codes. A
missing credential is not a failed RPC (the sidecar answers OK with a
``missing_credential`` outcome), but an agent must not mistake it for a
vendor reply, so the client raises it too, as MissingCredential. Every
message comes from the sidecar or names only ids: none carries a secret.

The same model, in meaning, is used by the Node and C clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Type

import grpc

__all__ = [
    "CredentialField",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "LatchkeyError",
    "MissingCredential",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class LatchkeyError(Exception):
    """A call Latchkey did not complete.

    ``code`` is the gRPC status code (``grpc.StatusCode``) and ``message``
    the sidecar's explanation, which says what to do. Calls failing with a
    code that has no subclass below (INTERNAL, UNKNOWN, CANCELLED, ...)
    raise this class itself.
    """

    code: grpc.StatusCode

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return "%s: %s" % (self.code.name, self.message)

    def __repr__(self) -> str:
        return "%s(%r, %r)" % (type(self).__name__, self.code, self.message)


class NotFound(LatchkeyError):
    """The budget, tool or operation does not exist (NOT_FOUND)."""


class InvalidArgument(LatchkeyError):
    """The arguments do not match the operation's parameters, or an id is
    malformed (INVALID_ARGUMENT); the message names the offending one."""


class PermissionDenied(LatchkeyError):
    """The budget does not list this sidecar's agent (PERMISSION_DENIED)."""


class FailedPrecondition(LatchkeyError):
    """The budget is paused or the sidecar's replica is too stale
    (FAILED_PRECONDITION)."""


class Unauthenticated(LatchkeyError):
    """The agent token is missing or wrong (UNAUTHENTICATED)."""


class DeadlineExceeded(LatchkeyError):
    """The call did not finish before its deadline (DEADLINE_EXCEEDED)."""


class Unavailable(LatchkeyError):
    """The sidecar or the tool's vendor could not be reached
    (UNAVAILABLE)."""


class ResourceExhausted(LatchkeyError):
    """The request or the vendor's response is over its size limit, or a
    rate or spend limit was hit (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class CredentialField:
    """One field a missing credential needs. Never carries a value."""

    name: str
    secret: bool
    pattern: str
    description: str


class MissingCredential(LatchkeyError):
    """No credential is bound for this tool in this budget.

    The sidecar answered (``code`` is ``grpc.StatusCode.OK``) but could not
    call the vendor. Show ``setup_url`` (or ``hint``, the exact
    ``latchkeyctl`` command) to the user who owns the budget; the agent
    itself can do nothing about it. ``required_fields`` lists the fields
    the credential needs, by name, with their descriptions, whether each is
    secret, and the pattern a value must match.
    """

    def __init__(self, budget: str, tool: str, credential_type: str,
                 required_fields: Tuple[CredentialField, ...],
                 setup_url: str, hint: str) -> None:
        self.budget = budget
        self.tool = tool
        self.credential_type = credential_type
        self.required_fields = tuple(required_fields)
        self.setup_url = setup_url
        self.hint = hint
        names = ", ".join(f.name for f in self.required_fields) or "none"
        message = ("tool '%s' needs a credential of type '%s' (fields: %s) "
                   "bound in budget '%s'" % (tool, credential_type, names,
                                             budget))
        if setup_url:
            message += "; set it up at " + setup_url
        elif hint:
            message += "; " + hint
        super().__init__(grpc.StatusCode.OK, message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return ("MissingCredential(budget=%r, tool=%r, credential_type=%r, "
                "required_fields=%r, setup_url=%r, hint=%r)" % (
                    self.budget, self.tool, self.credential_type,
                    self.required_fields, self.setup_url, self.hint))

    def as_dict(self) -> Dict[str, Any]:
        """The answer as plain JSON-ready data, e.g. to hand back to the
        model as the tool's result (it holds no secret)."""
        return {
            "error": "missing_credential",
            "budget": self.budget,
            "tool": self.tool,
            "credential_type": self.credential_type,
            "required_fields": [
                {"name": f.name, "secret": f.secret, "pattern": f.pattern,
                 "description": f.description}
                for f in self.required_fields],
            "setup_url": self.setup_url,
            "hint": self.hint,
        }


_BY_CODE: Dict[grpc.StatusCode, Type[LatchkeyError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def error_for(code: Optional[grpc.StatusCode],
              message: Optional[str]) -> LatchkeyError:
    """The typed exception for a gRPC status code and message."""
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, LatchkeyError)
    return cls(code, message or "(no message from the server)")


def from_rpc_error(exc: grpc.RpcError) -> LatchkeyError:
    """The typed exception for a failed RPC (sync or grpc.aio)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else None
    return error_for(code, details)
