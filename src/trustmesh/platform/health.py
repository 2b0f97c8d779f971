"""Asking a component how it is, over mTLS with the asker's own SVID: ``GET`` its health
path on one connection, the peer's SPIFFE ID checked before anything is sent; what the
handshake showed (the peer certificate's expiry) is reported too. ``trustmesh status``
asks as the operator; the console asks as the collector."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trustmesh import crypto
from trustmesh.errors import TrustmeshError
from trustmesh.sdk.tls import RotatingTLS, peer_certificate

__all__ = ["HEALTH_PATH", "Answer", "Target", "ask"]

#: Where a service run by the SDK answers any SVID of the trust domain (its middleware).
HEALTH_PATH = "/.well-known/trustmesh/health"
TIMEOUT = 2.0
_MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class Target:
    """Ask ``url`` for ``path``; the peer must present ``spiffe_id``."""

    url: str
    spiffe_id: str
    path: str


@dataclass(frozen=True)
class Answer:
    """``ok``: the component answered 200; ``doc``: its JSON; ``cert_expires``: its
    certificate's expiry, as presented in the handshake."""

    ok: bool = False
    doc: Mapping[str, Any] = field(default_factory=dict)
    cert_expires: str | None = None


async def ask(tls: RotatingTLS, target: Target, timeout: float = TIMEOUT) -> Answer:
    """``GET target.path`` over mTLS, on one connection closed after the answer; the peer's
    SPIFFE ID is checked before anything is sent. Never raises: a component that cannot
    be asked, or is not who it should be, is not healthy."""
    parts = urlsplit(target.url)
    trust_domain = target.spiffe_id.removeprefix("spiffe://").partition("/")[0]
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                parts.hostname, parts.port, ssl=tls.client
            )
            try:
                cert = peer_certificate(writer.get_extra_info("ssl_object"))
                if crypto.leaf_spiffe_id(cert, trust_domain=trust_domain) != target.spiffe_id:
                    return Answer()
                request = f"GET {target.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                writer.write(f"{request}Connection: close\r\n\r\n".encode("ascii"))
                raw = await _read_to_end(reader)
            finally:
                writer.close()
    except (OSError, TimeoutError, ssl.SSLError, TrustmeshError, ValueError):
        return Answer()
    return _answer(raw, cert.not_valid_after_utc.isoformat())


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    """What the peer sent until it closed (``Connection: close``), at most 64 KiB."""
    chunks: list[bytes] = []
    size = 0
    while size < _MAX_ANSWER and (chunk := await reader.read(_MAX_ANSWER - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _answer(raw: bytes, cert_expires: str) -> Answer:
    """An HTTP/1.1 answer with a JSON body (what every health path sends)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {}
    ok = status == [b"200"] and isinstance(doc, dict)
    return Answer(ok, doc if isinstance(doc, dict) else {}, cert_expires)
