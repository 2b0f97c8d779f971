"""Spans forwarded to a real OTLP/HTTP receiver (a server on 127.0.0.1 that parses each
``ExportTraceServiceRequest`` with opentelemetry-proto): over verified TLS, the newly
stored spans only, their resource naming the reporter; retried on OTLP's retryable
statuses, given up at once (and recorded) on the others. And spans past
``audit.tracing.retention`` pruned by the collector's clock (injected: no waiting)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from collectorrig import PAYMENTS, CollectorRig, collector_config, collector_rig
from collectorrig import identity_for as identity_rig
from spanrig import T0_NS, TRACE_HEX, encoded, post_otlp, request_of, span
from tlsrig import Receiver, make_pki, receiver

from trustmesh.audit.otlp import REPORTER_ATTRIBUTE
from trustmesh.testing import RunningIdentityServer, until_async

TD = "trustmesh.local"


def _config(tracing: str) -> str:
    return f"""
trust_domain: {TD}
dev: true
services:
  payments: {{external: true}}
audit:
  checkpoint_every: 5
  tracing: {tracing}
"""


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_rig(collector_config(), short_tmp / "identity")


@contextlib.asynccontextmanager
async def forwarding_rig(
    identity: RunningIdentityServer,
    folder: Path,
    *,
    tls: bool,
    statuses: list[int] | None = None,
    **serve: Any,
) -> AsyncIterator[tuple[CollectorRig, Receiver]]:
    pki = make_pki(folder / "pki") if tls else None
    with contextlib.contextmanager(receiver)(pki, statuses) as rx:
        scheme = "https" if tls else "http"
        ca = f", ca_file: {pki.ca_file}" if pki is not None else ""
        text = _config(f'{{otlp: {{url: "{scheme}://127.0.0.1:{rx.port}"{ca}}}}}')
        async with collector_rig(
            identity, folder / "state", collector_config(text), tick=3600, **serve
        ) as rig:
            yield rig, rx


def _resource(body: bytes) -> dict[str, str]:
    (resource,) = request_of(body).resource_spans
    return {a.key: a.value.string_value for a in resource.resource.attributes}


def _span_ids(body: bytes) -> list[str]:
    return [
        s.span_id.hex()
        for r in request_of(body).resource_spans
        for scope in r.scope_spans
        for s in scope.spans
    ]


async def test_stored_spans_are_forwarded_once_over_tls_naming_the_reporter(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with forwarding_rig(identity, short_tmp, tls=True) as (rig, rx):
        claims = {REPORTER_ATTRIBUTE: "spiffe://trustmesh.local/trustmesh/audit"}
        first = encoded(
            span(0x1, service="orders", resource=claims),
            span(0x2, parent=0x1, service="orders", resource=claims),
            span(0x3, trace_id=0, service="orders", resource=claims),
        )
        status, _, _ = await post_otlp(rig.payments, first)
        assert status == 200
        (got,) = await asyncio.to_thread(rx.wait_for, 1)
        assert got.path == "/v1/traces"
        assert got.headers["Content-Type"] == "application/x-protobuf"
        assert _span_ids(got.body) == ["0000000000000001", "0000000000000002"]
        assert _resource(got.body) == {"service.name": "orders", REPORTER_ATTRIBUTE: PAYMENTS}
        assert request_of(got.body).resource_spans[0].scope_spans[0].spans[0].trace_id.hex() == (
            TRACE_HEX
        )
        # a retry of the same request stores nothing new, and forwards nothing
        assert (await post_otlp(rig.payments, first))[0] == 200
        assert (await post_otlp(rig.payments, encoded(span(0x1), span(0x4))))[0] == 200
        requests = await asyncio.to_thread(rx.wait_for, 2)
        assert [_span_ids(r.body) for r in requests[1:]] == [["0000000000000004"]]
        stats = rig.running.traces.forwarder.stats  # type: ignore[union-attr]
        await until_async(
            lambda: stats.delivered == 2, "the forwarder to count it", within=5, every=0.02
        )
        assert (stats.delivered, stats.failed) == (2, 0)


async def test_a_retryable_answer_is_retried(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    options = {"sleep": lambda _: None}
    async with forwarding_rig(
        identity, short_tmp, tls=False, statuses=[503, 200], forwarding=options
    ) as (rig, rx):
        status, _, _ = await post_otlp(rig.payments, encoded(span(0x1)))
        assert status == 200
        first, second = await asyncio.to_thread(rx.wait_for, 2)
        assert first.body == second.body
        assert _span_ids(second.body) == ["0000000000000001"]
        stats = rig.running.traces.forwarder.stats  # type: ignore[union-attr]
        await until_async(
            lambda: stats.delivered == 1, "the forwarder to count it", within=5, every=0.02
        )
        assert (stats.retries, stats.delivered) == (1, 1)


async def test_a_refusal_is_given_up_at_once_and_recorded(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    options = {"sleep": lambda _: None}
    async with forwarding_rig(
        identity, short_tmp, tls=False, statuses=[500, 200], forwarding=options
    ) as (rig, rx):
        status, _, _ = await post_otlp(rig.payments, encoded(span(0x1)))
        assert status == 200
        await until_async(
            lambda: any(e.reason == "export-failed" for e in rig.sink.events),
            "the export-failed event",
            within=5,
            every=0.02,
        )
        failed = [e for e in rig.sink.events if e.reason == "export-failed"]
        assert [e.attributes for e in failed] == [
            {"receiver": "otlp", "item": "1 spans", "why": "refused: HTTP 500"}
        ]
        assert len(rx.requests) == 1


async def test_spans_past_retention_are_pruned_by_the_collectors_clock(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    hour = 3600.0
    now = [T0_NS / 1e9 + hour]
    config = collector_config(_config("{retention: 7d}"))
    async with collector_rig(
        identity, short_tmp / "state", config, tick=3600, clock=lambda: now[0]
    ) as rig:
        old = span(0xA, start=T0_NS)
        future = span(0xB, start=T0_NS + 30 * 24 * 3_600_000_000_000)  # a claim
        assert (await post_otlp(rig.payments, encoded(old, future)))[0] == 200
        pruning = rig.running.span_retention
        assert pruning is not None
        assert await pruning.prune() == 0
        now[0] = T0_NS / 1e9 + 7 * 24 * hour + hour / 2  # the old span started 7d 30m ago
        fresh = span(0xC, start=int(now[0] * 1e9))
        assert (await post_otlp(rig.payments, encoded(fresh)))[0] == 200
        assert await pruning.prune() == 1
        status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
        assert (status, [s["span_id"][-1] for s in trace["spans"]]) == (200, ["c", "b"])
        now[0] += hour  # the future-dated span arrived 7d 30m ago
        assert await pruning.prune() == 1
        status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
        assert (status, [s["span_id"][-1] for s in trace["spans"]]) == (200, ["c"])
