"""Where the running identity service listens, below the state directory: the Workload
API socket (``public/``, which any local process may reach), the snapshot of its mTLS
listener that it writes (``discovery.json``: the URL of discovery and of the admin API),
and the operator's socket (``private/``, its owner's alone). Kept apart from the
service's own modules so that reading it imports nothing heavy (the CLI does)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from trustmesh.errors import StateError

__all__ = ["MAX_SOCKET_PATH", "IdentityPaths", "prepare_state_dir"]

#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class IdentityPaths:
    """Where the identity service keeps its state, below the state directory."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "identity.db"

    def published_roots(self) -> bytes:
        """The root certificates (PEM) of every CA generation the store holds — the
        trust bundle — read without writing (empty before the CA's first start)."""
        if not self.db.exists():
            return b""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT doc FROM ca_generations ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # no table yet
            return b""
        finally:
            db.close()
        return "".join(str(json.loads(doc).get("root", "")) for (doc,) in rows).encode()

    @property
    def socket(self) -> Path:
        return self.root / "public" / "workload.sock"

    @property
    def operator_socket(self) -> Path:
        """Where the state directory's owner gets a one-time join token for the operator
        (:mod:`trustmesh.identity.operator`)."""
        return self.root / "private" / "operator.sock"

    @property
    def events(self) -> Path:
        return self.root / "events" / "identity.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / "identity.lock"

    @property
    def discovery(self) -> Path:
        return self.root / "discovery.json"

    @property
    def auth_endpoint(self) -> Path:
        """Where the identity provider, once running, writes its URLs (``trustmesh.auth``
        writes this file; the admin API reads it to check admin users' tokens)."""
        return self.root / "auth" / "endpoint.json"

    @property
    def socket_address(self) -> str:
        return f"unix://{self.socket.absolute()}"

    def socket_too_long(self) -> Path | None:
        """A socket path over :data:`MAX_SOCKET_PATH` (the state directory's path is too
        long for it), or None."""
        for path in (self.socket, self.operator_socket):
            if len(str(path.absolute())) > MAX_SOCKET_PATH:
                return path
        return None


def prepare_state_dir(root: Path) -> None:
    """The state directory: the owner's alone (0711: others may pass through to the
    Workload API socket in ``public/``, but may not list it; every file inside is 0600;
    ``private/`` is 0700)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    st = root.stat()
    if st.st_uid != os.getuid():
        raise StateError(f"state directory {root} is owned by another user")
    if stat.S_IMODE(st.st_mode) != 0o711:
        root.chmod(0o711)
    for name, mode in (("public", 0o755), ("private", 0o700)):
        folder = root / name
        folder.mkdir(exist_ok=True, mode=mode)
        if folder.is_symlink() or not folder.is_dir():
            raise StateError(f"{folder} must be a directory")
        if folder.stat().st_uid != os.getuid():
            raise StateError(f"{folder} is owned by another user")
        folder.chmod(mode)
