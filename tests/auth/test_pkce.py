"""PKCE with RFC 7636's Appendix B vector, downgrade refused; exact redirect-URI matching."""

from __future__ import annotations

import pytest

from trustmesh.auth.pkce import (
    check_challenge,
    check_registered_redirect_uri,
    redirect_uri_matches,
    s256,
    verify_pkce,
)
from trustmesh.errors import UsageError

# RFC 7636 Appendix B
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_rfc_7636_appendix_b() -> None:
    assert s256(VERIFIER) == CHALLENGE
    assert check_challenge(CHALLENGE, "S256") == CHALLENGE
    assert verify_pkce(CHALLENGE, VERIFIER)


@pytest.mark.parametrize(
    ("challenge", "method"),
    [
        (VERIFIER, "plain"),
        (CHALLENGE, "plain"),
        (CHALLENGE, None),
        (CHALLENGE, "s256"),
        (None, "S256"),
        ("", "S256"),
        ("short", "S256"),
        (CHALLENGE + "=", "S256"),
    ],
)
def test_downgrade_and_malformed_challenges_are_refused(
    challenge: str | None, method: str | None
) -> None:
    with pytest.raises(UsageError):
        check_challenge(challenge, method)


@pytest.mark.parametrize(
    "verifier",
    [None, "", CHALLENGE, VERIFIER[:-1], VERIFIER + "x", "a" * 42, "a" * 129, VERIFIER[:42] + "+"],
)
def test_wrong_verifiers_fail(verifier: str | None) -> None:
    assert not verify_pkce(CHALLENGE, verifier)


REGISTERED = ["https://shop.example/callback", "http://127.0.0.1:8400/cb"]


@pytest.mark.parametrize(
    "requested",
    [
        "https://shop.example/callback/",  # trailing slash
        "https://shop.example/callback?x=1",  # extra query
        "https://SHOP.example/callback",  # case
        "https://shop.example/Callback",
        "https://shop.example@evil.example/callback",  # userinfo trick
        "https://good@shop.example/callback",
        "http://shop.example/callback",  # scheme
        "https://evil.shop.example/callback",  # subdomain
        "https://shop.example.evil.example/callback",
        "https://shop.example/callback#frag",
        "https://shop.example:443/callback",
        "https://shop.example/callback/../callback",
        "https://shop.example/%63allback",
        "",
        None,
    ],
)
def test_only_an_exact_registered_uri_matches(requested: str | None) -> None:
    assert not redirect_uri_matches(requested, REGISTERED)


def test_the_registered_uri_itself_matches() -> None:
    for uri in REGISTERED:
        assert redirect_uri_matches(uri, REGISTERED)


@pytest.mark.parametrize(
    "uri",
    [
        "http://shop.example/cb",
        "https://u@shop.example/cb",
        "https://shop.example/cb#x",
        "javascript:alert(1)",
        "https:///cb",
        "ftp://shop.example/cb",
        "http://localhost.evil/cb",
        "https://shop.example:99999/cb",
    ],
)
def test_unsafe_registrations_are_refused(uri: str) -> None:
    with pytest.raises(UsageError):
        check_registered_redirect_uri(uri)


def test_safe_registrations() -> None:
    for uri in (*REGISTERED, "http://[::1]:9000/cb", "https://app.example/cb?tenant=a"):
        assert check_registered_redirect_uri(uri) == uri


LOOPBACK = ["https://127.0.0.1/auth/callback", "http://[::1]/cb"]


@pytest.mark.parametrize(
    "requested",
    [
        "https://127.0.0.1:8443/auth/callback",
        "https://127.0.0.1:1/auth/callback",
        "http://[::1]:9/cb",
    ],
)
def test_a_loopback_uri_registered_without_a_port_matches_any_port(requested: str) -> None:
    """RFC 8252 §7.3: the local listener takes whatever port is free."""
    assert redirect_uri_matches(requested, LOOPBACK)


@pytest.mark.parametrize(
    "requested",
    [
        "https://127.0.0.1:0/auth/callback",  # no such port
        "https://127.0.0.1:65536/auth/callback",
        "https://127.0.0.1:08443/auth/callback",
        "https://127.0.0.1:8443/auth/callback/",  # the path still exact
        "https://127.0.0.1:8443/auth/callback?x=1",
        "http://127.0.0.1:8443/auth/callback",  # the scheme still exact
        "https://127.0.0.2:8443/auth/callback",  # another loopback address is another URI
        "https://localhost:8443/auth/callback",  # a name, not a literal (RFC 8252 §8.3)
        "https://127.0.0.1:8443@evil.example/auth/callback",
        "https://127.0.0.1:8443:8443/auth/callback",
    ],
)
def test_only_the_port_of_a_loopback_uri_may_vary(requested: str) -> None:
    assert not redirect_uri_matches(requested, LOOPBACK)


def test_a_loopback_uri_registered_with_a_port_keeps_it() -> None:
    assert not redirect_uri_matches("http://127.0.0.1:8401/cb", REGISTERED)
