"""Which instance of a service takes the next request: pure decisions, no I/O.

The state of one service's pool, fed with what happened (a request's outcome, a health
probe's result, the time) and asked for a choice. It never sleeps, reads a clock or
touches a socket: ``now`` is always a parameter, randomness an injected ``Random``.

* **Balancing.** ``round_robin`` takes the instances in turn; ``least_requests`` takes
  one with the fewest requests in flight, ties broken at random.
* **Active health** (probes): an instance is *unhealthy* after ``unhealthy_after`` failed
  probes in a row and *healthy* again after ``healthy_after`` good ones in a row. New
  instances start healthy: discovery lists only instances that renew their lease.
* **Passive outlier ejection** (Envoy's consecutive-5xx detector, a circuit breaker per
  instance): an instance that fails ``consecutive_failures`` requests in a row
  (connection error, timeout, 502/503/504) is *ejected* for ``ejection``, doubled at each new
  ejection up to ``max_ejection``. When its time is up it is *restored on probation*: its
  first outcome decides — a failure ejects it again at once (the half-open circuit
  re-opens), a success closes the circuit. The doubling resets once it has served, without
  a new ejection, for as long as its last ejection lasted.
* **The ejection cap.** At most ``max_ejected_percent`` of a pool (rounded down) is
  ejected at once, so that a burst of bad requests cannot empty a pool of working
  instances; a failing instance over the cap stays in rotation. One exception: when
  *every* instance is failing (ejected, unhealthy, or at its failure threshold — there
  is no instance left with evidence that it works), the failing ones are all ejected and
  the pool answers "no instance" at once. Envoy would instead enter panic mode and spread
  load over the failing hosts; here a fast ``503`` is preferred to sending each client's
  request to an instance that has just failed ``consecutive_failures`` times in a row,
  and waiting for it. The first restoration ends that state.
* **Never an unhealthy or ejected instance.** When no instance is eligible, ``pick``
  says so (``Pick.key is None``) and the caller answers ``503`` without a network wait.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from trustmesh.config.gateway import HealthCheck, OutlierDetection

__all__ = [
    "Balance",
    "Balancer",
    "Change",
    "HealthRules",
    "InstanceView",
    "OutlierRules",
    "Pick",
    "State",
]

Balance = Literal["round_robin", "least_requests"]
#: What happened to an instance: ``ejected`` / ``restored`` (passive), ``unhealthy`` /
#: ``healthy`` (active probes).
State = Literal["ejected", "restored", "unhealthy", "healthy"]
_MAX_DOUBLINGS: Final = 32  # 2**32 × the base is longer than any max_ejection


@dataclass(frozen=True)
class OutlierRules:
    """Passive ejection, in seconds (see :class:`~trustmesh.config.gateway.OutlierDetection`)."""

    consecutive_failures: int = 5
    ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejected_percent: int = 50

    @classmethod
    def of(cls, settings: OutlierDetection) -> OutlierRules:
        return cls(
            settings.consecutive_failures,
            settings.ejection.total_seconds(),
            settings.max_ejection.total_seconds(),
            settings.max_ejected_percent,
        )

    def duration(self, ejections: int) -> float:
        """How long the ``ejections``-th ejection in a row lasts: doubled each time, capped."""
        doublings = min(max(ejections - 1, 0), _MAX_DOUBLINGS)
        return min(self.ejection * float(1 << doublings), self.max_ejection)

    def cap(self, size: int) -> int:
        """How many instances of a pool of ``size`` may be ejected at once."""
        return size * self.max_ejected_percent // 100


@dataclass(frozen=True)
class HealthRules:
    """Active health: how many probes in a row flip an instance's state."""

    unhealthy_after: int = 2
    healthy_after: int = 1

    @classmethod
    def of(cls, settings: HealthCheck) -> HealthRules:
        return cls(settings.unhealthy_after, settings.healthy_after)


@dataclass(frozen=True)
class Change:
    """An instance changed state: the gateway records it (an event, a log line)."""

    key: str
    state: State
    why: str


@dataclass(frozen=True)
class Pick:
    """The chosen instance (``None``: none is eligible) and what changed on the way
    (ejections that ended)."""

    key: str | None
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class InstanceView:
    """One instance as the status page and metrics see it."""

    key: str
    healthy: bool
    ejected_until: float | None
    in_flight: int
    failures: int
    ejections: int


@dataclass
class _Instance:
    healthy: bool = True
    probe_failures: int = 0
    probe_successes: int = 0
    failures: int = 0  # passive outcomes: failures in a row
    ejected_until: float | None = None
    ejections: int = 0  # the doubling level
    last_ejection: float = 0.0
    restored_at: float | None = None
    probation: bool = False
    in_flight: int = 0


class Balancer:
    """The pool of one service, keyed by instance (its URL)."""

    def __init__(
        self,
        *,
        balance: Balance = "least_requests",
        outlier: OutlierRules | None = None,
        health: HealthRules | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.balance = balance
        self.outlier = outlier or OutlierRules()
        self.health = health or HealthRules()
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not a secret
        self._order: list[str] = []
        self._instances: dict[str, _Instance] = {}
        self._cursor = 0

    # --- membership -------------------------------------------------------------------

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._order)

    def update(self, keys: Iterable[str]) -> tuple[str, ...]:
        """Make the pool exactly ``keys`` (discovery's latest answer), keeping the state of
        instances that stay; return the keys that left."""
        order = list(dict.fromkeys(keys))
        gone = tuple(k for k in self._order if k not in set(order))
        self._instances = {k: self._instances.get(k) or _Instance() for k in order}
        self._order = order
        return gone

    # --- choosing ---------------------------------------------------------------------

    def expire(self, now: float) -> tuple[Change, ...]:
        """Restore, on probation, every instance whose ejection is over."""
        changes = []
        for key in self._order:
            inst = self._instances[key]
            if inst.ejected_until is not None and inst.ejected_until <= now:
                inst.ejected_until = None
                inst.restored_at = now
                inst.probation = True
                inst.failures = 0
                changes.append(
                    Change(key, "restored", f"ejection of {inst.last_ejection:g}s ended")
                )
        return tuple(changes)

    def eligible(self, key: str, now: float) -> bool:
        """Healthy and not ejected: may take a request."""
        inst = self._instances.get(key)
        return inst is not None and inst.healthy and not _ejected(inst, now)

    def pick(self, now: float, exclude: Sequence[str] | frozenset[str] = ()) -> Pick:
        """The instance for the next request, never one in ``exclude`` (already tried)."""
        changes = self.expire(now)
        skip = frozenset(exclude)
        candidates = [k for k in self._order if k not in skip and self.eligible(k, now)]
        if not candidates:
            return Pick(None, changes)
        if self.balance == "round_robin":
            allowed = frozenset(candidates)
            size = len(self._order)
            for step in range(size):
                index = (self._cursor + step) % size
                key = self._order[index]
                if key in allowed:
                    self._cursor = index + 1
                    return Pick(key, changes)
        fewest = min(self._instances[k].in_flight for k in candidates)
        tied = [k for k in candidates if self._instances[k].in_flight == fewest]
        return Pick(tied[0] if len(tied) == 1 else self._rng.choice(tied), changes)

    def begin(self, key: str) -> None:
        inst = self._instances.get(key)
        if inst is not None:
            inst.in_flight += 1

    def end(self, key: str) -> None:
        inst = self._instances.get(key)
        if inst is not None and inst.in_flight > 0:
            inst.in_flight -= 1

    # --- outcomes ---------------------------------------------------------------------

    def record(self, key: str, ok: bool, now: float, why: str = "failed") -> tuple[Change, ...]:
        """A request's outcome on ``key`` (passive detection); ``why`` names a failure."""
        changes = self.expire(now)
        inst = self._instances.get(key)
        if inst is None:  # left the pool while the request was in flight
            return changes
        if ok:
            inst.failures = 0
            inst.probation = False
            if (
                inst.ejections
                and inst.restored_at is not None
                and now - inst.restored_at >= inst.last_ejection
            ):
                inst.ejections = 0  # it stayed good as long as it was away
            return changes
        inst.failures += 1
        if _ejected(inst, now) or not self._failing(inst):
            return changes
        return changes + self._eject(key, now, why)

    def _failing(self, inst: _Instance) -> bool:
        """At its failure threshold, or failed on probation (the half-open circuit)."""
        return inst.failures >= self.outlier.consecutive_failures or (
            inst.probation and inst.failures > 0
        )

    def _eject(self, key: str, now: float, why: str) -> tuple[Change, ...]:
        ejected = sum(1 for i in self._instances.values() if _ejected(i, now))
        if ejected < self.outlier.cap(len(self._order)):
            return (self._eject_one(key, now, why),)
        # over the cap: only when no instance is left with evidence that it works
        if all(
            _ejected(i, now) or not i.healthy or self._failing(i) for i in self._instances.values()
        ):
            return tuple(
                self._eject_one(k, now, f"{why}; every instance is failing")
                for k in self._order
                if not _ejected(self._instances[k], now) and self._failing(self._instances[k])
            )
        return ()

    def _eject_one(self, key: str, now: float, why: str) -> Change:
        inst = self._instances[key]
        inst.ejections += 1
        duration = self.outlier.duration(inst.ejections)
        inst.ejected_until = now + duration
        inst.last_ejection = duration
        inst.restored_at = None
        what = "failed on probation" if inst.probation else f"{inst.failures} failures in a row"
        inst.probation = False
        return Change(key, "ejected", f"{what} (last: {why}); out for {duration:g}s")

    def probe(self, key: str, ok: bool, why: str = "failed") -> tuple[Change, ...]:
        """An active health probe's result on ``key``."""
        inst = self._instances.get(key)
        if inst is None:
            return ()
        if ok:
            inst.probe_failures = 0
            inst.probe_successes += 1
            if not inst.healthy and inst.probe_successes >= self.health.healthy_after:
                inst.healthy = True
                return (Change(key, "healthy", f"{inst.probe_successes} health checks passed"),)
            return ()
        inst.probe_successes = 0
        inst.probe_failures += 1
        if inst.healthy and inst.probe_failures >= self.health.unhealthy_after:
            inst.healthy = False
            return (
                Change(
                    key, "unhealthy", f"{inst.probe_failures} health checks failed (last: {why})"
                ),
            )
        return ()

    # --- views ------------------------------------------------------------------------

    def views(self, now: float) -> list[InstanceView]:
        return [
            InstanceView(
                key,
                inst.healthy,
                inst.ejected_until if _ejected(inst, now) else None,
                inst.in_flight,
                inst.failures,
                inst.ejections,
            )
            for key, inst in ((k, self._instances[k]) for k in self._order)
        ]

    def ejected_count(self, now: float) -> int:
        return sum(1 for i in self._instances.values() if _ejected(i, now))


def _ejected(inst: _Instance, now: float) -> bool:
    return inst.ejected_until is not None and inst.ejected_until > now
