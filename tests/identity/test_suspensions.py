"""Suspending a SPIFFE ID at the identity service, over its real mTLS admin API: the
operator (or the audit collector, on these routes only) suspends, lists and lifts; the
control plane is never suspended; bad input changes nothing; a suspension ends by the
clock; while it lasts the Workload API issues the ID no SVID (new, renewed, or through a
join token), and the feed tells every workload of the trust domain."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from spiffe import WorkloadApiClient
from spiffe_http import Workload, workload

from trustmesh.config import parse_config
from trustmesh.events import read_events
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import FakeClock, RunningIdentityServer, identity_server_in_thread

TD = "suspend.example"
ORDERS = f"spiffe://{TD}/orders"
PAYMENTS = f"spiffe://{TD}/payments"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"
AUDIT = f"spiffe://{TD}/trustmesh/audit"
CONFIG = parse_config(
    f"""
trust_domain: {TD}
dev: true
identity: {{svid_ttl: 1h, max_svid_ttl: 2h}}
services:
  orders: {{external: true}}
  payments: {{external: true}}
calls:
  - {{from: orders, to: payments, allow: ["POST /charges"]}}
""",
    source="test.yaml",
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def identity(short_tmp: Path, clock: FakeClock) -> Iterator[RunningIdentityServer]:
    with identity_server_in_thread(
        CONFIG, short_tmp / "state", discovery=True, clock=clock, tick_interval=3600
    ) as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (ORDERS, PAYMENTS, OPERATOR, AUDIT):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


class Callers:
    """The operator, the audit collector and two workloads, each with its SVID."""

    def __init__(
        self,
        identity: RunningIdentityServer,
        operator: Workload,
        audit: Workload,
        orders: Workload,
        payments: Workload,
    ) -> None:
        self.identity = identity
        self.operator, self.audit = operator, audit
        self.orders, self.payments = orders, payments
        self.url = str(identity.server.discovery_url)

    async def call(
        self, who: Workload, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> requests.Response:
        def send() -> requests.Response:
            with who.mount(requests.Session()) as session:
                if raw is not None:
                    return session.request(method, self.url + path, data=raw, timeout=30)
                return session.request(method, self.url + path, json=body, timeout=30)

        return await asyncio.to_thread(send)

    async def listed(self) -> list[dict[str, Any]]:
        answer = await self.call(self.operator, "GET", "/admin/v1/suspensions")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["suspensions"])

    def events(self, code: object) -> list[dict[str, Any]]:
        found = read_events(self.identity.server.paths.events)
        return [e for e in found if e["status_detail"] == code]


@pytest.fixture
async def callers(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Callers]:
    made = [
        await workload(identity.address, spiffe_id, short_tmp / name, Workload)
        for spiffe_id, name in (
            (OPERATOR, "op"),
            (AUDIT, "audit"),
            (ORDERS, "orders"),
            (PAYMENTS, "payments"),
        )
    ]
    try:
        yield Callers(identity, *made)
    finally:
        for w in made:
            await w.source.close()


def _lift(spiffe_id: str) -> str:
    return "/admin/v1/suspensions?" + urlencode({"spiffe_id": spiffe_id})


def _trustmesh(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["unmapped"]["trustmesh"])


async def test_the_operator_suspends_lists_and_lifts(callers: Callers) -> None:
    body = {"spiffe_id": ORDERS, "seconds": 600, "cause": "credential stuffing"}
    made = await callers.call(callers.operator, "POST", "/admin/v1/suspensions", body)
    assert made.status_code == 201, made.text
    assert (made.json()["spiffe_id"], made.json()["by"]) == (ORDERS, "operator")
    assert made.json()["until"] is not None
    [listed] = await callers.listed()
    assert (listed["spiffe_id"], listed["cause"]) == (ORDERS, "credential stuffing")
    [suspended] = callers.events(Activity.SPIFFE_ID_SUSPENDED)
    assert _trustmesh(suspended)["peer_spiffe_id"] == OPERATOR
    assert _trustmesh(suspended)["attributes"]["by"] == "operator"
    assert suspended["activity_name"] == "Disable"
    lifted = await callers.call(callers.operator, "DELETE", _lift(ORDERS))
    assert lifted.json() == {"spiffe_id": ORDERS, "lifted": True}
    assert await callers.listed() == []
    [restored] = callers.events(Activity.SPIFFE_ID_RESTORED)
    assert restored["activity_name"] == "Enable"
    again = await callers.call(callers.operator, "DELETE", _lift(ORDERS))
    assert again.json()["lifted"] is False
    assert len(callers.events(Activity.SPIFFE_ID_RESTORED)) == 1  # nothing was lifted


async def test_a_suspension_ends_by_the_clock_and_one_without_an_end_does_not(
    callers: Callers, clock: FakeClock
) -> None:
    for body in ({"spiffe_id": ORDERS, "seconds": 60}, {"spiffe_id": PAYMENTS}):
        made = await callers.call(callers.operator, "POST", "/admin/v1/suspensions", body)
        assert made.status_code == 201, made.text
    assert {s["spiffe_id"] for s in await callers.listed()} == {ORDERS, PAYMENTS}
    clock.advance(dt.timedelta(seconds=61))
    [left] = await callers.listed()
    assert (left["spiffe_id"], left["until"]) == (PAYMENTS, None)
    service = callers.identity.server.service
    assert service.suspended(ORDERS) is None
    assert service.suspended(PAYMENTS) is not None
    ended = await callers.call(callers.operator, "DELETE", _lift(ORDERS))
    assert ended.json()["lifted"] is False  # it had ended already


@pytest.mark.parametrize(
    "target",
    [
        f"spiffe://{TD}/trustmesh/identity",
        AUDIT,
        OPERATOR,
        f"spiffe://{TD}/trustmesh",
        f"spiffe://{TD}/trustmesh/gateway/extra",
    ],
)
async def test_the_control_plane_is_never_suspended(callers: Callers, target: str) -> None:
    for who in (callers.operator, callers.audit):
        refused = await callers.call(who, "POST", "/admin/v1/suspensions", {"spiffe_id": target})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "forbidden"
        assert "control plane" in refused.json()["message"]
    assert await callers.listed() == []
    assert callers.events(Activity.SPIFFE_ID_SUSPENDED) == []


@pytest.mark.parametrize(
    "body",
    [
        {"spiffe_id": "spiffe://other.example/orders"},
        {"spiffe_id": f"spiffe://{TD}"},
        {"spiffe_id": "https://suspend.example/orders"},
        {"spiffe_id": f"spiffe://{TD}/orders/../payments"},
        {"spiffe_id": 7},
        {},
        {"spiffe_id": ORDERS, "seconds": 0},
        {"spiffe_id": ORDERS, "seconds": 30 * 86400 + 1},
        {"spiffe_id": ORDERS, "seconds": "60"},
        {"spiffe_id": ORDERS, "seconds": True},
        {"spiffe_id": ORDERS, "cause": "x" * 257},
        {"spiffe_id": ORDERS, "cause": "line\nbreak"},
        {"spiffe_id": ORDERS, "forever": True},
        [ORDERS],
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(callers: Callers, body: Any) -> None:
    refused = await callers.call(callers.operator, "POST", "/admin/v1/suspensions", body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_request"
    assert await callers.listed() == []
    assert callers.events(Activity.SPIFFE_ID_SUSPENDED) == []


async def test_a_body_that_is_not_json_and_a_bad_lift_are_refused(callers: Callers) -> None:
    refused = await callers.call(
        callers.operator, "POST", "/admin/v1/suspensions", raw=b"{not json"
    )
    assert refused.status_code == 400
    for path in ("/admin/v1/suspensions", _lift("spiffe://other.example/orders")):
        bad = await callers.call(callers.operator, "DELETE", path)
        assert bad.status_code == 400, bad.text


async def test_the_audit_identity_may_suspend_and_lift_and_nothing_else(
    callers: Callers,
) -> None:
    made = await callers.call(
        callers.audit, "POST", "/admin/v1/suspensions", {"spiffe_id": ORDERS, "seconds": 60}
    )
    assert made.status_code == 201, made.text
    assert made.json()["by"] == "audit"
    listed = await callers.call(callers.audit, "GET", "/admin/v1/suspensions")
    assert [s["spiffe_id"] for s in listed.json()["suspensions"]] == [ORDERS]
    [suspended] = callers.events(Activity.SPIFFE_ID_SUSPENDED)
    assert _trustmesh(suspended)["peer_spiffe_id"] == AUDIT
    for method, path, body in (
        ("GET", "/admin/v1/entries", None),
        ("POST", "/admin/v1/entries", {"spiffe_id": ORDERS, "selectors": ["unix:uid:0"]}),
        ("POST", "/admin/v1/join-tokens", {"spiffe_id": ORDERS}),
        ("GET", "/admin/v1/svids/last?" + urlencode({"spiffe_id": ORDERS}), None),
    ):
        refused = await callers.call(callers.audit, method, path, body)
        assert refused.status_code == 403, (path, refused.text)
    for method, path, body in (
        ("POST", "/admin/v1/suspensions", {"spiffe_id": PAYMENTS}),
        ("GET", "/admin/v1/suspensions", None),
        ("DELETE", _lift(ORDERS), None),
    ):
        refused = await callers.call(callers.orders, method, path, body)
        assert refused.status_code == 403, (path, refused.text)
    denied = callers.events(Reason.ADMIN_DENIED)
    assert {_trustmesh(e)["peer_spiffe_id"] for e in denied} == {AUDIT, ORDERS}
    assert [s["spiffe_id"] for s in await callers.listed()] == [ORDERS]
    lifted = await callers.call(callers.audit, "DELETE", _lift(ORDERS))
    assert lifted.json()["lifted"] is True


def _held(identity: RunningIdentityServer) -> set[str]:
    with WorkloadApiClient(identity.address) as client:
        return {str(s.spiffe_id) for s in client.fetch_x509_svids()}


async def test_the_workload_api_issues_no_svid_for_a_suspended_id_until_lifted(
    callers: Callers, identity: RunningIdentityServer, clock: FakeClock
) -> None:
    source = X509Source(identity.address, spiffe_id=ORDERS, max_backoff=0.2)
    first = await source.start()
    try:
        assert ORDERS in await asyncio.to_thread(_held, identity)
        made = await callers.call(
            callers.operator, "POST", "/admin/v1/suspensions", {"spiffe_id": ORDERS}
        )
        assert made.status_code == 201, made.text
        assert await asyncio.to_thread(_held, identity) == {PAYMENTS, OPERATOR, AUDIT}
        refused = callers.events(Reason.SPIFFE_ID_SUSPENDED)
        assert refused
        assert all(e["unmapped"]["trustmesh"]["spiffe_id"] == ORDERS for e in refused)
        # the open stream is past its renewal time: it renews the others, not orders
        clock.advance(dt.timedelta(minutes=30))
        identity.call(identity.server.feed.bump)
        await asyncio.sleep(1.0)
        assert source.context is first
        lifted = await callers.call(callers.operator, "DELETE", _lift(ORDERS))
        assert lifted.json()["lifted"] is True
        for _ in range(100):
            if source.context is not first:
                break
            await asyncio.sleep(0.1)
        assert source.context is not first
        assert source.context.spiffe_id == ORDERS
        assert ORDERS in await asyncio.to_thread(_held, identity)
    finally:
        await source.close()


async def test_a_join_token_for_a_suspended_id_is_not_redeemed(callers: Callers) -> None:
    from trustmesh.errors import TrustmeshError
    from trustmesh.sdk import redeem_join_token

    extra = f"spiffe://{TD}/batch"
    token = await callers.call(
        callers.operator, "POST", "/admin/v1/join-tokens", {"spiffe_id": extra}
    )
    assert token.status_code == 201, token.text
    made = await callers.call(
        callers.operator, "POST", "/admin/v1/suspensions", {"spiffe_id": extra}
    )
    assert made.status_code == 201
    with pytest.raises(TrustmeshError):
        await redeem_join_token(callers.identity.address, token.json()["token"])
    [refused] = callers.events(Reason.SPIFFE_ID_SUSPENDED)
    assert "suspended" in refused["message"]
    await callers.call(callers.operator, "DELETE", _lift(extra))
    # the token was not spent: once lifted, it is redeemed
    assert await redeem_join_token(callers.identity.address, token.json()["token"]) == extra


async def test_the_feed_tells_any_workload_and_is_cheap_to_poll(callers: Callers) -> None:
    first = await callers.call(callers.orders, "GET", "/v1/suspensions")
    assert first.status_code == 200
    assert first.json() == {"version": 0, "suspensions": []}
    etag = first.headers["etag"]
    same = await callers.call(callers.orders, "GET", "/v1/suspensions?since=0")
    assert (same.status_code, same.content) == (304, b"")
    body = {"spiffe_id": PAYMENTS, "seconds": 60, "cause": "secret"}
    await callers.call(callers.operator, "POST", "/admin/v1/suspensions", body)

    def conditional() -> requests.Response:
        with callers.orders.mount(requests.Session()) as session:
            return session.get(
                callers.url + "/v1/suspensions", headers={"If-None-Match": etag}, timeout=30
            )

    moved = await asyncio.to_thread(conditional)
    assert moved.status_code == 200
    [item] = moved.json()["suspensions"]
    assert set(item) == {"spiffe_id", "until"}  # never why, nor who
    assert item["spiffe_id"] == PAYMENTS
    assert moved.headers["etag"] != etag


async def test_discovery_refuses_a_suspended_caller_and_hides_a_suspended_instance(
    callers: Callers,
) -> None:
    instance = {"url": "https://127.0.0.1:9443"}
    registered = await callers.call(callers.payments, "PUT", "/v1/instances", instance)
    assert registered.status_code == 200, registered.text
    found = await callers.call(callers.orders, "GET", "/v1/services/payments")
    assert [e["spiffe_id"] for e in found.json()["endpoints"]] == [PAYMENTS]
    for target in (ORDERS, PAYMENTS):
        made = await callers.call(
            callers.operator, "POST", "/admin/v1/suspensions", {"spiffe_id": target}
        )
        assert made.status_code == 201
    refused = await callers.call(callers.orders, "GET", "/v1/services/payments")
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    again = await callers.call(callers.payments, "PUT", "/v1/instances", instance)
    assert again.status_code == 403
    denied = [  # at discovery (the Workload API's refusals name no peer: they are its own)
        e for e in callers.events(Reason.SPIFFE_ID_SUSPENDED) if "peer_spiffe_id" in _trustmesh(e)
    ]
    assert {_trustmesh(e)["peer_spiffe_id"] for e in denied} == {ORDERS, PAYMENTS}
    await callers.call(callers.operator, "DELETE", _lift(ORDERS))
    hidden = await callers.call(callers.orders, "GET", "/v1/services/payments")
    assert (hidden.status_code, hidden.json()["endpoints"]) == (200, [])
