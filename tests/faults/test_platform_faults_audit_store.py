"""PostgreSQL (a private cluster, never the machine's own) stopped and started again
under the audit collector (``python -m trustmesh.audit`` with ``audit.database``) while a
producer delivers to it: meanwhile the collector refuses what it cannot store with a
structured 503 (never a 500, and at once) — deliveries and the operator's searches
alike — and the producer keeps the events in its spool; once the database is back the
same collector process stores them, and every event is stored exactly once, in the
producer's order."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))  # deliveryrig

import pytest
import spiffe_http
from deliveryrig import (
    OPERATOR,
    PAYMENTS,
    TD,
    Caller,
    CollectorProcess,
    collector_config,
    emit_numbered,
    identity_for,
    numbers,
    producer,
    stored,
)
from platformfaultrig import Scale, free_port
from services import private_postgres

from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(collector_config(), short_tmp / "identity")


async def test_postgresql_restarted_under_the_audit_collector(
    identity: RunningIdentityServer, short_tmp: Path, fault_scale: Scale
) -> None:
    count = fault_scale.count(200, 5000)
    with private_postgres() as cluster:
        url = await cluster.owned_database("tm_audit")
        port = free_port()
        collector = CollectorProcess(short_tmp / "c", identity.address, port)
        collector.config_file.write_text(
            f"trust_domain: {TD}\ndev: true\nservices:\n  payments: {{external: true}}\n"
            f'audit: {{port: {port}, checkpoint_every: 1000, database: "{url}"}}\n'
        )
        await collector.start()
        assert collector.proc is not None
        pid = collector.proc.pid
        payments = X509Source(identity.address, spiffe_id=PAYMENTS)
        await payments.start()
        operator = await spiffe_http.workload(
            identity.address, OPERATOR, short_tmp / "pki", spiffe_http.Workload
        )
        caller = Caller(operator, f"https://127.0.0.1:{port}")
        sink = producer(payments, short_tmp / "spool", port)
        try:
            await asyncio.to_thread(emit_numbered, sink, 0, count)
            assert await asyncio.to_thread(sink.flush, 20.0), sink.stats()
            await asyncio.to_thread(cluster.stop)
            # down: what is emitted is spooled; the collector refuses, cleanly and at once
            await asyncio.to_thread(emit_numbered, sink, count, count)
            for _ in range(fault_scale.count(3, 30)):
                started = time.monotonic()
                status, answer = await caller.call("GET", "/v1/events?limit=10")
                assert time.monotonic() - started < 10, "no fast answer"
                assert status == 503, (status, answer)
                assert answer["error"] == "unavailable", answer
            assert not await asyncio.to_thread(sink.flush, 1.0)  # not taken meanwhile
            assert sink.stats().spooled > 0
            await asyncio.to_thread(cluster.start)
            # back: the same process takes them, and what comes next
            await asyncio.to_thread(emit_numbered, sink, 2 * count, count)
            assert await asyncio.to_thread(sink.flush, 25.0), sink.stats()
            stats = await asyncio.to_thread(sink.close, 5.0)
            assert stats.failures > 0  # the outage was felt
            assert collector.proc.pid == pid
            assert collector.proc.poll() is None
            found = await stored(caller)
            assert numbers(found) == list(range(3 * count))  # each once, in order
        finally:
            sink.close(1.0)
            await operator.source.close()
            await payments.close()
            collector.stop()
