"""Shamir's secret sharing over GF(2^8) (trustmesh.secrets.shamir).

The field is checked against an independent oracle (shift-and-xor multiplication, FIPS-197
§4.2 examples); known answers are shares built by hand from chosen polynomials, and shares
from ``split`` are checked to lie on a polynomial of the right degree with the oracle."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.secrets import shamir
from trustmesh.secrets.shamir import combine, split


def gmul(a: int, b: int) -> int:
    """GF(2^8) product mod x^8 + x^4 + x^3 + x + 1, by shift and xor (the test's oracle)."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return product


def ginv(a: int) -> int:
    return next(b for b in range(1, 256) if gmul(a, b) == 1)


def evaluate(coefficients: list[int], x: int) -> int:
    """c0 + c1 x + c2 x^2 + ..., term by term (no Horner, unlike the module)."""
    value = 0
    for power, coefficient in enumerate(coefficients):
        term = coefficient
        for _ in range(power):
            term = gmul(term, x)
        value ^= term
    return value


def interpolate(points: list[tuple[int, int]], at: int) -> int:
    """The value at ``at`` of the polynomial through ``points``, with the oracle."""
    value = 0
    for i, (xi, yi) in enumerate(points):
        weight = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                weight = gmul(weight, gmul(at ^ xj, ginv(xi ^ xj)))
        value ^= weight
    return value


# -- the field ------------------------------------------------------------------------------


def test_the_oracle_matches_fips_197() -> None:
    assert gmul(0x57, 0x83) == 0xC1  # FIPS-197 §4.2
    assert gmul(0x57, 0x13) == 0xFE  # FIPS-197 §4.2.1
    assert gmul(3, 7) == 9  # Vault's TestField_Mult


def test_field_tables_agree_with_the_oracle_everywhere() -> None:
    for a in range(256):
        for b in range(256):
            assert shamir._mul(a, b) == gmul(a, b)
            if b:
                assert gmul(shamir._div(a, b), b) == a


# -- known answers --------------------------------------------------------------------------


def test_hand_built_shares_combine_to_the_secret() -> None:
    secret = b"Vault"
    # one polynomial of degree 2 per byte: c0 is the secret byte, c1 and c2 chosen
    polynomials = [[byte, 0x1D + 7 * k, 0xC3 ^ k] for k, byte in enumerate(secret)]
    xs = [1, 2, 3, 0x80, 0xFF]
    shares = [bytes(evaluate(p, x) for p in polynomials) + bytes([x]) for x in xs]
    for chosen in itertools.combinations(shares, 3):
        for order in itertools.permutations(chosen):
            assert combine(list(order)) == secret
    assert combine(shares) == secret  # more than the threshold is fine
    assert combine(shares[:2]) != secret  # fewer gives another value, silently


def test_a_zero_top_coefficient_still_combines() -> None:
    secret = b"\x00\xff"
    polynomials = [[0x00, 0x42, 0x00], [0xFF, 0x00, 0x00]]  # degree below 2 is legal
    shares = [bytes(evaluate(p, x) for p in polynomials) + bytes([x]) for x in (9, 10, 11)]
    assert combine(shares) == secret


def test_split_shares_lie_on_a_polynomial_of_degree_threshold_minus_one() -> None:
    secret = b"a root key, 32 bytes long......."
    shares = split(secret, 5, 3)
    assert len(shares) == 5
    assert all(len(share) == len(secret) + 1 for share in shares)
    for k, byte in enumerate(secret):
        points = [(share[-1], share[k]) for share in shares[:3]]
        assert interpolate(points, 0) == byte
        for other in shares[3:]:  # three points fix the parabola; the others are on it
            assert interpolate(points, other[-1]) == other[k]


def test_x_coordinates_are_distinct_nonzero_and_can_use_the_whole_field() -> None:
    shares = split(b"k", 255, 2)
    assert sorted(share[-1] for share in shares) == list(range(1, 256))
    assert combine(shares[100:102]) == b"k"


def test_one_of_one() -> None:
    (share,) = split(b"secret", 1, 1)
    assert share[:-1] == b"secret"  # degree 0: the share is the secret
    assert share[-1] != 0
    assert combine([share], threshold=1) == b"secret"
    with pytest.raises(ValueError, match="at least 2 shares"):
        combine([share])


# -- properties -----------------------------------------------------------------------------


@st.composite
def splits(draw: st.DrawFn) -> tuple[bytes, int, list[bytes]]:
    secret = draw(st.binary(min_size=1, max_size=48))
    count = draw(st.integers(2, 10))
    threshold = draw(st.integers(2, count))
    return secret, threshold, split(secret, count, threshold)


@settings(max_examples=150)
@given(splits(), st.data())
def test_any_threshold_shares_recover_the_secret(
    case: tuple[bytes, int, list[bytes]], data: st.DataObject
) -> None:
    secret, threshold, shares = case
    size = data.draw(st.integers(threshold, len(shares)))
    chosen = data.draw(st.permutations(shares))[:size]
    assert combine(chosen, threshold=threshold) == secret


@settings(max_examples=150)
@given(st.binary(min_size=16, max_size=48), st.integers(2, 8), st.data())
def test_threshold_minus_one_shares_do_not_give_the_secret(
    secret: bytes, threshold: int, data: st.DataObject
) -> None:
    shares = split(secret, threshold + 2, threshold)
    chosen = data.draw(st.permutations(shares))[: threshold - 1]
    # combining T-1 points gives some value; equal to a 16-byte secret with chance 2^-128
    assert combine(chosen, threshold=threshold - 1) != secret


def test_one_share_of_a_one_byte_secret_fits_every_candidate_secret() -> None:
    """Information-theoretic hiding, T = 2: for a share (y, x), each candidate secret s has
    exactly one slope a with s + a·x = y. This fails if x could be 0 or if multiplication
    by x were not a bijection."""
    for _ in range(20):
        share = split(b"\x2a", 3, 2)[0]
        y, x = share
        for candidate in range(256):
            slopes = [a for a in range(256) if candidate ^ gmul(a, x) == y]
            assert len(slopes) == 1


@pytest.mark.parametrize("secret", [b"\x00", b"\xff"])
def test_a_share_byte_takes_every_value_whatever_the_secret(secret: bytes) -> None:
    """T = 2 over many splits: the first share's byte must be uniform, so every value
    (the secret's own included: a zero slope) appears. A split that drew nonzero slopes
    only would never give y == secret and would fail here (chance of a false alarm with
    uniform slopes: about 256·e^(-6000/256) < 1e-7)."""
    seen = Counter(split(secret, 2, 2)[0][0] for _ in range(6000))
    assert set(seen) == set(range(256))


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "shares", "threshold", "message"),
    [
        (b"", 3, 2, "empty secret"),
        ("text", 3, 2, "must be bytes"),
        (b"s", 0, 1, "from 1 to 255"),
        (b"s", 256, 2, "from 1 to 255"),
        (b"s", True, 1, "from 1 to 255"),
        (b"s", 3, 0, "positive"),
        (b"s", 3, 4, "cannot exceed"),
        (b"s", 3, 1, "at least 2"),
        (b"s", 2, 1, "at least 2"),
    ],
)
def test_split_refuses(secret: bytes, shares: int, threshold: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split(secret, shares, threshold)


def test_combine_refuses_bad_sets() -> None:
    a, b, c = split(b"secret", 3, 2)
    with pytest.raises(ValueError, match="at least 2 shares"):
        combine([])
    with pytest.raises(ValueError, match="at least 2 shares"):
        combine([a])
    with pytest.raises(ValueError, match="at least 3 shares"):
        combine([a, b], threshold=3)
    with pytest.raises(ValueError, match="differ in length"):
        combine([a, b[:-2] + b[-1:]])
    with pytest.raises(ValueError, match="same x-coordinate"):
        combine([a, a])
    with pytest.raises(ValueError, match="same x-coordinate"):
        combine([a, bytes(len(a) - 1) + a[-1:], c])
    with pytest.raises(ValueError, match="x-coordinate 0"):
        combine([a, b[:-1] + b"\x00"])
    with pytest.raises(ValueError, match="at least one byte"):
        combine([b"\x01", b"\x02"])
    with pytest.raises(ValueError, match="from 1 to 255"):
        combine([a, b], threshold=0)
    with pytest.raises(ValueError, match="must be bytes"):
        combine([a, "text"])  # type: ignore[list-item]


def test_messages_never_quote_a_share() -> None:
    a, b = split(b"top secret value", 2, 2)
    with pytest.raises(ValueError, match="differ in length") as caught:
        combine([a, b[:-1]])
    assert a.hex() not in str(caught.value)
    assert repr(a) not in str(caught.value)
