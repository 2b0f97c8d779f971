"""The ledger on a real SQLite file and a real PostgreSQL database: appends chain from the
head and are idempotent by event uid; refused events are quarantined with the reason;
concurrent writers never fork the chain; checkpoints are signed, stored and written to a
0600 file; search filters; the log verifies page by page."""

from __future__ import annotations

import asyncio
import hashlib
import math
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerrig import T0, ledger_fixture, ocsf, trusted  # noqa: F401 - the `ledger` fixture

from trustmesh import crypto
from trustmesh.audit.chain import GENESIS, Checkpoint, CheckpointPolicy, canonical, link
from trustmesh.audit.checkpoint_file import read_checkpoints
from trustmesh.audit.ledger import MAX_EVENT_BYTES, QUARANTINE_BYTES, Ledger
from trustmesh.audit.search import Query
from trustmesh.errors import StateError, UsageError
from trustmesh.store import create_engine

KEY = crypto.generate_signing_key()
KEYS = trusted(KEY)


async def test_a_batch_is_chained_from_the_head_in_order(ledger: Ledger) -> None:
    first = [ocsf(n) for n in range(1, 6)]
    second = [ocsf(n) for n in range(6, 9)]
    done = await ledger.append(first, now=T0)
    assert done.stored == tuple(e["metadata"]["uid"] for e in first)
    assert (done.duplicates, done.quarantined, done.head) == ((), (), 5)
    assert (await ledger.append(second, now=T0)).head == 8
    prev = GENESIS
    for event in first + second:
        prev = link(prev, canonical(event))
    assert await ledger.head() == (8, prev)
    found = await ledger.search(Query(limit=10))
    assert [r.seq for r in found] == list(range(1, 9))
    assert [r.event for r in found] == first + second
    verdict = await ledger.verify(KEYS)
    assert (verdict.finding, verdict.records, verdict.covered, verdict.unsigned) == (None, 8, 0, 8)


async def test_a_retried_delivery_is_stored_once(ledger: Ledger) -> None:
    batch = [ocsf(n) for n in range(1, 5)]
    await ledger.append(batch, now=T0)
    again = await ledger.append(batch, now=T0)
    assert (again.stored, again.head) == ((), 4)
    assert sorted(again.duplicates) == sorted(e["metadata"]["uid"] for e in batch)
    # overlapping: the new ones are chained on; a repeat inside the batch counts once
    fresh = [ocsf(5), ocsf(6)]
    mixed = await ledger.append([batch[0], fresh[0], fresh[0], fresh[1]], now=T0)
    assert mixed.stored == (fresh[0]["metadata"]["uid"], fresh[1]["metadata"]["uid"])
    assert sorted(mixed.duplicates) == sorted(
        [batch[0]["metadata"]["uid"], fresh[0]["metadata"]["uid"]]
    )
    assert mixed.head == 6
    assert len(await ledger.search(Query())) == 6
    assert (await ledger.verify(KEYS)).finding is None


async def test_an_append_that_fails_in_its_transaction_leaves_nothing(ledger: Ledger) -> None:
    """The duplicate check, the chain, the inserts and the quarantine are one transaction
    (on SQLite one call in the connection's thread): a failure in it stores no record
    and quarantines nothing, and the next append chains from the head before it."""
    await ledger.append([ocsf(1)], now=T0)
    head = await ledger.head()
    ledger._insert = "INSERT INTO audit_records_missing (seq) VALUES (1)"  # fails mid-way
    with pytest.raises(Exception, match="audit_records_missing"):
        await ledger.append([ocsf(2), {"not": "an event"}, ocsf(3)], now=T0)
    assert await ledger.head() == head
    assert await ledger.quarantined() == []
    ledger._insert = None
    done = await ledger.append([ocsf(2), ocsf(3)], now=T0)
    assert (done.head, len(done.stored)) == (3, 2)
    assert (await ledger.verify(KEYS)).finding is None


async def test_an_invalid_event_is_quarantined_with_its_reason_and_the_rest_stored(
    ledger: Ledger,
) -> None:
    no_uid = ocsf(2)
    del no_uid["metadata"]["uid"]
    not_json = ocsf(3) | {"score": math.nan}
    huge = ocsf(5)
    huge["unmapped"]["trustmesh"]["attributes"]["padding"] = "x" * MAX_EVENT_BYTES
    batch = [ocsf(1), no_uid, not_json, ["not", "an", "object"], ocsf(4), huge]
    done = await ledger.append(batch, now=T0)  # type: ignore[list-item]
    assert len(done.stored) == 2
    assert done.head == 2
    assert [(index, reason.split(" ")[0]) for index, reason in done.quarantined] == [
        (1, "metadata.uid"),
        (2, "not"),
        (3, "an"),
        (5, "an"),
    ]
    assert "at most" in done.quarantined[3][1]
    kept = await ledger.quarantined()
    assert len(kept) == 4
    reasons = {q.reason for q in kept}
    assert any("metadata.uid" in r for r in reasons)
    assert any("NaN" in r or "Out of range" in r for r in reasons)
    assert all(q.received == int(T0.timestamp() * 1000) for q in kept)
    small = [q for q in kept if q.size <= QUARANTINE_BYTES]
    assert len(small) == 3
    assert all(q.size == len(q.raw) and q.digest == hashlib.sha256(q.raw).digest() for q in small)


async def test_an_unparsable_body_is_quarantined_bounded(ledger: Ledger) -> None:
    huge = b"{" + b"x" * (QUARANTINE_BYTES * 2)
    await ledger.quarantine(huge, "not JSON", now=T0)
    await ledger.quarantine(b"\xff\xfe", "not UTF-8", now=T0 + timedelta(seconds=1))
    newest, oldest = await ledger.quarantined()
    assert (newest.reason, newest.raw, newest.size) == ("not UTF-8", b"\xff\xfe", 2)
    assert oldest.raw == huge[:QUARANTINE_BYTES]
    assert oldest.size == len(huge)
    assert oldest.digest == hashlib.sha256(huge).digest()
    assert await ledger.head() == (0, GENESIS)


async def test_concurrent_writers_never_fork_the_chain(ledger: Ledger, tmp_path: Path) -> None:
    others = [
        Ledger(create_engine(str(ledger.engine.url.render_as_string(False)))) for _ in range(3)
    ]
    try:
        writers = [ledger, *others]
        batches = [[ocsf(100 * w + n) for n in range(20)] for w in range(len(writers))]

        async def write(store: Ledger, batch: list[dict[str, object]]) -> None:
            for start in range(0, len(batch), 5):
                await store.append(batch[start : start + 5], now=T0)

        writes = (write(s, b) for s, b in zip(writers, batches, strict=True))
        assert await asyncio.gather(*writes, return_exceptions=True) == [None] * len(writers)
    finally:
        for other in others:
            await other.close()
    assert (await ledger.head())[0] == 80
    assert len(await ledger.search(Query(limit=1000))) == 80
    assert (await ledger.verify(KEYS, page=7)).finding is None


async def test_a_checkpoint_signs_the_head_in_the_database_and_the_file(ledger: Ledger) -> None:
    assert await ledger.checkpoint(KEY, now=T0) is None  # nothing to sign yet
    await ledger.append([ocsf(n) for n in range(1, 4)], now=T0)
    first = await ledger.checkpoint(KEY, now=T0)
    assert first is not None
    assert (first.last_seq, first.count, first.previous) == (3, 3, GENESIS)
    assert first.last_hash == (await ledger.head())[1]
    assert first.verifies(KEYS)
    assert await ledger.checkpoint(KEY, now=T0 + timedelta(hours=1)) is None  # nothing new
    await ledger.append([ocsf(4)], now=T0)
    second = await ledger.checkpoint(KEY, now=T0 + timedelta(seconds=1))
    assert second is not None
    assert second.previous == first.digest
    assert await ledger.checkpoints() == [first, second]
    assert ledger.checkpoint_file is not None
    assert read_checkpoints(ledger.checkpoint_file) == [first, second]
    assert stat.S_IMODE(ledger.checkpoint_file.stat().st_mode) == 0o600
    verdict = await ledger.verify(KEYS, checkpoint_file=ledger.checkpoint_file)
    assert (verdict.finding, verdict.covered, verdict.unsigned, verdict.checkpoints) == (
        None,
        4,
        0,
        4,
    )


async def test_a_checkpoint_file_that_cannot_be_written_is_an_error_after_the_database(
    ledger: Ledger, tmp_path: Path
) -> None:
    """The database first: a checkpoint the file lacks is harmless (the database's own
    is kept); one the database lacked would read as a removed checkpoint."""
    await ledger.append([ocsf(1)], now=T0)
    ledger.checkpoint_file = tmp_path  # a folder: cannot be opened for appending
    with pytest.raises(StateError, match="checkpoint of seq 1 could not be written"):
        await ledger.checkpoint(KEY, now=T0)
    assert [cp.last_seq for cp in await ledger.checkpoints()] == [1]


async def test_a_checkpoint_follows_the_policy(ledger: Ledger) -> None:
    policy = CheckpointPolicy(records=5, seconds=30)
    await ledger.append([ocsf(n) for n in range(1, 3)], now=T0)
    assert await ledger.checkpoint(KEY, now=T0, policy=policy) is not None  # the first
    await ledger.append([ocsf(n) for n in range(3, 6)], now=T0)
    assert await ledger.checkpoint(KEY, now=T0 + timedelta(seconds=29), policy=policy) is None
    assert await ledger.checkpoint(KEY, now=T0 + timedelta(seconds=30), policy=policy)
    await ledger.append([ocsf(n) for n in range(6, 11)], now=T0)
    made = await ledger.checkpoint(KEY, now=T0 + timedelta(seconds=31), policy=policy)
    assert made is not None
    assert made.last_seq == 10


async def test_a_file_checkpoint_that_is_not_one_stops_verification(
    ledger: Ledger, tmp_path: Path
) -> None:
    await ledger.append([ocsf(1)], now=T0)
    await ledger.checkpoint(KEY, now=T0)
    assert ledger.checkpoint_file is not None
    with ledger.checkpoint_file.open("ab") as file:
        file.write(b'{"v":1,"forged":true}\n')
    with pytest.raises(StateError, match=r"checkpoints.jsonl:2: "):
        await ledger.verify(KEYS, checkpoint_file=ledger.checkpoint_file)
    with pytest.raises(StateError, match="cannot read"):
        await ledger.verify(KEYS, checkpoint_file=tmp_path / "missing.jsonl")


async def test_search_filters(ledger: Ledger) -> None:
    events = [ocsf(n) for n in range(1, 31)]
    await ledger.append(events, now=T0)

    async def seqs(**filters: object) -> list[int]:
        return [r.seq for r in await ledger.search(Query(**filters))]  # type: ignore[arg-type]

    assert await seqs(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=13)) == [
        10,
        11,
        12,
    ]
    assert await seqs(class_uid=3003) == [5, 10, 15, 20, 25, 30]
    assert await seqs(principal="alice", decision="allow") == [6, 12, 18, 24, 30]
    assert await seqs(principal="spiffe://shop.example/orders") == [5, 11, 17, 23, 29]
    assert await seqs(reason="policy-deny", until=T0 + timedelta(seconds=6)) == [1, 3, 5]
    assert await seqs(trace_id=f"{2:032x}") == [8, 9, 10, 11]
    assert await seqs(decision="deny", limit=3) == [1, 3, 5]
    assert await seqs(decision="deny", limit=3, after_seq=5) == [7, 9, 11]
    assert await seqs(decision="deny", limit=2, newest_first=True) == [29, 27]
    assert await seqs(decision="deny", limit=2, newest_first=True, after_seq=27) == [25, 23]
    assert await seqs(trace_id="nope") == []
    (hit,) = await ledger.search(Query(trace_id=f"{0:032x}", principal="bob"))
    assert hit.event == events[0]
    assert hit.fields.src_ip == "10.0.1.2"


@pytest.mark.parametrize(
    "bad",
    [
        {"limit": 0},
        {"limit": 1001},
        {"since": T0, "until": T0 - timedelta(seconds=1)},
        {"since": T0.replace(tzinfo=None)},
    ],
)
def test_a_query_out_of_bounds_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Query(**bad)  # type: ignore[arg-type]


def test_the_fields_values_are_in_column_order() -> None:
    from trustmesh.audit.chain import fields_of

    fields = fields_of(ocsf(7))
    assert fields.values() == tuple(getattr(fields, name) for name in fields._fields)


def test_the_checkpoint_line_of_a_stored_checkpoint_round_trips() -> None:
    made = Checkpoint(1, GENESIS, 1, 0, GENESIS, "k", b"\x00" * 64)
    assert Checkpoint.from_line(made.to_line()) == made
