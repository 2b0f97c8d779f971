"""``trustmesh identity suspend|unsuspend|suspensions`` against a running identity service
(its admin API, as the operator, who gets an SVID through the operator socket): the
suspension is in force and recorded, listed, lifted; bad usage exits 2 and changes
nothing; the control plane is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmesh.cli import app
from trustmesh.config import load_config
from trustmesh.events import read_events
from trustmesh.reasons import Activity
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread, run_cli

TD = "clisuspend.example"
ORDERS = f"spiffe://{TD}/orders"
runner = CliRunner()


@pytest.fixture
def env(short_tmp: Path) -> tuple[Path, Path]:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(f"trust_domain: {TD}\ndev: true\n")
    return config, short_tmp / "state"


@pytest.fixture
def identity(env: tuple[Path, Path]) -> Iterator[RunningIdentityServer]:
    config, state = env
    with identity_server_in_thread(load_config(config), state, discovery=True) as running:
        yield running


def tm(env: tuple[Path, Path], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--config", str(env[0]), "--state", str(env[1])])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def _suspended(identity: RunningIdentityServer) -> list[str]:
    now = int(identity.server.clock().timestamp() * 1000)
    return [s.spiffe_id for s in identity.call(identity.server.store.suspensions, now)]


def test_suspend_list_and_unsuspend(
    env: tuple[Path, Path], identity: RunningIdentityServer
) -> None:
    code, output = tm(env, "identity", "suspend", ORDERS, "--for", "2h", "--cause", "leaked key")
    assert code == 0, output
    assert f"suspended {ORDERS} until" in output
    assert _suspended(identity) == [ORDERS]
    code, output = tm(env, "identity", "suspensions", "--json")
    assert code == 0, output
    [listed] = json.loads(output)
    assert (listed["spiffe_id"], listed["cause"], listed["by"]) == (
        ORDERS,
        "leaked key",
        "operator",
    )
    assert listed["until"] is not None
    code, output = tm(env, "identity", "suspensions")
    assert (code, "leaked key" in output) == (0, True)  # a table (the ID may wrap)
    code, output = tm(env, "identity", "unsuspend", ORDERS)
    assert (code, "lifted" in output) == (0, True)
    assert _suspended(identity) == []
    code, output = tm(env, "identity", "unsuspend", ORDERS)
    assert (code, "was not suspended" in output) == (0, True)
    codes = [e["status_detail"] for e in read_events(identity.server.paths.events)]
    assert codes.count(Activity.SPIFFE_ID_SUSPENDED) == 1
    assert codes.count(Activity.SPIFFE_ID_RESTORED) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("identity", "suspend", "orders"),
        ("identity", "suspend", ORDERS, "--for", "forever"),
        ("identity", "suspend", ORDERS, "--for", "31d"),
        ("identity", "suspend", "spiffe://other.example/orders"),
        ("identity", "unsuspend", "not-an-id"),
    ],
)
def test_bad_usage_exits_2_and_changes_nothing(
    env: tuple[Path, Path], identity: RunningIdentityServer, args: tuple[str, ...]
) -> None:
    code, output = tm(env, *args)
    assert code == 2, output
    assert _suspended(identity) == []


def test_the_control_plane_is_refused(
    env: tuple[Path, Path], identity: RunningIdentityServer
) -> None:
    code, output = tm(env, "identity", "suspend", f"spiffe://{TD}/trustmesh/operator")
    assert code != 0
    assert "control plane" in output
    assert _suspended(identity) == []


def test_the_installed_command_suspends(
    env: tuple[Path, Path], identity: RunningIdentityServer
) -> None:
    ran = run_cli(
        "identity", "suspend", ORDERS, "--json", "--config", str(env[0]), "--state", str(env[1])
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["spiffe_id"] == ORDERS
    assert _suspended(identity) == [ORDERS]
