"""The gateway's client for one upstream instance: HTTP/1.1 over mTLS on pooled keep-alive
connections, written for the proxy's one job — relay a buffered request, read a bounded
answer — at a fraction of a general client's cost (one ``write`` per request, the answer
parsed by httptools' C parser, no per-request session, URL or header objects).

What it keeps of :class:`~trustmesh.sdk.client.ServiceClient`, the SDK's client, which it
stands in for in :class:`~trustmesh.gateway.upstreams.UpstreamPool`:

- **mTLS and the server's identity:** each new connection presents the newest SVID
  (:class:`~trustmesh.sdk.tls.RotatingTLS`; after a rotation, connections made with the
  older one are not reused: a token bound to the new certificate must travel with it)
  and must present ``expected`` as its SPIFFE ID, checked right after the handshake
  (:class:`~trustmesh.sdk.client.ServerIdentityError` otherwise);
- **bounds:** a connect takes at most ``connect_timeout``; an answer's head at most
  ``max_head_bytes`` and its body, decoded, at most ``max_response_bytes``
  (:class:`~trustmesh.sdk.client.ResponseTooLargeError`, never buffered whole); at most
  ``max_connections`` at once (more callers wait for one); the pool (the caller) bounds
  the whole call with the route's timeout — a call cancelled mid-way closes its
  connection, whose state is then unknown;
- **errors** as :class:`~trustmesh.errors.UnavailableError` (the pool ejects the
  instance and may retry elsewhere): unreachable, closed before answering (under TLS 1.3
  a server that refuses our certificate hangs up after the handshake), an answer that
  does not parse.

What it does on the wire: the request is sent as given (method, target never re-encoded,
every header in order, repeats kept) with ``Host`` (when the caller has none) and
``Content-Length`` for a body (any the caller passed is replaced; a header holding CR,
LF or NUL is refused — no request can be split in two here); ``Accept-Encoding:
identity`` replaces the client's (the gateway relays bodies decoded, so a compressed
answer would only cost both ends CPU); an answer compressed anyway (``gzip``,
``deflate``) is decoded within the bound, any other coding is refused. Interim ``1xx``
answers are skipped. A connection goes back to the pool when its answer was complete and
both ends keep it alive (never after a ``HEAD``, whose answer's length is not its body's);
an idle one is closed after ``idle_timeout`` seconds (below the services' own keep-alive
of 5 s, so the pool does not pick a connection the server is closing); one that was idle
and is found closed before any answer byte arrives is retried once on a new connection
for an idempotent method.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
import zlib
from typing import Any

import httptools

from trustmesh.errors import UnavailableError
from trustmesh.sdk.client import (
    IDEMPOTENT,
    MAX_RESPONSE_BYTES,
    Response,
    ResponseTooLargeError,
    check_server_identity,
)
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["WireClient"]

_BAD = re.compile("[\r\n\0]")
_BAD_TARGET = re.compile("[ \t\r\n\0]")
_REPLACED = frozenset({"content-length", "transfer-encoding", "accept-encoding", "connection"})
_IDENTITY = b"accept-encoding: identity\r\n"


class _Closed(UnavailableError):
    """The connection closed before any byte of the answer (maybe a stale keep-alive)."""


class _Connection(asyncio.Protocol):
    """One connection; at most one request on it at a time."""

    def __init__(self, client: WireClient, context: ssl.SSLContext) -> None:
        self.client = client
        self.context = context  # the SVID it presented: reused only while it is the newest
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reusable = False
        self._waiter: asyncio.Future[Response] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._started = False  # a byte of the answer has come
        self._until_close = False  # its body ends when the connection does
        self._done = False  # the answer is complete
        self._unfinished = 0  # bytes read while the head is still incomplete

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # nothing was asked: a server talking out of turn
            self.close()
            return
        self._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UnavailableError(f"{self.client.expected}: an upgrade was not asked for"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, UnavailableError) else UnavailableError(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(
                UnavailableError(f"{self.client.expected}: an answer that does not parse: {exc}")
            )
            return
        if not self._status and self._parser is not None:  # the head goes on past this read:
            self._unfinished += len(data)  # httptools holds a header value whole: bound it
            if self._unfinished > self.client.max_head_bytes:
                self._fail(
                    ResponseTooLargeError(f"{self.client.expected}: response head too large")
                )

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if not self._started:
                self._fail(
                    _Closed(
                        f"{self.client.expected} closed the connection (did it refuse our SVID?)"
                    )
                )
            elif self._until_close:  # an answer without a length ends with the connection
                self._answer()
            else:
                self._fail(UnavailableError(f"{self.client.expected}: the answer was cut short"))

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._done:  # a second answer to one request: the server is out of step
            raise UnavailableError(f"{self.client.expected}: more than one answer to a request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.client.max_head_bytes:
            raise ResponseTooLargeError(f"{self.client.expected}: response head too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # noqa: S101 - set while a request is out
        self._status = self._parser.get_status_code()
        if self._status < 200:
            return
        if self._head:
            self._answer()
            return
        framed = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                framed = True
            elif lowered == b"content-length":
                framed = True
                if value.isdigit() and int(value) > self.client.max_response_bytes:
                    raise ResponseTooLargeError(
                        f"{self.client.expected}: response over {self.client.max_response_bytes} bytes"
                    )
        self._until_close = not framed and self._status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.client.max_response_bytes:
            raise ResponseTooLargeError(
                f"{self.client.expected}: response over {self.client.max_response_bytes} bytes"
            )
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer: the final one follows
            self._status, self._headers = 0, []
            return
        if not self._head:
            self._answer()

    # -- the exchange -------------------------------------------------------------------
    def _answer(self) -> None:
        waiter, parser = self._waiter, self._parser
        if waiter is None or waiter.done() or parser is None:
            return
        self.reusable = not self._head and not self._until_close and parser.should_keep_alive()
        self._done = True
        try:
            body = _decoded(self._headers, b"".join(self._chunks), self.client)
        except UnavailableError as exc:
            self.reusable = False
            waiter.set_exception(exc)
            return
        raw = tuple(self._headers)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
        waiter.set_result(Response(self._status, headers, body, raw))

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        self._parser = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    async def exchange(self, request: bytes, head: bool) -> Response:
        assert self.transport is not None  # noqa: S101 - connected
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._head, self._status, self._headers, self._head_size = head, 0, [], 0
        self._chunks, self._size, self._started, self.reusable = [], 0, False, False
        self._until_close, self._done, self._unfinished = False, False, 0
        self.transport.write(request)
        try:
            response: Response = await waiter
            return response
        finally:
            self._waiter = None
            if not self.reusable:
                self.close()

    def close(self) -> None:
        self.closed = True
        self._parser = None
        if self.transport is not None:
            self.transport.close()


def _decoded(headers: list[tuple[bytes, bytes]], body: bytes, client: WireClient) -> bytes:
    coding = b""
    for name, value in headers:
        if name.lower() == b"content-encoding":
            coding = value.strip().lower()
    if coding in (b"", b"identity"):
        return body
    if coding in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == b"deflate":
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise UnavailableError(
            f"{client.expected}: an answer in {coding.decode('latin-1')!r} coding"
        )
    limit = client.max_response_bytes
    try:
        inflater = zlib.decompressobj(wbits)
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise UnavailableError(
            f"{client.expected}: a compressed answer that does not decode: {exc}"
        ) from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise ResponseTooLargeError(f"{client.expected}: response over {limit} bytes")
    if body and (not inflater.eof or inflater.unused_data):  # cut short, or more than one
        raise UnavailableError(f"{client.expected}: a compressed answer that does not end")
    return plain


class WireClient:
    """Calls one upstream instance at ``base_url`` (``https://host:port``), which must
    present ``expected`` as its SPIFFE ID."""

    def __init__(
        self,
        tls: RotatingTLS,
        base_url: str,
        expected: str,
        *,
        connect_timeout: float = 3.0,
        idle_timeout: float = 4.0,
        max_connections: int = 100,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_head_bytes: int = 64 << 10,
    ) -> None:
        scheme, _, authority = base_url.rstrip("/").partition("://")
        if scheme != "https" or not authority or "/" in authority:
            raise ValueError(f"an upstream instance is https://host:port, not {base_url!r}")
        host, _, port = authority.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.tls = tls
        self.expected = expected
        self.trust_domain = expected.removeprefix("spiffe://").partition("/")[0]
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self.max_head_bytes = max_head_bytes
        self._host_line = b"host: " + authority.encode("ascii") + b"\r\n"
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = False

    async def forward(
        self, method: str, target: str, headers: list[tuple[str, str]], content: bytes
    ) -> Response:
        """Relay one request (see the module docstring for what is sent)."""
        method = method.upper()
        request = self._request(method, target, headers, content)
        head = method == "HEAD"
        connection = await self._connection()
        reused = connection.idle_since > 0
        try:
            return await self._exchange(connection, request, head)
        except _Closed:
            if not (reused and method in IDEMPOTENT):
                raise
        return await self._exchange(await self._connection(fresh=True), request, head)

    async def request(self, method: str, path: str, **_: Any) -> Response:
        """A request of the gateway's own (a health check): no headers, no body."""
        return await self.forward(method, path, [], b"")

    async def close(self) -> None:
        self._closing = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    # -- internals ----------------------------------------------------------------------
    def _request(
        self, method: str, target: str, headers: list[tuple[str, str]], content: bytes
    ) -> bytes:
        if not target.startswith("/") or _BAD_TARGET.search(target):
            raise UnavailableError(f"a request target the gateway cannot send: {target[:64]!r}")
        kept = [(n, v) for n, v in headers if n.lower() not in _REPLACED]
        if _BAD.search("".join(n + v for n, v in kept)):
            raise UnavailableError("a header the gateway cannot send (CR, LF or NUL in it)")
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{n}: {v}" for n, v in kept]
        lines.append("")
        parts = ["\r\n".join(lines).encode("latin-1")]
        if not any(n.lower() == "host" for n, _ in kept):
            parts.append(self._host_line)
        parts.append(_IDENTITY)
        if content or method in ("POST", "PUT", "PATCH"):
            parts.append(b"content-length: %d\r\n" % len(content))
        parts.append(b"\r\n")
        if content:
            parts.append(content)
        return b"".join(parts)

    async def _exchange(self, connection: _Connection, request: bytes, head: bool) -> Response:
        try:
            response = await connection.exchange(request, head)
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        self._release(connection)
        return response

    async def _connection(self, *, fresh: bool = False) -> _Connection:
        now, context = time.monotonic(), self.tls.client
        while self._idle and not fresh:
            connection = self._idle.pop()
            if (
                not connection.closed
                and now - connection.idle_since < self.idle_timeout
                and connection.context is context
            ):
                return connection
            connection.close()
            self._open -= 1
        while self._open >= self.max_connections:  # wait for a connection to close or idle
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                await turn
            except BaseException:  # cancelled: a turn it was given goes to the next caller
                if turn.done() and not turn.cancelled():
                    self._notify()
                raise
            finally:
                if turn in self._waiting:
                    self._waiting.remove(turn)
            if self._idle and not fresh:
                return await self._connection()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._notify()
            raise

    async def _connect(self) -> _Connection:
        loop, context = asyncio.get_running_loop(), self.tls.client
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(self, context),
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self.host,
                )
        except (OSError, TimeoutError, ValueError) as exc:
            raise UnavailableError(f"{self.expected} unreachable: {type(exc).__name__}") from None
        check_server_identity(
            transport, self.expected, self.trust_domain, f"{self.host}:{self.port}"
        )
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.closed or not connection.reusable or self._closing:
            connection.close()
            self._open -= 1
            self._notify()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._notify()

    def _notify(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
