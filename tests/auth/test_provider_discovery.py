"""Discovery advertises exactly what works (issue 13: it advertised client_secret_post,
which cannot be registered, and left out none, which public clients use). Every method
an endpoint advertises is registered and authenticates there, a method it does not
advertise cannot be registered; the claims and scopes it lists cover what a real ID
token and userinfo carry; and Authlib's own OpenID Connect client drives discovery →
code + PKCE as a public client, the way an outside relying party does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from authlib.integrations.base_client import BaseApp, OAuth2Mixin, OpenIDMixin
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from authrig import CONFIG, TD, AuthRig, FormLogin, Workload, code_flow, identity_for, workload
from joserfc.jwk import ECKey

from trustmesh import crypto
from trustmesh.testing import RunningIdentityServer

REPORTING = f"spiffe://{TD}/reporting"  # a workload registered as a tls_client_auth client
REDIRECT = "https://shop.example/cb"
PASSWORD = "alice's long passphrase"
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: methods of RFC 7591 / OIDC Registration the provider does not implement
NOT_IMPLEMENTED = ("client_secret_post", "client_secret_jwt", "self_signed_tls_client_auth")


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(short_tmp, CONFIG, extra_ids=(REPORTING,))


@pytest.fixture
async def reporting(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Workload]:
    made = await workload(identity, REPORTING, short_tmp / "reporting")
    yield made
    await made.source.close()


def _public(rig: AuthRig) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(crypto.edge_ca_path(rig.state))
    return session


def _metadata(rig: AuthRig) -> dict[str, Any]:
    with _public(rig) as s:
        r = s.get(rig.public_url + "/.well-known/openid-configuration", timeout=30)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _admin(rig: AuthRig, method: str, path: str, body: Any = None) -> requests.Response:
    with rig.operator.mount(requests.Session()) as s:
        return s.request(method, rig.url + path, json=body, timeout=30)


@dataclass
class Registered:
    """A client registered with one method, and how it presents that method — only it."""

    client_id: str
    method: str
    ca: str  # the public listener's (dev edge) CA
    seat: Workload | None = None  # whose certificate it connects with (mTLS), if any
    secret: str | None = None
    key: ECKey | None = None

    def post(self, url: str, form: dict[str, str]) -> requests.Response:
        session = self.seat.mount(requests.Session()) if self.seat else requests.Session()
        if self.seat is None:
            session.trust_env = False
            session.verify = self.ca
        data, auth = dict(form), None
        if self.method in ("tls_client_auth", "none"):
            data["client_id"] = self.client_id
        elif self.method == "client_secret_basic":
            auth = (self.client_id, self.secret or "")
        elif self.method == "private_key_jwt":
            assert self.key is not None
            data["client_assertion_type"] = ASSERTION
            data["client_assertion"] = private_key_jwt_sign(
                self.key, self.client_id, url, alg="ES256"
            )
        with session:
            return session.post(url, data=data, auth=auth, timeout=30)


def _register(
    rig: AuthRig, method: str, reporting: Workload, **extra: Any
) -> tuple[Registered, dict[str, Any]]:
    client_id = f"via-{method.replace('_', '-')}"
    body: dict[str, Any] = {"client_id": client_id, "method": method, "audiences": ["payments"]}
    client = Registered(client_id, method, str(crypto.edge_ca_path(rig.state)))
    if method == "tls_client_auth":
        body["spiffe_id"] = REPORTING
        client.seat = reporting
    elif method == "private_key_jwt":
        client.key = ECKey.generate_key("P-256", private=True)
        body["jwks"] = {"keys": [client.key.as_dict(private=False)]}
    elif method == "none":
        body["redirect_uris"] = [REDIRECT]
    made = _admin(rig, "POST", "/admin/v1/clients", {**body, **extra})
    assert made.status_code == 201, made.text
    client.secret = made.json().get("client_secret")
    return client, made.json()


def _token(rig: AuthRig, client: Registered, meta: dict[str, Any]) -> dict[str, Any]:
    """A token for ``client``, authenticated at the token endpoint the registered way:
    client credentials for a confidential client, code + PKCE for a public one."""
    if client.method == "none":
        with _public(rig) as browser:
            return code_flow(browser, rig.public_url, client.client_id, REDIRECT, "alice", PASSWORD)
    url = meta["token_endpoint"]
    if client.seat is not None:  # RFC 8705 §5: certificate clients use the mTLS alias
        url = meta["mtls_endpoint_aliases"]["token_endpoint"]
    r = client.post(url, {"grant_type": "client_credentials"})
    assert r.status_code == 200, (client.method, r.text)
    token: dict[str, Any] = r.json()
    return token


def _endpoint(meta: dict[str, Any], name: str, client: Registered) -> str:
    if client.seat is not None:
        return str(meta["mtls_endpoint_aliases"][name])
    return str(meta[name])


async def test_every_advertised_method_registers_and_authenticates(
    rig: AuthRig, reporting: Workload
) -> None:
    meta = await asyncio.to_thread(_metadata, rig)
    made = await asyncio.to_thread(
        _admin, rig, "POST", "/admin/v1/users", {"username": "alice", "password": PASSWORD}
    )
    assert made.status_code == 201, made.text
    token_methods = meta["token_endpoint_auth_methods_supported"]
    assert "none" in token_methods  # public clients: code + PKCE
    registered = {}
    for method in token_methods:
        client, _ = await asyncio.to_thread(_register, rig, method, reporting)
        token = await asyncio.to_thread(_token, rig, client, meta)
        claims = jwt.decode(token["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == client.client_id
        registered[method] = (client, token)
    for name in ("introspection_endpoint", "revocation_endpoint"):
        methods = meta[f"{name.removesuffix('_endpoint')}_endpoint_auth_methods_supported"]
        assert set(methods) <= set(registered), (name, methods)
        for method in methods:
            client, token = registered[method]
            url = _endpoint(meta, name, client)
            if client.seat is None and name == "introspection_endpoint":
                client.seat = rig.inventory  # introspection is for workloads: mTLS only
            r = await asyncio.to_thread(client.post, url, {"token": token["access_token"]})
            assert r.status_code == 200, (name, method, r.text)
            if name == "introspection_endpoint":
                assert r.json()["active"] is True, method
    # a method the registration does not hold is refused: only the registered one works
    client, _ = registered["client_secret_basic"]
    posted = await asyncio.to_thread(
        Registered(client.client_id, "tls_client_auth", client.ca).post,  # id in the form
        meta["token_endpoint"],
        {"grant_type": "client_credentials", "client_secret": client.secret or ""},
    )
    assert posted.status_code == 401
    assert posted.json()["error"] == "invalid_client"


async def test_an_unadvertised_method_cannot_be_registered(
    rig: AuthRig, reporting: Workload
) -> None:
    meta = await asyncio.to_thread(_metadata, rig)
    advertised = {
        m
        for name in ("token", "introspection", "revocation")
        for m in meta[f"{name}_endpoint_auth_methods_supported"]
    }
    before = (await asyncio.to_thread(_admin, rig, "GET", "/admin/v1/clients")).json()
    for method in (*NOT_IMPLEMENTED, "magic"):
        assert method not in advertised
        body = {"client_id": "odd", "method": method, "audiences": ["payments"]}
        refused = await asyncio.to_thread(_admin, rig, "POST", "/admin/v1/clients", body)
        assert refused.status_code == 400, (method, refused.text)
        assert method in refused.json()["message"]
    after = (await asyncio.to_thread(_admin, rig, "GET", "/admin/v1/clients")).json()
    assert after == before


class RelyingParty(OAuth2Mixin, OpenIDMixin, BaseApp):  # type: ignore[misc]
    """Authlib's OpenID Connect client as its Flask and Django integrations build it,
    without a web framework: everything it knows of the provider comes from discovery."""

    client_cls = OAuth2Session


def _sign_in_with_authlib(rig: AuthRig, scopes: list[str]) -> dict[str, Any]:
    rp = RelyingParty(
        None,
        "trustmesh",
        client_id="shop-web",
        server_metadata_url=rig.public_url + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": " ".join(scopes),
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": "none",
        },
    )
    started = rp.create_authorization_url(REDIRECT)
    browser = FormLogin(_public(rig), rig.public_url)
    with browser.session:
        logged_in = browser.login(started["url"], "alice", PASSWORD)
        assert logged_in.status_code == 303, logged_in.text
        back = browser.get(logged_in.headers["Location"])
    assert back.status_code == 303, back.text
    callback = parse_qs(urlsplit(back.headers["Location"]).query)
    assert callback["state"] == [started["state"]]
    token = rp.fetch_access_token(
        REDIRECT, code=callback["code"][0], code_verifier=started["code_verifier"]
    )
    # signature (keys from jwks_uri), iss, aud, exp, nonce and at_hash, checked by Authlib
    id_token = rp.parse_id_token(token, nonce=started["nonce"])
    return {"id_token": dict(id_token), "userinfo": dict(rp.userinfo(token=token))}


async def test_authlib_signs_in_through_discovery_and_the_claims_are_advertised(
    rig: AuthRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = await asyncio.to_thread(_metadata, rig)
    assert meta["scopes_supported"] == ["openid"]
    alice = await asyncio.to_thread(
        _admin, rig, "POST", "/admin/v1/users", {"username": "alice", "password": PASSWORD}
    )
    client = {
        "client_id": "shop-web",
        "method": "none",
        "redirect_uris": [REDIRECT],
        "audiences": ["orders"],
    }
    assert (await asyncio.to_thread(_admin, rig, "POST", "/admin/v1/clients", client)).ok
    # how an outside user trusts a private CA with requests
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(crypto.edge_ca_path(rig.state)))
    seen = await asyncio.to_thread(_sign_in_with_authlib, rig, meta["scopes_supported"])
    assert seen["userinfo"] == {"sub": alice.json()["user_id"], "preferred_username": "alice"}
    assert seen["id_token"]["sub"] == alice.json()["user_id"]
    assert seen["id_token"]["preferred_username"] == "alice"
    claims = set(seen["id_token"]) | set(seen["userinfo"])
    assert claims <= set(meta["claims_supported"]), claims - set(meta["claims_supported"])
