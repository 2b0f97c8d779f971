"""Who may connect, by address: deny lists win, then an allow list (if any) must hold the
client. Checked on the client address the gateway established (see :mod:`headers`: an
untrusted hop cannot choose it), gateway-wide and then per route."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["IPRules"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(cidrs: Iterable[str]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


@dataclass(frozen=True)
class IPRules:
    allow: tuple[_Network, ...] | None
    deny: tuple[_Network, ...]

    @classmethod
    def of(cls, allow: Iterable[str] | None, deny: Iterable[str]) -> IPRules:
        return cls(_networks(allow) if allow is not None else None, _networks(deny))

    def admits(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False  # not an address: nothing vouches for it
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if any(ip in network for network in self.deny):
            return False
        return self.allow is None or any(ip in network for network in self.allow)
