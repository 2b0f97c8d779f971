"""The secrets service's HTTP adapter: Vault's HTTP API (``/v1/…``) over mTLS, so that
``hvac`` and other Vault clients work unchanged.

Every request goes through the same stages, and a refusal at any of them is answered in
Vault's shape (``{"errors": [...]}``) by one function:

1. **path** — ``/v1/`` and a path a client may name (:func:`policy.check_path`: no
   ``..``, no encoded bytes, no empty segment — refused, never normalised); a route
   for it (404) and the method (405); the body, a JSON object of at most 1 MiB with no
   duplicate keys (400, 413);
2. **seal** — sealed, everything but ``sys/*`` answers 503;
3. **authenticate** — ``open`` routes (health, seal status), ``operator`` routes (init,
   unseal, seal, rotate: the operator's SVID), ``login`` (cert auth: the SPIFFE ID of
   the client certificate), or a token (``X-Vault-Token``) bound to the SPIFFE ID of
   the connection (403 otherwise);
4. **authorize** — the capability the operation needs on the path, from the token's
   policies (403 otherwise; deny wins); a route may also let a token act on what it
   made itself (``owned``: a token looks up, renews and revokes its own leases, as
   Vault's default policy lets it);
5. **audit** — the request is recorded (503 if it cannot be: nothing is served
   unaudited), the handler runs, the response is recorded before it is sent.

A database that cannot be reached (down, restarting: :func:`trustmesh.store.unreachable`)
at any stage is a 503 (``store-unavailable``), never a 500: the client may try again,
and the service serves again once the database is back.

Every decision is also an event (:mod:`trustmesh.events`) with its reason.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

from trustmesh.errors import (
    NotFoundError,
    PermissionDeniedError,
    TrustmeshError,
    UnavailableError,
    UsageError,
)
from trustmesh.events import Recorder
from trustmesh.platform.listeners import answer_lifespan
from trustmesh.reasons import Reason
from trustmesh.secrets.kv import DeletedVersion
from trustmesh.secrets.policy import check_path, operation_capability
from trustmesh.secrets.tokens import TokenEntry
from trustmesh.store import unreachable

__all__ = [
    "NO_CONTENT",
    "Call",
    "Refusal",
    "Reply",
    "Route",
    "SecretsApp",
    "data_reply",
    "envelope",
    "parse_body",
]

log = logging.getLogger("trustmesh.secrets")

MAX_BODY: Final = 1 << 20
MAX_DEPTH: Final = 32
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "LIST"})
Access = Literal["open", "operator", "login", "token", "any-token"]


@dataclass
class Call:
    """One request, as the handlers see it."""

    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    spiffe_id: str | None
    token: str | None
    request_id: str
    remote: str
    match: re.Match[str] | None = None
    entry: TokenEntry | None = None

    @property
    def rest(self) -> str:
        """The route's captured path (a KV path, a key name), '' for none."""
        if self.match is None or not self.match.groups():
            return ""
        return self.match.group(1) or ""


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any] | None = None


Handler = Callable[[Call], Awaitable[Reply]]


def _store_unavailable() -> Reply:
    return Reply(503, {"errors": ["the secrets store is unavailable; try again"]})


@dataclass(frozen=True)
class Route:
    """``pattern`` (a full match of the path after ``/v1/``) answered by ``handlers`` per
    method, after ``access``; ``exists``: for a write, whether the target exists (the
    capability is then ``update``, else ``create``); ``owned``: whether the token acts on
    what it made itself (then no policy is needed)."""

    pattern: re.Pattern[str]
    handlers: Mapping[str, Handler]
    access: Access = "token"
    exists: Callable[[Call], Awaitable[bool]] | None = None
    owned: Callable[[Call], Awaitable[bool]] | None = None


class Refusal(Exception):
    """A request refused before its handler (status, Vault's error list, reason)."""

    def __init__(self, status: int, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


def envelope(data: Any, request_id: str, **extra: Any) -> dict[str, Any]:
    """Vault's envelope around ``data`` (``extra``: ``auth``, a lease …)."""
    return {
        "request_id": request_id,
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": None,
        "auth": None,
        **extra,
    }


def data_reply(data: Any, request_id: str, **extra: Any) -> Reply:
    return Reply(200, envelope(data, request_id, **extra))


NO_CONTENT: Final = Reply(204)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise UsageError(f"duplicate key in the request body: {key[:64]!r}")
        doc[key] = value
    return doc


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: empty, or one JSON object (no duplicate keys, bounded depth)."""
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw, object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError("the request body is not JSON") from None
    if not isinstance(doc, dict):
        raise UsageError("the request body must be a JSON object")
    if _depth(doc) > MAX_DEPTH:
        raise UsageError("the request body is nested too deeply")
    return doc


class SecretsApp:
    """The ASGI app over ``service`` (see :mod:`trustmesh.secrets.service`)."""

    def __init__(self, service: Any, routes: list[Route], recorder: Recorder) -> None:
        self.service = service
        self.routes = routes
        self.recorder = recorder

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        call = _call(scope)
        prepared = await self._prepare(call, scope, receive)
        reply = prepared if isinstance(prepared, Reply) else await self._run(call, prepared)
        await self._send(send, reply, call)

    async def _prepare(
        self, call: Call, scope: MutableMapping[str, Any], receive: Any
    ) -> Route | Reply:
        """Stage 1: the path, its route, the method and the body."""
        try:
            raw = await _read_body(receive)
            call.method = _method(scope["method"], call)
            if not scope["raw_path"].startswith(b"/v1/"):
                raise NotFoundError("no handler for this route")
            call.path = check_path(scope["raw_path"][4:].decode("ascii", "replace"))
            if call.method == "LIST" and not call.path.endswith("/"):
                call.path += "/"  # a LIST names a folder (Vault adds the slash too)
            route = self._route(call)
            call.body = parse_body(raw)
            return route
        except _Answer as exc:
            return exc.reply
        except TrustmeshError as exc:
            reply = _error_reply(exc)
            await self._audit_refusal(call, reply, exc.reason or Reason.REQUEST_MALFORMED)
            return reply

    def _route(self, call: Call) -> Route:
        for route in self.routes:
            match = route.pattern.fullmatch(call.path)
            if match is None:
                continue
            if call.method not in route.handlers:
                raise _Answer(Reply(405, {"errors": ["unsupported operation"]}))
            call.match = match
            return route
        raise _Answer(Reply(404, {"errors": [f"no handler for route {call.path[:200]!r}"]}))

    async def _run(self, call: Call, route: Route) -> Reply:
        service = self.service
        try:
            await self._admit(call, route)
        except Refusal as refusal:
            reply = Reply(refusal.status, {"errors": [refusal.message]})
            await self._audit_refusal(call, reply, refusal.reason)
            return reply
        except TrustmeshError as exc:
            reply = _error_reply(exc)
            await self._audit_refusal(call, reply, exc.reason or Reason.POLICY_DENY)
            return reply
        except Exception as exc:
            if not unreachable(exc):
                raise
            reply = _store_unavailable()
            await self._audit_refusal(call, reply, Reason.STORE_UNAVAILABLE)
            return reply
        try:
            await service.audit_request(call)
        except UnavailableError as exc:
            self._record(call, Reason.AUDIT_UNAVAILABLE, exc.detail)
            return Reply(503, {"errors": ["the audit device could not record the request"]})
        reply = await self._handle(call, route)
        try:
            await service.audit_response(call, reply)
        except UnavailableError as exc:
            self._record(call, Reason.AUDIT_UNAVAILABLE, exc.detail)
            return Reply(503, {"errors": ["the audit device could not record the response"]})
        return reply

    async def _handle(self, call: Call, route: Route) -> Reply:
        try:
            return await route.handlers[call.method](call)
        except DeletedVersion as deleted:
            return Reply(
                404,
                {"errors": [], "data": {"data": None, "metadata": deleted.metadata}},
            )
        except NotFoundError:
            return Reply(404, {"errors": []})
        except TrustmeshError as exc:
            if exc.reason is not None:
                self._record(call, exc.reason, exc.detail)
            return _error_reply(exc)
        except Exception as exc:
            if unreachable(exc):  # an outage, not a bug
                log.warning(
                    "secrets: %s %s: the database is unreachable (%r)",
                    call.method,
                    call.path[:200],
                    exc,
                )
                self._record(call, Reason.STORE_UNAVAILABLE, type(exc).__name__)
                return _store_unavailable()
            # a bug: answered (and audited) as one, never half a request
            log.exception("secrets: %s %s failed", call.method, call.path[:200])
            return Reply(500, {"errors": ["internal error"]})

    async def _admit(self, call: Call, route: Route) -> None:
        """Stages 2-4: the seal, who is calling, and what they may do."""
        service = self.service
        if not call.path.startswith("sys/") and service.barrier.sealed:
            raise Refusal(503, "the secrets service is sealed", Reason.SECRETS_SEALED)
        if route.access == "open":
            return
        if route.access == "operator":
            if call.spiffe_id != service.operator:
                raise Refusal(403, "permission denied: only the operator", Reason.POLICY_DENY)
            self._record(call, Reason.POLICY_ALLOW, "operator")
            return
        if route.access == "login":
            return  # the handler decides on the certificate's identity
        if call.token is None:
            raise Refusal(403, "permission denied: no token", Reason.TOKEN_MISSING)
        call.entry = await service.tokens.lookup(call.token, call.spiffe_id)
        if route.access == "any-token":
            return
        # only a route that can tell (a KV path) makes a write a "create"; else "update"
        writes = call.method in ("POST", "PUT")
        exists = not writes or route.exists is None or await route.exists(call)
        capability = operation_capability(call.method, exists)
        if route.owned is not None and await route.owned(call):
            self._record(call, Reason.POLICY_ALLOW, f"{capability} (its own)")
            return
        if not service.allows(call.entry.policies, call.path, capability):
            raise Refusal(403, "permission denied", Reason.POLICY_DENY)
        self._record(call, Reason.POLICY_ALLOW, capability)

    async def _audit_refusal(self, call: Call, reply: Reply, reason: Reason) -> None:
        """A refusal is recorded too (the audit device, if it can, and an event)."""
        errors = (reply.body or {}).get("errors") or [""]
        self._record(call, reason, errors[0])
        try:
            await self.service.audit_request(call)
            await self.service.audit_response(call, reply)
        except UnavailableError:
            pass  # the refusal stands either way

    def _record(self, call: Call, reason: Reason, message: str) -> None:
        self.recorder.record(
            reason,
            message[:200] or reason.value,
            peer_spiffe_id=call.spiffe_id,
            attributes={"path": call.path[:256], "operation": call.method.lower()},
        )

    async def _send(self, send: Any, reply: Reply, call: Call) -> None:
        body = b"" if reply.body is None else json.dumps(reply.body).encode()
        headers = [
            (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode()),
        ]
        if reply.body is not None:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body if call.method != "HEAD" else b""})


class _Answer(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _error_reply(exc: TrustmeshError) -> Reply:
    status = exc.status if exc.status in (400, 403, 404, 405, 413, 503) else 500
    if isinstance(exc, PermissionDeniedError):
        return Reply(403, {"errors": ["permission denied"]})
    if status == 500:
        return Reply(500, {"errors": [exc.public_message]})
    return Reply(status, {"errors": [exc.detail]})


def _call(scope: MutableMapping[str, Any]) -> Call:
    headers = {k.lower(): v for k, v in scope.get("headers") or ()}
    token = headers.get(b"x-vault-token")
    if token is None:
        auth = headers.get(b"authorization", b"")
        token = auth[7:] if auth[:7].lower() == b"bearer " else None
    tls = (scope.get("extensions") or {}).get("tls") or {}
    client = scope.get("client")
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), max_num_fields=32))
    return Call(
        method=scope["method"],
        path="",
        query=query,
        body={},
        spiffe_id=tls.get("spiffe_id") if isinstance(tls.get("spiffe_id"), str) else None,
        token=token.decode("latin-1").strip() or None if token else None,
        request_id=str(uuid.uuid4()),
        remote=client[0] if client else "",
    )


def _method(method: str, call: Call) -> str:
    if method == "GET" and call.query.get("list") in ("true", "1"):
        return "LIST"
    if method not in _METHODS:
        raise _Answer(Reply(405, {"errors": ["unsupported operation"]}))
    return method


async def _read_body(receive: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise UsageError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _Answer(Reply(413, {"errors": ["the request body is too large"]}))
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
