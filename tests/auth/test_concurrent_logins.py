"""Logins at the same moment count like logins in a row (issue 13: five parallel logins
with an admin's password and one one-time code gave five admin sessions). A code's step
is checked and recorded in one conditional UPDATE, so one code signs in once; every
attempt is counted before its credentials are checked, so a burst of guesses is locked
out like a sequence. Tested on the store and through the login form over HTTPS, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authrig import AuthRig, make_rig
from services import postgres_database

from trustmesh import crypto
from trustmesh.auth.db import AuthStore, User
from trustmesh.auth.flow_store import FlowStore
from trustmesh.auth.login import LOGIN_FAILED, SESSION_COOKIE
from trustmesh.reasons import Reason
from trustmesh.store import create_engine, sqlite_url
from trustmesh.testing import RunningIdentityServer

PASSWORD = "the admin's long passphrase"
LOGINS = 24
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


@pytest.fixture(params=DATABASES)
async def database(request: pytest.FixtureRequest, short_tmp: Path) -> AsyncIterator[str]:
    """The provider's database URL: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url(short_tmp / "one-time.db")
        return
    async with postgres_database("tm_otp") as url:
        yield url


@pytest.fixture
async def store(database: str) -> AsyncIterator[AuthStore]:
    made = AuthStore(create_engine(database))
    await made.create()
    try:
        yield made
    finally:
        await made.close()


async def test_a_step_is_recorded_once_of_many_at_once(store: AuthStore) -> None:
    user_id = uuid.uuid4().hex
    await store.add_user(User(user_id, "root", "argon2id$x", ("admin",), totp_sealed=b"one"))
    won = await asyncio.gather(*(store.use_totp_step(user_id, b"one", 1000) for _ in range(20)))
    assert won.count(True) == 1
    assert not await store.use_totp_step(user_id, b"one", 1000)  # the same step again
    assert not await store.use_totp_step(user_id, b"one", 999)  # an older one
    assert await store.use_totp_step(user_id, b"one", 1001)  # the next one
    assert (await store.get_user("root")) == User(
        user_id, "root", "argon2id$x", ("admin",), totp_sealed=b"one", totp_last_step=1001
    )
    # MFA reset in between: a step checked against the old secret is not recorded
    await store.update_user("root", totp_sealed=b"two", totp_last_step=None)
    assert not await store.use_totp_step(user_id, b"one", 1002)
    assert await store.use_totp_step(user_id, b"two", 1002)
    assert not await store.use_totp_step("nobody", b"two", 1003)


def _admin_with_totp(rig: AuthRig) -> bytes:
    with rig.operator.mount(requests.Session()) as s:
        made = s.post(
            rig.url + "/admin/v1/users",
            json={"username": "root", "password": PASSWORD, "roles": ["admin"]},
            timeout=30,
        )
    assert made.status_code == 201, made.text
    secret = parse_qs(urlsplit(made.json()["totp_uri"]).query)["secret"][0]
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def _logins_at_once(
    rig: AuthRig, username: str, password: str, otp: str = ""
) -> list[requests.Response]:
    """``LOGINS`` browsers, each with its own form and cookies, send the same credentials
    at the same moment, each on its own TLS connection to the public listener."""
    start = threading.Barrier(LOGINS, timeout=60)

    def one() -> requests.Response:
        with requests.Session() as browser:
            browser.trust_env = False
            browser.verify = str(crypto.edge_ca_path(rig.state))
            form = browser.get(rig.public_url + "/login", timeout=30)
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf, form.text
            data = {"csrf": csrf[1], "next": "/account", "username": username}
            start.wait()
            return browser.post(
                rig.public_url + "/login",
                data={**data, "password": password, "otp": otp},
                allow_redirects=False,
                timeout=60,
            )

    with ThreadPoolExecutor(LOGINS) as pool:
        return list(pool.map(lambda _: one(), range(LOGINS)))


async def test_one_code_in_many_logins_at_once_signs_in_once(
    identity: RunningIdentityServer, short_tmp: Path, database: str
) -> None:
    async with make_rig(identity, short_tmp, f"auth: {{database: '{database}'}}\n") as rig:
        secret = await asyncio.to_thread(_admin_with_totp, rig)
        code = crypto.totp_code(secret, rig.auth.service.clock())
        answers = await asyncio.to_thread(_logins_at_once, rig, "root", PASSWORD, code)
        signed_in = [r for r in answers if r.status_code == 303 and SESSION_COOKIE in r.cookies]
        refused = [r for r in answers if r.status_code == 401 and LOGIN_FAILED in r.text]
        assert (len(signed_in), len(refused)) == (1, LOGINS - 1), [r.status_code for r in answers]
        assert all(SESSION_COOKIE not in r.cookies for r in refused)
        events = rig.sink.events
        assert len([e for e in events if e.reason == Reason.LOGIN_SUCCEEDED]) == 1
        assert len([e for e in events if e.reason == Reason.LOGIN_FAILED]) == LOGINS - 1
        # where each login came from, for detection (credential stuffing: one address)
        logins = [e for e in events if e.reason in (Reason.LOGIN_SUCCEEDED, Reason.LOGIN_FAILED)]
        assert {e.to_ocsf()["src_endpoint"]["ip"] for e in logins} == {"127.0.0.1"}


async def test_a_burst_of_guesses_is_locked_out_like_a_sequence(
    identity: RunningIdentityServer, short_tmp: Path, database: str
) -> None:
    async with make_rig(identity, short_tmp, f"auth: {{database: '{database}'}}\n") as rig:
        with rig.operator.mount(requests.Session()) as s:
            made = await asyncio.to_thread(
                s.post,
                rig.url + "/admin/v1/users",
                json={"username": "carol", "password": PASSWORD},
                timeout=30,
            )
        assert made.status_code == 201, made.text
        answers = await asyncio.to_thread(_logins_at_once, rig, "carol", "a wrong guess")
        assert [r.status_code for r in answers] == [401] * LOGINS
        # every guess counted: the login is locked, the right password refused now
        attempts = await FlowStore(rig.auth.service.store).attempts("carol")
        assert attempts.failures == LOGINS
        assert attempts.locked(rig.auth.service.clock())
        after = await asyncio.to_thread(_logins_at_once, rig, "carol", PASSWORD)
        assert [r.status_code for r in after] == [401] * LOGINS
