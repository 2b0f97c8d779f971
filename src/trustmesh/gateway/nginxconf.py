"""The nginx configuration of ``gateway.engine: nginx``, rendered from the declaration.
Pure: a plan in, the text of ``nginx.conf`` out (:mod:`trustmesh.gateway.nginx` writes it,
checks it with ``nginx -t`` and runs nginx).

What nginx does and what it asks:

- **TLS in** with the gateway's certificate; the listener's bounds of ``gateway.limits``
  (header sizes: 414/400, timeouts, connections) and ``max_body_bytes`` (413).
- **Every request is asked about first** (``auth_request``) at the gateway's authorizer
  (:mod:`trustmesh.gateway.authorizer`), on a unix socket only the gateway's user can
  reach, with the request's method, its URI exactly as sent, and the client's address:
  address rules, path form, route, rate limits, credentials and the edge policy run
  there, with their events. Allowed, it answers the internal token, the trace, the route
  and the client address; refused, its status, headers and body, which nginx answers.
- **One location per path prefix** (``/p`` and ``/p/``: a prefix matches itself and
  what is under it, never ``/pX``) forwards only to a route the authorizer may choose for
  what nginx places there (a ``map`` of the route it names), and only the one it chose:
  a request nginx would place elsewhere than the gateway does is never forwarded (502).
  Where a prefix has one such route it forwards itself; where it has several (routes on
  one path for other methods or hosts, or host routes above a shorter host-less one that
  takes the other hosts' requests) it hands the request to the chosen route's own
  location (``@tm_route_N``), as it does where nginx counts a route's limits.
- **Upstream over mTLS** with the gateway's SVID, the server's chain checked against
  the trust bundle and its name against the DNS SAN of its SPIFFE ID
  (:func:`trustmesh.crypto.svid_dns_name`), keep-alive pooled.
- **Request headers: an allow-list.** nginx forwards no header of the client's but those
  of :data:`FORWARDED` (or the route's ``request_headers``), besides what the gateway
  sets (the internal token, ``traceparent``, ``X-Forwarded-For``/``-Proto``): nothing a
  client could speak for the gateway with gets through, whatever its name.
- **Answers:** the upstream's errors (≥ 400) and nginx's own in the gateway's shape
  (:mod:`trustmesh.gateway.answers`), the security headers on every answer, and the
  upstream's internal headers (``X-Trustmesh-*``, ``X-Envoy-*``, ``X-Gateway-*``,
  ``Access-Control-*``, ``Server``) removed (the headers-more module).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Final

from trustmesh.config.gateway import GatewayConfig, GatewayRoute
from trustmesh.config.listen import authority
from trustmesh.gateway.answers import ERROR_HEADERS, error_code, error_message
from trustmesh.gateway.headers import GATEWAY_SET, SECURITY_HEADERS, stripped
from trustmesh.gateway.ratelimit import ProxyLimit, proxy_limits
from trustmesh.reasons import ANSWERS

__all__ = [
    "AUTHZ_LOCATION",
    "FORWARDED",
    "KEPT_BY",
    "KEPT_LOG",
    "NginxPlan",
    "Upstream",
    "placement",
    "render",
]

#: The internal location nginx asks the authorizer through.
AUTHZ_LOCATION: Final = "/_trustmesh/authz"
#: The request headers a route forwards where it lists none (``request_headers``): the
#: end-to-end ones a service reads to serve a request, and nothing that names anyone.
FORWARDED: Final = (
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-language",
    "content-type",
    "cookie",
    "idempotency-key",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "origin",
    "prefer",
    "range",
    "referer",
    "user-agent",
    "x-request-id",
)
#: What the authorizer answers that nginx keeps (auth_request_set), by variable.
_FROM_AUTHORIZER: Final = (
    ("tm_status", "x_trustmesh_status"),
    ("tm_body", "x_trustmesh_body"),
    ("tm_route", "x_trustmesh_route"),
    ("tm_client", "x_trustmesh_client"),
    ("tm_sub", "x_trustmesh_sub"),
    ("tm_client_id", "x_trustmesh_client_id"),
    ("tm_token", "authorization"),
    ("tm_www_authenticate", "www_authenticate"),
    ("tm_retry_after", "retry_after"),
    ("tm_allow", "allow"),
    ("tm_ratelimit", "ratelimit"),
    ("tm_ratelimit_policy", "ratelimit_policy"),
    ("tm_cors_origin", "access_control_allow_origin"),
    ("tm_cors_credentials", "access_control_allow_credentials"),
    ("tm_cors_methods", "access_control_allow_methods"),
    ("tm_cors_headers", "access_control_allow_headers"),
    ("tm_cors_max_age", "access_control_max_age"),
    ("tm_vary", "vary"),
)
#: The authorizer's headers an answer carries to the client (refused or not).
_TO_CLIENT: Final = (
    ("WWW-Authenticate", "tm_www_authenticate"),
    ("Retry-After", "tm_retry_after"),
    ("Allow", "tm_allow"),
    ("RateLimit-Policy", "tm_ratelimit_policy"),
    ("RateLimit", "tm_ratelimit"),
    ("Access-Control-Allow-Origin", "tm_cors_origin"),
    ("Access-Control-Allow-Credentials", "tm_cors_credentials"),
    ("Access-Control-Allow-Methods", "tm_cors_methods"),
    ("Access-Control-Allow-Headers", "tm_cors_headers"),
    ("Access-Control-Max-Age", "tm_cors_max_age"),
    ("Vary", "tm_vary"),
)
#: What an upstream's error keeps of its answer (``answers.ERROR_HEADERS``, but for the
#: rate limits, which the authorizer's answer tells).
_UPSTREAM_ERROR_HEADERS: Final = tuple(
    "-".join(part.capitalize() for part in name.decode().split("-"))
    for name in sorted(ERROR_HEADERS)
    if name not in (b"ratelimit", b"ratelimit-policy")
)
#: The upstream's response headers never relayed (headers-more wildcards).
_HIDDEN: Final = ("X-Trustmesh-*", "X-Envoy-*", "X-Gateway-*", "Server")
#: The upstream's CORS headers, never relayed: the grants are the gateway's (the
#: authorizer's answer). Hidden where nginx reads the upstream's answer, so that the
#: grants nginx adds itself stay.
_UPSTREAM_CORS: Final = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
    "Access-Control-Allow-Private-Network",
)
#: Every error status nginx answers in the gateway's shape.
_ERRORS: Final = tuple(s.value for s in HTTPStatus if 400 <= s.value <= 599)
#: The statuses the authorizer refuses with (the reasons' vocabulary).
_REFUSALS: Final = tuple(sorted({answer.status for answer in ANSWERS.values()}))
_NO_UPSTREAM: Final = "tm_none"
#: The request's span as nginx tells it to the authorizer and the upstream.
_TRACEPARENT: Final = '"00-$tm_trace-$tm_span-01"'
#: nginx's record of a request it answered without asking (a kept decision, its own limit).
KEPT_LOG: Final = "kept.log"
_KEPT_LINE: Final = (
    '{"t":"$msec","id":"$tm_trace","client":"$tm_client","method":"$request_method",'
    '"path":"$tm_path","status":"$status","route":"$tm_route","sub":"$tm_sub",'
    '"client_id":"$tm_client_id","kept":"$tm_cache","limit":"$limit_req_status"}'
)
#: What nginx keys a kept decision by, in this order (:mod:`trustmesh.gateway.authorizer`
#: keeps none where one of them is ambiguous).
KEPT_BY: Final = (
    "$request_method",
    "$request_uri",
    "$http_host",
    "$http_authorization",
    "$http_x_api_key",
    "$remote_addr",
    "$http_x_forwarded_for",
    "$http_origin",
)


@dataclass(frozen=True)
class Upstream:
    """A service as nginx reaches it: its instances (``host:port``) and the DNS name its
    SVID carries."""

    name: str
    servers: tuple[str, ...]
    dns_name: str


@dataclass(frozen=True)
class NginxPlan:
    """Everything the configuration names: the declaration's gateway section, where
    nginx runs (``root``: its pid, logs and temporary files), the files it reads, the
    authorizer's socket and the upstreams found so far."""

    gateway: GatewayConfig
    root: Path
    port: int
    tls_cert: Path
    tls_key: Path
    svid_cert: Path
    svid_key: Path
    bundle: Path
    authorizer: Path  # a unix socket
    authorizer_prefix: str
    upstreams: Sequence[Upstream]
    #: a fresh folder for the decisions nginx keeps (``gateway.nginx.decision_ttl``), and
    #: the name of this configuration's cache: a new configuration keeps none of the
    #: decisions of the one before (a new policy, a rotated certificate)
    kept: Path | None = None
    generation: int = 0
    modules: Path = Path("/usr/lib/nginx/modules")
    host: str = "127.0.0.1"
    user: str | None = None  # the workers' user, where nginx starts as root


def render(plan: NginxPlan) -> str:
    """The text of ``nginx.conf`` for ``plan``."""
    gateway, limits = plan.gateway, plan.gateway.limits
    by_service = {u.name: u for u in plan.upstreams}
    lines = [
        f"load_module {_quoted(plan.modules / 'ngx_http_headers_more_filter_module.so')};",
        *([f"user {_quoted(plan.user)};"] if plan.user else []),
        "daemon off;",
        "master_process on;",
        f"worker_processes {gateway.nginx.workers};",
        f"pid {_quoted(plan.root / 'nginx.pid')};",
        f"error_log {_quoted(plan.root / 'error.log')} warn;",
        f"events {{ worker_connections {max(limits.max_connections + 64, 512)}; }}",
        "http {",
        *_indent(_http(plan, by_service)),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _http(plan: NginxPlan, by_service: dict[str, Upstream]) -> list[str]:
    gateway, limits = plan.gateway, plan.gateway.limits
    temp = plan.root / "tmp"
    kept = _kept(plan)
    lines = [
        "server_tokens off;",
        "uninitialized_variable_warn off;",  # the authorizer's answers, before it is asked
        "more_clear_headers " + " ".join(_quoted(h) for h in _HIDDEN) + ";",
        *(f"proxy_hide_header {name};" for name in _UPSTREAM_CORS),
        # every decision is the authorizer's event, but those nginx kept (kept.log)
        *(["access_log off;"] if kept is None else []),
        *(
            f"{kind}_temp_path {_quoted(temp / kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        f"client_max_body_size {gateway.max_body_bytes};",
        f"client_header_timeout {_seconds(limits.header_timeout.total_seconds())};",
        f"client_body_timeout {_seconds(limits.body_timeout.total_seconds())};",
        f"keepalive_timeout {_seconds(limits.keepalive_timeout.total_seconds())};",
        f"client_header_buffer_size {min(limits.max_header_line_bytes, 8192)};",
        "large_client_header_buffers "
        f"{max(1, limits.max_header_bytes // limits.max_header_line_bytes)} "
        f"{limits.max_header_line_bytes};",
        "ignore_invalid_headers on;",  # names with '_' never reach anyone
        "underscores_in_headers off;",
        "merge_slashes off;",  # the authorizer sees the path as sent, and so do locations
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_prefer_server_ciphers on;",
        "proxy_http_version 1.1;",
        "proxy_pass_request_headers off;",
        f"proxy_ssl_certificate {_quoted(plan.svid_cert)};",
        f"proxy_ssl_certificate_key {_quoted(plan.svid_key)};",
        f"proxy_ssl_trusted_certificate {_quoted(plan.bundle)};",
        "proxy_ssl_verify on;",
        "proxy_ssl_verify_depth 4;",
        "proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        "proxy_ssl_session_reuse on;",
        "proxy_intercept_errors on;",
        f"upstream tm_authorizer {{ server {_quoted('unix:' + str(plan.authorizer))}; "
        "keepalive 32; }",
        f"upstream {_NO_UPSTREAM} {{ server 127.0.0.1:9 down; }}",
        *_TRACE_MAPS,
    ]
    if kept is not None:
        lines += _kept_http(plan, *kept)
    placed = placement(plan.gateway.routes)
    lines += [
        *_upstreams(plan, by_service, placed),
        "server {",
        *_indent(_server(plan, by_service, placed)),
        "}",
    ]
    return lines


#: This request's trace: the time in ms (13 decimal digits, which are hex digits too) then
#: the request id's last 76 random bits, so trace ids sort by time (the audit log's trace
#: index grows at its end), as the gateway's own do; its span the request id's first 64
#: bits. Maps are kept for the request and shared with the authorizer's subrequest: both
#: see one trace.
_TRACE_MAPS: Final = (
    'map $msec $tm_ms { "~^(?<s>[0-9]{10})\\.(?<m>[0-9]{3})$" $s$m; default 0000000000000; }',
    'map $request_id $tm_random { "~(?<r>[0-9a-f]{19})$" $r; }',
    "map $tm_ms $tm_trace { default $tm_ms$tm_random; }",
    'map $request_id $tm_span { "~^([0-9a-f]{16})" $1; default 0000000000000001; }',
)


def _upstreams(
    plan: NginxPlan,
    by_service: dict[str, Upstream],
    placed: Sequence[tuple[str, tuple[int, ...]]],
) -> list[str]:
    """Each service's instances, and which of them a request goes to: its route's, only
    where the authorizer chose that route, and the route a prefix hands it to."""
    lines = [
        f"upstream {_upstream_name(u.name)} {{ "
        + " ".join(f"server {s};" for s in (u.servers or ("127.0.0.1:9 down",)))
        + " keepalive 64; }"
        for u in plan.upstreams
    ]
    for index, route in enumerate(plan.gateway.routes):
        target = _upstream_name(route.to) if route.to in by_service else _NO_UPSTREAM
        lines.append(
            f'map $tm_route $tm_pass_{index} {{ "{index}" {target}; default {_NO_UPSTREAM}; }}'
        )
    for number, (_, chosen) in enumerate(placed):
        if len(chosen) > 1:  # the routes this prefix's locations hand a request to
            lines.append(
                f"map $tm_route $tm_go_{number} {{ "
                + " ".join(f'"{i}" {i};' for i in chosen)
                + " default none; }"
            )
    return lines


def _kept_http(plan: NginxPlan, folder: Path, seconds: int) -> list[str]:
    """Where nginx keeps decisions: the cache, each limit it counts, and its record of
    what it answers itself (kept.log)."""
    counted = _counted(plan)
    zones = {limit.zone: limit for limits in counted if limits for limit in limits}
    # on a route whose limits nginx counts, every request the authorizer allowed is
    # recorded from here, once nginx's count has passed or refused it (the authorizer
    # records none: its "allowed" would stand beside nginx's refusal of the same request)
    indexes = "|".join(str(index) for index, limits in enumerate(counted) if limits)
    every = [f'"~:({indexes})$" 1;'] if indexes else []
    return [
        f"proxy_cache_path {_quoted(folder)} levels=1:2 "
        f"keys_zone={_cache_zone(plan)}:4m max_size=64m inactive={max(10, 2 * seconds)}s "
        "use_temp_path=off;",
        "limit_req_log_level info;",  # a refusal per line at warn would flood the log
        # what nginx answers without asking, or counts: recorded from its kept.log
        'map $request_uri $tm_path { "~^([^?]*)" $1; }',
        'map "$tm_cache:$limit_req_status:$tm_route" $tm_log '
        + " ".join(['{ "~^HIT:" 1;', '"~:REJECTED:" 1;', *every, "default 0; }"]),
        f"log_format tm_kept escape=json {_quoted(_KEPT_LINE)};",
        f"access_log {_quoted(plan.root / KEPT_LOG)} tm_kept buffer=64k flush=1s if=$tm_log;",
        *(
            f"limit_req_zone ${_key_variable(z)} zone={_zone_name(z)}:1m "
            f"rate={limit.per_minute}r/m;"
            for z, limit in zones.items()
        ),
    ]


def placement(routes: Sequence[GatewayRoute]) -> list[tuple[str, tuple[int, ...]]]:
    """Each prefix the routes declare, in their order, with the routes the authorizer may
    choose (:class:`~trustmesh.gateway.routes.RouteTable`) for a path nginx places under
    it (the longest prefix): that prefix's own, then, while all of a prefix's routes are
    for given hosts, those of the next shorter prefix above it (where another host's
    request goes)."""
    by_prefix: dict[str, list[int]] = {}
    for index, route in enumerate(routes):
        by_prefix.setdefault(route.path, []).append(index)
    placed = []
    for prefix in by_prefix:
        chosen: list[int] = []
        for above in _prefixes_above(prefix):
            level = by_prefix.get(above, [])
            chosen += level
            if any(routes[i].host is None for i in level):
                break
        placed.append((prefix, tuple(chosen)))
    return placed


def _prefixes_above(prefix: str) -> list[str]:
    """``/a/b``, ``/a``, ``/``: the prefix and each that takes what is under it."""
    parts = prefix.strip("/").split("/") if prefix != "/" else []
    return ["/" + "/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def _server(
    plan: NginxPlan,
    by_service: dict[str, Upstream],
    placed: Sequence[tuple[str, tuple[int, ...]]],
) -> list[str]:
    lines = [
        f"listen {authority(plan.host, plan.port)} ssl;",  # [::]:443 for IPv6
        f"ssl_certificate {_quoted(plan.tls_cert)};",
        f"ssl_certificate_key {_quoted(plan.tls_key)};",
        *(f"error_page {status} = @tm_{status};" for status in _ERRORS),
        "error_page 494 = @tm_431;",  # nginx's own code for a head too large: 431 (RFC 6585)
        *_authorizer_location(plan),
    ]
    counted = _counted(plan)  # the declaration's rate rules compiled once per rendering
    for status in _ERRORS:
        lines += _error_location(status, limiting=any(counted))
    routes = plan.gateway.routes

    def upstream(index: int) -> str:
        found = by_service.get(routes[index].to)
        return found.dns_name if found is not None else "unknown.invalid"

    handed: set[int] = set()  # the routes with a location of their own
    for number, (prefix, chosen) in enumerate(placed):
        if len(chosen) == 1 and not counted[chosen[0]]:  # forwarded from here
            body = [*_asked(), *_route(plan, chosen[0], routes[chosen[0]], upstream(chosen[0]))]
        else:  # handed to the chosen route's location once the authorizer named it
            zones = {limit.zone: limit for i in chosen for limit in counted[i] or ()}
            go = f"$tm_go_{number}" if len(chosen) > 1 else str(chosen[0])
            body = [
                *_asked(),
                *(
                    f"auth_request_set ${_key_variable(zone)} "
                    f"$upstream_http_{_key_header(zone).replace('-', '_')};"
                    for zone in zones
                ),
                f"try_files /.trustmesh-none @tm_route_{go};",
            ]
            handed.update(chosen)
        for match in _matches(prefix):
            lines += [f"location {match} {{", *_indent(body), "}"]
    for index in sorted(handed):
        lines += [
            f"location @tm_route_{index} {{",
            *_indent(_limited(limits) if (limits := counted[index]) else []),
            *_indent(_answer_headers()),
            *_indent(_route(plan, index, routes[index], upstream(index))),
            "}",
        ]
    if any(len(chosen) > 1 for _, chosen in placed):  # named by no route it may take: 502
        lines += ["location @tm_route_none {", f"    proxy_pass https://{_NO_UPSTREAM};", "}"]
    if "/" not in {prefix for prefix, _ in placed}:
        # the rest: asked about all the same (404, recorded), never forwarded
        lines += [
            "location / {",
            *_indent(_asked()),
            f"    proxy_pass https://{_NO_UPSTREAM};",
            "}",
        ]
    return lines


def _matches(prefix: str) -> list[str]:
    """nginx locations for a route's prefix: itself and what is under it."""
    if prefix == "/":
        return ["/"]
    return [f"= {_quoted(prefix)}", _quoted(prefix + "/")]


def _authorizer_location(plan: NginxPlan) -> list[str]:
    kept = [
        f"proxy_cache {_cache_zone(plan)};",
        # what the authorizer's decision reads; it keeps none where one holds a '|' or
        # comes twice (so no two requests share a key), nor any refusal
        f"proxy_cache_key {_quoted('|'.join(KEPT_BY))};",
        "proxy_cache_methods GET HEAD;",
        "proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;",
    ]
    return [
        f"location = {AUTHZ_LOCATION} {{",
        "    internal;",
        f"    proxy_pass http://tm_authorizer{plan.authorizer_prefix};",
        "    proxy_pass_request_headers on;",
        "    proxy_pass_request_body off;",
        "    proxy_intercept_errors off;",
        '    proxy_set_header Content-Length "";',
        '    proxy_set_header Connection "";',
        "    proxy_set_header Host $http_host;",
        "    proxy_set_header X-Original-Method $request_method;",
        "    proxy_set_header X-Original-URI $request_uri;",
        "    proxy_set_header X-Original-Client $remote_addr;",
        f"    proxy_set_header traceparent {_TRACEPARENT};",
        *(_indent(kept) if _kept(plan) is not None else []),
        "}",
    ]


def _limited(limits: Sequence[ProxyLimit]) -> list[str]:
    """nginx's own count of a route's limits (a leaky bucket per limit: its quota at
    once, then its sustained rate), and how long a refused client waits."""
    # nginx's rate is whole thousandths of a request a second: one more comes after
    retry = max(-(-1000 // (limit.per_minute * 1000 // 60)) for limit in limits)
    return [
        *(
            f"limit_req zone={_zone_name(limit.zone)}"
            + (f" burst={limit.limit - 1} nodelay;" if limit.limit > 1 else ";")
            for limit in limits
        ),
        "limit_req_status 429;",
        f"set $tm_limit_retry {retry};",
    ]


def _kept(plan: NginxPlan) -> tuple[Path, int] | None:
    """Where nginx keeps decisions, and for how long at most (None: it keeps none)."""
    ttl = plan.gateway.nginx.decision_ttl
    if ttl is None or plan.kept is None:
        return None
    return plan.kept, int(ttl.total_seconds())


def _counted(plan: NginxPlan) -> tuple[tuple[ProxyLimit, ...] | None, ...]:
    """Per route, the limits nginx counts (where it keeps decisions)."""
    if _kept(plan) is None:
        return (None,) * len(plan.gateway.routes)
    return proxy_limits(plan.gateway)


def _cache_zone(plan: NginxPlan) -> str:
    return f"tm_kept_{plan.generation}"


def _zone_name(zone: str) -> str:
    return "tm_rl_" + zone.replace(".", "_")


def _key_variable(zone: str) -> str:
    return "tm_lk_" + zone.replace(".", "_")


def _key_header(zone: str) -> str:
    """The authorizer's header naming this request's bucket of ``zone``."""
    return "x-trustmesh-limit-" + zone.replace(".", "-")


def _asked() -> list[str]:
    return [
        f"auth_request {AUTHZ_LOCATION};",
        "auth_request_set $tm_cache $upstream_cache_status;",  # HIT: a kept decision
        *(f"auth_request_set ${var} $upstream_http_{header};" for var, header in _FROM_AUTHORIZER),
        *_answer_headers(),
    ]


def _answer_headers() -> list[str]:
    """The security headers, and the authorizer's headers for the client."""
    return [
        *(
            f"add_header {name.decode()} {_quoted(value.decode())} always;"
            for name, value in SECURITY_HEADERS
        ),
        *(f"add_header {name} ${var} always;" for name, var in _TO_CLIENT),
    ]


def _route(plan: NginxPlan, index: int, route: GatewayRoute, dns_name: str) -> list[str]:
    timeout = _seconds(route.timeout.total_seconds())
    forwarded = (
        FORWARDED
        if route.request_headers is None
        else tuple(h for h in route.request_headers if not stripped(h.encode()))
    )
    forwarded = tuple(h for h in forwarded if h.encode() not in GATEWAY_SET)
    return [
        f"proxy_pass https://$tm_pass_{index};",
        f"proxy_ssl_name {dns_name};",
        f"proxy_connect_timeout {timeout};",
        f"proxy_send_timeout {timeout};",
        f"proxy_read_timeout {timeout};",
        f"proxy_set_header Host {dns_name};",
        'proxy_set_header Connection "";',
        "proxy_set_header Authorization $tm_token;",
        f"proxy_set_header traceparent {_TRACEPARENT};",
        "proxy_set_header X-Forwarded-For $tm_client;",
        "proxy_set_header X-Forwarded-Proto https;",
        *(f"proxy_set_header {name} $http_{name.replace('-', '_')};" for name in forwarded),
    ]


def _error_location(status: int, *, limiting: bool = False) -> list[str]:
    """The answer for ``status``: the authorizer's refusal where it made one (a 401 or a
    403 for ``auth_request``, its own status told; a 500 where it failed), else the
    upstream's or nginx's error in the gateway's shape."""
    upstream_body = json.dumps({"error": error_code(status), "message": error_message(status)})
    refusals = [s for s in _REFUSALS if status in (403, 500) or s == status]
    return [
        f"location @tm_{status} {{",
        "    default_type application/json;",
        *_indent(_answer_headers()),
        *(["    if ($tm_status = 204) { return 204; }"] if status in (403, 500) else []),
        *(f"    if ($tm_status = {s}) {{ return {s} $tm_body; }}" for s in refusals),
        *(
            ["    add_header Retry-After $tm_limit_retry always;"]
            if limiting and status == 429
            else []
        ),
        *(
            f"    add_header {name} $upstream_http_{name.lower().replace('-', '_')} always;"
            for name in _UPSTREAM_ERROR_HEADERS
        ),
        f"    return {status} {_quoted(upstream_body)};",
        "}",
    ]


def _upstream_name(service: str) -> str:
    return "tm_svc_" + "".join(c if c.isalnum() else "_" for c in service)


def _seconds(value: float) -> str:
    return f"{max(1, round(value * 1000))}ms"


def _quoted(text: str | Path) -> str:
    """An nginx string: single-quoted, its quotes and backslashes escaped."""
    value = str(text)
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"no newline or NUL in an nginx string: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _indent(lines: Iterable[str]) -> list[str]:
    return ["    " + line for line in lines]
