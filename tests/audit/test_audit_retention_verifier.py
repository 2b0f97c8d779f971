"""The verifier across pruned records (pure): whatever records retention removed (never
the head) under valid prune checkpoints — in one or many, from the database or the
file, checkpoints signed at pruned seqs — the log verifies, however it is paged; one
more record missing is still ``deleted`` at its seq; a prune checkpoint that is not
validly signed, or two that disagree, are a ``bad-checkpoint``. And the prune
checkpoint's line: read back exactly, anything else refused."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledgerrig import T0, checkpoints, records, trusted

from trustmesh import crypto
from trustmesh.audit.chain import (
    PRUNE_CHUNK,
    Checkpoint,
    PruneCheckpoint,
    checkpoint_from_line,
    link,
    make_prune_checkpoint,
)
from trustmesh.audit.verifier import ChainVerifier, Finding, Kind, Record
from trustmesh.errors import StateError, UsageError

KEY = crypto.generate_signing_key()
KEYS = trusted(KEY)
LOG = records(40)


def pruned(seqs: list[int], *, key: crypto.SigningKey = KEY) -> PruneCheckpoint:
    return make_prune_checkpoint(
        [(seq, LOG[seq - 1].hash) for seq in seqs],
        rule="default=7d",
        covered=40,
        now=T0 + timedelta(days=30),
        key=key,
    )


def run(
    log: list[Record],
    stored: list[Checkpoint | PruneCheckpoint],
    external: list[Checkpoint | PruneCheckpoint] | None = None,
    page: int = 1000,
) -> tuple[Finding | None, ChainVerifier]:
    verifier = ChainVerifier(KEYS, stored, external=external, window=4)
    for start in range(0, len(log), page):
        if verifier.feed(log[start : start + page]) is not None:
            break
    return verifier.finish(), verifier


@st.composite
def prunes(draw: st.DrawFn) -> tuple[int, list[int], list[int], list[list[int]], int]:
    """A log of n records, the seqs its checkpoints sign, the seqs removed (never the
    head), cut into the prune checkpoints that name them, and a page size."""
    n = draw(st.integers(2, len(LOG)))
    signed = sorted(draw(st.sets(st.integers(1, n), max_size=4)))
    removed = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1)))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(removed) - 1, 1)), max_size=3)))
    pieces = [removed[a:b] for a, b in zip([0, *cuts], [*cuts, len(removed)], strict=True)]
    return n, signed, removed, [p for p in pieces if p], draw(st.integers(1, 9))


@given(prunes(), st.booleans())
def test_records_removed_under_valid_prune_checkpoints_verify(
    case: tuple[int, list[int], list[int], list[list[int]], int], in_file: bool
) -> None:
    n, signed, removed, pieces, page = case
    log = [r for r in LOG[:n] if r.seq not in removed]
    made: list[Checkpoint | PruneCheckpoint] = [pruned(p) for p in pieces]
    signatures: list[Checkpoint | PruneCheckpoint] = [*checkpoints(LOG, signed, KEY)]
    found, verifier = run(
        log,
        signatures + ([] if in_file else made),
        made if in_file else None,
        page,
    )
    if in_file and made:  # explained, and missing from the database: said last
        assert found is not None
        assert found.kind is Kind.BAD_CHECKPOINT, found
        assert "not in the database" in found.message
    else:
        assert found is None, found
    assert (verifier.records, verifier.pruned) == (n - len(removed), len(removed))
    both, _ = run(log, signatures + made, made, page)
    assert both is None


@given(prunes(), st.data())
def test_one_more_record_missing_is_deleted_at_its_seq(
    case: tuple[int, list[int], list[int], list[list[int]], int], data: st.DataObject
) -> None:
    n, signed, removed, pieces, page = case
    kept = [seq for seq in range(1, n) if seq not in removed]
    if not kept:
        return
    gone = data.draw(st.sampled_from(kept))
    log = [r for r in LOG[:n] if r.seq not in removed and r.seq != gone]
    stored = [*checkpoints(LOG, signed, KEY), *(pruned(p) for p in pieces)]
    found, _ = run(log, stored, None, page)
    assert found is not None
    assert (found.kind, found.seq) == (Kind.DELETED, gone), found


@pytest.mark.parametrize("present", [True, False], ids=["records-present", "records-gone"])
def test_a_prune_checkpoint_of_an_untrusted_key_is_a_finding(present: bool) -> None:
    forged = pruned([5, 6, 7], key=crypto.generate_signing_key())
    log = LOG if present else [r for r in LOG if r.seq not in (5, 6, 7)]
    found, _ = run(log, [*checkpoints(LOG, [20, 40], KEY), forged])
    assert found is not None
    assert (found.kind, found.seq, found.end) == (Kind.BAD_CHECKPOINT, 5, 7), found
    assert "key not trusted" in found.message


def test_a_tampered_prune_checkpoint_does_not_verify() -> None:
    made = pruned([5, 6, 7])
    for change in (
        {"runs": ((5, 2), (8, 1))},
        {"hashes": LOG[7].hash + made.hashes[32:]},
        {"covered": 7},
        {"rule": "default=1h"},
    ):
        tampered = dataclasses.replace(made, **change)  # type: ignore[arg-type]
        assert not tampered.verifies(KEYS)
        found, _ = run([r for r in LOG if r.seq not in (5, 6, 7)], [tampered])
        assert found is not None
        assert found.kind is Kind.BAD_CHECKPOINT, found


def test_two_prune_checkpoints_that_disagree_are_a_finding() -> None:
    other = make_prune_checkpoint(
        [(6, LOG[0].hash)], rule="default=7d", covered=40, now=T0, key=KEY
    )
    found, _ = run([r for r in LOG if r.seq not in (5, 6, 7)], [pruned([5, 6, 7]), other])
    assert found is not None
    assert (found.kind, found.seq) == (Kind.BAD_CHECKPOINT, 6), found
    assert "different hashes" in found.message


def test_the_same_prune_checkpoint_twice_and_overlapping_ones_that_agree_verify() -> None:
    log = [r for r in LOG if r.seq not in range(3, 11)]
    made = [pruned([3, 4, 5, 6]), pruned([5, 6, 7, 8, 9, 10])]
    found, verifier = run(log, [*made, made[0]], made)
    assert (found, verifier.pruned) == (None, 8)


def test_a_prune_checkpoint_line_reads_back_exactly_and_nothing_else() -> None:
    made = pruned([1, 2, 3, 7, 9, 10])
    assert made.runs == ((1, 3), (7, 1), (9, 2))
    assert made.removed() == [(seq, LOG[seq - 1].hash) for seq in (1, 2, 3, 7, 9, 10)]
    line = made.to_line()
    assert checkpoint_from_line(line.rstrip(b"\n")) == made
    checkpoint = checkpoints(LOG, [4], KEY)[0]
    assert checkpoint_from_line(checkpoint.to_line().rstrip(b"\n")) == checkpoint
    bad = [
        line.replace(b'"runs":[[1,3],[7,1],[9,2]]', b'"runs":[[1,3],[3,1],[9,2]]'),  # overlap
        line.replace(b'"runs":[[1,3],[7,1],[9,2]]', b'"runs":[[1,3],[4,1],[9,2]]'),  # adjacent
        line.replace(b'"runs":[[1,3],[7,1],[9,2]]', b'"runs":[[1,3],[7,1],[9,3]]'),  # count
        line.replace(b'"runs":[[1,3],[7,1],[9,2]]', b'"runs":[]'),
        line.replace(b'"covered":40', b'"covered":-1'),
        line.replace(b'"covered":40', b'"covered":40,"extra":1'),
        line.replace(b'"kind":"prune"', b'"kind":"other"'),
        line.replace(b'"rule":"default=7d"', b'"rule":"\\u0000"'),
        line.replace(b'"v":1', b'"v":1,"v":1'),
        line.replace(b'"signature":"', b'"signature":"00'),
        b"[" + line + b"]",
        b"{" * (200 * 1024),
    ]
    for text in bad:
        with pytest.raises(StateError):
            checkpoint_from_line(text.rstrip(b"\n"))


def test_a_prune_checkpoint_is_made_only_of_what_it_may_name() -> None:
    hash_ = LOG[0].hash
    for removed, covered in [
        ([], 40),
        ([(2, hash_), (1, hash_)], 40),  # out of order
        ([(1, hash_), (1, hash_)], 40),  # twice
        ([(41, hash_)], 40),  # not signed yet
        ([(1, hash_[:31])], 40),
        ([(seq, hash_) for seq in range(1, PRUNE_CHUNK + 2)], PRUNE_CHUNK + 1),
    ]:
        with pytest.raises(UsageError):
            make_prune_checkpoint(removed, rule="default=7d", covered=covered, now=T0, key=KEY)
    with pytest.raises(UsageError):
        make_prune_checkpoint([(1, hash_)], rule="tab\there", covered=1, now=T0, key=KEY)


def test_a_record_forged_back_into_a_pruned_place_is_named() -> None:
    """Chained in right after the record before it, it passes its own link; the prune
    checkpoint names another hash for that seq."""
    forged_body = LOG[5].body.replace(b"GET /orders/6", b"GET /orders/x")
    forged = Record(6, forged_body, link(LOG[4].hash, forged_body), None)
    log = [*LOG[:5], forged, *LOG[6:]]
    found, _ = run(log, [pruned([6])])
    assert found is not None
    assert (found.kind, found.seq) == (Kind.ALTERED, 6), found
    assert "prune checkpoint" in found.message
