"""LLM function calling over Latchkey: list_tools output as function
definitions, and a model's function call back to a Latchkey call.

Each (tool, operation) becomes one function. Its name is
``<tool>__<operation>`` whenever that is a valid function name for the
common LLM APIs (``^[A-Za-z0-9_-]{1,64}$``) and splits back unambiguously
at its first ``__`` (the tool id has no ``__`` and does not end in ``_``).
Ids that cannot (a ``.`` in them, or too long) get the same shape with the
odd characters replaced and a short hash of the exact ids appended, so a
name is always a pure function of the ids: a stateless agent process that
rebuilds ToolFunctions from list_tools gets the same names back. The
ToolFunctions table reverses every name exactly; two pairs mapping to one
name is refused when the table is built.

Function-call arguments come from the model, so they are untrusted: they
are size-capped before parsing and must be one JSON object. A bad name or
bad arguments raise NotFound / InvalidArgument like the sidecar would, so
an agent loop can hand every failure back to the model the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import (Any, Dict, Iterable, List, Mapping, Optional, Tuple,
                    Union)

import grpc

from ._client import MAX_ARGUMENTS_BYTES
from ._errors import InvalidArgument, NotFound
from ._types import Operation, Tool

__all__ = ["ToolFunctions", "function_name"]

SEPARATOR = "__"
MAX_NAME_LENGTH = 64
_VALID_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_ODD = re.compile(r"[^A-Za-z0-9-]")


def function_name(tool_id: str, operation: str) -> str:
    """The function name for one operation of one tool: normally
    ``<tool_id>__<operation>``, otherwise (see the module docstring) a
    sanitized form with a hash suffix."""
    plain = tool_id + SEPARATOR + operation
    if (_VALID_NAME.match(plain) and SEPARATOR not in tool_id
            and not tool_id.endswith("_")):
        return plain
    digest = hashlib.sha256((tool_id + "\0" + operation).encode("utf-8")
                            ).hexdigest()[:10]
    tool_part = _ODD.sub("-", tool_id)
    op_part = _ODD.sub("-", operation)
    room = MAX_NAME_LENGTH - len(SEPARATOR) - 1 - len(digest)
    tool_room = max(room // 2, room - len(op_part))
    tool_part = tool_part[:tool_room]
    op_part = op_part[:room - len(tool_part)]
    return tool_part + SEPARATOR + op_part + "_" + digest


def _description(tool: Tool, op: Operation) -> str:
    text = op.description or ("%s %s" % (op.method, op.path))
    if tool.description:
        text += " (tool %s: %s)" % (tool.id, tool.description)
    else:
        text += " (tool %s)" % tool.id
    return text


class ToolFunctions:
    """The functions for a list of tools (Client.list_tools output).

    ``definitions`` is the list to pass as an OpenAI-style ``tools``
    argument: ``{"type": "function", "function": {"name", "description",
    "parameters"}}`` per operation, ``parameters`` being the sidecar's
    JSON Schema. ``anthropic_definitions()`` gives the same functions as
    ``{"name", "description", "input_schema"}``. ``call`` runs a model's
    function call through a Latchkey client.
    """

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._by_name: Dict[str, Tuple[Tool, Operation]] = {}
        for tool in tools:
            for op in tool.operations:
                name = function_name(tool.id, op.name)
                if name in self._by_name:
                    other, other_op = self._by_name[name]
                    raise ValueError(
                        "function name %r is shared by %s/%s and %s/%s"
                        % (name, other.id, other_op.name, tool.id, op.name))
                self._by_name[name] = (tool, op)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> List[str]:
        """Every function name, in list_tools order."""
        return list(self._by_name)

    @property
    def definitions(self) -> List[Dict[str, Any]]:
        """OpenAI-style function definitions (fresh dicts, safe to
        modify)."""
        return [{"type": "function",
                 "function": {"name": name,
                              "description": _description(tool, op),
                              "parameters": json.loads(
                                  json.dumps(op.parameters))}}
                for name, (tool, op) in self._by_name.items()]

    def anthropic_definitions(self) -> List[Dict[str, Any]]:
        """The same functions as Anthropic-style tool definitions."""
        return [{"name": d["function"]["name"],
                 "description": d["function"]["description"],
                 "input_schema": d["function"]["parameters"]}
                for d in self.definitions]

    def resolve(self, name: str) -> Tuple[str, str]:
        """(tool id, operation) for a function name; NotFound when the
        name is none of these functions."""
        try:
            tool, op = self._by_name[name]
        except (KeyError, TypeError):
            raise NotFound(
                grpc.StatusCode.NOT_FOUND,
                "there is no function named %r; call one of: %s"
                % (name, ", ".join(self._by_name) or "(none)")) from None
        return tool.id, op.name

    @staticmethod
    def parse_arguments(
            arguments: Union[str, bytes, Mapping[str, Any], None]
    ) -> Dict[str, Any]:
        """A model's function-call arguments (a JSON text, as LLM APIs
        return them, or an already parsed mapping) as a dict;
        InvalidArgument when they are too large or not one JSON object."""
        if arguments is None:
            return {}
        if isinstance(arguments, Mapping):
            return dict(arguments)
        if isinstance(arguments, (bytes, bytearray)):
            if len(arguments) > MAX_ARGUMENTS_BYTES:
                raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                      "function arguments are over %d bytes"
                                      % MAX_ARGUMENTS_BYTES)
            try:
                arguments = bytes(arguments).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                      "function arguments are not UTF-8"
                                      ) from None
        if not isinstance(arguments, str):
            raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                  "function arguments must be a JSON object, "
                                  "not %s" % type(arguments).__name__)
        if len(arguments) > MAX_ARGUMENTS_BYTES:
            raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                  "function arguments are over %d bytes"
                                  % MAX_ARGUMENTS_BYTES)
        if arguments.strip() == "":
            return {}
        try:
            value = json.loads(arguments)
        except ValueError as exc:
            raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                  "function arguments are not valid JSON: %s"
                                  % exc) from None
        if not isinstance(value, dict):
            raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                  "function arguments must be a JSON object, "
                                  "not %s" % type(value).__name__)
        return value

    def call(self, client: Any, budget: str, name: str,
             arguments: Union[str, bytes, Mapping[str, Any], None], *,
             timeout: Optional[float] = None,
             request_id: Optional[str] = None) -> Any:
        """Runs the function call ``name(arguments)`` through ``client``
        for ``budget``: with a Client, returns its CallResult; with an
        AsyncClient, returns the awaitable (``await functions.call(...)``).

        Raises what client.call raises, plus NotFound for an unknown name
        and InvalidArgument for arguments that are not one JSON object.
        """
        tool, op = self.resolve(name)
        args = self.parse_arguments(arguments)
        return client.call(budget, tool, op, args, timeout=timeout,
                           request_id=request_id)
