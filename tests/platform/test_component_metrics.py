"""A component's metrics as Prometheus reads them: decisions counted on their way to the
sink, the SVID's time left and the audit delivery's counts read at each scrape, served
on loopback."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from trustmesh import events
from trustmesh.platform.metrics import component_metrics
from trustmesh.reasons import Reason
from trustmesh.sdk.delivery import DeliveryStats

NOW = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)


@dataclass
class _Context:
    not_after: dt.datetime


class _Source:
    def __init__(self, not_after: dt.datetime) -> None:
        self.context = _Context(not_after)


class _Delivering(events.MemorySink):
    """A sink with the delivery's counts (as AuditSink has them)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = DeliveryStats(
            queued=2, spooled=7, delivered=40, dropped=1, failures=3, dead_lettered=0
        )

    def stats(self) -> DeliveryStats:
        return self.counts


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_decisions_certificate_and_delivery_are_scraped() -> None:
    source = _Source(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    inner = _Delivering()
    async with component_metrics("auth", source, inner) as (sink, url, _):
        recorder = events.Recorder(sink, component="auth", spiffe_id="spiffe://m.example/a")
        for _ in range(3):
            recorder.record(Reason.LOGIN_FAILED, "login", decision=events.Decision.DENY)
        recorder.record(Reason.LOGIN_SUCCEEDED, "login", decision=events.Decision.ALLOW)
        assert len(inner.events) == 4  # each still reaches the sink it wraps
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as answer:
                assert answer.status == 200
                text = await answer.text()
            inner.counts = DeliveryStats(0, 0, 47, 1, 3, 0)  # read again at each scrape
            async with http.get(url) as answer:
                again = _samples(await answer.text())
            async with http.get(url.replace("/metrics", "/other")) as answer:
                assert answer.status == 404
            async with http.post(url) as answer:
                assert answer.status == 404
    found = _samples(text)
    assert (
        found[
            ("trustmesh_auth_decisions_total", (("decision", "deny"), ("reason", "login-failed")))
        ]
        == 3
    )
    assert (
        found[
            (
                "trustmesh_auth_decisions_total",
                (("decision", "allow"), ("reason", "login-succeeded")),
            )
        ]
        == 1
    )
    assert 3500 < found[("trustmesh_auth_certificate_seconds_left", ())] <= 3600
    assert found[("trustmesh_auth_audit_spooled_events", ())] == 7
    assert found[("trustmesh_auth_audit_queued_events", ())] == 2
    assert found[("trustmesh_auth_audit_delivered_total", ())] == 40
    assert found[("trustmesh_auth_audit_dropped_total", ())] == 1
    assert found[("trustmesh_auth_audit_delivery_failures_total", ())] == 3
    assert again[("trustmesh_auth_audit_delivered_total", ())] == 47
    assert again[("trustmesh_auth_audit_spooled_events", ())] == 0


async def test_no_delivery_no_delivery_metrics_and_an_expired_svid_reads_zero() -> None:
    source = _Source(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    async with (
        component_metrics("secrets", source, events.MemorySink()) as (_, url, metrics),
        aiohttp.ClientSession() as http,
        http.get(url) as answer,
    ):
        found = _samples(await answer.text())
    assert found[("trustmesh_secrets_certificate_seconds_left", ())] == 0
    assert not [name for name, _ in found if "audit_" in name]
    assert metrics.render().startswith(b"# HELP")
