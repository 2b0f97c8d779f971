"""The provider's public listener has the gateway's bounds: what a browser-facing
listener lets a client send, and how slowly (`auth.public_limits`). The attacks go in
with raw sockets; a browser-like client is served throughout, and the refusals become
aggregated events of the provider."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from authrig import AuthRig, make_rig

from trustmesh import crypto
from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer
from trustmesh.testing.rawtls import RawTLS

LIMITS = """
auth:
  public_limits: {header_timeout: 1s, handshake_timeout: 1s, max_header_bytes: 8192,
                  max_header_line_bytes: 2048}
"""


@pytest.fixture
async def limited(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[AuthRig]:
    async with make_rig(identity, short_tmp, LIMITS) as made:
        yield made


def _raw(rig: AuthRig) -> RawTLS:
    return RawTLS(int(rig.public_url.rsplit(":", 1)[1]), crypto.edge_ca_path(rig.state))


async def _answer(rig: AuthRig, raw: bytes) -> bytes:
    return await _raw(rig).exchange(raw)


async def _discovery_status(rig: AuthRig) -> int:
    answer = await _answer(
        rig,
        b"GET /.well-known/openid-configuration HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: close\r\n\r\n",
    )
    return int(answer[9:12])


async def test_the_public_listener_refuses_what_the_gateway_refuses(limited: AuthRig) -> None:
    rig = limited
    big = await _answer(
        rig,
        b"GET /login HTTP/1.1\r\nHost: localhost\r\nCookie: " + b"a" * 3000 + b"\r\n\r\n",
    )
    assert big.startswith(b"HTTP/1.1 431 ")
    no_host = await _answer(rig, b"GET /login HTTP/1.1\r\n\r\n")
    assert no_host.startswith(b"HTTP/1.1 400 ")
    upgrade = await _answer(
        rig,
        b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket"
        b"\r\n\r\n",
    )
    assert upgrade.startswith(b"HTTP/1.1 501 ")

    started = time.monotonic()
    reader, writer = await _raw(rig).open()  # slowloris
    writer.write(b"GET /login HTTP/1.1\r\nHost: localhost\r\n")
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        for i in range(30):
            await asyncio.sleep(0.1)
            if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                break
            writer.write(b"X-%d: 1\r\n" % i)
    slow = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert slow.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3

    assert await _discovery_status(rig) == 200  # others are served
    assert rig.auth.public is not None
    rig.auth.public.report()  # what the periodic report would hand over
    refused = {e.reason: e for e in rig.sink.events if e.message.startswith("refused at")}
    assert set(refused) == {
        Reason.HEADERS_TOO_LARGE,
        Reason.HOST_INVALID,
        Reason.UPGRADE_UNSUPPORTED,
        Reason.HEADER_TIMEOUT,
    }
    event = refused[Reason.HEADER_TIMEOUT]
    assert event.attributes["count"] == 1
