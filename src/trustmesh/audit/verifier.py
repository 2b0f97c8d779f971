"""Verifying the audit log: the records in stored order and the signed checkpoints in,
the first problem out, named (a :class:`Finding`), or None. Pure: the caller reads the
rows and feeds them in pages (:meth:`ChainVerifier.feed`), so a log of millions of
records is checked in bounded memory.

Stages, for each record in stored order (``seq`` ascending):

1. **link** — its hash must be ``link(hash of the record before, body)`` and its seq
   the next one. When it is not, up to ``window`` records are read ahead and the break
   is classified by trying links (see :meth:`ChainVerifier._diagnose`):

   ``reordered``  the record links to a record stored after it: it is out of place;
   ``inserted``   a later record links to the last good one, or the record links to an
                  earlier one: the rows between are not part of the chain (a forger may
                  even have chained them in with correct hashes);
   ``deleted``    its seq skips some, and it links to nothing stored: the records
                  between are gone;
   ``altered``    its body (or its stored hash) was changed: the record after it links
                  to its stored hash (or to the hash its body gives).
2. **columns** — the stored search columns must be those its body gives
   (``altered``: a column was changed).
3. **checkpoints** — at each checkpoint's seq the record's hash and the count must be
   those signed (``rewritten``: the chain was recomputed after a change somewhere in
   the range that checkpoint covers).

Records removed by retention (:mod:`trustmesh.audit.retention`) are gaps in the seqs. A
missing seq is accepted only when a validly signed
:class:`~trustmesh.audit.chain.PruneCheckpoint` names it: its hash, as the prune
checkpoint names it, takes the removed record's place in stages 1 and 3 — so the record
after it must link to it, and a checkpoint at its seq must sign it. A missing seq that
no valid prune checkpoint names is ``deleted``, as before, whoever removed it; a prune
checkpoint that is not validly signed, or two that name one seq with different hashes,
are a ``bad-checkpoint`` (reported first when they would explain a gap).

At the end: a checkpoint beyond the last record means the log was cut (``truncated``).
A checkpoint that is not validly signed by a known key, or whose predecessor is
missing, is a ``bad-checkpoint`` at its seq. Checkpoints kept outside the database
(``external``) count as much as the stored ones — truncation stays visible after the
stored checkpoints were deleted — and one missing from the database is reported last.

Undetectable by design: records appended after the newest checkpoint and then removed
(nothing signed ever covered them) — sign often (:class:`~trustmesh.audit.chain.CheckpointPolicy`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trustmesh.audit.chain import GENESIS, Checkpoint, Fields, PruneCheckpoint, fields_of, link
from trustmesh.errors import UsageError

__all__ = ["ChainVerifier", "Finding", "Kind", "Record", "verify_chain"]


class Kind(enum.StrEnum):
    ALTERED = "altered"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    REWRITTEN = "rewritten"
    TRUNCATED = "truncated"
    BAD_CHECKPOINT = "bad-checkpoint"


@dataclass(frozen=True, slots=True)
class Record:
    """One stored row: its seq, canonical body, stored hash and (when given) stored
    search columns."""

    seq: int
    body: bytes
    hash: bytes
    fields: Fields | None = None


@dataclass(frozen=True)
class Finding:
    """The first problem: what (``kind``), where (records ``seq``..``end``; ``end`` is
    None for one record), which checkpoint it concerns (its ``last_seq``), and why."""

    kind: Kind
    seq: int
    message: str
    end: int | None = None
    checkpoint: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


def _are(first: int, last: int) -> str:
    return f"{_span(first, last)} {'is' if first == last else 'are'}"


def _when(cp: Checkpoint) -> str:
    return f"the checkpoint of seq {cp.last_seq} signed at {cp.when.isoformat()}"


def _pruning(cp: PruneCheckpoint) -> str:
    span = _span(cp.first_seq, cp.last_seq)
    return f"the prune checkpoint of {span} ({cp.count} removed) signed at {cp.when.isoformat()}"


class ChainVerifier:
    """Feed it the records in stored order (:meth:`feed`, any number of times), then
    call :meth:`finish`. ``keys`` maps key ids to raw Ed25519 public keys. The stored
    ``checkpoints`` and the ``external`` ones may include prune checkpoints (a
    checkpoint file holds both kinds).

    Memory: the window, the checkpoints, and 32 bytes per pruned record (the hashes the
    prune checkpoints name, held as they were signed)."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        checkpoints: Iterable[Checkpoint | PruneCheckpoint] = (),
        *,
        external: Iterable[Checkpoint | PruneCheckpoint] | None = None,
        window: int = 1024,
        links: bool = True,
    ) -> None:
        """``links`` False only under the test switch ``audit-chain``
        (:mod:`trustmesh.config.switches`): stage 1 takes each record's stored hash
        without checking it links to the one before (seqs and checkpoints still are)."""
        if window < 2:
            raise UsageError("the look-ahead window must hold at least 2 records")
        self._window = window
        self._links = links
        self._prev, self._prev_seq, self._expected = GENESIS, 0, 1
        self.records = 0  # records that passed
        self.pruned = 0  # removed seqs passed, each named by a valid prune checkpoint
        self.covered = 0  # the highest seq a matching checkpoint signed
        self._recent = {GENESIS: 0}  # the last `window` good hashes → seq
        self._buffer: list[Record] = []  # from the first broken link on
        # a checkpoint that disagrees: reported unless the next link names the change
        # itself (a forged record chained in right at a checkpoint's seq)
        self._suspect: Finding | None = None
        self.finding: Finding | None = None
        stored, outside = list(checkpoints), None if external is None else list(external)
        self._plan(
            [c for c in stored if isinstance(c, Checkpoint)],
            None if outside is None else [c for c in outside if isinstance(c, Checkpoint)],
            keys,
        )
        self._plan_prunes(
            [c for c in stored if isinstance(c, PruneCheckpoint)],
            [c for c in outside or () if isinstance(c, PruneCheckpoint)],
            keys,
        )

    # --- checkpoints ----------------------------------------------------------------

    def _plan(
        self,
        stored: list[Checkpoint],
        external: list[Checkpoint] | None,
        keys: Mapping[str, bytes],
    ) -> None:
        problems: list[Finding] = []
        groups: dict[int, list[Checkpoint]] = {}
        signed: set[bytes] = set()  # the digests of the validly signed ones
        for cp in stored + (external or []):
            if cp.digest in signed:
                continue  # the same checkpoint from the database and the file
            if not cp.verifies(keys):
                why = "a key not trusted" if cp.key_id not in keys else "a bad signature"
                problems.append(self._bad(cp, f"{_when(cp)} has {why} (key id {cp.key_id})"))
                continue
            same = groups.setdefault(cp.last_seq, [])
            if any((c.last_hash, c.count) != (cp.last_hash, cp.count) for c in same):
                problems.append(
                    self._bad(cp, f"two signed checkpoints of seq {cp.last_seq} differ")
                )
            same.append(cp)
            signed.add(cp.digest)
        allowed = {GENESIS}
        for seq in sorted(groups):
            for cp in groups[seq]:
                if cp.previous not in allowed:
                    problems.append(self._bad(cp, f"the checkpoint before {_when(cp)} is missing"))
            allowed = {cp.digest for cp in groups[seq]}
        self._marks = [groups[seq][0] for seq in sorted(groups, reverse=True)]  # pop() = next
        self._problems = sorted(problems, key=lambda f: f.seq, reverse=True)
        self._unstored: list[Finding] = []
        if external is not None:
            kept = {cp.digest for cp in stored}
            self._unstored = [
                self._bad(cp, f"{_when(cp)} is in the checkpoint file but not in the database")
                for cp in sorted(external, key=lambda c: c.last_seq)
                if cp.digest not in kept and cp.digest in signed
            ]

    @staticmethod
    def _bad(cp: Checkpoint, message: str) -> Finding:
        return Finding(Kind.BAD_CHECKPOINT, cp.last_seq, message, checkpoint=cp.last_seq)

    def _plan_prunes(
        self,
        stored: list[PruneCheckpoint],
        external: list[PruneCheckpoint],
        keys: Mapping[str, bytes],
    ) -> None:
        """The removed seqs the valid prune checkpoints name (as runs: first seq, the
        hashes), and a finding for each invalid one, at its first seq."""
        problems: list[Finding] = []
        runs: list[tuple[int, bytes]] = []
        seen: set[bytes] = set()
        valid: set[bytes] = set()
        for cp in stored + external:
            if cp.digest in seen:
                continue  # the same prune checkpoint from the database and the file
            seen.add(cp.digest)
            if not cp.verifies(keys):
                why = "a key not trusted" if cp.key_id not in keys else "a bad signature"
                problems.append(
                    Finding(
                        Kind.BAD_CHECKPOINT,
                        cp.first_seq,
                        f"{_pruning(cp)} has {why} (key id {cp.key_id}): the records it "
                        "names are not known to have been pruned",
                        end=cp.last_seq,
                    )
                )
                continue
            valid.add(cp.digest)
            offset = 0
            for first, count in cp.runs:
                runs.append((first, cp.hashes[32 * offset : 32 * (offset + count)]))
                offset += count
        runs.sort(key=lambda run: run[0])
        merged: list[tuple[int, bytes]] = []  # apart and ascending
        for first, hashes in runs:
            if merged and first < merged[-1][0] + len(merged[-1][1]) // 32:
                top, held = merged[-1]  # overlapping: the two must agree where they do
                shared = held[32 * (first - top) : 32 * (first - top) + len(hashes)]
                if hashes[: len(shared)] != shared:
                    problems.append(
                        Finding(
                            Kind.BAD_CHECKPOINT,
                            first,
                            f"two signed prune checkpoints name record {first}'s range "
                            "with different hashes",
                        )
                    )
                    continue
                if len(hashes) > len(shared):
                    merged[-1] = (top, held + hashes[len(shared) :])
            else:
                merged.append((first, hashes))
        self._runs = merged[::-1]  # pop() = the next
        self._prune_problems = sorted(problems, key=lambda f: f.seq, reverse=True)
        kept = {cp.digest for cp in stored}
        self._unstored_prunes = [
            Finding(
                Kind.BAD_CHECKPOINT,
                cp.first_seq,
                f"{_pruning(cp)} is in the checkpoint file but not in the database",
                end=cp.last_seq,
            )
            for cp in sorted(external, key=lambda c: c.first_seq)
            if cp.digest not in kept and cp.digest in valid
        ]

    def _pruned_hash(self, seq: int) -> bytes | None:
        """The hash a valid prune checkpoint names for ``seq`` (None: none names it).
        Seqs are asked in ascending order: the runs before ``seq`` are dropped."""
        while self._runs:
            first, hashes = self._runs[-1]
            if seq < first:
                return None
            if seq < first + len(hashes) // 32:
                return hashes[32 * (seq - first) : 32 * (seq - first) + 32]
            self._runs.pop()
        return None

    def _skip_pruned(self, before: int) -> Finding | None:
        """Pass the removed seqs from the expected one up to ``before`` that a valid
        prune checkpoint names, each as its hash (checkpoints at them are checked)."""
        if self._prune_problems and self._prune_problems[-1].seq < before:
            return self._prune_problems.pop()  # it would have explained this gap
        while self._expected < before:
            hash_ = self._pruned_hash(self._expected)
            if hash_ is None:
                break
            seq = self._expected
            self._prev, self._prev_seq, self._expected = hash_, seq, seq + 1
            self.pruned += 1
            self._remember(hash_, seq)
            found = self._check_marks(Record(seq, b"", hash_))
            if found is not None and found.kind is Kind.REWRITTEN:
                self._suspect, found = self._suspect or found, None
            if found is not None:
                return found
        return None

    def _remember(self, hash_: bytes, seq: int) -> None:
        self._recent[hash_] = seq
        if len(self._recent) > self._window:
            del self._recent[next(iter(self._recent))]

    def _check_marks(self, record: Record) -> Finding | None:
        if self._problems and self._problems[-1].seq <= record.seq:
            return self._problems.pop()
        while self._marks and self._marks[-1].last_seq <= record.seq:
            cp = self._marks.pop()
            if cp.last_hash != record.hash or cp.count != self.records + self.pruned:
                first = self.covered + 1
                return Finding(
                    Kind.REWRITTEN,
                    first,
                    f"{_span(first, cp.last_seq)}: the chain does not match {_when(cp)} "
                    f"(it signs hash {cp.last_hash.hex()[:16]}… over {cp.count} records; "
                    f"the log has {record.hash.hex()[:16]}… over {self.records + self.pruned}):"
                    " a record "
                    "in that range was altered, inserted or deleted and the chain recomputed",
                    end=cp.last_seq,
                    checkpoint=cp.last_seq,
                )
            self.covered = cp.last_seq
        return None

    # --- records --------------------------------------------------------------------

    def feed(self, records: Iterable[Record]) -> Finding | None:
        """Check more records (in stored order); the first finding, once there is one."""
        for record in records:
            if self.finding is not None:
                break
            if self._buffer:
                self._buffer.append(record)
                if len(self._buffer) >= self._window:
                    self.finding = self._conclude()
            elif record.seq > self._expected and (found := self._skip_pruned(record.seq)):
                self.finding = found
            elif self._links and link(self._prev, record.body) != record.hash:
                self._buffer.append(record)
            else:
                self.finding = self._suspect or self._accept(record)
        return self.finding

    def finish(self) -> Finding | None:
        """The first finding, after the last record was fed."""
        if self.finding is None and self._buffer:
            self.finding = self._conclude()
        if self.finding is None and not self._buffer:  # pruned seqs after the last record
            self.finding = self._skip_pruned(self._expected + 2**62)
        if self.finding is None:
            self.finding = self._suspect
        if self.finding is None and self._marks:
            cp = max(self._marks, key=lambda c: c.last_seq)
            if not self._problems or self._problems[-1].seq > self._expected:
                self.finding = Finding(
                    Kind.TRUNCATED,
                    self._expected,
                    f"the log ends at seq {self._prev_seq}, but {_when(cp)} covers "
                    f"{cp.count} records: {_are(self._expected, cp.last_seq)} gone",
                    end=cp.last_seq,
                    checkpoint=cp.last_seq,
                )
        if self.finding is None and (self._problems or self._prune_problems):
            self.finding = min(
                [*self._problems[-1:], *self._prune_problems[-1:]], key=lambda f: f.seq
            )
        if self.finding is None and (self._unstored or self._unstored_prunes):
            self.finding = min(
                [*self._unstored[:1], *self._unstored_prunes[:1]], key=lambda f: f.seq
            )
        return self.finding

    def _accept(self, record: Record) -> Finding | None:
        if record.seq != self._expected:
            return Finding(
                Kind.ALTERED,
                record.seq,
                f"record {record.seq} follows record {self._prev_seq} in the chain: its seq "
                f"was changed (it should be {self._expected})",
            )
        if record.fields is not None and (problem := _columns(record)) is not None:
            return Finding(Kind.ALTERED, record.seq, f"record {record.seq}: {problem}")
        named = self._pruned_hash(record.seq)
        if named is not None and named != record.hash:  # put back in a pruned record's place
            return Finding(
                Kind.ALTERED,
                record.seq,
                f"record {record.seq} is not the record a prune checkpoint removed from that "
                "place (its hash differs): it was put back, forged",
            )
        self._prev, self._prev_seq, self._expected = record.hash, record.seq, record.seq + 1
        self.records += 1
        self._remember(record.hash, record.seq)
        found = self._check_marks(record)
        if found is not None and found.kind is Kind.REWRITTEN:
            self._suspect, found = found, None
        return found

    def _conclude(self) -> Finding:
        found = self._diagnose()
        if self._suspect is not None and (self._suspect.end or 0) < found.seq:
            return self._suspect
        return found

    def _origin(self, record: Record, ahead: list[Record]) -> tuple[int, bool] | None:
        """The seq of the stored record that ``record`` links to, if any, and whether it
        is one still ahead (within the window) rather than one already passed."""
        for other in ahead:
            if other is not record and link(other.hash, record.body) == record.hash:
                return other.seq, True
        for stored, seq in self._recent.items():
            if link(stored, record.body) == record.hash:
                return seq, False
        return None

    def _diagnose(self) -> Finding:
        """Name the break at the first buffered record by trying links."""
        ahead, prev, last_good = self._buffer, self._prev, self._prev_seq
        first = ahead[0]
        origin = self._origin(first, ahead)
        if origin is not None and origin[1]:
            return Finding(
                Kind.REORDERED,
                first.seq,
                f"record {first.seq} is out of order: it links to record {origin[0]}, "
                f"not to record {last_good} stored before it",
            )
        if origin is not None:  # the records between were chained in by a forger
            start = origin[0] + 1
            return Finding(
                Kind.INSERTED,
                start,
                f"{_are(start, last_good)} not part of the chain: record {first.seq} "
                f"after it links to record "
                f"{origin[0]} before it",
                end=last_good,
            )
        for j, later in enumerate(ahead[1:], start=1):
            if link(prev, later.body) == later.hash:
                end = ahead[j - 1].seq
                return Finding(
                    Kind.INSERTED,
                    first.seq,
                    f"{_are(first.seq, end)} not part of the chain: record {later.seq} "
                    f"after it links to record {last_good} before it",
                    end=end,
                )
        if first.seq > self._expected:
            end = first.seq - 1
            return Finding(
                Kind.DELETED,
                self._expected,
                f"{_are(self._expected, end)} missing: record {first.seq} links to a "
                "record the log no longer holds",
                end=end,
            )
        if len(ahead) > 1:
            after = ahead[1]
            if link(link(prev, first.body), after.body) == after.hash:
                return Finding(
                    Kind.ALTERED,
                    first.seq,
                    f"the stored hash of record {first.seq} was changed: its body links to "
                    f"record {last_good}, and record {after.seq} links to that",
                )
            if link(first.hash, after.body) == after.hash:
                return Finding(
                    Kind.ALTERED,
                    first.seq,
                    f"record {first.seq} was altered: its body no longer gives the hash "
                    f"that record {after.seq} links to (or the records before it were "
                    "deleted and the rest renumbered)",
                )
        return Finding(
            Kind.ALTERED,
            first.seq,
            f"record {first.seq} does not link to record {last_good}: altered or forged",
        )


def _columns(record: Record) -> str | None:
    """Why the stored columns are not those the body gives, or None."""
    try:
        derived = fields_of(json.loads(record.body))
    except (UsageError, ValueError, RecursionError):
        return "its body is not a valid event"
    changed = [
        name for name in Fields._fields if getattr(derived, name) != getattr(record.fields, name)
    ]
    if not changed:
        return None
    return f"column {', '.join(changed)} was changed (the body says otherwise)"


def verify_chain(
    records: Iterable[Record],
    keys: Mapping[str, bytes],
    checkpoints: Iterable[Checkpoint | PruneCheckpoint] = (),
    *,
    external: Iterable[Checkpoint | PruneCheckpoint] | None = None,
    links: bool = True,
) -> Finding | None:
    """Check ``records`` (in stored order) against ``checkpoints``: the first problem
    (``links``: see :class:`ChainVerifier`)."""
    verifier = ChainVerifier(keys, checkpoints, external=external, links=links)
    return verifier.feed(records) or verifier.finish()
