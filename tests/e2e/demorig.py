"""The demo's declaration copied where a test may change it, and what the demo's first
``trustmesh up`` prints once: its users' credentials."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from trustmesh.config import default_config_path

#: The packaged demo: its declaration and the files it names beside it.
DEMO_FILES = ("default.yaml", "shop.cedar", "shop.tests.yaml", "shop.openapi.yaml")


def demo_copy(prefix: str) -> Path:
    """The packaged demo copied into a new folder under /tmp (a short path: unix
    sockets live under its state directory), as ``trustmesh.yaml``: its path."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    for name in DEMO_FILES:
        shutil.copy(default_config_path().with_name(name), root / name)
    config = root / "trustmesh.yaml"
    (root / "default.yaml").rename(config)
    return config


def demo_credentials(output: str) -> dict[str, tuple[str, str]]:
    """(password, TOTP secret or "") of each demo user, as ``up`` showed them."""
    found: dict[str, tuple[str, str]] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s+(\w+)\s+password: (\S+)", line)
        if match:
            following = lines[i + 1] if i + 1 < len(lines) else ""
            secret = re.search(r"secret=([A-Z2-7]+)", following)
            found[match[1]] = (match[2], secret[1] if secret else "")
    return found
