"""KV version 2 (Vault's versioned key/value engine, mounted at ``secret/``).

Each path has one metadata record (its versions' creation and deletion times, whether
each is destroyed, ``max_versions``, ``cas_required``, ``delete_version_after`` and
``custom_metadata``) and one sealed value per live version. A write is one transaction:
the check-and-set test, the new version, and the pruning of versions beyond
``max_versions`` commit together or not at all, so an acknowledged version is stored.

Soft delete marks a version deleted (undelete clears it); destroy removes its value for
good; deleting the metadata removes the path and every version. The answers are Vault's
shapes (``created_time``, ``deletion_time``, ``destroyed``, ``version`` …), so ``hvac``'s
``secrets.kv.v2`` reads them unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trustmesh.config.durations import seconds_or_zero
from trustmesh.errors import NotFoundError, UsageError
from trustmesh.secrets.barrier import Barrier
from trustmesh.secrets.store import SecretsStore, Tx

__all__ = ["DeletedVersion", "KvEngine", "rfc3339"]

DEFAULT_MAX_VERSIONS: Final = 10
MAX_CUSTOM_METADATA: Final = 64
LIST_LIMIT: Final = 10_000


def rfc3339(at: float | None) -> str:
    """Vault's time format (``2026-12-05T09:00:00.123456Z``); '' for none."""
    if at is None:
        return ""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DeletedVersion(NotFoundError):
    """The version exists but is deleted or destroyed: 404 with its metadata (Vault)."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        super().__init__("the version is deleted or destroyed")
        self.metadata = metadata


@dataclass
class _Version:
    created: float
    deleted: float | None = None
    destroyed: bool = False


@dataclass
class _Meta:
    created: float
    updated: float
    current: int = 0
    oldest: int = 0
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: float = 0.0
    custom_metadata: dict[str, str] | None = None
    versions: dict[int, _Version] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {
            "created": self.created,
            "updated": self.updated,
            "current": self.current,
            "oldest": self.oldest,
            "max_versions": self.max_versions,
            "cas_required": self.cas_required,
            "delete_version_after": self.delete_version_after,
            "custom_metadata": self.custom_metadata,
            "versions": {
                str(n): [v.created, v.deleted, v.destroyed] for n, v in self.versions.items()
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> _Meta:
        doc = json.loads(raw)
        versions = {int(n): _Version(*v) for n, v in doc.pop("versions").items()}
        return cls(**doc, versions=versions)

    def deletion_time(self, version: _Version) -> float | None:
        """When ``version`` was (or is due to be) deleted; ``delete_version_after`` counts."""
        if version.deleted is not None or not self.delete_version_after:
            return version.deleted
        return version.created + self.delete_version_after

    def version_info(self, number: int, now: float) -> dict[str, Any]:
        version = self.versions[number]
        deleted = self.deletion_time(version)
        return {
            "created_time": rfc3339(version.created),
            "custom_metadata": self.custom_metadata,
            "deletion_time": rfc3339(deleted) if deleted is not None and deleted <= now else "",
            "destroyed": version.destroyed,
            "version": number,
        }

    def alive(self, number: int, now: float) -> bool:
        version = self.versions.get(number)
        if version is None or version.destroyed:
            return False
        deleted = self.deletion_time(version)
        return deleted is None or deleted > now


class _SealedCache:
    """The sealed blobs this process read, by path (the store stays the truth: a write
    drops its path once committed, and a read started before a write never puts back
    what it read). Only sealed bytes are kept: a value opens on each read."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.generation = 0
        self._entries: dict[str, tuple[bytes | None, dict[int, bytes]]] = {}

    def get(self, path: str) -> tuple[bytes | None, dict[int, bytes]] | None:
        return self._entries.get(path)

    def put(self, path: str, meta: bytes | None, since: int) -> dict[int, bytes]:
        """Keep ``path``'s metadata (None: nothing there) read at generation ``since``."""
        values: dict[int, bytes] = {}
        if since == self.generation:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[path] = (meta, values)
        return values

    def drop(self, path: str) -> None:
        self.generation += 1
        self._entries.pop(path, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


def _place(path: str, version: int) -> bytes:
    return f"kv/{path}#{version}".encode()


def _meta_place(path: str) -> bytes:
    return f"kv-meta/{path}".encode()


def _versions(value: object) -> list[int]:
    if not isinstance(value, list) or not value:
        raise UsageError("no versions provided")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise UsageError("versions must be positive integers")
    return sorted(set(value))


def _seconds(value: object, name: str) -> float:
    try:
        return float(seconds_or_zero(value))
    except ValueError:
        raise UsageError(
            f"{name}: expected a duration such as '30m' or a number of seconds"
        ) from None


class KvEngine:
    """KV v2 over the store and the barrier (``clock``: epoch seconds)."""

    def __init__(
        self, store: SecretsStore, barrier: Barrier, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.barrier = barrier
        self.clock = clock
        self._writing = asyncio.Lock()  # one writer per process (SQLite has one anyway)
        self._cache = _SealedCache()
        self.config: dict[str, Any] = {
            "max_versions": 0,
            "cas_required": False,
            "delete_version_after": 0.0,
        }

    # -- helpers -------------------------------------------------------------------------

    async def _meta(self, tx: Tx, path: str, *, for_update: bool = False) -> _Meta | None:
        raw = await tx.kv_meta(path, for_update=for_update)
        if raw is None:
            return None
        return _Meta.from_bytes(self.barrier.open_value(raw, _meta_place(path)))

    async def _put_meta(self, tx: Tx, path: str, meta: _Meta, *, new: bool) -> None:
        sealed = self.barrier.seal_value(meta.to_bytes(), _meta_place(path))
        await tx.put_kv_meta(path, sealed, new=new)

    def _max_versions(self, meta: _Meta) -> int:
        return meta.max_versions or self.config["max_versions"] or DEFAULT_MAX_VERSIONS

    @contextlib.asynccontextmanager
    async def _changing(self, path: str) -> AsyncIterator[Tx]:
        """The one writer's transaction on ``path``; its cached blobs dropped once it
        committed (or failed)."""
        async with self._writing:
            try:
                async with self.store.tx() as tx:
                    yield tx
            finally:
                self._cache.drop(path)

    async def _cached_meta(self, path: str) -> tuple[bytes | None, dict[int, bytes]]:
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        since = self._cache.generation
        async with self.store.tx() as tx:
            raw = await tx.kv_meta(path)
        return raw, self._cache.put(path, raw, since)

    async def exists(self, path: str) -> bool:
        return (await self._cached_meta(path))[0] is not None

    # -- data ----------------------------------------------------------------------------

    async def write(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = body.get("data")
        if not isinstance(data, dict):
            raise UsageError("no data provided")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise UsageError("options must be an object")
        return await self._write(path, data, options.get("cas"))

    async def _write(self, path: str, data: dict[str, Any], cas: object) -> dict[str, Any]:
        if cas is not None and (not isinstance(cas, int) or isinstance(cas, bool) or cas < 0):
            raise UsageError("cas must be a non-negative integer")
        plaintext = json.dumps(data, separators=(",", ":")).encode()
        async with self._changing(path) as tx:
            now = self.clock()
            meta = await self._meta(tx, path, for_update=True)
            new = meta is None
            meta = meta or _Meta(created=now, updated=now)
            if cas is None and (meta.cas_required or self.config["cas_required"]):
                raise UsageError("check-and-set parameter required for this call")
            if cas is not None and cas != meta.current:
                raise UsageError("check-and-set parameter did not match the current version")
            number = meta.current + 1
            meta.current = number
            meta.updated = now
            meta.versions[number] = _Version(now)
            meta.oldest = meta.oldest or number
            await tx.put_kv_value(
                path, number, self.barrier.seal_value(plaintext, _place(path, number))
            )
            await self._prune(tx, path, meta)
            await self._put_meta(tx, path, meta, new=new)
            return meta.version_info(number, now)

    async def _prune(self, tx: Tx, path: str, meta: _Meta) -> None:
        """Forget the oldest versions beyond ``max_versions`` (their values too)."""
        keep = self._max_versions(meta)
        numbers = sorted(meta.versions)
        dropped = numbers[: max(0, len(numbers) - keep)]
        if dropped:
            for number in dropped:
                del meta.versions[number]
            await tx.drop_kv_values(path, dropped)
        meta.oldest = min(meta.versions) if meta.versions else 0

    async def read(self, path: str, version: int | None = None) -> dict[str, Any]:
        """``{"data": …, "metadata": …}`` of a version (the current one by default)."""
        since = self._cache.generation
        raw, values = await self._cached_meta(path)
        if raw is None:
            raise NotFoundError("no value at this path")
        meta = _Meta.from_bytes(self.barrier.open_value(raw, _meta_place(path)))
        number = version or meta.current
        if not meta.current or number not in meta.versions:
            raise NotFoundError("no such version")
        now = self.clock()
        info = meta.version_info(number, now)
        if not meta.alive(number, now):
            raise DeletedVersion(info)
        sealed = values.get(number)
        if sealed is None:
            async with self.store.tx() as tx:
                sealed = await tx.kv_value(path, number)
            if sealed is None:
                raise DeletedVersion(info)
            if since == self._cache.generation:
                values[number] = sealed
        value = json.loads(self.barrier.open_value(sealed, _place(path, number)))
        return {"data": value, "metadata": info}

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """RFC 7396 JSON merge patch of the current version into a new one (the current
        version must be alive; ``options.cas`` as for a write)."""
        patch = body.get("data")
        if not isinstance(patch, dict):
            raise UsageError("no data provided")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise UsageError("options must be an object")
        current = await self.read(path)
        merged = _merge(current["data"], patch)
        cas = options.get("cas", current["metadata"]["version"])
        return await self._write(path, merged, cas)

    async def _edit_versions(
        self, path: str, versions: list[int] | None, edit: Callable[[_Version, float], None]
    ) -> list[int]:
        """Apply ``edit`` to ``versions`` (None: the current one) of ``path``; return the
        versions edited."""
        async with self._changing(path) as tx:
            meta = await self._meta(tx, path, for_update=True)
            if meta is None:
                return []
            now = self.clock()
            chosen = versions if versions is not None else [meta.current]
            edited = [n for n in chosen if n in meta.versions]
            for number in edited:
                edit(meta.versions[number], now)
            meta.updated = now
            if edited:
                await self._put_meta(tx, path, meta, new=False)
            destroyed = [n for n in edited if meta.versions[n].destroyed]
            if destroyed:
                await tx.drop_kv_values(path, destroyed)
            return edited

    async def delete(self, path: str, body: Mapping[str, Any] | None = None) -> None:
        """Soft-delete the listed versions (``body.versions``), or the current one."""
        versions = _versions(body.get("versions")) if body is not None else None

        def mark(version: _Version, now: float) -> None:
            if not version.destroyed and version.deleted is None:
                version.deleted = now

        await self._edit_versions(path, versions, mark)

    async def undelete(self, path: str, body: Mapping[str, Any]) -> None:
        def clear(version: _Version, _now: float) -> None:
            if not version.destroyed:
                version.deleted = None

        await self._edit_versions(path, _versions(body.get("versions")), clear)

    async def destroy(self, path: str, body: Mapping[str, Any]) -> None:
        def destroy(version: _Version, _now: float) -> None:
            version.destroyed = True

        await self._edit_versions(path, _versions(body.get("versions")), destroy)

    # -- metadata ------------------------------------------------------------------------

    async def read_metadata(self, path: str) -> dict[str, Any]:
        async with self.store.tx() as tx:
            meta = await self._meta(tx, path)
        if meta is None:
            raise NotFoundError("no metadata at this path")
        now = self.clock()
        versions = {}
        for number in sorted(meta.versions):
            info = meta.version_info(number, now)
            versions[str(number)] = {
                k: info[k] for k in ("created_time", "deletion_time", "destroyed")
            }
        return {
            "cas_required": meta.cas_required,
            "created_time": rfc3339(meta.created),
            "current_version": meta.current,
            "custom_metadata": meta.custom_metadata,
            "delete_version_after": f"{int(meta.delete_version_after)}s",
            "max_versions": meta.max_versions,
            "oldest_version": meta.oldest,
            "updated_time": rfc3339(meta.updated),
            "versions": versions,
        }

    async def write_metadata(self, path: str, body: Mapping[str, Any]) -> None:
        changes = _metadata_changes(body)
        async with self._changing(path) as tx:
            now = self.clock()
            meta = await self._meta(tx, path, for_update=True)
            new = meta is None
            meta = meta or _Meta(created=now, updated=now)
            for name, value in changes.items():
                setattr(meta, name, value)
            meta.updated = now
            await self._prune(tx, path, meta)
            await self._put_meta(tx, path, meta, new=new)

    async def delete_metadata(self, path: str) -> None:
        async with self._changing(path) as tx:
            await tx.drop_kv_values(path)
            await tx.drop_kv_meta(path)

    async def list(self, folder: str) -> list[str]:
        """The keys directly under ``folder`` ('' or ending in '/'): names, and
        sub-folders with a trailing '/'; NotFoundError when there are none."""
        if folder and not folder.endswith("/"):
            folder += "/"
        async with self.store.tx() as tx:
            paths = await tx.kv_paths(folder, LIST_LIMIT)
        keys: list[str] = []
        for path in paths:
            rest = path[len(folder) :]
            head, slash, _ = rest.partition("/")
            key = head + slash
            if key and (not keys or keys[-1] != key):
                keys.append(key)
        if not keys:
            raise NotFoundError("nothing under this path")
        return sorted(set(keys))

    # -- the mount's configuration --------------------------------------------------------

    async def load_config(self) -> None:
        async with self.store.tx() as tx:
            raw = await tx.system("kv-config")
        if raw is not None:
            self.config.update(json.loads(raw))

    async def write_config(self, body: Mapping[str, Any]) -> None:
        changes = _metadata_changes(
            body, allowed=("max_versions", "cas_required", "delete_version_after")
        )
        config = {**self.config, **changes}
        async with self.store.tx() as tx:
            await tx.put_system("kv-config", json.dumps(config).encode())
        self.config = config

    def read_config(self) -> dict[str, Any]:
        return {
            "cas_required": self.config["cas_required"],
            "delete_version_after": f"{int(self.config['delete_version_after'])}s",
            "max_versions": self.config["max_versions"],
        }


_METADATA_FIELDS: Final = (
    "max_versions",
    "cas_required",
    "delete_version_after",
    "custom_metadata",
)


def _metadata_changes(
    body: Mapping[str, Any], allowed: tuple[str, ...] = _METADATA_FIELDS
) -> dict[str, Any]:
    unknown = set(body) - set(allowed)
    if unknown:
        raise UsageError(f"unknown field: {sorted(unknown)[0][:64]}")
    changes: dict[str, Any] = {}
    if "max_versions" in body:
        value = body["max_versions"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000:
            raise UsageError("max_versions must be an integer from 0 to 1000")
        changes["max_versions"] = value
    if "cas_required" in body:
        if not isinstance(body["cas_required"], bool):
            raise UsageError("cas_required must be true or false")
        changes["cas_required"] = body["cas_required"]
    if "delete_version_after" in body:
        changes["delete_version_after"] = _seconds(
            body["delete_version_after"], "delete_version_after"
        )
    if "custom_metadata" in body:
        changes["custom_metadata"] = _custom_metadata(body["custom_metadata"])
    return changes


def _custom_metadata(value: object) -> dict[str, str] | None:
    """Vault's limits: at most 64 keys, keys up to 128 bytes, values up to 512."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_CUSTOM_METADATA:
        raise UsageError("custom_metadata must be an object of at most 64 string pairs")
    for key, item in value.items():
        if (
            not isinstance(item, str)
            or not 0 < len(key.encode()) <= 128
            or len(item.encode()) > 512
        ):
            raise UsageError("custom_metadata: keys of 1-128 bytes, string values of up to 512")
    return dict(value)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7396 §2: a merge patch (null removes a member)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result
