"""An always-current X.509-SVID and trust bundle, streamed from the SPIFFE Workload API.

Speaks the wire protocol only (``/SpiffeWorkloadAPI/FetchX509SVID``), so the same service
runs against trustmesh's identity service or SPIRE's agent. The stream is kept open; each
pushed update replaces the current SVID atomically and notifies subscribers. When the
stream breaks, the last SVID stays in use (until it expires) while the source reconnects
with backoff; once it has less than :data:`EXPIRING_FRACTION` of its lifetime left
without a renewal, ``on_expiring`` callbacks are told, once per SVID (ARCHITECTURE: "an
alert fires below 20% of lifetime"; :func:`record_expiring` makes it an event).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import h2.exceptions
from cryptography import x509
from grpclib import GRPCError
from grpclib.client import Channel, UnaryStreamMethod
from grpclib.exceptions import StreamTerminatedError

from trustmesh import crypto, events
from trustmesh._proto import workload_pb2 as pb
from trustmesh.errors import CryptoError, UnavailableError, UsageError
from trustmesh.reasons import Activity
from trustmesh.sdk.workload import ENDPOINT_ENV, SECURITY_HEADER, socket_path

log = logging.getLogger("trustmesh.sdk")

FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID"
#: What is left of an SVID's lifetime (not before to not after) when, not renewed, it is
#: reported as expiring. Renewal is due at half of it.
EXPIRING_FRACTION: Final = 0.2


@dataclass(frozen=True, repr=False)
class X509Context:
    """One SVID (leaf first, then intermediates), its key, and the trust bundle."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    key: crypto.PrivateKey
    bundle: tuple[x509.Certificate, ...]

    def __repr__(self) -> str:
        return f"X509Context({self.spiffe_id}, not_after={self.not_after.isoformat()})"

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.removeprefix("spiffe://").partition("/")[0]

    @property
    def not_after(self) -> dt.datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def expiring_at(self) -> dt.datetime:
        """When, not renewed, the SVID has :data:`EXPIRING_FRACTION` of its life left."""
        leaf = self.chain[0]
        life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        return leaf.not_valid_after_utc - life * EXPIRING_FRACTION

    def chain_pem(self) -> bytes:
        return "".join(crypto.cert_pem(c) for c in self.chain).encode("ascii")

    def bundle_pem(self) -> bytes:
        return "".join(crypto.cert_pem(c) for c in self.bundle).encode("ascii")


def parse_response(reply: pb.X509SVIDResponse, spiffe_id: str | None = None) -> X509Context:
    """The SVID to use from a Workload API response: ``spiffe_id``, else the first."""
    if not reply.svids:
        raise CryptoError("the Workload API sent no SVID")
    chosen = reply.svids[0]
    if spiffe_id is not None:
        matching = [s for s in reply.svids if s.spiffe_id == spiffe_id]
        if not matching:
            raise CryptoError(f"the Workload API sent no SVID for {spiffe_id}")
        chosen = matching[0]
    chain = tuple(crypto.certs_from_der(chosen.x509_svid))
    bundle = tuple(crypto.certs_from_der(chosen.bundle))
    key = crypto.private_key_from_der(chosen.x509_svid_key)
    if crypto.uri_sans(chain[0]) != [chosen.spiffe_id]:
        raise CryptoError("the SVID's URI SAN does not match its SPIFFE ID")
    if key.public_key() != chain[0].public_key():
        raise CryptoError("the SVID's key does not match its certificate")
    return X509Context(chosen.spiffe_id, chain, key, bundle)


class SVIDSource(Protocol):
    """Anything that holds a current X.509 context and says when it changes."""

    @property
    def context(self) -> X509Context: ...

    def subscribe(self, callback: Callable[[X509Context], None]) -> None: ...

    async def start(self, timeout: float = 30.0) -> X509Context: ...

    async def close(self) -> None: ...


class X509Source:
    """Keeps the latest X.509 context; ``await start()`` returns once the first arrived."""

    def __init__(
        self,
        address: str | None = None,
        *,
        spiffe_id: str | None = None,
        max_backoff: float = 5.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        address = address or os.environ.get(ENDPOINT_ENV)
        if not address:
            raise UsageError(f"no Workload API address: pass one or set {ENDPOINT_ENV}")
        self._path = socket_path(address)
        self._spiffe_id = spiffe_id
        self._max_backoff = max_backoff
        self._context: X509Context | None = None
        self._subscribers: list[Callable[[X509Context], None]] = []
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._expiring: list[Callable[[X509Context], None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._clock = clock
        self.updates = 0

    @property
    def context(self) -> X509Context:
        if self._context is None:
            raise UnavailableError("no X.509-SVID yet")
        return self._context

    def subscribe(self, callback: Callable[[X509Context], None]) -> None:
        """``callback(context)`` after every update (and at once if one is current)."""
        self._subscribers.append(callback)
        if self._context is not None:
            callback(self._context)

    def on_expiring(self, callback: Callable[[X509Context], None]) -> None:
        """``callback(context)`` once for each SVID that reaches its
        :attr:`~X509Context.expiring_at` without being replaced (in the running loop)."""
        self._expiring.append(callback)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_expiry(), name="trustmesh-svid-expiry")

    async def start(self, timeout: float = 30.0) -> X509Context:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trustmesh-x509-source")
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
        except TimeoutError:
            raise UnavailableError(
                f"no X.509-SVID from the Workload API at {self._path} within {timeout:.0f}s"
            ) from None
        return self.context

    async def close(self) -> None:
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch = None

    async def _watch_expiry(self) -> None:
        told: int | None = None  # the serial of the SVID told about
        while True:
            context = self._context
            serial = context.chain[0].serial_number if context is not None else None
            if context is None or serial == told:  # none yet, or told: wait for a new one
                await asyncio.sleep(1.0)
                continue
            wait = (context.expiring_at - self._clock()).total_seconds()
            if wait > 0:  # looked at again then (or sooner): a renewal replaces it
                await asyncio.sleep(min(wait, 30.0))
                continue
            told = serial
            for callback in list(self._expiring):
                try:
                    callback(context)
                except Exception:  # one callback's bug must not silence the others
                    log.exception("X.509-SVID expiry callback failed")

    def _update(self, context: X509Context) -> None:
        self._context = context
        self.updates += 1
        self._first.set()
        for callback in list(self._subscribers):
            try:
                callback(context)
            except Exception:  # a subscriber's bug must not stop rotation for the others
                log.exception("X.509-SVID subscriber failed")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            channel = Channel(path=self._path)
            try:
                method = UnaryStreamMethod(
                    channel, FETCH_X509_SVID, pb.X509SVIDRequest, pb.X509SVIDResponse
                )
                async with method.open(metadata=[SECURITY_HEADER]) as stream:
                    await stream.send_message(pb.X509SVIDRequest(), end=True)
                    while (reply := await stream.recv_message()) is not None:
                        self._update(parse_response(reply, self._spiffe_id))
                        backoff = 0.1
            except asyncio.CancelledError:
                raise
            except (
                GRPCError,
                OSError,
                StreamTerminatedError,
                h2.exceptions.ProtocolError,
                CryptoError,
                ValueError,
            ) as exc:
                log.warning("Workload API stream: %s; retrying in %.1fs", exc, backoff)
            finally:
                channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)


def record_expiring(recorder: events.Recorder) -> Callable[[X509Context], None]:
    """An :meth:`X509Source.on_expiring` callback recording ``svid-expiring`` (an error:
    the process stops working at the SVID's expiry unless it is renewed by then; the
    collector's shipped rule ``svid_expiring`` raises an alert on it)."""

    def record(context: X509Context) -> None:
        log.error(
            "X.509-SVID of %s not renewed: it expires at %s",
            context.spiffe_id,
            context.not_after.isoformat(),
        )
        recorder.record(
            Activity.SVID_EXPIRING,
            "the X.509-SVID was not renewed and expires soon",
            decision=events.Decision.ERROR,
            attributes={
                "not_after": context.not_after.isoformat(),
                "serial": format(context.chain[0].serial_number, "x"),
            },
        )

    return record
