"""A workload whose SPIFFE ID is suspended reads no secret, whatever token it still holds:
an unmodified ``hvac`` client is refused ``403`` (Vault's ``{"errors": [...]}``) on a KV
read and on a cert-auth login, with a ``suspended-spiffe-id`` event, before the Vault API
sees the request; once the suspension is lifted the same token reads again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from secretsrig import PAYMENTS, SECRETS, SecretsRig, identity_for, secrets_config, secrets_rig
from suspensionrig import component_feed, lift, suspend

from trustmesh import events
from trustmesh.reasons import Reason
from trustmesh.sdk.suspensions import SuspensionFeed
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(secrets_config(), short_tmp / "identity", discovery=True)


@pytest.fixture
async def feed(identity: RunningIdentityServer) -> AsyncIterator[SuspensionFeed]:
    async with component_feed(identity, SECRETS) as made:
        yield made


@pytest.fixture
async def rig(
    identity: RunningIdentityServer, feed: SuspensionFeed, short_tmp: Path
) -> AsyncIterator[SecretsRig]:
    config = secrets_config()
    async with secrets_rig(identity, short_tmp / "state", config, suspended=feed) as running:
        yield running


def _read(client: hvac.Client) -> object:
    answer = client.secrets.kv.v2.read_secret_version(
        path="payments/db", mount_point="secret", raise_on_deleted_version=True
    )
    return answer["data"]["data"]


def _suspended(rig: SecretsRig) -> list[events.Event]:
    return [e for e in rig.sink.events if e.reason == Reason.SPIFFE_ID_SUSPENDED]


async def test_a_suspended_workload_reads_no_secret_until_lifted(
    rig: SecretsRig, feed: SuspensionFeed
) -> None:
    payments = await asyncio.to_thread(rig.login, rig.payments)
    await asyncio.to_thread(
        payments.secrets.kv.v2.create_or_update_secret,
        path="payments/db",
        secret={"password": "s3cret"},
        mount_point="secret",
    )
    assert await asyncio.to_thread(_read, payments) == {"password": "s3cret"}
    audited = len(rig.audit_lines())

    await suspend(rig.identity, rig.operator, feed, PAYMENTS)
    with pytest.raises(hvac.exceptions.Forbidden, match="suspended"):
        await asyncio.to_thread(_read, payments)
    with pytest.raises(hvac.exceptions.Forbidden, match="suspended"):
        await asyncio.to_thread(rig.login, rig.payments)
    refused = _suspended(rig)
    assert [e.peer_spiffe_id for e in refused] == [PAYMENTS, PAYMENTS]
    assert {e.decision for e in refused} == {events.Decision.DENY}
    assert len(rig.audit_lines()) == audited  # the Vault API never saw them
    # anyone else is served as before
    await asyncio.to_thread(rig.login, rig.operator)

    await lift(rig.identity, rig.operator, feed, PAYMENTS)
    assert await asyncio.to_thread(_read, payments) == {"password": "s3cret"}
    assert len(_suspended(rig)) == 2
