from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.config import format_duration, parse_duration
from trustmesh.config.durations import seconds_or_zero


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (3600, timedelta(hours=1)),
        ("3600", timedelta(hours=1)),
    ],
)
def test_parse_accepts_seconds_and_unit_strings(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "value",
    [0, -5, "0s", "-5m", "", "0", "5x", "١٢", "1m1h", "1h 30m", " 1h", "1H", "1.5h", 1.5, 10.0,
     True, False, None, [10], "99999999999d", 10**12],
)  # fmt: skip
def test_parse_refuses_garbage(value: object) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_duration(value)


def test_format_is_canonical() -> None:
    assert format_duration(timedelta(hours=24)) == "1d"
    assert format_duration(timedelta(seconds=5400)) == "1h30m"
    with pytest.raises(ValueError, match="positive"):
        format_duration(timedelta(0))


@given(st.integers(min_value=1, max_value=100 * 365 * 86_400))
def test_format_then_parse_round_trips(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    text = format_duration(duration)
    assert parse_duration(text) == duration
    assert parse_duration(seconds) == duration


@given(st.text(max_size=20))
def test_parse_text_either_succeeds_positive_or_raises_value_error(text: str) -> None:
    try:
        parsed = parse_duration(text)
    except ValueError:
        return
    assert parsed > timedelta(0)
    assert format_duration(parsed) == format_duration(parse_duration(format_duration(parsed)))


def test_a_vault_ttl_field_is_seconds_a_duration_or_none() -> None:
    """seconds_or_zero: Vault's TTL fields, where 0 in any spelling (or nothing) is none."""
    for none in (None, "", 0, "0", "0s", "00m"):
        assert seconds_or_zero(none) == 0, none
    assert seconds_or_zero(90) == 90
    assert seconds_or_zero("90") == 90
    assert seconds_or_zero("1h30m") == 5400
    for bad in (-1, True, 1.5, "soon", "1y", [1]):
        with pytest.raises(ValueError, match=r"duration|boolean|float|positive"):
            seconds_or_zero(bad)
