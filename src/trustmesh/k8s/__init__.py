"""Kubernetes manifests for the whole stack of a declaration (``trustmesh k8s render``).

::

    files = render(config, RenderOptions(images=("registry.example/trustmesh@sha256:…",)))
    write_files(Path("deploy"), files)        # namespace.yaml, <pod>.yaml, networkpolicies.yaml

Pure but for :func:`write_files`: the declaration in, YAML text out, the same bytes for the
same input. The pods (:mod:`.workloads`), who may connect to whom (:mod:`.graph`), the
objects (:mod:`.manifests`), image pinning (:mod:`.images`) and the optional admission
policy (:mod:`.admission`).

What the cluster must provide, by name (nothing secret is ever written here): the
ConfigMap ``trustmesh-declaration`` (``trustmesh.yaml`` and the files it names), the Secret
``trustmesh-seal-key`` (key ``seal-key``) and ``<component>-tls`` Secrets for listeners with
declared certificates, the SPIFFE CSI driver (``csi.spiffe.io``) with a Workload API on each
node, a CNI that enforces NetworkPolicies, and Kyverno for the verify-images policy.

Every process binds its pod's address and the port its Service sends to, both pinned in
the pod's environment (:mod:`.manifests`, :mod:`trustmesh.config.listen`); a dev-mode
declaration, which listens on loopback only, is refused.

What these manifests do not do yet (said here and by the command, not hidden):

- the Workload API socket the CSI driver mounts is a node agent's (SPIRE's); trustmesh's
  own identity service does not run as that agent;
- the console's sign-in finds the identity provider through its endpoint file in the
  collector's state directory, which pods do not share (it needs the provider's public
  URL and issuer as well, which no variable gives): it does not work across pods. Every
  other lookup of a peer reads the peer's variable first (``TRUSTMESH_DISCOVERY_URL``,
  ``TRUSTMESH_AUTH_URL``, ``TRUSTMESH_AUDIT_URL``, ``TRUSTMESH_SECRETS_URL``,
  ``TRUSTMESH_GATEWAY_URL``: :mod:`trustmesh.platform.endpoints`), which every pod is
  given with the peers' Services;
- the identity provider's issuer is, unless ``auth.issuer`` says otherwise, its own URL:
  the pod's address, which changes with the pod and which browsers do not reach (and the
  console's sign-in returns to ``audit.console.public_url``, by default a loopback one);
- egress to what lies outside the namespace (PostgreSQL, Redis, a SIEM, an OTLP
  collector) is denied: add a policy for each where the declaration uses one;
- an ``external`` service has no pod, and its declared calls no allow; the console's
  health view (the collector asking every component) is not allowed either.
"""

from __future__ import annotations

from trustmesh.k8s.graph import Edge, edges
from trustmesh.k8s.images import check_image
from trustmesh.k8s.render import RenderOptions, render, to_yaml, write_files
from trustmesh.k8s.workloads import Workload, workloads

__all__ = [
    "Edge",
    "RenderOptions",
    "Workload",
    "check_image",
    "edges",
    "render",
    "to_yaml",
    "workloads",
    "write_files",
]
