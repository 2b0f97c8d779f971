"""A bounded, fsynced, append-only queue of records on disk: where a producer's events
wait while the audit collector cannot take them (an event in the spool counts as
recorded).

Layout (see :mod:`trustmesh.sdk._spoolfiles`): segment files of length-prefixed,
CRC32-checked records, and an ``ack`` file naming the first record not yet delivered.

- :meth:`Spool.append` writes a whole batch with one ``write`` and one ``fdatasync``
  (group commit); a new segment's creation is made durable by fsyncing the directory.
  It answers False, writing nothing, when the batch would take the records not yet
  delivered past ``max_bytes``.
- :meth:`Spool.peek` reads the oldest records; :meth:`Spool.ack` moves past delivered
  ones durably (the ``ack`` file replaced atomically) and removes spent segments. A
  batch appended right where reading stands is kept in memory as written (up to
  :data:`_KEEP` records), so the delivery that follows does not read it back.
- Opening resumes exactly where the last process stopped: segments before the
  acknowledged one are removed, and a torn or corrupt tail (a crash in the middle of a
  write, a flipped bit) is detected by its length and CRC and cut, never replayed.
- One process per directory: an exclusive ``flock`` (a second opener gets
  :class:`~trustmesh.errors.UsageError`). The directory is 0700, its files 0600.

On disk a spool holds at most ``max_bytes`` of undelivered records plus the delivered
start of its oldest segment (at most one segment, ``max_bytes / 8`` capped at 8 MiB).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Self

from trustmesh.errors import StateError, UsageError
from trustmesh.sdk._spoolfiles import (
    HEADER,
    Position,
    create_segment,
    frame,
    fsync_dir,
    lock_directory,
    open_segment,
    prepare_directory,
    read_ack,
    scan,
    segment_name,
    segment_numbers,
    write_ack,
)

__all__ = ["Spool"]

_MAX_SEGMENT: Final = 8 * 1024 * 1024
_MIN_SEGMENT: Final = 64 * 1024
_READ_CHUNK: Final = 1024 * 1024
#: At most this many records appended are kept in memory for the next peek (two of the
#: largest deliveries); past it, they are read back from their segment.
_KEEP: Final = 2000

log = logging.getLogger("trustmesh.sdk.spool")
_Records = Sequence[bytes]  # (named here: in the class, ``bytes`` is a property)


class Spool:
    """An on-disk queue of records (bytes) in ``directory``, at most ``max_bytes`` of
    them not yet acknowledged. Thread-safe; one instance per directory per machine."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int | None = None):
        if max_bytes < 1:
            raise UsageError("a spool's max_bytes must be positive")
        self.directory = Path(directory)
        self._dir = str(self.directory)  # for the hot paths' joins
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(_MAX_SEGMENT, max(_MIN_SEGMENT, max_bytes // 8))
        #: Bytes of torn or corrupt records cut when the spool was opened.
        self.cut_bytes = 0
        self._lock = threading.Lock()
        prepare_directory(self.directory)
        self._lock_fd: int | None = lock_directory(self.directory)
        self._sizes: dict[int, int] = {}  # segment → bytes of intact records
        self._live_bytes = 0
        self._live_records = 0
        self._write_fd: int | None = None
        self._peeked: list[tuple[bytes, Position]] = []  # read ahead from the head
        try:
            self._head = self._recover()
            if self._sizes:
                active = max(self._sizes)
                self._write_fd = open_segment(self.directory, active, write=True)
        except BaseException:
            self.close()
            raise

    # --- opening ------------------------------------------------------------------

    def _recover(self) -> Position:
        numbers = segment_numbers(self.directory)
        acked = read_ack(self.directory)
        head = Position(numbers[0] if numbers else 0, 0) if acked is None else acked
        spent = [n for n in numbers if n < head.segment]
        for number in spent:
            os.unlink(self.directory / segment_name(number))
        if spent:
            fsync_dir(self.directory)
        for number in (n for n in numbers if n >= head.segment):
            start = head.offset if number == head.segment else 0
            self._sizes[number] = self._check_segment(number, start)
        if head.segment not in self._sizes and self._sizes:
            head = Position(min(self._sizes), 0)
        return head

    def _check_segment(self, number: int, start: int) -> int:
        """Count the intact records of a segment from ``start``; cut a torn tail."""
        path = self.directory / segment_name(number)
        fd = open_segment(self.directory, number, write=False)
        try:
            data = _read_all(fd)
        finally:
            os.close(fd)
        if start > len(data):
            log.warning("spool %s: acknowledged past the end of %s", self.directory, path.name)
            start = len(data)
        records, end = scan(data, start)
        if end < len(data):
            log.warning(
                "spool %s: cut %d bytes of a torn or corrupt record from %s",
                self.directory,
                len(data) - end,
                path.name,
            )
            self.cut_bytes += len(data) - end
            fd = open_segment(self.directory, number, write=True)
            try:
                os.ftruncate(fd, end)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._live_records += len(records)
        self._live_bytes += end - start
        return end

    # --- writing ------------------------------------------------------------------

    def append(self, batch: Sequence[bytes], *, force: bool = False) -> bool:
        """Write ``batch`` durably (one write, one fdatasync), in order, or nothing:
        False when it does not fit under ``max_bytes`` (``force``: write it anyway,
        for what a closing producer must not lose)."""
        if not batch:
            return True
        data = b"".join(frame(record) for record in batch)
        with self._lock:
            if self._lock_fd is None:
                raise StateError("append to a closed spool")
            if not force and self._live_bytes + len(data) > self.max_bytes:
                return False
            fd = self._writable(len(data))
            active = max(self._sizes)
            before = self._sizes[active]
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
            except BaseException:
                with contextlib.suppress(OSError):  # leave no half batch behind
                    os.ftruncate(fd, before)
                raise
            self._sizes[active] = before + len(data)
            self._live_bytes += len(data)
            self._live_records += len(batch)
            self._keep(batch, Position(active, before))
            return True

    def _keep(self, batch: Sequence[bytes], start: Position) -> None:
        """Keep a batch just written at ``start`` for the next peek, when reading stands
        right there (the records in memory are then exactly those on disk next)."""
        reading = self._peeked[-1][1] if self._peeked else self._head
        if reading != start or len(self._peeked) + len(batch) > _KEEP:
            return
        offset = start.offset
        for record in batch:
            offset += HEADER.size + len(record)
            self._peeked.append((bytes(record), Position(start.segment, offset)))

    def _writable(self, size: int) -> int:
        """The active segment's fd, a new segment when this one is full."""
        if self._write_fd is not None:
            active = max(self._sizes)
            used = self._sizes[active]
            if used == 0 or used + size <= self.segment_bytes:
                return self._write_fd
            number = active + 1
            os.close(self._write_fd)
            self._write_fd = None
        else:
            number = self._head.segment
        self._write_fd = create_segment(self._dir, number)
        self._sizes[number] = 0
        self._advance(persist=False)
        return self._write_fd

    # --- reading and acknowledging -----------------------------------------------

    def peek(self, n: int) -> list[bytes]:
        """The ``n`` oldest records not yet acknowledged (fewer if there are fewer)."""
        with self._lock:
            self._read_ahead(n)
            return [payload for payload, _ in self._peeked[:n]]

    def ack(self, n: int) -> None:
        """Durably move past the ``n`` oldest records (delivered); a spent segment is
        removed."""
        if n <= 0:
            return
        with self._lock:
            self._read_ahead(n)
            if n > len(self._peeked):
                raise UsageError(f"ack of {n} records; only {len(self._peeked)} are spooled")
            done, self._peeked = self._peeked[:n], self._peeked[n:]
            self._head = done[-1][1]
            self._live_records -= n
            self._live_bytes -= sum(len(payload) + HEADER.size for payload, _ in done)
            self._advance(persist=True)

    def _advance(self, *, persist: bool) -> None:
        """Move the head off a fully delivered segment that is not the active one, write
        the head (when it moved, or ``persist``), then remove every spent segment."""
        newer = [n for n in self._sizes if n > self._head.segment]
        moved = bool(newer) and self._head.offset >= self._sizes.get(self._head.segment, 0)
        if moved:
            self._head = Position(min(newer), 0)
        if moved or persist:
            write_ack(self._dir, self._head)
        spent = [n for n in self._sizes if n < self._head.segment]
        for number in spent:
            del self._sizes[number]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / segment_name(number))
        if spent:
            fsync_dir(self.directory)

    def _read_ahead(self, n: int) -> None:
        pos = self._peeked[-1][1] if self._peeked else self._head
        while len(self._peeked) < n:
            size = self._sizes.get(pos.segment)
            if size is None:
                return
            if pos.offset >= size:
                later = [s for s in self._sizes if s > pos.segment]
                if not later:
                    return
                pos = Position(min(later), 0)
                continue
            fd = open_segment(self._dir, pos.segment, write=False)
            try:
                data = os.pread(fd, min(size - pos.offset, _READ_CHUNK), pos.offset)
                records, _ = scan(data)
                if not records:  # one record longer than a chunk: read it whole
                    data = os.pread(fd, size - pos.offset, pos.offset)
                    records, _ = scan(data)
            finally:
                os.close(fd)
            if not records:
                raise StateError(f"spool {self.directory}: {segment_name(pos.segment)} changed")
            for record in records[: n - len(self._peeked)]:
                self._peeked.append(
                    (record.payload, Position(pos.segment, pos.offset + record.end))
                )
            pos = self._peeked[-1][1]

    # --- state --------------------------------------------------------------------

    @property
    def records(self) -> int:
        """Records spooled and not yet acknowledged."""
        return self._live_records

    @property
    def bytes(self) -> int:
        """Bytes (framing included) of the records not yet acknowledged."""
        return self._live_bytes

    def fitting(self, records: _Records) -> int:
        """How many of ``records``, from the first, would fit now."""
        room = self.max_bytes - self._live_bytes
        for i, record in enumerate(records):
            room -= HEADER.size + len(record)
            if room < 0:
                return i
        return len(records)

    def fits(self, size: int) -> bool:
        """Would records of ``size`` payload bytes in all fit now?"""
        return self._live_bytes + size <= self.max_bytes

    def close(self) -> None:
        """Release the directory (its lock) and close the files; idempotent."""
        with self._lock:
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, _READ_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)
