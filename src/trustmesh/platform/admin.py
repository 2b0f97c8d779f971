"""What the admin APIs (the identity provider's, the identity service's, the gateway's)
do alike: who is asking — the operator's SVID, or an admin user — how a request body is
read, and how a refusal is answered."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trustmesh import events
from trustmesh.errors import TrustmeshError, UnavailableError, UsageError
from trustmesh.reasons import Reason
from trustmesh.store import unreachable

log = logging.getLogger("trustmesh.platform")

__all__ = [
    "OPERATOR",
    "RESPONDER",
    "Actor",
    "Refused",
    "failure_response",
    "guarded",
    "json_object",
    "named_by",
    "operator_only",
    "operator_or_responder",
    "peer_spiffe_id",
    "read_body",
    "record_read",
]

#: How events name the operator (an admin user is ``user:<name>``).
OPERATOR = "operator"
#: The audit collector, as an admin request's record names it when it takes a response.
RESPONDER = "audit"

Body = TypeVar("Body", bound=BaseModel)
#: Who is asking (an :class:`Actor`), or :class:`Refused`.
Authenticate = Callable[[Request], Awaitable["Actor"]]
#: What an admin endpoint does for ``Actor``; a :class:`TrustmeshError` is its failure.
Handler = Callable[[Request, "Actor"], Awaitable[Response]]


@dataclass(frozen=True)
class Actor:
    """Who made an admin request: the peer's SPIFFE ID, and a name for the record."""

    peer_spiffe_id: str | None
    name: str = OPERATOR

    @classmethod
    def user(cls, peer_spiffe_id: str | None, username: str) -> Actor:
        return cls(peer_spiffe_id, f"user:{username}")


class Refused(Exception):
    """An admin request refused: ``status`` and ``error`` go out, ``why`` goes out and
    into the event, ``sub`` (the user, when known) into the event only."""

    def __init__(self, status: int, error: str, why: str, sub: str | None = None) -> None:
        super().__init__(why)
        self.status, self.error, self.why, self.sub = status, error, why, sub

    def response(self) -> JSONResponse:
        headers = (
            {"WWW-Authenticate": 'Bearer error="invalid_token"'} if self.status == 401 else None
        )
        return JSONResponse(
            {"error": self.error, "message": self.why}, status_code=self.status, headers=headers
        )


def failure_response(exc: TrustmeshError) -> JSONResponse:
    """An admin action that failed on its input or its target: the error's own code and
    status (400 invalid_request, 404 not_found, 409 conflict…) and what was wrong."""
    return JSONResponse({"error": exc.code, "message": exc.detail}, status_code=exc.status)


def named_by(
    actor: Actor | None, attributes: dict[str, events.AttributeValue]
) -> tuple[str | None, dict[str, events.AttributeValue]]:
    """Who asked for a change, as its event names them: the peer's SPIFFE ID, and ``by``
    after the change's own ``attributes`` (``actor`` None: the component itself)."""
    if actor is None:
        return None, attributes
    return actor.peer_spiffe_id, {**attributes, "by": actor.name}


#: An allowed read's shape (a refusal's is the code's own: API Activity, Other).
_READ: events.Shape = (events.EventClass.API_ACTIVITY, 2, "Read")


def record_read(recorder: events.Recorder, action: str, actor: Actor) -> None:
    """An allowed read is an event (a change records its own: created, removed…)."""
    attributes = {"action": action, "by": actor.name}
    peer = actor.peer_spiffe_id
    recorder.record(
        Reason.ADMIN_READ,
        f"admin {action}",
        shape=_READ,
        peer_spiffe_id=peer,
        attributes=attributes,
    )


def guarded(
    action: str,
    authenticate: Authenticate,
    handler: Handler,
    recorder: events.Recorder,
) -> Callable[[Request], Awaitable[Response]]:
    """An admin endpoint: who asks first (refused: its answer, and an ``admin-denied``
    event), then ``handler`` (a :class:`TrustmeshError` it raises is answered with
    :func:`failure_response`; a database that cannot be reached now,
    :func:`trustmesh.store.unreachable`, with a 503, never a 500)."""

    async def endpoint(request: Request) -> Response:
        try:
            actor = await authenticate(request)
        except Refused as refused:
            recorder.record(
                Reason.ADMIN_DENIED,
                f"admin {action} refused: {refused.why}",
                peer_spiffe_id=peer_spiffe_id(request),
                sub=refused.sub,
                attributes={"action": action},
            )
            return refused.response()
        try:
            return await handler(request, actor)
        except TrustmeshError as exc:
            return failure_response(exc)
        except Exception as exc:
            if not unreachable(exc):
                raise
            log.warning("admin %s: the database is unreachable (%r)", action, exc)
            return failure_response(UnavailableError("the store cannot be reached now"))

    return endpoint


def peer_spiffe_id(request: Request) -> str | None:
    """The SPIFFE ID of the verified peer certificate (set by the mTLS listener)."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    peer = tls.get("spiffe_id")
    return peer if isinstance(peer, str) else None


def operator_or_responder(request: Request, operator: str, responder: str) -> Actor:
    """The operator, or the audit collector taking an automated response (``responder``:
    ``spiffe://<td>/trustmesh/audit``, named ``audit`` in the record); anyone else is
    :class:`Refused` (403). Only the few endpoints a response calls use this."""
    peer = peer_spiffe_id(request)
    if peer == responder:
        return Actor(peer, RESPONDER)
    return operator_only(request, operator)


def operator_only(request: Request, operator: str) -> Actor:
    """The operator (``operator``: ``spiffe://<td>/trustmesh/operator``), named by the
    peer's verified SVID; anyone else is :class:`Refused` (403)."""
    peer = peer_spiffe_id(request)
    if peer != operator:
        raise Refused(403, "forbidden", "only the operator may use this API")
    return Actor(peer)


def json_object(raw: bytes, limit: int, *, empty: bool = False) -> dict[str, Any]:
    """An admin request's body: a JSON object of at most ``limit`` bytes (``empty``: no
    body at all is ``{}``). :class:`UsageError` (400) says what was wrong."""
    if len(raw) > limit:
        raise UsageError(f"the body must be at most {limit} bytes")
    if empty and not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise UsageError("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise UsageError("the body must be a JSON object")
    return doc


async def read_body(request: Request, model: type[Body], limit: int) -> Body:
    """The JSON body as ``model`` (strict: a model with ``extra="forbid"`` refuses an
    unknown field); an empty body is ``{}``. :class:`UsageError` (400) says what was wrong
    and never repeats a value."""
    doc = json_object(await request.body(), limit, empty=True)
    try:
        return model.model_validate(doc, strict=True)
    except ValidationError as exc:
        raise UsageError(_first_problem(exc)) from None


def _first_problem(exc: ValidationError) -> str:
    problem = exc.errors(include_input=False)[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    if problem["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"{where}: {problem['msg']}"
