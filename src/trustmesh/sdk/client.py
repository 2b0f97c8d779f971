"""Calling another service: mTLS with this service's SVID, and the server must present
the SPIFFE ID expected for that service (hostname checks off, SPIFFE ID check on).

Per target service: one aiohttp session whose pool survives rotations (each request is
made with the newest client context; connections made with an older one stay pooled
until they close), timeouts, bounded retries for idempotent methods only, a circuit
breaker, and W3C ``traceparent`` propagation. Each :meth:`ServiceClient.request` is a
client span (when the process records spans: :mod:`trustmesh.sdk.spans`), current while
its token is fetched — an on-behalf-of exchange is its child — and the parent of the
callee's server span.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from yarl import URL

from trustmesh import crypto
from trustmesh.errors import AuthenticationError, CryptoError, UnavailableError
from trustmesh.sdk import spans, trace
from trustmesh.sdk.tls import RotatingTLS

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})


class ServerIdentityError(AuthenticationError):
    """The server is not the service we meant to call."""

    code = "server_identity_mismatch"


class _SpiffeConnector(aiohttp.TCPConnector):
    """Checks the server's SPIFFE ID on every new connection, right after the handshake."""

    def __init__(self, expected: str, trust_domain: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expected = expected
        self.trust_domain = trust_domain

    async def _wrap_create_connection(
        self, *args: Any, req: ClientRequest, **kwargs: Any
    ) -> tuple[asyncio.Transport, Any]:
        transport, protocol = await super()._wrap_create_connection(*args, req=req, **kwargs)
        check_server_identity(
            transport, self.expected, self.trust_domain, f"{req.url.host}:{req.url.port}"
        )
        return transport, protocol


def check_server_identity(
    transport: asyncio.BaseTransport, expected: str, trust_domain: str, where: str
) -> None:
    """A new connection's server must present ``expected`` as its SPIFFE ID (checked
    right after the handshake): else the connection is closed and ServerIdentityError."""
    ssl_object = transport.get_extra_info("ssl_object")
    try:
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            raise CryptoError("no server certificate")
        from cryptography import x509

        found = crypto.leaf_spiffe_id(
            x509.load_der_x509_certificate(der), trust_domain=trust_domain
        )
    except CryptoError as exc:
        transport.close()
        raise ServerIdentityError(f"server {where}: {exc.detail}") from None
    if found != expected:
        transport.close()
        raise ServerIdentityError(f"server {where} is {found}, expected {expected}")


@dataclass
class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures; after ``cooldown`` seconds
    one trial call is let through (half-open): success closes it, failure re-opens it."""

    threshold: int = 5
    cooldown: float = 5.0
    failures: int = 0
    opened_at: float | None = None
    _trial: bool = field(default=False, repr=False)

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if now - self.opened_at >= self.cooldown and not self._trial:
            self._trial = True
            return True
        return False

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.failures, self.opened_at, self._trial = 0, None, False
            return
        self.failures += 1
        if self._trial or self.failures >= self.threshold:
            self.opened_at, self._trial = now, False

    @property
    def state(self) -> str:
        return "closed" if self.opened_at is None else "open"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    #: Every header as received, repeated ones included (a proxy relays these).
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()

    def json(self) -> Any:
        import json

        return json.loads(self.body)


#: The largest response body a client reads (decoded); larger ones are an error.
MAX_RESPONSE_BYTES = 64 << 20


class ResponseTooLargeError(UnavailableError):
    """The service's answer was larger than the client reads (never retried)."""

    code = "response_too_large"


#: Called for the bearer token of each request; ``True`` asks for a fresh one.
TokenProvider = Callable[[bool], Awaitable[str]]


class ServiceClient:
    """Calls one service, at ``base_url``, that must present ``expected_spiffe_id``."""

    def __init__(
        self,
        tls: RotatingTLS,
        base_url: str,
        expected_spiffe_id: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retries: int = 2,
        breaker: CircuitBreaker | None = None,
        token: TokenProvider | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.tls = tls
        self.max_response_bytes = max_response_bytes
        self.token = token
        self.base_url = base_url.rstrip("/")
        self.expected = expected_spiffe_id
        #: what its spans call it: the last segment of its SPIFFE ID's path
        self.service = expected_spiffe_id.rsplit("/", 1)[-1]
        self.retries = retries
        self.breaker = breaker or CircuitBreaker()
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        trust_domain = expected_spiffe_id.removeprefix("spiffe://").partition("/")[0]
        self._session = aiohttp.ClientSession(
            connector=_SpiffeConnector(
                expected_spiffe_id, trust_domain, limit=100, keepalive_timeout=30
            ),
            timeout=self._timeout,
        )

    async def close(self) -> None:
        await self._session.close()

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, decoded, up to ``max_response_bytes`` (a decompression bomb or a
        runaway answer is refused, not buffered)."""
        limit = self.max_response_bytes
        if response.content_length is not None and response.content_length > limit:
            raise ResponseTooLargeError(f"{self.expected}: response over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise ResponseTooLargeError(f"{self.expected}: response over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        token: TokenProvider | None = None,
    ) -> Response:
        """``token`` overrides the client's own token provider for this request (an
        on-behalf-of call carries the exchanged token of the caller's subject)."""
        method = method.upper()
        provider = token if token is not None else self.token
        attempts = 1 + (self.retries if method in IDEMPOTENT else 0)
        parent = trace.current()
        tracer = spans.tracer()
        # outside any request (a poll, a refresh): a trace of its own, kept if it fails
        own = parent.child() if parent else trace.TraceParent.new(sampled=tracer is None)
        span = None
        if tracer is not None:
            span = tracer.start(
                f"{method} {self.service}",
                spans.SpanKind.CLIENT,
                own,
                parent.span_id if parent else None,
            )
            span.attributes["http.request.method"] = method
            span.attributes["url.path"] = path[:512]
            span.attributes["trustmesh.peer_spiffe_id"] = self.expected
        # current while the token is fetched: an exchange for this call is its child
        trace_token = trace.use(own)
        span_token = spans.use_span(span)
        status, error = 0, None
        try:
            response = await self._exchange(method, path, attempts, json, data, headers, provider)
            status = response.status
            return response
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            spans.reset_span(span_token)
            trace.reset(trace_token)
            if span is not None and tracer is not None:
                tracer.end(span, status=status, error=error)

    async def _exchange(
        self,
        method: str,
        path: str,
        attempts: int,
        json: Any,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        provider: TokenProvider | None,
    ) -> Response:
        """The request, with its token, and once again with a fresh one if the service
        refused it as ``invalid_token``."""
        current = trace.current()
        sent_headers = {**(headers or {})}
        if current is not None:
            sent_headers["traceparent"] = current.header()
        if provider is not None:
            sent_headers["Authorization"] = f"Bearer {await provider(False)}"
        response = await self._send(method, path, attempts, json, data, sent_headers)
        if (
            provider is not None
            and response.status == 401
            and "invalid_token" in response.headers.get("WWW-Authenticate", "")
        ):
            # the token was refused before the service saw the request (its SVID rotated
            # under it, say): once, with a fresh token, whatever the method
            sent_headers["Authorization"] = f"Bearer {await provider(True)}"
            response = await self._send(method, path, attempts, json, data, sent_headers)
        return response

    async def _send(
        self,
        method: str,
        path: str | URL,
        attempts: int,
        json: Any,
        data: Mapping[str, str] | bytes | None,
        sent_headers: dict[str, str] | list[tuple[str, str]],
    ) -> Response:
        last = UnavailableError(f"{self.expected}: no attempt made")
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0) * (0.5 + random.random()))  # noqa: S311 - jitter
            if not self.breaker.allow(time.monotonic()):
                raise UnavailableError(f"circuit open for {self.expected}")
            try:
                async with self._session.request(
                    method,
                    path if isinstance(path, URL) else self.base_url + path,
                    json=json,
                    data=data,
                    headers=sent_headers,
                    ssl=self.tls.client,
                ) as r:
                    body = await self._read(r)
                    response = Response(r.status, dict(r.headers), body, r.raw_headers)
            except ServerIdentityError:
                self.breaker.record(False, time.monotonic())
                raise  # never retried: the network is not flaky, it is someone else
            except ResponseTooLargeError:
                raise  # the same request would get the same answer
            except aiohttp.ServerDisconnectedError as exc:
                # under TLS 1.3 a server that refuses our certificate hangs up after the
                # handshake: say so instead of "server disconnected"
                last = UnavailableError(
                    f"{self.expected} closed the connection (did it refuse our SVID?): {exc}"
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = UnavailableError(f"{self.expected} unreachable: {type(exc).__name__}")
            else:
                failed = response.status in RETRY_STATUSES
                self.breaker.record(not failed, time.monotonic())
                if not failed or attempt == attempts - 1:
                    return response
                continue
            self.breaker.record(False, time.monotonic())
        raise last

    async def forward(
        self, method: str, target: str, headers: list[tuple[str, str]], content: bytes
    ) -> Response:
        """Relay a request as it is (a gateway's upstream call): ``target`` is the path
        and query, ``headers`` every header to send (repeats kept), ``content`` the body.
        Retried, like every call, only when the method is idempotent."""
        method = method.upper()
        attempts = 1 + (self.retries if method in IDEMPOTENT else 0)
        # sent as it is: never decoded, re-quoted or re-parsed on the way
        url = URL(self.base_url + target, encoded=True)
        return await self._send(method, url, attempts, None, content or None, headers)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)
