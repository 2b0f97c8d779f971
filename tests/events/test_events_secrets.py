"""Never a token, password or secret value inside an event: each is sent and refused."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from trustmesh.errors import UsageError
from trustmesh.events import Endpoint, Event, EventClass

Make = Callable[..., Event]

STRING_FIELDS = [
    "activity_name",
    "component",
    "message",
    "spiffe_id",
    "peer_spiffe_id",
    "sub",
    "client_id",
    "jti",
    "trace_id",
]


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def pem_private_key(ec_key: ec.EllipticCurvePrivateKey) -> str:
    return ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def tokens(ec_key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    claims = {"sub": "alice", "aud": "orders", "jti": "abc", "scope": "orders:read"}
    return {
        "hs256": jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256"),
        "es256": jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "k1"}),
        "none": jwt.encode(claims, None, algorithm="none"),
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _assert_refused_without_echo(make: Make, secret: str, **kwargs: object) -> UsageError:
    with pytest.raises(UsageError) as info:
        make(**kwargs)
    exc = info.value
    assert secret not in str(exc)
    assert secret not in exc.detail
    assert exc.__cause__ is None
    assert exc.__suppress_context__
    return exc


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("kind", ["hs256", "es256", "none"])
def test_a_jwt_in_any_field_is_refused(
    make: Make, tokens: dict[str, str], field: str, kind: str
) -> None:
    token = tokens[kind]
    exc = _assert_refused_without_echo(make, token, **{field: token})
    assert field in str(exc)
    assert "JWT" in str(exc)


@pytest.mark.parametrize(
    "template",
    [
        "rejected token {}",
        "Authorization: Bearer {}",
        '{{"access_token":"{}"}}',
        "token={}&x=1",
        "spiffe://x/y.{}",
    ],
)
def test_a_jwt_embedded_in_text_is_refused(
    make: Make, tokens: dict[str, str], template: str
) -> None:
    token = tokens["es256"]
    _assert_refused_without_echo(make, token, message=template.format(token))
    _assert_refused_without_echo(make, token, attributes={"detail": template.format(token)})


def test_a_jwe_is_refused(make: Make) -> None:
    header = _b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode())
    jwe = ".".join([header, *(_b64url(secrets.token_bytes(n)) for n in (256, 12, 64, 16))])
    _assert_refused_without_echo(make, jwe, message=f"got {jwe}")


def test_a_jws_with_spaced_header_is_refused(make: Make) -> None:
    header = _b64url(b'{ "typ": "JWT", "alg": "HS256" }')
    token = f"{header}.{_b64url(b'{}')}.{_b64url(secrets.token_bytes(32))}"
    _assert_refused_without_echo(make, token, sub=token)


def test_a_pem_private_key_is_refused(make: Make, pem_private_key: str) -> None:
    body = pem_private_key.splitlines()[1]
    for kwargs in (
        {"message": pem_private_key},
        {"message": f"loaded key:\n{pem_private_key}"},
        {"attributes": {"key_pem": pem_private_key}},
        {"client_id": pem_private_key.replace("\n", "")},
    ):
        _assert_refused_without_echo(make, body, **kwargs)


def test_a_bearer_credential_is_refused(make: Make) -> None:
    opaque = secrets.token_urlsafe(32)
    _assert_refused_without_echo(make, opaque, message=f"header was Bearer {opaque}")
    _assert_refused_without_echo(make, opaque, attributes={"header": f"bearer {opaque}"})


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "db_password",
        "passwd",
        "client_secret",
        "SECRET",
        "access_token",
        "refresh-token",
        "Authorization",
        "proxy-authorization",
        "private_key",
        "api_key",
        "x-api-key",
        "private-key",
        "client.secret",
        "session_cookie",
        "Cookie",
        "credentials",
        "totp_code",
    ],
)
def test_attribute_keys_naming_a_secret_are_refused(make: Make, key: str) -> None:
    value = secrets.token_hex(8)
    exc = _assert_refused_without_echo(make, value, attributes={key: value})
    assert "attributes" in str(exc)
    assert "names a secret" in str(exc)


@pytest.mark.parametrize(
    "key", ["jti", "token_type", "token_type_hint", "reason", "secret_path", "route", "kid"]
)
def test_attribute_keys_that_only_describe_are_allowed(make: Make, key: str) -> None:
    assert make(attributes={key: "value"}).attributes == {key: "value"}


def test_a_jti_is_an_id_not_a_token(make: Make, tokens: dict[str, str]) -> None:
    jti = secrets.token_urlsafe(24)
    ev = make(jti=jti, attributes={"jti": jti})
    assert ev.to_ocsf()["unmapped"]["trustmesh"]["jti"] == jti
    # The jti of a real token, read from it, is fine; the token itself is not.
    claims = jwt.decode(tokens["none"], options={"verify_signature": False})
    assert make(jti=claims["jti"]).jti == "abc"


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://shop.example/orders",
        "orders.shop.example",
        "v1.2.3",
        "bearer token missing",
        "Basic authentication required",
        "a.b.c",
        "eyJ.not.a-token",
        "-----END-----",
    ],
)
def test_ordinary_text_is_not_mistaken_for_a_secret(make: Make, text: str) -> None:
    assert make(message=text, attributes={"detail": text}).message == text


def test_direct_model_construction_is_checked_and_does_not_echo(
    sample: Event, tokens: dict[str, str]
) -> None:
    token = tokens["hs256"]
    with pytest.raises(ValidationError) as info:
        Event.model_validate({**sample.model_dump(), "sub": token})
    assert token not in str(info.value)
    with pytest.raises(ValidationError) as info:
        Endpoint(svc_name=token)
    assert token not in str(info.value)
    # A token used as an attribute key, with a bad value: the error names no key.
    with pytest.raises(ValidationError) as info:
        Event.model_validate({**sample.model_dump(), "attributes": {token: {"nested": 1}}})
    assert token not in str(info.value)


def test_refusal_covers_every_class(make: Make, tokens: dict[str, str]) -> None:
    for cls in EventClass:
        with pytest.raises(UsageError):
            make(cls=cls, message=tokens["hs256"])
