"""What nginx answered without asking the gateway, recorded as the gateway's events.

Where nginx keeps decisions (``gateway.nginx.decision_ttl``), the requests it answers
from a kept decision, and those its own count of a limit refuses, never reach the
authorizer, which records every decision it makes — but for the requests it allows on a
route whose limits nginx counts: nginx may still refuse those, so they are recorded
from here, once, with the outcome. nginx writes a line for each of them (JSON, its
``kept.log``: the request's id, time, client, method, path, status, route, subject and
whether the decision was kept or the limit refused), and :class:`KeptLog`
reads the lines every :data:`INTERVAL` seconds and records each as an event
(:meth:`~trustmesh.gateway.app.GatewayApp.record_kept`): the event's id is the
request's, so a line recorded twice (the gateway restarted before it had read past it)
is stored once by the audit collector.

The file is read from where the last read ended; once it holds :data:`ROTATE_BYTES`
and all of it has been read, it is renamed and nginx asked to open a new one
(``reopen``: ``SIGUSR1``); the renamed file is read to its end until nginx's workers
have flushed into the new one (:data:`DRAIN_SECONDS`), then removed. At start, a
renamed file left from before is read first, then the file from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = ["DRAIN_SECONDS", "INTERVAL", "ROTATE_BYTES", "KeptLog"]

log = logging.getLogger("trustmesh.gateway")

INTERVAL: Final = 1.0
ROTATE_BYTES: Final = 8 << 20
#: How long a renamed file is still read: nginx's workers flush their buffers (each
#: second) into it before they open the new one.
DRAIN_SECONDS: Final = 5.0
#: A line longer than this is no line of nginx's (its fields are bounded): skipped.
_MAX_LINE: Final = 64 << 10


class KeptLog:
    """Reads nginx's ``kept.log`` at ``path`` and hands each line to ``record``."""

    def __init__(
        self,
        path: Path,
        record: Callable[[Mapping[str, Any]], None],
        reopen: Callable[[], None],
        *,
        rotate_bytes: int = ROTATE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._record = record
        self._reopen = reopen
        self._rotate_bytes = rotate_bytes
        self._clock = clock
        self._offset = 0
        self._old = path.with_name(path.name + ".old")
        self._old_offset = 0
        self._old_until: float | None = None
        self.recorded = 0  # lines recorded since start
        self.skipped = 0  # lines that were not nginx's

    async def run(self) -> None:
        """Every :data:`INTERVAL` seconds, :meth:`drain` (until cancelled; then once
        more, so that what nginx wrote until it stopped is recorded)."""
        if self._old.exists():  # renamed before the gateway last stopped: read it first
            self._old_until = self._clock()
        try:
            while True:
                self.drain()
                await asyncio.sleep(INTERVAL)
        finally:
            self.drain()

    def drain(self) -> int:
        """Record what was written since the last read; how many lines."""
        count = 0
        if self._old_until is not None:
            count += self._read(self._old, old=True)
            if self._clock() - self._old_until >= DRAIN_SECONDS:
                with contextlib.suppress(FileNotFoundError):
                    self._old.unlink()
                self._old_until, self._old_offset = None, 0
        count += self._read(self.path, old=False)
        if self._old_until is None and self._offset >= self._rotate_bytes:
            self._rotate()
        return count

    def _rotate(self) -> None:
        try:
            self.path.replace(self._old)
        except FileNotFoundError:
            return
        self._old_offset, self._offset = self._offset, 0
        self._old_until = self._clock()
        self._reopen()

    def _read(self, path: Path, *, old: bool) -> int:
        offset = self._old_offset if old else self._offset
        try:
            with path.open("rb") as handle:
                if handle.seek(0, 2) < offset:  # a new file (nginx made it again): all of it
                    offset = 0
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1  # a line nginx has not finished waits for the next read
        count = 0
        for line in data[:end].splitlines():
            count += self._line(line)
        if old:
            self._old_offset = offset + end
        else:
            self._offset = offset + end
        return count

    def _line(self, line: bytes) -> int:
        if not line.strip():
            return 0
        try:
            if len(line) > _MAX_LINE:
                raise ValueError("too long")
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError("not an object")
            self._record(fields)
        except Exception as exc:  # noqa: BLE001 - one odd line never stops the reading
            self.skipped += 1
            log.warning("gateway: a line of nginx's kept.log skipped: %s", exc)
            return 0
        self.recorded += 1
        return 1
