"""Address rules: a deny list wins, an allow list (when set) must hold the client, and
what is not an address is refused."""

from __future__ import annotations

import pytest

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
        (["::1/128"], [], "::1", True),
        (None, [], "not-an-address", False),
        ([], [], "10.1.2.3", False),  # an empty allow list admits no one
    ],
)
def test_rules(allow: list[str] | None, deny: list[str], address: str, admitted: bool) -> None:
    assert IPRules.of(allow, deny).admits(address) is admitted
