"""A redis-server of a test's own: on a free loopback port, without persistence, which
the test may kill and start again (never the machine's own Redis). With ``tls`` (its
certificate, key and the CA its clients' certificates must chain to), it speaks TLS
only and requires a client certificate; the test reaches it as its components do
(:mod:`trustmesh.sdk.store_tls`: the SVID the test process presents)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from trustmesh.sdk import store_tls

__all__ = ["PrivateRedis"]


class PrivateRedis:
    def __init__(self, directory: Path, *, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.directory = directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.tls = tls
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key, ca = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                      "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                      "--tls-auth-clients", "yes"]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - a fixed command line
            [binary, *listen, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    async def keys(self, match: str = "*") -> list[str]:
        client = store_tls.redis_client(self.url, decode_responses=True)
        try:
            return [k async for k in client.scan_iter(match=match)]
        finally:
            await client.aclose()
