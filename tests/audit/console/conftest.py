"""The console's tests share the audit tests' event shapes (auditkit)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))  # auditkit: real event shapes
