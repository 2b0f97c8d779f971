"""The SPIFFE Workload API (spiffe/standards SPIFFE_Workload_API.md) over gRPC (grpclib).

grpclib exposes each call's transport, so every call is attested from the kernel's peer
credentials of the connection that made it (grpcio does not: grpc/grpc#15511).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from grpclib import GRPCError, Status
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from trustmesh import crypto
from trustmesh._proto import workload_pb2 as pb
from trustmesh.errors import (
    AttestationError,
    InvalidTokenError,
    PermissionDeniedError,
    UsageError,
)
from trustmesh.identity.attestation import (
    ExecutableHasher,
    NotHashedYet,
    ProcessInfo,
    attest_socket,
    boot_ticks,
)
from trustmesh.identity.service import X509SVID, IdentityService
from trustmesh.reasons import Reason

log = logging.getLogger("trustmesh.identity")

#: Workload API §5.2: every request carries this header, so that a workload cannot be
#: tricked into calling the API through an HTTP proxy (SSRF).
SECURITY_HEADER = "workload.spiffe.io"
JOIN_METHOD = "/trustmesh.workload.v1.Join/RedeemJoinToken"
MAX_AUDIENCES = 16
MAX_AUDIENCE_LENGTH = 256
#: Workload API requests are small (a JWT-SVID to validate is the largest).
MAX_REQUEST_BYTES = 64 * 1024
_WARN_EVERY = 10.0
#: What a stream ended by a drain says.
SHUTTING_DOWN = "the identity service is shutting down; ask again"


async def _recv(stream: Stream[Any, Any]) -> Any:
    """The request message, read with a size limit (grpclib has none): a larger one is
    RESOURCE_EXHAUSTED before its body is read (flow control then holds the sender back),
    a malformed one INVALID_ARGUMENT — never a traceback."""
    raw = stream._stream  # grpclib's HTTP/2 stream: the prefix is read before the body
    prefix = await raw.recv_data(5)
    if len(prefix) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, "request message missing")
    if prefix[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    size = int.from_bytes(prefix[1:], "big")
    if size > MAX_REQUEST_BYTES:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request message of {size} bytes exceeds the limit of {MAX_REQUEST_BYTES}",
        )
    body = await raw.recv_data(size)
    if len(body) != size:
        raise GRPCError(Status.INVALID_ARGUMENT, "request message truncated")
    try:
        return stream._codec.decode(body, stream._recv_type)
    except DecodeError:
        raise GRPCError(Status.INVALID_ARGUMENT, "malformed request message") from None


class ChangeFeed:
    """A version number and a way to wait for it to move (entries, CA, bundles)."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, version: int, timeout: float) -> None:
        if self.version != version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=max(timeout, 0.0))


@dataclass(eq=False)
class _Admitted:
    uid: int
    accepted_at: int
    transport: Any
    idle: Callable[[], bool]


class ConnectionGuard:
    """Admits connections up to a total and a per-uid cap (a local process cannot exhaust
    the service's file descriptors), and remembers when each was accepted (boot ticks),
    for attestation on kernels that cannot pin the peer process.

    At a cap, the oldest *idle* connection (no call in progress) of that uid — or, at the
    total cap, of anyone — is closed to make room, so idle connections held open by one
    process cannot lock out the next workload; a connection with a call in progress is
    never evicted."""

    def __init__(self, max_total: int = 1024, max_per_uid: int = 256) -> None:
        self.max_total = max_total
        self.max_per_uid = max_per_uid
        self._open: dict[int, _Admitted] = {}  # id(transport) -> entry, oldest first
        self._per_uid: dict[int, int] = {}
        self.evicted = 0
        self.refused = 0

    def admit(self, transport: Any, idle: Callable[[], bool] = lambda: True) -> bool:
        sock = transport.get_extra_info("socket")
        try:
            _, uid, _ = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
        except (OSError, AttributeError):
            return False
        if self._per_uid.get(uid, 0) >= self.max_per_uid:
            if not self._evict_idle(uid):
                self.refused += 1
                return False
        elif len(self._open) >= self.max_total and not self._evict_idle(None):
            self.refused += 1
            return False
        self._open[id(transport)] = _Admitted(uid, boot_ticks(), transport, idle)
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        return True

    def _evict_idle(self, uid: int | None) -> bool:
        for entry in self._open.values():
            if (uid is None or entry.uid == uid) and entry.idle():
                self.release(entry.transport)
                entry.transport.abort()
                self.evicted += 1
                return True
        return False

    def release(self, transport: Any) -> None:
        entry = self._open.pop(id(transport), None)
        if entry is not None:
            self._per_uid[entry.uid] -= 1
            if not self._per_uid[entry.uid]:
                del self._per_uid[entry.uid]

    def accepted_at(self, transport: Any) -> int | None:
        entry = self._open.get(id(transport))
        return entry.accepted_at if entry else None

    def abort_all(self) -> None:
        """Close every connection still open (the server stops): none is left for the
        garbage collector to find unclosed."""
        for entry in list(self._open.values()):
            self.release(entry.transport)
            entry.transport.abort()


class GuardedServer(Server):
    """grpclib's server, with every connection passed through a :class:`ConnectionGuard`."""

    def __init__(self, handlers: list[Any], guard: ConnectionGuard) -> None:
        super().__init__(handlers)
        self.guard = guard
        self._last_warning = -_WARN_EVERY

    def _warn(self, message: str) -> None:
        now = time.monotonic()  # one line per interval: a flood must not flood the log
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning(
                "Workload API: %s (so far: %d refused, %d idle evicted)",
                message,
                self.guard.refused,
                self.guard.evicted,
            )

    def close(self) -> None:
        super().close()
        self.guard.abort_all()

    def stop_accepting(self) -> None:
        """No new connection from now on (the listening socket is closed); those open
        keep being served."""
        if self._server is not None:
            self._server.close()

    def in_flight(self) -> list[asyncio.Task[None]]:
        """The calls and streams running now, on every connection."""
        return [
            task
            for handler in self._handlers
            if not handler.check_closed()
            for task in handler._tasks.values()
        ]

    async def drain(self, deadline: float) -> int:
        """Stop accepting connections and wait, until ``deadline`` (monotonic), for the
        calls in flight to end (one made meanwhile on a connection still open counts
        too); the number still running then (to be cut)."""
        self.stop_accepting()
        while (running := self.in_flight()) and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        return len(running)

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        made, lost = protocol.connection_made, protocol.connection_lost
        guard = self.guard
        admitted: list[Any] = []

        def idle() -> bool:
            connection = getattr(protocol, "connection", None)
            if connection is None:
                return True
            return bool(connection._connection.open_inbound_streams == 0)

        def connection_made(transport: Any) -> None:
            evicted = guard.evicted
            if not guard.admit(transport, idle):
                self._warn("connection refused (limit reached)")
                transport.abort()
                return
            if guard.evicted != evicted:
                self._warn("idle connection closed to admit a new one (limit reached)")
            admitted.append(transport)
            made(transport)

        def connection_lost(exc: BaseException | None) -> None:
            if not admitted:  # refused at once: grpclib never saw it
                return
            guard.release(admitted[0])
            lost(exc)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol


class WorkloadAPI:
    """The gRPC service, registered under the bare name ``SpiffeWorkloadAPI``."""

    def __init__(self, service: IdentityService, feed: ChangeFeed) -> None:
        self.service = service
        self.feed = feed
        self.hasher = ExecutableHasher()
        self.guard = ConnectionGuard()
        self._bundle_cache: tuple[int, bytes] = (-1, b"")
        self._tail_cache: tuple[tuple[Any, ...], bytes] = ((), b"")
        #: Waits until the events recorded so far are durable (the audit spool): set
        #: where the service delivers to a collector.
        self.recorded: Callable[[], Awaitable[bool]] | None = None
        #: Set when the service drains: every stream ends (UNAVAILABLE: the workload
        #: keeps its SVIDs and asks the next instance), the calls begun are answered, and
        #: a call begun later is refused (UNAVAILABLE).
        self.closing = False

    def close_streams(self) -> None:
        """End every stream (:attr:`closing`), now and for any opened from here on."""
        self.closing = True
        self.feed.bump()

    async def _wait(self, version: int, timeout: float) -> None:
        """A stream's wait for the feed to move past ``version`` (at most ``timeout``
        seconds); it ends the stream instead when the service drains."""
        if not self.closing:
            await self.feed.wait(version, timeout)
        if self.closing:
            raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)

    def __mapping__(self) -> dict[str, Handler]:
        def h(
            func: Callable[[Stream[Any, Any]], Awaitable[None]],
            card: Cardinality,
            req: Any,
            rep: Any,
        ) -> Handler:
            return Handler(func, card, req, rep)

        return {
            "/SpiffeWorkloadAPI/FetchX509SVID": h(
                self.fetch_x509_svid,
                Cardinality.UNARY_STREAM,
                pb.X509SVIDRequest,
                pb.X509SVIDResponse,
            ),
            "/SpiffeWorkloadAPI/FetchX509Bundles": h(
                self.fetch_x509_bundles,
                Cardinality.UNARY_STREAM,
                pb.X509BundlesRequest,
                pb.X509BundlesResponse,
            ),
            "/SpiffeWorkloadAPI/FetchJWTSVID": h(
                self.fetch_jwt_svid, Cardinality.UNARY_UNARY, pb.JWTSVIDRequest, pb.JWTSVIDResponse
            ),
            "/SpiffeWorkloadAPI/FetchJWTBundles": h(
                self.fetch_jwt_bundles,
                Cardinality.UNARY_STREAM,
                pb.JWTBundlesRequest,
                pb.JWTBundlesResponse,
            ),
            "/SpiffeWorkloadAPI/ValidateJWTSVID": h(
                self.validate_jwt_svid,
                Cardinality.UNARY_UNARY,
                pb.ValidateJWTSVIDRequest,
                pb.ValidateJWTSVIDResponse,
            ),
            JOIN_METHOD: h(
                self.redeem_join_token,
                Cardinality.UNARY_UNARY,
                pb.RedeemJoinTokenRequest,
                pb.RedeemJoinTokenResponse,
            ),
        }

    # -- common steps ----------------------------------------------------------------------
    def _check_header(self, stream: Stream[Any, Any]) -> None:
        """Every call's first step: the service takes none once it drains (a connection
        still open may carry one), and none without the security header."""
        if self.closing:
            raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)
        if stream.metadata is None or stream.metadata.get(SECURITY_HEADER) != "true":
            self.service.emit_attestation_failure(
                Reason.MISSING_SECURITY_HEADER, "security header missing from request"
            )
            raise GRPCError(Status.INVALID_ARGUMENT, "security header missing from request")

    async def _attest(self, stream: Stream[Any, Any]) -> ProcessInfo:
        transport = stream.peer._transport
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is None:
            raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")
        accepted = self.guard.accepted_at(transport)
        try:
            try:  # a few /proc reads: inline, unless the executable must be hashed
                return attest_socket(sock, self.hasher, accepted, cached_only=True)
            except NotHashedYet:  # off the event loop: hashing reads the whole file
                return await asyncio.to_thread(attest_socket, sock, self.hasher, accepted)
        except AttestationError as exc:
            self.service.emit_attestation_failure(
                exc.reason or Reason.ATTESTATION_FAILED, exc.detail
            )
            raise GRPCError(Status.PERMISSION_DENIED, "no identity issued") from None

    async def _identities(self, stream: Stream[Any, Any]) -> tuple[ProcessInfo, list[str], Any]:
        proc = await self._attest(stream)
        try:
            ids = self.service.identities(proc)
        except AttestationError:
            raise GRPCError(Status.PERMISSION_DENIED, "no identity issued") from None
        return proc, [i.spiffe_id for i in ids], ids

    def _bundle_der(self) -> bytes:
        ca = self.service.ca
        if self._bundle_cache[0] != ca.version:
            self._bundle_cache = (ca.version, crypto.certs_to_der(ca.x509_roots))
        return self._bundle_cache[1]

    def _chain_der(self, chain: tuple[Any, ...]) -> bytes:
        """The leaf's DER and its CA chain's (the same for every SVID of a CA: cached)."""
        tail = chain[1:]
        if self._tail_cache[0] != tail:
            self._tail_cache = (tail, crypto.certs_to_der(tail))
        return crypto.cert_der(chain[0]) + self._tail_cache[1]

    # -- X.509 -----------------------------------------------------------------------------
    async def fetch_x509_svid(self, stream: Stream[Any, Any]) -> None:
        self._check_header(stream)
        await _recv(stream)
        sent_key: tuple[object, ...] | None = None
        renew_at = dt.datetime.max.replace(tzinfo=dt.UTC)
        while True:
            version = self.feed.version
            proc, _, identities = await self._identities(stream)
            key = (tuple(identities), self.service.ca.version)
            if key != sent_key or self.service.clock() >= renew_at:
                svids = [self.service.issue_x509(i, proc) for i in identities]
                await self._recorded()
                await stream.send_message(self._x509_response(svids))
                sent_key = key
                renew_at = min(s.renew_at for s in svids)
            wake = min(renew_at, self.service.next_suspension_end() or renew_at)
            timeout = (wake - self.service.clock()).total_seconds()
            await self._wait(version, timeout)

    async def _recorded(self) -> None:
        """As Vault answers no request it could not audit: an SVID goes to the workload
        only once its issuance is in the audit spool (a crash right after the answer
        loses no record of it); a spool that cannot take it refuses the SVID."""
        if self.recorded is not None and not await self.recorded():
            raise GRPCError(Status.UNAVAILABLE, "the issuance could not be recorded")

    def _x509_response(self, svids: list[X509SVID]) -> pb.X509SVIDResponse:
        bundle = self._bundle_der()
        return pb.X509SVIDResponse(
            svids=[
                pb.X509SVID(
                    spiffe_id=s.spiffe_id,
                    x509_svid=self._chain_der(s.chain),
                    x509_svid_key=crypto.private_key_to_der(s.key),
                    bundle=bundle,
                )
                for s in svids
            ]
        )

    async def fetch_x509_bundles(self, stream: Stream[Any, Any]) -> None:
        self._check_header(stream)
        await _recv(stream)
        sent: int | None = None
        while True:
            version = self.feed.version
            await self._identities(stream)
            if sent != self.service.ca.version:
                td = self.service.settings.trust_domain
                await stream.send_message(pb.X509BundlesResponse(bundles={td: self._bundle_der()}))
                sent = self.service.ca.version
            await self._wait(version, 3600)

    # -- JWT -------------------------------------------------------------------------------
    async def fetch_jwt_svid(self, stream: Stream[Any, Any]) -> None:
        self._check_header(stream)
        request = await _recv(stream)
        if request is None or not request.audience:
            raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
        if len(request.audience) > MAX_AUDIENCES or any(
            not a or len(a) > MAX_AUDIENCE_LENGTH for a in request.audience
        ):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"at most {MAX_AUDIENCES} audiences of 1 to {MAX_AUDIENCE_LENGTH} characters",
            )
        _, ids, _ = await self._identities(stream)
        if request.spiffe_id:
            if request.spiffe_id not in ids:
                self.service.emit_attestation_failure(
                    Reason.IDENTITY_NOT_HELD,
                    "JWT-SVID asked for an identity the workload does not hold",
                )
                raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")
            ids = [request.spiffe_id]
        try:
            svids = [
                pb.JWTSVID(spiffe_id=sid, svid=self.service.issue_jwt(sid, list(request.audience)))
                for sid in ids
            ]
        except UsageError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, exc.detail) from None
        await self._recorded()
        await stream.send_message(pb.JWTSVIDResponse(svids=svids))

    async def fetch_jwt_bundles(self, stream: Stream[Any, Any]) -> None:
        self._check_header(stream)
        await _recv(stream)
        sent: int | None = None
        while True:
            version = self.feed.version
            await self._identities(stream)
            if sent != self.service.ca.version:
                td = self.service.settings.trust_domain
                jwks = crypto.jwks_document(self.service.ca.jwt_public_keys)
                await stream.send_message(pb.JWTBundlesResponse(bundles={td: jwks}))
                sent = self.service.ca.version
            await self._wait(version, 3600)

    async def validate_jwt_svid(self, stream: Stream[Any, Any]) -> None:
        self._check_header(stream)
        request = await _recv(stream)
        if request is None or not request.audience:
            raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            raise GRPCError(Status.INVALID_ARGUMENT, "svid must be specified")
        await self._identities(stream)
        try:
            sub, claims = self.service.validate_jwt(request.svid, request.audience)
        except (InvalidTokenError, UsageError):
            raise GRPCError(Status.INVALID_ARGUMENT, "invalid JWT-SVID") from None
        struct = struct_pb2.Struct()
        struct.update(claims)
        await stream.send_message(pb.ValidateJWTSVIDResponse(spiffe_id=sub, claims=struct))

    # -- trustmesh: join tokens ------------------------------------------------------------
    async def redeem_join_token(self, stream: Stream[Any, Any]) -> None:
        self._check_header(stream)
        request = await _recv(stream)
        if request is None or not request.token:
            raise GRPCError(Status.INVALID_ARGUMENT, "token must be specified")
        proc = await self._attest(stream)
        try:
            spiffe_id = self.service.redeem_join_token(request.token, proc)
        except PermissionDeniedError:
            raise GRPCError(Status.PERMISSION_DENIED, "invalid join token") from None
        self.feed.bump()
        await stream.send_message(pb.RedeemJoinTokenResponse(spiffe_id=spiffe_id))
