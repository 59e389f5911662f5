"""latchkey: the Python client for Latchkey's agent-facing sidecar.

Latchkey keeps the credentials an AI agent's tools need out of the agent:
the agent asks its sidecar (latchkeyd) to call a tool for a budget, and the
sidecar injects the secret and returns the vendor's scrubbed answer. This
package is that agent side::

    from latchkey import Client, MissingCredential, ToolFunctions

    with Client("unix:/run/latchkey/agent.sock", agent_token=token) as lk:
        functions = ToolFunctions(lk.list_tools("main"))   # for the LLM
        result = lk.call("main", "weather", "forecast", city="Paris")
        print(result.status, result.json(), result.redacted)

AsyncClient is the same over grpc.aio. Failures raise LatchkeyError
subclasses named after gRPC status codes; a tool with no credential bound
raises MissingCredential, carrying the setup link to show the user.
"""

from ._client import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, AsyncClient, Client
from ._errors import (CredentialField, DeadlineExceeded, FailedPrecondition,
                      InvalidArgument, LatchkeyError, MissingCredential,
                      NotFound, PermissionDenied, ResourceExhausted,
                      Unauthenticated, Unavailable)
from ._types import CallResult, Operation, Tool
from .functions import ToolFunctions, function_name

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "CallResult",
    "Client",
    "CredentialField",
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "LatchkeyError",
    "MissingCredential",
    "NotFound",
    "Operation",
    "PermissionDenied",
    "ResourceExhausted",
    "Tool",
    "ToolFunctions",
    "Unauthenticated",
    "Unavailable",
    "function_name",
]
