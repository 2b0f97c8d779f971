"""The SDK's access-token verifier: Wycheproof's JWS vectors and the attacks on JWT
verifiers, each a test. Keys are real (P-256), tokens are signed with PyJWT or, for the
attacks PyJWT refuses to produce, put together by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from trustmesh import crypto
from trustmesh.crypto import verify_jws, verifying_keys
from trustmesh.errors import InvalidTokenError
from trustmesh.reasons import Reason
from trustmesh.sdk.tokens import JWKSCache, RevocationList, TokenVerifier
from trustmesh.testing import FakeClock

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "wycheproof"  # tests/vectors
ISSUER = "https://idp.example"
AUDIENCE = "spiffe://sdk.example/payments"
THUMB = "a" * 43


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- Wycheproof ----------------------------------------------------------------------------
def _cases() -> Iterator[Any]:
    for name in (
        "json_web_signature_test.json",
        "json_web_key_test.json",
        "json_web_crypto_test.json",
    ):
        doc = json.loads((VECTORS / name).read_text())
        for group in doc["testGroups"]:
            key = group.get("public") or group.get("private")
            for test in group["tests"]:
                if "jws" in test:
                    yield pytest.param(key, test, id=f"{name.split('_test')[0]}-{test['tcId']}")


@pytest.mark.parametrize(("key", "test"), list(_cases()))
def test_wycheproof_jws(key: dict[str, Any], test: dict[str, Any]) -> None:
    """Every valid ES256 JWS is accepted; every invalid one, and every JWS in an algorithm
    the verifier does not support, is rejected. Keys load through the verifier's own JWKS
    loader (a key it refuses counts as a rejection)."""
    jwks = key if "keys" in key else {"keys": [key]}
    keys = verifying_keys(jwks)
    jws = test["jws"]
    supported = False
    if isinstance(jws, str) and jws.count(".") == 2:
        try:
            supported = jwt.get_unverified_header(jws).get("alg") == "ES256"
        except jwt.InvalidTokenError:
            supported = False
    try:
        verify_jws(jws, keys)
        accepted = True
    except InvalidTokenError:
        accepted = False
    if test["result"] == "valid" and supported:
        assert accepted, test["comment"]
    else:
        assert not accepted, test["comment"]


def test_the_vectors_are_there_and_hold_es256_cases() -> None:
    cases = list(_cases())
    assert len(cases) > 400
    es256_valid = [
        c
        for c in cases
        if c.values[1]["result"] == "valid"
        and '"ES256"'
        in base64.urlsafe_b64decode(c.values[1]["jws"].split(".")[0] + "==").decode(
            errors="replace"
        )
    ]
    assert len(es256_valid) >= 3


# -- a verifier against one P-256 key ------------------------------------------------------
class Keys:
    def __init__(self) -> None:
        self.private = crypto.generate_key()
        self.kid = crypto.key_id(self.private.public_key())
        jwk = crypto.public_jwk(self.private.public_key())
        jwk.update(kid=self.kid, alg="ES256", use="sig")
        self.jwks = {"keys": [jwk]}
        self.fetches = 0

    async def fetch(self) -> tuple[bytes, float | None]:
        self.fetches += 1
        return json.dumps(self.jwks).encode(), 300.0

    def token(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "sub": "spiffe://sdk.example/orders",
            "aud": AUDIENCE,
            "exp": now + 600,
            "iat": now,
            "jti": "j-1",
            "client_id": "orders",
            "cnf": {"x5t#S256": THUMB},
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            body,
            self.private,
            algorithm="ES256",
            headers={"kid": self.kid, "typ": "at+jwt", **(header or {})},
        )


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(keys: Keys, clock: FakeClock) -> TokenVerifier:
    cache = JWKSCache(keys.fetch, min_refetch_interval=10, clock=clock.monotonic)
    return TokenVerifier(
        issuers={ISSUER}, audience=AUDIENCE, jwks=cache, leeway=30, clock=clock.time
    )


async def _refused(verifier: TokenVerifier, token: str, reason: Reason, thumb: str = THUMB) -> None:
    with pytest.raises(InvalidTokenError) as info:
        await verifier.verify(token, peer_thumbprint=thumb)
    assert info.value.reason == reason, info.value.detail


async def test_a_good_token_passes_and_is_cached(verifier: TokenVerifier, keys: Keys) -> None:
    token = keys.token()
    verified = await verifier.verify(token, peer_thumbprint=THUMB)
    assert verified.subject == "spiffe://sdk.example/orders"
    assert verified.client_id == "orders"
    again = await verifier.verify(token, peer_thumbprint=THUMB)
    assert again is verified
    assert keys.fetches == 1


def _forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _claims(keys: Keys) -> dict[str, Any]:
    return jwt.decode(keys.token(), options={"verify_signature": False})


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_any_casing(verifier: TokenVerifier, keys: Keys, alg: str) -> None:
    header = {"alg": alg, "kid": keys.kid, "typ": "at+jwt"}
    for token in (_forge(header, _claims(keys)), _forge(header, _claims(keys))[:-0] + "AA"):
        with pytest.raises(InvalidTokenError):
            await verifier.verify(token, peer_thumbprint=THUMB)
    assert keys.fetches == 0  # refused before any key was looked at


def _hmac_token(secret: bytes, keys: Keys) -> str:
    header = {"alg": "HS256", "kid": keys.kid, "typ": "at+jwt"}
    signing_input = (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims(keys)).encode())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def test_hs256_signed_with_our_public_key_pem_and_jwk(
    verifier: TokenVerifier, keys: Keys
) -> None:
    from cryptography.hazmat.primitives import serialization  # the attacker's tooling

    pem = keys.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps(keys.jwks["keys"][0]).encode()
    for secret in (pem, jwk, pem.strip()):
        await _refused(verifier, _hmac_token(secret, keys), Reason.TOKEN_MALFORMED)


async def test_embedded_jwk_is_not_trusted(verifier: TokenVerifier, keys: Keys) -> None:
    attacker = Keys()
    token = attacker.token(header={"jwk": attacker.jwks["keys"][0], "kid": attacker.kid})
    await _refused(verifier, token, Reason.TOKEN_MALFORMED)
    # the same key id as ours, signed by the attacker's key
    await _refused(verifier, attacker.token(header={"kid": keys.kid}), Reason.TOKEN_BAD_SIGNATURE)


class _Counter(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"keys": []}')

    def log_message(self, *_: object) -> None:
        return


async def test_jku_and_x5u_are_refused_and_nothing_is_fetched(
    verifier: TokenVerifier, keys: Keys
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Counter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        for header in ({"jku": url}, {"x5u": url}, {"x5c": ["MIIB"]}):
            await _refused(verifier, keys.token(header=header), Reason.TOKEN_MALFORMED)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert _Counter.hits == 0
    assert keys.fetches == 0


@pytest.mark.parametrize(
    "kid",
    ["../../../../../../dev/null", "/etc/passwd", "' OR '1'='1", "x'; DROP TABLE keys; --", "%00"],
)
async def test_hostile_kid_is_just_an_unknown_key(
    verifier: TokenVerifier, keys: Keys, kid: str
) -> None:
    await _refused(verifier, keys.token(header={"kid": kid}), Reason.TOKEN_UNKNOWN_KEY)


async def test_unknown_kid_refetches_once_rate_limited(
    verifier: TokenVerifier, keys: Keys, clock: FakeClock
) -> None:
    await verifier.verify(keys.token(), peer_thumbprint=THUMB)
    assert keys.fetches == 1
    for n in range(5):
        await _refused(verifier, keys.token(header={"kid": f"nope-{n}"}), Reason.TOKEN_UNKNOWN_KEY)
    assert keys.fetches == 2  # one refetch for the first unknown kid, then rate-limited
    # a key published later is found by the next refetch
    rotated = Keys()
    keys.jwks["keys"].append(rotated.jwks["keys"][0])
    token = rotated.token()
    await _refused(verifier, token, Reason.TOKEN_UNKNOWN_KEY)  # still rate-limited
    clock.advance(11)
    assert (await verifier.verify(token, peer_thumbprint=THUMB)).jti == "j-1"


async def test_unknown_crit_is_refused(verifier: TokenVerifier, keys: Keys) -> None:
    await _refused(verifier, keys.token(header={"crit": ["exp"], "exp": 1}), Reason.TOKEN_MALFORMED)


async def test_expired_and_not_yet_valid(
    verifier: TokenVerifier, keys: Keys, clock: FakeClock
) -> None:
    now = int(clock.time())
    await _refused(verifier, keys.token(exp=now - 31, iat=now - 600), Reason.TOKEN_EXPIRED)
    await _refused(verifier, keys.token(nbf=now + 120), Reason.TOKEN_NOT_YET_VALID)
    await _refused(verifier, keys.token(iat=now + 120), Reason.TOKEN_NOT_YET_VALID)
    # a cached token expires too
    token = keys.token(exp=now + 5)
    await verifier.verify(token, peer_thumbprint=THUMB)
    clock.advance(40)
    await _refused(verifier, token, Reason.TOKEN_EXPIRED)


async def test_wrong_audience_and_issuer(verifier: TokenVerifier, keys: Keys) -> None:
    await _refused(
        verifier, keys.token(aud="spiffe://sdk.example/orders"), Reason.TOKEN_WRONG_AUDIENCE
    )
    await _refused(verifier, keys.token(iss="https://evil.example"), Reason.TOKEN_WRONG_ISSUER)
    await _refused(verifier, keys.token(iss=None), Reason.TOKEN_MALFORMED)


async def test_token_bound_to_another_certificate(verifier: TokenVerifier, keys: Keys) -> None:
    token = keys.token()
    await _refused(verifier, token, Reason.TOKEN_NOT_BOUND, thumb="b" * 43)
    await _refused(verifier, keys.token(cnf=None), Reason.TOKEN_NOT_BOUND)
    assert (await verifier.verify(token, peer_thumbprint=THUMB)).jti == "j-1"


async def test_revoked_token(verifier: TokenVerifier, keys: Keys) -> None:
    token = keys.token(jti="j-9")
    await verifier.verify(token, peer_thumbprint=THUMB)
    verifier.revoked.add("j-9", time.time() + 600)
    await _refused(verifier, token, Reason.TOKEN_REVOKED)


async def test_not_an_access_token(verifier: TokenVerifier, keys: Keys) -> None:
    await _refused(verifier, keys.token(header={"typ": "JWT"}), Reason.TOKEN_MALFORMED)
    for bad in ("", "a.b", "a.b.c.d", "x" * 9000, "é.é.é"):
        await _refused(verifier, bad, Reason.TOKEN_MALFORMED)


async def test_provider_down_keeps_the_known_keys(keys: Keys, clock: FakeClock) -> None:
    up = True

    async def fetch() -> tuple[bytes, float | None]:
        if not up:
            raise OSError("connection refused")
        return await keys.fetch()

    cache = JWKSCache(fetch, max_age=60, min_refetch_interval=1, clock=clock.monotonic)
    verifier = TokenVerifier(issuers={ISSUER}, audience=AUDIENCE, jwks=cache, clock=clock.time)
    await verifier.verify(keys.token(jti="a"), peer_thumbprint=THUMB)
    up = False
    clock.advance(120)  # the set is stale and the provider is down
    assert (await verifier.verify(keys.token(jti="b"), peer_thumbprint=THUMB)).jti == "b"


async def test_the_default_leeway_is_five_seconds(keys: Keys, clock: FakeClock) -> None:
    """A token that expired 20 s ago is refused, one that expired 3 s ago taken: the
    clocks of issuer and verifier may differ by a few seconds, not by twenty."""
    cache = JWKSCache(keys.fetch, clock=clock.monotonic)
    verifier = TokenVerifier(issuers={ISSUER}, audience=AUDIENCE, jwks=cache, clock=clock.time)
    now = int(clock.time())
    await _refused(verifier, keys.token(exp=now - 20, iat=now - 600), Reason.TOKEN_EXPIRED)
    token = keys.token(exp=now - 3, iat=now - 600, jti="j-3")
    assert (await verifier.verify(token, peer_thumbprint=THUMB)).jti == "j-3"
    clock.advance(2.5)  # cached, and now past the leeway too
    await _refused(verifier, token, Reason.TOKEN_EXPIRED)


async def test_a_revoked_subject_takes_every_token_issued_before(
    verifier: TokenVerifier, keys: Keys, clock: FakeClock
) -> None:
    """A subject revoked with ``before`` T: its tokens with ``iat`` < T are refused,
    whoever signed them (cached ones too); later ones, and other subjects', pass."""
    now = int(clock.time())
    user = "a0b1c2"
    old = keys.token(sub=user, iat=now - 1, jti="old")
    same_second = keys.token(sub=user, iat=now, jti="same")
    later = keys.token(sub=user, iat=now + 1, jti="later")
    other = keys.token(sub="someone-else", iat=now - 1, jti="other")
    for token in (old, same_second, other):
        await verifier.verify(token, peer_thumbprint=THUMB)
    verifier.revoked.add_subject(user, now + 1, clock.time() + 600)
    await _refused(verifier, old, Reason.TOKEN_REVOKED)
    await _refused(verifier, same_second, Reason.TOKEN_REVOKED)
    assert (await verifier.verify(later, peer_thumbprint=THUMB)).jti == "later"
    assert (await verifier.verify(other, peer_thumbprint=THUMB)).jti == "other"
    # an older revocation arriving late never shortens a newer one
    verifier.revoked.add_subject(user, now - 100, clock.time() + 10)
    await _refused(verifier, same_second, Reason.TOKEN_REVOKED)
    clock.advance(700)  # every token it could match has expired: forgotten
    verifier.revoked.prune()
    assert len(verifier.revoked) == 0


def test_revocation_list_forgets_expired_tokens() -> None:
    clock = FakeClock()
    revoked = RevocationList(clock.time)
    revoked.add("a", clock.time() + 10)
    revoked.add("b", clock.time() - 1)
    revoked.prune()
    assert "a" in revoked
    assert "b" not in revoked
    assert len(revoked) == 1


async def test_each_issuer_is_checked_with_its_own_keys_only(keys: Keys, clock: FakeClock) -> None:
    """Two trusted issuers (the provider and the gateway): a token is verified only with
    the keys of the issuer it names, so the gateway's key cannot vouch for a token that
    claims to come from the provider, nor the other way round."""
    gateway = Keys()
    gateway_issuer = "spiffe://sdk.example/trustmesh/gateway"
    verifier = TokenVerifier(
        audience=AUDIENCE,
        issuers={ISSUER},
        jwks=JWKSCache(keys.fetch, clock=clock.monotonic),
        trusted={gateway_issuer: JWKSCache(gateway.fetch, clock=clock.monotonic)},
        clock=clock.time,
    )
    assert (await verifier.verify(keys.token(), peer_thumbprint=THUMB)).subject
    from_gateway = gateway.token(iss=gateway_issuer, jti="g-1")
    assert (await verifier.verify(from_gateway, peer_thumbprint=THUMB)).jti == "g-1"
    # the gateway's key signing a token that names the provider, and the reverse
    await _refused(verifier, gateway.token(jti="g-2"), Reason.TOKEN_UNKNOWN_KEY)
    await _refused(verifier, keys.token(iss=gateway_issuer, jti="p-2"), Reason.TOKEN_UNKNOWN_KEY)
    await _refused(verifier, keys.token(iss="https://elsewhere.example"), Reason.TOKEN_WRONG_ISSUER)
    with pytest.raises(ValueError, match="at least one issuer"):
        TokenVerifier(audience=AUDIENCE)


# -- test-only switches (trustmesh.config.switches): each turns off its check alone -------
def _switched(keys: Keys, clock: FakeClock, *off: str) -> TokenVerifier:
    cache = JWKSCache(keys.fetch, min_refetch_interval=10, clock=clock.monotonic)
    return TokenVerifier(
        issuers={ISSUER},
        audience=AUDIENCE,
        jwks=cache,
        leeway=30,
        clock=clock.time,
        defences_off=off,
    )


async def test_token_signature_switch_takes_forged_tokens_and_nothing_more(
    keys: Keys, clock: FakeClock
) -> None:
    verifier = _switched(keys, clock, "token-signature")
    forged = Keys().token(sub="attacker")  # another key: neither kid nor signature ours
    assert (await verifier.verify(forged, peer_thumbprint=THUMB)).subject == "attacker"
    unsigned = _forge({"alg": "none", "typ": "at+jwt"}, _claims(keys))
    await _refused(verifier, unsigned, Reason.TOKEN_MALFORMED)  # the allow-list holds
    other = Keys().token(aud="spiffe://sdk.example/orders")
    await _refused(verifier, other, Reason.TOKEN_WRONG_AUDIENCE)  # the claims are checked
    await _refused(verifier, Keys().token(exp=int(time.time()) - 60), Reason.TOKEN_EXPIRED)
    await _refused(verifier, forged, Reason.TOKEN_NOT_BOUND, thumb="b" * 43)
    await _refused(verifier, "not-a-jwt", Reason.TOKEN_MALFORMED)


async def test_token_algorithms_switch_takes_alg_none_and_nothing_more(
    keys: Keys, clock: FakeClock
) -> None:
    verifier = _switched(keys, clock, "token-algorithms")
    unsigned = _forge({"alg": "none", "typ": "at+jwt"}, _claims(keys))
    assert (await verifier.verify(unsigned, peer_thumbprint=THUMB)).jti == "j-1"
    await _refused(verifier, Keys().token(), Reason.TOKEN_UNKNOWN_KEY)  # signatures hold
    wrong = _forge({"alg": "none", "typ": "at+jwt"}, {**_claims(keys), "aud": "x"})
    await _refused(verifier, wrong, Reason.TOKEN_WRONG_AUDIENCE)


async def test_token_audience_and_binding_switches_each_skip_one_check(
    keys: Keys, clock: FakeClock
) -> None:
    elsewhere = keys.token(aud="spiffe://sdk.example/orders")
    audience = _switched(keys, clock, "token-audience")
    assert (await audience.verify(elsewhere, peer_thumbprint=THUMB)).jti == "j-1"
    await _refused(audience, keys.token(), Reason.TOKEN_NOT_BOUND, thumb="b" * 43)
    binding = _switched(keys, clock, "token-binding")
    assert (await binding.verify(keys.token(), peer_thumbprint="b" * 43)).jti == "j-1"
    assert (await binding.verify(keys.token(jti="j-2"), peer_thumbprint=None)).jti == "j-2"
    await _refused(binding, elsewhere, Reason.TOKEN_WRONG_AUDIENCE)
    await _refused(binding, Keys().token(), Reason.TOKEN_UNKNOWN_KEY)
