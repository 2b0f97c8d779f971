"""The closed vocabulary (trustmesh.reasons): nothing outside it spells a code as a
literal, every refusal has one answer, a status has one spelling on every component,
and an event carries only a member."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trustmesh import errors, events
from trustmesh.errors import UsageError
from trustmesh.reasons import ANSWERS, STATUS_CODES, Activity, Reason, parse

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "trustmesh"
CODES = {m.value for m in Reason} | {m.value for m in Activity}

#: The reasons that allow: no refusal answers them.
ALLOWING = {
    Reason.OK,
    Reason.ATTESTED,
    Reason.DISCOVERY_LOOKUP,
    Reason.TOKEN_ISSUED,
    Reason.TOKEN_INTROSPECTED,
    Reason.ADMIN_READ,
    Reason.LOGIN_SUCCEEDED,
    Reason.ROUTE_MATCHED,
    Reason.REQUEST_FORWARDED,
    Reason.API_KEY_VALID,
    Reason.POLICY_ALLOW,
}


def kebab_literals(source: str) -> list[tuple[int, str]]:
    """The string literals in ``source`` that spell a code of the vocabulary in
    kebab-case (a one-word code such as ``ok`` is also an ordinary word)."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "-" in node.value
        and node.value in CODES
    ]


def test_no_code_is_spelled_as_a_literal_outside_the_vocabulary() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {value!r}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "reasons.py"
        for line, value in kebab_literals(path.read_text())
    ]
    assert found == []


def test_the_literal_check_finds_one() -> None:
    source = 'raise InvalidTokenError("late", reason="token-expired")\nx = "not-a-code"\n'
    assert kebab_literals(source) == [(1, "token-expired")]


def test_every_refusal_has_one_answer_and_only_refusals_do() -> None:
    assert set(ANSWERS) == set(Reason) - ALLOWING
    assert all(400 <= a.status <= 599 for a in ANSWERS.values())
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", a.code) for a in ANSWERS.values())


def test_a_status_is_spelled_one_way_on_every_component() -> None:
    """403 is ``forbidden`` in the table, the gateway's relayed errors, the listener's
    answers and the exception tree alike."""
    spellings: dict[int, set[str]] = {}
    for a in ANSWERS.values():
        spellings.setdefault(a.status, set()).add(a.code)
    for status, code in STATUS_CODES.items():
        spellings.setdefault(status, set()).add(code)
    assert spellings[403] == {"forbidden"}
    assert spellings[404] == {"not_found"}
    assert spellings[429] == {"rate_limited"}
    tree = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.TrustmeshError)
    ]
    for cls in tree:  # where the table spells a status one way, the tree does too
        if cls.status < 500 and len(spellings.get(cls.status, ())) == 1:
            assert {cls.code} == spellings[cls.status], cls.__name__


def test_parse_is_closed_and_prefers_the_decision() -> None:
    assert parse("token-expired") is Reason.TOKEN_EXPIRED
    assert parse("svid-issued") is Activity.SVID_ISSUED
    assert parse("token-revoked") is Reason.TOKEN_REVOKED  # spelled alike: the decision
    for bad in ("token-expird", "", "TOKEN-EXPIRED", "token_expired"):
        with pytest.raises(ValueError, match="not a reason"):
            parse(bad)


def _event(reason: object) -> events.Event:
    return events.event(
        events.EventClass.API_ACTIVITY,
        activity_id=99,
        activity_name="Other",
        component="test",
        decision=events.Decision.DENY,
        reason=reason,  # type: ignore[arg-type]
        message="m",
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_an_event_carries_a_member_checked_by_value() -> None:
    assert _event(Reason.POLICY_DENY).reason is Reason.POLICY_DENY
    assert _event("policy-deny").reason is Reason.POLICY_DENY
    assert _event(Activity.KEY_CREATED).reason is Activity.KEY_CREATED
    assert _event(Reason.POLICY_DENY).to_ocsf()["status_detail"] == "policy-deny"
    for bad in ("policy-denied", "made-up-reason", 7, None):
        with pytest.raises(UsageError, match="reason"):
            _event(bad)


def test_every_member_is_exercised_by_a_test() -> None:
    """Each member is named (``Reason.X``, ``Activity.X``) or spelled in some test other
    than this file and the layer test: a code no test reaches is a code no one knows
    still works."""
    here = {Path(__file__).resolve(), (ROOT / "tests" / "test_layers.py").resolve()}
    text = "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.resolve() not in here
    )
    missing = [
        f"{type(m).__name__}.{m.name}"
        for m in [*Reason, *Activity]
        if f"{type(m).__name__}.{m.name}" not in text
        and f'"{m.value}"' not in text
        and f"'{m.value}'" not in text
    ]
    assert missing == []
