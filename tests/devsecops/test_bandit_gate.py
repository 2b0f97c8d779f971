"""The SAST gate: bandit at medium severity flags what the style forbids, and every
ignore in src/ names its check and says why."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BANDIT = Path(sys.executable).with_name("bandit")
# "# nosec B608 # why": bandit reads the ids up to the next '#'; the reason follows it
NOSEC = re.compile(r"#\s*nosec", re.IGNORECASE)
JUSTIFIED = re.compile(r"# nosec (B\d{3})(?:,\s*B\d{3})* # \S.{9,}")


def _bandit(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BANDIT), "-c", str(ROOT / "pyproject.toml"), "-r", str(target),
         "--severity-level", "medium", "--quiet", "-f", "txt"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_every_ignore_in_src_names_its_check_and_says_why() -> None:
    found = 0
    for path in sorted((ROOT / "src").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if NOSEC.search(line):  # as bandit finds them ("nanoseconds" is none)
                found += 1
                assert JUSTIFIED.search(line), f"{path}:{number}: {line.strip()}"
    assert found >= 21


def test_the_gate_flags_what_the_style_forbids(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import pickle\n\n\ndef load(data: bytes) -> object:\n    return pickle.loads(data)\n",
        encoding="utf-8",
    )
    result = _bandit(tmp_path)
    assert result.returncode == 1
    assert "[B301:blacklist]" in result.stdout
    (tmp_path / "bad.py").write_text(
        "import pickle\n\n\ndef load(data: bytes) -> object:\n"
        "    return pickle.loads(data)  # nosec B301 # our own child's bytes over a pipe\n",
        encoding="utf-8",
    )
    assert _bandit(tmp_path).returncode == 0
