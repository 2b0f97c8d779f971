"""The console's web app (trustmesh.audit.console.app) over a real TLS listener
(``start_public`` with a dev certificate from the local edge CA), a real audit service
on SQLite, and real ID tokens from a provider faked at the far edge: a browser's every
attack is sent with ``requests``, and the refusal and its audit event asserted."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from consolerig import CLIENT_ID, NOW, PUBLIC_URL, FakeProvider, admin_claims, id_token, shop

from trustmesh import crypto, events
from trustmesh.audit.alerts import AlertStore
from trustmesh.audit.chain import CheckpointPolicy
from trustmesh.audit.console.app import SESSION_COOKIE, SIGNIN_COOKIE, ConsoleApp, Pages
from trustmesh.audit.console.server import edge_counts
from trustmesh.audit.console.sessions import Sessions
from trustmesh.audit.console.signin import SignIn
from trustmesh.audit.console.source import ConsoleSource
from trustmesh.audit.detection import Detector
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.search import Query
from trustmesh.audit.service import AuditService
from trustmesh.platform.listeners import PublicServed, bound_socket, start_public
from trustmesh.reasons import Reason
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.store import create_engine, sqlite_url

SCRIPT = "<script>alert(1)</script>"
AUDIT_ID = "spiffe://shop.example/trustmesh/audit"


@dataclass
class Console:
    url: str
    ca: str
    provider: FakeProvider
    service: AuditService
    app: ConsoleApp
    http: requests.Session = field(default_factory=requests.Session)

    async def get(self, path: str, cookies: dict[str, str] | None = None, **kw: Any) -> Any:
        return await self.send("GET", path, cookies, **kw)

    async def post(self, path: str, cookies: dict[str, str] | None = None, **kw: Any) -> Any:
        return await self.send("POST", path, cookies, **kw)

    async def send(
        self, method: str, path: str, cookies: dict[str, str] | None, **kw: Any
    ) -> requests.Response:
        """One request, its cookies sent by hand (nothing kept between requests unless
        the test keeps it), redirects not followed."""
        self.http.cookies.clear()  # no cookie jar: only what the test sends
        headers = dict(kw.pop("headers", {}))
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        return await asyncio.to_thread(
            self.http.request,
            method,
            self.url + path,
            headers=headers,
            verify=self.ca,
            allow_redirects=False,
            timeout=30,
            **kw,
        )

    async def logged(self, reason: Reason) -> list[dict[str, Any]]:
        """The console's events of ``reason`` as the audit log holds them."""
        await self.service.store_own()
        return await self.service.search(Query(reason=reason.value, limit=100))


def set_cookies(response: requests.Response) -> dict[str, str]:
    """Each Set-Cookie header, by cookie name."""
    found = {}
    for header in response.raw.headers.getlist("set-cookie"):
        found[header.split("=", 1)[0]] = header
    return found


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    config = shop()
    state = tmp_path / "state"
    state.mkdir()
    certificate = crypto.local_server_certificate(state, crypto.SealKey(os.urandom(32), "env"))
    ledger = Ledger(create_engine(sqlite_url(tmp_path / "audit.db")))
    await ledger.create()
    alerts = AlertStore(ledger.engine)
    await alerts.create()
    service = AuditService(
        ledger,
        crypto.generate_signing_key(),
        Detector.shipped(),
        CheckpointPolicy(records=10_000),
        spiffe_id=AUDIT_ID,
        alert_store=alerts,
    )
    provider = FakeProvider()
    sock = bound_socket("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    url = f"https://127.0.0.1:{port}"
    app = ConsoleApp(
        # the services page asks no one here: no component has written where it listens
        ConsoleSource(
            config, state, service, None, edge_counts(config, service), cast(RotatingTLS, None)
        ),
        SignIn(provider, CLIENT_ID, clock=lambda: NOW),
        Sessions(3600, 600),
        events.Recorder(
            events.FanoutSink(events.MemorySink(), service.own),
            component="console",
            spiffe_id=AUDIT_ID,
        ),
        Pages(url, 5000),
    )
    served: PublicServed | None = None
    try:
        served = await start_public(
            app.asgi(),
            chain_pem=certificate.chain_pem(),
            key_pem=certificate.key_pem(),
            host="127.0.0.1",
            port=port,
            sock=sock,
        )
        found = Console(url, str(crypto.edge_ca_path(state)), provider, service, app)
        found.http.trust_env = False
        try:
            yield found
        finally:
            found.http.close()
    finally:
        if served is not None:
            await served.stop()
        else:
            sock.close()
        await ledger.close()


async def start(console: Console) -> tuple[str, dict[str, str]]:
    """Begin a sign-in: its cookie, and the authorization request's parameters."""
    response = await console.get("/auth/start")
    assert response.status_code == 303
    cookie = cookie_value(set_cookies(response)[SIGNIN_COOKIE])
    query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}
    return cookie, query


async def sign_in(console: Console, **claims: Any) -> requests.Response:
    """A whole sign-in: the provider answers with a real ID token for ``claims``."""
    cookie, query = await start(console)
    console.provider.answer(id_token(admin_claims(query["nonce"], **claims)))
    return await console.get(
        f"/auth/callback?code=the-code&state={query['state']}", {SIGNIN_COOKIE: cookie}
    )


async def session_of(console: Console) -> dict[str, str]:
    response = await sign_in(console)
    assert response.status_code == 303, response.text
    return {SESSION_COOKIE: cookie_value(set_cookies(response)[SESSION_COOKIE])}


# --- every answer's headers -------------------------------------------------------------


def assert_hardened(response: requests.Response) -> None:
    csp = response.headers.get("content-security-policy", "")
    directives = {
        name: value for name, _, value in (d.strip().partition(" ") for d in csp.split(";"))
    }
    assert directives.get("frame-ancestors") == "'none'", csp
    assert directives.get("default-src") == "'none'", csp
    assert directives.get("script-src") == "'self'", csp
    assert directives.get("base-uri") == "'none'", csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response.headers.get("x-frame-options") == "DENY"
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("referrer-policy") == "same-origin"
    assert response.headers.get("cache-control") == "no-store"


async def test_every_answer_carries_the_security_headers(console: Console) -> None:
    session = await session_of(console)
    answers = {
        "signin page": await console.get("/signin"),
        "page, signed out": await console.get("/services"),
        "page": await console.get("/events", session),
        "bad filter": await console.get("/events?decision=bogus", session),
        "feed, signed out": await console.get("/api/events"),
        "feed": await console.get("/api/graph", session),
        "script": await console.get("/static/console.js"),
        "style": await console.get("/static/console.css"),
        "no such static file": await console.get("/static/../app.py"),
        "no such static name": await console.get("/static/evil.js"),
        "no such route": await console.get("/nowhere"),
        "wrong method": await console.post("/events", session),
        "refused sign-in": await console.get("/auth/callback?code=x&state=y"),
        "refused sign-out": await console.post("/auth/signout", session),
        "to the provider": await console.get("/auth/start"),
    }
    assert answers["no such static name"].status_code == 404
    assert answers["no such route"].status_code == 404
    assert answers["wrong method"].status_code == 405
    for name, response in answers.items():
        try:
            assert_hardened(response)
        except AssertionError as exc:
            raise AssertionError(f"{name} ({response.status_code}): {exc}") from None


async def test_the_static_files_are_served_with_their_types(console: Console) -> None:
    script = await console.get("/static/console.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    style = await console.get("/static/console.css")
    assert style.headers["content-type"].startswith("text/css")


async def test_pages_hold_no_inline_script(console: Console) -> None:
    """The CSP would block one; the pages must not need one."""
    session = await session_of(console)
    for path in ("/signin", "/services", "/graph", "/events", "/alerts", "/traces", "/posture"):
        html = (await console.get(path, session)).text
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
        assert not re.search(r"\son[a-z]+\s*=", html), path


# --- without a session ------------------------------------------------------------------


PAGES = [
    "/services",
    "/graph",
    "/events",
    "/alerts",
    "/alerts/1",
    "/traces",
    "/traces/4bf92f3577b34da6a3ce929d0e0e4736",
    "/posture",
]
FEEDS = ["/api/graph", "/api/events", "/api/alerts"]


@pytest.mark.parametrize(
    "cookies",
    [None, {SESSION_COOKIE: "made-up"}, {SESSION_COOKIE: ""}, {SESSION_COOKIE: "x" * 300}],
)
async def test_without_a_session_pages_go_to_sign_in_and_feeds_answer_401(
    console: Console, cookies: dict[str, str] | None
) -> None:
    for path in PAGES:
        response = await console.get(path, cookies)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/signin", path
    for path in FEEDS:
        response = await console.get(path, cookies)
        assert response.status_code == 401, path
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"error": "unauthenticated"}
    home = await console.get("/", cookies)
    assert (home.status_code, home.headers["location"]) == (303, "/signin")


async def test_the_sign_in_cookie_is_not_a_session(console: Console) -> None:
    cookie, _ = await start(console)
    response = await console.get("/events", {SESSION_COOKIE: cookie, SIGNIN_COOKIE: cookie})
    assert response.status_code == 303


# --- signing in -------------------------------------------------------------------------


async def test_start_sends_the_browser_to_the_provider_with_a_pkce_challenge(
    console: Console,
) -> None:
    response = await console.get("/auth/start")
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        PUBLIC_URL + "/oauth2/authorize"
    )
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == console.url + "/auth/callback"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32
    assert len(query["nonce"]) >= 32
    header = set_cookies(response)[SIGNIN_COOKIE]
    attributes = [a.strip() for a in header.split(";")]
    assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= set(attributes)
    assert not any(a.lower().startswith("domain") for a in attributes)  # __Host- needs none
    # the challenge is of a verifier that never left the console
    assert cookie_value(header) not in response.headers["location"]


async def test_a_signed_in_admin_gets_a_host_only_session_cookie(console: Console) -> None:
    response = await sign_in(console)
    assert response.status_code == 303
    assert response.headers["location"] == "/services"
    cookies = set_cookies(response)
    attributes = [a.strip() for a in cookies[SESSION_COOKIE].split(";")]
    assert SESSION_COOKIE.startswith("__Host-")
    assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= set(attributes)
    assert not any(a.lower().startswith("domain") for a in attributes)
    assert "Max-Age=0" in cookies[SIGNIN_COOKIE]  # the sign-in's cookie is cleared
    session = {SESSION_COOKIE: cookie_value(cookies[SESSION_COOKIE])}
    page = await console.get("/events", session)
    assert page.status_code == 200
    assert "alice" in page.text
    # no token the provider gave reaches the browser
    assert "opaque" not in response.text + str(response.headers)
    form = console.provider.forms[0]
    assert form["grant_type"] == "authorization_code"
    assert form["redirect_uri"] == console.url + "/auth/callback"
    assert form["client_id"] == CLIENT_ID
    assert len(form["code_verifier"]) >= 43
    logged = await console.logged(Reason.LOGIN_SUCCEEDED)
    assert [e["unmapped"]["trustmesh"]["sub"] for e in logged] == ["u-alice"]


async def test_a_callback_with_a_wrong_state_is_refused_and_recorded(console: Console) -> None:
    cookie, query = await start(console)
    console.provider.answer(id_token(admin_claims(query["nonce"])))
    response = await console.get(
        f"/auth/callback?code=the-code&state={query['state']}x", {SIGNIN_COOKIE: cookie}
    )
    assert response.status_code == 403
    assert SESSION_COOKIE not in set_cookies(response)
    assert console.provider.forms == []  # the code was never redeemed
    logged = await console.logged(Reason.LOGIN_FAILED)
    assert len(logged) == 1
    assert logged[0]["unmapped"]["trustmesh"]["decision"] == "deny"
    assert logged[0]["metadata"]["product"]["feature"]["name"] == "console"
    # and the sign-in is over: the right state does not work after a wrong one
    again = await console.get(
        f"/auth/callback?code=the-code&state={query['state']}", {SIGNIN_COOKIE: cookie}
    )
    assert again.status_code == 403


async def test_a_callback_from_another_browser_is_refused(console: Console) -> None:
    """Login CSRF: the attacker's own code and state, without the victim's sign-in cookie."""
    _, query = await start(console)
    console.provider.answer(id_token(admin_claims(query["nonce"])))
    for cookies in (None, {SIGNIN_COOKIE: "not-this-browsers"}):
        response = await console.get(
            f"/auth/callback?code=the-code&state={query['state']}", cookies
        )
        assert response.status_code == 403
        assert SESSION_COOKIE not in set_cookies(response)
    assert console.provider.forms == []


async def test_a_replayed_callback_is_refused(console: Console) -> None:
    cookie, query = await start(console)
    console.provider.answer(id_token(admin_claims(query["nonce"])))
    callback = f"/auth/callback?code=the-code&state={query['state']}"
    first = await console.get(callback, {SIGNIN_COOKIE: cookie})
    assert first.status_code == 303
    second = await console.get(callback, {SIGNIN_COOKIE: cookie})
    assert second.status_code == 403
    assert SESSION_COOKIE not in set_cookies(second)
    assert len(console.provider.forms) == 1


async def test_a_non_admin_is_refused_and_recorded(console: Console) -> None:
    response = await sign_in(console, roles=["customer"])
    assert response.status_code == 403
    assert SESSION_COOKIE not in set_cookies(response)
    logged = await console.logged(Reason.ADMIN_DENIED)
    assert [e["unmapped"]["trustmesh"]["sub"] for e in logged] == ["u-alice"]
    assert logged[0]["unmapped"]["trustmesh"]["decision"] == "deny"


async def test_an_admin_without_a_second_factor_is_refused(console: Console) -> None:
    response = await sign_in(console, amr=["pwd"])
    assert response.status_code == 403
    assert SESSION_COOKIE not in set_cookies(response)
    assert len(await console.logged(Reason.ADMIN_DENIED)) == 1


async def test_an_id_token_with_another_sign_ins_nonce_is_refused(console: Console) -> None:
    cookie, query = await start(console)
    _, other = await start(console)
    console.provider.answer(id_token(admin_claims(other["nonce"])))
    response = await console.get(
        f"/auth/callback?code=the-code&state={query['state']}", {SIGNIN_COOKIE: cookie}
    )
    assert response.status_code == 403
    assert SESSION_COOKIE not in set_cookies(response)
    assert len(await console.logged(Reason.LOGIN_FAILED)) == 1


# --- signing out ------------------------------------------------------------------------


async def test_sign_out_needs_the_sessions_csrf_token(console: Console) -> None:
    session = await session_of(console)
    other = await session_of(console)
    token = csrf_of((await console.get("/events", session)).text)
    theirs = csrf_of((await console.get("/events", other)).text)
    assert token != theirs
    for form in ({}, {"csrf": ""}, {"csrf": "wrong"}, {"csrf": theirs}, {"csrf": token + "x"}):
        response = await console.post("/auth/signout", session, data=form)
        assert response.status_code == 403, form
        assert (await console.get("/events", session)).status_code == 200  # still signed in


async def test_sign_out_from_another_origin_is_refused(console: Console) -> None:
    session = await session_of(console)
    token = csrf_of((await console.get("/events", session)).text)
    for origin in ("https://evil.example", "null", console.url + ".evil.example"):
        response = await console.post(
            "/auth/signout", session, data={"csrf": token}, headers={"Origin": origin}
        )
        assert response.status_code == 403, origin
        assert (await console.get("/events", session)).status_code == 200


@pytest.mark.parametrize("origin", [None, "own"])
async def test_sign_out_with_the_token_ends_the_session(
    console: Console, origin: str | None
) -> None:
    session = await session_of(console)
    token = csrf_of((await console.get("/events", session)).text)
    headers = {} if origin is None else {"Origin": console.url}
    response = await console.post("/auth/signout", session, data={"csrf": token}, headers=headers)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin"
    assert "Max-Age=0" in set_cookies(response)[SESSION_COOKIE]
    after = await console.get("/events", session)  # the old cookie, kept by an attacker
    assert (after.status_code, after.headers["location"]) == (303, "/signin")
    assert (await console.get("/api/events", session)).status_code == 401


# --- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/events?decision=bogus", 400),
        ("/events?minutes=0", 400),
        ("/events?trace_id=nothex", 400),
        ("/alerts/999", 404),
        ("/traces/not-hex", 400),
        ("/traces/4BF92F3577B34DA6A3CE929D0E0E4736", 400),
        ("/traces?id=not-hex", 400),
        ("/traces/4bf92f3577b34da6a3ce929d0e0e4736", 404),
    ],
)
async def test_a_bad_or_unknown_page_is_refused(console: Console, path: str, status: int) -> None:
    session = await session_of(console)
    response = await console.get(path, session)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "path", ["/api/events?decision=bogus", "/api/events?after=x", "/api/alerts?after=-1"]
)
async def test_a_bad_feed_request_is_a_400_in_json(console: Console, path: str) -> None:
    session = await session_of(console)
    response = await console.get(path, session)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("path", ["/events?minutes=%C2%B2", "/api/events?after=%C2%B2"])
async def test_a_superscript_digit_is_a_400(console: Console, path: str) -> None:
    session = await session_of(console)
    response = await console.get(path, session, headers={"Connection": "close"})
    assert response.status_code == 400


# --- what a workload reported, shown -----------------------------------------------------


async def test_markup_in_an_event_is_shown_escaped(console: Console) -> None:
    recorder = events.Recorder(
        events.MemorySink(), component="orders", spiffe_id="spiffe://shop.example/orders"
    )
    event = recorder.record(
        Reason.POLICY_DENY,
        SCRIPT,
        decision=events.Decision.DENY,
        attributes={"method": "GET", "path": '/x"><img src=x onerror=alert(2)>'},
    ).to_ocsf()
    stored = await console.service.ingest([event], "spiffe://shop.example/orders")
    assert stored.answer()["stored"] == 1
    session = await session_of(console)
    page = await console.get("/events", session)
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text
    assert "<img src=x" not in page.text
    assert "onerror=alert(2)>" not in page.text.replace("&gt;", "")  # attribute not broken out
    feed = await console.get("/api/events?after=0", session)
    assert feed.headers["content-type"].startswith("application/json")
    assert SCRIPT in [e["message"] for e in feed.json()["events"]]  # JSON: data, not markup


async def test_markup_in_a_filter_is_shown_escaped(console: Console) -> None:
    session = await session_of(console)
    page = await console.get('/events?reason="><script>alert(3)</script>', session)
    assert page.status_code == 200
    assert "<script>alert(3)" not in page.text
    assert "&lt;script&gt;alert(3)" in page.text
