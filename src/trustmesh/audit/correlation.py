"""Sigma correlation rules over event time: ``event_count``, ``value_count``, ``temporal``
and ``temporal_ordered``, per group (the values of ``group-by``), with bounded state.

**Order.** Events are correlated in event-time order. :class:`Correlator` holds each
match back until the watermark (the latest event time seen, minus ``lateness_ms``) passes
it, and releases the held matches in time order: an event up to ``lateness_ms`` late is
counted exactly where it belongs. A correlation alert therefore leaves
:meth:`Correlator.advance` once the watermark passes its last event (``lateness_ms`` of
event time after it), or at :meth:`Correlator.flush` (end of a replay). At ``max_buffer``
held matches the oldest are released early (``forced``).

**Late events.** A match older than the watermark already released (``late``: a spool
replayed after an outage, a producer whose clock or link lagged) is correlated in a
*late lane*: a second set of windows, fed only late matches, in their own event-time
order with the same lateness. The lane is decided and forgotten once no late match has
arrived for ``lane_quiet_ms`` of stream time (twice the lateness, at least 2 s), so the
alerts of a replay leave within that of its last event. A replay is correlated with
itself, not with the on-time events of the same window: a burst split across an outage
(five failures before, five in the spool) is counted as two. A match too late even for
the lane's own watermark is counted in no window (``lost``), though the rule it matched
still alerts on its own if it does.

**Windows.** A window is ``timespan`` long, both ends included.

* A condition ``gt``/``gte`` (and every extended temporal condition) slides: it is decided
  at each event over the window ending at it, and alerts at the first event that makes
  it true. The window of the alert runs from its earliest event to that event.
* ``lt``/``lte``/``eq``/``neq`` cannot be decided before a window ends: a group's window
  opens at its first event, closes ``timespan`` later, and is decided then; the next
  event opens the next window. A group with no event has no window (absence is not
  detected).
* ``event_count`` counts events; ``value_count`` the distinct values of its field (an
  event without the field is not counted); ``temporal`` the distinct rules matched (or
  decides its extended condition on them); ``temporal_ordered`` alerts when its rules
  matched in their order, the first and the last at most ``timespan`` apart.

**Deduplication.** One alert per rule and group per window: after a sliding alert the
group is silent for ``timespan`` (its events are absorbed, not counted), then counts
afresh; a closing window alerts at most once. An event that lacks a group-by field is not
correlated.

**Bounds.** Per rule at most ``max_groups`` groups: past it the least recently updated
group is forgotten (``evicted``). A group whose newest event left the window is dropped
when the watermark passes. An alert links at most ``max_events`` event uids (the latest).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from trustmesh.audit.ruleset import CorrelationRule, CorrelationType

__all__ = ["Correlator", "Firing", "Hit"]

_NEVER: Final = 2**63


@dataclass(frozen=True, slots=True)
class Hit:
    """One event matched by rules a correlation references."""

    time: int
    uid: str
    rules: tuple[str, ...]  # the referenced rules it matched, in the correlation's order
    group: tuple[Hashable, ...]
    value: Hashable  # value_count's field; None otherwise
    targets: tuple[Any, ...]  # per response action of the correlation


@dataclass(frozen=True, slots=True)
class Firing:
    """A correlation's condition held for a group."""

    rule: CorrelationRule
    group: tuple[Hashable, ...]
    start: int
    end: int
    uids: tuple[str, ...]
    measure: int
    targets: tuple[Any, ...]


class _Group:
    """One group's state in one window (sliding or closing)."""

    __slots__ = (
        *("chain", "count", "events", "last", "seen", "serial", "silent_until", "start"),
        "targets",
    )

    def __init__(self, start: int, serial: int) -> None:
        self.start = start
        self.serial = serial
        self.last = start
        self.silent_until = -_NEVER
        self.count = 0
        self.events: deque[tuple[int, str]] = deque()  # event_count (sliding), uids (closing)
        self.seen: OrderedDict[Hashable, tuple[int, str]] = OrderedDict()  # value/rule: latest
        self.chain: list[tuple[int, tuple[str, ...]] | None] = []  # temporal_ordered
        self.targets: tuple[Any, ...] = ()


class _Window:
    """The groups of one correlation rule."""

    def __init__(self, rule: CorrelationRule, max_groups: int, max_events: int) -> None:
        self.rule = rule
        self.span = rule.timespan_ms
        self.sliding = rule.threshold is None or rule.threshold.monotone
        self.max_groups, self.max_events = max_groups, max_events
        self.groups: OrderedDict[tuple[Hashable, ...], _Group] = OrderedDict()
        self.ends: list[tuple[int, int, tuple[Hashable, ...]]] = []  # closing windows
        self.evicted = 0
        self._serial = 0
        self._order = {key: i for i, key in enumerate(rule.rules)}
        # a closing window's measure decides nothing more past its threshold's count + 1
        threshold = rule.threshold
        self.cap = int(threshold.count) + 2 if threshold is not None else len(rule.rules)

    def due(self) -> int:
        """The earliest watermark at which :meth:`close` has something to do."""
        due = self.ends[0][0] + 1 if self.ends else _NEVER
        if self.sliding and self.groups:
            due = min(due, next(iter(self.groups.values())).last + self.span + 1)
        return due

    def add(self, hit: Hit) -> Firing | None:
        """Count ``hit`` (hits come in time order); the firing it causes, if any."""
        key, closed = hit.group, None
        group = self.groups.get(key)
        if group is not None and not self.sliding and hit.time > group.start + self.span:
            del self.groups[key]  # its window ended: decided before the next one opens
            closed, group = self._decide(key, group), None
        if group is None:
            group = self._open(hit)
        else:
            self.groups.move_to_end(key)
        if hit.time > group.last:
            group.last = hit.time
        group.targets = hit.targets
        if not self.sliding:
            self._accumulate(hit, group)
            return closed
        if hit.time <= group.silent_until:
            return None  # absorbed: the group alerted in this window already
        return self._slide(hit, group)

    def _open(self, hit: Hit) -> _Group:
        self._serial += 1
        group = self.groups[hit.group] = _Group(hit.time, self._serial)
        if not self.sliding:
            heapq.heappush(self.ends, (hit.time + self.span, self._serial, hit.group))
        if len(self.groups) > self.max_groups:
            self.groups.popitem(last=False)
            self.evicted += 1
        return group

    def _accumulate(self, hit: Hit, group: _Group) -> None:
        group.count += 1
        group.events.append((hit.time, hit.uid))
        if len(group.events) > self.max_events:
            group.events.popleft()
        seen = group.seen
        for item in self._items(hit):
            if item in seen or len(seen) < self.cap:  # past the cap the decision is made
                seen[item] = (hit.time, hit.uid)

    def _items(self, hit: Hit) -> Sequence[Hashable]:
        kind = self.rule.type
        if kind is CorrelationType.VALUE_COUNT:
            return () if hit.value is None else (hit.value,)
        if kind is CorrelationType.EVENT_COUNT:
            return ()
        return hit.rules

    def _slide(self, hit: Hit, group: _Group) -> Firing | None:
        rule, oldest = self.rule, hit.time - self.span
        if rule.type is CorrelationType.TEMPORAL_ORDERED:
            return self._ordered(hit, group, oldest)
        if rule.type is CorrelationType.EVENT_COUNT:
            events = group.events
            events.append((hit.time, hit.uid))
            while events[0][0] < oldest:
                events.popleft()
            measure, start, uids = len(events), events[0][0], [uid for _, uid in events]
        else:
            seen = group.seen
            for item in self._items(hit):
                seen[item] = (hit.time, hit.uid)
                seen.move_to_end(item)
            while seen and next(iter(seen.values()))[0] < oldest:
                seen.popitem(last=False)
            if not seen:
                return None
            measure = len(seen)
            start = next(iter(seen.values()))[0]
            uids = list(dict.fromkeys(uid for _, uid in seen.values()))
        if rule.expression is not None:
            holds = rule.expression(frozenset(str(key) for key in group.seen))
        else:
            assert rule.threshold is not None  # noqa: S101 - a plain condition has one
            holds = rule.threshold.holds(measure)
        if not holds:
            return None
        return self._fire(hit, group, start, uids, measure)

    def _ordered(self, hit: Hit, group: _Group, oldest: int) -> Firing | None:
        chain = group.chain or [None] * len(self.rule.rules)
        group.chain = chain
        for step in sorted((self._order[key] for key in hit.rules), reverse=True):
            if step == 0:
                candidate: tuple[int, tuple[str, ...]] | None = (hit.time, (hit.uid,))
            else:
                before = chain[step - 1]
                candidate = None
                if before is not None and before[0] >= oldest:
                    candidate = (before[0], (*before[1], hit.uid))
            current = chain[step]
            if candidate is not None and (current is None or candidate[0] >= current[0]):
                chain[step] = candidate
        done = chain[-1]
        if done is None or done[0] < oldest:
            return None
        return self._fire(hit, group, done[0], list(done[1]), len(chain))

    def _fire(self, hit: Hit, group: _Group, start: int, uids: list[str], measure: int) -> Firing:
        self._serial += 1
        fresh = _Group(hit.time, self._serial)
        fresh.silent_until = hit.time + self.span
        self.groups[hit.group] = fresh
        return Firing(
            self.rule,
            hit.group,
            start,
            hit.time,
            tuple(uids[-self.max_events :]),
            measure,
            hit.targets,
        )

    def _decide(self, key: tuple[Hashable, ...], group: _Group) -> Firing | None:
        rule = self.rule
        assert rule.threshold is not None  # noqa: S101 - closing windows have a threshold
        measure = group.count if rule.type is CorrelationType.EVENT_COUNT else len(group.seen)
        if not rule.threshold.holds(measure):
            return None
        uids = tuple(uid for _, uid in group.events)
        return Firing(rule, key, group.start, group.start + self.span, uids, measure, group.targets)

    def close(self, watermark: int) -> list[Firing]:
        """Decide the closing windows that ended before ``watermark``; drop the groups
        nothing can count any more."""
        firings = []
        ends = self.ends
        while ends and ends[0][0] < watermark:
            _, serial, key = heapq.heappop(ends)
            group = self.groups.get(key)
            if group is not None and group.serial == serial:
                del self.groups[key]
                firing = self._decide(key, group)
                if firing is not None:
                    firings.append(firing)
        if self.sliding:
            groups, oldest = self.groups, watermark - self.span
            while groups and next(iter(groups.values())).last < oldest:
                groups.popitem(last=False)
        return firings


class Correlator:
    """Every correlation rule's windows, fed in event-time order (module docstring)."""

    def __init__(
        self,
        rules: Sequence[CorrelationRule],
        *,
        lateness_ms: int,
        max_groups: int,
        max_events: int,
        max_buffer: int = 100_000,
    ) -> None:
        self.windows = [_Window(rule, max_groups, max_events) for rule in rules]
        self._rules, self._bounds = rules, (max_groups, max_events)
        self.lateness_ms = lateness_ms
        self.max_buffer = max_buffer
        self.late = 0  # matches that went to the late lane
        self.lost = 0  # matches too late for the late lane too
        self.forced = 0
        self.lane_quiet_ms = max(2 * lateness_ms, 2_000)
        self._lane: Correlator | None = None
        self._lane_seen = -_NEVER  # the stream time when a match last went to the lane
        self._lane_firings: list[Firing] = []
        self._is_lane = False
        self._held: list[tuple[int, int, int, Hit]] = []
        self._seq = 0
        self._latest = -_NEVER
        self._released = -_NEVER
        self._due = _NEVER

    @property
    def evicted(self) -> int:
        lane = self._lane.evicted if self._lane is not None else 0
        return sum(w.evicted for w in self.windows) + lane

    def push(self, index: int, hit: Hit) -> None:
        """Hold ``hit`` for the window of rule ``index`` until the watermark passes it
        (a late one goes to the late lane: module docstring)."""
        if hit.time < self._released:
            if self._is_lane:
                self.lost += 1
                return
            self.late += 1
            lane = self._lane
            if lane is None:
                max_groups, max_events = self._bounds
                lane = self._lane = Correlator(
                    self._rules,
                    lateness_ms=self.lateness_ms,
                    max_groups=max_groups,
                    max_events=max_events,
                    max_buffer=self.max_buffer,
                )
                lane._is_lane = True
            lane.push(index, hit)
            self._lane_firings.extend(lane.advance(hit.time))
            self._lane_seen = self._latest
            return
        self._seq += 1
        heapq.heappush(self._held, (hit.time, self._seq, index, hit))

    def advance(self, time_ms: int) -> list[Firing]:
        """An event of ``time_ms`` was seen: release what the watermark passed (and
        what the late lane decided)."""
        if time_ms > self._latest:
            self._latest = time_ms
        watermark = self._latest - self.lateness_ms
        held = self._held
        firings: list[Firing] = []
        due = (held and held[0][0] <= watermark) or watermark >= self._due
        if due or len(held) > self.max_buffer:
            firings = self._release(watermark)
        elif watermark > self._released:
            self._released = watermark  # passed with nothing held: older is late
        if self._lane is not None:
            firings += self._drain_lane(quiet=self._latest - self._lane_seen > self.lane_quiet_ms)
        return firings

    def _drain_lane(self, *, quiet: bool) -> list[Firing]:
        lane = self._lane
        firings, self._lane_firings = self._lane_firings, []
        if quiet and lane is not None:
            firings += lane.flush()
            self.lost += lane.lost
            self.forced += lane.forced
            self._lane = None
        return firings

    def flush(self) -> list[Firing]:
        """Release every held match and decide every open window, then forget them
        (the end of a replay, or of the stream); the late lane's too."""
        firings = self._release(_NEVER - 1)
        for window in self.windows:
            window.groups.clear()
            window.ends.clear()
        self._released, self._due = self._latest, _NEVER
        if self._lane is not None:
            firings += self._drain_lane(quiet=True)
        return firings

    def _release(self, watermark: int) -> list[Firing]:
        firings: list[Firing] = []
        held, windows = self._held, self.windows
        while held and (held[0][0] <= watermark or len(held) > self.max_buffer):
            time, _, index, hit = heapq.heappop(held)
            if time > watermark:
                self.forced += 1
                watermark = time
            window = windows[index]
            firing = window.add(hit)
            if firing is not None:
                firings.append(firing)
            self._due = min(self._due, window.due())
        if watermark > self._released:
            self._released = watermark
        if watermark >= self._due:
            for window in windows:
                firings.extend(window.close(watermark))
            self._due = min((w.due() for w in windows), default=_NEVER)
        return firings
