"""The one-screen SDK: run a service as a zero-trust citizen, and call others.

::

    from fastapi import FastAPI
    from trustmesh import sdk

    app = FastAPI()

    @app.post("/orders")
    async def create() -> dict:
        charge = await sdk.client("payments").post("/charges", json={"amount": 5})
        ...

Started by ``trustmesh up`` (``python -m trustmesh.sdk.runner``), a service gets its
identity (join token → SVID), serves over mTLS behind the middleware (canonical paths,
Cedar policy from the declaration, events), registers with discovery, and finds the
services it may call by name.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustmesh import events
from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.config.listen import apply_listen_env, listen_url
from trustmesh.config.switches import defences_off
from trustmesh.errors import ConfigError, NotFoundError, StateError, UnavailableError
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.policy.objects import AttributeValue, ObjectDecision, ObjectPolicy
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk import drain, guard, spans, store_tls
from trustmesh.sdk.client import Response, ServiceClient, TokenProvider
from trustmesh.sdk.delivery import AuditSink, audit_sink_from_env
from trustmesh.sdk.discovery import DiscoveryClient, Endpoint
from trustmesh.sdk.metrics import ServiceMetrics
from trustmesh.sdk.middleware import TOKEN_STATE_KEY, ZeroTrustMiddleware
from trustmesh.sdk.oauth import (
    AuthClient,
    ProviderTrust,
    RevocationFeed,
    TokenSource,
    jwks_fetcher,
)
from trustmesh.sdk.secrets import SECRETS_URL_ENV, SecretsClient, secrets_url
from trustmesh.sdk.serve import ASGIApp, Served, start
from trustmesh.sdk.suspensions import SuspensionFeed
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import JWKSCache, TokenVerifier, VerifiedToken
from trustmesh.sdk.workload import redeem_join_token
from trustmesh.sdk.x509source import X509Source, record_expiring

CONFIG_ENV = "TRUSTMESH_CONFIG"
SERVICE_ENV = "TRUSTMESH_SERVICE"
PORT_ENV = "TRUSTMESH_PORT"
EVENTS_ENV = "TRUSTMESH_EVENTS"
AUTH_URL_ENV = "TRUSTMESH_AUTH_URL"
#: The gateway's mTLS listener, where its JWKS is: set, the service also trusts the
#: tokens the gateway signs for it (issuer: the gateway's SPIFFE ID).
GATEWAY_URL_ENV = "TRUSTMESH_GATEWAY_URL"


@dataclass
class Runtime:
    """Everything a running service holds: its identity, server, and clients."""

    config: TrustmeshConfig
    service: str
    source: X509Source
    tls: RotatingTLS
    served: Served
    discovery: DiscoveryClient | None
    sink: events.EventSink
    #: The service's recorder (the middleware's): its decisions and :func:`authorize`'s.
    recorder: events.Recorder
    clients: dict[str, ServiceClient] = field(default_factory=dict)
    auth: AuthClient | None = None
    tokens: TokenSource | None = None
    revocations: RevocationFeed | None = None
    verifier: TokenVerifier | None = None
    #: Clients of the runtime's own (the gateway's JWKS), closed with it.
    own_clients: list[ServiceClient] = field(default_factory=list)
    secrets_url: str | None = None
    #: Delivery of the service's events to the audit collector (``up`` names it).
    audit: AuditSink | None = None
    #: The service's spans, exported to the audit collector (``up`` names it).
    tracer: spans.Tracer | None = None
    #: The suspended SPIFFE IDs the middleware refuses (polled from discovery).
    suspensions: SuspensionFeed | None = None
    #: Its Prometheus metrics on loopback, when asked for (``TRUSTMESH_METRICS_PORT``).
    metrics: ServiceMetrics | None = None
    #: The middleware that decides every call to it (:meth:`reload_calls` swaps its policies).
    guarded: ZeroTrustMiddleware | None = None
    _secrets: SecretsClient | None = None

    def reload_calls(self, config: TrustmeshConfig) -> int:
        """The calls it accepts (``calls`` to it, and the gateway's routes to it), compiled
        again from ``config`` — the declaration read again, for ``trustmesh reload`` —
        and swapped in at once: a call being decided keeps the policies it began with.
        Nothing else is taken from ``config``. Recorded; the number of call patterns it
        now accepts. A declaration that does not compile raises, and nothing changes."""
        if self.guarded is None:
            raise StateError("this runtime decides no calls")
        if self.service not in config.services:
            raise ConfigError(f"services.{self.service}: not in the declaration any more")
        running = self.guarded.authorizer
        compiled = CallAuthorizer(config, self.service, enforced=running.enforced)
        self.guarded.authorizer = compiled
        self.recorder.record(
            Activity.CONFIG_RELOADED,
            "the calls the service accepts were reloaded",
            decision=events.Decision.ALLOW,
            attributes={"routes": len(compiled.routes)},
        )
        return len(compiled.routes)

    def secrets(self) -> SecretsClient:
        """The client of the secrets service (``TRUSTMESH_SECRETS_URL``), made once."""
        if self._secrets is None:
            url = self.secrets_url or secrets_url()
            if not url:
                raise UnavailableError(f"no secrets service: {SECRETS_URL_ENV} is not set")
            server = self.config.component_spiffe_id("secrets")
            self._secrets = SecretsClient(self.tls, url, server)
        return self._secrets

    @property
    def url(self) -> str:
        """Where others reach it, as it registers with discovery: the address it bound
        (``listen.host``), or loopback for a wildcard bind."""
        return listen_url(self.config.listen.host, self.served.port)

    @property
    def metrics_url(self) -> str | None:
        return self.metrics.url if self.metrics is not None else None

    async def client(self, service: str) -> ServiceClient:
        """A client for ``service`` (found through discovery), reused across calls."""
        existing = self.clients.get(service)
        if existing is not None:
            return existing
        if self.discovery is None:
            raise UnavailableError("no discovery configured")
        endpoints: list[Endpoint] = await self.discovery.lookup(service)
        if not endpoints:
            raise UnavailableError(f"no instance of {service} is running")
        endpoint = endpoints[0]
        guard.allow_url(endpoint.url)  # discovery hands out only what this service may call
        created = ServiceClient(
            self.tls,
            endpoint.url,
            endpoint.spiffe_id,
            token=self.tokens.provider(endpoint.spiffe_id) if self.tokens else None,
        )
        self.clients[service] = created
        return created

    async def client_for(self, service: str, on_behalf_of: object) -> OnBehalfClient:
        """A client for ``service`` whose calls carry ``on_behalf_of``'s subject: the
        token the caller sent (a request, or its verified token) is exchanged (RFC 8693)
        for one addressed to ``service``."""
        subject = request_token(on_behalf_of)
        if subject is None:
            raise UnavailableError("no verified token on this request to act on behalf of")
        shared = await self.client(service)
        if self.tokens is None:
            raise UnavailableError("no identity provider configured")
        return OnBehalfClient(shared, self.tokens.provider(shared.expected, on_behalf_of=subject))

    async def _announce(self) -> None:
        """Serve the metrics (when asked for) and register with discovery (when there is
        one): the service is up."""
        if self.metrics is not None:
            await self.metrics.start()
        if self.discovery is not None:
            await self.discovery.register(self.url)

    async def close(self) -> None:
        """Stop: out of discovery first (callers stop choosing it), then the listener (its
        requests in flight finish, still able to call other services and read secrets),
        then what they used, and last the events, flushed or left spooled."""
        if self.discovery is not None:
            await self.discovery.close()
        await self.served.stop()
        for c in [*self.clients.values(), *self.own_clients]:
            await c.close()
        if self._secrets is not None:
            await self._secrets.close()
        if self.suspensions is not None:
            await self.suspensions.close()
        if self.revocations is not None:
            await self.revocations.close()
        if self.auth is not None:
            await self.auth.close()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.audit is not None:  # what is not delivered stays spooled for the next start
            await asyncio.to_thread(self.audit.close, 5.0)
        if self.tracer is not None:
            if spans.tracer() is self.tracer:
                spans.install(None)
            await asyncio.to_thread(self.tracer.shutdown)
        await self.source.close()


_runtime: Runtime | None = None


def current() -> Runtime:
    if _runtime is None:
        raise UnavailableError("this process is not running as a trustmesh service")
    return _runtime


async def client(
    service: str, *, on_behalf_of: object | None = None
) -> ServiceClient | OnBehalfClient:
    """``await sdk.client("payments")``: a client for a service this one may call, with
    this service's own token; ``on_behalf_of=request`` carries the caller's subject."""
    if on_behalf_of is not None:
        return await current().client_for(service, on_behalf_of)
    return await current().client(service)


async def secret(path: str) -> dict[str, Any]:
    """``await sdk.secret("payments/db")``: the value this service may read at ``path``
    in the secrets service (KV v2), logged in with its SVID, cached until its TTL."""
    return await current().secrets().secret(path)


def secrets() -> SecretsClient:
    """This service's client of the secrets service (transit: ``encrypt``/``decrypt``)."""
    return current().secrets()


def request_token(request: object) -> VerifiedToken | None:
    """The verified access token of a request (a Starlette/FastAPI request or an ASGI
    scope), as the middleware left it; a VerifiedToken is returned as is."""
    if isinstance(request, VerifiedToken):
        return request
    scope = getattr(request, "scope", request)
    state = scope.get("state") if isinstance(scope, dict) else None
    token = state.get(TOKEN_STATE_KEY) if isinstance(state, dict) else None
    return token if isinstance(token, VerifiedToken) else None


_AUTHORIZE: events.Shape = (events.EventClass.AUTHORIZE_SESSION, 99, "Other")


def authorize(
    request: object,
    policy: ObjectPolicy,
    action: str,
    resource_type: str,
    resource_id: str,
    **attributes: AttributeValue,
) -> bool:
    """May the end user of ``request`` (its token's subject) do ``action`` to this object?
    Cedar decides (default deny; no token, no access); every decision is an event."""
    token = request_token(request)
    if token is None:
        decision = ObjectDecision(False, Reason.TOKEN_MISSING)
    else:
        roles = token.claims.get("roles")
        decision = policy.decide(
            token.subject,
            action,
            resource_type,
            resource_id,
            attributes,
            roles=[r for r in roles if isinstance(r, str)] if isinstance(roles, list) else (),
        )
    runtime = _runtime
    if runtime is not None:
        runtime.recorder.record(
            decision.reason,
            f"{action} {resource_type} {'allowed' if decision.allowed else 'denied'}",
            decision=events.Decision.ALLOW if decision.allowed else events.Decision.DENY,
            shape=_AUTHORIZE,
            sub=token.subject if token else None,
            client_id=token.client_id if token else None,
            attributes={
                "action": action,
                "resource": f"{resource_type}::{resource_id}"[:512],
                "policy": ",".join(decision.policies),
            },
        )
    return decision.allowed


@dataclass
class OnBehalfClient:
    """A service client whose requests carry an exchanged token (see ``client_for``)."""

    client: ServiceClient
    token: TokenProvider

    async def request(self, method: str, path: str, **kwargs: Any) -> Response:
        return await self.client.request(method, path, token=self.token, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)


async def run_service(
    app: ASGIApp,
    *,
    service: str | None = None,
    config_path: Path | None = None,
    address: str | None = None,
    port: int | None = None,
    discovery_url: str | None = None,
    sink: events.EventSink | None = None,
    auth_url: str | None = None,
    gateway_url: str | None = None,
) -> Runtime:
    """Bring ``app`` up as ``service``; settings default to what ``trustmesh up`` passes
    in the environment. With an event log (``TRUSTMESH_EVENTS``, in ``<state>/events/``)
    and the audit collector's URL (``TRUSTMESH_AUDIT_URL``), the service's events (its
    middleware's and clients') are also delivered to the collector, spooled in
    ``<state>/spool/<service>/``. With ``TRUSTMESH_METRICS_PORT``, its Prometheus
    metrics are served on loopback (:mod:`trustmesh.sdk.metrics`). It listens on
    ``listen.host`` (:mod:`trustmesh.config.listen`), on ``port``, else ``TRUSTMESH_PORT``."""
    global _runtime
    service, config, off = _declared(service, config_path)
    source = await _identity(config, service, address)
    tls = RotatingTLS(source, require_client_certificate="service-mtls" not in off)
    sink, audit, metrics = _event_sinks(source, config, service, sink)
    trust = await _TokenTrust.declared(tls, config, service, auth_url, gateway_url)
    url = discovery_url or os.environ.get("TRUSTMESH_DISCOVERY_URL")
    suspensions = await _suspensions(tls, url)
    guarded = ZeroTrustMiddleware(
        app,
        authorizer=CallAuthorizer(config, service, enforced="call-policy" not in off),
        sink=sink,
        verifier=None if "service-token" in off else trust.verifier,
        suspended=suspensions,
    )
    served = await _listen(guarded, tls, config, service, port)
    _record_lapses(source, guarded.recorder)
    runtime = Runtime(
        config,
        service,
        source,
        tls,
        served,
        DiscoveryClient(tls, url) if url else None,
        sink,
        guarded.recorder,
        auth=trust.auth,
        tokens=TokenSource(trust.auth, service) if trust.auth else None,
        revocations=trust.feed,
        verifier=trust.verifier,
        own_clients=trust.clients,
        audit=audit,
        suspensions=suspensions,
        tracer=_tracer(source, config, service),
        metrics=metrics,
        guarded=guarded,
    )
    await runtime._announce()
    _runtime = runtime
    return runtime


async def _listen(
    app: ASGIApp, tls: RotatingTLS, config: TrustmeshConfig, service: str, port: int | None
) -> Served:
    """Serve ``app`` on ``listen.host``, at ``port``, else ``TRUSTMESH_PORT``, else the
    declared port (none: one the system picks)."""
    if port is None:
        port = int(os.environ.get(PORT_ENV) or config.services[service].port or 0)
    return await start(app, tls=tls, host=config.listen.host, port=port)


def _record_lapses(source: X509Source, recorder: events.Recorder) -> None:
    """What goes wrong outside any request is the service's event too: its SVID not
    renewed in time, and a request cut at shutdown."""
    source.on_expiring(record_expiring(recorder))
    drain.on_cut(drain.record_cuts(recorder))


async def _suspensions(tls: RotatingTLS, url: str | None) -> SuspensionFeed | None:
    """The suspensions feed from discovery, started: refused from the first request on."""
    suspensions = SuspensionFeed(tls, url) if url else None
    if suspensions is not None:
        await suspensions.start()
    return suspensions


def _event_sinks(
    source: X509Source, config: TrustmeshConfig, service: str, sink: events.EventSink | None
) -> tuple[events.EventSink, AuditSink | None, ServiceMetrics | None]:
    """The service's sink and delivery (:func:`_delivered`), each event counted on its way
    when the service serves metrics (``TRUSTMESH_METRICS_PORT``: not yet listening)."""
    sink, audit = _delivered(source, config, service, sink)
    metrics = ServiceMetrics.from_env(service, source, sink, audit)
    return (metrics.sink if metrics is not None else sink), audit, metrics


def _delivered(
    source: X509Source, config: TrustmeshConfig, service: str, sink: events.EventSink | None
) -> tuple[events.EventSink, AuditSink | None]:
    """Where the service's events go (``sink``, else the event log ``TRUSTMESH_EVENTS``,
    else memory), and its delivery to the collector when ``up`` runs one — which then
    writes the event log too, a spooled batch at a time. Each decision is also noted on
    the span current when it is recorded."""
    path = os.environ.get(EVENTS_ENV)
    if sink is None:
        sink = events.JsonLinesSink(Path(path)) if path else events.MemorySink()
    if not path:
        return spans.NotingSink(sink), None
    log = sink if isinstance(sink, events.JsonLinesSink) else None
    audit = audit_sink_from_env(source, config, Path(path).parent.parent, service, log=log)
    if audit is None:
        return spans.NotingSink(sink), None
    return spans.NotingSink(audit if log is not None else events.FanoutSink(sink, audit)), audit


def _tracer(source: X509Source, config: TrustmeshConfig, service: str) -> spans.Tracer | None:
    """The service's spans, when ``up`` runs a collector to take them: installed for the
    process (its middleware and clients use it)."""
    path = os.environ.get(EVENTS_ENV)
    tracer = (
        spans.tracer_from_env(source, config, Path(path).parent.parent, service) if path else None
    )
    if tracer is not None:
        spans.install(tracer)
    return tracer


def _declared(
    service: str | None, config_path: Path | None
) -> tuple[str, TrustmeshConfig, frozenset[str]]:
    """The service's name, the declaration it is in (given, or from the environment),
    and the test-only switches it honours (:mod:`trustmesh.config.switches`: none unless
    a test's environment allows them; refused otherwise)."""
    service = service or os.environ.get(SERVICE_ENV)
    config_file = config_path or Path(os.environ.get(CONFIG_ENV, "trustmesh.yaml"))
    if not service:
        raise UnavailableError(f"no service name: pass one or set {SERVICE_ENV}")
    config = apply_listen_env(load_config(config_file))  # the address a deployment pins
    if service not in config.services:
        raise NotFoundError(f"{service!r} is not declared in {config_file}")
    return service, config, defences_off(config, "service")


async def _identity(config: TrustmeshConfig, service: str, address: str | None) -> X509Source:
    """The service's SVIDs from the Workload API at ``address`` (a join token handed in
    the environment is redeemed first, once), started."""
    address = address or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    token = os.environ.pop("TRUSTMESH_JOIN_TOKEN", None)
    if token and address:
        await redeem_join_token(address, token)
    source = X509Source(address, spiffe_id=config.spiffe_id(service))
    await source.start()
    store_tls.present(source)  # what it shows a Redis over rediss:// (revocations)
    return source


@dataclass(frozen=True)
class _TokenTrust:
    """With an identity provider, every request must carry a token for this service:
    the provider's client, its revocation feed, the verifier, and the clients it holds
    (the gateway's JWKS, when the gateway's tokens are trusted too). None without one."""

    auth: AuthClient | None = None
    feed: RevocationFeed | None = None
    verifier: TokenVerifier | None = None
    clients: list[ServiceClient] = field(default_factory=list)

    @classmethod
    async def declared(
        cls,
        tls: RotatingTLS,
        config: TrustmeshConfig,
        service: str,
        auth_url: str | None,
        gateway_url: str | None,
    ) -> _TokenTrust:
        auth_url = auth_url if auth_url is not None else os.environ.get(AUTH_URL_ENV) or None
        if not auth_url:
            return cls()
        trust = await ProviderTrust.declared(tls, auth_url, config)
        trusted: dict[str, JWKSCache] = {}
        clients: list[ServiceClient] = []
        gateway_url = gateway_url if gateway_url is not None else os.environ.get(GATEWAY_URL_ENV)
        if gateway_url:
            gateway = ServiceClient(tls, gateway_url, config.component_spiffe_id("gateway"))
            clients.append(gateway)
            trusted[config.component_spiffe_id("gateway")] = JWKSCache(jwks_fetcher(gateway))
        verifier = TokenVerifier(
            issuers={trust.auth.issuer},
            audience=config.spiffe_id(service),
            jwks=trust.jwks,
            trusted=trusted,
            revoked=trust.revoked,
            leeway=config.auth.token_leeway.total_seconds(),
        )
        return cls(trust.auth, trust.feed, verifier, clients)
