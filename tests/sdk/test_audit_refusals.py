"""A 4xx from the collector never holds a producer's spool forever, and loses nothing:
live, over mTLS on 127.0.0.1, against a server with the collector's SVID that refuses
as told. Events it refuses (400) are split out of their batch and kept in the
dead-letter file, counted and told with an events-dropped event, the rest delivered in
order; a 403 is retried with the back-off until it passes; a collector that refuses
everything gets nothing dead-lettered — the spool keeps it all."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from deliveryrig import AUDIT, PAYMENTS, collector_config, identity_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk.collector import Backoff, CollectorClient
from trustmesh.sdk.delivery import DEAD_LETTER, AuditSink
from trustmesh.sdk.serve import start
from trustmesh.sdk.spool import Spool
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer, until_async


class Refusing:
    """A collector's ``POST /v1/events`` that stores what it takes, in order, and
    answers ``refuse(events)`` (a status) instead when that says so."""

    def __init__(self) -> None:
        self.taken: list[dict[str, Any]] = []
        self.requests = 0
        self.status_for: Any = lambda _events: None

    async def deliver(self, request: Request) -> Response:
        self.requests += 1
        batch = json.loads(await request.body())["events"]
        status = self.status_for(batch)
        if status is not None:
            return JSONResponse({"error": "refused"}, status_code=status)
        self.taken += batch
        return JSONResponse({"stored": len(batch), "duplicates": 0, "quarantined": 0})


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(collector_config(), short_tmp / "identity")


@contextlib.asynccontextmanager
async def refusing_collector(
    identity: RunningIdentityServer,
) -> AsyncIterator[tuple[Refusing, int]]:
    refusing = Refusing()
    app = Starlette(routes=[Route("/v1/events", refusing.deliver, methods=["POST"])])
    source = X509Source(identity.address, spiffe_id=AUDIT)
    served = await start(app, source=source)
    try:
        yield refusing, served.port
    finally:
        await served.stop()


@pytest.fixture
async def payments(identity: RunningIdentityServer) -> AsyncIterator[X509Source]:
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    await source.start()
    try:
        yield source
    finally:
        await source.close()


def _sink(source: X509Source, spool: Path, port: int) -> AuditSink:
    client = CollectorClient(f"https://127.0.0.1:{port}", source, AUDIT, timeout=5.0)
    return AuditSink(
        Spool(spool, 1 << 24),
        client,
        component="payments",
        spiffe_id=PAYMENTS,
        backoff=Backoff(initial=0.02, maximum=0.1),
    )


def _emit(sink: AuditSink, count: int, poison: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    recorder = events.Recorder(sink, component="payments", spiffe_id=PAYMENTS)
    for n in range(count):
        attributes: dict[str, events.AttributeValue] = {"n": n}
        if n in poison:
            attributes["poison"] = True
        recorder.record(Reason.POLICY_ALLOW, "call allowed", attributes=attributes)


def _numbers(taken: list[dict[str, Any]]) -> list[int]:
    return [
        e["unmapped"]["trustmesh"]["attributes"]["n"]
        for e in taken
        if "n" in e["unmapped"]["trustmesh"].get("attributes", {})
    ]


async def test_refused_events_are_dead_lettered_and_the_rest_delivered_in_order(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path
) -> None:
    async with refusing_collector(identity) as (collector, port):
        collector.status_for = lambda batch: (
            400
            if any(e["unmapped"]["trustmesh"]["attributes"].get("poison") for e in batch)
            else None
        )
        sink = _sink(payments, short_tmp / "spool", port)
        try:
            _emit(sink, 300, poison={7, 150})
            assert await asyncio.to_thread(sink.flush, 20.0)
            stats = sink.stats()
            assert (stats.dead_lettered, stats.spooled) == (2, 0)
            # the 298 taken, and the drop notices once they are sent (after the flush, maybe)
            assert stats.delivered >= 298
        finally:
            await asyncio.to_thread(sink.close, 5.0)
    assert _numbers(collector.taken) == [n for n in range(300) if n not in (7, 150)]
    lines = (short_tmp / "spool" / DEAD_LETTER).read_bytes().splitlines()
    kept = [json.loads(line) for line in lines]
    assert [k["event"]["unmapped"]["trustmesh"]["attributes"]["n"] for k in kept] == [7, 150]
    assert {k["status"] for k in kept} == {400}
    assert (short_tmp / "spool" / DEAD_LETTER).stat().st_mode & 0o777 == 0o600
    notices = [
        e
        for e in collector.taken
        if e["unmapped"]["trustmesh"].get("reason") == Activity.EVENTS_DROPPED.value
    ]
    assert sum(n["unmapped"]["trustmesh"]["attributes"]["refused"] for n in notices) == 2
    assert collector.requests < 60  # a split, not an event a request


async def test_many_refused_events_at_the_head_of_a_batch_do_not_hold_the_spool(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path
) -> None:
    """The split reaches every event alone if it must (2n - 1 requests): 40 refused events
    before the first good one still let the good ones through."""
    async with refusing_collector(identity) as (collector, port):
        collector.status_for = lambda batch: (
            400
            if any(e["unmapped"]["trustmesh"]["attributes"].get("poison") for e in batch)
            else None
        )
        sink = _sink(payments, short_tmp / "spool", port)
        try:
            _emit(sink, 100, poison=set(range(40)))
            assert await asyncio.to_thread(sink.flush, 30.0)
            stats = sink.stats()
            assert (stats.dead_lettered, stats.spooled) == (40, 0)
        finally:
            await asyncio.to_thread(sink.close, 5.0)
    assert _numbers(collector.taken) == list(range(40, 100))


async def test_a_403_is_retried_with_the_backoff_until_it_passes(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path
) -> None:
    async with refusing_collector(identity) as (collector, port):
        refused = 0

        def forbidden_at_first(_batch: list[Any]) -> int | None:
            nonlocal refused
            if refused < 5:  # an authorization being changed
                refused += 1
                return 403
            return None

        collector.status_for = forbidden_at_first
        sink = _sink(payments, short_tmp / "spool", port)
        try:
            _emit(sink, 50)
            assert await asyncio.to_thread(sink.flush, 20.0)
            stats = sink.stats()
            assert (stats.delivered, stats.dead_lettered, stats.failures) == (50, 0, 5)
        finally:
            await asyncio.to_thread(sink.close, 5.0)
    assert _numbers(collector.taken) == list(range(50))
    assert not (short_tmp / "spool" / DEAD_LETTER).exists()


async def test_a_collector_that_refuses_everything_gets_nothing_dead_lettered(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path
) -> None:
    async with refusing_collector(identity) as (collector, port):
        collector.status_for = lambda _batch: 400
        sink = _sink(payments, short_tmp / "spool", port)
        try:
            _emit(sink, 40)
            await until_async(
                lambda: sink.stats().failures >= 3, "the failures counted", within=15, every=0.02
            )
            stats = sink.stats()
            assert (stats.delivered, stats.dead_lettered, stats.spooled) == (0, 0, 40)
            assert not (short_tmp / "spool" / DEAD_LETTER).exists()
            collector.status_for = lambda _batch: None  # fixed: everything goes, in order
            assert await asyncio.to_thread(sink.flush, 20.0)
        finally:
            await asyncio.to_thread(sink.close, 5.0)
    assert _numbers(collector.taken) == list(range(40))
