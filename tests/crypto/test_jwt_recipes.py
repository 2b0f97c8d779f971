"""The one JWT recipe (crypto.verify_jwt with an Expect): ES256 only unless asked, keys by
kid, iss/aud/typ as expected, exp/nbf/iat at an explicit ``now``; used for JWT-SVIDs, the
provider's access tokens, the gateway's and other issuers'.

Every attack is sent as a real token (signed for real, or forged by hand where PyJWT refuses
to produce it) and the refusal's ``reason`` is asserted."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustmesh import crypto
from trustmesh.errors import InvalidTokenError

NOW = 1_900_000_000
AUDIENCE = "spiffe://example.org/backend"
SUBJECT = "spiffe://example.org/frontend"

KEY = crypto.generate_key()
KID = crypto.key_id(KEY.public_key())
OTHER_KEY = crypto.generate_key()
OTHER_KID = crypto.key_id(OTHER_KEY.public_key())
KEYS: dict[str, crypto.PublicKey] = {KID: KEY.public_key(), OTHER_KID: OTHER_KEY.public_key()}
ATTACKER_KEY = crypto.generate_key()
ATTACKER_CERT = crypto.create_root_ca(
    "example.org",
    ATTACKER_KEY,
    now=dt.datetime.fromtimestamp(NOW, dt.UTC),
    ttl=dt.timedelta(days=1),
    label="attacker",
)


def svid(audience: str, leeway: float = 0.0) -> crypto.Expect:
    """What a JWT-SVID must be (JWT-SVID §3): for ``audience``, with exp, aud and sub."""
    return crypto.Expect(audience=audience, required=("exp", "aud", "sub"), leeway=leeway)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": SUBJECT, "aud": AUDIENCE, "exp": NOW + 300, "iat": NOW}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    return f"{head}.{body}.{b64url(signature)}"


def sign_raw(header: dict[str, Any], payload: dict[str, Any], key: crypto.PrivateKey) -> str:
    """A genuine ES256 signature over exactly these header bytes (PyJWT's encoder edits some)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    signature = jwt.get_algorithm_by_name("ES256").sign(f"{head}.{body}".encode(), key)
    return f"{head}.{body}.{b64url(signature)}"


def reason_of(token: str, *, now: float = NOW, leeway: float = 0, audience: str = AUDIENCE) -> str:
    with pytest.raises(InvalidTokenError) as info:
        crypto.verify_jwt(token, KEYS, svid(audience=audience, leeway=leeway), now=now)
    assert info.value.code == "invalid_token"
    assert info.value.reason is not None
    return info.value.reason


def test_round_trip() -> None:
    token = crypto.sign_jwt(claims(), KEY, kid=KID)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KID, "typ": "JWT"}
    assert crypto.verify_jwt(token, KEYS, svid(audience=AUDIENCE), now=NOW) == claims()


def test_audience_may_be_one_of_several() -> None:
    token = crypto.sign_jwt(claims(aud=["spiffe://example.org/other", AUDIENCE]), KEY, kid=KID)
    assert crypto.verify_jwt(token, KEYS, svid(audience=AUDIENCE), now=NOW)["sub"] == SUBJECT


# -- algorithm confusion --------------------------------------------------------------------


@pytest.mark.parametrize("kid", [KID, None], ids=["kid", "no-kid"])
@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused_in_every_casing(alg: str, kid: str | None) -> None:
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    token = forge({k: v for k, v in header.items() if v is not None}, claims())
    assert reason_of(token) == "token-malformed"  # refused as such, before any key lookup


def test_alg_none_with_a_real_signature_is_refused() -> None:
    real = crypto.sign_jwt(claims(), KEY, kid=KID)
    head = b64url(json.dumps({"alg": "none", "kid": KID}).encode())
    _, body, sig = real.split(".")
    assert reason_of(f"{head}.{body}.{sig}") == "token-malformed"


def test_missing_alg_is_refused() -> None:
    assert reason_of(forge({"kid": KID}, claims())) == "token-malformed"


@pytest.mark.parametrize("kid", [KID, "hmac-key"], ids=["kid", "hmac-key"])
@pytest.mark.parametrize(
    ("alg", "digest"),
    [("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)],
)
def test_hmac_signed_with_the_public_key_as_secret_is_refused(
    alg: str, digest: Any, kid: str
) -> None:
    """The classic RS/ES→HS confusion: the verifier's public key used as an HMAC secret."""
    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    body = b64url(json.dumps(claims()).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode("ascii"), digest).digest()
    assert reason_of(f"{head}.{body}.{b64url(mac)}") == "token-malformed"


@pytest.mark.parametrize("alg", ["ES384", "ES512", "RS256", "PS256", "EdDSA"])
def test_other_asymmetric_algorithms_are_refused(alg: str) -> None:
    assert reason_of(forge({"alg": alg, "kid": KID}, claims(), b"x" * 64)) == "token-malformed"


# -- embedded key material and critical extensions (RFC 7515 §4.1) --------------------------


def _attacker_header(name: str) -> Any:
    return {
        "jwk": crypto.public_jwk(ATTACKER_KEY.public_key()),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": [base64.b64encode(crypto.cert_der(ATTACKER_CERT)).decode("ascii")],
        "crit": ["b64"],  # an extension PyJWT itself accepts: only our rule stops it
    }[name]


def _header(name: str) -> dict[str, Any]:
    header = {"alg": "ES256", "typ": "JWT", "kid": KID, name: _attacker_header(name)}
    if name == "crit":
        header["b64"] = True
    return header


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "crit"])
def test_embedded_key_headers_are_refused(name: str) -> None:
    """Signed by the attacker with the victim's kid, pointing at the attacker's key."""
    token = sign_raw(_header(name), claims(), ATTACKER_KEY)
    assert reason_of(token) == "token-malformed"


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "crit"])
def test_embedded_key_headers_are_refused_even_on_a_genuine_signature(name: str) -> None:
    """The rule stands on its own: the token is otherwise valid."""
    token = sign_raw(_header(name), claims(), KEY)
    with pytest.raises(InvalidTokenError, match="header parameter not accepted") as info:
        crypto.verify_jwt(token, KEYS, svid(audience=AUDIENCE), now=NOW)
    assert info.value.reason == "token-malformed"


# -- keys --------------------------------------------------------------------------------------


def test_unknown_kid_is_refused() -> None:
    token = crypto.sign_jwt(claims(), ATTACKER_KEY, kid=crypto.key_id(ATTACKER_KEY.public_key()))
    assert reason_of(token) == "token-unknown-key"


def test_missing_kid_is_refused() -> None:
    token = jwt.encode(claims(), KEY, algorithm="ES256")
    assert reason_of(token) == "token-unknown-key"


def test_signature_by_another_key_under_a_known_kid_is_refused() -> None:
    token = crypto.sign_jwt(claims(), ATTACKER_KEY, kid=KID)
    assert reason_of(token) == "token-bad-signature"


def test_signature_of_another_known_key_is_refused() -> None:
    """Both keys are trusted, but the kid names the one that did not sign."""
    token = crypto.sign_jwt(claims(), OTHER_KEY, kid=KID)
    assert reason_of(token) == "token-bad-signature"


def test_tampered_claims_are_refused() -> None:
    head, _, sig = crypto.sign_jwt(claims(), KEY, kid=KID).split(".")
    body = b64url(json.dumps(claims(sub="spiffe://example.org/admin")).encode())
    assert reason_of(f"{head}.{body}.{sig}") == "token-bad-signature"


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "' OR 1=1 --",
        "",
        "\x00",
        KID + "\n",
        KID.upper() if KID.upper() != KID else KID.lower(),
        "http://attacker.example/key",
    ],
    ids=["traversal", "sql", "empty", "nul", "newline", "other-case", "url"],
)
def test_hostile_kid_values_just_yield_unknown_key(kid: str) -> None:
    token = crypto.sign_jwt(claims(), KEY, kid=kid)
    assert reason_of(token) == "token-unknown-key"


# -- claims --------------------------------------------------------------------------------------


def test_wrong_audience_is_refused() -> None:
    token = crypto.sign_jwt(claims(aud="spiffe://example.org/other"), KEY, kid=KID)
    assert reason_of(token) == "token-wrong-audience"
    token = crypto.sign_jwt(claims(aud=["spiffe://example.org/other"]), KEY, kid=KID)
    assert reason_of(token) == "token-wrong-audience"


@pytest.mark.parametrize("missing", ["sub", "aud", "exp"])
def test_required_claims(missing: str) -> None:
    token = crypto.sign_jwt({k: v for k, v in claims().items() if k != missing}, KEY, kid=KID)
    assert reason_of(token) == "token-malformed"


def test_expired_is_refused_and_leeway_is_honoured() -> None:
    token = crypto.sign_jwt(claims(exp=NOW - 1), KEY, kid=KID)
    assert reason_of(token) == "token-expired"
    assert (
        crypto.verify_jwt(token, KEYS, svid(audience=AUDIENCE, leeway=5), now=NOW)["sub"] == SUBJECT
    )
    assert reason_of(token, leeway=0.5) == "token-expired"
    old = crypto.sign_jwt(claims(exp=NOW - 6), KEY, kid=KID)
    assert reason_of(old, leeway=5) == "token-expired"


def test_token_is_refused_at_its_expiry_instant() -> None:
    token = crypto.sign_jwt(claims(exp=NOW), KEY, kid=KID)
    assert reason_of(token) == "token-expired"


@pytest.mark.parametrize("exp", ["9999999999", True, [NOW + 300], {"t": NOW + 300}])
def test_exp_that_is_not_a_number_is_refused(exp: Any) -> None:
    token = crypto.sign_jwt(claims(exp=exp), KEY, kid=KID)
    assert reason_of(token) == "token-malformed"  # as every verifier says it


def test_not_before_in_the_future_is_refused_and_leeway_is_honoured() -> None:
    token = crypto.sign_jwt(claims(nbf=NOW + 10), KEY, kid=KID)
    assert reason_of(token) == "token-not-yet-valid"
    assert reason_of(token, leeway=9) == "token-not-yet-valid"
    assert (
        crypto.verify_jwt(token, KEYS, svid(audience=AUDIENCE, leeway=10), now=NOW)["nbf"]
        == NOW + 10
    )
    assert crypto.verify_jwt(token, KEYS, svid(audience=AUDIENCE), now=NOW + 10)["nbf"] == NOW + 10


def test_nbf_that_is_not_a_number_is_refused() -> None:
    token = crypto.sign_jwt(claims(nbf="0"), KEY, kid=KID)
    assert reason_of(token) == "token-malformed"  # as every verifier says it


@pytest.mark.parametrize("token", ["", "a", "a.b", "a.b.c", "....", "not a token at all"])
def test_malformed_tokens_are_refused(token: str) -> None:
    assert reason_of(token) == "token-malformed"


# -- what an Expect asks beyond a JWT-SVID ----------------------------------------------
def _refused(token: str, expect: crypto.Expect, now: float = NOW) -> str:
    with pytest.raises(InvalidTokenError) as info:
        crypto.verify_jwt(token, KEYS, expect, now=now)
    return str(info.value.reason)


def test_the_issuer_is_checked_when_expected_and_left_to_the_caller_when_not() -> None:
    token = crypto.sign_jwt(claims(iss="https://idp.example"), KEY, kid=KID)
    ours = crypto.Expect(issuer="https://idp.example", audience=AUDIENCE)
    assert crypto.verify_jwt(token, KEYS, ours, now=NOW)["iss"] == "https://idp.example"
    theirs = crypto.Expect(issuer="https://other.example", audience=AUDIENCE)
    assert _refused(token, theirs) == "token-wrong-issuer"
    anyone = crypto.Expect(audience=AUDIENCE)
    assert crypto.verify_jwt(token, KEYS, anyone, now=NOW)["sub"] == SUBJECT
    required = crypto.Expect(issuer="https://idp.example", required=("exp", "iss"))
    assert _refused(crypto.sign_jwt(claims(), KEY, kid=KID), required) == "token-malformed"


def test_any_audience_only_when_the_caller_checks_it() -> None:
    token = crypto.sign_jwt(claims(aud="spiffe://example.org/elsewhere"), KEY, kid=KID)
    assert _refused(token, crypto.Expect(audience=AUDIENCE)) == "token-wrong-audience"
    anywhere = crypto.verify_jwt(token, KEYS, crypto.Expect(), now=NOW)
    assert anywhere["aud"] == "spiffe://example.org/elsewhere"
    several = crypto.Expect(audience=[AUDIENCE, "spiffe://example.org/elsewhere"])
    assert crypto.verify_jwt(token, KEYS, several, now=NOW)["sub"] == SUBJECT


def test_the_type_of_token_is_checked_case_blind_and_may_be_optional() -> None:
    access = frozenset({"at+jwt", "application/at+jwt"})
    typed = crypto.sign_jwt(claims(), KEY, kid=KID, typ="AT+JWT")
    assert crypto.verify_jwt(typed, KEYS, crypto.Expect(typ=access), now=NOW)["sub"] == SUBJECT
    plain = crypto.sign_jwt(claims(), KEY, kid=KID)  # typ JWT: an ID token looks so
    assert _refused(plain, crypto.Expect(typ=access)) == "token-malformed"
    untyped = sign_raw({"alg": "ES256", "kid": KID}, claims(), KEY)
    assert _refused(untyped, crypto.Expect(typ=access)) == "token-malformed"
    optional = crypto.Expect(typ=access, typ_optional=True)
    assert crypto.verify_jwt(untyped, KEYS, optional, now=NOW)["sub"] == SUBJECT
    assert _refused(plain, optional) == "token-malformed"  # absent may pass; wrong never


def test_a_token_issued_in_the_future_is_not_yet_valid() -> None:
    token = crypto.sign_jwt(claims(iat=NOW + 60), KEY, kid=KID)
    assert _refused(token, crypto.Expect()) == "token-not-yet-valid"
    later = crypto.verify_jwt(token, KEYS, crypto.Expect(), now=NOW + 60)
    assert later["iat"] == NOW + 60
    assert crypto.verify_jwt(token, KEYS, crypto.Expect(leeway=60), now=NOW)["sub"] == SUBJECT


def test_claims_that_must_be_strings() -> None:
    expect = crypto.Expect(strings=("sub", "client_id"))
    good = crypto.sign_jwt(claims(client_id="storefront"), KEY, kid=KID)
    assert crypto.verify_jwt(good, KEYS, expect, now=NOW)["client_id"] == "storefront"
    for bad in ("", 7, ["storefront"], None):
        token = crypto.sign_jwt(claims(client_id=bad), KEY, kid=KID)
        assert _refused(token, expect) == "token-malformed"


def test_other_algorithms_only_where_an_issuer_declares_them() -> None:
    token = crypto.sign_jwt(claims(), KEY, kid=KID)  # ES256
    keys = {KID: KEY.public_key()}
    assert crypto.verify_jwt(token, keys, crypto.Expect(), now=NOW)["sub"] == SUBJECT
    es384_only = crypto.Expect(algorithms=("ES384",))
    with pytest.raises(InvalidTokenError, match="not allowed") as info:
        crypto.verify_jwt(token, keys, es384_only, now=NOW)
    assert info.value.reason == "token-malformed"


def test_the_claims_of_a_client_assertion() -> None:
    """What the provider asks of a client assertion (RFC 7523 §3) through the recipe:
    ``iss`` the client, ``aud`` one of the server's names, ``jti`` present, the times."""
    expect = crypto.Expect(
        issuer="batch", audience=["https://idp.example/token"], required=("iss", "exp", "jti")
    )
    keys = {KID: KEY.public_key()}
    good = {"iss": "batch", "aud": "https://idp.example/token", "exp": NOW + 60, "jti": "j"}
    assert crypto.verify_jwt(crypto.sign_jwt(good, KEY, kid=KID), keys, expect, now=NOW) == good
    cases = [
        ({**good, "iss": "other"}, "token-wrong-issuer"),
        ({**good, "aud": ["https://elsewhere.example"]}, "token-wrong-audience"),
        ({**good, "aud": 7}, "token-wrong-audience"),
        ({k: v for k, v in good.items() if k != "jti"}, "token-malformed"),
        ({**good, "exp": NOW}, "token-expired"),
        ({**good, "nbf": NOW + 30}, "token-not-yet-valid"),
        ({**good, "exp": "soon"}, "token-malformed"),
    ]
    for claims, reason in cases:
        with pytest.raises(InvalidTokenError) as info:
            crypto.verify_jwt(crypto.sign_jwt(claims, KEY, kid=KID), keys, expect, now=NOW)
        assert info.value.reason == reason, claims


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_a_token_naming_no_key_only_where_allowed_and_only_against_one_key() -> None:
    token = jwt.encode(claims(), KEY, algorithm="ES256")  # no kid
    one = {KID: KEY.public_key()}
    unnamed = crypto.Expect(audience=AUDIENCE, kid_optional=True)
    assert crypto.verify_jwt(token, one, unnamed, now=NOW)["sub"] == SUBJECT
    with pytest.raises(InvalidTokenError) as info:
        crypto.verify_jwt(token, KEYS, unnamed, now=NOW)  # two keys: never guessed
    assert info.value.reason == "token-unknown-key"
    with pytest.raises(InvalidTokenError) as info:
        crypto.verify_jwt(token, one, crypto.Expect(audience=AUDIENCE), now=NOW)
    assert info.value.reason == "token-unknown-key"


def test_the_key_must_fit_the_algorithm() -> None:
    """An RSA key never checks an ES256 signature, a P-256 key never an ES384 one, even
    when the header's algorithm is allowed."""
    rs256 = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": KID})
    both = crypto.Expect(audience=AUDIENCE, algorithms=("ES256", "RS256", "ES384"))
    with pytest.raises(InvalidTokenError, match="does not fit") as info:
        crypto.verify_jwt(rs256, {KID: KEY.public_key()}, both, now=NOW)
    assert info.value.reason == "token-malformed"
    es256 = crypto.sign_jwt(claims(), KEY, kid=KID)
    with pytest.raises(InvalidTokenError, match="does not fit"):
        crypto.verify_jwt(es256, {KID: RSA_KEY.public_key()}, both, now=NOW)
    es384 = sign_raw({"alg": "ES384", "kid": KID}, claims(), KEY)
    with pytest.raises(InvalidTokenError, match="does not fit"):
        crypto.verify_jwt(es384, {KID: KEY.public_key()}, both, now=NOW)
    rsa_keys = {KID: RSA_KEY.public_key()}
    assert crypto.verify_jwt(rs256, rsa_keys, both, now=NOW)["sub"] == SUBJECT


def test_verifying_keys_of_a_jwk_set() -> None:
    """Keys usable with the allowed algorithms, by kid; a set's lone unnamed key only
    when asked; small RSA keys, private keys and shared kids left out."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    ec_jwk = crypto.public_jwk(KEY.public_key())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    small_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(small.public_key()))
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY))
    document = {
        "keys": [
            {**ec_jwk, "kid": "e"},
            {**rsa_jwk, "kid": "r"},
            {**small_jwk, "kid": "small"},
            {**private, "kid": "private"},
            {**ec_jwk, "kid": "twice"},
            {**rsa_jwk, "kid": "twice"},
        ]
    }
    assert set(crypto.verifying_keys(document)) == {"e"}
    assert set(crypto.verifying_keys(document, ("ES256", "RS256"))) == {"e", "r"}
    lone = {"keys": [ec_jwk]}
    assert crypto.verifying_keys(lone) == {}
    assert set(crypto.verifying_keys(lone, lone_unnamed=True)) == {""}
    assert crypto.verifying_keys({"keys": [ec_jwk, rsa_jwk]}, lone_unnamed=True) == {}
