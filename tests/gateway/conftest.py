"""Gateway tests run against the identity service and provider of the auth tests."""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trustmesh.testing import PrivateRedis

sys.path.insert(0, str(Path(__file__).parent.parent / "auth"))  # authrig: the shared rig


@pytest.fixture
async def private_redis(short_tmp: Path) -> AsyncIterator[PrivateRedis]:
    """A redis-server of the test's own, which it may kill and start again."""
    if not PrivateRedis.available():
        message = "redis-server is not installed"
        if os.environ.get("TRUSTMESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
        pytest.skip(message)
    server = PrivateRedis(short_tmp)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.kill)
