"""The search for secrets in a stack's events finds one wherever an event can be."""

from __future__ import annotations

from pathlib import Path

import pytest
from secretscan import UsedSecrets, assert_no_secret_recorded

TOKEN = "eyJhbGciOiJFUzI1NiJ9.a-token-of-this-test"


@pytest.mark.parametrize("where", ["events/auth.jsonl", "audit/ledger.db", "spool/gateway/0001"])
def test_a_secret_in_any_event_file_is_found(tmp_path: Path, where: str) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "gateway.jsonl").write_text('{"status_detail": "policy-deny"}\n')
    used = UsedSecrets()
    used.tokens({"access_token": TOKEN, "token_type": "Bearer"})
    used.add("short")  # too short to search for: it would match by chance
    assert_no_secret_recorded(tmp_path, used, at_least=1)
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00binary\x00" + TOKEN.encode() + b"\x00")
    with pytest.raises(AssertionError, match="a secret"):
        assert_no_secret_recorded(tmp_path, used, at_least=1)


def test_too_few_secrets_used_means_the_tests_did_not_run(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "auth.jsonl").write_text("{}\n")
    with pytest.raises(AssertionError, match="secrets were recorded"):
        assert_no_secret_recorded(tmp_path, UsedSecrets(), at_least=1)
