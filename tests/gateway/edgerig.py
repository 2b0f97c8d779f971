"""A live gateway in front of a bare upstream, for tests of what crosses the edge.

The upstream holds the ``orders`` SVID and serves over mTLS, registered in discovery, but
runs no SDK middleware: whatever the gateway sends reaches its app, which records it. So
a test sees exactly what the gateway forwarded, not what a service's own policy let
through. Requests go out over raw TLS, byte for byte as written (header case, repeats and
paths no client library normalises). The provider and the gateway are liverig's
(:func:`liverig.live_gateway`, the identity service from :func:`liverig.live_identity`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from authrig import ORDERS, AuthRig
from liverig import live_gateway
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.config.gateway import HealthCheck
from trustmesh.gateway.server import RunningGateway
from trustmesh.platform.listeners import ASGIApp, Receive, Scope, Send, start
from trustmesh.sdk.discovery import DiscoveryClient
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]  # lower-case names, in order
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Edge:
    rig: AuthRig
    gateway: RunningGateway
    sink: events.MemorySink
    tokens: dict[str, str] = field(default_factory=dict)
    upstream_url: str = ""  # the one instance of orders

    def reasons(self) -> list[str]:
        return [e.reason for e in self.sink.events]

    async def send(
        self,
        method: str,
        path: str,
        *,
        who: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        host: str = "localhost",
    ) -> Answer:
        """One request on its own connection, exactly as written (``Host: host``): its
        answer."""
        context = ssl.create_default_context(cafile=str(crypto.edge_ca_path(self.rig.state)))
        port = int(self.gateway.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        if who is not None:
            lines.append(f"Authorization: Bearer {self.tokens[who]}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        raw = await reader.read()
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in header_lines)
        ]
        return Answer(int(status_line.split(" ", 2)[1]), parsed, rest)


async def refused_as_injection(
    edge: Edge,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    category: str,
    location: str,
) -> events.Event:
    """Send the request; it must be refused by the injection filter (403, the generic
    message), with one ``request-injection`` denial naming ``category`` at
    ``location``: that event."""
    answer = await edge.send(method, path, headers=headers, body=body)
    assert answer.status == 403, answer.body
    assert json.loads(answer.body) == {"error": "forbidden", "message": "the request was refused"}
    (event,) = [e for e in edge.sink.events if e.reason.value == "request-injection"]
    assert event.decision.value == "deny"
    assert (event.attributes["category"], event.attributes["location"]) == (category, location)
    return event


def recording(seen: list[str], *, delay: float = 0.0) -> Starlette:
    """An upstream that notes the path of each request reaching it (after ``delay``
    seconds: long enough, say, to be in flight while the gateway reloads)."""

    async def record(request: Request) -> JSONResponse:
        if delay:
            await asyncio.sleep(delay)
        seen.append(request.url.path)
        return JSONResponse({"reached": True})

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{p:path}", record, methods=methods)])


def healthy(app: ASGIApp) -> ASGIApp:
    """``app``, with the gateway's health probes answered ``200`` before they reach it (as
    the SDK middleware answers them): the instance stays in rotation, and the app sees only
    what clients sent."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == HealthCheck().path:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return serve


@contextlib.asynccontextmanager
async def edge_stack(
    identity: RunningIdentityServer,
    root: Path,
    section: str,
    upstream: ASGIApp,
    files: dict[str, str] | None = None,
    *,
    probes_reach_the_app: bool = False,
) -> AsyncIterator[Edge]:
    """The provider, a gateway for ``CONFIG + section`` (``files`` written beside it) and
    ``upstream`` as the one instance of ``orders`` (bare: no SDK middleware; the health
    probes answered before they reach it, unless ``probes_reach_the_app``)."""
    async with live_gateway(identity, root, section, files=files) as live:
        source_orders = X509Source(identity.address, spiffe_id=ORDERS)
        app = upstream if probes_reach_the_app else healthy(upstream)
        served = await start(app, source=source_orders)
        registration = DiscoveryClient(served.tls, live.discovery_url)
        served_url = f"https://127.0.0.1:{served.port}"
        await registration.register(served_url)
        try:
            yield Edge(live.rig, live.gateway, live.sink, upstream_url=served_url)
        finally:
            await registration.close()
            await served.stop()
            await source_orders.close()
