"""The gateway's Prometheus metrics, served in the text exposition format on an admin
listener of their own (``gateway.metrics_port``, loopback only).

Labels are bounded by the declaration: route names, decision reasons (the shared enum),
HTTP status classes, upstream services; never a path, a user or a client address.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from trustmesh.platform.metrics import serve_metrics

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """Counters and histograms of one gateway, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "trustmesh_gateway_requests",
            "Requests answered, by route and status class.",
            ("route", "status"),
            registry=self.registry,
        )
        self.decisions = Counter(
            "trustmesh_gateway_decisions",
            "Decisions taken, by outcome and reason code.",
            ("decision", "reason"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "trustmesh_gateway_request_duration_seconds",
            "Time from the request's arrival to the response's start, by route.",
            ("route",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "trustmesh_gateway_upstream_duration_seconds",
            "Time the upstream took to answer, by service.",
            ("service",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.rate_limit_fallback = Gauge(
            "trustmesh_gateway_rate_limit_fallback",
            "1 while the shared rate-limit store is unreachable and each gateway limits alone.",
            registry=self.registry,
        )
        self.upstream_instances = Gauge(
            "trustmesh_gateway_upstream_instances",
            "Known instances per service and state (healthy, unhealthy, ejected).",
            ("service", "state"),
            registry=self.registry,
        )
        self.connections = Gauge(
            "trustmesh_gateway_connections",
            "Client connections open (TLS handshakes included).",
            registry=self.registry,
        )
        self.refused = Counter(
            "trustmesh_gateway_refused",
            "Connections and request heads refused at the listener, by reason (over a "
            "connection cap, TLS handshake failed or too slow, head too large or too slow…).",
            ("reason",),
            registry=self.registry,
        )
        self._statuses = {code: f"{code // 100}xx" for code in range(100, 600)}
        self.refresh: Callable[[], None] | None = None  # called before each scrape
        self.app = serve_metrics(self.render)  # ASGI: GET /metrics; everything else 404

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, self._statuses.get(status, "other")).inc()
        self.duration.labels(route).observe(seconds)

    def decided(self, decision: str, reason: str) -> None:
        self.decisions.labels(decision, reason).inc()

    def listener_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def upstreams_from(self, snapshot: Mapping[str, list[dict[str, Any]]], now: float) -> None:
        """Set the instance gauges from the pool's snapshot (``UpstreamPool.snapshot``)."""
        self.upstream_instances.clear()
        for service, instances in snapshot.items():
            counts = {"healthy": 0, "unhealthy": 0, "ejected": 0}
            for instance in instances:
                until = instance.get("ejected_until")
                if until is not None and until > now:
                    counts["ejected"] += 1
                elif instance.get("healthy"):
                    counts["healthy"] += 1
                else:
                    counts["unhealthy"] += 1
            for state, count in counts.items():
                self.upstream_instances.labels(service, state).set(count)

    def render(self) -> bytes:
        if self.refresh is not None:
            self.refresh()
        return generate_latest(self.registry)
