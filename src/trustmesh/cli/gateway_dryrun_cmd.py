"""``trustmesh gateway dry-run report``: what the controls a route runs dry (``modes``, or
a ``waf`` that only logs) would have refused, read from the gateway's event log
(``<state>/events/gateway.jsonl``, or ``--events FILE``).

Per control, route and reason: how many requests, the first and the last, and a sample
of them (time, method, path, client, trace id and what the control found: the rule and
where, the injection's category) — enough to decide whether to enforce the control.
Nothing of a request's body or credentials is in an event, so nothing of it is here.
A Rich table, or ``--json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trustmesh import events
from trustmesh.cli._common import DEFAULT_STATE, JsonOption, StateOption, fail, out, seconds_option
from trustmesh.errors import StateError

app = typer.Typer(help="Controls running dry: what they would have refused.", no_args_is_help=True)

#: What a sample shows of an event's attributes (the gateway writes these; never a value
#: of the request's own beyond its path).
_SHOWN = ("method", "path", "client", "template", "violation", "category", "location", "check")


@dataclass
class _Group:
    control: str
    route: str
    reason: str
    count: int = 0
    first: int = 0
    last: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: dict[str, Any], limit: int) -> None:
        when = int(event.get("time", 0))
        self.count += 1
        self.first = min(self.first or when, when)
        self.last = max(self.last, when)
        if len(self.samples) < limit:
            mine = event.get("unmapped", {}).get("trustmesh", {})
            attributes = mine.get("attributes", {})
            sample = {k: attributes[k] for k in _SHOWN if k in attributes}
            sample["time"] = _iso(when)
            if mine.get("trace_id"):
                sample["trace_id"] = mine["trace_id"]
            self.samples.append(sample)

    def to_dict(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "route": self.route,
            "reason": self.reason,
            "count": self.count,
            "first": _iso(self.first),
            "last": _iso(self.last),
            "samples": self.samples,
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def summarise(log: Path, *, since_ms: int | None, samples: int) -> list[_Group]:
    """The would-deny events of ``log`` (at or after ``since_ms``), grouped by control,
    route and reason, the largest group first."""
    groups: dict[tuple[str, str, str], _Group] = {}
    for event in events.read_events(log):
        mine = event.get("unmapped", {}).get("trustmesh", {})
        if mine.get("decision") != events.Decision.WOULD_DENY.value:
            continue
        if since_ms is not None and int(event.get("time", 0)) < since_ms:
            continue
        attributes = mine.get("attributes", {})
        key = (
            str(attributes.get("control", "?")),
            str(attributes.get("route_name") or attributes.get("route", "?")),
            str(mine.get("reason", "?")),
        )
        groups.setdefault(key, _Group(*key)).add(event, samples)
    return sorted(groups.values(), key=lambda g: (-g.count, g.control, g.route))


@app.command("report")
def report(
    state: StateOption = DEFAULT_STATE,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only the last DURATION (30m, 24h, 7d)."),
    ] = None,
    events_file: Annotated[
        Path | None,
        typer.Option(
            "--events", help="The gateway's event log (default: under --state).", dir_okay=False
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", min=0, max=100, help="Requests shown per group.")
    ] = 3,
    as_json: JsonOption = False,
) -> None:
    """Per control and route: what running dry would have refused, with samples."""
    log = events_file or state / "events" / "gateway.jsonl"
    window = seconds_option("--since", since)
    since_ms = None if window is None else int((time.time() - window) * 1000)
    if not log.is_file():
        fail(f"no gateway event log at {log} (is the gateway running under this --state?)")
    try:
        groups = summarise(log, since_ms=since_ms, samples=samples)
    except StateError as exc:
        fail(exc.detail)
    if as_json:
        doc = {
            "log": str(log),
            "since": None if since_ms is None else _iso(since_ms),
            "groups": [g.to_dict() for g in groups],
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    if not groups:
        out.print("no control running dry would have refused a request", markup=False)
        return
    table = Table(title="would have been refused (dry run)")
    for column in ("control", "route", "reason", "requests", "last", "sample"):
        table.add_column(column, overflow="fold")
    for g in groups:
        first = g.samples[0] if g.samples else {}
        shown = " ".join(
            str(first[k])
            for k in ("method", "path", "violation", "category", "location")
            if k in first
        )
        table.add_row(g.control, g.route, g.reason, str(g.count), _iso(g.last), shown)
    out.print(table)
