"""Client addresses in one form, for every rule that counts or matches them.

An IPv6 address may carry an IPv4 one, and then stands for that IPv4 client
(:func:`embedded_ipv4`):

* IPv4-mapped, ``::ffff:0:0/96`` (RFC 4291 §2.5.5.2: a dual-stack socket's IPv4 peer);
* NAT64's well-known prefix, ``64:ff9b::/96`` (RFC 6052 §2.1: the last 32 bits);
* 6to4, ``2002::/16`` (RFC 3056 §2: the 32 bits after the prefix).

An address with a zone index (``fe80::1%eth0``, RFC 4007 §11) names an interface of the
host that wrote it, not a client: :func:`parse_address` takes it for no address.

What one per-address limit counts (:func:`address_bucket`) is an IPv4 address however
spelled, or the IPv6 /64 an address is in: one host is usually given a whole /64, so
counting per /128 would be no limit at all. Pure: no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

__all__ = ["Address", "address_bucket", "as_ipv4", "embedded_ipv4", "parse_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


#: The longest text that spells an address (an IPv6 address ending in an IPv4 one):
#: nothing longer is parsed, nor cached (a header's value may be 32 KiB).
LONGEST_ADDRESS: Final = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")


def parse_address(text: str) -> Address | None:
    """The IPv4 or IPv6 address ``text`` spells; None for anything else, an address with
    a zone index included."""
    return _parse_address(text) if len(text) <= LONGEST_ADDRESS else None


@functools.lru_cache(maxsize=8192)  # clients come back: a request parses its address once
def _parse_address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return None
    return ip


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 address carries (see the module
    docstring); None for any other address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_bucket(text: str) -> str:
    """What one per-address limit counts for ``text``: the IPv4 address it is or carries,
    or its IPv6 /64 (``text`` itself if it is no address)."""
    return _address_bucket(text) if len(text) <= LONGEST_ADDRESS else text


@functools.lru_cache(maxsize=8192)
def _address_bucket(text: str) -> str:
    address = parse_address(text)
    if address is None:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        v4 = embedded_ipv4(address)
        if v4 is not None:
            return str(v4)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def as_ipv4(text: str) -> str:
    """``text``, or the IPv4 address it carries when it is an IPv4-mapped, NAT64 or 6to4
    address: what a policy on IPv4 ranges must see of that client."""
    if ":" not in text:
        return text
    address = parse_address(text)
    v4 = embedded_ipv4(address) if address is not None else None
    return text if v4 is None else str(v4)
