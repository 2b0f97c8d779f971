"""A public listener bounds what a client may hold open and send, and how slowly.

Each attack is sent with raw sockets (TLS where the attack is inside TLS, bare TCP where
it never gets there), and each test checks that a well-behaved client is still served."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from trustmesh import crypto
from trustmesh.platform.guard import ConnectionGuard, ConnectionLimits, RefusalSummary
from trustmesh.platform.listeners import PublicServed, Receive, Scope, Send, start_public
from trustmesh.reasons import Reason
from trustmesh.testing.rawtls import RawTLS, close, until_closed

FAST = ConnectionLimits(
    handshake_timeout=0.5,
    header_timeout=0.6,
    keepalive_timeout=0.8,
    body_timeout=0.5,
    body_min_rate=40,
    max_header_bytes=4096,
    max_header_line_bytes=1024,
    max_headers=20,
)


RELEASE = asyncio.Event()


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers what it saw. ``/early`` answers 403 without reading
    the body (as the gateway refuses at the edge); ``/slow`` answers after 0.5 s and
    ``/late-read`` reads the body only after 0.8 s (longer than FAST's body timeout)."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":  # a head, then its body in two parts, the first late
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await RELEASE.wait()
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"second"})
        return
    if scope["path"] == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/early":
        await send({"type": "http.response.start", "status": 403, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})
        return
    if scope["path"] in ("/slow", "/late-read"):
        await asyncio.sleep(0.5 if scope["path"] == "/slow" else 0.8)
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"path": scope["path"], "size": size}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Listener:
    """A running listener, reached with raw TLS (or bare TCP)."""

    def __init__(self, served: PublicServed, ca: Path, reports: list[RefusalSummary]) -> None:
        self.served = served
        self.port = served.port
        self.raw = RawTLS(served.port, ca)
        self.exchange = self.raw.exchange
        self.reports = reports

    @property
    def guard(self) -> ConnectionGuard:
        assert self.served.guard is not None
        return self.served.guard

    async def tls(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.raw.open()

    async def tcp(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def get(self, path: str = "/ok") -> int:
        """A well-behaved request's status."""
        answer = await self.exchange(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        )
        return status_of(answer)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


def error_of(answer: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return body


ListenerFactory = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def listen(tmp_path: Path) -> AsyncIterator[ListenerFactory]:
    seal_key = crypto.load_seal_key(tmp_path, dev=True)
    certificate = crypto.local_server_certificate(tmp_path, seal_key)
    running: list[PublicServed] = []

    async def start(limits: ConnectionLimits = FAST, **guard: Any) -> Listener:
        reports: list[RefusalSummary] = []
        served = await start_public(
            echo,
            chain_pem=certificate.chain_pem(),
            key_pem=certificate.key_pem(),
            guard=ConnectionGuard(limits, **guard),
            on_refusals=reports.extend,
            report_every=3600,
        )
        running.append(served)
        return Listener(served, crypto.edge_ca_path(tmp_path), reports)

    yield start
    for served in running:
        await served.stop()


# -- request heads: size ------------------------------------------------------------------
async def test_a_huge_header_line_is_refused_before_it_is_held(listen: ListenerFactory) -> None:
    """The attack: one 32 MB header line. The server answers 431 once the head passes its
    limit, closing the connection, long before the line ends."""
    sent = 0
    refused_after: list[int] = []  # what the client had sent when the server refused
    listener = await listen(
        ConnectionLimits(max_header_bytes=32768),
        on_refused=lambda _reason: refused_after.append(sent),
    )
    reader, writer = await listener.tls()
    writer.write(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while sent < 32 << 20 and not refused_after:
            writer.write(b"a" * 65536)
            await writer.drain()
            sent += 65536
            await asyncio.sleep(0)
    answer = await until_closed(reader, 5)
    await close(writer)
    assert status_of(answer) == 431
    assert error_of(answer)["error"] == "headers_too_large"
    assert refused_after[0] <= 32768 + 4 * 65536  # within a few reads of the limit
    assert listener.guard.refused[Reason.HEADERS_TOO_LARGE] == 1
    assert await listener.get() == 200


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 2000 + b"\r\n\r\n",
            431,
            Reason.HEADERS_TOO_LARGE,
        ),
        (
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 25 + b"\r\n",
            431,
            Reason.HEADERS_TOO_LARGE,
        ),
        (
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 900) for i in range(6))
            + b"\r\n",
            431,
            Reason.HEADERS_TOO_LARGE,
        ),
        (
            b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
            414,
            Reason.REQUEST_LINE_TOO_LONG,
        ),
    ],
    ids=["line", "count", "total", "request-line"],
)
async def test_heads_over_a_limit_are_refused(
    listen: ListenerFactory, head: bytes, status: int, reason: Reason
) -> None:
    listener = await listen()
    answer = await listener.exchange(head)
    assert status_of(answer) == status
    assert b"connection: close" in answer.lower()
    assert listener.guard.refused == {reason: 1}
    assert await listener.get() == 200


async def test_heads_within_the_limits_are_served(listen: ListenerFactory) -> None:
    listener = await listen()
    head = (
        b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(6))
        + b"\r\n"
    )
    assert status_of(await listener.exchange(head)) == 200
    assert not listener.guard.refused


# -- request heads: form ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"GET /ok\r\n\r\n", 400, Reason.REQUEST_MALFORMED),
        (b"GET /ok HTTP/0.9\r\nHost: localhost\r\n\r\n", 400, Reason.REQUEST_MALFORMED),
        (b"GET /ok HTTP/1.1\r\n\r\n", 400, Reason.HOST_INVALID),
        (b"GET /ok HTTP/1.0\r\n\r\n", 400, Reason.HOST_INVALID),
        (
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
            400,
            Reason.HOST_INVALID,
        ),
        (b"GET /ok HTTP/1.1\r\nHost: local host\r\n\r\n", 400, Reason.HOST_INVALID),
        (b"GET /ok HTTP/1.1\r\nHost: \r\n\r\n", 400, Reason.HOST_INVALID),
        (
            b"GET http://evil.example/ok HTTP/1.1\r\nHost: localhost\r\n\r\n",
            400,
            Reason.REQUEST_MALFORMED,
        ),
        (b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, Reason.REQUEST_MALFORMED),
        (
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            501,
            Reason.UPGRADE_UNSUPPORTED,
        ),
        (
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nConnection: Upgrade, "
            b"HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            501,
            Reason.UPGRADE_UNSUPPORTED,
        ),
        (
            b"GET /ok HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            b"ab",
            400,
            Reason.REQUEST_MALFORMED,
        ),
        (b"\x16\x03\x01garbage\r\n\r\n", 400, Reason.REQUEST_MALFORMED),
    ],
    ids=[
        "http-0.9",
        "http-0.9-version",
        "no-host",
        "no-host-1.0",
        "two-hosts",
        "bad-host",
        "empty-host",
        "absolute-form",
        "asterisk-form",
        "websocket",
        "h2c",
        "two-lengths",
        "garbage",
    ],
)
async def test_requests_that_must_not_be_routed_are_refused(
    listen: ListenerFactory, head: bytes, status: int, reason: Reason
) -> None:
    listener = await listen()
    answer = await listener.exchange(head)
    assert status_of(answer) == status, answer[:200]
    assert b"connection: close" in answer.lower()
    assert b'"path"' not in answer  # the app never saw it
    assert listener.guard.refused == {reason: 1}
    assert await listener.get() == 200


async def test_http_1_0_with_a_host_is_served(listen: ListenerFactory) -> None:
    listener = await listen()
    answer = await listener.exchange(b"GET /ok HTTP/1.0\r\nHost: localhost:8443\r\n\r\n")
    assert status_of(answer) == 200


# -- slowness -----------------------------------------------------------------------------
async def test_a_trickled_head_gets_408_within_the_header_timeout(
    listen: ListenerFactory,
) -> None:
    """Slowloris: one header line at a time, each well within any idle timeout."""
    listener = await listen()
    reader, writer = await listener.tls()
    started = time.monotonic()
    writer.write(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n")
    answer = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        for i in range(20):
            await asyncio.sleep(0.1)
            writer.write(b"X-%d: trickle\r\n" % i)
            await writer.drain()
            if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                break
    answer = await until_closed(reader, 3)
    elapsed = time.monotonic() - started
    await close(writer)
    assert status_of(answer) == 408
    assert error_of(answer)["error"] == "request_timeout"
    assert FAST.header_timeout <= elapsed < FAST.header_timeout + 1.0
    assert listener.guard.refused == {Reason.HEADER_TIMEOUT: 1}


async def test_a_stalled_body_gets_408(listen: ListenerFactory) -> None:
    listener = await listen()
    reader, writer = await listener.tls()
    writer.write(b"POST /ok HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    answer = await until_closed(reader, 3)
    await close(writer)
    assert status_of(answer) == 408
    assert listener.guard.refused == {Reason.BODY_TIMEOUT: 1}


async def test_a_slow_but_steady_body_is_served(listen: ListenerFactory) -> None:
    listener = await listen()
    reader, writer = await listener.tls()
    writer.write(b"POST /ok HTTP/1.1\r\nHost: localhost\r\nContent-Length: 40\r\n\r\n")
    for _ in range(4):  # 0.8 s in all, each gap within the body timeout
        await asyncio.sleep(0.2)
        writer.write(b"0123456789")
        await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    await close(writer)
    assert status_of(head) == 200


async def test_a_body_trickled_never_quite_silent_is_cut_at_the_minimum_rate(
    listen: ListenerFactory,
) -> None:
    """A byte every 0.2 s is never silent for the body timeout (0.5 s), but averages
    5 bytes a second: once the grace has passed it falls below body_min_rate (100)."""
    listener = await listen(dataclasses.replace(FAST, body_min_rate=100))
    reader, writer = await listener.tls()
    writer.write(b"POST /ok HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
    await writer.drain()
    started = time.monotonic()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while not reader.at_eof() and time.monotonic() - started < 10:
            await asyncio.sleep(0.2)
            writer.write(b"x")
            await writer.drain()
    answer = await until_closed(reader, 3)
    await close(writer)
    assert status_of(answer) == 408
    assert error_of(answer)["message"] == "the request body arrives too slowly"
    # the grace (0.5 s) and what the bytes earned (some 0.3 s), then a linger, closed
    assert 0.7 < time.monotonic() - started < 6
    assert listener.guard.refused == {Reason.BODY_TIMEOUT: 1}


async def test_idle_connections_close_before_and_between_requests(
    listen: ListenerFactory,
) -> None:
    listener = await listen()
    reader, writer = await listener.tls()  # handshake done, no request: closed when idle
    started = time.monotonic()
    assert await until_closed(reader, 3) == b""
    assert time.monotonic() - started >= FAST.keepalive_timeout - 0.1
    await close(writer)

    reader, writer = await listener.tls()
    writer.write(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = await until_closed(reader, 3)  # the answer, then the idle close
    await close(writer)
    assert status_of(answer) == 200
    assert not listener.guard.refused  # idling is no offence


async def test_a_connection_that_never_starts_tls_is_closed(listen: ListenerFactory) -> None:
    listener = await listen()
    reader, writer = await listener.tcp()
    started = time.monotonic()
    assert await until_closed(reader, 3) == b""
    assert time.monotonic() - started >= FAST.handshake_timeout - 0.1
    await close(writer)
    await asyncio.sleep(0.05)
    assert listener.guard.refused == {Reason.TLS_HANDSHAKE_TIMEOUT: 1}
    assert listener.guard.open == 0


async def test_a_bad_handshake_is_counted(listen: ListenerFactory) -> None:
    listener = await listen()
    reader, writer = await listener.tcp()
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # plain HTTP to a TLS port
    await writer.drain()
    await until_closed(reader, 3)
    await close(writer)
    await asyncio.sleep(0.05)
    assert listener.guard.refused == {Reason.TLS_HANDSHAKE_FAILED: 1}


# -- connection caps ----------------------------------------------------------------------
async def _busy(listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection in the middle of a request head (so not idle)."""
    reader, writer = await listener.tls()
    writer.write(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n")
    await writer.drain()
    return reader, writer


async def test_one_address_cannot_hold_more_than_its_share(listen: ListenerFactory) -> None:
    limits = ConnectionLimits(max_connections_per_address=3, header_timeout=30)
    listener = await listen(limits)
    held = [await _busy(listener) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert listener.guard.open == 3
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await listener.tls()  # closed before its handshake
    assert listener.guard.refused == {Reason.CONNECTION_LIMIT_ADDRESS: 1}
    for _, writer in held:
        await close(writer)
    await asyncio.sleep(0.1)
    assert await listener.get() == 200  # room again once they went


async def test_idle_keepalive_connections_make_room(listen: ListenerFactory) -> None:
    limits = ConnectionLimits(max_connections_per_address=2)
    listener = await listen(limits)
    idle = []
    for _ in range(2):  # two keep-alive connections, each after a complete exchange
        reader, writer = await listener.tls()
        writer.write(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await reader.readuntil(b"\r\n0\r\n\r\n")  # the whole (chunked) answer
        idle.append((reader, writer))
    assert await listener.get() == 200  # the oldest idle one was closed for it
    assert listener.guard.evicted == 1
    assert await until_closed(idle[0][0], 2) == b""
    assert not listener.guard.refused
    for _, writer in idle:
        await close(writer)


async def test_the_total_cap_holds_for_exempt_addresses_too(listen: ListenerFactory) -> None:
    limits = ConnectionLimits(max_connections=4, max_connections_per_address=1, header_timeout=30)
    listener = await listen(limits, exempt=lambda address: address == "127.0.0.1")
    held = [await _busy(listener) for _ in range(4)]  # beyond the per-address cap: exempt
    await asyncio.sleep(0.05)
    assert listener.guard.open == 4
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await listener.tls()  # closed before its handshake
    assert listener.guard.refused == {Reason.CONNECTION_LIMIT: 1}
    for _, writer in held:
        await close(writer)


# -- under attack, others are served; refusals are reported in aggregate -------------------
async def test_others_are_served_during_a_slow_header_attack(listen: ListenerFactory) -> None:
    limits = ConnectionLimits(
        header_timeout=0.6, handshake_timeout=0.6, max_connections_per_address=512
    )
    listener = await listen(limits)
    trickling = [await _busy(listener) for _ in range(100)]
    bare = [await listener.tcp() for _ in range(50)]  # never start TLS
    for _ in range(3):
        started = time.monotonic()
        assert await listener.get() == 200
        assert time.monotonic() - started < 1.0
    await asyncio.gather(*(until_closed(reader, 3) for reader, _ in trickling + bare))
    await asyncio.sleep(0.05)
    assert listener.guard.open == 0  # every attacking connection was closed
    assert listener.guard.refused[Reason.HEADER_TIMEOUT] == 100
    assert listener.guard.refused[Reason.TLS_HANDSHAKE_TIMEOUT] == 50
    listener.served.report()
    reported = {summary.reason: summary for summary in listener.reports}
    assert set(reported) == {Reason.HEADER_TIMEOUT, Reason.TLS_HANDSHAKE_TIMEOUT}
    assert reported[Reason.HEADER_TIMEOUT].count == 100
    assert reported[Reason.HEADER_TIMEOUT].top_addresses == (("127.0.0.1", 100),)
    for _, writer in trickling + bare:
        await close(writer)


async def test_stopping_closes_connections_still_in_their_handshake(
    listen: ListenerFactory,
) -> None:
    listener = await listen(ConnectionLimits(handshake_timeout=30))
    reader, writer = await listener.tcp()
    await asyncio.sleep(0.05)
    assert listener.guard.open == 1
    await listener.served.stop()
    assert await until_closed(reader, 2) == b""
    await close(writer)
    assert listener.guard.open == 0


def test_ipv6_clients_count_by_their_64_and_an_embedded_ipv4_as_itself() -> None:
    class Conn:
        def __init__(self, address: str) -> None:
            self.address = address

        def idle(self) -> bool:
            return False

        def abort(self) -> None:
            pass

    guard = ConnectionGuard(ConnectionLimits(max_connections_per_address=2))
    assert guard.admit(Conn("2001:db8::1")) is None
    assert guard.admit(Conn("2001:db8::ffff:2")) is None
    assert guard.admit(Conn("2001:db8::3")) == Reason.CONNECTION_LIMIT_ADDRESS
    assert guard.admit(Conn("2001:db8:0:1::1")) is None  # another /64
    assert guard.admit(Conn("192.0.2.1")) is None
    assert guard.admit(Conn("::ffff:192.0.2.1")) is None
    assert guard.admit(Conn("192.0.2.1")) == Reason.CONNECTION_LIMIT_ADDRESS
    assert guard.admit(Conn("64:ff9b::c000:201")) == Reason.CONNECTION_LIMIT_ADDRESS  # NAT64
    assert guard.admit(Conn("2002:c000:201::1")) == Reason.CONNECTION_LIMIT_ADDRESS  # 6to4


# -- order, keep-alive and bodies (found in review) -----------------------------------------
async def test_a_body_trickled_after_an_early_answer_cannot_hold_the_connection(
    listen: ListenerFactory,
) -> None:
    listener = await listen()
    reader, writer = await listener.tls()
    writer.write(b"POST /early HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\n\r\n")
    await writer.drain()
    started = time.monotonic()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while not reader.at_eof() and time.monotonic() - started < 10:
            await asyncio.sleep(0.1)  # a byte at a time, never quiet long enough to time out
            writer.write(b"x")
            await writer.drain()
    answer = await until_closed(reader, 5)
    await close(writer)
    assert status_of(answer) == 403
    assert time.monotonic() - started < 5  # lingered a few seconds at most, then closed
    await asyncio.sleep(0.05)
    assert listener.guard.open == 0


async def test_a_refused_pipelined_head_is_answered_after_the_requests_before_it(
    listen: ListenerFactory,
) -> None:
    listener = await listen()
    answer = await listener.exchange(
        b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    )
    statuses = [int(line[9:12]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [200, 200, 431]
    assert answer.index(b'"/slow"') < answer.index(b'"/b"') < answer.index(b"headers_too_large")


async def test_a_slow_answer_does_not_time_out_the_next_pipelined_head(
    listen: ListenerFactory,
) -> None:
    # a head timer that ran during the slow answer (0.5 s) would fire at 0.4 s, before
    # the rest of the head at 0.6 s; the right one runs from 0.5 s and fires at 0.9 s
    limits = ConnectionLimits(header_timeout=0.4)
    listener = await listen(limits)
    reader, writer = await listener.tls()
    writer.write(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\nGET /b HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.sleep(0.6)
    writer.write(b"Host: localhost\r\nConnection: close\r\n\r\n")
    answer = await until_closed(reader, 5)
    await close(writer)
    statuses = [int(line[9:12]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [200, 200]
    assert not listener.guard.refused


async def test_a_body_and_the_start_of_the_next_head_in_one_read_are_both_served(
    listen: ListenerFactory,
) -> None:
    """The bytes of a body that ends in the same read as the next head begins are not
    counted against that head's limit (FAST: 4 KiB)."""
    listener = await listen()
    reader, writer = await listener.tls()
    writer.write(
        b"POST /one HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4050\r\n\r\n"
        + b"b" * 4050
        + b"GET /two HTTP/1.1\r\nHo"
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(b"st: localhost\r\nConnection: close\r\n\r\n")
    answer = await until_closed(reader, 5)
    await close(writer)
    statuses = [int(line[9:12]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [200, 200]
    assert not listener.guard.refused


async def test_a_client_waiting_for_100_continue_is_not_timed_out(
    listen: ListenerFactory,
) -> None:
    listener = await listen()
    reader, writer = await listener.tls()
    writer.write(
        b"POST /late-read HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(b"hello")
    answer = await until_closed(reader, 5)
    await close(writer)
    assert status_of(answer) == 200
    assert not listener.guard.refused


async def test_a_response_head_goes_out_with_its_first_body_bytes(
    listen: ListenerFactory,
) -> None:
    """One TLS record (one read) for the head and the first body bytes; a response
    without a body still gets its head, and the connection goes on serving."""
    RELEASE.clear()
    listener = await listen()
    reader, writer = await listener.tls()
    writer.write(b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    with pytest.raises(TimeoutError):  # the head waits for the body
        await asyncio.wait_for(reader.read(1), 0.3)
    RELEASE.set()
    first = await asyncio.wait_for(reader.read(65536), 3)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"\r\n\r\n5\r\nfirst\r\n" in first
    while not first.endswith(b"0\r\n\r\n"):  # the rest of the body, in its own time
        first += await asyncio.wait_for(reader.read(65536), 3)
    assert b"second" in first
    writer.write(b"GET /empty HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    answer = await until_closed(reader, 5)
    await close(writer)
    assert status_of(answer) == 204
    assert not listener.guard.refused


async def test_pipelined_heads_and_empty_answers_each_get_their_head_in_order(
    listen: ListenerFactory,
) -> None:
    listener = await listen()
    reader, writer = await listener.tls()
    writer.write(
        b"HEAD /first HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /empty HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    answer = await until_closed(reader, 5)
    await close(writer)
    statuses = [int(line[9:12]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [200, 204, 200]
    assert answer.endswith(b'{"path": "/last", "size": 0}\r\n0\r\n\r\n')
    assert not listener.guard.refused


async def test_a_failing_report_is_logged_and_reporting_goes_on(
    listen: ListenerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    listener = await listen()
    assert status_of(await listener.exchange(b"GET /ok HTTP/1.1\r\n\r\n")) == 400

    def broken(_summaries: list[RefusalSummary]) -> None:
        raise RuntimeError("no sink")

    listener.served.on_refusals = broken
    listener.served.report()  # logged, not raised
    assert "could not be reported" in caplog.text
    listener.served.on_refusals = listener.reports.extend
    assert status_of(await listener.exchange(b"GET /ok HTTP/1.1\r\n\r\n")) == 400
    listener.served.report()
    assert [s.count for s in listener.reports] == [1]
