"""Reloading a live gateway's declaration: a control switched from dry-run to enforce
takes effect at once, with requests in flight all answered; a declaration that does not
compile, or changes what only a restart applies, is refused and the running one stays."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from authrig import CONFIG
from edgerig import Edge, edge_stack, recording
from liverig import live_identity

from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  policies: [edge.cedar]
  routes:
    - {path: /open, to: orders, auth: [anonymous], methods: [GET],
       rate_limits: [{per: ip, limit: 1000/minute}]}
    - {path: /shadow, to: orders, auth: [anonymous], methods: [GET, POST],
       modes: {policy: dry-run}}
"""
POLICIES = """
permit(principal, action, resource);
forbid(principal, action, resource) when { context.path like "/shadow*" };
"""


SEEN: list[str] = []


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
async def edge(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Edge]:
    SEEN.clear()
    async with edge_stack(
        identity, short_tmp, SECTION, recording(SEEN, delay=0.01), {"edge.cedar": POLICIES}
    ) as running:
        yield running


def declaration(section: str) -> object:
    return parse_config(CONFIG + section, source="reloaded.yaml")


async def reload(edge: Edge, section: str, root: Path) -> None:
    await edge.gateway.reload(declaration(section), root)  # type: ignore[arg-type]


async def test_dry_run_to_enforce_on_reload_with_no_request_dropped(
    edge: Edge, short_tmp: Path
) -> None:
    assert (await edge.send("GET", "/shadow")).status == 200  # dry-run: would-deny
    enforce = SECTION.replace("modes: {policy: dry-run}", "modes: {policy: enforce}")
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            statuses.append((await edge.send("GET", "/open")).status)

    clients = [asyncio.create_task(client()) for _ in range(6)]
    await asyncio.sleep(0.3)
    for section in (enforce, SECTION, enforce):  # swapped back and forth under load
        await reload(edge, section, short_tmp)
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)
    assert len(statuses) > 20
    assert set(statuses) == {200}  # every request in flight answered, none dropped
    assert (await edge.send("GET", "/shadow")).status == 403  # enforced now
    reasons = [(e.decision.value, e.reason.value) for e in edge.sink.events]
    assert ("would-deny", "policy-deny") in reasons
    assert ("deny", "policy-deny") in reasons
    assert reasons.count(("allow", "config-reloaded")) == 3


async def test_a_reload_applies_routes_and_rate_limits(edge: Edge, short_tmp: Path) -> None:
    tighter = SECTION.replace("1000/minute", "1/minute") + (
        "    - {path: /new, to: orders, auth: [anonymous], methods: [GET]}\n"
    )
    assert (await edge.send("GET", "/new")).status == 404
    await reload(edge, tighter, short_tmp)
    assert (await edge.send("GET", "/new")).status == 200
    assert (await edge.send("GET", "/open")).status == 200
    assert (await edge.send("GET", "/open")).status == 429


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.replace("gateway:\n", "gateway:\n  port: 1\n"), "gateway.port changed"),
        (
            lambda s: s.replace("gateway:\n", "gateway:\n  redis: redis://127.0.0.1:1/0\n"),
            "gateway.redis changed",
        ),
        (
            lambda s: s + "    - {path: /keys, to: orders, auth: [api_key], methods: [GET]}\n",
            "API keys",
        ),
        (lambda s: s.replace("policies: [edge.cedar]", "policies: [missing.cedar]"), "missing"),
        (
            lambda s: s.replace("modes: {policy: dry-run}", "openapi: nowhere.yaml"),
            "nowhere.yaml",
        ),
    ],
)
async def test_a_reload_that_cannot_be_applied_is_refused_and_the_running_one_stays(
    edge: Edge, short_tmp: Path, change: object, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        await reload(edge, change(SECTION), short_tmp)  # type: ignore[operator]
    assert (await edge.send("GET", "/shadow")).status == 200  # still dry-run
    assert (await edge.send("GET", "/open")).status == 200
    assert "config-reloaded" not in edge.reasons()
    assert SEEN[-2:] == ["/shadow", "/open"]  # the upstream served them
