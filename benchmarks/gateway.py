"""The price of the edge: requests through the gateway's whole chain against the same
upstream app reached directly, through nginx as a plain TLS reverse proxy, through an
HAProxy edge doing JWT checks and a rate limit, and through a bare Python proxy, in one
run, loaded by ``wrk``.

Run: ``.venv/bin/python benchmarks/gateway.py [--duration 10] [--connections 32]
[--threads 2] [--rounds 1] [--quick] [--only gateway,haproxy]`` (``--quick``: 3 s per
target, a smoke run; ``--only``: just the targets named, comma-separated, each round
still alternating between them)

Needs ``wrk``, ``nginx`` and ``haproxy`` (2.6 or later: ``jwt_verify``) on PATH
(``apt-get update && apt-get install -y wrk nginx haproxy``, as root); the script only
checks and says so. nginx and HAProxy are never started as system services: each runs in
the foreground from its own config file in the run's temporary folder, on free loopback
ports, and is stopped at the end.

One ``trustmesh up`` stack (identity, provider, gateway, the audit collector, the demo
``inventory`` service) serves the mesh targets; every target answers ``GET /items/tea``
with the same app code (``trustmesh.demo.inventory:app``). The collector takes the
events of the gateway and of ``inventory`` (one per request each): without it
(``--no-audit``) they are only spooled, and once a spool holds its 64 MiB (some 60,000
requests) its service waits for room (``on_full: block``) and the run falls apart.

- ``direct``: the app under plain-TLS uvicorn (one process, httptools) — no mTLS, no SDK
  middleware. wrk cannot present a client certificate, so this is the closest "no proxy"
  figure.
- ``nginx → app``: nginx (TLS in, one worker, keep-alive TLS pool to the upstream,
  upstream certificate verified) in front of that same plain-TLS app.
- ``nginx → mesh svc``: nginx presenting an X.509-SVID of a declared workload and a
  static access token from the provider (certificate-bound to that SVID) to the stack's
  ``inventory``: the same upstream the gateway calls, with the SDK middleware's mTLS,
  Cedar call policy, token check and events. nginx cannot match a SPIFFE ID (a URI SAN),
  so it does not verify the upstream's certificate.
- ``haproxy → mesh svc``: the security peer (``benchmarks/gateway_peers.py``): HAProxy,
  one thread, TLS in, the user's bearer JWT checked on every request (ES256 signature
  with ``jwt_verify`` against the provider's key exported from its JWKS, ``alg``, ``iss``,
  ``aud``, ``exp``), a per-subject stick-table limit that counts, and the same SVID and
  static token as nginx to ``inventory`` (chain verified, ``http-reuse always``).
- ``python proxy → mesh svc``: the floor for a proxy in Python (same module): uvicorn +
  an ``aiohttp`` client, one process, TLS in, the same SVID and token out, no checks.
- ``gateway``: TLS in, the user's bearer JWT verified (a real sign-in on the provider's
  public login form), the edge Cedar policy, a rate limit per consumer (generous: it
  counts, never refuses), an event per request, the internal token (signed once per
  credential and route, reused while fresh), mTLS to ``inventory`` (its SPIFFE ID
  checked). One user with one token: the token check, the policy decision and the
  internal token take their cached path after the first request, as for a keep-alive
  client (nginx's static token is a cache hit at the upstream too).

Before measuring, probes show which gateway stages this build enforces (401 without a
token; 403 on a route the edge policy does not permit; 429 on a route limited to one
call a minute; 431 for a 64 KiB header) and what the HAProxy peer refuses (no token, an
altered signature, ``alg: none``, HS256 keyed with the public key or its file's path,
not a JWT, a provider-signed token for another audience: each 401; the good token 200).
Each target gets a short warm-up, then the measured run; the table shows throughput,
p50/p99 latency, non-2xx answers and socket errors (either one is flagged and makes the
exit status 1), and the CPU the proxy and the upstream each spent per request (from
/proc, warm-up excluded); then the gateway's ratios to each target, the upstream's CPU
per request behind each proxy, HAProxy's stick-table entry and its upstream connection
reuse. The machine is shared by wrk, the proxy and the upstream (and whatever else runs:
the load average is printed); read the ratios, not the absolute figures, and use
``--rounds`` for medians on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

sys.path.insert(0, str(Path(__file__).parent))
import gateway_peers as peers

from trustmesh import crypto
from trustmesh.testing import run_cli as tm

TRUST_DOMAIN = "bench.example"
GATEWAY_ID = f"spiffe://{TRUST_DOMAIN}/trustmesh/gateway"
PATH = "/items/tea"
REDIRECT = "https://bench.example/cb"
CLIENT_ID = "bench-cli"

CONFIG = textwrap.dedent(
    """\
    trust_domain: bench.example
    dev: true
    services:
      inventory: {run: "trustmesh.demo.inventory:app"}
      edgeproxy: {external: true}
    calls:
      - {from: edgeproxy, to: inventory, allow: ["GET /items/{item}"]}
    gateway:
    %(engine)s%(policies)s  routes:
        - path: /items
          to: inventory
          name: items
          rate_limits: [{per: consumer, limit: "50000/second"}]
        - {path: /items/kettle, to: inventory, name: limited,
           rate_limits: [{per: route, limit: "1/minute"}]}
        - {path: /items/mug, to: inventory, name: forbidden}
    %(audit)s"""
)
#: The edge policy: the measured route and the rate-limit probe are permitted, the
#: ``forbidden`` probe route is not (default deny).
EDGE_POLICY = textwrap.dedent(
    """\
    permit(principal is User, action == Action::"GET", resource == Route::"items");
    permit(principal is User, action == Action::"GET", resource == Route::"limited");
    """
)

#: Counts every status per thread; ``done`` prints one JSON line with wrk's own summary
#: and latency percentiles (microseconds).
WRK_SCRIPT = textwrap.dedent(
    """\
    local threads = {}
    function setup(thread) table.insert(threads, thread) end
    function init(args) statuses = {} end
    function response(status, headers, body)
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
    end
    function done(summary, latency, requests)
      local parts = {}
      local total = {}
      for _, t in ipairs(threads) do
        for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
      end
      for k, v in pairs(total) do table.insert(parts, string.format('"%s":%d', k, v)) end
      local e = summary.errors
      io.write(string.format(
        'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
        '"connect":%d,"read":%d,"write":%d,"timeout":%d,"statuses":{%s}}\\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        latency.max, e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
    end
    """
)

NGINX_CONF = textwrap.dedent(
    """\
    daemon off;
    master_process on;
    worker_processes 1;
    pid {root}/nginx.pid;
    error_log {root}/error.log warn;
    events {{ worker_connections 4096; }}
    http {{
      access_log off;
      client_body_temp_path {root}/tmp/body;
      proxy_temp_path {root}/tmp/proxy;
      fastcgi_temp_path {root}/tmp/fastcgi;
      uwsgi_temp_path {root}/tmp/uwsgi;
      scgi_temp_path {root}/tmp/scgi;
      keepalive_requests 1000000;
      ssl_certificate {cert};
      ssl_certificate_key {key};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_session_reuse on;
      upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; keepalive_requests 1000000; }}
      upstream mesh {{ server 127.0.0.1:{mesh_port}; keepalive 64; keepalive_requests 1000000; }}
      server {{
        listen 127.0.0.1:{app_listen} ssl;
        location / {{
          proxy_pass https://app;
          proxy_ssl_verify on;
          proxy_ssl_name localhost;
          proxy_ssl_trusted_certificate {ca};
        }}
      }}
      server {{
        listen 127.0.0.1:{mesh_listen} ssl;
        location / {{
          proxy_pass https://mesh;
          proxy_ssl_certificate {svid};
          proxy_ssl_certificate_key {svid_key};
          # proxy_set_header here replaces the inherited ones: keep-alive needs this again
          proxy_set_header Connection "";
          proxy_set_header Authorization "Bearer {token}";
        }}
      }}
    }}
    """
)


@dataclass(frozen=True)
class Target:
    """One thing wrk loads: its URL, headers, and the processes whose CPU it costs."""

    name: str
    url: str
    ca: Path  # what its TLS certificate chains to
    headers: tuple[str, ...]
    proxy_pid: int | None
    upstream_pid: int


@dataclass(frozen=True)
class Result:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    statuses: dict[str, int]
    proxy_cpu_us: float | None  # per request
    upstream_cpu_us: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants (nginx's workers; the nginx
    the gateway runs with ``--engine nginx``, and its workers)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(cpu.get(p, 0.0) for p in tree)


def session(ca: Path) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(ca)
    return s


def wait_until_up(url: str, ca: Path, headers: dict[str, str], what: str) -> None:
    deadline = time.monotonic() + 30
    with session(ca) as s:
        while True:
            try:
                if s.get(url, headers=headers, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not answer 200 on {url} within 30 s")
            time.sleep(0.1)


#: ``--tracing``: spans off, at the default ratio (one allowed request in ten), or all.
TRACING = {
    "off": ", tracing: {enabled: false}",
    "default": "",
    "all": ", tracing: {sample_ratio: 1.0}",
}


def start_stack(
    root: Path,
    state: Path,
    with_policy: bool,
    with_audit: bool,
    engine_name: str = "python",
    decision_ttl: int | None = None,
    tracing: str = "default",
) -> tuple[Path, dict[str, Any]]:
    config = root / "trustmesh.yaml"
    policies = ""
    if with_policy:
        (root / "edge.cedar").write_text(EDGE_POLICY)
        policies = "  policies: [edge.cedar]\n"
    # the collector takes the events; the larger spool only bounds a slow collector
    traced = TRACING[tracing]
    audit = f"audit: {{spool: {{max_bytes: 1073741824}}{traced}}}\n" if with_audit else ""
    engine = f'  engine: {engine_name}\n  waf: {{mode: "off"}}\n' if engine_name != "python" else ""
    if decision_ttl:
        engine += f"  nginx: {{decision_ttl: {decision_ttl}s}}\n"
    config.write_text(CONFIG % {"policies": policies, "audit": audit, "engine": engine})
    up = tm("up", "--config", str(config), "--state", str(state), "--detach", timeout=180)
    if up.returncode != 0:
        raise SystemExit(f"trustmesh up failed:\n{up.stdout}\n{up.stderr}")
    status = tm("status", "--config", str(config), "--state", str(state), "--json")
    return config, json.loads(status.stdout)


def component(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in status["components"] if c["name"] == name)


def user_token(config: Path, state: Path, public: str, ca: Path) -> str:
    """An access token for the gateway, the way a person gets one: authorization code +
    PKCE with a sign-in on the provider's public login form."""
    from trustmesh.cli.auth_cmd import admin_call
    from trustmesh.config import load_config

    cfg = load_config(config)
    password = secrets.token_urlsafe(24)
    admin_call(cfg, state, "POST", "/admin/v1/users", {"username": "bench", "password": password})
    admin_call(
        cfg,
        state,
        "POST",
        "/admin/v1/clients",
        {
            "client_id": CLIENT_ID,
            "method": "none",
            "redirect_uris": [REDIRECT],
            "audiences": [GATEWAY_ID],
        },
    )
    with session(ca) as browser:
        client = OAuth2Session(
            client_id=CLIENT_ID,
            redirect_uri=REDIRECT,
            scope="openid",
            token_endpoint_auth_method="none",  # noqa: S106 - a method name
            code_challenge_method="S256",
        )
        verifier = generate_token(48)
        url, _ = client.create_authorization_url(
            public + "/oauth2/authorize", code_verifier=verifier
        )
        login = browser.get(url, allow_redirects=False, timeout=30)
        form = browser.get(public + login.headers["Location"], timeout=30)
        fields = dict(
            (m.split('name="')[1].split('"')[0], m.split('value="')[1].split('"')[0])
            for m in form.text.split("<input")
            if 'type="hidden"' in m
        )
        signed_in = browser.post(
            public + "/login",
            data={
                **fields,
                "next": fields["next"].replace("&amp;", "&"),
                "username": "bench",
                "password": password,
                "otp": "",
            },
            allow_redirects=False,
            timeout=30,
        )
        if signed_in.status_code != 303:
            raise SystemExit(f"sign-in failed: HTTP {signed_in.status_code} {signed_in.text}")
        back = browser.get(
            public + signed_in.headers["Location"], allow_redirects=False, timeout=30
        )
        code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
        tokens = browser.post(
            public + "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": CLIENT_ID,
                "code_verifier": verifier,
            },
            timeout=30,
        ).json()
    return str(tokens["access_token"])


async def edge_proxy_identity(config: Path, state: Path, folder: Path) -> str:
    """The proxies' credentials for the mesh upstream: the ``edgeproxy`` workload's SVID
    (a one-time join token redeemed over the Workload API) and its trust bundle written
    as PEM files, and a client-credentials access token for ``inventory`` bound to that
    certificate."""
    from trustmesh.auth.__main__ import endpoint_path
    from trustmesh.cli.call_cmd import as_workload
    from trustmesh.config import load_config
    from trustmesh.sdk.oauth import AuthClient

    cfg = load_config(config)
    auth_url = json.loads(endpoint_path(state).read_text())["url"]
    async with as_workload(cfg, state, cfg.spiffe_id("edgeproxy")) as tls:
        svid = tls.source.context
        (folder / "svid.pem").write_bytes(svid.chain_pem())
        (folder / "bundle.pem").write_bytes(svid.bundle_pem())
        key = folder / "svid.key"
        key.write_bytes(crypto.private_key_to_pem(svid.key))
        key.chmod(0o600)
        auth = AuthClient(tls, auth_url, cfg.component_spiffe_id("auth"))
        try:
            token, _ = await auth.client_credentials("edgeproxy", cfg.spiffe_id("inventory"))
        finally:
            await auth.close()
    return token


def throwaway_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA made for this run only and a server certificate for localhost from it:
    what the plain-TLS app and nginx's listeners present (nothing is kept)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = crypto.generate_key()
    ca = crypto.create_edge_ca(ca_key, now=now, ttl=dt.timedelta(days=1))
    leaf = crypto.issue_server_certificate(
        ["localhost", "127.0.0.1"], ca, ca_key, now=now, ttl=dt.timedelta(days=1)
    )
    ca_file, cert, key = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_text(crypto.cert_pem(ca))
    cert.write_bytes(leaf.chain_pem())
    key.write_bytes(leaf.key_pem())
    key.chmod(0o600)
    return ca_file, cert, key


def start_plain_app(cert: Path, key: Path, port: int) -> subprocess.Popen[bytes]:
    argv = peers.uvicorn_argv("trustmesh.demo.inventory:app", port, cert, key)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL)


def start_nginx(folder: Path, **values: object) -> subprocess.Popen[bytes]:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=folder, **values))
    conf.chmod(0o600)  # it holds a bearer token
    return subprocess.Popen(
        ["nginx", "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def probe_gateway(url: str, ca: Path, token: str) -> dict[str, str]:
    """Which stages this gateway build enforces, seen from outside."""
    bearer = {"Authorization": f"Bearer {token}"}
    found: dict[str, str] = {}
    with session(ca) as s:
        anonymous = s.get(url + PATH, timeout=30).status_code
        found["JWT required"] = "yes (401)" if anonymous == 401 else f"NO (HTTP {anonymous})"
        denied = s.get(url + "/items/mug", headers=bearer, timeout=30).status_code
        found["edge policy"] = (
            "enforced (403 off-policy)" if denied == 403 else f"not enforced (HTTP {denied})"
        )
        codes = [
            s.get(url + "/items/kettle", headers=bearer, timeout=30).status_code for _ in range(2)
        ]
        found["rate limit"] = (
            "enforced (429 over limit)" if codes[1] == 429 else f"not enforced (HTTP {codes})"
        )
        huge = {**bearer, "X-Filler": "a" * 65536}  # twice the default head limit
        oversized = s.get(url + PATH, headers=huge, timeout=30).status_code
        found["head limits"] = (
            "enforced (431 over 32 KiB)" if oversized == 431 else f"not enforced (HTTP {oversized})"
        )
    return found


def run_wrk(target: Target, args: argparse.Namespace, script: Path, seconds: int) -> Result:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s"]
    command += ["--latency", "--timeout", "10s", "-s", str(script)]
    for header in target.headers:
        command += ["-H", header]
    pids = [p for p in (target.proxy_pid, target.upstream_pid) if p is not None]
    before = {p: tree_cpu_seconds(p) for p in pids}
    out = subprocess.run(
        [*command, target.url + PATH], capture_output=True, text=True, timeout=seconds + 60
    )
    spent = {p: tree_cpu_seconds(p) - before[p] for p in pids}
    if args.verbose:
        print(out.stdout, out.stderr, sep="\n")
    match = re.search(r"^RESULT (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise SystemExit(f"wrk failed on {target.name}:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(match.group(1))
    count = max(raw["requests"], 1)
    ok = sum(n for status, n in raw["statuses"].items() if status.startswith("2"))
    return Result(
        requests=raw["requests"],
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        non_2xx=raw["requests"] - ok,
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        statuses=raw["statuses"],
        proxy_cpu_us=spent[target.proxy_pid] / count * 1e6 if target.proxy_pid else None,
        upstream_cpu_us=spent[target.upstream_pid] / count * 1e6,
    )


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def median(runs: list[Result]) -> Result:
    """The round with the median throughput, with the refusals and errors of every round."""
    middle = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
    statuses: dict[str, int] = {}
    for r in runs:
        for status, n in r.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    return replace(
        middle,
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sum(r.socket_errors for r in runs),
        statuses=statuses,
    )


def report(results: dict[str, Result], targets: list[Target], args: argparse.Namespace) -> bool:
    """Print the table and the ratios; False when some answer was not 2xx."""
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print(
        f"\nmachine: {os.cpu_count()} cores, shared by wrk, the proxy and the upstream; "
        f"wrk {args.threads} threads, {args.connections} keep-alive connections, "
        f"{args.duration} s per target after a {args.warmup} s warm-up{rounds}; GET {PATH}"
    )
    print(
        f"{'target':44}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'sock err':>9}"
        f"{'proxy CPU':>11}{'app CPU':>10}"
    )
    print(f"{'':44}{'':>8}{'':>9}{'':>9}{'':>9}{'':>9}{'µs/req':>11}{'µs/req':>10}")
    clean = True
    for target in targets:
        r = results[target.name]
        flag = ""
        if r.non_2xx or r.socket_errors:
            clean = False
            refused = [f"{n}× HTTP {s}" for s, n in sorted(r.statuses.items()) if s[0] != "2"]
            if r.socket_errors:
                refused.append(f"{r.socket_errors} socket errors")
            flag = "  <-- NOT CLEAN: " + ", ".join(refused)
        proxy = f"{r.proxy_cpu_us:11.0f}" if r.proxy_cpu_us is not None else f"{'-':>11}"
        print(
            f"{target.name:44}{r.rps:8.0f}{r.p50_ms:9.2f}{r.p99_ms:9.2f}{r.non_2xx:9d}"
            f"{r.socket_errors:9d}{proxy}{r.upstream_cpu_us:10.0f}{flag}"
        )
    if not targets[-1].name.startswith("gateway"):
        return clean
    gateway = results[targets[-1].name]
    print(
        f"\n{'gateway / peer':34}{'req/s':>8}{'p50':>8}{'p99':>8}"
        f"{'proxy CPU/req':>15}{'app CPU/req':>13}"
    )
    for target in targets[:-1]:
        base = results[target.name]
        if base.requests == 0:
            print(f"{target.name.partition(' (')[0]:34}   (no requests served: no ratios)")
            continue
        proxy = (
            f"{gateway.proxy_cpu_us / base.proxy_cpu_us:14.2f}×"
            if gateway.proxy_cpu_us and base.proxy_cpu_us
            else f"{'-':>15}"
        )
        print(
            f"{target.name.partition(' (')[0]:34}{gateway.rps / base.rps:7.2f}×"
            f"{gateway.p50_ms / base.p50_ms:7.2f}×{gateway.p99_ms / base.p99_ms:7.2f}×"
            f"{proxy}{gateway.upstream_cpu_us / base.upstream_cpu_us:12.2f}×"
        )
    # the same SDK-guarded upstream behind each proxy: what the caller costs it
    behind = [t for t in targets if "mesh svc" in t.name or t is targets[-1]]
    if len(behind) > 1:
        print(
            "upstream (mesh inventory) CPU per request behind: "
            + ", ".join(
                f"{t.name.partition(' (')[0]} {results[t.name].upstream_cpu_us:.0f} µs"
                for t in behind
            )
        )
    return clean


TARGET_NAMES = ("direct", "nginx", "haproxy", "python", "gateway")


def only_targets(text: str) -> tuple[str, ...]:
    """``--only``'s value: target names, comma-separated (``gateway,haproxy``), as the
    tuple ``str.startswith`` takes."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in TARGET_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target {', '.join(unknown) or '(none)'}; choose from {', '.join(TARGET_NAMES)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=2, help="seconds per target, unmeasured")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all targets; report medians")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s, 1 s warm-up")
    parser.add_argument(
        "--no-edge-policy", action="store_true", help="declare no gateway Cedar policy"
    )
    parser.add_argument(
        "--only",
        type=only_targets,
        metavar="NAMES",
        help="measure only these targets, comma-separated, of direct, nginx, haproxy, "
        "python, gateway (e.g. gateway,haproxy; to profile one with py-spy meanwhile)",
    )
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="no audit collector: events only spooled; the stack's spools fill (64 MiB) "
        "after some 60,000 requests and the services then wait (on_full: block)",
    )
    parser.add_argument(
        "--engine",
        choices=("python", "nginx"),
        default="python",
        help="the gateway's engine (nginx: nginx forwards, the gateway's authorizer "
        "decides; the injection filter off, as that engine requires)",
    )
    parser.add_argument(
        "--decision-ttl",
        type=int,
        default=None,
        metavar="SECONDS",
        help="engine nginx: nginx keeps an allowed decision this long and counts the "
        "consumer limit itself (gateway.nginx.decision_ttl; unset: every request asked)",
    )
    parser.add_argument(
        "--tracing",
        choices=tuple(TRACING),
        default="default",
        help="spans: off, the default ratio (audit.tracing.sample_ratio: 0.1), or every "
        "request (1.0); compare runs for what tracing costs the gateway",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--verbose", action="store_true", help="print wrk's own output")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 3, 1
    missing = [tool for tool in ("wrk", "nginx", "haproxy") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"{' and '.join(missing)} not found on PATH; install with (as root):\n"
            "  apt-get update && apt-get install -y wrk nginx haproxy\n"
            "(nginx and HAProxy only run from this script's own configs, never as services)"
        )

    # a short path: the Workload API's unix socket lives under it
    root = Path(tempfile.mkdtemp(prefix="tmgw", dir="/tmp"))
    state = root / "state"
    plain: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None
    haproxy: subprocess.Popen[bytes] | None = None
    pyproxy: subprocess.Popen[bytes] | None = None
    clean = False
    try:
        print("starting the trustmesh stack (trustmesh up) …", flush=True)
        config, status = start_stack(
            root,
            state,
            with_policy=not args.no_edge_policy,
            with_audit=not args.no_audit,
            engine_name=args.engine,
            decision_ttl=args.decision_ttl,
            tracing=args.tracing,
        )
        gateway, inventory = component(status, "gateway"), component(status, "inventory")
        edge_ca = Path(status["edge_ca"])
        public = component(status, "auth")["public_url"]
        token = user_token(config, state, public, edge_ca)
        mesh_token = asyncio.run(edge_proxy_identity(config, state, root))
        issuer, signing_keys = peers.provider_keys(public, edge_ca, root)

        ca, cert, key = throwaway_certificate(root)
        app_port, app_listen, mesh_listen = free_port(), free_port(), free_port()
        haproxy_listen, pyproxy_port = free_port(), free_port()
        inventory_port = int(urlsplit(inventory["url"]).port or 0)
        plain = start_plain_app(cert, key, app_port)
        nginx = start_nginx(
            root / "nginx",
            cert=cert,
            key=key,
            ca=ca,
            app_port=app_port,
            mesh_port=inventory_port,
            app_listen=app_listen,
            mesh_listen=mesh_listen,
            svid=root / "svid.pem",
            svid_key=root / "svid.key",
            token=mesh_token,
        )
        haproxy_conf = peers.write_haproxy_config(
            root / "haproxy",
            listen=haproxy_listen,
            edge_cert=cert,
            edge_key=key,
            signing_keys=signing_keys,
            issuer=issuer,
            audience=GATEWAY_ID,
            svid=root / "svid.pem",
            svid_key=root / "svid.key",
            bundle=root / "bundle.pem",
            token=mesh_token,
            upstream_port=inventory_port,
        )
        haproxy = peers.start_haproxy(haproxy_conf)
        token_file = root / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(mesh_token)
        pyproxy = peers.start_python_proxy(
            root, port=pyproxy_port, cert=cert, key=key, upstream_port=inventory_port
        )
        time.sleep(0.3)
        if nginx.poll() is not None:
            log = root / "nginx" / "error.log"
            raise SystemExit(f"nginx did not start:\n{log.read_text() if log.exists() else ''}")
        if haproxy.poll() is not None:
            raise SystemExit(f"haproxy exited:\n{(root / 'haproxy' / 'haproxy.log').read_text()}")
        app_url, mesh_url = f"https://127.0.0.1:{app_listen}", f"https://127.0.0.1:{mesh_listen}"
        targets = [
            Target(
                "direct: app, plain TLS (no mTLS/no SDK)",
                f"https://127.0.0.1:{app_port}",
                ca,
                (),
                None,
                plain.pid,
            ),
            Target("nginx → app (plain TLS upstream)", app_url, ca, (), nginx.pid, plain.pid),
            Target(
                "nginx → mesh svc (SVID + static token)",
                mesh_url,
                ca,
                (),
                nginx.pid,
                int(inventory["pid"]),
            ),
            Target(
                "haproxy → mesh svc (JWT ES256, limit, SVID)",
                f"https://127.0.0.1:{haproxy_listen}",
                ca,
                (f"Authorization: Bearer {token}",),
                haproxy.pid,
                int(inventory["pid"]),
            ),
            Target(
                "python proxy → mesh svc (no checks, SVID)",
                f"https://127.0.0.1:{pyproxy_port}",
                ca,
                (),
                pyproxy.pid,
                int(inventory["pid"]),
            ),
            Target(
                "gateway (JWT, policy, limit, events, mTLS)"
                + (f" [engine {args.engine}]" if args.engine != "python" else "")
                + (f" [kept {args.decision_ttl}s]" if args.decision_ttl else ""),
                gateway["url"],
                edge_ca,
                (f"Authorization: Bearer {token}",),
                int(gateway["pid"]),
                int(inventory["pid"]),
            ),
        ]
        if args.only:
            targets = [t for t in targets if t.name.startswith(args.only)]
        for target in targets:
            header = dict(h.split(": ", 1) for h in target.headers)
            wait_until_up(target.url + PATH, target.ca, header, target.name)
        stages = probe_gateway(gateway["url"], edge_ca, token)
        print("gateway stages in this build: " + "; ".join(f"{k}: {v}" for k, v in stages.items()))
        refusals = peers.probe_haproxy(
            f"https://127.0.0.1:{haproxy_listen}{PATH}",
            ca,
            token,
            mesh_token,
            list(signing_keys.values()),
        )
        print("haproxy peer: " + "; ".join(f"{k}: {v}" for k, v in refusals.items()))
        print(
            f"haproxy per-subject stick-table after the probes: {peers.haproxy_table(root / 'haproxy')}"
        )
        peer_holes = [k for k, v in refusals.items() if "NOT" in v or "REFUSED" in v]

        script = root / "count.lua"
        script.write_text(WRK_SCRIPT)
        events_file = state / "events" / "gateway.jsonl"
        runs: dict[str, list[Result]] = {t.name: [] for t in targets}
        events = served = 0
        load_before = os.getloadavg()[0]
        for n in range(args.rounds):
            for target in targets:
                print(f"round {n + 1}/{args.rounds}: {target.name} …", flush=True)
                run_wrk(target, args, script, args.warmup)
                time.sleep(0.5)  # the warm-up's last events are written before the count
                events_before = count_lines(events_file)
                runs[target.name].append(run_wrk(target, args, script, args.duration))
                if target.name.startswith("gateway"):
                    time.sleep(1)  # the event sink writes the run's last lines
                    events += count_lines(events_file) - events_before
                    served += runs[target.name][-1].requests
        clean = report({name: median(r) for name, r in runs.items()}, targets, args)
        if any(t.proxy_pid == haproxy.pid for t in targets):
            table = peers.haproxy_table(root / "haproxy")
            print(f"haproxy per-subject stick-table at the end (counted, never refused): {table}")
            print(f"haproxy → inventory: {peers.haproxy_upstream(root / 'haproxy')}")
        if args.rounds > 1:
            for target in targets:
                each = ", ".join(f"{r.rps:.0f}" for r in runs[target.name])
                print(f"req/s by round, {target.name.partition(' (')[0]}: {each}")
        # wrk stops counting with requests in flight: up to one more event per connection
        print(
            f"gateway events written during its measured runs: {events} for {served} requests"
            + ("" if events >= served else "  <-- FEWER EVENTS THAN REQUESTS")
        )
        spooled = {
            name: sum(f.stat().st_size for f in (state / "spool" / name).glob("seg-*"))
            for name in ("gateway", "inventory")
        }
        print(
            "audit spool files at the end (a spool blocks at 64 MiB without a collector): "
            + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in spooled.items())
        )
        print(
            f"load average (1 min) before the runs {load_before:.1f}, after "
            f"{os.getloadavg()[0]:.1f}: other work on the machine shows up in every figure"
        )
        if not stages["edge policy"].startswith("enforced") or not stages["rate limit"].startswith(
            "enforced"
        ):
            print("note: a stage this build does not enforce yet costs nothing in this run")
        if peer_holes:
            clean = False
            print(f"haproxy peer checks that did not hold: {', '.join(peer_holes)}")
    finally:
        stop(pyproxy)
        stop(haproxy, signal.SIGUSR1)
        stop(nginx, signal.SIGQUIT)
        stop(plain)
        if state.exists():  # also after a start that failed half-way
            down = tm("down", "--state", str(state))
            if down.returncode != 0:
                print(f"trustmesh down: {down.stdout}{down.stderr}", file=sys.stderr)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if not clean:
        raise SystemExit(
            "some answers were not 2xx or sockets failed: the figures above are flagged"
        )


if __name__ == "__main__":
    main()
