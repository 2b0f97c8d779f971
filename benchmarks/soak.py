"""Soak: the full chain in the scale-out configuration, for minutes, at a steady share of
the capacity measured first (issue 21).

Run: ``.venv/bin/python benchmarks/soak.py [--minutes 10] [--load 0.7] [--workers 2]
[--capacity-seconds 20] [--connections 32] [--quick] [--plain-redis]`` (``--quick``: one
minute after a 5-second capacity run, a smoke run).

The stack (``trustmesh up``): the scale-out configuration — ``shared.postgres`` on a new
database of the machine's PostgreSQL (127.0.0.1:5432, trust auth: ``--postgres`` names
another server's owner role), every component's store in its own schema and role;
``shared.redis`` a redis-server of the run's own on a free port, over TLS with a
certificate from the workload CA and client certificates required (``--plain-redis``:
without); ``gateway.workers`` gateway processes on one port — with the audit collector
(every request's events land in PostgreSQL) and the demo ``inventory`` service behind the
gateway. Each request is
``GET /items/tea`` with a user's bearer JWT (a real sign-in on the provider's login
form): TLS in, the token verified, a rate limit counted in Redis (generous: it never
refuses), an event per request, the internal token, mTLS to ``inventory``.

First the security under test is shown on (no token and an altered token: 401; the good
token: 200), then capacity is measured closed-loop (``--connections`` at once, as fast
as they are answered), then the load runs open-loop at ``--load`` × that capacity: each
request has its time in a fixed schedule and its latency counts from then (a stall
delays the requests behind it, and they show it). The client holds a fixed pool of
``--connections`` keep-alive connections, opened before the schedule starts (a request
due while all are busy waits for one, and its wait counts): the stack's descriptors then
follow the stack, not a client opening more connections when latency rises. Every
minute: requests, errors, p50 and p99, and the resident memory and open file descriptors
of every process of the stack (each the median of samples taken every 5 seconds; each
process's own at the end). At the end, the verdict against issue 21's acceptance: no error, the last
minute's p99 within 1.5× the first's, memory grown less than 10% (first minute to
last), file descriptors flat; and the audit log verified. The exit status is 1 when any
fails.

The load generator runs on the same machine (two cores here): it takes CPU the stack
would otherwise have, so the capacity is the stack's with its client beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
import gateway as bench

from trustmesh.config import load_config
from trustmesh.testing import PrivateRedis, identity_server_in_thread
from trustmesh.testing import run_cli as tm

CONFIG = textwrap.dedent(
    """\
    trust_domain: bench.example
    dev: true
    shared: {{postgres: "{postgres}", redis: "{redis}", prefix: {prefix}}}
    services:
      inventory: {{run: "trustmesh.demo.inventory:app"}}
    gateway:
      workers: {workers}
      routes:
        - path: /items
          to: inventory
          name: items
          rate_limits: [{{per: consumer, limit: "1000000/minute"}}]
    audit: {{spool: {{max_bytes: 1073741824}}}}
    """
)


@dataclass
class Minute:
    """What one minute of the soak saw."""

    latencies: list[float] = field(default_factory=list)  # seconds, from the scheduled time
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rss_mib: float = 0.0
    fds: int = 0
    samples: list[dict[int, tuple[float, int]]] = field(default_factory=list)

    def settle(self) -> None:
        """The minute's memory and descriptors: the medians of its samples."""
        if self.samples:
            self.rss_mib = statistics.median(sum(r for r, _ in s.values()) for s in self.samples)
            self.fds = int(statistics.median(sum(f for _, f in s.values()) for s in self.samples))

    def per_process(self) -> dict[int, int]:
        pids = {pid for s in self.samples for pid in s}
        return {
            pid: int(statistics.median(s.get(pid, (0.0, 0))[1] for s in self.samples))
            for pid in pids
        }

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def stack_pids(status: dict[str, Any]) -> list[int]:
    """Every process of the stack: each component's and its descendants (the crs
    workers, the services' own)."""
    roots = {int(c["pid"]) for c in status["components"] if c.get("pid")}
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rpartition(")")[2].split()[1]
                )
            except OSError:
                continue
    tree, grew = set(roots), True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree)


def footprint(pids: list[int]) -> dict[int, tuple[float, int]]:
    """Resident memory (MiB) and open file descriptors of each of ``pids``."""
    found: dict[int, tuple[float, int]] = {}
    for pid in pids:
        try:
            rss = sum(
                int(line.split()[1]) / 1024
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
            found[pid] = (rss, len(os.listdir(f"/proc/{pid}/fd")))
        except OSError:
            continue
    return found


def process_names(pids: list[int]) -> dict[int, str]:
    """Each process's name: ``tm-<component>`` where ``up`` forked it, else the module it
    runs (``trustmesh.identity``, ``trustmesh.sdk.runner``)."""
    names = {}
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        module = next((a for a in argv if a.startswith(b"trustmesh")), argv[0])
        names[pid] = comm if comm.startswith("tm-") else module.decode(errors="replace")
    return names


def tls_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    return context


async def capacity(
    url: str, headers: dict[str, str], ca: Path, seconds: float, at_once: int
) -> float:
    """Requests per second answered 200, closed-loop, ``at_once`` in flight."""
    connector = aiohttp.TCPConnector(limit=at_once, ssl=tls_context(ca))
    done = 0
    deadline = time.monotonic() + seconds

    async def loop(client: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with client.get(url, headers=headers) as answer:
                await answer.read()
                done += answer.status == 200

    async with aiohttp.ClientSession(connector=connector) as client:
        start = time.monotonic()
        await asyncio.gather(*(loop(client) for _ in range(at_once)))
        return done / (time.monotonic() - start)


SAMPLE_EVERY = 5.0


async def soak(
    url: str,
    headers: dict[str, str],
    ca: Path,
    rate: float,
    minutes: int,
    pids: list[int],
    connections: int,
) -> list[Minute]:
    """Open-loop at ``rate`` requests a second for ``minutes`` over a fixed pool of
    ``connections``; each minute's figures."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=3600, ssl=tls_context(ca))
    timeout = aiohttp.ClientTimeout(total=30)
    record = [Minute() for _ in range(minutes)]
    pending: set[asyncio.Task[None]] = set()

    async def one(client: aiohttp.ClientSession, scheduled: float) -> None:
        minute = record[min(minutes - 1, int((scheduled - start) // 60))]
        try:
            async with client.get(url, headers=headers) as answer:
                await answer.read()
                status = str(answer.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = type(exc).__name__
        minute.statuses[status] = minute.statuses.get(status, 0) + 1
        if status != "200":
            minute.errors += 1
        minute.latencies.append(time.monotonic() - scheduled)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        await _open_pool(client, url, headers, connections)
        start = time.monotonic()
        sent, sampled, samples = 0, 0, 0
        end = start + minutes * 60
        while (now := time.monotonic()) < end:
            if now - start >= samples * SAMPLE_EVERY:
                record[min(minutes - 1, int((now - start) // 60))].samples.append(footprint(pids))
                samples += 1
            due = start + sent / rate
            if due > now:
                await asyncio.sleep(min(due - now, 0.05))
                continue
            task = asyncio.create_task(one(client, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            if now - start >= (sampled + 1) * 60 - 1 and sampled < minutes:  # a minute's end
                record[sampled].settle()
                report_minute(sampled, record[sampled])
                sampled += 1
        await asyncio.gather(*pending)
        while sampled < minutes:
            record[sampled].settle()
            report_minute(sampled, record[sampled])
            sampled += 1
    return record


async def _open_pool(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str], connections: int
) -> None:
    """Every connection of the pool opened (each held by a request at once), so the
    first minute already counts them."""

    async def hold() -> None:
        async with client.get(url, headers=headers) as answer:
            await answer.read()
            await asyncio.sleep(0.5)  # still holding it while the others open

    await asyncio.gather(*(hold() for _ in range(connections)))


def report_minute(index: int, minute: Minute) -> None:
    print(
        f"  minute {index + 1:>2}: {len(minute.latencies):>7} requests  "
        f"errors {minute.errors:>4}  p50 {minute.percentile(0.50):7.1f} ms  "
        f"p99 {minute.percentile(0.99):7.1f} ms  RSS {minute.rss_mib:8.1f} MiB  "
        f"fds {minute.fds:>5}",
        flush=True,
    )


def verdict(record: list[Minute]) -> bool:
    first, last = record[0], record[-1]
    errors = sum(m.errors for m in record)
    p99_ratio = last.percentile(0.99) / first.percentile(0.99)
    rss_growth = (last.rss_mib - first.rss_mib) / first.rss_mib
    fds = [m.fds for m in record]
    checks = [
        (errors == 0, f"errors: {errors} (expected 0)"),
        (p99_ratio <= 1.5, f"p99 last/first minute: {p99_ratio:.2f} (≤ 1.5)"),
        (rss_growth < 0.10, f"RSS growth first→last minute: {rss_growth:+.1%} (< 10%)"),
        (max(fds) - min(fds) <= max(8, 0.02 * min(fds)), f"fds per minute: {fds} (flat)"),
    ]
    for ok, said in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {said}")
    return all(ok for ok, _ in checks)


async def new_database(owner: str) -> tuple[str, str]:
    """A new database on the PostgreSQL ``owner`` connects to; its owner URL and name."""
    name = f"tm_soak_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(owner)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return owner.rsplit("/", 1)[0] + f"/{name}", name


def redis_tls(root: Path, state: Path) -> tuple[Path, Path, Path]:
    """Redis's certificate, key and CA: the workload CA made first (the identity service
    started once on ``state``, as ``up`` starts it again), then the server's certificate
    issued from it (``trustmesh identity server-cert``). The components verify Redis
    against that CA and present their SVIDs to it (``tls-auth-clients yes``)."""
    first = root / "first.yaml"
    first.write_text("trust_domain: bench.example\ndev: true\n")
    args = ("--config", str(first), "--state", str(state))
    with identity_server_in_thread(load_config(first), state, discovery=True):
        made = tm("identity", "server-cert", "--ip", "127.0.0.1", "--out", str(root / "tls"), *args)
    if made.returncode != 0:
        raise SystemExit(f"no server certificate for Redis:\n{made.stdout}{made.stderr}")
    tls = root / "tls"
    return tls / "server.crt", tls / "server.key", tls / "ca.crt"


async def drop_database(owner: str, name: str, prefix: str) -> None:
    admin = await asyncpg.connect(owner)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for role in ("auth", "secrets", "gateway", "audit", "audit_pruner"):
            await admin.execute(f'DROP ROLE IF EXISTS "{prefix}_{role}"')
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--plain-redis", action="store_true", help="Redis without TLS (rediss:// by default)"
    )
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.capacity_seconds = 1, 5.0
    root = Path(tempfile.mkdtemp(prefix="tmsoak", dir="/tmp"))
    state, config = root / "state", root / "trustmesh.yaml"
    redis = PrivateRedis(root, tls=None if args.plain_redis else redis_tls(root, state))
    redis.start()
    print(f"redis: {redis.url.split(':')[0]}:// (a private server)")
    prefix = f"soak{uuid.uuid4().hex[:6]}"
    database, name = asyncio.run(new_database(args.postgres))
    ok = False
    try:
        config.write_text(
            CONFIG.format(postgres=database, redis=redis.url, prefix=prefix, workers=args.workers)
        )
        up = tm("up", "--config", str(config), "--state", str(state), "--detach", timeout=180)
        if up.returncode != 0:
            raise SystemExit(f"trustmesh up failed:\n{up.stdout}\n{up.stderr}")
        status = json.loads(
            tm("status", "--config", str(config), "--state", str(state), "--json").stdout
        )
        public = bench.component(status, "gateway")["url"]
        ca = state / "edge" / "ca.pem"
        provider = bench.component(status, "auth")["public_url"]
        token = bench.user_token(config, state, provider, ca)
        url, headers = public + bench.PATH, {"authorization": f"Bearer {token}"}
        ok = run(args, url, headers, ca, stack_pids(status))
        verified = tm("audit", "verify", "--config", str(config), "--state", str(state))
        print(f"  {'PASS' if verified.returncode == 0 else 'FAIL'}  audit log verified")
        if verified.returncode != 0:
            print(textwrap.indent((verified.stdout + verified.stderr).strip(), "    "))
        ok = ok and verified.returncode == 0
    finally:
        tm("down", "--state", str(state), timeout=120)
        redis.kill()
        asyncio.run(drop_database(args.postgres, name, prefix))
        shutil.rmtree(root, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


def run(
    args: argparse.Namespace, url: str, headers: dict[str, str], ca: Path, pids: list[int]
) -> bool:
    with bench.session(ca) as s:
        bad = headers["authorization"][:-4] + "AAAA"
        refused = (
            s.get(url, timeout=10).status_code,
            s.get(url, headers={"authorization": bad}, timeout=10).status_code,
        )
        good = s.get(url, headers=headers, timeout=10).status_code
    print(f"security on: no token → {refused[0]}, altered token → {refused[1]}, good → {good}")
    if refused != (401, 401) or good != 200:
        raise SystemExit("the gateway does not refuse what it must: nothing measured")
    print(f"stack: {len(pids)} processes, gateway workers: {args.workers}; load average "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    cap = asyncio.run(capacity(url, headers, ca, args.capacity_seconds, args.connections))
    rate = cap * args.load
    print(
        f"capacity: {cap:.0f} requests/s closed-loop; soak at {rate:.0f}/s for {args.minutes} min"
    )
    record = asyncio.run(soak(url, headers, ca, rate, args.minutes, pids, args.connections))
    total = sum(len(m.latencies) for m in record)
    everything = [x for m in record for x in m.latencies]
    print(
        f"total: {total} requests, p50 {statistics.median(everything) * 1000:.1f} ms; "
        f"statuses {_merge(m.statuses for m in record)}"
    )
    names = process_names(pids)
    first, last = record[0].per_process(), record[-1].per_process()
    print("descriptors per process, first → last minute:")
    for pid in sorted(set(first) | set(last)):
        print(
            f"  {names.get(pid, '?'):<28} {pid:>7}  {first.get(pid, 0):>5} → {last.get(pid, 0):>5}"
        )
    return verdict(record)


def _merge(counts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            merged[key] = merged.get(key, 0) + value
    return merged


if __name__ == "__main__":
    main()
