"""What the demo's first ``trustmesh up`` prints once: its users' credentials."""

from __future__ import annotations

import re


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
