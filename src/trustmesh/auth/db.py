"""The identity provider's tables and the queries it makes (SQLAlchemy 2 async).

Times are integer seconds since the epoch (one representation on SQLite and PostgreSQL).
Private signing keys are stored sealed; client secrets only as a hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    false,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select, Update

from trustmesh.auth.keys import KeyState
from trustmesh.errors import ConflictError, NotFoundError
from trustmesh.store import SqlStore, append_in_order

metadata = MetaData()

clients = Table(
    "auth_clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("auth_method", String(32), nullable=False),
    Column("spiffe_id", String(2048), unique=True),
    Column("secret_hash", String(128)),
    Column("jwks", Text),
    Column("scopes", Text, nullable=False, default=""),
    Column("audiences", Text, nullable=False, default=""),
    Column("managed", Integer, nullable=False, default=0),  # derived from the declaration
    Column("redirect_uris", Text, nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
)

signing_keys = Table(
    "auth_signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("sealed_private", LargeBinary, nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("activate_at", BigInteger, nullable=False),
    Column("retire_at", BigInteger),
    Column("remove_at", BigInteger),
)

revocations = Table(
    "auth_revocations",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("jti", String(128), nullable=False, unique=True),
    Column("client_id", String(128), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,  # a feed: a key is never handed out twice
)

users = Table(
    "auth_users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("username", String(256), nullable=False, unique=True),  # normalized login name
    Column("password_hash", String(256), nullable=False),  # argon2id PHC string
    Column("roles", Text, nullable=False, default=""),
    Column("totp_sealed", LargeBinary),  # the TOTP secret, sealed
    Column("totp_last_step", BigInteger),
    Column("locked", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
)

refresh_families = Table(
    "auth_refresh_families",
    metadata,
    Column("family_id", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("subject", String(2048), nullable=False),
    Column("scope", Text, nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),  # absolute: rotation never extends it
    Column("revoked_at", BigInteger),
    Column("revoked_reason", String(64)),
    # started over mTLS (its access tokens certificate-bound): refreshed only over mTLS
    Column("bound", Boolean, nullable=False, server_default=false()),
)

refresh_tokens = Table(
    "auth_refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # SHA-256 of the token, hex
    Column("family_id", String(64), nullable=False, index=True),
    Column("issued_at", BigInteger, nullable=False),
    Column("used_at", BigInteger),
)

used_assertions = Table(
    "auth_used_assertions",
    metadata,
    Column("key", String(512), primary_key=True),  # client_id + " " + jti
    Column("expires_at", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Client:
    """An OAuth client. ``auth_method`` is how it authenticates at the token endpoint:
    ``tls_client_auth`` (RFC 8705: its certificate carries ``spiffe_id``),
    ``private_key_jwt`` (RFC 7523: assertions signed with a key in ``jwks``) or
    ``client_secret_basic`` (a generated secret, stored hashed)."""

    client_id: str
    auth_method: str
    spiffe_id: str | None = None
    secret_hash: str | None = None
    jwks: dict[str, object] | None = None
    scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    managed: bool = False
    created_at: int = 0
    redirect_uris: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredKey:
    state: KeyState
    alg: str
    sealed_private: bytes
    public_jwk: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class Revocation:
    seq: int
    jti: str
    expires_at: int


def _client(row: object) -> Client:
    m = row._mapping  # type: ignore[attr-defined]
    return Client(
        client_id=m["client_id"],
        auth_method=m["auth_method"],
        spiffe_id=m["spiffe_id"],
        secret_hash=m["secret_hash"],
        jwks=json.loads(m["jwks"]) if m["jwks"] else None,
        scopes=tuple(m["scopes"].split()),
        audiences=tuple(m["audiences"].split()),
        managed=bool(m["managed"]),
        created_at=m["created_at"],
        redirect_uris=tuple(m["redirect_uris"].split()),
    )


def _client_values(client: Client) -> dict[str, object]:
    return {
        "client_id": client.client_id,
        "auth_method": client.auth_method,
        "spiffe_id": client.spiffe_id,
        "secret_hash": client.secret_hash,
        "jwks": json.dumps(client.jwks) if client.jwks is not None else None,
        "scopes": " ".join(client.scopes),
        "audiences": " ".join(client.audiences),
        "managed": int(client.managed),
        "created_at": client.created_at,
        "redirect_uris": " ".join(client.redirect_uris),
    }


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    password_hash: str = field(repr=False)
    roles: tuple[str, ...] = ()
    totp_sealed: bytes | None = field(default=None, repr=False)
    totp_last_step: int | None = None
    locked: bool = False
    created_at: int = 0

    @property
    def mfa_enrolled(self) -> bool:
        return self.totp_sealed is not None


def _user(row: object) -> User:
    m = row._mapping  # type: ignore[attr-defined]
    return User(
        user_id=m["user_id"],
        username=m["username"],
        password_hash=m["password_hash"],
        roles=tuple(m["roles"].split()),
        totp_sealed=m["totp_sealed"],
        totp_last_step=m["totp_last_step"],
        locked=bool(m["locked"]),
        created_at=m["created_at"],
    )


@dataclass(frozen=True)
class RefreshFamily:
    family_id: str
    client_id: str
    subject: str
    scope: str
    expires_at: int
    bound: bool = False


@dataclass(frozen=True)
class RefreshOutcome:
    """What presenting a refresh token did: ``token`` is the new one (rotated) when
    ``status`` is ``rotated``; ``reused`` means the family is now revoked."""

    status: str  # rotated | reused | revoked | expired | unknown | needs-mtls
    token: str | None = None
    family: RefreshFamily | None = None


def _family(row: object) -> RefreshFamily:
    m = row._mapping  # type: ignore[attr-defined]
    return RefreshFamily(
        m["family_id"], m["client_id"], m["subject"], m["scope"], m["expires_at"], m["bound"]
    )


def _refresh_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _family_of(token_hash: str) -> Select[Any]:
    """The family of the refresh token hashed to ``token_hash``."""
    return (
        select(refresh_families)
        .join(refresh_tokens, refresh_tokens.c.family_id == refresh_families.c.family_id)
        .where(refresh_tokens.c.token_hash == token_hash)
    )


def _revoke_family(family_id: str, now: int, reason: str) -> Update:
    """Mark a family revoked, unless it is already (its first reason stays)."""
    return (
        update(refresh_families)
        .where(refresh_families.c.family_id == family_id, refresh_families.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason[:64])
    )


def _new_refresh_token() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


class AuthStore(SqlStore):
    metadata = metadata

    # -- clients -------------------------------------------------------------------------
    async def add_client(self, client: Client) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(clients).values(**_client_values(client)))
        except IntegrityError:
            raise ConflictError(
                f"a client {client.client_id!r} (or one with that SPIFFE ID) already exists"
            ) from None

    async def sync_managed_clients(self, wanted: Sequence[Client]) -> None:
        """Make the managed clients (one per declared service) exactly ``wanted``."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(clients).where(clients.c.managed == 1))).all()
            have = {c.client_id: c for c in map(_client, rows)}
            names = {c.client_id for c in wanted}
            for gone in have.keys() - names:
                await conn.execute(delete(clients).where(clients.c.client_id == gone))
            for client in wanted:
                old = have.get(client.client_id)
                values = _client_values(client)
                if old is None:
                    await conn.execute(insert(clients).values(**values))
                elif (old.spiffe_id, old.audiences, old.scopes, old.redirect_uris) != (
                    client.spiffe_id,
                    client.audiences,
                    client.scopes,
                    client.redirect_uris,
                ):
                    values.pop("created_at")
                    await conn.execute(
                        update(clients)
                        .where(clients.c.client_id == client.client_id)
                        .values(**values)
                    )

    async def get_client(self, client_id: str) -> Client | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(clients).where(clients.c.client_id == client_id))
            ).first()
        return _client(row) if row is not None else None

    async def list_clients(self) -> list[Client]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(clients).order_by(clients.c.client_id))).all()
        return [_client(r) for r in rows]

    async def remove_client(self, client_id: str) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(clients).where(clients.c.client_id == client_id, clients.c.managed == 0)
            )
        if result.rowcount == 0:
            raise NotFoundError(
                f"no removable client {client_id!r} (declared services are managed)"
            )

    # -- signing keys --------------------------------------------------------------------
    async def keys(self) -> list[StoredKey]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(signing_keys))).all()
        return [
            StoredKey(
                KeyState(r.kid, r.created_at, r.activate_at, r.retire_at, r.remove_at),
                r.alg,
                r.sealed_private,
                json.loads(r.public_jwk),
            )
            for r in rows
        ]

    async def add_key(self, key: StoredKey) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(signing_keys).values(
                    kid=key.state.kid,
                    alg=key.alg,
                    sealed_private=key.sealed_private,
                    public_jwk=json.dumps(key.public_jwk),
                    created_at=key.state.created_at,
                    activate_at=key.state.activate_at,
                )
            )

    async def retire_key(self, kid: str, retire_at: int, remove_at: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(signing_keys)
                .where(signing_keys.c.kid == kid, signing_keys.c.retire_at.is_(None))
                .values(retire_at=retire_at, remove_at=remove_at)
            )

    async def remove_key(self, kid: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(signing_keys).where(signing_keys.c.kid == kid))

    # -- revocation ----------------------------------------------------------------------
    async def revoke(self, jti: str, client_id: str, expires_at: int, now: int) -> bool:
        """Record a revoked token id (idempotent: revoking twice is one revocation);
        whether this call revoked it."""
        try:
            async with self.engine.begin() as conn:
                await append_in_order(conn, revocations)
                await conn.execute(
                    insert(revocations).values(
                        jti=jti, client_id=client_id, expires_at=expires_at, revoked_at=now
                    )
                )
        except IntegrityError:
            return False
        return True

    async def is_revoked(self, jti: str) -> bool:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(revocations.c.seq).where(revocations.c.jti == jti))
            ).first()
        return row is not None

    async def revocations_since(self, seq: int, now: int, limit: int = 1000) -> list[Revocation]:
        """Revocations after ``seq`` whose tokens have not expired yet, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(revocations.c.seq, revocations.c.jti, revocations.c.expires_at)
                    .where(revocations.c.seq > seq, revocations.c.expires_at > now)
                    .order_by(revocations.c.seq)
                    .limit(limit)
                )
            ).all()
        return [Revocation(r.seq, r.jti, r.expires_at) for r in rows]

    async def last_revocation_seq(self) -> int:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(revocations.c.seq).order_by(revocations.c.seq.desc()).limit(1)
                )
            ).first()
        return int(row.seq) if row is not None else 0

    async def prune(self, now: int) -> None:
        """Forget revocations and used assertions of tokens that have expired anyway."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(revocations).where(revocations.c.expires_at <= now))
            await conn.execute(delete(used_assertions).where(used_assertions.c.expires_at <= now))

    # -- users ---------------------------------------------------------------------------
    async def add_user(self, user: User) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(users).values(
                        user_id=user.user_id,
                        username=user.username,
                        password_hash=user.password_hash,
                        roles=" ".join(user.roles),
                        totp_sealed=user.totp_sealed,
                        totp_last_step=user.totp_last_step,
                        locked=int(user.locked),
                        created_at=user.created_at,
                    )
                )
        except IntegrityError:
            raise ConflictError(f"a user {user.username!r} already exists") from None

    async def get_user(self, username: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).first()
        return _user(row) if row is not None else None

    async def get_user_by_id(self, user_id: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.user_id == user_id))).first()
        return _user(row) if row is not None else None

    async def list_users(self) -> list[User]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(users).order_by(users.c.username))).all()
        return [_user(r) for r in rows]

    async def update_user(self, username: str, **values: object) -> User:
        allowed = {"locked", "totp_sealed", "totp_last_step", "password_hash", "roles"}
        if set(values) - allowed:
            raise ValueError(f"cannot update {sorted(set(values) - allowed)}")
        if "locked" in values:
            values["locked"] = int(bool(values["locked"]))
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(users).where(users.c.username == username).values(**values)
            )
        if result.rowcount == 0:
            raise NotFoundError(f"no user {username!r}")
        found = await self.get_user(username)
        assert found is not None  # noqa: S101 - just updated
        return found

    async def use_totp_step(self, user_id: str, totp_sealed: bytes, step: int) -> bool:
        """Record ``step`` as the user's last used TOTP step if it is later than the one
        recorded, for the secret it was checked against (``totp_sealed``: an MFA reset in
        between voids it). One conditional UPDATE, so of any number of concurrent uses of
        one code exactly one is True; that one may sign in."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(users)
                .where(
                    users.c.user_id == user_id,
                    users.c.totp_sealed == totp_sealed,
                    or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step),
                )
                .values(totp_last_step=step)
            )
        return result.rowcount == 1

    # -- refresh tokens (rotation with reuse detection) -------------------------------------
    async def start_refresh_family(
        self,
        client_id: str,
        subject: str,
        scope: str,
        now: int,
        lifetime: int,
        *,
        bound: bool = False,
    ) -> tuple[str, RefreshFamily]:
        """A new family and its first refresh token (returned once; stored hashed)."""
        family = RefreshFamily(
            base64.urlsafe_b64encode(os.urandom(18)).decode(),
            client_id,
            subject,
            scope,
            now + lifetime,
            bound,
        )
        token = _new_refresh_token()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(refresh_families).values(
                    family_id=family.family_id,
                    client_id=client_id,
                    subject=subject,
                    scope=scope,
                    created_at=now,
                    expires_at=family.expires_at,
                    bound=bound,
                )
            )
            await conn.execute(
                insert(refresh_tokens).values(
                    token_hash=_refresh_hash(token), family_id=family.family_id, issued_at=now
                )
            )
        return token, family

    async def rotate_refresh(
        self, token: str, client_id: str, now: int, *, over_mtls: bool = False
    ) -> RefreshOutcome:
        """Spend ``token`` and issue its successor, atomically: of any number of
        concurrent presentations exactly one wins; any later (or losing) presentation of a
        spent token is reuse and revokes the whole family. A bound family presented
        without mTLS is refused (``needs-mtls``) and the token stays unspent."""
        digest = _refresh_hash(token)
        async with self.engine.begin() as conn:
            row = (await conn.execute(_family_of(digest))).first()
            if row is None or row.client_id != client_id:
                return RefreshOutcome("unknown")
            family = _family(row)
            if row.revoked_at is not None:
                return RefreshOutcome("revoked", family=family)
            if now >= row.expires_at:
                return RefreshOutcome("expired", family=family)
            if family.bound and not over_mtls:
                return RefreshOutcome("needs-mtls", family=family)
            spent = await conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.token_hash == digest, refresh_tokens.c.used_at.is_(None))
                .values(used_at=now)
            )
            if spent.rowcount != 1:
                await conn.execute(_revoke_family(family.family_id, now, "refresh-token-reused"))
                return RefreshOutcome("reused", family=family)
            successor = _new_refresh_token()
            await conn.execute(
                insert(refresh_tokens).values(
                    token_hash=_refresh_hash(successor), family_id=family.family_id, issued_at=now
                )
            )
        return RefreshOutcome("rotated", successor, family)

    async def family_of(self, refresh_token: str) -> RefreshFamily | None:
        """The family of any refresh token it issued (spent or not), or None."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_family_of(_refresh_hash(refresh_token)))).first()
        return _family(row) if row is not None else None

    async def revoke_family(self, family_id: str, now: int, reason: str) -> RefreshFamily | None:
        """Mark the family revoked (idempotent): the family if this call revoked it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(_revoke_family(family_id, now, reason))
            if result.rowcount != 1:
                return None
            row = (
                await conn.execute(
                    select(refresh_families).where(refresh_families.c.family_id == family_id)
                )
            ).first()
        return _family(row) if row is not None else None

    async def use_assertion(self, key: str, expires_at: int) -> bool:
        """Record a client assertion's jti; False if it was used before (a replay)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(used_assertions).values(key=key, expires_at=expires_at))
        except IntegrityError:
            return False
        return True
