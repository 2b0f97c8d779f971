"""What every command shares: options, loading the declaration, consoles, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from trustmesh.config import TrustmeshConfig, load_config, parse_duration, resolve_config_path
from trustmesh.errors import ConfigError, TrustmeshError, UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_STATE = Path(".trustmesh")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Declaration file [default: ./trustmesh.yaml if present, else the packaged default].",
        dir_okay=False,
    ),
]
StateOption = Annotated[
    Path,
    typer.Option("--state", "-s", help="State directory.", file_okay=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def fail_on(exc: TrustmeshError) -> NoReturn:
    """Usage-shaped errors exit 2, run-time ones 1; the message is the precise detail."""
    code = (
        EXIT_USAGE if exc.status == 400 or exc.code in ("not_found", "conflict") else EXIT_FAILURE
    )
    err.print(f"error: {exc.detail}", markup=False)
    raise typer.Exit(code)


def seconds_option(option: str, value: str | None, *, zero: bool = False) -> int | None:
    """A duration option (``90d``, ``1h30m``, ``3600``; ``0`` too with ``zero``) in whole
    seconds, the admin APIs' unit; exit 2 naming the option when it is not one."""
    if value is None:
        return None
    if zero and value.strip() in ("0", "0s"):
        return 0
    try:
        return int(parse_duration(value).total_seconds())
    except (ValueError, TypeError) as exc:
        fail_on(UsageError(f"{option} {value!r}: {exc}"))


def load_or_exit(config: Path | None) -> tuple[TrustmeshConfig, Path]:
    path = resolve_config_path(config)
    try:
        return load_config(path), path
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False)
        raise typer.Exit(EXIT_USAGE) from None


def declared(config: Path | None) -> TrustmeshConfig | None:
    """The declaration named by --config (exit 2 if it is bad), or None when there is none
    (a command on the running stack then needs none: the stack knows its trust domain)."""
    return load_or_exit(config)[0] if config is not None else None
