"""``trustmesh k8s render [--config FILE] --out DIR``: Kubernetes manifests for the stack.

Exit codes: 0 written, 2 bad declaration or bad usage (nothing is written then). With
``--json`` the outcome is one JSON object on stdout: ``{"written": [...], "notes": [...]}``
or ``{"error": {"code", "detail", "problems"}}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from trustmesh.cli._common import EXIT_USAGE, ConfigOption, JsonOption, err, out
from trustmesh.config import load_config, resolve_config_path
from trustmesh.errors import ConfigError, TrustmeshError
from trustmesh.k8s import RenderOptions, render, unpinned_ports, workloads, write_files

__all__ = ["app"]

#: What the manifests cannot change: said at every render, so that nobody mistakes them
#: for a deployment that runs as it is.
LOOPBACK_NOTE = (
    "this version's components bind their listeners to 127.0.0.1: until they can bind the "
    "pod's address, only each pod's own probes reach them (see trustmesh.k8s)"
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
        declaration = load_config(path)
        key = None
        if verify_images_key is not None:
            try:
                key = verify_images_key.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--verify-images-key {verify_images_key}: {exc}") from None
        options = RenderOptions(
            images=tuple(image or ()),
            namespace=namespace,
            verify_key=key,
            verify_key_source=str(verify_images_key),
        )
        files = render(declaration, options)
        written = write_files(out_dir, files)
    except (TrustmeshError, OSError) as exc:
        _refuse(exc if isinstance(exc, TrustmeshError) else ConfigError(str(exc)), as_json)
    notes = [
        f"set {port.key}: {port.number} in {path.name} so that {pod.name} listens where its "
        "Service sends"
        if port.key
        else f"{pod.name}'s {port.name} port is not set by the declaration yet: the "
        f"manifests assume {port.number}"
        for pod, port in unpinned_ports(workloads(declaration))
    ]
    notes.append(LOOPBACK_NOTE)
    if declaration.dev:
        notes.append(
            "the declaration is in dev mode (dev: true): for one machine, not a cluster; the "
            "manifests still take the sealing key from the trustmesh-seal-key Secret"
        )
    if as_json:
        print(json.dumps({"written": [str(p) for p in written], "notes": notes}, indent=2))
        return
    for p in written:
        out.print(f"wrote {p}", markup=False)
    for note in notes:
        err.print(f"note: {note}", markup=False)
