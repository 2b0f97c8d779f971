"""The gateway's upstream client on the wire: a scripted server behind real mTLS (an SVID
from a live identity service) answers in each shape HTTP/1.1 allows — interim answers,
chunks, compression, no length, HEAD, stale keep-alives, oversized or broken answers —
and the client relays, bounds or refuses each as its docstring says."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from trustmesh.config import parse_config
from trustmesh.errors import UnavailableError
from trustmesh.gateway.wire import WireClient
from trustmesh.sdk.client import ResponseTooLargeError, ServerIdentityError
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "wire.example"
ORDERS = f"spiffe://{TD}/orders"
OTHER = f"spiffe://{TD}/inventory"
GATEWAY = f"spiffe://{TD}/trustmesh/gateway"
CONFIG = parse_config(
    f"""
trust_domain: {TD}
dev: true
services:
  orders: {{external: true}}
  inventory: {{external: true}}
""",
    source="test.yaml",
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


class Upstream:
    """A TLS server with an SVID, answering each connection with a script."""

    def __init__(self, tls: RotatingTLS) -> None:
        self.tls = tls
        self.script: Script | None = None
        self.connections = 0
        self.active = 0
        self.most_active = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.tls.listening
        )
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        assert self.script is not None
        try:
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def answer(self, *answers: bytes | None, close: bool = False, delay: float = 0.0) -> None:
        """Each request on a connection gets the next answer (None: the connection closes
        without one, and the answers after it go to the next connection); then the server
        waits for the next request (or closes, with ``close``)."""
        pending = list(answers)

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while pending:
                request = await read_request(reader)
                answer = pending.pop(0)
                self.requests.append(request)
                if answer is None:
                    return
                self.active += 1
                self.most_active = max(self.most_active, self.active)
                await asyncio.sleep(delay)
                self.active -= 1
                writer.write(answer)
                await writer.drain()
            if not close:
                await reader.read()

        self.script = script


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    with identity_server_in_thread(CONFIG, short_tmp / "identity") as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (ORDERS, OTHER, GATEWAY):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


@pytest.fixture
async def tls(identity: RunningIdentityServer) -> AsyncIterator[dict[str, RotatingTLS]]:
    sources = {s: X509Source(identity.address, spiffe_id=s) for s in (ORDERS, OTHER, GATEWAY)}
    for source in sources.values():
        await source.start()
    yield {s: RotatingTLS(source) for s, source in sources.items()}
    for source in sources.values():
        await source.close()


@pytest.fixture
async def upstream(tls: dict[str, RotatingTLS]) -> AsyncIterator[tuple[Upstream, WireClient]]:
    server = Upstream(tls[ORDERS])
    url = await server.start()
    client = WireClient(tls[GATEWAY], url, ORDERS, max_response_bytes=1000)
    yield server, client
    await client.close()
    assert server.server is not None
    server.server.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def test_a_request_goes_out_as_given_in_one_piece(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    server.answer(OK)
    headers = [
        ("x-a", "1"),
        ("X-Repeat", "a"),
        ("X-Repeat", "b"),
        ("Content-Length", "999"),
        ("Accept-Encoding", "br, gzip"),
    ]
    answer = await client.forward("post", "/orders/a%2Fb?q=1", headers, b"hello")
    assert (answer.status, answer.body) == (200, b"ok")
    (request,) = server.requests
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /orders/a%2Fb?q=1 HTTP/1.1",
        b"x-a: 1",
        b"X-Repeat: a",
        b"X-Repeat: b",
        f"host: 127.0.0.1:{client.port}".encode(),
        b"accept-encoding: identity",
        b"content-length: 5",
    ]
    assert body == b"hello"


async def test_a_header_that_would_split_the_request_is_refused(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    server.answer(OK)
    for headers in ([("x-a", "1\r\nx-injected: 1")], [("x-a\nb", "1")], [("x-a", "\0")]):
        with pytest.raises(UnavailableError, match="cannot send"):
            await client.forward("GET", "/orders", headers, b"")
    with pytest.raises(UnavailableError, match="cannot send"):
        await client.forward("GET", "/orders HTTP/1.1\r\nx: y", [], b"")
    assert server.connections == 0


async def test_interim_chunked_and_compressed_answers_are_read_whole(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    packed = gzip.compress(b"a" * 600)
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (packed[:10], packed[10:])) + b"0\r\n\r\n"
    )
    server.answer(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n"
        b"set-cookie: a=1\r\nset-cookie: b=2\r\n\r\n" + chunked,
        OK,
    )
    answer = await client.forward("PUT", "/orders/1", [], b"x")
    assert (answer.status, answer.body) == (201, b"a" * 600)
    assert [v for k, v in answer.raw_headers if k == b"set-cookie"] == [b"a=1", b"b=2"]
    again = await client.forward("GET", "/orders/1", [], b"")  # the same connection
    assert again.body == b"ok"
    assert server.connections == 1


async def test_an_answer_over_the_bound_is_refused(upstream: tuple[Upstream, WireClient]) -> None:
    server, client = upstream
    bomb = gzip.compress(b"\0" * 100_000)  # small on the wire, 100 kB decoded
    cases = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"".join(b"64\r\n" + b"x" * 100 + b"\r\n" for _ in range(11)),
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
        % (len(bomb), bomb),
        b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"y" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"y" * 200_000,  # a value that never ends
    ]
    for case in cases:
        server.answer(case)
        with pytest.raises(ResponseTooLargeError):
            await client.forward("GET", "/orders", [], b"")


async def test_broken_or_unexpected_answers_are_unavailable(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    for answer, match in [
        (b"NOT HTTP AT ALL\r\n\r\n", "does not parse"),
        (b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 2\r\n\r\nzz", "'br'"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "cut short"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
            % (len(gzip.compress(b"hello world")[:-8]), gzip.compress(b"hello world")[:-8]),
            "does not end",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
            % (2 * len(gzip.compress(b"a")), gzip.compress(b"a") * 2),
            "does not end",
        ),
    ]:
        server.answer(answer, close=True)
        with pytest.raises(UnavailableError, match=match):
            await client.forward("GET", "/orders", [], b"")


async def test_an_answer_without_a_length_ends_with_the_connection(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    server.answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True)
    answer = await client.forward("GET", "/orders", [], b"")
    assert answer.body == b"until the end"


async def test_a_head_answer_has_no_body_and_its_connection_is_not_reused(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    server.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
    answer = await client.forward("HEAD", "/orders", [], b"")
    assert (answer.status, answer.body) == (200, b"")
    server.answer(OK)
    assert (await client.forward("GET", "/orders", [], b"")).body == b"ok"
    assert server.connections == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_stale_keepalive_is_retried_for_an_idempotent_method_only(
    upstream: tuple[Upstream, WireClient], method: str
) -> None:
    """The server takes the second request on a kept-alive connection and closes without
    a byte of answer (as a server closing an idle connection does)."""
    server, client = upstream
    server.answer(OK, None, OK)  # the next connection: answers
    assert (await client.forward(method, "/orders", [], b"")).body == b"ok"
    if method == "GET":
        assert (await client.forward(method, "/orders", [], b"")).body == b"ok"
        assert server.connections == 2
    else:  # it may have been acted on: never sent twice
        with pytest.raises(UnavailableError, match="closed the connection"):
            await client.forward(method, "/orders", [], b"")
        assert server.connections == 1
    assert len(server.requests) == (3 if method == "GET" else 2)


async def test_a_server_with_another_identity_is_refused(
    tls: dict[str, RotatingTLS],
) -> None:
    server = Upstream(tls[OTHER])
    url = await server.start()
    server.answer(OK)
    client = WireClient(tls[GATEWAY], url, ORDERS)
    with pytest.raises(ServerIdentityError, match=OTHER):
        await client.forward("GET", "/orders", [], b"")
    await client.close()
    assert server.server is not None
    server.server.close()


async def test_connections_are_bounded_and_waiting_callers_are_served(
    tls: dict[str, RotatingTLS],
) -> None:
    server = Upstream(tls[ORDERS])
    url = await server.start()
    server.answer(OK, OK, OK, delay=0.05)
    client = WireClient(tls[GATEWAY], url, ORDERS, max_connections=1)
    answers = await asyncio.gather(*(client.forward("GET", "/o", [], b"") for _ in range(3)))
    assert [a.body for a in answers] == [b"ok"] * 3
    assert (server.connections, server.most_active) == (1, 1)
    await client.close()
    assert server.server is not None
    server.server.close()


async def test_a_cancelled_call_closes_its_connection(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    server.answer(OK, delay=5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.forward("GET", "/orders", [], b"")
    assert client._idle == []
    assert client._open == 0


async def test_after_a_rotation_new_requests_take_new_connections(
    tls: dict[str, RotatingTLS], upstream: tuple[Upstream, WireClient]
) -> None:
    server, client = upstream
    server.answer(OK, OK)
    assert (await client.forward("GET", "/orders", [], b"")).body == b"ok"
    gateway = tls[GATEWAY]
    gateway._rotate(gateway.source.context)  # as the SVID stream does at each rotation
    assert (await client.forward("GET", "/orders", [], b"")).body == b"ok"
    assert server.connections == 2


async def test_two_answers_to_one_request_close_the_connection(
    upstream: tuple[Upstream, WireClient],
) -> None:
    server, client = upstream
    server.answer(OK + OK, OK)  # the second OK answers nothing: the server is out of step
    assert (await client.forward("GET", "/orders", [], b"")).body == b"ok"
    assert (await client.forward("GET", "/orders", [], b"")).body == b"ok"
    assert server.connections == 2  # the first connection was not trusted again


async def test_a_cancelled_waiter_passes_its_turn_on(tls: dict[str, RotatingTLS]) -> None:
    """A connection freed while callers wait goes to the first of them; if that one is
    cancelled (its route's timeout) before it runs, the next one gets the turn."""
    server = Upstream(tls[ORDERS])
    url = await server.start()
    server.answer(OK)
    client = WireClient(tls[GATEWAY], url, ORDERS, max_connections=1)
    client._open = 1  # the one connection is out
    second = asyncio.create_task(client._connection())
    third = asyncio.create_task(client._connection())
    await asyncio.sleep(0.01)  # both wait
    client._open = 0  # as a release that closed its connection does:
    client._notify()  # the turn goes to the second…
    second.cancel()  # …which is cancelled before it runs
    connection = await asyncio.wait_for(third, 5)  # the third still gets its turn
    with pytest.raises(asyncio.CancelledError):
        await second
    assert not connection.closed
    connection.close()
    await client.close()
    assert server.server is not None
    server.server.close()


async def test_a_large_answer_read_with_its_head_is_not_taken_for_a_large_head(
    tls: dict[str, RotatingTLS],
) -> None:
    """The head's bound counts only reads that end inside the head: a read that holds a
    small head and much of the body is the body's."""
    server = Upstream(tls[ORDERS])
    url = await server.start()
    body = b"x" * (512 << 10)
    server.answer(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    client = WireClient(tls[GATEWAY], url, ORDERS)
    answer = await client.forward("GET", "/orders", [], b"")
    assert answer.body == body
    await client.close()
    assert server.server is not None
    server.server.close()
