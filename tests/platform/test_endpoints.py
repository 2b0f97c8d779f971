"""The platform's table of where components say they listen names the very files the
components write (each component's own ``endpoint_path``)."""

from __future__ import annotations

from pathlib import Path

from trustmesh.audit.endpoint import endpoint_path as audit_endpoint
from trustmesh.auth.endpoint import endpoint_path as auth_endpoint
from trustmesh.gateway.endpoint import endpoint_path as gateway_endpoint
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.platform.endpoints import DISCOVERY, ENDPOINTS, instance, read_json
from trustmesh.secrets.endpoint import endpoint_path as secrets_endpoint


def test_the_table_names_each_components_own_file(tmp_path: Path) -> None:
    own = {
        "auth": auth_endpoint,
        "secrets": secrets_endpoint,
        "audit": audit_endpoint,
        "gateway": gateway_endpoint,
    }
    assert set(ENDPOINTS) == set(own)
    for name, (path, _, _) in ENDPOINTS.items():
        assert tmp_path / path == own[name](tmp_path), name
    assert tmp_path / DISCOVERY == IdentityPaths(tmp_path).discovery


def test_a_missing_torn_or_odd_file_reads_as_nothing(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    (tmp_path / "torn.json").write_text('{"url": "https://')
    assert read_json(tmp_path / "torn.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json(tmp_path / "list.json") is None
    snapshot = {"instances": [{"service": "orders", "url": "u"}, "odd", {"service": "x"}]}
    assert instance(snapshot, "orders") == {"service": "orders", "url": "u"}
    assert instance(snapshot, "payments") is None
    assert instance({"instances": "odd"}, "orders") is None
