"""What ``trustmesh docs evidence`` asks the running stack, as the operator, and the
items :mod:`trustmesh.cli.evidence` judges from the answers.

- ``trustmesh status`` (:func:`~trustmesh.cli.stack.stack_status`): each component's
  SVID expiry;
- the identity service's admin API, ``GET /admin/v1/svids/last``: the dates of the last
  SVID issued to each of them, and of its chain's signing CA (the chain is read here and
  never handed on);
- the identity provider's admin API, ``GET /admin/v1/users`` (names, roles, MFA) and
  ``GET /admin/v1/keys`` (key ids and dates);
- the audit collector, ``POST /v1/verify`` and ``GET /v1/keys`` (its checkpoint key, and
  when it signed its first and latest checkpoint).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from trustmesh import crypto
from trustmesh.cli._admin import AdminError, Operator, admin_request, as_operator
from trustmesh.cli.evidence import (
    EvidenceItem,
    audit_item,
    audit_key_item,
    ca_item,
    certificates_item,
    mfa_item,
    signing_keys_item,
)
from trustmesh.cli.stack import stack_status
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UsageError

__all__ = ["Observed", "observe", "stack_items"]


@dataclass
class Observed:
    """The stack's answers, each with the moment it was read."""

    status: dict[str, Any]
    status_at: dt.datetime
    verify: dict[str, Any] | None = None
    verify_at: dt.datetime | None = None
    users: list[dict[str, Any]] = field(default_factory=list)
    users_at: dt.datetime | None = None
    keys: list[dict[str, Any]] = field(default_factory=list)
    keys_at: dt.datetime | None = None
    audit_keys: list[dict[str, Any]] = field(default_factory=list)
    svids: dict[str, dict[str, str]] = field(default_factory=dict)
    chain_dates: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _svids(operator: Operator, state: Path, spiffe_ids: list[str], seen: Observed) -> None:
    for spiffe_id in spiffe_ids:
        path = f"/admin/v1/svids/last?{urlencode({'spiffe_id': spiffe_id})}"
        try:
            doc = await admin_request(operator, state, "identity", "GET", path)
        except AdminError:  # none issued to it by this identity service (yet)
            continue
        seen.svids[spiffe_id] = {k: str(doc[k]) for k in ("not_before", "not_after", "issued_at")}
        if not seen.chain_dates:
            chain = crypto.certs_from_pem(str(doc["chain_pem"]).encode())
            seen.chain_dates = [(c.not_valid_before_utc, c.not_valid_after_utc) for c in chain]


async def _ask(config: TrustmeshConfig, state: Path, seen: Observed) -> None:
    spiffe_ids = [
        str(c["spiffe_id"])
        for c in seen.status.get("components") or ()
        if c.get("cert_kind") == "svid"
    ]
    async with as_operator(state, config) as operator:
        await _svids(operator, state, list(dict.fromkeys(spiffe_ids)), seen)
        seen.users = list(await admin_request(operator, state, "auth", "GET", "/admin/v1/users"))
        seen.users_at = _now()
        seen.keys = list(await admin_request(operator, state, "auth", "GET", "/admin/v1/keys"))
        seen.keys_at = _now()
        if config.audit is not None:
            body: dict[str, list[str]] = {"checkpoints": []}
            seen.verify = await admin_request(operator, state, "audit", "POST", "/v1/verify", body)
            keys = await admin_request(operator, state, "audit", "GET", "/v1/keys")
            seen.audit_keys = list(keys["keys"])
            seen.verify_at = _now()


def observe(config: TrustmeshConfig, config_path: Path, state: Path) -> Observed:
    """Ask the stack running on ``state``; UsageError when none runs there."""
    status = stack_status(config, config_path, state)
    if not status.get("running"):
        raise UsageError(f"no stack is running on {state} (start it with `trustmesh up`)")
    seen = Observed(status, _now())
    asyncio.run(_ask(config, state, seen))
    return seen


def stack_items(config: TrustmeshConfig, seen: Observed) -> list[EvidenceItem]:
    """The items the stack's answers evidence (the attack report's is the caller's)."""
    identity = config.identity
    items: list[EvidenceItem] = []
    if seen.verify is not None and seen.verify_at is not None:
        items.append(audit_item(seen.verify, seen.verify_at))
        if config.audit is not None:
            interval = config.audit.checkpoint_interval
            items.append(audit_key_item(seen.audit_keys, seen.verify, interval, seen.verify_at))
    else:
        items.append(
            audit_item(
                {"intact": False, "finding": {"message": "no audit collector declared"}},
                seen.status_at,
            )
        )
    items.append(
        certificates_item(
            seen.status, seen.svids, identity.max_svid_ttl, crypto.BACKDATE, seen.status_at
        )
    )
    items.append(ca_item(seen.chain_dates, identity.ca_ttl, crypto.BACKDATE, seen.status_at))
    items.append(mfa_item(seen.users, seen.users_at or seen.status_at))
    items.append(
        signing_keys_item(
            seen.keys,
            config.auth.key_rotation,
            config.auth.key_publish_delay,
            seen.keys_at or seen.status_at,
        )
    )
    return items
