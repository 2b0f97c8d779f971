"""Tokens from another OpenID Provider: discovered, verified with its JWKS, one
rate-limited refetch for an unknown kid, and every classic forgery refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fake_oidc import FakeIssuer, fake_issuer

from trustmesh.config.gateway import ExternalIssuer
from trustmesh.crypto import verifying_keys
from trustmesh.errors import InvalidTokenError, UnavailableError
from trustmesh.gateway.oidc import ExternalVerifier, http_fetcher
from trustmesh.reasons import Reason


@pytest.fixture
async def idp(short_tmp: Path) -> AsyncIterator[FakeIssuer]:
    async with fake_issuer(short_tmp / "idp") as issuer:
        yield issuer


@pytest.fixture
async def verifier(idp: FakeIssuer) -> AsyncIterator[ExternalVerifier]:
    spec = ExternalIssuer(
        issuer=idp.url,
        audience="shop-api",
        algorithms=["RS256"],
        ca_file=str(idp.ca_file),
        roles_claim="realm_access.roles",
    )
    fetch, close = http_fetcher(idp.ca_file)
    made = ExternalVerifier(spec, fetch, declared_roles=("admin", "customer", "support"))
    await made.discover()
    try:
        yield made
    finally:
        await close()


async def _refused(verifier: ExternalVerifier, token: str) -> str:
    with pytest.raises(InvalidTokenError) as caught:
        await verifier.verify(token)
    return str(caught.value.reason)


async def test_a_token_of_the_issuer_is_accepted(
    idp: FakeIssuer, verifier: ExternalVerifier
) -> None:
    claims = await verifier.verify(idp.token())
    assert claims["sub"] == f"{idp.url}#kc-user-1"  # never a local user, nor another issuer's
    assert claims["idp"] == idp.url
    assert claims["roles"] == ["customer"]  # from realm_access.roles
    assert claims["client_id"] == f"{idp.url}#shop-spa"  # azp, never a local client
    assert claims["preferred_username"] == f"{idp.url}#kim"


async def test_only_what_the_declaration_vouches_for_is_kept(
    idp: FakeIssuer, verifier: ExternalVerifier
) -> None:
    """A name is namespaced; a login time, second factor, groups, scopes, a delegation
    chain, a confirmation key and custom claims are the issuer's word, and dropped."""
    now = int(time.time())
    claims = await verifier.verify(
        idp.token(
            preferred_username="alice",
            email="alice@shop.example",
            client_id="storefront",
            auth_time=now,
            amr=["pwd", "otp"],
            groups=["staff"],
            scope="openid orders:refund",
            act={"sub": "spiffe://shop.example/payments"},
            cnf={"x5t#S256": "abc"},
            tenant="shop",
            jti="kc-jti-1",
        )
    )
    assert claims == {
        "iss": idp.url,
        "idp": idp.url,
        "sub": f"{idp.url}#kc-user-1",
        "client_id": f"{idp.url}#storefront",
        "preferred_username": f"{idp.url}#alice",
        "email": f"{idp.url}#alice@shop.example",
        "roles": ["customer"],
        "groups": [],
        "exp": claims["exp"],
        "iat": claims["iat"],
        "jti": "kc-jti-1",
    }
    principal = verifier.principal(claims)
    assert (principal.type, principal.issuer, principal.name) == (
        "Client",  # preferred_username and auth_time do not make a user
        idp.url,
        f"{idp.url}#alice",
    )
    assert (principal.mfa, principal.amr, principal.groups, principal.scopes) == (
        False,
        (),
        (),
        (),
    )


async def test_an_issuer_trusted_further_by_its_declaration(idp: FakeIssuer) -> None:
    spec = ExternalIssuer(
        issuer=idp.url,
        audience="shop-api",
        algorithms=["RS256"],
        roles_claim="realm_access.roles",
        principal="user",
        trust_amr=True,
        groups_claim="org.groups",
        groups=["staff"],
        scopes=["orders:read"],
    )
    fetch, close = http_fetcher(idp.ca_file)
    try:
        made = ExternalVerifier(spec, fetch, declared_roles=("admin", "customer"))
        await made.discover()
        claims = await made.verify(
            idp.token(
                amr=["pwd", "otp", 3],
                org={"groups": ["staff", "admins"]},
                groups=["ignored: not the declared claim"],
                scope="openid orders:read orders:refund",
            )
        )
    finally:
        await close()
    assert claims["groups"] == ["staff"]
    assert claims["amr"] == ["otp", "pwd"]
    assert claims["scope"] == "orders:read"
    principal = made.principal(claims)
    assert (principal.type, principal.mfa, principal.groups, principal.scopes) == (
        "User",
        True,
        ("staff",),
        ("orders:read",),
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_forgeries_are_refused(idp: FakeIssuer, verifier: ExternalVerifier) -> None:
    kid = next(iter(idp.keys))
    assert await _refused(verifier, idp.token(aud="another-api")) == Reason.TOKEN_WRONG_AUDIENCE
    old = int(time.time()) - 3600
    assert await _refused(verifier, idp.token(iat=old, exp=old + 60)) == Reason.TOKEN_EXPIRED
    assert await _refused(verifier, idp.token(sub=None)) == Reason.TOKEN_MALFORMED
    # signed by another key under the issuer's kid
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        jwt.decode(idp.token(), options={"verify_signature": False}),
        stranger,
        algorithm="RS256",
        headers={"kid": kid},
    )
    assert await _refused(verifier, forged) == Reason.TOKEN_BAD_SIGNATURE
    # alg none, and HS256 keyed with the issuer's public key (algorithm confusion)
    payload = _b64(
        json.dumps(jwt.decode(idp.token(), options={"verify_signature": False})).encode()
    )
    none = _b64(json.dumps({"alg": "none", "kid": kid}).encode()) + "." + payload + "."
    assert await _refused(verifier, none) == Reason.TOKEN_MALFORMED
    public_pem = (
        idp.keys[kid]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode()) + "." + payload
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert await _refused(verifier, signing_input + "." + _b64(mac)) == Reason.TOKEN_MALFORMED
    # a header pointing at a key of the attacker's choosing
    with_jku = jwt.encode(
        jwt.decode(idp.token(), options={"verify_signature": False}),
        idp.keys[kid],
        algorithm="RS256",
        headers={"kid": kid, "jku": "https://evil.example/jwks"},
    )
    assert await _refused(verifier, with_jku) == Reason.TOKEN_MALFORMED
    # another issuer's name in a token signed with this issuer's key
    assert (
        await _refused(verifier, idp.token(iss="https://evil.example")) == Reason.TOKEN_WRONG_ISSUER
    )


async def test_roles_are_only_those_the_issuer_may_grant(
    idp: FakeIssuer, verifier: ExternalVerifier
) -> None:
    claims = await verifier.verify(
        idp.token(realm_access={"roles": ["admin", "customer", "offline_access", 7]})
    )
    assert claims["roles"] == ["customer"]  # admin only when the issuer's roles list it


async def test_id_tokens_are_not_access_tokens(idp: FakeIssuer, verifier: ExternalVerifier) -> None:
    for extra in ({"nonce": "n-1"}, {"at_hash": "x"}, {"c_hash": "y"}, {"typ": "ID"}):
        assert await _refused(verifier, idp.token(**extra)) == Reason.TOKEN_MALFORMED
    kid = next(iter(idp.keys))
    typed = jwt.encode(
        jwt.decode(idp.token(), options={"verify_signature": False}),
        idp.keys[kid],
        algorithm="RS256",
        headers={"kid": kid, "typ": "logout+jwt"},
    )
    assert await _refused(verifier, typed) == Reason.TOKEN_MALFORMED


async def test_an_unknown_kid_is_refetched_once(
    idp: FakeIssuer, verifier: ExternalVerifier
) -> None:
    fetched = idp.jwks_fetches
    rotated = idp.new_key()  # the issuer rotates: a token under the new key arrives
    claims = await verifier.verify(idp.token(rotated))
    assert claims["sub"].endswith("#kc-user-1")
    assert idp.jwks_fetches == fetched + 1
    # a flood of unknown kids costs at most one more fetch per interval
    for i in range(20):
        stranger = idp.token(rotated).split(".")
        header = _b64(json.dumps({"alg": "RS256", "kid": f"nope{i}", "typ": "JWT"}).encode())
        assert (
            await _refused(verifier, ".".join([header, *stranger[1:]])) == Reason.TOKEN_UNKNOWN_KEY
        )
    assert idp.jwks_fetches <= fetched + 2


def test_only_keys_for_the_configured_algorithms_are_loaded() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r"},
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(small.public_key())), "kid": "s"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "e"},
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key)), "kid": "private"},
            {
                **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
                "kid": "enc",
                "use": "enc",
            },
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        ]
    }
    document = json.dumps(jwks).encode()
    assert set(verifying_keys(document, ["RS256"])) == {"r"}
    assert set(verifying_keys(document, ["RS256", "ES256"])) == {"r", "e"}
    assert verifying_keys(b"not json", ["RS256"]) == {}


async def test_discovery_must_name_the_configured_issuer(idp: FakeIssuer) -> None:
    idp.issuer_override = "https://impostor.example/realms/shop"
    spec = ExternalIssuer(issuer=idp.url, audience="shop-api", ca_file=str(idp.ca_file))
    fetch, close = http_fetcher(idp.ca_file)
    try:
        made = ExternalVerifier(spec, fetch)
        with pytest.raises(UnavailableError, match="names another issuer"):
            await made.discover()
        with pytest.raises(UnavailableError):  # its tokens: unavailable, never trusted
            await made.verify(idp.token())
    finally:
        await close()


async def test_an_issuer_behind_an_untrusted_certificate_is_never_used(idp: FakeIssuer) -> None:
    spec = ExternalIssuer(issuer=idp.url, audience="shop-api")  # the system's trust store
    fetch, close = http_fetcher(None)
    try:
        with pytest.raises(UnavailableError):
            await ExternalVerifier(spec, fetch).discover()
    finally:
        await close()
