"""Run the identity provider: its store, keys and HTTP app, served over mTLS with its
own SVID (``spiffe://<td>/trustmesh/auth``) through ``sdk.serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from trustmesh import crypto, events
from trustmesh.auth.app import auth_app
from trustmesh.auth.db import AuthStore
from trustmesh.auth.service import AuthService, AuthSettings
from trustmesh.config import TrustmeshConfig
from trustmesh.sdk.serve import Served, start
from trustmesh.sdk.x509source import SVIDSource
from trustmesh.store import create_engine, sqlite_url

log = logging.getLogger("trustmesh.auth")

TICK_SECONDS = 1.0
PRUNE_EVERY = 60


@dataclass
class RunningAuth:
    service: AuthService
    served: Served
    url: str
    _ticker: asyncio.Task[None]

    async def stop(self) -> None:
        self._ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        await self.served.stop()
        await self.service.close()


def database_url(config: TrustmeshConfig, state: Path) -> str:
    return config.auth.database or sqlite_url(state.absolute() / "auth" / "auth.db")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def serve_auth(
    config: TrustmeshConfig,
    state: Path,
    *,
    source: SVIDSource,
    sink: events.EventSink,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> RunningAuth:
    """Start the identity provider; return once it listens with an active signing key."""
    port = port if port is not None else config.auth.port
    if not port:
        port = _free_port(host)  # the issuer names the port: it must be known up front
    url = f"https://{host}:{port}"
    settings = AuthSettings(
        issuer=config.auth.issuer or url,
        token_ttl=int(config.auth.access_token_ttl.total_seconds()),
        publish_delay=int(config.auth.key_publish_delay.total_seconds()),
        rotate_every=int(config.auth.key_rotation.total_seconds()),
    )
    seal_key = crypto.load_seal_key(state, dev=config.dev)
    store = AuthStore(create_engine(database_url(config, state)))
    service = AuthService(config, store, seal_key, settings, sink)
    await service.start()
    served = await start(auth_app(service, lambda: url), host=host, port=port, source=source)
    ticker = asyncio.create_task(_tick_forever(service), name="trustmesh-auth-keys")
    return RunningAuth(service, served, url, ticker)


async def _tick_forever(service: AuthService) -> None:
    ticks = 0
    while True:
        await asyncio.sleep(TICK_SECONDS)
        ticks += 1
        try:
            await service.tick()
            if ticks % PRUNE_EVERY == 0:
                await service.store.prune(int(service.clock()))
        except Exception:  # keep signing with the keys we have; say so loudly
            log.exception("signing-key maintenance failed; retrying")
