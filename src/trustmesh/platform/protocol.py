"""HTTP/1.1 over TLS for a public listener, bounded in what a client may send and how
slowly (uvicorn's httptools protocol, with the bounds it lacks).

A connection is, in order:

1. admitted by the listener's :class:`~trustmesh.platform.guard.ConnectionGuard` as a bare
   TCP connection (a per-address and a total cap; refused ones are closed before any
   TLS work);
2. given ``handshake_timeout`` to complete TLS (``loop.start_tls``), else closed;
3. given ``keepalive_timeout`` of silence before each request, else closed;
4. given ``header_timeout`` from the first byte of a request head to its end, however
   it trickles in → ``408``; a head over ``max_header_bytes`` or ``max_headers`` lines,
   or a header line over ``max_header_line_bytes`` → ``431``; a request line over it →
   ``414`` (the bytes held while a head is incomplete never exceed the head limit);
5. a head must be HTTP/1.1 or HTTP/1.0 (an HTTP/0.9 request line is ``400``), in origin
   form (``/path``: no absolute URI, ``*`` or ``CONNECT`` authority), with exactly one
   valid ``Host`` (RFC 9112 §3.2: a missing, repeated or malformed one is ``400``); an
   ``Upgrade`` (WebSocket, h2c) is ``501``;
6. while a body arrives, at most ``body_timeout`` of silence, and once ``body_timeout``
   has passed since it began, at least ``body_min_rate`` bytes a second on average
   (mod_reqtimeout's ``MinRate``) → ``408``; time in which the application keeps the
   body waiting (reading paused) does not count against the client.

A response's head is held back and written with its first body bytes (one TLS record
and one ``send`` for a whole small response, instead of two), or alone when the response
ends without a body or the connection closes; an interim ``100 Continue`` and the answer
to a ``HEAD`` are never held.

Every refusal answers ``{"error", "message"}`` with ``Connection: close``, closes the
connection, and is counted by the guard, which reports them in aggregate.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from trustmesh.platform.guard import ConnectionGuard
from trustmesh.reasons import STATUS_CODES, Reason

__all__ = ["GuardedHttpProtocol", "guarded_protocol"]

# RFC 9110 §7.2 / RFC 3986 §3.2.2: host [ ":" port ]; host a reg-name, IPv4 or IP-literal
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9\-._~!$&'()*+,;=%]{1,253})(?::[0-9]{1,5})?"
)
#: After a refusal, what the client still sends is read and dropped until it has been
#: quiet this long (at most _LINGER_MAX seconds or _LINGER_BYTES): closing with unread
#: data would reset the connection, and the client would lose the answer (nginx's
#: lingering close).
_LINGER_QUIET = 0.3
_LINGER_MAX = 3.0
_LINGER_BYTES = 1 << 20
#: How long a closing connection waits for the client's TLS close_notify.
_SHUTDOWN_SECONDS = 5.0
#: Bytes that may arrive between the end of the handshake and the protocol taking over.
_EARLY_BYTES = 4 << 20


class _Stop(Exception):
    """Raised in a parser callback to stop parsing (the refusal is on the protocol)."""


class _HeadHeld:
    """What a request's cycle writes to: the connection's transport, but the first
    write of a final response (its head) waits for the next write or :meth:`flush`.

    A head that goes out while the request's body is still arriving (``unread``: an
    answer at the edge, before the body was read) says ``Connection: close``: the
    connection closes after it (the rest of the body is dropped), so the client must
    not send its next request on it (RFC 9112 §9.6); ``closes`` tells the protocol."""

    __slots__ = ("_head", "_held", "_transport", "_unread", "closes")

    def __init__(self, transport: asyncio.Transport, unread: Callable[[], bool]) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._held = False  # the one write held back has come
        self._unread = unread
        self.closes = False

    def _said(self, head: bytes) -> bytes:
        if self._unread() and head.endswith(b"\r\n\r\n"):
            self.closes = True
            if b"\r\nconnection: close\r\n" not in head.lower():
                return head[:-2] + b"connection: close\r\n\r\n"
        return head

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(self._said(head) + bytes(data))
        elif not self._held and not bytes(data[:10]).startswith(b"HTTP/1.1 1"):
            self._held = True
            self._head = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(self._said(head))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """One client connection: TLS started here, after the guard admits the address."""

    guard: ClassVar[ConnectionGuard]
    context: ClassVar[ssl.SSLContext]
    max_line: ClassVar[int]  # the guard's limits, read on every header line
    max_headers: ClassVar[int]
    max_head: ClassVar[int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address = ""
        self._raw: asyncio.Transport | None = None
        self._ready = False
        self._closed = False
        self._early: list[bytes] = []
        self._head_started = False  # a request head has begun and is not complete
        self._head_bytes = 0
        self._header_lines = 0
        self._header_size = 0
        self._hosts = 0
        self._host: bytes | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_began: float | None = None  # this request's body clock, and …
        self._body_bytes = 0  # … what arrived since it started
        self._body_pauses = 0  # the flow's pauses when it started
        self._refusal: tuple[int, Reason, str] | None = None  # what this connection ends with
        self._deferred = False  # … once the responses before it have gone out
        self._lingering = False
        self._completed = False  # a request completed during the current read
        self._handshake: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._lingered = 0
        self._linger_until = 0.0

    # -- what the guard asks -------------------------------------------------------------
    def idle(self) -> bool:
        return (
            self._ready
            and not self._head_started
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
        )

    def abort(self) -> None:
        transport = self.transport if self._ready else self._raw
        if transport is not None:
            transport.abort()

    # -- the connection ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A bare TCP connection: admitted (or closed at once), then TLS begins."""
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        if self.guard.admit(self) is not None:
            transport.abort()
            return
        transport.pause_reading()  # nothing is read as plain text meanwhile
        self._handshake = self.loop.create_task(self._start_tls(transport))

    async def _start_tls(self, raw: asyncio.Transport) -> None:
        limits = self.guard.limits
        started = self.loop.time()
        try:
            tls = await self.loop.start_tls(
                raw,
                self,
                self.context,
                server_side=True,
                ssl_handshake_timeout=limits.handshake_timeout,
                ssl_shutdown_timeout=_SHUTDOWN_SECONDS,
            )
        except (OSError, ssl.SSLError) as exc:
            self.guard.release(self)
            raw.abort()
            if self.loop.time() - started >= limits.handshake_timeout:
                self.guard.refuse(Reason.TLS_HANDSHAKE_TIMEOUT, self.address)
            elif isinstance(exc, ssl.SSLError):
                self.guard.refuse(Reason.TLS_HANDSHAKE_FAILED, self.address)
            return  # else the client went away: nothing to count
        finally:
            self._handshake = None
        if tls is None or self._closed:  # closed during the handshake
            self.guard.release(self)
            return
        super().connection_made(tls)
        self.flow.__class__ = _CountedFlow  # its pauses counted: see _body_too_slow
        self._ready = True
        self.timeout_keep_alive_task = self.loop.call_later(
            limits.keepalive_timeout, self.timeout_keep_alive_handler
        )
        early, self._early = self._early, []
        for chunk in early:  # what came with the handshake's last flight
            self.data_received(chunk)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.guard.release(self)
        self._cancel_timers()
        if self._ready:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._ready:  # the handshake's last flight (one socket read or two)
            self._early.append(data)
            if sum(map(len, self._early)) > _EARLY_BYTES:
                self.abort()
            return
        if self._refusal is not None or self._lingering:
            self._drop(len(data))
            return
        self._unset_keepalive_if_required()
        started_before = self._head_started
        self._completed = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            refusal = self._refusal or (
                400,
                Reason.REQUEST_MALFORMED,
                "the request is not valid HTTP/1.1",
            )
            self._refusal = None
            self._refuse(*refusal)
            return
        if self._head_started:  # a head is incomplete: its clock runs, its bytes count
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.guard.limits.header_timeout, self._head_timed_out
                )
            if started_before or not self._completed:  # all of this read is head
                self._head_bytes += len(data)
            else:  # the read also ended a request: count what the parser has seen
                self._head_bytes = len(self.url) + self._header_size
            if self._head_bytes > self.max_head:
                self._refuse(431, Reason.HEADERS_TOO_LARGE, "the request head is too large")
        elif self.cycle is not None and self.cycle.more_body:
            if self._body_too_slow(len(data)):
                self._refuse(408, Reason.BODY_TIMEOUT, "the request body arrives too slowly")
                return
            self._arm_body_timer()  # a body is arriving: each chunk restarts its clock

    # -- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body_began = None
        self._header_lines = 0
        self._header_size = 0
        self._host = None
        self._hosts = 0
        self._head_started = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_line:
            self._stop(414, Reason.REQUEST_LINE_TOO_LONG, "the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's on_header, with the bounds (the hot path: one call per header line)
        name = name.lower()
        line = len(name) + len(value) + 4  # "name: value\r\n"
        self._header_lines += 1
        self._header_size += line
        if (
            line > self.max_line
            or self._header_lines > self.max_headers
            or self._header_size + len(self.url) > self.max_head
        ):
            self._stop(431, Reason.HEADERS_TOO_LARGE, self._too_large(line))
        if name == b"host":
            self._hosts += 1
            self._host = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _too_large(self, line: int) -> str:
        if line > self.max_line:
            return "a header line is too large"
        if self._header_lines > self.max_headers:
            return "too many header lines"
        return "the request head is too large"

    def on_headers_complete(self) -> None:
        problem = self._head_problem()
        if problem is not None:
            self._stop(*problem)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_started = False
        self._head_bytes = 0
        super().on_headers_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.transport is self.transport
            and cycle.scope["method"] != "HEAD"  # a HEAD answer has no body to wait for
        ):
            held = _HeadHeld(self.transport, lambda: cycle.more_body)
            cycle.transport = held  # type: ignore[assignment]
            finished = cycle.on_response

            def flush_then_finish() -> None:  # this cycle's head, whichever cycle is newest
                held.flush()
                finished()

            cycle.on_response = flush_then_finish

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._completed = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_response_complete(self) -> None:
        if self.transport.is_closing():
            super().on_response_complete()
        elif self._deferred and not self.pipeline:  # the refused head's turn to be answered
            self.server_state.total_requests += 1
            self._deferred = False
            assert self._refusal is not None  # noqa: S101 - deferred implies a refusal
            self._answer(*self._refusal)
        elif (
            self.cycle is not None
            and (self.cycle.more_body or getattr(self.cycle.transport, "closes", False))
            and not self._deferred
        ):
            # answered before its body arrived (a refusal at the edge), as its head said
            # (Connection: close): the rest of the body is read and dropped for a moment,
            # then the connection closes; a client trickling it cannot hold the connection
            self.server_state.total_requests += 1
            self._linger_until = self.loop.time() + _LINGER_MAX
            self._lingering = True
            self._drop(0)
        else:
            super().on_response_complete()

    def _head_problem(self) -> tuple[int, Reason, str] | None:
        if self.parser.get_http_version() not in ("1.1", "1.0"):
            return 400, Reason.REQUEST_MALFORMED, "HTTP/1.1 (or HTTP/1.0) only"
        if self.parser.should_upgrade():
            return 501, Reason.UPGRADE_UNSUPPORTED, "protocol upgrades are not supported here"
        if not self.url.startswith(b"/"):
            return 400, Reason.REQUEST_MALFORMED, "the request target must be a path"
        if self._hosts != 1 or self._host is None or _HOST.fullmatch(self._host) is None:
            return 400, Reason.HOST_INVALID, "exactly one valid Host header is required"
        return None

    # -- timers and refusals -------------------------------------------------------------
    def _body_too_slow(self, arrived: int) -> bool:
        """Whether the body, ``arrived`` bytes more of it now, averages less than
        ``body_min_rate`` past its ``body_timeout`` of grace. A pause of reading (the
        application behind) since the last chunk starts the clock again."""
        now, pauses = self.loop.time(), getattr(self.flow, "pauses", 0)
        if self._body_began is None or pauses != self._body_pauses:
            self._body_began, self._body_bytes, self._body_pauses = now, 0, pauses
        self._body_bytes += arrived
        limits = self.guard.limits
        return (
            now - self._body_began > limits.body_timeout + self._body_bytes / limits.body_min_rate
        )

    def _arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        if self.cycle is not None and self.cycle.waiting_for_100_continue:
            self._body_timer = None  # the client waits for our "100 Continue"
            return
        self._body_timer = self.loop.call_later(
            self.guard.limits.body_timeout, self._body_timed_out
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_started or self._closed:
            return
        if self._pending():  # the answer to an earlier request is late, not this client
            self._head_timer = self.loop.call_later(
                self.guard.limits.header_timeout, self._head_timed_out
            )
            return
        self._refuse(408, Reason.HEADER_TIMEOUT, "the request head took too long")

    def _pending(self) -> bool:
        """An earlier request of this connection is still being answered (while a new
        head is read, ``cycle`` is the previous request's)."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self._closed or cycle is None or not cycle.more_body or cycle.response_complete:
            return
        if self.flow.read_paused:  # the application is behind, not the client
            self._arm_body_timer()
            return
        self._refuse(408, Reason.BODY_TIMEOUT, "the request body took too long")

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger = None

    def _drop(self, size: int) -> None:
        """After the last answer: drop what arrives; close once the client is quiet (or
        has sent too much, or lingered too long)."""
        self._lingered += size
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._lingered > _LINGER_BYTES:
            self._close()
        elif self._deferred:
            return  # the answer waits for the responses before it
        elif self.loop.time() >= self._linger_until:
            self._close()
        else:
            self._linger = self.loop.call_later(_LINGER_QUIET, self._close)

    def _close(self) -> None:
        self.guard.release(self)  # the slot is free now, not after TLS's closing exchange
        self.transport.close()

    def _stop(self, status: int, reason: Reason, message: str) -> None:
        self._refusal = (status, reason, message)
        raise _Stop(message)

    def _refuse(self, status: int, reason: Reason, message: str) -> None:
        """Count the refusal; answer ``status`` and close — after the answers to the
        requests before it, when a new head is refused (pipelining keeps its order)."""
        self.guard.refuse(reason, self.address)
        self._cancel_timers()
        self._refusal = (status, reason, message)
        if self._head_started and self._pending():
            self._deferred = True  # on_response_complete answers it
            return
        cycle = self.cycle
        if not self._head_started and cycle is not None and not cycle.response_complete:
            # the request whose body is arriving is the refused one
            cycle.disconnected = True  # the app's receive() sees http.disconnect
            cycle.message_event.set()
            if cycle.response_started:  # too late to answer: close after a moment
                self._answer(status, reason, message, write=False)
                return
        self._answer(status, reason, message)

    def _answer(self, status: int, _reason: Reason, message: str, *, write: bool = True) -> None:
        """Write the refusal (``{"error", "message"}``, ``Connection: close``), then linger."""
        if write and not self.transport.is_closing():
            body = json.dumps({"error": STATUS_CODES[status], "message": message}).encode()
            self.transport.write(
                b"".join(
                    (
                        STATUS_LINE[status],
                        b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"cache-control: no-store\r\n",
                        b"x-content-type-options: nosniff\r\n",
                        b"connection: close\r\n\r\n",
                        body,
                    )
                )
            )
        self._lingering = True
        self._linger_until = self.loop.time() + _LINGER_MAX
        self._drop(0)


def guarded_protocol(
    context: ssl.SSLContext, guard: ConnectionGuard, *, lenient_framing: bool = False
) -> type[GuardedHttpProtocol]:
    """The protocol class for one listener (uvicorn builds one per connection).
    ``lenient_framing`` only under the test switch ``request-framing``
    (:mod:`trustmesh.config.switches`): llhttp's ``lenient_chunked_length``, so that a
    request with both Content-Length and Transfer-Encoding (RFC 9112 §6.3: a smuggling
    attempt, refused ``400``) is parsed instead, the chunked body read."""
    limits = guard.limits
    base = _LenientFraming if lenient_framing else GuardedHttpProtocol
    return type(
        "ListenerProtocol",
        (base,),
        {
            "context": context,
            "guard": guard,
            "max_line": limits.max_header_line_bytes,
            "max_headers": limits.max_headers,
            "max_head": limits.max_header_bytes,
        },
    )


class _LenientFraming(GuardedHttpProtocol):
    """The test switch ``request-framing``: each connection's parser takes a request
    with both Content-Length and Transfer-Encoding (see :func:`guarded_protocol`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser.set_dangerous_leniencies(lenient_chunked_length=True)


class _CountedFlow(FlowControl):
    """uvicorn's flow control, counting the times reading was paused (the application
    behind): a body's rate is not held against its client across a pause."""

    pauses = 0

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.pauses += 1
        super().pause_reading()
