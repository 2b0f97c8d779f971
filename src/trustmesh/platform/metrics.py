"""The Prometheus metrics every server component serves, on a loopback listener of its
own (its URL is the component's ``metrics_url`` in ``trustmesh status``). The counting
and serving live in the SDK (:mod:`trustmesh.sdk.metrics`, which a service run by the
SDK uses too; the SDK never imports the platform); this module wires them into a
component. The gateway serves its own (:mod:`trustmesh.gateway.metrics`,
``gateway.metrics_port``), with the facts below added; the identity service, whose
workers count in other processes, has :mod:`trustmesh.identity.metrics`.

For component ``<c>``: ``trustmesh_<c>_decisions_total{decision, reason}``,
``trustmesh_<c>_certificate_seconds_left`` and its audit delivery's counts (see
:mod:`trustmesh.sdk.metrics`); the collector's own: ``trustmesh_audit_alerts_total``
(raised since it started) and ``trustmesh_audit_detected_events_total`` (events
detection has seen).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from prometheus_client.core import Metric

from trustmesh import events
from trustmesh.platform.listeners import start_loopback
from trustmesh.sdk import spans
from trustmesh.sdk.metrics import (
    Certified,
    ComponentMetrics,
    CountingSink,
    LiveFacts,
    serve_metrics,
)

__all__ = ["ComponentMetrics", "CountingSink", "LiveFacts", "component_metrics", "serve_metrics"]


@contextlib.asynccontextmanager
async def component_metrics(
    component: str,
    source: Certified,
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
