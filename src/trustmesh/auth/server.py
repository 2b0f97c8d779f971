"""Run the identity provider: its store, keys and HTTP app, served over mTLS with its
own SVID (``spiffe://<td>/trustmesh/auth``) through ``sdk.serve`` and, when enabled, over
server-authenticated TLS for browsers (see :mod:`trustmesh.auth.app`).

A workload whose SPIFFE ID is suspended is refused on the mTLS listener
(:mod:`trustmesh.platform.suspensions`): ``403`` ``access_denied`` (RFC 6749 §5.2) on the
OAuth endpoints — no token, however valid its certificate — and ``403 forbidden``
elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

from trustmesh import crypto, events
from trustmesh.auth.app import AuthURLs, auth_app
from trustmesh.auth.db import AuthStore
from trustmesh.auth.gateway_tokens import GatewayTokens, gateway_url_from
from trustmesh.auth.service import AuthService, AuthSettings
from trustmesh.config import TrustmeshConfig
from trustmesh.config.listen import listen_url
from trustmesh.errors import ConfigError
from trustmesh.platform.guard import ConnectionGuard, ConnectionLimits
from trustmesh.platform.listeners import PublicServed, Served, bound_socket, start, start_public
from trustmesh.platform.suspensions import OAUTH, PLATFORM, Refusal, RefuseSuspended
from trustmesh.sdk import store_tls
from trustmesh.sdk.spans import TracedApp
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import SVIDSource
from trustmesh.store import create_engine, sqlite_url
from trustmesh.store.shared import component_url

log = logging.getLogger("trustmesh.auth")

TICK_SECONDS = 1.0
PRUNE_EVERY = 60


@dataclass
class RunningAuth:
    service: AuthService
    served: Served
    urls: AuthURLs
    public: PublicServed | None
    _ticker: asyncio.Task[None]
    gateway_tokens: GatewayTokens | None = None

    @property
    def url(self) -> str:
        """The mTLS URL (what workloads use)."""
        return self.urls.mtls

    async def stop(self) -> None:
        self._ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        if self.public is not None:
            await self.public.stop()
        await self.served.stop()
        if self.gateway_tokens is not None:
            await self.gateway_tokens.close()
        await self.service.close()


def database_url(config: TrustmeshConfig, state: Path) -> str:
    """The provider's store: its own ``database``, its role in the shared one, or SQLite."""
    return (
        config.auth.database
        or component_url(config, state, "auth")
        or sqlite_url(state.absolute() / "auth" / "auth.db")
    )


async def serve_auth(
    config: TrustmeshConfig,
    state: Path,
    *,
    source: SVIDSource,
    sink: events.EventSink,
    host: str | None = None,
    port: int | None = None,
    config_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
    suspended: Container[str] | None = None,
) -> RunningAuth:
    """Start the identity provider; return once it listens with an active signing key.

    ``host`` and ``port``: the declaration's (``listen.host``, ``auth.port``) unless
    given; ``config_dir`` resolves relative certificate paths (the config file's folder);
    ``clock`` (epoch seconds) is the service's: signing keys, tokens, revocations;
    ``suspended``: the SPIFFE IDs the mTLS listener refuses (the suspensions feed)."""
    port = port if port is not None else config.auth.port
    host = host if host is not None else config.listen.host
    await asyncio.to_thread(crypto.prepare_password_checks)  # an unknown user's cost, now
    # the issuer names the ports: they are bound up front, so no one can take them before
    # the listeners start on them
    sock = bound_socket(host, port or 0)
    public_sock: socket.socket | None = None
    if config.auth_public_listener:
        try:
            public_sock = bound_socket(host, config.auth.public_port or 0)
        except OSError:
            sock.close()
            raise
    try:
        return await _serve_on(
            config,
            state,
            source,
            sink,
            host,
            sock,
            public_sock,
            config_dir or Path.cwd(),
            clock,
            suspended,
        )
    except BaseException:  # the listeners never took them
        sock.close()
        if public_sock is not None:
            public_sock.close()
        raise


async def _serve_on(
    config: TrustmeshConfig,
    state: Path,
    source: SVIDSource,
    sink: events.EventSink,
    host: str,
    sock: socket.socket,
    public_sock: socket.socket | None,
    config_dir: Path,
    clock: Callable[[], float],
    suspended: Container[str] | None,
) -> RunningAuth:
    port = int(sock.getsockname()[1])
    public_port = int(public_sock.getsockname()[1]) if public_sock is not None else None
    urls = AuthURLs(  # a wildcard bind names loopback: the issuer must be connectable
        listen_url(host, port),
        listen_url(host, public_port) if public_port is not None else None,
    )
    settings = _settings(config, urls)
    seal_key = crypto.load_seal_key(state, dev=config.dev)
    certificate = None
    if public_port is not None:
        certificate = _public_certificate(config, state, seal_key, config_dir)
    store = AuthStore(create_engine(database_url(config, state), tls=store_tls.postgres))
    service = AuthService(config, store, seal_key, settings, sink, clock=clock)
    await service.start()
    tls = RotatingTLS(source)  # one set of contexts: the server's and its own calls
    gateway_tokens = _gateway_tokens(config, state, tls, settings.token_leeway, service.clock)
    app = auth_app(service, urls, gateway_tokens=gateway_tokens)
    served = await start(
        TracedApp(
            app
            if suspended is None
            else RefuseSuspended(app, suspended, service.recorder, answer=_refusal)
        ),
        host=host,
        port=port,
        tls=tls,
        sock=sock,
    )
    public = None
    if certificate is not None and public_port is not None:
        try:
            public = await start_public(
                TracedApp(auth_app(service, urls, public=True), follow=False),
                chain_pem=certificate.chain_pem(),
                key_pem=certificate.key_pem(),
                host=host,
                port=public_port,
                sock=public_sock,
                guard=ConnectionGuard(ConnectionLimits.of(config.auth.public_limits)),
                on_refusals=service.listener_refused,
            )
        except BaseException:
            await served.stop()
            await service.close()
            raise
    ticker = asyncio.create_task(_tick_forever(service), name="trustmesh-auth-keys")
    return RunningAuth(service, served, urls, public, ticker, gateway_tokens)


def _refusal(path: str) -> Refusal:
    """A suspended peer's answer: RFC 6749's shape on the OAuth endpoints, the admin
    API's elsewhere."""
    return OAUTH if path.startswith("/oauth2/") else PLATFORM


def _gateway_tokens(
    config: TrustmeshConfig,
    state: Path,
    tls: RotatingTLS,
    leeway: int,
    clock: Callable[[], float],
) -> GatewayTokens | None:
    """The gateway's keys, when one is declared: its tokens are subject tokens too."""
    if config.gateway is None:
        return None
    return GatewayTokens(
        config.component_spiffe_id("gateway"),
        tls,
        gateway_url_from(state),
        leeway=leeway,
        clock=clock,
    )


def _settings(config: TrustmeshConfig, urls: AuthURLs) -> AuthSettings:
    return AuthSettings(
        issuer=config.auth.issuer or urls.front,
        token_ttl=int(config.auth.access_token_ttl.total_seconds()),
        publish_delay=int(config.auth.key_publish_delay.total_seconds()),
        rotate_every=int(config.auth.key_rotation.total_seconds()),
        token_leeway=int(config.auth.token_leeway.total_seconds()),
    )


def _public_certificate(
    config: TrustmeshConfig, state: Path, seal_key: crypto.SealKey, config_dir: Path
) -> crypto.ServerCertificate:
    cert, key = config.auth.public_tls_cert, config.auth.public_tls_key
    files = (config_dir / cert, config_dir / key) if cert and key else None
    certificate = crypto.server_certificate(state, seal_key, files, dev=config.dev)
    if certificate is None:  # the config check says so too
        raise ConfigError("auth.public_tls_cert: required outside dev mode")
    return certificate


async def _tick_forever(service: AuthService) -> None:
    ticks = 0
    while True:
        await asyncio.sleep(TICK_SECONDS)
        ticks += 1
        try:
            await service.tick()
            if ticks % PRUNE_EVERY == 0:
                await service.store.prune(int(service.clock()))
                await service.revocations.prune(int(service.clock()))
        except Exception:  # keep signing with the keys we have; say so loudly
            log.exception("signing-key maintenance failed; retrying")
