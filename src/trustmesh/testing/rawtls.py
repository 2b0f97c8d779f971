"""Raw HTTP over TLS, for tests that send what no well-behaved client would (a trickled
head, a 32 MB header line, two ``Host`` headers) and read exactly what came back."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RawTLS", "close", "until_closed"]


@dataclass(frozen=True)
class RawTLS:
    """TLS connections to ``127.0.0.1:port``, trusting the CA in ``cafile``."""

    port: int
    cafile: Path

    async def open(
        self, source: str = "127.0.0.1"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection from ``source`` (any 127/8 address is loopback: another client)."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=context, server_hostname="localhost",
            local_addr=(source, 0),
        )  # fmt: skip

    async def exchange(self, raw: bytes, *, timeout: float = 5.0) -> bytes:
        """Send ``raw`` on a new connection; all the server sent until it closed."""
        reader, writer = await self.open()
        try:
            writer.write(raw)
            await writer.drain()
            return await until_closed(reader, timeout)
        finally:
            await close(writer)


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent before it closed the connection; TimeoutError if it stays
    open longer than ``timeout`` seconds."""

    async def read_all() -> bytes:
        chunks = []
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    return await asyncio.wait_for(read_all(), timeout)


async def close(writer: asyncio.StreamWriter) -> None:
    """Close, not minding a peer that went first."""
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)
