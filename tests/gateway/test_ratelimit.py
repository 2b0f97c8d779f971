"""The gateway's rate limits: exact counting in memory and in Redis, per consumer, role,
route and address, the RateLimit headers, two replicas sharing Redis, and the in-memory
fallback while Redis is down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from services import require_service

from trustmesh.config.gateway import GatewayConfig
from trustmesh.gateway.ratelimit import (
    RateDecision,
    RateLimiter,
    compile_rules,
    counts_before_auth,
)
from trustmesh.reasons import Reason
from trustmesh.testing import FakeClock, PrivateRedis, until_async

SHARED_REDIS = "redis://127.0.0.1:6379/0"
HOUR = 3600
IP = "203.0.113.7"


def gateway(
    rate_limits: list[dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    redis: str | None = None,
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "rate_limits": rate_limits or [],
            "routes": routes or [{"path": "/a", "to": "svc"}],
            "redis": redis,
        }
    )


class Changes(list[tuple[bool, str]]):
    def __call__(self, ok: bool, detail: str) -> None:
        self.append((ok, detail))


class Limiters:
    """Makes limiters under a key prefix of their own; closes them and removes their keys."""

    def __init__(self) -> None:
        self.prefix = f"tm-test-rl:{uuid.uuid4().hex}"
        self.made: list[RateLimiter] = []
        self.shared = False

    def __call__(
        self, config: GatewayConfig, changes: Changes | None = None, **kwargs: Any
    ) -> RateLimiter:
        limiter = RateLimiter.from_config(
            config,
            on_storage_change=changes if changes is not None else Changes(),
            key_prefix=self.prefix,
            **kwargs,
        )
        self.made.append(limiter)
        self.shared |= config.redis == SHARED_REDIS
        return limiter

    async def keys(self) -> list[str]:
        client = aioredis.Redis.from_url(SHARED_REDIS, decode_responses=True)
        try:
            return [k async for k in client.scan_iter(match=f"{self.prefix}:*")]
        finally:
            await client.aclose()

    async def clean(self) -> None:
        for limiter in self.made:
            await limiter.close()
        if not self.shared:
            return
        try:
            keys = await self.keys()
        except (OSError, RedisError):
            return  # not reachable: nothing was written there
        if keys:
            client = aioredis.Redis.from_url(SHARED_REDIS)
            try:
                await client.delete(*keys)
            finally:
                await client.aclose()


@pytest.fixture
async def limiters() -> AsyncIterator[Limiters]:
    made = Limiters()
    try:
        yield made
    finally:
        await made.clean()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest) -> str | None:
    """Where counters live: None (memory) or the shared Redis."""
    if request.param == "memory":
        return None
    require_service("Redis", "127.0.0.1", 6379)
    return SHARED_REDIS


async def hits(
    limiter: RateLimiter,
    n: int,
    *,
    route: int = 0,
    consumer: str | None = "alice",
    roles: tuple[str, ...] = (),
    ip: str = IP,
) -> list[RateDecision]:
    return [await limiter.hit(route, consumer=consumer, roles=roles, ip=ip) for _ in range(n)]


def allowed(decisions: list[RateDecision]) -> list[bool]:
    return [d.allowed for d in decisions]


# -- exactness -------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["moving", "sliding"])
async def test_n_pass_then_429(limiters: Limiters, store: str | None, window: str) -> None:
    # a day: the in-memory sliding counter's windows start at whole days (UTC), far away
    config = gateway([{"per": "consumer", "limit": "5/day", "window": window}], redis=store)
    limiter = limiters(config)
    decisions = await hits(limiter, 6)
    assert allowed(decisions) == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.reason is Reason.RATE_LIMITED
    assert refused.retry_after is not None
    assert refused.retry_after >= 1
    assert {d.storage for d in decisions} == {"redis" if store else "memory"}
    assert all(d.reason is Reason.OK for d in decisions[:5])


@pytest.mark.parametrize("window", ["moving", "sliding"])
async def test_concurrent_hits_admit_exactly_n(
    limiters: Limiters, store: str | None, window: str
) -> None:
    config = gateway([{"per": "consumer", "limit": "20/day", "window": window}], redis=store)
    limiter = limiters(config)
    decisions = await asyncio.gather(
        *(limiter.hit(0, consumer="alice", roles=(), ip=IP) for _ in range(60))
    )
    assert sum(d.allowed for d in decisions) == 20


@pytest.mark.services
@pytest.mark.parametrize("window", ["moving", "sliding"])
async def test_two_replicas_sharing_redis_admit_at_most_the_limit(
    limiters: Limiters, window: str
) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    config = gateway(
        [{"per": "consumer", "limit": "200 per 1 hour", "window": window}], redis=SHARED_REDIS
    )
    changes = Changes()
    # 600 requests fanned out at once on a busy 2-core machine can hold a connect past the
    # default 1 s; an outage declared then would be counted in memory, not in Redis
    replicas = [limiters(config, changes, socket_timeout=3.0) for _ in range(2)]
    decisions = await asyncio.gather(
        *(
            replica.hit(0, consumer="alice", roles=(), ip=IP)
            for _ in range(300)
            for replica in replicas
        )
    )
    assert changes == []  # every request was counted in Redis, none by a fallback
    assert {d.storage for d in decisions} == {"redis"}
    admitted = sum(d.allowed for d in decisions)
    assert 200 <= admitted <= 204  # ≤ 1.02 × the limit; the Lua scripts make it exact


# -- what a rule counts by ---------------------------------------------------------------


async def test_each_consumer_has_its_own_bucket(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "consumer", "limit": "2/hour"}]))
    assert allowed(await hits(limiter, 3, consumer="alice")) == [True, True, False]
    assert allowed(await hits(limiter, 2, consumer="bob")) == [True, True]
    assert allowed(await hits(limiter, 1, consumer="alice", ip="198.51.100.1")) == [False]


async def test_anonymous_callers_are_counted_by_address(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "consumer", "limit": "2/hour"}]))
    assert allowed(await hits(limiter, 3, consumer=None)) == [True, True, False]
    assert allowed(await hits(limiter, 1, consumer=None, ip="198.51.100.1")) == [True]
    # a consumer whose id spells the address has a bucket of its own
    assert allowed(await hits(limiter, 2, consumer=IP)) == [True, True]


async def test_per_ip_is_shared_by_consumers_of_one_address(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "ip", "limit": "2/hour"}]))
    assert allowed(await hits(limiter, 1, consumer="alice")) == [True]
    assert allowed(await hits(limiter, 1, consumer="bob")) == [True]
    assert allowed(await hits(limiter, 1, consumer=None)) == [False]
    assert allowed(await hits(limiter, 1, consumer="alice", ip="198.51.100.1")) == [True]


async def test_an_ipv6_client_is_counted_by_its_slash_64(limiters: Limiters) -> None:
    """One host usually holds a whole /64: rotating the low bits does not reset a count."""
    limiter = limiters(gateway([{"per": "ip", "limit": "2/hour"}]))
    rotating = [f"2001:db8:1:2::{i:x}" for i in range(1, 4)]
    outcomes = [(await limiter.hit(0, consumer=None, roles=(), ip=ip)).allowed for ip in rotating]
    assert outcomes == [True, True, False]
    assert (await limiter.hit(0, consumer=None, roles=(), ip="2001:db8:1:3::1")).allowed
    # an IPv4-mapped address counts as that IPv4 address
    assert (await limiter.hit(0, consumer=None, roles=(), ip="192.0.2.9")).allowed
    assert (await limiter.hit(0, consumer=None, roles=(), ip="::ffff:192.0.2.9")).allowed
    assert not (await limiter.hit(0, consumer=None, roles=(), ip="192.0.2.9")).allowed


async def test_an_ipv4_address_in_nat64_or_6to4_form_counts_as_itself(
    limiters: Limiters,
) -> None:
    """NAT64 (64:ff9b::/96) and 6to4 (2002::/16) spellings of 192.0.2.9 share its bucket:
    switching forms does not reset a count."""
    limiter = limiters(gateway([{"per": "ip", "limit": "3/hour"}]))
    forms = ["192.0.2.9", "64:ff9b::c000:209", "2002:c000:209:1::5", "::ffff:192.0.2.9"]
    outcomes = [(await limiter.hit(0, consumer=None, roles=(), ip=ip)).allowed for ip in forms]
    assert outcomes == [True, True, True, False]


async def test_per_role_counts_each_role_and_needs_room_in_all(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "role", "limit": "2/hour"}]))
    assert allowed(await hits(limiter, 1, consumer="alice", roles=("staff",))) == [True]
    assert allowed(await hits(limiter, 1, consumer="bob", roles=("staff",))) == [True]
    assert allowed(await hits(limiter, 1, consumer="carol", roles=("staff",))) == [False]
    # "staff" is full: a consumer holding it and "ops" is refused, and "ops" loses nothing
    both = await hits(limiter, 1, consumer="dave", roles=("staff", "ops"))
    assert allowed(both) == [False]
    assert allowed(await hits(limiter, 2, consumer="erin", roles=("ops",))) == [True, True]
    assert allowed(await hits(limiter, 1, consumer="erin", roles=("ops",))) == [False]
    # no role, no bucket: the rule does not apply
    assert allowed(await hits(limiter, 3, consumer="frank", roles=())) == [True] * 3
    assert (await hits(limiter, 1, consumer="frank"))[0].rule == ""


async def test_per_route_counts_the_route_as_a_whole(limiters: Limiters) -> None:
    routes = [
        {"path": "/a", "to": "svc", "rate_limits": [{"per": "route", "limit": "2/hour"}]},
        {"path": "/b", "to": "svc"},
    ]
    limiter = limiters(gateway(routes=routes))
    assert allowed(await hits(limiter, 1, consumer="alice")) == [True]
    assert allowed(await hits(limiter, 1, consumer=None, ip="198.51.100.1")) == [True]
    refused = await hits(limiter, 1, consumer="bob", ip="198.51.100.2")
    assert allowed(refused) == [False]
    assert refused[0].rule == "routes[0].rate_limits[0]"
    assert allowed(await hits(limiter, 3, route=1)) == [True] * 3


async def test_a_gateway_wide_per_route_rule_counts_each_route(limiters: Limiters) -> None:
    routes = [{"path": "/a", "to": "svc"}, {"path": "/b", "to": "svc"}]
    limiter = limiters(gateway([{"per": "route", "limit": "2/hour"}], routes=routes))
    assert allowed(await hits(limiter, 3, route=0)) == [True, True, False]
    assert allowed(await hits(limiter, 3, route=1)) == [True, True, False]


async def test_a_rule_with_roles_applies_only_to_their_holders(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "consumer", "limit": "1/hour", "roles": ["free"]}]))
    free = await hits(limiter, 2, consumer="alice", roles=("free", "reader"))
    assert allowed(free) == [True, False]
    assert free[1].rule == "rate_limits[0]"
    paid = await hits(limiter, 3, consumer="bob", roles=("paid",))
    assert allowed(paid) == [True] * 3
    assert {d.rule for d in paid} == {""}
    assert allowed(await hits(limiter, 3, consumer=None, roles=("free",))) == [True] * 3


async def test_a_per_role_rule_with_roles_counts_only_those_roles(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "role", "limit": "1/hour", "roles": ["free"]}]))
    assert allowed(await hits(limiter, 1, consumer="alice", roles=("free", "x"))) == [True]
    # "x" has no bucket of this rule; "free" is full
    assert allowed(await hits(limiter, 1, consumer="bob", roles=("x", "free"))) == [False]
    assert allowed(await hits(limiter, 2, consumer="carol", roles=("x",))) == [True, True]


async def test_the_most_restrictive_rule_decides(limiters: Limiters) -> None:
    routes = [
        {
            "path": "/a",
            "to": "svc",
            "rate_limits": [
                {"per": "ip", "limit": "4/hour"},
                {"per": "consumer", "limit": "3/hour"},
            ],
        }
    ]
    limiter = limiters(gateway([{"per": "consumer", "limit": "5/hour"}], routes=routes))
    decisions = await hits(limiter, 4)
    assert allowed(decisions) == [True, True, True, False]
    assert {d.rule for d in decisions} == {"routes[0].rate_limits[1]"}
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    # bob, from the same address: its rule now has the least room (4 - 3; the refusal
    # took nothing from it) and decides
    bob = await hits(limiter, 2, consumer="bob")
    assert allowed(bob) == [True, False]
    assert {d.rule for d in bob} == {"routes[0].rate_limits[0]"}
    assert bob[0].remaining == 0


async def test_a_refusal_consumes_from_no_other_bucket(limiters: Limiters) -> None:
    routes = [{"path": "/a", "to": "svc", "rate_limits": [{"per": "ip", "limit": "1/hour"}]}]
    limiter = limiters(gateway([{"per": "consumer", "limit": "3/hour"}], routes=routes))
    assert allowed(await hits(limiter, 1, consumer="alice")) == [True]
    # the address is spent: alice's own bucket keeps its 2 units through the refusals
    assert allowed(await hits(limiter, 5, consumer="alice")) == [False] * 5
    later = await hits(limiter, 3, consumer="alice", ip="198.51.100.1")
    assert allowed(later) == [True, False, False]
    assert later[0].rule == "routes[0].rate_limits[0]"  # 0 left of the new address's 1
    assert later[1].rule == "routes[0].rate_limits[0]"


async def test_no_rule_allows_without_headers(limiters: Limiters) -> None:
    limiter = limiters(gateway())
    decision = (await hits(limiter, 1))[0]
    assert decision.allowed
    assert decision.reason is Reason.OK
    assert decision.headers() == []


# -- headers -------------------------------------------------------------------------------


def header(decision: RateDecision, name: bytes) -> str | None:
    values = [v.decode() for k, v in decision.headers() if k == name]
    assert len(values) <= 1
    return values[0] if values else None


async def test_ratelimit_headers_and_retry_after(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "consumer", "limit": "2 per 1 hour"}]))
    first, second, third = await hits(limiter, 3)
    for decision in (first, second, third):
        assert header(decision, b"ratelimit-policy") == '"rate_limits[0]";q=2;w=3600'
        assert all(name == name.lower() for name, _ in decision.headers())
    assert header(first, b"ratelimit") == '"rate_limits[0]";r=1;t=3600'
    assert header(first, b"retry-after") is None
    assert second.remaining == 0
    assert HOUR - 5 <= second.reset_after <= HOUR
    assert header(second, b"ratelimit") == f'"rate_limits[0]";r=0;t={second.reset_after}'
    assert header(second, b"retry-after") is None
    assert not third.allowed
    assert third.retry_after is not None
    assert HOUR - 5 <= third.retry_after <= HOUR
    assert header(third, b"retry-after") == str(third.retry_after)
    assert header(third, b"ratelimit") == f'"rate_limits[0]";r=0;t={third.retry_after}'


async def test_retry_after_is_when_a_unit_frees(limiters: Limiters) -> None:
    limiter = limiters(gateway([{"per": "consumer", "limit": "1 per 2 seconds"}]))
    assert allowed(await hits(limiter, 1)) == [True]
    refused = (await hits(limiter, 1))[0]
    assert refused.retry_after in (1, 2)
    assert header(refused, b"retry-after") == str(refused.retry_after)


# -- keys ----------------------------------------------------------------------------------


@pytest.mark.services
async def test_keys_are_namespaced_and_hide_untrusted_ids(limiters: Limiters) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    routes = [
        {"path": "/a", "to": "svc", "rate_limits": [{"per": "consumer", "limit": "2/hour"}]},
        {"path": "/b", "to": "svc", "rate_limits": [{"per": "consumer", "limit": "2/hour"}]},
    ]
    limiter = limiters(gateway(routes=routes, redis=SHARED_REDIS))
    evil = "x*{y}/z:LIMITER\nnext"
    assert allowed(await hits(limiter, 3, consumer=evil, route=0)) == [True, True, False]
    # the same rule on another route counts apart
    assert allowed(await hits(limiter, 2, consumer=evil, route=1)) == [True, True]
    keys = await limiters.keys()
    assert len(keys) == 2
    assert all(k.startswith(f"{limiters.prefix}:") for k in keys)
    assert not any("x*" in k or "{y}" in k or "\n" in k for k in keys)


# -- fallback when Redis is down -----------------------------------------------------------


@pytest.mark.services
async def test_fallback_while_redis_is_down_and_back_after(
    private_redis: PrivateRedis, limiters: Limiters
) -> None:
    clock, changes = FakeClock(), Changes()
    config = gateway([{"per": "consumer", "limit": "3 per 1 hour"}], redis=private_redis.url)
    limiter = limiters(config, changes, clock=clock.monotonic, probe_interval=5.0)

    before = await hits(limiter, 2)
    assert allowed(before) == [True, True]
    assert {d.storage for d in before} == {"redis"}

    await asyncio.to_thread(private_redis.kill)
    during = await asyncio.gather(
        *(limiter.hit(0, consumer="alice", roles=(), ip=IP) for _ in range(5))
    )
    # the same rule, counted in memory on this instance: 3 pass, then 429
    assert sum(d.allowed for d in during) == 3
    assert {d.storage for d in during} == {"fallback"}
    assert all(d.reason is Reason.RATE_LIMITED for d in during if not d.allowed)
    assert [ok for ok, _ in changes] == [False]  # once per outage
    assert "redis unreachable" in changes[0][1]

    await asyncio.to_thread(private_redis.start)
    # no probe before the interval has passed
    clock.advance(4.9)
    assert (await hits(limiter, 1, consumer="bob"))[0].storage == "fallback"
    await asyncio.sleep(0.1)
    assert [ok for ok, _ in changes] == [False]
    # due: the next request starts a probe in the background and is decided in memory
    clock.advance(0.2)
    assert (await hits(limiter, 1, consumer="bob"))[0].storage == "fallback"
    await until_async(lambda: len(changes) == 2, "the recovery to be told", within=5, every=0.01)
    assert changes[1][0] is True

    after = await hits(limiter, 2)
    # back on Redis, which the fresh server starts empty: the rule's 3 units again
    assert [d.storage for d in after] == ["redis", "redis"]
    assert [d.remaining for d in after] == [2, 1]
    probe = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        assert [k async for k in probe.scan_iter(match=f"{limiters.prefix}:*")]
    finally:
        await probe.aclose()


@pytest.mark.services
async def test_redis_down_at_start_falls_back_and_retries(
    private_redis: PrivateRedis, limiters: Limiters
) -> None:
    clock, changes = FakeClock(), Changes()
    config = gateway([{"per": "ip", "limit": "2 per 1 hour"}], redis=private_redis.url)
    await asyncio.to_thread(private_redis.kill)
    limiter = limiters(config, changes, clock=clock.monotonic)
    assert allowed(await hits(limiter, 3)) == [True, True, False]
    assert [ok for ok, _ in changes] == [False]
    # a probe that fails leaves the limiter on its fallback and tells nothing more
    clock.advance(10)
    assert (await hits(limiter, 1))[0].storage == "fallback"
    await asyncio.sleep(0.2)
    assert [ok for ok, _ in changes] == [False]
    await asyncio.to_thread(private_redis.start)
    clock.advance(10)
    assert (await hits(limiter, 1))[0].storage == "fallback"
    await until_async(lambda: len(changes) == 2, "the recovery to be told", within=5, every=0.01)
    assert (await hits(limiter, 1))[0].storage == "redis"


@pytest.mark.services
async def test_a_failing_listener_does_not_fail_requests(
    private_redis: PrivateRedis, limiters: Limiters
) -> None:
    def listener(ok: bool, detail: str) -> None:
        raise RuntimeError("listener broke")

    config = gateway([{"per": "ip", "limit": "2 per 1 hour"}], redis=private_redis.url)
    await asyncio.to_thread(private_redis.kill)
    limiter = RateLimiter.from_config(config, on_storage_change=listener)
    limiters.made.append(limiter)
    decision = (await hits(limiter, 1))[0]
    assert decision.allowed
    assert decision.storage == "fallback"


@pytest.mark.services
async def test_a_silent_redis_costs_at_most_the_socket_timeout(limiters: Limiters) -> None:
    # a listener that accepts and never answers, like a Redis behind a dead link
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock, changes = FakeClock(), Changes()
    config = gateway([{"per": "ip", "limit": "2 per 1 hour"}], redis=f"redis://127.0.0.1:{port}/0")
    limiter = limiters(config, changes, clock=clock.monotonic, socket_timeout=0.2)
    try:
        first = await asyncio.wait_for(limiter.hit(0, consumer=None, roles=(), ip=IP), 5)
        assert first.allowed
        assert first.storage == "fallback"
        assert [ok for ok, _ in changes] == [False]
        # a due probe hangs on the silent server in the background; requests go on
        clock.advance(10)
        connections = len(held)
        decisions = await asyncio.wait_for(hits(limiter, 2, consumer=None), 5)
        assert allowed(decisions) == [True, False]
        assert {d.storage for d in decisions} == {"fallback"}
        await until_async(
            lambda: len(held) > connections, "the probe to connect", within=5, every=0.01
        )
        assert [ok for ok, _ in changes] == [False]
    finally:
        await limiter.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def test_only_routes_with_an_address_limit_count_before_authentication() -> None:
    """What the gateway's before-authentication stage has to count, per route: a
    ``per: ip`` rule without ``roles`` (gateway-wide or the route's own); a route with
    none skips the stage (no headers, nothing counted)."""
    config = gateway(
        rate_limits=[{"per": "consumer", "limit": "10/minute"}],
        routes=[
            {"path": "/a", "to": "svc"},
            {"path": "/b", "to": "svc", "rate_limits": [{"per": "ip", "limit": "5/minute"}]},
            {
                "path": "/c",
                "to": "svc",
                "rate_limits": [{"per": "ip", "limit": "5/minute", "roles": ["ops"]}],
            },
        ],
    )
    assert counts_before_auth(compile_rules(config)) == (False, True, False)
    everywhere = gateway(rate_limits=[{"per": "ip", "limit": "5/minute"}])
    assert counts_before_auth(compile_rules(everywhere)) == (True,)
