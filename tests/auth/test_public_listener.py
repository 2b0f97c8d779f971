"""The identity provider's public listener: what a browser or a public client reaches
without an SVID, over server-authenticated TLS with a certificate from the dev edge CA.
The whole code + PKCE flow runs there with Authlib; admin users act through the admin
API with a token from a login with a one-time code, and without one they are refused."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authrig import AUTH, ORDERS, AuthRig, FormLogin, code_flow, make_rig
from cryptography import x509

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.errors import ConfigError, InvalidTokenError
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk.tokens import JWKSCache, RevocationList, TokenVerifier
from trustmesh.testing import RunningIdentityServer

REDIRECT = "https://shop.example/cb"
PASSWORD = "a long and private passphrase"


def _admin(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    with rig.operator.mount(requests.Session()) as s:
        return s.request(method, rig.url + path, json=body, timeout=30)


def _created(rig: AuthRig, path: str, body: Any) -> dict[str, Any]:
    r = _admin(rig, "POST", path, body)
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _edge_ca(rig: AuthRig) -> str:
    return str(crypto.edge_ca_path(rig.state))


def _browser(rig: AuthRig, ca: str) -> FormLogin:
    """What a browser on this machine is: cookies, no client certificate, trusting only
    the dev edge CA."""
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
    session.verify = ca
    return FormLogin(session, rig.public_url)


def _code_flow(
    rig: AuthRig, ca: str, client_id: str, username: str, otp: str = "", scope: str = "openid"
) -> dict[str, Any]:
    """Authorization code + PKCE entirely over the public listener (Authlib client)."""
    client = OAuth2Session(
        client_id=client_id,
        redirect_uri=REDIRECT,
        scope=scope,
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
    )
    client.trust_env = False
    client.verify = ca
    verifier, nonce = generate_token(48), generate_token(16)
    metadata = requests.get(
        rig.public_url + "/.well-known/openid-configuration", verify=ca, timeout=30
    ).json()
    url, _ = client.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    browser = _browser(rig, ca)
    with browser.session:
        logged_in = browser.login(url, username, PASSWORD, otp)
        assert logged_in.status_code == 303, logged_in.text
        back = browser.get(logged_in.headers["Location"])
    assert back.status_code == 303, back.text
    location = back.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    assert parse_qs(urlsplit(location).query)["iss"] == [metadata["issuer"]]
    with client:
        tokens: dict[str, Any] = client.fetch_token(
            metadata["token_endpoint"], authorization_response=location, code_verifier=verifier
        )
    tokens["_nonce"] = nonce
    tokens["_metadata"] = metadata
    return tokens


async def _client(rig: AuthRig, client_id: str, audiences: list[str]) -> None:
    await asyncio.to_thread(
        _created,
        rig,
        "/admin/v1/clients",
        {
            "client_id": client_id,
            "method": "none",
            "redirect_uris": [REDIRECT],
            "audiences": audiences,
        },
    )


def _totp_secret(doc: dict[str, Any]) -> bytes:
    b32 = parse_qs(urlsplit(doc["totp_uri"]).query)["secret"][0]
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


# -- the listener --------------------------------------------------------------------------
async def test_a_client_without_an_svid_gets_the_public_subset_only(rig: AuthRig) -> None:
    ca = _edge_ca(rig)

    def probe() -> dict[str, int]:
        with requests.Session() as s:
            s.trust_env = False
            s.verify = ca
            return {
                path: s.request(method, rig.public_url + path, timeout=30).status_code
                for method, path in (
                    ("GET", "/.well-known/openid-configuration"),
                    ("GET", "/.well-known/oauth-authorization-server"),
                    ("GET", "/jwks.json"),
                    ("GET", "/healthz"),
                    ("POST", "/oauth2/introspect"),
                    ("GET", "/v1/revocations"),
                )
            }

    codes = await asyncio.to_thread(probe)
    assert codes == {
        "/.well-known/openid-configuration": 200,
        "/.well-known/oauth-authorization-server": 200,
        "/jwks.json": 200,
        "/healthz": 200,
        "/oauth2/introspect": 404,  # workloads only: mTLS
        "/v1/revocations": 404,
    }


async def test_the_public_certificate_is_a_web_certificate_from_the_edge_ca(
    rig: AuthRig,
) -> None:
    host, port = urlsplit(rig.public_url).hostname, urlsplit(rig.public_url).port
    assert host is not None
    assert port is not None
    context = ssl.create_default_context(cafile=_edge_ca(rig))  # hostname checked too
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    cert = x509.load_der_x509_certificate(der)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert not sans.get_values_for_type(x509.UniformResourceIdentifier)  # not an SVID
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]


async def test_the_edge_ca_is_kept_and_a_new_leaf_issued_each_start(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with make_rig(identity, short_tmp) as first:
        ca_pem = Path(_edge_ca(first)).read_bytes()
        leaf1 = await _leaf(first)
    async with make_rig(identity, short_tmp) as second:
        assert Path(_edge_ca(second)).read_bytes() == ca_pem
        leaf2 = await _leaf(second)
    assert leaf1.serial_number != leaf2.serial_number
    key_file = Path(_edge_ca(second)).with_name("ca.key.sealed")
    assert crypto.is_sealed(key_file.read_bytes())
    assert key_file.stat().st_mode & 0o077 == 0


async def _leaf(rig: AuthRig) -> x509.Certificate:
    url = urlsplit(rig.public_url)
    assert url.hostname is not None
    context = ssl.create_default_context(cafile=_edge_ca(rig))
    _, writer = await asyncio.open_connection(url.hostname, url.port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


# -- the user flow -------------------------------------------------------------------------
async def test_code_flow_over_the_public_listener_gives_unbound_tokens(rig: AuthRig) -> None:
    ca = _edge_ca(rig)
    alice = await asyncio.to_thread(
        _created, rig, "/admin/v1/users", {"username": "alice", "password": PASSWORD}
    )
    await _client(rig, "shop-web", ["orders"])
    tokens = await asyncio.to_thread(_code_flow, rig, ca, "shop-web", "alice")
    metadata = tokens["_metadata"]
    assert metadata["issuer"] == rig.public_url
    jwks = jwt.PyJWKClient(metadata["jwks_uri"], ssl_context=ssl.create_default_context(cafile=ca))
    id_token = tokens["id_token"]
    key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, id_token)
    claims = jwt.decode(
        id_token, key.key, algorithms=["ES256"], audience="shop-web", issuer=rig.public_url
    )
    assert claims["sub"] == alice["user_id"]
    assert claims["nonce"] == tokens["_nonce"]
    access = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert "cnf" not in access  # no certificate to bind to
    assert access["amr"] == ["pwd"]
    # userinfo takes the unbound token over the public listener
    info = await asyncio.to_thread(
        requests.get,
        metadata["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        verify=ca,
        timeout=30,
    )
    assert info.status_code == 200, info.text
    assert info.json()["preferred_username"] == "alice"
    # ... and a service refuses it: services take only certificate-bound tokens
    keys = JWKSCache(lambda: _jwks(rig))
    await keys.refresh()
    verifier = TokenVerifier(
        issuers={rig.issuer}, audience=ORDERS, jwks=keys, revoked=RevocationList()
    )
    with pytest.raises(InvalidTokenError):
        await verifier.verify(tokens["access_token"], peer_thumbprint=None)


async def _jwks(rig: AuthRig) -> tuple[bytes, float | None]:
    return rig.auth.service.ring.jwks, None


# -- admin users ---------------------------------------------------------------------------
async def test_admin_users_act_with_mfa_and_are_refused_without(rig: AuthRig) -> None:
    ca = _edge_ca(rig)
    bob = await asyncio.to_thread(
        _created,
        rig,
        "/admin/v1/users",
        {"username": "bob", "password": PASSWORD, "roles": ["admin"]},
    )
    await asyncio.to_thread(
        _created, rig, "/admin/v1/users", {"username": "carol", "password": PASSWORD}
    )
    await _client(rig, "admin-console", [AUTH])
    secret = _totp_secret(bob)
    admin = await asyncio.to_thread(
        _code_flow,
        rig,
        ca,
        "admin-console",
        "bob",
        crypto.totp_code(secret, time.time()),
    )
    assert "otp" in jwt.decode(admin["access_token"], options={"verify_signature": False})["amr"]

    def call(token: str, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(
            method,
            rig.public_url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            verify=ca,
            timeout=30,
        )

    made = await asyncio.to_thread(
        call, admin["access_token"], "POST", "/admin/v1/users", {"username": "dave"}
    )
    assert made.status_code == 201, made.text
    created = [e for e in rig.sink.events if e.reason == Activity.USER_CREATED]
    assert created[-1].attributes["by"] == "user:bob"
    listed = await asyncio.to_thread(call, admin["access_token"], "GET", "/admin/v1/users")
    assert listed.status_code == 200
    assert "dave" in {u["username"] for u in listed.json()}

    # a user who is no admin: 403 and an event
    carol = await asyncio.to_thread(_code_flow, rig, ca, "admin-console", "carol")
    before = len([e for e in rig.sink.events if e.reason == Reason.ADMIN_DENIED])
    refused = await asyncio.to_thread(
        call, carol["access_token"], "POST", "/admin/v1/users", {"username": "eve"}
    )
    assert refused.status_code == 403
    denied = [e for e in rig.sink.events if e.reason == Reason.ADMIN_DENIED]
    assert len(denied) == before + 1
    assert denied[-1].sub == carol_sub(carol)

    # the admin's refreshed token carries no amr: admin actions need a fresh MFA login
    refreshed = await asyncio.to_thread(_refresh, rig, ca, "admin-console", admin["refresh_token"])
    no_mfa = await asyncio.to_thread(
        call, refreshed["access_token"], "POST", "/admin/v1/users", {"username": "eve"}
    )
    assert no_mfa.status_code == 403
    assert no_mfa.json()["error"] == "mfa_required"
    # a token for another audience, a garbage token, no token: refused, nothing changed
    assert (await asyncio.to_thread(call, "garbage", "GET", "/admin/v1/users")).status_code == 401
    no_token = await asyncio.to_thread(
        lambda: requests.get(rig.public_url + "/admin/v1/users", verify=ca, timeout=30)
    )
    assert no_token.status_code == 403
    names = {
        u["username"]
        for u in (await asyncio.to_thread(_admin, rig, "GET", "/admin/v1/users")).json()
    }
    assert "eve" not in names
    # locking the admin takes effect at once: their tokens are revoked
    assert (
        await asyncio.to_thread(_admin, rig, "POST", "/admin/v1/users/bob/lock")
    ).status_code == 200
    after_lock = await asyncio.to_thread(call, admin["access_token"], "GET", "/admin/v1/users")
    assert after_lock.status_code == 401
    assert after_lock.json()["message"] == "the token is revoked"


def carol_sub(tokens: dict[str, Any]) -> str:
    return str(jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"])


def _refresh(rig: AuthRig, ca: str, client_id: str, refresh_token: str) -> dict[str, Any]:
    r = requests.post(
        rig.public_url + "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
        verify=ca,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


# -- configuration -------------------------------------------------------------------------
def test_outside_dev_mode_the_public_listener_needs_a_certificate() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("trust_domain: x.example\nauth: {public_listener: true}\n", source="t.yaml")
    assert "auth.public_tls_cert" in str(caught.value.problems)
    with pytest.raises(ConfigError) as caught:
        parse_config("trust_domain: x.example\nauth: {public_tls_cert: c.pem}\n", source="t.yaml")
    assert "public_tls_key" in str(caught.value.problems)
    # off by default outside dev mode; on with a certificate
    assert not parse_config("trust_domain: x.example\n", source="t.yaml").auth_public_listener
    assert parse_config(
        "trust_domain: x.example\nauth: {public_tls_cert: c.pem, public_tls_key: k.pem}\n",
        source="t.yaml",
    ).auth_public_listener


async def test_the_login_form_may_end_only_at_the_clients_registered_origin(
    rig: AuthRig,
) -> None:
    """Browsers apply CSP form-action to the redirects after a form is sent: the login
    page allows its own origin and the registered redirect URI's, nothing else."""
    ca = _edge_ca(rig)
    await _client(rig, "shop-web", ["orders"])

    def csp(redirect_uri: str) -> str:
        nxt = "/oauth2/authorize?" + urlencode(
            {"client_id": "shop-web", "redirect_uri": redirect_uri, "response_type": "code"}
        )
        browser = _browser(rig, ca)
        with browser.session:
            page = browser.get("/login?" + urlencode({"next": nxt}))
        assert page.status_code == 200
        return str(page.headers["Content-Security-Policy"])

    assert "form-action 'self' https://shop.example;" in await asyncio.to_thread(csp, REDIRECT)
    for evil in ("https://evil.example/cb", "https://shop.example.evil.example/cb"):
        assert "form-action 'self';" in await asyncio.to_thread(csp, evil)


async def test_twenty_concurrent_refreshes_over_http_have_one_winner(rig: AuthRig) -> None:
    """20 clients replay one refresh token at once over HTTP: exactly one gets tokens;
    the replays revoke the family, so even the winner's new refresh token is dead."""
    ca = _edge_ca(rig)
    await asyncio.to_thread(
        _created, rig, "/admin/v1/users", {"username": "alice", "password": PASSWORD}
    )
    await _client(rig, "shop-web", ["orders"])
    tokens = await asyncio.to_thread(_code_flow, rig, ca, "shop-web", "alice")
    barrier = threading.Barrier(20)

    def refresh(_: int) -> requests.Response:
        with requests.Session() as s:
            s.trust_env = False
            s.verify = ca
            s.get(rig.public_url + "/healthz", timeout=30)  # connect before the race
            barrier.wait(timeout=30)
            return s.post(
                rig.public_url + "/oauth2/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                    "client_id": "shop-web",
                },
                timeout=60,
            )

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = await asyncio.to_thread(lambda: list(pool.map(refresh, range(20))))
    winners = [a for a in answers if a.status_code == 200]
    assert len(winners) == 1, [a.status_code for a in answers]
    assert all(
        a.status_code == 400 and a.json()["error"] == "invalid_grant"
        for a in answers
        if a is not winners[0]
    )
    again = await asyncio.to_thread(
        lambda: requests.post(
            rig.public_url + "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": winners[0].json()["refresh_token"],
                "client_id": "shop-web",
            },
            verify=ca,
            timeout=30,
        )
    )
    assert again.status_code == 400
    assert any(e.reason is Activity.TOKEN_REVOKED for e in rig.sink.events)


async def test_a_family_started_over_mtls_is_not_refreshed_without_it(rig: AuthRig) -> None:
    """Tokens issued over mTLS are certificate-bound; their refresh token must not mint
    unbound ones on the public listener (and a try there does not spend it)."""
    ca = _edge_ca(rig)
    await asyncio.to_thread(
        _created, rig, "/admin/v1/users", {"username": "alice", "password": PASSWORD}
    )
    await _client(rig, "shop-web", ["orders"])

    def over_mtls() -> dict[str, Any]:
        with rig.orders.mount(requests.Session()) as s:
            return code_flow(s, rig.url, "shop-web", REDIRECT, "alice", PASSWORD)

    tokens = await asyncio.to_thread(over_mtls)
    assert "cnf" in jwt.decode(tokens["access_token"], options={"verify_signature": False})
    form = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": "shop-web",
    }
    public = await asyncio.to_thread(
        lambda: requests.post(rig.public_url + "/oauth2/token", data=form, verify=ca, timeout=30)
    )
    assert public.status_code == 400
    assert public.json()["error"] == "invalid_grant"
    assert "mTLS" in public.json()["error_description"]

    def refresh_over_mtls() -> requests.Response:
        with rig.orders.mount(requests.Session()) as s:
            return s.post(rig.url + "/oauth2/token", data=form, timeout=30)

    ok = await asyncio.to_thread(refresh_over_mtls)
    assert ok.status_code == 200, ok.text
    assert "cnf" in jwt.decode(ok.json()["access_token"], options={"verify_signature": False})
