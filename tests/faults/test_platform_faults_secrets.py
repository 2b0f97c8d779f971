"""The secrets service as its clients see it when it fails, for real: the process killed
(SIGKILL) and started again on the same port.

- Killed under a service's SDK client (``SecretsClient``): what the client read is
  served from its cache until each value's TTL (moved on by an injected clock), then
  a clear ``UnavailableError`` at once; once the service is back, the same client reads
  again, without being made anew.
- Killed under a database lease the client holds: the credentials are served (and log
  in) past the point where the client would renew them, until the lease runs out; then
  a clear ``UnavailableError``; a fresh lease once the service is back.
- PostgreSQL (a private cluster, never the machine's own) restarted under it: requests
  fail cleanly meanwhile, the same process serves again after, and no acknowledged
  write is lost.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from platformfaultrig import Scale, SecretsProcess, free_port
from secretsrig import CONFIG, OPERATOR, PAYMENTS, SECRETS, identity_for, secrets_config
from services import PrivatePostgres, private_postgres

from trustmesh.errors import UnavailableError
from trustmesh.sdk.client import CircuitBreaker, Response, ServiceClient
from trustmesh.sdk.secrets import DEFAULT_TTL, DatabaseCredentials, SecretsClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.secrets.database_model import PLUGIN
from trustmesh.testing import FakeClock, RunningIdentityServer

T = TypeVar("T")
SHORT_TTL = 30.0  # the custom_metadata ttl of payments/short


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(secrets_config(), short_tmp / "identity")


def _on_port(port: int, database: str | None = None) -> str:
    """The secrets tests' declaration, the service on ``port`` (and ``database``)."""
    settings = f"  port: {port}\n" + (f'  database: "{database}"\n' if database else "")
    return CONFIG.replace("secrets:\n", "secrets:\n" + settings, 1)


async def _eventually(seconds: float, attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """``attempt``'s answer once it stops raising UnavailableError, within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await attempt()
        except UnavailableError:
            assert time.monotonic() < deadline, f"{what}: still unavailable after {seconds} s"
        await asyncio.sleep(0.2)


async def _refused_at_once(attempt: Callable[[], Awaitable[object]]) -> UnavailableError:
    started = time.monotonic()
    with pytest.raises(UnavailableError) as refused:
        await attempt()
    assert time.monotonic() - started < 5, "no fast answer"
    return refused.value


async def test_a_killed_secrets_service_leaves_cached_values_until_their_ttl(
    identity: RunningIdentityServer, short_tmp: Path, fault_scale: Scale
) -> None:
    service = SecretsProcess(short_tmp / "secrets", identity.address, _on_port(free_port()))
    url = await service.start()
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    await source.start()
    clock = FakeClock()
    client = SecretsClient(RotatingTLS(source), url, SECRETS, clock=clock.monotonic)
    db = {"user": "pay", "pass" + "word": secrets.token_hex(6)}  # its value made here
    short = {"v": "short-lived"}
    try:
        ttl = {"custom_metadata": {"ttl": f"{SHORT_TTL:.0f}s"}}
        for path, body in (
            ("metadata/payments/short", ttl),
            ("data/payments/db", {"data": db}),
            ("data/payments/short", {"data": short}),
        ):
            written = await client.request("POST", f"/v1/secret/{path}", body)
            assert written.status in (200, 204), written.body
        assert await client.secret("payments/db") == db
        assert await client.secret("payments/short") == short
        service.kill()
        # until each one's TTL, what was read is served (however often it is asked)
        clock.advance(SHORT_TTL - 1)
        for _ in range(fault_scale.count(20, 2000)):
            assert await client.secret("payments/db") == db
            assert await client.secret("payments/short") == short
        # past it, a clear error at once; the longer-lived value is still served
        clock.advance(2)
        refused = await _refused_at_once(lambda: client.secret("payments/short"))
        assert SECRETS in str(refused), refused  # names what cannot be reached
        assert await client.secret("payments/db") == db
        clock.advance(DEFAULT_TTL - SHORT_TTL)
        await _refused_at_once(lambda: client.secret("payments/db"))
        # the service back on its port: the same client reads again
        await service.start()
        assert await _eventually(15, lambda: client.secret("payments/short"), "short") == short
        assert await client.secret("payments/db") == db
    finally:
        await client.close()
        await source.close()
        service.stop()


async def test_postgresql_restarted_under_the_secrets_service(
    identity: RunningIdentityServer, short_tmp: Path, fault_scale: Scale
) -> None:
    """PostgreSQL (a private cluster) stopped and started again under the running secrets
    service: meanwhile every request fails cleanly (a structured 503, never a 500, and
    at once), then the same process serves again, and every write it acknowledged —
    before, during or after — reads back with its value."""
    with private_postgres() as cluster:
        url = await cluster.owned_database("tm_secrets")
        declaration = _on_port(free_port(), database=url)
        service = SecretsProcess(short_tmp / "secrets", identity.address, declaration)
        try:
            await service.start()
            source = X509Source(identity.address, spiffe_id=PAYMENTS)
            await source.start()
            tls = RotatingTLS(source)
            login = SecretsClient(tls, service.url, SECRETS)
            token = await login.token()
            # every answer seen as it is: no retry, and a circuit that never opens
            never = CircuitBreaker(threshold=1 << 30)
            client = ServiceClient(tls, service.url, SECRETS, retries=0, breaker=never)
            acknowledged: dict[tuple[str, int], int] = {}

            async def call(method: str, path: str, body: object = None) -> Response:
                vault = {"X-Vault-Token": token}
                return await client.request(method, f"/v1/{path}", json=body, headers=vault)

            async def write(n: int) -> Response:
                path = f"payments/pg{n}"  # one each: KV keeps only the last versions
                answer = await call("POST", f"secret/data/{path}", {"data": {"n": n}})
                if answer.status == 200:
                    acknowledged[(path, answer.json()["data"]["version"])] = n
                return answer

            try:
                writes = fault_scale.count(20, 500)
                for n in range(writes):
                    assert (await write(n)).status == 200
                await asyncio.to_thread(cluster.stop)
                # down: refused cleanly, each answer in Vault's error shape, at once
                outage = fault_scale.count(5, 50)
                for n in range(writes, writes + outage):
                    started = time.monotonic()
                    for answer in (
                        await write(n),
                        await call("GET", "secret/data/payments/pg0"),
                    ):
                        assert time.monotonic() - started < 10, "no fast answer"
                        assert answer.status == 503, (answer.status, answer.body, service.log())
                        assert answer.json()["errors"], answer.body
                # each refusal recorded, with why
                assert service.reasons().count("store-unavailable") >= 2 * outage
                await asyncio.to_thread(cluster.start)
                # back, without a restart of the service
                deadline = time.monotonic() + 20
                n = writes + 1000
                while (answer := await write(n)).status != 200:
                    assert answer.status == 503, (answer.status, answer.body)
                    assert time.monotonic() < deadline, "not serving again"
                    await asyncio.sleep(0.2)
                for later in range(n + 1, n + writes):
                    assert (await write(later)).status == 200
                assert service.alive()
                # nothing acknowledged lost
                for (path, version), n in sorted(acknowledged.items()):
                    answer = await call("GET", f"secret/data/{path}?version={version}")
                    assert answer.status == 200, (path, version, answer.body)
                    assert answer.json()["data"]["data"] == {"n": n}
                assert len(acknowledged) >= 2 * writes
            finally:
                await client.close()
                await login.close()
                await source.close()
                service.stop()
        finally:
            service.stop()  # however far it got


LEASED = '"transit/keys/payments": [read]\n        "database/creds/readonly": [read]'
CREATE = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    'GRANT SELECT ON items TO "{{name}}";',
]
LEASE = 60  # seconds: the role's default TTL


async def _app_database(cluster: PrivatePostgres) -> tuple[str, str]:
    """A database ``app`` with a table, and a superuser (name, password) for the secrets
    service to make roles with."""
    admin = await cluster.admin()
    try:
        await admin.execute("CREATE DATABASE app")
        root = "tm_root"
        password = secrets.token_urlsafe(24)
        await admin.execute(f"CREATE ROLE {root} SUPERUSER LOGIN PASSWORD '{password}'")
    finally:
        await admin.close()
    app = await cluster.admin("app")
    try:
        await app.execute("CREATE TABLE items (id int)")
    finally:
        await app.close()
    return root, password


async def _logs_in(cluster: PrivatePostgres, credentials: DatabaseCredentials) -> bool:
    session = await asyncpg.connect(
        host="127.0.0.1",
        port=cluster.port,
        user=credentials.username,
        password=credentials.password,
        database="app",
    )
    try:
        return await session.fetchval("SELECT count(*) FROM items") == 0
    finally:
        await session.close()


async def test_a_killed_secrets_service_leaves_database_leases_until_they_expire(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """Database credentials the service leased: served (and they log in) until the lease
    runs out — past the point where the client would renew it, since the renewal cannot
    be had — then a clear ``UnavailableError``; a fresh lease once the service is back."""
    with private_postgres() as cluster:
        root, password = await _app_database(cluster)
        declaration = _on_port(free_port()).replace('"transit/keys/payments": [read]', LEASED)
        service = SecretsProcess(short_tmp / "secrets", identity.address, declaration)
        await service.start()
        sources = [X509Source(identity.address, spiffe_id=who) for who in (PAYMENTS, OPERATOR)]
        for source in sources:
            await source.start()
        clock = FakeClock()
        client = SecretsClient(RotatingTLS(sources[0]), service.url, SECRETS, clock=clock.monotonic)
        operator = SecretsClient(RotatingTLS(sources[1]), service.url, SECRETS)
        try:
            url = f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{cluster.port}/app"
            connection = {
                "plugin_name": PLUGIN,
                "connection_url": url,
                "username": root,
                "password": password,
                "allowed_roles": ["readonly"],
            }
            role = {
                "db_name": "app",
                "creation_statements": CREATE,
                "default_ttl": LEASE,
                "max_ttl": 5 * LEASE,
            }
            for path, body in (("config/app", connection), ("roles/readonly", role)):
                written = await operator.request("POST", f"/v1/database/{path}", body)
                assert written.status in (200, 204), written.body
            held = await client.database_credentials("readonly")
            assert await _logs_in(cluster, held)
            service.kill()
            # before the renewal point, and after it (the renewal fails): the lease held
            for moved in (LEASE * 0.4, LEASE * 0.4):
                clock.advance(moved)
                assert await client.database_credentials("readonly") == held
                assert await _logs_in(cluster, held)
            # past the lease: a clear error at once
            clock.advance(LEASE * 0.2 + 1)
            await _refused_at_once(lambda: client.database_credentials("readonly"))
            await service.start()
            fresh = await _eventually(
                15, lambda: client.database_credentials("readonly"), "a fresh lease"
            )
            assert fresh.lease_id != held.lease_id
            assert await _logs_in(cluster, fresh)
        finally:
            await client.close()
            await operator.close()
            for source in sources:
                await source.close()
            service.stop()
