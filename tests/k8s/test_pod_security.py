"""Every pod runs under the restricted Pod Security Standard, with requests, limits and
probes, and writes only where it must."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from k8srig import MINIMAL, PRODUCTION, documents, of_kind, render, shop, write

#: The volume types the restricted profile admits.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
COMPONENTS = {"identity", "auth", "audit", "secrets", "gateway"}


@pytest.fixture(params=["shop", "prod", "min"])
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> list[dict[str, Any]]:
    which = request.param
    if which == "shop":
        config = shop(tmp_path)
    else:
        text = PRODUCTION if which == "prod" else MINIMAL
        config = write(tmp_path, text, db_password="p", redis_password="r")
    render(config, tmp_path / "out")
    return documents(tmp_path / "out")


def test_every_pod_is_restricted(rendered: list[dict[str, Any]]) -> None:
    deployments = of_kind(rendered, "Deployment")
    assert deployments
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["serviceAccountName"] == name
        assert "hostNetwork" not in pod
        assert "hostPID" not in pod
        assert "hostIPC" not in pod
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] >= 10000  # not root, not a host system account
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert len(pod["containers"]) == 1
        assert "initContainers" not in pod
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["runAsUser"] == context["runAsUser"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["privileged"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert "add" not in security["capabilities"]
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_service_accounts_carry_no_api_token(rendered: list[dict[str, Any]]) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(rendered, "ServiceAccount")}
    pods = {d["metadata"]["name"] for d in of_kind(rendered, "Deployment")}
    assert set(accounts) == pods
    assert all(sa["automountServiceAccountToken"] is False for sa in accounts.values())


def test_every_container_has_requests_limits_and_probes(rendered: list[dict[str, Any]]) -> None:
    for deployment in of_kind(rendered, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}
        ports = {p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["python", "-c"]
            # it connects to one of the pod's own listeners, at the address they bind
            at = "(os.environ['TRUSTMESH_LISTEN_HOST'], {})"
            assert any(at.format(port) in command[2] for port in ports)


def test_pods_write_only_to_their_state_and_tmp(rendered: list[dict[str, Any]]) -> None:
    for deployment in of_kind(rendered, "Deployment"):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for volume in volumes.values():
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, (name, volume)
        mounts = pod["containers"][0]["volumeMounts"]
        writable = {m["mountPath"]: volumes[m["name"]] for m in mounts if not m.get("readOnly")}
        assert set(writable) == {"/tmp", "/var/lib/trustmesh"}, name
        assert "emptyDir" in writable["/tmp"]
        state = writable["/var/lib/trustmesh"]
        if name in COMPONENTS:  # keys and logs outlive the pod
            assert state["persistentVolumeClaim"] == {"claimName": f"{name}-state"}
        else:  # a service's event spool
            assert "sizeLimit" in state["emptyDir"]


def test_the_namespace_enforces_the_restricted_profile(rendered: list[dict[str, Any]]) -> None:
    (ns,) = of_kind(rendered, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    names = {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"}
    assert names == {ns["metadata"]["name"]}


def test_a_pod_per_component_and_service(tmp_path: Path) -> None:
    config = write(tmp_path, PRODUCTION, db_password="p", redis_password="r")
    render(config, tmp_path / "out")
    docs = documents(tmp_path / "out")
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    # every component the declaration enables, every service but the external one
    assert deployments == COMPONENTS | {"billing", "ledger", "reports"}
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    assert set(services) == deployments
    ledger = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "ledger")
    container = ledger["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["ledger-server", "--serve"]
    assert {"name": "TRUSTMESH_PORT", "value": "9100"} in container["env"]
    assert services["ledger"]["spec"]["ports"] == [
        {"name": "mtls", "port": 9100, "targetPort": "mtls", "protocol": "TCP"}
    ]
    gateway = services["gateway"]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in gateway] == [("public", 9000), ("internal", 9001)]
