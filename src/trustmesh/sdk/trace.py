"""W3C Trace Context (https://www.w3.org/TR/trace-context/): ``traceparent`` parsing,
propagation, and the current trace of the request being served (a context variable),
which every event recorded meanwhile carries (:func:`trustmesh.events.set_trace_source`)."""

from __future__ import annotations

import contextvars
import os
import re
import secrets
import time
from dataclasses import dataclass

from trustmesh import events

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

    @property
    def sampled(self) -> bool:
        """The ``sampled`` flag (§3.2.2.5): every hop of the trace keeps its span."""
        return int(self.flags, 16) & 1 == 1

    @classmethod
    def new(cls, *, sampled: bool = True) -> TraceParent:
        """A new trace (``sampled``: its flag): its id the Unix time in milliseconds (48 bits) then 80 random
        bits, its span 64 random bits. Trace ids made later sort later, so the audit
        log's trace index grows at its end (a random id lands anywhere in it: on a log of
        200,000 records that cost the collector ≈ 15 µs an event); 80 random bits keep
        them distinct and unguessable, as §3.2.2.3 asks (at least the right 7 bytes
        random)."""
        ids = os.urandom(18).hex()  # one system call for both ids
        ms = round(time.time() * 1000) & 0xFFFF_FFFF_FFFF
        return cls(f"{ms:012x}{ids[:20]}", ids[20:], "01" if sampled else "00")


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


def _trace_id() -> str | None:
    current = _current.get()
    return current.trace_id if current is not None else None


# every event recorded while a request is served carries its trace, whoever records it
events.set_trace_source(_trace_id)
