"""What the k8s tests share: the command run in this process, declarations to render, and
the rendered documents read back."""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from trustmesh import crypto
from trustmesh.cli import app
from trustmesh.config import default_config_path

DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGE = f"registry.example/trustmesh/trustmesh:1.0@{DIGEST}"

runner = CliRunner()


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str


def tm(*args: str) -> Ran:
    """``trustmesh ARGS…`` in this process; a traceback is a failure of the test."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


#: What the demo declaration becomes for a cluster: out of dev mode (a dev-mode declaration
#: listens on loopback only, and the render refuses it), with a certificate for each
#: listener that browsers reach (the files need not exist to render).
SHOP_FOR_A_CLUSTER = (
    ("dev: true\n", "dev: false\n"),
    (
        "auth:\n",
        "auth:\n  public_tls_cert: tls/auth.pem\n  public_tls_key: tls/auth-key.pem\n",
    ),
    ("gateway:\n", "gateway:\n  tls_cert: tls/gateway.pem\n  tls_key: tls/gateway-key.pem\n"),
    ("  console: {}\n", "  console: {tls_cert: tls/console.pem, tls_key: tls/console-key.pem}\n"),
)


def shop(folder: Path) -> Path:
    """A copy of the packaged demo declaration and its files, made fit for a cluster
    (:data:`SHOP_FOR_A_CLUSTER`)."""
    source = default_config_path().parent
    for name in ("default.yaml", "shop.cedar", "shop.tests.yaml", "shop.openapi.yaml"):
        shutil.copy(source / name, folder / name)
    path = folder / "default.yaml"
    text = path.read_text()
    for old, new in SHOP_FOR_A_CLUSTER:
        assert text.count(old) == 1, old  # the packaged demo changed: say where
        text = text.replace(old, new)
    path.write_text(text)
    return path


#: A declaration outside dev mode: TLS files for every browser-facing listener, a
#: service run by a command on its own port, an external service, secrets read by a
#: service named by its SPIFFE ID, pinned ports, no console.
PRODUCTION = """\
trust_domain: prod.example
identity: {discovery_port: 9081}
auth:
  port: 9443
  public_listener: true
  public_port: 9444
  public_tls_cert: tls/auth.pem
  public_tls_key: tls/auth-key.pem
  database: "postgresql+asyncpg://tm:@@DB_PASSWORD@@@db.internal:5432/tm"
  redis: "rediss://:@@REDIS_PASSWORD@@@redis.internal:6380/0"
services:
  billing: {run: "acme.billing:app"}
  ledger: {command: ["ledger-server", "--serve"], port: 9100}
  reports: {run: "acme.reports:app"}
  partner: {external: true}
gateway:
  port: 9000
  internal_port: 9001
  tls_cert: tls/gateway.pem
  tls_key: tls/gateway-key.pem
  routes:
    - {path: /billing, to: billing, methods: [GET]}
audit: {port: 9600}
secrets:
  port: 9200
  policies:
    - identity: "spiffe://prod.example/ledger"
      allow: {"secret/data/ledger/*": [read]}
    - identity: operator
      allow: {"secret/*": [read]}
calls:
  - {from: billing, to: ledger, allow: ["POST /entries"]}
  - {from: partner, to: billing, allow: ["GET /invoices/{id}"]}
  - {from: reports, to: ledger, allow: ["GET /entries"]}
"""

#: The least a declaration can be: the identity service and the provider, one service.
MINIMAL = """\
trust_domain: small.example
services:
  solo: {run: "acme.solo:app"}
"""


def write(folder: Path, text: str, **values: str) -> Path:
    """``text`` as ``folder/trustmesh.yaml``, each ``@@NAME@@`` replaced by ``values[name]``
    (``@@DB_PASSWORD@@`` by ``db_password``)."""
    for name, value in values.items():
        text = text.replace(f"@@{name.upper()}@@", value)
    path = folder / "trustmesh.yaml"
    path.write_text(text)
    return path


def attempt(config: Path, out: Path, *extra: str, image: str = IMAGE) -> Ran:
    """``trustmesh k8s render`` of ``config`` into ``out`` with ``image``, whatever it
    answers."""
    return tm("k8s", "render", "--config", str(config), "--out", str(out), "--image", image, *extra)


def render(config: Path, out: Path, *extra: str) -> Ran:
    """:func:`attempt`, which must succeed."""
    ran = attempt(config, out, *extra)
    assert ran.code == 0, ran.stderr + ran.stdout
    return ran


def documents(out: Path) -> list[dict[str, Any]]:
    """Every document of every rendered file, in file order."""
    docs = []
    for path in sorted(out.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def public_key_pem() -> str:
    """A fresh Ed25519 public key as PEM (SubjectPublicKeyInfo, RFC 8410 §4)."""
    raw = crypto.signing_public_key(crypto.generate_signing_key())
    der = bytes.fromhex("302a300506032b6570032100") + raw
    body = base64.b64encode(der).decode("ascii")
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"
