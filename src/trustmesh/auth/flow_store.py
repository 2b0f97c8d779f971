"""The login flow's storage: authorization codes and failed login attempts.

Codes (RFC 6749 §4.1.2) are stored hashed, single-use (:meth:`FlowStore.spend_code`
marks one used in one conditional UPDATE: of concurrent uses, one wins) and remember
what they issued, so a code presented twice revokes it. Login attempts are counted
before a password is checked (:meth:`FlowStore.count_attempt`), for the lockout
(:mod:`trustmesh.auth.lockout`).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, String, Table, Text, insert, select, update
from sqlalchemy.exc import IntegrityError

from trustmesh.auth.db import AuthStore, metadata
from trustmesh.auth.lockout import LockoutPolicy, LoginState, after_failure
from trustmesh.errors import StateError

__all__ = ["CodeRecord", "FlowStore", "hash_code"]

codes = Table(
    "auth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("username", String(256), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("nonce", Text),
    Column("code_challenge", String(64), nullable=False),
    Column("auth_time", BigInteger, nullable=False),
    Column("amr", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger),
    Column("issued_jti", String(64)),
    Column("issued_exp", BigInteger),
    Column("family_id", String(64)),
)

login_attempts = Table(
    "auth_login_attempts",
    metadata,
    Column("login", String(256), primary_key=True),
    Column("failures", BigInteger, nullable=False),
    Column("locked_until", BigInteger, nullable=False),
)


def hash_code(value: str) -> str:
    """How a code is stored (and looked up)."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class CodeRecord:
    code_hash: str
    client_id: str
    user_id: str
    username: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    auth_time: int
    amr: tuple[str, ...]
    expires_at: int
    used_at: int | None
    issued_jti: str | None
    issued_exp: int | None
    family_id: str | None


class FlowStore:
    def __init__(self, store: AuthStore) -> None:
        self.engine = store.engine

    async def new_code(self, record: CodeRecord) -> None:
        async with self.engine.begin() as conn:
            values = {k: v for k, v in record.__dict__.items() if k != "amr"}
            await conn.execute(insert(codes).values(**values, amr=" ".join(record.amr)))

    async def code(self, code: str) -> CodeRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(codes).where(codes.c.code_hash == hash_code(code)))
            ).first()
        if row is None:
            return None
        m = dict(row._mapping)
        m["amr"] = tuple(str(m["amr"]).split())
        return CodeRecord(**m)

    async def spend_code(
        self, code_hash: str, now: int, jti: str, exp: int, family: str | None
    ) -> bool:
        """Mark the code used and remember what it issued; False if it was used already."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(codes)
                .where(codes.c.code_hash == code_hash, codes.c.used_at.is_(None))
                .values(used_at=now, issued_jti=jti, issued_exp=exp, family_id=family)
            )
        return result.rowcount == 1

    async def attempts(self, login: str) -> LoginState:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(login_attempts).where(login_attempts.c.login == login))
            ).first()
        return LoginState(int(row.failures), float(row.locked_until)) if row else LoginState()

    async def count_attempt(self, login: str, now: float, policy: LockoutPolicy) -> LoginState:
        """Count a login attempt as failed before its credentials are checked (a success
        clears it: :meth:`clear_attempts`); the state the attempt found. Counted in one
        locked UPDATE: concurrent attempts each count and each finds the ones before it,
        so a burst of guesses is locked out as soon as a sequence would be."""
        found = await self._count(login, now, policy)
        if found is None:  # its first attempt: make the row (a concurrent one may have)
            with contextlib.suppress(IntegrityError):
                async with self.engine.begin() as conn:
                    await conn.execute(
                        insert(login_attempts).values(login=login, failures=0, locked_until=0)
                    )
            found = await self._count(login, now, policy)
        if found is None:
            raise StateError(f"login attempts of {login[:64]!r} vanished while counted")
        return found

    async def _count(self, login: str, now: float, policy: LockoutPolicy) -> LoginState | None:
        table = login_attempts
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(table)
                    .where(table.c.login == login)
                    .values(failures=table.c.failures + 1)
                    .returning(table.c.failures, table.c.locked_until)
                )
            ).first()
            if row is None:
                return None
            found = LoginState(int(row.failures) - 1, float(row.locked_until))
            counted = after_failure(found, now, policy)
            if counted.locked_until != found.locked_until:  # the row stays locked till commit
                await conn.execute(
                    update(table)
                    .where(table.c.login == login)
                    .values(locked_until=int(counted.locked_until))
                )
        return found

    async def clear_attempts(self, login: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(login_attempts)
                .where(login_attempts.c.login == login)
                .values(failures=0, locked_until=0)
            )
