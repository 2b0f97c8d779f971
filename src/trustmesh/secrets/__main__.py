"""``python -m trustmesh.secrets --config FILE --state DIR``: the secrets service process.

Started by ``trustmesh up`` with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token for
``spiffe://<td>/trustmesh/secrets``; writes where it listens to
``<state>/secrets/endpoint.json`` once it serves (and again when its SVID rotates)."""

from __future__ import annotations

import sys
from pathlib import Path

from trustmesh.config import TrustmeshConfig
from trustmesh.platform.metrics import component_metrics
from trustmesh.platform.process import component_identity, component_main, serve_until_stopped
from trustmesh.platform.suspensions import suspension_feed
from trustmesh.secrets.endpoint import endpoint_path
from trustmesh.secrets.server import serve_secrets


async def run(config: TrustmeshConfig, state: Path, config_file: Path) -> None:
    async with (
        component_identity(config, state, "secrets") as (source, recorded),
        component_metrics("secrets", source, recorded) as (sink, metrics_url, _),
        suspension_feed(source, state, "secrets") as suspended,
    ):
        running = await serve_secrets(
            config, state, source=source, sink=sink, config_file=config_file, suspended=suspended
        )
        print(f"secrets: {running.url}", flush=True)
        await serve_until_stopped(
            source,
            endpoint_path(state),
            lambda: {"url": running.url, "metrics_url": metrics_url},
            running.stop,
        )


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-secrets", run, argv)


if __name__ == "__main__":
    sys.exit(main())
