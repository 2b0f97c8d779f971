"""Rate limits per consumer, role, route and client address: a moving window (exact: at
most N requests in any window-long span) or a sliding window counter (cheaper,
approximate), counted in the gateway's memory (:mod:`trustmesh.gateway.ratewindows`:
synchronous, no await on the request path) or in Redis with the ``limits`` library.

Every applicable rule must have room — the gateway-wide ``rate_limits`` and the route's
own. A rule with ``roles`` applies only to consumers holding one of them. ``per: consumer``
counts an anonymous caller by its address; ``per: role`` keeps one bucket per role the
consumer holds (only the listed roles when the rule lists some), and each must have room;
``per: route`` counts the route as a whole; ``per: ip`` the client address. Buckets are
looked at first and hit only when all have room, so a refusal consumes nothing. In memory
nothing runs between the look and the hit, so that holds always; in Redis a concurrent
request may take a bucket's last unit in between (the units already taken from the other
buckets stay taken), and one bucket alone is exact (each hit is one Lua script). The moving
window in Redis stamps entries with each gateway's wall clock, so replicas keep their
clocks in step (NTP); the sliding window counter goes by Redis's own expiry times.

Counters live in memory, or in Redis when ``gateway.redis`` is set, so that replicas share
them. When Redis fails, each gateway limits on its own with the same rules in memory,
calls ``on_storage_change(False, why)`` once, probes Redis in the background at most every
``probe_interval`` seconds (requests never wait on the probe) on connections opened
afresh, and goes back to Redis — calling ``on_storage_change(True, …)`` — once it
answers. Units counted in memory during an outage are not carried over to Redis.

Responses carry ``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10
§3, §4) for the rule that decided; a refusal adds ``Retry-After`` in delay-seconds
(RFC 9110 §10.2.3) and goes out as ``429 Too Many Requests`` (RFC 6585 §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import Context
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.util import WindowStats
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from trustmesh.config.gateway import GatewayConfig, GatewayRoute, RateLimitRule
from trustmesh.gateway.ratewindows import MemoryWindows, Stats
from trustmesh.policy.addresses import address_bucket
from trustmesh.reasons import Reason
from trustmesh.sdk import store_tls

__all__ = [
    "ProxyLimit",
    "RateDecision",
    "RateLimiter",
    "Rules",
    "StorageListener",
    "compile_rules",
    "counts_before_auth",
    "proxy_limit_keys",
    "proxy_limits",
]

log = logging.getLogger("trustmesh.gateway.ratelimit")

Clock = Callable[[], float]
#: Told ``(False, why)`` when the shared store fails, ``(True, why)`` when it is back.
Stage = Literal["before_auth", "after_auth", "all"]
StorageListener = Callable[[bool, str], None]
StorageKind = Literal["memory", "redis", "fallback"]

_STORAGE_ERRORS: Final = (RedisError, OSError, TimeoutError)
_POOL_SIZE: Final = 16  # Redis runs commands one at a time: a few connections carry a gateway
#: How long a request may queue for a pooled connection: a busy Redis, not a dead one.
_POOL_WAIT: Final = 5.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What the rate limits say of one request, and which rule said it.

    ``rule`` is the rule's place in the declaration (``rate_limits[0]``,
    ``routes[2].rate_limits[1]``), empty when no rule applies; ``reset_after`` is the
    number of seconds until the deciding bucket has another unit (its window, right
    after a first hit); ``storage`` tells where the counting happened.
    """

    allowed: bool
    reason: Reason
    rule: str
    limit: int
    window: int
    remaining: int
    reset_after: int
    retry_after: int | None
    storage: StorageKind

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10
        §3.1, §4.1: the policy named by a String, ``q``/``w`` its quota and window,
        ``r``/``t`` what remains and when more comes), plus ``Retry-After`` on a refusal."""
        if not self.rule:
            return []
        name = json.dumps(self.rule)  # an sf-string: the rule paths hold no '"' or '\'
        headers = [
            (b"ratelimit-policy", f"{name};q={self.limit};w={self.window}".encode()),
            (b"ratelimit", f"{name};r={self.remaining};t={self.reset_after}".encode()),
        ]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        return headers


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    per: str
    item: RateLimitItem
    moving: bool
    roles: frozenset[str] | None
    key: str  # the bucket namespace: scope, rule and (per route) the route

    @property
    def limit(self) -> int:
        return self.item.amount

    @property
    def window(self) -> int:
        return self.item.get_expiry()


@dataclass(frozen=True, slots=True)
class _Counter:
    kind: StorageKind
    storage: Storage
    moving: MovingWindowRateLimiter
    sliding: SlidingWindowCounterRateLimiter

    @classmethod
    def of(cls, kind: StorageKind, storage: Storage) -> _Counter:
        return cls(
            kind,
            storage,
            MovingWindowRateLimiter(storage),
            SlidingWindowCounterRateLimiter(storage),
        )

    def stats(self, rule: _Rule, key: str) -> Awaitable[WindowStats]:
        strategy = self.moving if rule.moving else self.sliding
        return strategy.get_window_stats(rule.item, key)

    def hit(self, rule: _Rule, key: str) -> Awaitable[bool]:
        strategy = self.moving if rule.moving else self.sliding
        return strategy.hit(rule.item, key)


#: Each route's compiled rules, by route index.
Rules = tuple[tuple["_Rule", ...], ...]


def _digest(value: str) -> str:
    """A fixed-length name for an untrusted string (consumer id, role, address)."""
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def compile_rules(gateway: GatewayConfig) -> Rules:
    """Each route's rate-limit rules, compiled (what :meth:`RateLimiter.hit` takes)."""
    return _compile(gateway)


def _compile(gateway: GatewayConfig) -> tuple[tuple[_Rule, ...], ...]:
    """Each route's rules (gateway-wide first), with their bucket namespaces.

    A namespace hashes the scope (gateway, or the route's name) with the rule itself, so
    counters survive a reload that reorders rules or routes; identical rules in one scope
    are told apart by their rank among themselves."""
    seen: dict[str, int] = {}

    def namespace(scope: str, rule: RateLimitRule) -> str:
        text = json.dumps([scope, rule.model_dump(mode="json")], sort_keys=True)
        rank = seen[text] = seen.get(text, -1) + 1
        return _digest(f"{text}#{rank}")

    def bind(name: str, rule: RateLimitRule, key: str) -> _Rule:
        roles = frozenset(rule.roles) if rule.roles is not None else None
        return _Rule(name, rule.per, parse(rule.limit), rule.window == "moving", roles, key)

    shared = [(i, r, namespace("gateway", r)) for i, r in enumerate(gateway.rate_limits)]

    def for_route(index: int, route: GatewayRoute) -> tuple[_Rule, ...]:
        route_key = _digest(route.route_name)
        rules = [
            bind(f"rate_limits[{i}]", r, f"{ns}.{route_key}" if r.per == "route" else ns)
            for i, r, ns in shared
        ]
        rules += [
            bind(f"routes[{index}].rate_limits[{i}]", r, namespace(f"route:{route.route_name}", r))
            for i, r in enumerate(route.rate_limits)
        ]
        return tuple(rules)

    return tuple(for_route(i, route) for i, route in enumerate(gateway.routes))


@dataclass(frozen=True, slots=True)
class ProxyLimit:
    """A rule a proxy in front of the gateway counts itself (nginx's ``limit_req``): the
    bucket namespace it counts in (``zone``), the rule's quota and window, and the
    sustained rate it becomes (whole requests per minute, rounded down). The proxy's
    counter is a leaky bucket: ``limit`` requests at once, then one every
    ``window / limit`` seconds; so any window-long span admits at most twice the quota,
    where the gateway's own windows admit the quota."""

    zone: str
    name: str
    limit: int
    window: int
    per_minute: int


def proxy_limits(gateway: GatewayConfig) -> tuple[tuple[ProxyLimit, ...] | None, ...]:
    """For each route, the rules a proxy counts for it once the authorizer has named each
    rule's bucket (:func:`proxy_limit_keys`); None where it cannot count them all, so
    the authorizer counts every request there itself: a rule per ``ip`` (counted before
    the credential is looked at) or per ``role`` (a bucket per role held), a quota below
    one request a minute, shared counters (``gateway.redis``), or the limits in dry-run
    (their would-deny events come from the gateway); and on each route sharing a rule
    (a gateway-wide one) with such a route, so that a bucket is counted in one place."""
    compiled = _compile(gateway)

    def of(index: int, route: GatewayRoute) -> tuple[ProxyLimit, ...] | None:
        if gateway.redis is not None and compiled[index]:
            return None
        if compiled[index] and route.modes.rate_limits != "enforce":
            return None
        limits = []
        for rule in compiled[index]:
            per_minute = rule.limit * 60 // rule.window
            if rule.per not in ("consumer", "route") or per_minute < 1:
                return None
            limits.append(ProxyLimit(rule.key, rule.name, rule.limit, rule.window, per_minute))
        return tuple(limits)

    planned = [of(index, route) for index, route in enumerate(gateway.routes)]
    # a bucket counted in two places would be two buckets: where the authorizer counts a
    # rule of one route, it counts it (and so every rule) on each route sharing it
    held = {rule.key for i, rules in enumerate(compiled) if planned[i] is None for rule in rules}
    while True:
        shared = [
            i for i, limits in enumerate(planned) if limits and held & {x.zone for x in limits}
        ]
        if not shared:
            return tuple(planned)
        for i in shared:
            planned[i] = None
            held |= {rule.key for rule in compiled[i]}


def proxy_limit_keys(
    rules: Sequence[_Rule], consumer: str | None, roles: Sequence[str], ip: str
) -> list[tuple[str, str]]:
    """Each rule's bucket namespace and the bucket this request counts in there (empty:
    the rule does not apply to it), for a proxy that counts them (:func:`proxy_limits`)."""
    applies = {rule.key: key for rule, key in _buckets(rules, consumer, roles, ip, "all")}
    return [(rule.key, applies.get(rule.key, "")) for rule in rules]


def counts_before_auth(rules: Rules) -> tuple[bool, ...]:
    """For each route, whether a rule of its counts before authentication (a ``per: ip``
    rule without ``roles``): where none does, that stage has nothing to count."""
    return tuple(any(_before_auth(rule) for rule in route) for route in rules)


def _before_auth(rule: _Rule) -> bool:
    """A rule that needs nothing but the client's address: counted before authentication,
    so that failed attempts count too."""
    return rule.per == "ip" and rule.roles is None


def _buckets(
    rules: Sequence[_Rule], consumer: str | None, roles: Sequence[str], ip: str, stage: Stage
) -> list[tuple[_Rule, str]]:
    buckets: list[tuple[_Rule, str]] = []
    for rule in rules:
        if stage != "all" and _before_auth(rule) != (stage == "before_auth"):
            continue
        held: frozenset[str] | None = None
        if rule.roles is not None:
            held = rule.roles.intersection(roles)
            if consumer is None or not held:
                continue
        buckets.extend((rule, key) for key in _rule_keys(rule, consumer, roles, held, ip))
    return buckets


def _rule_keys(
    rule: _Rule,
    consumer: str | None,
    roles: Sequence[str],
    held: frozenset[str] | None,
    ip: str,
) -> list[str]:
    """The buckets one rule counts this request in (none: the rule does not apply)."""
    if rule.per == "route":
        return [rule.key]
    if rule.per == "ip" or (rule.per == "consumer" and consumer is None):
        return [f"{rule.key}.ip.{_digest(address_bucket(ip))}"]
    if rule.per == "consumer" and consumer is not None:
        return [f"{rule.key}.consumer.{_digest(consumer)}"]
    if rule.per == "role" and consumer is not None:
        names = sorted(held if held is not None else set(roles))
        return [f"{rule.key}.role.{_digest(role)}" for role in names]
    return []


async def _each(awaitables: list[Awaitable[_T]]) -> list[_T]:
    if len(awaitables) == 1:
        return [await awaitables[0]]
    return list(await asyncio.gather(*awaitables))


def _seconds(reset_time: float, now: float, window: int) -> int:
    return min(window, max(0, math.ceil(reset_time - now)))


def _admitted(
    kind: StorageKind,
    buckets: list[tuple[_Rule, str]],
    stats: Sequence[WindowStats | Stats],
    now: float,
) -> RateDecision:
    """Admitted: the headers speak of the tightest bucket (least left, latest reset)."""
    tight = min(range(len(stats)), key=lambda i: (stats[i].remaining, -stats[i].reset_time))
    rule, stat = buckets[tight][0], stats[tight]
    fresh = stat.remaining >= rule.limit
    reset = rule.window if fresh else _seconds(stat.reset_time, now, rule.window)
    return RateDecision(
        allowed=True,
        reason=Reason.OK,
        rule=rule.name,
        limit=rule.limit,
        window=rule.window,
        remaining=stat.remaining - 1,
        reset_after=reset,
        retry_after=None,
        storage=kind,
    )


def _refusal(kind: StorageKind, rule: _Rule, stat: WindowStats | Stats, now: float) -> RateDecision:
    reset = max(1, _seconds(stat.reset_time, now, rule.window))
    return RateDecision(
        allowed=False,
        reason=Reason.RATE_LIMITED,
        rule=rule.name,
        limit=rule.limit,
        window=rule.window,
        remaining=0,
        reset_after=reset,
        retry_after=reset,
        storage=kind,
    )


class RateLimiter:
    """Decides requests against a gateway's compiled rate limits; see the module doc."""

    def __init__(
        self,
        rules: tuple[tuple[_Rule, ...], ...],
        *,
        on_storage_change: StorageListener,
        redis: _Counter | None,
        pool: BlockingConnectionPool | None,
        clock: Clock,
        probe_interval: float,
    ) -> None:
        self._rules = rules
        self._notify_listener = on_storage_change
        self._windows = MemoryWindows()
        self._memory_kind: StorageKind = "fallback" if redis else "memory"
        self._redis = redis
        self._pool = pool
        self._clock = clock
        self._probe_interval = probe_interval
        self._redis_up = True
        self._probe_at = 0.0
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls,
        gateway: GatewayConfig,
        *,
        on_storage_change: StorageListener,
        clock: Clock = time.monotonic,
        key_prefix: str = "trustmesh:ratelimit",
        probe_interval: float = 5.0,
        socket_timeout: float = 1.0,
    ) -> RateLimiter:
        """Compile the rules once. ``clock`` (monotonic seconds) paces the Redis probes;
        ``socket_timeout`` bounds each Redis connect and command (no retries), so a dead
        Redis costs a request at most that before the fallback decides it."""
        redis: _Counter | None = None
        pool: BlockingConnectionPool | None = None
        if gateway.redis is not None:
            pool = store_tls.redis_pool(
                gateway.redis,
                BlockingConnectionPool,
                max_connections=_POOL_SIZE,
                timeout=_POOL_WAIT,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            options: dict[str, Any] = {"connection_pool": pool}
            storage = RedisStorage(
                f"async+{gateway.redis}", implementation="redispy", key_prefix=key_prefix, **options
            )
            redis = _Counter.of("redis", storage)
        return cls(
            _compile(gateway),
            on_storage_change=on_storage_change,
            redis=redis,
            pool=pool,
            clock=clock,
            probe_interval=probe_interval,
        )

    async def hit(
        self,
        route_index: int,
        *,
        consumer: str | None,
        roles: Sequence[str],
        ip: str,
        stage: Stage = "all",
        rules: Rules | None = None,
    ) -> RateDecision:
        """Count one request on ``gateway.routes[route_index]`` unless a rule refuses it.
        ``stage``: ``before_auth`` counts only the rules that need nothing but the address
        (``per: ip`` without ``roles``), ``after_auth`` the others, ``all`` every one.
        ``rules``: the declaration's (:func:`compile_rules`) when it is not the one the
        limiter started with (a reloaded pipeline brings its own; counters are shared)."""
        buckets = _buckets((rules or self._rules)[route_index], consumer, roles, ip, stage)
        counter = self._counter()
        if not buckets:
            kind = self._memory_kind if counter is None else counter.kind
            return RateDecision(True, Reason.OK, "", 0, 0, 0, 0, None, kind)  # no rule
        if counter is None:
            return self._decide_in_memory(buckets)
        try:
            return await self._decide(counter, buckets)
        except _STORAGE_ERRORS as exc:
            self._lost(exc)
            return self._decide_in_memory(buckets)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._pool is not None:
            await self._pool.aclose()

    async def _decide(self, counter: _Counter, buckets: list[tuple[_Rule, str]]) -> RateDecision:
        stats = await _each([counter.stats(rule, key) for rule, key in buckets])
        now = time.time()  # the clock `limits` stamps its windows with
        full = [i for i, s in enumerate(stats) if s.remaining < 1]
        if full:
            worst = max(full, key=lambda i: stats[i].reset_time)
            return _refusal(counter.kind, buckets[worst][0], stats[worst], now)
        hits = await _each([counter.hit(rule, key) for rule, key in buckets])
        if not all(hits):  # a concurrent request took the last unit
            rule, key = buckets[hits.index(False)]
            return _refusal(counter.kind, rule, await counter.stats(rule, key), time.time())
        return _admitted(counter.kind, buckets, stats, now)

    def _decide_in_memory(self, buckets: list[tuple[_Rule, str]]) -> RateDecision:
        """The same decision on the in-memory windows, with no await in between: nothing
        can take a unit between the look and the hit."""
        windows, now = self._windows, time.time()
        stats = [
            (windows.moving_stats if rule.moving else windows.sliding_stats)(
                key, rule.limit, rule.window, now
            )
            for rule, key in buckets
        ]
        full = [i for i, s in enumerate(stats) if s.remaining < 1]
        if full:
            worst = max(full, key=lambda i: stats[i].reset_time)
            return _refusal(self._memory_kind, buckets[worst][0], stats[worst], now)
        for rule, key in buckets:
            hit = windows.moving_hit if rule.moving else windows.sliding_hit
            hit(key, rule.limit, rule.window, now)
        return _admitted(self._memory_kind, buckets, stats, now)

    def _counter(self) -> _Counter | None:
        """Redis while it answers; None: the in-memory windows."""
        if self._redis is None:
            return None
        if self._redis_up:
            return self._redis
        if self._probe is None and self._clock() >= self._probe_at:
            # not the request's context: its trace is not this probe's
            self._probe = asyncio.create_task(self._check(self._redis), context=Context())
        return None

    def _lost(self, exc: BaseException) -> None:
        if not self._redis_up:
            return  # this outage was already told
        self._redis_up = False
        self._probe_at = self._clock() + self._probe_interval
        self._tell(
            False,
            f"redis unreachable ({type(exc).__name__}: {exc}); limiting in memory on this instance",
        )

    async def _check(self, redis: _Counter) -> None:
        try:
            if self._pool is not None:
                # the pool's connections are to the server that failed: were one taken up
                # again (the server restarted), its first command would fail and tell
                # another outage. Each is opened afresh when next used.
                await self._pool.disconnect()
            if await redis.storage.check():  # PING, within the socket timeout
                self._redis_up = True
                self._tell(True, "redis reachable again; counters shared again")
            else:
                self._probe_at = self._clock() + self._probe_interval
        finally:
            self._probe = None

    def _tell(self, ok: bool, detail: str) -> None:
        (log.info if ok else log.warning)("rate limit storage: %s", detail)
        try:
            self._notify_listener(ok, detail)
        except Exception:  # a listener's failure must not decide the request
            log.exception("rate limit storage listener failed")
