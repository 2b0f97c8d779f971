"""``python -m trustmesh.gateway --config FILE --state DIR``: the gateway process.

Started by ``trustmesh up`` (after the identity service and the provider, before the
services) with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token for
``spiffe://<td>/trustmesh/gateway``; writes where it listens to
``<state>/gateway/endpoint.json`` once it serves (and again when its SVID rotates):
``url`` (public), ``internal_url`` (mTLS: its JWKS), ``admin_url`` (mTLS: its admin API),
``metrics_url``, ``ext_authz_address`` (mTLS gRPC: ``gateway.ext_authz``). It finds
discovery (without which it does not start) and the provider through
:func:`trustmesh.platform.endpoints.peer_url`: ``TRUSTMESH_DISCOVERY_URL`` and
``TRUSTMESH_AUTH_URL`` first, their files second. On ``SIGHUP`` it reads its declaration again and applies it while it
serves (:mod:`trustmesh.gateway.reload`), saying how that went in
``<state>/gateway/reload.json`` (``trustmesh gateway reload`` sends the signal and reads
the answer).

With ``gateway.workers`` above one, ``up`` runs that many of these processes, each with
its number in ``TRUSTMESH_GATEWAY_WORKER`` (:mod:`trustmesh.gateway.endpoint`): all
listen on the client port (``SO_REUSEPORT``); worker 1 keeps the declared mTLS,
metrics and ``ext_authz`` ports, the others take free ones and say where in their own
endpoint file; each spools its events under its own name."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from pathlib import Path

from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.config.listen import apply_listen_env
from trustmesh.errors import TrustmeshError, UnavailableError
from trustmesh.gateway.endpoint import endpoint_path, reload_path, worker_name, worker_of
from trustmesh.gateway.nginx import NginxEdge
from trustmesh.gateway.server import RunningGateway, serve_gateway
from trustmesh.platform.endpoints import peer_url, require_peer_url
from trustmesh.platform.process import (
    component_identity,
    component_main,
    serve_until_stopped,
    write_json_atomic,
)
from trustmesh.platform.suspensions import suspension_feed

log = logging.getLogger("trustmesh.gateway")


async def run(config: TrustmeshConfig, state: Path, config_file: Path) -> None:
    config_dir = config_file.parent
    worker = worker_of()
    config = as_worker(config, worker)
    # where, not who: discovery and the provider are held to their SPIFFE IDs over mTLS
    discovery_url = require_peer_url(state, "identity")
    async with (
        component_identity(config, state, "gateway", instance=worker_name(worker)) as (
            source,
            sink,
        ),
        suspension_feed(source, state, "gateway") as suspended,
    ):
        running = await serve_gateway(
            config,
            state,
            source=source,
            sink=sink,
            discovery_url=discovery_url,
            auth_url=peer_url(state, "auth"),
            config_dir=config_dir,
            suspended=suspended,
        )
        print(f"gateway: {running.url}", flush=True)
        # what start-up built lives as long as the process: out of the collector's
        # sight, so that each collection walks only what requests allocate
        gc.collect()
        gc.freeze()

        _reload_on_hangup(running, config_file, state, worker)

        serving = asyncio.ensure_future(
            serve_until_stopped(
                source,
                endpoint_path(state, worker),
                lambda: {
                    "url": running.url,
                    "internal_url": running.internal_url,
                    "admin_url": running.admin_url,
                    "metrics_url": running.metrics_url,
                    "ext_authz_address": running.ext_authz_address,
                    "engine": config.gateway.engine if config.gateway else "python",
                },
                running.stop,
            )
        )
        edge = running.public
        if not isinstance(edge, NginxEdge):
            await serving
            return
        failing = asyncio.ensure_future(edge.failed.wait())
        await asyncio.wait({serving, failing}, return_when=asyncio.FIRST_COMPLETED)
        failing.cancel()
        if not serving.done():  # nginx could not be kept running: the gateway stops too
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            raise UnavailableError("nginx exited and could not be started again")
        await serving


def as_worker(config: TrustmeshConfig, worker: int) -> TrustmeshConfig:
    """``config`` as gateway process ``worker`` serves it: the first keeps every declared
    port; the others share only the client port, and take free ones for the rest."""
    gateway = config.gateway
    if worker == 1 or gateway is None:
        return config
    own: dict[str, object] = {"internal_port": 0}
    if gateway.metrics_port is not None:
        own["metrics_port"] = 0
    if gateway.ext_authz is not None:
        own["ext_authz"] = gateway.ext_authz.model_copy(update={"port": 0})
    return config.model_copy(update={"gateway": gateway.model_copy(update=own)})


def _reload_on_hangup(running: RunningGateway, config_file: Path, state: Path, worker: int) -> None:
    """On SIGHUP, the declaration read again and applied, or refused (the running one
    stays); the outcome in ``<state>/gateway/reload.json``."""

    async def reload() -> None:
        async with _one_at_a_time:
            outcome: dict[str, object] = {"at": time.time(), "ok": True}
            try:
                # the listeners the environment pins, as at start
                declared = as_worker(apply_listen_env(load_config(config_file)), worker)
                await running.reload(declared, config_file.parent)
            except TrustmeshError as exc:
                outcome.update(ok=False, error=exc.detail, code=exc.code)
                log.error("gateway: reload refused: %s", exc.detail)
            else:
                log.warning("gateway: declaration reloaded from %s", config_file)
            write_json_atomic(reload_path(state, worker), outcome)

    def on_hangup() -> None:
        task = asyncio.ensure_future(reload())
        _reloading.add(task)
        task.add_done_callback(_reloading.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hangup)


#: Reloads in progress (each kept until it ends).
_reloading: set[asyncio.Future[None]] = set()
_one_at_a_time = asyncio.Lock()


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-gateway", run, argv)


if __name__ == "__main__":
    sys.exit(main())
