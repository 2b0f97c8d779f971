"""The chain's pure parts: canonical bytes, the link hash, the columns of an event,
checkpoints (signed, chained, one JSON line each) and when to make one."""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledgerrig import T0, ocsf, trusted

from trustmesh import crypto
from trustmesh.audit.chain import (
    GENESIS,
    Checkpoint,
    CheckpointPolicy,
    canonical,
    checkpoint_due,
    fields_of,
    link,
    make_checkpoint,
    ms,
)
from trustmesh.errors import StateError, UsageError

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_canonical_bytes_are_sorted_compact_ascii_and_parse_back(event: dict[str, Any]) -> None:
    body = canonical(event)
    assert body.isascii()
    assert json.loads(body) == event
    assert canonical(dict(reversed(list(event.items())))) == body  # key order is irrelevant
    assert canonical(json.loads(body)) == body


#: A float the standard encoder writes with a two-digit negative exponent (1e-9 to 1e-4),
#: which orjson writes its own way.
_SMALL = re.compile(r"[0-9]e-0[0-9]")


@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_canonical_bytes_are_the_standard_encoders(event: dict[str, Any]) -> None:
    """Whichever encoder wrote them (orjson, its non-ASCII escaped; the standard one where
    a body holds a NaN or what orjson cannot write), they are the standard encoder's
    bytes — but for a float from 1e-9 to 1e-4 (the next test)."""
    standard = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if not _SMALL.search(standard):
        assert canonical(event) == standard.encode()


def test_canonical_bytes_of_an_event() -> None:
    assert canonical({"b": [1, "é"], "a": {"z": None, "y": True}}) == (
        b'{"a":{"y":true,"z":null},"b":[1,"\\u00e9"]}'
    )
    # DEL is ASCII, which orjson writes as it is; the standard encoder escapes it
    assert canonical({"\x7f": None, "a": "x\x7fy"}) == b'{"a":"x\\u007fy","\\u007f":null}'


@pytest.mark.parametrize(
    "value",
    [
        {"x": math.nan},
        {"x": math.inf},
        {"x": None, "y": [1, {"z": -math.inf}]},  # a null of its own beside it
        {"x": None, "y": (2, math.nan)},
        {"x": b"bytes"},
        {"x": {1, 2}},
        {"x": {1: "int key", "1": "the same key as JSON writes it"}},
        {"x": [{"ok": 1}, {None: "null key", "null": 2}]},
        ["not", "an", "object"],
    ],
)
def test_what_json_cannot_hold_is_refused(value: Any) -> None:
    with pytest.raises(UsageError, match="not a JSON object"):
        canonical(value)


def test_a_cycle_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(UsageError):
        canonical(loop)


def test_the_link_is_domain_separated_sha256_over_the_previous_hash_and_the_body() -> None:
    body = canonical(ocsf(1))
    assert hashlib.sha256(b"trustmesh/audit/genesis/v1").digest() == GENESIS
    expected = hashlib.sha256(b"trustmesh/audit/record/v1\x00" + GENESIS + body).digest()
    assert link(GENESIS, body) == expected
    assert link(GENESIS, body) != hashlib.sha256(GENESIS + body).digest()
    assert link(link(GENESIS, body), body) != link(GENESIS, body)


def test_the_columns_of_an_event() -> None:
    event = ocsf(3, sub="alice", trace_id="ab" * 16)
    fields = fields_of(event)
    assert fields.uid == event["metadata"]["uid"]
    assert fields.time == ms(T0 + timedelta(seconds=3))
    assert fields.class_uid == 6003
    assert fields.principal == "alice"
    assert fields.src_ip == "10.0.3.4"
    assert (fields.decision, fields.reason) == ("deny", "policy-deny")
    assert fields.trace_id == "ab" * 16
    # without a user, the principal is the workload
    assert fields_of(ocsf(2, sub=None)).principal == "spiffe://shop.example/gateway"
    # the OCSF places serve an event from elsewhere
    foreign = {
        "metadata": {"uid": "x-1", "correlation_uid": "t1"},
        "time": 5,
        "class_uid": 3002,
        "actor": {"user": {"uid": "carol"}},
    }
    fields = fields_of(foreign)
    assert (fields.principal, fields.trace_id, fields.decision) == ("carol", "t1", None)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda e: e["metadata"].pop("uid"), "metadata.uid"),
        (lambda e: e["metadata"].update(uid="has space"), "metadata.uid"),
        (lambda e: e["metadata"].update(uid="u" * 65), "metadata.uid"),
        (lambda e: e.pop("time"), "time"),
        (lambda e: e.update(time="2030-01-01"), "time"),
        (lambda e: e.update(time=True), "time"),
        (lambda e: e.update(time=-1), "time"),
        (lambda e: e.update(class_uid=None), "class_uid"),
        (lambda e: e["unmapped"]["trustmesh"].update(decision=1), "decision"),
        (lambda e: e["unmapped"]["trustmesh"].update(reason="r" * 129), "reason"),
        (lambda e: e["unmapped"]["trustmesh"].update(trace_id=""), "trace_id"),
        (lambda e: e["src_endpoint"].update(ip=["10.0.0.1"]), "src_ip"),
    ],
)
def test_an_event_without_its_columns_is_refused(change: Any, problem: str) -> None:
    event = ocsf(1)
    change(event)
    with pytest.raises(UsageError, match=problem):
        fields_of(event)


def test_a_checkpoint_is_signed_chained_and_one_json_line() -> None:
    key = crypto.generate_signing_key()
    first = make_checkpoint(None, last_seq=10, last_hash=b"\x01" * 32, now=T0, key=key)
    second = make_checkpoint(first, last_seq=25, last_hash=b"\x02" * 32, now=T0, key=key)
    assert (first.count, first.previous, second.previous) == (10, GENESIS, first.digest)
    assert first.time == ms(T0)
    assert first.when == T0
    assert first.verifies(trusted(key))
    assert not first.verifies(trusted(crypto.generate_signing_key()))
    line = second.to_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert Checkpoint.from_line(line) == second
    forged = Checkpoint.from_line(line.replace(b'"count":25', b'"count":24'))
    assert not forged.verifies(trusted(key))
    with pytest.raises(UsageError, match="nothing to sign"):
        make_checkpoint(second, last_seq=25, last_hash=b"\x02" * 32, now=T0, key=key)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'{"v":1}',
        b"x" * 5000,
        b"NaN",
    ],
)
def test_a_line_that_is_not_a_checkpoint_is_refused(line: bytes) -> None:
    with pytest.raises(StateError):
        Checkpoint.from_line(line)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"count":3', b'"count":-3'),
        (b'"count":3', b'"count":3.0'),
        (b'"count":3', b'"count":"3"'),
        (b'"v":1', b'"v":2'),
        (b'"key_id":"', b'"key_id":"!'),
        (b'"last_seq":3', b'"last_seq":3,"last_seq":3'),
        (b'"time":', b'"extra":1,"time":'),
    ],
)
def test_a_malformed_checkpoint_line_is_refused(old: bytes, new: bytes) -> None:
    key = crypto.generate_signing_key()
    line = make_checkpoint(None, last_seq=3, last_hash=b"\x03" * 32, now=T0, key=key).to_line()
    assert old in line
    with pytest.raises(StateError):
        Checkpoint.from_line(line.replace(old, new, 1))


def test_short_hashes_or_signatures_are_refused() -> None:
    key = crypto.generate_signing_key()
    line = make_checkpoint(None, last_seq=3, last_hash=b"\x03" * 32, now=T0, key=key).to_line()
    data = json.loads(line)
    for name in ("last_hash", "previous", "signature"):
        broken = dict(data, **{name: data[name][:-2]})
        with pytest.raises(StateError, match="malformed"):
            Checkpoint.from_line(json.dumps(broken).encode())


def test_a_checkpoint_is_due_every_n_records_or_t_seconds() -> None:
    key = crypto.generate_signing_key()
    policy = CheckpointPolicy(records=100, seconds=10)
    assert not checkpoint_due(policy, head_seq=0, last=None, now=T0)
    assert checkpoint_due(policy, head_seq=1, last=None, now=T0)
    last = make_checkpoint(None, last_seq=50, last_hash=GENESIS, now=T0, key=key)
    assert not checkpoint_due(policy, head_seq=50, last=last, now=T0 + timedelta(hours=1))
    assert not checkpoint_due(policy, head_seq=149, last=last, now=T0 + timedelta(seconds=9.999))
    assert checkpoint_due(policy, head_seq=150, last=last, now=T0)
    assert checkpoint_due(policy, head_seq=51, last=last, now=T0 + timedelta(seconds=10))
    for bad in ({"records": 0}, {"seconds": 0}, {"seconds": math.inf}):
        with pytest.raises(UsageError):
            CheckpointPolicy(**bad)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (5.960464477539063e-08, b"5.960464477539063e-8"),
        (-9.265066237858661e-05, b"-0.00009265066237858661"),
        (1e-05, b"0.00001"),
        (1.5e-07, b"1.5e-7"),
    ],
)
def test_a_small_float_is_written_one_way_whatever_else_the_event_holds(
    value: float, written: bytes
) -> None:
    """orjson writes floats from 1e-9 to 1e-4 its own way (as every record stored so far
    has them); an event with non-ASCII text writes them the same way (its text escaped
    after orjson, not by the standard encoder), and the bytes parse back to the float."""
    plain = canonical({"a": value})
    wide = canonical({"a": value, "b": "é\x7f😀"})
    assert plain == b'{"a":' + written + b"}"
    assert wide == b'{"a":' + written + b',"b":"\\u00e9\\u007f\\ud83d\\ude00"}'
    assert json.loads(wide)["a"] == value
    assert canonical(json.loads(wide)) == wide
