"""The gateway's admin API: its API keys, for the operator alone, on the gateway's mTLS
listener (the one services fetch its JWKS from; ``admin_url`` in its endpoint file).

- ``GET /admin/v1/api-keys``: every key (never a secret or a digest);
- ``POST /admin/v1/api-keys`` {"name", "scopes", "roles"?, "expires_in"? (seconds)}:
  ``201``, the key (shown once, ``Cache-Control: no-store``), and the routes among its
  scopes that do not accept API keys (the key is useless there until they do);
- ``POST /admin/v1/api-keys/{id}/revoke`` {}: the key, and whether this call revoked
  it (revoking twice changes nothing);
- ``POST /admin/v1/api-keys/{id}/rotate`` {"grace"? (seconds, 0 to 7 days)}: the new
  key (shown once); the old one is refused after the grace period.

Only the operator may call it: the SPIFFE ID ``spiffe://<td>/trustmesh/operator`` in the
verified peer certificate (:func:`trustmesh.platform.admin.operator_only`). Anyone else
gets ``403``. Bodies are strict (an unknown field or a wrong type is ``400`` and changes
nothing); a key that does not exist is ``404``, one that cannot be rotated ``409``.
Every request is an event: a refusal (``admin-denied``), a read (``admin-read``), a
change (``api-key-created``, ``api-key-rotated``, ``api-key-revoked``, naming the
operator). What :mod:`trustmesh.gateway.keystore` decides is decided there.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.gateway.apikeys import IssuedKey, KeyRecord, principal_of, routes_without_api_keys
from trustmesh.gateway.keystore import KeyStore, add_key, revoke_key, rotate_key
from trustmesh.platform.admin import (
    Actor,
    Handler,
    guarded,
    operator_only,
    read_body,
    record_read,
)

__all__ = ["MAX_BODY", "KeyAdmin", "key_doc"]

MAX_BODY = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store"}


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    scopes: list[str]
    roles: list[str] = []
    expires_in: int | None = Field(default=None, gt=0, description="Seconds.")


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    grace: int = Field(default=0, description="Seconds the old key stays valid.")


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _time(epoch: int | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None


def key_doc(record: KeyRecord, now: float) -> dict[str, Any]:
    """What may be shown of a key: never its secret or a digest."""
    return {
        "id": record.key_id,
        "name": record.name,
        "principal": principal_of(record.key_id),
        "scopes": list(record.scopes),
        "roles": list(record.roles),
        "status": record.status(now),
        "created_at": _time(record.created_at),
        "expires_at": _time(record.expires_at),
        "revoked_at": _time(record.revoked_at),
        "rotated_at": _time(record.rotated_at),
        "previous_valid_until": _time(record.previous_until)
        if record.previous_until is not None and now < record.previous_until
        else None,
    }


class KeyAdmin:
    """The API over ``store``; ``changed()`` after every change (the gateway's verifier
    reloads at its next decision)."""

    def __init__(
        self,
        config: TrustmeshConfig,
        store: KeyStore,
        sink: events.EventSink,
        *,
        changed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.sink = sink
        self.recorder = events.Recorder(sink, component="gateway")
        self.changed = changed
        self.clock = clock
        self.operator = config.component_spiffe_id("operator")

    def routes(self) -> list[Route]:
        base = "/admin/v1/api-keys"
        return [
            Route(base, self._guarded("list-api-keys", self.list_keys), methods=["GET"]),
            Route(base, self._guarded("add-api-key", self.add), methods=["POST"]),
            Route(
                base + "/{key_id}/revoke",
                self._guarded("revoke-api-key", self.revoke),
                methods=["POST"],
            ),
            Route(
                base + "/{key_id}/rotate",
                self._guarded("rotate-api-key", self.rotate),
                methods=["POST"],
            ),
        ]

    def _guarded(self, action: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return guarded(action, self._operator, handler, self.recorder)

    async def _operator(self, request: Request) -> Actor:
        return operator_only(request, self.operator)

    async def list_keys(self, _: Request, actor: Actor) -> Response:
        now = self.clock()
        records = await self.store.all()
        record_read(self.recorder, "list-api-keys", actor)
        return JSONResponse([key_doc(r, now) for r in records])

    def _issued(self, issued: IssuedKey, now: float, status: int, **extra: Any) -> JSONResponse:
        """A key made or rotated: shown this once (never cached on the way)."""
        self.changed()
        doc = {**key_doc(issued.record, now), "key": issued.key, **extra}
        return JSONResponse(doc, status_code=status, headers=_NO_STORE)

    async def add(self, request: Request, actor: Actor) -> Response:
        body = await read_body(request, NewKey, MAX_BODY)
        now = self.clock()
        issued = await add_key(
            self.store,
            self.config,
            name=body.name,
            scopes=body.scopes,
            roles=body.roles,
            expires_in=timedelta(seconds=body.expires_in) if body.expires_in else None,
            now=now,
            sink=self.sink,
            actor=actor,
        )
        routes = self.config.gateway.routes if self.config.gateway is not None else []
        unusable = routes_without_api_keys(issued.record.scopes, routes)
        return self._issued(issued, now, 201, routes_without_api_keys=unusable)

    async def revoke(self, request: Request, actor: Actor) -> Response:
        await read_body(request, Revocation, MAX_BODY)
        now = self.clock()
        record, newly = await revoke_key(
            self.store, request.path_params["key_id"], now=now, sink=self.sink, actor=actor
        )
        self.changed()
        return JSONResponse({**key_doc(record, now), "revoked_now": newly})

    async def rotate(self, request: Request, actor: Actor) -> Response:
        body = await read_body(request, Rotation, MAX_BODY)
        now = self.clock()
        issued = await rotate_key(
            self.store,
            request.path_params["key_id"],
            grace=timedelta(seconds=body.grace),
            now=now,
            sink=self.sink,
            actor=actor,
        )
        return self._issued(issued, now, 200)
