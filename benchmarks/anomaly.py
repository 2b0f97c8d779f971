"""The anomaly detector on a labelled replay: simulated days of the demo shop's traffic,
attacks injected, and what the detector said of them.

Run: ``.venv/bin/python benchmarks/anomaly.py [--days 8] [--customers 40] [--seed 7]``

The replay is the demo's declaration in use (its routes, its services, its roles),
each event made by the components' own event recorder (``trustmesh.events.Recorder``)
with a simulated clock, as the gateway, the provider and the services record them:

- customers (``--customers``) sign in a few times a day at their own hours, from their
  home address (sometimes a phone's, now and then somewhere new), mistype a password
  now and then, list and read their orders, place some (each order is three more hops:
  orders, inventory, payments, on the customer's behalf) and are refused now and then;
- support staff work weekdays 8 to 18 and read many orders; the admin lists them daily;
- the storefront service places and reads orders on its own behalf all day, more by day.

From the second day on, attacks (each event labelled with its attack):

- *stolen token*: twice a day a customer's token is used from a new address, during its
  owner's session — the orders listed, read, a refund tried;
- *scraping*: once a day the storefront reads orders by id, 30 to 80 in ten minutes,
  for 30 to 60 minutes;
- *slow credential stuffing*: once a day two addresses try one sign-in every 2 to 6
  minutes for 3 to 6 hours, against known names (70%) and made-up ones.

The detector (``trustmesh.audit.anomaly``, as the collector runs it: first day learned)
sees every event in time order. An alert is right when its principal's window holds an
attack's event; recall is per attack instance — one stolen-token use, one scraping
run, one account tried by the stuffing (made-up names: none to protect, but a detector
should see them too; reported apart). False alarms: alerts on windows without any
attack event, per simulated day after the first.
"""

from __future__ import annotations

import argparse
import random
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from trustmesh import events
from trustmesh.audit.anomaly import AnomalyDetector, principal_of
from trustmesh.reasons import Reason

T0 = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
TD = "trustmesh.local"
WINDOW_MS = 600_000


def spiffe(name: str) -> str:
    return f"spiffe://{TD}/{name}"


@dataclass
class Labelled:
    events: list[dict[str, Any]] = field(default_factory=list)
    #: event uid -> attack instance ("stolen-token#3", "scraping#1", "stuffing#2:<login>")
    attack_of: dict[str, str] = field(default_factory=dict)


class Shop:
    """The demo's components, recording as they do, with a simulated clock."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.out = Labelled()
        sink = _Keep(self.out)
        self.gateway = events.Recorder(
            sink, component="gateway", spiffe_id=spiffe("trustmesh/gateway")
        )
        self.auth = events.Recorder(sink, component="auth", spiffe_id=spiffe("trustmesh/auth"))
        self.services = {
            n: events.Recorder(sink, component=n, spiffe_id=spiffe(n))
            for n in ("orders", "inventory", "payments")
        }

    def _label(self, event: events.Event, attack: str | None) -> None:
        if attack is not None:
            self.out.attack_of[event.to_ocsf()["metadata"]["uid"]] = attack

    def sign_in(
        self,
        at: datetime,
        sub: str | None,
        login: str,
        address: str,
        ok: bool,
        attack: str | None = None,
    ) -> None:
        code = Reason.LOGIN_SUCCEEDED if ok else Reason.LOGIN_FAILED
        event = self.auth.record(
            code,
            "signed in" if ok else "login failed",
            decision=events.Decision.ALLOW if ok else events.Decision.DENY,
            sub=sub,
            src=events.Endpoint(ip=address, port=self.rng.randrange(1024, 65535)),
            attributes={"login": login},
            now=at,
        )
        self._label(event, attack)

    def request(
        self,
        at: datetime,
        sub: str,
        jti: str,
        address: str,
        method: str,
        route: str,
        path: str,
        allowed: bool = True,
        attack: str | None = None,
    ) -> None:
        event = self.gateway.record(
            Reason.REQUEST_FORWARDED if allowed else Reason.POLICY_DENY,
            "forwarded" if allowed else "denied by policy",
            decision=events.Decision.ALLOW if allowed else events.Decision.DENY,
            sub=sub,
            jti=jti,
            attributes={"method": method, "path": path, "route": route, "client": address},
            now=at,
        )
        self._label(event, attack)
        if allowed and method == "POST" and route == "/orders":  # the order's hops
            hops = (
                ("orders", "gateway", "POST /orders"),
                ("inventory", "orders", "POST /reservations"),
                ("payments", "orders", "POST /charges"),
            )
            for i, (callee, caller, call) in enumerate(hops):
                self.service_call(
                    at + timedelta(milliseconds=3 * i + 1),
                    callee,
                    caller,
                    call,
                    sub=sub,
                    attack=attack,
                )

    def service_call(
        self,
        at: datetime,
        callee: str,
        caller: str,
        call: str,
        *,
        sub: str | None = None,
        attack: str | None = None,
        path: str | None = None,
    ) -> None:
        method, _, pattern = call.partition(" ")
        event = self.services[callee].record(
            Reason.POLICY_ALLOW,
            "call allowed",
            decision=events.Decision.ALLOW,
            peer_spiffe_id=spiffe(caller if caller != "gateway" else "trustmesh/gateway"),
            sub=sub,
            client_id=None if sub else caller,
            src=events.Endpoint(ip="127.0.0.1", port=self.rng.randrange(30000, 60000)),
            attributes={"method": method, "path": path or pattern, "route": f"{callee} {call}"},
            now=at,
        )
        self._label(event, attack)


class _Keep:
    def __init__(self, out: Labelled) -> None:
        self.out = out

    def emit(self, event: events.Event) -> None:
        self.out.events.append(event.to_ocsf())


@dataclass
class Customer:
    sub: str
    login: str
    home: str
    phones: list[str]
    hours: list[int]
    sessions_per_day: float


def _address(rng: random.Random, prefix: str) -> str:
    return f"{prefix}.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"


def simulate(days: int, customers: int, seed: int) -> tuple[Labelled, dict[str, int]]:
    rng = random.Random(seed)
    shop = Shop(rng)
    people = [
        Customer(
            sub=secrets.token_hex(16),
            login=f"customer{i}",
            home=_address(rng, "10.1"),
            phones=[_address(rng, "10.9") for _ in range(2)],
            hours=sorted(rng.sample(range(7, 23), 3)),
            sessions_per_day=rng.uniform(0.5, 3.0),
        )
        for i in range(customers)
    ]
    staff = [
        Customer(
            secrets.token_hex(16), f"support{i}", _address(rng, "10.2"), [], list(range(8, 18)), 3.0
        )
        for i in range(3)
    ]
    admin = Customer(
        secrets.token_hex(16), "admin", _address(rng, "10.3"), [], [9, 10, 11, 14, 15], 1.0
    )
    instances: dict[str, int] = defaultdict(int)
    for day in range(days):
        start = T0 + timedelta(days=day)
        for person in people:
            for _ in range(_poisson(rng, person.sessions_per_day)):
                at = start + timedelta(hours=rng.choice(person.hours) + rng.uniform(-1, 1))
                _customer_session(shop, rng, person, at)
        if start.weekday() < 5:
            for person in staff:
                for _ in range(_poisson(rng, person.sessions_per_day)):
                    at = start + timedelta(hours=rng.uniform(8, 17.5))
                    _staff_session(shop, rng, person, at, reads=rng.randrange(15, 50))
        _staff_session(
            shop, rng, admin, start + timedelta(hours=rng.uniform(9, 16)), reads=2, admin=True
        )
        _storefront_day(shop, rng, start)
        if day == 0:
            continue
        for _ in range(2):
            n = instances["stolen-token"] = instances["stolen-token"] + 1
            victim = rng.choice(people)
            at = start + timedelta(hours=rng.choice(victim.hours) + rng.uniform(-1, 1))
            jti = _customer_session(shop, rng, victim, at)
            _stolen_token(
                shop,
                rng,
                victim,
                jti,
                at + timedelta(minutes=rng.uniform(1, 8)),
                f"stolen-token#{n}",
            )
        n = instances["scraping"] = instances["scraping"] + 1
        _scrape(shop, rng, start + timedelta(hours=rng.uniform(1, 22)), f"scraping#{n}")
        n = instances["stuffing"] = instances["stuffing"] + 1
        _stuff(shop, rng, people, start + timedelta(hours=rng.uniform(0, 18)), f"stuffing#{n}")
    shop.out.events.sort(key=lambda e: e["time"])
    return shop.out, dict(instances)


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def _customer_session(shop: Shop, rng: random.Random, person: Customer, at: datetime) -> str:
    roll = rng.random()
    address = (
        person.home
        if roll < 0.85
        else rng.choice(person.phones)
        if roll < 0.99
        else _address(rng, "10.7")
    )
    if rng.random() < 0.05:  # a typo first
        shop.sign_in(at, person.sub, person.login, address, ok=False)
        at += timedelta(seconds=rng.uniform(5, 30))
    shop.sign_in(at, person.sub, person.login, address, ok=True)
    jti = secrets.token_hex(16)
    for _ in range(rng.randrange(3, 13)):
        at += timedelta(seconds=rng.uniform(5, 90))
        kind = rng.random()
        order = f"ord_{rng.randrange(16**6):06x}"
        if kind < 0.3:
            shop.request(at, person.sub, jti, address, "GET", "/orders", "/orders")
        elif kind < 0.6:
            shop.request(
                at, person.sub, jti, address, "GET", "/orders/{order_id}", f"/orders/{order}"
            )
        elif kind < 0.8:
            shop.request(at, person.sub, jti, address, "POST", "/orders", "/orders")
        elif kind < 0.97:
            shop.request(
                at,
                person.sub,
                jti,
                address,
                "GET",
                "/items/{item}",
                f"/items/{rng.choice(['tea', 'mug', 'pot'])}",
            )
        else:  # a refund only support may grant: refused
            shop.request(
                at,
                person.sub,
                jti,
                address,
                "POST",
                "/orders/{order_id}/refund",
                f"/orders/{order}/refund",
                allowed=False,
            )
    return jti


def _staff_session(
    shop: Shop, rng: random.Random, person: Customer, at: datetime, reads: int, admin: bool = False
) -> None:
    shop.sign_in(at, person.sub, person.login, person.home, ok=True)
    jti = secrets.token_hex(16)
    for _ in range(reads):
        at += timedelta(seconds=rng.uniform(10, 120))
        if admin:
            shop.request(at, person.sub, jti, person.home, "GET", "/admin/orders", "/admin/orders")
        else:
            order = f"ord_{rng.randrange(16**6):06x}"
            shop.request(
                at, person.sub, jti, person.home, "GET", "/orders/{order_id}", f"/orders/{order}"
            )


def _storefront_day(shop: Shop, rng: random.Random, start: datetime) -> None:
    for window in range(144):
        hour = window / 6
        mean = 3 + (9 if 8 <= hour < 22 else 0)
        at = start + timedelta(minutes=10 * window)
        for _ in range(_poisson(rng, mean)):
            when = at + timedelta(seconds=rng.uniform(0, 600))
            if rng.random() < 0.5:
                shop.service_call(when, "orders", "storefront", "POST /orders")
            else:
                path = f"/orders/ord_{rng.randrange(16**6):06x}"
                shop.service_call(when, "orders", "storefront", "GET /orders/{order_id}", path=path)


def _stolen_token(
    shop: Shop, rng: random.Random, victim: Customer, jti: str, at: datetime, label: str
) -> None:
    thief = _address(rng, "198.51")
    for i in range(rng.randrange(5, 25)):
        at += timedelta(seconds=rng.uniform(3, 40))
        order = f"ord_{rng.randrange(16**6):06x}"
        if i == 0:
            shop.request(at, victim.sub, jti, thief, "GET", "/orders", "/orders", attack=label)
        elif rng.random() < 0.85:
            shop.request(
                at,
                victim.sub,
                jti,
                thief,
                "GET",
                "/orders/{order_id}",
                f"/orders/{order}",
                attack=label,
            )
        else:
            shop.request(
                at,
                victim.sub,
                jti,
                thief,
                "POST",
                "/orders/{order_id}/refund",
                f"/orders/{order}/refund",
                allowed=False,
                attack=label,
            )


def _scrape(shop: Shop, rng: random.Random, at: datetime, label: str) -> None:
    per_window = rng.randrange(30, 80)
    for window in range(rng.randrange(3, 7)):
        for _ in range(per_window):
            when = at + timedelta(minutes=10 * window, seconds=rng.uniform(0, 600))
            path = f"/orders/ord_{rng.randrange(16**6):06x}"
            shop.service_call(
                when, "orders", "storefront", "GET /orders/{order_id}", path=path, attack=label
            )


def _stuff(
    shop: Shop, rng: random.Random, people: list[Customer], at: datetime, label: str
) -> None:
    sources = [_address(rng, "203.0"), _address(rng, "192.0")]
    end = at + timedelta(hours=rng.uniform(3, 6))
    while at < end:
        at += timedelta(minutes=rng.uniform(2, 6))
        if rng.random() < 0.7:
            person = rng.choice(people)
            sub, login = person.sub, person.login
        else:
            sub, login = None, f"user{rng.randrange(10**6)}"
        shop.sign_in(at, sub, login, rng.choice(sources), ok=False, attack=f"{label}:{login}")


def evaluate(replay: Labelled, days: int, instances: dict[str, int]) -> None:
    detector = AnomalyDetector()
    alerts = []
    for event in replay.events:
        alerts += detector.observe(event)
    alerts += detector.flush()
    # which attack instances each (principal, window) holds
    held: dict[tuple[str, int], set[str]] = defaultdict(set)
    every: set[str] = set()
    for event in replay.events:
        label = replay.attack_of.get(event["metadata"]["uid"])
        if label is None:
            continue
        every.add(label)
        principal = principal_of(event)
        if principal is not None:
            held[(principal, event["time"] - event["time"] % WINDOW_MS)].add(label)
    found: set[str] = set()
    false_alarms = []
    for alert in alerts:
        labels = held.get((str(dict(alert.group)["principal"]), alert.window_start), set())
        labels = labels | {replay.attack_of[u] for u in alert.event_uids if u in replay.attack_of}
        if labels:
            found |= labels
        else:
            false_alarms.append(alert)
    print(f"{len(replay.events)} events over {days} simulated days; first day learned only")
    print(
        f"alerts: {len(alerts)}, right: {len(alerts) - len(false_alarms)}, false: {len(false_alarms)}"
    )
    precision = (len(alerts) - len(false_alarms)) / len(alerts) if alerts else 0.0
    evaluated = days - 1
    print(
        f"precision {precision:.2f}; false alarms per simulated day {len(false_alarms) / evaluated:.2f}"
    )
    kinds = {
        "stolen token": lambda x: x.startswith("stolen-token"),
        "scraping": lambda x: x.startswith("scraping"),
        "stuffing, known accounts": lambda x: x.startswith("stuffing") and ":customer" in x,
        "stuffing, made-up names": lambda x: x.startswith("stuffing") and ":user" in x,
    }
    counted = [x for x in every if not kinds["stuffing, made-up names"](x)]
    recall = len([x for x in counted if x in found]) / len(counted) if counted else 0.0
    print(f"recall over attack instances (accounts of this shop): {recall:.3f}")
    for name, kind in kinds.items():
        mine = sorted(x for x in every if kind(x))
        hit = [x for x in mine if x in found]
        missed = ", ".join(x for x in mine if x not in found)[:120]
        print(f"  {name:<26} {len(hit)}/{len(mine)}" + (f"  missed: {missed}" if missed else ""))
    for alert in false_alarms[:10]:
        print("  false alarm:", alert.title)
    right = [a for a in alerts if a not in false_alarms]
    for alert in right[:5]:
        print("  e.g.:", alert.title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--customers", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    replay, instances = simulate(args.days, args.customers, args.seed)
    evaluate(replay, args.days, instances)


if __name__ == "__main__":
    main()
