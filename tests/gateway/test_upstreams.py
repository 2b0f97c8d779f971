"""The upstream pool, live: instances of a service served by the SDK (mTLS, the zero-trust
middleware) and registered with the identity service's discovery; the pool looks them up
with the gateway's SVID and balances, retries, times out, ejects and health-checks them.
The ejection clock is a test clock; nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.config.gateway import UpstreamSettings
from trustmesh.errors import UnavailableError
from trustmesh.gateway.upstreams import REFRESH_SECONDS, UpstreamPool, UpstreamTimeoutError
from trustmesh.platform.listeners import Served, start
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.sdk.discovery import DiscoveryClient, Endpoint
from trustmesh.sdk.middleware import ZeroTrustMiddleware
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import FakeClock, RunningIdentityServer, identity_server_in_thread

TD = "pool.example"
ORDERS = f"spiffe://{TD}/orders"
INVENTORY = f"spiffe://{TD}/inventory"
GATEWAY = f"spiffe://{TD}/trustmesh/gateway"
CONFIG_TEXT = f"""
trust_domain: {TD}
dev: true
identity: {{svid_ttl: 1h}}
services:
  orders: {{external: true}}
  inventory: {{external: true}}
gateway:
  routes:
    - {{path: /orders, to: orders, methods: [GET, POST, PUT, PATCH, DELETE], auth: [anonymous]}}
"""
CONFIG: TrustmeshConfig = parse_config(CONFIG_TEXT, source="test.yaml")


class Behaviour:
    """One instance's app: answers ``ok``, ``503`` (it cannot serve), ``500`` (the app's
    own error) or hangs; can hold requests open."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.hold = False
        self.hits: Counter[str] = Counter()
        self.held = 0
        self.release = asyncio.Event()

    async def handle(self, request: Request) -> Response:
        self.hits[request.method] += 1
        if self.mode == "hang" or self.hold:
            self.held += 1
            await self.release.wait()
        if self.mode == "503":
            return JSONResponse({"error": "boom"}, status_code=503)
        if self.mode == "500":
            return JSONResponse({"error": "bad input"}, status_code=500)
        return JSONResponse({"instance": self.name})

    @property
    def total(self) -> int:
        return sum(self.hits.values())


@dataclass
class Instance:
    behaviour: Behaviour
    source: X509Source
    sink: events.MemorySink
    registration: DiscoveryClient
    served: Served | None = None
    port: int = 0
    closed: bool = False

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def deregister(self) -> None:
        """Leave discovery (when registered) and close the discovery client."""
        if not self.closed:
            self.closed = True
            await self.registration.close()

    async def stop(self) -> None:
        self.behaviour.release.set()
        if self.served is not None:
            await self.served.stop()
            self.served = None

    async def restart(self) -> None:
        self.behaviour.release = asyncio.Event()
        self.served = await start(
            _app(self.behaviour, self.sink), source=self.source, port=self.port
        )


def _app(behaviour: Behaviour, sink: events.MemorySink) -> ZeroTrustMiddleware:
    app = Starlette(
        routes=[
            Route(
                "/orders/{rest:path}",
                behaviour.handle,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            )
        ]
    )
    return ZeroTrustMiddleware(app, authorizer=CallAuthorizer(CONFIG, "orders"), sink=sink)


@dataclass
class Rig:
    identity: RunningIdentityServer
    discovery_url: str
    tls: RotatingTLS
    clock: FakeClock = field(default_factory=FakeClock)
    changes: list[tuple[str, str, str, str]] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    pools: list[UpstreamPool] = field(default_factory=list)

    async def instance(self, name: str, spiffe_id: str = ORDERS) -> Instance:
        behaviour = Behaviour(name)
        source = X509Source(self.identity.address, spiffe_id=spiffe_id)
        sink = events.MemorySink()
        served = await start(_app(behaviour, sink), source=source)
        registration = DiscoveryClient(served.tls, self.discovery_url)
        instance = Instance(behaviour, source, sink, registration, served, served.port)
        self.instances.append(instance)
        if spiffe_id == ORDERS:
            await registration.register(instance.url)
        return instance

    def pool(self, discovery: Any = None, **settings: Any) -> UpstreamPool:
        config = {
            "balance": "round_robin",
            "retries": 0,
            "outlier": {"consecutive_failures": 100},
            **settings,
        }
        pool = UpstreamPool(
            self.tls,
            discovery or DiscoveryClient(self.tls, self.discovery_url),
            UpstreamSettings.model_validate(config),
            on_change=lambda *change: self.changes.append(change),
            clock=self.clock.monotonic,
        )
        self.pools.append(pool)
        return pool


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    with identity_server_in_thread(CONFIG, short_tmp / "identity", discovery=True) as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (ORDERS, INVENTORY, GATEWAY):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


@pytest.fixture
async def rig(identity: RunningIdentityServer) -> AsyncIterator[Rig]:
    assert identity.server.discovery is not None
    source = X509Source(identity.address, spiffe_id=GATEWAY)
    await source.start()
    rig = Rig(identity, f"https://127.0.0.1:{identity.server.discovery.port}", RotatingTLS(source))
    try:
        yield rig
    finally:
        for instance in rig.instances:
            instance.behaviour.release.set()
        for pool in rig.pools:  # clients first, then the servers they talk to
            await pool.close()
            if isinstance(pool.discovery, DiscoveryClient):
                await pool.discovery.close()
        for instance in rig.instances:
            await instance.deregister()
            await instance.stop()
            await instance.source.close()
        await source.close()


async def _get(pool: UpstreamPool, method: str = "GET", timeout: float = 10.0) -> Any:
    return await pool.forward("orders", method, "/orders/1", [], b"", timeout=timeout)


async def test_round_robin_spreads_over_the_instances_from_discovery(rig: Rig) -> None:
    a, b = await rig.instance("a"), await rig.instance("b")
    pool = rig.pool()
    answers = [(await _get(pool)).json()["instance"] for _ in range(6)]
    assert Counter(answers) == {"a": 3, "b": 3}
    assert a.behaviour.total == b.behaviour.total == 3
    assert {i["url"] for i in pool.snapshot()["orders"]} == {a.url, b.url}
    assert all(i["spiffe_id"] == ORDERS for i in pool.snapshot()["orders"])


async def test_a_failing_instance_is_ejected_then_restored_after_its_time(rig: Rig) -> None:
    await rig.instance("a")
    b = await rig.instance("b")
    b.behaviour.mode = "503"
    pool = rig.pool(outlier={"consecutive_failures": 2, "ejection": "10s", "max_ejection": "1m"})
    statuses = Counter([(await _get(pool)).status for _ in range(4)])
    assert statuses == {200: 2, 503: 2}  # retries: 0, so b's 503s reach the caller
    assert [c[2] for c in rig.changes] == ["ejected"]
    assert rig.changes[0][:2] == ("orders", b.url)
    (ejected,) = [i for i in pool.snapshot()["orders"] if i["ejected_until"] is not None]
    assert ejected["url"] == b.url
    assert ejected["ejected_until"] == rig.clock.monotonic() + 10

    hits = b.behaviour.total
    assert [(await _get(pool)).status for _ in range(4)] == [200] * 4
    assert b.behaviour.total == hits  # out of rotation

    rig.clock.advance(10)
    b.behaviour.mode = "ok"
    answers = Counter([(await _get(pool)).json()["instance"] for _ in range(4)])
    assert answers == {"a": 2, "b": 2}
    assert [c[2] for c in rig.changes] == ["ejected", "restored"]


async def test_an_application_error_ejects_nothing_and_is_not_retried(rig: Rig) -> None:
    """A 500 is the application's answer to this request (a caller can provoke one with
    bad input): relayed as it is, never counted against the instance, never retried, so
    no caller can take a service out of rotation by sending such requests."""
    a, b = await rig.instance("a"), await rig.instance("b")
    a.behaviour.mode = b.behaviour.mode = "500"
    pool = rig.pool(
        retries=1, outlier={"consecutive_failures": 1, "ejection": "10s", "max_ejection": "1m"}
    )
    assert [(await _get(pool)).status for _ in range(5)] == [500] * 5
    assert a.behaviour.total + b.behaviour.total == 5  # one call each: no retry
    assert rig.changes == []
    assert all(i["ejected_until"] is None for i in pool.snapshot()["orders"])


async def test_a_restored_instance_that_fails_again_is_out_for_twice_as_long(rig: Rig) -> None:
    await rig.instance("a")
    b = await rig.instance("b")
    b.behaviour.mode = "503"
    pool = rig.pool(outlier={"consecutive_failures": 2, "ejection": "10s", "max_ejection": "15s"})
    for _ in range(4):
        await _get(pool)
    rig.clock.advance(10)
    for _ in range(2):  # restored on probation: its first failure ejects it again
        await _get(pool)
    assert [c[2] for c in rig.changes] == ["ejected", "restored", "ejected"]
    (ejected,) = [i for i in pool.snapshot()["orders"] if i["ejected_until"] is not None]
    assert ejected["ejected_until"] == rig.clock.monotonic() + 15  # 20s, capped at max_ejection


async def test_get_is_retried_on_another_instance_and_post_never(rig: Rig) -> None:
    a, b = await rig.instance("a"), await rig.instance("b")
    b.behaviour.mode = "503"
    pool = rig.pool(retries=1)
    assert [(await _get(pool)).status for _ in range(4)] == [200] * 4
    assert b.behaviour.hits["GET"] >= 1  # each GET that b failed …
    assert a.behaviour.hits["GET"] == 4  # … was retried on a: every GET ended there once
    statuses = Counter([(await _get(pool, "POST")).status for _ in range(4)])
    assert statuses == {200: 2, 503: 2}
    assert a.behaviour.hits["POST"] == b.behaviour.hits["POST"] == 2
    for method in ("PATCH", "PUT", "DELETE"):
        before = a.behaviour.hits[method]
        outcomes = [(await _get(pool, method)).status for _ in range(2)]
        if method == "PATCH":
            assert sorted(outcomes) == [200, 503]
            assert a.behaviour.hits[method] == before + 1
        else:
            assert outcomes == [200, 200]


async def test_a_stopped_instance_costs_a_get_nothing_and_a_post_an_error(rig: Rig) -> None:
    a, b = await rig.instance("a"), await rig.instance("b")
    pool = rig.pool(retries=1)
    await _get(pool)  # both known
    await b.stop()
    assert [(await _get(pool)).json()["instance"] for _ in range(4)] == ["a"] * 4
    errors = 0
    for _ in range(4):
        try:
            await _get(pool, "POST")
        except UnavailableError:
            errors += 1
    assert errors == 2
    assert a.behaviour.hits["POST"] == 2


async def test_retries_stop_when_no_other_instance_is_left(rig: Rig) -> None:
    a = await rig.instance("a")
    a.behaviour.mode = "503"
    pool = rig.pool(retries=3)
    assert (await _get(pool)).status == 503
    assert a.behaviour.hits["GET"] == 1  # never twice on the same instance


async def test_a_hanging_instance_times_out_and_is_charged(rig: Rig) -> None:
    a = await rig.instance("a")
    a.behaviour.mode = "hang"
    pool = rig.pool(outlier={"consecutive_failures": 1, "max_ejected_percent": 0})
    with pytest.raises(UpstreamTimeoutError) as caught:
        await _get(pool, timeout=0.3)
    assert caught.value.status == 504
    # the only instance failed: ejected (every instance is failing), so the next call is
    # refused at once, without a request on the wire
    assert [c[2] for c in rig.changes] == ["ejected"]
    with pytest.raises(UnavailableError):
        await _get(pool, timeout=30)
    assert a.behaviour.hits["GET"] == 1


async def test_no_healthy_instance_means_unavailable_without_a_request(rig: Rig) -> None:
    a, b = await rig.instance("a"), await rig.instance("b")
    a.behaviour.mode = b.behaviour.mode = "503"
    pool = rig.pool(outlier={"consecutive_failures": 1, "max_ejected_percent": 50})
    await _get(pool)
    await _get(pool)
    assert sorted(c[2] for c in rig.changes) == ["ejected", "ejected"]
    hits = a.behaviour.total + b.behaviour.total
    for method in ("GET", "POST"):
        with pytest.raises(UnavailableError, match="no healthy instance"):
            await _get(pool, method)
    assert a.behaviour.total + b.behaviour.total == hits


async def test_least_requests_sends_to_the_less_loaded_instance(rig: Rig) -> None:
    a, b = await rig.instance("a"), await rig.instance("b")
    pool = rig.pool(balance="least_requests")
    a.behaviour.hold = b.behaviour.hold = True
    held = asyncio.create_task(_get(pool))
    while a.behaviour.held + b.behaviour.held == 0:
        await asyncio.sleep(0.01)
    busy, idle = (a, b) if a.behaviour.held else (b, a)
    busy.behaviour.hold = idle.behaviour.hold = False
    assert [i["active"] for i in pool.snapshot()["orders"] if i["url"] == busy.url] == [1]
    answers = {(await _get(pool)).json()["instance"] for _ in range(6)}
    assert answers == {idle.behaviour.name}
    busy.behaviour.release.set()
    assert (await held).json()["instance"] == busy.behaviour.name
    assert all(i["active"] == 0 for i in pool.snapshot()["orders"])


async def test_health_checks_mark_a_dead_instance_unhealthy_and_back(rig: Rig) -> None:
    a, b = await rig.instance("a"), await rig.instance("b")
    pool = rig.pool(health_check={"unhealthy_after": 2, "healthy_after": 1, "timeout": "2s"})
    await _get(pool)
    seen = len(a.sink.events)
    await pool.check_now()
    assert rig.changes == []  # both passed: the probe needs neither token nor policy …
    assert len(a.sink.events) == seen  # … and leaves no event

    await b.stop()
    await pool.check_now()
    assert rig.changes == []  # one failure is not yet two in a row
    await pool.check_now()
    assert [c[:3] for c in rig.changes] == [("orders", b.url, "unhealthy")]
    assert [i["healthy"] for i in pool.snapshot()["orders"] if i["url"] == b.url] == [False]
    assert {(await _get(pool)).json()["instance"] for _ in range(4)} == {"a"}

    await b.restart()
    await pool.check_now()
    assert [c[2] for c in rig.changes] == ["unhealthy", "healthy"]
    assert {(await _get(pool)).json()["instance"] for _ in range(4)} == {"a", "b"}


async def test_the_health_task_runs_on_its_own(rig: Rig) -> None:
    await rig.instance("a")
    b = await rig.instance("b")
    pool = rig.pool(health_check={"interval": "1s", "unhealthy_after": 1, "timeout": "1s"})
    await _get(pool)
    # stopped before the task starts: a probe arriving while b shuts down kept it in its
    # graceful shutdown (answered on the open connection) past the wait, on a loaded CI
    await b.stop()
    await pool.start()
    deadline = time.monotonic() + 30  # a correctness wait, not a timing assertion
    while not rig.changes and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [c[:3] for c in rig.changes] == [("orders", b.url, "unhealthy")]


async def test_endpoints_follow_discovery(rig: Rig) -> None:
    a = await rig.instance("a")
    pool = rig.pool()
    assert (await _get(pool)).json()["instance"] == "a"
    b = await rig.instance("b")
    assert {(await _get(pool)).json()["instance"] for _ in range(3)} == {"a"}  # cached
    rig.clock.advance(REFRESH_SECONDS)
    await pool.refresh("orders")
    assert {(await _get(pool)).json()["instance"] for _ in range(4)} == {"a", "b"}
    await a.deregister()
    await pool.refresh("orders")
    assert [i["url"] for i in pool.snapshot()["orders"]] == [b.url]
    assert {(await _get(pool)).json()["instance"] for _ in range(3)} == {"b"}


async def test_a_service_the_gateway_may_not_call_is_unavailable(rig: Rig) -> None:
    pool = rig.pool()
    with pytest.raises(UnavailableError, match="discovery lists no inventory"):
        await pool.forward("inventory", "GET", "/", [], b"", timeout=5)


class StaticDiscovery:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints

    async def lookup(self, service: str) -> list[Endpoint]:
        return self.endpoints


async def test_an_instance_with_another_spiffe_id_gets_nothing(rig: Rig) -> None:
    """An endpoint listed for orders whose server presents inventory's SVID: refused
    after the handshake, before a byte of the request; the other instance answers."""
    a = await rig.instance("a")
    impostor = await rig.instance("impostor", spiffe_id=INVENTORY)
    listed = [Endpoint(impostor.url, ORDERS), Endpoint(a.url, ORDERS)]
    pool = rig.pool(StaticDiscovery(listed), retries=1)
    assert {(await _get(pool)).json()["instance"] for _ in range(4)} == {"a"}
    outcomes = []
    for _ in range(2):  # round robin: one of two POSTs is the impostor's turn
        try:
            outcomes.append((await _get(pool, "POST")).json()["instance"])
        except UnavailableError as exc:
            outcomes.append(exc.detail)
    assert "a" in outcomes
    (refused,) = [o for o in outcomes if o != "a"]
    assert f"is {INVENTORY}, expected {ORDERS}" in refused
    assert impostor.behaviour.total == 0
