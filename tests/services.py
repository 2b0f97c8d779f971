"""Tests that need Redis or PostgreSQL: skip where unreachable, fail in CI."""

from __future__ import annotations

import os
import socket

import pytest

REQUIRE_SERVICES = os.environ.get("TRUSTMESH_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip where a service is unreachable (a laptop); fail in CI, which must have it."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
    pytest.skip(message)
