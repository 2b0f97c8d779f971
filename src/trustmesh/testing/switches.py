"""Test-only defence switches, as a test sets them: a declaration that turns defences off
(``testing: {defences_off: [...]}``) and the environment that lets a process honour it.

::

    config = demo_copy("tms")                       # a declaration a test may change
    switch_off(config, "token-audience", "token-binding")
    tm("up", "--config", str(config), "--state", str(state), "--detach", env=switched_env())
    tm("attack", ..., "--only=token-other-audience", env=switched_env())   # now fails

What each switch turns off, which component honours it and where:
:mod:`trustmesh.config.switches` (the components read it there: the foundation holds
the vocabulary, this module only writes it). Without :data:`SWITCHES_ENV` in its
environment, every process given such a declaration refuses to start, and
``trustmesh config check --strict`` refuses the declaration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trustmesh.config.switches import DEFENCES, SWITCHES_ENV
from trustmesh.errors import UsageError

__all__ = ["DEFENCES", "SWITCHES_ENV", "switch_off", "switched_env"]


def switch_off(config: Path, *names: str) -> None:
    """Append to the declaration at ``config`` (which has no ``testing:`` section yet) the
    section that turns ``names`` off."""
    unknown = [name for name in names if name not in DEFENCES]
    if unknown or not names:
        raise UsageError(f"no such defence switch: {unknown} (switches: {', '.join(DEFENCES)})")
    text = config.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    # flow style: JSON strings are YAML strings
    names_yaml = ", ".join(json.dumps(name) for name in names)
    config.write_text(f"{text}testing: {{defences_off: [{names_yaml}]}}\n", encoding="utf-8")


def switched_env() -> dict[str, str]:
    """This process's environment, with the switches allowed: for the ``trustmesh``
    processes a test starts (``up`` hands it on to every component)."""
    return {**os.environ, SWITCHES_ENV: "1"}
