"""What ``trustmesh attack`` hands over: the JSON document and a self-contained HTML
evidence report (control → attack → observed result → the audit events that recorded
it), for an auditor. Every value from the run is escaped; the page loads nothing."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from trustmesh.cli.attack_probes import Control

__all__ = ["document", "html_report"]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1d232a; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
p.meta { color: #5b6670; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #d5dbe0; padding: .45rem .6rem; vertical-align: top; text-align: left; }
th { background: #f1f4f6; }
td.pass { color: #116329; font-weight: 600; }
td.fail { color: #a40e26; font-weight: 600; }
code { font-size: 12px; word-break: break-all; }
"""


def document(controls: Sequence[Control]) -> dict[str, Any]:
    """``{"controls": [{"name", "passed", "attack", "observed", "event_ids"}]}``."""
    return {"controls": [control.to_dict() for control in controls]}


def html_report(
    controls: Sequence[Control], *, trust_domain: str, target: str, now: datetime | None = None
) -> str:
    """The evidence report as one HTML page (no script, no external resource)."""
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    passed = sum(control.passed for control in controls)
    rows = []
    for control in controls:
        verdict = "pass" if control.passed else "fail"
        events = "<br>".join(f"<code>{html.escape(uid)}</code>" for uid in control.event_ids)
        rows.append(
            "<tr>"
            f"<td>{html.escape(control.name)}</td>"
            f'<td class="{verdict}">{verdict.upper()}</td>'
            f"<td>{html.escape(control.attack)}</td>"
            f"<td>{html.escape(control.observed)}</td>"
            f"<td>{events or '—'}</td>"
            "</tr>"
        )
    e = html.escape
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        f"<title>trustmesh attack report: {e(trust_domain)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>trustmesh attack report: {e(trust_domain)}</h1>"
        f'<p class="meta">{e(target)} · {e(when)} · {passed} of {len(controls)} controls held</p>'
        "<table><thead><tr><th>Control</th><th>Result</th><th>Attack</th>"
        "<th>Observed</th><th>Audit events</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></body></html>\n"
    )
