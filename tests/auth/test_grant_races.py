"""What a review of the login and token flows found: nothing a request does may rest on
a check that a revocation made meanwhile has overtaken, and a request spends or revokes
nothing before its client has authenticated.

- A user locked while signing in gets no session; locked while exchanging a code, no
  token (the provider reads the revocation state before the user, and checks it again
  once it has issued).
- A stolen refresh token presented without its confidential client's credentials rotates
  nothing (the rightful client refreshes as before), and a replayed client assertion
  neither rotates a refresh token nor revokes a token at the revocation endpoint — also
  after a restart, when only the store remembers the assertion.

Live, over HTTPS, against a real provider and the admin API; the race is injected at the
provider's own read of the user."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from authrig import WEB_PASSWORD, WEB_REDIRECT, AuthRig, FormLogin, code_flow, make_rig
from joserfc.jwk import ECKey

from trustmesh import crypto
from trustmesh.auth.db import Client
from trustmesh.reasons import Activity, Reason
from trustmesh.testing import RunningIdentityServer

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ISSUER = "https://login.trustmesh.test"


def _operator(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    with rig.operator.mount(requests.Session()) as s:
        return s.request(method, rig.url + path, json=body, timeout=30)


def _browser(rig: AuthRig) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(crypto.edge_ca_path(rig.state))
    return session


def _add_user(rig: AuthRig, *, web_client: bool = False) -> None:
    """alice; with ``web_client``, the public client ``shop-web`` too."""
    made = _operator(
        rig, "POST", "/admin/v1/users", {"username": "alice", "password": WEB_PASSWORD}
    )
    assert made.status_code == 201, made.text
    if web_client:
        body = {
            "client_id": "shop-web",
            "method": "none",
            "redirect_uris": [WEB_REDIRECT],
            "audiences": ["orders"],
        }
        assert _operator(rig, "POST", "/admin/v1/clients", body).status_code == 201


def _lock_on_first_read(rig: AuthRig, monkeypatch: pytest.MonkeyPatch, name: str) -> list[bool]:
    """Make the provider's next ``store.<name>`` (its read of a user) return the row as
    it was, with alice locked through the admin API just after the read; a list that
    holds True once the lock landed."""
    store = rig.auth.service.store
    read: Callable[..., Awaitable[Any]] = getattr(store, name)
    landed: list[bool] = []
    armed = [True]

    async def read_then_lock(*args: Any) -> Any:
        row = await read(*args)
        if not armed:
            return row
        armed.clear()  # once: the lock itself reads the user too
        locked = await asyncio.to_thread(_operator, rig, "POST", "/admin/v1/users/alice/lock")
        assert locked.status_code == 200, locked.text
        landed.append(True)
        return row

    monkeypatch.setattr(store, name, read_then_lock)
    return landed


def _authorize_url(client_id: str, verifier: str) -> str:
    client = OAuth2Session(
        client_id=client_id,
        redirect_uri=WEB_REDIRECT,
        scope="openid",
        code_challenge_method="S256",
    )
    url, _ = client.create_authorization_url("/oauth2/authorize", code_verifier=verifier)
    return str(url)


async def test_a_user_locked_while_signing_in_gets_no_session(
    rig: AuthRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.to_thread(_add_user, rig, web_client=True)
    landed = _lock_on_first_read(rig, monkeypatch, "get_user")
    session = _browser(rig)
    form = FormLogin(session, rig.public_url)
    start = _authorize_url("shop-web", generate_token(48))
    answer = await asyncio.to_thread(form.login, start, "alice", WEB_PASSWORD)
    assert landed == [True]
    assert answer.status_code == 401, answer.text
    # and no cookie it may have got signs anyone in: the authorization asks for a login
    again = await asyncio.to_thread(form.get, start)
    assert urlsplit(again.headers["Location"]).path == "/login"
    assert any(e.reason == Reason.LOGIN_FAILED for e in rig.sink.events)
    assert not any(e.reason == Reason.LOGIN_SUCCEEDED for e in rig.sink.events)
    session.close()


async def test_a_user_locked_while_a_code_is_exchanged_gets_no_token(
    rig: AuthRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.to_thread(_add_user, rig, web_client=True)
    session = _browser(rig)
    form = FormLogin(session, rig.public_url)
    verifier = generate_token(48)
    logged_in = await asyncio.to_thread(
        form.login, _authorize_url("shop-web", verifier), "alice", WEB_PASSWORD
    )
    assert logged_in.status_code == 303, logged_in.text
    back = await asyncio.to_thread(form.get, logged_in.headers["Location"])
    code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]

    landed = _lock_on_first_read(rig, monkeypatch, "get_user_by_id")
    answer = await asyncio.to_thread(
        session.post,
        rig.public_url + "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": WEB_REDIRECT,
            "client_id": "shop-web",
            "code_verifier": verifier,
        },
        timeout=30,
    )
    assert landed == [True]
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_grant"
    session.close()


def _confidential_tokens(rig: AuthRig, secret: str) -> dict[str, Any]:
    with _browser(rig) as session:
        return code_flow(
            session,
            rig.public_url,
            "portal",
            WEB_REDIRECT,
            "alice",
            WEB_PASSWORD,
            client_secret=secret,
        )


def _token(rig: AuthRig, data: dict[str, str], **kwargs: Any) -> requests.Response:
    with _browser(rig) as session:
        return session.post(rig.public_url + "/oauth2/token", data=data, timeout=30, **kwargs)


async def test_a_stolen_refresh_token_without_its_clients_secret_rotates_nothing(
    rig: AuthRig,
) -> None:
    await asyncio.to_thread(_add_user, rig)
    made = await asyncio.to_thread(
        _operator,
        rig,
        "POST",
        "/admin/v1/clients",
        {
            "client_id": "portal",
            "method": "client_secret_basic",
            "redirect_uris": [WEB_REDIRECT],
            "audiences": ["orders"],
        },
    )
    assert made.status_code == 201, made.text
    secret = made.json()["client_secret"]
    tokens = await asyncio.to_thread(_confidential_tokens, rig, secret)
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}

    public = {**refresh, "client_id": "portal"}  # as if it were a public client
    attempts: list[tuple[dict[str, str], tuple[str, str] | None]] = [
        (refresh, ("portal", secret + "x")),  # a guessed secret
        (refresh, ("portal", "")),
        (public, None),
    ]
    for data, auth in attempts:
        answer = await asyncio.to_thread(_token, rig, data, auth=auth)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "invalid_client"
    assert not any(e.reason == Activity.TOKEN_REVOKED for e in rig.sink.events)
    # the rightful client's token was neither spent nor its family revoked
    rightful = await asyncio.to_thread(_token, rig, refresh, auth=("portal", secret))
    assert rightful.status_code == 200, rightful.text
    assert rightful.json()["refresh_token"] != tokens["refresh_token"]


def _assertion(key: ECKey) -> str:
    return str(private_key_jwt_sign(key, "batch-web", ISSUER, alg="ES256"))


def _with(assertion: str, data: dict[str, str]) -> dict[str, str]:
    return {**data, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


async def test_a_replayed_assertion_spends_and_revokes_nothing_even_after_a_restart(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """The provider remembers a spent assertion in its process and in its store: after
    a restart only the store does, and the request is refused before it acts."""
    key = ECKey.generate_key("P-256", parameters={"kid": "batch-web-1"}, private=True)
    extra = f"auth: {{issuer: '{ISSUER}'}}\n"
    async with make_rig(identity, short_tmp, extra) as rig:
        await _add_batch_web(rig, key)
        code, verifier = await asyncio.to_thread(_sign_in_for_code, rig, "batch-web")
        first = await asyncio.to_thread(
            _token,
            rig,
            _with(
                _assertion(key),
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": WEB_REDIRECT,
                    "code_verifier": verifier,
                },
            ),
        )
        assert first.status_code == 200, first.text
        captured = _assertion(key)  # an attacker sees this one go by
        refresh = {"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]}
        rotated = await asyncio.to_thread(_token, rig, _with(captured, refresh))
        assert rotated.status_code == 200, rotated.text
        tokens = rotated.json()

    async with make_rig(identity, short_tmp, extra) as rig:
        stolen = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        replayed = await asyncio.to_thread(_token, rig, _with(captured, stolen))
        assert replayed.status_code == 401, replayed.text
        assert replayed.json()["error"] == "invalid_client"

        revoke = _with(captured, {"token": tokens["access_token"]})
        with _browser(rig) as session:
            refused = await asyncio.to_thread(
                session.post, rig.public_url + "/oauth2/revoke", data=revoke, timeout=30
            )
        assert refused.status_code == 401, refused.text
        assert not any(e.reason == Activity.TOKEN_REVOKED for e in rig.sink.events)
        claims = rig.auth.service.verify_own(tokens["access_token"])
        assert not await rig.auth.service.revocations.is_revoked(claims)

        # the rightful client refreshes with a fresh assertion: nothing was spent
        rightful = await asyncio.to_thread(_token, rig, _with(_assertion(key), stolen))
        assert rightful.status_code == 200, rightful.text


async def _add_batch_web(rig: AuthRig, key: ECKey) -> None:
    """alice, and the confidential client ``batch-web`` (``private_key_jwt`` with ``key``)."""
    await asyncio.to_thread(_add_user, rig)
    await rig.auth.service.store.add_client(
        Client(
            client_id="batch-web",
            auth_method="private_key_jwt",
            jwks={"keys": [key.as_dict(private=False)]},
            redirect_uris=(WEB_REDIRECT,),
            audiences=("orders",),
            created_at=int(time.time()),
        )
    )


def _sign_in_for_code(rig: AuthRig, client_id: str) -> tuple[str, str]:
    verifier = generate_token(48)
    with _browser(rig) as session:
        form = FormLogin(session, rig.public_url)
        logged_in = form.login(_authorize_url(client_id, verifier), "alice", WEB_PASSWORD)
        assert logged_in.status_code == 303, logged_in.text
        back = form.get(logged_in.headers["Location"])
        assert back.status_code == 303, back.text
    return parse_qs(urlsplit(back.headers["Location"]).query)["code"][0], verifier


async def test_a_replayed_assertion_revokes_nothing_at_the_revocation_endpoint(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """After a restart, only the store remembers an assertion: the revocation endpoint
    records it once Authlib has decided, and revokes only if it was not used before."""
    key = ECKey.generate_key("P-256", parameters={"kid": "batch-web-1"}, private=True)
    extra = f"auth: {{issuer: '{ISSUER}'}}\n"
    async with make_rig(identity, short_tmp, extra) as rig:
        await _add_batch_web(rig, key)
        code, verifier = await asyncio.to_thread(_sign_in_for_code, rig, "batch-web")
        captured = _assertion(key)  # an attacker sees this one go by
        exchange = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": WEB_REDIRECT,
            "code_verifier": verifier,
        }
        first = await asyncio.to_thread(_token, rig, _with(captured, exchange))
        assert first.status_code == 200, first.text
        tokens = first.json()

    async with make_rig(identity, short_tmp, extra) as rig:

        def revoke(assertion: str) -> requests.Response:
            with _browser(rig) as session:
                data = _with(assertion, {"token": tokens["access_token"]})
                return session.post(rig.public_url + "/oauth2/revoke", data=data, timeout=30)

        refused = await asyncio.to_thread(revoke, captured)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "invalid_client"
        assert not any(e.reason == Reason.TOKEN_REVOKED for e in rig.sink.events)
        claims = rig.auth.service.verify_own(tokens["access_token"])
        assert not await rig.auth.service.revocations.is_revoked(claims)

        # the rightful client, with a fresh assertion, revokes it
        revoked = await asyncio.to_thread(revoke, _assertion(key))
        assert revoked.status_code == 200, revoked.text
        assert await rig.auth.service.revocations.is_revoked(claims)
