"""The Dockerfile: hadolint passes it (and fails a bad one), its base image must be pinned
by digest, and its final stage runs as a non-root uid without an installer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_hadolint_passes_the_dockerfile() -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install curl\n"
        "RUN pip install requests\n"
        "USER root\n",
        encoding="utf-8",
    )
    result = _hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3002"):
        assert rule in result.stdout


def _digest_check() -> str:
    """The build stage's RUN that checks PYTHON_IMAGE (backslash continuations joined)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", "\n")
    match = re.search(r"^RUN (if ! \[\[ .*?\n\s*fi)$", text, re.MULTILINE | re.DOTALL)
    assert match is not None
    return match[1]


@pytest.mark.parametrize(
    ("image", "accepted"),
    [
        ("python:3.11-slim-bookworm@sha256:" + "0123456789abcdef" * 4, True),
        ("registry.example:5000/team/python@sha256:" + "a" * 64, True),
        ("python:3.11-slim-bookworm", False),  # a tag floats
        ("python@sha256:" + "a" * 63, False),
        ("python@sha256:" + "A" * 64, False),
        ("", False),  # the argument is required
        ("python@sha256:" + "a" * 64 + "\nmore", False),
    ],
)
def test_the_base_image_must_be_pinned_by_digest(image: str, accepted: bool) -> None:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", _digest_check()],
        env={**os.environ, "PYTHON_IMAGE": image},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        assert "PYTHON_IMAGE must be an image pinned by digest" in result.stderr


def test_the_final_stage_runs_unprivileged_without_installers() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE$", text, re.MULTILINE)  # no default
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    assert len(stages) == 3  # (comments), build, final
    final = stages[-1]
    assert final.startswith("${PYTHON_IMAGE}\n")
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert "python -m pip uninstall --yes pip setuptools wheel" in final
    assert "/opt/trustmesh/bin/python -m pip uninstall --yes pip" in stages[1]
    assert "--require-hashes" in stages[1]
    assert not re.search(r"^(RUN|COPY)\b.*\b(apt-get|gcc|build-essential)\b", final, re.M)


def test_the_build_context_is_an_allow_list() -> None:
    """Only what the build copies is sent: never .trustmesh/ (keys), .venv/ or .git/."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M))
    sources = {name for group in copied for name in group.split()}
    assert sources == {"requirements-runtime.lock", "pyproject.toml", "README.md", "src"}
    assert {f"!{name}" for name in sources} <= {rule.rstrip("/") for rule in rules}
