"""Retention on the real ledger, SQLite and PostgreSQL, with injected times: records
past their class's retention are removed under signed prune checkpoints (a class kept
longer stays), never the unsigned tail nor the head, and the log still verifies — from
the database and from the checkpoint file; a dry run removes nothing. A record deleted
any other way is still named at its seq, and a prune checkpoint forged, altered or
removed is a finding.

The log: events 1..20 signed at T0, 21..40 signed ten days later, 41..50 not signed.
Events 5, 10, …, 50 are Authorize Session (3003, kept 30 days); the rest API Activity
(6003, the default: 7 days)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerrig import T0, ledger_fixture, ocsf, sql, trusted  # noqa: F401 - the `ledger` fixture
from sqlalchemy import text

from trustmesh import crypto, events
from trustmesh.audit.chain import PruneCheckpoint, make_prune_checkpoint
from trustmesh.audit.checkpoint_file import read_checkpoints
from trustmesh.audit.ledger import Ledger, Verification
from trustmesh.audit.retention import Pruner, Retention
from trustmesh.audit.verifier import Kind
from trustmesh.errors import StateError
from trustmesh.events import EventClass
from trustmesh.reasons import Activity

KEY = crypto.generate_signing_key()
KEYS = trusted(KEY)
DAY = timedelta(days=1)
API, AUTHZ = int(EventClass.API_ACTIVITY), int(EventClass.AUTHORIZE_SESSION)
RULE = Retention(default=7 * DAY, classes={AUTHZ: 30 * DAY})
SQLITE_ONLY = pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)


@pytest.fixture
async def log(ledger: Ledger) -> Ledger:
    ledger.prune_engine = ledger.engine  # SQLite: its own file; here the owner's role
    await ledger.append([ocsf(n) for n in range(1, 21)], now=T0)
    await ledger.checkpoint(KEY, now=T0)
    await ledger.append([ocsf(n) for n in range(21, 41)], now=T0 + 10 * DAY)
    await ledger.checkpoint(KEY, now=T0 + 10 * DAY)
    await ledger.append([ocsf(n) for n in range(41, 51)], now=T0 + 10 * DAY)
    assert {ocsf(n)["class_uid"] for n in range(1, 51)} == {API, AUTHZ}
    return ledger


async def stored(ledger: Ledger) -> list[int]:
    async with ledger.engine.connect() as connection:
        found = await connection.execute(text("SELECT seq FROM audit_records ORDER BY seq"))
        return [row[0] for row in found]


async def verified(ledger: Ledger, **kwargs: object) -> Verification:
    """Verify from the database and the checkpoint file; also read in small pages."""
    verdict = await ledger.verify(KEYS, checkpoint_file=ledger.checkpoint_file, **kwargs)  # type: ignore[arg-type]
    paged = await ledger.verify(KEYS, page=3)
    assert paged.finding == verdict.finding
    return verdict


def authz(first: int, last: int) -> list[int]:
    return [n for n in range(first, last + 1) if n % 5 == 0]


async def test_records_past_their_class_retention_are_pruned_and_the_chain_verifies(
    log: Ledger,
) -> None:
    everything = list(range(1, 51))
    dry = await log.prune(KEY, RULE, now=T0 + 12 * DAY, dry_run=True)
    assert (dict(dry.removed), dry.first, dry.last, dry.checkpoints) == ({API: 16}, 1, 19, 0)
    assert await stored(log) == everything
    assert await log.prune_checkpoints() == []

    # 12 days on: API events signed by T0 are past 7 days; Authorize Session kept (30 d)
    done = await log.prune(KEY, RULE, now=T0 + 12 * DAY)
    assert (dict(done.removed), done.first, done.last, done.checkpoints) == ({API: 16}, 1, 19, 1)
    assert await stored(log) == authz(1, 20) + list(range(21, 51))
    [made] = await log.prune_checkpoints()
    assert [seq for seq, _ in made.removed()] == [n for n in range(1, 20) if n % 5]
    assert made.rule == f"{AUTHZ}=30d default=7d"
    assert read_checkpoints(log.checkpoint_file)[-1] == made  # type: ignore[arg-type]
    verdict = await verified(log)
    assert (verdict.finding, verdict.records, verdict.pruned, verdict.covered) == (None, 34, 16, 40)
    assert verdict.unsigned == 10

    # 20 days on: the second signed batch too; the unsigned tail 41..50 stays
    assert (await log.prune(KEY, RULE, now=T0 + 20 * DAY)).removed == {API: 16}
    assert await stored(log) == authz(1, 40) + list(range(41, 51))
    assert (await log.prune(KEY, RULE, now=T0 + 20 * DAY)).total == 0  # nothing more due
    # 45 days on: Authorize Session past 30 days, still not the unsigned tail
    assert (await log.prune(KEY, RULE, now=T0 + 45 * DAY)).removed == {AUTHZ: 8}
    assert await stored(log) == list(range(41, 51))
    verdict = await verified(log)
    assert (verdict.finding, verdict.records, verdict.pruned) == (None, 10, 40)

    # all signed and old: everything goes but the head, and the chain grows on from it
    await log.checkpoint(KEY, now=T0 + 45 * DAY)
    assert (await log.prune(KEY, RULE, now=T0 + 100 * DAY)).total == 9
    assert await stored(log) == [50]
    assert (await log.append([ocsf(n) for n in range(51, 54)], now=T0 + 100 * DAY)).head == 53
    verdict = await verified(log)
    assert (verdict.finding, verdict.records, verdict.pruned) == (None, 4, 49)
    assert len(await log.prune_checkpoints()) == 4


async def test_a_class_kept_for_ever_and_no_rule_prune_nothing(log: Ledger) -> None:
    forever = Retention(default=None, classes={API: 7 * DAY, AUTHZ: None})
    assert (await log.prune(KEY, forever, now=T0 + 1000 * DAY)).removed == {API: 32}
    assert await stored(log) == authz(1, 40) + list(range(41, 51))
    assert (await log.prune(KEY, Retention(), now=T0 + 1000 * DAY)).total == 0
    assert (await log.prune(KEY, RULE, now=T0 + 6 * DAY)).total == 0  # nothing old enough


async def test_batches_are_limited_and_each_signed(log: Ledger) -> None:
    first = await log.prune(KEY, RULE, now=T0 + 20 * DAY, limit=5)
    assert (first.total, first.first, first.last) == (5, 1, 6)
    rest = await log.prune(KEY, RULE, now=T0 + 20 * DAY)
    assert rest.total == 27
    assert (await verified(log)).finding is None


@pytest.mark.parametrize(
    ("gone", "when"),
    [(3, 0), (20, 12), (21, 12), (25, 20), (45, 45)],
    ids=["before-any-prune", "kept-between-pruned", "after-a-pruned-run", "old", "tail"],
)
async def test_a_record_deleted_otherwise_is_still_named(log: Ledger, gone: int, when: int) -> None:
    if when:
        await log.prune(KEY, RULE, now=T0 + when * DAY)
    await sql(log, "DELETE FROM audit_records WHERE seq = :seq", seq=gone)
    finding = (await verified(log)).finding
    assert finding is not None
    assert (finding.kind, finding.seq) == (Kind.DELETED, gone), finding


async def test_truncation_after_the_last_checkpoint_is_still_found(log: Ledger) -> None:
    await log.checkpoint(KEY, now=T0 + 45 * DAY)
    await log.prune(KEY, RULE, now=T0 + 100 * DAY)
    await sql(log, "DELETE FROM audit_records WHERE seq = 50")
    finding = (await verified(log)).finding
    assert finding is not None
    assert (finding.kind, finding.seq) == (Kind.TRUNCATED, 50), finding


async def _prune_row(ledger: Ledger, cp: PruneCheckpoint) -> None:
    await sql(
        ledger,
        "INSERT INTO audit_prunes (first_seq, last_seq, time, line) VALUES (:f, :l, :t, :line)",
        f=cp.first_seq,
        l=cp.last_seq,
        t=cp.time,
        line=cp.to_line(),
    )


async def test_a_prune_checkpoint_signed_by_another_key_explains_nothing(log: Ledger) -> None:
    async with log.engine.connect() as connection:
        query = text("SELECT seq, hash FROM audit_records WHERE seq BETWEEN 25 AND 27")
        rows = [(row[0], bytes(row[1])) for row in await connection.execute(query)]
    forged = make_prune_checkpoint(
        rows, rule="default=1h", covered=40, now=T0, key=crypto.generate_signing_key()
    )
    await sql(log, "DELETE FROM audit_records WHERE seq BETWEEN 25 AND 27")
    await _prune_row(log, forged)
    finding = (await verified(log)).finding
    assert finding is not None
    assert (finding.kind, finding.seq) == (Kind.BAD_CHECKPOINT, 25), finding
    assert "prune checkpoint of records 25..27" in finding.message
    assert "key not trusted" in finding.message


async def test_an_altered_prune_checkpoint_is_a_finding(log: Ledger) -> None:
    await log.prune(KEY, RULE, now=T0 + 12 * DAY)
    [made] = await log.prune_checkpoints()
    line = made.to_line()
    altered = line.replace(b'"rule":"', b'"rule":"x', 1)  # any change breaks the signature
    await sql(log, "UPDATE audit_prunes SET line = :line", line=altered)
    for kwargs in ({}, {"checkpoint_file": log.checkpoint_file}):
        finding = (await log.verify(KEYS, **kwargs)).finding  # type: ignore[arg-type]
        assert finding is not None
        assert (finding.kind, finding.seq) == (Kind.BAD_CHECKPOINT, 1), finding
        assert "bad signature" in finding.message


async def test_a_prune_checkpoint_removed_from_the_database_is_a_finding(log: Ledger) -> None:
    await log.prune(KEY, RULE, now=T0 + 12 * DAY)
    await sql(log, "DELETE FROM audit_prunes")
    finding = (await log.verify(KEYS)).finding  # the database alone: the gap is a deletion
    assert finding is not None
    assert (finding.kind, finding.seq, finding.end) == (Kind.DELETED, 1, 4), finding
    finding = (await log.verify(KEYS, checkpoint_file=log.checkpoint_file)).finding
    assert finding is not None
    assert finding.kind is Kind.BAD_CHECKPOINT
    assert "in the checkpoint file but not in the database" in finding.message


@SQLITE_ONLY  # no database of its own: the file, and the ledger's setting
async def test_a_prune_whose_file_write_fails_leaves_a_log_that_verifies(
    log: Ledger, tmp_path: Path
) -> None:
    """The file is written after the commit (as a checkpoint is): when it cannot be, the
    prune is done and explained by the database's copy, and the error is raised."""
    log.checkpoint_file = tmp_path  # a folder: it cannot be appended to
    with pytest.raises(StateError, match="could not be written"):
        await log.prune(KEY, RULE, now=T0 + 12 * DAY)
    assert len(await stored(log)) == 34
    verdict = await log.verify(KEYS)
    assert (verdict.finding, verdict.pruned) == (None, 16)


@SQLITE_ONLY  # no database of its own: the file, and the ledger's setting
async def test_without_a_connection_that_may_delete_pruning_is_refused(log: Ledger) -> None:
    log.prune_engine = None
    with pytest.raises(StateError, match="pruning is off"):
        await log.prune(KEY, RULE, now=T0 + 12 * DAY)
    assert len(await stored(log)) == 50


async def test_the_periodic_run_prunes_and_records_it(log: Ledger) -> None:
    """The collector's loop (a short interval here; the ages come from the given clock,
    never from waiting)."""
    sink = events.MemorySink()
    recorder = events.Recorder(sink, component="audit")
    pruner = Pruner(log, KEY, RULE, recorder, lambda: T0 + 12 * DAY, batch=4)
    task = asyncio.create_task(pruner.run(0.01))
    try:
        async with asyncio.timeout(10):
            while not [e for e in sink.events if e.reason is Activity.RECORDS_PRUNED]:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [recorded] = [e for e in sink.events if e.reason is Activity.RECORDS_PRUNED]
    assert recorded.attributes["removed"] == 16  # in batches of 4, one prune recorded
    assert len(await stored(log)) == 34
    assert (recorded.attributes["by"], recorded.attributes["prune_checkpoints"]) == ("retention", 4)
    assert (await pruner.prune()).total == 0
    assert len([e for e in sink.events if e.reason is Activity.RECORDS_PRUNED]) == 1
    assert (await verified(log)).finding is None
