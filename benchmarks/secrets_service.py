"""The secrets service under load: KV v2 reads and transit encrypts through the HTTPS API
(mTLS, hvac-shaped requests: ``X-Vault-Token``, ``GET /v1/secret/data/<path>``,
``POST /v1/transit/encrypt/<key>``), one server process, every request audited (fsynced
JSON lines) and recorded as an event.

Run: ``.venv/bin/python benchmarks/secrets_service.py [--seconds 10] [--connections 32]``
(not ``secrets.py``: a script of that name would shadow the standard library's module)

Goal (issue 15): ≥ 2,000/s each. Anchors, published (no Vault or OpenBao binary runs on
this machine, so they are not measured here; the hardware differs): OpenBao's benchmark
≈ 27,000 KV reads/s with 32 client workers on one large multi-core server; Vault's
published PKI issue and AppRole login figures ≈ 400/s. Printed: throughput, p50/p99,
the server's CPU per request (from /proc, warm-up excluded) and the ratios.

Before measuring, probes show the security is on: a bad token is refused (403), payments
may not read another service's path (403), and the audit log grows with each request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.sdk.secrets import SecretsClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import identity_server_in_thread

TD = "bench.example"
PAYMENTS = f"spiffe://{TD}/payments"
SECRETS = f"spiffe://{TD}/trustmesh/secrets"
OPENBAO_KV_READS = 27_000
VAULT_PUBLISHED = 400
CONFIG = textwrap.dedent(
    f"""
    trust_domain: {TD}
    dev: true
    services:
      payments: {{external: true}}
    secrets:
      policies:
        - identity: payments
          allow:
            "secret/data/payments/*": [create, read, update]
            "transit/encrypt/payments": [create, update]
    """
)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    url: str, ctx: ssl.SSLContext, token: str, kind: str, seconds: float, connections: int
) -> tuple[int, int, list[float]]:
    """``connections`` keep-alive clients for ``seconds``: (ok, other answers, latencies)."""
    headers = {"X-Vault-Token": token, "X-Vault-Request": "true"}
    body = json.dumps({"plaintext": base64.b64encode(b"4111111111111111").decode()})
    ok = bad = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok, bad
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                if kind == "kv":
                    request = session.get(f"{url}/v1/secret/data/payments/db", headers=headers)
                else:
                    request = session.post(
                        f"{url}/v1/transit/encrypt/payments", data=body, headers=headers
                    )
                async with request as answer:
                    await answer.read()
                    if answer.status == 200:
                        ok += 1
                    else:
                        bad += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(connections)))
    return ok, bad, latencies


async def _load_processes(
    url: str, pem: Path, token: str, kind: str, seconds: float, connections: int, clients: int
) -> tuple[int, int, list[float]]:
    """The load from ``clients`` processes (one client process saturates before the
    server does on a small machine), each with its share of the connections."""
    share = max(1, connections // clients)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--load",
            kind,
            url,
            str(pem),
            token,
            str(seconds),
            str(share),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    ok = bad = 0
    latencies: list[float] = []
    for proc in procs:
        out, _ = await proc.communicate()
        doc = json.loads(out)
        ok, bad = ok + doc["ok"], bad + doc["bad"]
        latencies += doc["latencies"]
    return ok, bad, latencies


def _context(pem: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pem / "b.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(pem / "c.pem"), str(pem / "k.pem"))
    return ctx


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _spawn(config_file: Path, state: Path, address: str) -> subprocess.Popen[bytes]:
    """The secrets service, as ``trustmesh up`` runs it: its own process."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": address}
    argv = [sys.executable, "-m", "trustmesh.secrets"]
    argv += ["--config", str(config_file), "--state", str(state)]
    return subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _probes(url: str, ctx: ssl.SSLContext, token: str, audit: Path) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        before = _lines(audit)
        async with session.get(
            f"{url}/v1/secret/data/payments/db", headers={"X-Vault-Token": "hvs.bad"}
        ) as answer:
            assert answer.status == 403, f"a bad token got {answer.status}"
        async with session.get(
            f"{url}/v1/secret/data/orders/db", headers={"X-Vault-Token": token}
        ) as answer:
            assert answer.status == 403, f"another service's path got {answer.status}"
        after = _lines(audit)
        assert after >= before + 4, "the audit log did not record the probes"
    print("security on: bad token 403, another path 403, every request audited")


async def main(seconds: float, connections: int, clients: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="tmbench", dir="/tmp"))
    config_file = root / "trustmesh.yaml"
    config_file.write_text(CONFIG)
    config = parse_config(CONFIG, source="bench.yaml")
    with identity_server_in_thread(config, root / "identity") as identity:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (PAYMENTS, SECRETS):
            identity.call(
                identity.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        state = root / "state"
        proc = _spawn(config_file, state, identity.address)
        try:
            await _run(identity.address, state, proc, seconds, connections, clients)
        finally:
            proc.terminate()
            proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)


async def _run(
    address: str,
    state: Path,
    proc: subprocess.Popen[bytes],
    seconds: float,
    connections: int,
    clients: int,
) -> None:
    endpoint = state / "secrets" / "endpoint.json"
    for _ in range(300):
        if endpoint.exists():
            break
        await asyncio.sleep(0.1)
    url = json.loads(endpoint.read_text())["url"]
    source = X509Source(address, spiffe_id=PAYMENTS)
    context = await source.start()
    client = SecretsClient(RotatingTLS(source), url, SECRETS)
    token = await client.token()
    await client.request("POST", "/v1/secret/data/payments/db", {"data": {"password": "x" * 24}})
    await client.encrypt("payments", b"warm")
    folder = Path(tempfile.mkdtemp(prefix="tmpem", dir="/tmp"))
    (folder / "c.pem").write_text("".join(crypto.cert_pem(c) for c in context.chain))
    (folder / "k.pem").write_bytes(crypto.private_key_to_pem(context.key))
    (folder / "b.pem").write_text("".join(crypto.cert_pem(c) for c in context.bundle))
    ctx = _context(folder)
    await _probes(url, ctx, token, state / "secrets" / "audit.jsonl")
    print(
        f"load average {os.getloadavg()[0]:.2f}; {connections} connections from {clients} "
        f"client processes, {seconds:.0f} s each"
    )
    print(f"{'target':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-200':>9}{'CPU µs/req':>12}")
    results: dict[str, float] = {}
    cpu_per: dict[str, float] = {}
    for kind in ("kv", "transit"):
        await _load(url, ctx, token, kind, 1.0, connections)  # warm-up
        cpu = _cpu_seconds(proc.pid)
        started = time.perf_counter()
        ok, bad, latencies = await _load_processes(
            url, folder, token, kind, seconds, connections, clients
        )
        elapsed = time.perf_counter() - started
        used = _cpu_seconds(proc.pid) - cpu
        rate = ok / elapsed
        results[kind] = rate
        cpu_per[kind] = used / max(ok, 1) * 1e6
        name = "KV v2 read" if kind == "kv" else "transit encrypt"
        print(
            f"{name:<18}{rate:>9.0f}{_percentile(latencies, 0.5):>9.1f}"
            f"{_percentile(latencies, 0.99):>9.1f}{bad:>9}{used / max(ok, 1) * 1e6:>12.0f}"
        )
    for kind, cpu_us in cpu_per.items():
        print(f"{kind}: one server core would serve ≈{1e6 / cpu_us:,.0f}/s at this CPU per request")
    print(f"goal 2,000/s: KV {results['kv'] / 2000:.2f}×, transit {results['transit'] / 2000:.2f}×")
    print(
        f"vs OpenBao's published {OPENBAO_KV_READS:,} KV reads/s (large server): "
        f"{results['kv'] / OPENBAO_KV_READS:.3f}×; vs Vault's published ≈{VAULT_PUBLISHED}/s "
        f"(PKI, AppRole): KV {results['kv'] / VAULT_PUBLISHED:.1f}×"
    )
    await client.close()
    await source.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--clients", type=int, default=2, help="load processes")
    parser.add_argument("--load", nargs=6, help=argparse.SUPPRESS)  # a load process
    args = parser.parse_args()
    if args.load:
        kind, url, pem, token, seconds, connections = args.load
        ok, bad, latencies = asyncio.run(
            _load(url, _context(Path(pem)), token, kind, float(seconds), int(connections))
        )
        print(json.dumps({"ok": ok, "bad": bad, "latencies": latencies}))
    else:
        asyncio.run(main(args.seconds, args.connections, args.clients))
