"""Login lockout with backoff, as a pure policy.

Failures are counted per login name whether or not the name exists (an unknown user is
locked out exactly like a known one: the answers never tell them apart). From the
``threshold``-th failure on, the name is locked for ``base_delay`` doubled at every
further failure, up to ``max_delay``; a success clears it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LockoutPolicy:
    threshold: int = 5
    base_delay: float = 30.0
    max_delay: float = 3600.0


@dataclass(frozen=True)
class LoginState:
    failures: int = 0
    locked_until: float = 0.0

    def locked(self, now: float) -> bool:
        return now < self.locked_until

    def retry_after(self, now: float) -> float:
        return max(0.0, self.locked_until - now)


def after_failure(state: LoginState, now: float, policy: LockoutPolicy) -> LoginState:
    failures = state.failures + 1
    if failures < policy.threshold:
        return LoginState(failures, state.locked_until)
    delay = min(policy.max_delay, policy.base_delay * 2 ** (failures - policy.threshold))
    return LoginState(failures, max(state.locked_until, now + delay))


def after_success() -> LoginState:
    return LoginState()


def normalize_login(name: str) -> str:
    """The key failures are counted under: case- and whitespace-insensitive."""
    return " ".join(name.split()).casefold()
