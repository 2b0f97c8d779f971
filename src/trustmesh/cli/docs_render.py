"""Tables for auditors, as Markdown or as one self-contained HTML page (every value
escaped; no script, no external resource, a Content-Security-Policy that allows only the
page's own style). :func:`matrix_tables` turns an access matrix into plain tables; the
evidence report (:mod:`trustmesh.cli.evidence`) hands its own."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from trustmesh.cli.access_matrix import DECIDED_AT, AccessMatrix, Cell
from trustmesh.reasons import ANSWERS

__all__ = ["Table", "html_page", "markdown_page", "matrix_tables"]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1d232a; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
p.note { color: #3d4852; max-width: 60rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d5dbe0; padding: .35rem .55rem; vertical-align: top; text-align: left; }
th { background: #f1f4f6; }
td.allow, td.pass { color: #116329; font-weight: 600; }
td.deny, td.fail { color: #a40e26; font-weight: 600; }
"""


@dataclass(frozen=True)
class Table:
    """A titled table: a note above it, a header and rows of cells; a cell's ``marks``
    (allow/deny/pass/fail) colour it in HTML."""

    title: str
    note: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    marks: tuple[tuple[str, ...], ...] = ()


def _cell_text(cell: Cell) -> str:
    verdict = "allow" if cell.allowed else "deny"
    if cell.before_policy:
        status = ANSWERS[cell.reason].status if cell.reason in ANSWERS else None
        where = f"{cell.reason}, {status}" if status else str(cell.reason)
        return f"{verdict} ({where}: before any policy)"
    parts = [verdict]
    if cell.permits:
        parts.append("permit " + ", ".join(cell.permits))
    elif cell.forbids:
        parts.append("forbid " + ", ".join(cell.forbids))
    elif not cell.allowed:
        parts.append("no permit applies")
    if cell.as_anonymous:
        parts.append("as Anonymous")
    if cell.error:
        parts.append(f"evaluation error: {cell.error}")
    return " · ".join(parts)


def matrix_tables(matrix: AccessMatrix) -> list[Table]:
    tables: list[Table] = []
    users = matrix.users
    if users is not None:
        files = ", ".join(users.policy_files) or "none declared: every credential passes"
        reads = ", ".join(users.context_reads) or "none"
        note = (
            f"Decided by the gateway's Cedar policies ({files}), compiled and evaluated as "
            "the gateway does, for a caller with a provider token of each kind. A route "
            "that takes no credential is decided for Anonymous whoever calls; on any "
            "other route a caller without a credential is refused before any policy. "
            f"Asked for client 127.0.0.1 at {DECIDED_AT:%Y-%m-%d %H:%M} UTC; the "
            f"policies read these context fields: {reads}."
        )
        header = ("operation", "route → service", "auth", *(k.label for k in users.kinds))
        rows, marks = [], []
        for op, cells in zip(users.operations, users.cells, strict=True):
            route = f"{op.route} → {op.service}"
            rows.append((op.name, route, ", ".join(op.auth), *map(_cell_text, cells)))
            marks.append(("", "", "", *("allow" if c.allowed else "deny" for c in cells)))
        tables.append(Table("Users through the gateway", note, header, tuple(rows), tuple(marks)))
    calls = tuple(
        (c.caller, c.callee, f"{c.method} {c.pattern}", c.source, "allow" if c.allowed else "deny")
        for c in matrix.calls
    )
    tables.append(
        Table(
            "Service to service: what is allowed",
            "The declaration's calls, and the gateway → service call each route's operations "
            "imply; each decided by the compiled service-to-service policies (the SDK "
            "of the callee asks them of every call, with the caller's SPIFFE ID from its "
            "certificate).",
            ("caller", "callee", "operation", "declared in", "decision"),
            calls,
            tuple(("", "", "", "", row[4]) for row in calls),
        )
    )
    denied = tuple(
        (
            d.caller,
            d.callee,
            f"{d.asked - d.allowed} of {d.asked} operations denied",
            "deny" if d.allowed == 0 else "ALLOWED",
        )
        for d in matrix.denied
    )
    tables.append(
        Table(
            "Service to service: everything else (default deny)",
            "Every other caller → callee pair is granted nothing: each operation the callee "
            "serves was asked of the same policies for that caller.",
            ("caller", "callee", "checked", "decision"),
            denied,
            tuple(("", "", "", "deny" if d.allowed == 0 else "allow") for d in matrix.denied),
        )
    )
    if matrix.secrets_declared:
        grants = tuple((g.identity, g.path, ", ".join(g.capabilities)) for g in matrix.secrets)
        tables.append(
            Table(
                "Secrets",
                "What each identity may do on which path (the declaration's "
                "secrets.policies; '*' at the end matches any rest, '+' one segment, deny "
                "wins). Any identity or path not listed is refused.",
                ("identity", "path", "capabilities"),
                grants,
            )
        )
    return tables


def _md(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_page(title: str, intro: Sequence[str], tables: Sequence[Table]) -> str:
    lines = [f"# {_md(title)}", ""]
    for paragraph in intro:
        lines += [_md(paragraph), ""]
    for table in tables:
        lines += [f"## {_md(table.title)}", "", _md(table.note), ""]
        lines.append("| " + " | ".join(map(_md, table.header)) + " |")
        lines.append("|" + "---|" * len(table.header))
        lines += ["| " + " | ".join(map(_md, row)) + " |" for row in table.rows]
        if not table.rows:
            lines.append("| " + " | ".join(["—"] * len(table.header)) + " |")
        lines.append("")
    return "\n".join(lines)


def html_page(title: str, intro: Sequence[str], tables: Sequence[Table]) -> str:
    e = html.escape
    parts = [
        "<!doctype html>\n",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *(f'<p class="note">{e(p)}</p>' for p in intro),
    ]
    for table in tables:
        parts.append(f'<h2>{e(table.title)}</h2><p class="note">{e(table.note)}</p>')
        parts.append("<table><thead><tr>")
        parts += [f"<th>{e(h)}</th>" for h in table.header]
        parts.append("</tr></thead><tbody>")
        for index, row in enumerate(table.rows):
            marks = table.marks[index] if index < len(table.marks) else ()
            parts.append("<tr>")
            for column, value in enumerate(row):
                mark = marks[column] if column < len(marks) else ""
                attr = f' class="{mark}"' if mark in ("allow", "deny", "pass", "fail") else ""
                parts.append(f"<td{attr}>{e(value)}</td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>\n")
    return "".join(parts)
