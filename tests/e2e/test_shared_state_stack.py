"""`trustmesh up` in the scale-out configuration (issue 21): `shared.postgres` and
`shared.redis` in the declaration, a private PostgreSQL cluster that checks passwords and
a private Redis, both over TLS with certificates from the workload CA
(`trustmesh identity server-cert`), both requiring a client certificate from it
(``sslmode=verify-full``, ``rediss://``). The stack comes up with every store in its
component's schema (nothing in `public`, nothing in SQLite files), every component's
database connection over TLS with its SVID, the audit log filled by the collector's own
INSERT-and-SELECT role and still verifying, an API key made through the admin API kept in
the gateway's schema, and the gateway's rate limits counted in the shared Redis. No role
password reaches an event or a log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from secretscan import UsedSecrets, assert_no_secret_recorded
from services import PrivatePostgres, ServerTLS, private_postgres
from sqlalchemy.engine import make_url

from trustmesh.config import load_config
from trustmesh.sdk import store_tls
from trustmesh.store.shared import component_url
from trustmesh.testing import FixedSVIDSource, PrivateRedis, identity_server_in_thread
from trustmesh.testing import run_cli as tm

pytestmark = pytest.mark.xdist_group("shared_state_stack")

PREFIX = "tmshop"
INSPECTOR = "spiffe://shared.example/test/inspector"
CONFIG = """trust_domain: shared.example
dev: true
shared:
  postgres: "postgresql://tm_owner:{password}@127.0.0.1:{port}/shop?sslmode=verify-full"
  redis: "{redis}"
  prefix: {prefix}
services:
  inventory: {{run: "trustmesh.demo.inventory:app"}}
gateway:
  rate_limits: [{{per: ip, limit: 8/minute}}]
  routes:
    - {{path: /items, to: inventory, methods: [GET], auth: [anonymous]}}
secrets: {{}}
audit:
  checkpoint_every: 10
"""


def _server_certificate(root: Path, state: Path) -> ServerTLS:
    """The workload CA made (the identity service started once on ``state``, as `up`
    will start it), and the servers' certificate issued by it with `trustmesh identity
    server-cert`; this process gets an SVID too, to look into Redis as a component does."""
    first = root / "first.yaml"
    first.write_text("trust_domain: shared.example\ndev: true\n")
    args = ("--config", str(first), "--state", str(state))
    selectors = [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"]
    with identity_server_in_thread(load_config(first), state, discovery=True) as identity:
        identity.call(identity.server.service.register, INSPECTOR, selectors, None)
        store_tls.present(asyncio.run(FixedSVIDSource.fetched(identity.address, INSPECTOR)))
        made = tm("identity", "server-cert", "--ip", "127.0.0.1", "--out", str(root / "tls"), *args)
        assert made.returncode == 0, made.stdout + made.stderr
    tls = root / "tls"
    return ServerTLS(tls / "server.crt", tls / "server.key", tls / "ca.crt")


@contextlib.contextmanager
def shared_stack() -> Iterator[tuple[Path, Path, PrivatePostgres, PrivateRedis, UsedSecrets]]:
    """The stack up on a private cluster (an owner role that may create roles, not a
    superuser) and a private Redis, both over TLS; `down` afterwards, and no password in
    any event."""
    used = UsedSecrets()
    password = secrets.token_hex(16)
    used.add(password)
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config, state = root / "trustmesh.yaml", root / "state"
    tls = _server_certificate(root, state)
    redis = PrivateRedis(root, tls=(tls.cert, tls.key, tls.ca))
    redis.start()
    with private_postgres(tls, password_only=("tm_owner",)) as cluster:
        asyncio.run(_owner(cluster, password))
        config.write_text(
            CONFIG.format(password=password, port=cluster.port, redis=redis.url, prefix=PREFIX)
        )
        try:
            up = tm("up", "--config", str(config), "--state", str(state), "--detach")
            assert up.returncode == 0, up.stdout + up.stderr
            yield config, state, cluster, redis, used
            assert tm("down", "--state", str(state)).returncode == 0
            assert_no_secret_recorded(state, used, at_least=5)
            logs = "".join(p.read_text(errors="replace") for p in (state / "logs").glob("*"))
            assert not any(value in logs for value in used.values)
        finally:
            tm("down", "--state", str(state))
            redis.kill()
            store_tls.present(None)
            shutil.rmtree(root, ignore_errors=True)


async def _owner(cluster: PrivatePostgres, password: str) -> None:
    admin = await cluster.admin()
    try:
        await admin.execute(f"CREATE ROLE tm_owner LOGIN CREATEROLE PASSWORD '{password}'")
        await admin.execute("CREATE DATABASE shop OWNER tm_owner")
    finally:
        await admin.close()


async def _connections(cluster: PrivatePostgres) -> dict[str, set[tuple[bool, bool]]]:
    """Per role connected over TCP: (over TLS, with a client certificate) of each."""
    admin = await cluster.admin("shop")
    try:
        rows = await admin.fetch(
            "SELECT a.usename, s.ssl, s.client_serial IS NOT NULL AS cert "
            "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.client_addr IS NOT NULL AND a.usename IS NOT NULL"
        )
    finally:
        await admin.close()
    found: dict[str, set[tuple[bool, bool]]] = {}
    for row in rows:
        found.setdefault(row["usename"], set()).add((row["ssl"], row["cert"]))
    return found


async def _tables(cluster: PrivatePostgres) -> dict[str, set[str]]:
    admin = await cluster.admin("shop")
    try:
        rows = await admin.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        records = await admin.fetchval(f"SELECT count(*) FROM {PREFIX}_audit.audit_records")  # noqa: S608 - a constant
        keys = await admin.fetchval(f"SELECT count(*) FROM {PREFIX}_gateway.gateway_api_keys")  # noqa: S608 - a constant
    finally:
        await admin.close()
    found: dict[str, set[str]] = {"records": {str(records)}, "keys": {str(keys)}}
    for row in rows:
        found.setdefault(row["table_schema"], set()).add(row["table_name"])
    return found


def _get(url: str, state: Path, **headers: str) -> int:
    with requests.Session() as client:
        client.trust_env = False
        answer = client.get(url, verify=str(state / "edge" / "ca.pem"), headers=headers, timeout=10)
        return answer.status_code


def test_the_stack_keeps_every_store_in_its_schema_and_limits_in_redis() -> None:
    with shared_stack() as (config, state, cluster, redis, used):
        declared = load_config(config)
        for component in ("auth", "secrets", "gateway", "audit"):
            url = component_url(declared, state, component)
            assert url is not None
            used.add(make_url(url).password)
        status = tm("status", "--config", str(config), "--state", str(state), "--json")
        gateway = next(
            c for c in json.loads(status.stdout)["components"] if c["name"] == "gateway"
        )["url"]
        added = tm(
            "gateway", "key", "add", "shop-batch", "--scope", "*",
            "--config", str(config), "--state", str(state), "--json",
        )  # fmt: skip
        assert added.returncode == 0, added.stdout + added.stderr
        key = json.loads(added.stdout)["key"]
        used.add(key)
        answers = [_get(f"{gateway}/items/tea", state) for _ in range(10)]
        assert 200 in answers
        assert answers.count(429) >= 2  # 8 a minute, counted in the shared Redis
        assert asyncio.run(redis.keys("trustmesh:ratelimit*"))

        deadline = time.monotonic() + 20
        while True:
            tables = asyncio.run(_tables(cluster))
            if int(next(iter(tables["records"]))) >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert int(next(iter(tables["records"]))) >= 10, "the collector stored no events"
        assert tables["keys"] == {"1"}
        assert "public" not in tables, f"tables outside the components' schemas: {tables}"
        for component in ("auth", "secrets", "gateway", "audit"):
            assert tables.get(f"{PREFIX}_{component}"), f"{component} made no table in its schema"
        for folder in ("auth", "secrets", "gateway", "audit"):
            assert not list((state / folder).glob("*.db")), f"{folder} kept an SQLite store"
        verified = tm("audit", "verify", "--config", str(config), "--state", str(state), "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # every component's connection is TLS with its SVID (the cluster requires both)
        connected = asyncio.run(_connections(cluster))
        for component in ("auth", "secrets", "gateway", "audit"):
            assert connected.get(f"{PREFIX}_{component}") == {(True, True)}, connected
