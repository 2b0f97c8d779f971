"""Header hygiene at the edge: what a client sends that could speak for the gateway is
removed, hop-by-hop headers end here, responses carry the security headers, and the
client address comes from X-Forwarded-For only through trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trustmesh.errors import UsageError
from trustmesh.gateway.headers import (
    SECURITY_HEADERS,
    STRIPPED_FAMILIES,
    TrustedProxies,
    client_address,
    response_headers,
    stripped,
    upstream_headers,
)
from trustmesh.gateway.routes import request_host
from trustmesh.reasons import Reason

ATTACK = [
    (b"host", b"shop.example"),
    (b"authorization", b"Bearer user-token"),
    (b"x-forwarded-for", b"10.0.0.1"),
    (b"forwarded", b"for=10.0.0.1"),
    (b"x-real-ip", b"10.0.0.1"),
    (b"x-forwarded-client-cert", b"Hash=abc;URI=spiffe://shop.example/admin"),
    (b"x-ssl-client-cert", b"-----BEGIN CERTIFICATE-----"),
    (b"X-Trustmesh-Spiffe-Id", b"spiffe://shop.example/admin"),
    (b"x-remote-user", b"admin"),
    (b"connection", b"keep-alive, x-secret-hop"),
    (b"x-secret-hop", b"1"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"websocket"),
    (b"te", b"trailers"),
    (b"content-type", b"application/json"),
    (b"accept", b"*/*"),
    (b"cookie", b"session=1"),
    (b"x_forwarded_for", b"10.0.0.1"),  # CGI-style stacks read these as the dashed names
    (b"x_api_key", b"tmk_x"),
    (b"x-trustmesh_peer", b"spiffe://shop.example/admin"),
    (b"x-api-key", b"tmk_secret"),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    (b"tracestate", b"vendor=1"),
]


def test_a_client_cannot_speak_for_the_gateway() -> None:
    out = upstream_headers(
        ATTACK, client="203.0.113.9", extra=[(b"authorization", b"Bearer internal")]
    )
    names = [n for n, _ in out]
    assert dict(out)[b"authorization"] == b"Bearer internal"
    assert names.count(b"authorization") == 1
    for gone in (
        b"host",
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-client-cert",
        b"x-ssl-client-cert",
        b"x-trustmesh-spiffe-id",
        b"x-remote-user",
        b"connection",
        b"x-secret-hop",  # named by Connection: hop-by-hop
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"x_forwarded_for",
        b"x_api_key",
        b"x-trustmesh_peer",
        b"x-api-key",
        b"traceparent",  # the gateway's own comes in extra
        b"tracestate",
    ):
        assert gone not in names, gone
    assert dict(out)[b"x-forwarded-for"] == b"203.0.113.9"  # the gateway's, not the client's
    assert names.count(b"x-forwarded-for") == 1
    assert dict(out)[b"content-type"] == b"application/json"
    assert dict(out)[b"cookie"] == b"session=1"


def test_responses_carry_the_security_headers_and_no_internal_ones() -> None:
    out = response_headers(
        [
            (b"content-type", b"application/json"),
            (b"server", b"uvicorn"),
            (b"x-frame-options", b"ALLOWALL"),
            (b"x-trustmesh-debug", b"1"),
            (b"connection", b"close"),
            (b"set-cookie", b"a=1"),
        ]
    )
    headers = dict(out)
    for name, value in SECURITY_HEADERS:
        assert headers[name] == value
    assert b"server" not in headers
    assert b"x-trustmesh-debug" not in headers
    assert b"connection" not in headers
    assert [n for n, _ in out].count(b"x-frame-options") == 1
    assert headers[b"set-cookie"] == b"a=1"


def test_x_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    xff = [(b"x-forwarded-for", b"1.2.3.4, 198.51.100.7")]
    nobody = TrustedProxies()
    assert client_address("203.0.113.9", xff, nobody) == "203.0.113.9"
    proxy = TrustedProxies(["10.0.0.0/8"])
    assert client_address("203.0.113.9", xff, proxy) == "203.0.113.9"  # peer not trusted
    # through the proxy: the rightmost entry not itself a proxy; the client's own
    # leftmost claim (1.2.3.4) is never taken
    assert client_address("10.0.0.5", xff, proxy) == "198.51.100.7"
    chained = [(b"x-forwarded-for", b"1.2.3.4, 198.51.100.7, 10.0.0.9")]
    assert client_address("10.0.0.5", chained, proxy) == "198.51.100.7"
    assert client_address("10.0.0.5", [], proxy) == "10.0.0.5"
    # with a port, as some load balancers write the entry
    for entry, address in (
        (b"198.51.100.7:5678", "198.51.100.7"),
        (b"[2001:db8::7]:443", "2001:db8::7"),
        (b"2001:db8::7", "2001:db8::7"),
    ):
        assert client_address("10.0.0.5", [(b"x-forwarded-for", entry)], proxy) == address


PROXY = TrustedProxies(["10.0.0.0/8"])


def _refused(value: bytes) -> UsageError:
    with pytest.raises(UsageError) as caught:
        client_address("10.0.0.5", [(b"x-forwarded-for", value)], PROXY)
    return caught.value


@pytest.mark.parametrize(
    "value",
    [
        b"1.2.3.4, not-an-ip",
        b"198.51.100.7:http",
        b"[2001:db8::7",
        b"[2001:db8::7]x",
        b"1.2.3.4:1234567",
        b"fe80::1%eth0",  # a zone index (RFC 4007 §11) names an interface, not a host
        b"[fe80::1%25eth0]:443",
        b"198.51.100.7, ",
        b"",
        b"unknown",  # RFC 7239's obfuscated node, which X-Forwarded-For does not have
    ],
)
def test_a_forwarded_for_entry_that_is_not_an_address_is_refused(value: bytes) -> None:
    """Never "the proxy's own address": a proxy that cannot say who its client is has
    not said it (the gateway answers 400)."""
    assert _refused(value).reason == Reason.FORWARDED_FOR_INVALID


def test_only_the_entries_the_walk_reaches_must_be_addresses() -> None:
    """Left of the client's entry is whatever the client wrote: never read, never refused."""
    header = [(b"x-forwarded-for", b"<script>, 198.51.100.7, 10.0.0.9")]
    assert client_address("10.0.0.5", header, PROXY) == "198.51.100.7"


@pytest.mark.parametrize(
    ("entry", "address"),
    [
        (b"64:FF9B::C633:6407", "64:ff9b::c633:6407"),
        (b"[64:ff9b::c633:6407]:443", "64:ff9b::c633:6407"),
        (b"2002:c633:6407:1:0::9", "2002:c633:6407:1::9"),
        (b"::ffff:198.51.100.7", "::ffff:c633:6407"),
        (b"2001:DB8::7", "2001:db8::7"),
    ],
)
def test_the_client_address_is_in_canonical_form(entry: bytes, address: str) -> None:
    """One spelling per address, whether it came from the proxy or is the peer (the
    address rules then meet an IPv6 form of an IPv4 address as both: see test_iprules)."""
    assert client_address("10.0.0.5", [(b"x-forwarded-for", entry)], PROXY) == address
    peer = entry.decode().removeprefix("[").removesuffix("]:443")
    assert client_address(peer, [], TrustedProxies()) == address


def test_a_proxy_is_trusted_by_its_own_address_only() -> None:
    """Never by an IPv6 spelling of it another network could send from, nor with a zone."""
    header = [(b"x-forwarded-for", b"198.51.100.7")]
    for peer in ("64:ff9b::a00:5", "2002:a00:5::1", "fe80::1%eth0"):
        assert client_address(peer, header, PROXY) != "198.51.100.7", peer
    assert "fe80::1%eth0" not in TrustedProxies(["fe80::/10"])


@given(st.text(max_size=40))
def test_any_entry_is_an_address_or_refused(entry: str) -> None:
    header = [(b"x-forwarded-for", entry.encode("utf-8"))]
    try:
        found = client_address("10.0.0.5", header, PROXY)
    except UsageError as exc:
        refused: UsageError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.reason == Reason.FORWARDED_FOR_INVALID
        return
    parsed = ipaddress.ip_address(found)  # an address, in its canonical form
    assert str(parsed) == found
    assert "%" not in found


@given(st.ip_addresses(v=6))
def test_a_scoped_ipv6_entry_is_always_refused(address: ipaddress.IPv6Address) -> None:
    assume(address.scope_id is None)
    _refused(f"{address}%eth0".encode())


def test_a_host_name_with_a_trailing_dot_is_the_same_host() -> None:
    assert request_host(b"Shop.Example.:8443") == "shop.example"
    assert request_host(b"shop.example.") == "shop.example"
    assert request_host(b"[::1]:8443") == "[::1]"


addresses = st.ip_addresses(v=4).map(str)


@given(addresses, st.lists(addresses, max_size=6))
def test_rotating_x_forwarded_for_never_moves_an_untrusted_client(
    peer: str, claimed: list[str]
) -> None:
    """What an untrusted client writes in X-Forwarded-For never changes its address."""
    header = [(b"x-forwarded-for", ", ".join(claimed).encode())] if claimed else []
    found = client_address(peer, header, TrustedProxies(["127.0.0.0/8"]))
    assert found in (peer, *claimed)
    if not peer.startswith("127."):
        assert found == peer


def test_identity_and_routing_families_are_stripped_and_others_kept() -> None:
    sent = [
        (b"X-Forwarded-Groups", b"admin"),
        (b"x-original-url", b"/admin"),
        (b"X-HTTP-Method-Override", b"DELETE"),
        (b"Remote-User", b"root"),
        (b"REMOTE-GROUPS", b"admin"),
        (b"x-ms-client-principal-name", b"root"),
        (b"Cf-Connecting-Ip", b"10.0.0.1"),
        (b"impersonate-user", b"root"),
        (b"x-client-cert-chain", b"-----BEGIN CERTIFICATE-----"),
        (b"x-request-id", b"r-1"),
        (b"accept-language", b"de"),
    ]
    names = [n for n, _ in upstream_headers(sent, client="203.0.113.9")]
    assert names == [b"x-request-id", b"accept-language", b"x-forwarded-for", b"x-forwarded-proto"]


def test_a_strict_route_keeps_only_what_it_names() -> None:
    sent = [(b"accept", b"*/*"), (b"x-request-id", b"r-1"), (b"x-remote-user", b"root")]
    allowed = frozenset({b"accept", b"x-remote-user"})
    out = upstream_headers(
        sent, client="203.0.113.9", extra=[(b"authorization", b"Bearer i")], allowed=allowed
    )
    assert [n for n, _ in out] == [
        b"accept",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"authorization",
    ]


@given(
    st.sampled_from(list(STRIPPED_FAMILIES)),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
    st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_every_member_of_a_family_in_any_case_is_stripped(
    family: bytes, rest: str, upper: list[bool]
) -> None:
    name = family + rest.encode()
    spelled = bytes(
        c - 32 if u and 97 <= c <= 122 else c for c, u in zip(name, upper * 3, strict=False)
    )
    assert stripped(name)
    out = upstream_headers([(spelled, b"forged")], client="::1")
    assert b"forged" not in [v for _, v in out]
