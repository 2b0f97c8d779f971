"""The gateway's decisions for a proxy that forwards requests itself: an external
authorization service in the shape of Envoy's ``ext_authz`` HTTP service, which nginx's
``auth_request`` (and HAProxy, through a Lua or SPOE hook) can call too.

The proxy asks before it forwards; the authorizer runs the gateway's own stages that
need no body (:meth:`~trustmesh.gateway.app.GatewayApp.decide`: address rules, path
form, CORS preflight, route, rate limits, credentials, edge policy — the same code, the
same declaration, the same events) and answers:

- **allowed:** ``200``, empty, with the headers the proxy puts on the upstream request
  (``authorization``: the internal token, bound to the gateway's certificate, which the
  proxy presents on its mTLS connection; ``traceparent``) and those it adds to the
  client's answer (``ratelimit-policy``, ``ratelimit``). In Envoy:
  ``allowed_upstream_headers`` and ``allowed_client_headers_on_success``; in nginx:
  ``auth_request_set`` from ``$upstream_http_…``;
- **refused:** the gateway's own answer — its status (401, 403, 404, 405, 429, 431…),
  headers (``www-authenticate``, ``retry-after``, ``allow``) and JSON body, which Envoy
  relays to the client as it is (nginx relays 401 and 403; its configuration maps the
  others);
- **a CORS preflight:** the gateway's 204 with its grants (a "denial" the proxy relays:
  it is the preflight's answer).

How the request asked about is told, both read here:

- Envoy: the check request *is* the original request — its method, its path after
  ``prefix`` (Envoy's ``path_prefix``), its headers;
- nginx: a request for ``prefix`` itself, the original in ``X-Original-Method`` and
  ``X-Original-URI`` (each exactly once: a copy the client slipped in beside the proxy's
  makes it no question, answered ``404``).

What it cannot see, the declaration must not ask of it: the body (schema validation, the
injection filter's body inspection), so a route that declares ``openapi``, ``schema`` or
a ``waf`` mode other than ``off`` is answered ``500`` (``engine-unsupported``) rather than
allowed unchecked. The client's address is the peer's unless the proxy is a trusted
proxy (``gateway.trusted_proxies``), whose ``X-Forwarded-For`` is read as the gateway
reads it.

Behind nginx the gateway runs (``gateway.engine: nginx``, :mod:`trustmesh.gateway.nginx`),
the authorizer listens on a socket only nginx can reach and is told the client's address
(``client_from``: ``X-Original-Client``, nginx's ``$remote_addr``, exactly once) and the
request's span (``traceparent``: nginx's, which the upstream gets too; each question
is a span of the authorizer's, its child, with the decision: nginx records no span of
its own, so a trace shows the authorizer's and the upstream's side by side). nginx's
``auth_request`` relays 401 and 403 and turns any other status into its own 500 (with
an error logged), so a refusal to an nginx question is a 401 or a 403 that carries its
own status and body in headers (``x-trustmesh-status``, ``x-trustmesh-body``) for the
rendered configuration to answer with (``auth_request_set``).

Where nginx keeps decisions (``gateway.nginx.decision_ttl``), an allowed answer says for
how long (``x-accel-expires``: never past the time the internal token keeps a quarter of
its life), on the routes whose limits nginx counts itself
(:func:`~trustmesh.gateway.ratelimit.proxy_limits`); it names the bucket of each of
those limits (``x-trustmesh-limit-<zone>``), which are not counted here. A refusal is
never kept, nor an answer to a request whose key parts (:data:`_KEYED`) are ambiguous.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

from trustmesh.gateway.app import GatewayApp
from trustmesh.gateway.cors import response_grants
from trustmesh.gateway.exchange import Exchange, Outcome, Reply, refusal_body, refuse
from trustmesh.platform.listeners import Receive, Scope, Send, answer_lifespan, respond_json
from trustmesh.sdk import spans, trace

__all__ = ["DEFAULT_PREFIX", "Authorizer"]

DEFAULT_PREFIX = "/ext_authz"
_TO_CLIENT = (b"ratelimit-policy", b"ratelimit")


class Authorizer:
    """The ASGI app a proxy calls; ``current`` gives the gateway's current pipeline (so a
    reload applies to the proxy's questions too)."""

    def __init__(
        self,
        current: Callable[[], GatewayApp],
        *,
        prefix: str = DEFAULT_PREFIX,
        client_from: bytes | None = None,
    ) -> None:
        """``client_from``: the header in which the proxy names the client's address, for
        nginx questions (only where no one but the proxy can ask: its value is believed)."""
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"the prefix is a path without a trailing slash, not {prefix!r}")
        self.current = current
        self.prefix = prefix
        self._raw_prefix = prefix.encode("ascii")
        self._client_from = client_from

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        # one span per question (a child of the proxy's span of the request)
        await spans.traced(scope, receive, send, self._check)

    async def _check(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = self._asked(scope)
        span = spans.current_span()
        if span is not None and asked is not None:
            span.name = f"authorize {asked['method']} {asked['path'][:128]}"
            span.attributes["url.path"] = asked["path"][:512]
        if asked is None:
            await respond_json(
                send, 404, json.dumps({"error": "not_found", "message": "not a check"}).encode()
            )
            return
        app = self.current()
        context: dict[str, Any] = {"engine": "authorizer"}
        nginx = scope.get("raw_path") == self._raw_prefix
        parent = _told_trace(scope["headers"]) if nginx else None
        ex, outcome = await app.decide(asked, context, by_proxy=nginx, parent=parent)
        if outcome is None:
            if app.needs_body(ex.index):
                app.refused_unchecked(ex)
                await respond_json(
                    send,
                    500,
                    json.dumps(
                        {
                            "error": "engine_unsupported",
                            "message": "this route inspects bodies: only the gateway itself serves it",
                        }
                    ).encode(),
                )
                return
            headers = _granted_to_nginx(app, ex, scope["headers"]) if nginx else app.grant(ex)
            headers += [(k, v) for k, v in ex.grants if k in _TO_CLIENT]
            headers.append((b"content-length", b"0"))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if nginx:
            await _refuse_to_nginx(send, outcome)
            return
        if isinstance(outcome, Reply):
            await send(
                {
                    "type": "http.response.start",
                    "status": outcome.status,
                    "headers": outcome.headers,
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await refuse(send, outcome)

    def _asked(self, scope: Scope) -> Scope | None:
        """The original request's scope, as the proxy told it (None: not a check)."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        headers = scope["headers"]
        if raw == self._raw_prefix:  # nginx: the original in headers, each exactly once
            methods = [v for k, v in headers if k == b"x-original-method"]
            uris = [v for k, v in headers if k == b"x-original-uri"]
            if len(methods) != 1 or len(uris) != 1 or not uris[0].startswith(b"/"):
                return None  # a client's copy beside the proxy's is no question to answer
            method, uri = methods[0], uris[0]
            path, _, query = uri.partition(b"?")
            told = (b"x-original-method", b"x-original-uri", b"traceparent", self._client_from)
            asked = {
                **scope,
                "method": method.decode("latin-1").upper(),
                "raw_path": path,
                "path": path.decode("latin-1"),
                "query_string": query,
                "headers": [(k, v) for k, v in headers if k not in told],
            }
            if self._client_from is not None:
                clients = [v for k, v in headers if k == self._client_from]
                if len(clients) != 1:
                    return None
                asked["client"] = (clients[0].decode("latin-1"), 0)
            return asked
        if raw.startswith(self._raw_prefix + b"/"):  # Envoy: the original, after the prefix
            path = raw[len(self._raw_prefix) :]
            return {**scope, "raw_path": path, "path": scope["path"][len(self.prefix) :]}
        return None


#: The request's parts nginx keys a kept decision by (besides the client's address): a
#: decision is kept only where each is there at most once and holds no ``|``, nginx's
#: separator in the key, so no two requests that differ in them share a key.
_KEYED: Final = (
    b"x-original-method",
    b"x-original-uri",
    b"host",
    b"authorization",
    b"x-api-key",
    b"x-forwarded-for",
    b"origin",
)


def _keepable(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether nginx may keep this decision: every part it is keyed by is unambiguous,
    and it is no ``OPTIONS`` (a CORS preflight is told apart by headers not in the key)."""
    seen: set[bytes] = set()
    for name, value in headers:
        if name == b"x-original-method" and value.upper() == b"OPTIONS":
            return False
        if name in _KEYED:
            if name in seen or b"|" in value:
                return False
            seen.add(name)
    return True


def _told_trace(headers: list[tuple[bytes, bytes]]) -> trace.TraceParent | None:
    """nginx's span of the request (``traceparent``, exactly once): the authorizer's
    events and the upstream's request carry the same trace."""
    told = [v for k, v in headers if k == b"traceparent"]
    return trace.parse(told[0].decode("latin-1")) if len(told) == 1 else None


def _who(user: dict[str, Any] | None) -> list[tuple[bytes, bytes]]:
    """The caller's ``sub`` and ``client_id``, percent-encoded (any character a token
    holds, in a header)."""
    if user is None:
        return []
    return [
        (header, quote(str(user[claim]), safe=_SAFE).encode("ascii"))
        for header, claim in ((b"x-trustmesh-sub", "sub"), (b"x-trustmesh-client-id", "client_id"))
        if user.get(claim)
    ]


_SAFE: Final = ":@/.-_~+="


def _granted_to_nginx(
    app: GatewayApp, ex: Exchange, asked: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """An allowed answer to nginx: the internal token (and each limit's bucket), the
    route it checks, the client and caller for its record of what it answers itself,
    the CORS grants of the answer, and how long it may keep the decision."""
    headers, seconds = app.grant_kept(ex)
    headers.append((b"x-trustmesh-route", str(ex.index).encode()))
    headers.append((b"x-trustmesh-client", ex.client.encode("latin-1")))
    headers += _who(ex.user)
    if ex.route is not None:
        headers += response_grants(ex.route.cors, ex.headers)
    if seconds and _keepable(asked):
        headers.append((b"x-accel-expires", str(seconds).encode()))
    return headers


async def _refuse_to_nginx(send: Send, outcome: Outcome) -> None:
    """A refusal (or a preflight's answer) as ``auth_request`` takes it: a 401 or a 403
    (it relays those two and logs any other status as an error of its own; a 2xx would
    forward the request), the gateway's own status and body in headers."""
    if isinstance(outcome, Reply):
        headers = [*outcome.headers, (b"x-trustmesh-status", str(outcome.status).encode())]
        await respond_json(send, 403, b"", headers)
        return
    status, body = refusal_body(outcome)
    headers = [
        *outcome.headers,
        (b"x-trustmesh-status", str(status).encode()),
        (b"x-trustmesh-body", body),
    ]
    await respond_json(send, 401 if status == 401 else 403, body, headers)
