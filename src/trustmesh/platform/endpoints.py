"""Where each running component says it listens: the endpoint file it writes under the
state directory (``<state>/<component>/endpoint.json``, and the identity service's
discovery snapshot ``<state>/discovery.json``, which names every service's instance).
Paths, not imports: whoever reads them — ``trustmesh status``, the console, the
collector's automated responses — depends on no component's code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from trustmesh.config import TrustmeshConfig
from trustmesh.platform.health import HEALTH_PATH, Target

__all__ = ["DISCOVERY", "ENDPOINTS", "HEALTH", "instance", "read_json", "targets"]

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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


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
        if name in ENDPOINTS:
            path, key, _ = ENDPOINTS[name]
            url = (read_json(state / path) or {}).get(key)
            spiffe_id, health = config.component_spiffe_id(name), HEALTH.get(name, "/healthz")
        else:
            url = (instance(discovery, name) or {}).get("url")
            spiffe_id, health = config.spiffe_id(name), HEALTH_PATH
        if isinstance(url, str):
            found[name] = Target(url, spiffe_id, health)
    return found
