"""The audit collector's ingest with the hash chain and detection on (issue 16 goals:
≥ 20,000 events/s on one core; alert latency p99 < 2 s at that rate; ≥ 0.7× of the
baseline: the same events appended to the same store in the same batches with no chain
and no detection).

Run: ``.venv/bin/python benchmarks/audit.py [--events 50000] [--batch 500] [--clients 4]
[--core N | --no-pin] [--profile FILE]`` (``--profile``: py-spy samples the collector
during the HTTPS run, raw format; ``PROFILE_NATIVE=1`` adds the native frames, at a tenth
of the rate)

"On one core", literally: the collector runs pinned to one core (``--core``, the last one
by default: its event loop and its database threads share it) and this process (the
producers, their TLS and JSON) to the others, so the HTTPS rate is what one core
stores; ``--no-pin`` lets the scheduler spread them.

Measured in one run, on a realistic event mix (benchmarks/audit_detection.py's, with
brute-force bursts the shipped rules alert on), under uids as producers make them
(:func:`trustmesh.events.new_uid`), each log first holding ``--prefill`` records (200,000
by default: a log in use, whose indexes are no longer small; a new log flatters every
figure):

1. baseline — plain inserts of the same events in the same batches (audit_ledger.py's);
2. service — ``AuditService.ingest`` in process: reporter stamp, duplicate check, chain,
   insert, detection of every stored event as the collector runs it for this declaration
   (the shipped Sigma rules and anomaly detection), checkpoint policy;
3. HTTPS — the collector as ``trustmesh up`` runs it (its own process, mTLS), batches
   POSTed by ``--clients`` concurrent connections; throughput, batch round-trip p50/p99
   (an alert is raised inside the request that stores the event that completes it, so
   this bounds the alert latency), and the collector's CPU per event (its event loop's,
   and its other threads': the database connections').

On a shared machine the rates move with the load; the CPU each side spends an event
(the benchmark's own process for the baseline and the service, the collector's for
HTTPS) moves far less, and the CPU ratios (baseline CPU / the other's) are printed too:
what one core would reach, relative to the baseline.

Before measuring, probes show the security is on: a workload may deliver but not read
the log (403), and a delivery is stored once (a retry is all duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from audit_detection import T0, mix
from audit_ledger import CPU, plain

from trustmesh import crypto, events
from trustmesh.audit.chain import CheckpointPolicy
from trustmesh.audit.ledger import LAYOUT, Ledger
from trustmesh.audit.server import detector_for
from trustmesh.audit.service import AuditService
from trustmesh.config import parse_config
from trustmesh.sdk.tls import client_context
from trustmesh.sdk.x509source import X509Source
from trustmesh.store import create_engine, sqlite_url
from trustmesh.testing import identity_server_in_thread

TD = "bench.example"
PAYMENTS = f"spiffe://{TD}/payments"
AUDIT = f"spiffe://{TD}/trustmesh/audit"
CONFIG = textwrap.dedent(
    f"""
    trust_domain: {TD}
    dev: true
    services:
      payments: {{external: true}}
    audit: {{}}
    """
)


def _cpu_seconds(stat_path: str) -> float:
    """User and system CPU seconds of the process or thread whose /proc stat file it is."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds of each of the process's threads, by thread id (its main one is the
    event loop; the others are the database connections' and the receivers')."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found[task.name] = _cpu_seconds(str(task / "stat"))
    return found


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _fresh(made: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same events under new uids, as producers make them (each run stores them
    anew)."""
    return [{**e, "metadata": {**e["metadata"], "uid": events.new_uid()}} for e in made]


def _in_batches(made: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [made[i : i + size] for i in range(0, len(made), size)]


async def _hold(ledger: Ledger, held: list[list[dict[str, Any]]]) -> None:
    """What the log holds before it is measured (chained as any append is)."""
    await ledger.create()
    for batch in held:
        await ledger.append(batch, now=datetime.now(UTC))


async def service_run(
    folder: Path, batches: list[list[dict[str, Any]]], held: list[list[dict[str, Any]]]
) -> tuple[float, int]:
    ledger = Ledger(create_engine(sqlite_url(folder / "service.db"), sqlite_layout=LAYOUT))
    await _hold(ledger, held)
    # the collector's own detector for this declaration: the shipped Sigma rules and the
    # anomaly detection it runs by default (Detector.shipped() alone is ~8 µs an event less)
    detector = detector_for(parse_config(CONFIG, source="bench.yaml").detection, None)
    service = AuditService(ledger, crypto.generate_signing_key(), detector, CheckpointPolicy())
    start, cpu = time.perf_counter(), time.process_time()
    alerts = 0
    for batch in batches:
        alerts += len((await service.ingest(batch, PAYMENTS)).alerts)
    elapsed = time.perf_counter() - start
    CPU["service"] = time.process_time() - cpu
    await ledger.close()
    return elapsed, alerts


def _profiler(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the collector (its native frames too) into ``out``, raw format."""
    if out is None:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    native = ["--native"] if os.environ.get("PROFILE_NATIVE") else []  # slow: 10× fewer events/s
    argv = [str(spy), "record", *native, "--format", "raw", "-r", "250", "-o", str(out)]
    started = subprocess.Popen([*argv, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached before the load starts
    return started


def _spawn(
    config_file: Path, state: Path, env: dict[str, str], core: int | None
) -> subprocess.Popen[bytes]:
    """The collector, as ``trustmesh up`` runs it: its own process (on ``core`` alone,
    every thread of it, where one is given)."""
    argv = [sys.executable, "-m", "trustmesh.audit", "--config", str(config_file)]
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    return subprocess.Popen([*argv, "--state", str(state)], env=env, preexec_fn=pin)


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> dict[str, Any]:
    async with session.post(
        f"{url}/v1/events", data=body, headers={"content-type": "application/json"}
    ) as answer:
        doc = await answer.json()
        if answer.status != 200:
            raise SystemExit(f"a delivery got {answer.status}: {doc}")
        return dict(doc)


async def https_run(
    url: str, ctx: ssl.SSLContext, batches: list[list[dict[str, Any]]], clients: int
) -> tuple[float, list[float]]:
    bodies = [json.dumps({"events": b}, separators=(",", ":")).encode() for b in batches]
    latencies: list[float] = []
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=clients, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                await _post(session, url, body)
                latencies.append(time.perf_counter() - started)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, latencies


async def probes(url: str, ctx: ssl.SSLContext, one: dict[str, Any]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(f"{url}/v1/events") as answer:
            assert answer.status == 403, f"a workload read the log: {answer.status}"
        body = json.dumps({"events": [one]}).encode()
        first, again = await _post(session, url, body), await _post(session, url, body)
        assert first["stored"] == 1, first
        assert again["duplicates"] == 1, again
    print("security on: a workload may not read the log (403); a retry is stored once")


async def main(
    count: int,
    size: int,
    clients: int,
    profile: Path | None = None,
    core: int | None = None,
    prefill: int = 0,
) -> None:
    # the events measured come after those the logs hold (a log in use, going on)
    prefilled = mix(prefill, seed=3) if prefill else []
    made = mix(count, start=T0 + timedelta(milliseconds=prefill))
    if core is not None:  # the producers (and the in-process runs) on the other cores
        others = os.sched_getaffinity(0) - {core}
        if not others:
            raise SystemExit(f"--core {core}: no other core is left for the producers")
        os.sched_setaffinity(0, others)
        print(f"the collector on core {core} alone, the producers on {sorted(others)}")

    def batches() -> list[list[dict[str, Any]]]:
        return _in_batches(_fresh(made), size)

    def held() -> list[list[dict[str, Any]]]:  # prefilled in batches of 5,000 (untimed)
        return _in_batches(_fresh(prefilled), 5_000) if prefill else []

    root = Path(tempfile.mkdtemp(prefix="tmbench", dir="/tmp"))
    print(
        f"{count:,} events in batches of {size}, "
        f"each log holding {prefill:,} records first (--prefill)"
    )
    made_b, made_c = batches(), batches()
    base = count / await plain(root, made_b, held())
    base_cpu = CPU["plain"] / count
    seconds, alerts = await service_run(root, made_c, held())
    service_cpu = CPU["service"] / count
    service = count / seconds
    print(
        f"baseline (no chain, no detection): {base:>9,.0f} events/s  "
        f"CPU {base_cpu * 1e6:.0f} µs/event"
    )
    print(
        f"service (chain + detection):       {service:>9,.0f} events/s  "
        f"ratio {service / base:.2f}  alerts {alerts}  CPU {service_cpu * 1e6:.0f} µs/event "
        f"(CPU ratio {base_cpu / service_cpu:.2f})"
    )

    config_file = root / "trustmesh.yaml"
    config_file.write_text(CONFIG)
    config = parse_config(CONFIG, source="bench.yaml")
    with identity_server_in_thread(config, root / "identity") as identity:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (PAYMENTS, AUDIT):
            identity.call(
                identity.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": identity.address}
        state = root / "state"
        if prefill:  # the collector's own log, holding them before it starts
            ledger = Ledger(
                create_engine(sqlite_url(state / "audit" / "audit.db"), sqlite_layout=LAYOUT)
            )
            await _hold(ledger, held())
            await ledger.close()
        proc = _spawn(config_file, state, env, core)
        try:
            endpoint = state / "audit" / "endpoint.json"
            deadline = time.monotonic() + 30
            while not endpoint.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the collector did not start")
                await asyncio.sleep(0.1)
            url = json.loads(endpoint.read_text())["url"]
            source = X509Source(identity.address, spiffe_id=PAYMENTS)
            await source.start()
            ctx = client_context(source.context)
            await probes(url, ctx, _fresh(made[:1])[0])
            spy = _profiler(proc.pid, profile)
            cpu, threads = _cpu_seconds(f"/proc/{proc.pid}/stat"), _threads(proc.pid)
            seconds, latencies = await https_run(url, ctx, batches(), clients)
            cpu = _cpu_seconds(f"/proc/{proc.pid}/stat") - cpu
            after = _threads(proc.pid)
            loop = after.get(str(proc.pid), 0.0) - threads.get(str(proc.pid), 0.0)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            await source.close()
        finally:
            proc.terminate()
            proc.wait(10)
    https = count / seconds
    https_cpu = cpu / count
    print(
        f"HTTPS ({clients} connections):          {https:>9,.0f} events/s  "
        f"ratio {https / base:.2f}  batch p50 {_percentile(latencies, 0.5):.0f} ms  "
        f"p99 {_percentile(latencies, 0.99):.0f} ms  "
        f"collector CPU {cpu / count * 1e6:.0f} µs/event "
        f"(event loop {loop / count * 1e6:.0f}, other threads {(cpu - loop) / count * 1e6:.0f}; "
        f"CPU ratio {base_cpu / https_cpu:.2f})"
    )
    print(
        f"goal ≥ 20,000/s: service {service / 20_000:.2f}×, HTTPS {https / 20_000:.2f}×; "
        f"alert latency bound p99 {_percentile(latencies, 0.99):.0f} ms (goal < 2,000 ms)"
    )
    print(f"(run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--profile", type=Path, help="py-spy the collector during the HTTPS run into this file"
    )
    cores = sorted(os.sched_getaffinity(0))
    parser.add_argument(
        "--core", type=int, default=cores[-1], help="the core the collector runs on alone"
    )
    parser.add_argument("--no-pin", action="store_true", help="no core of its own")
    parser.add_argument(
        "--prefill",
        type=int,
        default=200_000,
        help="records each log holds before it is measured (0: a new log)",
    )
    args = parser.parse_args()
    pinned = None if args.no_pin or len(cores) < 2 else args.core
    asyncio.run(main(args.events, args.batch, args.clients, args.profile, pinned, args.prefill))
