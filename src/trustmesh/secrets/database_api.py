"""The database secrets engine over the Vault API, mounted at ``database/``, and the
lease endpoints of ``sys/leases/`` (:mod:`trustmesh.secrets.database` decides; this
module reads requests and answers them):

- ``database/config/<name>`` (POST/PUT create or update, GET, DELETE) and LIST
  ``database/config``: the answer never holds the root password;
- ``database/roles/<name>`` (POST/PUT, GET, DELETE) and LIST ``database/roles``;
- ``database/creds/<role>`` (GET): a fresh login under a lease
  (``database/creds/<role>/<random>``);
- ``database/rotate-root/<name>`` (POST/PUT);
- ``sys/leases/lookup``, ``sys/leases/renew``, ``sys/leases/revoke`` (PUT/POST with
  ``lease_id``; renew and revoke also take it in the path), and
  ``sys/leases/revoke-prefix/<prefix>`` — the operator's only (Vault asks ``sudo``,
  which the declaration does not offer). A token may look up, renew and revoke the
  leases it created without a policy for ``sys/leases/*`` (Vault's default policy grants
  any token these paths for any lease; here only for its own).

As in Vault, a write to a connection or a role that does not exist needs ``create``;
to one that does, ``update``.
"""

from __future__ import annotations

import re
from typing import Any

from trustmesh.errors import NotFoundError, PermissionDeniedError, UsageError
from trustmesh.reasons import Reason
from trustmesh.secrets.app import NO_CONTENT, Access, Call, Handler, Reply, Route, data_reply
from trustmesh.secrets.database import DatabaseEngine
from trustmesh.secrets.database_model import NAME_PATTERN, ttl_seconds

__all__ = ["DatabaseRoutes"]

_NAME = f"({NAME_PATTERN})"


def _lease_id(call: Call) -> str:
    """The lease a ``sys/leases/*`` call names: in the path, or ``lease_id`` in the body."""
    lease_id = call.rest or call.body.get("lease_id")
    if not isinstance(lease_id, str) or not lease_id:
        raise UsageError("lease_id is required")
    return lease_id


def _keys(names: list[str], call: Call) -> Reply:
    if not names:
        raise NotFoundError("nothing to list")
    return data_reply({"keys": names}, call.request_id)


class DatabaseRoutes:
    def __init__(self, engine: DatabaseEngine) -> None:
        self.engine = engine

    def table(self) -> list[Route]:
        engine = self.engine

        async def connection_exists(call: Call) -> bool:
            return await engine.connection(call.rest) is not None

        async def role_exists(call: Call) -> bool:
            return await engine.role(call.rest) is not None

        async def own_lease(call: Call) -> bool:
            lease_id = call.rest or call.body.get("lease_id")
            if call.entry is None or not isinstance(lease_id, str):
                return False
            return await engine.created_by(lease_id, call.entry.accessor)

        def route(
            pattern: str,
            access: Access = "token",
            exists: Any = None,
            owned: Any = None,
            **handlers: Handler,
        ) -> Route:
            methods = {m.upper(): h for m, h in handlers.items()}
            return Route(re.compile(pattern), methods, access, exists, owned)

        return [
            route("database/config/?", list=self.list_connections),
            route(
                f"database/config/{_NAME}",
                exists=connection_exists,
                get=self.read_connection,
                delete=self.delete_connection,
                post=self.configure,
                put=self.configure,
            ),
            route("database/roles/?", list=self.list_roles),
            route(
                f"database/roles/{_NAME}",
                exists=role_exists,
                get=self.read_role,
                delete=self.delete_role,
                post=self.write_role,
                put=self.write_role,
            ),
            route(f"database/creds/{_NAME}", get=self.creds),
            route(f"database/rotate-root/{_NAME}", post=self.rotate_root, put=self.rotate_root),
            route("sys/leases/lookup", owned=own_lease, put=self.lookup, post=self.lookup),
            route("sys/leases/renew(?:/(.+))?", owned=own_lease, put=self.renew, post=self.renew),
            route(
                "sys/leases/revoke(?:/(.+))?", owned=own_lease, put=self.revoke, post=self.revoke
            ),
            route(
                "sys/leases/revoke-prefix/(.+)",
                "operator",
                put=self.revoke_prefix,
                post=self.revoke_prefix,
            ),
        ]

    # -- connections ---------------------------------------------------------------------

    async def configure(self, call: Call) -> Reply:
        await self.engine.configure(call.rest, call.body)
        return NO_CONTENT

    async def read_connection(self, call: Call) -> Reply:
        connection = await self.engine.connection(call.rest)
        if connection is None:
            raise NotFoundError("no such connection")
        return data_reply(connection.read(), call.request_id)

    async def list_connections(self, call: Call) -> Reply:
        return _keys(await self.engine.connection_names(), call)

    async def delete_connection(self, call: Call) -> Reply:
        await self.engine.delete_connection(call.rest)
        return NO_CONTENT

    async def rotate_root(self, call: Call) -> Reply:
        await self.engine.rotate_root(call.rest)
        return NO_CONTENT

    # -- roles ---------------------------------------------------------------------------

    async def write_role(self, call: Call) -> Reply:
        await self.engine.write_role(call.rest, call.body)
        return NO_CONTENT

    async def read_role(self, call: Call) -> Reply:
        role = await self.engine.role(call.rest)
        if role is None:
            raise NotFoundError("no such role")
        return data_reply(role.read(), call.request_id)

    async def list_roles(self, call: Call) -> Reply:
        return _keys(await self.engine.role_names(), call)

    async def delete_role(self, call: Call) -> Reply:
        await self.engine.delete_role(call.rest)
        return NO_CONTENT

    # -- credentials and leases ----------------------------------------------------------

    async def creds(self, call: Call) -> Reply:
        if call.entry is None:
            raise PermissionDeniedError("permission denied", reason=Reason.TOKEN_MISSING)
        issued = await self.engine.issue(call.rest, call.entry.display_name, call.entry.accessor)
        return data_reply(
            {"username": issued.lease.username, "password": issued.password},
            call.request_id,
            lease_id=issued.lease.lease_id,
            lease_duration=issued.ttl,
            renewable=True,
        )

    async def lookup(self, call: Call) -> Reply:
        return data_reply(await self.engine.lookup(_lease_id(call)), call.request_id)

    async def renew(self, call: Call) -> Reply:
        increment = ttl_seconds(call.body.get("increment"), "increment")
        lease, ttl, warning = await self.engine.renew(_lease_id(call), increment)
        return data_reply(
            None,
            call.request_id,
            lease_id=lease.lease_id,
            lease_duration=ttl,
            renewable=True,
            warnings=[warning] if warning else None,
        )

    async def revoke(self, call: Call) -> Reply:
        await self.engine.revoke(_lease_id(call))
        return NO_CONTENT

    async def revoke_prefix(self, call: Call) -> Reply:
        await self.engine.revoke_prefix(call.rest)
        return NO_CONTENT
