"""The one JWT recipe (on PyJWT: no hand-written JOSE): :func:`sign_jwt` and
:func:`verify_jwt`. Every token trustmesh checks — its provider's access tokens, the
gateway's internal tokens, another issuer's, JWT-SVIDs — goes through
:func:`verify_jwt` with an :class:`Expect` saying what it must be, against a clock the
caller passes in. A failure raises :class:`~trustmesh.errors.InvalidTokenError` with
the :class:`~trustmesh.reasons.Reason` that names it.

What is acceptable, whoever asks:

- the JWS: compact form only, at most 8 KiB; ``alg`` exactly one of the allow-list
  (``ES256`` unless the caller's issuer declares others) — never ``none`` or an HMAC
  with a public key; no ``jku``/``x5u``/``jwk``/``x5c`` (nothing is ever fetched from or
  trusted in a token) and no ``crit``; ``kid`` is only a dictionary key (a token may
  name none only where the caller allows it and holds one key); the key must fit the
  ``alg`` (:data:`KEY_TYPES`: an RSA key never checks an ES256 signature);
- the claims: ``iss`` and ``aud`` as expected (either may be left to the caller), the
  required ones present, ``exp``/``nbf``/``iat`` numbers checked against ``now`` with
  the caller's leeway (RFC 7519 §4.1.4: never accepted on or after ``exp``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm

from trustmesh.crypto._x509 import PrivateKey, PublicKey
from trustmesh.errors import InvalidTokenError
from trustmesh.reasons import Reason

#: The algorithms trustmesh accepts unless an issuer declares others; `none` and HMAC never.
ALLOWED_ALGORITHMS = ("ES256",)
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
MAX_TOKEN_LENGTH = 8192
#: Which key may verify which algorithm: (kty, crv or None).
KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
}
MIN_RSA_BITS = 2048
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def key_id(public_key: PublicKey) -> str:
    """A stable kid: the RFC 7638 thumbprint of the public JWK, base64url."""
    jwk = public_jwk(public_key)
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = hashlib.sha256(canon.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def public_jwk(public_key: PublicKey, kid: str | None = None) -> dict[str, str]:
    jwk = cast(dict[str, str], ECAlgorithm.to_jwk(public_key, as_dict=True))
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y")}
    if kid is not None:
        jwk.update(kid=kid, use="jwt-svid", alg="ES256")
    return jwk


def jwks_document(keys: Mapping[str, PublicKey]) -> bytes:
    """A JWKS (RFC 7517 §5) of the given public keys, as JSON bytes."""
    return json.dumps({"keys": [public_jwk(k, kid) for kid, k in keys.items()]}).encode()


def jwk_set(
    document: bytes | str | Mapping[str, Any], *, lone_unnamed: bool = False
) -> dict[str, Mapping[str, Any]]:
    """The public signature keys of a JWK Set (RFC 7517 §5) by ``kid``: entries without a
    usable ``kid``, private keys, keys for another use, and every key whose ``kid`` is
    shared are left out (never guessed at). ``lone_unnamed``: a set of one key without a
    ``kid`` gives that key, under ``""`` (a client's registered set, RFC 7523)."""
    try:
        doc = json.loads(document) if isinstance(document, bytes | str) else document
    except ValueError:
        return {}
    listed = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(listed, list):
        return {}
    if lone_unnamed and len(listed) == 1 and isinstance(listed[0], Mapping):
        listed = [{**listed[0], "kid": listed[0].get("kid", "")}]
    found: dict[str, Mapping[str, Any]] = {}
    duplicated: set[str] = set()
    for jwk in listed:
        if not isinstance(jwk, Mapping):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or len(kid) > 128 or not (kid or lone_unnamed):
            continue
        if kid in found or kid in duplicated:
            duplicated.add(kid)
            found.pop(kid, None)
            continue
        if (
            jwk.get("use", "sig") == "sig"
            and ("key_ops" not in jwk or "verify" in (jwk.get("key_ops") or ()))
            and "d" not in jwk
        ):
            found[kid] = jwk
        else:
            duplicated.add(kid)  # a kid also used by a key we refuse is not trusted either
    return found


def verifying_keys(
    document: bytes | str | Mapping[str, Any],
    algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
    *,
    lone_unnamed: bool = False,
) -> dict[str, Any]:
    """The verification keys of a JWK Set usable with ``algorithms``, by ``kid`` (see
    :func:`jwk_set`): keys of another type, keys whose ``alg`` is not allowed, private
    keys, encryption keys, RSA keys under 2048 bits and malformed keys are left out."""
    wanted = {KEY_TYPES[a] for a in algorithms if a in KEY_TYPES}
    keys: dict[str, Any] = {}
    for kid, jwk in jwk_set(document, lone_unnamed=lone_unnamed).items():
        kty, crv = jwk.get("kty"), jwk.get("crv")
        if (kty, crv if kty != "RSA" else None) not in wanted or (
            "alg" in jwk and jwk["alg"] not in algorithms
        ):
            continue
        try:
            key = jwt.PyJWK(dict(jwk)).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if _key_type(key) is None:
            continue
        keys[kid] = key
    return keys


def _key_type(key: object) -> tuple[str, str | None] | None:
    """(kty, crv) of a public key trustmesh verifies with; None for any other key."""
    if isinstance(key, rsa.RSAPublicKey):
        return ("RSA", None) if key.key_size >= MIN_RSA_BITS else None
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVES.get(key.curve.name)
        return ("EC", crv) if crv else None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("OKP", "Ed25519")
    return None


def sign_jwt(claims: Mapping[str, Any], key: PrivateKey, *, kid: str, typ: str = "JWT") -> str:
    """``claims`` signed with ``key`` (ES256), naming ``kid`` and ``typ`` in the header."""
    return jwt.encode(dict(claims), key, algorithm="ES256", headers={"kid": kid, "typ": typ})


@dataclass(frozen=True)
class Expect:
    """What a token must be. ``issuer``/``audience`` None: any (the caller decides on
    it: a provider checking its own tokens for any audience); ``typ`` None: any header
    ``typ``, else the lower-cased ``typ`` must be one of them (``typ_optional``: or
    absent); ``required``: claims that must be present; ``strings``: claims that must
    be non-empty strings; ``leeway``: seconds of clock difference allowed;
    ``kid_optional``: a token may name no key when ``keys`` holds one."""

    issuer: str | None = None
    audience: str | Sequence[str] | None = None
    typ: frozenset[str] | None = None
    typ_optional: bool = False
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    required: tuple[str, ...] = ("exp",)
    strings: tuple[str, ...] = ()
    leeway: float = 0.0
    kid_optional: bool = False


def _refuse(reason: Reason, message: str) -> InvalidTokenError:
    return InvalidTokenError(message, reason=reason)


def unverified_header(
    token: object, algorithms: Sequence[str] = ALLOWED_ALGORITHMS, *, kid_optional: bool = False
) -> dict[str, Any]:
    """The JOSE header, after the checks that need no key (see the module docstring);
    ``kid_optional``: a header may name no key (then a set of one key is asked)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise _refuse(Reason.TOKEN_MALFORMED, "not a compact JWS")
    raw = token.encode("ascii", "replace")
    if raw.count(b".") != 2 or not set(raw) <= _B64URL or any(not p for p in raw.split(b".")):
        raise _refuse(Reason.TOKEN_MALFORMED, "not a compact JWS")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise _refuse(Reason.TOKEN_MALFORMED, "malformed header") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise _refuse(Reason.TOKEN_MALFORMED, f"algorithm {str(alg)[:16]!r} not allowed")
    if FORBIDDEN_HEADERS & header.keys():
        raise _refuse(Reason.TOKEN_MALFORMED, "header parameter not accepted")
    kid = header.get("kid")
    if not (kid is None and kid_optional) and (not isinstance(kid, str) or not 0 < len(kid) <= 128):
        raise _refuse(Reason.TOKEN_UNKNOWN_KEY, "no usable key id")
    return header


def _pick(header: Mapping[str, Any], keys: Mapping[str, Any]) -> Any:
    """The key of ``keys`` the header names (a header naming none: the only key), if it
    fits the header's algorithm (an RSA key never checks an ES256 signature)."""
    kid = header.get("kid")
    only = next(iter(keys.values())) if len(keys) == 1 else None
    key = only if kid is None else keys.get(kid)
    if key is None:
        raise _refuse(Reason.TOKEN_UNKNOWN_KEY, "unknown key id")
    if KEY_TYPES.get(header["alg"]) != _key_type(key):
        raise _refuse(Reason.TOKEN_MALFORMED, "algorithm does not fit the key")
    return key


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, read only to pick that issuer's keys (the signature,
    checked next with those keys, then vouches for it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, IndexError, binascii.Error, RecursionError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def verify_jws(
    token: object, keys: Mapping[str, Any], algorithms: Sequence[str] = ALLOWED_ALGORITHMS
) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a compact JWS signed by one of ``keys`` (no claims
    checked), or InvalidTokenError."""
    header = unverified_header(token, algorithms)
    key = _pick(header, keys)
    try:
        decoded = jwt.api_jws.PyJWS().decode_complete(str(token), key, algorithms=[header["alg"]])
    except jwt.InvalidSignatureError:
        raise _refuse(Reason.TOKEN_BAD_SIGNATURE, "bad signature") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise _refuse(Reason.TOKEN_MALFORMED, "malformed token") from None
    return header, decoded["payload"]


def verify_jwt(
    token: object, keys: Mapping[str, Any], expect: Expect, *, now: float
) -> dict[str, Any]:
    """The claims of ``token`` if one of ``keys`` (by ``kid``) signed it and it is what
    ``expect`` says at ``now``; InvalidTokenError naming the first failure otherwise."""
    header = unverified_header(token, expect.algorithms, kid_optional=expect.kid_optional)
    _check_typ(header, expect)
    key = _pick(header, keys)
    claims = _decode(str(token), key, header["alg"], expect)
    _check_claims(claims, expect, now)
    return claims


def unsigned_claims(token: object, expect: Expect, *, now: float) -> dict[str, Any] | None:
    """TEST-ONLY SWITCHES (``token-signature``, ``token-algorithms``:
    :mod:`trustmesh.config.switches`), nothing else: the claims of ``token`` checked as
    :func:`verify_jwt` checks them — ``typ``, issuer, audience, required claims, lifetime
    — its signature NOT checked, and no key asked for; None when its header names no
    algorithm of ``expect.algorithms`` (those a switch takes unsigned: verify it as
    usual). A ``none`` token's signature is empty (RFC 7519 §6.1)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        return None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return None
    if header.get("alg") not in expect.algorithms:
        return None
    _check_typ(header, expect)
    claims = _decode(token, None, str(header["alg"]), expect, signed=False)
    _check_claims(claims, expect, now)
    return claims


def _check_typ(header: Mapping[str, Any], expect: Expect) -> None:
    if expect.typ is not None:
        typ = header.get("typ")
        if not (typ is None and expect.typ_optional) and (
            not isinstance(typ, str) or typ.lower() not in expect.typ
        ):
            raise _refuse(Reason.TOKEN_MALFORMED, "not the expected type of token (typ)")


def _decode(
    token: str, key: Any, algorithm: str, expect: Expect, *, signed: bool = True
) -> dict[str, Any]:
    """The claims, their issuer and audience checked; ``signed`` False only for
    :func:`unsigned_claims`."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=expect.audience,
            issuer=expect.issuer,
            options={
                "verify_signature": signed,
                "require": list(expect.required),
                "verify_aud": expect.audience is not None,
                "verify_iss": expect.issuer is not None,
                "verify_exp": False,  # against the caller's clock, below
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise _refuse(Reason.TOKEN_BAD_SIGNATURE, "bad signature") from None
    except jwt.InvalidAudienceError:
        raise _refuse(Reason.TOKEN_WRONG_AUDIENCE, "wrong audience") from None
    except jwt.InvalidIssuerError:
        raise _refuse(Reason.TOKEN_WRONG_ISSUER, "wrong issuer") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise _refuse(Reason.TOKEN_MALFORMED, "malformed token") from None
    return claims


def _check_claims(claims: Mapping[str, Any], expect: Expect, now: float) -> None:
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _refuse(Reason.TOKEN_MALFORMED, f"{name} is not a number")
    for name in expect.strings:
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise _refuse(Reason.TOKEN_MALFORMED, f"{name} is not a string")
    leeway = expect.leeway
    if "exp" not in claims or now >= claims["exp"] + leeway:
        raise _refuse(Reason.TOKEN_EXPIRED, "expired")
    if "nbf" in claims and now + leeway < claims["nbf"]:
        raise _refuse(Reason.TOKEN_NOT_YET_VALID, "not yet valid")
    if "iat" in claims and now + leeway < claims["iat"]:
        raise _refuse(Reason.TOKEN_NOT_YET_VALID, "issued in the future")
