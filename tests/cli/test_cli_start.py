"""What the command line imports when it starts: every command pays for it, whatever it
does (the test suite runs it hundreds of times)."""

from __future__ import annotations

import subprocess
import sys

#: Modules only `trustmesh audit export` and `audit grants` need: imported when they run.
EXPORT_ONLY = (
    "trustmesh.audit.alerts",
    "trustmesh.audit.export",
    "trustmesh.audit.pseudonymise",
    "trustmesh.audit.response_store",
    "trustmesh.audit.syslog",
    "sqlalchemy.dialects.postgresql",
)


def test_the_export_commands_modules_are_imported_when_they_run_not_at_start() -> None:
    code = (
        "import sys\n"
        "import trustmesh.cli\n"
        f"print(*[m for m in {EXPORT_ONLY!r} if m in sys.modules])\n"
        "from trustmesh.cli.audit_export_cmd import grants_for, table_statements\n"
        "assert grants_for('collector') and table_statements()\n"
        f"print(*[m for m in {EXPORT_ONLY!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    at_start, after = done.stdout.splitlines()
    assert at_start == ""
    assert set(after.split()) >= {"trustmesh.audit.alerts", "sqlalchemy.dialects.postgresql"}
