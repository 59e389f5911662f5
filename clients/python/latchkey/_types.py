"""What the client hands back: a call's result and the tools a budget may
use, as plain immutable Python objects decoupled from the generated
protobuf classes (which are an implementation detail of the client).

Operation.parameters is the JSON Schema the sidecar built from the
operation's params, parsed once here so it can be handed to an LLM as a
function definition's "parameters" without further work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["CallResult", "Operation", "Tool"]

def _no_headers() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class CallResult:
    """The vendor's answer to one call, with every echo of the credential
    already replaced by ``[REDACTED]``.

    ``status`` is the vendor's HTTP status (a 4xx or 5xx from the vendor is
    a result, not an exception: the call went through), ``content_type``
    its Content-Type, ``body`` the raw bytes, ``headers`` the response
    headers, and ``redacted`` is True when the sidecar scrubbed a secret
    out of the body or headers.
    """

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    redacted: bool = False

    @property
    def ok(self) -> bool:
        """True for a 2xx HTTP status."""
        return 200 <= self.status < 300

    def header(self, name: str) -> Optional[str]:
        """The response header called name, whatever its case; None when
        absent."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def is_json(self) -> bool:
        """True when the Content-Type says the body is JSON
        (``application/json`` or any ``+json`` type)."""
        media = self.content_type.split(";", 1)[0].strip().lower()
        return media == "application/json" or media.endswith("+json")

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises ValueError when the Content-Type is not JSON or the body
        does not parse; check ``is_json`` first to avoid it.
        """
        if not self.is_json:
            raise ValueError("the vendor answered %r, not JSON"
                             % (self.content_type or "no content type"))
        return json.loads(self.body.decode("utf-8"))

    def as_dict(self) -> Dict[str, Any]:
        """The result as JSON-ready data, e.g. to hand back to the model as
        the tool's output: the parsed body when it is JSON, else the text."""
        out: Dict[str, Any] = {"status": self.status,
                               "content_type": self.content_type,
                               "redacted": self.redacted}
        if self.is_json:
            try:
                out["json"] = self.json()
                return out
            except ValueError:
                pass
        out["text"] = self.text
        return out


@dataclass(frozen=True)
class Operation:
    """One operation of a tool. ``parameters`` is a JSON-Schema object
    (``{"type": "object", "properties": ..., "required": [...]}``)."""

    name: str
    description: str
    method: str
    path: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class Tool:
    """A tool the budget may use. ``credential_ready`` is False when the
    tool needs a credential the budget does not bind yet: calling it
    raises MissingCredential."""

    id: str
    description: str
    operations: Tuple[Operation, ...]
    credential_ready: bool
    credential_type: str

    def operation(self, name: str) -> Operation:
        """The operation called name; KeyError when there is none."""
        for op in self.operations:
            if op.name == name:
                return op
        raise KeyError("tool %r has no operation %r" % (self.id, name))
