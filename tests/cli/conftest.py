"""The CLI tests sign users in with the auth tests' browser helpers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "auth"))  # authrig.code_flow
