"""The gateway's newest stages, live: rate limits (per consumer, per address, shared by
two gateways through Redis, and kept per instance while Redis is down), API keys (with
and without Cedar policies) and upstream failures (a route's timeout, an instance that is
not running). Clients come in over TLS; users sign in with the provider; requests go on
over mTLS to a service run by the SDK. Each refusal is asserted with its event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from authrig import CONFIG, AuthRig, sign_in_user
from liverig import GATEWAY, Live, live_gateway, live_identity
from services import require_service
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.gateway.keystore import add_key, keys_db_path, open_keystore, revoke_key
from trustmesh.gateway.server import RunningGateway
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk.runtime import Runtime
from trustmesh.testing import PrivateRedis, RunningIdentityServer
from trustmesh.testing.rawtls import RawTLS

SHARED_REDIS = "redis://127.0.0.1:6379/0"
LIMITED = '"routes[0].rate_limits[0]"'  # the rule's name in the RateLimit headers
SHARED_LIMIT = 50
SLOW_SECONDS = 3.0  # the slow handler's time to answer: far beyond the /slow route's timeout


def section(run: str, slow_timeout: str = "1s", **gateway_wide: str) -> str:
    """The declaration's gateway: one set of routes for every gateway of a test (the
    services and discovery know them), the gateway-wide settings told apart. ``run``
    names the Redis-counted route afresh each time: leftovers of other runs cannot count."""
    wide = "".join(f"  {name}: {value}\n" for name, value in gateway_wide.items())
    return f"""auth: {{roles: [partner, user]}}
gateway:
{wide}  routes:
    - {{path: /limited, to: orders, rate_limits: [{{per: consumer, limit: 5/minute}}]}}
    - {{path: /anon, to: orders, auth: [anonymous], rate_limits: [{{per: ip, limit: 3/minute}}]}}
    - {{path: /shared, to: orders, auth: [anonymous], name: shared-{run},
       rate_limits: [{{per: route, limit: {SHARED_LIMIT} per 5 minutes}}]}}
    - {{path: /keyed, to: orders, auth: [jwt, api_key]}}
    - {{path: /other-keyed, to: orders, auth: [jwt, api_key]}}
    - {{path: /jwt-only, to: orders}}
    - {{path: /slow, to: orders, auth: [anonymous], timeout: {slow_timeout}}}
    - {{path: /stock, to: inventory, auth: [anonymous]}}
    - {{path: /pay, to: payments, auth: [anonymous]}}
"""


def upstream(seen: list[dict[str, Any]]) -> Starlette:
    """The service: says what it was told and by whom (and notes it), or takes 3 s."""

    async def echo(request: Request) -> JSONResponse:
        token = request.state.trustmesh_token
        told = {
            "path": request.url.path,
            "sub": token.subject,
            "claims": {k: v for k, v in token.claims.items() if k not in ("exp", "iat", "jti")},
            "headers": dict(request.headers),
        }
        seen.append(told)
        return JSONResponse(told)

    async def slow(request: Request) -> JSONResponse:
        deadline = time.monotonic() + SLOW_SECONDS  # or until the gateway hangs up
        while time.monotonic() < deadline and not await request.is_disconnected():
            await asyncio.sleep(0.05)
        return JSONResponse({"late": True})

    return Starlette(routes=[Route("/slow/{p:path}", slow), Route("/{p:path}", echo)])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Edge:
    """One running gateway and the events it emitted."""

    running: RunningGateway
    sink: events.MemorySink

    def reasons(self) -> list[str]:
        return [e.reason for e in self.sink.events]

    def last(self, reason: str) -> events.Event:
        found = [e for e in self.sink.events if e.reason == reason]
        assert found, f"no {reason} event among {self.reasons()}"
        return found[-1]


@dataclass
class Stack:
    """An identity service, the provider, the gateway(s) on one state directory (one
    signing key, one API key store) and the service ``orders``."""

    live: Live
    run: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    @property
    def rig(self) -> AuthRig:
        return self.live.rig

    @property
    def root(self) -> Path:
        return self.live.root

    @property
    def state(self) -> Path:
        return self.live.state

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.live.http

    @property
    def services(self) -> list[Runtime]:
        return self.live.runtimes

    @property
    def edge(self) -> Edge:
        return self.edges[0]

    async def gateway(self, slow_timeout: str = "1s", **gateway_wide: str) -> Edge:
        """Another gateway on the same state, with these gateway-wide settings."""
        text = CONFIG + section(self.run, slow_timeout, **gateway_wide)
        sink = events.MemorySink()
        config = parse_config(text, source=f"gateway-{len(self.edges)}.yaml")
        self.edges.append(Edge(await self.live.start_gateway(config, sink), sink))
        return self.edges[-1]

    async def service(self, name: str) -> Runtime:
        return await self.live.start_service(name, upstream(self.seen))

    async def call(
        self,
        path: str,
        *,
        edge: Edge | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        url = (edge or self.edge).running.url + path
        async with self.http.get(url, headers=sent) as answer:
            return Answer(
                answer.status,
                {k.lower(): v for k, v in answer.headers.items()},
                await answer.read(),
            )

    async def sign_in(self, username: str, roles: list[str]) -> str:
        return await asyncio.to_thread(sign_in_user, self.rig, username, roles, audience=GATEWAY)


@pytest.fixture
def run() -> str:
    return secrets.token_hex(6)


@pytest.fixture
def identity(short_tmp: Path, run: str) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, section(run))


@pytest.fixture
async def stack(identity: RunningIdentityServer, short_tmp: Path, run: str) -> AsyncIterator[Stack]:
    seen: list[dict[str, Any]] = []
    async with live_gateway(
        identity, short_tmp, section(run), [("orders", upstream(seen))]
    ) as live:
        yield Stack(live, run, seen, [Edge(live.gateway, live.sink)])


async def _until(
    call: Callable[[], Awaitable[Answer]], done: Callable[[Answer], bool], within: float
) -> Answer:
    """Call until ``done`` holds or ``within`` seconds have passed; the last answer."""
    started = time.monotonic()
    answer = await call()
    while not done(answer) and time.monotonic() - started < within:
        await asyncio.sleep(0.05)
        answer = await call()
    return answer


# -- rate limits -------------------------------------------------------------------------


async def test_a_consumer_gets_exactly_its_limit_with_the_ratelimit_headers(
    stack: Stack,
) -> None:
    alice = await stack.sign_in("alice", ["user"])
    bob = await stack.sign_in("bob", ["user"])
    answers = [await stack.call("/limited/x", token=alice) for _ in range(6)]
    assert [a.status for a in answers] == [200] * 5 + [429]
    for remaining, answer in zip([4, 3, 2, 1, 0], answers, strict=False):
        assert answer.headers["ratelimit-policy"] == f"{LIMITED};q=5;w=60"
        assert answer.headers["ratelimit"].startswith(f"{LIMITED};r={remaining};t=")
        assert "retry-after" not in answer.headers
    refused = answers[5]
    assert refused.json()["error"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-policy"] == f"{LIMITED};q=5;w=60"
    assert refused.headers["ratelimit"] == f"{LIMITED};r=0;t={refused.headers['retry-after']}"
    # the refusal never reached the service; the event names the rule and the consumer
    subject = answers[0].json()["sub"]
    assert [s["sub"] for s in stack.seen if s["path"] == "/limited/x"] == [subject] * 5
    event = stack.edge.last(Reason.RATE_LIMITED)
    assert event.decision == events.Decision.DENY
    assert event.sub == subject
    assert event.attributes["rule"] == "routes[0].rate_limits[0]"
    assert stack.edge.reasons().count(Reason.RATE_LIMITED) == 1
    # another user has a bucket of their own
    other = await stack.call("/limited/x", token=bob)
    assert other.status == 200
    assert other.headers["ratelimit"].startswith(f"{LIMITED};r=4;")


async def test_a_forged_x_forwarded_for_does_not_reset_a_per_ip_limit(stack: Stack) -> None:
    forged = [f"198.51.100.{i}" for i in range(1, 5)]
    untrusted = [
        await stack.call("/anon/x", headers={"X-Forwarded-For": address}) for address in forged
    ]
    assert [a.status for a in untrusted] == [200, 200, 200, 429]
    event = stack.edge.last(Reason.RATE_LIMITED)
    assert event.attributes["client"] == "127.0.0.1"  # the peer, whatever the header said
    assert {s["headers"]["x-forwarded-for"] for s in stack.seen} == {"127.0.0.1"}
    # behind a trusted proxy the header is believed: each address has its own count
    proxied = await stack.gateway(trusted_proxies="[127.0.0.1/32]")
    each = [
        await stack.call("/anon/x", edge=proxied, headers={"X-Forwarded-For": address})
        for address in forged
    ]
    assert [a.status for a in each] == [200] * 4
    same = [
        await stack.call("/anon/x", edge=proxied, headers={"X-Forwarded-For": forged[0]})
        for _ in range(3)
    ]
    assert [a.status for a in same] == [200, 200, 429]
    assert proxied.last(Reason.RATE_LIMITED).attributes["client"] == forged[0]
    assert stack.seen[-1]["headers"]["x-forwarded-for"] == forged[0]


async def test_failed_attempts_count_against_an_address_limit(stack: Stack) -> None:
    """Address limits are counted before authentication: guessing credentials from one
    address is throttled like any other traffic from it."""
    edge = await stack.gateway(rate_limits="[{per: ip, limit: 4/minute}]")
    tries = [
        await stack.call("/jwt-only/x", edge=edge, headers={"Authorization": f"Bearer guess{i}"})
        for i in range(5)
    ]
    assert [t.status for t in tries] == [401, 401, 401, 401, 429]
    assert 1 <= int(tries[-1].headers["retry-after"]) <= 60
    assert edge.last(Reason.RATE_LIMITED).attributes["rule"] == "rate_limits[0]"


@pytest.mark.services
async def test_two_gateways_sharing_redis_admit_the_limit_between_them(stack: Stack) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    edges = [await stack.gateway(redis=SHARED_REDIS) for _ in range(2)]
    room = asyncio.Semaphore(12)

    async def one(i: int) -> tuple[int, int]:
        async with room:
            return i % 2, (await stack.call("/shared/x", edge=edges[i % 2])).status

    answers = await asyncio.gather(*(one(i) for i in range(3 * SHARED_LIMIT)))
    statuses = [status for _, status in answers]
    assert set(statuses) <= {200, 429}, statuses
    admitted = statuses.count(200)
    assert SHARED_LIMIT <= admitted <= 1.02 * SHARED_LIMIT
    for index, edge in enumerate(edges):  # both took part, and every count went to Redis
        assert {s for i, s in answers if i == index} == {200, 429}
        assert Activity.RATE_LIMIT_STORE_DOWN not in edge.reasons()
    refusals = sum(edge.reasons().count(Reason.RATE_LIMITED) for edge in edges)
    assert refusals == statuses.count(429)


@pytest.mark.services
async def test_a_gateway_limits_on_its_own_while_redis_is_down(
    stack: Stack, private_redis: PrivateRedis
) -> None:
    edge = await stack.gateway(redis=private_redis.url)

    async def anon() -> Answer:
        return await stack.call("/anon/x", edge=edge)

    assert [(await anon()).status for _ in range(2)] == [200, 200]
    assert await private_redis.keys("trustmesh:ratelimit:*")  # counted in Redis
    await asyncio.to_thread(private_redis.kill)
    # still answering, with the same rule counted in this instance's memory (afresh)
    during = [(await anon()).status for _ in range(4)]
    assert during == [200, 200, 200, 429]
    assert edge.reasons().count(Activity.RATE_LIMIT_STORE_DOWN) == 1
    down = edge.last(Activity.RATE_LIMIT_STORE_DOWN)
    assert down.decision == events.Decision.ERROR
    assert "redis unreachable" in down.message
    assert edge.last(Reason.RATE_LIMITED).decision == events.Decision.DENY
    # back: a request after the probe interval (5 s) starts a probe; the next ones count
    # in Redis again (which the restarted server holds empty)
    await asyncio.to_thread(private_redis.start)
    answers: list[int] = []

    async def probe() -> Answer:
        answer = await anon()
        answers.append(answer.status)
        return answer

    await _until(probe, lambda _: Activity.RATE_LIMIT_STORE_BACK in edge.reasons(), 15)
    # the fallback's count held until Redis was back (the last may be counted there)
    assert set(answers[:-1]) <= {429}
    assert edge.last(Activity.RATE_LIMIT_STORE_BACK).decision == events.Decision.ALLOW
    assert (await anon()).status == 200
    assert await private_redis.keys("trustmesh:ratelimit:*")


# -- API keys ----------------------------------------------------------------------------


async def _key(stack: Stack, scopes: list[str], roles: list[str]) -> tuple[str, str]:
    """A key made with the key store's functions in the gateway's state: (id, key)."""
    store = await open_keystore(stack.state)
    try:
        issued = await add_key(
            store,
            parse_config(CONFIG + section(stack.run), source="keys.yaml"),
            name="partner bot",
            scopes=scopes,
            roles=roles,
            now=time.time(),
            sink=events.MemorySink(),
        )
    finally:
        await store.close()
    return issued.record.key_id, issued.key


def _with_key(key: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"}


async def test_api_keys_refused_at_the_edge(stack: Stack) -> None:
    _, everywhere = await _key(stack, ["*"], [])
    _, elsewhere = await _key(stack, ["/other-keyed"], ["partner"])

    async def refused(headers: dict[str, str], reason: str, path: str = "/keyed/x") -> None:
        answer = await stack.call(path, headers=headers)
        assert answer.status == 401, (reason, answer.status)
        assert answer.json()["error"] in ("invalid_key", "unauthenticated")
        assert answer.headers["www-authenticate"].startswith(("ApiKey", "Bearer"))
        assert stack.edge.reasons()[-1] == reason

    # new keys are known once the gateway's snapshot is reloaded (at most a second old)
    await _until(
        lambda: stack.call("/keyed/x", headers=_with_key(elsewhere)),
        lambda _: stack.edge.reasons()[-1] != Reason.API_KEY_UNKNOWN,
        3,
    )
    await refused(_with_key(elsewhere), Reason.API_KEY_OUT_OF_SCOPE)
    secret = everywhere.rsplit("_", 1)[1]
    wrong = everywhere[:-52] + ("a" if secret[0] != "a" else "b") + secret[1:]
    await refused(_with_key(wrong), Reason.API_KEY_INVALID)
    await refused({"X-API-Key": wrong}, Reason.API_KEY_INVALID)
    await refused(_with_key("tmk_short"), Reason.API_KEY_MALFORMED)
    await refused(
        {"X-API-Key": elsewhere, "Authorization": f"ApiKey {everywhere}"}, "api-key-malformed"
    )
    # a route that takes only tokens takes no key, even one scoped to every route
    await refused(_with_key(everywhere), Reason.TOKEN_MISSING, "/jwt-only/x")
    await refused({"X-API-Key": everywhere}, Reason.TOKEN_MISSING, "/jwt-only/x")
    assert stack.edge.last(Reason.API_KEY_INVALID).attributes["route"] == "routes[3]"
    text = json.dumps([[e.message, dict(e.attributes)] for e in stack.edge.sink.events])
    assert secret not in text
    assert stack.seen == []  # nothing reached the service


async def test_an_api_key_reaches_the_service_and_is_revoked_within_two_seconds(
    stack: Stack,
) -> None:
    key_id, key = await _key(stack, ["/keyed"], ["partner"])
    everywhere_id, everywhere = await _key(stack, ["*"], [])

    async def keyed(headers: dict[str, str]) -> Answer:
        return await stack.call("/keyed/x", headers=headers)

    ok = await _until(lambda: keyed(_with_key(key)), lambda a: a.status != 401, 3)
    assert ok.status == 200, ok.body
    seen = ok.json()
    assert seen["sub"] == f"apikey:{key_id}"
    assert seen["claims"]["roles"] == ["partner"]
    assert seen["claims"]["iss"] == GATEWAY
    assert seen["headers"]["authorization"].startswith("Bearer ")
    assert "x-api-key" not in seen["headers"]
    assert key.rsplit("_", 1)[1] not in ok.body.decode()  # in no header the service got
    forwarded = stack.edge.last(Reason.REQUEST_FORWARDED)
    assert forwarded.sub == f"apikey:{key_id}"
    assert key.rsplit("_", 1)[1] not in json.dumps(dict(forwarded.attributes))
    # the other header form; a key for every route
    assert (await keyed({"X-API-Key": key})).status == 200
    assert (await keyed({"X-API-Key": everywhere})).json()["sub"] == f"apikey:{everywhere_id}"
    # revoked with the key store's functions: refused within 2 s
    store = await open_keystore(stack.state)
    try:
        await revoke_key(store, key_id, now=time.time(), sink=events.MemorySink())
    finally:
        await store.close()
    started = time.monotonic()
    status = 200
    while time.monotonic() - started < 2.0:
        status = (await keyed(_with_key(key))).status
        if status == 401:
            break
        await asyncio.sleep(0.05)
    assert status == 401, "the gateway still took a key revoked 2 s ago"
    assert stack.edge.reasons()[-1] == Reason.API_KEY_REVOKED
    assert (await keyed(_with_key(everywhere))).status == 200  # the others still work


async def test_an_unreadable_key_store_fails_closed_with_503_until_it_is_back(
    stack: Stack,
) -> None:
    _, key = await _key(stack, ["/keyed"], [])

    async def keyed() -> Answer:
        return await stack.call("/keyed/x", headers=_with_key(key))

    assert (await _until(keyed, lambda a: a.status != 401, 3)).status == 200
    with sqlite3.connect(keys_db_path(stack.state)) as db:  # the table is gone
        db.execute("ALTER TABLE gateway_api_keys RENAME TO moved_away")
    # the snapshot in hand serves until it is a second old; the next load fails: closed
    down = await _until(keyed, lambda a: a.status != 200, 3)
    assert down.status == 503
    assert down.json()["error"] == "unavailable"
    refused = stack.edge.last(Reason.KEY_STORE_UNAVAILABLE)
    assert refused.decision == events.Decision.ERROR
    assert refused.attributes["route"] == "routes[3]"
    served = len(stack.seen)
    assert [(await keyed()).status for _ in range(3)] == [503] * 3
    assert len(stack.seen) == served  # nothing reaches the service while it is down
    with sqlite3.connect(keys_db_path(stack.state)) as db:
        db.execute("ALTER TABLE moved_away RENAME TO gateway_api_keys")
    assert (await _until(keyed, lambda a: a.status == 200, 3)).status == 200


async def test_cedar_sees_an_api_key_as_its_principal_with_its_roles(stack: Stack) -> None:
    partner_id, partner = await _key(stack, ["/keyed", "/other-keyed"], ["partner"])
    plain_id, plain = await _key(stack, ["/keyed", "/other-keyed"], [])
    (stack.root / "edge.cedar").write_text(
        f"""
@id("partners")
permit (principal is ApiKey, action == Action::"GET", resource == Route::"/keyed")
when {{ principal.roles.contains("partner") }};

@id("that-key")
permit (principal == ApiKey::"{plain_id}", action == Action::"GET",
        resource == Route::"/other-keyed");
"""
    )
    edge = await stack.gateway(policies="[edge.cedar]")
    user = await stack.sign_in("paula", ["partner"])

    async def call(path: str, key: str | None = None, token: str | None = None) -> int:
        headers = _with_key(key) if key else None
        return (await stack.call(path, edge=edge, headers=headers, token=token)).status

    assert await call("/keyed/x", partner) == 200
    assert edge.last(Reason.REQUEST_FORWARDED).attributes["policy"] == "partners"
    assert await call("/keyed/x", plain) == 403  # no role partner
    denied = edge.last(Reason.POLICY_DENY)
    assert denied.decision == events.Decision.DENY
    assert denied.sub == f"apikey:{plain_id}"
    assert denied.attributes["route"] == "routes[3]"
    # the principal's id is the key's: one policy names it
    assert await call("/other-keyed/x", plain) == 200
    assert edge.last(Reason.REQUEST_FORWARDED).attributes["policy"] == "that-key"
    assert await call("/other-keyed/x", partner) == 403
    assert edge.last(Reason.POLICY_DENY).sub == f"apikey:{partner_id}"
    # a user holding the role is not an ApiKey
    assert await call("/keyed/x", token=user) == 403
    assert edge.reasons().count(Reason.POLICY_DENY) == 3


# -- upstream failures -------------------------------------------------------------------


async def test_a_slow_upstream_gets_504_and_a_missing_one_503(stack: Stack) -> None:
    started = time.monotonic()
    slow = await stack.call("/slow/x")
    took = time.monotonic() - started
    assert slow.status == 504
    assert slow.json()["error"] == "timeout"
    assert took < SLOW_SECONDS  # the route's timeout (1 s) ended it, not the service's answer
    timeout = stack.edge.last(Reason.UPSTREAM_TIMEOUT)
    assert timeout.decision == events.Decision.ERROR
    assert timeout.attributes["route"] == "routes[6]"
    # a service with no instance at all
    none = await stack.call("/stock/1")
    assert none.status == 503
    assert none.json()["error"] == "unavailable"
    assert stack.edge.reasons()[-1] == Reason.UPSTREAM_UNAVAILABLE
    # an instance that answered, then stopped (discovery still lists it)
    payments = await stack.service("payments")
    assert (await stack.call("/pay/x")).status == 200
    await payments.close()
    stack.services.remove(payments)
    gone = await stack.call("/pay/x")
    assert gone.status == 503
    unavailable = stack.edge.last(Reason.UPSTREAM_UNAVAILABLE)
    assert unavailable.decision == events.Decision.ERROR
    assert unavailable.attributes["route"] == "routes[8]"


def test_a_route_timeout_is_whole_seconds(stack: Stack) -> None:
    """Like every duration of the declaration; a sub-second timeout is refused, not
    rounded: the problem names the key."""
    with pytest.raises(ConfigError, match=r"routes.*timeout.*'300ms' is not a duration"):
        parse_config(CONFIG + section(stack.run, "300ms"), source="t.yaml")


# -- the client listener's bounds ----------------------------------------------------------
def _raw(edge: Edge, stack: Stack) -> RawTLS:
    return RawTLS(edge.running.public.port, crypto.edge_ca_path(stack.rig.state))


async def test_the_gateway_bounds_what_clients_send_and_hold(stack: Stack) -> None:
    """The attack of the hardening review, against a live gateway: a 32 MB header line,
    a trickled head, requests that must not be routed, one address holding connections
    open. Each is refused (and the upstream never sees it), others are served, and the
    refusals are counted in metrics and reported as a few aggregated events."""
    edge = await stack.gateway(
        limits="{header_timeout: 1s, max_header_bytes: 16384, max_header_line_bytes: 4096,"
        " max_connections_per_address: 10}",
        metrics_port="0",
    )
    token = await stack.sign_in("alice", ["user"])
    seen_before = len(stack.seen)
    head = b"GET /jwt-only/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n" % (
        token.encode()
    )
    # a 32 MB header line: refused once the head passes 16 KiB
    reader, writer = await _raw(edge, stack).open()
    writer.write(head + b"X-Big: ")
    sent = 0
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while sent < 32 << 20 and not reader._buffer:  # type: ignore[attr-defined]
            writer.write(b"a" * 65536)
            await writer.drain()
            sent += 65536
            await asyncio.sleep(0)
    big = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert big.startswith(b"HTTP/1.1 431 ")
    assert sent < 8 << 20
    # a head trickled one line at a time: 408 at the header timeout
    started = time.monotonic()
    reader, writer = await _raw(edge, stack).open()
    writer.write(head)
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        for i in range(40):
            await asyncio.sleep(0.1)
            if reader._buffer or reader.at_eof():  # type: ignore[attr-defined]
                break
            writer.write(b"X-%d: trickle\r\n" % i)
    slow = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert slow.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 2.5
    # never routed: HTTP/0.9, no Host, two Hosts, a WebSocket upgrade
    for raw, status in (
        (b"GET /jwt-only/x\r\n\r\n", b"400"),
        (head.replace(b"Host: localhost\r\n", b"") + b"\r\n", b"400"),
        (head + b"Host: evil.example\r\n\r\n", b"400"),
        (head + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", b"501"),
    ):
        answer = await _raw(edge, stack).exchange(raw)
        assert answer.startswith(b"HTTP/1.1 " + status), (raw[:40], answer[:60])
    # one address holding connections open (each mid-head): the eleventh is refused …
    held = [await _raw(edge, stack).open("127.0.0.2") for _ in range(10)]
    for _, writer in held:
        writer.write(b"GET /jwt-only/x HTTP/1.1\r\n")
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await _raw(edge, stack).open("127.0.0.2")
    # … while another address is served
    ok = await stack.call("/jwt-only/x", edge=edge, token=token)
    assert ok.status == 200
    assert len(stack.seen) == seen_before + 1  # only that request reached the service
    for _, writer in held:
        writer.close()

    assert edge.running.metrics_url is not None
    async with stack.http.get(edge.running.metrics_url) as scraped:
        text = await scraped.text()
    for reason, count in (
        (Reason.HEADERS_TOO_LARGE, 1),
        (Reason.HEADER_TIMEOUT, 1),
        (Reason.REQUEST_MALFORMED, 1),
        (Reason.HOST_INVALID, 2),
        (Reason.UPGRADE_UNSUPPORTED, 1),
        (Reason.CONNECTION_LIMIT_ADDRESS, 1),
    ):
        assert f'trustmesh_gateway_refused_total{{reason="{reason}"}} {count}.0' in text
    edge.running.public.report()  # what the periodic report hands over
    refused = [e for e in edge.sink.events if e.message == "refused at the listener"]
    assert {e.reason: e.attributes["count"] for e in refused} == {
        Reason.HEADERS_TOO_LARGE: 1,
        Reason.HEADER_TIMEOUT: 1,
        Reason.REQUEST_MALFORMED: 1,
        Reason.HOST_INVALID: 2,
        Reason.UPGRADE_UNSUPPORTED: 1,
        Reason.CONNECTION_LIMIT_ADDRESS: 1,
    }
    limited = next(e for e in refused if e.reason == Reason.CONNECTION_LIMIT_ADDRESS)
    assert limited.attributes["addresses"] == "127.0.0.2 ×1"
