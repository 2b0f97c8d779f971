"""The gateway's request pipeline, as an ASGI app served on its TLS listener.

Each stage decides, and a refusal ends the request with a structured error and an event:

1. the client address (the peer, or ``X-Forwarded-For`` from a trusted proxy: an entry
   that is not an address → ``400 invalid_request``) must pass the address rules and
   not be blocked (:mod:`trustmesh.gateway.blocklist`) → ``403``; the raw path must be canonical → ``400 invalid_request``;
2. a route must take it (host, longest prefix, one of the route's operations, method) →
   ``404`` / ``405`` + ``Allow``; a trailing slash no operation declares → ``400``;
3. the route's authentication: a bearer access token from a trusted issuer, addressed to
   the gateway, not bound to a certificate the client cannot show, not revoked, or an API
   key in scope for the route → ``401`` with ``WWW-Authenticate``; or an anonymous route;
4. the rate limits (per consumer, role, route and client address) → ``429`` with
   ``Retry-After`` and the RateLimit headers, which every limited response carries;
5. the edge policies (Cedar, when declared): principal, method, route and context
   (client address, path, the operation's template and values, time) → ``403`` unless a
   permit applies and no forbid does;
6. the body must fit the limit → ``413``;
6a. the route's contract, where it declares one (:mod:`trustmesh.gateway.validation`:
   an OpenAPI document or a JSON Schema): the content type → ``415``; parameters and
   body → ``400`` naming where (a JSON Pointer into the body) and the rule, never the
   value;
6b. the injection filter (:mod:`trustmesh.gateway.waf`, ``waf: {mode, action}``): SQL
   injection, XSS, traversal, command injection in what the service will read →
   ``403`` ``request-injection`` (the category, where and the check in the event);
7. forward over mTLS (the gateway's SVID; the upstream's SPIFFE ID checked) with the
   internal token in place of the client's, hop-by-hop headers and those that claim an
   identity, an address, a URL or a method removed (on a strict route, every header it
   does not list);
   no healthy upstream → a fast ``503``; no answer within the route's timeout → ``504``.

Each stage is a small method over one :class:`Exchange` (the request, and what the
stages before found); it carries on, or returns a frozen :class:`Refusal` (the decision,
the reason, what the event and the client are told) or a :class:`Reply`. One loop
(:meth:`GatewayApp._handle`) records the event and answers, the status and code coming
from the reason (trustmesh.reasons.ANSWERS).

The response goes back with the upstream's status and body, its hop-by-hop and internal
headers removed and the security headers set; an upstream's error (≥ 400) in the gateway's
own shape, with only the headers a client needs (:mod:`trustmesh.gateway.answers`),
unless the route relays errors as they are (``relay_errors``). A route may run its
policy, rate limits, validation and injection filter dry (``modes``): what the control
would have refused is recorded as ``would-deny`` and the request goes on.

Each request it serves is one span (:mod:`trustmesh.sdk.spans`, when the process records
spans; each question a proxy asks its authorizer is one too):
a child of the client's ``traceparent`` through a trusted proxy only, else a new trace
sampled at ``audit.tracing.sample_ratio``; the upstream's span is its child. Every
answer then carries ``traceresponse`` (W3C Trace Context Level 2: the trace and the
gateway's span), so a client can name the request it is asking about.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from trustmesh import events
from trustmesh.config.gateway import PROVIDER_ISSUER, GatewayConfig, GatewayRoute
from trustmesh.errors import (
    InvalidTokenError,
    TrustmeshError,
    UnavailableError,
    UsageError,
)
from trustmesh.gateway.apikeys import presented_api_key
from trustmesh.gateway.blocklist import Blocklist
from trustmesh.gateway.cors import is_preflight, preflight_headers, response_grants
from trustmesh.gateway.crs import CrsFilter, CrsFinding, load_rule_sets
from trustmesh.gateway.crs_workers import CrsWorkers, InspectionUnavailableError
from trustmesh.gateway.exchange import (
    Exchange,
    Incomplete,
    Outcome,
    Refusal,
    Reply,
    TooLarge,
    new_exchange,
    no_body,
    read_body,
    refuse_with,
    relay,
    target_of,
    upstream_error,
)
from trustmesh.gateway.headers import (
    SECURITY_HEADERS,
    TrustedProxies,
    client_address,
    strict_headers,
    upstream_headers,
)
from trustmesh.gateway.internal import GatewayKey, internal_claims
from trustmesh.gateway.introspection import Introspector
from trustmesh.gateway.iprules import IPRules
from trustmesh.gateway.keystore import ApiKeyVerifier
from trustmesh.gateway.metrics import GatewayMetrics
from trustmesh.gateway.oidc import ExternalIssuers, ExternalVerifier
from trustmesh.gateway.ratelimit import (
    RateDecision,
    RateLimiter,
    compile_rules,
    counts_before_auth,
    proxy_limit_keys,
    proxy_limits,
)
from trustmesh.gateway.routes import RouteDecision, RouteTable, request_host
from trustmesh.gateway.upstreams import UpstreamTimeoutError
from trustmesh.gateway.validation import load_validators
from trustmesh.gateway.waf import FastFilter, Finding
from trustmesh.platform.guard import RefusalSummary
from trustmesh.platform.listeners import Receive, Scope, Send, answer_lifespan
from trustmesh.policy.addresses import as_ipv4
from trustmesh.policy.edge import EdgePolicy, EdgeRequest, Principal
from trustmesh.policy.paths import NonCanonicalPath, canonical_path, lenient_path
from trustmesh.reasons import Code, Reason
from trustmesh.sdk import spans, trace
from trustmesh.sdk.client import Response, ResponseTooLargeError
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import TokenVerifier, bearer_token

log = logging.getLogger("trustmesh.gateway")


class Upstreams(Protocol):
    """Sends a request to an instance of a service (see :class:`UpstreamPool`): raises
    UnavailableError when none is in rotation, UpstreamTimeoutError after ``timeout``."""

    async def forward(
        self,
        service: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
    ) -> Response: ...


_MINTED_CACHE = 16384


_NOT_CANONICAL = "the request path is not in canonical form"
_ADDRESS_REFUSED = Refusal.deny(
    Reason.IP_DENIED, "client address refused", "not allowed from this address"
)
_ADDRESS_BLOCKED = Refusal.deny(
    Reason.ADDRESS_BLOCKED, "client address blocked", "not allowed from this address"
)


class GatewayApp:
    """The pipeline for the declaration's ``gateway:`` section, every stage compiled
    from it once (routes, address rules, trusted proxies)."""

    def __init__(
        self,
        gateway: GatewayConfig,
        *,
        spiffe_id: str,
        trust_domain: str,
        verifier: TokenVerifier | None,
        key: GatewayKey,
        tls: RotatingTLS,
        upstreams: Upstreams,
        sink: events.EventSink,
        policy: EdgePolicy | None = None,
        limiter: RateLimiter | None = None,
        api_keys: ApiKeyVerifier | None = None,
        external: ExternalIssuers | None = None,
        introspector: Introspector | None = None,
        metrics: GatewayMetrics | None = None,
        blocks: Blocklist | None = None,
        clock: Callable[[], float] = time.time,
        config_dir: Path | None = None,
        crs_workers: CrsWorkers | None = None,
        defences_off: Collection[str] = (),
    ) -> None:
        """``config_dir``: where the declaration's files (a route's ``openapi`` or
        ``schema``) are, compiled now (ConfigError naming the route); ``crs_workers``:
        where crs mode inspects (None: here, on the event loop); ``defences_off``:
        test-only switches (``path-normalisation``, ``token-format``:
        :mod:`trustmesh.config.switches`), empty in every real stack."""
        self.spiffe_id = spiffe_id  # the issuer of internal tokens, the audience it accepts
        self.trust_domain = trust_domain
        self.token_ttl = int(gateway.internal_token_ttl.total_seconds())
        self.max_body_bytes = gateway.max_body_bytes
        self._compile_routes(gateway, trust_domain, config_dir or Path.cwd())
        self.crs_workers = crs_workers
        self.ip_rules = IPRules.of(gateway.allow_ips, gateway.deny_ips)
        self.blocks = blocks if blocks is not None else Blocklist()
        self._minted: dict[tuple[object, ...], tuple[float, bytes]] = {}
        self.trusted = TrustedProxies(gateway.trusted_proxies)
        self.verifier = verifier
        self.policy = policy
        self.limiter = limiter
        self._compile_limits(gateway, limiter)
        self.api_keys = api_keys
        self.external = external
        self.introspector = introspector
        self.metrics = metrics
        self.key = key
        self.tls = tls
        self.upstreams = upstreams
        self.sink = sink
        self.recorder = events.Recorder(sink, component="gateway", spiffe_id=spiffe_id)
        self.clock = clock
        self._canonical = lenient_path if "path-normalisation" in defences_off else canonical_path
        self._format_checked = "token-format" not in defences_off
        self._stages = self._pipeline()
        #: how many stages, from the first, need no body (what :meth:`decide` runs)
        self._checked = 1 + [stage for stage, _ in self._stages].index(self._authorize)

    def _pipeline(
        self,
    ) -> tuple[tuple[Callable[[Exchange], Awaitable[Outcome | None]], str | None], ...]:
        """Each stage in order, and the route's control it is (None: always enforced),
        which a route may run dry (``modes``)."""
        return (
            (self._address, None),
            (self._path, None),
            (self._preflight, None),
            (self._route, None),
            (self._limit_before_auth, "rate_limits"),
            (self._authenticate, None),
            (self._limit_after_auth, "rate_limits"),
            (self._authorize, "policy"),
            (self._body, None),
            (self._validate, "validation"),
            (self._inspect, "waf"),
        )

    def _compile_routes(self, gateway: GatewayConfig, trust_domain: str, folder: Path) -> None:
        """What each route declares, compiled once, by route index."""
        routes = gateway.routes
        self.routes = RouteTable(routes)
        self.validators = load_validators(gateway, folder)
        self.filters = _filters(gateway, folder)
        self.route_ip_rules = tuple(IPRules.of(r.allow_ips, r.deny_ips) for r in routes)
        self.timeouts = tuple(r.timeout.total_seconds() for r in routes)
        self.upstream_ids = tuple(f"spiffe://{trust_domain}/{r.to}" for r in routes)
        self.allowed_headers = tuple(
            strict_headers(r, f"routes[{i}]") for i, r in enumerate(routes)
        )

    def _compile_limits(self, gateway: GatewayConfig, limiter: RateLimiter | None) -> None:
        """The rate rules, where they count, and what nginx keeps and counts itself."""
        self.rate_rules = compile_rules(gateway) if limiter is not None else None
        #: per route, whether an address limit counts before the credential is looked at
        self.early_limits = (
            counts_before_auth(self.rate_rules) if self.rate_rules is not None else ()
        )
        kept = gateway.nginx.decision_ttl if gateway.engine == "nginx" else None
        #: how long nginx may keep an allowed decision (0: it asks about every request)
        self.decision_ttl = int(kept.total_seconds()) if kept is not None else 0
        #: per route, the limits nginx counts where it keeps decisions (None: counted here,
        #: so every request there is asked about)
        self.proxy_limits = (
            proxy_limits(gateway) if self.decision_ttl else (None,) * len(gateway.routes)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets through the gateway (yet): the connection closes
        parent = self._parent(scope)
        tracer = spans.tracer()
        own = (
            parent.child()
            if parent
            else tracer.new_trace()
            if tracer is not None
            else trace.TraceParent.new()
        )
        token = trace.use(own)
        context: dict[str, Any] = {}
        metrics = self.metrics
        if metrics is None and tracer is None:
            try:
                await self._handle(scope, receive, send, context)
            finally:
                trace.reset(token)
            return
        started = time.perf_counter()
        status = 0

        told = (b"traceresponse", own.header().encode("ascii")) if tracer is not None else None

        async def watched(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if told is not None:  # the client may name its request's trace
                    kept = [h for h in message.get("headers", ()) if h[0] != b"traceresponse"]
                    message = {**message, "headers": [*kept, told]}
            await send(message)

        span = None
        if tracer is not None:
            span = tracer.start("", spans.SpanKind.SERVER, own, parent.span_id if parent else None)
            span_token = spans.use_span(span)
        error: str | None = None
        try:
            await self._handle(scope, receive, watched, context)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            trace.reset(token)
            route = context.get("route_name", "-")
            if metrics is not None and error is None:
                metrics.answered(route, status, time.perf_counter() - started)
            if span is not None and tracer is not None:
                spans.reset_span(span_token)
                _describe(span, scope, route)
                tracer.end(span, status=status, error=error)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, context: dict[str, Any]
    ) -> None:
        """Run the stages in order; the first that refuses (or answers) ends the request:
        one place records the event and answers. A request every stage lets through is
        forwarded."""
        ex = new_exchange(scope, receive, context)
        outcome = await self._run(ex, self._stages)
        if outcome is None:
            outcome = await self._forward(ex, send)
            if outcome is None:
                return
        if isinstance(outcome, Reply):
            await send(
                {
                    "type": "http.response.start",
                    "status": outcome.status,
                    "headers": outcome.headers,
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        self._emit(outcome.decision, outcome.reason, outcome.detail, context, ex.user)
        await refuse_with(
            send, outcome.reason, outcome.message, list(outcome.headers), outcome.fields
        )

    def _parent(self, scope: Scope) -> trace.TraceParent | None:
        """The client's span, followed only through a trusted proxy (anyone else could
        attach their requests to a trace of their choosing)."""
        peer = (scope.get("client") or ("", 0))[0]
        incoming = (
            next((v for k, v in scope["headers"] if k == b"traceparent"), None)
            if self.trusted and peer in self.trusted
            else None
        )
        return trace.parse(incoming.decode("latin-1") if incoming else None)

    def _trace(self, scope: Scope) -> trace.TraceParent:
        """This request's span: a child of the client's (:meth:`_parent`), else a new
        trace."""
        current = self._parent(scope)
        return current.child() if current else trace.TraceParent.new()

    async def _run(
        self,
        ex: Exchange,
        stages: tuple[tuple[Callable[[Exchange], Awaitable[Outcome | None]], str | None], ...],
    ) -> Outcome | None:
        """The stages in order: the first outcome (a control in dry-run records its
        refusal and lets the request on), or None when every stage let it through."""
        for stage, control in stages:
            outcome = await stage(ex)
            if outcome is None:
                continue
            if control is not None and isinstance(outcome, Refusal) and self._dry(ex, control):
                self._would_deny(ex, control, outcome)
                continue
            return outcome
        return None

    async def decide(
        self,
        scope: Scope,
        context: dict[str, Any],
        *,
        by_proxy: bool = False,
        parent: trace.TraceParent | None = None,
    ) -> tuple[Exchange, Outcome | None]:
        """For a proxy that forwards by itself (:mod:`trustmesh.gateway.authorizer`): the
        stages that need no body — address, path, preflight, route, limits, credentials,
        policy — on ``scope``; the exchange and the first outcome (None: allowed). The
        caller records the allowed decision; a refusal is recorded here as ever.

        ``by_proxy``: the proxy counts the limits of the routes :attr:`proxy_limits` names
        (they are not counted here); ``parent``: the proxy's span of this request."""
        # for the rest of the caller's task: one request
        trace.use(parent.child() if parent is not None else self._trace(scope))
        ex = new_exchange(scope, no_body, context)
        ex.by_proxy = by_proxy
        outcome = await self._run(ex, self._stages[: self._checked])
        if isinstance(outcome, Refusal):
            self._emit(outcome.decision, outcome.reason, outcome.detail, context, ex.user)
        return ex, outcome

    def needs_body(self, index: int) -> bool:
        """Whether route ``index`` inspects bodies (a contract, or the injection filter):
        what a proxy that asks only about heads cannot enforce."""
        return self.validators[index] is not None or self.filters[index] is not None

    def refused_unchecked(self, ex: Exchange) -> None:
        """Recorded: an allowed request on a route that inspects bodies, which the proxy
        that asked cannot show (it is refused, never allowed unchecked)."""
        self._emit(
            events.Decision.ERROR,
            Reason.POLICY_DENY,
            "the route inspects bodies: a proxy that forwards by itself cannot serve it",
            ex.context,
            ex.user,
        )

    def grant(self, ex: Exchange) -> list[tuple[bytes, bytes]]:
        """What an allowed request carries to its upstream from the gateway: the internal
        token (``authorization``) and the trace (``traceparent``); the event is recorded."""
        route = ex.route
        assert route is not None  # noqa: S101 - allowed requests have a route
        self._emit(events.Decision.ALLOW, Reason.POLICY_ALLOW, "authorized", ex.context, ex.user)
        return self._granted(ex, route)

    def grant_kept(self, ex: Exchange) -> tuple[list[tuple[bytes, bytes]], int]:
        """:meth:`grant` for nginx, which may keep the decision: the internal token, each
        limit's bucket (``x-trustmesh-limit-<zone>``, for nginx to count), the rules'
        ``ratelimit-policy``, and how many seconds nginx may answer it again (0: not at
        all). Never longer than the internal token keeps a quarter of its life, so a kept
        token reaches the upstream with at least that left."""
        route = ex.route
        assert route is not None  # noqa: S101 - allowed requests have a route
        # where nginx counts the route's limits (only where it keeps decisions), its
        # kept.log records the request once the count has passed or refused it
        limits = self.proxy_limits[ex.index]
        if not limits:
            self._emit(
                events.Decision.ALLOW, Reason.POLICY_ALLOW, "authorized", ex.context, ex.user
            )
        token, until = self._minted_token(ex.index, route, ex.user, ex.credential)
        headers = [(b"authorization", token)]
        if limits is None or not self.decision_ttl:
            return headers, 0
        if limits:
            principal = ex.principal
            consumer = None if ex.user is None else f"{principal.type}:{principal.id}"
            rules = self.rate_rules[ex.index] if self.rate_rules is not None else ()
            for zone, bucket in proxy_limit_keys(rules, consumer, principal.roles, ex.client):
                headers.append((b"x-trustmesh-limit-" + zone.encode(), bucket.encode()))
            policies = ",".join(f'"{p.name}";q={p.limit};w={p.window}' for p in limits)
            headers.append((b"ratelimit-policy", policies.encode()))
        return headers, max(0, min(self.decision_ttl, int(until - self.clock())))

    def _granted(self, ex: Exchange, route: GatewayRoute) -> list[tuple[bytes, bytes]]:
        """The gateway's own headers for the upstream: the internal token, the trace."""
        token, _ = self._minted_token(ex.index, route, ex.user, ex.credential)
        headers = [(b"authorization", token)]
        current = trace.current()
        if current is not None:
            headers.append((b"traceparent", current.header().encode("ascii")))
        return headers

    @staticmethod
    def _dry(ex: Exchange, control: str) -> bool:
        route = ex.route
        return route is not None and getattr(route.modes, control) == "dry-run"

    def _would_deny(self, ex: Exchange, control: str, refusal: Refusal) -> None:
        """A control in dry-run refused: the event says so (``would-deny``, the reason,
        the control) and the request goes on as if it had passed."""
        context = dict(ex.context, control=control)
        self._emit(events.Decision.WOULD_DENY, refusal.reason, refusal.detail, context, ex.user)

    # -- the stages: each refuses (a Refusal), answers (a Reply) or carries on (None) --
    async def _address(self, ex: Exchange) -> Outcome | None:
        """The client's address (a trusted proxy's X-Forwarded-For), and the rules."""
        try:
            ex.client = client_address(ex.peer, ex.headers, self.trusted)
        except UsageError as exc:  # a trusted proxy that cannot say who its client is
            return Refusal.deny(
                Reason.FORWARDED_FOR_INVALID, exc.detail, "X-Forwarded-For holds a non-address"
            )
        ex.context["client"] = ex.client
        if not self.ip_rules.admits(ex.client):
            return _ADDRESS_REFUSED
        if self.blocks.blocked(ex.client, self.clock()):
            return _ADDRESS_BLOCKED
        return None

    async def _path(self, ex: Exchange) -> Outcome | None:
        try:
            ex.path = self._canonical(ex.raw)
        except NonCanonicalPath as exc:
            return Refusal.deny(Reason.PATH_NON_CANONICAL, exc.why, _NOT_CANONICAL)
        ex.host = request_host(next((v for k, v in ex.headers if k == b"host"), None))
        return None

    async def _preflight(self, ex: Exchange) -> Outcome | None:
        """A CORS preflight is answered at the edge, never forwarded."""
        asked = is_preflight(ex.method, ex.headers)
        if asked is None:
            return None
        decision = self.routes.decide(ex.host, ex.path, asked)
        route = decision.route
        if route is not None and not self.route_ip_rules[decision.index].admits(ex.client):
            return _ADDRESS_REFUSED  # the route's address rules hold for its preflights too
        grants = None
        if route is not None and route.cors is not None:
            grants = preflight_headers(route.cors, route.methods, ex.headers)
        if grants is None:
            return Refusal.deny(
                Reason.CORS_DENIED, "CORS preflight refused", "cross-origin request not allowed"
            )
        return Reply(204, [*grants, *SECURITY_HEADERS])

    async def _route(self, ex: Exchange) -> Outcome | None:
        """The route that takes the request: 405 (with Allow), 400 or 404 if none."""
        decision = self.routes.decide(ex.host, ex.path, ex.method)
        if decision.route is None:
            return _unrouted(decision)
        ex.route, ex.index = decision.route, decision.index
        ex.template, ex.params = decision.template, decision.params
        context = ex.context
        context["route"] = f"routes[{decision.index}]"
        context["route_name"] = decision.route.route_name
        context["template"] = decision.template  # the declaration's words, not the client's
        if not self.route_ip_rules[decision.index].admits(ex.client):
            return _ADDRESS_REFUSED
        return None

    async def _limit_before_auth(self, ex: Exchange) -> Outcome | None:
        """The address limits, before any credential is looked at: failed attempts
        count too (none on the route: nothing to count, no headers)."""
        if self.limiter is None or (ex.by_proxy and self.proxy_limits[ex.index] is not None):
            return None
        if not self.early_limits[ex.index]:
            return None
        early = await self.limiter.hit(
            ex.index,
            consumer=None,
            roles=(),
            ip=ex.client,
            stage="before_auth",
            rules=self.rate_rules,
        )
        ex.early = early
        ex.grants = early.headers()
        return self._limited(ex, early)

    async def _authenticate(self, ex: Exchange) -> Outcome | None:
        """The route's credential: an API key (where the route takes them) or a bearer
        token; the caller's claims for the internal token, and the policy principal."""
        route = ex.route
        assert route is not None  # noqa: S101 - the route stage ran
        if route.auth == ["anonymous"]:
            return None
        if "api_key" in route.auth and self.api_keys is not None:
            presented = presented_api_key(ex.headers)
            if presented is not None:
                return await self._api_key(ex, presented)
        by_token = "jwt" in route.auth or "introspection" in route.auth
        authorization = next((v for k, v in ex.headers if k == b"authorization"), None)
        token = bearer_token(authorization) if by_token else None
        if token is None:
            challenge = b'Bearer realm="trustmesh"' if by_token else b""
            if "api_key" in route.auth:
                challenge += (b", " if challenge else b"") + b'ApiKey realm="trustmesh"'
            return Refusal.deny(
                Reason.TOKEN_MISSING,
                "no credential",
                "a credential is required",
                ((b"www-authenticate", challenge),),
            )
        return await self._bearer(ex, route, token)

    async def _bearer(self, ex: Exchange, route: GatewayRoute, token: str) -> Outcome | None:
        external = self.external.issuer_of(token) if self.external is not None else None
        # introspection where the route asks for it, unless a JWT route gets a JWT
        ask = "introspection" in route.auth and ("jwt" not in route.auth or token.count(".") != 2)
        issuer = external.spec.issuer if external is not None else PROVIDER_ISSUER
        try:
            if not ask and route.issuers is not None and issuer not in route.issuers:
                # another issuer's users have no business on this route
                raise InvalidTokenError(
                    "an issuer this route does not take", reason=Reason.TOKEN_WRONG_ISSUER
                )
            claims = await self._claims(token, ask, external)
        except InvalidTokenError as exc:
            if not self._format_checked and token.count(".") != 2:
                return None  # the test switch token-format: not a JWT, on as anonymous
            return Refusal.deny(
                exc.reason or Reason.TOKEN_MALFORMED,
                f"token refused: {exc.detail}",
                "the access token was refused",
                ((b"www-authenticate", b'Bearer realm="trustmesh", error="invalid_token"'),),
            )
        except UnavailableError as exc:
            return Refusal.error(
                Reason.VERIFICATION_UNAVAILABLE, exc.detail, "token verification is unavailable"
            )
        ex.user = claims
        ex.credential = hashlib.sha256(token.encode("ascii", "replace")).digest()
        if external is not None and not ask:  # its type and issuer are the declaration's
            ex.principal = external.principal(claims)
        else:
            ex.principal = Principal.from_claims(claims)
        return None

    async def _claims(
        self, token: str, ask: bool, external: ExternalVerifier | None
    ) -> dict[str, Any]:
        """The token's claims: by introspection, another issuer's keys, or the
        provider's."""
        if ask:
            if self.introspector is None:
                raise UnavailableError("no identity provider to introspect with")
            return await self.introspector.verify(token)
        if external is not None:  # another OpenID Provider's token: its keys alone
            return await external.verify(token)
        if self.verifier is None:
            raise UnavailableError("no identity provider to verify tokens with")
        return dict((await self.verifier.verify(token, peer_thumbprint=None)).claims)

    async def _api_key(self, ex: Exchange, presented: str) -> Outcome | None:
        keys = self.api_keys
        assert ex.route is not None  # noqa: S101 - the route stage ran
        try:
            found = await keys.verify(presented, ex.route.route_name) if keys else None
        except TrustmeshError as exc:  # the key store cannot be read: refuse, closed
            return Refusal.error(
                Reason.KEY_STORE_UNAVAILABLE, exc.detail, "API key verification is unavailable"
            )
        if found is None or not found.allowed or found.key_id is None:
            return Refusal.deny(
                found.reason if found is not None else Reason.API_KEY_MALFORMED,
                "API key refused",
                "the API key was refused",
                ((b"www-authenticate", b'ApiKey realm="trustmesh", error="invalid_key"'),),
            )
        now = int(self.clock())
        ex.user = {
            "sub": found.principal,
            "client_id": found.principal,
            "roles": list(found.roles),
            "exp": found.expires_at or now + self.token_ttl,
        }
        ex.context["key_id"] = found.key_id  # the key's public id, never the key
        ex.principal = Principal(
            "ApiKey",
            found.key_id,
            roles=tuple(sorted(found.roles)),
            name=found.name or "",
            issuer=PROVIDER_ISSUER,  # the gateway's own keys
        )
        ex.credential = ("api-key", found.key_id)
        return None

    async def _limit_after_auth(self, ex: Exchange) -> Outcome | None:
        """The consumer's, role's and route's limits; the tighter limit is the one the
        answer tells."""
        if self.limiter is None or (ex.by_proxy and self.proxy_limits[ex.index] is not None):
            return None
        principal = ex.principal
        limited = await self.limiter.hit(
            ex.index,
            consumer=None if ex.user is None else f"{principal.type}:{principal.id}",
            roles=principal.roles,
            ip=ex.client,
            stage="after_auth",
            rules=self.rate_rules,
        )
        refused = self._limited(ex, limited)
        early = ex.early
        tighter = not ex.grants or (early is not None and limited.remaining < early.remaining)
        if refused is None and limited.rule and tighter:
            ex.grants = limited.headers()
        return refused

    def _limited(self, ex: Exchange, limited: RateDecision) -> Outcome | None:
        if limited.allowed:
            return None
        ex.context["rule"] = limited.rule
        return Refusal.deny(
            limited.reason,
            "rate limited",
            "too many requests; try again later",
            tuple(limited.headers()),
        )

    async def _authorize(self, ex: Exchange) -> Outcome | None:
        """The edge policies (Cedar): a permit must apply and no forbid."""
        if self.policy is None:
            return None
        route = ex.route
        assert route is not None  # noqa: S101 - the route stage ran
        verdict = self.policy.decide(
            EdgeRequest(
                principal=ex.principal,
                method=ex.method,
                route=route.route_name,
                ip=as_ipv4(ex.client),  # IPv4 ranges hold however it is spelled
                path=ex.path,
                host=ex.host or "",
                service=route.to,
                time=int(self.clock()),
                template=ex.template,
                params=ex.params,
            )
        )
        ex.context["policy"] = ",".join(verdict.policies)
        if verdict.allowed:
            return None
        why = f"policy: {verdict.error}" if verdict.error else "no policy permits"
        return Refusal.deny(verdict.reason, why, "not allowed by policy")

    async def _body(self, ex: Exchange) -> Outcome | None:
        try:
            ex.body = await read_body(ex.receive, ex.headers, self.max_body_bytes)
        except TooLarge:
            return Refusal.deny(
                Reason.REQUEST_TOO_LARGE, "body too large", "the request body is too large"
            )
        except Incomplete:
            return Refusal.deny(
                Reason.REQUEST_INCOMPLETE, "body incomplete", "the request body is incomplete"
            )
        return None

    async def _validate(self, ex: Exchange) -> Outcome | None:
        """The route's contract (:mod:`trustmesh.gateway.validation`): 415, or 400
        naming where and the rule, never the value."""
        validator = self.validators[ex.index]
        if validator is None:
            return None
        query: bytes = ex.scope.get("query_string", b"")
        checked = validator.check(ex.method, ex.template, ex.params, query, ex.headers, ex.body)
        ex.parsed = checked.parsed
        found = checked.violation
        if found is None:
            return None
        ex.context["violation"] = f"{found.location} {found.rule}"
        return Refusal.deny(
            Reason.MEDIA_TYPE_UNSUPPORTED if found.media else Reason.REQUEST_INVALID,
            f"{found.location}: {found.rule}",
            found.message,
            fields=() if found.media else (("location", found.location), ("rule", found.rule)),
        )

    async def _inspect(self, ex: Exchange) -> Outcome | None:
        """The injection filter (:mod:`trustmesh.gateway.waf`), on what the service will
        read: 403 ``request-injection``, the category, where and the check in the event."""
        found = self.filters[ex.index]
        if found is None:
            return None
        waf, action = found
        try:
            refusal = (
                await self._crs_finding(ex, waf)
                if isinstance(waf, CrsFilter)
                else self._fast_finding(ex, waf)
            )
        except InspectionUnavailableError as exc:  # no verdict: never passed uninspected
            return Refusal.error(
                Reason.INSPECTION_UNAVAILABLE, exc.detail, "the request could not be inspected now"
            )
        if refusal is not None and action == "log":  # as a dry run: recorded, and on it goes
            self._would_deny(ex, "waf", refusal)
            return None
        return refusal

    async def _crs_finding(self, ex: Exchange, waf: CrsFilter) -> Refusal | None:
        """crs mode's refusal (its finding in the event), if any: inspected by a worker
        process, or here where the gateway has none (``crs_workers: 0``)."""
        if len(ex.body) > waf.body_limit:  # refused, never passed uninspected
            return Refusal.deny(
                Reason.REQUEST_TOO_LARGE,
                f"body over the injection filter's limit ({waf.body_limit} bytes)",
                "the request body is too large to inspect",
            )
        query = ex.scope.get("query_string", b"")
        raw = ex.scope.get("raw_path") or ex.scope["path"].encode("latin-1")
        request: dict[str, Any] = {
            "method": ex.scope["method"],
            "target": raw + b"?" + query if query else raw,  # as the client sent it
            "headers": ex.headers,
            "body": ex.body,
            "client": ex.scope.get("client") or ("0.0.0.0", 0),  # noqa: S104  # nosec B104 # a placeholder peer address, never bound
        }
        workers = self.crs_workers
        finding = (
            await workers.inspect(waf.spec, **request)
            if workers is not None
            else waf.inspect(**request)
        )
        return None if finding is None else _refusal_of(ex, finding)

    def _fast_finding(self, ex: Exchange, waf: FastFilter) -> Refusal | None:
        """Fast mode's refusal (its finding in the event), if any."""
        finding = waf.inspect(
            path=ex.path,
            query=ex.scope.get("query_string", b""),
            headers=ex.headers,
            content_type=next(
                (v.decode("latin-1") for k, v in ex.headers if k == b"content-type"), None
            ),
            body=ex.body,
            json_strings=ex.parsed.strings if ex.parsed is not None else None,
        )
        return None if finding is None else _refusal_of(ex, finding)

    async def _forward(self, ex: Exchange, send: Send) -> Outcome | None:
        """Forward over mTLS with the internal token; relay the answer (an upstream's
        error in the gateway's shape unless the route relays errors)."""
        route = ex.route
        assert route is not None  # noqa: S101 - the route stage ran
        try:
            answer = await self.upstreams.forward(
                route.to,
                ex.method,
                target_of(ex),
                self._upstream_headers(ex, route),
                ex.body,
                timeout=self.timeouts[ex.index],
            )
        except ResponseTooLargeError as exc:
            return Refusal.error(
                Reason.UPSTREAM_ANSWER_TOO_LARGE, exc.detail, "the service's answer was too large"
            )
        except UpstreamTimeoutError as exc:
            return Refusal.error(
                Reason.UPSTREAM_TIMEOUT,
                f"upstream: {exc.detail}",
                "the service did not answer in time",
            )
        except (TrustmeshError, OSError) as exc:
            detail = exc.detail if isinstance(exc, TrustmeshError) else type(exc).__name__
            return Refusal.error(
                Reason.UPSTREAM_UNAVAILABLE,
                f"upstream: {detail}",
                "the service is unavailable; try again",
            )
        ex.context["status"] = answer.status
        self._emit(
            events.Decision.ALLOW, Reason.REQUEST_FORWARDED, "forwarded", ex.context, ex.user
        )
        extra = [*response_grants(route.cors, ex.headers), *ex.grants]
        if answer.status >= 400 and not route.relay_errors:
            await upstream_error(send, answer, extra)
        else:
            await relay(send, answer, extra)
        return None

    def _upstream_headers(self, ex: Exchange, route: GatewayRoute) -> list[tuple[str, str]]:
        """The request's headers for the upstream: the internal token in place of the
        client's credential, the trace, and only what the upstream may believe."""
        extra = self._granted(ex, route)
        allowed = self.allowed_headers[ex.index]
        return [  # the client that sends sets Content-Length for the body it sends
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in upstream_headers(ex.headers, client=ex.client, extra=extra, allowed=allowed)
            if k != b"content-length"
        ]

    def _minted_token(
        self, index: int, route: GatewayRoute, user: dict[str, Any] | None, credential: object
    ) -> tuple[bytes, float]:
        """The ``Authorization`` value for the upstream, and until when it is reused: the
        internal token for this caller's credential and route, signed once and reused while
        more than a quarter of its life is left (the service's verifier then hits its cache
        too). It is bound to the gateway's current certificate and never outlives the
        caller's credential, which is checked (revocation included) on every request
        before it is reused."""
        now = self.clock()
        thumbprint = self.tls.thumbprint
        # keyed by the credential itself (a token's digest, an API key's id), never by
        # claims another issuer could copy
        key = (credential, index, thumbprint)
        cached = self._minted.get(key)
        if cached is not None and now < cached[0]:
            return cached[1], cached[0]
        claims = internal_claims(
            route=route,
            user=user,
            issuer=self.spiffe_id,
            audience=self.upstream_ids[index],
            thumbprint=thumbprint,
            now=int(now),
            ttl=self.token_ttl,
        )
        value = b"Bearer " + self.key.sign(claims).encode("ascii")
        reuse_until = claims["exp"] - (claims["exp"] - claims["iat"]) / 4
        if len(self._minted) >= _MINTED_CACHE:
            self._minted.pop(next(iter(self._minted)))
        self._minted[key] = (reuse_until, value)
        return value, reuse_until

    def record_kept(self, line: Mapping[str, Any]) -> None:
        """A request nginx answered without asking (:mod:`trustmesh.gateway.nginxlog`): by
        a decision it kept (allowed, as the authorizer decided it), or refused by its own
        count of a limit; or one the authorizer allowed on a route whose limits nginx
        counts (which the authorizer leaves to this record: nginx may still refuse it).
        Recorded as the authorizer records the requests it decides, its trace the
        request's, ``kept`` saying whether the decision was a kept one (KeyError,
        ValueError: not such a line). The event's
        uid is the line's own: its time in milliseconds, then the last 80 bits of the
        request's trace id (a line read twice is one event; uids sort by time, as
        :func:`~trustmesh.events.new_uid`'s do)."""
        index, request, stamp = int(line["route"]), str(line["id"]), float(line["t"])
        if not 0 <= index < len(self.upstream_ids):
            raise ValueError(f"no route {index}")
        if len(request) != 32 or not 0 < stamp < 1e11:  # the request's trace, nginx's $msec
            raise ValueError("not a request's trace and time")
        uid = f"{round(stamp * 1000):012x}{request[12:]}"
        context: dict[str, Any] = {
            "engine": "nginx",
            "method": str(line["method"])[:16],
            "path": str(line["path"])[:512],
            "client": str(line["client"])[:64],
            "route": f"routes[{index}]",
            "status": int(line["status"]),
            "kept": line.get("kept") == "HIT",  # else the authorizer decided it just now
        }
        refused = line.get("limit") == "REJECTED"
        decision = events.Decision.DENY if refused else events.Decision.ALLOW
        reason = Reason.RATE_LIMITED if refused else Reason.POLICY_ALLOW
        if self.metrics is not None:
            self.metrics.decided(decision.value, reason)
        self.recorder.record(
            reason,
            "rate limited" if refused else "authorized",
            decision=decision,
            sub=unquote(str(line["sub"])) or None,
            client_id=unquote(str(line.get("client_id") or "")) or None,
            trace_id=request,
            uid=uid,
            now=datetime.fromtimestamp(stamp, UTC),
            attributes=context,
        )

    def record(
        self, decision: events.Decision, reason: Code, message: str, **attributes: str | int
    ) -> None:
        """An event about the gateway itself (an upstream ejected, a store unreachable)."""
        self._emit(decision, reason, message, dict(attributes))

    def refusals(self, summaries: list[RefusalSummary]) -> None:
        """What the client listener refused in the last interval, one event per reason
        (a flood of connections is a few events, not one each)."""
        for summary in summaries:
            self.record(
                events.Decision.DENY,
                summary.reason,
                "refused at the listener",
                **summary.attributes(),
            )

    def _emit(
        self,
        decision: events.Decision,
        reason: Code,
        message: str,
        context: dict[str, Any],
        user: dict[str, Any] | None = None,
    ) -> None:
        if self.metrics is not None:
            self.metrics.decided(decision.value, reason)
        current = trace.current()
        attributes = {
            k: v for k, v in context.items() if isinstance(v, str | int) and k != "route_name"
        }
        self.recorder.record(
            reason,
            message,
            decision=decision,
            sub=str(user["sub"]) if user else None,
            client_id=str(user["client_id"]) if user and user.get("client_id") else None,
            jti=str(user["jti"]) if user and user.get("jti") else None,
            trace_id=current.trace_id if current else None,
            attributes=attributes,
        )


def _unrouted(decision: RouteDecision) -> Refusal:
    """Why no route takes a request: 405 (with the methods the path allows), 400 (a
    trailing slash no operation declares) or 404."""
    if decision.reason == Reason.METHOD_NOT_ALLOWED:
        allow = ", ".join(decision.allowed_methods).encode()
        return Refusal.deny(
            decision.reason, "method not allowed", "method not allowed", ((b"allow", allow),)
        )
    if decision.reason == Reason.PATH_NON_CANONICAL:
        return Refusal.deny(
            decision.reason, "a trailing slash the route does not declare", _NOT_CANONICAL
        )
    return Refusal.deny(decision.reason, "no route", "no such route")


def _refusal_of(ex: Exchange, finding: Finding) -> Refusal:
    """The injection filter's refusal, its finding in the event."""
    ex.context.update(
        category=finding.category.value, location=finding.location, check=finding.check
    )
    if isinstance(finding, CrsFinding):
        ex.context["score"] = finding.score
    return Refusal.deny(
        Reason.REQUEST_INJECTION,
        f"{finding.category.value} at {finding.location} ({finding.check})",
        "the request was refused",
    )


def _filters(
    gateway: GatewayConfig, config_dir: Path
) -> tuple[tuple[FastFilter | CrsFilter, str] | None, ...]:
    """Each route's injection filter and its action, or None (off)."""
    rule_sets = load_rule_sets(gateway, config_dir)
    filters: list[tuple[FastFilter | CrsFilter, str] | None] = []
    for route, crs in zip(gateway.routes, rule_sets, strict=True):
        config = route.waf or gateway.waf
        if config.mode == "off":
            filters.append(None)
        else:
            filters.append((crs or _FAST, config.action))
    return tuple(filters)


_FAST = FastFilter()


__all__ = ["GatewayApp", "Upstreams"]


def _describe(span: spans.Span, scope: Scope, route: str) -> None:
    """What the gateway's span of a request says: the route, the method and the raw path
    (who asked, and from where, is in the request's audit event: spans may leave for an
    outside OTLP receiver)."""
    method = scope["method"]
    span.name = f"{method} {route}"
    attributes = span.attributes
    attributes["http.request.method"] = method
    attributes["http.route"] = route
    attributes["url.path"] = (scope.get("raw_path") or b"").decode("latin-1")[:512]
