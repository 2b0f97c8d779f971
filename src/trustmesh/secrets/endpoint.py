"""Where the running secrets process says it listens: ``<state>/secrets/endpoint.json``
(``url``; written by the process, read by ``trustmesh status``, the CLI and the services
``up`` starts after it). Kept apart from the process's own module so that reading it
imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEV_UNSEAL_WARNING", "dev_unseal_path", "endpoint_path"]

DEV_UNSEAL_WARNING = (
    "DEV MODE: the secrets service unseals itself from {path}, which sits beside the data. "
    "Anyone who can read the state directory can read every secret. Initialise with "
    "`trustmesh secrets init` and unseal with shares for anything but local development."
)


def endpoint_path(state: Path) -> Path:
    return state / "secrets" / "endpoint.json"


def dev_unseal_path(state: Path) -> Path:
    """Dev mode only: the one unseal share, beside the data (0600)."""
    return state / "secrets" / "dev-unseal.key"
