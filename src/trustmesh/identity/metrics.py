"""The identity service's Prometheus metrics, right across its worker processes.

The Workload API is served by the leader and by ``workers - 1`` worker processes that
accept on the same socket (:class:`~trustmesh.identity.server.IdentityServer`): each
process attests, refuses and issues for the workloads it happens to accept. So **the
leader serves and the workers report**:

- every process counts the events it records in a :class:`Tally` (its event sink: each
  event by outcome and reason, and each SVID issued by type);
- a worker sends its tally, cumulative, to the leader once per tick when it changed, as
  one JSON line on a pipe of its own (:class:`Reporter`; non-blocking: what the pipe
  cannot take now is sent at the next tick, never a torn line);
- the leader keeps each worker's latest report (:class:`WorkerReports`), reads what the
  pipes hold at each scrape, and adds its own tally. When a worker exits, its last report
  is folded into the retired workers' counts before it is replaced, so no counter goes
  down. What a worker counted after its last report (at most one tick: a second) is lost
  with it; its events are in the event log all the same.

prometheus_client's multiprocess mode was not chosen: it is switched on for the whole
process by an environment variable read when the library is imported (every registry of
the process, tests' included), it leaves a file per process id for the leader to clean,
and the gauges here (the CA's, the leader's SVID) are the leader's alone anyway.

Served on a loopback listener of the leader's (plain HTTP, ``GET /metrics``); its URL is
``metrics_url`` in the discovery file, which ``trustmesh status`` shows on the identity
service's row. Labels are bounded vocabularies (outcomes, reason codes, SVID types):

- ``trustmesh_identity_decisions_total{decision, reason}``: every event recorded —
  attestation refusals (``no-matching-entry``, ``spiffe-id-suspended``,
  ``attestation-failed``…), join tokens redeemed (``attested``) or refused
  (``join-token-invalid``…), SVIDs issued, CA steps, admin changes;
- ``trustmesh_identity_svids_issued_total{type}``: X.509-SVIDs and JWT-SVIDs issued
  (``x509``, ``jwt``); the refusals are the deny decisions above, by reason;
- ``trustmesh_identity_signing_ca_seconds_left``: until the CA that signs SVIDs expires
  (it is renewed well before; near zero means rotation is failing);
- ``trustmesh_identity_certificate_seconds_left``: until the leader's own SVID (its
  discovery and admin listener's) expires;
- ``trustmesh_identity_workers``: worker processes serving beside the leader (those
  that have reported, and not exited);
- its audit delivery's counts, as every component's (:mod:`trustmesh.sdk.metrics`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trustmesh import events
from trustmesh.errors import StateError
from trustmesh.identity.ca import CertificateAuthority
from trustmesh.reasons import Activity
from trustmesh.sdk.metrics import Certified, LiveFacts

__all__ = ["Counts", "IdentityFacts", "Reporter", "Tally", "WorkerReports", "registry"]

SVID_TYPES = ("x509", "jwt")
_DECISIONS = frozenset(d.value for d in events.Decision)
_CODE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
#: A report is a few kilobytes; a longer line is not one (it is dropped).
_MAX_LINE = 64 * 1024


@dataclass
class Counts:
    """Decisions by (decision, reason) and SVIDs issued by type."""

    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    issued: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.decisions.update(other.decisions)
        self.issued.update(other.issued)

    def to_line(self) -> bytes:
        doc = {
            "decisions": [[d, r, n] for (d, r), n in sorted(self.decisions.items())],
            "issued": dict(sorted(self.issued.items())),
        }
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Counts | None:
        """A worker's report, or None when it is not one (each part checked: labels stay
        in their vocabularies)."""
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        decisions, issued = doc.get("decisions"), doc.get("issued")
        if not isinstance(decisions, list) or not isinstance(issued, dict):
            return None
        counts = cls()
        for item in decisions:
            if not (isinstance(item, list) and len(item) == 3 and _count(item[2])):
                return None
            decision, reason, n = item
            if decision not in _DECISIONS or not isinstance(reason, str):
                return None
            if not _CODE.fullmatch(reason):
                return None
            counts.decisions[(decision, reason)] = n
        for kind, n in issued.items():
            if kind not in SVID_TYPES or not _count(n):
                return None
            counts.issued[kind] = n
        return counts


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Tally:
    """An event sink that counts each event (outcome and reason; an SVID issued, by type:
    a JWT-SVID's event names its ``jti``) and hands it on to ``inner``."""

    def __init__(self, inner: events.EventSink) -> None:
        self.inner = inner
        self._counts = Counts()
        self._version = 0
        self._lock = threading.Lock()

    def emit(self, event: events.Event) -> None:
        with self._lock:
            self._counts.decisions[(event.decision.value, event.reason.value)] += 1
            if event.reason == Activity.SVID_ISSUED:
                self._counts.issued["jwt" if event.jti else "x509"] += 1
            self._version += 1
        self.inner.emit(event)

    def snapshot(self) -> tuple[int, Counts]:
        """(a number that changes with every event, a copy of the counts)."""
        with self._lock:
            copy = Counts(Counter(self._counts.decisions), Counter(self._counts.issued))
            return self._version, copy


class Reporter:
    """A worker's side: its tally, sent to the leader on ``fd`` (a pipe's write end)."""

    def __init__(self, fd: int, tally: Tally) -> None:
        os.set_blocking(fd, False)
        self.fd, self.tally = fd, tally
        self._sent = -1
        self._pending = b""

    def report(self) -> None:
        """Send the tally if it changed (or the rest of a line the pipe could not take)."""
        if not self._pending:
            version, counts = self.tally.snapshot()
            if version == self._sent:
                return
            self._sent, self._pending = version, counts.to_line()
        try:
            written = os.write(self.fd, self._pending)
        except BlockingIOError:  # the leader reads at its next tick or scrape
            return
        except OSError:  # the leader is gone; this worker follows it (PR_SET_PDEATHSIG)
            self._pending = b""
            return
        self._pending = self._pending[written:]

    def close(self) -> None:
        self.report()
        os.close(self.fd)


@dataclass
class _Pipe:
    fd: int
    buffer: bytearray = field(default_factory=bytearray)
    latest: Counts = field(default_factory=Counts)
    reported: bool = False  # once a report came: the worker serves

    def read(self) -> None:
        """Take what the pipe holds; keep the last whole report."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:  # the worker closed its end (it exited)
                break
            self.buffer += chunk
        *lines, rest = bytes(self.buffer).split(b"\n")
        self.buffer = bytearray(rest if len(rest) <= _MAX_LINE else b"")
        for line in reversed(lines):
            counts = Counts.from_line(line)
            if counts is not None:
                self.latest, self.reported = counts, True
                return


class WorkerReports:
    """The leader's side: each worker's latest report, and what retired workers counted."""

    def __init__(self) -> None:
        self._pipes: dict[int, _Pipe] = {}
        self.retired = Counts()

    @staticmethod
    def pipe() -> tuple[int, int]:
        """A new pipe: (read end, for :meth:`add`; write end, for the worker)."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        return read_end, write_end

    def add(self, pid: int, read_end: int) -> None:
        self._pipes[pid] = _Pipe(read_end)

    def retire(self, pid: int) -> None:
        """Worker ``pid`` exited: its last report joins the retired counts."""
        pipe = self._pipes.pop(pid, None)
        if pipe is not None:
            pipe.read()
            self.retired.add(pipe.latest)
            os.close(pipe.fd)

    @property
    def running(self) -> int:
        """Workers that have reported (each does at its first tick) and not exited."""
        for pipe in self._pipes.values():
            pipe.read()
        return sum(1 for pipe in self._pipes.values() if pipe.reported)

    def totals(self) -> Counts:
        total = Counts()
        total.add(self.retired)
        for pipe in self._pipes.values():
            pipe.read()
            total.add(pipe.latest)
        return total

    def close(self) -> None:
        for pid in list(self._pipes):
            os.close(self._pipes.pop(pid).fd)


class IdentityFacts(Collector):
    """At each scrape: the leader's tally plus the workers', the signing CA's time left,
    and the workers reporting."""

    def __init__(
        self,
        tally: Tally,
        reports: WorkerReports,
        ca: CertificateAuthority,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.tally, self.reports, self.ca, self.clock = tally, reports, ca, clock

    def collect(self) -> Iterator[Metric]:
        _, counts = self.tally.snapshot()
        counts.add(self.reports.totals())
        decisions = CounterMetricFamily(
            "trustmesh_identity_decisions",
            "Decisions the identity service recorded (every process), by outcome and reason.",
            labels=["decision", "reason"],
        )
        for (decision, reason), n in sorted(counts.decisions.items()):
            decisions.add_metric([decision, reason], n)
        yield decisions
        issued = CounterMetricFamily(
            "trustmesh_identity_svids_issued",
            "SVIDs issued (every process), by type.",
            labels=["type"],
        )
        for kind in SVID_TYPES:
            issued.add_metric([kind], counts.issued[kind])
        yield issued
        try:
            expires = self.ca.active.signing.not_valid_after_utc
        except StateError:  # no signing CA: the family is absent, as the health check says
            expires = None
        if expires is not None:
            left = max((expires - self.clock()).total_seconds(), 0.0)
            yield GaugeMetricFamily(
                "trustmesh_identity_signing_ca_seconds_left",
                "Seconds until the CA that signs SVIDs expires.",
                value=left,
            )
        yield GaugeMetricFamily(
            "trustmesh_identity_workers",
            "Worker processes serving the Workload API beside the leader (reporting).",
            value=self.reports.running,
        )


def registry(
    facts: IdentityFacts, source: Certified, delivery: object | None
) -> Callable[[], bytes]:
    """The leader's metrics, rendered in the text exposition format at each call."""
    found = CollectorRegistry(auto_describe=True)
    found.register(facts)
    found.register(LiveFacts("identity", source, delivery, clock=facts.clock))
    return lambda: generate_latest(found)
