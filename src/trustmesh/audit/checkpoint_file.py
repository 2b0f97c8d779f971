"""The checkpoint file: every signed checkpoint, one JSON line each, outside the
database, so that cutting the log (and its stored checkpoints) stays visible — and every
prune checkpoint (:class:`~trustmesh.audit.chain.PruneCheckpoint`), so that records
removed on purpose stay explained when the database's copy of it is gone.

Appended with ``O_APPEND`` and fsynced before :meth:`Ledger.checkpoint
<trustmesh.audit.ledger.Ledger.checkpoint>` returns; created 0600 (a file that exists
with a wider mode is narrowed), never through a symbolic link. Read back strictly: a
line that is not a checkpoint is a :class:`~trustmesh.errors.StateError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

from trustmesh.audit.chain import MAX_PRUNE_LINE, Checkpoint, PruneCheckpoint, checkpoint_from_line
from trustmesh.errors import StateError

__all__ = ["append_checkpoint", "read_checkpoints"]

_MAX_LINE = MAX_PRUNE_LINE  # the longer kind of line


def append_checkpoint(path: Path, checkpoint: Checkpoint | PruneCheckpoint) -> None:
    """Append ``checkpoint``'s line to ``path`` and fsync it (and, when the file is
    new, its directory); :class:`StateError` if it cannot be written."""
    try:
        new = not path.exists()
        if new:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            os.write(fd, checkpoint.to_line())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        raise StateError(
            f"the checkpoint of seq {checkpoint.last_seq} could not be written to {path}: "
            f"{exc.strerror}"
        ) from None


def read_checkpoints(path: Path) -> list[Checkpoint | PruneCheckpoint]:
    """Every checkpoint and prune checkpoint in ``path``, in file order (blank lines
    skipped)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below; opened apart to name the error
    except OSError as exc:
        raise StateError(f"cannot read the checkpoint file {path}: {exc.strerror}") from None
    out = []
    with file:
        number = 0
        while line := file.readline(_MAX_LINE + 1):
            number += 1
            if not line.strip():
                continue
            try:
                out.append(checkpoint_from_line(line.rstrip(b"\n")))
            except StateError as exc:
                raise StateError(f"{path}:{number}: {exc.detail}") from None
    return out
