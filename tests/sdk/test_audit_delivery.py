"""Delivery to the audit collector over mTLS: in order; nothing lost or doubled while the
collector is killed (SIGKILL) and restarted; a full spool blocks or drops as declared,
and drops are told to the collector, which alerts; the client checks who the collector
is; the back-off; the sink ``trustmesh up`` asks for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import spiffe_http
from deliveryrig import (
    AUDIT,
    OPERATOR,
    PAYMENTS,
    Caller,
    CollectorProcess,
    CollectorRig,
    collector_config,
    collector_rig,
    emit_numbered,
    free_port,
    identity_for,
    numbers,
    producer,
    stored,
)

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UnavailableError
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk.collector import (
    Backoff,
    BatchTooLargeError,
    CollectorClient,
    CollectorUnavailableError,
)
from trustmesh.sdk.delivery import AUDIT_URL_ENV, NO_COLLECTOR, audit_sink_from_env
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def config() -> TrustmeshConfig:
    return collector_config()


@pytest.fixture
def identity(short_tmp: Path, config: TrustmeshConfig) -> Iterator[RunningIdentityServer]:
    yield from identity_for(config, short_tmp / "identity")


@pytest.fixture
async def payments(identity: RunningIdentityServer) -> AsyncIterator[X509Source]:
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    await source.start()
    try:
        yield source
    finally:
        await source.close()


@contextlib.asynccontextmanager
async def rig_on(
    identity: RunningIdentityServer, state: Path, config: TrustmeshConfig, port: int
) -> AsyncIterator[CollectorRig]:
    async with collector_rig(identity, state, config, port=port) as rig:
        yield rig


async def test_events_are_delivered_in_order_and_acknowledged(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path, config: TrustmeshConfig
) -> None:
    port = free_port()
    async with rig_on(identity, short_tmp / "c", config, port) as rig:
        sink = producer(payments, short_tmp / "spool", port, batch=100)
        await asyncio.to_thread(emit_numbered, sink, 0, 1000)
        assert await asyncio.to_thread(sink.flush, 20.0)
        stats = await asyncio.to_thread(sink.close, 5.0)
        assert (stats.delivered, stats.spooled, stats.queued, stats.dropped) == (1000, 0, 0, 0)
        found = await stored(rig.operator)
    assert numbers(found) == list(range(1000))
    delivered = [e for e in found if e["actor"]["app_name"] == "payments"]
    assert {e["unmapped"]["trustmesh"]["reporter"] for e in delivered} == {PAYMENTS}


async def test_ten_thousand_events_survive_two_killed_collectors(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path
) -> None:
    """Issue 16's acceptance: the collector is killed with SIGKILL and restarted twice
    while 10,000 events are emitted; all are stored exactly once, in the producer's order."""
    port = free_port()
    collector = CollectorProcess(short_tmp / "c", identity.address, port)
    await collector.start()
    sink = producer(payments, short_tmp / "spool", port)
    try:
        for part in range(10):
            start = part * 1000
            if part in (2, 6):
                await asyncio.to_thread(emit_numbered, sink, start, 500)
                await asyncio.sleep(0.05)  # some in flight, some spooled, some delivered
                collector.kill()
                # emitted while it is down: spooled, their deliveries refused
                await asyncio.to_thread(emit_numbered, sink, start + 500, 500)
                await asyncio.sleep(0.3)
                await collector.start()
            else:
                await asyncio.to_thread(emit_numbered, sink, start, 1000)
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(sink.flush, 25.0), sink.stats()
        stats = await asyncio.to_thread(sink.close, 5.0)
        assert stats.failures > 0  # the kills were felt
        operator = await spiffe_http.workload(
            identity.address, OPERATOR, short_tmp / "pki", spiffe_http.Workload
        )
        try:
            found = await stored(Caller(operator, f"https://127.0.0.1:{port}"))
        finally:
            await operator.source.close()
    finally:
        collector.stop()
    assert numbers(found) == list(range(10_000))  # each once, in order


def _emit_in_thread(sink_emit: object, done: threading.Event) -> threading.Thread:
    def run() -> None:
        emit_numbered(sink_emit, 0, 200)  # type: ignore[arg-type]
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_a_full_spool_blocks_the_producer_until_the_collector_is_back(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path, config: TrustmeshConfig
) -> None:
    port = free_port()  # nothing listens yet
    sink = producer(
        payments, short_tmp / "spool", port, max_bytes=40 * 1024, max_queue=20, batch=10
    )
    done = threading.Event()
    thread = _emit_in_thread(sink, done)
    await asyncio.sleep(1.0)
    assert not done.is_set()  # blocked: the spool and memory are full
    stats = sink.stats()
    assert stats.spooled > 0
    assert stats.queued >= 20
    assert stats.dropped == 0
    async with rig_on(identity, short_tmp / "c", config, port) as rig:
        await asyncio.to_thread(thread.join, 20)
        assert done.is_set()
        assert await asyncio.to_thread(sink.flush, 20.0)
        await asyncio.to_thread(sink.close, 5.0)
        found = await stored(rig.operator)
    assert numbers(found) == list(range(200))
    with pytest.raises(UnavailableError):
        emit_numbered(sink, 200, 1)  # closed


async def test_a_full_spool_drops_counts_and_the_collector_alerts(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path, config: TrustmeshConfig
) -> None:
    port = free_port()
    sink = producer(
        payments,
        short_tmp / "spool",
        port,
        max_bytes=40 * 1024,
        max_queue=20,
        batch=10,
        on_full="drop",
    )
    await asyncio.to_thread(emit_numbered, sink, 0, 200)  # never blocks
    await asyncio.sleep(0.5)
    dropped = sink.stats().dropped
    assert dropped > 0
    async with rig_on(identity, short_tmp / "c", config, port) as rig:
        assert await asyncio.to_thread(sink.flush, 20.0)
        # the notice goes out after the first delivery the collector answers
        await asyncio.to_thread(sink.flush, 20.0)
        stats = await asyncio.to_thread(sink.close, 5.0)
        found = await stored(rig.operator)
        status, alerts = await rig.operator.call("GET", "/v1/alerts")
    kept = numbers(found)
    assert kept == sorted(kept)
    assert len(kept) == 200 - dropped == stats.delivered - 1
    (notice,) = [
        e for e in found if e["unmapped"]["trustmesh"]["reason"] == Activity.EVENTS_DROPPED.value
    ]
    assert notice["unmapped"]["trustmesh"]["attributes"]["dropped"] == dropped
    assert status == 200
    titles = [a["title"] for a in alerts["alerts"]]
    assert "Audit events dropped" in titles, titles


async def test_the_client_checks_the_collectors_identity(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path, config: TrustmeshConfig
) -> None:
    port = free_port()
    async with rig_on(identity, short_tmp / "c", config, port):
        # a collector that is not the one expected: nothing is sent to it
        impostor = CollectorClient(f"https://127.0.0.1:{port}", payments, PAYMENTS)
        with pytest.raises(CollectorUnavailableError, match="expected the collector"):
            await asyncio.to_thread(impostor.send, [b"{}"])
        client = CollectorClient(f"https://127.0.0.1:{port}", payments, AUDIT)
        one = json.dumps({"not": "an event"}).encode()
        answer = await asyncio.to_thread(client.send, [one])
        assert answer.quarantined == 1  # kept with its reason, never refused
        with pytest.raises(BatchTooLargeError):
            await asyncio.to_thread(client.send, [one] * 1001)
        client.close()
    with pytest.raises(CollectorUnavailableError, match="cannot connect"):
        await asyncio.to_thread(client.send, [one])


async def test_a_kept_connection_the_collector_closed_is_made_again(
    identity: RunningIdentityServer, payments: X509Source, short_tmp: Path, config: TrustmeshConfig
) -> None:
    """The collector hangs up a connection idle past its keep-alive timeout, and the
    client learns it only when its next request gets no answer: that request is sent
    again on a new connection, not failed (spans, which are not spooled, were lost)."""
    port = free_port()
    async with rig_on(identity, short_tmp / "c", config, port) as rig:
        client = CollectorClient(f"https://127.0.0.1:{port}", payments, AUDIT)
        recorder = events.Recorder(events.MemorySink(), component="t")
        first = recorder.record(Reason.POLICY_ALLOW, "one")
        await asyncio.to_thread(client.send, [first.to_json().encode()])
        kept = client._conn
        assert kept is not None
        assert kept.sock is not None
        kept.sock.shutdown(socket.SHUT_RD)  # as the peer's hang-up looks from here
        second = recorder.record(Reason.POLICY_ALLOW, "two")
        answer = await asyncio.to_thread(client.send, [second.to_json().encode()])
        assert answer.stored == 1
        assert client._conn is not kept
        client.close()
        found = await stored(rig.operator)
        assert {e["message"] for e in found} >= {"one", "two"}


def test_backoff_grows_caps_and_resets_on_a_fake_clock() -> None:
    now = [100.0]
    slept: list[float] = []
    backoff = Backoff(
        initial=0.5,
        maximum=4.0,
        jitter=0.5,
        clock=lambda: now[0],
        sleep=slept.append,
        random=lambda: 1.0,  # the largest jitter: half the ceiling
    )
    assert [backoff.failed() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff.remaining() == 2.0
    now[0] += 1.5
    backoff.pause()
    assert slept == [0.5]
    backoff.succeeded()
    assert (backoff.remaining(), backoff.delay()) == (0.0, 0.0)
    with pytest.raises(Exception, match="initial"):
        Backoff(initial=0)


async def test_the_sink_up_asks_for(
    payments: X509Source,
    short_tmp: Path,
    config: TrustmeshConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(AUDIT_URL_ENV, raising=False)
    assert audit_sink_from_env(payments, config, short_tmp, "gateway") is None
    monkeypatch.setenv(AUDIT_URL_ENV, NO_COLLECTOR)  # up's word for a declaration without one
    assert audit_sink_from_env(payments, config, short_tmp, "gateway") is None
    assert not (short_tmp / "spool").exists()
    monkeypatch.setenv(AUDIT_URL_ENV, "https://127.0.0.1:9")
    assert audit_sink_from_env(payments, config, short_tmp, "audit") is None  # stores its own
    sink = audit_sink_from_env(payments, config, short_tmp, "gateway", on_full="drop")
    assert sink is not None
    try:
        assert sink.on_full == "drop"
        assert sink.spool.directory == short_tmp / "spool" / "gateway"
        assert sink.client.expected == AUDIT
    finally:
        await asyncio.to_thread(sink.close, 0.1)


async def test_a_producer_follows_the_collector_where_it_says_it_listens(
    identity: RunningIdentityServer,
    payments: X509Source,
    short_tmp: Path,
    config: TrustmeshConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started before the collector (``up`` names none yet), a producer spools; once the
    collector writes its endpoint file the events go there — and again after it comes
    back on another port."""
    state = short_tmp / "state"
    endpoint = state / "audit" / "endpoint.json"
    monkeypatch.setenv(AUDIT_URL_ENV, "")
    sink = audit_sink_from_env(payments, config, state, "payments")
    assert sink is not None
    try:
        await asyncio.to_thread(emit_numbered, sink, 0, 100)
        assert not await asyncio.to_thread(sink.flush, 0.3)  # nowhere to go yet
        assert sink.stats().spooled == 100
        for first in (0, 100):
            port = free_port()
            async with rig_on(identity, short_tmp / "c", config, port) as rig:
                endpoint.parent.mkdir(parents=True, exist_ok=True)
                endpoint.write_text(json.dumps({"url": f"https://127.0.0.1:{port}"}))
                if first:
                    await asyncio.to_thread(emit_numbered, sink, first, 100)
                assert await asyncio.to_thread(sink.flush, 20.0), sink.stats()
                found = await stored(rig.operator)
            endpoint.unlink()
        assert numbers(found) == list(range(200))
    finally:
        await asyncio.to_thread(sink.close, 0.1)


async def test_a_burst_of_events_is_spooled_in_few_writes(
    payments: X509Source, short_tmp: Path
) -> None:
    """Group commit: the delivery thread, woken by a burst's first event, gathers the
    rest (until a batch is full, or its linger is over) and spools them in one write and
    one fsync — here 30 events 2 ms apart, as requests arrive (without it, each would
    find the thread asleep and cost a write of its own)."""
    sink = producer(payments, short_tmp / "spool", free_port(), batch=30)  # no collector
    sink.linger = 30.0  # only a full batch ends the wait: nothing here depends on timing
    appends: list[int] = []
    append = sink.spool.append

    def counted(batch: Any, *, force: bool = False) -> bool:
        appends.append(len(batch))
        return append(batch, force=force)

    sink.spool.append = counted  # type: ignore[method-assign]
    try:
        for n in range(30):
            emit_numbered(sink, n, 1)
            time.sleep(0.002)
        deadline = time.monotonic() + 10
        while sink.spool.records < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert appends == [30]
    finally:
        await asyncio.to_thread(sink.close, 0.1)


def _logged(path: Path) -> list[int]:
    return [e["unmapped"]["trustmesh"]["attributes"]["n"] for e in events.read_events(path)]


async def test_the_event_log_is_written_a_spooled_batch_at_a_time(
    payments: X509Source, short_tmp: Path
) -> None:
    """With the component's event log handed to it, the sink writes the log from its own
    thread, one ``write`` per spooled batch and only once a batch is spooled: the request
    path appends to memory and nothing else. Closing writes what is still queued."""
    log_path = short_tmp / "events" / "payments.jsonl"
    log = events.JsonLinesSink(log_path)
    sink = producer(payments, short_tmp / "spool", free_port(), batch=30)  # no collector
    sink.log = log
    sink.linger = 30.0  # only a full batch ends the wait
    writes: list[int] = []
    write_lines = log.write_lines

    def counted(lines: Any) -> None:
        assert sink.spool.records >= len(lines)  # spooled first: the record comes first
        writes.append(len(lines))
        write_lines(lines)

    log.write_lines = counted  # type: ignore[method-assign]
    try:
        emit_numbered(sink, 0, 30)
        deadline = time.monotonic() + 10
        while not writes and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert writes == [30]
        assert _logged(log_path) == list(range(30))
        emit_numbered(sink, 30, 5)  # a part batch, still waiting for its linger
        assert _logged(log_path) == list(range(30))
    finally:
        await asyncio.to_thread(sink.close, 0.1)
        log.close()
    assert _logged(log_path) == list(range(35))  # each once, in order


async def test_an_event_dropped_for_a_full_spool_is_still_in_the_event_log(
    payments: X509Source, short_tmp: Path
) -> None:
    log_path = short_tmp / "events" / "payments.jsonl"
    log = events.JsonLinesSink(log_path)
    sink = producer(
        payments,
        short_tmp / "spool",
        free_port(),
        max_bytes=40 * 1024,
        max_queue=20,
        batch=10,
        on_full="drop",
    )
    sink.log = log
    try:
        await asyncio.to_thread(emit_numbered, sink, 0, 200)
        await asyncio.sleep(0.3)
        assert sink.stats().dropped > 0
    finally:
        await asyncio.to_thread(sink.close, 0.1)
        log.close()
    assert sorted(_logged(log_path)) == list(range(200))


async def test_a_failing_event_log_leaves_the_spool_whole(
    payments: X509Source, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log is written after the spool append: a log that fails is reported, and the
    events stay spooled (the record) and are not written twice."""
    log = events.JsonLinesSink(short_tmp / "events" / "payments.jsonl")
    log.close()  # every write now fails
    sink = producer(payments, short_tmp / "spool", free_port(), batch=10)
    sink.log = log
    try:
        emit_numbered(sink, 0, 10)
        deadline = time.monotonic() + 10
        while sink.spool.records < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sink.spool.records == 10
    finally:
        await asyncio.to_thread(sink.close, 0.1)
    assert "not in the event log" in caplog.text
