"""``trustmesh up``'s first step in the scale-out configuration: each component's schema
and role in the shared PostgreSQL database (``shared.postgres``,
:mod:`trustmesh.store.shared`), made or brought back to what the declaration says.

Connected once as the owner ``shared.postgres`` names, for each role:

- the role exists, may log in with its (sealed) password, and may do nothing else
  (``NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS``); its
  ``search_path`` is its schema;
- the provider, the secrets service and the gateway own their schema, and no other
  component's role may even look into it;
- the audit collector's schema is the owner's: the owner makes its tables, and the
  collector's role may INSERT and SELECT on them and nothing more (``trustmesh audit
  grants``); with retention declared, the pruner's role may DELETE records (and nothing
  else), as :func:`~trustmesh.audit.ledger_schema.prune_grants` says.

Idempotent: a second ``up`` finds everything in place and sets each password again.

With ``sslmode=verify-full`` (or ``verify-ca``) and no ``sslrootcert``, the owner checks
the server against the workload CA's roots in the state directory, as the components
will (:mod:`trustmesh.sdk.store_tls`); the server's certificate comes from
``trustmesh identity server-cert``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from trustmesh import crypto
from trustmesh.cli.audit_export_cmd import grants_for, table_statements
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import ConfigError, UnavailableError
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.sdk.tls import store_client_context
from trustmesh.store.shared import SharedRole, owner_dsn, roles_of

__all__ = ["provision"]

_LIMITED = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
#: What ``ALTER ROLE`` may set again as an owner that is not a superuser (PostgreSQL
#: lets only a superuser name the others, even to keep them off: they are checked).
_KEPT = "NOCREATEDB NOCREATEROLE NOINHERIT"
_ATTRIBUTES = (
    "SELECT rolsuper AS superuser, rolreplication AS replication, rolbypassrls AS bypassrls "
    "FROM pg_roles WHERE rolname = $1"
)
_CONNECT_TIMEOUT = 10.0


def provision(config: TrustmeshConfig, state: Path, log: Callable[[str], None]) -> None:
    """Make every role and schema ``config`` needs in the shared database (nothing
    without ``shared.postgres``). ConfigError when the owner may not; UnavailableError
    when the database cannot be reached."""
    roles = roles_of(config, state)
    if roles:
        asyncio.run(_provision(config, state, roles))
        log("shared PostgreSQL: " + ", ".join(f"{r.role} ({r.schema})" for r in roles))


async def _provision(config: TrustmeshConfig, state: Path, roles: tuple[SharedRole, ...]) -> None:
    import asyncpg  # type: ignore[import-untyped]

    seal_key = crypto.load_seal_key(state, dev=config.dev)
    dsn, tls = _owner_tls(owner_dsn(config), state)
    try:
        connection = await asyncpg.connect(dsn, ssl=tls, timeout=_CONNECT_TIMEOUT)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise UnavailableError(f"shared.postgres cannot be reached: {exc}") from None
    try:
        for role in roles:
            await _role(connection, role, role.password(seal_key, create=True))
        audit = {r.component: r for r in roles if r.component.startswith("audit")}
        if "audit" in audit:
            await _audit_tables(connection, audit["audit"], audit.get("audit_pruner"))
    except asyncpg.InsufficientPrivilegeError as exc:
        raise ConfigError(
            f"the shared.postgres role may not provision the components' roles and "
            f"schemas ({exc}): it needs CREATEROLE and CREATE on the database"
        ) from None
    finally:
        await connection.close()


def _owner_tls(dsn: str, state: Path) -> tuple[str, ssl.SSLContext | None]:
    """The owner's DSN and TLS: for ``sslmode=verify-full|verify-ca`` without
    ``sslrootcert``, a context trusting the workload CA (its roots in ``state``); else
    the DSN as libpq would take it (asyncpg reads its ssl parameters)."""
    parsed = make_url(dsn)
    mode = parsed.query.get("sslmode")
    if mode not in ("verify-full", "verify-ca") or parsed.query.get("sslrootcert"):
        return dsn, None
    roots = IdentityPaths(state).published_roots()
    if not roots:
        raise ConfigError(
            f"shared.postgres asks for sslmode={mode} against the workload CA, which does "
            f"not exist yet in {state}: start once without it, then issue the server's "
            "certificate with `trustmesh identity server-cert`"
        )
    context = store_client_context(None, trust_pem=roots, check_hostname=mode == "verify-full")
    plain = parsed.difference_update_query(["sslmode", "sslrootcert"])
    return plain.render_as_string(hide_password=False), context


async def _role(connection: Any, role: SharedRole, password: str) -> None:
    """The role, limited to logging in, its search path, and (except the audit log's)
    its own schema."""
    if not password.isalnum():  # made by SharedRole.password: hex, never quoted
        raise ConfigError(f"the sealed password of {role.role} is not one trustmesh made")
    name, schema = f'"{role.role}"', f'"{role.schema}"'
    async with connection.transaction():
        found = await connection.fetchrow(_ATTRIBUTES, role.role)
        if found is None:
            await connection.execute(
                f"CREATE ROLE {name} WITH LOGIN PASSWORD '{password}' {_LIMITED}"
            )
        elif any(found.values()):  # only a superuser grants these: never take them on
            raise ConfigError(
                f"role {role.role!r} exists with {', '.join(k for k, v in found.items() if v)}: "
                "a component never runs as such a role; give this stack another shared.prefix"
            )
        else:
            await connection.execute(f"ALTER ROLE {name} WITH LOGIN PASSWORD '{password}' {_KEPT}")
        await connection.execute(f"ALTER ROLE {name} SET search_path = {schema}")
        if role.component.startswith("audit"):
            await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            return
        await connection.execute(f"GRANT {name} TO CURRENT_USER")  # to give it a schema
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {name}")
        owner = await connection.fetchval(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", role.schema
        )
        if owner != role.role:
            raise ConfigError(
                f"schema {role.schema!r} belongs to {owner!r}, not {role.role!r}: give "
                "this stack another shared.prefix, or drop the schema"
            )


async def _audit_tables(connection: Any, audit: SharedRole, pruner: SharedRole | None) -> None:
    """The audit log's tables, made by the owner, and the grants that let the collector
    append and read (and the pruner prune) and nothing else."""
    prune_role = pruner.role if pruner is not None else None
    async with connection.transaction():
        for statement in table_statements(audit.schema):
            await connection.execute(statement)
        for statement in grants_for(audit.role, schema=audit.schema, prune_role=prune_role):
            await connection.execute(statement)
        await connection.execute("RESET search_path")
