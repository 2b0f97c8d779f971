"""``python -m trustmesh.sdk.runner package.module:app``: how ``trustmesh up`` runs a
declared service (settings from the environment; see ``sdk.runtime``)."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys

from trustmesh.errors import TrustmeshError
from trustmesh.sdk.runtime import run_service


def load_app(target: str) -> object:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"expected package.module:attribute, got {target!r}")
    return getattr(importlib.import_module(module_name), attr)


async def main(target: str) -> None:
    app = load_app(target)
    runtime = await run_service(app)  # type: ignore[arg-type]
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
    await runtime.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m trustmesh.sdk.runner package.module:app")
    try:
        asyncio.run(main(sys.argv[1]))
    except TrustmeshError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        sys.exit(1)
