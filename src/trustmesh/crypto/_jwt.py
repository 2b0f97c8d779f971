"""JWT recipes (ES256) for JWT-SVIDs, on PyJWT: no hand-written JOSE."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import jwt
from jwt.algorithms import ECAlgorithm

from trustmesh.crypto._x509 import PrivateKey, PublicKey
from trustmesh.errors import InvalidTokenError
from trustmesh.reasons import Reason

#: The only algorithms trustmesh accepts on JWT-SVIDs; `none` and HMAC never.
ALLOWED_ALGORITHMS = ("ES256",)
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})


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


def sign_jwt(claims: Mapping[str, Any], key: PrivateKey, *, kid: str, typ: str = "JWT") -> str:
    return jwt.encode(dict(claims), key, algorithm="ES256", headers={"kid": kid, "typ": typ})


def verify_jwt(
    token: str,
    keys: Mapping[str, PublicKey],
    *,
    audience: str,
    now: float,
    leeway: float = 0,
    required: Sequence[str] = ("exp", "aud", "sub"),
) -> dict[str, Any]:
    """Verify an ES256 JWT against ``keys`` (by kid) and check aud/exp/nbf at ``now``.

    Raises InvalidTokenError with ``reason`` set to a kebab-case code.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidTokenError("malformed token", reason=Reason.TOKEN_MALFORMED) from None
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise InvalidTokenError(f"algorithm {alg!r} not allowed", reason=Reason.TOKEN_MALFORMED)
    if _FORBIDDEN_HEADERS & header.keys():
        raise InvalidTokenError("forbidden JOSE header", reason=Reason.TOKEN_MALFORMED)
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise InvalidTokenError("unknown key id", reason=Reason.TOKEN_UNKNOWN_KEY)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            keys[kid],
            algorithms=list(ALLOWED_ALGORITHMS),
            audience=audience,
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": list(required),
            },
        )
    except jwt.InvalidAudienceError:
        raise InvalidTokenError("wrong audience", reason=Reason.TOKEN_WRONG_AUDIENCE) from None
    except jwt.InvalidSignatureError:
        raise InvalidTokenError("bad signature", reason=Reason.TOKEN_BAD_SIGNATURE) from None
    except jwt.InvalidTokenError as exc:
        raise InvalidTokenError(
            f"invalid token: {type(exc).__name__}", reason=Reason.TOKEN_MALFORMED
        ) from None
    exp = claims.get("exp")
    # RFC 7519 §4.1.4: the token must not be accepted on or after its expiration time.
    if not isinstance(exp, int | float) or isinstance(exp, bool) or now >= exp + leeway:
        raise InvalidTokenError("expired", reason=Reason.TOKEN_EXPIRED)
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or now + leeway < nbf):
        raise InvalidTokenError("not yet valid", reason=Reason.TOKEN_NOT_YET_VALID)
    return claims
