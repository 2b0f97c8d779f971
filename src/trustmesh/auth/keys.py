"""Token-signing keys and their rotation, as a protocol.

A key goes through: **published** (in the JWKS, signing nothing: every verifier's cached
JWKS learns it first) → **active** (the one key that signs) → **retiring** (in the JWKS,
signing nothing, until every token it signed has expired) → removed. Exactly one key is
active at any time once the first exists.

:func:`plan` is pure (keys and a time in, actions out), so the protocol is tested on
its own; :class:`KeyRing` applies the actions to the store and keeps the private keys,
sealed at rest, in memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyState:
    """One signing key's schedule (epoch seconds); the private key is not here."""

    kid: str
    created_at: int
    activate_at: int  # publish first; sign from here on
    retire_at: int | None = None  # stopped signing (a newer key took over)
    remove_at: int | None = None  # leaves the JWKS: every token it signed has expired

    def status(self, now: int) -> str:
        if self.remove_at is not None and self.remove_at <= now:
            return "removed"
        if self.retire_at is not None and self.retire_at <= now:
            return "retiring"
        if self.activate_at <= now:
            return "active"
        return "published"


@dataclass(frozen=True)
class RotationSettings:
    publish_delay: int  # seconds a new key is published before it signs (≥ JWKS cache)
    token_lifetime: int  # the longest access token this server issues
    rotate_every: int  # an active key older than this is replaced (0: only on request)
    leeway: int = 60  # verifiers' clock leeway on exp


@dataclass(frozen=True)
class CreateKey:
    activate_at: int


@dataclass(frozen=True)
class RetireKey:
    kid: str
    retire_at: int
    remove_at: int


@dataclass(frozen=True)
class RemoveKey:
    kid: str


Action = CreateKey | RetireKey | RemoveKey


def signer(keys: Sequence[KeyState], now: int) -> KeyState | None:
    """The active key: the most recently activated one that has not retired."""
    active = [k for k in keys if k.status(now) == "active"]
    return max(active, key=lambda k: (k.activate_at, k.created_at), default=None)


def plan(
    keys: Sequence[KeyState], now: int, settings: RotationSettings, *, rotate: bool = False
) -> list[Action]:
    """What to do at ``now`` so that the protocol holds; ``rotate`` asks for a new key."""
    actions: list[Action] = [RemoveKey(k.kid) for k in keys if k.status(now) == "removed"]
    current = signer(keys, now)
    if current is None and not any(k.status(now) == "published" for k in keys):
        # nothing can sign and nothing is on its way: the first key (or a recovery after
        # every key expired) signs at once; there is no older JWKS to warm up
        return [*actions, CreateKey(activate_at=now)]
    keep = settings.token_lifetime + settings.leeway
    for key in keys:
        status = key.status(now)
        if status == "active" and current is not None and key.kid != current.kid:
            # a newer key took over: this one stops signing now and stays published
            # until every token it could have signed has expired
            actions.append(RetireKey(key.kid, retire_at=now, remove_at=now + keep))
    pending = any(k.status(now) == "published" for k in keys)
    stale = (
        current is not None
        and settings.rotate_every > 0
        and now - current.activate_at >= settings.rotate_every
    )
    if (rotate or stale) and not pending:
        actions.append(CreateKey(activate_at=now + settings.publish_delay))
    return actions


def utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)
