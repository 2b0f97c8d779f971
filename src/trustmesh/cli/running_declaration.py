"""The declaration a running stack serves: the file ``trustmesh up`` was given (its
components read that file again on a reload) and the text they run, as last applied.

Both are kept in ``<state>/run/declaration.snapshot`` (JSON, 0600): written by ``up`` as
it starts the stack, replaced by each ``trustmesh reload`` that applies a change. A
reload compares the changed file with that text, never with the file itself (which is
what changed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.errors import StateError

__all__ = ["Running", "read", "record", "snapshot_path"]


@dataclass(frozen=True)
class Running:
    """The file a stack was started from, and the declaration it runs."""

    path: Path
    text: str

    def config(self) -> TrustmeshConfig:
        return parse_config(self.text, source=f"{self.path} (as running)")


def snapshot_path(state: Path) -> Path:
    return state / "run" / "declaration.snapshot"


def record(state: Path, path: Path, text: str | None = None) -> None:
    """Say that the stack on ``state`` runs ``path`` (its ``text``: as the file reads now,
    unless given). Written whole or not at all, readable by the owner only."""
    text = path.read_text(encoding="utf-8") if text is None else text
    doc = {"config": str(path.absolute()), "text": text, "applied_at": time.time()}
    target = snapshot_path(state)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(doc, file)
    tmp.replace(target)


def read(state: Path) -> Running:
    """What the stack on ``state`` runs; StateError when no ``up`` recorded it."""
    try:
        doc = json.loads(snapshot_path(state).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), str) for k in ("config", "text")
    ):
        raise StateError(
            f"{state} does not say which declaration its stack runs "
            "(it was started by an older trustmesh up: restart it)"
        )
    return Running(Path(doc["config"]), doc["text"])
