"""Every pod is told where its peers listen: pods share no state directory, so the
endpoint files ``trustmesh up`` relies on are not there, and each peer lookup reads the
peer's variable first (:mod:`trustmesh.platform.endpoints`). The render must set, in
every pod, each other component's variable to that component's Service and the port the
Service sends to its mTLS listener — and the NetworkPolicies must let the pod reach it
where the declaration has it connect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from k8srig import MINIMAL, PRODUCTION, documents, of_kind, render, shop, write
from test_network_policies import allowed_pairs

from trustmesh.platform.endpoints import URL_ENV

#: The listener each component takes peers' mTLS connections on (its Service's port name).
MTLS_PORT = {"identity": "discovery", "gateway": "internal"}
NAMESPACE = "trustmesh"


def _rendered(tmp_path: Path, which: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if which == "shop":
        config = shop(tmp_path)
    elif which == "prod":
        config = write(tmp_path, PRODUCTION, db_password="p", redis_password="r")
    else:
        config = write(tmp_path, MINIMAL)
    out = tmp_path / "out"
    ran = render(config, out)
    assert ran.code == 0, ran.stderr
    return yaml.safe_load(config.read_text()), documents(out)


def _service_urls(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Each component's Service, as a URL to its mTLS port (read from the Service)."""
    found = {}
    for svc in of_kind(docs, "Service"):
        name = svc["metadata"]["name"]
        if name in URL_ENV:
            ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
            port = ports[MTLS_PORT.get(name, "mtls")]
            found[name] = f"https://{name}.{NAMESPACE}.svc:{port}"
    return found


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}


@pytest.mark.parametrize("which", ["shop", "prod", "min"])
def test_every_pod_is_given_each_peer_component_s_service(tmp_path: Path, which: str) -> None:
    declaration, docs = _rendered(tmp_path, which)
    services = _service_urls(docs)
    assert {"identity", "auth"} <= set(services)
    egress, _ = allowed_pairs(of_kind(docs, "NetworkPolicy"))
    reachable = {(a, b) for a, b, _ in egress}
    deployments = of_kind(docs, "Deployment")
    assert len(deployments) >= len(services)
    for deployment in deployments:
        pod, env = deployment["metadata"]["name"], _env(deployment)
        for peer, variable in URL_ENV.items():
            if peer == pod:
                assert variable not in env, pod  # its own listener is no peer's
            elif peer in services:
                assert env.get(variable) == services[peer], (pod, variable)
            elif peer == "audit":
                assert env.get(variable) == "none", pod  # no collector: nothing spools
            else:
                assert not env.get(variable), (pod, variable)
        # every peer a pod connects to is one it is told of (the graph needs a URL)
        for source, target in reachable:
            if source == pod and target in URL_ENV:
                assert env.get(URL_ENV[target]) == services[target], (pod, target)
    if "gateway" in declaration:
        assert ("auth", "gateway") in reachable  # the provider fetches the gateway's keys
        assert ("audit", "gateway") in reachable  # the collector's responses block there


def test_the_identity_service_is_told_where_the_collector_is(tmp_path: Path) -> None:
    """It starts first and finds the collector only through its variable in a pod (its
    events spool until it reaches it)."""
    _, docs = _rendered(tmp_path, "shop")
    (identity,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "identity"]
    assert _env(identity)["TRUSTMESH_AUDIT_URL"] == "https://audit.trustmesh.svc:8600"
    assert "SPIFFE_ENDPOINT_SOCKET" not in _env(identity)  # it is the CA: issues its own
