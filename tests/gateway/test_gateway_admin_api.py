"""The gateway's admin API (``/admin/v1/api-keys`` on its mTLS listener), over real mTLS:
the operator manages keys, and a change takes effect at this gateway at once; any other
workload of the trust domain is refused (403, an event) and changes nothing; a body
that is not exactly what the API takes is refused (400) and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from authrig import OPERATOR, ORDERS, Workload
from liverig import Live, live_gateway, live_identity

from trustmesh import crypto
from trustmesh.reasons import Activity, Reason
from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  routes:
    - {path: /reports, to: orders, auth: [api_key], name: reports}
    - {path: /public, to: orders, auth: [anonymous]}
"""
KEYS = "/admin/v1/api-keys"


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
async def live(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Live]:
    async with live_gateway(identity, short_tmp, SECTION) as made:
        yield made


async def admin(
    live: Live, who: Workload, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> requests.Response:
    """A request to the admin API over mTLS as ``who`` (beside the gateway's loop)."""

    def send() -> requests.Response:
        with who.mount(requests.Session()) as s:
            url = live.gateway.admin_url + path
            return s.request(method, url, json=body, data=raw, timeout=30)

    return await asyncio.to_thread(send)


async def reports(live: Live, key: str) -> int:
    """401: the gateway refuses the key; 503: it takes it (no instance serves orders)."""

    def send() -> int:
        with requests.Session() as s:
            s.trust_env = False
            return s.get(
                live.gateway.url + "/reports",
                headers={"X-API-Key": key},
                verify=str(crypto.edge_ca_path(live.rig.state)),
                timeout=30,
            ).status_code

    return await asyncio.to_thread(send)


def _reasons(live: Live) -> list[str]:
    return [e.reason for e in live.sink.events]


async def test_the_operator_manages_keys_and_each_change_holds_at_once(live: Live) -> None:
    operator = live.rig.operator
    made = await admin(
        live, operator, "POST", KEYS, {"name": "ci", "scopes": ["reports", "/public"]}
    )
    assert made.status_code == 201, made.text
    assert made.headers["Cache-Control"] == "no-store"
    key = made.json()
    assert key["routes_without_api_keys"] == ["/public"]
    assert await reports(live, key["key"]) == 503
    created = next(e for e in live.sink.events if e.reason == Activity.API_KEY_CREATED)
    assert created.peer_spiffe_id == OPERATOR
    assert created.attributes["by"] == "operator"
    listed = await admin(live, operator, "GET", KEYS)
    assert [d["id"] for d in listed.json()] == [key["id"]]
    assert key["key"].split("_")[2] not in listed.text
    rotated = await admin(live, operator, "POST", f"{KEYS}/{key['id']}/rotate", {"grace": 0})
    assert rotated.status_code == 200, rotated.text
    assert await reports(live, key["key"]) == 401  # no grace: refused at once
    assert await reports(live, rotated.json()["key"]) == 503
    revoked = await admin(live, operator, "POST", f"{KEYS}/{key['id']}/revoke", {})
    assert revoked.json()["revoked_now"] is True
    assert await reports(live, rotated.json()["key"]) == 401
    again = await admin(live, operator, "POST", f"{KEYS}/{key['id']}/revoke")
    assert again.json()["revoked_now"] is False
    assert (
        await admin(live, operator, "POST", f"{KEYS}/{key['id']}/rotate", {})
    ).status_code == 409
    assert (
        await admin(live, operator, "POST", f"{KEYS}/abcdefghijkl/revoke", {})
    ).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", KEYS, None),
        ("POST", KEYS, {"name": "mine", "scopes": ["*"]}),
        ("POST", KEYS + "/{id}/revoke", {}),
        ("POST", KEYS + "/{id}/rotate", {"grace": 0}),
    ],
)
async def test_a_workload_that_is_not_the_operator_is_refused(
    live: Live, method: str, path: str, body: Any
) -> None:
    made = await admin(live, live.rig.operator, "POST", KEYS, {"name": "ci", "scopes": ["reports"]})
    key = made.json()
    before = (await admin(live, live.rig.operator, "GET", KEYS)).json()
    for who in (live.rig.orders, live.rig.payments):
        refused = await admin(live, who, method, path.format(id=key["id"]), body)
        assert refused.status_code == 403, refused.text
        assert refused.json() == {
            "error": "forbidden",
            "message": "only the operator may use this API",
        }
    denied = [e for e in live.sink.events if e.reason == Reason.ADMIN_DENIED]
    assert len(denied) == 2
    assert denied[0].peer_spiffe_id == ORDERS
    assert (await admin(live, live.rig.operator, "GET", KEYS)).json() == before
    assert await reports(live, key["key"]) == 503  # still its one key, still valid
    assert _reasons(live).count(Activity.API_KEY_CREATED) == 1


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        (KEYS, {"name": "x", "scopes": ["*"], "owner": "me"}, "unknown field 'owner'"),
        (KEYS, {"name": "x", "scopes": "*"}, "scopes"),
        (KEYS, {"name": "x"}, "scopes"),
        (KEYS, {"name": "x", "scopes": ["*"], "expires_in": 0}, "expires_in"),
        (KEYS, {"name": "x", "scopes": ["*"], "expires_in": "90d"}, "expires_in"),
        (KEYS, {"name": "x", "scopes": ["*"], "roles": ["admin"]}, "needs MFA"),
        (KEYS, [1, 2], "a JSON object"),
        (KEYS + "/{id}/revoke", {"now": True}, "unknown field 'now'"),
        (KEYS + "/{id}/rotate", {"grace": 0, "scopes": ["*"]}, "unknown field 'scopes'"),
        (KEYS + "/{id}/rotate", {"grace": "1h"}, "grace"),
        (KEYS + "/{id}/rotate", {"grace": 8 * 86400}, "0 to 7d"),
    ],
)
async def test_a_bad_body_is_refused_and_changes_nothing(
    live: Live, path: str, body: Any, says: str
) -> None:
    operator = live.rig.operator
    key = (await admin(live, operator, "POST", KEYS, {"name": "ci", "scopes": ["reports"]})).json()
    before = (await admin(live, operator, "GET", KEYS)).json()
    refused = await admin(live, operator, "POST", path.format(id=key["id"]), body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_request"
    assert says in refused.json()["message"]
    assert (await admin(live, operator, "GET", KEYS)).json() == before
    assert await reports(live, key["key"]) == 503
    changes = [r for r in _reasons(live) if r.startswith("api-key-") and r != "api-key-valid"]
    assert changes == [Activity.API_KEY_CREATED]


async def test_a_body_that_is_not_json_is_refused(live: Live) -> None:
    refused = await admin(live, live.rig.operator, "POST", KEYS, raw=b"{name: x")
    assert refused.status_code == 400
    assert refused.json() == {"error": "invalid_request", "message": "the body is not JSON"}
    assert (await admin(live, live.rig.operator, "GET", KEYS)).json() == []
