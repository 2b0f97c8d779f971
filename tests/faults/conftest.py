"""Fault tests: each kills, stalls or floods one dependency of a running stack and asserts
the behaviour ARCHITECTURE.md documents for that failure, and that no acknowledged event
or write is lost. Every test here runs in a short form by default (CI); with
``TRUSTMESH_FAULTS=long`` the same test runs longer and under more load. Tests start
private Redis and PostgreSQL servers on free ports: they never stop the machine's own."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

LONG = os.environ.get("TRUSTMESH_FAULTS") == "long"


@dataclass(frozen=True)
class FaultScale:
    """How hard a fault test pushes: ``long`` is the full run, else the CI form."""

    long: bool

    def pick(self, short: float, long: float) -> float:
        return long if self.long else short

    def count(self, short: int, long: int) -> int:
        return long if self.long else short


@pytest.fixture
def fault_scale() -> FaultScale:
    return FaultScale(LONG)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.faults)
