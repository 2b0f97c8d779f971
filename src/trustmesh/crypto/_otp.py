"""Time-based one-time passwords (RFC 6238) for MFA, on ``cryptography``'s TOTP.

A code is accepted in the current 30-second step or one step either side (clock skew),
and only if its step is later than the last step the user already used: a code cannot be
replayed, not even within its own step.
"""

from __future__ import annotations

import base64
import hmac
import os
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.hashes import SHA1, SHA256, SHA512
from cryptography.hazmat.primitives.twofactor.totp import TOTP

TOTP_STEP = 30
TOTP_DIGITS = 6
TOTP_WINDOW = 1  # steps accepted either side of now
_ALGORITHMS: dict[str, type[SHA1 | SHA256 | SHA512]] = {
    "SHA1": SHA1,
    "SHA256": SHA256,
    "SHA512": SHA512,
}


def new_totp_secret() -> bytes:
    """160 random bits (RFC 4226 §4 recommends at least 128, 160 for SHA-1)."""
    return os.urandom(20)


def _totp(secret: bytes, digits: int, algorithm: str) -> TOTP:
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"TOTP algorithm {algorithm!r}: expected one of {', '.join(_ALGORITHMS)}")
    return TOTP(secret, digits, _ALGORITHMS[algorithm](), TOTP_STEP, enforce_key_length=False)


def totp_code(
    secret: bytes, at: float, *, digits: int = TOTP_DIGITS, algorithm: str = "SHA1"
) -> str:
    """The code for time ``at`` (seconds since the epoch)."""
    return _totp(secret, digits, algorithm).generate(int(at)).decode("ascii")


def verify_totp(
    secret: bytes,
    code: str,
    now: float,
    *,
    last_step: int | None = None,
    digits: int = TOTP_DIGITS,
    algorithm: str = "SHA1",
) -> int | None:
    """The step ``code`` belongs to, if it is valid at ``now`` (±1 step) and later than
    ``last_step`` (the caller stores it: a used code never works again); else None."""
    if len(code) != digits or not code.isascii() or not code.isdigit():
        return None
    generator = _totp(secret, digits, algorithm)
    current = int(now) // TOTP_STEP
    matched = None
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        expected = generator.generate(step * TOTP_STEP)
        if hmac.compare_digest(expected, code.encode("ascii")):
            matched = step  # no early exit: the same work for every code
    if matched is None or (last_step is not None and matched <= last_step):
        return None
    return matched


def totp_uri(secret: bytes, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI authenticator apps read (from a QR code)."""
    label = quote(f"{issuer}:{account}", safe="")
    query = urlencode(
        {
            "secret": base64.b32encode(secret).decode("ascii").rstrip("="),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": TOTP_DIGITS,
            "period": TOTP_STEP,
        }
    )
    return f"otpauth://totp/{label}?{query}"
