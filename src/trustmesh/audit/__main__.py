"""``python -m trustmesh.audit --config FILE --state DIR``: the audit collector process.

Started by ``trustmesh up`` with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token for
``spiffe://<td>/trustmesh/audit``; writes where it listens to
``<state>/audit/endpoint.json`` once it serves (and again when its SVID rotates)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from prometheus_client.core import CounterMetricFamily, Metric

from trustmesh.audit.endpoint import endpoint_path
from trustmesh.audit.server import RunningAudit, serve_audit
from trustmesh.config import TrustmeshConfig
from trustmesh.platform.metrics import component_metrics
from trustmesh.platform.process import component_identity, component_main, serve_until_stopped
from trustmesh.platform.suspensions import suspension_feed


async def run(config: TrustmeshConfig, state: Path, config_file: Path) -> None:
    serving: list[RunningAudit] = []  # once it serves: its detector's counts are scraped
    async with (
        component_identity(config, state, "audit") as (source, recorded),
        component_metrics("audit", source, recorded, extra=lambda: _detected(serving)) as (
            sink,
            metrics_url,
            _,
        ),
        suspension_feed(source, state, "audit") as suspended,
    ):
        running = await serve_audit(
            config, state, source=source, sink=sink, config_file=config_file, suspended=suspended
        )
        serving.append(running)
        settle_gc()
        print(f"audit: {running.url}", flush=True)
        await serve_until_stopped(
            source,
            endpoint_path(state),
            lambda: {
                "url": running.url,
                "metrics_url": metrics_url,
                "console_url": running.console.url if running.console is not None else None,
            },
            running.stop,
        )


def _detected(serving: list[RunningAudit]) -> Iterator[Metric]:
    """The collector's alerts and the events its detection saw, and the spans it stored
    and refused, since it started."""
    if not serving:
        return
    stats = serving[0].service.detector.stats
    yield CounterMetricFamily(
        "trustmesh_audit_alerts", "Alerts raised since the collector started.", value=stats.alerts
    )
    yield CounterMetricFamily(
        "trustmesh_audit_detected_events",
        "Events detection has seen since the collector started.",
        value=stats.events,
    )
    traces = serving[0].traces
    if traces is not None:
        yield CounterMetricFamily(
            "trustmesh_audit_spans_stored",
            "Spans stored since the collector started (a retried span once).",
            value=traces.stats.stored,
        )
        yield CounterMetricFamily(
            "trustmesh_audit_spans_rejected",
            "Spans refused (OTLP partial success) since the collector started.",
            value=traces.stats.rejected,
        )


#: The cyclic GC's first threshold in the collector: containers allocated, less those
#: freed, before a young collection (CPython's default is 700).
GC_YOUNG: Final = 20_000


def settle_gc() -> None:
    """Once the collector serves: its start-up objects (modules, compiled rules, the
    warmed detector) frozen out of the cyclic GC's reach, and young collections less
    often. A delivery of 500 events parses into ~5,000 containers that live until it is
    stored, detected and answered: at the default threshold each delivery paid several
    young collections, and the promoted events full ones over everything alive (measured:
    the event loop's CPU 72 → 55 µs an event). The events are trees: reference counting
    frees them, and what cycles there are are still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-audit", run, argv)


if __name__ == "__main__":
    sys.exit(main())
