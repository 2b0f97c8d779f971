"""Retention in the running collector (mTLS, the real identity service, an injected
clock): ``POST /v1/prune`` is the operator's alone (anyone else: 403 and an
``admin-denied`` event); a dry run counts and removes nothing; a prune removes what is
past retention, is recorded (``records-pruned``), and ``trustmesh audit verify`` —
also with the operator's own copy of the checkpoint file — still finds the log intact;
``trustmesh audit prune`` does it from the command line. Pruning off is said, never
silent; a bad ``audit.retention`` is refused with the key and what was expected."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from collectorrig import AUDIT, OPERATOR, PAYMENTS, CollectorRig, collector_config, collector_rig
from ledgerrig import T0, ocsf
from typer.testing import CliRunner

from trustmesh.audit.endpoint import checkpoint_path, endpoint_path
from trustmesh.audit.server import prune_engine
from trustmesh.cli import _admin, app
from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.events import EventClass
from trustmesh.reasons import Activity, Reason
from trustmesh.store import create_engine, sqlite_url
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

API, AUTHZ = int(EventClass.API_ACTIVITY), int(EventClass.AUTHORIZE_SESSION)
CONFIG = f"""
trust_domain: trustmesh.local
dev: true
services:
  payments: {{external: true}}
audit:
  checkpoint_every: 5
  retention: {{default: 7d, classes: {{{AUTHZ}: 30d}}}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float) -> None:
        self.now += timedelta(days=days).total_seconds()


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    """The identity service on the collector's state directory (the command finds the
    operator socket and the collector's endpoint file there)."""
    config = collector_config(CONFIG)
    with identity_server_in_thread(config, short_tmp / "state", discovery=True) as running:
        exe = Path("/proc/self/exe").readlink()
        for spiffe_id in (PAYMENTS, OPERATOR, AUDIT):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def rig(
    identity: RunningIdentityServer, short_tmp: Path, clock: Clock
) -> AsyncIterator[CollectorRig]:
    state = short_tmp / "state"
    async with collector_rig(identity, state, collector_config(CONFIG), clock=clock) as running:
        endpoint_path(state).write_text(json.dumps({"url": running.running.url}))
        yield running


def tm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def _stored(rig: CollectorRig) -> list[int]:
    status, found = await rig.operator.call("GET", "/v1/events?limit=1000")
    assert status == 200
    return [event["seq"] for event in found["events"]]


async def test_the_operator_prunes_and_the_log_still_verifies(
    rig: CollectorRig, clock: Clock, short_tmp: Path
) -> None:
    batch = [ocsf(n) for n in range(1, 21)]
    status, _ = await rig.payments.call("POST", "/v1/events", {"events": batch})
    assert status == 200  # checkpoints at 5, 10, 15, 20, signed at T0
    clock.advance(10)

    status, refused = await rig.payments.call("POST", "/v1/prune", {})
    assert (status, refused["error"]) == (403, "forbidden")
    denied = [e for e in rig.sink.events if e.reason is Reason.ADMIN_DENIED]
    assert denied[-1].attributes["action"] == "audit-prune"

    status, dry = await rig.operator.call("POST", "/v1/prune", {"dry_run": True})
    assert status == 200
    assert (dry["dry_run"], dry["removed"], dry["first_seq"]) == (True, {str(API): 16}, 1)
    assert (await _stored(rig))[:20] == list(range(1, 21))
    assert not [e for e in rig.sink.events if e.reason is Activity.RECORDS_PRUNED]

    status, bad = await rig.operator.call("POST", "/v1/prune", {"dry_run": "yes"})
    assert (status, bad["error"]) == (400, "invalid_request")

    state = rig.state
    copy = short_tmp / "my-checkpoints.jsonl"
    code, stdout, stderr = await asyncio.to_thread(
        tm, "audit", "prune", "--state", str(state), "--json"
    )
    assert code == 0, stderr
    done = json.loads(stdout)
    assert (done["dry_run"], done["removed"], done["total"]) == (False, {str(API): 16}, 16)
    assert done["prune_checkpoints"] == 1
    assert (await _stored(rig))[:4] == [5, 10, 15, 20]
    [pruned] = [e for e in rig.sink.events if e.reason is Activity.RECORDS_PRUNED]
    assert pruned.attributes["removed"] == 16
    assert pruned.attributes["classes"] == f"{API}:16"
    assert pruned.attributes["by"] == "operator"

    shutil.copy(checkpoint_path(state), copy)  # the operator's own copy, prunes included
    code, stdout, stderr = await asyncio.to_thread(
        tm, "audit", "verify", "--state", str(state), "--checkpoint", str(copy), "--json"
    )
    assert code == 0, stderr
    verdict = json.loads(stdout)
    assert (verdict["intact"], verdict["pruned"]) == (True, 16)
    code, stdout, stderr = await asyncio.to_thread(
        tm, "audit", "verify", "--state", str(state), "--checkpoint", str(copy)
    )
    assert code == 0, stderr
    assert "16 pruned under signed prune checkpoints" in stdout

    code, stdout, _ = await asyncio.to_thread(tm, "audit", "prune", "--state", str(state))
    assert code == 0
    assert "removed 0 audit records" in stdout  # nothing more is past retention yet


async def test_verify_waits_for_a_long_verification_that_other_commands_would_not(
    rig: CollectorRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole log takes the collector longer to verify than any other admin request may
    take (a log of months: minutes): the command waits for it. Here every admin request
    may take 0.5 s, and the verification (the real one) takes 1.5 s."""
    status, _ = await rig.payments.call("POST", "/v1/events", {"events": [ocsf(1), ocsf(2)]})
    assert status == 200
    monkeypatch.setattr(_admin, "ADMIN_TIMEOUT", 0.5)
    service = rig.running.service
    real = service.verify

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(1.5)
        return await real(*args, **kwargs)

    monkeypatch.setattr(service, "verify", slow)
    code, stdout, stderr = await asyncio.to_thread(
        tm, "audit", "verify", "--state", str(rig.state), "--json"
    )
    assert code == 0, stderr  # at the ordinary bound, the command would have given up
    assert json.loads(stdout)["intact"]


async def test_a_dry_run_from_the_command_line_removes_nothing(
    rig: CollectorRig, clock: Clock
) -> None:
    status, _ = await rig.payments.call("POST", "/v1/events", {"events": [ocsf(1), ocsf(2)]})
    assert status == 200
    await rig.running.service.tick()  # sign them
    clock.advance(8)
    code, stdout, stderr = await asyncio.to_thread(
        tm, "audit", "prune", "--dry-run", "--state", str(rig.state)
    )
    assert code == 0, stderr
    assert "would remove 1 audit records (seqs 1..1)" in stdout  # never the head
    assert f"class {API}: 1" in stdout
    assert (await _stored(rig))[:2] == [1, 2]


async def test_without_a_retention_the_prune_endpoint_says_pruning_is_off(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with collector_rig(identity, short_tmp / "state", collector_config()) as rig:
        assert rig.running.pruner is None
        status, answer = await rig.operator.call("POST", "/v1/prune", {"dry_run": True})
        assert (status, answer["error"]) == (409, "conflict")
        assert "pruning is off" in answer["message"]


def test_pruning_off_on_postgresql_is_said_at_start(caplog: pytest.LogCaptureFixture) -> None:
    declared = collector_config(CONFIG).audit
    assert declared is not None
    engine = create_engine(sqlite_url(Path("/nonexistent/audit.db")))
    with caplog.at_level(logging.WARNING, logger="trustmesh.audit"):
        assert prune_engine(declared, "sqlite+aiosqlite:///x.db", engine) is engine
        assert not caplog.records
        assert prune_engine(declared, "postgresql+asyncpg://c@db/audit", engine) is None
    [warning] = caplog.records
    assert "pruning is off" in warning.getMessage()
    assert "audit.retention.database" in warning.getMessage()
    kept = collector_config(CONFIG.replace(f"default: 7d, classes: {{{AUTHZ}: 30d}}", ""))
    assert kept.audit is not None
    caplog.clear()
    assert prune_engine(kept.audit, "postgresql+asyncpg://c@db/audit", engine) is None
    assert not caplog.records  # nothing to prune: nothing to say


@pytest.mark.parametrize(
    ("retention", "said"),
    [
        ("{default: 30m}", "a retention is at least 1h"),
        ("{default: 1.5}", "audit.retention.default"),
        ("{classes: {0: 7d}}", "0 is not an OCSF class_uid"),
        ("{classes: {api: 7d}}", "audit.retention.classes.api"),
        ("{interval: 1s}", "retention.interval must be from 10s to 7d"),
        ("{keep: 7d}", "audit.retention.keep"),
        ("{database: postgresql://pruner@db/audit}", "retention.database is for a PostgreSQL"),
        ("{database: 'sqlite:///x.db'}", "audit.retention.database"),
    ],
)
def test_a_bad_retention_is_refused_with_the_key(retention: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"trust_domain: a.example\naudit: {{retention: {retention}}}", source="t.yaml")
    assert said in str(caught.value)
    assert "t.yaml" in str(caught.value)


def test_a_retention_on_postgresql_with_its_pruning_role_is_taken() -> None:
    config = parse_config(
        "trust_domain: a.example\naudit:\n  database: postgresql+asyncpg://c@db/audit\n"
        "  retention: {default: 90d, classes: {2004: null}, interval: 30m,"
        " database: 'postgresql+asyncpg://p@db/audit'}",
        source="t.yaml",
    )
    assert config.audit is not None
    retention = config.audit.retention
    assert (retention.default, retention.classes[2004]) == (timedelta(days=90), None)
    assert retention.interval == timedelta(minutes=30)
