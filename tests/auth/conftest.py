"""Fixtures of the auth tests (helpers in authrig.py)."""

from authrig import fast_identity, identity, rig

__all__ = ["fast_identity", "identity", "rig"]
