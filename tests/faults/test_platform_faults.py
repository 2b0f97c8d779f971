"""Platform components killed under a running stack (`trustmesh up`), each fault as
ARCHITECTURE.md's "When something fails" says, and nothing acknowledged lost.

- The audit collector killed (SIGKILL) while the gateway and a service record every
  request: the events are spooled on disk (within the declared bound) while it is down,
  and once the supervisor has restarted it the collector holds every event exactly once,
  each producer's in the order it recorded them.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from platformfaultrig import Event, Scale, Stack, component_of, path_of, stack_up, uid_of, until

SPOOL_BYTES = 1 << 20
AUDIT_STACK = f"""trust_domain: faults-audit.example
dev: true
services:
  inventory: {{run: "trustmesh.demo.inventory:app"}}
gateway:
  routes:
    - {{path: /items, to: inventory, methods: [GET], auth: [anonymous]}}
audit:
  spool: {{max_bytes: {SPOOL_BYTES}}}
"""
PRODUCERS = ("gateway", "inventory")


@pytest.fixture
def audit_stack() -> Iterator[Stack]:
    with stack_up(AUDIT_STACK) as stack:
        yield stack


def _requests(
    stack: Stack, phase: str, count: int, halfway: threading.Event | None = None
) -> list[str]:
    """``count`` requests through the gateway to the service, each its own path (an item
    the service does not have: it answers 404 itself); ``halfway`` set after half."""
    paths = [f"/items/{phase}-{n}" for n in range(count)]
    with stack.browser() as browser:
        for n, path in enumerate(paths):
            if halfway is not None and n == count // 2:
                halfway.set()
            answer = browser.get(stack.gateway_url() + path, timeout=10)
            assert answer.status_code == 404, (path, answer.status_code, answer.text)
            assert answer.json()["message"] == "the service has no such resource", answer.text
    return paths


def _recorded(stack: Stack, paths: set[str]) -> dict[str, list[Event]]:
    """Each producer's events about ``paths``, as it recorded them (its local log)."""
    return {c: [e for e in stack.event_log(c) if path_of(e) in paths] for c in PRODUCERS}


def test_a_killed_audit_collector_loses_no_event(audit_stack: Stack, fault_scale: Scale) -> None:
    stack, count = audit_stack, fault_scale.count(12, 300)
    started = time.monotonic()
    sent = _requests(stack, "before", count)
    with stack.supervisor_held(), ThreadPoolExecutor(1) as pool:
        # killed while the gateway and the service are recording: served all the same
        halfway = threading.Event()
        sending = pool.submit(_requests, stack, "during", count, halfway)
        halfway.wait(10)
        dead = stack.kill("audit")
        during = sending.result(30)
        sent += during

        def spooled() -> dict[str, list[Event]] | None:
            found = _recorded(stack, set(during))
            return found if all(len(found[c]) == count for c in PRODUCERS) else None

        # recorded while the collector is dead: in each producer's spool on disk, which
        # stays within its bound
        for component, recorded in until(10, spooled, "the outage's events spooled").items():
            spool = stack.spool_bytes(component)
            assert 0 < len(spool) <= SPOOL_BYTES
            missing = [uid_of(e) for e in recorded if uid_of(e).encode() not in spool]
            assert not missing, f"{component}: not in its spool: {missing}"
    stack.restarted("audit", dead, lambda: stack.endpoint("audit").get("pid") == stack.pid("audit"))
    sent += _requests(stack, "after", count)

    def all_recorded() -> dict[str, list[Event]] | None:
        found = _recorded(stack, set(sent))
        return found if all(len(found[c]) >= len(sent) for c in PRODUCERS) else None

    produced = until(10, all_recorded, "every request recorded by each producer")
    for component in PRODUCERS:
        assert [path_of(e) for e in produced[component]] == sent, component  # each recorded once
    uids = {uid_of(e) for c in PRODUCERS for e in produced[c]}
    assert len(uids) == 2 * len(sent)

    def all_stored() -> list[Event] | None:
        found = [e for e in stack.stored_events() if uid_of(e) in uids]
        return found if {uid_of(e) for e in found} == uids else None

    stored = until(30, all_stored, "every event in the collector", every=0.5)
    copies = collections.Counter(uid_of(e) for e in stored)
    assert [u for u, n in copies.items() if n > 1] == []  # exactly once
    for component in PRODUCERS:  # replayed in the order each producer recorded them
        mine = sorted((e for e in stored if component_of(e) == component), key=lambda e: e["seq"])
        assert [path_of(e) for e in mine] == sent, component
    print(json.dumps({"events": len(uids), "seconds": round(time.monotonic() - started, 1)}))
