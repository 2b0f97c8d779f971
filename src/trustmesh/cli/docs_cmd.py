"""``trustmesh docs access-matrix|evidence``: documents for auditors.

- ``access-matrix``: who may call what, from the declaration and its compiled policies
  (:mod:`trustmesh.cli.access_matrix`), as Markdown or one self-contained HTML page.
  Deterministic: the same declaration and policies give the same bytes.
- ``evidence``: evidence from the running stack (:mod:`trustmesh.cli.evidence_collect`),
  each item mapped to the NIST SP 800-207 tenets and PCI DSS 4.0 requirements it
  evidences (:mod:`trustmesh.cli.evidence`), with the attack report given
  (``--attack-report``, a ``trustmesh attack --json`` file, observed when the file was
  written) or run (``--run-attack``).

Exit codes: 0 written (evidence: every item passed), 1 an evidence item failed or the
stack could not be asked, 2 bad usage, a bad declaration or no running stack.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from trustmesh.cli._common import (
    DEFAULT_STATE,
    EXIT_FAILURE,
    EXIT_USAGE,
    ConfigOption,
    StateOption,
    fail,
    fail_on,
    load_or_exit,
)
from trustmesh.cli.access_matrix import access_matrix
from trustmesh.cli.attack_probes import Stack, run_attacks
from trustmesh.cli.attack_report import document as attack_document
from trustmesh.cli.docs_render import Table, html_page, markdown_page, matrix_tables
from trustmesh.cli.evidence import EvidenceItem, attack_item, controls_of, document
from trustmesh.cli.evidence_collect import observe, stack_items
from trustmesh.errors import ConfigError, TrustmeshError

__all__ = ["app"]

app = typer.Typer(
    help="Documents for auditors: the access matrix, compliance evidence.",
    no_args_is_help=True,
)
_MAX_REPORT_BYTES = 8 << 20


class MatrixFormat(enum.StrEnum):
    markdown = "markdown"
    html = "html"


class EvidenceFormat(enum.StrEnum):
    markdown = "markdown"
    html = "html"
    json = "json"


OutOption = Annotated[
    Path | None, typer.Option("--out", dir_okay=False, help="Write here [default: stdout].")
]


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}", EXIT_USAGE)


@app.command("access-matrix")
def access_matrix_command(
    config: ConfigOption = None,
    fmt: Annotated[
        MatrixFormat, typer.Option("--format", help="markdown or html.")
    ] = MatrixFormat.markdown,
    out: OutOption = None,
) -> None:
    """Who may call what: users through the gateway (each principal kind × each route
    operation, decided by the gateway's compiled Cedar policies), service to service
    calls (and the default deny of everything else), and secrets access."""
    cfg, path = load_or_exit(config)
    try:
        matrix = access_matrix(cfg, path)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(EXIT_USAGE) from None
    title = f"Access matrix: {matrix.trust_domain}"
    intro = [
        f"Computed by trustmesh from the declaration {matrix.source} and the policies it "
        "names, with the same compiled policies the gateway and the services' SDK "
        "evaluate. Anything not listed as allowed is denied."
    ]
    tables = matrix_tables(matrix)
    render = html_page if fmt is MatrixFormat.html else markdown_page
    _write(render(title, intro, tables), out)


def _read_report(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_REPORT_BYTES + 1)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_USAGE)
    if len(data) > _MAX_REPORT_BYTES:
        fail(f"{path}: larger than {_MAX_REPORT_BYTES} bytes", EXIT_USAGE)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        fail(f"{path}: not JSON (expected `trustmesh attack --json` output)", EXIT_USAGE)
    if not isinstance(doc, dict) or not isinstance(doc.get("controls"), list):
        fail(f'{path}: expected {{"controls": [...]}} (`trustmesh attack --json`)', EXIT_USAGE)
    return doc


def _evidence_tables(items: list[EvidenceItem]) -> list[Table]:
    rows = tuple(
        (
            item.name,
            "pass" if item.passed else "FAIL",
            item.checked,
            item.result,
            item.at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "; ".join(item.controls),
        )
        for item in items
    )
    marks = tuple(("", "pass" if i.passed else "fail", "", "", "", "") for i in items)
    doc = document(items, trust_domain="", generated=dt.datetime.now(dt.UTC))
    controls = tuple(
        (c["id"], c["text"], ", ".join(c["items"]), "pass" if c["passed"] else "FAIL")
        for c in doc["controls"]
    )
    return [
        Table(
            "Evidence",
            "Each item as observed on the running stack.",
            ("item", "result", "checked", "figures", "when", "controls"),
            rows,
            marks,
        ),
        Table(
            "Controls",
            "Each control, the items that evidence it, and whether they all passed.",
            ("control", "text", "evidenced by", "result"),
            controls,
            tuple(("", "", "", row[3].lower()) for row in controls),
        ),
    ]


@app.command("evidence")
def evidence_command(
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    attack_report: Annotated[
        Path | None,
        typer.Option("--attack-report", dir_okay=False, help="A `trustmesh attack --json` file."),
    ] = None,
    run_attack: Annotated[
        bool, typer.Option("--run-attack", help="Run `trustmesh attack` now for its report.")
    ] = False,
    fmt: Annotated[
        EvidenceFormat, typer.Option("--format", help="markdown, html or json.")
    ] = EvidenceFormat.markdown,
    out: OutOption = None,
) -> None:
    """Evidence from the running stack — the attack report, the audit log's verification,
    certificate lifetimes, the identity CA's and the signing keys' ages, MFA coverage of
    admins — each item mapped to the controls it evidences (NIST SP 800-207 tenets, PCI
    DSS 4.0 requirements 8 and 10). Exit 1 when an item fails."""
    if attack_report is not None and run_attack:
        fail("--attack-report and --run-attack: one of them", EXIT_USAGE)
    cfg, path = load_or_exit(config)
    report = _read_report(attack_report) if attack_report is not None else None
    state = state.absolute()
    items: list[EvidenceItem] = []
    try:
        if run_attack:
            controls = asyncio.run(run_attacks(Stack.find(cfg, state)))
            items.append(attack_item(attack_document(controls), dt.datetime.now(dt.UTC), "run now"))
        elif report is not None and attack_report is not None:
            at = dt.datetime.fromtimestamp(attack_report.stat().st_mtime, dt.UTC)
            items.append(attack_item(report, at, attack_report.name))
        items += stack_items(cfg, observe(cfg, path, state))
    except TrustmeshError as exc:
        fail_on(exc)
    generated = dt.datetime.now(dt.UTC)
    if fmt is EvidenceFormat.json:
        text = json.dumps(
            document(items, trust_domain=cfg.trust_domain, generated=generated), indent=2
        )
    else:
        title = f"Compliance evidence: {cfg.trust_domain}"
        held = sum(item.passed for item in items)
        intro = [
            f"Observed on the stack running on {state} at "
            f"{generated:%Y-%m-%d %H:%M:%S} UTC: {held} of {len(items)} items passed, "
            f"evidencing {len(controls_of(items))} controls.",
            "Controls: NIST SP 800-207 (Zero Trust Architecture) section 2.1 tenets; PCI "
            "DSS 4.0 requirements 8 and 10. No attack report was given: pass "
            "--attack-report or --run-attack."
            if not any(item.name == "attack-report" for item in items)
            else "Controls: NIST SP 800-207 (Zero Trust Architecture) section 2.1 "
            "tenets; PCI DSS 4.0 requirements 8 and 10.",
        ]
        render = html_page if fmt is EvidenceFormat.html else markdown_page
        text = render(title, intro, _evidence_tables(items))
    _write(text, out)
    if not all(item.passed for item in items):
        raise typer.Exit(EXIT_FAILURE)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="docs")
