"""The gateway's decisions for Envoy over gRPC: ``envoy.service.auth.v3.Authorization/Check``
(Envoy's ``ext_authz`` filter with a ``grpc_service``), the published v3 protos (PyPI
``xds-protos``). The HTTP variant is :mod:`trustmesh.gateway.authorizer`; both run the same
stages (:meth:`~trustmesh.gateway.app.GatewayApp.decide`: address rules, path form, CORS
preflight, route, rate limits, credentials, edge policy) on the gateway's current pipeline
(``current``: a reload applies to the next check), with the same events.

The question (a ``CheckRequest``) becomes the scope the stages read:

- ``attributes.request.http``: ``method``; ``path``, the request target as the client sent
  it (path and query, not decoded: the stages refuse a non-canonical path); ``host`` (the
  ``:authority``); ``scheme``; ``headers``, whose names Envoy lower-cases and whose
  repeats it joins with ``,`` (``header_map``, where Envoy sends it instead
  (``encode_raw_headers``), is joined the same way). Pseudo-headers are dropped;
- ``attributes.source.address.socket_address``: the client's address, as Envoy saw its
  peer. Headers name another only where that address is one of
  ``gateway.trusted_proxies`` (the gateway's own ``X-Forwarded-For`` rule). A check with
  no socket address is no question (``INVALID_ARGUMENT``, recorded): Envoy, failing
  closed, refuses the request.

A joined header is one value. ``Authorization`` twice arrives as ``Bearer a,Bearer b``:
never split back into two, never read as its first part. ``bearer_token`` takes all of it
after ``Bearer `` (``a,Bearer b``) and the token check refuses that (``,`` is not in RFC
6750 §2.1's ``b64token``: no compact JWS holds it; PyJWT refuses it) — ``401
invalid_token``, recorded ``token-malformed``; on an introspection route the provider
finds no such token. A request with two credentials is not a request with one.

The answer (a ``CheckResponse``):

- **allowed:** ``status`` OK (``google.rpc.Code`` 0), ``ok_response.headers`` the internal
  token (``authorization``) and ``traceparent``, each replacing the client's
  (``append_action: OVERWRITE_IF_EXISTS_OR_ADD``); ``response_headers_to_add`` the
  ``RateLimit`` headers for the client;
- **refused:** ``PERMISSION_DENIED`` (``UNAUTHENTICATED`` for a 401) with
  ``denied_response``: the gateway's status, its headers (``www-authenticate``,
  ``retry-after``, ``allow``, the security headers) and its JSON body, which Envoy answers
  with as they are;
- **a CORS preflight:** ``denied_response`` with the gateway's 204 and its grants (that is
  how an authorizer answers a request itself);
- **a route that inspects bodies** (a contract, the injection filter): ``500
  engine_unsupported``, recorded, never allowed unchecked — as over HTTP.

Transport: mTLS with the gateway's SVID (rotated: each new handshake gets the newest), a
client certificate chaining to the trust bundle required, and the caller's SPIFFE ID
(its leaf's one URI SAN, X509-SVID §5.2) one of ``callers``; any other caller's check is
aborted ``PERMISSION_DENIED`` before anything is decided, and recorded. A client without a
certificate does not complete the handshake (grpc's C core refuses it; no event: the
listener never sees a caller to name).

Served from the gateway's process where the declaration asks for it (``gateway.ext_authz``:
its port and callers; the gateway's endpoint file names it, ``ext_authz_address``);
:mod:`trustmesh.gateway.envoyconf` renders an Envoy that asks it (``GrpcAuthorizer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn
from urllib.parse import unquote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from trustmesh import crypto, events
from trustmesh.config.listen import authority
from trustmesh.errors import CryptoError
from trustmesh.gateway.app import GatewayApp
from trustmesh.gateway.exchange import Exchange, Outcome, Reply, refusal_body
from trustmesh.gateway.headers import SECURITY_HEADERS
from trustmesh.platform.listeners import Scope
from trustmesh.reasons import Reason
from trustmesh.sdk import drain
from trustmesh.sdk.x509source import SVIDSource, X509Context

__all__ = ["ENGINE", "RunningGrpcAuthz", "asked", "start_grpc_authz"]

log = logging.getLogger("trustmesh.gateway")

#: The events' ``engine`` for the questions asked here.
ENGINE: Final = "ext_authz-grpc"
_TO_CLIENT: Final = (b"ratelimit-policy", b"ratelimit")
_OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
#: A check request is the head of one HTTP request (Envoy's own bound on a head is 60 KiB
#: by default, 8 MiB at most; the body is never asked for).
_MAX_MESSAGE: Final = 1 << 20
_UNCHECKED: Final = (
    b'{"error": "engine_unsupported", "message": '
    b'"this route inspects bodies: only the gateway itself serves it"}'
)


def asked(request: Any) -> Scope | None:
    """The HTTP request a ``CheckRequest`` asks about, as the scope the stages read (None:
    it names no method, no request target or no client address)."""
    attributes = request.attributes
    http = attributes.request.http
    address = attributes.source.address
    if not address.HasField("socket_address") or not address.socket_address.address:
        return None
    if not http.method or not http.path.startswith("/"):
        return None
    path, _, query = http.path.partition("?")
    headers = [(k, v) for k, v in _joined(http) if not k.startswith(b":") and k != b"host"]
    if http.host:
        headers.append((b"host", http.host.encode("utf-8")))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "2" if http.protocol == "HTTP/2" else "1.1",
        "scheme": http.scheme or "https",
        "method": http.method,
        "raw_path": path.encode("utf-8"),
        "path": unquote(path),
        "query_string": query.encode("utf-8"),
        "root_path": "",
        "headers": headers,
        "client": (address.socket_address.address, address.socket_address.port_value),
        "server": None,
    }


def _joined(http: Any) -> list[tuple[bytes, bytes]]:
    """The request's headers, names lower-cased, each name once: ``headers`` as Envoy
    joined them, or ``header_map`` (raw values), joined the same way (``,``)."""
    if not http.header_map.headers:
        return [(k.lower().encode("utf-8"), v.encode("utf-8")) for k, v in http.headers.items()]
    joined: dict[bytes, list[bytes]] = {}
    for header in http.header_map.headers:
        value = header.raw_value or header.value.encode("utf-8")
        joined.setdefault(header.key.lower().encode("utf-8"), []).append(value)
    return [(k, b",".join(v)) for k, v in joined.items()]


def _options(headers: list[tuple[bytes, bytes]]) -> list[Any]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k.decode("latin-1"), value=v.decode("latin-1")),
            append_action=_OVERWRITE,
        )
        for k, v in headers
    ]


def _denied(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Any:
    code = code_pb2.UNAUTHENTICATED if status == 401 else code_pb2.PERMISSION_DENIED
    return pb.CheckResponse(
        status=status_pb2.Status(code=code),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=_options(headers),
            body=body.decode("latin-1"),
        ),
    )


def _json(headers: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    """The headers of the gateway's JSON answers (as ``respond_json`` writes them)."""
    return [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        *SECURITY_HEADERS,
        *headers,
    ]


def _answer(app: GatewayApp, ex: Exchange, outcome: Outcome | None) -> Any:
    """The check's answer to the stages' outcome (None: allowed)."""
    if isinstance(outcome, Reply):  # a preflight: answered by the proxy, as the gateway's
        return _denied(outcome.status, outcome.headers)
    if outcome is not None:
        status, body = refusal_body(outcome)
        return _denied(status, _json(outcome.headers), body)
    if app.needs_body(ex.index):
        app.refused_unchecked(ex)
        return _denied(500, _json(), _UNCHECKED)
    granted = app.grant(ex)
    to_client = [(k, v) for k, v in ex.grants if k in _TO_CLIENT]
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=pb.OkHttpResponse(
            headers=_options(granted), response_headers_to_add=_options(to_client)
        ),
    )


class _Authorization(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Check``: the caller admitted, the question decided, the answer built."""

    def __init__(self, current: Callable[[], GatewayApp], callers: frozenset[str]) -> None:
        self.current = current
        self.callers = callers

    async def Check(self, request: Any, context: Any) -> Any:
        app = self.current()
        caller, refused = _caller(context.auth_context(), app.trust_domain)
        if caller not in self.callers:
            app.record(
                events.Decision.DENY,
                refused or Reason.POLICY_DENY,
                "not a declared caller of the external authorizer",
                engine=ENGINE,
                caller=caller or "-",
            )
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, "not a declared caller")
        scope = asked(request)
        if scope is None:
            app.record(
                events.Decision.DENY,
                Reason.REQUEST_MALFORMED,
                "a check without a method, a path or a client address",
                engine=ENGINE,
                caller=caller,
            )
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "not a request to decide")
        try:
            ex, outcome = await app.decide(scope, {"engine": ENGINE, "caller": caller})
        except asyncio.CancelledError:
            if drain.draining():  # cut at the drain's deadline: the proxy gets no answer
                app.record(
                    events.Decision.ERROR,
                    Reason.SHUTTING_DOWN,
                    "check cut at the drain deadline",
                    engine=ENGINE,
                    caller=caller,
                    method=str(scope.get("method", "")),
                    path=str(scope.get("path", ""))[:512],
                )
            raise
        return _answer(app, ex, outcome)


async def _abort(context: Any, code: Any, details: str) -> NoReturn:
    """End the call with ``code`` (grpc's ``abort`` raises)."""
    await context.abort(code, details)
    raise RuntimeError("grpc did not abort the call")


def _caller(auth: dict[str, list[bytes]], trust_domain: str) -> tuple[str, Reason | None]:
    """The peer's SPIFFE ID (its leaf checked against X509-SVID §5.2, in the gateway's
    trust domain), or ``""`` and why there is none."""
    pem = auth.get("x509_pem_cert")
    if not pem:
        return "", Reason.PEER_CERTIFICATE_MISSING
    try:
        (leaf, *_) = crypto.certs_from_pem(pem[0])
        return crypto.leaf_spiffe_id(leaf, trust_domain=trust_domain), None
    except (CryptoError, ValueError):
        return "", Reason.PEER_SVID_INVALID


class _Credentials:
    """The listener's certificate and trust bundle, following the SVID source: grpc asks
    :meth:`fetch` at each new handshake (from its own thread) for a newer configuration."""

    def __init__(self, source: SVIDSource) -> None:
        self.initial = _configuration(source.context)
        self._newer: Any = None
        source.subscribe(self._rotate)

    def _rotate(self, x: X509Context) -> None:
        self._newer = _configuration(x)

    def fetch(self) -> Any:
        newer, self._newer = self._newer, None
        return newer  # None: unchanged


def _configuration(x: X509Context) -> Any:
    """The SVID and its key (in memory only) and the bundle a client must chain to."""
    return grpc.ssl_server_certificate_configuration(
        [(crypto.private_key_to_pem(x.key), x.chain_pem())], root_certificates=x.bundle_pem()
    )


@dataclass(eq=False)
class RunningGrpcAuthz:
    """The service, listening on ``port``; drained with the process's other listeners
    (:mod:`trustmesh.sdk.drain`): at the signal it takes no new call, and those still
    running at the deadline are cut (each an event)."""

    port: int
    server: Any
    stopping: asyncio.Task[None] | None = None

    def begin_drain(self, seconds: float) -> None:
        self._stopping(seconds)

    async def stop(self, grace: float = 1.0) -> None:
        """Stopped: at once if the drain stopped it, else with ``grace`` seconds."""
        await self._stopping(grace)

    def _stopping(self, grace: float) -> asyncio.Task[None]:
        if self.stopping is None:
            self.stopping = asyncio.get_running_loop().create_task(self.server.stop(grace))
        return self.stopping


async def start_grpc_authz(
    current: Callable[[], GatewayApp],
    source: SVIDSource,
    *,
    host: str,
    port: int,
    callers: frozenset[str],
) -> RunningGrpcAuthz:
    """Serve ``Authorization/Check`` on ``host:port`` (0: any free port) over mTLS with
    ``source``'s SVID, to the SPIFFE IDs in ``callers`` only."""
    if not callers:
        raise ValueError("an external authorizer needs at least one declared caller")
    credentials = _Credentials(source)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
    )
    pb_grpc.add_AuthorizationServicer_to_server(_Authorization(current, callers), server)
    bound = server.add_secure_port(
        authority(host, port),  # [::]:port for IPv6
        grpc.dynamic_ssl_server_credentials(
            credentials.initial, credentials.fetch, require_client_authentication=True
        ),
    )
    await server.start()
    log.info("external authorizer (gRPC) on %s:%d for %s", host, bound, sorted(callers))
    running = RunningGrpcAuthz(bound, server)
    drain.track(running)
    return running
