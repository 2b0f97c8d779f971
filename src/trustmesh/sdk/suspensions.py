"""Which SPIFFE IDs are suspended: polled from the identity service's feed
(``GET /v1/suspensions`` on its discovery listener, over mTLS; the identity service must
present ``spiffe://<td>/trustmesh/identity``), so that the middleware refuses a peer
presenting one (``403``, ``suspended-spiffe-id``).

Polling is cheap: the feed's ``ETag`` is the list's version, sent back as
``If-None-Match`` (``304``: nothing changed). When the feed cannot be reached the last
list known stays in force (fail closed for every ID known suspended) and a warning is
logged; a suspension's end is read from the injected clock, not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from trustmesh.errors import TrustmeshError, UnavailableError
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["FEED_PATH", "POLL_INTERVAL", "SuspendedIDs", "SuspensionFeed"]

log = logging.getLogger("trustmesh.sdk")

FEED_PATH: Final = "/v1/suspensions"
#: How often the feed is polled, in seconds: a suspension is in force at every service
#: within about this long.
POLL_INTERVAL: Final = 2.0


class SuspendedIDs:
    """The suspended SPIFFE IDs last learned, each with its end (ms since the epoch; None:
    until lifted), read against ``clock`` (seconds, as :func:`time.time`)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.version: int | None = None
        self._until: Mapping[str, int | None] = {}

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, spiffe_id: object) -> bool:
        if not isinstance(spiffe_id, str) or spiffe_id not in self._until:
            return False
        until = self._until[spiffe_id]
        return until is None or self.clock() * 1000 < until

    def replace(self, version: int, until: Mapping[str, int | None]) -> None:
        """The whole list, as of ``version`` (swapped in at once)."""
        self._until, self.version = dict(until), version


def _parsed(doc: Any) -> tuple[int, dict[str, int | None]]:
    """The feed's answer, checked: ValueError when it is not the feed's shape."""
    if not isinstance(doc, dict) or not isinstance(doc.get("suspensions"), list):
        raise ValueError("not a suspensions feed")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("the feed has no version")
    found: dict[str, int | None] = {}
    for item in doc["suspensions"]:
        spiffe_id = item.get("spiffe_id") if isinstance(item, dict) else None
        until = item.get("until") if isinstance(item, dict) else None
        if not isinstance(spiffe_id, str) or not (until is None or isinstance(until, int)):
            raise ValueError("a suspension without a SPIFFE ID or with a bad end")
        found[spiffe_id] = until
    return version, found


class SuspensionFeed:
    """Keeps :attr:`known` current from the identity service's feed at ``url`` (its
    discovery URL), every ``interval`` seconds, in the background."""

    def __init__(
        self,
        tls: RotatingTLS,
        url: str,
        *,
        interval: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        expected = f"spiffe://{tls.trust_domain}/trustmesh/identity"
        self._client = ServiceClient(tls, url, expected, retries=0, timeout=5.0)
        self.interval = interval
        self.known = SuspendedIDs(clock)
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def __contains__(self, spiffe_id: object) -> bool:
        return spiffe_id in self.known

    async def poll_once(self) -> bool:
        """Ask the feed once; True when the list changed. UnavailableError (or OSError,
        TimeoutError) when it cannot be reached or answers something else."""
        version = self.known.version
        headers = {"if-none-match": f'"{version}"'} if version is not None else None
        answer = await self._client.request("GET", FEED_PATH, headers=headers)
        if answer.status == 304:
            return False
        if answer.status != 200:
            raise UnavailableError(f"the suspensions feed answered {answer.status}")
        try:
            version, found = _parsed(answer.json())
        except ValueError as exc:
            raise UnavailableError(f"the suspensions feed is malformed: {exc}") from None
        self.known.replace(version, found)
        return True

    async def start(self) -> None:
        """A first poll (failing: logged, the list stays empty until one succeeds), then
        polling in the background."""
        await self._poll_logged()
        if self._task is None:
            self._task = asyncio.create_task(self._poll_forever(), name="tm-suspensions")

    async def _poll_logged(self) -> None:
        try:
            await self.poll_once()
        except (TrustmeshError, OSError, TimeoutError) as exc:
            log.warning(
                "suspensions feed unavailable (%s); keeping the %d known",
                getattr(exc, "detail", type(exc).__name__),
                len(self.known),
            )

    async def _poll_forever(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval)
                return
            await self._poll_logged()

    async def close(self) -> None:
        """Stop polling: a poll in flight ends first (within the client's timeout), so
        that no connection is left half made."""
        self._closing.set()
        if self._task is not None:
            await self._task
        await self._client.close()
