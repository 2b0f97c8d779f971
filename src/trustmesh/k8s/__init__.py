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

What these manifests do not do yet (said here and by the command, not hidden):

- the components bind their listeners to 127.0.0.1, and take their ports from the
  declaration (0: one the system picks); until they can bind the pod's address, the
  Services reach nothing, and the declaration must pin the ports the manifests use
  (``trustmesh k8s render`` lists them; the gateway's internal port has no key yet);
- the Workload API socket the CSI driver mounts is a node agent's (SPIRE's); trustmesh's
  own identity service does not run as that agent, and it finds the collector only
  through the collector's endpoint file in a state directory that pods do not share (its
  events spool until then);
- egress to what lies outside the namespace (PostgreSQL, Redis, a SIEM, an OTLP
  collector) is denied: add a policy for each where the declaration uses one;
- an ``external`` service has no pod, and its declared calls no allow; the console's
  health view (the collector asking every component) is not allowed either.
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
