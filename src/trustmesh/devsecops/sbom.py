"""The SBOM gate: a CycloneDX document of the locked set, checked against the lock.

``cyclonedx-py requirements`` writes the SBOM; this module checks what it wrote: a
CycloneDX JSON document (``bomFormat``, ``specVersion``, valid against the CycloneDX JSON
schema of that version) whose components are exactly the lock's pinned packages, each
once, with the pinned version.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Final

__all__ = ["check_file", "locked_packages", "sbom_problems"]

# A requirement line of a hashed lock: "name==version" then markers or a continuation.
_PIN: Final = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalisation


def locked_packages(lock_text: str) -> set[tuple[str, str]]:
    """The ``(name, version)`` pairs pinned by a requirements lock (names normalised)."""
    pins: set[tuple[str, str]] = set()
    for line in lock_text.splitlines():
        match = _PIN.match(line)
        if match is not None:
            pins.add((_canonical(match[1]), match[2]))
    return pins


def sbom_problems(sbom: dict[str, Any], lock_text: str) -> list[str]:
    """What is wrong with ``sbom`` as the CycloneDX SBOM of ``lock_text``; empty if nothing."""
    problems: list[str] = []
    if sbom.get("bomFormat") != "CycloneDX":
        problems.append(f"bomFormat is {sbom.get('bomFormat')!r}, expected 'CycloneDX'")
        return problems
    problems.extend(_schema_problems(sbom))
    components = sbom.get("components")
    if not isinstance(components, list):
        return [*problems, "no components list"]
    found: list[tuple[str, str]] = [
        (_canonical(str(c.get("name", ""))), str(c.get("version", ""))) for c in components
    ]
    pinned = locked_packages(lock_text)
    if len(found) != len(pinned):
        problems.append(f"{len(found)} components, but the lock pins {len(pinned)} packages")
    missing = sorted(pinned - set(found))
    extra = sorted(set(found) - pinned)
    problems.extend(f"locked {n}=={v} is not a component" for n, v in missing)
    problems.extend(f"component {n}=={v} is not in the lock" for n, v in extra)
    return problems


def _schema_problems(sbom: dict[str, Any]) -> list[str]:
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from cyclonedx.validation import make_schemabased_validator

    version = str(sbom.get("specVersion", ""))
    try:
        schema = SchemaVersion.from_version(version)
    except ValueError:
        return [f"specVersion {version!r} is not a CycloneDX version"]
    _remember_iri_checks()
    validator = make_schemabased_validator(OutputFormat.JSON, schema)
    error = validator.validate_str(json.dumps(sbom))
    return [] if error is None else [f"not valid CycloneDX {version} JSON: {error}"]


@functools.cache
def _remember_iri_checks() -> None:
    """The schema's ``iri-reference`` strings (each component's purl and URLs) are
    checked by jsonschema's format checker with an Earley parser: about 4 s of CPU for
    a document of this lock, every time. The checks are pure functions of the string,
    so each answer is kept (in this process) and a string seen before — the same
    document checked again, or changed in one place — is not parsed again."""
    from jsonschema import Draft7Validator  # type: ignore[import-untyped]

    checkers = Draft7Validator.FORMAT_CHECKER.checkers
    for name in ("iri", "iri-reference", "uri", "uri-reference"):
        if name in checkers:
            check, raises = checkers[name]
            checkers[name] = (functools.lru_cache(maxsize=1 << 16)(check), raises)


def check_file(sbom_path: Path, lock_path: Path) -> list[str]:
    """:func:`sbom_problems` of the files (a file that is not JSON is one problem)."""
    try:
        sbom = json.loads(sbom_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{sbom_path}: cannot be read as JSON: {exc}"]
    if not isinstance(sbom, dict):
        return [f"{sbom_path}: not a JSON object"]
    return sbom_problems(sbom, lock_path.read_text(encoding="utf-8"))
