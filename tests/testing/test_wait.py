"""`trustmesh.testing.until`: a test waits for its evidence, and a missing one fails
with what was awaited and the last answer, not a bare timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from trustmesh.testing import until, until_async


def test_until_returns_the_first_answer_that_counts() -> None:
    answers = iter([None, False, [], "", 0])
    assert until(lambda: next(answers), "an answer", within=2, every=0.001) == 0


def test_until_fails_naming_what_it_awaited_and_the_last_answer() -> None:
    started = time.monotonic()
    with pytest.raises(
        AssertionError, match=r"the log line: not within 0\.2 s \(last answer \[\]\)"
    ):
        until(lambda: [], "the log line", within=0.2, every=0.01)
    assert 0.2 <= time.monotonic() - started < 2


def test_until_async_awaits_a_coroutine_and_takes_a_plain_function() -> None:
    calls = {"n": 0}

    async def third_time() -> str | None:
        calls["n"] += 1
        return "ok" if calls["n"] == 3 else None

    assert asyncio.run(until_async(third_time, "the third call", within=2, every=0.001)) == "ok"
    assert asyncio.run(until_async(lambda: {"a": 1}, "a dict", within=1)) == {"a": 1}
    with pytest.raises(AssertionError, match=r"never: not within 0\.05 s"):
        asyncio.run(until_async(lambda: None, "never", within=0.05, every=0.01))
