"""What crosses the edge, in each direction.

Inbound, a client must not be able to speak for the gateway: every header that carries
identity, a certificate, the client's address or trustmesh's own facts is removed and
the gateway sets its own (RFC 9110 §7.6.1: hop-by-hop headers, and those the
``Connection`` header names, end at this hop). The client's ``Authorization`` never
reaches the upstream: the gateway's internal token replaces it.

Outbound, the upstream's hop-by-hop and internal headers are dropped and the security
headers every response carries are set.

The client address is the TCP peer, unless that peer is a trusted proxy: then
``X-Forwarded-For`` is read from the right, skipping trusted hops (the leftmost entries
are whatever the client wrote, and are never believed). An entry the walk reaches that
is not an address (a zone index included) is refused — the request is a 400 — never
read as "the proxy itself".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from trustmesh.errors import UsageError
from trustmesh.policy.addresses import parse_address
from trustmesh.reasons import Reason

__all__ = [
    "SECURITY_HEADERS",
    "TrustedProxies",
    "client_address",
    "response_headers",
    "upstream_headers",
]

Headers = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Headers a client could use to claim an identity, a certificate or an address, or to
#: pose as trustmesh: never forwarded as sent.
SPOOFABLE: Final = frozenset(
    {
        b"authorization",  # replaced by the internal token
        b"x-api-key",  # API keys stay at the edge too
        b"traceparent",  # the gateway's own trace context replaces the client's
        b"tracestate",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-real-ip",
        b"x-client-ip",
        b"x-original-forwarded-for",
        b"x-forwarded-client-cert",
        b"x-client-cert",
        b"x-ssl-client-cert",
        b"x-ssl-client-verify",
        b"x-ssl-client-s-dn",
        b"ssl-client-cert",
        b"x-remote-user",
        b"x-user",
        b"x-userinfo",
        b"x-jwt-payload",
        b"x-auth-request-user",
        b"x-auth-request-email",
        b"host",  # the upstream's own is set by the client that forwards
    }
)
_INTERNAL_PREFIXES: Final = (b"x-trustmesh-", b"x-envoy-", b"x-gateway-")

SECURITY_HEADERS: Final = (
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_SECURITY_NAMES: Final = frozenset(name for name, _ in SECURITY_HEADERS)


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _internal(name: bytes) -> bool:
    return name.startswith(_INTERNAL_PREFIXES)


def upstream_headers(
    headers: Headers, *, client: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """The request headers to forward: hop-by-hop, spoofable and internal ones removed;
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` set by the gateway; ``extra`` added
    (the internal token, the trace context). Names are lower-cased (ASGI gives them so)."""
    drop = HOP_BY_HOP | _connection_tokens(headers)
    kept = [
        (name.lower(), value)
        for name, value in headers
        if (lowered := name.lower()) not in drop
        and lowered not in SPOOFABLE
        and not _internal(lowered)
        and b"_" not in lowered  # x_forwarded_for reads as X-Forwarded-For to CGI-style stacks
    ]
    kept.append((b"x-forwarded-for", client.encode("ascii")))
    kept.append((b"x-forwarded-proto", b"https"))
    kept.extend(extra)
    return kept


def response_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers, cleaned, with the security headers set."""
    drop = HOP_BY_HOP | _connection_tokens(headers) | _SECURITY_NAMES | {b"server"}
    kept = [
        (name.lower(), value)
        for name, value in headers
        if (lowered := name.lower()) not in drop
        and not _internal(lowered)
        and not lowered.startswith(b"access-control-")  # CORS is the gateway's to grant
    ]
    kept.extend(SECURITY_HEADERS)
    return kept


class TrustedProxies:
    """The hops whose ``X-Forwarded-For`` is believed (none by default)."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(c) for c in cidrs)

    def __contains__(self, address: str) -> bool:
        # the hop's own address only: an IPv4 proxy is never trusted as a NAT64 or 6to4
        # spelling of its address, which another network could send from
        ip = parse_address(address)
        return ip is not None and any(ip in network for network in self._networks)

    def __bool__(self) -> bool:
        return bool(self._networks)


def client_address(peer: str, headers: Headers, trusted: TrustedProxies) -> str:
    """The client's address (in its canonical text form): the peer, or — where the peer
    is a trusted proxy — the rightmost ``X-Forwarded-For`` entry that is not itself a
    trusted proxy. A peer that is not an address is returned as it is (the address rules
    refuse it); an entry the walk reaches that is not one raises :class:`UsageError`
    (reason ``forwarded-for-invalid``)."""
    own = parse_address(peer)
    if own is None or not trusted or peer not in trusted:
        return peer if own is None else str(own)
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            hops.extend(h.strip() for h in value.decode("latin-1").split(","))
    current = str(own)
    for position, entry in enumerate(reversed(hops), start=1):
        hop = _hop_address(entry)
        if hop is None:
            raise UsageError(
                f"X-Forwarded-For entry {position} from the right is not an address",
                reason=Reason.FORWARDED_FOR_INVALID,
            )
        current = hop
        if hop not in trusted:
            break
    return current


def _hop_address(entry: str) -> str | None:
    """The address of an ``X-Forwarded-For`` entry: ``1.2.3.4``, ``2001:db8::1``, or with
    a port as some load balancers write it (``1.2.3.4:5678``, ``[2001:db8::1]:443``)."""
    text, port = entry, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text, port = text[1:end], text[end + 1 :]
    elif text.count(":") == 1:
        text, _, digits = text.partition(":")
        port = ":" + digits
    if port and not (port.startswith(":") and port[1:].isdigit() and len(port) <= 6):
        return None
    ip = parse_address(text)
    return None if ip is None else str(ip)
