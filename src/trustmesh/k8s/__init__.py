"""Kubernetes manifests for the whole stack of a declaration (``trustmesh k8s render``).

::

    files = render(config, RenderOptions(images=("registry.example/trustmesh@sha256:…",)))
    write_files(Path("deploy"), files)        # namespace.yaml, <pod>.yaml, networkpolicies.yaml

Pure but for :func:`write_files`: the declaration in, YAML text out, the same bytes for the
same input. The pods (:mod:`.workloads`), who may connect to whom (:mod:`.graph`), the
objects (:mod:`.manifests`), image pinning (:mod:`.images`) and the optional admission
policy (:mod:`.admission`).
"""

from __future__ import annotations

from trustmesh.k8s.graph import Edge, edges
from trustmesh.k8s.images import check_image
from trustmesh.k8s.render import RenderOptions, render, to_yaml, write_files
from trustmesh.k8s.workloads import Workload, unpinned_ports, workloads

__all__ = [
    "Edge",
    "RenderOptions",
    "Workload",
    "check_image",
    "edges",
    "render",
    "to_yaml",
    "unpinned_ports",
    "workloads",
    "write_files",
]
