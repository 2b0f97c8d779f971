"""The verifier (pure): an untouched log always verifies; each kind of tampering — a
record altered, deleted, inserted, moved, a column changed, the tail cut, the chain
recomputed, a checkpoint forged or removed — is found and named at the right record,
whatever the log, the checkpoints and the page sizes it is read in."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledgerrig import checkpoints, ocsf, rechain, records, renumber, trusted

from trustmesh import crypto
from trustmesh.audit.chain import GENESIS, canonical, fields_of, link
from trustmesh.audit.verifier import ChainVerifier, Finding, Kind, Record, verify_chain
from trustmesh.errors import UsageError

KEY = crypto.generate_signing_key()
KEYS = trusted(KEY)
LOG = records(40)


@st.composite
def logs(draw: st.DrawFn, least: int = 2) -> tuple[list[Record], list[int]]:
    """A prefix of LOG (a correct chain) and the seqs its checkpoints sign."""
    n = draw(st.integers(least, len(LOG)))
    signed = draw(st.lists(st.integers(1, max(n, 1)), unique=True, max_size=4 if n else 0))
    return LOG[:n], sorted(signed)


def check(log: list[Record], signed: list[int], **kwargs: object) -> Finding | None:
    signatures = checkpoints(LOG, signed, KEY)
    return verify_chain(log, KEYS, signatures, **kwargs)  # type: ignore[arg-type]


def named(finding: Finding | None, kind: Kind, seq: int, end: int | None = None) -> None:
    assert finding is not None, (kind, seq)
    assert (finding.kind, finding.seq) == (kind, seq), finding
    if end is not None:
        assert finding.end == end, finding
    assert str(seq) in finding.message


@given(logs(least=0), st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_an_untouched_log_verifies_however_it_is_paged(
    case: tuple[list[Record], list[int]], pages: list[int]
) -> None:
    log, signed = case
    assert check(log, signed) is None
    verifier = ChainVerifier(KEYS, checkpoints(LOG, signed, KEY), window=2)
    rest = list(log)
    for size in pages * len(log):
        if not rest:
            break
        assert verifier.feed(rest[:size]) is None
        rest = rest[size:]
    assert verifier.feed(rest) is None
    assert verifier.finish() is None
    assert verifier.records == len(log)
    assert verifier.covered == (signed[-1] if signed else 0)


@given(logs(), st.data(), st.sampled_from(["body", "hash"]))
def test_an_altered_body_or_hash_is_named(
    case: tuple[list[Record], list[int]], data: st.DataObject, what: str
) -> None:
    log, signed = case
    k = data.draw(st.integers(1, len(log)))
    tampered = list(log)
    if what == "body":
        forged = canonical(ocsf(k, message="nothing to see here"))
        tampered[k - 1] = dataclasses.replace(log[k - 1], body=forged)
    else:
        tampered[k - 1] = dataclasses.replace(log[k - 1], hash=os.urandom(32))
    named(check(tampered, signed), Kind.ALTERED, k)


@given(logs(), st.data())
def test_a_changed_column_is_named(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, signed = case
    k = data.draw(st.integers(1, len(log)))
    column = data.draw(st.sampled_from(["decision", "principal", "time", "uid", "trace_id"]))
    value = {"decision": "allow?", "principal": "mallory", "time": 0}.get(column, "x")
    tampered = list(log)
    fields = log[k - 1].fields._replace(**{column: value})
    tampered[k - 1] = dataclasses.replace(log[k - 1], fields=fields)
    finding = check(tampered, signed)
    named(finding, Kind.ALTERED, k)
    assert finding is not None
    assert column in finding.message


@given(logs(least=3), st.data())
def test_deleted_records_are_named(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, signed = case
    k = data.draw(st.integers(1, len(log) - 1))
    last = data.draw(st.integers(k, len(log) - 1))
    tampered = [r for r in log if not k <= r.seq <= last]
    named(check(tampered, signed), Kind.DELETED, k, last)


@given(logs(least=3), st.data())
def test_a_deleted_record_with_the_rest_renumbered_is_named(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, signed = case
    k = data.draw(st.integers(1, len(log) - 2))
    finding = check(renumber([r for r in log if r.seq != k]), signed)
    named(finding, Kind.ALTERED, k)
    assert finding is not None
    assert "deleted" in finding.message


@given(logs(), st.data(), st.booleans())
def test_an_inserted_record_is_named(
    case: tuple[list[Record], list[int]], data: st.DataObject, chained: bool
) -> None:
    """A forged row in the middle, the rows after it renumbered; its hash random, or
    chained in correctly by a forger who knows the scheme (but not the signing key)."""
    log, signed = case
    k = data.draw(st.integers(1, len(log) - 1))
    body = canonical(ocsf(1000 + k))
    prev = log[k - 2].hash if k > 1 else GENESIS
    forged = Record(0, body, link(prev, body) if chained else os.urandom(32))
    named(check(renumber([*log[: k - 1], forged, *log[k - 1 :]]), signed), Kind.INSERTED, k, k)


@given(logs(), st.data())
def test_swapped_records_are_named(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, signed = case
    i, j = sorted(
        data.draw(st.lists(st.integers(1, len(log)), min_size=2, max_size=2, unique=True))
    )
    rows = list(log)
    rows[i - 1], rows[j - 1] = rows[j - 1], rows[i - 1]
    named(check(renumber(rows), signed), Kind.REORDERED, i)


@given(logs(), st.data())
def test_a_moved_record_is_named(case: tuple[list[Record], list[int]], data: st.DataObject) -> None:
    log, signed = case
    i, j = data.draw(st.lists(st.integers(1, len(log)), min_size=2, max_size=2, unique=True))
    rows = list(log)
    rows.insert(j - 1, rows.pop(i - 1))
    named(check(renumber(rows), signed), Kind.REORDERED, min(i, j))


@given(logs(), st.data())
def test_a_cut_tail_below_a_checkpoint_is_truncation(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, signed = case
    keep = data.draw(st.integers(0, len(log) - 1))
    finding = check(log[:keep], signed)
    if signed and signed[-1] > keep:
        named(finding, Kind.TRUNCATED, keep + 1, signed[-1])
    else:
        assert finding is None  # nothing signed ever covered the records cut


@given(logs(), st.data())
def test_a_recomputed_chain_is_caught_by_the_first_checkpoint_after_the_change(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, signed = case
    k = data.draw(st.integers(1, len(log)))
    how = data.draw(st.sampled_from(["alter", "delete", "insert", "swap"]))
    rows = list(log)
    if how == "alter":  # the columns changed with the body: only the hashes can tell
        event = ocsf(k, message="forged")
        rows[k - 1] = Record(k, canonical(event), b"", fields_of(event))
    elif how == "delete":
        del rows[k - 1]
    elif how == "insert":
        rows.insert(k - 1, Record(0, canonical(ocsf(2000 + k)), b""))
    elif k < len(rows):
        rows[k - 1], rows[k] = rows[k], rows[k - 1]
    if rows == log:
        return
    finding = check(rechain(renumber(rows)), signed)
    after = [s for s in signed if s >= k]
    before = [s for s in signed if s < k]
    if after and after[0] <= len(rows):
        named(finding, Kind.REWRITTEN, (before[-1] if before else 0) + 1, after[0])
    elif after:  # a deletion left the log shorter than the checkpoint says
        named(finding, Kind.TRUNCATED, len(rows) + 1, after[-1])
    else:
        assert finding is None  # after the newest checkpoint, nothing signed disagrees


@given(logs(), st.data())
def test_a_forged_or_foreign_checkpoint_is_named(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, _ = case
    seq = data.draw(st.integers(1, len(log)))
    signer = data.draw(st.sampled_from(["stranger", "edited"]))
    if signer == "stranger":
        forged = checkpoints(LOG, [seq], crypto.generate_signing_key())[0]
    else:
        good = checkpoints(LOG, [seq], KEY)[0]
        forged = dataclasses.replace(good, time=good.time + 1)
    finding = verify_chain(log, KEYS, [forged])
    named(finding, Kind.BAD_CHECKPOINT, seq)
    assert finding is not None
    assert ("not trusted" if signer == "stranger" else "bad signature") in finding.message


@given(logs(least=3), st.data())
def test_a_checkpoint_removed_from_the_middle_is_named(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, _ = case
    signed = data.draw(st.lists(st.integers(1, len(log)), min_size=3, unique=True).map(sorted))
    kept = checkpoints(LOG, signed, KEY)
    gone = data.draw(st.integers(0, len(kept) - 2))
    del kept[gone]
    named(verify_chain(log, KEYS, kept), Kind.BAD_CHECKPOINT, kept[gone].last_seq)


@given(logs(), st.data())
def test_the_checkpoint_file_keeps_truncation_visible_when_the_stored_ones_are_gone(
    case: tuple[list[Record], list[int]], data: st.DataObject
) -> None:
    log, _ = case
    signed = data.draw(st.lists(st.integers(1, len(log)), min_size=1, unique=True).map(sorted))
    keep = data.draw(st.integers(0, signed[-1] - 1))
    outside = checkpoints(LOG, signed, KEY)
    assert check(log[:keep], []) is None  # without the file, nothing to go by
    named(verify_chain(log[:keep], KEYS, [], external=outside), Kind.TRUNCATED, keep + 1)
    # the records intact: the stored checkpoints' removal is what is reported
    finding = verify_chain(log, KEYS, [], external=outside)
    named(finding, Kind.BAD_CHECKPOINT, signed[0])
    assert finding is not None
    assert "not in the database" in finding.message
    assert verify_chain(log, KEYS, outside, external=outside) is None


def test_a_break_beyond_the_window_is_still_named_at_its_record() -> None:
    rows = list(LOG)
    rows[4], rows[30] = rows[30], rows[4]
    verifier = ChainVerifier(KEYS, window=4)
    finding = verifier.feed(renumber(rows)) or verifier.finish()
    assert finding is not None
    assert finding.seq == 5
    assert verify_chain(renumber(rows), KEYS).kind == Kind.REORDERED  # type: ignore[union-attr]
    with pytest.raises(UsageError):
        ChainVerifier(KEYS, window=1)


def test_findings_read_well() -> None:
    rows = [r for r in LOG[:10] if r.seq not in (4, 5)]
    finding = verify_chain(rows, KEYS)
    assert str(finding) == (
        "deleted: records 4..5 are missing: record 6 links to a record the log no longer holds"
    )


def test_the_audit_chain_switch_stops_checking_the_links_alone() -> None:
    """Under the test switch ``audit-chain`` (``links=False``) an edited record passes:
    the links are what catch it (a checkpoint signs only the hash stored at its seq); a
    deleted record and a cut tail are still named, by their seqs and the checkpoints."""
    k = 20
    edited = list(LOG)
    forged = LOG[k - 1].body.replace(b'"message":"GET', b'"message":"PUT', 1)
    assert forged != LOG[k - 1].body  # a change no search column shows
    edited[k - 1] = dataclasses.replace(LOG[k - 1], body=forged)
    named(check(edited, [10, 30]), Kind.ALTERED, k)
    assert check(edited, [10, 30], links=False) is None
    assert check(LOG, [10, 30], links=False) is None
    deleted = [r for r in LOG if r.seq != k]
    assert check(deleted, [10, 30], links=False) is not None
    named(check(LOG[:25], [10, 30], links=False), Kind.TRUNCATED, 26)
