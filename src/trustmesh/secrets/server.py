"""Run the secrets service: its store, barrier, engines and HTTP app, served over mTLS
with its own SVID (``spiffe://<td>/trustmesh/secrets``).

In dev mode (``secrets.dev_auto_unseal``, on by default with ``dev: true``) the service
initialises itself with one share, keeps that share in a 0600 file beside the data and
unseals from it at every start — and says so loudly: anyone who can read the state
directory can then read every secret.

A workload whose SPIFFE ID is suspended is refused before the Vault API sees its request
(:mod:`trustmesh.platform.suspensions`): ``403`` in Vault's shape and a
``suspended-spiffe-id`` event — no login, no read, no transit operation, whatever token
it still holds."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

from trustmesh import crypto, events
from trustmesh.config import TrustmeshConfig
from trustmesh.config.listen import listen_url
from trustmesh.config.secrets import SecretsConfig
from trustmesh.errors import ConfigError, StateError
from trustmesh.platform.listeners import Served, bound_socket, start
from trustmesh.platform.suspensions import VAULT, RefuseSuspended
from trustmesh.sdk import store_tls
from trustmesh.sdk.spans import TracedApp
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import SVIDSource
from trustmesh.secrets.app import SecretsApp
from trustmesh.secrets.audit import AuditDevice
from trustmesh.secrets.endpoint import DEV_UNSEAL_WARNING, dev_unseal_path
from trustmesh.secrets.routes import SecretsRoutes
from trustmesh.secrets.service import SecretsService, audit_key
from trustmesh.secrets.store import SecretsStore
from trustmesh.store import create_engine, sqlite_url
from trustmesh.store.shared import component_url

__all__ = ["RunningSecrets", "serve_secrets"]

log = logging.getLogger("trustmesh.secrets")


@dataclass
class RunningSecrets:
    service: SecretsService
    served: Served
    url: str
    sweeper: asyncio.Task[None] | None = None  # revokes expired leases

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        await self.served.stop()
        await self.service.close()


def settings_of(config: TrustmeshConfig) -> SecretsConfig:
    if config.secrets is None:
        raise ConfigError("secrets: not declared in the configuration")
    return config.secrets


async def serve_secrets(
    config: TrustmeshConfig,
    state: Path,
    *,
    source: SVIDSource,
    sink: events.EventSink,
    host: str | None = None,
    port: int | None = None,
    clock: Callable[[], float] = time.time,
    config_file: Path | None = None,
    suspended: Container[str] | None = None,
) -> RunningSecrets:
    """Start the secrets service; return once it listens (unsealed, in dev mode).
    ``host`` and ``port``: the declaration's (``listen.host``, ``secrets.port``) unless
    given; ``config_file``: where ``config`` was read, read again by ``sys/config/reload``;
    ``suspended``: the SPIFFE IDs refused (the suspensions feed)."""
    settings = settings_of(config)
    host = host if host is not None else config.listen.host
    sock = bound_socket(host, port if port is not None else settings.port)
    try:
        service = await _service(config, settings, state, clock, config_file)
    except BaseException:
        sock.close()
        raise
    try:
        return await _serve(config, service, source, sink, host, sock, suspended)
    except BaseException:
        sock.close()
        await service.close()
        raise


def _paths(config: TrustmeshConfig, settings: SecretsConfig, state: Path) -> tuple[str, Path]:
    """The database URL (its own, its role in the shared one, or SQLite) and the audit
    file."""
    folder = state.absolute() / "secrets"
    url = (
        settings.database
        or component_url(config, state, "secrets")
        or sqlite_url(folder / "secrets.db")
    )
    return url, Path(settings.audit_file) if settings.audit_file else folder / "audit.jsonl"


async def _service(
    config: TrustmeshConfig,
    settings: SecretsConfig,
    state: Path,
    clock: Callable[[], float],
    config_file: Path | None,
) -> SecretsService:
    url, audit_file = _paths(config, settings, state)
    store = SecretsStore(create_engine(url, tls=store_tls.postgres))
    await store.create()
    key = await audit_key(store, crypto.load_seal_key(state, dev=config.dev))
    audit = AuditDevice(audit_file, key)
    service = SecretsService(config, settings, store, audit, clock=clock, config_file=config_file)
    await service.start()
    auto = settings.dev_auto_unseal if settings.dev_auto_unseal is not None else config.dev
    if auto:
        await _dev_unseal(service, dev_unseal_path(state))
    return service


def _keep_share(path: Path, share: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(base64.b64encode(share).decode() + "\n")


def _kept_share(path: Path) -> bytes:
    try:
        return base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, ValueError, binascii.Error) as exc:
        raise StateError(
            f"dev auto-unseal: cannot read {path} ({exc}); the service was initialised "
            "with shares elsewhere: unseal it with `trustmesh secrets unseal`"
        ) from None


async def _dev_unseal(service: SecretsService, path: Path) -> None:
    """Initialise with one share kept in ``path`` (0600) if need be; unseal from it."""
    barrier = service.barrier
    if not barrier.initialized:
        (share,) = await barrier.initialize(1, 1)
        _keep_share(path, share)
    share = _kept_share(path)
    print(DEV_UNSEAL_WARNING.format(path=path), file=sys.stderr, flush=True)
    log.warning(DEV_UNSEAL_WARNING.format(path=path))
    await barrier.submit(share)
    await service.kv.load_config()


async def _serve(
    config: TrustmeshConfig,
    service: SecretsService,
    source: SVIDSource,
    sink: events.EventSink,
    host: str,
    sock: socket.socket,
    suspended: Container[str] | None = None,
) -> RunningSecrets:
    port = int(sock.getsockname()[1])
    recorder = events.Recorder(
        sink, component="secrets", spiffe_id=config.component_spiffe_id("secrets")
    )
    vault = SecretsApp(service, SecretsRoutes(service).table(), recorder)
    app = vault if suspended is None else RefuseSuspended(vault, suspended, recorder, answer=VAULT)
    served = await start(
        TracedApp(app), host=host, port=port, tls=RotatingTLS(source), sock=sock, parser="h11"
    )
    sweeper = asyncio.create_task(service.database.run())
    return RunningSecrets(service, served, listen_url(host, port), sweeper)
