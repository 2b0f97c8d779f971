"""`trustmesh up` in the scale-out configuration (issue 21): `shared.postgres` and
`shared.redis` in the declaration, a private PostgreSQL cluster that checks passwords and
a private Redis. The stack comes up with every store in its component's schema (nothing
in `public`, nothing in SQLite files), the audit log filled by the collector's own
INSERT-and-SELECT role and still verifying, an API key made through the admin API kept in
the gateway's schema, and the gateway's rate limits counted in the shared Redis. No role
password reaches an event or a log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from secretscan import UsedSecrets, assert_no_secret_recorded
from services import PrivatePostgres, private_postgres
from sqlalchemy.engine import make_url

from trustmesh.config import load_config
from trustmesh.store.shared import component_url
from trustmesh.testing import PrivateRedis
from trustmesh.testing import run_cli as tm

pytestmark = pytest.mark.xdist_group("shared_state_stack")

PREFIX = "tmshop"
CONFIG = """trust_domain: shared.example
dev: true
shared:
  postgres: "postgresql://tm_owner:{password}@127.0.0.1:{port}/shop"
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


@contextlib.contextmanager
def shared_stack() -> Iterator[tuple[Path, Path, PrivatePostgres, PrivateRedis, UsedSecrets]]:
    """The stack up on a private cluster (an owner role that may create roles, not a
    superuser) and a private Redis; `down` afterwards, and no password in any event."""
    used = UsedSecrets()
    password = secrets.token_hex(16)
    used.add(password)
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    redis = PrivateRedis(root)
    redis.start()
    with private_postgres() as cluster:
        asyncio.run(_owner(cluster, password))
        config, state = root / "trustmesh.yaml", root / "state"
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
            shutil.rmtree(root, ignore_errors=True)


async def _owner(cluster: PrivatePostgres, password: str) -> None:
    admin = await cluster.admin()
    try:
        await admin.execute(f"CREATE ROLE tm_owner LOGIN CREATEROLE PASSWORD '{password}'")
        await admin.execute("CREATE DATABASE shop OWNER tm_owner")
    finally:
        await admin.close()


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
