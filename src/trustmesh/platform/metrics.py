"""The Prometheus metrics every component serves, on a loopback listener of its own
(plain HTTP, ``GET /metrics``, for a scraper on the same machine; its URL is the
component's ``metrics_url`` in ``trustmesh status``). The gateway serves its own
(:mod:`trustmesh.gateway.metrics`, ``gateway.metrics_port``), with the facts below added.

For component ``<c>`` (labels are bounded vocabularies: outcomes and reason codes, never
a path, a subject or an address):

- ``trustmesh_<c>_decisions_total{decision, reason}``: every event it recorded, by
  outcome and reason code (:class:`CountingSink` counts them on their way to the log and
  the collector);
- ``trustmesh_<c>_certificate_seconds_left``: until its X.509-SVID expires (it renews at
  half its life; a value near zero means renewal is failing);
- its delivery to the audit collector, where it has one:
  ``trustmesh_<c>_audit_spooled_events`` (spooled, not yet acknowledged: the spool's
  depth), ``…_audit_queued_events`` (in memory, not yet spooled),
  ``…_audit_delivered_total``, ``…_audit_dropped_total`` (a full spool under ``drop``),
  ``…_audit_dead_lettered_total``, ``…_audit_delivery_failures_total``;
- the collector's: ``trustmesh_audit_alerts_total`` (raised since it started) and
  ``trustmesh_audit_detected_events_total`` (events detection has seen).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from trustmesh import events
from trustmesh.platform.listeners import Receive, Scope, Send, start_loopback
from trustmesh.sdk import spans

__all__ = ["ComponentMetrics", "CountingSink", "LiveFacts", "component_metrics", "serve_metrics"]


class _Certified(Protocol):
    @property
    def context(self) -> Any: ...


class LiveFacts(Collector):
    """What is read at each scrape: the SVID's time left, the delivery's counts (where
    ``delivery`` has ``stats()``: an :class:`~trustmesh.sdk.delivery.AuditSink`), and any
    ``extra`` families (the collector's alert counts)."""

    def __init__(
        self,
        component: str,
        source: _Certified | None,
        delivery: object | None = None,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        extra: Callable[[], Iterator[Metric]] | None = None,
    ) -> None:
        self.prefix = f"trustmesh_{component}_"
        self.source = source
        stats = getattr(delivery, "stats", None)
        self.stats: Callable[[], Any] | None = stats if callable(stats) else None
        self.clock = clock
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        p = self.prefix
        if self.source is not None:
            left = (self.source.context.not_after - self.clock()).total_seconds()
            yield GaugeMetricFamily(
                p + "certificate_seconds_left",
                "Seconds until the component's X.509-SVID expires (renewed at half its life).",
                value=max(left, 0.0),
            )
        if self.stats is not None:
            s = self.stats()
            yield GaugeMetricFamily(
                p + "audit_spooled_events",
                "Events in the audit spool, not yet acknowledged by the collector.",
                value=s.spooled,
            )
            yield GaugeMetricFamily(
                p + "audit_queued_events",
                "Events in memory, not yet in the audit spool.",
                value=s.queued,
            )
            for name, value, text in (
                ("delivered", s.delivered, "Events the audit collector acknowledged."),
                ("dropped", s.dropped, "Events dropped: the spool was full under 'drop'."),
                ("dead_lettered", s.dead_lettered, "Events the collector refused, kept aside."),
                ("delivery_failures", s.failures, "Failed deliveries and spool writes."),
            ):
                yield CounterMetricFamily(p + f"audit_{name}", text, value=value)
        if self.extra is not None:
            yield from self.extra()


class ComponentMetrics:
    """A component's registry: its decisions (:meth:`decided`) and its :class:`LiveFacts`."""

    def __init__(self, component: str, facts: LiveFacts) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            f"trustmesh_{component}_decisions",
            "Decisions the component recorded, by outcome and reason code.",
            ("decision", "reason"),
            registry=self.registry,
        )
        self.registry.register(facts)

    def decided(self, decision: str, reason: str) -> None:
        self.decisions.labels(decision, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountingSink:
    """Counts each event's outcome and reason in ``metrics``, then hands it on."""

    def __init__(self, inner: events.EventSink, metrics: ComponentMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def emit(self, event: events.Event) -> None:
        self.metrics.decided(event.decision.value, event.reason.value)
        self.inner.emit(event)


def serve_metrics(render: Callable[[], bytes]) -> Callable[[Scope, Receive, Send], Any]:
    """ASGI: ``GET``/``HEAD /metrics`` answers ``render()``; anything else 404."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": b"not found\n"})
            return
        body = render()
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else body
        await send({"type": "http.response.body", "body": body})

    return app


@contextlib.asynccontextmanager
async def component_metrics(
    component: str,
    source: _Certified,
    sink: events.EventSink,
    *,
    extra: Callable[[], Iterator[Metric]] | None = None,
) -> AsyncIterator[tuple[events.EventSink, str, ComponentMetrics]]:
    """``component``'s metrics served on loopback (a free port) while in the block: the
    sink to record through (it counts, and notes each decision on the span current when
    it is recorded: :class:`~trustmesh.sdk.spans.NotingSink`), the URL of ``/metrics``,
    and the registry."""
    metrics = ComponentMetrics(component, LiveFacts(component, source, sink, extra=extra))
    served = await start_loopback(serve_metrics(metrics.render))
    try:
        counted = CountingSink(spans.NotingSink(sink), metrics)
        yield counted, f"http://127.0.0.1:{served.port}/metrics", metrics
    finally:
        await served.stop()
