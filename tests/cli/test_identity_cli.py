"""`trustmesh identity …` and `trustmesh svid show`, against a running identity service
(its admin API, as the operator): validation, exit codes, events — and without one, a
clear refusal."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirig import events_of, identity_on, tm
from spiffe import WorkloadApiClient

from trustmesh.testing import RunningIdentityServer, run_cli

TD = "cli.example"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"


@pytest.fixture
def env(short_tmp: Path) -> tuple[Path, Path]:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(f"trust_domain: {TD}\ndev: true\nidentity: {{max_svid_ttl: 2h}}\n")
    return config, short_tmp / "state"


@pytest.fixture
def identity(env: tuple[Path, Path]) -> Iterator[RunningIdentityServer]:
    with identity_on(*env) as running:
        yield running


def _args(env: tuple[Path, Path]) -> tuple[str, ...]:
    return ("--config", str(env[0]), "--state", str(env[1]))


def _entries(identity: RunningIdentityServer) -> list[object]:
    return identity.call(identity.server.store.list_entries)


REGISTER = (
    "identity", "register", "--spiffe-id", f"spiffe://{TD}/orders",
    "--selector", "unix:uid:1000", "--selector", "unix:path:/srv/orders/bin/worker",
    "--ttl", "30m",
)  # fmt: skip


def test_register_list_remove(env: tuple[Path, Path], identity: RunningIdentityServer) -> None:
    reg = tm(*REGISTER, *_args(env), "--json")
    assert reg.returncode == 0, reg.stderr
    entry = json.loads(reg.stdout)
    assert entry["selectors"] == ["unix:path:/srv/orders/bin/worker", "unix:uid:1000"]
    assert entry["ttl_seconds"] == 1800
    listed = json.loads(tm("identity", "list", *_args(env), "--json").stdout)
    assert [e["id"] for e in listed] == [entry["id"]]
    table = tm("identity", "list", *_args(env))
    assert entry["id"] in table.stdout
    # the same entry twice is a conflict, not a duplicate
    dup = tm(*REGISTER, *_args(env))
    assert dup.returncode == 2
    assert "already exists" in dup.stderr
    assert len(_entries(identity)) == 1
    removed = tm("identity", "remove", entry["id"], *_args(env))
    assert removed.returncode == 0, removed.stderr
    assert json.loads(tm("identity", "list", *_args(env), "--json").stdout) == []
    missing = tm("identity", "remove", entry["id"], *_args(env))
    assert missing.returncode == 2
    # the service recorded each change, naming the operator; the CLI wrote nothing
    changes = [e for e in events_of(env[1], "identity") if e["status_detail"].startswith("entry-")]
    assert [e["status_detail"] for e in changes] == ["entry-created", "entry-removed"]
    assert all(e["unmapped"]["trustmesh"]["peer_spiffe_id"] == OPERATOR for e in changes)
    assert not (env[1] / "events" / "cli.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--spiffe-id", "spiffe://other.example/x", "--selector", "unix:uid:1"],
            "not in trust domain",
        ),
        (["--spiffe-id", f"spiffe://{TD}", "--selector", "unix:uid:1"], "not a workload"),
        (["--spiffe-id", f"spiffe://{TD}/a/../b", "--selector", "unix:uid:1"], "segments"),
        (["--spiffe-id", f"http://{TD}/x", "--selector", "unix:uid:1"], "spiffe://"),
        (["--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:pid:1"], "unknown kind"),
        (["--spiffe-id", f"spiffe://{TD}/x", "--selector", "docker:label:x"], "expected unix"),
        (["--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:uid:abc"], "invalid uid"),
        (["--spiffe-id", f"spiffe://{TD}/x\n", "--selector", "unix:uid:1"], "segments"),
        (["--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:uid:1\n"], "invalid uid"),
        (
            ["--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:sha256:1234"],
            "invalid sha256",
        ),
        (
            ["--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:uid:1", "--ttl", "3h"],
            "enforced maximum",
        ),
        (
            ["--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:uid:1", "--ttl", "5s"],
            "outside",
        ),
        (
            ["--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:uid:1", "--ttl", "soon"],
            "--ttl",
        ),
    ],
)
def test_register_refuses_bad_input_with_exit_2(
    env: tuple[Path, Path], identity: RunningIdentityServer, args: list[str], message: str
) -> None:
    result = tm("identity", "register", *args, *_args(env))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert _entries(identity) == [], "bad input changes nothing"


def test_token_create_prints_once_and_stores_only_a_hash(
    env: tuple[Path, Path], identity: RunningIdentityServer
) -> None:
    create = ("identity", "token", "create", "--spiffe-id", f"spiffe://{TD}/batch")
    result = tm(*create, "--ttl", "2m", *_args(env))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 40
    identity.call(identity.server.service.flush_issued)
    for path in env[1].rglob("*"):
        if path.is_file() and not path.is_socket():
            assert token.encode() not in path.read_bytes(), f"{path} holds the token"
    made = [e for e in events_of(env[1], "identity") if e["status_detail"] == "token-created"]
    assert made[-1]["unmapped"]["trustmesh"]["spiffe_id"] == f"spiffe://{TD}/batch"
    too_long = tm(*create, "--ttl", "30d", *_args(env))
    assert too_long.returncode == 2
    assert "join token TTL" in too_long.stderr


def test_bad_config_exits_2_naming_the_key(short_tmp: Path) -> None:
    config = short_tmp / "trustmesh.yaml"
    config.write_text("trust_domain: Shop.Example\nidentity:\n  svid_tll: 1h\n")
    for command in (
        ["config", "check"],
        ["up", "--detach", "--state", str(short_tmp / "s")],
        ["identity", "token", "create", "--spiffe-id", "spiffe://x/y"],
    ):
        result = run_cli(*command, "--config", str(config))
        assert result.returncode == 2, (command, result.stderr)
        assert "trust_domain" in result.stderr
        assert "identity.svid_tll" in result.stderr
        assert str(config) in result.stderr


def test_svid_show(env: tuple[Path, Path], identity: RunningIdentityServer) -> None:
    missing = tm("svid", "show", f"spiffe://{TD}/nothing", *_args(env))
    assert missing.returncode == 1
    assert "no SVID" in missing.stderr
    assert tm("svid", "show", "not-an-id", *_args(env)).returncode == 2
    # the command's own identity: issued a moment ago, to this process
    shown = tm("svid", "show", OPERATOR, "--json", "--pem", *_args(env))
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["uri_sans"] == [OPERATOR]
    assert facts["expired"] is False
    assert facts["chain_length"] == 2
    assert facts["chain_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" not in shown.stdout


def test_a_symlinked_path_selector_is_refused(
    env: tuple[Path, Path], identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """The kernel reports the resolved executable: a symlink's path could never match."""
    target = short_tmp / "real-worker"
    target.write_text("#!/bin/sh\n")
    link = short_tmp / "worker"
    link.symlink_to(target)
    result = tm(
        "identity", "register", "--spiffe-id", f"spiffe://{TD}/w",
        "--selector", f"unix:path:{link}", *_args(env),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"unix:path:{target}" in result.stderr
    assert _entries(identity) == []


def test_the_installed_command_runs_it(
    env: tuple[Path, Path], identity: RunningIdentityServer
) -> None:
    """As a real process: its own operator token, its own SVID, the same answers."""
    made = run_cli(*REGISTER, *_args(env), "--json")
    assert made.returncode == 0, made.stderr
    listed = run_cli("identity", "list", *_args(env), "--json")
    assert [e["id"] for e in json.loads(listed.stdout)] == [json.loads(made.stdout)["id"]]


@pytest.mark.parametrize(
    "command",
    [
        ("identity", "list"),
        ("identity", "remove", "0123456789abcdef"),
        ("identity", "token", "create", "--spiffe-id", f"spiffe://{TD}/batch"),
        ("identity", "register", "--spiffe-id", f"spiffe://{TD}/x", "--selector", "unix:uid:1"),
        ("svid", "show", OPERATOR),
    ],
)
def test_without_a_running_identity_service_the_command_says_so(
    env: tuple[Path, Path], command: tuple[str, ...]
) -> None:
    result = run_cli(*command, *_args(env))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the identity service is not running" in result.stderr
    assert "trustmesh up" in result.stderr
    assert "Traceback" not in result.stderr
    assert not env[1].exists(), "nothing is created"


def test_a_declaration_of_another_trust_domain_is_refused(
    env: tuple[Path, Path], identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """--config names the stack the command means; the running one must be it."""
    other = short_tmp / "other.yaml"
    other.write_text("trust_domain: other.example\ndev: true\n")
    result = tm(*REGISTER, "--config", str(other), "--state", str(env[1]))
    assert result.returncode == 2
    assert "is not trust domain other.example" in result.stderr
    assert _entries(identity) == []
    # without --config, the stack's own trust domain is used
    listed = tm("identity", "list", "--state", str(env[1]), "--json")
    assert listed.returncode == 0, listed.stderr


def _held(identity: RunningIdentityServer) -> set[str]:
    """The SPIFFE IDs the Workload API gives this process now."""
    with WorkloadApiClient(identity.address) as client:
        return {str(svid.spiffe_id) for svid in client.fetch_x509_svids()}


def test_an_entry_takes_effect_at_the_running_service_at_once(
    env: tuple[Path, Path], identity: RunningIdentityServer
) -> None:
    """Registered or removed through the admin API, an entry counts at the very next
    request, in the process that wrote it (its own write does not move the store's
    data version: it is reloaded all the same)."""
    me = f"spiffe://{TD}/me"
    exe = os.readlink("/proc/self/exe")
    selectors = ("--selector", f"unix:uid:{os.getuid()}", "--selector", f"unix:path:{exe}")
    made = tm("identity", "register", "--spiffe-id", me, *selectors, *_args(env), "--json")
    assert made.returncode == 0, made.stderr
    assert me in _held(identity)
    assert tm("identity", "remove", json.loads(made.stdout)["id"], *_args(env)).returncode == 0
    assert me not in _held(identity)
