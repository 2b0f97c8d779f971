"""Policies reloaded without a restart (``sys/config/reload/policies``, the operator's
only): the service reads its declaration again, compiles it off the request path and
swaps it in whole — tokens already issued get the new policies at once; a declaration
that does not load changes nothing and is answered 400 naming the key."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from secretsrig import CONFIG, SecretsRig, secrets_config, secrets_rig

from trustmesh.testing import RunningIdentityServer

ORDERS_READ = """        "transit/keys/payments": [read]
        "secret/data/orders/*": [read]"""


@pytest.fixture
async def declared(
    identity: RunningIdentityServer, short_tmp: Path
) -> AsyncIterator[tuple[SecretsRig, Path]]:
    path = short_tmp / "trustmesh.yaml"
    path.write_text(CONFIG)
    async with secrets_rig(
        identity, short_tmp / "state", secrets_config(), config_file=path
    ) as running:
        yield running, path


def _reload(operator: hvac.Client) -> dict[str, object]:
    response = operator.adapter.put("/v1/sys/config/reload/policies")
    assert isinstance(response, dict)
    return response


async def test_a_reload_applies_to_issued_tokens(declared: tuple[SecretsRig, Path]) -> None:
    await asyncio.to_thread(_applies_to_issued_tokens, *declared)


def _applies_to_issued_tokens(rig: SecretsRig, path: Path) -> None:
    operator, payments = rig.login(rig.operator), rig.login(rig.payments)
    operator.secrets.kv.v2.create_or_update_secret("orders/card-key", {"k": "v"})
    with pytest.raises(hvac.exceptions.Forbidden):
        payments.secrets.kv.v2.read_secret_version("orders/card-key", raise_on_deleted_version=True)

    # granted: the token payments already holds may read it now
    path.write_text(
        CONFIG.replace('        "transit/keys/payments": [read]', ORDERS_READ)
        + "  token_ttl: 30m\n  port: 18999\n"
    )
    answer = _reload(operator)
    assert answer["data"] == {
        "identities": ["operator", "payments"],
        "token_ttl": 1800,
        "token_max_ttl": 86400,
    }
    assert answer["warnings"] == ["port changed: it takes a restart to apply"]
    read = payments.secrets.kv.v2.read_secret_version(
        "orders/card-key", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"k": "v"}
    assert 1790 <= rig.login(rig.payments).auth.token.lookup_self()["data"]["ttl"] <= 1800

    # a declaration that does not load: 400, every problem named, nothing changed
    path.write_text(CONFIG.replace("[create, read, update, delete, patch]", "[read, fly]"))
    with pytest.raises(
        hvac.exceptions.InvalidRequest,
        match=re.escape(
            'trustmesh.yaml:11: secrets.policies[0].allow["secret/data/payments/*"][1]'
        ),
    ):
        _reload(operator)
    path.write_text("secrets: [")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        _reload(operator)
    assert payments.secrets.kv.v2.read_secret_version(
        "orders/card-key", raise_on_deleted_version=True
    )

    # payments taken out: its token can do nothing, and it cannot log in again
    path.write_text(CONFIG.replace("    - identity: payments\n", "    - identity: orders\n"))
    assert _reload(operator)["data"]["identities"] == ["operator", "orders"]  # type: ignore[index]
    with pytest.raises(hvac.exceptions.Forbidden):
        payments.secrets.kv.v2.read_secret_version(
            "payments/anything", raise_on_deleted_version=True
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        rig.login(rig.payments)
    assert rig.login(rig.orders).auth.token.lookup_self()["data"]["policies"] == ["orders"]


async def test_only_the_operator_reloads(declared: tuple[SecretsRig, Path]) -> None:
    rig, path = declared
    path.write_text(CONFIG.replace('        "transit/keys/payments": [read]', ORDERS_READ))

    def refused() -> None:
        payments = rig.login(rig.payments)
        with pytest.raises(hvac.exceptions.Forbidden):
            _reload(payments)
        with pytest.raises(hvac.exceptions.Forbidden):  # the file changed, nothing applied
            payments.secrets.kv.v2.read_secret_version("orders/x", raise_on_deleted_version=True)

    await asyncio.to_thread(refused)
    assert any(
        e.reason == "policy-deny" and e.attributes.get("path") == "sys/config/reload/policies"
        for e in rig.sink.events
    )


async def test_a_service_started_without_a_file_says_so(rig: SecretsRig) -> None:
    def refused() -> None:
        with pytest.raises(hvac.exceptions.InvalidRequest, match="not started from a config"):
            _reload(rig.login(rig.operator))

    await asyncio.to_thread(refused)
