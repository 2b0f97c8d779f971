"""``trustmesh status`` asks the running components how they are, never their files:
the Workload API's gRPC health service on its unix socket, and over mTLS (as the
operator) each listener's health path (:mod:`trustmesh.platform.health`)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import h2.exceptions
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from trustmesh import crypto
from trustmesh.cli._admin import as_operator
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import TrustmeshError
from trustmesh.platform.health import HEALTH_PATH, TIMEOUT, Answer, Target, ask
from trustmesh.sdk.tls import peer_certificate

__all__ = ["HEALTH_PATH", "Answer", "Target", "ask", "ask_all", "probe_grpc", "probe_web"]


async def probe_grpc(socket: Path, timeout: float = TIMEOUT) -> bool:
    """The Workload API's gRPC health service says SERVING."""
    channel = Channel(path=str(socket))
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=timeout)
    except (OSError, TimeoutError, GRPCError, StreamTerminatedError, h2.exceptions.ProtocolError):
        return False
    finally:
        channel.close()
    return bool(reply.status == HealthCheckResponse.SERVING)


async def ask_all(
    config: TrustmeshConfig, state: Path, targets: Mapping[str, Target]
) -> dict[str, Answer]:
    """Every target at once, as the operator; none answered when no operator SVID can be
    had (the identity service is down)."""
    if not targets:
        return {}
    try:
        async with as_operator(state, config) as operator:
            answers = await asyncio.gather(*(ask(operator.tls, t) for t in targets.values()))
    except (TrustmeshError, OSError, TimeoutError):
        return {}
    return dict(zip(targets, answers, strict=True))


def probe_web(
    url: str,
    ca_file: Path | None,
    path: str,
    timeout: float = TIMEOUT,
    *,
    pinned: bytes | None = None,
) -> Answer:
    """``GET path`` at a browser-facing listener (server-authenticated TLS, checked against
    ``ca_file`` — the dev edge CA — or the system's CAs): healthy on 200, with the expiry
    of the certificate it presented. ``pinned`` (the DER of the certificate the
    declaration gives the listener): that certificate and no other, whoever issued it —
    a private CA's, and a name other than the loopback address the probe dials."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if pinned is not None:  # checked below, byte for byte, instead of by a CA and a name
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            served = peer_certificate(tls)
            if pinned is not None and crypto.cert_der(served) != pinned:
                return Answer()
            expires = served.not_valid_after_utc.isoformat()
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
            )
            head = tls.recv(64)
    except (OSError, ssl.SSLError, ValueError, TrustmeshError):
        return Answer()
    return Answer(head.split(b" ", 2)[1:2] == [b"200"], {}, expires)
