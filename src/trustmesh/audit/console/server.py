"""Starting the console beside the audit collector, in its process: a TLS listener of
its own for browsers (the operator's certificate, or in dev mode one from the local edge
CA), the edge counts fed by every event the collector stores, and sign-in through the
identity provider with the collector's SVID."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from trustmesh import crypto, events
from trustmesh.audit.console.app import ConsoleApp, Pages
from trustmesh.audit.console.graph import EdgeCounts, declared
from trustmesh.audit.console.sessions import Sessions
from trustmesh.audit.console.signin import SignIn, WireProvider
from trustmesh.audit.console.source import ConsoleSource
from trustmesh.audit.service import AuditService
from trustmesh.audit.spans import SpanStore
from trustmesh.config import TrustmeshConfig
from trustmesh.config.audit import ConsoleConfig
from trustmesh.config.listen import listen_url
from trustmesh.errors import ConfigError
from trustmesh.platform.listeners import PublicServed, bound_socket, start_public
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["RunningConsole", "edge_counts", "start_console"]


@dataclass
class RunningConsole:
    url: str
    served: PublicServed
    provider: WireProvider

    async def stop(self) -> None:
        await self.served.stop()
        with contextlib.suppress(Exception):  # its connections to the provider only
            await self.provider.close()


def edge_counts(config: TrustmeshConfig, service: AuditService) -> EdgeCounts:
    """The counts, fed from now on by every event the collector stores."""
    gateway = config.component_spiffe_id("gateway") if config.gateway is not None else None
    counts = EdgeCounts(declared(config), gateway, clock=service.clock)
    service.taps.append(counts.observe)
    return counts


async def start_console(
    config: TrustmeshConfig,
    settings: ConsoleConfig,
    state: Path,
    *,
    service: AuditService,
    spans: SpanStore | None,
    edges: EdgeCounts,
    tls: RotatingTLS,
    sink: events.EventSink,
    declared_in: Path,
    host: str | None = None,
) -> RunningConsole:
    """The console's listener on ``host`` (the declaration's ``listen.host`` unless given)
    and ``audit.console.port``; its URL names a connectable address (loopback for a
    wildcard bind)."""
    cert, key = settings.tls_cert, settings.tls_key
    files = (declared_in / cert, declared_in / key) if cert and key else None
    seal_key = crypto.load_seal_key(state, dev=config.dev)
    certificate = crypto.server_certificate(state, seal_key, files, dev=config.dev)
    if certificate is None:  # the config check says so too
        raise ConfigError("audit.console.tls_cert: required outside dev mode")
    host = config.listen.host if host is None else host
    sock = bound_socket(host, settings.port)
    port = int(sock.getsockname()[1])
    url = listen_url(host, port)
    provider = WireProvider(tls, state, config.component_spiffe_id("auth"))
    app = ConsoleApp(
        ConsoleSource(config, state, service, spans, edges, tls),
        SignIn(provider, settings.client_id, leeway=config.auth.token_leeway.total_seconds()),
        Sessions(
            settings.session_ttl.total_seconds(),
            settings.idle_timeout.total_seconds(),
            path=state / "audit" / "console-sessions.db",  # a restart signs no one out
        ),
        events.Recorder(sink, component="console", spiffe_id=service.spiffe_id),
        Pages(settings.public_url or url, int(settings.refresh.total_seconds() * 1000)),
    )
    try:
        served = await start_public(
            app.asgi(),
            chain_pem=certificate.chain_pem(),
            key_pem=certificate.key_pem(),
            host=host,
            port=port,
            sock=sock,
        )
    except BaseException:
        sock.close()
        raise
    return RunningConsole(url, served, provider)
