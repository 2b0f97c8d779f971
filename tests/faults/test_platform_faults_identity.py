"""The identity service (the workload CA and its Workload API) killed under a running
stack whose SVIDs live seconds (``svid_ttl``), so that what would happen in an hour
happens during the test: every process keeps the SVID it holds — past the point where it
would have renewed it — and keeps serving with it (the gateway calls the service over
mTLS); once the supervisor has started the identity service again, renewal resumes, and
each one presents a new SVID before its old one expires. Below a fifth of its SVID's
lifetime without a renewal, each process records ``svid-expiring`` (once), and never
while renewals come in time."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from platformfaultrig import Scale, Stack, served_certificate, stack_up, trustmesh_of

from trustmesh import crypto
from trustmesh.platform.endpoints import instance
from trustmesh.testing import until

TTL = 12  # seconds: an SVID is renewed at half its life
DECLARATION = f"""trust_domain: faults-identity.example
dev: true
identity: {{svid_ttl: {TTL}s}}
services:
  inventory: {{run: "trustmesh.demo.inventory:app"}}
gateway:
  routes:
    - {{path: /items, to: inventory, methods: [GET], auth: [anonymous]}}
"""


@pytest.fixture
def stack() -> Iterator[Stack]:
    with stack_up(DECLARATION) as running:
        yield running


def _inventory_url(stack: Stack) -> str:
    found = instance(json.loads((stack.state / "discovery.json").read_text()), "inventory")
    assert found is not None
    return str(found["url"])


def _through(stack: Stack) -> None:
    """A request through the gateway to the service (mTLS between them), answered."""
    with stack.browser() as browser:
        answer = browser.get(stack.gateway_url() + "/items/tea", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["item"] == "tea"


def _expiring(stack: Stack) -> dict[str, list[str]]:
    """The serials of the SVIDs each process reported expiring (its event log)."""
    return {
        component: [
            str(trustmesh_of(e)["attributes"]["serial"])
            for e in stack.event_log(component)
            if trustmesh_of(e).get("reason") == "svid-expiring"
        ]
        for component in ("gateway", "inventory")
    }


def _fifth_left(cert: x509.Certificate) -> dt.datetime:
    """When ``cert`` has a fifth of its lifetime left."""
    return cert.not_valid_after_utc - (cert.not_valid_after_utc - cert.not_valid_before_utc) / 5


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _expiry(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def test_a_killed_identity_service_leaves_svids_in_use_until_renewal_resumes(
    stack: Stack, fault_scale: Scale
) -> None:
    _through(stack)
    service = _inventory_url(stack)
    gateway = str(stack.endpoint("gateway")["internal_url"])
    assert _expiring(stack) == {"gateway": [], "inventory": []}  # renewed in time: none
    discovery = json.loads((stack.state / "discovery.json").read_text())["url"]
    with stack.supervisor_held():
        stack.kill("identity")
        held = served_certificate(service)
        held_by_gateway = served_certificate(gateway)
        life = held.not_valid_after_utc - held.not_valid_before_utc
        assert life == dt.timedelta(seconds=TTL) + crypto.BACKDATE  # the declared TTL
        # past the point where it would have been renewed, and on to near its end
        renew_at = held.not_valid_before_utc + life / 2
        until_near_end = min(  # of the gateway's SVID too: it is the client's
            c.not_valid_before_utc + life * 0.85 for c in (held, held_by_gateway)
        )
        requests = 0
        while _now() < until_near_end:  # the long form: without a pause
            _through(stack)
            requests += 1
            time.sleep(fault_scale.pick(0.2, 0.0))
        assert requests >= 10
        assert _now() > renew_at
        # not renewed (nothing could renew it), and in use
        assert served_certificate(service).serial_number == held.serial_number
        assert _now() < _expiry(held), "the test was too slow to see the SVID in use"
        # below a fifth of its lifetime, each process said so, once, about the SVID it holds
        told = {
            "gateway": [format(held_by_gateway.serial_number, "x")],
            "inventory": [format(held.serial_number, "x")],
        }
        later = max(_fifth_left(held), _fifth_left(held_by_gateway)) - _now()
        until(lambda: _expiring(stack) == told, f"told: {told}", within=later.total_seconds() + 3)

    # the identity service back: renewal resumes before the held SVID runs out
    def renewed() -> x509.Certificate | None:
        served = served_certificate(service)
        return served if served.serial_number != held.serial_number else None

    fresh = until(renewed, "a renewed SVID", within=TTL)
    assert fresh.not_valid_after_utc > _expiry(held)
    _through(stack)
    assert _expiring(stack) == told  # the renewed ones: nothing more to say
    # and it serves discovery where every process was told it is
    assert json.loads((stack.state / "discovery.json").read_text())["url"] == discovery
