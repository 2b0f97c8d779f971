"""The disk never waits on the network: while a delivery hangs (a collector that took the
connection and never answers), what is emitted still reaches the spool within the group
commit, so a process killed then loses nothing it spooled; ``spooled()`` waits until
what was emitted is there (the identity service answers only then), and says so when it
cannot be. The collector is a fake at the far edge; the spool is real."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from test_audit_cadence import Taking, emit, sink_for, wait_for

from trustmesh.sdk._spoolfiles import scan
from trustmesh.sdk.delivery import AuditSink
from trustmesh.sdk.spool import Spool


class Hanging(Taking):
    """A collector that takes the connection and answers only once released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(self, records: Sequence[bytes]) -> None:
        self.entered.set()
        assert self.release.wait(30)
        super().send(records)


def _on_disk(tmp_path: Path) -> int:
    """Records in the spool's segment files, read as the next process would."""
    segments = sorted((tmp_path / "spool").glob("seg-*"))
    return sum(len(scan(segment.read_bytes())[0]) for segment in segments)


def test_events_reach_the_spool_while_a_delivery_hangs(tmp_path: Path) -> None:
    collector = Hanging()
    sink = sink_for(tmp_path, collector, deliver_every=0.0)
    try:
        emit(sink, 0, 1)
        assert collector.entered.wait(5)  # the first delivery is under way, and hangs
        started = time.monotonic()
        emit(sink, 1, 50)
        assert wait_for(lambda: sink.spool.records == 51, 2.0), sink.stats()
        assert time.monotonic() - started < 2.0
        assert _on_disk(tmp_path) == 51  # fsynced: what a successor would replay
        assert sink.stats().queued == 0
    finally:
        collector.release.set()
        assert sink.flush(10)
        sink.close(5)
    assert collector.numbers() == list(range(51))  # once each, in order


def test_spooled_waits_until_what_was_emitted_is_on_disk(tmp_path: Path) -> None:
    collector = Hanging()  # nothing delivered: the spool alone holds them
    sink = sink_for(tmp_path, collector, linger=10.0)  # a group commit that would wait
    try:
        emit(sink, 0, 3)
        started = time.monotonic()
        assert asyncio.run(sink.spooled(5.0))
        # a waiter cuts the group commit's linger short
        assert time.monotonic() - started < 2.0
        assert sink.spool.records >= 3
        assert _on_disk(tmp_path) >= 3
    finally:
        collector.release.set()
        sink.close(5)


def test_spooled_says_no_when_the_spool_cannot_take_them(tmp_path: Path) -> None:
    collector = Hanging()
    sink = AuditSink(
        Spool(tmp_path / "spool", 2048),  # room for about two events
        collector,  # type: ignore[arg-type]
        component="payments",
        deliver_every=0.0,
    )
    try:
        emit(sink, 0, 1)
        assert collector.entered.wait(5)  # the collector hangs: nothing leaves the spool
        emit(sink, 1, 20)
        assert not asyncio.run(sink.spooled(0.5))
        assert sink.spool.records < 21
    finally:
        collector.release.set()
        assert sink.flush(10)
        sink.close(5)
    assert collector.numbers() == list(range(21))
