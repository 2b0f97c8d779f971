"""The gateway as Envoy's gRPC external authorizer, live: a real grpc client holding a
declared proxy's SVID asks ``envoy.service.auth.v3.Authorization/Check`` over mTLS, and
gets the gateway's own decisions — the internal token when allowed, the gateway's refusal
(status, headers, body) when not — each answer checked against Envoy's own validation
rules. Callers that are not declared, or hold no certificate, get nothing decided."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from authrig import CONFIG, PAYMENTS, TD, identity_for, sign_in_user
from edgerig import Edge, edge_stack, recording
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoyschema import check_message
from hypothesis import given
from hypothesis import strategies as st
from liverig import GATEWAY

from trustmesh import crypto, events
from trustmesh.gateway.grpc_authz import ENGINE, RunningGrpcAuthz, asked, start_grpc_authz
from trustmesh.sdk import drain
from trustmesh.sdk.tls import client_context
from trustmesh.sdk.x509source import X509Context, X509Source
from trustmesh.testing import RunningIdentityServer

PROXY = f"spiffe://{TD}/edge/envoy"  # the declared caller: Envoy's SVID
CLIENT = "203.0.113.7"  # the client as Envoy saw its peer
SECTION = """auth: {roles: [customer]}
gateway:
  policies: [edge.cedar]
  waf: {mode: "off"}
  routes:
    - {path: /shop, to: orders, auth: [jwt], methods: [GET, POST],
       cors: {origins: ["https://shop.example"]}}
    - {path: /closed, to: orders, auth: [jwt], methods: [GET]}
    - {path: /burst, to: orders, auth: [anonymous], methods: [GET],
       rate_limits: [{per: ip, limit: 1/minute}]}
    - {path: /inspected, to: orders, auth: [anonymous], methods: [GET], waf: {mode: fast}}
"""
POLICIES = """
permit(principal, action, resource);
forbid(principal, action, resource) when { context.path like "/closed*" };
"""
OK, PERMISSION_DENIED, UNAUTHENTICATED = 0, 7, 16  # google.rpc.Code


#: The tests that ask the authorizer share one stack, on the module's loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def identity(module_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(module_tmp, CONFIG + SECTION, (GATEWAY, PROXY), discovery=True)


@pytest.fixture
def own_identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    """An identity service of the test's own: it starts a gateway of its own beside it."""
    yield from identity_for(short_tmp, CONFIG + SECTION, (GATEWAY, PROXY), discovery=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_edge(identity: RunningIdentityServer, module_tmp: Path) -> AsyncIterator[Edge]:
    files = {"edge.cedar": POLICIES}
    async with edge_stack(identity, module_tmp, SECTION, recording([]), files) as running:
        running.tokens["carol"] = await asyncio.to_thread(
            sign_in_user, running.rig, "carol", ["customer"], audience=GATEWAY
        )
        yield running


@pytest.fixture
def edge(shared_edge: Edge) -> Edge:
    """The module's stack, with nothing yet recorded by its gateway in this test."""
    shared_edge.sink.events.clear()
    return shared_edge


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def authz(
    shared_edge: Edge, identity: RunningIdentityServer
) -> AsyncIterator[RunningGrpcAuthz]:
    pipeline = shared_edge.gateway.pipeline
    assert pipeline is not None
    source = X509Source(identity.address, spiffe_id=GATEWAY)
    await source.start()
    running = await start_grpc_authz(
        lambda: pipeline.app, source, host="127.0.0.1", port=0, callers=frozenset({PROXY})
    )
    yield running
    await running.stop()
    await source.close()


async def svid(identity: RunningIdentityServer, spiffe_id: str) -> X509Context:
    source = X509Source(identity.address, spiffe_id=spiffe_id)
    try:
        return await source.start()
    finally:
        await source.close()


def channel(port: int, x: X509Context | None, bundle: bytes) -> grpc.aio.Channel:
    """A channel to the authorizer presenting ``x`` (None: no certificate at all), which
    checks the server's chain against ``bundle`` and its name against the gateway's
    SVID's DNS SAN."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle,
        private_key=crypto.private_key_to_pem(x.key) if x is not None else None,
        certificate_chain=x.chain_pem() if x is not None else None,
    )
    name = crypto.svid_dns_name(GATEWAY)
    assert name is not None
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", name)]
    )


@pytest_asyncio.fixture(loop_scope="module")
async def envoy(
    authz: RunningGrpcAuthz, identity: RunningIdentityServer
) -> AsyncIterator[pb_grpc.AuthorizationStub]:
    x = await svid(identity, PROXY)
    async with channel(authz.port, x, x.bundle_pem()) as open_channel:
        yield pb_grpc.AuthorizationStub(open_channel)


def question(
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    raw: list[tuple[str, str]] | None = None,
    client: str | None = CLIENT,
) -> Any:
    """A CheckRequest as Envoy writes one: ``headers`` (joined), or ``raw`` for
    ``header_map`` (``encode_raw_headers``: each header as it came)."""
    http = ac.AttributeContext.HttpRequest(
        method=method,
        path=path,
        host="shop.example",
        scheme="https",
        protocol="HTTP/1.1",
        headers={":authority": "shop.example", ":path": path, **(headers or {})},
    )
    if raw is not None:
        http.ClearField("headers")
        http.header_map.headers.extend(
            base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in raw
        )
    source = ac.AttributeContext.Peer()
    if client is not None:
        source.address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=client, port_value=40000)
            )
        )
    return pb.CheckRequest(
        attributes=ac.AttributeContext(
            source=source, request=ac.AttributeContext.Request(http=http)
        )
    )


async def ask(envoy: pb_grpc.AuthorizationStub, request: Any) -> Any:
    """The answer, which must be one Envoy takes (its validation rules)."""
    answer = await envoy.Check(request)
    check_message(answer)
    return answer


def headers_of(options: Any) -> dict[str, str]:
    for option in options:
        assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        assert not option.HasField("append")
    return {o.header.key: o.header.value for o in options}


def denied(answer: Any) -> tuple[int, int, dict[str, str], dict[str, Any]]:
    """The gRPC code, the HTTP status, headers and JSON body of a refusal."""
    assert answer.WhichOneof("http_response") == "denied_response"
    response = answer.denied_response
    body = json.loads(response.body) if response.body else {}
    return answer.status.code, response.status.code, headers_of(response.headers), body


def checked(edge: Edge) -> list[events.Event]:
    return [e for e in edge.sink.events if e.attributes.get("engine") == ENGINE]


def bearer(edge: Edge) -> dict[str, str]:
    return {"authorization": f"Bearer {edge.tokens['carol']}"}


@on_module_loop
async def test_an_allowed_request_gets_the_internal_token(
    edge: Edge, envoy: pb_grpc.AuthorizationStub
) -> None:
    answer = await ask(envoy, question("/shop/items?q=tea", bearer(edge)))
    assert answer.status.code == OK
    assert answer.WhichOneof("http_response") == "ok_response"
    upstream = headers_of(answer.ok_response.headers)
    assert set(upstream) == {"authorization", "traceparent"}
    scheme, _, token = upstream["authorization"].partition(" ")
    assert scheme == "Bearer"
    assert token != edge.tokens["carol"]  # the gateway's own token, not the client's
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == GATEWAY
    assert claims["aud"] == f"spiffe://{TD}/orders"
    (event,) = checked(edge)
    assert (event.decision.value, event.reason.value) == ("allow", "policy-allow")
    assert event.attributes["caller"] == PROXY
    assert (event.attributes["path"], event.attributes["client"]) == ("/shop/items", CLIENT)
    assert event.sub is not None
    assert event.trace_id == upstream["traceparent"].split("-")[1]


@on_module_loop
async def test_refusals_are_the_gateways_own_answers(
    edge: Edge, envoy: pb_grpc.AuthorizationStub
) -> None:
    code, status, headers, body = denied(await ask(envoy, question("/shop/items")))
    assert (code, status, body["error"]) == (UNAUTHENTICATED, 401, "unauthenticated")
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["content-type"] == "application/json"
    code, status, _, body = denied(await ask(envoy, question("/closed", bearer(edge))))
    assert (code, status, body["error"]) == (PERMISSION_DENIED, 403, "forbidden")
    code, status, _, _ = denied(await ask(envoy, question("/nowhere", bearer(edge))))
    assert (code, status) == (PERMISSION_DENIED, 404)
    code, status, headers, _ = denied(
        await ask(envoy, question("/shop", bearer(edge), method="DELETE"))
    )
    assert (code, status, headers["allow"]) == (PERMISSION_DENIED, 405, "GET, POST")
    assert [(e.decision.value, e.reason.value) for e in checked(edge)] == [
        ("deny", "token-missing"),
        ("deny", "policy-deny"),
        ("deny", "route-not-found"),
        ("deny", "method-not-allowed"),
    ]


@on_module_loop
async def test_limits_answer_with_their_headers(
    edge: Edge, envoy: pb_grpc.AuthorizationStub
) -> None:
    first = await ask(envoy, question("/burst"))
    assert first.status.code == OK
    to_client = headers_of(first.ok_response.response_headers_to_add)
    assert set(to_client) == {"ratelimit-policy", "ratelimit"}
    code, status, headers, _ = denied(await ask(envoy, question("/burst")))
    assert (code, status) == (PERMISSION_DENIED, 429)
    assert int(headers["retry-after"]) > 0
    # the limit is the client's as Envoy saw it: another address is another bucket
    assert (await ask(envoy, question("/burst", client="203.0.113.8"))).status.code == OK


@on_module_loop
async def test_the_client_is_envoys_peer_never_a_header(
    edge: Edge, envoy: pb_grpc.AuthorizationStub
) -> None:
    spoofed = {**bearer(edge), "x-forwarded-for": "198.51.100.9", "x-real-ip": "198.51.100.9"}
    assert (await ask(envoy, question("/shop", spoofed))).status.code == OK
    (event,) = checked(edge)
    assert event.attributes["client"] == CLIENT  # the gateway trusts no proxy here
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # no address: nothing to decide
        await envoy.Check(question("/shop", bearer(edge), client=None))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [e.reason.value for e in checked(edge)][1:] == ["request-malformed"]


@on_module_loop
async def test_a_repeated_authorization_is_refused_not_split(
    edge: Edge, envoy: pb_grpc.AuthorizationStub
) -> None:
    token = edge.tokens["carol"]
    # Envoy joins a repeated header with ","; both valid tokens of the same user
    joined = {"authorization": f"Bearer {token},Bearer {token}"}
    raw = [("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")]
    for twice in (question("/shop", joined), question("/shop", raw=raw)):
        code, status, headers, body = denied(await ask(envoy, twice))
        assert (code, status, body["error"]) == (UNAUTHENTICATED, 401, "invalid_token")
        assert 'error="invalid_token"' in headers["www-authenticate"]
    assert [(e.decision.value, e.reason.value) for e in checked(edge)] == [
        ("deny", "token-malformed"),
        ("deny", "token-malformed"),
    ]
    once = [("authorization", f"Bearer {token}")]  # the same token once, raw: allowed
    assert (await ask(envoy, question("/shop", raw=once))).status.code == OK


@on_module_loop
async def test_a_route_that_inspects_bodies_is_not_allowed_unchecked(
    edge: Edge, envoy: pb_grpc.AuthorizationStub
) -> None:
    code, status, _, body = denied(await ask(envoy, question("/inspected")))
    assert (code, status, body["error"]) == (PERMISSION_DENIED, 500, "engine_unsupported")
    (event,) = checked(edge)
    assert (event.decision.value, event.reason.value) == ("error", "policy-deny")


@on_module_loop
async def test_a_preflight_is_answered_by_the_proxy(
    edge: Edge, envoy: pb_grpc.AuthorizationStub
) -> None:
    preflight = {
        "origin": "https://shop.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    answer = await ask(envoy, question("/shop", preflight, method="OPTIONS"))
    code, status, headers, body = denied(answer)
    assert (code, status, body) == (PERMISSION_DENIED, 204, {})
    assert headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in headers["access-control-allow-methods"]


@on_module_loop
async def test_an_undeclared_caller_gets_nothing_decided(
    edge: Edge, authz: RunningGrpcAuthz, identity: RunningIdentityServer
) -> None:
    x = await svid(identity, PAYMENTS)  # a workload of the trust domain, not the proxy
    async with channel(authz.port, x, x.bundle_pem()) as other:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.AuthorizationStub(other).Check(question("/shop", bearer(edge)))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (event,) = checked(edge)  # the refusal, and no decision
    assert (event.decision.value, event.reason.value) == ("deny", "policy-deny")
    assert event.attributes["caller"] == PAYMENTS
    assert "path" not in event.attributes
    assert not [e for e in edge.sink.events if e.reason.value in ("policy-allow", "token-missing")]


@on_module_loop
async def test_a_client_without_a_certificate_cannot_connect(
    edge: Edge, authz: RunningGrpcAuthz, identity: RunningIdentityServer
) -> None:
    bundle = (await svid(identity, PROXY)).bundle_pem()
    async with channel(authz.port, None, bundle) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.AuthorizationStub(anonymous).Check(
                question("/shop", bearer(edge)), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert checked(edge) == []


_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-:", min_size=1, max_size=12)


@given(
    path=st.text(max_size=40).map(lambda p: "/" + p),
    headers=st.dictionaries(_NAMES, st.text(max_size=40), max_size=8),
    raw=st.none() | st.lists(st.tuples(_NAMES, st.text(max_size=20)), max_size=8),
)
def test_a_question_is_read_whole(
    path: str, headers: dict[str, str], raw: list[tuple[str, str]] | None
) -> None:
    """Any CheckRequest reads as one request: the target split at the first ``?``, no
    pseudo-header, the host once (Envoy's ``:authority``), every other header once with
    all its values, in order, and the client Envoy's peer."""
    scope = asked(question(path, headers, raw=raw))
    assert scope is not None
    target, _, query = path.partition("?")
    assert (scope["raw_path"], scope["query_string"]) == (target.encode(), query.encode())
    names = [k for k, _ in scope["headers"]]
    assert len(names) == len(set(names))
    assert not [k for k in names if k.startswith(b":")]
    assert dict(scope["headers"])[b"host"] == b"shop.example"
    sent = raw if raw is not None else list(headers.items())
    for name in {k for k, _ in sent if not k.startswith(":") and k != "host"}:
        values = [v.encode() for k, v in sent if k == name]
        assert dict(scope["headers"])[name.encode()] == b",".join(values)
    assert scope["client"] == (CLIENT, 40000)
    assert asked(question(path, headers, raw=raw, client=None)) is None


async def served_leaf(port: int, x: X509Context) -> bytes:
    """The certificate the authorizer presents to a new connection (DER)."""
    context = client_context(x)
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    assert der
    return bytes(der)


async def test_a_new_connection_gets_the_rotated_svid(short_tmp: Path) -> None:
    text = CONFIG.replace("identity: {svid_ttl: 1h}", "identity: {svid_ttl: 10s}")
    with contextlib.ExitStack() as stack:
        identity = stack.enter_context(
            contextlib.contextmanager(identity_for)(short_tmp, text, (GATEWAY, PROXY))
        )
        source = X509Source(identity.address, spiffe_id=GATEWAY)
        first = await source.start()
        running = await start_grpc_authz(
            lambda: pytest.fail("nothing is asked"),
            source,
            host="127.0.0.1",
            port=0,
            callers=frozenset({PROXY}),
        )
        try:
            proxy = await svid(identity, PROXY)
            assert await served_leaf(running.port, proxy) == crypto.cert_der(first.chain[0])
            for _ in range(200):  # rotated at about half its 10 s
                if source.updates > 1:
                    break
                await asyncio.sleep(0.05)
            rotated = source.context.chain[0]
            assert rotated != first.chain[0]
            assert await served_leaf(running.port, proxy) == crypto.cert_der(rotated)
        finally:
            await running.stop()
            await source.close()


async def test_a_declared_ext_authz_is_served_by_the_gateway(
    own_identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """``gateway.ext_authz``: the gateway serves the decisions over gRPC itself, to the
    declared callers, and a reload applies to the next question."""
    identity = own_identity
    section = SECTION.replace("gateway:\n", f"gateway:\n  ext_authz: {{callers: ['{PROXY}']}}\n")
    assert section != SECTION
    files = {"edge.cedar": POLICIES}
    async with edge_stack(identity, short_tmp, section, recording([]), files) as running:
        served = running.gateway.ext_authz  # type: ignore[attr-defined]
        assert served is not None
        assert running.gateway.ext_authz_address == f"127.0.0.1:{served.port}"  # type: ignore[attr-defined]
        x = await svid(identity, PROXY)
        async with channel(served.port, x, x.bundle_pem()) as open_channel:
            envoy = pb_grpc.AuthorizationStub(open_channel)
            code, status, _, body = denied(await ask(envoy, question("/closed/x")))
            assert (code, status, body["error"]) == (UNAUTHENTICATED, 401, "unauthenticated")
            unknown = denied(await ask(envoy, question("/elsewhere")))
            assert unknown[:2] == (PERMISSION_DENIED, 404)
        other = await svid(identity, PAYMENTS)  # a workload, not a declared caller
        async with channel(served.port, other, other.bundle_pem()) as open_channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.AuthorizationStub(open_channel).Check(question("/closed/x"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


class _Slowed:
    """The gateway's own decisions, each begun only ``seconds`` after it is asked (a
    slow introspection would hold it so)."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app, self.seconds = app, seconds
        self.asked = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def decide(self, *args: Any) -> Any:
        self.asked.set()
        await asyncio.sleep(self.seconds)
        return await self.app.decide(*args)


@contextlib.asynccontextmanager
async def _drained_authorizer(
    edge: Edge, identity: RunningIdentityServer, seconds: float
) -> AsyncIterator[tuple[_Slowed, pb_grpc.AuthorizationStub]]:
    """An authorizer of the test's own whose decisions wait ``seconds``, tracked by a
    drain of the test's own (``listen.drain``: 1 s), and Envoy's channel to it."""
    pipeline = edge.gateway.pipeline
    assert pipeline is not None
    slowed = _Slowed(pipeline.app, seconds)
    source = X509Source(identity.address, spiffe_id=GATEWAY)
    await source.start()
    running = await start_grpc_authz(
        lambda: slowed, source, host="127.0.0.1", port=0, callers=frozenset({PROXY})
    )
    x = await svid(identity, PROXY)
    try:
        async with channel(running.port, x, x.bundle_pem()) as open_channel:
            yield slowed, pb_grpc.AuthorizationStub(open_channel)
    finally:
        await running.stop()
        await source.close()


async def _deciding(
    edge: Edge, slowed: _Slowed, envoy: pb_grpc.AuthorizationStub
) -> asyncio.Task[Any]:
    """A Check of carol's, its decision begun (and held)."""
    in_flight = asyncio.create_task(ask(envoy, question("/shop/items", bearer(edge))))
    await asyncio.wait_for(slowed.asked.wait(), 10)
    return in_flight


@pytest.fixture
def own_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain of the test's own (the process's is every test's)."""
    monkeypatch.setattr(drain, "_drain", drain._Drain())
    drain.configure(1.0)


@on_module_loop
@pytest.mark.usefixtures("own_drain")
async def test_a_drain_answers_the_check_in_flight_and_takes_no_new_one(
    edge: Edge, identity: RunningIdentityServer
) -> None:
    async with _drained_authorizer(edge, identity, 0.4) as (slowed, envoy):
        in_flight = await _deciding(edge, slowed, envoy)
        drain.begin()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await envoy.Check(question("/shop/items", bearer(edge)), timeout=5)
        answer = await in_flight
    # refused, not decided: UNAVAILABLE, or CANCELLED when it raced the server's GOAWAY
    assert late.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert answer.status.code == OK  # decided, and answered, after the drain began
    assert [e.reason.value for e in checked(edge)] == ["policy-allow"]


@on_module_loop
@pytest.mark.usefixtures("own_drain")
async def test_a_check_still_running_at_the_drain_deadline_is_cut_and_recorded(
    edge: Edge, identity: RunningIdentityServer
) -> None:
    async with _drained_authorizer(edge, identity, 30) as (slowed, envoy):
        in_flight = await _deciding(edge, slowed, envoy)
        began = asyncio.get_running_loop().time()
        drain.begin()
        with pytest.raises(grpc.aio.AioRpcError):  # never an answer it did not decide
            await asyncio.wait_for(in_flight, 10)
        assert asyncio.get_running_loop().time() - began < 5  # the deadline, not 30 s
    (cut,) = checked(edge)
    assert (cut.decision.value, cut.reason.value) == ("error", "shutting-down")
    assert (cut.attributes["caller"], cut.attributes["path"]) == (PROXY, "/shop/items")
