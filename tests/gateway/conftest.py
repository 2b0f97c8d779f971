"""Gateway tests run against the identity service and provider of the auth tests."""

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from trustmesh.testing import PrivateRedis

sys.path.insert(0, str(Path(__file__).parent.parent / "auth"))  # authrig: the shared rig


@pytest.fixture(scope="module")
def module_tmp() -> Iterator[Path]:
    """A short directory for a stack the tests of a module share (unix socket paths are
    limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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


#: The module ``engine: nginx`` renders ``more_clear_headers`` with (Debian's package).
HEADERS_MORE = Path("/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so")


@pytest.fixture(scope="session")  # a fact of the machine: modules that share a stack use it
def nginx_available() -> None:
    """nginx with the headers-more module, or the test skips (fails where services are
    required: ``.ci/run`` installs them)."""
    if shutil.which("nginx") is None or not HEADERS_MORE.exists():
        message = (
            "engine: nginx needs nginx and its headers-more module "
            "(apt-get install nginx libnginx-mod-http-headers-more-filter)"
        )
        if os.environ.get("TRUSTMESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
        pytest.skip(message)
