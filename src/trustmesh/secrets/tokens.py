"""Login tokens (Vault's service tokens, ``hvs.…``): issued by ``auth/cert/login`` to the
SPIFFE ID of the client certificate, carrying that identity's policies, with a TTL and
a max TTL from their creation; renewable up to the max, revocable.

A token is bound to the identity it was issued to: presented over a connection whose
certificate names another SPIFFE ID it is refused, so a token copied out of a service is
no use without that service's SVID. Only a SHA-256 digest of a token is stored; the
token itself is shown once, in the login answer.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from trustmesh.errors import PermissionDeniedError, UsageError
from trustmesh.reasons import Reason
from trustmesh.secrets.kv import rfc3339
from trustmesh.secrets.store import SecretsStore

__all__ = ["ROOT_POLICY", "TokenEntry", "Tokens"]

ROOT_POLICY: Final = "root"
#: A root token never expires (Vault's too); it is still bound to its holder's SPIFFE ID.
NEVER: Final = 253402300799.0  # 9999-12-31T23:59:59Z
_CACHE_LIMIT: Final = 100_000


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    accessor: str
    spiffe_id: str
    policies: tuple[str, ...]
    created: float
    ttl: float  # as created (0: never expires)
    expires: float
    max_expires: float
    display_name: str
    renewable: bool = True

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "policies": list(self.policies)})

    @classmethod
    def from_json(cls, raw: str) -> TokenEntry:
        doc = json.loads(raw)
        return cls(**{**doc, "policies": tuple(doc["policies"])})

    def remaining(self, now: float) -> int:
        return 0 if self.expires >= NEVER else max(0, int(self.expires - now))

    def auth_block(self, token: str, now: float) -> dict[str, Any]:
        """The ``auth`` object of a login or renew answer."""
        return {
            "client_token": token,
            "accessor": self.accessor,
            "policies": list(self.policies),
            "token_policies": list(self.policies),
            "metadata": {"spiffe_id": self.spiffe_id},
            "lease_duration": self.remaining(now),
            "renewable": self.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": True,
        }

    def lookup(self, token: str | None, now: float) -> dict[str, Any]:
        """The ``data`` of ``auth/token/lookup-self`` (``id`` only when asked with it)."""
        return {
            "accessor": self.accessor,
            "creation_time": int(self.created),
            "creation_ttl": int(self.ttl),
            "display_name": self.display_name,
            "entity_id": "",
            "expire_time": None if self.expires >= NEVER else rfc3339(self.expires),
            "explicit_max_ttl": 0,
            "id": token or "",
            "issue_time": rfc3339(self.created),
            "meta": {"spiffe_id": self.spiffe_id},
            "num_uses": 0,
            "orphan": True,
            "path": "auth/cert/login" if ROOT_POLICY not in self.policies else "auth/token/root",
            "policies": list(self.policies),
            "renewable": self.renewable,
            "ttl": self.remaining(now),
            "type": "service",
        }


class Tokens:
    """The tokens, in the store and in a cache of this process (``clock``: epoch s)."""

    def __init__(
        self,
        store: SecretsStore,
        *,
        ttl: float,
        max_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.max_ttl = max_ttl
        self.clock = clock
        self._cache: dict[str, TokenEntry | None] = {}

    async def issue(
        self, spiffe_id: str, policies: tuple[str, ...], *, display_name: str, root: bool = False
    ) -> tuple[str, TokenEntry]:
        now = self.clock()
        token = "hvs." + secrets.token_urlsafe(32)
        entry = TokenEntry(
            accessor=secrets.token_urlsafe(18),
            spiffe_id=spiffe_id,
            policies=policies,
            created=now,
            ttl=0 if root else self.ttl,
            expires=NEVER if root else now + self.ttl,
            max_expires=NEVER if root else now + self.max_ttl,
            display_name=display_name,
            renewable=not root,
        )
        await self.store.put_token(_digest(token), entry.accessor, entry.to_json(), entry.expires)
        return token, entry

    async def lookup(self, token: str, spiffe_id: str | None) -> TokenEntry:
        """The live token ``token`` presented by ``spiffe_id``; PermissionDeniedError for
        an unknown, expired or revoked token, or one bound to another identity."""
        digest = _digest(token)
        if digest in self._cache:
            entry = self._cache[digest]
        else:
            row = await self.store.token(digest)
            entry = None if row is None or row[2] else TokenEntry.from_json(row[0])
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = entry
        if entry is None or entry.expires <= self.clock():
            raise PermissionDeniedError("permission denied", reason=Reason.TOKEN_INACTIVE)
        if entry.spiffe_id != spiffe_id:
            raise PermissionDeniedError("permission denied", reason=Reason.TOKEN_NOT_BOUND)
        return entry

    async def expiry(self, accessor: str) -> float | None:
        """When the token with ``accessor`` expires; None once revoked, expired or pruned."""
        row = await self.store.token_by_accessor(accessor)
        if row is None or row[2] or row[1] <= self.clock():
            return None
        return row[1]

    async def renew(self, token: str, entry: TokenEntry, increment: float | None) -> TokenEntry:
        """Extend ``entry`` by ``increment`` (default: its TTL) from now, never past its
        max TTL."""
        if not entry.renewable:
            raise UsageError("this token is not renewable")
        now = self.clock()
        wanted = increment if increment is not None else self.ttl
        if wanted <= 0:
            raise UsageError("increment must be positive")
        renewed = replace(entry, expires=min(now + wanted, entry.max_expires))
        digest = _digest(token)
        await self.store.update_token(digest, renewed.to_json(), renewed.expires)
        self._cache[digest] = renewed
        return renewed

    async def revoke(self, token: str) -> None:
        digest = _digest(token)
        await self.store.revoke_token(digest)
        self._cache[digest] = None
