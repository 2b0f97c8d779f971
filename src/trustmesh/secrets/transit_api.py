"""Transit (encryption as a service) over the Vault API, mounted at ``transit/``: the
named keys, sealed at rest under the barrier (bound to their name), and the routes that
create, read, configure, rotate and delete them, and encrypt, decrypt, rewrap and make
data keys with them (:mod:`trustmesh.secrets.transit` decides; this module stores and
answers).

As in Vault, ``encrypt`` creates a missing key (an upsert) only for a caller whose
policy grants ``create`` on the path; ``update`` alone encrypts with existing keys.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from trustmesh.errors import NotFoundError
from trustmesh.secrets.app import NO_CONTENT, Call, Reply, Route, data_reply
from trustmesh.secrets.barrier import Barrier
from trustmesh.secrets.store import SecretsStore
from trustmesh.secrets.transit import KEY_NOT_FOUND, BatchAnswer, TransitError, TransitKey

__all__ = ["TransitKeys", "TransitRoutes"]

_NAME = r"([A-Za-z0-9_.-]{1,128})"
_OPTIONS = ("associated_data", "context", "nonce")


def _place(name: str) -> bytes:
    return f"transit/{name}".encode()


class TransitKeys:
    """The keys in the store, opened once and kept while the service is unsealed."""

    def __init__(
        self, store: SecretsStore, barrier: Barrier, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.barrier = barrier
        self.clock = clock
        self._open: dict[str, TransitKey] = {}
        self._writing = asyncio.Lock()

    def clear(self) -> None:
        """Forget every opened key (the service seals)."""
        self._open = {}

    async def get(self, name: str) -> TransitKey | None:
        key = self._open.get(name)
        if key is not None:
            return key
        async with self.store.tx() as tx:
            sealed = await tx.transit_key(name)
        if sealed is None:
            return None
        key = TransitKey.from_bytes(self.barrier.open_value(sealed, _place(name)))
        self._open[name] = key
        return key

    async def require(self, name: str) -> TransitKey:
        key = await self.get(name)
        if key is None:
            raise TransitError(KEY_NOT_FOUND)
        return key

    async def change(
        self, name: str, edit: Callable[[TransitKey | None], TransitKey]
    ) -> TransitKey:
        """Store ``edit(current)`` in place of the key (None: there is none yet)."""
        async with self._writing, self.store.tx() as tx:
            sealed = await tx.transit_key(name, for_update=True)
            current = (
                TransitKey.from_bytes(self.barrier.open_value(sealed, _place(name)))
                if sealed is not None
                else None
            )
            changed = edit(current)
            blob = self.barrier.seal_value(changed.to_bytes(), _place(name))
            await tx.put_transit_key(name, blob, new=current is None)
        self._open[name] = changed
        return changed

    async def delete(self, name: str) -> None:
        async with self._writing, self.store.tx() as tx:
            sealed = await tx.transit_key(name, for_update=True)
            if sealed is None:
                raise NotFoundError("no such key")
            TransitKey.from_bytes(self.barrier.open_value(sealed, _place(name))).ensure_deletable()
            await tx.drop_transit_key(name)
        self._open.pop(name, None)

    async def names(self) -> list[str]:
        async with self.store.tx() as tx:
            names = await tx.transit_names()
        if not names:
            raise NotFoundError("no keys")
        return names


def _version(body: dict[str, Any]) -> int | None:
    value = body.get("key_version")
    if value is None or value == 0:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TransitError("key_version must be an integer")
    return value


def _options(body: dict[str, Any]) -> dict[str, str | None]:
    options = {name: body.get(name) for name in _OPTIONS}
    for name, value in options.items():
        if value is not None and not isinstance(value, str):
            raise TransitError(f"{name} must be a string")
    return options


def _batch_reply(answer: BatchAnswer, call: Call) -> Reply:
    reply = data_reply(answer.data, call.request_id, warnings=list(answer.warnings) or None)
    return Reply(answer.status, reply.body)


class TransitRoutes:
    def __init__(self, keys: TransitKeys) -> None:
        self.keys = keys

    def table(self) -> list[Route]:
        async def key_exists(call: Call) -> bool:
            return await self.keys.get(call.rest) is not None

        def route(pattern: str, exists: Any = None, **handlers: Any) -> Route:
            methods = {m.upper(): h for m, h in handlers.items()}
            return Route(re.compile(pattern), methods, "token", exists)

        return [
            route("transit/keys/?", list=self.list_keys),
            route(
                f"transit/keys/{_NAME}",
                key_exists,
                get=self.read_key,
                post=self.create_key,
                put=self.create_key,
                delete=self.delete_key,
            ),
            route(f"transit/keys/{_NAME}/config", post=self.configure, put=self.configure),
            route(f"transit/keys/{_NAME}/rotate", post=self.rotate, put=self.rotate),
            route(f"transit/encrypt/{_NAME}", key_exists, post=self.encrypt, put=self.encrypt),
            route(f"transit/decrypt/{_NAME}", post=self.decrypt, put=self.decrypt),
            route(f"transit/rewrap/{_NAME}", post=self.rewrap, put=self.rewrap),
            Route(
                re.compile(f"transit/datakey/(plaintext|wrapped)/{_NAME}"),
                {"POST": self.datakey, "PUT": self.datakey},
            ),
        ]

    # -- keys ----------------------------------------------------------------------------

    async def list_keys(self, call: Call) -> Reply:
        return data_reply({"keys": await self.keys.names()}, call.request_id)

    async def read_key(self, call: Call) -> Reply:
        key = await self.keys.get(call.rest)
        if key is None:
            raise NotFoundError("no such key")
        return data_reply(key.read(), call.request_id)

    async def create_key(self, call: Call) -> Reply:
        body = call.body
        now = self.keys.clock()

        def create(current: TransitKey | None) -> TransitKey:
            if current is not None:
                return current  # Vault: creating an existing key changes nothing
            return TransitKey.create(
                call.rest,
                now=now,
                key_type=body.get("type", "aes256-gcm96"),
                derived=bool(body.get("derived", False)),
                convergent_encryption=bool(body.get("convergent_encryption", False)),
                exportable=bool(body.get("exportable", False)),
                allow_plaintext_backup=bool(body.get("allow_plaintext_backup", False)),
            )

        key = await self.keys.change(call.rest, create)
        return data_reply(key.read(), call.request_id)

    async def configure(self, call: Call) -> Reply:
        body = call.body
        warnings: tuple[str, ...] = ()

        def configure(current: TransitKey | None) -> TransitKey:
            nonlocal warnings
            if current is None:
                raise TransitError(KEY_NOT_FOUND)
            changed, warnings = current.configure(
                min_decryption_version=body.get("min_decryption_version"),
                min_encryption_version=body.get("min_encryption_version"),
                deletion_allowed=body.get("deletion_allowed"),
                exportable=body.get("exportable"),
            )
            return changed

        key = await self.keys.change(call.rest, configure)
        return data_reply(key.read(), call.request_id, warnings=list(warnings) or None)

    async def rotate(self, call: Call) -> Reply:
        now = self.keys.clock()

        def rotate(current: TransitKey | None) -> TransitKey:
            if current is None:
                raise TransitError(KEY_NOT_FOUND)
            return current.rotate(now=now)

        key = await self.keys.change(call.rest, rotate)
        return data_reply(key.read(), call.request_id)

    async def delete_key(self, call: Call) -> Reply:
        await self.keys.delete(call.rest)
        return NO_CONTENT

    # -- encryption ----------------------------------------------------------------------

    async def encrypt(self, call: Call) -> Reply:
        name, body = call.rest, call.body
        key = await self.keys.get(name)
        if key is None:  # the route admitted "create": an upsert, as Vault does
            now = self.keys.clock()
            key = await self.keys.change(
                name, lambda current: current or TransitKey.create(name, now=now)
            )
        if "batch_input" in body:
            code = body.get("partial_failure_response_code")
            answer = key.encrypt_batch(body["batch_input"], partial_failure_response_code=code)
            return _batch_reply(answer, call)
        result = key.encrypt(body.get("plaintext"), key_version=_version(body), **_options(body))
        return data_reply(dict(result), call.request_id)

    async def decrypt(self, call: Call) -> Reply:
        key, body = await self.keys.require(call.rest), call.body
        if "batch_input" in body:
            code = body.get("partial_failure_response_code")
            answer = key.decrypt_batch(body["batch_input"], partial_failure_response_code=code)
            return _batch_reply(answer, call)
        result = key.decrypt(body.get("ciphertext"), **_options(body))
        return data_reply(dict(result), call.request_id)

    async def rewrap(self, call: Call) -> Reply:
        key, body = await self.keys.require(call.rest), call.body
        if "batch_input" in body:
            return _batch_reply(key.rewrap_batch(body["batch_input"]), call)
        result = key.rewrap(body.get("ciphertext"), key_version=_version(body), **_options(body))
        return data_reply(dict(result), call.request_id)

    async def datakey(self, call: Call) -> Reply:
        kind, name = call.match.groups() if call.match is not None else ("", "")
        key, body = await self.keys.require(name), call.body
        bits = body.get("bits", 256)
        options = _options(body)
        result = key.datakey(
            kind,
            bits=bits,
            key_version=_version(body),
            context=options["context"],
            nonce=options["nonce"],
        )
        return data_reply(dict(result), call.request_id)
