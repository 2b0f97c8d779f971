from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# A full, valid declaration. Line numbers matter to the tests that edit it.
VALID_YAML = """\
trust_domain: shop.example
dev: false
identity:
  svid_ttl: 30m
  max_svid_ttl: 12h
  jwt_svid_ttl: 300
  ca_ttl: 2d
  root_ttl: 30d
services:
  orders:
    run: "trustmesh.demo.orders:app"
    port: 8001
  payments: {run: "trustmesh.demo.payments:app", port: 8002}
  inventory:
    command: [python, -m, inventory, --port, "8003"]
    port: 8003
calls:
  - {from: orders, to: payments, allow: ["POST /charges", "GET /charges/{id}"]}
  - from: orders
    to: inventory
    allow: ["GET /items/{id}", "POST /reservations", "* /admin/*"]
"""

WriteConfig = Callable[[str], Path]


@pytest.fixture
def valid_yaml() -> str:
    return VALID_YAML


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str) -> Path:
        path = tmp_path / "trustmesh.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write
