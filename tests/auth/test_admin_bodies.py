"""Every admin POST takes a body of known fields only: an unknown field (a misspelt
name, a field of another action) is a 400 in the admin API's error shape, naming the
field, and changes nothing — no user, client, key, password, lock or MFA secret, and no
event of a change. The same body without it succeeds, so the field alone was refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import requests
from authrig import AuthRig

from trustmesh.reasons import Reason

USERS = "/admin/v1/users"

#: Each admin POST, with a body it accepts.
ADMIN_POSTS = [
    (USERS, {"username": "zed"}),
    (
        "/admin/v1/clients",
        {"client_id": "zed", "method": "client_secret_basic", "audiences": ["orders"]},
    ),
    (f"{USERS}/erin/lock", {}),
    (f"{USERS}/lou/unlock", {}),
    (f"{USERS}/erin/reset-mfa", {}),
    (f"{USERS}/erin/password", {"password": "a long enough passphrase"}),
    ("/admin/v1/keys/rotate", {}),
]


def _call(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    with rig.operator.mount(requests.Session()) as s:
        return s.request(method, rig.url + path, json=body, timeout=30)


async def _api(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    return await asyncio.to_thread(_call, rig, method, path, body)


async def _setup(rig: AuthRig) -> None:
    """erin (with MFA) and lou, locked."""
    for body in ({"username": "erin", "mfa": True}, {"username": "lou"}):
        assert (await _api(rig, "POST", USERS, body)).status_code == 201
    assert (await _api(rig, "POST", f"{USERS}/lou/lock")).status_code == 200


async def _snapshot(rig: AuthRig) -> dict[str, Any]:
    """What an admin POST could change, as the store holds it."""
    store = rig.auth.service.store
    users = {}
    for user in await store.list_users():
        users[user.username] = (user.password_hash, user.totp_sealed, user.locked, user.roles)
    return {
        "users": users,
        "clients": sorted(c.client_id for c in await store.list_clients()),
        "keys": sorted((k.state.kid, k.state.activate_at) for k in await store.keys()),
        "changes": [e.reason for e in rig.sink.events if e.reason != Reason.ADMIN_READ],
    }


@pytest.mark.parametrize(("path", "body"), ADMIN_POSTS, ids=[p for p, _ in ADMIN_POSTS])
async def test_an_unknown_field_is_refused_and_changes_nothing(
    rig: AuthRig, path: str, body: dict[str, Any]
) -> None:
    await _setup(rig)
    before = await _snapshot(rig)
    refused = await _api(rig, "POST", path, {**body, "bogus": 1})
    assert refused.status_code == 400, refused.text
    assert refused.json() == {"error": "invalid_request", "message": "unknown field 'bogus'"}
    assert await _snapshot(rig) == before
    accepted = await _api(rig, "POST", path, body)
    assert accepted.status_code in (200, 201), accepted.text
    assert await _snapshot(rig) != before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"{USERS}/erin/lock", ["bogus"]),
        (f"{USERS}/erin/lock", "not json"),
        (f"{USERS}/erin/reset-mfa", {"mfa": False}),
        ("/admin/v1/keys/rotate", {"client_id": "x"}),
        (f"{USERS}/erin/password", {"password": ["a long enough passphrase"]}),
        (USERS, {"username": "zed", "password": {"value": "a long enough passphrase"}}),
        (USERS, {"username": "zed", "roles": "admin"}),
        ("/admin/v1/clients", {"client_id": "zed", "audiences": "orders"}),
    ],
)
async def test_a_body_of_the_wrong_shape_is_refused_and_changes_nothing(
    rig: AuthRig, path: str, body: Any
) -> None:
    await _setup(rig)
    before = await _snapshot(rig)

    def post() -> requests.Response:
        with rig.operator.mount(requests.Session()) as s:
            if isinstance(body, str):
                return s.post(rig.url + path, data=body, timeout=30)
            return s.post(rig.url + path, json=body, timeout=30)

    refused = await asyncio.to_thread(post)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_request"
    assert "passphrase" not in refused.text  # a value is never echoed (it may be a secret)
    assert await _snapshot(rig) == before


async def test_the_actions_without_fields_take_no_body(rig: AuthRig) -> None:
    """The CLI sends none: lock, unlock, reset MFA and rotate keys take no body, or {}."""
    await _setup(rig)
    for path in ("erin/lock", "erin/unlock", "erin/reset-mfa"):
        assert (await _api(rig, "POST", f"{USERS}/{path}")).status_code == 200
    assert (await _api(rig, "POST", "/admin/v1/keys/rotate")).status_code == 200
    assert (await _api(rig, "POST", "/admin/v1/keys/rotate", {})).status_code == 200
