"""The listeners a server component serves on: mutual TLS with its SVID (the SDK's,
:func:`trustmesh.sdk.serve.start`, re-exported here), server-authenticated TLS for
clients without an SVID (browsers, public OAuth clients: bounded by a
:class:`~trustmesh.platform.guard.ConnectionGuard`), and plain HTTP on loopback (a
metrics scraper). A component binds its sockets first (:func:`bound_socket`) when its
URLs must name their ports before it serves."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trustmesh.errors import UsageError
from trustmesh.platform.guard import ConnectionGuard, ConnectionLimits, RefusalSummary
from trustmesh.platform.protocol import guarded_protocol
from trustmesh.sdk.serve import (
    ASGIApp,
    Listener,
    Receive,
    Scope,
    Send,
    Served,
    listener_config,
    respond_json,
    run_server,
    start,
)
from trustmesh.sdk.tls import web_server_context

__all__ = [
    "REPORT_EVERY_SECONDS",
    "ASGIApp",
    "Listener",
    "PublicServed",
    "Receive",
    "RefusalReport",
    "Scope",
    "Send",
    "Served",
    "answer_lifespan",
    "bound_socket",
    "respond_json",
    "start",
    "start_loopback",
    "start_public",
    "start_unix",
]

log = logging.getLogger("trustmesh.platform")

RefusalReport = Callable[[list[RefusalSummary]], None]
#: How often a public listener reports the connections and requests it refused.
REPORT_EVERY_SECONDS = 10.0


@dataclass
class PublicServed(Listener):
    """A running listener without workload identity; a public TLS listener also has the
    guard that bounds its connections, and reports what it refused."""

    guard: ConnectionGuard | None = field(default=None, kw_only=True)
    on_refusals: RefusalReport | None = field(default=None, kw_only=True)
    _reporter: asyncio.Task[None] | None = field(default=None, repr=False, kw_only=True)

    def report(self) -> None:
        """Hand the refusals counted since the last report to ``on_refusals`` (a failure
        there is logged: the listener goes on, and so does the next report)."""
        if self.guard is not None and self.on_refusals is not None:
            summaries = self.guard.drain()
            if summaries:
                try:
                    self.on_refusals(summaries)
                except Exception:
                    log.exception("the listener's refusals could not be reported")

    async def _report_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.report()

    async def stop(self) -> None:
        await super().stop()
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
        if self.guard is not None:
            self.guard.close_all()  # connections still in their TLS handshake
            self.report()


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """An app's side of the ASGI lifespan protocol, for apps with nothing to start or stop
    there (their owner starts and stops what they use)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def bound_socket(
    host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False
) -> socket.socket:
    """A TCP socket bound to ``host`` (port 0: one the system picks), not yet listening:
    its port is known, and no one else can take it, before the server starts on it (a port
    merely found free could be given to another socket in between). ``reuse_port``:
    other processes of this user may listen on the same port (``SO_REUSEPORT``: the
    kernel spreads new connections over them; no other user's socket may join)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are TCP
    # (an accepted socket inherits proto 0 otherwise, and every answer written in two
    # parts waits out the peer's delayed ACK: ~40 ms per request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def start_public(
    app: ASGIApp,
    *,
    chain_pem: bytes,
    key_pem: bytes,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    sock: socket.socket | None = None,
    guard: ConnectionGuard | None = None,
    on_refusals: RefusalReport | None = None,
    report_every: float = REPORT_EVERY_SECONDS,
    lenient_framing: bool = False,
) -> PublicServed:
    """Serve ``app`` over server-authenticated TLS, for clients that hold no SVID
    (browsers, public OAuth clients). The app sees no ``tls`` extension: nothing it
    serves here may depend on a workload identity. ``sock``: as for :func:`start`.

    Connections are bounded by ``guard`` (default: :class:`ConnectionLimits`' defaults;
    see :mod:`trustmesh.platform.protocol`); every ``report_every`` seconds the refusals it
    counted go to ``on_refusals``, one summary per reason. ``lenient_framing``: only
    under the test switch ``request-framing`` (see :func:`guarded_protocol`)."""
    context = web_server_context(chain_pem, key_pem)
    guard = guard or ConnectionGuard(ConnectionLimits())
    config = listener_config(
        app,
        host,
        port,
        log_level,
        http=guarded_protocol(context, guard, lenient_framing=lenient_framing),
        ws="none",
        timeout_keep_alive=guard.limits.keepalive_timeout,
    )
    served = PublicServed(
        *await run_server(config, "trustmesh-serve-public", sock),
        guard=guard,
        on_refusals=on_refusals,
    )
    if on_refusals is not None:
        served._reporter = asyncio.create_task(
            served._report_every(report_every), name="trustmesh-serve-refusals"
        )
    return served


async def start_loopback(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> PublicServed:
    """Serve ``app`` over plain HTTP on a loopback address only (an admin listener such
    as Prometheus metrics, for a scraper on the same machine)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise UsageError(f"{host} is not a loopback address: plain HTTP stays on loopback")
    config = listener_config(app, host, port, log_level)
    return PublicServed(*await run_server(config, "trustmesh-serve-loopback"))


async def start_unix(
    app: ASGIApp, path: Path, *, log_level: str = "warning", drained: bool = True
) -> PublicServed:
    """Serve ``app`` over plain HTTP on a unix socket at ``path`` that only this process's
    user may connect to (0600, in a folder the caller keeps private): for a proxy on the
    same machine that asks this process, where nothing else may. ``drained``: False
    where the caller stops it itself, after the proxy, at the process's drain."""
    sock = _private_unix_socket(path)
    config = listener_config(app, "127.0.0.1", 0, log_level, uds=str(path))
    return _UnixServed(*await run_server(config, "trustmesh-serve-unix", sock, drained=drained))


class _UnixServed(PublicServed):
    @property
    def port(self) -> int:
        return 0  # a unix socket has none


def _private_unix_socket(path: Path) -> socket.socket:
    """A unix socket bound at ``path`` (replacing a socket a previous run left), 0600 from
    the moment it exists."""
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_mask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_mask)
        os.chmod(path, 0o600)
    except OSError:
        sock.close()
        raise
    return sock
