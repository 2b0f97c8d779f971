"""The scale-out configuration's shared PostgreSQL (issue 21): `trustmesh up` gives each
component a schema and a role of its own, on a private cluster that checks passwords
(SCRAM over TCP), provisioned by an owner role that is not a superuser. Each role logs in
with its sealed password and may do its own work only: the provider, the secrets service
and the gateway own their schemas and cannot look into one another's; the audit
collector may INSERT and SELECT its records and nothing more; the pruner may DELETE
them and nothing more. A second provisioning changes nothing; an owner that may not
create roles, an unreachable database, and a schema that belongs to someone else are
refused, each with the reason."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from services import PrivatePostgres, private_postgres
from sqlalchemy.engine import make_url

from trustmesh.cli.provision import provision
from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.errors import ConfigError, UnavailableError
from trustmesh.store.shared import component_url, roles_of

pytestmark = pytest.mark.xdist_group("provision")

OWNER = "tm_owner"
DATABASE = "shared"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[PrivatePostgres, str]]:
    """A private cluster with a database and an owner role that may create roles and
    schemas (no superuser); the owner's password."""
    password = secrets.token_hex(16)
    with private_postgres() as running:

        async def prepare() -> None:
            admin = await running.admin()
            try:
                await admin.execute(f"CREATE ROLE {OWNER} LOGIN CREATEROLE PASSWORD '{password}'")
                await admin.execute(f"CREATE DATABASE {DATABASE} OWNER {OWNER}")
                await admin.execute("CREATE ROLE tm_weak LOGIN PASSWORD 'weak-role-password'")
            finally:
                await admin.close()

        asyncio.run(prepare())
        yield running, password


def declaration(owner_url: str, prefix: str, *, retention: bool = True) -> TrustmeshConfig:
    keep = "\n  retention: {default: 30d}" if retention else ""
    return parse_config(
        f"""trust_domain: shared.example
dev: true
shared: {{postgres: "{owner_url}", prefix: {prefix}}}
services:
  inventory: {{run: "trustmesh.demo.inventory:app"}}
gateway:
  routes: [{{path: /items, to: inventory, methods: [GET]}}]
secrets: {{}}
audit:
  checkpoint_every: 10{keep}
""",
        source="test",
    )


def owner_url(cluster: tuple[PrivatePostgres, str], role: str = OWNER, password: str = "") -> str:
    running, owner_password = cluster
    return f"postgresql://{role}:{password or owner_password}@127.0.0.1:{running.port}/{DATABASE}"


async def connect(url: str) -> Any:
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )


async def provisioned(
    cluster: tuple[PrivatePostgres, str], state: Path, prefix: str
) -> TrustmeshConfig:
    config = declaration(owner_url(cluster), prefix)
    said: list[str] = []
    await asyncio.to_thread(provision, config, state, said.append)
    assert said
    assert f"{prefix}_audit ({prefix}_audit)" in said[0]
    return config


async def test_each_component_gets_a_role_and_schema_of_its_own(
    cluster: tuple[PrivatePostgres, str], short_tmp: Path
) -> None:
    config = await provisioned(cluster, short_tmp, "tma")
    names = {r.component: r.role for r in roles_of(config, short_tmp)}
    every = ("auth", "secrets", "gateway", "audit", "audit_pruner")
    assert names == {component: f"tma_{component}" for component in every}
    for sealed in (short_tmp / "shared").iterdir():  # sealed, never the password itself
        assert b"tma" not in sealed.read_bytes()
    urls = {c: component_url(config, short_tmp, c) for c in names}
    assert all(url and url.startswith("postgresql+asyncpg://") for url in urls.values())

    auth = await connect(str(urls["auth"]))
    secrets_role = await connect(str(urls["secrets"]))
    try:
        # a component's tables land in its own schema without naming it
        await auth.execute("CREATE TABLE clients (id text PRIMARY KEY)")
        where = await auth.fetchval(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'clients'"
        )
        assert where == "tma_auth"
        await auth.execute("INSERT INTO clients VALUES ('shop-web')")
        # and nobody else's role can look into it
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await secrets_role.fetch("SELECT * FROM tma_auth.clients")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await secrets_role.execute("CREATE TABLE tma_auth.planted (x int)")
        # nor make anything outside its schema, nor roles, nor databases
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auth.execute("CREATE TABLE public.elsewhere (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auth.execute("CREATE ROLE escalated")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auth.execute("CREATE DATABASE other")
    finally:
        await auth.close()
        await secrets_role.close()


async def test_the_audit_role_may_only_insert_and_select(
    cluster: tuple[PrivatePostgres, str], short_tmp: Path
) -> None:
    config = await provisioned(cluster, short_tmp, "tmb")
    collector = await connect(str(component_url(config, short_tmp, "audit")))
    pruner = await connect(str(component_url(config, short_tmp, "audit_pruner")))
    try:
        # the owner made the tables; the collector finds them on its search path
        columns = await collector.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'tmb_audit' AND table_name = 'audit_records' ORDER BY ordinal_position"
        )
        assert columns
        row = {c["column_name"]: _sample(c["data_type"]) for c in columns}
        names = ", ".join(row)
        marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        await collector.execute(
            f"INSERT INTO audit_records ({names}) VALUES ({marks})",  # noqa: S608 - catalog names
            *row.values(),
        )
        assert await collector.fetchval("SELECT count(*) FROM audit_records") == 1
        first = next(iter(row))
        for forbidden in (
            f"UPDATE audit_records SET {first} = {first}",  # noqa: S608 - a catalog name
            "DELETE FROM audit_records",
            "TRUNCATE audit_records",
            "DROP TABLE audit_records",
            "CREATE TABLE tmb_audit.shadow (x int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await collector.execute(forbidden)
        # the pruner deletes records and may not rewrite them
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pruner.execute(f"UPDATE audit_records SET {first} = {first}")  # noqa: S608
        assert await pruner.execute("DELETE FROM audit_records") == "DELETE 1"
    finally:
        await collector.close()
        await pruner.close()


def _sample(data_type: str) -> object:
    return {"bigint": 1, "integer": 1, "smallint": 1, "bytea": b"x", "boolean": False}.get(
        data_type, "x"
    )


async def test_provisioning_again_keeps_everything_and_each_password(
    cluster: tuple[PrivatePostgres, str], short_tmp: Path
) -> None:
    config = await provisioned(cluster, short_tmp, "tmc")
    before = component_url(config, short_tmp, "gateway")
    gateway = await connect(str(before))
    await gateway.execute("CREATE TABLE gateway_api_keys (id text)")
    await gateway.execute("INSERT INTO gateway_api_keys VALUES ('k1')")
    await gateway.close()
    await asyncio.to_thread(provision, config, short_tmp, lambda _m: None)
    assert component_url(config, short_tmp, "gateway") == before
    gateway = await connect(str(before))
    try:
        assert await gateway.fetchval("SELECT id FROM gateway_api_keys") == "k1"
    finally:
        await gateway.close()
    # a wrong password is refused: the roles are not open to anyone who knows their name
    wrong = secrets.token_hex(12)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect(str(make_url(str(before)).set(password=wrong)))


def test_a_component_without_a_provisioned_role_is_told_to_run_up(
    cluster: tuple[PrivatePostgres, str], short_tmp: Path
) -> None:
    config = declaration(owner_url(cluster), "tmd")
    with pytest.raises(ConfigError, match=r"tmd_auth.*not provisioned.*trustmesh up"):
        component_url(config, short_tmp, "auth")


def test_an_owner_that_may_not_create_roles_is_refused(
    cluster: tuple[PrivatePostgres, str], short_tmp: Path
) -> None:
    config = declaration(owner_url(cluster, "tm_weak", "weak-role-password"), "tme")
    with pytest.raises(ConfigError, match="needs CREATEROLE"):
        provision(config, short_tmp, lambda _m: None)


def test_an_unreachable_database_is_unavailable(short_tmp: Path) -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = declaration(f"postgresql://owner@127.0.0.1:{port}/x", "tmf")
    with pytest.raises(UnavailableError, match=r"shared\.postgres cannot be reached"):
        provision(config, short_tmp, lambda _m: None)


def test_a_schema_that_belongs_to_another_role_is_refused(
    cluster: tuple[PrivatePostgres, str], short_tmp: Path
) -> None:
    running, _ = cluster

    async def squat() -> None:
        admin = await running.admin(DATABASE)
        try:
            await admin.execute("CREATE ROLE tmg_squatter")
            await admin.execute("CREATE SCHEMA tmg_auth AUTHORIZATION tmg_squatter")
        finally:
            await admin.close()

    asyncio.run(squat())
    config = declaration(owner_url(cluster), "tmg", retention=False)
    with pytest.raises(ConfigError, match="schema 'tmg_auth' belongs to 'tmg_squatter'"):
        provision(config, short_tmp, lambda _m: None)
