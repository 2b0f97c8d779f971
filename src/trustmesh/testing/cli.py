"""Run the ``trustmesh`` command as a real process, as a script or a user would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping


def run_cli(
    *args: str,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``trustmesh ARGS…`` with this interpreter, ``stdin`` as its input (none by
    default); never raises on a non-zero exit."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "trustmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        env=dict(env) if env is not None else None,
    )
