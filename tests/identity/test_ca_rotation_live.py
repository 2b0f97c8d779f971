"""CA rotation seen by a real SPIFFE client: the next CA is in the bundle before it signs
anything, and the old one stays until nothing it signed is still valid."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from spiffe import WorkloadApiClient, X509Source

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.errors import CryptoError
from trustmesh.events import read_events
from trustmesh.reasons import Activity
from trustmesh.testing import FakeClock, RunningIdentityServer, identity_server_in_thread

TD = "shop.example"
PUBLISH_DELAY = dt.timedelta(seconds=60)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(short_tmp: Path, clock: FakeClock) -> Iterator[RunningIdentityServer]:
    config = parse_config(
        f"trust_domain: {TD}\ndev: true\nidentity: {{svid_ttl: 10m, max_svid_ttl: 1h}}\n",
        source="test.yaml",
    )
    with identity_server_in_thread(
        config, short_tmp / "state", clock=clock, publish_delay=PUBLISH_DELAY, tick_interval=3600
    ) as running:
        exe = os.readlink("/proc/self/exe")
        running.call(
            running.server.service.register,
            f"spiffe://{TD}/orders",
            [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
            None,
        )
        yield running


def _wait(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _verifies(chain: list[x509.Certificate], root: x509.Certificate, now: dt.datetime) -> bool:
    try:
        crypto.verify_svid_chain(chain, [root], now=now)
    except CryptoError:
        return False
    return True


def test_next_ca_is_published_before_it_signs(
    server: RunningIdentityServer, clock: FakeClock
) -> None:
    with WorkloadApiClient(server.address) as client:
        source = X509Source(workload_api_client=client, timeout_in_seconds=10)
        try:

            def roots() -> set[bytes]:
                bundle = source.get_bundle_for_trust_domain(
                    source.get_x509_context().default_svid.spiffe_id.trust_domain
                )
                assert bundle is not None
                return {crypto.cert_der(c) for c in bundle.x509_authorities}

            def chain() -> list[x509.Certificate]:
                return list(source.get_x509_context().default_svid.cert_chain)

            (old_root,) = server.server.ca.x509_roots
            assert roots() == {crypto.cert_der(old_root)}

            # prepare: the next root is published, the old CA still signs
            server.call(server.server.rotate_ca)
            _wait(lambda: len(roots()) == 2, "the next root in the bundle")
            new_root = next(r for r in server.server.ca.x509_roots if r != old_root)
            assert crypto.cert_der(new_root) in roots()
            now = clock()
            assert _verifies(chain(), old_root, now)
            assert not _verifies(chain(), new_root, now)

            # activate after the publish delay: new SVIDs chain to the new root, which
            # every holder of the bundle already trusts
            clock.advance(PUBLISH_DELAY + dt.timedelta(seconds=1))
            server.call(server.server.tick)
            _wait(lambda: _verifies(chain(), new_root, clock()), "an SVID from the new CA")
            assert crypto.cert_der(new_root) in roots()
            assert crypto.cert_der(old_root) in roots(), "old root kept while its SVIDs live"

            # the old root leaves once every SVID it signed has expired
            clock.advance(dt.timedelta(hours=1, seconds=1))
            server.call(server.server.tick)
            _wait(lambda: roots() == {crypto.cert_der(new_root)}, "the old root retired")
        finally:
            source.close()
    reasons = [e["status_detail"] for e in read_events(server.server.paths.events)]
    assert (
        reasons.index("ca-prepared") < reasons.index("ca-activated") < reasons.index("ca-retired")
    )


def test_the_signing_ca_renews_at_half_its_life_under_the_same_root(
    server: RunningIdentityServer, clock: FakeClock
) -> None:
    before = server.server.ca.active
    signing = before.signing
    half = (
        signing.not_valid_before_utc
        + (signing.not_valid_after_utc - signing.not_valid_before_utc) / 2
    )
    clock.advance(half - clock() + dt.timedelta(seconds=1))
    server.call(server.server.tick)
    after = server.server.ca.active
    assert (after.id, after.root) == (before.id, before.root)  # no bundle change
    assert after.signing.serial_number != signing.serial_number
    renewed = [
        e
        for e in read_events(server.server.paths.events)
        if e["status_detail"] == Activity.CA_RENEWED
    ]
    assert [
        (t["decision"], t["attributes"]["generation"])
        for t in (e["unmapped"]["trustmesh"] for e in renewed)
    ] == [("allow", before.id)]
    # SVIDs issued from now on chain through the new signing CA to the same root
    with WorkloadApiClient(server.address) as client:
        chain = list(client.fetch_x509_svid().cert_chain)
    assert crypto.cert_der(chain[1]) == crypto.cert_der(after.signing)
    assert _verifies(chain, before.root, clock())


def test_jwt_bundle_publishes_the_next_key_first(
    server: RunningIdentityServer, clock: FakeClock
) -> None:
    with WorkloadApiClient(server.address) as client:
        first = client.fetch_jwt_bundles()
        td = client.fetch_x509_svid().spiffe_id.trust_domain
        bundle = first.get_bundle_for_trust_domain(td)
        assert bundle is not None
        (old_kid,) = bundle.jwt_authorities
        server.call(server.server.rotate_ca)
        bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(td)
        assert bundle is not None
        assert len(bundle.jwt_authorities) == 2
        # still signed with the old key until activation
        token = client.fetch_jwt_svid(audience={"payments"}).token
        import jwt as pyjwt

        assert pyjwt.get_unverified_header(token)["kid"] == old_kid
        clock.advance(PUBLISH_DELAY + dt.timedelta(seconds=1))
        server.call(server.server.tick)
        token = client.fetch_jwt_svid(audience={"payments"}).token
        new_kid = pyjwt.get_unverified_header(token)["kid"]
        assert new_kid != old_kid
        assert new_kid in bundle.jwt_authorities  # published before it signed


def test_keys_on_disk_are_sealed(server: RunningIdentityServer) -> None:
    """No private key of the CA is readable anywhere in the state directory."""
    server.call(server.server.rotate_ca)  # two generations on disk
    with WorkloadApiClient(server.address) as client:
        client.fetch_x509_svid()
    secrets_in_memory = []
    for gen in server.server.ca.generations:
        for key in (gen.root_key, gen.signing_key, gen.jwt_key):
            secrets_in_memory.append(key.private_numbers().private_value.to_bytes(32, "big"))
            secrets_in_memory.append(crypto.private_key_to_der(key))
    state = server.server.paths.root
    scanned = 0
    for path in state.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        scanned += 1
        assert b"PRIVATE KEY" not in data, path
        for secret in secrets_in_memory:
            assert secret not in data, f"{path} holds a CA private key in the clear"
    assert scanned >= 3
