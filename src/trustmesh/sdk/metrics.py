"""Prometheus metrics, as every trustmesh process serves them: on a loopback listener of
its own (plain HTTP, ``GET /metrics``, for a scraper on the same machine). The server
components use these through :mod:`trustmesh.platform.metrics`; a service run by the SDK
(:func:`~trustmesh.sdk.runtime.run_service`) serves them when asked to (opt-in:
``TRUSTMESH_METRICS_PORT``, which ``trustmesh up`` sets; ``0`` picks a free port), and
writes their URL to ``TRUSTMESH_METRICS_FILE`` where ``trustmesh status`` reads it.

For component ``<c>`` (``service`` for a service, with a ``service`` label naming it;
labels are bounded vocabularies: outcomes, reason codes and declared names, never a path,
a subject or an address):

- ``trustmesh_<c>_decisions_total{decision, reason}``: every event it recorded, by
  outcome and reason code (:class:`CountingSink` counts them on their way to the log and
  the collector);
- ``trustmesh_<c>_certificate_seconds_left``: until its X.509-SVID expires (it renews at
  half its life; a value near zero means renewal is failing);
- its delivery to the audit collector, where it has one:
  ``trustmesh_<c>_audit_spooled_events`` (spooled, not yet acknowledged: the spool's
  depth), ``…_audit_queued_events`` (in memory, not yet spooled),
  ``…_audit_delivered_total``, ``…_audit_dropped_total`` (a full spool under ``drop``),
  ``…_audit_dead_lettered_total``, ``…_audit_delivery_failures_total``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from trustmesh import events
from trustmesh.errors import UsageError
from trustmesh.sdk.serve import Listener, Receive, Scope, Send, listener_config, run_server

__all__ = [
    "METRICS_FILE_ENV",
    "METRICS_PORT_ENV",
    "Certified",
    "ComponentMetrics",
    "CountingSink",
    "LiveFacts",
    "ServiceMetrics",
    "serve_metrics",
    "start_metrics",
]

#: Serve the service's metrics on this loopback port (``0``: a free one); unset: none.
METRICS_PORT_ENV = "TRUSTMESH_METRICS_PORT"
#: Where a service writes its metrics URL (``{"metrics_url", "pid", "service"}``).
METRICS_FILE_ENV = "TRUSTMESH_METRICS_FILE"


class Certified(Protocol):
    """An SVID source: its ``context.not_after`` is when the SVID expires."""

    @property
    def context(self) -> Any: ...


def _family(
    kind: type[GaugeMetricFamily | CounterMetricFamily],
    name: str,
    text: str,
    value: float,
    labels: Mapping[str, str],
) -> Metric:
    family = kind(name, text, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class LiveFacts(Collector):
    """What is read at each scrape: the SVID's time left, the delivery's counts (where
    ``delivery`` has ``stats()``: an :class:`~trustmesh.sdk.delivery.AuditSink`), and any
    ``extra`` families (the collector's alert counts); ``labels`` on every sample."""

    def __init__(
        self,
        component: str,
        source: Certified | None,
        delivery: object | None = None,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        extra: Callable[[], Iterator[Metric]] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.prefix = f"trustmesh_{component}_"
        self.source = source
        stats = getattr(delivery, "stats", None)
        self.stats: Callable[[], Any] | None = stats if callable(stats) else None
        self.clock = clock
        self.extra = extra
        self.labels = dict(labels or {})

    def collect(self) -> Iterator[Metric]:
        p, labels = self.prefix, self.labels
        if self.source is not None:
            left = (self.source.context.not_after - self.clock()).total_seconds()
            text = "Seconds until the X.509-SVID expires (renewed at half its life)."
            yield _family(
                GaugeMetricFamily, p + "certificate_seconds_left", text, max(left, 0.0), labels
            )
        if self.stats is not None:
            s = self.stats()
            for name, value, text in (
                ("spooled_events", s.spooled, "Events in the audit spool, not yet acknowledged."),
                ("queued_events", s.queued, "Events in memory, not yet in the audit spool."),
            ):
                yield _family(GaugeMetricFamily, p + f"audit_{name}", text, value, labels)
            for name, value, text in (
                ("delivered", s.delivered, "Events the audit collector acknowledged."),
                ("dropped", s.dropped, "Events dropped: the spool was full under 'drop'."),
                ("dead_lettered", s.dead_lettered, "Events the collector refused, kept aside."),
                ("delivery_failures", s.failures, "Failed deliveries and spool writes."),
            ):
                yield _family(CounterMetricFamily, p + f"audit_{name}", text, value, labels)
        if self.extra is not None:
            yield from self.extra()


class ComponentMetrics:
    """A component's registry: its decisions (:meth:`decided`) and its :class:`LiveFacts`
    (``labels``: constant labels on the decisions, e.g. the service's name)."""

    def __init__(
        self, component: str, facts: LiveFacts, labels: Mapping[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = tuple((labels or {}).values())
        self.decisions = Counter(
            f"trustmesh_{component}_decisions",
            "Decisions recorded, by outcome and reason code.",
            (*(labels or {}), "decision", "reason"),
            registry=self.registry,
        )
        self.registry.register(facts)

    def decided(self, decision: str, reason: str) -> None:
        self.decisions.labels(*self.labels, decision, reason).inc()

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


def serve_metrics(render: Callable[[], bytes]) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
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


async def start_metrics(render: Callable[[], bytes], port: int = 0) -> Listener:
    """``render()`` served at ``http://127.0.0.1:<port>/metrics``: loopback only."""
    config = listener_config(serve_metrics(render), "127.0.0.1", port, "warning")
    return Listener(*await run_server(config, "trustmesh-metrics"))


class ServiceMetrics:
    """A service's metrics: :attr:`sink` counts its decisions (then hands them to the sink
    it wraps); :meth:`start` serves them on loopback and writes their URL to ``publish``
    (removed again by :meth:`stop`)."""

    def __init__(
        self,
        service: str,
        source: Certified,
        sink: events.EventSink,
        delivery: object | None,
        *,
        port: int = 0,
        publish: Path | None = None,
    ) -> None:
        labels = {"service": service}
        facts = LiveFacts("service", source, delivery, labels=labels)
        self.metrics = ComponentMetrics("service", facts, labels)
        self.sink = CountingSink(sink, self.metrics)
        self.service, self.port, self.publish = service, port, publish
        self.listener: Listener | None = None

    @classmethod
    def from_env(
        cls, service: str, source: Certified, sink: events.EventSink, delivery: object | None
    ) -> ServiceMetrics | None:
        """As ``TRUSTMESH_METRICS_PORT`` and ``TRUSTMESH_METRICS_FILE`` ask (None: unset)."""
        port, publish = os.environ.get(METRICS_PORT_ENV), os.environ.get(METRICS_FILE_ENV)
        if not port:
            return None
        if not port.isdigit() or int(port) > 65535:
            raise UsageError(f"{METRICS_PORT_ENV} must be a port number (0: any free one)")
        where = Path(publish) if publish else None
        return cls(service, source, sink, delivery, port=int(port), publish=where)

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.listener.port}/metrics" if self.listener else None

    async def start(self) -> str:
        self.listener = await start_metrics(self.metrics.render, self.port)
        url = f"http://127.0.0.1:{self.listener.port}/metrics"
        if self.publish is not None:
            self.publish.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            doc = {"metrics_url": url, "pid": os.getpid(), "service": self.service}
            tmp = self.publish.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(self.publish)
        return url

    async def stop(self) -> None:
        if self.publish is not None:
            self.publish.unlink(missing_ok=True)
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
