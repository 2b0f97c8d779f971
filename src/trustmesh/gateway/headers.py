"""What crosses the edge, in each direction.

Inbound, a client must not be able to speak for the gateway: every header that carries
an identity, a group, a token, a certificate, the client's address, another URL or
method, or trustmesh's (or another proxy's) own facts is removed — one list,
:data:`STRIPPED` and :data:`STRIPPED_FAMILIES` — and the gateway sets its own (RFC 9110
§7.6.1: hop-by-hop headers, and those the ``Connection`` header names, end at this hop).
The client's ``Authorization`` never reaches the upstream: the gateway's internal token
replaces it. A strict route (``request_headers``) forwards only the headers it names,
besides those the gateway sets (:data:`GATEWAY_SET`).

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
import logging
from collections.abc import Iterable, Sequence
from typing import Final

from trustmesh.config.gateway import GatewayRoute
from trustmesh.errors import UsageError
from trustmesh.policy.addresses import parse_address
from trustmesh.reasons import Reason

__all__ = [
    "GATEWAY_SET",
    "SECURITY_HEADERS",
    "STRIPPED",
    "STRIPPED_FAMILIES",
    "TrustedProxies",
    "client_address",
    "response_headers",
    "strict_headers",
    "stripped",
    "upstream_headers",
]

Headers = Sequence[tuple[bytes, bytes]]
log = logging.getLogger("trustmesh.gateway")

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
#: Request headers the gateway removes from every request: whatever a client could use to
#: claim an identity, a group, a token or a certificate, to pose as the client's address,
#: to re-route or re-method the request behind the gateway, or to speak for trustmesh or
#: for another proxy's authentication module. One list, maintained here (the README points
#: to it): by exact name, and by family (:data:`STRIPPED_FAMILIES`).
STRIPPED: Final = frozenset(
    {
        b"authorization",  # replaced by the internal token
        b"x-api-key",  # API keys stay at the edge too
        b"traceparent",  # the gateway's own trace context replaces the client's
        b"tracestate",
        b"host",  # the upstream's own is set by the client that forwards
        # addresses (the gateway sets X-Forwarded-For and X-Forwarded-Proto itself)
        b"forwarded",
        b"forwarded-for",
        b"x-forwarded",
        b"x-real-ip",
        b"client-ip",
        b"true-client-ip",  # Akamai, Cloudflare Enterprise
        b"fastly-client-ip",
        b"fly-client-ip",
        b"x-cluster-client-ip",
        b"x-originating-ip",
        b"x-proxyuser-ip",
        b"x-host",
        b"via",
        # identities, groups, tokens
        b"remote-user",  # Authelia, Apache and CGI-style stacks
        b"x-user",
        b"x-username",
        b"x-userid",
        b"x-email",
        b"x-groups",
        b"x-roles",
        b"x-principal",
        b"x-identity",
        b"x-userinfo",  # Kong
        b"x-access-token",
        b"x-id-token",
        b"gap-auth",  # oauth2-proxy
        b"gap-signature",
        # another URL or method than the one the gateway decided on
        b"x-rewrite-url",  # IIS
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-http-destinationurl",
        b"x-script-name",  # a mount prefix (SCRIPT_NAME) some WSGI middlewares take from it
        b"x-override-url",
        b"x-request-uri",
        b"x-rewrite-uri",
    }
)
#: Families of :data:`STRIPPED`: every header whose name starts with one of these.
STRIPPED_FAMILIES: Final = (
    b"x-forwarded-",  # X-Forwarded-User, -Groups, -Email, -Host, -Prefix, -Uri, -Method …
    b"x-original-",  # X-Original-URL, -URI, -Method, -Host, -Forwarded-For
    b"x-remote-",  # X-Remote-User, -Group, -Extra-* (Kubernetes front proxy), -Addr, -IP
    b"remote-",  # Remote-User, -Groups, -Email, -Name (Authelia)
    b"x-auth-",  # X-Auth-Request-* (oauth2-proxy), X-Auth-Userid, -Roles, -Token …
    b"x-authenticated-",  # X-Authenticated-User, -Userid, -Scope, -Groups (Kong)
    b"x-consumer-",  # Kong
    b"x-credential-",
    b"x-anonymous-",
    b"x-client-",  # X-Client-Cert, -Cert-Chain, -Verify, -DN, -IP
    b"x-ssl-",  # X-SSL-Cert, X-SSL-Client-*
    b"ssl-",  # SSL-Client-Cert
    b"x-tls-",
    b"x-arr-",  # X-ARR-ClientCert (Azure)
    b"x-spiffe-",
    b"x-jwt-",  # X-JWT-Assertion, -Payload, -Claim-* (Envoy, API managers)
    b"x-user-",
    b"x-webauth-",  # Grafana's auth proxy
    b"x-vouch-",
    b"x-pomerium-",
    b"x-ms-client-",  # Azure App Service authentication: X-MS-CLIENT-PRINCIPAL…
    b"x-ms-token-",
    b"x-amzn-",  # AWS: X-Amzn-Oidc-*, X-Amzn-Mtls-*
    b"x-goog-",  # Google IAP: X-Goog-Authenticated-User-*, X-Goog-IAP-JWT-Assertion
    b"x-appengine-",
    b"x-azure-",
    b"cf-",  # Cloudflare: CF-Connecting-IP, Cf-Access-Authenticated-User-Email, -Jwt-Assertion
    b"impersonate-",  # Kubernetes impersonation
    b"x-trustmesh-",  # trustmesh's own, and other proxies' internal headers
    b"x-envoy-",
    b"x-gateway-",
    b"x-istio-",
)
#: What the gateway sets on every request it forwards (besides ``Host`` and
#: ``Content-Length``, set by the client that forwards).
GATEWAY_SET: Final = frozenset(
    {b"authorization", b"traceparent", b"x-forwarded-for", b"x-forwarded-proto"}
)

#: trustmesh's and other proxies' internal headers: never relayed back to the client either.
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


def stripped(name: bytes) -> bool:
    """Is the (lower-case) request header ``name`` one the gateway never forwards? Also
    every name with ``_``: ``x_forwarded_for`` reads as X-Forwarded-For to CGI-style stacks."""
    return name in STRIPPED or name.startswith(STRIPPED_FAMILIES) or b"_" in name


_VERDICTS: dict[bytes, bool] = {}  # lower-case name -> never forwarded (a bounded memo)
_MAX_VERDICTS = 4096


def _never_forwarded(name: bytes) -> bool:
    """Hop-by-hop or :func:`stripped`, decided once per name (the per-request path)."""
    verdict = _VERDICTS.get(name)
    if verdict is None:
        verdict = name in HOP_BY_HOP or stripped(name)
        if len(_VERDICTS) < _MAX_VERDICTS:  # names are the client's: the memo stays small
            _VERDICTS[name] = verdict
    return verdict


def upstream_headers(
    headers: Headers,
    *,
    client: str,
    extra: Iterable[tuple[bytes, bytes]] = (),
    allowed: frozenset[bytes] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The request headers to forward: hop-by-hop and :func:`stripped` ones removed, and
    where ``allowed`` is given (a strict route) every one it does not name;
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` set by the gateway; ``extra`` added
    (the internal token, the trace context). Names are lower-cased (ASGI gives them so)."""
    named = _connection_tokens(headers)  # hop-by-hop for this message (RFC 9110 §7.6.1)
    kept = [
        (lowered, value)
        for name, value in headers
        if not _never_forwarded(lowered := name.lower())
        and lowered not in named
        and (allowed is None or lowered in allowed)
    ]
    kept.append((b"x-forwarded-for", client.encode("ascii")))
    kept.append((b"x-forwarded-proto", b"https"))
    kept.extend(extra)
    return kept


def strict_headers(route: GatewayRoute, where: str) -> frozenset[bytes] | None:
    """A strict route's request headers (None: the route is not strict). The names it
    lists that the gateway strips or sets itself are said once, at start: they are never
    let through."""
    if route.request_headers is None:
        return None
    names = frozenset(name.encode("ascii") for name in route.request_headers)
    moot = sorted(n.decode() for n in names if stripped(n) or n in GATEWAY_SET)
    if moot:
        log.warning(
            "%s.request_headers: %s never reach the service from a client "
            "(the gateway strips or sets them)",
            where,
            ", ".join(moot),
        )
    return names


_RESPONSE_DROP: Final = HOP_BY_HOP | _SECURITY_NAMES | {b"server"}


def response_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers, cleaned, with the security headers set."""
    named = _connection_tokens(headers)
    drop = _RESPONSE_DROP | named if named else _RESPONSE_DROP
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
