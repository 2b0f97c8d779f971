"""``trustmesh attack``: attack a running stack from outside and report, for each
control, the attack, what was observed and the audit events that recorded it
(:mod:`trustmesh.cli.attack_report` renders them for an auditor).

A control passes only when the stack refused what it had to refuse *and* (where the
stack records such a refusal) the refusal is in the audit log: the evidence is the
event ids. Nothing here weakens the stack: the probes are requests an outsider could
send, and those that need an identity use SVIDs the operator (this machine's user)
issues to the run.

Each probe sends its requests (a fresh TLS connection each, as an attacker's tool would,
but the flood's keep-alive one) and notes, per answer, the trace it names
(``traceresponse``). A control passes when every attack was refused as it must be and,
where the stack records such a refusal, each refused request left a ``deny`` event in
the audit log (looked up afterwards as the operator, by trace id).

What is attacked (the stack's own endpoint files say where):

- ``gateway-bypass-no-svid``: each service called straight, with no client certificate;
- ``gateway-bypass-svid-no-token``: each service called with a valid SVID of the trust
  domain (the operator's) and no token;
- ``token-forged``, ``token-alg-none``, ``token-not-a-jwt``: the gateway given a token
  signed by another key (with the issuer and audience it expects), an unsigned one, and
  one that is not a JWT;
- ``path-traversal``: dot segments in their encodings (``%2e``, ``%252e``, overlong
  UTF-8, backslashes, ``;`` parameters, NUL) aimed at a route the caller may not reach;
- ``sql-injection``, ``xss``: classic payloads in a query parameter;
- ``request-smuggling``: a request with both ``Content-Length`` and
  ``Transfer-Encoding`` followed by a smuggled second request;
- ``secret-unauthorised``: a workload of the trust domain that no secrets policy names
  (an SVID the operator has issued to this process for the run, through a one-time join
  token) logs in to the secrets service and reads a secret another identity holds;
- ``lateral-movement``: a declared service (this process holding its SVID, the same
  way) calls a service the declaration grants it no call to;
- ``token-other-audience``: a real token of the provider, for a service, presented at
  the gateway (a confidential client registered for the run, removed after);
- ``token-bound-replay``: a token bound to a workload's certificate (RFC 8705),
  presented at the gateway over a connection that presents no certificate;
- ``brute-force``: ten wrong passwords for one login through the login form; the
  evidence is the brute-force alert the collector raised, and its events;
- ``audit-tamper``: a copy of the live audit log (SQLite) with a record altered, one
  deleted, and its newest records cut off: verify, with the checkpoints' public key,
  the stored checkpoints and the checkpoint file, must name each;
- ``rate-limit``: the declared per-address limit exceeded (last: it leaves this address
  limited for a while).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from limits import parse as parse_limit

from trustmesh import crypto
from trustmesh.config import TrustmeshConfig
from trustmesh.config.gateway import GatewayRoute
from trustmesh.errors import UsageError
from trustmesh.platform.endpoints import DISCOVERY, ENDPOINTS, instance, read_json

__all__ = ["CONTROLS", "Control", "Stack", "run_attacks"]

#: Seconds each request may take; an attack that hangs the stack counts as not refused.
TIMEOUT: Final = 10.0
#: Seconds to wait for a refusal's event to reach the audit log.
EVIDENCE_WAIT: Final = 10.0


@dataclass(frozen=True)
class Control:
    """One control's verdict: the attack, what was observed, and the audit events that
    recorded the refusals."""

    name: str
    passed: bool
    attack: str
    observed: str
    event_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "attack": self.attack,
            "observed": self.observed,
            "event_ids": list(self.event_ids),
        }


@dataclass(frozen=True)
class Stack:
    """Where a running stack listens, from the files its components write."""

    config: TrustmeshConfig
    state: Path
    gateway: str  # the public URL
    edge_ca: Path
    issuer: str | None
    services: dict[str, str]  # name → the service's own mTLS URL
    audit: str | None
    #: the test-only switches this run honours (``audit-chain``: the verifier it runs)
    defences_off: frozenset[str] = frozenset()

    @classmethod
    def find(
        cls, config: TrustmeshConfig, state: Path, defences_off: frozenset[str] = frozenset()
    ) -> Stack:
        """The stack running on ``state``; UsageError when there is none to attack."""
        if config.gateway is None:
            raise UsageError("the declaration has no gateway: nothing faces the outside")
        gateway = (read_json(state / ENDPOINTS["gateway"][0]) or {}).get("url")
        edge_ca = state / "edge" / "ca.pem"
        if not isinstance(gateway, str) or not edge_ca.exists():
            raise UsageError(f"no running gateway on {state} (start the stack: trustmesh up)")
        discovery = read_json(state / DISCOVERY) or {}
        services = {}
        for name, service in config.services.items():
            if service.external:
                continue
            url = (instance(discovery, name) or {}).get("url")
            if isinstance(url, str):
                services[name] = url
        issuer = (read_json(state / ENDPOINTS["auth"][0]) or {}).get("issuer")
        audit = (read_json(state / ENDPOINTS["audit"][0]) or {}).get("url")
        return cls(
            config,
            state,
            gateway,
            edge_ca,
            issuer if isinstance(issuer, str) else None,
            services,
            audit if isinstance(audit, str) else None,
            defences_off,
        )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def trace_id(self) -> str | None:
        """The trace the answer names (W3C ``traceresponse``: version-trace-span-flags)."""
        parts = self.headers.get("traceresponse", "").split("-")
        return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None

    def __str__(self) -> str:
        reason = ""
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            reason = str(json.loads(self.body).get("error", ""))
        return f"{self.status} {reason}".strip()


@dataclass
class Outcome:
    """A probe's result before the evidence is looked up."""

    name: str
    attack: str
    observed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    traces: list[str] = field(default_factory=list)  # each must hold a deny event
    events: list[str] = field(default_factory=list)  # evidence found otherwise (an alert's)
    recorded: bool = True  # whether a refusal must be in the audit log

    def refused(self, what: str, answer: Answer, allowed: Iterable[int]) -> None:
        """Note an answer that must be one of ``allowed`` statuses (and carry a trace,
        when refusals are recorded)."""
        self.observed.append(f"{what}: {answer}")
        if answer.status not in set(allowed):
            self.failures.append(f"{what}: answered {answer.status}")
        elif self.recorded:
            if answer.trace_id is None:
                self.failures.append(f"{what}: the answer names no trace")
            else:
                self.traces.append(answer.trace_id)


class Edge:
    """Requests to the gateway's public listener, verified against the edge CA."""

    def __init__(self, url: str, ca: Path) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.context = ssl.create_default_context(cafile=str(ca))

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=TIMEOUT
        )

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        connection: http.client.HTTPSConnection | None = None,
    ) -> Answer:
        conn = connection or self.connection()
        try:
            conn.request(method, target, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
        finally:
            if connection is None:
                conn.close()


# --- tokens --------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unsigned(claims: dict[str, Any]) -> str:
    """A JWT with ``"alg": "none"`` and no signature (RFC 7519 §6)."""
    header = {"alg": "none", "typ": "at+jwt"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _claims(stack: Stack) -> dict[str, Any]:
    """What a real access token for the gateway claims (the issuer and audience it
    expects, a user, a fresh lifetime): only the signature is wrong."""
    now = int(time.time())
    return {
        "iss": stack.issuer or "https://trustmesh.invalid",
        "aud": stack.config.component_spiffe_id("gateway"),
        "sub": "attacker",
        "client_id": "attacker",
        "scope": "openid",
        "roles": ["admin"],
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(16),
    }


def _routes(stack: Stack) -> list[GatewayRoute]:
    return list(stack.config.gateway.routes) if stack.config.gateway is not None else []


def _protected(stack: Stack) -> str:
    """A route of the gateway that needs a token (a route without ``anonymous``)."""
    for route in _routes(stack):
        if "anonymous" not in route.auth and "GET" in route.methods:
            return route.path
    raise UsageError("the gateway has no GET route that needs a token to attack")


def _open_route(stack: Stack) -> str:
    """A path the gateway serves: an anonymous route's operation if there is one."""
    for route in _routes(stack):
        if "anonymous" in route.auth:
            return route.path + "/x"
    return _protected(stack)


def probe_tokens(stack: Stack, edge: Edge) -> list[Outcome]:
    target = _protected(stack)
    attacker = crypto.generate_key()
    kid = secrets.token_urlsafe(8)
    cases = [
        (
            "token-forged",
            "a token with the issuer and audience the gateway expects, signed by another key",
            crypto.sign_jwt(_claims(stack), attacker, kid=kid, typ="at+jwt"),
        ),
        (
            "token-alg-none",
            'an unsigned token ("alg": "none") with the claims the gateway expects',
            _unsigned(_claims(stack)),
        ),
        ("token-not-a-jwt", "a bearer credential that is not a JWT", secrets.token_urlsafe(40)),
    ]
    outcomes = []
    for name, attack, token in cases:
        outcome = Outcome(name, f"GET {target} with {attack}")
        answer = edge.request("GET", target, {"Authorization": f"Bearer {token}"})
        outcome.refused(f"GET {target}", answer, {401})
        outcomes.append(outcome)
    return outcomes


# --- paths and payloads --------------------------------------------------------------

#: Dot segments, spelled every way a server might decode one, aimed above the route.
TRAVERSALS: Final = (
    "/../admin/orders",
    "/..%2fadmin%2forders",
    "/%2e%2e/admin/orders",
    "/%2E%2E%2Fadmin%2Forders",
    "/%252e%252e/admin/orders",
    "/%c0%ae%c0%ae/admin/orders",
    "/..%5cadmin%5corders",
    "/..\\admin\\orders",
    "/..;/admin/orders",
    "/.%2e/admin/orders",
    "/x%00/../../admin/orders",
    "/%ef%bc%8e%ef%bc%8e/admin/orders",
)
SQL_INJECTION: Final = (
    "1' OR '1'='1",
    "1 UNION SELECT username, password FROM users--",
    "'; DROP TABLE orders; --",
    "1' AND SLEEP(5)--",
)
XSS: Final = (
    "<script>alert(document.cookie)</script>",
    '"><img src=x onerror=alert(1)>',
    "<svg/onload=alert(1)>",
    "javascript:alert(1)//",
)


def probe_paths(stack: Stack, edge: Edge) -> list[Outcome]:
    base = _open_route(stack).rsplit("/", 1)[0]
    outcome = Outcome(
        "path-traversal",
        f"{len(TRAVERSALS)} encodings of dot segments under {base}, aimed at another route",
    )
    for trick in TRAVERSALS:
        target = base + trick
        outcome.refused(f"GET {target}", edge.request("GET", target), {400, 403, 404})
    return [outcome]


def probe_injection(stack: Stack, edge: Edge) -> list[Outcome]:
    target = _open_route(stack)
    outcomes = []
    for name, kind, payloads in (
        ("sql-injection", "SQL injection", SQL_INJECTION),
        ("xss", "cross-site scripting", XSS),
    ):
        outcome = Outcome(name, f"{len(payloads)} {kind} payloads in a query parameter")
        for payload in payloads:
            answer = edge.request("GET", f"{target}?q={quote(payload, safe='')}")
            outcome.refused(f"q={payload}", answer, {403})
        outcomes.append(outcome)
    return outcomes


def probe_smuggling(stack: Stack, edge: Edge) -> list[Outcome]:
    """CL.TE: a front end that took Content-Length would forward the smuggled request as
    the next one. The gateway must refuse the pair and close the connection."""
    target = _open_route(stack)
    smuggled = f"GET {_protected(stack)} HTTP/1.1\r\nHost: {edge.host}\r\n\r\n"
    chunked = "0\r\n\r\n" + smuggled
    raw = (
        f"POST {target} HTTP/1.1\r\nHost: {edge.host}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(chunked)}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
    ).encode()
    outcome = Outcome(
        "request-smuggling",
        "a request with both Content-Length and Transfer-Encoding, a second request inside",
        recorded=False,
    )
    try:
        plain = socket.create_connection((edge.host, edge.port), timeout=TIMEOUT)
        with plain, edge.context.wrap_socket(plain, server_hostname=edge.host) as tls:
            tls.sendall(raw)
            received = _read_until_closed(tls)
    except OSError as exc:
        outcome.observed.append(f"the connection failed: {exc}")
        outcome.failures.append("no answer to judge")
        return [outcome]
    statuses = [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.")]
    outcome.observed.append(
        "answers: " + (", ".join(s.decode("latin-1") for s in statuses) or "none")
    )
    if len(statuses) != 1 or b" 400 " not in statuses[0] + b" ":
        outcome.failures.append("the pair was not refused with a single 400")
    for line in received.split(b"\r\n"):
        if line.lower().startswith(b"traceresponse:"):
            trace = line.split(b":", 1)[1].strip().decode("latin-1").split("-")
            if len(trace) == 4:
                outcome.traces.append(trace[1])
                outcome.recorded = True
    return [outcome]


def _read_until_closed(tls: ssl.SSLSocket) -> bytes:
    chunks = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = tls.recv(65536)
        except (TimeoutError, ssl.SSLError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def probe_rate_limit(stack: Stack, edge: Edge) -> list[Outcome]:
    declared = stack.config.gateway.rate_limits if stack.config.gateway is not None else []
    limits = [r for r in declared if r.per == "ip"]
    outcome = Outcome("rate-limit", "requests from one address past its declared limit")
    if not limits:
        outcome.failures.append("no per-address limit is declared")
        return [outcome]
    allowed = min(parse_limit(rule.limit).amount for rule in limits)
    budget = allowed + allowed // 5 + 20
    outcome.attack = f"up to {budget} requests from one address (its limit: {allowed})"
    target = _open_route(stack)
    connection = edge.connection()
    try:
        for sent in range(1, budget + 1):
            answer = edge.request("GET", target, connection=connection)
            if answer.status == 429:
                outcome.observed.append(
                    f"429 after {sent} requests, Retry-After: {answer.headers.get('retry-after')}"
                )
                outcome.refused("the first refused request", answer, {429})
                if "retry-after" not in answer.headers:
                    outcome.failures.append("the 429 says not when to retry")
                return [outcome]
            if answer.headers.get("connection", "").lower() == "close":
                connection.close()
                connection = edge.connection()
    finally:
        connection.close()
    outcome.observed.append(f"no 429 in {budget} requests")
    outcome.failures.append("the flood was not limited")
    return [outcome]


# --- around the gateway --------------------------------------------------------------


def probe_bypass_no_svid(stack: Stack, edge: Edge) -> list[Outcome]:
    outcome = Outcome(
        "gateway-bypass-no-svid",
        f"each service ({', '.join(sorted(stack.services)) or 'none'}) called straight, "
        "with no client certificate",
        recorded=False,
    )
    if not stack.services:
        outcome.failures.append("no service is running to attack")
    for name, url in sorted(stack.services.items()):
        parts = urlsplit(url)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # whoever answers: the point is who it admits
        conn = http.client.HTTPSConnection(
            parts.hostname or "127.0.0.1", parts.port or 443, context=context, timeout=TIMEOUT
        )
        try:
            conn.request("GET", "/")
            answer = conn.getresponse()
            answer.read()
            outcome.observed.append(f"{name}: answered {answer.status}")
            outcome.failures.append(f"{name} answered a caller with no certificate")
        except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError) as exc:
            outcome.observed.append(f"{name}: refused ({type(exc).__name__})")
        finally:
            conn.close()
    return [outcome]


async def probe_bypass_svid_no_token(stack: Stack) -> list[Outcome]:
    """A valid SVID of the trust domain, the operator's, and no token: the services take
    calls from the declared callers only, and users' requests only with the gateway's
    token."""
    from trustmesh.cli._admin import as_operator
    from trustmesh.sdk import trace
    from trustmesh.sdk.client import ServiceClient

    outcome = Outcome(
        "gateway-bypass-svid-no-token",
        "each service called straight with a valid SVID of the trust domain and no token",
    )
    if not stack.services:
        outcome.failures.append("no service is running to attack")
        return [outcome]
    async with as_operator(stack.state, stack.config) as operator:
        for name, url in sorted(stack.services.items()):
            ours = trace.TraceParent(secrets.token_hex(16), secrets.token_hex(8), "01")
            current = trace.use(ours)  # the call is a span of this trace: found by it
            try:
                async with ServiceClient(
                    operator.tls, url, stack.config.spiffe_id(name), retries=0
                ) as client:
                    response = await client.get("/")
            finally:
                trace.reset(current)
            answer = Answer(response.status, {"traceresponse": ours.header()}, b"")
            with contextlib.suppress(ValueError):
                answer.body = json.dumps(response.json()).encode()
            outcome.refused(name, answer, {401, 403})
    return [outcome]


# --- as other identities ------------------------------------------------------------


@contextlib.asynccontextmanager
async def _as(stack: Stack, operator: Any, spiffe_id: str) -> AsyncIterator[Any]:
    """This process also holding ``spiffe_id``: a one-time join token the operator asks
    the identity service for (its admin API, as SPIRE's), redeemed at once. The binding
    ends with this process; the issuance is in the audit log like any other."""
    from trustmesh.cli._admin import admin_request, redeemed

    body = {"spiffe_id": spiffe_id, "ttl": 120}
    made = await admin_request(
        operator, stack.state, "identity", "POST", "/admin/v1/join-tokens", body
    )
    async with redeemed(stack.state, str(made["token"]), spiffe_id) as tls:
        yield tls


async def _traced_call(
    tls: Any, url: str, expected: str, method: str, path: str, **kwargs: Any
) -> Answer:
    """One request over mTLS as ``tls``'s identity, inside a trace of its own (the
    callee records its decision under it)."""
    from trustmesh.sdk import trace
    from trustmesh.sdk.client import ServiceClient

    ours = trace.TraceParent(secrets.token_hex(16), secrets.token_hex(8), "01")
    current = trace.use(ours)  # the call is a span of this trace: found by it
    try:
        async with ServiceClient(tls, url, expected, retries=0) as client:
            response = await client.request(method, path, **kwargs)
    finally:
        trace.reset(current)
    body = b""
    with contextlib.suppress(ValueError, TypeError):
        body = json.dumps(response.json()).encode()
    return Answer(response.status, {"traceresponse": ours.header()}, body)


def _secret_path(stack: Stack) -> tuple[str, str] | None:
    """A KV path some identity may read, and that identity (from the declaration)."""
    if stack.config.secrets is None:
        return None
    for grant in stack.config.secrets.policies:
        for pattern, capabilities in grant.allow.items():
            if "read" in capabilities and pattern.startswith("secret/data/"):
                return pattern.replace("*", "processor"), grant.identity
    return None


async def probe_identities(stack: Stack) -> list[Outcome]:
    """As identities the declaration grants nothing: a workload of the trust domain that
    no policy names reads another's secret; a declared service calls a service it was
    not granted (lateral movement)."""
    from trustmesh.cli._admin import as_operator

    secret = Outcome(
        "secret-unauthorised", "a workload no secrets policy names reads another's secret"
    )
    lateral = Outcome("lateral-movement", "a declared service calls a service it was not granted")
    found = _secret_path(stack)
    secrets_url = (read_json(stack.state / ENDPOINTS["secrets"][0]) or {}).get("url")
    pair = _ungranted_pair(stack)
    async with as_operator(stack.state, stack.config) as operator:
        if found is None or not isinstance(secrets_url, str):
            secret.failures.append("no secrets service or readable secret is declared")
        else:
            path, owner = found
            stranger = f"spiffe://{stack.config.trust_domain}/attack/probe-{secrets.token_hex(4)}"
            secret.attack = f"{stranger} reads {path} (granted to {owner} only)"
            secrets_id = stack.config.component_spiffe_id("secrets")
            async with _as(stack, operator, stranger) as tls:
                login = await _traced_call(
                    tls, secrets_url, secrets_id, "POST", "/v1/auth/cert/login", json={}
                )
                if login.status != 200:
                    secret.refused("login", login, {401, 403})
                else:
                    token = json.loads(login.body)["auth"]["client_token"]
                    read = await _traced_call(
                        tls, secrets_url, secrets_id, "GET", f"/v1/{path}",
                        headers={"X-Vault-Token": token},
                    )  # fmt: skip
                    secret.refused(f"GET /v1/{path}", read, {403})
        if pair is None:
            lateral.failures.append("no two running services to test the call graph with")
        else:
            caller, callee = pair
            url = stack.services[callee]
            lateral.attack = f"{caller} calls {callee} (the declaration grants it no call there)"
            async with _as(stack, operator, stack.config.spiffe_id(caller)) as tls:
                answer = await _traced_call(tls, url, stack.config.spiffe_id(callee), "GET", "/")
                lateral.refused(f"{caller} → {callee}", answer, {403})
    return [secret, lateral]


def _ungranted_pair(stack: Stack) -> tuple[str, str] | None:
    """Two running services, the first granted no call to the second."""
    granted = {(call.from_, call.to) for call in stack.config.calls}
    names = sorted(stack.services)
    for caller in names:
        for callee in names:
            if caller != callee and (caller, callee) not in granted:
                return caller, callee
    return None


# --- the identity provider -----------------------------------------------------------

#: Failed logins the brute force makes (the shipped rule alerts at ten within a minute).
GUESSES: Final = 10
REDIRECT: Final = "http://127.0.0.1/attack/callback"


class _Clients:
    """OAuth clients the operator registers for the run, removed when it ends."""

    def __init__(self, stack: Stack, operator: Any) -> None:
        self.stack, self.operator = stack, operator
        self.made: list[str] = []

    async def add(self, body: dict[str, Any]) -> dict[str, Any]:
        from trustmesh.cli._admin import admin_request

        path = "/admin/v1/clients"
        doc = await admin_request(self.operator, self.stack.state, "auth", "POST", path, body)
        self.made.append(str(body["client_id"]))
        return dict(doc)

    async def __aenter__(self) -> _Clients:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        from trustmesh.cli._admin import admin_request

        for client_id in self.made:
            with contextlib.suppress(Exception):
                path = f"/admin/v1/clients/{client_id}"
                await admin_request(self.operator, self.stack.state, "auth", "DELETE", path)


async def probe_provider(stack: Stack) -> list[Outcome]:
    """With clients the operator registers for the run (removed after): a real token
    for another audience, and a certificate-bound one replayed without its
    certificate, presented at the gateway; a password guessed online for one login."""
    from trustmesh.cli._admin import as_operator

    auth = read_json(stack.state / ENDPOINTS["auth"][0]) or {}
    public, mtls = auth.get("public_url"), auth.get("url")
    outcomes = [
        Outcome("token-other-audience", "a real token of the provider, for another audience"),
        Outcome(
            "token-bound-replay",
            "a token bound to a workload's certificate, presented without that certificate",
        ),
        Outcome("brute-force", f"{GUESSES} wrong passwords for one login within a minute"),
    ]
    if not isinstance(public, str) or not isinstance(mtls, str) or not stack.services:
        for outcome in outcomes:
            outcome.failures.append("no identity provider with a public listener is running")
        return outcomes
    other, bound, brute = outcomes
    edge = Edge(stack.gateway, stack.edge_ca)
    target = _protected(stack)
    suffix = secrets.token_hex(3)
    async with (
        as_operator(stack.state, stack.config) as operator,
        _Clients(stack, operator) as clients,
    ):
        service = sorted(stack.services)[0]
        confidential = await clients.add(
            {"client_id": f"attack-aud-{suffix}", "method": "client_secret_basic",
             "audiences": [service]}
        )  # fmt: skip
        token = await _client_credentials(public, stack.edge_ca, confidential)
        other.attack = f"GET {target} with a real token of the provider for {service}"
        answer = await asyncio.to_thread(
            edge.request, "GET", target, {"Authorization": f"Bearer {token}"}
        )
        other.refused(f"GET {target}", answer, {401})
        await _bound_replay(stack, operator, clients, mtls, suffix, bound)
        await clients.add(
            {"client_id": f"attack-login-{suffix}", "method": "none",
             "redirect_uris": [REDIRECT],
             "audiences": [stack.config.component_spiffe_id("gateway")]}
        )  # fmt: skip
        await _brute_force(stack, operator, public, f"attack-login-{suffix}", brute)
    return outcomes


async def _bound_replay(
    stack: Stack, operator: Any, clients: _Clients, mtls: str, suffix: str, outcome: Outcome
) -> None:
    """A workload's token, bound to its certificate (RFC 8705), presented at the
    gateway over a connection that presents none."""
    stranger = f"spiffe://{stack.config.trust_domain}/attack/probe-{suffix}"
    client_id = f"attack-bound-{suffix}"
    await clients.add(
        {"client_id": client_id, "method": "tls_client_auth", "spiffe_id": stranger,
         "audiences": [stack.config.component_spiffe_id("gateway")]}
    )  # fmt: skip
    async with _as(stack, operator, stranger) as tls:
        issued = await _traced_call(
            tls, mtls, stack.config.component_spiffe_id("auth"), "POST", "/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": client_id},
        )  # fmt: skip
    if issued.status != 200:
        outcome.failures.append(f"the provider issued no bound token ({issued})")
        return
    replayed = json.loads(issued.body)["access_token"]
    target = _protected(stack)
    outcome.attack = (
        f"GET {target} with a token bound to {stranger}'s certificate, over a connection "
        "presenting no certificate"
    )
    edge = Edge(stack.gateway, stack.edge_ca)
    answer = await asyncio.to_thread(
        edge.request, "GET", target, {"Authorization": f"Bearer {replayed}"}
    )
    outcome.refused(f"GET {target}", answer, {401})


async def _client_credentials(public: str, ca: Path, client: dict[str, Any]) -> str:
    import aiohttp

    context = ssl.create_default_context(cafile=str(ca))
    basic = aiohttp.BasicAuth(str(client["client_id"]), str(client["client_secret"]))
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(
            public + "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=basic,
            ssl=context,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        ) as response,
    ):
        doc = await response.json(content_type=None)
    if response.status != 200 or not isinstance(doc, dict) or "access_token" not in doc:
        raise UsageError(f"the provider issued no client-credentials token: {response.status}")
    return str(doc["access_token"])


async def _brute_force(
    stack: Stack, operator: Any, public: str, client_id: str, outcome: Outcome
) -> None:
    """Guesses through the login form, as a browser sends them; then the alert the
    shipped rule raises, looked for in the collector (its events are the evidence)."""
    import aiohttp

    login = f"attack-{secrets.token_hex(4)}"
    outcome.attack = f"{GUESSES} wrong passwords for the login {login!r} through the login form"
    context = ssl.create_default_context(cafile=str(stack.edge_ca))
    verifier = secrets.token_urlsafe(48)
    challenge = _b64(hashlib.sha256(verifier.encode()).digest())
    query = (
        f"response_type=code&client_id={client_id}&redirect_uri={quote(REDIRECT, safe='')}"
        f"&scope=openid&state={secrets.token_urlsafe(8)}&nonce={secrets.token_urlsafe(8)}"
        f"&code_challenge={challenge}&code_challenge_method=S256"
    )
    statuses: list[int] = []
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, trust_env=False) as browser:
        for _ in range(GUESSES):
            status = await _guess(browser, context, f"{public}/oauth2/authorize?{query}", login)
            if status is None:
                outcome.failures.append("no login form to guess at")
                return
            statuses.append(status)
    admitted = [s for s in statuses if s in (302, 303)]
    outcome.observed.append(f"{len(statuses)} guesses answered {sorted(set(statuses))}")
    if admitted:
        outcome.failures.append(f"{len(admitted)} guesses were let in")
    alert = await _alert(stack, operator, "Brute-force login against one account", login)
    if alert is None:
        outcome.failures.append("no brute-force alert in the audit log")
    else:
        outcome.observed.append(f"alert {alert['uid']} ({alert['level']})")
        outcome.events.extend(str(uid) for uid in alert.get("event_uids", []))


async def _guess(browser: Any, context: ssl.SSLContext, start: str, login: str) -> int | None:
    """One wrong password for ``login``, as a browser sends it: the authorization
    request, its login form, the form posted; the answer's status (None: no form)."""
    import re

    public = start.split("/oauth2/", 1)[0]
    first = await browser.get(start, allow_redirects=False, ssl=context)
    where = first.headers.get("Location", "")
    form = await browser.get(
        where if where.startswith("http") else public + where, allow_redirects=False, ssl=context
    )
    page = await form.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    nxt = re.search(r'name="next" value="([^"]+)"', page)
    if csrf is None or nxt is None:
        return None
    fields = {
        "csrf": csrf[1],
        "next": nxt[1].replace("&amp;", "&"),
        "username": login,
        "password": secrets.token_urlsafe(12),
        "otp": "",
    }
    sent = await browser.post(public + "/login", data=fields, allow_redirects=False, ssl=context)
    return int(sent.status)


async def _alert(stack: Stack, operator: Any, title: str, login: str) -> dict[str, Any] | None:
    """The collector's alert of ``title`` grouped on ``login`` (waiting for it)."""
    from trustmesh.sdk.client import ServiceClient

    if stack.audit is None:
        return None
    deadline = time.monotonic() + EVIDENCE_WAIT
    async with ServiceClient(
        operator.tls, stack.audit, stack.config.component_spiffe_id("audit"), retries=0
    ) as audit:
        while time.monotonic() < deadline:
            answer = await audit.get("/v1/alerts?limit=1000")
            if answer.status == 200:
                for alert in answer.json().get("alerts", []):
                    group = alert.get("group") or {}
                    if alert.get("title") == title and login in group.values():
                        return dict(alert)
            await asyncio.sleep(0.25)
    return None


# --- the audit log ------------------------------------------------------------------


def _log_file(stack: Stack) -> Path | None:
    """The collector's SQLite log, where it keeps one (PostgreSQL's is not a file)."""
    audit = stack.config.audit
    if audit is None or audit.database is not None:
        return None
    path = stack.state / "audit" / "audit.db"
    return path if path.exists() else None


async def probe_audit_log(stack: Stack) -> list[Outcome]:
    """Tampering an attacker with the database file would try, each on a copy of the
    live log (the log itself is never touched): a record altered, one deleted, the
    newest ones cut off. ``verify`` (the project's verifier, with the checkpoints' key
    the collector publishes to the operator, the stored checkpoints and the checkpoint
    file) must name each."""
    from trustmesh.cli._admin import as_operator
    from trustmesh.sdk.client import ServiceClient

    outcome = Outcome(
        "audit-tamper",
        "a copy of the live audit log altered, a record deleted, the newest records cut "
        "off; verify run on each",
        recorded=False,
    )
    log_file = _log_file(stack)
    if log_file is None or stack.audit is None:
        outcome.failures.append("no SQLite audit log to copy (PostgreSQL: not run)")
        return [outcome]
    async with (
        as_operator(stack.state, stack.config) as operator,
        ServiceClient(
            operator.tls, stack.audit, stack.config.component_spiffe_id("audit"), retries=0
        ) as audit,
    ):
        answer = await audit.get("/v1/keys")
    if answer.status != 200:
        outcome.failures.append(f"the collector gave no checkpoint key ({answer.status})")
        return [outcome]
    keys = {
        str(k["key_id"]): base64.urlsafe_b64decode(str(k["public_key"]) + "==")
        for k in answer.json()["keys"]
    }
    await asyncio.to_thread(_tamper_and_verify, stack, log_file, keys, outcome)
    return [outcome]


def _tamper_and_verify(
    stack: Stack, log_file: Path, keys: dict[str, bytes], outcome: Outcome
) -> None:
    import sqlite3
    import tempfile

    from trustmesh.audit.checkpoint_file import read_checkpoints

    external_file = stack.state / "audit" / "checkpoints.jsonl"
    external = read_checkpoints(external_file) if external_file.exists() else []
    with tempfile.TemporaryDirectory(prefix="tm-attack-") as folder:
        pristine = Path(folder) / "copy.db"
        source = sqlite3.connect(f"file:{log_file}?mode=ro", uri=True)
        try:
            with sqlite3.connect(pristine) as target:
                source.backup(target)
        finally:
            source.close()
        links = "audit-chain" not in stack.defences_off  # off only under that test switch
        intact, last = _verify_copy(pristine, keys, external, links)
        if intact is not None:
            outcome.observed.append(f"the copy as taken: {intact}")
            outcome.failures.append("the log does not verify as it is")
            return
        signed = max((c.last_seq for c in external), default=0)
        if last < 3 or signed < 2:
            outcome.failures.append(f"too short a log to tamper with ({last} records)")
            return
        middle = max(1, signed // 2)
        with contextlib.closing(sqlite3.connect(pristine)) as connection:
            (body,) = connection.execute(
                "SELECT body FROM audit_records WHERE seq = ?", (middle,)
            ).fetchone()
        forged = bytes(body).replace(b'"decision":"deny"', b'"decision":"allow"', 1)
        if forged == bytes(body):
            forged = bytes(body).replace(b"}", b',"note":"edited"}', 1)
        cases = (
            ("altered", f"record {middle}'s body changed",
             "UPDATE audit_records SET body = ? WHERE seq = ?", (forged, middle)),
            ("deleted", f"record {middle} deleted", "DELETE FROM audit_records WHERE seq = ?",
             (middle,)),
            ("truncated", f"records {signed} to {last} cut off",
             "DELETE FROM audit_records WHERE seq >= ?", (signed,)),
        )  # fmt: skip
        for expected, what, sql, params in cases:
            copy = Path(folder) / f"{expected}.db"
            copy.write_bytes(pristine.read_bytes())
            with sqlite3.connect(copy) as connection:
                connection.execute(sql, params)
            finding, _ = _verify_copy(copy, keys, external, links)
            if finding is None:
                outcome.observed.append(f"{what}: verify found nothing")
                outcome.failures.append(f"{what}: not detected")
            else:
                outcome.observed.append(f"{what}: verify names {finding}")


def _verify_copy(
    path: Path, keys: dict[str, bytes], external: list[Any], links: bool = True
) -> tuple[str | None, int]:
    """The first problem ``verify`` finds in the SQLite log at ``path`` (None: intact),
    and its last seq (``links``: see :class:`~trustmesh.audit.verifier.ChainVerifier`)."""
    import sqlite3

    from trustmesh.audit.chain import Checkpoint, checkpoint_from_line
    from trustmesh.audit.verifier import Record, verify_chain

    with contextlib.closing(sqlite3.connect(path)) as connection:
        rows = connection.execute(
            "SELECT seq, body, hash FROM audit_records ORDER BY seq"
        ).fetchall()
        stored: list[Any] = [
            Checkpoint(seq, bytes(h), count, at, bytes(prev), kid, bytes(sig))
            for seq, h, count, at, prev, kid, sig in connection.execute(
                "SELECT last_seq, last_hash, count, time, previous, key_id, signature "
                "FROM audit_checkpoints ORDER BY last_seq"
            )
        ]
        stored += [
            checkpoint_from_line(bytes(line))
            for (line,) in connection.execute("SELECT line FROM audit_prunes ORDER BY first_seq")
        ]
    records = [Record(seq, bytes(body), bytes(digest)) for seq, body, digest in rows]
    finding = verify_chain(records, keys, stored, external=external, links=links)
    last = rows[-1][0] if rows else 0
    return (None if finding is None else f"{finding.kind} at record {finding.seq}"), last


# --- the run ------------------------------------------------------------------------

Probe = Callable[[Stack, Edge], list[Outcome]]
#: The controls in the order they run (the flood last: it leaves this address limited).
CONTROLS: Final[tuple[str, ...]] = (
    "gateway-bypass-no-svid",
    "gateway-bypass-svid-no-token",
    "token-forged",
    "token-alg-none",
    "token-not-a-jwt",
    "path-traversal",
    "sql-injection",
    "xss",
    "request-smuggling",
    "secret-unauthorised",
    "lateral-movement",
    "token-other-audience",
    "token-bound-replay",
    "brute-force",
    "audit-tamper",
    "rate-limit",
)


async def run_attacks(stack: Stack, only: Iterable[str] = ()) -> list[Control]:
    """Every control (or those named in ``only``), attacked and judged with the audit
    log's evidence."""
    chosen = set(only)
    unknown = chosen - set(CONTROLS)
    if unknown:
        raise UsageError(f"no such control: {sorted(unknown)[0]} (controls: {', '.join(CONTROLS)})")
    edge = Edge(stack.gateway, stack.edge_ca)
    outcomes: list[Outcome] = []

    async def run(names: set[str], probe: Awaitable[list[Outcome]]) -> None:
        """A probe whose controls are wanted; one that breaks fails its controls (an
        attack the stack made impossible to judge is not one it withstood)."""
        if chosen and not chosen & names:
            probe.close()  # type: ignore[attr-defined]
            return
        try:
            outcomes.extend(await probe)
        except Exception as exc:  # noqa: BLE001 - reported as the controls' failure
            for name in sorted(names, key=CONTROLS.index):
                broken = Outcome(name, "(the probe broke)")
                broken.failures.append(f"the probe failed: {type(exc).__name__}: {exc}")
                outcomes.append(broken)

    def sync(probe: Probe) -> Awaitable[list[Outcome]]:
        return asyncio.to_thread(probe, stack, edge)

    await run({"gateway-bypass-no-svid"}, sync(probe_bypass_no_svid))
    await run({"gateway-bypass-svid-no-token"}, probe_bypass_svid_no_token(stack))
    await run({"secret-unauthorised", "lateral-movement"}, probe_identities(stack))
    provider = {"token-other-audience", "token-bound-replay", "brute-force"}
    await run(provider, probe_provider(stack))
    await run({"audit-tamper"}, probe_audit_log(stack))
    await run({"token-forged", "token-alg-none", "token-not-a-jwt"}, sync(probe_tokens))
    await run({"path-traversal"}, sync(probe_paths))
    await run({"sql-injection", "xss"}, sync(probe_injection))
    await run({"request-smuggling"}, sync(probe_smuggling))
    await run({"rate-limit"}, sync(probe_rate_limit))
    outcomes = [o for o in outcomes if not chosen or o.name in chosen]
    outcomes.sort(key=lambda outcome: CONTROLS.index(outcome.name))
    evidence = await _evidence(stack, [t for o in outcomes for t in o.traces])
    return [_judged(outcome, evidence) for outcome in outcomes]


def _judged(outcome: Outcome, evidence: dict[str, list[str]]) -> Control:
    failures = list(outcome.failures)
    ids: list[str] = list(outcome.events)
    for trace in outcome.traces:
        found = evidence.get(trace, [])
        if not found:
            failures.append(f"no deny event in the audit log for trace {trace}")
        ids += found
    observed = "; ".join(outcome.observed)
    if failures:
        observed += " — FAILED: " + "; ".join(failures)
    return Control(outcome.name, not failures, outcome.attack, observed, tuple(ids))


async def _evidence(stack: Stack, traces: list[str]) -> dict[str, list[str]]:
    """The uids of the deny events each trace left in the audit log (as the operator;
    waiting up to :data:`EVIDENCE_WAIT` seconds for deliveries)."""
    if not traces or stack.audit is None:
        return {}
    from trustmesh.cli._admin import as_operator
    from trustmesh.sdk.client import ServiceClient

    found: dict[str, list[str]] = {}
    deadline = time.monotonic() + EVIDENCE_WAIT
    async with (
        as_operator(stack.state, stack.config) as operator,
        ServiceClient(
            operator.tls, stack.audit, stack.config.component_spiffe_id("audit"), retries=0
        ) as audit,
    ):
        waiting = list(dict.fromkeys(traces))
        while waiting:
            for trace in list(waiting):
                answer = await audit.get(f"/v1/events?trace_id={trace}&decision=deny&limit=100")
                if answer.status != 200:
                    raise UsageError(f"the audit log refused the operator: {answer.status}")
                uids = [e["metadata"]["uid"] for e in answer.json().get("events", [])]
                if uids:
                    found[trace] = uids
                    waiting.remove(trace)
            if waiting:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.25)
    return found
