"""Password storage: argon2id (RFC 9106), via argon2-cffi.

Parameters are RFC 9106 §4's second recommended option (t=3, m=64 MiB, p=4). A stored
hash carries its parameters, so they can be raised later: :func:`needs_rehash` says when
a hash verified with older ones should be replaced. Verifying against an unknown user
uses a dummy hash, so the answer takes as long as for a real one (no enumeration by
timing).
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from trustmesh.errors import UsageError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing cost must not be the attacker's to choose

_HASHER = PasswordHasher(
    time_cost=3, memory_cost=64 * 1024, parallelism=4, hash_len=32, salt_len=16
)


@functools.cache
def _dummy() -> str:
    """A hash of the same cost, checked for an unknown user. Made once a process, where
    passwords are checked (:func:`prepare_password_checks`), not at import: it costs
    ≈ 0.1 s of CPU, which every command and component paid at start."""
    return _HASHER.hash("trustmesh: no such user, same cost")


def prepare_password_checks() -> None:
    """Make the unknown user's dummy hash now (the identity provider, at start), not at
    the first unknown user's sign-in, which would then take twice as long as a known
    one's: telling that the user does not exist."""
    _dummy()


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsageError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    """An argon2id PHC string (``$argon2id$v=19$m=65536,t=3,p=4$salt$hash``)."""
    check_password_policy(password)
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored``; with no stored hash (an unknown user),
    the same work is done against a dummy and the answer is False."""
    if len(password) > MAX_PASSWORD_LENGTH:
        password = password[:MAX_PASSWORD_LENGTH]  # still do the work; it cannot match
        stored = None
    try:
        _HASHER.verify(stored or _dummy(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return stored is not None


def needs_rehash(stored: str) -> bool:
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
