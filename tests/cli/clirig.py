"""The real components the CLI's tests drive the command against, on one state
directory as ``trustmesh up`` lays it out: the identity service (its Workload API,
discovery and admin API, its operator socket) on its own event loop thread, and a
gateway (``serve_gateway``) on the test's loop, its endpoint file written as its process
writes it. The command runs in this process (:func:`tm`; one test per file runs the
installed entry point as a real process): it gets the operator's SVID the way it always
does, through the operator socket — no entry names the operator here."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from trustmesh import events
from trustmesh.cli import app
from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.gateway.endpoint import endpoint_path
from trustmesh.gateway.server import RunningGateway, serve_gateway
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

runner = CliRunner()


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tm(*args: str, stdin: str | None = None) -> Ran:
    """The command, in this process (its import takes seconds): exit code and output. An
    exception that is not an exit is raised — a command must never end in a traceback."""
    result = runner.invoke(app, list(args), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def register(identity: RunningIdentityServer, *spiffe_ids: str) -> None:
    """Let this process hold ``spiffe_ids`` (an entry for its uid and executable each)."""
    selectors = [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"]
    for spiffe_id in spiffe_ids:
        identity.call(identity.server.service.register, spiffe_id, selectors, None)


@contextlib.contextmanager
def identity_on(config: Path, state: Path) -> Iterator[RunningIdentityServer]:
    """The identity service of ``config`` on ``state``, with discovery and its admin API."""
    with identity_server_in_thread(load_config(config), state, discovery=True) as running:
        yield running


@contextlib.asynccontextmanager
async def gateway_on(
    identity: RunningIdentityServer, config: TrustmeshConfig, state: Path
) -> AsyncIterator[RunningGateway]:
    """The gateway of ``config`` on ``state`` (no route of it may need the provider),
    saying where it listens and recording its events as its process does."""
    spiffe_id = config.component_spiffe_id("gateway")
    register(identity, spiffe_id)
    source = X509Source(identity.address, spiffe_id=spiffe_id)
    await source.start()
    sink = events.JsonLinesSink(state / "events" / "gateway.jsonl")
    assert identity.server.discovery_url is not None
    running = await serve_gateway(
        config,
        state,
        source=source,
        sink=sink,
        discovery_url=identity.server.discovery_url,
        auth_url=None,
        config_dir=state.parent,
    )
    where = endpoint_path(state)
    where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"url": running.url, "internal_url": running.internal_url, "admin_url": running.admin_url}
    where.write_text(json.dumps(doc))
    try:
        yield running
    finally:
        where.unlink(missing_ok=True)
        await running.stop()
        await source.close()
        sink.close()


def events_of(state: Path, component: str) -> list[dict[str, object]]:
    """The events ``component`` wrote under ``state``."""
    return list(events.read_events(state / "events" / f"{component}.jsonl"))


def stack_status(config: Path, state: Path) -> tuple[int, dict[str, object]]:
    """``trustmesh status --json`` of a stack ``up`` started (a real process)."""
    from trustmesh.testing import run_cli

    result = run_cli("status", "--config", str(config), "--state", str(state), "--json")
    return result.returncode, json.loads(result.stdout)


def stack_pids(state: Path) -> list[tuple[int, int]]:
    """(pid, start time) of every process the stack's supervisor recorded."""
    found = []
    for path in (state / "run").glob("*.json"):
        doc = json.loads(path.read_text())
        found.append((doc["pid"], doc["start_time"]))
    return found
