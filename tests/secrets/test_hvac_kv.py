"""The real hvac client, unmodified, against the secrets service: cert login with an
SVID, KV v2 and token self-service, over mTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import hvac
import hvac.exceptions
import pytest
from secretsrig import PAYMENTS, SecretsRig

from trustmesh.reasons import Reason


async def test_cert_login_gives_a_token_with_the_identitys_policy(rig: SecretsRig) -> None:
    def run() -> dict[str, object]:
        client = rig.login(rig.payments)
        assert client.is_authenticated()
        looked = client.auth.token.lookup_self()["data"]
        assert looked["policies"] == ["payments"]
        assert looked["meta"] == {"spiffe_id": PAYMENTS}
        assert 0 < looked["ttl"] <= 3600
        return looked

    looked = await asyncio.to_thread(run)
    assert looked["display_name"] == "cert-payments"


# hvac's own patch() reads without naming raise_on_deleted_version (its deprecation)
@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version:DeprecationWarning")
async def test_kv_v2_lifecycle_with_hvac(rig: SecretsRig) -> None:
    def run() -> None:
        kv = rig.login(rig.payments).secrets.kv.v2
        first = kv.create_or_update_secret("payments/db", {"user": "pay", "password": "s3cret-1"})
        assert first["data"]["version"] == 1
        kv.create_or_update_secret("payments/db", {"user": "pay", "password": "s3cret-2"}, cas=1)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set"):
            kv.create_or_update_secret("payments/db", {"password": "late"}, cas=1)
        read = kv.read_secret_version("payments/db", raise_on_deleted_version=True)
        assert read["data"]["data"] == {"user": "pay", "password": "s3cret-2"}
        assert read["data"]["metadata"]["version"] == 2
        old = kv.read_secret_version("payments/db", version=1, raise_on_deleted_version=True)
        assert old["data"]["data"]["password"] == "s3cret-1"
        kv.create_or_update_secret("payments/api/key", {"k": "v"})
        assert kv.list_secrets("payments")["data"]["keys"] == ["api/", "db"]
        meta = kv.read_secret_metadata("payments/db")["data"]
        assert meta["current_version"] == 2
        assert set(meta["versions"]) == {"1", "2"}
        # soft delete, undelete, destroy
        kv.delete_latest_version_of_secret("payments/db")
        with pytest.raises(hvac.exceptions.InvalidPath):
            kv.read_secret_version("payments/db", raise_on_deleted_version=True)
        deleted = kv.read_secret_version("payments/db", raise_on_deleted_version=False)
        assert deleted["data"]["metadata"]["deletion_time"] != ""
        kv.undelete_secret_versions("payments/db", versions=[2])
        assert (
            kv.read_secret_version("payments/db", raise_on_deleted_version=True)["data"]["data"][
                "password"
            ]
            == "s3cret-2"
        )
        kv.destroy_secret_versions("payments/db", versions=[1])
        with pytest.raises(hvac.exceptions.InvalidPath):
            kv.read_secret_version("payments/db", version=1, raise_on_deleted_version=True)
        versions = kv.read_secret_metadata("payments/db")["data"]["versions"]
        assert versions["1"]["destroyed"] is True
        kv.patch("payments/db", {"password": "s3cret-3"})
        patched = kv.read_secret_version("payments/db", raise_on_deleted_version=True)["data"]
        assert patched["data"] == {"user": "pay", "password": "s3cret-3"}
        kv.delete_metadata_and_all_versions("payments/api/key")
        assert kv.list_secrets("payments")["data"]["keys"] == ["db"]

    await asyncio.to_thread(run)


async def test_max_versions_and_custom_metadata(rig: SecretsRig) -> None:
    def run() -> None:
        kv = rig.login(rig.payments).secrets.kv.v2
        kv.update_metadata(
            "payments/rotating", max_versions=2, custom_metadata={"owner": "payments", "ttl": "1h"}
        )
        for n in range(4):
            kv.create_or_update_secret("payments/rotating", {"n": n})
        meta = kv.read_secret_metadata("payments/rotating")["data"]
        assert sorted(meta["versions"]) == ["3", "4"]
        assert meta["oldest_version"] == 3
        assert meta["custom_metadata"] == {"owner": "payments", "ttl": "1h"}
        with pytest.raises(hvac.exceptions.InvalidPath):
            kv.read_secret_version("payments/rotating", version=1, raise_on_deleted_version=True)

    await asyncio.to_thread(run)


async def test_an_identity_without_the_policy_is_refused_and_audited(rig: SecretsRig) -> None:
    def run() -> None:
        with pytest.raises(hvac.exceptions.Forbidden):
            rig.login(rig.orders)  # orders has no secrets policy: it cannot even log in
        payments = rig.login(rig.payments)
        with pytest.raises(hvac.exceptions.Forbidden):
            payments.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)
        with pytest.raises(hvac.exceptions.Forbidden):  # deny wins over payments/*
            payments.secrets.kv.v2.read_secret_version(
                "payments/forbidden", raise_on_deleted_version=True
            )

    await asyncio.to_thread(run)
    records = [json.loads(line) for line in rig.audit_lines()]
    refused = [r for r in records if r["type"] == "response" and r["response"]["status"] == 403]
    paths = {r["request"]["path"] for r in refused}
    assert {"auth/cert/login", "secret/data/orders/db", "secret/data/payments/forbidden"} <= paths
    denied = [e for e in rig.sink.events if e.reason is Reason.POLICY_DENY]
    assert len(denied) >= 3


async def test_a_token_is_bound_to_the_identity_it_was_issued_to(rig: SecretsRig) -> None:
    def run() -> None:
        token = rig.login(rig.payments).token
        stolen = rig.operator.client(rig.url, token=token)  # another SVID, the same token
        with pytest.raises(hvac.exceptions.Forbidden):
            stolen.auth.token.lookup_self()

    await asyncio.to_thread(run)
    assert any(e.reason is Reason.TOKEN_NOT_BOUND for e in rig.sink.events)


async def test_renew_and_revoke_self(rig: SecretsRig) -> None:
    def run() -> None:
        client = rig.login(rig.payments)
        renewed = client.auth.token.renew_self(increment="2h")["auth"]
        assert 3600 < renewed["lease_duration"] <= 7200
        client.auth.token.revoke_self()
        with pytest.raises(hvac.exceptions.Forbidden):
            client.auth.token.lookup_self()
        assert not client.is_authenticated()

    await asyncio.to_thread(run)
