"""The one clock tests move by hand (STYLE: time is a parameter; tests never sleep for it).

A component takes the view of it that it needs:

- the clock itself, called: an aware UTC datetime, where a component takes
  ``Callable[[], datetime]`` (the identity service's ``Clock``, in place of ``utcnow``);
- ``clock.time``: the same instant in epoch seconds (a float), where a component takes
  ``Callable[[], float]`` in place of :func:`time.time`;
- ``clock.monotonic``: seconds that never go back, in place of :func:`time.monotonic`.
  They count from :data:`MONOTONIC_START`, not from the epoch, as a real monotonic clock
  does not: a component that mixed the two up would show it.

``advance`` moves all three views on together; ``set`` puts the wall clock (datetime and
epoch seconds) at an instant, forward or back, as a wall clock can jump, and leaves the
monotonic view alone. Time is kept in whole microseconds (a datetime's resolution), so
many small steps add up exactly. Every read and move holds a lock: a server running in
another thread may read the clock while the test moves it.
"""

from __future__ import annotations

import datetime as dt
import threading

#: What ``monotonic()`` answers before the clock is first advanced.
MONOTONIC_START = 1000.0

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECOND = dt.timedelta(seconds=1)


def _instant(when: dt.datetime | float) -> dt.datetime:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"FakeClock: {when!r} is naive; give an aware datetime")
        return when.astimezone(dt.UTC)
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise TypeError(f"FakeClock: an instant is a datetime or epoch seconds, not {when!r}")
    return _EPOCH + dt.timedelta(seconds=when)


def _step(delta: dt.timedelta | float) -> dt.timedelta:
    if isinstance(delta, dt.timedelta):
        step = delta
    elif isinstance(delta, bool) or not isinstance(delta, int | float):
        raise TypeError(f"FakeClock: a step is a timedelta or seconds, not {delta!r}")
    else:
        step = dt.timedelta(seconds=delta)
    if step < dt.timedelta(0):
        raise ValueError(f"FakeClock: advance({delta!r}) would go back; set() a wall-clock jump")
    return step


class FakeClock:
    """Starts at ``start`` (an aware datetime or epoch seconds; the real time by default)."""

    def __init__(self, start: dt.datetime | float | None = None) -> None:
        self._lock = threading.Lock()
        self._wall = dt.datetime.now(dt.UTC) if start is None else _instant(start)
        self._monotonic = dt.timedelta(seconds=MONOTONIC_START)

    def __call__(self) -> dt.datetime:
        """The instant, an aware UTC datetime."""
        with self._lock:
            return self._wall

    def time(self) -> float:
        """The same instant in epoch seconds, as :func:`time.time`."""
        with self._lock:
            return (self._wall - _EPOCH) / _SECOND

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; ``set`` does not move them."""
        with self._lock:
            return self._monotonic / _SECOND

    def advance(self, delta: dt.timedelta | float) -> dt.datetime:
        """Let ``delta`` (a timedelta or seconds, never negative) pass; the new instant."""
        step = _step(delta)
        with self._lock:
            self._wall += step
            self._monotonic += step
            return self._wall

    def set(self, when: dt.datetime | float) -> dt.datetime:
        """Put the wall clock at ``when`` (an aware datetime or epoch seconds), as a clock
        set by hand or stepped by NTP jumps; the monotonic view does not move."""
        instant = _instant(when)
        with self._lock:
            self._wall = instant
            return instant
