"""No secret in any event (issue 16): every e2e stack keeps the secrets its tests used —
tokens, passwords, one-time codes and TOTP secrets, join tokens, authorization codes and
verifiers, secret values — and, once the stack is down (its events flushed and
delivered), every event it recorded is searched for each: each component's event log
and, where the stack runs the audit collector, its ledger, checkpoints and the spools."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

#: Shorter values would match by chance.
MIN_LENGTH = 8


class UsedSecrets:
    """The secrets one stack's tests used."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, *values: object) -> None:
        self.values.update(str(v) for v in values if v)

    def tokens(self, answer: Mapping[str, object]) -> None:
        """Every ``*_token`` of a token endpoint's answer."""
        self.add(*(v for k, v in answer.items() if k.endswith("_token")))

    def update(self, values: Iterable[object]) -> None:
        self.add(*values)


def event_files(state: Path) -> list[Path]:
    return [
        p
        for p in (
            *(state / "events").glob("*.jsonl"),
            *(state / "audit").rglob("*"),
            *(state / "spool").rglob("*"),
        )
        if p.is_file()
    ]


def assert_no_secret_recorded(state: Path, used: UsedSecrets, *, at_least: int) -> None:
    """Every event file of the stack at ``state`` is free of every secret in ``used``
    (at least ``at_least`` of them long enough to search for: the tests ran)."""
    wanted = {v for v in used.values if len(v) >= MIN_LENGTH}
    assert len(wanted) >= at_least, f"only {len(wanted)} secrets were recorded as used"
    files = event_files(state)
    assert any(p.name.endswith(".jsonl") for p in files), "no event log to search"
    for path in files:
        data = path.read_bytes()
        for value in wanted:
            assert value.encode() not in data, f"a secret ({value[:4]}…) is in {path.name}"
