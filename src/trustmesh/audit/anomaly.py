"""Behavioural baselines: what each principal usually does, and how far a window of its
activity strays from it — said in words ("orders called inventory GET /items/{id} 41×
its usual rate").

**Who.** Each decision event (``allow``/``deny`` of an API, authorization or
authentication class; findings excluded) belongs to its principal: the token's subject,
else the OAuth client, else the calling workload's SPIFFE ID, else the login name tried
(``login:<name>``). Its source is ``src_endpoint.ip``, else the gateway's
``attributes.client``; its endpoint the component, method and route (else path) it
asked; its token the ``jti``; its size ``attributes.bytes`` where a component records it.

**When.** Event time in windows of ``window`` (10 minutes). A principal's window is
judged once the stream passes its end by ``lateness``, against the baseline learned
from its windows before, and then learned. Nothing is read from the wall clock.

**What counts** (each adds to the window's score, and says so):

- *rate* — requests to one endpoint in the window at least ``rate_factor`` × its usual
  there per active window (an average that moves: ``1/16`` of each window; an endpoint
  it never asked counts as ``min_requests``), and at least ``min_requests``:
  ``1.5 × log2`` of the ratio;
- *a token from two addresses* — a token id presented from an address other than the
  one it was first seen from: 3 (a stolen token in use beside its owner's);
- *a new address* — an address it was never seen from: 2, and 1.5 more when it was
  refused there (a sign-in that failed from where its owner never was);
- *new endpoints* — endpoints it never asked, once it was seen with 100 requests: 1
  each, at most 2;
- *refusals* — at least 3 refused and a refused share ``0.5`` above its usual: 1.5;
- *hours* — active at an hour of the day (UTC) that holds under 1% of the activity it
  was seen with (once it was seen with 200 requests): 1;
- *bytes* — where events carry them, at least ``rate_factor`` × its usual per window:
  ``log2`` of the ratio.

**Addresses that try names.** An address refused sign-in (Authentication, ``deny``)
for ``stuffing_accounts`` (5) different names within a day, none let in from it in that
day, is an alert too (principal ``address:<ip>``), and again for each window it keeps
trying in: slow credential stuffing, names that exist or not, below any rate a
per-name view sees.

An :class:`~trustmesh.audit.detection.Alert` (rule ``anomaly``, kind ``anomaly``, its
title the explanation, grouped by principal) when the score reaches ``threshold`` and
the principal has been known for ``learning`` (event time): a principal first seen
later is learned, not judged, until its own learning has passed — but for a token from
two addresses, which needs no baseline. A name no account has (``login:<name>``) has no
baseline of its own: only its address is judged (below). Memory is bounded:
``max_principals`` baselines (the least recently active forgotten) and addresses, as
many windows open at once (past it, events are counted in :attr:`skipped`), per
principal at most 256 endpoints, 64 addresses and 64 tokens remembered, and 1,024
endpoints and addresses counted in one window.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trustmesh.audit.detection import Alert
from trustmesh.errors import ConfigError

__all__ = ["AnomalyDetector", "AnomalySettings", "Judgement", "principal_of"]

RULE_ID: Final = "anomaly"
_AUTHENTICATION: Final = 3002
_DECISION_CLASSES: Final = frozenset({_AUTHENTICATION, 3003, 6003})
_DECISIONS: Final = frozenset({"allow", "deny"})
_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 86_400_000
_SOURCE: Final = "\0address:"  # an address's window in the due index (no principal has NUL)
_MAX_ENDPOINTS: Final = 256
_MAX_ADDRESSES: Final = 64
_MAX_TOKENS: Final = 64
_MAX_UIDS: Final = 100
_MAX_KEYS: Final = 1024  # endpoints, addresses counted in one window of one principal
_EWMA: Final = 1 / 16
#: New endpoints count once a principal was seen with this many requests.
_BROAD: Final = 100


@dataclass(frozen=True)
class AnomalySettings:
    window_ms: int = 600_000
    lateness_ms: int = 5_000
    learning_ms: int = 86_400_000
    threshold: float = 3.0
    rate_factor: float = 4.0
    min_requests: int = 20
    max_principals: int = 50_000
    stuffing_accounts: int = 5
    level: str = "high"

    def __post_init__(self) -> None:
        if not 60_000 <= self.window_ms <= 86_400_000:
            raise ConfigError("detection.anomaly.window: from 1 minute to 1 day")
        if self.threshold <= 0 or self.rate_factor <= 1 or self.min_requests < 1:
            raise ConfigError(
                "detection.anomaly: threshold above 0, rate_factor above 1, min_requests 1+"
            )


_NONE: Final[dict[str, Any]] = {}


def _component(metadata: dict[str, Any]) -> str:
    """The component that recorded the event (``metadata.product.feature.name``)."""
    product = metadata.get("product")
    feature = product.get("feature") if type(product) is dict else None
    name = feature.get("name") if type(feature) is dict else None
    return name if type(name) is str else ""


def _edge_address(event: Mapping[str, Any]) -> str | None:
    """Where the principal itself asked from: ``src_endpoint.ip``, else the gateway's
    ``attributes.client``; None for a hop between workloads (it comes from the calling
    workload, not from the principal)."""
    tm = event["unmapped"]["trustmesh"]
    if tm.get("peer_spiffe_id"):
        return None
    src = event.get("src_endpoint")
    address = src.get("ip") if type(src) is dict else None
    if not address:
        attributes = tm.get("attributes")
        address = attributes.get("client") if type(attributes) is dict else None
    return address if type(address) is str and address else None


def principal_of(event: Mapping[str, Any]) -> str | None:
    """Whose decision ``event`` is (module docstring), or None when it is not one."""
    if event.get("class_uid") not in _DECISION_CLASSES:
        return None
    unmapped = event.get("unmapped")
    tm = unmapped.get("trustmesh") if isinstance(unmapped, dict) else None
    if not isinstance(tm, dict):
        return None
    decision = tm.get("decision")
    if type(decision) is not str or decision not in _DECISIONS:
        return None
    for key in ("sub", "client_id", "peer_spiffe_id"):
        value = tm.get(key)
        if isinstance(value, str) and value:
            return value
    attributes = tm.get("attributes")
    login = attributes.get("login") if isinstance(attributes, dict) else None
    return f"login:{login}" if isinstance(login, str) and login else None


@dataclass
class _Baseline:
    first_seen: int
    windows: int = 0
    denied: float = 0.0
    bytes: float = 0.0
    requests: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    rates: OrderedDict[str, float] = field(default_factory=OrderedDict)  # per window
    addresses: OrderedDict[str, None] = field(default_factory=OrderedDict)
    tokens: OrderedDict[str, str] = field(default_factory=OrderedDict)


@dataclass
class _Window:
    start: int
    baseline: _Baseline
    requests: int = 0
    denied: int = 0
    bytes: int = 0
    endpoints: Counter[str] = field(default_factory=Counter)
    addresses: Counter[str] = field(default_factory=Counter)
    refused_at: Counter[str] = field(default_factory=Counter)
    allowed_at: set[str] = field(default_factory=set)
    hours: set[int] = field(default_factory=set)
    replayed: dict[str, tuple[str, str]] = field(default_factory=dict)  # jti: (first, now)
    uids: list[str] = field(default_factory=list)


@dataclass
class _Source:
    """An address's sign-ins over the last day: the names refused (with when, oldest
    first), when one was last let in, its open window, and the refused attempts not
    yet in an alert."""

    refused: OrderedDict[str, int] = field(default_factory=OrderedDict)
    signed_in: int | None = None
    window: int = -1  # the open window's start (-1: none)
    uids: list[tuple[str, int]] = field(default_factory=list)  # (uid, time), oldest first


@dataclass(frozen=True)
class Judgement:
    """One principal's window, judged: its score, and each part of it in words."""

    principal: str
    start: int
    end: int
    score: float
    reasons: tuple[str, ...]
    event_uids: tuple[str, ...]

    def explanation(self) -> str:
        return f"{_short(self.principal)} " + ", ".join(self.reasons)


def _novelty(window: _Window, baseline: _Baseline) -> list[tuple[float, str]]:
    """Addresses it was never seen from (refused there, never let in); endpoints it
    never asked, once its baseline is broad."""
    parts: list[tuple[float, str]] = []
    new_addresses = [a for a in window.addresses if a not in baseline.addresses]
    if new_addresses:
        parts.append((2.0, f"from a new address {new_addresses[0]}"))
        refused = [a for a in new_addresses if window.refused_at[a] and a not in window.allowed_at]
        if refused:
            parts.append((1.5, f"refused there {window.refused_at[refused[0]]}×"))
    new_endpoints = [e for e in window.endpoints if e not in baseline.rates]
    if new_endpoints and baseline.requests >= _BROAD:
        words = f"asked {', '.join(new_endpoints[:2])} (never before)"
        parts.append((float(min(len(new_endpoints), 2)), words))
    return parts


def _short(principal: str) -> str:
    return principal.rsplit("/", 1)[-1] if principal.startswith("spiffe://") else principal


def _remember(seen: OrderedDict[str, Any], key: str, value: Any, bound: int) -> None:
    seen[key] = value
    seen.move_to_end(key)
    if len(seen) > bound:
        seen.popitem(last=False)


class AnomalyDetector:
    """Per-principal baselines over an event stream in event-time order (module
    docstring): :meth:`observe` each event, :meth:`advance` when time passes without
    one, :meth:`flush` at the end of a replay."""

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        self._baselines: OrderedDict[str, _Baseline] = OrderedDict()
        self._open: dict[str, _Window] = {}
        self._due: dict[int, list[str]] = {}  # window start: whose windows opened then
        self._starts: list[int] = []  # a heap of those starts
        self._watermark = 0
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.judged: list[Judgement] = []  # every window over the threshold (for replays)
        self.skipped = 0  # events not counted: more principals active than it may hold

    @property
    def memory_ms(self) -> int:
        """How far back its baselines reach (learning, one window): what a warm start
        shows it again, as far as ``detection.warm_start`` records allow."""
        return self.settings.learning_ms + self.settings.window_ms

    def observe(self, event: Mapping[str, Any]) -> list[Alert]:
        time = event.get("time")
        principal = principal_of(event)
        if type(time) is not int or principal is None:
            return self.advance(time) if type(time) is int else []
        alerts = self.advance(time)
        start = time - time % self.settings.window_ms
        if principal.startswith("login:"):  # a name no account has: its address is judged
            address = _edge_address(event)
            if address is not None and event.get("class_uid") == _AUTHENTICATION:
                alerts.extend(self._sign_in(address, principal, event, time, start))
            return alerts
        window = self._open.get(principal)
        if window is None or start > window.start:
            if window is not None:  # an older window of its own: judged first
                alerts.extend(self._close(principal, window))
            elif len(self._open) >= self.settings.max_principals:
                self.skipped += 1  # more principals at once than it may hold
                return alerts
            baseline = self._baselines.get(principal) or _Baseline(first_seen=time)
            # the least recently active forgotten first (once a window: cheap)
            _remember(self._baselines, principal, baseline, self.settings.max_principals)
            window = self._open[principal] = _Window(start, baseline)
            self._due_at(start, principal)
        # (an event later than its window's judgement counts in the open one)
        address = self._add(window, window.baseline, event, time)
        if address is not None and event.get("class_uid") == _AUTHENTICATION:
            alerts.extend(self._sign_in(address, principal, event, time, start))
        return alerts

    def _due_at(self, start: int, key: str) -> None:
        """``key``'s window (a principal's, or ``address:…``) opened at ``start``."""
        keys = self._due.get(start)
        if keys is None:
            keys = self._due[start] = []
            heapq.heappush(self._starts, start)
        keys.append(key)

    def _sign_in(
        self, address: str, principal: str, event: Mapping[str, Any], time: int, start: int
    ) -> list[Alert]:
        """Count a sign-in of ``address`` (module docstring): its refusals are judged
        with its window."""
        source = self._sources.get(address) or _Source()
        _remember(self._sources, address, source, self.settings.max_principals)
        if event["unmapped"]["trustmesh"].get("decision") != "deny":
            source.signed_in = time
            return []
        refused = source.refused
        while refused and next(iter(refused.values())) <= time - _DAY_MS:
            refused.popitem(last=False)  # past a day: forgotten
        _remember(refused, principal, time, _MAX_ENDPOINTS)
        uid = (event.get("metadata") or {}).get("uid")
        uids = source.uids
        while uids and uids[0][1] <= time - _DAY_MS:
            del uids[0]  # past a day, as the names
        if isinstance(uid, str) and len(uids) < _MAX_UIDS:
            uids.append((uid, time))
        alerts: list[Alert] = []
        if start > source.window:
            if source.window >= 0:
                alerts.extend(self._close_source(address, source))
            source.window = start
            self._due_at(start, _SOURCE + address)
        return alerts

    def _close_source(self, address: str, source: _Source) -> list[Alert]:
        """An address's window of refused sign-ins, judged: an alert holding every try
        not alerted on yet, once it was refused for enough names in a day."""
        start, source.window = source.window, -1
        names = len(source.refused)
        let_in = source.signed_in is not None and source.signed_in > start - _DAY_MS
        if let_in or names < self.settings.stuffing_accounts or not source.uids:
            return []
        uids, source.uids = tuple(uid for uid, _ in source.uids), []
        judgement = Judgement(
            f"address:{address}",
            start,
            start + self.settings.window_ms,
            float(names),
            (f"refused sign-in for {names} names in a day, none let in",),
            uids,
        )
        self.judged.append(judgement)
        return [self._alert(judgement)]

    def advance(self, time_ms: int) -> list[Alert]:
        """Judge every window the stream has passed (its end plus the lateness)."""
        if time_ms <= self._watermark:
            return []
        self._watermark = time_ms
        due = time_ms - self.settings.lateness_ms - self.settings.window_ms
        alerts: list[Alert] = []
        starts = self._starts
        while starts and starts[0] <= due:
            alerts.extend(self._close_all(heapq.heappop(starts)))
        return alerts

    def _close_all(self, start: int) -> list[Alert]:
        alerts: list[Alert] = []
        for key in self._due.pop(start, ()):
            if key.startswith(_SOURCE):
                address = key[len(_SOURCE) :]
                source = self._sources.get(address)
                if source is not None and source.window == start:
                    alerts.extend(self._close_source(address, source))
                continue
            window = self._open.get(key)
            if window is not None and window.start == start:
                del self._open[key]
                alerts.extend(self._close(key, window))
        return alerts

    def flush(self) -> list[Alert]:
        """Every open window judged now (the end of a replay)."""
        alerts: list[Alert] = []
        while self._starts:
            alerts.extend(self._close_all(heapq.heappop(self._starts)))
        return alerts

    def _add(
        self, window: _Window, baseline: _Baseline, event: Mapping[str, Any], time: int
    ) -> str | None:
        """Count ``event`` in ``window``; the principal's own address, if it names one
        (each event the collector stores comes here: lookups written out)."""
        tm: dict[str, Any] = event["unmapped"]["trustmesh"]
        attributes = tm.get("attributes")
        if type(attributes) is not dict:
            attributes = _NONE
        window.requests += 1
        denied = tm["decision"] == "deny"
        if denied:
            window.denied += 1
        size = attributes.get("bytes")
        if type(size) is int and size > 0:
            window.bytes += size
        metadata = event.get("metadata")
        if type(metadata) is not dict:
            metadata = _NONE
        component = _component(metadata)
        route = attributes.get("route")
        if (
            type(route) is str
            and route.startswith(component)
            and route[len(component) : len(component) + 1] == " "
        ):
            endpoint = route  # a service's own: "<callee> <method> <pattern>"
        else:
            target = route or attributes.get("path") or tm.get("reason", "")
            endpoint = f"{component} {attributes.get('method', '')} {target}"
        if endpoint in window.endpoints or len(window.endpoints) < _MAX_KEYS:
            window.endpoints[endpoint] += 1
        hour = time // _HOUR_MS % 24
        if hour not in window.hours:
            window.hours.add(hour)
        uids = window.uids
        if len(uids) < _MAX_UIDS:
            uid = metadata.get("uid")
            if type(uid) is str:
                uids.append(uid)
        address = _edge_address(event)
        if address is None or (
            address not in window.addresses and len(window.addresses) >= _MAX_KEYS
        ):
            return address
        window.addresses[address] += 1
        if denied:
            window.refused_at[address] += 1
        else:
            window.allowed_at.add(address)
        jti = tm.get("jti")
        if type(jti) is str and jti:
            first = baseline.tokens.get(jti)
            if first is None:
                _remember(baseline.tokens, jti, address, _MAX_TOKENS)
            elif first != address:
                window.replayed.setdefault(jti, (first, address))
        return address

    def _close(self, principal: str, window: _Window) -> list[Alert]:
        baseline = window.baseline
        settings = self.settings
        learned = window.start - baseline.first_seen >= settings.learning_ms
        alerts: list[Alert] = []
        if learned or window.replayed:  # a token from two addresses needs no baseline
            judgement = self._judge(principal, window, baseline, learned)
            if judgement.score >= settings.threshold:
                self.judged.append(judgement)
                alerts.append(self._alert(judgement))
        self._learn(window, baseline)
        return alerts

    def _judge(
        self, principal: str, window: _Window, baseline: _Baseline, learned: bool
    ) -> Judgement:
        """The window's score against ``baseline`` (not ``learned`` yet: the token's
        addresses alone), each part with its words."""
        parts: list[tuple[float, str]] = []
        for jti, (first, now) in list(window.replayed.items())[:1]:
            parts.append((3.0, f"its token {jti[:8]}… used from {now} as well as {first}"))
        if learned:
            parts += self._rate(window, baseline)
            parts += _novelty(window, baseline)
            parts += self._habits(window, baseline)
        return Judgement(
            principal,
            window.start,
            window.start + self.settings.window_ms,
            round(sum(score for score, _ in parts), 2),
            tuple(words for _, words in parts),
            tuple(window.uids),
        )

    def _rate(self, window: _Window, baseline: _Baseline) -> list[tuple[float, str]]:
        """The busiest endpoint against its usual rate; the bytes against theirs."""
        settings = self.settings
        parts: list[tuple[float, str]] = []
        floor = float(settings.min_requests)
        surge = max(
            (
                # an endpoint it never asked: as if it asked min_requests a window
                (count / max(baseline.rates.get(endpoint, floor), 1.0), endpoint)
                for endpoint, count in window.endpoints.items()
                if count >= settings.min_requests
            ),
            default=None,
        )
        if surge is not None and surge[0] >= settings.rate_factor:
            ratio, endpoint = surge
            parts.append((1.5 * math.log2(ratio), f"called {endpoint} {ratio:.0f}× its usual rate"))
        if window.bytes and baseline.bytes:
            grown = window.bytes / baseline.bytes
            if grown >= settings.rate_factor:
                parts.append((math.log2(grown), f"moved {grown:.0f}× its usual bytes"))
        return parts

    @staticmethod
    def _habits(window: _Window, baseline: _Baseline) -> list[tuple[float, str]]:
        """Refused far more than usual; active at an hour it is usually idle."""
        parts: list[tuple[float, str]] = []
        share = window.denied / window.requests
        if window.denied >= 3 and share >= baseline.denied + 0.5:
            usually = f"{baseline.denied:.0%}"
            parts.append((1.5, f"{window.denied} of {window.requests} refused (usually {usually})"))
        if baseline.requests >= 200:
            quiet = [h for h in window.hours if baseline.hours[h] < baseline.requests / 100]
            if quiet:
                parts.append((1.0, f"at {min(quiet):02d}:00 UTC, when it is usually idle"))
        return parts

    def _learn(self, window: _Window, baseline: _Baseline) -> None:
        if baseline.windows == 0:
            baseline.denied = window.denied / window.requests
            baseline.bytes = float(window.bytes)
        else:
            baseline.denied += _EWMA * (window.denied / window.requests - baseline.denied)
            baseline.bytes += _EWMA * (window.bytes - baseline.bytes)
        rates = baseline.rates
        for endpoint, rate in list(rates.items()):  # an endpoint it did not ask: 0 this time
            rates[endpoint] = rate + _EWMA * (window.endpoints.get(endpoint, 0) - rate)
        for endpoint, count in window.endpoints.items():  # the least recently asked go first
            if endpoint in rates:
                rates.move_to_end(endpoint)
            else:
                _remember(rates, endpoint, float(count), _MAX_ENDPOINTS)
        baseline.windows += 1
        baseline.requests += window.requests
        share = window.requests / max(len(window.hours), 1)
        for hour in window.hours:
            baseline.hours[hour] += round(share)
        for address in window.addresses:
            _remember(baseline.addresses, address, None, _MAX_ADDRESSES)

    def _alert(self, judgement: Judgement) -> Alert:
        key = f"{RULE_ID}\0{judgement.principal}\0{judgement.start}".encode()
        return Alert(
            uid=hashlib.sha256(key).hexdigest()[:32],
            rule_id=RULE_ID,
            title=f"Anomaly: {judgement.explanation()}"[:512],
            level=self.settings.level,
            kind="anomaly",
            group=(("principal", judgement.principal),),
            event_uids=judgement.event_uids,
            measure=round(judgement.score * 100),
            window_start=judgement.start,
            window_end=judgement.end,
            actions=(),
            rule_path="",
        )
