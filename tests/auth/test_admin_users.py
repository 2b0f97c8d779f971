"""Users through the admin API: argon2id passwords (generated ones shown once), TOTP for
admins from the start (secret sealed, URI shown once), lock/unlock, MFA reset; bad input
changes nothing."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authrig import OPERATOR, AuthRig, make_rig

from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.reasons import Activity
from trustmesh.testing import RunningIdentityServer


def _call(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    with rig.operator.mount(requests.Session()) as s:
        return s.request(method, rig.url + path, json=body, timeout=30)


async def _api(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    return await asyncio.to_thread(_call, rig, method, path, body)


async def test_users_are_added_with_hashed_passwords_and_sealed_mfa(
    rig: AuthRig, short_tmp: Path
) -> None:
    alice = await _api(rig, "POST", "/admin/v1/users", {"username": "Alice"})
    assert alice.status_code == 201, alice.text
    doc = alice.json()
    assert doc["username"] == "alice"
    assert doc["roles"] == ["user"]
    assert doc["mfa"] is False
    password = doc["password"]
    assert len(password) >= 40
    bob = await _api(rig, "POST", "/admin/v1/users", {"username": "bob", "roles": ["admin"]})
    assert bob.status_code == 201, bob.text
    uri = bob.json()["totp_uri"]
    assert bob.json()["mfa"] is True  # admins get MFA from the start
    secret_b32 = parse_qs(urlsplit(uri).query)["secret"][0]
    secret = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    with sqlite3.connect(short_tmp / "state" / "auth" / "auth.db") as db:
        rows = db.execute("SELECT username, password_hash, totp_sealed FROM auth_users").fetchall()
    dump = repr(rows)
    assert password not in dump
    assert secret_b32 not in dump
    for _, password_hash, sealed in rows:
        assert password_hash.startswith("$argon2id$")
        assert sealed is None or secret not in sealed
    listed = (await _api(rig, "GET", "/admin/v1/users")).json()
    assert [u["username"] for u in listed] == ["alice", "bob"]
    assert "password" not in repr(listed)
    assert "totp" not in repr(listed)
    created = [e for e in rig.sink.events if e.reason == Activity.USER_CREATED]
    assert [e.attributes["username"] for e in created] == ["alice", "bob"]
    assert all(e.peer_spiffe_id == OPERATOR for e in created)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"username": "carol", "password": "short"}, 400),
        ({"username": "carol", "roles": ["root"]}, 400),
        ({"username": "carol", "roles": []}, 400),
        ({"username": "bad name!"}, 400),
        ({"username": ""}, 400),
        ({"username": "carol", "extra": 1}, 400),
        ({"username": "carol", "mfa": "yes"}, 400),
        (["carol"], 400),
    ],
)
async def test_bad_users_are_refused_and_change_nothing(
    rig: AuthRig, body: Any, status: int
) -> None:
    response = await _api(rig, "POST", "/admin/v1/users", body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == "invalid_request"
    assert (await _api(rig, "GET", "/admin/v1/users")).json() == []


async def test_lock_unlock_and_reset_mfa(rig: AuthRig) -> None:
    made = await _api(rig, "POST", "/admin/v1/users", {"username": "dave", "mfa": True})
    first_uri = made.json()["totp_uri"]
    again = await _api(rig, "POST", "/admin/v1/users", {"username": "DAVE"})
    assert again.status_code == 409  # names are case-insensitive
    locked = await _api(rig, "POST", "/admin/v1/users/dave/lock")
    assert locked.json()["locked"] is True
    unlocked = await _api(rig, "POST", "/admin/v1/users/Dave/unlock")
    assert unlocked.json()["locked"] is False
    reset = await _api(rig, "POST", "/admin/v1/users/dave/reset-mfa")
    assert reset.status_code == 200
    assert reset.json()["totp_uri"] != first_uri
    missing = await _api(rig, "POST", "/admin/v1/users/nobody/lock")
    assert missing.status_code == 404
    reasons = [e.reason for e in rig.sink.events]
    for reason in (Activity.USER_LOCKED, Activity.USER_UNLOCKED, Activity.MFA_RESET):
        assert reason in reasons


def _password_hash(short_tmp: Path, username: str) -> str:
    with sqlite3.connect(short_tmp / "state" / "auth" / "auth.db") as db:
        row = db.execute(
            "SELECT password_hash FROM auth_users WHERE username = ?", (username,)
        ).fetchone()
    return str(row[0])


async def test_a_password_is_changed_chosen_or_generated(rig: AuthRig, short_tmp: Path) -> None:
    await _api(rig, "POST", "/admin/v1/users", {"username": "erin"})
    first = _password_hash(short_tmp, "erin")
    chosen = await _api(
        rig, "POST", "/admin/v1/users/Erin/password", {"password": "a new long passphrase"}
    )
    assert chosen.status_code == 200, chosen.text
    assert "password" not in chosen.json()  # chosen: never echoed
    assert chosen.headers["Cache-Control"] == "no-store"
    second = _password_hash(short_tmp, "erin")
    assert second.startswith("$argon2id$")
    assert second != first
    generated = await _api(rig, "POST", "/admin/v1/users/erin/password", {})
    assert generated.status_code == 200, generated.text
    password = generated.json()["password"]  # shown once, stored only as argon2id
    assert len(password) >= 40
    assert password not in _password_hash(short_tmp, "erin")
    changed = [e for e in rig.sink.events if e.reason == Activity.PASSWORD_CHANGED]
    assert [e.attributes["username"] for e in changed] == ["erin", "erin"]
    assert all(e.attributes["by"] == "operator" for e in changed)
    # each change revoked every token of the user (see test_subject_revocation)
    subject = [e for e in rig.sink.events if "before" in e.attributes]
    assert [e.attributes["cause"] for e in subject] == ["password-changed"] * 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"password": "short"}, 400),
        ({"password": 12345678901234}, 400),
        ({"password": "a long enough passphrase", "extra": 1}, 400),
        (["a long enough passphrase"], 400),
        (None, 400),
    ],
)
async def test_a_bad_password_change_is_refused_and_changes_nothing(
    rig: AuthRig, short_tmp: Path, body: Any, status: int
) -> None:
    await _api(rig, "POST", "/admin/v1/users", {"username": "erin"})
    before = _password_hash(short_tmp, "erin")
    refused = await _api(rig, "POST", "/admin/v1/users/erin/password", body)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"] == "invalid_request"
    assert _password_hash(short_tmp, "erin") == before
    assert not any(e.reason == Activity.TOKEN_REVOKED for e in rig.sink.events)
    missing = await _api(rig, "POST", "/admin/v1/users/nobody/password", {})
    assert missing.status_code == 404


async def test_only_the_operator_manages_users(rig: AuthRig) -> None:
    def call() -> requests.Response:
        with rig.orders.mount(requests.Session()) as s:
            return s.post(rig.url + "/admin/v1/users", json={"username": "eve"}, timeout=10)

    assert (await asyncio.to_thread(call)).status_code == 403
    assert (await _api(rig, "GET", "/admin/v1/users")).json() == []


async def test_the_declared_roles_are_the_ones_users_may_hold(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """auth.roles names the roles (RFC 9068 roles claim) a shop needs; admin is always
    one, and anything else is refused."""
    async with make_rig(identity, short_tmp, "auth: {roles: [customer, support]}\n") as shop:
        made = await _api(
            shop, "POST", "/admin/v1/users", {"username": "cat", "roles": ["customer"]}
        )
        assert made.status_code == 201, made.text
        assert made.json()["roles"] == ["customer"]
        support = await _api(
            shop, "POST", "/admin/v1/users", {"username": "sue", "roles": ["support", "customer"]}
        )
        assert support.status_code == 201, support.text
        admin = await _api(shop, "POST", "/admin/v1/users", {"username": "ada", "roles": ["admin"]})
        assert admin.status_code == 201
        assert "totp_uri" in admin.json()  # admins always get MFA
        for roles in (["user"], ["root"], ["Customer"]):
            refused = await _api(shop, "POST", "/admin/v1/users", {"username": "x", "roles": roles})
            assert refused.status_code == 400, roles
            assert "customer" in refused.json()["message"]


def test_a_bad_role_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("trust_domain: x.example\nauth: {roles: [Not OK]}\n", source="t.yaml")
    assert "auth.roles[0]" in " ".join(caught.value.problems)
