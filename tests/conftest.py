"""Fixtures shared by every test folder."""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import trustmesh

# A busy 2-core machine (CI, a benchmark beside the suite) makes generation slow; that is
# not a failure of the property under test, so the timing health checks are off.
settings.register_profile(
    "trustmesh",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    deadline=None,
)
settings.load_profile("trustmesh")

from services import REQUIRE_SERVICES, require_service  # noqa: E402, F401 - re-exported


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class PythonCopy:
    """A copy of this interpreter at another path (and, if tampered, with other bytes),
    so that a test can run a workload whose executable path or hash differs from its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        src = Path(trustmesh.__file__).resolve().parents[1]
        site = [p for p in sys.path if p.endswith("site-packages")]
        self.env = {
            **os.environ,
            "PYTHONHOME": sys.base_prefix,
            "PYTHONPATH": os.pathsep.join([str(src), *site]),
        }

    @classmethod
    def make(cls, directory: Path, name: str, *, tamper: bool = False) -> PythonCopy:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        shutil.copy2(Path(sys.executable).resolve(), target)
        if tamper:
            with open(target, "ab") as f:
                f.write(b"\0trustmesh-test")
        return cls(target)


@pytest.fixture
def python_copy(short_tmp: Path) -> type[PythonCopy]:
    return PythonCopy


_WIDE_FIXTURE = re.compile(r"""scope\s*=\s*["'](?:class|module|package|session)["']""")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadgroup`` (the Makefile's): tests go to the workers one by one,
    which balances a suite whose slow tests sit together in a few files — but the tests
    of a file that declares a fixture wider than one test (a stack `up` once per module)
    stay together on one worker, so that the fixture is made once; the largest groups
    go first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath

    @functools.cache
    def shares_fixtures(path: str) -> bool:
        try:
            return bool(_WIDE_FIXTURE.search((root / path).read_text()))
        except OSError:
            return True  # unknown: keep its tests together, as loadfile would

    class OneByOne(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if shares_fixtures(path) else nodeid

    return OneByOne(config, log)
