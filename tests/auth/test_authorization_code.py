"""Authorization code + PKCE through the login form, driven by an HTTP client the way a
browser would be (cookies, redirects), with Authlib's OAuth 2 client for the protocol
and PyJWT for the ID token. Code reuse, PKCE downgrade, redirect-URI variants, refresh
reuse, lockout and admin MFA, each a test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authrig import ORDERS, AuthRig, FormLogin

from trustmesh import crypto, events
from trustmesh.reasons import Activity, Reason

REDIRECT = "https://shop.example/cb"
PASSWORD = "alice's long passphrase"


def _admin(rig: AuthRig, path: str, body: Any) -> dict[str, Any]:
    with rig.operator.mount(requests.Session()) as s:
        r = s.post(rig.url + path, json=body, timeout=30)
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def _add_shop_client(rig: AuthRig) -> None:
    await asyncio.to_thread(
        _admin,
        rig,
        "/admin/v1/clients",
        {
            "client_id": "shop-web",
            "method": "none",
            "redirect_uris": [REDIRECT],
            "audiences": ["orders"],
        },
    )


async def _setup(rig: AuthRig) -> dict[str, Any]:
    alice = await asyncio.to_thread(
        _admin, rig, "/admin/v1/users", {"username": "alice", "password": PASSWORD}
    )
    await _add_shop_client(rig)
    return alice


class Browser(FormLogin):
    """A cookie-keeping HTTP client that follows only this server's redirects."""

    def __init__(self, rig: AuthRig) -> None:
        # the gateway's seat, in effect
        super().__init__(rig.orders.mount(requests.Session()), rig.url)
        self.rig = rig

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.session.close()

    def login(self, start: str, username: str, password: str, otp: str = "") -> requests.Response:
        first = self.get(start)
        if first.status_code != 303 or "/login" not in first.headers["Location"]:
            return first
        return super().login(start, username, password, otp)


def _authlib() -> tuple[OAuth2Session, str, str]:
    client = OAuth2Session(
        client_id="shop-web",
        redirect_uri=REDIRECT,
        scope="openid",
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
    )
    verifier = generate_token(48)
    return client, verifier, generate_token(16)


def _flow(rig: AuthRig) -> tuple[dict[str, Any], str, str]:
    """Log alice in and complete the flow; (tokens, code location, verifier)."""
    client, verifier, nonce = _authlib()
    url, _state = client.create_authorization_url(
        rig.url + "/oauth2/authorize", code_verifier=verifier, nonce=nonce
    )
    with Browser(rig) as browser:
        logged_in = browser.login(url, "alice", PASSWORD)
        assert logged_in.status_code == 303, logged_in.text
        back = browser.get(logged_in.headers["Location"])
    assert back.status_code == 303
    location = back.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    rig.orders.mount(client)
    with client:
        tokens: dict[str, Any] = client.fetch_token(
            rig.url + "/oauth2/token", authorization_response=location, code_verifier=verifier
        )
    tokens["_nonce"] = nonce
    return tokens, location, verifier


async def test_code_flow_with_pkce_and_a_verifiable_id_token(rig: AuthRig) -> None:
    alice = await _setup(rig)
    tokens, location, _ = await asyncio.to_thread(_flow, rig)
    assert parse_qs(urlsplit(location).query)["iss"] == [rig.issuer]
    jwks = jwt.PyJWKClient(rig.url + "/jwks.json", ssl_context=rig.orders.ssl_context())
    id_token = tokens["id_token"]
    key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, id_token)
    claims = jwt.decode(
        id_token, key.key, algorithms=["ES256"], audience="shop-web", issuer=rig.issuer
    )
    assert claims["sub"] == alice["user_id"]
    assert claims["nonce"] == tokens["_nonce"]
    assert claims["amr"] == ["pwd"]
    digest = hashlib.sha256(tokens["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    access = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert access["sub"] == alice["user_id"]
    assert access["aud"] == ORDERS
    assert tokens["refresh_token"]
    assert any(e.reason == Reason.LOGIN_SUCCEEDED for e in rig.sink.events)


def _introspect(rig: AuthRig, token: str) -> dict[str, Any]:
    with rig.orders.mount(requests.Session()) as s:
        r = s.post(
            rig.url + "/oauth2/introspect", data={"token": token, "client_id": "orders"}, timeout=30
        )
    body: dict[str, Any] = r.json()
    return body


def _token(rig: AuthRig, data: dict[str, str]) -> requests.Response:
    with rig.orders.mount(requests.Session()) as s:
        return s.post(rig.url + "/oauth2/token", data=data, timeout=30)


async def test_code_reuse_revokes_what_it_issued(rig: AuthRig) -> None:
    await _setup(rig)
    tokens, location, verifier = await asyncio.to_thread(_flow, rig)
    assert (await asyncio.to_thread(_introspect, rig, tokens["access_token"]))["active"] is True
    code = parse_qs(urlsplit(location).query)["code"][0]
    again = await asyncio.to_thread(
        _token,
        rig,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "shop-web",
            "code_verifier": verifier,
        },
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert (await asyncio.to_thread(_introspect, rig, tokens["access_token"]))["active"] is False
    # the provider revoked what the code issued, and refused the second exchange
    jti = jwt.decode(tokens["access_token"], options={"verify_signature": False})["jti"]
    revoked = [e for e in rig.sink.events if e.reason is Activity.TOKEN_REVOKED]
    assert [(e.decision, e.client_id, e.jti, e.message) for e in revoked] == [
        (events.Decision.ALLOW, "shop-web", jti, "access token revoked (code-reused)"),
        (events.Decision.ALLOW, "shop-web", None, "refresh token family revoked (code-reused)"),
        (
            events.Decision.DENY,
            "shop-web",
            None,
            "authorization code reused: its tokens are revoked",
        ),
    ]
    refused = [e for e in rig.sink.events if e.reason is Reason.TOKEN_REFUSED]
    assert [(e.decision, e.message) for e in refused] == [
        (events.Decision.DENY, "token request refused: invalid_grant")
    ]
    refreshed = await asyncio.to_thread(
        _token,
        rig,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "shop-web",
        },
    )
    assert refreshed.status_code == 400


async def test_refresh_rotates_and_reuse_revokes_the_family(rig: AuthRig) -> None:
    await _setup(rig)
    tokens, _, _ = await asyncio.to_thread(_flow, rig)
    first = await asyncio.to_thread(
        _token,
        rig,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "shop-web",
        },
    )
    assert first.status_code == 200, first.text
    newer = first.json()["refresh_token"]
    assert newer != tokens["refresh_token"]
    replay = await asyncio.to_thread(
        _token,
        rig,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "shop-web",
        },
    )
    assert replay.status_code == 400
    dead = await asyncio.to_thread(
        _token,
        rig,
        {
            "grant_type": "refresh_token",
            "refresh_token": newer,
            "client_id": "shop-web",
        },
    )
    assert dead.status_code == 400


@pytest.mark.parametrize("verifier", ["wrong-" + "x" * 50, ""])
async def test_wrong_pkce_verifier_is_refused(rig: AuthRig, verifier: str) -> None:
    await _setup(rig)

    def run() -> requests.Response:
        client, good, nonce = _authlib()
        url, _ = client.create_authorization_url(
            rig.url + "/oauth2/authorize", code_verifier=good, nonce=nonce
        )
        with Browser(rig) as browser:
            logged_in = browser.login(url, "alice", PASSWORD)
            location = browser.get(logged_in.headers["Location"]).headers["Location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        return _token(
            rig,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": "shop-web",
                "code_verifier": verifier,
            },
        )

    refused = await asyncio.to_thread(run)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


async def test_pkce_downgrade_and_redirect_variants_are_refused(rig: AuthRig) -> None:
    await _setup(rig)
    browser = Browser(rig)
    base = "/oauth2/authorize?response_type=code&client_id=shop-web&state=s1"
    challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    for query in (
        f"&redirect_uri={REDIRECT}&code_challenge={challenge}&code_challenge_method=plain",
        f"&redirect_uri={REDIRECT}",
    ):
        r = await asyncio.to_thread(browser.get, base + query)
        assert r.status_code == 303
        assert "error=invalid_request" in r.headers["Location"]
        assert r.headers["Location"].startswith(REDIRECT)
    variants = [
        REDIRECT + "/",
        REDIRECT + "?x=1",
        "https://SHOP.example/cb",
        "https://shop.example@evil.example/cb",
        "http://shop.example/cb",
        "https://evil.shop.example/cb",
    ]
    for uri in variants:
        r = await asyncio.to_thread(
            browser.get,
            base
            + f"&redirect_uri={requests.utils.quote(uri, safe='')}&code_challenge={challenge}&code_challenge_method=S256",
        )
        assert r.status_code == 400, uri
        assert "Location" not in r.headers
        assert r.headers["X-Frame-Options"] == "DENY"
    browser.session.close()


async def test_lockout_and_no_user_enumeration(rig: AuthRig) -> None:
    await _setup(rig)

    def attempt(username: str, password: str) -> requests.Response:
        client, verifier, nonce = _authlib()
        url, _ = client.create_authorization_url(
            rig.url + "/oauth2/authorize", code_verifier=verifier, nonce=nonce
        )
        with Browser(rig) as browser:
            return browser.login(url, username, password)

    bodies = set()
    for _ in range(10):
        r = await asyncio.to_thread(attempt, "alice", "not the password!")
        assert r.status_code == 401
        bodies.add(re.sub(r'value="[^"]*"', "", r.text))
    unknown = await asyncio.to_thread(attempt, "nobody", "not the password!")
    assert unknown.status_code == 401
    assert re.sub(r'value="[^"]*"', "", unknown.text) in bodies
    assert len(bodies) == 1
    locked = await asyncio.to_thread(attempt, "alice", PASSWORD)  # right password, locked out
    assert locked.status_code == 401
    assert locked.headers["Cache-Control"] == "no-store"


async def test_admins_need_their_one_time_code(rig: AuthRig) -> None:
    bob = await asyncio.to_thread(
        _admin,
        rig,
        "/admin/v1/users",
        {"username": "bob", "password": PASSWORD, "roles": ["admin"]},
    )
    await _add_shop_client(rig)
    secret_b32 = parse_qs(urlsplit(bob["totp_uri"]).query)["secret"][0]
    secret = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))

    def attempt(otp: str) -> requests.Response:
        client, verifier, nonce = _authlib()
        url, _ = client.create_authorization_url(
            rig.url + "/oauth2/authorize", code_verifier=verifier, nonce=nonce
        )
        with Browser(rig) as browser:
            return browser.login(url, "bob", PASSWORD, otp)

    assert (await asyncio.to_thread(attempt, "")).status_code == 401
    code = crypto.totp_code(secret, time.time())
    assert (await asyncio.to_thread(attempt, code)).status_code == 303
    assert (await asyncio.to_thread(attempt, code)).status_code == 401  # used within its step


async def test_userinfo_names_the_user_behind_a_bound_token(rig: AuthRig) -> None:
    alice = await _setup(rig)
    tokens, _, _ = await asyncio.to_thread(_flow, rig)

    def userinfo(token: str, who: Any) -> requests.Response:
        with who.mount(requests.Session()) as s:
            return s.get(
                rig.url + "/oauth2/userinfo",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )

    ok = await asyncio.to_thread(userinfo, tokens["access_token"], rig.orders)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"sub": alice["user_id"], "preferred_username": "alice"}
    # the token is bound to the certificate it was issued over
    stolen = await asyncio.to_thread(userinfo, tokens["access_token"], rig.payments)
    assert stolen.status_code == 401
    assert 'error="invalid_token"' in stolen.headers["WWW-Authenticate"]
    garbage = await asyncio.to_thread(userinfo, "garbage", rig.orders)
    assert garbage.status_code == 401

    # a service's own token names no user
    def service_token() -> str:
        with rig.orders.mount(requests.Session()) as s:
            data = {
                "grant_type": "client_credentials",
                "client_id": "orders",
                "audience": "payments",
            }
            return str(
                s.post(rig.url + "/oauth2/token", data=data, timeout=30).json()["access_token"]
            )

    token = await asyncio.to_thread(service_token)
    assert (await asyncio.to_thread(userinfo, token, rig.orders)).status_code == 401
