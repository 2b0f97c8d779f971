"""``trustmesh audit trace TRACE_ID``: every hop of one request, from the collector.

The spans of the trace (each component's server span, each client span of a call a
service made, the on-behalf-of exchange among them) drawn as a tree, each with its
start after the trace's first span, its duration, its decision and reason code, and
its answer; then the decisions the audit log holds for the trace (those are kept
whatever the sampling: a hop whose span was not kept is still there). A span whose
parent the collector does not hold (not kept, or not reported) is drawn at the top,
saying so.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from trustmesh.audit.trace_tree import in_tree_order, nanoseconds
from trustmesh.cli._common import DEFAULT_STATE, ConfigOption, JsonOption, StateOption, err, out
from trustmesh.cli.audit_cmd import _call, _trustmesh, app

__all__ = ["trace_command", "trace_view"]

_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")
_STYLE: Final = {"allow": "green", "deny": "bold red", "error": "bold yellow"}


@app.command("trace")
def trace_command(
    trace_id: Annotated[str, typer.Argument(help="The trace id: 32 hex digits.")],
    wait: Annotated[
        float,
        typer.Option(
            min=0.0, max=60.0, help="Wait up to this many seconds for the trace to appear."
        ),
    ] = 0.0,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show every hop of one request: its spans as a tree with timings, decisions and
    reasons, and the trace's decisions in the audit log. Exit 1 when the collector holds
    nothing of it."""
    wanted = trace_id.strip().lower()
    if not _TRACE_ID.fullmatch(wanted) or wanted == "0" * 32:
        err.print(f"not a trace id (32 hex digits, not all zero): {trace_id!r}", markup=False)
        raise typer.Exit(2)
    doc = _fetch(state, config, wanted, wait)
    if as_json:
        print(json.dumps(doc))
    if not doc.get("spans") and not doc.get("events"):
        err.print(f"the audit collector holds nothing of trace {wanted}", markup=False)
        raise typer.Exit(1)
    if not as_json:
        out.print(trace_view(doc))


def _fetch(state: Path, config: Path | None, trace_id: str, wait: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        doc: dict[str, Any] = _call(state, config, "GET", f"/v1/traces/{trace_id}")
        if doc.get("spans") or time.monotonic() >= deadline:
            return doc
        time.sleep(0.2)


def trace_view(doc: Mapping[str, Any]) -> Group:
    """The trace as a Rich renderable: the span tree, then the audit log's decisions."""
    spans: Sequence[Mapping[str, Any]] = doc.get("spans") or []
    parts: list[Any] = []
    if spans:
        parts.append(_tree(str(doc.get("trace_id", "")), spans))
    else:
        parts.append(Text(f"trace {doc.get('trace_id', '')}: no span kept", style="dim"))
    recorded: Sequence[dict[str, Any]] = doc.get("events") or []
    if recorded:
        parts.append(_decisions(recorded))
    if doc.get("truncated"):
        parts.append(Text("(more spans than shown: the trace was cut)", style="yellow"))
    return Group(*parts)


def _tree(trace_id: str, spans: Sequence[Mapping[str, Any]]) -> Tree:
    """The spans as a tree (:func:`~trustmesh.audit.trace_tree.in_tree_order`)."""
    first = min(nanoseconds(s.get("start_ns")) for s in spans)
    last = max(nanoseconds(s.get("end_ns")) for s in spans)
    root = Tree(Text(f"trace {_printable(trace_id)}  {_ms(last - first)}", style="bold"))
    path: list[Tree] = [root]  # path[d]: where a span of depth d is added
    for placed in in_tree_order(spans):
        del path[placed.depth + 1 :]
        path.append(path[placed.depth].add(_label(placed.span, first, placed.orphan)))
    return root


def _printable(value: object) -> str:
    """``value`` as text with every character a terminal could act on (ESC and the
    other controls) replaced: any workload may report what a span says."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _label(span: Mapping[str, Any], first: int, orphan: bool) -> Text:
    attributes: Mapping[str, Any] = span.get("attributes") or {}
    start, end = nanoseconds(span.get("start_ns")), nanoseconds(span.get("end_ns"))
    label = Text()
    label.append(f"{_printable(span.get('service', '?'))} ", style="bold cyan")
    label.append(f"{_printable(span.get('kind', ''))} {_printable(span.get('name', ''))}")
    label.append(f"  +{_ms(start - first)} {_ms(end - start)}", style="dim")
    decision = attributes.get("trustmesh.decision")
    if decision is not None:
        label.append(f"  {_printable(decision)}", style=_STYLE.get(str(decision), ""))
        label.append(f" {_printable(attributes.get('trustmesh.reason', ''))}")
    status = attributes.get("http.response.status_code")
    if type(status) is int:
        label.append(f"  [{status}]", style="red" if status >= 400 else "")
    if span.get("status") == "error":
        label.append(
            f"  failed: {_printable(span.get('status_message') or '')}", style="bold yellow"
        )
    reporter = span.get("reporter")
    if reporter:
        label.append(f"  {_printable(reporter)}", style="dim")
    if orphan:
        label.append("  (its parent span is not recorded)", style="dim italic")
    return label


def _decisions(recorded: Sequence[dict[str, Any]]) -> Table:
    table = Table("time", "component", "decision", "reason", "who", "message", title="decisions")
    for event in sorted(recorded, key=lambda e: int(e.get("time", 0))):
        mine = _trustmesh(event)
        product = (event.get("metadata") or {}).get("product") or {}
        millis = int(event.get("time", 0))
        when = time.strftime("%H:%M:%S", time.gmtime(millis / 1000)) + f".{millis % 1000:03d}"
        decision = str(mine.get("decision", ""))
        who = mine.get("sub") or mine.get("peer_spiffe_id") or mine.get("spiffe_id") or ""
        table.add_row(  # Text, never markup: every field came from a component's event
            Text(when),
            Text(_printable((product.get("feature") or {}).get("name", ""))),
            Text(_printable(decision), style=_STYLE.get(decision, "")),
            Text(_printable(mine.get("reason", ""))),
            Text(_printable(who)),
            Text(_printable(event.get("message", ""))[:80]),
        )
    return table


def _ms(duration_ns: int) -> str:
    return f"{duration_ns / 1e6:.1f} ms"
