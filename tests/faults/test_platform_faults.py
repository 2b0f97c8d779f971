"""Platform components killed under a running stack (`trustmesh up`), each fault as
ARCHITECTURE.md's "When something fails" says, and nothing acknowledged lost.

- The audit collector killed (SIGKILL) while the gateway and a service record every
  request: the events are spooled on disk (within the declared bound) while it is down,
  and once the supervisor has restarted it the collector holds every event exactly once,
  each producer's in the order it recorded them.
- The identity provider killed: the gateway verifies a token it has never seen with the
  keys it holds (and signs the internal token of the forwarded request); a route that
  must ask the provider (introspection) answers a structured 503 at once, and says the
  connection closes; a token under an unknown ``kid`` is refused, the JWKS looked for
  once per rate-limit interval however many such tokens come; every decision recorded
  with its reason.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from platformfaultrig import (
    Event,
    Scale,
    Stack,
    component_of,
    path_of,
    stack_up,
    trustmesh_of,
    uid_of,
)

from trustmesh import crypto
from trustmesh.testing import until
from trustmesh.testing.rawtls import RawTLS, close

SPOOL_BYTES = 1 << 20
TD = "faults.example"
GATEWAY_ID = f"spiffe://{TD}/trustmesh/gateway"
#: One stack for the tests of this file (each kills another component, and none needs
#: what another one killed: the collector comes back on its own; the provider comes last)
DECLARATION = f"""trust_domain: {TD}
dev: true
services:
  inventory: {{run: "trustmesh.demo.inventory:app"}}
gateway:
  routes:
    - {{path: /stock, to: inventory, methods: [GET], auth: [anonymous]}}
    - {{path: /items, to: inventory, methods: [GET], auth: [jwt]}}
    - {{path: /reservations, to: inventory, methods: [POST], auth: [introspection]}}
audit:
  spool: {{max_bytes: {SPOOL_BYTES}}}
"""
PRODUCERS = ("gateway", "inventory")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with stack_up(DECLARATION) as running:
        yield running


def _requests(
    stack: Stack, phase: str, count: int, halfway: threading.Event | None = None
) -> list[str]:
    """``count`` requests through the gateway to the service, each its own path (an item
    the service does not have: it answers 404 itself); ``halfway`` set after half."""
    paths = [f"/stock/{phase}-{n}" for n in range(count)]
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


def test_a_killed_audit_collector_loses_no_event(stack: Stack, fault_scale: Scale) -> None:
    count = fault_scale.count(12, 300)
    started = time.monotonic()
    sent = _requests(stack, "before", count)
    with stack.supervisor_held(), ThreadPoolExecutor(1) as pool:
        # killed while the gateway and the service are recording: served all the same
        halfway = threading.Event()
        sending = pool.submit(_requests, stack, "during", count, halfway)
        halfway.wait(10)
        dead = stack.kill("audit")
        killed = time.time() * 1000  # ms, as events are stamped
        sent += sending.result(30)
        down = _requests(stack, "down", count)  # all of them while it is dead
        sent += down

        def spooled() -> dict[str, list[Event]] | None:
            found = _recorded(stack, set(down))
            return found if all(len(found[c]) == count for c in PRODUCERS) else None

        # recorded while the collector is dead: in each producer's spool on disk, which
        # stays within its bound
        for component, recorded in until(spooled, "the outage's events spooled", within=10).items():
            spool = stack.spool_bytes(component)
            assert 0 < len(spool) <= SPOOL_BYTES
            assert all(e["time"] >= killed for e in recorded)
            missing = [uid_of(e) for e in recorded if uid_of(e).encode() not in spool]
            assert not missing, f"{component}: not in its spool: {missing}"
    stack.restarted("audit", dead, lambda: stack.endpoint("audit").get("pid") == stack.pid("audit"))
    sent += _requests(stack, "after", count)

    def all_recorded() -> dict[str, list[Event]] | None:
        found = _recorded(stack, set(sent))
        return found if all(len(found[c]) >= len(sent) for c in PRODUCERS) else None

    produced = until(all_recorded, "every request recorded by each producer", within=10)
    for component in PRODUCERS:
        assert [path_of(e) for e in produced[component]] == sent, component  # each recorded once
    uids = {uid_of(e) for c in PRODUCERS for e in produced[c]}
    assert len(uids) == 2 * len(sent)

    def all_stored() -> list[Event] | None:
        found = [e for e in stack.stored_events() if uid_of(e) in uids]
        return found if {uid_of(e) for e in found} == uids else None

    stored = until(all_stored, "every event in the collector", within=30, every=0.5)
    copies = collections.Counter(uid_of(e) for e in stored)
    assert [u for u, n in copies.items() if n > 1] == []  # exactly once
    for component in PRODUCERS:  # replayed in the order each producer recorded them
        mine = sorted((e for e in stored if component_of(e) == component), key=lambda e: e["seq"])
        assert [path_of(e) for e in mine] == sent, component
    print(json.dumps({"events": len(uids), "seconds": round(time.monotonic() - started, 1)}))


def test_a_component_stopped_cleanly_is_started_again_where_its_peers_know_it(
    stack: Stack,
) -> None:
    """SIGTERM, a clean exit (its endpoint file moved aside: it must not look alive),
    then the supervisor's restart: the collector listens again at the URLs the gateway
    and the service were told once, and their events reach it there."""
    before, pid = stack.endpoint("audit"), stack.pid("audit")
    os.kill(pid, signal.SIGTERM)

    def serving() -> bool:
        try:
            return bool(stack.endpoint("audit").get("pid") == stack.pid("audit"))
        except (OSError, ValueError):  # between two lives: no endpoint file
            return False

    stack.restarted("audit", pid, serving)
    after = stack.endpoint("audit")
    assert (after["url"], after.get("console_url")) == (before["url"], before.get("console_url"))
    sent = set(_requests(stack, "after-stop", 3))
    until(
        lambda: sent <= {path_of(e) for e in stack.stored_events()},
        "the producers' new events stored by the restarted collector",
        within=30,
        every=0.5,
    )


JWKS_FAILED = "JWKS fetch failed"
ITEMS_AND_RESERVATIONS = ("/items/tea", "/reservations")


def _unknown_kid(token: str) -> str:
    """``token``'s claims and header type, signed by a key the provider never had, under
    a ``kid`` its JWKS does not hold."""
    key = crypto.generate_key()
    header = crypto.unverified_header(token)
    part = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    kid = "faults-" + secrets.token_hex(8)
    return crypto.sign_jwt(claims, key, kid=kid, typ=header["typ"])


async def _head_before_body(stack: Stack, token: str, body: object) -> bytes:
    """The head of the gateway's answer to a reservation whose body is not sent yet."""
    data = json.dumps(body).encode()
    port = int(stack.gateway_url().rsplit(":", 1)[1])
    reader, writer = await RawTLS(port, stack.state / "edge" / "ca.pem").open()
    try:
        writer.write(
            b"POST /reservations HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
            b"authorization: Bearer %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (port, token.encode(), len(data))
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        await close(writer)


def test_a_killed_identity_provider_leaves_jwts_working_and_introspection_503(
    stack: Stack, fault_scale: Scale
) -> None:
    before, during = stack.access_tokens(GATEWAY_ID, 2)
    gateway = stack.gateway_url()
    reservation = {"item": "tea", "quantity": 1}
    with stack.browser() as client:

        def items(token: str) -> requests.Response:
            bearer = {"Authorization": f"Bearer {token}"}
            return client.get(gateway + "/items/tea", headers=bearer, timeout=10)

        def reserve(token: str) -> requests.Response:
            bearer = {"Authorization": f"Bearer {token}"}
            return client.post(
                gateway + "/reservations", json=reservation, headers=bearer, timeout=10
            )

        # the provider up: both kinds of route let the token through
        assert items(before).status_code == 200
        assert reserve(before).status_code == 201, reserve(before).text
        rounds = fault_scale.count(4, 60)
        provider = stack.endpoint("auth")["url"]
        with stack.supervisor_held():
            stack.kill("auth")
            failed = stack.log_text("gateway").count(JWKS_FAILED)
            started = time.monotonic()
            # on one keep-alive connection, as a client goes on: a token the gateway has
            # never seen is verified with the keys it holds (and the request forwarded
            # with an internal token it signs); a route that must ask the provider answers
            # a structured 503 at once; a token under a key the gateway does not know is
            # refused, that key looked for once (and not found: the provider is down)
            for _ in range(rounds):
                answer = items(during)
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"item": "tea", "in_stock": 39}
                asked = time.monotonic()
                answer = reserve(during)
                assert time.monotonic() - asked < 5
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"] == "unavailable", answer.text
                asked = time.monotonic()
                answer = items(_unknown_kid(during))
                assert time.monotonic() - asked < 5
                assert answer.status_code == 401, answer.text
                assert answer.json()["error"] == "invalid_token", answer.text
            elapsed = time.monotonic() - started
            refetched = stack.log_text("gateway").count(JWKS_FAILED) - failed
            assert 1 <= refetched <= 1 + elapsed // 10, (refetched, elapsed)
            # the 503 goes out before the body is read: it says the connection closes,
            # so that no client sends its next request on a connection being closed
            head = asyncio.run(_head_before_body(stack, during, reservation))
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert b"\r\nconnection: close\r\n" in head.lower(), head

            # each refusal recorded with its precise reason
            def recorded() -> dict[str, int]:
                reasons = collections.Counter(
                    str(trustmesh_of(e).get("reason"))
                    for e in stack.event_log("gateway")
                    if trustmesh_of(e).get("attributes", {}).get("path") in ITEMS_AND_RESERVATIONS
                )
                return dict(reasons)

            expected = {
                "request-forwarded": 2 + rounds,
                "token-verification-unavailable": rounds + 1,
                "token-unknown-key": rounds,
            }
            until(lambda: recorded() == expected, f"the decisions recorded: {expected}", within=10)
        # the supervisor starts the provider again where it was: the gateway, told its
        # URL once, finds it there, and the routes that ask it work again
        until(
            lambda: reserve(during).status_code == 201,
            "introspection after the provider came back",
            within=30,
        )
        assert stack.endpoint("auth")["url"] == provider
