"""``python -m trustmesh.gateway --config FILE --state DIR``: the gateway process.

Started by ``trustmesh up`` (after the identity service and the provider, before the
services) with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token for
``spiffe://<td>/trustmesh/gateway``; writes where it listens to
``<state>/gateway/endpoint.json`` once it serves (and again when its SVID rotates)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UnavailableError
from trustmesh.gateway.server import RunningGateway, serve_gateway
from trustmesh.sdk.process import component_main, until_stopped, write_json_atomic
from trustmesh.sdk.runtime import EVENTS_ENV
from trustmesh.sdk.workload import JOIN_TOKEN_ENV, redeem_join_token
from trustmesh.sdk.x509source import X509Context, X509Source


def endpoint_path(state: Path) -> Path:
    return state / "gateway" / "endpoint.json"


def _url_from(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    url = doc.get("url") if isinstance(doc, dict) else None
    return url if isinstance(url, str) else None


def _write_endpoint(path: Path, running: RunningGateway, context: X509Context) -> None:
    doc = {
        "url": running.url,
        "internal_url": running.internal_url,
        "spiffe_id": context.spiffe_id,
        "cert_expires": context.not_after.isoformat(),
        "pid": os.getpid(),
        "updated_at": time.time(),
    }
    write_json_atomic(path, doc)


async def run(config: TrustmeshConfig, state: Path, config_dir: Path) -> None:
    address = os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not address:
        raise UnavailableError("SPIFFE_ENDPOINT_SOCKET is not set")
    discovery_url = _url_from(state / "discovery.json")
    if discovery_url is None:
        raise UnavailableError("discovery is not running (no discovery.json)")
    token = os.environ.pop(JOIN_TOKEN_ENV, None)
    if token:
        await redeem_join_token(address, token)
    source = X509Source(address, spiffe_id=config.component_spiffe_id("gateway"))
    await source.start()
    sink = events.JsonLinesSink(
        Path(os.environ.get(EVENTS_ENV) or state / "events" / "gateway.jsonl")
    )
    running = await serve_gateway(
        config,
        state,
        source=source,
        sink=sink,
        discovery_url=discovery_url,
        auth_url=_url_from(state / "auth" / "endpoint.json"),
        config_dir=config_dir,
    )
    path = endpoint_path(state)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_endpoint(path, running, source.context)
    source.subscribe(lambda context: _write_endpoint(path, running, context))
    print(f"gateway: {running.url}", flush=True)
    try:
        await until_stopped()
    finally:
        path.unlink(missing_ok=True)
        await running.stop()
        await source.close()
        sink.close()


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-gateway", run, argv)


if __name__ == "__main__":
    sys.exit(main())
