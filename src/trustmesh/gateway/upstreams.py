"""The gateway's upstream pool: where a route's service is, and which instance takes a
request.

* **Endpoints** come from discovery (the gateway may look up only its routes' targets),
  re-read every :data:`REFRESH_SECONDS` off the request path; while discovery is
  unreachable the last answer is kept.
* **One pooled mTLS client per instance** (:class:`~trustmesh.gateway.wire.WireClient`:
  the gateway's SVID, the instance's SPIFFE ID checked on every new connection), with no
  retries and no breaker of its own: the pool decides both, per instance.
* **Choice, health and ejection** are the pure decisions of
  :mod:`trustmesh.gateway.balancer` (round robin or least requests; active probes;
  passive outlier ejection with a cap; fast "no instance").
* **Timeouts.** ``timeout`` bounds the whole call, retries included (Envoy's route
  timeout): when it runs out the call ends with :class:`UpstreamTimeoutError` (the gateway
  answers ``504``), and the instance is charged with a failure.
* **Retries** (RFC 9110 §9.2.2: only idempotent methods — GET, HEAD, OPTIONS, PUT,
  DELETE; never POST or PATCH), at most ``retries``, each on an instance not tried yet,
  after a connection failure or a ``502``/``503``/``504``. When none is left the last outcome stands: the
  upstream's ``502``–``504`` is relayed, a connection failure is :class:`UnavailableError`.
* **Active health checks** (:meth:`UpstreamPool.start`): ``GET`` the health path of every
  known instance every ``interval`` over mTLS, answered by the SDK middleware to any SVID
  of the trust domain; only ``200`` counts as a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from contextvars import Context
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from trustmesh.config.gateway import HealthCheck, UpstreamSettings
from trustmesh.errors import NotFoundError, TrustmeshError, UnavailableError
from trustmesh.gateway.balancer import Balancer, Change, HealthRules, OutlierRules
from trustmesh.gateway.wire import WireClient
from trustmesh.reasons import Reason
from trustmesh.sdk.client import IDEMPOTENT, Response, ResponseTooLargeError
from trustmesh.sdk.discovery import Endpoint
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["REFRESH_SECONDS", "Discovery", "OnChange", "UpstreamPool", "UpstreamTimeoutError"]

log = logging.getLogger("trustmesh.gateway")

REFRESH_SECONDS = 5.0
_GATEWAY_FAILURES = frozenset({502, 503, 504})
#: ``on_change(service, endpoint_url, state, why)``; state: ejected, restored, unhealthy,
#: healthy.
OnChange = Callable[[str, str, str, str], None]


class UpstreamTimeoutError(TrustmeshError):
    """The upstream did not answer within the route's timeout (the gateway answers 504)."""

    code = "upstream_timeout"
    status = 504
    public_message = "the service did not answer in time"


class Discovery(Protocol):
    """What the pool needs of :class:`~trustmesh.sdk.discovery.DiscoveryClient`."""

    async def lookup(self, service: str) -> list[Endpoint]: ...


@dataclass
class _Instance:
    endpoint: Endpoint
    client: WireClient
    active: int = 0  # requests and probes using the client
    retired: bool = False  # gone from discovery: closed once idle


@dataclass
class _Service:
    balancer: Balancer
    instances: dict[str, _Instance] = field(default_factory=dict)
    known: bool = False  # discovery answered at least once
    checked_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Attempt(NamedTuple):
    """Where one try goes: the service, its state, the instance's key and the instance."""

    service: str
    svc: _Service
    key: str
    inst: _Instance


class UpstreamPool:
    """Every routed service's instances, balanced, checked and ejected per ``settings``."""

    def __init__(
        self,
        tls: RotatingTLS,
        discovery: Discovery,
        settings: UpstreamSettings,
        *,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.tls = tls
        self.discovery = discovery
        self.settings = settings
        self.on_change = on_change
        self.clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not a secret
        self._outlier = OutlierRules.of(settings.outlier)
        check = settings.health_check
        self._health = HealthRules.of(check) if check is not None else HealthRules()
        self._services: dict[str, _Service] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None
        self._closed = False

    # --- the request path -------------------------------------------------------------

    async def forward(
        self,
        service: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
    ) -> Response:
        """Relay a request to an instance of ``service``: ``target`` is the path and query,
        ``headers`` every header to send (repeats kept). Raises :class:`UnavailableError`
        at once when no instance is healthy and in rotation, or when every instance tried
        was unreachable; :class:`UpstreamTimeoutError` when ``timeout`` runs out."""
        method = method.upper()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        svc = self._known(service)
        if svc is None:  # discovery has not answered for it yet: wait for it, bounded
            try:
                async with asyncio.timeout(timeout):
                    svc = await self.refresh(service, unless_known=True)
            except TimeoutError:
                raise UpstreamTimeoutError(
                    f"discovery of {service} took over {timeout:g}s"
                ) from None
        attempts = 1 + (self.settings.retries if method in IDEMPOTENT else 0)
        tried: list[str] = []
        last: Response | UnavailableError | None = None
        for _ in range(attempts):
            pick = svc.balancer.pick(self.clock(), tried)
            self._report(service, pick.changes)
            if pick.key is None:
                break
            key = pick.key
            tried.append(key)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamTimeoutError(f"{service}: no time left for another attempt")
            inst = svc.instances.get(key)
            if inst is None:  # cannot happen: the balancer holds exactly these keys
                break
            last = await self._attempt(
                _Attempt(service, svc, key, inst), method, target, headers, body, remaining, timeout
            )
            if isinstance(last, Response) and last.status not in _GATEWAY_FAILURES:
                return last
        if isinstance(last, Response):
            return last
        if last is not None:
            raise last
        raise UnavailableError(
            f"no healthy instance of {service} in rotation", reason=Reason.UPSTREAM_UNAVAILABLE
        )

    async def _attempt(
        self,
        to: _Attempt,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        remaining: float,
        timeout: float,
    ) -> Response | UnavailableError:
        """One try at one instance: its answer, or why it could not serve (the caller
        tries another); a timeout or an oversized answer ends the request."""
        service, svc, key, inst = to
        inst.active += 1
        svc.balancer.begin(key)
        try:
            async with asyncio.timeout(remaining):
                response = await inst.client.forward(method, target, headers, body)
        except TimeoutError:
            self._record(service, svc, key, False, "timeout")
            raise UpstreamTimeoutError(
                f"{service} at {key} did not answer within {timeout:g}s"
            ) from None
        except ResponseTooLargeError:  # the instance served: its answer is the problem
            self._record(service, svc, key, True, "response too large")
            raise
        except (TrustmeshError, OSError) as exc:
            detail = exc.detail if isinstance(exc, TrustmeshError) else type(exc).__name__
            self._record(service, svc, key, False, detail)
            return UnavailableError(
                f"{service} at {key}: {detail}", reason=Reason.UPSTREAM_UNAVAILABLE
            )
        finally:
            svc.balancer.end(key)
            inst.active -= 1
            if inst.retired and inst.active == 0:  # _release, without an await per request
                await inst.client.close()
        # a gateway failure (Envoy's consecutive_gateway_failure): the instance could not
        # serve. A 500 is the application's own answer to this request (bad input can
        # cause one), so no caller can eject a service, or make it retried, by sending them
        failed = response.status in _GATEWAY_FAILURES
        self._record(service, svc, key, not failed, f"status {response.status}")
        return response

    def _record(self, service: str, svc: _Service, key: str, ok: bool, why: str) -> None:
        self._report(service, svc.balancer.record(key, ok, self.clock(), why))

    def _report(self, service: str, changes: tuple[Change, ...]) -> None:
        for change in changes:
            level = logging.INFO if change.state in ("restored", "healthy") else logging.WARNING
            log.log(level, "upstream %s %s %s: %s", service, change.key, change.state, change.why)
            if self.on_change is not None:
                try:
                    self.on_change(service, change.key, change.state, change.why)
                except Exception:
                    log.exception("on_change failed for %s %s", service, change.key)

    # --- endpoints from discovery -----------------------------------------------------

    def _known(self, name: str) -> _Service | None:
        """``name``'s endpoints as discovery last gave them (a refresh started off the
        request path when they are stale); None when it never answered for it."""
        svc = self._services.get(name)
        if svc is None or not svc.known:
            return None
        if svc.checked_at is None or self.clock() - svc.checked_at >= REFRESH_SECONDS:
            self._refresh_soon(name)
        return svc

    async def refresh(self, name: str, *, unless_known: bool = False) -> _Service:
        """Re-read ``name``'s endpoints from discovery now (``unless_known``: only if it
        never answered, for the first requests that wait together). Raises
        UnavailableError when discovery fails and no earlier answer is known (an earlier
        one is kept)."""
        if self._closed:
            raise UnavailableError("the upstream pool is closed")
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service(self._balancer())
        async with svc.lock:
            if unless_known and svc.known:
                return svc
            svc.checked_at = self.clock()
            try:
                endpoints = await self.discovery.lookup(name)
            except NotFoundError as exc:
                # unknown, or no longer ours to call: no instance to send anything to
                log.warning("discovery lists no %s for the gateway: %s", name, exc.detail)
                endpoints = []
                if not svc.known:
                    raise UnavailableError(
                        f"discovery lists no {name} for the gateway",
                        reason=Reason.UPSTREAM_UNAVAILABLE,
                    ) from None
            except TrustmeshError as exc:
                if not svc.known:
                    raise UnavailableError(
                        f"discovery: {exc.detail}", reason=Reason.UPSTREAM_UNAVAILABLE
                    ) from None
                log.warning(
                    "discovery failed for %s, keeping %d endpoints: %s",
                    name,
                    len(svc.instances),
                    exc.detail,
                )
                return svc
            await self._apply(svc, endpoints)
            svc.known = True
        return svc

    def _refresh_soon(self, name: str) -> None:
        svc = self._services[name]
        if svc.lock.locked() or self._closed:
            return
        svc.checked_at = self.clock()  # one refresh at a time, not one per request
        task = asyncio.create_task(  # not the request's: its trace is not this refresh's
            self._refresh_quietly(name), name=f"upstream-refresh-{name}", context=Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_quietly(self, name: str) -> None:
        try:
            await self.refresh(name)
        except TrustmeshError as exc:
            log.warning("discovery refresh of %s failed: %s", name, exc.detail)

    async def _apply(self, svc: _Service, endpoints: list[Endpoint]) -> None:
        latest = {e.url: e for e in endpoints}
        retired = []
        for url, inst in list(svc.instances.items()):
            if latest.get(url) != inst.endpoint:  # gone, or now another SPIFFE ID
                del svc.instances[url]
                inst.retired = True
                retired.append(inst)
        svc.balancer.update(svc.instances)  # a changed identity starts afresh
        for url, endpoint in latest.items():
            if url not in svc.instances:
                svc.instances[url] = _Instance(endpoint, self._client(endpoint))
        svc.balancer.update(latest)
        for inst in retired:  # only once the pool is consistent again
            await self._release(inst, using=False)

    def _client(self, endpoint: Endpoint) -> WireClient:
        return WireClient(self.tls, endpoint.url, endpoint.spiffe_id)

    def _balancer(self) -> Balancer:
        return Balancer(
            balance=self.settings.balance,
            outlier=self._outlier,
            health=self._health,
            rng=self._rng,
        )

    @staticmethod
    async def _release(inst: _Instance, *, using: bool = True) -> None:
        if using:
            inst.active -= 1
        if inst.retired and inst.active == 0:
            await inst.client.close()

    # --- active health checks ---------------------------------------------------------

    async def start(self) -> None:
        """Start probing every known instance every ``health_check.interval``."""
        check = self.settings.health_check
        if check is None or self._checker is not None:
            return
        self._checker = asyncio.create_task(
            self._check_forever(check), name="trustmesh-upstream-health"
        )

    async def _check_forever(self, check: HealthCheck) -> None:
        interval = check.interval.total_seconds()
        while True:
            try:
                await self.check_now()
            except Exception:
                log.exception("upstream health checks failed")
            await asyncio.sleep(interval)

    async def check_now(self) -> None:
        """One round of health checks: refresh stale endpoints, probe every instance of
        every service looked up so far, all at once."""
        check = self.settings.health_check
        if check is None:
            return
        for name, svc in list(self._services.items()):
            if svc.checked_at is None or self.clock() - svc.checked_at >= REFRESH_SECONDS:
                await self._refresh_quietly(name)
        probes = [
            (name, svc, key, inst)
            for name, svc in list(self._services.items())
            for key, inst in list(svc.instances.items())
        ]
        results = await asyncio.gather(*(self._probe(inst, check) for *_, inst in probes))
        for (name, svc, key, inst), (ok, why) in zip(probes, results, strict=True):
            if not inst.retired:
                self._report(name, svc.balancer.probe(key, ok, why))

    @staticmethod
    async def _probe(inst: _Instance, check: HealthCheck) -> tuple[bool, str]:
        inst.active += 1
        try:
            async with asyncio.timeout(check.timeout.total_seconds()):
                response = await inst.client.request("GET", check.path)
        except TimeoutError:
            return False, "timeout"
        except (TrustmeshError, OSError) as exc:
            return False, exc.detail if isinstance(exc, TrustmeshError) else type(exc).__name__
        finally:
            await UpstreamPool._release(inst)
        return response.status == 200, f"status {response.status}"

    # --- status and shutdown ----------------------------------------------------------

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Per service, each instance: url, spiffe_id, healthy, ejected_until (on the
        pool's clock; None when in rotation), active (requests in flight), failures (in a
        row) and ejections (the doubling level)."""
        now = self.clock()
        return {
            name: [
                {
                    "url": view.key,
                    "spiffe_id": svc.instances[view.key].endpoint.spiffe_id,
                    "healthy": view.healthy,
                    "ejected_until": view.ejected_until,
                    "active": view.in_flight,
                    "failures": view.failures,
                    "ejections": view.ejections,
                }
                for view in svc.balancer.views(now)
            ]
            for name, svc in self._services.items()
        }

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._tasks, *([self._checker] if self._checker else [])]
        self._checker = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        services, self._services = self._services, {}
        for svc in services.values():
            for inst in svc.instances.values():
                await inst.client.close()
