"""The Vault API paths the secrets service answers, and their handlers: ``sys/`` (health,
init, seal, unseal, mounts, audit-hash, rotate, key status), ``auth/cert/login`` and
``auth/token/*-self``, KV v2 under ``secret/``, transit under ``transit/``,
database credentials under ``database/`` and ``sys/leases/``. Any other path is 404; any other
method on a known path is 405 — never a silent success."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any, Final

from trustmesh import __version__
from trustmesh.config import load_config
from trustmesh.config.durations import seconds_or_zero
from trustmesh.config.listen import apply_listen_env
from trustmesh.errors import ConfigError, PermissionDeniedError, UsageError
from trustmesh.reasons import Reason
from trustmesh.secrets.app import NO_CONTENT, Call, Handler, Reply, Route, data_reply, envelope
from trustmesh.secrets.barrier import decode_share
from trustmesh.secrets.database_api import DatabaseRoutes
from trustmesh.secrets.kv import rfc3339
from trustmesh.secrets.service import SecretsService
from trustmesh.secrets.tokens import ROOT_POLICY, TokenEntry
from trustmesh.secrets.transit_api import TransitRoutes

__all__ = ["SecretsRoutes"]

_INIT_UNSUPPORTED: Final = (
    "pgp_keys",
    "root_token_pgp_key",
    "stored_shares",
    "recovery_shares",
    "recovery_threshold",
    "recovery_pgp_keys",
)


def _int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{name} must be an integer from {low} to {high}")
    return value


def _seconds(value: object) -> float | None:
    """A TTL or increment as Vault takes it: seconds, or a duration such as '1h'."""
    try:
        return float(seconds_or_zero(value)) or None
    except ValueError:
        raise UsageError(
            "increment must be a number of seconds or a duration such as '1h'"
        ) from None


class SecretsRoutes:
    """The handlers over one service; :meth:`table` is the route table."""

    def __init__(self, service: SecretsService) -> None:
        self.s = service

    def table(self) -> list[Route]:
        kv = self.s.kv

        async def kv_exists(call: Call) -> bool:
            return await kv.exists(call.rest)

        def r(pattern: str, access: str = "token", **handlers: Handler) -> Route:
            methods = {m.replace("_", "").upper(): h for m, h in handlers.items()}
            return Route(re.compile(pattern), methods, access)  # type: ignore[arg-type]

        return [
            r("sys/health", "open", get=self.health, head=self.health),
            r("sys/seal-status", "open", get=self.seal_status),
            r("sys/init", "open", get=self.init_status, put=self.init, post=self.init),
            r("sys/unseal", "operator", put=self.unseal, post=self.unseal),
            r("sys/seal", "operator", put=self.seal, post=self.seal),
            r("sys/rotate", "operator", put=self.rotate, post=self.rotate),
            r("sys/config/reload/policies", "operator", put=self.reload, post=self.reload),
            r("sys/key-status", get=self.key_status),
            r("sys/mounts", get=self.mounts),
            r("sys/audit-hash/([A-Za-z0-9_-]+)", put=self.audit_hash, post=self.audit_hash),
            r("auth/cert/login", "login", put=self.login, post=self.login),
            r("auth/token/lookup-self", "any-token", get=self.lookup_self, post=self.lookup_self),
            r("auth/token/renew-self", "any-token", put=self.renew_self, post=self.renew_self),
            r("auth/token/revoke-self", "any-token", put=self.revoke_self, post=self.revoke_self),
            r("secret/config", get=self.kv_config, put=self.kv_set_config, post=self.kv_set_config),
            Route(
                re.compile("secret/data/(.+)"),
                {
                    "GET": self.kv_read,
                    "PUT": self.kv_write,
                    "POST": self.kv_write,
                    "PATCH": self.kv_patch,
                    "DELETE": self.kv_delete,
                },
                "token",
                kv_exists,
            ),
            r("secret/delete/(.+)", put=self.kv_delete_versions, post=self.kv_delete_versions),
            r("secret/undelete/(.+)", put=self.kv_undelete, post=self.kv_undelete),
            r("secret/destroy/(.+)", put=self.kv_destroy, post=self.kv_destroy),
            *TransitRoutes(self.s.transit).table(),
            *DatabaseRoutes(self.s.database).table(),
            r(
                "secret/metadata/(.*)",
                get=self.kv_metadata,
                list=self.kv_list,
                put=self.kv_set_metadata,
                post=self.kv_set_metadata,
                delete=self.kv_delete_metadata,
            ),
        ]

    # -- sys -----------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        barrier = self.s.barrier
        config = barrier.config
        return {
            "type": "shamir",
            "initialized": barrier.initialized,
            "sealed": barrier.sealed,
            "t": config.threshold if config else 0,
            "n": config.shares if config else 0,
            "progress": barrier.progress,
            "nonce": barrier.nonce,
            "version": __version__,
            "migration": False,
            "recovery_seal": False,
            "storage_type": "sql",
            "cluster_name": "trustmesh",
            "wrong_shares": barrier.wrong_shares,
        }

    async def health(self, call: Call) -> Reply:
        barrier = self.s.barrier
        if not barrier.initialized:
            status = _int(call.query.get("uninitcode", 501), "uninitcode", 100, 599)
        elif barrier.sealed:
            status = _int(call.query.get("sealedcode", 503), "sealedcode", 100, 599)
        else:
            status = _int(call.query.get("activecode", 200), "activecode", 100, 599)
        return Reply(
            status,
            {
                "initialized": barrier.initialized,
                "sealed": barrier.sealed,
                "standby": False,
                "performance_standby": False,
                "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled",
                "server_time_utc": int(self.s.clock()),
                "version": __version__,
                "cluster_name": "trustmesh",
            },
        )

    async def seal_status(self, _call: Call) -> Reply:
        return Reply(200, self._status())

    async def init_status(self, _call: Call) -> Reply:
        return Reply(200, {"initialized": self.s.barrier.initialized})

    async def init(self, call: Call) -> Reply:
        """Only the operator initialises (reading whether it is initialised is open)."""
        if call.spiffe_id != self.s.operator:
            raise PermissionDeniedError("only the operator", reason=Reason.POLICY_DENY)
        body = call.body
        unsupported = [k for k in _INIT_UNSUPPORTED if body.get(k)]
        if unsupported:
            raise UsageError(f"{unsupported[0]} is not supported")
        shares = _int(body.get("secret_shares"), "secret_shares", 1, 255)
        threshold = _int(body.get("secret_threshold"), "secret_threshold", 1, 255)
        parts = await self.s.barrier.initialize(shares, threshold)
        root, _ = await self.s.tokens.issue(
            call.spiffe_id or "", (ROOT_POLICY,), display_name="root", root=True
        )
        return Reply(
            200,
            {
                "keys": [p.hex() for p in parts],
                "keys_base64": [base64.b64encode(p).decode() for p in parts],
                "root_token": root,
            },
        )

    async def unseal(self, call: Call) -> Reply:
        body = call.body
        if body.get("reset") is True:
            self.s.barrier.reset()
            return Reply(200, self._status())
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise UsageError("key is required (one unseal key share, hex or base64)")
        if await self.s.barrier.submit(decode_share(key)):
            await self.s.kv.load_config()
        return Reply(200, self._status())

    async def seal(self, _call: Call) -> Reply:
        self.s.seal()
        return NO_CONTENT

    async def rotate(self, _call: Call) -> Reply:
        await self.s.barrier.rotate_root()
        return NO_CONTENT

    async def reload(self, call: Call) -> Reply:
        """Read the declaration again and swap in its policies and token lifetimes
        (Vault's ``sys/config/reload/<subsystem>``); one that does not load changes
        nothing and is answered 400 with every problem, naming the key."""
        source = self.s.config_file
        if source is None:
            raise UsageError("this service was not started from a configuration file")
        try:
            # the port the environment pins, as at start (no restart warning for it)
            config = apply_listen_env(await asyncio.to_thread(load_config, source))
            restart = self.s.reload(config)
        except ConfigError as exc:
            return Reply(400, {"errors": list(exc.problems)})
        warnings = [f"{name} changed: it takes a restart to apply" for name in restart]
        data = {
            "identities": sorted(self.s.policies.acls),
            "token_ttl": int(self.s.tokens.ttl),
            "token_max_ttl": int(self.s.tokens.max_ttl),
        }
        return data_reply(data, call.request_id, warnings=warnings or None)

    async def key_status(self, call: Call) -> Reply:
        barrier = self.s.barrier
        installed = rfc3339(barrier.installed_at) if barrier.installed_at else ""
        return data_reply({"term": barrier.term, "install_time": installed}, call.request_id)

    async def mounts(self, call: Call) -> Reply:
        def mount(kind: str, description: str, **options: str) -> dict[str, Any]:
            return {
                "type": kind,
                "description": description,
                "options": options or None,
                "config": {"default_lease_ttl": 0, "max_lease_ttl": 0},
                "local": False,
                "seal_wrap": False,
            }

        mounts = {
            "secret/": mount("kv", "key/value secret storage", version="2"),
            "transit/": mount("transit", "encryption as a service"),
            "database/": mount("database", "database credentials"),
            "sys/": mount("system", "system endpoints"),
        }
        return Reply(200, {**mounts, **envelope(mounts, call.request_id)})

    async def audit_hash(self, call: Call) -> Reply:
        if call.rest != "file":
            raise UsageError("unknown audit device (this service has one: 'file')")
        value = call.body.get("input")
        if not isinstance(value, str):
            raise UsageError("input is required")
        return data_reply({"hash": self.s.audit.hash(value)}, call.request_id)

    # -- auth ----------------------------------------------------------------------------

    async def login(self, call: Call) -> Reply:
        """Cert auth: the client certificate's SPIFFE ID is the identity; an identity
        with no policy in the declaration cannot log in."""
        name = self.s.policies.identities.get(call.spiffe_id or "")
        if name is None or call.spiffe_id is None:
            raise PermissionDeniedError(
                "this identity has no secrets policy", reason=Reason.POLICY_DENY
            )
        token, entry = await self.s.tokens.issue(
            call.spiffe_id, (name,), display_name=f"cert-{name}"
        )
        return data_reply(None, call.request_id, auth=entry.auth_block(token, self.s.clock()))

    async def lookup_self(self, call: Call) -> Reply:
        entry = self._entry(call)
        return data_reply(entry.lookup(call.token, self.s.clock()), call.request_id)

    async def renew_self(self, call: Call) -> Reply:
        entry = self._entry(call)
        renewed = await self.s.tokens.renew(
            call.token or "", entry, _seconds(call.body.get("increment"))
        )
        auth = renewed.auth_block(call.token or "", self.s.clock())
        return data_reply(None, call.request_id, auth=auth)

    async def revoke_self(self, call: Call) -> Reply:
        """Revoke the token, then every lease it created (Vault's too): a lease that cannot
        be revoked now stays due and is retried at every sweep."""
        entry = self._entry(call)
        await self.s.tokens.revoke(call.token or "")
        await self.s.database.revoke_token_leases(entry.accessor)
        return NO_CONTENT

    @staticmethod
    def _entry(call: Call) -> TokenEntry:
        if call.entry is None:
            raise PermissionDeniedError("permission denied", reason=Reason.TOKEN_MISSING)
        return call.entry

    # -- KV v2 ---------------------------------------------------------------------------

    async def kv_config(self, call: Call) -> Reply:
        return data_reply(self.s.kv.read_config(), call.request_id)

    async def kv_set_config(self, call: Call) -> Reply:
        await self.s.kv.write_config(call.body)
        return NO_CONTENT

    async def kv_read(self, call: Call) -> Reply:
        version = _int(call.query.get("version", 0), "version", 0, 2**31)
        result = await self.s.kv.read(call.rest, version or None)
        return data_reply(result, call.request_id)

    async def kv_write(self, call: Call) -> Reply:
        return data_reply(await self.s.kv.write(call.rest, call.body), call.request_id)

    async def kv_patch(self, call: Call) -> Reply:
        return data_reply(await self.s.kv.patch(call.rest, call.body), call.request_id)

    async def kv_delete(self, call: Call) -> Reply:
        await self.s.kv.delete(call.rest)
        return NO_CONTENT

    async def kv_delete_versions(self, call: Call) -> Reply:
        await self.s.kv.delete(call.rest, call.body)
        return NO_CONTENT

    async def kv_undelete(self, call: Call) -> Reply:
        await self.s.kv.undelete(call.rest, call.body)
        return NO_CONTENT

    async def kv_destroy(self, call: Call) -> Reply:
        await self.s.kv.destroy(call.rest, call.body)
        return NO_CONTENT

    async def kv_metadata(self, call: Call) -> Reply:
        return data_reply(await self.s.kv.read_metadata(call.rest), call.request_id)

    async def kv_list(self, call: Call) -> Reply:
        return data_reply({"keys": await self.s.kv.list(call.rest)}, call.request_id)

    async def kv_set_metadata(self, call: Call) -> Reply:
        await self.s.kv.write_metadata(call.rest, call.body)
        return NO_CONTENT

    async def kv_delete_metadata(self, call: Call) -> Reply:
        await self.s.kv.delete_metadata(call.rest)
        return NO_CONTENT
