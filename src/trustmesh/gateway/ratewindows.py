"""Rate-limit counters in the gateway's own memory, synchronous: the event loop is their
only caller, so there is no lock to take, no task to hand expiry to, and no await on the
request path (what :mod:`limits`' asyncio memory storage costs: two lock passes and a
thread hand-off per request). Redis keeps using :mod:`limits`, whose semantics these
follow (limits 5: ``MovingWindowRateLimiter``, ``SlidingWindowCounterRateLimiter``):

- a **moving window** is exact: a hit is admitted when fewer than ``amount`` hits were
  admitted in the last ``expiry`` seconds (the timestamps kept, at most ``amount`` per
  bucket); the window resets when its oldest hit leaves it;
- a **sliding window counter** keeps the count of the current fixed window and of the
  one before it, and weighs the previous one by how much of it still overlaps the
  sliding window: ``previous × (expiry − elapsed) / expiry + current``; a hit is admitted
  while that stays within ``amount``; approximate, and two numbers per bucket.

Both take ``now`` (wall-clock seconds) from the caller. Expired buckets are dropped a few
at a time: each hit looks at the ``examine`` oldest-looked-at buckets (a queue in which
every bucket stands once), so every bucket is looked at within ``len / examine`` hits,
memory follows the active buckets, and no request pays for a pass over all of them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

__all__ = ["MemoryWindows", "Stats"]


class Stats(NamedTuple):
    """What a bucket has left: ``reset_time`` (wall-clock seconds) when it has more."""

    reset_time: float
    remaining: int


class MemoryWindows:
    """Every in-memory bucket of one gateway, both kinds."""

    __slots__ = ("_moving", "_order", "_sliding", "examine")

    def __init__(self, *, examine: int = 2) -> None:
        self._moving: dict[str, tuple[deque[float], float]] = {}
        # key → [window index, previous count, current count, expiry]
        self._sliding: dict[str, list[float]] = {}
        self._order: deque[tuple[bool, str]] = deque()  # (moving?, key), each bucket once
        self.examine = examine

    def __len__(self) -> int:
        return len(self._moving) + len(self._sliding)

    # -- moving window -----------------------------------------------------------------
    def _window(self, key: str, expiry: float, now: float) -> deque[float] | None:
        held = self._moving.get(key)
        if held is None:
            return None
        hits = held[0]
        start = now - expiry
        while hits and hits[0] <= start:
            hits.popleft()
        return hits

    def moving_stats(self, key: str, amount: int, expiry: float, now: float) -> Stats:
        hits = self._window(key, expiry, now)
        if not hits:
            return Stats(now + expiry, amount)
        return Stats(hits[0] + expiry, max(0, amount - len(hits)))

    def moving_hit(self, key: str, amount: int, expiry: float, now: float) -> bool:
        self._tick(now)
        hits = self._window(key, expiry, now)
        if hits is None:
            hits = deque()
            self._moving[key] = (hits, expiry)
            self._order.append((True, key))
        if len(hits) >= amount:
            return False
        hits.append(now)
        return True

    # -- sliding window counter --------------------------------------------------------
    def _counts(self, key: str, expiry: float, now: float) -> tuple[float, float, float]:
        """(previous, current, elapsed) of the bucket's windows at ``now``."""
        index = math.floor(now / expiry)
        elapsed = now - index * expiry
        held = self._sliding.get(key)
        if held is None:
            return 0.0, 0.0, elapsed
        if held[0] == index:
            return held[1], held[2], elapsed
        if held[0] == index - 1:
            return held[2], 0.0, elapsed
        return 0.0, 0.0, elapsed

    def sliding_stats(self, key: str, amount: int, expiry: float, now: float) -> Stats:
        previous, current, elapsed = self._counts(key, expiry, now)
        weighted = previous * (expiry - elapsed) / expiry + current
        remaining = max(0, math.floor(amount - weighted))
        if previous and weighted >= amount:  # one unit back when the previous decays enough
            wait = (weighted - amount + 1) * expiry / previous
            reset = now + min(wait, expiry - elapsed)
        else:
            reset = now + (expiry - elapsed if current else expiry)
        return Stats(reset, remaining)

    def sliding_hit(self, key: str, amount: int, expiry: float, now: float) -> bool:
        self._tick(now)
        previous, current, elapsed = self._counts(key, expiry, now)
        if previous * (expiry - elapsed) / expiry + current + 1 > amount:
            return False
        if key not in self._sliding:
            self._order.append((False, key))
        self._sliding[key] = [math.floor(now / expiry), previous, current + 1, expiry]
        return True

    # -- expiry --------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        order = self._order
        for _ in range(min(self.examine, len(order))):
            moving, key = order.popleft()
            if not self._expired(moving, key, now):
                order.append((moving, key))

    def _expired(self, moving: bool, key: str, now: float) -> bool:
        """Drop ``key`` if nothing is left in its window; whether it was."""
        if moving:
            hits, expiry = self._moving[key]
            if hits and hits[-1] > now - expiry:
                return False
            del self._moving[key]
            return True
        held = self._sliding[key]
        if held[0] >= math.floor(now / held[3]) - 1:
            return False
        del self._sliding[key]
        return True

    def sweep(self, now: float) -> None:
        """Drop every bucket with nothing left in its window (all at once)."""
        for _ in range(len(self._order)):
            moving, key = self._order.popleft()
            if not self._expired(moving, key, now):
                self._order.append((moving, key))
