"""Kubernetes objects for the pods of a declaration, as plain dicts (built in a fixed
order, so that the same declaration always gives the same bytes).

Every pod runs under the Pod Security Standards' *restricted* profile, which the
namespace also enforces (``pod-security.kubernetes.io/enforce: restricted``): non-root
uid, read-only root filesystem, no privilege escalation, every capability dropped, the
runtime's default seccomp profile, no Kubernetes API token (no component calls the
Kubernetes API). A pod writes only to its ``emptyDir`` ``/tmp`` and to its state
directory (a volume claim for a component, whose keys and logs must outlive the pod; an
``emptyDir`` for a service's event spool).

Secrets are references only: the sealing key of the components' keys at rest comes from
the Secret ``trustmesh-seal-key`` (``secretKeyRef``), TLS certificates of the listeners
for browsers from a Secret per component projected beside the declaration, which itself
comes from the ConfigMap ``trustmesh-declaration`` the operator creates from
``trustmesh.yaml`` and its files (it may hold database or Redis URLs with passwords: it is
never copied into a manifest). Workloads other than the identity service get their SVIDs
from the Workload API socket the SPIFFE CSI driver (``csi.spiffe.io``) mounts.

Listeners: every process of a pod binds the pod's own address, which it learns from
the downward API (``TRUSTMESH_LISTEN_HOST`` from ``status.podIP``: the narrowest bind
that other pods reach, in an IPv4 or an IPv6 cluster alike; it is also the address a
service registers with discovery), and every listener's port is pinned in the pod's
environment (``TRUSTMESH_LISTEN_PORTS``, by declaration key, for a component;
``TRUSTMESH_PORT`` for a service) to the number its Service and NetworkPolicies use,
whatever the declaration leaves to the system (:mod:`trustmesh.config.listen`). Metrics,
plain HTTP, stay on the pod's loopback.

Probes: the components' health endpoints answer only over mTLS to an SVID of the trust
domain, which a kubelet does not have; each probe therefore opens a TCP connection to
the pod's mTLS listener, at the pod's address, from inside the pod (an ``exec`` probe:
it needs no connection from the node, which not every CNI lets through the default-deny
NetworkPolicies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any, Final

from trustmesh.config import TrustmeshConfig
from trustmesh.config.listen import LISTEN_HOST_ENV, LISTEN_PORTS_ENV
from trustmesh.errors import UsageError
from trustmesh.k8s.graph import Edge
from trustmesh.k8s.workloads import Workload

__all__ = [
    "DECLARATION_CONFIGMAP",
    "SEAL_KEY_SECRET",
    "UID",
    "deployment",
    "labels",
    "namespace",
    "network_policies",
    "service",
    "service_account",
    "state_claim",
    "tls_secret_name",
]

UID: Final = 10001
PART_OF: Final = "trustmesh"
DECLARATION_CONFIGMAP: Final = "trustmesh-declaration"
SEAL_KEY_SECRET: Final = "trustmesh-seal-key"  # noqa: S105 - the Secret's name, not a value
SEAL_KEY_ITEM: Final = "seal-key"
CONFIG_DIR: Final = "/etc/trustmesh"
STATE_DIR: Final = "/var/lib/trustmesh"
WORKLOAD_API_DIR: Final = "/spiffe-workload-api"
WORKLOAD_API_SOCKET: Final = f"unix://{WORKLOAD_API_DIR}/spire-agent.sock"
#: The sdk's and components' environment (sdk.delivery, sdk.discovery, sdk.runtime,
#: sdk.secrets, crypto): names only, so that this module depends on no component.
ENV_AUDIT_URL: Final = "TRUSTMESH_AUDIT_URL"
ENV_DISCOVERY_URL: Final = "TRUSTMESH_DISCOVERY_URL"
ENV_SEAL_KEY: Final = "TRUSTMESH_SEAL_KEY"
#: Where each component's mTLS listener is, by the variable every peer reads before the
#: component's endpoint file (trustmesh.platform.endpoints.URL_ENV): pods share no state
#: directory, so each pod is told its peers' Services.
ENV_PEER_URLS: Final = {
    "identity": ENV_DISCOVERY_URL,
    "audit": ENV_AUDIT_URL,
    **{name: f"TRUSTMESH_{name.upper()}_URL" for name in ("auth", "secrets", "gateway")},
}
#: Where each process listens (the foundation's names: the loader reads them).
ENV_LISTEN_HOST: Final = LISTEN_HOST_ENV
ENV_LISTEN_PORTS: Final = LISTEN_PORTS_ENV
NO_COLLECTOR: Final = "none"

#: (requests, limits) of a component's and of a service's container.
RESOURCES: Final = {
    "component": ({"cpu": "100m", "memory": "128Mi"}, {"cpu": "1", "memory": "512Mi"}),
    "service": ({"cpu": "50m", "memory": "96Mi"}, {"cpu": "500m", "memory": "256Mi"}),
}
STATE_SIZE: Final = "1Gi"
TMP_SIZE: Final = "64Mi"
SPOOL_SIZE: Final = "256Mi"

#: Why a checkov check does not apply, on the objects it does not apply to.
SEAL_KEY_ENV_SKIP: Final = (
    "CKV_K8S_35=the component reads its sealing key only from TRUSTMESH_SEAL_KEY "
    "(crypto.load_seal_key); it comes from a secretKeyRef, never a value"
)


def labels(name: str, kind: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/component": kind,
    }


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def _meta(name: str, ns: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "labels": labels(name, kind), **extra}


def namespace(ns: str) -> dict[str, Any]:
    """The namespace, with the restricted Pod Security Standard enforced on it."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns,
            "labels": {
                "app.kubernetes.io/part-of": PART_OF,
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "pod-security.kubernetes.io/audit": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
            },
        },
    }


def service_account(pod: Workload, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(pod.name, ns, pod.kind),
        "automountServiceAccountToken": False,
    }


def state_claim(pod: Workload, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(f"{pod.name}-state", ns, pod.kind),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": STATE_SIZE}},
        },
    }


def service(pod: Workload, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(pod.name, ns, pod.kind),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(pod.name),
            "ports": [
                {"name": p.name, "port": p.number, "targetPort": p.name, "protocol": "TCP"}
                for p in pod.ports
            ],
        },
    }


def url(pod: Workload, ns: str) -> str:
    return f"https://{pod.name}.{ns}.svc:{pod.mtls.number}"


# -- the Deployment ---------------------------------------------------------------------------
def tls_secret_name(name: str) -> str:
    return f"{name}-tls"


def _tls_files(config: TrustmeshConfig, name: str) -> tuple[str, str] | None:
    """The certificate and key files a component's browser-facing listener reads
    (relative to the declaration), when the declaration names them."""
    pair: tuple[str | None, str | None] = (None, None)
    if name == "gateway" and config.gateway is not None:
        pair = (config.gateway.tls_cert, config.gateway.tls_key)
    elif name == "auth":
        pair = (config.auth.public_tls_cert, config.auth.public_tls_key)
    elif name == "audit" and config.audit is not None and config.audit.console is not None:
        pair = (config.audit.console.tls_cert, config.audit.console.tls_key)
    cert, key = pair
    if cert is None or key is None:
        return None
    for key_path, value in ((f"{name} tls_cert", cert), (f"{name} tls_key", key)):
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or value in ("", "."):
            raise UsageError(
                f"{key_path} {value!r} cannot be projected beside the declaration in a pod: "
                "expected a path relative to trustmesh.yaml, without '..'"
            )
    return cert, key


def _probe(port: int) -> dict[str, Any]:
    """A TCP connection to ``port`` at the pod's address (where the listener is bound)."""
    check = (
        "import os, socket; "
        f"socket.create_connection((os.environ[{ENV_LISTEN_HOST!r}], {port}), 2).close()"
    )
    return {
        "exec": {"command": ["python", "-c", check]},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def _command(config: TrustmeshConfig, pod: Workload) -> list[str]:
    declaration = f"{CONFIG_DIR}/trustmesh.yaml"
    if pod.kind == "component":
        return [
            "python",
            "-m",
            f"trustmesh.{pod.name}",
            "--config",
            declaration,
            "--state",
            STATE_DIR,
        ]
    spec = config.services[pod.name]
    if spec.command:
        return list(spec.command)
    return ["python", "-m", "trustmesh.sdk.runner", str(spec.run)]


def _env(
    config: TrustmeshConfig, pod: Workload, pods: Mapping[str, Workload], ns: str
) -> list[dict[str, Any]]:
    def value(name: str, text: str) -> dict[str, Any]:
        return {"name": name, "value": text}

    env = [
        value("TRUSTMESH_EVENTS", f"{STATE_DIR}/events/{pod.name}.jsonl"),
        {"name": ENV_LISTEN_HOST, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if pod.name != "identity":
        env.append(value("SPIFFE_ENDPOINT_SOCKET", WORKLOAD_API_SOCKET))
    env += [value(name, text) for name, text in _peer_urls(pod, pods, ns)]
    if pod.kind == "component":
        pinned = " ".join(f"{port.key}={port.number}" for port in pod.ports)
        env.append(value(ENV_LISTEN_PORTS, pinned))
        secret = {"secretKeyRef": {"name": SEAL_KEY_SECRET, "key": SEAL_KEY_ITEM}}
        env.append({"name": ENV_SEAL_KEY, "valueFrom": secret})
        return env
    env += [
        value("TRUSTMESH_CONFIG", f"{CONFIG_DIR}/trustmesh.yaml"),
        value("TRUSTMESH_SERVICE", pod.name),
        value("TRUSTMESH_PORT", str(pod.mtls.number)),
    ]
    return env


def _peer_urls(pod: Workload, pods: Mapping[str, Workload], ns: str) -> list[tuple[str, str]]:
    """Each other component's variable and its Service's URL (its mTLS port). A missing
    collector is said (``none``: its events are not spooled for nobody); another missing
    component is left unset, except for a service, whose sdk reads an empty one as
    absent, as ``trustmesh up`` gives it."""
    found = []
    for name, variable in ENV_PEER_URLS.items():
        if name == pod.name:
            continue  # its own listener is its own: it reads no variable for it
        if name in pods:
            found.append((variable, url(pods[name], ns)))
        elif name == "audit":
            found.append((variable, NO_COLLECTOR))
        elif pod.kind == "service":
            found.append((variable, ""))
    return found


def _volumes(
    config: TrustmeshConfig, pod: Workload
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the container's mounts of them."""
    sources: list[dict[str, Any]] = [{"configMap": {"name": DECLARATION_CONFIGMAP}}]
    if pod.kind == "component" and (files := _tls_files(config, pod.name)) is not None:
        cert, key = files
        items = [{"key": "tls.crt", "path": cert}, {"key": "tls.key", "path": key}]
        sources.append({"secret": {"name": tls_secret_name(pod.name), "items": items}})
    volumes: list[dict[str, Any]] = [
        {"name": "declaration", "projected": {"sources": sources, "defaultMode": 0o440}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "state", "persistentVolumeClaim": {"claimName": f"{pod.name}-state"}}
        if pod.stateful
        else {"name": "state", "emptyDir": {"sizeLimit": SPOOL_SIZE}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "declaration", "mountPath": CONFIG_DIR, "readOnly": True},
        # a path in the pod (its own emptyDir), not a temporary file of this process
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108  # nosec B108 # the pod's emptyDir
        {"name": "state", "mountPath": STATE_DIR},
    ]
    if pod.name != "identity":
        volumes.append(
            {
                "name": "spiffe-workload-api",
                "csi": {"driver": "csi.spiffe.io", "readOnly": True},
            }
        )
        mounts.append(
            {"name": "spiffe-workload-api", "mountPath": WORKLOAD_API_DIR, "readOnly": True}
        )
    return volumes, mounts


def _security() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the container's security context (restricted)."""
    seccomp = {"type": "RuntimeDefault"}
    pod = {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": seccomp,
    }
    container = {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": dict(seccomp),
    }
    return pod, container


def deployment(
    config: TrustmeshConfig, pod: Workload, pods: Mapping[str, Workload], ns: str, image: str
) -> dict[str, Any]:
    volumes, mounts = _volumes(config, pod)
    pod_security, container_security = _security()
    requests, limits = RESOURCES[pod.kind]
    container = {
        "name": pod.name,
        "image": image,
        "imagePullPolicy": "Always",
        "command": _command(config, pod),
        "env": _env(config, pod, pods, ns),
        "ports": [
            {"name": p.name, "containerPort": p.number, "protocol": "TCP"} for p in pod.ports
        ],
        "resources": {"requests": dict(requests), "limits": dict(limits)},
        "securityContext": container_security,
        "livenessProbe": {**_probe(pod.mtls.number), "initialDelaySeconds": 15},
        "readinessProbe": {**_probe(pod.mtls.number), "initialDelaySeconds": 3},
        "volumeMounts": mounts,
    }
    annotations = {"checkov.io/skip1": SEAL_KEY_ENV_SKIP} if pod.kind == "component" else {}
    meta = _meta(pod.name, ns, pod.kind, **({"annotations": annotations} if annotations else {}))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            # one writer of a ReadWriteOnce state volume at a time
            "strategy": {"type": "Recreate"} if pod.stateful else {"type": "RollingUpdate"},
            "selector": {"matchLabels": _selector(pod.name)},
            "template": {
                "metadata": {"labels": labels(pod.name, pod.kind)},
                "spec": {
                    "serviceAccountName": pod.name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


# -- NetworkPolicies --------------------------------------------------------------------------
DNS_EGRESS: Final = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def _peer(name: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": _selector(name)}}


def _grouped(pairs: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    """One rule per port, its peers sorted."""
    by_port: dict[int, set[str]] = {}
    for peer, port in pairs:
        by_port.setdefault(port, set()).add(peer)
    return [
        {"peers": [_peer(p) for p in sorted(peers)], "ports": [{"protocol": "TCP", "port": port}]}
        for port, peers in sorted(by_port.items())
    ]


def network_policies(
    pods: Iterable[Workload], allowed: frozenset[Edge], ns: str
) -> list[dict[str, Any]]:
    """Deny every connection in and out of every pod of the namespace, then allow each
    pod exactly its edges (both ends: the caller's egress and the callee's ingress), DNS,
    and connections from anywhere to its public listeners."""
    policies: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "default-deny",
                "namespace": ns,
                "labels": {"app.kubernetes.io/part-of": PART_OF},
            },
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }
    ]
    for pod in pods:
        ingress: list[dict[str, Any]] = [
            {"from": rule["peers"], "ports": rule["ports"]}
            for rule in _grouped((e.source, e.port) for e in allowed if e.target == pod.name)
        ]
        public = [p for p in pod.ports if p.public]
        if public:  # browsers and API clients, from anywhere
            ingress.append({"ports": [{"protocol": "TCP", "port": p.number} for p in public]})
        egress: list[dict[str, Any]] = [
            {"to": [_peer(e.target)], "ports": [{"protocol": "TCP", "port": e.port}]}
            for e in sorted(allowed)
            if e.source == pod.name
        ]
        egress.append(DNS_EGRESS)
        spec: dict[str, Any] = {
            "podSelector": {"matchLabels": _selector(pod.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        }
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": _meta(f"{pod.name}-allow", ns, pod.kind),
                "spec": spec,
            }
        )
    return policies
