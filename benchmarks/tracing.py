"""What tracing adds to each request a component serves, measured in one process.

Run: ``.venv/bin/python benchmarks/tracing.py [--requests 50000] [--gateway-us 550]``

Each request is served through the SDK's server-span wrapper (``spans.traced``, what
the middleware, the provider and the secrets service run; the gateway does the same
steps inline) by an ASGI app that records one decision through the event recorder and
answers 200 — once with no tracer (``off``), then with a tracer at the default ratio
(0.1: one allowed request in ten kept), then with every request kept (1.0). Kept spans
go the whole way but the socket: built as the SDK's ``ReadableSpan``, queued, encoded as
OTLP/JSON in the exporting thread; the exporter then drops the bytes instead of
POSTing them to the collector. The CPU is the process's (every thread: the exporting one
too), over the requests; the difference from ``off`` is what tracing adds.

Before measuring, the script checks that a refused request is kept at ratio 0 (tracing
that dropped refusals would be cheaper, and wrong). ``--gateway-us``: the gateway's CPU
per request from ``benchmarks/gateway.py`` on this machine (its ``proxy CPU µs/req``),
to print the added share (the issue's bound: 5% at the default ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from trustmesh import events
from trustmesh.reasons import Reason
from trustmesh.sdk import spans


class EncodingExporter(SpanExporter):
    """Encodes each batch as the collector exporter does (OTLP/JSON), and drops it."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(spans.otlp_json(batch))
        self.spans += len(batch)
        return SpanExportResult.SUCCESS


class _Dropped:
    """An event sink that keeps nothing (the event is built, noted and let go)."""

    def emit(self, event: events.Event) -> None:
        return None


def _app(decision: Reason) -> Any:
    recorder = events.Recorder(spans.NotingSink(_Dropped()), component="svc")
    status = 403 if decision is Reason.POLICY_DENY else 200

    async def app(scope: Any, receive: Any, send: Any) -> None:
        recorder.record(decision, "decided", attributes={"path": scope["path"]})
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def _serve(app: Any, n: int) -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/items/tea",
        "raw_path": b"/items/tea",
        "headers": [(b"host", b"svc")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: Any) -> None:
        return None

    for _ in range(n):
        await spans.traced(scope, receive, send, app)


def measure(
    ratio: float | None, n: int, decision: Reason = Reason.POLICY_ALLOW
) -> tuple[float, int]:
    """CPU µs per request (all threads), and spans exported, at ``ratio`` (None: off)."""
    exporter = EncodingExporter()
    queue = spans.SpanQueue(exporter, max_queue=1 << 20)
    tracer = None if ratio is None else spans.Tracer("svc", queue, sample_ratio=ratio)
    previous = spans.install(tracer)
    app = _app(decision)
    try:
        asyncio.run(_serve(app, 2000))  # warm-up
        queue.force_flush()
        exporter.spans = 0
        started = time.process_time()
        asyncio.run(_serve(app, n))
        queue.force_flush()
        spent = time.process_time() - started
    finally:
        spans.install(previous)
        queue.shutdown()
    return spent / n * 1e6, exporter.spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="report each setting's median")
    parser.add_argument(
        "--gateway-us",
        type=float,
        default=None,
        help="the gateway's CPU µs per request (benchmarks/gateway.py) for the share",
    )
    args = parser.parse_args()
    _, kept = measure(0.0, 200, Reason.POLICY_DENY)
    if kept != 200:
        raise SystemExit(f"tracing is not on: {kept} of 200 refused requests kept at ratio 0")
    print("check: every refused request kept at ratio 0 (200 of 200)")
    settings: dict[str, float | None] = {"off": None, "default (0.1)": 0.1, "all (1.0)": 1.0}
    found: dict[str, list[float]] = {name: [] for name in settings}
    exported: dict[str, int] = {}
    for _ in range(args.rounds):  # alternated, so that drift on the machine hits each alike
        for name, ratio in settings.items():
            cost, exported[name] = measure(ratio, args.requests)
            found[name].append(cost)
    median = {name: sorted(v)[len(v) // 2] for name, v in found.items()}
    print(f"{args.requests} requests a run, {args.rounds} runs each, medians:")
    print(f"{'tracing':<16}{'CPU µs/req':>12}{'added µs':>10}{'spans kept':>12}", end="")
    print(f"{'of gateway CPU':>16}" if args.gateway_us else "")
    for name, cost in median.items():
        added = cost - median["off"]
        line = f"{name:<16}{cost:>12.2f}{added:>10.2f}{exported[name]:>12}"
        if args.gateway_us:
            line += f"{added / args.gateway_us:>15.1%}"
        print(line)


if __name__ == "__main__":
    main()
