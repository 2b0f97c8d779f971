"""Where each running component says it listens: the endpoint file it writes under the
state directory (``<state>/<component>/endpoint.json``, and the identity service's
discovery snapshot ``<state>/discovery.json``, which names every service's instance).
Paths, not imports: whoever reads them — ``trustmesh status``, the console, the
collector's automated responses — depends on no component's code.

A component that looks for a peer asks :func:`peer_url`: the peer's variable
(:data:`URL_ENV`, ``TRUSTMESH_<COMPONENT>_URL``) first, its file second. Pods in
Kubernetes share no state directory, so ``trustmesh k8s render`` sets the variables to
the peers' Services; ``trustmesh up`` writes the files (and sets some variables to what
they say). Either only says *where*: every caller still checks the peer's SPIFFE ID over
mTLS, so a wrong URL reaches nobody it would trust."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UnavailableError
from trustmesh.platform.health import HEALTH_PATH, Target

__all__ = [
    "DISCOVERY",
    "ENDPOINTS",
    "HEALTH",
    "URL_ENV",
    "component_of",
    "endpoint_of",
    "gateway_worker_name",
    "gateway_worker_number",
    "instance",
    "peer_url",
    "read_json",
    "require_peer_url",
    "stopped_endpoint",
    "targets",
]

#: Components that say where they listen: their file (below the state directory), the
#: key of their mTLS listener's URL there, and what else of it ``status`` shows.
ENDPOINTS: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "auth": ("auth/endpoint.json", "url", ("issuer", "public_url", "metrics_url")),
    "secrets": ("secrets/endpoint.json", "url", ("metrics_url",)),
    "audit": ("audit/endpoint.json", "url", ("metrics_url", "console_url")),
    "gateway": ("gateway/endpoint.json", "internal_url", ("internal_url", "metrics_url")),
}
#: The identity service's discovery snapshot.
DISCOVERY: Final = "discovery.json"
#: Where a component answers for its health, where it is not /healthz (the secrets
#: service: Vault's sys/health, 200 only when initialised and unsealed).
HEALTH: Final = {"secrets": "/v1/sys/health", "audit": "/v1/health"}
#: The variable naming each component's mTLS listener (the names the sdk already reads:
#: sdk.discovery, sdk.delivery, sdk.secrets, sdk.runtime), read before its file.
URL_ENV: Final = {
    "identity": "TRUSTMESH_DISCOVERY_URL",
    **{name: f"TRUSTMESH_{name.upper()}_URL" for name in ("auth", "audit", "secrets", "gateway")},
}
#: What ``TRUSTMESH_AUDIT_URL`` says when the declaration has no collector.
_NOBODY: Final = "none"


_GATEWAY_WORKER: Final = re.compile(r"gateway(?:-([1-9][0-9]?))?")


def gateway_worker_name(worker: int) -> str:
    """The name of gateway process ``worker`` (``gateway.workers``): ``gateway`` for the
    first, ``gateway-k`` for the others (its log, its spool, its row in status)."""
    return "gateway" if worker == 1 else f"gateway-{worker}"


def gateway_worker_number(name: str) -> int | None:
    """The gateway worker ``name`` is (:func:`gateway_worker_name`'s inverse); None for
    any other name."""
    match = _GATEWAY_WORKER.fullmatch(name)
    if match is None:
        return None
    return int(match[1]) if match[1] else 1


def component_of(name: str) -> str:
    """The component a process ``up`` runs belongs to (a gateway worker's is the
    gateway: its SPIFFE ID, its health check)."""
    return "gateway" if gateway_worker_number(name) is not None else name


def endpoint_of(name: str) -> tuple[str, str, tuple[str, ...]] | None:
    """:data:`ENDPOINTS`' entry of ``name``; a gateway worker's names its own file
    (``gateway/endpoint-k.json``); None for a service (discovery names those)."""
    number = gateway_worker_number(name)
    if number is None or number == 1:
        return ENDPOINTS.get(name)
    _, key, extras = ENDPOINTS["gateway"]
    return (f"gateway/endpoint-{number}.json", key, extras)


def _file_of(name: str) -> tuple[str, str]:
    """The peer's file below the state directory, and the key of its mTLS URL there."""
    if name == "identity":
        return DISCOVERY, "url"
    path, key, _ = ENDPOINTS[name]
    return path, key


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def stopped_endpoint(endpoint: Path) -> Path:
    """Where a component that stopped leaves what its endpoint file said
    (``endpoint.stopped.json``): no reader of the endpoint file takes it for a live one,
    and the supervisor starting it again finds its ports there."""
    return endpoint.with_name(endpoint.stem + ".stopped" + endpoint.suffix)


def peer_url(state: Path, name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Where the component ``name`` (a key of :data:`URL_ENV`) takes mTLS connections:
    its variable when set (a pod's Service, which outlives the pod), else the URL its
    endpoint file under ``state`` gives (it may have moved: read at each call); None
    when neither says. Only *where*: the caller checks the peer's SPIFFE ID."""
    declared = (os.environ if environ is None else environ).get(URL_ENV[name], "").strip()
    if declared == _NOBODY:
        return None
    if declared:
        return declared
    path, key = _file_of(name)
    url = (read_json(state / path) or {}).get(key)
    return url if isinstance(url, str) and url else None


def require_peer_url(state: Path, name: str, environ: Mapping[str, str] | None = None) -> str:
    """:func:`peer_url`, or UnavailableError naming both places it looked: a component
    that cannot work without the peer does not start guessing."""
    url = peer_url(state, name, environ)
    if url is None:
        path, _ = _file_of(name)
        what = "discovery (the identity service)" if name == "identity" else name
        raise UnavailableError(
            f"{what} is not running: {URL_ENV[name]} is not set and {state / path} names no URL"
        )
    return url


def instance(doc: dict[str, object], name: str) -> dict[str, Any] | None:
    """``name``'s instance in the discovery snapshot the identity service writes."""
    listed = doc.get("instances")
    for found in listed if isinstance(listed, list) else []:
        if isinstance(found, dict) and found.get("service") == name:
            return found
    return None


def targets(
    config: TrustmeshConfig, state: Path, names: list[str], discovery: dict[str, Any]
) -> dict[str, Target]:
    """Whom to ask, and where: every component's mTLS listener, as it says it listens."""
    found: dict[str, Target] = {}
    if isinstance(discovery.get("url"), str):  # discovery, and the identity service's CA
        identity = config.component_spiffe_id("identity")
        found["discovery"] = Target(discovery["url"], identity, "/healthz")
    for name in names:
        entry = endpoint_of(name)
        if entry is not None:
            path, key, _ = entry
            url = (read_json(state / path) or {}).get(key)
            owner = component_of(name)
            spiffe_id, health = config.component_spiffe_id(owner), HEALTH.get(owner, "/healthz")
        else:
            url = (instance(discovery, name) or {}).get("url")
            spiffe_id, health = config.spiffe_id(name), HEALTH_PATH
        if isinstance(url, str):
            found[name] = Target(url, spiffe_id, health)
    return found
