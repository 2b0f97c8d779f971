"""The audit spool: order, a restart resumes exactly, a torn or corrupt tail is cut and
never replayed, the bound, durable acknowledgements, one process per directory, and the
permissions of what it writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trustmesh.errors import UsageError
from trustmesh.sdk._spoolfiles import HEADER, frame, segment_numbers
from trustmesh.sdk.spool import Spool


def records(n: int, start: int = 0, size: int = 40) -> list[bytes]:
    return [f"{i:08d}".encode().ljust(size, b".") for i in range(start, start + n)]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", 1 << 20, segment_bytes=1024) as spool:
        for i in range(20):
            assert spool.append(records(7, i * 7))
        assert spool.records == 140
        assert len(segments(tmp_path / "s")) > 5
        seen: list[bytes] = []
        while batch := spool.peek(9):
            assert spool.peek(9) == batch  # a peek moves nothing
            seen += batch
            spool.ack(len(batch))
        assert seen == records(140)
        assert spool.records == 0
        assert spool.bytes == 0
        assert len(segments(tmp_path / "s")) == 1  # spent segments are removed


def test_a_new_spool_resumes_where_the_last_one_acknowledged(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", 1 << 20, segment_bytes=1024) as spool:
        assert spool.append(records(50))
        spool.ack(23)
        spool.peek(10)  # read, not acknowledged: delivered again after a restart
    with Spool(tmp_path / "s", 1 << 20, segment_bytes=1024) as spool:
        assert spool.records == 27
        assert spool.bytes == 27 * (40 + HEADER.size)
        assert spool.peek(100) == records(27, 23)
        assert spool.append(records(3, 50))
        spool.ack(27)
    with Spool(tmp_path / "s", 1 << 20, segment_bytes=1024) as spool:
        assert spool.peek(100) == records(3, 50)


def test_an_acknowledgement_survives_a_killed_process(tmp_path: Path) -> None:
    """ack() is durable when it returns: the process is killed right after it."""
    src = Path(__file__).resolve().parents[2] / "src"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(src)!r})
        from pathlib import Path
        from trustmesh.sdk.spool import Spool
        spool = Spool(Path({str(tmp_path / "s")!r}), 1 << 20, segment_bytes=1024)
        spool.append([b"%04d" % i for i in range(100)])
        spool.ack(61)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, timeout=30)
    assert done.returncode == -9
    with Spool(tmp_path / "s", 1 << 20) as spool:  # the lock died with the process
        assert spool.peek(100) == [b"%04d" % i for i in range(61, 100)]


def test_a_torn_tail_is_cut_not_replayed(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.append(records(5))
    (last,) = segments(tmp_path / "s")
    torn = frame(b"x" * 40)[:-7]  # a crash in the middle of a write
    with open(last, "ab") as file:
        file.write(torn)
    size = last.stat().st_size
    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.cut_bytes == len(torn)
        assert last.stat().st_size == size - len(torn)
        assert spool.peek(10) == records(5)
        assert spool.append(records(1, 5))  # appends go on after the last intact record
        assert spool.peek(10) == records(6)


@pytest.mark.parametrize("where", ["payload", "length", "crc"])
def test_a_corrupt_record_is_detected_by_its_crc(tmp_path: Path, where: str) -> None:
    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.append(records(3))
        assert spool.append(records(3, 3))
    (last,) = segments(tmp_path / "s")
    data = bytearray(last.read_bytes())
    fourth = 3 * (40 + HEADER.size)
    offset = {"payload": fourth + HEADER.size + 5, "length": fourth, "crc": fourth + 4}[where]
    data[offset] ^= 0x01  # one flipped bit
    last.write_bytes(bytes(data))
    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.peek(10) == records(3)  # never the flipped record, nor what follows
        assert spool.cut_bytes == 3 * (40 + HEADER.size)


def test_a_full_spool_refuses_the_whole_batch(tmp_path: Path) -> None:
    each = 40 + HEADER.size
    with Spool(tmp_path / "s", 10 * each) as spool:
        assert spool.append(records(8))
        assert not spool.append(records(3, 8))  # 11 would not fit: nothing is written
        assert spool.records == 8
        assert spool.append(records(2, 8))
        assert not spool.append(records(1, 10))
        spool.ack(4)
        assert spool.append(records(4, 10))
        assert spool.append(records(1, 14), force=True)  # a closing producer's last events
        assert spool.peek(20) == records(11, 4)


def test_one_process_per_spool_directory(tmp_path: Path) -> None:
    with (
        Spool(tmp_path / "s", 1 << 20),
        pytest.raises(UsageError, match="in use by another process"),
    ):
        Spool(tmp_path / "s", 1 << 20)
    with Spool(tmp_path / "s", 1 << 20):  # released on close
        pass


def test_the_spool_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "spool" / "gateway"
    with Spool(directory, 1 << 20) as spool:
        assert spool.append(records(2))
        spool.ack(1)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    os.chmod(directory, 0o755)  # noqa: S103 - widened on purpose: the spool narrows it
    with Spool(directory, 1 << 20):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # narrowed again


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "s").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="not a directory"):
        Spool(tmp_path / "s", 1 << 20)


def test_a_bad_ack_file_replays_rather_than_loses(tmp_path: Path) -> None:
    """An acknowledged position that does not check is ignored: everything left is sent
    again (stored once by the collector), nothing is skipped."""
    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.append(records(5))
        spool.ack(3)
    ack = tmp_path / "s" / "ack"
    data = bytearray(ack.read_bytes())
    data[-1] ^= 0xFF
    ack.write_bytes(bytes(data))
    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.peek(10) == records(5)
    assert segment_numbers(tmp_path / "s") == [0]


def test_a_batch_appended_where_reading_stands_is_peeked_without_reading_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery that follows an append finds the batch in memory, exactly as written
    (and as a new spool reads it back from disk)."""
    from trustmesh.sdk import spool as spool_module

    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.append(records(5))

        def no_reading(*_: object, **__: object) -> int:
            raise AssertionError("read back from disk")

        monkeypatch.setattr(spool_module, "open_segment", no_reading)
        assert spool.peek(5) == records(5)
        spool.ack(2)
        assert spool.append(records(3, 5))
        assert spool.peek(100) == records(6, 2)
        monkeypatch.undo()
    with Spool(tmp_path / "s", 1 << 20) as spool:
        assert spool.peek(100) == records(6, 2)


def test_records_past_what_is_kept_in_memory_are_read_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustmesh.sdk import spool as spool_module

    monkeypatch.setattr(spool_module, "_KEEP", 4)
    with Spool(tmp_path / "s", 1 << 20, segment_bytes=256) as spool:
        for i in range(10):
            assert spool.append(records(3, i * 3))
        seen: list[bytes] = []
        while batch := spool.peek(7):
            seen += batch
            spool.ack(len(batch))
            assert spool.append([]) is True
        assert seen == records(30)
        assert spool.append(records(2, 30))  # reading stands at the end again: kept
        assert spool.peek(5) == records(2, 30)
