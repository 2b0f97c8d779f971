"""Every pod listens where its Service and NetworkPolicies send: each process binds the
pod's own address (``status.podIP`` through the downward API) and each listener's port is
pinned in the pod's environment, whatever the declaration leaves to the system.

The pinned ports are read back the way the pod's process reads them — the declaration
loaded, then the pod's environment applied (``apply_listen_env``, what every component
and service runs at start) — not through the renderer's models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from k8srig import MINIMAL, PRODUCTION, documents, of_kind, render, shop, write

from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.config.listen import LISTEN_HOST_ENV, LISTEN_PORTS_ENV, apply_listen_env

#: What the downward API would put in TRUSTMESH_LISTEN_HOST in a pod.
POD_IP = "10.244.1.17"

#: Each component's listeners, by their name in the pod, and where the declaration the
#: process serves says its port is.
LISTENERS: dict[str, dict[str, Callable[[TrustmeshConfig], int]]] = {
    "identity": {"discovery": lambda c: c.identity.discovery_port},
    "auth": {"mtls": lambda c: c.auth.port, "public": lambda c: c.auth.public_port},
    "secrets": {"mtls": lambda c: c.secrets.port if c.secrets else 0},
    "audit": {
        "mtls": lambda c: c.audit.port if c.audit else 0,
        "console": lambda c: c.audit.console.port if c.audit and c.audit.console else 0,
    },
    "gateway": {
        "public": lambda c: c.gateway.port if c.gateway else 0,
        "internal": lambda c: c.gateway.internal_port if c.gateway else 0,
    },
}


@pytest.fixture(params=["shop", "prod", "min"])
def declared(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A declaration (the demo's leaves every port to the system; the production one pins
    them all; the minimal one pins none) and its rendered documents."""
    if request.param == "shop":
        config = shop(tmp_path)
    else:
        text = PRODUCTION if request.param == "prod" else MINIMAL
        config = write(tmp_path, text, db_password="p", redis_password="r")
    render(config, tmp_path / "out")
    return config, documents(tmp_path / "out")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_every_process_binds_the_pods_address(declared: tuple[Path, list[dict[str, Any]]]) -> None:
    _, docs = declared
    deployments = of_kind(docs, "Deployment")
    assert deployments
    for deployment in deployments:
        env = _container(deployment)["env"]
        (host,) = [e for e in env if e["name"] == LISTEN_HOST_ENV]
        assert host == {
            "name": LISTEN_HOST_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        }, deployment["metadata"]["name"]


def test_every_listener_is_pinned_where_its_service_sends(
    declared: tuple[Path, list[dict[str, Any]]],
) -> None:
    path, docs = declared
    config = load_config(path)
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        container = _container(deployment)
        sent = {p["name"]: p["port"] for p in services[name]["spec"]["ports"]}
        assert sent == {p["name"]: p["containerPort"] for p in container["ports"]}
        assert all(p["targetPort"] == p["name"] for p in services[name]["spec"]["ports"])
        given = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        pinned = {k: given[k] for k in (LISTEN_PORTS_ENV, "TRUSTMESH_PORT") if k in given}
        served = apply_listen_env(config, {LISTEN_HOST_ENV: POD_IP, **pinned})
        assert served.listen.host == POD_IP
        if name in LISTENERS:  # a component: each of its ports from the declaration it serves
            bound = {listener: port(served) for listener, port in LISTENERS[name].items()}
            assert {k: v for k, v in bound.items() if k in sent} == sent, name
            assert "TRUSTMESH_PORT" not in given
        else:  # a service: TRUSTMESH_PORT (sdk.runtime)
            assert sent == {"mtls": int(given["TRUSTMESH_PORT"])}, name
            assert LISTEN_PORTS_ENV not in given


def test_the_demo_leaves_its_ports_to_the_system_and_the_pods_pin_them(tmp_path: Path) -> None:
    """The test above is not vacuous: without the pod's environment, the demo's
    components would each listen on a port the system picks."""
    config = load_config(shop(tmp_path))
    for name, listeners in LISTENERS.items():
        assert all(port(config) == 0 for port in listeners.values()), name
