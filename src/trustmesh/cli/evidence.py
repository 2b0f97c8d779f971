"""Compliance evidence from a running stack, judged (pure: the answers the components
gave, and ``now``, in; items out). :mod:`trustmesh.cli.evidence_collect` asks the stack.

Each item says what was checked, passes or fails with its figures, when it was
observed, and the controls it evidences:

- **NIST SP 800-207** (Zero Trust Architecture), the seven tenets of section 2.1
  (:data:`NIST_TENETS`, quoted in short);
- **PCI DSS 4.0** requirements 8 (identify users and authenticate access to system
  components) and 10 (log and monitor all access to system components and cardholder
  data), cited by number only where the number is certain (:data:`PCI_DSS`).

Nothing secret is ever an input's part that reaches an item: users are read as their
names, roles and MFA flag, keys as their ids and dates, certificates as their dates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "KEY_SLACK",
    "NIST_TENETS",
    "PCI_DSS",
    "EvidenceItem",
    "attack_item",
    "audit_item",
    "ca_item",
    "certificates_item",
    "controls_of",
    "document",
    "mfa_item",
    "signing_keys_item",
]

#: NIST SP 800-207 section 2.1, the tenets of zero trust.
NIST_TENETS: Final = {
    "NIST SP 800-207 tenet 1": "All data sources and computing services are considered resources.",
    "NIST SP 800-207 tenet 2": "All communication is secured regardless of network location.",
    "NIST SP 800-207 tenet 3": "Access to individual enterprise resources is granted on a "
    "per-session basis.",
    "NIST SP 800-207 tenet 4": "Access to resources is determined by dynamic policy.",
    "NIST SP 800-207 tenet 5": "The enterprise monitors and measures the integrity and "
    "security posture of all owned and associated assets.",
    "NIST SP 800-207 tenet 6": "All resource authentication and authorization are dynamic and "
    "strictly enforced before access is allowed.",
    "NIST SP 800-207 tenet 7": "The enterprise collects as much information as possible about "
    "the current state of assets, network infrastructure and communications and uses it to "
    "improve its security posture.",
}
#: PCI DSS 4.0: requirements 8 and 10, and the sub-requirements cited by number.
PCI_DSS: Final = {
    "PCI DSS 4.0 req. 8": "Identify users and authenticate access to system components.",
    "PCI DSS 4.0 8.4.1": "MFA is implemented for all non-console access into the CDE for "
    "personnel with administrative access.",
    "PCI DSS 4.0 req. 10": "Log and monitor all access to system components and cardholder data.",
    "PCI DSS 4.0 10.2.1": "Audit logs are enabled and active for all system components.",
    "PCI DSS 4.0 10.3.2": "Audit log files are protected to prevent modifications by individuals.",
    "PCI DSS 4.0 10.3.4": "File integrity monitoring or change-detection mechanisms are used "
    "on audit logs.",
}
_T = "NIST SP 800-207 tenet "
_CONTROLS: Final = {**NIST_TENETS, **PCI_DSS}
#: Margin over a key's rotation age before it counts as overdue (the provider checks
#: every second; a minute leaves room for a restart and clock steps).
KEY_SLACK: Final = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class EvidenceItem:
    name: str
    checked: str
    passed: bool
    result: str  # the figures, in a sentence
    at: dt.datetime
    controls: tuple[str, ...]
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checked": self.checked,
            "passed": self.passed,
            "result": self.result,
            "at": _iso(self.at),
            "controls": [{"id": c, "text": _CONTROLS[c]} for c in self.controls],
            "figures": dict(self.figures),
        }


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n) + (
        f"{seconds}s" if seconds or not (days or hours or minutes) else ""
    )
    return sign + text


def controls_of(items: Iterable[EvidenceItem]) -> list[str]:
    found = {c for item in items for c in item.controls}
    return [c for c in _CONTROLS if c in found]


# -- the items ---------------------------------------------------------------------------
def attack_item(report: Mapping[str, Any], at: dt.datetime, source: str) -> EvidenceItem:
    """``trustmesh attack --json``'s document: every control must have held."""
    controls = report.get("controls") if isinstance(report, Mapping) else None
    checked = (
        f"the attack report ({source}): each control attacked from outside must hold, "
        "with the audit events that recorded its refusals"
    )
    mapped = (
        _T + "2",
        _T + "3",
        _T + "6",
        _T + "7",
        "PCI DSS 4.0 req. 8",
        "PCI DSS 4.0 req. 10",
    )
    if not isinstance(controls, list) or not controls:
        return EvidenceItem(
            "attack-report", checked, False, "no controls in the report", at, mapped
        )
    failed = sorted(str(c.get("name")) for c in controls if not c.get("passed"))
    events = sum(len(c.get("event_ids") or ()) for c in controls)
    held = len(controls) - len(failed)
    result = f"{held} of {len(controls)} controls held; {events} audit events as evidence"
    if failed:
        result += "; failed: " + ", ".join(failed)
    figures = {
        "controls": len(controls),
        "held": held,
        "failed": failed,
        "audit_events": events,
        "held_controls": sorted(str(c.get("name")) for c in controls if c.get("passed")),
    }
    return EvidenceItem("attack-report", checked, not failed, result, at, mapped, figures)


def audit_item(verify: Mapping[str, Any], at: dt.datetime) -> EvidenceItem:
    """The collector's ``POST /v1/verify``: the chain intact, under signed checkpoints."""
    intact = bool(verify.get("intact"))
    records, covered = int(verify.get("records") or 0), int(verify.get("covered") or 0)
    result = (
        f"intact: {records} records, {covered} under {verify.get('checkpoints')} signed "
        f"checkpoints, {verify.get('unsigned')} newer not signed yet"
    )
    finding = verify.get("finding")
    if not intact:
        message = finding.get("message") if isinstance(finding, Mapping) else None
        result = f"NOT intact: {message or 'the collector found the chain broken'}"
    passed = intact and records > 0
    if intact and records == 0:
        result = "the audit log holds no record"
    figures = {
        k: verify.get(k)
        for k in ("intact", "records", "covered", "unsigned", "checkpoints", "pruned")
    }
    return EvidenceItem(
        "audit-log-integrity",
        "the audit collector's verification of its hash-chained log against its signed "
        "checkpoints (POST /v1/verify, as the operator)",
        passed,
        result,
        at,
        (
            _T + "5",
            _T + "7",
            "PCI DSS 4.0 req. 10",
            "PCI DSS 4.0 10.2.1",
            "PCI DSS 4.0 10.3.2",
            "PCI DSS 4.0 10.3.4",
        ),
        figures,
    )


def _moment(value: object) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def audit_key_item(
    keys: Sequence[Mapping[str, Any]],
    verify: Mapping[str, Any],
    interval: dt.timedelta,
    at: dt.datetime,
) -> EvidenceItem:
    """The collector's checkpoint key (``GET /v1/keys``): its age as its checkpoints
    date it (the first it signed), and that it still signs — records newer than the last
    checkpoint wait at most ``audit.checkpoint_interval`` (+:data:`KEY_SLACK`). The key
    has no rotation bound to hold it to: its age is reported."""
    problems: list[str] = []
    rows = []
    for key in keys:
        first, last = _moment(key.get("first_signed")), _moment(key.get("last_signed"))
        row = {"key_id": str(key.get("key_id")), "alg": str(key.get("alg"))}
        if first is not None and last is not None:
            row |= {"signing_since": _iso(first), "age": _span(at - first)}
            row |= {"last_signed": _iso(last), "last_signed_ago": _span(at - last)}
            if int(verify.get("unsigned") or 0) > 0 and at - last > interval + KEY_SLACK:
                problems.append(f"key {row['key_id']} last signed {_span(at - last)} ago")
        elif int(verify.get("records") or 0) > 0:
            problems.append(f"key {row['key_id']} has signed no checkpoint")
        rows.append(row)
    if len(keys) != 1:
        problems.append(f"{len(keys)} checkpoint keys published (expected exactly one)")
    ages = ", ".join(f"{r['key_id']} age {r.get('age', 'unused')}" for r in rows) or "none"
    result = f"checkpoint key {ages}; checkpoints at most {_span(interval)} apart"
    if problems:
        result += "; " + "; ".join(problems)
    return EvidenceItem(
        "audit-key-age",
        "the audit collector's checkpoint-signing key (GET /v1/keys, as the operator): "
        "its age from the first checkpoint it signed, and checkpoints still signed "
        "within audit.checkpoint_interval (+1 minute) while records arrive",
        not problems,
        result,
        at,
        (_T + "5", "PCI DSS 4.0 req. 10", "PCI DSS 4.0 10.3.2"),
        {"max_interval": _span(interval), "keys": rows},
    )


def certificates_item(
    status: Mapping[str, Any],
    issued: Mapping[str, Mapping[str, Any]],
    max_svid_ttl: dt.timedelta,
    backdate: dt.timedelta,
    now: dt.datetime,
) -> EvidenceItem:
    """Every component's SVID (``trustmesh status``): not expired, and as issued (the
    identity service's last SVID for that SPIFFE ID) no longer-lived than
    ``identity.max_svid_ttl`` (plus the backdating of its start)."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for component in status.get("components") or ():
        if component.get("cert_kind") != "svid":
            continue
        name, spiffe_id = str(component.get("name")), str(component.get("spiffe_id"))
        expires = component.get("cert_expires")
        row: dict[str, Any] = {"component": name, "spiffe_id": spiffe_id, "expires": expires}
        if not isinstance(expires, str):
            problems.append(f"{name}: no certificate observed")
            rows.append(row)
            continue
        left = dt.datetime.fromisoformat(expires) - now
        row["remaining"] = _span(left)
        if left <= dt.timedelta(0):
            problems.append(f"{name}: expired {expires}")
        svid = issued.get(spiffe_id)
        row["lifetime"] = None  # the identity service's own SVID is in no issuance record
        if svid is not None:
            lifetime = dt.datetime.fromisoformat(
                str(svid["not_after"])
            ) - dt.datetime.fromisoformat(str(svid["not_before"]))
            row["lifetime"] = _span(lifetime)
            if lifetime > max_svid_ttl + backdate:
                problems.append(f"{name}: issued for {_span(lifetime)}")
        if left > max_svid_ttl + backdate:
            problems.append(f"{name}: {_span(left)} left, above the bound")
        rows.append(row)
    if not rows:
        problems.append("no component's SVID was observed")
    lifetimes = [r["lifetime"] for r in rows if r.get("lifetime")]
    result = (
        f"{len(rows)} SVIDs observed, bound {_span(max_svid_ttl)} (identity.max_svid_ttl); "
        f"issued lifetimes ({len(lifetimes)} on record): "
        f"{', '.join(sorted(set(lifetimes))) or 'none'}; the rest bounded by their time left"
    )
    if problems:
        result += "; " + "; ".join(problems)
    return EvidenceItem(
        "certificate-lifetimes",
        "each component's X.509-SVID (trustmesh status) is valid, and was issued for no "
        "longer than the declaration's identity.max_svid_ttl",
        not problems,
        result,
        now,
        (_T + "2", _T + "6"),
        {"bound": _span(max_svid_ttl), "svids": rows},
    )


def ca_item(
    chain_dates: Sequence[tuple[dt.datetime, dt.datetime]],
    ca_ttl: dt.timedelta,
    backdate: dt.timedelta,
    now: dt.datetime,
) -> EvidenceItem:
    """The identity service's signing CA (the second certificate of an SVID's chain): in
    its validity, and its age (and lifetime) within ``identity.ca_ttl``."""
    checked = (
        "the identity service's signing CA, read from the chain of an SVID it issued: "
        "valid now, its age within identity.ca_ttl"
    )
    mapped = (_T + "5", _T + "6")
    if len(chain_dates) < 2:
        return EvidenceItem(
            "identity-ca-age", checked, False, "no CA certificate observed", now, mapped
        )
    not_before, not_after = chain_dates[1]
    age, lifetime = now - not_before, not_after - not_before
    passed = not_before <= now < not_after and lifetime <= ca_ttl + backdate and age <= ca_ttl
    result = (
        f"age {_span(age)} of at most {_span(ca_ttl)} (identity.ca_ttl); valid until "
        f"{_iso(not_after)}"
    )
    figures = {
        "not_before": _iso(not_before),
        "not_after": _iso(not_after),
        "age": _span(age),
        "max_age": _span(ca_ttl),
    }
    return EvidenceItem("identity-ca-age", checked, passed, result, now, mapped, figures)


def mfa_item(users: Sequence[Mapping[str, Any]], at: dt.datetime) -> EvidenceItem:
    """Every user with the ``admin`` role (GET /admin/v1/users) is enrolled in MFA."""
    admins = [u for u in users if "admin" in (u.get("roles") or ())]
    without = sorted(str(u.get("username")) for u in admins if not u.get("mfa"))
    result = f"{len(admins) - len(without)} of {len(admins)} admins enrolled in MFA"
    if without:
        result += "; without: " + ", ".join(without)
    return EvidenceItem(
        "admin-mfa-coverage",
        "every user holding the admin role at the identity provider (GET /admin/v1/users) "
        "is enrolled in a second factor (TOTP)",
        not without,
        result,
        at,
        (_T + "6", "PCI DSS 4.0 req. 8", "PCI DSS 4.0 8.4.1"),
        {"users": len(users), "admins": len(admins), "admins_without_mfa": without},
    )


def signing_keys_item(
    keys: Sequence[Mapping[str, Any]],
    rotation: dt.timedelta,
    publish_delay: dt.timedelta,
    now: dt.datetime,
) -> EvidenceItem:
    """The provider's token-signing keys (GET /admin/v1/keys): one active key, signing
    for no longer than ``auth.key_rotation`` + ``auth.key_publish_delay`` (a new key is
    published at the rotation age and signs after the delay) + :data:`KEY_SLACK`."""
    limit = rotation + publish_delay + KEY_SLACK
    active = [k for k in keys if k.get("status") == "active"]
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    for key in active:
        since = dt.datetime.fromisoformat(str(key["signs_from"]).replace("Z", "+00:00"))
        age = now - since
        rows.append({"kid": str(key.get("kid")), "signs_from": _iso(since), "age": _span(age)})
        if age > limit:
            problems.append(f"key {key.get('kid')} has signed for {_span(age)}")
    if len(active) != 1:
        problems.append(f"{len(active)} active keys (expected exactly one)")
    ages = ", ".join(r["age"] for r in rows) or "none"
    result = f"active key age {ages}, at most {_span(limit)}; {len(keys)} keys published"
    if problems:
        result += "; " + "; ".join(problems)
    return EvidenceItem(
        "signing-key-age",
        "the identity provider's token-signing keys (GET /admin/v1/keys): the active key "
        "is younger than auth.key_rotation + auth.key_publish_delay (+1 minute)",
        not problems,
        result,
        now,
        (_T + "5", _T + "6", "PCI DSS 4.0 req. 8"),
        {"max_age": _span(limit), "active": rows, "keys": len(keys)},
    )


def document(
    items: Sequence[EvidenceItem], *, trust_domain: str, generated: dt.datetime
) -> dict[str, Any]:
    """The JSON document: every item, and every control with the items that evidence it."""
    return {
        "trust_domain": trust_domain,
        "generated_at": _iso(generated),
        "passed": all(item.passed for item in items),
        "items": [item.to_dict() for item in items],
        "controls": [
            {
                "id": control,
                "text": _CONTROLS[control],
                "items": [i.name for i in items if control in i.controls],
                "passed": all(i.passed for i in items if control in i.controls),
            }
            for control in controls_of(items)
        ],
    }
