"""Detection throughput: OCSF event dicts through ``Detector.observe`` with the shipped
ruleset, on one core (goal: ≥ 50,000 events/s, so that the collector, which also parses
and hash-chains each event, reaches 20,000/s).

Run: ``.venv/bin/python benchmarks/audit_detection.py [--events 200000]``

The mix, recorded as the components record it (one event a millisecond, so windows
open, slide and expire): 55% service calls allowed by the middleware, 20% requests
forwarded by the gateway, 6% tokens issued, 6% secret reads, 3% rate-limited requests,
3% logins (two thirds failed, a few accounts), 2% tokens introspected, 2% calls denied
(lateral), 1% revoked tokens presented, 1% admin changes, 1% unknown-caller calls.
Reported: events/s through ``observe`` alone, and with ``json.loads`` of each event's
line first (what the collector adds before chaining).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from trustmesh import events
from trustmesh.audit.detection import Detector
from trustmesh.reasons import Activity, Reason

TD = "spiffe://bench.example/"
T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
TICKET: events.Shape = (events.EventClass.AUTHENTICATION, 4, "Service Ticket Request")
DENY, ALLOW = events.Decision.DENY, events.Decision.ALLOW


Occurrence = tuple[str, Any, str, dict[str, Any]]  # recorder, code, message, fields
HTTP = {"method": "GET", "path": "/orders"}


def _call(rnd: random.Random, i: int, client: str) -> Occurrence:
    callee, caller = rnd.choice(["payments", "inventory", "orders"]), rnd.choice(CALLERS)
    src = events.Endpoint(ip="127.0.0.1", port=40000 + i % 1000)
    attributes = {"method": "GET", "path": "/items/42", "route": "r0", "policy": "p0"}
    fields = {"peer_spiffe_id": TD + caller, "src": src, "attributes": attributes}
    return callee, Reason.POLICY_ALLOW, "call allowed", fields


def _login(rnd: random.Random, i: int, client: str) -> Occurrence:
    failed = rnd.random() < 0.66
    fields = {"decision": DENY if failed else ALLOW, "src": events.Endpoint(ip=client)}
    fields["attributes"] = {"login": f"user{rnd.randint(1, 40)}"}
    return "auth", Reason.LOGIN_FAILED if failed else Reason.LOGIN_SUCCEEDED, "login", fields


#: (weight, what one occurrence of the kind records)
KINDS: list[tuple[int, Callable[[random.Random, int, str], Occurrence]]] = [
    (55, _call),
    (
        20,
        lambda rnd, i, client: (
            "gateway",
            Reason.REQUEST_FORWARDED,
            "forwarded",
            {"sub": f"user{i % 500}", "attributes": {**HTTP, "client": client, "status": 200}},
        ),
    ),
    (
        6,
        lambda rnd, i, client: (
            "auth",
            Reason.TOKEN_ISSUED,
            "access token issued",
            {
                "client_id": "orders",
                "sub": TD + "orders",
                "peer_spiffe_id": TD + "orders",
                "jti": f"j{i}",
            },
        ),
    ),
    (
        6,
        lambda rnd, i, client: (
            "secrets",
            Reason.POLICY_ALLOW,
            "read",
            {
                "peer_spiffe_id": TD + "payments",
                "attributes": {"path": "secret/data/payments/key", "operation": "get"},
            },
        ),
    ),
    (
        3,
        lambda rnd, i, client: (
            "gateway",
            Reason.RATE_LIMITED,
            "rate limited",
            {"decision": DENY, "attributes": {**HTTP, "client": client, "rule": "ip"}},
        ),
    ),
    (3, _login),
    (
        2,
        lambda rnd, i, client: (
            "auth",
            Reason.TOKEN_INTROSPECTED,
            "token introspected",
            {"client_id": "gateway", "peer_spiffe_id": TD + "gateway", "jti": f"j{i}"},
        ),
    ),
    (
        2,
        lambda rnd, i, client: (
            "orders",
            Reason.POLICY_DENY,
            "call denied by policy",
            {
                "decision": DENY,
                "peer_spiffe_id": TD + "payments",
                "attributes": {"method": "POST", "path": "/orders", "route": None, "policy": None},
            },
        ),
    ),
    (
        1,
        lambda rnd, i, client: (
            "gateway",
            Reason.TOKEN_REVOKED,
            "token refused: revoked",
            {"decision": DENY, "attributes": {**HTTP, "client": client}},
        ),
    ),
    (
        1,
        lambda rnd, i, client: (
            "auth",
            Activity.USER_LOCKED,
            "user locked",
            {"sub": "u1", "attributes": {"username": "bob", "roles": "customer", "by": "alice"}},
        ),
    ),
    (
        1,
        lambda rnd, i, client: (
            "inventory",
            Reason.POLICY_ALLOW,
            "call allowed",
            {"peer_spiffe_id": TD + f"unknown{rnd.randint(1, 50)}"},
        ),
    ),
]
CALLERS = ["orders", "storefront", "gateway"]


def mix(n: int, seed: int = 7, start: datetime = T0) -> list[dict[str, Any]]:
    """``n`` events a millisecond apart from ``start``, their trace ids as the gateway
    makes them (:meth:`trustmesh.sdk.trace.TraceParent.new`: the time, then random)."""
    rnd = random.Random(seed)
    sink = events.MemorySink()
    names = ["orders", "payments", "inventory", "gateway", "secrets"]
    recorders = {name: events.Recorder(sink, component=name, spiffe_id=TD + name) for name in names}
    recorders["auth"] = events.Recorder(
        sink, component="auth", spiffe_id=TD + "auth", default=TICKET
    )
    makers = rnd.choices([m for _, m in KINDS], [w for w, _ in KINDS], k=n)
    out = []
    for i, make in enumerate(makers):
        name, code, message, fields = make(rnd, i, f"198.51.100.{rnd.randint(1, 200)}")
        now = start + timedelta(milliseconds=i)
        fields.setdefault(
            "trace_id", f"{round(now.timestamp() * 1000):012x}{rnd.getrandbits(80):020x}"
        )
        out.append(recorders[name].record(code, message, now=now, **fields).to_ocsf())
    return out


def main(n: int) -> None:
    stream = mix(n)
    lines = [json.dumps(e) for e in stream]
    detector = Detector.shipped()
    start = time.perf_counter()
    alerts = sum(len(detector.observe(e)) for e in stream)
    alerts += len(detector.flush())
    observe = n / (time.perf_counter() - start)
    detector = Detector.shipped()
    start = time.perf_counter()
    for line in lines:
        detector.observe(json.loads(line))
    parsed = n / (time.perf_counter() - start)
    print(
        f"events: {n:,}  rules: shipped  alerts: {alerts}  matches: {sum(detector.stats.matches.values()):,}"
    )
    print(f"observe:              {observe:>10,.0f} events/s")
    print(f"json.loads + observe: {parsed:>10,.0f} events/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    main(parser.parse_args().events)
