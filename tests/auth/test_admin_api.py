"""The admin API is the operator's only: any other workload of the trust domain is
refused (403) and the refusal is an event."""

from __future__ import annotations

import asyncio

import pytest
import requests
from authrig import ORDERS, AuthRig

from trustmesh.reasons import Reason


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
