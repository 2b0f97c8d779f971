"""Run the real identity service on its own event loop thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from trustmesh.config import TrustmeshConfig
from trustmesh.identity.server import IdentityServer
from trustmesh.sdk.x509source import X509Context, X509Source

T = TypeVar("T")


@dataclass
class FixedSVIDSource:
    """An SVID source holding one SVID, never rotated: what a test presents where a
    process presents its own (:func:`trustmesh.sdk.store_tls.present`)."""

    context: X509Context

    @classmethod
    async def fetched(cls, address: str, spiffe_id: str) -> FixedSVIDSource:
        """``spiffe_id``'s SVID, fetched once from the Workload API at ``address``."""
        source = X509Source(address, spiffe_id=spiffe_id)
        try:
            return cls(await source.start())
        finally:
            await source.close()

    def subscribe(self, callback: Callable[[X509Context], None]) -> None:
        callback(self.context)

    async def start(self, timeout: float = 30.0) -> X509Context:
        return self.context

    async def close(self) -> None:
        return None


@dataclass
class RunningIdentityServer:
    server: IdentityServer
    loop: asyncio.AbstractEventLoop

    @property
    def address(self) -> str:
        return self.server.paths.socket_address

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on the server's loop (the server is not thread-safe)."""

        async def run() -> T:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)


@contextmanager
def identity_server_in_thread(
    config: TrustmeshConfig, state_dir: Path, **kwargs: Any
) -> Iterator[RunningIdentityServer]:
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[IdentityServer] = concurrent.futures.Future()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                server = IdentityServer(config, state_dir, **kwargs)
                await server.start()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                started.set_exception(exc)
                return
            started.set_result(server)

        loop.run_until_complete(boot())
        if started.exception() is None:
            loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="trustmesh-identity", daemon=True)
    thread.start()
    server = started.result(timeout=60)
    try:
        yield RunningIdentityServer(server, loop)
    finally:

        async def stop() -> None:
            await server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
