"""The dependency rule (docs/architecture.md), checked on every import in the package —
at module level or inside a function — so a violation fails here, not in a review.

Layers, lowest first: the foundation (errors, reasons, events, config, crypto, store,
policy, SPIFFE IDs, generated protocol code); the SDK (what a service imports); the
platform (what a server component stands on); the components (identity, auth,
gateway); and on top the CLI, the demo and the test helpers. A layer imports only the
layers below it and itself (the foundation's parts import one another); a component never imports another component; the test
helpers start components only through their ``server`` modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "trustmesh"

FOUNDATION = {"errors", "reasons", "events", "config", "crypto", "store", "policy", "spiffeid"}
FOUNDATION |= {"_proto"}
COMPONENTS = {"identity", "auth", "gateway", "secrets", "audit"}
LAYER = {
    **dict.fromkeys(FOUNDATION, 0),
    "sdk": 1,
    "platform": 2,
    "k8s": 2,  # the manifests renderer: reads the declaration, runs nothing
    **dict.fromkeys(COMPONENTS, 3),
    "cli": 4,
    "demo": 4,
    "testing": 4,
    "devsecops": 4,  # the CI gates' checks: development tooling, imported by nothing
    "__main__": 5,
    "__init__": 0,  # the package root: its version, nothing else
}

#: What the CLI still reads of components' insides: nothing since every command goes
#: through the component's admin API (issue 14). Nothing may be added.
CLI_STILL_INSIDE: set[tuple[str, str]] = set()
#: What the CLI may always read of a component: where it listens, and the names of
#: what its admin API takes.
CLI_MAY_READ = {"endpoint", "methods"}
#: And of the audit collector: the SIEM formats and senders ``audit export`` applies to
#: what the API answered, and the tables' grants ``audit grants`` prints (no store).
CLI_MAY_READ |= {"export", "syslog", "pseudonymise", "_delivery", "ledger_schema", "spans"}
CLI_MAY_READ |= {"alerts", "response_store"}
#: And the pure order of a trace's spans, which ``audit trace`` draws from the answer.
CLI_MAY_READ |= {"trace_tree"}
#: And the pure verifier of the chain, which ``attack`` runs on a copy of the log it
#: tampered with (the records, the checkpoints and their file; no store).
CLI_MAY_READ |= {"verifier", "chain", "checkpoint_file"}
#: And of the gateway: the compiler of routes' contracts (OpenAPI, JSON Schema) and the
#: loader of the Core Rule Set, pure, which ``config check`` runs on the declaration as
#: the gateway will at its start.
CLI_MAY_READ |= {"validation", "crs"}


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every ``trustmesh`` module ``path`` imports (``from trustmesh import x`` names
    ``trustmesh.x``)."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("trustmesh."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            if base == "trustmesh":  # a module of the package, or a name of its root
                yield from (
                    f"trustmesh.{a.name}"
                    if (PACKAGE / a.name).exists() or (PACKAGE / f"{a.name}.py").exists()
                    else "trustmesh"
                    for a in node.names
                )
            elif base.startswith("trustmesh."):
                yield base


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to (``auth``, ``sdk``…)."""
    return module.split(".")[1] if "." in module else "__init__"


def _edges() -> list[tuple[str, str]]:
    return sorted(
        {(_module_of(p), target) for p in PACKAGE.rglob("*.py") for target in _imports(p)}
    )


def violations(edges: list[tuple[str, str]]) -> list[str]:
    """The imports among ``edges`` (importer, imported) that break the rule."""
    found = []
    for source, target in edges:
        mine, theirs = _part(source), _part(target)
        if mine == theirs:
            continue
        if theirs not in LAYER or mine not in LAYER:
            found.append(f"{source} -> {target}: a part of the package no layer names")
        elif theirs in COMPONENTS and mine in COMPONENTS:
            found.append(f"{source} -> {target}: a component imports another component")
        elif LAYER[theirs] > LAYER[mine] or (
            LAYER[theirs] == LAYER[mine] and mine not in FOUNDATION
        ):
            found.append(f"{source} -> {target}: imports a layer at or above its own")
        elif mine == "testing" and theirs in COMPONENTS and target.split(".")[2:] != ["server"]:
            found.append(f"{source} -> {target}: test helpers start components by server only")
        elif mine == "cli" and theirs in COMPONENTS:
            inside = target.split(".")[2:3]
            if inside and inside[0] in CLI_MAY_READ:
                continue
            if (source, target) not in CLI_STILL_INSIDE:
                found.append(f"{source} -> {target}: the CLI goes through admin APIs")
    return found


def test_every_import_keeps_the_dependency_rule() -> None:
    edges = _edges()
    assert len(edges) > 200  # the walk found the package's imports
    assert violations(edges) == []


def test_the_cli_exceptions_are_all_still_needed() -> None:
    """An exception no import uses any more is struck from the list (it only shrinks)."""
    assert set(_edges()) >= CLI_STILL_INSIDE


def test_the_sdk_names_no_server_component() -> None:
    sdk = [(s, t) for s, t in _edges() if _part(s) == "sdk"]
    assert sdk
    assert {_part(t) for _, t in sdk} <= FOUNDATION | {"sdk"}


@pytest.mark.parametrize(
    ("edge", "why"),
    [
        (("trustmesh.sdk.tokens", "trustmesh.platform.listeners"), "at or above"),
        (("trustmesh.sdk.tokens", "trustmesh.auth.service"), "at or above"),
        (("trustmesh.platform.process", "trustmesh.gateway.app"), "at or above"),
        (("trustmesh.auth.admin", "trustmesh.identity.models"), "another component"),
        (("trustmesh.gateway.app", "trustmesh.auth.flow"), "another component"),
        (("trustmesh.crypto", "trustmesh.sdk.tls"), "at or above"),
        (("trustmesh.testing.identity", "trustmesh.identity.store"), "by server only"),
        (("trustmesh.cli.auth_cmd", "trustmesh.auth.db"), "admin APIs"),
        (("trustmesh.newpart.x", "trustmesh.errors"), "no layer names"),
    ],
)
def test_a_violation_is_found(edge: tuple[str, str], why: str) -> None:
    (found,) = violations([edge])
    assert why in found


def test_what_may_be_imported_passes() -> None:
    allowed = [
        ("trustmesh.auth.server", "trustmesh.platform.listeners"),
        ("trustmesh.gateway.app", "trustmesh.sdk.tokens"),
        ("trustmesh.platform.process", "trustmesh.sdk.x509source"),
        ("trustmesh.testing.identity", "trustmesh.identity.server"),
        ("trustmesh.cli.stack", "trustmesh.gateway.endpoint"),
        ("trustmesh.sdk.tokens", "trustmesh.crypto"),
    ]
    assert violations(allowed) == []
