"""``trustmesh audit trace``'s view: the tree of hops, the decisions, nothing interpreted."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from typer.testing import CliRunner

from trustmesh.cli import app
from trustmesh.cli.audit_trace_cmd import trace_view

TRACE = "0123456789abcdef0123456789abcdef"


def _span(
    span_id: str, parent: str | None, service: str, start: int, **attributes: Any
) -> dict[str, Any]:
    return {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": f"GET /{service}",
        "kind": "server",
        "service": service,
        "reporter": f"spiffe://shop.test/{service}",
        "start_ns": start,
        "end_ns": start + 2_000_000,
        "status": "unset",
        "status_message": None,
        "attributes": attributes,
        "events": [],
    }


def _render(doc: dict[str, Any]) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(trace_view(doc))
    return console.export_text()


def test_the_tree_follows_the_parents_and_times_each_hop() -> None:
    doc = {
        "trace_id": TRACE,
        "spans": [
            _span("b" * 16, "a" * 16, "orders", 3_000_000, **{"trustmesh.decision": "deny"}),
            _span("a" * 16, None, "gateway", 1_000_000, **{"http.response.status_code": 403}),
            _span("c" * 16, "f" * 16, "payments", 4_000_000),  # its parent was not kept
        ],
        "events": [],
    }
    lines = _render(doc).splitlines()
    assert lines[0] == f"trace {TRACE}  5.0 ms"
    gateway = next(i for i, line in enumerate(lines) if "gateway server" in line)
    orders = next(i for i, line in enumerate(lines) if "orders server" in line)
    assert gateway < orders
    assert lines[orders].index("orders") > lines[gateway].index("gateway")  # nested under it
    assert "+2.0 ms 2.0 ms  deny" in lines[orders]
    assert "[403]" in lines[gateway]
    payments = next(line for line in lines if "payments server" in line)
    assert "(its parent span is not recorded)" in payments


def test_event_fields_are_shown_as_text_never_as_markup() -> None:
    hostile = "[bold red]<script>alert(1)</script>[/bold red]"
    span = _span("a" * 16, None, "gateway", 0, **{"trustmesh.decision": "deny"})
    span["attributes"]["trustmesh.reason"] = span["name"] = hostile  # any reporter's words
    doc = {
        "trace_id": TRACE,
        "spans": [span],
        "events": [
            {
                "time": 1_700_000_000_123,
                "message": hostile,
                "metadata": {"product": {"feature": {"name": "gateway"}}},
                "unmapped": {"trustmesh": {"decision": "deny", "reason": "policy-deny"}},
            }
        ],
    }
    text = _render(doc)
    assert text.count(hostile) == 3  # in the tree twice and in the decisions, as sent


def test_a_malformed_trace_id_is_refused_before_anything_is_asked() -> None:
    for bad in ("xyz", "0" * 32, "a" * 31, "a" * 33):
        result = CliRunner().invoke(app, ["audit", "trace", bad, "--state", "/nonexistent"])
        assert result.exit_code == 2, (bad, result.stdout)
        assert "not a trace id" in result.stderr


def test_spans_whose_parents_loop_are_drawn_once_and_nothing_is_run() -> None:
    """Any workload may report any parent id, any name: a loop of parents, a status that
    is no number and a terminal escape neither hang, crash nor reach the terminal."""
    a = _span("a" * 16, "b" * 16, "orders", 1_000_000)
    b = _span("b" * 16, "a" * 16, "payments", 2_000_000, **{"http.response.status_code": "500"})
    b["name"] = "\x1b]0;owned\x07\x1b[2J GET /x"
    twin = _span("a" * 16, None, "mallory", 0)  # the same span id again
    text = _render({"trace_id": TRACE, "spans": [a, b, twin], "events": []})
    assert "\x1b" not in text
    assert "? ]0;owned?? [2J GET /x".replace(" ", "") in text.replace(" ", "")
    assert text.count("orders server") == 1
    assert text.count("payments server") == 1
    assert "mallory" not in text  # the span id's first report is the one drawn
