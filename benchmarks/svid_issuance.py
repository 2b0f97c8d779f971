"""SVID issuance through the Workload API, against an in-process baseline.

Run: ``.venv/bin/python benchmarks/svid_issuance.py [--seconds 5] [--concurrency 16]``

Starts the real identity service as its own process (``python -m trustmesh.identity``),
registers this process, and measures, in one run:

1. baseline: ``crypto.issue_x509_svid`` in-process (key generation + signing, no I/O);
2. Workload API, grpclib client, N concurrent streams over the unix socket: each call is a
   full FetchX509SVID (security header, attestation from the kernel's peer credentials,
   a fresh key pair and certificate, the response), then the stream is cancelled;
3. Workload API, py-spiffe's ``WorkloadApiClient.fetch_x509_svid`` (grpcio), sequential.

Prints issues/s for each and the ratio to the baseline. Vault's PKI engine is reported at
about 430 EC-256 issues/s; the goal here is ≥ 1,000/s through the Workload API.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grpclib.client import Channel, UnaryStreamMethod

from trustmesh import crypto
from trustmesh._proto import workload_pb2 as pb
from trustmesh.config import parse_config
from trustmesh.events import MemorySink
from trustmesh.identity import admin
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.identity.server import service_settings
from trustmesh.identity.store import SqliteIdentityStore

TD = "bench.example"


def baseline(seconds: float) -> float:
    now = dt.datetime.now(dt.UTC)
    root_key = crypto.generate_key()
    root = crypto.create_root_ca(TD, root_key, now=now, ttl=dt.timedelta(days=1), label="b")
    key = crypto.generate_key()
    inter = crypto.create_intermediate_ca(
        TD,
        key.public_key(),
        crypto.Issuer(root, root_key),
        now=now,
        ttl=dt.timedelta(hours=12),
        label="b",
    )
    issuer = crypto.Issuer(inter, key)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        cert, leaf_key = crypto.issue_x509_svid(
            f"spiffe://{TD}/w", issuer, now=now, ttl=dt.timedelta(hours=1)
        )
        crypto.certs_to_der([cert, inter])
        crypto.private_key_to_der(leaf_key)
        n += 1
    return n / (time.perf_counter() - start)


async def grpclib_rate(socket: str, seconds: float, concurrency: int) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        channel = Channel(path=socket)
        method = UnaryStreamMethod(
            channel, "/SpiffeWorkloadAPI/FetchX509SVID", pb.X509SVIDRequest, pb.X509SVIDResponse
        )
        try:
            while time.perf_counter() < deadline:
                async with method.open(metadata=[("workload.spiffe.io", "true")]) as stream:
                    await stream.send_message(pb.X509SVIDRequest(), end=True)
                    reply = await stream.recv_message()
                    assert reply is not None
                    assert reply.svids
                    await stream.cancel()
                count += 1
        finally:
            channel.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


def server_cpu_seconds(leader: int) -> float:
    """CPU time (user + system) of the identity service: the leader and its workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [leader]
    children = Path(f"/proc/{leader}/task/{leader}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def pyspiffe_rate(address: str, seconds: float) -> float:
    from spiffe import WorkloadApiClient

    n = 0
    with WorkloadApiClient(address) as client:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.fetch_x509_svid()
            n += 1
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="tmb", dir="/tmp")) / "s"
    config_file = state.parent / "trustmesh.yaml"
    config_file.write_text(f"trust_domain: {TD}\ndev: true\n")
    config = parse_config(config_file.read_text(), source=str(config_file))
    state.mkdir(mode=0o700)
    store = SqliteIdentityStore(IdentityPaths(state).db)
    exe = os.readlink("/proc/self/exe")
    admin.register_entry(
        store,
        service_settings(config),
        f"spiffe://{TD}/bench",
        [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
        None,
        MemorySink(),
    )
    store.close()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trustmesh.identity",
            "--config",
            str(config_file),
            "--state",
            str(state),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        socket = IdentityPaths(state).socket
        for _ in range(200):
            if socket.is_socket():
                break
            time.sleep(0.05)
        time.sleep(0.3)
        print(f"machine: {os.cpu_count()} cores; {args.seconds:.0f} s per measurement")
        base = baseline(args.seconds)
        print(f"baseline  crypto.issue_x509_svid in-process      {base:8.0f} /s   1.00x")
        cpu_before = server_cpu_seconds(server.pid)
        api = asyncio.run(grpclib_rate(str(socket), args.seconds, args.concurrency))
        cpu = server_cpu_seconds(server.pid) - cpu_before
        print(
            f"Workload API, grpclib, {args.concurrency:2d} concurrent streams   {api:8.0f} /s   {api / base:.2f}x"
        )
        per_cpu = api * args.seconds / cpu if cpu else float("nan")
        print(
            f"  identity service CPU: {cpu:.1f} s in {args.seconds:.0f} s, {per_cpu:.0f} issues per "
            "CPU-second (the load generator shares this machine's cores)"
        )
        spiffe = pyspiffe_rate(f"unix://{socket}", args.seconds)
        print(
            f"Workload API, py-spiffe, sequential           {spiffe:8.0f} /s   {spiffe / base:.2f}x"
        )
        print(
            f"goal ≥ 1000/s through the Workload API: {'met' if api >= 1000 else 'NOT met'} "
            f"(Vault PKI, reported: ~430/s)"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
