"""The nginx configuration of ``engine: nginx`` (pure rendering, checked by nginx itself
where it is installed), and the declarations that engine refuses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.gateway.nginxconf import FORWARDED, NginxPlan, Upstream, placement, render

BASE = """trust_domain: shop.example
dev: true
services:
  orders: {run: "trustmesh.demo.orders:app"}
gateway:
  engine: nginx
  waf: {mode: "off"}
  routes:
"""
ROUTES = """    - {path: /orders, to: orders, methods: [GET, POST]}
    - {path: /public, to: orders, auth: [anonymous], request_headers: [x-tenant, x-forwarded-user]}
"""


KEPT = """    - {path: /orders, to: orders, methods: [GET],
       rate_limits: [{per: consumer, limit: 10/minute}, {per: route, limit: 100 per 10 seconds}]}
    - {path: /near, to: orders, methods: [GET], rate_limits: [{per: ip, limit: 5/minute}]}
    - {path: /open, to: orders, auth: [anonymous]}
    - {path: /one, to: orders, rate_limits: [{per: route, limit: 1/minute}]}
"""


def plan(
    tmp_path: Path,
    routes: str = ROUTES,
    servers: tuple[str, ...] = ("127.0.0.1:8443",),
    *,
    kept: str | None = None,
) -> NginxPlan:
    base = BASE.replace(
        "  engine: nginx\n", f"  engine: nginx\n  nginx: {{decision_ttl: {kept}}}\n"
    )
    config = parse_config((base if kept else BASE) + routes, source="t.yaml")
    assert config.gateway is not None
    return NginxPlan(
        gateway=config.gateway,
        root=tmp_path,
        port=18443,
        tls_cert=tmp_path / "tls.pem",
        tls_key=tmp_path / "tls.key",
        svid_cert=tmp_path / "svid.pem",
        svid_key=tmp_path / "svid.key",
        bundle=tmp_path / "bundle.pem",
        authorizer=tmp_path / "authz.sock",
        authorizer_prefix="/ext_authz",
        upstreams=[Upstream("orders", servers, "orders.shop.example")],
        kept=tmp_path / "kept-3" if kept else None,
        generation=3,
    )


def locations(text: str) -> dict[str, str]:
    """Each top-level location block of the server, by its match."""
    found: dict[str, str] = {}
    for match in re.finditer(r"\n {8}location ([^{]+)\{\n(.*?)\n {8}\}", text, re.S):
        found[match.group(1).strip()] = match.group(2)
    return found


def test_each_route_is_its_prefix_and_what_is_under_it(tmp_path: Path) -> None:
    text = render(plan(tmp_path))
    blocks = locations(text)
    assert {"= '/orders'", "'/orders/'", "= '/public'", "'/public/'", "/"} <= set(blocks)
    assert "proxy_pass https://$tm_pass_0;" in blocks["'/orders/'"]
    assert "proxy_pass https://$tm_pass_1;" in blocks["= '/public'"]
    # the rest is asked about (a 404, recorded) and never forwarded
    assert "auth_request /_trustmesh/authz;" in blocks["/"]
    assert "proxy_pass https://tm_none;" in blocks["/"]


def test_the_trace_begins_with_the_time_and_is_one_for_the_authorizer_and_upstream(
    tmp_path: Path,
) -> None:
    text = render(plan(tmp_path, kept="20s"))
    assert 'map $msec $tm_ms { "~^(?<s>[0-9]{10})\\.(?<m>[0-9]{3})$" $s$m;' in text
    assert 'map $request_id $tm_random { "~(?<r>[0-9a-f]{19})$" $r; }' in text
    assert "map $tm_ms $tm_trace { default $tm_ms$tm_random; }" in text
    # the authorizer's question and the upstream request carry the same traceparent
    assert text.count('traceparent "00-$tm_trace-$tm_span-01";') >= 2
    assert "$request_id-" not in text
    assert '"id":"$tm_trace"' in text  # kept.log's lines name the trace


def test_a_route_forwards_only_where_the_authorizer_chose_it(tmp_path: Path) -> None:
    text = render(plan(tmp_path))
    assert 'map $tm_route $tm_pass_0 { "0" tm_svc_orders; default tm_none; }' in text
    assert 'map $tm_route $tm_pass_1 { "1" tm_svc_orders; default tm_none; }' in text
    assert "upstream tm_none { server 127.0.0.1:9 down; }" in text


def test_every_location_asks_the_authorizer_first(tmp_path: Path) -> None:
    text = render(plan(tmp_path))
    forwarding = {m: b for m, b in locations(text).items() if "proxy_pass https://" in b}
    assert len(forwarding) == 5
    for match, block in forwarding.items():
        assert "auth_request /_trustmesh/authz;" in block, match


def test_only_allow_listed_client_headers_are_forwarded(tmp_path: Path) -> None:
    text = render(plan(tmp_path))
    assert "proxy_pass_request_headers off;" in text
    blocks = locations(text)
    orders = set(re.findall(r"\$http_([a-z0-9_]+)", blocks["'/orders/'"]))
    assert orders == {name.replace("-", "_") for name in FORWARDED}
    # a strict route: what it names, never a header the gateway strips
    public = set(re.findall(r"\$http_([a-z0-9_]+)", blocks["'/public/'"]))
    assert public == {"x_tenant"}
    authz = blocks["= /_trustmesh/authz"]
    assert "internal;" in authz
    assert "proxy_pass_request_body off;" in authz
    assert "proxy_set_header X-Original-URI $request_uri;" in authz
    assert "proxy_set_header X-Original-Client $remote_addr;" in authz


def test_the_upstream_is_checked_by_its_svid(tmp_path: Path) -> None:
    text = render(plan(tmp_path))
    assert "proxy_ssl_verify on;" in text
    assert f"proxy_ssl_trusted_certificate '{tmp_path / 'bundle.pem'}';" in text
    assert f"proxy_ssl_certificate '{tmp_path / 'svid.pem'}';" in text
    assert "proxy_ssl_name orders.shop.example;" in locations(text)["'/orders/'"]


def test_an_upstream_without_instances_is_never_reached(tmp_path: Path) -> None:
    text = render(plan(tmp_path, servers=()))
    assert "upstream tm_svc_orders { server 127.0.0.1:9 down; keepalive 64; }" in text


def test_strings_are_quoted_and_never_break_out(tmp_path: Path) -> None:
    odd = tmp_path / "a'b\\c;d}"
    odd.mkdir()
    text = render(plan(odd))
    assert "'" + str(odd).replace("\\", "\\\\").replace("'", "\\'") + "/nginx.pid'" in text
    with pytest.raises(ValueError, match="newline"):
        render(plan(tmp_path / "x\ny"))


def test_kept_decisions_are_keyed_by_all_the_authorizer_reads(tmp_path: Path) -> None:
    text = render(plan(tmp_path, KEPT, kept="20s"))
    authz = locations(text)["= /_trustmesh/authz"]
    assert "proxy_cache tm_kept_3;" in authz
    key = re.search(r"proxy_cache_key '([^']*)';", authz)
    assert key is not None
    parts = key.group(1).split("|")
    assert parts == [
        "$request_method",
        "$request_uri",
        "$http_host",
        "$http_authorization",
        "$http_x_api_key",
        "$remote_addr",
        "$http_x_forwarded_for",
        "$http_origin",
    ]
    assert f"proxy_cache_path '{tmp_path / 'kept-3'}' levels=1:2 keys_zone=tm_kept_3:4m" in text
    # nothing else may make nginx keep an answer: only the authorizer's X-Accel-Expires
    assert "proxy_cache_valid" not in text
    assert "proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;" in authz


def test_nginx_counts_the_limits_it_can_after_the_authorizer_named_the_bucket(
    tmp_path: Path,
) -> None:
    text = render(plan(tmp_path, KEPT, kept="20s"))
    blocks = locations(text)
    zones = re.findall(r"limit_req_zone \$(tm_lk_\w+) zone=(tm_rl_\w+):1m rate=(\d+)r/m;", text)
    assert sorted(int(rate) for _, _, rate in zones) == [1, 10, 600]
    orders = blocks["'/orders/'"]
    assert "auth_request /_trustmesh/authz;" in orders
    assert "try_files /.trustmesh-none @tm_route_0;" in orders
    assert "proxy_pass" not in orders  # forwarded from the named location, once counted
    named = blocks["@tm_route_0"]
    assert "auth_request" not in named
    assert "limit_req_status 429;" in named
    counted = set(re.findall(r"limit_req zone=(tm_rl_\w+) ", named))
    assert len(counted) == 2
    assert counted <= {z for _, z, _ in zones}
    assert "burst=9 nodelay" in named
    assert "burst=99 nodelay" in named
    assert "proxy_pass https://$tm_pass_0;" in named
    # an address limit is counted by the authorizer, before the credential: asked each time
    assert "proxy_pass https://$tm_pass_1;" in blocks["'/near/'"]
    assert "@tm_route_1" not in blocks
    assert "proxy_pass https://$tm_pass_2;" in blocks["'/open/'"]  # nothing to count
    assert "add_header Retry-After $tm_limit_retry always;" in blocks["@tm_429"]
    assert re.search(r"limit_req zone=tm_rl_\w+;", blocks["@tm_route_3"])  # no burst: one


#: Routes on one path (by method and host), a host's longer prefix above a host-less one.
SHARED = """    - {path: /desk, host: staff.shop.example, to: orders, methods: [GET]}
    - {path: /desk, to: orders, methods: [GET]}
    - {path: /desk, to: orders, methods: [POST], rate_limits: [{per: consumer, limit: 5/minute}]}
    - {path: /desk/admin, host: staff.shop.example, to: orders}
    - {path: /, host: www.shop.example, to: orders}
    - {path: /solo, to: orders}
"""


def test_each_prefix_hands_requests_to_the_routes_the_authorizer_may_take_there() -> None:
    config = parse_config(BASE + SHARED, source="t.yaml")
    assert config.gateway is not None
    assert placement(config.gateway.routes) == [
        ("/desk", (0, 1, 2)),
        ("/desk/admin", (3, 0, 1, 2)),  # another host's request falls through to /desk
        ("/", (4,)),  # only www's: any other host's request is a 404
        ("/solo", (5,)),
    ]


@pytest.mark.parametrize("kept", [None, "20s"])
def test_routes_sharing_a_prefix_forward_only_the_one_the_authorizer_chose(
    tmp_path: Path, kept: str | None
) -> None:
    text = render(plan(tmp_path, SHARED, kept=kept))
    blocks = locations(text)
    assert "try_files /.trustmesh-none @tm_route_$tm_go_0;" in blocks["'/desk/'"]
    assert 'map $tm_route $tm_go_0 { "0" 0; "1" 1; "2" 2; default none; }' in text
    assert 'map $tm_route $tm_go_1 { "3" 3; "0" 0; "1" 1; "2" 2; default none; }' in text
    for index in range(4):  # each one checks it was chosen (its own map), then forwards
        assert f"proxy_pass https://$tm_pass_{index};" in blocks[f"@tm_route_{index}"]
        assert "auth_request" not in blocks[f"@tm_route_{index}"]
    assert "proxy_pass https://tm_none;" in blocks["@tm_route_none"]
    # one route a prefix: forwarded from its own location, as before
    assert "proxy_pass https://$tm_pass_5;" in blocks["'/solo/'"]
    assert "proxy_pass https://$tm_pass_4;" in blocks["/"]
    # the limit nginx counts (where it keeps decisions): its bucket named in the prefix's
    # locations, counted in its route's
    assert ("limit_req zone=" in blocks["@tm_route_2"]) is (kept is not None)
    assert ("auth_request_set $tm_lk_" in blocks["'/desk/'"]) is (kept is not None)
    assert "limit_req zone=" not in blocks["@tm_route_1"]


def test_without_decision_ttl_nothing_is_kept_nor_counted_by_nginx(tmp_path: Path) -> None:
    text = render(plan(tmp_path, KEPT))
    assert "proxy_cache" not in text
    assert "limit_req" not in text
    assert "@tm_route" not in text


@pytest.mark.parametrize(
    ("host", "listen"),
    [
        ("127.0.0.1", "listen 127.0.0.1:18443 ssl;"),
        ("0.0.0.0", "listen 0.0.0.0:18443 ssl;"),  # noqa: S104 - the address under test
        ("::", "listen [::]:18443 ssl;"),
        ("2001:db8::7", "listen [2001:db8::7]:18443 ssl;"),
    ],
)
def test_nginx_listens_on_the_declared_address(tmp_path: Path, host: str, listen: str) -> None:
    """listen.host, an IPv6 address in brackets (the only way nginx takes one)."""
    text = render(dataclasses.replace(plan(tmp_path), host=host))
    assert [line.strip() for line in text.splitlines() if line.strip().startswith("listen ")] == [
        listen
    ]


@pytest.mark.usefixtures("nginx_available")
@pytest.mark.parametrize(("routes", "kept"), [(ROUTES, None), (KEPT, "20s"), (SHARED, "20s")])
def test_nginx_accepts_the_rendered_configuration(
    tmp_path: Path, routes: str, kept: str | None
) -> None:
    key = crypto.generate_key()
    pem = crypto.private_key_to_pem(key)
    now = dt.datetime.now(dt.UTC)
    ca = crypto.create_root_ca("shop.example", key, now=now, ttl=dt.timedelta(hours=1), label="t")
    for name in ("tls", "svid"):
        (tmp_path / f"{name}.pem").write_bytes(crypto.cert_pem(ca).encode())
        (tmp_path / f"{name}.key").write_bytes(pem)
    (tmp_path / "bundle.pem").write_bytes(crypto.cert_pem(ca).encode())
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(plan(tmp_path, routes, kept=kept)))
    done = subprocess.run(
        ["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize(
    ("route", "named"),
    [
        ("{path: /x, to: orders, schema: s.json}", "routes[0].schema"),
        ("{path: /x, to: orders, openapi: o.yaml, paths: [/x]}", "routes[0].openapi"),
        ("{path: /x, to: orders, waf: {mode: fast}}", "the injection filter"),
        ("{path: /x, to: orders, relay_errors: true}", "routes[0].relay_errors"),
    ],
)
def test_nginx_refuses_what_it_cannot_enforce(route: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"    - {route}\n", source="t.yaml")
    assert named in str(caught.value.problems)


def test_the_gateway_wide_filter_must_be_off_for_nginx() -> None:
    text = BASE.replace('  waf: {mode: "off"}\n', "") + "    - {path: /x, to: orders}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="t.yaml")
    assert "waf" in str(caught.value.problems)
