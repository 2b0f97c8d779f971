"""The console's services page: every component and service of the stack, each asked
over mTLS how it is (:mod:`trustmesh.platform.health`, as the collector), with the
SPIFFE ID it must present and the expiry of the certificate it presented.

Where each listens is what it says in its endpoint file under the state directory (a
declared service: the identity service's discovery snapshot); what is not running has
no URL and is shown down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustmesh.audit.endpoint import endpoint_path as audit_endpoint_path
from trustmesh.auth.endpoint import endpoint_path as auth_endpoint_path
from trustmesh.config import TrustmeshConfig
from trustmesh.gateway.endpoint import endpoint_path as gateway_endpoint_path
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.platform.health import HEALTH_PATH, Answer, Target, ask
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.secrets.endpoint import endpoint_path as secrets_endpoint_path

__all__ = ["ENDPOINTS", "HEALTH", "ServiceRow", "instance", "read_json", "rows", "targets"]

#: Components that say where they listen: their file, the key of their mTLS listener's
#: URL there, and what else of it `status` shows.
ENDPOINTS: dict[str, tuple[Callable[[Path], Path], str, tuple[str, ...]]] = {
    "auth": (auth_endpoint_path, "url", ("issuer", "public_url", "metrics_url")),
    "secrets": (secrets_endpoint_path, "url", ("metrics_url",)),
    "audit": (audit_endpoint_path, "url", ("metrics_url", "console_url")),
    "gateway": (gateway_endpoint_path, "internal_url", ("internal_url", "metrics_url")),
}
#: Where a component answers for its health, where it is not /healthz (the secrets
#: service: Vault's sys/health, 200 only when initialised and unsealed).
HEALTH = {"secrets": "/v1/sys/health", "audit": "/v1/health"}


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
            url = (read_json(path(state)) or {}).get(key)
            spiffe_id, health = config.component_spiffe_id(name), HEALTH.get(name, "/healthz")
        else:
            url = (instance(discovery, name) or {}).get("url")
            spiffe_id, health = config.spiffe_id(name), HEALTH_PATH
        if isinstance(url, str):
            found[name] = Target(url, spiffe_id, health)
    return found


@dataclass(frozen=True)
class ServiceRow:
    name: str
    kind: str  # "component" or "service"
    spiffe_id: str
    url: str | None
    healthy: bool
    cert_expires: str | None
    seconds_left: int | None


def _names(config: TrustmeshConfig) -> list[str]:
    names = ["audit", "auth"]
    if config.secrets is not None:
        names.append("secrets")
    if config.gateway is not None:
        names.append("gateway")
    return names + [n for n, s in config.services.items() if not s.external]


async def rows(
    config: TrustmeshConfig, state: Path, tls: RotatingTLS, now: dt.datetime
) -> list[ServiceRow]:
    """Every component and service, asked at once (each within the health timeout)."""
    discovery = read_json(IdentityPaths(state).discovery) or {}
    names = _names(config)
    asked = targets(config, state, names, discovery)
    answers = await asyncio.gather(*(ask(tls, t) for t in asked.values()))
    by_name: dict[str, Answer] = dict(zip(asked, answers, strict=True))
    found = []
    for name in ["discovery", *names]:
        target = asked.get(name)
        answer = by_name.get(name, Answer())
        if name == "discovery":
            spiffe_id = config.component_spiffe_id("identity")
        elif name in ENDPOINTS:
            spiffe_id = config.component_spiffe_id(name)
        else:
            spiffe_id = config.spiffe_id(name)
        left = None
        if answer.cert_expires is not None:
            left = int((dt.datetime.fromisoformat(answer.cert_expires) - now).total_seconds())
        found.append(
            ServiceRow(
                name="identity" if name == "discovery" else name,
                kind="service" if name in config.services else "component",
                spiffe_id=spiffe_id,
                url=target.url if target is not None else None,
                healthy=answer.ok,
                cert_expires=answer.cert_expires,
                seconds_left=left,
            )
        )
    return found
