"""Reloading the gateway's declaration while it serves (``SIGHUP``, or
``trustmesh gateway reload``): a new request pipeline is built off the request path from
the new ``gateway:`` section — routes, edge policies, contracts, injection filters,
control modes, address rules, rate-limit rules — and swapped in at once
(:class:`Pipeline`). A request already inside the old pipeline finishes there; every
request after the swap meets the new one; none is dropped.

A declaration that does not load, or whose parts do not compile (a policy, an OpenAPI
document), is refused and the running one stays, as is one that changes what only a
restart can apply (:func:`~trustmesh.config.reloadable.restart_only`): the listeners (ports, certificate, connection
limits, metrics port), the rate-limit store, the trusted external issuers, the upstream
settings, and a route needing a part the running gateway did not start (API keys,
introspection, rate limiting, the identity provider's tokens where none was needed).
"""

from __future__ import annotations

from typing import Any

from trustmesh.config.reloadable import RESTART_ONLY, restart_only
from trustmesh.platform.listeners import Receive, Scope, Send

__all__ = ["RESTART_ONLY", "Pipeline", "restart_only"]


class Pipeline:
    """The ASGI app the public listener serves: the current request pipeline, swapped
    whole by assigning :attr:`app` (one reference: a request reads it once)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
