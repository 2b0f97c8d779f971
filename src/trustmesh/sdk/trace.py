"""W3C Trace Context (https://www.w3.org/TR/trace-context/): ``traceparent`` parsing,
propagation, and the current trace of the request being served (a context variable)."""

from __future__ import annotations

import contextvars
import os
import re
import secrets
from dataclasses import dataclass

__all__ = ["TraceParent", "current", "parse", "reset", "use"]

# version 00: 2 hex - 32 hex trace-id - 16 hex parent-id - 2 hex flags (§3.2)
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str = "01"

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceParent:
        """A new span in the same trace (what an outgoing call carries)."""
        return TraceParent(self.trace_id, secrets.token_hex(8), self.flags)

    @classmethod
    def new(cls) -> TraceParent:
        ids = os.urandom(24).hex()  # one system call for both ids
        return cls(ids[:32], ids[32:])


def parse(value: str | None) -> TraceParent | None:
    """A valid version-00 ``traceparent``, else None (§3.2.2: all-zero ids are invalid)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, flags)


_current: contextvars.ContextVar[TraceParent | None] = contextvars.ContextVar(
    "trustmesh_trace", default=None
)


def current() -> TraceParent | None:
    return _current.get()


def use(trace: TraceParent) -> contextvars.Token[TraceParent | None]:
    return _current.set(trace)


def reset(token: contextvars.Token[TraceParent | None]) -> None:
    _current.reset(token)
