"""Where a route's service is: its live endpoints from discovery (the gateway may look up
only its routes' targets), taken in turn (round robin), each reached by a pooled mTLS
client that checks the endpoint's SPIFFE ID. Endpoints are re-read every few seconds."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

from trustmesh.errors import UnavailableError
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.discovery import DiscoveryClient, Endpoint
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["UpstreamPool"]

REFRESH_SECONDS = 5.0


class UpstreamPool:
    def __init__(
        self,
        tls: RotatingTLS,
        discovery: DiscoveryClient,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tls = tls
        self.discovery = discovery
        self.timeout = timeout
        self.clock = clock
        self._endpoints: dict[str, tuple[float, list[Endpoint], Iterator[int]]] = {}
        self._clients: dict[tuple[str, str], ServiceClient] = {}

    async def __call__(self, service: str) -> ServiceClient:
        now = self.clock()
        cached = self._endpoints.get(service)
        if cached is None or now - cached[0] >= REFRESH_SECONDS:
            endpoints = await self.discovery.lookup(service)
            cached = (now, endpoints, itertools.cycle(range(max(len(endpoints), 1))))
            self._endpoints[service] = cached
        _, endpoints, turn = cached
        if not endpoints:
            raise UnavailableError(f"no live instance of {service}")
        endpoint = endpoints[next(turn) % len(endpoints)]
        key = (endpoint.url, endpoint.spiffe_id)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = ServiceClient(
                self.tls, endpoint.url, endpoint.spiffe_id, timeout=self.timeout, retries=1
            )
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
