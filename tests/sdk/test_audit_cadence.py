"""How often a sink delivers: while events keep coming, at most every ``deliver_every``
seconds (a delivery carries many of them); the first event after a quiet spell, a whole
batch, a flush and a close go at once; nothing is lost or reordered. The collector is a
fake at the far edge (what the sink sends, in order); the spool is real."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustmesh import events
from trustmesh.reasons import Reason
from trustmesh.sdk.delivery import AuditSink
from trustmesh.sdk.spool import Spool


class Taking:
    """A collector that takes every batch: the batches, in order."""

    timeout = 1.0

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.lock = threading.Lock()

    def send(self, records: Sequence[bytes]) -> None:
        with self.lock:
            self.batches.append(list(records))

    def close(self) -> None:
        pass

    def numbers(self) -> list[int]:
        with self.lock:
            return [
                json.loads(r)["unmapped"]["trustmesh"]["attributes"]["n"]
                for batch in self.batches
                for r in batch
            ]


def sink_for(tmp_path: Path, collector: Taking, **options: Any) -> AuditSink:
    return AuditSink(
        Spool(tmp_path / "spool", 1 << 22),
        collector,  # type: ignore[arg-type]
        component="payments",
        **options,
    )


def emit(sink: AuditSink, start: int, count: int) -> None:
    recorder = events.Recorder(sink, component="payments")
    for n in range(start, start + count):
        recorder.record(Reason.POLICY_ALLOW, "call allowed", attributes={"n": n})


def wait_for(check: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_events_that_keep_coming_go_in_few_deliveries(tmp_path: Path) -> None:
    collector = Taking()
    sink = sink_for(tmp_path, collector, deliver_every=0.25, linger=0.001)
    try:
        started = time.monotonic()
        for n in range(100):  # one event every 5 ms for about half a second
            emit(sink, n, 1)
            time.sleep(0.005)
        took = time.monotonic() - started  # longer on a loaded machine
        assert sink.flush(10.0)
        assert collector.numbers() == list(range(100))
        # one at once (the first after a quiet spell), then one per 0.25 s, the flush's
        bound = 2 + math.ceil(took / 0.25)
        assert len(collector.batches) <= bound, (took, [len(b) for b in collector.batches])
        assert len(collector.batches) < 50  # not one delivery per event
        assert sink.stats().delivered == 100
    finally:
        sink.close(1.0)


def test_the_first_event_after_a_quiet_spell_goes_at_once(tmp_path: Path) -> None:
    collector = Taking()
    sink = sink_for(tmp_path, collector, deliver_every=60.0)
    try:
        emit(sink, 0, 1)
        assert wait_for(lambda: collector.numbers() == [0])
        emit(sink, 1, 1)  # within deliver_every of the first: it waits …
        time.sleep(0.2)
        assert collector.numbers() == [0]
        assert sink.stats().spooled == 1  # … spooled, so recorded
        assert sink.flush(5.0)  # … unless a flush waits for it
        assert collector.numbers() == [0, 1]
    finally:
        sink.close(1.0)


def test_a_whole_batch_goes_at_once(tmp_path: Path) -> None:
    collector = Taking()
    sink = sink_for(tmp_path, collector, deliver_every=60.0, batch=10)
    try:
        emit(sink, 0, 1)
        assert wait_for(lambda: collector.numbers() == [0])
        emit(sink, 1, 10)
        assert wait_for(lambda: len(collector.numbers()) >= 11)
        assert collector.numbers() == list(range(11))
    finally:
        sink.close(1.0)


def test_a_close_delivers_what_waits_for_the_next_delivery(tmp_path: Path) -> None:
    collector = Taking()
    sink = sink_for(tmp_path, collector, deliver_every=60.0)
    emit(sink, 0, 1)
    assert wait_for(lambda: collector.numbers() == [0])
    emit(sink, 1, 5)
    stats = sink.close(5.0)
    assert collector.numbers() == list(range(6))
    assert (stats.delivered, stats.spooled, stats.queued) == (6, 0, 0)
