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
from dataclasses import dataclass
from pathlib import Path

from trustmesh.config import TrustmeshConfig
from trustmesh.platform.endpoints import DISCOVERY, ENDPOINTS, read_json, targets
from trustmesh.platform.health import Answer, ask
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["ServiceRow", "rows"]


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
    discovery = read_json(state / DISCOVERY) or {}
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
