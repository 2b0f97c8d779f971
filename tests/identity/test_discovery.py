"""Secure service discovery over mTLS: an instance registers as itself, a caller learns
only the services it may call, and leases end."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.errors import NotFoundError, UnavailableError
from trustmesh.events import read_events
from trustmesh.identity.discovery import LEASE, Registry
from trustmesh.reasons import Reason
from trustmesh.sdk.discovery import DiscoveryClient, Endpoint
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import FakeClock, RunningIdentityServer, identity_server_in_thread

TD = "disco.example"
YAML = f"""
trust_domain: {TD}
dev: true
identity: {{svid_ttl: 10m, max_svid_ttl: 1h}}
services:
  orders: {{run: "shop.orders:app"}}
  payments: {{run: "shop.payments:app"}}
  inventory: {{run: "shop.inventory:app"}}
calls:
  - {{from: orders, to: payments, allow: ["POST /charges"]}}
  - {{from: orders, to: inventory, allow: ["GET /items/{{id}}"]}}
"""
CONFIG = parse_config(YAML, source="test.yaml")


def sid(name: str) -> str:
    return f"spiffe://{TD}/{name}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def identity(short_tmp: Path, clock: FakeClock) -> Iterator[RunningIdentityServer]:
    with identity_server_in_thread(
        CONFIG, short_tmp / "state", discovery=True, clock=clock, tick_interval=3600
    ) as running:
        exe = os.readlink("/proc/self/exe")
        for name in ("orders", "payments", "inventory", "batch"):
            running.call(
                running.server.service.register,
                sid(name),
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


class As:
    """A discovery client speaking as one workload."""

    def __init__(self, identity: RunningIdentityServer, name: str) -> None:
        self.source = X509Source(identity.address, spiffe_id=sid(name))
        self.url = identity.server.discovery_url

    async def __aenter__(self) -> DiscoveryClient:
        await self.source.start()
        self.client = DiscoveryClient(RotatingTLS(self.source), self.url)
        return self.client

    async def __aexit__(self, *_: object) -> None:
        await self.client.close()
        await self.source.close()


@pytest.fixture
async def payments_registered(identity: RunningIdentityServer) -> AsyncIterator[None]:
    async with As(identity, "payments") as payments:
        await payments.register("https://127.0.0.1:9443")
        yield


async def test_a_caller_finds_what_it_may_call(
    identity: RunningIdentityServer, payments_registered: None
) -> None:
    async with As(identity, "orders") as orders:
        assert await orders.lookup("payments") == [
            Endpoint("https://127.0.0.1:9443", sid("payments"))
        ]
        assert await orders.lookup("inventory") == []  # allowed, nobody registered yet
    lookups = [
        e
        for e in read_events(identity.server.paths.events)
        if e["status_detail"] == Reason.DISCOVERY_LOOKUP
    ]
    assert [
        (t["decision"], t["peer_spiffe_id"], t["attributes"]["service"])
        for t in (e["unmapped"]["trustmesh"] for e in lookups)
    ] == [("allow", sid("orders"), "payments"), ("allow", sid("orders"), "inventory")]


async def test_discovery_never_reveals_a_service_the_caller_may_not_call(
    identity: RunningIdentityServer, payments_registered: None
) -> None:
    async with As(identity, "inventory") as inventory:
        with pytest.raises(NotFoundError) as hidden:
            await inventory.lookup("payments")  # exists, but not inventory's to call
        with pytest.raises(NotFoundError) as unknown:
            await inventory.lookup("nonexistent")
        assert str(hidden.value).replace("payments", "X") == str(unknown.value).replace(
            "nonexistent", "X"
        )
    async with As(identity, "payments") as payments:
        with pytest.raises(NotFoundError):
            await payments.lookup("orders")
    reasons = [e["status_detail"] for e in read_events(identity.server.paths.events)]
    assert reasons.count("discovery-refused") == 3


async def test_an_undeclared_workload_cannot_register(identity: RunningIdentityServer) -> None:
    async with As(identity, "batch") as batch:
        with pytest.raises(UnavailableError, match="refused"):
            await batch.register("https://127.0.0.1:9000")


async def test_registration_takes_only_an_https_origin(identity: RunningIdentityServer) -> None:
    async with As(identity, "payments") as payments:
        for bad in ("http://127.0.0.1:9443", "https://127.0.0.1", "https://127.0.0.1:9/x"):
            with pytest.raises(UnavailableError):
                await payments.register(bad)


async def test_an_instance_that_stops_renewing_vanishes(
    identity: RunningIdentityServer, payments_registered: None, clock: FakeClock
) -> None:
    async with As(identity, "orders") as orders:
        assert len(await orders.lookup("payments")) == 1
        clock.advance(LEASE + dt.timedelta(seconds=1))
        assert await orders.lookup("payments") == []


def test_a_registry_started_again_takes_back_the_leases_still_running() -> None:
    """What the last run granted (its snapshot) is taken back for what is left of each
    lease: a live one, not a stale or ended one, nor one of a service no longer declared
    or under another service's name, nor anything that is not an entry."""
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    before = Registry(CONFIG)
    before.register(sid("payments"), "https://10.0.0.1:1", now)
    before.register(sid("inventory"), "https://10.0.0.2:2", now - LEASE / 2)
    before.register(sid("orders"), "https://10.0.0.3:3", now - LEASE * 2)  # ended
    listed: list[object] = list(before.snapshot(now))
    payments = next(e for e in before.snapshot(now) if e["service"] == "payments")
    listed.append(
        {**payments, "service": "inventory", "url": "https://10.0.0.8:8"}
    )  # not its SVID's
    listed.append({**payments, "spiffe_id": sid("intruder"), "url": "https://10.0.0.9:9"})
    listed.append("not an entry")
    later = now + dt.timedelta(seconds=1)
    again = Registry(CONFIG)
    assert again.restore(listed, later) == 2
    assert {i.url: i.expires_at for i in again.instances.values()} == {
        "https://10.0.0.1:1": now + LEASE,  # what is left of each lease, not a new one
        "https://10.0.0.2:2": now + LEASE / 2,
    }
    assert again.restore("not a list", later) == 0


def test_registry_lease_and_snapshot() -> None:
    config: TrustmeshConfig = CONFIG
    registry = Registry(config)
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    registry.register(sid("payments"), "https://10.0.0.1:1", now)
    assert registry.snapshot(now)[0]["stale"] is False
    later = now + LEASE
    assert registry.snapshot(later)[0]["stale"] is True
    assert registry.expire(later, grace=LEASE) == []
    assert len(registry.expire(later + LEASE)) == 1
    assert registry.instances == {}
