"""Revocation that reaches every token it should: of one access token, of a refresh
family and every access token it issued, and of a user — every token issued for a
subject before a time.

- **One token** (RFC 7009): its ``jti`` is recorded until the token would have expired.
- **A family** — refresh-token reuse (RFC 6749 §10.4; OAuth 2.0 Security BCP §4.14.2),
  a revoked refresh token (RFC 7009 §2.1), a reused authorization code (RFC 6749
  §4.1.2): the family stops refreshing and each live access token it issued (the code
  exchange's first one and each refresh's, recorded as issued) is revoked by ``jti``,
  each an event.
- **A subject** — a user locked, their MFA reset or their password changed: every token
  whose ``sub`` is the user and whose ``iat`` is before ``before`` is revoked, wherever it
  was minted (this provider's, the gateway's internal tokens and exchanged tokens carry
  the user's ``sub``), and the user's refresh families with their tokens.

``iat`` is whole seconds. A revocation at time *t* sets ``before`` = ⌊t⌋ + 1: every
token issued in *t*'s second is revoked, including one issued just after *t* (fail
closed: a second cannot tell them apart). So that no token is born revoked, the provider
waits for that second to pass before it issues the user another token or sign-in session
(at most a second, and only right after a revocation). A sign-in from before the
revocation authorizes nothing more (its session and its codes are refused). A subject's
revocation is kept until everything it can match has expired.

Every revocation is recorded here, offered on the feed the gateway and the services
poll (``/v1/revocations``: token ids after ``since``, subjects after
``subjects_since``) and pushed through Redis when configured. Until it arrives (the
poll interval; at once with Redis) the gateway may still take a revoked token, and a
token it mints for the upstream in that window is not matched by the subject's
revocation (its ``iat`` is later) — it is bound to the gateway's certificate, and lives
only the internal-token lifetime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    select,
)

from trustmesh.auth.db import (
    AuthStore,
    RefreshFamily,
    metadata,
    refresh_families,
)
from trustmesh.auth.login import SESSION_SECONDS
from trustmesh.config.models import MAX_ACCESS_TOKEN_TTL, MAX_TOKEN_LEEWAY
from trustmesh.reasons import Activity
from trustmesh.store import append_in_order

if TYPE_CHECKING:
    from trustmesh.auth.service import AuthService

__all__ = [
    "SUBJECT_REVOCATION_SECONDS",
    "LiveToken",
    "RevocationStore",
    "Revocations",
    "SubjectRevocation",
    "SubjectState",
]

#: How long a subject's revocation is kept (and offered on the feed): as long as anything
#: it revokes can live — an access token (``auth.access_token_ttl`` ≤ 1 h) or a sign-in
#: session (``SESSION_SECONDS``) — plus the largest clock leeway a verifier may be
#: configured with (``auth.token_leeway`` ≤ 30 s).
SUBJECT_REVOCATION_SECONDS = int(
    (
        max(MAX_ACCESS_TOKEN_TTL, timedelta(seconds=SESSION_SECONDS)) + MAX_TOKEN_LEEWAY
    ).total_seconds()
)

family_tokens = Table(
    "auth_family_tokens",
    metadata,
    Column("jti", String(128), primary_key=True),
    Column("family_id", String(64), nullable=False, index=True),
    Column("client_id", String(128), nullable=False),
    Column("subject", String(2048), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

subject_revocations = Table(
    "auth_subject_revocations",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("subject", String(2048), nullable=False, index=True),
    Column("not_before", BigInteger, nullable=False),  # tokens with iat < this are revoked
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=False),
    Column("reason", String(64), nullable=False),
    sqlite_autoincrement=True,  # a feed: a key is never handed out twice
)


@dataclass(frozen=True)
class LiveToken:
    """An access token a family issued, not yet expired."""

    jti: str
    client_id: str
    subject: str
    expires_at: int


@dataclass(frozen=True)
class SubjectRevocation:
    """Tokens for ``subject`` issued before ``before`` are revoked (until ``expires_at``,
    when every one of them has expired anyway)."""

    seq: int
    subject: str
    before: int
    expires_at: int


@dataclass(frozen=True)
class SubjectState:
    """What a token request must know of its user's revocations: the newest one's
    sequence number (0: none) and the latest ``before`` still in force (0: none)."""

    seq: int = 0
    before: int = 0


class RevocationStore:
    """The tables of family tokens and subject revocations (on the provider's engine)."""

    def __init__(self, store: AuthStore) -> None:
        self.auth = store
        self.engine = store.engine

    async def record_family_token(self, family_id: str, token: LiveToken) -> bool:
        """Remember that ``family_id`` issued ``token``; False if the family was revoked
        meanwhile (its revocation may not have seen this token: the caller revokes it).
        Written first, read second — as the revocation writes, then reads — so of the
        two, at least one sees the other."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(family_tokens).values(
                    jti=token.jti,
                    family_id=family_id,
                    client_id=token.client_id,
                    subject=token.subject,
                    expires_at=token.expires_at,
                )
            )
        async with self.engine.connect() as conn:
            revoked = (
                await conn.execute(
                    select(refresh_families.c.revoked_at).where(
                        refresh_families.c.family_id == family_id
                    )
                )
            ).scalar()
        return revoked is None

    async def revoke_family(
        self, family_id: str, now: int, reason: str
    ) -> tuple[RefreshFamily | None, list[LiveToken]]:
        """Revoke the family (idempotent): the family if this call revoked it, and the
        live access tokens it issued."""
        revoked = await self.auth.revoke_family(family_id, now, reason)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(family_tokens).where(
                        family_tokens.c.family_id == family_id, family_tokens.c.expires_at > now
                    )
                )
            ).all()
        return revoked, [LiveToken(r.jti, r.client_id, r.subject, r.expires_at) for r in rows]

    async def live_families(self, subject: str, now: int) -> list[str]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(refresh_families.c.family_id).where(
                        refresh_families.c.subject == subject,
                        refresh_families.c.revoked_at.is_(None),
                        refresh_families.c.expires_at > now,
                    )
                )
            ).all()
        return [r.family_id for r in rows]

    async def revoke_subject(
        self, subject: str, before: int, now: int, reason: str
    ) -> SubjectRevocation:
        expires_at = before + SUBJECT_REVOCATION_SECONDS
        async with self.engine.begin() as conn:
            await append_in_order(conn, subject_revocations)
            result = await conn.execute(
                insert(subject_revocations).values(
                    subject=subject,
                    not_before=before,
                    expires_at=expires_at,
                    revoked_at=now,
                    reason=reason[:64],
                )
            )
        seq = int(result.inserted_primary_key[0])  # type: ignore[index]
        return SubjectRevocation(seq, subject, before, expires_at)

    async def subject_state(self, subject: str, now: int) -> SubjectState:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        func.max(subject_revocations.c.seq),
                        func.max(subject_revocations.c.not_before),
                    ).where(
                        subject_revocations.c.subject == subject,
                        subject_revocations.c.expires_at > now,
                    )
                )
            ).first()
        if row is None or row[0] is None:
            return SubjectState()
        return SubjectState(int(row[0]), int(row[1]))

    async def subjects_since(
        self, seq: int, now: int, limit: int = 1000
    ) -> list[SubjectRevocation]:
        """Subject revocations after ``seq`` still in force, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(subject_revocations)
                    .where(subject_revocations.c.seq > seq, subject_revocations.c.expires_at > now)
                    .order_by(subject_revocations.c.seq)
                    .limit(limit)
                )
            ).all()
        return [SubjectRevocation(r.seq, r.subject, r.not_before, r.expires_at) for r in rows]

    async def last_subject_seq(self) -> int:
        async with self.engine.connect() as conn:
            value = (await conn.execute(select(func.max(subject_revocations.c.seq)))).scalar()
        return int(value) if value is not None else 0

    async def prune(self, now: int) -> None:
        """Forget what can no longer match a live token."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(family_tokens).where(family_tokens.c.expires_at <= now))
            await conn.execute(
                delete(subject_revocations).where(subject_revocations.c.expires_at <= now)
            )


class Revocations:
    """The provider's revocations: each recorded, published and an event."""

    def __init__(self, service: AuthService) -> None:
        self.service = service
        self.store = RevocationStore(service.store)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests move a clock

    def _now(self) -> int:
        return int(self.service.clock())

    async def token(
        self,
        token: LiveToken,
        cause: str,
        *,
        peer_spiffe_id: str | None = None,
    ) -> None:
        """Revoke one access token (idempotent: revoked once, one event)."""
        service = self.service
        if not await service.store.revoke(
            token.jti, token.client_id, token.expires_at, self._now()
        ):
            return
        await service.publish({"jti": token.jti, "exp": token.expires_at})
        service.emit(
            Activity.TOKEN_REVOKED,
            "access token revoked" + ("" if cause == "revoked" else f" ({cause})"),
            client_id=token.client_id,
            jti=token.jti,
            sub=token.subject or None,
            peer_spiffe_id=peer_spiffe_id,
            attributes={"cause": cause},
        )

    async def family(
        self, family_id: str, cause: str, *, peer_spiffe_id: str | None = None
    ) -> None:
        """Revoke a refresh family and every live access token it issued (an event for
        the family, if this revoked it, and one for each token)."""
        family, tokens = await self.store.revoke_family(family_id, self._now(), cause)
        if family is not None:
            self.service.emit(
                Activity.TOKEN_REVOKED,
                f"refresh token family revoked ({cause})",
                client_id=family.client_id,
                sub=family.subject,
                peer_spiffe_id=peer_spiffe_id,
                attributes={"cause": cause, "family": family.family_id},
            )
        for live in tokens:
            await self.token(live, cause, peer_spiffe_id=peer_spiffe_id)

    async def subject(
        self, subject: str, cause: str, *, attributes: Mapping[str, str] | None = None
    ) -> SubjectRevocation:
        """Revoke every token of ``subject`` issued so far (see the module docstring for
        the second it happens in), and the subject's refresh families."""
        now = self.service.clock()
        revoked = await self.store.revoke_subject(subject, int(now) + 1, int(now), cause)
        await self.service.publish(
            {"sub": subject, "before": revoked.before, "exp": revoked.expires_at}
        )
        self.service.emit(
            Activity.TOKEN_REVOKED,
            f"every token of the user issued before {revoked.before} revoked ({cause})",
            sub=subject,
            attributes={**(attributes or {}), "cause": cause, "before": revoked.before},
        )
        for family_id in await self.store.live_families(subject, int(now)):
            await self.family(family_id, cause)
        return revoked

    async def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        """Whether a token with these (verified) claims is revoked: by its ``jti``, or by
        a revocation of its subject made after it was issued."""
        if await self.service.store.is_revoked(str(claims.get("jti", ""))):
            return True
        return await self.predates(str(claims.get("sub", "")), claims.get("iat"))

    async def predates(self, subject: str, issued_at: object) -> bool:
        """Whether something of ``subject``'s issued at ``issued_at`` (a token's ``iat``,
        a sign-in's ``auth_time``) comes from before a revocation of the subject."""
        state = await self.store.subject_state(subject, self._now())
        if state.before == 0:
            return False
        if isinstance(issued_at, bool) or not isinstance(issued_at, int | float):
            return True
        return issued_at < state.before

    async def before_issuing(self, subject: str) -> SubjectState:
        """Wait, if needed, until a token (or a sign-in) for ``subject`` made now would not
        be born revoked (at most the rest of the current second); the subject's state,
        which :meth:`revoked_since` compares with once a token is recorded."""
        state = await self.store.subject_state(subject, self._now())
        wait = state.before - self.service.clock()
        if wait > 0:
            await self.sleep(min(wait, 1.0))
        return state

    async def revoked_since(self, subject: str, state: SubjectState) -> bool:
        """Whether ``subject`` was revoked after ``state`` was read (a token issued in
        between is then revoked by its caller)."""
        return (await self.store.subject_state(subject, self._now())).seq > state.seq

    async def feed(self, since: int, subjects_since: int) -> dict[str, Any]:
        """What was revoked since a verifier's cursors, as the feed answers it: token ids
        (``since``) and subjects (``subjects_since``), each a sequence of its own. A
        cursor past the newest revocation (the store was reset) starts again at 0."""
        now, store = self._now(), self.service.store
        rows = await store.revocations_since(since, now)
        if await store.last_revocation_seq() < since:
            rows, since = await store.revocations_since(0, now), 0
        subjects = await self.store.subjects_since(subjects_since, now)
        if await self.store.last_subject_seq() < subjects_since:
            subjects, subjects_since = await self.store.subjects_since(0, now), 0
        return {
            "cursor": rows[-1].seq if rows else since,
            "revoked": [{"jti": r.jti, "exp": r.expires_at} for r in rows],
            "subjects_cursor": subjects[-1].seq if subjects else subjects_since,
            "subjects": [
                {"sub": r.subject, "before": r.before, "exp": r.expires_at} for r in subjects
            ],
        }

    async def prune(self, now: int) -> None:
        await self.store.prune(now)
