"""The collector's ingest path, below the HTTP API: a delivery parsed by the fast parser
reads exactly as the standard parser reads it (a long number, NaN, a lone surrogate,
UTF-16, deep nesting fall back to it); the collector's writers on one SQLite file queue
in the event loop instead of in SQLite's sleeping busy handler."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from auditkit import at, login_failed
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from trustmesh import crypto
from trustmesh.audit._writer import sqlite_writer
from trustmesh.audit.app import _batch
from trustmesh.audit.chain import CheckpointPolicy
from trustmesh.audit.detection import Detector
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.service import AuditService
from trustmesh.errors import UsageError
from trustmesh.store import create_engine, sqlite_url


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


BODIES = [
    b'{"events":[{"a":18446744073709551616}]}',  # 2**64: past orjson's integers
    b'{"events":[{"a":-9223372036854775809}]}',  # -2**63 - 1
    b'{"events":[{"a": 123456789012345678901234567890}]}',
    b'{"events":[{"a":[1,\n99999999999999999999]}]}',
    b'{"events":[{"a":18446744073709551615,"b":-9223372036854775808}]}',  # the limits
    b'{"events":[{"a":"x:12345678901234567890","b":1.5e300,"c":-0,"d":-0.0}]}',
    b'{"events":[{"a":NaN,"b":Infinity}]}',
    b'{"events":[{"a":1e400}]}',
    b'{"events":[{"a":"\\ud800"}]}',
    b'{"events":[{"a":1,"a":2}]}',
    b'{"events":[{"a":"\\u00e9\\u2028"}]}',
    '{"events":[{"a":"é"}]}'.encode("utf-16"),
    b'{"events":' + b"[" * 2000 + b"]" * 2000 + b"}",
]


@pytest.mark.parametrize("raw", BODIES)
def test_a_delivery_reads_as_the_standard_parser_reads_it(raw: bytes) -> None:
    try:
        expected = json.loads(raw)["events"]
    except RecursionError:
        with pytest.raises(UsageError):
            _batch(raw)
        return
    assert _same(_batch(raw), expected)


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.dictionaries(st.text(max_size=8), _VALUES, max_size=5), max_size=4),
    st.booleans(),
    st.booleans(),
)
def test_any_delivery_reads_as_the_standard_parser_reads_it(
    events_: list[dict[str, Any]], ascii_only: bool, spaced: bool
) -> None:
    separators = (", ", ": ") if spaced else (",", ":")
    text = json.dumps({"events": events_}, ensure_ascii=ascii_only, separators=separators)
    raw = text.encode("utf-8", "surrogatepass")
    try:
        expected = json.loads(raw)["events"]
    except ValueError:  # a lone surrogate written raw: not UTF-8
        with pytest.raises(UsageError):
            _batch(raw)
        return
    assert _same(_batch(raw), expected)


def test_what_is_not_a_delivery_is_refused() -> None:
    for raw in (b"{not json", b"[]", b'{"events":{}}', b'{"events":[],"x":1}', b"\xff"):
        with pytest.raises(UsageError):
            _batch(raw)


def test_realistic_events_read_as_the_standard_parser_reads_them() -> None:
    batch = [login_failed(f"user{i}", i) for i in range(50)]
    raw = json.dumps({"events": batch}, separators=(",", ":")).encode()
    assert _same(_batch(raw), json.loads(raw)["events"])


async def test_writers_on_one_file_queue_in_the_event_loop(tmp_path: Path) -> None:
    """Two engines on one file share the queue; a second writer waits for the first."""
    first = create_engine(sqlite_url(tmp_path / "a.db"))
    second = create_engine(sqlite_url(tmp_path / "a.db"))
    other = create_engine(sqlite_url(tmp_path / "b.db"))
    order: list[str] = []
    try:
        async with sqlite_writer(first):
            waiting = asyncio.create_task(_write(second, order, "second"))
            elsewhere = asyncio.create_task(_write(other, order, "other"))
            await asyncio.sleep(0.05)
            assert order == ["other"]  # another file does not wait
            order.append("first")
        await waiting
        await elsewhere
        assert order == ["other", "first", "second"]
    finally:
        for engine in (first, second, other):
            await engine.dispose()


async def _write(engine: Any, order: list[str], name: str) -> None:
    async with sqlite_writer(engine):
        order.append(name)


async def test_concurrent_deliveries_checkpoints_and_quarantines_never_wait_in_sqlite(
    tmp_path: Path,
) -> None:
    """Appends, checkpoints and quarantines at once on one file, every connection with
    no busy timeout (a writer that met another in SQLite would fail at once): each is
    stored, and the chain verifies."""
    engine = create_engine(sqlite_url(tmp_path / "audit.db"))

    @event.listens_for(engine.sync_engine, "connect")
    def _no_waiting(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 0")

    ledger = Ledger(engine)
    await ledger.create()
    key = crypto.generate_signing_key()
    now = datetime.now(UTC)
    try:

        async def deliver(n: int) -> None:
            batch = [login_failed(f"user{n}-{i}", n * 100 + i) for i in range(20)]
            await ledger.append(batch, now=now)
            await ledger.checkpoint(key, now=now)
            await ledger.quarantine(b"{not json", "the delivery is not JSON", now=now)

        await asyncio.gather(*(deliver(n) for n in range(12)))
        assert (await ledger.head())[0] == 240
        assert len(await ledger.quarantined(limit=100)) == 12
        public = crypto.signing_public_key(key)
        verdict = await ledger.verify({crypto.signing_key_id(public): public})
        assert verdict.finding is None
        assert verdict.covered == 240
    finally:
        await ledger.close()


async def test_a_durable_delivery_is_acknowledged_whatever_fails_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Signing the checkpoint and acting on the alerts come after the batch is durable:
    their failure is logged, the delivery answered (an error would only bring the batch
    back as duplicates), and the next tick signs the checkpoint still due."""
    ledger = Ledger(create_engine(sqlite_url(tmp_path / "audit.db")))
    await ledger.create()

    async def no_alerts(_alerts: list[Any]) -> None:
        raise RuntimeError("a receiver is broken")

    service = AuditService(
        ledger,
        crypto.generate_signing_key(),
        Detector.shipped(),
        CheckpointPolicy(records=1),
        on_alerts=no_alerts,
        clock=lambda: at(120).timestamp(),
    )
    signing = ledger.checkpoint

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the disk is full")

    try:
        ledger.checkpoint = broken  # type: ignore[method-assign]
        burst = [login_failed("alice", i) for i in range(12)]  # the shipped rule fires
        ingested = await service.ingest(burst, "spiffe://trustmesh.local/payments")
        assert ingested.answer() == {"stored": 12, "duplicates": 0, "quarantined": 0}
        assert ingested.alerts
        assert ingested.checkpoint is None
        assert "signing a checkpoint failed" in caplog.text
        assert "could not be acted on" in caplog.text
        ledger.checkpoint = signing  # type: ignore[method-assign]
        made = await service.tick()
        assert made is not None
        assert made.last_seq >= 12
    finally:
        await ledger.close()
