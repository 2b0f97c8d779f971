"""The secrets service's parts put together: the barrier, the engines, the tokens, the
policies compiled from the declaration, and the audit device.

The policies (and the token lifetimes) are one immutable snapshot, compiled from the
declaration off the request path and swapped in whole by :meth:`SecretsService.reload`;
a token names its policies, so a reload applies to the tokens already issued too."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from trustmesh import crypto
from trustmesh.config import TrustmeshConfig
from trustmesh.config.secrets import SecretsConfig
from trustmesh.config.switches import defences_off
from trustmesh.errors import ConfigError
from trustmesh.secrets.app import Call, Reply
from trustmesh.secrets.audit import AuditDevice
from trustmesh.secrets.barrier import Barrier
from trustmesh.secrets.database import DatabaseEngine
from trustmesh.secrets.kv import KvEngine, rfc3339
from trustmesh.secrets.policy import Acl
from trustmesh.secrets.store import SecretsStore
from trustmesh.secrets.tokens import ROOT_POLICY, Tokens
from trustmesh.secrets.transit_api import TransitKeys

__all__ = ["Policies", "SecretsService", "audit_key"]

#: Settings a reload cannot change: they take a restart.
_AT_START: Final = ("port", "database", "audit_file", "dev_auto_unseal")

_AUDIT_KEY_CONTEXT = b"trustmesh/secrets/audit-hmac"


async def audit_key(store: SecretsStore, seal_key: crypto.SealKey) -> bytes:
    """The audit HMAC key: made once, kept in the store sealed under the state's sealing
    key (not the barrier's: a request made while sealed, an unseal share, is audited too)."""
    async with store.tx() as tx:
        sealed = await tx.system("audit-hmac")
        if sealed is None:
            key = os.urandom(32)
            await tx.put_system(
                "audit-hmac", crypto.seal(key, seal_key, context=_AUDIT_KEY_CONTEXT)
            )
            return key
    return crypto.open_sealed(sealed, seal_key, context=_AUDIT_KEY_CONTEXT)


#: What the test switch ``secrets-policy`` grants every identity: everything.
_EVERYONE: Final = "testing-secrets-policy-off"
_EVERY_CAPABILITY: Final = ("create", "read", "update", "patch", "delete", "list")


class _EveryIdentity(Mapping[str, str]):
    """Every SPIFFE ID of the trust domain is named :data:`_EVERYONE` (the test switch
    ``secrets-policy`` only)."""

    def __init__(self, trust_domain: str) -> None:
        self._prefix = f"spiffe://{trust_domain}/"

    def __getitem__(self, spiffe_id: str) -> str:
        if not spiffe_id.startswith(self._prefix):
            raise KeyError(spiffe_id)
        return _EVERYONE

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(frozen=True)
class Policies:
    """Who may do what, compiled from one declaration: the ACL of each identity's name,
    and the identity's name of each SPIFFE ID."""

    acls: Mapping[str, Acl]
    identities: Mapping[str, str]

    @classmethod
    def compile(
        cls, config: TrustmeshConfig, settings: SecretsConfig, *, everyone: bool = False
    ) -> Policies:
        """``everyone`` only under the test switch ``secrets-policy``
        (:mod:`trustmesh.config.switches`): every identity of the trust domain may log in
        and do anything, whatever the declaration grants."""
        if everyone:
            acls = {_EVERYONE: Acl({"*": _EVERY_CAPABILITY})}
            return cls(MappingProxyType(acls), _EveryIdentity(config.trust_domain))
        return cls(
            MappingProxyType({p.identity: Acl(p.allow) for p in settings.policies}),
            MappingProxyType(
                {config.secrets_identity(p.identity): p.identity for p in settings.policies}
            ),
        )


class SecretsService:
    def __init__(
        self,
        config: TrustmeshConfig,
        settings: SecretsConfig,
        store: SecretsStore,
        audit: AuditDevice,
        *,
        clock: Callable[[], float] = time.time,
        config_file: Path | None = None,
    ) -> None:
        self.store = store
        self.config_file = config_file  # read again on a reload
        self.clock = clock
        self.barrier = Barrier(store, clock)
        self.kv = KvEngine(store, self.barrier, clock)
        self.transit = TransitKeys(store, self.barrier, clock)
        self.tokens = Tokens(
            store,
            ttl=settings.token_ttl.total_seconds(),
            max_ttl=settings.token_max_ttl.total_seconds(),
            clock=clock,
        )
        self.database = DatabaseEngine(store.engine, self.barrier, self.tokens.expiry, clock)
        self.audit = audit
        self.operator = config.component_spiffe_id("operator")
        self.settings = settings
        self._everyone = "secrets-policy" in defences_off(config, "secrets")  # tests only
        self.policies = Policies.compile(config, settings, everyone=self._everyone)

    async def start(self) -> None:
        await self.store.create()
        await self.database.start()
        await self.barrier.load()

    async def close(self) -> None:
        self.audit.close()
        await self.store.close()

    def seal(self) -> None:
        """Seal: the barrier drops its keys, the engines what they opened."""
        self.barrier.seal()
        self.transit.clear()

    def allows(self, policies: tuple[str, ...], path: str, capability: str) -> bool:
        """Whether a token with ``policies`` may do ``capability`` on ``path``: the root
        policy may do anything; a deny in any policy refuses."""
        if ROOT_POLICY in policies:
            return True
        known = self.policies.acls
        acls = [known[name] for name in policies if name in known]
        if any(acl.denies(path) for acl in acls):
            return False
        return any(acl.allows(path, capability) for acl in acls)

    def reload(self, config: TrustmeshConfig) -> list[str]:
        """Swap in the policies and token lifetimes ``config`` declares (compiled first:
        a declaration that does not compile changes nothing); the settings that differ
        but take a restart to apply."""
        settings = config.secrets
        if settings is None:
            raise ConfigError("secrets: not declared in the configuration")
        policies = Policies.compile(config, settings, everyone=self._everyone)
        self.tokens.ttl = settings.token_ttl.total_seconds()
        self.tokens.max_ttl = settings.token_max_ttl.total_seconds()
        self.policies, before, self.settings = policies, self.settings, settings
        return [name for name in _AT_START if getattr(before, name) != getattr(settings, name)]

    # -- audit ---------------------------------------------------------------------------

    def _auth(self, call: Call) -> dict[str, Any] | None:
        entry = call.entry
        if entry is None:
            return {"spiffe_id": call.spiffe_id} if call.spiffe_id else None
        return {
            "client_token": self.audit.hash(call.token or ""),
            "accessor": self.audit.hash(entry.accessor),
            "display_name": entry.display_name,
            "policies": list(entry.policies),
            "spiffe_id": entry.spiffe_id,
        }

    def _request(self, call: Call) -> dict[str, Any]:
        return {
            "id": call.request_id,
            "operation": call.method.lower(),
            "path": call.path,
            "spiffe_id": call.spiffe_id,
            "remote_address": call.remote,
            "data": self.audit.hashed(call.body) if call.body else None,
        }

    async def audit_request(self, call: Call) -> None:
        await self.audit.record(
            {
                "time": rfc3339(self.clock()),
                "type": "request",
                "auth": self._auth(call),
                "request": self._request(call),
            }
        )

    async def audit_response(self, call: Call, reply: Reply) -> None:
        body = reply.body or {}
        errors = body.get("errors")
        await self.audit.record(
            {
                "time": rfc3339(self.clock()),
                "type": "response",
                "auth": self._auth(call),
                "request": self._request(call),
                "response": {
                    "status": reply.status,
                    "data": self.audit.hashed(body.get("data")),
                    "auth": self.audit.hashed(body.get("auth")),
                },
                "error": errors[0] if errors else "",
            }
        )
