"""Where the running gateway process says it listens: ``<state>/gateway/endpoint.json``
(``url``, ``internal_url``, ``admin_url``, ``metrics_url``; written by the process, read by
the CLI and the processes ``up`` starts after it), and how its last reload went. Kept apart from the process's own
module so that reading it imports nothing heavy.

With ``gateway.workers`` above one, ``up`` runs that many gateway processes, each told
its number in ``TRUSTMESH_GATEWAY_WORKER`` (1 when unset). The first is ``gateway``:
its files are the ones above, and its mTLS listener (the admin API, the internal
tokens' JWKS) is the one others find. Worker ``k`` is ``gateway-k``: its files end in
``-k`` (``endpoint-2.json``, ``reload-2.json``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from trustmesh.errors import ConfigError
from trustmesh.platform.endpoints import gateway_worker_name as worker_name

__all__ = ["WORKER_ENV", "endpoint_path", "reload_path", "worker_name", "worker_of"]

WORKER_ENV: Final = "TRUSTMESH_GATEWAY_WORKER"


def worker_of(environ: Mapping[str, str] | None = None) -> int:
    """This process's worker number (``TRUSTMESH_GATEWAY_WORKER``; 1 when unset)."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV, "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise ConfigError(f"{WORKER_ENV}={raw!r} (expected a worker number from 1 to 64)")
    return int(raw)


def _suffix(worker: int) -> str:
    return "" if worker == 1 else f"-{worker}"


def endpoint_path(state: Path, worker: int = 1) -> Path:
    return state / "gateway" / f"endpoint{_suffix(worker)}.json"


def reload_path(state: Path, worker: int = 1) -> Path:
    """Where gateway process ``worker`` says how its last reload went (``at``, ``ok``,
    ``error``), after each ``SIGHUP``."""
    return state / "gateway" / f"reload{_suffix(worker)}.json"
