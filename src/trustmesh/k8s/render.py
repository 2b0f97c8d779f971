"""Render the whole stack of a declaration to YAML files, in memory first: a refusal
(a declaration in dev mode, an image without a digest, an unknown name, a key that is
not a public key) writes nothing.

A dev-mode declaration (``dev: true``) is refused: its processes listen on loopback only
(:mod:`trustmesh.config.listen`), and the pods listen on their own address.

Files, each a stream of YAML documents in a fixed order (same input, same bytes):

- ``namespace.yaml`` — the namespace, restricted Pod Security enforced;
- ``<pod>.yaml`` — per component and service: ServiceAccount, its state claim (a
  component), Deployment, Service;
- ``networkpolicies.yaml`` — default deny, then each pod's allows (:mod:`.graph`);
- ``verify-images.yaml`` — with a signer's key only: the Kyverno admission policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from trustmesh.config import TrustmeshConfig
from trustmesh.errors import ConfigError, UsageError
from trustmesh.k8s import manifests
from trustmesh.k8s.admission import check_public_key, verify_images_policy
from trustmesh.k8s.graph import edges
from trustmesh.k8s.images import images_for
from trustmesh.k8s.workloads import workloads

__all__ = ["RenderOptions", "render", "to_yaml", "write_files"]

_NAMESPACE_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class RenderOptions:
    """``images``: ``--image`` options (``REF`` or ``NAME=REF``); ``verify_key``: a
    cosign public key (PEM) for the admission policy, or None for none."""

    images: tuple[str, ...] = ()
    namespace: str = "trustmesh"
    verify_key: str | None = None
    verify_key_source: str = "the verify-images key"


def to_yaml(documents: Iterable[Mapping[str, Any]]) -> str:
    return "".join(
        "---\n" + yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, width=100)
        for doc in documents
    )


def render(config: TrustmeshConfig, options: RenderOptions) -> dict[str, str]:
    """File name → YAML text of every manifest of ``config``'s stack."""
    if config.dev:
        raise ConfigError(
            "dev: true: a dev-mode declaration listens on loopback only, and the pods listen "
            "on their own address (expected dev: false, with certificates for the "
            "browser-facing listeners)"
        )
    if config.shared is not None and config.shared.postgres is not None:
        raise ConfigError(
            "shared.postgres: `trustmesh up` provisions the components' roles and keeps their "
            "passwords in its state directory, which pods do not share (expected each "
            "component's own database: URL — auth.database, secrets.database, "
            "audit.database — with its role made by the database's owner)"
        )
    ns = options.namespace
    if _NAMESPACE_RE.fullmatch(ns) is None or ns in ("default", "kube-system", "kube-public"):
        raise UsageError(
            f"namespace {ns!r} is not usable: expected a DNS label of its own "
            "(lower-case letters, digits and '-'), not default or kube-*"
        )
    pods = workloads(config)
    by_name = {pod.name: pod for pod in pods}
    images = images_for(options.images, by_name)
    public_key = (
        check_public_key(options.verify_key, source=options.verify_key_source)
        if options.verify_key is not None
        else None
    )
    files = {"namespace.yaml": to_yaml([manifests.namespace(ns)])}
    for pod in pods:
        docs = [manifests.service_account(pod, ns)]
        if pod.stateful:
            docs.append(manifests.state_claim(pod, ns))
        docs.append(manifests.deployment(config, pod, by_name, ns, images[pod.name]))
        docs.append(manifests.service(pod, ns))
        files[f"{pod.name}.yaml"] = to_yaml(docs)
    files["networkpolicies.yaml"] = to_yaml(
        manifests.network_policies(pods, edges(config, pods), ns)
    )
    if public_key is not None:
        policy = verify_images_policy(images.values(), ns, public_key)
        files["verify-images.yaml"] = to_yaml([policy])
    return dict(sorted(files.items()))


#: The names of the files the last render wrote into a directory: a re-render removes
#: those it no longer writes (a service dropped from the declaration), so that
#: ``kubectl apply -f DIR`` does not bring its pod back.
INDEX: Final = ".trustmesh-k8s"


def write_files(out: Path, files: Mapping[str, str]) -> list[Path]:
    """Write ``files`` into ``out`` (made if missing); a file the last render wrote there
    and this one does not is removed; any other file is left alone."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    index = out / INDEX
    before = index.read_text(encoding="utf-8").splitlines() if index.is_file() else []
    written = []
    for name, text in files.items():
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    for name in sorted(set(before) - set(files)):
        if "/" not in name and name.endswith(".yaml"):  # only what a render names
            (out / name).unlink(missing_ok=True)
    index.write_text("".join(f"{name}\n" for name in files), encoding="utf-8")
    return written
