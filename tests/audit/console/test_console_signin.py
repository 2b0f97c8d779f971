"""Signing an admin in to the console (trustmesh.audit.console.signin): the authorization
request (state, nonce, S256 PKCE challenge), the code redeemed with its verifier, and
the ID token verified with the provider's real keys (OIDC Core §3.1.3.7) before
``admit`` lets only an admin with a second factor in. The provider is faked at the far
edge only: its tokens are real, signed with real keys."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from consolerig import (
    ATTACKER_KEY,
    CLIENT_ID,
    KID,
    NOW,
    PUBLIC_URL,
    FakeProvider,
    admin_claims,
    id_token,
    pending,
)

from trustmesh import crypto
from trustmesh.audit.console.signin import SignIn, admit, authorize_url
from trustmesh.reasons import Reason

REDIRECT = "https://127.0.0.1:9443/auth/callback"


def rfc7636_s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --- admit ------------------------------------------------------------------------------


def test_an_admin_with_a_second_factor_is_admitted() -> None:
    admitted = admit({"sub": "u-1", "preferred_username": "alice", **_roles(), "auth_time": 7})
    assert admitted.admin is not None
    assert admitted.reason == Reason.LOGIN_SUCCEEDED
    assert admitted.admin.sub == "u-1"
    assert admitted.admin.username == "alice"
    assert admitted.admin.amr == ("pwd", "otp")
    assert admitted.admin.auth_time == 7


def _roles(roles: Any = ("admin",), amr: Any = ("pwd", "otp")) -> dict[str, Any]:
    return {
        "roles": list(roles) if isinstance(roles, tuple) else roles,
        "amr": list(amr) if isinstance(amr, tuple) else amr,
    }


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        (_roles(roles=("customer",)), "admins only"),
        (_roles(roles=()), "admins only"),
        ({"amr": ["pwd", "otp"]}, "admins only"),  # no roles at all
        (_roles(roles="admin"), "admins only"),  # a string that contains "admin"
        (_roles(roles={"admin": True}), "admins only"),  # an object keyed "admin"
        (_roles(roles=("administrators",)), "admins only"),
        (_roles(amr=("pwd",)), "no second factor"),
        (_roles(amr=()), "no second factor"),
        ({"roles": ["admin"]}, "no second factor"),  # no amr at all
        (_roles(amr="otp"), "no second factor"),  # a string, not a list
        (_roles(amr=("pwd", "totp")), "no second factor"),
    ],
)
def test_admit_refuses_anyone_but_an_admin_with_a_second_factor(
    claims: dict[str, Any], why: str
) -> None:
    admitted = admit({"sub": "u-1", **claims})
    assert admitted.admin is None
    assert admitted.reason == Reason.ADMIN_DENIED
    assert why in admitted.why
    assert admitted.sub == "u-1"


# --- the authorization request ----------------------------------------------------------


def test_the_authorization_request_carries_state_nonce_and_an_s256_challenge() -> None:
    signing_in = pending()
    url = authorize_url(PUBLIC_URL + "/", CLIENT_ID, REDIRECT, signing_in)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    assert parts.path == "/oauth2/authorize"
    query = parse_qs(parts.query, strict_parsing=True)
    assert query == {
        "response_type": ["code"],
        "client_id": [CLIENT_ID],
        "redirect_uri": [REDIRECT],
        "scope": ["openid"],
        "state": [signing_in.state],
        "nonce": [signing_in.nonce],
        "code_challenge": [rfc7636_s256(signing_in.verifier)],
        "code_challenge_method": ["S256"],
    }
    assert signing_in.verifier not in url  # the verifier itself never leaves the console


def test_the_challenge_is_rfc_7636s_for_its_appendix_b_verifier() -> None:
    """RFC 7636 Appendix B's example verifier and challenge."""
    example = pending()
    example = type(example)(
        example.state, example.nonce, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", example.started
    )
    query = parse_qs(urlsplit(authorize_url(PUBLIC_URL, CLIENT_ID, REDIRECT, example)).query)
    assert query["code_challenge"] == ["E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"]


async def test_start_sends_the_browser_to_where_the_provider_says_it_is() -> None:
    signing_in = pending()
    url = await SignIn(FakeProvider(), CLIENT_ID).start(signing_in, REDIRECT)
    assert url == authorize_url(PUBLIC_URL, CLIENT_ID, REDIRECT, signing_in)


# --- finishing: the code redeemed, the ID token verified --------------------------------


async def _finish(provider: FakeProvider, *, now: float = NOW, nonce: str | None = None) -> Any:
    signing_in = pending() if nonce is None else pending(nonce=nonce)
    return await SignIn(provider, CLIENT_ID, clock=lambda: now).finish(
        signing_in, "the-code", REDIRECT
    )


async def test_a_valid_id_token_for_an_admin_signs_them_in() -> None:
    provider = FakeProvider()
    provider.answer(id_token(admin_claims(pending().nonce)))
    admitted = await _finish(provider)
    assert admitted.admin is not None, admitted.why
    assert admitted.reason == Reason.LOGIN_SUCCEEDED
    assert admitted.admin.sub == "u-alice"
    assert admitted.admin.username == "alice"
    assert provider.asked == [KID]


async def test_the_code_is_redeemed_with_the_pkce_verifier_of_this_sign_in() -> None:
    provider = FakeProvider()
    provider.answer(id_token(admin_claims(pending().nonce)))
    await _finish(provider)
    assert provider.forms == [
        {
            "grant_type": "authorization_code",
            "code": "the-code",
            "redirect_uri": REDIRECT,
            "code_verifier": pending().verifier,
            "client_id": CLIENT_ID,
        }
    ]


async def test_a_code_the_token_endpoint_refuses_signs_no_one_in() -> None:
    """Even if the refusal carries a good ID token: only a 200 counts."""
    provider = FakeProvider()
    provider.answer(id_token(admin_claims(pending().nonce)), status=400, error="invalid_grant")
    admitted = await _finish(provider)
    assert admitted.admin is None
    assert admitted.reason == Reason.LOGIN_FAILED
    assert "invalid_grant" in admitted.why
    assert provider.asked == []  # no ID token was even looked at


async def test_an_answer_without_an_id_token_signs_no_one_in() -> None:
    provider = FakeProvider()
    provider.answer(None)
    admitted = await _finish(provider)
    assert admitted.admin is None
    assert admitted.reason == Reason.LOGIN_FAILED


def _forged(nonce: str) -> list[tuple[str, str]]:
    return [
        # signed by a key the provider never published, naming the provider's kid
        ("bad signature", id_token(admin_claims(nonce), key=ATTACKER_KEY)),
        # the attacker's key under its own kid: the provider has no such key
        (
            "unknown kid",
            id_token(admin_claims(nonce), ATTACKER_KEY, crypto.key_id(ATTACKER_KEY.public_key())),
        ),
        ("wrong issuer", id_token(admin_claims(nonce, iss="https://evil.example"))),
        ("wrong audience", id_token(admin_claims(nonce, aud="another-client"))),
        ("missing nonce", id_token(admin_claims(nonce, nonce=None))),
        ("nonce of another sign-in", id_token(admin_claims("n-someone-elses-sign-in"))),
        ("empty nonce", id_token(admin_claims(nonce, nonce=""))),
        ("missing iat", id_token(admin_claims(nonce, iat=None))),
        ("missing exp", id_token(admin_claims(nonce, exp=None))),
        ("missing sub", id_token(admin_claims(nonce, sub=None))),
        ("not a JWT", "not.a.jwt"),
    ]


@pytest.mark.parametrize(
    ("case", "token"), _forged(pending().nonce), ids=[c for c, _ in _forged("n")]
)
async def test_an_id_token_that_is_not_the_providers_for_this_sign_in_is_refused(
    case: str, token: str
) -> None:
    provider = FakeProvider()
    provider.answer(token)
    admitted = await _finish(provider)
    assert admitted.admin is None, case
    assert admitted.reason == Reason.LOGIN_FAILED, case


async def test_a_key_the_provider_does_not_publish_verifies_nothing() -> None:
    """The kid the token names is asked of the provider; its None is final."""
    provider = FakeProvider()
    provider.answer(id_token(admin_claims(pending().nonce)))
    provider.keys = {}
    admitted = await _finish(provider)
    assert admitted.admin is None
    assert admitted.reason == Reason.LOGIN_FAILED
    assert provider.asked == [KID]


async def test_an_expired_id_token_is_refused_past_the_leeway() -> None:
    provider = FakeProvider()
    provider.answer(id_token(admin_claims(pending().nonce, exp=NOW + 300)))
    assert (await _finish(provider, now=NOW + 304)).admin is not None  # within 5 s leeway
    assert (await _finish(provider, now=NOW + 305)).reason == Reason.LOGIN_FAILED
    assert (await _finish(provider, now=NOW + 86_400)).admin is None


async def test_an_id_token_issued_in_the_future_is_refused() -> None:
    provider = FakeProvider()
    provider.answer(id_token(admin_claims(pending().nonce, iat=NOW + 60, exp=NOW + 600)))
    assert (await _finish(provider)).reason == Reason.LOGIN_FAILED


async def test_a_verified_token_still_needs_the_admin_role_and_otp() -> None:
    provider = FakeProvider()
    provider.answer(id_token(admin_claims(pending().nonce, roles=["customer"])))
    admitted = await _finish(provider)
    assert admitted.admin is None
    assert admitted.reason == Reason.ADMIN_DENIED
    assert admitted.sub == "u-alice"
    provider.answer(id_token(admin_claims(pending().nonce, amr=["pwd"])))
    assert (await _finish(provider)).reason == Reason.ADMIN_DENIED
