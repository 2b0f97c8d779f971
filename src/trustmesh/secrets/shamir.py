"""Shamir's secret sharing over GF(2^8), byte by byte, as Vault's ``shamir`` package does it.

The field is GF(2^8) with the AES reduction polynomial x^8 + x^4 + x^3 + x + 1 (``0x11b``,
FIPS-197 §4.2), the field Vault's ``shamir`` package (hashicorp/vault, ``shamir/shamir.go``)
works in; the layout of a share is Vault's too, so a share from either side combines on the
other:

    share = f_1(x) | f_2(x) | ... | f_n(x) | x          (n = the secret's length)

where ``f_k`` is a random polynomial of degree ``threshold - 1`` whose constant term is the
secret's ``k``-th byte (every other coefficient drawn uniformly from ``secrets``, zero
included, so that ``threshold - 1`` shares are uniformly distributed whatever the secret:
Shamir 1979, "How to share a secret"), and ``x`` is the share's x-coordinate: distinct,
nonzero, drawn at random from ``secrets``. :func:`combine` interpolates each byte's
polynomial at 0 (Lagrange).

The rules:

- :func:`split`: ``1 <= threshold <= shares <= 255``, and ``threshold >= 2`` unless
  ``shares == 1`` (a 1-of-N split with N > 1 would give the whole secret to every holder).
  A 1-of-1 split is the secret followed by its x-coordinate.
- :func:`combine` needs at least ``threshold`` shares, 2 by default. A share does not say
  how many shares its split needed, so a single share is accepted only when the caller
  declares a 1-of-1 split (``threshold=1``). Shares of different lengths, an x-coordinate
  of 0 and a repeated x-coordinate are refused.
- Shamir's scheme carries no integrity: too few shares, or shares of different splits,
  combine to a wrong value without any error. The caller checks the result (the barrier
  opens its root key with it, under AEAD).

Timing: the field arithmetic has no branch on secret values (a zero operand is masked out,
not tested with ``if``), and every secret byte goes through the same operations. It is not
constant-time all the same: the log/exp tables are indexed by secret bytes (a cache-timing
channel to an attacker on the same machine, which Vault's Go code, also table-driven,
shares), and CPython makes no timing promise for its integer operations. The loops depend
only on public values: the number of shares, the threshold, the length, the x-coordinates.
Errors raise ``ValueError`` and never quote a share or the secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

__all__ = ["MAX_SHARES", "combine", "split"]

MAX_SHARES = 255  # the nonzero elements of GF(2^8): one x-coordinate each

_POLYNOMIAL = 0x11B
_GENERATOR = 0x03  # generates the multiplicative group of GF(2^8) mod 0x11b


def _tables() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """exp (doubled, so that log a + log b needs no reduction mod 255) and log tables."""
    exp = [0] * 510
    log = [0] * 256  # log 0 is undefined: 0 here, and the product is masked out
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        # value *= 3, i.e. value ^ (value * 2) with the product reduced mod 0x11b
        doubled = value << 1
        doubled ^= _POLYNOMIAL & -(doubled >> 8)
        value ^= doubled
    return tuple(exp), tuple(log)


_EXP, _LOG = _tables()


def _mul(a: int, b: int) -> int:
    """a · b in GF(2^8): the masked table product (0 when either is 0), no branch."""
    return _EXP[_LOG[a] + _LOG[b]] & -((a != 0) & (b != 0))


def _div(a: int, b: int) -> int:
    """a / b in GF(2^8) for b != 0 (b is an x-coordinate difference: public, never 0)."""
    return _EXP[_LOG[a] + 255 - _LOG[b]] & -(a != 0)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split(secret: bytes, shares: int, threshold: int) -> list[bytes]:
    """Split ``secret`` into ``shares`` shares, any ``threshold`` of which recover it."""
    if not isinstance(secret, bytes | bytearray):
        raise ValueError("the secret must be bytes")
    if not secret:
        raise ValueError("cannot split an empty secret")
    if not _is_count(shares) or not 1 <= shares <= MAX_SHARES:
        raise ValueError(f"shares must be an integer from 1 to {MAX_SHARES}")
    if not _is_count(threshold) or threshold < 1:
        raise ValueError("threshold must be a positive integer")
    if threshold > shares:
        raise ValueError(f"threshold ({threshold}) cannot exceed shares ({shares})")
    if threshold < 2 and shares > 1:
        raise ValueError(
            "threshold must be at least 2 when there is more than one share "
            "(a 1-of-N split would give the whole secret to every holder)"
        )
    xs = secrets.SystemRandom().sample(range(1, MAX_SHARES + 1), shares)
    degree = threshold - 1
    coefficients = secrets.token_bytes(len(secret) * degree)
    out = [bytearray(len(secret) + 1) for _ in xs]
    for index, byte in enumerate(secret):
        higher = coefficients[index * degree : (index + 1) * degree]
        for share, x in zip(out, xs, strict=True):
            y = 0
            for coefficient in reversed(higher):  # Horner: ((c_d x + c_{d-1}) x + ...) x
                y = _mul(y, x) ^ coefficient
            share[index] = _mul(y, x) ^ byte
    for share, x in zip(out, xs, strict=True):
        share[-1] = x
    return [bytes(share) for share in out]


def combine(shares: Sequence[bytes], *, threshold: int = 2) -> bytes:
    """The secret at x = 0 of the polynomials through ``shares`` (at least ``threshold``).

    ``threshold=1`` declares a 1-of-1 split, the only case in which one share is enough.
    """
    if not _is_count(threshold) or not 1 <= threshold <= MAX_SHARES:
        raise ValueError(f"threshold must be an integer from 1 to {MAX_SHARES}")
    if len(shares) < threshold:
        raise ValueError(f"at least {threshold} shares are needed, got {len(shares)}")
    if any(not isinstance(share, bytes | bytearray) for share in shares):
        raise ValueError("every share must be bytes")
    length = len(shares[0])
    if length < 2:
        raise ValueError("a share holds at least one byte and its x-coordinate")
    if any(len(share) != length for share in shares):
        raise ValueError("the shares differ in length (they come from different splits)")
    xs = [share[-1] for share in shares]
    if 0 in xs:
        raise ValueError("a share has the x-coordinate 0, which no split produces")
    if len(set(xs)) != len(xs):
        raise ValueError("two shares have the same x-coordinate (one share given twice?)")
    # Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); minus is xor in GF(2^8).
    basis = []
    for i, xi in enumerate(xs):
        weight = 1
        for j, xj in enumerate(xs):
            if j != i:  # indices, not secrets
                weight = _mul(weight, _div(xj, xj ^ xi))
        basis.append(weight)
    secret = bytearray(length - 1)
    for index in range(length - 1):
        value = 0
        for share, weight in zip(shares, basis, strict=True):
            value ^= _mul(weight, share[index])
        secret[index] = value
    return bytes(secret)
