"""End-to-end tests drive `trustmesh` as a user would; they share the browser's part of a
sign-in with the auth tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "auth"))  # authrig.code_flow
