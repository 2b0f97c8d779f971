"""Where the running secrets process says it listens: ``<state>/secrets/endpoint.json``
(``url``; written by the process, read by ``trustmesh status``, the CLI and the services
``up`` starts after it). Kept apart from the process's own module so that reading it
imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

__all__ = ["dev_unseal_path", "endpoint_path"]


def endpoint_path(state: Path) -> Path:
    return state / "secrets" / "endpoint.json"


def dev_unseal_path(state: Path) -> Path:
    """Dev mode only: the one unseal share, beside the data (0600)."""
    return state / "secrets" / "dev-unseal.key"
