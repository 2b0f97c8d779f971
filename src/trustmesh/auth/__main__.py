"""``python -m trustmesh.auth --config FILE --state DIR``: the identity provider process.

Started by ``trustmesh up`` with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token
(``TRUSTMESH_JOIN_TOKEN``) for ``spiffe://<td>/trustmesh/auth``; writes where it listens
to ``<state>/auth/endpoint.json`` once it serves (and again when its SVID rotates)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from trustmesh import events
from trustmesh.auth.server import RunningAuth, serve_auth
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UnavailableError
from trustmesh.sdk.process import component_main, until_stopped, write_json_atomic
from trustmesh.sdk.runtime import EVENTS_ENV
from trustmesh.sdk.workload import JOIN_TOKEN_ENV, redeem_join_token
from trustmesh.sdk.x509source import X509Context, X509Source


def endpoint_path(state: Path) -> Path:
    return state / "auth" / "endpoint.json"


def _write_endpoint(path: Path, running: RunningAuth, context: X509Context) -> None:
    doc = {
        "url": running.url,
        "public_url": running.urls.public,
        "issuer": running.service.settings.issuer,
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
    token = os.environ.pop(JOIN_TOKEN_ENV, None)
    if token:
        await redeem_join_token(address, token)
    source = X509Source(address, spiffe_id=config.component_spiffe_id("auth"))
    await source.start()
    sink = events.JsonLinesSink(Path(os.environ.get(EVENTS_ENV) or state / "events" / "auth.jsonl"))
    running = await serve_auth(config, state, source=source, sink=sink, config_dir=config_dir)
    path = endpoint_path(state)
    _write_endpoint(path, running, source.context)
    source.subscribe(lambda context: _write_endpoint(path, running, context))
    print(f"auth: issuer {running.service.settings.issuer}", flush=True)
    try:
        await until_stopped()
    finally:
        path.unlink(missing_ok=True)
        await running.stop()
        await source.close()
        sink.close()


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-auth", run, argv)


if __name__ == "__main__":
    sys.exit(main())
