"""The injection filter through a live gateway: every attack and benign string of
``../shared/vectors/payloads/`` and libinjection's ``false_positives.txt`` sent as a real
request, in each position a client puts a value — a query value, a form field, a JSON
string field, a path segment — to a ``trustmesh up`` stack whose gateway runs fast mode
in front of the demo's ``inventory`` service. (``benchmarks/waf.py`` measures the same
filter in process, and its cost.)

Run: ``.venv/bin/python benchmarks/waf_gateway.py [--mode fast|crs] [--paranoia 1]
[--concurrency 16]``

A request counts as detected when the gateway itself refused it as an injection (403,
``forbidden``, with a ``request-injection`` event); anything else — the service's answer,
another refusal of the gateway (a path it will not route: 400 or 404) — is not the
filter's doing and is counted apart (``other``). False positives: a benign string
refused as an injection. Before measuring, a probe shows the filter is on (a plain
``' OR 1=1--`` in a query is 403) and that a benign request passes.

Prints detection per category and position, the false-positive rate per benign set, and
the ratio of each against issue 17's goals (fast mode: ≥ 90 % SQLi and XSS, ≥ 80 %
traversal and command injection, ≤ 1 % false positives; crs mode: ≥ 95 % SQLi and XSS
at paranoia 1–2). Then the OWASP CRS's own regression requests (``vectors/crs/``: method,
query, headers and body as the CRS tests send them, to the same route), per category.
In crs mode it also prints the mode's cost in process: CPU per typical JSON request
(1 KB, 20 fields) and per GET with a query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from gateway import component

from trustmesh import crypto
from trustmesh.testing import run_cli as tm

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
GOALS = {
    "fast": {"sqli": 0.90, "xss": 0.90, "traversal": 0.80, "cmdi": 0.80},
    "crs": {"sqli": 0.95, "xss": 0.95},
}
FP_GOAL = 0.01
CONFIG = textwrap.dedent(
    """
    trust_domain: waf.example
    dev: true
    services:
      inventory: {run: "trustmesh.demo.inventory:app"}
    gateway:
      rate_limits: []
      waf: WAF
      routes:
        - {path: /items, to: inventory, methods: [GET, POST], auth: [anonymous]}
    """
)
POSITIONS = ("query", "form", "json", "path")


def load() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    attacks: dict[str, list[str]] = {}
    benign: dict[str, list[str]] = {"payloads/benign": [], "libinjection/false_positives": []}
    for line in (VECTORS / "payloads" / "attacks.jsonl").read_text().splitlines():
        item = json.loads(line)
        attacks.setdefault(item["cat"], []).append(item["payload"])
    for line in (VECTORS / "payloads" / "benign.jsonl").read_text().splitlines():
        benign["payloads/benign"].append(json.loads(line)["payload"])
    fp = (VECTORS / "libinjection" / "false_positives.txt").read_text(errors="replace")
    benign["libinjection/false_positives"] = [s for s in fp.splitlines() if s.strip()]
    return attacks, benign


def request_for(position: str, value: str) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path and query, headers, body): ``value`` where a client puts it."""
    if position == "query":
        return "GET", "/items/tea?q=" + quote(value, safe=""), {}, b""
    if position == "form":
        body = ("q=" + quote(value, safe="")).encode()
        return "POST", "/items/tea", {"content-type": "application/x-www-form-urlencoded"}, body
    if position == "json":
        body = json.dumps({"q": value}).encode()
        return "POST", "/items/tea", {"content-type": "application/json"}, body
    return "GET", "/items/" + quote(value, safe=""), {}, b""


def crs_request(line: str) -> tuple[str, str, dict[str, str], bytes]:
    """One of the CRS's regression requests, to the benchmark's route: its method, its
    query, its headers (but Host) and its body."""
    item = json.loads(line)
    query = item["uri"].partition("?")[2]
    headers = {k: v for k, v in item.get("headers", {}).items() if k.lower() != "host"}
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    data = item.get("data") or ""
    if isinstance(data, list):
        data = "\r\n".join(data)
    if data and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    method = item.get("method") or "GET"
    method = method if method in ("GET", "POST") else "POST" if data else "GET"
    return method, "/items/tea" + ("?" + query if query else ""), headers, data.encode()


async def verdict(session: aiohttp.ClientSession, base: str, position: str, value: str) -> str:
    """``refused`` (the filter), ``passed`` or ``other`` (refused for something else)."""
    if position == "crs":
        method, target, headers, body = crs_request(value)
    else:
        method, target, headers, body = request_for(position, value)
    try:
        async with session.request(
            method, base + target, headers=headers, data=body or None, allow_redirects=False
        ) as answer:
            text = await answer.read()
            if answer.status == 403 and b'"the request was refused"' in text:
                return "refused"
            return "passed" if answer.status < 400 or answer.status in (404, 405) else "other"
    except (aiohttp.ClientError, ValueError):
        return "other"  # a target no client library sends (a raw control character)


async def measure(
    base: str, ca: Path, values: list[str], position: str, concurrency: int
) -> Counter[str]:
    context = ssl.create_default_context(cafile=str(ca))
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    counts: Counter[str] = Counter()
    queue = list(values)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                counts[await verdict(session, base, position, queue.pop())] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def table(
    title: str, rows: dict[str, list[str]], run: Callable[[list[str], str], Counter[str]]
) -> dict[tuple[str, str], Counter[str]]:
    print(f"\n{title}")
    print(f"{'set':32s}{'n':>6s}" + "".join(f"{p:>18s}" for p in POSITIONS))
    found: dict[tuple[str, str], Counter[str]] = {}
    for name, values in rows.items():
        cells = []
        for position in POSITIONS:
            counts = found[(name, position)] = run(values, position)
            rate = counts["refused"] / max(len(values), 1)
            cells.append(f"{rate:7.1%} (+{counts['other']:3d} oth)")
        print(f"{name:32s}{len(values):6d}" + "".join(f"{c:>18s}" for c in cells))
    return found


def crs_cost(paranoia: int) -> None:
    """crs mode's CPU per request in process (the gateway calls the same inspect)."""
    from trustmesh.gateway.crs import CrsFilter

    crs = CrsFilter(paranoia=paranoia)
    base = [(b"host", b"shop.example"), (b"user-agent", b"bench/1"), (b"accept", b"*/*")]
    fields = {f"field{i:02d}": f"value {i} of a typical order, with words" for i in range(20)}
    body = json.dumps(fields).encode()
    cases = {
        f"JSON body, {len(body)} B, 20 fields": (
            "POST",
            b"/items/tea",
            [*base, (b"content-type", b"application/json")],
            body,
        ),
        "GET with a 3-parameter query": ("GET", b"/items/tea?q=green&page=2&sort=price", base, b""),
    }
    print(f"\ncrs mode's cost in process (paranoia {paranoia}):")
    for name, (method, target, headers, payload) in cases.items():
        if crs.inspect(method=method, target=target, headers=headers, body=payload) is not None:
            raise SystemExit(f"{name}: refused, not a benign request")
        rounds = 300
        started = time.process_time()
        for _ in range(rounds):
            crs.inspect(method=method, target=target, headers=headers, body=payload)
        cost = (time.process_time() - started) / rounds * 1e6
        print(f"  {name:40s} {cost:8.0f} µs CPU a request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", choices=("fast", "crs"), default="fast")
    parser.add_argument("--paranoia", type=int, default=1, choices=(1, 2, 3, 4))
    args = parser.parse_args()
    attacks, benign = load()
    waf = "{mode: fast}" if args.mode == "fast" else f"{{mode: crs, paranoia: {args.paranoia}}}"
    print(f"mode {args.mode}" + (f", paranoia {args.paranoia}" if args.mode == "crs" else ""))
    with tempfile.TemporaryDirectory(prefix="tmwaf", dir="/tmp") as folder:
        root = Path(folder)
        (root / "trustmesh.yaml").write_text(CONFIG.replace("WAF", waf))
        state = root / "state"
        up = tm(
            "up",
            "--config",
            str(root / "trustmesh.yaml"),
            "--state",
            str(state),
            "--detach",
            timeout=180,
        )
        if up.returncode != 0:
            raise SystemExit(f"trustmesh up failed:\n{up.stdout}\n{up.stderr}")
        try:
            status = json.loads(
                tm(
                    "status",
                    "--config",
                    str(root / "trustmesh.yaml"),
                    "--state",
                    str(state),
                    "--json",
                ).stdout
            )
            base = component(status, "gateway")["url"]
            ca = crypto.edge_ca_path(state)

            def run(values: list[str], position: str) -> Counter[str]:
                return asyncio.run(measure(base, ca, values, position, args.concurrency))

            probe = run(["' OR 1=1--"], "query")
            clean = run(["green tea"], "query")
            if probe["refused"] != 1 or clean["refused"] != 0:
                raise SystemExit(f"the filter is not on as expected: {probe} {clean}")
            print("security on: ' OR 1=1-- in a query is refused (403); green tea passes")
            started = time.perf_counter()
            detected = table("attacks refused as injections (payloads/)", attacks, run)
            false = table("benign strings refused as injections", benign, run)
            sent = sum(len(v) for v in [*attacks.values(), *benign.values()]) * len(POSITIONS)
            elapsed = time.perf_counter() - started
            print(f"\n{sent:,} requests in {elapsed:.0f} s")
            print("\nagainst the goals (query, form, JSON positions):")
            for category, goal in GOALS[args.mode].items():
                rates = [
                    detected[(category, p)]["refused"] / len(attacks[category])
                    for p in ("query", "form", "json")
                ]
                print(
                    f"  {category:10s} {min(rates):6.1%} (goal ≥ {goal:.0%}: "
                    f"{min(rates) / goal:.2f}×)"
                )
            for name, values in benign.items():
                rates = [
                    false[(name, p)]["refused"] / len(values) for p in ("query", "form", "json")
                ]
                print(f"  FP {name:30s} {max(rates):6.1%} (goal ≤ {FP_GOAL:.0%})")
            print("\nthe OWASP CRS's regression requests (vectors/crs/), refused:")
            for path in sorted((VECTORS / "crs").glob("*.jsonl")):
                lines = path.read_text().splitlines()
                counts = run(lines, "crs")
                print(
                    f"  {path.stem:10s} {counts['refused'] / len(lines):6.1%} of {len(lines):4d}"
                    f" (+{counts['other']} refused for another reason)"
                )
        finally:
            tm("down", "--state", str(state))
    if args.mode == "crs":
        crs_cost(args.paranoia)


if __name__ == "__main__":
    main()
