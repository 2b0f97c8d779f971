"""Fixtures of the auth tests (helpers in authrig.py)."""

from authrig import identity, rig

__all__ = ["identity", "rig"]
