"""``python -m trustmesh.auth --config FILE --state DIR``: the identity provider process.

Started by ``trustmesh up`` with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token
(``TRUSTMESH_JOIN_TOKEN``) for ``spiffe://<td>/trustmesh/auth``; writes where it listens
to ``<state>/auth/endpoint.json`` once it serves (and again when its SVID rotates)."""

from __future__ import annotations

import sys
from pathlib import Path

from trustmesh.auth.endpoint import endpoint_path
from trustmesh.auth.server import serve_auth
from trustmesh.config import TrustmeshConfig
from trustmesh.platform.metrics import component_metrics
from trustmesh.platform.process import component_identity, component_main, serve_until_stopped
from trustmesh.platform.suspensions import suspension_feed


async def run(config: TrustmeshConfig, state: Path, config_file: Path) -> None:
    config_dir = config_file.parent
    async with (
        component_identity(config, state, "auth") as (source, recorded),
        component_metrics("auth", source, recorded) as (sink, metrics_url, _),
        suspension_feed(source, state, "auth") as suspended,
    ):
        running = await serve_auth(
            config, state, source=source, sink=sink, config_dir=config_dir, suspended=suspended
        )
        print(f"auth: issuer {running.service.settings.issuer}", flush=True)
        await serve_until_stopped(
            source,
            endpoint_path(state),
            lambda: {
                "url": running.url,
                "public_url": running.urls.public,
                "issuer": running.service.settings.issuer,
                "metrics_url": metrics_url,
            },
            running.stop,
        )


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-auth", run, argv)


if __name__ == "__main__":
    sys.exit(main())
