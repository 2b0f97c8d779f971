"""The platform's table of where components say they listen names the very files the
components write (each component's own ``endpoint_path``); a peer is looked up by its
variable first, its file second, and the variables are the ones the sdk and the k8s
render use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustmesh.audit.endpoint import endpoint_path as audit_endpoint
from trustmesh.auth.endpoint import endpoint_path as auth_endpoint
from trustmesh.errors import UnavailableError
from trustmesh.gateway.endpoint import endpoint_path as gateway_endpoint
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.k8s.manifests import ENV_PEER_URLS
from trustmesh.platform.endpoints import (
    DISCOVERY,
    ENDPOINTS,
    URL_ENV,
    instance,
    peer_url,
    read_json,
    require_peer_url,
)
from trustmesh.sdk.delivery import AUDIT_URL_ENV
from trustmesh.sdk.discovery import DISCOVERY_ENV
from trustmesh.sdk.runtime import AUTH_URL_ENV, GATEWAY_URL_ENV
from trustmesh.sdk.secrets import SECRETS_URL_ENV
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


def _write(state: Path, where: str, doc: dict[str, str]) -> None:
    (state / where).parent.mkdir(parents=True, exist_ok=True)
    (state / where).write_text(json.dumps(doc))


def test_the_variables_are_the_ones_the_sdk_and_the_render_use() -> None:
    assert URL_ENV == {
        "identity": DISCOVERY_ENV,
        "auth": AUTH_URL_ENV,
        "audit": AUDIT_URL_ENV,
        "secrets": SECRETS_URL_ENV,
        "gateway": GATEWAY_URL_ENV,
    }
    assert dict(ENV_PEER_URLS) == URL_ENV


def test_a_peer_is_found_by_its_variable_first_and_its_file_second(tmp_path: Path) -> None:
    _write(tmp_path, DISCOVERY, {"url": "https://127.0.0.1:1"})
    _write(tmp_path, "auth/endpoint.json", {"url": "https://127.0.0.1:2"})
    # the gateway's mTLS listener is its internal one, not the public url
    _write(tmp_path, "gateway/endpoint.json", {"url": "https://edge", "internal_url": "https://in"})
    assert peer_url(tmp_path, "identity", {}) == "https://127.0.0.1:1"
    assert peer_url(tmp_path, "auth", {"TRUSTMESH_AUTH_URL": " "}) == "https://127.0.0.1:2"
    assert peer_url(tmp_path, "gateway", {}) == "https://in"
    given = {name: f"https://{name}.trustmesh.svc:8443" for name in URL_ENV}
    for name, variable in URL_ENV.items():
        assert peer_url(tmp_path, name, {variable: given[name]}) == given[name]
    assert peer_url(tmp_path, "secrets", {}) is None  # neither says


def test_no_collector_is_nobody_even_beside_a_file(tmp_path: Path) -> None:
    _write(tmp_path, "audit/endpoint.json", {"url": "https://127.0.0.1:3"})
    assert peer_url(tmp_path, "audit", {"TRUSTMESH_AUDIT_URL": "none"}) is None
    assert peer_url(tmp_path, "audit", {"TRUSTMESH_AUDIT_URL": ""}) == "https://127.0.0.1:3"


def test_a_required_peer_that_nothing_names_fails_closed_naming_both(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError) as raised:
        require_peer_url(tmp_path, "identity", {})
    detail = raised.value.detail
    assert "discovery (the identity service) is not running" in detail
    assert "TRUSTMESH_DISCOVERY_URL is not set" in detail
    assert f"{tmp_path / DISCOVERY} names no URL" in detail
    _write(tmp_path, DISCOVERY, {"url": ""})  # an empty URL names nothing either
    with pytest.raises(UnavailableError):
        require_peer_url(tmp_path, "identity", {})
    env = {"TRUSTMESH_DISCOVERY_URL": "https://identity.trustmesh.svc:8081"}
    assert require_peer_url(tmp_path, "identity", env) == env["TRUSTMESH_DISCOVERY_URL"]
