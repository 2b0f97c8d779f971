"""Delivering events to the audit collector: ``POST /v1/events`` over mTLS, from a
thread (``http.client``, no event loop), and the back-off between failed attempts.

The workload presents its SVID; the collector must present the SPIFFE ID expected for
it (``spiffe://<td>/trustmesh/audit``), checked right after each handshake (X509-SVID
§5: hostname checks off, the URI SAN checked instead). One keep-alive connection,
re-made after any failure; a rotated SVID is used from the next connection on.

What an answer means (the collector's ``app`` module):

- ``200`` — the batch is durable (stored, duplicates of a retry, or quarantined):
  :class:`Delivered`.
- ``413`` — too big: :class:`BatchTooLargeError`; the caller splits the batch.
- ``5xx``, a refused or broken connection, a timeout, a collector that is not the
  collector — :class:`CollectorUnavailableError`: keep the events, back off, retry.
- another ``4xx`` — :class:`DeliveryRefusedError` with the status: a bug or a change on
  one side (the collector quarantines what it cannot read rather than refusing it);
  what the sink does with it: :mod:`trustmesh.sdk.delivery`.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from trustmesh.errors import AuthenticationError, TrustmeshError, UnavailableError, UsageError
from trustmesh.sdk.tls import client_context, peer_spiffe_id
from trustmesh.sdk.x509source import SVIDSource, X509Context

__all__ = [
    "Backoff",
    "BatchTooLargeError",
    "CollectorClient",
    "CollectorUnavailableError",
    "Delivered",
    "DeliveryRefusedError",
]

EVENTS_PATH: Final = "/v1/events"
_MAX_ANSWER: Final = 64 * 1024


class CollectorUnavailableError(UnavailableError):
    """The collector did not take the batch (no answer, 5xx, or not the collector):
    nothing was acknowledged; retry later."""

    code = "collector_unavailable"


class _Stale(Exception):
    """The collector hung up without an answer (on a kept connection: its idle timeout)."""


class DeliveryRefusedError(TrustmeshError):
    """The collector refused the batch with a 4xx: a bug on one side or the other."""

    code = "delivery_refused"
    status = 502

    def __init__(self, detail: str, *, status_code: int) -> None:
        super().__init__(detail)
        self.status_code = status_code


class BatchTooLargeError(DeliveryRefusedError):
    """``413``: more events or bytes than one delivery may carry; split the batch."""

    code = "batch_too_large"


@dataclass(frozen=True)
class Delivered:
    """The collector's answer to a delivery, once the batch is durable."""

    stored: int
    duplicates: int
    quarantined: int


def _jitter() -> float:
    return random.random()  # noqa: S311 - spreads retries in time; not a secret


@dataclass
class Backoff:
    """Exponential back-off with jitter, capped: after the n-th consecutive failure wait
    ``min(maximum, initial * factor**(n-1))``, less up to ``jitter`` of it at random (so
    producers that failed together do not retry together). ``clock`` and ``sleep`` are
    parameters (tests move a fake clock)."""

    initial: float = 0.1
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = _jitter
    failures: int = 0
    not_before: float = 0.0
    _limits: tuple[float, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise UsageError("back-off: 0 < initial <= maximum, factor >= 1, 0 <= jitter <= 1")

    def delay(self) -> float:
        """The wait after the current run of failures (0 with none)."""
        if self.failures == 0:
            return 0.0
        exponent = min(self.failures - 1, 64)
        ceiling = min(self.maximum, self.initial * self.factor**exponent)
        return ceiling * (1 - self.jitter * self.random())

    def failed(self) -> float:
        """Count a failure; the wait before the next attempt."""
        self.failures += 1
        wait = self.delay()
        self.not_before = self.clock() + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0

    def remaining(self) -> float:
        """How long until the next attempt may be made."""
        return max(0.0, self.not_before - self.clock())

    def pause(self) -> None:
        """Sleep until the next attempt may be made."""
        wait = self.remaining()
        if wait > 0:
            self.sleep(wait)


class CollectorClient:
    """POSTs batches of rendered OCSF events (JSON bytes) to the collector at ``url``.

    ``tls``: the workload's SVID source (a client context is made from its newest SVID
    for each new connection) or a ready :class:`ssl.SSLContext`. ``expected_spiffe_id``:
    the collector's (``config.component_spiffe_id("audit")``). ``locate``: where the
    collector listens now (None: not known yet), asked before each new connection — a
    collector restarted on another port is found again, and a producer started before
    it (``url`` empty) spools until it appears. Not thread-safe: one delivering thread
    owns it."""

    def __init__(
        self,
        url: str,
        tls: SVIDSource | ssl.SSLContext,
        expected_spiffe_id: str,
        *,
        timeout: float = 10.0,
        locate: Callable[[], str | None] | None = None,
    ) -> None:
        if not expected_spiffe_id.startswith("spiffe://"):
            raise UsageError("the collector's expected SPIFFE ID must be a spiffe:// URI")
        self.url, self.host, self.port = "", "", 0
        if url or locate is None:
            self._aim(url)
        self._locate = locate
        self.expected = expected_spiffe_id
        self.trust_domain = expected_spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
        self.timeout = timeout
        self._tls = tls
        self._made_from: X509Context | None = None
        self._context: ssl.SSLContext | None = tls if isinstance(tls, ssl.SSLContext) else None
        self._conn: http.client.HTTPSConnection | None = None

    def _aim(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(f"the audit collector's URL must be https://host:port, not {url!r}")
        self.url, self.host, self.port = url, parts.hostname, parts.port or 443

    def _ssl_context(self) -> ssl.SSLContext:
        if isinstance(self._tls, ssl.SSLContext):
            return self._tls
        newest = self._tls.context
        if self._context is None or newest is not self._made_from:
            self._context = client_context(newest)
            self._made_from = newest
        return self._context

    def _connect(self) -> http.client.HTTPSConnection:
        if self._locate is not None:
            found = self._locate()
            if found and found != self.url:
                try:
                    self._aim(found)
                except UsageError as exc:
                    raise CollectorUnavailableError(exc.detail) from None
        if not self.url:
            raise CollectorUnavailableError("the audit collector is not running yet")
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self._ssl_context(), timeout=self.timeout
        )
        try:
            conn.connect()
            sock = conn.sock
            if not isinstance(sock, ssl.SSLSocket):
                raise CollectorUnavailableError("the connection to the collector is not TLS")
            found = peer_spiffe_id(sock, self.trust_domain)
        except AuthenticationError as exc:
            conn.close()
            raise CollectorUnavailableError(
                f"{self.host}:{self.port} is not the audit collector: {exc.detail}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise CollectorUnavailableError(
                f"cannot connect to the audit collector at {self.host}:{self.port}: {exc}"
            ) from None
        if found != self.expected:
            conn.close()
            raise CollectorUnavailableError(
                f"{self.host}:{self.port} is {found}, expected the collector {self.expected}"
            )
        return conn

    def send(self, records: Sequence[bytes]) -> Delivered:
        """Deliver ``records`` (each one OCSF event as JSON) as one batch, in order."""
        body = b'{"events":[' + b",".join(records) + b"]}"
        status, text = self.post(EVENTS_PATH, body, "application/json")
        if status == 200:
            return _delivered(text)
        if status == 413:
            raise BatchTooLargeError(
                f"a batch of {len(records)} events is too large", status_code=413
            )
        if status >= 500:
            raise CollectorUnavailableError(f"the audit collector answered {status}")
        raise DeliveryRefusedError(
            f"the audit collector refused a delivery: {status} {text[:200]!r}", status_code=status
        )

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """POST ``body`` to the collector's ``path`` on the kept connection: the status
        and (the first 64 KiB of) the answer. CollectorUnavailableError when there was
        no answer. A kept connection the collector closed while it was idle (its
        keep-alive timeout: it hangs up without an answer) is made again, once: what
        the collector takes is stored once, so a request it did see is no harm."""
        for attempt in (1, 2) if self._conn is not None else (2,):
            try:
                return self._post(path, body, content_type)
            except _Stale:
                if attempt == 2:
                    break
        raise CollectorUnavailableError(
            "delivery to the audit collector failed: it closed the connection without an answer"
        )

    def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            conn.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": content_type, "Connection": "keep-alive"},
            )
            answer = conn.getresponse()
            status = answer.status
            text = answer.read(_MAX_ANSWER + 1)
            if answer.will_close:
                self.close()
        except (
            http.client.RemoteDisconnected,
            BrokenPipeError,
            ConnectionResetError,
            ssl.SSLEOFError,
            ssl.SSLZeroReturnError,
        ):
            self.close()
            raise _Stale from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise CollectorUnavailableError(
                f"delivery to the audit collector failed: {exc}"
            ) from None
        return status, text

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


def _delivered(text: bytes) -> Delivered:
    try:
        doc = json.loads(text) if len(text) <= _MAX_ANSWER else None
    except ValueError:
        doc = None
    counts = [
        doc.get(k) if isinstance(doc, dict) else None
        for k in ("stored", "duplicates", "quarantined")
    ]
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise CollectorUnavailableError("the audit collector's answer is not one")
    stored, duplicates, quarantined = (int(c) for c in counts)  # type: ignore[arg-type]
    return Delivered(stored, duplicates, quarantined)
