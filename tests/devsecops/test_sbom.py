"""The SBOM gate: cyclonedx-py's SBOM of the lock is CycloneDX JSON with every locked
package once; a missing, extra or malformed component is found."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trustmesh.devsecops.sbom import check_file, locked_packages, sbom_problems

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


#: What the SBOM gate (``make gates``, run by ``make test`` before the suite) writes.
GATES_SBOM = ROOT / "artifacts" / "sbom.cdx.json"


def _made_since_its_inputs(path: Path) -> bool:
    inputs = (LOCK, ROOT / "pyproject.toml")
    return path.exists() and all(path.stat().st_mtime >= p.stat().st_mtime for p in inputs)


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """cyclonedx-py's SBOM of the lock: the gate's, made by the same command from the
    same files since they last changed, else made now."""
    out = GATES_SBOM
    if not _made_since_its_inputs(out):
        out = tmp_path_factory.mktemp("sbom") / "sbom.cdx.json"
        cli = Path(sys.executable).with_name("cyclonedx-py")
        subprocess.run(
            [str(cli), "requirements", str(LOCK), "--pyproject", str(ROOT / "pyproject.toml"),
             "--output-reproducible", "-o", str(out)],
            check=True, capture_output=True,
        )  # fmt: skip
    assert check_file(out, LOCK) == []
    document: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return document


def test_the_sbom_holds_every_locked_package_once(sbom: dict[str, Any]) -> None:
    lock_text = LOCK.read_text(encoding="utf-8")
    pinned = locked_packages(lock_text)
    assert len(pinned) > 100  # the whole set, dev extra included
    assert sbom["bomFormat"] == "CycloneDX"
    assert len(sbom["components"]) == len(pinned)
    assert sbom_problems(sbom, lock_text) == []


def test_a_missing_or_extra_component_is_found(sbom: dict[str, Any]) -> None:
    lock_text = LOCK.read_text(encoding="utf-8")
    short = copy.deepcopy(sbom)
    gone = short["components"].pop(0)
    problems = sbom_problems(short, lock_text)
    assert f"locked {gone['name']}=={gone['version']} is not a component" in problems
    assert any(
        p.endswith(f"but the lock pins {len(locked_packages(lock_text))} packages")
        for p in problems
    )
    extra = copy.deepcopy(sbom)
    extra["components"][0]["version"] = "0.0.0"
    assert f"component {extra['components'][0]['name']}==0.0.0 is not in the lock" in sbom_problems(
        extra, lock_text
    )


def test_a_document_that_is_not_cyclonedx_is_refused(sbom: dict[str, Any]) -> None:
    lock_text = LOCK.read_text(encoding="utf-8")
    bad = copy.deepcopy(sbom)
    bad["components"][0]["type"] = "not-a-component-type"
    assert any(p.startswith("not valid CycloneDX 1.6 JSON") for p in sbom_problems(bad, lock_text))
    assert sbom_problems({"bomFormat": "SPDX"}, lock_text) == [
        "bomFormat is 'SPDX', expected 'CycloneDX'"
    ]


def test_locked_packages_reads_pins_with_markers_and_normalises_names() -> None:
    text = (
        "# a comment\n"
        "Async_Timeout==5.0.1 ; python_full_version < '3.11.3' \\\n"
        "    --hash=sha256:00\n"
        "idna==3.21 \\\n"
        "    # via requests\n"
    )
    assert locked_packages(text) == {("async-timeout", "5.0.1"), ("idna", "3.21")}


def test_a_url_that_is_not_an_iri_is_refused_after_valid_ones_were_checked(
    sbom: dict[str, Any],
) -> None:
    """The format checks' answers are kept between checks: a new string is still judged."""
    lock_text = LOCK.read_text(encoding="utf-8")
    assert sbom_problems(sbom, lock_text) == []  # every string of the document seen once
    bad = copy.deepcopy(sbom)
    bad["components"][0]["externalReferences"] = [{"type": "website", "url": "http://a b/<>"}]
    (problem,) = sbom_problems(bad, lock_text)
    assert problem.startswith("not valid CycloneDX 1.6 JSON: 'http://a b/<>' is not valid")
