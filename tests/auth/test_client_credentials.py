"""Client credentials over mTLS (RFC 8705), with real clients: Authlib's OAuth 2 client
fetches the token, PyJWT's PyJWKClient verifies it from our JWKS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.auth import encode_none
from authrig import INVENTORY, ORDERS, PAYMENTS, AuthRig, Workload

from trustmesh import events
from trustmesh.reasons import Reason


def _session(workload: Workload, client_id: str) -> OAuth2Session:
    session = OAuth2Session(client_id=client_id, token_endpoint_auth_method="tls_client_auth")
    session.register_client_auth_method(("tls_client_auth", encode_none))
    workload.mount(session)
    return session


def _fetch(rig: AuthRig, workload: Workload, client_id: str, **params: Any) -> dict[str, Any]:
    with _session(workload, client_id) as session:
        token: dict[str, Any] = session.fetch_token(
            rig.url + "/oauth2/token", grant_type="client_credentials", **params
        )
        return token


def _post(rig: AuthRig, workload: Workload, path: str, data: dict[str, str]) -> requests.Response:
    with workload.mount(requests.Session()) as s:
        return s.post(rig.url + path, data=data, timeout=10)


async def test_discovery_documents_name_every_endpoint(rig: AuthRig) -> None:
    def get(path: str) -> dict[str, Any]:
        with rig.orders.mount(requests.Session()) as s:
            r = s.get(rig.url + path, timeout=10)
        assert r.status_code == 200
        doc: dict[str, Any] = r.json()
        return doc

    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        doc = await asyncio.to_thread(get, path)
        # the public listener is the issuer; workloads use the mTLS aliases (RFC 8705 §5)
        assert doc["issuer"] == rig.public_url
        assert doc["token_endpoint"] == rig.public_url + "/oauth2/token"
        assert doc["jwks_uri"] == rig.public_url + "/jwks.json"
        assert doc["introspection_endpoint"] == rig.url + "/oauth2/introspect"
        assert doc["revocation_endpoint"] == rig.public_url + "/oauth2/revoke"
        assert doc["mtls_endpoint_aliases"] == {
            "token_endpoint": rig.url + "/oauth2/token",
            "revocation_endpoint": rig.url + "/oauth2/revoke",
            "introspection_endpoint": rig.url + "/oauth2/introspect",
            "userinfo_endpoint": rig.url + "/oauth2/userinfo",
        }
        assert "tls_client_auth" in doc["token_endpoint_auth_methods_supported"]
        assert doc["tls_client_certificate_bound_access_tokens"] is True
    jwks = await asyncio.to_thread(get, "/jwks.json")
    (key,) = jwks["keys"]
    assert key["kty"] == "EC"
    assert key["alg"] == "ES256"
    assert "d" not in key


async def test_authlib_client_gets_a_certificate_bound_token_pyjwt_verifies(
    rig: AuthRig,
) -> None:
    token = await asyncio.to_thread(_fetch, rig, rig.orders, "orders", audience="payments")
    assert token["token_type"] == "Bearer"
    assert 0 < token["expires_in"] <= 900
    access = token["access_token"]
    header = jwt.get_unverified_header(access)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"

    jwks_client = jwt.PyJWKClient(rig.url + "/jwks.json", ssl_context=rig.orders.ssl_context())
    key = await asyncio.to_thread(jwks_client.get_signing_key_from_jwt, access)
    claims = jwt.decode(access, key.key, algorithms=["ES256"], audience=PAYMENTS, issuer=rig.issuer)
    assert claims["sub"] == ORDERS
    assert claims["client_id"] == "orders"
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "jti", "client_id", "cnf"}
    assert claims["exp"] - claims["iat"] == 900
    digest = hashlib.sha256(rig.orders.leaf_der).digest()
    assert claims["cnf"] == {"x5t#S256": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()}
    issued = [e for e in rig.sink.events if e.reason == Reason.TOKEN_ISSUED]
    assert issued[-1].jti == claims["jti"]
    assert access not in json.dumps([e.to_ocsf() for e in rig.sink.events])


async def test_audience_is_a_callee_the_declaration_allows(rig: AuthRig) -> None:
    # by SPIFFE ID (RFC 8707 resource) or by service name
    by_resource = await asyncio.to_thread(_fetch, rig, rig.orders, "orders", resource=INVENTORY)
    aud = jwt.decode(by_resource["access_token"], options={"verify_signature": False})["aud"]
    assert aud == INVENTORY
    # orders may call two services: it must say which
    response = await asyncio.to_thread(
        _post,
        rig,
        rig.orders,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "orders"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"
    # payments may call nobody: no token for orders
    response = await asyncio.to_thread(
        _post,
        rig,
        rig.payments,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "payments", "audience": "orders"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"
    assert "access_token" not in response.text


async def test_client_is_the_spiffe_id_of_its_certificate(rig: AuthRig) -> None:
    # the orders certificate cannot act as the payments client
    response = await asyncio.to_thread(
        _post,
        rig,
        rig.orders,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "payments", "audience": "orders"},
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    refused = [e for e in rig.sink.events if e.reason == Reason.CLIENT_AUTH_FAILED]
    assert refused
    assert refused[-1].peer_spiffe_id == ORDERS
    # an unknown client
    response = await asyncio.to_thread(
        _post,
        rig,
        rig.orders,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "nobody"},
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"grant_type": "password", "client_id": "orders"}, "unsupported_grant_type"),
        ({"client_id": "orders"}, "unsupported_grant_type"),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "orders",
                "audience": "payments",
                "scope": "admin",
            },
            "invalid_scope",
        ),
    ],
)
async def test_bad_token_requests_get_oauth_errors(
    rig: AuthRig, data: dict[str, str], error: str
) -> None:
    response = await asyncio.to_thread(_post, rig, rig.orders, "/oauth2/token", data)
    assert response.status_code in (400, 401)
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"
    refused = [e for e in rig.sink.events if e.reason is Reason.TOKEN_REFUSED]
    assert [(e.decision, e.peer_spiffe_id, e.message) for e in refused] == [
        (events.Decision.DENY, ORDERS, f"token request refused: {error}")
    ]


async def test_malformed_bodies_are_invalid_requests(rig: AuthRig) -> None:
    def post_raw(body: bytes, content_type: str) -> requests.Response:
        with rig.orders.mount(requests.Session()) as s:
            return s.post(
                rig.url + "/oauth2/token",
                data=body,
                headers={"Content-Type": content_type},
                timeout=10,
            )

    cases = [
        (b'{"grant_type": "client_credentials"}', "application/json"),
        (
            b"grant_type=client_credentials&grant_type=password&client_id=orders",
            "application/x-www-form-urlencoded",
        ),
        (b"\xff\xfe", "application/x-www-form-urlencoded"),
        (b"a=" + b"x" * (70 * 1024), "application/x-www-form-urlencoded"),
    ]
    for body, content_type in cases:
        response = await asyncio.to_thread(post_raw, body, content_type)
        assert response.status_code == 400, body[:40]
        assert response.json()["error"] == "invalid_request"


async def test_with_no_key_to_sign_a_token_request_gets_503_and_an_event(rig: AuthRig) -> None:
    """The active key's row is lost while the next key is only published: the provider
    issues nothing, answers 503 in its error shape (not a bare 500) and records why."""
    service = rig.auth.service
    first = service.ring.active
    assert first is not None
    await service.tick(rotate=True)  # the next key: published, not signing yet
    await service.store.remove_key(first.kid)
    await service.tick()
    assert service.ring.active is None
    answer = await asyncio.to_thread(
        _post,
        rig,
        rig.orders,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "orders", "audience": "payments"},
    )
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "unavailable"
    assert answer.headers["cache-control"] == "no-store"
    refused = [e for e in rig.sink.events if e.reason is Reason.SIGNING_KEY_UNAVAILABLE]
    assert [e.decision for e in refused] == [events.Decision.ERROR]
    assert not any(e.reason is Reason.TOKEN_ISSUED for e in rig.sink.events)
