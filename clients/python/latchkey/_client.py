"""Client and AsyncClient: latchkey.v1.ToolCalls over gRPC, sync
(grpc) and async (grpc.aio), with one shared translation layer.

Both clients build the same requests and read the same responses through
the module-level helpers below, so the two cannot drift apart: only the
channel and the await differ. The agent token travels as the metadata
``authorization: Bearer <token>`` on every call and is never logged or put
in an exception. A gRPC failure becomes a typed LatchkeyError; a
``missing_credential`` outcome becomes MissingCredential.
"""

from __future__ import annotations

import json
import os
from types import MappingProxyType
from typing import (Any, List, Mapping, Optional, Sequence, Tuple, Type,
                    TypeVar)

import grpc
import grpc.aio

from ._errors import (CredentialField, InvalidArgument, LatchkeyError,
                      MissingCredential, from_rpc_error)
from ._types import CallResult, Operation, Tool

try:
    from .v1 import toolcalls_pb2, toolcalls_pb2_grpc
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "latchkey's generated gRPC modules (latchkey/v1/*_pb2.py) are "
        "missing: build them with clients/python/build_stubs.sh (or use "
        "the Bazel target //clients/python:latchkey)") from exc

__all__ = ["AsyncClient", "Client", "DEFAULT_ADDRESS", "DEFAULT_TIMEOUT"]

#: Where latchkeyd listens by default (latchkeyctl's default too).
DEFAULT_ADDRESS = "unix:/run/latchkey/agent.sock"
#: Per-call deadline in seconds when the caller names none.
DEFAULT_TIMEOUT = 30.0
#: Largest arguments JSON a client sends; the sidecar refuses more.
MAX_ARGUMENTS_BYTES = 1024 * 1024
#: Largest agent token file from_env reads.
_MAX_TOKEN_BYTES = 4096

Metadata = Tuple[Tuple[str, str], ...]
_C = TypeVar("_C", "Client", "AsyncClient")


def _metadata(agent_token: Optional[str]) -> Metadata:
    if agent_token is None or agent_token == "":
        return ()
    if any(ch in agent_token for ch in "\r\n\0"):
        raise ValueError("agent_token contains a line break or NUL")
    return (("authorization", "Bearer " + agent_token),)


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError("%s must be a str, not %s" % (what,
                                                      type(value).__name__))
    return value


def _encode_arguments(arguments: Optional[Mapping[str, Any]],
                      kwargs: Mapping[str, Any]) -> str:
    merged = {}
    if arguments is not None:
        if not isinstance(arguments, Mapping):
            raise TypeError("arguments must be a mapping of parameter name "
                            "to value, not %s" % type(arguments).__name__)
        merged.update(arguments)
    for key, value in kwargs.items():
        if key in merged:
            raise TypeError("argument %r given twice" % key)
        merged[key] = value
    text = json.dumps(merged, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":"))
    if len(text.encode("utf-8")) > MAX_ARGUMENTS_BYTES:
        raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                              "arguments are over %d bytes of JSON"
                              % MAX_ARGUMENTS_BYTES)
    return text


def _call_request(budget: str, tool: str, operation: str,
                  arguments: Optional[Mapping[str, Any]],
                  kwargs: Mapping[str, Any],
                  request_id: Optional[str]) -> Any:
    return toolcalls_pb2.ToolCallRequest(
        budget_id=_check_id(budget, "budget"),
        tool_id=_check_id(tool, "tool"),
        operation=_check_id(operation, "operation"),
        arguments_json=_encode_arguments(arguments, kwargs),
        request_id=request_id or "")


def _call_result(resp: Any) -> CallResult:
    outcome = resp.WhichOneof("outcome")
    if outcome == "missing_credential":
        mc = resp.missing_credential
        raise MissingCredential(
            budget=mc.budget_id, tool=mc.tool_id,
            credential_type=mc.credential_type,
            required_fields=tuple(
                CredentialField(name=f.name, secret=f.secret,
                                pattern=f.pattern,
                                description=f.description)
                for f in mc.required_fields),
            setup_url=mc.setup_url, hint=mc.hint)
    if outcome != "result":
        raise LatchkeyError(
            grpc.StatusCode.UNKNOWN,
            "the sidecar answered with neither a result nor a missing "
            "credential; is it a latchkeyd of a matching version?")
    r = resp.result
    return CallResult(status=r.http_status, content_type=r.content_type,
                      body=bytes(r.body),
                      headers=MappingProxyType(dict(r.headers)),
                      redacted=r.redacted)


def _parse_schema(text: str, tool: str, op: str) -> Mapping[str, Any]:
    if text == "":
        return {"type": "object", "properties": {}}
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise LatchkeyError(
            grpc.StatusCode.UNKNOWN,
            "the sidecar sent a parameters schema for %s/%s that is not "
            "JSON: %s" % (tool, op, exc)) from None
    if not isinstance(schema, dict):
        raise LatchkeyError(
            grpc.StatusCode.UNKNOWN,
            "the sidecar sent a parameters schema for %s/%s that is not a "
            "JSON object" % (tool, op))
    return schema


def _tools(resp: Any) -> List[Tool]:
    return [
        Tool(id=t.tool_id, description=t.description,
             credential_ready=t.credential_ready,
             credential_type=t.credential_type,
             operations=tuple(
                 Operation(name=o.name, description=o.description,
                           method=o.method, path=o.path,
                           parameters=_parse_schema(
                               o.parameters_json_schema, t.tool_id,
                               o.name))
                 for o in t.operations))
        for t in resp.tools]


def _env_settings() -> Tuple[str, Optional[str]]:
    address = os.environ.get("LATCHKEY_SIDECAR") or DEFAULT_ADDRESS
    token_file = os.environ.get("LATCHKEY_AGENT_TOKEN_FILE")
    if token_file:
        with open(token_file, "rb") as f:
            raw = f.read(_MAX_TOKEN_BYTES + 1)
        if len(raw) > _MAX_TOKEN_BYTES:
            raise ValueError("LATCHKEY_AGENT_TOKEN_FILE %s is over %d bytes"
                             % (token_file, _MAX_TOKEN_BYTES))
        return address, raw.decode("utf-8").rstrip("\r\n")
    return address, os.environ.get("LATCHKEY_AGENT_TOKEN") or None


class _Base:
    """What Client and AsyncClient share: settings, metadata, from_env."""

    def __init__(self, address: str, agent_token: Optional[str],
                 timeout: Optional[float]) -> None:
        if not isinstance(address, str) or address == "":
            raise ValueError("address must be a gRPC address such as "
                             "unix:/run/latchkey/agent.sock or 127.0.0.1:7600")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive seconds or None")
        self.address = address
        self.timeout = timeout
        self._metadata = _metadata(agent_token)

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def __repr__(self) -> str:
        return "%s(%r, agent_token=%s, timeout=%r)" % (
            type(self).__name__, self.address,
            "<set>" if self._metadata else None, self.timeout)

    @classmethod
    def from_env(cls: Type[_C], timeout: Optional[float] = DEFAULT_TIMEOUT,
                 options: Optional[Sequence[Tuple[str, Any]]] = None) -> _C:
        """A client configured as latchkeyctl's agent commands are: the
        address from LATCHKEY_SIDECAR (default unix:/run/latchkey/agent.sock)
        and the agent token from the file named by LATCHKEY_AGENT_TOKEN_FILE
        (trailing newline stripped), else from LATCHKEY_AGENT_TOKEN, else
        none."""
        address, token = _env_settings()
        return cls(address, agent_token=token, timeout=timeout,
                   options=options)  # type: ignore[call-arg]


class Client(_Base):
    """A blocking client for a latchkeyd sidecar's ToolCalls service.

    ``address`` is a gRPC address (``unix:/path`` or ``host:port``),
    ``agent_token`` the token the sidecar requires (``--agent-token-file``),
    if any, and ``timeout`` the default per-call deadline in seconds (None:
    no deadline). ``options`` are extra gRPC channel arguments. Use it as a
    context manager, or call close().

    Thread-safe: one Client may serve every thread of an agent.
    """

    def __init__(self, address: str, agent_token: Optional[str] = None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, *,
                 options: Optional[Sequence[Tuple[str, Any]]] = None) -> None:
        super().__init__(address, agent_token, timeout)
        self._channel = grpc.insecure_channel(address,
                                              options=list(options or ()))
        self._stub = toolcalls_pb2_grpc.ToolCallsStub(self._channel)

    def list_tools(self, budget: str, *,
                   timeout: Optional[float] = None) -> List[Tool]:
        """The tools and operations ``budget`` may use, each operation with
        its parameters as a parsed JSON-Schema object (see
        latchkey.ToolFunctions to turn them into LLM function definitions).

        Raises a LatchkeyError subclass when the sidecar refuses.
        """
        req = toolcalls_pb2.ListToolsRequest(
            budget_id=_check_id(budget, "budget"))
        try:
            resp = self._stub.ListTools(req, timeout=self._deadline(timeout),
                                        metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return _tools(resp)

    def call(self, budget: str, tool: str, operation: str,
             arguments: Optional[Mapping[str, Any]] = None, /, *,
             timeout: Optional[float] = None,
             request_id: Optional[str] = None, **args: Any) -> CallResult:
        """Calls ``operation`` of ``tool`` for ``budget`` with the
        operation's params as keyword arguments (or as one mapping, for
        names that are not Python identifiers or clash with ``timeout`` or
        ``request_id``), and returns the vendor's scrubbed answer.

        Raises MissingCredential when the budget binds no credential for
        the tool, and a LatchkeyError subclass (InvalidArgument, NotFound,
        PermissionDenied, DeadlineExceeded, ...) when the call fails.
        """
        req = _call_request(budget, tool, operation, arguments, args,
                            request_id)
        try:
            resp = self._stub.Call(req, timeout=self._deadline(timeout),
                                   metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return _call_result(resp)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio client (grpc.aio): the same API as Client, with
    coroutines. Create and use it inside one running event loop; use it as
    an ``async with`` context manager, or ``await close()``."""

    def __init__(self, address: str, agent_token: Optional[str] = None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, *,
                 options: Optional[Sequence[Tuple[str, Any]]] = None) -> None:
        super().__init__(address, agent_token, timeout)
        self._channel = grpc.aio.insecure_channel(address,
                                                  options=list(options or ()))
        self._stub = toolcalls_pb2_grpc.ToolCallsStub(self._channel)

    async def list_tools(self, budget: str, *,
                         timeout: Optional[float] = None) -> List[Tool]:
        """As Client.list_tools."""
        req = toolcalls_pb2.ListToolsRequest(
            budget_id=_check_id(budget, "budget"))
        try:
            resp = await self._stub.ListTools(
                req, timeout=self._deadline(timeout),
                metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return _tools(resp)

    async def call(self, budget: str, tool: str, operation: str,
                   arguments: Optional[Mapping[str, Any]] = None, /, *,
                   timeout: Optional[float] = None,
                   request_id: Optional[str] = None,
                   **args: Any) -> CallResult:
        """As Client.call."""
        req = _call_request(budget, tool, operation, arguments, args,
                            request_id)
        try:
            resp = await self._stub.Call(req, timeout=self._deadline(timeout),
                                         metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return _call_result(resp)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
