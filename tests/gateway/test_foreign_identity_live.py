"""Another issuer's users, live: a Keycloak-style OpenID Provider the gateway trusts signs
tokens for "alice" and claims the world (a username, a login time, a second factor,
groups, a delegation chain); none of it makes a local user, passes a policy written for
one or reaches the upstream as if it were the provider's. A second issuer is declared to
name users and is trusted with its amr and a group: that much, and no more, counts;
policies tell the issuers apart by ``principal.issuer``. And the client address behind a
trusted proxy: an IPv4 address spelled as IPv6 meets the IPv4 rules, an entry that is
not an address is a 400."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from authrig import TD, AuthRig, sign_in_user
from fake_oidc import FakeIssuer, fake_issuer
from liverig import GATEWAY, live_gateway, live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import events
from trustmesh.gateway.server import RunningGateway
from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer

MAPPED = "[roles, preferred_username, email, groups, amr, scope, tenant, idp]"
SECTION = f"""auth: {{roles: [customer, support]}}
gateway:
  policies: [edge.cedar]
  trusted_proxies: [127.0.0.0/8]
  routes:
    - {{path: /alice, to: orders, claims: {MAPPED}}}
    - {{path: /users, to: orders}}
    - {{path: /mfa, to: orders}}
    - {{path: /staff, to: orders}}
    - {{path: /echo, to: orders, claims: {MAPPED}}}
    - {{path: /local, to: orders}}
    - {{path: /partner, to: orders}}
    - {{path: /partners, to: orders, auth: [anonymous], allow_ips: [10.0.0.0/8]}}
    - {{path: /blocked, to: orders, auth: [anonymous], deny_ips: [203.0.113.0/24]}}
"""
POLICIES = """
@id("only-alice")
permit (principal, action, resource == Route::"/alice") when { principal.name == "alice" };

@id("users-only")
permit (principal is User, action, resource == Route::"/users");

@id("second-factor")
permit (principal, action, resource == Route::"/mfa")
when { principal.mfa || principal.amr.contains("otp") };

@id("staff-group")
permit (principal, action, resource == Route::"/staff")
when { principal.groups.contains("staff") };

@id("echo")
permit (principal, action, resource == Route::"/echo");

@id("by-address")
permit (principal, action, resource == Route::"/partners");

@id("by-address-too")
permit (principal, action, resource == Route::"/blocked");

@id("not-from-the-test-net")
forbid (principal, action, resource == Route::"/blocked")
when { context.ip.isInRange(ip("192.0.2.0/24")) };

@id("local-users")
permit (principal is User, action, resource == Route::"/local")
when { principal.issuer == "trustmesh" };
"""
PARTNER_POLICY = """
@id("partner-users")
permit (principal is User, action, resource == Route::"/partner")
when { principal.issuer == "%s" };
"""


@dataclass
class Stack:
    rig: AuthRig
    gateway: RunningGateway
    sink: events.MemorySink
    kc: FakeIssuer  # an issuer declared with no trust beyond its signature
    partner: FakeIssuer  # one declared to name users, with its amr and group "staff"
    http: aiohttp.ClientSession
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def call(
        self, path: str, token: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.get(self.gateway.url + path, headers=sent) as answer:
            await answer.read()
            return answer.status

    async def sign_in(self, username: str, roles: list[str]) -> str:
        return await asyncio.to_thread(sign_in_user, self.rig, username, roles, audience=GATEWAY)

    def reasons(self) -> list[str]:
        return [e.reason for e in self.sink.events]


def recorder(seen: list[dict[str, Any]]) -> Starlette:
    """The upstream: notes the internal token's claims it was given."""

    async def note(request: Request) -> JSONResponse:
        token = request.state.trustmesh_token
        told = {k: v for k, v in token.claims.items() if k not in ("exp", "iat", "jti", "cnf")}
        seen.append({"path": request.url.path, "claims": told})
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/{p:path}", note)])


#: The tests only send requests: they share one stack, on the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def identity(module_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(module_tmp, SECTION)


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """The module's stack, with nothing yet seen by its upstream or recorded by its
    gateway in this test."""
    shared_stack.seen.clear()
    shared_stack.sink.events.clear()
    return shared_stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_stack(identity: RunningIdentityServer, module_tmp: Path) -> AsyncIterator[Stack]:
    short_tmp = module_tmp
    seen: list[dict[str, Any]] = []
    async with (
        fake_issuer(short_tmp / "kc") as kc,
        fake_issuer(short_tmp / "partner") as partner,
        live_gateway(
            identity,
            short_tmp,
            SECTION,
            [("orders", recorder(seen))],
            files={"edge.cedar": POLICIES + PARTNER_POLICY % partner.url},
            issuers=[
                kc.declaration(),
                partner.declaration(
                    principal="user", trust_amr="true", groups="[staff]", scopes="[orders:read]"
                ),
            ],
        ) as live,
    ):
        yield Stack(live.rig, live.gateway, live.sink, kc, partner, live.http, seen)


# -- another issuer's identity ---------------------------------------------------------


async def test_another_issuers_alice_is_not_the_local_alice(stack: Stack) -> None:
    kc = stack.kc
    foreign = kc.token(sub="alice", preferred_username="alice", client_id="alice")
    assert await stack.call("/alice/x", foreign) == 403
    assert stack.sink.events[-1].reason == Reason.POLICY_DENY
    assert stack.sink.events[-1].sub == f"{kc.url}#alice"
    assert not [s for s in stack.seen if s["path"] == "/alice/x"]  # nothing was forwarded
    # the policy does admit the provider's own alice
    local = await stack.sign_in("alice", ["customer"])
    assert await stack.call("/alice/x", local) == 200


async def test_a_foreign_token_is_not_a_user_because_it_says_so(stack: Stack) -> None:
    """``preferred_username`` and ``auth_time`` are the issuer's to write: the principal's
    type comes from the declaration (by default: a client)."""
    kc = stack.kc
    claiming = kc.token(preferred_username="kim", auth_time=int(time.time()) - 5)
    assert await stack.call("/users/x", claiming) == 403
    local = await stack.sign_in("carol", ["customer"])
    assert await stack.call("/users/x", local) == 200


async def test_a_foreign_second_factor_and_groups_are_not_believed(stack: Stack) -> None:
    kc = stack.kc
    assert await stack.call("/mfa/x", kc.token(amr=["pwd", "otp"])) == 403
    assert await stack.call("/staff/x", kc.token(groups=["staff"])) == 403


async def test_the_upstream_gets_only_namespaced_identity(stack: Stack) -> None:
    kc = stack.kc
    token = kc.token(
        sub="alice",
        preferred_username="alice",
        client_id="storefront",
        email="alice@shop.example",
        groups=["staff"],
        amr=["pwd", "otp"],
        tenant="shop",
        scope="openid orders:refund",
        act={"sub": f"spiffe://{TD}/payments"},  # a delegation chain of its own making
    )
    assert await stack.call("/echo/x", token) == 200
    claims = stack.seen[-1]["claims"]
    assert claims["sub"] == f"{kc.url}#alice"
    assert claims["client_id"] == f"{kc.url}#storefront"
    assert claims["preferred_username"] == f"{kc.url}#alice"
    assert claims["email"] == f"{kc.url}#alice@shop.example"
    assert claims["idp"] == kc.url
    assert claims["roles"] == ["customer"]
    for untrusted in ("groups", "amr", "scope", "tenant"):
        assert not claims.get(untrusted), untrusted
    assert claims["act"] == {"sub": GATEWAY}  # the gateway, and nobody the token named
    forwarded = [e for e in stack.sink.events if e.reason == Reason.REQUEST_FORWARDED]
    assert forwarded[-1].client_id == f"{kc.url}#storefront"


async def test_an_issuer_declared_so_is_trusted_that_far(stack: Stack) -> None:
    partner = stack.partner
    assert await stack.call("/users/x", partner.token()) == 200  # declared: users
    # still not the local alice, whatever it calls its user
    foreign = partner.token(sub="alice", preferred_username="alice")
    assert await stack.call("/alice/x", foreign) == 403
    assert await stack.call("/mfa/x", partner.token(amr=["pwd", "otp"])) == 200
    assert await stack.call("/mfa/x", partner.token(amr=["pwd"])) == 403
    assert await stack.call("/staff/x", partner.token(groups=["staff"])) == 200
    assert await stack.call("/staff/x", partner.token(groups=["admins"])) == 403  # not declared
    token = partner.token(
        groups=["staff", "admins"],
        amr=["pwd", "otp"],
        scope="openid orders:read orders:refund",
        tenant="shop",
    )
    assert await stack.call("/echo/x", token) == 200
    claims = stack.seen[-1]["claims"]
    assert claims["groups"] == ["staff"]
    assert claims["amr"] == ["otp", "pwd"]
    assert claims["scope"] == "orders:read"
    assert "tenant" not in claims
    assert claims["preferred_username"] == f"{partner.url}#kim"


async def test_policies_tell_the_issuers_apart(stack: Stack) -> None:
    local = await stack.sign_in("dana", ["customer"])
    assert await stack.call("/local/x", local) == 200
    assert await stack.call("/local/x", stack.partner.token()) == 403  # a User, not ours
    assert await stack.call("/local/x", stack.kc.token()) == 403
    assert await stack.call("/partner/x", stack.partner.token()) == 200
    assert await stack.call("/partner/x", local) == 403
    assert await stack.call("/partner/x", stack.kc.token()) == 403


# -- the client address behind a trusted proxy -------------------------------------------


async def test_ipv4_in_ipv6_forms_meet_the_ipv4_rules(stack: Stack) -> None:
    def via(entry: str) -> dict[str, str]:
        return {"X-Forwarded-For": entry}

    # 10.1.2.3 as NAT64 (64:ff9b::/96) and 6to4 (2002::/16): admitted by 10.0.0.0/8
    assert await stack.call("/partners/x", headers=via("64:ff9b::a01:203")) == 200
    assert await stack.call("/partners/x", headers=via("2002:a01:203::1")) == 200
    assert await stack.call("/partners/x", headers=via("2001:db8::a01:203")) == 403
    # 203.0.113.9 in any of its IPv6 forms is refused by 203.0.113.0/24
    for form in ("203.0.113.9", "::ffff:cb00:7109", "64:ff9b::cb00:7109", "2002:cb00:7109::1"):
        assert await stack.call("/blocked/x", headers=via(form)) == 403, form
        denied = stack.sink.events[-1]
        assert denied.reason == Reason.IP_DENIED
        assert denied.attributes["client"] == form  # the address as the proxy saw it
    assert await stack.call("/blocked/x", headers=via("198.51.100.7")) == 200
    # the edge policies see the IPv4 client too, however its address is spelled
    for form in ("192.0.2.5", "::ffff:c000:205", "64:ff9b::c000:205", "2002:c000:205::1"):
        assert await stack.call("/blocked/x", headers=via(form)) == 403, form
        assert stack.sink.events[-1].reason == Reason.POLICY_DENY


async def test_a_forwarded_for_that_is_not_an_address_is_400(stack: Stack) -> None:
    for entry in ("not-an-ip", "fe80::1%eth0", "198.51.100.7, ", "203.0.113.9:http"):
        assert await stack.call("/blocked/x", headers={"X-Forwarded-For": entry}) == 400, entry
        assert stack.reasons()[-1] == Reason.FORWARDED_FOR_INVALID
    assert not [s for s in stack.seen if s["path"] == "/blocked/x"]
