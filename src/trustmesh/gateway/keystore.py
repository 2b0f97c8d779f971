"""Where gateway API keys live, how they are managed, and how the gateway checks them.

The keys are rows of one table, ``gateway_api_keys`` (SQLAlchemy 2 async through
:mod:`trustmesh.store`), in the SQLite file ``<state>/gateway/keys.db`` (0600 in a 0700
directory), written and read by gateways only: the admin API
(:mod:`trustmesh.gateway.admin_app`, which ``trustmesh gateway key …`` calls) manages the
keys. A row holds the key's digests, never its secret (:mod:`trustmesh.gateway.apikeys`).

The gateway never asks the database per request. :class:`ApiKeyVerifier` holds a
snapshot of every record and reloads it when it is older than ``refresh`` (at most one
second), one load at a time however many requests wait. So a hot key costs a dictionary
look-up and one SHA-256; a revocation (or a rotation's end of grace) is seen within
``refresh`` plus one load (at the next decision, when the change came through this
gateway's admin API); and a flood of random keys costs the database nothing (an
unknown id is a miss in the snapshot, never a query). A new or rotated key works within
the same delay. When the database cannot be read the verifier fails closed: it raises
:class:`~trustmesh.errors.UnavailableError` and tries again one ``refresh`` later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.exc import IntegrityError

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import ConflictError, NotFoundError, UnavailableError, UsageError
from trustmesh.gateway.apikeys import (
    IssuedKey,
    KeyDecision,
    KeyRecord,
    check_name,
    check_roles,
    check_scopes,
    decide,
    hash_key,
    is_key_id,
    new_key,
    parse_key,
    principal_of,
)
from trustmesh.platform.admin import Actor, named_by
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk import store_tls
from trustmesh.store import SqlStore, create_engine, sqlite_url
from trustmesh.store.shared import component_url

log = logging.getLogger("trustmesh.gateway")
__all__ = [
    "MAX_GRACE",
    "REFRESH_SECONDS",
    "ApiKeyVerifier",
    "KeyStore",
    "SqlKeyStore",
    "add_key",
    "keys_db_path",
    "open_keystore",
    "revoke_key",
    "rotate_key",
]

#: How old the verifier's snapshot may grow before it is reloaded.
REFRESH_SECONDS: Final = 1.0
#: The longest a rotated-out secret may stay valid.
MAX_GRACE: Final = timedelta(days=7)

metadata = MetaData()

api_keys = Table(
    "gateway_api_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("scopes", Text, nullable=False),  # route names and '*', space-separated
    Column("roles", Text, nullable=False, default=""),
    Column("secret_hash", String(64), nullable=False),  # SHA-256 of the key, hex
    Column("previous_hash", String(64)),  # the secret before the last rotation
    Column("previous_until", BigInteger),  # ... accepted until then
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("revoked_at", BigInteger),
    Column("rotated_at", BigInteger),
)


class KeyStore(Protocol):
    """The records of the gateway's API keys. Times are epoch seconds."""

    async def add(self, record: KeyRecord) -> None:
        """Insert; :class:`ConflictError` when the id exists."""

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def all(self) -> list[KeyRecord]: ...

    async def revoke(self, key_id: str, now: int) -> tuple[KeyRecord, bool]:
        """Revoke (idempotent); the record, and whether this call revoked it.
        :class:`NotFoundError` when there is no such key."""

    async def rotate(
        self, key_id: str, secret_hash: str, *, now: int, previous_until: int
    ) -> KeyRecord:
        """Make ``secret_hash`` current and keep the current one until
        ``previous_until``, atomically. :class:`NotFoundError`, or :class:`ConflictError`
        when the key is revoked."""

    async def close(self) -> None: ...


def _record(row: object) -> KeyRecord:
    m = row._mapping  # type: ignore[attr-defined]
    return KeyRecord(
        key_id=m["key_id"],
        name=m["name"],
        scopes=tuple(m["scopes"].split()),
        roles=tuple(m["roles"].split()),
        secret_hash=m["secret_hash"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        rotated_at=m["rotated_at"],
        previous_hash=m["previous_hash"],
        previous_until=m["previous_until"],
    )


class SqlKeyStore(SqlStore):
    """:class:`KeyStore` on SQLite (default) or PostgreSQL."""

    metadata = metadata

    async def add(self, record: KeyRecord) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(api_keys).values(
                        key_id=record.key_id,
                        name=record.name,
                        scopes=" ".join(record.scopes),
                        roles=" ".join(record.roles),
                        secret_hash=record.secret_hash,
                        previous_hash=record.previous_hash,
                        previous_until=record.previous_until,
                        created_at=record.created_at,
                        expires_at=record.expires_at,
                        revoked_at=record.revoked_at,
                        rotated_at=record.rotated_at,
                    )
                )
        except IntegrityError:
            raise ConflictError(f"a key {record.key_id!r} already exists") from None

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
        return _record(row) if row is not None else None

    async def all(self) -> list[KeyRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [_record(r) for r in rows]

    async def revoke(self, key_id: str, now: int) -> tuple[KeyRecord, bool]:
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        record = await self.get(key_id)
        if record is None:
            raise NotFoundError(f"no API key {key_id!r}")
        return record, done.rowcount == 1

    async def rotate(
        self, key_id: str, secret_hash: str, *, now: int, previous_until: int
    ) -> KeyRecord:
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(  # SET reads the row as it was: the current hash becomes previous
                    previous_hash=api_keys.c.secret_hash,
                    secret_hash=secret_hash,
                    previous_until=previous_until,
                    rotated_at=now,
                )
            )
        record = await self.get(key_id)
        if record is None:
            raise NotFoundError(f"no API key {key_id!r}")
        if done.rowcount != 1:
            raise ConflictError(f"API key {key_id} is revoked; add a new key")
        return record


def keys_db_path(state: Path) -> Path:
    return state.absolute() / "gateway" / "keys.db"


async def open_keystore(state: Path, config: TrustmeshConfig | None = None) -> SqlKeyStore:
    """The key store of the gateway of ``state`` (created if need be): in the gateway's
    role of the shared database where ``config`` has one, else an SQLite file."""
    shared = component_url(config, state, "gateway") if config is not None else None
    store = SqlKeyStore(
        create_engine(shared or sqlite_url(keys_db_path(state)), tls=store_tls.postgres)
    )
    try:
        await store.create()
    except BaseException:
        await store.close()
        raise
    return store


# --- management: each change is recorded as an event (never with a secret) -------------


def _change(
    sink: events.EventSink,
    code: Activity,
    message: str,
    record: KeyRecord,
    now: float,
    actor: Actor | None,
    **extra: int | str,
) -> tuple[events.Recorder, events.Event]:
    """The change's event (and the recorder to write it with once the change is made),
    built strictly before anything is written: input no event may carry is refused, and
    changes nothing. It says what the key is (never its secret), and who asked."""
    facts: dict[str, events.AttributeValue] = {
        "key_id": record.key_id,
        "key_name": record.name,
        "principal": principal_of(record.key_id),
        "scopes": " ".join(record.scopes),
        "roles": " ".join(record.roles),
        "expires_at": record.expires_at,
        **extra,
    }
    peer, attributes = named_by(actor, facts)
    recorder = events.Recorder(sink, component="gateway")
    when = datetime.fromtimestamp(now, UTC)
    made = recorder.build(
        code, message, now=when, peer_spiffe_id=peer, attributes=attributes, strict=True
    )
    return recorder, made


async def add_key(
    store: KeyStore,
    config: TrustmeshConfig,
    *,
    name: str,
    scopes: Sequence[str],
    roles: Sequence[str] = (),
    expires_in: timedelta | None = None,
    now: float,
    sink: events.EventSink,
    actor: Actor | None = None,
) -> IssuedKey:
    """Make a key for routes ``scopes`` (declared route names, or ``*``) whose principal
    carries ``roles`` (of ``auth.roles``). The key is in the result, and nowhere else."""
    routes = config.gateway.routes if config.gateway is not None else []
    record_name = check_name(name)
    checked_scopes = check_scopes(scopes, routes)
    checked_roles = check_roles(roles, config.auth.roles)
    expires_at = int(now + expires_in.total_seconds()) if expires_in is not None else None
    for _ in range(3):  # ids are 60 random bits: a clash is all but impossible
        key_id, key = new_key()
        record = KeyRecord(
            key_id=key_id,
            name=record_name,
            scopes=checked_scopes,
            roles=checked_roles,
            secret_hash=hash_key(key),
            created_at=int(now),
            expires_at=expires_at,
        )
        recorder, made = _change(
            sink, Activity.API_KEY_CREATED, "API key created", record, now, actor
        )
        try:
            await store.add(record)
        except ConflictError:
            continue
        recorder.write(made)
        return IssuedKey(record, key)
    raise ConflictError("could not find a free key id")  # pragma: no cover


def _check_id(key_id: str) -> None:
    if not is_key_id(key_id):
        raise NotFoundError(f"no API key {key_id!r} (an id is 12 characters a-z, 2-7)")


async def revoke_key(
    store: KeyStore,
    key_id: str,
    *,
    now: float,
    sink: events.EventSink,
    actor: Actor | None = None,
) -> tuple[KeyRecord, bool]:
    """Revoke a key (its current and any previous secret): the gateway refuses it
    within :data:`REFRESH_SECONDS` and a load. Revoking twice changes nothing; the flag
    says whether this call revoked it."""
    _check_id(key_id)
    record = await store.get(key_id)
    if record is None:
        raise NotFoundError(f"no API key {key_id!r}")
    recorder, made = _change(sink, Activity.API_KEY_REVOKED, "API key revoked", record, now, actor)
    record, newly = await store.revoke(key_id, int(now))
    if newly:
        recorder.write(made)
    return record, newly


async def rotate_key(
    store: KeyStore,
    key_id: str,
    *,
    grace: timedelta = timedelta(0),
    now: float,
    sink: events.EventSink,
    actor: Actor | None = None,
) -> IssuedKey:
    """A new secret for the same id, scopes and roles; the old one stays valid for
    ``grace`` (0: refused at once), then is refused. Only the last old secret is kept."""
    _check_id(key_id)
    if not timedelta(0) <= grace <= MAX_GRACE or grace.total_seconds() % 1:
        raise UsageError("the grace period must be whole seconds from 0 to 7d")
    record = await store.get(key_id)
    if record is None:
        raise NotFoundError(f"no API key {key_id!r}")
    if record.revoked_at is not None:
        raise ConflictError(f"API key {key_id} is revoked; add a new key")
    if record.expires_at is not None and now >= record.expires_at:
        raise ConflictError(f"API key {key_id} has expired; add a new key")
    grace_seconds = int(grace.total_seconds())
    recorder, made = _change(
        sink,
        Activity.API_KEY_ROTATED,
        "API key rotated",
        record,
        now,
        actor,
        grace_seconds=grace_seconds,
    )
    _, key = new_key(key_id)
    rotated = await store.rotate(
        key_id, hash_key(key), now=int(now), previous_until=int(now) + grace_seconds
    )
    recorder.write(made)
    return IssuedKey(rotated, key)


# --- verification at the gateway -------------------------------------------------------


class ApiKeyVerifier:
    """Decides presented keys from a snapshot of the store, at most ``refresh`` old."""

    def __init__(
        self,
        store: KeyStore,
        *,
        declared_roles: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
        refresh: float = REFRESH_SECONDS,
    ) -> None:
        if not 0 < refresh <= REFRESH_SECONDS:
            raise UsageError(f"refresh must be in (0, {REFRESH_SECONDS}] seconds")
        self.store = store
        self.declared_roles = frozenset(declared_roles) if declared_roles is not None else None
        self.clock = clock
        self.refresh = refresh
        self._records: Mapping[str, KeyRecord] = {}
        self._loaded_at: float | None = None  # the last attempt, successful or not
        self._healthy = False
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        state: Path,
        config: TrustmeshConfig,
        *,
        clock: Callable[[], float] = time.time,
        refresh: float = REFRESH_SECONDS,
    ) -> ApiKeyVerifier:
        """The verifier of the keys under ``<state>/gateway/``; loads them once."""
        store = await open_keystore(state, config)
        verifier = cls(store, declared_roles=config.auth.roles, clock=clock, refresh=refresh)
        try:
            await verifier._snapshot(clock())
        except BaseException:
            await store.close()
            raise
        return verifier

    def reload_soon(self) -> None:
        """The store just changed (an admin action here): the next decision reloads, not
        one ``refresh`` later."""
        self._loaded_at = None

    def _fresh(self, now: float) -> bool:
        loaded = self._loaded_at
        return loaded is not None and loaded <= now < loaded + self.refresh

    async def _snapshot(self, now: float) -> Mapping[str, KeyRecord]:
        if not self._fresh(now):
            async with self._lock:  # one load however many requests wait for it
                if not self._fresh(now):
                    await self._load(now)
        if not self._healthy:
            raise UnavailableError("the API key store cannot be read")
        return self._records

    async def _load(self, now: float) -> None:
        self._loaded_at = now  # what a load shows is at least this recent
        try:
            records = await self.store.all()
        except Exception:
            log.warning("the API key store cannot be read", exc_info=True)
            self._healthy = False
            return
        self._records = {r.key_id: r for r in records}
        self._healthy = True

    async def verify(self, presented: str, route_name: str) -> KeyDecision:
        """May the key ``presented`` (see :func:`apikeys.presented_api_key`) call the
        route named ``route_name``? A malformed key is refused without a look-up.
        Raises :class:`UnavailableError` when the store cannot be read (fail closed)."""
        parsed = parse_key(presented)
        if parsed is None:
            return KeyDecision(False, Reason.API_KEY_MALFORMED)
        now = self.clock()
        records = await self._snapshot(now)
        return decide(
            records.get(parsed.key_id),
            presented,
            route_name,
            now=now,
            declared_roles=self.declared_roles,
        )

    async def close(self) -> None:
        await self.store.close()
