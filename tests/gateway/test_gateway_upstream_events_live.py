"""What the gateway records about its upstreams, live: an answer too large to read (a
decompression bomb) is refused without charging the instance; an instance that fails a
request is ejected and restored when its time is up; one that fails its health probe is
taken out of rotation and put back when it passes. Each is an event naming the service
and the instance, with the decision that goes with it."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from edgerig import Answer, Edge, edge_stack
from liverig import live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.config.gateway import HealthCheck
from trustmesh.reasons import Activity, Reason
from trustmesh.sdk.client import MAX_RESPONSE_BYTES
from trustmesh.testing import RunningIdentityServer

# probes only when a test asks (check_now); one failure ejects, for a second
SECTION = """gateway:
  upstream:
    retries: 0
    health_check: {interval: 1h, timeout: 1s, unhealthy_after: 1, healthy_after: 1}
    outlier: {consecutive_failures: 1, ejection: 1s, max_ejected_percent: 100}
  routes:
    - {path: /things, to: orders, auth: [anonymous], methods: [GET]}
"""


@functools.cache
def gzip_bomb() -> bytes:
    """About 65 kB of gzip that inflates to 1 MiB more than the gateway reads."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    zeros = bytes(1 << 20)
    body = b"".join(deflate.compress(zeros) for _ in range(MAX_RESPONSE_BYTES // len(zeros) + 1))
    return body + deflate.flush()


@dataclass
class Upstream:
    """The one instance of orders: answers ``status``, passes its probes or not, and
    serves the bomb."""

    status: int = 200
    probes_pass: bool = True

    def app(self) -> Starlette:
        async def health(_: Request) -> Response:
            return Response(status_code=200 if self.probes_pass else 503)

        async def bomb(_: Request) -> Response:
            return Response(gzip_bomb(), headers={"content-encoding": "gzip"})

        async def thing(_: Request) -> JSONResponse:
            return JSONResponse({"ok": self.status == 200}, status_code=self.status)

        return Starlette(
            routes=[
                Route(HealthCheck().path, health),
                Route("/things/bomb", bomb),
                Route("/things/{thing}", thing),
            ]
        )


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def edge(
    identity: RunningIdentityServer, short_tmp: Path, upstream: Upstream
) -> AsyncIterator[Edge]:
    async with edge_stack(
        identity, short_tmp, SECTION, upstream.app(), probes_reach_the_app=True
    ) as running:
        yield running


def _recorded(edge: Edge, reason: Reason | Activity) -> list[tuple[str, str, str]]:
    """(decision, service, instance) of each event ``reason`` names (by identity: the
    member itself, not a code spelled alike)."""
    return [
        (e.decision, str(e.attributes["service"]), str(e.attributes["instance"]))
        for e in edge.sink.events
        if e.reason is reason
    ]


async def test_a_decompression_bomb_is_refused_and_does_not_eject_the_instance(
    edge: Edge,
) -> None:
    answer = await edge.send("GET", "/things/bomb")
    assert answer.status == 502
    assert json.loads(answer.body)["error"] == "bad_gateway"
    (refused,) = [e for e in edge.sink.events if e.reason is Reason.UPSTREAM_ANSWER_TOO_LARGE]
    assert refused.decision == events.Decision.ERROR
    assert f"response over {MAX_RESPONSE_BYTES} bytes" in refused.message
    assert refused.attributes["route"] == "routes[0]"
    # the instance answered: its answer was the problem, not its health
    assert (await edge.send("GET", "/things/t1")).status == 200
    assert _recorded(edge, Activity.UPSTREAM_EJECTED) == []


async def _until_served(edge: Edge, within: float) -> Answer:
    """GET until the gateway forwards it again (a deadline, not a sleep)."""
    started = time.monotonic()
    while True:
        answer = await edge.send("GET", "/things/t1")
        if answer.status == 200 or time.monotonic() - started > within:
            return answer
        await asyncio.sleep(0.05)


async def test_a_failing_instance_is_ejected_then_restored_and_each_is_recorded(
    edge: Edge, upstream: Upstream
) -> None:
    assert (await edge.send("GET", "/things/t1")).status == 200
    upstream.status = 503  # it cannot serve: a gateway failure, one is enough
    assert (await edge.send("GET", "/things/t1")).status == 503
    instance = ("orders", edge.upstream_url)
    assert _recorded(edge, Activity.UPSTREAM_EJECTED) == [(events.Decision.ERROR, *instance)]
    upstream.status = 200
    out = await edge.send("GET", "/things/t1")  # ejected: nothing to send it to
    assert out.status == 503
    assert json.loads(out.body)["error"] == "unavailable"
    assert edge.sink.events[-1].reason is Reason.UPSTREAM_UNAVAILABLE
    assert _recorded(edge, Activity.UPSTREAM_RESTORED) == []
    # the ejection lasts a second; then the next request restores it, on probation
    assert (await _until_served(edge, 3.0)).status == 200
    assert _recorded(edge, Activity.UPSTREAM_RESTORED) == [(events.Decision.ALLOW, *instance)]
    assert len(_recorded(edge, Activity.UPSTREAM_EJECTED)) == 1


async def test_failed_probes_take_an_instance_out_and_passing_ones_put_it_back(
    edge: Edge, upstream: Upstream
) -> None:
    pool = edge.gateway.upstreams
    assert (await edge.send("GET", "/things/t1")).status == 200  # the pool knows orders
    await pool.check_now()
    assert _recorded(edge, Activity.UPSTREAM_UNHEALTHY) == []
    upstream.probes_pass = False
    await pool.check_now()
    instance = ("orders", edge.upstream_url)
    assert _recorded(edge, Activity.UPSTREAM_UNHEALTHY) == [(events.Decision.ERROR, *instance)]
    assert (await edge.send("GET", "/things/t1")).status == 503  # out of rotation
    upstream.probes_pass = True
    await pool.check_now()
    assert _recorded(edge, Activity.UPSTREAM_HEALTHY) == [(events.Decision.ALLOW, *instance)]
    assert (await edge.send("GET", "/things/t1")).status == 200
    assert len(_recorded(edge, Activity.UPSTREAM_UNHEALTHY)) == 1
