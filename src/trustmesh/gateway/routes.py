"""Which route a request takes: by host, the longest matching path prefix, the route's
operations (its path templates) and method.

Matching runs on the canonical path (:func:`trustmesh.policy.paths.canonical_path`), so
``/orders/%2e%2e/admin`` never reaches here to be mistaken for ``/admin``. A prefix
matches on segment boundaries: ``/orders`` takes ``/orders`` and ``/orders/…``, never
``/ordersX``. Routes for the request's host win over host-less routes of the same prefix.
Within the prefix, the path must then be one of the route's operations, matched exactly
(:class:`~trustmesh.policy.routes.Operations`): a route that lists none serves every
path under its prefix. A trailing ``/`` no template declares is not the path's canonical
form (``path-non-canonical``, 400): ``/orders/1/refund/`` is never ``/orders/1/refund``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trustmesh.config.gateway import GatewayRoute
from trustmesh.policy.routes import Operations
from trustmesh.reasons import Reason

__all__ = ["RouteDecision", "RouteTable", "request_host"]


@dataclass(frozen=True)
class RouteDecision:
    """The route taken, with the template the path matched and its placeholders' values,
    or why none: ``route-not-found`` (404), ``method-not-allowed`` (405, with the methods
    the path does allow) or ``path-non-canonical`` (400: a trailing slash)."""

    reason: Reason
    route: GatewayRoute | None = None
    index: int = -1
    allowed_methods: tuple[str, ...] = ()
    template: str = ""
    params: tuple[tuple[str, str], ...] = ()

    @property
    def found(self) -> bool:
        return self.route is not None


@dataclass(frozen=True)
class _Entry:
    prefix: str
    host: str | None
    index: int
    route: GatewayRoute
    operations: Operations


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
        entries = [
            _Entry(r.path, r.host, i, r, Operations(r.operations())) for i, r in enumerate(routes)
        ]
        # longest prefix first; at equal length, a host-specific route first
        entries.sort(key=lambda e: (-len(e.prefix), e.host is None, e.index))
        self._entries = tuple(entries)

    def decide(self, host: str | None, path: str, method: str) -> RouteDecision:
        """``path`` must be canonical."""
        best: _Entry | None = None
        allowed: list[str] = []
        refused = Reason.ROUTE_NOT_FOUND
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
            # HEAD too only if listed: the call policy agrees
            found = entry.operations.match(method, path)
            if found.reason == Reason.ROUTE_MATCHED:
                return RouteDecision(
                    Reason.ROUTE_MATCHED,
                    entry.route,
                    entry.index,
                    template=found.template,
                    params=found.params,
                )
            allowed.extend(found.allowed_methods)
            if found.reason == Reason.PATH_NON_CANONICAL:
                refused = found.reason
        if allowed:
            return RouteDecision(
                Reason.METHOD_NOT_ALLOWED, allowed_methods=tuple(dict.fromkeys(allowed))
            )
        return RouteDecision(refused)
