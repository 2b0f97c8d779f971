"""``python -m trustmesh.sdk.runner package.module:app``: how ``trustmesh up`` runs a
declared service (settings from the environment; see ``sdk.runtime``). Once the service
serves, its runtime profile is enforced (or monitored) by an audit hook for the rest of
the process's life (:mod:`trustmesh.sdk.guard`). At SIGHUP (``trustmesh reload``) it
compiles the calls it accepts from the declaration read again, and says how it went in
:func:`reload_path`. At SIGTERM it drains (:mod:`trustmesh.sdk.drain`:
``listen.drain``), then closes (its events flushed)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from trustmesh.config import load_config
from trustmesh.config.listen import apply_listen_env
from trustmesh.errors import TrustmeshError
from trustmesh.sdk import drain, guard
from trustmesh.sdk.delivery import AUDIT_URL_ENV, collector_endpoint
from trustmesh.sdk.metrics import METRICS_FILE_ENV
from trustmesh.sdk.runtime import (
    AUTH_URL_ENV,
    CONFIG_ENV,
    EVENTS_ENV,
    GATEWAY_URL_ENV,
    Runtime,
    run_service,
)
from trustmesh.sdk.secrets import SECRETS_URL_ENV
from trustmesh.sdk.workload import socket_path

#: The environment variables naming the platform endpoints a service is implied to reach.
_ENDPOINT_ENVS = (
    AUTH_URL_ENV,
    GATEWAY_URL_ENV,
    SECRETS_URL_ENV,
    AUDIT_URL_ENV,
    "TRUSTMESH_DISCOVERY_URL",
)


def load_app(target: str) -> object:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"expected package.module:attribute, got {target!r}")
    return getattr(importlib.import_module(module_name), attr)


async def main(target: str) -> None:
    loop = asyncio.get_running_loop()
    hangup = asyncio.Event()  # a reload asked for while the service starts: once it serves
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    app = load_app(target)
    runtime = await run_service(app)  # type: ignore[arg-type]
    drain.configure(runtime.config.listen.drain.total_seconds())
    guard.install(runtime_guard(runtime))
    print(
        f"{runtime.service}: serving on {runtime.url} as {runtime.source.context.spiffe_id}",
        flush=True,
    )
    if runtime.metrics_url:
        print(f"{runtime.service}: Prometheus metrics at {runtime.metrics_url}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_calls(runtime))
    if hangup.is_set():
        _reload_calls(runtime)
    await stop.wait()
    drain.begin()  # the requests in flight finish (or are cut), then the runtime closes
    await runtime.close()


def reload_path(state: Path, service: str) -> Path:
    """Where ``service`` says how its last reload went (``at``, ``ok``, ``routes`` or
    ``error``), after each ``SIGHUP``."""
    return state / "run" / f"{service}.reload.json"


def _state() -> Path | None:
    """The state directory ``up`` runs the service under (its event log's)."""
    events_path = os.environ.get(EVENTS_ENV)
    return Path(events_path).parent.parent if events_path else None


def _reload_calls(runtime: Runtime) -> None:
    """On ``SIGHUP`` (``trustmesh reload``): the declaration read again, the calls the
    service accepts compiled from it and swapped in (:meth:`Runtime.reload_calls`), or
    refused (the running ones stay); the outcome in :func:`reload_path`."""
    outcome: dict[str, object] = {"at": time.time(), "ok": True}
    try:
        config_file = Path(os.environ.get(CONFIG_ENV, "trustmesh.yaml"))
        outcome["routes"] = runtime.reload_calls(apply_listen_env(load_config(config_file)))
    except TrustmeshError as exc:
        outcome.update(ok=False, error=exc.detail, code=exc.code)
        print(f"{runtime.service}: reload refused: {exc.detail}", file=sys.stderr, flush=True)
    state = _state()
    if state is not None:  # readers see the last outcome whole, or the one before it
        path = reload_path(state, runtime.service)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(outcome))
        tmp.replace(path)


def runtime_guard(runtime: Runtime) -> guard.RuntimeGuard:
    """The guard of ``runtime``'s declared profile, with what the service is implied to
    need: the platform endpoints it was started with (and the audit collector wherever
    it says it listens now), the Workload API socket, its event log, audit spool and
    metrics file. Built before it is installed: nothing here is judged."""
    profile = runtime.config.services[runtime.service].runtime
    urls = [os.environ.get(name, "") for name in _ENDPOINT_ENVS]
    urls += [runtime.secrets_url or "", runtime.config.auth.redis or ""]
    connect = {e for e in map(guard.endpoint, urls) if e is not None}
    unix: list[str] = []
    spiffe_socket = os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if spiffe_socket:
        unix.append(socket_path(spiffe_socket))
    writable: list[str] = []
    events_path = os.environ.get(EVENTS_ENV)
    state = _state()
    if events_path and state is not None:
        writable += [events_path, str(state / "spool" / runtime.service)]
        reloaded = reload_path(state, runtime.service)  # written through a .tmp
        writable += [str(reloaded), str(reloaded.with_suffix(".tmp"))]
    metrics_file = os.environ.get(METRICS_FILE_ENV)
    if metrics_file:
        writable += [metrics_file, str(Path(metrics_file).with_suffix(".tmp"))]

    def locate() -> list[str]:
        url = collector_endpoint(state) if state is not None else None
        return [url] if url else []

    return guard.RuntimeGuard(
        profile,
        runtime.recorder,
        connect=connect,
        unix=unix,
        writable=writable,
        locate=locate,
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m trustmesh.sdk.runner package.module:app")
    try:
        asyncio.run(main(sys.argv[1]))
    except TrustmeshError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        sys.exit(1)
