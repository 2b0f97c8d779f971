"""Who may hold a connection open at a public listener, and the tally of who was refused.

:class:`ConnectionGuard` admits a connection (before its TLS handshake: a refused one
costs no cryptography) up to a total cap and a per-address cap; at a cap it closes the
oldest *idle* keep-alive connection of that address (or, at the total cap, of anyone)
to make room, so connections parked by one client cannot lock out the next, and refuses
only when none is idle. Every refusal — at a cap, a handshake that fails or takes too
long, a request head too large or too slow — is counted; :meth:`ConnectionGuard.drain`
hands the counts of the last interval over, one summary per reason with the addresses
that caused most of them, so a flood becomes a few events, not one per connection.

Pure bookkeeping: no sockets, no timers (the protocol in :mod:`trustmesh.platform.protocol`
holds those)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from trustmesh.config.listener import ListenerLimits
from trustmesh.policy.addresses import address_bucket
from trustmesh.reasons import LISTENER_REFUSALS, Reason

__all__ = [
    "LISTENER_REFUSALS",
    "ConnectionGuard",
    "ConnectionLimits",
    "Guarded",
    "RefusalSummary",
]

_DEFAULTS: Final = ListenerLimits()
_TOP_ADDRESSES = 5
_MAX_TRACKED_ADDRESSES = 10_000


@dataclass(frozen=True)
class ConnectionLimits:
    """:class:`~trustmesh.config.listener.ListenerLimits` in seconds (fractions allowed,
    for tests); see there for what each bound means."""

    max_connections: int = _DEFAULTS.max_connections
    max_connections_per_address: int = _DEFAULTS.max_connections_per_address
    handshake_timeout: float = _DEFAULTS.handshake_timeout.total_seconds()
    header_timeout: float = _DEFAULTS.header_timeout.total_seconds()
    keepalive_timeout: float = _DEFAULTS.keepalive_timeout.total_seconds()
    body_timeout: float = _DEFAULTS.body_timeout.total_seconds()
    body_min_rate: int = _DEFAULTS.body_min_rate
    max_header_bytes: int = _DEFAULTS.max_header_bytes
    max_header_line_bytes: int = _DEFAULTS.max_header_line_bytes
    max_headers: int = _DEFAULTS.max_headers

    @classmethod
    def of(cls, settings: ListenerLimits) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
            handshake_timeout=settings.handshake_timeout.total_seconds(),
            header_timeout=settings.header_timeout.total_seconds(),
            keepalive_timeout=settings.keepalive_timeout.total_seconds(),
            body_timeout=settings.body_timeout.total_seconds(),
            body_min_rate=settings.body_min_rate,
            max_header_bytes=settings.max_header_bytes,
            max_header_line_bytes=settings.max_header_line_bytes,
            max_headers=settings.max_headers,
        )


class Guarded(Protocol):
    """A connection as the guard sees it."""

    @property
    def address(self) -> str: ...

    def idle(self) -> bool:
        """Between requests, with nothing of the next one received yet."""
        ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class RefusalSummary:
    """Refusals for one reason during one interval."""

    reason: Reason
    count: int
    top_addresses: tuple[tuple[str, int], ...]

    def attributes(self) -> dict[str, str | int]:
        """The summary as an event's attributes."""
        addresses = ", ".join(f"{address} ×{n}" for address, n in self.top_addresses)
        return {"count": self.count, "addresses": addresses}


@dataclass
class _Tally:
    count: int = 0
    addresses: Counter[str] = field(default_factory=Counter)


class ConnectionGuard:
    """Admission and refusal accounting for one listener's connections."""

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        exempt: Callable[[str], bool] = lambda _address: False,
        on_refused: Callable[[Reason], None] | None = None,
    ) -> None:
        self.limits = limits
        self._exempt = exempt
        self._on_refused = on_refused
        self._open: dict[int, tuple[str, Guarded]] = {}  # id -> (bucket, conn); oldest first
        self._by_bucket: dict[str, dict[int, Guarded]] = {}  # the same, per bucket
        self.refused: Counter[Reason] = Counter()  # since the start
        self.evicted = 0
        self._window: dict[Reason, _Tally] = {}

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, conn: Guarded) -> Reason | None:
        """Admit ``conn`` (None), or say why not (it is then counted as refused)."""
        bucket = address_bucket(conn.address)
        limits = self.limits
        capped = not self._exempt(conn.address)
        held = self._by_bucket.get(bucket, {})
        if capped and len(held) >= limits.max_connections_per_address:
            if not self._evict_idle(held):
                self.refuse(Reason.CONNECTION_LIMIT_ADDRESS, conn.address)
                return Reason.CONNECTION_LIMIT_ADDRESS
        elif len(self._open) >= limits.max_connections and not self._evict_idle(None):
            self.refuse(Reason.CONNECTION_LIMIT, conn.address)
            return Reason.CONNECTION_LIMIT
        self._open[id(conn)] = (bucket, conn)
        self._by_bucket.setdefault(bucket, {})[id(conn)] = conn
        return None

    def release(self, conn: Guarded) -> None:
        """``conn`` closed (a connection never admitted, or released before, is ignored)."""
        entry = self._open.pop(id(conn), None)
        if entry is not None:
            held = self._by_bucket[entry[0]]
            del held[id(conn)]
            if not held:
                del self._by_bucket[entry[0]]

    def refuse(self, reason: Reason, address: str) -> None:
        """Count one refusal (the caller closes the connection)."""
        self.refused[reason] += 1
        tally = self._window.setdefault(reason, _Tally())
        tally.count += 1
        if address in tally.addresses or len(tally.addresses) < _MAX_TRACKED_ADDRESSES:
            tally.addresses[address] += 1
        if self._on_refused is not None:
            self._on_refused(reason)

    def drain(self) -> list[RefusalSummary]:
        """The refusals since the last drain, one summary per reason; the window restarts."""
        window, self._window = self._window, {}
        return [
            RefusalSummary(reason, tally.count, tuple(tally.addresses.most_common(_TOP_ADDRESSES)))
            for reason, tally in sorted(window.items())
        ]

    def close_all(self) -> None:
        """Abort every connection still open (the listener is stopping)."""
        for _, conn in list(self._open.values()):
            conn.abort()
        self._open.clear()
        self._by_bucket.clear()

    def _evict_idle(self, among: dict[int, Guarded] | None) -> bool:
        """Close the oldest idle connection ``among`` one address's (None: anyone's)."""
        candidates = among.values() if among is not None else (c for _, c in self._open.values())
        for conn in candidates:
            if conn.idle():
                self.release(conn)
                conn.abort()
                self.evicted += 1
                return True
        return False
