"""Suspended SPIFFE IDs refused at a server component's mTLS listener, as a service's
middleware refuses them (:mod:`trustmesh.sdk.middleware`): a workload whose ID is
suspended (an automated response of the audit collector, or the operator) gets nothing
more from the platform — no token from the identity provider, no secret, no admin call —
while the certificate it holds is still valid.

:class:`RefuseSuspended` wraps a component's mTLS app. When the verified peer's SPIFFE
ID (the listener's TLS extension) is in the feed, it answers ``403`` in the component's
own shape, records a ``suspended-spiffe-id`` deny event through the component's recorder,
and never calls the app:

- :data:`PLATFORM` — ``{"error": "forbidden", "message"}``, the admin APIs' shape
  (:mod:`trustmesh.platform.admin`);
- :data:`OAUTH` — ``{"error": "access_denied", "error_description"}``, the shape of
  RFC 6749 §5.2, for the identity provider's OAuth endpoints;
- :data:`VAULT` — ``{"errors": [...]}``, the Vault HTTP API's.

``exempt`` names the requests served all the same (the audit collector's ingest: see
:mod:`trustmesh.audit.server`).

The feed is the SDK's (:class:`trustmesh.sdk.suspensions.SuspensionFeed`) and fails
closed as it does: while the identity service cannot be reached, the last list known
stays in force. :func:`suspension_feed` finds where it is polled
(``TRUSTMESH_DISCOVERY_URL``, set by ``trustmesh up``, else ``<state>/discovery.json``)
and runs it for the component's life.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trustmesh import events
from trustmesh.platform.endpoints import peer_url
from trustmesh.reasons import ANSWERS, Reason
from trustmesh.sdk import trace
from trustmesh.sdk.discovery import DISCOVERY_ENV
from trustmesh.sdk.serve import ASGIApp, Receive, Scope, Send, respond_json
from trustmesh.sdk.suspensions import SuspensionFeed
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import SVIDSource

__all__ = [
    "OAUTH",
    "PLATFORM",
    "VAULT",
    "Refusal",
    "RefuseSuspended",
    "discovery_url",
    "suspension_feed",
]

log = logging.getLogger("trustmesh.platform")

_WHY: Final = "the caller's SPIFFE ID is suspended"


@dataclass(frozen=True)
class Refusal:
    """How a component answers a suspended peer: a status, a JSON body, more headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


_STATUS: Final = ANSWERS[Reason.SPIFFE_ID_SUSPENDED].status
#: The admin APIs' shape (and every component's without a protocol of its own).
PLATFORM: Final = Refusal(
    _STATUS, _json({"error": ANSWERS[Reason.SPIFFE_ID_SUSPENDED].code, "message": _WHY})
)
#: RFC 6749 §5.2's error response (``Pragma: no-cache`` as §5.1 asks of token answers).
OAUTH: Final = Refusal(
    _STATUS,
    _json({"error": "access_denied", "error_description": _WHY}),
    ((b"pragma", b"no-cache"),),
)
#: The Vault HTTP API's error shape.
VAULT: Final = Refusal(_STATUS, _json({"errors": [f"permission denied: {_WHY}"]}))

#: Which refusal answers a request, by its path.
Answer = Callable[[str], Refusal]
#: Whether a request (method, path) is served even to a suspended peer.
Exempt = Callable[[str, str], bool]


def _never(_method: str, _path: str) -> bool:
    return False


class RefuseSuspended:
    """An ASGI app that refuses every request of a suspended peer before ``app`` sees it
    (``answer``: one refusal, or one per path), recording a deny event each time."""

    def __init__(
        self,
        app: ASGIApp,
        suspended: Container[str],
        recorder: events.Recorder,
        *,
        answer: Refusal | Answer = PLATFORM,
        exempt: Exempt = _never,
    ) -> None:
        self.app = app
        self.suspended = suspended
        self.recorder = recorder
        self.answer: Answer = answer if callable(answer) else lambda _path: answer
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        tls = (scope.get("extensions") or {}).get("tls") or {}
        peer = tls.get("spiffe_id")
        method = scope.get("method", "GET")
        if (
            not isinstance(peer, str)
            or peer not in self.suspended
            or self.exempt(method, scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        self._record(scope, peer, method)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        refusal = self.answer(scope["path"])
        await respond_json(send, refusal.status, refusal.body, list(refusal.headers))

    def _record(self, scope: Scope, peer: str, method: str) -> None:
        headers = scope.get("headers") or ()
        incoming = next((v for k, v in headers if k == b"traceparent"), None)
        current = trace.parse(incoming.decode("latin-1")) if incoming else None
        client = scope.get("client")
        # the raw path as sent, for forensics (never decoded)
        raw = (scope.get("raw_path") or b"").decode("latin-1")[:512] or scope["path"][:512]
        self.recorder.record(
            Reason.SPIFFE_ID_SUSPENDED,
            "peer suspended",
            decision=events.Decision.DENY,
            peer_spiffe_id=peer,
            trace_id=current.trace_id if current else None,
            src=events.Endpoint(ip=client[0], port=client[1]) if client else None,
            attributes={"method": method, "path": raw},
        )


def discovery_url(state: Path) -> str | None:
    """Where the identity service's discovery listener is: ``TRUSTMESH_DISCOVERY_URL``,
    else the ``url`` of ``<state>/discovery.json`` (None: neither says)."""
    return peer_url(state, "identity")


@contextlib.asynccontextmanager
async def suspension_feed(
    source: SVIDSource, state: Path, component: str
) -> AsyncIterator[SuspensionFeed | None]:
    """The suspensions feed, polled for as long as the block runs (a first poll before it
    starts: a suspension is in force from the first request on). None, with a warning,
    when no discovery listener is named: suspended IDs are then not refused."""
    url = discovery_url(state)
    if url is None:
        log.warning(
            "%s: no discovery URL (%s, %s): suspended SPIFFE IDs are not refused",
            component,
            DISCOVERY_ENV,
            state / "discovery.json",
        )
        yield None
        return
    feed = SuspensionFeed(RotatingTLS(source), url)
    await feed.start()
    try:
        yield feed
    finally:
        await feed.close()
