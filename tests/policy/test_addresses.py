"""Client addresses as the gateway reads them: parsed, bucketed for per-address limits,
and never a long header value kept in a cache."""

from __future__ import annotations

import ipaddress

import pytest

from trustmesh.policy import addresses
from trustmesh.policy.addresses import LONGEST_ADDRESS, address_bucket, parse_address


@pytest.mark.parametrize(
    ("text", "expected", "is_address"),
    [
        ("203.0.113.7", "203.0.113.7", True),
        ("2001:db8::1", "2001:db8::/64", True),
        ("::ffff:203.0.113.7", "203.0.113.7", True),
        ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "ffff:ffff:ffff:ffff::/64", True),
        ("fe80::1%eth0", "fe80::1%eth0", False),  # a zone index: counted as written
        ("not-an-address", "not-an-address", False),
    ],
)
def test_an_address_and_its_bucket(text: str, expected: str, is_address: bool) -> None:
    assert address_bucket(text) == expected
    parsed = parse_address(text)
    assert (parsed is not None) is is_address
    if parsed is not None:
        assert parsed == ipaddress.ip_address(text)


def test_the_longest_address_is_the_bound() -> None:
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    assert len(longest) == LONGEST_ADDRESS
    assert parse_address(longest) is not None
    assert parse_address(" " + longest) is None


def test_a_long_value_is_neither_parsed_nor_cached() -> None:
    """An X-Forwarded-For entry from a trusted proxy may be 32 KiB: 8,192 of them kept
    would hold 256 MiB."""
    long = "1" * (32 << 10)
    parsed, bucketed = addresses._parse_address.cache_info(), addresses._address_bucket.cache_info()
    assert parse_address(long) is None
    assert address_bucket(long) == long
    assert addresses._parse_address.cache_info().currsize == parsed.currsize
    assert addresses._address_bucket.cache_info().currsize == bucketed.currsize
    assert parse_address("198.51.100.1") is not None  # a short one is cached
    assert addresses._parse_address.cache_info().currsize >= 1
