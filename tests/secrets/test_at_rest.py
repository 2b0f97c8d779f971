"""At rest and on the wire: no plaintext secret in the store or the audit log, a flipped
byte or a value moved to another path is an integrity error (never garbage), paths are
taken as sent or refused, every request is audited — and without an audit device
nothing is served."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import ssl
from pathlib import Path

import hvac.exceptions
import pytest
from secretsrig import SecretsRig, Workload, secrets_config, secrets_rig

from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer

VALUE = "card-4111-1111-1111-1111-secret"


def _raw(
    rig: SecretsRig,
    who: Workload,
    method: str,
    path: str,
    token: str | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, object]]:
    """A request with the path exactly as given (no client normalises it)."""
    ctx = ssl.create_default_context(cafile=str(who.bundle))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(who.cert), str(who.key))
    host, port = rig.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    headers = {"X-Vault-Token": token} if token else {}
    conn.request(method, path, body=body, headers=headers)
    answer = conn.getresponse()
    raw = answer.read()
    conn.close()
    return answer.status, json.loads(raw) if raw else {}


async def test_no_plaintext_in_the_store_or_the_audit_log(rig: SecretsRig) -> None:
    def run() -> str:
        client = rig.login(rig.payments)
        kv = client.secrets.kv.v2
        kv.create_or_update_secret("payments/card", {"pan": VALUE})
        assert (
            kv.read_secret_version("payments/card", raise_on_deleted_version=True)["data"]["data"][
                "pan"
            ]
            == VALUE
        )
        return str(client.token)

    token = await asyncio.to_thread(run)
    folder = rig.state / "secrets"
    for path in folder.iterdir():
        data = path.read_bytes()
        assert VALUE.encode() not in data, path
        assert token.encode() not in data, path
    # the audit log records the read, with the value as an HMAC the auditor can check
    audit = rig.running.service.audit
    lines = [json.loads(line) for line in rig.audit_lines()]
    reads = [
        r
        for r in lines
        if r["type"] == "response"
        and r["request"]["path"] == "secret/data/payments/card"
        and r["request"]["operation"] == "get"
    ]
    assert reads
    assert reads[-1]["response"]["data"]["data"]["pan"] == audit.hash(VALUE)


async def test_audit_hash_answers_for_a_value(rig: SecretsRig) -> None:
    def run() -> str:
        op = rig.login(rig.operator)
        response = op.adapter.post("/v1/sys/audit-hash/file", json={"input": VALUE})
        return str(response["data"]["hash"])

    assert await asyncio.to_thread(run) == rig.running.service.audit.hash(VALUE)


def _tamper(database: Path, path: str, change: str) -> None:
    with sqlite3.connect(database) as db:
        if change == "flip":
            (blob,) = db.execute(
                "SELECT value FROM secrets_kv_values WHERE path = ?", (path,)
            ).fetchone()
            flipped = bytearray(blob)
            flipped[-5] ^= 0x01
            db.execute(
                "UPDATE secrets_kv_values SET value = ? WHERE path = ?", (bytes(flipped), path)
            )
        else:  # copy another path's value here
            (blob,) = db.execute(
                "SELECT value FROM secrets_kv_values WHERE path = ?", (change,)
            ).fetchone()
            db.execute("UPDATE secrets_kv_values SET value = ? WHERE path = ?", (blob, path))


async def test_a_flipped_byte_or_a_moved_value_is_an_integrity_error(rig: SecretsRig) -> None:
    def write() -> hvac.Client:
        client = rig.login(rig.payments)
        kv = client.secrets.kv.v2
        for name in ("a", "b", "c"):
            kv.create_or_update_secret(f"payments/{name}", {"v": name})
        return client

    client = await asyncio.to_thread(write)
    database = rig.state / "secrets" / "secrets.db"
    _tamper(database, "payments/a", "flip")
    _tamper(database, "payments/b", "payments/c")  # c's sealed value, under b's path

    def read(name: str) -> None:
        client.secrets.kv.v2.read_secret_version(f"payments/{name}", raise_on_deleted_version=True)

    for name in ("a", "b"):
        with pytest.raises(hvac.exceptions.InternalServerError, match="integrity"):
            await asyncio.to_thread(read, name)
    await asyncio.to_thread(read, "c")  # untouched
    corrupt = [e for e in rig.sink.events if e.reason is Reason.STORED_VALUE_CORRUPT]
    assert len(corrupt) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/v1/secret/data/payments/../orders/db",
        "/v1/secret/data/payments/%2e%2e/orders/db",
        "/v1/secret/data/payments/%2E%2E/orders/db",
        "/v1/secret/data/payments//db",
        "/v1/secret/data/payments/.%2fdb",
        "/v1/secret/data/payments%2f..%2forders/db",
        "/v1/secret/data/payments/./db",
        "/v1//secret/data/payments/db",
    ],
)
async def test_traversal_is_refused_never_normalised(rig: SecretsRig, path: str) -> None:
    def run() -> tuple[int, dict[str, object]]:
        op = rig.login(rig.operator)
        op.secrets.kv.v2.create_or_update_secret("orders/db", {"password": "orders-only"})
        token = rig.login(rig.payments).token
        return _raw(rig, rig.payments, "GET", path, token)

    status, body = await asyncio.to_thread(run)
    assert status == 400, body
    assert "orders-only" not in json.dumps(body)


async def test_unknown_paths_and_methods_are_not_silent(rig: SecretsRig) -> None:
    def run() -> list[int]:
        token = rig.login(rig.operator).token
        return [
            _raw(rig, rig.operator, "GET", "/v1/pki/issue/web", token)[0],
            _raw(rig, rig.operator, "POST", "/v1/sys/health", token, b"{}")[0],
            _raw(rig, rig.operator, "GET", "/v2/secret/data/x", token)[0],
            _raw(rig, rig.operator, "POST", "/v1/secret/data/x", token, b'{"data":1,"data":2}')[0],
            _raw(rig, rig.operator, "POST", "/v1/secret/data/x", token, b"[1]")[0],
            _raw(rig, rig.operator, "POST", "/v1/secret/data/x", token, b"x" * (2 << 20))[0],
        ]

    assert await asyncio.to_thread(run) == [404, 405, 404, 400, 400, 413]


async def test_without_an_audit_device_nothing_is_served(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """A full disk (/dev/full refuses every write): every request answers 503, the login
    gives no token, and no value leaves."""
    config = secrets_config(**{"secrets:\n": 'secrets:\n  audit_file: "/dev/full"\n'})
    async with secrets_rig(identity, short_tmp / "state", config) as rig:

        def run() -> None:
            with pytest.raises(hvac.exceptions.VaultDown):
                rig.login(rig.payments)
            status, body = _raw(rig, rig.payments, "GET", "/v1/secret/data/payments/db", "hvs.x")
            assert status in (403, 503), body

        await asyncio.to_thread(run)
        assert rig.running.service.audit.failures >= 2
        assert any(e.reason is Reason.AUDIT_UNAVAILABLE for e in rig.sink.events)
