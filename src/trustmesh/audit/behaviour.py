"""What Sigma cannot say about one event on its own: its local time of day, and whether a
value has been seen before.

**Derived fields.** A rule may name, beside the OCSF fields, three fields computed from
the event's ``time`` (epoch milliseconds) in the configured timezone
(:class:`WorkingHours`): ``derived.hour`` (0-23), ``derived.weekday`` (ISO: 1 Monday -
7 Sunday) and ``derived.working_hours`` (a boolean: the weekday is a working day and
``start <= hour < end``). Sigma's timestamp modifiers (``time|hour: 3``) read the same
local time. The conversion is made once per event time (:class:`LocalTime` keeps the last
one), never from the wall clock. Any other ``derived.*`` name is refused when the rule
loads.

**First seen.** :class:`FirstSeen` is the memory of one rule's ``baseline`` (see
:mod:`trustmesh.audit.extensions`): the keys it has seen, least recently seen first.
It learns silently from the first event it is shown until ``learning`` has passed in
event time; after that a key it does not hold is new (it alerts once: the key is then
held). At ``capacity`` keys the least recently seen is forgotten (counted in
``evicted``): a key seen again after being forgotten is new again. The memory starts
empty with the process and is rebuilt from the log's recent events when the collector
starts (:meth:`~trustmesh.audit.service.AuditService.warm_start`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sigma.types import TimestampPart

from trustmesh.errors import ConfigError

__all__ = ["DERIVED_FIELDS", "MISSING", "FirstSeen", "LocalTime", "WorkingHours"]

#: What a field lookup returns when the event does not hold the field.
MISSING: Final[Any] = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
#: The derived fields a rule may name.
DERIVED_FIELDS: Final = ("derived.hour", "derived.weekday", "derived.working_hours")


@dataclass(frozen=True)
class WorkingHours:
    """When people work: an IANA ``timezone``, the ISO weekdays that are working days,
    and the hours ``start <= hour < end`` of a working day."""

    timezone: str = "UTC"
    days: frozenset[int] = field(default_factory=lambda: frozenset({1, 2, 3, 4, 5}))
    start: int = 8
    end: int = 18

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"detection.timezone: {self.timezone!r} is not an IANA timezone"
            ) from None
        if not self.days <= frozenset(range(1, 8)):
            raise ConfigError("detection.working_days: ISO weekdays, 1 (Monday) to 7 (Sunday)")
        if not 0 <= self.start < self.end <= 24:
            raise ConfigError("detection.working_hours: expected 0 <= start < end <= 24")


_PARTS: Final[dict[TimestampPart, Callable[[datetime], int]]] = {
    TimestampPart.MINUTE: lambda d: d.minute,
    TimestampPart.HOUR: lambda d: d.hour,
    TimestampPart.DAY: lambda d: d.day,
    TimestampPart.WEEK: lambda d: d.isocalendar().week,
    TimestampPart.MONTH: lambda d: d.month,
    TimestampPart.YEAR: lambda d: d.year,
}


class LocalTime:
    """An event time (epoch milliseconds) as a local datetime, and the derived fields."""

    def __init__(self, hours: WorkingHours) -> None:
        self.hours = hours
        self._tz: tzinfo = ZoneInfo(hours.timezone)
        self._last: tuple[int, datetime] | None = None

    def at(self, ms: object) -> datetime | None:
        """The local datetime of ``ms``; None for anything but an integer (not a bool)."""
        if type(ms) is not int:
            return None
        last = self._last
        if last is not None and last[0] == ms:
            return last[1]
        try:
            local = datetime.fromtimestamp(ms / 1000, self._tz)
        except (OverflowError, OSError, ValueError):
            return None
        self._last = (ms, local)
        return local

    def part(self, part: TimestampPart) -> Callable[[object], int | None]:
        """The timestamp modifier ``part`` (``hour``, ``day``…) of an epoch-ms value."""
        read = _PARTS[part]

        def of(ms: object) -> int | None:
            local = self.at(ms)
            return None if local is None else read(local)

        return of

    def getter(self, name: str) -> Callable[[Mapping[str, Any]], Any]:
        """The lookup of the derived field ``name`` (KeyError for an unknown one)."""
        hours = self.hours
        read: Callable[[datetime], Any] = {
            "derived.hour": lambda d: d.hour,
            "derived.weekday": lambda d: d.isoweekday(),
            "derived.working_hours": lambda d: (
                d.isoweekday() in hours.days and hours.start <= d.hour < hours.end
            ),
        }[name]

        def get(event: Mapping[str, Any]) -> Any:
            local = self.at(event.get("time"))
            return MISSING if local is None else read(local)

        return get


class FirstSeen:
    """The keys one rule has seen, bounded; see the module docstring."""

    def __init__(self, learning_ms: int, capacity: int) -> None:
        self.learning_ms = learning_ms
        self.capacity = capacity
        self.evicted = 0
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._learning_until: int | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def is_new(self, key: Hashable, time_ms: int) -> bool:
        """Whether ``key`` is new at ``time_ms`` (learning over, not held); it is held
        from now on."""
        if self._learning_until is None:
            self._learning_until = time_ms + self.learning_ms
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
            return False
        seen[key] = None
        if len(seen) > self.capacity:
            seen.popitem(last=False)
            self.evicted += 1
        return time_ms >= self._learning_until
