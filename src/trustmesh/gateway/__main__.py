"""``python -m trustmesh.gateway --config FILE --state DIR``: the gateway process.

Started by ``trustmesh up`` (after the identity service and the provider, before the
services) with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token for
``spiffe://<td>/trustmesh/gateway``; writes where it listens to
``<state>/gateway/endpoint.json`` once it serves (and again when its SVID rotates):
``url`` (public), ``internal_url`` (mTLS: its JWKS), ``admin_url`` (mTLS: its admin API),
``metrics_url``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UnavailableError
from trustmesh.gateway.endpoint import endpoint_path
from trustmesh.gateway.server import serve_gateway
from trustmesh.platform.process import component_identity, component_main, serve_until_stopped
from trustmesh.platform.suspensions import suspension_feed


def _url_from(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    url = doc.get("url") if isinstance(doc, dict) else None
    return url if isinstance(url, str) else None


async def run(config: TrustmeshConfig, state: Path, config_file: Path) -> None:
    config_dir = config_file.parent
    discovery_url = _url_from(state / "discovery.json")
    if discovery_url is None:
        raise UnavailableError("discovery is not running (no discovery.json)")
    async with (
        component_identity(config, state, "gateway") as (source, sink),
        suspension_feed(source, state, "gateway") as suspended,
    ):
        running = await serve_gateway(
            config,
            state,
            source=source,
            sink=sink,
            discovery_url=discovery_url,
            auth_url=_url_from(state / "auth" / "endpoint.json"),
            config_dir=config_dir,
            suspended=suspended,
        )
        print(f"gateway: {running.url}", flush=True)
        await serve_until_stopped(
            source,
            endpoint_path(state),
            lambda: {
                "url": running.url,
                "internal_url": running.internal_url,
                "admin_url": running.admin_url,
                "metrics_url": running.metrics_url,
            },
            running.stop,
        )


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-gateway", run, argv)


if __name__ == "__main__":
    sys.exit(main())
