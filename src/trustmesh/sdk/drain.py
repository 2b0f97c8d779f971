"""Draining a process's listeners when it is told to stop (SIGTERM, SIGINT).

1. :func:`begin`: every listener of the process (each one
   :func:`trustmesh.sdk.serve.run_server` started, and each other one it
   :func:`track`: a gRPC server, :class:`Drainable`) stops accepting connections at
   once, closes its idle keep-alive connections, and lets the requests in flight finish
   (each connection closed once its last answer is out; a peer that does not answer the
   TLS close within a moment is cut off: it must not hold the process until the deadline);
2. all of them share one deadline, ``listen.drain`` seconds after :func:`begin` (10 s
   by default: :func:`configure`);
3. a request still running at the deadline is cut: answered ``503 unavailable``
   (``connection: close``, ``retry-after: 1``) when its answer has not begun
   (:func:`cuttable`), its connection closed when it has; either way it is an event
   (``shutting-down``: its method, path, what the client got, and its trace when the
   request named one), through what the
   process registered with :func:`on_cut` — the request's own event, which its handler
   would have written, never comes.

What the process does next is its own ``stop``: the listeners' tasks end, then its
events are flushed to the collector (what cannot be delivered in time stays spooled:
:meth:`trustmesh.sdk.delivery.AuditSink.close`). A listener stopped without a drain
(a test, an embedding) keeps its own bounded shutdown.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Protocol

import uvicorn

from trustmesh import events
from trustmesh.reasons import Reason
from trustmesh.sdk import trace

__all__ = [
    "DEFAULT_SECONDS",
    "Drainable",
    "begin",
    "configure",
    "cuttable",
    "draining",
    "on_cut",
    "record_cuts",
    "track",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds the requests in flight are given when nothing else is configured.
DEFAULT_SECONDS: Final = 10.0
#: Seconds between two looks at the closing connections.
_TICK: Final = 0.25
#: At most this much of a cut request's path is in its event.
_MAX_PATH: Final = 512

CUT: Final = json.dumps(
    {"error": "unavailable", "message": "the server is shutting down; retry the request"}
).encode()


class Drainable(Protocol):
    """A listener that is not uvicorn's (a gRPC server): :func:`begin` calls
    ``begin_drain(seconds)``, which must not block; the listener stops accepting at once
    and ends what is still running ``seconds`` later."""

    def begin_drain(self, seconds: float) -> None: ...


class _Drain:
    """The process's drain: its deadline's length, whether it began, and the listeners
    it stops (weakly held: a listener that is gone is not waited for)."""

    def __init__(self) -> None:
        self.seconds = DEFAULT_SECONDS
        self.begun = False
        self.servers: weakref.WeakSet[uvicorn.Server] = weakref.WeakSet()
        self.others: weakref.WeakSet[Drainable] = weakref.WeakSet()
        self.closer: asyncio.Task[None] | None = None
        self.on_cut: Callable[[Scope, bool], None] | None = None


_drain = _Drain()


def configure(seconds: float) -> None:
    """How long the requests in flight get at the next :func:`begin` (the declaration's
    ``listen.drain``; set once at start)."""
    if seconds <= 0:
        raise ValueError("a drain lasts a positive number of seconds")
    _drain.seconds = seconds


def on_cut(record: Callable[[Scope, bool], None] | None) -> None:
    """``record(scope, answered)`` for each request a drain's deadline cuts
    (``answered``: it got the 503; else its connection was closed mid-answer)."""
    _drain.on_cut = record


def record_cuts(recorder: events.Recorder) -> Callable[[Scope, bool], None]:
    """What :func:`on_cut` takes: each cut request, an event of ``recorder``'s."""

    def record(scope: Scope, answered: bool) -> None:
        sent = dict(scope.get("headers") or ()).get(b"traceparent")
        parent = trace.parse(sent.decode("latin-1")) if sent else None
        recorder.record(
            Reason.SHUTTING_DOWN,
            "request cut at the drain deadline",
            trace_id=parent.trace_id if parent is not None else None,
            attributes={
                "method": str(scope.get("method", "")),
                "path": str(scope.get("path", ""))[:_MAX_PATH],
                "answer": "503" if answered else "connection-closed",
            },
        )

    return record


def track(server: uvicorn.Server | Drainable) -> None:
    """Count ``server`` among the listeners :func:`begin` drains."""
    if isinstance(server, uvicorn.Server):
        _drain.servers.add(server)
    else:
        _drain.others.add(server)


def draining() -> bool:
    """Whether this process's drain has begun (a request cancelled now was cut)."""
    return _drain.begun


def begin() -> float:
    """Drain every tracked listener at once (see the module docstring); return the
    deadline's length. Each listener's task ends once its requests are done, or cut."""
    _drain.begun = True
    seconds = math.ceil(_drain.seconds)  # uvicorn's shutdown timeout is whole seconds
    servers = [server for server in _drain.servers if not server.should_exit]
    for server in servers:
        server.config.timeout_graceful_shutdown = seconds
        server.should_exit = True
    for other in list(_drain.others):
        other.begin_drain(float(seconds))
    _drain.closer = asyncio.get_running_loop().create_task(
        _close_answered(servers, time.monotonic() + seconds), name="trustmesh-drain"
    )
    return float(seconds)


async def _close_answered(servers: list[uvicorn.Server], deadline: float) -> None:
    """Until ``deadline``: a connection that is closing with nothing left to write, seen
    so twice in a row, is aborted (its peer had a tick to answer the TLS close)."""
    seen: set[int] = set()
    while time.monotonic() < deadline:
        await asyncio.sleep(_TICK)
        closing = [c for s in servers for c in list(s.server_state.connections) if _answered(c)]
        for connection in closing:
            if id(connection) in seen:
                connection.transport.abort()
        seen = {id(c) for c in closing}
        if not any(s.server_state.connections for s in servers):
            return


def _answered(connection: Any) -> bool:
    transport = getattr(connection, "transport", None)
    return bool(
        transport is not None and transport.is_closing() and transport.get_write_buffer_size() == 0
    )


def cuttable(app: ASGIApp) -> ASGIApp:
    """``app``, whose requests a drain's deadline cuts with a clear answer: the task of a
    request still running then is cancelled (by uvicorn's bounded shutdown), and instead
    of a bare ``500`` the client is told the server is shutting down."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, sending)
        except asyncio.CancelledError:
            if not _drain.begun:
                raise  # not a drain's cut
            if _drain.on_cut is not None:
                _drain.on_cut(scope, not started)
            if started:
                raise  # too late to answer: the connection closes
            await _answer_cut(send)

    return serve


async def _answer_cut(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(CUT)).encode()),
                (b"cache-control", b"no-store"),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": CUT})
