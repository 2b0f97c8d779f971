"""The discovery API, served over mTLS by the identity service (``sdk.serve``).

``PUT /v1/instances`` {"url"} registers or renews the caller's own instance;
``DELETE /v1/instances`` {"url"} removes it; ``GET /v1/services/{name}`` lists the
endpoints of a service the caller may call. The caller is always the verified peer SVID.
A suspended caller (``suspended``) is refused ``403`` (``suspended-spiffe-id``), and a
suspended instance is found by no one.

``GET /v1/suspensions`` (:class:`SuspensionFeed`): the SPIFFE IDs suspended now, for any
workload of the trust domain, so that services refuse them
(:mod:`trustmesh.sdk.suspensions` polls it). Its ``ETag`` is the version of the list:
with ``If-None-Match`` (or ``?since=<version>``) naming the current one, the answer is
``304`` and no body, so polling every few seconds costs next to nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.errors import PermissionDeniedError, TrustmeshError, UsageError
from trustmesh.identity.discovery import Registry
from trustmesh.identity.service import Clock
from trustmesh.identity.store import IdentityStore
from trustmesh.identity.suspensions import feed_doc
from trustmesh.reasons import Code, Reason

MAX_BODY = 4096


def _error(exc: TrustmeshError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def discovery_app(
    registry: Registry,
    sink: events.EventSink,
    clock: Clock,
    extra: list[Route] | None = None,
    *,
    suspended: Callable[[str], object] = lambda _: None,
) -> Starlette:
    """Discovery, and ``extra`` routes on the same listener (the admin API).
    ``suspended``: whether a SPIFFE ID is suspended now (truthy: it is)."""
    routes = DiscoveryRoutes(registry, sink, clock, suspended=suspended).routes()
    return Starlette(routes=[*routes, *(extra or ())])


class DiscoveryRoutes:
    """The discovery API over ``registry``: the caller is always the verified peer SVID;
    a refusal, and a lookup, is an event."""

    def __init__(
        self,
        registry: Registry,
        sink: events.EventSink,
        clock: Clock,
        *,
        suspended: Callable[[str], object] = lambda _: None,
    ) -> None:
        self.registry, self.clock, self.suspended = registry, clock, suspended
        self.recorder = events.Recorder(sink, component="identity", clock=clock)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/instances", self.put_instance, methods=["PUT"]),
            Route("/v1/instances", self.delete_instance, methods=["DELETE"]),
            Route("/v1/services/{name}", self.get_service, methods=["GET"]),
        ]

    def _refused(self, peer: str, action: str) -> JSONResponse | None:
        """A suspended caller's answer (and event); None for anyone else."""
        if not self.suspended(peer):
            return None
        refused = Reason.SPIFFE_ID_SUSPENDED
        self._record(events.Decision.DENY, refused, f"{action} refused", peer)
        error = PermissionDeniedError("the caller's SPIFFE ID is suspended", reason=refused)
        return JSONResponse(
            {"error": error.code, "message": error.detail}, status_code=error.status
        )

    async def put_instance(self, request: Request) -> JSONResponse:
        peer = _caller(request)
        if (refusal := self._refused(peer, "registration")) is not None:
            return refusal
        try:
            url, expires = await _body_of(request)
            instance = self.registry.register(peer, url, self.clock(), expires)
        except TrustmeshError as exc:
            self._record(events.Decision.DENY, Reason.DISCOVERY_REFUSED, exc.detail, peer)
            return _error(exc)
        return JSONResponse(
            {"service": instance.service, "expires_at": instance.expires_at.isoformat()}
        )

    async def delete_instance(self, request: Request) -> JSONResponse:
        peer = _caller(request)
        try:
            removed = self.registry.deregister(peer, (await _body_of(request))[0])
        except TrustmeshError as exc:
            return _error(exc)
        return JSONResponse({"removed": removed})

    async def get_service(self, request: Request) -> JSONResponse:
        peer = _caller(request)
        name = request.path_params["name"]
        if (refusal := self._refused(peer, "lookup")) is not None:
            return refusal
        try:
            found = self.registry.lookup(peer, name, self.clock())
        except TrustmeshError as exc:
            refused = Reason.DISCOVERY_REFUSED
            self._record(events.Decision.DENY, refused, "lookup refused", peer, service=name[:64])
            return _error(exc)
        self._record(events.Decision.ALLOW, Reason.DISCOVERY_LOOKUP, "lookup", peer, service=name)
        return JSONResponse(
            {
                "service": name,
                "endpoints": [
                    {"url": i.url, "spiffe_id": i.spiffe_id}
                    for i in found
                    if not self.suspended(i.spiffe_id)
                ],
            }
        )

    def _record(
        self, decision: events.Decision, reason: Code, message: str, peer: str, **attrs: Any
    ) -> None:
        self.recorder.record(
            reason, message, decision=decision, peer_spiffe_id=peer, attributes=attrs
        )


class SuspensionFeed:
    """``GET /v1/suspensions`` over ``store``: which SPIFFE IDs are suspended, until when
    (never why, nor who). A poll is not an event: it decides nothing, and every service
    makes one every few seconds."""

    def __init__(self, store: IdentityStore, clock: Clock) -> None:
        self.store, self.clock = store, clock

    def routes(self) -> list[Route]:
        return [Route("/v1/suspensions", self.get, methods=["GET"])]

    async def get(self, request: Request) -> Response:
        version = self.store.suspensions_version()
        etag = f'"{version}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        since = request.query_params.get("since")
        if request.headers.get("if-none-match") == etag or since == str(version):
            return Response(status_code=304, headers=headers)
        now = int(self.clock().timestamp() * 1000)
        return JSONResponse(feed_doc(version, self.store.suspensions(now)), headers=headers)


def _caller(request: Request) -> str:
    return str(request.scope["extensions"]["tls"]["spiffe_id"])


async def _body_of(request: Request) -> tuple[str, str | None]:
    """The instance's URL, and when its certificate expires (if said)."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise UsageError("body too large")
    try:
        doc = json.loads(body)
    except ValueError:
        raise UsageError("body must be JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str):
        raise UsageError('body must be {"url": "https://host:port"}')
    expires = doc.get("cert_expires")
    if expires is not None:
        try:
            expires = dt.datetime.fromisoformat(str(expires)).isoformat()
        except ValueError:
            raise UsageError("cert_expires must be an ISO 8601 time") from None
    return str(doc["url"]), expires
