"""The audit collector's ``suspend-spiffe-id`` response, taken for real: its Responder
calls the identity service's admin API over mTLS with the collector's own SVID, finding
it by the discovery snapshot the identity service writes in the state directory; the ID
is suspended (no SVID issued for it), the undo lifts it, and both are recorded at the
collector and at the identity service. A dry run calls nothing; the control plane is
refused, and the response records why."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel, UnaryStreamMethod
from responderrig import alert_with, responder_rig

from trustmesh import events
from trustmesh._proto import workload_pb2 as pb
from trustmesh.audit.detection import Alert
from trustmesh.audit.extensions import Action, PlannedAction
from trustmesh.audit.response import Responder, call_for, undo_for
from trustmesh.audit.response_store import ResponseRecord
from trustmesh.config import parse_config
from trustmesh.events import read_events
from trustmesh.platform.admin import Actor
from trustmesh.reasons import Activity
from trustmesh.sdk.workload import SECURITY_HEADER
from trustmesh.sdk.x509source import FETCH_X509_SVID
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "respond.example"
ORDERS = f"spiffe://{TD}/orders"
AUDIT = f"spiffe://{TD}/trustmesh/audit"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"
CONFIG = parse_config(
    f"trust_domain: {TD}\ndev: true\nservices:\n  orders: {{external: true}}\n",
    source="test.yaml",
)


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    with identity_server_in_thread(CONFIG, short_tmp / "state", discovery=True) as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (ORDERS, AUDIT):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


@pytest.fixture
async def responder(
    identity: RunningIdentityServer, short_tmp: Path
) -> AsyncIterator[tuple[Responder, events.MemorySink]]:
    """The collector's responder, with the collector's SVID, reading where the identity
    service listens from the state directory (as ``up`` has it)."""
    db = short_tmp / "responses.db"
    async with responder_rig(identity.address, AUDIT, identity.server.paths.root, db) as made:
        yield made


def _alert(*actions: PlannedAction) -> Alert:
    return alert_with("alert-7", "svid-abuse", "a workload misbehaves", *actions)


def _suspend(target: str, *, ms: int | None = None, dry_run: bool = False) -> PlannedAction:
    return PlannedAction(Action.SUSPEND_SPIFFE_ID, target, ms, dry_run, "field")


def _identity_events(identity: RunningIdentityServer, code: object) -> list[dict[str, Any]]:
    return [e for e in read_events(identity.server.paths.events) if e["status_detail"] == code]


def _suspended(identity: RunningIdentityServer) -> list[str]:
    now = int(identity.server.clock().timestamp() * 1000)
    return [s.spiffe_id for s in identity.call(identity.server.store.suspensions, now)]


async def test_a_spiffe_id_is_suspended_by_a_response_and_lifted_by_its_undo(
    identity: RunningIdentityServer, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, sink = responder
    [record] = await taker.respond(_alert(_suspend(ORDERS, ms=15 * 60_000)))
    assert (record.outcome, record.action, record.target) == ("taken", "suspend-spiffe-id", ORDERS)
    assert _suspended(identity) == [ORDERS]
    assert identity.call(identity.server.service.suspended, ORDERS) is not None
    [made] = _identity_events(identity, Activity.SPIFFE_ID_SUSPENDED)
    trustmesh = made["unmapped"]["trustmesh"]
    assert trustmesh["peer_spiffe_id"] == AUDIT
    assert trustmesh["attributes"]["by"] == "audit"
    assert trustmesh["attributes"]["until"] is not None
    undone = await taker.undo(record.id, Actor(OPERATOR))
    assert undone.undone_by == "operator"
    assert _suspended(identity) == []
    assert identity.call(identity.server.service.suspended, ORDERS) is None
    assert len(_identity_events(identity, Activity.SPIFFE_ID_RESTORED)) == 1
    assert [e.reason for e in sink.events] == [Activity.RESPONSE_TAKEN, Activity.RESPONSE_UNDONE]
    assert sink.events[0].attributes["action"] == Action.SUSPEND_SPIFFE_ID.value


async def test_a_suspension_without_a_duration_lasts_until_lifted(
    identity: RunningIdentityServer, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, _ = responder
    [record] = await taker.respond(_alert(_suspend(ORDERS)))
    assert record.outcome == "taken", record.detail
    [made] = _identity_events(identity, Activity.SPIFFE_ID_SUSPENDED)
    assert made["unmapped"]["trustmesh"]["attributes"]["until"] is None


async def test_a_dry_run_records_what_it_would_do_and_suspends_nothing(
    identity: RunningIdentityServer, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, sink = responder
    [record] = await taker.respond(_alert(_suspend(ORDERS, dry_run=True)))
    assert record.outcome == "planned"
    assert "would POST /admin/v1/suspensions" in record.detail
    assert _suspended(identity) == []
    assert sink.events[0].attributes["dry_run"] is True


async def test_the_control_plane_is_refused_and_the_response_says_why(
    identity: RunningIdentityServer, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, _ = responder
    for target in (AUDIT, f"spiffe://{TD}/trustmesh/identity", OPERATOR):
        [record] = await taker.respond(_alert(_suspend(target)))
        assert record.outcome == "failed"
        assert "HTTP 403" in record.detail
        assert "control plane" in record.detail
    assert _suspended(identity) == []


def test_the_calls_a_suspension_makes() -> None:
    call = call_for(_suspend(ORDERS, ms=90_500))
    assert call is not None
    assert (call.component, call.method, call.path) == ("identity", "POST", "/admin/v1/suspensions")
    assert call.body == {"spiffe_id": ORDERS, "cause": "automated response", "seconds": 90}
    forever = call_for(_suspend(ORDERS))
    assert forever is not None
    assert forever.body is not None
    assert "seconds" not in forever.body
    record = ResponseRecord(
        id="r1",
        time=0,
        alert_uid="a",
        rule_id="r",
        action=Action.SUSPEND_SPIFFE_ID.value,
        target=ORDERS,
        duration_ms=None,
        dry_run=False,
        outcome="taken",
        detail="",
    )
    undo = undo_for(record)
    assert (undo.component, undo.method) == ("identity", "DELETE")
    assert undo.path == "/admin/v1/suspensions?spiffe_id=spiffe%3A%2F%2Frespond.example%2Forders"


async def test_an_open_stream_sends_the_withheld_svid_when_the_suspension_ends(
    identity: RunningIdentityServer, responder: tuple[Responder, events.MemorySink]
) -> None:
    """The suspension ends by itself (one second): the stream that withheld the SVID
    wakes then and sends it, with no change to the store to wake it."""
    taker, _ = responder
    channel = Channel(path=str(identity.server.paths.socket))
    try:
        method = UnaryStreamMethod(
            channel, FETCH_X509_SVID, pb.X509SVIDRequest, pb.X509SVIDResponse
        )
        async with method.open(metadata=[SECURITY_HEADER]) as stream:
            await stream.send_message(pb.X509SVIDRequest(), end=True)

            async def held() -> set[str]:
                reply = await asyncio.wait_for(stream.recv_message(), timeout=20)
                assert reply is not None
                return {s.spiffe_id for s in reply.svids}

            assert await held() == {ORDERS, AUDIT}
            [record] = await taker.respond(_alert(_suspend(ORDERS, ms=1000)))
            assert record.outcome == "taken", record.detail
            assert await held() == {AUDIT}
            assert await held() == {ORDERS, AUDIT}  # about a second later
            await stream.cancel()  # the stream never ends by itself
    finally:
        channel.close()
