"""Retention: how long the audit log keeps each class of event, and the pruning that
removes what is older — without breaking the chain's proof.

The rule (:class:`Retention`, from ``audit.retention`` in the declaration): a default
age (None: keep for ever) and ages per OCSF ``class_uid`` that override it (None: keep
that class for ever).

How old a record is. Not the event's ``time``: that is the producer's claim, and a
producer could make its events vanish early by dating them in the past. A record's age
is that of the first signed checkpoint that covers it (its time is the collector's
clock, under its signature; the record was stored before it). So a record is pruned
only once a checkpoint signed at least its class's retention ago covers it: never the
unsigned tail, never early — at most one checkpoint interval late. The chain's head is
never pruned either (the next record links to it, and the next seq is counted from it).

What pruning leaves (:meth:`Ledger.prune <trustmesh.audit.ledger.Ledger.prune>`): for
each batch of at most :data:`~trustmesh.audit.chain.PRUNE_CHUNK` records, a prune
checkpoint signed with the audit key naming each removed seq with its link hash, the
rule and the time. It is written in the same transaction as the DELETE (either both or
neither: a crash leaves the log as it was, or pruned and explained), then appended to
the checkpoint file. The verifier accepts a missing seq only when a valid prune
checkpoint names it, and the next record links to the hash it names
(:mod:`trustmesh.audit.verifier`); a record deleted any other way is still ``deleted``.

Who may delete. On SQLite the collector's own file. On PostgreSQL the collector's role
may only INSERT and SELECT; pruning goes through another role's connection
(``audit.retention.database``, :func:`~trustmesh.audit.ledger_schema.prune_grants`:
DELETE on the records, INSERT on the prune checkpoints). Without one, pruning is off and
the collector says so when it starts.

:class:`Pruner` runs it — every ``audit.retention.interval`` in the collector, and on
the operator's demand (``POST /v1/prune``, ``trustmesh audit prune``) — and records each
prune as an event (:attr:`Activity.RECORDS_PRUNED <trustmesh.reasons.Activity>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from trustmesh import crypto, events
from trustmesh.config.durations import format_duration
from trustmesh.errors import UsageError
from trustmesh.reasons import Activity

if TYPE_CHECKING:
    from trustmesh.audit.ledger import Ledger

__all__ = ["Pruned", "Pruner", "Retention"]

log = logging.getLogger("trustmesh.audit")

#: What a prune records: the records were deleted (Entity Management, Delete).
_SHAPE: Final = (events.EventClass.ENTITY_MANAGEMENT, 4, "Delete")


@dataclass(frozen=True)
class Retention:
    """How long each class is kept: ``classes`` (class_uid → age, None for ever)
    override ``default`` (None: for ever)."""

    default: timedelta | None = None
    classes: Mapping[int, timedelta | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ages = [self.default, *self.classes.values()]
        if any(age is not None and age <= timedelta(0) for age in ages):
            raise UsageError("a retention is a positive duration, or None (for ever)")

    @property
    def enabled(self) -> bool:
        """Whether anything is ever pruned."""
        return self.default is not None or any(a is not None for a in self.classes.values())

    def ages(self) -> list[tuple[int | None, timedelta]]:
        """The finite ages: per class, and the default (class None) for the others."""
        found: list[tuple[int | None, timedelta]] = [
            (uid, age) for uid, age in sorted(self.classes.items()) if age is not None
        ]
        if self.default is not None:
            found.append((None, self.default))
        return found

    @property
    def rule(self) -> str:
        """The rule as a prune checkpoint names it: ``3002=7d 6003=forever default=30d``."""
        return " ".join(
            f"{uid}={_age(age)}"
            for uid, age in [*sorted(self.classes.items()), *[("default", self.default)]]
        )


def _age(age: timedelta | None) -> str:
    return "forever" if age is None else format_duration(age)


@dataclass(frozen=True)
class Pruned:
    """What one prune removed (or, ``dry_run``, would remove): records per class, the
    seqs first..last among them, the prune checkpoints signed for them, under ``rule``."""

    dry_run: bool
    rule: str
    removed: Mapping[int, int] = field(default_factory=dict)
    first: int | None = None
    last: int | None = None
    checkpoints: int = 0

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def add(self, other: Pruned) -> Pruned:
        """Two batches of one prune, as one."""
        removed = dict(self.removed)
        for uid, count in other.removed.items():
            removed[uid] = removed.get(uid, 0) + count
        firsts = [s for s in (self.first, other.first) if s is not None]
        lasts = [s for s in (self.last, other.last) if s is not None]
        return Pruned(
            dry_run=self.dry_run,
            rule=self.rule,
            removed=removed,
            first=min(firsts, default=None),
            last=max(lasts, default=None),
            checkpoints=self.checkpoints + other.checkpoints,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "rule": self.rule,
            "removed": {str(uid): count for uid, count in sorted(self.removed.items())},
            "total": self.total,
            "first_seq": self.first,
            "last_seq": self.last,
            "prune_checkpoints": self.checkpoints,
        }


class Pruner:
    """Prunes ``ledger`` under ``retention``, signing with ``key``, recording each prune
    through ``recorder``; ``now``: the collector's clock. A prune goes in batches of
    ``batch`` records (one transaction each), at most ``batches`` of them per run: the
    next run takes the rest."""

    def __init__(
        self,
        ledger: Ledger,
        key: crypto.SigningKey,
        retention: Retention,
        recorder: events.Recorder,
        now: Callable[[], datetime],
        *,
        batch: int = 10_000,
        batches: int = 100,
    ) -> None:
        if batch < 1 or batches < 1:
            raise UsageError("a prune goes in batches of at least one record")
        self.ledger = ledger
        self.key = key
        self.retention = retention
        self.recorder = recorder
        self.now = now
        self.batch = batch
        self.batches = batches
        self._lock = asyncio.Lock()  # the periodic run and the operator's, one at a time

    async def prune(self, *, dry_run: bool = False, by: str | None = None) -> Pruned:
        """Remove (or, ``dry_run``, count) what is past retention; ``by``: who asked
        (None: the periodic run). A prune that removed something, or that the operator
        asked for, is recorded."""
        async with self._lock:
            now = self.now()
            if dry_run:
                return await self.ledger.prune(self.key, self.retention, now=now, dry_run=True)
            done = Pruned(dry_run=False, rule=self.retention.rule)
            try:
                for _ in range(self.batches):
                    step = await self.ledger.prune(
                        self.key, self.retention, now=now, limit=self.batch
                    )
                    done = done.add(step)
                    if step.total < self.batch:
                        break
            except BaseException:  # a failure or a stop after some batches: those are done
                if done.total:
                    self._record(done, by)
                raise
        if done.total or by is not None:
            self._record(done, by)
        return done

    def _record(self, done: Pruned, by: str | None) -> None:
        classes = ",".join(f"{uid}:{count}" for uid, count in sorted(done.removed.items()))
        self.recorder.record(
            Activity.RECORDS_PRUNED,
            f"{done.total} audit records pruned past retention",
            shape=_SHAPE,
            attributes={
                "removed": done.total,
                "classes": classes or None,
                "first_seq": done.first,
                "last_seq": done.last,
                "prune_checkpoints": done.checkpoints,
                "rule": done.rule,
                "by": by or "retention",
            },
        )

    async def run(self, interval: float) -> None:
        """:meth:`prune` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            running = asyncio.ensure_future(self.prune())
            try:
                await asyncio.shield(running)
            except asyncio.CancelledError:
                # stopped mid-prune: let its transaction end (commit or roll back) first,
                # or its connection would keep the write lock past the collector's stop
                with contextlib.suppress(Exception):
                    await running
                raise
            except Exception:  # the store or a bug: logged, and the next run tries again
                log.exception("audit: the periodic prune failed")
