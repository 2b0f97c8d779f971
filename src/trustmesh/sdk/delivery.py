"""Delivery that loses nothing: every component's events, to the audit collector.

:class:`AuditSink` is an :class:`~trustmesh.events.EventSink`. On the hot path ``emit``
only appends the event to memory (a deque) and, if it sleeps, wakes the spooling
thread. Two threads do the disk and network work, so that the disk never waits on the
network:

1. memory → spool (the spooling thread): up to ``batch`` events rendered as OCSF JSON
   and appended with one fsync (:class:`~trustmesh.sdk.spool.Spool`); from then on the
   event counts as recorded, whatever happens to this process. An event is on disk
   ``linger`` (5 ms) and an fsync after it was emitted, even while a delivery hangs on
   a collector that accepted the connection and never answers (a process killed then
   loses at most that window, not everything since the delivery began);
2. spool → collector (the delivering thread): the oldest spooled events POSTed as one
   batch (:class:`~trustmesh.sdk.collector.CollectorClient`), and acknowledged in the spool
   only after the collector's ``200`` (durable there). While events keep coming, a
   delivery goes at most every ``deliver_every`` seconds (50 ms), unless a whole batch
   is spooled or a :meth:`~AuditSink.flush` (or a close) waits for it: a delivery costs
   about as much CPU as the events it carries (a POST; an acknowledgement with two
   fsyncs), so under load it carries many of them, each at most that much later at the
   collector; an event after a quiet spell goes at once. A ``413`` splits the batch; a
   failure backs off (:class:`~trustmesh.sdk.collector.Backoff`) while events keep
   being spooled. A retry after a lost answer is stored once: the collector keys events
   by their uid.

What another ``4xx`` does — the collector quarantines what it cannot read and answers
``200``, so a refusal is a bug or a change on one side, and one batch must not hold the
spool behind it forever, nor may an acknowledged event vanish:

- ``401``, ``403``, ``407``, ``408``, ``421``, ``425``, ``429`` say who asks or when,
  not what the events are (an SVID not trusted yet, an authorization being changed, a
  rate limit): the batch is kept and retried with the back-off, like a ``5xx``;
- any other (``400``, ``422``…) may be about some of the events: the batch is split,
  as for a ``413``, down to the events refused alone. Once the collector has taken
  another part of the same batch — so it takes deliveries, and refuses those events —
  each is moved to the dead-letter file (``dead-letter.jsonl`` in the spool's
  directory, 0600, fsynced before the spool lets it go: the event with the time, the
  status and the answer), counted (:attr:`DeliveryStats.dead_lettered`), logged, and
  told to the collector with an ``events-dropped`` event (``attributes.refused``,
  ``attributes.status``), which the shipped rule alerts on. When nothing of the batch
  is taken (a collector that refuses everything: a wrong URL, a broken release), no
  event is dead-lettered (nor when 64 requests of the split are refused before one is
  taken): the batch waits and is retried with the back-off. A dead-letter file past
  the spool's ``max_bytes`` takes nothing more: those events are counted dropped, and
  told as the spool's drops are.

A full spool (``max_bytes``) stops step 1, and memory fills up to ``max_queue`` events;
then ``on_full`` decides: ``block`` — ``emit`` waits until there is room again (bounded
waits on a condition, re-checked; ``block_timeout`` turns a wait that long into
:class:`~trustmesh.errors.UnavailableError`); ``drop`` — the event is counted and
dropped, and once the collector answers again an ``events-dropped`` event
(:data:`~trustmesh.reasons.Activity.EVENTS_DROPPED`, the count in ``attributes.dropped``)
is delivered, which the shipped rule ``events_dropped`` turns into an alert.

:meth:`AuditSink.close` delivers what it can in its time; the rest is spooled (past the
bound, if it must) for the next start: never lost. :func:`audit_sink_from_env` makes
the sink ``trustmesh up`` asks for (``TRUSTMESH_AUDIT_URL``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.config.audit import SpoolConfig
from trustmesh.errors import TrustmeshError, UnavailableError, UsageError
from trustmesh.reasons import Activity
from trustmesh.sdk.collector import (
    Backoff,
    BatchTooLargeError,
    CollectorClient,
    DeliveryRefusedError,
)
from trustmesh.sdk.spool import Spool
from trustmesh.sdk.x509source import SVIDSource

__all__ = [
    "AUDIT_URL_ENV",
    "DEAD_LETTER",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "NO_COLLECTOR",
    "TRANSIENT_REFUSALS",
    "AuditSink",
    "DeliveryStats",
    "OnFull",
    "audit_sink",
    "audit_sink_from_env",
    "collector_endpoint",
]

#: Where a process ``trustmesh up`` starts delivers its events (the collector's URL).
AUDIT_URL_ENV: Final = "TRUSTMESH_AUDIT_URL"
#: ``TRUSTMESH_AUDIT_URL`` when the declaration has no collector (``audit:`` absent).
NO_COLLECTOR: Final = "none"
#: Events per delivery (the collector takes up to 1000 and 4 MiB).
MAX_BATCH: Final = 500
MAX_BATCH_BYTES: Final = 1024 * 1024
#: The component whose events are not delivered: the collector stores its own directly.
_COLLECTOR: Final = "audit"
_IDLE: Final = 1.0  # seconds the thread sleeps with nothing to do (woken by emit)
#: Seconds the thread, woken by an event, waits for more before spooling (group commit):
#: at most 1/_LINGER wake-ups and fsyncs a second however many events are emitted.
_LINGER: Final = 0.005
_RECHECK: Final = 0.1  # a blocked emit / a flush re-checks at least this often
#: Seconds :meth:`AuditSink.spooled` waits for the spool before it gives up.
_DURABLE_TIMEOUT: Final = 5.0
#: Seconds between two deliveries while events keep coming (the module docstring).
_DELIVER_EVERY: Final = 0.05
#: The 4xx answers that say who asks or when, not what the events are: kept, retried.
TRANSIENT_REFUSALS: Final = frozenset({401, 403, 407, 408, 421, 425, 429})
#: A refused batch of n events is split at most into the 2n - 1 requests that reach each
#: event alone; when none of them is taken, nothing is dead-lettered (the collector
#: refuses everything: not about these events) and the batch waits.
#: Where a spool keeps the events the collector refused (in its directory).
DEAD_LETTER: Final = "dead-letter.jsonl"

OnFull = Literal["block", "drop"]

log = logging.getLogger("trustmesh.sdk.delivery")


@dataclass(frozen=True)
class DeliveryStats:
    """Where a sink's events are: ``queued`` in memory, ``spooled`` on disk and not yet
    acknowledged, ``delivered`` (acknowledged by the collector since this sink started),
    ``dropped`` (a full spool under ``drop``, or a full dead-letter file), ``failures``
    (failed attempts) and ``dead_lettered`` (refused by the collector, kept in the
    dead-letter file)."""

    queued: int
    spooled: int
    delivered: int
    dropped: int
    failures: int
    dead_lettered: int = 0


class AuditSink:
    """Events to the audit collector through a fsynced spool (see the module)."""

    def __init__(
        self,
        spool: Spool,
        client: CollectorClient,
        *,
        component: str,
        on_full: OnFull = "block",
        batch: int = MAX_BATCH,
        max_queue: int = 10_000,
        spiffe_id: str | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        block_timeout: float | None = None,
        linger: float = _LINGER,
        deliver_every: float = _DELIVER_EVERY,
        log: events.JsonLinesSink | None = None,
    ) -> None:
        if on_full not in ("block", "drop"):
            raise UsageError("on_full is 'block' or 'drop'")
        if not 1 <= batch <= 1000 or max_queue < 1:
            raise UsageError("batch is 1 to 1000 events; max_queue at least 1")
        self.spool = spool
        self.client = client
        self.log = log
        self.component = component
        self.on_full: OnFull = on_full
        self.batch = batch
        self.max_queue = max_queue
        self.block_timeout = block_timeout
        self.linger = linger
        self.deliver_every = deliver_every
        self._clock = clock
        self._delivered_at = float("-inf")  # the last delivery's start, on ``clock``
        self._flushing = 0  # flush() calls waiting: they do not wait for deliver_every
        self.backoff = backoff or Backoff(clock=clock)
        self.recorder = events.Recorder(self, component=component, spiffe_id=spiffe_id)
        self._queue: collections.deque[events.Event] = collections.deque()
        self._emit_lock = threading.Lock()
        self._emitted = 0  # events queued, ever
        self._spooled = 0  # … of which in the spool (the queue's order is the spool's)
        self._waiting = 0  # wait_spooled() calls: the spooling thread does not linger
        self._staged: list[bytes] = []  # taken from the queue, not yet in the spool
        self._cond = threading.Condition()
        self._awake = False
        self._closing = False
        self._stop = False
        self._delivered = 0
        self._dropped = 0
        self._unreported = 0  # dropped, not yet told to the collector
        self._failures = 0
        self._dead_lettered = 0
        self._refused: list[tuple[bytes, DeliveryRefusedError]] = []  # held, this round
        self._taken = False  # the collector took part of this round's batch
        self._tries = 0  # requests this round
        self._budget = 0  # … and how many it may take
        self._spooler = self._started("spool", self._spool_loop)
        self._sender = self._started("delivery", self._send_loop)

    def _started(self, role: str, loop: Callable[[], None]) -> threading.Thread:
        name = f"trustmesh-audit-{role}-{self.component}"
        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        return thread

    # --- the producer's side (any thread) ----------------------------------------

    def emit(self, event: events.Event) -> None:
        """Queue ``event`` for delivery: an append to memory, unless memory is full
        (then ``on_full`` applies)."""
        if self._closing:
            raise UnavailableError("emit on a closed audit sink")
        if len(self._queue) >= self.max_queue and not self._room():
            if self.log is not None:  # dropped here, still in the local log
                self.log.emit(event)
            return
        self._enqueue(event)
        if not self._awake or len(self._queue) == self.batch:  # a full batch waits no more
            self._wake()

    def _enqueue(self, event: events.Event) -> None:
        with self._emit_lock:  # the count names a place in the queue (mark())
            self._queue.append(event)
            self._emitted += 1

    def mark(self) -> int:
        """How many events were queued so far: :meth:`wait_spooled` waits for them."""
        return self._emitted

    def wait_spooled(self, mark: int, timeout: float) -> bool:
        """Wait until the first ``mark`` events queued are in the spool (recorded,
        whatever happens to this process next); False if ``timeout`` seconds pass
        first. The spooling thread does not linger for more events while someone waits."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiting += 1
            try:
                self._cond.notify_all()
                while self._spooled < mark:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._spooler.is_alive():
                        return False
                    self._cond.wait(min(left, _RECHECK))
            finally:
                self._waiting -= 1
        return True

    async def spooled(self, timeout: float = _DURABLE_TIMEOUT) -> bool:
        """Wait, off the event loop, until every event queued so far is in the spool:
        for a component that must not answer before what it did is recorded (the
        identity service, before it hands over an SVID). False after ``timeout``."""
        mark = self._emitted
        if self._spooled >= mark:
            return True
        return await asyncio.to_thread(self.wait_spooled, mark, timeout)

    def _room(self) -> bool:
        """Memory is full: wait for room (``block``) or count the event dropped."""
        with self._cond:
            if self.on_full == "drop":
                self._dropped += 1
                self._unreported += 1
                return False
            waited = 0.0
            while len(self._queue) >= self.max_queue:
                if self._closing:
                    raise UnavailableError("emit on a closed audit sink")
                if self.block_timeout is not None and waited >= self.block_timeout:
                    raise UnavailableError("the audit spool is full and the collector is away")
                self._awake = True
                self._cond.notify_all()
                self._cond.wait(_RECHECK)
                waited += _RECHECK
            return True

    def _wake(self) -> None:
        with self._cond:
            self._awake = True
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every event emitted so far is delivered; False if ``timeout``
        seconds pass first (they stay queued or spooled)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            try:
                while self._queue or self._staged or self.spool.records:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._sender.is_alive():
                        return False
                    self._awake = True
                    self._cond.notify_all()
                    self._cond.wait(min(left, _RECHECK))
            finally:
                self._flushing -= 1
        return True

    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            queued=len(self._queue) + len(self._staged),
            spooled=self.spool.records,
            delivered=self._delivered,
            dropped=self._dropped,
            failures=self._failures,
            dead_lettered=self._dead_lettered,
        )

    def close(self, timeout: float = 5.0) -> DeliveryStats:
        """Stop taking events, deliver what can be in ``timeout`` seconds, and spool the
        rest for the next start (past ``max_bytes`` if it must: never lost). The spool's
        directory is released. Idempotent."""
        if self._stop:
            return self.stats()
        self._closing = True
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._spooler.join(self.client.timeout + 5.0)
        self._sender.join(self.client.timeout + 5.0)
        if self._spooler.is_alive() or self._sender.is_alive():  # stuck: leave them the spool
            log.error("audit delivery of %s did not stop; its spool stays open", self.component)
            return self.stats()
        self._to_spool(force=True)  # what the sender queued last (a notice of drops)
        stats = self.stats()
        self.client.close()
        self.spool.close()
        return stats

    # --- the two threads -------------------------------------------------------------

    def _spool_loop(self) -> None:
        """Memory → spool, a group commit at a time. Never waits on the collector: an
        event is on disk within ``linger`` and an fsync of being emitted, however long a
        delivery takes (a collector that hangs holds the sender only)."""
        while True:
            stop = self._stop
            full = False
            try:
                if not stop:
                    self._gather()
                full = not self._to_spool(force=stop)
            except Exception:  # a disk error: keep what is in memory, retry later
                log.exception("audit delivery of %s: spooling failed", self.component)
                self._failures += 1
                full = True
            with self._cond:
                self._cond.notify_all()  # progress: the sender, flush(), blocked emits
                if stop:
                    return
                self._awake = False
                if full:  # until the sender frees room (or a disk recovers)
                    self._cond.wait(_RECHECK)
                elif not (self._stop or self._queue):
                    self._cond.wait(_IDLE)

    def _send_loop(self) -> None:
        """Spool → collector, a batch at a time, when one is due (``_due``) and the
        back-off allows."""
        while True:
            with self._cond:
                while not self._stop and not self._sendable():
                    self._cond.wait(self._idle_wait())
                if self._stop:
                    return
            try:
                self._deliver()
            except Exception:  # a disk error acknowledging: the batch is sent again
                log.exception("audit delivery of %s: delivery failed", self.component)
                self._failures += 1
                self.backoff.failed()
            with self._cond:
                self._cond.notify_all()  # progress: the spooler (room), flush()

    def _sendable(self) -> bool:
        return bool(self.spool.records) and self.backoff.remaining() <= 0 and self._due() <= 0

    def _gather(self) -> None:
        """Group commit: woken by the first event of a burst, wait ``linger`` seconds
        (while emits, seeing the thread awake, no longer wake it) so that the burst goes
        to the spool in one write and one fsync — unless a batch is already there."""
        if self.linger <= 0 or not self._queue or len(self._queue) >= self.batch or self._waiting:
            return
        with self._cond:
            if not self._stop:
                self._cond.wait(self.linger)

    def _due(self) -> float:
        """Seconds until the spooled events are to be delivered (≤ 0: now): at once for
        a whole batch or a flush, else ``deliver_every`` after the last delivery."""
        if self._flushing or self.spool.records >= self.batch:
            return 0.0
        return self.deliver_every - (self._clock() - self._delivered_at)

    def _idle_wait(self) -> float:
        if self.spool.records:
            return min(_IDLE, max(self.backoff.remaining(), self._due(), 0.001))
        return _IDLE

    def _to_spool(self, *, force: bool) -> bool:
        """Memory → spool, a batch per fsync, in order, while it fits; False when the
        spool is full (what is left waits in memory, and ``on_full`` applies)."""
        while True:
            staged = self._staged
            queue = self._queue
            while len(staged) < self.batch and queue:
                staged.append(queue.popleft().to_json().encode("ascii"))
            if not staged:
                return True
            # as many as fit (a batch larger than the spool's room must not wait for
            # a spool emptier than it can ever be)
            fit = len(staged) if force else self.spool.fitting(staged)
            if not fit or not self.spool.append(staged[:fit], force=force):
                return False
            self._staged, written = staged[fit:], staged[:fit]
            self._spooled += fit
            self._to_log(written)
            if not force:
                with self._cond:
                    self._cond.notify_all()

    def _to_log(self, lines: list[bytes]) -> None:
        """The local event log gets what was just spooled, in one write (the spool has
        them: a failure here is logged, never retried into duplicates)."""
        if self.log is None:
            return
        try:
            self.log.write_lines(lines)
        except (OSError, ValueError):
            log.exception(
                "audit delivery of %s: %d events not in the event log %s",
                self.component,
                len(lines),
                self.log.path,
            )

    def _deliver(self) -> None:
        """Spool → collector: one batch (split on a 413 or a refusal), acknowledged in
        order once stored or dead-lettered (module docstring)."""
        self._delivered_at = self._clock()
        records = self.spool.peek(self.batch)
        size = 0
        for i, record in enumerate(records):
            size += len(record) + 1
            if size > MAX_BATCH_BYTES and i > 0:
                records = records[:i]
                break
        self._refused, self._taken, self._tries = [], False, 0
        self._budget = 2 * len(records) - 1
        try:
            self._send(records)
            if self._refused:
                if not self._taken:  # nothing of it taken: not about these events
                    raise self._refused[0][1]
                self._settle(0)
        except TrustmeshError as exc:
            self._failures += 1
            wait = self.backoff.failed()
            level = logging.ERROR if isinstance(exc, DeliveryRefusedError) else logging.WARNING
            if self.backoff.failures == 1 or level == logging.ERROR:
                log.log(
                    level,
                    "audit delivery of %s: %s (retrying in %.1fs; %d spooled)",
                    self.component,
                    exc.detail,
                    wait,
                    self.spool.records,
                )
            return
        finally:
            self._refused = []
        if self.backoff.failures:
            log.warning("audit delivery of %s: the collector is back", self.component)
        self.backoff.succeeded()
        if self._unreported:
            self._report_drops()

    def _send(self, records: Sequence[bytes]) -> None:
        self._tries += 1
        try:
            self.client.send(records)
        except DeliveryRefusedError as exc:
            if exc.status_code in TRANSIENT_REFUSALS:
                raise
            if self._tries >= self._budget and not self._taken:
                raise  # every part refused: the refusal is not the events'
            if len(records) > 1:
                half = len(records) // 2
                self._send(records[:half])
                self._send(records[half:])
                return
            if isinstance(exc, BatchTooLargeError):
                exc = DeliveryRefusedError(
                    "the collector refuses one event as too large", status_code=413
                )
            if self._taken:  # the collector takes deliveries: this event it refuses
                self._dead_letter([(records[0], exc)])
                self.spool.ack(1)
            else:  # held until another part of the batch is taken (or none is)
                self._refused.append((records[0], exc))
            return
        self._taken = True
        self._delivered += len(records)  # counted before the spool says so (flush reads it)
        self._settle(len(records))

    def _settle(self, taken: int) -> None:
        """Acknowledge, in spool order, the refused events held before ``taken`` events
        the collector just took (dead-lettered first), and those."""
        held, self._refused = self._refused, []
        if held:
            self._dead_letter(held)
        if held or taken:
            self.spool.ack(len(held) + taken)

    def _dead_letter(self, refused: Sequence[tuple[bytes, DeliveryRefusedError]]) -> None:
        """Keep ``refused`` in the dead-letter file (fsynced), count them, tell the
        collector; past the spool's bound, count them dropped (told as drops are)."""
        path = self.spool.directory / DEAD_LETTER
        now = int(time.time() * 1000)
        lines = b"".join(
            b'{"time":%d,"status":%d,"reason":%s,"event":%s}\n'
            % (now, exc.status_code, json.dumps(exc.detail[:300]).encode(), record)
            for record, exc in refused
        )
        try:
            kept = os.stat(path).st_size
        except FileNotFoundError:
            kept = 0
        if kept + len(lines) > self.spool.max_bytes:
            with self._cond:
                self._dropped += len(refused)
                self._unreported += len(refused)
            log.error(
                "audit delivery of %s: %d events refused by the collector and the "
                "dead-letter file is full: dropped",
                self.component,
                len(refused),
            )
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._dead_lettered += len(refused)
        status = refused[0][1].status_code
        log.error(
            "audit delivery of %s: %d events refused by the collector (%d: %s), kept in %s",
            self.component,
            len(refused),
            status,
            refused[0][1].detail[:200],
            path,
        )
        notice = self.recorder.build(
            Activity.EVENTS_DROPPED,
            "events refused by the audit collector: kept in the producer's dead-letter file",
            decision=events.Decision.ERROR,
            attributes={"refused": len(refused), "status": status, "dead_letter": str(path)},
        )
        self._enqueue(notice)  # past the bound: it is the one that must get there

    def _report_drops(self) -> None:
        with self._cond:
            count, self._unreported = self._unreported, 0
        notice = self.recorder.build(
            Activity.EVENTS_DROPPED,
            "events dropped: the audit spool was full",
            decision=events.Decision.ERROR,
            attributes={"dropped": count, "spool_max_bytes": self.spool.max_bytes},
        )
        self._enqueue(notice)  # past the bound: it is the one that must get there
        log.error("audit delivery of %s: %d events were dropped", self.component, count)


def audit_sink_from_env(
    source: SVIDSource,
    config: TrustmeshConfig,
    state: Path,
    component: str,
    *,
    on_full: OnFull | None = None,
    spool_max_bytes: int | None = None,
    log: events.JsonLinesSink | None = None,
) -> AuditSink | None:
    """The sink delivering ``component``'s events to the collector named by
    ``TRUSTMESH_AUDIT_URL``, spooling in ``<state>/spool/<component>/`` (``audit.spool``
    of the declaration: its bound and policy, unless given); None when the variable is
    unset or :data:`NO_COLLECTOR` (a declaration without ``audit:``: no collector will
    ever take the events, so none are spooled for it, and the local event log is the
    record), and for the collector itself. Where the collector listens is read again
    from its endpoint file before each connection (a collector restarted on another
    port is found again); an empty variable means it is not running yet: events spool
    until it writes that file."""
    url = os.environ.get(AUDIT_URL_ENV)
    if url is None or url.strip() == NO_COLLECTOR or component == _COLLECTOR:
        return None
    return audit_sink(
        source,
        config,
        state,
        component,
        url=url.strip(),
        on_full=on_full,
        spool_max_bytes=spool_max_bytes,
        log=log,
    )


def collector_endpoint(state: Path) -> str | None:
    """Where the collector of ``state`` says it listens (``<state>/audit/endpoint.json``,
    which it writes: :mod:`trustmesh.audit.endpoint`); None when it does not say."""
    try:
        doc = json.loads((state / "audit" / "endpoint.json").read_bytes())
    except (OSError, ValueError):
        return None
    url = doc.get("url") if isinstance(doc, dict) else None
    return url if isinstance(url, str) and url else None


def audit_sink(
    source: SVIDSource,
    config: TrustmeshConfig,
    state: Path,
    component: str,
    *,
    url: str = "",
    on_full: OnFull | None = None,
    spool_max_bytes: int | None = None,
    log: events.JsonLinesSink | None = None,
) -> AuditSink:
    """``component``'s sink to the collector of ``state`` (at ``url`` until its endpoint
    file says otherwise), spooling in ``<state>/spool/<component>/``; with ``log``, the
    component's event log, written by the delivering thread a spooled batch at a time
    (the sink then stands for both: off the request path)."""
    settings = config.audit.spool if config.audit is not None else SpoolConfig()
    client = CollectorClient(
        url,
        source,
        config.component_spiffe_id(_COLLECTOR),
        locate=lambda: collector_endpoint(state),
    )
    spool = Spool(state / "spool" / component, spool_max_bytes or settings.max_bytes)
    try:
        return AuditSink(
            spool,
            client,
            component=component,
            on_full=on_full or settings.on_full,
            spiffe_id=source.context.spiffe_id,
            log=log,
        )
    except BaseException:
        spool.close()
        raise
