"""One request as the gateway's stages see it (:class:`Exchange`), what a stage may
decide (:class:`Refusal`, :class:`Reply`), and how the gateway answers: a refusal in its
own shape (``{"error", "message"}``, the status and code of its reason in
:data:`trustmesh.reasons.ANSWERS`, the security headers), an upstream's answer relayed
(its headers through :func:`~trustmesh.gateway.headers.response_headers`) or its error
in the gateway's shape (only the headers that tell the client what to do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trustmesh import events
from trustmesh.config.gateway import GatewayRoute
from trustmesh.gateway.answers import error_code, error_headers, error_message
from trustmesh.gateway.headers import SECURITY_HEADERS, response_headers
from trustmesh.gateway.ratelimit import RateDecision
from trustmesh.gateway.strictjson import Parsed
from trustmesh.platform.listeners import Receive, Scope, Send, respond_json
from trustmesh.policy.edge import ANONYMOUS, Principal
from trustmesh.reasons import ANSWERS, Reason
from trustmesh.sdk.client import Response

__all__ = [
    "Exchange",
    "Incomplete",
    "Outcome",
    "Refusal",
    "Reply",
    "TooLarge",
    "answer_error",
    "cleaned",
    "new_exchange",
    "no_body",
    "read_body",
    "refusal_body",
    "refuse",
    "refuse_with",
    "relay",
    "target_of",
    "upstream_error",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A stage's refusal: the decision and reason its event records (with ``detail``),
    and what the client is told (``message``; the status and code are the reason's,
    from trustmesh.reasons.ANSWERS), with any headers the answer needs."""

    decision: events.Decision
    reason: Reason
    detail: str
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    #: more members of the answer's body (where a request is invalid, and the rule)
    fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def deny(
        cls,
        reason: Reason,
        detail: str,
        message: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        fields: tuple[tuple[str, str], ...] = (),
    ) -> Refusal:
        return cls(events.Decision.DENY, reason, detail, message, headers, fields)

    @classmethod
    def error(cls, reason: Reason, detail: str, message: str) -> Refusal:
        """Refused, closed, because something the decision needs failed."""
        return cls(events.Decision.ERROR, reason, detail, message)


@dataclass(frozen=True, slots=True)
class Reply:
    """A stage's own answer, with no body (a CORS preflight's 204)."""

    status: int
    headers: list[tuple[bytes, bytes]]


Outcome = Refusal | Reply


@dataclass(slots=True)
class Exchange:
    """One request as the stages see it: what came in, and what each stage found."""

    scope: Scope
    receive: Receive
    headers: list[tuple[bytes, bytes]]
    method: str
    raw: bytes  # the path as received, still encoded
    peer: str
    context: dict[str, Any]  # the event's attributes
    client: str = ""
    path: str = ""
    host: str | None = None
    route: GatewayRoute | None = None
    index: int = -1
    template: str = ""
    params: tuple[tuple[str, str], ...] = ()
    early: RateDecision | None = None
    grants: list[tuple[bytes, bytes]] = field(default_factory=list)  # RateLimit headers
    user: dict[str, Any] | None = None  # the caller's claims
    principal: Principal = ANONYMOUS
    credential: object = None  # what the caller presented, as the internal token's key
    body: bytes = b""
    parsed: Parsed | None = None  # the JSON body, where the route's validation read it
    by_proxy: bool = False  # asked by a proxy that counts the route's limits itself


def new_exchange(scope: Scope, receive: Receive, context: dict[str, Any]) -> Exchange:
    peer = (scope.get("client") or ("0.0.0.0", 0))[0]  # noqa: S104 - a label, never bound  # nosec B104 # a placeholder peer label, never bound
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    method: str = scope["method"]
    context.update(method=method, path=raw.decode("latin-1")[:512], client=peer)
    return Exchange(scope, receive, list(scope["headers"]), method, raw, peer, context)


async def no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class TooLarge(Exception):
    pass


class Incomplete(Exception):
    """The client went away before its whole body arrived."""


def target_of(ex: Exchange) -> str:
    """The path as received (canonical, still encoded) and the query: what the policy
    decided on is what the service is asked for, never re-encoded or re-parsed."""
    query = ex.scope.get("query_string")
    return ex.raw.decode("ascii") + ("?" + query.decode("latin-1") if query else "")


async def read_body(receive: Receive, headers: list[tuple[bytes, bytes]], limit: int) -> bytes:
    declared = next((v for k, v in headers if k == b"content-length"), None)
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # a partial body is never forwarded
            raise Incomplete
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    if declared is not None and size != int(declared):
        raise Incomplete
    return b"".join(chunks)


def cleaned(answer: Response) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers, every one as received, through
    :func:`response_headers`."""
    raw = answer.raw_headers or tuple(
        (k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()
    )
    return response_headers(raw)


async def relay(
    send: Send, answer: Response, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (k, v)
        for k, v in cleaned(answer)
        if k not in (b"content-length", b"content-encoding")  # the body is relayed decoded
    ]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    if extra:  # the gateway's CORS grants replace any the upstream set
        names = {k for k, _ in extra}
        headers = [(k, v) for k, v in headers if k not in names] + extra
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def upstream_error(send: Send, answer: Response, extra: list[tuple[bytes, bytes]]) -> None:
    """The gateway's own answer for the upstream's error: its status, the gateway's
    shape, and only the headers a client needs from the upstream's."""
    names = {k for k, _ in extra}  # the gateway's own grants win
    kept = [(k, v) for k, v in error_headers(cleaned(answer)) if k not in names]
    status = answer.status
    await answer_error(send, status, error_code(status), error_message(status), [*kept, *extra])


async def refuse(send: Send, refusal: Refusal) -> None:
    """The gateway's answer to a refusal (its status, code, message, headers and fields)."""
    await refuse_with(send, refusal.reason, refusal.message, list(refusal.headers), refusal.fields)


def refusal_body(refusal: Refusal) -> tuple[int, bytes]:
    """The status and JSON body of the gateway's answer to ``refusal`` (as :func:`refuse`
    writes them: ASCII, for a proxy that carries it in a header)."""
    answer = ANSWERS[refusal.reason]
    body = {"error": answer.code, "message": refusal.message, **dict(refusal.fields)}
    return answer.status, json.dumps(body).encode()


async def refuse_with(
    send: Send,
    reason: Reason,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    fields: tuple[tuple[str, str], ...] = (),
) -> None:
    """The gateway's answer to a refusal: the status and code the vocabulary gives
    ``reason`` (trustmesh.reasons.ANSWERS), in the gateway's shape."""
    refusal = ANSWERS[reason]
    await answer_error(send, refusal.status, refusal.code, message, headers, fields)


async def answer_error(
    send: Send,
    status: int,
    error: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    fields: tuple[tuple[str, str], ...] = (),
) -> None:
    body = json.dumps({"error": error, "message": message, **dict(fields)}).encode()
    await respond_json(send, status, body, [*SECURITY_HEADERS, *(headers or ())])
