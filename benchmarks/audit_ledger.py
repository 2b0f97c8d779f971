"""The audit ledger's append rate on SQLite, with the hash chain and without (goal: the
chained append at least 0.7x the plain one; the collector as a whole ≥ 20,000 events/s).

Run: ``.venv/bin/python benchmarks/audit_ledger.py [--events 50000] [--batch 500]``

- chained: ``Ledger.append`` — columns and canonical bytes of each event, duplicates
  looked up by uid, the writer lock, the head read, SHA-256 links, one INSERT per batch;
- plain: the same events in the same batches into a table of the same columns and
  indexes (no hash), each event's columns and ordinary JSON, the same executemany per
  batch, one transaction per batch.

Each run uses a fresh database file in a temporary folder. Events are made before the
clock starts. Then the chained log is signed and verified (every link, every record's
columns against its body), to show what ``trustmesh audit verify`` costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Index, MetaData, Table

from trustmesh import crypto
from trustmesh.audit.chain import fields_of
from trustmesh.audit.ledger import LAYOUT, Ledger
from trustmesh.audit.ledger_schema import records
from trustmesh.events import Decision, Endpoint, EventClass, event
from trustmesh.reasons import Reason
from trustmesh.store import create_engine, create_tables, sqlite_url

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def events(count: int) -> list[dict[str, Any]]:
    made = []
    for n in range(count):
        made.append(
            event(
                EventClass.API_ACTIVITY,
                activity_id=2,
                activity_name="Read",
                component="gateway",
                decision=(Decision.ALLOW, Decision.DENY)[n % 2],
                reason=(Reason.OK, Reason.POLICY_DENY)[n % 2],
                message=f"GET /orders/{n}",
                now=T0 + timedelta(milliseconds=n),
                sub=f"user-{n % 100}",
                spiffe_id="spiffe://shop.example/gateway",
                trace_id=f"{n // 4:032x}",
                src=Endpoint(ip=f"10.0.{n % 250}.{n % 200 + 1}", port=40000 + n % 1000),
                attributes={"route": "/orders/{id}", "method": "GET", "status": 200},
            ).to_ocsf()
        )
    return made


def plain_table() -> tuple[MetaData, Table]:
    """The records table without its hash column, under another name."""
    metadata = MetaData()
    columns = [Column(c.name, c.type, **_options(c)) for c in records.c if c.name != "hash"]
    table = Table("plain_records", metadata, *columns)
    for index in records.indexes:
        Index(f"plain_{index.name}", *(table.c[c.name] for c in index.columns))
    return metadata, table


def _options(column: Column[Any]) -> dict[str, Any]:
    return {
        "primary_key": column.primary_key,
        "nullable": column.nullable,
        "unique": column.unique,
        "autoincrement": False,
    }


async def chained(folder: Path, batches: list[list[dict[str, Any]]]) -> float:
    ledger = Ledger(create_engine(sqlite_url(folder / "chained.db")))
    await ledger.create()
    start = time.perf_counter()
    for batch in batches:
        await ledger.append(batch, now=T0)
    elapsed = time.perf_counter() - start
    await ledger.close()
    return elapsed


async def verify(folder: Path) -> tuple[float, int]:
    """Verify the chained database (signed once at its head), page by page."""
    ledger = Ledger(create_engine(sqlite_url(folder / "chained.db")))
    key = crypto.generate_signing_key()
    public = crypto.signing_public_key(key)
    await ledger.checkpoint(key, now=T0)
    start = time.perf_counter()
    verdict = await ledger.verify({crypto.signing_key_id(public): public})
    elapsed = time.perf_counter() - start
    await ledger.close()
    if verdict.finding is not None:
        raise SystemExit(f"the benchmark's own log does not verify: {verdict.finding}")
    return elapsed, verdict.records


async def plain(
    folder: Path, batches: list[list[dict[str, Any]]], held: list[list[dict[str, Any]]] = ()
) -> float:
    """Seconds to insert ``batches`` (and, in :data:`CPU`, this process's CPU seconds for
    it), after ``held`` (untimed: what the table holds already)."""
    engine = create_engine(sqlite_url(folder / "plain.db"), sqlite_layout=LAYOUT)
    metadata, table = plain_table()
    await create_tables(engine, metadata)
    insert = str(table.insert().compile(dialect=engine.dialect))  # as the ledger does
    seq = 0

    async def put(batch: list[dict[str, Any]]) -> None:
        nonlocal seq
        rows = []
        for item in batch:
            seq += 1
            f = fields_of(item)
            body = json.dumps(item, separators=(",", ":")).encode()
            rows.append((seq, *f.values(), body))
        async with engine.begin() as connection:
            await connection.exec_driver_sql(insert, rows)

    for batch in held:
        await put(batch)
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        await put(batch)
    elapsed = time.perf_counter() - start
    CPU["plain"] = time.process_time() - cpu
    await engine.dispose()
    return elapsed


#: The CPU seconds of the last :func:`plain` run.
CPU: dict[str, float] = {}


async def main(count: int, size: int, rounds: int) -> None:
    made = events(count)
    batches = [made[i : i + size] for i in range(0, count, size)]
    print(f"{count} events ({len(json.dumps(made[0]))} bytes each) in batches of {size}")
    best: dict[str, float] = {}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for name, run in (("plain", plain), ("chained", chained)):
                elapsed = await run(Path(tmp), batches)
                best[name] = min(best.get(name, elapsed), elapsed)
            elapsed, checked = await verify(Path(tmp))
            best["verify"] = min(best.get("verify", elapsed), elapsed)
    for name in ("plain", "chained"):
        print(f"{name:>8}: {count / best[name]:>9,.0f} events/s  ({best[name]:.2f} s)")
    print(f"   ratio: {best['plain'] / best['chained']:.2f} (chained / plain rate)")
    print(f"  verify: {checked / best['verify']:>9,.0f} records/s ({best['verify']:.2f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.batch, args.rounds))
