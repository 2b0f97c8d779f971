"""The Workload API's connection guard: caps per uid and in total, idle eviction."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from trustmesh.identity.workload import ConnectionGuard


class _Transport:
    """What the guard reads of an asyncio transport, over a real unix socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.aborted = False

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def transports() -> Iterator[list[_Transport]]:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    yield [_Transport(server) for server, _ in pairs]
    for a, b in pairs:
        a.close()
        b.close()


def test_idle_connection_is_evicted_and_busy_one_never(transports: list[_Transport]) -> None:
    guard = ConnectionGuard(max_total=10, max_per_uid=2)
    busy, idle, newcomer, late = transports
    assert guard.admit(busy, lambda: False)
    assert guard.admit(idle, lambda: True)
    assert guard.admit(newcomer, lambda: False)  # room made by closing the idle one
    assert idle.aborted
    assert not busy.aborted
    assert guard.accepted_at(idle) is None
    assert guard.accepted_at(busy) is not None
    assert not guard.admit(late, lambda: True)  # everything open is busy: refused
    assert (guard.evicted, guard.refused) == (1, 1)


def test_total_cap_evicts_the_oldest_idle_of_anyone(transports: list[_Transport]) -> None:
    guard = ConnectionGuard(max_total=2, max_per_uid=10)
    first, second, third, _ = transports
    assert guard.admit(first, lambda: True)
    assert guard.admit(second, lambda: True)
    assert guard.admit(third, lambda: True)
    assert first.aborted
    assert not second.aborted


def test_release_frees_the_slot(transports: list[_Transport]) -> None:
    guard = ConnectionGuard(max_total=10, max_per_uid=1)
    first, second, _, _ = transports
    assert guard.admit(first, lambda: False)
    assert not guard.admit(second, lambda: False)
    guard.release(first)
    assert guard.admit(second, lambda: False)
