"""Addresses of this machine other than loopback, for the tests of listeners bound to a
wildcard (``listen: {host: 0.0.0.0}``): where one is reachable from beyond loopback."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

#: Documentation addresses (RFC 5737, RFC 3849): a UDP socket "connected" to one only
#: looks up the route out, and sends nothing.
_OUT = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def machine_address(family: socket.AddressFamily = socket.AF_INET) -> str | None:
    """A non-loopback, non-link-local address of this machine in ``family`` that a socket
    can bind, or None: the source address of the route out, else (IPv4) the host name's."""
    candidates = []
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.connect((_OUT[family], 9))
        candidates.append(str(udp.getsockname()[0]))
    if family == socket.AF_INET:
        with contextlib.suppress(OSError):
            candidates.append(socket.gethostbyname(socket.gethostname()))
    for address in candidates:
        parsed = ipaddress.ip_address(address)
        if parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified:
            continue
        with contextlib.suppress(OSError), socket.socket(family) as probe:
            probe.bind((address, 0))
            return address
    return None
