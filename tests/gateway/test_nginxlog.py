"""The reader of nginx's kept.log: every finished line recorded once, in order; a line
nginx has not finished waits; what is not nginx's is skipped and counted; the file is
renamed and reopened once large, and the renamed one read to its end first."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from trustmesh.gateway.nginxlog import DRAIN_SECONDS, KeptLog
from trustmesh.testing import FakeClock


def line(n: int) -> bytes:
    return json.dumps({"id": f"{n:032x}", "status": "200"}).encode() + b"\n"


class Nginx:
    """Writes as nginx does: appends to the file it opened; reopens on request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("ab")
        self.reopened = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.handle.flush()

    def reopen(self) -> None:
        self.reopened += 1
        self.handle.close()
        self.handle = self.path.open("ab")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    writer = Nginx(tmp_path / "kept.log")
    yield writer
    writer.handle.close()


def reader(path: Path, nginx: Nginx, clock: FakeClock, **options: Any) -> tuple[KeptLog, list[str]]:
    seen: list[str] = []

    def record(fields: Mapping[str, Any]) -> None:
        if fields["id"] == "boom":
            raise RuntimeError("any error of the recorder's")
        seen.append(str(fields["id"]))

    return KeptLog(path, record, nginx.reopen, clock=clock.monotonic, **options), seen


def test_finished_lines_are_recorded_once_in_order(tmp_path: Path, nginx: Nginx) -> None:
    path = tmp_path / "kept.log"
    clock = FakeClock(0.0)
    kept, seen = reader(path, nginx, clock)
    nginx.write(line(1) + line(2) + line(3)[:10])  # the third unfinished
    assert kept.drain() == 2
    nginx.write(line(3)[10:])
    assert kept.drain() == 1
    assert kept.drain() == 0
    assert seen == [f"{n:032x}" for n in (1, 2, 3)]


def test_what_is_not_nginx_s_is_skipped_and_counted(tmp_path: Path, nginx: Nginx) -> None:
    path = tmp_path / "kept.log"
    clock = FakeClock(0.0)
    kept, seen = reader(path, nginx, clock)
    nginx.write(b"not json\n[1]\n" + b'{"x": 1}\n' + b'{"id": "boom"}\n' + line(7) + b"\n")
    assert kept.drain() == 1
    assert seen == [f"{7:032x}"]
    assert kept.skipped == 4  # not JSON, not an object, no id, refused by the recorder


def test_a_large_file_is_renamed_reopened_and_read_to_its_end(tmp_path: Path, nginx: Nginx) -> None:
    path = tmp_path / "kept.log"
    clock = FakeClock(0.0)
    kept, seen = reader(path, nginx, clock, rotate_bytes=len(line(1)) * 3)
    nginx.write(line(1) + line(2) + line(3))
    assert kept.drain() == 3
    assert nginx.reopened == 1
    assert path.exists()
    assert (tmp_path / "kept.log.old").exists()
    # a worker flushes what it held into the renamed file, then writes the new one
    old = (tmp_path / "kept.log.old").open("ab")
    old.write(line(4))
    old.close()
    nginx.write(line(5))
    assert kept.drain() == 2
    clock.advance(DRAIN_SECONDS)
    assert kept.drain() == 0
    assert not (tmp_path / "kept.log.old").exists()
    nginx.write(line(6))
    assert kept.drain() == 1
    assert seen == [f"{n:032x}" for n in range(1, 7)]


async def test_a_renamed_file_left_from_before_is_read_first_and_run_reads_to_the_end(
    tmp_path: Path, nginx: Nginx
) -> None:
    path = tmp_path / "kept.log"
    (tmp_path / "kept.log.old").write_bytes(line(1))
    clock = FakeClock(0.0)
    nginx.write(line(2))
    kept, seen = reader(path, nginx, clock)
    task = asyncio.create_task(kept.run())
    await asyncio.sleep(0)
    nginx.write(line(3))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen == [f"{n:032x}" for n in (1, 2, 3)]
