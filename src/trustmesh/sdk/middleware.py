"""The ASGI middleware every trustmesh service runs behind ``serve``.

On every request, in this order, each step answering with a structured JSON error:

1. the peer must be a verified SVID of this trust domain → else ``401 unauthenticated``;
   such a peer's ``GET /.well-known/trustmesh/health`` (exactly that raw path) is then
   answered ``200 {"status": "ok"}`` at once — no token, no policy, no event: the
   gateway's active health check, which learns nothing but that the service answers;
   a peer whose SPIFFE ID is suspended (``suspended``: the identity service's feed, see
   :mod:`trustmesh.sdk.suspensions`) → ``403 forbidden`` (``suspended-spiffe-id``),
   health check included;
2. the raw path must be canonical → else ``400 invalid_request`` (see
   :mod:`trustmesh.policy.paths`: a pattern can never be tricked);
3. Cedar must permit (caller SPIFFE ID, method, canonical path) → else
   ``403 forbidden``; default deny (checked before the token: a caller the declaration
   does not allow costs no signature check);
4. with a token verifier: a bearer access token addressed to this service, bound to the
   caller's certificate, not revoked (see :mod:`trustmesh.sdk.tokens`) → else ``401``
   with ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when one was sent).

Every decision, allow and deny, is an event (health checks decide nothing). Each
request is a server span (:func:`trustmesh.sdk.spans.traced`): a child of the caller's
``traceparent``, named after the route the policy matched, with the caller's SPIFFE ID
and the token's subject; its decisions are noted on it as they are recorded.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any

from trustmesh import events
from trustmesh.errors import InvalidTokenError
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.policy.paths import NonCanonicalPath, canonical_path
from trustmesh.reasons import ANSWERS, Code, Reason
from trustmesh.sdk import spans, trace
from trustmesh.sdk.serve import UNAUTHENTICATED, ASGIApp, Receive, Scope, Send, respond_json
from trustmesh.sdk.tokens import TokenVerifier, VerifiedToken, bearer_token


def _body(error: str, message: str) -> bytes:
    return json.dumps({"error": error, "message": message}).encode()


def _refusal(reason: Reason, message: str) -> bytes:
    return _body(ANSWERS[reason].code, message)


_NON_CANONICAL = _refusal(Reason.PATH_NON_CANONICAL, "the request path is not in canonical form")
_POLICY_DENY = _refusal(Reason.POLICY_DENY, "this call is not allowed")
_TOKEN_MISSING = _refusal(Reason.TOKEN_MISSING, "a bearer access token is required")
_TOKEN_INVALID = _refusal(Reason.TOKEN_MALFORMED, "the access token was refused")
_SUSPENDED = _refusal(Reason.SPIFFE_ID_SUSPENDED, "the caller's SPIFFE ID is suspended")
#: Where the gateway's health checks ask (``gateway.upstream.health_check.path``).
HEALTH_PATH = b"/.well-known/trustmesh/health"
_HEALTH_OK = json.dumps({"status": "ok"}).encode()
_CHALLENGE = [(b"www-authenticate", b'Bearer realm="trustmesh"')]
_INVALID_CHALLENGE = [(b"www-authenticate", b'Bearer realm="trustmesh", error="invalid_token"')]
#: Where the verified token is handed to the app (``request.state`` in Starlette).
TOKEN_STATE_KEY = "trustmesh_token"  # noqa: S105 - a dictionary key


class ZeroTrustMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        authorizer: CallAuthorizer,
        sink: events.EventSink,
        component: str | None = None,
        verifier: TokenVerifier | None = None,
        suspended: Container[str] | None = None,
    ) -> None:
        """``suspended``: the SPIFFE IDs refused whatever else holds (a
        :class:`~trustmesh.sdk.suspensions.SuspensionFeed`); None: none is."""
        self.app = app
        self.verifier = verifier
        self.suspended: Container[str] = suspended if suspended is not None else frozenset()
        self.authorizer = authorizer
        self.sink = sink
        self.component = component or authorizer.callee
        self.spiffe_id = authorizer.config.spiffe_id(authorizer.callee)
        self.recorder = events.Recorder(sink, component=self.component, spiffe_id=self.spiffe_id)
        self._endpoints: dict[tuple[str, int], events.Endpoint] = {}  # per connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await spans.traced(scope, receive, send, self._handle)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        tls: dict[str, Any] = (scope.get("extensions") or {}).get("tls") or {}
        caller = tls.get("spiffe_id")
        method = scope["method"]
        if not caller:
            self._emit(events.Decision.DENY, Reason.UNAUTHENTICATED, "no valid peer SVID", scope)
            await respond_json(send, 401, UNAUTHENTICATED)
            return
        if caller in self.suspended:
            refused = Reason.SPIFFE_ID_SUSPENDED
            self._emit(events.Decision.DENY, refused, "peer suspended", scope, caller=caller)
            await respond_json(send, ANSWERS[refused].status, _SUSPENDED)
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        if raw == HEALTH_PATH and method == "GET":  # only after the peer's SVID is verified
            await respond_json(send, 200, _HEALTH_OK)
            return
        try:
            path = canonical_path(raw)
        except NonCanonicalPath as exc:
            self._emit(
                events.Decision.DENY,
                Reason.PATH_NON_CANONICAL,
                f"refused: {exc.why}",
                scope,
                caller=caller,
            )
            await respond_json(send, 400, _NON_CANONICAL)
            return
        decision = self.authorizer.decide(caller, method, path)
        if not decision.allowed:
            self._emit(
                events.Decision.DENY,
                decision.reason,
                "call denied by policy",
                scope,
                caller=caller,
                route=decision.route,
            )
            await respond_json(send, 403, _POLICY_DENY)
            return
        token: VerifiedToken | None = None
        if self.verifier is not None:
            token = await self._token(scope, send, tls, caller)
            if token is None:
                return
        self._emit(
            events.Decision.ALLOW,
            decision.reason,
            "call allowed",
            scope,
            caller=caller,
            route=decision.route,
            policy=",".join(decision.policies),
            token=token,
        )
        if token is not None:
            scope.setdefault("state", {})[TOKEN_STATE_KEY] = token
        await self.app(scope, receive, send)

    async def _token(
        self, scope: Scope, send: Send, tls: dict[str, Any], caller: str
    ) -> VerifiedToken | None:
        assert self.verifier is not None  # noqa: S101 - called only with a verifier
        token = bearer_token(
            next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        )
        if token is None:
            self._emit(
                events.Decision.DENY,
                Reason.TOKEN_MISSING,
                "no bearer token",
                scope,
                caller=caller,
            )
            await respond_json(send, 401, _TOKEN_MISSING, _CHALLENGE)
            return None
        try:
            return await self.verifier.verify(
                token, peer_thumbprint=tls.get("client_cert_x5t_s256")
            )
        except InvalidTokenError as exc:
            self._emit(
                events.Decision.DENY,
                exc.reason or Reason.TOKEN_MALFORMED,
                f"token refused: {exc.detail}",
                scope,
                caller=caller,
            )
            await respond_json(send, 401, _TOKEN_INVALID, _INVALID_CHALLENGE)
            return None

    def _emit(
        self,
        decision: events.Decision,
        reason: Code,
        message: str,
        scope: Scope,
        *,
        caller: str | None = None,
        route: str | None = None,
        policy: str | None = None,
        token: VerifiedToken | None = None,
    ) -> None:
        client = scope.get("client")
        current = trace.current()
        # the raw path as sent, for forensics; a refused one is never decoded
        raw = scope.get("raw_path", b"").decode("latin-1")[:512] or scope["path"][:512]
        method = scope["method"]
        src = None
        if client:
            src = self._endpoints.get(client)
            if src is None:
                if len(self._endpoints) > 4096:
                    self._endpoints.clear()
                src = self._endpoints[client] = events.Endpoint(ip=client[0], port=client[1])
        attributes = {"method": method, "path": raw, "route": route, "policy": policy}
        span = spans.current_span()
        if span is not None:
            _describe(span, method, caller, route)
        if token is not None:
            attributes["jti"] = token.jti
            if token.actor is not None:
                attributes["actor"] = token.actor
        self.recorder.record(
            reason,
            message,
            decision=decision,
            peer_spiffe_id=caller,
            sub=token.subject if token is not None else None,
            client_id=token.client_id if token is not None else None,
            trace_id=current.trace_id if current else None,
            src=src,
            attributes=attributes,
        )


def _describe(
    span: spans.Span,
    method: str,
    caller: str | None,
    route: str | None,
) -> None:
    """What the request's span says of it: the route, and the workload that called."""
    if route:  # "<callee> <method> <pattern>": the span names the pattern
        pattern = route.split(" ", 2)[-1]
        span.name = f"{method} {pattern}"
        span.attributes["http.route"] = pattern
    if caller:
        span.attributes["trustmesh.peer_spiffe_id"] = caller
    # the subject stays in the audit log (the trace view joins it): spans may leave
    # for an outside OTLP receiver, which is told workloads, never people
