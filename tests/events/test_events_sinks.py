from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from trustmesh.errors import StateError
from trustmesh.events import (
    Event,
    EventSink,
    FanoutSink,
    JsonLinesSink,
    MemorySink,
    read_events,
)

Make = Callable[..., Event]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_one_line_per_event(tmp_path: Path, make: Make) -> None:
    path = tmp_path / "a" / "b" / "events.jsonl"
    events = [make(sub=f"user{i}", message=f"multi\nline {i}") for i in range(5)]
    with JsonLinesSink(path) as sink:
        assert isinstance(sink, EventSink)
        for ev in events:
            sink.emit(ev)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) == 6
    assert [json.loads(line) for line in lines[:-1]] == [ev.to_ocsf() for ev in events]
    assert list(read_events(path)) == [ev.to_ocsf() for ev in events]


def test_file_is_private_and_parents_are_created(tmp_path: Path, make: Make) -> None:
    path = tmp_path / "state" / "events" / "events.jsonl"
    sink = JsonLinesSink(path)
    sink.emit(make())
    sink.close()
    assert _mode(path) == 0o600
    assert _mode(path.parent) & 0o077 == 0


def test_existing_file_is_appended_and_narrowed(tmp_path: Path, make: Make) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(make(sub="first").to_json() + "\n")
    path.chmod(0o644)
    with JsonLinesSink(path) as sink:
        sink.emit(make(sub="second"))
    assert _mode(path) == 0o600
    subs = [obj["unmapped"]["trustmesh"]["sub"] for obj in read_events(path)]
    assert subs == ["first", "second"]


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError, match=r"symbolic|Too many levels"):
        JsonLinesSink(link)


def test_a_non_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(StateError, match="regular file"):
            JsonLinesSink(fifo)
    finally:
        os.close(reader)


def test_concurrent_emits_produce_exactly_n_valid_lines(tmp_path: Path, make: Make) -> None:
    path = tmp_path / "events.jsonl"
    threads_n, per_thread = 8, 250
    barrier = threading.Barrier(threads_n)
    # Long messages make interleaving visible if writes were not whole lines.
    events = [
        [make(sub=f"t{t}-{i}", message="x" * (500 + t * 300)) for i in range(per_thread)]
        for t in range(threads_n)
    ]
    with JsonLinesSink(path) as sink:

        def work(batch: list[Event]) -> None:
            barrier.wait()
            for ev in batch:
                sink.emit(ev)

        threads = [threading.Thread(target=work, args=(batch,)) for batch in events]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    read = list(read_events(path))
    assert len(read) == threads_n * per_thread
    assert len(path.read_bytes().splitlines()) == threads_n * per_thread
    expected = {ev.uid: ev.to_ocsf() for batch in events for ev in batch}
    assert {obj["metadata"]["uid"]: obj for obj in read} == expected


def test_fsync_each_emit(tmp_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    with JsonLinesSink(tmp_path / "sync.jsonl", fsync=True) as sink:
        sink.emit(make())
        sink.emit(make())
    with JsonLinesSink(tmp_path / "nosync.jsonl") as sink:
        sink.emit(make())
    assert len(synced) == 2


def test_write_errors_propagate(
    tmp_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = JsonLinesSink(tmp_path / "events.jsonl")

    def disk_full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        sink.emit(make())
    monkeypatch.undo()
    sink.close()


def test_partial_writes_are_completed(
    tmp_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def short_write(fd: int, data: memoryview) -> int:
        return real_write(fd, bytes(data[:7]))

    path = tmp_path / "events.jsonl"
    ev = make()
    with JsonLinesSink(path) as sink:
        monkeypatch.setattr(os, "write", short_write)
        sink.emit(ev)
        monkeypatch.undo()
    assert list(read_events(path)) == [ev.to_ocsf()]


def test_emit_after_close_raises(tmp_path: Path, make: Make) -> None:
    sink = JsonLinesSink(tmp_path / "events.jsonl")
    sink.close()
    sink.close()
    assert sink.closed
    with pytest.raises(ValueError, match="closed"):
        sink.emit(make())


def test_memory_sink(make: Make) -> None:
    sink = MemorySink()
    assert isinstance(sink, EventSink)
    first, second = make(), make()
    sink.emit(first)
    sink.emit(second)
    assert sink.events == [first, second]


class _Broken:
    def emit(self, event: Event) -> None:
        raise OSError("collector down")


def test_fanout_delivers_to_all_and_never_swallows(make: Make) -> None:
    a, b = MemorySink(), MemorySink()
    ev = make()
    FanoutSink(a, b).emit(ev)
    assert a.events == [ev]
    assert b.events == [ev]

    c = MemorySink()
    with pytest.raises(OSError, match="collector down") as info:
        FanoutSink(_Broken(), c, _Broken()).emit(ev)
    assert c.events == [ev]
    assert any("also failed" in note for note in info.value.__notes__)


def test_read_events_refuses_oversized_lines(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text('{"a":"' + "x" * 100 + '"}\n{"b":1}\n')
    with pytest.raises(StateError, match=r"big\.jsonl:1: line longer than 50"):
        list(read_events(path, max_line_bytes=50))
    assert list(read_events(path, max_line_bytes=200)) == [{"a": "x" * 100}, {"b": 1}]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"a":1}\n[1,2]\n', "2: not a JSON object"),
        ('{"a":1,"a":2}\n', "1: not valid JSON"),
        ('{"a":NaN}\n', "1: not valid JSON"),
        ("{not json\n", "1: not valid JSON"),
        ("[" * 100_000 + "]" * 100_000 + "\n", "1: not valid JSON"),
    ],
)
def test_read_events_refuses_malformed_lines(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(StateError, match=problem):
        list(read_events(path))


def test_read_events_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('\n{"a":1}\n\n{"b":2}')
    assert list(read_events(path)) == [{"a": 1}, {"b": 2}]
