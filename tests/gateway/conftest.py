"""Gateway tests run against the identity service and provider of the auth tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "auth"))  # authrig: the shared rig
