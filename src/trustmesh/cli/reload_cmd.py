"""``trustmesh reload [--state DIR] [--config FILE]``: apply the changed declaration to the
running stack without a restart, or refuse it whole.

1. **Read** the file the stack runs from (``trustmesh up`` recorded it:
   :mod:`trustmesh.cli.running_declaration`); ``--config`` must name that same file,
   since each component reads it again.
2. **Validate it whole** before anything is touched: its YAML and schema (every problem,
   with its key), the test switches, the gateway's Cedar policies, and what it changes
   over the running declaration (:mod:`trustmesh.config.reloadable`: what a reload cannot
   apply is refused, each key named).
3. **Apply**: first each service whose accepted calls change (``calls`` to it, the
   gateway's routes to it; ``SIGHUP`` to its SDK runner, which compiles them again and
   swaps them in: a route the gateway forwards from now on is accepted before it is
   forwarded), then the gateway (``SIGHUP``: it compiles the new pipeline off the request
   path and swaps it in at once; a request in flight finishes in the pipeline it began
   in, none is dropped; what does not compile there is refused and nothing is applied
   anywhere), then the secrets service's policies (its ``sys/config/reload``).

Exit 0 when applied (or nothing changed), 2 when the declaration is refused — the running
one stays, in every component — and 1 when the stack is not running or a component does
not answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from trustmesh.cli import _admin, running_declaration
from trustmesh.cli._common import (
    DEFAULT_STATE,
    EXIT_FAILURE,
    EXIT_USAGE,
    ConfigOption,
    StateOption,
    err,
    out,
)
from trustmesh.cli.gateway_cmd import signal_reload
from trustmesh.cli.supervisor import RunPaths, hang_up, recorded_process, supervisor_running
from trustmesh.config import TrustmeshConfig, parse_config, reloadable
from trustmesh.config.switches import check_switches
from trustmesh.errors import ConfigError, TrustmeshError
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.policy.edge import load_edge_policy
from trustmesh.sdk.runner import reload_path

__all__ = ["register", "reload"]

WaitOption = Annotated[
    float, typer.Option("--wait", min=1, max=120, help="Seconds to wait for each component.")
]


def reload(
    state: StateOption = DEFAULT_STATE, config: ConfigOption = None, wait: WaitOption = 10.0
) -> None:
    """Apply the changed declaration to the running stack: gateway routes, policies and
    rate limits, the calls each service accepts, secrets policies. A declaration that is invalid, does not compile, or
    changes what only a restart applies is refused whole (exit 2): the running one stays."""
    state = state.absolute()
    if not supervisor_running(RunPaths(state)):
        _stop(f"trustmesh is not running with state {state}", EXIT_FAILURE)
    try:
        running = running_declaration.read(state)
    except TrustmeshError as exc:
        _stop(exc.detail, EXIT_FAILURE)
    path = _the_running_file(running.path, config)
    text, new = _read(path)
    plan = reloadable.plan(running.config(), new)
    if plan.refused:
        _refuse(plan.refused)
    if not plan.changes:
        out.print(f"reload: {path} declares no gateway and no secrets service", markup=False)
        return
    _compiled_or_refuse(new, path.parent, plan.services)
    applied = _apply(state, plan, wait)
    running_declaration.record(state, path, text)
    out.print(f"reload: applied {path}: {', '.join(applied)}", markup=False)


def _the_running_file(recorded: Path, config: Path | None) -> Path:
    """The file to read: the one the stack runs from; ``--config`` must be that one."""
    if config is not None and config.absolute().resolve() != recorded.resolve():
        _stop(
            f"the stack runs from {recorded}, not {config}: its components read that file "
            "again, so edit it (or start the stack with the other one)",
            EXIT_USAGE,
        )
    return recorded


def _read(path: Path) -> tuple[str, TrustmeshConfig]:
    """The file's text and its declaration, validated whole, or refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _refuse([f"{path}: cannot be read ({exc})"])
    try:
        config = parse_config(text, source=str(path))
        check_switches(config)
    except ConfigError as exc:
        _refuse(exc.problems)
    return text, config


def _compiled_or_refuse(
    config: TrustmeshConfig, config_dir: Path, services: tuple[str, ...]
) -> None:
    """The gateway's policies parse and validate (the gateway compiles the rest), and
    the call policies of each service that reloads them compile."""
    try:
        load_edge_policy(config, config_dir)
        for name in services:
            CallAuthorizer(config, name)
    except ConfigError as exc:
        _refuse(exc.problems)


def _apply(state: Path, plan: reloadable.Plan, wait: float) -> list[str]:
    """The services whose accepted calls change first (a route the gateway forwards from
    now on is accepted before it is forwarded), then the gateway, then the secrets
    service."""
    applied: list[str] = []
    if plan.services:
        _reload_services(state, plan.services, wait)
        applied.append(f"calls accepted by {', '.join(plan.services)}")
    if plan.gateway:
        _reload_gateway(state, wait)
        applied.append("gateway (routes, policies, rate limits)")
    if plan.secrets:
        try:
            doc = _admin.call(state, "secrets", "PUT", "/v1/sys/config/reload/policies")
        except TrustmeshError as exc:
            done = f"; applied already: {', '.join(applied)}" if applied else ""
            _stop(f"the secrets service did not apply it: {exc.detail}{done}", EXIT_FAILURE)
        names = ((doc or {}).get("data") or {}).get("identities") or []
        applied.append(f"secrets policies (identities: {', '.join(names) or 'none'})")
    return applied


def _reload_services(state: Path, names: tuple[str, ...], wait: float) -> None:
    """``SIGHUP`` to each service's process (the SDK runner), then its answer awaited
    (:func:`~trustmesh.sdk.runner.reload_path`)."""
    answers: dict[str, tuple[int, Path]] = {}
    for name in names:
        recorded = recorded_process(RunPaths(state).component(name))
        if recorded is None:
            _stop(f"{name} is not running (trustmesh status)", EXIT_FAILURE)
        answers[name] = (recorded[0], reload_path(state, name))
    try:
        outcomes = hang_up(answers, wait)
    except TrustmeshError as exc:
        _stop(exc.detail, EXIT_FAILURE)
    for name, outcome in outcomes.items():
        if not outcome.get("ok"):
            _stop(f"{name} refused it: {outcome.get('error')}", EXIT_FAILURE)


def _reload_gateway(state: Path, wait: float) -> None:
    try:
        outcome = signal_reload(state, wait)
    except TrustmeshError as exc:
        _stop(exc.detail, EXIT_FAILURE)
    if outcome.get("ok"):
        return
    problem = f"the gateway refused it: {outcome.get('error')}"
    if outcome.get("code") == ConfigError.code:
        _refuse([problem])
    _stop(problem, EXIT_FAILURE)


def _refuse(problems: tuple[str, ...] | list[str]) -> NoReturn:
    err.print(
        "error: reload refused, nothing was applied (the running declaration stays):",
        markup=False,
    )
    for problem in problems:
        err.print(f"  {problem}", markup=False)
    raise typer.Exit(EXIT_USAGE)


def _stop(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("reload")(reload)
