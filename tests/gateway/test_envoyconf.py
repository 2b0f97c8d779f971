"""The Envoy bootstrap rendered from the declaration (pure rendering), checked against
Envoy's own schema (its v3 protos: :mod:`envoyschema`), and the declarations it refuses.
Envoy does not run here."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from envoyschema import SchemaError, check

from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.gateway.envoyconf import ASKED, EnvoyPlan, GrpcAuthorizer, Upstream, render
from trustmesh.gateway.headers import SECURITY_HEADERS, STRIPPED, STRIPPED_FAMILIES

BASE = """trust_domain: shop.example
dev: true
services:
  orders: {run: "trustmesh.demo.orders:app"}
  stock: {run: "trustmesh.demo.orders:app"}
gateway:
  waf: {mode: "off"}
  routes:
"""
ROUTES = """    - {path: /orders, to: orders, methods: [GET, POST]}
    - {path: /orders/admin, to: stock, methods: [DELETE]}
    - {path: /, to: stock, auth: [anonymous]}
"""
ORDERS = "spiffe://shop.example/orders"


def plan(tmp_path: Path, routes: str = ROUTES, authorizer: Path | str | None = None) -> EnvoyPlan:
    config = parse_config(BASE + routes, source="t.yaml")
    assert config.gateway is not None
    return EnvoyPlan(
        gateway=config.gateway,
        port=18443,
        tls_cert=tmp_path / "tls.pem",
        tls_key=tmp_path / "tls.key",
        svid_cert=tmp_path / "svid.pem",
        svid_key=tmp_path / "svid.key",
        bundle=tmp_path / "bundle.pem",
        authorizer=authorizer if authorizer is not None else tmp_path / "authz.sock",
        upstreams=[
            Upstream("orders", ("127.0.0.1:8443", "[::1]:8444"), ORDERS, "orders.shop.example"),
            Upstream(
                "stock",
                ("stock.internal:9443",),
                "spiffe://shop.example/stock",
                "stock.shop.example",
            ),
        ],
    )


def manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    chain = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
    config: dict[str, Any] = chain["filters"][0]["typed_config"]
    return config


def http_filter(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    config: dict[str, Any] = next(
        f["typed_config"] for f in manager(bootstrap)["http_filters"] if f["name"] == name
    )
    return config


def cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name
    )
    return found


@pytest.mark.parametrize("authorizer", [None, "127.0.0.1:7000", "authz.internal:7000"])
def test_the_bootstrap_is_an_envoy_bootstrap(tmp_path: Path, authorizer: str | None) -> None:
    message = check(render(plan(tmp_path, authorizer=authorizer)))
    assert message.static_resources.listeners[0].name == "trustmesh_edge"


@pytest.mark.parametrize(
    ("corrupt", "said"),
    [
        (lambda b: b["static_resources"].update(listenerz=[]), "listenerz"),  # unknown field
        (lambda b: manager(b).update(codec_type="HTTP9"), "HTTP9"),  # no such enum value
        (lambda b: manager(b).update(merge_slashes="no"), "merge_slashes"),  # a wrong type
        (lambda b: manager(b).update(max_request_headers_kb=9000), "max_request_headers_kb"),
        (lambda b: b["static_resources"]["clusters"][0].update(name=""), "name"),
        (  # a typed_config is checked as the message its @type names
            lambda b: http_filter(b, "envoy.filters.http.ext_authz").update(fail_closed=True),
            "fail_closed",
        ),
        (  # a deprecated field
            lambda b: http_filter(b, "envoy.filters.http.ext_authz")["http_service"].update(
                authorization_request={"allowed_headers": {"patterns": [{"exact": "x"}]}}
            ),
            "deprecated",
        ),
        (
            lambda b: manager(b).update({"@type": manager(b)["@type"] + "X"}),
            "HttpConnectionManagerX",
        ),
        (lambda b: manager(b)["route_config"]["virtual_hosts"][0].pop("domains"), "domains"),
    ],
)
def test_the_schema_refuses_a_corrupted_bootstrap(tmp_path: Path, corrupt: Any, said: str) -> None:
    bootstrap = copy.deepcopy(render(plan(tmp_path)))
    corrupt(bootstrap)
    with pytest.raises(SchemaError, match=said):
        check(bootstrap)


def test_each_route_is_its_prefix_and_what_is_under_it_for_its_methods(tmp_path: Path) -> None:
    routes = manager(render(plan(tmp_path)))["route_config"]["virtual_hosts"][0]["routes"]
    seen = [
        (r["name"], r["match"].get("path") or r["match"]["prefix"], r["route"]["cluster"])
        for r in routes
    ]
    # the longest prefix first, as the gateway matches: /orders/admin never goes to /orders'
    assert seen == [
        ("routes[1]", "/orders/admin", "tm_svc_stock"),
        ("routes[1]", "/orders/admin/", "tm_svc_stock"),
        ("routes[0]", "/orders", "tm_svc_orders"),
        ("routes[0]", "/orders/", "tm_svc_orders"),
        ("routes[2]", "/", "tm_svc_stock"),
    ]
    assert routes[2]["match"]["path"] == "/orders"  # itself exactly: never /ordersX
    assert "prefix" not in routes[2]["match"]
    methods = [r["match"]["headers"] for r in routes]
    assert methods[2] == [
        {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|POST"}}}
    ]
    assert methods[0][0]["string_match"]["safe_regex"]["regex"] == "DELETE"
    assert routes[2]["route"]["host_rewrite_literal"] == "orders.shop.example"


def test_paths_reach_the_authorizer_and_the_routes_as_sent(tmp_path: Path) -> None:
    hcm = manager(render(plan(tmp_path)))
    assert hcm["normalize_path"] is False
    assert hcm["merge_slashes"] is False
    assert hcm["path_with_escaped_slashes_action"] == "KEEP_UNCHANGED"
    assert hcm["use_remote_address"] is True
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"
    assert hcm["max_request_headers_kb"] == 32  # limits.max_header_bytes: 32 KiB


def test_ext_authz_is_fail_closed_and_sends_what_the_authorizer_reads(tmp_path: Path) -> None:
    bootstrap = render(plan(tmp_path))
    names = [f["name"] for f in manager(bootstrap)["http_filters"]]
    assert names.index("envoy.filters.http.ext_authz") < names.index("trustmesh.strip")
    assert names[-1] == "envoy.filters.http.router"
    authz = http_filter(bootstrap, "envoy.filters.http.ext_authz")
    assert authz["failure_mode_allow"] is False
    assert "with_request_body" not in authz
    assert authz["http_service"]["path_prefix"] == "/ext_authz"
    sent = {p["exact"] for p in authz["allowed_headers"]["patterns"]}
    assert sent == set(ASKED) >= {"authorization", "x-api-key", "origin", "x-forwarded-for"}
    answer = authz["http_service"]["authorization_response"]
    upstream = {p["exact"] for p in answer["allowed_upstream_headers"]["patterns"]}
    assert upstream == {"authorization", "traceparent"}
    client = {p["exact"] for p in answer["allowed_client_headers"]["patterns"]}
    assert {"www-authenticate", "retry-after", "allow", "ratelimit"} <= client
    assert "authorization" not in client
    on_success = {p["exact"] for p in answer["allowed_client_headers_on_success"]["patterns"]}
    assert on_success == {"ratelimit-policy", "ratelimit"}
    # the authorizer on its socket
    address = cluster(bootstrap, "trustmesh_authorizer")["load_assignment"]["endpoints"][0]
    assert address["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": str(tmp_path / "authz.sock")}
    }


GATEWAY = "spiffe://shop.example/trustmesh/gateway"


def grpc_plan(tmp_path: Path) -> EnvoyPlan:
    caller = GrpcAuthorizer(
        "127.0.0.1:9191", GATEWAY, tmp_path / "envoy.pem", tmp_path / "envoy.key"
    )
    return dataclasses.replace(plan(tmp_path), grpc=caller)


def test_the_grpc_authorizer_is_asked_over_mtls_and_http2(tmp_path: Path) -> None:
    bootstrap = render(grpc_plan(tmp_path))
    check(bootstrap)  # Envoy's schema: the gRPC service, HTTP/2 options, the TLS context
    authz = http_filter(bootstrap, "envoy.filters.http.ext_authz")
    assert "http_service" not in authz
    assert authz["grpc_service"]["envoy_grpc"] == {"cluster_name": "trustmesh_authorizer"}
    assert authz["failure_mode_allow"] is False
    assert {p["exact"] for p in authz["allowed_headers"]["patterns"]} == set(ASKED)
    found = cluster(bootstrap, "trustmesh_authorizer")
    options = found["typed_extension_protocol_options"]
    (http,) = options.values()
    assert http["explicit_http_config"] == {"http2_protocol_options": {}}
    address = found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 9191}}
    common = found["transport_socket"]["typed_config"]["common_tls_context"]
    # Envoy presents its own SVID (a declared caller), not the gateway's it forwards with
    assert common["tls_certificates"][0]["certificate_chain"]["filename"].endswith("envoy.pem")
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": GATEWAY}}
    ]
    assert common["validation_context"]["trusted_ca"] == {"filename": str(tmp_path / "bundle.pem")}
    # the services are reached as before, with the gateway's SVID
    orders = cluster(bootstrap, "tm_svc_orders")["transport_socket"]["typed_config"]
    assert orders["common_tls_context"]["tls_certificates"][0]["certificate_chain"][
        "filename"
    ].endswith("svid.pem")
    assert orders["sni"] == "orders.shop.example"


def test_the_upstream_is_checked_by_its_spiffe_id_and_sees_the_svid(tmp_path: Path) -> None:
    orders = cluster(render(plan(tmp_path)), "tm_svc_orders")
    assert orders["type"] == "STATIC"
    tls = orders["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext")
    common = tls["common_tls_context"]
    assert common["tls_certificates"] == [
        {
            "certificate_chain": {"filename": str(tmp_path / "svid.pem")},
            "private_key": {"filename": str(tmp_path / "svid.key")},
        }
    ]
    validation = common["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(tmp_path / "bundle.pem")}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": ORDERS}}
    ]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
    endpoints = orders["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in endpoints] == [
        "127.0.0.1",
        "::1",
    ]
    assert cluster(render(plan(tmp_path)), "tm_svc_stock")["type"] == "STRICT_DNS"


def test_the_client_cannot_speak_for_the_gateway(tmp_path: Path) -> None:
    bootstrap = render(plan(tmp_path))
    mutations = http_filter(bootstrap, "trustmesh.strip")["mutations"]["request_mutations"]
    removed = {m["remove"] for m in mutations if "remove" in m}
    families = {
        m["remove_on_match"]["key_matcher"]["prefix"] for m in mutations if "remove_on_match" in m
    }
    # every name of the list but those replaced after the check (the authorizer's token
    # and trace; Host: the service's name)
    assert removed == {n.decode() for n in STRIPPED} - {"authorization", "traceparent", "host"}
    assert families == {f.decode() for f in STRIPPED_FAMILIES}
    assert {"x-forwarded-", "x-envoy-", "x-trustmesh-"} <= families
    added = manager(bootstrap)["route_config"]["virtual_hosts"][0]["request_headers_to_add"]
    assert {(a["header"]["key"], a["append_action"]) for a in added} == {
        ("x-forwarded-for", "OVERWRITE_IF_EXISTS_OR_ADD"),
        ("x-forwarded-proto", "OVERWRITE_IF_EXISTS_OR_ADD"),
    }


def test_every_answer_carries_the_security_headers_and_no_internal_one(tmp_path: Path) -> None:
    bootstrap = render(plan(tmp_path))
    names = [f["name"] for f in manager(bootstrap)["http_filters"]]
    # before the check: the authorizer's refusals pass through it too
    assert names.index("trustmesh.answers") < names.index("envoy.filters.http.ext_authz")
    mutations = http_filter(bootstrap, "trustmesh.answers")["mutations"]["response_mutations"]
    families = {
        m["remove_on_match"]["key_matcher"]["prefix"] for m in mutations if "remove_on_match" in m
    }
    assert families == {"x-trustmesh-", "x-envoy-", "x-gateway-", "access-control-"}
    assert {m["remove"] for m in mutations if "remove" in m} == {"server"}
    set_ = {
        (m["append"]["header"]["key"], m["append"]["header"]["value"])
        for m in mutations
        if "append" in m
    }
    assert set_ == {(k.decode(), v.decode()) for k, v in SECURITY_HEADERS}
    assert manager(bootstrap)["server_header_transformation"] == "PASS_THROUGH"
    assert http_filter(bootstrap, "envoy.filters.http.router")["suppress_envoy_headers"] is True


def test_the_listener_speaks_tls_1_2_at_least_with_the_gateway_certificate(tmp_path: Path) -> None:
    chain = render(plan(tmp_path))["static_resources"]["listeners"][0]["filter_chains"][0]
    common = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
    assert common["tls_certificates"][0]["certificate_chain"]["filename"] == str(
        tmp_path / "tls.pem"
    )


@pytest.mark.parametrize(
    ("route", "named"),
    [
        ("{path: /x, to: orders, openapi: api.yaml}", "routes[0]: a request contract"),
        ("{path: /x, to: orders, waf: {mode: fast}}", "routes[0]: the injection filter"),
        ("{path: /x, to: orders, cors: {origins: ['https://a.example']}}", "routes[0].cors"),
        ("{path: /x, to: orders, host: a.example}", "routes[0].host"),
        ("{path: /x, to: orders, request_headers: [x-tenant]}", "routes[0].request_headers"),
    ],
)
def test_what_envoy_cannot_enforce_is_refused(tmp_path: Path, route: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        render(plan(tmp_path, f"    - {route}\n"))
    assert any(named in problem for problem in caught.value.problems)
