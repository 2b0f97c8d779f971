"""The SPIFFE Workload API, driven by py-spiffe (the client a team keeps when it moves to
SPIRE), over the real unix socket, against the real identity service."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from spiffe import JwtSource, SpiffeId, WorkloadApiClient, X509Source
from spiffe.workloadapi.errors import FetchJwtSvidError, FetchX509SvidError, ValidateJwtSvidError

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.events import read_events
from trustmesh.identity.store import SqliteIdentityStore
from trustmesh.reasons import Activity, Reason
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "shop.example"
CLIENT = Path(__file__).with_name("workload_client.py")


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def my_selectors() -> list[str]:
    """Selectors that match this test process, and no copy of its interpreter elsewhere."""
    exe = os.readlink("/proc/self/exe")
    return [f"unix:uid:{os.getuid()}", f"unix:path:{exe}", f"unix:sha256:{_sha256(exe)}"]


@pytest.fixture
def server(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    config = parse_config(
        f"trust_domain: {TD}\ndev: true\nidentity: {{svid_ttl: 10s, max_svid_ttl: 1h}}\n",
        source="test.yaml",
    )
    with identity_server_in_thread(config, short_tmp / "state") as running:
        running.call(running.server.service.register, f"spiffe://{TD}/orders", my_selectors(), None)
        yield running


def _events(run: RunningIdentityServer) -> list[dict[str, object]]:
    return list(read_events(run.server.paths.events))


def _reasons(run: RunningIdentityServer) -> list[str]:
    return [str(e["status_detail"]) for e in _events(run)]


def test_fetch_x509_svid_verifies_against_the_bundle(server: RunningIdentityServer) -> None:
    with WorkloadApiClient(server.address) as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
    assert str(svid.spiffe_id) == f"spiffe://{TD}/orders"
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert bundle is not None
    roots = list(bundle.x509_authorities)
    chain = list(svid.cert_chain)
    assert crypto.uri_sans(chain[0]) == [f"spiffe://{TD}/orders"]
    now = (
        chain[0].not_valid_before_utc
        + (chain[0].not_valid_after_utc - chain[0].not_valid_before_utc) / 2
    )
    assert crypto.verify_svid_chain(chain, roots, now=now) == f"spiffe://{TD}/orders"
    # the private key delivered is the leaf's
    assert svid.private_key.public_key().public_numbers() == chain[0].public_key().public_numbers()
    issued = [e for e in _events(server) if e["status_detail"] == "svid-issued"]
    assert issued
    # each issue is its own event: this certificate's serial and expiry, this process
    mine = [
        e
        for e in issued
        if e["unmapped"]["trustmesh"]["attributes"]["serial"] == format(chain[0].serial_number, "x")
    ]
    assert len(mine) == 1
    trustmesh = mine[0]["unmapped"]["trustmesh"]
    assert trustmesh["spiffe_id"] == f"spiffe://{TD}/orders"
    assert trustmesh["attributes"]["pid"] == os.getpid()
    assert trustmesh["attributes"]["not_after"] == chain[0].not_valid_after_utc.isoformat()
    assert len({e["metadata"]["uid"] for e in issued}) == len(issued)


def test_svid_ttl_is_the_configured_one(server: RunningIdentityServer) -> None:
    with WorkloadApiClient(server.address) as client:
        leaf = client.fetch_x509_svid().leaf
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime.total_seconds() == pytest.approx(10 + crypto.BACKDATE.total_seconds(), abs=1)


def test_jwt_svid_for_an_audience_validates(server: RunningIdentityServer) -> None:
    with WorkloadApiClient(server.address) as client:
        jwt_svid = client.fetch_jwt_svid(audience={"payments"})
        assert str(jwt_svid.spiffe_id) == f"spiffe://{TD}/orders"
        assert jwt_svid.audience == {"payments"}
        validated = client.validate_jwt_svid(jwt_svid.token, "payments")
        assert str(validated.spiffe_id) == f"spiffe://{TD}/orders"
        with pytest.raises(ValidateJwtSvidError):
            client.validate_jwt_svid(jwt_svid.token, "inventory")
        # the JWT bundle carries the signing key, so a relying party can verify offline
        bundles = client.fetch_jwt_bundles()
        bundle = bundles.get_bundle_for_trust_domain(jwt_svid.spiffe_id.trust_domain)
        assert bundle is not None
        assert bundle.jwt_authorities
    assert "token-wrong-audience" in _reasons(server)


def test_a_jwt_svid_for_an_identity_the_workload_does_not_hold_is_refused(
    server: RunningIdentityServer,
) -> None:
    with WorkloadApiClient(server.address) as client:
        with pytest.raises(FetchJwtSvidError, match="no identity issued"):
            client.fetch_jwt_svid(
                audience={"inventory"}, subject=SpiffeId(f"spiffe://{TD}/payments")
            )
        held = client.fetch_jwt_svid(
            audience={"inventory"}, subject=SpiffeId(f"spiffe://{TD}/orders")
        )
    assert str(held.spiffe_id) == f"spiffe://{TD}/orders"
    refused = [e for e in _events(server) if e["status_detail"] == Reason.IDENTITY_NOT_HELD]
    assert len(refused) == 1
    assert refused[0]["unmapped"]["trustmesh"]["decision"] == "deny"


def test_jwt_svid_refuses_a_forged_token(server: RunningIdentityServer) -> None:
    with WorkloadApiClient(server.address) as client:
        good = client.fetch_jwt_svid(audience={"payments"}).token
        header, payload, _ = good.split(".")
        with pytest.raises(ValidateJwtSvidError):
            client.validate_jwt_svid(f"{header}.{payload}.AAAA", "payments")
        with pytest.raises(ValidateJwtSvidError):  # alg none
            client.validate_jwt_svid(f"eyJhbGciOiJub25lIn0.{payload}.", "payments")


def test_x509_source_sees_a_pushed_rotation(server: RunningIdentityServer) -> None:
    with WorkloadApiClient(server.address) as client:
        source = X509Source(workload_api_client=client, timeout_in_seconds=10)
        try:
            first = source.get_x509_context().default_svid.leaf
            lifetime = first.not_valid_after_utc - first.not_valid_before_utc
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                current = source.get_x509_context().default_svid.leaf
                if current.serial_number != first.serial_number:
                    break
                time.sleep(0.2)
            else:
                pytest.fail("no rotated SVID was pushed within 15 s")
            # pushed before half-life of the first (a 10 s TTL: renewed before 5 s). X.509
            # times have whole seconds (RFC 5280 §4.1.2.5), hence one second of slack.
            ttl = lifetime - crypto.BACKDATE
            renewed_after = current.not_valid_before_utc - first.not_valid_before_utc
            assert renewed_after < ttl / 2 + dt.timedelta(seconds=1)
        finally:
            source.close()


def test_jwt_source_works(server: RunningIdentityServer) -> None:
    with WorkloadApiClient(server.address) as client:
        source = JwtSource(workload_api_client=client, timeout_in_seconds=10)
        try:
            svid = source.fetch_svid(audience={"inventory"})
            assert str(svid.spiffe_id) == f"spiffe://{TD}/orders"
        finally:
            source.close()


def test_missing_security_header_is_invalid_argument(server: RunningIdentityServer) -> None:
    from spiffe._proto import workload_pb2

    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            request_serializer=workload_pb2.X509SVIDRequest.SerializeToString,
            response_deserializer=workload_pb2.X509SVIDResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call(workload_pb2.X509SVIDRequest(), timeout=5)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing-security-header" in _reasons(server)


def _run_client(
    copy: object, address: str, *, token: str | None = None, action: str = "x509"
) -> dict[str, object]:
    env = dict(copy.env)  # type: ignore[attr-defined]
    env.pop("TRUSTMESH_JOIN_TOKEN", None)
    if token:
        env["TRUSTMESH_JOIN_TOKEN"] = token
    proc = subprocess.run(
        [str(copy.path), str(CLIENT), address, action],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unregistered_process_is_refused(
    server: RunningIdentityServer, short_tmp: Path, python_copy: type
) -> None:
    other = python_copy.make(short_tmp / "bin", "python-unregistered")
    result = _run_client(other, server.address)
    assert result["ok"] is False
    assert "PERMISSION_DENIED" in str(result["error"])
    refusals = [
        e
        for e in _events(server)
        if e["status_detail"] == "no-matching-entry"
        and e["unmapped"]["trustmesh"]["attributes"]["pid"] == result["pid"]
    ]
    assert refusals, "the refusal must be an event naming the process"


def test_executable_hash_must_match_the_entry(
    server: RunningIdentityServer, short_tmp: Path, python_copy: type
) -> None:
    genuine_hash = _sha256(os.readlink("/proc/self/exe"))
    good = python_copy.make(short_tmp / "good", "python-worker")
    bad = python_copy.make(short_tmp / "bad", "python-worker", tamper=True)
    for copy, name in ((good, "worker-good"), (bad, "worker-bad")):
        server.call(
            server.server.service.register,
            f"spiffe://{TD}/{name}",
            [f"unix:uid:{os.getuid()}", f"unix:path:{copy.path}", f"unix:sha256:{genuine_hash}"],
            None,
        )
    # control: the same binary at the registered path is accepted
    accepted = _run_client(good, server.address)
    assert accepted == {**accepted, "ok": True, "spiffe_id": f"spiffe://{TD}/worker-good"}
    # the path matches, the bytes do not: refused
    refused = _run_client(bad, server.address)
    assert refused["ok"] is False
    assert "PERMISSION_DENIED" in str(refused["error"])


def test_join_token_is_one_time(
    server: RunningIdentityServer, short_tmp: Path, python_copy: type
) -> None:
    worker = python_copy.make(short_tmp / "bin", "python-joined")
    token = server.call(server.server.service.create_join_token, f"spiffe://{TD}/web")
    first = _run_client(worker, server.address, token=token)
    assert first["ok"] is True, first
    assert first["joined"] == f"spiffe://{TD}/web"
    assert first["spiffe_id"] == f"spiffe://{TD}/web"
    second = _run_client(worker, server.address, token=token)
    assert second["ok"] is False
    assert "refused" in str(second["error"])
    assert "join-token-used" in _reasons(server)
    created = [e for e in _events(server) if e["status_detail"] == Activity.JOIN_TOKEN_CREATED]
    assert [e["unmapped"]["trustmesh"]["spiffe_id"] for e in created] == [f"spiffe://{TD}/web"]
    # the redemption is the attestation that bound the process: one allow, naming it
    attested = [e for e in _events(server) if e["status_detail"] == Reason.ATTESTED]
    assert [
        (t["decision"], t["spiffe_id"], t["attributes"]["pid"])
        for t in (e["unmapped"]["trustmesh"] for e in attested)
    ] == [("allow", f"spiffe://{TD}/web", first["pid"])]
    # a bound process keeps its identity only for its own lifetime: a new process with the
    # same pid would have another start time; the binding is (pid, start time)
    bindings = server.call(server.server.store.list_bindings)
    assert [(b.pid, b.spiffe_id) for b in bindings] == [(first["pid"], f"spiffe://{TD}/web")]


def test_expired_and_unknown_join_tokens_are_refused(
    server: RunningIdentityServer, short_tmp: Path, python_copy: type
) -> None:
    import datetime as dt

    worker = python_copy.make(short_tmp / "bin", "python-late")
    token = server.call(
        server.server.service.create_join_token, f"spiffe://{TD}/web", dt.timedelta(seconds=1)
    )
    time.sleep(1.2)  # the server runs on the real clock in this fixture
    late = _run_client(worker, server.address, token=token)
    assert late["ok"] is False
    forged = _run_client(worker, server.address, token="not-a-token")
    assert forged["ok"] is False
    reasons = _reasons(server)
    assert "join-token-expired" in reasons
    assert "join-token-invalid" in reasons


def test_removed_entry_revokes_the_identity(server: RunningIdentityServer) -> None:
    # the CLI's way: another connection to the store, noticed by the service's upkeep
    admin_store = SqliteIdentityStore(server.server.paths.db)
    with WorkloadApiClient(server.address) as client:
        source = X509Source(workload_api_client=client, timeout_in_seconds=10)
        try:
            client.fetch_x509_svid()
            for entry in admin_store.list_entries():
                admin_store.remove_entry(entry.id)
            server.call(server.server.tick)
            with pytest.raises(FetchX509SvidError):
                client.fetch_x509_svid()
        finally:
            source.close()
            admin_store.close()
