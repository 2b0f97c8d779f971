"""Which route a request takes: by host, the longest matching path prefix, and method.

Matching runs on the canonical path (:func:`trustmesh.policy.paths.canonical_path`), so
``/orders/%2e%2e/admin`` never reaches here to be mistaken for ``/admin``. A prefix
matches on segment boundaries: ``/orders`` takes ``/orders`` and ``/orders/…``, never
``/ordersX``. Routes for the request's host win over host-less routes of the same prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trustmesh.config.gateway import GatewayRoute
from trustmesh.reasons import Reason

__all__ = ["RouteDecision", "RouteTable", "request_host"]


@dataclass(frozen=True)
class RouteDecision:
    """The route taken, or why none: ``route-not-found`` (404) or
    ``method-not-allowed`` (405, with the methods the path does allow)."""

    reason: Reason
    route: GatewayRoute | None = None
    index: int = -1
    allowed_methods: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return self.route is not None


@dataclass(frozen=True)
class _Entry:
    prefix: str
    host: str | None
    index: int
    route: GatewayRoute


def _under(prefix: str, path: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def request_host(header: bytes | None) -> str | None:
    """The Host header's name, lower-cased, without a port; None if absent or odd."""
    if not header:
        return None
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):  # an IPv6 literal: [::1]:8443
        end = text.find("]")
        return text[: end + 1] if end > 0 else None
    name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    name = name.removesuffix(".")  # "shop.example." is shop.example (RFC 1034 §3.1)
    return name or None


class RouteTable:
    """Built once from the declaration; ``decide`` is a few string comparisons."""

    def __init__(self, routes: Sequence[GatewayRoute]) -> None:
        entries = [_Entry(r.path, r.host, i, r) for i, r in enumerate(routes)]
        # longest prefix first; at equal length, a host-specific route first
        entries.sort(key=lambda e: (-len(e.prefix), e.host is None, e.index))
        self._entries = tuple(entries)

    def decide(self, host: str | None, path: str, method: str) -> RouteDecision:
        """``path`` must be canonical."""
        best: _Entry | None = None
        allowed: list[str] = []
        for entry in self._entries:
            if entry.host is not None and entry.host != host:
                continue
            if not _under(entry.prefix, path):
                continue
            if best is not None and (len(entry.prefix), entry.host is None) != (
                len(best.prefix),
                best.host is None,
            ):
                break  # only routes as specific as the best one share its path
            best = best or entry
            if method in entry.route.methods:  # HEAD too only if listed: the call policy agrees
                return RouteDecision(Reason.ROUTE_MATCHED, entry.route, entry.index)
            allowed.extend(entry.route.methods)
        if best is None:
            return RouteDecision(Reason.ROUTE_NOT_FOUND)
        return RouteDecision(
            Reason.METHOD_NOT_ALLOWED, allowed_methods=tuple(dict.fromkeys(allowed))
        )
