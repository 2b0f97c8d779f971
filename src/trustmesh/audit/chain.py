"""The audit log's hash chain and its signed checkpoints: pure values and functions (the
storage is :mod:`trustmesh.audit.ledger`, the check :mod:`trustmesh.audit.verifier`).

Records are numbered ``seq`` = 1, 2, 3… in the order they are appended. Each stores the
event's canonical bytes (:func:`canonical`: JSON with sorted keys, compact separators,
ASCII only, no NaN or Infinity) and its link hash::

    hash(0)   = GENESIS = SHA-256("trustmesh/audit/genesis/v1")
    hash(seq) = SHA-256("trustmesh/audit/record/v1" NUL || hash(seq - 1) || body(seq))

so changing, removing, adding or moving a record breaks the link of the record after it.
An attacker who can write the database can recompute the whole chain; what they cannot
do is sign. A :class:`Checkpoint` signs (Ed25519, the audit key) the head of the chain —
its seq, its hash, the number of records — with the time and the digest of the previous
checkpoint, so the checkpoints form a chain of their own. Checkpoints are kept in the
database and, one JSON line each (:meth:`Checkpoint.to_line`), outside it: a log cut
below a checkpoint kept elsewhere is visibly truncated.

Records removed on purpose (retention: :mod:`trustmesh.audit.retention`) leave a
:class:`PruneCheckpoint`, signed by the same key, that names each removed seq with its
link hash: the record after a removed one links to that hash, so the chain still checks
across the gap — and a seq missing without one is still a deletion. It is kept beside
the checkpoints, in the database and in the same file (:func:`checkpoint_from_line`
tells the two kinds of line apart).

The indexed columns a record is searched by are derived from its body
(:func:`fields_of`), and refused when absent or malformed (the caller quarantines the
event, with the reason).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import orjson

from trustmesh import crypto
from trustmesh.errors import StateError, UsageError

__all__ = [
    "GENESIS",
    "LIMITS",
    "MAX_PRUNE_LINE",
    "PRUNE_CHUNK",
    "Checkpoint",
    "CheckpointPolicy",
    "Fields",
    "PruneCheckpoint",
    "canonical",
    "checkpoint_due",
    "checkpoint_from_line",
    "fields_of",
    "link",
    "make_checkpoint",
    "make_prune_checkpoint",
    "ms",
]

GENESIS = hashlib.sha256(b"trustmesh/audit/genesis/v1").digest()
_RECORD = b"trustmesh/audit/record/v1\x00"
_CHECKPOINT = b"trustmesh/audit/checkpoint/v1\x00"
_PRUNE = b"trustmesh/audit/prune/v1\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_LINE = 4096
_UID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_LINE_FIELDS = frozenset(
    {"v", "last_seq", "last_hash", "count", "time", "previous", "key_id", "signature"}
)
_PRUNE_FIELDS = frozenset(
    {"v", "kind", "runs", "hashes", "rule", "covered", "time", "key_id", "signature"}
)
_RULE = re.compile(r"[ -~]{1,512}")  # printable ASCII: it is shown as it is
#: The most records one prune checkpoint names (a prune of more writes several).
PRUNE_CHUNK = 1000
#: The longest line of a prune checkpoint (:data:`PRUNE_CHUNK` hashes and their runs).
MAX_PRUNE_LINE = 160 * 1024
#: The longest value each text column holds.
LIMITS = {"principal": 2048, "src_ip": 64, "decision": 16, "reason": 128, "trace_id": 256}


def _refuse(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_refuse
)
_encode = _ENCODER.encode
#: orjson's keys sorted, compact; datetimes and dataclasses handed to ``default`` (which
#: refuses them), as the standard encoder would.
_FAST = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


#: What ``ensure_ascii`` escapes and orjson writes as it is: DEL and every non-ASCII
#: character (inside strings only: orjson's output is JSON).
_WIDE: Final = re.compile("[^\x00-\x7e]")


def _escape(match: re.Match[str]) -> str:
    """A character as ``\\uXXXX`` (lowercase hex; a surrogate pair past U+FFFF), as the
    standard encoder writes it."""
    code = ord(match.group())
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"
    return f"\\u{code:04x}"


def canonical(event: Mapping[str, Any]) -> bytes:
    """The event's canonical bytes: sorted keys, no spaces, ASCII (``\\uXXXX`` escapes),
    or :class:`UsageError` for a value JSON cannot hold (NaN, Infinity, bytes, sets,
    other objects, a cycle) or keys of mixed types.

    Written by orjson (DEL and non-ASCII characters then escaped as ``\\uXXXX``, as the
    standard encoder's ``ensure_ascii`` does) where it can write the event: integers of
    64 bits, strings without lone surrogates, and no ``null`` but for None (orjson writes
    a NaN or an infinity as null, so a body with a null is looked through for one);
    anything else by the standard encoder, which refuses what is not JSON. The bytes are
    the standard encoder's, but for a float from 1e-9 to 1e-4, which orjson writes its own
    way (``1.5e-7``, ``0.00001``; the standard encoder ``1.5e-07``, ``1e-05``) — as every
    record stored so far has it; both write the shortest text that parses back to the
    float, so the bytes of an event parsed from them are the same bytes again.

    Events come parsed from JSON (or from ``Event.to_ocsf()``), so their keys are
    strings; a dict whose keys are all numbers, booleans or None is written as JSON
    writes it (keys as strings), which stays deterministic — checking every key of
    every event would cost as much as the encoding itself."""
    try:
        body = orjson.dumps(event, default=_refuse, option=_FAST)
    except (TypeError, ValueError, RecursionError):
        body = b""
    if body[:1] == b"{" and (b"null" not in body or _finite(event)):
        if body.isascii() and b"\x7f" not in body:
            return body
        # DEL and non-ASCII escaped as the standard encoder does (the rest is the same)
        return _WIDE.sub(_escape, body.decode("utf-8")).encode("ascii")
    try:
        text = _encode(event)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"not a JSON object: {exc}") from None
    if not text.startswith("{"):
        raise UsageError("not a JSON object")
    return text.encode("ascii")


def _finite(value: object) -> bool:
    """Whether no float in ``value`` is NaN or infinite (orjson writes those as null,
    and a null it wrote for None is a null). Called once orjson wrote it: no cycle, and
    no container orjson would not write."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return False
    return True


def link(previous: bytes, body: bytes) -> bytes:
    """The hash of a record with ``body`` after the record whose hash is ``previous``."""
    return hashlib.sha256(_RECORD + previous + body).digest()


def ms(when: datetime) -> int:
    """Milliseconds since the Unix epoch (exact; ``when`` must be timezone-aware)."""
    if when.tzinfo is None:
        raise UsageError("a time must be timezone-aware")
    return (when - _EPOCH) // timedelta(milliseconds=1)


# --- the columns a record is searched by ---------------------------------------------


class Fields(NamedTuple):
    """What a record is found by, derived from its event (see :func:`fields_of`); a
    named tuple (made for every event the collector takes: the cheapest record)."""

    uid: str
    time: int  # ms since the epoch (OCSF ``time``)
    class_uid: int
    principal: str | None  # the user (``sub``), else the workload's SPIFFE ID
    src_ip: str | None
    decision: str | None
    reason: str | None
    trace_id: str | None

    def values(self) -> tuple[object, ...]:
        """The columns' values, in the order of the fields."""
        return tuple(self)


def _text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not value or len(value) > LIMITS[name]:
        raise UsageError(f"{name} must be a non-empty string of at most {LIMITS[name]}")
    return value


def _integer(name: str, value: object, limit: int) -> int:
    if type(value) is not int or not 0 <= value < limit:
        raise UsageError(f"{name} must be an integer from 0 to {limit - 1}")
    return value


def fields_of(event: Mapping[str, Any]) -> Fields:
    """The columns of an OCSF event: ``metadata.uid`` (required: what makes a retried
    delivery a duplicate), ``time`` and ``class_uid`` (required), and from
    ``unmapped.trustmesh`` (else the OCSF places) the principal, decision, reason and
    trace id, and ``src_endpoint.ip``. :class:`UsageError` names what is wrong.

    Every event the collector takes goes through here: the lookups are written out
    (the first candidate that is there wins; later ones are not looked up)."""
    if type(event) is not dict:
        raise UsageError("an event must be a JSON object")
    metadata = event.get("metadata")
    metadata = metadata if type(metadata) is dict else _EMPTY
    uid = metadata.get("uid")
    if type(uid) is not str or not _UID.fullmatch(uid):
        raise UsageError("metadata.uid must be 1 to 64 letters, digits or ._:-")
    unmapped = event.get("unmapped")
    tm = unmapped.get("trustmesh") if type(unmapped) is dict else None
    tm = tm if type(tm) is dict else _EMPTY
    principal = tm.get("sub")
    if principal is None:
        actor = event.get("actor")
        actor = actor if type(actor) is dict else _EMPTY
        user = actor.get("user")
        principal = user.get("uid") if type(user) is dict else None
        if principal is None:
            principal = tm.get("spiffe_id")
            if principal is None:
                principal = actor.get("app_uid")
    src = event.get("src_endpoint")
    src_ip = src.get("ip") if type(src) is dict else None
    trace_id = tm.get("trace_id")
    if trace_id is None:
        trace_id = metadata.get("correlation_uid")
    decision, reason = tm.get("decision"), tm.get("reason")
    time, class_uid = event.get("time"), event.get("class_uid")
    # the checks of _integer and _text inline, in the order of the columns (the first
    # wrong one is named): no call per column
    if type(time) is not int or not 0 <= time < _TIME_LIMIT:
        _integer("time", time, _TIME_LIMIT)
    if type(class_uid) is not int or not 0 <= class_uid < _CLASS_LIMIT:
        _integer("class_uid", class_uid, _CLASS_LIMIT)
    if principal is not None and (
        type(principal) is not str or not principal or len(principal) > _PRINCIPAL_LIMIT
    ):
        _text("principal", principal)
    if src_ip is not None and (
        type(src_ip) is not str or not src_ip or len(src_ip) > _SRC_IP_LIMIT
    ):
        _text("src_ip", src_ip)
    if decision is not None and (
        type(decision) is not str or not decision or len(decision) > _DECISION_LIMIT
    ):
        _text("decision", decision)
    if reason is not None and (
        type(reason) is not str or not reason or len(reason) > _REASON_LIMIT
    ):
        _text("reason", reason)
    if trace_id is not None and (
        type(trace_id) is not str or not trace_id or len(trace_id) > _TRACE_LIMIT
    ):
        _text("trace_id", trace_id)
    return _new_fields(
        Fields, (uid, time, class_uid, principal, src_ip, decision, reason, trace_id)
    )


_TIME_LIMIT, _CLASS_LIMIT = 2**63, 2**31
_PRINCIPAL_LIMIT, _SRC_IP_LIMIT = LIMITS["principal"], LIMITS["src_ip"]
_DECISION_LIMIT, _REASON_LIMIT, _TRACE_LIMIT = (
    LIMITS["decision"],
    LIMITS["reason"],
    LIMITS["trace_id"],
)
_new_fields = tuple.__new__  # a named tuple from its values, without its __new__'s frame
_EMPTY: Mapping[str, Any] = MappingProxyType({})


# --- checkpoints -----------------------------------------------------------------------


class _Signed:
    """What a signed statement of the log (a checkpoint, a prune checkpoint) does with
    its fields: ``signing_bytes`` (its own domain prefix, then the canonical JSON of
    every field but the signature) is what the audit key signs."""

    time: int
    key_id: str
    signature: bytes

    def signed_fields(self) -> dict[str, object]:
        raise NotImplementedError

    def signing_bytes(self) -> bytes:
        raise NotImplementedError

    @property
    def digest(self) -> bytes:
        """What the next checkpoint names as ``previous``."""
        return hashlib.sha256(self.signing_bytes()).digest()

    @property
    def when(self) -> datetime:
        return _EPOCH + timedelta(milliseconds=self.time)

    def verifies(self, keys: Mapping[str, bytes]) -> bool:
        """Whether it is signed by one of ``keys`` (key id → raw Ed25519 public key)."""
        public = keys.get(self.key_id)
        return public is not None and crypto.verify_detached(
            public, self.signing_bytes(), self.signature
        )

    def to_line(self) -> bytes:
        """One JSON line (with its newline): the checkpoint file, the database, a webhook."""
        fields = self.signed_fields() | {"signature": self.signature.hex()}
        return canonical(fields) + b"\n"


@dataclass(frozen=True)
class Checkpoint(_Signed):
    """A signed statement of the chain's head: records 1..``last_seq`` (``count`` of
    them) end with ``last_hash``; made at ``time`` (ms) after the checkpoint whose
    digest is ``previous`` (GENESIS for the first), signed by the key ``key_id``."""

    last_seq: int
    last_hash: bytes
    count: int
    time: int
    previous: bytes
    key_id: str
    signature: bytes

    def signed_fields(self) -> dict[str, object]:
        return {
            "v": 1,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash.hex(),
            "count": self.count,
            "time": self.time,
            "previous": self.previous.hex(),
            "key_id": self.key_id,
        }

    def signing_bytes(self) -> bytes:
        """What the signature covers: a domain prefix, then the canonical JSON of every
        field but the signature."""
        return _CHECKPOINT + canonical(self.signed_fields())

    @classmethod
    def from_line(cls, line: bytes) -> Checkpoint:
        """Parse :meth:`to_line`'s output; :class:`StateError` for anything else."""
        if len(line) > _MAX_LINE:
            raise StateError(f"a checkpoint line is at most {_MAX_LINE} bytes")
        try:
            data = json.loads(line, object_pairs_hook=_unique, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise StateError("a checkpoint line is not JSON") from None
        if type(data) is not dict or set(data) != _LINE_FIELDS or data["v"] != 1:
            raise StateError("a checkpoint line must hold exactly the fields of version 1")
        numbers = [data[name] for name in ("last_seq", "count", "time")]
        if any(type(n) is not int or not 0 <= n < 2**63 for n in numbers):
            raise StateError("a checkpoint's seq, count and time are non-negative integers")
        texts = (data["last_hash"], data["previous"], data["signature"], data["key_id"])
        if not all(type(t) is str for t in texts):
            raise StateError("a checkpoint's hashes, signature and key id are strings")
        if not (
            _HEX_HASH.fullmatch(data["last_hash"])
            and _HEX_HASH.fullmatch(data["previous"])
            and _HEX_SIGNATURE.fullmatch(data["signature"])
            and _KEY_ID.fullmatch(data["key_id"])
        ):
            raise StateError("a checkpoint's hashes, signature or key id are malformed")
        return cls(
            last_seq=data["last_seq"],
            last_hash=bytes.fromhex(data["last_hash"]),
            count=data["count"],
            time=data["time"],
            previous=bytes.fromhex(data["previous"]),
            key_id=data["key_id"],
            signature=bytes.fromhex(data["signature"]),
        )


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def make_checkpoint(
    previous: Checkpoint | None,
    *,
    last_seq: int,
    last_hash: bytes,
    now: datetime,
    key: crypto.SigningKey,
) -> Checkpoint:
    """Sign the head (``last_seq``, ``last_hash``) after ``previous``."""
    if previous is not None and last_seq <= previous.last_seq:
        raise UsageError(f"nothing to sign after seq {previous.last_seq}")
    unsigned = Checkpoint(
        last_seq=last_seq,
        last_hash=last_hash,
        count=last_seq,  # seqs are 1, 2, 3…: the head's seq counts the records
        time=ms(now),
        previous=GENESIS if previous is None else previous.digest,
        key_id=crypto.signing_key_id(crypto.signing_public_key(key)),
        signature=b"",
    )
    return dataclasses.replace(
        unsigned, signature=crypto.sign_detached(key, unsigned.signing_bytes())
    )


@dataclass(frozen=True)
class CheckpointPolicy:
    """Sign the head every ``records`` new records, or ``seconds`` after the last
    checkpoint when anything is unsigned."""

    records: int = 1000
    seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.records < 1 or not (math.isfinite(self.seconds) and self.seconds > 0):
            raise UsageError("a checkpoint policy needs records >= 1 and seconds > 0")


def checkpoint_due(
    policy: CheckpointPolicy, *, head_seq: int, last: Checkpoint | None, now: datetime
) -> bool:
    """Whether to sign the head (``head_seq``) now, after the newest checkpoint ``last``
    (None: there is none yet, and any record is due)."""
    signed = 0 if last is None else last.last_seq
    if head_seq <= signed:
        return False
    if last is None or head_seq - signed >= policy.records:
        return True
    return ms(now) - last.time >= policy.seconds * 1000


# --- prune checkpoints -----------------------------------------------------------------


@dataclass(frozen=True)
class PruneCheckpoint(_Signed):
    """A signed statement that records were removed on purpose: the seqs of ``runs``
    (first seq, how many: consecutive seqs), ``hashes`` the link hash of each of them in
    seq order (32 bytes each: what the record after a removed one links to), removed
    under the retention ``rule`` (as the configuration said it) when records 1..``covered``
    were signed by a :class:`Checkpoint`, at ``time`` (ms), signed by the key ``key_id``."""

    runs: tuple[tuple[int, int], ...]
    hashes: bytes
    rule: str
    covered: int
    time: int
    key_id: str
    signature: bytes

    @property
    def first_seq(self) -> int:
        return self.runs[0][0]

    @property
    def last_seq(self) -> int:
        first, count = self.runs[-1]
        return first + count - 1

    @property
    def count(self) -> int:
        return sum(count for _, count in self.runs)

    def removed(self) -> list[tuple[int, bytes]]:
        """Each removed seq with its link hash, in seq order."""
        seqs = [first + i for first, count in self.runs for i in range(count)]
        return [(seq, self.hashes[32 * i : 32 * i + 32]) for i, seq in enumerate(seqs)]

    def signed_fields(self) -> dict[str, object]:
        return {
            "v": 1,
            "kind": "prune",
            "runs": [list(run) for run in self.runs],
            "hashes": self.hashes.hex(),
            "rule": self.rule,
            "covered": self.covered,
            "time": self.time,
            "key_id": self.key_id,
        }

    def signing_bytes(self) -> bytes:
        """What the signature covers: a domain prefix of its own (a prune checkpoint's
        signature can never pass for a checkpoint's), then the canonical JSON of every
        field but the signature."""
        return _PRUNE + canonical(self.signed_fields())

    @classmethod
    def from_line(cls, line: bytes) -> PruneCheckpoint:
        """Parse :meth:`to_line`'s output; :class:`StateError` for anything else (runs
        out of order or overlapping, a hash count that is not the runs' total…)."""
        if len(line) > MAX_PRUNE_LINE:
            raise StateError(f"a prune checkpoint line is at most {MAX_PRUNE_LINE} bytes")
        try:
            data = json.loads(line, object_pairs_hook=_unique, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise StateError("a prune checkpoint line is not JSON") from None
        if (
            type(data) is not dict
            or set(data) != _PRUNE_FIELDS
            or data["v"] != 1
            or data["kind"] != "prune"
        ):
            raise StateError("a prune checkpoint line must hold exactly the fields of version 1")
        if any(type(data[n]) is not int or not 0 <= data[n] < 2**63 for n in ("covered", "time")):
            raise StateError("a prune checkpoint's covered seq and time are non-negative integers")
        runs = _runs(data["runs"])
        texts = (data["hashes"], data["rule"], data["key_id"], data["signature"])
        if not all(type(t) is str for t in texts) or not (
            _RULE.fullmatch(data["rule"])
            and _KEY_ID.fullmatch(data["key_id"])
            and _HEX_SIGNATURE.fullmatch(data["signature"])
            and re.fullmatch(r"(?:[0-9a-f]{64})+", data["hashes"])
        ):
            raise StateError("a prune checkpoint's hashes, rule, key id or signature are malformed")
        if len(data["hashes"]) != 64 * sum(count for _, count in runs):
            raise StateError("a prune checkpoint names one hash for each seq of its runs")
        return cls(
            runs=runs,
            hashes=bytes.fromhex(data["hashes"]),
            rule=data["rule"],
            covered=data["covered"],
            time=data["time"],
            key_id=data["key_id"],
            signature=bytes.fromhex(data["signature"]),
        )


def _runs(value: object) -> tuple[tuple[int, int], ...]:
    """The runs of a prune checkpoint line: ascending, apart, at most PRUNE_CHUNK seqs."""
    if type(value) is not list or not value:
        raise StateError("a prune checkpoint's runs are a non-empty list")
    out: list[tuple[int, int]] = []
    end = 0  # the seq after the last run
    for run in value:
        if (
            type(run) is not list
            or len(run) != 2
            or not all(type(n) is int for n in run)
            or not (end < run[0] < 2**62 and 1 <= run[1] <= PRUNE_CHUNK)
        ):
            raise StateError("a prune checkpoint's runs are [first seq, count], ascending, apart")
        out.append((run[0], run[1]))
        end = run[0] + run[1]
    if sum(count for _, count in out) > PRUNE_CHUNK:
        raise StateError(f"a prune checkpoint names at most {PRUNE_CHUNK} records")
    return tuple(out)


def make_prune_checkpoint(
    removed: Sequence[tuple[int, bytes]],
    *,
    rule: str,
    covered: int,
    now: datetime,
    key: crypto.SigningKey,
) -> PruneCheckpoint:
    """Sign the removal of ``removed`` (seq, link hash; ascending seqs, at most
    :data:`PRUNE_CHUNK`, none after ``covered``) under ``rule``."""
    seqs = [seq for seq, _ in removed]
    if not removed or len(removed) > PRUNE_CHUNK:
        raise UsageError(f"a prune checkpoint names 1 to {PRUNE_CHUNK} records")
    if seqs != sorted(set(seqs)) or seqs[0] < 1 or seqs[-1] > covered:
        raise UsageError("removed seqs must ascend, each once, within the signed records")
    if any(len(hash_) != 32 for _, hash_ in removed) or not _RULE.fullmatch(rule):
        raise UsageError("a removed record's hash is 32 bytes; a rule is printable ASCII")
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and runs[-1][0] + runs[-1][1] == seq:
            runs[-1][1] += 1
        else:
            runs.append([seq, 1])
    unsigned = PruneCheckpoint(
        runs=tuple((first, count) for first, count in runs),
        hashes=b"".join(hash_ for _, hash_ in removed),
        rule=rule,
        covered=covered,
        time=ms(now),
        key_id=crypto.signing_key_id(crypto.signing_public_key(key)),
        signature=b"",
    )
    return dataclasses.replace(
        unsigned, signature=crypto.sign_detached(key, unsigned.signing_bytes())
    )


def checkpoint_from_line(line: bytes) -> Checkpoint | PruneCheckpoint:
    """A line of the checkpoint file, of either kind; :class:`StateError` for anything
    else. Only a prune checkpoint has the field ``kind`` (a checkpoint line with one is
    refused by the prune parser, as it would be by its own)."""
    if b'"kind"' in line:
        return PruneCheckpoint.from_line(line)
    return Checkpoint.from_line(line)
