"""Image references: only those pinned by a sha256 digest are taken."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.errors import UsageError
from trustmesh.k8s import check_image

HEX = "0123456789abcdef"


@given(
    repository=st.from_regex(
        r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}(:[a-z0-9][a-z0-9.-]{0,7})?", fullmatch=True
    ),
    digest=st.text(alphabet=HEX, min_size=64, max_size=64),
)
def test_a_reference_pinned_by_digest_is_taken_as_given(repository: str, digest: str) -> None:
    reference = f"{repository}@sha256:{digest}"
    assert check_image(reference) == reference


@given(reference=st.text(max_size=120))
def test_a_reference_without_a_sha256_digest_is_refused(reference: str) -> None:
    """Whatever else it holds, a reference that does not end in ``@sha256:<64 hex>`` is
    refused, and the refusal names it."""
    _, at, digest = reference.rpartition("@")
    pinned = at and digest.startswith("sha256:") and len(digest) == 71
    pinned = bool(pinned) and all(c in HEX for c in digest[7:])
    if pinned:
        return
    with pytest.raises(UsageError) as refused:
        check_image(reference)
    assert repr(reference) in refused.value.detail
