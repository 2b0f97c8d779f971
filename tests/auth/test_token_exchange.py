"""RFC 8693 token exchange: the service a token was addressed to trades it for one
addressed to the next service; the subject stays, ``act`` records the chain, scopes can
only narrow."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import jwt
import requests
from authrig import INVENTORY, ORDERS, PAYMENTS, AuthRig, Workload

from trustmesh.reasons import Reason

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def _post(rig: AuthRig, workload: Workload, path: str, data: dict[str, str]) -> requests.Response:
    with workload.mount(requests.Session()) as s:
        return s.post(rig.url + path, data=data, timeout=10)


async def _call(rig: AuthRig, who: Workload, path: str, **data: str) -> requests.Response:
    return await asyncio.to_thread(_post, rig, who, path, data)


async def _orders_token(rig: AuthRig) -> str:
    r = await _call(
        rig,
        rig.orders,
        "/oauth2/token",
        grant_type="client_credentials",
        client_id="orders",
        audience="payments",
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def _exchange(client_id: str, token: str, audience: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": EXCHANGE,
        "client_id": client_id,
        "subject_token": token,
        "subject_token_type": ACCESS,
        "audience": audience,
        **extra,
    }


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_exchange_keeps_the_subject_and_records_the_actor(rig: AuthRig) -> None:
    first = await _orders_token(rig)
    r = await _call(rig, rig.payments, "/oauth2/token", **_exchange("payments", first, "inventory"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["issued_token_type"] == ACCESS
    assert body["token_type"] == "Bearer"
    second = _claims(body["access_token"])
    original = _claims(first)
    assert second["sub"] == ORDERS  # the original subject
    assert second["aud"] == INVENTORY
    assert second["act"] == {"sub": PAYMENTS}
    assert second["client_id"] == "payments"
    assert second["exp"] <= original["exp"]
    digest = hashlib.sha256(rig.payments.leaf_der).digest()  # bound to the exchanger
    assert second["cnf"]["x5t#S256"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    issued = [e for e in rig.sink.events if e.reason == Reason.TOKEN_ISSUED]
    assert "exchanged by" in issued[-1].message
    # introspection shows the chain to the audience
    seen = await _call(
        rig, rig.inventory, "/oauth2/introspect", token=body["access_token"], client_id="inventory"
    )
    assert seen.json()["act"] == {"sub": PAYMENTS}


async def test_only_the_addressee_may_exchange_and_only_towards_its_callees(rig: AuthRig) -> None:
    first = await _orders_token(rig)
    # orders is not the audience of its own token for payments
    r = await _call(rig, rig.orders, "/oauth2/token", **_exchange("orders", first, "inventory"))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    # payments may call inventory, not orders
    r = await _call(rig, rig.payments, "/oauth2/token", **_exchange("payments", first, "orders"))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_target"
    # inventory may call nobody: the chain ends there
    step = await _call(
        rig, rig.payments, "/oauth2/token", **_exchange("payments", first, "inventory")
    )
    second = step.json()["access_token"]
    r = await _call(
        rig, rig.inventory, "/oauth2/token", **_exchange("inventory", second, "payments")
    )
    assert r.status_code == 400


async def test_scope_can_only_narrow(rig: AuthRig) -> None:
    first = await _orders_token(rig)
    r = await _call(
        rig,
        rig.payments,
        "/oauth2/token",
        **_exchange("payments", first, "inventory", scope="admin"),
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_scope"
    assert "access_token" not in r.text


async def test_bad_subject_tokens_are_refused(rig: AuthRig) -> None:
    first = await _orders_token(rig)
    for data in (
        _exchange("payments", "garbage", "inventory"),
        _exchange("payments", first, "inventory", subject_token_type="urn:x"),
        _exchange("payments", first, "inventory", actor_token=first, actor_token_type=ACCESS),
        {"grant_type": EXCHANGE, "client_id": "payments", "audience": "inventory"},
    ):
        r = await _call(rig, rig.payments, "/oauth2/token", **data)
        assert r.status_code == 400, data
        assert r.json()["error"] in ("invalid_grant", "invalid_request")
    # a revoked subject token cannot be traded
    r = await _call(rig, rig.orders, "/oauth2/revoke", token=first, client_id="orders")
    assert r.status_code == 200
    r = await _call(rig, rig.payments, "/oauth2/token", **_exchange("payments", first, "inventory"))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
