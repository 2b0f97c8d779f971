"""The cost of being a zero-trust citizen: the demo's payments app behind ``sdk.serve`` +
the middleware (mTLS, canonical path, Cedar policy, an event per decision) against the
same app under plain-TLS uvicorn, keep-alive, in one run.

Run: ``.venv/bin/python benchmarks/serve_overhead.py [--seconds 8] [--connections 16]``

Each server runs in its own process; the load comes from a separate process (aiohttp,
keep-alive, N connections, each sending GET /charges/{id} back to back). Prints
throughput, p50/p99 latency, the server's CPU per 1,000 calls, and the ratios. Goals (from
the issue): ≥ 0.6× the plain-TLS throughput, ≤ 0.1 core-second added per 1,000 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SERVER = textwrap.dedent(
    """
    import asyncio, os, ssl, sys
    from pathlib import Path
    import uvicorn
    from trustmesh.demo.payments import app, CHARGES
    CHARGES["ch_1"] = {"id": "ch_1", "status": "succeeded", "order_id": "o", "amount_cents": 1}
    mode, port_file = sys.argv[1], sys.argv[2]

    async def main():
        if mode == "plain":
            cert, key = sys.argv[3], sys.argv[4]
            config = uvicorn.Config(app, host="127.0.0.1", port=0, ssl_certfile=cert,
                                    ssl_keyfile=key, log_level="warning", access_log=False)
            server = uvicorn.Server(config)
            task = asyncio.create_task(server._serve())
            while not server.started:
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
        else:
            from trustmesh import sdk
            from trustmesh.events import JsonLinesSink
            runtime = await sdk.run_service(app, service="payments", config_path=Path(sys.argv[3]),
                                            address=sys.argv[4], port=0,
                                            sink=JsonLinesSink(Path(sys.argv[5])))
            port = runtime.served.port
        Path(port_file).write_text(str(port))
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)

LOAD = textwrap.dedent(
    """
    import asyncio, json, ssl, sys, time
    import aiohttp
    port, seconds, conns = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(sys.argv[4])
    ctx.load_cert_chain(sys.argv[5], sys.argv[6])
    latencies, errors = [], 0

    async def worker(session, deadline):
        global errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            async with session.get(f"https://127.0.0.1:{port}/charges/ch_1", ssl=ctx) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t)

    async def main():
        conn = aiohttp.TCPConnector(limit=conns)
        async with aiohttp.ClientSession(connector=conn) as session:
            await worker(session, time.perf_counter() + 1)  # warm up
            warm = len(latencies)
            latencies.clear()
            start = time.perf_counter()
            await asyncio.gather(*(worker(session, start + seconds) for _ in range(conns)))
            elapsed = time.perf_counter() - start
        latencies.sort()
        print(json.dumps({"rps": len(latencies) / elapsed, "errors": errors,
                          "p50": latencies[len(latencies) // 2] * 1000,
                          "p99": latencies[int(len(latencies) * 0.99)] * 1000,
                          "count": len(latencies), "warm": warm}))

    asyncio.run(main())
    """
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    server_argv: list[str], port_file: Path, client_files: list[str], args: argparse.Namespace
) -> dict[str, float]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, *server_argv], stdout=subprocess.DEVNULL
    )
    try:
        for _ in range(300):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        port = port_file.read_text()
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                LOAD,
                port,
                str(args.seconds),
                str(args.connections),
                *client_files,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = cpu_seconds(server.pid) - before
        result = json.loads(out.stdout)
        # the warm-up calls are included in the CPU reading; count them in too
        result["cpu_per_1000"] = cpu / (result["count"] + result["warm"]) * 1000
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)
        port_file.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    from trustmesh.cli.stack import stop_stack

    root = Path(tempfile.mkdtemp(prefix="tmb", dir="/tmp"))
    state = root / "s"
    config = root / "trustmesh.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            trust_domain: bench.example
            dev: true
            services:
              payments: {external: true}
              loadgen: {external: true}
            calls:
              - {from: loadgen, to: payments, allow: ["GET /charges/{id}"]}
            """
        )
    )
    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "trustmesh",
            "up",
            "--config",
            str(config),
            "--state",
            str(state),
            "--detach",
        ],
        capture_output=True,
        text=True,
    )
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    try:
        address = f"unix://{state}/public/workload.sock"
        exe = os.readlink("/proc/self/exe")
        # both the server and the load generator are this interpreter, run by this user
        for name in ("payments", "loadgen"):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "trustmesh",
                    "identity",
                    "register",
                    "--spiffe-id",
                    f"spiffe://bench.example/{name}",
                    "--selector",
                    f"unix:uid:{os.getuid()}",
                    "--selector",
                    f"unix:path:{exe}",
                    "--config",
                    str(config),
                    "--state",
                    str(state),
                ],
                check=True,
                capture_output=True,
            )
        files = asyncio.run(_client_files(address, root))
        plain = measure(
            ["plain", str(root / "port"), files[3], files[4]], root / "port", files[:3], args
        )
        mesh = measure(
            ["mesh", str(root / "port"), str(config), address, str(root / "events.jsonl")],
            root / "port",
            files[:3],
            args,
        )
    finally:
        stop_stack(state, print)
    print(
        f"machine: {os.cpu_count()} cores; {args.connections} keep-alive connections, {args.seconds:.0f} s each"
    )
    print(f"{'':34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU s/1k':>10}{'errors':>8}")
    for name, r in (
        ("plain-TLS uvicorn (baseline)", plain),
        ("sdk.serve + middleware (mTLS)", mesh),
    ):
        print(
            f"{name:34}{r['rps']:9.0f}{r['p50']:9.2f}{r['p99']:9.2f}{r['cpu_per_1000']:10.3f}{r['errors']:8.0f}"
        )
    ratio = mesh["rps"] / plain["rps"]
    added = mesh["cpu_per_1000"] - plain["cpu_per_1000"]
    print(
        f"throughput ratio {ratio:.2f}x (goal ≥ 0.6x); added CPU {added:.3f} core-s per 1,000 calls (goal ≤ 0.1)"
    )


async def _client_files(address: str, root: Path) -> list[str]:
    """PEM files for the load generator (loadgen's SVID) and the plain server (payments')."""
    from trustmesh import crypto
    from trustmesh.sdk.x509source import X509Source

    out = []
    for name in ("loadgen", "payments"):
        source = X509Source(address, spiffe_id=f"spiffe://bench.example/{name}")
        ctx = await source.start()
        await source.close()
        chain, key = root / f"{name}.pem", root / f"{name}.key"
        chain.write_bytes(ctx.chain_pem())
        key.write_bytes(crypto.private_key_to_pem(ctx.key))
        key.chmod(0o600)
        if name == "loadgen":
            bundle = root / "bundle.pem"
            bundle.write_bytes(ctx.bundle_pem())
            out += [str(bundle), str(chain), str(key)]
        else:
            out += [str(chain), str(key)]
    return out


if __name__ == "__main__":
    main()
