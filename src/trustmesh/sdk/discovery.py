"""Finding the services this one may call, through the identity service's discovery API
(over mTLS; the identity service must present ``spiffe://<td>/trustmesh/identity``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

from trustmesh.errors import NotFoundError, TrustmeshError, UnavailableError
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.tls import RotatingTLS

log = logging.getLogger("trustmesh.sdk")

DISCOVERY_ENV = "TRUSTMESH_DISCOVERY_URL"
HEARTBEAT = 5.0


@dataclass(frozen=True)
class Endpoint:
    url: str
    spiffe_id: str


class DiscoveryClient:
    def __init__(self, tls: RotatingTLS, url: str | None = None) -> None:
        url = url or os.environ.get(DISCOVERY_ENV)
        if not url:
            raise UnavailableError(f"no discovery URL: pass one or set {DISCOVERY_ENV}")
        expected = f"spiffe://{tls.trust_domain}/trustmesh/identity"
        self._tls = tls
        self._client = ServiceClient(tls, url, expected, timeout=5.0)
        self._heartbeat: asyncio.Task[None] | None = None
        self._registered: str | None = None

    async def register(self, url: str) -> None:
        """Announce this instance at ``url`` and keep renewing its lease."""
        await self._put(url)
        self._registered = url
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_forever(), name="trustmesh-heartbeat")

    async def _put(self, url: str) -> None:
        expires = self._tls.source.context.not_after.isoformat()
        response = await self._client.request(
            "PUT", "/v1/instances", json={"url": url, "cert_expires": expires}
        )
        if response.status != 200:
            raise UnavailableError(f"discovery refused the registration ({response.status})")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            if self._registered is None:
                continue
            try:
                await self._put(self._registered)
            except TrustmeshError as exc:  # keep trying; the lease covers a few misses
                log.warning("discovery heartbeat failed: %s", exc.detail)

    async def lookup(self, service: str) -> list[Endpoint]:
        """Endpoints of ``service``; NotFoundError if it is unknown *or* not ours to call."""
        response = await self._client.get(f"/v1/services/{service}")
        if response.status == 404:
            raise NotFoundError(f"no service {service!r} that this service may call")
        if response.status != 200:
            raise UnavailableError(f"discovery answered {response.status}")
        return [Endpoint(e["url"], e["spiffe_id"]) for e in response.json()["endpoints"]]

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._registered is not None:
            with contextlib.suppress(TrustmeshError):
                await self._client.request(
                    "DELETE", "/v1/instances", json={"url": self._registered}
                )
        await self._client.close()
