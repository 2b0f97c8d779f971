"""The rendered manifests pass the Kubernetes API schemas (kubernetes-validate, strict:
an unknown or misplaced field fails) and checkov's Kubernetes checks (no failed check;
each skipped one justified by an annotation on the object it does not apply to)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from k8srig import MINIMAL, PRODUCTION, documents, public_key_pem, render, shop, write
from services import REQUIRE_SERVICES

#: A version kubernetes-validate ships schemas for (and a cluster version in support).
KUBERNETES_VERSION = "1.31.0"
#: Kinds the renderer writes whose schema is the API server's own.
CORE_KINDS = {
    "Deployment",
    "Namespace",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "Service",
    "ServiceAccount",
}
#: The one check skipped, where, and the word its justification must carry.
ALLOWED_SKIPS = {"CKV_K8S_35": "secretKeyRef"}


def _tool_missing(what: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is not installed and TRUSTMESH_REQUIRE_SERVICES=1")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(params=["shop", "prod", "min"])
def out(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    which = request.param
    if which == "shop":
        config = shop(tmp_path)
    else:
        text = PRODUCTION if which == "prod" else MINIMAL
        config = write(tmp_path, text, db_password="p", redis_password="r")
    key = tmp_path / "cosign.pub"
    key.write_text(public_key_pem())
    render(config, tmp_path / "out", "--verify-images-key", str(key))
    return tmp_path / "out"


def test_every_manifest_passes_the_api_schema_strictly(out: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = documents(out)
    kinds = {doc["kind"] for doc in docs}
    assert kinds == CORE_KINDS | {"ClusterPolicy"}
    for doc in docs:
        if doc["kind"] == "ClusterPolicy":
            continue  # Kyverno's CRD: checked in test_the_verify_images_policy
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_api_schema_check_would_see_a_stray_field(out: Path) -> None:
    """The validation above is not vacuous: a misplaced field fails it."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = next(d for d in documents(out) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod["containers"][0]["readOnlyRootFilesystem"] = True  # belongs in securityContext
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


#: Where ``make`` installs checkov, in a virtualenv of its own (its pins conflict with
#: the project's: it would downgrade packaging under pysigma and pytest).
APART = Path(__file__).resolve().parents[2] / ".venv-checkov" / "bin" / "checkov"


def _checkov() -> str:
    beside = Path(sys.executable).parent / "checkov"
    found = next((str(p) for p in (APART, beside) if p.exists()), None) or shutil.which("checkov")
    if found is None:
        _tool_missing("checkov")
    return str(found)


def _run_checkov(folder: Path) -> dict[str, Any]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": ""}
    ran = subprocess.run(
        [
            _checkov(),
            "-d",
            str(folder),
            "--framework",
            "kubernetes",
            "--compact",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert ran.returncode in (0, 1), ran.stderr[-2000:]
    report = json.loads(ran.stdout)
    assert isinstance(report, dict), report
    return report


def test_checkov_finds_nothing_unjustified(out: Path) -> None:
    report = _run_checkov(out)
    assert report["summary"]["failed"] == 0, json.dumps(report["results"]["failed_checks"])
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100
    for skipped in report["results"].get("skipped_checks", []):
        word = ALLOWED_SKIPS.get(skipped["check_id"])
        assert word is not None, skipped["check_id"]
        assert word in skipped["check_result"]["suppress_comment"], skipped
        assert skipped["resource"].startswith("Deployment.")


def test_checkov_would_fail_a_writable_root_filesystem(tmp_path: Path, out: Path) -> None:
    """The check above is not vacuous: the same manifests with one pod's root filesystem
    made writable fail it."""
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    target = broken / "identity.yaml"
    text = target.read_text()
    assert "readOnlyRootFilesystem: true" in text
    target.write_text(text.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"))
    report = _run_checkov(broken)
    failed = {(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]}
    assert failed == {("CKV_K8S_22", "Deployment.trustmesh.identity")}
