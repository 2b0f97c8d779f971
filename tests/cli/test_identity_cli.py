"""`trustmesh identity …` and `trustmesh svid show`: validation, exit codes, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustmesh.events import read_events
from trustmesh.identity.store import SqliteIdentityStore
from trustmesh.testing import run_cli as tm


@pytest.fixture
def env(short_tmp: Path) -> tuple[Path, Path]:
    config = short_tmp / "trustmesh.yaml"
    config.write_text("trust_domain: cli.example\ndev: true\nidentity: {max_svid_ttl: 2h}\n")
    return config, short_tmp / "state"


def test_register_list_remove(env: tuple[Path, Path]) -> None:
    config, state = env
    reg = tm(
        "identity",
        "register",
        "--spiffe-id",
        "spiffe://cli.example/orders",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:path:/srv/orders/bin/worker",
        "--ttl",
        "30m",
        "--config",
        str(config),
        "--state",
        str(state),
        "--json",
    )
    assert reg.returncode == 0, reg.stderr
    entry = json.loads(reg.stdout)
    assert entry["selectors"] == ["unix:path:/srv/orders/bin/worker", "unix:uid:1000"]
    assert entry["ttl_seconds"] == 1800
    listed = json.loads(tm("identity", "list", "--state", str(state), "--json").stdout)
    assert [e["id"] for e in listed] == [entry["id"]]
    # the same entry twice is a conflict, not a duplicate
    dup = tm(
        "identity",
        "register",
        "--spiffe-id",
        "spiffe://cli.example/orders",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:path:/srv/orders/bin/worker",
        "--ttl",
        "30m",
        "--config",
        str(config),
        "--state",
        str(state),
    )
    assert dup.returncode == 2
    assert "already exists" in dup.stderr
    assert tm("identity", "remove", entry["id"], "--state", str(state)).returncode == 0
    assert json.loads(tm("identity", "list", "--state", str(state), "--json").stdout) == []
    missing = tm("identity", "remove", entry["id"], "--state", str(state))
    assert missing.returncode == 2
    reasons = [e["status_detail"] for e in read_events(state / "events" / "cli.jsonl")]
    assert reasons == ["entry-created", "entry-removed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--spiffe-id", "spiffe://other.example/x", "--selector", "unix:uid:1"],
            "not in trust domain",
        ),
        (["--spiffe-id", "spiffe://cli.example", "--selector", "unix:uid:1"], "not a workload"),
        (["--spiffe-id", "spiffe://cli.example/a/../b", "--selector", "unix:uid:1"], "segments"),
        (["--spiffe-id", "http://cli.example/x", "--selector", "unix:uid:1"], "spiffe://"),
        (["--spiffe-id", "spiffe://cli.example/x", "--selector", "unix:pid:1"], "unknown kind"),
        (
            ["--spiffe-id", "spiffe://cli.example/x", "--selector", "docker:label:x"],
            "expected unix",
        ),
        (["--spiffe-id", "spiffe://cli.example/x", "--selector", "unix:uid:abc"], "invalid uid"),
        (["--spiffe-id", "spiffe://cli.example/x\n", "--selector", "unix:uid:1"], "segments"),
        (["--spiffe-id", "spiffe://cli.example/x", "--selector", "unix:uid:1\n"], "invalid uid"),
        (
            ["--spiffe-id", "spiffe://cli.example/x", "--selector", "unix:sha256:1234"],
            "invalid sha256",
        ),
        (
            ["--spiffe-id", "spiffe://cli.example/x", "--selector", "unix:uid:1", "--ttl", "3h"],
            "enforced maximum",
        ),
        (
            ["--spiffe-id", "spiffe://cli.example/x", "--selector", "unix:uid:1", "--ttl", "5s"],
            "outside",
        ),
        (
            ["--spiffe-id", "spiffe://cli.example/x", "--selector", "unix:uid:1", "--ttl", "soon"],
            "--ttl",
        ),
    ],
)
def test_register_refuses_bad_input_with_exit_2(
    env: tuple[Path, Path], args: list[str], message: str
) -> None:
    config, state = env
    result = tm("identity", "register", *args, "--config", str(config), "--state", str(state))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    store = SqliteIdentityStore(state / "identity.db")
    try:
        assert store.list_entries() == [], "bad input changes nothing"
    finally:
        store.close()


def test_token_create_prints_once_and_stores_only_a_hash(env: tuple[Path, Path]) -> None:
    config, state = env
    result = tm(
        "identity",
        "token",
        "create",
        "--spiffe-id",
        "spiffe://cli.example/batch",
        "--ttl",
        "2m",
        "--config",
        str(config),
        "--state",
        str(state),
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 40
    for path in state.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"{path} holds the token"
    too_long = tm(
        "identity",
        "token",
        "create",
        "--spiffe-id",
        "spiffe://cli.example/batch",
        "--ttl",
        "30d",
        "--config",
        str(config),
        "--state",
        str(state),
    )
    assert too_long.returncode == 2


def test_bad_config_exits_2_naming_the_key(short_tmp: Path) -> None:
    config = short_tmp / "trustmesh.yaml"
    config.write_text("trust_domain: Shop.Example\nidentity:\n  svid_tll: 1h\n")
    for command in (
        ["config", "check"],
        ["up", "--detach", "--state", str(short_tmp / "s")],
        ["identity", "token", "create", "--spiffe-id", "spiffe://x/y"],
    ):
        result = tm(*command, "--config", str(config))
        assert result.returncode == 2, (command, result.stderr)
        assert "trust_domain" in result.stderr
        assert "identity.svid_tll" in result.stderr
        assert str(config) in result.stderr


def test_svid_show_unknown_id(env: tuple[Path, Path]) -> None:
    _, state = env
    result = tm("svid", "show", "spiffe://cli.example/nothing", "--state", str(state))
    assert result.returncode == 1
    assert "no SVID" in result.stderr
    bad = tm("svid", "show", "not-an-id", "--state", str(state))
    assert bad.returncode == 2


def test_a_symlinked_path_selector_is_refused(env: tuple[Path, Path], short_tmp: Path) -> None:
    """The kernel reports the resolved executable: a symlink's path could never match."""
    config, state = env
    target = short_tmp / "real-worker"
    target.write_text("#!/bin/sh\n")
    link = short_tmp / "worker"
    link.symlink_to(target)
    result = tm(
        "identity",
        "register",
        "--spiffe-id",
        "spiffe://cli.example/w",
        "--selector",
        f"unix:path:{link}",
        "--config",
        str(config),
        "--state",
        str(state),
    )
    assert result.returncode == 2
    assert f"unix:path:{target}" in result.stderr
