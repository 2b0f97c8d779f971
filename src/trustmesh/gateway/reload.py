"""Reloading the gateway's declaration while it serves (``SIGHUP``, or
``trustmesh gateway reload``): a new request pipeline is built off the request path from
the new ``gateway:`` section — routes, edge policies, contracts, injection filters,
control modes, address rules, rate-limit rules — and swapped in at once
(:class:`Pipeline`). A request already inside the old pipeline finishes there; every
request after the swap meets the new one; none is dropped.

A declaration that does not load, or whose parts do not compile (a policy, an OpenAPI
document), is refused and the running one stays, as is one that changes what only a
restart can apply (:func:`restart_only`): the listeners (ports, certificate, connection
limits, metrics port), the rate-limit store, the trusted external issuers, the upstream
settings, and a route needing a part the running gateway did not start (API keys,
introspection, rate limiting, the identity provider's tokens where none was needed).
"""

from __future__ import annotations

from typing import Any, Final

from trustmesh.config.gateway import GatewayConfig
from trustmesh.platform.listeners import Receive, Scope, Send

__all__ = ["RESTART_ONLY", "Pipeline", "restart_only"]

#: The ``gateway:`` keys only a restart applies.
RESTART_ONLY: Final = (
    "engine",
    "nginx",
    "ext_authz",
    "port",
    "internal_port",
    "tls_cert",
    "tls_key",
    "limits",
    "metrics_port",
    "redis",
    "issuers",
    "upstream",
)


class Pipeline:
    """The ASGI app the public listener serves: the current request pipeline, swapped
    whole by assigning :attr:`app` (one reference: a request reads it once)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _needs(gateway: GatewayConfig) -> dict[str, bool]:
    routes = gateway.routes
    return {
        "API keys (a route with auth api_key)": any("api_key" in r.auth for r in routes),
        "introspection (a route with auth introspection)": any(
            "introspection" in r.auth for r in routes
        ),
        "rate limiting (rate_limits)": bool(gateway.rate_limits)
        or any(r.rate_limits for r in routes),
    }


def restart_only(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """What ``new`` changes that a reload cannot apply (empty: it can)."""
    problems = [
        f"gateway.{key} changed"
        for key in RESTART_ONLY
        if getattr(running, key) != getattr(new, key)
    ]
    had = _needs(running)
    problems += [
        f"{part} is needed and the running gateway did not start it"
        for part, needed in _needs(new).items()
        if needed and not had[part]
    ]
    return problems
