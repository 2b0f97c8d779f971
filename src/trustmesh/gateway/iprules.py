"""Who may connect, by address: deny lists win, then an allow list (if any) must hold the
client. Checked on the client address the gateway established (see :mod:`headers`: an
untrusted hop cannot choose it), gateway-wide and then per route.

An IPv6 address that carries an IPv4 one also meets the IPv4 rules as that address
(:func:`embedded_ipv4`), so ``deny_ips: [203.0.113.0/24]`` holds however the client's
address is spelled, and an IPv6 rule (``deny_ips: ["2002::/16"]``) still holds for the
IPv6 form:

* IPv4-mapped, ``::ffff:0:0/96`` (RFC 4291 §2.5.5.2: a dual-stack socket's IPv4 peer);
* NAT64's well-known prefix, ``64:ff9b::/96`` (RFC 6052 §2.1: the last 32 bits);
* 6to4, ``2002::/16`` (RFC 3056 §2: the 32 bits after the prefix).

An address with a zone index (``fe80::1%eth0``, RFC 4007 §11) names an interface of the
host that wrote it, not a client: :func:`parse_address` takes it for no address, and
what is no address is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from trustmesh.policy.addresses import embedded_ipv4, parse_address

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
        ip = parse_address(address)
        if ip is None:
            return False  # not an address: nothing vouches for it
        v4 = embedded_ipv4(ip)
        forms = (ip,) if v4 is None else (ip, v4)  # each meets the rules of its version
        if any(form in network for form in forms for network in self.deny):
            return False
        return self.allow is None or any(
            form in network for form in forms for network in self.allow
        )
