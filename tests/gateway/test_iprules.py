"""Address rules: a deny list wins, an allow list (when set) must hold the client, and
what is not an address is refused."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.gateway.iprules import IPRules


@pytest.mark.parametrize(
    ("allow", "deny", "address", "admitted"),
    [
        (None, [], "203.0.113.9", True),
        (None, ["203.0.113.0/24"], "203.0.113.9", False),
        (["10.0.0.0/8"], [], "10.1.2.3", True),
        (["10.0.0.0/8"], [], "11.0.0.1", False),
        (["10.0.0.0/8"], ["10.9.0.0/16"], "10.9.1.1", False),  # deny wins
        (["10.0.0.0/8"], [], "::ffff:10.1.2.3", True),  # IPv4-mapped is the IPv4 address
        (None, ["10.0.0.0/8"], "::ffff:10.1.2.3", False),
        (["10.0.0.0/8"], [], "64:ff9b::a01:203", True),  # NAT64 (RFC 6052) of 10.1.2.3
        (None, ["10.0.0.0/8"], "64:ff9b::a01:203", False),
        (["10.0.0.0/8"], [], "2002:a01:203:7::1", True),  # 6to4 (RFC 3056) of 10.1.2.3
        (None, ["10.0.0.0/8"], "2002:a01:203::1", False),
        (None, ["10.0.0.0/8"], "2001:db8::a01:203", True),  # not an IPv4 encoding
        (None, ["10.0.0.0/8"], "64:ff9b:1::a01:203", True),  # nor is the local-use /48
        (None, [], "fe80::1%eth0", False),  # a zone index names an interface, not a host
        (["fe80::/10"], [], "fe80::1%eth0", False),
        (["fe80::/10"], [], "fe80::1", True),
        (None, ["2002::/16"], "2002:a01:203::1", False),  # IPv6 rules hold for the IPv6 form
        (None, ["::/0"], "64:ff9b::a01:203", False),
        (["64:ff9b::/96"], [], "64:ff9b::a01:203", True),
        (["::1/128"], [], "::1", True),
        (None, [], "not-an-address", False),
        ([], [], "10.1.2.3", False),  # an empty allow list admits no one
    ],
)
def test_rules(allow: list[str] | None, deny: list[str], address: str, admitted: bool) -> None:
    assert IPRules.of(allow, deny).admits(address) is admitted


networks = st.builds(
    lambda address, prefix: str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),
    st.ip_addresses(v=4),
    st.integers(min_value=0, max_value=32),
)


def _ipv6_forms(v4: ipaddress.IPv4Address, low: int) -> list[str]:
    """``v4`` as IPv4-mapped, NAT64 and 6to4 (with any subnet and interface bits)."""
    packed = int(v4)
    return [
        f"::ffff:{v4}",
        str(ipaddress.IPv6Address((0x64FF9B << 96) | packed)),
        str(ipaddress.IPv6Address((0x2002 << 112) | (packed << 80) | low)),
    ]


@given(
    st.ip_addresses(v=4),
    st.none() | st.lists(networks, max_size=3),
    st.lists(networks, max_size=3),
    st.integers(min_value=0, max_value=(1 << 80) - 1),
)
def test_an_ipv4_address_in_ipv6_form_meets_the_ipv4_rules(
    v4: ipaddress.IPv4Address, allow: list[str] | None, deny: list[str], low: int
) -> None:
    rules = IPRules.of(allow, deny)
    expected = rules.admits(str(v4))
    for form in _ipv6_forms(v4, low):
        assert rules.admits(form) is expected, form
