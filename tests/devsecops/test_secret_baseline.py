"""The secret-scanning gate: a secret the baseline does not hold fails it, and so does a
baseline entry marked real or never audited."""

from __future__ import annotations

import json
import secrets
import string
import subprocess
from pathlib import Path

from trustmesh.devsecops.secretscan import baseline_problems, scan

ROOT = Path(__file__).resolve().parents[2]


def _repo_with_a_key(tmp_path: Path) -> Path:
    # an AWS-shaped access key id, made here: no secret is ever committed to the repository
    key = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
    (tmp_path / "settings.py").write_text(f'ACCESS_KEY_ID = "{key}"\n', encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "settings.py"], check=True)
    return tmp_path


def test_a_new_secret_fails_until_audited_as_none(tmp_path: Path) -> None:
    repo = _repo_with_a_key(tmp_path)
    scanned = scan(repo)
    empty = {"results": {}}
    problems = baseline_problems(empty, scanned)
    assert problems == [
        "settings.py:1: AWS Access Key: a potential secret the baseline does not hold "
        "(remove it, or audit it into .secrets.baseline)"
    ]
    unaudited = json.loads(json.dumps(scanned))
    assert baseline_problems(unaudited, scanned) == [
        "settings.py:1: AWS Access Key: in the baseline but never audited"
    ]
    unaudited["results"]["settings.py"][0]["is_secret"] = True
    assert baseline_problems(unaudited, scanned) == [
        "settings.py:1: AWS Access Key: the baseline marks it a real secret: remove it"
    ]
    unaudited["results"]["settings.py"][0]["is_secret"] = False
    assert baseline_problems(unaudited, scanned) == []


def test_the_committed_baseline_is_audited_and_holds_no_real_secret() -> None:
    baseline = json.loads((ROOT / ".secrets.baseline").read_text(encoding="utf-8"))
    assert baseline["results"]
    assert baseline_problems(baseline, {"results": {}}) == []
