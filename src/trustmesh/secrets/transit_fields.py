"""The transit engine's requests as Vault reads them: the refusal it answers
(:class:`TransitError`), strict base64, the optional fields of an item, and
``batch_input`` — its structural checks (which refuse the whole request) and the answer of
a batch whose items succeed or fail one by one (:class:`BatchAnswer`)."""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from trustmesh.errors import UsageError

__all__ = [
    "BatchAnswer",
    "TransitError",
    "associated_bytes",
    "b64decode",
    "batch",
    "batch_items",
    "batch_status",
    "is_int",
    "item_options",
    "item_text",
    "item_version",
    "refuse_derivation",
    "require_int",
    "strict_b64decode",
]

_STRING_FIELDS = ("plaintext", "ciphertext", "associated_data", "context", "nonce", "reference")
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class TransitError(UsageError):
    """A request the transit engine refuses (HTTP 400). ``str(exc)`` is the message Vault
    would answer (its own wording where it has one): never plaintext or key bytes."""


@dataclass(frozen=True)
class BatchAnswer:
    """A batch's ``data`` (``{"batch_results": [...]}``, in input order), the HTTP status
    Vault answers it with, and Vault's warnings."""

    results: tuple[dict[str, object], ...]
    status: int = 200
    warnings: tuple[str, ...] = ()

    @property
    def data(self) -> dict[str, object]:
        return {"batch_results": [dict(result) for result in self.results]}


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(field: str, value: object) -> None:
    if not is_int(value):
        raise TransitError(f"{field} must be an integer")


def refuse_derivation(context: str | None, nonce: str | None) -> None:
    if context:
        raise TransitError(
            "context was provided but this key does not use key derivation "
            "(derived keys are not supported)"
        )
    if nonce:
        raise TransitError("provided nonce not allowed for this key")


def b64decode(text: str, field: str = "") -> bytes:
    """Strict standard base64 (padded), refused in Go's words as Vault answers them."""
    try:
        return strict_b64decode(text)
    except ValueError:
        at = next((i for i, char in enumerate(text) if char not in _B64_ALPHABET), len(text))
        prefix = f"{field}: " if field else ""
        raise TransitError(f"{prefix}illegal base64 data at input byte {at}") from None


def strict_b64decode(text: str) -> bytes:
    """Standard base64, padded to a multiple of 4, nothing after the padding (as Go's
    ``base64.StdEncoding`` reads it); ValueError otherwise (binascii.Error is one)."""
    raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    if len(text) != 4 * -(-len(raw) // 3):  # no missing or surplus padding
        raise ValueError("base64 padding")
    return raw


def associated_bytes(associated_data: str | None) -> bytes:
    if associated_data is None or associated_data == "":
        return b""
    if not isinstance(associated_data, str):
        raise TransitError("associated_data must be a base64 string")
    return b64decode(associated_data, "associated_data")


def item_text(item: Mapping[str, object], field: str) -> str | None:
    value = item.get(field)
    return value if isinstance(value, str) else None


def item_options(item: Mapping[str, object]) -> dict[str, str | None]:
    """An item's optional string fields, as keyword arguments of the one-item methods."""
    return {name: item_text(item, name) for name in ("associated_data", "context", "nonce")}


def item_version(item: Mapping[str, object]) -> int | None:
    value = item.get("key_version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def batch_items(items: object) -> Sequence[Mapping[str, object]]:
    """Vault's structural checks on ``batch_input``: any failure refuses the request."""
    if not isinstance(items, list):
        raise TransitError("failed to parse batch input: batch_input must be an array")
    if not items:
        raise TransitError("missing batch input to process")
    problems = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TransitError(f"failed to parse batch input: [{index}] expected a map")
        for field in _STRING_FIELDS:
            value = item.get(field)
            if value is not None and not isinstance(value, str):
                problems.append(f"'[{index}].{field}' expected type 'string'")
        version = item.get("key_version")
        if version is not None and not is_int(version):
            problems.append(f"'[{index}].key_version' expected type 'int'")
    if problems:
        raise TransitError("failed to parse batch input: " + "; ".join(problems))
    return items


def batch(
    items: object,
    one: Callable[[Mapping[str, object]], dict[str, object]],
    on_error: dict[str, object],
    partial_failure_response_code: object,
) -> BatchAnswer:
    results: list[dict[str, object]] = []
    successes = failures = 0
    for item in batch_items(items):
        reference = item_text(item, "reference") or ""
        try:
            result = one(item)
        except TransitError as exc:
            failures += 1
            results.append({**on_error, "error": str(exc), "reference": reference})
        else:
            successes += 1
            results.append({**result, "reference": reference})
    status, warnings = batch_status(successes, failures, partial_failure_response_code)
    return BatchAnswer(tuple(results), status, warnings)


def batch_status(successes: int, failures: int, override: object) -> tuple[int, tuple[str, ...]]:
    """Vault's ``batchRequestResponse``: 200 when every item succeeded; else 400, or the
    caller's ``partial_failure_response_code`` (1..599) when at least one succeeded."""
    if not failures:
        return 200, ()
    if override is None or not successes:
        return 400, ()
    if isinstance(override, int) and not isinstance(override, bool) and 1 <= override <= 599:
        return override, ()
    return 400, (
        "invalid HTTP response code override from partial_failure_response_code, reverting to 400",
    )
