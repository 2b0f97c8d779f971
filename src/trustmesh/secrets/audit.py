"""The audit device, as Vault's file device: every request and its response, one JSON line
each, fsynced before the request goes on (request) or the answer leaves (response).

Secret values and tokens never reach the file: every string in a request's and a
response's data, and the client token and its accessor, are replaced by
``hmac-sha256:<hex>`` under the service's audit key, so an auditor holding a value can
ask ``sys/audit-hash`` whether it is the one that was read, and nobody can read it back.

If the device cannot record a request, the request fails (503): nothing is served
unaudited. Concurrent requests share an fsync (group commit): each waits for an fsync
that began after its own line was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from trustmesh.errors import UnavailableError
from trustmesh.reasons import Reason

__all__ = ["AuditDevice"]


class AuditDevice:
    """A JSON-lines file, opened for appending (0600), fsynced per request."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        self._fd: int | None = None
        self._written = 0
        self._synced = 0
        self._lock = asyncio.Lock()
        self.failures = 0

    def hash(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{digest}"

    def hashed(self, value: Any) -> Any:
        """``value`` with every string (and number) inside replaced by its HMAC."""
        if isinstance(value, dict):
            return {k: self.hashed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.hashed(v) for v in value]
        if isinstance(value, str):
            return self.hash(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self.hash(json.dumps(value))
        return value

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    async def record(self, entry: dict[str, Any]) -> None:
        """Write ``entry`` and return once it is on disk; UnavailableError otherwise."""
        line = json.dumps(entry, separators=(",", ":"), default=str).encode() + b"\n"
        try:
            fd = self._open()
            os.write(fd, line)
        except OSError as exc:
            self._fail()
            raise UnavailableError(
                f"the audit device could not record the request ({exc.strerror})",
                reason=Reason.AUDIT_UNAVAILABLE,
            ) from None
        self._written += 1
        await self._sync(self._written)

    async def _sync(self, mine: int) -> None:
        async with self._lock:
            if self._synced >= mine:
                return  # an fsync that began after this line was written covered it
            upto = self._written
            fd = self._fd
            try:
                if fd is None:
                    raise OSError(0, "the audit file is closed")
                await asyncio.to_thread(os.fsync, fd)
            except OSError as exc:
                self._fail()
                raise UnavailableError(
                    f"the audit device could not sync ({exc.strerror})",
                    reason=Reason.AUDIT_UNAVAILABLE,
                ) from None
            self._synced = upto

    def _fail(self) -> None:
        self.failures += 1
        fd, self._fd = self._fd, None  # reopened on the next request
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
