"""A producer whose clock runs ahead cannot move detection's time: an event stamped
later than the collector's own clock (past a minute's skew) is judged at the
collector's time, so the windows of everyone else stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from auditkit import T0, login_failed

from trustmesh import crypto
from trustmesh.audit.chain import CheckpointPolicy
from trustmesh.audit.detection import Detector
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.service import AuditService
from trustmesh.store import create_engine, sqlite_url

AUTH = "spiffe://shop.test/trustmesh/auth"


class Clock:
    """The collector's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0.timestamp() + 30

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(tmp_path: Path, clock: Clock) -> AsyncIterator[AuditService]:
    ledger = Ledger(create_engine(sqlite_url(tmp_path / "audit.db")))
    await ledger.create()
    try:
        yield AuditService(
            ledger,
            crypto.generate_signing_key(),
            Detector.shipped(),
            CheckpointPolicy(records=10_000),
            clock=clock,
        )
    finally:
        await ledger.close()


async def _brute_forced(service: AuditService, clock: Clock) -> set[str]:
    """The accounts a brute-force alert names, once every window has closed."""
    clock.now += 300
    await service.tick()
    return {
        str(dict(a.group).get("unmapped.trustmesh.attributes.login"))
        for a in service.alerts
        if a.rule_id.startswith("9bc736d8")
    }


async def test_an_event_from_the_future_does_not_close_the_present_windows(
    service: AuditService, clock: Clock
) -> None:
    await service.ingest([login_failed("alice", s) for s in range(5)], AUTH)
    await service.ingest([login_failed("mallory", 86_400)], AUTH)  # a day ahead
    await service.ingest([login_failed("alice", s) for s in range(5, 10)], AUTH)
    assert "alice" in await _brute_forced(service, clock)  # ten failures in ten seconds


async def test_a_small_skew_is_taken_as_it_comes(service: AuditService, clock: Clock) -> None:
    """Within a minute ahead, an event keeps its own time (clocks are never exact): ten
    failures 50 to 59 s ahead of the collector are still ten within a minute."""
    await service.ingest([login_failed("carol", 80 + s) for s in range(10)], AUTH)
    assert "carol" in await _brute_forced(service, clock)
