"""The admin API is the operator's only: any other workload of the trust domain is
refused (403) and the refusal is an event."""

from __future__ import annotations

import asyncio

import pytest
import requests
from authrig import OPERATOR, ORDERS, AuthRig

from trustmesh import events
from trustmesh.reasons import Activity, Reason


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/v1/clients"),
        ("POST", "/admin/v1/clients"),
        ("DELETE", "/admin/v1/clients/orders"),
        ("GET", "/admin/v1/keys"),
        ("POST", "/admin/v1/keys/rotate"),
    ],
)
async def test_a_service_is_not_the_operator(rig: AuthRig, method: str, path: str) -> None:
    def call() -> requests.Response:
        with rig.orders.mount(requests.Session()) as s:
            return s.request(method, rig.url + path, json={"client_id": "x"}, timeout=10)

    response = await asyncio.to_thread(call)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    denied = [e for e in rig.sink.events if e.reason == Reason.ADMIN_DENIED]
    assert denied[-1].peer_spiffe_id == ORDERS
    keys = rig.auth.service.ring.states
    assert len(keys) == 1  # nothing changed


async def test_the_operators_reads_and_changes_are_events(rig: AuthRig) -> None:
    def call(method: str, path: str, body: object = None) -> requests.Response:
        with rig.operator.mount(requests.Session()) as s:
            return s.request(method, rig.url + path, json=body, timeout=10)

    made = await asyncio.to_thread(
        call,
        "POST",
        "/admin/v1/clients",
        {"client_id": "reporting", "method": "client_secret_basic", "audiences": ["payments"]},
    )
    assert made.status_code == 201, made.text
    listed = await asyncio.to_thread(call, "GET", "/admin/v1/clients")
    assert "reporting" in {c["client_id"] for c in listed.json()}
    assert (
        await asyncio.to_thread(call, "DELETE", "/admin/v1/clients/reporting")
    ).status_code == 204
    rotated = await asyncio.to_thread(call, "POST", "/admin/v1/keys/rotate")
    assert rotated.status_code == 200, rotated.text
    assert len(rig.auth.service.ring.states) == 2  # the next key, published

    def done(reason: Reason | Activity) -> list[tuple[str, str | None, str | None, str]]:
        return [
            (e.decision, e.peer_spiffe_id, e.client_id, e.attributes["by"])
            for e in rig.sink.events
            if e.reason is reason
        ]

    assert done(Reason.ADMIN_READ) == [(events.Decision.ALLOW, OPERATOR, None, "operator")]
    assert [e.attributes["action"] for e in rig.sink.events if e.reason is Reason.ADMIN_READ] == [
        "list-clients"
    ]
    assert done(Activity.CLIENT_REMOVED) == [
        (events.Decision.ALLOW, OPERATOR, "reporting", "operator")
    ]
    assert done(Activity.KEYS_ROTATED) == [(events.Decision.ALLOW, OPERATOR, None, "operator")]
    assert (
        await asyncio.to_thread(call, "DELETE", "/admin/v1/clients/reporting")
    ).status_code == 404
    assert len(done(Activity.CLIENT_REMOVED)) == 1  # nothing removed, nothing recorded
