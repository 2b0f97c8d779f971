"""A suspended workload's spans (``POST /v1/traces``) are still taken, like its events:
the trace of what a suspended workload did is what an investigator needs most."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from collectorrig import AUDIT, PAYMENTS, CollectorRig, collector_config, collector_rig
from collectorrig import identity_for as identity_rig
from spanrig import TRACE_HEX, encoded, post_otlp, span
from suspensionrig import component_feed, suspend

from trustmesh.reasons import Reason
from trustmesh.sdk.suspensions import SuspensionFeed
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_rig(collector_config(), short_tmp / "identity", discovery=True)


@pytest.fixture
async def feed(identity: RunningIdentityServer) -> AsyncIterator[SuspensionFeed]:
    async with component_feed(identity, AUDIT) as made:
        yield made


@pytest.fixture
async def rig(
    identity: RunningIdentityServer, feed: SuspensionFeed, short_tmp: Path
) -> AsyncIterator[CollectorRig]:
    async with collector_rig(
        identity, short_tmp / "state", collector_config(), tick=3600, suspended=feed
    ) as running:
        yield running


async def test_a_suspended_workload_still_delivers_its_spans(
    rig: CollectorRig, identity: RunningIdentityServer, feed: SuspensionFeed
) -> None:
    await suspend(identity, rig.operator.workload, feed, PAYMENTS)
    status, _, _ = await post_otlp(rig.payments, encoded(span(0x1)))
    assert status == 200
    assert [e for e in rig.sink.events if e.reason == Reason.SPIFFE_ID_SUSPENDED] == []
    status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert [(s["span_id"], s["reporter"]) for s in trace["spans"]] == [
        ("0000000000000001", PAYMENTS)
    ]
    status, answer = await rig.payments.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert (status, answer["error"]) == (403, "forbidden")
