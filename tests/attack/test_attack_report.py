"""What `trustmesh attack` hands an auditor: the JSON document's shape and the HTML
report, in which everything the run observed is text (a payload it echoes never runs)
and nothing is loaded from elsewhere."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

from trustmesh.cli.attack_probes import Control
from trustmesh.cli.attack_report import document, html_report

CONTROLS = [
    Control("xss", True, "payloads in a query", "q=<script>alert(1)</script>: 403", ("01a2",)),
    Control("rate-limit", False, "a flood", "no 429 in 740 requests — FAILED: not limited"),
]


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "td":
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1] += data


def test_the_json_document_lists_every_control_with_its_evidence() -> None:
    doc = json.loads(json.dumps(document(CONTROLS)))
    assert doc == {
        "controls": [
            {
                "name": "xss",
                "passed": True,
                "attack": "payloads in a query",
                "observed": "q=<script>alert(1)</script>: 403",
                "event_ids": ["01a2"],
            },
            {
                "name": "rate-limit",
                "passed": False,
                "attack": "a flood",
                "observed": "no 429 in 740 requests — FAILED: not limited",
                "event_ids": [],
            },
        ]
    }


def test_the_html_report_shows_what_was_observed_as_text() -> None:
    page = html_report(
        CONTROLS,
        trust_domain="shop<b>.example",
        target="https://127.0.0.1:8443",
        now=datetime(2026, 12, 7, 12, 0, tzinfo=UTC),
    )
    parsed = _Elements()
    parsed.feed(page)
    assert "script" not in parsed.tags  # escaped, never markup
    assert "b" not in parsed.tags
    assert "q=<script>alert(1)</script>: 403" in parsed.cells
    assert parsed.cells[:2] == ["xss", "PASS"]
    assert "FAIL" in parsed.cells
    assert "1 of 2 controls held" in page
    assert "2026-12-07 12:00:00 UTC" in page
    # self-contained: no URL to load from, and a policy that allows none
    assert not re.search(r"(src|href)\s*=", page)
    assert "default-src 'none'" in page
