"""The audit collector's automated responses, taken for real: its Responder calls the
provider and the gateway over mTLS with the collector's own SVID, the components decide
(the collector's identity may lock, unlock, revoke and block — nothing else), the effect
holds (a locked user cannot log in; a blocked address is refused at the gateway), and
each response is undone with its undo; a dry run calls nothing, and loopback is never
blocked unless the declaration says so."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from authrig import OPERATOR, TD, workload
from liverig import CONFIG as BASE
from liverig import GATEWAY, Live, live_gateway
from responderrig import alert_with, responder_rig

from trustmesh import events
from trustmesh.audit.detection import Alert
from trustmesh.audit.extensions import Action, PlannedAction
from trustmesh.audit.response import Responder
from trustmesh.errors import ConflictError, UsageError
from trustmesh.platform.admin import Actor
from trustmesh.reasons import Activity, Reason
from trustmesh.testing import RunningIdentityServer

AUDIT = f"spiffe://{TD}/trustmesh/audit"
SECTION = """gateway:
  routes:
    - {path: /public, to: orders, auth: [anonymous]}
"""


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    from authrig import identity_for

    yield from identity_for(short_tmp, BASE + SECTION, (GATEWAY, AUDIT), discovery=True)


@pytest.fixture
async def live(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Live]:
    async with live_gateway(identity, short_tmp, SECTION) as made:
        yield made


@pytest.fixture
async def responder(
    live: Live, identity: RunningIdentityServer, short_tmp: Path
) -> AsyncIterator[tuple[Responder, events.MemorySink]]:
    """The collector's responder, with the collector's SVID, finding the components by
    the endpoint files they write under the state directory (as ``up`` has them)."""
    state = short_tmp / "collector-state"
    for folder, doc in (
        ("auth", {"url": live.rig.url}),
        # as the gateway writes it: its admin API is on its mTLS (internal) listener
        (
            "gateway",
            {"internal_url": live.gateway.internal_url, "admin_url": live.gateway.admin_url},
        ),
    ):
        (state / folder).mkdir(parents=True)
        (state / folder / "endpoint.json").write_text(json.dumps(doc))
    db = short_tmp / "responses.db"
    async with responder_rig(identity.address, AUDIT, state, db) as made:
        yield made


def _alert(*actions: PlannedAction) -> Alert:
    return alert_with("alert-1", "rule-under-test", "a test rule", *actions)


def _action(action: Action, target: str, *, dry_run: bool = False, ms: int | None = None) -> Any:
    return PlannedAction(action, target, ms, dry_run, "field")


async def _as(live: Live, who: Any, method: str, url: str, body: Any = None) -> requests.Response:
    def send() -> requests.Response:
        with who.mount(requests.Session()) as s:
            return s.request(method, url, json=body, timeout=30)

    return await asyncio.to_thread(send)


async def _user(live: Live, name: str) -> dict[str, Any]:
    listed = await _as(live, live.rig.operator, "GET", live.rig.url + "/admin/v1/users")
    return next(u for u in listed.json() if u["username"] == name)


async def _public(live: Live) -> int:
    async with live.http.get(live.gateway.url + "/public") as answer:
        return answer.status


async def test_a_user_is_locked_by_a_response_and_unlocked_by_its_undo(
    live: Live, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, sink = responder
    url = live.rig.url + "/admin/v1/users"
    made = await _as(live, live.rig.operator, "POST", url, {"username": "mallory", "mfa": False})
    assert made.status_code == 201, made.text
    [record] = await taker.respond(_alert(_action(Action.LOCK_USER, "mallory")))
    assert (record.outcome, record.action, record.target) == ("taken", "lock-user", "mallory")
    assert (await _user(live, "mallory"))["locked"] is True
    locked = next(e for e in live.rig.sink.events if e.reason == Activity.USER_LOCKED)
    assert locked.peer_spiffe_id == AUDIT
    assert locked.attributes["by"] == "audit"
    undone = await taker.undo(record.id, Actor(OPERATOR))
    assert undone.undone_by == "operator"
    assert (await _user(live, "mallory"))["locked"] is False
    assert [e.reason for e in sink.events] == [Activity.RESPONSE_TAKEN, Activity.RESPONSE_UNDONE]
    with pytest.raises(ConflictError, match="undone already"):
        await taker.undo(record.id, Actor(OPERATOR))


async def test_a_dry_run_records_what_it_would_do_and_calls_nothing(
    live: Live, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, sink = responder
    url = live.rig.url + "/admin/v1/users"
    await _as(live, live.rig.operator, "POST", url, {"username": "trudy", "mfa": False})
    [record] = await taker.respond(_alert(_action(Action.LOCK_USER, "trudy", dry_run=True)))
    assert record.outcome == "planned"
    assert "would POST /admin/v1/users/trudy/lock" in record.detail
    assert (await _user(live, "trudy"))["locked"] is False
    assert sink.events[0].attributes["dry_run"] is True
    with pytest.raises(UsageError, match="planned, not taken"):
        await taker.undo(record.id, Actor(OPERATOR))


async def test_an_address_is_blocked_at_the_gateway_and_the_undo_lifts_it(
    live: Live, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, _ = responder
    assert await _public(live) != 403  # 503: no instance of orders, but let through
    action = _action(Action.BLOCK_ADDRESS, "127.0.0.1", ms=15 * 60_000)
    [record] = await taker.respond(_alert(action))
    assert record.outcome == "taken", record.detail
    assert await _public(live) == 403
    refused = [e for e in live.sink.events if e.reason == Reason.ADDRESS_BLOCKED]
    assert refused
    assert refused[-1].decision == events.Decision.DENY
    added = next(e for e in live.sink.events if e.reason == Activity.BLOCK_ADDED)
    assert added.peer_spiffe_id == AUDIT
    await taker.undo(record.id, Actor(OPERATOR))
    assert await _public(live) != 403
    assert any(e.reason == Activity.BLOCK_REMOVED for e in live.sink.events)


async def test_loopback_is_never_blocked_by_default(
    live: Live, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, sink = responder
    default = Responder(taker.store, taker.caller, taker.recorder)
    action = _action(Action.BLOCK_ADDRESS, "::1", ms=60_000)
    [record] = await default.respond(_alert(action))
    assert record.outcome == "skipped"
    assert not any(e.reason == Activity.BLOCK_ADDED for e in live.sink.events)
    assert sink.events[-1].attributes["outcome"] == "skipped"


async def test_a_subjects_tokens_are_revoked_and_that_cannot_be_undone(
    live: Live, responder: tuple[Responder, events.MemorySink]
) -> None:
    taker, _ = responder
    [record] = await taker.respond(_alert(_action(Action.REVOKE_TOKENS, "user-1234")))
    assert record.outcome == "taken", record.detail
    revoked = next(e for e in live.rig.sink.events if e.reason == Activity.TOKEN_REVOKED)
    assert revoked.sub == "user-1234"
    assert revoked.attributes["cause"] == "automated-response"
    with pytest.raises(UsageError, match="cannot be undone"):
        await taker.undo(record.id, Actor(OPERATOR))


async def test_a_response_whose_component_is_not_running_is_recorded_as_failed(
    responder: tuple[Responder, events.MemorySink],
) -> None:
    """No identity service has written its snapshot in this state directory: the
    suspension is not taken, and says why (it is taken for real in
    tests/identity/test_suspend_live.py)."""
    taker, _ = responder
    target = f"spiffe://{TD}/orders"
    [record] = await taker.respond(_alert(_action(Action.SUSPEND_SPIFFE_ID, target)))
    assert record.outcome == "failed"
    assert "identity component is not running" in record.detail


async def test_the_collectors_identity_may_take_responses_and_nothing_else(
    live: Live, identity: RunningIdentityServer, short_tmp: Path
) -> None:
    audit = await workload(identity, AUDIT, short_tmp / "audit-svid")
    users, keys = live.rig.url + "/admin/v1/users", live.gateway.admin_url + "/admin/v1/api-keys"
    for method, url, body in (
        ("GET", users, None),
        ("POST", users, {"username": "eve", "mfa": False}),
        ("POST", live.rig.url + "/admin/v1/keys/rotate", {}),
        ("GET", keys, None),
        ("POST", keys, {"name": "x", "scopes": ["/public"]}),
    ):
        refused = await _as(live, audit, method, url, body)
        assert refused.status_code == 403, (url, refused.text)
    blocks = live.gateway.admin_url + "/admin/v1/blocks"
    orders = live.rig.orders
    for method, url, body in (
        ("POST", blocks, {"address": "203.0.113.9", "seconds": 60}),
        ("GET", blocks, None),
        ("POST", live.rig.url + "/admin/v1/revocations", {"subject": "user-1"}),
        ("POST", users + "/alice/lock", {}),
    ):
        refused = await _as(live, orders, method, url, body)
        assert refused.status_code in (401, 403), (url, refused.text)
    made = await _as(live, audit, "POST", blocks, {"address": "203.0.113.9", "seconds": 60})
    assert made.status_code == 201, made.text
    listed = await _as(live, live.rig.operator, "GET", blocks)
    assert [b["address"] for b in listed.json()["blocks"]] == ["203.0.113.9"]


@pytest.mark.parametrize(
    "body",
    [
        {"address": "203.0.113.0/24", "seconds": 60},
        {"address": "not-an-address", "seconds": 60},
        {"address": "203.0.113.9", "seconds": 0},
        {"address": "203.0.113.9", "seconds": 31 * 86400},
        {"address": "203.0.113.9", "seconds": "60"},
        {"address": "203.0.113.9", "seconds": 60, "forever": True},
    ],
)
async def test_a_bad_block_is_refused_and_changes_nothing(live: Live, body: Any) -> None:
    blocks = live.gateway.admin_url + "/admin/v1/blocks"
    refused = await _as(live, live.rig.operator, "POST", blocks, body)
    assert refused.status_code == 400, refused.text
    assert (await _as(live, live.rig.operator, "GET", blocks)).json() == {"blocks": []}
