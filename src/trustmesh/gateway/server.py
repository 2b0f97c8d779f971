"""Run the gateway: its public TLS listener (clients), and an mTLS listener of its own
(``sdk.serve``, the gateway's SVID) where services fetch the JWKS of its internal tokens
and the operator manages API keys (:mod:`trustmesh.gateway.admin_app`).

User tokens are verified with the identity provider's keys, fetched over mTLS and cached
(traffic keeps flowing while the provider is down); revocations arrive through the
provider's feed (a second by polling, at once with Redis).

A workload whose SPIFFE ID is suspended is refused on the mTLS listener — its JWKS and
the admin API — with ``403 forbidden`` and a ``suspended-spiffe-id`` event
(:mod:`trustmesh.platform.suspensions`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.config import TrustmeshConfig
from trustmesh.config.gateway import GatewayConfig, GatewayRoute
from trustmesh.config.listen import LOOPBACK, advertised_host, authority, listen_url
from trustmesh.config.switches import defences_off
from trustmesh.errors import ConfigError, UnavailableError
from trustmesh.gateway.admin_app import KeyAdmin
from trustmesh.gateway.app import GatewayApp
from trustmesh.gateway.block_admin import BlockAdmin
from trustmesh.gateway.blocklist import Blocklist
from trustmesh.gateway.crs_workers import CrsWorkers
from trustmesh.gateway.grpc_authz import RunningGrpcAuthz, start_grpc_authz
from trustmesh.gateway.internal import GatewayKey
from trustmesh.gateway.introspection import Introspector
from trustmesh.gateway.keystore import ApiKeyVerifier, SqlKeyStore, open_keystore
from trustmesh.gateway.metrics import GatewayMetrics
from trustmesh.gateway.nginx import NginxEdge, start_nginx_edge
from trustmesh.gateway.oidc import ExternalIssuers
from trustmesh.gateway.ratelimit import RateLimiter
from trustmesh.gateway.reload import Pipeline, restart_only
from trustmesh.gateway.upstreams import UpstreamPool
from trustmesh.platform.guard import ConnectionGuard, ConnectionLimits
from trustmesh.platform.listeners import (
    ASGIApp,
    PublicServed,
    Served,
    bound_socket,
    start,
    start_loopback,
    start_public,
)
from trustmesh.platform.metrics import LiveFacts
from trustmesh.platform.suspensions import RefuseSuspended
from trustmesh.policy.edge import load_edge_policy
from trustmesh.reasons import Activity
from trustmesh.sdk.discovery import DiscoveryClient
from trustmesh.sdk.oauth import ProviderTrust
from trustmesh.sdk.spans import NotingSink
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import TokenVerifier
from trustmesh.sdk.x509source import SVIDSource

log = logging.getLogger("trustmesh.gateway")

_UPSTREAM_REASONS = {
    "ejected": Activity.UPSTREAM_EJECTED,
    "restored": Activity.UPSTREAM_RESTORED,
    "unhealthy": Activity.UPSTREAM_UNHEALTHY,
    "healthy": Activity.UPSTREAM_HEALTHY,
}
_RECOVERED = frozenset({"restored", "healthy"})

__all__ = ["RunningGateway", "serve_gateway"]


@dataclass
class RunningGateway:
    public: PublicServed | NginxEdge
    internal: Served
    upstreams: UpstreamPool
    discovery: DiscoveryClient
    trust: ProviderTrust | None
    key: GatewayKey
    metrics: PublicServed | None = None
    limiter: RateLimiter | None = None
    api_keys: ApiKeyVerifier | None = None
    external: ExternalIssuers | None = None
    key_store: SqlKeyStore | None = None  # the admin API's
    ext_authz: RunningGrpcAuthz | None = None  # the decisions over gRPC, where declared
    crs: CrsWorkers | None = None  # crs mode's worker processes
    #: what the public listener serves, the declaration it was built from, and how to
    #: build another (:meth:`reload`)
    pipeline: Pipeline | None = None
    config: TrustmeshConfig | None = None
    build: Callable[[TrustmeshConfig, Path], GatewayApp] | None = None
    #: the address its listeners bound (``listen.host``); its URLs name a connectable one
    host: str = LOOPBACK

    async def reload(self, config: TrustmeshConfig, config_dir: Path) -> GatewayApp:
        """Build the pipeline of ``config`` and swap it in (:mod:`trustmesh.gateway.reload`);
        ConfigError (the running pipeline stays) when it cannot be applied without a
        restart or does not compile."""
        if self.pipeline is None or self.config is None or self.build is None:
            raise ConfigError("this gateway was not started to be reloaded")
        running, new = self.config, config.gateway
        if new is None or running.gateway is None:
            raise ConfigError("gateway: the new declaration has no gateway section")
        problems = restart_only(running.gateway, new)
        if config.trust_domain != running.trust_domain:
            problems.append("trust_domain changed")
        problems += [
            f"listen.{key} changed"
            for key, value in config.listen
            if value != getattr(running.listen, key)
        ]
        if problems:
            raise ConfigError(
                "; ".join(problems) + ": restart the gateway to apply it "
                "(the running declaration stays)"
            )
        app = self.build(config, config_dir)  # compiles everything, or raises: nothing swapped
        pipeline = self.pipeline

        def swap() -> None:
            pipeline.app = app

        if isinstance(self.public, NginxEdge):  # nginx refuses it, or runs it from now
            # the authorizer decides by the new declaration from the moment nginx has
            # accepted it and is told to reload (what it decides meanwhile is kept in the
            # old configuration's cache, which goes with it)
            await self.public.engine.apply(new, before_reload=swap)
        else:
            swap()
        self.config = config
        app.record(
            events.Decision.ALLOW,
            Activity.CONFIG_RELOADED,
            "the gateway's declaration was reloaded",
            routes=len(new.routes),
        )
        return app

    @property
    def url(self) -> str:
        return listen_url(self.host, self.public.port)

    @property
    def internal_url(self) -> str:
        return listen_url(self.host, self.internal.port)

    @property
    def admin_url(self) -> str:
        """The admin API's listener: the mTLS one."""
        return self.internal_url

    @property
    def ext_authz_address(self) -> str | None:
        """Where Envoy asks over gRPC (``host:port``, mTLS), where declared."""
        if self.ext_authz is None:
            return None
        return authority(advertised_host(self.host), self.ext_authz.port)

    @property
    def metrics_url(self) -> str | None:
        return f"http://{LOOPBACK}:{self.metrics.port}/metrics" if self.metrics else None

    async def stop(self) -> None:
        if self.ext_authz is not None:
            await self.ext_authz.stop()
        await self.public.stop()
        await self.internal.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.limiter is not None:
            await self.limiter.close()
        if self.api_keys is not None:
            await self.api_keys.close()
        if self.external is not None:
            await self.external.close()
        if self.key_store is not None:
            await self.key_store.close()
        if self.crs is not None:
            await self.crs.close()
        await self.upstreams.close()
        await self.discovery.close()
        if self.trust is not None:
            await self.trust.close()


def internal_app(key: GatewayKey, admin: KeyAdmin, blocks: BlockAdmin) -> Starlette:
    async def jwks(_: Request) -> Response:
        return Response(
            key.jwks(),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "max-age=60"},
        )

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/jwks.json", jwks, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
            *admin.routes(),
            *blocks.routes(),
        ]
    )


async def _start_internal(
    config: TrustmeshConfig,
    state: Path,
    key: GatewayKey,
    sink: events.EventSink,
    parts: _Parts,
    *,
    tls: RotatingTLS,
    host: str,
    port: int,
    suspended: Container[str] | None = None,
) -> tuple[Served, SqlKeyStore]:
    """The mTLS listener: the JWKS of the internal tokens, the health check, the admin
    API over the key store (a change there is seen by the gateway's API keys at its next
    decision); ``suspended`` peers refused before any of them."""
    key_store = await open_keystore(state, config)
    api_keys = parts.api_keys
    changed = api_keys.reload_soon if api_keys else lambda: None
    admin = KeyAdmin(config, key_store, sink, changed=changed, clock=parts.clock)
    blocks = BlockAdmin(config, parts.blocks, sink, clock=parts.clock)
    app: ASGIApp = internal_app(key, admin, blocks)
    if suspended is not None:
        recorder = events.Recorder(
            sink, component="gateway", spiffe_id=config.component_spiffe_id("gateway")
        )
        app = RefuseSuspended(app, suspended, recorder)
    try:
        internal = await start(
            app,
            tls=tls,
            host=host,
            port=port,
        )
    except BaseException:
        await key_store.close()
        raise
    return internal, key_store


async def serve_gateway(
    config: TrustmeshConfig,
    state: Path,
    *,
    source: SVIDSource,
    sink: events.EventSink,
    discovery_url: str,
    auth_url: str | None,
    host: str | None = None,
    port: int | None = None,
    internal_port: int | None = None,
    config_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
    suspended: Container[str] | None = None,
) -> RunningGateway:
    """Start the gateway; return once both listeners accept. ``host``, ``port``,
    ``internal_port``: the declaration's (``listen.host``, ``gateway.port``, ``.internal_port``)
    unless given; ``clock``: the wall clock its decisions read (tokens' times, the
    introspection cache, API keys); ``suspended``: the SPIFFE IDs its mTLS listener refuses."""
    gateway = config.gateway
    if gateway is None:
        raise ConfigError("no gateway: section in the declaration")
    host = config.listen.host if host is None else host
    seal_key = crypto.load_seal_key(state, dev=config.dev)
    key = GatewayKey.load_or_create(state, seal_key)
    folder = config_dir or Path.cwd()
    certificate = _certificate(config, gateway, state, seal_key, folder)
    tls = RotatingTLS(source)
    spiffe_id = config.component_spiffe_id("gateway")
    off = defences_off(config, "gateway")  # test-only switches: none in a real stack
    trust, verifier = await _provider(config, gateway, tls, spiffe_id, auth_url, off)
    metrics = _metrics(gateway, source, sink)
    changes = _Changes(metrics)
    parts = await _parts(config, gateway, state, folder, tls, discovery_url, trust, changes, clock)
    parts.defences_off = off
    build = _builder(
        parts,
        changes,
        metrics=metrics,
        introspector=parts.introspector(trust, spiffe_id),
        spiffe_id=spiffe_id,
        verifier=verifier,
        key=key,
        tls=tls,
        sink=NotingSink(sink),  # each decision on the request's span too
    )
    pipeline = Pipeline(build(config, folder))
    internal_port = gateway.internal_port if internal_port is None else internal_port
    internal, key_store = await _start_internal(
        config, state, key, sink, parts, tls=tls, host=host, port=internal_port, suspended=suspended
    )
    edge = _Edge(config, state, source, parts, pipeline, certificate, metrics, host)
    public, scraped, ext_authz = await edge.serve_or_close(
        gateway.port if port is None else port, internal, key_store
    )
    running = parts.running(public, internal, trust, key, scraped, key_store)
    running.pipeline, running.config, running.build = pipeline, config, build
    running.ext_authz, running.host = ext_authz, host
    return running


def _metrics(
    gateway: GatewayConfig, source: SVIDSource, sink: events.EventSink
) -> GatewayMetrics | None:
    """The gateway's metrics, where declared, with the SVID's time left and the audit
    delivery as every component's."""
    if gateway.metrics_port is None:
        return None
    metrics = GatewayMetrics()
    metrics.registry.register(LiveFacts("gateway", source, sink))
    return metrics


@dataclass
class _Edge:
    """What serves the clients: the gateway's own public listener or nginx asking it,
    with the metrics (loopback) and Envoy's ``ext_authz`` where declared."""

    config: TrustmeshConfig
    state: Path
    source: SVIDSource
    parts: _Parts
    pipeline: Pipeline
    certificate: crypto.ServerCertificate
    metrics: GatewayMetrics | None
    host: str

    async def serve_or_close(
        self, port: int, internal: Served, key_store: SqlKeyStore
    ) -> tuple[PublicServed | NginxEdge, PublicServed | None, RunningGrpcAuthz | None]:
        """Serve the clients; or, failing, stop what the gateway started before (its
        internal listener, the key store, its parts) and raise."""
        try:
            return await self._serve(port)
        except BaseException:
            await internal.stop()
            with contextlib.suppress(Exception):
                await key_store.close()
                await self.parts.close()
            raise

    async def _serve(
        self, port: int
    ) -> tuple[PublicServed | NginxEdge, PublicServed | None, RunningGrpcAuthz | None]:
        gateway = self.config.gateway
        if gateway is None:
            raise ConfigError("no gateway: section in the declaration")
        public: PublicServed | NginxEdge
        if gateway.engine == "nginx":
            public = await start_nginx_edge(
                self.config,
                self.state / "gateway" / "nginx",
                self.source,
                self.parts.discovery,
                lambda: self.pipeline.app,
                certificate=self.certificate,
                port=port,
                host=self.host,
            )
            scraped = await _start_metrics(gateway, self.metrics, public)
        else:
            public, scraped = await _listen(
                self.pipeline, gateway, self.certificate, self.metrics, self.parts, self.host, port
            )
        try:
            ext_authz = await _ext_authz(gateway, self.pipeline, self.source, self.host)
        except BaseException:
            await public.stop()
            if scraped is not None:
                await scraped.stop()
            raise
        return public, scraped, ext_authz


async def _ext_authz(
    gateway: GatewayConfig, pipeline: Pipeline, source: SVIDSource, host: str
) -> RunningGrpcAuthz | None:
    """Envoy's gRPC ``ext_authz`` served by this gateway, where declared."""
    if gateway.ext_authz is None:
        return None
    return await start_grpc_authz(
        lambda: pipeline.app,
        source,
        host=host,
        port=gateway.ext_authz.port,
        callers=frozenset(gateway.ext_authz.callers),
    )


def _builder(
    parts: _Parts,
    changes: _Changes,
    *,
    verifier: TokenVerifier | None,
    **shared: Any,
) -> Callable[[TrustmeshConfig, Path], GatewayApp]:
    """How to build the request pipeline of a declaration on this gateway's parts (at
    start, and at each reload): compiled at once, ConfigError naming what does not."""

    def build(declared: TrustmeshConfig, where: Path) -> GatewayApp:
        section = declared.gateway
        if section is None:
            raise ConfigError("no gateway: section in the declaration")
        if verifier is None and _needs_provider(section):
            raise ConfigError(
                "a route needs the identity provider's tokens and this gateway started "
                "without it: restart the gateway to apply it"
            )
        app = GatewayApp(
            section,
            policy=load_edge_policy(declared, where),
            limiter=parts.limiter,
            api_keys=parts.api_keys,
            external=parts.external,
            blocks=parts.blocks,
            trust_domain=declared.trust_domain,
            verifier=verifier,
            upstreams=parts.upstreams,
            clock=parts.clock,
            config_dir=where,
            crs_workers=parts.crs,
            defences_off=parts.defences_off,
            **shared,
        )
        changes.app = app
        return app

    return build


def _certificate(
    config: TrustmeshConfig,
    gateway: GatewayConfig,
    state: Path,
    seal_key: crypto.SealKey,
    folder: Path,
) -> crypto.ServerCertificate:
    """The public listener's certificate: the declared files, or in dev mode the local
    edge CA's."""
    files = (
        (folder / gateway.tls_cert, folder / gateway.tls_key)
        if gateway.tls_cert and gateway.tls_key
        else None
    )
    certificate = crypto.server_certificate(state, seal_key, files, dev=config.dev)
    if certificate is None:  # the config check says so too
        raise ConfigError("gateway.tls_cert: required outside dev mode")
    return certificate


async def _provider(
    config: TrustmeshConfig,
    gateway: GatewayConfig,
    tls: RotatingTLS,
    spiffe_id: str,
    auth_url: str | None,
    off: frozenset[str] = frozenset(),
) -> tuple[ProviderTrust | None, TokenVerifier | None]:
    """The identity provider's keys and revocations, and the verifier of its tokens
    (``off``: the test-only switches it honours)."""
    if auth_url is None and _needs_provider(gateway):
        # fail closed and loudly at start, rather than 503 on every request: once started,
        # the gateway keeps the provider's keys it has while the provider is down
        raise UnavailableError("the identity provider is not running; the routes need it")
    if not auth_url:
        return None, None
    trust = await ProviderTrust.declared(tls, auth_url, config)
    verifier = TokenVerifier(
        audience=spiffe_id,
        issuers={trust.auth.issuer},
        jwks=trust.jwks,
        revoked=trust.revoked,
        leeway=config.auth.token_leeway.total_seconds(),
        require_binding=False,  # a browser has no certificate; a bound token still must match
        defences_off=off,
    )
    return trust, verifier


def _needs_provider(gateway: GatewayConfig) -> bool:
    return any(
        "introspection" in r.auth or ("jwt" in r.auth and not gateway.issuers)
        for r in gateway.routes
    )


class _Changes:
    """What the gateway's parts report about themselves (an upstream ejected, the rate
    limit store down), recorded by the app once it exists."""

    def __init__(self, metrics: GatewayMetrics | None) -> None:
        self.metrics = metrics
        self.app: GatewayApp | None = None

    def upstream(self, service: str, url: str, state: str, why: str) -> None:
        if self.app is not None:
            decision = events.Decision.ALLOW if state in _RECOVERED else events.Decision.ERROR
            self.app.record(decision, _UPSTREAM_REASONS[state], why, service=service, instance=url)

    def store(self, shared: bool, why: str) -> None:
        if self.metrics is not None:
            self.metrics.rate_limit_fallback.set(0 if shared else 1)
        if self.app is not None:
            reason = Activity.RATE_LIMIT_STORE_BACK if shared else Activity.RATE_LIMIT_STORE_DOWN
            decision = events.Decision.ALLOW if shared else events.Decision.ERROR
            self.app.record(decision, reason, why)


@dataclass
class _Parts:
    """The parts the pipeline stands on, each only where a route needs it."""

    discovery: DiscoveryClient
    upstreams: UpstreamPool
    limiter: RateLimiter | None
    api_keys: ApiKeyVerifier | None
    external: ExternalIssuers | None
    routes: list[GatewayRoute]
    clock: Callable[[], float]
    blocks: Blocklist = field(default_factory=Blocklist)
    crs: CrsWorkers | None = None  # where crs mode inspects (gateway.crs_workers)
    #: test-only switches the gateway honours (trustmesh.config.switches), decided at
    #: its start: every pipeline a reload builds keeps them
    defences_off: frozenset[str] = frozenset()

    def introspector(self, trust: ProviderTrust | None, spiffe_id: str) -> Introspector | None:
        """Introspection at the provider, where a route asks for it."""
        if trust is None or not any("introspection" in r.auth for r in self.routes):
            return None
        return Introspector(trust.auth.introspect, audience=spiffe_id, clock=self.clock)

    def running(
        self,
        public: PublicServed | NginxEdge,
        internal: Served,
        trust: ProviderTrust | None,
        key: GatewayKey,
        scraped: PublicServed | None,
        key_store: SqlKeyStore,
    ) -> RunningGateway:
        running = RunningGateway(
            public,
            internal,
            self.upstreams,
            self.discovery,
            trust,
            key,
            scraped,
            self.limiter,
            self.api_keys,
            self.external,
        )
        running.key_store, running.crs = key_store, self.crs
        return running

    async def close(self) -> None:
        await self.upstreams.close()
        await self.discovery.close()
        for part in (self.limiter, self.api_keys, self.external, self.crs):
            if part is not None:
                await part.close()


async def _parts(
    config: TrustmeshConfig,
    gateway: GatewayConfig,
    state: Path,
    folder: Path,
    tls: RotatingTLS,
    discovery_url: str,
    trust: ProviderTrust | None,
    changes: _Changes,
    clock: Callable[[], float],
) -> _Parts:
    discovery = DiscoveryClient(tls, discovery_url)
    routes = gateway.routes
    return _Parts(
        discovery,
        UpstreamPool(tls, discovery, gateway.upstream, on_change=changes.upstream),
        (
            RateLimiter.from_config(gateway, on_storage_change=changes.store)
            if gateway.rate_limits or any(r.rate_limits for r in routes)
            else None
        ),
        (
            await ApiKeyVerifier.open(state, config, clock=clock)
            if any("api_key" in r.auth for r in routes)
            else None
        ),
        (
            await ExternalIssuers.start(
                gateway.issuers,
                folder,
                ("admin", *config.auth.roles),
                leeway=config.auth.token_leeway.total_seconds(),
            )
            if gateway.issuers
            else None
        ),
        routes,
        clock,
        await asyncio.to_thread(Blocklist.of_state, state, clock()),
        _crs_workers(gateway),
    )


def _crs_workers(gateway: GatewayConfig) -> CrsWorkers | None:
    """crs mode's worker processes (started now where a route is in crs mode; else at a
    reload's first inspection), or None (``crs_workers: 0``: inspected in the loop)."""
    if gateway.crs_workers == 0:
        return None
    workers = CrsWorkers(gateway.crs_workers)
    if any((r.waf or gateway.waf).mode == "crs" for r in gateway.routes):
        workers.start()
    return workers


def _guard(
    gateway: GatewayConfig,
    pipeline: Pipeline,
    metrics: GatewayMetrics | None,
    upstreams: UpstreamPool,
) -> ConnectionGuard:
    """The public listener's connection bounds (a trusted load balancer speaks for many
    and is exempt); the metrics read the upstreams and the open connections."""
    guard = ConnectionGuard(
        ConnectionLimits.of(gateway.limits),
        exempt=lambda address: address in pipeline.app.trusted,
        on_refused=metrics.listener_refused if metrics is not None else None,
    )
    if metrics is not None:

        def refresh() -> None:
            metrics.upstreams_from(upstreams.snapshot(), time.monotonic())
            metrics.connections.set(guard.open)

        metrics.refresh = refresh
    return guard


async def _listen(
    pipeline: Pipeline,
    gateway: GatewayConfig,
    certificate: crypto.ServerCertificate,
    metrics: GatewayMetrics | None,
    parts: _Parts,
    host: str,
    port: int | None,
) -> tuple[PublicServed, PublicServed | None]:
    """The upstreams checked, then the public listener and the metrics."""
    await parts.upstreams.start()
    port = gateway.port if port is None else port
    # several gateway processes share the port: the kernel spreads connections over them
    shared = bound_socket(host, port, reuse_port=True) if gateway.workers > 1 else None
    public = await start_public(
        pipeline,
        chain_pem=certificate.chain_pem(),
        key_pem=certificate.key_pem(),
        host=host,
        port=port,
        sock=shared,
        guard=_guard(gateway, pipeline, metrics, parts.upstreams),
        on_refusals=lambda summaries: pipeline.app.refusals(summaries),
        lenient_framing="request-framing" in parts.defences_off,
    )
    return public, await _start_metrics(gateway, metrics, public)


async def _start_metrics(
    gateway: GatewayConfig,
    metrics: GatewayMetrics | None,
    public: PublicServed | NginxEdge,
) -> PublicServed | None:
    """The metrics on loopback whatever ``listen.host`` says (plain HTTP), when declared
    (the public listener stops if it fails)."""
    if metrics is None or gateway.metrics_port is None:
        return None
    try:
        return await start_loopback(metrics.app, host=LOOPBACK, port=gateway.metrics_port)
    except BaseException:
        await public.stop()
        raise
