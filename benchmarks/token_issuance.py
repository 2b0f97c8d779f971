"""Client-credentials issuance of the identity provider (goal: ≥ 1,000 tokens/s on one
core; Vault's AppRole login is reported at about 400/s), and the raw ES256 signing rate
measured in the same run as the ceiling.

Run: ``.venv/bin/python benchmarks/token_issuance.py [--seconds 8] [--connections 16]``

Three figures:
- raw: PyJWT ES256 signatures of the same claims, one core (the ceiling);
- core: the OAuth machinery in-process (Authlib grant dispatch, tls_client_auth, audience
  and scope checks, minting a certificate-bound RFC 9068 token), one core;
- HTTP: ``POST /oauth2/token`` over mTLS against the provider that ``trustmesh up`` runs,
  from a separate load process (aiohttp, keep-alive); tokens per second of wall time and
  per second of the provider's CPU (= on one core).
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

sys.path.insert(0, str(Path(__file__).parent))
from serve_overhead import _client_files, cpu_seconds

CONFIG = """\
trust_domain: bench.example
dev: true
services:
  payments: {external: true}
  loadgen: {external: true}
calls:
  - {from: loadgen, to: payments, allow: ["GET /charges/{id}"]}
"""

LOAD = textwrap.dedent(
    """
    import asyncio, json, ssl, sys, time
    import aiohttp
    url, seconds, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(sys.argv[4])
    ctx.load_cert_chain(sys.argv[5], sys.argv[6])
    form = {"grant_type": "client_credentials", "client_id": "loadgen"}
    latencies, errors = [], 0

    async def worker(session, deadline):
        global errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            async with session.post(url + "/oauth2/token", data=form, ssl=ctx) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t)

    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
            await worker(s, time.perf_counter() + 1)
            warm = len(latencies)
            latencies.clear()
            start = time.perf_counter()
            await asyncio.gather(*(worker(s, start + seconds) for _ in range(conns)))
            elapsed = time.perf_counter() - start
        latencies.sort()
        print(json.dumps({"rps": len(latencies) / elapsed, "errors": errors, "warm": warm,
                          "count": len(latencies),
                          "p50": latencies[len(latencies) // 2] * 1000,
                          "p99": latencies[int(len(latencies) * 0.99)] * 1000}))

    asyncio.run(main())
    """
)


async def in_process(seconds: float) -> tuple[float, float]:
    """(raw ES256 signatures/s, core issuances/s), each on one core."""
    import jwt

    from trustmesh import crypto, events
    from trustmesh.auth.db import AuthStore
    from trustmesh.auth.oauth import CoreRequest, OAuthServer, Prefetched
    from trustmesh.auth.service import AuthService, AuthSettings
    from trustmesh.config import parse_config
    from trustmesh.store import create_engine, sqlite_url

    root = Path(tempfile.mkdtemp(prefix="tmt", dir="/tmp"))
    config = parse_config(CONFIG, source="bench.yaml")
    store = AuthStore(create_engine(sqlite_url(root / "auth.db")))
    service = AuthService(
        config,
        store,
        crypto.SealKey(os.urandom(32), "env"),
        AuthSettings(issuer="https://127.0.0.1:1"),
        events.MemorySink(),
    )
    await service.start()
    server = OAuthServer(service, lambda: "https://127.0.0.1:1/oauth2/token")
    client = await service.client("loadgen")
    form = [("grant_type", "client_credentials"), ("client_id", "loadgen")]
    headers = {"content-type": "application/x-www-form-urlencoded"}

    def issue() -> None:
        request = CoreRequest(
            "POST",
            "https://127.0.0.1:1/oauth2/token",
            headers,
            form,
            peer_spiffe_id="spiffe://bench.example/loadgen",
            peer_thumbprint="x" * 43,
        )
        status, _, _ = server.run(
            request, Prefetched(clients={"loadgen": client}), server.create_token_response
        )
        assert status == 200

    key = crypto.generate_key()
    claims = {"iss": "https://127.0.0.1:1", "sub": "x", "aud": "y", "exp": 1, "jti": "z"}

    def rate(fn: object) -> float:
        count, deadline = 0, time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            fn()  # type: ignore[operator]
            count += 1
        return count / (seconds / 2)

    raw = rate(lambda: jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k"}))
    core = rate(issue)
    await store.close()
    return raw, core


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    from trustmesh.cli.stack import stop_stack

    raw, core = asyncio.run(in_process(args.seconds))
    root = Path(tempfile.mkdtemp(prefix="tmb", dir="/tmp"))
    state, config = root / "s", root / "trustmesh.yaml"
    config.write_text(CONFIG)
    cli = [sys.executable, "-m", "trustmesh"]
    where = ["--config", str(config), "--state", str(state)]
    up = subprocess.run([*cli, "up", *where, "--detach"], capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    try:
        exe = os.readlink("/proc/self/exe")
        for name in ("payments", "loadgen"):
            subprocess.run(
                [
                    *cli,
                    "identity",
                    "register",
                    "--spiffe-id",
                    f"spiffe://bench.example/{name}",
                    "--selector",
                    f"unix:uid:{os.getuid()}",
                    "--selector",
                    f"unix:path:{exe}",
                    *where,
                ],
                check=True,
                capture_output=True,
            )
        files = asyncio.run(_client_files(f"unix://{state}/public/workload.sock", root))
        status = json.loads(
            subprocess.run(
                [*cli, "status", "--json", *where], capture_output=True, text=True, check=True
            ).stdout
        )
        auth = next(c for c in status["components"] if c["name"] == "auth")
        before = cpu_seconds(auth["pid"])
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                LOAD,
                auth["url"],
                str(args.seconds),
                str(args.connections),
                *files[:3],
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = cpu_seconds(auth["pid"]) - before
        http = json.loads(out.stdout)
    finally:
        stop_stack(state, print)
    per_cpu = (http["count"] + http["warm"]) / cpu if cpu else float("nan")
    print(
        f"machine: {os.cpu_count()} cores; HTTP: {args.connections} keep-alive mTLS connections, {args.seconds:.0f} s"
    )
    print(f"raw ES256 signing (ceiling, one core)      {raw:8.0f} /s")
    print(f"core issuance in-process (one core)        {core:8.0f} /s   {core / raw:.2f}x of raw")
    print(
        f"HTTP issuance, wall clock                  {http['rps']:8.0f} /s   p50 {http['p50']:.1f} ms  p99 {http['p99']:.1f} ms  errors {http['errors']}"
    )
    print(
        f"HTTP issuance per provider CPU-second      {per_cpu:8.0f} /s   {per_cpu / 1000:.2f}x of the 1,000/s goal; {per_cpu / 400:.1f}x Vault AppRole (~400/s)"
    )


if __name__ == "__main__":
    main()
