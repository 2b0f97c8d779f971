"""The audit collector and a suspended workload: its deliveries (``POST /v1/events``) are
still taken — the events of a suspended workload are what an investigator needs, and
refusing them would drop events — and nothing more is recorded of them; every other
route refuses it ``403`` with a ``suspended-spiffe-id`` event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from auditkit import login_failed
from collectorrig import (
    AUDIT,
    PAYMENTS,
    CollectorRig,
    collector_config,
    collector_rig,
    identity_for,
)
from suspensionrig import component_feed, lift, suspend

from trustmesh import events
from trustmesh.reasons import Reason
from trustmesh.sdk.suspensions import SuspensionFeed
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(collector_config(), short_tmp / "identity", discovery=True)


@pytest.fixture
async def feed(identity: RunningIdentityServer) -> AsyncIterator[SuspensionFeed]:
    async with component_feed(identity, AUDIT) as made:
        yield made


@pytest.fixture
async def rig(
    identity: RunningIdentityServer, feed: SuspensionFeed, short_tmp: Path
) -> AsyncIterator[CollectorRig]:
    # no periodic tick: it would store the collector's own events between the assertions
    async with collector_rig(
        identity, short_tmp / "state", collector_config(), tick=3600, suspended=feed
    ) as running:
        yield running


def _suspended(rig: CollectorRig) -> list[events.Event]:
    return [e for e in rig.sink.events if e.reason == Reason.SPIFFE_ID_SUSPENDED]


async def test_a_suspended_workload_still_delivers_its_events_and_nothing_else(
    rig: CollectorRig, identity: RunningIdentityServer, feed: SuspensionFeed
) -> None:
    operator = rig.operator.workload
    await suspend(identity, operator, feed, PAYMENTS)
    batch = [login_failed(f"user{i}", i) for i in range(2)]
    status, answer = await rig.payments.call("POST", "/v1/events", {"events": batch})
    assert (status, answer) == (200, {"stored": 2, "duplicates": 0, "quarantined": 0})
    assert _suspended(rig) == []  # nothing more recorded of a delivery

    status, answer = await rig.payments.call("GET", "/v1/health")
    assert (status, answer["error"]) == (403, "forbidden")
    (event,) = _suspended(rig)
    assert (event.peer_spiffe_id, event.decision) == (PAYMENTS, events.Decision.DENY)

    await lift(identity, operator, feed, PAYMENTS)
    status, _ = await rig.payments.call("GET", "/v1/health")
    assert status == 200
