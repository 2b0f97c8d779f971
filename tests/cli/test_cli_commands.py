"""The ``trustmesh`` command builds itself with the module of the command it runs:
every command is where the table says, a call imports nothing of the others, and
help and typos still see every command."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer.main

from trustmesh.cli import COMMAND_MODULES, app, build_app
from trustmesh.testing import run_cli as tm


def _names(built: typer.Typer) -> set[str]:
    group = typer.main.get_command(built)
    return set(group.commands)  # type: ignore[attr-defined]


def test_the_table_names_every_command_once() -> None:
    listed = [name for names in COMMAND_MODULES.values() for name in names]
    assert len(listed) == len(set(listed))
    assert _names(app) == set(listed)


@pytest.mark.parametrize("module", sorted(COMMAND_MODULES))
def test_each_module_registers_what_the_table_says(module: str) -> None:
    assert _names(build_app([module])) == set(COMMAND_MODULES[module])


def _imported_by(*argv: str) -> set[str]:
    """The trustmesh modules a ``trustmesh ARGV`` call has imported when it ends."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.argv = ["trustmesh", *{list(argv)!r}]
        from trustmesh.cli import main
        try:
            main()
        except SystemExit:
            pass
        print(" ".join(m for m in sys.modules if m.startswith("trustmesh")), file=sys.stderr)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    return set(done.stderr.split())


def test_down_imports_what_stopping_needs_only(short_tmp: Path) -> None:
    found = _imported_by("down", "--state", str(short_tmp))
    assert "trustmesh.cli.down_cmd" in found
    unwanted = {"trustmesh.cli.attack_cmd", "trustmesh.cli.stack", "trustmesh.sdk.client"}
    assert found & unwanted == set()


def test_a_command_of_one_module_stays_a_command() -> None:
    """``reload`` is its module's only command: the app stays a group, so that
    ``trustmesh reload --help`` is reload's help, not the app's."""
    shown = tm("reload", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "Usage: python -m trustmesh reload" in shown.stdout


def test_help_and_a_typo_see_every_command() -> None:
    shown = tm("--help")
    assert shown.returncode == 0
    for names in COMMAND_MODULES.values():
        for name in names:
            if not name.startswith("_"):
                assert f" {name} " in shown.stdout, name
    typo = tm("dwn")
    assert typo.returncode == 2
    assert "No such command 'dwn'" in typo.stderr
    assert "Did you mean 'down'" in typo.stderr
