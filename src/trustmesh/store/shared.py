"""Each component's place in the shared PostgreSQL database (``shared.postgres``,
:mod:`trustmesh.config.shared`): its schema, its role, the role's password (random,
sealed under ``<state>/shared/``) and the URL it connects with.

``trustmesh up`` provisions the roles and schemas before anything starts; each component
finds its URL here (:func:`component_url`), from the declaration and the state directory
alone. A role's default ``search_path`` is its schema, so a component's tables land
there without it naming the schema."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from trustmesh import crypto
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import ConfigError

__all__ = ["PROVISIONED", "SharedRole", "component_url", "owner_dsn", "roles_of"]

Component = Literal["auth", "secrets", "gateway", "audit", "audit_pruner"]
#: Every role ``up`` may provision: a store's, and the audit log's pruner.
PROVISIONED: Final[tuple[Component, ...]] = ("auth", "secrets", "gateway", "audit", "audit_pruner")
_CONTEXT: Final = b"trustmesh shared postgres role password v1"


@dataclass(frozen=True)
class SharedRole:
    """One component's role and schema in the shared database."""

    component: Component
    role: str
    schema: str
    password_file: Path

    def password(self, seal_key: crypto.SealKey, *, create: bool = False) -> str:
        """The role's password: opened from its sealed file, or (``create``: by ``up``
        only) made and written on first use. A component never makes one: a role whose
        password is not there was not provisioned."""
        if not create and not self.password_file.exists():
            raise ConfigError(
                f"the shared PostgreSQL role {self.role!r} is not provisioned yet "
                f"({self.password_file} is missing): `trustmesh up` provisions it"
            )
        raw = crypto.load_or_create_sealed(
            self.password_file,
            seal_key,
            context=_CONTEXT + self.role.encode(),
            make=lambda: secrets.token_hex(24).encode(),
        )
        return raw.decode()


def _stores(config: TrustmeshConfig) -> dict[Component, bool]:
    """Which components keep a store in the shared database: those that run and declare
    no ``database`` of their own."""
    audit = config.audit
    return {
        "auth": config.auth.database is None,
        "secrets": config.secrets is not None and config.secrets.database is None,
        "gateway": config.gateway is not None,
        "audit": audit is not None and audit.database is None,
        "audit_pruner": audit is not None
        and audit.database is None
        and audit.retention.database is None
        and (
            audit.retention.default is not None
            or any(age is not None for age in audit.retention.classes.values())
        ),
    }


def roles_of(config: TrustmeshConfig, state: Path) -> tuple[SharedRole, ...]:
    """The roles ``up`` provisions for ``config`` (none without ``shared.postgres``)."""
    if config.shared is None or config.shared.postgres is None:
        return ()
    prefix = config.shared.prefix
    folder = state.absolute() / "shared"
    return tuple(
        SharedRole(
            component,
            f"{prefix}_{component}",
            f"{prefix}_audit" if component == "audit_pruner" else f"{prefix}_{component}",
            folder / f"{component}.pg.sealed",
        )
        for component, stores in _stores(config).items()
        if stores
    )


def owner_dsn(config: TrustmeshConfig) -> str:
    """``shared.postgres`` as asyncpg takes it (``postgresql://``)."""
    if config.shared is None or config.shared.postgres is None:
        raise ConfigError("no shared.postgres in the declaration")
    return config.shared.postgres.replace("postgresql+asyncpg://", "postgresql://", 1)


def component_url(config: TrustmeshConfig, state: Path, component: Component) -> str | None:
    """The SQLAlchemy URL ``component`` connects to the shared database with, as its own
    role; None when it keeps its store elsewhere (no ``shared.postgres``, or a
    ``database`` of its own)."""
    for role in roles_of(config, state):
        if role.component == component:
            password = role.password(crypto.load_seal_key(state, dev=config.dev))
            parts = urlsplit(owner_dsn(config))
            host = str(parts.hostname)
            host = f"[{host}]" if ":" in host else host
            port = f":{parts.port}" if parts.port else ""
            netloc = f"{quote(role.role, safe='')}:{quote(password, safe='')}@{host}{port}"
            return urlunsplit(("postgresql+asyncpg", netloc, parts.path, parts.query, ""))
    return None
