"""Correlation over event time: each type and condition, windows both ends included, one
alert per group and window, events slightly out of order, too late, bounded state; and
the counts against a brute-force reading of the rules."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from auditkit import T0_MS, feed, write_rules
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.audit.detection import Alert, Detector, DetectorSettings

INPUTS = "---\n".join(
    f"""\
title: {kind.upper()}
id: 11111111-0000-4000-8000-00000000000{kind}
name: {kind}
logsource: {{product: trustmesh}}
detection:
  sel: {{unmapped.trustmesh.attributes.kind: {kind}}}
  condition: sel
"""
    for kind in "ab"
)


def detector(tmp_path: Path, body: str, *, lateness_ms: int = 0, **options: Any) -> Detector:
    text = INPUTS + "---\ntitle: C\nid: 11111111-0000-4000-8000-00000000000c\ncorrelation:\n" + body
    path = write_rules(tmp_path, text)
    return Detector.from_paths([path], DetectorSettings(lateness_ms=lateness_ms, **options))


def ev(
    seconds: float, kind: str = "a", who: str | None = "alice", value: str | None = None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {"kind": kind}
    if who is not None:
        attributes["who"] = who
    if value is not None:
        attributes["value"] = value
    ms = T0_MS + round(seconds * 1000)
    return {
        "time": ms,
        "metadata": {"uid": f"{kind}-{who}-{ms}-{value}"},
        "unmapped": {"trustmesh": {"attributes": attributes}},
    }


COUNT = """\
  type: event_count
  rules: [a]
  group-by: [unmapped.trustmesh.attributes.who]
  timespan: 60s
  condition: {gte: 10}
"""


def test_ten_within_the_window_alert_once(tmp_path: Path) -> None:
    d = detector(tmp_path, COUNT)
    stream = [ev(6 * i) for i in range(10)] + [ev(55 + i) for i in range(5)]
    (alert,) = feed(d, stream)
    assert alert.kind == "event_count"
    assert alert.group == (("unmapped.trustmesh.attributes.who", "alice"),)
    assert alert.measure == 10
    assert alert.event_uids == tuple(e["metadata"]["uid"] for e in stream[:10])
    assert (alert.window_start, alert.window_end) == (T0_MS, T0_MS + 54_000)


def test_the_window_includes_both_ends(tmp_path: Path) -> None:
    assert len(feed(detector(tmp_path, COUNT), [ev(60 * i / 9) for i in range(10)])) == 1
    assert feed(detector(tmp_path, COUNT), [ev(60.001 * i / 9) for i in range(10)]) == []


def test_nine_or_ten_spread_out_do_not_alert(tmp_path: Path) -> None:
    assert feed(detector(tmp_path, COUNT), [ev(i) for i in range(9)]) == []
    assert feed(detector(tmp_path, COUNT), [ev(7 * i) for i in range(10)]) == []


def test_groups_are_counted_apart_and_events_without_the_group_not_at_all(tmp_path: Path) -> None:
    stream = [ev(i, who=w) for i in range(5) for w in ("alice", "bob")]
    stream += [ev(10 + i, who=None) for i in range(10)]
    assert feed(detector(tmp_path, COUNT), stream) == []


def test_after_an_alert_the_group_is_silent_for_a_window_then_counts_afresh(tmp_path: Path) -> None:
    stream = [ev(i) for i in range(30)]  # one window: one alert
    stream += [ev(70 + i) for i in range(10)]  # fired at 9 s, silent until 69 s: a new window
    first, second = feed(detector(tmp_path, COUNT), stream)
    assert first.window_end == T0_MS + 9_000
    assert second.window_start == T0_MS + 70_000
    assert first.uid != second.uid


def test_value_count_counts_distinct_values_in_the_window(tmp_path: Path) -> None:
    body = "  type: value_count\n  rules: [a]\n  group-by: [unmapped.trustmesh.attributes.who]\n"
    body += "  timespan: 1m\n  condition: {gte: 3, field: unmapped.trustmesh.attributes.value}\n"
    same = [ev(i, value="x") for i in range(10)] + [ev(20, value="y"), ev(21)]  # no value: none
    assert feed(detector(tmp_path, body), same) == []
    gone = [ev(0, value="x"), ev(30, value="y"), ev(61, value="z")]  # x left the window
    assert feed(detector(tmp_path, body), gone) == []
    (alert,) = feed(detector(tmp_path, body), [*gone, ev(62, value="x"), ev(63, value="w")])
    assert alert.measure == 3
    assert alert.window_start == T0_MS + 30_000


def test_temporal_needs_every_rule_within_the_window_in_any_order(tmp_path: Path) -> None:
    body = "  type: temporal\n  rules: [a, b]\n  group-by: [unmapped.trustmesh.attributes.who]\n"
    body += "  timespan: 5m\n"
    (alert,) = feed(detector(tmp_path, body), [ev(0, "b"), ev(10, "b"), ev(200, "a")])
    assert alert.measure == 2
    assert alert.kind == "temporal"
    assert alert.event_uids == (ev(10, "b")["metadata"]["uid"], ev(200, "a")["metadata"]["uid"])
    assert feed(detector(tmp_path, body), [ev(0, "b"), ev(301, "a")]) == []
    assert feed(detector(tmp_path, body), [ev(0, "a", who="x"), ev(1, "b", who="y")]) == []


def test_an_extended_temporal_condition(tmp_path: Path) -> None:
    body = "  type: temporal\n  timespan: 5m\n  condition: a or b\n"
    assert len(feed(detector(tmp_path, body), [ev(0, "b")])) == 1
    body = "  type: temporal\n  timespan: 5m\n  condition: a and b\n"
    assert feed(detector(tmp_path, body), [ev(0, "b"), ev(1, "b")]) == []
    assert len(feed(detector(tmp_path, body), [ev(0, "b"), ev(1, "a")])) == 1


def test_temporal_ordered_needs_the_order(tmp_path: Path) -> None:
    body = "  type: temporal_ordered\n  rules: [a, b]\n  timespan: 1m\n"
    (alert,) = feed(detector(tmp_path, body), [ev(0, "b"), ev(5, "a"), ev(50, "b")])
    assert alert.event_uids == (ev(5, "a")["metadata"]["uid"], ev(50, "b")["metadata"]["uid"])
    assert feed(detector(tmp_path, body), [ev(0, "b"), ev(5, "a")]) == []
    assert feed(detector(tmp_path, body), [ev(0, "a"), ev(61, "b")]) == []
    # the latest start is kept: a at 0 and at 30, b at 85 is within 1m of the second
    assert len(feed(detector(tmp_path, body), [ev(0, "a"), ev(30, "a"), ev(85, "b")])) == 1


@pytest.mark.parametrize(
    ("op", "count", "expected"),
    [("lt", 3, [2]), ("lte", 2, [2]), ("eq", 3, [3]), ("neq", 3, [2]), ("gt", 3, [])],
)
def test_closing_windows_are_decided_when_they_end(
    tmp_path: Path, op: str, count: int, expected: list[int]
) -> None:
    body = f"  type: event_count\n  rules: [a]\n  timespan: 1m\n  condition: {{{op}: {count}}}\n"
    d = detector(tmp_path, body, lateness_ms=1000)
    # a window of 2 events [0, 60], then one of 3 [100, 160]
    alerts = [a for t in (0, 30, 100, 110, 120) for a in d.observe(ev(t))]
    alerts += d.advance(T0_MS + 161_000)  # 161 - 1 s of lateness: 160 is not passed yet
    alerts += d.advance(T0_MS + 161_001)
    assert [a.measure for a in alerts] == expected
    assert d.flush() == []
    if expected == [2]:
        assert (alerts[0].window_start, alerts[0].window_end) == (T0_MS, T0_MS + 60_000)


def test_an_alert_leaves_once_the_watermark_passes_its_event(tmp_path: Path) -> None:
    d = detector(tmp_path, COUNT, lateness_ms=2_000)
    assert [a for i in range(10) for a in d.observe(ev(i))] == []
    assert d.advance(T0_MS + 10_999) == []
    (alert,) = d.advance(T0_MS + 11_000)
    assert alert.window_end == T0_MS + 9_000


def test_events_late_within_the_lateness_count_where_they_belong(tmp_path: Path) -> None:
    stream = [ev(i * 5) for i in range(10)]
    swapped = stream[:]
    for i in range(0, 10, 2):
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]  # each 5 s late
    expected = feed(detector(tmp_path, COUNT, lateness_ms=0), stream)
    d = detector(tmp_path, COUNT, lateness_ms=5_000)
    assert feed(d, swapped) == expected
    assert len(expected) == 1
    assert d.stats.late == 0


def test_an_event_later_than_the_lateness_counts_in_the_late_lane_only(tmp_path: Path) -> None:
    d = detector(tmp_path, COUNT, lateness_ms=1_000)
    stream = [ev(i) for i in range(1, 9)] + [ev(40), ev(0.5)]  # 0.5 s: 39.5 s late
    assert feed(d, stream) == []  # it would have been the tenth: a replay is apart
    assert (d.stats.late, d.stats.lost) == (1, 0)
    assert d.stats.matches == {"11111111-0000-4000-8000-00000000000a": 10}


def test_a_replayed_spool_is_correlated_in_the_late_lane(tmp_path: Path) -> None:
    """Ten failures spooled during an outage arrive after the stream moved on: they
    alert once, from the late lane, when it falls quiet; the on-time stream is not held."""
    d = detector(tmp_path, COUNT, lateness_ms=1_000)
    assert d.advance(T0_MS + 600_000) == []  # the tick: ten minutes on
    replay = [ev(100 + i) for i in range(10)]
    assert [a for e in replay for a in d.observe(e)] == []  # the lane holds its last second
    assert d.observe(ev(601, who="bob")) == []  # on time, meanwhile
    assert d.advance(T0_MS + 602_000) == []  # not quiet for 2 s yet
    (alert,) = d.advance(T0_MS + 602_001)
    assert alert.measure == 10
    assert alert.event_uids == tuple(e["metadata"]["uid"] for e in replay)
    assert (alert.window_start, alert.window_end) == (T0_MS + 100_000, T0_MS + 109_000)
    assert (d.stats.late, d.stats.lost) == (10, 0)
    assert d.advance(T0_MS + 604_000) == []
    # the same again after the lane fell quiet: a new lane, a new window
    assert d._correlator._lane is None
    again = [a for i in range(11) for a in d.observe(ev(300 + i))]  # the 11th releases
    assert [a.window_start for a in again] == [T0_MS + 300_000]


def test_the_late_lane_holds_its_own_order_and_closes_when_quiet(tmp_path: Path) -> None:
    body = "  type: event_count\n  rules: [a]\n  timespan: 1m\n  condition: {lt: 4}\n"
    d = detector(tmp_path, body, lateness_ms=1_000)
    assert d.advance(T0_MS + 600_000) == []
    assert [a for t in (10.5, 10, 30) for a in d.observe(ev(t))] == []  # 10.5 before 10
    assert d.stats.lost == 0
    assert d.advance(T0_MS + 601_500) == []  # not quiet yet: the window may still grow
    (alert,) = d.advance(T0_MS + 602_001)  # quiet for lane_quiet_ms (2 s): decided
    assert (alert.measure, alert.window_start) == (3, T0_MS + 10_000)
    assert d._correlator._lane is None


def test_a_match_too_late_for_the_late_lane_is_lost_and_counted(tmp_path: Path) -> None:
    d = detector(tmp_path, COUNT, lateness_ms=1_000)
    d.advance(T0_MS + 600_000)
    for t in (100, 200, 50):  # 50 s comes after the lane passed 199 s
        d.observe(ev(t))
    assert (d.stats.late, d.stats.lost) == (3, 0)  # lost is counted when the lane closes
    d.flush()
    assert (d.stats.late, d.stats.lost) == (3, 1)


def test_groups_are_bounded_and_dropped_once_out_of_the_window(tmp_path: Path) -> None:
    d = detector(tmp_path, COUNT, max_groups=2)
    for who in ("u1", "u2", "u3"):
        d.observe(ev(0, who=who))
    assert d.stats.groups_evicted == 1
    (window,) = d._correlator.windows  # the state itself: its bound is the point
    assert len(window.groups) == 2
    d.observe(ev(61, who="u4"))
    assert list(window.groups) == [("u4",)]


def test_alert_events_are_capped(tmp_path: Path) -> None:
    body = COUNT.replace("gte: 10", "gte: 50")
    (alert,) = feed(detector(tmp_path, body, max_alert_events=5), [ev(i / 10) for i in range(50)])
    assert alert.measure == 50
    assert len(alert.event_uids) == 5
    assert alert.event_uids[-1] == ev(4.9)["metadata"]["uid"]


# --- against a brute-force reading -----------------------------------------------------


def _sliding_reference(
    times: list[int], values: list[str], span: int, need: int, distinct: bool
) -> list[tuple[int, int]]:
    """(alert time, measure): at each event not absorbed by an alert's silence, the
    events (or distinct values) in [t - span, t] after the last silence."""
    alerts, silent = [], -(2**62)
    order = sorted(range(len(times)), key=lambda i: times[i])
    for position, i in enumerate(order):
        t = times[i]
        if t <= silent:
            continue
        inside = [j for j in order[: position + 1] if t - span <= times[j] and times[j] > silent]
        measure = len({values[j] for j in inside}) if distinct else len(inside)
        if measure >= need:
            alerts.append((t, measure))
            silent = t + span
    return alerts


@settings(max_examples=60)
@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=40),
    st.integers(1, 6),
    st.sampled_from(["event_count", "value_count"]),
    st.randoms(use_true_random=False),
)
def test_sliding_counts_match_the_reference(
    tmp_path_factory: pytest.TempPathFactory,
    seconds: list[int],
    need: int,
    kind: str,
    rnd: random.Random,
) -> None:
    field = ", field: unmapped.trustmesh.attributes.value" if kind == "value_count" else ""
    condition = f"{{gte: {need}{field}}}"
    body = f"  type: {kind}\n  rules: [a]\n  timespan: 30s\n  condition: {condition}\n"
    values = [rnd.choice("pqrs") for _ in seconds]
    stream = [
        ev(s + i / 1000, value=v) for i, (s, v) in enumerate(zip(seconds, values, strict=True))
    ]
    times = [e["time"] for e in stream]
    expected = _sliding_reference(times, values, 30_000, need, kind == "value_count")
    ordered = sorted(stream, key=lambda e: e["time"])
    late = [
        e
        for _, _, e in sorted(
            (e["time"] + rnd.randint(0, 3000), k, e) for k, e in enumerate(ordered)
        )
    ]
    for order, lateness in ((ordered, 0), (late, 3000)):
        d = detector(tmp_path_factory.mktemp("c"), body, lateness_ms=lateness)
        alerts: list[Alert] = feed(d, order)
        assert [(a.window_end, a.measure) for a in alerts] == expected
        assert d.stats.late == 0


def _closing_reference(times: list[int], span: int, below: int) -> list[int]:
    counts, start = [], None
    for t in sorted(times):
        if start is None or t > start + span:
            counts.append(0)
            start = t
        counts[-1] += 1
    return [c for c in counts if c < below]


@settings(max_examples=40)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=30), st.integers(1, 5))
def test_closing_counts_match_the_reference(
    tmp_path_factory: pytest.TempPathFactory, seconds: list[int], below: int
) -> None:
    body = f"  type: event_count\n  rules: [a]\n  timespan: 20s\n  condition: {{lt: {below}}}\n"
    stream = [ev(s + i / 1000) for i, s in enumerate(seconds)]
    d = detector(tmp_path_factory.mktemp("c"), body)
    alerts = feed(d, sorted(stream, key=lambda e: e["time"]))
    assert [a.measure for a in alerts] == _closing_reference(
        [e["time"] for e in stream], 20_000, below
    )
