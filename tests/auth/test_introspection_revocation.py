"""RFC 7662 introspection and RFC 7009 revocation: client-authenticated, and a client
learns only about tokens issued to it or addressed to it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from authrig import (
    CONFIG,
    INVENTORY,
    ORDERS,
    PAYMENTS,
    TD,
    AuthRig,
    Workload,
    identity_for,
    make_rig,
    workload,
)

from trustmesh import events
from trustmesh.reasons import Activity, Reason
from trustmesh.testing import RunningIdentityServer

BATCH = f"spiffe://{TD}/batch"  # a workload of the trust domain, not a declared service


def _post(rig: AuthRig, workload: Workload, path: str, data: dict[str, str]) -> requests.Response:
    with workload.mount(requests.Session()) as s:
        return s.post(rig.url + path, data=data, timeout=10)


async def _token(rig: AuthRig, audience: str = "payments") -> str:
    r = await asyncio.to_thread(
        _post,
        rig,
        rig.orders,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "orders", "audience": audience},
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


async def _introspect(rig: AuthRig, who: Workload, client_id: str, token: str) -> dict[str, Any]:
    r = await asyncio.to_thread(
        _post, rig, who, "/oauth2/introspect", {"token": token, "client_id": client_id}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_issuer_and_audience_may_introspect_others_learn_nothing(rig: AuthRig) -> None:
    token = await _token(rig)
    mine = await _introspect(rig, rig.orders, "orders", token)
    assert mine["active"] is True
    assert mine["sub"] == ORDERS
    assert mine["aud"] == PAYMENTS
    assert mine["client_id"] == "orders"
    assert "x5t#S256" in mine["cnf"]
    assert mine["token_type"] == "Bearer"
    addressed = await _introspect(rig, rig.payments, "payments", token)
    assert addressed["active"] is True
    stranger = await _introspect(rig, rig.inventory, "inventory", token)
    assert stranger == {"active": False}
    garbage = await _introspect(rig, rig.orders, "orders", "not-a-token")
    assert garbage == {"active": False}
    # every answered introspection is recorded: who asked, about which token
    asked = [
        (e.decision, e.client_id, e.peer_spiffe_id, e.jti)
        for e in rig.sink.events
        if e.reason is Reason.TOKEN_INTROSPECTED
    ]
    allow = events.Decision.ALLOW
    assert asked == [
        (allow, "orders", ORDERS, mine["jti"]),
        (allow, "payments", PAYMENTS, mine["jti"]),
        (allow, "inventory", INVENTORY, mine["jti"]),
        (allow, "orders", ORDERS, None),
    ]


async def test_introspection_requires_client_authentication(rig: AuthRig) -> None:
    token = await _token(rig)
    r = await asyncio.to_thread(_post, rig, rig.orders, "/oauth2/introspect", {"token": token})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    # the orders certificate cannot introspect as payments
    r = await asyncio.to_thread(
        _post, rig, rig.orders, "/oauth2/introspect", {"token": token, "client_id": "payments"}
    )
    assert r.status_code == 401


async def test_revoked_token_is_inactive_and_in_the_feed(rig: AuthRig) -> None:
    token = await _token(rig)
    jti = (await _introspect(rig, rig.orders, "orders", token))["jti"]
    # only the client it was issued to may revoke it (RFC 7009 §2.1)
    r = await asyncio.to_thread(
        _post, rig, rig.payments, "/oauth2/revoke", {"token": token, "client_id": "payments"}
    )
    assert r.status_code == 400
    assert (await _introspect(rig, rig.orders, "orders", token))["active"] is True
    r = await asyncio.to_thread(
        _post, rig, rig.orders, "/oauth2/revoke", {"token": token, "client_id": "orders"}
    )
    assert r.status_code == 200
    assert (await _introspect(rig, rig.orders, "orders", token)) == {"active": False}
    assert (await _introspect(rig, rig.payments, "payments", token)) == {"active": False}
    # revoking again, or revoking garbage, is fine (RFC 7009 §2.2)
    for value in (token, "garbage"):
        r = await asyncio.to_thread(
            _post, rig, rig.orders, "/oauth2/revoke", {"token": value, "client_id": "orders"}
        )
        assert r.status_code == 200

    def feed(since: str) -> requests.Response:
        with rig.inventory.mount(requests.Session()) as s:
            return s.get(rig.url + "/v1/revocations", params={"since": since}, timeout=10)

    r = await asyncio.to_thread(feed, "0")
    assert r.status_code == 200
    body = r.json()
    assert [e["jti"] for e in body["revoked"]] == [jti]
    later = (await asyncio.to_thread(feed, str(body["cursor"]))).json()
    assert later["revoked"] == []
    assert later["cursor"] == body["cursor"]
    assert (await asyncio.to_thread(feed, "-1")).status_code == 400
    assert any(e.reason is Activity.TOKEN_REVOKED and e.jti == jti for e in rig.sink.events)


async def test_a_token_from_another_issuer_key_is_not_ours(rig: AuthRig) -> None:
    import jwt

    from trustmesh import crypto

    token = await _token(rig)
    claims = jwt.decode(token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(token)["kid"]
    forged = jwt.encode(
        claims, crypto.generate_key(), algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"}
    )
    assert (await _introspect(rig, rig.orders, "orders", forged)) == {"active": False}


@pytest.fixture
def identity_with_batch(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(short_tmp, CONFIG, (BATCH,))


async def test_the_revocation_feed_answers_only_those_who_verify_tokens(
    identity_with_batch: RunningIdentityServer, short_tmp: Path
) -> None:
    """Which tokens were revoked — and, by subject, which users — is for the gateway
    and the declared services: any other workload of the trust domain gets 403."""
    async with make_rig(identity_with_batch, short_tmp) as rig:
        batch = await workload(identity_with_batch, BATCH, short_tmp / "batch")
        try:

            def feed(who: Workload) -> requests.Response:
                with who.mount(requests.Session()) as s:
                    return s.get(rig.url + "/v1/revocations", params={"since": "0"}, timeout=10)

            refused = await asyncio.to_thread(feed, batch)
            assert refused.status_code == 403
            assert refused.json()["error"] == "forbidden"
            denied = [e for e in rig.sink.events if e.reason == Reason.REVOCATION_FEED_DENIED]
            assert [e.peer_spiffe_id for e in denied] == [BATCH]
            assert (await asyncio.to_thread(feed, rig.operator)).status_code == 403
            allowed = await asyncio.to_thread(feed, rig.orders)
            assert allowed.status_code == 200, allowed.text
            assert allowed.json()["revoked"] == []
        finally:
            await batch.source.close()
