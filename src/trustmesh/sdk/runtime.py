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

import os
from dataclasses import dataclass, field
from pathlib import Path

from trustmesh import events
from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.errors import NotFoundError, UnavailableError
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.discovery import DiscoveryClient, Endpoint
from trustmesh.sdk.middleware import ZeroTrustMiddleware
from trustmesh.sdk.oauth import AuthClient, RevocationFeed, TokenSource
from trustmesh.sdk.serve import ASGIApp, Served, start
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import RevocationList, TokenVerifier
from trustmesh.sdk.workload import redeem_join_token
from trustmesh.sdk.x509source import X509Source

CONFIG_ENV = "TRUSTMESH_CONFIG"
SERVICE_ENV = "TRUSTMESH_SERVICE"
PORT_ENV = "TRUSTMESH_PORT"
EVENTS_ENV = "TRUSTMESH_EVENTS"
AUTH_URL_ENV = "TRUSTMESH_AUTH_URL"


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
    clients: dict[str, ServiceClient] = field(default_factory=dict)
    auth: AuthClient | None = None
    tokens: TokenSource | None = None
    revocations: RevocationFeed | None = None
    verifier: TokenVerifier | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.served.port}"

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
        created = ServiceClient(
            self.tls,
            endpoint.url,
            endpoint.spiffe_id,
            token=self.tokens.provider(endpoint.spiffe_id) if self.tokens else None,
        )
        self.clients[service] = created
        return created

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()
        if self.discovery is not None:
            await self.discovery.close()
        if self.revocations is not None:
            await self.revocations.close()
        if self.auth is not None:
            await self.auth.close()
        await self.served.stop()
        await self.source.close()


_runtime: Runtime | None = None


def current() -> Runtime:
    if _runtime is None:
        raise UnavailableError("this process is not running as a trustmesh service")
    return _runtime


async def client(service: str) -> ServiceClient:
    """``await sdk.client("payments")``: a client for a service this one may call."""
    return await current().client(service)


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
) -> Runtime:
    """Bring ``app`` up as ``service``; settings default to what ``trustmesh up`` passes
    in the environment."""
    global _runtime
    service = service or os.environ.get(SERVICE_ENV)
    config_file = config_path or Path(os.environ.get(CONFIG_ENV, "trustmesh.yaml"))
    if not service:
        raise UnavailableError(f"no service name: pass one or set {SERVICE_ENV}")
    config = load_config(config_file)
    if service not in config.services:
        raise NotFoundError(f"{service!r} is not declared in {config_file}")
    address = address or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    token = os.environ.pop("TRUSTMESH_JOIN_TOKEN", None)
    if token and address:
        await redeem_join_token(address, token)
    source = X509Source(address, spiffe_id=config.spiffe_id(service))
    await source.start()
    tls = RotatingTLS(source)
    if sink is None:
        path = os.environ.get(EVENTS_ENV)
        sink = events.JsonLinesSink(Path(path)) if path else events.MemorySink()
    auth_url = auth_url if auth_url is not None else os.environ.get(AUTH_URL_ENV) or None
    auth: AuthClient | None = None
    verifier: TokenVerifier | None = None
    feed: RevocationFeed | None = None
    if auth_url:
        # with an identity provider, every request must carry a token for this service
        auth = AuthClient(tls, auth_url, config.component_spiffe_id("auth"))
        await auth.discover()
        jwks = auth.jwks_cache()
        await jwks.refresh()
        revoked = RevocationList()
        feed = RevocationFeed(auth, revoked, redis_url=config.auth.redis)
        await feed.start()
        verifier = TokenVerifier(
            issuers={auth.issuer},
            audience=config.spiffe_id(service),
            jwks=jwks,
            revoked=revoked,
        )
    guarded = ZeroTrustMiddleware(
        app, authorizer=CallAuthorizer(config, service), sink=sink, verifier=verifier
    )
    if port is None:
        port = int(os.environ.get(PORT_ENV) or config.services[service].port or 0)
    served = await start(guarded, source=source, port=port)
    url = discovery_url or os.environ.get("TRUSTMESH_DISCOVERY_URL")
    discovery = DiscoveryClient(tls, url) if url else None
    runtime = Runtime(
        config,
        service,
        source,
        tls,
        served,
        discovery,
        sink,
        auth=auth,
        tokens=TokenSource(auth, service) if auth else None,
        revocations=feed,
        verifier=verifier,
    )
    if discovery is not None:
        await discovery.register(runtime.url)
    _runtime = runtime
    return runtime
