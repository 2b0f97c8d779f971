"""Canonical paths: every trick that could make a pattern mean two things is refused."""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.policy.paths import (
    NonCanonicalPath,
    _canonical_path_slow,
    canonical_path,
    lenient_path,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", "/"),
        (b"/charges", "/charges"),
        (b"/charges/123", "/charges/123"),
        (b"/charges/", "/charges/"),
        (b"/a%20b", "/a b"),
        (b"/caf%C3%A9", "/café"),
        (b"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ],
)
def test_canonical_paths_pass(raw: bytes, expected: str) -> None:
    assert canonical_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/admin/../charges",  # dot segments
        b"/./charges",
        b"/charges/.",
        b"/charges/..",
        b"/%2e%2e/admin",  # encoded dots
        b"/%2E/admin",
        b"/.%2e/admin",
        b"//charges",  # empty segments
        b"/charges//1",
        b"/charges;jsessionid=1",  # path parameters
        b"/charges%3Bx",
        b"/charges\\..\\admin",  # backslashes
        b"/charges%5C..%5Cadmin",
        b"/charges%2F..%2Fadmin",  # an encoded slash
        b"/orders/o1/refund%3F",  # a query or a fragment, once decoded and parsed again
        b"/api/admin%3Fx=1",
        b"/api/admin%23frag",
        b"/api/admin%3f",
        b"/charges%00.json",  # NUL
        b"/charges%0A",  # control bytes
        b"/charges%7F",
        b"/%252e%252e/admin",  # double encoding
        b"/%25",
        b"/%41dmin",  # needlessly escaped unreserved characters
        b"/%7Eadmin",
        b"/charges%",  # malformed escapes
        b"/charges%4",
        b"/charges%G1",
        b"/caf\xc3\xa9",  # raw non-ASCII bytes
        b"/a b",  # raw space
        b"/a\tb",
        b"/a#b",
        b"/a?b",
        b"/a[b]",
        b"/%C3%28",  # escapes that are not UTF-8
        b"charges",  # not absolute
        b"",
        b"/" + b"a" * 5000,  # too long
    ],
)
def test_non_canonical_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(NonCanonicalPath):
        canonical_path(raw)


_SEPARATORS = "/\\;%.?#"
_SEGMENT = st.text(
    # not a separator, nor a character Unicode compatibility folds into one ("＼" is "\\"):
    # the gateway refuses those (the full-width probes of tests/gateway/pathprobes.py)
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters=_SEPARATORS
    ).filter(lambda c: not any(x in _SEPARATORS for x in unicodedata.normalize("NFKC", c))),
    min_size=1,
    max_size=12,
)


@given(st.lists(_SEGMENT, min_size=0, max_size=6))
def test_quoted_segments_round_trip(segments: list[str]) -> None:
    """A path built the standard way (each segment percent-encoded) is canonical and decodes
    back to exactly its segments."""
    path = "/" + "/".join(segments)
    raw = quote(path, safe="/!$&'()*+,=:@-_~").encode("ascii")
    assert canonical_path(raw) == path


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        result = canonical_path(b"/" + raw)
    except NonCanonicalPath:
        return
    parts = result[1:].split("/")
    assert "." not in parts
    assert ".." not in parts
    assert "" not in parts[:-1]
    assert "\\" not in result
    assert ";" not in result


def _outcome(fn: object, raw: bytes) -> str:
    try:
        return "ok:" + fn(raw)  # type: ignore[operator]
    except NonCanonicalPath:
        return "refused"


@given(
    st.one_of(
        st.binary(max_size=48),
        st.lists(
            st.sampled_from(["a", "b", ".", "..", "...", "", "%2e", "%41", "x.y", ";", "~", "é"]),
            max_size=6,
        ).map(lambda parts: ("/" + "/".join(parts)).encode()),
    )
)
def test_fast_path_agrees_with_the_byte_by_byte_check(raw: bytes) -> None:
    assert _outcome(canonical_path, raw) == _outcome(_canonical_path_slow, raw)


@contextlib.contextmanager
def _passing_through() -> Iterator[None]:
    yield  # an exception thrown in here is raised again by contextlib, traceback reset


def test_a_refusal_travels_as_an_exception_does() -> None:
    """Python (and contextlib, re-raising through a generator) sets ``__traceback__`` on
    an exception as it travels: a refusal must allow it (a frozen one hid itself behind
    FrozenInstanceError)."""
    with pytest.raises(NonCanonicalPath, match="U\\+FF3C") as refused:  # noqa: SIM117
        with _passing_through():
            canonical_path(quote("/\uff3c").encode("ascii"))
    assert refused.value.__traceback__ is not None


@pytest.mark.parametrize(
    "raw",
    [b"/items/../admin/orders", b"/items/..%2fadmin%2forders", b"/items/..%5Cadmin%5Corders",
     b"/items/..\\admin\\orders", b"/items/x%00/../../admin/orders"],
)  # fmt: skip
def test_the_lenient_path_of_the_test_switch_resolves_what_canonical_refuses(raw: bytes) -> None:
    """``path-normalisation`` off: what a lenient server makes of a traversal — the
    other route — where the canonical form refuses it."""
    with pytest.raises(NonCanonicalPath):
        canonical_path(raw)
    assert lenient_path(raw) == "/admin/orders"
