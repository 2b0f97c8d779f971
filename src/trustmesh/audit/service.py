"""The collector's parts put together: the ledger (the hash-chained log), the audit key
that signs its checkpoints, and the detector that runs the Sigma rules on every record.

Ingest, for one batch from one producer (its SPIFFE ID, from its certificate):

1. each event is stamped with the reporter (``unmapped.trustmesh.reporter``): who
   delivered it, whatever it says of itself;
2. the batch is appended in one transaction — duplicates (by ``metadata.uid``, a retry
   after a lost answer) are skipped, invalid events quarantined with the reason;
3. only once it is durable is the batch acknowledged, and the stored events (never the
   duplicates) go through detection in chain order; alerts go to ``on_alerts``. What
   fails after that (signing a checkpoint, acting on an alert) is logged and does not
   fail the delivery: the tick signs what is due, and retries what the alert store
   could not take;
4. a checkpoint is signed when N records or T seconds have passed since the last one
   (:meth:`AuditService.tick` signs the time-due ones on a quiet log); each signed one
   goes to ``on_checkpoint`` (a copy off the machine: the checkpoint webhook).

The collector's own events (who read the log, the responses it took, the Detection
Findings of its alerts) go into the same log: :attr:`AuditService.own` is an event sink
whose events :meth:`AuditService.tick` ingests, reported by the collector's own SPIFFE ID.
Findings (class 2004) are not run through detection again: they are its output.

Detection's state (correlation windows, dedup silences, baselines) lives in memory; at
start-up :meth:`AuditService.warm_start` rebuilds it from the log's recent events before
any delivery is taken.

Alerts are stored (:class:`~trustmesh.audit.alerts.AlertStore`: once per rule, group and
window, whichever collector or restart raised them) before anything acts on them; only
the newly stored go to ``on_alerts`` (responses, webhooks, syslog), each recorded as a
finding. An alert the store cannot take now is kept (bounded) and stored at a later tick:
its events are acknowledged already, and detection does not see them twice.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from trustmesh import crypto, events
from trustmesh.audit.alerts import AlertStore, finding
from trustmesh.audit.chain import Checkpoint, CheckpointPolicy, checkpoint_due
from trustmesh.audit.detection import Alert, Detector
from trustmesh.audit.ledger import Appended, Ledger, Verification
from trustmesh.audit.search import Query

__all__ = ["MAX_BATCH", "AuditService", "Ingested", "OnCheckpoint", "OwnEvents"]

log = logging.getLogger("trustmesh.audit")

#: The most events one delivery may carry.
MAX_BATCH: Final = 1000

OnAlerts = Callable[[list[Alert]], Awaitable[None]]
#: Given each checkpoint once it is stored and in the checkpoint file; it must not block
#: (it queues: the event loop is the collector's).
OnCheckpoint = Callable[[Checkpoint], None]


@dataclass(frozen=True)
class Ingested:
    appended: Appended
    alerts: tuple[Alert, ...]
    checkpoint: Checkpoint | None

    def answer(self) -> dict[str, int]:
        return {
            "stored": len(self.appended.stored),
            "duplicates": len(self.appended.duplicates),
            "quarantined": len(self.appended.quarantined),
        }


def _stamp(events: Sequence[object], reporter: str) -> None:
    """Stamp each event with its reporter, when it has the place for one (an event
    without it is refused by the ledger and quarantined as it came). Stamped in place:
    the events of a delivery are the collector's once parsed (:meth:`AuditService.ingest`
    takes them); one loop, no call per event."""
    for event in events:
        if type(event) is dict:
            unmapped = event.get("unmapped")
            if type(unmapped) is dict:
                mine = unmapped.get("trustmesh")
                if type(mine) is dict:
                    mine["reporter"] = reporter


#: How far ahead of the collector's clock an event's own time is believed (ms).
MAX_SKEW_MS: Final = 60_000


class OwnEvents:
    """The collector's own events, held until the next tick stores them (bounded: past
    :data:`OWN_LIMIT` waiting, ``emit`` raises rather than drop one)."""

    def __init__(self) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()

    def emit(self, event: events.Event) -> None:
        with self._lock:
            if len(self._events) >= OWN_LIMIT:
                raise RuntimeError("the audit collector's own events are not being stored")
            self._events.append(json.loads(event.to_json()))

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            taken = [self._events.popleft() for _ in range(min(len(self._events), MAX_BATCH))]
        return taken

    def put_back(self, taken: list[dict[str, Any]]) -> None:
        with self._lock:
            self._events.extendleft(reversed(taken))


#: The most of its own events the collector holds before storing them.
OWN_LIMIT: Final = 100_000
#: The most alerts held while the alert store cannot take them.
PENDING_LIMIT: Final = 10_000
_FINDING: Final = int(events.EventClass.DETECTION_FINDING)


class AuditService:
    """``clock``: epoch seconds; ``spiffe_id``: the collector's own (its own events'
    reporter)."""

    def __init__(
        self,
        ledger: Ledger,
        key: crypto.SigningKey,
        detector: Detector,
        policy: CheckpointPolicy,
        *,
        on_alerts: OnAlerts | None = None,
        clock: Callable[[], float] = time.time,
        spiffe_id: str = "",
        alert_store: AlertStore | None = None,
        on_checkpoint: OnCheckpoint | None = None,
    ) -> None:
        self.ledger = ledger
        self.key = key
        self.public_key = crypto.signing_public_key(key)
        self.key_id = crypto.signing_key_id(self.public_key)
        self.detector = detector
        self.policy = policy
        self.on_alerts = on_alerts
        self.on_checkpoint = on_checkpoint
        self.clock = clock
        self.alerts: list[Alert] = []  # this process's, newest last (bounded)
        self._detecting = asyncio.Lock()  # detection sees records in chain order
        self.own = OwnEvents()
        self.spiffe_id = spiffe_id
        self.alert_store = alert_store
        self._pending: list[Alert] = []  # raised, not stored yet (the store was down)
        self._findings = events.Recorder(self.own, component="audit", spiffe_id=spiffe_id)
        self._newest: Checkpoint | None = None  # the newest checkpoint this collector saw
        self._head: int | None = None  # the newest seq this collector appended
        self._seen_ms: int | None = None  # the latest event time detection believed
        #: what else sees every stored event, in chain order (the console's edge counts)
        self.taps: list[Callable[[Mapping[str, Any]], None]] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def ingest(self, events: Sequence[object], reporter: str) -> Ingested:
        """Store and detect a delivery (module docstring). The events become the
        collector's: each is stamped with ``reporter`` in place."""
        _stamp(events, reporter)
        stamped = events
        async with self._detecting:
            appended = await self.ledger.append(stamped, now=self.now())  # type: ignore[arg-type]
            alerts: list[Alert] = []
            observe = self.detector.observe
            now_ms = int(self.clock() * 1000)
            for index in appended.stored_at:  # in chain order; a uid twice: its first
                event: dict[str, Any] = stamped[index]  # type: ignore[assignment]
                claimed = event.get("time")
                if type(claimed) is int:
                    if claimed > now_ms + MAX_SKEW_MS:
                        # a producer's clock ahead must not move detection's time (it
                        # would close everyone's windows): judged at the latest time
                        # already seen, stored as it was sent
                        event = {**event, "time": min(self._seen_ms or now_ms, now_ms)}
                    elif self._seen_ms is None or claimed > self._seen_ms:
                        self._seen_ms = claimed
                for tap in self.taps:
                    tap(event)
                if event.get("class_uid") != _FINDING:
                    alerts.extend(observe(event))
        # durable now: acknowledged, whatever fails below (an error answer would only
        # bring the batch back as duplicates). The tick signs a checkpoint still due,
        # and stores alerts the store could not take.
        checkpoint = None
        try:
            checkpoint = await self._checkpoint(appended.head)
        except Exception:
            log.exception("audit: signing a checkpoint failed; the next tick tries again")
        try:
            await self._raise(alerts)
        except Exception:
            log.exception("audit: %d alerts could not be acted on", len(alerts))
        return Ingested(appended, tuple(alerts), checkpoint)

    async def warm_start(self, max_records: int) -> int:
        """Show detection the log's recent events again (at start-up, before any
        delivery is taken): the newest ``max_records`` within the detector's memory
        (:attr:`Detector.memory_ms`). Its windows, dedup silences and baselines are
        then those of a collector that never stopped, so a burst split by a restart is
        counted whole. An alert raised again is already stored and goes nowhere; one
        that was never stored (the collector died between acknowledging its events and
        storing it) is raised now. The number of events replayed."""
        if max_records < 1:
            return 0
        since = int(self.clock() * 1000) - self.detector.memory_ms
        replayed = 0
        async with self._detecting:
            alerts: list[Alert] = []
            async for page in self.ledger.recent(since_ms=since, max_records=max_records):
                for event in page:
                    replayed += 1
                    for tap in self.taps:
                        tap(event)
                    if event.get("class_uid") != _FINDING:
                        alerts.extend(self.detector.observe(event))
            alerts.extend(self.detector.advance(int(self.clock() * 1000)))
        await self._raise(alerts)
        return replayed

    async def tick(self) -> Checkpoint | None:
        """What is due with no event arriving: the collector's own events, correlation
        windows that closed, and a checkpoint whose interval has passed."""
        await self.store_own()
        async with self._detecting:
            alerts = self.detector.advance(int(self.clock() * 1000))
        await self._raise(alerts)  # with any the store could not take before
        return await self._checkpoint(None)

    async def _checkpoint(self, head: int | None) -> Checkpoint | None:
        """A checkpoint if one is due, handed to ``on_checkpoint``. With the head just
        appended (``head``) and the newest checkpoint known, a batch that makes none due
        costs no query; the ledger decides under its lock otherwise (another collector
        may have signed since: a stale newest checkpoint only makes this ask more often,
        never less)."""
        now = self.now()
        last = self._newest
        if head is not None:
            self._head = max(self._head or 0, head)
        elif self._head is None:  # a first tick: what the log holds already
            self._head = (await self.ledger.head())[0]
        known = self._head
        if (
            known is not None
            and last is not None
            and not checkpoint_due(self.policy, head_seq=known, last=last, now=now)
        ):
            return None
        made = await self.ledger.checkpoint(self.key, now=now, policy=self.policy)
        self._newest = made or await self.ledger.newest_checkpoint()
        if made is not None and self.on_checkpoint is not None:
            self.on_checkpoint(made)
        return made

    async def store_own(self) -> None:
        """Ingest the collector's own events (kept for the next try if the store fails)."""
        while taken := self.own.take():
            try:
                await self.ingest(taken, self.spiffe_id)
            except BaseException:
                self.own.put_back(taken)
                raise

    async def run(self, interval: float = 1.0) -> None:
        """:meth:`tick` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception:  # the store or a bug: logged, and the next tick tries again
                log.exception("audit: the periodic tick failed")

    async def _raise(self, alerts: list[Alert]) -> None:
        if self.alert_store is not None:
            alerts = await self._store(self.alert_store, alerts)
        if not alerts:
            return
        self.alerts.extend(alerts)
        del self.alerts[:-1000]
        if self.on_alerts is not None:
            await self.on_alerts(alerts)

    async def _store(self, store: AlertStore, alerts: list[Alert]) -> list[Alert]:
        """The newly stored of ``alerts`` (and of those waiting), each recorded as a
        finding; on a store failure they wait for the next try."""
        waiting = list({a.uid: a for a in [*self._pending, *alerts]}.values())
        if not waiting:
            return []
        try:
            stored = await store.add(waiting, now=self.now())
        except Exception:
            log.exception("audit: the alert store failed; %d alerts wait", len(waiting))
            if len(waiting) > PENDING_LIMIT:
                log.error("audit: %d alerts lost: the store is down", len(waiting) - PENDING_LIMIT)
            self._pending = waiting[-PENDING_LIMIT:]
            return []
        self._pending = []
        now = self.now()
        for alert in stored:
            self._findings.write(finding(alert, self._findings, now))
        fresh = {alert.uid for alert in stored}
        return [alert for alert in waiting if alert.uid in fresh]

    async def search(self, query: Query) -> list[dict[str, Any]]:
        return [dict(stored.event, seq=stored.seq) for stored in await self.ledger.search(query)]

    async def verify(self, external: Sequence[Checkpoint] | None = None) -> Verification:
        """The whole log against the stored checkpoints and the checkpoint file (or
        ``external``, checkpoints a verifier brought with it)."""
        keys: Mapping[str, bytes] = {self.key_id: self.public_key}
        file = self.ledger.checkpoint_file
        missing = file is not None and not await asyncio.to_thread(os.path.exists, file)
        if missing and not await self.ledger.checkpoints():
            file = None  # a new log: nothing signed yet (a missing file after that is an error)
        return await self.ledger.verify(keys, checkpoint_file=file, external=external)
