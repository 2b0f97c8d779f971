"""Registration entries and join tokens through the identity service's admin API (mTLS,
beside discovery): the operator's SVID, or a workload carrying an admin user's token
from a login with a one-time code — checked through the provider's JWKS and revocation
feed, as every service checks tokens. Everyone else: 403 and an event."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authrig import (
    CONFIG,
    OPERATOR,
    ORDERS,
    TD,
    AuthRig,
    Workload,
    code_flow,
    identity_for,
    make_rig,
)

from trustmesh import crypto
from trustmesh.identity.admin import DEFAULT_JOIN_TTL
from trustmesh.reasons import Activity, Reason
from trustmesh.testing import RunningIdentityServer

IDENTITY = f"spiffe://{TD}/trustmesh/identity"
REDIRECT = "https://console.example/cb"
PASSWORD = "an admin's long passphrase"


@pytest.fixture
def located() -> dict[str, str]:
    return {}


@pytest.fixture
def identity(short_tmp: Path, located: dict[str, str]) -> Iterator[RunningIdentityServer]:
    """The identity service with its HTTPS listener (discovery and the admin API); it
    finds the provider through ``located`` once the rig has started it."""
    yield from identity_for(
        short_tmp, CONFIG, discovery=True, locate_auth=lambda: located.get("url")
    )


@pytest.fixture
async def rig(
    identity: RunningIdentityServer, short_tmp: Path, located: dict[str, str]
) -> AsyncIterator[AuthRig]:
    async with make_rig(identity, short_tmp) as made:
        located["url"] = made.url
        yield made


def _admin_url(identity: RunningIdentityServer) -> str:
    assert identity.server.discovery is not None
    return f"https://127.0.0.1:{identity.server.discovery.port}/admin/v1"


def _call(
    who: Workload, method: str, url: str, body: Any = None, token: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with who.mount(requests.Session()) as s:
        return s.request(method, url, json=body, headers=headers, timeout=30)


def _reasons(identity: RunningIdentityServer) -> list[dict[str, Any]]:
    from trustmesh.events import read_events

    return list(read_events(identity.server.paths.events))


def _entries(identity: RunningIdentityServer) -> list[Any]:
    return identity.call(identity.server.store.list_entries)


def _selectors() -> list[str]:
    return [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"]


async def test_the_operator_manages_entries_and_join_tokens(
    rig: AuthRig, identity: RunningIdentityServer
) -> None:
    url = _admin_url(identity)
    made = await asyncio.to_thread(
        _call,
        rig.operator,
        "POST",
        url + "/entries",
        {"spiffe_id": f"spiffe://{TD}/reports", "selectors": _selectors(), "ttl": 600},
    )
    assert made.status_code == 201, made.text
    entry = made.json()
    assert entry["ttl"] == 600
    listed = await asyncio.to_thread(_call, rig.operator, "GET", url + "/entries")
    assert entry["id"] in {e["id"] for e in listed.json()}
    assert any(e.spiffe_id == f"spiffe://{TD}/reports" for e in _entries(identity))
    token = await asyncio.to_thread(
        _call, rig.operator, "POST", url + "/join-tokens", {"spiffe_id": f"spiffe://{TD}/reports"}
    )
    assert token.status_code == 201
    assert token.json()["ttl"] == int(DEFAULT_JOIN_TTL.total_seconds())
    assert token.headers["Cache-Control"] == "no-store"
    gone = await asyncio.to_thread(_call, rig.operator, "DELETE", url + f"/entries/{entry['id']}")
    assert gone.status_code == 200
    assert all(e.id != entry["id"] for e in _entries(identity))
    created = [e for e in _reasons(identity) if e["status_detail"] == "entry-created"]
    assert created[-1]["unmapped"]["trustmesh"]["attributes"]["by"] == "operator"
    # the listing is a read, recorded as one; the join token is recorded, never its value
    done = {
        reason: [
            e["unmapped"]["trustmesh"] for e in _reasons(identity) if e["status_detail"] == reason
        ]
        for reason in (Reason.ADMIN_READ, Activity.JOIN_TOKEN_CREATED)
    }
    assert [
        (t["decision"], t["peer_spiffe_id"], t["attributes"]["action"], t["attributes"]["by"])
        for t in done[Reason.ADMIN_READ]
    ] == [("allow", OPERATOR, "list-entries", "operator")]
    assert [
        (t["decision"], t["spiffe_id"], t["attributes"]["by"])
        for t in done[Activity.JOIN_TOKEN_CREATED]
    ] == [("allow", f"spiffe://{TD}/reports", "operator")]
    assert token.json()["token"] not in identity.server.paths.events.read_text()
    # bad input: a clear 400, nothing stored
    before = len(_entries(identity))
    for body in (
        {"spiffe_id": "spiffe://elsewhere.example/x", "selectors": _selectors()},
        {"spiffe_id": f"spiffe://{TD}/x", "selectors": []},
        {"spiffe_id": f"spiffe://{TD}/x", "selectors": _selectors(), "ttl": -1},
        {"spiffe_id": f"spiffe://{TD}/x", "selectors": _selectors(), "extra": 1},
        [1, 2],
    ):
        bad = await asyncio.to_thread(_call, rig.operator, "POST", url + "/entries", body)
        assert bad.status_code == 400, (body, bad.text)
        assert bad.json()["error"] == "invalid_request"
    assert len(_entries(identity)) == before
    missing = await asyncio.to_thread(_call, rig.operator, "DELETE", url + "/entries/nope")
    assert missing.status_code == 404


async def test_a_workload_without_an_admin_token_is_refused(
    rig: AuthRig, identity: RunningIdentityServer
) -> None:
    url = _admin_url(identity)
    for method, path, body in (
        ("GET", "/entries", None),
        ("POST", "/entries", {"spiffe_id": f"spiffe://{TD}/evil", "selectors": _selectors()}),
        ("POST", "/join-tokens", {"spiffe_id": f"spiffe://{TD}/evil"}),
    ):
        refused = await asyncio.to_thread(_call, rig.orders, method, url + path, body)
        assert refused.status_code == 403, refused.text
    garbage = await asyncio.to_thread(_call, rig.orders, "GET", url + "/entries", None, "garbage")
    assert garbage.status_code == 401
    denied = [e for e in _reasons(identity) if e["status_detail"] == "admin-denied"]
    assert len(denied) == 4
    assert all(e["unmapped"]["trustmesh"]["peer_spiffe_id"] == ORDERS for e in denied)
    assert all(e.spiffe_id != f"spiffe://{TD}/evil" for e in _entries(identity))


async def test_an_admin_user_acts_through_a_workload_with_mfa(
    rig: AuthRig, identity: RunningIdentityServer
) -> None:
    url = _admin_url(identity)

    def operator_post(path: str, body: Any) -> dict[str, Any]:
        r = _call(rig.operator, "POST", rig.url + path, body)
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    bob = await asyncio.to_thread(
        operator_post,
        "/admin/v1/users",
        {"username": "bob", "password": PASSWORD, "roles": ["admin"]},
    )
    await asyncio.to_thread(
        operator_post, "/admin/v1/users", {"username": "carol", "password": PASSWORD}
    )
    await asyncio.to_thread(
        operator_post,
        "/admin/v1/clients",
        {
            "client_id": "console",
            "method": "none",
            "redirect_uris": [REDIRECT],
            "audiences": [IDENTITY],
        },
    )
    b32 = parse_qs(urlsplit(bob["totp_uri"]).query)["secret"][0]
    secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))

    def login(username: str, otp: str = "") -> dict[str, Any]:
        # the console's seat: a workload (orders' SVID here), so the token is bound to it
        with rig.orders.mount(requests.Session()) as s:
            return code_flow(s, rig.url, "console", REDIRECT, username, PASSWORD, otp)

    admin = await asyncio.to_thread(login, "bob", crypto.totp_code(secret, time.time()))
    body = {"spiffe_id": f"spiffe://{TD}/by-admin", "selectors": _selectors()}
    made = await asyncio.to_thread(
        _call, rig.orders, "POST", url + "/entries", body, admin["access_token"]
    )
    assert made.status_code == 201, made.text
    created = [e for e in _reasons(identity) if e["status_detail"] == "entry-created"]
    assert created[-1]["unmapped"]["trustmesh"]["attributes"]["by"] == "user:bob"
    # the same token from another workload: not bound to its certificate
    stolen = await asyncio.to_thread(
        _call, rig.payments, "GET", url + "/entries", None, admin["access_token"]
    )
    assert stolen.status_code == 401
    # a user who is no admin
    carol = await asyncio.to_thread(login, "carol")
    no_admin = await asyncio.to_thread(
        _call, rig.orders, "GET", url + "/entries", None, carol["access_token"]
    )
    assert no_admin.status_code == 403
    # revoked at the provider: refused here once the feed has it
    with rig.orders.mount(requests.Session()) as s:
        revoked = await asyncio.to_thread(
            s.post,
            rig.url + "/oauth2/revoke",
            data={"token": admin["access_token"], "client_id": "console"},
            timeout=30,
        )
    assert revoked.status_code == 200
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        answer = await asyncio.to_thread(
            _call, rig.orders, "GET", url + "/entries", None, admin["access_token"]
        )
        status = answer.status_code
        if status == 401:
            break
        await asyncio.sleep(0.2)
    assert status == 401
    assert any(e.reason is Activity.TOKEN_REVOKED for e in rig.sink.events)
