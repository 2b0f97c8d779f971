"""Wait for evidence rather than for a fixed time: a test asks until the thing it
expects is there, within a deadline that only bounds a failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["until", "until_async"]

T = TypeVar("T")


def _found(answer: object) -> bool:
    """An answer counts unless it is None, False or empty (0 is an answer)."""
    if answer is None or answer is False:
        return False
    return not (hasattr(answer, "__len__") and len(answer) == 0)


def _late(what: str, within: float, answer: object) -> str:
    said = repr(answer)
    return f"{what}: not within {within} s (last answer {said[:200]})"


def until(found: Callable[[], T | None], what: str, within: float = 10.0, every: float = 0.1) -> T:
    """Ask ``found`` every ``every`` seconds until it answers (not None, False or empty)
    and return the answer; raise AssertionError naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        answer = found()
        if _found(answer):
            return answer  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_late(what, within, answer))
        time.sleep(every)


async def until_async(
    found: Callable[[], Awaitable[T | None] | T | None],
    what: str,
    within: float = 10.0,
    every: float = 0.1,
) -> T:
    """`until` for a coroutine: ``found`` may be a plain or an async function."""
    deadline = time.monotonic() + within
    while True:
        answer = found()
        if asyncio.iscoroutine(answer) or isinstance(answer, asyncio.Future):
            answer = await answer
        if _found(answer):
            return answer  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_late(what, within, answer))
        await asyncio.sleep(every)
