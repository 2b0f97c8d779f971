"""crs mode's worker processes (real processes, real ModSecurity and the Core Rule Set):
their verdicts are the in-process engine's; the event loop runs while they inspect; a
worker too late or dead is replaced and its request refused, never passed; a request
whose client went away never hands its verdict to another."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from services import require_crs

from trustmesh.gateway.crs import CrsFilter, CrsSpec
from trustmesh.gateway.crs_workers import CrsWorkers, InspectionUnavailableError

HEADERS = [(b"host", b"shop.example"), (b"accept", b"*/*")]
FORM = [*HEADERS, (b"content-type", b"application/x-www-form-urlencoded")]
#: benign, and about 0.1 s of ModSecurity's time (its patterns on a long run of tags)
SLOW = b"a=" + b"<a " * 10_000


def request(query: str = "", body: bytes = b"", headers: Any = HEADERS) -> dict[str, Any]:
    target = f"/shop?{query}".encode() if query else b"/shop"
    method = "POST" if body else "GET"
    return {
        "method": method,
        "target": target,
        "headers": headers,
        "body": body,
        "client": ("203.0.113.7", 40000),
    }


@pytest.fixture(scope="module")
def spec() -> CrsSpec:
    return CrsSpec(require_crs(), 1, 5, 32 << 10)


@pytest.fixture
async def workers() -> AsyncIterator[CrsWorkers]:
    running = CrsWorkers(1, deadline=30)
    yield running
    await running.close()


REQUESTS = [
    request(f"id={quote(chr(39) + ' OR 1=1--')}"),
    request(f"file={quote('../../../etc/passwd')}"),
    request("", b"c=" + quote("<script>alert(1)</script>").encode(), FORM),
    request("q=green+tea&page=2"),
    request("", b"name=Ada+Lovelace&city=London", FORM),
]


async def test_a_worker_s_verdicts_are_the_engine_s(spec: CrsSpec, workers: CrsWorkers) -> None:
    here = spec.build()
    verdicts = [await workers.inspect(spec, **r) for r in REQUESTS]
    assert verdicts == [here.inspect(**r) for r in REQUESTS]
    assert [v is not None for v in verdicts] == [True, True, True, False, False]
    assert len(workers.pids()) == 1
    assert os.getpid() not in workers.pids()  # inspected elsewhere


async def test_the_event_loop_serves_while_a_worker_inspects(
    spec: CrsSpec, workers: CrsWorkers
) -> None:
    await workers.inspect(spec, **request())  # the engine built in the worker
    ticks = 0
    inspecting = asyncio.create_task(workers.inspect(spec, **request("", SLOW, FORM)))
    while not inspecting.done():
        ticks += 1
        await asyncio.sleep(0)
    assert await inspecting is None
    # in the gateway's own process the loop would not turn once while ModSecurity runs
    assert ticks > 10


async def test_a_worker_past_its_deadline_is_replaced_and_the_request_refused(
    spec: CrsSpec, workers: CrsWorkers
) -> None:
    await workers.inspect(spec, **request())
    (before,) = workers.pids()
    workers.deadline = 0.01
    with pytest.raises(InspectionUnavailableError, match="in time"):
        await workers.inspect(spec, **request("", SLOW, FORM))
    workers.deadline = 30
    (after,) = workers.pids()
    assert after != before
    assert workers.replaced == 1
    await asyncio.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)  # killed, and reaped
    attack = REQUESTS[0]
    assert await workers.inspect(spec, **attack) == spec.build().inspect(**attack)


async def test_a_worker_that_dies_mid_request_is_replaced_and_the_request_refused(
    spec: CrsSpec, workers: CrsWorkers
) -> None:
    await workers.inspect(spec, **request())
    (pid,) = workers.pids()
    inspecting = asyncio.create_task(workers.inspect(spec, **request("", SLOW, FORM)))
    await asyncio.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(InspectionUnavailableError):
        await inspecting
    assert workers.pids() != [pid]
    assert await workers.inspect(spec, **REQUESTS[1]) is not None


async def test_a_worker_that_died_idle_is_replaced_before_a_request_reaches_it(
    spec: CrsSpec, workers: CrsWorkers
) -> None:
    await workers.inspect(spec, **request())
    (pid,) = workers.pids()
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.3)
    assert await workers.inspect(spec, **REQUESTS[0]) is not None  # answered, not refused
    assert workers.pids() != [pid]


async def test_a_cancelled_request_s_verdict_never_reaches_the_next(
    spec: CrsSpec, workers: CrsWorkers
) -> None:
    await workers.inspect(spec, **request())
    gone = asyncio.create_task(workers.inspect(spec, **REQUESTS[0]))  # an attack: a finding
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gone.cancel()
    # one worker: the benign request waits for it, and gets its own verdict
    assert await workers.inspect(spec, **REQUESTS[3]) is None
    assert await workers.inspect(spec, **REQUESTS[1]) is not None
    assert workers.replaced == 0


async def test_requests_beyond_the_workers_wait_their_turn(spec: CrsSpec) -> None:
    workers = CrsWorkers(2, deadline=30)
    try:
        verdicts = await asyncio.gather(*(workers.inspect(spec, **r) for r in REQUESTS * 3))
        assert [v is not None for v in verdicts] == [True, True, True, False, False] * 3
        assert len(workers.pids()) == 2
    finally:
        await workers.close()


async def test_closed_workers_are_gone_and_inspect_nothing(spec: CrsSpec) -> None:
    workers = CrsWorkers(2, deadline=30)
    await workers.inspect(spec, **request())
    pids = workers.pids()
    await workers.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(InspectionUnavailableError):
        await workers.inspect(spec, **request())


async def test_a_rule_set_a_worker_cannot_load_is_a_refusal_not_a_pass(
    spec: CrsSpec, workers: CrsWorkers, tmp_path: Path
) -> None:
    broken = CrsSpec(tmp_path, 1, 5, 32 << 10)  # no rules there
    with pytest.raises(InspectionUnavailableError, match="failed"):
        await workers.inspect(broken, **REQUESTS[3])
    assert await workers.inspect(spec, **REQUESTS[0]) is not None


def test_the_filter_knows_its_spec(spec: CrsSpec) -> None:
    built = spec.build()
    assert isinstance(built, CrsFilter)
    assert built.spec == spec


def test_workers_exit_when_the_gateway_is_killed() -> None:
    """No orphan: a worker's socket closes with the gateway, even by SIGKILL."""
    code = (
        "import asyncio\n"
        "from trustmesh.gateway.crs_workers import CrsWorkers\n"
        "async def main():\n"
        "    workers = CrsWorkers(2)\n"
        "    workers.start()\n"
        "    print(*workers.pids(), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    ) as gateway:
        assert gateway.stdout is not None
        pids = [int(p) for p in gateway.stdout.readline().split()]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # running
        gateway.kill()
        gateway.wait(10)
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived the gateway"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
