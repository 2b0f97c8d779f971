"""Where the running audit collector says it listens: ``<state>/audit/endpoint.json``
(``url``; written by the process, read by ``trustmesh status``, the CLI and the
components ``up`` starts after it). Kept apart from the process's own module so that
reading it imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

__all__ = ["checkpoint_path", "endpoint_path"]


def endpoint_path(state: Path) -> Path:
    return state / "audit" / "endpoint.json"


def checkpoint_path(state: Path) -> Path:
    """The default checkpoint file, outside the database."""
    return state / "audit" / "checkpoints.jsonl"
