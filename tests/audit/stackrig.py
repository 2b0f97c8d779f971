"""The audit collector as ``trustmesh audit …`` commands find it: on one state directory,
the identity service (with its operator socket: the command becomes the operator as it
always does, through a join token) on its own loop thread, and the real collector on the
test's loop, its endpoint file written as its process writes it. The command runs in
this process, on a thread beside the collector's loop (:meth:`AuditStack.tm`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from trustmesh import events
from trustmesh.audit.endpoint import endpoint_path
from trustmesh.audit.server import RunningAudit, serve_audit
from trustmesh.cli import app
from trustmesh.config import load_config
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import identity_server_in_thread

TD = "trustmesh.local"
AUDIT = f"spiffe://{TD}/trustmesh/audit"
REPORTER = f"spiffe://{TD}/payments"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tm(*args: str) -> Ran:
    """The command in this process; an exception that is not an exit is raised (a
    command must never end in a traceback)."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


@dataclass
class AuditStack:
    config: Path
    state: Path
    running: RunningAudit

    async def tm(self, *args: str, declaration: bool = False) -> Ran:
        """``trustmesh ARGS --state …`` (and ``--config …`` with ``declaration``)."""
        extra = ["--state", str(self.state)]
        if declaration:
            extra += ["--config", str(self.config)]
        return await asyncio.to_thread(tm, *args, *extra)

    async def ingest(self, batch: list[dict[str, Any]]) -> None:
        """Store ``batch`` as a producer's delivery would."""
        for start in range(0, len(batch), 1000):
            await self.running.service.ingest(batch[start : start + 1000], REPORTER)


@contextlib.asynccontextmanager
async def audit_stack(config: Path, state: Path, **serve: Any) -> AsyncIterator[AuditStack]:
    """The stack of the declaration ``config`` on ``state`` (trust domain :data:`TD`)."""
    declared = load_config(config)
    with identity_server_in_thread(declared, state, discovery=True) as identity:
        selectors = [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"]
        identity.call(identity.server.service.register, AUDIT, selectors, None)
        source = X509Source(identity.address, spiffe_id=AUDIT)
        await source.start()
        try:
            running = await serve_audit(
                declared,
                state,
                source=source,
                sink=events.MemorySink(),
                config_file=config,
                **serve,
            )
            where = endpoint_path(state)
            where.write_text(json.dumps({"url": running.url}))
            try:
                yield AuditStack(config, state, running)
            finally:
                where.unlink(missing_ok=True)
                await running.stop()
        finally:
            await source.close()
