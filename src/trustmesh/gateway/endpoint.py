"""Where the running gateway process says it listens: ``<state>/gateway/endpoint.json``
(``url``, ``internal_url``, ``admin_url``, ``metrics_url``; written by the process, read by
the CLI and the processes ``up`` starts after it), and how its last reload went. Kept apart from the process's own
module so that reading it imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

__all__ = ["endpoint_path", "reload_path"]


def endpoint_path(state: Path) -> Path:
    return state / "gateway" / "endpoint.json"


def reload_path(state: Path) -> Path:
    """Where the gateway process says how its last reload went (``at``, ``ok``,
    ``error``), after each ``SIGHUP``."""
    return state / "gateway" / "reload.json"
