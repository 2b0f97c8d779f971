"""The console's web app (Starlette, server-rendered): pages for admins signed in at
the identity provider, and the small JSON feeds its one script polls.

Routes:
- ``GET /signin``; ``GET /auth/start`` (to the provider); ``GET /auth/callback`` (back:
  :mod:`trustmesh.audit.console.signin` decides); ``POST /auth/signout`` (CSRF token).
- Pages: ``/services``, ``/graph``, ``/events`` (filters as query parameters),
  ``/alerts``, ``/alerts/{id}``, ``/traces`` (``?id=``), ``/traces/{trace_id}``,
  ``/posture``; feeds: ``/api/graph``, ``/api/events?after=``, ``/api/alerts?after=``.
- ``/static/console.css``, ``/static/console.js``.

Statuses: a page without a session is sent to ``/signin`` (303); a feed answers 401;
a refused sign-in 403; a bad filter 400; an unknown alert or trace 404; a form without
its session's CSRF token, or from another origin, 403.

Every answer carries the same headers: a Content Security Policy that allows only this
origin's own script and style (no inline script, no ``eval``, no framing:
``frame-ancestors 'none'``, with ``X-Frame-Options: DENY`` for older browsers),
``nosniff``, ``Referrer-Policy: same-origin`` (the code in a callback URL goes to no
other site) and ``no-store``.
Sign-ins, refusals and sign-outs are events (component ``console``), and so is every
page an admin is shown (``admin-read``, ``console-<page>``, ``by: user:<name>``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from trustmesh import events
from trustmesh.audit.console.graph import layout
from trustmesh.audit.console.sessions import PendingSignIns, Session, Sessions
from trustmesh.audit.console.signin import SignIn
from trustmesh.audit.console.source import ConsoleSource
from trustmesh.audit.console.views import (
    DIGITS,
    EVENT_FILTERS,
    event_query,
    event_row,
    span_rows,
    when,
)
from trustmesh.audit.spans import trace_id_of
from trustmesh.errors import TrustmeshError, UsageError
from trustmesh.platform.admin import Actor, record_read
from trustmesh.reasons import Reason

__all__ = ["CSP", "SESSION_COOKIE", "SIGNIN_COOKIE", "ConsoleApp", "SecurityHeaders"]

SESSION_COOKIE = "__Host-tm-console"
SIGNIN_COOKIE = "__Host-tm-signin"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser's form sends "Origin: null"
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=31536000"),
]
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}


class SecurityHeaders:
    """Sets :data:`_HEADERS` on every answer (replacing any the app set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._names = {name for name, _ in _HEADERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", []) if h[0].lower() not in self._names]
                message = {**message, "headers": [*kept, *_HEADERS]}
            await send(message)

        await self.app(scope, receive, sending)


def _cookie(name: str, value: str, max_age: int) -> str:
    return f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax"


def _source(request: Request) -> events.Endpoint | None:
    client = request.client
    try:
        return events.Endpoint(ip=str(ipaddress.ip_address(client.host))) if client else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Pages:
    """The origin browsers use (``https://host:port``) and how often pages poll."""

    origin: str
    refresh_ms: int


Page = Callable[[Request, Session], Awaitable[Response]]


class ConsoleApp:
    def __init__(
        self,
        source: ConsoleSource,
        signin: SignIn,
        sessions: Sessions,
        recorder: events.Recorder,
        pages: Pages,
    ) -> None:
        self.source, self.signin, self.sessions = source, signin, sessions
        self.pending = PendingSignIns()
        self.recorder, self.pages = recorder, pages
        self.env = Environment(
            loader=PackageLoader("trustmesh.audit.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.placed = layout(source.edges.graph)
        folder = resources.files("trustmesh.audit.console").joinpath("static")
        self._static = {name: folder.joinpath(name).read_bytes() for name in _STATIC}

    @property
    def redirect_uri(self) -> str:
        return f"{self.pages.origin}/auth/callback"

    def asgi(self) -> ASGIApp:
        page, feed = self._page, self._feed
        routes = [
            Route("/", self.home, methods=["GET"]),
            Route("/signin", self.signin_page, methods=["GET"]),
            Route("/auth/start", self.start, methods=["GET"]),
            Route("/auth/callback", self.callback, methods=["GET"]),
            Route("/auth/signout", self.signout, methods=["POST"]),
            Route("/services", page(self.services), methods=["GET"]),
            Route("/graph", page(self.graph), methods=["GET"]),
            Route("/events", page(self.events), methods=["GET"]),
            Route("/alerts", page(self.alerts), methods=["GET"]),
            Route("/alerts/{alert_id:int}", page(self.alert), methods=["GET"]),
            Route("/traces", page(self.trace_form), methods=["GET"]),
            Route("/traces/{trace_id}", page(self.trace), methods=["GET"]),
            Route("/posture", page(self.posture), methods=["GET"]),
            Route("/api/graph", feed(self.graph_feed), methods=["GET"]),
            Route("/api/events", feed(self.events_feed), methods=["GET"]),
            Route("/api/alerts", feed(self.alerts_feed), methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
        ]
        return SecurityHeaders(Starlette(routes=routes))

    # -- plumbing ---------------------------------------------------------------------------
    def _render(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("refresh_ms", self.pages.refresh_ms)
        html = self.env.get_template(name).render(**values)
        return HTMLResponse(html, status_code=status)

    def _page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                return RedirectResponse("/signin", status_code=303)
            try:
                answer = await handler(request, session)
            except UsageError as exc:
                return self._render("error.html", 400, session=session, message=exc.detail)
            # what an admin looked at is recorded, as the collector's API records its reads
            # (the feeds a page polls are not: they add to what the page showed)
            if answer.status_code == 200:
                actor = Actor.user(None, session.admin.username)
                record_read(self.recorder, f"console-{handler.__name__}", actor)
            return answer

        return endpoint

    def _feed(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                return JSONResponse({"error": "unauthenticated"}, status_code=401)
            try:
                return await handler(request, session)
            except UsageError as exc:
                return JSONResponse({"error": "invalid_request", "message": exc.detail}, 400)

        return endpoint

    def _record(
        self, reason: Reason, message: str, request: Request, *, deny: bool, sub: str | None
    ) -> None:
        self.recorder.record(
            reason,
            message,
            decision=events.Decision.DENY if deny else events.Decision.ALLOW,
            sub=sub or None,
            src=_source(request),
        )

    # -- signing in and out -----------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        signed_in = self.sessions.get(request.cookies.get(SESSION_COOKIE)) is not None
        return RedirectResponse("/services" if signed_in else "/signin", status_code=303)

    async def signin_page(self, request: Request) -> Response:
        return self._render("signin.html", session=None)

    async def start(self, request: Request) -> Response:
        cookie, pending = self.pending.begin()
        try:
            url = await self.signin.start(pending, self.redirect_uri)
        except TrustmeshError as exc:
            return self._render("signin.html", 503, session=None, message=exc.detail)
        response = RedirectResponse(url, status_code=303)
        response.headers.append("set-cookie", _cookie(SIGNIN_COOKIE, cookie, 600))
        return response

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        pending = self.pending.take(request.cookies.get(SIGNIN_COOKIE), params.get("state"))
        code = params.get("code")
        if pending is None or not code or len(code) > 512:
            error = params.get("error") or ""  # RFC 6749 §4.1.2.1: a code from a set
            why = error if _ERROR_CODE.fullmatch(error) else "no sign-in of this browser matches"
            self._record(
                Reason.LOGIN_FAILED, f"console sign-in: {why[:64]}", request, deny=True, sub=None
            )
            return self._refused("The sign-in did not complete; start again.")
        try:
            admitted = await self.signin.finish(pending, code, self.redirect_uri)
        except TrustmeshError as exc:
            return self._render("signin.html", 503, session=None, message=exc.detail)
        deny = admitted.admin is None
        self._record(
            admitted.reason, f"console: {admitted.why}", request, deny=deny, sub=admitted.sub
        )
        if admitted.admin is None:
            refused = (
                "Only admins who signed in with a second factor may use the console."
                if admitted.reason == Reason.ADMIN_DENIED
                else "The sign-in did not complete; start again."
            )
            return self._refused(refused)
        cookie, _ = self.sessions.open(admitted.admin)
        response = RedirectResponse("/services", status_code=303)
        response.headers.append("set-cookie", _cookie(SIGNIN_COOKIE, "", 0))
        response.headers.append(
            "set-cookie", _cookie(SESSION_COOKIE, cookie, int(self.sessions.ttl))
        )
        return response

    def _refused(self, message: str) -> Response:
        response = self._render("signin.html", 403, session=None, message=message, refused=True)
        response.headers.append("set-cookie", _cookie(SIGNIN_COOKIE, "", 0))
        return response

    async def signout(self, request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(cookie)
        raw = await request.body()
        form = dict(parse_qsl(raw[:4096].decode("utf-8", "replace"), keep_blank_values=True))
        token = form.get("csrf")
        origin = request.headers.get("origin")
        if (
            session is None
            or not isinstance(token, str)
            or not self.sessions.csrf_ok(session, token)
            or (origin is not None and origin != self.pages.origin)
        ):
            return self._render(
                "error.html", 403, session=None, message="Refused: not this console's form."
            )
        self.sessions.close(cookie)
        self._record(Reason.OK, "console: signed out", request, deny=False, sub=session.admin.sub)
        response = RedirectResponse("/signin", status_code=303)
        response.headers.append("set-cookie", _cookie(SESSION_COOKIE, "", 0))
        return response

    # -- pages -------------------------------------------------------------------------------
    async def services(self, request: Request, session: Session) -> Response:
        found = await self.source.services()
        return self._render("services.html", session=session, rows=found, page="services")

    def _edges(self) -> dict[str, tuple[int, int]]:
        now_ms = int(self.source.now().timestamp() * 1000)
        return self.source.edges.recent(now_ms)

    async def graph(self, request: Request, session: Session) -> Response:
        counts = self._edges()
        graph = self.source.edges.graph
        declared = {edge.key for edge in graph.edges}
        attempted = [key for key in counts if key not in declared]
        return self._render(
            "graph.html",
            session=session,
            page="graph",
            graph=graph,
            placed=self.placed,
            counts=counts,
            attempted=attempted,
            width=max((p.x for p in self.placed.values()), default=0) + 160,
            height=max((p.y for p in self.placed.values()), default=0) + 60,
        )

    async def events(self, request: Request, session: Session) -> Response:
        params = dict(request.query_params)
        query = event_query(params, self.source.now())
        found = [event_row(e) for e in await self.source.events(query)]
        seqs = [int(r["seq"]) for r in found if DIGITS.fullmatch(r["seq"])]
        older = None
        if len(found) >= query.limit and seqs:  # a next page of older ones, same filters
            kept = {k: v for k, v in params.items() if k in EVENT_FILTERS and v}
            older = "/events?" + urlencode({**kept, "before": str(min(seqs))})
        return self._render(
            "events.html",
            session=session,
            page="events",
            rows=found,
            filters=params,
            # the live feed only on the newest page: it adds what came after the newest
            newest=max(seqs, default=0) if "before" not in params else None,
            older=older,
        )

    async def alerts(self, request: Request, session: Session) -> Response:
        found = [self._alert_row(a) for a in await self.source.alerts(limit=100, newest=True)]
        newest = max((int(a["id"]) for a in found), default=0)
        return self._render(
            "alerts.html", session=session, page="alerts", rows=found, newest=newest
        )

    @staticmethod
    def _alert_row(alert: dict[str, Any]) -> dict[str, Any]:
        group = ", ".join(f"{k}={v}" for k, v in (alert.get("group") or {}).items())
        return {
            "id": str(alert.get("id", "")),
            "time": when(alert.get("stored_at")),
            "level": str(alert.get("level", "")),
            "title": str(alert.get("title", ""))[:300],
            "rule": str(alert.get("rule_id", "")),
            "group": group[:300],
            "events": str(len(alert.get("event_uids") or ())),
        }

    async def alert(self, request: Request, session: Session) -> Response:
        found, logged = await self.source.alert(int(request.path_params["alert_id"]))
        if found is None:
            return self._render("error.html", 404, session=session, message="No such alert.")
        rows = [event_row(e) for e in logged]
        return self._render(
            "alert.html", session=session, page="alerts", alert=self._alert_row(found), rows=rows
        )

    async def trace_form(self, request: Request, session: Session) -> Response:
        wanted = request.query_params.get("id")
        if wanted:
            return RedirectResponse(
                f"/traces/{trace_id_of(wanted.strip().lower())}", status_code=303
            )
        return self._render("trace.html", session=session, page="traces", trace_id=None)

    async def trace(self, request: Request, session: Session) -> Response:
        trace_id = trace_id_of(str(request.path_params["trace_id"]))
        spans, logged = await self.source.trace(trace_id)
        if not spans and not logged:
            return self._render("error.html", 404, session=session, message="No such trace.")
        return self._render(
            "trace.html",
            session=session,
            page="traces",
            trace_id=trace_id,
            spans=span_rows(spans),
            rows=[event_row(e) for e in sorted(logged, key=lambda e: int(e.get("time", 0)))],
        )

    async def posture(self, request: Request, session: Session) -> Response:
        report = self.source.posture()
        controls = []
        for control in (report or {}).get("controls", [])[:500]:
            if isinstance(control, dict):
                ids = control.get("event_ids")
                controls.append(
                    {
                        "name": str(control.get("name", ""))[:200],
                        "passed": control.get("passed") is True,
                        "attack": str(control.get("attack", ""))[:300],
                        "observed": str(control.get("observed", ""))[:300],
                        "event_ids": [str(i)[:64] for i in ids[:20]]
                        if isinstance(ids, list)
                        else [],
                    }
                )
        return self._render(
            "posture.html", session=session, page="posture", report=report, controls=controls
        )

    # -- feeds -------------------------------------------------------------------------------
    async def graph_feed(self, request: Request, session: Session) -> Response:
        return JSONResponse({"edges": self._edges()})

    async def events_feed(self, request: Request, session: Session) -> Response:
        after = request.query_params.get("after", "0")
        if not DIGITS.fullmatch(after):
            raise UsageError("after: the last seq seen")
        query = event_query(dict(request.query_params), self.source.now(), after=int(after))
        return JSONResponse({"events": [event_row(e) for e in await self.source.events(query)]})

    async def alerts_feed(self, request: Request, session: Session) -> Response:
        after = request.query_params.get("after", "0")
        if not DIGITS.fullmatch(after):
            raise UsageError("after: the last alert id seen")
        found = await self.source.alerts(after_id=int(after), limit=100)
        return JSONResponse({"alerts": [self._alert_row(a) for a in found]})

    async def static(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        if name not in _STATIC:
            return Response(status_code=404)
        return Response(self._static[name], media_type=_STATIC[name])
