"""Delivery of a producer's events to the audit collector (issue 16: the producer's
overhead per event in the gateway ≤ 5 µs; nothing lost).

Run: ``.venv/bin/python benchmarks/audit_delivery.py [--events 50000] [--batch 500]``

The collector runs as ``trustmesh up`` runs it (its own process, mTLS, SQLite, the hash
chain and the shipped Sigma rules); the producer is an :class:`AuditSink` in this
process, with its spool in a temporary directory. Before measuring, probes show the
security is on: a client without a certificate is refused at the handshake, and a
delivery to a server that is not the collector (wrong SPIFFE ID) is never sent.

Measured:

1. ``emit`` per event — the hot path: what a gateway request pays (the event appended to
   memory; the delivering thread does the rest), on prebuilt events;
2. end to end — from the first ``emit`` to the last event acknowledged by the collector
   (spooled with one fsync per batch, POSTed, stored durably there): events/s;
3. CPU per event — the producer's (the emitting thread and the delivering thread) and
   the collector's (its whole process).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from audit import AUDIT, CONFIG, TD, _cpu_seconds, _spawn

from trustmesh import events
from trustmesh.config import parse_config
from trustmesh.reasons import Reason
from trustmesh.sdk.collector import CollectorClient, CollectorUnavailableError
from trustmesh.sdk.delivery import AuditSink
from trustmesh.sdk.spool import Spool
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import identity_server_in_thread

GATEWAY = f"spiffe://{TD}/trustmesh/gateway"


def _thread_cpu(thread: threading.Thread) -> float:
    return _cpu_seconds(f"/proc/self/task/{thread.native_id}/stat")


def probes(url: str, source: X509Source) -> None:
    """The collector refuses a client without an SVID; the producer refuses a server
    that is not the collector."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, int(port), context=anonymous, timeout=5)
    try:
        conn.request("POST", "/v1/events", body=b'{"events":[]}')
        status = conn.getresponse().status
        raise SystemExit(f"an unauthenticated delivery was answered {status}")
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        conn.close()
    wrong = CollectorClient(url, source, GATEWAY)
    try:
        wrong.send([b"{}"])
        raise SystemExit("a delivery went to a server that is not the expected one")
    except CollectorUnavailableError as exc:
        if "expected the collector" not in exc.detail:
            raise SystemExit(f"refused for another reason: {exc.detail}") from None
    finally:
        wrong.close()
    print(
        "security on: no client certificate → refused at the handshake; "
        "a server that is not the collector → nothing sent"
    )


def prebuilt(count: int) -> list[events.Event]:
    """Events as the gateway records a forwarded request (one template, restamped)."""
    made = events.MemorySink()
    recorder = events.Recorder(made, component="gateway", spiffe_id=GATEWAY)
    for i in range(count):
        recorder.record(
            Reason.REQUEST_FORWARDED,
            "forwarded",
            trace_id=f"{i:032x}",
            attributes={"method": "GET", "path": "/orders", "client": "203.0.113.7"},
        )
    return made.events


def measure(url: str, source: X509Source, spool_dir: Path, count: int, batch: int) -> None:
    made = prebuilt(count)
    client = CollectorClient(url, source, AUDIT)
    sink = AuditSink(
        Spool(spool_dir, 1 << 30),
        client,
        component="gateway",
        batch=batch,
        max_queue=count + 1,  # measure the append, never a wait for room
        spiffe_id=GATEWAY,
    )
    delivering = sink._thread
    emit = sink.emit
    thread_before = time.thread_time()
    delivery_before = _thread_cpu(delivering)
    start = time.perf_counter()
    for event in made:
        emit(event)
    emitted = time.perf_counter() - start
    emit_cpu = time.thread_time() - thread_before
    if not sink.flush(300):
        raise SystemExit(f"not delivered in 5 minutes: {sink.stats()}")
    total = time.perf_counter() - start
    delivery_cpu = _thread_cpu(delivering) - delivery_before
    stats = sink.close(5)
    if stats.delivered != count:
        raise SystemExit(f"delivered {stats.delivered} of {count}")
    print(f"emit (hot path):        {emitted / count * 1e6:8.2f} µs/event  (goal ≤ 5 µs)")
    print(f"end to end:             {count / total:8,.0f} events/s  ({total:.2f} s for {count:,})")
    print(
        f"producer CPU:           {(emit_cpu + delivery_cpu) / count * 1e6:8.1f} µs/event  "
        f"(emitting {emit_cpu / count * 1e6:.2f}, delivering {delivery_cpu / count * 1e6:.1f})"
    )


async def main(count: int, batch: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="tmbench", dir="/tmp"))
    config_file = root / "trustmesh.yaml"
    config_file.write_text(CONFIG)
    config = parse_config(CONFIG, source="bench.yaml")
    with identity_server_in_thread(config, root / "identity") as identity:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (GATEWAY, AUDIT):
            identity.call(
                identity.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": identity.address}
        env.pop("TRUSTMESH_AUDIT_URL", None)
        state = root / "state"
        proc = _spawn(config_file, state, env)
        try:
            endpoint = state / "audit" / "endpoint.json"
            deadline = time.monotonic() + 30
            while not endpoint.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the collector did not start")
                await asyncio.sleep(0.1)
            url = json.loads(endpoint.read_text())["url"]
            source = X509Source(identity.address, spiffe_id=GATEWAY)
            await source.start()
            await asyncio.to_thread(probes, url, source)
            print(f"{count:,} events, batches of {batch}")
            cpu = _cpu_seconds(f"/proc/{proc.pid}/stat")
            await asyncio.to_thread(measure, url, source, root / "spool", count, batch)
            cpu = _cpu_seconds(f"/proc/{proc.pid}/stat") - cpu
            print(f"collector CPU:          {cpu / count * 1e6:8.1f} µs/event")
            await source.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"(run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.batch))
