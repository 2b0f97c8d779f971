"""``trustmesh audit events|trace|verify|alerts|rules test|response list|undo``: the audit log, through the
collector's API as the operator (whose SVID alone may read it); ``rules test`` runs Sigma
rule files here, over events recorded by the collector or kept in a JSON-lines file."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import typer
from rich.table import Table

from trustmesh.cli import _admin
from trustmesh.cli._common import DEFAULT_STATE, ConfigOption, JsonOption, StateOption, err, out
from trustmesh.cli._common import declared as _declared
from trustmesh.errors import TrustmeshError
from trustmesh.events import read_events

app = typer.Typer(
    help="The audit log: search it, verify its chain, follow its alerts, test rules.",
    no_args_is_help=True,
)
rules_app = typer.Typer(help="Sigma detection rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
response_app = typer.Typer(
    help="Automated responses: what the rules' actions did, and undoing them.",
    no_args_is_help=True,
)
app.add_typer(response_app, name="response")


#: Seconds ``audit verify`` waits for its answer: the collector reads and hashes every
#: record (about 40,000 a second), so a log of months takes minutes, not the seconds of
#: any other admin request.
VERIFY_TIMEOUT = 3600.0


def _call(
    state: Path,
    config: Path | None,
    method: str,
    path: str,
    body: object = None,
    *,
    timeout: float | None = None,
) -> Any:
    try:
        return _admin.call(
            state, "audit", method, path, body, config=_declared(config), timeout=timeout
        )
    except TrustmeshError as exc:
        _admin.fail_admin(exc)


def _trustmesh(event: dict[str, Any]) -> dict[str, Any]:
    found = (event.get("unmapped") or {}).get("trustmesh") or {}
    return found if isinstance(found, dict) else {}


# The search filters (``audit events``, ``audit export``).
SinceOption = Annotated[str | None, typer.Option(help="From this ISO 8601 time.")]
UntilOption = Annotated[str | None, typer.Option(help="Up to this ISO 8601 time.")]
ClassOption = Annotated[
    int | None, typer.Option("--class", help="OCSF class_uid (3002 Authentication…).")
]
PrincipalOption = Annotated[str | None, typer.Option(help="A subject or a SPIFFE ID.")]
DecisionOption = Annotated[str | None, typer.Option(help="allow, deny or error.")]
ReasonOption = Annotated[str | None, typer.Option(help="A reason code (login-failed…).")]
TraceOption = Annotated[str | None, typer.Option("--trace-id", help="One request's trace.")]


@app.command("events")
def events_command(
    since: SinceOption = None,
    until: UntilOption = None,
    class_uid: ClassOption = None,
    principal: PrincipalOption = None,
    decision: DecisionOption = None,
    reason: ReasonOption = None,
    trace_id: TraceOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    newest: Annotated[bool, typer.Option("--newest", help="Newest first.")] = False,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search the audit log; a Rich table, or one JSON event per line with --json."""
    filters = {
        "since": since,
        "until": until,
        "class_uid": class_uid,
        "principal": principal,
        "decision": decision,
        "reason": reason,
        "trace_id": trace_id,
        "limit": limit,
        "newest": "1" if newest else None,
    }
    query = urlencode({k: v for k, v in filters.items() if v is not None})
    found = _call(state, config, "GET", f"/v1/events?{query}")["events"]
    if as_json:
        for event in found:
            print(json.dumps(event, separators=(",", ":")))
        return
    table = Table("seq", "time", "component", "class", "decision", "reason", "who", "message")
    for event in found:
        mine = _trustmesh(event)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(event.get("time", 0)) / 1000))
        product = (event.get("metadata") or {}).get("product") or {}
        table.add_row(
            str(event.get("seq")),
            when,
            str((product.get("feature") or {}).get("name", "")),
            str(event.get("class_name", "")),
            str(mine.get("decision", "")),
            str(mine.get("reason", "")),
            str(mine.get("sub") or mine.get("peer_spiffe_id") or mine.get("spiffe_id") or ""),
            str(event.get("message", ""))[:80],
        )
    out.print(table)


@app.command("verify")
def verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Your own copy of the checkpoint file.", dir_okay=False),
    ] = None,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check the whole chain against its signed checkpoints (and --checkpoint's): name the
    first altered, deleted, inserted or reordered record, or a truncation. Exit 1 if the
    log is not intact."""
    lines: list[str] = []
    if checkpoint is not None:
        try:
            lines = [line for line in checkpoint.read_text().splitlines() if line.strip()]
        except OSError as exc:
            err.print(f"cannot read {checkpoint}: {exc.strerror}", markup=False)
            raise typer.Exit(2) from None
    result = _call(
        state, config, "POST", "/v1/verify", {"checkpoints": lines}, timeout=VERIFY_TIMEOUT
    )
    if as_json:
        print(json.dumps(result))
    elif result["intact"]:
        pruned = result.get("pruned") or 0
        out.print(
            f"audit log intact: {result['records']} records, {result['covered']} under a "
            f"signed checkpoint ({result['unsigned']} newer, not signed yet)"
            + (f"; {pruned} pruned under signed prune checkpoints" if pruned else ""),
            markup=False,
        )
    else:
        err.print(f"audit log NOT intact: {result['finding']['message']}", markup=False)
    if not result["intact"]:
        raise typer.Exit(1)


def _show_alert(alert: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(alert, separators=(",", ":")))
        return
    group = ", ".join(f"{k}={v}" for k, v in (alert.get("group") or {}).items())
    actions = ", ".join(
        f"{a['action']}{' (dry run)' if a.get('dry_run') else ''}" for a in alert.get("actions", [])
    )
    out.print(
        f"#{alert['id']} [{alert['level']}] {alert['title']}"
        + (f" — {group}" if group else "")
        + f" ({len(alert.get('event_uids', []))} events)"
        + (f"; response: {actions}" if actions else ""),
        markup=False,
    )


@app.command("alerts")
def alerts(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new alerts.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between polls.")] = 1.0,
    level: Annotated[
        str | None,
        typer.Option(help="The least level: informational, low, medium, high, critical."),
    ] = None,
    rule: Annotated[str | None, typer.Option(help="Of this rule id only.")] = None,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The alerts raised by the detection rules, oldest first; --follow waits for more."""
    after = 0
    filters = "".join(
        f"&{name}={urllib.parse.quote(value, safe='')}"
        for name, value in (("level", level), ("rule", rule))
        if value is not None
    )
    while True:
        found = _call(state, config, "GET", f"/v1/alerts?after={after}{filters}")["alerts"]
        for alert in found:
            _show_alert(alert, as_json)
            after = max(after, int(alert["id"]))
        if not found:  # every page read
            if not follow:
                return
            time.sleep(interval)


def _rule_files(paths: list[Path]) -> dict[str, str]:
    """The YAML files among ``paths`` (a folder: its ``*.yml`` and ``*.yaml``), by name."""
    files: dict[str, str] = {}
    for path in paths:
        found = sorted([*path.rglob("*.yml"), *path.rglob("*.yaml")]) if path.is_dir() else [path]
        for file in found:
            files[str(file)] = file.read_text()
    if not files:
        err.print("no rule files (*.yml, *.yaml) found", markup=False)
        raise typer.Exit(2)
    return files


@rules_app.command("test")
def rules_test(
    rules: Annotated[list[Path], typer.Argument(help="Rule files or folders.", exists=True)],
    events_file: Annotated[
        Path | None,
        typer.Option("--events", help="Recorded events (JSON lines); default: the audit log."),
    ] = None,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run rule files over recorded events (the audit log's, or a JSON-lines file's), in
    the collector: how many events each rule matched, and the alerts they raise."""
    body: dict[str, Any] = {"files": _rule_files(rules)}
    if events_file is not None:
        body["events"] = list(read_events(events_file))
    result = _call(state, config, "POST", "/v1/rules/test", body)
    if as_json:
        print(json.dumps(result))
        return
    out.print(f"{result['events']} events", markup=False)
    for rule, count in sorted(result["matches"].items()):
        out.print(f"  {rule}: {count} matched", markup=False)
    for index, alert in enumerate(result["alerts"], 1):
        _show_alert({"id": index, **alert}, False)


def _show_response(record: dict[str, Any]) -> None:
    undone = f", undone by {record['undone_by']}" if record.get("undone_at") else ""
    out.print(
        f"{record['id']} {record['action']} {record['target']} — {record['outcome']}"
        f"{' (dry run)' if record['dry_run'] else ''}{undone} [{record['rule_id']}] "
        f"{record['detail']}",
        markup=False,
    )


@response_app.command("list")
def response_list(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 100,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The automated responses, newest first: taken, planned (dry run), failed, skipped."""
    found = _call(state, config, "GET", f"/v1/responses?limit={limit}")["responses"]
    for record in found:
        if as_json:
            print(json.dumps(record, separators=(",", ":")))
        else:
            _show_response(record)


@response_app.command("undo")
def response_undo(
    response_id: Annotated[str, typer.Argument(help="The response's id (response list).")],
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Undo a response taken: unlock the user, lift the block (a revocation is final)."""
    if not response_id.isalnum() or len(response_id) > 64:
        err.print("a response id is letters and digits (see `trustmesh audit response list`)")
        raise typer.Exit(2)
    record = _call(state, config, "POST", f"/v1/responses/{response_id}/undo", {})
    if as_json:
        print(json.dumps(record))
    else:
        _show_response(record)


from trustmesh.cli.audit_prune_cmd import register_prune  # noqa: E402 - adds `audit prune`

register_prune(app)

from trustmesh.cli import audit_export_cmd as _export  # noqa: E402, F401 - registers its commands
from trustmesh.cli import audit_trace_cmd as _trace  # noqa: E402, F401 - registers its command


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="audit")
