"""Revocation of a refresh family (with every access token it issued) and of a user
("tokens for sub issued before T"): the whole-second rule under a controlled clock, on
SQLite and PostgreSQL; and, live, what a password change does to a sign-in made before
it, and RFC 7009 revocation of refresh tokens."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authrig import WEB_PASSWORD, WEB_REDIRECT, AuthRig, FormLogin, auth_config

from trustmesh import crypto, events
from trustmesh.auth.db import AuthStore
from trustmesh.auth.revocations import SUBJECT_REVOCATION_SECONDS, LiveToken
from trustmesh.auth.service import AuthService, AuthSettings
from trustmesh.reasons import Activity
from trustmesh.testing import FakeClock

T0 = 1_900_000_000

START = T0 + 0.4  # where each service's clock starts: 0.6 s before the next whole second


async def _service(store: AuthStore, clock: FakeClock) -> AuthService:
    settings = AuthSettings(issuer="https://127.0.0.1:1", rotate_every=0)
    key = crypto.SealKey(os.urandom(32), "env")
    return AuthService(auth_config(), store, key, settings, events.MemorySink(), clock=clock.time)


def _events(service: AuthService, kind: str) -> list[events.Event]:
    """The revocation events of ``kind``: ``jti`` (a token), ``family``, ``before`` (a
    subject)."""
    sink = service.sink
    assert isinstance(sink, events.MemorySink)
    return [
        e
        for e in sink.events
        if e.reason == Activity.TOKEN_REVOKED
        and (e.jti is not None if kind == "jti" else kind in e.attributes)
    ]


async def _a_subject_is_revoked_from_the_next_whole_second(store: AuthStore) -> None:
    clock = FakeClock(START)
    service = await _service(store, clock)
    revocations = service.revocations
    revoked = await revocations.subject("u1", "password-changed")
    assert revoked.before == T0 + 1  # every token of T0's second: before or after, unknown
    assert revoked.expires_at == T0 + 1 + SUBJECT_REVOCATION_SECONDS
    for iat, gone in ((T0 - 5, True), (T0, True), (T0 + 1, False), (None, True), ("x", True)):
        claims: dict[str, Any] = {"jti": uuid.uuid4().hex, "sub": "u1", "iat": iat}
        assert await revocations.is_revoked(claims) is gone, iat
    assert not await revocations.is_revoked({"jti": "j", "sub": "u2", "iat": T0})
    event = _events(service, "before")[-1]
    assert event.sub == "u1"
    assert event.jti is None
    assert event.attributes["before"] == T0 + 1
    # the next token is not born revoked: the provider waits for the next second
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    revocations.sleep = sleep
    state = await revocations.before_issuing("u1")
    assert slept == [pytest.approx(0.6)]
    assert int(clock.time()) == revoked.before
    assert not await revocations.revoked_since("u1", state)
    assert await revocations.before_issuing("u2") is not None
    assert len(slept) == 1  # nothing to wait for without a revocation
    # on the feed, after its cursor; gone once nothing it matches can live
    listed = await revocations.store.subjects_since(0, int(clock.time()))
    assert [(r.subject, r.before) for r in listed] == [("u1", T0 + 1)]
    assert await revocations.store.subjects_since(listed[-1].seq, int(clock.time())) == []
    await revocations.subject("u1", "user-locked")
    assert await revocations.revoked_since("u1", state)
    clock.advance(SUBJECT_REVOCATION_SECONDS + 2)
    await revocations.prune(int(clock.time()))
    assert await revocations.store.subjects_since(0, int(clock.time())) == []
    assert not await revocations.is_revoked({"jti": "j", "sub": "u1", "iat": T0})


async def _a_family_takes_every_access_token_it_issued(store: AuthStore) -> None:
    clock = FakeClock(START)
    service = await _service(store, clock)
    revocations = service.revocations
    now = int(clock.time())
    _, family = await store.start_refresh_family("shop-web", "u1", "", now, 3600)
    issued = [LiveToken(f"jti-{i}", "shop-web", "u1", now + 900) for i in range(3)]
    expired = LiveToken("jti-old", "shop-web", "u1", now - 1)
    for token in (*issued, expired):
        assert await revocations.store.record_family_token(family.family_id, token)
    _, other = await store.start_refresh_family("shop-web", "u1", "", now, 3600)
    await revocations.store.record_family_token(
        other.family_id, LiveToken("jti-x", "a", "u1", now + 9)
    )
    await revocations.family(family.family_id, "refresh-token-reused")
    for token in issued:
        assert await store.is_revoked(token.jti)
    assert not await store.is_revoked("jti-old")  # expired anyway: nothing to record
    assert not await store.is_revoked("jti-x")  # another family
    assert sorted(e.jti or "" for e in _events(service, "jti")) == [t.jti for t in issued]
    [family_event] = _events(service, "family")
    assert family_event.sub == "u1"
    assert family_event.client_id == "shop-web"
    assert all(e.attributes["cause"] == "refresh-token-reused" for e in _events(service, "jti"))
    await revocations.family(family.family_id, "refresh-token-revoked")
    assert len(_events(service, "jti")) == 3  # revoked once, one event each
    assert len(_events(service, "family")) == 1
    # a token the family issues while it is being revoked is reported, for its caller
    late = LiveToken("jti-late", "shop-web", "u1", now + 900)
    assert not await revocations.store.record_family_token(family.family_id, late)
    # a user's revocation takes their families along
    await revocations.subject("u1", "user-locked")
    assert await store.is_revoked("jti-x")
    assert await revocations.store.live_families("u1", now) == []


async def test_subject_revocation_on_sqlite(sqlite_store: AuthStore) -> None:
    await _a_subject_is_revoked_from_the_next_whole_second(sqlite_store)


async def test_family_revocation_on_sqlite(sqlite_store: AuthStore) -> None:
    await _a_family_takes_every_access_token_it_issued(sqlite_store)


@pytest.mark.services
async def test_subject_and_family_revocation_on_postgresql(pg_store: AuthStore) -> None:
    await _a_subject_is_revoked_from_the_next_whole_second(pg_store)
    await _a_family_takes_every_access_token_it_issued(pg_store)


# -- live ----------------------------------------------------------------------------------
def _operator(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    with rig.operator.mount(requests.Session()) as s:
        return s.request(method, rig.url + path, json=body, timeout=30)


def _setup(rig: AuthRig, *clients: str) -> None:
    made = _operator(
        rig, "POST", "/admin/v1/users", {"username": "alice", "password": WEB_PASSWORD}
    )
    assert made.status_code == 201, made.text
    for client_id in clients:
        body = {
            "client_id": client_id,
            "method": "none",
            "redirect_uris": [WEB_REDIRECT],
            "audiences": ["orders"],
        }
        assert _operator(rig, "POST", "/admin/v1/clients", body).status_code == 201


class Browser:
    """One browser (its cookies kept) signing in to ``shop-web`` with code + PKCE."""

    def __init__(self, rig: AuthRig) -> None:
        self.rig = rig
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(crypto.edge_ca_path(rig.state))
        self.form = FormLogin(self.session, rig.public_url)
        self.client = OAuth2Session(
            client_id="shop-web",
            redirect_uri=WEB_REDIRECT,
            scope="openid",
            token_endpoint_auth_method="none",
            code_challenge_method="S256",
        )
        self.verifier = ""

    def start(self) -> str:
        self.verifier = generate_token(48)
        url, _ = self.client.create_authorization_url(
            self.rig.public_url + "/oauth2/authorize", code_verifier=self.verifier
        )
        return str(url)

    def sign_in(self, password: str) -> str:
        """Sign in; the code the authorization request ends with."""
        logged_in = self.form.login(self.start(), "alice", password)
        assert logged_in.status_code == 303, logged_in.text
        return self.authorize(logged_in.headers["Location"])

    def authorize(self, url: str | None = None) -> str:
        back = self.form.get(url or self.start())
        assert back.status_code == 303, back.text
        return back.headers["Location"]

    def exchange(self, location: str) -> requests.Response:
        code = parse_qs(urlsplit(location).query)["code"][0]
        return self.session.post(
            self.rig.public_url + "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": WEB_REDIRECT,
                "client_id": "shop-web",
                "code_verifier": self.verifier,
            },
            timeout=30,
        )


async def test_a_sign_in_from_before_a_password_change_authorizes_nothing_more(
    rig: AuthRig,
) -> None:
    await asyncio.to_thread(_setup, rig, "shop-web")
    browser = Browser(rig)
    code = await asyncio.to_thread(browser.sign_in, WEB_PASSWORD)
    changed = await asyncio.to_thread(
        _operator, rig, "POST", "/admin/v1/users/alice/password", {"password": "x" * 20}
    )
    assert changed.status_code == 200, changed.text
    # the code it got before: refused; the session: asked to sign in again
    late = await asyncio.to_thread(browser.exchange, code)
    assert late.status_code == 400
    assert late.json()["error"] == "invalid_grant"
    again = await asyncio.to_thread(browser.authorize)
    assert urlsplit(again).path == "/login"
    # signing in anew (in the same second, too) gives a token that is not born revoked
    fresh = await asyncio.to_thread(browser.sign_in, "x" * 20)
    answer = await asyncio.to_thread(browser.exchange, fresh)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    revoked = [e for e in rig.sink.events if "before" in e.attributes]
    assert iat >= revoked[-1].attributes["before"]

    def introspect() -> dict[str, Any]:
        with rig.orders.mount(requests.Session()) as s:
            answer = s.post(
                rig.url + "/oauth2/introspect",
                data={"token": token, "client_id": "orders"},
                timeout=30,
            )
        body: dict[str, Any] = answer.json()
        return body

    assert (await asyncio.to_thread(introspect))["active"] is True
    browser.session.close()


def _revoke(rig: AuthRig, data: dict[str, str]) -> requests.Response:
    return requests.post(
        rig.public_url + "/oauth2/revoke",
        data=data,
        verify=str(crypto.edge_ca_path(rig.state)),
        timeout=30,
    )


async def test_a_refresh_token_is_revoked_only_by_its_client(rig: AuthRig) -> None:
    await asyncio.to_thread(_setup, rig, "shop-web", "other-app")
    browser = Browser(rig)
    code = await asyncio.to_thread(browser.sign_in, WEB_PASSWORD)
    tokens = (await asyncio.to_thread(browser.exchange, code)).json()
    refresh = tokens["refresh_token"]
    stranger = await asyncio.to_thread(
        _revoke,
        rig,
        {"token": refresh, "token_type_hint": "refresh_token", "client_id": "other-app"},
    )
    assert stranger.status_code == 400, stranger.text
    assert stranger.json()["error"] == "invalid_grant"
    assert not any(e.reason == Activity.TOKEN_REVOKED for e in rig.sink.events)
    for hint in ("refresh_token", None):  # a hint, or none: found either way
        data = {"token": refresh, "client_id": "shop-web"}
        if hint:
            data["token_type_hint"] = hint
        assert (await asyncio.to_thread(_revoke, rig, data)).status_code == 200
    jti = jwt.decode(tokens["access_token"], options={"verify_signature": False})["jti"]
    revoked = [e for e in rig.sink.events if e.reason == Activity.TOKEN_REVOKED]
    assert [e.jti for e in revoked] == [None, jti]  # the family, its token: once each
    assert revoked[0].attributes["cause"] == "refresh-token-revoked"
    assert revoked[0].attributes["family"]
    # a hint the provider does not know is no reason to refuse (it is only a hint)
    odd = await asyncio.to_thread(
        _revoke, rig, {"token": refresh, "token_type_hint": "id_token", "client_id": "shop-web"}
    )
    assert odd.status_code == 200, odd.text
