"""Serve an ASGI app over mTLS with the service's SVID, rotating without a restart.

``serve(app)`` blocks (a service's ``main``); ``await start(app)`` returns a handle
(tests, embedding). The peer's verified SPIFFE ID reaches the app in the ASGI TLS
extension, ``scope["extensions"]["tls"]["spiffe_id"]``; a connection whose certificate
is not a valid SVID of this trust domain gets ``401 unauthenticated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr

from trustmesh.errors import AuthenticationError
from trustmesh.sdk import drain
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import SVIDSource, X509Source

log = logging.getLogger("trustmesh.sdk")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GRACEFUL_SHUTDOWN_SECONDS = 5
#: How long a request cut at shutdown is given to send its answer before the listener
#: is gone (:mod:`trustmesh.sdk.drain`).
CUT_ANSWER_SECONDS = 1.0

UNAUTHENTICATED = json.dumps(
    {"error": "unauthenticated", "message": "a valid SVID of this trust domain is required"}
).encode()


async def respond_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A JSON error response, never cached."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Peers:
    """TLS facts per live connection, keyed by the client address (unique while open)."""

    def __init__(self) -> None:
        self.by_addr: dict[tuple[str, int], dict[str, Any]] = {}


def _protocol_class(
    tls: RotatingTLS, peers: _Peers, parser: Literal["httptools", "h11"] = "httptools"
) -> type[HttpToolsProtocol | H11Protocol]:
    base: type[HttpToolsProtocol | H11Protocol] = (
        HttpToolsProtocol if parser == "httptools" else H11Protocol
    )

    class TLSHttpProtocol(base):  # type: ignore[valid-type,misc]
        # asyncio calls connection_made once the TLS handshake is complete.
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            addr = get_remote_addr(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if addr is None or ssl_object is None:
                transport.close()
                return
            try:
                peers.by_addr[addr] = tls.tls_extension(ssl_object)
            except AuthenticationError as exc:
                log.warning("refused peer %s: %s", addr, exc.detail)
                peers.by_addr[addr] = {"spiffe_id": None, "client_cert_error": exc.detail}

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                peers.by_addr.pop(self.client, None)
            super().connection_lost(exc)

    return TLSHttpProtocol


class _WithTLSExtension:
    def __init__(self, app: ASGIApp, peers: _Peers) -> None:
        self.app = app
        self.peers = peers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        tls = self.peers.by_addr.get(tuple(client)) if client else None
        if tls is None or not tls.get("spiffe_id"):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await respond_json(send, 401, UNAUTHENTICATED)
            return
        extensions = dict(scope.get("extensions") or {})
        extensions["tls"] = tls
        await self.app({**scope, "extensions": extensions}, receive, send)


@dataclass
class Listener:
    """A running listener: its port, and a way to stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]

    @functools.cached_property
    def port(self) -> int:
        """The port it listens on (as it was: known still once it stopped accepting)."""
        sockets = self.server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        cut = list(self.server.server_state.tasks)  # cancelled at the deadline: answering
        if cut:
            await asyncio.wait(cut, timeout=CUT_ANSWER_SECONDS)


@dataclass
class Served(Listener):
    """A running mTLS server: also its TLS contexts and SVID source."""

    tls: RotatingTLS
    source: SVIDSource
    owns_source: bool

    async def stop(self) -> None:
        await super().stop()
        if self.owns_source:
            await self.source.close()


async def start(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    source: SVIDSource | None = None,
    address: str | None = None,
    log_level: str = "warning",
    tls: RotatingTLS | None = None,
    sock: socket.socket | None = None,
    parser: Literal["httptools", "h11"] = "httptools",
) -> Served:
    """Start serving ``app`` over mTLS; return once it listens. ``tls``: the caller's
    contexts for its SVID source, shared rather than built (and rotated) twice. ``sock``:
    a socket already bound (see :func:`trustmesh.platform.listeners.bound_socket`), when the port had to be known first.
    ``parser``: ``h11`` where clients send methods llhttp does not know (Vault's ``LIST``)."""
    if tls is not None:
        source = tls.source
    owns = source is None
    source = source or X509Source(address)
    await source.start()
    tls = tls or RotatingTLS(source)
    peers = _Peers()
    config = listener_config(
        _WithTLSExtension(app, peers),
        host,
        port,
        log_level,
        lifespan="auto",
        http=_protocol_class(tls, peers, parser),
        ssl_context_factory=lambda _config, _default: tls.listening,
    )
    server, task = await run_server(config, "trustmesh-serve", sock)
    return Served(server, task, tls, source, owns)


def listener_config(
    app: ASGIApp,
    host: str,
    port: int,
    log_level: str,
    *,
    lifespan: Literal["auto", "on", "off"] = "off",
    **extra: Any,
) -> uvicorn.Config:
    """A listener as every trustmesh server runs one: no proxy headers believed, no
    ``server``/``date`` headers, and the bounded graceful shutdown (in-flight requests
    get this long at shutdown; an idle keep-alive client that never answers the TLS
    close would otherwise hold it for 30 s) — at a process's drain, its deadline
    instead, and a request it cuts answered ``503`` (:mod:`trustmesh.sdk.drain`)."""
    return uvicorn.Config(
        drain.cuttable(app),
        host=host,
        port=port,
        interface="asgi3",
        log_level=log_level,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        lifespan=lifespan,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **extra,
    )


async def run_server(
    config: uvicorn.Config, name: str, sock: socket.socket | None = None, *, drained: bool = True
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Start uvicorn on ``config`` (on ``sock``, if bound already); return once it
    listens (or raise what stopped it). ``drained``: with the process's other listeners
    at SIGTERM (else its owner stops it)."""
    server = uvicorn.Server(config)
    if drained:
        drain.track(server)
    # _serve: uvicorn's serve() without its signal capture; the caller owns the signals
    # (pinned uvicorn version; covered by the tests).
    task = asyncio.create_task(server._serve([sock] if sock else None), name=name)
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.01)
    return server, task


def serve(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, address: str | None = None
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (a service's entry point)."""

    async def main() -> None:
        served = await start(app, host=host, port=port, address=address, log_level="info")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"serving on https://{host}:{served.port} as {served.source.context.spiffe_id}",
            flush=True,
        )
        await stop.wait()
        drain.begin()
        await served.stop()

    asyncio.run(main())
