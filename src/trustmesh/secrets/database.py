"""Vault's database secrets engine for PostgreSQL (``postgresql-database-plugin``),
mounted at ``database/``: connections configured by name, roles that say how a login is
made, credentials issued under a lease, leases renewed up to the role's max TTL and
revoked on demand or at expiry, and the root password rotated so that only trustmesh
knows it. :mod:`trustmesh.secrets.database_api` answers the HTTP paths.

At rest, in tables of its own on the service's engine, each connection (with its root
password), role and lease is sealed by the barrier, bound to its place
(``database/config/<name>``, ``database/roles/<name>``, ``database/lease/<lease id>``).
Beside a lease, in the clear: its connection's name and when it is due for revocation.

A credential's life:

1. **issue** — a random role name (``v-<who>-<role>-<random>-<time>``) and password
   (:mod:`secrets`). The lease is stored first, then the role's creation statements run
   in one transaction: a crash in between leaves a lease whose revocation finds no role,
   never a role that nothing will revoke. A failed creation is revoked at once.
2. **renew** — up to the role's max TTL from issue; the renew statements (by default
   ``ALTER ROLE … VALID UNTIL``) run before the new expiry is stored.
3. **revoke** — on ``sys/leases/revoke`` or once expired (:meth:`DatabaseEngine.tick`,
   every :data:`TICK_INTERVAL` seconds): the role's revocation statements (refused ones
   are logged), then, while the role still exists, the default — no more logins, its
   sessions ended, what it owns handed to the connection's user, its privileges and the
   role dropped. The lease is
   deleted only once ``pg_roles`` has no such role; a failure (the database is down)
   leaves it due, retried at every tick, never forgotten.

Identifiers written into SQL here are quoted (:func:`quote_ident`); generated names,
passwords and literals are drawn from fixed alphabets and checked before use. The root
password is never part of an answer. ``rotate-root`` stores the new password as pending
before ``ALTER ROLE`` runs (a connection whose password is refused tries the pending one
and keeps it), and the statement carries a SCRAM-SHA-256 verifier, not the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncEngine

from trustmesh.errors import PermissionDeniedError, TrustmeshError, UnavailableError, UsageError
from trustmesh.reasons import Reason
from trustmesh.secrets.barrier import Barrier
from trustmesh.secrets.database_model import (
    ALNUM,
    LEASE_RE,
    Connection,
    Lease,
    Role,
    describe,
    from_bytes,
    lease_ttl,
    new_username,
    quote_ident,
    random_text,
    render,
    scram_verifier,
    sql_literal,
    to_bytes,
    valid_until,
)
from trustmesh.secrets.database_store import DatabaseStore, LeaseRow, connections, leases, roles

__all__ = [
    "TICK_INTERVAL",
    "DatabaseEngine",
    "Issued",
    "Sweep",
]

log = logging.getLogger("trustmesh.secrets")

#: Seconds between two sweeps of expired leases (the server runs :meth:`DatabaseEngine.tick`).
TICK_INTERVAL: Final = 10.0
CONNECT_TIMEOUT: Final = 5.0
STATEMENT_TIMEOUT: Final = 30.0
TICK_BATCH: Final = 256

_T = TypeVar("_T")
#: Errors of the database or of the way to it (all but these are bugs).
_DB_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
#: Of those, the ones that say nothing about the statements: the database is not there.
_UNREACHABLE: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class Issued:
    lease: Lease
    password: str
    ttl: int


@dataclass(frozen=True)
class Sweep:
    """What one revocation pass did: leases revoked, and why each other one failed."""

    revoked: int = 0
    failed: Mapping[str, str] = dataclasses.field(default_factory=dict)


class _Locks:
    """One asyncio lock per key, kept while someone holds or waits for it."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._held.get(key, (asyncio.Lock(), 0))
        self._held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._held[key]
            if users == 1:
                del self._held[key]
            else:
                self._held[key] = (lock, users - 1)


# -- PostgreSQL --------------------------------------------------------------------------


async def _run(pg: Any, statements: Iterable[str], values: Mapping[str, str]) -> None:
    async with pg.transaction():
        for statement in statements:
            await pg.execute(render(statement, values))


async def _role_exists(pg: Any, username: str) -> bool:
    return bool(await pg.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", username))


async def _drop_role(pg: Any, username: str) -> None:
    """The default revocation: no more logins, the role's sessions ended, what it owns
    handed to the connection's user, its privileges (here and on shared objects) revoked,
    the role dropped."""
    role = quote_ident(username)
    await pg.execute(f"ALTER ROLE {role} NOLOGIN")
    try:
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE usename = $1 AND pid <> pg_backend_pid()",
            username,
        )
    except asyncpg.exceptions.InsufficientPrivilegeError:
        log.warning("secrets: may not end the sessions of %s; dropping it anyway", username)
    async with pg.transaction():
        await pg.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await pg.execute(f"DROP OWNED BY {role}")
        await pg.execute(f"DROP ROLE {role}")


async def _close(pg: Any) -> None:
    """End a session; one the database already lost is dropped where it stands."""
    try:
        await pg.close(timeout=CONNECT_TIMEOUT)
    except _DB_ERRORS:
        pg.terminate()


def _failure(exc: BaseException, connection: str, *hidden: str | None) -> TrustmeshError:
    """A database error as the API answers it: unreachable 503; refused statements 400."""
    detail = describe(exc, *hidden)
    if isinstance(exc, _UNREACHABLE):
        return UnavailableError(f"database {connection!r} is unreachable: {detail}")
    return UsageError(f"database {connection!r} refused the statements: {detail}")


# -- the engine --------------------------------------------------------------------------


class DatabaseEngine:
    """Connections, roles and leases over the store, sealed by ``barrier``;
    ``token_expiry``: when the token with this accessor expires (None: revoked, expired or
    unknown); ``clock``: epoch seconds."""

    def __init__(
        self,
        engine: AsyncEngine,
        barrier: Barrier,
        token_expiry: Callable[[str], Awaitable[float | None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = DatabaseStore(engine)
        self.barrier = barrier
        self.token_expiry = token_expiry
        self.clock = clock
        self._locks = _Locks()

    async def start(self) -> None:
        await self.store.create()

    # sealed values -----------------------------------------------------------------------

    def _seal(self, kind: str, name: str, value: Any) -> bytes:
        return self.barrier.seal_value(to_bytes(value), f"database/{kind}/{name}".encode())

    def _open(self, cls: type[_T], kind: str, name: str, blob: bytes) -> _T:
        return from_bytes(cls, self.barrier.open_value(blob, f"database/{kind}/{name}".encode()))

    async def connection(self, name: str) -> Connection | None:
        blob = await self.store.get(connections, name)
        return None if blob is None else self._open(Connection, "config", name, blob)

    async def role(self, name: str) -> Role | None:
        blob = await self.store.get(roles, name)
        return None if blob is None else self._open(Role, "roles", name, blob)

    async def _keep(self, connection: Connection) -> None:
        name = connection.name
        await self.store.put(connections, name, self._seal("config", name, connection))

    # connections -------------------------------------------------------------------------

    async def configure(self, name: str, body: Mapping[str, Any]) -> None:
        """Write ``database/config/<name>``; with ``verify_connection`` (the default)
        only once a connection with it works."""
        async with self._locks.hold(f"config/{name}"):
            connection = Connection.configured(name, await self.connection(name), body)
            if connection.verify_connection:
                try:
                    await _close(await self._open_pg(connection, connection.password))
                except _DB_ERRORS as exc:
                    detail = describe(exc, connection.password)
                    raise UsageError(f"error verifying the connection: {detail}") from None
            await self._keep(connection)

    async def connection_names(self) -> list[str]:
        return await self.store.names(connections)

    async def delete_connection(self, name: str) -> None:
        """Delete a connection that no lease needs any more (its leases could no longer
        be revoked: refused while one remains)."""
        async with self._locks.hold(f"config/{name}"):
            if await self.store.has_leases(name):
                raise UsageError(
                    f"leases on {name!r} are outstanding: revoke them (sys/leases/revoke-"
                    "prefix) before deleting the connection"
                )
            await self.store.drop(connections, name)

    async def _open_pg(self, connection: Connection, password: str) -> Any:
        return await asyncpg.connect(
            dsn=connection.dsn(password),
            timeout=CONNECT_TIMEOUT,
            command_timeout=STATEMENT_TIMEOUT,
        )

    async def _connect(self, name: str) -> tuple[Connection, Any]:
        """A session as ``name``'s root; a refused password gives way to one a rotation
        left pending, which is then kept. UnavailableError if it cannot be had."""
        connection = await self.connection(name)
        if connection is None:
            raise UnavailableError(f"no database connection named {name!r}")
        try:
            return connection, await self._open_pg(connection, connection.password)
        except asyncpg.InvalidPasswordError as exc:
            if connection.pending_password is None:
                raise _failure(exc, name) from None
        except _DB_ERRORS as exc:
            raise _failure(exc, name, connection.password) from None
        pending = connection.pending_password
        try:
            pg = await self._open_pg(connection, pending)
        except _DB_ERRORS as exc:
            raise _failure(exc, name, pending, connection.password) from None
        connection = replace(connection, password=pending, pending_password=None)
        await self._keep(connection)
        log.warning("secrets: database %r: the pending root password took effect", name)
        return connection, pg

    async def rotate_root(self, name: str) -> None:
        """A new random root password, set with ``ALTER ROLE`` (or the connection's root
        rotation statements) and kept sealed: from then on only this service knows it."""
        async with self._locks.hold(f"config/{name}"):
            current = await self.connection(name)
            if current is None:
                raise UsageError(f"no database connection named {name!r}")
            if not current.username or "{{password}}" not in current.connection_url:
                raise UsageError(
                    "rotate-root needs username and a connection_url that names {{password}}"
                )
            current, pg = await self._connect(name)
            new = random_text(ALNUM, 32)
            try:
                await self._keep(replace(current, pending_password=new))  # before it is set
                await self._set_root_password(pg, current, new)
            finally:
                await _close(pg)
            await self._keep(replace(current, password=new, pending_password=None))

    async def _set_root_password(self, pg: Any, current: Connection, new: str) -> None:
        try:
            if current.root_rotation_statements:
                values = {"name": current.username, "username": current.username}
                await _run(pg, current.root_rotation_statements, {**values, "password": new})
            else:
                role, verifier = quote_ident(current.username), scram_verifier(new)
                await pg.execute(f"ALTER ROLE {role} WITH PASSWORD {sql_literal(verifier)}")
        except _DB_ERRORS as exc:
            if not isinstance(exc, _UNREACHABLE):  # refused: the old password stands
                await self._keep(current)
            raise _failure(exc, current.name, new, current.password) from None

    # roles -------------------------------------------------------------------------------

    async def write_role(self, name: str, body: Mapping[str, Any]) -> None:
        async with self._locks.hold(f"roles/{name}"):
            role = Role.configured(name, await self.role(name), body)
            await self.store.put(roles, name, self._seal("roles", name, role))

    async def role_names(self) -> list[str]:
        return await self.store.names(roles)

    async def delete_role(self, name: str) -> None:
        """Its leases stay and are revoked with the statements they were issued with."""
        await self.store.drop(roles, name)

    # credentials -------------------------------------------------------------------------

    async def issue(self, role_name: str, display_name: str, token_accessor: str) -> Issued:
        """A fresh login for ``role_name``, under a new lease that belongs to the token
        with ``token_accessor``: it never outlives that token, and goes with it."""
        role = await self.role(role_name)
        if role is None:
            raise UsageError(f"unknown role: {role_name}")
        connection = await self.connection(role.db_name)
        if connection is None:
            raise UsageError(f"role {role_name!r} names no database connection {role.db_name!r}")
        if not connection.allows(role_name):
            raise UsageError(f"{role_name!r} is not an allowed role of {role.db_name!r}")
        now = self.clock()
        not_after = await self.token_expiry(token_accessor)
        if not_after is None or not_after <= now:
            raise PermissionDeniedError("permission denied", reason=Reason.TOKEN_INACTIVE)
        ttl, _ = lease_ttl(0, role, now, now, not_after)
        lease = Lease(
            lease_id=f"database/creds/{role_name}/{random_text(ALNUM, 24)}",
            role=role_name,
            db_name=role.db_name,
            username=new_username(display_name, role_name, now),
            issued=now,
            expires=now + ttl,
            revocation_statements=role.revocation_statements,
            token_accessor=token_accessor,
        )
        password = random_text(ALNUM, 32)
        sealed = self._seal("lease", lease.lease_id, lease)
        await self.store.add_lease(
            lease.lease_id, lease.db_name, lease.expires, sealed, token_accessor
        )
        values = {
            "name": lease.username,
            "username": lease.username,
            "password": password,
            "expiration": valid_until(lease.expires),
        }
        try:
            _, pg = await self._connect(role.db_name)
            try:
                await _run(pg, role.creation_statements, values)
            except _DB_ERRORS as exc:
                raise _failure(exc, role.db_name, password) from None
            finally:
                await _close(pg)
        except Exception:
            try:  # nothing half made stays behind: revoked now, or due now
                await self._revoke_now(lease.lease_id)
            except Exception:
                log.exception("secrets: undoing the lease %s failed", lease.lease_id)
            raise
        return Issued(lease, password, ttl)

    # leases ------------------------------------------------------------------------------

    async def _lease(self, lease_id: str) -> tuple[Lease, LeaseRow] | None:
        if LEASE_RE.fullmatch(lease_id) is None:
            return None
        row = await self.store.lease(lease_id)
        if row is None:
            return None
        return self._open(Lease, "lease", lease_id, row.value), row

    async def lookup(self, lease_id: str) -> dict[str, Any]:
        found = await self._lease(lease_id)
        if found is None:
            raise UsageError("invalid lease")
        return found[0].lookup(self.clock())

    async def renew(self, lease_id: str, increment: float) -> tuple[Lease, int, str | None]:
        """Extend a lease by ``increment`` seconds from now (0: the role's default TTL),
        never past the role's max TTL from issue nor past the expiry of the token that
        created it; the role's renew statements run first."""
        async with self._locks.hold(lease_id):
            found = await self._lease(lease_id)
            if found is None:
                raise UsageError("lease not found")
            lease, row = found
            now = self.clock()
            if row.revoke_at < lease.expires or lease.expires <= now:
                raise UsageError("lease expired or revoked: it cannot be renewed")
            role = await self.role(lease.role)
            if role is None:
                raise UsageError(f"could not find role with name {lease.role!r}")
            not_after = await self._owner_expiry(lease)
            if not_after is None or not_after <= now:
                raise UsageError("the token that created this lease is no longer valid")
            ttl, warning = lease_ttl(increment, role, lease.issued, now, not_after)
            if ttl <= 0:
                raise UsageError("the lease has reached its max TTL")
            renewed = replace(lease, expires=now + ttl, last_renewal=now)
            _, pg = await self._connect(lease.db_name)
            try:
                if role.renew_statements:
                    values = {"name": lease.username, "username": lease.username}
                    until = valid_until(renewed.expires)
                    await _run(pg, role.renew_statements, {**values, "expiration": until})
                else:
                    await pg.execute(
                        f"ALTER ROLE {quote_ident(lease.username)} "
                        f"VALID UNTIL {sql_literal(valid_until(renewed.expires))}"
                    )
            except _DB_ERRORS as exc:
                raise _failure(exc, lease.db_name) from None
            finally:
                await _close(pg)
            sealed = self._seal("lease", lease_id, renewed)
            await self.store.change_lease(lease_id, value=sealed, revoke_at=renewed.expires)
        return renewed, ttl, warning

    async def revoke(self, lease_id: str) -> None:
        """Revoke a lease now (an unknown one: nothing to do). If the database cannot be
        reached the lease stays due and is retried at every tick (UnavailableError)."""
        if LEASE_RE.fullmatch(lease_id) is None:
            raise UsageError("invalid lease ID")
        failed = await self._revoke_now(lease_id)
        if failed:
            raise UnavailableError(
                f"the lease could not be revoked now ({failed}); it stays due and is retried "
                f"every {TICK_INTERVAL:g} s"
            )

    async def revoke_prefix(self, prefix: str) -> int:
        """Revoke the lease ``prefix`` names, or every lease under the folder ``prefix``;
        how many were revoked (UnavailableError if some could not be)."""
        if await self.store.lease(prefix) is not None:
            await self.revoke(prefix)
            return 1
        folder = prefix if prefix.endswith("/") else prefix + "/"
        ids = await self.store.names(leases, folder)
        sweep = await self._sweep(None, ids, due_now=True)
        if sweep.failed:
            raise UnavailableError(
                f"{len(sweep.failed)} of {len(ids)} leases could not be revoked now; they "
                f"stay due and are retried every {TICK_INTERVAL:g} s"
            )
        return sweep.revoked

    async def revoke_token_leases(self, accessor: str) -> Sweep:
        """Revoke every lease the token with ``accessor`` created (that token was just
        revoked); one that cannot be revoked now stays due and is retried every tick."""
        return await self._sweep(None, await self.store.token_leases(accessor), due_now=True)

    async def created_by(self, lease_id: str, accessor: str) -> bool:
        """Whether the token with ``accessor`` created the lease ``lease_id``."""
        if LEASE_RE.fullmatch(lease_id) is None:
            return False
        return await self.store.lease_token(lease_id) == accessor

    async def _owner_expiry(self, lease: Lease) -> float | None:
        if not lease.token_accessor:  # issued before leases knew their token
            return float("inf")
        return await self.token_expiry(lease.token_accessor)

    async def _revoke_now(self, lease_id: str) -> str | None:
        """Make a lease due now and revoke it; why it failed, or None."""
        row = await self.store.lease(lease_id)
        if row is None:
            return None
        sweep = await self._sweep(None, [lease_id], due_now=True)
        return sweep.failed.get(lease_id)

    async def tick(self, now: float) -> Sweep:
        """Revoke every lease expired at ``now`` (those that failed before too). Sealed,
        nothing opens: the leases wait for the next tick after the unseal."""
        if self.barrier.sealed:
            return Sweep()
        return await self._sweep(
            now, [lease_id for lease_id, _ in await self.store.due(now, TICK_BATCH)]
        )

    async def run(self, interval: float = TICK_INTERVAL) -> None:
        """:meth:`tick` every ``interval`` seconds until cancelled (the server runs it)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick(self.clock())
            except Exception:  # the store or a bug: logged, and the next tick tries again
                log.exception("secrets: the lease sweep failed")

    async def _sweep(self, now: float | None, lease_ids: list[str], due_now: bool = False) -> Sweep:
        """Revoke these leases, one session per connection; ``now``: only those still
        due then (one renewed meanwhile is not); ``due_now``: a failure makes it due."""
        by_db: dict[str, list[str]] = {}
        for lease_id in lease_ids:
            row = await self.store.lease(lease_id)
            if row is not None:
                by_db.setdefault(row.db_name, []).append(lease_id)
        revoked, failed = 0, {}
        for db_name, ids in by_db.items():
            try:
                _, pg = await self._connect(db_name)
            except TrustmeshError as exc:
                for lease_id in ids:
                    failed[lease_id] = await self._failed(lease_id, exc.detail, due_now)
                continue
            try:
                for lease_id in ids:
                    try:
                        revoked += await self._revoke_one(pg, lease_id, now)
                    except _DB_ERRORS as exc:
                        detail = describe(exc)
                        failed[lease_id] = await self._failed(lease_id, detail, due_now)
            finally:
                await _close(pg)
        return Sweep(revoked, failed)

    async def _revoke_one(self, pg: Any, lease_id: str, now: float | None) -> int:
        async with self._locks.hold(lease_id):
            found = await self._lease(lease_id)
            if found is None or (now is not None and found[1].revoke_at > now):
                return 0  # revoked or renewed meanwhile
            lease = found[0]
            if await _role_exists(pg, lease.username):
                role = await self.role(lease.role)
                statements = role.revocation_statements if role else lease.revocation_statements
                if statements:
                    await self._run_revocation(pg, lease, statements)
                if await _role_exists(pg, lease.username):
                    await _drop_role(pg, lease.username)
            await self.store.drop(leases, lease_id)
            return 1

    @staticmethod
    async def _run_revocation(pg: Any, lease: Lease, statements: tuple[str, ...]) -> None:
        """The role's revocation statements; refused ones are logged and the default
        revocation follows (the role must go either way)."""
        try:
            await _run(pg, statements, {"name": lease.username, "username": lease.username})
        except _DB_ERRORS as exc:
            if isinstance(exc, _UNREACHABLE):
                raise
            log.warning(
                "secrets: the revocation statements of %s failed (%s); dropping the role",
                lease.lease_id,
                describe(exc),
            )

    async def _failed(self, lease_id: str, detail: str, due_now: bool) -> str:
        at = self.clock() if due_now else float("inf")
        attempts = await self.store.failed_lease(lease_id, at)
        log.warning(
            "secrets: revoking %s failed (attempt %d), retried at the next tick: %s",
            lease_id,
            attempts,
            detail,
        )
        return detail
