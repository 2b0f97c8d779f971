"""An Envoy v3 bootstrap for the gateway's declaration: Envoy forwards, the gateway's
authorizer decides. Pure: a plan in, the bootstrap out (a dict, dumped as YAML or JSON).
Envoy does not run here: the rendering is checked against Envoy's own schema (its v3
protos) by the tests, never by Envoy itself. It is not a ``gateway.engine``.

What the rendered Envoy does and what it asks:

- **TLS in** with the gateway's certificate (TLS 1.2 at least); the listener's bounds of
  ``gateway.limits``: the request head's size (``max_request_headers_kb``) and header
  count (431), the head and idle timeouts; ``max_body_bytes`` (413, the buffer filter).
- **Every request is asked about first** (``ext_authz``: the HTTP service of
  :mod:`trustmesh.gateway.authorizer` at ``<prefix>/<original path>``, or, with a
  :class:`GrpcAuthorizer`, the gRPC one of :mod:`trustmesh.gateway.grpc_authz` over mTLS:
  Envoy presents its SVID, one of ``gateway.ext_authz.callers``, and checks the
  gateway's SPIFFE ID, HTTP/2 to the gateway's ``ext_authz`` port), fail closed
  (``failure_mode_allow: false``; the authorizer unreachable: 503), without the body.
  The check request carries the headers the authorizer's stages read (:data:`ASKED`):
  credentials, the host, CORS preflight's, and ``X-Forwarded-For``, which Envoy sets
  (``use_remote_address``: the peer's address, rightmost) and which the authorizer
  believes only where Envoy's address is in ``gateway.trusted_proxies``. Allowed, the
  authorizer's internal token and ``traceparent`` replace the client's on the upstream
  request, its ``RateLimit`` headers go to the client; refused, its status, headers and
  JSON body are the answer.
- **Paths as sent:** ``normalize_path`` and ``merge_slashes`` off and escaped slashes
  kept unchanged, so the authorizer sees the path exactly as the client sent it and
  refuses every non-canonical one (dot segments, ``//``, ``%2F``…: 400, recorded), and
  Envoy routes on that same path: never a path fixed up for one of them and not the other.
  (``REJECT_REQUEST`` for escaped slashes would refuse them too, but as Envoy's own 400
  with no event.)
- **One route per declared route**, longest prefix first (``/p`` and what is under
  ``/p/``, never ``/pX``), for its methods only (``:method``); the gateway routes the
  same way (:mod:`trustmesh.gateway.routes`) and asks first, so Envoy forwards only what
  the gateway routed there. What no route takes is Envoy's 404, after the authorizer's.
- **Upstream over mTLS** with the gateway's SVID, the server's chain checked against the
  trust bundle and its URI SAN against the service's SPIFFE ID (stronger than nginx's
  check of the DNS SAN), ``Host`` the service's DNS name.
- **Request headers: a deny-list.** Envoy has no allow-list of request headers without
  Lua, so this is the Python engine's rule, not nginx's: every header of
  :data:`~trustmesh.gateway.headers.STRIPPED` by name and of
  :data:`~trustmesh.gateway.headers.STRIPPED_FAMILIES` by prefix is removed (the
  ``header_mutation`` filter, after the check), names with ``_`` dropped; then
  ``X-Forwarded-For`` (the peer) and ``X-Forwarded-Proto`` are set. A header a client
  invents is forwarded. A strict route (``request_headers``) is an allow-list: refused.
- **Answers:** the security headers on every answer (the authorizer's refusals and
  Envoy's own replies included: the filter runs before the check), and the upstream's
  internal headers (``X-Trustmesh-*``, ``X-Envoy-*``, ``X-Gateway-*``,
  ``Access-Control-*``, ``Server``) removed; Envoy adds no ``Server`` nor ``x-envoy-*``.

Not enforced, or not rendered: what reads a body (a contract, the injection filter:
refused, as for nginx), CORS grants and per-host routes (refused), the
upstream's errors in the gateway's shape (relayed as the service sent them, as with
``relay_errors``), ``limits.max_connections``, the upstream's health checks and retries,
and SVID rotation (certificates are files read at start: a hot restart).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from trustmesh.config.gateway import GatewayConfig, GatewayRoute
from trustmesh.errors import ConfigError
from trustmesh.gateway.authorizer import DEFAULT_PREFIX
from trustmesh.gateway.headers import SECURITY_HEADERS, STRIPPED, STRIPPED_FAMILIES

__all__ = ["ASKED", "EnvoyPlan", "GrpcAuthorizer", "Upstream", "render", "unsupported"]

_TYPES: Final = "type.googleapis.com/envoy.extensions."
_AUTHORIZER: Final = "trustmesh_authorizer"
#: What the check request carries besides what Envoy always sends (method, path, host,
#: content-length, authorization): what the authorizer's stages read.
ASKED: Final = (
    "authorization",  # a bearer token, or ApiKey
    "x-api-key",
    "origin",  # a CORS preflight
    "access-control-request-method",
    "access-control-request-headers",
    "x-forwarded-for",  # the client's address, as Envoy set it
)
#: The authorizer's headers for the upstream request (they replace the client's).
_TO_UPSTREAM: Final = ("authorization", "traceparent")
#: The authorizer's headers for the client: on a refusal, and on an allowed request.
_TO_CLIENT: Final = (
    "content-type",
    "www-authenticate",
    "retry-after",
    "allow",
    "ratelimit-policy",
    "ratelimit",
)
_TO_CLIENT_ALLOWED: Final = ("ratelimit-policy", "ratelimit")
#: Set on every request Envoy forwards, after the client's copies are removed.
_SET: Final = (
    ("x-forwarded-for", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("x-forwarded-proto", "https"),
)
#: The client's headers Envoy itself keeps or replaces: the internal token and the trace
#: come from the authorizer, ``Host`` is the service's name.
_REPLACED: Final = frozenset({b"authorization", b"traceparent", b"host"})
#: The upstream's response headers never relayed, by prefix, and by name.
_HIDDEN_FAMILIES: Final = ("x-trustmesh-", "x-envoy-", "x-gateway-", "access-control-")
_HIDDEN: Final = ("server",)
_LB: Final = {"round_robin": "ROUND_ROBIN", "least_requests": "LEAST_REQUEST"}


@dataclass(frozen=True)
class Upstream:
    """A service as Envoy reaches it: its instances (``host:port``), the SPIFFE ID its
    SVID carries and its DNS name (SNI and ``Host``)."""

    name: str
    servers: tuple[str, ...]
    spiffe_id: str
    dns_name: str


@dataclass(frozen=True)
class GrpcAuthorizer:
    """The gateway's gRPC ``ext_authz`` as Envoy reaches it: its ``host:port``
    (``gateway.ext_authz``), the SPIFFE ID its certificate must carry (the gateway's), and
    the SVID Envoy presents (its own: a SPIFFE ID of ``gateway.ext_authz.callers``)."""

    address: str
    spiffe_id: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class EnvoyPlan:
    """Everything the bootstrap names: the declaration's gateway section, where Envoy
    listens, the files it reads, the authorizer (the HTTP one: a unix socket, or
    ``host:port``; ``grpc``: the gRPC one, asked instead) and the upstreams found so far."""

    gateway: GatewayConfig
    port: int
    tls_cert: Path
    tls_key: Path
    svid_cert: Path
    svid_key: Path
    bundle: Path
    authorizer: Path | str
    upstreams: Sequence[Upstream]
    authorizer_prefix: str = DEFAULT_PREFIX
    host: str = "127.0.0.1"
    authorizer_timeout: timedelta = timedelta(seconds=2)
    grpc: GrpcAuthorizer | None = None


def unsupported(gateway: GatewayConfig) -> tuple[str, ...]:
    """What the declaration asks that Envoy as rendered cannot enforce, by key path."""
    problems: list[str] = []
    for index, route in enumerate(gateway.routes):
        where = f"gateway.routes[{index}]"
        if route.openapi is not None or route.schema_file is not None:
            problems.append(f"{where}: a request contract reads the body, Envoy forwards it unread")
        if (route.waf or gateway.waf).mode != "off":
            problems.append(
                f"{where}: the injection filter reads bodies, Envoy forwards them unread"
            )
        if route.cors is not None:
            problems.append(f"{where}.cors: CORS grants are not rendered for Envoy")
        if route.host is not None:
            problems.append(f"{where}.host: per-host routes are not rendered for Envoy")
        if route.request_headers is not None:
            problems.append(
                f"{where}.request_headers: an allow-list of request headers, which Envoy "
                "cannot apply without Lua"
            )
    return tuple(problems)


def render(plan: EnvoyPlan) -> dict[str, Any]:
    """The Envoy v3 bootstrap for ``plan``; :class:`ConfigError` naming each route that
    asks what Envoy cannot enforce."""
    problems = unsupported(plan.gateway)
    if problems:
        raise ConfigError("the declaration asks what Envoy cannot enforce", problems=problems)
    by_service = {u.name: u for u in plan.upstreams}
    return {
        "node": {"id": "trustmesh-gateway", "cluster": "trustmesh"},
        "static_resources": {
            "listeners": [_listener(plan, by_service)],
            "clusters": [
                _authorizer_cluster(plan),
                *(_service_cluster(plan, u) for u in plan.upstreams),
            ],
        },
    }


def _listener(plan: EnvoyPlan, by_service: dict[str, Upstream]) -> dict[str, Any]:
    downstream_tls = {
        "@type": _TYPES + "transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificates": [_certificate(plan.tls_cert, plan.tls_key)],
            "alpn_protocols": ["http/1.1"],
        },
    }
    return {
        "name": "trustmesh_edge",
        "address": {"socket_address": {"address": plan.host, "port_value": plan.port}},
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": downstream_tls,
                },
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _connection_manager(plan, by_service),
                    }
                ],
            }
        ],
    }


def _connection_manager(plan: EnvoyPlan, by_service: dict[str, Upstream]) -> dict[str, Any]:
    limits = plan.gateway.limits
    return {
        "@type": _TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "trustmesh",
        "codec_type": "HTTP1",
        "use_remote_address": True,  # X-Forwarded-For: the peer, appended rightmost
        "xff_num_trusted_hops": 0,
        # the path as sent, to the authorizer and the routes alike: the authorizer
        # refuses every non-canonical one (policy/paths.py), with its event
        "normalize_path": False,
        "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "server_header_transformation": "PASS_THROUGH",  # none of Envoy's; the upstream's removed
        "max_request_headers_kb": max(1, -(-limits.max_header_bytes // 1024)),
        "request_headers_timeout": _duration(limits.header_timeout),
        "stream_idle_timeout": _duration(limits.body_timeout),
        "common_http_protocol_options": {
            "idle_timeout": _duration(limits.keepalive_timeout),
            "max_headers_count": limits.max_headers,
            "headers_with_underscores_action": "DROP_HEADER",  # as stripped() does
        },
        "route_config": _route_config(plan, by_service),
        "http_filters": [
            _answers(),
            _ext_authz(plan),
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": _TYPES + "filters.http.buffer.v3.Buffer",
                    "max_request_bytes": plan.gateway.max_body_bytes,
                },
            },
            _strip(),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": _TYPES + "filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            },
        ],
    }


def _ext_authz(plan: EnvoyPlan) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": _TYPES + "filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": False,  # closed: no answer is no
        "status_on_error": {"code": "ServiceUnavailable"},
        "validate_mutations": True,
        "allowed_headers": _names(ASKED),
    }
    if plan.grpc is not None:  # the answer's own fields say which header goes where
        config["grpc_service"] = {
            "envoy_grpc": {"cluster_name": _AUTHORIZER},
            "timeout": _duration(plan.authorizer_timeout),
        }
    else:
        config["http_service"] = _http_service(plan)
    return {"name": "envoy.filters.http.ext_authz", "typed_config": config}


def _http_service(plan: EnvoyPlan) -> dict[str, Any]:
    return {
        "server_uri": {
            "uri": "http://trustmesh-authorizer",
            "cluster": _AUTHORIZER,
            "timeout": _duration(plan.authorizer_timeout),
        },
        "path_prefix": plan.authorizer_prefix,
        "authorization_response": {
            "allowed_upstream_headers": _names(_TO_UPSTREAM),
            "allowed_client_headers": _names(_TO_CLIENT),
            "allowed_client_headers_on_success": _names(_TO_CLIENT_ALLOWED),
        },
    }


def _answers() -> dict[str, Any]:
    """Every answer (the authorizer's refusals, Envoy's and the upstream's): the
    internal headers removed, the security headers set. First in the chain, so that the
    replies of the filters after it pass through it."""
    mutations = [
        *({"remove_on_match": {"key_matcher": {"prefix": p}}} for p in _HIDDEN_FAMILIES),
        *({"remove": name} for name in _HIDDEN),
        *(
            {
                "append": {
                    "header": {"key": name.decode(), "value": value.decode()},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            }
            for name, value in SECURITY_HEADERS
        ),
    ]
    return _header_mutation("trustmesh.answers", {"response_mutations": mutations})


def _strip() -> dict[str, Any]:
    """The client's headers that could speak for the gateway, removed once the
    authorizer has read them (its own replace the client's authorization and trace)."""
    names = sorted(n.decode() for n in STRIPPED if n not in _REPLACED)
    mutations = [
        *({"remove": name} for name in names),
        *(
            {"remove_on_match": {"key_matcher": {"prefix": family.decode()}}}
            for family in STRIPPED_FAMILIES
        ),
    ]
    return _header_mutation("trustmesh.strip", {"request_mutations": mutations})


def _header_mutation(name: str, mutations: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "typed_config": {
            "@type": _TYPES + "filters.http.header_mutation.v3.HeaderMutation",
            "mutations": mutations,
        },
    }


def _route_config(plan: EnvoyPlan, by_service: dict[str, Upstream]) -> dict[str, Any]:
    # longest prefix first, as the gateway's route table matches
    ordered = sorted(enumerate(plan.gateway.routes), key=lambda r: (-len(r[1].path), r[0]))
    routes = [
        entry
        for index, route in ordered
        for entry in _routes(plan, index, route, by_service.get(route.to))
    ]
    return {
        "name": "trustmesh_routes",
        "virtual_hosts": [
            {
                "name": "trustmesh",
                "domains": ["*"],
                "routes": routes,
                "request_headers_to_add": [
                    {
                        "header": {"key": key, "value": value},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                    for key, value in _SET
                ],
            }
        ],
    }


def _routes(
    plan: EnvoyPlan, index: int, route: GatewayRoute, upstream: Upstream | None
) -> list[dict[str, Any]]:
    methods = {
        "name": ":method",
        "string_match": {"safe_regex": {"regex": "|".join(route.methods)}},
    }
    action: dict[str, Any]
    if upstream is None:  # no instance known: never forwarded
        action = {"direct_response": {"status": 503}}
    else:
        action = {
            "route": {
                "cluster": _cluster_name(upstream.name),
                "timeout": _duration(route.timeout),
                "host_rewrite_literal": upstream.dns_name,
            }
        }
    return [
        {"name": f"routes[{index}]", "match": {**match, "headers": [methods]}, **action}
        for match in _matches(route.path)
    ]


def _matches(prefix: str) -> list[dict[str, str]]:
    """Envoy matches for a route's prefix: itself and what is under it."""
    if prefix == "/":
        return [{"prefix": "/"}]
    return [{"path": prefix}, {"prefix": prefix + "/"}]


def _authorizer_cluster(plan: EnvoyPlan) -> dict[str, Any]:
    if plan.grpc is not None:
        address, kind = _address(plan.grpc.address)
    elif isinstance(plan.authorizer, Path):
        address, kind = {"pipe": {"path": str(plan.authorizer)}}, "STATIC"
    else:
        address, kind = _address(plan.authorizer)
    cluster = {
        "name": _AUTHORIZER,
        "type": kind,
        "connect_timeout": _duration(plan.authorizer_timeout),
        "load_assignment": {
            "cluster_name": _AUTHORIZER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if plan.grpc is None:
        return cluster
    return {  # gRPC: HTTP/2 over mTLS, the gateway's SPIFFE ID checked
        **cluster,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPES + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "transport_socket": _mtls(plan.grpc.cert, plan.grpc.key, plan, plan.grpc.spiffe_id),
    }


def _mtls(cert: Path, key: Path, plan: EnvoyPlan, spiffe_id: str, sni: str = "") -> dict[str, Any]:
    """Envoy's side of an mTLS connection: ``cert`` presented, the peer's chain checked
    against the trust bundle and its URI SAN against ``spiffe_id``."""
    upstream_tls: dict[str, Any] = {
        "@type": _TYPES + "transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificates": [_certificate(cert, key)],
            "validation_context": {
                "trusted_ca": {"filename": str(plan.bundle)},
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": spiffe_id}}
                ],
            },
        },
    }
    if sni:
        upstream_tls["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": upstream_tls}


def _service_cluster(plan: EnvoyPlan, upstream: Upstream) -> dict[str, Any]:
    found = [_address(server) for server in upstream.servers]
    name = _cluster_name(upstream.name)
    return {
        "name": name,
        "type": "STATIC" if all(kind == "STATIC" for _, kind in found) else "STRICT_DNS",
        "connect_timeout": "5s",
        "lb_policy": _LB[plan.gateway.upstream.balance],
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": address}} for address, _ in found]}
            ],
        },
        "transport_socket": _mtls(
            plan.svid_cert, plan.svid_key, plan, upstream.spiffe_id, upstream.dns_name
        ),
    }


def _certificate(cert: Path, key: Path) -> dict[str, Any]:
    return {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}


def _address(server: str) -> tuple[dict[str, Any], str]:
    """A ``host:port`` (``[v6]:port``) as an Envoy address, and the cluster type it
    needs (STRICT_DNS for a name)."""
    host, _, port = server.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{server!r} is not host:port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        kind = "STRICT_DNS"
    else:
        kind = "STATIC"
    return {"socket_address": {"address": host, "port_value": int(port)}}, kind


def _names(names: Sequence[str]) -> dict[str, Any]:
    return {"patterns": [{"exact": name} for name in names]}


def _cluster_name(service: str) -> str:
    return "tm_svc_" + "".join(c if c.isalnum() else "_" for c in service)


def _duration(value: timedelta) -> str:
    """A protobuf JSON duration, to the millisecond (at least 1ms)."""
    ms = max(1, round(value.total_seconds() * 1000))
    return f"{ms // 1000}.{ms % 1000:03d}s"
