"""The acceptance of the tamper-evident store, on SQLite and PostgreSQL: someone with
write access to the database edits, deletes, inserts, reorders or cuts records by raw
SQL, or recomputes the whole chain, or edits a checkpoint; verify names the kind and the
record. The log: 50 events in batches of 10, checkpoints at seq 20 and 40 (41..50 are
not signed yet), every checkpoint also in the checkpoint file."""

from __future__ import annotations

import os

import pytest
from ledgerrig import T0, ledger_fixture, ocsf, sql, trusted  # noqa: F401 - the `ledger` fixture
from sqlalchemy import text

from trustmesh import crypto
from trustmesh.audit.chain import canonical, fields_of, link
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.verifier import Finding, Kind

KEY = crypto.generate_signing_key()
KEYS = trusted(KEY)


@pytest.fixture
async def log(ledger: Ledger) -> Ledger:
    for start in range(1, 51, 10):
        await ledger.append([ocsf(n) for n in range(start, start + 10)], now=T0)
        if start + 9 in (20, 40):
            await ledger.checkpoint(KEY, now=T0)
    verdict = await ledger.verify(KEYS, checkpoint_file=ledger.checkpoint_file)
    assert (verdict.finding, verdict.records, verdict.covered) == (None, 50, 40)
    return ledger


async def _body(ledger: Ledger, seq: int) -> bytes:
    async with ledger.engine.connect() as connection:
        query = text("SELECT body FROM audit_records WHERE seq = :seq")
        return bytes((await connection.execute(query, {"seq": seq})).scalar_one())


async def _hash(ledger: Ledger, seq: int) -> bytes:
    async with ledger.engine.connect() as connection:
        query = text("SELECT hash FROM audit_records WHERE seq = :seq")
        return bytes((await connection.execute(query, {"seq": seq})).scalar_one())


async def _finding(ledger: Ledger, **kwargs: object) -> Finding:
    verdict = await ledger.verify(KEYS, page=7, **kwargs)  # type: ignore[arg-type]
    assert verdict.finding is not None
    return verdict.finding


async def test_an_edited_body_is_named(log: Ledger) -> None:
    body = await _body(log, 25)
    edited = body.replace(b'"message":"GET /orders/25"', b'"message":"GET /orders/26"')
    assert edited != body
    await sql(log, "UPDATE audit_records SET body = :body WHERE seq = 25", body=edited)
    finding = await _finding(log)
    assert (finding.kind, finding.seq) == (Kind.ALTERED, 25)
    assert "record 25 was altered" in finding.message


@pytest.mark.parametrize("chained", [False, True], ids=["random-hash", "chained-hash"])
async def test_an_inserted_record_is_named(log: Ledger, chained: bool) -> None:
    """A forged row at seq 17, the rows after it moved up by one (two steps: the seqs
    stay unique); its hash random, or chained in right by someone who knows the scheme."""
    forged = ocsf(999, message="an event that never happened")
    body, fields = canonical(forged), fields_of(forged)
    hash_ = link(await _hash(log, 16), body) if chained else os.urandom(32)
    await sql(log, "UPDATE audit_records SET seq = seq + 1000000 WHERE seq >= 17")
    await sql(log, "UPDATE audit_records SET seq = seq - 999999 WHERE seq >= 1000000")
    await sql(
        log,
        "INSERT INTO audit_records (seq, uid, time, class_uid, principal, src_ip, decision,"
        " reason, trace_id, body, hash) VALUES (17, :uid, :time, :class_uid, :principal,"
        " :src_ip, :decision, :reason, :trace_id, :body, :hash)",
        **{name: getattr(fields, name) for name in ("uid", "time", "class_uid", "principal")},
        **{name: getattr(fields, name) for name in ("src_ip", "decision", "reason")},
        trace_id=fields.trace_id,
        body=body,
        hash=hash_,
    )
    finding = await _finding(log)
    assert (finding.kind, finding.seq, finding.end) == (Kind.INSERTED, 17, 17)


async def test_a_cut_tail_with_its_stored_checkpoints_is_found_by_the_file(log: Ledger) -> None:
    await sql(log, "DELETE FROM audit_records WHERE seq > 35")
    await sql(log, "DELETE FROM audit_checkpoints")
    verdict = await log.verify(KEYS)  # the database alone no longer knows
    assert (verdict.finding, verdict.records, verdict.covered) == (None, 35, 0)
    finding = await _finding(log, checkpoint_file=log.checkpoint_file)
    assert (finding.kind, finding.seq, finding.end) == (Kind.TRUNCATED, 36, 40)


async def test_a_recomputed_chain_disagrees_with_the_first_checkpoint_after_the_change(
    log: Ledger,
) -> None:
    async with log.engine.connect() as connection:
        query = text("SELECT seq, body, hash FROM audit_records ORDER BY seq")
        rows = [(r.seq, bytes(r.body), bytes(r.hash)) for r in await connection.execute(query)]
    prev = rows[23][2]  # seq 24's hash
    for seq, body, _ in rows[24:]:
        if seq == 25:
            body = body.replace(b"GET /orders/25", b"GET /orders/52")
            await sql(log, "UPDATE audit_records SET body = :body WHERE seq = 25", body=body)
        prev = link(prev, body)
        await sql(log, "UPDATE audit_records SET hash = :hash WHERE seq = :seq", hash=prev, seq=seq)
    finding = await _finding(log)
    assert (finding.kind, finding.seq, finding.end, finding.checkpoint) == (
        Kind.REWRITTEN,
        21,
        40,
        40,
    )
    assert "records 21..40" in finding.message


SWAP_8_AND_14 = (
    "UPDATE audit_records SET seq = -1 WHERE seq = 8",
    "UPDATE audit_records SET seq = 8 WHERE seq = 14",
    "UPDATE audit_records SET seq = 14 WHERE seq = -1",
)


@pytest.mark.parametrize(
    ("statements", "kind", "seq", "end", "words"),
    [
        (
            ["UPDATE audit_records SET decision = 'allow' WHERE seq = 13"],
            Kind.ALTERED,
            13,
            None,
            "column decision",
        ),
        (["DELETE FROM audit_records WHERE seq = 33"], Kind.DELETED, 33, 33, "record 33 is"),
        (
            ["DELETE FROM audit_records WHERE seq BETWEEN 3 AND 5"],
            Kind.DELETED,
            3,
            5,
            "records 3..5 are missing",
        ),
        (SWAP_8_AND_14, Kind.REORDERED, 8, None, "links to record 13"),
        (["DELETE FROM audit_records WHERE seq > 35"], Kind.TRUNCATED, 36, 40, "36..40 are gone"),
        (
            ["UPDATE audit_checkpoints SET count = 19 WHERE last_seq = 20"],
            Kind.BAD_CHECKPOINT,
            20,
            None,
            "bad signature",
        ),
        (
            ["DELETE FROM audit_checkpoints WHERE last_seq = 20"],
            Kind.BAD_CHECKPOINT,
            40,
            None,
            "the checkpoint before",
        ),
    ],
    ids=["column", "delete", "delete-3", "swap", "truncate", "edit-checkpoint", "drop-checkpoint"],
)
async def test_raw_sql_tampering_is_named(
    log: Ledger, statements: list[str], kind: Kind, seq: int, end: int | None, words: str
) -> None:
    for statement in statements:
        await sql(log, statement)
    finding = await _finding(log)
    assert (finding.kind, finding.seq, finding.end) == (kind, seq, end)
    assert words in finding.message
