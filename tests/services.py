"""Tests that need Redis or PostgreSQL: skip where unreachable, fail in CI."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator

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


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.asynccontextmanager
async def postgres_database(prefix: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards (close every
    engine on it first); its SQLAlchemy URL."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()
