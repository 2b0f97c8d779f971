"""Initialisation, sealing and unsealing with Shamir shares, as Vault's ``sys/`` API does
it, through hvac: the operator's SVID initialises and unseals; sealed, everything but
``sys/*`` answers 503; a wrong share is refused at once and counted; fewer than T shares
leave the service sealed; the dev key file is 0600."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import hvac.exceptions
import pytest
from secretsrig import CONFIG, SecretsRig, secrets_config, secrets_rig

from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer

SHARES = CONFIG.replace("secrets:\n", "secrets:\n  dev_auto_unseal: false\n")


async def test_init_unseal_and_seal_with_shares(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    config = secrets_config(SHARES)
    async with secrets_rig(identity, short_tmp / "state", config) as rig:

        def run() -> None:
            op = rig.operator.client(rig.url)
            assert op.sys.is_initialized() is False
            health = op.sys.read_health_status(method="GET")
            assert health.status_code == 501
            payments = rig.payments.client(rig.url)
            with pytest.raises(hvac.exceptions.Forbidden):  # only the operator initialises
                payments.sys.initialize(secret_shares=5, secret_threshold=3)
            result = op.sys.initialize(secret_shares=5, secret_threshold=3)
            keys = result["keys"]
            assert len(keys) == 5
            assert len(result["keys_base64"]) == 5
            assert result["root_token"].startswith("hvs.")
            assert op.sys.is_sealed()
            with pytest.raises(hvac.exceptions.InvalidRequest):
                op.sys.initialize(secret_shares=1, secret_threshold=1)  # once only
            # sealed: cert login and KV answer 503; sys/ still answers
            with pytest.raises(hvac.exceptions.VaultDown):
                rig.login(rig.payments)
            assert op.sys.read_seal_status()["t"] == 3
            # a share that is not one of these is refused at once, and counted
            forged = base64.b64encode(os.urandom(33)).decode()
            with pytest.raises(hvac.exceptions.InvalidRequest, match="not an unseal key share"):
                op.sys.submit_unseal_key(forged)
            status = op.sys.submit_unseal_key(keys[0])
            assert (status["sealed"], status["progress"]) == (True, 1)
            with pytest.raises(hvac.exceptions.InvalidRequest, match="already given"):
                op.sys.submit_unseal_key(keys[0])
            status = op.sys.submit_unseal_key(result["keys_base64"][3])  # base64 works too
            assert (status["sealed"], status["progress"]) == (True, 2)  # T-1: still sealed
            status = op.sys.submit_unseal_key(keys[4])
            assert status["sealed"] is False
            assert status["progress"] == 0
            assert status["wrong_shares"] == 1
            assert op.sys.read_health_status(method="GET")["sealed"] is False
            kv = rig.login(rig.payments).secrets.kv.v2
            kv.create_or_update_secret("payments/db", {"password": "before-seal"})
            with pytest.raises(hvac.exceptions.Forbidden):  # payments may not seal
                payments.sys.seal()
            op.sys.seal()
            with pytest.raises(hvac.exceptions.VaultDown):
                kv.read_secret_version("payments/db", raise_on_deleted_version=True)
            op.sys.submit_unseal_keys([keys[1], keys[2], keys[3]])
            read = kv.read_secret_version("payments/db", raise_on_deleted_version=True)
            assert read["data"]["data"] == {"password": "before-seal"}

        await asyncio.to_thread(run)
        reasons = {e.reason for e in rig.sink.events}
        assert Reason.UNSEAL_SHARE_INVALID in reasons
        assert Reason.SECRETS_SEALED in reasons


async def test_a_restart_comes_back_sealed_and_the_shares_open_it(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    config = secrets_config(SHARES)
    state = short_tmp / "state"
    async with secrets_rig(identity, state, config) as rig:
        keys = await asyncio.to_thread(
            lambda: rig.operator.client(rig.url).sys.initialize(secret_shares=3, secret_threshold=2)
        )
    async with secrets_rig(identity, state, config) as rig:

        def run() -> None:
            op = rig.operator.client(rig.url)
            assert op.sys.is_initialized()
            assert op.sys.is_sealed()
            op.sys.submit_unseal_key(keys["keys"][2])
            assert op.sys.is_sealed()
            op.sys.submit_unseal_key(keys["keys"][0])
            assert not op.sys.is_sealed()

        await asyncio.to_thread(run)


async def test_dev_mode_unseals_from_a_private_key_file(rig: SecretsRig) -> None:
    key_file = rig.state / "secrets" / "dev-unseal.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert not rig.running.service.barrier.sealed
    status = await asyncio.to_thread(lambda: rig.operator.client(rig.url).sys.read_seal_status())
    assert (status["t"], status["n"], status["sealed"]) == (1, 1, False)


async def test_rotating_the_root_key_keeps_every_value_and_the_shares(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """`sys/rotate`: the keyring goes under a new root key and new values under a new
    data-key term, while serving; after a restart the same shares unseal and every value,
    old and new, reads back."""
    config = secrets_config(SHARES)
    state = short_tmp / "state"
    async with secrets_rig(identity, state, config) as rig:

        def before() -> dict[str, list[str]]:
            op = rig.operator.client(rig.url)
            keys = op.sys.initialize(secret_shares=2, secret_threshold=2)
            op.sys.submit_unseal_keys(keys["keys"])
            kv = rig.login(rig.payments).secrets.kv.v2
            kv.create_or_update_secret("payments/old", {"v": "term-1"})
            payments = rig.payments.client(rig.url)
            with pytest.raises(hvac.exceptions.Forbidden):
                payments.adapter.put("/v1/sys/rotate")  # the operator's alone
            op.adapter.put("/v1/sys/rotate")
            kv.create_or_update_secret("payments/new", {"v": "term-2"})
            return keys

        keys = await asyncio.to_thread(before)
        assert rig.running.service.barrier.term == 2
    async with secrets_rig(identity, state, config) as rig:

        def after() -> None:
            op = rig.operator.client(rig.url)
            op.sys.submit_unseal_keys(keys["keys"])
            kv = rig.login(rig.payments).secrets.kv.v2
            key_status = rig.login(rig.operator).adapter.get("/v1/sys/key-status")["data"]
            assert key_status["term"] == 2
            assert key_status["install_time"].endswith("Z")
            for name, value in (("old", "term-1"), ("new", "term-2")):
                read = kv.read_secret_version(f"payments/{name}", raise_on_deleted_version=True)
                assert read["data"]["data"] == {"v": value}

        await asyncio.to_thread(after)
        assert rig.running.service.barrier.term == 2
