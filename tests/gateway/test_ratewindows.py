"""The gateway's in-memory rate-limit windows against a plain model of what each kind
means, on random request times; expiry of idle buckets."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.gateway.ratewindows import MemoryWindows

steps = st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(gaps=steps, amount=st.integers(1, 8), expiry=st.integers(1, 10))
def test_a_moving_window_admits_exactly_amount_in_any_window(
    gaps: list[float], amount: int, expiry: int
) -> None:
    windows, admitted, now = MemoryWindows(examine=1), [], 1_700_000_000.0
    for gap in gaps:
        now += gap
        recent = [t for t in admitted if t > now - expiry]
        stats = windows.moving_stats("k", amount, expiry, now)
        assert stats.remaining == amount - len(recent)
        assert stats.reset_time == (recent[0] + expiry if recent else now + expiry)
        hit = windows.moving_hit("k", amount, expiry, now)
        assert hit == (len(recent) < amount)
        if hit:
            admitted.append(now)


@settings(max_examples=200, deadline=None)
@given(gaps=steps, amount=st.integers(1, 8), expiry=st.integers(1, 10))
def test_a_sliding_window_counter_weighs_the_previous_window(
    gaps: list[float], amount: int, expiry: int
) -> None:
    windows, counts, now = MemoryWindows(examine=3), {}, 1_700_000_000.0
    for gap in gaps:
        now += gap
        index = math.floor(now / expiry)
        previous, current = counts.get(index - 1, 0), counts.get(index, 0)
        weighted = previous * (expiry - (now - index * expiry)) / expiry + current
        stats = windows.sliding_stats("k", amount, expiry, now)
        assert stats.remaining == max(0, math.floor(amount - weighted))
        assert now < stats.reset_time <= now + expiry
        hit = windows.sliding_hit("k", amount, expiry, now)
        assert hit == (weighted + 1 <= amount)
        if hit:
            counts[index] = current + 1


def test_buckets_are_counted_apart_and_idle_ones_are_swept() -> None:
    windows, now = MemoryWindows(examine=0), 1_700_000_000.0
    assert windows.moving_hit("a", 1, 60, now)
    assert not windows.moving_hit("a", 1, 60, now + 1)
    assert windows.moving_hit("b", 1, 60, now + 1)
    assert windows.sliding_hit("c", 1, 60, now)
    assert not windows.sliding_hit("c", 1, 60, now + 1)
    for i in range(1000):
        windows.moving_hit(f"client-{i}", 5, 60, now)
    assert len(windows) == 1003
    windows.sweep(now + 59)  # all still in their window
    assert len(windows) == 1003
    windows.sweep(now + 121)  # every window is over, the sliding one's previous too
    assert len(windows) == 0
    assert windows.moving_hit("a", 1, 60, now + 121)


def test_idle_buckets_are_dropped_a_few_at_each_hit() -> None:
    """No pass over every bucket on the request path: each hit looks at two."""
    windows, now = MemoryWindows(examine=2), 1_700_000_000.0
    for i in range(100):
        windows.moving_hit(f"old-{i}", 1, 1, now)
    windows.sliding_hit("old-sliding", 1, 1, now)
    assert len(windows) == 101
    for i in range(60):  # 120 looks: every old bucket, then the new ones (kept)
        windows.moving_hit(f"new-{i}", 1, 1, now + 5)
    assert len(windows) == 60
    assert not windows.moving_hit("new-0", 1, 1, now + 5)  # a live one kept its count
