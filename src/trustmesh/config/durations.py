"""Durations in the declaration: an integer number of seconds or ``"1d2h30m10s"``.

A duration is stored as :class:`datetime.timedelta`, shown in the JSON Schema as
string-or-integer, and serialized back (JSON mode) in its canonical string form.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "DURATION_EXPECTED",
    "Duration",
    "format_duration",
    "parse_duration",
    "seconds_or_zero",
]

DURATION_EXPECTED: Final = (
    'a positive whole number of seconds, or a string like "10s", "5m", "1h", "7d" or "1h30m"'
)

# Bare digits are seconds (as on a command line: "--ttl 3600"); otherwise units in
# descending order, each at most once (the lookahead refuses the empty string).
# Digits are bounded so that a hostile value never builds a huge integer.
_PATTERN: Final = (
    r"^(?:[0-9]{1,10}|(?=[0-9])"
    r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?)$"
)
_DURATION_RE: Final = re.compile(_PATTERN)
_UNITS: Final = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
_MAX_SECONDS: Final = 100 * 365 * 86_400  # a century; anything longer is a typo


def parse_duration(value: object) -> timedelta:
    """Parse an ``int`` of seconds or a ``"1h30m"`` string into a positive ``timedelta``.

    Raises :class:`ValueError` (with a message saying what was expected) for booleans,
    floats, zero, negative numbers, unknown units and anything else.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds != int(seconds):
            raise ValueError("must be a whole number of seconds")
        return _checked(int(seconds))
    if isinstance(value, bool):  # bool is an int subclass: refuse it explicitly
        raise ValueError(f"{value!r} is a boolean, not a duration")
    if isinstance(value, int):
        return _checked(value)
    if isinstance(value, float):
        raise ValueError(f"{value!r} is a float; write whole seconds or a unit string")
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration")
        if value.isdigit():
            return _checked(int(value))
        total = sum(
            int(group) * factor
            for group, (_, factor) in zip(match.groups(), _UNITS, strict=True)
            if group is not None
        )
        return _checked(total)
    raise ValueError(f"a {type(value).__name__} is not a duration")


def seconds_or_zero(value: object) -> int:
    """A TTL field as the Vault API takes it: whole seconds or a ``"1h30m"`` string, where
    ``None``, ``""``, ``0``, ``"0"`` and ``"0s"`` mean none (0). ValueError otherwise."""
    if value is None or value == "" or (value == 0 and not isinstance(value, bool)):
        return 0
    if isinstance(value, str) and re.fullmatch(r"0+[smhd]?", value):
        return 0
    return int(parse_duration(value).total_seconds())


def _checked(seconds: int) -> timedelta:
    if seconds <= 0:
        raise ValueError(f"{seconds} seconds is not a positive duration")
    if seconds > _MAX_SECONDS:
        raise ValueError(f"{seconds} seconds is longer than a century")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The canonical string form: ``timedelta(hours=1, minutes=30)`` → ``"1h30m"``."""
    remaining = int(value.total_seconds())
    if remaining <= 0 or remaining != value.total_seconds():
        raise ValueError(f"{value!r} is not a positive whole number of seconds")
    parts: list[str] = []
    for unit, factor in _UNITS:
        count, remaining = divmod(remaining, factor)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _validate(value: Any) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError(
            "duration",
            "{problem} (expected {expected})",
            {"problem": str(exc), "expected": DURATION_EXPECTED},
        ) from None


Duration = Annotated[
    timedelta,
    PlainValidator(_validate),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "description": "seconds"},
                {"type": "string", "pattern": _PATTERN},
            ]
        }
    ),
]
"""A pydantic field type for durations (see :func:`parse_duration`)."""
