"""An audit collector for tests: the real collector over mTLS on 127.0.0.1 (SQLite in a
temporary state directory), an identity service in a thread, and the SVIDs of payments
and the operator for an aiohttp client."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import spiffe_http

from trustmesh import events
from trustmesh.audit.server import RunningAudit, serve_audit
from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "trustmesh.local"  # the trust domain of tests/audit/auditkit.py's events
PAYMENTS = f"spiffe://{TD}/payments"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"
AUDIT = f"spiffe://{TD}/trustmesh/audit"

CONFIG = f"""
trust_domain: {TD}
dev: true
services:
  payments: {{external: true}}
audit:
  checkpoint_every: 5
"""


def collector_config(text: str = CONFIG) -> TrustmeshConfig:
    return parse_config(text, source="test.yaml")


def identity_for(
    config: TrustmeshConfig, where: Path, **server: Any
) -> Iterator[RunningIdentityServer]:
    """``server``: IdentityServer options (``discovery=True``: its suspensions feed)."""
    with identity_server_in_thread(config, where, **server) as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (PAYMENTS, OPERATOR, AUDIT):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


@dataclass
class Caller:
    workload: spiffe_http.Workload
    url: str

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data: bytes | io.BytesIO | None = (
            raw if raw is not None else (None if body is None else json.dumps(body).encode())
        )
        if data is not None and len(data) > 1024 * 1024:  # aiohttp warns of large bytes
            data = io.BytesIO(data)
        connector = aiohttp.TCPConnector(ssl=self.workload.ssl_context())
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(method, self.url + path, data=data) as response,
        ):
            text = await response.text()
            return response.status, json.loads(text) if text else None


@dataclass
class CollectorRig:
    running: RunningAudit
    sink: events.MemorySink
    payments: Caller
    operator: Caller
    state: Path


@contextlib.asynccontextmanager
async def collector_rig(
    identity: RunningIdentityServer, state: Path, config: TrustmeshConfig, **serve: Any
) -> AsyncIterator[CollectorRig]:
    sink = events.MemorySink()
    source = X509Source(identity.address, spiffe_id=AUDIT)
    await source.start()
    running = await serve_audit(config, state, source=source, sink=sink, **serve)
    people = [
        await spiffe_http.workload(identity.address, who, state / "pki", spiffe_http.Workload)
        for who in (PAYMENTS, OPERATOR)
    ]
    try:
        yield CollectorRig(running, sink, *(Caller(p, running.url) for p in people), state)
    finally:
        await running.stop()
        for who in people:
            await who.source.close()
        await source.close()
