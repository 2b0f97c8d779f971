"""``python -m trustmesh.audit --config FILE --state DIR``: the audit collector process.

Started by ``trustmesh up`` with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token for
``spiffe://<td>/trustmesh/audit``; writes where it listens to
``<state>/audit/endpoint.json`` once it serves (and again when its SVID rotates)."""

from __future__ import annotations

import sys
from pathlib import Path

from trustmesh.audit.endpoint import endpoint_path
from trustmesh.audit.server import serve_audit
from trustmesh.config import TrustmeshConfig
from trustmesh.platform.process import component_identity, component_main, serve_until_stopped
from trustmesh.platform.suspensions import suspension_feed


async def run(config: TrustmeshConfig, state: Path, config_file: Path) -> None:
    async with (
        component_identity(config, state, "audit") as (source, sink),
        suspension_feed(source, state, "audit") as suspended,
    ):
        running = await serve_audit(
            config, state, source=source, sink=sink, config_file=config_file, suspended=suspended
        )
        print(f"audit: {running.url}", flush=True)
        await serve_until_stopped(
            source, endpoint_path(state), lambda: {"url": running.url}, running.stop
        )


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-audit", run, argv)


if __name__ == "__main__":
    sys.exit(main())
