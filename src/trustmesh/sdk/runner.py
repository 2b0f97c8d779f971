"""``python -m trustmesh.sdk.runner package.module:app``: how ``trustmesh up`` runs a
declared service (settings from the environment; see ``sdk.runtime``). Once the service
serves, its runtime profile is enforced (or monitored) by an audit hook for the rest of
the process's life (:mod:`trustmesh.sdk.guard`). At SIGTERM it drains
(:mod:`trustmesh.sdk.drain`: ``listen.drain``), then closes (its events flushed)."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from pathlib import Path

from trustmesh.errors import TrustmeshError
from trustmesh.sdk import drain, guard
from trustmesh.sdk.delivery import AUDIT_URL_ENV, collector_endpoint
from trustmesh.sdk.metrics import METRICS_FILE_ENV
from trustmesh.sdk.runtime import (
    AUTH_URL_ENV,
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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    drain.begin()  # the requests in flight finish (or are cut), then the runtime closes
    await runtime.close()


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
    state = Path(events_path).parent.parent if events_path else None
    if events_path and state is not None:
        writable += [events_path, str(state / "spool" / runtime.service)]
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
