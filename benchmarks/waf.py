"""The injection filter's fast mode, offline: detection per category and position, false
positives per benign set, and the cost of a typical request (goals: ≥ 90% of SQLi and
XSS, ≥ 80% of traversal and command injection in ``payloads/``; ≤ 1% false positives;
≤ 30 µs for a 1 KB JSON request with 20 string fields).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/waf.py [--vectors DIR] [--misses CAT]``
(``--per-value``: only where the typical request's time goes: the screen of its values
together, then each suspect it leaves)

- ``payloads/attacks.jsonl`` and ``benign.jsonl``, and libinjection's
  ``false_positives.txt`` (``+``/``%XX``-decoded, as upstream's reader does): each string
  sent the way a client sends it, in each position — a query value and a form field
  (URL-encoded by ``urlencode``), a JSON string field (``json.dumps``), and a path segment
  (``quote(safe="")``; what :func:`canonical_path` refuses is counted apart, as the
  gateway's stage 1 refuses it before the filter runs);
- the CRS regression requests (``crs/*.jsonl``) as written: path, query, headers and body,
  mapped sqli→sqli, xss→xss, lfi→traversal, rce→cmdi (rfi and generic shown, no goal),
  at paranoia level 1 and at every level.

This is the offline half; the gateway's half (the same sets through a running gateway)
comes with the wiring. No check names a payload of these sets: each is a generic shape.
The rules were tuned looking only at the design half's misses (``--misses``); the
held-out half was never looked at, so its figure is the filter's on attacks it has not
seen. Found attacks reported under another category are counted apart (JSON position).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from trustmesh.gateway._wafbody import suspects
from trustmesh.gateway._wafchecks import check, check_rest
from trustmesh.gateway.waf import WINDOW, FastFilter, Finding
from trustmesh.policy.paths import NonCanonicalPath, canonical_path

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
GOALS = {"sqli": 0.90, "xss": 0.90, "traversal": 0.80, "cmdi": 0.80}
FP_GOAL = 0.01
#: attacks.jsonl is split, per category, into a design half (rules are tuned on it,
#: ``--misses`` shows only it) and a held-out half never looked at: the held-out figure
#: is the one that says how the filter does on attacks it has not seen
SPLIT_SEED = 17
HALVES = ("design", "held-out", "whole")
CRS_CATEGORY = {
    "sqli": "sqli",
    "xss": "xss",
    "lfi": "traversal",
    "rce": "cmdi",
    "rfi": "rfi",
    "generic": "generic",
}
FILTER = FastFilter()
Outcome = str  # "filter", "canonical" (refused by canonical_path), "pass"


def send_query(value: str) -> Outcome:
    query = urllib.parse.urlencode({"q": value}).encode()
    return _outcome(
        FILTER.inspect(path="/search", query=query, headers=[], content_type=None, body=b"")
    )


def send_form(value: str) -> Outcome:
    body = urllib.parse.urlencode({"comment": value}).encode()
    found = FILTER.inspect(
        path="/comments",
        query=b"",
        headers=[],
        content_type="application/x-www-form-urlencoded",
        body=body,
    )
    return _outcome(found)


def send_json(value: str) -> Outcome:
    body = json.dumps({"id": 7, "comment": value}).encode()
    found = FILTER.inspect(
        path="/comments", query=b"", headers=[], content_type="application/json", body=body
    )
    return _outcome(found)


def send_path(value: str) -> Outcome:
    raw = ("/files/" + urllib.parse.quote(value, safe="")).encode()
    try:
        path = canonical_path(raw)
    except NonCanonicalPath:
        return "canonical"
    return _outcome(FILTER.inspect(path=path, query=b"", headers=[], content_type=None, body=b""))


POSITIONS: dict[str, Callable[[str], Outcome]] = {
    "query": send_query,
    "form": send_form,
    "json": send_json,
    "path": send_path,
}


def _outcome(found: Finding | None) -> Outcome:
    return "pass" if found is None else "filter"


def send_crs(line: dict[str, object]) -> Outcome:
    uri = str(line["uri"])
    raw_path, _, query = uri.partition("?")
    try:
        path = canonical_path(raw_path.encode("latin-1"))
    except NonCanonicalPath:
        return "canonical"
    headers_in = dict(line["headers"])  # type: ignore[call-overload]
    headers = [
        (k.lower().encode(), str(v).encode("latin-1", "replace")) for k, v in headers_in.items()
    ]
    data = line["data"]
    content_type = next(
        (str(v) for k, v in headers_in.items() if k.lower() == "content-type"), None
    )
    if data is not None and content_type is None:
        content_type = "application/x-www-form-urlencoded"
    body = b"" if data is None else str(data).encode("utf-8", "replace")
    found = FILTER.inspect(
        path=path,
        query=query.encode("latin-1", "replace"),
        headers=headers,
        content_type=content_type,
        body=body,
    )
    return _outcome(found)


def load(
    vectors: Path,
) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[str]]]:
    """The attacks per category and half (``design``, ``held-out``, ``whole``), and the
    benign sets."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for line in (vectors / "payloads" / "attacks.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_category[row["cat"]].append(row["payload"])
    attacks: dict[str, dict[str, list[str]]] = {}
    for category, payloads in by_category.items():
        order = list(range(len(payloads)))
        random.Random(f"{SPLIT_SEED}:{category}").shuffle(order)
        design = set(order[: len(order) // 2])
        attacks[category] = {
            "design": [p for i, p in enumerate(payloads) if i in design],
            "held-out": [p for i, p in enumerate(payloads) if i not in design],
            "whole": payloads,
        }
    benign = {
        "payloads/benign": [
            json.loads(line)["payload"]
            for line in (vectors / "payloads" / "benign.jsonl").read_text().splitlines()
        ],
        "libinjection/false_positives": [
            urllib.parse.unquote_plus(line)
            for line in (vectors / "libinjection" / "false_positives.txt").read_text().splitlines()
            if line and not line.startswith("#")
        ],
    }
    return attacks, benign


def typical_request() -> tuple[bytes, list[tuple[str, str]]]:
    """A 1 KB JSON order: 20 string fields (and 2 others), keys included."""
    order = {
        "customer_id": "c_8f3a2b1d9e",
        "email": "alice.obrien@example.com",
        "name": "Alice O'Brien",
        "phone": "+44 20 7946 0958",
        "line1": "221B Baker Street",
        "line2": "Flat 2, second floor",
        "city": "London",
        "postcode": "NW1 6XE",
        "country": "GB",
        "sku": "SKU-12345",
        "title": "Blue cotton T-shirt, size M",
        "currency": "EUR",
        "coupon": "SPRING24",
        "gift_message": "Happy birthday! Hope you like it, see you on Saturday :)",
        "notes": "Please leave the parcel with the neighbour at number 12 if nobody is home; "
        "the bell does not work, so knock twice. Select your size at checkout next time, "
        "and tell us if anything is missing from the box.",
        "created_at": "2024-05-01T12:34:56Z",
        "channel": "web",
        "locale": "en-GB",
        "referrer": "https://www.example.com/campaigns/spring?utm_source=newsletter&utm_medium=email",
        "user_agent_hint": "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "quantity": 2,
        "gift": True,
    }
    body = json.dumps(order).encode()
    strings: list[tuple[str, str]] = []

    def walk(node: object, pointer: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                strings.append((f"{pointer}/{key}", key))
                walk(child, f"{pointer}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{pointer}/{i}")
        elif isinstance(node, str):
            strings.append((pointer, node))

    walk(order, "")
    return body, strings


def timing(seconds: float) -> None:
    body, strings = typical_request()
    values = sum(1 for p, s in strings if not p.endswith("/" + s))
    print(
        f"\ntypical request: {len(body)} bytes JSON, {values} string values, {len(strings) - values} keys"
    )
    headers = [
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0")
    ]
    cases = {
        "json_strings passed by the gateway": lambda: FILTER.inspect(
            path="/orders",
            query=b"",
            headers=headers,
            content_type="application/json",
            body=body,
            json_strings=strings,
        ),
        "body parsed by the filter": lambda: FILTER.inspect(
            path="/orders",
            query=b"",
            headers=headers,
            content_type="application/json",
            body=body,
        ),
    }
    for label, call in cases.items():
        if call() is not None:
            raise SystemExit(f"the typical request was refused: {call()}")
        micros = best_of(call, seconds)
        print(f"  {label:42} {micros:6.1f} µs  (goal ≤ 30 µs: {micros / 30:.2f}× the budget)")
    browser = FILTER.inspect(
        path="/orders", query=b"", headers=BROWSER_HEADERS, content_type=None, body=b""
    )
    if browser is not None:
        raise SystemExit(f"the browser's headers were refused: {browser}")
    micros = best_of(
        lambda: FILTER.inspect(
            path="/orders", query=b"", headers=BROWSER_HEADERS, content_type=None, body=b""
        ),
        seconds,
    )
    label = f"a browser's {len(BROWSER_HEADERS)} headers alone (no goal)"
    print(f"  {label:42} {micros:6.1f} µs")
    long = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit; " * 300)[:16384]
    micros = best_of(
        lambda: FILTER.inspect(
            path="/x",
            query=b"",
            headers=[],
            content_type="application/json",
            body=b"",
            json_strings=[("/t", long)],
        ),
        seconds,
    )
    print(f"  {'a long prose value (16 KiB, in windows)':42} {micros / 16:6.1f} µs per KiB")
    # many values, one of them not plain: what the screen's pass over the separators
    # costs (it was once quadratic in their number)
    crowd = json.dumps(["a; b", *[""] * 8000]).encode()
    micros = best_of(
        lambda: FILTER.inspect(
            path="/x", query=b"", headers=[], content_type="application/json", body=crowd
        ),
        seconds,
    )
    label = f"8,000 empty strings after a ';' ({len(crowd) // 1024} KiB)"
    print(f"  {label:42} {micros / 8:6.1f} µs per 1,000")


#: what a browser sends with a JSON request: the inspected ones are User-Agent, Referer,
#: Cookie and X-* (Authorization never)
BROWSER_HEADERS = [
    (b"host", b"shop.example.com"),
    (
        b"user-agent",
        b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/124.0.0.0 Safari/537.36",
    ),
    (b"accept", b"application/json, text/plain, */*"),
    (b"accept-language", b"en-GB,en;q=0.9"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"content-type", b"application/json"),
    (b"content-length", b"928"),
    (b"origin", b"https://shop.example.com"),
    (b"referer", b"https://shop.example.com/checkout?step=2"),
    (
        b"cookie",
        b"session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; theme=dark; "
        b"consent=analytics%3Dno%26ads%3Dno; _ga=GA1.2.1234567890.1712345678",
    ),
    (b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736"),
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"authorization", b"Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"),
]


def per_value(seconds: float) -> None:
    """Where the typical request's time goes: the screen of all its values together
    (what the filter runs), then what each suspect it leaves costs, dearest first; and,
    for comparison, what check() alone costs each string."""
    _, strings = typical_request()
    agent = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
    places = [*strings, ("header user-agent", agent)]
    values = [s for _, s in places]
    micros = best_of(lambda: list(suspects(values, WINDOW)), seconds / 4)
    found = list(suspects(values, WINDOW))
    print(f"\nthe {len(values)} values screened together: {micros:.1f} µs, {len(found)} suspects")
    costs = [
        (
            best_of(
                lambda s=values[i], c=specials: check(s) if c is None else check_rest(s, c),
                seconds / 40,
            ),
            places[i][0],
            values[i],
        )
        for i, specials in found
    ]
    print(f"per suspect ({sum(c for c, _, _ in costs):.1f} µs in all):")
    for micros, where, s in sorted(costs, reverse=True):
        print(f"  {micros:5.2f} µs  {where[:24]:24} {s!r:.60}")
    costs = [(best_of(lambda s=s: check(s), seconds / 40), where, s) for where, s in places]
    print(f"per string (check() alone, {sum(c for c, _, _ in costs):.1f} µs in all):")
    for micros, where, s in sorted(costs, reverse=True):
        print(f"  {micros:5.2f} µs  {where[:24]:24} {s!r:.60}")


def best_of(call: Callable[[], object], seconds: float) -> float:
    """The best CPU time of one call (µs) over rounds of 200 calls: process time, not
    wall time, so that other processes on a shared machine count less."""
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.process_time()
        for _ in range(200):
            call()
        best = min(best, (time.process_time() - start) / 200 * 1e6)
    return best


def main(vectors: Path, misses: str | None, seconds: float) -> None:
    attacks, benign = load(vectors)
    print(
        "payloads/attacks.jsonl — detection (refused by the filter; path: + refused by canonical_path)"
    )
    print(f"split per category with seed {SPLIT_SEED}: rules tuned on the design half only")
    print(
        f"{'category':10} {'half':9} {'n':>4} "
        + " ".join(f"{p:>14}" for p in POSITIONS)
        + "   goal"
    )
    for category, halves in attacks.items():
        for half in HALVES:
            payloads = halves[half]
            cells = []
            worst = 1.0
            for position, send in POSITIONS.items():
                outcomes: Counter[str] = Counter()
                for payload in payloads:
                    outcome = send(payload)
                    outcomes[outcome] += 1
                    if (
                        misses == category
                        and half == "design"
                        and outcome == "pass"
                        and position == "json"
                    ):
                        print(f"    miss: {payload!r}"[:200])
                rate = outcomes["filter"] / len(payloads)
                if position == "path":
                    both = (outcomes["filter"] + outcomes["canonical"]) / len(payloads)
                    cells.append(f"{rate:6.1%}+{both - rate:5.1%}")
                    worst = min(worst, both)
                else:
                    cells.append(f"{rate:14.1%}")
                    worst = min(worst, rate)
            goal = GOALS[category]
            verdict = "met" if worst >= goal else f"short by {goal - worst:.1%}"
            print(
                f"{category:10} {half:9} {len(payloads):4} "
                + " ".join(f"{c:>14}" for c in cells)
                + f"   ≥{goal:.0%} {verdict}"
            )

    print("\nfound, but reported under another category (JSON position, whole set):")
    for category, halves in attacks.items():
        other: Counter[str] = Counter()
        for payload in halves["whole"]:
            found = FILTER.inspect(
                path="/c",
                query=b"",
                headers=[],
                content_type="application/json",
                body=json.dumps({"comment": payload}).encode(),
            )
            if found is not None and found.category != category:
                other[f"{found.category}/{found.check}"] += 1
        shown = ", ".join(f"{k} {n}" for k, n in other.most_common()) or "none"
        print(f"  {category:10} {sum(other.values()):3}  {shown}")

    print("\nbenign sets — false positives (refused by the filter; path: canonical_path apart)")
    print(f"{'set':30} {'n':>4} " + " ".join(f"{p:>14}" for p in POSITIONS) + "   goal")
    for name, strings in benign.items():
        cells = []
        worst = 0.0
        for position, send in POSITIONS.items():
            outcomes = Counter(send(s) for s in strings)
            rate = outcomes["filter"] / len(strings)
            worst = max(worst, rate)
            extra = f" (+{outcomes['canonical']})" if outcomes["canonical"] else ""
            cells.append(f"{rate:.1%} {outcomes['filter']}{extra}")
            if misses == "benign" and position == "json":
                for s in strings:
                    if send(s) == "filter":
                        print(f"    false positive: {s!r}"[:200])
        verdict = "met" if worst <= FP_GOAL else f"over by {worst - FP_GOAL:.1%}"
        print(
            f"{name:30} {len(strings):4} "
            + " ".join(f"{c:>14}" for c in cells)
            + f"   ≤{FP_GOAL:.0%} {verdict}"
        )

    print("\nCRS regression requests, as written (refused by the filter + by canonical_path)")
    print(f"{'file':9} {'category':10} {'PL1 n':>6} {'PL1':>14} {'all n':>6} {'all':>14}")
    levels = {
        int(k): v["paranoia_level"]
        for k, v in json.loads((vectors / "crs" / "rules.json").read_text()).items()
    }
    for stem, category in CRS_CATEGORY.items():
        lines = [
            json.loads(x) for x in (vectors / "crs" / f"{stem}.jsonl").read_text().splitlines()
        ]
        counts: dict[str, Counter[str]] = {"pl1": Counter(), "all": Counter()}
        for line in lines:
            outcome = send_crs(line)
            counts["all"][outcome] += 1
            if levels.get(int(line["rule_id"])) == 1:
                counts["pl1"][outcome] += 1
        cells = []
        for key in ("pl1", "all"):
            total = sum(counts[key].values())
            f = counts[key]["filter"] / total if total else 0.0
            c = counts[key]["canonical"] / total if total else 0.0
            cells += [f"{total:6}", f"{f:6.1%}+{c:5.1%}"]
        print(
            f"{stem:9} {category:10} "
            + " ".join(f"{c:>14}" if i % 2 else c for i, c in enumerate(cells))
        )

    timing(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=Path, default=VECTORS)
    parser.add_argument(
        "--misses",
        help="print the design half's misses of a category in the JSON position (or 'benign')",
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--per-value", action="store_true", help="only time each string of the typical request"
    )
    args = parser.parse_args()
    if args.per_value:
        per_value(args.seconds)
    else:
        main(args.vectors, args.misses, args.seconds)
