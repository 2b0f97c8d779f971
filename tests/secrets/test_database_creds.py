"""The database secrets engine through the real hvac client, against a private PostgreSQL
cluster (initdb + pg_ctl on a free port, never the machine's own): an issued role logs
in and can do what its statements granted and no more; it is gone after its lease (the
clock moves, the sweep runs), after ``sys/leases/revoke`` and ``revoke-prefix``; a sweep
that cannot reach the database keeps the lease and revokes it once the database is
back; after ``rotate-root`` only the service knows the root password; no read answers
the root password; an identity without the path gets 403."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import hvac
import hvac.exceptions
import pytest
from secretsrig import SECRETS, SecretsRig, Workload, secrets_config, secrets_rig
from services import PrivatePostgres, private_postgres

from trustmesh.errors import PermissionDeniedError, UsageError
from trustmesh.sdk.secrets import SecretsClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.secrets.database_model import (
    PLUGIN,
    Connection,
    Role,
    lease_ttl,
    quote_ident,
    scram_verifier,
)
from trustmesh.secrets.database_store import leases
from trustmesh.testing import FakeClock, RunningIdentityServer

CREATE = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    'GRANT SELECT ON items TO "{{name}}";',
]
_T = TypeVar("_T")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as running:

        async def prepare() -> None:
            admin = await running.admin()
            await admin.execute("CREATE DATABASE app")
            await admin.close()
            app = await running.admin("app")
            await app.execute("CREATE TABLE items (id int, name text)")
            await app.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
            await app.close()

        asyncio.run(prepare())
        yield running


@dataclass
class Root:
    """A superuser of the cluster, made for one test, that the service connects as."""

    username: str
    password: str
    cluster: PrivatePostgres

    def url(self) -> str:
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.cluster.port}/app"

    def config(self, **extra: Any) -> dict[str, Any]:
        return {
            "plugin_name": PLUGIN,
            "connection_url": self.url(),
            "username": self.username,
            "password": self.password,
            "allowed_roles": ["readonly", "owner", "broken"],
            **extra,
        }


@pytest.fixture
async def root(cluster: PrivatePostgres) -> Root:
    username, password = f"root_{uuid.uuid4().hex[:10]}", secrets.token_hex(16)
    admin = await cluster.admin()
    await admin.execute(f"CREATE ROLE {username} SUPERUSER LOGIN PASSWORD '{password}'")
    await admin.close()
    return Root(username, password, cluster)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rig(
    identity: RunningIdentityServer, short_tmp: Path, clock: FakeClock
) -> AsyncIterator[SecretsRig]:
    """The secrets service on a fake clock; payments may read creds of ``readonly``; the
    clients logged in are closed at the end."""
    config = secrets_config(
        **{
            '"transit/keys/payments": [read]': '"transit/keys/payments": [read]\n'
            '        "database/creds/readonly": [read]'
        }
    )
    async with secrets_rig(identity, short_tmp / "state", config, clock=clock.time) as running:
        clients: list[hvac.Client] = []
        login = running.login

        def logged_in(who: Workload) -> hvac.Client:
            clients.append(login(who))
            return clients[-1]

        running.login = logged_in  # type: ignore[method-assign]
        try:
            yield running
        finally:  # before the server stops: an idle keep-alive client would hold it
            for client in clients:
                client.adapter.close()


def threaded(function: Callable[..., _T], *args: Any, **kwargs: Any) -> asyncio.Future[_T]:
    return asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))


async def connect_as(cluster: PrivatePostgres, user: str, password: str) -> Any:
    return await asyncpg.connect(
        host="127.0.0.1", port=cluster.port, user=user, password=password, database="app"
    )


async def role_exists(cluster: PrivatePostgres, name: str) -> bool:
    admin = await cluster.admin()
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name))
    finally:
        await admin.close()


async def configured(rig: SecretsRig, root: Root, **role: Any) -> hvac.Client:
    """The operator's client, with connection ``app`` and role ``readonly`` written."""
    operator = await threaded(rig.login, rig.operator)
    database = operator.secrets.database
    await threaded(database.configure, "app", **root.config())
    await threaded(
        database.create_role,
        "readonly",
        db_name="app",
        creation_statements=CREATE,
        **({"default_ttl": 60, "max_ttl": 300} | role),
    )
    return operator


async def test_issued_role_logs_in_and_is_gone_after_its_lease(
    rig: SecretsRig, root: Root, clock: FakeClock
) -> None:
    operator = await configured(rig, root)
    database = operator.secrets.database
    read = (await threaded(database.read_connection, "app"))["data"]
    assert read["connection_details"] == {"connection_url": root.url(), "username": root.username}
    assert read["plugin_name"] == PLUGIN
    assert root.password not in json.dumps(read)
    role = (await threaded(database.read_role, "readonly"))["data"]
    assert role["creation_statements"] == CREATE
    assert (role["default_ttl"], role["max_ttl"]) == (60, 300)
    assert (await threaded(database.list_roles))["data"]["keys"] == ["readonly"]
    assert (await threaded(database.list_connections))["data"]["keys"] == ["app"]
    mounts = (await threaded(operator.sys.list_mounted_secrets_engines))["data"]
    assert mounts["database/"]["type"] == "database"

    payments = await threaded(rig.login, rig.payments)
    creds = await threaded(payments.secrets.database.generate_credentials, "readonly")
    lease_id, user = creds["lease_id"], creds["data"]["username"]
    assert lease_id.startswith("database/creds/readonly/")
    assert (creds["lease_duration"], creds["renewable"]) == (60, True)
    assert user.startswith("v-certpaym-readonly-")

    # the role logs in, reads what it was granted and may not write
    session = await connect_as(root.cluster, user, creds["data"]["password"])
    assert await session.fetchval("SELECT count(*) FROM items") == 2
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await session.execute("INSERT INTO items VALUES (3, 'three')")
    await session.close()

    # lookup, renew, and renew capped at the role's max TTL from issue
    looked = (await threaded(operator.sys.read_lease, lease_id))["data"]
    assert (looked["id"], looked["ttl"], looked["renewable"]) == (lease_id, 60, True)
    assert looked["last_renewal"] is None
    clock.advance(30)
    renewed = await threaded(operator.sys.renew_lease, lease_id, increment=120)
    assert (renewed["lease_id"], renewed["lease_duration"]) == (lease_id, 120)
    capped = await threaded(operator.sys.renew_lease, lease_id, increment=3600)
    assert capped["lease_duration"] == 270
    assert "capped" in capped["warnings"][0]
    assert (await threaded(operator.sys.read_lease, lease_id))["data"]["last_renewal"]

    # renewed: not due yet at the first expiry
    clock.advance(100)
    await rig.running.service.database.tick(clock.time())
    assert await role_exists(root.cluster, user)

    # past the lease: the sweep drops the role and forgets the lease
    clock.advance(200)
    await rig.running.service.database.tick(clock.time())
    assert not await role_exists(root.cluster, user)
    with pytest.raises(asyncpg.PostgresError):
        await connect_as(root.cluster, user, creds["data"]["password"])
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid lease"):
        await threaded(operator.sys.read_lease, lease_id)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="lease not found"):
        await threaded(operator.sys.renew_lease, lease_id)


async def test_revoke_ends_sessions_and_drops_a_role_that_owns_things(
    rig: SecretsRig, root: Root
) -> None:
    operator = await configured(rig, root)
    await threaded(
        operator.secrets.database.create_role,
        "owner",
        db_name="app",
        creation_statements=[CREATE[0], 'GRANT CREATE ON SCHEMA public TO "{{name}}";'],
        # refused at revocation: logged, and the default revocation drops the role anyway
        revocation_statements=['REVOKE ALL ON no_such_table FROM "{{name}}";'],
    )
    creds = await threaded(operator.secrets.database.generate_credentials, "owner")
    user, password = creds["data"]["username"], creds["data"]["password"]
    # the mount's default (768 h), capped at the remaining life of the token (1 h)
    assert creds["lease_duration"] == 3600
    session = await connect_as(root.cluster, user, password)
    await session.execute("CREATE TABLE made_by_lease (x int)")

    await threaded(operator.sys.revoke_lease, creds["lease_id"])
    assert not await role_exists(root.cluster, user)
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await session.fetchval("SELECT 1")  # its session was ended
    session.terminate()
    admin = await root.cluster.admin("app")
    owner = await admin.fetchval(
        "SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_lease'"
    )
    await admin.execute("DROP TABLE made_by_lease")
    await admin.close()
    assert owner == root.username  # kept, handed to the connection's user
    # revoking it again, or a lease that never was, is no error (as in Vault)
    await threaded(operator.sys.revoke_lease, creds["lease_id"])

    # revoke-prefix: every lease of a role; the operator's SVID only
    payments = await threaded(rig.login, rig.payments)
    users = [
        (await threaded(operator.secrets.database.generate_credentials, "readonly"))["data"]
        for _ in range(2)
    ]
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.sys.revoke_prefix, "database/creds/readonly")
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.sys.revoke_lease, creds["lease_id"])
    assert all([await role_exists(root.cluster, u["username"]) for u in users])
    await threaded(operator.sys.revoke_prefix, "database/creds/readonly")
    assert not any([await role_exists(root.cluster, u["username"]) for u in users])
    assert await rig.running.service.database.store.names(leases) == []


async def test_leases_go_with_the_token_that_created_them(
    rig: SecretsRig, root: Root, clock: FakeClock
) -> None:
    """Vault's rule: revoking a token revokes every lease it created; and a lease never
    outlives its token (capped at issue and at renewal, refused once the token is gone)."""
    operator = await configured(rig, root, default_ttl=7200, max_ttl=86400)
    payments = await threaded(rig.login, rig.payments)
    mine = [
        (await threaded(payments.secrets.database.generate_credentials, "readonly"))
        for _ in range(2)
    ]
    other = await threaded(operator.secrets.database.generate_credentials, "readonly")
    # the role's default is 2 h; the token that asked lives 1 h
    assert {c["lease_duration"] for c in [*mine, other]} == {3600}
    clock.advance(600)
    capped = await threaded(payments.sys.renew_lease, mine[0]["lease_id"], increment=7200)
    assert capped["lease_duration"] == 3000
    assert "token" in capped["warnings"][0]
    # its own leases need no policy on sys/leases; another token's do
    looked = (await threaded(payments.sys.read_lease, mine[1]["lease_id"]))["data"]
    assert looked["ttl"] == 3000
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.sys.read_lease, other["lease_id"])
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.sys.renew_lease, other["lease_id"])
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.sys.revoke_lease, other["lease_id"])

    await threaded(payments.auth.token.revoke_self)
    for creds in mine:
        assert not await role_exists(root.cluster, creds["data"]["username"])
        with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid lease"):
            await threaded(operator.sys.read_lease, creds["lease_id"])
    # another token's lease is untouched
    assert await role_exists(root.cluster, other["data"]["username"])
    session = await connect_as(root.cluster, other["data"]["username"], other["data"]["password"])
    await session.close()

    # a token that expires takes its leases with it: renewal is refused, the sweep drops
    clock.advance(3000)
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(operator.sys.renew_lease, other["lease_id"])
    relogged = await threaded(rig.login, rig.operator)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="expired or revoked"):
        await threaded(relogged.sys.renew_lease, other["lease_id"])
    await rig.running.service.database.tick(clock.time())
    assert not await role_exists(root.cluster, other["data"]["username"])
    assert await rig.running.service.database.store.names(leases) == []


async def test_the_sdk_keeps_credentials_under_their_lease(
    rig: SecretsRig, root: Root, clock: FakeClock
) -> None:
    """``SecretsClient.database_credentials``: one login per lease, renewed at half-life,
    replaced when a renewal cannot give half the lease again (the role's max TTL)."""
    await configured(rig, root)  # default 60 s, max 300 s
    client = SecretsClient(
        RotatingTLS(rig.payments.source), rig.url, SECRETS, clock=clock.monotonic
    )

    def asked(path: str) -> int:
        lines = [json.loads(line) for line in rig.audit_lines()]
        return sum(1 for r in lines if r["type"] == "request" and r["request"]["path"] == path)

    try:
        first = await client.database_credentials("readonly")
        assert "password" not in repr(first)
        session = await connect_as(root.cluster, first.username, first.password)
        await session.close()
        assert await client.database_credentials("readonly") == first
        assert asked("database/creds/readonly") == 1
        for step in range(1, 9):  # renewed at every half-life until 300 s from issue
            clock.advance(31)
            assert (await client.database_credentials("readonly")).username == first.username
            assert asked("sys/leases/renew") == step
        clock.advance(31)  # 279 s: a renewal gives 21 s, less than half of 60: a new login
        second = await client.database_credentials("readonly")
        assert second.username != first.username
        assert asked("database/creds/readonly") == 2
        session = await connect_as(root.cluster, second.username, second.password)
        await session.close()
        # the first lease runs out on its own; the second lives on
        clock.advance(22)
        await rig.running.service.database.tick(clock.time())
        assert not await role_exists(root.cluster, first.username)
        assert await role_exists(root.cluster, second.username)
        # revoked behind its back: the renewal is refused, and a new login follows
        operator = await threaded(rig.login, rig.operator)
        await threaded(operator.sys.revoke_lease, second.lease_id)
        clock.advance(31)
        third = await client.database_credentials("readonly")
        assert third.username not in (first.username, second.username)
        assert await role_exists(root.cluster, third.username)
        with pytest.raises(PermissionDeniedError):
            await client.database_credentials("owner")  # not payments' to ask
    finally:
        await client.close()


async def test_rotate_root_leaves_only_the_service_knowing_the_password(
    rig: SecretsRig, root: Root
) -> None:
    operator = await configured(rig, root)
    database = operator.secrets.database
    (await connect_as(root.cluster, root.username, root.password)).terminate()
    await threaded(database.rotate_root_credentials, "app")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect_as(root.cluster, root.username, root.password)
    read = (await threaded(database.read_connection, "app"))["data"]
    assert read["connection_details"] == {"connection_url": root.url(), "username": root.username}
    assert "password" not in read
    # the service still connects (with the password only it has seen), twice over
    await threaded(database.rotate_root_credentials, "app")
    creds = await threaded(database.generate_credentials, "readonly")
    session = await connect_as(root.cluster, creds["data"]["username"], creds["data"]["password"])
    await session.close()
    await threaded(operator.sys.revoke_lease, creds["lease_id"])
    # a rotation cut short after ALTER ROLE: the pending password is tried, and kept
    engine = rig.running.service.database
    before = await engine.connection("app")
    assert before is not None
    await engine._keep(replace(before, pending_password="PendingRootPassword1"))
    admin = await root.cluster.admin()
    await admin.execute(f"ALTER ROLE {root.username} PASSWORD 'PendingRootPassword1'")
    await admin.close()
    creds = await threaded(database.generate_credentials, "readonly")
    after = await engine.connection("app")
    assert after is not None
    assert (after.password, after.pending_password) == ("PendingRootPassword1", None)
    await threaded(operator.sys.revoke_lease, creds["lease_id"])
    # nothing in the store or the audit log is a password in the clear
    stored = (rig.state / "secrets" / "secrets.db").read_bytes()
    audit = "\n".join(rig.audit_lines())
    for secret in (root.password, creds["data"]["password"]):
        assert secret.encode() not in stored
        assert secret not in audit
    assert root.username.encode() not in stored  # the connection is sealed whole


async def test_a_revocation_that_fails_is_kept_and_retried(
    rig: SecretsRig, root: Root, clock: FakeClock
) -> None:
    operator = await configured(rig, root)
    creds = await threaded(operator.secrets.database.generate_credentials, "readonly")
    lease_id, user = creds["lease_id"], creds["data"]["username"]
    engine = rig.running.service.database
    root.cluster.stop()
    try:
        clock.advance(61)
        sweep = await engine.tick(clock.time())
        assert lease_id in sweep.failed
        again = await engine.tick(clock.time())  # every tick tries again
        assert lease_id in again.failed
        with pytest.raises(hvac.exceptions.VaultDown, match="retried"):
            await threaded(operator.sys.revoke_lease, lease_id)
        looked = (await threaded(operator.sys.read_lease, lease_id))["data"]
        assert looked["id"] == lease_id  # never forgotten
        with pytest.raises(hvac.exceptions.InvalidRequest, match="expired or revoked"):
            await threaded(operator.sys.renew_lease, lease_id)
    finally:
        root.cluster.start()
    assert await role_exists(root.cluster, user)
    done = await engine.tick(clock.time())
    assert (done.revoked, dict(done.failed)) == (1, {})
    assert not await role_exists(root.cluster, user)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid lease"):
        await threaded(operator.sys.read_lease, lease_id)


async def test_refusals(rig: SecretsRig, root: Root) -> None:
    operator = await configured(rig, root)
    database = operator.secrets.database
    payments = await threaded(rig.login, rig.payments)
    # policy: payments may read creds of readonly, and nothing else of database/
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.secrets.database.generate_credentials, "owner")
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.secrets.database.read_connection, "app")
    with pytest.raises(hvac.exceptions.Forbidden):
        await threaded(payments.secrets.database.rotate_root_credentials, "app")
    denied = [json.loads(line) for line in rig.audit_lines()]
    assert any(
        e["type"] == "response"
        and e["request"]["path"] == "database/creds/owner"
        and e["response"]["status"] == 403
        for e in denied
    )
    # the connection is verified; an error names no password
    wrong = root.config(password="not-the-password")
    # refused, and the password is not in the message (no ExceptionInfo kept: it would
    # keep hvac's response, and its connection to the server, open)
    verifying_without_password = r"(?s)^(?!.*not-the-password).*error verifying the connection"
    with pytest.raises(hvac.exceptions.InvalidRequest, match=verifying_without_password):
        await threaded(database.configure, "other", **wrong)
    unverified = await threaded(database.configure, "other", **wrong, verify_connection=False)
    assert unverified.status_code == 204
    await threaded(database.delete_connection, "other")
    inline = root.config(connection_url=root.url().replace("{{password}}", "secret"))
    with pytest.raises(hvac.exceptions.InvalidRequest, match="must not hold a password"):
        await threaded(database.configure, "other", **inline)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="plugin_name"):
        await threaded(database.configure, "other", **root.config(plugin_name="mysql"))
    with pytest.raises(hvac.exceptions.InvalidRequest, match="unsupported parameter"):
        await threaded(database.configure, "other", **root.config(max_open_connections=4))
    with pytest.raises(hvac.exceptions.InvalidRequest, match="must name"):
        await threaded(database.create_role, "x", db_name="app", creation_statements=["SELECT 1"])
    # names that reach SQL are only those the path allows
    with pytest.raises(hvac.exceptions.InvalidRequest):
        await threaded(operator.adapter.get, '/v1/database/creds/a"b')
    # a role the connection does not allow
    await threaded(database.create_role, "stranger", db_name="app", creation_statements=CREATE)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not an allowed role"):
        await threaded(database.generate_credentials, "stranger")
    # statements that fail leave no role and no lease behind
    broken = [CREATE[0], 'GRANT SELECT ON no_such_table TO "{{name}}";']
    await threaded(database.create_role, "broken", db_name="app", creation_statements=broken)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="refused the statements"):
        await threaded(database.generate_credentials, "broken")
    admin = await root.cluster.admin()
    left = await admin.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%-broken-%'")
    await admin.close()
    assert left == []
    assert await rig.running.service.database.store.names(leases) == []
    # a connection with leases outstanding cannot be deleted
    creds = await threaded(database.generate_credentials, "readonly")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="outstanding"):
        await threaded(database.delete_connection, "app")
    await threaded(operator.sys.revoke_lease, creds["lease_id"])
    await threaded(database.delete_connection, "app")
    with pytest.raises(hvac.exceptions.InvalidPath):
        await threaded(database.read_connection, "app")


# -- the pure parts ----------------------------------------------------------------------


def test_lease_ttl_is_capped_by_the_max_from_issue_and_by_the_token() -> None:
    role = Role("r", "db", ("x",), default_ttl=60, max_ttl=300)
    never = float("inf")
    assert lease_ttl(0, role, 1000, 1000, never) == (60, None)
    assert lease_ttl(120, role, 1000, 1100, never) == (120, None)
    ttl, warning = lease_ttl(1000, role, 1000, 1100, never)
    assert ttl == 200
    assert warning is not None
    assert "max_ttl" in warning
    assert lease_ttl(0, Role("r", "db", ("x",)), 0, 0, never) == (768 * 3600, None)
    # the token that created it expires first: the lease ends with it
    ttl, warning = lease_ttl(120, role, 1000, 1100, 1150)
    assert ttl == 50
    assert warning is not None
    assert "token" in warning
    assert lease_ttl(0, role, 1000, 1000, 1060) == (60, None)


def test_identifiers_are_quoted() -> None:
    assert quote_ident('a"b') == '"a""b"'
    for bad in ("", "a\x00b", "x" * 64):
        with pytest.raises(UsageError):
            quote_ident(bad)


def test_allowed_roles_take_globs() -> None:
    connection = Connection("db", "postgresql://h/db", "", "", allowed_roles=("app-*", "ro"))
    assert connection.allows("app-reader")
    assert connection.allows("ro")
    assert not connection.allows("rox")
    assert not connection.allows("other")
    assert Connection("db", "postgresql://h/db", "", "", ("*",)).allows("anything")
    assert not Connection("db", "postgresql://h/db", "", "").allows("ro")


def test_scram_verifier_answers_rfc_7677s_exchange() -> None:
    """RFC 7677 section 3: the verifier of "pencil" with the example's salt checks the
    example's client proof and yields its server signature."""
    verifier = scram_verifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    head, salt, keys = verifier.split("$")
    assert head == "SCRAM-SHA-256"
    assert salt == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    signature = hmac.new(server, auth, hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(
        a ^ b for a, b in zip(proof, hmac.new(stored, auth, hashlib.sha256).digest(), strict=True)
    )
    assert hashlib.sha256(client_key).digest() == stored
