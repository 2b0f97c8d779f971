"""The other client authentication methods: private_key_jwt (RFC 7523) with a real
Authlib client, and generated client secrets stored only as a hash."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from authrig import PAYMENTS, AuthRig, make_rig
from joserfc.jwk import ECKey, RSAKey

from trustmesh.auth.db import Client
from trustmesh.auth.service import hash_secret, new_secret
from trustmesh.testing import RunningIdentityServer


def _post(rig: AuthRig, data: dict[str, str], **kwargs: Any) -> requests.Response:
    with rig.inventory.mount(requests.Session()) as s:
        return s.post(rig.url + "/oauth2/token", data=data, timeout=10, **kwargs)


async def _assertion_client(rig: AuthRig, client_id: str, *keys: Any) -> None:
    """Register the private_key_jwt client ``client_id`` (for payments) with ``keys``."""
    await rig.auth.service.store.add_client(
        Client(
            client_id=client_id,
            auth_method="private_key_jwt",
            jwks={"keys": [key.as_dict(private=False) for key in keys]},
            audiences=(PAYMENTS,),
            scopes=("charges:read",),
            created_at=int(time.time()),
        )
    )


async def _batch_client(rig: AuthRig) -> ECKey:
    """The private_key_jwt client ``batch`` (for payments); its signing key."""
    key = ECKey.generate_key("P-256", parameters={"kid": "batch-1"}, private=True)
    await _assertion_client(rig, "batch", key)
    return key


def _assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


async def test_every_assertion_algorithm_and_an_unnamed_key(rig: AuthRig) -> None:
    """RS256, PS256, ES384 and ES256 assertions are checked by the one JWT recipe; a
    client that registered one key may leave ``kid`` out (RFC 7515 §4.1.4)."""
    endpoint = rig.url + "/oauth2/token"
    cases = [
        ("rsa-client", RSAKey.generate_key(2048, parameters={"kid": "r1"}, private=True), "RS256"),
        ("pss-client", RSAKey.generate_key(2048, parameters={"kid": "p1"}, private=True), "PS256"),
        (
            "p384-client",
            ECKey.generate_key("P-384", parameters={"kid": "e1"}, private=True),
            "ES384",
        ),
        ("unnamed-client", ECKey.generate_key("P-256", private=True), "ES256"),
    ]
    for client_id, key, alg in cases:
        await _assertion_client(rig, client_id, key)
        assertion = private_key_jwt_sign(key, client_id, endpoint, alg=alg)
        answer = await asyncio.to_thread(_post, rig, _assertion_form(assertion))
        assert answer.status_code == 200, (alg, answer.text)
        claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == client_id


async def test_assertion_forgeries_are_refused(rig: AuthRig) -> None:
    """What a forger tries against a client's registered keys: no algorithm, an HMAC keyed
    with the public key, an algorithm the key does not fit, a key of its own in the
    header, no kid where the client registered two keys."""
    endpoint = rig.url + "/oauth2/token"
    rsa_key = RSAKey.generate_key(2048, parameters={"kid": "r1"}, private=True)
    await _assertion_client(rig, "forged-rsa", rsa_key)
    two = [ECKey.generate_key("P-256", parameters={"kid": k}, private=True) for k in "ab"]
    await _assertion_client(rig, "two-keys", *two)
    now = int(time.time())

    def claims(client_id: str) -> dict[str, Any]:
        return {
            "iss": client_id,
            "sub": client_id,
            "aud": endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": f"{client_id}-{time.monotonic_ns()}",
        }

    public_pem = rsa_key.as_pem(private=False)
    forgeries = {
        "none": jwt.encode(claims("forged-rsa"), None, algorithm="none", headers={"kid": "r1"}),
        "hmac-with-public-key": _hs256(claims("forged-rsa"), public_pem, kid="r1"),
        "es256-header-over-rsa-key": private_key_jwt_sign(
            ECKey.generate_key("P-256", private=True),
            "forged-rsa",
            endpoint,
            alg="ES256",
            header={"kid": "r1"},
        ),
        "embedded-jwk": private_key_jwt_sign(
            rsa_key,
            "forged-rsa",
            endpoint,
            alg="RS256",
            header={"kid": "r1", "jwk": rsa_key.as_dict(private=False)},
        ),
        "no-kid-two-keys": private_key_jwt_sign(two[0], "two-keys", endpoint, alg="ES256"),
        "wrong-kid": private_key_jwt_sign(
            two[0], "two-keys", endpoint, alg="ES256", header={"kid": "b"}
        ),
    }
    for name, assertion in forgeries.items():
        answer = await asyncio.to_thread(_post, rig, _assertion_form(assertion))
        assert answer.status_code == 401, (name, answer.text)
        assert answer.json()["error"] == "invalid_client", name
    named = private_key_jwt_sign(two[1], "two-keys", endpoint, alg="ES256", header={"kid": "b"})
    assert (await asyncio.to_thread(_post, rig, _assertion_form(named))).status_code == 200


def _hs256(claims: dict[str, Any], secret: bytes, *, kid: str) -> str:
    """An HS256 JWS keyed with ``secret`` (PyJWT refuses a PEM as an HMAC key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


async def test_private_key_jwt_with_authlib_and_replay_refused(rig: AuthRig) -> None:
    key = await _batch_client(rig)
    endpoint = rig.url + "/oauth2/token"

    def fetch() -> dict[str, Any]:
        session = OAuth2Session(
            client_id="batch", client_secret=key, token_endpoint_auth_method="private_key_jwt"
        )
        session.register_client_auth_method(PrivateKeyJWT(endpoint, alg="ES256"))
        rig.inventory.mount(session)
        with session:
            token: dict[str, Any] = session.fetch_token(
                endpoint, grant_type="client_credentials", scope="charges:read"
            )
            return token

    token = await asyncio.to_thread(fetch)
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "batch"
    assert claims["sub"] == "batch"
    assert claims["aud"] == PAYMENTS
    assert claims["scope"] == "charges:read"
    assert "x5t#S256" in claims["cnf"]  # bound to the certificate it came over

    assertion = private_key_jwt_sign(key, "batch", endpoint, alg="ES256")
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    first = await asyncio.to_thread(_post, rig, form)
    assert first.status_code == 200, first.text
    replay = await asyncio.to_thread(_post, rig, form)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"
    # signed by a key the client never registered
    other = ECKey.generate_key("P-256", private=True)
    forged = {
        **form,
        "client_assertion": private_key_jwt_sign(other, "batch", endpoint, alg="ES256"),
    }
    assert (await asyncio.to_thread(_post, rig, forged)).status_code == 401
    # addressed to another server
    elsewhere = private_key_jwt_sign(key, "batch", "https://elsewhere.example/token", alg="ES256")
    wrong_aud = {**form, "client_assertion": elsewhere}
    assert (await asyncio.to_thread(_post, rig, wrong_aud)).status_code == 401


async def test_client_secret_basic_and_the_secret_is_stored_hashed(
    rig: AuthRig, short_tmp: Path
) -> None:
    secret = new_secret()
    await rig.auth.service.store.add_client(
        Client(
            client_id="reporting",
            auth_method="client_secret_basic",
            secret_hash=hash_secret(secret),
            audiences=(PAYMENTS,),
            created_at=int(time.time()),
        )
    )
    good = await asyncio.to_thread(
        _post, rig, {"grant_type": "client_credentials"}, auth=("reporting", secret)
    )
    assert good.status_code == 200, good.text
    bad = await asyncio.to_thread(
        _post, rig, {"grant_type": "client_credentials"}, auth=("reporting", secret + "x")
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"
    # a client that must use its certificate cannot switch to a (guessed) secret
    switched = await asyncio.to_thread(
        _post, rig, {"grant_type": "client_credentials"}, auth=("orders", "x")
    )
    assert switched.status_code == 401
    database = short_tmp / "state" / "auth" / "auth.db"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT * FROM auth_clients").fetchall()
    assert secret not in repr(rows)
    assert oct(database.stat().st_mode & 0o777) == "0o600"


async def test_an_assertion_is_judged_by_the_providers_clock(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """A provider whose clock runs two hours ahead finds a fresh assertion (exp one
    minute from the client's now) expired: its own clock decides, not the wall clock."""
    async with make_rig(identity, short_tmp, clock=lambda: time.time() + 7200) as rig:
        key = await _batch_client(rig)
        endpoint = rig.url + "/oauth2/token"
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": private_key_jwt_sign(key, "batch", endpoint, alg="ES256"),
        }
        late = await asyncio.to_thread(_post, rig, form)
        assert late.status_code == 401, late.text
        assert late.json()["error"] == "invalid_client"
        now = int(rig.auth.service.clock())
        on_time = private_key_jwt_sign(
            key, "batch", endpoint, alg="ES256", claims={"iat": now, "exp": now + 60}
        )
        answer = await asyncio.to_thread(_post, rig, {**form, "client_assertion": on_time})
        assert answer.status_code == 200, answer.text
