"""The files of a spool directory: record framing, segment names, the acknowledged
position, and the directory's lock and permissions.

A record is ``length (u32 LE) | crc32 (u32 LE) | payload``; the CRC covers the length
bytes and the payload, so a torn or flipped length is caught as surely as a flipped
payload byte. A segment is ``seg-<number>.log``, records back to back. The position of
the first record not yet delivered is ``ack``: ``segment (u64) | offset (u64) |
crc32 (u32)``, replaced atomically (write, fsync, rename, fsync the directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from trustmesh.errors import StateError, UsageError

__all__ = [
    "HEADER",
    "MAX_RECORD",
    "Position",
    "ScannedRecord",
    "create_segment",
    "frame",
    "fsync_dir",
    "lock_directory",
    "open_segment",
    "prepare_directory",
    "read_ack",
    "scan",
    "segment_name",
    "segment_numbers",
    "write_ack",
]

HEADER: Final = struct.Struct("<II")
#: The longest payload a record may hold (an event is at most 1 MiB as one JSON line).
MAX_RECORD: Final = 2 * 1024 * 1024
_ACK: Final = struct.Struct("<QQ")
_ACK_FILE: Final = "ack"
_LOCK_FILE: Final = "lock"
_PREFIX: Final = "seg-"
_SUFFIX: Final = ".log"
_FILE_FLAGS: Final = os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(frozen=True, order=True)
class Position:
    """Where a record starts: a segment's number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class ScannedRecord:
    """A record read back whole and intact: its payload and where the next one starts."""

    payload: bytes
    end: int


def frame(payload: bytes) -> bytes:
    """One record: length, CRC32 (over the length bytes and the payload), payload."""
    if len(payload) > MAX_RECORD:
        raise UsageError(f"a spool record is at most {MAX_RECORD} bytes")
    length = len(payload).to_bytes(4, "little")
    return length + zlib.crc32(payload, zlib.crc32(length)).to_bytes(4, "little") + payload


def scan(data: bytes | memoryview, start: int = 0) -> tuple[list[ScannedRecord], int]:
    """Every intact record of ``data`` from ``start``, and the offset where the intact
    run ends: ``len(data)`` for a clean segment, else where a torn or corrupt record
    begins (everything from there on is cut, never replayed)."""
    view = memoryview(data)
    records: list[ScannedRecord] = []
    pos = start
    size = len(view)
    while pos + HEADER.size <= size:
        length, crc = HEADER.unpack_from(view, pos)
        end = pos + HEADER.size + length
        if length > MAX_RECORD or end > size:
            break
        payload = bytes(view[pos + HEADER.size : end])
        if zlib.crc32(payload, zlib.crc32(view[pos : pos + 4])) != crc:
            break
        records.append(ScannedRecord(payload, end))
        pos = end
    return records, pos


def segment_name(number: int) -> str:
    return f"{_PREFIX}{number:016d}{_SUFFIX}"


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segments in ``directory``, oldest first."""
    numbers = []
    for name in os.listdir(directory):
        middle = name.removeprefix(_PREFIX).removesuffix(_SUFFIX)
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX) and middle.isdigit():
            numbers.append(int(middle))
    return sorted(numbers)


def fsync_dir(directory: str | Path) -> None:
    """Make a file's creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_directory(directory: Path) -> None:
    """Create ``directory`` 0700 (parents too), or narrow an existing one to 0700; it must
    be a real directory (not a symlink) owned by this user."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"spool {directory} is not a directory")
    if info.st_uid != os.getuid():
        raise StateError(f"spool {directory} belongs to another user")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)


def _open_file(path: str | Path, flags: int) -> int:
    fd = os.open(path, flags | _FILE_FLAGS, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"spool file {path} is not a regular file")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_directory(directory: Path) -> int:
    """An exclusive ``flock`` on the directory's lock file, held by the returned fd: one
    process (one :class:`~trustmesh.sdk.spool.Spool`) per spool directory."""
    fd = _open_file(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"spool {directory} is in use by another process (one process per spool)"
        ) from None
    return fd


# the hot functions join names as strings: a pathlib join per batch cost more than the
# write it named


def open_segment(directory: str | Path, number: int, *, write: bool) -> int:
    flags = os.O_RDWR | os.O_APPEND if write else os.O_RDONLY
    return _open_file(os.path.join(directory, segment_name(number)), flags)


def create_segment(directory: str | Path, number: int) -> int:
    """A new, empty segment opened for appending; its creation is made durable."""
    path = os.path.join(directory, segment_name(number))
    fd = _open_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL)
    fsync_dir(directory)
    return fd


def read_ack(directory: Path) -> Position | None:
    """The acknowledged position, or None (no file yet, or one that does not check: then
    everything left is replayed, and the collector stores each event once by its uid)."""
    try:
        data = (directory / _ACK_FILE).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != _ACK.size + 4:
        return None
    if zlib.crc32(data[: _ACK.size]) != int.from_bytes(data[_ACK.size :], "little"):
        return None
    segment, offset = _ACK.unpack_from(data)
    return Position(segment, offset)


def write_ack(directory: str | Path, position: Position) -> None:
    """Replace the acknowledged position durably (readers see the old or the new one)."""
    body = _ACK.pack(position.segment, position.offset)
    data = body + zlib.crc32(body).to_bytes(4, "little")
    tmp = os.path.join(directory, _ACK_FILE + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = _open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, _ACK_FILE))
    fsync_dir(directory)
