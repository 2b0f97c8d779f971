"""``trustmesh k8s render [--config FILE] --out DIR``: Kubernetes manifests for the stack.

Exit codes: 0 written, 2 bad declaration or bad usage (nothing is written then). With
``--json`` the outcome is one JSON object on stdout: ``{"written": [...], "notes": [...]}``
or ``{"error": {"code", "detail", "problems"}}``.

Refused, besides a declaration that does not load: one with a ``testing:`` section (test-only
defence switches: each named as ``config check --strict`` names it) and one in dev mode
(its processes listen on loopback only; the pods listen on their own address).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from trustmesh.cli._common import EXIT_USAGE, ConfigOption, JsonOption, err, out
from trustmesh.config import TrustmeshConfig, load_config, resolve_config_path
from trustmesh.config.strict import switch_problems
from trustmesh.errors import ConfigError, TrustmeshError
from trustmesh.k8s import RenderOptions, render, write_files

__all__ = ["app"]

#: What the manifests cannot change: said at every render, so that nobody mistakes them
#: for a deployment that runs as it is.
CAVEAT_NOTE = (
    "the pods take their SVIDs from a SPIRE agent's Workload API (the SPIFFE CSI driver), "
    "not from trustmesh's identity service, and the console's sign-in, which finds the "
    "identity provider through its endpoint file, does not work across pods (see trustmesh.k8s)"
)

app = typer.Typer(
    help="Kubernetes manifests for the whole stack, from the declaration.",
    no_args_is_help=True,
    add_completion=False,
)


def _refuse(exc: TrustmeshError, as_json: bool) -> NoReturn:
    problems = list(getattr(exc, "problems", (exc.detail,)))
    if as_json:
        error = {"code": exc.code, "detail": exc.detail, "problems": problems}
        print(json.dumps({"error": error}, indent=2))
    else:
        for problem in problems:
            err.print(f"error: {problem}", markup=False)
    raise typer.Exit(EXIT_USAGE)


@app.command("render")
def render_cmd(
    out_dir: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory to write the manifests into.", file_okay=False),
    ],
    config: ConfigOption = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            help="Image pinned by digest (repo[:tag]@sha256:…) for every pod, or NAME=REF "
            "for one component or service; repeatable.",
        ),
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "trustmesh",
    verify_images_key: Annotated[
        Path | None,
        typer.Option(
            "--verify-images-key",
            help="cosign public key: also write a Kyverno policy admitting only images "
            "signed with it.",
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a Deployment, ServiceAccount and Service per component and service, the
    namespace (restricted Pod Security) and default-deny NetworkPolicies with the allows
    the declaration implies."""
    path = resolve_config_path(config)
    try:
        declaration = _declaration(path)
        options = _options(image or [], namespace, verify_images_key)
        written = write_files(out_dir, render(declaration, options))
    except (TrustmeshError, OSError) as exc:
        _refuse(exc if isinstance(exc, TrustmeshError) else ConfigError(str(exc)), as_json)
    notes = _notes(declaration)
    if as_json:
        print(json.dumps({"written": [str(p) for p in written], "notes": notes}, indent=2))
        return
    for p in written:
        out.print(f"wrote {p}", markup=False)
    for note in notes:
        err.print(f"note: {note}", markup=False)


def _declaration(path: Path) -> TrustmeshConfig:
    """The declaration at ``path``; refused with a ``testing:`` section, each switch named
    as ``config check --strict`` names it (the manifests run what the declaration says,
    and a declaration to deploy turns no defence off)."""
    declaration = load_config(path)
    problems = switch_problems(declaration, path.read_text(encoding="utf-8"), str(path))
    if problems:
        raise ConfigError("\n".join(problems), problems=tuple(problems))
    return declaration


def _options(images: list[str], namespace: str, verify_key: Path | None) -> RenderOptions:
    key = None
    if verify_key is not None:
        try:
            key = verify_key.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--verify-images-key {verify_key}: {exc}") from None
    return RenderOptions(
        images=tuple(images),
        namespace=namespace,
        verify_key=key,
        verify_key_source=str(verify_key),
    )


def _notes(declaration: TrustmeshConfig) -> list[str]:
    """What the operator must know of the manifests written: what they do not do yet, and
    the declaration's settings that a cluster needs and it leaves to their default."""
    notes = [CAVEAT_NOTE]
    if declaration.auth.issuer is None:
        notes.append(
            "auth.issuer is not set: the identity provider names itself by its pod's address, "
            "which changes with the pod and which browsers do not reach; set it to the URL "
            "they use"
        )
    console = declaration.audit.console if declaration.audit is not None else None
    if console is not None and console.public_url is None:
        notes.append(
            "audit.console.public_url is not set: the console's sign-in returns to a loopback "
            "address; set it to the URL browsers use"
        )
    return notes


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="k8s")
