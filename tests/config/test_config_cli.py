from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmesh.cli import app as trustmesh_app
from trustmesh.cli import config_cmd

runner = CliRunner()


def test_check_ok(valid_yaml: str, tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(valid_yaml, encoding="utf-8")
    result = runner.invoke(config_cmd.app, ["check", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok: {path}: trust domain shop.example, 3 services, 2 calls\n"
    assert result.stderr == ""


def test_check_reports_every_problem_on_stderr_and_exits_2(valid_yaml: str, tmp_path: Path) -> None:
    path = tmp_path / "trustmesh.yaml"
    text = valid_yaml.replace("    port: 8001", "    prot: 8001").replace(
        "POST /reservations", "POST /[bold]x[/bold]"
    )
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(config_cmd.app, ["check", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"{path}:12: services.orders.prot: unknown key 'prot' (did you mean 'port'?) "
        "(expected one of: command, external, port, run, runtime)"
    )
    # user text is printed as-is, never interpreted as Rich markup
    assert lines[1].startswith(f"{path}:21: calls[1].allow[1]: path '/[bold]x[/bold]' has an")
    assert lines[-1] == f"{path}: 2 problem(s) found"


def test_check_duplicate_key_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("trust_domain: a\ntrust_domain: b\n", encoding="utf-8")
    result = runner.invoke(config_cmd.app, ["check", "-c", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: duplicate key 'trust_domain'" in result.stderr


def test_check_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(config_cmd.app, ["check", "-c", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "absent.yaml: no such file" in result.stderr


def test_check_defaults_to_the_packaged_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(config_cmd.app, ["check"])
    assert result.exit_code == 0, result.output
    assert "default.yaml: trust domain trustmesh.local, 4 services, 3 calls" in result.stdout


def test_check_prefers_local_trustmesh_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trustmesh.yaml").write_text("trust_domain: local.test\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(config_cmd.app, ["check"])
    assert result.exit_code == 0, result.output
    assert "trust domain local.test" in result.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = runner.invoke(config_cmd.app, ["check", "--nope"])
    assert result.exit_code == 2


def test_schema_prints_json_schema() -> None:
    result = runner.invoke(config_cmd.app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["title"] == "trustmesh.yaml"
    assert "trust_domain" in schema["properties"]
    assert "from" in schema["$defs"]["CallSpec"]["properties"]
    assert "from_" not in schema["$defs"]["CallSpec"]["properties"]
    assert result.stdout.startswith('{\n  "$schema"')


def test_mounted_under_trustmesh_config(valid_yaml: str, tmp_path: Path) -> None:
    path = tmp_path / "trustmesh.yaml"
    path.write_text(valid_yaml.replace("shop.example", "shop..example"), encoding="utf-8")
    result = runner.invoke(trustmesh_app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}:1: trust_domain: 'shop..example' has an empty label" in result.stderr


def test_check_compiles_each_routes_contract(tmp_path: Path) -> None:
    """A route's OpenAPI document that is missing, or does not describe an operation the
    route serves, fails the check as it would fail the gateway's start."""
    from trustmesh.config import default_config_path

    shipped = default_config_path().parent
    for name in ("default.yaml", "shop.cedar"):
        (tmp_path / name).write_text((shipped / name).read_text())
    path = tmp_path / "default.yaml"
    result = runner.invoke(config_cmd.app, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert "gateway.routes[0].openapi: cannot read" in result.stderr
    document = (shipped / "shop.openapi.yaml").read_text()
    (tmp_path / "shop.openapi.yaml").write_text(document.replace("/admin/orders:", "/x:"))
    result = runner.invoke(config_cmd.app, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert "the route serves GET /admin/orders, not described" in result.stderr
    (tmp_path / "shop.openapi.yaml").write_text(document)
    result = runner.invoke(config_cmd.app, ["check", "--config", str(path)])
    assert result.exit_code == 0, result.output
    # the injection filter in crs mode: the Core Rule Set must load, as at the gateway's start
    text = path.read_text()
    assert "\ngateway:\n" in text
    crs = text.replace("\ngateway:\n", "\ngateway:\n  waf: {mode: crs, crs_rules: no-such-dir}\n")
    path.write_text(crs)
    result = runner.invoke(config_cmd.app, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert "gateway.routes[0].waf: waf mode crs needs the OWASP Core Rule Set" in result.stderr
