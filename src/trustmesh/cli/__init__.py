"""The ``trustmesh`` command. Exit codes: 0 success, 1 failure at run time, 2 bad usage/config.

A call imports only the module of the command it names (``trustmesh down`` does not pay
for ``trustmesh attack``'s probes): :func:`main` reads the command's name from the
command line and builds the app with that module alone; with no known name (``--help``,
a typo) it builds the whole app, whose help and errors list every command. ``app`` is
the whole app, built when first asked for."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Final

import typer

__all__ = ["app", "build_app", "main"]

#: The modules that register commands, in the order the help lists them, and the
#: top-level names each one registers (each module has ``register(root)``).
COMMAND_MODULES: Final[dict[str, tuple[str, ...]]] = {
    "config_cmd": ("config",),
    "identity_cmd": ("identity", "svid"),
    "policy_cmd": ("policy",),
    "stack": ("up", "status", "_supervise"),
    "down_cmd": ("down",),
    "reload_cmd": ("reload",),
    "call_cmd": ("call",),
    "auth_cmd": ("auth",),
    "gateway_cmd": ("gateway",),
    "secrets_cmd": ("secrets",),
    "audit_cmd": ("audit",),
    "attack_cmd": ("attack",),
    "k8s_cmd": ("k8s",),
    "docs_cmd": ("docs",),
}
_MODULE_OF: Final = {name: module for module, names in COMMAND_MODULES.items() for name in names}


def build_app(modules: Iterable[str] = COMMAND_MODULES) -> typer.Typer:
    """The ``trustmesh`` app with the commands of ``modules`` (every one by default)."""
    root = typer.Typer(
        name="trustmesh",
        help="Zero-trust security platform for Python microservices.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @root.callback()
    def _group() -> None:
        """Zero-trust security platform for Python microservices."""
        # (a callback keeps the app a group of commands when it holds only one)

    for module in modules:
        importlib.import_module(f"trustmesh.cli.{module}").register(root)
    return root


def _named(argv: list[str]) -> str | None:
    """The module of the command ``argv`` names first (None: none, or an option first)."""
    return _MODULE_OF.get(argv[0]) if argv else None


def main() -> None:
    module = _named(sys.argv[1:])
    (build_app([module]) if module else build_app())()


_whole: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    global _whole
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _whole is None:
        _whole = build_app()
    return _whole
