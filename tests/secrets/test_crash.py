"""Nothing acknowledged is lost: the secrets service is killed (SIGKILL) in the middle of
1,000 concurrent KV writes, restarted on the same store, and every version it
acknowledged reads back with its value — on SQLite and on PostgreSQL. And the whole API
works on PostgreSQL (``secrets.database``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from secretsrig import CONFIG, PAYMENTS, SECRETS, secrets_config, secrets_rig
from services import postgres_database

from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.secrets import SecretsClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

WRITES = 1000
PATHS = 50


def _start(
    config_file: Path, state: Path, identity: RunningIdentityServer
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": identity.address}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trustmesh.secrets",
            "--config",
            str(config_file),
            "--state",
            str(state),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _url(state: Path, proc: subprocess.Popen[bytes]) -> str:
    endpoint = state / "secrets" / "endpoint.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the secrets process exited with {proc.returncode}")
        try:
            doc = json.loads(endpoint.read_text())
            if doc.get("pid") == proc.pid:
                return str(doc["url"])
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the secrets process did not start")


async def _crash_and_check(identity: RunningIdentityServer, root: Path, config_text: str) -> int:
    config_file = root / "trustmesh.yaml"
    config_file.write_text(config_text)
    state = root / "state"
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    await source.start()
    tls = RotatingTLS(source)
    proc = _start(config_file, state, identity)
    acknowledged: dict[tuple[str, int], int] = {}
    try:
        url = await _url(state, proc)
        writer = SecretsClient(tls, url, SECRETS)
        token = await writer.token()
        client = ServiceClient(tls, url, SECRETS, retries=0)
        started = asyncio.Event()

        async def write(n: int) -> None:
            path = f"payments/k{n % PATHS}"
            try:
                answer = await client.request(
                    "POST",
                    f"/v1/secret/data/{path}",
                    json={"data": {"n": n}},
                    headers={"X-Vault-Token": token},
                )
            except Exception:  # noqa: BLE001 - the server was killed under this request
                return
            if answer.status == 200:
                acknowledged[(path, answer.json()["data"]["version"])] = n
                if len(acknowledged) >= 100:
                    started.set()

        tasks = [asyncio.create_task(write(n)) for n in range(WRITES)]
        await asyncio.wait_for(started.wait(), 60)
        proc.send_signal(signal.SIGKILL)  # mid-flight: some writes are still running
        await asyncio.gather(*tasks)
        await client.close()
        await writer.close()
        proc.wait(10)
        assert len(acknowledged) >= 100
        # restarted on the same store: every acknowledged version is there, with its value
        proc = _start(config_file, state, identity)
        url = await _url(state, proc)
        reader = SecretsClient(tls, url, SECRETS)
        for (path, version), n in acknowledged.items():
            answer = await reader.request("GET", f"/v1/secret/data/{path}?version={version}")
            assert answer.status == 200, (path, version, answer.body)
            assert answer.json()["data"]["data"] == {"n": n}
        await reader.close()
        return len(acknowledged)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        await source.close()


async def test_a_kill_loses_no_acknowledged_write_on_sqlite(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    assert await _crash_and_check(identity, short_tmp, CONFIG) >= 100


async def test_a_kill_loses_no_acknowledged_write_on_postgres(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with postgres_database("tm_secrets") as url:
        text = CONFIG.replace("secrets:\n", f'secrets:\n  database: "{url}"\n')
        assert await _crash_and_check(identity, short_tmp, text) >= 100


@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version:DeprecationWarning")
async def test_the_api_on_postgres(identity: RunningIdentityServer, short_tmp: Path) -> None:
    async with postgres_database("tm_secrets") as url:
        config = secrets_config(**{"secrets:\n": f'secrets:\n  database: "{url}"\n'})
        async with secrets_rig(identity, short_tmp / "state", config) as rig:

            def run() -> None:
                kv = rig.login(rig.payments).secrets.kv.v2
                kv.create_or_update_secret("payments/db", {"password": "on-postgres"})
                kv.create_or_update_secret("payments/db", {"password": "second"}, cas=1)
                kv.patch("payments/db", {"user": "pay"})
                assert kv.read_secret_version("payments/db", raise_on_deleted_version=True)["data"][
                    "data"
                ] == {"password": "second", "user": "pay"}
                assert kv.list_secrets("payments")["data"]["keys"] == ["db"]
                transit = rig.login(rig.payments).secrets.transit
                sealed = transit.encrypt_data("payments", plaintext="aGk=")["data"]["ciphertext"]
                assert (
                    transit.decrypt_data("payments", ciphertext=sealed)["data"]["plaintext"]
                    == "aGk="
                )

            await asyncio.to_thread(run)
