"""trustmesh.testing.FakeClock: one clock in three views (datetime, epoch seconds,
monotonic seconds) that move together, exactly; a bad move is refused and changes nothing."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from trustmesh.testing import FakeClock
from trustmesh.testing.clock import MONOTONIC_START

T0 = 1_900_000_000.25
START = dt.datetime(2030, 3, 17, 17, 46, 40, 250_000, tzinfo=dt.UTC)  # T0 as a datetime


def test_the_views_name_the_same_instant() -> None:
    for clock in (FakeClock(T0), FakeClock(START)):
        assert clock() == START
        assert clock().tzinfo is dt.UTC
        assert clock.time() == T0
        assert clock.monotonic() == MONOTONIC_START
    paris = START.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert FakeClock(paris)() == START
    assert FakeClock(paris)().tzinfo is dt.UTC


def test_by_default_it_starts_at_the_real_time() -> None:
    before = time.time()
    clock = FakeClock()
    after = time.time()
    assert before - 1e-6 <= clock.time() <= after + 1e-6
    assert clock().tzinfo is dt.UTC


def test_advance_moves_every_view_by_the_same_step() -> None:
    clock = FakeClock(T0)
    assert clock.advance(10) == START + dt.timedelta(seconds=10)
    assert clock.advance(dt.timedelta(minutes=1)) == START + dt.timedelta(seconds=70)
    assert clock() == START + dt.timedelta(seconds=70)
    assert clock.time() == T0 + 70
    assert clock.monotonic() == MONOTONIC_START + 70


def test_small_steps_add_up_exactly() -> None:
    clock = FakeClock(T0)
    for _ in range(10):
        clock.advance(0.1)
    assert clock.time() == T0 + 1
    assert clock.monotonic() == MONOTONIC_START + 1
    clock.advance(4.9)
    clock.advance(0.2)
    assert clock.monotonic() == MONOTONIC_START + 6.1


def test_set_jumps_the_wall_clock_and_never_the_monotonic_one() -> None:
    clock = FakeClock(T0)
    clock.advance(5)
    assert clock.set(T0 + 3600) == START + dt.timedelta(hours=1)
    assert clock.time() == T0 + 3600
    assert clock.monotonic() == MONOTONIC_START + 5
    clock.set(START - dt.timedelta(days=1))  # back: a wall clock can be set back
    assert clock() == START - dt.timedelta(days=1)
    assert clock.time() == T0 - 86_400
    assert clock.monotonic() == MONOTONIC_START + 5


@pytest.mark.parametrize(
    ("move", "error"),
    [
        (lambda c: c.advance(-1), ValueError),
        (lambda c: c.advance(dt.timedelta(microseconds=-1)), ValueError),
        (lambda c: c.advance("1"), TypeError),
        (lambda c: c.advance(True), TypeError),
        (lambda c: c.set(dt.datetime(2030, 1, 1)), ValueError),  # naive: which zone?
        (lambda c: c.set("2030-01-01"), TypeError),
        (lambda c: c.set(None), TypeError),
    ],
    ids=["back-seconds", "back-timedelta", "text-step", "bool-step", "naive", "text", "none"],
)
def test_a_bad_move_is_refused_and_changes_nothing(move: object, error: type) -> None:
    clock = FakeClock(T0)
    with pytest.raises(error):
        move(clock)  # type: ignore[operator]
    assert (clock(), clock.time(), clock.monotonic()) == (START, T0, MONOTONIC_START)


def test_a_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        FakeClock(dt.datetime(2030, 1, 1))
